//! Position delete files: "row `pos` of data file `file_path` is deleted".
//!
//! tarn turns CDC updates and deletes into position deletes (see `DESIGN.md`, "Deletes:
//! position, not equality"): every engine applies them, and a reader joins nothing. A file
//! written here follows the Iceberg v2 spec:
//!
//! - Parquet with the two reserved columns `file_path` (string, field id 2147483546) and `pos`
//!   (long, field id 2147483545), both required, rows sorted by `file_path` then `pos`, no
//!   duplicates; compressed with the table's `write.parquet.compression-codec`.
//! - One file per partition of the data files it points at (a position delete file belongs to
//!   the partition of its data files; unpartitioned tables get one file per call).
//! - Its [`DataFile`] has content `PositionDeletes`, the record count, the size, exact
//!   (untruncated) `file_path` and `pos` bounds, which readers use to skip delete files that
//!   cannot touch a data file, and `referenced_data_file` when every row points at one file.
//!
//! Writing produces files only; [`crate::Lake::commit_row_delta`] commits them. A position
//! delete applies to data files with a data sequence number lower than or equal to its own, so
//! deletes committed together with the data files they point at apply to those too.
//!
//! Why our own: the `iceberg` crate (0.10) has an equality-delete writer but no position-delete
//! writer; this one reuses its Parquet writer (column statistics) and location generator.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, Datum, NestedField, PartitionKey, PrimitiveType, Schema,
    Struct, Type,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::file::properties::WriterProperties;
use tarn_core::{Error, ErrorKind, Result};

use crate::lake::iceberg_error;
use crate::rows::{DELETE_FILE_PATH_FIELD_ID, DELETE_POS_FIELD_ID, SnapshotFiles};
use crate::writer::table_compression;

/// Position deletes: data file path and row position.
type Deletes = Vec<(Arc<str>, u64)>;

/// Rows per Arrow batch handed to the Parquet writer.
const CHUNK_ROWS: usize = 64 * 1024;

/// The schema of position delete files.
pub fn position_delete_schema() -> Schema {
    Schema::builder()
        .with_fields(vec![
            Arc::new(NestedField::required(
                DELETE_FILE_PATH_FIELD_ID,
                "file_path",
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                DELETE_POS_FIELD_ID,
                "pos",
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
        .expect("the position delete schema is valid")
}

/// Writes position delete files for `deletes` (data file path, row position) of `table`.
/// For a partitioned table the partition of every data file is looked up in the table's
/// current snapshot, so the data files must be committed; for data files not committed yet
/// (written in the same batch) use [`write_position_deletes_in_partitions`]. `file_prefix`
/// keeps file names of concurrent writers apart. Returns the delete files, ready to commit.
pub async fn write_position_deletes(
    table: &Table,
    file_prefix: &str,
    deletes: Vec<(Arc<str>, u64)>,
) -> Result<Vec<DataFile>> {
    if deletes.is_empty() {
        return Ok(Vec::new());
    }
    let metadata = table.metadata();
    if metadata.default_partition_spec().is_unpartitioned() {
        return write_groups(table, file_prefix, vec![(Struct::empty(), deletes)]).await;
    }
    let default_spec = metadata.default_partition_spec_id();
    let files = SnapshotFiles::current(table).await?;
    let mut partitions: HashMap<Arc<str>, Struct> = HashMap::new();
    let wanted: std::collections::HashSet<&str> = deletes.iter().map(|(p, _)| p.as_ref()).collect();
    for data in &files.data {
        if wanted.contains(data.path()) {
            if data.spec_id != default_spec {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "data file {} of {} was written with partition spec {}, not the current spec {default_spec}: \
                         position deletes for it are not supported",
                        data.path(),
                        table.identifier(),
                        data.spec_id
                    ),
                ));
            }
            partitions.insert(Arc::from(data.path()), data.file().partition().clone());
        }
    }
    write_position_deletes_in_partitions(table, file_prefix, deletes, &partitions).await
}

/// Like [`write_position_deletes`], with the partition of every referenced data file given
/// (e.g. from the [`DataFile`]s a writer just produced). Unpartitioned tables ignore
/// `partitions`.
pub async fn write_position_deletes_in_partitions(
    table: &Table,
    file_prefix: &str,
    deletes: Vec<(Arc<str>, u64)>,
    partitions: &HashMap<Arc<str>, Struct>,
) -> Result<Vec<DataFile>> {
    if deletes.is_empty() {
        return Ok(Vec::new());
    }
    if table.metadata().default_partition_spec().is_unpartitioned() {
        return write_groups(table, file_prefix, vec![(Struct::empty(), deletes)]).await;
    }
    let mut groups: HashMap<Struct, Deletes> = HashMap::new();
    for (path, pos) in deletes {
        let Some(partition) = partitions.get(&path) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "cannot delete row {pos} of {path}: it is not a data file of table {}",
                    table.identifier()
                ),
            ));
        };
        groups.entry(partition.clone()).or_default().push((path, pos));
    }
    write_groups(table, file_prefix, groups.into_iter().collect()).await
}

/// Writes one delete file per group (partition).
async fn write_groups(
    table: &Table,
    file_prefix: &str,
    groups: Vec<(Struct, Deletes)>,
) -> Result<Vec<DataFile>> {
    let name = table.identifier().to_string();
    let metadata = table.metadata();
    let schema = Arc::new(position_delete_schema());
    let arrow_schema = Arc::new(
        schema_to_arrow_schema(&schema)
            .map_err(|e| iceberg_error("cannot map the position delete schema", e))?,
    );
    let props = WriterProperties::builder()
        .set_compression(table_compression(table)?)
        // Exact statistics: readers compare data file paths against the bounds.
        .set_statistics_truncate_length(None)
        .set_column_index_truncate_length(None)
        .build();
    let parquet = ParquetWriterBuilder::new(props, schema.clone());
    let locations = DefaultLocationGenerator::new(metadata)
        .map_err(|e| iceberg_error(format!("no data location for {name}"), e))?;
    // A fresh suffix per call: the prefix alone may repeat across calls of one writer.
    let names = DefaultFileNameGenerator::new(
        format!("{file_prefix}-deletes"),
        Some(uuid::Uuid::new_v4().simple().to_string()),
        DataFileFormat::Parquet,
    );
    let spec = metadata.default_partition_spec().clone();
    let table_schema = metadata.current_schema().clone();
    let mut out = Vec::with_capacity(groups.len());
    for (partition, mut rows) in groups {
        rows.sort_unstable();
        rows.dedup();
        let key = PartitionKey::new(spec.as_ref().clone(), table_schema.clone(), partition.clone());
        let location = locations.generate_location(Some(&key), &names.generate_file_name());
        let output = table
            .file_io()
            .new_output(&location)
            .map_err(|e| iceberg_error(format!("cannot create delete file {location}"), e))?;
        let mut writer = parquet
            .build(output)
            .await
            .map_err(|e| iceberg_error(format!("cannot create delete file {location}"), e))?;
        // Rows are sorted: the first and last give the `file_path` bounds.
        let (first_path, first_pos) = rows.first().cloned().expect("groups are non-empty");
        let (last_path, last_pos) = rows.last().cloned().expect("groups are non-empty");
        let single_file = first_path == last_path;
        let (min_pos, max_pos) = if single_file {
            (first_pos, last_pos)
        } else {
            let min = rows.iter().map(|(_, p)| *p).min().unwrap_or(0);
            let max = rows.iter().map(|(_, p)| *p).max().unwrap_or(0);
            (min, max)
        };
        let record_count = rows.len();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let paths: ArrayRef = Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|(p, _)| p.as_ref()),
            ));
            let positions: ArrayRef =
                Arc::new(Int64Array::from_iter_values(chunk.iter().map(|(_, p)| *p as i64)));
            let batch = RecordBatch::try_new(arrow_schema.clone(), vec![paths, positions]).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot build position deletes for {location}"),
                )
                .with_source(e)
            })?;
            writer
                .write(&batch)
                .await
                .map_err(|e| iceberg_error(format!("cannot write delete file {location}"), e))?;
        }
        drop(rows);
        let mut builders = writer
            .close()
            .await
            .map_err(|e| iceberg_error(format!("cannot finish delete file {location}"), e))?;
        let Some(mut builder) = builders.pop() else {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("the Parquet writer produced no file for {location}"),
            ));
        };
        let lower = BTreeMap::from([
            (DELETE_FILE_PATH_FIELD_ID, Datum::string(first_path.as_ref())),
            (DELETE_POS_FIELD_ID, Datum::long(min_pos as i64)),
        ]);
        let upper = BTreeMap::from([
            (DELETE_FILE_PATH_FIELD_ID, Datum::string(last_path.as_ref())),
            (DELETE_POS_FIELD_ID, Datum::long(max_pos as i64)),
        ]);
        builder
            .content(DataContentType::PositionDeletes)
            .partition(partition)
            .partition_spec_id(spec.spec_id())
            .lower_bounds(lower.into_iter().collect())
            .upper_bounds(upper.into_iter().collect())
            .referenced_data_file(single_file.then(|| first_path.to_string()));
        let file = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot describe delete file {location}: {e}"),
            )
        })?;
        debug_assert_eq!(file.record_count(), record_count as u64);
        metrics::counter!("tarn_position_deletes_written_total", "table" => name.clone())
            .increment(record_count as u64);
        out.push(file);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array, StringArray};
    use futures::TryStreamExt;
    use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

    use super::*;
    use crate::rows::open_parquet;
    use crate::testing::{TestLake, insert, kv_batch};

    #[tokio::test]
    async fn delete_files_are_sorted_deduplicated_and_described() {
        let t = TestLake::new().await;
        let table = t.create("d", &[]).await;
        let (table, mut index) =
            insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let (table, more) = insert(&t.lake, &table, vec![kv_batch(&[(3, "c", "eu")])]).await;
        index.extend(more);
        let (f1, f2) = (index[&1].0.clone(), index[&3].0.clone());
        assert_ne!(f1, f2, "two files");
        let (lo, hi) = if f1 < f2 {
            (f1.clone(), f2.clone())
        } else {
            (f2.clone(), f1.clone())
        };
        let deletes = vec![(hi.clone(), 0), (lo.clone(), 1), (lo.clone(), 0), (hi.clone(), 0)];
        let files = write_position_deletes(&table, "p", deletes).await.unwrap();
        assert_eq!(files.len(), 1);
        let file = &files[0];
        assert_eq!(file.content_type(), DataContentType::PositionDeletes);
        assert_eq!(file.record_count(), 3);
        assert_eq!(file.referenced_data_file(), None);
        assert_eq!(
            file.lower_bounds()[&DELETE_FILE_PATH_FIELD_ID],
            Datum::string(lo.as_ref())
        );
        assert_eq!(
            file.upper_bounds()[&DELETE_FILE_PATH_FIELD_ID],
            Datum::string(hi.as_ref())
        );
        assert_eq!(file.upper_bounds()[&DELETE_POS_FIELD_ID], Datum::long(1));
        let on_disk = std::fs::metadata(file.file_path().trim_start_matches("file://")).unwrap();
        assert_eq!(on_disk.len(), file.file_size_in_bytes());
        assert!(
            file.file_path().contains("/data/p-deletes-"),
            "{}",
            file.file_path()
        );

        let builder = open_parquet(t.lake.stores(), file.file_path(), None, false)
            .await
            .unwrap();
        let ids: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}={}", f.name(), f.metadata()[PARQUET_FIELD_ID_META_KEY]))
            .collect();
        assert_eq!(ids, vec!["file_path=2147483546", "pos=2147483545"]);
        assert!(builder.schema().fields().iter().all(|f| !f.is_nullable()));
        let batches: Vec<_> = builder.build().unwrap().try_collect().await.unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let p = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let q = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            rows.extend((0..b.num_rows()).map(|i| (p.value(i).to_string(), q.value(i))));
        }
        assert_eq!(
            rows,
            vec![(lo.to_string(), 0), (lo.to_string(), 1), (hi.to_string(), 0)]
        );

        // One data file: `referenced_data_file` is set.
        let single = write_position_deletes(&table, "p", vec![(f1.clone(), 1)])
            .await
            .unwrap();
        assert_eq!(single[0].referenced_data_file().as_deref(), Some(f1.as_ref()));
        // Two calls with one prefix never collide.
        assert_ne!(single[0].file_path(), file.file_path());
        assert!(
            write_position_deletes(&table, "p", vec![])
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn deletes_of_a_partitioned_table_go_by_partition() {
        let t = TestLake::new().await;
        let table = t.create("pd", &["region"]).await;
        let (table, index) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let files = write_position_deletes(&table, "p", vec![index[&1].clone(), index[&2].clone()])
            .await
            .unwrap();
        assert_eq!(files.len(), 2);
        let mut partitions: Vec<String> = files.iter().map(|f| format!("{:?}", f.partition())).collect();
        partitions.sort();
        assert!(
            partitions[0].contains("eu") && partitions[1].contains("us"),
            "{partitions:?}"
        );
        assert!(files.iter().all(|f| f.file_path().contains("region=")));
        // A file the table does not have is named in the error.
        let err = write_position_deletes(&table, "p", vec![(Arc::from("file:///nope.parquet"), 0)])
            .await
            .unwrap_err();
        assert!(err.message().contains("nope.parquet"), "{err}");
    }
}
