//! A check of a Kafka pipeline from outside it: how far the lake is behind the topics
//! (the scheduler's `ingest-kafka` task, docs/jobs.md).
//!
//! For each partition of the pipeline's topics, the check takes the offset the pipeline would
//! resume from — the smallest the pipeline's lake tables hold (the consumer group's committed
//! offset standing in for a table that names none), exactly where [`KafkaSource`] starts —
//! and the partition's end as the broker's fetch responses give it (librdkafka's statistics,
//! as for `tarn_kafka_consumer_lag`; see [`super::lag`]): it assigns itself the partitions at
//! those offsets, without joining or committing to any group, and reads until every
//! partition's end is known. The lag is the end minus the resume offset; the first record it
//! reads of a partition behind is the oldest record not yet in the lake, whose timestamp says
//! how stale the lake is. A partition whose end is past its resume offset but that delivers
//! no record (only transaction markers or aborted records lie between) is not behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tarn_core::{Config, Error, ErrorKind, Result};

use super::{KafkaSource, kafka_error, start_offset};

/// One partition's state, as the check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCheck {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset the pipeline resumes from (what the lake holds), or `None` when nothing
    /// names one (the partition is read from its beginning).
    pub resume: Option<i64>,
    /// The partition's end (last stable offset).
    pub end: i64,
    /// Records of the partition not in the lake.
    pub lag: i64,
    /// The timestamp (ms since the epoch) of the oldest record not in the lake, when the
    /// partition is behind and the record carries one.
    pub oldest_pending_ms: Option<i64>,
}

/// What [`KafkaSource::check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Every partition of the topics.
    pub partitions: Vec<PartitionCheck>,
    /// The pipeline's lake tables.
    pub tables: usize,
}

impl CheckReport {
    /// Records of all partitions not in the lake.
    pub fn lag(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }

    /// The timestamp (ms) of the oldest record not in the lake, over all partitions.
    pub fn oldest_pending_ms(&self) -> Option<i64> {
        self.partitions.iter().filter_map(|p| p.oldest_pending_ms).min()
    }
}

impl KafkaSource {
    /// Measures how far the lake is behind the pipeline's topics (module doc). Reads nothing
    /// into the lake, commits nothing; `wait` bounds how long it waits for the partitions'
    /// ends.
    pub async fn check(&self, config: &Config, wait: Duration) -> Result<CheckReport> {
        let partitions = self.partitions().await?;
        let tables = self.lake_offsets(config).await?;
        let group = self.group_offsets(&partitions).await?;
        let mut assignment = TopicPartitionList::new();
        let mut resume = HashMap::new();
        for tp in &partitions {
            let offset = start_offset(tp, &tables, &group);
            resume.insert((tp.topic.clone(), tp.partition), offset);
            assignment
                .add_partition_offset(
                    &tp.topic,
                    tp.partition,
                    offset.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(|e| kafka_error(format!("cannot seek {}:{}", tp.topic, tp.partition), e))?;
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| kafka_error("cannot assign the Kafka partitions".into(), e))?;
        // The first record read of each partition: its offset and timestamp.
        let mut first: HashMap<(String, i32), (i64, Option<i64>)> = HashMap::new();
        let deadline = Instant::now() + wait;
        let context = self.consumer.context().clone();
        let done = |first: &HashMap<(String, i32), (i64, Option<i64>)>| {
            partitions.iter().all(|tp| {
                let key = (tp.topic.clone(), tp.partition);
                match context.end(&tp.topic, tp.partition) {
                    None => false,
                    Some(end) => {
                        first.contains_key(&key)
                            || resume.get(&key).copied().flatten().is_some_and(|r| end <= r)
                            || end == 0
                    }
                }
            })
        };
        // Once every end is known, a partition that delivered nothing more within this long
        // has nothing to deliver (markers only).
        let mut ends_known_at: Option<Instant> = None;
        loop {
            if done(&first) {
                break;
            }
            let all_ends = partitions
                .iter()
                .all(|tp| context.end(&tp.topic, tp.partition).is_some());
            if all_ends {
                let since = *ends_known_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= 2 * super::reader::LAG_EVERY {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), self.consumer.recv()).await {
                Err(_) => {}
                Ok(Err(e)) => return Err(kafka_error(format!("cannot read from {}", self.brokers), e)),
                Ok(Ok(message)) => {
                    first
                        .entry((message.topic().to_string(), message.partition()))
                        .or_insert((message.offset(), message.timestamp().to_millis()));
                }
            }
        }
        let _ = self.consumer.unassign();
        let mut report = CheckReport {
            partitions: Vec::new(),
            tables: tables.len(),
        };
        for tp in &partitions {
            let key = (tp.topic.clone(), tp.partition);
            let Some(end) = context.end(&tp.topic, tp.partition) else {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "the Kafka brokers {} sent no end offset of {}:{} within {wait:?}",
                        self.brokers, tp.topic, tp.partition
                    ),
                ));
            };
            let resume = resume.get(&key).copied().flatten();
            let (lag, oldest_pending_ms) = match first.get(&key) {
                Some(&(offset, timestamp)) => ((end - resume.unwrap_or(offset)).max(0), timestamp),
                None => (0, None),
            };
            report.partitions.push(PartitionCheck {
                topic: tp.topic.clone(),
                partition: tp.partition,
                resume,
                end,
                lag,
                oldest_pending_ms,
            });
        }
        Ok(report)
    }
}
