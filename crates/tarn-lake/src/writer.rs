//! Writes Arrow record batches into Parquet data files of an Iceberg table.
//!
//! A [`DataWriter`] stacks `iceberg`'s writers: Parquet (with the table's compression codec,
//! zstd by default, and column statistics) inside a rolling writer that starts a new file at
//! the target file size, inside a data-file writer, inside a fan-out writer that keeps one open
//! file per partition for partitioned tables. Batches are matched to the table schema by column
//! position and must already have its types (the SQL planner casts them).
//!
//! Writing only produces files; nothing is visible until [`crate::Lake::append`] commits them.
//! A writer that is dropped or fails leaves unreferenced files behind, which orphan-file
//! removal deletes; the table is never changed by a failed write.
//!
//! (`iceberg-datafusion` has a writer too, but it ignores the compression table property and
//! writes uncompressed Parquet, so tarn assembles its own from the same building blocks.)
//!
//! A [`PositionedDataWriter`] writes the same files but reports where every row went (data
//! file and row position), which tarn's CDC writer needs for its primary-key index: it rolls
//! files itself, only between batches, and names each file before its first row is written.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef as ArrowSchemaRef};
use iceberg::arrow::{FieldMatchMode, RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, DataFile, DataFileFormat, PartitionKey, PartitionSpecRef, Struct};
use iceberg::table::Table;
use iceberg::writer::CurrentFileStatus;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriter, ParquetWriterBuilder};
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::unpartitioned_writer::UnpartitionedWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tarn_core::{Error, ErrorKind, Result};

use crate::lake::iceberg_error;

type Builder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

enum Inner {
    Unpartitioned(Box<UnpartitionedWriter<Builder>>),
    Partitioned(Box<(FanoutWriter<Builder>, RecordBatchPartitionSplitter)>),
}

/// Writes batches into data files of one table; see the module doc.
pub struct DataWriter {
    inner: Inner,
    schema: ArrowSchemaRef,
    table: String,
    rows: u64,
}

/// The Parquet compression for a codec name.
pub fn parquet_compression(codec: &str) -> Result<Compression> {
    match codec.to_ascii_lowercase().as_str() {
        "zstd" => Ok(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("level 3 is valid"),
        )),
        "snappy" => Ok(Compression::SNAPPY),
        "uncompressed" | "none" => Ok(Compression::UNCOMPRESSED),
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("unsupported Parquet compression {other:?}: expected zstd, snappy or uncompressed"),
        )),
    }
}

/// The Parquet compression of `table` (`write.parquet.compression-codec`, zstd by default).
pub(crate) fn table_compression(table: &Table) -> Result<Compression> {
    let codec = table
        .metadata()
        .properties()
        .get("write.parquet.compression-codec")
        .map(String::as_str)
        .unwrap_or("zstd");
    parquet_compression(codec)
}

/// The target data file size of `table` (`write.target-file-size-bytes`, 128 MiB by default).
pub fn table_target_file_size(table: &Table) -> u64 {
    table
        .metadata()
        .properties()
        .get(iceberg::spec::TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(128 * 1024 * 1024)
}

/// Parquet writer properties for data files of `table`.
fn data_writer_properties(table: &Table) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(table_compression(table)?)
        .set_max_row_group_row_count(Some(1024 * 1024))
        .build())
}

impl DataWriter {
    /// A writer for `table`'s current schema and default partition spec. `file_prefix` makes
    /// file names of concurrent writers distinct.
    pub fn new(table: &Table, file_prefix: &str) -> Result<Self> {
        let name = table.identifier().to_string();
        let metadata = table.metadata();
        let target_file_size = usize::try_from(table_target_file_size(table)).unwrap_or(usize::MAX);
        let writer_props = data_writer_properties(table)?;
        let iceberg_schema = metadata.current_schema().clone();
        let schema = Arc::new(
            schema_to_arrow_schema(&iceberg_schema)
                .map_err(|e| iceberg_error(format!("cannot map the schema of {name}"), e))?,
        );
        let parquet = ParquetWriterBuilder::new(writer_props, iceberg_schema.clone())
            .with_match_mode(FieldMatchMode::Id);
        let locations = DefaultLocationGenerator::new(metadata)
            .map_err(|e| iceberg_error(format!("no data location for {name}"), e))?;
        let names = DefaultFileNameGenerator::new(file_prefix.to_string(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            target_file_size,
            table.file_io().clone(),
            locations,
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        let spec = metadata.default_partition_spec().clone();
        let inner = if spec.is_unpartitioned() {
            Inner::Unpartitioned(Box::new(UnpartitionedWriter::new(builder)))
        } else {
            let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(iceberg_schema, spec)
                .map_err(|e| iceberg_error(format!("cannot partition rows of {name}"), e))?;
            Inner::Partitioned(Box::new((FanoutWriter::new(builder), splitter)))
        };
        Ok(Self {
            inner,
            schema,
            table: name,
            rows: 0,
        })
    }

    /// The Arrow schema batches must have (the table's, with Iceberg field ids).
    pub fn schema(&self) -> &ArrowSchemaRef {
        &self.schema
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one batch.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.conform(batch)?;
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Unpartitioned(w) => w
                .write(batch)
                .await
                .map_err(|e| iceberg_error(format!("cannot write data of {}", self.table), e)),
            Inner::Partitioned(parts) => {
                let (w, splitter) = parts.as_mut();
                let parts: Vec<(PartitionKey, RecordBatch)> = splitter
                    .split(&batch)
                    .map_err(|e| iceberg_error(format!("cannot partition rows of {}", self.table), e))?;
                for (key, part) in parts {
                    w.write(key, part)
                        .await
                        .map_err(|e| iceberg_error(format!("cannot write data of {}", self.table), e))?;
                }
                Ok(())
            }
        }
    }

    /// Closes every open file and returns the data files written, ready to commit.
    pub async fn close(self) -> Result<Vec<DataFile>> {
        let table = self.table;
        match self.inner {
            Inner::Unpartitioned(w) => w.close().await,
            Inner::Partitioned(parts) => parts.0.close().await,
        }
        .map_err(|e| iceberg_error(format!("cannot finish data files of {table}"), e))
    }

    /// Gives `batch` the table's schema; see [`conform`].
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        conform(&self.schema, &self.table, batch)
    }
}

/// Gives `batch` the table's schema (field ids, names), casting where types differ only in
/// representation (e.g. `Utf8View` → `Utf8`). A NULL in a required column is an error.
///
/// Columns match by position. Rows with fewer columns than the table match by name instead
/// when every column they have is one of the table's: the table's other columns must be
/// optional and are NULL. That is how a writer whose rows come from elsewhere (CDC from a
/// source table) keeps writing after another engine added an optional column to the lake table.
fn conform(schema: &ArrowSchemaRef, table: &str, batch: RecordBatch) -> Result<RecordBatch> {
    let batch = widen_by_name(schema, batch);
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "table {} has {} columns, the rows have {}",
                table,
                schema.fields().len(),
                batch.num_columns()
            ),
        ));
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (column, field) in batch.columns().iter().zip(schema.fields()) {
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "column {} of table {} is NOT NULL, but a row has NULL",
                    field.name(),
                    table
                ),
            ));
        }
        if column.data_type() == field.data_type() {
            columns.push(column.clone());
        } else if field.data_type() == &DataType::FixedSizeBinary(16) && column.data_type().is_string() {
            // A `uuid` column, which tarn's SQL shows as text.
            columns.push(uuid_bytes(column).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("column {} of table {table} holds UUIDs: {e}", field.name()),
                )
            })?);
        } else {
            let cast = arrow::compute::cast(column, field.data_type()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "column {} of table {} has type {}, the rows have {}: {e}",
                        field.name(),
                        table,
                        field.data_type(),
                        column.data_type()
                    ),
                )
            })?;
            columns.push(cast);
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("rows do not fit table {}: {e}", table),
        )
    })
}

/// UUIDs in any text form `uuid` parses as 16-byte values.
fn uuid_bytes(column: &ArrayRef) -> std::result::Result<ArrayRef, String> {
    let text = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
    let text = text
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .ok_or("expected text")?;
    let values = text
        .iter()
        .map(|v| {
            v.map(|s| {
                uuid::Uuid::parse_str(s)
                    .map(|u| u.as_bytes().to_vec())
                    .map_err(|e| format!("{s:?} is not a UUID ({e})"))
            })
            .transpose()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let array = arrow::array::FixedSizeBinaryArray::try_from_sparse_iter_with_size(values.into_iter(), 16)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(array))
}

/// `batch` with the table's columns in the table's order, the table's columns it lacks as
/// NULL, when it has fewer columns than the table, each named as one of the table's, and every
/// column it lacks is optional; else `batch` unchanged (and [`conform`] names the mismatch).
fn widen_by_name(schema: &ArrowSchemaRef, batch: RecordBatch) -> RecordBatch {
    let have = batch.schema();
    if batch.num_columns() >= schema.fields().len()
        || have.fields().iter().any(|f| schema.index_of(f.name()).is_err())
    {
        return batch;
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut fields = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        match have.index_of(field.name()) {
            Ok(i) => {
                columns.push(batch.column(i).clone());
                fields.push(have.field(i).clone());
            }
            Err(_) if field.is_nullable() => {
                columns.push(arrow::array::new_null_array(field.data_type(), batch.num_rows()));
                fields.push(field.as_ref().clone());
            }
            Err(_) => return batch,
        }
    }
    let widened = Arc::new(arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(widened, columns).unwrap_or(batch)
}

/// Rows of one written batch that went into one data file, in order: row `i` of `batch` is
/// at position `first_pos + i` of `data_file`.
#[derive(Debug, Clone)]
pub struct WrittenRows {
    /// The data file (its final location; it exists once the writer is closed).
    pub data_file: Arc<str>,
    /// Position in `data_file` of the first row of `batch`.
    pub first_pos: u64,
    /// The rows, with the table's schema. For an unpartitioned table it is the whole batch
    /// given to [`PositionedDataWriter::write`]; for a partitioned one, the rows of one
    /// partition.
    pub batch: RecordBatch,
}

/// Names and opens the next data file of a [`PositionedDataWriter`].
async fn start_data_file(
    locations: &DefaultLocationGenerator,
    names: &DefaultFileNameGenerator,
    file_io: &FileIO,
    parquet: &ParquetWriterBuilder,
    key: Option<PartitionKey>,
) -> Result<OpenDataFile> {
    let location = locations.generate_location(key.as_ref(), &names.generate_file_name());
    let output = file_io
        .new_output(&location)
        .map_err(|e| iceberg_error(format!("cannot create data file {location}"), e))?;
    let writer = parquet
        .build(output)
        .await
        .map_err(|e| iceberg_error(format!("cannot create data file {location}"), e))?;
    Ok(OpenDataFile {
        path: Arc::from(location),
        writer,
        rows: 0,
        key,
    })
}

/// A data file being written by a [`PositionedDataWriter`].
struct OpenDataFile {
    path: Arc<str>,
    writer: ParquetWriter,
    rows: u64,
    key: Option<PartitionKey>,
}

/// Writes batches into data files of one table and reports where every row went; see the
/// module doc. One file is open per partition; a file is closed and a new one started before
/// a batch when it has reached the table's target file size (a batch is never split across
/// files, so a file may exceed the target by up to one batch).
pub struct PositionedDataWriter {
    table: String,
    schema: ArrowSchemaRef,
    spec: PartitionSpecRef,
    splitter: Option<RecordBatchPartitionSplitter>,
    parquet: ParquetWriterBuilder,
    locations: DefaultLocationGenerator,
    names: DefaultFileNameGenerator,
    file_io: FileIO,
    target_file_size: u64,
    open: HashMap<Struct, OpenDataFile>,
    done: Vec<DataFile>,
    rows: u64,
}

impl PositionedDataWriter {
    /// A writer for `table`'s current schema and default partition spec, rolling files at the
    /// table's target file size. `file_prefix` makes file names of concurrent writers distinct.
    pub fn new(table: &Table, file_prefix: &str) -> Result<Self> {
        Self::with_target_file_size(table, file_prefix, table_target_file_size(table))
    }

    /// Like [`PositionedDataWriter::new`] with another target file size (e.g. compaction's).
    pub fn with_target_file_size(table: &Table, file_prefix: &str, target_file_size: u64) -> Result<Self> {
        let name = table.identifier().to_string();
        let metadata = table.metadata();
        let iceberg_schema = metadata.current_schema().clone();
        let schema = Arc::new(
            schema_to_arrow_schema(&iceberg_schema)
                .map_err(|e| iceberg_error(format!("cannot map the schema of {name}"), e))?,
        );
        let parquet = ParquetWriterBuilder::new(data_writer_properties(table)?, iceberg_schema.clone())
            .with_match_mode(FieldMatchMode::Id);
        let locations = DefaultLocationGenerator::new(metadata)
            .map_err(|e| iceberg_error(format!("no data location for {name}"), e))?;
        // A fresh suffix per writer: a caller may reuse its prefix for the next writer.
        let names = DefaultFileNameGenerator::new(
            file_prefix.to_string(),
            Some(uuid::Uuid::new_v4().simple().to_string()),
            DataFileFormat::Parquet,
        );
        let spec = metadata.default_partition_spec().clone();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(iceberg_schema, spec.clone())
                    .map_err(|e| iceberg_error(format!("cannot partition rows of {name}"), e))?,
            )
        };
        Ok(Self {
            table: name,
            schema,
            spec,
            splitter,
            parquet,
            locations,
            names,
            file_io: table.file_io().clone(),
            target_file_size: target_file_size.max(1),
            open: HashMap::new(),
            done: Vec::new(),
            rows: 0,
        })
    }

    /// The Arrow schema batches must have (the table's, with Iceberg field ids).
    pub fn schema(&self) -> &ArrowSchemaRef {
        &self.schema
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one batch; returns where its rows went (one entry for an unpartitioned table).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<Vec<WrittenRows>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let batch = conform(&self.schema, &self.table, batch)?;
        self.rows += batch.num_rows() as u64;
        let parts: Vec<(Option<PartitionKey>, RecordBatch)> = match &self.splitter {
            None => vec![(None, batch)],
            Some(splitter) => splitter
                .split(&batch)
                .map_err(|e| iceberg_error(format!("cannot partition rows of {}", self.table), e))?
                .into_iter()
                .map(|(key, part)| (Some(key), part))
                .collect(),
        };
        let mut written = Vec::with_capacity(parts.len());
        for (key, part) in parts {
            let partition = key
                .as_ref()
                .map(|k| k.data().clone())
                .unwrap_or_else(Struct::empty);
            let full = self
                .open
                .get(&partition)
                .is_some_and(|f| f.writer.current_written_size() as u64 >= self.target_file_size);
            if full && let Some(file) = self.open.remove(&partition) {
                self.finish(file).await?;
            }
            if !self.open.contains_key(&partition) {
                // Only `Sync` parts of `self` are borrowed across the await: the open
                // Parquet writers are not, and the writer must stay `Send`.
                let file =
                    start_data_file(&self.locations, &self.names, &self.file_io, &self.parquet, key).await?;
                self.open.insert(partition.clone(), file);
            }
            let file = self.open.get_mut(&partition).expect("opened above");
            file.writer.write(&part).await.map_err(|e| {
                iceberg_error(
                    format!("cannot write data file {} of {}", file.path, self.table),
                    e,
                )
            })?;
            let first_pos = file.rows;
            file.rows += part.num_rows() as u64;
            written.push(WrittenRows {
                data_file: file.path.clone(),
                first_pos,
                batch: part,
            });
        }
        Ok(written)
    }

    /// Closes every open file and returns the data files written, ready to commit.
    pub async fn close(mut self) -> Result<Vec<DataFile>> {
        let open: Vec<OpenDataFile> = self.open.drain().map(|(_, f)| f).collect();
        for file in open {
            self.finish(file).await?;
        }
        Ok(self.done)
    }

    async fn finish(&mut self, file: OpenDataFile) -> Result<()> {
        let path = file.path;
        let builders = file
            .writer
            .close()
            .await
            .map_err(|e| iceberg_error(format!("cannot finish data file {path} of {}", self.table), e))?;
        for mut builder in builders {
            builder.content(DataContentType::Data);
            match &file.key {
                Some(key) => {
                    builder
                        .partition(key.data().clone())
                        .partition_spec_id(key.spec().spec_id());
                }
                None => {
                    builder.partition_spec_id(self.spec.spec_id());
                }
            }
            let data_file = builder.build().map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot describe data file {path} of {}: {e}", self.table),
                )
            })?;
            if data_file.record_count() != file.rows {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "data file {path} of {} holds {} rows, {} were written",
                        self.table,
                        data_file.record_count(),
                        file.rows
                    ),
                ));
            }
            self.done.push(data_file);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array};

    use super::*;
    use crate::testing::{TestLake, kv_batch};

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn rows_without_an_added_optional_column_get_null_there() {
        use arrow::array::StringArray;
        use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
        let table: ArrowSchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let rows = |fields: Vec<Field>, columns: Vec<arrow::array::ArrayRef>| {
            RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns).unwrap()
        };
        let id = || Arc::new(Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef;
        let name = || Arc::new(StringArray::from(vec!["a", "b"])) as arrow::array::ArrayRef;
        // Columns in another order, one missing: matched by name, the missing one NULL.
        let narrow = rows(
            vec![
                Field::new("name", DataType::Utf8, true),
                Field::new("id", DataType::Int64, false),
            ],
            vec![name(), id()],
        );
        let widened = conform(&table, "t", narrow).unwrap();
        assert_eq!(widened.schema(), table);
        assert_eq!(ids(&widened), vec![1, 2]);
        assert_eq!(widened.column(2).null_count(), 2);
        // A column the table does not have, or a missing required one: still an error.
        let unknown = rows(
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("other", DataType::Utf8, true),
            ],
            vec![id(), name()],
        );
        let err = conform(&table, "t", unknown).unwrap_err().to_string();
        assert!(err.contains("has 3 columns, the rows have 2"), "{err}");
        let no_id = rows(vec![Field::new("name", DataType::Utf8, true)], vec![name()]);
        assert!(conform(&table, "t", no_id).is_err());
    }

    #[tokio::test]
    async fn positions_and_rolling() {
        let t = TestLake::new().await;
        let table = t.create("roll", &[]).await;
        // Room for one batch per file.
        let mut writer = PositionedDataWriter::with_target_file_size(&table, "w", 1).unwrap();
        let first = writer
            .write(kv_batch(&[(1, "a", "eu"), (2, "b", "us")]))
            .await
            .unwrap();
        let second = writer.write(kv_batch(&[(3, "c", "eu")])).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].first_pos, ids(&first[0].batch)), (0, vec![1, 2]));
        assert_eq!((second[0].first_pos, ids(&second[0].batch)), (0, vec![3]));
        assert_ne!(first[0].data_file, second[0].data_file);
        let files = writer.close().await.unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].file_path(), first[0].data_file.as_ref());
        assert_eq!(files.iter().map(|f| f.record_count()).sum::<u64>(), 3);
        assert!(
            files.iter().all(|f| !f.lower_bounds().is_empty()),
            "column statistics"
        );

        // A large target keeps appending to one file, positions continuing.
        let mut writer = PositionedDataWriter::new(&table, "w").unwrap();
        let a = writer
            .write(kv_batch(&[(1, "a", "eu"), (2, "b", "us")]))
            .await
            .unwrap();
        let b = writer.write(kv_batch(&[(3, "c", "eu")])).await.unwrap();
        assert_eq!(a[0].data_file, b[0].data_file);
        assert_eq!(b[0].first_pos, 2);
        assert!(writer.write(kv_batch(&[])).await.unwrap().is_empty());
        assert_eq!(writer.rows(), 3);
        let files = writer.close().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].record_count(), 3);
    }

    #[tokio::test]
    async fn one_open_file_per_partition() {
        let t = TestLake::new().await;
        let table = t.create("parts", &["region"]).await;
        let mut writer = PositionedDataWriter::new(&table, "w").unwrap();
        let first = writer
            .write(kv_batch(&[(1, "a", "eu"), (2, "b", "us"), (3, "c", "eu")]))
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let eu = first.iter().find(|w| ids(&w.batch).contains(&1)).unwrap();
        assert_eq!((eu.first_pos, ids(&eu.batch)), (0, vec![1, 3]));
        assert!(eu.data_file.contains("region=eu"), "{}", eu.data_file);
        let second = writer.write(kv_batch(&[(4, "d", "eu")])).await.unwrap();
        assert_eq!(
            (second[0].data_file.clone(), second[0].first_pos),
            (eu.data_file.clone(), 2)
        );
        let files = writer.close().await.unwrap();
        assert_eq!(files.len(), 2);
        let eu_file = files
            .iter()
            .find(|f| f.file_path() == eu.data_file.as_ref())
            .unwrap();
        assert_eq!(eu_file.record_count(), 3);
        assert_eq!(eu_file.partition().fields().len(), 1);
        // Rows that do not fit the table (a column it does not have) are refused, naming it.
        let mut writer = PositionedDataWriter::new(&table, "w").unwrap();
        let bad = RecordBatch::try_new(
            Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
                "other",
                arrow_schema::DataType::Int64,
                false,
            )])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let err = writer.write(bad).await.unwrap_err();
        assert!(err.message().contains("t.parts"), "{err}");
    }
}
