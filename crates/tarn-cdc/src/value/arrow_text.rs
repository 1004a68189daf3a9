//! Arrow arrays back into PostgreSQL text values: the inverse of [`super::builder`], for the
//! rows of a table copy that the Kafka publisher encodes as change events (which read each
//! cell's PostgreSQL text, as they do for streamed changes).
//!
//! The text is PostgreSQL's output format for the column's type: `t`/`f`, decimals with their
//! scale's digits, `NaN`/`Infinity` for floats, `\x`-hex for `bytea`, ISO dates and times
//! (`BC` years), `+00` on `timestamptz`, and array literals `{a,"b c",NULL}`.

use std::fmt::Write as _;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int32Array, Int64Array, ListArray, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tarn_core::{Error, ErrorKind, Result};

use super::{ColumnType, Value};
use crate::debezium::values::{date_text, time_of_day_text, timestamp_text};
use crate::source::{Row, TableSpec};

/// Row `row` of `batch` (a batch of `spec`'s schema) as text values, one per column.
pub fn row_values(batch: &RecordBatch, row: usize, spec: &TableSpec) -> Result<Row> {
    spec.columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cell(batch.column(i), row, &column.column_type).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("column {} of {}: {e}", column.name, spec.qualified()),
                )
            })
        })
        .collect()
}

/// One cell of `array` as a text value.
pub fn cell(array: &ArrayRef, row: usize, t: &ColumnType) -> std::result::Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let mut out = String::new();
    write_cell(&mut out, array, row, t)?;
    Ok(Value::Text(Bytes::from(out)))
}

fn downcast<'a, T: 'static>(array: &'a ArrayRef, t: &ColumnType) -> std::result::Result<&'a T, String> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("a {} array is not of type {t}", array.data_type()))
}

fn write_cell(
    out: &mut String,
    array: &ArrayRef,
    row: usize,
    t: &ColumnType,
) -> std::result::Result<(), String> {
    match t {
        ColumnType::Bool => out.push(if downcast::<BooleanArray>(array, t)?.value(row) {
            't'
        } else {
            'f'
        }),
        ColumnType::Int16 | ColumnType::Int32 => {
            let _ = write!(out, "{}", downcast::<Int32Array>(array, t)?.value(row));
        }
        ColumnType::Int64 => {
            let _ = write!(out, "{}", downcast::<Int64Array>(array, t)?.value(row));
        }
        ColumnType::Float32 => float_text(out, f64::from(downcast::<Float32Array>(array, t)?.value(row))),
        ColumnType::Float64 => float_text(out, downcast::<Float64Array>(array, t)?.value(row)),
        ColumnType::Decimal { scale, .. } => {
            decimal_text(out, downcast::<Decimal128Array>(array, t)?.value(row), *scale);
        }
        ColumnType::Text => out.push_str(downcast::<StringArray>(array, t)?.value(row)),
        ColumnType::Bytea => {
            out.push_str("\\x");
            for b in downcast::<BinaryArray>(array, t)?.value(row) {
                let _ = write!(out, "{b:02x}");
            }
        }
        ColumnType::Date => {
            out.push_str(&date_text(i64::from(
                downcast::<Date32Array>(array, t)?.value(row),
            )));
        }
        ColumnType::Time => {
            let micros = downcast::<Time64MicrosecondArray>(array, t)?.value(row);
            out.push_str(&time_of_day_text(micros, 1_000_000, "").map_err(|e| e.to_string())?);
        }
        ColumnType::Timestamp | ColumnType::TimestampTz => {
            let micros = downcast::<TimestampMicrosecondArray>(array, t)?.value(row);
            let text = timestamp_text(micros, 1_000_000, "").map_err(|e| e.to_string())?;
            if *t == ColumnType::TimestampTz {
                match text.strip_suffix(" BC") {
                    Some(ad) => {
                        out.push_str(ad);
                        out.push_str("+00 BC");
                    }
                    None => {
                        out.push_str(&text);
                        out.push_str("+00");
                    }
                }
            } else {
                out.push_str(&text);
            }
        }
        ColumnType::List(element) => {
            let list = downcast::<ListArray>(array, t)?;
            let values = list.value(row);
            out.push('{');
            for i in 0..values.len() {
                if i > 0 {
                    out.push(',');
                }
                if values.is_null(i) {
                    out.push_str("NULL");
                    continue;
                }
                let mut element_text = String::new();
                write_cell(&mut element_text, &values, i, element)?;
                array_element(out, &element_text);
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A float as PostgreSQL prints it: shortest round-trip digits, `NaN`, `Infinity`.
fn float_text(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let _ = write!(out, "{f}");
    }
}

/// An unscaled decimal with `scale` digits after the point.
fn decimal_text(out: &mut String, unscaled: i128, scale: i8) {
    if scale <= 0 {
        let _ = write!(out, "{}", unscaled * 10i128.pow(u32::from(scale.unsigned_abs())));
        return;
    }
    let scale = scale as u32;
    let divisor = 10i128.pow(scale);
    if unscaled < 0 {
        out.push('-');
    }
    let magnitude = unscaled.unsigned_abs();
    let divisor = divisor as u128;
    let _ = write!(
        out,
        "{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor,
        width = scale as usize
    );
}

/// An array element, quoted when PostgreSQL's array output would quote it.
fn array_element(out: &mut String, text: &str) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text
            .bytes()
            .any(|c| matches!(c, b'{' | b'}' | b',' | b'"' | b'\\') || super::text::is_array_space(c));
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ColumnSpec, KeyKind, TableSpec};
    use crate::value::builder::BatchBuilder;

    /// Text → Arrow (the copy's builder) → text gives PostgreSQL's text back.
    #[test]
    fn cells_round_trip_through_arrow() {
        let columns = vec![
            ColumnSpec::new("b", ColumnType::Bool, false, 1),
            ColumnSpec::new("i", ColumnType::Int32, true, 2),
            ColumnSpec::new("l", ColumnType::Int64, false, 3),
            ColumnSpec::new("f", ColumnType::Float64, false, 4),
            ColumnSpec::new(
                "d",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                false,
                5,
            ),
            ColumnSpec::new("t", ColumnType::Text, false, 6),
            ColumnSpec::new("by", ColumnType::Bytea, false, 7),
            ColumnSpec::new("da", ColumnType::Date, false, 8),
            ColumnSpec::new("ti", ColumnType::Time, false, 9),
            ColumnSpec::new("ts", ColumnType::Timestamp, false, 10),
            ColumnSpec::new("tz", ColumnType::TimestampTz, false, 11),
            ColumnSpec::new("a", ColumnType::List(Box::new(ColumnType::Text)), false, 12),
        ];
        let spec = TableSpec {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            key_kind: KeyKind::of(&columns),
            columns,
        };
        let rows: [[Option<&str>; 12]; 2] = [
            [
                Some("t"),
                Some("1"),
                Some("-9000000000"),
                Some("1.5"),
                Some("-12.30"),
                Some("héllo, world"),
                Some("\\xdeadbeef"),
                Some("2024-02-29"),
                Some("13:14:15.5"),
                Some("2024-02-29 13:14:15.000001"),
                Some("2024-02-29 13:14:15+00"),
                Some("{a,\"b c\",NULL,\"x\\\"y\"}"),
            ],
            [
                Some("f"),
                Some("2"),
                None,
                Some("NaN"),
                Some("0.05"),
                Some(""),
                Some("\\x"),
                Some("0044-03-15 BC"),
                Some("00:00:00"),
                Some("0001-01-01 00:00:00"),
                Some("1999-12-31 23:59:59.999999+00"),
                Some("{}"),
            ],
        ];
        let mut builder = BatchBuilder::new(&spec, 2);
        for row in &rows {
            let cells: Vec<Option<&[u8]>> = row.iter().map(|c| c.map(str::as_bytes)).collect();
            builder.append(&cells).unwrap();
        }
        let batch = builder.finish().unwrap();
        for (r, row) in rows.iter().enumerate() {
            let values = row_values(&batch, r, &spec).unwrap();
            for ((value, expected), column) in values.iter().zip(row).zip(&spec.columns) {
                let got = value.as_text().map(|b| String::from_utf8(b.to_vec()).unwrap());
                assert_eq!(got.as_deref(), *expected, "row {r} column {}", column.name);
            }
        }
    }
}
