//! Iceberg `uuid` columns as UUIDs in SQL: their text form (`f81d4fae-7dec-11d0-a765-00a0c91e6bf6`).
//!
//! Iceberg stores a `uuid` as 16 bytes and the `iceberg` crate reads it as Arrow
//! `FixedSizeBinary(16)`, which SQL output would show as hex bytes and compare with nothing a
//! user writes. DataFusion (53) has no UUID type, so a table's top-level `uuid` columns appear
//! as `Utf8View` in the lowercase hyphenated text form, and their Arrow field carries
//! [`UUID_METADATA_KEY`] = [`UUID_METADATA_VALUE`], which survives projections, filters, sorts
//! and joins, so the Postgres wire endpoint describes them as PostgreSQL's `uuid` (OID 2950).
//! Comparisons with UUID literals in the same form work as text comparisons. Writing into such a
//! column takes any text form `uuid` parses (tarn-lake's writer converts it back to 16 bytes).
//!
//! `uuid` values inside structs, lists and maps stay 16-byte binary.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, FixedSizeBinaryArray, StringViewBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

/// The Arrow field metadata key that marks a column holding UUIDs as text.
pub const UUID_METADATA_KEY: &str = "tarn.logical_type";
/// The value of [`UUID_METADATA_KEY`] for UUID columns.
pub const UUID_METADATA_VALUE: &str = "uuid";

/// Whether `field` holds UUIDs as text (see the module doc).
pub fn is_uuid_field(field: &Field) -> bool {
    field.metadata().get(UUID_METADATA_KEY).map(String::as_str) == Some(UUID_METADATA_VALUE)
}

/// `field` as the text column that shows its UUIDs.
pub(crate) fn uuid_text_field(field: &Field) -> Field {
    let mut metadata: HashMap<String, String> = field.metadata().clone();
    metadata.insert(UUID_METADATA_KEY.into(), UUID_METADATA_VALUE.into());
    field
        .clone()
        .with_data_type(DataType::Utf8View)
        .with_metadata(metadata)
}

/// The scalar function that turns 16-byte UUIDs into their text form, for scans.
pub(crate) fn uuid_text_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(UuidText::new())));
    UDF.clone()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UuidText {
    signature: Signature,
}

impl UuidText {
    fn new() -> Self {
        Self {
            signature: Signature::new(
                TypeSignature::Exact(vec![DataType::FixedSizeBinary(16)]),
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for UuidText {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "tarn_uuid_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8View)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let [arg] = <[ColumnarValue; 1]>::try_from(args.args).map_err(|a| {
            DataFusionError::Internal(format!("tarn_uuid_text takes one argument, got {}", a.len()))
        })?;
        let rows = args.number_rows;
        let array = arg.into_array(rows)?;
        Ok(ColumnarValue::Array(uuid_text(&array)?))
    }
}

/// 16-byte UUIDs as text, NULL for NULL.
pub(crate) fn uuid_text(array: &ArrayRef) -> DFResult<ArrayRef> {
    let bytes = array
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .filter(|a| a.value_length() == 16)
        .ok_or_else(|| {
            DataFusionError::Internal(format!("expected 16-byte UUIDs, got {}", array.data_type()))
        })?;
    let mut out = StringViewBuilder::with_capacity(bytes.len());
    let mut buffer = uuid::Uuid::encode_buffer();
    for i in 0..bytes.len() {
        if bytes.is_null(i) {
            out.append_null();
        } else {
            let value = uuid::Uuid::from_slice(bytes.value(i)).expect("16 bytes");
            out.append_value(value.hyphenated().encode_lower(&mut buffer));
        }
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bytes_become_the_hyphenated_text_form() {
        let id = uuid::Uuid::parse_str("F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6").unwrap();
        let array: ArrayRef = Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                vec![Some(id.as_bytes().to_vec()), None].into_iter(),
                16,
            )
            .unwrap(),
        );
        let text = uuid_text(&array).unwrap();
        let text = text
            .as_any()
            .downcast_ref::<arrow::array::StringViewArray>()
            .unwrap();
        assert_eq!(text.value(0), "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
        assert!(text.is_null(1));
    }

    #[test]
    fn marked_fields_are_recognised() {
        let plain = Field::new("u", DataType::FixedSizeBinary(16), true);
        assert!(!is_uuid_field(&plain));
        let marked = uuid_text_field(&plain);
        assert!(is_uuid_field(&marked));
        assert_eq!(marked.data_type(), &DataType::Utf8View);
    }
}
