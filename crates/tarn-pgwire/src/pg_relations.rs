//! What BI tools read about lake tables beyond their columns: primary keys, indexes and
//! comments, in the `pg_catalog` and `information_schema` relations and functions that
//! Metabase's, SQLAlchemy's (Superset's), pgjdbc's (DBeaver's) and psql's catalog queries read.
//!
//! The emulated `pg_catalog` (`datafusion-pg-catalog`) has PostgreSQL's own system rows in
//! `pg_index`, `pg_constraint` and `pg_description` and nothing for user tables. tarn adds:
//!
//! - a table's Iceberg identifier fields (a CDC table's key) as its primary key: a unique
//!   index `<table>_pkey` in `pg_class` (relkind `i`) and `pg_index` (`indisprimary`), a
//!   constraint of the same name in `pg_constraint` (`contype = 'p'`), and
//!   `information_schema.table_constraints` / `key_column_usage` rows;
//! - the table's `comment` property and its fields' docs in `pg_description`, so
//!   `obj_description`, `col_description` and the joins on `pg_description` answer;
//! - `information_schema.columns` as PostgreSQL shows it (`data_type` `bigint`, `udt_name`
//!   `int8`, `is_identity`, ...), which Metabase's sync reads;
//! - `pg_attribute` from the same snapshot, with PostgreSQL's type, length and modifier of each
//!   column (the emulation's loses the oids it gave schemas each time it is scanned, so a
//!   schema's oid would change between two statements);
//! - `pg_class.reloptions`, and `int2vector`/`int2[]` columns (`indkey`, `conkey`) as arrays
//!   so `unnest`, `= ANY(...)` and subscripts work on them;
//! - the functions that look things up by oid or name (`col_description`, `obj_description`,
//!   `pg_get_constraintdef`, `pg_get_indexdef`, `regclass` casts of expressions).
//!
//! Everything is read from a [`Snapshot`] of the catalogs taken before a statement that names
//! a catalog relation is planned ([`Relations::refresh`]); oids are the emulation's (its
//! `pg_class` and `pg_namespace` are read), an index's and a constraint's oid are its table's
//! plus a fixed offset.
//!
//! Governance: what a principal may not see is not described. Relations filter their rows for
//! the principal the statement runs for when they are scanned (`FilterTables`, as listings
//! are). The look-up functions run while rows are sent, outside the principal's scope, so the
//! statement rewrite ([`crate::pg_rewrite`]) passes them a grant token: a random key for what
//! the principal was found to see when the statement was planned. Without one (a call planned
//! by something other than the wire endpoint) they answer only when no policy is configured.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int16Array, Int16Builder, Int32Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use tarn_query::governance::{Governance, VisibleCatalogs};

/// An index's oid: its table's plus this.
const INDEX_OID_OFFSET: i32 = 1_000_000_000;
/// A primary-key constraint's oid: its table's plus this.
const CONSTRAINT_OID_OFFSET: i32 = 1_500_000_000;
/// `pg_class`'s own oid, the `classoid` of table and column comments.
pub(crate) const PG_CLASS_OID: i32 = 1259;
/// The oid of `btree`, the access method of every index tarn shows.
const BTREE_OID: i32 = 403;

/// The `information_schema` relations tarn answers itself, by the name the statement rewrite
/// gives them in `pg_catalog` (DataFusion answers `information_schema` on its own).
pub(crate) const INFORMATION_SCHEMA_TABLES: [&str; 3] = ["columns", "table_constraints", "key_column_usage"];

/// The hidden `pg_catalog` name of tarn's `information_schema.<name>`.
pub(crate) fn information_schema_table(name: &str) -> String {
    format!("information_schema.{name}")
}

/// A column of a relation.
#[derive(Debug, Clone)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    pub(crate) data_type: DataType,
    pub(crate) nullable: bool,
    /// A UUID column (text in DataFusion, `uuid` on the wire).
    pub(crate) uuid: bool,
}

/// A user table as the catalogs describe it.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub(crate) oid: i32,
    pub(crate) namespace_oid: i32,
    pub(crate) catalog: String,
    pub(crate) schema: String,
    /// The schema as `pg_namespace` shows it: `schema`, or `catalog.schema` for a foreign
    /// table ([`crate::pg_namespaces`]).
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<ColumnInfo>,
    pub(crate) description: tarn_query::provider::TableDescription,
}

impl Relation {
    /// The attribute numbers of the primary key's columns, in key order.
    fn key_attnums(&self) -> Vec<i16> {
        self.description
            .key_columns
            .iter()
            .filter_map(|k| self.attnum(k))
            .collect()
    }

    fn attnum(&self, column: &str) -> Option<i16> {
        self.columns
            .iter()
            .position(|c| c.name == column)
            .and_then(|i| i16::try_from(i + 1).ok())
    }

    fn has_key(&self) -> bool {
        !self.description.key_columns.is_empty()
    }

    fn key_name(&self) -> String {
        format!("{}_pkey", self.name)
    }

    fn index_oid(&self) -> i32 {
        self.oid + INDEX_OID_OFFSET
    }

    fn constraint_oid(&self) -> i32 {
        self.oid + CONSTRAINT_OID_OFFSET
    }

    fn quoted_columns(&self) -> String {
        self.description
            .key_columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The user tables of every catalog, as of the last refresh.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) relations: Vec<Relation>,
    /// The `pg_catalog` relations themselves, for `pg_attribute` (always visible).
    pub(crate) system: Vec<Relation>,
}

/// What one principal may see, for the look-up functions.
#[derive(Debug, Clone)]
struct Grant {
    token: String,
    visible: Arc<VisibleCatalogs>,
}

/// The described relations and the grants of the principals that asked; shared by the
/// relations and functions installed on the session.
#[derive(Debug)]
pub(crate) struct Relations {
    emulated: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    /// The lake's catalog: its schemas are shown by their names, other catalogs' as
    /// `catalog.schema`.
    lake: String,
    governance: Option<Arc<Governance>>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the snapshot was taken.
    taken: Mutex<Option<std::time::Instant>>,
    /// Grants by principal (user and groups).
    grants: Mutex<HashMap<String, Grant>>,
}

/// What the current principal may see: `None` for everything (no policy).
pub(crate) type Visibility = Option<Arc<VisibleCatalogs>>;

impl Relations {
    pub(crate) fn new(
        emulated: Arc<dyn SchemaProvider>,
        catalogs: Arc<dyn CatalogProviderList>,
        lake: &str,
        governance: Option<Arc<Governance>>,
    ) -> Self {
        Self {
            emulated,
            catalogs,
            lake: lake.to_string(),
            governance,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            taken: Mutex::new(None),
            grants: Mutex::new(HashMap::new()),
        }
    }

    /// The last snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock poisoned").clone()
    }

    /// What the principal of the current task may see (`None`: everything).
    pub(crate) fn visibility(&self) -> Result<Visibility> {
        match &self.governance {
            None => Ok(None),
            Some(g) => g
                .visible_to_current()
                .map(|v| Some(Arc::new(v)))
                .map_err(|e| DataFusionError::External(Box::new(e))),
        }
    }

    /// Whether `relation` is to be described to a principal who sees `visible`.
    pub(crate) fn shows(&self, relation: &Relation, visible: &Visibility) -> bool {
        let (Some(visible), Some(_)) = (visible, &self.governance) else {
            return true;
        };
        // Every catalog of the session is in `visible` (the lake's and the external ones).
        let Some((tables, _)) = visible.get(&relation.catalog) else {
            return true;
        };
        tables
            .get(&relation.schema)
            .is_some_and(|tables| tables.contains(&relation.name))
    }

    /// The relations of the last snapshot the current principal may see.
    pub(crate) fn visible_relations(&self) -> Result<Vec<Relation>> {
        let visible = self.visibility()?;
        Ok(self
            .snapshot()
            .relations
            .iter()
            .filter(|r| self.shows(r, &visible))
            .cloned()
            .collect())
    }

    /// The relations the holder of `token` may see (none for an unknown token while a policy is
    /// configured; every one without a policy).
    fn granted_relations(&self, token: Option<&str>) -> Vec<Relation> {
        let snapshot = self.snapshot();
        if self.governance.is_none() {
            return snapshot.relations.clone();
        }
        let Some(token) = token else {
            return Vec::new();
        };
        let grant = self
            .grants
            .lock()
            .expect("grants lock poisoned")
            .values()
            .find(|g| g.token == token)
            .cloned();
        let Some(grant) = grant else {
            return Vec::new();
        };
        let visible = Some(grant.visible);
        snapshot
            .relations
            .iter()
            .filter(|r| self.shows(r, &visible))
            .cloned()
            .collect()
    }

    /// Takes a new snapshot of the catalogs, and returns the grant token of the current
    /// principal (what it may see now) for the look-up functions.
    pub(crate) async fn refresh(&self, state: &dyn Session) -> Result<String> {
        let snapshot = self.load(state).await?;
        *self.snapshot.write().expect("snapshot lock poisoned") = Arc::new(snapshot);
        *self.taken.lock().expect("snapshot time lock poisoned") = Some(std::time::Instant::now());
        let Some(governance) = &self.governance else {
            return Ok(String::new());
        };
        let principal = governance
            .principal()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let visible = Arc::new(
            governance
                .visible_to_current()
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
        );
        let key = format!("{}\u{0}{}", principal.user, principal.groups.join("\u{0}"));
        let mut grants = self.grants.lock().expect("grants lock poisoned");
        let grant = grants.entry(key).or_insert_with(|| Grant {
            token: uuid::Uuid::new_v4().simple().to_string(),
            visible: visible.clone(),
        });
        grant.visible = visible;
        Ok(grant.token.clone())
    }

    /// Takes a new snapshot unless the last one is younger than a second: a statement prepared
    /// long ago (a client's cached prepared statement) still reads the catalogs as they are.
    pub(crate) async fn refresh_if_stale(&self, state: &dyn Session) -> Result<()> {
        let fresh = self
            .taken
            .lock()
            .expect("snapshot time lock poisoned")
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if !fresh {
            self.refresh(state).await?;
        }
        Ok(())
    }

    async fn load(&self, state: &dyn Session) -> Result<Snapshot> {
        let classes = self.scan_emulated(state, "pg_class").await?;
        let namespaces = self.scan_emulated(state, "pg_namespace").await?;
        let mut namespace_names: HashMap<i32, String> = HashMap::new();
        for batch in &namespaces {
            let oids = int32_column(batch, "oid")?;
            let names = string_column(batch, "nspname")?;
            for i in 0..batch.num_rows() {
                namespace_names.insert(oids.value(i), names.value(i).to_string());
            }
        }
        let mut oids: HashMap<(String, String), (i32, i32)> = HashMap::new();
        for batch in &classes {
            let (oid, name, namespace) = (
                int32_column(batch, "oid")?,
                string_column(batch, "relname")?,
                int32_column(batch, "relnamespace")?,
            );
            for i in 0..batch.num_rows() {
                if let Some(schema) = namespace_names.get(&namespace.value(i)) {
                    oids.entry((schema.clone(), name.value(i).to_string()))
                        .or_insert((oid.value(i), namespace.value(i)));
                }
            }
        }
        let (mut relations, mut system) = (Vec::new(), Vec::new());
        for catalog_name in self.catalogs.catalog_names() {
            let Some(catalog) = self.catalogs.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let is_system = schema_name == "pg_catalog" || schema_name == "information_schema";
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let namespace = if catalog_name == self.lake {
                    schema_name.clone()
                } else {
                    crate::pg_namespaces::foreign_namespace(&catalog_name, &schema_name)
                };
                for table_name in schema.table_names() {
                    let Some(&(oid, namespace_oid)) = oids.get(&(namespace.clone(), table_name.clone()))
                    else {
                        continue;
                    };
                    let Some(table) = schema.table(&table_name).await? else {
                        continue;
                    };
                    let columns = table
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| ColumnInfo {
                            name: f.name().clone(),
                            data_type: f.data_type().clone(),
                            nullable: f.is_nullable(),
                            uuid: tarn_query::uuid_column::is_uuid_field(f),
                        })
                        .collect();
                    let relation = Relation {
                        oid,
                        namespace_oid,
                        catalog: catalog_name.clone(),
                        schema: schema_name.clone(),
                        namespace: namespace.clone(),
                        name: table_name.clone(),
                        columns,
                        description: tarn_query::provider::describe_table(table.as_ref()).unwrap_or_default(),
                    };
                    if is_system {
                        system.push(relation);
                    } else {
                        relations.push(relation);
                    }
                }
            }
        }
        Ok(Snapshot { relations, system })
    }

    async fn scan_emulated(&self, state: &dyn Session, name: &str) -> Result<Vec<RecordBatch>> {
        let table = self
            .emulated
            .table(name)
            .await?
            .ok_or_else(|| DataFusionError::Plan(format!("the emulated pg_catalog has no {name}")))?;
        let plan = table.scan(state, None, &[], None).await?;
        datafusion::physical_plan::collect(plan, state.task_ctx()).await
    }
}

fn int32_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int32Array> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .ok_or_else(|| DataFusionError::Plan(format!("the emulated pg_catalog has no int column {name}")))
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| DataFusionError::Plan(format!("the emulated pg_catalog has no text column {name}")))
}

/// `name` quoted as PostgreSQL quotes identifiers in generated text (only when needed).
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// PostgreSQL's type of an Arrow column: (oid, `udt_name`, `data_type` as
/// `information_schema` names it).
pub(crate) fn pg_type(data_type: &DataType, uuid: bool) -> (i32, &'static str, &'static str) {
    use DataType as T;
    if uuid {
        return (2950, "uuid", "uuid");
    }
    match data_type {
        T::Boolean => (16, "bool", "boolean"),
        T::Int8 | T::Int16 | T::UInt8 => (21, "int2", "smallint"),
        T::Int32 | T::UInt16 => (23, "int4", "integer"),
        T::Int64 | T::UInt32 | T::UInt64 => (20, "int8", "bigint"),
        T::Float16 | T::Float32 => (700, "float4", "real"),
        T::Float64 => (701, "float8", "double precision"),
        T::Decimal32(..) | T::Decimal64(..) | T::Decimal128(..) | T::Decimal256(..) => {
            (1700, "numeric", "numeric")
        }
        T::Date32 | T::Date64 => (1082, "date", "date"),
        T::Time32(_) | T::Time64(_) => (1083, "time", "time without time zone"),
        T::Timestamp(_, None) => (1114, "timestamp", "timestamp without time zone"),
        T::Timestamp(_, Some(_)) => (1184, "timestamptz", "timestamp with time zone"),
        T::Interval(_) | T::Duration(_) => (1186, "interval", "interval"),
        T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => (17, "bytea", "bytea"),
        t if crate::wire_types::is_json_on_the_wire(t) => (114, "json", "json"),
        T::List(f) | T::LargeList(f) | T::ListView(f) | T::LargeListView(f) | T::FixedSizeList(f, _) => {
            let (oid, udt) = array_of(pg_type(f.data_type(), false).0);
            (oid, udt, "ARRAY")
        }
        _ => (25, "text", "text"),
    }
}

/// The array type of element type `oid`: (oid, `udt_name`), as the wire sends lists of
/// scalars.
fn array_of(oid: i32) -> (i32, &'static str) {
    match oid {
        16 => (1000, "_bool"),
        21 => (1005, "_int2"),
        23 => (1007, "_int4"),
        20 => (1016, "_int8"),
        700 => (1021, "_float4"),
        701 => (1022, "_float8"),
        1700 => (1231, "_numeric"),
        1082 => (1182, "_date"),
        1083 => (1183, "_time"),
        1114 => (1115, "_timestamp"),
        1184 => (1185, "_timestamptz"),
        1186 => (1187, "_interval"),
        17 => (1001, "_bytea"),
        _ => (1009, "_text"),
    }
}

// ---------------------------------------------------------------------------------------------
// Relations.
// ---------------------------------------------------------------------------------------------

/// Which relation a [`DescribedTable`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PgAttribute,
    PgClass,
    PgIndex,
    PgConstraint,
    PgDescription,
    Columns,
    TableConstraints,
    KeyColumnUsage,
}

impl Kind {
    /// The relation `name` of `pg_catalog` that tarn answers itself.
    pub(crate) fn of(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "pg_attribute" => Self::PgAttribute,
            "pg_class" => Self::PgClass,
            "pg_index" => Self::PgIndex,
            "pg_constraint" => Self::PgConstraint,
            "pg_description" => Self::PgDescription,
            "information_schema.columns" => Self::Columns,
            "information_schema.table_constraints" => Self::TableConstraints,
            "information_schema.key_column_usage" => Self::KeyColumnUsage,
            _ => return None,
        })
    }
}

/// A relation of the module doc: the emulation's rows (where it has any) with tarn's, built
/// when scanned.
#[derive(Debug)]
pub(crate) struct DescribedTable {
    kind: Kind,
    /// The emulation's relation of the same name, if any.
    emulated: Option<Arc<dyn TableProvider>>,
    relations: Arc<Relations>,
    schema: SchemaRef,
}

impl DescribedTable {
    pub(crate) fn new(
        kind: Kind,
        emulated: Option<Arc<dyn TableProvider>>,
        relations: Arc<Relations>,
    ) -> Self {
        let schema = match (&emulated, kind) {
            (Some(e), Kind::PgClass) => with_reloptions(&e.schema()),
            (Some(e), Kind::PgIndex) => with_lists(&e.schema(), &["indkey", "indoption"]),
            (Some(e), Kind::PgConstraint) => with_lists(&e.schema(), &["conkey", "confkey"]),
            (Some(e), _) => e.schema(),
            (None, Kind::Columns) => columns_schema(),
            (None, Kind::TableConstraints) => table_constraints_schema(),
            (None, Kind::KeyColumnUsage) => key_column_usage_schema(),
            (None, _) => Arc::new(Schema::empty()),
        };
        Self {
            kind,
            emulated,
            relations,
            schema,
        }
    }

    async fn emulated_rows(&self, state: &dyn Session) -> Result<Vec<RecordBatch>> {
        match &self.emulated {
            Some(e) => {
                let plan = e.scan(state, None, &[], None).await?;
                datafusion::physical_plan::collect(plan, state.task_ctx()).await
            }
            None => Ok(Vec::new()),
        }
    }

    async fn rows(&self, state: &dyn Session) -> Result<Vec<RecordBatch>> {
        self.relations.refresh_if_stale(state).await?;
        let relations = self.relations.visible_relations()?;
        if self.kind == Kind::PgAttribute {
            // Not the emulation's: scanning it forgets the oids the emulation gave schemas, so
            // a schema's oid would change between two statements.
            let mut all = relations;
            all.extend(self.relations.snapshot().system.iter().cloned());
            return Ok(vec![pg_attribute_batch(&self.schema, &all)?]);
        }
        let emulated = self.emulated_rows(state).await?;
        let mut batches = match self.kind {
            Kind::PgClass => pg_class_rows(&self.schema, emulated, &relations, &self.relations)?,
            Kind::PgIndex => convert_lists(&self.schema, emulated)?,
            Kind::PgConstraint => convert_lists(&self.schema, emulated)?,
            _ => emulated,
        };
        let ours = match self.kind {
            Kind::PgClass | Kind::PgAttribute => None,
            Kind::PgIndex => Some(pg_index_batch(&self.schema, &relations)?),
            Kind::PgConstraint => Some(pg_constraint_batch(&self.schema, &relations)?),
            Kind::PgDescription => Some(pg_description_batch(&self.schema, &relations)?),
            Kind::Columns => Some(columns_batch(&self.schema, &relations)?),
            Kind::TableConstraints => Some(table_constraints_batch(&self.schema, &relations)?),
            Kind::KeyColumnUsage => Some(key_column_usage_batch(&self.schema, &relations)?),
        };
        batches.extend(ours);
        Ok(batches)
    }
}

#[async_trait]
impl TableProvider for DescribedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.emulated.as_ref().map_or(TableType::View, |e| e.table_type())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.rows(state).await?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// `schema` with `pg_class.reloptions` (`text[]`) added.
fn with_reloptions(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if schema.index_of("reloptions").is_err() {
        fields.push(Field::new(
            "reloptions",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

fn int2_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int16, true)))
}

/// `schema` with the named `int2vector`/`int2[]` columns as lists of `int2`.
fn with_lists(schema: &Schema, names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if names.contains(&f.name().as_str()) {
                    Field::new(f.name(), int2_list(), true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// `batches` in `schema`: text columns that became lists parsed (`1 2`, `{1,2}`).
fn convert_lists(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|batch| {
            let columns = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(field, column)| {
                    if field.data_type() == column.data_type() {
                        return Ok(column.clone());
                    }
                    let Some(text) = column.as_any().downcast_ref::<StringArray>() else {
                        return Err(DataFusionError::Plan(format!(
                            "the emulated column {} is not text",
                            field.name()
                        )));
                    };
                    let mut list = ListBuilder::new(Int16Builder::new());
                    for value in text {
                        match value {
                            None => list.append_null(),
                            Some(v) => {
                                for part in v
                                    .trim_matches(|c| c == '{' || c == '}')
                                    .split([' ', ','])
                                    .filter(|p| !p.is_empty())
                                {
                                    list.values().append_option(part.parse::<i16>().ok());
                                }
                                list.append(true);
                            }
                        }
                    }
                    Ok(Arc::new(list.finish()) as ArrayRef)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

/// A column of `schema`'s batch being built row by row: each value given as a closure result.
fn build_batch(
    schema: &SchemaRef,
    rows: usize,
    mut value: impl FnMut(&str, usize) -> Cell,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> Result<ArrayRef> {
            let cells: Vec<Cell> = (0..rows).map(|row| value(field.name(), row)).collect();
            cells_to_array(field, cells)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// One value of a built row.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Ints(Vec<i16>),
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn cells_to_array(field: &Field, cells: Vec<Cell>) -> Result<ArrayRef> {
    let wrong = |cell: &Cell| {
        DataFusionError::Internal(format!(
            "cannot put {cell:?} in column {} of type {}",
            field.name(),
            field.data_type()
        ))
    };
    // A NULL in a NOT NULL column of the emulation's schema gets the type's zero value.
    let zero_if_required = |cell: Cell| match (&cell, field.is_nullable()) {
        (Cell::Null, false) => match field.data_type() {
            DataType::Boolean => Cell::Bool(false),
            DataType::Utf8 => Cell::Text(String::new()),
            DataType::List(_) => Cell::Ints(Vec::new()),
            _ => Cell::Int(0),
        },
        _ => cell,
    };
    let cells: Vec<Cell> = cells.into_iter().map(zero_if_required).collect();
    Ok(match field.data_type() {
        DataType::Int16 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    Cell::Int(v) => Ok(Some(i16::try_from(*v).map_err(|_| wrong(c))?)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<Int16Array>>()?,
        ),
        DataType::Int32 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    Cell::Int(v) => Ok(Some(i32::try_from(*v).map_err(|_| wrong(c))?)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<Int32Array>>()?,
        ),
        DataType::Int64 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    Cell::Int(v) => Ok(Some(*v)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<datafusion::arrow::array::Int64Array>>()?,
        ),
        DataType::Float32 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    #[allow(clippy::cast_precision_loss)]
                    Cell::Int(v) => Ok(Some(*v as f32)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<datafusion::arrow::array::Float32Array>>()?,
        ),
        DataType::Float64 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    #[allow(clippy::cast_precision_loss)]
                    Cell::Int(v) => Ok(Some(*v as f64)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<datafusion::arrow::array::Float64Array>>()?,
        ),
        DataType::Boolean => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    Cell::Bool(v) => Ok(Some(*v)),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<BooleanArray>>()?,
        ),
        DataType::Utf8 => Arc::new(
            cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Ok(None),
                    Cell::Text(v) => Ok(Some(v.clone())),
                    Cell::Int(v) => Ok(Some(v.to_string())),
                    _ => Err(wrong(c)),
                })
                .collect::<Result<StringArray>>()?,
        ),
        DataType::List(item) if item.data_type() == &DataType::Int16 => {
            let mut list = ListBuilder::new(Int16Builder::new());
            for c in &cells {
                match c {
                    Cell::Null => list.append_null(),
                    Cell::Ints(v) => {
                        list.values().append_slice(v);
                        list.append(true);
                    }
                    _ => return Err(wrong(c)),
                }
            }
            Arc::new(list.finish())
        }
        DataType::List(item) if item.data_type() == &DataType::Utf8 => {
            let mut list = ListBuilder::new(StringBuilder::new());
            for c in &cells {
                match c {
                    Cell::Null => list.append_null(),
                    _ => return Err(wrong(c)),
                }
            }
            Arc::new(list.finish())
        }
        other => {
            return Err(DataFusionError::Internal(format!(
                "cannot build column {} of type {other}",
                field.name()
            )));
        }
    })
}

/// The emulation's `pg_class` with `reloptions`, the rows of tables the principal may not see
/// dropped, keyed tables marked `relhasindex`, and their primary-key indexes added.
fn pg_class_rows(
    schema: &SchemaRef,
    emulated: Vec<RecordBatch>,
    visible: &[Relation],
    relations: &Relations,
) -> Result<Vec<RecordBatch>> {
    let hidden: Vec<i32> = {
        let shown: std::collections::HashSet<i32> = visible.iter().map(|r| r.oid).collect();
        relations
            .snapshot()
            .relations
            .iter()
            .map(|r| r.oid)
            .filter(|oid| !shown.contains(oid))
            .collect()
    };
    let keyed: std::collections::HashSet<i32> =
        visible.iter().filter(|r| r.has_key()).map(|r| r.oid).collect();
    let mut out = Vec::new();
    for batch in emulated {
        let oids = int32_column(&batch, "oid")?.clone();
        let keep: BooleanArray = oids
            .iter()
            .map(|o| Some(!o.is_some_and(|o| hidden.contains(&o))))
            .collect();
        let batch = filter_record_batch(&batch, &keep)?;
        let oids = int32_column(&batch, "oid")?.clone();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        if let Ok(at) = batch.schema().index_of("relhasindex") {
            columns[at] = Arc::new(
                oids.iter()
                    .map(|o| Some(o.is_some_and(|o| keyed.contains(&o))))
                    .collect::<BooleanArray>(),
            );
        }
        columns.push(datafusion::arrow::array::new_null_array(
            schema.field_with_name("reloptions")?.data_type(),
            batch.num_rows(),
        ));
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    let indexes: Vec<&Relation> = visible.iter().filter(|r| r.has_key()).collect();
    out.push(build_batch(schema, indexes.len(), |column, row| {
        let r = indexes[row];
        match column {
            "oid" | "relfilenode" => Cell::Int(r.index_oid().into()),
            "relname" => text(r.key_name()),
            "relnamespace" => Cell::Int(r.namespace_oid.into()),
            "relam" => Cell::Int(BTREE_OID.into()),
            "relkind" => text("i"),
            "relpersistence" => text("p"),
            "relreplident" => text("n"),
            "relnatts" => Cell::Int(i64::try_from(r.description.key_columns.len()).unwrap_or(0)),
            "relpages" => Cell::Int(1),
            "relispopulated" => Cell::Bool(true),
            "relpartbound" => text(""),
            _ => Cell::Null,
        }
    })?);
    Ok(out)
}

/// How PostgreSQL stores a column of `data_type`: (type oid, `attlen`, `attbyval`, `attalign`,
/// `attstorage`, `atttypmod`, `attcollation`, `attndims`).
#[allow(clippy::type_complexity)]
fn attribute_facts(column: &ColumnInfo) -> (i32, i16, bool, &'static str, &'static str, i32, i32, i32) {
    use DataType as T;
    let (oid, _, _) = pg_type(&column.data_type, column.uuid);
    let typmod = match &column.data_type {
        T::Decimal32(p, s) | T::Decimal64(p, s) | T::Decimal128(p, s) | T::Decimal256(p, s) => {
            crate::pg_catalog::numeric_typmod(*p, *s)
        }
        _ => -1,
    };
    let (len, byval, align, storage) = match oid {
        16 => (1, true, "c", "p"),
        21 => (2, true, "s", "p"),
        23 | 700 | 1082 => (4, true, "i", "p"),
        20 | 701 | 1083 | 1114 | 1184 => (8, true, "d", "p"),
        1186 => (16, false, "d", "p"),
        2950 => (16, false, "c", "p"),
        1700 => (-1, false, "i", "m"),
        _ => (-1, false, "i", "x"),
    };
    let collation = if oid == 25 { 100 } else { 0 };
    let dims = i32::from(oid == 1009);
    (oid, len, byval, align, storage, typmod, collation, dims)
}

fn pg_attribute_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let rows: Vec<(&Relation, usize, &ColumnInfo)> = relations
        .iter()
        .flat_map(|r| r.columns.iter().enumerate().map(move |(i, c)| (r, i, c)))
        .collect();
    build_batch(schema, rows.len(), |column, row| {
        let (r, i, c) = rows[row];
        let (oid, len, byval, align, storage, typmod, collation, dims) = attribute_facts(c);
        match column {
            "attrelid" => Cell::Int(r.oid.into()),
            "attname" => text(c.name.clone()),
            "atttypid" => Cell::Int(oid.into()),
            "attstattarget" | "attcacheoff" => Cell::Int(-1),
            "attlen" => Cell::Int(len.into()),
            "attnum" => Cell::Int(i64::try_from(i + 1).unwrap_or(0)),
            "attndims" => Cell::Int(dims.into()),
            "atttypmod" => Cell::Int(typmod.into()),
            "attbyval" => Cell::Bool(byval),
            "attalign" => text(align),
            "attstorage" => text(storage),
            "attnotnull" => Cell::Bool(!c.nullable),
            "attislocal" => Cell::Bool(true),
            "attcollation" => Cell::Int(collation.into()),
            "attidentity" | "attgenerated" => text(""),
            "attinhcount" => Cell::Int(0),
            _ => Cell::Null,
        }
    })
}

fn pg_index_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let keyed: Vec<&Relation> = relations.iter().filter(|r| r.has_key()).collect();
    build_batch(schema, keyed.len(), |column, row| {
        let r = keyed[row];
        let keys = r.key_attnums();
        let n = i64::try_from(keys.len()).unwrap_or(0);
        let zeros = vec!["0"; keys.len()].join(" ");
        match column {
            "indexrelid" => Cell::Int(r.index_oid().into()),
            "indrelid" => Cell::Int(r.oid.into()),
            "indnatts" | "indnkeyatts" => Cell::Int(n),
            "indisunique" | "indisprimary" | "indimmediate" | "indisvalid" | "indisready" | "indislive" => {
                Cell::Bool(true)
            }
            "indoption" => Cell::Ints(vec![0; keys.len()]),
            "indkey" => Cell::Ints(keys),
            "indcollation" | "indclass" => text(zeros),
            "indexprs" | "indpred" => Cell::Null,
            _ => Cell::Bool(false),
        }
    })
}

fn pg_constraint_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let keyed: Vec<&Relation> = relations.iter().filter(|r| r.has_key()).collect();
    build_batch(schema, keyed.len(), |column, row| {
        let r = keyed[row];
        match column {
            "oid" => Cell::Int(r.constraint_oid().into()),
            "conname" => text(r.key_name()),
            "connamespace" => Cell::Int(r.namespace_oid.into()),
            "contype" => text("p"),
            "convalidated" | "conislocal" | "connoinherit" => Cell::Bool(true),
            "conrelid" => Cell::Int(r.oid.into()),
            "conindid" => Cell::Int(r.index_oid().into()),
            "confupdtype" | "confdeltype" | "confmatchtype" => text(" "),
            "conkey" => Cell::Ints(r.key_attnums()),
            "confkey" => Cell::Null,
            "condeferrable" | "condeferred" => Cell::Bool(false),
            _ => Cell::Null,
        }
    })
}

fn pg_description_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let mut rows: Vec<(i32, i64, String)> = Vec::new();
    for r in relations {
        if let Some(comment) = &r.description.comment {
            rows.push((r.oid, 0, comment.clone()));
        }
        for (column, comment) in &r.description.column_comments {
            if let Some(attnum) = r.attnum(column) {
                rows.push((r.oid, attnum.into(), comment.clone()));
            }
        }
    }
    build_batch(schema, rows.len(), |column, row| {
        let (oid, subid, description) = &rows[row];
        match column {
            "objoid" => Cell::Int((*oid).into()),
            "classoid" => Cell::Int(PG_CLASS_OID.into()),
            "objsubid" => Cell::Int(*subid),
            "description" => text(description.clone()),
            _ => Cell::Null,
        }
    })
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn columns_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("table_catalog", false),
        utf8("table_schema", false),
        utf8("table_name", false),
        utf8("column_name", false),
        Field::new("ordinal_position", DataType::Int32, false),
        utf8("column_default", true),
        utf8("is_nullable", false),
        utf8("data_type", false),
        Field::new("character_maximum_length", DataType::Int32, true),
        Field::new("character_octet_length", DataType::Int32, true),
        Field::new("numeric_precision", DataType::Int32, true),
        Field::new("numeric_precision_radix", DataType::Int32, true),
        Field::new("numeric_scale", DataType::Int32, true),
        Field::new("datetime_precision", DataType::Int32, true),
        utf8("interval_type", true),
        Field::new("interval_precision", DataType::Int32, true),
        utf8("udt_catalog", false),
        utf8("udt_schema", false),
        utf8("udt_name", false),
        Field::new("dtd_identifier", DataType::Utf8, false),
        utf8("is_self_referencing", false),
        utf8("is_identity", false),
        utf8("identity_generation", true),
        utf8("is_generated", false),
        utf8("generation_expression", true),
        utf8("is_updatable", false),
    ]))
}

fn columns_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let rows: Vec<(&Relation, usize, &ColumnInfo)> = relations
        .iter()
        .flat_map(|r| r.columns.iter().enumerate().map(move |(i, c)| (r, i, c)))
        .collect();
    build_batch(schema, rows.len(), |column, row| {
        let (r, i, c) = rows[row];
        let (_, udt, data_type) = pg_type(&c.data_type, c.uuid);
        let (precision, radix, scale) = numeric_facts(&c.data_type);
        match column {
            "table_catalog" | "udt_catalog" => text(r.catalog.clone()),
            "table_schema" => text(r.schema.clone()),
            "table_name" => text(r.name.clone()),
            "column_name" => text(c.name.clone()),
            "ordinal_position" => Cell::Int(i64::try_from(i + 1).unwrap_or(0)),
            "is_nullable" => text(if c.nullable { "YES" } else { "NO" }),
            "data_type" => text(data_type),
            "numeric_precision" => precision.map_or(Cell::Null, Cell::Int),
            "numeric_precision_radix" => radix.map_or(Cell::Null, Cell::Int),
            "numeric_scale" => scale.map_or(Cell::Null, Cell::Int),
            "datetime_precision" => match c.data_type {
                DataType::Time32(_) | DataType::Time64(_) | DataType::Timestamp(..) => Cell::Int(6),
                DataType::Date32 | DataType::Date64 => Cell::Int(0),
                _ => Cell::Null,
            },
            "udt_schema" => text("pg_catalog"),
            "udt_name" => text(udt),
            "dtd_identifier" => Cell::Int(i64::try_from(i + 1).unwrap_or(0)),
            "is_self_referencing" | "is_identity" => text("NO"),
            "is_generated" => text("NEVER"),
            "is_updatable" => text("YES"),
            _ => Cell::Null,
        }
    })
}

/// `numeric_precision`, `numeric_precision_radix` and `numeric_scale` as PostgreSQL's
/// `information_schema.columns` gives them.
fn numeric_facts(data_type: &DataType) -> (Option<i64>, Option<i64>, Option<i64>) {
    use DataType as T;
    match data_type {
        T::Int8 | T::Int16 | T::UInt8 => (Some(16), Some(2), Some(0)),
        T::Int32 | T::UInt16 => (Some(32), Some(2), Some(0)),
        T::Int64 | T::UInt32 | T::UInt64 => (Some(64), Some(2), Some(0)),
        T::Float16 | T::Float32 => (Some(24), Some(2), None),
        T::Float64 => (Some(53), Some(2), None),
        T::Decimal32(p, s) | T::Decimal64(p, s) | T::Decimal128(p, s) | T::Decimal256(p, s) => {
            (Some((*p).into()), Some(10), Some((*s).into()))
        }
        _ => (None, None, None),
    }
}

fn table_constraints_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("constraint_catalog", false),
        utf8("constraint_schema", false),
        utf8("constraint_name", false),
        utf8("table_catalog", false),
        utf8("table_schema", false),
        utf8("table_name", false),
        utf8("constraint_type", false),
        utf8("is_deferrable", false),
        utf8("initially_deferred", false),
        utf8("enforced", false),
        utf8("nulls_distinct", true),
    ]))
}

fn table_constraints_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let keyed: Vec<&Relation> = relations.iter().filter(|r| r.has_key()).collect();
    build_batch(schema, keyed.len(), |column, row| {
        let r = keyed[row];
        match column {
            "constraint_catalog" | "table_catalog" => text(r.catalog.clone()),
            "constraint_schema" | "table_schema" => text(r.schema.clone()),
            "constraint_name" => text(r.key_name()),
            "table_name" => text(r.name.clone()),
            "constraint_type" => text("PRIMARY KEY"),
            "is_deferrable" | "initially_deferred" => text("NO"),
            "enforced" => text("YES"),
            _ => Cell::Null,
        }
    })
}

fn key_column_usage_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("constraint_catalog", false),
        utf8("constraint_schema", false),
        utf8("constraint_name", false),
        utf8("table_catalog", false),
        utf8("table_schema", false),
        utf8("table_name", false),
        utf8("column_name", false),
        Field::new("ordinal_position", DataType::Int32, false),
        Field::new("position_in_unique_constraint", DataType::Int32, true),
    ]))
}

fn key_column_usage_batch(schema: &SchemaRef, relations: &[Relation]) -> Result<RecordBatch> {
    let rows: Vec<(&Relation, usize, &String)> = relations
        .iter()
        .flat_map(|r| {
            r.description
                .key_columns
                .iter()
                .enumerate()
                .map(move |(i, c)| (r, i, c))
        })
        .collect();
    build_batch(schema, rows.len(), |column, row| {
        let (r, i, c) = rows[row];
        match column {
            "constraint_catalog" | "table_catalog" => text(r.catalog.clone()),
            "constraint_schema" | "table_schema" => text(r.schema.clone()),
            "constraint_name" => text(r.key_name()),
            "table_name" => text(r.name.clone()),
            "column_name" => text(c.clone()),
            "ordinal_position" => Cell::Int(i64::try_from(i + 1).unwrap_or(0)),
            _ => Cell::Null,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Look-up functions.
// ---------------------------------------------------------------------------------------------

/// What a [`LookupFunction`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    /// `col_description(table oid, column number)`.
    ColDescription,
    /// `obj_description(oid [, catalog name])`.
    ObjDescription,
    /// `pg_get_constraintdef(oid [, pretty])`.
    ConstraintDef,
    /// `pg_get_indexdef(oid [, column, pretty])`.
    IndexDef,
    /// `expr::regclass`: a name's oid, or an oid's name.
    Regclass,
    /// `pg_table_size(oid)`: the bytes of the table's current snapshot (data and delete files).
    TableSize,
}

impl Lookup {
    /// The function's name as clients call it (without a grant token).
    pub(crate) fn public_name(self) -> &'static str {
        match self {
            Self::ColDescription => "col_description",
            Self::ObjDescription => "obj_description",
            Self::ConstraintDef => "pg_get_constraintdef",
            Self::IndexDef => "pg_get_indexdef",
            Self::Regclass => "tarn_regclass",
            Self::TableSize => "pg_table_size",
        }
    }

    /// The name the statement rewrite calls it by, with a grant token as the last argument.
    pub(crate) fn granted_name(self) -> String {
        format!("tarn_granted_{}", self.public_name())
    }

    pub(crate) const ALL: [Self; 6] = [
        Self::ColDescription,
        Self::ObjDescription,
        Self::ConstraintDef,
        Self::IndexDef,
        Self::Regclass,
        Self::TableSize,
    ];
}

/// A function of [`Lookup`], answering from the snapshot for what its caller may see.
#[derive(Debug)]
pub(crate) struct LookupFunction {
    lookup: Lookup,
    /// Whether the last argument is a grant token.
    granted: bool,
    name: String,
    relations: Arc<Relations>,
    signature: Signature,
}

impl PartialEq for LookupFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for LookupFunction {}

impl std::hash::Hash for LookupFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl LookupFunction {
    pub(crate) fn new(lookup: Lookup, granted: bool, relations: Arc<Relations>) -> Self {
        let name = if granted {
            lookup.granted_name()
        } else {
            lookup.public_name().to_string()
        };
        Self {
            lookup,
            granted,
            name,
            relations,
            signature: Signature::new(TypeSignature::VariadicAny, Volatility::Stable),
        }
    }

    fn answer(&self, relations: &[Relation], args: &[Option<Scalar>]) -> Option<Scalar> {
        let int = |i: usize| match args.get(i) {
            Some(Some(Scalar::Int(v))) => Some(*v),
            _ => None,
        };
        match self.lookup {
            Lookup::ColDescription => {
                let (oid, column) = (int(0)?, int(1)?);
                let r = relations.iter().find(|r| i64::from(r.oid) == oid)?;
                if column == 0 {
                    return r.description.comment.clone().map(Scalar::Text);
                }
                let name = &r.columns.get(usize::try_from(column - 1).ok()?)?.name;
                r.description.column_comments.get(name).cloned().map(Scalar::Text)
            }
            Lookup::ObjDescription => {
                let oid = int(0)?;
                let r = relations.iter().find(|r| i64::from(r.oid) == oid)?;
                r.description.comment.clone().map(Scalar::Text)
            }
            Lookup::ConstraintDef => {
                let oid = int(0)?;
                let r = relations
                    .iter()
                    .find(|r| r.has_key() && i64::from(r.constraint_oid()) == oid)?;
                Some(Scalar::Text(format!("PRIMARY KEY ({})", r.quoted_columns())))
            }
            Lookup::IndexDef => {
                let oid = int(0)?;
                let column = int(1).unwrap_or(0);
                let r = relations
                    .iter()
                    .find(|r| r.has_key() && i64::from(r.index_oid()) == oid)?;
                if column > 0 {
                    let name = r.description.key_columns.get(usize::try_from(column - 1).ok()?)?;
                    return Some(Scalar::Text(quote_ident(name)));
                }
                Some(Scalar::Text(format!(
                    "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
                    quote_ident(&r.key_name()),
                    quote_ident(&r.namespace),
                    quote_ident(&r.name),
                    r.quoted_columns()
                )))
            }
            Lookup::TableSize => {
                let oid = int(0)?;
                let r = relations.iter().find(|r| i64::from(r.oid) == oid)?;
                Some(Scalar::Int(r.description.size_bytes.unwrap_or(0)))
            }
            Lookup::Regclass => match args.first()? {
                Some(Scalar::Int(oid)) => {
                    if let Some(r) = relations.iter().find(|r| i64::from(r.oid) == *oid) {
                        return Some(Scalar::Text(qualified_name(r)));
                    }
                    if let Some(r) = relations
                        .iter()
                        .find(|r| r.has_key() && i64::from(r.index_oid()) == *oid)
                    {
                        return Some(Scalar::Text(quote_ident(&r.key_name())));
                    }
                    Some(Scalar::Text(oid.to_string()))
                }
                Some(Scalar::Text(name)) => {
                    let (schema, table) = parse_relation_name(name);
                    if schema.is_none()
                        && let Some(oid) = system_relation_oid(&table)
                    {
                        return Some(Scalar::Int(oid.into()));
                    }
                    relations
                        .iter()
                        .find(|r| {
                            r.name == table && schema.as_ref().is_none_or(|s| *s == r.namespace)
                                || schema.is_none() && r.has_key() && r.key_name() == table
                        })
                        .map(|r| {
                            if r.name == table {
                                Scalar::Int(r.oid.into())
                            } else {
                                Scalar::Int(r.index_oid().into())
                            }
                        })
                }
                _ => None,
            },
        }
    }
}

/// `schema.table` as `regclass` shows a relation outside the search path.
fn qualified_name(r: &Relation) -> String {
    if r.namespace == tarn_query::DEFAULT_SCHEMA {
        quote_ident(&r.name)
    } else {
        format!("{}.{}", quote_ident(&r.namespace), quote_ident(&r.name))
    }
}

/// `"Schema".table` or `table` as (schema, table), unquoted (unquoted names folded to lower
/// case, as PostgreSQL folds them).
fn parse_relation_name(name: &str) -> (Option<String>, String) {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = name.trim().chars().peekable();
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '.' if !quoted => {
                parts.push(if was_quoted {
                    current.clone()
                } else {
                    current.to_lowercase()
                });
                current.clear();
                was_quoted = false;
            }
            c => current.push(c),
        }
    }
    parts.push(if was_quoted {
        current
    } else {
        current.to_lowercase()
    });
    let table = parts.pop().unwrap_or_default();
    (parts.pop(), table)
}

/// The fixed oids PostgreSQL gives the system catalogs clients name in `'...'::regclass`.
fn system_relation_oid(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("pg_catalog.") {
        "pg_class" => PG_CLASS_OID,
        "pg_namespace" => 2615,
        "pg_proc" => 1255,
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_constraint" => 2606,
        "pg_index" => 2610,
        "pg_description" => 2609,
        "pg_database" => 1262,
        "pg_am" => 2601,
        "pg_trigger" => 2620,
        "pg_attrdef" => 2604,
        _ => return None,
    })
}

/// One argument value.
#[derive(Debug, Clone)]
enum Scalar {
    Int(i64),
    Text(String),
}

fn scalars(array: &ArrayRef) -> Result<Vec<Option<Scalar>>> {
    let cast_to = |dt: &DataType| datafusion::arrow::compute::cast(array, dt);
    Ok(match array.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            let a = cast_to(&DataType::Int32)?;
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(|v| Scalar::Int(v.into())))
                .collect()
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => {
            let a = cast_to(&DataType::Int64)?;
            a.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(Scalar::Int))
                .collect()
        }
        DataType::Null => vec![None; array.len()],
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map(|b| Scalar::Int(i64::from(b))))
            .collect(),
        _ => {
            let a = cast_to(&DataType::Utf8)?;
            a.as_string::<i32>()
                .iter()
                .map(|v| v.map(|s| Scalar::Text(s.to_string())))
                .collect()
        }
    })
}

impl ScalarUDFImpl for LookupFunction {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let regclass_of_name = self.lookup == Lookup::Regclass
            && arg_types
                .first()
                .is_some_and(|t| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8));
        Ok(if regclass_of_name {
            DataType::Int32
        } else if self.lookup == Lookup::TableSize {
            DataType::Int64
        } else {
            DataType::Utf8
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let return_type = args.return_field.data_type().clone();
        let mut arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let token = if self.granted {
            let token = arrays.pop().ok_or_else(|| {
                DataFusionError::Plan(format!("{} takes a grant token as its last argument", self.name))
            })?;
            let token = datafusion::arrow::compute::cast(&token, &DataType::Utf8)?;
            let token = token.as_string::<i32>();
            (token.len() > 0 && token.is_valid(0)).then(|| token.value(0).to_string())
        } else {
            None
        };
        let relations = self.relations.granted_relations(token.as_deref());
        let columns = arrays.iter().map(scalars).collect::<Result<Vec<_>>>()?;
        let answers: Vec<Option<Scalar>> = (0..rows)
            .map(|row| {
                let args: Vec<Option<Scalar>> =
                    columns.iter().map(|c| c.get(row).cloned().flatten()).collect();
                self.answer(&relations, &args)
            })
            .collect();
        let array: ArrayRef = if return_type == DataType::Int64 {
            Arc::new(
                answers
                    .iter()
                    .map(|a| match a {
                        Some(Scalar::Int(v)) => Some(*v),
                        _ => None,
                    })
                    .collect::<datafusion::arrow::array::Int64Array>(),
            )
        } else if return_type == DataType::Int32 {
            Arc::new(
                answers
                    .iter()
                    .map(|a| match a {
                        Some(Scalar::Int(v)) => i32::try_from(*v).ok(),
                        _ => None,
                    })
                    .collect::<Int32Array>(),
            )
        } else {
            Arc::new(
                answers
                    .iter()
                    .map(|a| match a {
                        Some(Scalar::Text(s)) => Some(s.clone()),
                        Some(Scalar::Int(v)) => Some(v.to_string()),
                        None => None,
                    })
                    .collect::<StringArray>(),
            )
        };
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names_parse_as_postgresql_folds_them() {
        assert_eq!(
            parse_relation_name("Shop.Orders"),
            (Some("shop".into()), "orders".into())
        );
        assert_eq!(
            parse_relation_name("\"Shop\".\"a.b\""),
            (Some("Shop".into()), "a.b".into())
        );
        assert_eq!(parse_relation_name("orders"), (None, "orders".into()));
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("id"), "id");
        assert_eq!(quote_ident("Id"), "\"Id\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
