//! Changefeed messages exactly as CockroachDB's JSON encoder writes them (research §7, §8 and
//! follow-up E), from the values PostgreSQL's `to_jsonb` gives (under `TimeZone = 'UTC'`,
//! `IntervalStyle = 'postgres'`, `extra_float_digits = 3`, `bytea_output = 'hex'`).
//!
//! CockroachDB encodes every datum with `tree.AsJSON(d, DataConversionConfig{}, time.UTC)`
//! (`ccl/changefeedccl/encoder_json.go`, `sql/sem/tree/datum.go`):
//!
//! - INT: a JSON number. BOOL: `true`/`false`. STRING, ENUM, UUID, DATE, TIME, BIT, INET,
//!   TIMESTAMP (`2006-01-02T15:04:05.999999999`, no zone): their text, as PostgreSQL's JSON has it.
//! - FLOAT: apd's `SetFloat64` (`strconv.FormatFloat(f, 'E', -1, 64)`) printed in
//!   to-scientific form: `1500.0` → `1.5E+3`, `100` → `1E+2`, `0.5` → `0.5`, `1e-7` → `1E-7`;
//!   NaN and ±Infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (`jsonNumber.Format`).
//!   FLOAT4 values are widened to float64 first, as CockroachDB's DFloat holds them.
//! - DECIMAL: apd's `String()` of the stored value, which keeps the scale (`1500.00`) and
//!   switches to exponent form when the exponent is positive or the adjusted exponent is
//!   below -6 (`0.0000001` → `1E-7`).
//! - BYTES: `"\\x…"` hex, whatever `bytea_output` says.
//! - TIMESTAMPTZ: `time.RFC3339Nano` in UTC, so always `Z`, trailing zeros trimmed.
//! - TIMETZ: `PGWireFormatTimeTZ` (`15:04:05.999999-07`, minutes only when not zero): `10:00:00+00`.
//! - INTERVAL: the zero-value `IntervalStyle`, POSTGRES: `1 year 2 mons 3 days 04:05:06.789`.
//! - OID: its digits as a JSON string.
//! - JSONB: the value itself (keys sorted, CockroachDB's spacing). A JSON `null` and SQL NULL
//!   both give `null` unless `encode_json_value_null_as_object` (v24.2+), which writes a JSON
//!   `null` as `{"__crdb_json_null__": true}`.
//! - ARRAY: a JSON array of the element encodings.
//!
//! Envelopes (`envelope = 'wrapped'`, `initWrappedEnvelope`): `after` (null for a delete),
//! `before` with `diff`, `key` with `key_in_value` (forced for webhooks), `topic` with
//! `topic_in_value` (forced for webhooks), `updated` with `updated`, `mvcc_timestamp` with
//! `mvcc_timestamp`; keys sorted. Virtual columns are left out of `after`/`before` unless
//! `virtual_columns = 'null'` (research §8).

use super::clock::Hlc;
use super::json::{self, Json};

/// How a column's values are written; from its PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// BOOL.
    Bool,
    /// INT2/INT4/INT8.
    Int,
    /// FLOAT4.
    Float4,
    /// FLOAT8.
    Float8,
    /// DECIMAL.
    Decimal,
    /// BYTES.
    Bytes,
    /// TIMESTAMP.
    Timestamp,
    /// TIMESTAMPTZ.
    TimestampTz,
    /// TIMETZ.
    TimeTz,
    /// JSON / JSONB.
    Json,
    /// OID.
    Oid,
    /// Everything written as its text (STRING, DATE, TIME, INTERVAL, UUID, INET, BIT, ENUM…).
    Text,
    /// An array of the element kind.
    Array(Box<ValueKind>),
}

impl ValueKind {
    /// The kind of a PostgreSQL type; `elem` is the element type of an array type (0 otherwise).
    pub fn of(type_oid: u32, elem: Option<ValueKind>) -> Self {
        if let Some(e) = elem {
            return ValueKind::Array(Box::new(e));
        }
        match type_oid {
            16 => ValueKind::Bool,
            20 | 21 | 23 => ValueKind::Int,
            700 => ValueKind::Float4,
            701 => ValueKind::Float8,
            1700 => ValueKind::Decimal,
            17 => ValueKind::Bytes,
            1114 => ValueKind::Timestamp,
            1184 => ValueKind::TimestampTz,
            1266 => ValueKind::TimeTz,
            114 | 3802 => ValueKind::Json,
            26 => ValueKind::Oid,
            _ => ValueKind::Text,
        }
    }
}

/// Encoding switches from the changefeed's options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValueOptions {
    /// `encode_json_value_null_as_object`.
    pub json_null_as_object: bool,
}

/// apd's to-scientific-string of a decimal given as a sign, coefficient digits and exponent.
fn to_sci(negative: bool, coefficient: &str, exponent: i64) -> String {
    let digits = coefficient.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let len = digits.len() as i64;
    let adjusted = exponent + len - 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if exponent <= 0 && adjusted >= -6 {
        if exponent == 0 {
            out.push_str(digits);
        } else {
            let point = len + exponent;
            if point > 0 {
                out.push_str(&digits[..point as usize]);
                out.push('.');
                out.push_str(&digits[point as usize..]);
            } else {
                out.push_str("0.");
                out.push_str(&"0".repeat((-point) as usize));
                out.push_str(digits);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if len > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('E');
        out.push(if adjusted >= 0 { '+' } else { '-' });
        out.push_str(&adjusted.abs().to_string());
    }
    out
}

/// A decimal number's text (PostgreSQL's `numeric_out`, or any JSON number) in the form
/// CockroachDB's apd prints it; `None` when it is not a number.
pub fn decimal_text(text: &str) -> Option<String> {
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let coefficient = format!("{whole}{frac}");
    Some(to_sci(negative, &coefficient, exp - frac.len() as i64))
}

/// A float's JSON as CockroachDB writes it (see the module doc).
pub fn float_json(f: f64) -> String {
    if f.is_nan() {
        return "\"NaN\"".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form, like Go's FormatFloat(f, 'E', -1, 64).
    let s = format!("{f:e}");
    let (mantissa, exp) = s.split_once('e').expect("exponent form");
    let exp: i64 = exp.parse().expect("exponent");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (first, rest) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let coefficient = format!("{first}{rest}");
    to_sci(negative, &coefficient, exp - rest.len() as i64)
}

fn float_value(v: &Json, narrow: bool) -> String {
    let text = match v {
        Json::Number(n) => n.as_str(),
        Json::String(s) => s.as_str(),
        _ => return "null".into(),
    };
    let parsed: Option<f64> = match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        t if narrow => t.parse::<f32>().ok().map(f64::from),
        t => t.parse::<f64>().ok(),
    };
    match parsed {
        Some(f) => float_json(f),
        None => json::string(text),
    }
}

/// `2026-11-27T10:00:00.5+00:00` (PostgreSQL's JSON of a TIMESTAMPTZ in UTC) →
/// `2026-11-27T10:00:00.5Z`.
fn timestamptz_text(s: &str) -> String {
    for suffix in ["+00:00", "+00"] {
        if let Some(base) = s.strip_suffix(suffix)
            && base.contains('T')
        {
            return format!("{base}Z");
        }
    }
    s.to_string()
}

/// `10:00:00+00:00` → `10:00:00+00`; `10:00:00+05:30` stays.
fn timetz_text(s: &str) -> String {
    if let Some(base) = s.strip_suffix(":00") {
        let sign = base.rfind(['+', '-']);
        if let Some(i) = sign
            && base.len() - i == 3
        {
            return base.to_string();
        }
    }
    s.to_string()
}

/// A JSONB value as CockroachDB writes it: keys sorted, `", "` and `": "`, numbers via apd.
pub fn jsonb_text(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => decimal_text(n).unwrap_or_else(|| n.clone()),
        Json::String(s) => json::string(s),
        Json::Array(items) => json::array(&items.iter().map(jsonb_text).collect::<Vec<_>>()),
        Json::Object(items) => {
            let mut out = String::new();
            json::write_object(
                &mut out,
                items.iter().map(|(k, v)| (k.clone(), jsonb_text(v))).collect(),
            );
            out
        }
    }
}

/// One value of a column of `kind`, as CockroachDB's changefeed JSON has it. `v` is the
/// value from `to_jsonb`; `sql_null` tells a SQL NULL of a JSON column from a JSON `null`.
pub fn value_json(kind: &ValueKind, v: &Json, sql_null: bool, opts: ValueOptions) -> String {
    if let Json::Null = v {
        if *kind == ValueKind::Json && !sql_null && opts.json_null_as_object {
            return r#"{"__crdb_json_null__": true}"#.into();
        }
        return "null".into();
    }
    match kind {
        ValueKind::Bool | ValueKind::Int => match v {
            Json::Number(n) => n.clone(),
            Json::Bool(b) => b.to_string(),
            other => jsonb_text(other),
        },
        ValueKind::Float4 => float_value(v, true),
        ValueKind::Float8 => float_value(v, false),
        ValueKind::Decimal => match v {
            Json::Number(n) => decimal_text(n).unwrap_or_else(|| n.clone()),
            Json::String(s) => json::string(s),
            other => jsonb_text(other),
        },
        ValueKind::Json => jsonb_text(v),
        ValueKind::TimestampTz => match v {
            Json::String(s) => json::string(&timestamptz_text(s)),
            other => jsonb_text(other),
        },
        ValueKind::TimeTz => match v {
            Json::String(s) => json::string(&timetz_text(s)),
            other => jsonb_text(other),
        },
        ValueKind::Oid => match v {
            Json::Number(n) => json::string(n),
            other => jsonb_text(other),
        },
        ValueKind::Array(elem) => match v {
            Json::Array(items) => json::array(
                &items
                    .iter()
                    .map(|i| value_json(elem, i, matches!(i, Json::Null), opts))
                    .collect::<Vec<_>>(),
            ),
            other => jsonb_text(other),
        },
        ValueKind::Bytes | ValueKind::Timestamp | ValueKind::Text => match v {
            Json::String(s) => json::string(s),
            Json::Number(n) => json::string(n),
            other => jsonb_text(other),
        },
    }
}

/// A column as the encoder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// How its values are written.
    pub kind: ValueKind,
    /// A virtual computed column (hash-shard columns are): left out of `after`.
    pub virtual_: bool,
}

/// A row image: `to_jsonb(row)` and the JSON columns that are SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct RowImage {
    /// `to_jsonb` of the row.
    pub values: Json,
    /// JSON/JSONB columns whose value is SQL NULL (not a JSON `null`).
    pub sql_nulls: Vec<String>,
}

impl RowImage {
    /// The value of `column` (JSON `null` when absent).
    pub fn get(&self, column: &str) -> &Json {
        self.values.get(column).unwrap_or(&Json::Null)
    }

    fn is_sql_null(&self, column: &str) -> bool {
        self.sql_nulls.iter().any(|c| c == column)
    }
}

/// What the encoder writes besides `after`, from the changefeed's options.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeOptions {
    /// `updated`.
    pub updated: bool,
    /// `diff`: `before`.
    pub diff: bool,
    /// `mvcc_timestamp`.
    pub mvcc_timestamp: bool,
    /// `key_in_value` (forced for webhook sinks).
    pub key_in_value: bool,
    /// `topic_in_value` (forced for webhook sinks).
    pub topic_in_value: bool,
    /// `virtual_columns = 'null'`.
    pub virtual_columns_null: bool,
    /// Value switches.
    pub values: ValueOptions,
}

/// The `after`/`before` object of a row.
pub fn row_object(columns: &[Column], row: &RowImage, opts: &EnvelopeOptions) -> String {
    let mut items = Vec::new();
    for c in columns {
        if c.virtual_ {
            if opts.virtual_columns_null {
                items.push((c.name.clone(), "null".to_string()));
            }
            continue;
        }
        let Some(v) = row.values.get(&c.name) else {
            // Not a column of the row's schema version.
            continue;
        };
        items.push((
            c.name.clone(),
            value_json(&c.kind, v, row.is_sql_null(&c.name), opts.values),
        ));
    }
    let mut out = String::new();
    json::write_object(&mut out, items);
    out
}

/// The key array: the primary-key columns in primary-index order.
pub fn key_array(columns: &[Column], key: &[String], row: &RowImage, opts: ValueOptions) -> String {
    let items: Vec<String> = key
        .iter()
        .map(|k| {
            let kind = columns
                .iter()
                .find(|c| &c.name == k)
                .map_or(ValueKind::Text, |c| c.kind.clone());
            value_json(&kind, row.get(k), row.is_sql_null(k), opts)
        })
        .collect();
    json::array(&items)
}

/// One row message's value (wrapped envelope). `before` is used only with `diff`.
#[allow(clippy::too_many_arguments)]
pub fn wrapped(
    columns: &[Column],
    after: Option<&RowImage>,
    before: Option<&RowImage>,
    key: &str,
    topic: &str,
    updated: Hlc,
    mvcc: Hlc,
    opts: &EnvelopeOptions,
) -> String {
    let mut items = vec![(
        "after".to_string(),
        after.map_or("null".to_string(), |r| row_object(columns, r, opts)),
    )];
    if opts.diff {
        items.push((
            "before".into(),
            before.map_or("null".to_string(), |r| row_object(columns, r, opts)),
        ));
    }
    if opts.key_in_value {
        items.push(("key".into(), key.to_string()));
    }
    if opts.topic_in_value {
        items.push(("topic".into(), json::string(topic)));
    }
    if opts.updated {
        items.push(("updated".into(), json::string(&updated.decimal())));
    }
    if opts.mvcc_timestamp {
        items.push(("mvcc_timestamp".into(), json::string(&mvcc.decimal())));
    }
    let mut out = String::new();
    json::write_object(&mut out, items);
    out
}

/// A resolved message: `{"resolved": "…"}`.
pub fn resolved(ts: Hlc) -> String {
    format!(r#"{{"resolved": {}}}"#, json::string(&ts.decimal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: ValueKind, json_text: &str) -> String {
        value_json(
            &kind,
            &json::parse(json_text).unwrap(),
            false,
            ValueOptions::default(),
        )
    }

    #[test]
    fn floats_in_apd_form() {
        assert_eq!(float_json(1500.0), "1.5E+3");
        assert_eq!(float_json(100.0), "1E+2");
        assert_eq!(float_json(0.5), "0.5");
        assert_eq!(float_json(1e-7), "1E-7");
        assert_eq!(float_json(123.0), "123");
        assert_eq!(float_json(1.25), "1.25");
        assert_eq!(float_json(0.000001), "0.000001");
        assert_eq!(float_json(0.0), "0");
        assert_eq!(float_json(-2.5), "-2.5");
        assert_eq!(float_json(1e21), "1E+21");
        assert_eq!(float_json(f64::NAN), "\"NaN\"");
        assert_eq!(float_json(f64::INFINITY), "\"Infinity\"");
        assert_eq!(float_json(f64::NEG_INFINITY), "\"-Infinity\"");
        assert_eq!(v(ValueKind::Float8, "1500"), "1.5E+3");
        assert_eq!(v(ValueKind::Float8, "0.1"), "0.1");
        assert_eq!(v(ValueKind::Float8, "\"NaN\""), "\"NaN\"");
        assert_eq!(v(ValueKind::Float8, "\"-Infinity\""), "\"-Infinity\"");
        // FLOAT4 is widened to float64 as CockroachDB's DFloat holds it.
        assert_eq!(v(ValueKind::Float4, "0.1"), "0.10000000149011612");
        assert_eq!(v(ValueKind::Float4, "1.5"), "1.5");
    }

    #[test]
    fn decimals_keep_scale() {
        assert_eq!(v(ValueKind::Decimal, "1500.00"), "1500.00");
        assert_eq!(v(ValueKind::Decimal, "1500"), "1500");
        assert_eq!(v(ValueKind::Decimal, "10.50"), "10.50");
        assert_eq!(v(ValueKind::Decimal, "-1.5"), "-1.5");
        assert_eq!(v(ValueKind::Decimal, "0.0000001"), "1E-7");
        assert_eq!(v(ValueKind::Decimal, "0.00000010"), "1.0E-7");
        assert_eq!(v(ValueKind::Decimal, "0.000001"), "0.000001");
        assert_eq!(v(ValueKind::Decimal, "0.00"), "0.00");
        assert_eq!(v(ValueKind::Decimal, "0.00000000"), "0E-8");
        assert_eq!(v(ValueKind::Decimal, "\"NaN\""), "\"NaN\"");
        assert_eq!(v(ValueKind::Decimal, "\"Infinity\""), "\"Infinity\"");
        assert_eq!(decimal_text("1e3").unwrap(), "1E+3");
        assert_eq!(decimal_text("x"), None);
    }

    #[test]
    fn times() {
        assert_eq!(
            v(ValueKind::TimestampTz, r#""2026-11-27T10:00:00.123456+00:00""#),
            r#""2026-11-27T10:00:00.123456Z""#
        );
        assert_eq!(
            v(ValueKind::TimestampTz, r#""2026-11-27T10:00:00+00:00""#),
            r#""2026-11-27T10:00:00Z""#
        );
        assert_eq!(
            v(ValueKind::Timestamp, r#""2026-11-27T10:00:00.5""#),
            r#""2026-11-27T10:00:00.5""#
        );
        assert_eq!(v(ValueKind::TimeTz, r#""10:00:00+00:00""#), r#""10:00:00+00""#);
        assert_eq!(
            v(ValueKind::TimeTz, r#""10:00:00.5-05:00""#),
            r#""10:00:00.5-05""#
        );
        assert_eq!(v(ValueKind::TimeTz, r#""10:00:00+05:30""#), r#""10:00:00+05:30""#);
        assert_eq!(
            v(ValueKind::Text, r#""1 year 2 mons 3 days 04:05:06.789""#),
            r#""1 year 2 mons 3 days 04:05:06.789""#
        );
    }

    #[test]
    fn bytes_json_arrays_oids() {
        assert_eq!(v(ValueKind::Bytes, r#""\\x0102ff""#), r#""\\x0102ff""#);
        assert_eq!(v(ValueKind::Oid, "26"), r#""26""#);
        assert_eq!(
            v(
                ValueKind::Json,
                r#"{"id": 1, "city": "rome", "n": 1.50, "a": [0.0000001]}"#
            ),
            r#"{"a": [1E-7], "city": "rome", "id": 1, "n": 1.50}"#
        );
        assert_eq!(
            v(
                ValueKind::Array(Box::new(ValueKind::TimestampTz)),
                r#"["2020-01-01T00:00:00+00:00", null]"#
            ),
            r#"["2020-01-01T00:00:00Z", null]"#
        );
        assert_eq!(
            v(ValueKind::Array(Box::new(ValueKind::Float8)), "[1500, 0.5]"),
            "[1.5E+3, 0.5]"
        );
    }

    #[test]
    fn json_null_versus_sql_null() {
        let on = ValueOptions {
            json_null_as_object: true,
        };
        assert_eq!(
            value_json(&ValueKind::Json, &Json::Null, false, on),
            r#"{"__crdb_json_null__": true}"#
        );
        assert_eq!(value_json(&ValueKind::Json, &Json::Null, true, on), "null");
        assert_eq!(
            value_json(&ValueKind::Json, &Json::Null, false, ValueOptions::default()),
            "null"
        );
        assert_eq!(value_json(&ValueKind::Int, &Json::Null, false, on), "null");
    }

    #[test]
    fn envelope() {
        let columns = vec![
            Column {
                name: "id".into(),
                kind: ValueKind::Int,
                virtual_: false,
            },
            Column {
                name: "crdb_internal_id_shard_4".into(),
                kind: ValueKind::Int,
                virtual_: true,
            },
            Column {
                name: "doc".into(),
                kind: ValueKind::Json,
                virtual_: false,
            },
            Column {
                name: "city".into(),
                kind: ValueKind::Text,
                virtual_: false,
            },
        ];
        let row = RowImage {
            values: json::parse(r#"{"id": 7, "crdb_internal_id_shard_4": 3, "doc": null, "city": "rome"}"#)
                .unwrap(),
            sql_nulls: vec!["doc".into()],
        };
        let key = key_array(
            &columns,
            &["crdb_internal_id_shard_4".into(), "id".into()],
            &row,
            ValueOptions::default(),
        );
        assert_eq!(key, "[3, 7]");
        let ts = Hlc {
            wall: 1_700_000_000_123_456_789,
            logical: 0,
        };
        let opts = EnvelopeOptions {
            updated: true,
            ..Default::default()
        };
        assert_eq!(
            wrapped(&columns, Some(&row), None, &key, "t", ts, ts, &opts),
            r#"{"after": {"city": "rome", "doc": null, "id": 7}, "updated": "1700000000123456789.0000000000"}"#
        );
        let webhook = EnvelopeOptions {
            key_in_value: true,
            topic_in_value: true,
            diff: true,
            ..Default::default()
        };
        assert_eq!(
            wrapped(&columns, None, Some(&row), &key, "app.public.t", ts, ts, &webhook),
            r#"{"after": null, "before": {"city": "rome", "doc": null, "id": 7}, "key": [3, 7], "topic": "app.public.t"}"#
        );
        assert_eq!(resolved(ts), r#"{"resolved": "1700000000123456789.0000000000"}"#);
    }
}
