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
//! 4. Peak RSS of the process (pipeline, SQL session and lake) at the end.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tarn_cdc::pipeline::{PipelineStatus, RunOptions};
use tarn_cdc::postgres::local::{LocalPostgres, server_bin_dir};
use tarn_cdc::source::Position;
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
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
}

struct Pipeline {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<tarn_core::Result<()>>,
    status: Arc<PipelineStatus>,
}

impl Pipeline {
    fn start(config: &Config, lake: Lake) -> Self {
        let stop = CancellationToken::new();
        let status = Arc::new(PipelineStatus::default());
        let task = tokio::spawn({
            let (config, stop, status) = (config.clone(), stop.clone(), status.clone());
            async move { tarn_cdc::pipeline::run(&config, lake, RunOptions::default(), status, stop).await }
        });
        Self { stop, task, status }
    }

    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&tarn_cdc::pipeline::StatusReport) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.status.report();
            if done(&report) {
                return Ok(());
            }
            if report.state == "failed" || self.task.is_finished() {
                bail!(
                    "the pipeline stopped while waiting for {what}: {:?}",
                    report.last_error
                );
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", tarn_core::config::redact_url(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn acknowledged(report: &tarn_cdc::pipeline::StatusReport) -> Position {
    report
        .acknowledged
        .as_deref()
        .and_then(Position::parse_lsn)
        .unwrap_or_default()
}

/// One writer: `count` changes (≈ 40 % updates, 40 % inserts, 20 % deletes) over ids
/// `[base, base + span)`, in transactions of 10; with `rate`, paced to that many per second.
async fn writer(
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

/// Runs the benchmark; see the module doc.
pub async fn run(base: &Config, options: CdcBenchOptions) -> Result<()> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let _local;
    let url = match &options.source {
        Some(url) => url.clone(),
        None => {
            // In the benchmark's directory, or in a temporary one when PostgreSQL's own user
            // cannot reach it (tarn run as root under a private home directory).
            let pg_dir = dir.join("postgres");
            let pg = tokio::task::spawn_blocking(move || LocalPostgres::start_scratch(&pg_dir)).await??;
            println!("private PostgreSQL in {}", pg.dir().display());
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
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS bench_rows, bench_probe;
             CREATE TABLE bench_rows (id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2), note text, updated_at timestamptz);
             CREATE TABLE bench_probe (seq bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
             INSERT INTO bench_rows SELECT g, g % 1000, (g % 100000) / 100.0, 'row number ' || g, now() FROM generate_series(1, {}) g;",
            options.rows
        ))
        .await
        .context("cannot create the benchmark table")?;
    // Statistics, so the snapshot plans its chunks (VACUUM cannot run in the batch's transaction).
    client
        .batch_execute("VACUUM ANALYZE bench_rows")
        .await
        .context("cannot analyze the benchmark table")?;
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

    // 1. Initial snapshot, against psql's \copy of the same table.
    println!("\n== initial snapshot ==");
    let reference = Instant::now();
    let out = Command::new("psql")
        .arg(&url)
        .args(["-X", "-q", "-c", "\\copy bench_rows TO '/dev/null'"])
        .stdout(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql \\copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference = reference.elapsed().as_secs_f64();
    let started = Instant::now();
    let pipeline = Pipeline::start(&config, lake.clone());
    pipeline
        .wait("the initial snapshot", Duration::from_secs(3600), |r| {
            r.state == "streaming"
        })
        .await?;
    let snap = started.elapsed().as_secs_f64();
    println!(
        "tarn     {:>10} rows in {snap:>7.2}s  {:>10.0} rows/s\npsql \\copy {:>8} rows in {reference:>7.2}s  {:>10.0} rows/s\nratio tarn/psql: {:.2}",
        options.rows,
        options.rows as f64 / snap,
        options.rows,
        options.rows as f64 / reference,
        snap / reference
    );
    pipeline.stop().await?;

    // 2. Sustained changes: the same backlog drained by pg_recvlogical and by tarn.
    println!("\n== sustained changes: draining a backlog ==");
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
            url.clone(),
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
    let end_lsn = Position::parse_lsn(&end).context("bad end LSN")?;
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
            &url,
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
    let started = Instant::now();
    let pipeline = Pipeline::start(&config, lake.clone());
    pipeline
        .wait("the backlog", Duration::from_secs(3600), |r| {
            r.state == "streaming" && acknowledged(r) >= end_lsn
        })
        .await?;
    let drain = started.elapsed().as_secs_f64();
    println!(
        "tarn            {produced} changes in {drain:>7.2}s  {:>9.0} changes/s (into Iceberg, committed)\n\
         pg_recvlogical  {produced} changes in {reference:>7.2}s  {:>9.0} changes/s (decoded to /dev/null)\n\
         ratio tarn/pg_recvlogical: {:.2}",
        produced as f64 / drain,
        produced as f64 / reference,
        drain / reference
    );

    // 3. Freshness under a steady load, with the default flush interval.
    println!(
        "\n== freshness: {} changes/s for {}s, flush interval {} ==",
        options.rate, options.freshness_seconds, config.cdc.flush.interval
    );
    let session = TarnSession::new(lake.clone()).await?;
    let stop = CancellationToken::new();
    let load = tokio::spawn(writer(
        url.clone(),
        104_729,
        u64::MAX,
        options.rows as i64,
        Some(options.rate),
        stop.clone(),
    ));
    let probe = connect(&url).await?;
    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(options.freshness_seconds);
    let mut seq = 0i64;
    while Instant::now() < until {
        seq += 1;
        probe
            .execute("INSERT INTO bench_probe (seq) VALUES ($1)", &[&seq])
            .await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(30);
        loop {
            let rows = crate::bench::query_rows_text(&session, "SELECT max(seq) FROM cdc.bench_probe").await;
            if rows
                .ok()
                .and_then(|r| r.first().and_then(|v| v.parse::<i64>().ok()))
                .is_some_and(|m| m >= seq)
            {
                samples.push(committed.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                bail!("probe {seq} did not become visible within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = load.await;
    pipeline.stop().await?;
    samples.sort_by(f64::total_cmp);
    println!(
        "freshness over {} probes: p50 {:.3}s  p99 {:.3}s  max {:.3}s",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "\npeak RSS: {}",
        crate::bench::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// The default directory of the benchmark.
pub fn default_dir(config: &Config) -> PathBuf {
    config.data_dir.join("bench").join("cdc")
}
