//! The Kafka source against a real Kafka-protocol broker (tansu, `tarn_test_utils::kafka`):
//! Debezium change events — encoded by tarn's codec for a PostgreSQL table, with and without
//! schemas, and Debezium's documented PostgreSQL and MySQL events — consumed into lake tables
//! that are compared row by row with what the messages imply; a restart that replays nothing
//! twice; the errors of a wrong broker address, an unknown topic and a malformed message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tarn_cdc::debezium::{Change, EncoderConfig, Message, SourceConnector, SourceInfo, TableEncoder};
use tarn_cdc::pipeline::{PipelineHandle, RunOptions, StatusReport};
use tarn_cdc::source::{ColumnSpec, KeyKind, TableSpec, Value};
use tarn_cdc::value::ColumnType;
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_test_utils::kafka::{Broker, Record};

use crate::{TestLake, init_logs, query};

const WAIT: Duration = Duration::from_secs(60);

/// `public.<name>` (`id int8` primary key, `v text`).
fn items_spec(name: &str) -> Arc<TableSpec> {
    Arc::new(TableSpec {
        id: 1,
        schema: "public".into(),
        name: name.into(),
        columns: vec![
            ColumnSpec::new("id", ColumnType::Int64, true, 1),
            ColumnSpec::new("v", ColumnType::Text, false, 2),
        ],
        key_kind: KeyKind::PrimaryKey,
    })
}

fn row(id: i64, v: &str) -> Vec<Value> {
    vec![
        Value::Text(id.to_string().into()),
        Value::Text(v.to_string().into()),
    ]
}

/// A PostgreSQL table's changes as tarn's Debezium encoder writes them, each message on the
/// partition of its key (`id % partitions`), with the expected rows kept beside.
struct Table {
    encoder: TableEncoder,
    partitions: i64,
    lsn: u64,
    expected: BTreeMap<i64, String>,
}

enum Op<'a> {
    Upsert(i64, &'a str),
    Delete(i64),
    Rekey(i64, i64, &'a str),
}

impl Table {
    fn new(name: &str, schemas: bool, partitions: i64) -> Self {
        let config = EncoderConfig {
            schemas,
            ..EncoderConfig::new("shop", SourceConnector::Postgres)
        };
        Self {
            encoder: TableEncoder::new(&config, items_spec(name)),
            partitions,
            lsn: 0x1000,
            expected: BTreeMap::new(),
        }
    }

    fn topic(&self) -> String {
        self.encoder.topic().to_string()
    }

    /// The records of `ops` and how many change events (not tombstones) they hold.
    fn records(&mut self, ops: &[Op<'_>]) -> (Vec<Record>, u64) {
        let mut messages: Vec<Message> = Vec::new();
        for op in ops {
            self.lsn += 0x100;
            let info = SourceInfo {
                db: "shop".into(),
                position: tarn_cdc::position::Lsn(self.lsn).into(),
                tx_id: Some(self.lsn as i64),
                commit_time_micros: 1_700_000_000_000_000,
                snapshot: Default::default(),
                transaction: None,
            };
            let encoded = match op {
                Op::Upsert(id, v) => {
                    let existed = self.expected.insert(*id, v.to_string()).is_some();
                    let after = row(*id, v);
                    let change = if existed {
                        Change::Update {
                            before: None,
                            after: &after,
                        }
                    } else {
                        Change::Create { after: &after }
                    };
                    self.encoder.encode(change, &info, 0)
                }
                Op::Delete(id) => {
                    self.expected.remove(id);
                    self.encoder.encode(
                        Change::Delete {
                            before: &row(*id, ""),
                        },
                        &info,
                        0,
                    )
                }
                Op::Rekey(old, new, v) => {
                    self.expected.remove(old);
                    self.expected.insert(*new, v.to_string());
                    let before = vec![Value::Text(old.to_string().into()), Value::Null];
                    let after = row(*new, v);
                    self.encoder.encode(
                        Change::Update {
                            before: Some(&before),
                            after: &after,
                        },
                        &info,
                        0,
                    )
                }
            };
            messages.extend(encoded.unwrap());
        }
        let changes = messages.iter().filter(|m| m.value.is_some()).count() as u64;
        let records = messages
            .into_iter()
            .map(|m| Record {
                partition: (key_id(m.key.as_deref().unwrap()) % self.partitions) as i32,
                topic: m.topic,
                key: m.key,
                value: m.value,
                headers: m.headers,
            })
            .collect();
        (records, changes)
    }

    fn expected_lines(&self) -> Vec<String> {
        self.expected.iter().map(|(id, v)| format!("{id}|{v}")).collect()
    }
}

/// The `id` of a record key, with or without its schema.
fn key_id(key: &[u8]) -> i64 {
    let json: serde_json::Value = serde_json::from_slice(key).unwrap();
    let payload = json.get("payload").unwrap_or(&json);
    payload["id"].as_i64().unwrap()
}

/// A lake and the config of a Kafka pipeline on `broker` consuming `topics`.
async fn kafka_lake(broker_address: &str, topics: &[&str]) -> (TestLake, Config) {
    init_logs();
    let topics = format!(
        "[{}]",
        topics
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lake = TestLake::with(&[
        ("cdc.kafka.topics", &topics),
        ("cdc.kafka.group", "tarn_it"),
        ("cdc.source_kind", "kafka"),
        ("cdc.pipeline", "kafka_it"),
        ("cdc.table_name", "{schema}_{table}"),
        ("cdc.flush.interval", "100ms"),
        ("cdc.kafka.brokers", broker_address),
        ("cdc.kafka.session_timeout", "6s"),
        ("maintenance.auto", "false"),
    ])
    .await;
    let config = lake.config.clone();
    (lake, config)
}

async fn spawn(config: &Config) -> PipelineHandle {
    let lake = Lake::open(config).await.unwrap();
    PipelineHandle::spawn(config, lake, RunOptions::default())
}

/// Waits until `sql` returns `expected` (the table may not exist yet).
async fn wait_rows(handle: &PipelineHandle, lake: &TestLake, sql: &str, expected: &[String]) -> StatusReport {
    let last = std::sync::Mutex::new(Vec::new());
    let result = handle
        .wait_for::<tarn_core::Error, _, _>(&format!("{sql} to return {expected:?}"), WAIT, None, |_| {
            let got = query(&lake.session, sql);
            let last = &last;
            async move {
                let rows = got.await.unwrap_or_default();
                let done = rows == expected;
                *last.lock().unwrap() = rows;
                Ok(done)
            }
        })
        .await;
    result.unwrap_or_else(|e| panic!("{e}; last rows {:?}", last.lock().unwrap()))
}

/// The rows of `sql` now (none when the table does not exist yet); a query that takes more
/// than 20 s fails the test.
async fn rows_now(lake: &TestLake, sql: &str) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(20), query(&lake.session, sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} took more than 20 s"))
        .unwrap_or_default()
}

fn broker() -> Broker {
    Broker::start().expect("a tansu broker (bash scripts/setup.sh installs it)")
}

fn produce(broker: &Broker, records: &[Record]) -> Vec<i64> {
    tokio::task::block_in_place(|| broker.produce(records).unwrap())
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tarn-cdc/tests/fixtures/debezium")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Inserts, updates, key changes, deletes with tombstones, over two partitions, with and
/// without schemas, plus Debezium's documented PostgreSQL and MySQL events; then a stop, more
/// changes, and a restart that applies only the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_topics_land_row_by_row_and_a_restart_replays_nothing() {
    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("items", true, 2);
    let mut notes = Table::new("notes", false, 1);
    tokio::task::block_in_place(|| {
        broker.create_topic(&items.topic(), 2).unwrap();
        broker.create_topic(&notes.topic(), 1).unwrap();
        broker.create_topic("dbserver1.customers", 1).unwrap();
    });
    let (lake, config) = kafka_lake(
        &broker.bootstrap(),
        &[&items.topic(), &notes.topic(), "dbserver1.customers"],
    )
    .await;

    let (mut records, mut changes) = items.records(&[
        Op::Upsert(1, "a"),
        Op::Upsert(2, "a"),
        Op::Upsert(3, "a"),
        Op::Upsert(4, "a"),
        Op::Upsert(5, "a"),
        Op::Upsert(6, "a"),
        Op::Upsert(2, "b"),
        Op::Delete(3),
        Op::Rekey(4, 40, "moved"),
        Op::Upsert(5, "c"),
    ]);
    let (more, n) = notes.records(&[
        Op::Upsert(1, "x"),
        Op::Upsert(2, "y"),
        Op::Upsert(1, "x2"),
        Op::Delete(2),
    ]);
    records.extend(more);
    changes += n;
    // Debezium's documented events: PostgreSQL create and update; MySQL create, update, delete
    // and the tombstone after it. Keys written as a schemaless JsonConverter writes them.
    let customer = |key: &str, value: Option<Vec<u8>>| Record {
        topic: "dbserver1.customers".into(),
        partition: 0,
        key: Some(key.as_bytes().to_vec()),
        value,
        headers: Vec::new(),
    };
    records.extend([
        customer(r#"{"id":1}"#, Some(fixture("pg-create-value.docs.json"))),
        customer(r#"{"id":1}"#, Some(fixture("pg-update-value.derived.json"))),
        customer(
            r#"{"id":1004}"#,
            Some(fixture("mysql-create-value.serde-with-schema.json")),
        ),
        customer(r#"{"id":1004}"#, Some(fixture("mysql-update-value.derived.json"))),
        customer(r#"{"id":1004}"#, Some(fixture("mysql-delete-value.derived.json"))),
        customer(r#"{"id":1004}"#, None),
    ]);
    changes += 5;
    produce(&broker, &records);

    let mut handle = spawn(&config).await;
    wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_items ORDER BY id",
        &items.expected_lines(),
    )
    .await;
    wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_notes ORDER BY id",
        &notes.expected_lines(),
    )
    .await;
    wait_rows(
        &handle,
        &lake,
        "SELECT id, first_name, last_name, email FROM cdc.public_customers",
        &["1|Anne Marie|Kretchmar|annek@noanswer.org".to_string()],
    )
    .await;
    // The MySQL row came and went: its table exists and is empty.
    wait_rows(
        &handle,
        &lake,
        "SELECT count(*) FROM cdc.inventory_customers",
        &["0".to_string()],
    )
    .await;
    let report = handle.report();
    assert_eq!(report.events_total, changes, "{report:?}");
    // The schemaless topic's columns are text; the schema'd one's are typed.
    let notes_id = lake
        .query("SELECT arrow_typeof(id) FROM cdc.public_notes LIMIT 1")
        .await;
    assert!(notes_id[0].starts_with("Utf8"), "{notes_id:?}");
    assert_eq!(
        lake.query("SELECT arrow_typeof(id) FROM cdc.public_items LIMIT 1")
            .await,
        ["Int64"]
    );
    handle.stop().await.unwrap();
    // The group's offsets followed the lake (for monitoring): each partition's end.
    let ends: Vec<Option<i64>> = (0..2)
        .map(|p| {
            let n = records
                .iter()
                .filter(|r| r.topic == items.topic() && r.partition == p)
                .count();
            Some(n as i64)
        })
        .collect();
    assert_eq!(
        tokio::task::block_in_place(|| broker.committed("tarn_it", &items.topic(), 2)).unwrap(),
        ends
    );
    // `tarn cdc status` shows the offsets each table holds, typed; `tarn cdc drop` has
    // nothing to drop on the source side.
    let topics = format!("cdc.kafka.topics=[{:?}]", items.topic());
    let settings = [
        "--set",
        "cdc.source_kind=kafka",
        "--set",
        "cdc.pipeline=kafka_it",
        "--set",
        &topics,
    ];
    let args = |command: &[&'static str]| [&settings[..], &["cdc"], command].concat();
    let (ok, out, err) = crate::tarn(lake.path(), &args(&["status", "--json"]));
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let held = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "cdc.public_items")
        .unwrap_or_else(|| panic!("no cdc.public_items in {out}"));
    let offsets = held["position"]["kafka"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"));
    // Every commit names every assigned partition (other topics' too).
    assert_eq!(
        offsets
            .iter()
            .filter(|o| o["topic"] == items.topic().as_str())
            .map(|o| o["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        ends.iter().map(|e| e.unwrap()).collect::<Vec<_>>(),
        "{out}"
    );
    let (ok, out, err) = crate::tarn(lake.path(), &args(&["drop"]));
    assert!(
        ok && out.contains("keeps nothing on the source side"),
        "{out}{err}"
    );

    // Stopped: more changes arrive, then a new run applies exactly them.
    let (mut records, mut changes) = items.records(&[
        Op::Upsert(7, "new"),
        Op::Upsert(1, "z"),
        Op::Delete(6),
        Op::Rekey(40, 41, "moved again"),
        Op::Upsert(3, "again"),
    ]);
    let (more, n) = notes.records(&[Op::Upsert(3, "w")]);
    records.extend(more);
    changes += n;
    produce(&broker, &records);
    let mut handle = spawn(&config).await;
    wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_items ORDER BY id",
        &items.expected_lines(),
    )
    .await;
    let report = wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_notes ORDER BY id",
        &notes.expected_lines(),
    )
    .await;
    assert_eq!(
        report.events_total, changes,
        "the second run applies only the new changes: {report:?}"
    );
    handle.stop().await.unwrap();
}

async fn failure(config: &Config, state: &str) -> String {
    let mut handle = spawn(config).await;
    let report = handle
        .wait_until(&format!("state {state}"), WAIT, |r| r.state == state)
        .await
        .unwrap();
    let _ = handle.stop().await;
    report.last_error.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_broker_address_is_named_and_retried() {
    let port = tarn_test_utils::free_port();
    let address = format!("127.0.0.1:{port}");
    let (_lake, config) = kafka_lake(&address, &["orders"]).await;
    let error = failure(&config, "retrying").await;
    assert!(
        error.contains(&format!("cannot reach the Kafka brokers {address}")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_stops_the_pipeline_naming_it() {
    let broker = tokio::task::block_in_place(broker);
    let (_lake, config) = kafka_lake(&broker.bootstrap(), &["no.such.topic"]).await;
    let error = failure(&config, "failed").await;
    assert!(
        error.contains("Kafka topic \"no.such.topic\" does not exist") && error.contains(&broker.bootstrap()),
        "{error}"
    );
    // The broker did not create it.
    assert_eq!(
        tokio::task::block_in_place(|| broker.partitions("no.such.topic")).unwrap(),
        None
    );
}

/// Reads `n` records of partition 0 of `topic` from its beginning, waiting at most `WAIT`.
fn read_topic(broker: &Broker, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker.consumer_config("tarn_it_reader").create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} records on {topic} within {WAIT:?}",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.unwrap().detach());
        }
    }
    out
}

/// Records that are not change events — not JSON, not an envelope, an unknown op, a value
/// that does not match its schema — between good ones: the good ones land, the bad ones go
/// to the dead-letter topic (created by tarn) as they were, with Kafka Connect's context
/// headers, and the partition's offsets advance past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_and_the_partition_goes_on() {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;
    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("mixed_items", true, 1);
    let topic = items.topic();
    tokio::task::block_in_place(|| broker.create_topic(&topic, 1).unwrap());
    let (good, changes) = items.records(&[
        Op::Upsert(1, "a"),
        Op::Upsert(2, "b"),
        Op::Upsert(3, "c"),
        Op::Upsert(1, "a2"),
        Op::Delete(2),
    ]);
    // A create whose `after.id` does not match its int64 schema.
    let (mut mistyped, _) = Table::new("mixed_items", true, 1).records(&[Op::Upsert(9, "x")]);
    let value = String::from_utf8(mistyped[0].value.take().unwrap()).unwrap();
    let broken = value.replacen(r#""after":{"id":9"#, r#""after":{"id":"nine""#, 1);
    assert_ne!(broken, value);
    mistyped[0].value = Some(broken.into_bytes());
    mistyped[0].headers.push(("trace".into(), b"t-1".to_vec()));
    let bad = |key: &str, value: &[u8]| Record {
        topic: topic.clone(),
        partition: 0,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: Vec::new(),
    };
    let bad_records = vec![
        bad(r#"{"id":7}"#, b"not json at all"),
        bad(r#"{"id":7}"#, br#"[1, 2, 3]"#),
        bad(
            r#"{"id":7}"#,
            br#"{"op":"x","source":{"connector":"postgresql","schema":"public","table":"mixed_items"}}"#,
        ),
        mistyped.remove(0),
    ];
    // good, bad, good, bad, good, good, bad, bad, good...: bad records inside what would be
    // one transaction of the partition.
    let mut records = Vec::new();
    let mut bad_iter = bad_records.clone().into_iter();
    for (i, r) in good.into_iter().enumerate() {
        records.push(r);
        if i % 2 == 0
            && let Some(b) = bad_iter.next()
        {
            records.push(b);
        }
    }
    records.extend(bad_iter);
    let offsets = produce(&broker, &records);
    let end = offsets.last().unwrap() + 1;

    let (lake, config) = kafka_lake(&broker.bootstrap(), &[&topic]).await;
    let mut handle = spawn(&config).await;
    wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_mixed_items ORDER BY id",
        &items.expected_lines(),
    )
    .await;
    // The partition's offset goes past the bad records at its end, and the status counts them.
    let report = handle
        .wait_until("the partition's end acknowledged", WAIT, |r| {
            r.acknowledged
                .as_ref()
                .and_then(|p| p.kafka())
                .and_then(|o| o.get(&tarn_cdc::position::TopicPartition::new(&topic, 0)))
                == Some(end)
        })
        .await
        .unwrap();
    assert_eq!(report.events_total, changes, "{report:?}");
    assert_eq!(report.dead_letters, bad_records.len() as u64, "{report:?}");
    // The partition's end comes from fetch statistics: nothing left to read.
    let report = handle
        .wait_until("the partition's lag measured", WAIT, |r| {
            r.partitions.iter().any(|p| p.partition == 0 && p.end.is_some())
        })
        .await
        .unwrap();
    let lag = &report.partitions[0];
    assert_eq!(
        (lag.topic.as_str(), lag.position, lag.end, lag.lag),
        (topic.as_str(), end, Some(end), Some(0)),
        "{report:?}"
    );
    // `tarn cdc status` shows it while the pipeline runs (from the status file, written
    // every second).
    let topics = format!("cdc.kafka.topics=[{topic:?}]");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, out, err) = crate::tarn(
            lake.path(),
            &[
                "--set",
                "cdc.source_kind=kafka",
                "--set",
                "cdc.pipeline=kafka_it",
                "--set",
                "cdc.kafka.group=tarn_it",
                "--set",
                &topics,
                "cdc",
                "status",
            ],
        );
        assert!(ok, "{err}");
        if out.contains(&format!("{topic}:0  position {end}  end {end}  lag 0"))
            && out.contains(&format!("{} dead-lettered", bad_records.len()))
            && out.contains("dead letters to tarn_it.dlq")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.stop().await.unwrap();

    // The dead-letter topic (the group's name and .dlq) holds each bad record as it was,
    // with where it came from and why.
    assert_eq!(
        tokio::task::block_in_place(|| broker.partitions("tarn_it.dlq")).unwrap(),
        Some(1)
    );
    let dead = tokio::task::block_in_place(|| read_topic(&broker, "tarn_it.dlq", bad_records.len()));
    let bad_offsets: Vec<i64> = records
        .iter()
        .zip(&offsets)
        .filter(|(r, _)| bad_records.iter().any(|b| b.value == r.value))
        .map(|(_, o)| *o)
        .collect();
    let expected_reasons = [
        "not JSON",
        "value: expected the change event envelope",
        "value.op",
        "value.payload.after.id",
    ];
    for (i, m) in dead.iter().enumerate() {
        let headers: BTreeMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let header = |k: &str| {
            headers
                .get(k)
                .cloned()
                .unwrap_or_else(|| panic!("no {k} in {headers:?}"))
        };
        assert_eq!(m.key(), bad_records[i].key.as_deref());
        assert_eq!(m.payload(), bad_records[i].value.as_deref());
        assert_eq!(header("__connect.errors.topic"), topic);
        assert_eq!(header("__connect.errors.partition"), "0");
        assert_eq!(header("__connect.errors.offset"), bad_offsets[i].to_string());
        assert_eq!(header("__connect.errors.connector.name"), "kafka_it");
        assert_eq!(header("__connect.errors.stage"), "VALUE_CONVERTER");
        let reason = header("__connect.errors.exception.message");
        assert!(reason.contains(expected_reasons[i]), "{i}: {reason}");
        for (k, v) in &bad_records[i].headers {
            assert_eq!(header(k).as_bytes(), v.as_slice(), "original header {k}");
        }
    }
}

/// `tarn ingest kafka` as a process: it ingests a topic until SIGTERM, serving its metrics
/// (records consumed and lag per partition), then commits and says what it applied; an
/// unknown topic ends it with an error naming the topic; `--help` says what it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarn_ingest_kafka_runs_until_sigterm_and_names_an_unknown_topic() {
    let (ok, help, _) = crate::tarn(std::path::Path::new("."), &["ingest", "kafka", "--help"]);
    assert!(
        ok && help.contains("exactly once") && help.contains("--brokers"),
        "{help}"
    );

    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("cli_items", true, 1);
    tokio::task::block_in_place(|| broker.create_topic(&items.topic(), 1).unwrap());
    let (records, changes) = items.records(&[Op::Upsert(1, "a"), Op::Upsert(2, "b"), Op::Delete(1)]);
    produce(&broker, &records);
    let (lake, _) = kafka_lake(&broker.bootstrap(), &["unused"]).await;
    let bootstrap = broker.bootstrap();
    let topic = items.topic();
    let metrics_addr = format!("127.0.0.1:{}", tarn_test_utils::free_port());
    let args = |topic: &str| {
        vec![
            "--data-dir".to_string(),
            lake.path().display().to_string(),
            "--set".into(),
            "cdc.flush.interval=100ms".into(),
            "--set".into(),
            "cdc.table_name={schema}_{table}".into(),
            "ingest".into(),
            "kafka".into(),
            "--brokers".into(),
            bootstrap.clone(),
            "--topic".into(),
            topic.to_string(),
            "--group".into(),
            "tarn_cli".into(),
            "--metrics-listen".into(),
            metrics_addr.clone(),
        ]
    };
    let mut child = std::process::Command::new(crate::tarn_bin())
        .args(args(&topic))
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let expected = items.expected_lines();
    loop {
        let rows = query(
            &lake.session,
            "SELECT id, v FROM cdc.public_cli_items ORDER BY id",
        )
        .await
        .unwrap_or_default();
        if rows == expected {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tarn ingest kafka exited ({status}) before the rows arrived");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rows {rows:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its metrics: records consumed and the lag of the partition, labelled; the lag
    // reaches 0 once the statistics of a fetch at the end arrived.
    let lag_line = format!("tarn_kafka_consumer_lag{{topic=\"{topic}\",partition=\"0\"}} 0");
    let records_line = format!(
        "tarn_kafka_records_total{{topic=\"{topic}\",partition=\"0\"}} {}",
        records.len()
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let page = tokio::task::block_in_place(|| http_get(&metrics_addr, "/metrics"));
        if page.contains(&lag_line) && page.contains(&records_line) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {lag_line:?} and {records_line:?} in {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("stopped: {changes} change(s) applied")),
        "{stderr}"
    );

    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(crate::tarn_bin())
            .args(args("no.such.topic"))
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .output()
    })
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Kafka topic \"no.such.topic\" does not exist"),
        "{stderr}"
    );
}

/// The body of `GET path` from an HTTP server at `addr` (empty when it does not answer).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// `tarn ingest kafka` killed again and again (failpoints abort the process between the
/// commits of two tables, after the commits, before the group commit) while waves of
/// changes arrive: the lake ends equal to the messages. A table without a key (every
/// replayed insert would show as a second row) proves that nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_commit_step_the_lake_ends_exactly_once() {
    const FAILPOINTS: [(&str, f64); 3] = [
        ("cdc.before_commit", 0.3),
        ("cdc.after_commit", 0.5),
        ("cdc.before_ack", 0.7),
    ];
    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("crash_items", true, 2);
    let log_spec = Arc::new(TableSpec {
        key_kind: KeyKind::FullRow,
        columns: items_spec("crash_log")
            .columns
            .iter()
            .map(|c| ColumnSpec {
                key: false,
                not_null: false,
                ..c.clone()
            })
            .collect(),
        ..(*items_spec("crash_log")).clone()
    });
    let log = TableEncoder::new(&EncoderConfig::new("shop", SourceConnector::Postgres), log_spec);
    tokio::task::block_in_place(|| {
        broker.create_topic(&items.topic(), 2).unwrap();
        broker.create_topic(log.topic(), 2).unwrap();
    });
    let (lake, _) = kafka_lake(&broker.bootstrap(), &["unused"]).await;
    let failpoints = FAILPOINTS
        .iter()
        .map(|(name, p)| format!("{name}=abort({p})"))
        .collect::<Vec<_>>()
        .join(",");
    let items_topic = items.topic();
    let ingest = |failpoints: &str| {
        std::process::Command::new(crate::tarn_bin())
            .args(["--data-dir", &lake.path().display().to_string()])
            .args([
                "--set",
                "cdc.flush.interval=50ms",
                "--set",
                "cdc.table_name={schema}_{table}",
            ])
            .args(["--set", "maintenance.auto=false"])
            .args([
                "ingest",
                "kafka",
                "--brokers",
                &broker.bootstrap(),
                "--group",
                "tarn_crash",
            ])
            .args(["--topic", &items_topic, "--topic", log.topic()])
            .env("TARN_FAILPOINTS", failpoints)
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let items_sql = "SELECT id, v FROM cdc.public_crash_items ORDER BY id";
    let log_sql = "SELECT id, v FROM cdc.public_crash_log ORDER BY id, v";
    let mut log_expected: Vec<(i64, String)> = Vec::new();
    let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kills = 0;
    for wave in 0..20i64 {
        let ops: Vec<Op<'_>> = (0..6)
            .map(|i| match (wave + i) % 3 {
                0 | 1 => Op::Upsert(i, "w"),
                _ => Op::Delete(i),
            })
            .collect();
        let (mut records, _) = items.records(&ops);
        for i in 0..6 {
            let id = wave * 6 + i;
            // Some rows repeat on purpose: a keyless table keeps each copy.
            let v = if i % 4 == 0 {
                "same".to_string()
            } else {
                format!("wave {wave}")
            };
            let after = row(id % 7, &v);
            log_expected.push((id % 7, v));
            let info = SourceInfo {
                db: "shop".into(),
                position: tarn_cdc::position::Lsn(0x10_0000 + id as u64 * 16).into(),
                tx_id: Some(id),
                commit_time_micros: 1_700_000_000_000_000,
                snapshot: Default::default(),
                transaction: None,
            };
            for m in log.encode(Change::Create { after: &after }, &info, 0).unwrap() {
                records.push(Record {
                    partition: (i % 2) as i32,
                    topic: m.topic,
                    key: m.key,
                    value: m.value,
                    headers: m.headers,
                });
            }
        }
        produce(&broker, &records);
        log_expected.sort();
        let log_lines: Vec<String> = log_expected.iter().map(|(id, v)| format!("{id}|{v}")).collect();
        let items_lines = items.expected_lines();
        // Runs with failpoints until one run gets the lake there (or a few tries).
        for _attempt in 0..6 {
            let mut child = ingest(&failpoints);
            let deadline = std::time::Instant::now() + WAIT;
            let reached = loop {
                let got_items = rows_now(&lake, items_sql).await;
                let got_log = rows_now(&lake, log_sql).await;
                if got_items == items_lines && got_log == log_lines {
                    break true;
                }
                assert!(
                    got_log.len() <= log_lines.len(),
                    "wave {wave}: the keyless table has rows twice: {got_log:?}"
                );
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(std::time::Instant::now() < deadline, "wave {wave}: stuck");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if reached {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let aborted: Vec<&str> = FAILPOINTS
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| stderr.contains(&format!("failpoint {name}: aborting")))
                .collect();
            if aborted.is_empty() {
                // A run that finds the lake already there is stopped at once, maybe before it
                // installed its SIGTERM handler: then SIGTERM's default action ends it.
                use std::os::unix::process::ExitStatusExt;
                let stopped = out.status.success() || out.status.signal() == Some(15);
                assert!(
                    reached && stopped,
                    "wave {wave}: exited without a failpoint ({}): {stderr}",
                    out.status
                );
                break;
            }
            kills += 1;
            for name in aborted {
                *fired.entry(name).or_default() += 1;
            }
        }
    }
    // A last run without failpoints catches up; then the lake equals the messages.
    let child = ingest("");
    let log_lines: Vec<String> = log_expected.iter().map(|(id, v)| format!("{id}|{v}")).collect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got_items = rows_now(&lake, items_sql).await;
        let got_log = rows_now(&lake, log_sql).await;
        if got_items == items.expected_lines() && got_log == log_lines {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "items {got_items:?} (expected {:?}), log {got_log:?} (expected {log_lines:?})",
            items.expected_lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("killed {kills} times: {fired:?}");
    // Every failpoint fired, and the process was killed often.
    for (name, _) in FAILPOINTS {
        assert!(
            fired.get(name).copied().unwrap_or(0) > 0,
            "{name} never fired: {fired:?}"
        );
    }
    assert!(kills >= 20, "only {kills} kills: {fired:?}");
}

/// A transaction aborted and sent again (tansu delivers the aborted copy to read_committed
/// consumers too): every change is applied once, the copies are skipped by their Debezium
/// source position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_sent_again_applies_once() {
    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("txn_items", true, 1);
    tokio::task::block_in_place(|| broker.create_topic(&items.topic(), 1).unwrap());
    let (records, changes) = items.records(&[
        Op::Upsert(1, "a"),
        Op::Upsert(2, "b"),
        Op::Upsert(1, "c"),
        Op::Delete(2),
    ]);
    tokio::task::block_in_place(|| {
        broker
            .produce_transaction("tarn-it-txn", &records, false)
            .unwrap();
        broker.produce_transaction("tarn-it-txn", &records, true).unwrap();
    });
    let (lake, config) = kafka_lake(&broker.bootstrap(), &[&items.topic()]).await;
    let mut handle = spawn(&config).await;
    let report = wait_rows(
        &handle,
        &lake,
        "SELECT id, v FROM cdc.public_txn_items ORDER BY id",
        &items.expected_lines(),
    )
    .await;
    assert_eq!(report.events_total, changes, "{report:?}");
    handle.stop().await.unwrap();
}

/// A running `tarn ingest kafka` whose output (logs on stdout, errors on stderr) is collected
/// as it goes.
struct Worker {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let sink = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap())),
            collect(Box::new(child.stderr.take().unwrap())),
        ];
        Self { child, log, readers }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The partitions of the group's last assignment to this worker, if it had one.
    fn assigned(&self) -> Option<String> {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("consumer group assigned partitions"))?;
        let list = line
            .split("partitions=")
            .nth(1)?
            .split_whitespace()
            .next()
            .unwrap_or("");
        Some(list.trim_matches('"').to_string())
    }

    fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to end; its whole log.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.log())
    }
}

impl Drop for Worker {
    /// A failing test leaves no worker behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two workers of one consumer group split four partitions while changes keep coming: the
/// second joins mid-stream (a rebalance revokes partitions from the first while it holds
/// uncommitted rows), then the first is killed (its partitions move to the second). The lake
/// ends equal to the messages: every upsert, delete and key change once, and no row of a
/// keyless table twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_the_partitions_across_rebalances() {
    let broker = tokio::task::block_in_place(broker);
    let mut items = Table::new("group_items", true, 4);
    let log_spec = Arc::new(TableSpec {
        key_kind: KeyKind::FullRow,
        columns: items_spec("group_log")
            .columns
            .iter()
            .map(|c| ColumnSpec {
                key: false,
                not_null: false,
                ..c.clone()
            })
            .collect(),
        ..(*items_spec("group_log")).clone()
    });
    let log = TableEncoder::new(&EncoderConfig::new("shop", SourceConnector::Postgres), log_spec);
    tokio::task::block_in_place(|| {
        broker.create_topic(&items.topic(), 4).unwrap();
        broker.create_topic(log.topic(), 4).unwrap();
    });
    let (lake, _) = kafka_lake(&broker.bootstrap(), &["unused"]).await;
    let items_topic = items.topic();
    let worker = || {
        let mut command = std::process::Command::new(crate::tarn_bin());
        command
            .args(["--data-dir", &lake.path().display().to_string()])
            .args(["--set", "cdc.flush.interval=200ms"])
            .args(["--set", "cdc.table_name={schema}_{table}"])
            .args(["--set", "cdc.kafka.session_timeout=6s"])
            .args(["--set", "maintenance.auto=false"])
            .args(["ingest", "kafka", "--brokers", &broker.bootstrap()])
            .args(["--group", "tarn_group_it", "--assignment", "group"])
            .args(["--topic", &items_topic, "--topic", log.topic()])
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .env("NO_COLOR", "1");
        Worker::spawn(command)
    };
    let items_sql = "SELECT id, v FROM cdc.public_group_items ORDER BY id";
    let log_sql = "SELECT id, v FROM cdc.public_group_log ORDER BY id, v";
    let mut log_lines: Vec<String> = Vec::new();
    let mut next_log_id = 0i64;
    // One wave: upserts, deletes and a key change over 40 keys, and four keyless rows.
    let mut wave = |n: i64| {
        let ops: Vec<Op<'_>> = (0..40)
            .map(|i| match (n + i) % 5 {
                0 => Op::Delete(i),
                4 if i + 40 < 80 => Op::Rekey(i, i + 40, "moved"),
                _ => Op::Upsert(i, "w"),
            })
            .collect();
        let ops: Vec<Op<'_>> = ops
            .into_iter()
            .map(|op| match op {
                Op::Upsert(i, _) if n % 2 == 0 => Op::Upsert(i, "even"),
                Op::Upsert(i, _) => Op::Upsert(i, "odd"),
                other => other,
            })
            .collect();
        let (mut records, _) = items.records(&ops);
        for i in 0..4 {
            let id = next_log_id;
            next_log_id += 1;
            let v = format!("wave {n}");
            log_lines.push(format!("{id}|{v}"));
            let info = SourceInfo {
                db: "shop".into(),
                position: tarn_cdc::position::Lsn(0x10_0000 + id as u64 * 16).into(),
                tx_id: Some(id),
                commit_time_micros: 1_700_000_000_000_000,
                snapshot: Default::default(),
                transaction: None,
            };
            for m in log
                .encode(Change::Create { after: &row(id, &v) }, &info, 0)
                .unwrap()
            {
                records.push(Record {
                    partition: i,
                    topic: m.topic,
                    key: m.key,
                    value: m.value,
                    headers: m.headers,
                });
            }
        }
        produce(&broker, &records);
    };
    let mut n = 0;
    wave(n);
    let first = worker();
    // Waves keep coming until `done` holds; then the lake must catch up exactly.
    async fn until(
        what: &str,
        mut done: impl FnMut() -> bool,
        mut each: impl FnMut(),
        logs: impl Fn() -> String,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; logs:\n{}",
                logs()
            );
            each();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    until(
        "the first worker to be assigned all four partitions",
        || first.assigned().is_some_and(|p| p.split(',').count() == 8),
        || {},
        || first.log(),
    )
    .await;
    for _ in 0..5 {
        n += 1;
        wave(n);
    }
    let second = worker();
    until(
        "both workers to hold partitions",
        || {
            let (a, b) = (first.assigned(), second.assigned());
            let count = |p: &Option<String>| {
                p.as_deref()
                    .map_or(0, |p| p.split(',').filter(|s| !s.is_empty()).count())
            };
            count(&a) > 0 && count(&b) > 0 && count(&a) + count(&b) == 8
        },
        || {
            n += 1;
            wave(n);
        },
        || format!("first:\n{}\nsecond:\n{}", first.log(), second.log()),
    )
    .await;
    let split = (first.assigned().unwrap(), second.assigned().unwrap());
    for _ in 0..10 {
        n += 1;
        wave(n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first worker dies mid-stream; the second takes over its partitions.
    first.signal("-KILL");
    let (_, first_log) = first.wait();
    for _ in 0..10 {
        n += 1;
        wave(n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(
        "the second worker to hold every partition",
        || second.assigned().is_some_and(|p| p.split(',').count() == 8),
        || {},
        || format!("first:\n{first_log}\nsecond:\n{}", second.log()),
    )
    .await;
    n += 1;
    wave(n);
    let expected_items = items.expected_lines();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got_items = rows_now(&lake, items_sql).await;
        let got_log = rows_now(&lake, log_sql).await;
        assert!(
            got_log.len() <= log_lines.len(),
            "the keyless table has rows twice: {} rows of {}",
            got_log.len(),
            log_lines.len()
        );
        let mut sorted_log = log_lines.clone();
        sorted_log.sort_by_key(|l| {
            let (id, v) = l.split_once('|').unwrap();
            (id.parse::<i64>().unwrap(), v.to_string())
        });
        if got_items == expected_items && got_log == sorted_log {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "items {got_items:?} (expected {expected_items:?}); log has {} of {} rows",
            got_log.len(),
            sorted_log.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.signal("-TERM");
    let (status, second_log) = second.wait();
    assert!(status.success(), "{second_log}");
    eprintln!(
        "{n} waves; split {split:?}; first worker's rebalances: {}, second's: {}, fenced commits: {}",
        first_log.matches("consumer group assigned partitions").count(),
        second_log.matches("consumer group assigned partitions").count(),
        first_log.matches("fenced").count() + second_log.matches("fenced").count(),
    );
    assert!(
        first_log.contains("consumer group revoked partitions"),
        "{first_log}"
    );
}

/// Plain JSON topics (`cdc.kafka.format = "json"`): objects appended as rows over two
/// partitions, columns inferred and growing with a new field, a record that does not fit its
/// column dead-lettered; a restart with more records appends only those. (Configured columns
/// are unit-tested in `tarn_cdc::kafka::plain`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_topics_append_rows_exactly_once() {
    let broker = tokio::task::block_in_place(broker);
    tokio::task::block_in_place(|| {
        broker.create_topic("web.clicks", 2).unwrap();
        broker.create_topic("shop.orders", 1).unwrap();
    });
    let (lake, config) = kafka_lake(&broker.bootstrap(), &["web.clicks", "shop.orders"]).await;
    let mut config = config;
    config.cdc.kafka.format = "json".into();
    let json = |topic: &str, partition: i32, value: &str| Record {
        topic: topic.into(),
        partition,
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
    };
    let mut records: Vec<Record> = (0..10)
        .map(|i| {
            json(
                "web.clicks",
                i % 2,
                &format!(r#"{{"user": {i}, "page": "/p{i}", "meta": {{"a": [1, 2]}}}}"#),
            )
        })
        .collect();
    // An integer column cannot take 2.5: dead-lettered, not committed.
    records.push(json("web.clicks", 0, r#"{"user": 2.5}"#));
    records.push(json("web.clicks", 1, r#"{"user": 11, "ms": 1.25}"#));
    records.push(json(
        "shop.orders",
        0,
        r#"{"id": 1, "amount": "12.50", "at": "2026-12-06T10:00:00Z"}"#,
    ));
    produce(&broker, &records);
    let clicks = "SELECT user, page, meta, ms FROM cdc.kafka_web_clicks ORDER BY user";
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("{i}|/p{i}|{{\"a\":[1,2]}}|NULL"))
        .collect();
    expected.push("11|NULL|NULL|1.25".into());
    let mut handle = spawn(&config).await;
    let status = wait_rows(&handle, &lake, clicks, &expected).await;
    assert_eq!(status.dead_letters, 1, "{status:?}");
    // Every row once, at its own partition and offset.
    let keys = rows_now(
        &lake,
        "SELECT count(*), count(DISTINCT (_kafka_partition, _kafka_offset)), min(_kafka_timestamp) IS NOT NULL FROM cdc.kafka_web_clicks",
    )
    .await;
    assert_eq!(keys, ["11|11|true"]);
    // Inferred types: integers are bigint, other numbers double.
    let types = rows_now(
        &lake,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'kafka_web_clicks' ORDER BY ordinal_position",
    )
    .await;
    assert!(
        types.contains(&"user|Int64".to_string()) && types.contains(&"ms|Float64".to_string()),
        "{types:?}"
    );
    wait_rows(
        &handle,
        &lake,
        "SELECT id, amount, at FROM cdc.kafka_shop_orders",
        // Inferred from a string: text, as written.
        &["1|12.50|2026-12-06T10:00:00Z".to_string()],
    )
    .await;
    handle.stop().await.unwrap();

    // A restart appends only the new records.
    produce(&broker, &[json("web.clicks", 0, r#"{"user": 12}"#)]);
    expected.push("12|NULL|NULL|NULL".into());
    let mut handle = spawn(&config).await;
    wait_rows(&handle, &lake, clicks, &expected).await;
    handle.stop().await.unwrap();
    let count = rows_now(&lake, "SELECT count(*) FROM cdc.kafka_web_clicks").await;
    assert_eq!(count, ["12"]);
}
