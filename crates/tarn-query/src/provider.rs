//! DataFusion's view of the lake: the catalog as a `CatalogProvider`, each Iceberg namespace as
//! a schema, each table as a `TableProvider`.
//!
//! Table lookups always go to the catalog, so every statement sees the latest committed
//! snapshot, including commits by other processes. DataFusion's listing APIs are synchronous,
//! so namespace and table *names* are served from a cache that [`LakeCatalogProvider::refresh`]
//! reloads before every statement.
//!
//! Scans of tables whose files all share the current schema and carry no delete files (every
//! append-only table that has not evolved its schema) plan their files with Iceberg (partition
//! and column-statistics pruning from the manifests) and then read them with DataFusion's own
//! Parquet reader: byte-range splits across cores, row-group and page pruning, and row counts
//! for the join planner. Other scans use `iceberg-datafusion`'s reader, which applies delete
//! files and maps columns by field id across schema changes; scans of format-v3 tables go
//! through [`crate::v3_scan`], which adds deletion vectors to what that reader applies.
//!
//! Table names with a suffix select something other than the current snapshot:
//! `"orders@<snapshot-id>"` reads that snapshot (time travel), `"orders$snapshots"`,
//! `"orders$manifests"` and the other Iceberg metadata tables show the table's metadata.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, Statistics};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use iceberg::inspect::MetadataTableType;
use iceberg::scan::FileScanTask;
use iceberg::{NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;
use tarn_core::{Error, ErrorKind};
use tarn_lake::Lake;

use crate::bridge::{Bridge, BridgedTable};
use crate::write::{WriteProgress, write_and_commit};

/// Wraps a tarn error for DataFusion.
pub(crate) fn df_error(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The lake as a DataFusion catalog.
#[derive(Debug)]
pub struct LakeCatalogProvider {
    lake: Lake,
    names: Arc<RwLock<BTreeMap<String, BTreeSet<String>>>>,
    /// Schemas that are not Iceberg namespaces, registered by the endpoint (`pg_catalog`).
    system: Arc<RwLock<HashMap<String, Arc<dyn SchemaProvider>>>>,
    /// The table a row-level statement writes, pinned at the snapshot it reads, which this
    /// catalog shows with its rows' identities ([`crate::row_level::RowIdTable`]).
    row_ids: Option<iceberg::table::Table>,
    /// The pipelines whose pending changes reads may include ([`crate::bridge`]).
    bridge: Arc<Bridge>,
}

impl LakeCatalogProvider {
    /// A provider over `lake`; call [`Self::refresh`] before listing.
    pub fn new(lake: Lake) -> Self {
        Self {
            lake,
            names: Arc::default(),
            system: Arc::default(),
            row_ids: None,
            bridge: Arc::default(),
        }
    }

    /// The pipelines whose pending changes this catalog's reads may include.
    pub fn bridge(&self) -> &Arc<Bridge> {
        &self.bridge
    }

    /// This catalog with `table` (pinned at its current snapshot) read as a
    /// [`crate::row_level::RowIdTable`]: its columns plus each row's data file and position.
    /// Names, system schemas and every other table are shared with `self`.
    pub(crate) fn with_row_ids(&self, table: iceberg::table::Table) -> Self {
        Self {
            lake: self.lake.clone(),
            names: self.names.clone(),
            system: self.system.clone(),
            row_ids: Some(table),
            bridge: self.bridge.clone(),
        }
    }

    /// Reloads the namespace and table names from the catalog.
    pub async fn refresh(&self) -> tarn_core::Result<()> {
        let mut names = BTreeMap::new();
        for ns in self.lake.list_namespaces().await? {
            let tables = self
                .lake
                .list_tables(&ns)
                .await?
                .into_iter()
                .map(|t| t.name().to_string())
                .collect();
            names.insert(ns.join("."), tables);
        }
        *self.names.write().expect("name cache poisoned") = names;
        Ok(())
    }
}

impl CatalogProvider for LakeCatalogProvider {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .names
            .read()
            .expect("name cache poisoned")
            .keys()
            .cloned()
            .collect();
        names.extend(self.system.read().expect("schema map poisoned").keys().cloned());
        names
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .system
            .write()
            .expect("schema map poisoned")
            .insert(name.to_string(), schema))
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(system) = self.system.read().expect("schema map poisoned").get(name) {
            return Some(system.clone());
        }
        // Unknown namespaces still resolve, so a table created by another process is found
        // before the next refresh; lookups of missing tables return None.
        let namespace = NamespaceIdent::from_strs(name.split('.')).ok()?;
        Some(Arc::new(LakeSchemaProvider {
            lake: self.lake.clone(),
            namespace,
            names: self.names.clone(),
            key: name.to_string(),
            row_ids: self.row_ids.clone(),
            bridge: self.bridge.clone(),
        }))
    }
}

/// One Iceberg namespace as a DataFusion schema.
#[derive(Debug)]
pub struct LakeSchemaProvider {
    lake: Lake,
    namespace: NamespaceIdent,
    names: Arc<RwLock<BTreeMap<String, BTreeSet<String>>>>,
    key: String,
    row_ids: Option<iceberg::table::Table>,
    bridge: Arc<Bridge>,
}

/// A table name split into the table and what of it is asked for.
enum TableSelector<'a> {
    Current(&'a str),
    Snapshot(&'a str, i64),
    Metadata(&'a str, MetadataTableType),
}

fn parse_selector(name: &str) -> DFResult<TableSelector<'_>> {
    if let Some((table, snapshot)) = name.split_once('@') {
        let id = snapshot.parse::<i64>().map_err(|_| {
            DataFusionError::Plan(format!(
                "invalid snapshot id {snapshot:?} in table name {name:?}: expected TABLE@SNAPSHOT_ID"
            ))
        })?;
        return Ok(TableSelector::Snapshot(table, id));
    }
    if let Some((table, meta)) = name.split_once('$') {
        let kind = MetadataTableType::try_from(meta).map_err(|_| {
            let known: Vec<String> = MetadataTableType::all_types()
                .map(|t| t.as_str().to_string())
                .collect();
            DataFusionError::Plan(format!(
                "unknown metadata table {meta:?} in {name:?}: expected one of {}",
                known.join(", ")
            ))
        })?;
        return Ok(TableSelector::Metadata(table, kind));
    }
    Ok(TableSelector::Current(name))
}

#[async_trait]
impl SchemaProvider for LakeSchemaProvider {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.names
            .read()
            .expect("name cache poisoned")
            .get(&self.key)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let selector = parse_selector(name)?;
        let base = match &selector {
            TableSelector::Current(t) | TableSelector::Snapshot(t, _) | TableSelector::Metadata(t, _) => *t,
        };
        let ident = TableIdent::new(self.namespace.clone(), base.to_string());
        if let (TableSelector::Current(_), Some(pinned)) = (&selector, &self.row_ids)
            && pinned.identifier() == &ident
        {
            return Ok(Some(Arc::new(crate::row_level::RowIdTable::new(
                self.lake.clone(),
                pinned.clone(),
            )?)));
        }
        let started = std::time::Instant::now();
        // A pipeline's publication is taken before the table is loaded: it names the snapshot
        // its changes sit on, which a pipeline publishes only after committing it, so the
        // metadata loaded next holds that snapshot (taken after, a commit in between would
        // leave the publication on a snapshot the loaded metadata does not know).
        let pending = match &selector {
            TableSelector::Current(_) => self.bridge.pending(&ident),
            _ => None,
        };
        let table = match self.lake.load_table(&ident).await {
            Ok(table) => table,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(df_error(e)),
        };
        let provider: Arc<dyn TableProvider> = match selector {
            TableSelector::Current(_) => {
                let committed = LakeTable::new(self.lake.clone(), table).await?;
                // A pipeline's table, with or without a publication in place, reads through
                // the bridge, which records the position it read at.
                let position = self.bridge.committed_position(committed.table());
                if pending.is_some() || position.is_some() {
                    Arc::new(BridgedTable::new(
                        committed,
                        pending,
                        position,
                        self.bridge.clone(),
                    ))
                } else {
                    Arc::new(committed)
                }
            }
            TableSelector::Snapshot(_, id) => {
                if table.metadata().snapshot_by_id(id).is_none() {
                    let known: Vec<String> = table
                        .metadata()
                        .snapshots()
                        .map(|s| s.snapshot_id().to_string())
                        .collect();
                    return Err(DataFusionError::Plan(format!(
                        "table {ident} has no snapshot {id} (snapshots: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                snapshot_provider(&table, id).await?
            }
            TableSelector::Metadata(_, kind) => Arc::new(metadata_table(&table, kind).await?),
        };
        tracing::debug!(table = %ident, ms = started.elapsed().as_secs_f64() * 1e3, "table loaded");
        Ok(Some(provider))
    }

    fn table_exist(&self, name: &str) -> bool {
        let base = name.split(['@', '$']).next().unwrap_or(name);
        self.names
            .read()
            .expect("name cache poisoned")
            .get(&self.key)
            .is_some_and(|t| t.contains(base))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DFResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::NotImplemented(format!(
            "cannot register {name} in lake schema {}: use CREATE TABLE",
            self.key
        )))
    }
}

/// A reader of snapshot `id` of `table` (time travel, the base of a bridge read), its columns
/// as the snapshot's schema has them.
pub(crate) async fn snapshot_provider(
    table: &iceberg::table::Table,
    id: i64,
) -> DFResult<Arc<dyn TableProvider>> {
    let ident = table.identifier();
    let inner = IcebergStaticTableProvider::try_new_from_table_snapshot(table.clone(), id)
        .await
        .map_err(|e| df_error(tarn_lake::iceberg_error(format!("cannot read {ident}@{id}"), e)))?;
    let uuids = snapshot_uuid_columns(table, id);
    // Through tarn's reader of files with deletes, whatever the format (v3_scan's module doc).
    let provider: Arc<dyn TableProvider> =
        Arc::new(crate::v3_scan::V3SnapshotTable::new(table.clone(), id, inner));
    Ok(if uuids.is_empty() {
        provider
    } else {
        Arc::new(UuidTextTable::new(provider, &uuids))
    })
}

async fn metadata_table(table: &iceberg::table::Table, kind: MetadataTableType) -> DFResult<MemTable> {
    let inspect = table.inspect();
    let stream = match kind {
        MetadataTableType::Snapshots => inspect.snapshots().scan().await,
        MetadataTableType::Manifests => inspect.manifests().scan().await,
    }
    .map_err(|e| {
        df_error(tarn_lake::iceberg_error(
            format!("cannot inspect {}", table.identifier()),
            e,
        ))
    })?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| {
        df_error(tarn_lake::iceberg_error(
            format!("cannot inspect {}", table.identifier()),
            e,
        ))
    })?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => Arc::new(Schema::empty()),
    };
    MemTable::try_new(schema, vec![batches])
}

/// An Iceberg table at its current snapshot: scans read it, `INSERT` appends to it.
#[derive(Debug)]
pub struct LakeTable {
    lake: Lake,
    ident: TableIdent,
    table: iceberg::table::Table,
    scan: IcebergStaticTableProvider,
    /// The table's columns as DataFusion sees them: strings and binaries as view types, which
    /// DataFusion compares, hashes and filters fastest; `uuid` columns as UUID text.
    schema: SchemaRef,
    /// Whether the table has `uuid` columns, which DataFusion's Parquet reader cannot give
    /// their text form.
    has_uuids: bool,
}

/// `schema` with top-level `Utf8`/`Binary` columns as `Utf8View`/`BinaryView`, and the
/// columns named in `uuids` (Iceberg `uuid` columns) as UUID text ([`crate::uuid_column`]).
pub(crate) fn view_schema(schema: &Schema, uuids: &BTreeSet<String>) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if uuids.contains(f.name()) && f.data_type() == &DataType::FixedSizeBinary(16) {
                return crate::uuid_column::uuid_text_field(f);
            }
            let dt = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
                DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
                other => other.clone(),
            };
            f.as_ref().clone().with_data_type(dt)
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The names of the top-level `uuid` columns of `table`'s current schema.
pub(crate) fn uuid_columns(table: &iceberg::table::Table) -> BTreeSet<String> {
    uuid_fields(table.metadata().current_schema())
}

/// The names of the top-level `uuid` columns of the schema snapshot `id` of `table` was
/// written with (the current schema if it names none).
fn snapshot_uuid_columns(table: &iceberg::table::Table, id: i64) -> BTreeSet<String> {
    let metadata = table.metadata();
    let schema = metadata
        .snapshot_by_id(id)
        .and_then(|s| s.schema_id())
        .and_then(|sid| metadata.schema_by_id(sid))
        .unwrap_or_else(|| metadata.current_schema());
    uuid_fields(schema)
}

fn uuid_fields(schema: &iceberg::spec::Schema) -> BTreeSet<String> {
    schema
        .as_struct()
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.field_type.as_ref(),
                iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Uuid)
            )
        })
        .map(|f| f.name.clone())
        .collect()
}

/// `batch` as a batch of `target`: column `i` of `target` is `batch`'s column named
/// `names[i]`, cast where the types differ; NULL where `names[i]` is `None` or `batch` has no
/// such column. Fails where a required column would hold NULL.
pub(crate) fn conform_columns(
    batch: &RecordBatch,
    target: &SchemaRef,
    names: &[Option<&str>],
) -> arrow::error::Result<RecordBatch> {
    let columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .zip(names)
        .map(|(f, name)| match name.and_then(|n| batch.column_by_name(n)) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()).map_err(|e| {
                arrow::error::ArrowError::CastError(format!("column {} as {}: {e}", f.name(), f.data_type()))
            }),
            None => Ok(arrow::array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<arrow::error::Result<_>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Casts `plan`'s columns to `target` where their types differ (16-byte UUIDs to their text).
pub(crate) fn cast_to(plan: Arc<dyn ExecutionPlan>, target: &Schema) -> DFResult<Arc<dyn ExecutionPlan>> {
    let input = plan.schema();
    if input.fields().len() != target.fields().len()
        || input
            .fields()
            .iter()
            .zip(target.fields())
            .all(|(a, b)| a.data_type() == b.data_type())
    {
        return Ok(plan);
    }
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = input
        .fields()
        .iter()
        .zip(target.fields())
        .enumerate()
        .map(|(i, (from, to))| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(from.name(), i));
            let expr: Arc<dyn PhysicalExpr> = if from.data_type() == to.data_type() {
                column
            } else if crate::uuid_column::is_uuid_field(to) {
                Arc::new(ScalarFunctionExpr::new(
                    to.name(),
                    crate::uuid_column::uuid_text_udf(),
                    vec![column],
                    to.clone(),
                    Arc::new(ConfigOptions::default()),
                ))
            } else {
                Arc::new(CastExpr::new(column, to.data_type().clone(), None))
            };
            (expr, to.name().clone())
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// What a lake table says of itself beyond its columns, for catalogs that describe tables to
/// clients (the Postgres wire endpoint's `pg_constraint`, `pg_index`, `pg_description`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDescription {
    /// The primary key: the Iceberg schema's identifier fields (a CDC table's key), in the
    /// schema's order, as top-level column names.
    pub key_columns: Vec<String>,
    /// The table's comment: its `comment` property.
    pub comment: Option<String>,
    /// Column comments: the Iceberg fields' docs, by top-level column name.
    pub column_comments: BTreeMap<String, String>,
    /// The size of the current snapshot's data and delete files (its summary's
    /// `total-files-size`), when the table has a snapshot.
    pub size_bytes: Option<i64>,
}

/// The [`TableDescription`] of `provider` when it is a lake table at its current snapshot;
/// `None` for anything else (metadata tables, time travel, other catalogs' tables).
pub fn describe_table(provider: &dyn TableProvider) -> Option<TableDescription> {
    let any = provider.as_any();
    let table = match any.downcast_ref::<BridgedTable>() {
        Some(bridged) => bridged.committed(),
        None => any.downcast_ref::<LakeTable>()?,
    };
    let metadata = table.table.metadata();
    let schema = metadata.current_schema();
    let fields = schema.as_struct().fields();
    let keys: BTreeSet<i32> = schema.identifier_field_ids().collect();
    Some(TableDescription {
        key_columns: fields
            .iter()
            .filter(|f| keys.contains(&f.id))
            .map(|f| f.name.clone())
            .collect(),
        comment: metadata.properties().get("comment").cloned(),
        column_comments: fields
            .iter()
            .filter_map(|f| f.doc.as_ref().map(|d| (f.name.clone(), d.clone())))
            .collect(),
        size_bytes: metadata.current_snapshot().map(|s| {
            let summary = &s.summary().additional_properties;
            ["total-files-size", "total-delete-files-size"]
                .iter()
                .filter_map(|k| summary.get(*k).and_then(|v| v.parse::<i64>().ok()))
                .sum()
        }),
    })
}

impl LakeTable {
    async fn new(lake: Lake, table: iceberg::table::Table) -> DFResult<Self> {
        let ident = table.identifier().clone();
        let scan = IcebergStaticTableProvider::try_new_from_table(table.clone())
            .await
            .map_err(|e| df_error(tarn_lake::iceberg_error(format!("cannot read {ident}"), e)))?;
        let uuids = uuid_columns(&table);
        let schema = Arc::new(view_schema(&scan.schema(), &uuids));
        Ok(Self {
            lake,
            ident,
            table,
            scan,
            schema,
            has_uuids: !uuids.is_empty(),
        })
    }

    /// The table at the snapshot this provider reads.
    pub(crate) fn table(&self) -> &iceberg::table::Table {
        &self.table
    }

    /// The table's name.
    pub(crate) fn ident(&self) -> &TableIdent {
        &self.ident
    }

    /// The columns as Iceberg's reader gives them (before [`view_schema`]'s types).
    pub(crate) fn raw_schema(&self) -> SchemaRef {
        self.scan.schema()
    }

    /// DataFusion's Parquet reader over the files Iceberg plans, when that reads the same rows;
    /// `None` when the table needs Iceberg's reader (delete files, evolved schema).
    async fn native_scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let metadata = self.table.metadata();
        if metadata.schemas_iter().count() != 1 || self.has_uuids {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let schema = self.schema();
        let ice = |e: iceberg::Error| {
            df_error(tarn_lake::iceberg_error(
                format!("cannot plan a scan of {}", self.ident),
                e,
            ))
        };
        let mut builder = self.table.scan().select_all();
        if let Some(predicate) = convert_filters_to_predicate(filters) {
            builder = builder.with_filter(predicate);
        }
        let tasks: Vec<FileScanTask> = builder
            .build()
            .map_err(ice)?
            .plan_files()
            .await
            .map_err(ice)?
            .try_collect()
            .await
            .map_err(ice)?;
        if tasks
            .iter()
            .any(|t| !t.deletes.is_empty() || t.data_file_format != iceberg::spec::DataFileFormat::Parquet)
        {
            return Ok(None);
        }
        let entries = self
            .lake
            .current_data_files(&self.table)
            .await
            .map_err(df_error)?;
        let field_ids: Vec<i32> = metadata
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.id)
            .collect();
        let mut per_file = Vec::with_capacity(tasks.len());
        let mut base_url = None;
        let mut files = Vec::with_capacity(tasks.len());
        let mut total_rows = 0u64;
        let mut total_bytes = 0u64;
        for task in &tasks {
            let resolved = self.lake.stores().resolve(&task.data_file_path).map_err(ice)?;
            match &base_url {
                None => base_url = Some((resolved.base_url.clone(), resolved.store.clone())),
                Some((url, _)) if *url != resolved.base_url => return Ok(None),
                Some(_) => {}
            }
            let rows = task.record_count.unwrap_or_default();
            total_rows += rows;
            total_bytes += task.file_size_in_bytes;
            let columns = match entries.get(&task.data_file_path) {
                Some(file) if field_ids.len() == schema.fields().len() => {
                    crate::stats::column_statistics(file, &schema, &field_ids)
                }
                _ => Statistics::unknown_column(&schema),
            };
            per_file.push(columns.clone());
            let stats = Statistics {
                num_rows: Precision::Exact(rows as usize),
                total_byte_size: Precision::Inexact(task.file_size_in_bytes as usize),
                column_statistics: columns,
            };
            files.push(
                PartitionedFile::new(resolved.path.to_string(), task.file_size_in_bytes)
                    .with_statistics(Arc::new(stats)),
            );
        }
        let Some((base_url, store)) = base_url else {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema.clone(),
            };
            return Ok(Some(Arc::new(EmptyExec::new(projected))));
        };
        let url = ObjectStoreUrl::parse(&base_url)?;
        state
            .runtime_env()
            .register_object_store(url.as_ref(), store.clone());
        // The session's Parquet options, and footers and page indexes from the runtime's
        // metadata cache, as DataFusion's own listing tables read them.
        let mut source = ParquetSource::new(schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone())
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                store.clone(),
                state.runtime_env().cache_manager.get_file_metadata_cache(),
            )));
        if let Some(filter) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            let predicate = state.create_physical_expr(filter, &df_schema)?;
            source = source.with_predicate(predicate);
        }
        let statistics = Statistics {
            num_rows: Precision::Exact(total_rows as usize),
            total_byte_size: Precision::Inexact(total_bytes as usize),
            column_statistics: crate::stats::merge(&per_file, schema.fields().len()),
        };
        tracing::debug!(
            table = %self.ident,
            files = tasks.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "scan planned"
        );
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_group(FileGroup::new(files))
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(Some(DataSourceExec::from_data_source(config)))
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        if let Some(plan) = self.native_scan(state, projection, filters, limit).await? {
            return Ok(plan);
        }
        // Delete files (or a format-v3 table): tarn's reader of them (v3_scan's module doc).
        let plan: Arc<dyn ExecutionPlan> = Arc::new(crate::v3_scan::V3ScanExec::new(
            self.table.clone(),
            None,
            &self.scan.schema(),
            projection,
            filters,
        )?);
        let target = match projection {
            Some(p) => self.schema.project(p)?,
            None => self.schema.as_ref().clone(),
        };
        cast_to(plan, &target)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        self.scan.supports_filters_pushdown(filters)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let overwrite = match insert_op {
            InsertOp::Append => false,
            InsertOp::Overwrite => true,
            InsertOp::Replace => {
                return Err(DataFusionError::NotImplemented(format!(
                    "{insert_op} into Iceberg table {} is not supported; use INSERT INTO or INSERT OVERWRITE",
                    self.ident
                )));
            }
        };
        Ok(Arc::new(LakeInsertExec::new(
            self.lake.clone(),
            self.ident.clone(),
            self.table.clone(),
            input,
            overwrite,
        )))
    }
}

/// A table read through another provider (a snapshot of a table, for time travel) with its
/// `uuid` columns as UUID text, as [`LakeTable`] shows them.
#[derive(Debug)]
struct UuidTextTable {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl UuidTextTable {
    fn new(inner: Arc<dyn TableProvider>, uuids: &BTreeSet<String>) -> Self {
        let schema = Arc::new(view_schema(&inner.schema(), uuids));
        Self { inner, schema }
    }
}

#[async_trait]
impl TableProvider for UuidTextTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let target = match projection {
            Some(p) => self.schema.project(p)?,
            None => self.schema.as_ref().clone(),
        };
        cast_to(plan, &target)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// The one child `node` (an operator with one input) is given in `with_new_children`.
pub(crate) fn only_child(
    node: &str,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let [child] = <[_; 1]>::try_from(children)
        .map_err(|c| DataFusionError::Internal(format!("{node} takes one child, got {}", c.len())))?;
    Ok(child)
}

/// Writes its input into a table and commits it as one snapshot; outputs the row count. With
/// `overwrite` (`INSERT OVERWRITE`) the commit replaces the partitions the rows fall into
/// ([`crate::write::write_and_overwrite`]).
pub struct LakeInsertExec {
    lake: Lake,
    ident: TableIdent,
    /// The table as the statement planned on it: what an overwrite replaces and validates
    /// concurrent commits from.
    base: iceberg::table::Table,
    input: Arc<dyn ExecutionPlan>,
    overwrite: bool,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for LakeInsertExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LakeInsertExec({})", self.ident)
    }
}

pub(crate) fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

impl LakeInsertExec {
    fn new(
        lake: Lake,
        ident: TableIdent,
        base: iceberg::table::Table,
        input: Arc<dyn ExecutionPlan>,
        overwrite: bool,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            lake,
            ident,
            base,
            input,
            overwrite,
            properties,
        }
    }
}

impl DisplayAs for LakeInsertExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LakeInsertExec: table={} overwrite={}",
            self.ident, self.overwrite
        )
    }
}

impl ExecutionPlan for LakeInsertExec {
    fn name(&self) -> &str {
        "LakeInsertExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let child = only_child("LakeInsertExec", children)?;
        Ok(Arc::new(Self::new(
            self.lake.clone(),
            self.ident.clone(),
            self.base.clone(),
            child,
            self.overwrite,
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LakeInsertExec has one partition, asked for {partition}"
            )));
        }
        let count = self.input.properties().partitioning.partition_count();
        let streams = (0..count)
            .map(|i| self.input.execute(i, context.clone()))
            .collect::<DFResult<Vec<_>>>()?;
        let lake = self.lake.clone();
        let ident = self.ident.clone();
        // Who writes, for the audit trail: the task's principal and statement, taken now (the
        // stream may be polled elsewhere).
        let audit = context
            .session_config()
            .get_extension::<crate::governance::Governance>()
            .map(|g| {
                (
                    g,
                    crate::governance::current_principal(),
                    crate::audit::current_statement(),
                )
            });
        let overwrite = self.overwrite;
        let base = self.base.clone();
        let once = futures::stream::once(async move {
            let progress = Arc::new(WriteProgress::default());
            let outcome = if overwrite {
                crate::write::write_and_overwrite(&lake, &ident, Some(base), streams, progress).await
            } else {
                write_and_commit(&lake, &ident, streams, HashMap::new(), progress).await
            }
            .map_err(df_error)?;
            if let Some((g, Some(principal), statement)) = audit {
                let table = format!("{}.{}", g.catalog_name(), ident);
                g.record_write_for(&principal, statement, "InsertIntoTable", &table, outcome.rows);
            }
            let rows: ArrayRef = Arc::new(UInt64Array::from(vec![outcome.rows]));
            Ok(RecordBatch::try_new(count_schema(), vec![rows])?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            once.boxed(),
        )))
    }
}
