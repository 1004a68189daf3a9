//! Consumer lag per partition: how far the source is behind each partition's end.
//!
//! The end comes from librdkafka's statistics (`statistics.interval.ms`), which carry, per
//! partition, the high watermark and the last stable offset that the broker sent with its
//! latest fetch response (`hi_offset`, `ls_offset`), not from ListOffsets: tansu, the tests'
//! broker, answers ListOffsets wrongly after multi-record batches, while its fetch responses
//! are right. The source reads `read_committed`, so its end is the last stable offset (the
//! high watermark when the broker sends none). Lag is that end minus the next offset the
//! source delivered to the lake writer: records not read yet, or read and not yet applied.
//!
//! [`PartitionReport`]s go into the pipeline's status (`tarn cdc status`) and into Prometheus
//! gauges labelled by topic and partition: `tarn_kafka_consumer_lag`,
//! `tarn_kafka_high_watermark`, `tarn_kafka_position`; `tarn_kafka_records_total` counts
//! the records consumed per partition (its rate is the consumed-records rate) and
//! `tarn_kafka_records_per_second` is that rate over the last few seconds, all partitions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use serde::Deserialize;

use crate::pipeline::PartitionReport;
use crate::position::KafkaOffsets;

/// The consumer's librdkafka context: keeps each partition's end from the statistics, and
/// counts the consumer group's rebalances (`cdc.kafka.assignment = "group"`).
#[derive(Clone, Default)]
pub struct WatermarkContext {
    ends: Arc<Mutex<HashMap<(String, i32), i64>>>,
    rebalances: Arc<AtomicU64>,
}

/// What the context reads of librdkafka's statistics JSON.
#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    partition: i32,
    hi_offset: i64,
    ls_offset: i64,
}

impl ClientContext for WatermarkContext {
    fn stats_raw(&self, statistics: &[u8]) {
        let stats: Stats = match serde_json::from_slice(statistics) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable librdkafka statistics");
                return;
            }
        };
        let mut ends = self.ends.lock().expect("watermarks poisoned");
        for (name, topic) in stats.topics {
            for p in topic.partitions.into_values() {
                // -1 is librdkafka's internal "unassigned" partition; negative offsets are
                // "not known yet".
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if p.partition >= 0 && end >= 0 {
                    ends.insert((name.clone(), p.partition), end);
                }
            }
        }
    }
}

impl ConsumerContext for WatermarkContext {
    /// Counts the rebalance (the source restarts its pipeline on the new assignment: see
    /// [`super`]'s module doc) and logs it. Partitions are assigned at the group's committed
    /// offsets; the source seeks them to the lake's.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        let list = |l: &rdkafka::TopicPartitionList| {
            l.elements()
                .iter()
                .map(|e| format!("{}:{}", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(",")
        };
        match rebalance {
            Rebalance::Assign(l) => {
                tracing::info!(partitions = %list(l), "consumer group assigned partitions")
            }
            Rebalance::Revoke(l) => {
                tracing::info!(partitions = %list(l), "consumer group revoked partitions")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
        metrics::counter!("tarn_kafka_rebalances_total").increment(1);
    }
}

impl WatermarkContext {
    /// Rebalances seen so far.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }

    /// The end of `topic`'s `partition` from the latest statistics, when known.
    pub fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends
            .lock()
            .expect("watermarks poisoned")
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// Each partition of `delivered` with its end and lag; sets the Prometheus gauges.
    pub fn report(&self, delivered: &KafkaOffsets) -> Vec<PartitionReport> {
        let ends = self.ends.lock().expect("watermarks poisoned");
        delivered
            .iter()
            .map(|(tp, position)| {
                let end = ends.get(&(tp.topic.clone(), tp.partition)).copied();
                let lag = end.map(|end| (end - position).max(0));
                let labels = [
                    ("topic", tp.topic.clone()),
                    ("partition", tp.partition.to_string()),
                ];
                metrics::gauge!("tarn_kafka_position", &labels).set(position as f64);
                if let (Some(end), Some(lag)) = (end, lag) {
                    metrics::gauge!("tarn_kafka_high_watermark", &labels).set(end as f64);
                    metrics::gauge!("tarn_kafka_consumer_lag", &labels).set(lag as f64);
                }
                PartitionReport {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    position,
                    end,
                    lag,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::TopicPartition;

    #[test]
    fn lag_is_the_end_from_fetch_statistics_minus_the_position() {
        let context = WatermarkContext::default();
        // Statistics as librdkafka writes them (the fields the context reads, and some more).
        let json = r#"{"name":"c","type":"consumer","ts":1,"brokers":{},"topics":{"orders":{
            "topic":"orders","age":1,"partitions":{
            "0":{"partition":0,"broker":1,"fetch_state":"active","next_offset":310,
                 "lo_offset":0,"hi_offset":335,"ls_offset":333,"consumer_lag":25},
            "-1":{"partition":-1,"broker":-1,"fetch_state":"none","next_offset":0,
                 "lo_offset":-1001,"hi_offset":-1001,"ls_offset":-1001,"consumer_lag":-1}}}}}"#;
        context.stats_raw(json.as_bytes());
        let delivered = KafkaOffsets::new()
            .with(TopicPartition::new("orders", 0), 300)
            .with(TopicPartition::new("orders", 1), 7);
        let report = context.report(&delivered);
        assert_eq!(
            report,
            [
                PartitionReport {
                    topic: "orders".into(),
                    partition: 0,
                    position: 300,
                    end: Some(333),
                    lag: Some(33),
                },
                PartitionReport {
                    topic: "orders".into(),
                    partition: 1,
                    position: 7,
                    end: None,
                    lag: None,
                }
            ]
        );
    }
}
