//! Scans of format-v3 tables: Iceberg's reader with the table's deletion vectors applied.
//!
//! Format v3 replaces position delete files with deletion vectors (Puffin
//! `deletion-vector-v1` blobs, one per data file; see [`tarn_lake::deletion_vector`]). The
//! `iceberg` crate (0.10.1) plans them as position deletes but its reader opens every position
//! delete file as Parquet, so a scan of such a table fails. [`V3ScanExec`] plans the scan with
//! `iceberg` as usual (projection, filters, partition and statistics pruning, equality deletes),
//! then, for each data file with a vector, swaps the Puffin entry for a position-delete Parquet
//! file holding the same positions, written to a private temporary directory that lives as
//! long as the scan's stream, and reads the files with `iceberg`'s `ArrowReader`. So equality
//! deletes, position delete files (kept from before an upgrade to v3), schema evolution and
//! partition pruning behave exactly as in the scans of v2 tables.
//!
//! Why not a hook in `iceberg`: its delete filter is crate-private and its reader takes delete
//! files only through `FileIO`, so a file is the one form of deletes it accepts from outside.
//!
//! Every scan with delete files goes through [`V3ScanExec`], whatever the format version (a scan
//! without them is DataFusion's own Parquet scan, `LakeTable::native_scan`), because the
//! reader is run here one data file at a time. `iceberg` 0.10.1's reader shares each position
//! delete file between the data files it covers: the first to need it loads it and the others
//! wait for a wake-up that is lost when the load finishes between their check and their wait
//! (fixed upstream after 0.10.1), so a scan of two files covering one delete file could hang
//! for ever. It did, now and then, under load: the demo's final comparison, a Kafka ingest's
//! table, a row-level test's check. Read one file at a time, each file finds the deletes
//! already loaded. The reader decodes on the task that polls it, so little is lost: the files
//! were decoded one after the other before too, only their reads overlapped.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::expr::Predicate;
use iceberg::scan::{FileScanTask, FileScanTaskDeleteFile};
use iceberg::spec::DataContentType;
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;
use tarn_core::{Error, ErrorKind};
use tarn_lake::DeletionVectors;

use crate::provider::df_error;

/// A scan of one snapshot of a table (the current one when `snapshot_id` is `None`).
pub(crate) struct V3ScanExec {
    table: Table,
    snapshot_id: Option<i64>,
    columns: Vec<String>,
    predicate: Option<Predicate>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for V3ScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V3ScanExec({})", self.table.identifier())
    }
}

impl V3ScanExec {
    /// A scan of `table` whose output is `table_schema` (the schema `iceberg-datafusion` gives
    /// the table) projected by `projection`, filtered by what of `filters` Iceberg can express.
    pub(crate) fn new(
        table: Table,
        snapshot_id: Option<i64>,
        table_schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> DFResult<Self> {
        let schema = match projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => table_schema.clone(),
        };
        let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table,
            snapshot_id,
            columns,
            predicate: convert_filters_to_predicate(filters),
            schema,
            properties,
        })
    }
}

/// The scan's record batches, and the directory of the position-delete files standing in for
/// its deletion vectors (removed when the stream is dropped).
async fn open(
    table: Table,
    snapshot_id: Option<i64>,
    columns: Vec<String>,
    predicate: Option<Predicate>,
) -> tarn_core::Result<(iceberg::scan::ArrowRecordBatchStream, Option<tempfile::TempDir>)> {
    let ident = table.identifier().clone();
    let ice = |e| tarn_lake::iceberg_error(format!("cannot scan {ident}"), e);
    let mut builder = table.scan().select(columns);
    if let Some(id) = snapshot_id {
        builder = builder.snapshot_id(id);
    }
    if let Some(predicate) = predicate {
        builder = builder.with_filter(predicate);
    }
    let scan = builder.build().map_err(ice)?;
    let snapshot = scan.snapshot().map(|s| s.snapshot_id());
    let mut tasks: Vec<FileScanTask> = scan
        .plan_files()
        .await
        .map_err(ice)?
        .try_collect()
        .await
        .map_err(ice)?;
    let vectors = DeletionVectors::of_snapshot(table.file_io(), table.metadata(), snapshot).await?;
    let mut dir = None;
    if !vectors.is_empty() {
        let scratch = tempfile::Builder::new()
            .prefix("tarn-dv-")
            .tempdir()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    "cannot create a directory for deletion vectors",
                )
                .with_context("table", &ident)
                .with_source(e)
            })?;
        for (i, task) in tasks.iter_mut().enumerate() {
            task.deletes.retain(|d| !vectors.is_puffin_file(&d.file_path));
            let Some(vector) = vectors.for_data_file(&task.data_file_path) else {
                continue;
            };
            let positions = vector.read(table.file_io()).await?;
            let path = scratch.path().join(format!("dv-{i}.parquet"));
            let size = {
                let (vector, path) = (vector.clone(), path.clone());
                tokio::task::spawn_blocking(move || vector.write_position_delete_file(&positions, &path))
                    .await
                    .map_err(|e| {
                        Error::new(ErrorKind::Internal, format!("deletion vector task failed: {e}"))
                    })??
            };
            task.deletes.push(
                FileScanTaskDeleteFile::builder()
                    .with_file_path(path.display().to_string())
                    .with_file_size_in_bytes(size)
                    .with_file_type(DataContentType::PositionDeletes)
                    .with_partition_spec_id(task.partition_spec.as_ref().map_or(0, |s| s.spec_id()))
                    .build(),
            );
        }
        tracing::debug!(table = %ident, vectors = tasks.iter().filter(|t| vectors.for_data_file(&t.data_file_path).is_some()).count(), "deletion vectors applied");
        dir = Some(scratch);
    }
    // One data file at a time: module doc.
    let reader = ArrowReaderBuilder::new(table.file_io().clone(), iceberg::Runtime::current())
        .with_data_file_concurrency_limit(1)
        .build();
    let stream = reader
        .read(futures::stream::iter(tasks.into_iter().map(Ok)).boxed())
        .map_err(ice)?
        .stream();
    Ok((stream, dir))
}

/// Each of `columns` (the table's current names) by its name in the schema the scanned
/// snapshot was written with, found by field id; `None` where that schema predates the
/// column (it was added by a schema change after the snapshot, with no commit since).
fn written_columns(table: &Table, snapshot_id: Option<i64>, columns: &[String]) -> Vec<Option<String>> {
    let metadata = table.metadata();
    let current = metadata.current_schema();
    let written = snapshot_id
        .and_then(|id| metadata.snapshot_by_id(id))
        .or_else(|| metadata.current_snapshot())
        .and_then(|s| s.schema_id())
        .and_then(|id| metadata.schema_by_id(id))
        .unwrap_or(current);
    columns
        .iter()
        .map(|name| match current.as_struct().field_by_name(name) {
            Some(field) => written
                .as_struct()
                .fields()
                .iter()
                .find(|f| f.id == field.id)
                .map(|f| f.name.clone()),
            None => Some(name.clone()),
        })
        .collect()
}

/// `batch` (read with the snapshot's names) as the scan's output `schema`: columns renamed,
/// cast to their current types, and NULL where the snapshot predates them.
fn as_output(batch: &RecordBatch, schema: &SchemaRef, written: &[Option<String>]) -> DFResult<RecordBatch> {
    let names: Vec<Option<&str>> = written.iter().map(Option::as_deref).collect();
    Ok(crate::provider::conform_columns(batch, schema, &names)?)
}

impl DisplayAs for V3ScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V3ScanExec: table={}", self.table.identifier())?;
        if let Some(id) = self.snapshot_id {
            write!(f, " snapshot={id}")?;
        }
        write!(f, " projection=[{}]", self.columns.join(", "))?;
        if let Some(p) = &self.predicate {
            write!(f, " predicate=[{p}]")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for V3ScanExec {
    fn name(&self) -> &str {
        "V3ScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("V3ScanExec takes no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "V3ScanExec has one partition, asked for {partition}"
            )));
        }
        let (table, snapshot_id) = (self.table.clone(), self.snapshot_id);
        let written = written_columns(&table, snapshot_id, &self.columns);
        let renamed = written
            .iter()
            .zip(&self.columns)
            .any(|(w, c)| w.as_ref() != Some(c));
        // A column the snapshot predates (or knows by an older name) is not asked of `iceberg`,
        // which resolves names in the snapshot's schema, nor filtered on there: the filters are
        // applied again above the scan.
        let (columns, predicate) = match renamed {
            false => (self.columns.clone(), self.predicate.clone()),
            true => {
                let mut asked: Vec<String> = written.iter().flatten().cloned().collect();
                asked.dedup();
                (asked, None)
            }
        };
        let ident = table.identifier().clone();
        let schema = self.schema.clone();
        let batches = futures::stream::once(async move {
            let (stream, dir) = open(table, snapshot_id, columns, predicate)
                .await
                .map_err(df_error)?;
            let stream = stream.map(move |batch| {
                // The deletion vectors' files live until the last batch is read.
                let _dir = &dir;
                let batch = batch
                    .map_err(|e| df_error(tarn_lake::iceberg_error(format!("cannot read {ident}"), e)))?;
                match renamed {
                    false => Ok(batch),
                    true => as_output(&batch, &schema, &written),
                }
            });
            Ok::<_, DataFusionError>(stream)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// A past snapshot of a format-v3 table (`"t@<snapshot-id>"`): `iceberg-datafusion`'s schema
/// and filter pushdown, scanned by [`V3ScanExec`].
#[derive(Debug)]
pub(crate) struct V3SnapshotTable {
    table: Table,
    snapshot_id: i64,
    inner: IcebergStaticTableProvider,
}

impl V3SnapshotTable {
    pub(crate) fn new(table: Table, snapshot_id: i64, inner: IcebergStaticTableProvider) -> Self {
        Self {
            table,
            snapshot_id,
            inner,
        }
    }
}

#[async_trait]
impl TableProvider for V3SnapshotTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(V3ScanExec::new(
            self.table.clone(),
            Some(self.snapshot_id),
            &self.inner.schema(),
            projection,
            filters,
        )?))
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}
