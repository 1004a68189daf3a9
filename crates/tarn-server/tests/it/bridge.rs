//! Bridge reads through `tarn serve` (tarn_query::bridge): a CDC pipeline from a real
//! PostgreSQL runs in the server's process with a one-hour flush interval
//! (`cdc.flush.bridged_interval`, the one `tarn serve` uses with `latest` reads), so nothing
//! commits by time; queries over the Postgres wire endpoint in `latest` mode see the changes it holds,
//! in `committed` mode they do not, a transaction appears whole or not at all (checked under a
//! load of transactions, across the commits the row threshold makes), no key appears twice,
//! a pending truncate hides the committed rows, a schema change in flight falls back to the
//! last commit, and once a commit lands both modes and PostgreSQL agree. Killed with changes
//! pending, the restarted server serves the lake, then catches up without committing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tarn_test_utils::PostgresServer;
use tokio_postgres::SimpleQueryMessage;

use crate::pgwire::Served;

/// The accounts of the transfer load, and the sum of their balances (which every transaction
/// keeps).
const ACCOUNTS: i64 = 20;
const TOTAL: i64 = ACCOUNTS * 100;

/// Rows of `sql` as `a|b` lines (NULL as `NULL`).
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect())
}

/// Waits (at most 60 s) until `sql` over `client` returns `want`; panics with the last answer.
async fn wait_rows(client: &tokio_postgres::Client, sql: &str, want: &[String], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows(client, sql).await;
        match &got {
            Ok(got) if got == want => return,
            _ if Instant::now() > deadline => {
                panic!("{what}: {sql} did not return {want:?} within 60 s; last answer {got:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn source_rows(pg: &PostgresServer, sql: &str) -> Vec<String> {
    pg.psql("app", sql)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_include_pending_changes_whole_transactions_only() {
    crate::init_logs();
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, {ACCOUNTS}) g;
             CREATE TABLE noise (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO noise SELECT g, 0 FROM generate_series(1, 300) g;"
        ),
    )
    .unwrap();
    // Nothing commits by time; 5000 changes make a commit (the load below crosses it).
    let served = Served::start_with(
        true,
        &format!(
            "[cdc]\nsource = \"{}\"\n[cdc.flush]\nbridged_interval = \"1h\"\nmax_rows = 5000\n[maintenance]\nauto = false\n",
            pg.url("app")
        ),
    );
    let latest = served.client().await;
    let committed = served.client().await;
    committed
        .simple_query("SET tarn.read_mode = 'committed'")
        .await
        .unwrap();
    assert_eq!(rows(&latest, "SHOW tarn.read_mode").await.unwrap(), ["latest"]);
    assert_eq!(
        rows(&committed, "SHOW tarn.read_mode").await.unwrap(),
        ["committed"]
    );
    let err = latest
        .simple_query("SET tarn.read_mode = 'freshest'")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("'latest' or 'committed'")),
        "{err:?}"
    );

    // The initial copy is committed.
    let items = "SELECT id, v FROM cdc.items ORDER BY id";
    let initial = source_rows(&pg, "SELECT id, v FROM items ORDER BY id");
    wait_rows(&committed, items, &initial, "the initial copy").await;

    // Inserts, updates and deletes (of rows in committed files) show in `latest` only.
    pg.psql(
        "app",
        "INSERT INTO items VALUES (6, 'six');
         UPDATE items SET v = 'one!' WHERE id = 1;
         DELETE FROM items WHERE id = 2;",
    )
    .unwrap();
    let want = source_rows(&pg, "SELECT id, v FROM items ORDER BY id");
    wait_rows(&latest, items, &want, "pending changes in latest mode").await;
    assert_eq!(
        rows(&committed, items).await.unwrap(),
        initial,
        "committed mode sees the lake only"
    );
    assert_eq!(
        rows(&latest, "SELECT v FROM cdc.items WHERE id = 6")
            .await
            .unwrap(),
        ["six"],
        "a filter over pending rows"
    );
    assert_eq!(
        rows(&latest, "SELECT count(*) FROM cdc.items").await.unwrap(),
        ["5"],
        "rows without columns"
    );

    // The same key updated over and over inside the pending window: one row, the last value.
    for n in 1..=20 {
        pg.psql("app", &format!("UPDATE items SET v = 'x{n}' WHERE id = 3"))
            .unwrap();
        let twice = rows(&latest, "SELECT count(*) - count(DISTINCT id) FROM cdc.items")
            .await
            .unwrap();
        assert_eq!(twice, ["0"], "a key twice after update {n}");
    }
    wait_rows(
        &latest,
        "SELECT v FROM cdc.items WHERE id = 3",
        &["x20".to_string()],
        "the last update of a key",
    )
    .await;

    // Transfers between accounts, each also deleting and re-inserting an account: every
    // transaction boundary has ACCOUNTS rows summing to TOTAL; half a transaction would not.
    // Between the debit and the credit each transaction changes 300 other rows, so it reaches
    // the pipeline in several pieces: a view published within it would show.
    let (source, connection) = tokio_postgres::connect(&pg.url("app"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Runs until the checks below have seen at least 200 of its transactions (60,000 changes:
    // several commits by the row threshold) and made 10 checks, however slow the machine.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let (a, b, c) = (
                    i % ACCOUNTS + 1,
                    (i * 7 + 3) % ACCOUNTS + 1,
                    (i * 3 + 1) % ACCOUNTS + 1,
                );
                source
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE accounts SET balance = balance - 5 WHERE id = {a};
                         UPDATE noise SET n = n + 1;
                         UPDATE accounts SET balance = balance + 5 WHERE id = {b};
                         WITH d AS (DELETE FROM accounts WHERE id = {c} RETURNING id, balance)
                           INSERT INTO accounts SELECT id, balance FROM d;
                         COMMIT;"
                    ))
                    .await
                    .unwrap();
                i += 1;
                done.store(i as u64, Ordering::Relaxed);
                // Paced, so the checks interleave with it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let invariant = "SELECT count(*), count(DISTINCT id), sum(balance) FROM cdc.accounts";
    let whole = [format!("{ACCOUNTS}|{ACCOUNTS}|{TOTAL}")];
    let mut checks = 0;
    while checks < 10 || done.load(Ordering::Relaxed) < 200 {
        assert!(!load.is_finished(), "the load stopped");
        for (mode, client) in [("latest", &latest), ("committed", &committed)] {
            let got = rows(client, invariant).await.unwrap();
            assert_eq!(
                got, whole,
                "{mode} mode saw part of a transaction (check {checks})"
            );
        }
        checks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let accounts = "SELECT id, balance FROM cdc.accounts ORDER BY id";
    let want = source_rows(&pg, "SELECT id, balance FROM accounts ORDER BY id");
    wait_rows(&latest, accounts, &want, "the load's end in latest mode").await;
    assert_eq!(rows(&latest, invariant).await.unwrap(), whole);

    // A truncate in the pending window: `latest` shows only the rows after it.
    pg.psql(
        "app",
        "BEGIN; TRUNCATE items; INSERT INTO items VALUES (7, 'after the truncate'); COMMIT;",
    )
    .unwrap();
    let want = source_rows(&pg, "SELECT id, v FROM items ORDER BY id");
    assert_eq!(want, ["7|after the truncate"]);
    wait_rows(&latest, items, &want, "a pending truncate").await;
    let before = rows(&committed, items).await.unwrap();
    assert!(
        before.len() > 1,
        "committed mode still has the rows before the truncate: {before:?}"
    );

    // Every `latest` read so far merged (none fell back to the last commit).
    assert!(
        !served
            .http_get("/metrics")
            .contains("tarn_query_bridge_reads_total{result=\"fallback\"}"),
        "a latest read fell back before the schema change"
    );

    // A schema change in flight writes the buffer out: `latest` falls back to the last commit
    // (an earlier boundary) until the next one, counted as such.
    pg.psql(
        "app",
        "ALTER TABLE items ADD COLUMN w int; INSERT INTO items VALUES (8, 'eight', 8);",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !served
        .http_get("/metrics")
        .contains("tarn_query_bridge_reads_total{result=\"fallback\"}")
    {
        assert!(Instant::now() < deadline, "no fallback read within 60 s");
        rows(&latest, items).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rows(&latest, items).await.unwrap(),
        before,
        "the fallback reads the last commit"
    );

    // A transaction over the row threshold commits everything: both modes equal PostgreSQL.
    pg.psql(
        "app",
        "INSERT INTO items SELECT g, 'bulk' FROM generate_series(100, 5199) g",
    )
    .unwrap();
    let want = source_rows(&pg, "SELECT id, v FROM items ORDER BY id");
    wait_rows(&committed, items, &want, "the commit in committed mode").await;
    assert_eq!(
        rows(&latest, items).await.unwrap(),
        want,
        "latest after the commit"
    );
    let want = source_rows(&pg, "SELECT id, balance FROM accounts ORDER BY id");
    assert_eq!(rows(&committed, accounts).await.unwrap(), want);
    assert_eq!(rows(&latest, accounts).await.unwrap(), want);

    // RESET goes back to the server's default.
    committed.simple_query("RESET tarn.read_mode").await.unwrap();
    assert_eq!(rows(&committed, "SHOW tarn.read_mode").await.unwrap(), ["latest"]);
    let metrics = served.http_get("/metrics");
    assert!(
        metrics.contains("tarn_query_bridge_reads_total{result=\"merged\"}")
            && metrics.contains("tarn_query_bridge_reads_total{result=\"committed\"}"),
        "{metrics}"
    );
}

/// A crash with changes pending: `tarn serve` killed (SIGKILL) while its pipeline holds
/// changes it has not committed. After the restart, every `latest` read is either the lake (the
/// last commit: the restarted pipeline has not published yet) or PostgreSQL's state — never a
/// part of the pending transactions, never a row twice — and it reaches PostgreSQL's state
/// again without a commit by time; `committed` reads keep the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_latest_reads_serve_the_lake_then_catch_up() {
    crate::init_logs();
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts SELECT g, 100 FROM generate_series(1, {ACCOUNTS}) g;"
        ),
    )
    .unwrap();
    let mut served = Served::start_with(
        true,
        &format!(
            "[cdc]\nsource = \"{}\"\n[cdc.flush]\nbridged_interval = \"1h\"\n[maintenance]\nauto = false\n",
            pg.url("app")
        ),
    );
    let client = served.client().await;
    let accounts = "SELECT id, balance FROM cdc.accounts ORDER BY id";
    let lake = source_rows(&pg, "SELECT id, balance FROM accounts ORDER BY id");
    client
        .simple_query("SET tarn.read_mode = 'committed'")
        .await
        .unwrap();
    wait_rows(&client, accounts, &lake, "the initial copy").await;
    client.simple_query("RESET tarn.read_mode").await.unwrap();

    // Transfers (each keeps the sum), a delete and a re-insert, an insert: pending only.
    for i in 0..30i64 {
        let (a, b) = (i % ACCOUNTS + 1, (i * 7 + 3) % ACCOUNTS + 1);
        pg.psql(
            "app",
            &format!(
                "BEGIN; UPDATE accounts SET balance = balance - 5 WHERE id = {a};
                 UPDATE accounts SET balance = balance + 5 WHERE id = {b}; COMMIT;"
            ),
        )
        .unwrap();
    }
    pg.psql(
        "app",
        "BEGIN; DELETE FROM accounts WHERE id = 4; INSERT INTO accounts VALUES (4, 100); COMMIT;",
    )
    .unwrap();
    let want = source_rows(&pg, "SELECT id, balance FROM accounts ORDER BY id");
    wait_rows(&client, accounts, &want, "the pending changes before the crash").await;

    served.crash_and_restart();
    let latest = served.client().await;
    let committed = served.client().await;
    committed
        .simple_query("SET tarn.read_mode = 'committed'")
        .await
        .unwrap();
    let invariant = "SELECT count(*), count(DISTINCT id), sum(balance) FROM cdc.accounts";
    let whole = [format!("{ACCOUNTS}|{ACCOUNTS}|{TOTAL}")];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reads = 0;
    loop {
        // A statement may meet the pipeline while it starts again: only a wrong answer fails.
        let (Ok(got), Ok(sums)) = (rows(&latest, accounts).await, rows(&latest, invariant).await) else {
            assert!(Instant::now() < deadline, "no answer within 60 s of the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        reads += 1;
        assert_eq!(
            sums, whole,
            "read {reads} after the restart saw part of a transaction"
        );
        assert!(
            got == lake || got == want,
            "read {reads} after the restart is neither the lake nor PostgreSQL: {got:?}"
        );
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "latest reads did not catch up within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rows(&committed, accounts).await.unwrap(),
        lake,
        "nothing was committed by time: committed reads keep the lake"
    );
}
