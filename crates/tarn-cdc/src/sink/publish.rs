//! The writer's side of bridge reads ([`tarn_query::bridge`]): the sink's pending state,
//! published at every source transaction boundary for queries in the same process.
//!
//! [`LakeSink`](super::LakeSink) calls [`PendingPublisher::publish`] after it applied a
//! transaction's commit and after each flush — never inside a transaction — with one
//! [`TableView`] per table: the snapshot its buffer sits on (the sink's last commit of it),
//! whether it was truncated since, and a copy of its buffer. The buffer is a persistent map,
//! so the copy costs O(1) and shares its entries with the live buffer; the publication is a
//! new map of tables swapped in under a lock held only for the swap. A reader pins the view of
//! its table when it plans a statement and turns it into Arrow batches once (cached in the
//! view), outside the writer's path.
//!
//! Each view carries the position it is at: the end of the last transaction the sink applied,
//! or the position the table's last commit holds when that is later (a restarted sink skips
//! the transactions a table already holds). For reads of the lake itself (`committed` reads,
//! fallbacks, while nothing is published) the publisher answers the position a loaded table
//! holds for its pipeline ([`table_position`](super::table_position)).
//!
//! A state that cannot be merged by key is published as such, with the reason (rows already
//! written to uncommitted files, a table keyed by the whole row, an update whose unchanged
//! TOASTed value is in the lake only): readers then read the table's last commit. A sink that
//! ends (a restart, a stop) withdraws its publication, so a restarted pipeline's readers see
//! the lake until it publishes again.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use iceberg::table::Table;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use iceberg::TableIdent;
use tarn_query::bridge::{PendingChanges, PendingSource, PendingTable};

use super::buffer::{Change, Entry, text_cell};
use crate::source::{Position, TableSpec, Value};
use crate::value::builder::{BatchBuilder, ColumnBuilder};

/// Where a pipeline publishes its pending state; register it with the SQL session's
/// [`tarn_query::bridge::Bridge`] and give it to the pipeline
/// ([`crate::pipeline::RunOptions::bridge`]).
#[derive(Debug, Default)]
pub struct PendingPublisher {
    tables: RwLock<Arc<HashMap<TableIdent, Arc<TableView>>>>,
    /// The pipeline whose positions the lake's tables are read at; set by
    /// [`Self::for_pipeline`], else by the first sink publishing here.
    pipeline: OnceLock<String>,
}

impl PendingPublisher {
    /// A publisher with nothing published.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A publisher of `pipeline`'s pending state, with nothing published: it knows which
    /// positions the pipeline's tables hold before its sink starts.
    pub fn for_pipeline(pipeline: &str) -> Arc<Self> {
        let publisher = Self::default();
        let _ = publisher.pipeline.set(pipeline.to_string());
        Arc::new(publisher)
    }

    /// The pipeline publishing here is `pipeline` (kept if one was set already).
    pub(super) fn set_pipeline(&self, pipeline: &str) {
        let _ = self.pipeline.set(pipeline.to_string());
    }

    /// Replaces the publication with `tables`.
    pub(super) fn publish(&self, tables: HashMap<TableIdent, Arc<TableView>>) {
        *self.tables.write().expect("publisher poisoned") = Arc::new(tables);
    }

    /// Withdraws the publication: readers read the lake.
    pub(super) fn withdraw(&self) {
        self.publish(HashMap::new());
    }

    /// How many tables the publication holds.
    pub fn published_tables(&self) -> usize {
        self.tables.read().expect("publisher poisoned").len()
    }
}

impl PendingSource for PendingPublisher {
    fn pending(&self, table: &TableIdent) -> Option<Arc<dyn PendingTable>> {
        let tables = self.tables.read().expect("publisher poisoned").clone();
        tables.get(table).map(|v| v.clone() as Arc<dyn PendingTable>)
    }

    fn committed_position(&self, table: &Table) -> Option<String> {
        let pipeline = self.pipeline.get()?;
        super::table_position(table, pipeline).0.map(|p| p.to_string())
    }
}

/// One table's pending state at one transaction boundary.
pub(super) struct TableView {
    pub(super) base_snapshot: Option<i64>,
    pub(super) position: Option<Position>,
    pub(super) truncated: bool,
    /// Why this state cannot be merged by key, if it cannot.
    pub(super) unmergeable: Option<&'static str>,
    pub(super) spec: Arc<TableSpec>,
    pub(super) key_columns: Vec<usize>,
    pub(super) entries: imbl::HashMap<Box<[u8]>, Entry>,
    pub(super) changes: OnceLock<Result<Arc<PendingChanges>, String>>,
}

impl fmt::Debug for TableView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableView")
            .field("table", &self.spec.qualified())
            .field("base_snapshot", &self.base_snapshot)
            .field("position", &self.position)
            .field("truncated", &self.truncated)
            .field("unmergeable", &self.unmergeable)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl TableView {
    fn materialize(&self) -> Result<PendingChanges, String> {
        if let Some(why) = self.unmergeable {
            return Err(why.to_string());
        }
        let spec = &self.spec;
        let mut keys: Vec<ColumnBuilder> = self
            .key_columns
            .iter()
            .map(|&c| {
                let column = &spec.columns[c];
                ColumnBuilder::new(
                    format!("{}.{}", spec.qualified(), column.name),
                    &column.column_type,
                    self.entries.len(),
                )
            })
            .collect();
        let mut rows = BatchBuilder::new(spec, self.entries.len());
        let mut cells: Vec<Option<&[u8]>> = Vec::with_capacity(spec.columns.len());
        for entry in self.entries.values() {
            for (builder, cell) in keys.iter_mut().zip(&entry.key_cells) {
                builder.append(text_cell(cell)).map_err(|e| e.to_string())?;
            }
            match &entry.change {
                Change::Delete => {}
                Change::Upsert { row, .. } => {
                    if row.iter().any(|v| matches!(v, Value::Unchanged)) {
                        return Err(
                            "an update's unchanged TOASTed value is read from the lake at commit".into(),
                        );
                    }
                    cells.clear();
                    cells.extend(row.iter().map(text_cell));
                    rows.append(&cells).map_err(|e| e.to_string())?;
                }
                Change::Net { .. } => return Err("the table has no primary key".into()),
            }
        }
        let names = self
            .key_columns
            .iter()
            .map(|&c| spec.columns[c].name.clone())
            .collect();
        let arrays = keys.iter_mut().map(ColumnBuilder::finish).collect();
        Ok(PendingChanges {
            truncated: self.truncated,
            keys: batch_of(names, arrays)?,
            rows: rows.finish().map_err(|e| e.to_string())?,
        })
    }
}

impl PendingTable for TableView {
    fn base_snapshot(&self) -> Option<i64> {
        self.base_snapshot
    }

    fn changes(&self) -> Result<Arc<PendingChanges>, String> {
        self.changes
            .get_or_init(|| self.materialize().map(Arc::new))
            .clone()
    }

    fn position(&self) -> Option<String> {
        self.position.as_ref().map(Position::to_string)
    }
}

/// A batch of `arrays` named `names` (all nullable).
fn batch_of(names: Vec<String>, arrays: Vec<arrow::array::ArrayRef>) -> Result<RecordBatch, String> {
    let fields: Vec<Field> = names
        .into_iter()
        .zip(&arrays)
        .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use tarn_core::Config;
    use tarn_lake::Lake;

    use super::*;
    use crate::position::Lsn;
    use crate::scripted::testing::{row, table};
    use crate::source::SourceEvent;

    fn ids(batch: &RecordBatch) -> Vec<String> {
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let column = column
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let mut ids: Vec<String> = column.iter().map(|v| v.unwrap_or("NULL").to_string()).collect();
        ids.sort();
        ids
    }

    async fn begin(sink: &mut super::super::LakeSink, lsn: u64) {
        sink.apply(SourceEvent::Begin {
            commit_position: Position::Lsn(Lsn(lsn)),
            transaction_id: None,
        })
        .await
        .unwrap();
    }

    async fn commit(sink: &mut super::super::LakeSink, lsn: u64) {
        sink.apply(SourceEvent::Commit {
            position: Position::Lsn(Lsn(lsn)),
            commit_time_micros: 1,
        })
        .await
        .unwrap();
    }

    /// A transaction is published at its commit, not before; the view holds one change per
    /// key over the snapshot the sink last committed; a flush publishes the new snapshot with
    /// nothing pending; a sink that ends withdraws its publication.
    #[tokio::test]
    async fn transactions_are_published_whole_over_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.maintenance.auto = false;
        let lake = Lake::open(&config).await.unwrap();
        let publisher = PendingPublisher::new();
        let mut sink =
            crate::pipeline::lake_sink(&config, lake.clone()).with_publisher(Some(publisher.clone()));
        sink.attach(table(1, "items")).await.unwrap();
        let ident = sink.lake_ident(&table(1, "items"));
        let view = || publisher.pending(&ident).expect("published");
        assert_eq!(view().base_snapshot(), None);
        assert_eq!(view().changes().unwrap().keys.num_rows(), 0);

        begin(&mut sink, 10).await;
        for id in [1, 2, 3] {
            sink.apply(SourceEvent::Insert {
                table: 1,
                new: row(id, Some("a")),
            })
            .await
            .unwrap();
        }
        assert_eq!(
            view().changes().unwrap().rows.num_rows(),
            0,
            "published inside a transaction"
        );
        commit(&mut sink, 10).await;
        let changes = view().changes().unwrap();
        assert_eq!(ids(&changes.rows), ["1", "2", "3"]);
        sink.flush().await.unwrap();
        let committed = lake.load_table(&ident).await.unwrap();
        let base = committed.metadata().current_snapshot_id();
        assert!(base.is_some());
        assert_eq!(view().base_snapshot(), base, "the flush publishes its snapshot");
        assert_eq!(view().changes().unwrap().keys.num_rows(), 0);

        // Updates of one key, and a delete of a committed row: one change per key.
        begin(&mut sink, 20).await;
        for v in ["b", "c", "d"] {
            sink.apply(SourceEvent::Update {
                table: 1,
                old: None,
                new: row(1, Some(v)),
            })
            .await
            .unwrap();
        }
        sink.apply(SourceEvent::Delete {
            table: 1,
            old: row(2, None),
        })
        .await
        .unwrap();
        commit(&mut sink, 20).await;
        let pinned = view();
        let changes = pinned.changes().unwrap();
        assert_eq!(ids(&changes.keys), ["1", "2"]);
        assert_eq!(ids(&changes.rows), ["1"]);
        assert_eq!(pinned.base_snapshot(), base);

        // A pinned view stays as it was while the buffer moves on.
        begin(&mut sink, 30).await;
        sink.apply(SourceEvent::Insert {
            table: 1,
            new: row(4, Some("e")),
        })
        .await
        .unwrap();
        commit(&mut sink, 30).await;
        assert_eq!(ids(&pinned.changes().unwrap().keys), ["1", "2"]);
        assert_eq!(ids(&view().changes().unwrap().keys), ["1", "2", "4"]);

        drop(sink);
        assert!(
            publisher.pending(&ident).is_none(),
            "withdrawn when the sink ends"
        );
    }
}
