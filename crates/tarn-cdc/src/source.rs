//! What a change-data-capture source delivers, whatever it reads, and the seam every source
//! plugs into: [`ChangeSource`].
//!
//! A source produces a stream of [`SourceEvent`]s in commit order: the schema of each table
//! before its first change ([`SourceEvent::Relation`]), the row changes of one transaction,
//! then [`SourceEvent::Commit`] with the transaction's [`Position`]. Positions only grow.
//!
//! The delivery contract is **at-least-once from the last acknowledged position**: after a
//! restart the source replays every transaction after the position it was last told about by
//! [`ChangeSource::acknowledge`] (PostgreSQL: the slot's `confirmed_flush_lsn`; CockroachDB:
//! the changefeed's cursor, the oldest position a lake table holds), so the lake writer must
//! skip what a table already holds. The writer makes it exactly-once by recording each
//! table's position in its Iceberg snapshot summaries.
//!
//! Row values travel as PostgreSQL text-format cells ([`Value`]); each table's
//! [`TableSpec`] says how to turn them into Arrow columns.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tarn_core::Result;

use crate::pipeline::SourceContext;
use crate::sink::LakeSink;
use crate::value::ColumnType;
pub use crate::value::Value;

/// A position in the source's change stream; higher is later.
///
/// PostgreSQL positions are LSNs (64 bits). CockroachDB positions are hybrid-logical-clock
/// timestamps, `wall.logical` (nanoseconds since the Unix epoch and a logical counter),
/// packed as `wall << 32 | logical`. Any CockroachDB timestamp after 1970-01-01 00:00:04 is
/// above `u64::MAX`, so the two never meet and [`Position`]'s text form tells them apart:
/// `16/B374D848` for an LSN, `1700000000123456789.0000000002` for a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u128);

impl Position {
    /// The position of PostgreSQL LSN `lsn`.
    pub fn from_lsn(lsn: u64) -> Self {
        Self(u128::from(lsn))
    }

    /// The PostgreSQL LSN of this position (saturating for a timestamp position).
    pub fn lsn(self) -> u64 {
        u64::try_from(self.0).unwrap_or(u64::MAX)
    }

    /// The position of CockroachDB timestamp `wall.logical`.
    pub fn from_hlc(wall_nanos: u64, logical: u32) -> Self {
        Self((u128::from(wall_nanos) << 32) | u128::from(logical))
    }

    /// Whether this is a CockroachDB timestamp (not an LSN).
    pub fn is_hlc(self) -> bool {
        self.0 > u128::from(u64::MAX)
    }

    /// The wall time of a timestamp position, nanoseconds since the Unix epoch.
    pub fn wall_nanos(self) -> u64 {
        (self.0 >> 32) as u64
    }

    /// Parses PostgreSQL's `X/Y` LSN notation.
    pub fn parse_lsn(text: &str) -> Option<Self> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return None;
        }
        Some(Self::from_lsn((hi << 32) | lo))
    }

    /// Parses CockroachDB's `wall.logical` timestamp notation (`updated`, `resolved`,
    /// `cursor`): decimal nanoseconds, then up to ten digits of logical counter.
    pub fn parse_hlc(text: &str) -> Option<Self> {
        let text = text.trim();
        let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
        if wall.is_empty()
            || logical.is_empty()
            || logical.len() > 10
            || !wall.bytes().all(|b| b.is_ascii_digit())
            || !logical.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let position = Self::from_hlc(wall.parse().ok()?, logical.parse().ok()?);
        position.is_hlc().then_some(position)
    }

    /// Parses either notation.
    pub fn parse(text: &str) -> Option<Self> {
        Self::parse_lsn(text).or_else(|| Self::parse_hlc(text))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_hlc() {
            write!(f, "{}.{:010}", self.wall_nanos(), self.0 as u32)
        } else {
            let lsn = self.lsn();
            write!(f, "{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
        }
    }
}

/// A source table's identity within one stream (PostgreSQL: the relation OID).
pub type TableId = u32;

/// A column of a captured table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// The column name.
    pub name: String,
    /// How its values map to Arrow/Iceberg.
    pub column_type: ColumnType,
    /// Part of the primary key (or replica identity).
    pub key: bool,
    /// NOT NULL in the source.
    pub not_null: bool,
    /// The source's type OID, for messages.
    pub type_oid: u32,
    /// The source's type name, for messages.
    pub type_name: String,
    /// The source's attribute number, stable across renames (0 when unknown).
    pub attnum: i16,
}

/// How a source identifies the rows of a table in updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A primary key (or unique replica-identity index): `ColumnSpec::key` columns.
    PrimaryKey,
    /// No key: every column identifies the row (PostgreSQL `REPLICA IDENTITY FULL`).
    FullRow,
}

/// A captured table: its name in the source and its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The source's id for the table.
    pub id: TableId,
    /// The source schema.
    pub schema: String,
    /// The source table name.
    pub name: String,
    /// Columns in source order.
    pub columns: Vec<ColumnSpec>,
    /// How rows are identified.
    pub key_kind: KeyKind,
}

impl TableSpec {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Indexes of the columns that identify a row.
    pub fn key_columns(&self) -> Vec<usize> {
        match self.key_kind {
            KeyKind::PrimaryKey => self
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect(),
            KeyKind::FullRow => (0..self.columns.len()).collect(),
        }
    }
}

/// A row as the source sent it: one cell per column of the table's spec.
pub type Row = Vec<Value>;

/// One event of a source's change stream.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A transaction starts; it will commit at `commit_position` (used to skip transactions
    /// a table already holds).
    Begin {
        /// Where the transaction commits.
        commit_position: Position,
    },
    /// The schema of a table, before its first change and after every schema change.
    Relation(Arc<TableSpec>),
    /// A row was inserted.
    Insert {
        /// The table.
        table: TableId,
        /// The new row.
        new: Row,
    },
    /// A row was updated. `old` holds the key columns (when the key changed) or the whole old
    /// row (full replica identity); absent when the key did not change.
    Update {
        /// The table.
        table: TableId,
        /// The old key or row.
        old: Option<Row>,
        /// The new row; unchanged TOASTed values are [`Value::Unchanged`].
        new: Row,
    },
    /// A row was deleted; `old` holds at least the key columns.
    Delete {
        /// The table.
        table: TableId,
        /// The old key or row.
        old: Row,
    },
    /// Tables were truncated.
    Truncate {
        /// The tables.
        tables: Vec<TableId>,
    },
    /// The transaction committed: everything up to `position` is in the stream.
    Commit {
        /// The end of the transaction; acknowledging it means it never comes again.
        position: Position,
        /// Commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
    /// The source is idle at `position`: nothing for us before it.
    Keepalive {
        /// The source's current position.
        position: Position,
    },
}

/// What [`ChangeSource::next`] found.
#[derive(Debug)]
pub enum Next {
    /// Events in stream order: whole transactions, or the start of one that the following
    /// calls continue.
    Events(Vec<SourceEvent>),
    /// Nothing arrived before the deadline.
    Idle,
    /// The pipeline is stopping (its stop token was cancelled).
    Stopped,
}

/// When the pipeline commits what it buffered, besides the size limits (`cdc.flush.max_rows`,
/// `cdc.flush.max_bytes`), always between transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushRule {
    /// When the oldest buffered change is `cdc.flush.interval` old: PostgreSQL, whose
    /// transactions arrive as they commit.
    OldestChange,
    /// At each checkpoint the source closes (a CockroachDB resolved timestamp), unless the last
    /// commit started less than 0.9 × `cdc.flush.interval` ago: freshness is the source's
    /// checkpoint cadence, and commits come no more often than the flush interval (a tenth of
    /// it is slack for the cadence's jitter). A deadline of one interval after the oldest
    /// change still applies.
    EachCheckpoint,
}

/// A source of changes that [`crate::pipeline`] drives into the lake: PostgreSQL logical
/// replication, CockroachDB changefeeds.
///
/// **Delivery contract.** [`start`](Self::start) brings every captured table into the sink
/// (copying the tables that hold no position yet, each copy committed with the position its
/// snapshot ends at) and returns the position streaming resumes from. [`next`](Self::next)
/// then delivers every transaction committed after that position at least once, in commit
/// order, each opened by [`SourceEvent::Begin`] and closed by [`SourceEvent::Commit`];
/// transactions a table already holds may come again (the sink skips them, so the lake
/// applies each exactly once). [`acknowledge`](Self::acknowledge) tells the source that
/// everything up to a position is committed to the lake: after a restart nothing before it
/// needs to come again, and the source may release what it kept for it (a slot's WAL).
/// A source never acknowledges by itself.
///
/// The pipeline calls the methods one at a time, never concurrently; `next` returns
/// [`Next::Idle`] at its deadline and [`Next::Stopped`] when the context's stop token is
/// cancelled, so the pipeline never drops a `next` future half way.
pub trait ChangeSource: Send {
    /// Connects what streaming needs, attaches every captured table to `sink` and copies the
    /// tables without a position; returns where the stream starts (the position considered
    /// acknowledged), or `None` when stopped during the copy.
    fn start(
        &mut self,
        sink: &mut LakeSink,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// The next events, waiting until `deadline` at most.
    fn next(
        &mut self,
        ctx: &SourceContext<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Next>> + Send;

    /// Everything up to `position` is committed to the lake.
    fn acknowledge(
        &mut self,
        position: Position,
        sink: &mut LakeSink,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A table appeared in the stream that the sink does not hold (PostgreSQL: a table added
    /// to the publication): attach it to `sink` and copy it, before its first change.
    fn adopt(
        &mut self,
        spec: Arc<TableSpec>,
        sink: &mut LakeSink,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Periodic housekeeping between transactions (every few seconds): PostgreSQL looks for
    /// new tables, CockroachDB checks its changefeed job.
    fn tick(
        &mut self,
        sink: &mut LakeSink,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stops cleanly; `durable` is the last position committed to the lake in this run.
    fn stop(
        &mut self,
        sink: &mut LakeSink,
        durable: Option<Position>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The newest position the source has delivered or reported.
    fn received(&self) -> Option<Position>;

    /// When to commit.
    fn flush_rule(&self) -> FlushRule;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let p = Position::parse_lsn("16/B374D848").unwrap();
        assert_eq!(p.0, 0x16_B374_D848);
        assert_eq!(p.to_string(), "16/B374D848");
        assert_eq!(Position::parse_lsn("0/0"), Some(Position(0)));
        assert!(Position::parse_lsn("nope").is_none());
        assert!(Position(1) < Position(2));
    }

    #[test]
    fn hlc_round_trip() {
        let p = Position::parse_hlc("1700000000123456789.0000000002").unwrap();
        assert!(p.is_hlc());
        assert_eq!(p.wall_nanos(), 1_700_000_000_123_456_789);
        assert_eq!(p.to_string(), "1700000000123456789.0000000002");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        assert!(Position::parse_hlc("1700000000123456789.0000000003").unwrap() > p);
        assert!(Position::parse_hlc("1700000000123456790").unwrap() > p);
        assert!(
            Position::parse_hlc("1700000000123456789.1").unwrap()
                < Position::parse_hlc("1700000000123456789.2").unwrap()
        );
        for bad in ["", "12a.1", "1.", ".1", "1700000000123456789.12345678901", "3.0"] {
            assert!(Position::parse_hlc(bad).is_none(), "{bad}");
        }
        assert!(Position::parse("16/B374D848").is_some_and(|p| !p.is_hlc()));
    }
}
