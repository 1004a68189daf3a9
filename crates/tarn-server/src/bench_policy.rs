//! `tarn bench policy`: the latency policies add to a statement, beside the same statements
//! with no policy, in the same run on the same lake.
//!
//! 1. A fresh lake with `sales.orders` and `sales.customers` (a few thousand rows each).
//! 2. The same statements — a row-filtered aggregate, a masked point lookup, a join of both —
//!    run round-robin, each iteration once per mode, so every mode sees the same caches and
//!    machine load:
//!    - `off`: no policy (tarn before policies);
//!    - `rego`: the example policy of docs/governance.md evaluated in process (regorus), as
//!      an analyst: every statement is authorized, filtered and masked;
//!    - `rego+audit`: the same, with the audit trail on (records buffered, appended every
//!      second by its own task);
//!    - `opa`: the same policy behind an HTTP server in this process speaking OPA's data API
//!      (`POST /v1/data/trino/<rule>`), asked by tarn's OPA client over loopback: the cost of
//!      an external OPA minus OPA's own evaluation (no OPA server binary here; point
//!      `--opa-url` at a real one to measure it, with the same policy loaded).
//! 3. Printed per mode: p50 and p99 of the statement latency (plan, execute, collect), and
//!    the latency added over `off` at each; then the same for DataFusion's analyzer alone on
//!    each statement's plan (where the policy rule runs), which isolates the policy's cost
//!    from execution's noise. Only the release profile's figures belong in
//!    BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_policy::{Decide, OpaServer, Policy, RegoPolicy, Rule};
use tarn_query::TarnSession;
use tarn_query::audit::AuditSettings;
use tokio_util::sync::CancellationToken;

use crate::bench_cdc::percentile;

/// The policy measured: docs/governance.md's example (grants, a row filter, a mask).
pub const POLICY: &str = r#"
package trino

import rego.v1

default allow := false

admin if "admin" in input.context.identity.groups
analyst if "analyst" in input.context.identity.groups

allow if admin
allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas"}
allow if {
	analyst
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns"}
	input.action.resource.table.schemaName == "sales"
}

rowFilters contains {"expression": "region = 'eu'"} if {
	not admin
	input.action.resource.table.tableName == "orders"
}

columnMask := {"expression": "'****' || right(email, 4)"} if {
	not admin
	input.action.resource.column.tableName == "customers"
	input.action.resource.column.columnName == "email"
}
"#;

/// The statements measured.
const STATEMENTS: [&str; 3] = [
    "SELECT region, count(*), sum(amount) FROM sales.orders GROUP BY region",
    "SELECT id, email FROM sales.customers WHERE id = 42",
    "SELECT c.email, o.amount FROM sales.orders o JOIN sales.customers c ON o.customer = c.id WHERE o.id < 20 ORDER BY o.id",
];

/// What `tarn bench policy` was asked to do.
#[derive(Debug, Clone)]
pub struct PolicyBenchOptions {
    /// Timed rounds (each runs every statement once per mode).
    pub iterations: usize,
    /// Where the lake goes (cleared first).
    pub dir: PathBuf,
    /// A real OPA server holding [`POLICY`], instead of the in-process stand-in.
    pub opa_url: Option<String>,
}

/// The in-process stand-in for an OPA server: OPA's data API over `policy`.
async fn serve_opa(
    policy: Arc<RegoPolicy>,
    shutdown: CancellationToken,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::extract::{Path, State};
    use axum::routing::post;
    async fn decide(
        State(policy): State<Arc<RegoPolicy>>,
        Path(rule): Path<String>,
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        let rule = match rule.as_str() {
            "allow" => Rule::Allow,
            "batch" => Rule::Batch,
            "rowFilters" => Rule::RowFilters,
            "columnMask" => Rule::ColumnMask,
            _ => Rule::BatchColumnMasks,
        };
        let input = body.get("input").cloned().unwrap_or_default();
        match policy.query(rule, &input) {
            Ok(Some(result)) => axum::Json(serde_json::json!({ "result": result })),
            _ => axum::Json(serde_json::json!({})),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/v1/data/trino/{rule}", post(decide))
        .with_state(policy);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((format!("http://{addr}"), task))
}

/// The time DataFusion's analyzer takes on `sql`'s plan in `session`: with a policy, the
/// policy rule's decisions and rewrites, isolated from execution's noise.
async fn time_analysis(session: &TarnSession, sql: &str) -> Result<f64> {
    let state = session.context().state();
    let plan = state.create_logical_plan(sql).await?;
    let run = || async {
        let started = Instant::now();
        state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64() * 1e3)
    };
    tarn_query::governance::with_principal(session.principal(), run()).await
}

async fn time(session: &TarnSession, sql: &str) -> Result<f64> {
    let started = Instant::now();
    session.sql_collect(sql).await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn report(title: &str, modes: &[(&str, TarnSession)], samples: &mut [Vec<f64>]) {
    for l in samples.iter_mut() {
        l.sort_by(f64::total_cmp);
    }
    let (off50, off99) = (percentile(&samples[0], 0.5), percentile(&samples[0], 0.99));
    println!("{title}");
    println!(
        "  {:<12} {:>9} {:>9} {:>12} {:>12}",
        "mode", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms"
    );
    for ((name, _), l) in modes.iter().zip(samples.iter()) {
        let (p50, p99) = (percentile(l, 0.5), percentile(l, 0.99));
        println!(
            "  {name:<12} {p50:>9.3} {p99:>9.3} {:>12.3} {:>12.3}",
            p50 - off50,
            p99 - off99
        );
    }
}

/// Runs the benchmark (module doc).
pub async fn run(base: &Config, options: &PolicyBenchOptions) -> Result<()> {
    if options.iterations == 0 {
        bail!("--iterations must be positive");
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
    config.validate()?;
    let lake = Lake::open(&config).await?;
    let operator = TarnSession::new(lake.clone()).await?;
    let mut setup = String::from(
        "CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id BIGINT, customer BIGINT, region VARCHAR, amount BIGINT);
         CREATE TABLE sales.customers (id BIGINT, email VARCHAR, region VARCHAR);",
    );
    setup.push_str(
        "INSERT INTO sales.orders SELECT value, value % 500, CASE WHEN value % 3 = 0 THEN 'us' ELSE 'eu' END, value * 7 FROM generate_series(1, 5000);
         INSERT INTO sales.customers SELECT value, 'user' || value || '@example.com', 'eu' FROM generate_series(1, 500);",
    );
    operator.sql_collect(&setup).await?;

    let analyst = tarn_auth::Principal {
        user: "ana".into(),
        groups: vec!["analyst".into()],
        method: tarn_auth::Method::Trusted,
    };
    let rego = Arc::new(RegoPolicy::from_sources(
        vec![("bench.rego".into(), POLICY.into())],
        "trino",
    )?);
    let shutdown = CancellationToken::new();
    let (opa_url, opa_task) = match &options.opa_url {
        Some(url) => (url.clone(), None),
        None => {
            let (url, task) = serve_opa(rego.clone(), shutdown.clone()).await?;
            (url, Some(task))
        }
    };
    let in_process = Policy::new(rego.clone() as Arc<dyn Decide>);
    let opa = Policy::new(Arc::new(OpaServer::new(
        &opa_url,
        "trino",
        std::time::Duration::from_secs(5),
    )?));
    let audit = AuditSettings {
        flush_interval: std::time::Duration::from_secs(1),
        ..AuditSettings::default()
    };
    let modes: Vec<(&str, TarnSession)> = vec![
        ("off", TarnSession::new(lake.clone()).await?),
        (
            "rego",
            TarnSession::with_policy(lake.clone(), Some(in_process.clone()))
                .await?
                .for_principal(analyst.clone()),
        ),
        (
            "rego+audit",
            TarnSession::with_governance(lake.clone(), Some(in_process), Some(audit))
                .await?
                .for_principal(analyst.clone()),
        ),
        (
            "opa",
            TarnSession::with_policy(lake.clone(), Some(opa))
                .await?
                .for_principal(analyst),
        ),
    ];
    // The policy is applied, not just asked: the analyst sees masked addresses.
    let results = modes[1].1.sql_collect(STATEMENTS[1]).await?;
    let batches: Vec<_> = results.into_iter().flat_map(|(_, b, _)| b).collect();
    let shown = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    if !shown.contains("****") || shown.contains("user42@") {
        bail!("the policy did not mask the analyst's read:\n{shown}");
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "tarn bench policy: {} statements x {} iterations per mode, {cores} cores, OPA at {}",
        STATEMENTS.len(),
        options.iterations,
        if options.opa_url.is_some() {
            opa_url.as_str()
        } else {
            "an in-process HTTP stand-in"
        }
    );
    // Warm-up: caches, the first plan of each statement.
    for (_, session) in &modes {
        for sql in STATEMENTS {
            time(session, sql).await?;
        }
    }
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut analyses: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..options.iterations {
        for sql in STATEMENTS {
            for (i, (_, session)) in modes.iter().enumerate() {
                latencies[i].push(time(session, sql).await?);
                analyses[i].push(time_analysis(session, sql).await?);
            }
        }
    }
    report("statement (plan, execute, collect)", &modes, &mut latencies);
    report(
        "analysis only (the policy rule's decisions and rewrites)",
        &modes,
        &mut analyses,
    );
    for (_, session) in &modes {
        session.close().await?;
    }
    shutdown.cancel();
    if let Some(task) = opa_task {
        let _ = task.await;
    }
    Ok(())
}
