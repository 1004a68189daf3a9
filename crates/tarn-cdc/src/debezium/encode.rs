//! A table's changes as the Kafka messages Debezium 3.x writes: the key, the value envelope,
//! the topic, and the extra records of deletes and key changes.
//!
//! One [`TableEncoder`] per captured table (rebuilt when the table's spec changes) holds the
//! table's Connect schemas and their JSON text, so that each message costs one pass over the
//! row. [`TableEncoder::encode`] turns one change into its messages, in order:
//!
//! - create (`c`), snapshot read (`r`), update (`u`): one message; an update's `before` is the
//!   old row when the source sent it (`REPLICA IDENTITY FULL`), else null, as Debezium writes
//!   it for PostgreSQL's default replica identity;
//! - delete (`d`): the delete, then a tombstone (same key, no value) when
//!   [`EncoderConfig::tombstones_on_delete`] (Debezium's `tombstones.on.delete`, default on);
//! - an update that changes the primary key: delete of the old key with header
//!   `__debezium.newkey`, its tombstone, create of the new key with header `__debezium.oldkey`
//!   (PostgreSQL connector docs, "Primary key updates");
//! - truncate (`t`): one message with a null key and null `before`/`after`.
//!
//! The envelope (PostgreSQL connector docs, "Data change events"; Debezium's
//! `SchemaFactory.datatypeEnvelopeSchema`): `before` and `after` of schema
//! `<prefix>.<schema>.<table>.Value`, `source` (`io.debezium.connector.<connector>.Source`,
//! version 1), `transaction` (`event.block`, null unless given), `op`, and the processing
//! time as `ts_ms`, `ts_us`, `ts_ns`; the envelope schema is
//! `<prefix>.<schema>.<table>.Envelope`, version 2. The key is a struct
//! `<prefix>.<schema>.<table>.Key` of the primary-key columns, null for a table without one.
//! Schema names are not adjusted (`schema.name.adjustment.mode=none`, the default); topic names
//! replace characters Kafka does not allow with `_`, as Debezium's topic naming strategy does.
//!
//! `source` follows Debezium's PostgreSQL connector (`version`, `connector`, `name`, `ts_ms`,
//! `snapshot`, `db`, `sequence`, `ts_us`, `ts_ns`, `schema`, `table`, `txId`, `lsn`, `xmin`)
//! for PostgreSQL, and Debezium's CockroachDB connector (the common fields, then `schema`,
//! `table`, `cluster`, `resolved_ts`, `ts_hlc`) for CockroachDB. `version` says tarn wrote the
//! event (`tarn <version>`); `sequence` is `[null,"<position>"]`, the documented form of "the
//! last committed position (unknown here), the current one".

use std::sync::Arc;

use serde_json::Value as Json;

use super::connect::{ConnectSchema, JsonWriter, SchemaType};
use super::types::column_schema;
use super::values::{write_fallback, write_header_value, write_value};
use super::{CodecError, NEW_KEY_HEADER, OLD_KEY_HEADER, Op, SnapshotMarker};
use crate::source::{KeyKind, Position, TableSpec};
use crate::value::Value;

/// What `source.version` says: tarn wrote the event.
pub const SOURCE_VERSION: &str = concat!("tarn ", env!("CARGO_PKG_VERSION"));

/// The source database kind, which decides the `source` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceConnector {
    /// PostgreSQL: `connector` `postgresql`, positions are LSNs.
    Postgres,
    /// CockroachDB: `connector` `cockroachdb`, positions are HLC timestamps (`ts_hlc`).
    CockroachDb,
}

impl SourceConnector {
    /// The `connector` value.
    pub fn name(self) -> &'static str {
        match self {
            SourceConnector::Postgres => "postgresql",
            SourceConnector::CockroachDb => "cockroachdb",
        }
    }

    /// The `source` struct schema.
    pub fn source_schema(self) -> ConnectSchema {
        let string = || ConnectSchema::new(SchemaType::String);
        let int64 = || ConnectSchema::new(SchemaType::Int64);
        // SchemaFactory.sourceInfoSchemaBuilder: the fields of every connector.
        let mut fields = vec![
            string().field("version"),
            string().field("connector"),
            string().field("name"),
            int64().field("ts_ms"),
            string()
                .optional(true)
                .named("io.debezium.data.Enum")
                .versioned(1)
                .param("allowed", SnapshotMarker::ALLOWED)
                .with_default(Json::String("false".into()))
                .field("snapshot"),
            string().field("db"),
            string().optional(true).field("sequence"),
            int64().optional(true).field("ts_us"),
            int64().optional(true).field("ts_ns"),
        ];
        match self {
            // PostgresSourceInfoStructMaker.
            SourceConnector::Postgres => fields.extend([
                string().field("schema"),
                string().field("table"),
                int64().optional(true).field("txId"),
                int64().optional(true).field("lsn"),
                int64().optional(true).field("xmin"),
            ]),
            // CockroachDBSourceInfoStructMaker.
            SourceConnector::CockroachDb => fields.extend([
                string().optional(true).field("schema"),
                string().optional(true).field("table"),
                string().optional(true).field("cluster"),
                string().optional(true).field("resolved_ts"),
                string().optional(true).field("ts_hlc"),
            ]),
        }
        ConnectSchema::struct_of(fields)
            .named(format!("io.debezium.connector.{}.Source", self.name()))
            .versioned(1)
    }
}

/// How messages are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Debezium's `topic.prefix`: the first part of topic and schema names, and `source.name`.
    pub topic_prefix: String,
    /// Which `source` block the events carry.
    pub connector: SourceConnector,
    /// Embed the schema in keys and values (`key.converter.schemas.enable`,
    /// `value.converter.schemas.enable`; Kafka's default is on).
    pub schemas: bool,
    /// A tombstone after each delete (Debezium's `tombstones.on.delete`, default on).
    pub tombstones_on_delete: bool,
}

impl EncoderConfig {
    /// Debezium's defaults: schemas embedded, tombstones after deletes.
    pub fn new(topic_prefix: impl Into<String>, connector: SourceConnector) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
            connector,
            schemas: true,
            tombstones_on_delete: true,
        }
    }
}

/// The `transaction` block of an event (with `provide.transaction.metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionBlock {
    /// The transaction id (PostgreSQL: `txId:LSN`).
    pub id: String,
    /// The event's position among all events of the transaction, from 1.
    pub total_order: i64,
    /// The event's position among the transaction's events of its table, from 1.
    pub data_collection_order: i64,
}

/// Where a change comes from: the source-side facts of its `source` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The database name (`source.db`).
    pub db: String,
    /// The change's position in the source's stream: a PostgreSQL LSN (written as `lsn`, a
    /// number) or a CockroachDB HLC timestamp (written as `ts_hlc`, `wall.logical`); also
    /// the current position of `sequence`.
    pub position: Position,
    /// The source transaction id (`txId`, PostgreSQL).
    pub tx_id: Option<i64>,
    /// When the transaction committed, microseconds since the Unix epoch (`source.ts_ms`,
    /// `ts_us`, `ts_ns`).
    pub commit_time_micros: i64,
    /// Whether the change was read by a snapshot.
    pub snapshot: SnapshotMarker,
    /// The `transaction` block, if transaction metadata is provided.
    pub transaction: Option<TransactionBlock>,
}

/// One change of a row (cells in PostgreSQL text format, one per column of the table's spec).
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// `c`: an insert.
    Create {
        /// The new row.
        after: &'a [Value],
    },
    /// `r`: a row read by a snapshot.
    Read {
        /// The row.
        after: &'a [Value],
    },
    /// `u`: an update; `before` is the old row (full replica identity) or the old key (when the
    /// key changed), absent otherwise.
    Update {
        /// The old row or key, as the source sent it.
        before: Option<&'a [Value]>,
        /// The new row; unchanged TOASTed cells are [`Value::Unchanged`].
        after: &'a [Value],
    },
    /// `d`: a delete; `before` holds at least the key columns.
    Delete {
        /// The old row or key.
        before: &'a [Value],
    },
    /// `t`: the table was truncated.
    Truncate,
}

/// A Kafka message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The key bytes; `None` for a table without a primary key and for truncates.
    pub key: Option<Vec<u8>>,
    /// The value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The event's operation; `None` for a tombstone.
    pub op: Option<Op>,
}

/// The topic of a table: `<prefix>.<schema>.<table>`, characters other than ASCII letters,
/// digits, `.`, `_` and `-` replaced by `_`, at most 249 characters (Kafka's limit).
pub fn topic_name(prefix: &str, schema: &str, table: &str) -> String {
    let name: String = [prefix, schema, table]
        .join(".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.chars().take(249).collect()
}

/// Writes the change events of one table.
#[derive(Debug, Clone)]
pub struct TableEncoder {
    spec: Arc<TableSpec>,
    config: EncoderConfig,
    topic: String,
    columns: Vec<ConnectSchema>,
    key_columns: Vec<usize>,
    key_schema: Option<ConnectSchema>,
    value_schema: ConnectSchema,
    envelope_schema: ConnectSchema,
    /// `{"schema":<key schema>,"payload":` when schemas are embedded.
    key_prefix: String,
    /// `{"schema":<envelope schema>,"payload":` when schemas are embedded.
    value_prefix: String,
}

impl TableEncoder {
    /// The encoder of `spec`'s changes.
    pub fn new(config: &EncoderConfig, spec: Arc<TableSpec>) -> Self {
        let base = format!("{}.{}.{}", config.topic_prefix, spec.schema, spec.name);
        let columns: Vec<ConnectSchema> = spec.columns.iter().map(column_schema).collect();
        let key_columns = match spec.key_kind {
            KeyKind::PrimaryKey => spec.key_columns(),
            // Without a primary key Debezium's key is null.
            KeyKind::FullRow => Vec::new(),
        };
        let key_schema = (!key_columns.is_empty()).then(|| {
            ConnectSchema::struct_of(
                key_columns
                    .iter()
                    .map(|&i| columns[i].clone().optional(false).field(&spec.columns[i].name))
                    .collect(),
            )
            .named(format!("{base}.Key"))
        });
        let value_schema = ConnectSchema::struct_of(
            spec.columns
                .iter()
                .zip(&columns)
                .map(|(c, s)| s.clone().field(&c.name))
                .collect(),
        )
        .named(format!("{base}.Value"));
        let envelope_schema = ConnectSchema::struct_of(vec![
            value_schema.clone().optional(true).field("before"),
            value_schema.clone().optional(true).field("after"),
            config.connector.source_schema().field("source"),
            ConnectSchema::struct_of(vec![
                ConnectSchema::new(SchemaType::String).field("id"),
                ConnectSchema::new(SchemaType::Int64).field("total_order"),
                ConnectSchema::new(SchemaType::Int64).field("data_collection_order"),
            ])
            .optional(true)
            .named("event.block")
            .versioned(1)
            .field("transaction"),
            ConnectSchema::new(SchemaType::String).field("op"),
            ConnectSchema::new(SchemaType::Int64)
                .optional(true)
                .field("ts_ms"),
            ConnectSchema::new(SchemaType::Int64)
                .optional(true)
                .field("ts_us"),
            ConnectSchema::new(SchemaType::Int64)
                .optional(true)
                .field("ts_ns"),
        ])
        .named(format!("{base}.Envelope"))
        .versioned(2);
        let wrap = |schema: &ConnectSchema| {
            if config.schemas {
                format!("{{\"schema\":{},\"payload\":", schema.to_json_string())
            } else {
                String::new()
            }
        };
        let key_prefix = key_schema.as_ref().map(wrap).unwrap_or_default();
        let value_prefix = wrap(&envelope_schema);
        Self {
            topic: topic_name(&config.topic_prefix, &spec.schema, &spec.name),
            spec,
            config: config.clone(),
            columns,
            key_columns,
            key_schema,
            value_schema,
            envelope_schema,
            key_prefix,
            value_prefix,
        }
    }

    /// The table's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The key schema; `None` for a table without a primary key.
    pub fn key_schema(&self) -> Option<&ConnectSchema> {
        self.key_schema.as_ref()
    }

    /// The schema of `before` and `after`.
    pub fn value_schema(&self) -> &ConnectSchema {
        &self.value_schema
    }

    /// The envelope schema.
    pub fn envelope_schema(&self) -> &ConnectSchema {
        &self.envelope_schema
    }

    /// The messages of one change, in the order they are produced. `processed_at_nanos`
    /// (nanoseconds since the Unix epoch) is the envelope's `ts_ms`/`ts_us`/`ts_ns`.
    ///
    /// Errors: a row whose length differs from the table's columns, or a cell that does not
    /// parse as its column's type, names the column (`after.amount`).
    pub fn encode(
        &self,
        change: Change<'_>,
        source: &SourceInfo,
        processed_at_nanos: i64,
    ) -> Result<Vec<Message>, CodecError> {
        let mut messages = Vec::with_capacity(3);
        match change {
            Change::Create { after } => {
                self.check_row(after, "after")?;
                messages.push(self.event(
                    Op::Create,
                    None,
                    Some(after),
                    source,
                    processed_at_nanos,
                    after,
                )?);
            }
            Change::Read { after } => {
                self.check_row(after, "after")?;
                messages.push(self.event(Op::Read, None, Some(after), source, processed_at_nanos, after)?);
            }
            Change::Update { before, after } => {
                self.check_row(after, "after")?;
                if let Some(before) = before {
                    self.check_row(before, "before")?;
                }
                match before {
                    Some(old) if self.key_changed(old, after) => {
                        let old_key = self.header_key(old)?;
                        let new_key = self.header_key(after)?;
                        let mut delete =
                            self.event(Op::Delete, Some(old), None, source, processed_at_nanos, old)?;
                        delete.headers.push((NEW_KEY_HEADER.into(), new_key));
                        messages.push(delete);
                        if self.config.tombstones_on_delete {
                            messages.push(self.tombstone(old)?);
                        }
                        let mut create =
                            self.event(Op::Create, None, Some(after), source, processed_at_nanos, after)?;
                        create.headers.push((OLD_KEY_HEADER.into(), old_key));
                        messages.push(create);
                    }
                    // Debezium's `before` on an update is the old row under REPLICA IDENTITY
                    // FULL and null otherwise (an old key that did not change is not a row).
                    _ => {
                        let full_before = before
                            .filter(|old| old.len() == self.spec.columns.len() && self.is_full_row(old));
                        messages.push(self.event(
                            Op::Update,
                            full_before,
                            Some(after),
                            source,
                            processed_at_nanos,
                            after,
                        )?);
                    }
                }
            }
            Change::Delete { before } => {
                self.check_row(before, "before")?;
                messages.push(self.event(
                    Op::Delete,
                    Some(before),
                    None,
                    source,
                    processed_at_nanos,
                    before,
                )?);
                if self.config.tombstones_on_delete && !self.key_columns.is_empty() {
                    messages.push(self.tombstone(before)?);
                }
            }
            Change::Truncate => {
                let mut message = self.event(Op::Truncate, None, None, source, processed_at_nanos, &[])?;
                message.key = None;
                messages.push(message);
            }
        }
        Ok(messages)
    }

    fn check_row(&self, row: &[Value], path: &str) -> Result<(), CodecError> {
        if row.len() == self.spec.columns.len() {
            Ok(())
        } else {
            Err(CodecError::new(
                path,
                format!(
                    "a row of {} has {} columns, its table has {}",
                    self.spec.qualified(),
                    row.len(),
                    self.spec.columns.len()
                ),
            ))
        }
    }

    /// Whether `old` carries more than the key (every non-key column that is NOT NULL in the
    /// source has a value): the old row of a full replica identity.
    fn is_full_row(&self, old: &[Value]) -> bool {
        self.spec.key_kind == KeyKind::FullRow
            || self
                .spec
                .columns
                .iter()
                .zip(old)
                .enumerate()
                .all(|(i, (c, v))| self.key_columns.contains(&i) || !c.not_null || *v != Value::Null)
    }

    fn key_changed(&self, old: &[Value], new: &[Value]) -> bool {
        !self.key_columns.is_empty() && self.key_columns.iter().any(|&i| old[i] != new[i])
    }

    fn tombstone(&self, row: &[Value]) -> Result<Message, CodecError> {
        Ok(Message {
            topic: self.topic.clone(),
            key: self.key_bytes(row)?,
            value: None,
            headers: Vec::new(),
            op: None,
        })
    }

    fn key_bytes(&self, row: &[Value]) -> Result<Option<Vec<u8>>, CodecError> {
        if self.key_columns.is_empty() {
            return Ok(None);
        }
        let mut w = JsonWriter::with_capacity(self.key_prefix.len() + 32);
        if self.config.schemas {
            w.raw(&self.key_prefix);
        }
        w.begin_object();
        for &i in &self.key_columns {
            let name = &self.spec.columns[i].name;
            w.key(name);
            write_value(&mut w, &self.columns[i], &row[i], "")
                .map_err(|e| e.within(&format!("key.{name}")))?;
        }
        w.end_object();
        let mut text = w.finish();
        if self.config.schemas {
            text.push('}');
        }
        Ok(Some(text.into_bytes()))
    }

    /// The key as Kafka Connect's header converter prints a key struct.
    fn header_key(&self, row: &[Value]) -> Result<Vec<u8>, CodecError> {
        let mut w = JsonWriter::default();
        w.begin_object();
        for &i in &self.key_columns {
            let name = &self.spec.columns[i].name;
            w.key(name);
            write_header_value(&mut w, &self.columns[i], &row[i], "")
                .map_err(|e| e.within(&format!("key.{name}")))?;
        }
        w.end_object();
        Ok(w.finish().into_bytes())
    }

    fn write_row(
        &self,
        w: &mut JsonWriter,
        row: &[Value],
        path: &str,
        fallbacks: bool,
    ) -> Result<(), CodecError> {
        w.begin_object();
        for (i, ((column, schema), value)) in self.spec.columns.iter().zip(&self.columns).zip(row).enumerate()
        {
            w.key(&column.name);
            if fallbacks && *value == Value::Null && !schema.optional && !self.key_columns.contains(&i) {
                // A required column the source did not send (an old key tuple).
                write_fallback(w, schema);
            } else {
                // Paths are built only for errors: this runs once per cell.
                write_value(w, schema, value, "")
                    .map_err(|e| e.within(&format!("{path}.{}", column.name)))?;
            }
        }
        w.end_object();
        Ok(())
    }

    fn event(
        &self,
        op: Op,
        before: Option<&[Value]>,
        after: Option<&[Value]>,
        source: &SourceInfo,
        processed_at_nanos: i64,
        key_row: &[Value],
    ) -> Result<Message, CodecError> {
        let mut w = JsonWriter::with_capacity(self.value_prefix.len() + 512);
        if self.config.schemas {
            w.raw(&self.value_prefix);
        }
        w.begin_object();
        w.key("before");
        match before {
            Some(row) => self.write_row(&mut w, row, "before", true)?,
            None => w.null(),
        }
        w.key("after");
        match after {
            Some(row) => self.write_row(&mut w, row, "after", false)?,
            None => w.null(),
        }
        w.key("source");
        self.write_source(&mut w, source)?;
        w.key("transaction");
        match &source.transaction {
            Some(t) => {
                w.begin_object();
                w.key("id");
                w.string(&t.id);
                w.key("total_order");
                w.raw(&t.total_order.to_string());
                w.key("data_collection_order");
                w.raw(&t.data_collection_order.to_string());
                w.end_object();
            }
            None => w.null(),
        }
        w.key("op");
        w.string(op.code());
        w.key("ts_ms");
        w.raw(&processed_at_nanos.div_euclid(1_000_000).to_string());
        w.key("ts_us");
        w.raw(&processed_at_nanos.div_euclid(1_000).to_string());
        w.key("ts_ns");
        w.raw(&processed_at_nanos.to_string());
        w.end_object();
        let mut value = w.finish();
        if self.config.schemas {
            value.push('}');
        }
        let key = if op == Op::Truncate {
            None
        } else {
            self.key_bytes(key_row)?
        };
        Ok(Message {
            topic: self.topic.clone(),
            key,
            value: Some(value.into_bytes()),
            headers: Vec::new(),
            op: Some(op),
        })
    }

    fn write_source(&self, w: &mut JsonWriter, source: &SourceInfo) -> Result<(), CodecError> {
        let connector = self.config.connector;
        let current = match (connector, &source.position) {
            (SourceConnector::Postgres, Position::Lsn(lsn)) => i64::try_from(lsn.0)
                .map_err(|_| {
                    CodecError::new(
                        "source.lsn",
                        format!("LSN {lsn} is beyond Debezium's 64-bit signed lsn"),
                    )
                })?
                .to_string(),
            (SourceConnector::CockroachDb, Position::Hlc(hlc)) => hlc.to_string(),
            (connector, other) => {
                let (path, expected) = match connector {
                    SourceConnector::Postgres => ("source.lsn", "a PostgreSQL LSN"),
                    SourceConnector::CockroachDb => ("source.ts_hlc", "a CockroachDB timestamp"),
                };
                return Err(CodecError::new(
                    path,
                    format!(
                        "the change's position {other} ({}) is not {expected}",
                        other.kind()
                    ),
                ));
            }
        };
        let micros = source.commit_time_micros;
        w.begin_object();
        w.key("version");
        w.string(SOURCE_VERSION);
        w.key("connector");
        w.string(connector.name());
        w.key("name");
        w.string(&self.config.topic_prefix);
        w.key("ts_ms");
        w.raw(&micros.div_euclid(1_000).to_string());
        w.key("snapshot");
        w.string(source.snapshot.as_str());
        w.key("db");
        w.string(&source.db);
        w.key("sequence");
        let mut sequence = JsonWriter::default();
        sequence.begin_array();
        sequence.null();
        sequence.string(&current);
        sequence.end_array();
        w.string(&sequence.finish());
        w.key("ts_us");
        w.raw(&micros.to_string());
        w.key("ts_ns");
        w.raw(
            &i128::from(micros)
                .saturating_mul(1_000)
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                .to_string(),
        );
        w.key("schema");
        w.string(&self.spec.schema);
        w.key("table");
        w.string(&self.spec.name);
        match connector {
            SourceConnector::Postgres => {
                w.key("txId");
                match source.tx_id {
                    Some(tx) => w.raw(&tx.to_string()),
                    None => w.null(),
                }
                w.key("lsn");
                w.raw(&current);
                w.key("xmin");
                w.null();
            }
            SourceConnector::CockroachDb => {
                w.key("cluster");
                w.null();
                w.key("resolved_ts");
                w.null();
                w.key("ts_hlc");
                w.string(&current);
            }
        }
        w.end_object();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_sanitized() {
        assert_eq!(topic_name("tarn", "public", "orders"), "tarn.public.orders");
        assert_eq!(topic_name("tarn", "my schema", "Ördë$"), "tarn.my_schema._rd__");
        assert_eq!(topic_name("p", "s", &"t".repeat(300)).len(), 249);
    }
}
