//! Changefeed JSON values → the text form tarn's column builders read.
//!
//! CockroachDB's changefeed JSON encoder (`tree.AsJSON` with a zero-value
//! `DataConversionConfig` and the UTC location, in `pkg/ccl/changefeedccl/encoder_json.go`)
//! writes integers as JSON numbers; `FLOAT` and `DECIMAL` as JSON numbers in apd's
//! to-scientific form (`1.5E+3`, `1E-7`; a `DECIMAL` keeps its scale, `1500.00`) with `NaN`,
//! `Infinity` and `-Infinity` as strings; booleans as JSON booleans; `BYTES` as `"\\x…"` hex
//! strings (whatever `bytea_output` says); `TIMESTAMP` as `2026-11-27T10:00:00.123456`
//! and `TIMESTAMPTZ` always in UTC with `Z`; `INTERVAL` in the *postgres* interval style
//! (`1 year 2 mons 3 days 04:05:06.789`) whatever the session's `IntervalStyle`; `DATE`,
//! `TIME`, `TIMETZ`, `UUID`, `INET`, `BIT` and enums as their SQL text; `JSONB` as the JSON
//! itself — a JSON `null` is `null` like SQL NULL, unless the changefeed was created with
//! `encode_json_value_null_as_object` (v24.2+), which sends `{"__crdb_json_null__": true}`;
//! arrays as JSON arrays.
//!
//! Each value is turned into the text PostgreSQL prints for the same value in the session
//! tarn's PostgreSQL source uses (`IntervalStyle=iso_8601`, `TimeZone=UTC`; see
//! `postgres::connect::SESSION_OPTIONS`): intervals are re-written in ISO 8601, decimals
//! without exponent, JSONB in PostgreSQL's canonical form (keys shortest first, `", "` and
//! `": "`). So one set of builders and one type mapping (`docs/cdc-types.md`) serve both
//! sources, and the same value lands the same way from either.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::postgres::types::builtin_array_element;
use crate::value::{ColumnType, Value};

const NUMERIC_OID: u32 = 1700;
const INTERVAL_OID: u32 = 1186;
const JSON_OID: u32 = 114;
const JSONB_OID: u32 = 3802;

/// What `encode_json_value_null_as_object` sends for a JSONB `null` (CockroachDB v24.2+).
const JSON_NULL_OBJECT: &str = "__crdb_json_null__";

/// Converts the raw JSON `raw` of a column of type `t` whose source type is `source_oid`;
/// the error says what was expected.
pub fn cell(raw: &RawValue, t: &ColumnType, source_oid: u32) -> Result<Value, String> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(Value::Null);
    }
    Ok(Value::Text(Bytes::from(scalar_text(text, t, source_oid)?)))
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

fn scalar_text(text: &str, t: &ColumnType, oid: u32) -> Result<String, String> {
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
            Some(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") || is_number(&s) => Ok(s),
            _ => Err(expected("a number")),
        },
        ColumnType::Decimal { .. } => decimal_text(text, s).ok_or_else(|| expected("a decimal")),
        ColumnType::Text => match oid {
            // Unconstrained DECIMAL mapped to `string` (cdc.unconstrained_numeric = "text").
            NUMERIC_OID => decimal_text(text, s).ok_or_else(|| expected("a decimal")),
            INTERVAL_OID => {
                let s = s.ok_or_else(|| expected("an interval string"))?;
                interval_iso8601(&s).ok_or_else(|| expected("an interval like \"1 day 02:03:04\""))
            }
            JSON_OID | JSONB_OID => {
                let mut out = String::with_capacity(text.len());
                canonical_json(text, true, &mut out).map_err(|e| format!("bad JSON ({e})"))?;
                Ok(out)
            }
            _ => Ok(match s {
                Some(s) => s,
                None => text.to_string(),
            }),
        },
        ColumnType::Bytea => match s {
            Some(s)
                if s.starts_with("\\x")
                    && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
                    && s.len() % 2 == 0 =>
            {
                Ok(s)
            }
            _ => Err(expected("bytes as a \"\\\\x\" hex string")),
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
            let element_oid = builtin_array_element(oid).unwrap_or(0);
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
                let v = scalar_text(item, element, element_oid)?;
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

/// A decimal as PostgreSQL prints it: digits without exponent; `NaN` and infinities as
/// strings pass through (the decimal builder refuses them, as for PostgreSQL).
fn decimal_text(text: &str, s: Option<String>) -> Option<String> {
    match s {
        None if is_number(text) => plain_decimal(text),
        Some(s) if s == "NaN" || s == "Infinity" || s == "-Infinity" => Some(s),
        Some(s) if is_number(&s) => plain_decimal(&s),
        _ => None,
    }
}

/// A postgres-style interval (`1 year 2 mons -3 days +04:05:06.789`, CockroachDB's
/// changefeed form) in PostgreSQL's `iso_8601` output (`P1Y2M-3DT4H5M6.789S`, `PT0S`).
fn interval_iso8601(text: &str) -> Option<String> {
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word.contains(':') {
            micros = micros.checked_add(clock_micros(word)?)?;
            continue;
        }
        let n: i64 = word.parse().ok()?;
        let unit = words.next()?;
        match unit.trim_end_matches('s') {
            "year" => months = months.checked_add(n.checked_mul(12)?)?,
            "mon" => months = months.checked_add(n)?,
            "day" => days = days.checked_add(n)?,
            _ => return None,
        }
    }
    // As PostgreSQL's EncodeInterval (INTSTYLE_ISO_8601) splits and prints the fields.
    if months == 0 && days == 0 && micros == 0 {
        return Some("PT0S".into());
    }
    let (year, mon) = (months / 12, months % 12);
    let hour = micros / 3_600_000_000;
    let rest = micros - hour * 3_600_000_000;
    let min = rest / 60_000_000;
    let rest = rest - min * 60_000_000;
    let (sec, fsec) = (rest / 1_000_000, rest % 1_000_000);
    let mut out = String::from("P");
    for (v, c) in [(year, 'Y'), (mon, 'M'), (days, 'D')] {
        if v != 0 {
            out.push_str(&format!("{v}{c}"));
        }
    }
    if hour != 0 || min != 0 || sec != 0 || fsec != 0 {
        out.push('T');
    }
    for (v, c) in [(hour, 'H'), (min, 'M')] {
        if v != 0 {
            out.push_str(&format!("{v}{c}"));
        }
    }
    if sec != 0 || fsec != 0 {
        if sec < 0 || fsec < 0 {
            out.push('-');
        }
        out.push_str(&sec.abs().to_string());
        if fsec != 0 {
            let frac = format!("{:06}", fsec.abs());
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        out.push('S');
    }
    Some(out)
}

/// `[+-]H:MM[:SS[.ffffff]]` → signed microseconds.
fn clock_micros(word: &str) -> Option<i64> {
    let (negative, body) = match word.as_bytes().first()? {
        b'-' => (true, &word[1..]),
        b'+' => (false, &word[1..]),
        _ => (false, word),
    };
    let mut parts = body.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let (seconds, frac) = match parts.next() {
        Some(s) => s.split_once('.').map_or((s, ""), |(a, b)| (a, b)),
        None => ("0", ""),
    };
    if parts.next().is_some() || minutes > 59 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = seconds.parse().ok()?;
    // Microseconds, rounded half up from up to nine digits (CockroachDB keeps nanoseconds).
    let mut digits: String = frac.chars().chain(std::iter::repeat('0')).take(7).collect();
    let round = digits.pop().is_some_and(|d| d >= '5');
    let fraction: i64 = digits.parse().ok()?;
    let total = ((hours * 60 + minutes) * 60 + seconds)
        .checked_mul(1_000_000)?
        .checked_add(fraction + i64::from(round))?;
    Some(if negative { -total } else { total })
}

/// Writes JSON `text` as PostgreSQL prints a `jsonb` value: object keys shortest first (then
/// bytewise; the last of duplicate keys wins), `", "` between items, `": "` after keys,
/// strings escaped as PostgreSQL does, numbers as written. At the top level, CockroachDB's
/// `{"__crdb_json_null__": true}` stands for a JSON `null`.
fn canonical_json(text: &str, top: bool, out: &mut String) -> Result<(), serde_json::Error> {
    let text = text.trim();
    match text.as_bytes().first() {
        Some(b'{') => {
            let items = object_items(text)?;
            if top && items.len() == 1 && items[0].0 == JSON_NULL_OBJECT && items[0].1.get().trim() == "true"
            {
                out.push_str("null");
                return Ok(());
            }
            let mut keyed: Vec<(String, &RawValue)> = Vec::with_capacity(items.len());
            for (k, v) in items {
                match keyed.iter().position(|(key, _)| *key == k) {
                    Some(i) => keyed[i].1 = v,
                    None => keyed.push((k, v)),
                }
            }
            keyed.sort_by(|a, b| {
                a.0.len()
                    .cmp(&b.0.len())
                    .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
            });
            out.push('{');
            for (i, (k, v)) in keyed.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push_str(": ");
                canonical_json(v.get(), false, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                canonical_json(v.get(), false, out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text)?;
            out.push_str(&serde_json::to_string(&s)?);
        }
        _ => {
            // A number, true, false or null: validated, written as it is.
            serde_json::from_str::<&RawValue>(text)?;
            out.push_str(text);
        }
    }
    Ok(())
}

/// An object's members in order, duplicates kept.
fn object_items(text: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    struct Items<'a>(Vec<(String, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for Items<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Items<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                        items.push((k, v));
                    }
                    Ok(Items(items))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    Ok(serde_json::from_str::<Items<'_>>(text)?.0)
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

    fn text_of(json: &str, t: &ColumnType, oid: u32) -> String {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        match cell(&raw, t, oid).unwrap() {
            Value::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Value::Null => "NULL".into(),
            other => panic!("{other:?}"),
        }
    }

    fn text(json: &str, t: &ColumnType) -> String {
        text_of(json, t, 0)
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
        assert_eq!(text("1E-7", &dec), "0.0000001");
        assert_eq!(text_of("1.5E+3", &ColumnType::Text, NUMERIC_OID), "1500");
        assert_eq!(text_of("\"NaN\"", &ColumnType::Text, NUMERIC_OID), "NaN");
        assert_eq!(text("\"NaN\"", &ColumnType::Float64), "NaN");
        assert_eq!(text("\"-Infinity\"", &ColumnType::Float64), "-Infinity");
        assert_eq!(text("1.5E+3", &ColumnType::Float64), "1.5E+3");
        assert_eq!(text("-1e308", &ColumnType::Float64), "-1e308");
        assert_eq!(text("true", &ColumnType::Bool), "t");
        assert_eq!(text("null", &ColumnType::Int64), "NULL");
        assert_eq!(text(r#""\\x0102ff""#, &ColumnType::Bytea), "\\x0102ff");
        assert_eq!(text(r#""\\x""#, &ColumnType::Bytea), "\\x");
        assert_eq!(
            text("\"2026-11-27T10:00:00.123456\"", &ColumnType::Timestamp),
            "2026-11-27 10:00:00.123456"
        );
        assert_eq!(
            text("\"2026-11-27T10:00:00.123456Z\"", &ColumnType::TimestampTz),
            "2026-11-27 10:00:00.123456+00"
        );
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
    fn intervals_in_iso_8601_as_postgres_prints_them() {
        let iv = |s: &str| text_of(&format!("\"{s}\""), &ColumnType::Text, INTERVAL_OID);
        assert_eq!(iv("1 year 2 mons 3 days 04:05:06.789"), "P1Y2M3DT4H5M6.789S");
        assert_eq!(iv("00:00:00"), "PT0S");
        assert_eq!(iv("1 day"), "P1D");
        assert_eq!(iv("-1 days +02:03:04"), "P-1DT2H3M4S");
        assert_eq!(
            iv("-1 years -2 mons -3 days -04:05:06.5"),
            "P-1Y-2M-3DT-4H-5M-6.5S"
        );
        assert_eq!(iv("-00:00:00.000001"), "PT-0.000001S");
        assert_eq!(iv("25:00:00"), "PT25H");
        assert_eq!(iv("14 mons"), "P1Y2M");
        assert_eq!(iv("00:00:01.0000005"), "PT1.000001S");
        assert_eq!(
            text_of(
                r#"["1 day", null]"#,
                &ColumnType::List(Box::new(ColumnType::Text)),
                1187
            ),
            r#"{"P1D",NULL}"#
        );
        let raw: Box<RawValue> = serde_json::from_str("\"soon\"").unwrap();
        assert!(
            cell(&raw, &ColumnType::Text, INTERVAL_OID)
                .unwrap_err()
                .contains("interval")
        );
    }

    #[test]
    fn jsonb_in_postgres_canonical_form() {
        let j = |s: &str| text_of(s, &ColumnType::Text, JSONB_OID);
        assert_eq!(
            j(r#"{"b":1,"aa":{"z":[1,2.50,"x\u00e9\n"],"a":null}}"#),
            r#"{"b": 1, "aa": {"a": null, "z": [1, 2.50, "xé\n"]}}"#
        );
        assert_eq!(j(r#"{"a":1,"a":2}"#), r#"{"a": 2}"#);
        assert_eq!(j("[]"), "[]");
        assert_eq!(j("{}"), "{}");
        assert_eq!(j("\"s\""), "\"s\"");
        // A JSON null (encode_json_value_null_as_object) and SQL NULL stay apart.
        assert_eq!(j(r#"{"__crdb_json_null__": true}"#), "null");
        assert_eq!(j("null"), "NULL");
        assert_eq!(
            j(r#"{"k": {"__crdb_json_null__": true}}"#),
            r#"{"k": {"__crdb_json_null__": true}}"#
        );
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let bad = |json: &str, t: &ColumnType| {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            cell(&raw, t, 0).unwrap_err()
        };
        assert!(bad("\"x\"", &ColumnType::Int64).contains("integer"));
        assert!(bad("1", &ColumnType::Bool).contains("true or false"));
        assert!(bad("\"AQL/\"", &ColumnType::Bytea).contains("hex"));
        assert!(bad(r#""\\x0g""#, &ColumnType::Bytea).contains("hex"));
        assert!(bad("3", &ColumnType::Timestamp).contains("timestamp"));
        assert!(bad("[[1]]", &ColumnType::List(Box::new(ColumnType::Int64))).contains("nested"));
    }
}
