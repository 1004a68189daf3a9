//! `tarn bench kafka`: Kafka → Iceberg, against a plain consumer on the same topic.
//!
//! 1. **Backlog.** `--events` Debezium change events of one PostgreSQL-shaped table (inserts of
//!    new keys, then updates and deletes with their tombstones; schemas embedded or not) are
//!    produced to a topic of `--partitions` partitions on a Kafka-protocol broker started for
//!    the run (tansu from the project's venv, in memory, on a loopback port).
//!    - reference: an rdkafka consumer (`read_committed`, every partition assigned) drains the
//!      topic to nothing; records/s.
//!    - tarn: the Kafka pipeline (`cdc.source_kind = "kafka"`) consumes the same topic into a
//!      fresh lake until every partition's offset is committed there; events/s, and the
//!      ratio to the reference.
//! 2. **Freshness.** With the pipeline running, single events are produced at `--rate` per
//!    second for `--freshness-seconds`; each one's latency is the time from its produce call
//!    to the lake commit that holds its offset (from then on queries see it). p50 and p99.
//!
//! Peak RSS: sampled while tarn consumes the backlog, and the process's peak (the backlog is
//! encoded and produced 20,000 changes at a time, so that the run's own memory stays small).
//!
//! Every figure comes with the build profile (`tarn bench` prints it); only the release
//! profile's figures belong in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tarn_cdc::debezium::{Change, EncoderConfig, SourceConnector, SourceInfo, TableEncoder};
use tarn_cdc::pipeline::{PipelineHandle, RunOptions};
use tarn_cdc::position::{KafkaOffsets, Lsn, Position, TopicPartition};
use tarn_cdc::source::{ColumnSpec, KeyKind, TableSpec};
use tarn_cdc::value::{ColumnType, Value};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_test_utils::kafka::Broker;

/// What `tarn bench kafka` is asked to do.
#[derive(Debug, Clone)]
pub struct KafkaBenchOptions {
    /// Change events of the backlog.
    pub events: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Embed the Connect schema in every key and value (Debezium's default).
    pub schemas: bool,
    /// Seconds of the freshness phase.
    pub freshness_seconds: u64,
    /// Events per second during the freshness phase.
    pub rate: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct KafkaBenchReport {
    /// Records produced (change events and tombstones).
    pub records: u64,
    /// Change events among them.
    pub events: u64,
    /// The reference consumer's records/s.
    pub reference_per_second: f64,
    /// tarn's change events/s into the lake.
    pub tarn_per_second: f64,
    /// Freshness samples, seconds.
    pub freshness: Vec<f64>,
}

fn orders_spec() -> Arc<TableSpec> {
    Arc::new(TableSpec {
        id: 1,
        schema: "public".into(),
        name: "orders".into(),
        columns: vec![
            ColumnSpec::new("id", ColumnType::Int64, true, 1),
            ColumnSpec::new("customer", ColumnType::Int64, false, 2),
            ColumnSpec::new(
                "amount",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                false,
                3,
            ),
            ColumnSpec::new("status", ColumnType::Text, false, 4),
            ColumnSpec::new("created", ColumnType::TimestampTz, false, 5),
        ],
        key_kind: KeyKind::PrimaryKey,
    })
}

/// A row of the orders table.
fn order(id: u64, step: u64) -> Vec<Value> {
    let text = |s: String| Value::Text(s.into());
    let status = ["placed", "paid", "shipped", "cancelled"][(step % 4) as usize];
    vec![
        text(id.to_string()),
        text((id % 997).to_string()),
        text(format!("{}.{:02}", 10 + id % 500, id % 100)),
        text(status.to_string()),
        text(format!("2026-12-06 10:{:02}:{:02}+00", (id / 60) % 60, id % 60)),
    ]
}

/// Encodes changes `part` of a backlog of `events` changes: inserts of new ids (60 %), then
/// updates (30 %) and deletes (10 %) of them, then (changes `events..events + partitions`)
/// one insert per partition. The backlog is made and produced a part at a time, so that the
/// run never holds all of it (about 900 MiB with schemas). Returns the records with their
/// partitions.
fn backlog_part(
    encoder: &TableEncoder,
    events: u64,
    partitions: i32,
    part: std::ops::Range<u64>,
) -> Result<Vec<(i32, tarn_cdc::debezium::Message)>> {
    let inserts = (events * 6 / 10).max(1);
    let mut out = Vec::with_capacity((part.end - part.start) as usize * 11 / 10);
    for n in part {
        let info = SourceInfo {
            db: "shop".into(),
            position: Lsn(0x100_0000 + (n + 1) * 0x40).into(),
            tx_id: (n < events).then_some(n as i64),
            commit_time_micros: 1_765_000_000_000_000,
            snapshot: Default::default(),
            transaction: None,
        };
        // Every partition ends with a change, not a tombstone: a tombstone carries nothing
        // to commit, so the lake's offsets reach a partition's end only with a change after
        // it.
        let (id, row, change) = if n >= events {
            let id = 5_000_000 * partitions as u64 + (n - events);
            (id, order(id, 0), 'c')
        } else if n < inserts {
            (n, order(n, 0), 'c')
        } else if n % 4 != 0 {
            let id = n % inserts;
            (id, order(id, n), 'u')
        } else {
            let id = (n * 7) % inserts;
            (id, order(id, 0), 'd')
        };
        let change = match change {
            'c' => Change::Create { after: &row },
            'u' => Change::Update {
                before: None,
                after: &row,
            },
            _ => Change::Delete { before: &row },
        };
        let partition = (id % partitions as u64) as i32;
        for m in encoder.encode(change, &info, 0).context("encoding the backlog")? {
            out.push((partition, m));
        }
    }
    Ok(out)
}

/// Produces `records` (idempotent producer, many in flight, order kept per partition);
/// returns the next offset of every partition afterwards.
async fn produce(
    broker: &Broker,
    records: &[(i32, tarn_cdc::debezium::Message)],
) -> Result<BTreeMap<i32, i64>> {
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("allow.auto.create.topics", "false")
        .create()
        .context("cannot create a Kafka producer")?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for chunk in records.chunks(20_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(partition, m)| {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&m.topic).partition(*partition);
                if let Some(k) = &m.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &m.value {
                    record = record.payload(v.as_slice());
                }
                producer.send(record, Duration::from_secs(60))
            })
            .collect();
        for delivered in futures::future::join_all(sends).await {
            let d = delivered.map_err(|(e, _)| anyhow::anyhow!("cannot produce the backlog: {e}"))?;
            let entry = next.entry(d.partition).or_insert(0);
            *entry = (*entry).max(d.offset + 1);
        }
    }
    Ok(next)
}

/// Drains the topic with a plain consumer; returns records read and seconds taken.
fn drain(broker: &Broker, topic: &str, partitions: i32, records: u64) -> Result<(u64, f64)> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "tarn-bench-reference")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        // As tarn's consumer sets it, so that both read a backlog at the broker's pace.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("cannot create the reference consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3600);
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < records {
        if Instant::now() > deadline {
            bail!("the reference consumer read {read} of {records} records within an hour");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.context("the reference consumer")?;
            bytes += m.payload().map_or(0, <[u8]>::len);
            read += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok((read, started.elapsed().as_secs_f64()))
}

/// The lake holds every partition up to `next`.
fn holds(acknowledged: Option<&Position>, topic: &str, next: &BTreeMap<i32, i64>) -> bool {
    let Some(Position::Kafka(offsets)) = acknowledged else {
        return false;
    };
    let wanted = next.iter().fold(KafkaOffsets::new(), |o, (p, n)| {
        o.with(TopicPartition::new(topic, *p), *n)
    });
    offsets.covers(&wanted)
}

/// Runs the benchmark in `dir` (a fresh lake is made there).
pub async fn run(config: &Config, options: &KafkaBenchOptions, dir: &Path) -> Result<KafkaBenchReport> {
    if options.events == 0 || options.partitions <= 0 || options.rate == 0 {
        bail!("--events, --partitions and --rate must be positive");
    }
    let broker = tokio::task::block_in_place(Broker::start)
        .context("cannot start the benchmark's Kafka broker (bash scripts/setup.sh installs it)")?;
    let encoder = TableEncoder::new(
        &EncoderConfig {
            schemas: options.schemas,
            ..EncoderConfig::new("bench", SourceConnector::Postgres)
        },
        orders_spec(),
    );
    let topic = encoder.topic().to_string();
    tokio::task::block_in_place(|| broker.create_topic(&topic, options.partitions))?;
    println!(
        "broker: tansu on {} (memory storage); topic {topic}, {} partitions, schemas {}",
        broker.bootstrap(),
        options.partitions,
        if options.schemas { "embedded" } else { "off" }
    );

    // 1. The backlog.
    let started = Instant::now();
    let events = options.events + options.partitions as u64;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut produced = 0usize;
    for start in (0..events).step_by(20_000) {
        let records = backlog_part(
            &encoder,
            options.events,
            options.partitions,
            start..(start + 20_000).min(events),
        )?;
        for (p, n) in produce(&broker, &records).await? {
            let entry = next.entry(p).or_insert(0);
            *entry = (*entry).max(n);
        }
        produced += records.len();
    }
    println!(
        "backlog: {events} change events in {produced} records produced in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (read, seconds) =
        tokio::task::block_in_place(|| drain(&broker, &topic, options.partitions, produced as u64))?;
    let reference = read as f64 / seconds;
    println!(
        "  reference (rdkafka consumer, to nothing): {read} records in {seconds:.2}s = {reference:.0} records/s"
    );

    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    let mut config = config.clone();
    config.data_dir = dir.to_path_buf();
    config.catalog.url = None;
    config.storage.warehouse = None;
    config.cdc.source_kind = "kafka".into();
    config.cdc.pipeline = "bench_kafka".into();
    config.cdc.namespace = "bench".into();
    config.cdc.kafka.brokers = broker.bootstrap();
    config.cdc.kafka.topics = vec![topic.clone()];
    config.cdc.kafka.group = "tarn-bench".into();
    config.cdc.kafka.session_timeout = "6s".into();
    config.maintenance.auto = false;
    let lake = Lake::open(&config).await?;
    let sampler = crate::measure::RssSampler::start();
    let started = Instant::now();
    let mut pipeline = PipelineHandle::spawn(&config, lake, RunOptions::default());
    pipeline
        .wait_until("the backlog in the lake", Duration::from_secs(3600), |r| {
            holds(r.acknowledged.as_ref(), &topic, &next)
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let tarn_rss = sampler.stop();
    let tarn = events as f64 / seconds;
    println!(
        "  tarn (Kafka → Iceberg): {events} events in {seconds:.2}s = {tarn:.0} events/s \
         (ratio to the reference {:.2}; records/s {:.0})",
        tarn / reference,
        produced as f64 / seconds
    );

    // 2. Freshness.
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()?;
    let mut freshness = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
    let end = Instant::now() + Duration::from_secs(options.freshness_seconds);
    let mut pending: Vec<(Instant, i32, i64)> = Vec::new();
    let mut n = options.events;
    let mut next_send = Instant::now();
    while Instant::now() < end || !pending.is_empty() {
        if Instant::now() >= next_send && Instant::now() < end {
            n += 1;
            let id = 10_000_000 + n;
            let info = SourceInfo {
                db: "shop".into(),
                position: Lsn(0x200_0000 + n * 0x40).into(),
                tx_id: Some(n as i64),
                commit_time_micros: 1_765_000_000_000_000,
                snapshot: Default::default(),
                transaction: None,
            };
            let row = order(id, 0);
            let message = encoder
                .encode(Change::Create { after: &row }, &info, 0)?
                .remove(0);
            let partition = (id % options.partitions as u64) as i32;
            let sent = Instant::now();
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).partition(partition);
            if let Some(k) = &message.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &message.value {
                record = record.payload(v.as_slice());
            }
            let delivered = producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("cannot produce: {e}"))?;
            pending.push((sent, delivered.partition, delivered.offset));
            next_send += interval;
        }
        let report = pipeline.report();
        if let Some(Position::Kafka(offsets)) = &report.acknowledged {
            let now = Instant::now();
            pending.retain(|(sent, p, o)| {
                let held = offsets
                    .get(&TopicPartition::new(&topic, *p))
                    .is_some_and(|next| next > *o);
                if held {
                    freshness.push(now.duration_since(*sent).as_secs_f64());
                }
                !held
            });
        }
        if pipeline.is_finished() {
            bail!("the pipeline stopped during the freshness phase");
        }
        if Instant::now() > end + Duration::from_secs(60) {
            bail!(
                "{} events were not in the lake 60 s after the freshness phase",
                pending.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pipeline.stop().await?;
    freshness.sort_by(f64::total_cmp);
    let pct = |p: f64| freshness[((freshness.len() - 1) as f64 * p).round() as usize];
    if !freshness.is_empty() {
        println!(
            "freshness (produce → lake commit, {} events at {}/s): p50 {:.2}s, p99 {:.2}s, max {:.2}s",
            freshness.len(),
            options.rate,
            pct(0.5),
            pct(0.99),
            freshness[freshness.len() - 1]
        );
    }
    if let Some(rss) = crate::measure::peak_rss() {
        match tarn_rss {
            Some(tarn) => println!(
                "peak RSS: {tarn} while tarn consumed the backlog (sampled every 50 ms); {rss} for the whole run"
            ),
            None => println!("peak RSS: {rss}"),
        }
    }
    Ok(KafkaBenchReport {
        records: produced as u64,
        events,
        reference_per_second: reference,
        tarn_per_second: tarn,
        freshness,
    })
}
