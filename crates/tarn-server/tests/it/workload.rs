//! Workload management in a real `tarn serve` (docs/workload.md): the memory budget with
//! spilling and SQLSTATE 53200, admission control (53300), `statement_timeout` (57014),
//! `tarn_stat_activity` and `pg_cancel_backend`.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::pgwire::Served;

/// Rows of `sql` (simple protocol) as text, columns joined by `|`.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
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

/// The SQLSTATE and message of a failed statement.
fn code_and_message(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// A metric's value in `/metrics` (summed over its label sets), 0 when absent.
fn metric(served: &Served, name: &str) -> f64 {
    served
        .http_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 1.5 million rows of ~210 bytes (about 300 MiB in memory): more than a 256 MB budget holds.
/// `s` is unique per row for `mod = 1500000`, shared by two rows for `mod = 750000`.
fn wide_rows(modulus: u64) -> String {
    format!(
        "SELECT x, concat(lpad(CAST((x * 7919) % {modulus} AS VARCHAR), 8, '0'), repeat('x', 200)) AS s \
         FROM generate_series(1, 1500000) AS t(x)"
    )
}

/// The rows of `sql` through the extended protocol (streamed, as BI tools read them), each as
/// its BIGINT columns.
async fn bigint_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<i64>>, tokio_postgres::Error> {
    use futures::TryStreamExt;
    client
        .query_raw(sql, std::iter::empty::<i64>())
        .await?
        .map_ok(|row| (0..row.len()).map(|i| row.get::<_, i64>(i)).collect())
        .try_collect()
        .await
}

/// A sort of all rows of [`wide_rows`]: the ids in the order of their wide strings.
fn sort_query() -> String {
    format!("SELECT x FROM ({}) AS w ORDER BY s", wide_rows(1_500_000))
}

/// An aggregation over 750 000 groups of two rows each: per group its key (the string's
/// leading digits), its row count and the sum of its ids.
fn aggregation_query() -> String {
    format!(
        "SELECT CAST(left(s, 8) AS BIGINT) AS k, count(*) AS c, sum(x) AS t FROM ({}) AS w GROUP BY s",
        wide_rows(750_000)
    )
}

/// The sort's and the aggregation's full results on a server without a memory limit (the
/// aggregation's groups ordered by key).
async fn unlimited_results() -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let served = Served::start_with(false, "[query]\nmemory_limit = \"unlimited\"\n");
    let client = served.client().await;
    let sorted = bigint_rows(&client, &sort_query())
        .await
        .expect("the unlimited sort");
    let mut grouped = bigint_rows(&client, &aggregation_query())
        .await
        .expect("the unlimited aggregation");
    grouped.sort_unstable();
    assert_eq!(
        metric(&served, "tarn_query_spills_total"),
        0.0,
        "the unlimited run spilled"
    );
    (sorted, grouped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256mb_budget_spills_sorts_and_aggregations_and_refuses_what_cannot_fit() {
    // The reference: the same statements on a server without a limit (run first, alone, so
    // the two servers do not compete for memory and CPU).
    let (unlimited_sorted, unlimited_grouped) = unlimited_results().await;
    let served = Served::start_with(false, "[query]\nmemory_limit = \"256MB\"\n");
    let client = served.client().await;
    // A sort of all rows (no LIMIT, so not a top-k): it spills, and its result is the
    // unlimited run's, row for row, in order. Each string is unique and starts with its
    // key `(x * 7919) % 1500000` zero-padded, so no row may follow one with a larger key.
    let sorted = bigint_rows(&client, &sort_query())
        .await
        .expect("the sort completes by spilling");
    assert_eq!(sorted.len(), 1_500_000);
    let keys: Vec<i64> = sorted.iter().map(|r| (r[0] * 7919) % 1_500_000).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "the spilled sort's rows are out of order"
    );
    assert!(
        sorted == unlimited_sorted,
        "the spilled sort's result differs from the unlimited run's"
    );
    // An aggregation over 750 000 groups of two rows each: the same groups, counts and sums
    // as the unlimited run's.
    let mut grouped = bigint_rows(&client, &aggregation_query())
        .await
        .expect("the aggregation completes by spilling");
    grouped.sort_unstable();
    assert_eq!(grouped.len(), 750_000);
    assert!(grouped.iter().all(|g| g[1] == 2), "a group without two rows");
    assert!(
        grouped == unlimited_grouped,
        "the spilled aggregation's result differs from the unlimited run's"
    );
    assert!(
        metric(&served, "tarn_query_spills_total") > 0.0,
        "nothing spilled under a 256 MB budget:\n{}",
        served.http_get("/metrics")
    );
    // The build side of a hash join cannot spill: the join is planned again as a sort-merge
    // join, which spills. With four sorts merging at once it may still not fit in 256 MB: then
    // it fails cleanly with 53200; when it completes, its count is right.
    let joined = rows(
        &client,
        &format!(
            "SELECT count(*) FROM ({rows}) AS a JOIN ({rows}) AS b ON a.s = b.s",
            rows = wide_rows(1_500_000)
        ),
    )
    .await;
    match joined {
        Ok(count) => assert_eq!(count, vec!["1500000"]),
        Err(e) => {
            let (code, message) = code_and_message(&e);
            assert_eq!(code, "53200", "{message}");
            assert!(message.contains("query.memory_limit (256.0 MiB)"), "{message}");
        }
    }
    assert!(metric(&served, "tarn_query_replanned_total") >= 1.0);
    // An aggregate's state cannot spill at all: the statement fails with 53200, naming the
    // operator and the limit.
    let err = rows(
        &client,
        &format!(
            "SELECT length(string_agg(s, ',')) FROM ({}) AS a",
            wide_rows(1_500_000)
        ),
    )
    .await
    .expect_err("one string of the whole input exceeds the budget");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "53200", "{message}");
    assert!(
        message.contains("query.memory_limit (256.0 MiB)") && message.contains("AggregateStream"),
        "{message}"
    );
    // The process is still up and serves this session and others.
    assert_eq!(rows(&client, "SELECT 41 + 1").await.unwrap(), vec!["42"]);
    let other = served.client().await;
    assert_eq!(
        rows(&other, "SELECT count(*) FROM generate_series(1, 1000)")
            .await
            .unwrap(),
        vec!["1000"]
    );
    // And with no statement running, no memory is held.
    assert_eq!(
        rows(
            &other,
            "SELECT count(*) FROM tarn_stat_activity WHERE memory_bytes > 0"
        )
        .await
        .unwrap(),
        vec!["0"]
    );
}

/// A statement that runs for minutes unless stopped.
const ENDLESS: &str = "SELECT count(*) FROM generate_series(1, 100000000000)";

/// Polls `tarn_stat_activity` (through `client`) until `check` accepts its rows
/// (`state|query`), or fails after `within`.
async fn wait_activity(
    client: &tokio_postgres::Client,
    within: Duration,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let now = rows(
            client,
            "SELECT pid, state, query FROM tarn_stat_activity ORDER BY query_start",
        )
        .await
        .unwrap();
        if check(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; activity: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_state(rows: &[String], state: &str) -> usize {
    rows.iter()
        .filter(|r| r.split('|').nth(1) == Some(state) && r.contains("generate_series"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_run_the_rest_queue_a_full_queue_refuses_and_catalog_queries_pass() {
    let served = Served::start_with(
        false,
        "[query]\nmax_concurrent = 2\nqueue_size = 4\nqueue_timeout = \"5m\"\n",
    );
    let watcher = served.client().await;
    // A lake table to preview while the slots are full.
    rows(
        &watcher,
        "CREATE TABLE peek AS SELECT * FROM (VALUES (1), (2), (3)) t(x)",
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(served.client().await);
    }
    let mut heavy = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        heavy.push(tokio::spawn(async move {
            // Queued ones enter one after the other, so the queue fills in order.
            let r = rows(&client, &format!("{ENDLESS} -- heavy {i}")).await;
            (client, r)
        }));
        if i < 6 {
            let expected = i + 1;
            wait_activity(
                &watcher,
                Duration::from_secs(30),
                "the statement is listed",
                |r| count_state(r, "active") + count_state(r, "queued") == expected,
            )
            .await;
        }
    }
    // Two run, four wait, two are refused at once with 53300 naming the limits.
    let activity = wait_activity(&watcher, Duration::from_secs(30), "two refused", |_| {
        heavy.iter().filter(|h| h.is_finished()).count() == 2
    })
    .await;
    assert_eq!(count_state(&activity, "active"), 2, "{activity:#?}");
    assert_eq!(count_state(&activity, "queued"), 4, "{activity:#?}");
    let mut waiting = Vec::new();
    for h in heavy {
        if h.is_finished() {
            let (_, r) = h.await.unwrap();
            let (code, message) = code_and_message(&r.expect_err("refused"));
            assert_eq!(code, "53300", "{message}");
            assert!(
                message.contains("query.max_concurrent") && message.contains("query.queue_size"),
                "{message}"
            );
        } else {
            waiting.push(h);
        }
    }
    assert!(metric(&served, "tarn_query_rejected_total") >= 2.0);
    assert_eq!(metric(&served, "tarn_query_queued"), 4.0);
    // Catalog queries and statements without tables do not wait behind them.
    let started = Instant::now();
    let tables = rows(&watcher, "SELECT count(*) FROM information_schema.tables")
        .await
        .unwrap();
    assert_eq!(tables.len(), 1);
    rows(&watcher, "SELECT relname FROM pg_catalog.pg_class LIMIT 1")
        .await
        .unwrap();
    rows(&watcher, "SELECT 1").await.unwrap();
    // Nor does a preview of a lake table's first rows (what BI tools show of a table).
    assert_eq!(
        rows(&watcher, "SELECT * FROM peek LIMIT 2").await.unwrap().len(),
        2
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "catalog queries and a preview took {:?} while the slots were full",
        started.elapsed()
    );
    // pg_cancel_backend stops a running statement (57014 for its client) and a queued one
    // takes its slot.
    let running_pid = activity
        .iter()
        .find(|r| r.split('|').nth(1) == Some("active") && r.contains("generate_series"))
        .and_then(|r| r.split('|').next())
        .unwrap()
        .to_string();
    assert_eq!(
        rows(&watcher, &format!("SELECT pg_cancel_backend({running_pid})"))
            .await
            .unwrap(),
        vec!["t"]
    );
    let after = wait_activity(
        &watcher,
        Duration::from_secs(30),
        "a queued statement takes the slot",
        |r| count_state(r, "active") == 2 && count_state(r, "queued") == 3,
    )
    .await;
    assert!(
        !after.iter().any(|r| r.starts_with(&format!("{running_pid}|"))),
        "{after:#?}"
    );
    // Stop the rest: cancel every listed statement.
    let mut cancelled_codes = Vec::new();
    for r in &after {
        if r.contains("generate_series") {
            let pid = r.split('|').next().unwrap();
            rows(&watcher, &format!("SELECT pg_cancel_backend({pid})"))
                .await
                .unwrap();
        }
    }
    for h in waiting {
        let (_, r) = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("cancelled in time")
            .unwrap();
        cancelled_codes.push(code_and_message(&r.expect_err("cancelled")).0);
    }
    assert!(
        cancelled_codes.iter().all(|c| c == "57014"),
        "{cancelled_codes:?}"
    );
    wait_activity(&watcher, Duration::from_secs(30), "nothing left", |r| {
        count_state(r, "active") + count_state(r, "queued") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_cancels_with_57014_and_the_session_stays_usable() {
    // The role's default applies until the session sets its own.
    let served = Served::start_with(
        false,
        "[query]\nstatement_timeout = \"0\"\n[query.roles.analyst]\nstatement_timeout = \"1s\"\n",
    );
    let client = served.client().await;
    let started = Instant::now();
    let err = rows(&client, ENDLESS).await.expect_err("the role's timeout");
    let (code, message) = code_and_message(&err);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("57014", "canceling statement due to statement timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    rows(&client, "SET statement_timeout = '500ms'").await.unwrap();
    assert_eq!(
        rows(&client, "SHOW statement_timeout").await.unwrap(),
        vec!["500ms"]
    );
    let started = Instant::now();
    let err = rows(&client, ENDLESS).await.expect_err("the session's timeout");
    let took = started.elapsed();
    assert_eq!(code_and_message(&err).0, "57014");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The session goes on; the cancelled statement is gone from the list.
    assert_eq!(rows(&client, "SELECT 1 + 1").await.unwrap(), vec!["2"]);
    assert_eq!(
        rows(&client, "SELECT count(*) FROM tarn_stat_activity WHERE query LIKE '%100000000000%' AND query NOT LIKE '%tarn_stat_activity%'")
            .await
            .unwrap(),
        vec!["0"]
    );
    assert!(metric(&served, "tarn_query_timeouts_total") >= 2.0);
    // The extended protocol is held to it too.
    let err = client
        .query_one(ENDLESS, &[])
        .await
        .expect_err("the extended protocol's timeout");
    assert_eq!(code_and_message(&err).0, "57014");
    let one: i64 = client
        .query_one("SELECT count(*) FROM generate_series(1, 3)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 3);
}

/// The p99 ratio line of `tarn bench workload`'s output.
fn ratio_of(output: &str) -> f64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("freshness p99 ratio load/idle: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ratio in the benchmark's output:\n{output}"))
}

#[test]
fn cdc_freshness_holds_while_heavy_queries_saturate_the_cpu() {
    // The benchmark's CDC part: one `tarn serve` with a pipeline from a private PostgreSQL,
    // freshness probes idle and then while eight connections run heavy queries in a loop.
    let dir = tempfile::Builder::new()
        .prefix("tarn-wlm-bench-")
        .tempdir()
        .unwrap();
    let bench_dir = dir.path().join("bench");
    let started = Instant::now();
    let (ok, stdout, stderr) = crate::tarn(
        dir.path(),
        &[
            "bench",
            "workload",
            "--sf",
            "0",
            "--seconds",
            "15",
            "--load",
            "8",
            "--dir",
            bench_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "tarn bench workload failed:\n{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "{:?}",
        started.elapsed()
    );
    let probes = |label: &str| -> usize {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("freshness {label}: ")))
            .and_then(|l| l.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {label} line:\n{stdout}"))
    };
    assert!(probes("idle") >= 10 && probes("under load") >= 10, "{stdout}");
    // The load really ran: every slot busy (twice the cores), the rest queued.
    let running: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("load: "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no load line:\n{stdout}"));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(running >= cores.min(8), "{stdout}");
    let ratio = ratio_of(&stdout);
    assert!(
        ratio <= 2.0,
        "freshness p99 under load is {ratio:.2}x its idle figure:\n{stdout}"
    );
    // The HTTP endpoint's health checks kept answering promptly under the load (the HTTP
    // endpoint is on the main runtime, the queries on theirs): every 100 ms for 15 s, so at
    // least a hundred answers, the slowest in well under a second.
    let (checks, p99) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("latency /healthz under load: "))
        .and_then(|l| {
            let checks: usize = l.split(' ').next()?.parse().ok()?;
            let p99: f64 = l.split("p99 ").nth(1)?.split('s').next()?.parse().ok()?;
            Some((checks, p99))
        })
        .unwrap_or_else(|| panic!("no /healthz line:\n{stdout}"));
    assert!(checks >= 100, "{stdout}");
    assert!(p99 < 0.5, "/healthz p99 under load is {p99} s:\n{stdout}");
}

/// A second configured user, in no `[query.roles]` role, for [`Served::start_with`]'s `extra`.
const OTHER_USER: &str = "[[auth.users]]\nname = \"etl\"\npassword = \"etl-pw\"\n";

/// A tokio-postgres client logged in as `user` (configured with `password`).
async fn client_as(served: &Served, user: &str, password: &str) -> tokio_postgres::Client {
    let config = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=tarn",
        served.pg_port
    );
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits until `client`'s connection is closed by the server, or fails naming `what`.
async fn wait_closed(client: &tokio_postgres::Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "{what}: the connection is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_session_timeout_closes_only_idle_transactions() {
    // No server default; the role `analyst` (the user of `served.client()`) has one, which a
    // session's SET overrides. `etl` is in no role.
    let served = Served::start_with(
        false,
        &format!(
            "[query]\nidle_in_transaction_session_timeout = \"0\"\n\
             [query.roles.analyst]\nidle_in_transaction_session_timeout = \"500ms\"\n{OTHER_USER}"
        ),
    );
    let idle = served.client().await;
    let outside = served.client().await;
    let working = served.client().await;
    let opted_out = served.client().await;
    let other = client_as(&served, "etl", "etl-pw").await;
    let other_set = client_as(&served, "etl", "etl-pw").await;
    rows(&opted_out, "SET idle_in_transaction_session_timeout = 0")
        .await
        .unwrap();
    rows(&other_set, "SET idle_in_transaction_session_timeout = '500ms'")
        .await
        .unwrap();
    // These two open their transactions first, so they have been idle in them longest when
    // the others are closed.
    rows(&other, "BEGIN").await.unwrap();
    rows(&opted_out, "BEGIN").await.unwrap();
    rows(&working, "SET statement_timeout = '1500ms'").await.unwrap();
    rows(&idle, "BEGIN").await.unwrap();
    rows(&other_set, "BEGIN").await.unwrap();
    rows(&working, "BEGIN").await.unwrap();
    // A statement running longer than the idle timeout inside a transaction is not idleness.
    let err = rows(&working, ENDLESS)
        .await
        .expect_err("stopped by its statement_timeout");
    assert_eq!(code_and_message(&err).0, "57014");
    // Still open (the failed transaction is aborted, as in PostgreSQL).
    rows(&working, "ROLLBACK").await.unwrap();
    assert_eq!(rows(&working, "SELECT 2").await.unwrap(), vec!["2"]);
    // The role member's connection idle in its transaction is closed by the role's default,
    // and so is the other user's that set the timeout itself.
    wait_closed(&idle, "the role member's idle transaction").await;
    wait_closed(
        &other_set,
        "the idle transaction of a session that SET the timeout",
    )
    .await;
    assert!(rows(&idle, "SELECT 1").await.is_err());
    // The other user (no role, no server default) and the role member whose session SET 0
    // stay in their transactions, idle longer than the others were.
    assert!(!other.is_closed() && !opted_out.is_closed());
    for c in [&other, &opted_out] {
        assert_eq!(rows(c, "SELECT 4").await.unwrap(), vec!["4"]);
        rows(c, "COMMIT").await.unwrap();
    }
    // Connections idle outside a transaction stay, however long they were idle.
    assert!(!outside.is_closed() && !working.is_closed());
    assert_eq!(rows(&outside, "SELECT 1").await.unwrap(), vec!["1"]);
    assert_eq!(rows(&working, "SELECT 3").await.unwrap(), vec!["3"]);
    assert!(metric(&served, "tarn_query_idle_in_transaction_closed_total") >= 2.0);
    // A bad value names the setting.
    let err = rows(&outside, "SET idle_in_transaction_session_timeout = 'soon'")
        .await
        .unwrap_err();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "22023");
    assert!(
        message.contains("idle_in_transaction_session_timeout"),
        "{message}"
    );
}

/// `work`'s result, or a failure naming `what` after `secs` seconds.
async fn within<T>(secs: u64, what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

/// The text of `COPY ... TO STDOUT` (tokio-postgres: the extended protocol), or the error.
async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    use futures::TryStreamExt;
    let chunks: Vec<_> = client.copy_out(sql).await?.try_collect().await?;
    Ok(chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_ref()).into_owned())
        .collect())
}

/// A `psql -c` against the endpoint on `port` (the simple protocol): (success, stdout, stderr).
fn psql(port: u16, command: &str) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", command])
        .arg(format!(
            "host=127.0.0.1 port={} user={} password={} dbname=tarn",
            port,
            crate::pgwire::USER,
            crate::pgwire::PASSWORD
        ))
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_queues_for_a_slot_is_listed_and_times_out_with_57014() {
    let served = Served::start_with(
        false,
        "[query]\nmax_concurrent = 1\nqueue_size = 4\nqueue_timeout = \"5m\"\n",
    );
    let (watcher, holder, copier) = (
        served.client().await,
        served.client().await,
        served.client().await,
    );
    let holding = tokio::spawn(async move { rows(&holder, &format!("{ENDLESS} -- holder")).await });
    wait_activity(&watcher, Duration::from_secs(30), "the slot is taken", |r| {
        count_state(r, "active") == 1
    })
    .await;
    // COPY waits for the slot like any statement, and is listed while it does.
    let copy_sql = "COPY (SELECT count(*) FROM generate_series(1, 3)) TO STDOUT";
    let copying = tokio::spawn(async move {
        let r = copy_out(&copier, copy_sql).await;
        (copier, r)
    });
    let activity = wait_activity(&watcher, Duration::from_secs(30), "COPY queued", |r| {
        r.iter().any(|l| l.contains("|queued|COPY"))
    })
    .await;
    assert!(!copying.is_finished(), "{activity:#?}");
    let holder_pid = activity
        .iter()
        .find(|r| r.contains("|active|") && r.contains("-- holder"))
        .and_then(|r| r.split('|').next())
        .unwrap()
        .to_string();
    rows(&watcher, &format!("SELECT pg_cancel_backend({holder_pid})"))
        .await
        .unwrap();
    let held = within(30, "the holder's cancel", holding).await.unwrap();
    assert_eq!(code_and_message(&held.unwrap_err()).0, "57014");
    let (copier, copied) = tokio::time::timeout(Duration::from_secs(30), copying)
        .await
        .expect("COPY admitted once the slot is free")
        .unwrap();
    assert_eq!(copied.unwrap(), "3\n");

    // statement_timeout stops a COPY whose query runs long, in either protocol.
    within(30, "SET", rows(&copier, "SET statement_timeout = '500ms'"))
        .await
        .unwrap();
    let endless_copy = format!("COPY ({ENDLESS}) TO STDOUT");
    let started = Instant::now();
    let err = within(30, "the endless COPY's timeout", copy_out(&copier, &endless_copy))
        .await
        .expect_err("timed out");
    assert_eq!(
        code_and_message(&err),
        (
            "57014".to_string(),
            "canceling statement due to statement timeout".to_string()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (ok, _, stderr) = within(
        30,
        "psql's COPY",
        tokio::task::spawn_blocking({
            let (port, command) = (
                served.pg_port,
                format!("SET statement_timeout = '500ms'; {endless_copy}"),
            );
            move || psql(port, &command)
        }),
    )
    .await
    .unwrap();
    assert!(
        !ok && stderr.contains("canceling statement due to statement timeout"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The session goes on and nothing stays listed.
    assert_eq!(
        within(30, "a COPY after", copy_out(&copier, copy_sql))
            .await
            .unwrap(),
        "3\n"
    );
    wait_activity(&watcher, Duration::from_secs(30), "nothing left", |r| {
        !r.iter().any(|l| l.contains("COPY") || l.contains("-- holder"))
    })
    .await;
    assert!(metric(&served, "tarn_query_timeouts_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_show_their_memory_and_spills() {
    let served = Served::start_with(false, "[query]\nmemory_limit = \"256MB\"\n");
    let (watcher, client) = (served.client().await, served.client().await);
    // A sort that spills (tokio-postgres: parse, bind, execute), watched while it runs.
    let sql = format!(
        "SELECT CAST(max(n) AS BIGINT) AS extended_marker FROM (SELECT row_number() OVER (ORDER BY s DESC) AS n FROM ({}))",
        wide_rows(1_500_000)
    );
    let sorting = tokio::spawn(async move { client.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0)) });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut peak, mut spilled) = (0i64, 0i64);
    while !sorting.is_finished() {
        let now = rows(
            &watcher,
            "SELECT peak_memory_bytes, spilled_bytes FROM tarn_stat_activity \
             WHERE query LIKE '%extended_marker%' AND query NOT LIKE '%tarn_stat_activity%'",
        )
        .await
        .unwrap();
        if let Some(r) = now.first() {
            let (p, s) = r.split_once('|').unwrap();
            peak = peak.max(p.parse().unwrap());
            spilled = spilled.max(s.parse().unwrap());
        }
        assert!(Instant::now() < deadline, "the sort did not end within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sorting.await.unwrap().unwrap(), 1_500_000);
    assert!(peak > 50 << 20, "peak memory seen {peak}");
    assert!(spilled > 0, "spilled bytes seen {spilled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_statement_timeout_zero_units_show_and_reset_work_as_in_postgresql() {
    // A server default, which `0` overrides (no timeout) and RESET restores. (The small memory
    // budget and spill space are for the last check, `query.spill_limit`.)
    let served = Served::start_with(
        false,
        "[query]\nstatement_timeout = \"1s\"\nmemory_limit = \"64MB\"\nspill_limit = \"1MB\"\n",
    );
    let client = served.client().await;
    assert_eq!(rows(&client, "SHOW statement_timeout").await.unwrap(), vec!["1s"]);
    for (set, shown) in [
        ("SET statement_timeout = 250", "250ms"),
        ("SET statement_timeout = '1500ms'", "1500ms"),
        ("SET statement_timeout TO '2s'", "2s"),
        ("SET statement_timeout = '1.5s'", "1500ms"),
        ("SET statement_timeout = '1min'", "1min"),
        ("SET statement_timeout = '0'", "0"),
    ] {
        rows(&client, set).await.unwrap();
        assert_eq!(
            rows(&client, "SHOW statement_timeout").await.unwrap(),
            vec![shown],
            "{set}"
        );
    }
    // 0: no timeout, though the server has one: a 2-second statement completes.
    let slow = "SELECT count(*) FROM generate_series(1, 100000000) AS t(x) WHERE x % 7 = 3";
    let started = Instant::now();
    rows(&client, slow)
        .await
        .unwrap_or_else(|e| panic!("cut short after {:?}: {e}", started.elapsed()));
    // The extended protocol sets and reads the same setting.
    client
        .execute("SET statement_timeout = '300ms'", &[])
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "SHOW statement_timeout").await.unwrap(),
        vec!["300ms"]
    );
    let err = client.query_one(ENDLESS, &[]).await.expect_err("300ms");
    assert_eq!(code_and_message(&err).0, "57014");
    // RESET (and DEFAULT) go back to the server's default.
    rows(&client, "RESET statement_timeout").await.unwrap();
    assert_eq!(rows(&client, "SHOW statement_timeout").await.unwrap(), vec!["1s"]);
    let err = rows(&client, ENDLESS)
        .await
        .expect_err("the server default again");
    assert_eq!(code_and_message(&err).0, "57014");
    rows(&client, "SET statement_timeout = 0").await.unwrap();
    rows(&client, "SET statement_timeout TO DEFAULT").await.unwrap();
    assert_eq!(rows(&client, "SHOW statement_timeout").await.unwrap(), vec!["1s"]);
    // Nonsense is refused, naming the value; the setting stays.
    let err = rows(&client, "SET statement_timeout = 'soon'")
        .await
        .expect_err("refused");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("\"soon\""), "{message}");
    assert_eq!(rows(&client, "SHOW statement_timeout").await.unwrap(), vec!["1s"]);
    // A sort that must spill more than `query.spill_limit` (1 MB) allows fails with 53100
    // naming the limit, and the session goes on.
    rows(&client, "SET statement_timeout = 0").await.unwrap();
    let err = rows(
        &client,
        "SELECT count(*), max(p) FROM (SELECT lag(s) OVER (ORDER BY s) AS p FROM (\
         SELECT repeat(CAST(x * 7919 % 500000 AS VARCHAR), 40) AS s FROM generate_series(1, 500000) AS t(x)) AS w) AS o",
    )
    .await
    .expect_err("the spill files would exceed query.spill_limit");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "53100", "{message}");
    assert!(message.contains("query.spill_limit"), "{message}");
    assert_eq!(rows(&client, "SELECT 5").await.unwrap(), vec!["5"]);
}

/// A CDC writer's automatic maintenance runs in the background (docs/maintenance.md): with
/// `maintenance.auto` on and a steady change stream from a real PostgreSQL, `tarn cdc run`
/// compacts its table several times while it keeps committing, and the lake ends equal to the
/// database.
///
/// Each table's maintenance is made to take 10 s more (failpoint `cdc.maintenance.table`,
/// before the real compaction). Had the writer waited for it, as it did when maintenance ran
/// between its commits, the table's history would have a gap of at least 10 s between two
/// commits of the pipeline before each compaction. The snapshots' own timestamps must show no
/// gap of 8 s or more between consecutive commits of the pipeline: commits come every second
/// plus their own time, and the only wait left is for a compaction that lost four times to
/// the writer's updates and rewrites this 3000-row table holding the commit lock (well under
/// a second for the files of a few seconds of commits). The workload updates rows all over
/// the table, the worst case for compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_maintenance_compacts_in_the_background_while_the_writer_keeps_committing() {
    use iceberg::spec::Operation;
    use tokio_util::sync::CancellationToken;

    let cdc = crate::cdc::Cdc::new(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, owner text);
         INSERT INTO accounts SELECT g, 100, 'init' FROM generate_series(1, 3000) g;",
    )
    .await;
    let dir = cdc.lake.path().to_path_buf();
    // Its log (on stdout: a long-running command) and its errors, in one file.
    let log_path = dir.join("cdc-run.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(["--set", &format!("cdc.source={}", cdc.pg.url("app"))])
            // Commits once a second: the workload updates rows all over the table, so every commit
            // touches nearly every file, and a compaction commits without waiting for the writer
            // only when its rewrite fits between two commits.
            .args(["--set", "cdc.flush.interval=1s"])
            .args(["--set", "maintenance.interval=1s"])
            .args(["--set", "maintenance.min_files=4"])
            // Every snapshot stays, for the timeline below.
            .args(["--set", "maintenance.snapshot_age=1h"])
            .args(["--set", "maintenance.retain_snapshots=100000"])
            .args(["cdc", "run"])
            .env("TARN_FAILPOINTS", "cdc.maintenance.table=sleep(10000)")
            .env("TARN_LOG", "info")
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let q = "SELECT id, balance, owner FROM accounts ORDER BY id";
    let lq = "SELECT id, balance, owner FROM cdc.accounts ORDER BY id";
    cdc.wait_same(q, lq, Duration::from_secs(90)).await;

    let url = cdc.pg.url("app");
    let stop = CancellationToken::new();
    let writers: Vec<_> = (1..=2u64)
        .map(|seed| tokio::spawn(crate::cdc::workload(url.clone(), stop.clone(), seed * 101)))
        .collect();
    // Commits of the stream from here; compactions whose whole round ran during the stream
    // (a round started before it may sleep its 10 s without a change to commit).
    let stream_ms = chrono::Utc::now().timestamp_millis();
    let started_ms = stream_ms + 11_000;
    // Until the writer's maintenance compacted three times during the stream.
    let config = cdc.config();
    let lake = tarn_lake::Lake::open(&config).await.unwrap();
    let ident = tarn_lake::parse_table_name("cdc.accounts").unwrap();
    let compactions = |table: &iceberg::table::Table| {
        table
            .metadata()
            .snapshots()
            .filter(|s| s.timestamp_ms() > started_ms && s.summary().operation == Operation::Replace)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let table = lake.load_table(&ident).await.unwrap();
        if compactions(&table) >= 3 {
            break;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("tarn cdc run exited ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{} compaction(s) within 180 s:\n{}",
            compactions(&table),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let stopped_ms = chrono::Utc::now().timestamp_millis();
    for w in writers {
        w.await.unwrap();
    }
    cdc.wait_same(q, lq, Duration::from_secs(90)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let status = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    let log = log();
    assert!(status.success(), "tarn cdc run: {status}\n{log}");
    assert!(
        log.contains("key index follows the background compaction"),
        "the writer never moved its index past a compaction:\n{log}"
    );

    // The timeline, from the table's snapshots.
    let table = lake.load_table(&ident).await.unwrap();
    let metadata = table.metadata();
    let mut snapshots: Vec<_> = metadata
        .snapshots()
        .filter(|s| s.timestamp_ms() > stream_ms && s.timestamp_ms() < stopped_ms)
        .collect();
    snapshots.sort_by_key(|s| s.timestamp_ms());
    let commits: Vec<i64> = snapshots
        .iter()
        .filter(|s| {
            s.summary()
                .additional_properties
                .contains_key(tarn_cdc::sink::SUMMARY_PIPELINE)
        })
        .map(|s| s.timestamp_ms())
        .collect();
    let compacted: Vec<_> = snapshots
        .iter()
        .filter(|s| s.timestamp_ms() > started_ms && s.summary().operation == Operation::Replace)
        .collect();
    assert!(
        compacted.len() >= 3,
        "{} compactions during the stream:\n{log}",
        compacted.len()
    );
    for c in &compacted {
        // Fewer files after than before.
        let count = |key: &str| -> u64 {
            c.summary()
                .additional_properties
                .get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(
            count("deleted-data-files") > count("added-data-files"),
            "compaction {} did not reduce the file count: {:?}",
            c.snapshot_id(),
            c.summary()
        );
        // The writer committed while its maintenance ran.
        let during = commits
            .iter()
            .filter(|&&t| t > c.timestamp_ms() - 10_000 && t < c.timestamp_ms())
            .count();
        assert!(
            during >= 1,
            "no commit of the pipeline in the 10 s before compaction {}:\n{log}",
            c.snapshot_id()
        );
    }
    let last = compacted.last().unwrap().timestamp_ms();
    let gaps: Vec<i64> = commits
        .windows(2)
        .filter(|w| w[1] <= last)
        .map(|w| w[1] - w[0])
        .collect();
    let longest = gaps.iter().copied().max().unwrap_or(0);
    assert!(
        longest < 8000,
        "the pipeline did not commit for {longest} ms while its maintenance ran ({} commits):\n{log}",
        commits.len()
    );
    eprintln!(
        "{} commits, {} compactions ({} planned again holding the commit lock); longest gap between commits {longest} ms",
        commits.len(),
        compacted.len(),
        log.matches("holding the commit lock").count()
    );
}

/// A child process killed when dropped, so a failing test leaves none behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `[query.roles.NAME]` limits follow the groups governance sees: with OIDC logins, a token's
/// client role `reader` (a group of its principal) is held to `max_concurrent = 1` through the
/// wire endpoint — a second statement of any member queues and is refused after
/// `query.queue_timeout`, naming the role's limit — while a user outside the group runs at
/// once. Under the policy, `pg_cancel_backend` of another user's statement is refused (42501)
/// and of one's own is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_limits_follow_oidc_groups_and_a_policy_restricts_pg_cancel_backend() {
    use tarn_test_utils::oidc::{RSA1, Signer, issuer};
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let policy = tempfile::Builder::new()
        .prefix("tarn-wl-policy-")
        .tempdir()
        .unwrap();
    let policy_file = policy.path().join("policy.rego");
    // Everyone may do everything (the statements here read `generate_series`); that a policy
    // is configured at all is what restricts `pg_cancel_backend`.
    std::fs::write(
        &policy_file,
        "package trino\n\nimport rego.v1\n\ndefault allow := true\n",
    )
    .unwrap();
    let served = Served::start_with(
        false,
        &format!(
            "[auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\n\
             [policy]\nfile = \"{}\"\n\
             [query]\nqueue_timeout = \"2s\"\n[query.roles.reader]\nmax_concurrent = 1\n",
            issuer.url,
            issuer.ca_file.display(),
            policy_file.display()
        ),
    );
    // `ana` and `bob` carry the client role `reader` (the issuer's default claims); the
    // password user `analyst` has no groups.
    let token = |user: &str| rsa.sign(&issuer.claims(user));
    let ana = client_as(&served, "ana", &token("ana")).await;
    let ana_again = client_as(&served, "ana", &token("ana")).await;
    let bob = client_as(&served, "bob", &token("bob")).await;
    let outsider = served.client().await;
    let holding = tokio::spawn(async move { rows(&ana, &format!("{ENDLESS} -- ana holds")).await });
    let activity = wait_activity(&ana_again, Duration::from_secs(30), "ana's statement runs", |r| {
        r.iter()
            .any(|l| l.contains("|active|") && l.contains("-- ana holds"))
    })
    .await;
    let ana_pid = activity
        .iter()
        .find(|l| l.contains("-- ana holds"))
        .and_then(|l| l.split('|').next())
        .unwrap()
        .to_string();
    // Another member of `reader` waits for the role's one slot, then is refused naming it.
    let small = "SELECT count(*) FROM generate_series(1, 3)";
    let queued = tokio::spawn(async move {
        let r = rows(&bob, &format!("{small} -- bob waits")).await;
        (bob, r)
    });
    wait_activity(
        &ana_again,
        Duration::from_secs(30),
        "bob's statement queues",
        |r| {
            r.iter()
                .any(|l| l.contains("|queued|") && l.contains("-- bob waits"))
        },
    )
    .await;
    let (bob, refused) = within(30, "bob's refusal", queued).await.unwrap();
    let (code, message) = code_and_message(&refused.expect_err("the role's slot is taken"));
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("query.roles.reader.max_concurrent") && message.contains("query.queue_timeout"),
        "{message}"
    );
    // A user outside the group is not held back by it.
    let started = Instant::now();
    assert_eq!(rows(&outsider, small).await.unwrap(), vec!["3"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Under the policy, only one's own statements may be cancelled.
    for other in [&outsider, &bob] {
        let err = rows(other, &format!("SELECT pg_cancel_backend({ana_pid})"))
            .await
            .expect_err("another user's statement");
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "42501", "{message}");
        assert!(message.contains("permission denied"), "{message}");
    }
    assert!(!holding.is_finished(), "ana's statement stopped");
    assert_eq!(
        rows(&ana_again, &format!("SELECT pg_cancel_backend({ana_pid})"))
            .await
            .unwrap(),
        vec!["t"]
    );
    let stopped = within(30, "ana's statement stops", holding).await.unwrap();
    assert_eq!(code_and_message(&stopped.expect_err("cancelled")).0, "57014");
}
