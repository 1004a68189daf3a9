//! Checks a message against Debezium's documented change-event envelope; tests run every
//! message tarn publishes through it.
//!
//! What is checked (PostgreSQL connector docs, "Data change events" and "Change event
//! values"; the MySQL and SQL Server pages for their `source` blocks; Kafka's `JsonConverter`
//! for the schema/payload form):
//! - with schemas: the message is exactly `{"schema", "payload"}`; the schema is a struct
//!   named `*.Envelope` with optional `before`/`after` structs of one `*.Value` schema, a
//!   required `source` struct named `io.debezium.connector.<connector>.Source`, a required
//!   string `op`, optional int64 `ts_ms` (and `ts_us`, `ts_ns`, `transaction` as documented
//!   when present); and the payload agrees with it — every value has its field's type
//!   (integers in range, base64 bytes, parseable logical values), no required field is null,
//!   no payload field is missing from the schema;
//! - always: `op` is one of `c u d r t m` and `before`/`after` are present as the operation
//!   requires; `source` has the common fields (`version`, `connector`, `name`, `ts_ms`, `db`,
//!   `snapshot` a documented value) and its connector's own (PostgreSQL `schema`, `table`,
//!   `txId`, `lsn`; MySQL `server_id`, `file`, `pos`, `row`; SQL Server `schema`, `table`,
//!   `change_lsn`, `commit_lsn`, `event_serial_no`), each of its documented type.
//!
//! Every problem is reported, each with its field path.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json};

use super::connect::{ConnectSchema, SchemaType, kind};
use super::types::{DECIMAL, ENUM, JSON};
use super::values::{describe, read_value, shown};
use super::{CodecError, Op, SnapshotMarker, UNAVAILABLE_VALUE, join};

/// The problems of a message that is not a valid change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Each problem with its field path.
    pub problems: Vec<CodecError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a valid Debezium change event ({} problem(s))",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

#[derive(Default)]
struct Checker {
    problems: Vec<CodecError>,
}

impl Checker {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(CodecError::new(path, message));
    }

    fn finish(self) -> Result<(), ValidationError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                problems: self.problems,
            })
        }
    }
}

/// Splits a message into its schema and payload (with schemas), or checks that it is a bare
/// payload (without).
fn unwrap<'j>(
    c: &mut Checker,
    json: &'j Json,
    with_schema: bool,
) -> Option<(Option<ConnectSchema>, &'j Json, &'static str)> {
    if !with_schema {
        return Some((None, json, ""));
    }
    let Some(object) = json.as_object() else {
        c.problem(
            "",
            format!("expected {{\"schema\", \"payload\"}}, found {}", kind(json)),
        );
        return None;
    };
    if object.len() != 2 || !object.contains_key("schema") || !object.contains_key("payload") {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        c.problem(
            "",
            format!(
                "with schemas enabled a message has exactly the fields schema and payload, found {keys:?}"
            ),
        );
        return None;
    }
    match ConnectSchema::from_json(&object["schema"], "schema") {
        Ok(schema) => Some((Some(schema), &object["payload"], "payload")),
        Err(e) => {
            c.problems.push(e);
            None
        }
    }
}

/// Checks a change event's value (the record value as JSON text); `with_schema` says whether
/// it embeds its schema (`schemas.enable`).
pub fn validate(value_json: &[u8], with_schema: bool) -> Result<(), ValidationError> {
    let mut c = Checker::default();
    let json: Json = match serde_json::from_slice(value_json) {
        Ok(json) => json,
        Err(e) => {
            c.problem("", format!("not JSON: {e}"));
            return c.finish();
        }
    };
    if let Some((schema, payload, path)) = unwrap(&mut c, &json, with_schema) {
        if let Some(schema) = &schema {
            check_envelope_schema(&mut c, schema);
            check_value(&mut c, schema, payload, path);
        }
        check_envelope(&mut c, payload, path);
    }
    c.finish()
}

/// Checks a change event's key (the record key as JSON text): a struct of the key columns,
/// named `*.Key` when the schema is embedded.
pub fn validate_key(key_json: &[u8], with_schema: bool) -> Result<(), ValidationError> {
    let mut c = Checker::default();
    let json: Json = match serde_json::from_slice(key_json) {
        Ok(json) => json,
        Err(e) => {
            c.problem("", format!("not JSON: {e}"));
            return c.finish();
        }
    };
    if let Some((schema, payload, path)) = unwrap(&mut c, &json, with_schema) {
        if let Some(schema) = &schema {
            if schema.schema_type != SchemaType::Struct || schema.optional {
                c.problem("schema", "a key schema is a required struct");
            }
            if !schema.logical_name().ends_with(".Key") {
                c.problem(
                    "schema.name",
                    format!(
                        "expected <prefix>.<schema>.<table>.Key, found {:?}",
                        schema.logical_name()
                    ),
                );
            }
            check_value(&mut c, schema, payload, path);
        } else if !payload.is_object() {
            c.problem(
                path,
                format!("a key is an object of the key columns, found {}", kind(payload)),
            );
        }
    }
    c.finish()
}

fn check_envelope_schema(c: &mut Checker, schema: &ConnectSchema) {
    if schema.schema_type != SchemaType::Struct || schema.optional {
        c.problem("schema", "the envelope schema is a required struct");
        return;
    }
    if !schema.logical_name().ends_with(".Envelope") {
        c.problem(
            "schema.name",
            format!(
                "expected <prefix>.<schema>.<table>.Envelope, found {:?}",
                schema.logical_name()
            ),
        );
    }
    let before = schema.field_schema("before");
    let after = schema.field_schema("after");
    for (name, row) in [("before", before), ("after", after)] {
        let path = format!("schema.fields.{name}");
        match row {
            None => c.problem(path, "the envelope has no such field"),
            Some(row) => {
                if row.schema_type != SchemaType::Struct || !row.optional {
                    c.problem(&path, "expected an optional struct");
                }
                if !row.logical_name().ends_with(".Value") {
                    c.problem(
                        &path,
                        format!(
                            "expected a schema named <prefix>.<schema>.<table>.Value, found {:?}",
                            row.logical_name()
                        ),
                    );
                }
            }
        }
    }
    if let (Some(before), Some(after)) = (before, after)
        && before != after
    {
        c.problem("schema.fields.after", "before and after have different schemas");
    }
    match schema.field_schema("source") {
        None => c.problem("schema.fields.source", "the envelope has no such field"),
        Some(source) => {
            if source.schema_type != SchemaType::Struct || source.optional {
                c.problem("schema.fields.source", "expected a required struct");
            }
            let name = source.logical_name();
            if !(name.starts_with("io.debezium.connector.") && name.ends_with(".Source")) {
                c.problem(
                    "schema.fields.source",
                    format!(
                        "expected a schema named io.debezium.connector.<connector>.Source, found {name:?}"
                    ),
                );
            }
        }
    }
    match schema.field_schema("op") {
        Some(op) if op.schema_type == SchemaType::String && !op.optional => {}
        Some(_) => c.problem("schema.fields.op", "expected a required string"),
        None => c.problem("schema.fields.op", "the envelope has no such field"),
    }
    for ts in ["ts_ms", "ts_us", "ts_ns"] {
        if let Some(t) = schema.field_schema(ts)
            && t.schema_type != SchemaType::Int64
        {
            c.problem(format!("schema.fields.{ts}"), "expected int64");
        }
    }
    if let Some(t) = schema.field_schema("transaction") {
        let ok = t.schema_type == SchemaType::Struct
            && t.optional
            && t.field_schema("id")
                .is_some_and(|s| s.schema_type == SchemaType::String)
            && t.field_schema("total_order")
                .is_some_and(|s| s.schema_type == SchemaType::Int64)
            && t.field_schema("data_collection_order")
                .is_some_and(|s| s.schema_type == SchemaType::Int64);
        if !ok {
            c.problem(
                "schema.fields.transaction",
                "expected an optional struct of id (string), total_order and data_collection_order (int64)",
            );
        }
    }
    for f in &schema.fields {
        if ![
            "before",
            "after",
            "source",
            "transaction",
            "op",
            "ts_ms",
            "ts_us",
            "ts_ns",
            "message",
        ]
        .contains(&f.name.as_str())
        {
            c.problem(
                format!("schema.fields.{}", f.name),
                "not a field of Debezium's envelope",
            );
        }
    }
}

/// Checks that `value` agrees with `schema` (`JsonConverter`'s rules).
fn check_value(c: &mut Checker, schema: &ConnectSchema, value: &Json, path: &str) {
    if value.is_null() {
        if !schema.optional && schema.default.is_none() {
            c.problem(path, format!("a required {} is null", describe(schema)));
        }
        return;
    }
    let wrong = |c: &mut Checker, expected: &str| {
        c.problem(
            path,
            format!(
                "expected {expected} for {}, found {}",
                describe(schema),
                shown(value)
            ),
        );
    };
    match schema.schema_type {
        SchemaType::Boolean => {
            if !value.is_boolean() {
                wrong(c, "a boolean");
            }
        }
        SchemaType::Int8 | SchemaType::Int16 | SchemaType::Int32 | SchemaType::Int64 => {
            let (min, max) = match schema.schema_type {
                SchemaType::Int8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
                SchemaType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                SchemaType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            match value.as_i64() {
                Some(n) if (min..=max).contains(&n) => check_logical(c, schema, value, path),
                Some(_) => wrong(c, "an integer in range"),
                None => wrong(c, "an integer"),
            }
        }
        SchemaType::Float32 | SchemaType::Float64 => {
            let special = matches!(value.as_str(), Some("NaN" | "Infinity" | "-Infinity"));
            if !value.is_number() && !special {
                wrong(c, "a number");
            }
        }
        SchemaType::Bytes => match value.as_str().map(|s| BASE64.decode(s)) {
            Some(Ok(_)) => {
                if schema.logical_name() == DECIMAL {
                    check_logical(c, schema, value, path);
                }
            }
            Some(Err(_)) => wrong(c, "base64"),
            None => wrong(c, "a base64 string"),
        },
        SchemaType::String => match value.as_str() {
            Some(s) => {
                if s == UNAVAILABLE_VALUE {
                    // An unchanged TOASTed value: Debezium's placeholder stands in any string.
                } else if schema.logical_name() == JSON && serde_json::from_str::<Json>(s).is_err() {
                    c.problem(path, "an io.debezium.data.Json value that is not JSON");
                } else if schema.logical_name() == ENUM {
                    if let Some(allowed) = schema.parameter("allowed")
                        && !allowed.split(',').any(|a| a == s)
                    {
                        c.problem(path, format!("{s:?} is not one of the enum's values {allowed}"));
                    }
                } else {
                    check_logical(c, schema, value, path);
                }
            }
            None => wrong(c, "a string"),
        },
        SchemaType::Array => match (value.as_array(), schema.items.as_deref()) {
            (Some(elements), Some(items)) => {
                for (i, e) in elements.iter().enumerate() {
                    check_value(c, items, e, &format!("{path}[{i}]"));
                }
            }
            _ => wrong(c, "an array"),
        },
        SchemaType::Map => match (value, schema.values.as_deref()) {
            (Json::Object(entries), Some(values)) => {
                for (k, v) in entries {
                    check_value(c, values, v, &join(path, k));
                }
            }
            (Json::Array(pairs), Some(values)) => {
                for (i, pair) in pairs.iter().enumerate() {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([_, v]) => check_value(c, values, v, &format!("{path}[{i}]")),
                        _ => c.problem(format!("{path}[{i}]"), "expected a [key, value] pair"),
                    }
                }
            }
            _ => wrong(c, "a map"),
        },
        SchemaType::Struct => match value.as_object() {
            Some(object) => {
                for f in &schema.fields {
                    check_value(
                        c,
                        &f.schema,
                        object.get(&f.name).unwrap_or(&Json::Null),
                        &join(path, &f.name),
                    );
                }
                for name in object.keys() {
                    if schema.field_schema(name).is_none() {
                        c.problem(
                            join(path, name),
                            "the payload has this field, its schema does not",
                        );
                    }
                }
            }
            None => wrong(c, "an object"),
        },
    }
}

/// A logical value must read as its logical type.
fn check_logical(c: &mut Checker, schema: &ConnectSchema, value: &Json, path: &str) {
    if schema.name.is_some()
        && let Err(e) = read_value(Some(schema), value, path)
    {
        c.problems.push(e);
    }
}

fn check_envelope(c: &mut Checker, payload: &Json, path: &str) {
    let Some(object) = payload.as_object() else {
        c.problem(
            path,
            format!("expected the envelope (an object), found {}", kind(payload)),
        );
        return;
    };
    let field = |name: &str| object.get(name).filter(|v| !v.is_null());
    let op = match object.get("op") {
        Some(Json::String(s)) => match Op::from_code(s) {
            Some(op) => Some(op),
            None => {
                c.problem(
                    join(path, "op"),
                    format!("expected one of c, u, d, r, t, m, found {s:?}"),
                );
                None
            }
        },
        Some(other) => {
            c.problem(
                join(path, "op"),
                format!("expected a string, found {}", kind(other)),
            );
            None
        }
        None => {
            c.problem(join(path, "op"), "missing");
            None
        }
    };
    let row = |c: &mut Checker, name: &str, required: bool| match field(name) {
        Some(Json::Object(_)) => {
            if !required {
                c.problem(
                    join(path, name),
                    format!("must be null for op {}", op.map_or("?", Op::code)),
                );
            }
        }
        Some(other) => c.problem(
            join(path, name),
            format!("expected a row (an object), found {}", kind(other)),
        ),
        None => {
            if required {
                c.problem(
                    join(path, name),
                    format!("missing; op {} needs it", op.map_or("?", Op::code)),
                );
            }
        }
    };
    match op {
        Some(Op::Create | Op::Read) => {
            row(c, "before", false);
            row(c, "after", true);
        }
        Some(Op::Update) => {
            if let Some(before) = field("before")
                && !before.is_object()
            {
                c.problem(join(path, "before"), "expected a row (an object) or null");
            }
            row(c, "after", true);
        }
        Some(Op::Delete) => {
            row(c, "before", true);
            row(c, "after", false);
        }
        Some(Op::Truncate) => {
            row(c, "before", false);
            row(c, "after", false);
        }
        Some(Op::Message) if !field("message").is_some_and(Json::is_object) => {
            c.problem(join(path, "message"), "a message event needs a message object");
        }
        Some(Op::Message) => {}
        None => {}
    }
    for ts in ["ts_ms", "ts_us", "ts_ns"] {
        if let Some(v) = field(ts)
            && v.as_i64().is_none()
        {
            c.problem(join(path, ts), format!("expected an integer, found {}", kind(v)));
        }
    }
    match field("transaction") {
        None => {}
        Some(Json::Object(t)) => {
            let tpath = join(path, "transaction");
            require(c, t, "id", Kind::String, &tpath);
            require(c, t, "total_order", Kind::Integer, &tpath);
            require(c, t, "data_collection_order", Kind::Integer, &tpath);
        }
        Some(other) => c.problem(
            join(path, "transaction"),
            format!("expected an object or null, found {}", kind(other)),
        ),
    }
    match object.get("source") {
        Some(Json::Object(source)) => check_source(c, source, &join(path, "source")),
        Some(other) => c.problem(
            join(path, "source"),
            format!("expected an object, found {}", kind(other)),
        ),
        None => c.problem(
            join(path, "source"),
            "missing; every change event has a source block",
        ),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    String,
    Integer,
}

fn require(c: &mut Checker, object: &Map<String, Json>, name: &str, kind_wanted: Kind, path: &str) {
    match object.get(name).filter(|v| !v.is_null()) {
        None => c.problem(join(path, name), "missing"),
        Some(v) => allow(c, name, kind_wanted, path, v),
    }
}

fn optional(c: &mut Checker, object: &Map<String, Json>, name: &str, kind_wanted: Kind, path: &str) {
    if let Some(v) = object.get(name).filter(|v| !v.is_null()) {
        allow(c, name, kind_wanted, path, v);
    }
}

fn allow(c: &mut Checker, name: &str, kind_wanted: Kind, path: &str, v: &Json) {
    let ok = match kind_wanted {
        Kind::String => v.is_string(),
        Kind::Integer => v.as_i64().is_some(),
    };
    if !ok {
        let expected = match kind_wanted {
            Kind::String => "a string",
            Kind::Integer => "an integer",
        };
        c.problem(
            join(path, name),
            format!("expected {expected}, found {}", shown(v)),
        );
    }
}

fn check_source(c: &mut Checker, source: &Map<String, Json>, path: &str) {
    for name in ["version", "connector", "name", "db"] {
        require(c, source, name, Kind::String, path);
    }
    require(c, source, "ts_ms", Kind::Integer, path);
    optional(c, source, "ts_us", Kind::Integer, path);
    optional(c, source, "ts_ns", Kind::Integer, path);
    optional(c, source, "sequence", Kind::String, path);
    match source.get("snapshot") {
        None | Some(Json::Null) | Some(Json::Bool(_)) => {}
        Some(Json::String(s)) if SnapshotMarker::parse(s).is_some() => {}
        Some(other) => c.problem(
            join(path, "snapshot"),
            format!(
                "expected one of {} (or a boolean), found {}",
                SnapshotMarker::ALLOWED,
                shown(other)
            ),
        ),
    }
    match source.get("connector").and_then(Json::as_str) {
        Some("postgresql") => {
            require(c, source, "schema", Kind::String, path);
            require(c, source, "table", Kind::String, path);
            for name in ["txId", "lsn", "xmin"] {
                optional(c, source, name, Kind::Integer, path);
            }
        }
        Some("mysql" | "mariadb") => {
            optional(c, source, "table", Kind::String, path);
            require(c, source, "server_id", Kind::Integer, path);
            require(c, source, "file", Kind::String, path);
            require(c, source, "pos", Kind::Integer, path);
            require(c, source, "row", Kind::Integer, path);
            optional(c, source, "gtid", Kind::String, path);
            optional(c, source, "thread", Kind::Integer, path);
            optional(c, source, "query", Kind::String, path);
        }
        Some("sqlserver") => {
            require(c, source, "schema", Kind::String, path);
            require(c, source, "table", Kind::String, path);
            optional(c, source, "change_lsn", Kind::String, path);
            optional(c, source, "commit_lsn", Kind::String, path);
            optional(c, source, "event_serial_no", Kind::Integer, path);
        }
        Some("cockroachdb") => {
            for name in ["schema", "table", "cluster", "resolved_ts", "ts_hlc"] {
                optional(c, source, name, Kind::String, path);
            }
        }
        _ => {}
    }
}
