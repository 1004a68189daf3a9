//! The Kafka source: topics of Debezium change events (tarn's own, or a real Debezium
//! connector's, with or without schemas) into the lake, exactly once per partition.
//!
//! [`KafkaSource`] is a [`ChangeSource`] (`cdc.source_kind = "kafka"`, `[cdc.kafka]`;
//! `tarn ingest kafka`). Its parts:
//!
//! - [`events`] turns records into transactions (consecutive changes of a partition in one
//!   poll, cut where a table's offset falls), each table named by the event's `source` block,
//!   its spec from the embedded schema (or `text` columns for schemaless topics), replays
//!   deduplicated by Debezium source position;
//! - [`reader`] runs that in a task of its own, a poll at a time, ahead of the lake writer by
//!   at most two polls;
//! - [`dead_letter`] sends the records that are not change events to the dead-letter topic,
//!   acknowledged before the lake can record offsets past them;
//! - [`lag`] measures each partition's lag from the ends the broker's fetch responses carry;
//! - [`check`] measures, from outside a pipeline, how far its lake tables are behind the topics
//!   (the scheduler's `ingest-kafka` task).
//!
//! **Exactly once.** The lake is the source of truth for offsets: each commit records, in
//! every table it writes, the next offset of every partition consumed so far
//! ([`crate::position`]'s `KafkaOffsets`, merged per partition). On start the source lists the
//! pipeline's lake tables in `cdc.namespace`, and seeks each partition to the smallest offset
//! the tables hold for it; a table that names no offset for a partition (one whose first
//! commit never happened included) counts with the consumer group's committed offset, or,
//! when the group has none, makes the partition start at its beginning. `cdc.kafka.start`
//! (`earliest`, `latest`) decides only for a pipeline without lake tables. Records before a table's offset are skipped by the sink
//! ([`Position::holds`]), so a restart after a crash between commits of two tables replays
//! the difference into the table that missed it and nothing into the other.
//! [`acknowledge`](ChangeSource::acknowledge) commits the group's offsets after each lake
//! commit, for monitoring (`kafka-consumer-groups`, lag exporters) and as the fallback above;
//! a failed group commit is logged, not fatal.
//!
//! **Partitions.** With `cdc.kafka.assignment = "all"` (the default) the source assigns
//! itself every partition of the configured topics (names, or one `^regex` matched against
//! the broker's topics at start): one worker per pipeline. With `"group"`, workers running
//! the same pipeline with the same group subscribe, and Kafka's group protocol splits the
//! partitions among them. A rebalance (a worker joining, leaving or dying) restarts each
//! worker's run on the same consumer (leaving the group would rebalance everyone again):
//! what it read and did not commit is discarded, and its partitions are sought to the
//! offsets the lake holds, exactly as at start. Since a worker may be committing a
//! partition's rows while the group hands that partition to another, every lake commit of
//! Kafka offsets is fenced by the catalog's compare-and-swap (see the sink's `kafka_fence`):
//! a commit recording a partition that another worker advanced since this one attached
//! the table is refused, and the run restarts from the lake; a commit records its own
//! partitions merged with the offsets the table holds for the others. Topics created after
//! start that a regex would match are not picked up.
//!
//! The consumer reads `read_committed`, never creates topics (`allow.auto.create.topics=false`:
//! a missing topic is an error naming it), and waits at most `fetch.wait.max.ms=100` on the
//! broker so that an idle pipeline still commits on time. Its prefetch queue keeps librdkafka's
//! limits but is refilled 10 ms after it was full instead of a second (`fetch.queue.backoff.ms`),
//! so that a backlog streams instead of arriving in bursts.

pub mod archive;
pub mod check;
pub mod dead_letter;
pub mod events;
pub mod lag;
pub mod plain;
pub mod reader;
pub mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tarn_core::{Config, Error, ErrorKind, Result};
use tarn_lake::Lake;

use crate::pipeline::{PipelineStatus, SourceContext};
use crate::position::{KafkaOffsets, TopicPartition};
use crate::sink::{ChangeSink, SUMMARY_PIPELINE, table_position};
use crate::source::{ChangeSource, FlushRule, Next, Position, SourceEvent, TableSpec};
use dead_letter::DeadLetterTopic;
use events::RecordMapper;
use lag::WatermarkContext;
use reader::Reader;

/// How long librdkafka waits before fetching again for a partition whose prefetch queue is
/// full (`fetch.queue.backoff.ms`). librdkafka stops fetching while the records it prefetched
/// exceed `queued.min.messages` (100,000) or `queued.max.messages.kbytes` (64 MiB), and by
/// default looks again only a second later: a backlog then came in bursts, the reader idle
/// for most of each second (`tarn bench kafka` spent about half its time waiting so). Looked
/// at again after 10 ms, the queue is topped up as the reader drains it; the two limits still
/// bound its memory.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Consumes `cdc.kafka.topics` into the lake; see the module doc.
pub struct KafkaSource {
    /// Topic ACLs of the pipeline's principal.
    access: crate::topic_acl::TopicAccess,
    consumer: Arc<StreamConsumer<WatermarkContext>>,
    /// Connection settings shared by the consumer, the dead-letter producer and admin calls.
    client: ClientConfig,
    lake: Lake,
    brokers: String,
    group: String,
    topics: Vec<String>,
    start: String,
    dead_letter_topic: String,
    pipeline: String,
    timeout: Duration,
    /// `cdc.kafka.assignment = "group"`: the group splits the partitions among workers.
    group_mode: bool,
    /// `cdc.kafka.format = "json"`: the columns of plain JSON records (empty: inferred).
    plain: Option<Vec<plain::PlainColumn>>,
    /// The consumer's rebalance count when this run started (group mode).
    generation: u64,
    /// Reading since [`ChangeSource::start`].
    reader: Option<Reader>,
    /// Every partition's next offset delivered to the pipeline.
    delivered: KafkaOffsets,
    /// Records handed to the pipeline, and when the rate was last measured.
    records: (u64, Instant),
    next_lag: Instant,
}

fn kafka_error(what: String, e: rdkafka::error::KafkaError) -> Error {
    Error::new(ErrorKind::Source, format!("{what}: {e}"))
}

/// The error for a topic the brokers' metadata names with an error: missing ACLs said as such
/// (a broker that hides unauthorized topics answers "unknown topic" instead, which tarn also
/// says), anything else with the broker's own words.
fn topic_refused(topic: &str, error: RDKafkaErrorCode, brokers: &str, group: &str) -> Error {
    match error {
        RDKafkaErrorCode::TopicAuthorizationFailed => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "the Kafka brokers {brokers} refused access to topic {topic:?} (topic authorization failed): \
                 the principal tarn connects as needs the Describe and Read ACLs on the topic, and Read on \
                 consumer group {group:?}"
            ),
        ),
        RDKafkaErrorCode::UnknownTopicOrPartition => Error::new(
            ErrorKind::NotFound,
            format!(
                "Kafka topic {topic:?} does not exist on brokers {brokers}, or the principal tarn connects as \
                 may not see it (Describe ACL) (tarn does not create the topics it consumes; create it, or fix \
                 cdc.kafka.topics)"
            ),
        ),
        other => Error::new(
            ErrorKind::Source,
            format!("the Kafka brokers {brokers} answered for topic {topic:?}: {other}"),
        ),
    }
}

impl KafkaSource {
    /// A consumer of `config.cdc.kafka`'s topics writing into `lake`; nothing is contacted
    /// until [`ChangeSource::start`].
    pub fn connect(config: &Config, lake: Lake, status: &PipelineStatus) -> Result<Self> {
        let kafka = &config.cdc.kafka;
        let session = tarn_core::config::parse_duration("cdc.kafka.session_timeout", &kafka.session_timeout)?;
        let plain = (kafka.format == "json")
            .then(|| plain::parse_columns(&kafka.columns))
            .transpose()
            .map_err(|e| Error::new(ErrorKind::Config, format!("key `cdc.kafka.columns`: {e}")))?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.brokers)
            .set("client.id", format!("tarn-{}", config.cdc.pipeline));
        let consumer: StreamConsumer<WatermarkContext> = client
            .clone()
            .set("group.id", &kafka.group)
            .set("session.timeout.ms", session.as_millis().to_string())
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", kafka.start.as_str())
            .set("fetch.wait.max.ms", "100")
            // See FETCH_QUEUE_BACKOFF_MS.
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            // Each partition's end for the lag, from fetch responses (see `lag`).
            .set(
                "statistics.interval.ms",
                reader::LAG_EVERY.as_millis().to_string(),
            )
            .create_with_context(WatermarkContext::default())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "cannot create a Kafka consumer for brokers {}: {e}",
                        kafka.brokers
                    ),
                )
            })?;
        status.update(|r| {
            r.source = format!("kafka://{}/{}", kafka.brokers, kafka.topics.join(","));
            r.slot = format!("group {}", kafka.group);
            r.publication = String::new();
        });
        Ok(Self {
            access: crate::topic_acl::TopicAccess::from_config(config)?.audited(config, &lake)?,
            consumer: Arc::new(consumer),
            client,
            lake,
            brokers: kafka.brokers.clone(),
            group: kafka.group.clone(),
            topics: kafka.topics.clone(),
            start: kafka.start.clone(),
            dead_letter_topic: kafka.dead_letter_topic(),
            pipeline: config.cdc.pipeline.clone(),
            // Metadata requests: long enough for a slow broker, short enough to report a
            // wrong address promptly.
            timeout: session.min(Duration::from_secs(10)),
            group_mode: kafka.assignment == "group",
            plain,
            generation: 0,
            reader: None,
            delivered: KafkaOffsets::new(),
            records: (0, Instant::now()),
            next_lag: Instant::now(),
        })
    }

    /// A source for another run of the pipeline on the same consumer (group mode: the
    /// consumer stays in the group, so a restart after a rebalance does not cause another).
    pub fn fresh(&self) -> Self {
        Self {
            access: self.access.clone(),
            consumer: self.consumer.clone(),
            client: self.client.clone(),
            lake: self.lake.clone(),
            brokers: self.brokers.clone(),
            group: self.group.clone(),
            topics: self.topics.clone(),
            start: self.start.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            pipeline: self.pipeline.clone(),
            timeout: self.timeout,
            group_mode: self.group_mode,
            plain: self.plain.clone(),
            generation: 0,
            reader: None,
            delivered: KafkaOffsets::new(),
            records: (0, Instant::now()),
            next_lag: Instant::now(),
        }
    }

    /// Whether the consumer group rebalanced since a run started at `generation`.
    pub fn rebalanced_since(&self, generation: u64) -> bool {
        self.group_mode && self.consumer.context().rebalances() != generation
    }

    /// The consumer's rebalance count: what [`KafkaSource::rebalanced_since`] compares.
    pub fn rebalances(&self) -> u64 {
        self.consumer.context().rebalances()
    }

    /// Whether the group splits the partitions among workers (`cdc.kafka.assignment`).
    pub fn group_mode(&self) -> bool {
        self.group_mode
    }

    fn rebalanced_error(&self) -> Error {
        Error::new(
            ErrorKind::Source,
            format!(
                "consumer group {} rebalanced; the pipeline restarts on its new partitions from the offsets the lake holds",
                self.group
            ),
        )
    }

    /// Group mode: joins the group (once per consumer) and returns the partitions it assigned
    /// to this worker so far (none before the first rebalance).
    async fn group_partitions(&self) -> Result<Vec<TopicPartition>> {
        // The topics must exist: a clear error instead of an empty assignment.
        let all = self.partitions().await?;
        if self.consumer.subscription().map(|s| s.count()).unwrap_or(0) == 0 {
            let mut topics: Vec<&str> = Vec::new();
            for tp in &all {
                if !topics.contains(&tp.topic.as_str()) {
                    topics.push(&tp.topic);
                }
            }
            self.consumer
                .subscribe(&topics)
                .map_err(|e| kafka_error(format!("cannot join consumer group {}", self.group), e))?;
            tracing::info!(group = %self.group, topics = ?topics, "joined the consumer group");
        }
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| kafka_error("cannot read the consumer's assignment".into(), e))?;
        Ok(assignment
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect())
    }

    /// Group mode: moves the assigned partitions to `offsets` (librdkafka refuses a seek
    /// until an assignment is applied, so this retries for a while).
    async fn seek(&self, offsets: TopicPartitionList) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let timeout = self.timeout;
        let mut pending = offsets;
        loop {
            let list = pending.clone();
            let result = self
                .blocking(move |c| c.seek_partitions(list, timeout))
                .await?
                .map_err(|e| kafka_error("cannot seek the assigned partitions".into(), e))?;
            let mut failed = TopicPartitionList::new();
            let mut last = None;
            for e in result.elements() {
                if let Err(err) = e.error() {
                    let offset = pending
                        .find_partition(e.topic(), e.partition())
                        .map_or(Offset::Invalid, |p| p.offset());
                    failed
                        .add_partition_offset(e.topic(), e.partition(), offset)
                        .map_err(|e| kafka_error("cannot seek".into(), e))?;
                    last = Some(format!("{}:{}: {err}", e.topic(), e.partition()));
                }
            }
            let Some(last) = last else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!("cannot seek the assigned partitions to the lake's offsets: {last}"),
                ));
            }
            pending = failed;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StreamConsumer<WatermarkContext>) -> T + Send + 'static,
    ) -> Result<T> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || f(&consumer))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("a Kafka call panicked: {e}")))
    }

    /// Puts the lag (measured now when `lag` is `None` and a second has passed), the
    /// consumed-records rate and the dead-letter count into the status and the metrics.
    fn report(
        &mut self,
        ctx: &SourceContext<'_>,
        lag: Option<Vec<crate::pipeline::PartitionReport>>,
        dead_letters: Option<u64>,
    ) {
        let now = Instant::now();
        let lag = lag.or_else(|| {
            (now >= self.next_lag && !self.delivered.is_empty())
                .then(|| self.consumer.context().report(&self.delivered))
        });
        let Some(lag) = lag else {
            if let Some(n) = dead_letters {
                ctx.status.update(|r| r.dead_letters = n);
            }
            return;
        };
        self.next_lag = now + reader::LAG_EVERY;
        let (records, since) = self.records;
        let rate = records as f64 / now.duration_since(since).as_secs_f64().max(0.001);
        self.records = (0, now);
        metrics::gauge!("tarn_kafka_records_per_second").set(rate);
        ctx.status.update(|r| {
            r.partitions = lag;
            r.records_per_second = Some(rate);
            if let Some(n) = dead_letters {
                r.dead_letters = n;
            }
        });
    }

    /// Every partition of the configured topics.
    async fn partitions(&self) -> Result<Vec<TopicPartition>> {
        let timeout = self.timeout;
        let metadata = self
            .blocking(move |c| c.fetch_metadata(None, timeout))
            .await?
            .map_err(|e| {
                kafka_error(
                    format!(
                        "cannot reach the Kafka brokers {} (no metadata within {timeout:?})",
                        self.brokers
                    ),
                    e,
                )
            })?;
        let mut out = Vec::new();
        let mut resolved: Vec<String> = Vec::new();
        for wanted in &self.topics {
            let found: Vec<_> = if let Some(pattern) = wanted.strip_prefix('^') {
                let re = regex::Regex::new(&format!("^{pattern}")).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("key `cdc.kafka.topics`: {wanted:?} is not a regular expression: {e}"),
                    )
                })?;
                let matched: Vec<_> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && re.is_match(t.name()))
                    .collect();
                // Topic ACLs of the topics the pattern resolves to (literal names were
                // checked when the pipeline started), asked once the metadata is let go.
                resolved.extend(matched.iter().map(|t| t.name().to_string()));
                matched
            } else {
                if let Some(error) = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == wanted)
                    .and_then(|t| t.error())
                {
                    return Err(topic_refused(wanted, error.into(), &self.brokers, &self.group));
                }
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && t.name() == wanted)
                    .collect()
            };
            if found.is_empty() || found.iter().all(|t| t.partitions().is_empty()) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "Kafka topic {wanted:?} does not exist on brokers {} (tarn does not create the topics it \
                         consumes; create it, or fix cdc.kafka.topics)",
                        self.brokers
                    ),
                ));
            }
            for t in found {
                for p in t.partitions() {
                    let tp = TopicPartition::new(t.name(), p.id());
                    if !out.contains(&tp) {
                        out.push(tp);
                    }
                }
            }
        }
        drop(metadata);
        for topic in resolved {
            self.access
                .check(crate::topic_acl::TopicOperation::Consume, &topic)
                .await?;
        }
        Ok(out)
    }

    /// The offsets every lake table of this pipeline holds; a table it created that holds no
    /// position yet (its first commit never happened) names none.
    async fn lake_offsets(&self, config: &Config) -> Result<Vec<KafkaOffsets>> {
        let pipeline = &config.cdc.pipeline;
        let ns = iceberg::NamespaceIdent::new(config.cdc.namespace.clone());
        if !self.lake.namespace_exists(&ns).await? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for ident in self.lake.list_tables(&ns).await? {
            let table = self.lake.load_table(&ident).await?;
            match table_position(&table, pipeline) {
                (Some(Position::Kafka(offsets)), _) => out.push(offsets),
                (None, _)
                    if table
                        .metadata()
                        .properties()
                        .get(SUMMARY_PIPELINE)
                        .is_some_and(|p| p == pipeline) =>
                {
                    out.push(KafkaOffsets::new());
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The pipeline's lake tables of plain JSON records (inferred columns) and their fields.
    async fn plain_tables(&self, config: &Config) -> Result<Vec<(String, Vec<plain::PlainColumn>)>> {
        let ns = iceberg::NamespaceIdent::new(config.cdc.namespace.clone());
        if !self.lake.namespace_exists(&ns).await? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for ident in self.lake.list_tables(&ns).await? {
            let table = self.lake.load_table(&ident).await?;
            let Some(source) = crate::sink::source_table(&table) else {
                continue;
            };
            let Some(name) = source.strip_prefix("kafka.") else {
                continue;
            };
            if table.metadata().properties().get(SUMMARY_PIPELINE) != Some(&config.cdc.pipeline) {
                continue;
            }
            let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
                .map_err(|e| tarn_lake::iceberg_error(format!("cannot read the schema of {ident}"), e))?;
            if let Some(fields) = plain::PlainMapper::fields_of(&schema) {
                out.push((name.to_string(), fields));
            }
        }
        Ok(out)
    }

    /// The group's committed offsets of `partitions`.
    async fn group_offsets(&self, partitions: &[TopicPartition]) -> Result<KafkaOffsets> {
        let mut list = TopicPartitionList::new();
        for tp in partitions {
            list.add_partition(&tp.topic, tp.partition);
        }
        let timeout = self.timeout;
        let committed = self
            .blocking(move |c| c.committed_offsets(list, timeout))
            .await?
            .map_err(|e| {
                kafka_error(
                    format!("cannot read the committed offsets of group {}", self.group),
                    e,
                )
            })?;
        let mut out = KafkaOffsets::new();
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                out.insert(TopicPartition::new(e.topic(), e.partition()), o);
            }
        }
        Ok(out)
    }
}

/// Where partition `tp` starts: the smallest offset any table holds, a table naming none
/// counting with the group's offset, or `None` (the start policy) when a table names neither
/// or nothing is known. See the module doc.
fn start_offset(tp: &TopicPartition, tables: &[KafkaOffsets], group: &KafkaOffsets) -> Option<i64> {
    if tables.is_empty() {
        return group.get(tp);
    }
    tables
        .iter()
        .map(|t| t.get(tp).or_else(|| group.get(tp)))
        .try_fold(i64::MAX, |min, o| o.map(|o| min.min(o)))
}

impl ChangeSource for KafkaSource {
    async fn start<K: ChangeSink>(
        &mut self,
        _sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> Result<Option<Position>> {
        self.generation = self.rebalances();
        let partitions = if self.group_mode {
            self.group_partitions().await?
        } else {
            self.partitions().await?
        };
        let tables = self.lake_offsets(ctx.config).await?;
        let group = self.group_offsets(&partitions).await?;
        let mut assignment = TopicPartitionList::new();
        let mut start = KafkaOffsets::new();
        for tp in &partitions {
            let offset = match start_offset(tp, &tables, &group) {
                Some(o) => {
                    start.insert(tp.clone(), o);
                    Offset::Offset(o)
                }
                // Only a pipeline without tables may skip what the partition holds.
                None if self.start == "latest" && tables.is_empty() => Offset::End,
                None => Offset::Beginning,
            };
            assignment
                .add_partition_offset(&tp.topic, tp.partition, offset)
                .map_err(|e| kafka_error(format!("cannot seek {}:{}", tp.topic, tp.partition), e))?;
        }
        let dead_letters = DeadLetterTopic::new(
            &self.client,
            &self.brokers,
            &self.dead_letter_topic,
            &self.pipeline,
        )?;
        dead_letters.ensure_topic(&self.client, self.timeout).await?;
        let mut mapper = RecordMapper::starting_at(start.clone(), &tables);
        if let Some(columns) = &self.plain {
            let mut rows = plain::PlainMapper::new(columns.clone());
            if columns.is_empty() {
                for (name, fields) in self.plain_tables(ctx.config).await? {
                    rows.knows(&name, fields);
                }
            }
            mapper = mapper.plain(rows);
        }
        if !self.group_mode {
            self.consumer
                .assign(&assignment)
                .map_err(|e| kafka_error("cannot assign the Kafka partitions".into(), e))?;
        } else if !partitions.is_empty() {
            self.seek(assignment).await?;
        }
        if self.rebalanced_since(self.generation) {
            return Err(self.rebalanced_error());
        }
        tracing::info!(
            partitions = partitions.len(),
            lake_tables = tables.len(),
            from = %start,
            dead_letter_topic = %self.dead_letter_topic,
            "consuming Kafka topics"
        );
        self.delivered = start.clone();
        self.reader = Some(Reader::spawn(
            self.consumer.clone(),
            mapper,
            dead_letters,
            self.brokers.clone(),
            self.group_mode.then_some(self.generation),
        ));
        Ok(Some(Position::Kafka(start)))
    }

    async fn next(&mut self, ctx: &SourceContext<'_>, deadline: Instant) -> Result<Next> {
        let batch = loop {
            if self.rebalanced_since(self.generation) {
                return Err(self.rebalanced_error());
            }
            let reader = self
                .reader
                .as_mut()
                .ok_or_else(|| Error::new(ErrorKind::Internal, "the Kafka source was not started"))?;
            // Waking at least every LAG_EVERY keeps the lag current while idle.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(reader::LAG_EVERY);
            let received = tokio::select! {
                () = ctx.stop.cancelled() => return Ok(Next::Stopped),
                received = tokio::time::timeout(wait, reader.next()) => received,
            };
            match received {
                Err(_) => {
                    self.report(ctx, None, None);
                    if Instant::now() >= deadline {
                        return Ok(Next::Idle);
                    }
                }
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        "the Kafka reader ended without an error",
                    ));
                }
                Ok(Some(batch)) => break batch?,
            }
        };
        self.delivered = batch.delivered.clone();
        self.records.0 += batch.records as u64;
        self.report(ctx, batch.lag, Some(batch.dead_letters));
        let mut events = batch.events;
        // Where the partitions stand now, records that carry no change (tombstones) included:
        // with nothing buffered, the pipeline acknowledges it, so a partition that ends with
        // a tombstone is not shown one record behind forever.
        events.push(SourceEvent::Keepalive {
            position: Position::Kafka(batch.delivered),
        });
        Ok(Next::Events(events))
    }

    async fn acknowledge<K: ChangeSink>(&mut self, position: &Position, _sink: &mut K) -> Result<()> {
        let Some(offsets) = position.kafka().filter(|o| !o.is_empty()) else {
            return Ok(());
        };
        let mut list = TopicPartitionList::new();
        for (tp, offset) in offsets.iter() {
            list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset))
                .map_err(|e| kafka_error(format!("cannot commit {}:{}", tp.topic, tp.partition), e))?;
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(group = %self.group, error = %e, "cannot commit the group's offsets (monitoring only; the lake holds the offsets)");
        }
        Ok(())
    }

    async fn adopt<K: ChangeSink>(
        &mut self,
        spec: Arc<TableSpec>,
        sink: &mut K,
        _ctx: &SourceContext<'_>,
    ) -> Result<()> {
        let attached = sink.attach(spec.clone()).await?;
        tracing::info!(table = %attached.target, topic_table = %spec.qualified(), position = %crate::position::text_or_dash(attached.position.as_ref()), "consuming into");
        Ok(())
    }

    async fn tick<K: ChangeSink>(&mut self, _sink: &mut K, _ctx: &SourceContext<'_>) -> Result<()> {
        Ok(())
    }

    async fn stop<K: ChangeSink>(&mut self, _sink: &mut K, durable: Option<&Position>) -> Result<()> {
        self.reader = None;
        let Some(offsets) = durable
            .and_then(Position::kafka)
            .filter(|o| !o.is_empty())
            .cloned()
        else {
            return Ok(());
        };
        let group = self.group.clone();
        self.blocking(move |c| {
            let mut list = TopicPartitionList::new();
            for (tp, offset) in offsets.iter() {
                let _ = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset));
            }
            if let Err(e) = c.commit(&list, CommitMode::Sync) {
                tracing::warn!(%group, error = %e, "cannot commit the group's offsets at stop");
            }
        })
        .await
    }

    fn received(&self) -> Option<Position> {
        (!self.delivered.is_empty()).then(|| Position::Kafka(self.delivered.clone()))
    }

    fn flush_rule(&self) -> FlushRule {
        FlushRule::OldestChange
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_topics_name_the_acls() {
        let e = topic_refused(
            "shop.orders",
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "b:9092",
            "tarn",
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let text = e.to_string();
        assert!(
            text.contains("\"shop.orders\"") && text.contains("Describe and Read ACLs"),
            "{text}"
        );
        assert!(text.contains("consumer group \"tarn\""), "{text}");
        let e = topic_refused("x", RDKafkaErrorCode::UnknownTopicOrPartition, "b:9092", "tarn");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = topic_refused("x", RDKafkaErrorCode::LeaderNotAvailable, "b:9092", "tarn");
        assert!(e.to_string().contains("answered for topic \"x\""), "{e}");
    }

    #[test]
    fn a_partition_starts_at_what_every_table_holds() {
        let tp = TopicPartition::new("t", 0);
        let k = |o: i64| KafkaOffsets::new().with(tp.clone(), o);
        let none = KafkaOffsets::new();
        assert_eq!(start_offset(&tp, &[], &none), None);
        assert_eq!(start_offset(&tp, &[], &k(5)), Some(5));
        assert_eq!(start_offset(&tp, &[k(10), k(7)], &none), Some(7));
        // A table naming no offset counts with the group's, or makes the start unknown.
        assert_eq!(start_offset(&tp, &[k(10), none.clone()], &k(4)), Some(4));
        assert_eq!(start_offset(&tp, &[k(10), none.clone()], &none), None);
    }
}
