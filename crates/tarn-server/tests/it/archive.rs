//! The Kafka raw archive (`cdc.kafka.archive`, `tarn ingest kafka --archive`) against a real
//! Kafka-protocol broker (tansu): records with keys, without keys, tombstones, headers (one
//! with a NULL value) and binary values that are not UTF-8, over two partitions and hours on
//! both sides of a midnight, read back through tarn's SQL, pyiceberg and DuckDB reading the
//! Parquet files directly, and compared field by field with what was produced; a stop, more
//! records and a restart; `tarn ingest kafka --archive` killed by failpoints before and after
//! its commits again and again; a killed flush's files deleted on restart, on a local warehouse
//! and on S3; the errors of an unknown topic, an unreachable broker and a table that is not an
//! archive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};
use tarn_cdc::pipeline::{PipelineHandle, RunOptions, StatusReport};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_test_utils::kafka::Broker;
use tarn_test_utils::run_python;

use crate::{TestLake, init_logs, query};

const WAIT: Duration = Duration::from_secs(60);
/// 2026-12-06T22:30:00Z, in milliseconds.
const EVENING_MS: i64 = 1_796_596_200_000;
const HOUR_MS: i64 = 3_600_000;

/// One record as produced and as the archive must keep it.
#[derive(Debug, Clone)]
struct Produced {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Produced {
    fn new(topic: &str, partition: i32, timestamp_ms: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset: -1,
            timestamp_ms,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    fn key(mut self, key: &[u8]) -> Self {
        self.key = Some(key.to_vec());
        self
    }

    fn value(mut self, value: &[u8]) -> Self {
        self.value = Some(value.to_vec());
        self
    }

    fn header(mut self, key: &str, value: Option<&[u8]>) -> Self {
        self.headers.push((key.into(), value.map(<[u8]>::to_vec)));
        self
    }

    /// The row as the independent readers print it.
    fn reader_row(&self) -> Json {
        let hex = |b: &Option<Vec<u8>>| b.as_deref().map(hex);
        json!([
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms,
            "CreateTime",
            hex(&self.key),
            hex(&self.value),
            self.headers
                .iter()
                .map(|(k, v)| json!([k, hex(v)]))
                .collect::<Vec<_>>(),
        ])
    }

    /// The row as [`ARCHIVE_SQL`] returns it.
    fn sql_row(&self) -> String {
        let hex_or_null = |b: &Option<Vec<u8>>| b.as_deref().map_or("NULL".to_string(), hex);
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| {
                format!(
                    "{{key: {k}, value: {}}}",
                    v.as_deref().map_or("NULL".to_string(), hex)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{}|{}|{}|{}|CreateTime|{}|{}|[{}]",
            self.topic,
            self.partition,
            self.offset,
            self.timestamp_ms,
            hex_or_null(&self.key),
            hex_or_null(&self.value),
            headers
        )
    }

    /// The file (relative to the table's data directory) whose name says it starts at
    /// `start_offset` and holds this record.
    fn file(&self, start_offset: i64) -> String {
        let time = chrono::DateTime::from_timestamp_millis(self.timestamp_ms).unwrap();
        format!(
            "topic={}/date={}/hour={}/part-{}-{start_offset:020}.parquet",
            self.topic,
            time.format("%Y-%m-%d"),
            time.format("%H"),
            self.partition
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every archived field in text: bytes in hex, the timestamp in milliseconds, headers as
/// DataFusion prints a list of structs.
const ARCHIVE_SQL: &str = "SELECT topic, kafka_partition, kafka_offset, \
     CAST(kafka_timestamp AS BIGINT) / 1000, timestamp_type, encode(key, 'hex'), \
     encode(value, 'hex'), headers \
     FROM cdc.kafka_archive ORDER BY topic, kafka_partition, kafka_offset";

/// Produces `records` (in order per partition, idempotent producer) and fills in their
/// offsets.
fn produce(broker: &Broker, records: &mut [Produced]) {
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("allow.auto.create.topics", "false")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let offsets = tokio::task::block_in_place(|| {
        futures::executor::block_on(futures::future::join_all(records.iter().map(|r| {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: value.as_deref(),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic)
                .partition(r.partition)
                .timestamp(r.timestamp_ms)
                .headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            producer.send(record, Duration::from_secs(10))
        })))
    });
    for (r, delivered) in records.iter_mut().zip(offsets) {
        let delivered = delivered.unwrap_or_else(|(e, _)| panic!("cannot produce to {}: {e}", r.topic));
        assert_eq!(delivered.partition, r.partition);
        r.offset = delivered.offset;
    }
}

/// A mix of everything the archive must keep unchanged, over `topic`'s two partitions and
/// `other`'s one, across 22:00, 23:00 (2026-12-06) and 00:00 (2026-12-07) UTC; `n` records
/// from `first` on (the numbers vary keys, values and timestamps).
fn mixed_records(topic: &str, other: &str, first: usize, n: usize) -> Vec<Produced> {
    (first..first + n)
        .map(|i| {
            let timestamp = EVENING_MS + (i as i64 % 3) * HOUR_MS + i as i64;
            let r = Produced::new(topic, (i % 2) as i32, timestamp);
            match i % 6 {
                // A key and a text value.
                0 => r
                    .key(format!("k{i}").as_bytes())
                    .value(format!("{{\"n\":{i}}}").as_bytes()),
                // A tombstone.
                1 => r.key(format!("k{}", i - 1).as_bytes()),
                // Binary, not UTF-8, with NUL bytes; headers, one with a NULL value.
                2 => r
                    .key(&[0xff, 0x00, i as u8])
                    .value(&[0xc3, 0x28, 0x00, 0xfe, i as u8])
                    .header("trace", Some(&[0x80, 0x81]))
                    .header("empty", Some(b""))
                    .header("none", None),
                // No key; a value.
                3 => r.value(format!("keyless {i}").as_bytes()),
                // Neither key nor value.
                4 => r,
                // Another topic, repeated header keys, an empty value.
                _ => Produced::new(other, 0, timestamp)
                    .key(b"")
                    .value(b"")
                    .header("h", Some(b"1"))
                    .header("h", Some(b"2")),
            }
        })
        .collect()
}

/// A lake whose Kafka pipeline archives `topics` from `broker_address`.
async fn archive_lake(broker_address: &str, topics: &[&str]) -> TestLake {
    archive_lake_on(broker_address, topics, &[]).await
}

/// [`archive_lake`] with `storage` settings (`storage.*` keys) besides.
async fn archive_lake_on(broker_address: &str, topics: &[&str], storage: &[(&str, &str)]) -> TestLake {
    init_logs();
    let topics = serde_json::to_string(topics).unwrap();
    let mut settings = storage.to_vec();
    settings.extend([
        ("cdc.source_kind", "kafka"),
        ("cdc.kafka.archive", "true"),
        ("cdc.kafka.topics", &topics),
        ("cdc.kafka.group", "tarn_archive_it"),
        ("cdc.pipeline", "archive_it"),
        ("cdc.flush.interval", "100ms"),
        ("cdc.kafka.brokers", broker_address),
        ("cdc.kafka.session_timeout", "6s"),
        ("maintenance.auto", "false"),
    ]);
    TestLake::with(&settings).await
}

async fn spawn(config: &Config) -> PipelineHandle {
    let lake = Lake::open(config).await.unwrap();
    PipelineHandle::spawn(config, lake, RunOptions::default())
}

fn broker() -> Broker {
    tokio::task::block_in_place(Broker::start).expect("a tansu broker (bash scripts/setup.sh installs it)")
}

/// Waits until the archive has committed `expected` records (counted by the status).
async fn wait_archived(handle: &PipelineHandle, expected: u64) -> StatusReport {
    handle
        .wait_until(&format!("{expected} records archived"), WAIT, |r| {
            r.tables.first().is_some_and(|t| t.changes == expected) && r.pending_events == 0
        })
        .await
        .unwrap()
}

/// What the independent readers see of `cdc.kafka_archive`.
fn independent(lake: &TestLake) -> Json {
    let uri = format!("sqlite:///{}", lake.path().join("catalog.db").display());
    let out = tokio::task::block_in_place(|| {
        run_python(
            "kafka_archive.py",
            &[
                "--uri",
                &uri,
                "--warehouse",
                &lake.config.warehouse_url(),
                "--name",
                &lake.config.catalog.name,
                "--table",
                "cdc.kafka_archive",
            ],
        )
    })
    .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

/// Checks the archive against `produced` through tarn's SQL; returns `produced` in the order
/// of the archive's rows.
async fn check_sql(lake: &TestLake, produced: &[Produced]) -> Vec<Produced> {
    let mut produced = produced.to_vec();
    produced.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    let sql = lake.query(ARCHIVE_SQL).await;
    let expected_sql: Vec<String> = produced.iter().map(Produced::sql_row).collect();
    assert_eq!(sql, expected_sql, "tarn's SQL");
    produced
}

/// Checks the archive against `produced` in every reader: tarn's SQL, pyiceberg and DuckDB
/// on the files; every record once; every file registered once, named by its records'
/// topic, partition, hour and first offset, and no other file on disk.
async fn check_archive(lake: &TestLake, produced: &[Produced]) {
    let produced = check_sql(lake, produced).await;

    let read = independent(lake);
    let expected_rows: Vec<Json> = produced.iter().map(Produced::reader_row).collect();
    assert_eq!(read["pyiceberg"].as_array().unwrap(), &expected_rows, "pyiceberg");
    let duckdb = read["duckdb"].as_array().unwrap();
    assert_eq!(
        duckdb.len(),
        produced.len(),
        "DuckDB reads every file on disk: {duckdb:?}"
    );
    // Each file starts at its first record's offset.
    let mut starts: BTreeMap<String, i64> = BTreeMap::new();
    for (row, p) in duckdb.iter().zip(&produced) {
        let row = row.as_array().unwrap();
        assert_eq!(&Json::Array(row[..8].to_vec()), &p.reader_row(), "DuckDB");
        let file = row[8].as_str().unwrap().to_string();
        let start = *starts.entry(file.clone()).or_insert(p.offset);
        assert_eq!(file, p.file(start), "the file of {p:?}");
    }
    let registered: Vec<&str> = read["registered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let on_disk: Vec<&str> = read["on_disk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let files: Vec<&str> = starts.keys().map(String::as_str).collect();
    assert_eq!(registered, files, "registered files");
    assert_eq!(on_disk, files, "files on disk");
}

/// Records with and without keys and values, tombstones, headers and non-UTF-8 bytes over two
/// partitions and three hours: every reader gets them back unchanged, each record once, the
/// files under `topic=/date=/hour=`; the offsets are in the table's snapshot summary; a stop,
/// more records, and a restart archive exactly the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_are_archived_unchanged_and_a_restart_archives_only_new_ones() {
    let broker = broker();
    tokio::task::block_in_place(|| {
        broker.create_topic("raw.events", 2).unwrap();
        broker.create_topic("raw.other", 1).unwrap();
    });
    let mut produced = mixed_records("raw.events", "raw.other", 0, 60);
    produce(&broker, &mut produced);
    let lake = archive_lake(&broker.bootstrap(), &["raw.events", "^raw\\.oth.*"]).await;
    let started = Instant::now();
    let mut handle = spawn(&lake.config).await;
    let report = wait_archived(&handle, produced.len() as u64).await;
    // The records' timestamps are hours from now, so the lag clamps at zero; it is reported.
    assert!(report.lag_seconds.is_some(), "{report:?}");
    eprintln!(
        "archived {} records in {:.2}s",
        produced.len(),
        started.elapsed().as_secs_f64()
    );
    // The acknowledged offsets are the next offset of every partition.
    let next = |records: &[Produced], topic: &str, partition: i32| {
        records
            .iter()
            .filter(|r| r.topic == topic && r.partition == partition)
            .map(|r| r.offset + 1)
            .max()
            .unwrap()
    };
    let offsets = |records: &[Produced]| {
        format!(
            "raw.events:0={},raw.events:1={},raw.other:0={}",
            next(records, "raw.events", 0),
            next(records, "raw.events", 1),
            next(records, "raw.other", 0)
        )
    };
    assert_eq!(
        tarn_cdc::position::text_or_dash(report.acknowledged.as_ref()),
        offsets(&produced)
    );
    handle.stop().await.unwrap();
    check_archive(&lake, &produced).await;
    // The query of docs/kafka-archive.md: a topic and a time range.
    let early = lake
        .query(
            "SELECT kafka_partition, kafka_offset, encode(key, 'hex'), CAST(value AS VARCHAR) \
             FROM cdc.kafka_archive \
             WHERE topic = 'raw.events' AND kafka_timestamp < TIMESTAMP '2026-12-06T23:00:00Z' \
             ORDER BY kafka_partition, kafka_offset",
        )
        .await;
    let mut expected_early: Vec<&Produced> = produced
        .iter()
        .filter(|r| r.topic == "raw.events" && r.timestamp_ms < EVENING_MS + HOUR_MS / 2)
        .collect();
    expected_early.sort_by_key(|r| (r.partition, r.offset));
    let text = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map_or("NULL".into(), |b| String::from_utf8(b.to_vec()).unwrap())
    };
    let expected_early: Vec<String> = expected_early
        .iter()
        .map(|r| {
            let key = r.key.as_deref().map_or("NULL".into(), hex);
            format!("{}|{}|{key}|{}", r.partition, r.offset, text(&r.value))
        })
        .collect();
    assert!(!expected_early.is_empty());
    assert_eq!(early, expected_early);
    // The table holds the offsets in its snapshot summary, under the CDC sink's key.
    let ident = tarn_lake::parse_table_name("cdc.kafka_archive").unwrap();
    let table = lake.session.lake().load_table(&ident).await.unwrap();
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["tarn.cdc.kafka-offsets"], offsets(&produced));
    assert_eq!(
        tarn_cdc::sink::table_position(&table, "archive_it")
            .0
            .map(|p| p.to_string()),
        Some(offsets(&produced))
    );

    // A backlog while it is stopped; a restart archives exactly the new records.
    let mut more = mixed_records("raw.events", "raw.other", 60, 20_000);
    produce(&broker, &mut more);
    let snapshots = "SELECT count(*) FROM cdc.\"kafka_archive$snapshots\"";
    let before = lake.query(snapshots).await;
    let started = Instant::now();
    let mut handle = spawn(&lake.config).await;
    wait_archived(&handle, more.len() as u64).await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "archived a backlog of {} records in {secs:.2}s: {:.0} records/s",
        more.len(),
        more.len() as f64 / secs
    );
    handle.stop().await.unwrap();
    produced.extend(more);
    check_archive(&lake, &produced).await;
    // Compaction leaves the archive's files alone (they would lose their names), however
    // small and many they are.
    let compacted = lake
        .session
        .lake()
        .compact(
            &ident,
            &tarn_lake::CompactOptions {
                min_input_files: 2,
                ..tarn_lake::CompactOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(compacted.snapshot_id, None);
    check_archive(&lake, &produced).await;
    assert_ne!(lake.query(snapshots).await, before);
}

/// `tarn ingest kafka --archive` (pipeline `crash_archive`, group `tarn_archive_crash`) on
/// `lake` with `storage` settings, archiving `topics` from `broker` with
/// `TARN_FAILPOINTS=failpoints`.
fn ingest_archive(
    lake: &TestLake,
    storage: &[(&str, &str)],
    broker: &Broker,
    topics: &[&str],
    failpoints: &str,
) -> std::process::Child {
    let mut command = std::process::Command::new(crate::tarn_bin());
    for (key, value) in storage {
        command.args(["--set", &format!("{key}={value}")]);
    }
    command
        .args(["--data-dir", &lake.path().display().to_string()])
        .args([
            "--set",
            "cdc.flush.interval=50ms",
            "--set",
            "cdc.pipeline=crash_archive",
        ])
        .args(["--set", "maintenance.auto=false"])
        .args(["ingest", "kafka", "--archive", "--brokers", &broker.bootstrap()])
        .args(["--group", "tarn_archive_crash"]);
    for topic in topics {
        command.args(["--topic", topic]);
    }
    command
        .env("TARN_FAILPOINTS", failpoints)
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs [`ingest_archive`] until the archive holds `records` rows, then stops it with SIGTERM
/// and checks that it exited cleanly.
async fn archive_until(
    lake: &TestLake,
    storage: &[(&str, &str)],
    broker: &Broker,
    topics: &[&str],
    records: usize,
) {
    let child = ingest_archive(lake, storage, broker, topics, "");
    let deadline = Instant::now() + WAIT;
    loop {
        let (all, distinct) = archive_counts(lake).await;
        assert_eq!(all, distinct, "a record is archived twice");
        if all == records {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {all} of {records} records");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(" record(s) archived; acknowledged up to "),
        "{stderr}"
    );
}

/// The Parquet files under the archive table's location that its metadata does not reach, as
/// tarn's orphan-file removal lists them (a dry run, whatever their age).
async fn unregistered_files(lake: &TestLake) -> Vec<String> {
    let ident = tarn_lake::parse_table_name("cdc.kafka_archive").unwrap();
    let options = tarn_lake::OrphanOptions {
        older_than: chrono::Utc::now() + chrono::Duration::minutes(1),
        dry_run: true,
        progress: None,
    };
    let outcome = lake
        .session
        .lake()
        .remove_orphan_files(&ident, &options)
        .await
        .unwrap();
    outcome
        .orphans
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .collect()
}

/// A flush killed after writing its files and before committing them leaves files no table
/// holds; a restart deletes them even when it no longer archives their topic (so no replay
/// would write over them), and archiving the topic again later gets every record once. On
/// the lake `storage` describes; returns the lake and what was produced.
async fn killed_flush_files_are_deleted(storage: &[(&str, &str)]) -> (TestLake, Vec<Produced>) {
    let broker = broker();
    tokio::task::block_in_place(|| {
        broker.create_topic("drop.gone", 2).unwrap();
        broker.create_topic("drop.kept", 1).unwrap();
    });
    let mut produced = mixed_records("drop.gone", "drop.kept", 0, 60);
    produce(&broker, &mut produced);
    let lake = archive_lake_on(&broker.bootstrap(), &["unused"], storage).await;
    let both = ["drop.gone", "drop.kept"];
    // The killed run archives `drop.gone` alone, so whatever its first flush holds when it is
    // killed is that topic's (with both topics the first flush may hold `drop.kept` only).
    let child = ingest_archive(
        &lake,
        storage,
        &broker,
        &["drop.gone"],
        "kafka.archive.before_commit=abort",
    );
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("failpoint kafka.archive.before_commit: aborting"),
        "{stderr}"
    );
    let left = unregistered_files(&lake).await;
    assert!(
        left.iter().any(|f| f.contains("/data/topic=drop.gone/")),
        "the killed flush wrote files and registered none: {left:?}"
    );

    let kept = produced.iter().filter(|r| r.topic == "drop.kept").count();
    archive_until(&lake, storage, &broker, &["drop.kept"], kept).await;
    assert_eq!(unregistered_files(&lake).await, Vec::<String>::new());

    archive_until(&lake, storage, &broker, &both, produced.len()).await;
    assert_eq!(unregistered_files(&lake).await, Vec::<String>::new());
    check_sql(&lake, &produced).await;
    (lake, produced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_a_killed_flush_are_deleted_even_when_their_topic_is_dropped() {
    let (lake, produced) = killed_flush_files_are_deleted(&[]).await;
    check_archive(&lake, &produced).await;
}

/// The same on S3 (a moto server): the pending list, the files and their deletion go through
/// the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_a_killed_flush_are_deleted_on_s3_too() {
    let s3 = tokio::task::block_in_place(|| tarn_test_utils::S3Server::start("lake")).unwrap();
    let endpoint = s3.endpoint();
    let (lake, _) = killed_flush_files_are_deleted(&[
        ("storage.warehouse", "s3://lake/warehouse"),
        ("storage.s3.endpoint", &endpoint),
        ("storage.s3.region", "us-east-1"),
        ("storage.s3.access_key_id", "test"),
        ("storage.s3.secret_access_key", "test"),
        ("storage.s3.path_style", "true"),
        ("storage.s3.allow_http", "true"),
    ])
    .await;
    let ident = tarn_lake::parse_table_name("cdc.kafka_archive").unwrap();
    let table = lake.session.lake().load_table(&ident).await.unwrap();
    assert!(
        table.metadata().location().starts_with("s3://lake/warehouse/"),
        "{}",
        table.metadata().location()
    );
}

/// `tarn ingest kafka --archive` killed by failpoints before its commits (files written, not
/// registered) and after them (registered, group not told), again and again while records
/// arrive: the archive ends with every record once, every file registered once, and no file
/// on disk that the table does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_and_after_its_commits_the_archive_ends_exactly_once() {
    const FAILPOINTS: [(&str, f64); 2] = [
        ("kafka.archive.before_commit", 0.5),
        ("kafka.archive.after_commit", 0.5),
    ];
    let broker = broker();
    tokio::task::block_in_place(|| {
        broker.create_topic("crash.events", 2).unwrap();
        broker.create_topic("crash.other", 1).unwrap();
    });
    let lake = archive_lake(&broker.bootstrap(), &["unused"]).await;
    let failpoints = FAILPOINTS
        .iter()
        .map(|(name, p)| format!("{name}=abort({p})"))
        .collect::<Vec<_>>()
        .join(",");
    let ingest =
        |failpoints: &str| ingest_archive(&lake, &[], &broker, &["crash.events", "crash.other"], failpoints);
    let mut produced: Vec<Produced> = Vec::new();
    let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kills = 0;
    for wave in 0..12 {
        let mut records = mixed_records("crash.events", "crash.other", wave * 40, 40);
        produce(&broker, &mut records);
        produced.extend(records);
        // Runs with failpoints until one gets the archive there (or a few tries).
        for _attempt in 0..6 {
            let mut child = ingest(&failpoints);
            let deadline = Instant::now() + WAIT;
            let reached = loop {
                let (all, distinct) = archive_counts(&lake).await;
                assert_eq!(all, distinct, "wave {wave}: a record is archived twice");
                if all == produced.len() {
                    break true;
                }
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                assert!(Instant::now() < deadline, "wave {wave}: stuck at {all} records");
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
                // A run that finds the archive there is stopped at once, maybe before it
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
    // A last run without failpoints catches up.
    archive_until(
        &lake,
        &[],
        &broker,
        &["crash.events", "crash.other"],
        produced.len(),
    )
    .await;
    eprintln!("killed {kills} times: {fired:?}");
    check_archive(&lake, &produced).await;
    for (name, _) in FAILPOINTS {
        assert!(
            fired.get(name).copied().unwrap_or(0) > 0,
            "{name} never fired: {fired:?}"
        );
    }
    assert!(kills >= 6, "only {kills} kills: {fired:?}");
}

/// How many rows the archive has, and how many distinct topic-partition-offsets (0 before
/// the table exists); a query that takes more than 20 s fails the test.
async fn archive_counts(lake: &TestLake) -> (usize, usize) {
    let sql = "SELECT count(*), count(DISTINCT topic || ':' || kafka_partition || ':' || kafka_offset) \
               FROM cdc.kafka_archive";
    tokio::time::timeout(Duration::from_secs(20), query(&lake.session, sql))
        .await
        .expect("a count within 20 s")
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .map_or((0, 0), |row| {
            let (all, distinct) = row.split_once('|').unwrap();
            (all.parse().unwrap(), distinct.parse().unwrap())
        })
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

/// An unknown topic stops the archive naming it (and is not created); a table that is not an
/// archive is refused by name; an unreachable broker is named and retried; `--help` shows the
/// flag; the CLI names an unknown topic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_foreign_tables_and_unreachable_brokers_are_named() {
    let (ok, help, _) = crate::tarn(std::path::Path::new("."), &["ingest", "kafka", "--help"]);
    assert!(
        ok && help.contains("--archive")
            && help.contains("--archive-table")
            && help.contains("topic=<topic>"),
        "{help}"
    );

    let broker = broker();
    let lake = archive_lake(&broker.bootstrap(), &["no.such.topic"]).await;
    let error = failure(&lake.config, "failed").await;
    assert!(
        error.contains("Kafka topic \"no.such.topic\" does not exist") && error.contains(&broker.bootstrap()),
        "{error}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| broker.partitions("no.such.topic")).unwrap(),
        None
    );
    let (ok, _, stderr) = crate::tarn(
        lake.path(),
        &[
            "ingest",
            "kafka",
            "--archive",
            "--brokers",
            &broker.bootstrap(),
            "--topic",
            "no.such.topic",
        ],
    );
    assert!(
        !ok && stderr.contains("Kafka topic \"no.such.topic\" does not exist"),
        "{stderr}"
    );

    tokio::task::block_in_place(|| broker.create_topic("raw.plain", 1).unwrap());
    lake.exec("CREATE SCHEMA cdc; CREATE TABLE cdc.plain (id bigint)")
        .await;
    let mut config = lake.config.clone();
    config.cdc.kafka.topics = vec!["raw.plain".into()];
    config.cdc.kafka.archive_table = "plain".into();
    let error = failure(&config, "failed").await;
    assert!(
        error.contains("table cdc.plain exists but is not a Kafka archive"),
        "{error}"
    );

    let address = format!("127.0.0.1:{}", tarn_test_utils::free_port());
    let lake = archive_lake(&address, &["raw.plain"]).await;
    let error = failure(&lake.config, "retrying").await;
    assert!(
        error.contains(&format!("cannot reach the Kafka brokers {address}")),
        "{error}"
    );
}
