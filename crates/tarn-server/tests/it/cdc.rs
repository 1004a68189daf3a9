//! Change data capture against a real PostgreSQL with logical replication: the initial
//! snapshot, streaming (inserts, updates incl. key changes and TOASTed values, deletes,
//! truncates, multi-table and large transactions), schema changes, refusals, and a crash test
//! that SIGKILLs `tarn cdc run` over and over while a workload runs. The lake is compared with
//! PostgreSQL through tarn's SQL, pyiceberg and DuckDB.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_cdc::pipeline::{PipelineHandle, PipelineStatus, RunOptions};
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_test_utils::{PostgresServer, run_python};
use tokio_util::sync::CancellationToken;

use crate::{TestLake, tarn_bin};

/// A source database and a lake, with a pipeline that can be started and stopped.
pub(crate) struct Cdc {
    pub(crate) pg: PostgresServer,
    pub(crate) lake: TestLake,
    overrides: Vec<(String, String)>,
}

/// A pipeline running in the test's process.
pub(crate) struct Running {
    handle: PipelineHandle,
    pub(crate) status: Arc<PipelineStatus>,
}

impl Running {
    /// The pipeline's first reported error, waiting up to 60 s for one (`what` names the
    /// expected failure in the panic message).
    pub(crate) async fn wait_error(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.status.report().last_error {
                return e;
            }
            assert!(Instant::now() < deadline, "no error within 60 s: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the pipeline; it must stop cleanly within 60 s.
    pub(crate) async fn stop(mut self) {
        self.handle.stop().await.unwrap();
    }

    /// Stops a pipeline that failed: the error it ended with.
    pub(crate) async fn stop_failed(mut self) -> tarn_core::Error {
        self.handle
            .stop()
            .await
            .expect_err("the pipeline ended without an error")
    }
}

impl Cdc {
    pub(crate) async fn new(setup_sql: &str) -> Self {
        crate::init_logs();
        let pg = PostgresServer::start_temporary().unwrap();
        pg.psql("postgres", "CREATE DATABASE app").unwrap();
        if !setup_sql.is_empty() {
            pg.psql("app", setup_sql).unwrap();
        }
        let lake = TestLake::new().await;
        let overrides = vec![
            ("cdc.source".to_string(), pg.url("app")),
            ("cdc.flush.interval".to_string(), "200ms".to_string()),
        ];
        Self { pg, lake, overrides }
    }

    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.overrides.push((key.to_string(), value.to_string()));
    }

    pub(crate) fn config(&self) -> Config {
        let o: Vec<(&str, &str)> = self
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        crate::config_for(self.lake.path(), &o)
    }

    /// Runs SQL against the source database.
    pub(crate) fn sql(&self, sql: &str) -> String {
        self.pg.psql("app", sql).unwrap()
    }

    pub(crate) async fn start(&self) -> Running {
        self.start_with(RunOptions::default()).await
    }

    pub(crate) async fn start_with(&self, options: RunOptions) -> Running {
        self.start_config(self.config(), options).await
    }

    /// Starts a pipeline with `config` (another pipeline beside this one's, say).
    pub(crate) async fn start_config(&self, config: Config, options: RunOptions) -> Running {
        let lake = Lake::open(&config).await.unwrap();
        let handle = PipelineHandle::spawn(&config, lake, options);
        let status = handle.status().clone();
        Running { handle, status }
    }

    /// Rows of `query` in PostgreSQL, `a|b|c` lines with NULL as `NULL`.
    pub(crate) fn source_rows(&self, query: &str) -> Vec<String> {
        let out = Command::new("psql")
            .arg(self.pg.url("app"))
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-P",
                "null=NULL",
                "-c",
                query,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Rows of `query` in the lake through tarn's SQL; `None` while the table is missing, or
    /// when the query takes more than 20 s (the caller's deadline then decides, instead of a
    /// hung test).
    pub(crate) async fn lake_rows(&self, query: &str) -> Option<Vec<String>> {
        let rows = async {
            self.lake.session.refresh().await.ok()?;
            crate::query(&self.lake.session, query).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(20), rows)
            .await
            .ok()
            .flatten()
    }

    /// Waits until `lake_query` over the lake returns what `source_query` returns in
    /// PostgreSQL (both evaluated again each time).
    pub(crate) async fn wait_same(&self, source_query: &str, lake_query: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = (Vec::new(), None);
        while Instant::now() < deadline {
            let want = self.source_rows(source_query);
            let got = self.lake_rows(lake_query).await;
            if got.as_ref() == Some(&want) {
                return;
            }
            last = (want, got);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (want, got) = last;
        let show = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ");
        panic!(
            "the lake did not catch up within {timeout:?}\nsource ({} rows):\n  {}\nlake ({:?} rows):\n  {}",
            want.len(),
            show(&want),
            got.as_ref().map(Vec::len),
            got.as_deref().map(show).unwrap_or_default()
        );
    }

    /// pyiceberg's and DuckDB's rows of lake table `name` (`ns.table`), as sorted string lists.
    pub(crate) fn independent_rows(&self, name: &str) -> (serde_json::Value, serde_json::Value) {
        let uri = format!("sqlite:///{}", self.lake.path().join("catalog.db").display());
        let out = run_python(
            "lake_readers.py",
            &[
                "read",
                "--uri",
                &uri,
                "--warehouse",
                &self.lake.config.warehouse_url(),
                "--name",
                &self.lake.config.catalog.name,
                "--table",
                name,
            ],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (v["pyiceberg"].clone(), v["duckdb"].clone())
    }
}

/// Every kind of change of the SHOP tables: inserts, updates, deletes, key changes (of
/// customer 5 and of the orders `rekeyed` selects), NULLs, TOASTed payloads on orders 1 to 20
/// then updates of other columns only (so the stream carries them as unchanged), and a
/// transaction over both tables.
pub(crate) fn shop_changes(cdc: &Cdc, rekeyed: &str) {
    cdc.sql(
        "INSERT INTO customers VALUES (5001, 'new one', NULL), (5002, 'another', 2);
         UPDATE customers SET name = name || '!' WHERE id % 7 = 0;
         DELETE FROM customers WHERE id % 11 = 0;
         UPDATE customers SET id = 9001 WHERE id = 5;
         UPDATE customers SET tier = NULL WHERE id = 6;",
    );
    cdc.sql(
        "UPDATE orders SET payload = (SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 400) g)
         WHERE id <= 20;",
    );
    cdc.sql("UPDATE orders SET status = 'paid' WHERE id <= 30; UPDATE orders SET status = 'shipped' WHERE id <= 10;");
    cdc.sql(&format!("UPDATE orders SET id = id + 100000 WHERE {rekeyed};"));
    cdc.sql(
        "BEGIN; INSERT INTO customers VALUES (7001, 'txn', 1); UPDATE orders SET customer_id = 7001 WHERE id = 50;
         DELETE FROM orders WHERE id = 51; COMMIT;",
    );
}

/// `source_query` rows as the independent readers print them: sorted lists of strings.
fn as_reader_rows(rows: &[String]) -> serde_json::Value {
    let mut parsed: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|l| {
            l.split('|')
                .map(|c| if c == "NULL" { None } else { Some(c.to_string()) })
                .collect()
        })
        .collect();
    parsed.sort_by(|a, b| {
        let key = |r: &Vec<Option<String>>| {
            r.iter()
                .map(|c| (c.is_none(), c.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        key(a).cmp(&key(b))
    });
    serde_json::to_value(parsed).unwrap()
}

pub(crate) const SHOP: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, tier int);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric(10,2), status text, payload text);
INSERT INTO customers SELECT g, 'customer ' || g, g % 3 FROM generate_series(1, 2000) g;
INSERT INTO orders SELECT g, g % 2000 + 1, (g % 1000) / 10.0, 'new', NULL FROM generate_series(1, 5000) g;
";

pub(crate) const CUSTOMERS_PG: &str =
    "SELECT id, name, coalesce(tier::text, 'NULL') FROM customers ORDER BY id";
pub(crate) const CUSTOMERS_LAKE: &str = "SELECT id, name, tier FROM cdc.customers ORDER BY id";
pub(crate) const ORDERS_PG: &str = "SELECT id, coalesce(customer_id::text, 'NULL'), amount, status, coalesce(md5(payload), 'NULL') FROM orders ORDER BY id";
pub(crate) const ORDERS_LAKE: &str =
    "SELECT id, customer_id, amount, status, md5(payload) FROM cdc.orders ORDER BY id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_every_kind_of_change() {
    let cdc = Cdc::new(SHOP).await;
    let running = cdc.start().await;
    let wait = Duration::from_secs(60);
    cdc.wait_same(CUSTOMERS_PG, CUSTOMERS_LAKE, wait).await;
    cdc.wait_same(ORDERS_PG, ORDERS_LAKE, wait).await;

    // Key changes of orders with TOASTed payloads (ids 1 to 20 get one).
    shop_changes(&cdc, "id <= 3");
    cdc.wait_same(CUSTOMERS_PG, CUSTOMERS_LAKE, wait).await;
    cdc.wait_same(ORDERS_PG, ORDERS_LAKE, wait).await;
    let toasted = cdc
        .lake_rows(
            "SELECT count(*) FROM cdc.orders WHERE length(payload) = 12800 AND status IN ('paid', 'shipped')",
        )
        .await
        .unwrap();
    assert_eq!(toasted, vec!["20"], "unchanged TOASTed payloads kept their value");

    // Truncate, then new rows.
    cdc.sql("TRUNCATE customers; INSERT INTO customers VALUES (1, 'after truncate', 1);");
    cdc.wait_same(CUSTOMERS_PG, CUSTOMERS_LAKE, wait).await;

    // The independent readers see what PostgreSQL has (position deletes applied).
    let want = as_reader_rows(&cdc.source_rows("SELECT id, customer_id, status FROM orders ORDER BY id"));
    running.stop().await;
    let uri_rows = |v: serde_json::Value| -> serde_json::Value {
        let rows: Vec<Vec<serde_json::Value>> = serde_json::from_value(v).unwrap();
        let mut picked: Vec<Vec<Option<String>>> = rows
            .into_iter()
            .map(|r| {
                vec![
                    r[0].as_str().map(String::from),
                    r[1].as_str().map(String::from),
                    r[3].as_str().map(String::from),
                ]
            })
            .collect();
        picked.sort_by(|a, b| {
            let key = |r: &Vec<Option<String>>| {
                r.iter()
                    .map(|c| (c.is_none(), c.clone().unwrap_or_default()))
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        });
        serde_json::to_value(picked).unwrap()
    };
    let (py, duck) = cdc.independent_rows("cdc.orders");
    assert_eq!(uri_rows(py), want, "pyiceberg rows");
    assert_eq!(uri_rows(duck), want, "duckdb rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_lands_in_one_piece() {
    let mut cdc = Cdc::new("CREATE TABLE big (id bigint PRIMARY KEY, v text, n int);").await;
    // Small buffers, so the transaction is written out in many pieces before its commit.
    cdc.set("cdc.flush.max_bytes", "4194304");
    let running = cdc.start().await;
    cdc.wait_same(
        "SELECT count(*) FROM big",
        "SELECT count(*) FROM cdc.big",
        Duration::from_secs(60),
    )
    .await;
    cdc.sql("INSERT INTO big SELECT g, 'row ' || g, g % 100 FROM generate_series(1, 1000000) g;");
    cdc.sql("UPDATE big SET n = -1 WHERE id % 1000 = 0;");
    let q = "SELECT count(*), sum(id), sum(n), count(DISTINCT v) FROM big";
    let lq = "SELECT count(*), sum(id), sum(n), count(DISTINCT v) FROM cdc.big";
    cdc.wait_same(q, lq, Duration::from_secs(240)).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_evolve_the_table() {
    let cdc = Cdc::new(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price real, cost numeric(8,2));
         INSERT INTO items VALUES (1, 'a', 1, 1.5, 2.25), (2, 'b', 2, 2.5, 3.50);
         CREATE TABLE fragile (id int PRIMARY KEY, v text); INSERT INTO fragile VALUES (1, 'x');
         CREATE TABLE shifted (a int, b int, id int PRIMARY KEY, v text);
         INSERT INTO shifted VALUES (10, 100, 1, 'x'), (20, 200, 2, 'y');",
    )
    .await;
    let running = cdc.start().await;
    let wait = Duration::from_secs(60);
    cdc.wait_same(
        "SELECT count(*) FROM items",
        "SELECT count(*) FROM cdc.items",
        wait,
    )
    .await;
    // Dropping columns before the key moves the key: changes after it still find their rows.
    cdc.wait_same(
        "SELECT count(*) FROM shifted",
        "SELECT count(*) FROM cdc.shifted",
        wait,
    )
    .await;
    cdc.sql(
        "ALTER TABLE shifted DROP COLUMN a;
         UPDATE shifted SET v = 'z' WHERE id = 1;
         ALTER TABLE shifted DROP COLUMN b;
         DELETE FROM shifted WHERE id = 2;
         INSERT INTO shifted VALUES (3, 'w');
         UPDATE shifted SET id = 4 WHERE id = 3;",
    );
    cdc.wait_same(
        "SELECT id, v FROM shifted ORDER BY id",
        "SELECT id, v FROM cdc.shifted ORDER BY id",
        wait,
    )
    .await;
    cdc.sql(
        "ALTER TABLE items ADD COLUMN color text;
         ALTER TABLE items ALTER COLUMN qty TYPE bigint;
         ALTER TABLE items ALTER COLUMN price TYPE double precision;
         ALTER TABLE items ALTER COLUMN cost TYPE numeric(12,2);
         ALTER TABLE items RENAME COLUMN name TO title;
         INSERT INTO items VALUES (3, 'c', 5000000000, 3.25, 4.75, 'red');
         UPDATE items SET color = 'blue' WHERE id = 1;
         ALTER TABLE items DROP COLUMN color;
         INSERT INTO items VALUES (4, 'd', 4, 4.5, 5.25);",
    );
    cdc.wait_same(
        "SELECT id, title, qty, price, cost FROM items ORDER BY id",
        "SELECT id, title, qty, price, cost FROM cdc.items ORDER BY id",
        wait,
    )
    .await;
    let columns = cdc
        .lake_rows("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items' ORDER BY ordinal_position")
        .await
        .unwrap();
    assert_eq!(
        columns,
        vec![
            "id|Int32",
            "title|Utf8View",
            "qty|Int64",
            "price|Float64",
            "cost|Decimal128(12, 2)"
        ]
    );
    // An incompatible change stops only that table.
    cdc.sql(
        "ALTER TABLE fragile ALTER COLUMN v TYPE int USING length(v); INSERT INTO fragile VALUES (2, 7);",
    );
    cdc.sql("INSERT INTO items VALUES (5, 'e', 5, 5.5, 6.25);");
    cdc.wait_same(
        "SELECT count(*) FROM items",
        "SELECT count(*) FROM cdc.items",
        wait,
    )
    .await;
    let deadline = Instant::now() + wait;
    loop {
        let report = running.status.report();
        if let Some(t) = report.tables.iter().find(|t| t.table == "cdc.fragile")
            && let Some(reason) = &t.stopped
        {
            assert!(reason.contains("fragile") && reason.contains("type"), "{reason}");
            break;
        }
        assert!(Instant::now() < deadline, "fragile was not stopped: {report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A table created and published later is copied and streamed.
    cdc.sql("CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later VALUES (1, 'one');");
    cdc.wait_same(
        "SELECT id, v FROM later ORDER BY id",
        "SELECT id, v FROM cdc.later ORDER BY id",
        wait,
    )
    .await;
    cdc.sql("INSERT INTO later VALUES (2, 'two'); UPDATE later SET v = 'uno' WHERE id = 1;");
    cdc.wait_same(
        "SELECT id, v FROM later ORDER BY id",
        "SELECT id, v FROM cdc.later ORDER BY id",
        wait,
    )
    .await;
    running.stop().await;
}

/// A column renamed twice while the pipeline was down: when the stream reaches the first
/// rename, the catalog already has the second name, and the column must still keep its
/// Iceberg field (and every older row its value) rather than look like a new column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_decoded_after_later_renames_keep_their_values() {
    let cdc = Cdc::new(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, note text);
         INSERT INTO items VALUES (1, 'a', 1, 'x'), (2, 'b', 2, 'y');",
    )
    .await;
    let running = cdc.start().await;
    let wait = Duration::from_secs(60);
    cdc.wait_same(
        "SELECT id, name, qty, note FROM items ORDER BY id",
        "SELECT id, name, qty, note FROM cdc.items ORDER BY id",
        wait,
    )
    .await;
    running.stop().await;
    cdc.sql("ALTER TABLE items RENAME COLUMN name TO title; INSERT INTO items VALUES (3, 'c', 3, 'z');");
    cdc.sql("ALTER TABLE items RENAME COLUMN note TO remark; UPDATE items SET qty = 20 WHERE id = 2;");
    cdc.sql("ALTER TABLE items RENAME COLUMN title TO label; INSERT INTO items VALUES (4, 'd', 4, 'w');");
    cdc.sql("ALTER TABLE items RENAME COLUMN remark TO note2; ALTER TABLE items DROP COLUMN qty;");
    cdc.sql("INSERT INTO items VALUES (5, 'e', 'v');");
    let running = cdc.start().await;
    cdc.wait_same(
        "SELECT id, label, note2 FROM items ORDER BY id",
        "SELECT id, label, note2 FROM cdc.items ORDER BY id",
        wait,
    )
    .await;
    running.stop().await;
}

/// TLS to the source: `verify-full` against the CA that signed the server's certificate, a
/// client certificate for login, and a clear refusal with a CA that did not sign it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_with_a_client_certificate() {
    let mut cdc = Cdc::new(
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, tier int);
         INSERT INTO customers SELECT g, 'customer ' || g, g % 3 FROM generate_series(1, 100) g;",
    )
    .await;
    let tls = tarn_test_utils::tls::enable_tls(&cdc.pg).unwrap();
    cdc.sql(
        "CREATE ROLE certuser LOGIN REPLICATION; GRANT SELECT ON ALL TABLES IN SCHEMA public TO certuser;
             CREATE PUBLICATION tarn_main FOR TABLE customers;",
    );
    let port = cdc.pg.port();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://certuser@127.0.0.1:{port}/app?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.display(),
            tls.client_cert_file.display(),
            tls.client_key_file.display()
        )
    };

    // A CA that did not sign the server's certificate: refused, and said so.
    cdc.set("cdc.source", &url(&tls.other_ca_file));
    let running = cdc.start().await;
    let err = running.wait_error("the wrong CA").await;
    assert!(err.contains("cannot connect to the source"), "{err}");
    running.stop().await;

    // The right CA: snapshot and stream over TLS, logged in by certificate (the hba rule
    // `hostssl ... cert` admits certuser only with one).
    cdc.set("cdc.source", &url(&tls.ca_file));
    let running = cdc.start().await;
    cdc.wait_same(CUSTOMERS_PG, CUSTOMERS_LAKE, Duration::from_secs(60))
        .await;
    cdc.sql("INSERT INTO customers VALUES (1000, 'over tls', 1); DELETE FROM customers WHERE id < 10;");
    cdc.wait_same(CUSTOMERS_PG, CUSTOMERS_LAKE, Duration::from_secs(60))
        .await;
    let encrypted = cdc.source_rows(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.usename = 'certuser'",
    );
    assert_ne!(encrypted, vec!["0".to_string()], "tarn's sessions are encrypted");
    running.stop().await;

    // A bad sslmode is a configuration error naming the key.
    let err = tarn_core::Config::load(
        cdc.lake.path(),
        None,
        std::collections::HashMap::<String, String>::new(),
        &[(
            "cdc.source".to_string(),
            format!("postgres://u@127.0.0.1:{}/app?sslmode=verify-full", cdc.pg.port()),
        )],
    )
    .map(|c| tarn_cdc::postgres::connect::SourceAddress::parse(c.cdc.source.as_deref().unwrap()).map(|_| ()))
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_recovery_are_clear() {
    let cdc = Cdc::new(
        "CREATE TABLE keyless (a int, b text); CREATE TABLE logs (a int, b text);
         ALTER TABLE logs REPLICA IDENTITY FULL; INSERT INTO logs VALUES (1, 'x'), (1, 'x'), (2, 'y');",
    )
    .await;
    // A table without a key or FULL identity is refused by name, with the fix.
    let config = cdc.config();
    let lake = Lake::open(&config).await.unwrap();
    let err = tarn_cdc::pipeline::run(
        &config,
        lake,
        RunOptions::default(),
        Arc::new(PipelineStatus::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("public.keyless") && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );

    // Excluded, the rest runs; duplicate rows of a FULL-identity table are kept apart.
    let mut cdc = cdc;
    cdc.set("cdc.exclude", "[\"public.keyless\"]");
    let running = cdc.start().await;
    let q = "SELECT a, b, count(*) FROM logs GROUP BY a, b ORDER BY a, b";
    let lq = "SELECT a, b, count(*) FROM cdc.logs GROUP BY a, b ORDER BY a, b";
    cdc.wait_same(q, lq, Duration::from_secs(60)).await;
    cdc.sql("DELETE FROM logs WHERE ctid = (SELECT min(ctid) FROM logs WHERE a = 1); INSERT INTO logs VALUES (2, 'y');");
    cdc.sql("UPDATE logs SET b = 'z' WHERE a = 2;");
    cdc.wait_same(q, lq, Duration::from_secs(60)).await;
    running.stop().await;

    // A lost slot: tarn says so and names the recovery, which then works.
    cdc.sql("SELECT pg_drop_replication_slot('tarn_main')");
    cdc.sql("INSERT INTO logs VALUES (3, 'while away')");
    let config = cdc.config();
    let lake = Lake::open(&config).await.unwrap();
    let err = tarn_cdc::pipeline::run(
        &config,
        lake,
        RunOptions::default(),
        Arc::new(PipelineStatus::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resnapshot") && err.contains("tarn_main"), "{err}");
    let running = cdc
        .start_with(RunOptions {
            resnapshot: true,
            duration: None,
            ..RunOptions::default()
        })
        .await;
    cdc.wait_same(q, lq, Duration::from_secs(60)).await;
    running.stop().await;
}

/// What the crash test's workload does to the source: inserts, updates and deletes of a
/// `accounts` table from several connections at once.
pub(crate) async fn workload(url: String, stop: CancellationToken, seed: u64) -> u64 {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut n = 0u64;
    let mut x = seed | 1;
    while !stop.is_cancelled() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % 5000) as i64 + 1;
        let sql = match x % 4 {
            0 => format!(
                "INSERT INTO accounts VALUES ({id}, {n}, 'w{seed}') ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1"
            ),
            1 => format!("UPDATE accounts SET balance = balance - 1, owner = 'u{n}' WHERE id = {id}"),
            2 => format!("DELETE FROM accounts WHERE id = {id}"),
            _ => format!(
                "BEGIN; UPDATE accounts SET balance = balance + 10 WHERE id = {id}; \
                 INSERT INTO accounts VALUES ({}, 1, 'tx') ON CONFLICT (id) DO NOTHING; COMMIT",
                (id + 2500) % 5000 + 1
            ),
        };
        // The source restarting mid-run fails some statements; the workload goes on.
        if client.batch_execute(&sql).await.is_ok() {
            n += 1;
        } else if client.is_closed() {
            break;
        }
    }
    n
}

fn spawn_tarn(dir: &std::path::Path, source: &str, failpoints: &str) -> Child {
    Command::new(tarn_bin())
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--set",
            &format!("cdc.source={source}"),
            "--set",
            "cdc.flush.interval=100ms",
            "cdc",
            "run",
        ])
        .env("TARN_FAILPOINTS", failpoints)
        .env("TARN_LOG", "warn")
        .env_remove("TARN_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_test_nothing_lost_nothing_doubled() {
    let cdc = Cdc::new(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, owner text);
         INSERT INTO accounts SELECT g, 100, 'init' FROM generate_series(1, 3000) g;",
    )
    .await;
    let url = cdc.pg.url("app");
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for seed in 1..=3u64 {
        writers.push(tokio::spawn(workload(url.clone(), stop.clone(), seed * 7919)));
    }
    // Kill tarn at random moments: plain SIGKILLs, and aborts at failpoints between writing
    // files and committing, between committing and acknowledging, during the snapshot.
    let failpoints = [
        "",
        "cdc.after_write=abort(0.5)",
        "cdc.before_commit=abort(0.5)",
        "cdc.after_commit=abort(0.5)",
        "cdc.before_ack=abort(0.5)",
        "cdc.snapshot.after_copy=abort(0.5)",
        "cdc.on_event=abort(0.001)",
    ];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut aborts = 0;
    for round in 0..24 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let fp = failpoints[(rng % failpoints.len() as u64) as usize];
        let mut child = spawn_tarn(cdc.lake.path(), &url, fp);
        let deadline = Instant::now() + Duration::from_millis(300 + rng % 2500);
        let mut exited = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if exited {
            aborts += 1;
        } else {
            child.kill().unwrap();
            kills += 1;
        }
        let _ = child.wait();
        if round == 12 {
            // The source crashes too, mid-stream.
            cdc.pg.crash_and_restart().unwrap();
            let url = url.clone();
            let stop = stop.clone();
            writers.push(tokio::spawn(workload(url, stop, 104_729)));
        }
    }
    assert!(kills + aborts >= 20);
    stop.cancel();
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    assert!(statements > 100, "the workload ran ({statements} statements)");
    // A clean run catches up; the lake must equal the source exactly.
    let mut child = spawn_tarn(cdc.lake.path(), &url, "");
    let q = "SELECT id, balance, owner FROM accounts ORDER BY id";
    let lq = "SELECT id, balance, owner FROM cdc.accounts ORDER BY id";
    cdc.wait_same(q, lq, Duration::from_secs(120)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "tarn cdc run stopped cleanly on SIGTERM: {status}"
    );
    let want = as_reader_rows(&cdc.source_rows(q));
    let (py, duck) = cdc.independent_rows("cdc.accounts");
    assert_eq!(py, want, "pyiceberg rows");
    assert_eq!(duck, want, "duckdb rows");
    eprintln!("crash test: {kills} SIGKILLs, {aborts} failpoint aborts, {statements} statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_and_drop() {
    let cdc = Cdc::new("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');").await;
    let running = cdc.start().await;
    cdc.wait_same(
        "SELECT id, v FROM t",
        "SELECT id, v FROM cdc.t",
        Duration::from_secs(60),
    )
    .await;
    let dir = cdc.lake.path().to_path_buf();
    let source = format!("cdc.source={}", cdc.pg.url("app"));
    // The running pipeline's live status reaches `tarn cdc status` within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let (ok, out, err) = crate::tarn(&dir, &["--set", &source, "cdc", "status"]);
        assert!(ok, "{err}");
        if out.contains("running:     streaming") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        out.contains("tarn_main") && out.contains("cdc.t") && out.contains("running:     streaming"),
        "{out}"
    );
    let (ok, out, err) = crate::tarn(&dir, &["--set", &source, "cdc", "status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["slot"]["name"], "tarn_main");
    running.stop().await;
    let (ok, out, err) = crate::tarn(&dir, &["--set", &source, "cdc", "drop"]);
    assert!(ok, "{err}");
    assert!(out.contains("dropped replication slot tarn_main"), "{out}");
    assert_eq!(cdc.sql("SELECT count(*) FROM pg_replication_slots"), "0\n");
    // Bad input: an unreachable source and a malformed URL fail clearly.
    let (ok, _, err) = crate::tarn(
        &dir,
        &["--set", "cdc.source=postgres://u@127.0.0.1:1/x", "cdc", "status"],
    );
    assert!(!ok && err.contains("cannot"), "{err}");
    let (ok, _, err) = crate::tarn(&dir, &["--set", "cdc.source=mysql://x", "cdc", "status"]);
    assert!(!ok && err.contains("cdc.source"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_beside_a_live_writer_loses_nothing() {
    let mut cdc = Cdc::new(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, owner text);
         INSERT INTO accounts SELECT g, 100, 'init' FROM generate_series(1, 3000) g;",
    )
    .await;
    // Aggressive automatic maintenance beside the writer (in the background: the writer does
    // not pause for it)...
    cdc.set("maintenance.interval", "1s");
    // ...which commits once a second: the workload updates rows all over the table, so every
    // commit touches nearly every file, and a compaction commits only when its rewrite fits
    // between two commits (with commits every 200 ms, on a loaded machine, hardly ever).
    cdc.set("cdc.flush.interval", "1s");
    cdc.set("maintenance.min_files", "2");
    cdc.set("maintenance.snapshot_age", "2s");
    cdc.set("maintenance.retain_snapshots", "2");
    let running = cdc.start().await;
    let q = "SELECT id, balance, owner FROM accounts ORDER BY id";
    let lq = "SELECT id, balance, owner FROM cdc.accounts ORDER BY id";
    cdc.wait_same(q, lq, Duration::from_secs(60)).await;
    let url = cdc.pg.url("app");
    let stop = CancellationToken::new();
    let writers: Vec<_> = (1..=2u64)
        .map(|seed| tokio::spawn(workload(url.clone(), stop.clone(), seed * 31)))
        .collect();
    // ... and `tarn maintain` from another process at the same time, until that process has
    // compacted beside the writer a few times (the writer's own compactions do not count).
    // Every snapshot holds each key once: an update commits the new row and the position
    // delete of the old one together, so a key held twice is a lost delete, caught when the
    // commit that lost it lands rather than as rows that never converge.
    let dir = cdc.lake.path().to_path_buf();
    // Each `tarn maintain` is a process of its own: on a loaded 2-core machine one run takes
    // up to 20 s (measured under a concurrent release build).
    let deadline = Instant::now() + Duration::from_secs(200);
    let twice = "SELECT id, count(*) FROM cdc.accounts GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 5";
    let (mut runs, mut compactions, mut gave_up) = (0, 0, 0);
    while runs < 4 || compactions < 2 {
        assert!(
            Instant::now() < deadline,
            "`tarn maintain` compacted {compactions} time(s) in {runs} runs within 200 s ({gave_up} gave up after conflicts)"
        );
        runs += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, out, err) = crate::tarn(
            &dir,
            &[
                "--set",
                "maintenance.min_files=2",
                "--set",
                "maintenance.snapshot_age=1s",
                "--set",
                "maintenance.orphan_age=1h",
                "maintain",
                "cdc",
            ],
        );
        // The writer keeps committing while its own maintenance runs in the background, so
        // a compaction whose every plan lost to an update of its files gives up cleanly
        // (nothing committed), saying so; the loop runs it again.
        if !ok {
            assert!(
                err.contains("compaction of cdc.accounts conflicted with other commits"),
                "tarn maintain failed: {err}\n{out}"
            );
            gave_up += 1;
            continue;
        }
        assert!(out.contains("cdc.accounts"), "{out}");
        // Piped, the log has no colour escape sequences.
        assert!(
            !err.contains('\u{1b}'),
            "escape sequences in the piped log: {err:?}"
        );
        // Nor log lines repeating the command's own lines.
        assert!(
            !err.contains("tarn_lake::maintain") && !err.contains("tarn_lake::commit"),
            "log lines repeating tarn maintain's output: {err}"
        );
        compactions += out.matches("compacted:").count();
        if let Some(keys) = cdc.lake_rows(twice).await {
            assert!(
                keys.is_empty(),
                "keys held twice in the lake (id|count) after {runs} runs of `tarn maintain`: {keys:?}"
            );
        }
    }
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    cdc.wait_same(q, lq, Duration::from_secs(60)).await;
    running.stop().await;
    let want = as_reader_rows(&cdc.source_rows(q));
    let (py, duck) = cdc.independent_rows("cdc.accounts");
    assert_eq!(py, want, "pyiceberg rows");
    assert_eq!(duck, want, "duckdb rows");
}

const ALL_TYPES: &str = "
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE typed (
  id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, dec numeric(10,2), num numeric, r real, d double precision,
  b boolean, t text, vc varchar(10), c char(5), by bytea, dt date, tm time, ts timestamp, tstz timestamptz,
  u uuid, j json, jb jsonb, ia int[], ta text[], m mood, iv interval);";

const ALL_VALUES: &str =
    "(32767, 2147483647, 9223372036854775807, 12345678.90, 1.5, 'NaN', 1e308, true, 'héllo', 'varchar', 'ab',
  '\\xdeadbeef', '2026-11-27', '23:59:59.999999', '2026-11-27 10:00:00.123456', '2026-11-27 10:00:00+02',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"b\":2}', '{1,NULL,3}', '{\"a,b\",c}', 'happy',
  '1 year 2 months 3 days 04:05:06')";

const EXTREMES: &str = "(-32768, -2147483648, -9223372036854775808, -99999999.99, 0.000000000000000001, '-Infinity', '-Infinity',
  false, '', '', '', '\\x', 'infinity', '00:00:00', '-infinity', '1970-01-01 00:00:00-05:30',
  '00000000-0000-0000-0000-000000000000', '[]', 'null', '{}', '{}', 'sad', '-1 days')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_maps_value_by_value() {
    let nulls = "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";
    let cdc = Cdc::new(&format!(
        "{ALL_TYPES} INSERT INTO typed VALUES (1, {}), (2, {}), (3, {});",
        &ALL_VALUES[1..ALL_VALUES.len() - 1],
        &EXTREMES[1..EXTREMES.len() - 1],
        &nulls[1..nulls.len() - 1]
    ))
    .await;
    let running = cdc.start().await;
    // The same values again through the stream (ids 11-13), and through an update.
    cdc.wait_same(
        "SELECT count(*) FROM typed",
        "SELECT count(*) FROM cdc.typed",
        Duration::from_secs(60),
    )
    .await;
    cdc.sql(&format!(
        "INSERT INTO typed VALUES (11, {}), (12, {}), (13, {});",
        &ALL_VALUES[1..ALL_VALUES.len() - 1],
        &EXTREMES[1..EXTREMES.len() - 1],
        &nulls[1..nulls.len() - 1]
    ));
    cdc.wait_same(
        "SELECT count(*) FROM typed",
        "SELECT count(*) FROM cdc.typed",
        Duration::from_secs(60),
    )
    .await;
    let rows = cdc
        .lake_rows("SELECT * FROM cdc.typed ORDER BY id")
        .await
        .unwrap();
    running.stop().await;
    let strip = |r: &str| r.split_once('|').unwrap().1.to_string();
    // Snapshot copies and streamed changes give identical values.
    assert_eq!(strip(&rows[0]), strip(&rows[3]), "copy and stream agree");
    assert_eq!(strip(&rows[1]), strip(&rows[4]), "copy and stream agree");
    assert_eq!(strip(&rows[2]), strip(&rows[5]), "copy and stream agree");
    let cells = |r: &str| r.split('|').map(str::to_string).collect::<Vec<_>>();
    let expected_values = [
        "1",
        "32767",
        "2147483647",
        "9223372036854775807",
        "12345678.90",
        "1.500000000000000000",
        "NaN",
        "1e308",
        "true",
        "héllo",
        "varchar",
        "ab   ",
        "deadbeef",
        "2026-11-27",
        "23:59:59.999999",
        "2026-11-27T10:00:00.123456",
        "2026-11-27T08:00:00Z",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": 1}",
        "{\"b\": 2}",
        "[1, NULL, 3]",
        "[a,b, c]",
        "happy",
        "P1Y2M3DT4H5M6S",
    ];
    assert_eq!(cells(&rows[0]), expected_values, "row of ordinary values");
    let expected_extremes = [
        "2",
        "-32768",
        "-2147483648",
        "-9223372036854775808",
        "-99999999.99",
        "0.000000000000000001",
        "-inf",
        "-inf",
        "false",
        "",
        "",
        "     ",
        "",
        "9999-12-31",
        "00:00:00",
        "0001-01-01T00:00:00",
        "1970-01-01T05:30:00Z",
        "00000000-0000-0000-0000-000000000000",
        "[]",
        "null",
        "[]",
        "[]",
        "sad",
        "P-1D",
    ];
    assert_eq!(cells(&rows[1]), expected_extremes, "row of extremes");
    assert!(
        cells(&rows[2])[1..].iter().all(|c| c == "NULL"),
        "row of NULLs: {}",
        rows[2]
    );
    // The independent readers read every type.
    let (py, duck) = cdc.independent_rows("cdc.typed");
    assert_eq!(py.as_array().unwrap().len(), 6);
    assert_eq!(duck.as_array().unwrap().len(), 6);
}

/// Every type the snapshot copies in PostgreSQL's binary format (docs/cdc.md, "Initial
/// snapshot"), with ordinary values, extremes, clamped values and bytes COPY text escapes.
const BINARY_TYPES: &str = "
CREATE TABLE scalars (
  id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, o oid, dec numeric(10,2), num numeric, r real,
  d double precision, b boolean, t text, vc varchar(10), c char(5), nm name, j json, by bytea, dt date,
  tm time, ts timestamp, tstz timestamptz);";

const BINARY_ROWS: [&str; 4] = [
    "32767, 2147483647, 9223372036854775807, 4294967295, 12345678.90, 1.5, 'NaN', 1e308, true, 'héllo',
     'varchar', 'ab', 'n', '{\"a\": 1}', '\\xdeadbeef', '2026-11-27', '23:59:59.999999',
     '2026-11-27 10:00:00.123456', '2026-11-27 10:00:00+02'",
    "-32768, -2147483648, -9223372036854775808, 0, -99999999.99, 0.000000000000000001, '-Infinity',
     '-Infinity', false, '', '', '', '', 'null', '\\x', 'infinity', '24:00:00', '-infinity',
     '1970-01-01 00:00:00-05:30'",
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL",
    "0, 0, 0, 1, 0.00, 123456.000100, 1.17549435e-38, 5e-324, true, E'tab\\there\\nnew line \\\\ back',
     E'a\\tb', 'x\\y', 'n\\m', '[1, 2]', '\\x000a5c09', '-infinity', '00:00:00',
     '1999-12-31 23:59:59.999999', '0001-01-01 00:00:00+00'",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_lands_values_as_the_stream_does() {
    let values = |first: i32| {
        BINARY_ROWS
            .iter()
            .enumerate()
            .map(|(i, r)| format!("({}, {r})", first + i as i32))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cdc = Cdc::new(&format!(
        "{BINARY_TYPES} INSERT INTO scalars VALUES {};",
        values(1)
    ))
    .await;
    let spec_columns = cdc.sql(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'scalars'::regclass AND attnum > 0 \
         AND atttypid IN (16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1700)",
    );
    assert_eq!(spec_columns.trim(), "20", "every column has a binary reader");
    let running = cdc.start().await;
    cdc.wait_same(
        "SELECT count(*) FROM scalars",
        "SELECT count(*) FROM cdc.scalars",
        Duration::from_secs(60),
    )
    .await;
    // The same values through the stream (text from pgoutput), ids 11-14.
    cdc.sql(&format!("INSERT INTO scalars VALUES {};", values(11)));
    cdc.wait_same(
        "SELECT count(*) FROM scalars",
        "SELECT count(*) FROM cdc.scalars",
        Duration::from_secs(60),
    )
    .await;
    let rows = cdc
        .lake_rows("SELECT * FROM cdc.scalars ORDER BY id")
        .await
        .unwrap();
    running.stop().await;
    assert_eq!(rows.len(), 8, "{rows:?}");
    let strip = |r: &str| r.split_once('|').unwrap().1.to_string();
    for (i, (copied, streamed)) in rows[..4].iter().zip(&rows[4..]).enumerate() {
        assert_eq!(
            strip(copied),
            strip(streamed),
            "copy and stream agree on row {}",
            i + 1
        );
    }
    let cells = |r: &str| r.split('|').map(str::to_string).collect::<Vec<_>>();
    let first = cells(&rows[0]);
    assert_eq!(
        first[1..5],
        ["32767", "2147483647", "9223372036854775807", "4294967295"],
        "{first:?}"
    );
    assert_eq!(first[5..7], ["12345678.90", "1.500000000000000000"], "{first:?}");
    assert_eq!(
        first[18..],
        ["2026-11-27T10:00:00.123456", "2026-11-27T08:00:00Z"],
        "{first:?}"
    );
    let second = cells(&rows[1]);
    assert_eq!(
        second[16..],
        [
            "9999-12-31",
            "23:59:59.999999",
            "0001-01-01T00:00:00",
            "1970-01-01T05:30:00Z"
        ],
        "{second:?}"
    );
    assert!(
        cells(&rows[2])[1..].iter().all(|c| c == "NULL"),
        "row of NULLs: {}",
        rows[2]
    );
    let fourth = cells(&rows[3]);
    assert_eq!(fourth[6], "123456.000100000000000000", "{fourth:?}");
    assert_eq!(fourth[16], "0001-01-01", "{fourth:?}");
    // The text with a tab, a newline and a backslash, read whole (COPY text escapes them).
    let text = cdc
        .lake_rows("SELECT length(t), strpos(t, chr(9)), strpos(t, chr(10)), length(vc) FROM cdc.scalars WHERE id = 4")
        .await;
    assert_eq!(text, Some(vec!["24|4|9|3".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_types_are_named_by_column() {
    let mut cdc = Cdc::new("CREATE TABLE shapes (id int PRIMARY KEY, p point, label text); INSERT INTO shapes VALUES (1, '(1,2)', 'a');")
        .await;
    let config = cdc.config();
    let lake = Lake::open(&config).await.unwrap();
    let err = tarn_cdc::pipeline::run(
        &config,
        lake,
        RunOptions::default(),
        Arc::new(PipelineStatus::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("public.shapes.p") && err.contains("point") && err.contains("cdc.unsupported_types"),
        "{err}"
    );
    cdc.set("cdc.unsupported_types", "text");
    let running = cdc.start().await;
    cdc.wait_same(
        "SELECT id, p::text, label FROM shapes",
        "SELECT id, p, label FROM cdc.shapes",
        Duration::from_secs(60),
    )
    .await;
    running.stop().await;
}
