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
//! What a consumer should take from a delete: the key. Under PostgreSQL's default replica
//! identity Debezium's `before` holds the key columns and, for the other required columns,
//! their defaults or type fallbacks (0, `""`), not the deleted values.
//!
//! Contract: any input — random bytes included — returns an error or a result, never panics;
//! an error names the field path (`value.payload.after.amount`) and what was expected.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
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

    /// [`DecodedRow::to_row`], taking the cells instead of copying them.
    pub fn into_row(self, spec: &TableSpec) -> Result<Row, CodecError> {
        let mut row = vec![Value::Null; spec.columns.len()];
        for (i, (name, value)) in self.columns.into_iter().enumerate() {
            // Rows usually come in the spec's order: try the same place first.
            let at = match spec.columns.get(i) {
                Some(c) if c.name == name => i,
                _ => spec.columns.iter().position(|c| c.name == name).ok_or_else(|| {
                    CodecError::new(
                        &name,
                        format!(
                            "the event has column {name:?}, which table {} does not have",
                            spec.qualified()
                        ),
                    )
                })?,
            };
            row[at] = value;
        }
        Ok(row)
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
    pub spec: Option<Arc<TableSpec>>,
}

/// A message's JSON split into schema and payload.
struct Parsed {
    schema: Option<Arc<ConnectSchema>>,
    payload: Json,
}

/// How many distinct schemas (and inferred specs) a [`Decoder`] keeps; past that it forgets
/// the least recently used.
const MAX_CACHED_SCHEMAS: usize = 64;

/// Decodes messages, keeping what it parsed of their schemas: a topic repeats one schema
/// (a few kilobytes of JSON) in every message, so each distinct schema text is parsed, and
/// its table spec inferred, once. [`decode`] is a one-off `Decoder`.
///
/// A message written as `JsonConverter` writes it — `{"schema":` then a schema the decoder
/// knows, byte for byte, then `,"payload":` — is split by comparing its bytes with the known
/// schema's text: the schema is neither parsed nor scanned again, only the payload is, and
/// that straight from its text into rows ([`super::envelope`], the direct path). Other
/// layouts (whitespace, fields in another order, a schema not seen yet) and anything the
/// direct path declines take the general path: the JSON parsed into a `serde_json::Value`
/// and read from there.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Schemas by their JSON text, most recently used first.
    schemas: Vec<KnownSchema>,
    /// Inferred specs, most recently used first, with the envelope schema holding the row
    /// schema they were inferred from (kept alive, so that its address identifies it).
    specs: Vec<CachedSpec>,
    /// The last hint and the row and key schemas tarn writes for it.
    hint: Option<Arc<HintSchemas>>,
}

/// A schema the decoder has parsed.
#[derive(Debug)]
struct KnownSchema {
    /// Its JSON text, as the message had it.
    text: Box<[u8]>,
    schema: Arc<ConnectSchema>,
    /// Whether the direct path can read rows with it: the struct a row is read with (the
    /// schema itself for a key, the `after` struct for an envelope) has no name twice.
    direct: Direct,
}

/// Whether the direct path can read a key, or a change event, with a schema.
#[derive(Debug, Clone, Copy)]
struct Direct {
    key: bool,
    envelope: bool,
}

impl Direct {
    fn of(schema: &ConnectSchema) -> Self {
        Self {
            key: distinct_names(schema),
            envelope: row_schema_of(schema).is_none_or(distinct_names),
        }
    }
}

/// Whether no two fields of `schema` have the same name.
fn distinct_names(schema: &ConnectSchema) -> bool {
    let mut names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.windows(2).all(|w| w[0] != w[1])
}

/// A hint and the schemas tarn's encoder writes for it.
#[derive(Debug)]
struct HintSchemas {
    spec: TableSpec,
    row: ConnectSchema,
    key: ConnectSchema,
    /// No column name twice (the direct path reads rows only then).
    distinct: bool,
}

/// A spec inferred from a row schema for one table and key.
#[derive(Debug)]
struct CachedSpec {
    /// Kept alive, so that the address of the row schema inside it is not reused.
    _envelope: Arc<ConnectSchema>,
    /// The row schema's address (inside `envelope`), only compared.
    row_schema: usize,
    schema: Option<String>,
    db: Option<String>,
    table: Option<String>,
    key: Vec<String>,
    spec: Arc<TableSpec>,
}

/// Whether JSON text starts as `JsonConverter`'s `{"schema": ..., "payload": ...}` wrapper does.
fn looks_wrapped(bytes: &[u8]) -> bool {
    let mut rest = bytes.iter().skip_while(|b| b.is_ascii_whitespace());
    if rest.next() != Some(&b'{') {
        return false;
    }
    let rest: Vec<u8> = rest
        .skip_while(|b| b.is_ascii_whitespace())
        .take(9)
        .copied()
        .collect();
    rest.starts_with(b"\"schema\"") || rest.starts_with(b"\"payload\"")
}

/// Moves entry `i` of a most-recently-used list to the front.
fn touch<T>(list: &mut [T], i: usize) {
    if i > 0 {
        list[..=i].rotate_right(1);
    }
}

/// A message split for the direct path: its schema (if wrapped) and its payload's text.
struct Split<'b> {
    schema: Option<Arc<ConnectSchema>>,
    payload: &'b [u8],
}

impl Decoder {
    /// A decoder with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// `bytes` as `{"schema":<a known schema>,"payload":<payload>}`: the schema, what the
    /// direct path can do with it, and the payload's bytes, without looking at the schema's.
    fn split_known<'b>(&mut self, bytes: &'b [u8]) -> Option<(Arc<ConnectSchema>, Direct, &'b [u8])> {
        let rest = bytes.strip_prefix(br#"{"schema":"#)?;
        let (i, payload) = self.schemas.iter().enumerate().find_map(|(i, known)| {
            let payload = rest.strip_prefix(&*known.text)?.strip_prefix(br#","payload":"#)?;
            Some((i, payload))
        })?;
        let payload = payload.trim_ascii_end().strip_suffix(b"}")?;
        touch(&mut self.schemas, i);
        Some((self.schemas[0].schema.clone(), self.schemas[0].direct, payload))
    }

    /// `bytes` split for the direct path (`key`: a record key, else a value); `None` when it
    /// needs the general path.
    fn split_direct<'b>(&mut self, bytes: &'b [u8], key: bool) -> Option<Split<'b>> {
        if let Some((schema, direct, payload)) = self.split_known(bytes) {
            let readable = if key { direct.key } else { direct.envelope };
            return readable.then_some(Split {
                schema: Some(schema),
                payload,
            });
        }
        // A wrapper around a schema not seen yet, or not in JsonConverter's layout.
        (!looks_wrapped(bytes)).then_some(Split {
            schema: None,
            payload: bytes,
        })
    }

    fn parse(&mut self, bytes: &[u8], path: &str) -> Result<Parsed, CodecError> {
        let not_json = |e: serde_json::Error| {
            CodecError::new(
                path,
                format!("not JSON ({e}); a Debezium event is a JSON document"),
            )
        };
        if let Some((schema, _, payload)) = self.split_known(bytes)
            && let Ok(payload) = serde_json::from_slice::<Json>(payload)
        {
            // (A payload that does not parse alone takes the general path, for its error.)
            return Ok(Parsed {
                schema: Some(schema),
                payload,
            });
        }
        if looks_wrapped(bytes)
            && let Ok(object) = serde_json::from_slice::<HashMap<String, &RawValue>>(bytes)
            && object.len() == 2
            && let (Some(schema), Some(payload)) = (object.get("schema"), object.get("payload"))
        {
            let payload: Json = serde_json::from_str(payload.get()).map_err(not_json)?;
            let schema = match schema.get() {
                "null" => None,
                text => Some(self.schema(text, &join(path, "schema"))?),
            };
            return Ok(Parsed { schema, payload });
        }
        let payload: Json = serde_json::from_slice(bytes).map_err(not_json)?;
        if let Json::Object(object) = &payload
            && object.len() == 2
            && let (Some(schema), Some(inner)) = (object.get("schema"), object.get("payload"))
        {
            // A wrapper with its fields in another order.
            let schema = match schema {
                Json::Null => None,
                schema => Some(self.schema(&schema.to_string(), &join(path, "schema"))?),
            };
            return Ok(Parsed {
                schema,
                payload: inner.clone(),
            });
        }
        Ok(Parsed {
            schema: None,
            payload,
        })
    }

    fn schema(&mut self, text: &str, path: &str) -> Result<Arc<ConnectSchema>, CodecError> {
        if let Some(i) = self.schemas.iter().position(|k| *k.text == *text.as_bytes()) {
            touch(&mut self.schemas, i);
            return Ok(self.schemas[0].schema.clone());
        }
        let json: Json =
            serde_json::from_str(text).map_err(|e| CodecError::new(path, format!("not JSON ({e})")))?;
        let schema = Arc::new(ConnectSchema::from_json(&json, path)?);
        self.schemas.truncate(MAX_CACHED_SCHEMAS - 1);
        self.schemas.insert(
            0,
            KnownSchema {
                text: text.as_bytes().into(),
                direct: Direct::of(&schema),
                schema: schema.clone(),
            },
        );
        Ok(schema)
    }

    /// The spec of `row_schema` (inside `envelope`) for `table` keyed by `key`, inferred once.
    fn spec(
        &mut self,
        envelope: &Arc<ConnectSchema>,
        row_schema: &ConnectSchema,
        table: &TableIdentity,
        key: &[&str],
    ) -> Arc<TableSpec> {
        let found = self.specs.iter().position(|c| {
            c.row_schema == std::ptr::from_ref(row_schema) as usize
                && c.schema == table.schema
                && c.db == table.db
                && c.table == table.table
                && c.key.iter().map(String::as_str).eq(key.iter().copied())
        });
        if let Some(i) = found {
            touch(&mut self.specs, i);
            return self.specs[0].spec.clone();
        }
        let key: Vec<String> = key.iter().map(|k| (*k).to_string()).collect();
        let spec = Arc::new(infer_spec(row_schema, table, &key));
        self.specs.truncate(MAX_CACHED_SCHEMAS - 1);
        self.specs.insert(
            0,
            CachedSpec {
                _envelope: envelope.clone(),
                row_schema: std::ptr::from_ref(row_schema) as usize,
                schema: table.schema.clone(),
                db: table.db.clone(),
                table: table.table.clone(),
                key,
                spec: spec.clone(),
            },
        );
        spec
    }

    /// The row and key schemas tarn's encoder writes for `hint`.
    fn hint_schemas(&mut self, hint: Option<&TableSpec>) -> Option<Arc<HintSchemas>> {
        let hint = hint?;
        if self.hint.as_ref().is_none_or(|cached| cached.spec != *hint) {
            let mut names: Vec<&str> = hint.columns.iter().map(|c| c.name.as_str()).collect();
            names.sort_unstable();
            self.hint = Some(Arc::new(HintSchemas {
                spec: hint.clone(),
                row: hint_struct(hint),
                key: hint_key_struct(hint),
                distinct: names.windows(2).all(|w| w[0] != w[1]),
            }));
        }
        self.hint.clone()
    }

    /// Decodes one Kafka record. `headers` are the record's headers (`None` values allowed);
    /// `hint` is the table's spec when the caller knows it, to read messages without schemas.
    pub fn decode(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        hint: Option<&TableSpec>,
    ) -> Result<Decoded, CodecError> {
        match self.decode_direct(key, value, headers, hint) {
            Some(decoded) => Ok(decoded),
            None => self.decode_general(key, value, headers, hint),
        }
    }

    /// [`Decoder::decode`] by the direct path ([`super::envelope`]): `None` when the record
    /// needs the general path (see that module's contract).
    pub(crate) fn decode_direct(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        hint: Option<&TableSpec>,
    ) -> Option<Decoded> {
        if headers
            .iter()
            .any(|(name, _)| *name == NEW_KEY_HEADER || *name == OLD_KEY_HEADER)
        {
            return None;
        }
        let hint = self.hint_schemas(hint);
        if hint.as_ref().is_some_and(|h| !h.distinct) {
            return None;
        }
        let key = match key.filter(|k| !k.is_empty()) {
            Some(bytes) => Some(self.split_direct(bytes, true)?),
            None => None,
        };
        let value = match value.filter(|v| !v.is_empty()) {
            Some(bytes) => Some(self.split_direct(bytes, false)?),
            None => None,
        };
        let key_schema = key.as_ref().and_then(|k| k.schema.as_deref());
        let key_row = match &key {
            Some(k) => {
                let schema = key_schema
                    .filter(|s| s.schema_type == SchemaType::Struct)
                    .or(hint.as_deref().map(|h| &h.key));
                super::envelope::read_key(k.payload, schema, k.schema.is_none())?
            }
            None => None,
        };
        let Some(value) = value else {
            return Some(Decoded::Tombstone { key: key_row });
        };
        let envelope = value.schema.as_deref();
        let rows = envelope
            .and_then(row_schema_of)
            .or(hint.as_deref().map(|h| &h.row));
        let mut change = super::envelope::read_change(value.payload, envelope, rows, key_row)?;
        self.attach_spec(&mut change, value.schema.as_ref(), key_schema);
        Some(Decoded::Change(Box::new(change)))
    }

    /// [`Decoder::decode`] by the general path: the JSON parsed into `serde_json::Value`s.
    pub(crate) fn decode_general(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        hint: Option<&TableSpec>,
    ) -> Result<Decoded, CodecError> {
        let key = match key.filter(|k| !k.is_empty()) {
            Some(bytes) => Some(self.parse(bytes, "key")?),
            None => None,
        };
        let value = match value.filter(|v| !v.is_empty()) {
            None => None,
            Some(bytes) => {
                let parsed = self.parse(bytes, "value")?;
                (!(parsed.payload.is_null() && parsed.schema.is_none())).then_some(parsed)
            }
        };
        let mut key_change = None;
        for (name, bytes) in headers {
            let make: fn(DecodedRow) -> KeyChange = match *name {
                NEW_KEY_HEADER => KeyChange::NewKey,
                OLD_KEY_HEADER => KeyChange::OldKey,
                _ => continue,
            };
            let path = format!("headers.{name}");
            let bytes = bytes.ok_or_else(|| CodecError::new(&path, "the key-change header has no value"))?;
            let parsed = self.parse(bytes, &path)?;
            key_change = Some((make, parsed, path));
        }
        let hint = self.hint_schemas(hint);
        let hint_row = hint.as_deref().map(|h| &h.row);
        let hint_key = hint.as_deref().map(|h| &h.key);
        let key_change = match key_change {
            Some((make, parsed, path)) => {
                Some(make(read_key(&parsed, hint_key, &path)?.ok_or_else(|| {
                    CodecError::new(&path, "the key-change header holds no key")
                })?))
            }
            None => None,
        };
        let key_path = if key.as_ref().is_some_and(|k| k.schema.is_some()) {
            "key.payload"
        } else {
            "key"
        };
        let key_row = match &key {
            Some(k) => read_key(k, hint_key, key_path)?,
            None => None,
        };
        let Some(value) = value else {
            return Ok(Decoded::Tombstone { key: key_row });
        };
        let mut change = decode_envelope(&value, key_row, hint_row)?;
        change.key_change = key_change;
        self.attach_spec(
            &mut change,
            value.schema.as_ref(),
            key.as_ref().and_then(|k| k.schema.as_deref()),
        );
        Ok(Decoded::Change(Box::new(change)))
    }

    /// Gives `change` the spec of its embedded row schema (the envelope's `after`, or
    /// `before`, struct), keyed by the key schema's fields (else the key row's columns).
    fn attach_spec(
        &mut self,
        change: &mut DecodedChange,
        envelope: Option<&Arc<ConnectSchema>>,
        key_schema: Option<&ConnectSchema>,
    ) {
        let Some(envelope) = envelope else {
            return;
        };
        let Some(row_schema) = row_schema_of(envelope) else {
            return;
        };
        let key_names: Vec<&str> = match key_schema {
            Some(schema) if schema.schema_type == SchemaType::Struct => {
                schema.fields.iter().map(|f| f.name.as_str()).collect()
            }
            _ => change
                .key
                .as_ref()
                .map(|k| k.columns.iter().map(|(n, _)| n.as_str()).collect())
                .unwrap_or_default(),
        };
        change.spec = Some(self.spec(envelope, row_schema, &change.table, &key_names));
    }
}

/// Decodes one Kafka record with a [`Decoder`] of its own; see [`Decoder::decode`]. A
/// consumer decoding a stream keeps one `Decoder`, which parses each schema once.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    hint: Option<&TableSpec>,
) -> Result<Decoded, CodecError> {
    Decoder::new().decode(key, value, headers, hint)
}

/// The `after` (or `before`) struct of an envelope schema.
fn row_schema_of(envelope: &ConnectSchema) -> Option<&ConnectSchema> {
    envelope
        .field_schema("after")
        .or_else(|| envelope.field_schema("before"))
        .filter(|r| r.schema_type == SchemaType::Struct)
}

/// The change in `value`'s envelope; its key change and spec are the caller's.
fn decode_envelope(
    value: &Parsed,
    key_row: Option<DecodedRow>,
    hint_row: Option<&ConnectSchema>,
) -> Result<DecodedChange, CodecError> {
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
    // Paths are for errors; the common ones are constants, not built per record.
    let wrapped = value.schema.is_some();
    let op_path = if wrapped { "value.payload.op" } else { "value.op" };
    let op_text = payload.get("op").ok_or_else(|| {
        CodecError::new(
            op_path,
            "missing; every change event has an op (c, u, d, r, t, m)",
        )
    })?;
    let op = op_text.as_str().and_then(Op::from_code).ok_or_else(|| {
        CodecError::new(
            op_path,
            format!("expected one of c, u, d, r, t, m, found {}", shown(op_text)),
        )
    })?;

    let source_path = source_path(wrapped);
    let source_schema = value.schema.as_ref().and_then(|s| s.field_schema("source"));
    let source = match payload.get("source") {
        Some(Json::Object(source)) => source,
        Some(other) => {
            return Err(CodecError::new(
                source_path,
                format!("expected an object, found {}", kind(other)),
            ));
        }
        None => {
            return Err(CodecError::new(
                source_path,
                "missing; every change event has a source block",
            ));
        }
    };
    let (table, position, snapshot) = read_source(source, source_schema, source_path)?;

    // The row schema: embedded, else the hint's.
    let schema_for_rows = value.schema.as_deref().and_then(row_schema_of).or(hint_row);
    let row = |field: &str| -> Result<Option<DecodedRow>, CodecError> {
        match payload.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(json) => {
                let path = match (wrapped, field) {
                    (true, "before") => "value.payload.before",
                    (true, _) => "value.payload.after",
                    (false, "before") => "value.before",
                    (false, _) => "value.after",
                };
                read_row(json, schema_for_rows, path).map(Some)
            }
        }
    };
    let before = row("before")?;
    let after = row("after")?;
    check_rows(op, &before, &after, &key_row, value_path)?;
    let transaction = transaction_block(payload.get("transaction"), value_path)?;

    Ok(DecodedChange {
        op,
        table,
        key: key_row,
        before,
        after,
        position,
        snapshot,
        source_ts_ms: lenient_i64(source.field("ts_ms"), source_path, "ts_ms")?,
        ts_ms: lenient_i64(payload.field("ts_ms"), value_path, "ts_ms")?,
        transaction,
        key_change: None,
        spec: None,
    })
}

/// The path of the `source` block, in a message with its schema (`wrapped`) or without.
pub(super) fn source_path(wrapped: bool) -> &'static str {
    if wrapped {
        "value.payload.source"
    } else {
        "value.source"
    }
}

/// What a `source` block says: the table, the position, the snapshot marker.
pub(super) fn read_source(
    source: &impl SourceFields,
    source_schema: Option<&ConnectSchema>,
    source_path: &str,
) -> Result<(TableIdentity, SourcePosition, SnapshotMarker), CodecError> {
    let table = table_identity(source, source_schema, source_path)?;
    let position = source_position(&table.connector, source, source_path)?;
    let snapshot = match source.field("snapshot") {
        None | Some(FieldRef::Json(Json::Null)) => SnapshotMarker::False,
        Some(FieldRef::Json(Json::Bool(b))) => {
            if *b {
                SnapshotMarker::True
            } else {
                SnapshotMarker::False
            }
        }
        Some(FieldRef::Str(s)) => SnapshotMarker::parse(s).ok_or_else(|| {
            CodecError::new(
                join(source_path, "snapshot"),
                format!("expected one of {}, found {s:?}", SnapshotMarker::ALLOWED),
            )
        })?,
        Some(FieldRef::Json(other)) => {
            return Err(CodecError::new(
                join(source_path, "snapshot"),
                format!("expected a string or a boolean, found {}", kind(other)),
            ));
        }
    };
    Ok((table, position, snapshot))
}

/// Whether `op` has the rows it needs: the new row for `c`, `r` and `u`, the old row or a
/// key for `d`.
pub(super) fn check_rows(
    op: Op,
    before: &Option<DecodedRow>,
    after: &Option<DecodedRow>,
    key_row: &Option<DecodedRow>,
    value_path: &str,
) -> Result<(), CodecError> {
    match op {
        Op::Create | Op::Read if after.is_none() => Err(CodecError::new(
            join(value_path, "after"),
            format!("an {op} event needs the new row in after"),
        )),
        Op::Update if after.is_none() => Err(CodecError::new(
            join(value_path, "after"),
            "an update event needs after",
        )),
        Op::Delete if before.is_none() && key_row.is_none() => Err(CodecError::new(
            join(value_path, "before"),
            "a delete event needs the old row in before, or a key",
        )),
        _ => Ok(()),
    }
}

/// The envelope's `transaction` block (`json`), if it has one.
pub(super) fn transaction_block(
    json: Option<&Json>,
    value_path: &str,
) -> Result<Option<TransactionBlock>, CodecError> {
    match json {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(t)) => {
            let path = join(value_path, "transaction");
            Ok(Some(TransactionBlock {
                id: match t.get("id") {
                    Some(Json::String(s)) => s.clone(),
                    other => {
                        return Err(CodecError::new(
                            join(&path, "id"),
                            format!("expected a string, found {}", other.map_or("nothing", kind)),
                        ));
                    }
                },
                total_order: lenient_i64(t.field("total_order"), &path, "total_order")?.unwrap_or(0),
                data_collection_order: lenient_i64(
                    t.field("data_collection_order"),
                    &path,
                    "data_collection_order",
                )?
                .unwrap_or(0),
            }))
        }
        Some(other) => Err(CodecError::new(
            join(value_path, "transaction"),
            format!("expected an object, found {}", kind(other)),
        )),
    }
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

/// The key struct tarn's encoder writes for `spec`.
fn hint_key_struct(spec: &TableSpec) -> ConnectSchema {
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
}

fn read_key(
    parsed: &Parsed,
    hint_key: Option<&ConnectSchema>,
    path: &str,
) -> Result<Option<DecodedRow>, CodecError> {
    if parsed.payload.is_null() {
        return Ok(None);
    }
    let schema = parsed
        .schema
        .as_deref()
        .filter(|s| s.schema_type == SchemaType::Struct)
        .or(hint_key);
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
                    // Paths are built only for errors: this runs once per cell.
                    read_value(Some(&field.schema), v, "").map_err(|e| e.within(&join(path, &field.name)))?,
                ));
            }
        }
        // Fields the schema does not list (rare: look only when there are some).
        let unlisted = columns.len() < object.len();
        for (name, v) in object.iter().filter(|_| unlisted) {
            if schema.field_schema(name).is_none() {
                columns.push((
                    name.clone(),
                    read_value(None, v, "").map_err(|e| e.within(&join(path, name)))?,
                ));
            }
        }
    } else {
        for (name, v) in object {
            columns.push((
                name.clone(),
                read_value(None, v, "").map_err(|e| e.within(&join(path, name)))?,
            ));
        }
    }
    Ok(DecodedRow { columns })
}

/// A field of an object as the readers below take it: a string, or another JSON value.
#[derive(Debug, Clone, Copy)]
pub(super) enum FieldRef<'j> {
    /// A string.
    Str(&'j str),
    /// Any other value (never a string).
    Json(&'j Json),
}

impl<'j> FieldRef<'j> {
    fn of(json: &'j Json) -> Self {
        match json {
            Json::String(s) => FieldRef::Str(s),
            other => FieldRef::Json(other),
        }
    }
}

/// The fields of an object: a parsed JSON object, or the `source` block that
/// [`super::envelope`] reads straight from a message's text.
pub(super) trait SourceFields {
    /// The value of `name`; of a field given twice, the last (as a parsed object keeps it).
    fn field(&self, name: &str) -> Option<FieldRef<'_>>;
}

impl SourceFields for Map<String, Json> {
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        self.get(name).map(FieldRef::of)
    }
}

fn string_field(source: &impl SourceFields, field: &str) -> Option<String> {
    match source.field(field)? {
        FieldRef::Str(s) => Some(s.to_string()),
        FieldRef::Json(Json::Number(n)) => Some(n.to_string()),
        FieldRef::Json(_) => None,
    }
}

/// An integer field `field` of the object at `parent`, written as a number or a string.
pub(super) fn lenient_i64(
    json: Option<FieldRef<'_>>,
    parent: &str,
    field: &str,
) -> Result<Option<i64>, CodecError> {
    let path = || join(parent, field);
    match json {
        None | Some(FieldRef::Json(Json::Null)) => Ok(None),
        Some(FieldRef::Json(Json::Number(n))) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| CodecError::new(path(), format!("expected an integer, found {n}"))),
        Some(FieldRef::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| CodecError::new(path(), format!("expected an integer, found the string {s:?}"))),
        Some(FieldRef::Json(other)) => Err(CodecError::new(
            path(),
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

fn table_identity(
    source: &impl SourceFields,
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
            let has = |field: &str| source.field(field).is_some();
            if has("lsn") {
                Some("postgresql".into())
            } else if has("file") && has("pos") {
                Some("mysql".into())
            } else if has("change_lsn") || has("commit_lsn") {
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
    source: &impl SourceFields,
    path: &str,
) -> Result<SourcePosition, CodecError> {
    let int = |field: &str| lenient_i64(source.field(field), path, field);
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

/// The table spec of a row schema: one column per field, `key_names` the key.
fn infer_spec(row_schema: &ConnectSchema, table: &TableIdentity, key_names: &[String]) -> TableSpec {
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
    let key_kind = KeyKind::of(&columns);
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
