//! Debezium change events: tarn's rows as the messages Debezium writes to Kafka, and Kafka
//! messages that Debezium (or tarn) wrote back into tarn's rows.
//!
//! A change of a captured table travels on topic `<prefix>.<schema>.<table>` as a Kafka
//! message whose key is the row's primary key and whose value is Debezium's change-event
//! envelope — `before`, `after`, `source`, `transaction`, `op`, `ts_ms`, `ts_us`, `ts_ns` —
//! serialized the way Kafka Connect's `JsonConverter` does, with the embedded `schema`
//! (`schemas.enable=true`) or without it. Debezium documents the envelope per connector
//! (the PostgreSQL connector's "Data change events" section; MySQL's and SQL Server's have
//! the same envelope with their own `source` block).
//!
//! - [`connect`]: Kafka Connect schemas as `JsonConverter` writes them, and a JSON writer that
//!   keeps fields in schema order.
//! - [`types`]: tarn's column types as Debezium's PostgreSQL connector maps them (its defaults:
//!   `decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
//!   `binary.handling.mode=bytes`, `interval.handling.mode=numeric`), and the other way: a
//!   Connect schema as a tarn [`ColumnType`](crate::value::ColumnType).
//! - [`values`]: one cell between PostgreSQL's text format (tarn's [`Value`](crate::value::Value))
//!   and its JSON form under a Connect schema, both ways.
//! - [`encode`]: a table's changes as Kafka messages ([`TableEncoder`]): key, value, topic,
//!   the tombstone after a delete, a key change as delete + tombstone + create with
//!   Debezium's `__debezium.newkey` / `__debezium.oldkey` headers.
//! - [`decode`](mod@decode): a Kafka message into a [`DecodedChange`] — lenient, for tarn's own messages and
//!   for what Debezium's PostgreSQL, MySQL and SQL Server connectors write, with or without
//!   schemas; values come back as PostgreSQL text so that tarn's value builders read them.
//! - [`validate`](mod@validate): checks a message against the documented envelope (tests use it).
//!
//! Contract: encoding is exact — a value that does not fit its type is an error, never
//! rounded; decoding never panics on any input, and every malformed message is a
//! [`CodecError`] naming the field path (`payload.after.amount`) and what was expected.
//!
//! Why our own: no well-kept Rust crate reads or writes Debezium's envelope. Searching the
//! crate registry and public code found `rustcdc` (its own envelope, not Debezium's),
//! `rustium-format-json` (an alpha, encode-only Debezium-style encoder), `sqlite-diff-rs`
//! (SQLite changesets from Debezium events), and the Debezium parsers inside RisingWave and
//! Materialize, which live in those engines and are not published as libraries. The envelope
//! is small and documented; what matters is tarn's own value model (PostgreSQL text cells),
//! which none of them speaks.

pub mod connect;
pub mod decode;
pub mod encode;
mod envelope;
pub mod types;
pub mod validate;
pub mod values;

#[cfg(test)]
mod tests;

use std::fmt;

pub use decode::{
    Decoded, DecodedChange, DecodedRow, Decoder, KeyChange, SourcePosition, TableIdentity, decode,
};
pub use encode::{
    Change, EncoderConfig, Message, SourceConnector, SourceInfo, TableEncoder, TransactionBlock,
};
pub use validate::{ValidationError, validate, validate_key};

/// The header on the delete record of a primary-key change: the row's new key
/// (Debezium's `RelationalChangeRecordEmitter`, "Primary key updates" in the connector docs).
pub const NEW_KEY_HEADER: &str = "__debezium.newkey";
/// The header on the create record of a primary-key change: the row's old key.
pub const OLD_KEY_HEADER: &str = "__debezium.oldkey";
/// Debezium's default `unavailable.value.placeholder`: an unchanged TOASTed value that
/// PostgreSQL did not send ("Toasted values" in the PostgreSQL connector docs).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The operation of a change event (`op`; Debezium's `Envelope.Operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row was read by a snapshot.
    Read,
    /// `t`: the table was truncated.
    Truncate,
    /// `m`: a logical decoding message (PostgreSQL `pg_logical_emit_message`).
    Message,
}

impl Op {
    /// The one-letter code of `op`.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }

    /// The operation of a one-letter code.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "m" => Op::Message,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// `source.snapshot`: whether (and where in) a snapshot the event was read. Debezium 2.x and
/// 3.x write it as a string enum (`io.debezium.data.Enum`, default `"false"`); 1.x and the
/// docs' examples as a boolean. Both are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SnapshotMarker {
    /// Not a snapshot event (`"false"`).
    #[default]
    False,
    /// A snapshot event (`"true"`).
    True,
    /// The first event of the snapshot (`"first"`).
    First,
    /// The first event of a table's snapshot (`"first_in_data_collection"`).
    FirstInDataCollection,
    /// The last event of a table's snapshot (`"last_in_data_collection"`).
    LastInDataCollection,
    /// The last event of the snapshot (`"last"`).
    Last,
    /// An incremental-snapshot event (`"incremental"`).
    Incremental,
}

impl SnapshotMarker {
    /// The values of the `allowed` parameter of the `snapshot` field's schema, in Debezium's
    /// order (`SnapshotRecord`).
    pub const ALLOWED: &'static str =
        "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental";

    /// The text Debezium writes.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => "incremental",
        }
    }

    /// Reads the text form.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "false" => SnapshotMarker::False,
            "true" => SnapshotMarker::True,
            "first" => SnapshotMarker::First,
            "first_in_data_collection" => SnapshotMarker::FirstInDataCollection,
            "last_in_data_collection" => SnapshotMarker::LastInDataCollection,
            "last" => SnapshotMarker::Last,
            "incremental" => SnapshotMarker::Incremental,
            _ => return None,
        })
    }

    /// Whether the event came from a snapshot.
    pub fn is_snapshot(self) -> bool {
        self != SnapshotMarker::False
    }
}

/// A message that could not be encoded or decoded: where (a field path such as
/// `payload.after.amount`, `key`, `headers.__debezium.newkey`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Debezium change event, {path}: {message}")]
pub struct CodecError {
    /// The field path.
    pub path: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl CodecError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl CodecError {
    /// The error of a value found at `prefix`: its path (relative to that value, `""` for
    /// the value itself, `[2]` or `.scale` inside it) is put under `prefix`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

impl From<CodecError> for tarn_core::Error {
    fn from(e: CodecError) -> Self {
        tarn_core::Error::new(tarn_core::ErrorKind::InvalidInput, e.to_string())
    }
}

/// `parent.child`, for field paths.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}
