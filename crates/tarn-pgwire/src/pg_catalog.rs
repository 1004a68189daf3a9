//! tarn's corrections to the `pg_catalog` that `datafusion-pg-catalog` emulates, so psql's
//! `\d`, JDBC's `getColumns` and BI tools describe columns as PostgreSQL would:
//!
//! - `pg_attribute.atttypmod` carries a `DECIMAL(p,s)` column's precision and scale the way
//!   PostgreSQL packs them (`((p << 16) | s) + 4`; the emulation has `-1`, "no modifier", for
//!   every column), and a column with a time zone is `timestamptz` (1184; the emulation falls
//!   back to `text`).
//! - `tarn_stat_activity` (crate `tarn_query::workload`) is served here, so it resolves as
//!   `pg_catalog.tarn_stat_activity` and, unqualified, as the endpoint rewrites it.
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

/// PostgreSQL's type OID of `numeric`.
const NUMERIC: i32 = 1700;
/// PostgreSQL's type OID of `timestamptz`.
const TIMESTAMPTZ: i32 = 1184;

/// PostgreSQL's `atttypmod` of a `numeric(precision, scale)` column.
pub fn numeric_typmod(precision: u8, scale: i8) -> i32 {
    ((i32::from(precision) << 16) | (i32::from(scale) & 0xffff)) + 4
}

/// Installs the corrections on `ctx`, whose catalog `catalog` already has the emulated
/// `pg_catalog` schema and functions.
pub fn install(ctx: &SessionContext, catalog: &str, activity: Arc<dyn TableProvider>) -> Result<()> {
    let catalog_provider = ctx
        .catalog(catalog)
        .ok_or_else(|| DataFusionError::Plan(format!("catalog {catalog} does not exist")))?;
    let emulated = catalog_provider
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan(format!("catalog {catalog} has no pg_catalog schema")))?;
    catalog_provider.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            emulated,
            activity,
            catalogs: ctx.state().catalog_list().clone(),
        }),
    )?;
    let format_type = ctx
        .udf("format_type")
        .map_err(|e| DataFusionError::Plan(format!("the emulated format_type is missing: {e}")))?;
    ctx.register_udf(ScalarUDF::new_from_impl(FormatType {
        emulated: format_type.as_ref().clone(),
    }));
    Ok(())
}

/// The emulated `pg_catalog` schema with tarn's `pg_attribute`.
#[derive(Debug)]
struct PgCatalog {
    emulated: Arc<dyn SchemaProvider>,
    /// `tarn_stat_activity` (crate `tarn_query::workload`).
    activity: Arc<dyn TableProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names = self.emulated.table_names();
        names.push(tarn_query::workload::ACTIVITY_TABLE.to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case(tarn_query::workload::ACTIVITY_TABLE) {
            return Ok(Some(self.activity.clone()));
        }
        let table = self.emulated.table(name).await?;
        if !name.eq_ignore_ascii_case("pg_attribute") {
            return Ok(table);
        }
        Ok(table.map(|emulated| {
            Arc::new(PgAttribute {
                emulated,
                catalogs: self.catalogs.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(tarn_query::workload::ACTIVITY_TABLE) || self.emulated.table_exist(name)
    }
}

/// `pg_attribute` with type modifiers and `timestamptz`; see the module doc.
#[derive(Debug)]
struct PgAttribute {
    emulated: Arc<dyn TableProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
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
        MemTable::try_new(self.schema(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// Every column of every table as `(name, type)`, in the order of the emulated `pg_attribute`.
async fn column_types(catalogs: &dyn CatalogProviderList) -> Result<Vec<(String, DataType)>> {
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
                    columns.extend(
                        table
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| (f.name().clone(), f.data_type().clone())),
                    );
                }
            }
        }
    }
    Ok(columns)
}

/// `batch` (rows of the emulated `pg_attribute`) with PostgreSQL's type and modifier for the
/// columns of `types`, row by row; unchanged when a row's name differs from its column's.
fn correct(batch: RecordBatch, types: &[(String, DataType)]) -> Result<RecordBatch> {
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
        .any(|(name, (column, _))| name != Some(column.as_str()))
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
    for (row, (_, data_type)) in types.iter().enumerate() {
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
