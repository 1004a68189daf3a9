//! Text-format values as PostgreSQL writes them, for the types where `pgwire`'s text encoding
//! differs: floating point and fractional seconds.
//!
//! - `float4`/`float8`: PostgreSQL (12 and later, `extra_float_digits` ≥ 1, what psql, libpq,
//!   pgjdbc and psycopg all run with) writes the shortest digits that read back as the same
//!   value, in fixed notation when the decimal exponent is in [-4, 15) (float8) or [-4, 6)
//!   (float4) and as `1.2345678901234568e+17` / `1e-07` otherwise, with `Infinity`,
//!   `-Infinity`, `NaN`, `0` and `-0`. `pgwire` writes the same shortest digits in Rust's
//!   notation (`10000000000.0`, `1.2345678901234568e17`, `1e-7`, `inf`), which pgjdbc cannot
//!   parse back for infinities and which reads differently from every other PostgreSQL tool.
//! - `time`, `timestamp`, `timestamptz`: PostgreSQL writes as many fraction digits as the
//!   value has (`10:00:00`, `10:00:00.5`, `10:00:00.123456`); `pgwire` always writes six
//!   (`10:00:00.000000`).
//!
//! The rewrite is of the encoded rows, after `pgwire`'s encoder, for text-format columns of
//! those types only: binary results and every other type pass through untouched. The shortest
//! digits are the encoder's own (`ryu`); only their notation changes.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use datafusion_postgres::pgwire;
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, Response};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;

/// How one column's text values are rewritten.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rewrite {
    Float4,
    Float8,
    Seconds,
}

/// `response` with its text-format floating-point and time values written as PostgreSQL writes
/// them.
pub(crate) fn with_postgres_text(response: Response) -> Response {
    let Response::Query(mut query) = response else {
        return response;
    };
    let columns: Vec<Option<Rewrite>> = query
        .row_schema
        .iter()
        .map(|f| {
            if f.format() != FieldFormat::Text {
                return None;
            }
            match *f.datatype() {
                Type::FLOAT4 => Some(Rewrite::Float4),
                Type::FLOAT8 => Some(Rewrite::Float8),
                Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIMETZ => Some(Rewrite::Seconds),
                _ => None,
            }
        })
        .collect();
    if columns.iter().all(Option::is_none) {
        return Response::Query(query);
    }
    let columns = Arc::new(columns);
    let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
    query.data_rows = Box::pin(rows.map(move |row| row.and_then(|row| rewrite_row(row, &columns))));
    Response::Query(query)
}

fn rewrite_row(row: DataRow, columns: &[Option<Rewrite>]) -> PgWireResult<DataRow> {
    map_values(row, |i, value| {
        Ok(match columns.get(i).copied().flatten() {
            Some(rewrite) => std::str::from_utf8(value)
                .ok()
                .and_then(|text| rewrite_value(rewrite, text))
                .map(String::into_bytes),
            None => None,
        })
    })
}

/// `row` with each non-NULL value at index `i` replaced by what `f(i, value)` returns (kept
/// as it was for `None`): a walk over an encoded DataRow's length-prefixed values.
pub(crate) fn map_values(
    row: DataRow,
    mut f: impl FnMut(usize, &[u8]) -> PgWireResult<Option<Vec<u8>>>,
) -> PgWireResult<DataRow> {
    let mut data = row.data.freeze();
    let mut out = BytesMut::with_capacity(data.len());
    for i in 0..usize::try_from(row.field_count).unwrap_or(0) {
        let len = data.get_i32();
        if len < 0 {
            out.put_i32(len);
            continue;
        }
        let value = data.split_to(len as usize);
        let replaced = f(i, &value)?;
        let value = replaced.as_deref().unwrap_or(&value[..]);
        out.put_i32(value.len() as i32);
        out.put_slice(value);
    }
    Ok(DataRow::new(out, row.field_count))
}

/// The PostgreSQL spelling of `text`, or `None` when it is already that (or not understood:
/// then it passes as the encoder wrote it).
fn rewrite_value(rewrite: Rewrite, text: &str) -> Option<String> {
    match rewrite {
        Rewrite::Float4 => text
            .parse::<f32>()
            .ok()
            .map(|v| float_text(f64::from(v), format!("{v:e}"), 6)),
        Rewrite::Float8 => text
            .parse::<f64>()
            .ok()
            .map(|v| float_text(v, format!("{v:e}"), 15)),
        Rewrite::Seconds => trim_fraction(text),
    }
}

/// `value` in PostgreSQL's notation, from `scientific`, Rust's shortest round-trip digits of
/// the value in its own type (`1.25e3`); fixed notation for decimal exponents in
/// `[-4, fixed_below)`.
fn float_text(value: f64, scientific: String, fixed_below: i32) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..fixed_below).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let fixed = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}", "0".repeat(point as usize - digits.len()))
        } else {
            let (whole, fraction) = digits.split_at(point as usize);
            format!("{whole}.{fraction}")
        };
        format!("{sign}{fixed}")
    } else {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{point}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        )
    }
}

/// A `Float32`/`Float64` column as the text PostgreSQL writes for each value (`None` for any
/// other column), for encoders that take Arrow columns (COPY's text and CSV formats).
pub(crate) fn float_column_as_text(
    column: &datafusion::arrow::array::ArrayRef,
) -> Option<datafusion::arrow::array::ArrayRef> {
    use datafusion::arrow::array::{Array, AsArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
    let text: StringArray = match column.data_type() {
        DataType::Float64 => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map(|v| float_text(v, format!("{v:e}"), 15)))
            .collect(),
        DataType::Float32 => column
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(|v| float_text(f64::from(v), format!("{v:e}"), 6)))
            .collect(),
        _ => return None,
    };
    debug_assert_eq!(text.len(), column.len());
    Some(Arc::new(text))
}

/// `10:00:00.120000` → `10:00:00.12`, `10:00:00.000000+00` → `10:00:00+00`: the six fraction
/// digits after the first `HH:MM:SS`, trailing zeros dropped.
fn trim_fraction(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let is_time = |at: usize| {
        bytes.get(at..at + 8).is_some_and(|t| {
            t[2] == b':' && t[5] == b':' && [0, 1, 3, 4, 6, 7].iter().all(|&i| t[i].is_ascii_digit())
        })
    };
    let start = (0..bytes.len().saturating_sub(7)).find(|&i| is_time(i))?;
    let dot = start + 8;
    if bytes.get(dot) != Some(&b'.') {
        return None;
    }
    let digits = bytes[dot + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
    let end = dot + 1 + digits;
    let kept = text[dot + 1..end].trim_end_matches('0');
    let fraction = if kept.is_empty() {
        String::new()
    } else {
        format!(".{kept}")
    };
    Some(format!("{}{fraction}{}", &text[..dot], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float8(v: f64) -> String {
        rewrite_value(Rewrite::Float8, &v.to_string()).unwrap()
    }

    fn float4(v: f32) -> String {
        rewrite_value(Rewrite::Float4, &v.to_string()).unwrap()
    }

    /// Each pair is PostgreSQL 15's output for the value (`SELECT x::float8`).
    #[test]
    fn floats_read_as_postgresql_writes_them() {
        for (v, pg) in [
            (1e10, "10000000000"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (123_456_789_012_345_680.0, "1.2345678901234568e+17"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (0.1, "0.1"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (100.0, "100"),
            (123_456.7, "123456.7"),
            (0.000_123_4, "0.0001234"),
            (1e100, "1e+100"),
            (-1.5e-300, "-1.5e-300"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(float8(v), pg, "{v:?}");
        }
        assert_eq!(rewrite_value(Rewrite::Float8, "inf").unwrap(), "Infinity");
        assert_eq!(rewrite_value(Rewrite::Float8, "-inf").unwrap(), "-Infinity");
        for (v, pg) in [
            (1.5f32, "1.5"),
            (0.1, "0.1"),
            (123_456.7, "123456.7"),
            (1_000_000.0, "1e+06"),
            (1_234_567.0, "1.234567e+06"),
            (100_000.0, "100000"),
            (1e-5, "1e-05"),
        ] {
            assert_eq!(float4(v), pg, "{v:?}");
        }
    }

    #[test]
    fn fractions_of_seconds_lose_trailing_zeros() {
        for (encoded, pg) in [
            ("2024-01-01 10:00:00.120000", "2024-01-01 10:00:00.12"),
            ("2024-01-01 10:00:00.000000", "2024-01-01 10:00:00"),
            ("2024-01-01 10:00:00.500000+00", "2024-01-01 10:00:00.5+00"),
            (
                "2024-01-01 10:00:00.123456+05:30",
                "2024-01-01 10:00:00.123456+05:30",
            ),
            ("10:00:00.250000", "10:00:00.25"),
            ("06.12.2026 10:00:01.000000", "06.12.2026 10:00:01"),
            ("0044-03-15 12:00:00.000000 BC", "0044-03-15 12:00:00 BC"),
        ] {
            assert_eq!(rewrite_value(Rewrite::Seconds, encoded).unwrap(), pg, "{encoded}");
        }
        assert_eq!(rewrite_value(Rewrite::Seconds, "infinity"), None);
    }

    #[test]
    fn rows_are_rewritten_only_in_their_columns() {
        let mut data = BytesMut::new();
        for v in [
            Some(&b"1e10"[..]),
            None,
            Some(b"10000000000.0"),
            Some(b"12:00:00.000000"),
        ] {
            match v {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v);
                }
                None => data.put_i32(-1),
            }
        }
        let row = DataRow::new(data, 4);
        let columns = [
            None,
            Some(Rewrite::Float8),
            Some(Rewrite::Float8),
            Some(Rewrite::Seconds),
        ];
        let out = rewrite_row(row, &columns).unwrap();
        let mut expected = BytesMut::new();
        for v in [Some(&b"1e10"[..]), None, Some(b"10000000000"), Some(b"12:00:00")] {
            match v {
                Some(v) => {
                    expected.put_i32(v.len() as i32);
                    expected.put_slice(v);
                }
                None => expected.put_i32(-1),
            }
        }
        assert_eq!(out.data, expected);
    }
}
