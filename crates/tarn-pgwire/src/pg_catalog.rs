//! tarn's `pg_catalog`: the one `datafusion-pg-catalog` emulates, with tarn's relations and
//! functions over it ([`crate::pg_relations`], [`crate::pg_functions`]), so psql's `\d`, JDBC's
//! `getColumns` and BI tools describe tables as PostgreSQL would:
//!
//! - `pg_attribute` is tarn's (`pg_relations`): `atttypmod` carries a `DECIMAL(p,s)` column's
//!   precision and scale the way PostgreSQL packs them (`((p << 16) | s) + 4`), a column with a
//!   time zone is `timestamptz` (1184), a UUID column `uuid` (2950);
//! - `tarn_stat_activity` (crate `tarn_query::workload`) is served here, so it resolves as
//!   `pg_catalog.tarn_stat_activity` and, unqualified, as the endpoint rewrites it.
//! - `format_type(oid, typmod)` renders `numeric(p,s)` with the scale also when it is 0
//!   (`numeric(10,0)`, as PostgreSQL does); every other type is rendered by the emulation.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature};
use datafusion::prelude::SessionContext;

use crate::pg_relations::{DescribedTable, Kind, Lookup, LookupFunction, Relations};

/// PostgreSQL's type OID of `numeric`.
const NUMERIC: i32 = 1700;

/// PostgreSQL's `atttypmod` of a `numeric(precision, scale)` column.
pub fn numeric_typmod(precision: u8, scale: i8) -> i32 {
    ((i32::from(precision) << 16) | (i32::from(scale) & 0xffff)) + 4
}

/// Installs the corrections on `ctx`, whose catalog `catalog` already has the emulated
/// `pg_catalog` schema and functions, with tarn's relations and functions
/// ([`crate::pg_relations`], [`crate::pg_functions`]) for `governance`, and
/// `tarn_stat_activity` (`activity`).
pub(crate) fn install(
    ctx: &SessionContext,
    catalog: &str,
    governance: Option<Arc<tarn_query::governance::Governance>>,
    activity: Arc<dyn TableProvider>,
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
        catalog,
        governance,
    ));
    catalog_provider.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            emulated,
            relations: relations.clone(),
            activity,
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

/// The emulated `pg_catalog` schema with tarn's relations ([`crate::pg_relations`]).
#[derive(Debug)]
struct PgCatalog {
    emulated: Arc<dyn SchemaProvider>,
    relations: Arc<Relations>,
    /// `tarn_stat_activity` (crate `tarn_query::workload`).
    activity: Arc<dyn TableProvider>,
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
        Ok(table)
    }

    fn table_exist(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(tarn_query::workload::ACTIVITY_TABLE)
            || self.emulated.table_exist(name)
            || Kind::of(name).is_some()
    }
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
