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
//! [`TableSpec`] says how to turn them into Arrow columns. A source's copy of a whole table
//! hands Arrow batches to a [`BatchWriter`] and reports into a [`CopyProgress`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tarn_core::Result;

use crate::pipeline::SourceContext;
pub use crate::position::Position;
use crate::sink::ChangeSink;
use crate::value::ColumnType;
pub use crate::value::Value;

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

impl ColumnSpec {
    /// Column `name` (attribute number `attnum`) of `column_type` as PostgreSQL describes it —
    /// its built-in type's OID and name (`int8`, `numeric`, `_text`, ...) — NOT NULL when it is
    /// part of the key: for tables that scripted sources, tests and benchmarks make up.
    pub fn new(name: &str, column_type: ColumnType, key: bool, attnum: i16) -> Self {
        let (type_oid, type_name) = builtin_type(&column_type);
        Self {
            name: name.to_string(),
            column_type,
            key,
            not_null: key,
            type_oid,
            type_name: type_name.to_string(),
            attnum,
        }
    }
}

/// PostgreSQL's built-in type (OID, name) that maps to `column_type`.
fn builtin_type(column_type: &ColumnType) -> (u32, &'static str) {
    match column_type {
        ColumnType::Bool => (16, "bool"),
        ColumnType::Int16 => (21, "int2"),
        ColumnType::Int32 => (23, "int4"),
        ColumnType::Int64 => (20, "int8"),
        ColumnType::Float32 => (700, "float4"),
        ColumnType::Float64 => (701, "float8"),
        ColumnType::Decimal { .. } => (1700, "numeric"),
        ColumnType::Text => (25, "text"),
        ColumnType::Bytea => (17, "bytea"),
        ColumnType::Date => (1082, "date"),
        ColumnType::Time => (1083, "time"),
        ColumnType::Timestamp => (1114, "timestamp"),
        ColumnType::TimestampTz => (1184, "timestamptz"),
        ColumnType::List(element) => match **element {
            ColumnType::Bool => (1000, "_bool"),
            ColumnType::Int16 => (1005, "_int2"),
            ColumnType::Int32 => (1007, "_int4"),
            ColumnType::Int64 => (1016, "_int8"),
            ColumnType::Float32 => (1021, "_float4"),
            ColumnType::Float64 => (1022, "_float8"),
            ColumnType::Decimal { .. } => (1231, "_numeric"),
            ColumnType::Bytea => (1001, "_bytea"),
            ColumnType::Date => (1182, "_date"),
            ColumnType::Time => (1183, "_time"),
            ColumnType::Timestamp => (1115, "_timestamp"),
            ColumnType::TimestampTz => (1185, "_timestamptz"),
            _ => (1009, "_text"),
        },
    }
}

/// How a source identifies the rows of a table in updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A primary key (or unique replica-identity index): `ColumnSpec::key` columns.
    PrimaryKey,
    /// No key: every column identifies the row (PostgreSQL `REPLICA IDENTITY FULL`).
    FullRow,
}

impl KeyKind {
    /// How rows of a table with `columns` are identified when nothing else says: by the key
    /// columns if there are any, else by the whole row.
    pub fn of(columns: &[ColumnSpec]) -> Self {
        if columns.iter().any(|c| c.key) {
            KeyKind::PrimaryKey
        } else {
            KeyKind::FullRow
        }
    }
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
        /// The source's transaction id (PostgreSQL's xid), where it has one; published as
        /// Debezium's `source.txId`.
        transaction_id: Option<i64>,
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

/// Receives the Arrow batches of a table copy (one writer per copy connection or chunk); the
/// lake sink's snapshot writer and the Kafka publisher's copy writer are.
#[async_trait]
pub trait BatchWriter: Send {
    /// What the writer produced.
    type Output: Send;
    /// Writes one batch.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// Finishes writing.
    async fn finish(self) -> Result<Self::Output>;
}

/// Live counters of a copy, for progress bars and metrics.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Rows copied.
    pub rows: AtomicU64,
    /// Bytes of COPY text read.
    pub bytes: AtomicU64,
    /// Chunks done.
    pub chunks_done: AtomicU64,
    /// Chunks planned.
    pub chunks: AtomicU64,
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

/// A source of changes that [`crate::pipeline`] drives into a [`ChangeSink`] (the lake, or
/// Kafka topics): PostgreSQL logical replication, CockroachDB changefeeds, Kafka topics.
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
    fn start<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// The next events, waiting until `deadline` at most.
    fn next(
        &mut self,
        ctx: &SourceContext<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Next>> + Send;

    /// Everything up to `position` is committed to the lake.
    fn acknowledge<K: ChangeSink>(
        &mut self,
        position: &Position,
        sink: &mut K,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A table appeared in the stream that the sink does not hold (PostgreSQL: a table added
    /// to the publication): attach it to `sink` and copy it, before its first change.
    fn adopt<K: ChangeSink>(
        &mut self,
        spec: Arc<TableSpec>,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Periodic housekeeping between transactions (every few seconds): PostgreSQL looks for
    /// new tables, CockroachDB checks its changefeed job.
    fn tick<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stops cleanly; `durable` is the last position committed to the lake in this run.
    fn stop<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        durable: Option<&Position>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The newest position the source has delivered or reported.
    fn received(&self) -> Option<Position>;

    /// When to commit.
    fn flush_rule(&self) -> FlushRule;
}
