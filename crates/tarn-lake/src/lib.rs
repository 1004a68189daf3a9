//! Iceberg tables on object storage: the storage layer, the catalog (SQL, Iceberg REST or Hive
//! Metastore, behind [`CatalogBackend`]), partition layouts, data and delete file writers,
//! tarn's own commits and table maintenance.
//!
//! [`Lake`] is the entry point: open it from a [`tarn_core::Config`], then create, load, list,
//! append to and drop tables. Table files are Parquet plus Iceberg format-v2 metadata, so any
//! Iceberg engine reads what tarn writes.
//!
//! Beyond what the `iceberg` crate's `Transaction` can commit, tarn has its own snapshot
//! producer ([`Lake::commit_row_delta`], [`Lake::commit_rewrite`], [`Lake::commit_overwrite`],
//! [`Lake::evolve_schema`]), position delete files ([`write_position_deletes`]), reads of live
//! rows with their positions ([`Lake::scan_live_rows`], [`Lake::read_rows_at`]) and
//! maintenance ([`Lake::compact`], [`Lake::expire_snapshots`], [`Lake::remove_orphan_files`]).

mod cache;
pub mod catalog;
pub mod commit;
pub mod deletes;
pub mod deletion_vector;
mod lake;
pub mod layout;
pub mod maintain;
pub mod rows;
pub mod storage;
mod writer;

pub use cache::DataFiles;
pub use catalog::{CatalogBackend, CatalogKind, MetadataSwap};
pub use commit::{CommitGuard, Overwrite, Replacement, Rewrite, RowDelta};
pub use deletes::{position_delete_schema, write_position_deletes, write_position_deletes_in_partitions};
pub use deletion_vector::{DeletionVector, DeletionVectors};
pub use lake::{Lake, TableLayout, iceberg_error, iceberg_schema_with_keys, parse_table_name};
pub use maintain::{
    CommitHook, CompactOptions, CompactionOutcome, ExpireOptions, ExpireOutcome, OrphanOptions,
    OrphanOutcome, Progress, ProgressFn, RewrittenGroup,
};
pub use rows::{ChangedFile, DeletesSince, LiveRows, POS_COLUMN, column_names};
pub use writer::{
    DataWriter, PositionedDataWriter, WrittenRows, parquet_compression, table_target_file_size,
};

/// Helpers for the tests of this crate: a lake in a temporary directory and a small table.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
    use arrow::util::display::array_value_to_string;
    use arrow_schema::{DataType, Field, Schema as ArrowSchema};
    use futures::TryStreamExt;
    use iceberg::TableIdent;
    use iceberg::spec::DataFile;
    use iceberg::table::Table;
    use tarn_core::Config;

    use crate::{Lake, PositionedDataWriter, RowDelta, TableLayout, layout, write_position_deletes};

    /// Where each row (by id) is: data file and position.
    pub(crate) type Index = HashMap<i64, (Arc<str>, u64)>;

    pub(crate) struct TestLake {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) config: Config,
        pub(crate) lake: Lake,
    }

    impl TestLake {
        pub(crate) async fn new() -> Self {
            let dir = tempfile::Builder::new().prefix("tarn-lake-").tempdir().unwrap();
            let config = Config::defaults(dir.path());
            let lake = Lake::open(&config).await.unwrap();
            lake.create_namespace(&iceberg::NamespaceIdent::new("t".into()), true)
                .await
                .unwrap();
            Self { dir, config, lake }
        }

        /// Another `Lake` on the same catalog: another writer.
        pub(crate) async fn other_writer(&self) -> Lake {
            Lake::open(&self.config).await.unwrap()
        }

        /// Creates `t.<name>` with `kv_schema`, partitioned by `partition` fields.
        pub(crate) async fn create(&self, name: &str, partition: &[&str]) -> Table {
            let layout = TableLayout {
                partition: partition
                    .iter()
                    .map(|p| layout::parse_partition_field(p).unwrap())
                    .collect(),
                ..TableLayout::default()
            };
            self.lake
                .create_table(&ident(name), &kv_schema(), &layout)
                .await
                .unwrap()
        }

        /// The table as pyiceberg and DuckDB read it.
        pub(crate) fn python_read(&self, name: &str) -> serde_json::Value {
            let uri = format!("sqlite:///{}", self.dir.path().join("catalog.db").display());
            let out = tarn_test_utils::run_python(
                "lake_deletes.py",
                &[
                    "--uri",
                    &uri,
                    "--warehouse",
                    &self.config.warehouse_url(),
                    "--name",
                    &self.config.catalog.name,
                    "--table",
                    &format!("t.{name}"),
                ],
            )
            .unwrap();
            serde_json::from_str(&out).unwrap()
        }
    }

    pub(crate) fn ident(name: &str) -> TableIdent {
        crate::parse_table_name(&format!("t.{name}")).unwrap()
    }

    pub(crate) fn kv_schema() -> ArrowSchema {
        ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
        ])
    }

    pub(crate) fn kv_batch(rows: &[(i64, &str, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(kv_schema()),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// Writes `batches` with a [`PositionedDataWriter`]; returns the files and the index.
    pub(crate) async fn write(table: &Table, batches: Vec<RecordBatch>) -> (Vec<DataFile>, Index) {
        let mut writer = PositionedDataWriter::new(table, "test").unwrap();
        let mut index = Index::new();
        for batch in batches {
            for written in writer.write(batch).await.unwrap() {
                let ids = written
                    .batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                for (i, id) in ids.values().iter().enumerate() {
                    index.insert(*id, (written.data_file.clone(), written.first_pos + i as u64));
                }
            }
        }
        (writer.close().await.unwrap(), index)
    }

    /// Commits `batches` as new data files.
    pub(crate) async fn insert(lake: &Lake, table: &Table, batches: Vec<RecordBatch>) -> (Table, Index) {
        let (files, index) = write(table, batches).await;
        let delta = RowDelta {
            data_files: files,
            ..RowDelta::default()
        };
        (lake.commit_row_delta(table, delta).await.unwrap(), index)
    }

    /// Position deletes for `ids`, and the data files they point at.
    pub(crate) async fn deletes_for(
        table: &Table,
        index: &Index,
        ids: &[i64],
    ) -> (Vec<DataFile>, std::collections::HashSet<String>) {
        let deletes: Vec<(Arc<str>, u64)> = ids.iter().map(|id| index[id].clone()).collect();
        let referenced = deletes.iter().map(|(p, _)| p.to_string()).collect();
        (
            write_position_deletes(table, "test", deletes).await.unwrap(),
            referenced,
        )
    }

    /// Commits position deletes of `ids`.
    pub(crate) async fn delete(lake: &Lake, table: &Table, index: &Index, ids: &[i64]) -> Table {
        let (delete_files, referenced) = deletes_for(table, index, ids).await;
        let delta = RowDelta {
            delete_files,
            referenced_data_files: referenced,
            ..RowDelta::default()
        };
        lake.commit_row_delta(table, delta).await.unwrap()
    }

    fn row_text(batch: &RecordBatch, row: usize, columns: usize) -> String {
        (0..columns)
            .map(|c| {
                let column = batch.column(c);
                if column.is_null(row) {
                    "NULL".to_string()
                } else {
                    array_value_to_string(column, row).unwrap()
                }
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The rows as the `iceberg` crate's own scan (which applies deletes) reads them, sorted.
    pub(crate) async fn iceberg_rows(table: &Table) -> Vec<String> {
        let batches: Vec<RecordBatch> = table
            .scan()
            .select_all()
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut rows: Vec<String> = batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |r| row_text(b, r, b.num_columns())))
            .collect();
        rows.sort();
        rows
    }

    /// The rows as [`Lake::scan_live_rows`] reads them (all columns, without `_pos`), sorted.
    pub(crate) async fn live_rows(lake: &Lake, table: &Table) -> Vec<String> {
        let columns = crate::column_names(table);
        let batches: Vec<_> = lake
            .scan_live_rows(table, &columns, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let width = columns.len();
        let mut rows: Vec<String> = batches
            .iter()
            .flat_map(|l| (0..l.batch.num_rows()).map(move |r| row_text(&l.batch, r, width)))
            .collect();
        rows.sort();
        rows
    }

    /// Rows of a Python reader's output (lists of strings or null), joined like [`iceberg_rows`].
    pub(crate) fn python_rows(value: &serde_json::Value) -> Vec<String> {
        let mut rows: Vec<String> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().map_or("NULL".to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        rows.sort();
        rows
    }
}

#[cfg(test)]
pub(crate) mod testing_eq {
    //! An equality delete file for tests (tarn itself writes position deletes).
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use iceberg::arrow::schema_to_arrow_schema;
    use iceberg::spec::{DataContentType, DataFile, Schema, Struct};
    use iceberg::table::Table;
    use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
    use parquet::file::properties::WriterProperties;

    /// Writes an equality delete file deleting rows whose `id` (field of `table`) is in `ids`,
    /// in partition `partition` of the default spec (empty for an unpartitioned table).
    pub(crate) async fn equality_delete_file(table: &Table, ids: &[i64], partition: Struct) -> DataFile {
        let field = table
            .metadata()
            .current_schema()
            .field_by_name("id")
            .unwrap()
            .clone();
        let schema = Arc::new(
            Schema::builder()
                .with_fields(vec![field.clone()])
                .build()
                .unwrap(),
        );
        let arrow = Arc::new(schema_to_arrow_schema(&schema).unwrap());
        let location = format!(
            "{}/data/eq-{}.parquet",
            table.metadata().location(),
            uuid::Uuid::new_v4()
        );
        let mut writer = ParquetWriterBuilder::new(WriterProperties::builder().build(), schema)
            .build(table.file_io().new_output(&location).unwrap())
            .await
            .unwrap();
        let batch = RecordBatch::try_new(arrow, vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap();
        writer.write(&batch).await.unwrap();
        let mut builder = writer.close().await.unwrap().pop().unwrap();
        builder
            .content(DataContentType::EqualityDeletes)
            .equality_ids(Some(vec![field.id]))
            .partition(partition)
            .partition_spec_id(table.metadata().default_partition_spec_id());
        builder.build().unwrap()
    }
}
