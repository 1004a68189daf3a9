//! `tarn bench federation`: a federated join — a lake fact table × a dimension table living
//! in PostgreSQL — beside the same query run by PostgreSQL over copies of both tables, and by
//! tarn over lake-only copies of both, in the same run, on the same data.
//!
//! A private PostgreSQL is started from the system's binaries in the benchmark's directory; it
//! is attached as external catalog `live` ([`tarn_query::federation`]). Each of the three runs
//! gets one warm-up and `--runs` timed runs, the best reported; the three answers must be the
//! same rows, or the benchmark fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tarn_cdc::postgres::local::LocalPostgres;
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tarn_query::federation::ExternalCatalogSettings;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FederationBenchOptions {
    /// Rows of the lake's fact table (`orders`).
    pub facts: u64,
    /// Rows of the live dimension table (`customers`).
    pub dimensions: u64,
    /// Timed runs per engine; the best is reported.
    pub runs: usize,
    /// Where the lake and the private PostgreSQL go (cleared first).
    pub dir: PathBuf,
}

/// The query, with `{orders}` and `{customers}` replaced per engine.
const QUERY: &str = "SELECT c.region, count(*) AS orders, sum(o.amount) AS amount \
                     FROM {orders} o JOIN {customers} c ON o.customer_id = c.id \
                     WHERE c.segment = 'b2b' GROUP BY c.region ORDER BY c.region";

/// Runs the benchmark (module doc).
pub async fn run(base: &Config, options: &FederationBenchOptions) -> Result<()> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let pg_dir = dir.join("postgres");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start_scratch(&pg_dir)).await??;
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let (facts, dims) = (options.facts, options.dimensions);
    client
        .batch_execute(&format!(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL, segment TEXT NOT NULL);
             INSERT INTO customers SELECT i, 'customer ' || i, 'region ' || (i % 20), CASE WHEN i % 4 = 0 THEN 'b2b' ELSE 'b2c' END
               FROM generate_series(1, {dims}) i;
             CREATE TABLE orders (id BIGINT, customer_id BIGINT, amount BIGINT);
             INSERT INTO orders SELECT i, i % {dims} + 1, i % 997 FROM generate_series(1, {facts}) i;
             ANALYZE customers; ANALYZE orders;"
        ))
        .await
        .context("cannot load the PostgreSQL tables")?;

    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.storage.warehouse = None;
    config.catalog.url = None;
    config.validate()?;
    let lake = Lake::open(&config).await?;
    let session = TarnSession::new(lake)
        .await?
        .with_external_catalogs(vec![ExternalCatalogSettings::new("live", &pg.url("postgres"))])?;
    for sql in [
        "CREATE SCHEMA bench".to_string(),
        "CREATE TABLE bench.orders (id BIGINT, customer_id BIGINT, amount BIGINT)".to_string(),
        format!(
            "INSERT INTO bench.orders SELECT value, value % {dims} + 1, value % 997 FROM generate_series(1, {facts})"
        ),
        "CREATE TABLE bench.customers AS SELECT * FROM live.public.customers".to_string(),
    ] {
        collect(&session, &sql).await?;
    }
    println!("federation: lake fact table of {facts} rows × dimension table of {dims} rows");

    let federated = QUERY
        .replace("{orders}", "bench.orders")
        .replace("{customers}", "live.public.customers");
    let lake_only = QUERY
        .replace("{orders}", "bench.orders")
        .replace("{customers}", "bench.customers");
    // PostgreSQL's sum of a bigint is a numeric; the same value as a bigint for the client.
    let postgres = QUERY
        .replace("{orders}", "orders")
        .replace("{customers}", "customers")
        .replace("sum(o.amount)", "sum(o.amount)::bigint");

    let runs = options.runs.max(1);
    let (t_fed, rows_fed) = best(runs, || collect(&session, &federated)).await?;
    let (t_lake, rows_lake) = best(runs, || collect(&session, &lake_only)).await?;
    let (t_pg, rows_pg) = best(runs, || async {
        let rows = client.query(&postgres, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2)
                )
            })
            .collect())
    })
    .await?;
    if rows_fed != rows_lake || rows_fed != rows_pg {
        bail!("the answers differ: federated {rows_fed:?}, lake-only {rows_lake:?}, PostgreSQL {rows_pg:?}");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  best of {runs} runs, {} result rows, the same in all three",
        rows_fed.len()
    );
    println!("  tarn federated (lake × live)   {:>9.1} ms", ms(t_fed));
    println!(
        "  tarn lake-only copies          {:>9.1} ms   federated / lake-only   {:.2}",
        ms(t_lake),
        ms(t_fed) / ms(t_lake).max(0.001)
    );
    println!(
        "  PostgreSQL over copies         {:>9.1} ms   federated / PostgreSQL  {:.2}",
        ms(t_pg),
        ms(t_fed) / ms(t_pg).max(0.001)
    );
    drop(client);
    let _ = connection.await;
    drop(pg);
    Ok(())
}

/// The best time of `runs` runs after one warm-up, and the rows of the last.
async fn best<F, Fut>(runs: usize, mut f: F) -> Result<(Duration, Vec<String>)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>>>,
{
    let mut rows = f().await?;
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        rows = f().await?;
        best = best.min(started.elapsed());
    }
    Ok((best, rows))
}

/// Runs `sql`; its rows as `a|b|c` lines.
async fn collect(session: &TarnSession, sql: &str) -> Result<Vec<String>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut lines = Vec::new();
    if let tarn_query::Output::Rows(stream) = session.run_sql(sql).await? {
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .map_err(tarn_query::from_df_error)?;
        let options = FormatOptions::default();
        for batch in &batches {
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<std::result::Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
                lines.push(cells.join("|"));
            }
        }
    }
    Ok(lines)
}
