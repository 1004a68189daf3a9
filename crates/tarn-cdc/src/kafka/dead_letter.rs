//! The Kafka source's dead-letter topic: a record that is not a valid change event goes
//! there instead of stopping its partition.
//!
//! [`DeadLetterTopic::send`] produces the record as it was consumed — key, value, headers,
//! timestamp — with Kafka Connect's error-context headers added
//! (`errors.deadletterqueue.context.headers.enable=true`), so tools that read Connect's
//! dead-letter queues read tarn's:
//!
//! | header | value |
//! |---|---|
//! | `__connect.errors.topic`, `.partition`, `.offset` | where the record was consumed |
//! | `__connect.errors.connector.name` | the pipeline (`cdc.pipeline`) |
//! | `__connect.errors.task.id` | `0` |
//! | `__connect.errors.stage` | `KEY_CONVERTER`, `VALUE_CONVERTER`, `HEADER_CONVERTER` or `TASK_PUT` |
//! | `__connect.errors.class.name` | [`CLASS_NAME`] (Connect names the converter class) |
//! | `__connect.errors.exception.message` | why, with the field path (`value.payload.after.amount: ...`) |
//!
//! **Never lost.** The producer is idempotent (`acks=all`). [`DeadLetterTopic::flush`] waits
//! until the broker acknowledged every record sent; the source calls it before it hands out
//! the events of the poll that held the record, so no lake commit records an offset past a
//! dead-lettered record before the dead-letter topic holds it. A failed produce is an error
//! of the source (retried from the lake's offsets; the record is dead-lettered again, so a
//! crash at the wrong moment can leave a record twice in the dead-letter topic, never zero
//! times).
//!
//! The topic (`cdc.kafka.dead_letter_topic`, default `<group>.dlq`) is created at start when
//! missing: one partition, the broker's default replication factor.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tarn_core::{Error, ErrorKind, Result};

use super::events::{Record, Rejected};

/// `__connect.errors.class.name` of tarn's records: the part of tarn that read them.
pub const CLASS_NAME: &str = "tarn.cdc.kafka.RecordMapper";

/// The header names Kafka Connect's dead-letter queue reporter writes.
pub mod headers {
    /// The record's topic.
    pub const TOPIC: &str = "__connect.errors.topic";
    /// The record's partition (decimal).
    pub const PARTITION: &str = "__connect.errors.partition";
    /// The record's offset (decimal).
    pub const OFFSET: &str = "__connect.errors.offset";
    /// The connector: the pipeline.
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    /// The task.
    pub const TASK: &str = "__connect.errors.task.id";
    /// Where reading failed.
    pub const STAGE: &str = "__connect.errors.stage";
    /// What was reading it.
    pub const CLASS: &str = "__connect.errors.class.name";
    /// Why.
    pub const MESSAGE: &str = "__connect.errors.exception.message";
}

/// The dead-letter topic of one Kafka source; see the module doc.
pub struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
    pipeline: String,
    brokers: String,
    in_flight: Vec<(DeliveryFuture, String)>,
    /// Records dead-lettered in this run (acknowledged by the broker).
    pub sent: u64,
}

fn kafka_error(what: String, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Source, format!("{what}: {e}"))
}

impl DeadLetterTopic {
    /// A producer for `topic` on `brokers` (`client` holds the connection settings); nothing
    /// is contacted yet.
    pub fn new(client: &ClientConfig, brokers: &str, topic: &str, pipeline: &str) -> Result<Self> {
        let producer: FutureProducer = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("allow.auto.create.topics", "false")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot create the dead-letter producer for brokers {brokers}: {e}"),
                )
            })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            pipeline: pipeline.to_string(),
            brokers: brokers.to_string(),
            in_flight: Vec::new(),
            sent: 0,
        })
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic unless the broker has it (one partition, the broker's default
    /// replication factor); another worker creating it meanwhile is fine.
    pub async fn ensure_topic(&self, client: &ClientConfig, timeout: Duration) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = client
            .clone()
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| {
                kafka_error(
                    format!("cannot create a Kafka admin client for {}", self.brokers),
                    e,
                )
            })?;
        let topic = self.topic.clone();
        let metadata = {
            let producer = self.producer.clone();
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), timeout))
                .await
                .map_err(|e| Error::new(ErrorKind::Internal, format!("a Kafka call panicked: {e}")))?
        };
        let exists = metadata
            .map_err(|e| kafka_error(format!("cannot reach the Kafka brokers {}", self.brokers), e))?
            .topics()
            .iter()
            .any(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty());
        if exists {
            return Ok(());
        }
        let new = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| kafka_error(format!("cannot create the dead-letter topic {}", self.topic), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(kafka_error(
                        format!("cannot create the dead-letter topic {topic} on {}", self.brokers),
                        code,
                    ));
                }
            }
        }
        tracing::info!(topic = %self.topic, "created the dead-letter topic");
        Ok(())
    }

    /// Queues `record` for the dead-letter topic with the headers of `rejected`; see
    /// [`Self::flush`].
    pub async fn send(
        &mut self,
        record: &Record<'_>,
        original_headers: &[(&str, Option<&[u8]>)],
        rejected: &Rejected,
    ) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(original_headers.len() + 8);
        for (key, value) in original_headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        for (key, value) in [
            (headers::TOPIC, record.topic),
            (headers::PARTITION, &partition),
            (headers::OFFSET, &offset),
            (headers::CONNECTOR, &self.pipeline),
            (headers::TASK, "0"),
            (headers::STAGE, rejected.stage.connect_name()),
            (headers::CLASS, CLASS_NAME),
            (headers::MESSAGE, &rejected.reason),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let topic = self.topic.clone();
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        if let Some(value) = record.value {
            out = out.payload(value);
        }
        if let Some(ms) = record.timestamp_ms {
            out = out.timestamp(ms);
        }
        let at = format!(
            "topic {} partition {} offset {}",
            record.topic, record.partition, record.offset
        );
        let mut out = out;
        loop {
            match self.producer.send_result(out) {
                Ok(delivery) => {
                    self.in_flight.push((delivery, at));
                    return Ok(());
                }
                Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The producer's queue is full: wait for what is in flight, then again.
                    out = back;
                    self.flush().await?;
                }
                Err((e, _)) => {
                    return Err(kafka_error(
                        format!("cannot send the record at {at} to the dead-letter topic {topic}"),
                        e,
                    ));
                }
            }
        }
    }

    /// Waits until the broker acknowledged every record sent; see the module doc.
    pub async fn flush(&mut self) -> Result<()> {
        for (delivery, at) in std::mem::take(&mut self.in_flight) {
            let what = || {
                format!(
                    "the record at {at} did not reach the dead-letter topic {}",
                    self.topic
                )
            };
            match delivery.await {
                Ok(Ok(_)) => self.sent += 1,
                Ok(Err((e, _))) => return Err(kafka_error(what(), e)),
                Err(_) => return Err(kafka_error(what(), "the producer went away")),
            }
        }
        Ok(())
    }
}
