//! Changefeed JSON values → the text form tarn's column builders read.
//!
//! CockroachDB's JSON encoding: integers, floats and decimals as JSON numbers (decimals
//! with every digit; `NaN` and infinities as strings), booleans as JSON booleans, `BYTES` as
//! base64 strings, `TIMESTAMP`/`TIMESTAMPTZ` as ISO 8601 strings (`2026-11-27T10:00:00.123456`,
//! `...Z`), `DATE`, `TIME`, `INTERVAL`, `UUID`, enums and strings as strings, `JSONB` as the
//! JSON itself, arrays as JSON arrays. Each value is turned into the PostgreSQL text form of
//! the column's type, so one set of builders (and one type mapping, `docs/cdc-types.md`)
//! serves both sources.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::postgres::types::ColumnType;
use crate::source::Value;

/// Converts the raw JSON `raw` of a column of type `t`; the error says what was expected.
pub fn cell(raw: &RawValue, t: &ColumnType) -> Result<Value, String> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(Value::Null);
    }
    Ok(Value::Text(Bytes::from(scalar_text(text, t)?)))
}

fn string(text: &str) -> Result<Option<String>, String> {
    if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map(Some)
            .map_err(|e| format!("bad JSON string ({e})"))
    } else {
        Ok(None)
    }
}

fn scalar_text(text: &str, t: &ColumnType) -> Result<String, String> {
    let s = string(text)?;
    let expected = |what: &str| format!("expected {what}, got {}", clip(text));
    match t {
        ColumnType::Bool => match text {
            "true" => Ok("t".into()),
            "false" => Ok("f".into()),
            _ => Err(expected("true or false")),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => match s {
            None if is_number(text) => Ok(text.to_string()),
            Some(s) if is_number(&s) => Ok(s),
            _ => Err(expected("an integer")),
        },
        ColumnType::Float32 | ColumnType::Float64 => match s {
            None if is_number(text) => Ok(text.to_string()),
            Some(s)
                if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity" | "+Inf" | "-Inf")
                    || is_number(&s) =>
            {
                Ok(match s.as_str() {
                    "+Inf" => "Infinity".into(),
                    "-Inf" => "-Infinity".into(),
                    _ => s,
                })
            }
            _ => Err(expected("a number")),
        },
        ColumnType::Decimal { .. } => match s {
            None if is_number(text) => plain_decimal(text).ok_or_else(|| expected("a decimal")),
            Some(s) if s == "NaN" || s.ends_with("Infinity") => Ok(s),
            Some(s) if is_number(&s) => plain_decimal(&s).ok_or_else(|| expected("a decimal")),
            _ => Err(expected("a decimal")),
        },
        ColumnType::Text => Ok(match s {
            Some(s) => s,
            // JSONB objects, arrays, numbers and booleans keep their JSON text.
            None => text.to_string(),
        }),
        ColumnType::Bytea => match s {
            Some(s) if s.starts_with("\\x") => Ok(s),
            Some(s) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| format!("expected base64 bytes ({e})"))?;
                let mut out = String::with_capacity(2 + bytes.len() * 2);
                out.push_str("\\x");
                for b in bytes {
                    out.push_str(&format!("{b:02x}"));
                }
                Ok(out)
            }
            None => Err(expected("a base64 string")),
        },
        ColumnType::Date | ColumnType::Time => s.ok_or_else(|| expected("a string")),
        ColumnType::Timestamp | ColumnType::TimestampTz => {
            let mut s = s.ok_or_else(|| expected("an ISO 8601 timestamp string"))?;
            if s.len() > 10 && s.as_bytes()[10] == b'T' {
                s.replace_range(10..11, " ");
            }
            if let Some(stripped) = s.strip_suffix('Z') {
                s = if matches!(t, ColumnType::TimestampTz) {
                    format!("{stripped}+00")
                } else {
                    stripped.to_string()
                };
            }
            Ok(s)
        }
        ColumnType::List(element) => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| expected("a JSON array"))?;
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let item = item.get().trim();
                if item == "null" {
                    out.push_str("NULL");
                    continue;
                }
                if matches!(**element, ColumnType::List(_)) || item.starts_with('[') {
                    return Err("nested arrays are not supported; tarn maps one-dimensional arrays".into());
                }
                let v = scalar_text(item, element)?;
                out.push('"');
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            out.push('}');
            Ok(out)
        }
    }
}

fn is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty()
        && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

/// A decimal's digits without an exponent (`1.5E+3` → `1500`), as PostgreSQL prints them.
fn plain_decimal(s: &str) -> Option<String> {
    let Some(e) = s.find(['e', 'E']) else {
        return Some(s.to_string());
    };
    let (mantissa, exp) = (&s[..e], s[e + 1..].parse::<i32>().ok()?);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    // The decimal point sits after `point` digits.
    let point = int.len() as i32 + exp;
    if exp.abs() > 400 {
        return None;
    }
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    Some(if neg { format!("-{body}") } else { body })
}

fn clip(s: &str) -> String {
    if s.len() <= 60 {
        s.to_string()
    } else {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str, t: &ColumnType) -> String {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        match cell(&raw, t).unwrap() {
            Value::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Value::Null => "NULL".into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_become_postgres_text() {
        let dec = ColumnType::Decimal {
            precision: 38,
            scale: 9,
        };
        assert_eq!(text("12345678901234567.891", &dec), "12345678901234567.891");
        assert_eq!(text("1.5E+3", &dec), "1500");
        assert_eq!(text("-2.5e-3", &dec), "-0.0025");
        assert_eq!(text("\"NaN\"", &ColumnType::Float64), "NaN");
        assert_eq!(text("-1e308", &ColumnType::Float64), "-1e308");
        assert_eq!(text("true", &ColumnType::Bool), "t");
        assert_eq!(text("null", &ColumnType::Int64), "NULL");
        assert_eq!(text("\"AQL/\"", &ColumnType::Bytea), "\\x0102ff");
        assert_eq!(
            text("\"2026-11-27T10:00:00.123456\"", &ColumnType::Timestamp),
            "2026-11-27 10:00:00.123456"
        );
        assert_eq!(
            text("\"2026-11-27T10:00:00.123456Z\"", &ColumnType::TimestampTz),
            "2026-11-27 10:00:00.123456+00"
        );
        assert_eq!(
            text("\"2026-11-27T10:00:00+02:00\"", &ColumnType::TimestampTz),
            "2026-11-27 10:00:00+02:00"
        );
        assert_eq!(text(r#"{"a": [1, 2]}"#, &ColumnType::Text), r#"{"a": [1, 2]}"#);
        assert_eq!(text(r#""he said \"hi\"""#, &ColumnType::Text), r#"he said "hi""#);
        assert_eq!(
            text(
                r#"["a", null, "b\"c"]"#,
                &ColumnType::List(Box::new(ColumnType::Text))
            ),
            r#"{"a",NULL,"b\"c"}"#
        );
        assert_eq!(
            text("[1, 2]", &ColumnType::List(Box::new(ColumnType::Int64))),
            r#"{"1","2"}"#
        );
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let bad = |json: &str, t: &ColumnType| {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            cell(&raw, t).unwrap_err()
        };
        assert!(bad("\"x\"", &ColumnType::Int64).contains("integer"));
        assert!(bad("1", &ColumnType::Bool).contains("true or false"));
        assert!(bad("\"@@@\"", &ColumnType::Bytea).contains("base64"));
        assert!(bad("3", &ColumnType::Timestamp).contains("timestamp"));
        assert!(bad("[[1]]", &ColumnType::List(Box::new(ColumnType::Int64))).contains("nested"));
    }
}
