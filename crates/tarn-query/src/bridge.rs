//! Bridge reads: a query over a pipeline's table that includes the changes the pipeline has
//! not committed yet.
//!
//! A CDC (or Kafka ingest) pipeline buffers changes and commits them to Iceberg when its
//! flush policy says so. Without a bridge a change is visible to SQL only after that commit,
//! so freshness is the flush interval, and a short interval means small files. When the
//! pipeline runs in the same process as the SQL endpoint (`tarn serve` with `[cdc]`
//! configured), it *publishes* its pending state, and a query in the `latest` read mode
//! (`SET tarn.read_mode = 'latest'`, the default there) reads
//!
//! ```text
//!   (Iceberg snapshot S, rows whose key has a pending change removed)
//!   UNION ALL
//!   (the pending new versions)
//! ```
//!
//! where the pending state and `S` come from one publication. `committed` reads the lake only,
//! as every other engine does.
//!
//! ## What is published
//!
//! The writer publishes at every source transaction boundary, and after each commit of its
//! own, one immutable value per table ([`PendingTable`]): the Iceberg snapshot id its buffer
//! sits on (the writer's last commit of the table), whether the table was truncated since, and
//! its buffer of changes collapsed by primary key (the last change of a key wins: a new
//! version, or a delete). The buffer is a persistent map, so a publication is an O(1) copy
//! that shares every entry with the live buffer; memory stays bounded by the writer's flush
//! and spill thresholds (a publication held by a running query keeps at most one older version
//! of the entries changed since). A publication is turned into Arrow batches (the keys of
//! every change, the new versions) once, by the first query that reads it.
//!
//! ## Why the answer is consistent
//!
//! - **One transaction boundary.** The writer publishes only between source transactions
//!   (never while one is being applied), and a query pins one publication per table when it
//!   is planned. So it sees every change of a transaction or none.
//! - **Never a row twice.** The writer's buffer holds at most one change per key. The base is
//!   the snapshot the buffer was built on, pinned by id (not the table's current snapshot,
//!   which the writer may move on meanwhile), and every base row whose key has a pending
//!   change is removed before the new versions are added. Keys are the table's Iceberg
//!   identifier fields, unique in that snapshot (the writer keeps them so through its key
//!   index).
//! - **The lake's answer after the commit.** A commit writes exactly the buffer: its new
//!   versions as a data file, position deletes for the versions of the same keys in the base.
//!   The commit's snapshot therefore holds the rows this merge shows, and the writer publishes
//!   the new snapshot with an empty buffer right after it. Between a commit and that
//!   publication readers still see the old base plus the old buffer: the same rows.
//! - **When it cannot.** Some pending states cannot be merged this way: rows already written
//!   to uncommitted files (a transaction larger than the spill threshold, a schema change in
//!   flight), tables keyed by the whole row (no primary key), an update whose unchanged
//!   TOASTed value lives only in the lake, a base snapshot of an older schema. Such a table
//!   is read at its last commit — an earlier transaction boundary, still consistent — until
//!   the next commit, and `tarn_query_bridge_reads_total{result="fallback"}` counts it. A
//!   restarting pipeline withdraws its publication: the lake is served until it catches up.
//!
//! Each table reference pins its publication when the statement is planned; two pipeline
//! tables joined in one statement are each at a transaction boundary, not necessarily the
//! same one.
//!
//! ## Which boundary a read is at
//!
//! Every read of a pipeline's table records the source position its answer is consistent to
//! ([`ReadPositions`], shown by `SHOW tarn.read_position`): every source transaction that
//! ends at or before it is included, none after. A merged read is at its publication's
//! position (the end of the last transaction the writer applied, or the position its base
//! snapshot holds when that is later: while a restarted pipeline skips transactions the lake
//! already holds); a `committed` read, a fallback, and a read while no publication is in place
//! are at the position the table's snapshot holds for the pipeline
//! ([`PendingSource::committed_position`]).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{JoinType, NullEquality, Result as DFResult};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use iceberg::TableIdent;

use crate::provider::{LakeTable, cast_to};

/// Which state of a pipeline's table a session reads (`tarn.read_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// The last Iceberg snapshot merged with the pipeline's pending changes.
    #[default]
    Latest,
    /// The last Iceberg snapshot only: what other engines see.
    Committed,
}

impl ReadMode {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Committed => "committed",
        }
    }
}

impl std::str::FromStr for ReadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "latest" => Ok(Self::Latest),
            "committed" => Ok(Self::Committed),
            _ => Err(format!(
                "invalid value for parameter \"tarn.read_mode\": \"{s}\" (expected 'latest' or 'committed')"
            )),
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

tokio::task_local! {
    static READ_MODE: ReadMode;
    static READ_POSITIONS: ReadPositions;
}

/// The source positions the reads of pipeline tables in a statement were consistent to (see
/// the module doc), recorded while [`with_read_positions`] runs the statement.
#[derive(Debug, Clone, Default)]
pub struct ReadPositions(Arc<Mutex<Vec<(String, String)>>>);

impl ReadPositions {
    /// Records that `table` was read at `position`, when a statement is being recorded.
    fn record(table: &TableIdent, position: String) {
        let _ = READ_POSITIONS.try_with(|r| {
            r.0.lock()
                .expect("read positions poisoned")
                .push((table.to_string(), position));
        });
    }

    /// What `SHOW tarn.read_position` shows: the position every read was at when they agree,
    /// else `table=position` for each table, comma separated; `None` when nothing was read.
    pub fn shown(&self) -> Option<String> {
        let reads = self.0.lock().expect("read positions poisoned");
        let mut positions: Vec<&str> = reads.iter().map(|(_, p)| p.as_str()).collect();
        positions.sort_unstable();
        positions.dedup();
        match positions.as_slice() {
            [] => None,
            [one] => Some((*one).to_string()),
            _ => {
                let mut each: Vec<String> = reads.iter().map(|(t, p)| format!("{t}={p}")).collect();
                each.sort();
                each.dedup();
                Some(each.join(", "))
            }
        }
    }
}

/// Runs `f` (planning and running a statement) recording its reads' positions in `positions`.
pub async fn with_read_positions<F: Future>(positions: ReadPositions, f: F) -> F::Output {
    READ_POSITIONS.scope(positions, f).await
}

/// Runs `f` (planning a statement) in read mode `mode`; `None` leaves the bridge's default.
pub async fn with_read_mode<F: Future>(mode: Option<ReadMode>, f: F) -> F::Output {
    match mode {
        Some(m) => READ_MODE.scope(m, f).await,
        None => f.await,
    }
}

/// A table's pending changes, as Arrow: the key columns of every key changed since the base
/// snapshot, and the new versions of the keys that exist now (columns named as the table's).
#[derive(Debug, Clone)]
pub struct PendingChanges {
    /// The table was truncated since the base snapshot: none of its rows remain.
    pub truncated: bool,
    /// One row per changed key: its key columns.
    pub keys: RecordBatch,
    /// The new versions.
    pub rows: RecordBatch,
}

/// One table's pending state as one publication holds it; see the module doc.
pub trait PendingTable: Send + Sync + fmt::Debug {
    /// The Iceberg snapshot the changes sit on (`None`: the table had none).
    fn base_snapshot(&self) -> Option<i64>;
    /// The changes as Arrow (computed once); `Err` says why this state cannot be merged (the
    /// table is then read at its last commit).
    fn changes(&self) -> Result<Arc<PendingChanges>, String>;
    /// The source position this state is at (a transaction boundary), as text.
    fn position(&self) -> Option<String>;
}

/// A writer that publishes pending state (a pipeline).
pub trait PendingSource: Send + Sync + fmt::Debug {
    /// The newest publication of `table`; `None` when this writer does not write it (or
    /// withdrew its publication).
    fn pending(&self, table: &TableIdent) -> Option<Arc<dyn PendingTable>>;
    /// The source position `table` (as loaded) holds for this writer, as text; `None` when
    /// this writer does not write it.
    fn committed_position(&self, table: &iceberg::table::Table) -> Option<String>;
}

/// The pipelines of this process whose pending changes queries may read, and the default
/// read mode; every session of the process shares one.
#[derive(Debug)]
pub struct Bridge {
    sources: RwLock<Vec<Arc<dyn PendingSource>>>,
    latest_by_default: AtomicBool,
}

impl Default for Bridge {
    fn default() -> Self {
        Self {
            sources: RwLock::default(),
            latest_by_default: AtomicBool::new(true),
        }
    }
}

impl Bridge {
    /// Reads of `source`'s tables may include its pending changes from now on.
    pub fn register(&self, source: Arc<dyn PendingSource>) {
        self.sources.write().expect("bridge poisoned").push(source);
    }

    /// The read mode of sessions that set none (`query.read_mode`).
    pub fn set_default_mode(&self, mode: ReadMode) {
        self.latest_by_default
            .store(mode == ReadMode::Latest, Ordering::Relaxed);
    }

    /// The read mode of sessions that set none.
    pub fn default_mode(&self) -> ReadMode {
        if self.latest_by_default.load(Ordering::Relaxed) {
            ReadMode::Latest
        } else {
            ReadMode::Committed
        }
    }

    /// The read mode of the statement being planned: its session's, else the default.
    pub fn mode(&self) -> ReadMode {
        READ_MODE.try_with(|m| *m).unwrap_or_else(|_| self.default_mode())
    }

    /// The newest publication of `table`, if a registered pipeline writes it.
    pub fn pending(&self, table: &TableIdent) -> Option<Arc<dyn PendingTable>> {
        let sources = self.sources.read().expect("bridge poisoned");
        sources.iter().find_map(|s| s.pending(table))
    }

    /// The source position `table` (as loaded) holds, if a registered pipeline writes it.
    pub fn committed_position(&self, table: &iceberg::table::Table) -> Option<String> {
        let sources = self.sources.read().expect("bridge poisoned");
        sources.iter().find_map(|s| s.committed_position(table))
    }
}

/// A pipeline's table: its committed state, and the publication pinned when the statement
/// was planned (`None`: the pipeline has none in place, e.g. while it restarts);
/// [`scan`](TableProvider::scan) reads one or the merge of both by the read mode, and records
/// the position it read at.
#[derive(Debug)]
pub struct BridgedTable {
    committed: LakeTable,
    pending: Option<Arc<dyn PendingTable>>,
    /// The position the committed state holds.
    committed_position: Option<String>,
    bridge: Arc<Bridge>,
}

impl BridgedTable {
    pub(crate) fn new(
        committed: LakeTable,
        pending: Option<Arc<dyn PendingTable>>,
        committed_position: Option<String>,
        bridge: Arc<Bridge>,
    ) -> Self {
        Self {
            committed,
            pending,
            committed_position,
            bridge,
        }
    }

    /// Records a read of the committed state.
    fn record_committed(&self) {
        if let Some(p) = &self.committed_position {
            ReadPositions::record(self.committed.ident(), p.clone());
        }
    }

    /// The table at its last commit.
    pub(crate) fn committed(&self) -> &LakeTable {
        &self.committed
    }

    /// The merged plan (all columns, in [`TableProvider::schema`]'s types), or why not.
    async fn merged(
        &self,
        pending: &Arc<dyn PendingTable>,
        state: &dyn Session,
        filters: &[Expr],
    ) -> DFResult<Result<Arc<dyn ExecutionPlan>, String>> {
        // Building the batches is CPU work proportional to the buffer: off the async threads.
        let publication = pending.clone();
        let changes = tokio::task::spawn_blocking(move || publication.changes())
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let changes = match changes {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        };
        let table = self.committed.table();
        let metadata = table.metadata();
        let schema = self.committed.schema();
        let raw = self.committed.raw_schema();
        let base_snapshot = pending.base_snapshot();
        if let Some(id) = base_snapshot {
            let Some(snapshot) = metadata.snapshot_by_id(id) else {
                return Ok(Err(format!(
                    "its base snapshot {id} is no longer in the table's metadata"
                )));
            };
            if snapshot
                .schema_id()
                .is_some_and(|s| s != metadata.current_schema_id())
            {
                return Ok(Err("its base snapshot has an older schema".into()));
            }
        }
        let ids: Vec<i32> = metadata.current_schema().identifier_field_ids().collect();
        let key_names: Vec<String> = metadata
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .filter(|f| ids.contains(&f.id))
            .map(|f| f.name.clone())
            .collect();
        if key_names.is_empty() {
            return Ok(Err("the table has no primary key".into()));
        }
        let rows = match conform(&changes.rows, &raw) {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let rows_schema = rows.schema();
        let rows_plan = cast_to(
            MemorySourceConfig::try_new_exec(&[vec![rows]], rows_schema, None)?,
            &schema,
        )?;
        let base: Option<Arc<dyn ExecutionPlan>> = match base_snapshot {
            _ if changes.truncated => None,
            None => None,
            Some(id) if metadata.current_snapshot_id() == Some(id) => {
                Some(self.committed.scan(state, None, filters, None).await?)
            }
            Some(id) => {
                let provider = crate::provider::snapshot_provider(table, id).await?;
                let plan = provider.scan(state, None, filters, None).await?;
                Some(cast_to(plan, &schema)?)
            }
        };
        let Some(base) = base else {
            return Ok(Ok(rows_plan));
        };
        if changes.keys.num_rows() == 0 {
            return Ok(Ok(UnionExec::try_new(vec![base, rows_plan])?));
        }
        let key_fields: Vec<Field> = key_names
            .iter()
            .map(|n| Ok(raw.field_with_name(n)?.clone()))
            .collect::<DFResult<_>>()?;
        let raw_keys = Arc::new(Schema::new(key_fields));
        let key_schema: Schema = Schema::new(
            key_names
                .iter()
                .map(|n| Ok(schema.field_with_name(n)?.clone()))
                .collect::<DFResult<Vec<Field>>>()?,
        );
        let keys = match conform(&changes.keys, &raw_keys) {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let keys_schema = keys.schema();
        let keys_plan = cast_to(
            MemorySourceConfig::try_new_exec(&[vec![keys]], keys_schema, None)?,
            &key_schema,
        )?;
        let on = key_names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let left: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(n, i));
                let right: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(n, schema.index_of(n)?));
                Ok((left, right))
            })
            .collect::<DFResult<Vec<_>>>()?;
        // The base's rows whose key has no pending change: the changed keys are the (small)
        // build side, the base is streamed past them.
        let unchanged: Arc<dyn ExecutionPlan> = Arc::new(HashJoinExec::try_new(
            keys_plan,
            base,
            on,
            None,
            &JoinType::RightAnti,
            None,
            PartitionMode::CollectLeft,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        Ok(Ok(UnionExec::try_new(vec![unchanged, rows_plan])?))
    }
}

/// `batch`'s columns by name in `target`'s types; columns it lacks are NULL. Fails where a
/// required column would hold NULL (one added since the rows were buffered).
fn conform(batch: &RecordBatch, target: &SchemaRef) -> tarn_core::Result<RecordBatch> {
    let names: Vec<Option<&str>> = target.fields().iter().map(|f| Some(f.name().as_str())).collect();
    crate::provider::conform_columns(batch, target, &names).map_err(|e| {
        tarn_core::Error::new(
            tarn_core::ErrorKind::Internal,
            format!("cannot read pending rows: {e}"),
        )
    })
}

#[async_trait]
impl TableProvider for BridgedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.committed.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let Some(pending) = &self.pending else {
            // No publication in place: the lake, as a plain table reads it.
            self.record_committed();
            return self.committed.scan(state, projection, filters, limit).await;
        };
        if self.bridge.mode() == ReadMode::Committed {
            metrics::counter!("tarn_query_bridge_reads_total", "result" => "committed").increment(1);
            self.record_committed();
            return self.committed.scan(state, projection, filters, limit).await;
        }
        let plan = match self.merged(pending, state, filters).await? {
            Ok(plan) => plan,
            Err(why) => {
                tracing::debug!(table = %self.committed.ident(), reason = %why,
                    "pending changes cannot be merged; reading the last commit");
                metrics::counter!("tarn_query_bridge_reads_total", "result" => "fallback").increment(1);
                self.record_committed();
                return self.committed.scan(state, projection, filters, limit).await;
            }
        };
        metrics::counter!("tarn_query_bridge_reads_total", "result" => "merged").increment(1);
        if let Some(p) = pending.position() {
            ReadPositions::record(self.committed.ident(), p);
        }
        let Some(projection) = projection else {
            return Ok(plan);
        };
        let schema = plan.schema();
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
            .iter()
            .map(|&i| {
                let name = schema.field(i).name().clone();
                (
                    Arc::new(PhysicalColumn::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        if self.pending.is_none() {
            return self.committed.supports_filters_pushdown(filters);
        }
        // Applied again above the merge: the base scan may prune with them, the pending rows
        // are not filtered by the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.committed.insert_into(state, input, insert_op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_modes_parse_and_show() {
        assert_eq!("latest".parse::<ReadMode>(), Ok(ReadMode::Latest));
        assert_eq!(" Committed ".parse::<ReadMode>(), Ok(ReadMode::Committed));
        let err = "fresh".parse::<ReadMode>().unwrap_err();
        assert!(
            err.contains("\"fresh\"") && err.contains("tarn.read_mode"),
            "{err}"
        );
        assert_eq!(ReadMode::Committed.to_string(), "committed");
    }

    #[tokio::test]
    async fn read_positions_are_recorded_inside_a_statement_only() {
        let a = TableIdent::from_strs(["cdc", "a"]).unwrap();
        let b = TableIdent::from_strs(["cdc", "b"]).unwrap();
        ReadPositions::record(&a, "0/10".into());
        let positions = ReadPositions::default();
        assert_eq!(positions.shown(), None);
        with_read_positions(positions.clone(), async {
            ReadPositions::record(&a, "0/20".into());
            ReadPositions::record(&b, "0/20".into());
        })
        .await;
        assert_eq!(positions.shown().as_deref(), Some("0/20"));
        with_read_positions(positions.clone(), async {
            ReadPositions::record(&b, "0/18".into());
        })
        .await;
        assert_eq!(
            positions.shown(),
            Some(format!("{a}=0/20, {b}=0/18, {b}=0/20")),
            "each table's reads when they differ"
        );
    }

    #[tokio::test]
    async fn the_session_mode_overrides_the_default() {
        let bridge = Bridge::default();
        assert_eq!(bridge.mode(), ReadMode::Latest);
        bridge.set_default_mode(ReadMode::Committed);
        assert_eq!(bridge.mode(), ReadMode::Committed);
        let inside = with_read_mode(Some(ReadMode::Latest), async { bridge.mode() }).await;
        assert_eq!(inside, ReadMode::Latest);
        let unset = with_read_mode(None, async { bridge.mode() }).await;
        assert_eq!(unset, ReadMode::Committed);
    }
}
