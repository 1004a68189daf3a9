//! The demo's data flow end to end: the shop's workload → PostgreSQL → CDC → Iceberg, with the
//! lake compared to the database row for row through tarn's Postgres wire endpoint (a real
//! client, tokio-postgres); and `tarn demo` itself as a process, stopped by `--duration` and by
//! SIGINT.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cdc::Cdc;

const SHOP_TABLES: [&str; 5] = ["customers", "products", "orders", "order_items", "payments"];

/// A PostgreSQL LSN (`16/B374D848`) as a number.
fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap();
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// Every row of `sql` as one string per row, sorted: a multiset, whatever order rows come in.
async fn sorted_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let rows = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out: Vec<String> = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i).unwrap_or_else(|| "<null>".into()))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    out.sort();
    out
}

/// Asserts that every shop table of the lake (namespace `shop`, read through tarn's Postgres
/// wire endpoint) holds exactly PostgreSQL's rows, every column compared. Timestamps compare
/// as microseconds since the epoch, everything else as text. Returns the row counts.
async fn assert_lake_equals_source(
    source: &tokio_postgres::Client,
    lake: &tokio_postgres::Client,
) -> Vec<(String, usize)> {
    let mut counts = Vec::new();
    for table in SHOP_TABLES {
        let columns: Vec<(String, String)> = source
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(!columns.is_empty(), "{table} has columns");
        let (mut pg_cols, mut lake_cols) = (Vec::new(), Vec::new());
        for (name, data_type) in &columns {
            if data_type.starts_with("timestamp") {
                pg_cols.push(format!("((extract(epoch from {name}) * 1000000)::bigint)::text"));
                lake_cols.push(format!("CAST(CAST({name} AS BIGINT) AS VARCHAR)"));
            } else {
                pg_cols.push(format!("{name}::text"));
                lake_cols.push(format!("CAST({name} AS VARCHAR)"));
            }
        }
        let want = sorted_rows(
            source,
            &format!("SELECT {} FROM public.{table}", pg_cols.join(", ")),
        )
        .await;
        let got = sorted_rows(
            lake,
            &format!("SELECT {} FROM shop.{table}", lake_cols.join(", ")),
        )
        .await;
        if want != got {
            let only_source: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
            let only_lake: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
            panic!(
                "shop.{table}: the lake ({} rows) differs from PostgreSQL ({} rows)\n\
                 only in PostgreSQL: {only_source:#?}\nonly in the lake: {only_lake:#?}",
                got.len(),
                want.len()
            );
        }
        counts.push((table.to_string(), want.len()));
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shop_workload_through_cdc_equals_the_database_over_pgwire() {
    // The source: the shop's schema and reference data in a private PostgreSQL.
    let mut cdc = Cdc::new("").await;
    cdc.set("cdc.namespace", "shop");
    cdc.set("cdc.exclude", "[\"public.shop_*\"]");
    let source_url = cdc.pg.url("app");
    let pool = shop::config::DatabaseSettings::from_url(&source_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    shop::migrate::up(&pool, &shop::migrate::MigrationSet::embedded().unwrap())
        .await
        .unwrap();
    shop::seed::seed(&shop::db::Db::new(pool.clone()), 300, 60)
        .await
        .unwrap();

    // The shop's HTTP service, and CDC from the start (the snapshot copies the seed data).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shop_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_shop = CancellationToken::new();
    let shop_task = tokio::spawn(shop::serve(
        listener,
        pool.clone(),
        stop_shop.clone().cancelled_owned(),
    ));
    let running = cdc.start().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.status.report().state != "streaming" {
        let report = running.status.report();
        assert!(
            Instant::now() < deadline && report.state != "failed",
            "the pipeline did not start streaming: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The workload: orders placed, items changed, paid, shipped, cancelled, deleted, refunded.
    let options = shop::load::LoadOptions {
        url: shop_url,
        rate: 100.0,
        duration: Duration::from_secs(6),
        concurrency: 16,
        ..Default::default()
    };
    let summary = shop::load::run(&options, |_| {}).await.unwrap();
    assert!(summary.ok > 200, "the workload did too little: {summary}");
    stop_shop.cancel();
    shop_task.await.unwrap().unwrap();
    pool.close().await;

    // Catch-up: the slot's confirmed position (tarn acknowledges only what the lake holds)
    // reaches the end of the WAL after the last write — the insert position: with
    // asynchronous commit the write position may still be behind the last commits.
    let source = client(&source_url).await;
    let target: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let confirmed: Option<String> = source
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'tarn_main'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if confirmed.as_deref().is_some_and(|c| lsn(c) >= lsn(&target)) {
            break;
        }
        let report = running.status.report();
        assert!(
            Instant::now() < deadline && report.state != "failed",
            "CDC did not catch up with {target} (slot at {confirmed:?}): {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = running.status.report().events_total;

    // tarn's Postgres wire endpoint over the lake; the comparison goes through it.
    let config = crate::config_for(cdc.lake.path(), &[("auth.trust_loopback", "true")]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop_pgwire = CancellationToken::new();
    let pgwire = tokio::spawn(tarn_pgwire::run(
        listener,
        cdc.lake.session.clone(),
        config.auth.clone(),
        config.server.max_connections,
        stop_pgwire.clone(),
    ));
    let lake = client(&format!("postgres://tester@127.0.0.1:{port}/tarn")).await;
    let counts = assert_lake_equals_source(&source, &lake).await;
    let rows: usize = counts.iter().map(|(_, n)| n).sum();
    assert!(
        counts.iter().all(|(_, n)| *n > 0),
        "every table has rows: {counts:?}"
    );
    // More changes than rows: updates and deletes went through, not only inserts.
    assert!(
        events > rows as u64,
        "{events} changes for {rows} rows: {counts:?}"
    );
    let statuses: Vec<String> = lake
        .query("SELECT DISTINCT status FROM shop.orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        statuses.iter().any(|s| s != "pending"),
        "orders changed status: {statuses:?}"
    );
    // A join over lake tables answers as the same join in PostgreSQL.
    let revenue = "SELECT CAST(p.sku AS VARCHAR), CAST(sum(i.quantity * i.unit_price) AS VARCHAR) \
                   FROM {ns}order_items i JOIN {ns}products p ON p.id = i.product_id GROUP BY p.sku";
    assert_eq!(
        sorted_rows(&lake, &revenue.replace("{ns}", "shop.")).await,
        sorted_rows(&source, &revenue.replace("{ns}", "public.")).await,
        "revenue per product"
    );

    stop_pgwire.cancel();
    pgwire.await.unwrap().unwrap();
    running.stop().await;
}

/// Waits for `child` to exit, killing it after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            eprintln!("{}", crate::thread_stacks(child.id()));
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `tarn demo` with the lake in `dir`, its output in `dir/demo.out`.
fn spawn_demo(dir: &Path, args: &[&str]) -> Child {
    let out = std::fs::File::create(dir.join("demo.out")).unwrap();
    Command::new(crate::tarn_bin())
        .arg("demo")
        .arg("--dir")
        .arg(dir.join("lake"))
        .args(args)
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap()
}

fn demo_output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("demo.out")).unwrap_or_default()
}

/// What every successful demo prints, and the lake it leaves behind.
fn assert_demo_matched(dir: &Path, status: Option<ExitStatus>) {
    let output = demo_output(dir);
    assert!(
        status.is_some_and(|s| s.success()),
        "tarn demo exited with {status:?}:\n{output}"
    );
    assert!(
        output.contains("the lake matches PostgreSQL"),
        "no match reported:\n{output}"
    );
    for table in SHOP_TABLES {
        let line = output
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{table} ")))
            .unwrap_or_else(|| panic!("no comparison line for {table}:\n{output}"));
        assert!(line.ends_with("equal"), "{line}");
    }
    // The private PostgreSQL is gone with its temporary directory.
    let pg_dir = output
        .lines()
        .find_map(|l| l.split_once(", data in ").map(|(_, d)| d.trim().to_string()))
        .unwrap_or_else(|| panic!("no PostgreSQL directory printed:\n{output}"));
    assert!(!Path::new(&pg_dir).exists(), "{pg_dir} was not removed");
    // The lake stays readable in the data directory (read in this process).
    let rows = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let config = crate::config_for(&dir.join("lake"), &[]);
        let lake = tarn_lake::Lake::open(&config).await.unwrap();
        let session = tarn_query::TarnSession::new(lake).await.unwrap();
        crate::query(&session, "SELECT count(*) FROM shop.orders")
            .await
            .unwrap()
    });
    let orders: u64 = rows[0].parse().unwrap();
    assert!(orders > 0, "{rows:?}");
}

#[test]
fn tarn_demo_for_60s_ends_with_the_lake_matching_the_database() {
    let dir = tempfile::Builder::new().prefix("tarn-demo-").tempdir().unwrap();
    let mut child = spawn_demo(dir.path(), &["--duration", "60s"]);
    let status = wait_exit(&mut child, Duration::from_secs(240));
    let output = demo_output(dir.path());
    assert!(
        output.contains("CDC: initial snapshot") && output.contains("psql postgres://demo@127.0.0.1:"),
        "{output}"
    );
    assert!(output.contains("in the lake ("), "no live line:\n{output}");
    assert_demo_matched(dir.path(), status);
}

#[test]
fn tarn_demo_stops_cleanly_on_sigint() {
    let dir = tempfile::Builder::new().prefix("tarn-demo-").tempdir().unwrap();
    let mut child = spawn_demo(dir.path(), &["--rate", "100"]);
    // Interrupt once the live line has shown orders twice (every 5 s without a terminal).
    let deadline = Instant::now() + Duration::from_secs(180);
    while demo_output(dir.path()).matches("in the lake (").count() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "tarn demo exited early:\n{}",
            demo_output(dir.path())
        );
        assert!(
            Instant::now() < deadline,
            "no live line within 180 s:\n{}",
            demo_output(dir.path())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(180));
    assert!(
        demo_output(dir.path()).contains("stopping (Ctrl-C"),
        "{}",
        demo_output(dir.path())
    );
    assert_demo_matched(dir.path(), status);
}
