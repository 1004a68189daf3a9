//! `tarn demo`: tarn's whole data flow on one machine, from nothing.
//!
//! 1. a private PostgreSQL from the system's binaries (a temporary directory, a free loopback
//!    port, `wal_level=logical`);
//! 2. the shop's database: migrations, reference data (`examples/shop`, in process);
//! 3. the shop's HTTP service on a free loopback port;
//! 4. change data capture from that database into the lake's namespace `shop` (initial
//!    snapshot, then streaming), in process;
//! 5. tarn's Postgres wire and HTTP endpoints over the lake (loopback clients trusted);
//! 6. the shop's workload generator at `--rate` operations per second;
//!
//! then a live line (orders in PostgreSQL and in the lake, freshness, changes per second) until
//! Ctrl-C, SIGTERM or `--duration`. Stopping is orderly: the workload and the shop stop, CDC
//! catches up with PostgreSQL's current WAL position and stops, every shop table of the lake is
//! compared with PostgreSQL through the Postgres wire endpoint (all rows, order-independent),
//! then the endpoints and PostgreSQL stop. The exit code is 0 only when the lake equals the
//! database. The lake stays in the data directory, readable with `tarn sql`.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tarn_cdc::pipeline::{PipelineHandle, PipelineStatus, RunOptions};
use tarn_cdc::position::Lsn;
use tarn_cdc::postgres::local::{LocalPostgres, free_port, server_bin_dir};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::{Output, TarnSession};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::output::{Format, print_stream};
use crate::serve::Endpoints;

/// Options of `tarn demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the workload this long, then stop as on Ctrl-C (e.g. `60s`, `5m`); default: until
    /// Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Shop operations the workload generator starts per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Where the lake goes (`catalog.db`, `warehouse/`); default: the data directory, so the
    /// lake stays readable with `tarn sql` afterwards.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the demo's PostgreSQL in `DIR/demo/postgres` when the demo ends, and continue
    /// from it (and the lake's `shop` tables) when it finds one. Without it, PostgreSQL lives
    /// in a temporary directory and every run starts from an empty shop, replacing the
    /// previous demo's `shop` tables.
    #[arg(long)]
    keep: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tarn_core::config::parse_duration("--duration", s).map_err(|e| e.to_string())
}

/// The lake namespace the shop's tables land in, and the pipeline's name.
const NAMESPACE: &str = "shop";
const PIPELINE: &str = "demo";
/// The shop's tables, in the order the comparison reports them.
const TABLES: [&str; 5] = ["customers", "products", "orders", "order_items", "payments"];
const SEED_CUSTOMERS: u64 = 1000;
const SEED_PRODUCTS: u64 = 200;

/// SQL the demo runs over the lake, and prints for the reader to try.
const EXAMPLES: [(&str, &str); 3] = [
    (
        "orders and revenue by status",
        "SELECT status, count(*) AS orders, sum(total) AS revenue FROM shop.orders GROUP BY status ORDER BY orders DESC",
    ),
    (
        "top products by revenue (a join of two lake tables)",
        "SELECT p.name, sum(i.quantity) AS units, sum(i.quantity * i.unit_price) AS revenue \
         FROM shop.order_items i JOIN shop.products p ON p.id = i.product_id \
         GROUP BY p.name ORDER BY revenue DESC LIMIT 5",
    ),
    (
        "revenue per minute, paid orders",
        "SELECT date_trunc('minute', o.created_at) AS minute, count(*) AS orders, sum(pay.amount) AS paid \
         FROM shop.payments pay JOIN shop.orders o ON o.id = pay.order_id \
         WHERE pay.status = 'captured' GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
    ),
];

/// Ctrl-C handling: the first signal stops the demo in order, a second one cuts the waits
/// short (PostgreSQL is still stopped).
#[derive(Clone, Default)]
struct Signals {
    stop: CancellationToken,
    hurry: CancellationToken,
}

impl Signals {
    fn watch(&self) {
        let signals = self.clone();
        tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            signals.stop.cancel();
            crate::serve::shutdown_signal().await;
            signals.hurry.cancel();
        });
    }
}

/// How long the final comparison waits for one table's rows (or tarn's endpoint to accept
/// the connection) before it gives up.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// Progress lines on stdout: steps, and the live line (overwritten in place on a terminal).
struct Console {
    tty: bool,
    live_shown: bool,
}

impl Console {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            live_shown: false,
        }
    }

    /// Ends an overwritten live line, so normal lines start on their own line.
    fn clear_live(&mut self) {
        if self.live_shown {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
            self.live_shown = false;
        }
    }

    fn line(&mut self, text: &str) {
        self.clear_live();
        println!("{text}");
    }

    fn live(&mut self, text: &str) {
        if self.tty {
            print!("\r\x1b[K{text}");
            let _ = std::io::stdout().flush();
            self.live_shown = true;
        } else {
            println!("{text}");
        }
    }

    /// Runs one step, printing what it does and how long it took; `interrupt` cuts it short.
    async fn step<T>(
        &mut self,
        interrupt: &CancellationToken,
        what: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.clear_live();
        print!("• {what} ... ");
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        let result = tokio::select! {
            r = f => r,
            () = interrupt.cancelled() => Err(anyhow::anyhow!("interrupted")),
        };
        match &result {
            Ok(_) => println!("done ({:.1}s)", started.elapsed().as_secs_f64()),
            Err(_) => println!("failed"),
        }
        result
    }
}

async fn connect(what: &str, url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {what} at {}",
                tarn_core::config::redact_url(url)
            )
        })?;
    tokio::spawn(connection);
    Ok(client)
}

/// Binds `addr`, or a free port on the same host when it is taken.
async fn bind_or_free(addr: &str, key: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let host = addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            crate::serve::bind(&format!("{host}:0"), key).await
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr} ({key})")),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs one query through tarn's SQL and returns its first row as text cells.
async fn first_row(session: &TarnSession, sql: &str) -> Result<Vec<Option<String>>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let Output::Rows(stream) = session.run_sql(sql).await? else {
        bail!("expected rows from {sql}");
    };
    let batches = datafusion::physical_plan::common::collect(stream)
        .await
        .map_err(tarn_query::from_df_error)?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    let options = FormatOptions::default();
    batch
        .columns()
        .iter()
        .map(|c| {
            let cell = if c.is_null(0) {
                None
            } else {
                Some(
                    ArrayFormatter::try_new(c.as_ref(), &options)?
                        .value(0)
                        .to_string(),
                )
            };
            Ok(cell)
        })
        .collect()
}

/// What the live line shows, sampled every second.
#[derive(Default)]
struct Samples {
    freshness: Vec<f64>,
    events_per_second: Vec<f64>,
}

/// One observation: orders in PostgreSQL and the lake, freshness, CDC and shop rates.
async fn observe(
    pg: &tokio_postgres::Client,
    session: &TarnSession,
    status: &PipelineStatus,
    load: &Mutex<Option<shop::load::Progress>>,
    started: Instant,
    samples: &mut Samples,
) -> String {
    // The lake first: PostgreSQL, read second, is never behind what the lake shows.
    let lake = first_row(
        session,
        "SELECT count(*), CAST(max(updated_at) AS BIGINT) FROM shop.orders",
    )
    .await
    .unwrap_or_default();
    let source: Option<(i64, Option<i64>)> = pg
        .query_one(
            "SELECT count(*), (extract(epoch from max(updated_at)) * 1000000)::bigint FROM orders",
            &[],
        )
        .await
        .ok()
        .map(|r| (r.get(0), r.get(1)));
    let in_pg = source.map(|(n, _)| n);
    let in_lake = lake.first().cloned().flatten();
    // How far the lake is behind: the newest order change PostgreSQL has that the lake does
    // not show yet (0 when it shows everything).
    let lake_newest = lake.get(1).cloned().flatten().and_then(|m| m.parse::<i64>().ok());
    let freshness = match (source.and_then(|(_, newest)| newest), lake_newest) {
        (Some(source), Some(lake)) => Some((source - lake).max(0) as f64 / 1e6),
        _ => None,
    };
    let report = status.report();
    if let Some(f) = freshness {
        samples.freshness.push(f);
    }
    samples.events_per_second.push(report.events_per_second);
    let shop_rate = load
        .lock()
        .expect("load progress")
        .map_or_else(|| "-".to_string(), |p| format!("{:.0}", p.rate));
    format!(
        "{:>5}s  orders: {} in PostgreSQL, {} in the lake{}  CDC {:.0} changes/s  shop {shop_rate} req/s",
        started.elapsed().as_secs(),
        in_pg.map_or("-".into(), |n| thousands(n.max(0) as u64)),
        in_lake
            .and_then(|n| n.parse::<u64>().ok())
            .map_or("-".into(), thousands),
        freshness.map_or(String::new(), |f| format!(" ({f:.1}s behind)")),
        report.events_per_second,
    )
}

/// A column of a shop table and how both sides render it as comparable text.
struct Column {
    name: String,
    data_type: String,
}

impl Column {
    /// PostgreSQL's expression: timestamps as microseconds since the epoch, the rest as text.
    fn postgres(&self) -> String {
        let q = format!("\"{}\"", self.name.replace('"', "\"\""));
        if self.data_type.starts_with("timestamp") {
            format!("((extract(epoch from {q}) * 1000000)::bigint)::text")
        } else {
            format!("{q}::text")
        }
    }

    /// The same value through tarn's SQL.
    fn lake(&self) -> String {
        let q = format!("\"{}\"", self.name.replace('"', "\"\""));
        if self.data_type.starts_with("timestamp") {
            format!("CAST(CAST({q} AS BIGINT) AS VARCHAR)")
        } else {
            format!("CAST({q} AS VARCHAR)")
        }
    }
}

/// One table's rows on both sides.
struct TableComparison {
    table: String,
    source_rows: usize,
    lake_rows: usize,
    checksum: u64,
    equal: bool,
    /// A few rows only one side has, for the report.
    differences: Vec<String>,
}

/// FNV-1a: a stable 64-bit hash; the sum over rows is the order-independent checksum.
fn fnv1a(text: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in text.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

async fn rows_as_text(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>> {
    let rows = client.query(sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "\u{0}NULL".into())
                })
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect())
}

/// Compares every row of `table` in PostgreSQL (`source`) with the lake's (`lake`, tarn's
/// Postgres wire endpoint), as multisets.
async fn compare_table(
    source: &tokio_postgres::Client,
    lake: &tokio_postgres::Client,
    table: &str,
) -> Result<TableComparison> {
    let columns: Vec<Column> = source
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            data_type: r.get(1),
        })
        .collect();
    if columns.is_empty() {
        bail!("table public.{table} has no columns in PostgreSQL");
    }
    let list = |f: fn(&Column) -> String| columns.iter().map(f).collect::<Vec<_>>().join(", ");
    let mut want = rows_as_text(
        source,
        &format!("SELECT {} FROM public.\"{table}\"", list(Column::postgres)),
    )
    .await
    .with_context(|| format!("reading public.{table} from PostgreSQL"))?;
    let mut got = rows_as_text(
        lake,
        &format!("SELECT {} FROM {NAMESPACE}.\"{table}\"", list(Column::lake)),
    )
    .await
    .with_context(|| format!("reading {NAMESPACE}.{table} through tarn's Postgres wire endpoint"))?;
    want.sort_unstable();
    got.sort_unstable();
    let checksum = want.iter().fold(0u64, |acc, r| acc.wrapping_add(fnv1a(r)));
    let equal = want == got;
    let mut differences = Vec::new();
    if !equal {
        // Walk both sorted lists; collect a few rows only one side has.
        let (mut i, mut j) = (0, 0);
        let show = |r: &str| r.replace('\u{1f}', " | ").replace('\u{0}', "");
        while differences.len() < 6 && (i < want.len() || j < got.len()) {
            match (want.get(i), got.get(j)) {
                (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
                (Some(a), Some(b)) if a < b => {
                    differences.push(format!("only in PostgreSQL: {}", show(a)));
                    i += 1;
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    differences.push(format!("only in the lake:   {}", show(b)));
                    j += 1;
                }
                (Some(a), None) => {
                    differences.push(format!("only in PostgreSQL: {}", show(a)));
                    i += 1;
                }
                (None, None) => break,
            }
        }
    }
    Ok(TableComparison {
        table: table.to_string(),
        source_rows: want.len(),
        lake_rows: got.len(),
        checksum,
        equal,
        differences,
    })
}

/// Makes sure namespace `shop` holds nothing but an earlier demo's tables, and drops those
/// (a fresh PostgreSQL has new positions: the old tables' would skip its changes).
async fn clear_previous_demo(lake: &Lake) -> Result<usize> {
    let ns = iceberg::NamespaceIdent::new(NAMESPACE.to_string());
    let Ok(tables) = lake.list_tables(&ns).await else {
        return Ok(0);
    };
    let mut ours = Vec::new();
    for ident in tables {
        let table = lake.load_table(&ident).await?;
        let from_cdc = tarn_cdc::sink::source_table(&table).is_some();
        let demo_only = table
            .metadata()
            .snapshots()
            .all(|s| tarn_cdc::sink::snapshot_pipeline(&s.summary().additional_properties) == Some(PIPELINE));
        if !(from_cdc && demo_only) {
            bail!(
                "the lake already has table {ident}, which an earlier `tarn demo` did not make; \
                 the demo writes namespace `{NAMESPACE}`: run it with --dir pointing elsewhere"
            );
        }
        ours.push(ident);
    }
    for ident in &ours {
        lake.drop_table(ident, true).await?;
    }
    Ok(ours.len())
}

/// The lake's configuration for the demo: `dir` (if given) as a local lake, CDC from `source`
/// into namespace `shop`, loopback clients trusted.
fn demo_config(base: &Config, dir: Option<&Path>, source: &str) -> Config {
    let mut config = base.clone();
    if let Some(dir) = dir {
        config.data_dir = dir.to_path_buf();
        config.catalog.url = None;
        config.storage.warehouse = None;
    }
    config.cdc.source = Some(source.to_string());
    config.cdc.pipeline = PIPELINE.into();
    config.cdc.slot = None;
    config.cdc.publication = None;
    config.cdc.namespace = NAMESPACE.into();
    config.cdc.table_name = "{table}".into();
    config.cdc.tables = TABLES.iter().map(|t| format!("public.{t}")).collect();
    config.cdc.exclude = Vec::new();
    config.cdc.snapshot = "initial".into();
    config.auth.trust_loopback = true;
    // The demo's own checks connect over loopback without TLS; others may still use TLS.
    if let Some(tls) = &mut config.server.tls {
        tls.require = false;
    }
    config
}

/// Starts the private PostgreSQL: in `DIR/demo/postgres` with `--keep`, else in a temporary
/// directory. Returns it and whether it is new (no shop data yet).
fn start_postgres(data_dir: &Path, keep: bool) -> Result<(LocalPostgres, bool)> {
    server_bin_dir().map_err(|e| {
        anyhow::anyhow!(
            "{e}\n`tarn demo` runs a private PostgreSQL from the system's server binaries (initdb, pg_ctl): \
             install PostgreSQL 10 or later, e.g. `apt-get install postgresql` on Debian or Ubuntu \
             (scripts/setup.sh does)"
        )
    })?;
    let kept = data_dir.join("demo").join("postgres");
    if !keep {
        if kept.exists() {
            std::fs::remove_dir_all(&kept).with_context(|| {
                format!(
                    "cannot remove the previous demo's PostgreSQL in {}",
                    kept.display()
                )
            })?;
        }
        return Ok((LocalPostgres::start_temporary()?, true));
    }
    let fresh = !kept.join("data").join("PG_VERSION").exists();
    let pg = LocalPostgres::start_in(&kept, free_port()?).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(with --keep PostgreSQL lives in {}; without it, in a temporary directory)",
            kept.display()
        )
    })?;
    Ok((pg, fresh))
}

/// Runs `tarn demo`; see the module doc.
pub async fn run(
    args: DemoArgs,
    base: &Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!(
            "--rate: expected operations per second above 0, got {}",
            args.rate
        );
    }
    let signals = Signals::default();
    signals.watch();
    let mut out = Console::new();
    let dir = args.dir.clone().unwrap_or_else(|| base.data_dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    out.line(&format!(
        "tarn demo: a shop on PostgreSQL, its changes streamed into the Iceberg lake in {}, SQL over it",
        dir.display()
    ));
    let demo_started = Instant::now();

    // 1. PostgreSQL and the shop's database.
    let keep = args.keep;
    let (pg, fresh) = out
        .step(&signals.stop, "starting a private PostgreSQL", async {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || start_postgres(&dir, keep)).await?
        })
        .await?;
    let admin = connect("PostgreSQL", &pg.url("postgres")).await?;
    let source_url = pg.url("shop");
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    out.line(&format!(
        "  PostgreSQL {version} on 127.0.0.1:{}, data in {}",
        pg.port(),
        pg.dir().display()
    ));
    out.step(&signals.stop, "creating database shop", async {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = 'shop'", &[])
            .await?
            .is_some();
        if !exists {
            admin.batch_execute("CREATE DATABASE shop").await?;
        }
        Ok(())
    })
    .await?;
    let pg_client = connect("PostgreSQL", &source_url).await?;
    let pool = shop::config::DatabaseSettings::from_url(&source_url)?
        .connect()
        .await
        .context("cannot connect the shop to its database")?;
    let applied = out
        .step(&signals.stop, "applying the shop's migrations", async {
            let set = shop::migrate::MigrationSet::embedded()?;
            Ok(shop::migrate::up(&pool, &set).await?)
        })
        .await?;
    for a in &applied {
        out.line(&format!("  applied {}", a.file));
    }
    let db = shop::db::Db::new(pool.clone());
    out.step(
        &signals.stop,
        &format!("seeding reference data ({SEED_CUSTOMERS} customers, {SEED_PRODUCTS} products)"),
        async {
            let existing: i64 = pg_client
                .query_one("SELECT count(*) FROM customers", &[])
                .await?
                .get(0);
            if existing == 0 {
                shop::seed::seed(&db, SEED_CUSTOMERS, SEED_PRODUCTS).await?;
            }
            Ok(())
        },
    )
    .await?;

    // 2. The shop's HTTP service.
    let shop_stop = CancellationToken::new();
    let shop_listener = TcpListener::bind("127.0.0.1:0").await?;
    let shop_url = format!("http://{}", shop_listener.local_addr()?);
    let shop_task = tokio::spawn(shop::serve(
        shop_listener,
        pool.clone(),
        shop_stop.clone().cancelled_owned(),
    ));
    out.line(&format!("• the shop's HTTP service listens on {shop_url}"));

    // 3. The lake and CDC.
    let config = demo_config(base, args.dir.as_deref(), &source_url);
    let lake = Lake::open(&config).await?;
    if fresh {
        let dropped = clear_previous_demo(&lake).await?;
        if dropped > 0 {
            out.line(&format!(
                "• replaced the previous demo's {dropped} tables in namespace {NAMESPACE}"
            ));
        }
    }
    let session = TarnSession::new(lake.clone()).await?;
    let pipeline = PipelineHandle::spawn(&config, lake.clone(), RunOptions::default());
    out.step(
        &signals.stop,
        &format!("CDC: initial snapshot of the shop's tables into namespace {NAMESPACE}"),
        async {
            pipeline
                .wait_for(
                    "the initial snapshot",
                    Duration::from_secs(600),
                    Some(&signals.hurry),
                    |r| async move { anyhow::Ok(r.state == "streaming") },
                )
                .await
                .map(drop)
        },
    )
    .await?;

    // 4. tarn's endpoints.
    let endpoints_stop = CancellationToken::new();
    let pg_listener = bind_or_free(&config.server.pg_listen, "server.pg_listen").await?;
    let http_listener = bind_or_free(&config.server.http_listen, "server.http_listen").await?;
    let mut endpoints = Endpoints::start(
        &config,
        session.clone(),
        metrics,
        Some(pipeline.status().clone()),
        None,
        (pg_listener, http_listener),
        &endpoints_stop,
    )
    .await?;
    let tarn_url = format!("postgres://demo@{}/{}", endpoints.pg_addr, config.catalog.name);
    out.line(&format!(
        "• tarn serves SQL on {} (Postgres wire) and {}://{} (/metrics, /cdc/status)",
        endpoints.pg_addr,
        if endpoints.tls { "https" } else { "http" },
        endpoints.http_addr
    ));

    // 5. The workload.
    let load_stop = CancellationToken::new();
    let load_progress: Arc<Mutex<Option<shop::load::Progress>>> = Arc::default();
    let load_task = {
        let options = shop::load::LoadOptions {
            url: shop_url.clone(),
            rate: args.rate,
            duration: Duration::MAX,
            ..Default::default()
        };
        let (progress, stop) = (load_progress.clone(), load_stop.clone());
        tokio::spawn(async move {
            shop::load::run_until(
                &options,
                move |p| *progress.lock().expect("load progress") = Some(*p),
                stop.cancelled_owned(),
            )
            .await
        })
    };
    out.line(&format!(
        "• the workload generator drives the shop at {} operations/s (orders, items, payments, shipping, refunds)",
        args.rate
    ));
    out.line("");
    out.line(&format!("Connect while it runs:  psql {tarn_url}"));
    out.line("and try, for example:");
    for (what, sql) in EXAMPLES {
        out.line(&format!("  -- {what}\n  {sql};"));
    }
    out.line("  -- time travel: SELECT snapshot_id, committed_at FROM shop.\"orders$snapshots\", then");
    out.line("  SELECT count(*) FROM shop.orders FOR VERSION AS OF <snapshot_id>;");
    out.line("");
    match args.duration {
        Some(d) => out.line(&format!(
            "Running for {}; Ctrl-C stops earlier.",
            humantime::format_duration(d)
        )),
        None => out.line("Running until Ctrl-C."),
    }

    // 6. The live line, until a signal, --duration or a failure.
    let live_started = Instant::now();
    let until = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut samples = Samples::default();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut examples_shown = false;
    let every = if out.tty { 1 } else { 5 };
    let mut ticks = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let mut pipeline = pipeline;
    loop {
        tokio::select! {
            () = signals.stop.cancelled() => {
                out.line("\nstopping (Ctrl-C again skips the wait for CDC to catch up)");
                break;
            }
            () = async { match until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                out.line(&format!("\n{} passed: stopping", humantime::format_duration(args.duration.unwrap_or_default())));
                break;
            }
            r = endpoints.stopped() => {
                failure = Some(r.err().unwrap_or_else(|| anyhow::anyhow!("an endpoint stopped")));
                break;
            }
            _ = ticker.tick() => {
                if pipeline.is_finished() {
                    let report = pipeline.report();
                    failure = Some(anyhow::anyhow!(
                        "the CDC pipeline stopped: {}",
                        report.last_error.as_deref().unwrap_or("no error reported")
                    ));
                    break;
                }
                if load_task.is_finished() {
                    failure = Some(anyhow::anyhow!("the workload generator stopped by itself"));
                    break;
                }
                ticks += 1;
                let line = observe(&pg_client, &session, pipeline.status(), &load_progress, live_started, &mut samples).await;
                if ticks.is_multiple_of(every) || ticks == 1 {
                    out.live(&line);
                }
                if !examples_shown && live_started.elapsed() >= Duration::from_secs(10) {
                    examples_shown = true;
                    run_examples(&mut out, &session).await;
                }
            }
        }
    }

    // 7. Stop in order: workload, shop, CDC after catching up; compare; endpoints; PostgreSQL.
    let mut matched = false;
    let never = CancellationToken::new();
    let result: Result<()> = async {
        let summary = out
            .step(&signals.hurry, "stopping the workload generator", async {
                load_stop.cancel();
                Ok(load_task.await.context("the workload generator panicked")??)
            })
            .await;
        match &summary {
            Ok(s) => {
                let secs = s.elapsed.as_secs_f64().max(f64::EPSILON);
                out.line(&format!(
                    "  {} operations in {secs:.0}s ({:.0}/s): {} ok, {} conflicts (409, normal), {} errors",
                    thousands(s.requests),
                    s.requests as f64 / secs,
                    thousands(s.ok),
                    thousands(s.conflicts),
                    s.errors
                ));
                for e in s.error_samples.iter().take(3) {
                    out.line(&format!("  error: {e}"));
                }
            }
            Err(e) => out.line(&format!("  {e:#}")),
        }
        out.step(&signals.hurry, "stopping the shop's HTTP service", async {
            shop_stop.cancel();
            shop_task.await.context("the shop panicked")??;
            pool.close().await;
            Ok(())
        })
        .await?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        // Every write is done: the end of PostgreSQL's WAL (the insert position — with
        // asynchronous commit the write position can still be behind the last commits) is
        // after every commit. tarn acknowledges a position to the slot only once the lake
        // holds every change before it, so the slot's confirmed position reaching the target
        // means the lake has caught up.
        let target: String = pg_client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        let target_lsn: Lsn = target
            .parse()
            .with_context(|| format!("PostgreSQL returned LSN {target:?}"))?;
        let slot = config.cdc.slot_name();
        let caught_up = Instant::now();
        // The first Ctrl-C started the stop; a second one cuts the wait short.
        out.step(
            &signals.hurry,
            &format!("CDC: catching up with PostgreSQL's WAL position {target}"),
            async {
                pipeline
                    .wait_for("CDC to catch up", Duration::from_secs(120), Some(&signals.hurry), |_| {
                        let (pg_client, slot) = (&pg_client, &slot);
                        async move {
                            let confirmed: Option<String> = pg_client
                                .query_opt(
                                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                                    &[slot],
                                )
                                .await?
                                .and_then(|r| r.get(0));
                            anyhow::Ok(
                                confirmed
                                    .and_then(|c| c.parse::<Lsn>().ok())
                                    .is_some_and(|c| c >= target_lsn),
                            )
                        }
                    })
                    .await
                    .map(drop)
            },
        )
        .await?;
        let catch_up = caught_up.elapsed();
        let report = pipeline.report();
        out.step(&never, "stopping CDC", async { Ok(pipeline.stop().await?) }).await?;
        let streamed = live_started.elapsed().as_secs_f64().max(f64::EPSILON);
        let mut fresh = samples.freshness.clone();
        fresh.sort_by(f64::total_cmp);
        out.line(&format!(
            "  {} changes applied ({:.0}/s on average, peak {:.0}/s); freshness: the lake was {} behind PostgreSQL (median), {} at most; caught up {:.1}s after the workload stopped",
            thousands(report.events_total),
            report.events_total as f64 / streamed,
            samples.events_per_second.iter().copied().fold(0.0, f64::max),
            fresh.get(fresh.len() / 2).map_or("-".into(), |f| format!("{f:.1}s")),
            fresh.last().map_or("-".into(), |f| format!("{f:.1}s")),
            catch_up.as_secs_f64()
        ));

        // The comparison, through the Postgres wire endpoint.
        let lake_client = tokio::time::timeout(COMPARE_TIMEOUT, connect("tarn's Postgres wire endpoint", &tarn_url))
            .await
            .map_err(|_| anyhow::anyhow!("tarn's Postgres wire endpoint at {tarn_url} did not answer within {} s", COMPARE_TIMEOUT.as_secs()))??;
        let comparisons = out
            .step(&signals.hurry, "comparing every shop table: PostgreSQL vs the lake (through tarn's Postgres wire endpoint)", async {
                let mut all = Vec::new();
                for table in TABLES {
                    // A read that stops answering fails the demo, naming the table, rather
                    // than leaving it waiting.
                    let compared = tokio::time::timeout(COMPARE_TIMEOUT, compare_table(&pg_client, &lake_client, table))
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "comparing {table} took longer than {} s; the lake or PostgreSQL stopped answering",
                                COMPARE_TIMEOUT.as_secs()
                            )
                        })??;
                    all.push(compared);
                }
                Ok(all)
            })
            .await?;
        out.line(&format!("  {:<12} {:>10} {:>10}  {:<18} result", "table", "PostgreSQL", "lake", "checksum"));
        for c in &comparisons {
            out.line(&format!(
                "  {:<12} {:>10} {:>10}  {:016x}  {}",
                c.table,
                thousands(c.source_rows as u64),
                thousands(c.lake_rows as u64),
                c.checksum,
                if c.equal { "equal" } else { "DIFFERENT" }
            ));
            for d in &c.differences {
                out.line(&format!("    {d}"));
            }
        }
        matched = comparisons.iter().all(|c| c.equal);
        if !examples_shown {
            run_examples(&mut out, &session).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        out.line(&format!("error: {e:#}"));
    }

    let _ = out
        .step(&never, "stopping tarn's endpoints", async {
            endpoints_stop.cancel();
            if tokio::time::timeout(Duration::from_secs(10), endpoints.join())
                .await
                .is_err()
            {
                bail!("the endpoints did not stop within 10 s");
            }
            Ok(())
        })
        .await;
    // A pipeline still running (after a failure) stops before its source does.
    if !pipeline.is_finished() {
        let _ = pipeline.stop().await;
    }
    drop((admin, pg_client));
    let kept = if keep { Some(pg.dir().to_path_buf()) } else { None };
    let _ = out
        .step(&never, "stopping PostgreSQL", async {
            tokio::task::spawn_blocking(move || drop(pg)).await?;
            Ok(())
        })
        .await;
    out.line("");
    if matched {
        out.line(&format!(
            "the lake matches PostgreSQL: every row of the {} shop tables is equal ({:.0}s in all)",
            TABLES.len(),
            demo_started.elapsed().as_secs_f64()
        ));
    } else if result.is_ok() {
        out.line("the lake does NOT match PostgreSQL (see above)");
    } else {
        out.line("the demo stopped on an error (see above); the lake was not compared with PostgreSQL");
    }
    out.line(&format!(
        "The lake stays readable: tarn --data-dir {} sql \"SELECT status, count(*) FROM shop.orders GROUP BY status\"",
        dir.display()
    ));
    if let Some(kept) = kept {
        out.line(&format!(
            "PostgreSQL's data stays in {}; `tarn demo --keep` continues from it.",
            kept.display()
        ));
    }
    Ok(if matched && result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the example queries through tarn's SQL and prints their results.
async fn run_examples(out: &mut Console, session: &TarnSession) {
    out.line("");
    for (what, sql) in EXAMPLES {
        out.line(&format!("-- {what}\n{sql};"));
        let mut stdout = std::io::stdout();
        let result = async {
            match session.run_sql(sql).await? {
                Output::Rows(stream) => print_stream(stream, Format::Table, &mut stdout).await.map(|_| ()),
                Output::Command { tag, .. } => {
                    println!("{tag}");
                    Ok(())
                }
            }
        }
        .await;
        if let Err(e) = result {
            out.line(&format!("error: {e:#}"));
        }
    }
    out.line("");
}
