//! Decodes the messages of PostgreSQL's `pgoutput` logical decoding plugin, protocol version 1.
//!
//! The replication transport hands over the payload of each `XLogData` message; [`decode`] turns
//! one payload into a [`Message`]: transaction boundaries ([`Begin`], [`Commit`], [`Origin`]),
//! schema ([`Relation`], [`TypeMsg`]), row changes ([`Insert`], [`Update`], [`Delete`],
//! [`Truncate`]) and `pg_logical_emit_message` payloads ([`LogicalMessage`]). The layouts are
//! those of "Logical Replication Message Formats" in the PostgreSQL protocol documentation.
//!
//! Contract:
//!
//! - Input is exactly one message of protocol version 1 (`proto_version '1'`, without
//!   `streaming`, `two_phase` or `binary`); bytes left over after the message are an error,
//!   which is also how a payload of a later protocol version (an extra transaction id in front
//!   of streamed changes) is caught instead of being misread.
//! - Column values are not interpreted: a [`Value`] holds the bytes PostgreSQL sent (text output
//!   format unless the slot was started with `binary 'true'`); [`crate::value::builder`] turns
//!   text values into Arrow arrays.
//! - Decoding is zero-copy: strings of the schema messages are copied into `String`s, but
//!   column values and message contents are [`Bytes`] slices of the input.
//! - Malformed input (truncated, an unknown tag, invalid UTF-8 in a name, a negative length) is
//!   an [`ErrorKind::InvalidInput`] error naming the message type, the byte offset in the
//!   payload and what was expected; decoding never panics.
//!
//! Why our own: the transport crate (`pgwire-replication`) deliberately leaves row decoding to
//! the consumer, and the crates that do decode `pgoutput` come bundled with their own
//! replication clients and value types. The format is small and fully specified, so tarn
//! decodes it directly into types shaped for its pipeline.

use std::fmt;

use bytes::Bytes;
use tarn_core::{Error, ErrorKind, Result};

use crate::value::Value;

/// Microseconds between the Unix epoch (1970-01-01) and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Converts a PostgreSQL timestamp (µs since 2000-01-01 UTC, as in [`Begin::commit_time`]) to
/// µs since the Unix epoch.
pub fn unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `O`: the transaction was replicated from another origin.
    Origin(Origin),
    /// `R`: the schema of a relation, sent before its first change and after each change of it.
    Relation(Relation),
    /// `Y`: the name of a non-built-in type used by a following relation.
    Type(TypeMsg),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: relations were truncated.
    Truncate(Truncate),
    /// `M`: a message written with `pg_logical_emit_message`.
    LogicalMessage(LogicalMessage),
}

impl Message {
    /// The message type's name, as used in error messages ("Begin", "Update", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::LogicalMessage(_) => "Message",
        }
    }
}

/// `B`: the start of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit time, µs since 2000-01-01 00:00:00 UTC (see [`unix_micros`]).
    pub commit_time: i64,
    /// The transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently unused by PostgreSQL (0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: u64,
    /// The LSN just past the commit record: the position to confirm once the transaction is
    /// durable downstream.
    pub end_lsn: u64,
    /// Commit time, µs since 2000-01-01 00:00:00 UTC (see [`unix_micros`]).
    pub commit_time: i64,
}

/// `O`: the transaction originated on another node (replication origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: u64,
    /// The origin's name.
    pub name: String,
}

/// The `REPLICA IDENTITY` of a relation (`pg_class.relreplident`): which old values an update
/// or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns (nothing if there is no primary key).
    Default,
    /// `n`: no old values.
    Nothing,
    /// `f`: all columns of the old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The `relreplident` byte for this setting.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// `R`: the schema of a relation as the following changes encode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID; changes refer to it by this id.
    pub id: u32,
    /// The schema name; PostgreSQL sends an empty string for `pg_catalog`.
    pub namespace: String,
    /// The relation name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns in attribute order (generated columns are left out by PostgreSQL).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags: 1 if the column is part of the replica identity key, else 0.
    pub flags: u8,
    /// The column name.
    pub name: String,
    /// The OID of the column's type.
    pub type_oid: u32,
    /// The column's type modifier (`atttypmod`), -1 if none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y`: a type's name, sent before a relation that uses a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMsg {
    /// The type's OID.
    pub id: u32,
    /// The type's schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// The type's name.
    pub name: String,
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The [`Relation::id`] of the table.
    pub relation_id: u32,
    /// The inserted row.
    pub new: Tuple,
}

/// `U`: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The [`Relation::id`] of the table.
    pub relation_id: u32,
    /// The old key (when the update changed a key column) or the whole old row (replica
    /// identity full); `None` when the key did not change and the identity is not full.
    pub old: Option<OldTuple>,
    /// The row after the update; TOASTed columns that did not change are
    /// [`Value::Unchanged`].
    pub new: Tuple,
}

/// `D`: a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The [`Relation::id`] of the table.
    pub relation_id: u32,
    /// The old key or the whole old row, depending on the replica identity.
    pub old: OldTuple,
}

/// The old values of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns; other columns are [`Value::Null`].
    Key(Tuple),
    /// `O`: the whole old row (replica identity full).
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `T`: one `TRUNCATE` statement over one or more relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated relations.
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    /// Option bit: `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Option bit: `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Whether the message was emitted inside the transaction (`true`) or immediately.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: u64,
    /// The message's prefix, chosen by the emitter.
    pub prefix: String,
    /// The message's content.
    pub content: Bytes,
}

/// The column values of one row, in the order of the relation's columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

impl Tuple {
    /// The number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values.
    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// Decodes one `pgoutput` message (protocol version 1); see the module doc for the contract.
pub fn decode(data: &Bytes) -> Result<Message> {
    let mut r = Reader {
        data,
        pos: 0,
        message: "",
    };
    let Some(&tag) = data.first() else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "pgoutput message is empty: expected a message type byte",
        ));
    };
    r.message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "pgoutput message has unknown type {} at byte 0: expected one of B, C, O, R, Y, I, U, \
                     D, T, M (protocol version 1; streaming and two-phase messages need a later version, \
                     which tarn does not request)",
                    ByteDisplay(other)
                ),
            ));
        }
    };
    r.pos = 1;
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64("the final LSN")?,
            commit_time: r.i64("the commit timestamp")?,
            xid: r.u32("the transaction id")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("the flags")?,
            commit_lsn: r.u64("the commit LSN")?,
            end_lsn: r.u64("the end LSN")?,
            commit_time: r.i64("the commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.u64("the origin commit LSN")?,
            name: r.string("the origin name")?,
        }),
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type(TypeMsg {
            id: r.u32("the type OID")?,
            namespace: r.string("the type namespace")?,
            name: r.string("the type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("the relation id")?;
            r.expect_new_marker()?;
            Message::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation_id = r.u32("the relation id")?;
            let at = r.pos;
            let (old, new) = match r.u8("a tuple type 'K', 'O' or 'N'")? {
                b'K' => {
                    let old = OldTuple::Key(r.tuple()?);
                    r.expect_new_marker()?;
                    (Some(old), r.tuple()?)
                }
                b'O' => {
                    let old = OldTuple::Full(r.tuple()?);
                    r.expect_new_marker()?;
                    (Some(old), r.tuple()?)
                }
                b'N' => (None, r.tuple()?),
                other => return Err(r.invalid(at, "a tuple type 'K', 'O' or 'N'", ByteDisplay(other))),
            };
            Message::Update(Update {
                relation_id,
                old,
                new,
            })
        }
        b'D' => {
            let relation_id = r.u32("the relation id")?;
            let at = r.pos;
            let old = match r.u8("a tuple type 'K' or 'O'")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.invalid(at, "a tuple type 'K' or 'O'", ByteDisplay(other))),
            };
            Message::Delete(Delete { relation_id, old })
        }
        b'T' => {
            let at = r.pos;
            let count = r.i32("the number of relations")?;
            let count = usize::try_from(count)
                .map_err(|_| r.invalid(at, "a non-negative number of relations", count))?;
            let options = r.u8("the truncate options")?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("a relation id")?);
            }
            Message::Truncate(Truncate {
                options,
                relation_ids,
            })
        }
        b'M' => {
            let flags = r.u8("the message flags")?;
            let lsn = r.u64("the message LSN")?;
            let prefix = r.string("the message prefix")?;
            let content = r.counted_bytes("the content length")?;
            Message::LogicalMessage(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            })
        }
        _ => unreachable!("tags were checked above"),
    };
    if r.remaining() > 0 {
        return Err(r.invalid(
            r.pos,
            "the end of the message",
            format_args!("{} more bytes", r.remaining()),
        ));
    }
    Ok(message)
}

/// Decodes one message from a plain slice, copying it first; see [`decode`].
pub fn decode_slice(data: &[u8]) -> Result<Message> {
    decode(&Bytes::copy_from_slice(data))
}

/// A byte shown as a character when printable, else as hex.
struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "byte 0x{:02x}", self.0)
        }
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncated(&self, expected: &str) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "pgoutput {} message truncated at byte {}: expected {expected}, got the end of the \
                 message ({} bytes)",
                self.message,
                self.pos,
                self.data.len()
            ),
        )
    }

    fn invalid(&self, at: usize, expected: &str, got: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "pgoutput {} message invalid at byte {at}: expected {expected}, got {got}",
                self.message
            ),
        )
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let Some(bytes) = self.data.get(self.pos..self.pos + N) else {
            return Err(self.truncated(what));
        };
        self.pos += N;
        Ok(bytes.try_into().expect("slice has length N"))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let rest = &self.data[start..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            self.pos = self.data.len();
            return Err(self.truncated(&format!("{what} ending in a NUL byte")));
        };
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|e| self.invalid(start, &format!("{what} in UTF-8"), e))?;
        self.pos = start + len + 1;
        Ok(s.to_owned())
    }

    /// An Int32 length followed by that many bytes.
    fn counted_bytes(&mut self, what: &str) -> Result<Bytes> {
        let at = self.pos;
        let len = self.i32(what)?;
        let len = usize::try_from(len).map_err(|_| self.invalid(at, &format!("{what} ≥ 0"), len))?;
        if self.remaining() < len {
            return Err(self.truncated(&format!("{len} bytes")));
        }
        let bytes = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(bytes)
    }

    fn expect_new_marker(&mut self) -> Result<()> {
        let at = self.pos;
        match self.u8("the new tuple marker 'N'")? {
            b'N' => Ok(()),
            other => Err(self.invalid(at, "the new tuple marker 'N'", ByteDisplay(other))),
        }
    }

    fn tuple(&mut self) -> Result<Tuple> {
        let columns = self.u16("the number of tuple columns")?;
        let mut values = Vec::with_capacity(usize::from(columns).min(self.remaining()));
        for _ in 0..columns {
            let at = self.pos;
            let value = match self.u8("a column kind 'n', 'u', 't' or 'b'")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => Value::Text(self.counted_bytes("the length of a text value")?),
                b'b' => Value::Binary(self.counted_bytes("the length of a binary value")?),
                other => {
                    return Err(self.invalid(at, "a column kind 'n', 'u', 't' or 'b'", ByteDisplay(other)));
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn relation(&mut self) -> Result<Relation> {
        let id = self.u32("the relation id")?;
        let namespace = self.string("the relation namespace")?;
        let name = self.string("the relation name")?;
        let at = self.pos;
        let identity = self.u8("the replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| {
            self.invalid(
                at,
                "a replica identity 'd', 'n', 'f' or 'i'",
                ByteDisplay(identity),
            )
        })?;
        let count = self.u16("the number of columns")?;
        let mut columns = Vec::with_capacity(usize::from(count).min(self.remaining() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: self.u8("the column flags")?,
                name: self.string("a column name")?,
                type_oid: self.u32("a column type OID")?,
                type_modifier: self.i32("a column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a message byte by byte.
    #[derive(Default)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, s: &str) -> Self {
            let mut m = self.u8(b't').i32(s.len() as i32);
            m.0.extend_from_slice(s.as_bytes());
            m
        }
        fn binary(self, b: &[u8]) -> Self {
            let mut m = self.u8(b'b').i32(b.len() as i32);
            m.0.extend_from_slice(b);
            m
        }
        fn decode(&self) -> Result<Message> {
            decode(&Bytes::copy_from_slice(&self.0))
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin() {
        let m = Msg::new(b'B').u64(0x16B_3748).i64(817_000_000_123_456).u32(4711);
        assert_eq!(
            m.decode().unwrap(),
            Message::Begin(Begin {
                final_lsn: 0x16B_3748,
                commit_time: 817_000_000_123_456,
                xid: 4711
            })
        );
        assert_eq!(unix_micros(0), PG_EPOCH_OFFSET_MICROS);
    }

    #[test]
    fn commit() {
        let m = Msg::new(b'C').u8(0).u64(100).u64(148).i64(-5);
        assert_eq!(
            m.decode().unwrap(),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: 100,
                end_lsn: 148,
                commit_time: -5
            })
        );
    }

    #[test]
    fn origin() {
        let m = Msg::new(b'O').u64(u64::MAX).str("node_a");
        assert_eq!(
            m.decode().unwrap(),
            Message::Origin(Origin {
                commit_lsn: u64::MAX,
                name: "node_a".into()
            })
        );
    }

    #[test]
    fn relation() {
        let m = Msg::new(b'R')
            .u32(16_385)
            .str("public")
            .str("orders")
            .u8(b'd')
            .i16(3)
            .u8(1)
            .str("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .str("amount")
            .u32(1700)
            .i32((10 << 16 | 2) + 4)
            .u8(0)
            .str("näme")
            .u32(25)
            .i32(-1);
        let Message::Relation(r) = m.decode().unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.id, 16_385);
        assert_eq!(r.namespace, "public");
        assert_eq!(r.name, "orders");
        assert_eq!(r.replica_identity, ReplicaIdentity::Default);
        assert_eq!(r.columns.len(), 3);
        assert!(r.columns[0].is_key());
        assert!(!r.columns[1].is_key());
        assert_eq!(r.columns[1].type_oid, 1700);
        assert_eq!(r.columns[1].type_modifier, 655_366);
        assert_eq!(r.columns[2].name, "näme");
        for (b, identity) in [
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let m = Msg::new(b'R').u32(1).str("").str("t").u8(b).i16(0);
            let Message::Relation(r) = m.decode().unwrap() else {
                panic!()
            };
            assert_eq!(r.replica_identity, identity);
            assert_eq!(identity.as_byte(), b);
            assert!(r.columns.is_empty());
            assert_eq!(r.namespace, "");
        }
        let err = Msg::new(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'x')
            .i16(0)
            .decode()
            .unwrap_err();
        assert_eq!(
            err.message(),
            "pgoutput Relation message invalid at byte 8: expected a replica identity 'd', 'n', 'f' or \
             'i', got 'x'"
        );
    }

    #[test]
    fn type_message() {
        let m = Msg::new(b'Y').u32(16_400).str("public").str("mood");
        assert_eq!(
            m.decode().unwrap(),
            Message::Type(TypeMsg {
                id: 16_400,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
    }

    #[test]
    fn insert_with_null_unchanged_text_and_binary() {
        let m = Msg::new(b'I')
            .u32(16_385)
            .u8(b'N')
            .i16(5)
            .text("42")
            .u8(b'n')
            .u8(b'u')
            .text("")
            .binary(&[0, 1, 255]);
        let Message::Insert(i) = m.decode().unwrap() else {
            panic!()
        };
        assert_eq!(i.relation_id, 16_385);
        assert_eq!(
            i.new,
            Tuple(vec![
                text("42"),
                Value::Null,
                Value::Unchanged,
                text(""),
                Value::Binary(Bytes::from_static(&[0, 1, 255])),
            ])
        );
        assert_eq!(i.new.values()[0].as_text(), Some(&b"42"[..]));
        assert_eq!(i.new.values()[1].as_text(), None);
        assert_eq!(i.new.len(), 5);
    }

    #[test]
    fn values_are_slices_of_the_input() {
        let data = Bytes::from(Msg::new(b'I').u32(1).u8(b'N').i16(1).text("hello").0);
        let Message::Insert(i) = decode(&data).unwrap() else {
            panic!()
        };
        let Value::Text(v) = &i.new.0[0] else { panic!() };
        let range = data.as_ptr_range();
        assert!(range.contains(&v.as_ptr()));
    }

    #[test]
    fn update_without_old_with_key_and_with_full_old() {
        let m = Msg::new(b'U').u32(7).u8(b'N').i16(2).text("1").u8(b'u');
        assert_eq!(
            m.decode().unwrap(),
            Message::Update(Update {
                relation_id: 7,
                old: None,
                new: Tuple(vec![text("1"), Value::Unchanged])
            })
        );
        let m = Msg::new(b'U')
            .u32(7)
            .u8(b'K')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("2")
            .text("x");
        assert_eq!(
            m.decode().unwrap(),
            Message::Update(Update {
                relation_id: 7,
                old: Some(OldTuple::Key(Tuple(vec![text("1"), Value::Null]))),
                new: Tuple(vec![text("2"), text("x")])
            })
        );
        let m = Msg::new(b'U')
            .u32(7)
            .u8(b'O')
            .i16(2)
            .text("1")
            .text("a")
            .u8(b'N')
            .i16(2)
            .text("1")
            .text("b");
        let Message::Update(u) = m.decode().unwrap() else {
            panic!()
        };
        assert_eq!(u.old, Some(OldTuple::Full(Tuple(vec![text("1"), text("a")]))));
        assert_eq!(u.old.unwrap().tuple().len(), 2);
    }

    #[test]
    fn update_with_a_bad_tuple_type() {
        let err = Msg::new(b'U').u32(7).u8(b'X').i16(0).decode().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            err.message(),
            "pgoutput Update message invalid at byte 5: expected a tuple type 'K', 'O' or 'N', got 'X'"
        );
        let err = Msg::new(b'U')
            .u32(7)
            .u8(b'K')
            .i16(0)
            .u8(b'Q')
            .decode()
            .unwrap_err();
        assert!(
            err.message()
                .contains("expected the new tuple marker 'N', got 'Q'"),
            "{err}"
        );
    }

    #[test]
    fn delete_with_key_and_full_old() {
        let m = Msg::new(b'D').u32(9).u8(b'K').i16(1).text("5");
        assert_eq!(
            m.decode().unwrap(),
            Message::Delete(Delete {
                relation_id: 9,
                old: OldTuple::Key(Tuple(vec![text("5")]))
            })
        );
        let m = Msg::new(b'D').u32(9).u8(b'O').i16(2).text("5").u8(b'n');
        assert_eq!(
            m.decode().unwrap(),
            Message::Delete(Delete {
                relation_id: 9,
                old: OldTuple::Full(Tuple(vec![text("5"), Value::Null]))
            })
        );
        let err = Msg::new(b'D').u32(9).u8(b'N').i16(0).decode().unwrap_err();
        assert!(
            err.message()
                .contains("expected a tuple type 'K' or 'O', got 'N'"),
            "{err}"
        );
    }

    #[test]
    fn truncate_several_relations() {
        let m = Msg::new(b'T').i32(3).u8(3).u32(1).u32(2).u32(16_390);
        let Message::Truncate(t) = m.decode().unwrap() else {
            panic!()
        };
        assert_eq!(t.relation_ids, vec![1, 2, 16_390]);
        assert_eq!(t.options & Truncate::CASCADE, Truncate::CASCADE);
        assert_eq!(t.options & Truncate::RESTART_IDENTITY, Truncate::RESTART_IDENTITY);
        let err = Msg::new(b'T').i32(3).u8(0).u32(1).decode().unwrap_err();
        assert!(
            err.message()
                .starts_with("pgoutput Truncate message truncated at byte 10"),
            "{err}"
        );
        let err = Msg::new(b'T').i32(-1).u8(0).decode().unwrap_err();
        assert!(err.message().contains("non-negative"), "{err}");
    }

    #[test]
    fn logical_message() {
        let mut m = Msg::new(b'M').u8(1).u64(77).str("tarn").i32(3);
        m.0.extend_from_slice(b"a\0b");
        assert_eq!(
            m.decode().unwrap(),
            Message::LogicalMessage(LogicalMessage {
                transactional: true,
                lsn: 77,
                prefix: "tarn".into(),
                content: Bytes::from_static(b"a\0b")
            })
        );
        let m = Msg::new(b'M').u8(0).u64(77).str("").i32(0);
        let Message::LogicalMessage(l) = m.decode().unwrap() else {
            panic!()
        };
        assert!(!l.transactional);
        assert!(l.content.is_empty());
    }

    #[test]
    fn empty_unknown_and_trailing_bytes() {
        let err = decode(&Bytes::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("empty"));
        let err = decode_slice(b"S\0\0\0\x01").unwrap_err();
        assert!(err.message().contains("unknown type 'S'"), "{err}");
        let err = decode_slice(&[0x01]).unwrap_err();
        assert!(err.message().contains("unknown type byte 0x01"), "{err}");
        let mut m = Msg::new(b'B').u64(1).i64(2).u32(3);
        m.0.push(0);
        let err = m.decode().unwrap_err();
        assert_eq!(
            err.message(),
            "pgoutput Begin message invalid at byte 21: expected the end of the message, got 1 more bytes"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = Msg::new(b'U')
            .u32(7)
            .u8(b'O')
            .i16(2)
            .text("1")
            .text("a")
            .u8(b'N')
            .i16(2)
            .u8(b'u')
            .text("b");
        assert!(full.decode().is_ok());
        for len in 0..full.0.len() {
            let err = decode_slice(&full.0[..len]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            if len > 0 {
                assert!(
                    err.message()
                        .starts_with("pgoutput Update message truncated at byte"),
                    "{err}"
                );
            }
        }
        let err = decode_slice(&full.0[..5]).unwrap_err();
        assert_eq!(
            err.message(),
            "pgoutput Update message truncated at byte 5: expected a tuple type 'K', 'O' or 'N', got the \
             end of the message (5 bytes)"
        );
    }

    #[test]
    fn bad_lengths_strings_and_kinds() {
        let err = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-1)
            .decode()
            .unwrap_err();
        assert!(err.message().contains("invalid at byte 9"), "{err}");
        let err = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(100)
            .decode()
            .unwrap_err();
        assert!(err.message().contains("expected 100 bytes"), "{err}");
        let err = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b'z')
            .decode()
            .unwrap_err();
        assert!(
            err.message()
                .contains("column kind 'n', 'u', 't' or 'b', got 'z'"),
            "{err}"
        );
        let err = Msg::new(b'I').u32(1).u8(b'O').decode().unwrap_err();
        assert!(err.message().contains("marker 'N', got 'O'"), "{err}");
        let mut m = Msg::new(b'Y').u32(1);
        m.0.extend_from_slice(&[0xff, 0xfe, 0]);
        let err = m.str("t").decode().unwrap_err();
        assert!(err.message().contains("the type namespace in UTF-8"), "{err}");
        let err = Msg::new(b'O').u64(1).u8(b'a').decode().unwrap_err();
        assert!(err.message().contains("ending in a NUL byte"), "{err}");
    }

    fn hex(s: &str) -> Bytes {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    /// Messages captured from PostgreSQL 15 (`pg_logical_slot_peek_binary_changes` with
    /// `proto_version '1'`).
    #[test]
    fn messages_captured_from_postgres() {
        let Message::Relation(r) = decode(&hex(
            "52000040807075626c6963006f7264657273006400040169640000000014ffffffff006e6f74650000000019\
             ffffffff006269670000000019ffffffff00616d6f756e7400000006a4000a0006",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.id, r.namespace.as_str(), r.name.as_str()),
            (16_512, "public", "orders")
        );
        let columns: Vec<_> = r
            .columns
            .iter()
            .map(|c| (c.is_key(), c.name.as_str(), c.type_oid, c.type_modifier))
            .collect();
        assert_eq!(
            columns,
            vec![
                (true, "id", 20, -1),
                (false, "note", 25, -1),
                (false, "big", 25, -1),
                (false, "amount", 1700, 655_366)
            ]
        );
        assert_eq!(
            decode(&hex("4200000000016190c80003043d767a5c39000002ed")).unwrap(),
            Message::Begin(Begin {
                final_lsn: 0x16190c8,
                commit_time: 0x3043d767a5c39,
                xid: 749
            })
        );
        assert_eq!(
            decode(&hex("4300000000000161930800000000016193380003043d767a9645")).unwrap(),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: 0x1619308,
                end_lsn: 0x1619338,
                commit_time: 0x3043d767a9645
            })
        );
        // UPDATE orders SET note = 'changed': the TOASTed column `big` is unchanged.
        assert_eq!(
            decode(&hex(
                "55000040804e000474000000013174000000076368616e676564757400000004392e3939"
            ))
            .unwrap(),
            Message::Update(Update {
                relation_id: 16_512,
                old: None,
                new: Tuple(vec![text("1"), text("changed"), Value::Unchanged, text("9.99")])
            })
        );
        // UPDATE orders SET id = 3 WHERE id = 2: the old key comes along.
        assert_eq!(
            decode(&hex(
                "55000040804b00047400000001326e6e6e4e00047400000001336e7400000001626e"
            ))
            .unwrap(),
            Message::Update(Update {
                relation_id: 16_512,
                old: Some(OldTuple::Key(Tuple(vec![
                    text("2"),
                    Value::Null,
                    Value::Null,
                    Value::Null
                ]))),
                new: Tuple(vec![text("3"), Value::Null, text("b"), Value::Null])
            })
        );
        assert_eq!(
            decode(&hex("44000040804b00047400000001336e6e6e")).unwrap(),
            Message::Delete(Delete {
                relation_id: 16_512,
                old: OldTuple::Key(Tuple(vec![text("3"), Value::Null, Value::Null, Value::Null]))
            })
        );
        assert_eq!(
            decode(&hex("590000400f7075626c69630063697465787400")).unwrap(),
            Message::Type(TypeMsg {
                id: 16_399,
                namespace: "public".into(),
                name: "citext".into()
            })
        );
        // TRUNCATE orders, full_t RESTART IDENTITY CASCADE
        assert_eq!(
            decode(&hex("5400000002030000408000004087")).unwrap(),
            Message::Truncate(Truncate {
                options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
                relation_ids: vec![16_512, 16_519]
            })
        );
        assert_eq!(
            decode(&hex("4d01000000000161aa887461726e000000000568656c6c6f")).unwrap(),
            Message::LogicalMessage(LogicalMessage {
                transactional: true,
                lsn: 0x161aa88,
                prefix: "tarn".into(),
                content: Bytes::from_static(b"hello")
            })
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_slice(&data);
        }

        #[test]
        fn random_bytes_after_a_tag_never_panic(
            tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
            data in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(data);
            let _ = decode_slice(&bytes);
        }

        #[test]
        fn inserts_round_trip(values in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)), 0..20)) {
            let mut m = Msg::new(b'I').u32(3).u8(b'N').i16(values.len() as i16);
            for v in &values {
                m = match v {
                    None => m.u8(b'n'),
                    Some(b) => m.binary(b),
                };
            }
            let Message::Insert(i) = m.decode().unwrap() else { panic!() };
            let expected: Vec<Value> = values
                .iter()
                .map(|v| v.as_ref().map_or(Value::Null, |b| Value::Binary(Bytes::copy_from_slice(b))))
                .collect();
            prop_assert_eq!(i.new.0, expected);
        }
    }
}
