//! Plain JSON topics (`cdc.kafka.format = "json"`): each record's value is one JSON object,
//! appended as one row of its topic's table, exactly once.
//!
//! - **Tables.** One per topic: `cdc.table_name` with `{schema}` = `kafka` and `{table}` = the
//!   topic name with every character other than letters, digits and `_` as `_`.
//! - **Columns.** Three from the record — `_kafka_partition` (`int`) and `_kafka_offset`
//!   (`bigint`), the table's key, and `_kafka_timestamp` (`timestamptz`, the record's
//!   timestamp) — then the object's fields. With `cdc.kafka.columns` (`"name type"` in
//!   PostgreSQL's type names) the fields are those columns, typed, and other fields are
//!   ignored. Without, they are inferred: a field's first non-null value decides its type
//!   (`true`/`false` → `boolean`, an integer → `bigint`, another number → `double`, a
//!   string → `text`, an object or array → `text` holding its JSON) and a field not seen
//!   before adds a column (the lake table evolves; earlier rows read NULL there).
//! - **Values.** Strings as they are, numbers as written, objects and arrays as JSON text;
//!   a missing field or `null` is NULL. Each value is checked against its column's type
//!   when the record is read, so a record that does not fit (`"abc"` for a `bigint`, `1.5`
//!   for an inferred integer column) is rejected with the field's path and goes to the
//!   dead-letter topic; it never fails a lake commit.
//! - **Exactly once.** The key (partition, offset) makes a replayed record replace itself,
//!   and the lake's offsets make a restart skip what the table holds (as for change events).
//!   The key index holds one entry per row, like any keyed table's: for topics of billions
//!   of records, the raw archive (`--archive`) keeps records without one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;

use super::events::{Record, Rejected, Stage};
use crate::source::{ColumnSpec, KeyKind, TableId, TableSpec, Value};
use crate::value::ColumnType;
use crate::value::builder::ColumnBuilder;

/// The record columns every plain table starts with.
const RECORD_COLUMNS: usize = 3;

/// Rows checked before the scratch builders are emptied.
const CHECK_BATCH: usize = 4096;

/// A configured column, `cdc.kafka.columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainColumn {
    /// The field name (and column name).
    pub name: String,
    /// Its type.
    pub column_type: ColumnType,
}

/// Reads `"name type"` entries of `cdc.kafka.columns`.
pub fn parse_columns(entries: &[String]) -> Result<Vec<PlainColumn>, String> {
    let mut out: Vec<PlainColumn> = Vec::new();
    for entry in entries {
        let entry = entry.trim();
        let (name, type_name) = entry
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("expected \"name type\", got {entry:?}"))?;
        if name.starts_with("_kafka_") {
            return Err(format!(
                "{name:?}: names starting with _kafka_ are the record's own columns"
            ));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(format!("column {name:?} is named twice"));
        }
        let column_type = type_by_name(type_name.trim()).ok_or_else(|| {
            format!(
                "{entry:?}: unknown type {:?} (expected boolean, smallint, int, bigint, real, double precision, \
                 numeric(p,s), text, json, date, time, timestamp or timestamptz)",
                type_name.trim()
            )
        })?;
        out.push(PlainColumn {
            name: name.to_string(),
            column_type,
        });
    }
    Ok(out)
}

fn type_by_name(name: &str) -> Option<ColumnType> {
    let lower = name.to_ascii_lowercase();
    let t = match lower.as_str() {
        "boolean" | "bool" => ColumnType::Bool,
        "smallint" | "int2" => ColumnType::Int16,
        "int" | "integer" | "int4" => ColumnType::Int32,
        "bigint" | "int8" => ColumnType::Int64,
        "real" | "float4" => ColumnType::Float32,
        "double precision" | "double" | "float8" => ColumnType::Float64,
        "text" | "varchar" | "string" | "json" | "jsonb" => ColumnType::Text,
        "date" => ColumnType::Date,
        "time" => ColumnType::Time,
        "timestamp" => ColumnType::Timestamp,
        "timestamptz" | "timestamp with time zone" => ColumnType::TimestampTz,
        other => {
            let args = other
                .strip_prefix("numeric(")
                .or_else(|| other.strip_prefix("decimal("))?
                .strip_suffix(')')?;
            let (p, s) = args.split_once(',')?;
            let (precision, scale): (u8, i8) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
            if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                return None;
            }
            ColumnType::Decimal { precision, scale }
        }
    };
    Some(t)
}

struct PlainTable {
    id: TableId,
    spec: Arc<TableSpec>,
    /// Field name → column index.
    columns: HashMap<String, usize>,
    /// One scratch builder per column: checks a value's text the way the writer reads it.
    checks: Vec<ColumnBuilder>,
    checked: usize,
}

impl PlainTable {
    fn new(id: TableId, topic: &str, fields: &[PlainColumn]) -> Self {
        let mut columns = vec![
            ColumnSpec::new("_kafka_partition", ColumnType::Int32, true, 1),
            ColumnSpec::new("_kafka_offset", ColumnType::Int64, true, 2),
            ColumnSpec::new("_kafka_timestamp", ColumnType::TimestampTz, false, 3),
        ];
        for (i, f) in fields.iter().enumerate() {
            columns.push(ColumnSpec::new(
                &f.name,
                f.column_type.clone(),
                false,
                (RECORD_COLUMNS + i + 1) as i16,
            ));
        }
        let spec = TableSpec {
            id,
            schema: "kafka".into(),
            name: table_name(topic),
            columns,
            key_kind: KeyKind::PrimaryKey,
        };
        let mut table = Self {
            id,
            spec: Arc::new(spec),
            columns: HashMap::new(),
            checks: Vec::new(),
            checked: 0,
        };
        table.index();
        table
    }

    fn index(&mut self) {
        self.columns = self
            .spec
            .columns
            .iter()
            .enumerate()
            .skip(RECORD_COLUMNS)
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        self.checks = self
            .spec
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.name.clone(), &c.column_type, 0))
            .collect();
        self.checked = 0;
    }
}

/// The table name of `topic`: letters, digits and `_` kept, anything else as `_`.
pub fn table_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The text form of a JSON value for a column, `None` for null.
fn text_of(value: &Json) -> Option<Bytes> {
    match value {
        Json::Null => None,
        Json::Bool(b) => Some(Bytes::from_static(if *b { b"true" } else { b"false" })),
        Json::Number(n) => Some(Bytes::from(n.to_string())),
        Json::String(s) => Some(Bytes::from(s.clone())),
        other => Some(Bytes::from(other.to_string())),
    }
}

/// ISO 8601 timestamps (`2024-01-02T03:04:05.5Z`, what JSON producers write) in PostgreSQL's
/// form (`2024-01-02 03:04:05.5+00`) for timestamp columns; anything else as it is.
fn iso_timestamp(column_type: &ColumnType, text: Bytes) -> Bytes {
    if !matches!(column_type, ColumnType::Timestamp | ColumnType::TimestampTz) || text.get(10) != Some(&b'T')
    {
        return text;
    }
    let mut out = text.to_vec();
    out[10] = b' ';
    if out.last() == Some(&b'Z') {
        out.pop();
        out.extend_from_slice(b"+00");
    }
    Bytes::from(out)
}

/// The column type a field's first non-null value implies.
fn inferred_type(value: &Json) -> ColumnType {
    match value {
        Json::Bool(_) => ColumnType::Bool,
        Json::Number(n) if n.is_i64() || n.is_u64() => ColumnType::Int64,
        Json::Number(_) => ColumnType::Float64,
        _ => ColumnType::Text,
    }
}

/// `millis` since the Unix epoch as PostgreSQL prints a `timestamptz` in UTC.
fn timestamptz_text(millis: i64) -> Option<Bytes> {
    let t = chrono::DateTime::from_timestamp_millis(millis)?;
    Some(Bytes::from(t.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string()))
}

/// Plain JSON records into rows; see the module doc.
pub struct PlainMapper {
    /// Configured fields; empty: inferred.
    fields: Vec<PlainColumn>,
    tables: HashMap<String, PlainTable>,
    /// Inferred: the fields lake tables already have, by table name (a restart goes on
    /// with the columns earlier runs inferred).
    known: HashMap<String, Vec<PlainColumn>>,
}

/// One mapped record: its table, the table's spec when it is new or grew, and the row.
#[derive(Debug)]
pub struct PlainRow {
    /// The table.
    pub table: TableId,
    /// The spec to announce first (a new table, or new columns).
    pub relation: Option<Arc<TableSpec>>,
    /// The row, in the spec's column order.
    pub row: Vec<Value>,
}

impl PlainMapper {
    /// A mapper with `fields` configured (empty: inferred from the records).
    pub fn new(fields: Vec<PlainColumn>) -> Self {
        Self {
            fields,
            tables: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Inferred columns: table `name` (a topic's table) already has the fields `columns`,
    /// in order (the columns after the record's own).
    pub fn knows(&mut self, name: &str, columns: Vec<PlainColumn>) {
        self.known.insert(name.to_string(), columns);
    }

    /// The fields of a lake table of plain records, from its Arrow schema: the columns after
    /// the record's own, `None` when it is not such a table or has a type records never give.
    pub fn fields_of(schema: &arrow::datatypes::Schema) -> Option<Vec<PlainColumn>> {
        use arrow::datatypes::{DataType, TimeUnit};
        let names: Vec<&str> = schema
            .fields()
            .iter()
            .take(RECORD_COLUMNS)
            .map(|f| f.name().as_str())
            .collect();
        if names != ["_kafka_partition", "_kafka_offset", "_kafka_timestamp"] {
            return None;
        }
        schema
            .fields()
            .iter()
            .skip(RECORD_COLUMNS)
            .map(|f| {
                let column_type = match f.data_type() {
                    DataType::Boolean => ColumnType::Bool,
                    DataType::Int32 => ColumnType::Int32,
                    DataType::Int64 => ColumnType::Int64,
                    DataType::Float32 => ColumnType::Float32,
                    DataType::Float64 => ColumnType::Float64,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
                    DataType::Decimal128(p, s) => ColumnType::Decimal {
                        precision: *p,
                        scale: *s,
                    },
                    DataType::Date32 => ColumnType::Date,
                    DataType::Time64(_) => ColumnType::Time,
                    DataType::Timestamp(TimeUnit::Microsecond, None) => ColumnType::Timestamp,
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => ColumnType::TimestampTz,
                    _ => return None,
                };
                Some(PlainColumn {
                    name: f.name().clone(),
                    column_type,
                })
            })
            .collect()
    }

    /// Reads `record` as a row of its topic's table; `next_id` names a new table.
    pub fn map(&mut self, record: &Record<'_>, next_id: TableId) -> Result<Option<PlainRow>, Rejected> {
        let Some(bytes) = record.value else {
            // A tombstone: nothing to append.
            return Ok(None);
        };
        let value = |reason: String| Rejected {
            stage: Stage::Value,
            reason,
        };
        let object = match serde_json::from_slice::<Json>(bytes) {
            Ok(Json::Object(o)) => o,
            Ok(other) => {
                return Err(value(format!(
                    "plain JSON record, value: expected a JSON object, got {}",
                    kind(&other)
                )));
            }
            Err(e) => return Err(value(format!("plain JSON record, value: not JSON: {e}"))),
        };
        let configured = !self.fields.is_empty();
        let is_new = !self.tables.contains_key(record.topic);
        let (fields, known) = (&self.fields, &self.known);
        let table = self.tables.entry(record.topic.to_string()).or_insert_with(|| {
            let fields = known.get(&table_name(record.topic)).unwrap_or(fields);
            PlainTable::new(next_id, record.topic, fields)
        });
        // New fields become columns (inferred schemas only), in the record's field order.
        let mut added: Vec<ColumnSpec> = Vec::new();
        if !configured {
            for (name, v) in &object {
                if v.is_null() || table.columns.contains_key(name) || added.iter().any(|c| &c.name == name) {
                    continue;
                }
                if name.starts_with("_kafka_") {
                    return Err(value(format!(
                        "plain JSON record, value.{name}: names starting with _kafka_ are the record's own columns"
                    )));
                }
                let attnum = (table.spec.columns.len() + added.len() + 1) as i16;
                added.push(ColumnSpec::new(name, inferred_type(v), false, attnum));
            }
        }
        let mut row = vec![Value::Null; table.spec.columns.len() + added.len()];
        row[0] = Value::Text(Bytes::from(record.partition.to_string()));
        row[1] = Value::Text(Bytes::from(record.offset.to_string()));
        if let Some(t) = record.timestamp_ms.and_then(timestamptz_text) {
            row[2] = Value::Text(t);
        }
        let types: Vec<&ColumnType> = table
            .spec
            .columns
            .iter()
            .chain(&added)
            .map(|c| &c.column_type)
            .collect();
        for (name, v) in &object {
            let Some(i) = table.columns.get(name).copied().or_else(|| {
                added
                    .iter()
                    .position(|c| &c.name == name)
                    .map(|p| table.spec.columns.len() + p)
            }) else {
                continue;
            };
            let Some(text) = text_of(v).map(|t| iso_timestamp(types[i], t)) else {
                continue;
            };
            let fits = match (types[i], v) {
                // An inferred integer column takes integers only (Iceberg cannot widen a
                // long to a double later); a configured one reads the text as its type.
                (ColumnType::Int64, Json::Number(n)) if !configured => n.is_i64() || n.is_u64(),
                _ => true,
            };
            let checked = if i < table.checks.len() {
                fits && table.checks[i].append(Some(text.as_ref())).is_ok()
            } else {
                fits && ColumnBuilder::new(name.clone(), types[i], 1)
                    .append(Some(text.as_ref()))
                    .is_ok()
            };
            if !checked {
                return Err(value(format!(
                    "plain JSON record, value.{name}: {} does not fit column {name} of type {} (table {})",
                    truncated(&v.to_string()),
                    types[i],
                    table.spec.name
                )));
            }
            row[i] = Value::Text(text);
        }
        table.checked += 1;
        if table.checked >= CHECK_BATCH {
            for c in &mut table.checks {
                c.finish();
            }
            table.checked = 0;
        }
        let relation = if added.is_empty() {
            is_new.then(|| table.spec.clone())
        } else {
            let mut spec = (*table.spec).clone();
            spec.columns.extend(added);
            table.spec = Arc::new(spec);
            table.index();
            Some(table.spec.clone())
        };
        Ok(Some(PlainRow {
            table: table.id,
            relation,
            row,
        }))
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn truncated(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(topic: &'a str, offset: i64, value: &'a str) -> Record<'a> {
        Record {
            topic,
            partition: 1,
            offset,
            key: None,
            value: Some(value.as_bytes()),
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    fn texts(row: &[Value]) -> Vec<Option<String>> {
        row.iter()
            .map(|v| v.as_text().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()
    }

    #[test]
    fn inferred_columns_grow_with_new_fields() {
        let mut m = PlainMapper::new(Vec::new());
        let first = m
            .map(
                &record("web.clicks-v1", 7, r#"{"user": 5, "page": "/a", "tags": ["x"]}"#),
                1,
            )
            .unwrap()
            .unwrap();
        let spec = first.relation.unwrap();
        assert_eq!(spec.name, "web_clicks_v1");
        let names: Vec<_> = spec.columns.iter().map(|c| c.name.as_str()).collect();
        // serde_json keeps object keys sorted.
        assert_eq!(
            names,
            [
                "_kafka_partition",
                "_kafka_offset",
                "_kafka_timestamp",
                "page",
                "tags",
                "user"
            ]
        );
        assert_eq!(spec.columns[5].column_type, ColumnType::Int64);
        assert_eq!(
            texts(&first.row),
            [
                Some("1".into()),
                Some("7".into()),
                Some("2023-11-14 22:13:20.123+00".into()),
                Some("/a".into()),
                Some("[\"x\"]".into()),
                Some("5".into())
            ]
        );
        // Same fields: no relation. A new field: the spec grows, older columns keep their place.
        let same = m
            .map(&record("web.clicks-v1", 8, r#"{"user": 6}"#), 2)
            .unwrap()
            .unwrap();
        assert!(same.relation.is_none());
        assert_eq!(same.table, 1);
        let grown = m
            .map(
                &record("web.clicks-v1", 9, r#"{"user": 6, "score": 1.5, "ok": true}"#),
                2,
            )
            .unwrap()
            .unwrap();
        let spec = grown.relation.unwrap();
        assert_eq!(spec.columns.len(), 8);
        assert_eq!(spec.columns[6].name, "ok");
        assert_eq!(spec.columns[6].column_type, ColumnType::Bool);
        assert_eq!(spec.columns[7].column_type, ColumnType::Float64);
        assert_eq!(
            texts(&grown.row)[5..],
            [Some("6".into()), Some("true".into()), Some("1.5".into())]
        );
    }

    #[test]
    fn a_restart_goes_on_with_the_columns_the_lake_table_has() {
        let mut first = PlainMapper::new(Vec::new());
        let spec = first
            .map(&record("t", 0, r#"{"a": 1, "b": "x"}"#), 1)
            .unwrap()
            .unwrap()
            .relation
            .unwrap();
        let schema = crate::value::builder::arrow_schema(&spec);
        let fields = PlainMapper::fields_of(&schema).unwrap();
        let mut again = PlainMapper::new(Vec::new());
        again.knows("t", fields);
        let row = again.map(&record("t", 1, r#"{"b": "y"}"#), 1).unwrap().unwrap();
        assert_eq!(row.relation.unwrap().columns, spec.columns);
        assert_eq!(texts(&row.row)[3..], [None, Some("y".into())]);
    }

    #[test]
    fn records_that_do_not_fit_are_rejected_naming_the_field() {
        let mut m = PlainMapper::new(Vec::new());
        m.map(&record("t", 0, r#"{"n": 1}"#), 1).unwrap();
        let e = m.map(&record("t", 1, r#"{"n": 1.5}"#), 2).unwrap_err();
        assert_eq!(e.stage, Stage::Value);
        assert!(
            e.reason
                .contains("value.n: 1.5 does not fit column n of type long"),
            "{e}"
        );
        for (bad, what) in [
            ("[1]", "expected a JSON object, got an array"),
            ("{nope", "not JSON"),
            (r#"{"_kafka_offset": 1}"#, "record's own columns"),
        ] {
            let e = m.map(&record("t", 2, bad), 2).unwrap_err();
            assert!(e.reason.contains(what), "{bad}: {e}");
        }
        // A tombstone is nothing.
        let mut tombstone = record("t", 3, "");
        tombstone.value = None;
        assert!(m.map(&tombstone, 2).unwrap().is_none());
    }

    #[test]
    fn configured_columns_type_the_fields_and_ignore_others() {
        let columns = parse_columns(&[
            "id bigint".into(),
            "amount numeric(10,2)".into(),
            "at timestamptz".into(),
        ])
        .unwrap();
        let mut m = PlainMapper::new(columns);
        let row = m
            .map(
                &record(
                    "orders",
                    0,
                    r#"{"id": 1, "amount": "12.50", "at": "2024-01-02T03:04:05Z", "extra": 1}"#,
                ),
                1,
            )
            .unwrap()
            .unwrap();
        let spec = row.relation.unwrap();
        assert_eq!(spec.columns.len(), 6);
        assert_eq!(
            spec.columns[4].column_type,
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(
            texts(&row.row)[3..],
            [
                Some("1".into()),
                Some("12.50".into()),
                Some("2024-01-02 03:04:05+00".into())
            ]
        );
        let e = m.map(&record("orders", 1, r#"{"id": "x"}"#), 2).unwrap_err();
        assert!(e.reason.contains("value.id"), "{e}");
        for (bad, what) in [
            (vec!["id"], "expected \"name type\""),
            (vec!["id uuid-ish"], "unknown type"),
            (vec!["id int", "id text"], "named twice"),
            (vec!["_kafka_offset int"], "record's own columns"),
            (vec!["n numeric(40,2)"], "unknown type"),
        ] {
            let entries: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let e = parse_columns(&entries).unwrap_err();
            assert!(e.contains(what), "{bad:?}: {e}");
        }
    }
}
