//! Bridge reads through `tarn serve` (tarn_query::bridge): a CDC pipeline from a real
//! PostgreSQL runs in the server's process with a one-hour flush interval
//! (`cdc.flush.bridged_interval`, the one `tarn serve` uses with `latest` reads), so nothing
//! commits by time; queries over the Postgres wire endpoint in `latest` mode see the changes it holds,
//! in `committed` mode they do not, a transaction appears whole or not at all (checked under a
//! load of transactions, across the commits the row threshold makes), no key appears twice,
//! a pending truncate hides the committed rows, a schema change in flight falls back to the
//! last commit, and once a commit lands both modes and PostgreSQL agree.
//!
//! The differential test checks every read against PostgreSQL itself: a `test_decoding` slot
//! created before the table had rows lists every transaction with the end of its commit
//! record, and each `latest` (and `committed`) read, taken while concurrent writers update the
//! same keys inside the pending window, delete rows in the lake's files, cross commits by the
//! row threshold, add a column and truncate the table, must equal the table those transactions
//! leave at the position `SHOW tarn.read_position` reports for the read. The crash test
//! kills `tarn serve` (SIGKILL) with changes pending, restarts it while the source refuses
//! connections (reads answer at once, from the lake, at the lake's position), then lets the
//! pipeline catch up: every read on the way equals PostgreSQL at its position, and the end
//! equals PostgreSQL's table in `latest` and, after a commit, in the lake.

use std::collections::BTreeMap;
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

/// `tarn serve` running a CDC pipeline from database `app` of `pg` with bridge reads, nothing
/// committed by time (a one-hour bridged interval) and a commit every `max_rows` changes.
fn bridged_server(pg: &PostgresServer, max_rows: u64) -> Served {
    Served::start_with(
        true,
        &format!(
            "[cdc]\nsource = \"{}\"\n[cdc.flush]\nbridged_interval = \"1h\"\nmax_rows = {max_rows}\n[maintenance]\nauto = false\n",
            pg.url("app")
        ),
    )
}

/// Two sessions of `served`: one in the default `latest` read mode, one set to `committed`.
async fn latest_and_committed(served: &Served) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let latest = served.client().await;
    let committed = served.client().await;
    committed
        .simple_query("SET tarn.read_mode = 'committed'")
        .await
        .unwrap();
    (latest, committed)
}

/// Reads `sql` over `client` (each read pushed to `reads`) until one is at position `end` or
/// later; panics after `within`.
async fn read_until(
    client: &tokio_postgres::Client,
    sql: &str,
    end: u64,
    within: Duration,
    reads: &mut Vec<(Rows, String)>,
) {
    let deadline = Instant::now() + within;
    loop {
        let read = read_at(client, sql).await;
        let at = lsn(&read.1);
        reads.push(read);
        if at >= end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reads did not reach {end:X} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    let served = bridged_server(&pg, 5000);
    let (latest, committed) = latest_and_committed(&served).await;
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

/// Parses PostgreSQL's `X/Y` LSN notation (what `pg_lsn` and `SHOW tarn.read_position` show).
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A table's rows as a multiset: each row as its non-NULL columns, `name=value` sorted by
/// name (so a column the answer lacks and a NULL one compare equal), the rows sorted.
type Rows = Vec<String>;

fn row_text(columns: &BTreeMap<String, String>) -> String {
    columns
        .iter()
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sql`'s answer over `client` as [`Rows`], and the position `SHOW tarn.read_position`
/// reports for it.
async fn read_at(client: &tokio_postgres::Client, sql: &str) -> (Rows, String) {
    let mut rows: Rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                let columns = r
                    .columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| r.get(i).map(|v| (c.name().to_string(), v.to_string())))
                    .collect();
                Some(row_text(&columns))
            }
            _ => None,
        })
        .collect();
    rows.sort();
    let position = rows_of(client, "SHOW tarn.read_position").await;
    assert_eq!(position.len(), 1, "one read position: {position:?}");
    (rows, position[0].clone())
}

async fn rows_of(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    rows(client, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// One change of `public.items` as `test_decoding` prints it.
#[derive(Debug, Clone)]
enum Change {
    Upsert(i64, BTreeMap<String, String>),
    Delete(i64),
    Truncate,
}

/// The columns of a `test_decoding` tuple (`id[integer]:1 v[text]:'a b' w[integer]:null`),
/// NULLs left out.
fn decoded_tuple(mut text: &str) -> BTreeMap<String, String> {
    let mut columns = BTreeMap::new();
    while !text.is_empty() {
        let open = text.find('[').expect("a column's type");
        let name = text[..open].to_string();
        let colon = open + text[open..].find("]:").expect("a column's value") + 2;
        let rest = &text[colon..];
        let (value, rest) = if let Some(quoted) = rest.strip_prefix('\'') {
            // '' is a quote inside the value.
            let mut value = String::new();
            let mut chars = quoted.char_indices().peekable();
            let end = loop {
                let (i, c) = chars.next().expect("a closing quote");
                if c == '\'' {
                    if matches!(chars.peek(), Some((_, '\''))) {
                        chars.next();
                        value.push('\'');
                        continue;
                    }
                    break i + 1;
                }
                value.push(c);
            };
            (Some(value), &quoted[end..])
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let token = &rest[..end];
            assert_ne!(token, "unchanged-toast-datum", "the test keeps values small");
            ((token != "null").then(|| token.to_string()), &rest[end..])
        };
        if let Some(v) = value {
            columns.insert(name, v);
        }
        text = rest.trim_start();
    }
    columns
}

/// Every transaction a `test_decoding` slot holds for `public.items`, in commit order: the
/// end of its commit record (what a pipeline's position counts) and its changes. Decoding
/// stops at the WAL flushed to disk, which the test cluster (`synchronous_commit=off`) may
/// leave behind the last commits: a transaction committed synchronously flushes them first.
async fn decoded_transactions(source: &tokio_postgres::Client, slot: &str) -> Vec<(u64, Vec<Change>)> {
    source
        // The test's server commits asynchronously, and a peek decodes only flushed WAL: a
        // synchronous commit of a transaction that writes WAL flushes everything before it (one
        // that only takes an xid writes none, and commits asynchronously after all).
        .batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; \
             SELECT pg_logical_emit_message(true, 'tarn-test', 'flush'); COMMIT;",
        )
        .await
        .unwrap();
    let lines = rows_of(
        source,
        &format!(
            "SELECT lsn::text || '|' || data FROM pg_logical_slot_peek_changes('{slot}', NULL, NULL, \
             'include-xids', '0', 'skip-empty-xacts', '1')"
        ),
    )
    .await;
    let mut transactions = Vec::new();
    let mut changes = Vec::new();
    for line in lines {
        let (at, data) = line.split_once('|').unwrap();
        if data == "BEGIN" {
            changes = Vec::new();
        } else if data == "COMMIT" {
            transactions.push((lsn(at), std::mem::take(&mut changes)));
        } else if let Some(change) = data.strip_prefix("table public.items: ") {
            let id = |t: &BTreeMap<String, String>| t["id"].parse::<i64>().unwrap();
            if let Some(tuple) = change
                .strip_prefix("INSERT: ")
                .or_else(|| change.strip_prefix("UPDATE: "))
            {
                assert!(!tuple.starts_with("old-key"), "the test changes no key: {data}");
                let columns = decoded_tuple(tuple);
                changes.push(Change::Upsert(id(&columns), columns));
            } else if let Some(tuple) = change.strip_prefix("DELETE: ") {
                changes.push(Change::Delete(id(&decoded_tuple(tuple))));
            } else if change.starts_with("TRUNCATE:") {
                changes.push(Change::Truncate);
            } else {
                panic!("unexpected change: {data}");
            }
        } else {
            assert!(!data.contains("public.items"), "unexpected decoded line: {data}");
        }
    }
    transactions
}

/// A table rebuilt from decoded changes: each row's columns by its id.
type Replayed = BTreeMap<i64, BTreeMap<String, String>>;

/// Applies one transaction's `changes` to `table`.
fn replay(table: &mut Replayed, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Upsert(id, columns) => {
                table.insert(*id, columns.clone());
            }
            Change::Delete(id) => {
                table.remove(id);
            }
            Change::Truncate => table.clear(),
        }
    }
}

/// `table`'s rows as [`Rows`], sorted.
fn replayed_rows(table: &Replayed) -> Rows {
    let mut rows: Rows = table.values().map(row_text).collect();
    rows.sort();
    rows
}

/// Checks every `(answer, position)` read against the table as the decoded transactions
/// leave it at that position (all transactions ending at or before it, from an empty table):
/// returns how many reads were checked, panicking at the first that differs.
fn check_reads(what: &str, transactions: &[(u64, Vec<Change>)], reads: &[(Rows, String)]) -> usize {
    let mut order: Vec<(u64, usize)> = reads.iter().enumerate().map(|(i, (_, p))| (lsn(p), i)).collect();
    order.sort();
    let mut table = Replayed::new();
    let mut next = 0;
    for (position, i) in order {
        while next < transactions.len() && transactions[next].0 <= position {
            replay(&mut table, &transactions[next].1);
            next += 1;
        }
        let want = replayed_rows(&table);
        let got = &reads[i].0;
        if *got != want {
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(10).collect();
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(10).collect();
            // Where the answer is PostgreSQL's table, if anywhere: tells a wrong position from
            // a wrong answer.
            let mut all = Replayed::new();
            let mut equal_at = Vec::new();
            for (at, changes) in transactions {
                replay(&mut all, changes);
                if replayed_rows(&all) == *got {
                    equal_at.push(format!("{:X}/{:X}", at >> 32, at & 0xffff_ffff));
                }
            }
            let around: Vec<&String> = reads[i.saturating_sub(2)..(i + 3).min(reads.len())]
                .iter()
                .map(|(_, p)| p)
                .collect();
            panic!(
                "{what}: read {i} of {} at {} is not PostgreSQL's table there ({} rows, want {}): \
                 extra {extra:?}, missing {missing:?}; the answer is PostgreSQL's table at {equal_at:?}; \
                 the positions of reads {}..: {around:?}",
                reads.len(),
                reads[i].1,
                got.len(),
                want.len(),
                i.saturating_sub(2)
            );
        }
    }
    reads.len()
}

/// A counter's value in a Prometheus exposition (0 when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Connects to the source database.
/// A PostgreSQL with database `app` and its table `items (id, v, n)`: a `test_decoding` slot
/// `diff` created while it was empty, then `initial` rows.
fn items_source(initial: i64) -> PostgresServer {
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, v text, n int NOT NULL)",
    )
    .unwrap();
    pg.psql(
        "app",
        "SELECT 'slot' FROM pg_create_logical_replication_slot('diff', 'test_decoding')",
    )
    .unwrap();
    pg.psql(
        "app",
        &format!("INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, {initial}) g"),
    )
    .unwrap();
    pg
}

async fn source_client(pg: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url("app"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Writers on the source, each on its own connection and keys, run transactions of upserts,
/// repeated updates of a few hot keys and deletes (also of the initial rows, which are in the
/// lake's files) until `stop`; each holds `gate` for reading during a transaction, so whoever
/// takes it for writing pauses them all between transactions. Returns the tasks, and a count
/// of transactions committed.
fn start_writers(
    pg: &PostgresServer,
    writers: i64,
    initial: i64,
    stop: &Arc<AtomicBool>,
    gate: &Arc<tokio::sync::RwLock<()>>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let done = Arc::new(AtomicU64::new(0));
    let tasks = (0..writers)
        .map(|w| {
            let (stop, gate, done, url) = (stop.clone(), gate.clone(), done.clone(), pg.url("app"));
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                // Keys of this writer: 10000·(w+1) + 0..60, the hot ones first; and a share of
                // the initial rows to delete.
                let own = |k: i64| 10_000 * (w + 1) + k;
                let mut seed = 0x9e37_79b9_u64.wrapping_mul(w as u64 + 1);
                let mut next = move |n: i64| {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((seed >> 33) % n as u64) as i64
                };
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let mut sql = String::from("BEGIN;");
                    for _ in 0..1 + next(4) {
                        match next(10) {
                            0..=3 => {
                                let k = own(next(60));
                                sql.push_str(&format!(
                                    "INSERT INTO items (id, v, n) VALUES ({k}, 'w{w}-{i}', 0) \
                                     ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = items.n + 1;"
                                ));
                            }
                            4..=6 => {
                                let k = own(next(3));
                                sql.push_str(&format!(
                                    "UPDATE items SET n = n + 1, v = 'hot{i}' WHERE id = {k};"
                                ));
                            }
                            7 => {
                                let k = own(next(60));
                                sql.push_str(&format!("DELETE FROM items WHERE id = {k};"));
                            }
                            _ => {
                                // Its own share of them: writers never wait on each other.
                                let k = 1 + w + writers * next(initial / writers);
                                sql.push_str(&format!("DELETE FROM items WHERE id = {k};"));
                            }
                        }
                    }
                    sql.push_str("COMMIT;");
                    {
                        let _running = gate.read().await;
                        client.batch_execute(&sql).await.unwrap();
                    }
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        })
        .collect();
    (tasks, done)
}

/// The differential test: while writers change the source, every `latest` read (and every
/// `committed` one) equals PostgreSQL's table at the position `SHOW tarn.read_position`
/// reports for it, rebuilt from a `test_decoding` slot created before the table had rows.
/// The load updates the same keys over and over inside the pending window, deletes rows that
/// are in the lake's files, crosses several commits by the row threshold, adds a column (reads
/// then fall back to the last commit, reporting the lake's position) and truncates the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_equal_the_source_at_their_position() {
    crate::init_logs();
    const INITIAL: i64 = 300;
    let pg = items_source(INITIAL);
    // Nothing commits by time; 1500 changes make a commit (the load crosses it many times).
    let served = bridged_server(&pg, 1500);
    let (latest, committed) = latest_and_committed(&served).await;
    assert_eq!(
        rows_of(&latest, "SHOW tarn.read_position").await,
        [""],
        "no read yet"
    );
    let source = source_client(&pg).await;
    let items = "SELECT * FROM cdc.items";
    wait_rows(
        &committed,
        "SELECT count(*) FROM cdc.items",
        &[INITIAL.to_string()],
        "the initial copy",
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let (writers, done) = start_writers(&pg, 3, INITIAL, &stop, &gate);
    let fallback = "tarn_query_bridge_reads_total{result=\"fallback\"}";
    let mut reads: Vec<(Rows, String)> = Vec::new();
    let mut lake_reads: Vec<(Rows, String)> = Vec::new();
    let (mut altered, mut truncated) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the load did not finish within 300 s");
        assert!(writers.iter().all(|w| !w.is_finished()), "a writer stopped");
        reads.push(read_at(&latest, items).await);
        if reads.len().is_multiple_of(5) {
            lake_reads.push(read_at(&committed, items).await);
        }
        if reads.len() == 20 {
            // A schema change in flight, the writers paused around it: `latest` falls back to
            // the last commit, and says it reads the lake's position.
            let _paused = gate.write().await;
            source
                .batch_execute(
                    "BEGIN; ALTER TABLE items ADD COLUMN w int;
                     INSERT INTO items (id, v, n, w) VALUES (9, 'with w', 0, 9)
                       ON CONFLICT (id) DO UPDATE SET w = 9;
                     COMMIT;",
                )
                .await
                .unwrap();
            let before = counter(&served.http_get("/metrics"), fallback);
            let fell_back = loop {
                assert!(
                    Instant::now() < deadline,
                    "no fallback read after the schema change"
                );
                let read = read_at(&latest, items).await;
                reads.push(read.clone());
                if counter(&served.http_get("/metrics"), fallback) > before {
                    break read;
                }
            };
            let lake = read_at(&committed, items).await;
            assert_eq!(fell_back, lake, "the fallback reads the lake, at its position");
            lake_reads.push(lake);
            altered = Some(reads.len());
        }
        if reads.len() >= 45 && truncated.is_none() {
            source.batch_execute("TRUNCATE items").await.unwrap();
            truncated = Some(reads.len());
        }
        // Enough reads, across several lake commits (one before the load too), some after
        // the truncate, and the writers' transactions far more than one per read.
        let commits = lake_reads
            .iter()
            .map(|(_, p)| p.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if reads.len() >= 70
            && commits >= 4
            && truncated.is_some_and(|t| reads.len() >= t + 10)
            && done.load(Ordering::Relaxed) >= 300
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // The end: `latest` reaches the last transaction.
    let transactions = decoded_transactions(&source, "diff").await;
    let last = transactions.last().unwrap().0;
    read_until(&latest, items, last, Duration::from_secs(60), &mut reads).await;

    tracing::info!(reads = reads.len(), altered = ?altered, truncated = ?truncated, "checking the reads");
    let checked = check_reads("latest", &transactions, &reads);
    check_reads("committed", &transactions, &lake_reads);
    let positions: std::collections::BTreeSet<u64> = reads.iter().map(|(_, p)| lsn(p)).collect();
    let truncate_at = transactions
        .iter()
        .find(|(_, c)| c.iter().any(|c| matches!(c, Change::Truncate)))
        .expect("the truncate was decoded")
        .0;
    let after_truncate = reads.iter().filter(|(_, p)| lsn(p) >= truncate_at).count();
    let metrics = served.http_get("/metrics");
    tracing::info!(
        checked,
        positions = positions.len(),
        transactions = transactions.len(),
        lake_positions = lake_reads.len(),
        after_truncate,
        altered = ?altered,
        merged = counter(&metrics, "tarn_query_bridge_reads_total{result=\"merged\"}"),
        "differential reads checked"
    );
    assert!(checked >= 70, "only {checked} reads");
    // The test's server commits asynchronously, so its WAL (and the pipeline's stream) moves
    // on in steps of the WAL writer's 200 ms: a few positions per second of load.
    assert!(
        positions.len() >= 10,
        "the reads saw only {} distinct positions",
        positions.len()
    );
    assert!(after_truncate >= 5, "{after_truncate} reads after the truncate");
    assert!(
        counter(&metrics, "tarn_query_bridge_reads_total{result=\"merged\"}") >= 50.0,
        "{metrics}"
    );
}

/// A crash with changes pending: `tarn serve` is killed (SIGKILL) while its pipeline holds
/// changes it has not committed, more changes come while it is down, and it restarts while the
/// source refuses connections. Its `latest` reads answer at once, with the lake's state at the
/// lake's position; once the source is back the pipeline catches up, and `latest` (then the
/// lake, after a commit) equals PostgreSQL's final table: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_serves_the_lake_then_catches_up() {
    crate::init_logs();
    const MAX_ROWS: i64 = 2000;
    let pg = items_source(200);
    let mut served = bridged_server(&pg, MAX_ROWS as u64);
    let source = source_client(&pg).await;
    let items = "SELECT * FROM cdc.items";
    let count = "SELECT count(*), count(DISTINCT id) FROM cdc.items";
    let mut reads: Vec<(Rows, String)> = Vec::new();
    {
        let committed = served.client().await;
        committed
            .simple_query("SET tarn.read_mode = 'committed'")
            .await
            .unwrap();
        wait_rows(&committed, count, &["200|200".into()], "the initial copy").await;
        // A transaction of the row threshold's size commits: the lake holds it.
        source
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 'bulk', 0 FROM generate_series(1001, {}) g",
                1000 + MAX_ROWS
            ))
            .await
            .unwrap();
        let all = (200 + MAX_ROWS).to_string();
        wait_rows(&committed, count, &[format!("{all}|{all}")], "the bulk commit").await;
        // Then changes that stay pending: the same keys updated again and again, deletes of
        // committed rows, inserts.
        for i in 0..100 {
            source
                .batch_execute(&format!(
                    "BEGIN;
                     UPDATE items SET n = n + 1, v = 'again{i}' WHERE id IN (1, 2, 1001);
                     DELETE FROM items WHERE id = {};
                     INSERT INTO items VALUES ({}, 'new', {i});
                     COMMIT;",
                    1100 + i,
                    5000 + i
                ))
                .await
                .unwrap();
        }
        let latest = served.client().await;
        // The last of them applied (the row count alone does not move: each deletes one row
        // and inserts one).
        wait_rows(
            &latest,
            "SELECT v FROM cdc.items WHERE id = 5099",
            &["new".to_string()],
            "pending changes",
        )
        .await;
        let lake = read_at(&committed, items).await;
        let merged = read_at(&latest, items).await;
        assert!(
            lsn(&merged.1) > lsn(&lake.1),
            "changes are pending: {} / {}",
            merged.1,
            lake.1
        );
        assert_ne!(merged.0, lake.0, "the pending changes show in latest only");
        reads.extend([lake, merged]);
    }

    // Killed with the changes pending; more come while it is down; the source refuses new
    // connections while it starts again.
    served.kill_and_restart_after(|| {
        pg.psql(
            "app",
            "UPDATE items SET n = n + 100, v = 'while down' WHERE id IN (1, 3, 1002);
             DELETE FROM items WHERE id BETWEEN 1200 AND 1209;
             INSERT INTO items SELECT g, 'while down', 0 FROM generate_series(6000, 6009) g;",
        )
        .unwrap();
        pg.psql("postgres", "ALTER DATABASE app WITH ALLOW_CONNECTIONS false")
            .unwrap();
    });
    let (latest, committed) = latest_and_committed(&served).await;
    let lake = read_at(&committed, items).await;
    let first = read_at(&latest, items).await;
    assert_eq!(
        first, lake,
        "right after the restart latest reads the lake, at its position"
    );
    assert_eq!(
        lsn(&lake.1),
        lsn(&reads[0].1),
        "the lake holds what it held before the kill"
    );
    // Still the lake while the pipeline fails to reach the source.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&served.http_get("/metrics"), "tarn_cdc_restarts_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the pipeline did not retry within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = read_at(&latest, items).await;
    assert_eq!(still, lake, "latest reads the lake while the pipeline cannot run");
    reads.extend([lake, first, still]);

    // The source back: the pipeline catches up from its slot, the reads on the way each at a
    // boundary, the last at PostgreSQL's end.
    pg.psql("postgres", "ALTER DATABASE app WITH ALLOW_CONNECTIONS true")
        .unwrap();
    let end = decoded_transactions(&source, "diff").await.last().unwrap().0;
    read_until(&latest, items, end, Duration::from_secs(120), &mut reads).await;
    let transactions = decoded_transactions(&source, "diff").await;
    let checked = check_reads("across the kill", &transactions, &reads);
    let want: Vec<String> = {
        let mut r = source_rows(&pg, "SELECT id, v, n FROM items ORDER BY id");
        r.sort();
        r
    };
    let caught_up = rows_of(&latest, "SELECT id, v, n FROM cdc.items ORDER BY id").await;
    let mut sorted = caught_up.clone();
    sorted.sort();
    assert_eq!(sorted, want, "latest after the catch-up is PostgreSQL's table");
    let source_count = source_rows(&pg, "SELECT count(*) FROM items")[0].clone();
    assert_eq!(
        rows_of(&latest, count).await,
        [format!("{source_count}|{source_count}")]
    );

    // A commit (the row threshold again) puts it all in the lake, once.
    source
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 'bulk2', 0 FROM generate_series(20001, {}) g",
            20000 + MAX_ROWS
        ))
        .await
        .unwrap();
    let mut want = source_rows(&pg, "SELECT id, v, n FROM items ORDER BY id");
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = rows_of(&committed, "SELECT id, v, n FROM cdc.items ORDER BY id").await;
        got.sort();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lake did not reach PostgreSQL's table within 60 s ({} rows, want {})",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = want.len().to_string();
    assert_eq!(rows_of(&committed, count).await, [format!("{total}|{total}")]);
    tracing::info!(checked, "reads across the kill checked");
}
