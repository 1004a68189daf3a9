//! `tarn bench workload`: what workload management costs and what it protects
//! (docs/workload.md).
//!
//! 1. **CDC freshness under a query load.** A `tarn serve` process (this binary) runs a CDC
//!    pipeline from a private PostgreSQL (flush interval `--flush-interval`). A probe commits a
//!    row every 100 ms in PostgreSQL and polls the lake's catalog (from this process: the
//!    table's current snapshot and its row count, no query) until a snapshot holds it:
//!    commit-to-visibility p50 and p99, first with the server idle, then
//!    while `--load` connections run CPU-heavy queries in a loop through its Postgres wire
//!    endpoint. The ratio load/idle is the figure; the idle run of the same process is its
//!    reference. Beside the probes, a health check (`GET /healthz` on a new connection every
//!    100 ms, as Kubernetes probes) is timed in both phases, with the same ratio. Then, unless `--no-compaction`, while `tarn maintain --compact` rewrites a
//!    table of the same lake in a loop: at the pipelines' priority with a thread per core, and
//!    with the defaults (`maintenance.threads` 1, `maintenance.thread_nice` 10).
//! 2. **TPC-H with a memory budget.** The 22 queries at `--sf` run with `query.memory_limit`
//!    at `--memory-limit` and unlimited, alternately on the same lake: the geometric means and
//!    their ratio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tarn_cdc::postgres::local::LocalPostgres;
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tarn_query::workload::{Workload, WorkloadSettings};
use tokio_util::sync::CancellationToken;

use crate::bench_cdc::{connect, percentile};

/// Options of `tarn bench workload`.
#[derive(Debug, Clone)]
pub struct WorkloadBenchOptions {
    /// Seconds of each freshness phase (idle, under load).
    pub seconds: u64,
    /// Connections running heavy queries in the loaded phase.
    pub load: usize,
    /// The CDC flush interval.
    pub flush_interval: String,
    /// TPC-H scale factor; 0 skips the TPC-H part.
    pub sf: f64,
    /// The memory budget of the limited TPC-H runs.
    pub memory_limit: String,
    /// Timed runs per TPC-H query and mode.
    pub runs: usize,
    /// Skip the CDC part.
    pub no_cdc: bool,
    /// Measure freshness while compaction runs too.
    pub compaction: bool,
    /// Where the lakes and the private PostgreSQL go.
    pub dir: PathBuf,
}

/// A query that keeps one core busy for a few seconds, with little memory.
const HEAVY: &str = "SELECT count(*), sum(x % 7) FROM generate_series(1, 20000000) AS t(x)";

/// Runs the benchmark, printing as it goes.
pub async fn run(config: &Config, options: &WorkloadBenchOptions) -> Result<()> {
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot clear {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("tarn bench workload: {cores} cores");
    if !options.no_cdc {
        freshness_under_load(options).await?;
    }
    if options.sf > 0.0 {
        tpch_with_budget(config, options).await?;
    }
    Ok(())
}

/// A `tarn serve` child process; killed on drop.
struct ServeProcess {
    child: Child,
    pg_port: u16,
    http_port: u16,
}

impl ServeProcess {
    /// A gauge of its `/metrics`.
    async fn gauge(&self, name: &str) -> Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn freshness_under_load(options: &WorkloadBenchOptions) -> Result<()> {
    let pg_dir = options.dir.join("postgres");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start_scratch(&pg_dir)).await??;
    pg.psql("postgres", "CREATE DATABASE bench")?;
    let url = pg.url("bench");
    let source = connect(&url).await?;
    source
        .batch_execute("CREATE TABLE bench_probe (seq bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;

    let data_dir = std::path::absolute(options.dir.join("serve"))?;
    std::fs::create_dir_all(&data_dir)?;
    let (pg_port, http_port) = (free_port()?, free_port()?);
    std::fs::write(
        data_dir.join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
             [auth]\ntrust_loopback = true\n\
             [cdc]\nsource = \"{url}\"\n[cdc.flush]\ninterval = \"{0}\"\nbridged_interval = \"{0}\"\n",
            options.flush_interval
        ),
    )?;
    let log = std::fs::File::create(data_dir.join("serve.log"))?;
    let serve = ServeProcess {
        child: Command::new(std::env::current_exe()?)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("serve")
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start tarn serve")?,
        pg_port,
        http_port,
    };
    // tarn serve listens once it has set up its catalog (the `public` schema among it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "tarn serve did not listen within 60 s; its log is {}",
                data_dir.join("serve.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let observer_config = Config::load(&data_dir, None, std::iter::empty(), &[])?;
    let lake = Lake::open(&observer_config).await?;
    // The pipeline's initial snapshot makes the table.
    let deadline = Instant::now() + Duration::from_secs(120);
    while probe_rows(&lake).await.is_none() {
        if Instant::now() > deadline {
            bail!(
                "cdc.bench_probe did not appear within 120 s; tarn serve's log is {}",
                data_dir.join("serve.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "\n== CDC freshness in one tarn serve: idle, then with {} connections of heavy queries (flush interval {}) ==",
        options.load, options.flush_interval
    );
    let mut seq = 0;
    let health = HealthProbe::start(http_port);
    let idle = probes(&source, &lake, &mut seq, options.seconds).await?;
    let health_idle = health.take()?;
    print_freshness("idle", &idle, None);

    let stop = CancellationToken::new();
    let mut loaders = Vec::new();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..options.load {
        let client = connect(&format!(
            "host=127.0.0.1 port={} user=load dbname=tarn",
            serve.pg_port
        ))
        .await?;
        let (stop, completed) = (stop.clone(), completed.clone());
        loaders.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::select! {
                    r = client.simple_query(HEAVY) => match r {
                        Ok(_) => {
                            completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "a load query failed"),
                    },
                    () = stop.cancelled() => break,
                }
            }
        }));
    }
    // Let the load reach every slot before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_at = Instant::now();
    health.take()?;
    let loaded = probes(&source, &lake, &mut seq, options.seconds).await?;
    let health_loaded = health.take()?;
    let (running, queued) = (
        serve.gauge("tarn_query_running").await?,
        serve.gauge("tarn_query_queued").await?,
    );
    let done = completed.load(std::sync::atomic::Ordering::Relaxed);
    let secs = loaded_at.elapsed().as_secs_f64();
    stop.cancel();
    for l in loaders {
        let _ = l.await;
    }
    print_freshness("under load", &loaded, Some(&idle));
    println!(
        "load: {running} running, {queued} queued at the end; {done} heavy queries completed in {secs:.1}s ({:.2}/s)",
        done as f64 / secs
    );
    println!(
        "freshness p99 ratio load/idle: {:.2}",
        percentile(&loaded, 0.99) / percentile(&idle, 0.99)
    );
    print_latency("/healthz idle", &health_idle, None);
    print_latency("/healthz under load", &health_loaded, Some(&health_idle));
    drop(health);
    if options.compaction {
        compaction_phases(options, &source, &lake, &mut seq, &data_dir, &idle).await?;
    }
    drop(serve);
    drop(source);
    drop(pg);
    Ok(())
}

/// Rows of the table compaction rewrites over and over in the maintenance phases.
const CHURN_ROWS: u64 = 3_000_000;

/// CDC freshness while `tarn maintain --compact` runs in a loop beside the `tarn serve` of
/// `data_dir`: first with maintenance at the pipelines' priority and a worker per core, then
/// with the defaults (one worker, `maintenance.thread_nice` 10).
async fn compaction_phases(
    options: &WorkloadBenchOptions,
    source: &tokio_postgres::Client,
    lake: &Lake,
    seq: &mut i64,
    data_dir: &std::path::Path,
    idle: &[f64],
) -> Result<()> {
    // A table whose files stay "small" (8 MiB targets, every file below
    // maintenance.small_file_bytes): each compaction rewrites all of it again.
    let mut churn_config = Config::load(data_dir, None, std::iter::empty(), &[])?;
    churn_config.write.target_file_size = 8 << 20;
    let writer = TarnSession::new(Lake::open(&churn_config).await?).await?;
    writer.run_sql("CREATE SCHEMA IF NOT EXISTS bench").await?;
    writer
        .run_sql(&format!(
            "CREATE TABLE bench.churn AS SELECT x AS id, md5(CAST(x AS VARCHAR)) AS s, x * 0.5 AS v \
             FROM generate_series(1, {CHURN_ROWS}) AS t(x)"
        ))
        .await?;
    drop(writer);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (label, settings) in [
        (
            format!("compaction at the pipelines' priority ({cores} threads, nice +0)"),
            vec![
                "maintenance.thread_nice=0".to_string(),
                format!("maintenance.threads={cores}"),
            ],
        ),
        (
            "compaction with the defaults (1 thread, nice +10)".to_string(),
            Vec::new(),
        ),
    ] {
        println!("\n-- {label}: tarn maintain --compact bench.churn ({CHURN_ROWS} rows) in a loop --");
        let stop = CancellationToken::new();
        let looper = tokio::spawn(compaction_loop(data_dir.to_path_buf(), settings, stop.clone()));
        // Let the first round get going before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = probes(source, lake, seq, options.seconds).await?;
        stop.cancel();
        let (rounds, busy) = looper.await.context("the compaction loop panicked")??;
        print_freshness("under compaction", &samples, Some(idle));
        println!(
            "compaction: {rounds} rounds completed, {:.1}s each on average; freshness p99 ratio compaction/idle: {:.2}",
            busy / rounds.max(1) as f64,
            percentile(&samples, 0.99) / percentile(idle, 0.99)
        );
    }
    Ok(())
}

/// Runs `tarn maintain --compact bench.churn` with `settings` (`--set` pairs) until `stop`;
/// the rounds completed and the seconds they took together.
async fn compaction_loop(
    data_dir: PathBuf,
    settings: Vec<String>,
    stop: CancellationToken,
) -> Result<(u64, f64)> {
    let (mut rounds, mut busy) = (0, 0.0);
    let log = data_dir.join("maintain.log");
    while !stop.is_cancelled() {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--set", "maintenance.small_file_bytes=1073741824"])
            .args(["--set", "maintenance.min_files=2"]);
        for kv in &settings {
            command.args(["--set", kv]);
        }
        let status = command
            .args(["maintain", "--compact", "bench.churn"])
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::options().create(true).append(true).open(&log)?,
            ))
            .stderr(Stdio::from(
                std::fs::File::options().create(true).append(true).open(&log)?,
            ))
            .kill_on_drop(true)
            .status();
        tokio::select! {
            status = status => {
                let status = status.context("cannot run tarn maintain")?;
                if !status.success() {
                    bail!("tarn maintain failed ({status}); its output is in {}", log.display());
                }
                rounds += 1;
                busy += started.elapsed().as_secs_f64();
            }
            () = stop.cancelled() => break,
        }
    }
    Ok((rounds, busy))
}

fn print_freshness(label: &str, samples: &[f64], reference: Option<&[f64]>) {
    print_samples("freshness", label, "probes", 3, samples, reference);
}

/// Latencies (sorted, seconds) of `label`'s requests, beside `reference`'s.
fn print_latency(label: &str, samples: &[f64], reference: Option<&[f64]>) {
    print_samples("latency", label, "requests", 4, samples, reference);
}

/// `what label: N noun, p50 …  p99 …  max …` of sorted `samples` (seconds, `digits` decimals),
/// with each percentile's ratio to `reference`'s.
fn print_samples(
    what: &str,
    label: &str,
    noun: &str,
    digits: usize,
    samples: &[f64],
    reference: Option<&[f64]>,
) {
    let ratio = |p: f64| {
        reference.map_or(String::new(), |r| {
            format!(" ({:.2}x idle)", percentile(samples, p) / percentile(r, p))
        })
    };
    println!(
        "{what} {label}: {} {noun}, p50 {:.digits$}s{}  p99 {:.digits$}s{}  max {:.digits$}s",
        samples.len(),
        percentile(samples, 0.5),
        ratio(0.5),
        percentile(samples, 0.99),
        ratio(0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}

/// A health check's view of `tarn serve`: `GET /healthz` on a fresh connection every 100 ms,
/// as a load balancer or Kubernetes probe does, timed from connect to the end of the answer.
/// The HTTP endpoint runs on the process's main runtime, apart from the query runtime, so the
/// query load should not reach it.
struct HealthProbe {
    samples: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl HealthProbe {
    fn start(http_port: u16) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (out, failure) = (samples.clone(), failed.clone());
        let task = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                match health_check(http_port).await {
                    Ok(()) => out
                        .lock()
                        .expect("probe poisoned")
                        .push(started.elapsed().as_secs_f64()),
                    Err(e) => {
                        *failure.lock().expect("probe poisoned") = Some(format!("{e:#}"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            samples,
            task,
            failed,
        }
    }

    /// The latencies since the last call, sorted; an error if a check failed.
    fn take(&self) -> Result<Vec<f64>> {
        if let Some(e) = self.failed.lock().expect("probe poisoned").clone() {
            bail!("a health check of tarn serve failed: {e}");
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().expect("probe poisoned"));
        samples.sort_by(f64::total_cmp);
        Ok(samples)
    }
}

impl Drop for HealthProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `GET /healthz`, answered `200 ok` within 10 s.
async fn health_check(http_port: u16) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .context("no answer within 10 s")?
}

/// The rows of `cdc.bench_probe` in its current snapshot, from the catalog and the snapshot's
/// summary (cheap: no query, so the observer adds little CPU of its own to what is measured).
async fn probe_rows(lake: &Lake) -> Option<i64> {
    let ident = iceberg::TableIdent::from_strs(["cdc", "bench_probe"]).ok()?;
    let table = lake.load_table(&ident).await.ok()?;
    match table.metadata().current_snapshot() {
        Some(snapshot) => snapshot
            .summary()
            .additional_properties
            .get("total-records")?
            .parse()
            .ok(),
        None => Some(0),
    }
}

/// Commit-to-visibility times (sorted, seconds) of probes committed every 100 ms for `seconds`:
/// from the commit in PostgreSQL until the lake's catalog names a snapshot holding the row.
async fn probes(
    source: &tokio_postgres::Client,
    lake: &Lake,
    seq: &mut i64,
    seconds: u64,
) -> Result<Vec<f64>> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    while Instant::now() < until {
        *seq += 1;
        source
            .execute("INSERT INTO bench_probe (seq) VALUES ($1)", &[&*seq])
            .await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(60);
        loop {
            if probe_rows(lake).await.is_some_and(|n| n >= *seq) {
                samples.push(committed.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                bail!("probe {seq} did not reach cdc.bench_probe within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

async fn tpch_with_budget(config: &Config, options: &WorkloadBenchOptions) -> Result<()> {
    let mut lake_config = config.clone();
    lake_config.data_dir = options.dir.join("tpch").join("lake");
    lake_config.catalog.url = None;
    lake_config.storage.warehouse = None;
    let lake = crate::bench::generate_and_load(&lake_config, options.sf, &options.dir.join("tpch")).await?;
    let mut query = tarn_core::config::QueryConfig {
        memory_limit: options.memory_limit.clone(),
        ..Default::default()
    };
    query.spill_dir = Some(options.dir.join("spill"));
    let workload = Workload::new(WorkloadSettings::from_config(&query, &options.dir)?)?;
    let limited = TarnSession::new(lake.clone()).await?.with_workload(&workload);
    let unlimited = TarnSession::new(lake.clone()).await?;
    for s in [&limited, &unlimited] {
        s.run_sql("SET datafusion.catalog.default_schema = 'tpch'")
            .await?;
    }
    println!(
        "\n== TPC-H sf {}: query.memory_limit = {} against unlimited (best of {} after a warm-up, alternating) ==",
        options.sf, options.memory_limit, options.runs
    );
    let mut times: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for (i, sql) in crate::bench::QUERIES.iter().enumerate() {
        let n = i + 1;
        let (mut best_limited, mut best_unlimited) = (f64::INFINITY, f64::INFINITY);
        let mut failed = None;
        for run in 0..=options.runs {
            for (mode, session) in [("limited", &limited), ("unlimited", &unlimited)] {
                let t = Instant::now();
                if let Err(e) = crate::bench::query_rows(session, sql).await {
                    failed = Some(format!("{mode}: {e:#}"));
                    break;
                }
                let secs = t.elapsed().as_secs_f64();
                if run > 0 {
                    match mode {
                        "limited" => best_limited = best_limited.min(secs),
                        _ => best_unlimited = best_unlimited.min(secs),
                    }
                }
            }
        }
        match failed {
            Some(e) => println!("q{n:02} FAILED {e}"),
            None => {
                println!(
                    "q{n:02} limited {best_limited:>8.3}s  unlimited {best_unlimited:>8.3}s  ratio {:>5.2}",
                    best_limited / best_unlimited
                );
                times.insert(n, (best_limited, best_unlimited));
            }
        }
    }
    let geo = |f: fn(&(f64, f64)) -> f64| {
        (times.values().map(|t| f(t).ln()).sum::<f64>() / times.len().max(1) as f64).exp()
    };
    let (g_limited, g_unlimited) = (geo(|t| t.0), geo(|t| t.1));
    println!(
        "geometric mean over {} queries: limited {g_limited:.3}s, unlimited {g_unlimited:.3}s, ratio {:.2}",
        times.len(),
        g_limited / g_unlimited
    );
    println!(
        "peak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// The default directory of the benchmark.
pub fn default_dir(config: &Config) -> PathBuf {
    config.data_dir.join("bench").join("workload")
}
