//! Result columns of Arrow types `datafusion-postgres` (0.17) cannot encode, cast to one it
//! can before rows are sent: Iceberg `fixed(n)` columns (Arrow `FixedSizeBinary(n)`) as `bytea`
//! (Arrow `Binary`), which is how PostgreSQL clients receive fixed-length byte strings. UUID
//! columns (text marked in the field's metadata) are not touched; module `uuid_wire` handles
//! them.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, cast};

/// Whether a column of `data_type` needs casting before it goes on the wire, and to what.
fn wire_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::FixedSizeBinary(_) => Some(DataType::Binary),
        _ => None,
    }
}

/// The projection casting `schema`'s unencodable columns, keeping their names; `None` when
/// every column can be sent as it is.
fn cast_exprs(schema: &DFSchema) -> Option<Vec<Expr>> {
    let needed = schema
        .fields()
        .iter()
        .any(|f| wire_type(f.data_type()).is_some() && !tarn_query::uuid_column::is_uuid_field(f));
    if !needed {
        return None;
    }
    Some(
        schema
            .iter()
            .map(|(qualifier, field)| {
                let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
                match wire_type(field.data_type()) {
                    Some(to) if !tarn_query::uuid_column::is_uuid_field(field) => {
                        cast(column, to).alias_qualified(qualifier.cloned(), field.name())
                    }
                    _ => column,
                }
            })
            .collect(),
    )
}

/// `plan` with its unencodable result columns cast (module doc); `plan` itself when none are.
pub(crate) fn sendable_plan(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    if matches!(
        plan,
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)
    ) {
        return Ok(plan);
    }
    match cast_exprs(plan.schema()) {
        Some(exprs) => Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            Arc::new(plan),
        )?)),
        None => Ok(plan),
    }
}

/// `df` with its unencodable result columns cast (module doc).
pub(crate) fn sendable_frame(
    df: datafusion::dataframe::DataFrame,
) -> datafusion::error::Result<datafusion::dataframe::DataFrame> {
    match cast_exprs(df.schema()) {
        Some(exprs) => df.select(exprs),
        None => Ok(df),
    }
}
