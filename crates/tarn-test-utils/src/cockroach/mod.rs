//! A stand-in for a CockroachDB cluster, for tests: CockroachDB cannot run on the machines
//! tarn is tested on, so [`StandInCluster`] plays every part of one that tarn's CockroachDB
//! source touches, in front of a real PostgreSQL database, from CockroachDB's documentation and
//! source (the research notes cite each behaviour; the code cites them again where it
//! implements them).
//!
//! # What it models
//!
//! - **A pgwire endpoint** ([`StandInCluster::url`]) whose catalog answers the way the chosen
//!   [`CockroachVersion`] answers ([`catalog`]): `pg_class` (`relispartition` NULL,
//!   `relreplident` NULL on v23.1 and `'d'`/`'n'` from v23.2, virtual tables of
//!   `crdb_internal` / `pg_extension` with relkind `'r'`), `pg_namespace` (no `pg_toast` /
//!   `pg_temp`), `pg_attribute` (hidden `rowid`; dropped columns as gaps before v23.2 and as
//!   `attisdropped` placeholders from v23.2; CockroachDB's `atttypmod` rules; `attgenerated =
//!   'v'` for virtual columns), `pg_index` (`indisreplident` false), `pg_type` (the version's
//!   built-in types, no domains, `typbasetype` 0, `typtypmod` -1), `pg_range` (empty),
//!   `pg_enum`, `pg_constraint`, `information_schema.columns` / `table_constraints` /
//!   `key_column_usage`, `version()`, `current_setting('server_version')` = `13.0.0`,
//!   `cluster_logical_timestamp()`. Anything else of `pg_catalog` / `information_schema` is
//!   refused with an error naming it ([`rewrite`]).
//! - **Tables as CockroachDB has them**: a table without a primary key gets the hidden
//!   `rowid INT8 NOT NULL DEFAULT unique_rowid() PRIMARY KEY` as soon as it is created (an
//!   event trigger in the backing database), and is in `pg_attribute`, `pg_index`,
//!   `key_column_usage`, the key array and `after` (research §8). Hash-sharded primary keys:
//!   [`StandInCluster::register_virtual_column`] marks a STORED generated column as the
//!   virtual shard column (`attgenerated = 'v'`, in the key array, not in `after`).
//! - **Changefeeds** ([`statements`], [`options`], [`execute`], [`jobs`]): `CREATE CHANGEFEED`
//!   (sinkless or `INTO` a `webhook-https://` URI or an `external://` connection),
//!   `EXPERIMENTAL CHANGEFEED FOR`, `CREATE EXTERNAL CONNECTION`, `SET CLUSTER SETTING`,
//!   `CANCEL JOB`, `SHOW CHANGEFEED JOB(S)`, `SHOW JOBS` (also inside `[…]`), with options
//!   validated in CockroachDB's order and words, per version.
//! - **Changes from real writes with MVCC history** ([`history`]): triggers capture every
//!   committed row change; each transaction gets an HLC timestamp from the stand-in's clock
//!   ([`clock`]); history is kept until the modelled GC TTL; scans at a past cursor are
//!   reconstructed; resolved timestamps are a frontier no later change can precede.
//! - **Messages exactly as CockroachDB's JSON encoder writes them** ([`encode`]).
//! - **Delivery**: sinkless rows on the connection (`table`, `key`, `value`); webhook POSTs
//!   over HTTPS verified against `ca_cert`, batched and retried as CockroachDB's webhook sink
//!   does ([`webhook`]).
//!
//! # What it does not model
//!
//! OIDs are PostgreSQL's (CockroachDB's are descriptor ids); `SELECT *` shows `rowid` (it is
//! NOT VISIBLE in CockroachDB); SQL outside the catalog is PostgreSQL's; transactions are
//! PostgreSQL's (no serializable retries); privileges other than SELECT for core
//! changefeeds (checked against the backing database's grants) and "admins may use any
//! sink" (every user holds CHANGEFEED and USAGE on every external connection); column
//! families; TRUNCATE of captured tables (refused) and DROP of watched ones (the feed just
//! goes quiet); Kafka / cloud-storage / Pub/Sub sinks, formats other than JSON, envelopes
//! other than `wrapped`, `end_time`, `ALTER CHANGEFEED`, `PAUSE` / `RESUME JOB`; job
//! retention; the NOTICEs v25.1+ prints for `resolved` below `min_checkpoint_frequency`;
//! changes made before the stand-in started have no history (its start is the first GC
//! threshold); a `cluster_logical_timestamp()` inside a transaction is a clock reading at the
//! statement, not the transaction's commit timestamp.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use tarn_test_utils::cockroach::{CockroachVersion, StandInCluster, StandInOptions};
//! let pg = tarn_test_utils::start_postgres()?;
//! pg.psql("postgres", "CREATE DATABASE app")?;
//! pg.psql("app", "CREATE TABLE dogs (id bigint PRIMARY KEY, name text)")?;
//! let crdb = StandInCluster::start(
//!     pg.port(),
//!     "app",
//!     StandInOptions {
//!         version: CockroachVersion::V23_2,
//!         rangefeed_enabled: true,
//!         ..Default::default()
//!     },
//! )
//! .await?;
//! // Point the CockroachDB source at `crdb.url("postgres")`; write to `pg.url("app")`.
//! let statement = crdb
//!     .wait_statement("CREATE CHANGEFEED", std::time::Duration::from_secs(60))
//!     .await?;
//! # let _ = statement;
//! # Ok(())
//! # }
//! ```

mod catalog;
mod clock;
mod encode;
mod execute;
mod history;
mod jobs;
mod json;
mod lexer;
mod options;
mod proxy;
mod rewrite;
mod statements;
mod version;
mod webhook;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpListener;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub use clock::Hlc;
pub use jobs::{JobInfo, ResolvedEmitted};
pub use version::CockroachVersion;

/// How the stand-in plays its cluster.
#[derive(Debug, Clone)]
pub struct StandInOptions {
    /// The CockroachDB version played.
    pub version: CockroachVersion,
    /// How far resolved timestamps trail the clock: the initial
    /// `kv.closed_timestamp.target_duration` (which `SET CLUSTER SETTING` changes). Default 0
    /// for tests; CockroachDB's default is 3 s, and resolved timestamps reach a changefeed
    /// typically 3–7 s behind real time (research follow-up A).
    pub closed_timestamp_lag: Duration,
    /// How long history is kept (`gc.ttlseconds`, 4 h by default since v23.1).
    pub gc_ttl: Duration,
    /// Inject duplicates and reorder messages across keys within each resolved window, as
    /// CockroachDB's at-least-once delivery may. Messages are then held until the window's
    /// checkpoint (`min_checkpoint_frequency`).
    pub duplicates: bool,
    /// Seed of the duplicate injection.
    pub seed: u64,
    /// How often the capture log is drained.
    pub poll_interval: Duration,
    /// Users treated as admins (never refused by
    /// `changefeed.permissions.require_external_connection_sink.enabled`).
    pub admin_users: Vec<String>,
    /// The initial `kv.rangefeed.enabled` (false on a self-hosted cluster, as CockroachDB
    /// ships it; changefeeds error until it is on).
    pub rangefeed_enabled: bool,
    /// How long a webhook job waits before restarting its flow after a retryable error.
    pub job_retry_backoff: Duration,
    /// The PostgreSQL user the stand-in itself connects as (a superuser: it installs an event
    /// trigger).
    pub pg_user: String,
}

impl Default for StandInOptions {
    fn default() -> Self {
        Self {
            version: CockroachVersion::default(),
            closed_timestamp_lag: Duration::ZERO,
            gc_ttl: Duration::from_secs(4 * 3600),
            duplicates: false,
            seed: 1,
            poll_interval: Duration::from_millis(25),
            admin_users: vec!["root".to_string()],
            rangefeed_enabled: false,
            job_retry_backoff: Duration::from_secs(1),
            pg_user: "postgres".to_string(),
        }
    }
}

/// What the proxy and the jobs share.
pub(crate) struct Inner {
    options: StandInOptions,
    pg_port: u16,
    database: String,
    clock: Arc<clock::Clock>,
    capture: Arc<history::Capture>,
    control: Arc<Client>,
    pg_relations: HashSet<String>,
    settings: Mutex<BTreeMap<String, String>>,
    external: Mutex<BTreeMap<String, String>>,
    /// `GRANT USAGE ON EXTERNAL CONNECTION`: (connection, user).
    external_usage: Mutex<std::collections::BTreeSet<(String, String)>>,
    jobs: Mutex<BTreeMap<i64, Arc<jobs::Job>>>,
    statements: Mutex<Vec<String>>,
    resolved_log: Arc<Mutex<Vec<ResolvedEmitted>>>,
    sinkless: Mutex<HashMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    /// `kv.closed_timestamp.target_duration`, nanoseconds.
    lag: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl Inner {
    fn record(&self, statement: &str) {
        self.statements.lock().unwrap().push(statement.trim().to_string());
    }

    fn flow_cx(&self) -> jobs::FlowCx {
        jobs::FlowCx {
            capture: self.capture.clone(),
            lag: self.lag.clone(),
            duplicates: self.options.duplicates,
            seed: self.options.seed,
            resolved_log: self.resolved_log.clone(),
        }
    }
}

/// A CockroachDB cluster played in front of a PostgreSQL database; see the module doc.
/// Stopped when dropped (its tasks end; the backing database keeps the stand-in's schemas).
pub struct StandInCluster {
    inner: Arc<Inner>,
    port: u16,
}

async fn connect(pg_port: u16, database: &str, user: &str) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg_port)
        .user(user)
        .dbname(database)
        .options("-c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex -c DateStyle=ISO,MDY");
    let (client, conn) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL on 127.0.0.1:{pg_port}/{database}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl StandInCluster {
    /// Installs the emulation into `database` of the PostgreSQL on 127.0.0.1:`pg_port` (the
    /// test harness's, with `wal_level=logical`) and starts serving on a free loopback port.
    pub async fn start(pg_port: u16, database: &str, options: StandInOptions) -> Result<Self> {
        let control = connect(pg_port, database, &options.pg_user).await?;
        control
            .batch_execute(&catalog::install_sql())
            .await
            .context("installing the CockroachDB stand-in's catalog")?;
        let pg_relations: HashSet<String> = control
            .query(
                "SELECT relname::text FROM pg_catalog.pg_class \
                 WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind IN ('r', 'v', 'm', 'p', 'f')",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let poller = connect(pg_port, database, &options.pg_user).await?;
        let clock = Arc::new(clock::Clock::new());
        let capture = Arc::new(history::Capture::new(clock.clone(), poller, options.gc_ttl));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            settings: Mutex::new(execute::default_settings(&options)),
            lag: Arc::new(AtomicU64::new(options.closed_timestamp_lag.as_nanos() as u64)),
            options,
            pg_port,
            database: database.to_string(),
            clock,
            capture,
            control: Arc::new(control),
            pg_relations,
            external: Mutex::new(BTreeMap::new()),
            external_usage: Mutex::new(std::collections::BTreeSet::new()),
            jobs: Mutex::new(BTreeMap::new()),
            statements: Mutex::new(Vec::new()),
            resolved_log: Arc::new(Mutex::new(Vec::new())),
            sinkless: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn({
            let inner = inner.clone();
            async move {
                let interval = inner.options.poll_interval;
                loop {
                    tokio::select! {
                        () = inner.shutdown.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                    if let Err(e) = inner.capture.poll().await {
                        eprintln!("CockroachDB stand-in: draining the capture log failed: {e:#}");
                    }
                }
            }
        });
        tokio::spawn({
            let inner = inner.clone();
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = inner.shutdown.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    if let Ok((socket, _)) = accepted {
                        tokio::spawn(proxy::connection(inner.clone(), socket));
                    }
                }
            }
        });
        Ok(Self { inner, port })
    }

    /// The loopback port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The version played.
    pub fn version(&self) -> CockroachVersion {
        self.inner.options.version
    }

    /// A `postgres://` URL for `user` to the stand-in's database (`sslmode=disable`). The
    /// user must exist in the backing PostgreSQL.
    pub fn url(&self, user: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{}?sslmode=disable",
            self.port, self.inner.database
        )
    }

    /// Every query received (simple queries and Parse messages), as sent.
    pub fn statements(&self) -> Vec<String> {
        self.inner.statements.lock().unwrap().clone()
    }

    /// The latest statement starting with `prefix`, waiting up to `timeout` for one.
    pub async fn wait_statement(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .statements()
                .into_iter()
                .rev()
                .find(|s| s.starts_with(prefix))
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("no statement starting with {prefix:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The webhook changefeed jobs created, oldest first.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.inner
            .jobs
            .lock()
            .unwrap()
            .values()
            .map(|j| j.info.lock().unwrap().clone())
            .collect()
    }

    /// Waits up to `timeout` for a job satisfying `check`; returns it.
    pub async fn wait_job(&self, timeout: Duration, check: impl Fn(&JobInfo) -> bool) -> Result<JobInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(j) = self.jobs().into_iter().rev().find(|j| check(j)) {
                return Ok(j);
            }
            if Instant::now() >= deadline {
                bail!("no such job within {timeout:?}: {:?}", self.jobs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// External connections (`CREATE EXTERNAL CONNECTION`), name → URI.
    pub fn external_connections(&self) -> BTreeMap<String, String> {
        self.inner.external.lock().unwrap().clone()
    }

    /// Cluster settings now.
    pub fn cluster_settings(&self) -> BTreeMap<String, String> {
        self.inner.settings.lock().unwrap().clone()
    }

    /// Sets a cluster setting as `SET CLUSTER SETTING` would.
    pub fn set_cluster_setting(&self, name: &str, value: &str) -> Result<()> {
        execute::set_setting(&self.inner, name, Some(value.to_string()))
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// Gives tables without a primary key their `rowid` and (re)installs the capture triggers.
    /// DDL in the backing database does this by itself (an event trigger); call it after DDL
    /// made while the event trigger was disabled, or to be explicit.
    pub async fn capture_tables(&self) -> Result<()> {
        self.inner.control.batch_execute(catalog::CAPTURE_ALL).await?;
        Ok(())
    }

    /// Declares `column` of `table` (`schema.table` or `table` in `public`) a virtual computed
    /// column as CockroachDB's hash-shard columns are (`hidden`: also NOT VISIBLE). Back it by
    /// a STORED generated column in PostgreSQL.
    pub async fn register_virtual_column(&self, table: &str, column: &str, hidden: bool) -> Result<()> {
        let oid = self.table_oid(table).await?;
        let c = &self.inner.control;
        c.execute(
            "INSERT INTO crdb_standin.columns VALUES ($1, $2, 'virtual') ON CONFLICT DO NOTHING",
            &[&oid, &column],
        )
        .await?;
        if hidden {
            c.execute(
                "INSERT INTO crdb_standin.columns VALUES ($1, $2, 'hidden') ON CONFLICT DO NOTHING",
                &[&oid, &column],
            )
            .await?;
        }
        c.execute("UPDATE crdb_standin.meta SET ddl_gen = ddl_gen + 1", &[])
            .await?;
        Ok(())
    }

    async fn table_oid(&self, table: &str) -> Result<u32> {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        history::resolve_table(&self.inner.control, schema, name)
            .await?
            .with_context(|| format!("no table {table}"))
    }

    /// `schema_change_policy = 'backfill'`: after DDL that adds a column, re-emits every row of
    /// `table` (with the new column) at a new timestamp to the changefeeds watching it, as
    /// CockroachDB does once the column backfill is done. Returns that timestamp.
    pub async fn backfill(&self, table: &str) -> Result<Hlc> {
        let oid = self.table_oid(table).await?;
        self.inner.capture.backfill(oid).await
    }

    /// As a failing node would: drops the connection of every sinkless changefeed, and fails
    /// every running webhook job with `error` (status `failed`).
    pub fn fail_feeds(&self, error: &str) {
        for kill in self.inner.sinkless.lock().unwrap().values() {
            kill.cancel();
        }
        for job in self.inner.jobs.lock().unwrap().values() {
            *job.fail.lock().unwrap() = Some(error.to_string());
            job.poke.notify_one();
        }
    }

    /// A retryable error in every running webhook job: its flow restarts from the job's
    /// high-water mark (sending again what came after it).
    pub fn restart_jobs(&self, error: &str) {
        for job in self.inner.jobs.lock().unwrap().values() {
            *job.restart.lock().unwrap() = Some(error.to_string());
            job.poke.notify_one();
        }
    }

    /// Every resolved message emitted: which feed, what, when.
    pub fn resolved_emitted(&self) -> Vec<ResolvedEmitted> {
        self.inner.resolved_log.lock().unwrap().clone()
    }

    /// A reading of the stand-in's clock.
    pub fn clock_now(&self) -> Hlc {
        self.inner.clock.now()
    }

    /// Drains the capture log, then reads the clock: a timestamp after every change
    /// committed before the call (as `cluster_logical_timestamp()` answers).
    pub async fn sync_now(&self) -> Result<Hlc> {
        self.inner.capture.sync_now().await
    }

    /// The GC threshold: cursors at or before it are refused.
    pub fn gc_threshold(&self) -> Hlc {
        self.inner.capture.gc_threshold()
    }
}

impl Drop for StandInCluster {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}
