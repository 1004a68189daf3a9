//! The Kafka sink: a database source's changes published as Debezium change events, each
//! source transaction inside one Kafka transaction, exactly once (`cdc.sink = "kafka"`,
//! `[cdc.publish]`).
//!
//! **Topics and messages.** One topic per table, `<topic_prefix>.<schema>.<table>` (Debezium's
//! naming), created with `cdc.publish.partitions` and `replication_factor` when missing; an
//! existing topic is used as it is. The key is the row's primary key, the value Debezium's
//! change-event envelope as Kafka Connect's `JsonConverter` writes it, with or without the
//! embedded schema, a tombstone after each delete ([`crate::debezium::encode`]). Keys are
//! partitioned with murmur2, as Kafka's Java clients (and so Debezium) do: a key's events stay
//! in order in one partition, the one Debezium would choose.
//!
//! **Transactions.** One idempotent, transactional producer per pipeline
//! (`transactional.id` = `tarn-cdc-<pipeline>`: a second tarn publishing the same pipeline
//! fences the first, and a restart aborts what a crashed run left open). A source
//! transaction's changes are held until its commit — its commit time is the events'
//! `source.ts_ms` — then encoded and produced into the open Kafka transaction, which opens with
//! the first of them after a flush. [`ChangeSink::flush`] waits until the broker has every
//! record, produces the position of every table the transaction touched to the positions
//! topic, and commits. So each source transaction is whole inside one Kafka transaction
//! (several may share one: the flush policy batches them), and the pipeline acknowledges the
//! slot or changefeed only after the broker committed.
//!
//! **Exactly once.** Positions live in the compacted topic `cdc.publish.positions_topic`, key
//! `<pipeline>/<schema>.<table>`, value a JSON object with the typed position
//! ([`PositionRecord`]), written in the same Kafka transaction as the events they cover — the
//! way Kafka Connect's exactly-once source support (KIP-618) keeps its offsets. On start the
//! sink reads that topic to its end (`read_committed`) and gives each table its last
//! position; a source replaying from an older acknowledged position then skips, per table,
//! what is published already. A crash between the Kafka commit and the acknowledgement
//! publishes nothing twice; a crash before the commit leaves a transaction the restarted
//! producer aborts. Because the records of a flush are on the broker before its positions
//! record is produced, even a broker that shows aborted records to `read_committed` readers
//! (the tests' broker, tansu 0.6, does) never shows a position without the events it covers.
//!
//! **Copies.** A table's initial copy is published as `r` events (`source.snapshot` `true`,
//! the copy's position as `lsn`) into the open Kafka transaction, from every copy connection at
//! once, and becomes durable with the table's position: committed right away between source
//! transactions, with the next flush when the table appeared inside one. A copy is one Kafka
//! transaction, so it must finish within `cdc.publish.transaction_timeout` (the broker's
//! `transaction.max.timeout.ms` bounds that).
//!
//! **What differs from Debezium's PostgreSQL connector**, documented in `docs/kafka.md`:
//! `source.lsn` is the transaction's commit LSN for each of its events (tarn's sources pass
//! commit positions; `source.txId` is the transaction's xid, as Debezium's), and a source
//! transaction larger than the
//! spill threshold is produced before its commit arrives, its events stamped with the time
//! they were read instead of the commit time.

use crate::topic_acl::{TopicAccess, TopicOperation};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tarn_core::config::MaintenanceConfig;
use tarn_core::{Config, Error, ErrorKind, Result, failpoint};

use crate::debezium::{
    Change, EncoderConfig, Message, SnapshotMarker, SourceConnector, SourceInfo, TableEncoder,
};
use crate::pipeline::PipelineStatus;
use crate::sink::{Attached, ChangeSink, TableCounters, TablePosition};
use crate::source::{BatchWriter, Position, Row, SourceEvent, TableId, TableSpec, Value};
use crate::value::arrow_text::row_values;

/// A table's entry in the positions topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionRecord {
    /// The pipeline.
    pub pipeline: String,
    /// The source table, `schema.table`.
    pub table: String,
    /// Everything of the table up to here is published.
    pub position: Position,
    /// When the last transaction it covers committed, µs since the epoch.
    pub commit_time_micros: Option<i64>,
}

impl PositionRecord {
    /// The record's key in the positions topic.
    pub fn key(pipeline: &str, table: &str) -> String {
        format!("{pipeline}/{table}")
    }
}

/// One change of the source transaction being applied, kept until its commit.
struct Held {
    encoder: Arc<TableEncoder>,
    change: HeldChange,
}

enum HeldChange {
    Create(Row),
    Update(Option<Row>, Row),
    Delete(Row),
    Truncate,
}

struct KafkaTable {
    encoder: Arc<TableEncoder>,
    /// Durable: in the positions topic.
    position: Option<Position>,
    /// Touched by the open Kafka transaction (its position is written with the flush).
    touched: bool,
    counters: TableCounters,
}

/// Publishes a source's changes to Kafka; see the module doc.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    admin: AdminClient<DefaultClientContext>,
    brokers: String,
    pipeline: String,
    encoding: EncoderConfig,
    db: String,
    partitions: i32,
    replication: i32,
    positions_topic: String,
    /// Topic ACLs of the pipeline's principal.
    access: TopicAccess,
    timeout: Duration,
    flush_interval: Duration,
    /// Positions read from the positions topic at start, by `schema.table`.
    published: HashMap<String, (Position, Option<i64>)>,
    tables: HashMap<TableId, KafkaTable>,
    created_topics: HashSet<String>,
    /// A Kafka transaction is open.
    open: bool,
    txn_commit: Option<Position>,
    /// The source transaction id of the transaction being applied (`source.txId`).
    txn_id: Option<i64>,
    in_transaction: bool,
    held: Vec<Held>,
    held_bytes: usize,
    spill_bytes: usize,
    last_commit: Option<(Position, i64)>,
    pending_events: u64,
    pending_bytes: usize,
    pending_since: Option<Instant>,
}

fn kafka_error(what: impl std::fmt::Display, e: KafkaError) -> Error {
    Error::new(ErrorKind::Source, format!("{what}: {e}"))
}

/// Microseconds since the Unix epoch, now.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl KafkaSink {
    /// Connects the producer of `config.cdc.publish` (fencing an earlier producer of the
    /// pipeline and aborting what it left open) and reads the published positions.
    pub async fn connect(config: &Config, lake: &tarn_lake::Lake, status: &PipelineStatus) -> Result<Self> {
        let cdc = &config.cdc;
        let publish = &cdc.publish;
        // Topic ACLs: the positions topic is written and read back; tables' topics are checked
        // as tables attach.
        let access = TopicAccess::from_config(config)?.audited(config, lake)?;
        access
            .check(TopicOperation::Publish, &publish.positions_topic)
            .await?;
        access
            .check(TopicOperation::Consume, &publish.positions_topic)
            .await?;
        let txn_timeout = tarn_core::config::parse_duration(
            "cdc.publish.transaction_timeout",
            &publish.transaction_timeout,
        )?;
        let flush_interval =
            tarn_core::config::parse_duration("cdc.publish.flush_interval", &publish.flush_interval)?;
        let base = || {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &publish.brokers)
                .set("client.id", format!("tarn-{}", cdc.pipeline))
                .set("allow.auto.create.topics", "false");
            c
        };
        let producer: ThreadedProducer<DefaultProducerContext> = base()
            .set("transactional.id", format!("tarn-cdc-{}", cdc.pipeline))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // Bounded memory: a copy or a large backlog waits for the broker (the send loop
            // retries on a full queue) instead of queueing librdkafka's default of 1 GiB.
            .set("queue.buffering.max.kbytes", "65536")
            .set("transaction.timeout.ms", txn_timeout.as_millis().to_string())
            .set("message.timeout.ms", txn_timeout.as_millis().to_string())
            .create()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot create a Kafka producer for {}: {e}", publish.brokers),
                )
            })?;
        let admin: AdminClient<DefaultClientContext> = base().create().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot create a Kafka admin client for {}: {e}", publish.brokers),
            )
        })?;
        let connector = if cdc.source_kind == "cockroachdb" {
            SourceConnector::CockroachDb
        } else {
            SourceConnector::Postgres
        };
        let prefix = publish
            .topic_prefix
            .clone()
            .unwrap_or_else(|| cdc.pipeline.clone());
        let mut encoding = EncoderConfig::new(prefix, connector);
        encoding.schemas = publish.schemas;
        encoding.tombstones_on_delete = publish.tombstones;
        let db = cdc
            .source
            .as_deref()
            .and_then(|s| url::Url::parse(s).ok())
            .map(|u| u.path().trim_start_matches('/').to_string())
            .unwrap_or_default();
        status.update(|r| {
            r.publication = format!(
                "{} (kafka://{}/{}.*)",
                r.publication, publish.brokers, encoding.topic_prefix
            );
        });
        let mut sink = Self {
            access,
            producer: Arc::new(producer),
            admin,
            brokers: publish.brokers.clone(),
            pipeline: cdc.pipeline.clone(),
            encoding,
            db,
            partitions: publish.partitions,
            replication: publish.replication_factor,
            positions_topic: publish.positions_topic.clone(),
            timeout: Duration::from_secs(30),
            flush_interval,
            published: HashMap::new(),
            tables: HashMap::new(),
            created_topics: HashSet::new(),
            open: false,
            txn_commit: None,
            txn_id: None,
            in_transaction: false,
            held: Vec::new(),
            held_bytes: 0,
            spill_bytes: (cdc.flush.max_bytes / 2) as usize,
            last_commit: None,
            pending_events: 0,
            pending_bytes: 0,
            pending_since: None,
        };
        sink.ensure_topic(&sink.positions_topic.clone(), 1, true).await?;
        let timeout = sink.timeout;
        sink.blocking(move |p| p.init_transactions(timeout))
            .await?
            .map_err(|e| {
                kafka_error(
                    format!(
                        "cannot start the Kafka transactions of pipeline {} on {} (is the broker reachable, and does it \
                         allow transactional id tarn-cdc-{}?)",
                        sink.pipeline, sink.brokers, sink.pipeline
                    ),
                    e,
                )
            })?;
        sink.published = sink.read_positions().await?;
        tracing::info!(
            brokers = %sink.brokers,
            positions = sink.published.len(),
            topic = %sink.positions_topic,
            "Kafka publisher ready"
        );
        Ok(sink)
    }

    /// Runs a blocking producer call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ThreadedProducer<DefaultProducerContext>) -> T + Send + 'static,
    ) -> Result<T> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("a Kafka call panicked: {e}")))
    }

    /// Creates `topic` unless it exists (compacted: the positions topic).
    async fn ensure_topic(&mut self, topic: &str, partitions: i32, compacted: bool) -> Result<()> {
        if self.created_topics.contains(topic) {
            return Ok(());
        }
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.replication));
        if compacted {
            new = new.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = tokio::time::timeout(self.timeout, self.admin.create_topics([&new], &options))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Source,
                    format!(
                        "cannot reach the Kafka brokers {} (no answer to creating topic {topic} within {:?})",
                        self.brokers, self.timeout
                    ),
                )
            })?
            .map_err(|e| kafka_error(format!("cannot create topic {topic} on {}", self.brokers), e))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::new(
                        ErrorKind::Source,
                        format!(
                            "cannot create topic {topic} on {}: {code} (does tarn's principal have CREATE on the cluster or topic?)",
                            self.brokers
                        ),
                    ));
                }
            }
        }
        self.created_topics.insert(topic.to_string());
        Ok(())
    }

    /// The last committed position of every table of this pipeline in the positions topic.
    async fn read_positions(&self) -> Result<HashMap<String, (Position, Option<i64>)>> {
        let consumer: BaseConsumer<QuietEof> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("tarn-cdc-{}-positions", self.pipeline))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            .create_with_context(QuietEof)
            .map_err(|e| kafka_error("cannot create a Kafka consumer for the positions topic", e))?;
        let (topic, pipeline, timeout) = (self.positions_topic.clone(), self.pipeline.clone(), self.timeout);
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), timeout).map_err(|e| {
                kafka_error(
                    format!("cannot read the metadata of topic {topic} on {brokers}"),
                    e,
                )
            })?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut assignment = TopicPartitionList::new();
            for &p in &partitions {
                assignment
                    .add_partition_offset(&topic, p, Offset::Beginning)
                    .map_err(|e| kafka_error("cannot assign the positions topic", e))?;
            }
            consumer
                .assign(&assignment)
                .map_err(|e| kafka_error("cannot assign the positions topic", e))?;
            let mut at_end: HashSet<i32> = HashSet::new();
            let mut out = HashMap::new();
            let deadline = Instant::now() + timeout * 2;
            let prefix = format!("{pipeline}/");
            while at_end.len() < partitions.len() {
                if Instant::now() > deadline {
                    return Err(Error::new(
                        ErrorKind::Source,
                        format!(
                            "cannot read topic {topic} to its end on {brokers} within {:?}",
                            timeout * 2
                        ),
                    ));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        at_end.insert(p);
                    }
                    Some(Err(e)) => return Err(kafka_error(format!("cannot read topic {topic}"), e)),
                    Some(Ok(m)) => {
                        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                            continue;
                        };
                        if !key.starts_with(&prefix) {
                            continue;
                        }
                        let Some(value) = m.payload() else { continue };
                        let record: PositionRecord = serde_json::from_slice(value).map_err(|e| {
                            Error::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "topic {topic} partition {} offset {}: not a tarn position record: {e}",
                                    m.partition(),
                                    m.offset()
                                ),
                            )
                        })?;
                        out.insert(record.table, (record.position, record.commit_time_micros));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("a Kafka call panicked: {e}")))?
    }

    /// Opens a Kafka transaction unless one is.
    async fn open(&mut self) -> Result<()> {
        if self.open {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| kafka_error("cannot begin a Kafka transaction", e))?;
        self.open = true;
        Ok(())
    }

    /// Produces the held changes of the current source transaction, stamped `commit_time`.
    async fn produce_held(&mut self, position: &Position, commit_time: i64) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.open().await?;
        let source = SourceInfo {
            db: self.db.clone(),
            position: position.clone(),
            tx_id: self.txn_id,
            commit_time_micros: commit_time,
            snapshot: SnapshotMarker::False,
            transaction: None,
        };
        let now = now_micros() * 1000;
        for held in std::mem::take(&mut self.held) {
            let change = match &held.change {
                HeldChange::Create(after) => Change::Create { after },
                HeldChange::Update(before, after) => Change::Update {
                    before: before.as_deref(),
                    after,
                },
                HeldChange::Delete(before) => Change::Delete { before },
                HeldChange::Truncate => Change::Truncate,
            };
            let messages = held.encoder.encode(change, &source, now).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot encode a change of {}: {e}",
                        held.encoder.spec().qualified()
                    ),
                )
            })?;
            for message in &messages {
                send(&self.producer, message).await?;
            }
        }
        self.held_bytes = 0;
        Ok(())
    }

    /// Waits for every produced record, writes the positions of the touched tables and
    /// commits the Kafka transaction. On failure the transaction is aborted.
    async fn commit(&mut self, position: Option<(Position, i64)>) -> Result<()> {
        if !self.open {
            return Ok(());
        }
        let result = self.try_commit(position).await;
        if result.is_err() {
            let timeout = self.timeout;
            let _ = self.blocking(move |p| p.abort_transaction(timeout)).await;
            self.open = false;
            for table in self.tables.values_mut() {
                table.touched = false;
            }
        }
        result
    }

    async fn try_commit(&mut self, position: Option<(Position, i64)>) -> Result<()> {
        let timeout = self.timeout;
        // Every event on the broker before the position that covers it.
        self.blocking(move |p| p.flush(timeout)).await?.map_err(|e| {
            kafka_error(
                format!("the Kafka brokers {} did not take the events", self.brokers),
                e,
            )
        })?;
        // The positions the touched tables hold once this commits.
        let mut records = Vec::new();
        for (id, table) in self.tables.iter().filter(|(_, t)| t.touched) {
            let held = match (&table.position, &position) {
                (Some(held), Some((p, _))) => held.merged(p),
                (None, Some((p, _))) => p.clone(),
                (Some(held), None) => held.clone(),
                (None, None) => continue,
            };
            records.push((
                *id,
                PositionRecord {
                    pipeline: self.pipeline.clone(),
                    table: table.encoder.spec().qualified(),
                    position: held,
                    commit_time_micros: position.as_ref().map(|(_, t)| *t),
                },
            ));
        }
        for (_, record) in &records {
            let key = PositionRecord::key(&record.pipeline, &record.table);
            let value = serde_json::to_vec(record).expect("a position record serializes");
            let message = Message {
                topic: self.positions_topic.clone(),
                key: Some(key.into_bytes()),
                value: Some(value),
                headers: Vec::new(),
                op: None,
            };
            send(&self.producer, &message).await?;
        }
        failpoint::hit("cdc.publish.before_commit").await?;
        self.blocking(move |p| p.commit_transaction(timeout))
            .await?
            .map_err(|e| {
                let fenced = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                let mut err = kafka_error(
                    format!("cannot commit the Kafka transaction on {}", self.brokers),
                    e,
                );
                if fenced {
                    err = Error::new(
                        ErrorKind::Source,
                        format!(
                            "{err} (fenced: is another tarn publishing pipeline {}?)",
                            self.pipeline
                        ),
                    );
                }
                err
            })?;
        self.open = false;
        for (id, record) in records {
            if let Some(table) = self.tables.get_mut(&id) {
                table.position = Some(record.position);
                table.counters.commits += 1;
            }
        }
        for table in self.tables.values_mut() {
            table.touched = false;
        }
        metrics::counter!("tarn_cdc_kafka_transactions_total").increment(1);
        Ok(())
    }

    /// The table of a change in the current transaction, unless it holds the transaction.
    fn live(&mut self, id: TableId) -> Option<&mut KafkaTable> {
        let table = self.tables.get_mut(&id)?;
        match (&self.txn_commit, &table.position) {
            (Some(commit), Some(held)) if held.holds(commit) => None,
            _ => Some(table),
        }
    }

    fn hold(&mut self, id: TableId, change: HeldChange) {
        let bytes: usize = match &change {
            HeldChange::Create(r) | HeldChange::Delete(r) => row_bytes(r),
            HeldChange::Update(b, a) => row_bytes(a) + b.as_deref().map_or(0, row_bytes),
            HeldChange::Truncate => 16,
        };
        let Some(table) = self.live(id) else { return };
        table.touched = true;
        table.counters.changes += 1;
        let encoder = table.encoder.clone();
        self.held.push(Held { encoder, change });
        self.held_bytes += bytes;
        self.pending_events += 1;
        self.pending_bytes += bytes;
        self.pending_since.get_or_insert_with(Instant::now);
    }
}

fn row_bytes(row: &[Value]) -> usize {
    row.iter()
        .map(|v| match v {
            Value::Text(b) | Value::Binary(b) => b.len() + 8,
            _ => 8,
        })
        .sum()
}

/// The positions reader's client context: the end of a partition is what it waits for, not
/// an error to log.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Produces one message, waiting while the producer's queue is full.
async fn send(producer: &ThreadedProducer<DefaultProducerContext>, message: &Message) -> Result<()> {
    let mut headers = OwnedHeaders::new();
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&message.topic).headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &message.value {
        record = record.payload(value.as_slice());
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => {
                return Err(kafka_error(
                    format!("cannot produce to topic {}", message.topic),
                    e,
                ));
            }
        }
    }
}

/// What the connections of one table copy share.
pub struct KafkaCopy {
    encoder: Arc<TableEncoder>,
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    source: SourceInfo,
}

/// One copy connection's writer: rows as `r` events into the open Kafka transaction.
pub struct KafkaCopyWriter {
    copy: Arc<KafkaCopy>,
    rows: u64,
}

#[async_trait::async_trait]
impl BatchWriter for KafkaCopyWriter {
    type Output = u64;

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let copy = &self.copy;
        let spec = copy.encoder.spec();
        let now = now_micros() * 1000;
        for row in 0..batch.num_rows() {
            let after = row_values(&batch, row, spec)?;
            let messages = copy
                .encoder
                .encode(Change::Read { after: &after }, &copy.source, now)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("cannot encode a copied row of {}: {e}", spec.qualified()),
                    )
                })?;
            for message in &messages {
                send(&copy.producer, message).await?;
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn finish(self) -> Result<u64> {
        Ok(self.rows)
    }
}

impl ChangeSink for KafkaSink {
    type Copy = Arc<KafkaCopy>;
    type CopyPart = u64;
    type CopyWriter = KafkaCopyWriter;

    fn has_table(&self, id: TableId) -> bool {
        self.tables.contains_key(&id)
    }

    fn table_positions(&self) -> Vec<TablePosition> {
        let mut out: Vec<_> = self
            .tables
            .values()
            .map(|t| TablePosition {
                target: t.encoder.topic().to_string(),
                position: t.position.clone(),
                stopped: None,
                counters: t.counters.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    fn pending_events(&self) -> u64 {
        self.pending_events
    }

    fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn pending_since(&self) -> Option<Instant> {
        self.pending_since
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn last_commit(&self) -> Option<(Position, i64)> {
        self.last_commit.clone()
    }

    async fn attach(&mut self, spec: Arc<TableSpec>) -> Result<Attached> {
        let encoder = Arc::new(TableEncoder::new(&self.encoding, spec.clone()));
        let topic = encoder.topic().to_string();
        self.access.check(TopicOperation::Publish, &topic).await?;
        self.ensure_topic(&topic, self.partitions, false).await?;
        let position = self.published.get(&spec.qualified()).map(|(p, _)| p.clone());
        let table = KafkaTable {
            encoder,
            position: position.clone(),
            touched: false,
            counters: TableCounters::default(),
        };
        self.tables.insert(spec.id, table);
        Ok(Attached {
            target: topic,
            position,
            stopped: None,
            indexed_rows: 0,
        })
    }

    async fn apply(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Begin {
                commit_position,
                transaction_id,
            } => {
                self.txn_commit = Some(commit_position);
                self.txn_id = transaction_id;
                self.in_transaction = true;
            }
            SourceEvent::Commit {
                position,
                commit_time_micros,
            } => {
                self.produce_held(&position, commit_time_micros).await?;
                self.in_transaction = false;
                self.txn_commit = None;
                self.txn_id = None;
                self.last_commit = Some((position, commit_time_micros));
            }
            SourceEvent::Keepalive { .. } => {}
            SourceEvent::Relation(spec) => {
                if let Some(table) = self.tables.get_mut(&spec.id) {
                    // A changed table: later changes are encoded with its new schema.
                    table.encoder = Arc::new(TableEncoder::new(&self.encoding, spec));
                }
            }
            SourceEvent::Insert { table, new } => self.hold(table, HeldChange::Create(new)),
            SourceEvent::Update { table, old, mut new } => {
                // With the whole old row (REPLICA IDENTITY FULL), an unchanged TOASTed value
                // is known: the event carries it instead of Debezium's placeholder. (A NULL
                // is never TOASTed, so a key-only old row's NULLs fill nothing.)
                if let Some(old) = old.as_ref().filter(|o| o.len() == new.len()) {
                    for (n, o) in new.iter_mut().zip(old) {
                        if matches!(n, Value::Unchanged) && matches!(o, Value::Text(_) | Value::Binary(_)) {
                            *n = o.clone();
                        }
                    }
                }
                self.hold(table, HeldChange::Update(old, new));
            }
            SourceEvent::Delete { table, old } => self.hold(table, HeldChange::Delete(old)),
            SourceEvent::Truncate { tables } => {
                for id in tables {
                    // A table never published has nothing downstream to empty (CockroachDB's
                    // first scan truncates before it fills).
                    if self.tables.get(&id).is_some_and(|t| t.position.is_some()) {
                        self.hold(id, HeldChange::Truncate);
                    }
                }
            }
        }
        Ok(())
    }

    async fn spill_if_needed(&mut self) -> Result<()> {
        if self.held_bytes < self.spill_bytes {
            return Ok(());
        }
        // A transaction too large to hold: its events go out now, stamped with the time they
        // were read (the module doc says so); it still commits whole, with a flush.
        let Some(position) = self.txn_commit.clone() else {
            return Ok(());
        };
        tracing::debug!(
            bytes = self.held_bytes,
            "producing a large transaction before its commit"
        );
        self.produce_held(&position, now_micros()).await
    }

    async fn mark_idle(&mut self, position: &Position) -> Result<()> {
        let behind: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, t)| !t.touched && t.position.as_ref().is_some_and(|p| p < position))
            .map(|(id, _)| *id)
            .collect();
        if behind.is_empty() || self.open {
            return Ok(());
        }
        self.open().await?;
        for id in behind {
            if let Some(t) = self.tables.get_mut(&id) {
                t.touched = true;
            }
        }
        let time = self.last_commit.as_ref().map_or_else(now_micros, |(_, t)| *t);
        self.commit(Some((position.clone(), time))).await
    }

    async fn flush(&mut self) -> Result<Option<Position>> {
        if self.in_transaction {
            return Err(Error::new(ErrorKind::Internal, "flush inside a transaction"));
        }
        let Some(last) = self.last_commit.clone() else {
            return Ok(None);
        };
        let started = Instant::now();
        let events = self.pending_events;
        self.commit(Some(last.clone())).await?;
        if events > 0 {
            metrics::histogram!("tarn_cdc_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("tarn_cdc_kafka_events_total").increment(events);
        }
        failpoint::hit("cdc.after_commit").await?;
        self.pending_events = 0;
        self.pending_bytes = 0;
        self.pending_since = None;
        Ok(Some(last.0))
    }

    async fn begin_copy(&mut self, id: TableId, position: &Position) -> Result<Arc<KafkaCopy>> {
        self.open().await?;
        let table = self
            .tables
            .get(&id)
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("source table {id} is not attached")))?;
        Ok(Arc::new(KafkaCopy {
            encoder: table.encoder.clone(),
            producer: self.producer.clone(),
            source: SourceInfo {
                db: self.db.clone(),
                position: position.clone(),
                tx_id: None,
                commit_time_micros: now_micros(),
                snapshot: SnapshotMarker::True,
                transaction: None,
            },
        }))
    }

    fn copy_writer(&self, _id: TableId, _part: usize, copy: &Arc<KafkaCopy>) -> Result<KafkaCopyWriter> {
        Ok(KafkaCopyWriter {
            copy: copy.clone(),
            rows: 0,
        })
    }

    async fn finish_copy(
        &mut self,
        id: TableId,
        parts: Vec<u64>,
        _copy: Arc<KafkaCopy>,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        let rows: u64 = parts.iter().sum();
        failpoint::hit("cdc.snapshot.before_commit").await?;
        let table = self
            .tables
            .get_mut(&id)
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("source table {id} is not attached")))?;
        table.position = Some(position);
        table.touched = true;
        table.counters.changes += rows;
        tracing::info!(topic = %table.encoder.topic(), rows, kind, "copy published");
        if !self.in_transaction {
            // Between source transactions: durable now (positions as they are).
            self.commit(None).await?;
        }
        Ok(rows)
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.flush_interval)
    }

    async fn maintain(&mut self, _config: &MaintenanceConfig) -> Result<()> {
        // Topics are the broker's to keep (retention, compaction).
        Ok(())
    }
}
