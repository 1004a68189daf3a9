//! `tarn cdc tail TOPIC`: the change events on a Kafka topic, decoded — the seed's "validate
//! CDC events" step.
//!
//! Reads every partition of the topic without joining a consumer group (nothing is
//! committed, no other consumer is disturbed), `read_committed`, from the beginning or the
//! end, and prints one line per record: partition/offset, operation, table, key and the row
//! after (or before, for deletes); `--json` prints the whole decoded event instead.
//! `--validate` checks each record against Debezium's documented envelope and reports what
//! does not match; the exit code is then 1 if any record was invalid.
//!
//! Records are decoded with tarn's Debezium codec (`tarn_cdc::debezium`), so this shows what
//! `tarn ingest kafka` would make of a topic, whoever wrote it (tarn, a Debezium connector).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tarn_cdc::debezium::{Decoded, DecodedRow, Decoder, validate};

/// Arguments of `tarn cdc tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic, e.g. `shop.public.orders`.
    pub topic: String,
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, default_value = "127.0.0.1:9092", env = "TARN_KAFKA_BROKERS")]
    pub brokers: String,
    /// Start at the topic's beginning instead of its end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Keep waiting for new records (until Ctrl-C) instead of stopping once the topic is
    /// quiet for `--idle`.
    #[arg(long)]
    pub follow: bool,
    /// Without `--follow`: stop when no record came for this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Print each decoded event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Check each record against Debezium's documented envelope; exit 1 if any fails.
    #[arg(long)]
    pub validate: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tarn_core::config::parse_duration("--idle", s).map_err(|e| e.to_string())
}

/// What one tail saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TailSummary {
    /// Records read.
    pub records: u64,
    /// Records that are not change events tarn can read.
    pub undecodable: u64,
    /// Records that do not match Debezium's envelope (with `--validate`).
    pub invalid: u64,
}

/// Runs `tarn cdc tail`.
pub async fn run(args: TailArgs) -> Result<ExitCode> {
    let summary = tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        tail(&args, &mut stdout.lock())
    })
    .await
    .context("tarn cdc tail panicked")??;
    eprintln!(
        "{} record(s), {} not readable as change events{}",
        summary.records,
        summary.undecodable,
        if summary.invalid > 0 {
            format!(", {} not matching Debezium's envelope", summary.invalid)
        } else {
            String::new()
        }
    );
    Ok(
        if summary.invalid > 0 || summary.undecodable > 0 && summary.records == summary.undecodable {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// Reads the topic as `args` says, writing lines to `out`.
pub fn tail(args: &TailArgs, out: &mut impl std::io::Write) -> Result<TailSummary> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        // No group: partitions are assigned by hand and nothing is committed.
        .set("group.id", "tarn-cdc-tail")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .with_context(|| format!("cannot create a Kafka consumer for {}", args.brokers))?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("cannot reach the Kafka brokers {}", args.brokers))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == args.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic {} does not exist on {}", args.topic, args.brokers))?;
    let mut assignment = TopicPartitionList::new();
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for p in topic.partitions() {
        assignment
            .add_partition_offset(&args.topic, p.id(), start)
            .context("cannot assign a partition")?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot read topic {}", args.topic))?;
    let mut decoder = Decoder::new();
    let mut summary = TailSummary::default();
    let mut last = Instant::now();
    loop {
        if args.max.is_some_and(|m| summary.records >= m) {
            break;
        }
        if !args.follow && last.elapsed() >= args.idle {
            break;
        }
        let Some(next) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let record = next.with_context(|| format!("reading topic {}", args.topic))?;
        last = Instant::now();
        summary.records += 1;
        let at = format!("{}/{}", record.partition(), record.offset());
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        if args.validate
            && let Some(value) = record.payload()
        {
            let with_schema = serde_json::from_slice::<serde_json::Value>(value)
                .ok()
                .and_then(|v| {
                    v.as_object()
                        .map(|o| o.contains_key("schema") && o.contains_key("payload"))
                })
                .unwrap_or(false);
            if let Err(invalid) = validate(value, with_schema) {
                summary.invalid += 1;
                for p in &invalid.problems {
                    writeln!(out, "{at} INVALID {p}")?;
                }
            }
        }
        match decoder.decode(record.key(), record.payload(), &headers, None) {
            Err(e) => {
                summary.undecodable += 1;
                writeln!(out, "{at} NOT A CHANGE EVENT: {e}")?;
            }
            Ok(decoded) if args.json => {
                writeln!(out, "{}", event_json(&at, &decoded))?;
            }
            Ok(decoded) => writeln!(out, "{}", event_line(&at, &decoded))?,
        }
    }
    Ok(summary)
}

fn row_text(row: &DecodedRow) -> String {
    let cells: Vec<String> = row
        .columns
        .iter()
        .map(|(name, value)| {
            let text = match value {
                tarn_cdc::value::Value::Null => "NULL".to_string(),
                tarn_cdc::value::Value::Unchanged => "(unchanged)".to_string(),
                tarn_cdc::value::Value::Text(t) | tarn_cdc::value::Value::Binary(t) => {
                    String::from_utf8_lossy(t).into_owned()
                }
            };
            format!("{name}={text}")
        })
        .collect();
    format!("{{{}}}", cells.join(", "))
}

fn row_json(row: &DecodedRow) -> serde_json::Value {
    row.columns
        .iter()
        .map(|(name, value)| {
            let v = match value {
                tarn_cdc::value::Value::Null => serde_json::Value::Null,
                tarn_cdc::value::Value::Unchanged => serde_json::json!({"unchanged": true}),
                tarn_cdc::value::Value::Text(t) | tarn_cdc::value::Value::Binary(t) => {
                    String::from_utf8_lossy(t).into_owned().into()
                }
            };
            (name.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// One line: `partition/offset op schema.table key -> row`.
fn event_line(at: &str, decoded: &Decoded) -> String {
    match decoded {
        Decoded::Tombstone { key } => format!(
            "{at} tombstone {}",
            key.as_ref().map(row_text).unwrap_or_default()
        ),
        Decoded::Change(c) => {
            let table = format!(
                "{}.{}",
                c.table.schema.as_deref().or(c.table.db.as_deref()).unwrap_or("?"),
                c.table.table.as_deref().unwrap_or("?")
            );
            let key = c.key.as_ref().map(row_text).unwrap_or_default();
            let row = match (&c.after, &c.before) {
                (Some(after), _) => format!(" -> {}", row_text(after)),
                (None, Some(before)) => format!(" (was {})", row_text(before)),
                (None, None) => String::new(),
            };
            format!("{at} {} {table} {key}{row}", c.op)
        }
    }
}

/// The decoded event as JSON.
fn event_json(at: &str, decoded: &Decoded) -> serde_json::Value {
    match decoded {
        Decoded::Tombstone { key } => serde_json::json!({
            "at": at,
            "tombstone": true,
            "key": key.as_ref().map(row_json),
        }),
        Decoded::Change(c) => serde_json::json!({
            "at": at,
            "op": c.op.code(),
            "connector": c.table.connector,
            "db": c.table.db,
            "schema": c.table.schema,
            "table": c.table.table,
            "key": c.key.as_ref().map(row_json),
            "before": c.before.as_ref().map(row_json),
            "after": c.after.as_ref().map(row_json),
            "position": format!("{:?}", c.position),
        }),
    }
}

/// Refuses arguments that cannot work, before connecting.
pub fn check(args: &TailArgs) -> Result<()> {
    if args.topic.trim().is_empty() {
        bail!("tarn cdc tail needs a topic");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use tarn_cdc::debezium::{Change, EncoderConfig, SourceConnector, SourceInfo, TableEncoder};
    use tarn_cdc::source::{ColumnSpec, KeyKind, TableSpec};
    use tarn_cdc::value::{ColumnType, Value};
    use tarn_test_utils::kafka::Broker;

    use super::*;

    fn spec() -> Arc<TableSpec> {
        Arc::new(TableSpec {
            id: 1,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![
                ColumnSpec::new("id", ColumnType::Int64, true, 1),
                ColumnSpec::new("item", ColumnType::Text, false, 2),
            ],
            key_kind: KeyKind::PrimaryKey,
        })
    }

    fn cell(text: &str) -> Value {
        Value::Text(text.to_string().into())
    }

    fn args(broker: &Broker, topic: &str) -> TailArgs {
        TailArgs {
            topic: topic.into(),
            brokers: broker.bootstrap(),
            from_beginning: true,
            max: None,
            follow: false,
            idle: Duration::from_secs(3),
            json: false,
            validate: true,
        }
    }

    /// tarn's own events (an insert, an update, a delete and its tombstone) and one record
    /// that is not a change event, read back with `--validate`.
    #[test]
    fn tails_decodes_and_validates_a_topic() {
        let broker = Broker::start().unwrap();
        let encoder = TableEncoder::new(&EncoderConfig::new("shop", SourceConnector::Postgres), spec());
        let topic = encoder.topic().to_string();
        broker.create_topic(&topic, 1).unwrap();
        let source = |lsn: &str| SourceInfo {
            db: "shop".into(),
            position: lsn.parse().unwrap(),
            tx_id: Some(7),
            commit_time_micros: 1_700_000_000_000_000,
            snapshot: Default::default(),
            transaction: None,
        };
        let (one, two) = ([cell("1"), cell("apple")], [cell("1"), cell("pear")]);
        let mut messages = Vec::new();
        for (change, lsn) in [
            (Change::Create { after: &one }, "0/100"),
            (
                Change::Update {
                    before: None,
                    after: &two,
                },
                "0/200",
            ),
            (Change::Delete { before: &two }, "0/300"),
        ] {
            messages.extend(encoder.encode(change, &source(lsn), 1).unwrap());
        }
        let producer: ThreadedProducer<DefaultProducerContext> = broker.client_config().create().unwrap();
        for m in &messages {
            let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(&topic);
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            if let Some(v) = &m.value {
                record = record.payload(v);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer
            .send(BaseRecord::<Vec<u8>, Vec<u8>>::to(&topic).payload(&b"{\"not\": \"an event\"}".to_vec()))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();

        let mut out = Vec::new();
        let summary = tail(&args(&broker, &topic), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(summary.records, messages.len() as u64 + 1, "{out}");
        assert_eq!(summary.undecodable, 1, "{out}");
        // tarn's own events match the envelope; only the stray record does not.
        assert_eq!(summary.invalid, 1, "{out}");
        assert!(
            out.contains("0/0 c public.orders {id=1} -> {id=1, item=apple}"),
            "{out}"
        );
        assert!(
            out.contains("0/1 u public.orders {id=1} -> {id=1, item=pear}"),
            "{out}"
        );
        assert!(out.contains("0/2 d public.orders {id=1} (was {id=1"), "{out}");
        assert!(out.contains("0/3 tombstone {id=1}"), "{out}");
        assert!(out.contains("0/4 NOT A CHANGE EVENT"), "{out}");

        // --json and --max.
        let mut json_args = args(&broker, &topic);
        (json_args.json, json_args.max, json_args.validate) = (true, Some(1), false);
        let mut out = Vec::new();
        tail(&json_args, &mut out).unwrap();
        let first: serde_json::Value =
            serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["op"], "c");
        assert_eq!(first["after"]["item"], "apple");
    }

    #[test]
    fn an_unknown_topic_and_an_unreachable_broker_are_named() {
        let broker = Broker::start().unwrap();
        let err = tail(&args(&broker, "no.such.topic"), &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("topic no.such.topic does not exist"),
            "{err:#}"
        );
        let mut unreachable = args(&broker, "t");
        unreachable.brokers = format!("127.0.0.1:{}", tarn_cdc::postgres::local::free_port().unwrap());
        let err = tail(&unreachable, &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot reach the Kafka brokers"),
            "{err:#}"
        );
    }
}
