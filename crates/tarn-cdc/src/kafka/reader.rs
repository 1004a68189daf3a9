//! The reading half of the Kafka source: a task that polls the consumer, turns records into
//! transactions ([`RecordMapper`]), sends the records that are not change events to the
//! dead-letter topic, and hands the results to the pipeline as [`Batch`]es.
//!
//! Why a task of its own: decoding JSON is about half of the work per record, and the lake
//! writer the other half; in one task they take turns on one core, in two they overlap (the
//! benchmark's events/s rose by about half on two cores). The channel holds at most
//! [`BATCHES_AHEAD`] batches, so while the lake commits the reader stops after a few thousand
//! records, and memory stays bounded (librdkafka's own prefetch queue aside).
//!
//! A batch is handed over only after every record it dead-lettered is acknowledged by the
//! broker ([`DeadLetterTopic::flush`]): the lake never records an offset past a record that
//! is neither in a table nor in the dead-letter topic. An error (the broker unreachable, a
//! failed dead-letter produce) is the task's last message; the pipeline restarts from the
//! lake's offsets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use tarn_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;

use super::dead_letter::DeadLetterTopic;
use super::events::{Record, RecordMapper};
use super::lag::WatermarkContext;
use crate::pipeline::PartitionReport;
use crate::position::KafkaOffsets;
use crate::source::SourceEvent;

/// Most records in one batch.
pub const MAX_BATCH: usize = 4096;
/// Batches the reader may be ahead of the pipeline.
pub const BATCHES_AHEAD: usize = 2;
/// How often the lag is measured (the statistics interval is the same).
pub const LAG_EVERY: Duration = Duration::from_secs(1);

/// What the reader found in one poll.
pub struct Batch {
    /// Whole transactions.
    pub events: Vec<SourceEvent>,
    /// Every partition's next offset after the batch.
    pub delivered: KafkaOffsets,
    /// Records read.
    pub records: usize,
    /// Records sent to the dead-letter topic in this run so far.
    pub dead_letters: u64,
    /// Each partition's lag, when measured with this batch.
    pub lag: Option<Vec<PartitionReport>>,
}

/// The running reader task; aborted when dropped.
pub struct Reader {
    batches: mpsc::Receiver<Result<Batch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// Starts reading `consumer` (assigned already) with `mapper`.
    pub fn spawn(
        consumer: Arc<StreamConsumer<WatermarkContext>>,
        mapper: RecordMapper,
        dead_letters: DeadLetterTopic,
        brokers: String,
        generation: Option<u64>,
    ) -> Self {
        let (tx, batches) = mpsc::channel(BATCHES_AHEAD);
        let task = tokio::spawn(async move {
            let mut state = ReaderState {
                consumer,
                mapper,
                dead_letters,
                brokers,
                generation,
                next_lag: Instant::now(),
            };
            loop {
                let batch = state.read().await;
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { batches, task }
    }

    /// The next batch; cancel-safe. `None` when the task ended (after its error).
    pub async fn next(&mut self) -> Option<Result<Batch>> {
        self.batches.recv().await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ReaderState {
    consumer: Arc<StreamConsumer<WatermarkContext>>,
    mapper: RecordMapper,
    dead_letters: DeadLetterTopic,
    brokers: String,
    /// Group mode: the rebalance count the run started at; a record read after another
    /// rebalance ends the run (it restarts on the new assignment).
    generation: Option<u64>,
    next_lag: Instant,
}

impl ReaderState {
    /// Waits for a record, then takes whatever else is ready, up to [`MAX_BATCH`].
    async fn read(&mut self) -> Result<Batch> {
        let mut records = 0usize;
        let mut dead_lettered = 0usize;
        let mut consumed: Vec<(String, i32, u64)> = Vec::new();
        loop {
            let message = if records == 0 {
                self.consumer.recv().await
            } else {
                match futures::FutureExt::now_or_never(self.consumer.recv()) {
                    Some(m) => m,
                    None => break,
                }
            };
            let message = message.map_err(|e| {
                Error::new(
                    ErrorKind::Source,
                    format!("cannot consume from {}: {e}", self.brokers),
                )
            })?;
            if let Some(generation) = self.generation
                && self.consumer.context().rebalances() != generation
            {
                // The source notices it too and restarts the run; nothing of this batch counts.
                return Err(Error::new(
                    ErrorKind::Source,
                    "the consumer group rebalanced while reading",
                ));
            }
            let headers: Vec<(&str, Option<&[u8]>)> = message
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            let record = Record {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                value: message.payload(),
                timestamp_ms: message.timestamp().to_millis(),
            };
            match consumed.last_mut() {
                Some((t, p, n)) if *p == record.partition && t == record.topic => *n += 1,
                _ => match consumed
                    .iter_mut()
                    .find(|(t, p, _)| *p == record.partition && t == record.topic)
                {
                    Some((_, _, n)) => *n += 1,
                    None => consumed.push((record.topic.to_string(), record.partition, 1)),
                },
            }
            if let Err(rejected) = self.mapper.map(&record, &headers) {
                tracing::warn!(
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    stage = rejected.stage.connect_name(),
                    dead_letter_topic = self.dead_letters.topic(),
                    reason = %rejected,
                    "a Kafka record that is not a valid change event goes to the dead-letter topic"
                );
                self.dead_letters.send(&record, &headers, &rejected).await?;
                metrics::counter!("tarn_kafka_dead_letters_total", "topic" => record.topic.to_string())
                    .increment(1);
                dead_lettered += 1;
            }
            records += 1;
            if records >= MAX_BATCH {
                break;
            }
        }
        if dead_lettered > 0 {
            // Durable before any commit can record offsets past them.
            self.dead_letters.flush().await?;
        }
        for (topic, partition, n) in consumed {
            metrics::counter!("tarn_kafka_records_total", "topic" => topic, "partition" => partition.to_string())
                .increment(n);
        }
        let delivered = self.mapper.delivered();
        let lag = (Instant::now() >= self.next_lag).then(|| {
            self.next_lag = Instant::now() + LAG_EVERY;
            self.consumer.context().report(&delivered)
        });
        Ok(Batch {
            events: self.mapper.take_events(),
            delivered,
            records,
            dead_letters: self.dead_letters.sent,
            lag,
        })
    }
}
