//! Kafka messages holding Debezium change events, read back into tarn's rows.
//!
//! [`decode`] takes a record's key, value and headers as the consumer received them and
//! returns either a tombstone (no value: the compaction marker after a delete, which carries
//! no change) or a [`DecodedChange`]: the operation, the table (from `source`), `before` and
//! `after` as column → PostgreSQL text cell, the source position for deduplication, the
//! snapshot marker, and — when the message embeds its schema — the table's [`TableSpec`].
//!
//! It is lenient the way a consumer of other people's topics must be (research on Debezium's
//! real output, and its docs' examples, which differ):
//! - the `{"schema", "payload"}` wrapper is detected (an object with exactly those two keys),
//!   so `schemas.enable` may be on or off, for keys and values independently;
//! - `source.snapshot` may be a boolean (1.x, the docs) or a string (2.x, 3.x);
//! - `before` may be null on updates (PostgreSQL's default replica identity), `before` and
//!   `after` may be missing on truncates, `transaction`, `ts_us`, `ts_ns`, `sequence` may be
//!   missing (older versions), numbers in `source` may be strings (the SQL Server docs'
//!   `"event_serial_no": "1"`);
//! - payload fields the schema does not list are read by their JSON kind.
//!
//! Values are read with the embedded schema when there is one, else with the schemas tarn's
//! encoder writes for a given table spec (the `hint`), else by their JSON kind (strings as
//! they are, numbers as written, booleans as `t`/`f`, arrays as array literals). Without a
//! schema or a hint, a decimal written as base64 cannot be told from a string: give the hint.
//!
//! Contract: any input — random bytes included — returns an error or a result, never panics;
//! an error names the field path (`value.payload.after.amount`) and what was expected.

use std::cmp::Ordering;

use serde_json::{Map, Value as Json};

use super::connect::{ConnectSchema, SchemaType, kind};
use super::types::{column_schema, column_type_of};
use super::values::{read_value, shown};
use super::{CodecError, NEW_KEY_HEADER, OLD_KEY_HEADER, Op, SnapshotMarker, TransactionBlock, join};
use crate::source::{ColumnSpec, KeyKind, Row, TableSpec};
use crate::value::Value;

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A change event.
    Change(Box<DecodedChange>),
    /// A tombstone: the key of a deleted row, no value. It carries no change (the delete
    /// before it did); compaction uses it to drop the key.
    Tombstone {
        /// The key, if the record had one.
        key: Option<DecodedRow>,
    },
}

/// A row (or key) read from a message: column names and their cells, in schema order (by
/// name when the message had no schema and no hint was given).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedRow {
    /// `(column, cell)` pairs.
    pub columns: Vec<(String, Value)>,
}

impl DecodedRow {
    /// The cell of `column`.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    /// The cell of `column` as text (`None` for NULL, unchanged and absent cells).
    pub fn text(&self, column: &str) -> Option<&str> {
        self.get(column)
            .and_then(Value::as_text)
            .and_then(|t| std::str::from_utf8(t).ok())
    }

    /// The row in `spec`'s column order; columns the message did not carry are NULL. A
    /// column the spec does not have is an error naming it.
    pub fn to_row(&self, spec: &TableSpec) -> Result<Row, CodecError> {
        let mut row = vec![Value::Null; spec.columns.len()];
        for (name, value) in &self.columns {
            let i = spec.columns.iter().position(|c| &c.name == name).ok_or_else(|| {
                CodecError::new(
                    name,
                    format!(
                        "the event has column {name:?}, which table {} does not have",
                        spec.qualified()
                    ),
                )
            })?;
            row[i] = value.clone();
        }
        Ok(row)
    }
}

/// Which table an event belongs to, from its `source` block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableIdentity {
    /// `source.connector` (`postgresql`, `mysql`, `sqlserver`, `cockroachdb`, ...); inferred
    /// from the source schema's name or fields when missing.
    pub connector: String,
    /// `source.name`: the connector's topic prefix (logical server name).
    pub name: Option<String>,
    /// `source.db`.
    pub db: Option<String>,
    /// `source.schema` (PostgreSQL, SQL Server, CockroachDB; MySQL has none).
    pub schema: Option<String>,
    /// `source.table`.
    pub table: Option<String>,
}

/// Where in its source's stream an event was read: what deduplication compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePosition {
    /// PostgreSQL: the change's LSN and transaction id.
    Postgres {
        /// `source.lsn`.
        lsn: Option<u64>,
        /// `source.txId`.
        tx_id: Option<i64>,
    },
    /// MySQL and MariaDB: the binlog coordinates.
    MySql {
        /// `source.file`, the binlog file.
        file: String,
        /// `source.pos`, the event's position in it.
        pos: i64,
        /// `source.row`, the row within the binlog event.
        row: i64,
        /// `source.gtid`.
        gtid: Option<String>,
    },
    /// SQL Server: log sequence numbers (`00000027:00000758:0003`).
    SqlServer {
        /// `source.commit_lsn`.
        commit_lsn: Option<String>,
        /// `source.change_lsn`.
        change_lsn: Option<String>,
        /// `source.event_serial_no`.
        event_serial_no: Option<i64>,
    },
    /// CockroachDB: the HLC timestamp `wall.logical` (`source.ts_hlc`).
    CockroachDb {
        /// `source.ts_hlc`.
        hlc: Option<String>,
    },
    /// Another connector: its `sequence`, if any.
    Other {
        /// `source.sequence`.
        sequence: Option<String>,
    },
}

impl SourcePosition {
    /// Orders two positions of the same source: `Some(Less)` if `self` was read before
    /// `other`. `None` when they cannot be compared (different kinds, missing fields).
    pub fn compare(&self, other: &SourcePosition) -> Option<Ordering> {
        use SourcePosition::*;
        match (self, other) {
            (Postgres { lsn: Some(a), .. }, Postgres { lsn: Some(b), .. }) => Some(a.cmp(b)),
            (
                MySql {
                    file: fa,
                    pos: pa,
                    row: ra,
                    ..
                },
                MySql {
                    file: fb,
                    pos: pb,
                    row: rb,
                    ..
                },
            ) => Some(
                binlog_index(fa)?
                    .cmp(&binlog_index(fb)?)
                    .then(pa.cmp(pb))
                    .then(ra.cmp(rb)),
            ),
            (
                SqlServer {
                    commit_lsn: Some(ca),
                    change_lsn: la,
                    event_serial_no: sa,
                },
                SqlServer {
                    commit_lsn: Some(cb),
                    change_lsn: lb,
                    event_serial_no: sb,
                },
            ) => {
                // Fixed-width hexadecimal: text order is numeric order.
                let norm = |s: &str| s.to_ascii_lowercase();
                Some(
                    norm(ca)
                        .cmp(&norm(cb))
                        .then_with(|| la.as_deref().map(norm).cmp(&lb.as_deref().map(norm)))
                        .then(sa.cmp(sb)),
                )
            }
            (CockroachDb { hlc: Some(a) }, CockroachDb { hlc: Some(b) }) => {
                Some(hlc_parts(a)?.cmp(&hlc_parts(b)?))
            }
            _ => None,
        }
    }
}

/// The number of a binlog file (`mysql-bin.000003` → 3).
fn binlog_index(file: &str) -> Option<u64> {
    file.rsplit('.').next()?.parse().ok()
}

/// `wall.logical` as numbers.
fn hlc_parts(hlc: &str) -> Option<(u128, u64)> {
    let (wall, logical) = hlc.split_once('.').unwrap_or((hlc, "0"));
    Some((wall.parse().ok()?, logical.parse().ok()?))
}

/// The `__debezium.newkey` / `__debezium.oldkey` header of a primary-key change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// On the delete of the old key: the new key.
    NewKey(DecodedRow),
    /// On the create of the new key: the old key.
    OldKey(DecodedRow),
}

/// A decoded change event.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedChange {
    /// The operation.
    pub op: Op,
    /// The table.
    pub table: TableIdentity,
    /// The record key (the primary key), if any.
    pub key: Option<DecodedRow>,
    /// The row before the change (deletes; updates under a full replica identity).
    pub before: Option<DecodedRow>,
    /// The row after the change (creates, reads, updates).
    pub after: Option<DecodedRow>,
    /// The source position.
    pub position: SourcePosition,
    /// The snapshot marker.
    pub snapshot: SnapshotMarker,
    /// `source.ts_ms`: when the change was made in the database.
    pub source_ts_ms: Option<i64>,
    /// `ts_ms`: when the connector processed it.
    pub ts_ms: Option<i64>,
    /// The `transaction` block.
    pub transaction: Option<TransactionBlock>,
    /// The key-change header, if the event is half of a primary-key change.
    pub key_change: Option<KeyChange>,
    /// The table's spec, inferred from the embedded schema (`None` without one). Its id is 0;
    /// key columns come from the key's schema or payload.
    pub spec: Option<TableSpec>,
}

/// A message's JSON split into schema and payload.
struct Parsed {
    schema: Option<ConnectSchema>,
    payload: Json,
}

fn parse_json(bytes: &[u8], path: &str) -> Result<Parsed, CodecError> {
    let json: Json = serde_json::from_slice(bytes).map_err(|e| {
        CodecError::new(
            path,
            format!("not JSON ({e}); a Debezium event is a JSON document"),
        )
    })?;
    match json {
        Json::Object(mut object)
            if object.len() == 2 && object.contains_key("schema") && object.contains_key("payload") =>
        {
            let payload = object.remove("payload").unwrap_or(Json::Null);
            let schema = match object.remove("schema") {
                Some(Json::Null) | None => None,
                Some(schema) => Some(ConnectSchema::from_json(&schema, &join(path, "schema"))?),
            };
            Ok(Parsed { schema, payload })
        }
        payload => Ok(Parsed {
            schema: None,
            payload,
        }),
    }
}

/// Decodes one Kafka record. `headers` are the record's headers (`None` values allowed);
/// `hint` is the table's spec when the caller knows it, to read messages without schemas.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    hint: Option<&TableSpec>,
) -> Result<Decoded, CodecError> {
    let key = match key.filter(|k| !k.is_empty()) {
        Some(bytes) => {
            let parsed = parse_json(bytes, "key")?;
            Some(parsed)
        }
        None => None,
    };
    let key_path = if key.as_ref().is_some_and(|k| k.schema.is_some()) {
        "key.payload"
    } else {
        "key"
    };
    let value = match value.filter(|v| !v.is_empty()) {
        None => None,
        Some(bytes) => {
            let parsed = parse_json(bytes, "value")?;
            (!(parsed.payload.is_null() && parsed.schema.is_none())).then_some(parsed)
        }
    };
    let Some(value) = value else {
        let key = match &key {
            Some(k) => read_key(k, hint, key_path)?,
            None => None,
        };
        return Ok(Decoded::Tombstone { key });
    };
    let value_path = if value.schema.is_some() {
        "value.payload"
    } else {
        "value"
    };
    let payload = value.payload.as_object().ok_or_else(|| {
        CodecError::new(
            value_path,
            format!(
                "expected the change event envelope (an object), found {}",
                kind(&value.payload)
            ),
        )
    })?;

    let op_path = join(value_path, "op");
    let op_text = payload.get("op").ok_or_else(|| {
        CodecError::new(
            &op_path,
            "missing; every change event has an op (c, u, d, r, t, m)",
        )
    })?;
    let op = op_text.as_str().and_then(Op::from_code).ok_or_else(|| {
        CodecError::new(
            &op_path,
            format!("expected one of c, u, d, r, t, m, found {}", shown(op_text)),
        )
    })?;

    let source_path = join(value_path, "source");
    let source_schema = value.schema.as_ref().and_then(|s| s.field_schema("source"));
    let source = match payload.get("source") {
        Some(Json::Object(source)) => source,
        Some(other) => {
            return Err(CodecError::new(
                &source_path,
                format!("expected an object, found {}", kind(other)),
            ));
        }
        None => {
            return Err(CodecError::new(
                &source_path,
                "missing; every change event has a source block",
            ));
        }
    };
    let table = table_identity(source, source_schema, &source_path)?;
    let position = source_position(&table.connector, source, &source_path)?;
    let snapshot = match source.get("snapshot") {
        None | Some(Json::Null) => SnapshotMarker::False,
        Some(Json::Bool(b)) => {
            if *b {
                SnapshotMarker::True
            } else {
                SnapshotMarker::False
            }
        }
        Some(Json::String(s)) => SnapshotMarker::parse(s).ok_or_else(|| {
            CodecError::new(
                join(&source_path, "snapshot"),
                format!("expected one of {}, found {s:?}", SnapshotMarker::ALLOWED),
            )
        })?,
        Some(other) => {
            return Err(CodecError::new(
                join(&source_path, "snapshot"),
                format!("expected a string or a boolean, found {}", kind(other)),
            ));
        }
    };

    // The row schema: embedded, else the hint's.
    let row_schema = value.schema.as_ref().and_then(|s| {
        s.field_schema("after")
            .or_else(|| s.field_schema("before"))
            .filter(|r| r.schema_type == SchemaType::Struct)
            .cloned()
    });
    let hint_schema = hint.map(hint_struct);
    let schema_for_rows = row_schema.as_ref().or(hint_schema.as_ref());
    let row = |field: &str| -> Result<Option<DecodedRow>, CodecError> {
        match payload.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(json) => read_row(json, schema_for_rows, &join(value_path, field)).map(Some),
        }
    };
    let before = row("before")?;
    let after = row("after")?;
    match op {
        Op::Create | Op::Read if after.is_none() => {
            return Err(CodecError::new(
                join(value_path, "after"),
                format!("an {op} event needs the new row in after"),
            ));
        }
        Op::Update if after.is_none() => {
            return Err(CodecError::new(
                join(value_path, "after"),
                "an update event needs after",
            ));
        }
        Op::Delete if before.is_none() && key.is_none() => {
            return Err(CodecError::new(
                join(value_path, "before"),
                "a delete event needs the old row in before, or a key",
            ));
        }
        _ => {}
    }

    let key_row = match &key {
        Some(k) => read_key(k, hint, key_path)?,
        None => None,
    };
    let spec = row_schema
        .as_ref()
        .map(|schema| infer_spec(schema, &table, key.as_ref(), key_row.as_ref()));

    let mut key_change = None;
    for (name, bytes) in headers {
        let make: fn(DecodedRow) -> KeyChange = match *name {
            NEW_KEY_HEADER => KeyChange::NewKey,
            OLD_KEY_HEADER => KeyChange::OldKey,
            _ => continue,
        };
        let path = format!("headers.{name}");
        let bytes = bytes.ok_or_else(|| CodecError::new(&path, "the key-change header has no value"))?;
        let parsed = parse_json(bytes, &path)?;
        let row = read_key(&parsed, hint, &path)?
            .ok_or_else(|| CodecError::new(&path, "the key-change header holds no key"))?;
        key_change = Some(make(row));
    }

    let int = |object: &Map<String, Json>, field: &str, path: &str| -> Result<Option<i64>, CodecError> {
        lenient_i64(object.get(field), &join(path, field))
    };
    let transaction = match payload.get("transaction") {
        None | Some(Json::Null) => None,
        Some(Json::Object(t)) => {
            let path = join(value_path, "transaction");
            Some(TransactionBlock {
                id: match t.get("id") {
                    Some(Json::String(s)) => s.clone(),
                    other => {
                        return Err(CodecError::new(
                            join(&path, "id"),
                            format!("expected a string, found {}", other.map_or("nothing", kind)),
                        ));
                    }
                },
                total_order: int(t, "total_order", &path)?.unwrap_or(0),
                data_collection_order: int(t, "data_collection_order", &path)?.unwrap_or(0),
            })
        }
        Some(other) => {
            return Err(CodecError::new(
                join(value_path, "transaction"),
                format!("expected an object, found {}", kind(other)),
            ));
        }
    };

    Ok(Decoded::Change(Box::new(DecodedChange {
        op,
        table,
        key: key_row,
        before,
        after,
        position,
        snapshot,
        source_ts_ms: int(source, "ts_ms", &source_path)?,
        ts_ms: int(payload, "ts_ms", value_path)?,
        transaction,
        key_change,
        spec,
    })))
}

/// The struct schema tarn's encoder writes for `spec`'s rows.
fn hint_struct(spec: &TableSpec) -> ConnectSchema {
    ConnectSchema::struct_of(
        spec.columns
            .iter()
            .map(|c| column_schema(c).field(&c.name))
            .collect(),
    )
}

fn read_key(parsed: &Parsed, hint: Option<&TableSpec>, path: &str) -> Result<Option<DecodedRow>, CodecError> {
    if parsed.payload.is_null() {
        return Ok(None);
    }
    let hint_schema = hint.map(|spec| {
        ConnectSchema::struct_of(
            spec.key_columns()
                .into_iter()
                .map(|i| {
                    column_schema(&spec.columns[i])
                        .optional(false)
                        .field(&spec.columns[i].name)
                })
                .collect(),
        )
    });
    let schema = parsed
        .schema
        .as_ref()
        .filter(|s| s.schema_type == SchemaType::Struct)
        .or(hint_schema.as_ref());
    read_row(&parsed.payload, schema, path).map(Some)
}

fn read_row(json: &Json, schema: Option<&ConnectSchema>, path: &str) -> Result<DecodedRow, CodecError> {
    let object = json
        .as_object()
        .ok_or_else(|| CodecError::new(path, format!("expected a row (an object), found {}", kind(json))))?;
    let mut columns = Vec::with_capacity(object.len());
    if let Some(schema) = schema {
        for field in &schema.fields {
            if let Some(v) = object.get(&field.name) {
                columns.push((
                    field.name.clone(),
                    read_value(Some(&field.schema), v, &join(path, &field.name))?,
                ));
            }
        }
        for (name, v) in object {
            if schema.field_schema(name).is_none() {
                columns.push((name.clone(), read_value(None, v, &join(path, name))?));
            }
        }
    } else {
        for (name, v) in object {
            columns.push((name.clone(), read_value(None, v, &join(path, name))?));
        }
    }
    Ok(DecodedRow { columns })
}

fn string_field(source: &Map<String, Json>, field: &str) -> Option<String> {
    match source.get(field)? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn lenient_i64(json: Option<&Json>, path: &str) -> Result<Option<i64>, CodecError> {
    match json {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| CodecError::new(path, format!("expected an integer, found {n}"))),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| CodecError::new(path, format!("expected an integer, found the string {s:?}"))),
        Some(other) => Err(CodecError::new(
            path,
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

fn table_identity(
    source: &Map<String, Json>,
    schema: Option<&ConnectSchema>,
    path: &str,
) -> Result<TableIdentity, CodecError> {
    let connector = string_field(source, "connector")
        .or_else(|| {
            // io.debezium.connector.<connector>.Source
            schema
                .and_then(|s| s.name.as_deref())
                .and_then(|n| n.strip_prefix("io.debezium.connector."))
                .and_then(|n| n.strip_suffix(".Source"))
                .map(str::to_string)
        })
        .or_else(|| {
            if source.contains_key("lsn") {
                Some("postgresql".into())
            } else if source.contains_key("file") && source.contains_key("pos") {
                Some("mysql".into())
            } else if source.contains_key("change_lsn") || source.contains_key("commit_lsn") {
                Some("sqlserver".into())
            } else {
                None
            }
        })
        .ok_or_else(|| {
            CodecError::new(
                join(path, "connector"),
                "missing, and the source block does not say which connector wrote it",
            )
        })?;
    Ok(TableIdentity {
        connector,
        name: string_field(source, "name"),
        db: string_field(source, "db"),
        schema: string_field(source, "schema"),
        table: string_field(source, "table"),
    })
}

fn source_position(
    connector: &str,
    source: &Map<String, Json>,
    path: &str,
) -> Result<SourcePosition, CodecError> {
    let int = |field: &str| lenient_i64(source.get(field), &join(path, field));
    Ok(match connector {
        "postgresql" => SourcePosition::Postgres {
            lsn: int("lsn")?
                .map(|l| {
                    u64::try_from(l)
                        .map_err(|_| CodecError::new(join(path, "lsn"), format!("{l} is not an LSN")))
                })
                .transpose()?,
            tx_id: int("txId")?,
        },
        "mysql" | "mariadb" => SourcePosition::MySql {
            file: string_field(source, "file").ok_or_else(|| {
                CodecError::new(join(path, "file"), "a MySQL source block needs the binlog file")
            })?,
            pos: int("pos")?.ok_or_else(|| {
                CodecError::new(
                    join(path, "pos"),
                    "a MySQL source block needs the binlog position",
                )
            })?,
            row: int("row")?.unwrap_or(0),
            gtid: string_field(source, "gtid"),
        },
        "sqlserver" => SourcePosition::SqlServer {
            commit_lsn: string_field(source, "commit_lsn"),
            change_lsn: string_field(source, "change_lsn"),
            event_serial_no: int("event_serial_no")?,
        },
        "cockroachdb" => SourcePosition::CockroachDb {
            hlc: string_field(source, "ts_hlc"),
        },
        _ => SourcePosition::Other {
            sequence: string_field(source, "sequence"),
        },
    })
}

/// The table spec of a row schema: one column per field, the key from the key's schema or
/// payload.
fn infer_spec(
    row_schema: &ConnectSchema,
    table: &TableIdentity,
    key: Option<&Parsed>,
    key_row: Option<&DecodedRow>,
) -> TableSpec {
    let key_names: Vec<String> = match key.and_then(|k| k.schema.as_ref()) {
        Some(schema) if schema.schema_type == SchemaType::Struct => {
            schema.fields.iter().map(|f| f.name.clone()).collect()
        }
        _ => key_row
            .map(|k| k.columns.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default(),
    };
    let columns: Vec<ColumnSpec> = row_schema
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (column_type, type_oid, type_name) = column_type_of(&f.schema);
            ColumnSpec {
                name: f.name.clone(),
                column_type,
                key: key_names.contains(&f.name),
                not_null: !f.schema.optional,
                type_oid,
                type_name,
                attnum: i16::try_from(i + 1).unwrap_or(0),
            }
        })
        .collect();
    let key_kind = if columns.iter().any(|c| c.key) {
        KeyKind::PrimaryKey
    } else {
        KeyKind::FullRow
    };
    TableSpec {
        id: 0,
        schema: table
            .schema
            .clone()
            .or_else(|| table.db.clone())
            .unwrap_or_default(),
        name: table.table.clone().unwrap_or_default(),
        columns,
        key_kind,
    }
}
