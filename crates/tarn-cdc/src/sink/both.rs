//! Two sinks fed by one source: [`Both`], what `cdc.sink = "lake+kafka"` runs (the lake and
//! Kafka topics from one slot or changefeed).
//!
//! Every event goes to both; a flush makes both durable (the first, then the second) before
//! the source is acknowledged, so the acknowledged position is durable in each. A failure of
//! either restarts the pipeline, and the replay is skipped by whichever sink already holds it:
//! each keeps its own positions, so each is exactly-once on its own. A table is copied when
//! either sink lacks a position for it (a copy replaces what the lake held). The first sink
//! paces the flushes.

use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use tarn_core::Result;
use tarn_core::config::MaintenanceConfig;

use super::{Attached, ChangeSink, TablePosition};
use crate::source::{BatchWriter, Position, SourceEvent, TableId, TableSpec};

/// Two sinks as one; see the module doc.
pub struct Both<A, B> {
    first: A,
    second: B,
}

impl<A: ChangeSink, B: ChangeSink> Both<A, B> {
    /// `first` and `second` fed alike; `first` paces the flushes.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

/// A copy connection writing every batch to both sinks' writers.
pub struct BothWriter<A, B> {
    first: A,
    second: B,
}

#[async_trait::async_trait]
impl<A: BatchWriter, B: BatchWriter> BatchWriter for BothWriter<A, B> {
    type Output = (A::Output, B::Output);

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.first.write(batch.clone()).await?;
        self.second.write(batch).await
    }

    async fn finish(self) -> Result<Self::Output> {
        Ok((self.first.finish().await?, self.second.finish().await?))
    }
}

impl<A: ChangeSink, B: ChangeSink> ChangeSink for Both<A, B> {
    type Copy = (A::Copy, B::Copy);
    type CopyPart = (A::CopyPart, B::CopyPart);
    type CopyWriter = BothWriter<A::CopyWriter, B::CopyWriter>;

    fn has_table(&self, id: TableId) -> bool {
        self.first.has_table(id) && self.second.has_table(id)
    }

    fn table_positions(&self) -> Vec<TablePosition> {
        let mut out = self.first.table_positions();
        out.extend(self.second.table_positions());
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    fn pending_events(&self) -> u64 {
        self.first.pending_events().max(self.second.pending_events())
    }

    fn pending_bytes(&self) -> usize {
        self.first.pending_bytes().max(self.second.pending_bytes())
    }

    fn pending_since(&self) -> Option<Instant> {
        match (self.first.pending_since(), self.second.pending_since()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn in_transaction(&self) -> bool {
        self.first.in_transaction()
    }

    fn last_commit(&self) -> Option<(Position, i64)> {
        self.first.last_commit()
    }

    async fn attach(&mut self, spec: Arc<TableSpec>) -> Result<Attached> {
        let a = self.first.attach(spec.clone()).await?;
        let b = self.second.attach(spec).await?;
        let position = match (&a.position, &b.position) {
            // The older one: the source replays from it, and the other sink skips.
            (Some(x), Some(y)) => Some(if y < x { y.clone() } else { x.clone() }),
            // One lacks the table: copy it again.
            _ => None,
        };
        Ok(Attached {
            target: format!("{} + {}", a.target, b.target),
            position,
            stopped: a.stopped.or(b.stopped),
            indexed_rows: a.indexed_rows,
        })
    }

    async fn apply(&mut self, event: SourceEvent) -> Result<()> {
        self.first.apply(event.clone()).await?;
        self.second.apply(event).await
    }

    async fn spill_if_needed(&mut self) -> Result<()> {
        self.first.spill_if_needed().await?;
        self.second.spill_if_needed().await
    }

    async fn mark_idle(&mut self, position: &Position) -> Result<()> {
        self.first.mark_idle(position).await?;
        self.second.mark_idle(position).await
    }

    async fn flush(&mut self) -> Result<Option<Position>> {
        let a = self.first.flush().await?;
        let b = self.second.flush().await?;
        Ok(match (a, b) {
            (Some(x), Some(y)) => Some(if y < x { y } else { x }),
            _ => None,
        })
    }

    async fn begin_copy(&mut self, id: TableId, position: &Position) -> Result<Self::Copy> {
        Ok((
            self.first.begin_copy(id, position).await?,
            self.second.begin_copy(id, position).await?,
        ))
    }

    fn copy_writer(&self, id: TableId, part: usize, copy: &Self::Copy) -> Result<Self::CopyWriter> {
        Ok(BothWriter {
            first: self.first.copy_writer(id, part, &copy.0)?,
            second: self.second.copy_writer(id, part, &copy.1)?,
        })
    }

    async fn finish_copy(
        &mut self,
        id: TableId,
        parts: Vec<Self::CopyPart>,
        copy: Self::Copy,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        let (a, b): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        let rows = self
            .first
            .finish_copy(id, a, copy.0, position.clone(), kind)
            .await?;
        self.second.finish_copy(id, b, copy.1, position, kind).await?;
        Ok(rows)
    }

    fn flush_interval(&self) -> Option<std::time::Duration> {
        self.first.flush_interval()
    }

    async fn maintain(&mut self, config: &MaintenanceConfig) -> Result<()> {
        self.first.maintain(config).await?;
        self.second.maintain(config).await
    }
}
