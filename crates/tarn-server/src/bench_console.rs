//! `tarn bench console`: how long the web console's catalog page takes for a large catalog,
//! beside the same listing through the Postgres wire endpoint (`information_schema.tables`),
//! in the same run on the same lake.
//!
//! 1. A fresh lake (SQLite catalog) with `--tables` tables in a few namespaces.
//! 2. The endpoints of `tarn serve` started in process (the Postgres wire endpoint and the
//!    HTTP endpoint with the console), a configured user logged in to the console over HTTP
//!    and connected over the Postgres wire protocol.
//! 3. `--requests` timed requests each (after a few untimed): `GET /console/catalog` (the
//!    page listing every namespace and table, rendered), `GET /console/pipelines` (which
//!    reads every table's metadata to find the pipelines writing them) and `SELECT
//!    table_schema, table_name FROM information_schema.tables` (every row read by the client).
//!
//! Printed: p50 and p95 of each and the ratios console/pgwire. Only the release profile's
//! figures belong in BENCHMARKS.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tokio_util::sync::CancellationToken;

use crate::bench_cdc::percentile;

/// What `tarn bench console` was asked to do.
#[derive(Debug, Clone)]
pub struct ConsoleBenchOptions {
    /// Tables in the catalog.
    pub tables: usize,
    /// Timed requests of each kind.
    pub requests: usize,
    /// Where the lake goes; cleared first.
    pub dir: PathBuf,
}

/// Namespaces the tables are spread over.
const NAMESPACES: usize = 10;

/// Untimed requests of each kind before the timed ones.
const WARMUP: usize = 3;

fn line(what: &str, sorted: &[f64]) -> String {
    format!(
        "{what:<44} p50 {:>9.2} ms   p95 {:>9.2} ms",
        percentile(sorted, 0.5) * 1e3,
        percentile(sorted, 0.95) * 1e3
    )
}

/// Runs the benchmark (module doc).
pub async fn run(base: &Config, options: &ConsoleBenchOptions) -> Result<()> {
    if options.tables == 0 || options.requests == 0 {
        bail!("--tables and --requests must be positive");
    }
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.storage.warehouse = None;
    config.catalog.url = None;
    config.server.tls = None;
    config.auth = tarn_core::config::AuthConfig {
        users: vec![tarn_core::config::UserConfig {
            name: "bench".into(),
            password: "bench-pw".into(),
        }],
        ..Default::default()
    };
    config.policy = Default::default();
    config.console.enabled = true;
    config.validate()?;
    let lake = Lake::open(&config).await?;
    let session = TarnSession::new(lake.clone()).await?;
    println!(
        "tarn bench console: {} tables in {NAMESPACES} namespaces, {} timed requests each",
        options.tables, options.requests
    );
    let started = Instant::now();
    for n in 0..NAMESPACES {
        session.run_sql(&format!("CREATE SCHEMA ns{n}")).await?;
    }
    for t in 0..options.tables {
        session
            .run_sql(&format!(
                "CREATE TABLE ns{}.table_{t:05} (id BIGINT NOT NULL, name VARCHAR, amount DOUBLE)",
                t % NAMESPACES
            ))
            .await?;
    }
    println!(
        "created {} tables in {:.1} s",
        options.tables,
        started.elapsed().as_secs_f64()
    );

    let shutdown = CancellationToken::new();
    let pg = crate::serve::bind("127.0.0.1:0", "server.pg_listen").await?;
    let http = crate::serve::bind("127.0.0.1:0", "server.http_listen").await?;
    let metrics = crate::serve::install_metrics_if(false)?;
    let endpoints =
        crate::serve::Endpoints::start(&config, session, metrics, None, None, (pg, http), &shutdown).await?;
    let base_url = format!("http://{}", endpoints.http_addr);
    let result = measure(&base_url, endpoints.pg_addr, &config.catalog.name, options).await;
    shutdown.cancel();
    endpoints.join().await;
    result
}

async fn measure(
    base_url: &str,
    pg_addr: std::net::SocketAddr,
    database: &str,
    options: &ConsoleBenchOptions,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()?;
    let login = http
        .post(format!("{base_url}/console/login"))
        .form(&[("user", "bench"), ("password", "bench-pw")])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .with_context(|| format!("the console login answered {} without a cookie", login.status()))?;
    let mut page_bytes = 0;
    let mut console = Vec::new();
    for i in 0..WARMUP + options.requests {
        let t = Instant::now();
        let response = http
            .get(format!("{base_url}/console/catalog"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /console/catalog answered {}", response.status());
        }
        let body = response.text().await?;
        let elapsed = t.elapsed().as_secs_f64();
        let listed = body.matches("data-table=").count();
        if listed != options.tables {
            bail!(
                "the catalog page lists {listed} tables, expected {}",
                options.tables
            );
        }
        page_bytes = body.len();
        if i >= WARMUP {
            console.push(elapsed);
        }
    }
    let mut pipelines = Vec::new();
    for i in 0..WARMUP + options.requests {
        let t = Instant::now();
        let response = http
            .get(format!("{base_url}/console/pipelines"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /console/pipelines answered {}", response.status());
        }
        let body = response.text().await?;
        if !body.contains("no-pipelines") {
            bail!("the pipelines page of a lake without pipelines lists some");
        }
        if i >= WARMUP {
            pipelines.push(t.elapsed().as_secs_f64());
        }
    }
    let url = format!(
        "host={} port={} user=bench password=bench-pw dbname={database}",
        pg_addr.ip(),
        pg_addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let mut pgwire = Vec::new();
    for i in 0..WARMUP + options.requests {
        let t = Instant::now();
        let rows = client
            .simple_query(
                "SELECT table_schema, table_name FROM information_schema.tables \
                 WHERE table_schema NOT IN ('information_schema', 'pg_catalog')",
            )
            .await?;
        let elapsed = t.elapsed().as_secs_f64();
        let listed = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        if listed < options.tables {
            bail!(
                "information_schema.tables lists {listed} tables, expected at least {}",
                options.tables
            );
        }
        if i >= WARMUP {
            pgwire.push(elapsed);
        }
    }
    drop(client);
    let _ = connection.await;
    console.sort_by(f64::total_cmp);
    pipelines.sort_by(f64::total_cmp);
    pgwire.sort_by(f64::total_cmp);
    println!(
        "{}   ({} KB page)",
        line("console GET /console/catalog (rendered page)", &console),
        page_bytes / 1024
    );
    println!(
        "{}",
        line("console GET /console/pipelines (all metadata)", &pipelines)
    );
    println!("{}", line("pgwire information_schema.tables (all rows)", &pgwire));
    for (what, times) in [("catalog", &console), ("pipelines", &pipelines)] {
        println!(
            "ratio console {what}/pgwire: p50 {:.3}x   p95 {:.3}x",
            percentile(times, 0.5) / percentile(&pgwire, 0.5),
            percentile(times, 0.95) / percentile(&pgwire, 0.95)
        );
    }
    Ok(())
}
