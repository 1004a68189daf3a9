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

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::arrow::{FieldMatchMode, RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
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

impl DataWriter {
    /// A writer for `table`'s current schema and default partition spec. `file_prefix` makes
    /// file names of concurrent writers distinct.
    pub fn new(table: &Table, file_prefix: &str) -> Result<Self> {
        let name = table.identifier().to_string();
        let metadata = table.metadata();
        let props = metadata.properties();
        let codec = props
            .get("write.parquet.compression-codec")
            .map(String::as_str)
            .unwrap_or("zstd");
        let target_file_size = props
            .get(iceberg::spec::TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(128 * 1024 * 1024);
        let writer_props = WriterProperties::builder()
            .set_compression(parquet_compression(codec)?)
            .set_max_row_group_row_count(Some(1024 * 1024))
            .build();
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

    /// Gives `batch` the table's schema (field ids, names), casting where types differ only in
    /// representation (e.g. `Utf8View` → `Utf8`). A NULL in a required column is an error.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if batch.num_columns() != self.schema.fields().len() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "table {} has {} columns, the rows have {}",
                    self.table,
                    self.schema.fields().len(),
                    batch.num_columns()
                ),
            ));
        }
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "column {} of table {} is NOT NULL, but a row has NULL",
                        field.name(),
                        self.table
                    ),
                ));
            }
            if column.data_type() == field.data_type() {
                columns.push(column.clone());
            } else {
                let cast = arrow::compute::cast(column, field.data_type()).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "column {} of table {} has type {}, the rows have {}: {e}",
                            field.name(),
                            self.table,
                            field.data_type(),
                            column.data_type()
                        ),
                    )
                })?;
                columns.push(cast);
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("rows do not fit table {}: {e}", self.table),
            )
        })
    }
}
