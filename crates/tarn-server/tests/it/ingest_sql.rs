//! `tarn ingest sql` against a real PostgreSQL: full and incremental runs (append and upsert)
//! with updates in between, cursor ties at commit boundaries, kill -9 mid-run and resume, and
//! errors (a bad query, an unreachable database) that leave the table unchanged, and TLS.

use std::time::{Duration, Instant};

use crate::{TestLake, tarn, tarn_bin};

fn ingest(t: &TestLake, source: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["ingest", "sql", "--source", source];
    args.extend_from_slice(extra);
    tarn(t.path(), &args)
}

fn ingest_ok(t: &TestLake, source: &str, extra: &[&str]) -> String {
    let (ok, out, err) = ingest(t, source, extra);
    assert!(ok, "tarn ingest sql failed:\n{out}\n{err}");
    err
}

async fn snapshot_count(t: &TestLake, table: &str) -> usize {
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let ident = tarn_lake::parse_table_name(table).unwrap();
    match lake.load_table(&ident).await {
        Ok(table) => table.metadata().snapshots().count(),
        Err(_) => 0,
    }
}

async fn ids(t: &TestLake, table: &str) -> Vec<i64> {
    let session = t.second_session().await;
    crate::query(&session, &format!("SELECT id FROM {table} ORDER BY id"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_runs_from_postgres() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    // Ten rows share each `updated_at` (a tie group), the last group has one.
    pg.psql(
        "postgres",
        "CREATE TABLE users (id int8 PRIMARY KEY, name text, score numeric(10,2), \
                             updated_at timestamptz NOT NULL, tags text[]); \
         INSERT INTO users SELECT i, 'user ' || i, i * 1.5, \
                timestamptz '2026-01-01 00:00:00+00' + (i / 10) * interval '1 minute', ARRAY['a', 'b'] \
         FROM generate_series(1, 100) i",
    )
    .unwrap();
    let t = TestLake::new().await;
    let url = pg.url("postgres");

    // Full: each run replaces the rows.
    for _ in 0..2 {
        ingest_ok(
            &t,
            &url,
            &[
                "--query",
                "SELECT id, name, score, tags FROM users",
                "--table",
                "src.snap",
            ],
        );
    }
    assert_eq!(
        t.query("SELECT count(*), count(DISTINCT id), sum(score) FROM src.snap")
            .await,
        vec!["100|100|7575.00"]
    );
    assert_eq!(
        t.query("SELECT arrow_typeof(score) FROM src.snap LIMIT 1").await,
        vec!["Decimal128(10, 2)"]
    );
    assert_eq!(
        t.query("SELECT tags FROM src.snap WHERE id = 7").await,
        vec!["[a, b]"]
    );

    // Incremental, appending; commits every 7 rows, but only between two cursor values.
    let log = [
        "--query",
        "SELECT id, name, updated_at FROM users",
        "--table",
        "src.log",
        "--cursor",
        "updated_at",
        "--commit-rows",
        "7",
    ];
    let err = ingest_ok(&t, &url, &log);
    assert!(err.contains("100 row(s) into src.log in 11 commit(s)"), "{err}");
    // Incremental upserts by key.
    let mirror = [
        "--query",
        "SELECT id, name, updated_at FROM users",
        "--table",
        "src.mirror",
        "--cursor",
        "updated_at",
        "--primary-key",
        "id",
    ];
    ingest_ok(&t, &url, &mirror);
    assert_eq!(
        t.query("SELECT count(*), count(DISTINCT id) FROM src.mirror")
            .await,
        vec!["100|100"]
    );

    // Updates and an insert at the source: the next runs read only them.
    pg.psql(
        "postgres",
        "UPDATE users SET name = 'renamed', updated_at = '2026-02-01 00:00:00+00' WHERE id <= 5; \
         INSERT INTO users VALUES (101, 'new', 1, '2026-02-01 00:00:00+00', '{}')",
    )
    .unwrap();
    let err = ingest_ok(&t, &url, &log);
    assert!(err.contains("6 row(s) into src.log"), "{err}");
    assert_eq!(
        t.query("SELECT count(*), count(DISTINCT id) FROM src.log").await,
        vec!["106|101"]
    );
    ingest_ok(&t, &url, &mirror);
    let source = pg
        .psql("postgres", "SELECT id || '|' || name FROM users ORDER BY id")
        .unwrap();
    let mirrored = t.query("SELECT id, name FROM src.mirror ORDER BY id").await;
    assert_eq!(mirrored, source.lines().collect::<Vec<_>>());
    // Nothing new: the append table gains nothing, the mirror stays equal.
    let err = ingest_ok(&t, &url, &log);
    assert!(err.contains("0 row(s) into src.log in 0 commit(s)"), "{err}");
    ingest_ok(&t, &url, &mirror);
    assert_eq!(
        t.query("SELECT id, name FROM src.mirror ORDER BY id").await,
        mirrored
    );
    // The mark is in the snapshot summary.
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let table = lake
        .load_table(&tarn_lake::parse_table_name("src.log").unwrap())
        .await
        .unwrap();
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["tarn.sql.cursor"], "2026-02-01 00:00:00+00");
    assert_eq!(summary["tarn.sql.cursor_column"], "updated_at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_resumes_exactly_once() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    // Three rows share each cursor value.
    pg.psql(
        "postgres",
        "CREATE TABLE events AS SELECT i::int8 AS id, (i / 3)::int8 AS seq, md5(i::text) AS payload \
         FROM generate_series(1, 20000) i",
    )
    .unwrap();
    let t = TestLake::new().await;
    let url = pg.url("postgres");
    let args = [
        "--query",
        "SELECT * FROM events",
        "--table",
        "k.events",
        "--cursor",
        "seq",
        "--commit-rows",
        "1000",
        "--batch-rows",
        "500",
    ];
    let mut child = std::process::Command::new(tarn_bin())
        .arg("--data-dir")
        .arg(t.path())
        .args(["ingest", "sql", "--source", &url])
        .args(args)
        .env("TARN_FAILPOINTS", "ingest_sql.after_commit=sleep(300)")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_count(&t, "k.events").await < 3 {
        assert!(Instant::now() < deadline, "no commits within 60s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = ids(&t, "k.events").await;
    assert!(partial.len() < 20000, "the run finished before the kill");
    assert_eq!(
        partial,
        (1..=partial.len() as i64).collect::<Vec<_>>(),
        "whole cursor groups, once"
    );

    // Killed before a commit: nothing of it shows.
    let (ok, _, err) = {
        let out = std::process::Command::new(tarn_bin())
            .arg("--data-dir")
            .arg(t.path())
            .args(["ingest", "sql", "--source", &url])
            .args(args)
            .env("TARN_FAILPOINTS", "ingest_sql.before_commit=abort")
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(
        !ok && err.contains("failpoint ingest_sql.before_commit: aborting"),
        "{err}"
    );
    assert_eq!(ids(&t, "k.events").await, partial);

    // Resumed: every row once.
    ingest_ok(&t, &url, &args);
    assert_eq!(ids(&t, "k.events").await, (1..=20000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_unreachable_sources_leave_the_table_unchanged() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE items AS SELECT i::int8 AS id, now() AS at FROM generate_series(1, 10) i",
    )
    .unwrap();
    let t = TestLake::new().await;
    let url = pg.url("postgres");
    ingest_ok(
        &t,
        &url,
        &["--query", "SELECT id FROM items", "--table", "e.items"],
    );
    let before = t.metadata_location("e.items").await;
    let port = tarn_cdc::postgres::local::free_port().unwrap();
    let nowhere = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            url.as_str(),
            vec!["--query", "SELECT nope FROM items"],
            "the query cannot run: column \"nope\" does not exist (SQLSTATE 42703)",
        ),
        (
            url.as_str(),
            vec!["--query", "SELECT 1 / (id - 5) AS id FROM items"],
            "division by zero (SQLSTATE 22012)",
        ),
        (
            nowhere.as_str(),
            vec!["--query", "SELECT id FROM items"],
            "cannot connect to the source database",
        ),
        (
            url.as_str(),
            vec!["--query", "SELECT id FROM items", "--cursor", "zzz"],
            "--cursor zzz: the query has no such column (it has id)",
        ),
        (
            url.as_str(),
            vec!["--query", "SELECT id, at FROM items"],
            "column at of the query is not a column of e.items (it has id)",
        ),
    ];
    for (source, mut extra, wanted) in cases {
        extra.extend(["--table", "e.items"]);
        let (ok, _, err) = ingest(&t, source, &extra);
        assert!(!ok, "{extra:?}: the run succeeded");
        assert!(
            err.contains(wanted),
            "{extra:?}: {wanted:?} not in the error:\n{err}"
        );
        assert_eq!(
            t.metadata_location("e.items").await,
            before,
            "{extra:?} changed the table"
        );
    }
    assert_eq!(ids(&t, "e.items").await, (1..=10).collect::<Vec<_>>());

    // TLS as for the CDC source: verified against the server's CA; another CA is refused.
    let tls = tarn_test_utils::tls::enable_tls(&pg).unwrap();
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", tls.ca_file.display());
    ingest_ok(
        &t,
        &verified,
        &["--query", "SELECT id FROM items", "--table", "e.tls"],
    );
    assert_eq!(ids(&t, "e.tls").await, (1..=10).collect::<Vec<_>>());
    let wrong = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        tls.other_ca_file.display()
    );
    let (ok, _, err) = ingest(
        &t,
        &wrong,
        &["--query", "SELECT id FROM items", "--table", "e.tls2"],
    );
    assert!(
        !ok && err.contains("cannot connect to the source database"),
        "{err}"
    );
}
