//! `tarn bench catalog`: the Iceberg REST catalog's `loadTable` and commit latency (p50, p99)
//! and throughput with concurrent clients, against the same operations on the SQL catalog
//! directly (tarn-lake's [`Lake`] API, what tarn's own SQL and CDC use), in the same run on
//! the same lake.
//!
//! 1. A fresh lake (SQLite catalog, or with `--postgres` a private PostgreSQL started from the
//!    system's binaries) with one table per client, each with a few snapshots.
//! 2. The REST catalog is served in process on a loopback port, exactly as `tarn serve` mounts
//!    it; clients are `--clients` tasks sharing one keep-alive HTTP client.
//! 3. Phases, each first on the SQL catalog directly and then through REST, `--operations`
//!    per client after a short warm-up:
//!    - `loadTable`, each client its own table: `GET .../tables/{t}` against
//!      `Lake::load_table` (catalog row lookup; the metadata itself is cached in both);
//!    - commit, each client its own table: a `set-properties` commit requiring the table's
//!      uuid (`POST .../tables/{t}`) against `Lake::set_properties` — both load the current
//!      metadata, write the next metadata file and swap the catalog row;
//!    - commit, all clients on one table: the same, contended: lost swaps are retried on the
//!      new metadata by the server and by the Lake alike (the same backoff); a commit the
//!      server answers 409 after `write.commit_retries` lost swaps is sent again by the client,
//!      as pyiceberg and Iceberg Java do.
//!
//! Printed per phase: p50, p99, operations/s, the ratio REST/direct, and lost swaps. Only the
//! release profile's figures belong in BENCHMARKS.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tokio_util::sync::CancellationToken;

use crate::bench_cdc::percentile;

/// What `tarn bench catalog` was asked to do.
#[derive(Debug, Clone)]
pub struct CatalogBenchOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// Timed operations per client and phase.
    pub operations: usize,
    /// Catalog on a private PostgreSQL instead of SQLite.
    pub postgres: bool,
    /// Where the lake (and the private PostgreSQL) go; cleared first.
    pub dir: PathBuf,
}

/// Latencies (seconds, sorted) and the wall time of one phase.
struct Measured {
    latencies: Vec<f64>,
    wall: f64,
}

impl Measured {
    fn ops_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<22} p50 {:>8.2} ms   p99 {:>8.2} ms   {:>9.0} ops/s",
            percentile(&self.latencies, 0.5) * 1e3,
            percentile(&self.latencies, 0.99) * 1e3,
            self.ops_per_second()
        )
    }
}

/// Runs `op(client, i)` `operations` times on each of `clients` tasks at once (after `warmup`
/// untimed operations each).
async fn measure<F, Fut>(clients: usize, operations: usize, warmup: usize, op: F) -> Result<Measured>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    for client in 0..clients {
        for i in 0..warmup {
            op(client, i).await?;
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(operations);
            for i in 0..operations {
                let t = Instant::now();
                op(client, warmup + i).await?;
                latencies.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(clients * operations);
    for task in tasks {
        latencies.extend(task.await.context("a benchmark client panicked")??);
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Measured { latencies, wall })
}

/// One HTTP request to the catalog; an error unless the status is `expect`.
async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<String>,
    expect: u16,
) -> Result<String> {
    let mut builder = http.request(method.clone(), url);
    if let Some(body) = body {
        builder = builder.header("Content-Type", "application/json").body(body);
    }
    let response = builder.send().await.with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != expect {
        bail!("{method} {url}: {status}: {text}");
    }
    Ok(text)
}

fn counter(lake_metric: &str, handle: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with(lake_metric) && l[lake_metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs the benchmark; see the module doc.
pub async fn run(base: &Config, options: &CatalogBenchOptions) -> Result<()> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.storage.warehouse = None;
    config.catalog.url = None;
    let _postgres;
    if options.postgres {
        let pg_dir = dir.join("postgres");
        let pg = tokio::task::spawn_blocking(move || {
            tarn_cdc::postgres::local::LocalPostgres::start_scratch(&pg_dir)
        })
        .await??;
        pg.psql("postgres", "CREATE DATABASE catalog")?;
        config.catalog.url = Some(pg.url("catalog"));
        _postgres = pg;
    }
    config.validate()?;
    // The counters of lost swaps are read from the recorder `tarn` installs for every command;
    // a recorder of our own when none is installed (tests calling this directly).
    let metrics = crate::serve::install_metrics().ok();
    let lake = Lake::open(&config).await?;
    let session = TarnSession::new(lake.clone()).await?;
    let clients = options.clients.max(1);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "tarn bench catalog: {clients} clients x {} operations per phase, catalog {}, {cores} cores",
        options.operations,
        if options.postgres {
            "PostgreSQL (private)"
        } else {
            "SQLite"
        }
    );
    let mut setup = String::from("CREATE SCHEMA bench;");
    for t in 0..=clients {
        setup.push_str(&format!(
            "CREATE TABLE bench.t{t} (id BIGINT NOT NULL, name VARCHAR, amount DOUBLE);\
             INSERT INTO bench.t{t} VALUES (1, 'a', 1.0), (2, 'b', 2.0);\
             INSERT INTO bench.t{t} VALUES (3, 'c', 3.0);"
        ));
    }
    for statement in TarnSession::prepare(&setup)? {
        session.run(&statement).await?;
    }
    let shared_table = clients; // bench.t{clients}: the contended one

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rest = tarn_rest_catalog::RestCatalogOptions::for_config(&lake, &config);
    let prefix = rest.prefix.clone();
    let app = axum::Router::new().nest("/iceberg", tarn_rest_catalog::router(lake.clone(), rest));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
    });
    let base_url = format!("http://{addr}/iceberg/v1/{prefix}/namespaces/bench/tables");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let ident = |t: usize| tarn_lake::parse_table_name(&format!("bench.t{t}"));
    let mut uuids = HashMap::new();
    for t in 0..=clients {
        let table = lake.load_table(&ident(t)?).await?;
        uuids.insert(t, table.metadata().uuid().to_string());
    }
    let uuids = Arc::new(uuids);
    let warmup = 10.min(options.operations);
    let lost = |m: &Option<metrics_exporter_prometheus::PrometheusHandle>, name: &str| {
        m.as_ref().map_or(0, |h| counter(name, h))
    };

    let mut summary = Vec::new();
    for (phase, shared) in [
        ("loadTable", false),
        ("commit, own table", false),
        ("commit, one table", true),
    ] {
        println!("\n== {phase}: {clients} clients ==");
        let table_of = move |client: usize| if shared { shared_table } else { client };
        let load = phase == "loadTable";
        let lake_before = lost(&metrics, "tarn_commit_conflicts_total");
        let direct = {
            let lake = lake.clone();
            measure(clients, options.operations, warmup, move |client, i| {
                let lake = lake.clone();
                async move {
                    let ident = tarn_lake::parse_table_name(&format!("bench.t{}", table_of(client)))?;
                    if load {
                        lake.load_table(&ident).await?;
                    } else {
                        let props = HashMap::from([(format!("bench.direct.c{client}"), i.to_string())]);
                        lake.set_properties(&ident, props).await?;
                    }
                    Ok(())
                }
            })
            .await?
        };
        let lake_lost = lost(&metrics, "tarn_commit_conflicts_total") - lake_before;
        let rest_before = lost(&metrics, tarn_rest_catalog::COMMIT_CONFLICTS_METRIC);
        let answered_409 = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rest = {
            let (http, base_url, uuids) = (http.clone(), base_url.clone(), uuids.clone());
            let answered_409 = answered_409.clone();
            measure(clients, options.operations, warmup, move |client, i| {
                let (http, base_url, uuids) = (http.clone(), base_url.clone(), uuids.clone());
                let client_retries = answered_409.clone();
                async move {
                    let t = table_of(client);
                    let url = format!("{base_url}/t{t}");
                    if load {
                        request(&http, reqwest::Method::GET, &url, None, 200).await?;
                    } else {
                        let body = serde_json::json!({
                            "requirements": [{"type": "assert-table-uuid", "uuid": uuids[&t]}],
                            "updates": [{"action": "set-properties",
                                         "updates": {format!("bench.rest.c{client}"): i.to_string()}}]
                        });
                        // As pyiceberg and Iceberg Java do: a commit answered 409 (the server
                        // ran out of retries under contention) is sent again.
                        loop {
                            match request(&http, reqwest::Method::POST, &url, Some(body.to_string()), 200)
                                .await
                            {
                                Ok(_) => break,
                                Err(e) if e.to_string().contains(": 409: ") => {
                                    client_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Ok(())
                }
            })
            .await?
        };
        let rest_lost = lost(&metrics, tarn_rest_catalog::COMMIT_CONFLICTS_METRIC) - rest_before;
        println!("{}", direct.line("SQL catalog (direct)"));
        println!("{}", rest.line("REST catalog (HTTP)"));
        let p50 = percentile(&rest.latencies, 0.5) / percentile(&direct.latencies, 0.5);
        let p99 = percentile(&rest.latencies, 0.99) / percentile(&direct.latencies, 0.99);
        let throughput = rest.ops_per_second() / direct.ops_per_second();
        println!("ratio REST/direct: p50 {p50:.2}  p99 {p99:.2}  throughput {throughput:.2}");
        if !load {
            println!(
                "lost catalog swaps, retried on the new metadata: direct {lake_lost}, REST {rest_lost}; \
                 REST commits answered 409 and sent again by the client: {}",
                answered_409.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        summary.push((phase, direct, rest));
    }
    shutdown.cancel();
    server.await.context("the REST catalog task panicked")??;

    println!("\n== summary ({clients} clients) ==");
    println!(
        "{:<20} {:>22} {:>22} {:>22}",
        "", "p50 direct/REST ms", "p99 direct/REST ms", "ops/s direct/REST"
    );
    for (phase, direct, rest) in &summary {
        println!(
            "{phase:<20} {:>22} {:>22} {:>22}",
            format!(
                "{:.2} / {:.2}",
                percentile(&direct.latencies, 0.5) * 1e3,
                percentile(&rest.latencies, 0.5) * 1e3
            ),
            format!(
                "{:.2} / {:.2}",
                percentile(&direct.latencies, 0.99) * 1e3,
                percentile(&rest.latencies, 0.99) * 1e3
            ),
            format!("{:.0} / {:.0}", direct.ops_per_second(), rest.ops_per_second())
        );
    }
    println!(
        "\npeak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}
