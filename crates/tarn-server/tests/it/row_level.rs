//! Row-level SQL (`DELETE`, `UPDATE`, `MERGE`) against PostgreSQL running the same statements
//! on the same generated data; the results read back by pyiceberg and DuckDB; affected-row
//! counts over the wire; concurrent writers that never lose each other's changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tarn_core::ErrorKind;
use tarn_query::{Output, TarnSession};

use crate::{TestLake, within};

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An SQL literal: NULL one time in `nulls`, else what `value` gives.
    fn or_null(&mut self, nulls: u64, value: String) -> String {
        if self.below(nulls) == 0 {
            "NULL".into()
        } else {
            value
        }
    }
}

const COLUMNS: &str = "id, grp, v, s, region";

fn target_rows(rng: &mut Rng, ids: std::ops::Range<u64>) -> String {
    ids.map(|id| {
        let grp = rng.below(5);
        let v = rng_value(rng);
        let v = rng.or_null(6, v);
        let s = rng.or_null(5, format!("'s{}'", id % 13));
        let region = ["eu", "us", "apac"][rng.below(3) as usize];
        let region = rng.or_null(7, format!("'{region}'"));
        format!("({id}, {grp}, {v}, {s}, {region})")
    })
    .collect::<Vec<_>>()
    .join(", ")
}

fn rng_value(rng: &mut Rng) -> String {
    (rng.below(1000) as i64 - 200).to_string()
}

/// Source rows with unique ids, some matching the target's ids (0..200), some not.
fn source_rows(rng: &mut Rng) -> String {
    let mut ids: Vec<u64> = (0..260).filter(|_| rng.below(4) == 0).collect();
    ids.dedup();
    ids.iter()
        .map(|id| {
            let v = rng_value(rng);
            let v = rng.or_null(5, v);
            let n = rng.below(50);
            let s = rng.or_null(4, format!("'n{n}'"));
            let op = ["u", "d", "i", "x"][rng.below(4) as usize];
            format!("({id}, {v}, {s}, '{op}')")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One generated statement on table `t` (source table `src`).
fn statement(rng: &mut Rng, t: &str) -> String {
    let a = rng.below(800) as i64 - 100;
    let g = rng.below(5);
    match rng.below(11) {
        0 => format!("DELETE FROM {t} WHERE v < {a}"),
        1 => format!("DELETE FROM {t} WHERE s IS NULL AND grp = {g}"),
        2 => format!(
            "UPDATE {t} SET v = v + {}, s = s || 'x' WHERE grp = {g}",
            a.rem_euclid(50)
        ),
        3 => format!(
            "UPDATE {t} SET region = '{}' WHERE id % {} = 0",
            ["eu", "us", "apac"][g as usize % 3],
            g + 2
        ),
        4 => format!("UPDATE {t} SET v = NULL WHERE v > {a}"),
        5 => {
            format!("UPDATE {t} SET v = coalesce(v, 0) * 2, grp = grp + 1 WHERE region IS NULL OR v IS NULL")
        }
        6 => format!("UPDATE {t} SET s = src.s, v = src.v FROM src WHERE {t}.id = src.id AND src.op = 'u'"),
        7 => format!("DELETE FROM {t} USING src WHERE {t}.id = src.id AND src.op = 'd'"),
        8 => format!(
            "MERGE INTO {t} AS t USING src AS s ON t.id = s.id \
             WHEN MATCHED AND s.op = 'd' THEN DELETE \
             WHEN MATCHED AND s.op <> 'x' THEN UPDATE SET v = t.v + s.v, s = s.s \
             WHEN NOT MATCHED AND s.v IS NOT NULL THEN INSERT ({COLUMNS}) VALUES (s.id, {g}, s.v, s.s, 'eu')"
        ),
        9 => format!(
            "MERGE INTO {t} USING (SELECT id, v FROM src WHERE op IN ('u', 'i')) AS s ON {t}.id = s.id \
             WHEN MATCHED AND {t}.v IS NULL THEN UPDATE SET v = s.v \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, NULL, s.v, NULL, NULL)"
        ),
        _ => format!("MERGE INTO {t} t USING src s ON t.id = s.id AND t.grp = {g} WHEN MATCHED THEN DELETE"),
    }
}

/// Rows as sorted lists of optional strings, ordered as `lake_readers.py` orders them.
fn sorted(mut rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    rows.sort_by(|a, b| {
        let key = |r: &Vec<Option<String>>| -> Vec<(bool, String)> {
            r.iter()
                .map(|x| (x.is_none(), x.clone().unwrap_or_default()))
                .collect()
        };
        key(a).cmp(&key(b))
    });
    rows
}

async fn pg_rows(client: &tokio_postgres::Client, t: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(&format!("SELECT {COLUMNS} FROM {t}"))
        .await
        .unwrap();
    sorted(
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect(),
    )
}

async fn tarn_rows(session: &TarnSession, t: &str) -> Vec<Vec<Option<String>>> {
    let lines = crate::query(session, &format!("SELECT {COLUMNS} FROM {t}"))
        .await
        .unwrap();
    sorted(
        lines
            .iter()
            .map(|l| {
                l.split('|')
                    .map(|c| (c != "NULL").then(|| c.to_string()))
                    .collect()
            })
            .collect(),
    )
}

/// Runs `sql` on tarn: the affected-row count, or the error.
async fn tarn_run(session: &TarnSession, sql: &str) -> tarn_core::Result<u64> {
    match session.run_sql(sql).await? {
        Output::Command { rows, .. } => Ok(rows.unwrap_or(0)),
        Output::Rows(_) => panic!("{sql} returned rows"),
    }
}

/// The same generated statements on the same generated data, in PostgreSQL and in tarn, for an
/// unpartitioned merge-on-read table, a partitioned one, and a partitioned copy-on-write one:
/// after every statement the counts agree and the tables hold the same rows. Then pyiceberg and
/// DuckDB read the same rows from tarn's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_delete_merge_match_postgresql() {
    // One statement takes under a second; a step that hangs fails naming itself, with stacks.
    const STEP: Duration = Duration::from_secs(90);
    crate::init_logs();
    let t = TestLake::new().await;
    let pg = tarn_test_utils::start_postgres().unwrap();
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let variants = [
        ("plain", ""),
        ("parted", " PARTITIONED BY (region, bucket(4, id))"),
        (
            "cow",
            " PARTITIONED BY (region) TBLPROPERTIES ('write.delete.mode' = 'copy-on-write', \
             'write.update.mode' = 'copy-on-write', 'write.merge.mode' = 'copy-on-write')",
        ),
    ];
    let ddl = "(id BIGINT, grp INT, v INT, s VARCHAR, region VARCHAR)";
    t.exec("CREATE TABLE src (id BIGINT, v INT, s VARCHAR, op VARCHAR)")
        .await;
    client
        .batch_execute("CREATE TABLE src (id BIGINT, v INT, s VARCHAR, op VARCHAR)")
        .await
        .unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for (name, layout) in variants {
        t.exec(&format!("CREATE TABLE {name} {ddl}{layout}")).await;
        client
            .batch_execute(&format!("CREATE TABLE {name} {ddl}"))
            .await
            .unwrap();
        // Two inserts, so the table starts with more than one data file per partition.
        for ids in [0..120, 120..200] {
            let insert = format!("INSERT INTO {name} VALUES {}", target_rows(&mut rng, ids));
            t.exec(&insert).await;
            client.batch_execute(&insert).await.unwrap();
        }
    }
    let mut statements = 0;
    let mut affected = 0;
    for round in 0..8 {
        // A fresh source each round, deleted and refilled on both sides (tarn's DELETE too).
        let refill = format!("INSERT INTO src VALUES {}", source_rows(&mut rng));
        tarn_run(&t.session, "DELETE FROM src").await.unwrap();
        client.batch_execute("DELETE FROM src").await.unwrap();
        t.exec(&refill).await;
        client.batch_execute(&refill).await.unwrap();
        for _ in 0..5 {
            let seed = rng.next();
            for (name, _) in variants {
                let sql = statement(&mut Rng(seed), name);
                let expected = within(
                    format!("PostgreSQL: {sql}"),
                    STEP,
                    client.execute(sql.as_str(), &[]),
                )
                .await;
                let got = within(format!("tarn: {sql}"), STEP, tarn_run(&t.session, &sql)).await;
                match (&expected, &got) {
                    (Ok(e), Ok(g)) => assert_eq!(g, e, "affected rows of {sql} (round {round})"),
                    _ => panic!("{sql}: PostgreSQL {expected:?}, tarn {got:?}"),
                }
                affected += got.unwrap();
                statements += 1;
                assert_eq!(
                    within(format!("tarn: rows of {name}"), STEP, tarn_rows(&t.session, name)).await,
                    within(
                        format!("PostgreSQL: rows of {name}"),
                        STEP,
                        pg_rows(&client, name)
                    )
                    .await,
                    "rows of {name} after {sql} (round {round})"
                );
            }
        }
    }
    assert!(
        statements >= 100 && affected > 500,
        "{statements} statements, {affected} rows"
    );

    // A source row twice for one target row: both refuse, nothing changes.
    for (name, _) in variants {
        let id = pg_rows(&client, name).await[0][0].clone().unwrap();
        let dup =
            format!("DELETE FROM src; INSERT INTO src VALUES ({id}, 1, 'dup', 'u'), ({id}, 2, 'dup', 'u')");
        t.exec(&dup).await;
        client.batch_execute(&dup).await.unwrap();
        let before = tarn_rows(&t.session, name).await;
        let sql =
            format!("MERGE INTO {name} t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v");
        let pg_err = client.execute(sql.as_str(), &[]).await.unwrap_err();
        assert_eq!(pg_err.code().unwrap().code(), "21000", "{pg_err:?}");
        let err = tarn_run(&t.session, &sql).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(
            err.to_string().contains("cannot affect row a second time"),
            "{err}"
        );
        assert_eq!(tarn_sqlstate(&err), "21000");
        assert_eq!(
            tarn_rows(&t.session, name).await,
            before,
            "{name} changed by a failed MERGE"
        );
    }

    // Independent readers see exactly PostgreSQL's rows.
    for (name, _) in variants {
        let read = read_independently(&t, &format!("public.{name}"));
        let expected = serde_json::to_value(pg_rows(&client, name).await).unwrap();
        assert_eq!(read["pyiceberg"], expected, "pyiceberg reads {name}");
        assert_eq!(read["duckdb"], expected, "DuckDB reads {name}");
    }
}

/// `table` of `t`'s lake as pyiceberg and DuckDB read it (`lake_readers.py read`): rows as
/// lists of strings, sorted, under `"pyiceberg"` and `"duckdb"`.
fn read_independently(t: &TestLake, table: &str) -> serde_json::Value {
    let uri = format!("sqlite:///{}", t.path().join("catalog.db").display());
    let out = tarn_test_utils::run_python(
        "lake_readers.py",
        &[
            "read",
            "--uri",
            &uri,
            "--warehouse",
            &t.config.warehouse_url(),
            "--name",
            &t.config.catalog.name,
            "--table",
            table,
        ],
    )
    .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

fn tarn_sqlstate(e: &tarn_core::Error) -> &'static str {
    tarn_pgwire::sqlstate(e.kind(), &e.to_string())
}

/// Two sessions update overlapping rows of one table at the same time. Every statement either
/// lands whole, after re-running on the other's commit, or fails with a serialization failure;
/// no update is lost and no row is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_lose_nothing() {
    crate::init_logs();
    let t = TestLake::new().await;
    t.exec("CREATE TABLE c (id BIGINT, v BIGINT)").await;
    let values: Vec<String> = (0..300).map(|i| format!("({i}, 0)")).collect();
    t.exec(&format!("INSERT INTO c VALUES {}", values.join(", ")))
        .await;
    let conflicts = Arc::new(AtomicU64::new(0));
    let run = |session: TarnSession, sql: &'static str, count: u64, rounds: usize| {
        let conflicts = conflicts.clone();
        tokio::spawn(async move {
            let mut landed = 0u64;
            for _ in 0..rounds {
                match tarn_run(&session, sql).await {
                    Ok(n) => {
                        assert_eq!(n, count, "{sql}");
                        landed += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::CommitConflict => {
                        assert_eq!(tarn_sqlstate(&e), "40001");
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
            landed
        })
    };
    let a = run(
        t.session.clone(),
        "UPDATE c SET v = v + 1 WHERE id % 2 = 0",
        150,
        12,
    );
    let b = run(
        t.second_session().await,
        "UPDATE c SET v = v + 1000 WHERE id % 2 = 1 OR id % 3 = 0",
        200,
        12,
    );
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(a > 0 && b > 0, "both writers landed something: {a}, {b}");
    // Each id's value is the sum of the statements that covered it: nothing lost, nothing twice.
    let rows = t.query("SELECT id, v FROM c ORDER BY id").await;
    assert_eq!(rows.len(), 300, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        let i = i as u64;
        let (even, by_three) = (i.is_multiple_of(2), i.is_multiple_of(3));
        let expected = if even { a } else { 0 } + if !even || by_three { 1000 * b } else { 0 };
        assert_eq!(row, &format!("{i}|{expected}"), "a={a} b={b}");
    }
    // Both wrote the same data files, so at least one had to re-run or fail.
    let snapshots = t
        .query("SELECT count(*) FROM \"c$snapshots\" WHERE summary['tarn.statement'] = 'update'")
        .await;
    assert_eq!(snapshots, vec![(a + b).to_string()]);
    tracing::info!(
        a,
        b,
        conflicts = conflicts.load(Ordering::Relaxed),
        "concurrent updates"
    );
}

/// Affected-row counts and errors of row-level statements over the Postgres wire protocol, in
/// the extended (`execute`) and the simple protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affected_rows_over_the_wire() {
    let served = crate::pgwire::Served::start(false);
    let client = served.client().await;
    client
        .batch_execute("CREATE TABLE w (id INT, v VARCHAR); INSERT INTO w VALUES (1, 'a'), (2, 'b'), (3, NULL), (4, 'd')")
        .await
        .unwrap();
    assert_eq!(
        client
            .execute("DELETE FROM w WHERE v IS NULL", &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        client
            .execute("UPDATE w SET v = 'z' WHERE id <= 2", &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        client.execute("DELETE FROM w WHERE id > 100", &[]).await.unwrap(),
        0
    );
    let messages = client
        .simple_query(
            "MERGE INTO w USING (SELECT 4 AS id UNION ALL SELECT 5) AS s ON w.id = s.id \
             WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'new')",
        )
        .await
        .unwrap();
    assert!(
        matches!(
            messages.as_slice(),
            [tokio_postgres::SimpleQueryMessage::CommandComplete(2)]
        ),
        "{messages:?}"
    );
    let rows = client
        .query("SELECT id, v FROM w ORDER BY id", &[])
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![(1, "z".into()), (2, "z".into()), (5, "new".into())]);
    let err = client
        .execute(
            "MERGE INTO w USING (SELECT 1 AS id UNION ALL SELECT 1) AS s ON w.id = s.id WHEN MATCHED THEN DELETE",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("21000"), "{err:?}");
    let err = client.execute("UPDATE w SET nope = 1", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42703"), "{err:?}");
}

/// Row-level statements prepared with parameters (`$1`) over the extended protocol, as
/// tokio-postgres sends them: the parameters are described with the types of the columns they
/// meet, bound values (NULL, negative numbers, quotes) are what the statement uses, and a
/// statement run again with other values uses those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_in_row_level_statements_over_the_wire() {
    let served = crate::pgwire::Served::start(false);
    let client = served.client().await;
    client
        .batch_execute(
            "CREATE TABLE p (id INT, v VARCHAR, amount BIGINT); \
             INSERT INTO p VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30), (4, 'd', 40)",
        )
        .await
        .unwrap();
    let update = client
        .prepare("UPDATE p SET v = $1, amount = amount + $2 WHERE id = $3")
        .await
        .unwrap();
    assert_eq!(
        update.params(),
        &[
            tokio_postgres::types::Type::TEXT,
            tokio_postgres::types::Type::INT8,
            tokio_postgres::types::Type::INT4
        ],
        "parameter types described"
    );
    assert_eq!(
        client.execute(&update, &[&"it's", &-5i64, &1i32]).await.unwrap(),
        1
    );
    assert_eq!(
        client
            .execute(&update, &[&None::<String>, &0i64, &2i32])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        client
            .execute("DELETE FROM p WHERE v = $1 OR amount > $2", &[&"c", &35i64])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        client
            .execute(
                "MERGE INTO p USING (SELECT 2 AS id UNION ALL SELECT 7) AS s ON p.id = s.id \
                 WHEN MATCHED THEN UPDATE SET amount = $1 WHEN NOT MATCHED THEN INSERT VALUES (s.id, $2, $1)",
                &[&99i64, &"new"],
            )
            .await
            .unwrap(),
        2
    );
    let rows = client
        .query("SELECT id, v, amount FROM p ORDER BY id", &[])
        .await
        .unwrap();
    let rows: Vec<(i32, Option<String>, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        rows,
        vec![
            (1, Some("it's".into()), 5),
            (2, None, 99),
            (7, Some("new".into()), 99)
        ]
    );
}

/// `DELETE` statements on a lake table while a CDC pipeline keeps committing the source's
/// updates and inserts into it: the rows the statements delete stay deleted, and every change
/// the pipeline committed, before, between or after them, is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_racing_a_cdc_pipeline_loses_nothing() {
    let mut cdc = crate::cdc::Cdc::new(
        "CREATE TABLE acct (id bigint PRIMARY KEY, v int, note text);
         INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 400) g;",
    )
    .await;
    // A commit about every second, as a pipeline sized for readers commits.
    cdc.set("cdc.flush.interval", "300ms");
    let running = cdc.start().await;
    let wait = std::time::Duration::from_secs(60);
    cdc.wait_same("SELECT count(*) FROM acct", "SELECT count(*) FROM cdc.acct", wait)
        .await;
    // The source changes only even ids; tarn deletes only odd ones.
    let url = cdc.pg.url("app");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let source = tokio::task::spawn_blocking(move || {
        let mut round = 0;
        // Changes all along the deletes, and at least 40 transactions.
        while round < 40 || !stop.load(Ordering::Relaxed) {
            round += 1;
            let out = std::process::Command::new("psql")
                .arg(&url)
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
                .arg(format!(
                    "UPDATE acct SET v = v + 1, note = note || '.' WHERE id % 2 = 0 AND id % 20 = {}; \
                     INSERT INTO acct VALUES ({}, {round}, 'new');",
                    (round * 2) % 20,
                    1000 + 2 * round
                ))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        round
    });
    let session = cdc.lake.session.clone();
    let mut deleted = 0;
    let mut serialization_failures = 0;
    for k in 0..40 {
        let sql = format!("DELETE FROM cdc.acct WHERE id % 80 = {}", 2 * k + 1);
        let deadline = std::time::Instant::now() + wait;
        loop {
            match tarn_run(&session, &sql).await {
                Ok(n) => {
                    deleted += n;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::CommitConflict => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{sql} kept conflicting: {e}"
                    );
                    serialization_failures += 1;
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let rounds = source.await.unwrap();
    assert_eq!(deleted, 200, "every odd id deleted once");
    cdc.wait_same(
        "SELECT id, v, note FROM acct WHERE id % 2 = 0 ORDER BY id",
        "SELECT id, v, note FROM cdc.acct WHERE id % 2 = 0 ORDER BY id",
        wait,
    )
    .await;
    let lake = cdc
        .lake_rows("SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id % 2 = 1) FROM cdc.acct")
        .await
        .unwrap();
    let even = 200 + rounds;
    assert_eq!(
        lake,
        vec![format!("{even}|{even}|0")],
        "{rounds} source transactions, {serialization_failures} serialization failures"
    );
    // Deletes that landed on a pipeline commit made after the snapshot they read (validated
    // row by row, not re-run).
    let raced = cdc
        .lake_rows(
            "SELECT count(*) FROM \"cdc\".\"acct$snapshots\" WHERE summary['tarn.statement'] = 'delete' \
             AND CAST(summary['tarn.statement.read-snapshot-id'] AS BIGINT) <> parent_id",
        )
        .await
        .unwrap();
    tracing::info!(
        rounds,
        serialization_failures,
        ?raced,
        "deletes raced the pipeline"
    );
    let raced: u64 = raced[0].parse().unwrap();
    assert!(
        raced > 0,
        "no DELETE landed on a concurrent pipeline commit: the race was not run"
    );
    running.stop().await;
}

const WRITE_POLICY: &str = r#"
package trino

import rego.v1

default allow := false

admin if "admin" in input.context.identity.groups

allow if admin

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas", "FilterTables", "FilterColumns", "SelectFromColumns"}

allow if {
	input.context.identity.user == "clerk"
	input.action.operation in {"DeleteFromTable", "InsertIntoTable"}
}

allow if {
	input.context.identity.user == "clerk"
	input.action.operation == "UpdateTableColumns"
	every c in input.action.resource.table.columns { c != "region" }
}

rowFilters contains {"expression": "region = 'eu'"} if {
	not admin
	input.action.resource.table.tableName == "acct"
}

columnMask := {"expression": "'***'"} if {
	not admin
	input.action.resource.column.tableName == "masked"
	input.action.resource.column.columnName == "secret"
}
"#;

/// Row-level statements under a policy: the write is authorized (with the columns an UPDATE
/// assigns), row filters keep rows the principal cannot see out of reach, and an UPDATE that
/// would write masked values back is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_authorize_and_restrict_row_level_statements() {
    let t = TestLake::new().await;
    std::fs::write(t.path().join("policy.rego"), WRITE_POLICY).unwrap();
    let policy = tarn_policy::Policy::from_config(&tarn_core::config::PolicyConfig {
        file: Some(t.path().join("policy.rego")),
        opa_url: None,
        package: "trino".into(),
        timeout: "5s".into(),
    })
    .unwrap();
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let governed = TarnSession::with_policy(lake, policy).await.unwrap();
    let as_user = |user: &str, groups: &[&str]| {
        governed.for_principal(tarn_auth::Principal {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: tarn_auth::Method::Password,
        })
    };
    let (admin, clerk, reader) = (
        as_user("root", &["admin"]),
        as_user("clerk", &[]),
        as_user("ann", &[]),
    );
    for sql in [
        "CREATE TABLE acct (id INT, v INT, region VARCHAR)",
        "INSERT INTO acct VALUES (1, 10, 'eu'), (2, 20, 'us'), (3, 30, 'eu'), (4, 40, 'us')",
        "CREATE TABLE masked (id INT, v INT, secret VARCHAR)",
        "INSERT INTO masked VALUES (1, 1, 'a'), (2, 2, 'b')",
    ] {
        tarn_run(&admin, sql).await.unwrap();
    }
    let denied = tarn_run(&reader, "DELETE FROM acct WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::PermissionDenied, "{denied}");
    assert!(denied.to_string().contains("DeleteFromTable"), "{denied}");
    // The row filter: only the 'eu' rows are within reach.
    assert_eq!(tarn_run(&clerk, "UPDATE acct SET v = v + 1").await.unwrap(), 2);
    assert_eq!(
        tarn_run(&clerk, "DELETE FROM acct WHERE v > 25").await.unwrap(),
        1
    );
    // Assigning a column the policy does not grant.
    let denied = tarn_run(&clerk, "UPDATE acct SET region = 'us'")
        .await
        .unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::PermissionDenied, "{denied}");
    assert_eq!(
        crate::query(&admin, "SELECT id, v, region FROM acct ORDER BY id")
            .await
            .unwrap(),
        vec!["1|11|eu", "2|20|us", "4|40|us"]
    );
    // A mask: deleting by it is fine, rewriting rows with it is not.
    let refused = tarn_run(&clerk, "UPDATE masked SET v = 0").await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::PermissionDenied, "{refused}");
    assert!(refused.to_string().contains("masked"), "{refused}");
    assert_eq!(
        tarn_run(&clerk, "DELETE FROM masked WHERE secret = '***' AND id = 2")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        crate::query(&admin, "SELECT id, v, secret FROM masked ORDER BY id")
            .await
            .unwrap(),
        vec!["1|1|a"]
    );
}

/// tarn's own `UPDATE`, `MERGE` and `INSERT` on a CDC table, of keys the source then changes:
/// the pipeline's next commit finds rows it did not write, restarts from the lake (its key
/// index learning them), and the table ends equal to the source — each key once, the source's
/// version. The `INSERT` gives keys the pipeline holds a second row: the rebuilt index keeps
/// both, and the source's next update or delete of such a key replaces or deletes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_level_writes_on_a_cdc_table_leave_each_key_once() {
    let mut cdc = crate::cdc::Cdc::new(
        "CREATE TABLE acct (id bigint PRIMARY KEY, v int, note text);
         INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 100) g;",
    )
    .await;
    cdc.set("cdc.flush.interval", "300ms");
    let running = cdc.start().await;
    let wait = std::time::Duration::from_secs(60);
    cdc.wait_same("SELECT count(*) FROM acct", "SELECT count(*) FROM cdc.acct", wait)
        .await;
    let session = cdc.lake.session.clone();
    assert_eq!(
        tarn_run(&session, "UPDATE cdc.acct SET note = 'lake' WHERE id <= 10")
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        tarn_run(
            &session,
            "MERGE INTO cdc.acct t USING (SELECT id FROM cdc.acct WHERE id BETWEEN 11 AND 20 \
             UNION ALL SELECT 200 + x FROM (VALUES (1), (2), (3)) v(x)) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET note = 'merged' \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, -1, 'lake-only')",
        )
        .await
        .unwrap(),
        13
    );
    assert_eq!(
        tarn_run(
            &session,
            "INSERT INTO cdc.acct VALUES (30, -1, 'dup'), (31, -1, 'dup')"
        )
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        cdc.lake_rows("SELECT id, count(*) FROM cdc.acct WHERE id IN (30, 31) GROUP BY id ORDER BY id")
            .await
            .unwrap(),
        vec!["30|2", "31|2"]
    );
    cdc.sql(
        "UPDATE acct SET v = v + 1 WHERE id <= 20 OR id = 30; DELETE FROM acct WHERE id = 31; \
         INSERT INTO acct VALUES (201, 7, 'src'), (202, 7, 'src'), (203, 7, 'src'), (204, 7, 'src');",
    );
    cdc.wait_same(
        "SELECT id, v, note FROM acct ORDER BY id",
        "SELECT id, v, note FROM cdc.acct ORDER BY id",
        wait,
    )
    .await;
    let lake = cdc
        .lake_rows("SELECT count(*), count(DISTINCT id) FROM cdc.acct")
        .await
        .unwrap();
    assert_eq!(lake, vec!["103|103"]);
    running.stop().await;
}

/// Runs `sql` on tarn until it lands, counting the serialization failures (SQLSTATE 40001) on
/// the way; after one, `hold` holds the writers it raced until the statement lands (a statement
/// may lose to a busy writer every time). Any other error, or failures past `wait`, fail the
/// test.
async fn run_until_landed(
    session: &TarnSession,
    sql: &str,
    wait: std::time::Duration,
    failures: &mut u64,
    hold: &std::sync::atomic::AtomicBool,
) -> u64 {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match tarn_run(session, sql).await {
            Ok(n) => {
                hold.store(false, Ordering::Relaxed);
                return n;
            }
            Err(e) if e.kind() == ErrorKind::CommitConflict => {
                assert_eq!(tarn_sqlstate(&e), "40001", "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "{sql} kept conflicting: {e}"
                );
                *failures += 1;
                hold.store(true, Ordering::Relaxed);
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// How many commits of a CDC pipeline that add rows (not compactions) table `cdc.<table>` has.
async fn pipeline_commits(session: &TarnSession, table: &str) -> Option<u64> {
    session.refresh().await.ok()?;
    let rows = crate::query(
        session,
        &format!(
            "SELECT count(*) FROM \"cdc\".\"{table}$snapshots\" \
             WHERE summary['tarn.cdc.pipeline'] IS NOT NULL AND operation <> 'replace'"
        ),
    )
    .await
    .ok()?;
    rows.first()?.parse().ok()
}

/// Waits (up to 90 s) until a CDC pipeline commits to `cdc.<table>` once more.
async fn wait_for_pipeline_commit(session: &TarnSession, table: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let before = loop {
        if let Some(n) = pipeline_commits(session, table).await {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cannot read the snapshots of {table}"
        );
    };
    while pipeline_commits(session, table).await.unwrap_or(before) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no pipeline commit to {table} within 90 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `MERGE` statements (`WHEN MATCHED AND ... THEN DELETE`, `WHEN MATCHED AND ... THEN UPDATE`,
/// `WHEN NOT MATCHED THEN INSERT`) on a CDC table while the pipeline keeps committing the
/// source's updates, inserts and deletes into it. The source changes only even ids. Each MERGE
/// changes odd ids — existing ones, and new ones (10001 and up) that only MERGEs insert — and
/// even ids the source is changing at the same time: existing ones it updates, and the keys
/// around its insert frontier, ones it inserted, deleted, or is about to insert (a MERGE
/// inserting a key the pipeline inserts meanwhile). The MERGEs run in bursts, each followed by
/// a pipeline commit (every MERGE that writes rows restarts the pipeline once, to learn them).
///
/// What must hold, each statement landing whole or failing with 40001 (and run again):
/// - every MERGE's count is what it did: with the `NOT MATCHED` clause every source row takes
///   exactly one clause, so the count is its rows; without, it is the rows that matched, known
///   for odd ids from the MERGEs before it and for even ids below 1000 (always there: the
///   source never deletes them, the MERGEs never delete them);
/// - the odd ids hold exactly what the MERGEs did, applied in order: the pipeline overwrote
///   none of it and none was lost;
/// - after one more source change of every even id (the MERGEs touched), the even ids hold
///   exactly the source's rows: every change the pipeline committed, before, between or after
///   the MERGEs, is there, and a MERGE's version of an even key gave way to the source's next
///   change of it;
/// - no id is in the table twice (a MERGE inserting a key the pipeline inserted after the
///   MERGE read would leave it twice: the MERGE conflicts instead and re-runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merge_racing_a_cdc_pipeline_loses_nothing() {
    let mut cdc = crate::cdc::Cdc::new(
        "CREATE TABLE acct (id bigint PRIMARY KEY, v int, note text);
         INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 400) g;",
    )
    .await;
    cdc.set("cdc.flush.interval", "300ms");
    let running = cdc.start().await;
    let wait = std::time::Duration::from_secs(90);
    cdc.wait_same("SELECT count(*) FROM acct", "SELECT count(*) FROM cdc.acct", wait)
        .await;
    let url = cdc.pg.url("app");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let frontier = Arc::new(AtomicU64::new(0));
    let (stop, at, held) = (done.clone(), frontier.clone(), hold.clone());
    let source = tokio::task::spawn_blocking(move || {
        let mut round = 0u64;
        while round < 40 || !stop.load(Ordering::Relaxed) {
            // Held while a MERGE that failed with 40001 runs again.
            while held.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            round += 1;
            // Updates of even ids below 1000 (two a round), an insert at the frontier, and now
            // and then a delete of a key inserted a few rounds ago.
            let mut sql = format!(
                "UPDATE acct SET v = v + 1, note = note || '.' WHERE id % 2 = 0 AND id < 1000 AND id % 200 = {}; \
                 INSERT INTO acct VALUES ({}, {round}, 'new');",
                (round * 2) % 200,
                1000 + 2 * round
            );
            if round.is_multiple_of(4) {
                sql.push_str(&format!(
                    " DELETE FROM acct WHERE id = {};",
                    1000 + 2 * (round - 3)
                ));
            }
            let out = std::process::Command::new("psql")
                .arg(&url)
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
                .arg(sql)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            at.store(round, Ordering::Relaxed);
        }
        round
    });

    // What the MERGEs leave on odd ids: id -> (v, note).
    let mut odd: std::collections::BTreeMap<u64, (i64, String)> = (1..=400)
        .filter(|i| i % 2 == 1)
        .map(|i| (i, (0, format!("n{i}"))))
        .collect();
    let session = cdc.lake.session.clone();
    // The first MERGE of each burst waits, between its read and its commit, for the pipeline to
    // commit: one without `NOT MATCHED` then lands on that commit (validated row by row); one
    // with it has a key (900,000 and up: beyond the keys the source inserts on its own, 1000 +
    // 2 * round, however long the run) that the source inserts meanwhile, and re-runs.
    let watcher = cdc.lake.second_session().await;
    let attempts = Arc::new(AtomicU64::new(0));
    let raced_key = Arc::new(AtomicU64::new(0));
    let paused = {
        let (watcher, attempts, raced_key) = (watcher.clone(), attempts.clone(), raced_key.clone());
        let url = cdc.pg.url("app");
        session.pause_row_level_commits(move |attempt| {
            let (watcher, attempts, url) = (watcher.clone(), attempts.clone(), url.clone());
            let key = raced_key.load(Ordering::Relaxed);
            Box::pin(async move {
                // Only the statement's first run waits (a run after a 40001 has the source held).
                let first = attempts.fetch_max(u64::from(attempt) + 1, Ordering::Relaxed) == 0;
                if attempt > 0 || !first {
                    return;
                }
                if key == 0 {
                    wait_for_pipeline_commit(&watcher, "acct").await;
                    return;
                }
                let out = std::process::Command::new("psql")
                    .arg(&url)
                    .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
                    .arg(format!(
                        "INSERT INTO acct VALUES ({key}, 0, 'src') ON CONFLICT (id) DO NOTHING"
                    ))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
                loop {
                    watcher.refresh().await.unwrap();
                    let sql = format!("SELECT count(*) FROM cdc.acct WHERE id = {key}");
                    if crate::query(&watcher, &sql).await.unwrap() == ["1"] {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the pipeline did not commit key {key}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
        })
    };
    let mut serialization_failures = 0;
    let mut statements = 0;
    let (bursts, per_burst) = (6u64, 4u64);
    for burst in 0..bursts {
        for k in 0..per_burst {
            let m = burst * per_burst + k;
            let inserts = (m + burst) % 2 == 1;
            // (id, d): d = 0 deletes a matched row, d > 0 adds itself to v.
            let mut rows: Vec<(u64, u64)> = Vec::new();
            for id in (1..=399).step_by(2).filter(|id| (id / 2 + m) % 9 == 0) {
                rows.push((id, (id + m) % 4));
            }
            if inserts {
                for j in 0..3 {
                    rows.push((10001 + 2 * ((3 * m + j) % 20), (m + j) % 4));
                }
            }
            for id in (2..=398).step_by(2).filter(|id| (id / 2 + m) % 50 == 0) {
                rows.push((id, 1 + id % 3));
            }
            let raced = if inserts && k == 0 { 900_000 + 2 * m } else { 0 };
            if raced > 0 {
                rows.push((raced, 1));
            }
            raced_key.store(raced, Ordering::Relaxed);
            if inserts {
                let r = frontier.load(Ordering::Relaxed);
                for j in 0..6 {
                    if r + j >= 3 {
                        rows.push((1000 + 2 * (r + j - 2), (r + j) % 3));
                    }
                }
            }
            let values: Vec<String> = rows.iter().map(|(id, d)| format!("({id}, {d})")).collect();
            let not_matched = if inserts {
                " WHEN NOT MATCHED THEN INSERT VALUES (s.id, CAST(s.d AS INT), 'merge')"
            } else {
                ""
            };
            let sql = format!(
                "MERGE INTO cdc.acct t USING (VALUES {}) AS s(id, d) ON t.id = s.id \
                 WHEN MATCHED AND s.d = 0 THEN DELETE \
                 WHEN MATCHED AND s.d > 0 THEN UPDATE SET v = CAST(t.v + s.d AS INT), note = t.note || 'm'{not_matched}",
                values.join(", ")
            );
            // The expected count, and the odd ids after it.
            let mut expected = 0;
            for &(id, d) in &rows {
                if id % 2 == 0 {
                    if inserts || id < 1000 {
                        expected += 1;
                    }
                    continue;
                }
                match odd.get_mut(&id) {
                    Some(_) if d == 0 => {
                        odd.remove(&id);
                        expected += 1;
                    }
                    Some((v, note)) => {
                        *v += d as i64;
                        note.push('m');
                        expected += 1;
                    }
                    None if inserts => {
                        odd.insert(id, (d as i64, "merge".into()));
                        expected += 1;
                    }
                    None => {}
                }
            }
            let runs = if k == 0 { &paused } else { &session };
            attempts.store(0, Ordering::Relaxed);
            let n = run_until_landed(runs, &sql, wait, &mut serialization_failures, &hold).await;
            assert_eq!(n, expected, "count of MERGE {m}: {sql}");
            if k == 0 && inserts {
                assert!(
                    attempts.load(Ordering::Relaxed) >= 2,
                    "MERGE {m} inserted key {raced} onto the pipeline's commit of it"
                );
            }
            statements += 1;
        }
        // The pipeline commits after the burst (restarting first to learn the MERGEs' rows).
        let deadline = std::time::Instant::now() + wait;
        loop {
            let last = cdc
                .lake_rows(
                    "SELECT count(*) FROM \"cdc\".\"acct$snapshots\" WHERE summary['tarn.cdc.pipeline'] IS NOT NULL \
                     AND committed_at = (SELECT max(committed_at) FROM \"cdc\".\"acct$snapshots\")",
                )
                .await;
            if last.as_deref() == Some(&["1".to_string()][..]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pipeline commit after burst {burst}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    let rounds = source.await.unwrap();

    // One more source change of every even id a MERGE may have touched.
    cdc.sql(&format!(
        "UPDATE acct SET v = v + 1 WHERE id % 2 = 0; \
         INSERT INTO acct SELECT g, 0, 'final' FROM generate_series(1002, {}, 2) g ON CONFLICT (id) DO NOTHING;",
        1000 + 2 * (rounds + 4)
    ));
    cdc.wait_same(
        "SELECT id, v, note FROM acct WHERE id % 2 = 0 ORDER BY id",
        "SELECT id, v, note FROM cdc.acct WHERE id % 2 = 0 ORDER BY id",
        wait,
    )
    .await;
    let expected_odd: Vec<String> = odd
        .iter()
        .map(|(id, (v, note))| format!("{id}|{v}|{note}"))
        .collect();
    assert_eq!(
        cdc.lake_rows("SELECT id, v, note FROM cdc.acct WHERE id % 2 = 1 ORDER BY id")
            .await
            .unwrap(),
        expected_odd,
        "odd ids: what the MERGEs did"
    );
    let lake = cdc
        .lake_rows("SELECT count(*) = count(DISTINCT id) FROM cdc.acct")
        .await
        .unwrap();
    assert_eq!(lake, vec!["true"], "an id twice");
    let raced = cdc
        .lake_rows(
            "SELECT count(*) FROM \"cdc\".\"acct$snapshots\" WHERE summary['tarn.statement'] = 'merge' \
             AND CAST(summary['tarn.statement.read-snapshot-id'] AS BIGINT) <> parent_id",
        )
        .await
        .unwrap();
    let merges = cdc
        .lake_rows(
            "SELECT count(*) FROM \"cdc\".\"acct$snapshots\" WHERE summary['tarn.statement'] = 'merge'",
        )
        .await
        .unwrap();
    tracing::info!(
        rounds,
        statements,
        serialization_failures,
        ?raced,
        ?merges,
        "MERGEs raced the pipeline"
    );
    assert_eq!(merges, vec![statements.to_string()], "one snapshot per MERGE");
    let raced: u64 = raced[0].parse().unwrap();
    assert!(
        raced > 0,
        "no MERGE landed on a concurrent pipeline commit: the race was not run"
    );
    running.stop().await;
}

/// A `MERGE` whose source has key 50, absent from the table, while the source inserts key 50
/// and the pipeline commits it between the MERGE's read and its commit (the session pauses
/// there until the lake holds the key). The MERGE's `WHEN NOT MATCHED` insert rested on the
/// key being absent, so it conflicts and re-runs: the re-run matches the pipeline's row and
/// updates it. The key is in the table once — after the MERGE and after the source's next
/// change of it — where a MERGE landing its insert would have left it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merge_insert_racing_a_cdc_insert_of_the_same_key_leaves_it_once() {
    let mut cdc = crate::cdc::Cdc::new(
        "CREATE TABLE acct (id bigint PRIMARY KEY, v int, note text);
         INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 10) g;",
    )
    .await;
    cdc.set("cdc.flush.interval", "100ms");
    let running = cdc.start().await;
    let wait = std::time::Duration::from_secs(60);
    cdc.wait_same("SELECT count(*) FROM acct", "SELECT count(*) FROM cdc.acct", wait)
        .await;
    let watcher = cdc.lake.second_session().await;
    let url = cdc.pg.url("app");
    let attempts = Arc::new(AtomicU64::new(0));
    let paused = {
        let attempts = attempts.clone();
        cdc.lake.session.pause_row_level_commits(move |attempt| {
            let (watcher, url, attempts) = (watcher.clone(), url.clone(), attempts.clone());
            Box::pin(async move {
                attempts.fetch_max(u64::from(attempt) + 1, Ordering::Relaxed);
                if attempt > 0 {
                    return;
                }
                let out = std::process::Command::new("psql")
                    .arg(&url)
                    .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
                    .arg("INSERT INTO acct VALUES (50, 5, 'src')")
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    watcher.refresh().await.unwrap();
                    let rows = crate::query(&watcher, "SELECT count(*) FROM cdc.acct WHERE id = 50")
                        .await
                        .unwrap();
                    if rows == ["1"] {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the pipeline did not commit key 50"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
        })
    };
    let n = tarn_run(
        &paused,
        "MERGE INTO cdc.acct t USING (SELECT 3 AS id UNION ALL SELECT 50) s ON t.id = s.id \
         WHEN MATCHED THEN UPDATE SET note = t.note || '+merge' \
         WHEN NOT MATCHED THEN INSERT VALUES (s.id, -1, 'merge')",
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        2,
        "the MERGE re-ran once, on the pipeline's commit"
    );
    assert_eq!(
        cdc.lake_rows("SELECT id, v, note FROM cdc.acct WHERE id IN (3, 50) ORDER BY id")
            .await
            .unwrap(),
        vec!["3|0|n3+merge", "50|5|src+merge"]
    );
    // The source's next change of the key replaces the MERGE's version: still once.
    cdc.sql("UPDATE acct SET v = v + 1 WHERE id IN (3, 50)");
    cdc.wait_same(
        "SELECT id, v, note FROM acct ORDER BY id",
        "SELECT id, v, note FROM cdc.acct ORDER BY id",
        wait,
    )
    .await;
    assert_eq!(
        cdc.lake_rows("SELECT count(*), count(DISTINCT id) FROM cdc.acct")
            .await
            .unwrap(),
        vec!["11|11"]
    );
    running.stop().await;
}

/// `INSERT OVERWRITE` is serializable: an overwrite planned before another writer committed
/// into a partition it replaces fails with a commit conflict (40001) and changes nothing — the
/// other writer's row is not silently kept beside the new rows — while a commit into another
/// partition lands beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_conflicts_with_a_commit_into_a_partition_it_replaces() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE ov (id BIGINT, region VARCHAR) PARTITIONED BY (region)")
        .await;
    t.exec("INSERT INTO ov VALUES (1, 'eu'), (2, 'us')").await;
    let other = t.second_session().await;
    let lake = t.session.lake().clone();
    let ident = tarn_lake::parse_table_name("public.ov").unwrap();
    let overwrite = async |base: iceberg::table::Table| {
        let streams = t
            .session
            .context()
            .sql("SELECT CAST(10 AS BIGINT) AS id, CAST('eu' AS VARCHAR) AS region")
            .await
            .unwrap()
            .execute_stream_partitioned()
            .await
            .unwrap();
        tarn_query::write::write_and_overwrite(&lake, &ident, Some(base), streams, Default::default()).await
    };
    let rows = async || t.query("SELECT id, region FROM ov ORDER BY id").await;
    let data_files = || {
        walkdir(&t.path().join("warehouse"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };

    // Planned, then another writer adds a row to `eu`: the overwrite of `eu` conflicts.
    let base = lake.load_table(&ident).await.unwrap();
    crate::query(&other, "INSERT INTO ov VALUES (3, 'eu')")
        .await
        .unwrap();
    let files = data_files();
    assert!(files >= 3, "{files} data files under the warehouse");
    let err = overwrite(base).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
    assert!(
        err.to_string().contains("a partition it replaces") && err.to_string().contains("INSERT OVERWRITE"),
        "{err}"
    );
    assert_eq!(rows().await, ["1|eu", "2|us", "3|eu"]);
    assert_eq!(data_files(), files, "the failed overwrite's files are deleted");

    // Planned, then another writer adds a row to `us`: the overwrite of `eu` lands beside it.
    let base = lake.load_table(&ident).await.unwrap();
    crate::query(&other, "INSERT INTO ov VALUES (4, 'us')")
        .await
        .unwrap();
    overwrite(base).await.unwrap();
    assert_eq!(rows().await, ["2|us", "4|us", "10|eu"]);
}

/// Every file under `dir`, recursively.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// `CREATE OR REPLACE TABLE ... AS` redefines a table in one commit: other columns, another
/// partitioning, sort order and properties; kept columns keep their field ids, time travel
/// reads the old definition, pyiceberg and DuckDB read the new one, and a replacement planned
/// before a concurrent commit or schema change fails with a conflict, the table unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_replace_redefines_columns_partitioning_and_properties() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE rep (id BIGINT, region VARCHAR, amount INT) PARTITIONED BY (region)")
        .await;
    t.exec("INSERT INTO rep VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30)")
        .await;
    let lake = t.session.lake().clone();
    let ident = tarn_lake::parse_table_name("public.rep").unwrap();
    let old = lake.load_table(&ident).await.unwrap();
    let old_snapshot = old.metadata().current_snapshot_id().unwrap();
    let old_ids: Vec<i32> = old
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.id)
        .collect();

    assert_eq!(
        t.query(
            "CREATE OR REPLACE TABLE rep PARTITIONED BY (bucket(4, id)) SORTED BY (total DESC) \
             TBLPROPERTIES ('write.delete.mode' = 'copy-on-write') \
             AS SELECT id, region, CAST(amount * 2 AS DOUBLE) AS total FROM rep WHERE id <> 2"
        )
        .await,
        ["SELECT 2"]
    );
    assert_eq!(
        t.query("SELECT id, region, total FROM rep ORDER BY id").await,
        ["1|eu|20.0", "3|eu|60.0"]
    );
    let new = lake.load_table(&ident).await.unwrap();
    let metadata = new.metadata();
    let fields: Vec<(String, i32)> = metadata
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| (f.name.clone(), f.id))
        .collect();
    assert_eq!(
        fields,
        [
            ("id".to_string(), old_ids[0]),
            ("region".to_string(), old_ids[1]),
            ("total".to_string(), old.metadata().last_column_id() + 1)
        ],
        "kept columns keep their ids, a new one takes the next"
    );
    let spec = metadata.default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(spec.fields()[0].name, "id_bucket");
    assert_eq!(spec.fields()[0].source_id, old_ids[0]);
    let order = metadata.default_sort_order();
    assert_eq!(order.fields.len(), 1);
    assert_eq!(
        order.fields[0].direction,
        iceberg::spec::SortDirection::Descending
    );
    assert_eq!(
        metadata.properties().get("write.delete.mode").map(String::as_str),
        Some("copy-on-write")
    );
    let snapshot = metadata.current_snapshot().unwrap();
    assert_eq!(
        snapshot.parent_snapshot_id(),
        Some(old_snapshot),
        "history is kept"
    );
    assert_eq!(snapshot.schema_id(), Some(metadata.current_schema_id()));
    assert_eq!(
        t.query(&format!(
            "SELECT id, region, amount FROM rep FOR VERSION AS OF {old_snapshot} ORDER BY id"
        ))
        .await,
        ["1|eu|10", "2|us|20", "3|eu|30"],
        "time travel reads the old definition"
    );

    // Independent readers read the new definition.
    let read = read_independently(&t, "public.rep");
    let expected = serde_json::json!([["1", "eu", "20.0"], ["3", "eu", "60.0"]]);
    assert_eq!(read["pyiceberg"], expected, "pyiceberg reads the replaced table");
    assert_eq!(read["duckdb"], expected, "DuckDB reads the replaced table");

    // Row-level statements work on the new layout (copy-on-write, bucketed).
    assert_eq!(t.query("DELETE FROM rep WHERE id = 1").await, ["DELETE 1"]);
    assert_eq!(t.query("SELECT id, total FROM rep").await, ["3|60.0"]);

    // A replacement planned before another writer's commit or schema change conflicts.
    let other = t.second_session().await;
    let replace = async |base: iceberg::table::Table| {
        let streams = t
            .session
            .context()
            .sql("SELECT CAST(9 AS BIGINT) AS id")
            .await
            .unwrap()
            .execute_stream_partitioned()
            .await
            .unwrap();
        let schema =
            iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
            ]))
            .unwrap();
        let replacement = lake
            .plan_replacement(&base, &schema, &tarn_lake::TableLayout::default())
            .unwrap();
        tarn_query::write::write_and_replace(&lake, &base, replacement, streams, Default::default()).await
    };
    let data_files = || {
        walkdir(&t.path().join("warehouse"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };
    let conflicts = async |base: iceberg::table::Table, what: &str, expected: &str| {
        let before = t.query("SELECT * FROM rep ORDER BY id").await;
        let files = data_files();
        let err = replace(base).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "after {what}: {err}");
        assert!(err.to_string().contains(expected), "after {what}: {err}");
        assert_eq!(
            t.query("SELECT * FROM rep ORDER BY id").await,
            before,
            "the table is unchanged after {what}"
        );
        assert_eq!(
            data_files(),
            files,
            "the failed replacement's files are deleted after {what}"
        );
    };
    let base = lake.load_table(&ident).await.unwrap();
    crate::query(&other, "INSERT INTO rep VALUES (4, 'us', 8.0)")
        .await
        .unwrap();
    conflicts(
        base,
        "a commit",
        "CREATE OR REPLACE TABLE of public.rep conflicts with a concurrent commit",
    )
    .await;
    let base = lake.load_table(&ident).await.unwrap();
    let metadata = base.metadata();
    let mut fields: Vec<iceberg::spec::NestedFieldRef> =
        metadata.current_schema().as_struct().fields().to_vec();
    fields.push(Arc::new(iceberg::spec::NestedField::optional(
        metadata.last_column_id() + 1,
        "note",
        iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::String),
    )));
    let wider = iceberg::spec::Schema::builder()
        .with_fields(fields)
        .build()
        .unwrap();
    lake.evolve_schema(&base, wider, Default::default())
        .await
        .unwrap();
    conflicts(
        base,
        "a schema change",
        "changed since the replacement was planned",
    )
    .await;
}
