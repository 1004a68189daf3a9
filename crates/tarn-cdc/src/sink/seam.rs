//! The sink side of the seam: [`ChangeSink`], what a [`crate::source::ChangeSource`] writes
//! into — the lake ([`LakeSink`]) or Kafka topics of Debezium change events
//! (`crate::kafka::KafkaSink`, `cdc.sink = "kafka"`).
//!
//! **The contract every sink keeps**, and the pipeline relies on:
//!
//! - Each attached table holds a durable position: everything of the table's changes up to it
//!   is in the sink. [`ChangeSink::attach`] reads it back after a restart.
//! - Events come in the source's commit order, whole transactions between
//!   [`SourceEvent::Begin`] and [`SourceEvent::Commit`]; a table skips every transaction its
//!   position already holds ([`Position::holds`]), which is what makes a source's
//!   at-least-once replay exactly-once.
//! - [`ChangeSink::flush`] (only between transactions) makes everything applied durable, all
//!   or nothing, with the positions of the tables it touched, and returns the position the
//!   source may be acknowledged up to. Nothing of a transaction is durable before its whole is.
//! - A table copy ([`ChangeSink::begin_copy`] … [`ChangeSink::finish_copy`]) becomes durable
//!   with the position its snapshot ends at, never half.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tarn_core::Result;
use tarn_core::config::MaintenanceConfig;

use super::{Attached, LakeSink, SnapshotPart, SnapshotPartWriter, TableCounters};
use crate::index::KeyIndex;
use crate::source::{BatchWriter, Position, SourceEvent, TableId, TableSpec};

/// One attached table as a sink reports it (status, `tarn cdc status`).
#[derive(Debug, Clone)]
pub struct TablePosition {
    /// Where the table's changes go: a lake table or a topic.
    pub target: String,
    /// The durable position it holds everything up to.
    pub position: Option<Position>,
    /// Why it was stopped, if it was.
    pub stopped: Option<String>,
    /// Live counters.
    pub counters: TableCounters,
}

/// Where a pipeline writes its source's changes; see the module doc.
pub trait ChangeSink: Send + Sync {
    /// What the connections of one table copy share (the lake: the key index they fill).
    type Copy: Clone + Send + Sync + 'static;
    /// What one copy connection's writer produced.
    type CopyPart: Send + 'static;
    /// One copy connection's writer.
    type CopyWriter: BatchWriter<Output = Self::CopyPart> + 'static;

    /// Whether source table `id` is attached.
    fn has_table(&self, id: TableId) -> bool;

    /// Every attached table, sorted by target.
    fn table_positions(&self) -> Vec<TablePosition>;

    /// Changes applied and not yet durable.
    fn pending_events(&self) -> u64;

    /// Bytes of changes applied and not yet durable (the flush size rule's measure).
    fn pending_bytes(&self) -> usize;

    /// When the oldest change not yet durable arrived.
    fn pending_since(&self) -> Option<Instant>;

    /// Whether a transaction is being applied.
    fn in_transaction(&self) -> bool;

    /// The end of the last transaction applied, and its commit time (µs since the epoch).
    fn last_commit(&self) -> Option<(Position, i64)>;

    /// Finds (or creates) where table `spec` goes and reads the position it holds.
    fn attach(&mut self, spec: Arc<TableSpec>) -> impl Future<Output = Result<Attached>> + Send;

    /// Applies one event of the stream.
    fn apply(&mut self, event: SourceEvent) -> impl Future<Output = Result<()>> + Send;

    /// Inside a large transaction: moves buffered changes out of memory if the sink buffers
    /// them (nothing becomes durable).
    fn spill_if_needed(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Records `position` (one every table has been flushed up to) on tables without changes
    /// since their last flush, so a quiet table does not hold a restart back.
    fn mark_idle(&mut self, position: &Position) -> impl Future<Output = Result<()>> + Send;

    /// Makes everything applied durable; returns the position the source may be acknowledged
    /// up to (`None`: nothing was applied). Only between transactions.
    fn flush(&mut self) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// Starts a copy of table `id` as of `position` (where its snapshot ends).
    fn begin_copy(
        &mut self,
        id: TableId,
        position: &Position,
    ) -> impl Future<Output = Result<Self::Copy>> + Send;

    /// The writer of copy connection `part`.
    fn copy_writer(&self, id: TableId, part: usize, copy: &Self::Copy) -> Result<Self::CopyWriter>;

    /// Makes a finished copy of table `id` durable as everything the table holds up to
    /// `position` (`kind`: `initial`, `table-added`, `resnapshot`); returns the rows copied.
    fn finish_copy(
        &mut self,
        id: TableId,
        parts: Vec<Self::CopyPart>,
        copy: Self::Copy,
        position: Position,
        kind: &str,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// How long a change may wait before a flush, when the sink paces itself (Kafka); `None`:
    /// `cdc.flush.interval`.
    fn flush_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Periodic upkeep of what the sink wrote (the lake: compaction, snapshot expiry, orphan
    /// files, started in the background; it does not wait for them).
    fn maintain(&mut self, config: &MaintenanceConfig) -> impl Future<Output = Result<()>> + Send;
}

impl ChangeSink for LakeSink {
    type Copy = Arc<std::sync::Mutex<KeyIndex>>;
    type CopyPart = SnapshotPart;
    type CopyWriter = SnapshotPartWriter;

    fn has_table(&self, id: TableId) -> bool {
        LakeSink::has_table(self, id)
    }

    fn table_positions(&self) -> Vec<TablePosition> {
        LakeSink::table_positions(self)
    }

    fn pending_events(&self) -> u64 {
        LakeSink::pending_events(self)
    }

    fn pending_bytes(&self) -> usize {
        LakeSink::pending_bytes(self)
    }

    fn pending_since(&self) -> Option<Instant> {
        LakeSink::pending_since(self)
    }

    fn in_transaction(&self) -> bool {
        LakeSink::in_transaction(self)
    }

    fn last_commit(&self) -> Option<(Position, i64)> {
        LakeSink::last_commit(self)
    }

    async fn attach(&mut self, spec: Arc<TableSpec>) -> Result<Attached> {
        LakeSink::attach(self, spec).await
    }

    async fn apply(&mut self, event: SourceEvent) -> Result<()> {
        LakeSink::apply(self, event).await
    }

    async fn spill_if_needed(&mut self) -> Result<()> {
        LakeSink::spill_if_needed(self).await
    }

    async fn mark_idle(&mut self, position: &Position) -> Result<()> {
        LakeSink::mark_idle(self, position).await
    }

    async fn flush(&mut self) -> Result<Option<Position>> {
        LakeSink::flush(self).await
    }

    async fn begin_copy(&mut self, id: TableId, _position: &Position) -> Result<Self::Copy> {
        self.snapshot_index(id)
    }

    fn copy_writer(&self, id: TableId, part: usize, copy: &Self::Copy) -> Result<SnapshotPartWriter> {
        self.snapshot_writer(id, part, copy.clone())
    }

    async fn finish_copy(
        &mut self,
        id: TableId,
        parts: Vec<SnapshotPart>,
        copy: Self::Copy,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        self.finish_snapshot(id, parts, copy, position, kind).await
    }

    async fn maintain(&mut self, config: &MaintenanceConfig) -> Result<()> {
        LakeSink::maintain(self, config).await
    }
}
