//! `tarn bench cdc`: change data capture throughput, freshness and memory, against
//! PostgreSQL's own tools on the same data in the same run.
//!
//! 1. **Initial snapshot**: a table of `--rows` rows is copied into the lake; reference: `psql`
//!    `\copy` of the same table to `/dev/null`.
//! 2. **Sustained changes**: with the pipeline stopped, `--writers` connections make `--changes`
//!    inserts, updates and deletes; a second slot on the same publication holds the same
//!    backlog. `pg_recvlogical` drains that slot (reference), then tarn drains its own — both
//!    times and the ratio are printed.
//! 3. **Freshness**: the pipeline runs with the default 1 s flush interval while writers keep a
//!    steady load; a probe commits a row every 100 ms in PostgreSQL and polls tarn's SQL until
//!    it is visible: p50 and p99 of commit-to-visibility.
//! 4. **Latest-read freshness** (`--latest-flush`, default 60 s): the pipeline runs with that
//!    flush interval and publishes its pending changes to the SQL session, as under `tarn
//!    serve` (`tarn_query::bridge`); the same probes are read in `tarn.read_mode = latest`:
//!    p50 and p99 of change-to-visibility beside phase 3's commit freshness, with the data
//!    files the phase committed (their mean size: what the long interval buys).
//! 5. Peak RSS of the process (pipeline, SQL session and lake) at the end.
//!
//! With `--cockroach-contract` the CockroachDB changefeed path runs beside each phase on the
//! same table and the same backlog: tarn's CockroachDB source reads
//! `tarn_test_utils::cockroach::StandInCluster` (the stand-in its contract tests use) in front
//! of the private PostgreSQL — a scan (scan-only changefeed), the backlog replayed from the
//! lake's cursor, and freshness at the resolved cadence (`cdc.changefeed.resolved`, 1 s),
//! each printed with its ratio to the PostgreSQL path. The stand-in captures changes with
//! triggers and keeps its history in memory, so with it the source's write rate and the peak
//! RSS include the stand-in's share.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use tarn_cdc::pipeline::{PipelineHandle, RunOptions};
use tarn_cdc::position::{Hlc, Lsn, Position};
use tarn_cdc::postgres::local::{LocalPostgres, server_bin_dir};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::{Output, TarnSession};
use tokio_util::sync::CancellationToken;

/// Options of `tarn bench cdc`.
#[derive(Debug, Clone)]
pub struct CdcBenchOptions {
    /// Rows of the snapshot table.
    pub rows: u64,
    /// Changes of the sustained phase.
    pub changes: u64,
    /// Concurrent writer connections.
    pub writers: usize,
    /// Seconds of the freshness phase.
    pub freshness_seconds: u64,
    /// Changes per second during the freshness phase.
    pub rate: u64,
    /// Source database; default a private PostgreSQL.
    pub source: Option<String>,
    /// Where the lake (and the private PostgreSQL) go.
    pub dir: PathBuf,
    /// Measure the CockroachDB changefeed path through the contract stand-in too.
    pub cockroach_contract: bool,
    /// Flush interval of the latest-read freshness phase; `None` skips it.
    pub latest_flush: Option<String>,
}

/// What `tarn bench cdc` measured on the PostgreSQL path (it prints all of it, the references
/// and the CockroachDB path as well, as it goes).
#[derive(Debug, Clone, Default)]
pub struct CdcBenchReport {
    /// Where the private PostgreSQL ran (`None` with a `--source`).
    pub postgres_dir: Option<PathBuf>,
    /// Rows of the table the initial snapshot copied.
    pub snapshot_rows: u64,
    /// Seconds from the pipeline's start to the end of the initial snapshot.
    pub snapshot_seconds: f64,
    /// Changes of the backlog the pipeline drained.
    pub backlog_changes: u64,
    /// Seconds the pipeline took to drain the backlog into committed lake tables.
    pub backlog_seconds: f64,
    /// Commit-to-visibility times of the freshness probes, seconds, sorted.
    pub freshness: Vec<f64>,
    /// The same through `latest` reads (bridge reads) with the long flush interval.
    pub latest_freshness: Vec<f64>,
}

/// The CockroachDB changefeed path of the benchmark: a stand-in cluster in front of the
/// benchmark's PostgreSQL and a pipeline configuration reading it.
struct ChangefeedPath {
    cluster: tarn_test_utils::cockroach::StandInCluster,
    config: Config,
}

impl ChangefeedPath {
    async fn start(base: &Config, pg_port: u16) -> Result<Self> {
        use tarn_test_utils::cockroach::{StandInCluster, StandInOptions};
        let cluster = StandInCluster::start(
            pg_port,
            "bench",
            StandInOptions {
                rangefeed_enabled: true,
                ..StandInOptions::default()
            },
        )
        .await
        .context("cannot start the CockroachDB stand-in")?;
        cluster.capture_tables().await?;
        let mut config = base.clone();
        config.cdc.source = Some(cluster.url("postgres"));
        config.cdc.source_kind = "cockroachdb".into();
        config.cdc.pipeline = "crdb".into();
        config.cdc.namespace = "crdb".into();
        Ok(Self { cluster, config })
    }
}

fn hlc_acknowledged(report: &tarn_cdc::pipeline::StatusReport) -> Hlc {
    report
        .acknowledged
        .as_ref()
        .and_then(Position::hlc)
        .unwrap_or_default()
}

pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", tarn_core::config::redact_url(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub(crate) fn acknowledged(report: &tarn_cdc::pipeline::StatusReport) -> Lsn {
    report
        .acknowledged
        .as_ref()
        .and_then(Position::lsn)
        .unwrap_or_default()
}

/// One writer: `count` changes (≈ 40 % updates, 40 % inserts, 20 % deletes) over ids
/// `[base, base + span)`, in transactions of 10; with `rate`, paced to that many per second.
pub(crate) async fn writer(
    url: String,
    seed: u64,
    count: u64,
    span: i64,
    rate: Option<u64>,
    stop: CancellationToken,
) -> Result<u64> {
    let client = connect(&url).await?;
    let mut x = seed | 1;
    let mut done = 0u64;
    let started = Instant::now();
    let mut next_id = 1_000_000_000 + (seed as i64 % 1000) * 100_000_000;
    while done < count && !stop.is_cancelled() {
        let mut sql = String::from("BEGIN;");
        for _ in 0..10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x % span as u64) as i64 + 1;
            match x % 10 {
                0..=3 => sql.push_str(&format!(
                    "UPDATE bench_rows SET amount = amount + 1, updated_at = now() WHERE id = {id};"
                )),
                4..=7 => {
                    next_id += 1;
                    sql.push_str(&format!(
                        "INSERT INTO bench_rows VALUES ({next_id}, {}, 1.00, 'inserted by the benchmark', now());",
                        id % 1000
                    ));
                }
                _ => sql.push_str(&format!("DELETE FROM bench_rows WHERE id = {id};")),
            }
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await?;
        done += 10;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(done)
}

/// Creates the benchmark's tables in the source: `bench_rows` with `rows` rows, and
/// `bench_probe` holding probe `0` (the freshness probes follow it).
pub(crate) async fn create_tables(client: &tokio_postgres::Client, rows: u64) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS bench_rows, bench_probe;
             CREATE TABLE bench_rows (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2), note text, updated_at timestamptz);
             CREATE TABLE bench_probe (seq bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
             INSERT INTO bench_rows SELECT g, g % 1000, (g % 100000) / 100.0, 'row number ' || g, now() FROM generate_series(1, {rows}) g;
             INSERT INTO bench_probe (seq) VALUES (0);"
        ))
        .await
        .context("cannot create the benchmark table")?;
    // Statistics, so the snapshot plans its chunks (VACUUM cannot run in the batch's transaction).
    client
        .batch_execute("VACUUM ANALYZE bench_rows")
        .await
        .context("cannot analyze the benchmark table")
}

/// Seconds `psql \\copy bench_rows TO '/dev/null'` takes: the reference of a table copy.
pub(crate) fn psql_copy_seconds(url: &str) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-c", "\\copy bench_rows TO '/dev/null'"])
        .stdout(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql \\copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The source side of a backlog phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    /// Changes made.
    pub(crate) produced: u64,
    /// Where the backlog ends.
    pub(crate) end_lsn: Lsn,
    /// Seconds `pg_recvlogical` took to drain it.
    pub(crate) reference: f64,
}

/// With the pipeline stopped: a second slot on the pipeline's publication (`tarn_bench`),
/// `options.changes` changes from `options.writers` writers, and `pg_recvlogical` draining
/// that slot to `/dev/null` (the reference); the pipeline's own slot holds the same backlog.
pub(crate) async fn backlog_with_reference(
    client: &tokio_postgres::Client,
    url: &str,
    options: &CdcBenchOptions,
) -> Result<Backlog> {
    let recvlogical = match server_bin_dir() {
        Ok(d) => d.join("pg_recvlogical"),
        Err(_) => PathBuf::from("pg_recvlogical"),
    };
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('bench_reference', 'pgoutput')")
        .await
        .context("cannot create the reference slot")?;
    let produce = Instant::now();
    let per_writer = options.changes / options.writers.max(1) as u64;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for w in 0..options.writers.max(1) {
        tasks.push(tokio::spawn(writer(
            url.to_string(),
            7919 * (w as u64 + 1),
            per_writer,
            options.rows as i64,
            None,
            stop.clone(),
        )));
    }
    let mut produced = 0;
    for t in tasks {
        produced += t.await??;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end_lsn: Lsn = end.parse().context("bad end LSN")?;
    println!(
        "source: {produced} changes in {:.1}s ({:.0}/s) from {} writers; backlog ends at {end}",
        produce.elapsed().as_secs_f64(),
        produced as f64 / produce.elapsed().as_secs_f64(),
        options.writers
    );
    let reference = Instant::now();
    let out = Command::new(&recvlogical)
        .args([
            "-d",
            url,
            "-S",
            "bench_reference",
            "--start",
            "-E",
            &end,
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o", "publication_names=tarn_bench"])
        .output()
        .with_context(|| format!("cannot run {}", recvlogical.display()))?;
    if !out.status.success() {
        bail!("pg_recvlogical failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference = reference.elapsed().as_secs_f64();
    client
        .batch_execute("SELECT pg_drop_replication_slot('bench_reference')")
        .await?;
    Ok(Backlog {
        produced,
        end_lsn,
        reference,
    })
}

/// Starts the pipeline of `config` and waits until it acknowledged the end of `backlog`;
/// prints its changes/s beside `pg_recvlogical`'s (`what`: where the changes went). Returns
/// the running pipeline and the seconds it took.
pub(crate) async fn drain_backlog(
    config: &Config,
    lake: &Lake,
    backlog: &Backlog,
    what: &str,
) -> Result<(PipelineHandle, f64)> {
    let Backlog {
        produced,
        end_lsn,
        reference,
    } = *backlog;
    let started = Instant::now();
    let pipeline = PipelineHandle::spawn(config, lake.clone(), RunOptions::default());
    pipeline
        .wait_until("the backlog", Duration::from_secs(3600), |r| {
            r.state == "streaming" && acknowledged(r) >= end_lsn
        })
        .await?;
    let drain = started.elapsed().as_secs_f64();
    println!(
        "tarn            {produced} changes in {drain:>7.2}s  {:>9.0} changes/s ({what})\n\
         pg_recvlogical  {produced} changes in {reference:>7.2}s  {:>9.0} changes/s (decoded to /dev/null)\n\
         ratio tarn/pg_recvlogical: {:.2}",
        produced as f64 / drain,
        produced as f64 / reference,
        drain / reference
    );
    Ok((pipeline, drain))
}

/// Runs the benchmark; see the module doc.
pub async fn run(base: &Config, options: CdcBenchOptions) -> Result<CdcBenchReport> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let _local;
    let mut report = CdcBenchReport {
        snapshot_rows: options.rows,
        ..CdcBenchReport::default()
    };
    let url = match &options.source {
        Some(url) => url.clone(),
        None => {
            // In the benchmark's directory, or in a temporary one when PostgreSQL's own user
            // cannot reach it (tarn run as root under a private home directory).
            let pg_dir = dir.join("postgres");
            let pg = tokio::task::spawn_blocking(move || LocalPostgres::start_scratch(&pg_dir)).await??;
            println!("private PostgreSQL in {}", pg.dir().display());
            report.postgres_dir = Some(pg.dir().to_path_buf());
            pg.psql("postgres", "CREATE DATABASE bench")?;
            let url = pg.url("bench");
            _local = pg;
            url
        }
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "tarn bench cdc: {} snapshot rows, {} changes from {} writers, {cores} cores",
        options.rows, options.changes, options.writers
    );
    let client = connect(&url).await?;
    let setup = Instant::now();
    create_tables(&client, options.rows).await?;
    println!(
        "created {} rows in PostgreSQL in {:.1}s",
        options.rows,
        setup.elapsed().as_secs_f64()
    );

    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.catalog.url = None;
    config.storage.warehouse = None;
    config.cdc.source = Some(url.clone());
    config.cdc.tables = vec!["public.bench_*".into()];
    config.cdc.pipeline = "bench".into();
    let lake = Lake::open(&config).await?;
    let crdb = if options.cockroach_contract {
        let port = url
            .parse::<tokio_postgres::Config>()?
            .get_ports()
            .first()
            .copied()
            .context("the private PostgreSQL's URL has no port")?;
        let path = ChangefeedPath::start(&config, port).await?;
        println!(
            "CockroachDB path: a {} stand-in in front of the same PostgreSQL (resolved every {})",
            path.cluster.version().release(),
            path.config.cdc.changefeed.resolved
        );
        Some(path)
    } else {
        None
    };

    // 1. Initial snapshot, against psql's \copy of the same table.
    println!("\n== initial snapshot ==");
    let reference = psql_copy_seconds(&url)?;
    let started = Instant::now();
    let mut pipeline = PipelineHandle::spawn(&config, lake.clone(), RunOptions::default());
    pipeline
        .wait_until("the initial snapshot", Duration::from_secs(3600), |r| {
            r.state == "streaming"
        })
        .await?;
    let snap = started.elapsed().as_secs_f64();
    report.snapshot_seconds = snap;
    println!(
        "tarn     {:>10} rows in {snap:>7.2}s  {:>10.0} rows/s\npsql \\copy {:>8} rows in {reference:>7.2}s  {:>10.0} rows/s\nratio tarn/psql: {:.2}",
        options.rows,
        options.rows as f64 / snap,
        options.rows,
        options.rows as f64 / reference,
        snap / reference
    );
    pipeline.stop().await?;
    if let Some(crdb) = &crdb {
        // The stand-in's own share: the same scan read by a client that drops every row.
        let reader = connect(&crdb.cluster.url("postgres")).await?;
        let started = Instant::now();
        let mut scanned = 0u64;
        {
            use futures::StreamExt as _;
            let rows = reader
                .simple_query_raw(
                    "CREATE CHANGEFEED FOR TABLE bench_rows WITH initial_scan = 'only', \
                     envelope = 'wrapped', format = 'json', full_table_name",
                )
                .await?;
            futures::pin_mut!(rows);
            while let Some(m) = rows.next().await {
                if let tokio_postgres::SimpleQueryMessage::Row(_) = m? {
                    scanned += 1;
                }
            }
        }
        let alone = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut pipeline = PipelineHandle::spawn(&crdb.config, lake.clone(), RunOptions::default());
        pipeline
            .wait_until("the CockroachDB scan", Duration::from_secs(3600), |r| {
                r.state == "streaming"
            })
            .await?;
        let scan = started.elapsed().as_secs_f64();
        println!(
            "tarn from CockroachDB (scan-only changefeed) {:>10} rows in {scan:>7.2}s  {:>10.0} rows/s\n\
             the stand-in alone (rows read and dropped) {scanned:>8} rows in {alone:>7.2}s  {:>10.0} rows/s\n\
             ratio CockroachDB path/PostgreSQL path: {:.2}",
            options.rows,
            options.rows as f64 / scan,
            scanned as f64 / alone,
            scan / snap
        );
        pipeline.stop().await?;
    }

    // 2. Sustained changes: the same backlog drained by pg_recvlogical and by tarn.
    println!("\n== sustained changes: draining a backlog ==");
    let backlog = backlog_with_reference(&client, &url, &options).await?;
    let (mut pipeline, drain) = drain_backlog(&config, &lake, &backlog, "into Iceberg, committed").await?;
    let produced = backlog.produced;
    (report.backlog_changes, report.backlog_seconds) = (produced, drain);
    if let Some(crdb) = &crdb {
        // Every change of the backlog is in the stand-in's history once it has drained its
        // capture log; the changefeed replays them from the lake's cursor.
        let end: Hlc = crdb
            .cluster
            .sync_now()
            .await?
            .decimal()
            .parse()
            .context("bad HLC")?;
        let started = Instant::now();
        let mut pipeline = PipelineHandle::spawn(&crdb.config, lake.clone(), RunOptions::default());
        pipeline
            .wait_until("the CockroachDB backlog", Duration::from_secs(3600), |r| {
                r.state == "streaming" && hlc_acknowledged(r) >= end
            })
            .await?;
        let crdb_drain = started.elapsed().as_secs_f64();
        pipeline.stop().await?;
        println!(
            "tarn from CockroachDB (changefeed) {produced} changes in {crdb_drain:>7.2}s  {:>9.0} changes/s\n\
             ratio CockroachDB path/PostgreSQL path: {:.2}",
            produced as f64 / crdb_drain,
            crdb_drain / drain
        );
    }

    // 3. Freshness under a steady load, with the default flush interval.
    println!(
        "\n== freshness: {} changes/s for {}s, flush interval {} ==",
        options.rate, options.freshness_seconds, config.cdc.flush.interval
    );
    let session = TarnSession::new(lake.clone()).await?;
    let pg_fresh = freshness(&url, &session, "cdc", &options, 0).await?;
    pipeline.stop().await?;
    println!(
        "freshness over {} probes: p50 {:.3}s  p99 {:.3}s  max {:.3}s",
        pg_fresh.len(),
        percentile(&pg_fresh, 0.5),
        percentile(&pg_fresh, 0.99),
        pg_fresh.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(crdb) = &crdb {
        let mut pipeline = PipelineHandle::spawn(&crdb.config, lake.clone(), RunOptions::default());
        pipeline
            .wait_until("the CockroachDB stream", Duration::from_secs(600), |r| {
                r.state == "streaming"
            })
            .await?;
        let fresh = freshness(&url, &session, "crdb", &options, 1_000_000_000).await?;
        pipeline.stop().await?;
        println!(
            "CockroachDB path, resolved every {}: p50 {:.3}s  p99 {:.3}s  max {:.3}s over {} probes\n\
             ratio of p50 CockroachDB path/PostgreSQL path: {:.2}",
            crdb.config.cdc.changefeed.resolved,
            percentile(&fresh, 0.5),
            percentile(&fresh, 0.99),
            fresh.last().copied().unwrap_or(f64::NAN),
            fresh.len(),
            percentile(&fresh, 0.5) / percentile(&pg_fresh, 0.5)
        );
    }
    if let Some(interval) = &options.latest_flush {
        report.latest_freshness =
            latest_freshness(&config, &lake, &session, &url, &options, interval, &pg_fresh).await?;
    }
    println!(
        "\npeak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    report.freshness = pg_fresh;
    Ok(report)
}

/// Phase 4: freshness through `latest` reads with flush interval `interval`, printed beside
/// the commit freshness `committed` of phase 3.
async fn latest_freshness(
    config: &Config,
    lake: &Lake,
    session: &TarnSession,
    url: &str,
    options: &CdcBenchOptions,
    interval: &str,
    committed: &[f64],
) -> Result<Vec<f64>> {
    println!(
        "\n== latest-read freshness: {} changes/s for {}s, flush interval {interval}, tarn.read_mode = latest ==",
        options.rate, options.freshness_seconds
    );
    let mut config = config.clone();
    config.cdc.flush.interval = interval.to_string();
    config.validate().context("--latest-flush")?;
    let files_before = data_files(lake, "bench_rows").await?;
    let publisher = tarn_cdc::sink::PendingPublisher::new();
    session.bridge().register(publisher.clone());
    let mut pipeline = PipelineHandle::spawn(
        &config,
        lake.clone(),
        RunOptions {
            bridge: Some(publisher),
            ..RunOptions::default()
        },
    );
    pipeline
        .wait_until("the stream", Duration::from_secs(600), |r| r.state == "streaming")
        .await?;
    let fresh = freshness(url, session, "cdc", options, 2_000_000_000).await?;
    pipeline.stop().await?;
    let files_after = data_files(lake, "bench_rows").await?;
    let added: Vec<u64> = files_after
        .iter()
        .filter(|(path, _)| !files_before.iter().any(|(p, _)| p == path))
        .map(|(_, size)| *size)
        .collect();
    let mean = if added.is_empty() {
        0.0
    } else {
        added.iter().sum::<u64>() as f64 / added.len() as f64 / 1e6
    };
    println!(
        "latest reads over {} probes: p50 {:.3}s  p99 {:.3}s  max {:.3}s\n\
         commit freshness (phase 3, flush interval {}): p50 {:.3}s  p99 {:.3}s\n\
         ratio of p50 latest/commit: {:.3}\n\
         data files committed by the phase into bench_rows: {} (mean {mean:.2} MB)",
        fresh.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        fresh.last().copied().unwrap_or(f64::NAN),
        tarn_core::Config::defaults(&config.data_dir).cdc.flush.interval,
        percentile(committed, 0.5),
        percentile(committed, 0.99),
        percentile(&fresh, 0.5) / percentile(committed, 0.5),
        added.len(),
    );
    Ok(fresh)
}

/// The live data files of `cdc.<table>` and their sizes.
async fn data_files(lake: &Lake, table: &str) -> Result<Vec<(String, u64)>> {
    let ident = iceberg::TableIdent::from_strs(["cdc", table])?;
    let table = lake.load_table(&ident).await?;
    let (data, _) = Lake::live_files(&table).await?;
    Ok(data
        .iter()
        .map(|f| (f.file_path().to_string(), f.file_size_in_bytes()))
        .collect())
}

/// Commit-to-visibility times (sorted, seconds) of probes committed every 100 ms in the
/// source while writers keep `options.rate` changes/s, seen through `namespace.bench_probe`.
/// Probe sequence numbers start after `first`.
pub(crate) async fn freshness(
    url: &str,
    session: &TarnSession,
    namespace: &str,
    options: &CdcBenchOptions,
    first: i64,
) -> Result<Vec<f64>> {
    let stop = CancellationToken::new();
    // Each phase's writer its own seed, so its inserted ids do not collide with an earlier
    // phase's.
    let load = tokio::spawn(writer(
        url.to_string(),
        104_729 + (first / 1_000_000_000) as u64 * 7,
        u64::MAX,
        options.rows as i64,
        Some(options.rate),
        stop.clone(),
    ));
    let probe = connect(url).await?;
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(options.freshness_seconds);
    let mut seq = first;
    let query = format!("SELECT max(seq) FROM {namespace}.bench_probe");
    while Instant::now() < until {
        seq += 1;
        probe
            .execute("INSERT INTO bench_probe (seq) VALUES ($1)", &[&seq])
            .await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(60);
        loop {
            let rows = query_rows_text(session, &query).await;
            if rows
                .ok()
                .and_then(|r| r.first().and_then(|v| v.parse::<i64>().ok()))
                .is_some_and(|m| m >= seq)
            {
                samples.push(committed.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                stop.cancel();
                bail!("probe {seq} did not reach {namespace}.bench_probe within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let changes = load
        .await
        .context("the load writer panicked")?
        .context("the load writer failed")?;
    println!(
        "load: {changes} changes in {}s ({:.0}/s)",
        options.freshness_seconds,
        changes as f64 / options.freshness_seconds.max(1) as f64
    );
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Runs one statement and returns the first column of its rows as text.
pub(crate) async fn query_rows_text(session: &TarnSession, sql: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Output::Rows(stream) = session.run_sql(sql).await? {
        let batches: Vec<arrow::array::RecordBatch> = stream.try_collect().await?;
        for batch in batches {
            if batch.num_columns() == 0 {
                continue;
            }
            let formatter = arrow::util::display::ArrayFormatter::try_new(
                batch.column(0).as_ref(),
                &arrow::util::display::FormatOptions::default(),
            )?;
            for row in 0..batch.num_rows() {
                out.push(formatter.value(row).to_string());
            }
        }
    }
    Ok(out)
}

/// The default directory of the benchmark.
pub fn default_dir(config: &Config) -> PathBuf {
    config.data_dir.join("bench").join("cdc")
}
