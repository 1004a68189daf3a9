//! Result columns of Arrow types `datafusion-postgres` (0.17) cannot encode, or encodes as
//! something BI tools cannot read, converted before rows are sent:
//!
//! - Iceberg `fixed(n)` columns (Arrow `FixedSizeBinary(n)`) as `bytea` (Arrow `Binary`), which
//!   is how PostgreSQL clients receive fixed-length byte strings;
//! - structs, maps, and lists of anything but scalars as `json` (OID 114): their JSON text, an
//!   object per struct (`{"x":1,"y":"b"}`, nulls explicit) or map (`{"k1":1}`), arrays for
//!   lists. `datafusion-postgres` refuses maps and nested lists outright and sends structs as
//!   anonymous `record`s, which no BI driver maps to a column type; `pg_attribute` and
//!   `information_schema` describe these columns as `json` too ([`crate::pg_relations`]).
//!   Lists of scalars stay PostgreSQL arrays (`bigint[]`, OID 1016, ...).
//!
//! UUID columns (text marked in the field's metadata) are not touched; module `uuid_wire`
//! handles them, and the `json` columns' type (the same metadata key, value `json`).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, Projection, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility, cast,
};
use tarn_query::uuid_column::UUID_METADATA_KEY;

/// The value of [`UUID_METADATA_KEY`] marking a column of JSON text sent as `json`.
pub(crate) const JSON_METADATA_VALUE: &str = "json";

/// How a column goes on the wire when not as it is.
enum Wire {
    /// Cast to this type.
    Cast(DataType),
    /// Its values' JSON text, typed `json`.
    Json,
}

/// Whether a list of `element`s is sent as a PostgreSQL array (`datafusion-postgres` encodes
/// arrays of scalars only).
fn is_scalar(element: &DataType) -> bool {
    use DataType as T;
    matches!(
        element,
        T::Boolean
            | T::Int8
            | T::Int16
            | T::Int32
            | T::Int64
            | T::UInt8
            | T::UInt16
            | T::UInt32
            | T::UInt64
            | T::Float16
            | T::Float32
            | T::Float64
            | T::Decimal128(..)
            | T::Utf8
            | T::LargeUtf8
            | T::Utf8View
            | T::Date32
            | T::Date64
            | T::Time32(_)
            | T::Time64(_)
            | T::Timestamp(..)
            | T::Interval(_)
            | T::Duration(_)
            | T::Binary
            | T::LargeBinary
            | T::BinaryView
            | T::FixedSizeBinary(_)
    )
}

/// Whether a column of `data_type` is sent as `json` (module doc).
pub(crate) fn is_json_on_the_wire(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(_) | DataType::Map(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => !is_scalar(f.data_type()),
        _ => false,
    }
}

/// Whether a column of `data_type` needs converting before it goes on the wire, and how.
fn wire_type(data_type: &DataType) -> Option<Wire> {
    match data_type {
        DataType::FixedSizeBinary(_) => Some(Wire::Cast(DataType::Binary)),
        t if is_json_on_the_wire(t) => Some(Wire::Json),
        _ => None,
    }
}

/// `tarn_to_json(value)`: the JSON text of any value (module doc), marked as `json`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    signature: Signature,
}

static TO_JSON: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(ToJson {
        signature: Signature::any(1, Volatility::Immutable),
    }))
});

fn json_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
        UUID_METADATA_KEY.to_string(),
        JSON_METADATA_VALUE.to_string(),
    )]))
}

impl ScalarUDFImpl for ToJson {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "tarn_to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _: ReturnFieldArgs) -> datafusion::error::Result<FieldRef> {
        Ok(Arc::new(json_field(self.name())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
        let array = args.args[0].to_array(args.number_rows)?;
        let field: FieldRef = Arc::new(Field::new("value", array.data_type().clone(), true));
        let options = EncoderOptions::default().with_explicit_nulls(true);
        let mut encoder = make_encoder(&field, array.as_ref(), &options)?;
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 16);
        let mut buffer = Vec::new();
        for i in 0..array.len() {
            if array.is_null(i) {
                out.append_null();
                continue;
            }
            buffer.clear();
            encoder.encode(i, &mut buffer);
            out.append_value(String::from_utf8_lossy(&buffer));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
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
                if tarn_query::uuid_column::is_uuid_field(field) {
                    return column;
                }
                match wire_type(field.data_type()) {
                    Some(Wire::Cast(to)) => {
                        cast(column, to).alias_qualified(qualifier.cloned(), field.name())
                    }
                    Some(Wire::Json) => TO_JSON
                        .call(vec![column])
                        .alias_qualified(qualifier.cloned(), field.name()),
                    None => column,
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
