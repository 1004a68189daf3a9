//! tarn's corrections to the `pg_catalog` that `datafusion-pg-catalog` emulates, so psql's
//! `\d`, JDBC's `getColumns` and BI tools describe columns as PostgreSQL would:
//!
//! - `pg_attribute.atttypmod` carries a `DECIMAL(p,s)` column's precision and scale the way
//!   PostgreSQL packs them (`((p << 16) | s) + 4`; the emulation has `-1`, "no modifier", for
//!   every column), and a column with a time zone is `timestamptz` (1184; the emulation falls
//!   back to `text`).
//! - `format_type(oid, typmod)` renders `numeric(p,s)` with the scale also when it is 0
//!   (`numeric(10,0)`, as PostgreSQL does); every other type is rendered by the emulation.
//!
//! The emulated `pg_attribute` is computed per query from the catalog, table by table; tarn
//! walks the catalog in the same order to know each row's Arrow type, and leaves the rows as
//! they are if the walk does not line up with them (a table created in between).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int16Array, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::pg_relations::{DescribedTable, Kind, Lookup, LookupFunction, Relations};

/// PostgreSQL's type OID of `numeric`.
const NUMERIC: i32 = 1700;
/// PostgreSQL's type OID of `uuid`.
const UUID: i32 = 2950;
/// PostgreSQL's type OID of `timestamptz`.
const TIMESTAMPTZ: i32 = 1184;

/// PostgreSQL's `atttypmod` of a `numeric(precision, scale)` column.
pub fn numeric_typmod(precision: u8, scale: i8) -> i32 {
    ((i32::from(precision) << 16) | (i32::from(scale) & 0xffff)) + 4
}

/// Installs the corrections on `ctx`, whose catalog `catalog` already has the emulated
/// `pg_catalog` schema and functions, with tarn's relations and functions
/// ([`crate::pg_relations`], [`crate::pg_functions`]) for `governance`.
pub(crate) fn install(
    ctx: &SessionContext,
    catalog: &str,
    governance: Option<Arc<tarn_query::governance::Governance>>,
) -> Result<Arc<Relations>> {
    let catalog_provider = ctx
        .catalog(catalog)
        .ok_or_else(|| DataFusionError::Plan(format!("catalog {catalog} does not exist")))?;
    let emulated = catalog_provider
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan(format!("catalog {catalog} has no pg_catalog schema")))?;
    let relations = Arc::new(Relations::new(
        emulated.clone(),
        ctx.state().catalog_list().clone(),
        governance,
    ));
    catalog_provider.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            emulated,
            catalogs: ctx.state().catalog_list().clone(),
            relations: relations.clone(),
        }),
    )?;
    for lookup in Lookup::ALL {
        for granted in [false, true] {
            ctx.register_udf(ScalarUDF::new_from_impl(LookupFunction::new(
                lookup,
                granted,
                relations.clone(),
            )));
        }
    }
    crate::pg_functions::install(ctx);
    let format_type = ctx
        .udf("format_type")
        .map_err(|e| DataFusionError::Plan(format!("the emulated format_type is missing: {e}")))?;
    ctx.register_udf(ScalarUDF::new_from_impl(FormatType {
        emulated: format_type.as_ref().clone(),
    }));
    Ok(relations)
}

/// The emulated `pg_catalog` schema with tarn's `pg_attribute` and relations
/// ([`crate::pg_relations`]).
#[derive(Debug)]
struct PgCatalog {
    emulated: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    relations: Arc<Relations>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.emulated.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = if self.emulated.table_exist(name) {
            self.emulated.table(name).await?
        } else {
            None
        };
        if let Some(kind) = Kind::of(name) {
            return Ok(Some(Arc::new(DescribedTable::new(
                kind,
                table,
                self.relations.clone(),
            ))));
        }
        if !name.eq_ignore_ascii_case("pg_attribute") {
            return Ok(table);
        }
        Ok(table.map(|emulated| {
            Arc::new(PgAttribute {
                emulated,
                catalogs: self.catalogs.clone(),
                relations: self.relations.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.emulated.table_exist(name) || Kind::of(name).is_some()
    }
}

/// `pg_attribute` with type modifiers and `timestamptz`, and without the columns of tables the
/// principal may not see; see the module doc.
#[derive(Debug)]
struct PgAttribute {
    emulated: Arc<dyn TableProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    relations: Arc<Relations>,
}

#[async_trait]
impl TableProvider for PgAttribute {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.emulated.schema()
    }

    fn table_type(&self) -> TableType {
        self.emulated.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.emulated.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let types = column_types(self.catalogs.as_ref()).await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let batches = if rows == types.len() {
            let mut seen = 0;
            let mut corrected = Vec::with_capacity(batches.len());
            for batch in batches {
                let rows = batch.num_rows();
                corrected.push(correct(batch, &types[seen..seen + rows])?);
                seen += rows;
            }
            corrected
        } else {
            // The catalog changed between the two walks: the emulation's rows as they are.
            batches
        };
        let batches = self.visible_rows(batches)?;
        MemTable::try_new(self.schema(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

impl PgAttribute {
    /// `batches` without the rows of tables the current principal may not see.
    fn visible_rows(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let visible = self.relations.visibility()?;
        let hidden: std::collections::HashSet<i32> = self
            .relations
            .snapshot()
            .relations
            .iter()
            .filter(|r| !self.relations.shows(r, &visible))
            .map(|r| r.oid)
            .collect();
        if hidden.is_empty() {
            return Ok(batches);
        }
        batches
            .into_iter()
            .map(|batch| {
                let at = batch
                    .schema()
                    .index_of("attrelid")
                    .map_err(|e| DataFusionError::Plan(format!("the emulated pg_attribute changed: {e}")))?;
                let keep: BooleanArray = batch
                    .column(at)
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|oid| Some(!oid.is_some_and(|o| hidden.contains(&o))))
                    .collect();
                Ok(datafusion::arrow::compute::filter_record_batch(&batch, &keep)?)
            })
            .collect()
    }
}

/// A column's name, Arrow type, and whether it is a UUID (text marked in its field's metadata).
type ColumnType = (String, DataType, bool);

/// Every column of every table, in the order of the emulated `pg_attribute`.
async fn column_types(catalogs: &dyn CatalogProviderList) -> Result<Vec<ColumnType>> {
    let mut columns = Vec::new();
    for catalog_name in catalogs.catalog_names() {
        let Some(catalog) = catalogs.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for table_name in schema.table_names() {
                if let Some(table) = schema.table(&table_name).await? {
                    columns.extend(table.schema().fields().iter().map(|f| {
                        (
                            f.name().clone(),
                            f.data_type().clone(),
                            tarn_query::uuid_column::is_uuid_field(f),
                        )
                    }));
                }
            }
        }
    }
    Ok(columns)
}

/// `batch` (rows of the emulated `pg_attribute`) with PostgreSQL's type and modifier for the
/// columns of `types`, row by row; unchanged when a row's name differs from its column's.
fn correct(batch: RecordBatch, types: &[ColumnType]) -> Result<RecordBatch> {
    let column = |name: &str| {
        batch
            .schema()
            .index_of(name)
            .map_err(|e| DataFusionError::Plan(format!("the emulated pg_attribute changed: {e}")))
    };
    let (name_at, oid_at, len_at, typmod_at) = (
        column("attname")?,
        column("atttypid")?,
        column("attlen")?,
        column("atttypmod")?,
    );
    let (byval_at, align_at, storage_at) = (column("attbyval")?, column("attalign")?, column("attstorage")?);
    let names = batch.column(name_at).as_string::<i32>();
    if names
        .iter()
        .zip(types)
        .any(|(name, (column, _, _))| name != Some(column.as_str()))
    {
        return Ok(batch);
    }
    let mut oids: Vec<i32> = batch.column(oid_at).as_primitive::<Int32Type>().values().to_vec();
    let mut lens: Vec<i16> = batch
        .column(len_at)
        .as_primitive::<datafusion::arrow::datatypes::Int16Type>()
        .values()
        .to_vec();
    let mut typmods: Vec<i32> = batch
        .column(typmod_at)
        .as_primitive::<Int32Type>()
        .values()
        .to_vec();
    let mut byvals: Vec<bool> = batch
        .column(byval_at)
        .as_boolean()
        .iter()
        .map(|b| b.unwrap_or(false))
        .collect();
    let strings = |at: usize| -> Vec<String> {
        batch
            .column(at)
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect()
    };
    let (mut aligns, mut storages) = (strings(align_at), strings(storage_at));
    for (row, (_, data_type, uuid)) in types.iter().enumerate() {
        if *uuid {
            oids[row] = UUID;
            lens[row] = 16;
            byvals[row] = false;
            aligns[row] = "c".into();
            storages[row] = "p".into();
            continue;
        }
        match data_type {
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) => typmods[row] = numeric_typmod(*p, *s),
            DataType::Timestamp(_, Some(_)) => {
                oids[row] = TIMESTAMPTZ;
                lens[row] = 8;
                byvals[row] = true;
                aligns[row] = "d".into();
                storages[row] = "p".into();
            }
            _ => {}
        }
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[oid_at] = Arc::new(Int32Array::from(oids));
    columns[len_at] = Arc::new(Int16Array::from(lens));
    columns[typmod_at] = Arc::new(Int32Array::from(typmods));
    columns[byval_at] = Arc::new(BooleanArray::from(byvals));
    columns[align_at] = Arc::new(StringArray::from(aligns));
    columns[storage_at] = Arc::new(StringArray::from(storages));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// `format_type(oid, typmod)`: the emulation's, with `numeric(p,s)` always showing the scale.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatType {
    emulated: ScalarUDF,
}

impl ScalarUDFImpl for FormatType {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "format_type"
    }

    fn signature(&self) -> &Signature {
        self.emulated.signature()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let inputs = ColumnarValue::values_to_arrays(&args.args)?;
        let formatted = self.emulated.invoke_with_args(args)?.into_array(rows)?;
        let (oids, typmods) = (as_i64s(&inputs[0])?, as_i64s(&inputs[1])?);
        let formatted = formatted.as_string::<i32>();
        let out: StringArray = (0..formatted.len())
            .map(|i| match (oids[i], typmods[i]) {
                (Some(oid), Some(typmod)) if oid == i64::from(NUMERIC) && typmod >= 4 => {
                    let packed = typmod - 4;
                    Some(format!(
                        "numeric({},{})",
                        (packed >> 16) & 0xffff,
                        packed & 0xffff
                    ))
                }
                _ => formatted.is_valid(i).then(|| formatted.value(i).to_string()),
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// An integer argument (`Int32` or `Int64`, as the signature allows) as `i64`s.
fn as_i64s(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    match array.data_type() {
        DataType::Int32 => Ok(array
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect()),
        DataType::Int64 => Ok(array.as_primitive::<Int64Type>().iter().collect()),
        other => Err(DataFusionError::Plan(format!(
            "format_type takes integer arguments, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_pack_as_in_postgresql() {
        // `SELECT atttypmod FROM pg_attribute WHERE ...` for numeric(10,2), numeric(38,0), numeric(1,1).
        assert_eq!(numeric_typmod(10, 2), 655_366);
        assert_eq!(numeric_typmod(38, 0), 2_490_372);
        assert_eq!(numeric_typmod(1, 1), 65_541);
    }
}
