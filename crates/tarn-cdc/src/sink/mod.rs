//! The lake side of CDC: source changes become Iceberg commits, exactly once.
//!
//! Each captured table is an Iceberg v2 table whose identifier fields are the source's primary
//! key. Changes are buffered per table and collapsed by key (the last change of a key wins;
//! tables keyed by the whole row keep a count per distinct row). A write turns the buffer into
//! one Parquet data file of new row versions plus **position deletes** for the versions they
//! replace or delete, found through the table's [`KeyIndex`]. A commit is one Iceberg
//! snapshot per table ([`tarn_lake::Lake::commit_row_delta`]) whose summary records the
//! pipeline (`tarn.cdc.pipeline`) and the source position of the last transaction it holds
//! (`tarn.cdc.lsn`).
//!
//! Exactly once: the pipeline acknowledges a position to the source only after every table
//! holding changes up to it has committed. After a restart the source replays from the
//! acknowledged position, and the sink skips, per table, every transaction that ends before the
//! position recorded in that table's summaries. Data files written for a commit that never
//! happened are never referenced (orphan-file removal deletes them).
//!
//! Unchanged TOASTed values ([`Value::Unchanged`](crate::source::Value::Unchanged)) keep their
//! previous value: from the old row when the source sent it, from an earlier change in the
//! buffer, or read back from the row's current location in the lake. A table whose schema
//! changes in a way Iceberg cannot follow (a new key, an incompatible type change) is stopped
//! with the reason recorded in its properties (`tarn.cdc.stopped`); the other tables go on.
//!
//! This module holds [`LakeSink`] itself: attaching tables, applying events, committing, and
//! the key index. Its parts:
//!
//! - `buffer`: the row buffer of a table — collapsing by key, unchanged TOASTed values, and
//!   the write of a buffer into a data file and position deletes;
//! - `summary`: the snapshot-summary codec — the `tarn.cdc.*` keys of snapshot summaries and
//!   table properties, the one place a table's position becomes text and back
//!   ([`table_position`]);
//! - `snapshot`: the snapshot writer of initial copies ([`SnapshotPartWriter`],
//!   [`LakeSink::finish_snapshot`]);
//! - `maintenance`: the automatic maintenance policy, in the background of the writer
//!   ([`LakeSink::maintain`]), and the commit lock that keeps it apart from the writer's
//!   commits;
//! - `schema`: the schema-evolution planner, applied when a table's spec changes;
//! - `seam`: [`ChangeSink`], the contract the lake sink and the Kafka publisher both keep;
//! - `both`: [`Both`], two sinks fed by one source (`cdc.sink = "lake+kafka"`);
//! - `publish`: [`PendingPublisher`], the pending state published at each transaction
//!   boundary for bridge reads ([`tarn_query::bridge`]).

mod both;
mod buffer;
mod maintenance;
mod publish;
mod schema;
mod seam;
mod snapshot;
mod summary;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};
use tarn_core::{Error, ErrorKind, Result, failpoint};
use tarn_lake::{Lake, RowDelta, TableLayout};

pub use self::both::Both;
use self::buffer::{RowBuffer, write_pending};
pub use self::publish::PendingPublisher;
pub use self::seam::{ChangeSink, TablePosition};
pub use self::snapshot::{SnapshotPart, SnapshotPartWriter};
pub(crate) use self::summary::commit_summary;
pub use self::summary::{
    PROPERTY_ATTNUMS, PROPERTY_IDLE, PROPERTY_KAFKA_ARCHIVE, PROPERTY_SOURCE_TABLE, PROPERTY_STOPPED,
    SUMMARY_COMMIT_TIME, SUMMARY_KAFKA_OFFSETS, SUMMARY_LSN, SUMMARY_PIPELINE, SUMMARY_RESOLVED,
    SUMMARY_SNAPSHOT, snapshot_pipeline, source_table, stopped_reason, table_position,
};
use self::summary::{attnums_of, creation_properties, idle_property};
use crate::index::{KeyEncoder, KeyIndex, RowLocation, key_types};
use crate::position::KafkaOffsets;
use crate::source::{KeyKind, Position, SourceEvent, TableId, TableSpec};
use crate::value::builder::arrow_schema;

/// How the sink names and writes tables.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The pipeline name.
    pub pipeline: String,
    /// The lake namespace of captured tables.
    pub namespace: String,
    /// Lake table name template (`{schema}`, `{table}`).
    pub table_name: String,
    /// Buffered bytes of one table that make the sink write them out (not commit).
    pub spill_bytes: usize,
}

/// A table's state as a sink finds it when it attaches the table.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Where the table's changes go: the lake table (`namespace.table`) or the Kafka topic.
    pub target: String,
    /// The position the table holds everything up to, for this pipeline.
    pub position: Option<Position>,
    /// Why the table was stopped, if it was.
    pub stopped: Option<String>,
    /// Rows in the index.
    pub indexed_rows: usize,
}

/// Live counters of one table.
#[derive(Debug, Default, Clone)]
pub struct TableCounters {
    /// Changes applied.
    pub changes: u64,
    /// Rows written (new versions).
    pub rows_written: u64,
    /// Position deletes written.
    pub deletes_written: u64,
    /// Commits.
    pub commits: u64,
}

struct TableState {
    spec: Arc<TableSpec>,
    ident: TableIdent,
    table: Table,
    position: Option<Position>,
    stopped: Option<String>,
    key_columns: Vec<usize>,
    encoder: Arc<KeyEncoder>,
    index: KeyIndex,
    buffer: RowBuffer,
    /// Bytes buffered since the last write (the spill threshold's measure).
    pending_bytes: usize,
    data_files: Vec<DataFile>,
    deletes: Vec<(Arc<str>, u64)>,
    truncated: bool,
    dirty: bool,
    counters: TableCounters,
    /// The snapshot the key index was last built on or moved to (see `maintenance`).
    synced: Option<i64>,
}

impl TableState {
    /// The table now holds everything up to `position` too (for Kafka offsets: on the
    /// partitions `position` names, beside the ones it held).
    fn hold(&mut self, position: Position) {
        self.position = Some(match self.position.take() {
            Some(held) => held.merged(&position),
            None => position,
        });
    }
}

/// Writes source changes into lake tables; see the module doc.
pub struct LakeSink {
    lake: Lake,
    options: SinkOptions,
    tables: HashMap<TableId, TableState>,
    /// Commit position of the transaction being applied.
    txn_commit: Option<Position>,
    in_transaction: bool,
    /// End of the last transaction applied.
    last_commit: Option<(Position, i64)>,
    pending_events: u64,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    /// Where bridge reads find the pending state, when SQL runs in this process.
    publisher: Option<Arc<PendingPublisher>>,
    /// The audit trail each commit is recorded in, as the pipeline's principal.
    audit: Option<CommitAudit>,
    /// Automatic maintenance in the background, and the commit lock.
    background: maintenance::Background,
}

/// Where and as whom a [`LakeSink`] records its commits (`tarn_audit.events`, kind `write`).
#[derive(Debug, Clone)]
pub struct CommitAudit {
    /// The trail (its owner closes it at shutdown).
    pub log: Arc<tarn_query::audit::AuditLog>,
    /// The pipeline's principal (`cdc.principal`, `cdc.principal_roles`).
    pub principal: tarn_auth::Principal,
    /// The policy in force, as records name it.
    pub policy: String,
}

impl CommitAudit {
    /// One `write` record per kind of change a commit of `table` made: `InsertIntoTable` with
    /// the rows added, `DeleteFromTable` with the rows deleted (an update is both).
    fn record(&self, table: &str, inserted: u64, deleted: u64) {
        use tarn_query::audit::{AuditRecord, RecordKind};
        for (operation, rows) in [("InsertIntoTable", inserted), ("DeleteFromTable", deleted)] {
            if rows == 0 {
                continue;
            }
            let mut record = AuditRecord::new(RecordKind::Write, &self.principal, self.policy.clone());
            record.statement = None;
            record.operations.push(operation.to_string());
            record.tables.push(table.to_string());
            record.rows = Some(rows);
            self.log.record(record);
        }
    }
}

impl Drop for LakeSink {
    fn drop(&mut self) {
        // What was not committed is replayed by the next run: readers read the lake meanwhile.
        if let Some(p) = &self.publisher {
            p.withdraw();
        }
    }
}

impl LakeSink {
    /// A sink writing into `lake`.
    pub fn new(lake: Lake, options: SinkOptions) -> Self {
        Self {
            lake,
            options,
            tables: HashMap::new(),
            txn_commit: None,
            in_transaction: false,
            last_commit: None,
            pending_events: 0,
            pending_bytes: 0,
            pending_since: None,
            publisher: None,
            audit: None,
            background: maintenance::Background::default(),
        }
    }

    /// This sink recording each commit in `audit`'s trail.
    pub fn with_audit(mut self, audit: Option<CommitAudit>) -> Self {
        self.audit = audit;
        self
    }

    /// This sink writing out a table's buffer (inside a transaction) at `bytes` instead.
    pub fn with_spill_bytes(mut self, bytes: usize) -> Self {
        self.options.spill_bytes = bytes;
        self
    }

    /// This sink publishing its pending state at every transaction boundary into `publisher`
    /// (bridge reads; see the `publish` module).
    pub fn with_publisher(mut self, publisher: Option<Arc<PendingPublisher>>) -> Self {
        if let Some(p) = &publisher {
            p.set_pipeline(&self.options.pipeline);
        }
        self.publisher = publisher;
        self.publish();
        self
    }

    /// Publishes every table's pending state, between transactions only.
    fn publish(&self) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        if self.in_transaction {
            return;
        }
        let applied = self.last_commit.as_ref().map(|(p, _)| p.clone());
        let tables = self
            .tables
            .values()
            .filter(|t| t.stopped.is_none())
            .map(|t| {
                let unmergeable = if !t.data_files.is_empty() || !t.deletes.is_empty() {
                    Some("rows of uncommitted transactions were already written to files")
                } else if t.spec.key_kind == KeyKind::FullRow {
                    Some("the table has no primary key")
                } else {
                    None
                };
                let view = publish::TableView {
                    base_snapshot: t.table.metadata().current_snapshot_id(),
                    // The later of the last transaction applied and what the table holds:
                    // a restarted sink skips the transactions the table holds already.
                    position: match (&applied, &t.position) {
                        (Some(a), Some(held)) => Some(held.merged(a)),
                        (Some(a), None) => Some(a.clone()),
                        (None, held) => held.clone(),
                    },
                    truncated: t.truncated,
                    unmergeable,
                    spec: t.spec.clone(),
                    key_columns: t.key_columns.clone(),
                    entries: t.buffer.entries(),
                    changes: std::sync::OnceLock::new(),
                };
                (t.ident.clone(), Arc::new(view))
            })
            .collect();
        publisher.publish(tables);
    }

    /// The lake table a source table lands in.
    pub fn lake_ident(&self, spec: &TableSpec) -> TableIdent {
        let name = self
            .options
            .table_name
            .replace("{schema}", &spec.schema)
            .replace("{table}", &spec.name);
        TableIdent::new(NamespaceIdent::new(self.options.namespace.clone()), name)
    }

    /// Whether the sink writes source table `id`.
    pub fn has_table(&self, id: TableId) -> bool {
        self.tables.contains_key(&id)
    }

    /// Every attached table: its lake identifier, committed position, why it stopped, counters.
    pub fn table_positions(&self) -> Vec<TablePosition> {
        let mut out: Vec<_> = self
            .tables
            .values()
            .map(|t| TablePosition {
                target: t.ident.to_string(),
                position: t.position.clone(),
                stopped: t.stopped.clone(),
                counters: t.counters.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// Buffered changes not yet committed.
    pub fn pending_events(&self) -> u64 {
        self.pending_events
    }

    /// Buffered bytes not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// When the oldest uncommitted change arrived.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    /// Whether a transaction is being applied.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// The end of the last transaction applied, and its commit time.
    pub fn last_commit(&self) -> Option<(Position, i64)> {
        self.last_commit.clone()
    }

    /// Finds (or creates) the lake table for `spec`, reads the position it holds for this
    /// pipeline, and rebuilds its key index from its live rows.
    pub async fn attach(&mut self, spec: Arc<TableSpec>) -> Result<Attached> {
        let ident = self.lake_ident(&spec);
        let table = match self.lake.load_table(&ident).await {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => self.create_table(&ident, &spec).await?,
            Err(e) => return Err(e),
        };
        let (position, _) = table_position(&table, &self.options.pipeline);
        let stopped = stopped_reason(&table);
        let schema = arrow_schema(&spec);
        let key_columns = spec.key_columns();
        let encoder = Arc::new(KeyEncoder::new(key_types(&schema, &key_columns)));
        let mut state = TableState {
            ident: ident.clone(),
            table,
            position: position.clone(),
            stopped: stopped.clone(),
            key_columns,
            encoder,
            index: KeyIndex::for_table(&spec),
            spec: spec.clone(),
            buffer: RowBuffer::default(),
            pending_bytes: 0,
            data_files: Vec::new(),
            deletes: Vec::new(),
            truncated: false,
            dirty: false,
            counters: TableCounters::default(),
            synced: None,
        };
        if stopped.is_none() {
            rebuild_index(&self.lake, &mut state, None).await?;
        }
        let indexed_rows = state.index.len();
        self.tables.insert(spec.id, state);
        self.publish();
        Ok(Attached {
            target: ident.to_string(),
            position,
            stopped,
            indexed_rows,
        })
    }

    async fn create_table(&self, ident: &TableIdent, spec: &TableSpec) -> Result<Table> {
        self.lake.create_namespace(ident.namespace(), true).await?;
        let schema = arrow_schema(spec);
        let keys: Vec<String> = match spec.key_kind {
            KeyKind::PrimaryKey => spec
                .key_columns()
                .iter()
                .map(|&i| spec.columns[i].name.clone())
                .collect(),
            KeyKind::FullRow => Vec::new(),
        };
        let mut properties = creation_properties(spec, &self.options.pipeline);
        let layout = TableLayout {
            properties: properties.clone(),
            ..TableLayout::default()
        };
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let schema = tarn_lake::iceberg_schema_with_keys(&schema, &key_refs)?;
        let table = self.lake.create_table_with_schema(ident, schema, &layout).await?;
        properties.extend(attnums_of(&table, spec));
        self.lake.set_properties(ident, properties).await
    }

    fn state(&self, id: TableId) -> Result<&TableState> {
        self.tables
            .get(&id)
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("source table {id} is not attached")))
    }

    fn state_mut(&mut self, id: TableId) -> Result<&mut TableState> {
        self.tables
            .get_mut(&id)
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("source table {id} is not attached")))
    }

    /// Applies one event of the stream.
    pub async fn apply(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Begin { commit_position, .. } => {
                self.txn_commit = Some(commit_position);
                self.in_transaction = true;
            }
            SourceEvent::Commit {
                position,
                commit_time_micros,
            } => {
                self.in_transaction = false;
                self.txn_commit = None;
                self.last_commit = Some((position, commit_time_micros));
                self.publish();
            }
            SourceEvent::Keepalive { .. } => {}
            SourceEvent::Relation(spec) => self.relation(spec).await?,
            SourceEvent::Insert { table, new } => {
                if let Some(state) = self.live_table(table) {
                    let bytes = state.buffer.insert(&state.spec, &state.key_columns, new);
                    self.note_change(table, bytes);
                }
            }
            SourceEvent::Update { table, old, new } => {
                if let Some(state) = self.live_table(table) {
                    let bytes = state.buffer.update(&state.spec, &state.key_columns, old, new)?;
                    self.note_change(table, bytes);
                }
            }
            SourceEvent::Delete { table, old } => {
                if let Some(state) = self.live_table(table) {
                    let bytes = state.buffer.delete(&state.spec, &state.key_columns, old)?;
                    self.note_change(table, bytes);
                }
            }
            SourceEvent::Truncate { tables } => {
                for id in tables {
                    if let Some(state) = self.live_table(id) {
                        // Files written since the last commit are dropped with the rows they hold.
                        state.buffer.clear();
                        state.data_files.clear();
                        state.deletes.clear();
                        state.index.clear();
                        state.truncated = true;
                        state.dirty = true;
                        self.note_change(id, 0);
                    }
                }
            }
        }
        Ok(())
    }

    /// The state of a table that takes changes of the current transaction: attached, not
    /// stopped, and not already holding the transaction.
    fn live_table(&mut self, id: TableId) -> Option<&mut TableState> {
        let state = self.tables.get_mut(&id)?;
        if state.stopped.is_some() {
            return None;
        }
        match (&self.txn_commit, &state.position) {
            (Some(commit), Some(held)) if held.holds(commit) => None,
            _ => Some(state),
        }
    }

    fn note_change(&mut self, id: TableId, bytes: usize) {
        self.pending_events += 1;
        self.pending_bytes += bytes;
        self.pending_since.get_or_insert_with(Instant::now);
        if let Some(state) = self.tables.get_mut(&id) {
            state.pending_bytes += bytes;
            state.dirty = true;
            state.counters.changes += 1;
        }
    }

    /// Writes out the buffers of tables holding more than the spill threshold (inside a
    /// large transaction); nothing is committed.
    pub async fn spill_if_needed(&mut self) -> Result<()> {
        let spill = self.options.spill_bytes;
        if self.pending_bytes < spill {
            return Ok(());
        }
        // Deletes planned now are committed with the flush: no compaction may commit between.
        self.hold_commits().await?;
        let lake = self.lake.clone();
        for state in self.tables.values_mut() {
            if state.pending_bytes > 0 {
                write_pending(&lake, state).await?;
            }
        }
        self.pending_bytes = 0;
        Ok(())
    }

    /// Records `position` (a position every table has been flushed up to) on tables that had
    /// no changes since their last commit, so a quiet table does not hold a restart back.
    /// Call right after a [`LakeSink::flush`] returned `position`.
    pub async fn mark_idle(&mut self, position: &Position) -> Result<()> {
        let lake = self.lake.clone();
        let pipeline = self.options.pipeline.clone();
        let idle = |state: &TableState| {
            let behind = state.position.as_ref().is_some_and(|p| p < position);
            !(state.dirty || state.stopped.is_some() || !behind)
        };
        if !self.tables.values().any(idle) {
            return Ok(());
        }
        // The table reloaded below must not move past a compaction the index does not know.
        let held = self.background.holds();
        self.hold_commits().await?;
        for state in self.tables.values_mut() {
            if !idle(state) {
                continue;
            }
            state.table = lake
                .set_properties(&state.ident, idle_property(&pipeline, position))
                .await?;
            state.position = Some(position.clone());
        }
        if !held {
            self.release_commits();
        }
        Ok(())
    }

    /// Commits every table with changes, up to the last applied transaction; returns the
    /// position the source may be acknowledged up to. Must be called between transactions.
    pub async fn flush(&mut self) -> Result<Option<Position>> {
        if self.in_transaction {
            return Err(Error::new(ErrorKind::Internal, "flush inside a transaction"));
        }
        let Some((position, commit_time)) = self.last_commit.clone() else {
            return Ok(None);
        };
        // From planning deletes to the commit, no compaction commits (see `maintenance`).
        self.hold_commits().await?;
        let lake = self.lake.clone();
        let pipeline = self.options.pipeline.clone();
        for state in self.tables.values_mut() {
            if !state.dirty {
                continue;
            }
            let started = Instant::now();
            write_pending(&lake, state).await?;
            failpoint::hit("cdc.before_commit").await?;
            let (inserted, deleted) =
                commit_table(&lake, &pipeline, state, position.clone(), commit_time).await?;
            metrics::histogram!("tarn_cdc_commit_seconds").record(started.elapsed().as_secs_f64());
            if let Some(audit) = &self.audit {
                audit.record(&format!("{}.{}", lake.name(), state.ident), inserted, deleted);
            }
            match &position {
                Position::Hlc(h) => {
                    metrics::gauge!("tarn_cdc_table_resolved_seconds", "table" => state.ident.to_string())
                        .set(h.wall_nanos as f64 / 1e9);
                }
                Position::Lsn(l) => {
                    metrics::gauge!("tarn_cdc_table_lsn", "table" => state.ident.to_string()).set(l.0 as f64);
                }
                Position::Kafka(_) => {}
            }
        }
        failpoint::hit("cdc.after_commit").await?;
        self.release_commits();
        self.pending_events = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        self.publish();
        Ok(Some(position))
    }
}

/// Every live data file and delete file of a table's current snapshot
/// ([`Lake::live_files`]).
pub async fn current_files(table: &Table) -> Result<(Vec<DataFile>, Vec<DataFile>)> {
    Lake::live_files(table).await
}

/// Reads the key columns of the live rows of `state.table` (all files, or `only` these) into
/// the index.
async fn rebuild_index(lake: &Lake, state: &mut TableState, only: Option<&HashSet<String>>) -> Result<()> {
    use futures::TryStreamExt;
    if state.table.metadata().current_snapshot().is_none() {
        return Ok(());
    }
    let started = Instant::now();
    let columns: Vec<String> = state
        .key_columns
        .iter()
        .map(|&i| state.spec.columns[i].name.clone())
        .collect();
    let mut stream = lake.scan_live_rows(&state.table, &columns, only).await?;
    let mut rows = 0usize;
    while let Some(live) = stream.try_next().await? {
        let batch = live.batch;
        let n = batch.num_rows();
        let keys = state.encoder.encode(&batch.columns()[..columns.len()])?;
        let positions = batch
            .column_by_name("_pos")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>().cloned())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "live rows came without _pos"))?;
        let file = state.index.file_number(&live.data_file);
        for (i, key) in keys.into_iter().enumerate() {
            state.index.insert_found(
                key,
                RowLocation {
                    file,
                    pos: positions.value(i) as u32,
                },
            );
        }
        rows += n;
    }
    if only.is_none() {
        state.synced = state.table.metadata().current_snapshot_id();
    }
    let spares = state.index.spares();
    if spares > 0 {
        tracing::warn!(table = %state.ident, rows = spares, "keys in the table more than once (another writer added them); the next change of each deletes them all");
    }
    tracing::info!(table = %state.ident, rows, seconds = started.elapsed().as_secs_f64(), "key index built");
    Ok(())
}

/// Commits `state`'s written changes; returns the rows it added and deleted.
async fn commit_table(
    lake: &Lake,
    pipeline: &str,
    state: &mut TableState,
    position: Position,
    commit_time: i64,
) -> Result<(u64, u64)> {
    let summary = commit_summary(pipeline, &position, Some(commit_time));
    if state.truncated {
        let (old_data, old_deletes) = current_files(&state.table).await?;
        if !old_data.is_empty() || !old_deletes.is_empty() {
            // Fenced like the row delta below, recording nothing: the position holds only
            // once the rows after the truncate are committed too.
            let fence = kafka_fence(pipeline, state, &position, None);
            state.table = lake
                .commit_overwrite_guarded(
                    &state.table,
                    tarn_lake::Overwrite {
                        removed_data_files: old_data,
                        removed_delete_files: old_deletes,
                        added_data_files: Vec::new(),
                        summary: HashMap::new(),
                    },
                    fence.as_ref(),
                )
                .await?;
        }
        state.truncated = false;
    }
    let deletes = std::mem::take(&mut state.deletes);
    let referenced: HashSet<String> = deletes.iter().map(|(p, _)| p.to_string()).collect();
    let delete_files = if deletes.is_empty() {
        Vec::new()
    } else {
        tarn_lake::write_position_deletes(&state.table, &format!("cdc-{}", uuid::Uuid::new_v4()), deletes)
            .await?
    };
    let data_files = std::mem::take(&mut state.data_files);
    if data_files.is_empty() && delete_files.is_empty() {
        // Nothing to write (a truncate of an empty table, a scan that found no rows): record
        // the position as a property, since an empty snapshot is not committed.
        state.table = lake
            .set_properties(&state.ident, idle_property(pipeline, &position))
            .await?;
        state.hold(position);
        state.dirty = false;
        return Ok((0, 0));
    }
    let inserted = data_files.iter().map(DataFile::record_count).sum::<u64>();
    let deleted = delete_files.iter().map(DataFile::record_count).sum::<u64>();
    tracing::debug!(
        table = %state.ident,
        %position,
        data_files = data_files.len(),
        rows = inserted,
        delete_files = delete_files.len(),
        deletes = deleted,
        "committing"
    );
    let recorded = Arc::new(Mutex::new(None));
    let guard = match kafka_fence(pipeline, state, &position, Some((commit_time, recorded.clone()))) {
        Some(fence) => foreign_rows_guard(pipeline, state).and(fence),
        None => foreign_rows_guard(pipeline, state),
    };
    state.table = lake
        .commit_row_delta_guarded(
            &state.table,
            RowDelta {
                data_files,
                delete_files,
                referenced_data_files: referenced,
                summary,
            },
            Some(&guard),
        )
        .await?;
    let recorded = recorded.lock().expect("fence poisoned").take();
    state.hold(recorded.unwrap_or(position));
    state.dirty = false;
    state.counters.commits += 1;
    metrics::counter!("tarn_cdc_commits_total", "table" => state.ident.to_string()).increment(1);
    Ok((inserted, deleted))
}

/// Refuses a commit onto rows another writer added since the key index last matched the
/// table (`state.table`).
///
/// The index knows the rows this pipeline wrote. A row-level statement or another engine
/// that adds rows to the table — an `UPDATE` (old version deleted, new one added), a `MERGE`
/// or `INSERT` of a key the source also has — leaves the index pointing at the replaced
/// version or knowing nothing of the new one, so the next change of that key from the source
/// would delete the wrong version and leave the key twice. So the commit checks the snapshots
/// between the indexed one and the one it lands on: snapshots of this pipeline (any worker),
/// rewrites (`replace`: compaction moves rows without changing them; a stale position then
/// fails the commit's referenced-file check) and snapshots that only delete rows (a delete of
/// a row the index still names is harmless: deleting it again changes nothing) pass; any
/// other snapshot that added rows is a commit conflict, and the pipeline restarts from what
/// the lake holds, rebuilding the index with those rows. A snapshot between the two that is
/// no longer in the metadata (expired) cannot be told, and is a conflict too.
fn foreign_rows_guard(pipeline: &str, state: &TableState) -> tarn_lake::CommitGuard {
    use iceberg::spec::Operation;
    let indexed = state
        .table
        .metadata()
        .current_snapshot()
        .map(|s| (s.snapshot_id(), s.sequence_number()));
    let pipeline = pipeline.to_string();
    let target = state.ident.to_string();
    tarn_lake::CommitGuard::new(move |current: &Table| {
        let metadata = current.metadata();
        let conflict = |what: String| {
            Err(Error::new(
                ErrorKind::CommitConflict,
                format!(
                    "{what} of {target} since this pipeline's last commit; restarting from the lake so its key index learns them"
                ),
            ))
        };
        let mut next = metadata.current_snapshot();
        while let Some(snapshot) = next {
            if indexed.is_some_and(|(id, sequence)| {
                snapshot.snapshot_id() == id || snapshot.sequence_number() <= sequence
            }) {
                break;
            }
            let summary = snapshot.summary();
            let ours = summary.additional_properties.get(SUMMARY_PIPELINE) == Some(&pipeline);
            // Writers leave zero counters out; one that keeps no counters at all (no
            // `total-records` either) may have added rows.
            let counters = &summary.additional_properties;
            let added_rows = match counters.get("added-records") {
                Some(n) => n.parse::<u64>().unwrap_or(1),
                None if counters.contains_key("total-records") => 0,
                None => 1,
            };
            if !ours && summary.operation != Operation::Replace && added_rows > 0 {
                let writer = summary
                    .additional_properties
                    .get("tarn.statement")
                    .or_else(|| summary.additional_properties.get(SUMMARY_PIPELINE))
                    .map_or_else(
                        || "another writer".to_string(),
                        |w| format!("another writer ({w})"),
                    );
                return conflict(format!(
                    "{writer} added {added_rows} rows in snapshot {}",
                    snapshot.snapshot_id()
                ));
            }
            next = match snapshot.parent_snapshot_id() {
                Some(parent) => match metadata.snapshot_by_id(parent) {
                    Some(s) => Some(s),
                    None if indexed.is_some() => {
                        return conflict(format!("snapshot {parent} expired"));
                    }
                    None => None,
                },
                None => None,
            };
        }
        Ok(HashMap::new())
    })
}

/// The fence of a commit of Kafka offsets to `state`'s table; `None` for other positions.
///
/// Workers of one consumer group may write the same table, each the partitions the group
/// gave it, and a partition changes hands at a rebalance while its old owner may still be
/// committing what it read. So the commit checks, against the table it lands on, that no
/// other writer advanced any partition it records beyond what this sink last saw the table
/// hold for it (a commit conflict otherwise: its changes are discarded and the pipeline
/// restarts from the offsets the table holds), and records its offsets merged with the
/// ones the table holds for the other partitions. With `record` (the source commit time and
/// where to put the merged offsets) the merged offsets go into the summary; without, the
/// commit only checks.
fn kafka_fence(
    pipeline: &str,
    state: &TableState,
    position: &Position,
    record: Option<(i64, Arc<Mutex<Option<Position>>>)>,
) -> Option<tarn_lake::CommitGuard> {
    let committing = position.kafka()?.clone();
    let held = state
        .position
        .as_ref()
        .and_then(Position::kafka)
        .cloned()
        .unwrap_or_default();
    let pipeline = pipeline.to_string();
    let target = state.ident.to_string();
    Some(tarn_lake::CommitGuard::new(move |current: &Table| {
        let table_holds = match table_position(current, &pipeline).0 {
            Some(Position::Kafka(o)) => o,
            _ => KafkaOffsets::new(),
        };
        for (tp, _) in committing.iter() {
            let (theirs, ours) = (table_holds.get(tp), held.get(tp));
            if theirs > ours {
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    format!(
                        "fenced: another worker of pipeline {pipeline} committed {}:{} into {target} up to offset {} \
                         while this one held it at {}; the changes read since are discarded and the pipeline \
                         restarts from the offsets the table holds",
                        tp.topic,
                        tp.partition,
                        theirs.unwrap_or_default(),
                        ours.map_or("none".to_string(), |o| o.to_string()),
                    ),
                ));
            }
        }
        let Some((commit_time, recorded)) = &record else {
            return Ok(HashMap::new());
        };
        let merged = Position::Kafka(table_holds.merged(&committing));
        let summary = commit_summary(&pipeline, &merged, Some(*commit_time));
        *recorded.lock().expect("fence poisoned") = Some(merged);
        Ok(summary)
    }))
}

/// Where each row of a written batch went, in batch order. CDC tables are unpartitioned, so a
/// batch lands in one file in order.
fn placements(
    written: Vec<tarn_lake::WrittenRows>,
    rows: usize,
    table: &TableIdent,
) -> Result<Vec<(Arc<str>, u64)>> {
    let mut out = Vec::with_capacity(rows);
    if written.len() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("table {table} is partitioned; CDC writes unpartitioned tables only"),
        ));
    }
    for w in written {
        for i in 0..w.batch.num_rows() as u64 {
            out.push((w.data_file.clone(), w.first_pos + i));
        }
    }
    if out.len() != rows {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("wrote {} rows of {rows} into {table}", out.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tarn_core::Config;

    use super::*;
    use crate::position::TopicPartition;
    use crate::scripted::testing::{lake_rows, row, table};

    fn offsets(pairs: &[(i32, i64)]) -> Position {
        let mut o = KafkaOffsets::new();
        for &(p, offset) in pairs {
            o.insert(TopicPartition::new("t", p), offset);
        }
        Position::Kafka(o)
    }

    /// One transaction of partition `partition` ending at `end`, inserting `id`.
    async fn apply(sink: &mut LakeSink, partition: i32, end: i64, commit: Position, id: i64) {
        sink.apply(SourceEvent::Begin {
            commit_position: offsets(&[(partition, end)]),
            transaction_id: None,
        })
        .await
        .unwrap();
        sink.apply(SourceEvent::Insert {
            table: 1,
            new: row(id, Some("v")),
        })
        .await
        .unwrap();
        sink.apply(SourceEvent::Commit {
            position: commit,
            commit_time_micros: 1,
        })
        .await
        .unwrap();
    }

    /// Two workers of one consumer group write one table: each commit records its own
    /// partitions merged with the other's, and a worker that commits a partition the other
    /// advanced meanwhile (it was moved by a rebalance) is fenced, leaving the table as it was.
    #[tokio::test]
    async fn workers_sharing_a_table_are_fenced_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.cdc.pipeline = "group".into();
        config.maintenance.auto = false;
        let lake = Lake::open(&config).await.unwrap();
        let sink = || crate::pipeline::lake_sink(&config, lake.clone());
        let (mut a, mut b) = (sink(), sink());
        a.attach(table(1, "items")).await.unwrap();
        b.attach(table(1, "items")).await.unwrap();
        // `a` owns partition 0, `b` partition 1.
        apply(&mut a, 0, 10, offsets(&[(0, 10)]), 1).await;
        a.flush().await.unwrap();
        apply(&mut b, 1, 5, offsets(&[(1, 5)]), 2).await;
        b.flush().await.unwrap();
        let ident = a.lake_ident(&table(1, "items"));
        let held = |t: &Table| table_position(t, "group").0;
        let t = lake.load_table(&ident).await.unwrap();
        assert_eq!(held(&t), Some(offsets(&[(0, 10), (1, 5)])), "merged offsets");
        // Partition 1 moves to `a` (it restarts: a fresh sink attached now), while `b` still
        // holds uncommitted rows of it.
        apply(&mut b, 1, 8, offsets(&[(1, 8)]), 3).await;
        let mut a = sink();
        a.attach(table(1, "items")).await.unwrap();
        apply(&mut a, 1, 8, offsets(&[(0, 10), (1, 8)]), 3).await;
        a.flush().await.unwrap();
        // `b`'s commit of partition 1 would apply offsets 5..8 a second time: fenced.
        let err = b.flush().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        assert!(err.to_string().contains("fenced"), "{err}");
        let t = lake.load_table(&ident).await.unwrap();
        assert_eq!(held(&t), Some(offsets(&[(0, 10), (1, 8)])));
        let rows = lake_rows(&config, &table(1, "items")).await;
        assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), ["1", "2", "3"]);
    }
}
