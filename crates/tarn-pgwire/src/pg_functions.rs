//! PostgreSQL functions BI tools call while they connect and read the catalog, which neither
//! DataFusion nor the emulated `pg_catalog` has (or has in a form clients cannot read):
//!
//! - `version()`: `PostgreSQL 15.0 (tarn <version>) on <arch>-linux, ...`, as servers that speak
//!   PostgreSQL's protocol name themselves, so SQLAlchemy's and other dialects read a server
//!   version (DataFusion's own answer names no PostgreSQL version, and they refuse it);
//! - `pg_type_is_visible(oid)`, `pg_function_is_visible(oid)`: true (one search path);
//! - `pg_get_serial_sequence(table, column)`: NULL (no sequences);
//! - `json_build_object(k, v, ...)`: a JSON object as text;
//! - `format(fmt, args...)` with `%s`, `%I` (identifier), `%L` (literal) and `%%`;
//! - `pg_get_expr(expr, relation)`: the expression's text, NULL for NULL (the emulation answers
//!   `''`, so `pg_get_expr(indpred, indrelid) IS NULL`, "no partial index", never held);
//! - `pg_size_pretty(bytes)` as PostgreSQL rounds (`8192 bytes`, `16 kB`, `10 MB`);
//! - `pg_get_function_result(oid)`, `pg_get_function_arguments(oid)`: NULL (psql's `\df` lists
//!   functions outside `pg_catalog`, and tarn has no user-defined functions).

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::pg_relations::quote_ident;

/// The PostgreSQL major version tarn answers as: what its catalog emulates.
pub const POSTGRES_VERSION: &str = "15.0";

/// `version()`'s text.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {POSTGRES_VERSION} (tarn {}) on {}-unknown-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Registers the functions on `ctx` (over DataFusion's own `version`).
pub fn install(ctx: &SessionContext) {
    for f in [
        PgName::Version,
        PgName::TypeIsVisible,
        PgName::ProcIsVisible,
        PgName::SerialSequence,
        PgName::JsonBuildObject,
        PgName::Format,
        PgName::GetExpr,
        PgName::SizePretty,
        PgName::ProcResult,
        PgName::ProcArguments,
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(PgFunction::new(f)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PgName {
    Version,
    TypeIsVisible,
    ProcIsVisible,
    SerialSequence,
    JsonBuildObject,
    Format,
    GetExpr,
    SizePretty,
    ProcResult,
    ProcArguments,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgFunction {
    function: PgName,
    signature: Signature,
}

impl PgFunction {
    fn new(function: PgName) -> Self {
        let signature = match function {
            PgName::Version => Signature::exact(vec![], Volatility::Stable),
            PgName::TypeIsVisible
            | PgName::ProcIsVisible
            | PgName::SizePretty
            | PgName::ProcResult
            | PgName::ProcArguments => Signature::any(1, Volatility::Stable),
            PgName::SerialSequence => Signature::any(2, Volatility::Stable),
            PgName::JsonBuildObject => Signature::one_of(
                vec![TypeSignature::VariadicAny, TypeSignature::Nullary],
                Volatility::Stable,
            ),
            PgName::Format | PgName::GetExpr => Signature::variadic_any(Volatility::Stable),
        };
        Self { function, signature }
    }
}

impl ScalarUDFImpl for PgFunction {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        match self.function {
            PgName::Version => "version",
            PgName::TypeIsVisible => "pg_type_is_visible",
            PgName::ProcIsVisible => "pg_function_is_visible",
            PgName::SerialSequence => "pg_get_serial_sequence",
            PgName::JsonBuildObject => "json_build_object",
            PgName::Format => "format",
            PgName::GetExpr => "pg_get_expr",
            PgName::SizePretty => "pg_size_pretty",
            PgName::ProcResult => "pg_get_function_result",
            PgName::ProcArguments => "pg_get_function_arguments",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.function {
            PgName::TypeIsVisible | PgName::ProcIsVisible => DataType::Boolean,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays
            .iter()
            .map(|a| {
                let t = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                Ok(t.as_string::<i32>().clone())
            })
            .collect::<Result<Vec<StringArray>>>()?;
        let out: ArrayRef = match self.function {
            PgName::Version => Arc::new(StringArray::from(vec![version_text(); rows.max(1)])),
            PgName::TypeIsVisible | PgName::ProcIsVisible => Arc::new(BooleanArray::from(vec![true; rows])),
            PgName::SerialSequence | PgName::ProcResult | PgName::ProcArguments => {
                Arc::new(StringArray::new_null(rows))
            }
            PgName::SizePretty => {
                let bytes = datafusion::arrow::compute::cast(&arrays[0], &DataType::Int64)?;
                Arc::new(
                    bytes
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .iter()
                        .map(|b| b.map(size_pretty))
                        .collect::<StringArray>(),
                )
            }
            PgName::GetExpr => match texts.first() {
                Some(expr) => Arc::new(expr.clone()),
                None => return Err(DataFusionError::Plan("pg_get_expr takes an expression".into())),
            },
            PgName::JsonBuildObject => {
                if arrays.len() % 2 != 0 {
                    return Err(DataFusionError::Plan(
                        "json_build_object takes an even number of arguments (key, value, ...)".into(),
                    ));
                }
                let json: StringArray = (0..rows)
                    .map(|row| {
                        let mut object = serde_json::Map::new();
                        for pair in arrays.chunks(2).zip(texts.chunks(2)) {
                            let ((_, values), (keys, texts)) =
                                ((&pair.0[0], &pair.0[1]), (&pair.1[0], &pair.1[1]));
                            let key = if keys.is_valid(row) {
                                keys.value(row).to_string()
                            } else {
                                String::new()
                            };
                            object.insert(key, json_value(values, texts, row));
                        }
                        Some(serde_json::Value::Object(object).to_string())
                    })
                    .collect();
                Arc::new(json)
            }
            PgName::Format => {
                let Some((template, values)) = texts.split_first() else {
                    return Err(DataFusionError::Plan("format takes a format string".into()));
                };
                let out: StringArray = (0..rows)
                    .map(|row| {
                        if !template.is_valid(row) {
                            return Ok(None);
                        }
                        let args: Vec<Option<&str>> = values
                            .iter()
                            .map(|v| v.is_valid(row).then(|| v.value(row)))
                            .collect();
                        format_text(template.value(row), &args).map(Some)
                    })
                    .collect::<Result<StringArray>>()?;
                Arc::new(out)
            }
        };
        if self.function == PgName::Version && rows == 0 {
            return Ok(ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Utf8(
                Some(version_text()),
            )));
        }
        Ok(ColumnarValue::Array(out))
    }
}

/// `bytes` as `pg_size_pretty` shows it: bytes below 10 kB, then the largest unit (kB, MB, GB,
/// TB, PB) that keeps the number under 10240, rounded half away from zero.
fn size_pretty(bytes: i64) -> String {
    if bytes.abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes;
    for unit in ["kB", "MB", "GB", "TB"] {
        // Halve once more than the unit needs, then round: PostgreSQL's rounding.
        let half = value / 512;
        let rounded = (half + half.signum()) / 2;
        if rounded.abs() < 10 * 1024 {
            return format!("{rounded} {unit}");
        }
        value /= 1024;
    }
    let half = value / 512;
    format!("{} PB", (half + half.signum()) / 2)
}

/// The JSON value of row `row` of `values` (its text form in `texts`).
fn json_value(values: &ArrayRef, texts: &StringArray, row: usize) -> serde_json::Value {
    if !values.is_valid(row) {
        return serde_json::Value::Null;
    }
    match values.data_type() {
        DataType::Boolean => serde_json::Value::Bool(values.as_boolean().value(row)),
        t if t.is_numeric() => serde_json::from_str(texts.value(row))
            .unwrap_or_else(|_| serde_json::Value::String(texts.value(row).to_string())),
        _ => serde_json::Value::String(texts.value(row).to_string()),
    }
}

/// PostgreSQL's `format()` for `%s`, `%I`, `%L` and `%%`; a NULL argument is empty for `%s`,
/// `NULL` for `%L`, and an error for `%I`, as in PostgreSQL.
fn format_text(template: &str, args: &[Option<&str>]) -> Result<String> {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars
            .next()
            .ok_or_else(|| DataFusionError::Plan("format: unterminated format specifier".into()))?;
        if spec == '%' {
            out.push('%');
            continue;
        }
        let arg = args
            .get(next)
            .ok_or_else(|| DataFusionError::Plan("format: too few arguments".into()))?;
        next += 1;
        match spec {
            's' => out.push_str(arg.unwrap_or_default()),
            'I' => match arg {
                Some(a) => out.push_str(&quote_ident(a)),
                None => {
                    return Err(DataFusionError::Plan(
                        "format: a NULL cannot be an identifier (%I)".into(),
                    ));
                }
            },
            'L' => match arg {
                Some(a) => out.push_str(&format!("'{}'", a.replace('\'', "''"))),
                None => out.push_str("NULL"),
            },
            other => {
                return Err(DataFusionError::Plan(format!(
                    "format: unrecognized format specifier \"{other}\""
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_quotes_identifiers_and_literals_as_postgresql() {
        assert_eq!(
            format_text("%I.%I", &[Some("shop"), Some("Orders")]).unwrap(),
            "shop.\"Orders\""
        );
        assert_eq!(
            format_text("%s=%L %%", &[Some("a"), Some("it's")]).unwrap(),
            "a='it''s' %"
        );
        assert!(format_text("%I", &[None]).is_err());
    }

    #[test]
    fn sizes_print_as_pg_size_pretty() {
        assert_eq!(size_pretty(8192), "8192 bytes");
        assert_eq!(size_pretty(16 * 1024), "16 kB");
        assert_eq!(size_pretty(10 * 1024 * 1024 + 600 * 1024), "11 MB");
    }

    #[test]
    fn version_names_a_postgresql_version_first() {
        assert!(version_text().starts_with("PostgreSQL 15.0 (tarn "));
    }
}
