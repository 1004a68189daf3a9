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
//! Unchanged TOASTed values ([`Value::Unchanged`]) keep their previous value: from the old row
//! when the source sent it, from an earlier change in the buffer, or read back from the row's
//! current location in the lake. A table whose schema changes in a way Iceberg cannot follow
//! (a new key, an incompatible type change) is stopped with the reason recorded in its
//! properties (`tarn.cdc.stopped`); the other tables go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use iceberg::spec::{DataContentType, DataFile, NestedField, PrimitiveType, Schema as IcebergSchema, Type};
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};
use tarn_core::{Error, ErrorKind, Result, failpoint};
use tarn_lake::{Lake, PositionedDataWriter, RowDelta, TableLayout};

use crate::index::{IndexKey, KeyEncoder, KeyIndex, RowLocation, key_types};
use crate::postgres::snapshot::BatchWriter;
use crate::source::{KeyKind, Position, Row, SourceEvent, TableId, TableSpec, Value};
use crate::value::builder::{BatchBuilder, ColumnBuilder, arrow_schema};

/// Snapshot summary key: the pipeline that committed.
pub const SUMMARY_PIPELINE: &str = "tarn.cdc.pipeline";
/// Snapshot summary key: the source position the table holds everything up to.
pub const SUMMARY_LSN: &str = "tarn.cdc.lsn";
/// Snapshot summary key: for a CockroachDB source, the resolved timestamp (`wall.logical`) the
/// table holds everything up to (in place of [`SUMMARY_LSN`]).
pub const SUMMARY_RESOLVED: &str = "tarn.cdc.resolved";
/// Snapshot summary key: the source commit time (µs since the Unix epoch) of that position.
pub const SUMMARY_COMMIT_TIME: &str = "tarn.cdc.commit-time-us";
/// Snapshot summary key: what a snapshot commit was (`initial`, `table-added`, `resnapshot`).
pub const SUMMARY_SNAPSHOT: &str = "tarn.cdc.snapshot";
/// Table property: why CDC stopped writing the table.
pub const PROPERTY_STOPPED: &str = "tarn.cdc.stopped";
/// Table property: the source table.
pub const PROPERTY_SOURCE_TABLE: &str = "tarn.cdc.source-table";
/// Table property prefix (`.<pipeline>` follows): a position the table holds everything up to
/// although no snapshot records it — set when a commit had nothing to write, and for tables
/// without changes while others moved on ([`LakeSink::mark_idle`]).
pub const PROPERTY_IDLE: &str = "tarn.cdc.idle-position";
/// Table property: Iceberg field id → source attribute number, for renames.
pub const PROPERTY_ATTNUMS: &str = "tarn.cdc.attnums";

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

/// A table's state as read from the lake when the sink attaches it.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The lake table.
    pub ident: TableIdent,
    /// The position the table holds everything up to, for this pipeline.
    pub position: Option<Position>,
    /// Why the table was stopped, if it was.
    pub stopped: Option<String>,
    /// Rows in the index.
    pub indexed_rows: usize,
}

/// One buffered change of a key.
#[derive(Debug)]
enum Change {
    /// The row's new version; `fill_from` names the key whose current lake row supplies
    /// still-unchanged TOASTed values.
    Upsert { row: Row, fill_from: Option<Box<[u8]>> },
    /// The key is gone.
    Delete,
    /// Whole-row keys: this row, `net` more (or fewer) times.
    Net { row: Row, net: i64 },
}

#[derive(Debug)]
struct Entry {
    key_cells: Vec<Value>,
    change: Change,
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
    pending: HashMap<Box<[u8]>, Entry>,
    pending_bytes: usize,
    data_files: Vec<DataFile>,
    deletes: Vec<(Arc<str>, u64)>,
    truncated: bool,
    dirty: bool,
    counters: TableCounters,
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
}

fn cell_bytes(row: &Row) -> usize {
    row.iter()
        .map(|v| match v {
            Value::Text(b) | Value::Binary(b) => b.len() + 16,
            _ => 16,
        })
        .sum()
}

fn text_cell(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Text(b) | Value::Binary(b) => Some(b.as_ref()),
        Value::Null | Value::Unchanged => None,
    }
}

/// A collapse key: the key cells' text, length-prefixed (NULL and unchanged marked).
fn text_key(cells: &[&Value]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(cells.len() * 12);
    for v in cells {
        match v {
            Value::Text(b) | Value::Binary(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            Value::Null => out.push(0),
            Value::Unchanged => out.push(2),
        }
    }
    out.into_boxed_slice()
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
        }
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

    /// Lake identifiers and committed positions of every attached table.
    pub fn table_positions(&self) -> Vec<(TableIdent, Option<Position>, Option<String>, TableCounters)> {
        let mut out: Vec<_> = self
            .tables
            .values()
            .map(|t| (t.ident.clone(), t.position, t.stopped.clone(), t.counters.clone()))
            .collect();
        out.sort_by_key(|a| a.0.to_string());
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
        self.last_commit
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
        let stopped = table.metadata().properties().get(PROPERTY_STOPPED).cloned();
        let schema = arrow_schema(&spec);
        let key_columns = spec.key_columns();
        let encoder = Arc::new(KeyEncoder::new(key_types(&schema, &key_columns)));
        let mut state = TableState {
            ident: ident.clone(),
            table,
            position,
            stopped: stopped.clone(),
            key_columns,
            encoder,
            index: KeyIndex::new(spec.key_kind == KeyKind::FullRow),
            spec: spec.clone(),
            pending: HashMap::new(),
            pending_bytes: 0,
            data_files: Vec::new(),
            deletes: Vec::new(),
            truncated: false,
            dirty: false,
            counters: TableCounters::default(),
        };
        if stopped.is_none() {
            rebuild_index(&self.lake, &mut state, None).await?;
        }
        let indexed_rows = state.index.len();
        self.tables.insert(spec.id, state);
        Ok(Attached {
            ident,
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
        let mut properties = HashMap::from([
            (PROPERTY_SOURCE_TABLE.to_string(), spec.qualified()),
            (SUMMARY_PIPELINE.to_string(), self.options.pipeline.clone()),
        ]);
        let layout = TableLayout {
            properties: properties.clone(),
            ..TableLayout::default()
        };
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let schema = tarn_lake::iceberg_schema_with_keys(&schema, &key_refs)?;
        let table = self.lake.create_table_with_schema(ident, schema, &layout).await?;
        properties.insert(PROPERTY_ATTNUMS.into(), attnum_property(&table, spec));
        self.lake.set_properties(ident, properties).await
    }

    /// Starts writing a snapshot copy of table `id`: one writer per copy connection.
    pub fn snapshot_writer(
        &self,
        id: TableId,
        part: usize,
        index: Arc<std::sync::Mutex<KeyIndex>>,
    ) -> Result<SnapshotPartWriter> {
        let state = self.state(id)?;
        Ok(SnapshotPartWriter {
            table: state.ident.clone(),
            writer: PositionedDataWriter::new(
                &state.table,
                &format!("snap-{}-{part}", uuid::Uuid::new_v4()),
            )?,
            encoder: state.encoder.clone(),
            key_columns: state.key_columns.clone(),
            index,
        })
    }

    /// The index a snapshot copy of table `id` fills while it writes (shared by its copy
    /// connections, so the keys of a large table are held once).
    pub fn snapshot_index(&self, id: TableId) -> Result<Arc<std::sync::Mutex<KeyIndex>>> {
        let state = self.state(id)?;
        Ok(Arc::new(std::sync::Mutex::new(KeyIndex::new(
            state.spec.key_kind == KeyKind::FullRow,
        ))))
    }

    /// Commits a finished snapshot copy of table `id` as one snapshot holding everything up to
    /// `position`, replacing whatever the table held.
    pub async fn finish_snapshot(
        &mut self,
        id: TableId,
        parts: Vec<SnapshotPart>,
        index: Arc<std::sync::Mutex<KeyIndex>>,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        let pipeline = self.options.pipeline.clone();
        let lake = self.lake.clone();
        let state = self.state_mut(id)?;
        failpoint::hit("cdc.snapshot.before_commit").await?;
        let mut data_files = Vec::new();
        for part in &parts {
            data_files.extend(part.files.iter().cloned());
        }
        let rows: u64 = data_files.iter().map(DataFile::record_count).sum();
        let mut summary = position_summary(&pipeline, position, None);
        summary.insert(SUMMARY_SNAPSHOT.into(), kind.to_string());
        let (old_data, old_deletes) = current_files(&state.table).await?;
        state.table = if old_data.is_empty() && old_deletes.is_empty() {
            lake.commit_row_delta(
                &state.table,
                RowDelta {
                    data_files,
                    delete_files: Vec::new(),
                    referenced_data_files: HashSet::new(),
                    summary,
                },
            )
            .await?
        } else {
            lake.commit_overwrite(
                &state.table,
                tarn_lake::Overwrite {
                    removed_data_files: old_data,
                    removed_delete_files: old_deletes,
                    added_data_files: data_files,
                    summary,
                },
            )
            .await?
        };
        state.position = Some(position);
        state.index = match Arc::try_unwrap(index) {
            Ok(index) => index.into_inner().expect("snapshot index poisoned"),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "a snapshot writer outlived its copy",
                ));
            }
        };
        state.counters.commits += 1;
        metrics::counter!("tarn_cdc_snapshot_rows_total", "table" => state.ident.to_string()).increment(rows);
        Ok(rows)
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
            SourceEvent::Begin { commit_position } => {
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
            }
            SourceEvent::Keepalive { .. } => {}
            SourceEvent::Relation(spec) => self.relation(spec).await?,
            SourceEvent::Insert { table, new } => {
                if let Some(state) = self.live_table(table) {
                    let key: Vec<&Value> = state.key_columns.iter().map(|&i| &new[i]).collect();
                    let key_cells = key.iter().map(|v| (*v).clone()).collect();
                    let tkey = text_key(&key);
                    let bytes = cell_bytes(&new);
                    let multi = state.spec.key_kind == KeyKind::FullRow;
                    let change = if multi {
                        let net = match state.pending.get(&tkey) {
                            Some(Entry {
                                change: Change::Net { net, .. },
                                ..
                            }) => *net + 1,
                            _ => 1,
                        };
                        Change::Net { row: new, net }
                    } else {
                        Change::Upsert {
                            row: new,
                            fill_from: None,
                        }
                    };
                    state.pending.insert(tkey, Entry { key_cells, change });
                    self.note_change(table, bytes);
                }
            }
            SourceEvent::Update { table, old, new } => {
                if let Some(state) = self.live_table(table) {
                    let bytes = cell_bytes(&new);
                    update(state, old, new)?;
                    self.note_change(table, bytes);
                }
            }
            SourceEvent::Delete { table, old } => {
                if let Some(state) = self.live_table(table) {
                    let key: Vec<&Value> = state.key_columns.iter().map(|&i| &old[i]).collect();
                    if key.iter().any(|v| matches!(v, Value::Unchanged)) {
                        return Err(Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "a delete from {} carries an unchanged TOASTed value in its key; give the table a primary key",
                                state.spec.qualified()
                            ),
                        ));
                    }
                    let key_cells = key.iter().map(|v| (*v).clone()).collect();
                    let tkey = text_key(&key);
                    let change = if state.spec.key_kind == KeyKind::FullRow {
                        let net = match state.pending.get(&tkey) {
                            Some(Entry {
                                change: Change::Net { net, .. },
                                ..
                            }) => *net - 1,
                            _ => -1,
                        };
                        Change::Net { row: old, net }
                    } else {
                        Change::Delete
                    };
                    state.pending.insert(tkey, Entry { key_cells, change });
                    self.note_change(table, 64);
                }
            }
            SourceEvent::Truncate { tables } => {
                for id in tables {
                    if let Some(state) = self.live_table(id) {
                        // Files written since the last commit are dropped with the rows they hold.
                        state.pending.clear();
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
        let txn = self.txn_commit;
        let state = self.tables.get_mut(&id)?;
        if state.stopped.is_some() {
            return None;
        }
        match (txn, state.position) {
            (Some(commit), Some(held)) if commit < held => None,
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
    pub async fn mark_idle(&mut self, position: Position) -> Result<()> {
        let lake = self.lake.clone();
        let pipeline = self.options.pipeline.clone();
        for state in self.tables.values_mut() {
            if state.dirty || state.stopped.is_some() || state.position.is_none_or(|p| p >= position) {
                continue;
            }
            state.table = lake
                .set_properties(&state.ident, idle_property(&pipeline, position))
                .await?;
            state.position = Some(position);
        }
        Ok(())
    }

    /// Commits every table with changes, up to the last applied transaction; returns the
    /// position the source may be acknowledged up to. Must be called between transactions.
    pub async fn flush(&mut self) -> Result<Option<Position>> {
        if self.in_transaction {
            return Err(Error::new(ErrorKind::Internal, "flush inside a transaction"));
        }
        let Some((position, commit_time)) = self.last_commit else {
            return Ok(None);
        };
        let lake = self.lake.clone();
        let pipeline = self.options.pipeline.clone();
        for state in self.tables.values_mut() {
            if !state.dirty {
                continue;
            }
            let started = Instant::now();
            write_pending(&lake, state).await?;
            failpoint::hit("cdc.before_commit").await?;
            commit_table(&lake, &pipeline, state, position, commit_time).await?;
            metrics::histogram!("tarn_cdc_commit_seconds").record(started.elapsed().as_secs_f64());
            if position.is_hlc() {
                metrics::gauge!("tarn_cdc_table_resolved_seconds", "table" => state.ident.to_string())
                    .set(position.wall_nanos() as f64 / 1e9);
            } else {
                metrics::gauge!("tarn_cdc_table_lsn", "table" => state.ident.to_string())
                    .set(position.lsn() as f64);
            }
        }
        failpoint::hit("cdc.after_commit").await?;
        self.pending_events = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        Ok(Some(position))
    }

    async fn relation(&mut self, spec: Arc<TableSpec>) -> Result<()> {
        let lake = self.lake.clone();
        let Some(state) = self.tables.get_mut(&spec.id) else {
            return Ok(());
        };
        if state.stopped.is_some() {
            return Ok(());
        }
        match plan_schema_change(&state.table, &state.spec, &spec) {
            Ok(None) => {
                state.spec = spec;
                Ok(())
            }
            Ok(Some((schema, attnums))) => {
                // Rows buffered under the old schema go out first.
                write_pending(&lake, state).await?;
                let props = HashMap::from([(PROPERTY_ATTNUMS.to_string(), attnums)]);
                state.table = lake.evolve_schema(&state.table, schema, props).await?;
                tracing::info!(table = %state.ident, source = %spec.qualified(), "schema evolved");
                state.spec = spec;
                Ok(())
            }
            Err(reason) => {
                tracing::error!(table = %state.ident, %reason, "stopping the table: incompatible schema change");
                metrics::counter!("tarn_cdc_tables_stopped_total").increment(1);
                state.pending.clear();
                state.data_files.clear();
                state.deletes.clear();
                state.dirty = false;
                state.stopped = Some(reason.clone());
                state.table = lake
                    .set_properties(
                        &state.ident,
                        HashMap::from([(PROPERTY_STOPPED.to_string(), reason)]),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// The automatic maintenance policy: compacts, expires snapshots of and removes orphan
    /// files from every table this sink writes, between commits (so nothing of this writer
    /// conflicts), and re-indexes the files compaction wrote.
    pub async fn maintain(&mut self, config: &tarn_core::config::MaintenanceConfig) -> Result<()> {
        if self.pending_events > 0 || self.in_transaction {
            return Ok(());
        }
        let lake = self.lake.clone();
        let now = chrono::Utc::now();
        let age = |key: &str| {
            chrono::Duration::from_std(config.duration(key)).unwrap_or(chrono::Duration::hours(1))
        };
        let idents: Vec<TableIdent> = self
            .tables
            .values()
            .filter(|t| t.stopped.is_none())
            .map(|t| t.ident.clone())
            .collect();
        for ident in idents {
            let started = Instant::now();
            let outcome = lake
                .compact(
                    &ident,
                    &tarn_lake::CompactOptions {
                        small_file_threshold: config.small_file_bytes,
                        min_input_files: config.min_files,
                        delete_ratio_threshold: config.delete_ratio,
                        file_prefix: format!("compact-{}", uuid::Uuid::new_v4()),
                        ..tarn_lake::CompactOptions::default()
                    },
                )
                .await?;
            if outcome.snapshot_id.is_some() {
                let removed: HashSet<String> = outcome.removed_data_files.iter().cloned().collect();
                let added: HashSet<String> = outcome
                    .added_data_files
                    .iter()
                    .map(|f| f.file_path().to_string())
                    .collect();
                self.reindex_files(&ident, &removed, &added).await?;
                tracing::info!(
                    table = %ident,
                    removed = removed.len(),
                    added = added.len(),
                    rows = outcome.rows_rewritten,
                    purged = outcome.rows_purged,
                    seconds = started.elapsed().as_secs_f64(),
                    "compacted"
                );
            }
            let expired = lake
                .expire_snapshots(
                    &ident,
                    &tarn_lake::ExpireOptions {
                        older_than: now - age("snapshot_age"),
                        retain_last: config.retain_snapshots,
                        progress: None,
                    },
                )
                .await?;
            let orphans = lake
                .remove_orphan_files(
                    &ident,
                    &tarn_lake::OrphanOptions {
                        older_than: now - age("orphan_age"),
                        dry_run: false,
                        progress: None,
                    },
                )
                .await?;
            if !expired.expired_snapshots.is_empty() || orphans.deleted > 0 {
                tracing::info!(
                    table = %ident,
                    expired_snapshots = expired.expired_snapshots.len(),
                    deleted_files = expired.deleted_data_files + expired.deleted_delete_files,
                    orphans = orphans.deleted,
                    "expired snapshots and removed orphan files"
                );
            }
            for state in self.tables.values_mut() {
                if state.ident == ident {
                    state.table = lake.load_table(&ident).await?;
                }
            }
        }
        Ok(())
    }

    /// Tables whose key index must be rebuilt because `removed` data files were rewritten
    /// (by maintenance in this process): drops their entries and reads the `added` files.
    pub async fn reindex_files(
        &mut self,
        ident: &TableIdent,
        removed: &HashSet<String>,
        added: &HashSet<String>,
    ) -> Result<()> {
        let lake = self.lake.clone();
        for state in self.tables.values_mut() {
            if &state.ident == ident {
                state.table = lake.load_table(ident).await?;
                state.index.remove_files(removed);
                rebuild_index(&lake, state, Some(added)).await?;
            }
        }
        Ok(())
    }
}

fn update(state: &mut TableState, old: Option<Row>, mut new: Row) -> Result<()> {
    let multi = state.spec.key_kind == KeyKind::FullRow;
    if multi {
        let Some(old) = old else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "an update of {} arrived without its old row",
                    state.spec.qualified()
                ),
            ));
        };
        if old.iter().any(|v| matches!(v, Value::Unchanged)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "an update of {} (no primary key) carries an unchanged TOASTed value in its old row; give the table a primary key",
                    state.spec.qualified()
                ),
            ));
        }
        for (n, o) in new.iter_mut().zip(&old) {
            if matches!(n, Value::Unchanged) {
                *n = o.clone();
            }
        }
        for (row, delta) in [(old, -1i64), (new, 1)] {
            let key: Vec<&Value> = state.key_columns.iter().map(|&i| &row[i]).collect();
            let key_cells = key.iter().map(|v| (*v).clone()).collect();
            let tkey = text_key(&key);
            let net = match state.pending.get(&tkey) {
                Some(Entry {
                    change: Change::Net { net, .. },
                    ..
                }) => *net + delta,
                _ => delta,
            };
            state.pending.insert(
                tkey,
                Entry {
                    key_cells,
                    change: Change::Net { row, net },
                },
            );
        }
        return Ok(());
    }
    let new_key: Vec<&Value> = state.key_columns.iter().map(|&i| &new[i]).collect();
    let new_tkey = text_key(&new_key);
    let new_cells: Vec<Value> = new_key.iter().map(|v| (*v).clone()).collect();
    // The key the row had before: the old tuple's, when the key changed.
    let old_tkey = match &old {
        Some(o) => {
            let k: Vec<&Value> = state.key_columns.iter().map(|&i| &o[i]).collect();
            text_key(&k)
        }
        None => new_tkey.clone(),
    };
    // Unchanged TOASTed values: from a full old row, else from the buffered version, else
    // from the lake row of the old key.
    if let Some(o) = &old {
        for (n, ov) in new.iter_mut().zip(o) {
            if matches!(n, Value::Unchanged) && !matches!(ov, Value::Unchanged | Value::Null) {
                *n = ov.clone();
            }
        }
    }
    let mut fill_from = None;
    if new.iter().any(|v| matches!(v, Value::Unchanged)) {
        match state.pending.get(&old_tkey) {
            Some(Entry {
                change: Change::Upsert { row, fill_from: f },
                ..
            }) => {
                for (n, pv) in new.iter_mut().zip(row) {
                    if matches!(n, Value::Unchanged) {
                        *n = pv.clone();
                    }
                }
                fill_from = f.clone();
            }
            Some(Entry {
                change: Change::Delete,
                ..
            }) => {}
            _ => fill_from = Some(old_tkey.clone()),
        }
        if !new.iter().any(|v| matches!(v, Value::Unchanged)) {
            fill_from = None;
        }
    }
    if old_tkey != new_tkey {
        let old_cells = old
            .as_ref()
            .map(|o| state.key_columns.iter().map(|&i| o[i].clone()).collect())
            .unwrap_or_default();
        state.pending.insert(
            old_tkey,
            Entry {
                key_cells: old_cells,
                change: Change::Delete,
            },
        );
    }
    state.pending.insert(
        new_tkey,
        Entry {
            key_cells: new_cells,
            change: Change::Upsert { row: new, fill_from },
        },
    );
    Ok(())
}

fn idle_property(pipeline: &str, position: Position) -> HashMap<String, String> {
    HashMap::from([(format!("{PROPERTY_IDLE}.{pipeline}"), position.to_string())])
}

/// The position a table holds for `pipeline`: from the newest snapshot (walking back through
/// parents past commits of others, e.g. compaction) whose summary has one, or the table's
/// idle position ([`PROPERTY_IDLE`]) when that is later.
pub fn table_position(table: &Table, pipeline: &str) -> (Option<Position>, Option<i64>) {
    let (position, time) = summary_position(table, pipeline);
    let idle = table
        .metadata()
        .properties()
        .get(&format!("{PROPERTY_IDLE}.{pipeline}"))
        .and_then(|p| Position::parse(p));
    match (position, idle) {
        (Some(p), Some(i)) if i > p => (Some(i), time),
        (None, Some(i)) => (Some(i), None),
        _ => (position, time),
    }
}

fn summary_position(table: &Table, pipeline: &str) -> (Option<Position>, Option<i64>) {
    let metadata = table.metadata();
    let mut current = metadata.current_snapshot();
    while let Some(snapshot) = current {
        let props = &snapshot.summary().additional_properties;
        if props.get(SUMMARY_PIPELINE).map(String::as_str) == Some(pipeline)
            && let Some(lsn) = props
                .get(SUMMARY_LSN)
                .and_then(|l| Position::parse_lsn(l))
                .or_else(|| props.get(SUMMARY_RESOLVED).and_then(|r| Position::parse_hlc(r)))
        {
            let time = props.get(SUMMARY_COMMIT_TIME).and_then(|t| t.parse().ok());
            return (Some(lsn), time);
        }
        current = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    (None, None)
}

fn position_summary(pipeline: &str, position: Position, commit_time: Option<i64>) -> HashMap<String, String> {
    let mut summary = HashMap::from([
        (SUMMARY_PIPELINE.to_string(), pipeline.to_string()),
        (
            if position.is_hlc() {
                SUMMARY_RESOLVED
            } else {
                SUMMARY_LSN
            }
            .to_string(),
            position.to_string(),
        ),
    ]);
    if let Some(t) = commit_time {
        summary.insert(SUMMARY_COMMIT_TIME.into(), t.to_string());
    }
    summary
}

/// Every live data file and delete file of a table's current snapshot.
pub async fn current_files(table: &Table) -> Result<(Vec<DataFile>, Vec<DataFile>)> {
    let metadata = table.metadata();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let ice = |e| tarn_lake::iceberg_error(format!("cannot read the manifests of {}", table.identifier()), e);
    let list = table.manifest_list_reader(snapshot).load().await.map_err(ice)?;
    let (mut data, mut deletes) = (Vec::new(), Vec::new());
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(table.file_io()).await.map_err(ice)?;
        for entry in manifest.entries() {
            if !entry.is_alive() {
                continue;
            }
            let file = entry.data_file().clone();
            if file.content_type() == DataContentType::Data {
                data.push(file);
            } else {
                deletes.push(file);
            }
        }
    }
    Ok((data, deletes))
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
            state.index.insert(
                key,
                RowLocation {
                    file,
                    pos: positions.value(i) as u32,
                },
            );
        }
        rows += n;
    }
    tracing::info!(table = %state.ident, rows, seconds = started.elapsed().as_secs_f64(), "key index built");
    Ok(())
}

/// Index keys of text key cells (one row per entry).
fn keys_of(state: &TableState, cells: &[&[Value]]) -> Result<Vec<IndexKey>> {
    let mut columns = Vec::with_capacity(state.key_columns.len());
    for (k, &col) in state.key_columns.iter().enumerate() {
        let spec = &state.spec.columns[col];
        let mut builder = ColumnBuilder::new(
            format!("{}.{}", state.spec.qualified(), spec.name),
            &spec.column_type,
            cells.len(),
        );
        for row in cells {
            builder.append(text_cell(&row[k]))?;
        }
        columns.push(builder.finish());
    }
    state.encoder.encode(&columns)
}

/// Turns the table's buffer into data files and position deletes (not committed).
async fn write_pending(lake: &Lake, state: &mut TableState) -> Result<()> {
    state.pending_bytes = 0;
    if state.pending.is_empty() {
        return Ok(());
    }
    failpoint::hit("cdc.before_write").await?;
    let entries: Vec<(Box<[u8]>, Entry)> = state.pending.drain().collect();
    // Index keys of every entry and of every row whose lake version fills unchanged values.
    let mut fill_keys: Vec<Box<[u8]>> = Vec::new();
    let mut fill_cells: Vec<Vec<Value>> = Vec::new();
    let mut fill_slot: HashMap<Box<[u8]>, usize> = HashMap::new();
    for (_, entry) in &entries {
        if let Change::Upsert {
            fill_from: Some(from),
            row,
        } = &entry.change
            && !fill_slot.contains_key(from)
        {
            // The filling key's cells: the key of this entry's old version. When it is the
            // entry's own key the cells are known; otherwise they are in the matching Delete.
            let cells = entries
                .iter()
                .find(|(k, _)| k == from)
                .map(|(_, e)| e.key_cells.clone())
                .unwrap_or_else(|| state.key_columns.iter().map(|&i| row[i].clone()).collect());
            fill_slot.insert(from.clone(), fill_keys.len());
            fill_keys.push(from.clone());
            fill_cells.push(cells);
        }
    }
    let cell_refs: Vec<&[Value]> = entries.iter().map(|(_, e)| e.key_cells.as_slice()).collect();
    let keys = keys_of(state, &cell_refs)?;
    let fill_refs: Vec<&[Value]> = fill_cells.iter().map(Vec::as_slice).collect();
    let fill_index_keys = if fill_refs.is_empty() {
        Vec::new()
    } else {
        keys_of(state, &fill_refs)?
    };
    // Locations of filling rows, before anything is removed from the index.
    let fill_locations: Vec<Option<RowLocation>> =
        fill_index_keys.iter().map(|k| state.index.get(k)).collect();

    let mut rows: Vec<(IndexKey, Row, Option<RowLocation>)> = Vec::new();
    let mut deleted = 0u64;
    for ((_, entry), key) in entries.into_iter().zip(keys) {
        match entry.change {
            Change::Upsert { row, fill_from } => {
                if let Some(old) = state.index.remove(&key) {
                    state
                        .deletes
                        .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                    deleted += 1;
                }
                let fill = fill_from.and_then(|f| fill_slot.get(&f).and_then(|&i| fill_locations[i]));
                rows.push((key, row, fill));
            }
            Change::Delete => {
                if let Some(old) = state.index.remove(&key) {
                    state
                        .deletes
                        .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                    deleted += 1;
                }
            }
            Change::Net { row, net } => {
                for _ in net..0 {
                    match state.index.remove(&key) {
                        Some(old) => {
                            state
                                .deletes
                                .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                            deleted += 1;
                        }
                        None => tracing::warn!(table = %state.ident, "a deleted row is not in the lake"),
                    }
                }
                for _ in 0..net {
                    rows.push((key, row.clone(), None));
                }
            }
        }
    }
    state.counters.deletes_written += deleted;
    if rows.is_empty() {
        return Ok(());
    }
    let batch = build_rows(lake, state, &rows).await?;
    let mut writer = PositionedDataWriter::new(&state.table, &format!("cdc-{}", uuid::Uuid::new_v4()))?;
    let placed = placements(writer.write(batch).await?, rows.len(), &state.ident)?;
    let files = writer.close().await?;
    failpoint::hit("cdc.after_write").await?;
    for ((key, _, _), (path, pos)) in rows.iter().zip(placed) {
        let file = state.index.file_number(&path);
        state.index.insert(
            *key,
            RowLocation {
                file,
                pos: pos as u32,
            },
        );
    }
    state.counters.rows_written += rows.len() as u64;
    state.data_files.extend(files);
    Ok(())
}

/// The batch of new row versions, with unchanged TOASTed values filled from the lake.
async fn build_rows(
    lake: &Lake,
    state: &TableState,
    rows: &[(IndexKey, Row, Option<RowLocation>)],
) -> Result<RecordBatch> {
    let mut builder = BatchBuilder::new(&state.spec, rows.len());
    // (row, column, location) of every value to fill.
    let mut patches: Vec<(usize, usize, RowLocation)> = Vec::new();
    let mut cells: Vec<Option<&[u8]>> = Vec::with_capacity(state.spec.columns.len());
    for (r, (_, row, fill)) in rows.iter().enumerate() {
        cells.clear();
        for (c, v) in row.iter().enumerate() {
            if matches!(v, Value::Unchanged) {
                match fill {
                    Some(location) => patches.push((r, c, *location)),
                    None => {
                        metrics::counter!("tarn_cdc_unresolved_toast_total").increment(1);
                        tracing::error!(table = %state.ident, column = %state.spec.columns[c].name,
                            "an unchanged TOASTed value has no previous version in the lake; writing NULL");
                    }
                }
            }
            cells.push(text_cell(v));
        }
        builder.append(&cells)?;
    }
    let batch = builder.finish()?;
    if patches.is_empty() {
        return Ok(batch);
    }
    fill_unchanged(lake, state, batch, &patches).await
}

async fn fill_unchanged(
    lake: &Lake,
    state: &TableState,
    batch: RecordBatch,
    patches: &[(usize, usize, RowLocation)],
) -> Result<RecordBatch> {
    // Read each needed row once: file → sorted positions.
    let mut by_file: HashMap<u32, Vec<u32>> = HashMap::new();
    for (_, _, l) in patches {
        by_file.entry(l.file).or_default().push(l.pos);
    }
    let columns: Vec<String> = state.spec.columns.iter().map(|c| c.name.clone()).collect();
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut where_is: HashMap<(u32, u32), (usize, usize)> = HashMap::new();
    for (file, mut positions) in by_file {
        positions.sort_unstable();
        positions.dedup();
        let path = state.index.file_path(file).clone();
        let wanted: Vec<u64> = positions.iter().map(|&p| u64::from(p)).collect();
        let read = lake.read_rows_at(&state.table, &path, &wanted, &columns).await?;
        for (i, p) in positions.iter().enumerate() {
            where_is.insert((file, *p), (sources.len() + 1, i));
        }
        sources.push(read);
    }
    let schema: SchemaRef = batch.schema();
    let mut out: Vec<ArrayRef> = batch.columns().to_vec();
    let patched_columns: HashSet<usize> = patches.iter().map(|(_, c, _)| *c).collect();
    for c in patched_columns {
        let target = schema.field(c).data_type().clone();
        let mut arrays: Vec<ArrayRef> = vec![out[c].clone()];
        for s in &sources {
            let a = s.column(c);
            arrays.push(if a.data_type() == &target {
                a.clone()
            } else {
                arrow::compute::cast(a, &target).map_err(|e| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("cannot read back column {}: {e}", schema.field(c).name()),
                    )
                })?
            });
        }
        let mut indices: Vec<(usize, usize)> = (0..batch.num_rows()).map(|r| (0, r)).collect();
        for (r, pc, l) in patches {
            if *pc == c
                && let Some(&(src, i)) = where_is.get(&(l.file, l.pos))
            {
                indices[*r] = (src, i);
            }
        }
        let refs: Vec<&dyn Array> = arrays.iter().map(AsRef::as_ref).collect();
        out[c] = arrow::compute::interleave(&refs, &indices)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot fill unchanged values: {e}")))?;
    }
    RecordBatch::try_new(schema, out)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot fill unchanged values: {e}")))
}

async fn commit_table(
    lake: &Lake,
    pipeline: &str,
    state: &mut TableState,
    position: Position,
    commit_time: i64,
) -> Result<()> {
    let summary = position_summary(pipeline, position, Some(commit_time));
    if state.truncated {
        let (old_data, old_deletes) = current_files(&state.table).await?;
        if !old_data.is_empty() || !old_deletes.is_empty() {
            state.table = lake
                .commit_overwrite(
                    &state.table,
                    tarn_lake::Overwrite {
                        removed_data_files: old_data,
                        removed_delete_files: old_deletes,
                        added_data_files: Vec::new(),
                        summary: HashMap::new(),
                    },
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
            .set_properties(&state.ident, idle_property(pipeline, position))
            .await?;
        state.position = Some(position);
        state.dirty = false;
        return Ok(());
    }
    tracing::debug!(
        table = %state.ident,
        %position,
        data_files = data_files.len(),
        rows = data_files.iter().map(DataFile::record_count).sum::<u64>(),
        delete_files = delete_files.len(),
        deletes = delete_files.iter().map(DataFile::record_count).sum::<u64>(),
        "committing"
    );
    state.table = lake
        .commit_row_delta(
            &state.table,
            RowDelta {
                data_files,
                delete_files,
                referenced_data_files: referenced,
                summary,
            },
        )
        .await?;
    state.position = Some(position);
    state.dirty = false;
    state.counters.commits += 1;
    metrics::counter!("tarn_cdc_commits_total", "table" => state.ident.to_string()).increment(1);
    Ok(())
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

/// A snapshot copy connection's writer: data files plus the index entries of their rows.
pub struct SnapshotPartWriter {
    table: TableIdent,
    writer: PositionedDataWriter,
    encoder: Arc<KeyEncoder>,
    key_columns: Vec<usize>,
    index: Arc<std::sync::Mutex<KeyIndex>>,
}

/// What one copy connection wrote (the keys went into the shared snapshot index).
pub struct SnapshotPart {
    files: Vec<DataFile>,
}

impl SnapshotPart {
    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(DataFile::record_count).sum()
    }
}

#[async_trait::async_trait]
impl BatchWriter for SnapshotPartWriter {
    type Output = SnapshotPart;

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let key_columns: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self.encoder.encode(&key_columns)?;
        let rows = batch.num_rows();
        let placed = placements(self.writer.write(batch).await?, rows, &self.table)?;
        let mut index = self.index.lock().expect("snapshot index poisoned");
        for (key, (path, pos)) in keys.into_iter().zip(placed) {
            let file = index.file_number(&path);
            index.insert(
                key,
                RowLocation {
                    file,
                    pos: pos as u32,
                },
            );
        }
        Ok(())
    }

    async fn finish(self) -> Result<SnapshotPart> {
        let files = self.writer.close().await?;
        Ok(SnapshotPart { files })
    }
}

/// The `tarn.cdc.attnums` property: `field_id:attnum` pairs.
fn attnum_property(table: &Table, spec: &TableSpec) -> String {
    let schema = table.metadata().current_schema();
    spec.columns
        .iter()
        .filter_map(|c| {
            schema
                .field_by_name(&c.name)
                .map(|f| format!("{}:{}", f.id, c.attnum))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_attnums(table: &Table) -> HashMap<i16, i32> {
    table
        .metadata()
        .properties()
        .get(PROPERTY_ATTNUMS)
        .map(|s| {
            s.split(',')
                .filter_map(|pair| {
                    let (id, attnum) = pair.split_once(':')?;
                    Some((attnum.parse().ok()?, id.parse().ok()?))
                })
                .filter(|(attnum, _)| *attnum != 0)
                .collect()
        })
        .unwrap_or_default()
}

fn iceberg_type_of(column: &crate::source::ColumnSpec) -> Result<Type, String> {
    let arrow = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        &column.name,
        crate::value::arrow_type(&column.column_type),
        true,
    )]);
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow)
        .map_err(|e| format!("column {} cannot be mapped: {e}", column.name))?;
    Ok(schema.as_struct().fields()[0].field_type.as_ref().clone())
}

/// Whether two Iceberg types are the same, ignoring the ids of nested fields.
fn same_type(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::Primitive(x), Type::Primitive(y)) => x == y,
        (Type::List(x), Type::List(y)) => {
            x.element_field.required == y.element_field.required
                && same_type(&x.element_field.field_type, &y.element_field.field_type)
        }
        (Type::Struct(x), Type::Struct(y)) => {
            x.fields().len() == y.fields().len()
                && x.fields().iter().zip(y.fields()).all(|(f, g)| {
                    f.name == g.name && f.required == g.required && same_type(&f.field_type, &g.field_type)
                })
        }
        (Type::Map(x), Type::Map(y)) => {
            same_type(&x.key_field.field_type, &y.key_field.field_type)
                && same_type(&x.value_field.field_type, &y.value_field.field_type)
        }
        _ => false,
    }
}

fn promotable(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (a, b) if same_type(a, b) => true,
        (Type::Primitive(P::Int), Type::Primitive(P::Long)) => true,
        (Type::Primitive(P::Float), Type::Primitive(P::Double)) => true,
        (
            Type::Primitive(P::Decimal {
                precision: p1,
                scale: s1,
            }),
            Type::Primitive(P::Decimal {
                precision: p2,
                scale: s2,
            }),
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

/// Gives fresh ids (from `next`) to the nested fields of a new column's type.
fn renumber(t: &Type, next: &mut i32) -> Type {
    match t {
        Type::Primitive(_) => t.clone(),
        Type::List(list) => {
            *next += 1;
            let id = *next;
            let element = renumber(&list.element_field.field_type, next);
            let mut field = NestedField::list_element(id, element, list.element_field.required);
            field.doc = list.element_field.doc.clone();
            Type::List(iceberg::spec::ListType {
                element_field: Arc::new(field),
            })
        }
        Type::Struct(s) => {
            let fields = s
                .fields()
                .iter()
                .map(|f| {
                    *next += 1;
                    let id = *next;
                    let ty = renumber(&f.field_type, next);
                    Arc::new(NestedField::new(id, f.name.clone(), ty, f.required))
                })
                .collect();
            Type::Struct(iceberg::spec::StructType::new(fields))
        }
        Type::Map(_) => t.clone(),
    }
}

/// The schema change a new source spec asks of the lake table: `Ok(None)` when nothing
/// changes, `Ok(Some((schema, attnums)))` for an evolution, `Err(reason)` when it is
/// incompatible.
fn plan_schema_change(
    table: &Table,
    old: &TableSpec,
    new: &TableSpec,
) -> std::result::Result<Option<(IcebergSchema, String)>, String> {
    let current = table.metadata().current_schema();
    let attnum_to_field = parse_attnums(table);
    let qualified = new.qualified();
    let old_keys: Vec<&str> = old
        .key_columns()
        .iter()
        .map(|&i| old.columns[i].name.as_str())
        .collect();
    let new_keys: Vec<&str> = new
        .key_columns()
        .iter()
        .map(|&i| new.columns[i].name.as_str())
        .collect();
    let mut fields: Vec<Arc<NestedField>> = Vec::new();
    let mut changed = false;
    let mut next_id = table.metadata().last_column_id();
    let mut used: HashSet<i32> = HashSet::new();
    let mut renames: HashMap<String, String> = HashMap::new();
    let mut attnums = Vec::new();
    for column in &new.columns {
        let existing = attnum_to_field
            .get(&column.attnum)
            .and_then(|id| current.field_by_id(*id))
            .or_else(|| current.field_by_name(&column.name));
        let new_type = iceberg_type_of(column)?;
        match existing {
            Some(field) if !used.contains(&field.id) => {
                used.insert(field.id);
                let mut f = field.as_ref().clone();
                if f.name != column.name {
                    renames.insert(f.name.clone(), column.name.clone());
                    f.name = column.name.clone();
                    changed = true;
                }
                if !same_type(&f.field_type, &new_type) {
                    if !promotable(&f.field_type, &new_type) {
                        return Err(format!(
                            "column {} of {qualified} changed type from {} to {} ({}), which Iceberg cannot promote; \
                             re-snapshot the table to pick up the new type",
                            column.name, f.field_type, new_type, column.type_name
                        ));
                    }
                    f.field_type = Box::new(new_type);
                    changed = true;
                }
                attnums.push(format!("{}:{}", f.id, column.attnum));
                fields.push(Arc::new(f));
            }
            _ => {
                next_id += 1;
                let id = next_id;
                let ty = renumber(&new_type, &mut next_id);
                attnums.push(format!("{id}:{}", column.attnum));
                fields.push(Arc::new(NestedField::optional(id, column.name.clone(), ty)));
                changed = true;
            }
        }
    }
    if current.as_struct().fields().len() != used.len() {
        changed = true;
    }
    // The key must stay the same columns (renames allowed).
    let renamed_old_keys: Vec<String> = old_keys
        .iter()
        .map(|k| renames.get(*k).cloned().unwrap_or_else(|| (*k).to_string()))
        .collect();
    if old.key_kind != new.key_kind || renamed_old_keys != new_keys {
        if !changed && old_keys == new_keys {
            return Ok(None);
        }
        return Err(format!(
            "the key of {qualified} changed from ({}) to ({}); re-snapshot the table",
            old_keys.join(", "),
            new_keys.join(", ")
        ));
    }
    if !changed {
        return Ok(None);
    }
    let identifier_ids: Vec<i32> = current.identifier_field_ids().collect();
    let schema = IcebergSchema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(fields)
        .with_identifier_field_ids(identifier_ids)
        .build()
        .map_err(|e| format!("cannot build the new schema of {qualified}: {e}"))?;
    Ok(Some((schema, attnums.join(","))))
}
