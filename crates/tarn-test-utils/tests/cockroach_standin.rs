//! Self-tests of the CockroachDB stand-in (`tarn_test_utils::cockroach`): its catalog per
//! version, sinkless changefeeds from real writes, scans at a past cursor, resolved cadence,
//! webhook delivery with retries and failure, and option validation — each against a real
//! PostgreSQL, through the stand-in's pgwire endpoint with tokio-postgres.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tarn_test_utils::cockroach::{CockroachVersion, Hlc, StandInCluster, StandInOptions};
use tarn_test_utils::{PostgresServer, start_postgres};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const SCHEMA: &str = "
CREATE TABLE dogs (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12,2), score float8,
                   photo bytea, doc jsonb, born timestamptz(3), seen timestamptz, age interval(2));
CREATE TABLE plain (a text, b int);
CREATE TABLE gone (id int PRIMARY KEY, x int, y int);
ALTER TABLE gone DROP COLUMN x;
CREATE TABLE sharded (id bigint NOT NULL,
  crdb_internal_id_shard_4 int8 GENERATED ALWAYS AS (abs(hashint8(id)) % 4) STORED,
  v text, PRIMARY KEY (crdb_internal_id_shard_4, id));
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
";

/// A PostgreSQL with database `app` and a stand-in in front of it.
struct Env {
    pg: PostgresServer,
    crdb: StandInCluster,
}

impl Env {
    async fn new(version: CockroachVersion, options: StandInOptions) -> Self {
        let pg = start_postgres().unwrap();
        pg.psql("postgres", "CREATE DATABASE app").unwrap();
        pg.psql("app", SCHEMA).unwrap();
        let crdb = StandInCluster::start(pg.port(), "app", StandInOptions { version, ..options })
            .await
            .unwrap();
        Self { pg, crdb }
    }

    /// A client of the stand-in (as CockroachDB's clients connect).
    async fn crdb(&self) -> Client {
        connect(&self.crdb.url("postgres")).await
    }

    /// A client of the backing PostgreSQL (to write, as an application would).
    async fn pg(&self) -> Client {
        connect(&self.pg.url("app")).await
    }
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn rows_text(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

async fn one_col(c: &Client, sql: &str) -> Vec<Option<String>> {
    rows_text(c.simple_query(sql).await.unwrap())
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect()
}

/// (SQLSTATE, message, hint) of a failed statement.
async fn error_of(c: &Client, sql: &str) -> (String, String, Option<String>) {
    let e = c.simple_query(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.hint().map(str::to_string),
    )
}

/// The tarn query that lists tables (crates/tarn-cdc/src/postgres/catalog.rs before issue #19).
const TARN_DISCOVER: &str = "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND NOT c.relispartition \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     ORDER BY n.nspname, c.relname";

const TARN_KEYS: &str = "SELECT k.column_name::text \
     FROM information_schema.table_constraints c \
     JOIN information_schema.key_column_usage k \
       ON k.constraint_name = c.constraint_name AND k.constraint_schema = c.constraint_schema \
      AND k.table_name = c.table_name \
     WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
     ORDER BY k.ordinal_position";

async fn attributes(c: &Client, table: &str) -> Vec<(String, i16, u32, i32, bool, bool, String)> {
    c.query(
        "SELECT a.attname::text, a.attnum, a.atttypid, a.atttypmod, a.attnotnull, a.attisdropped, \
                a.attgenerated::text \
         FROM pg_attribute a WHERE a.attrelid = (SELECT oid FROM pg_class WHERE relname = $1) \
         ORDER BY a.attnum",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    })
    .collect()
}

async fn catalog_checks(version: CockroachVersion) {
    let env = Env::new(version, StandInOptions::default()).await;
    env.crdb
        .register_virtual_column("sharded", "crdb_internal_id_shard_4", true)
        .await
        .unwrap();
    let c = env.crdb().await;
    let v23_2 = version >= CockroachVersion::V23_2;

    // version(), server_version.
    let v = one_col(&c, "SELECT version()").await.remove(0).unwrap();
    assert!(
        v.starts_with(&format!("CockroachDB CCL {}", version.release())),
        "{v}"
    );
    assert_eq!(
        one_col(&c, "SELECT current_setting('server_version')").await,
        [Some("13.0.0".into())]
    );
    assert_eq!(one_col(&c, "SHOW server_version").await, [Some("13.0.0".into())]);

    // pg_class: relispartition NULL; relreplident NULL on v23.1, 'd' from v23.2.
    let r = rows_text(
        c.simple_query(
            "SELECT relispartition::text, relreplident::text FROM pg_class WHERE relname = 'dogs'",
        )
        .await
        .unwrap(),
    );
    assert_eq!(r, [vec![None, if v23_2 { Some("d".into()) } else { None }]]);
    // So tarn's table discovery (`NOT c.relispartition`) finds nothing on any version.
    assert!(c.query(TARN_DISCOVER, &[]).await.unwrap().is_empty());
    // crdb_internal's virtual tables are relkind 'r'.
    assert_eq!(
        one_col(
            &c,
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'crdb_internal' AND c.relname = 'jobs'"
        )
        .await,
        [Some("r".into())]
    );
    // pg_namespace: no pg_toast / pg_temp, nothing of the stand-in; CockroachDB's virtual schemas.
    let schemas = one_col(&c, "SELECT nspname::text FROM pg_namespace ORDER BY 1").await;
    let schemas: Vec<String> = schemas.into_iter().flatten().collect();
    assert!(
        schemas
            .iter()
            .all(|s| !s.starts_with("pg_toast") && !s.starts_with("crdb_v") && s != "crdb_standin"),
        "{schemas:?}"
    );
    for s in [
        "crdb_internal",
        "pg_extension",
        "public",
        "pg_catalog",
        "information_schema",
    ] {
        assert!(schemas.iter().any(|x| x == s), "{s} in {schemas:?}");
    }

    // rowid: a hidden NOT NULL INT8 column after the declared ones, the primary key.
    let plain = attributes(&c, "plain").await;
    let names: Vec<(&str, i16, bool)> = plain.iter().map(|a| (a.0.as_str(), a.1, a.4)).collect();
    assert_eq!(names, [("a", 1, false), ("b", 2, false), ("rowid", 3, true)]);
    assert_eq!(plain[2].2, 20);
    let pk: Vec<(Vec<i16>, bool)> = c
        .query(
            "SELECT indkey::int2[], indisreplident FROM pg_index \
             WHERE indrelid = (SELECT oid FROM pg_class WHERE relname = 'plain') AND indisprimary",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pk, [(vec![3], false)]);
    let keys: Vec<String> = c
        .query(TARN_KEYS, &[&"public", &"plain"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["rowid"]);
    assert_eq!(
        rows_text(
            c.simple_query(
                "SELECT column_name::text, is_hidden, crdb_sql_type FROM information_schema.columns \
                 WHERE table_name = 'plain' ORDER BY ordinal_position"
            )
            .await
            .unwrap()
        ),
        [
            vec![Some("a".into()), Some("NO".into()), Some("STRING".into())],
            vec![Some("b".into()), Some("NO".into()), Some("INT4".into())],
            vec![Some("rowid".into()), Some("YES".into()), Some("INT8".into())],
        ]
    );

    // Hash-sharded primary key: the virtual shard column first in the key, attgenerated 'v'.
    let keys: Vec<String> = c
        .query(TARN_KEYS, &[&"public", &"sharded"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["crdb_internal_id_shard_4", "id"]);
    let shard = attributes(&c, "sharded").await;
    assert_eq!(
        (shard[1].0.as_str(), shard[1].6.as_str()),
        ("crdb_internal_id_shard_4", "v")
    );

    // Dropped columns: gaps before v23.2, placeholders (anyelement) from v23.2.
    let gone: Vec<(String, i16, u32, bool)> = attributes(&c, "gone")
        .await
        .into_iter()
        .map(|a| (a.0, a.1, a.2, a.5))
        .collect();
    if v23_2 {
        assert_eq!(
            gone,
            [
                ("id".into(), 1, 23, false),
                ("........pg.dropped.2........".into(), 2, 2283, true),
                ("y".into(), 3, 23, false)
            ]
        );
    } else {
        assert_eq!(gone, [("id".into(), 1, 23, false), ("y".into(), 3, 23, false)]);
    }

    // atttypmod: explicit temporal precision from v23.2 only; INTERVAL the precision only.
    let dogs = attributes(&c, "dogs").await;
    let typmod = |n: &str| dogs.iter().find(|a| a.0 == n).unwrap().3;
    assert_eq!(typmod("born"), if v23_2 { 3 } else { -1 });
    assert_eq!(typmod("seen"), -1);
    assert_eq!(typmod("age"), if v23_2 { 2 } else { -1 });
    assert_eq!(typmod("price"), (12 << 16 | 2) + 4);

    // pg_type: no domains, typbasetype 0, typtypmod -1; the version's built-in types.
    assert_eq!(
        one_col(
            &c,
            "SELECT count(*) FROM pg_type WHERE typbasetype <> 0 OR typtypmod <> -1 OR typtype = 'd'"
        )
        .await,
        [Some("0".into())]
    );
    assert_eq!(
        one_col(&c, "SELECT count(*) FROM pg_type WHERE typname = 'posint'").await,
        [Some("0".into())]
    );
    assert_eq!(
        one_col(&c, "SELECT count(*) FROM pg_type WHERE typname = 'pg_lsn'").await,
        [Some(if v23_2 { "1" } else { "0" }.into())]
    );
    // tarn's type query, and a query with an oid[] parameter (extended protocol).
    let types = c
        .query(
            "SELECT t.oid, t.typname::text, n.nspname::text, t.typtype::text, t.typelem, t.typbasetype, \
                    t.typtypmod, t.typcategory::text \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
            &[],
        )
        .await
        .unwrap();
    assert!(types.iter().any(|r| r.get::<_, String>(1) == "int8"));
    let dogs_oid: u32 = c
        .query_one("SELECT oid FROM pg_catalog.pg_class WHERE relname = 'dogs'", &[])
        .await
        .unwrap()
        .get(0);
    let n = c
        .query(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = ANY($1) AND a.attnum > 0",
            &[&vec![dogs_oid]],
        )
        .await
        .unwrap()
        .len();
    assert_eq!(n, 9);

    // What the emulation does not model is refused, naming it; the connection goes on.
    for (sql, what) in [
        ("SELECT * FROM pg_proc", "pg_catalog.pg_proc"),
        (
            "SELECT * FROM pg_catalog.pg_stat_activity",
            "pg_catalog.pg_stat_activity",
        ),
        (
            "SELECT * FROM information_schema.tables",
            "information_schema.tables",
        ),
        ("SELECT pg_get_indexdef(1)", "pg_get_indexdef()"),
    ] {
        let (code, msg, _) = error_of(&c, sql).await;
        assert_eq!(code, "0A000");
        assert!(
            msg.contains(&format!("does not model {what};")) && msg.contains("CockroachDB's behaviour"),
            "{msg}"
        );
    }
    let e = c
        .query("SELECT relname FROM pg_catalog.pg_proc", &[])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().contains("pg_catalog.pg_proc"),
        "{e}"
    );
    assert_eq!(
        c.query_one("SELECT 1::int8", &[]).await.unwrap().get::<_, i64>(0),
        1
    );

    // cluster_logical_timestamp(): a DECIMAL reading of the stand-in's clock.
    let before = env.crdb.clock_now();
    let t = one_col(&c, "SELECT cluster_logical_timestamp()::text")
        .await
        .remove(0)
        .unwrap();
    let t = Hlc::parse_decimal(&t).unwrap();
    assert!(t > before && t < env.crdb.clock_now(), "{t} vs {before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_v23_1() {
    catalog_checks(CockroachVersion::V23_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_v23_2() {
    catalog_checks(CockroachVersion::V23_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_v25_2() {
    catalog_checks(CockroachVersion::V25_2).await;
    let env = Env::new(CockroachVersion::V25_2, StandInOptions::default()).await;
    let c = env.crdb().await;
    assert_eq!(
        one_col(
            &c,
            "SELECT relrowsecurity::text FROM pg_class WHERE relname = 'dogs'"
        )
        .await,
        [Some("false".into())]
    );
}

fn unhex(s: &str) -> String {
    let h = s.strip_prefix("\\x").unwrap();
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// The next message of a sinkless changefeed: `Some(Ok((table, key, value)))` (BYTES
/// decoded), `Some(Err(..))` for an error or the statement's completion (`"complete"`), `None`
/// when the stream ended.
async fn next_message(
    stream: &mut Stream,
    timeout: Duration,
) -> Option<Result<(Option<String>, Option<String>, String), String>> {
    loop {
        let next = tokio::time::timeout(timeout, stream.next())
            .await
            .expect("a changefeed message within the timeout");
        match next {
            None => return None,
            Some(Err(e)) => return Some(Err(e.to_string())),
            Some(Ok(SimpleQueryMessage::Row(r))) => {
                return Some(Ok((
                    r.get(0).map(str::to_string),
                    r.get(1).map(unhex),
                    unhex(r.get(2).unwrap()),
                )));
            }
            Some(Ok(SimpleQueryMessage::CommandComplete(_))) => return Some(Err("complete".into())),
            Some(Ok(_)) => continue,
        }
    }
}

type Stream = std::pin::Pin<Box<tokio_postgres::SimpleQueryStream>>;

async fn feed(c: &Client, sql: &str) -> Stream {
    Box::pin(c.simple_query_raw(sql).await.unwrap())
}

async fn row(s: &mut Stream) -> (Option<String>, Option<String>, String) {
    next_message(s, Duration::from_secs(30)).await.unwrap().unwrap()
}

/// The next row message (skipping resolved ones).
async fn data(s: &mut Stream) -> (String, String, String) {
    loop {
        let (t, k, v) = row(s).await;
        if let (Some(t), Some(k)) = (t, k) {
            return (t, k, v);
        }
    }
}

/// The next resolved timestamp.
async fn resolved(s: &mut Stream) -> Hlc {
    loop {
        let (t, _, v) = row(s).await;
        if t.is_none() {
            let ts = v
                .strip_prefix("{\"resolved\": \"")
                .unwrap()
                .strip_suffix("\"}")
                .unwrap();
            return Hlc::parse_decimal(ts).unwrap();
        }
    }
}

fn field<'a>(value: &'a str, name: &str) -> &'a str {
    let i = value
        .find(&format!("\"{name}\": \""))
        .unwrap_or_else(|| panic!("{name} in {value}"))
        + name.len()
        + 5;
    &value[i..i + value[i..].find('"').unwrap()]
}

fn on() -> StandInOptions {
    StandInOptions {
        rangefeed_enabled: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinkless_scan_then_live_changes() {
    let env = Env::new(CockroachVersion::V24_2, on()).await;
    let pg = env.pg().await;
    pg.batch_execute(
        "INSERT INTO dogs (id, name, price, score, photo, doc, born) VALUES \
           (1, 'rex', 10.50, 1500, '\\x0102ff', 'null', '2026-11-27 10:00:00.5+00'), \
           (2, 'fido', NULL, 'NaN', NULL, NULL, NULL)",
    )
    .await
    .unwrap();
    let c = env.crdb().await;
    let mut s = feed(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs WITH updated, diff, resolved = '0s', \
         min_checkpoint_frequency = '100ms', full_table_name, encode_json_value_null_as_object",
    )
    .await;
    let (t, k, v) = data(&mut s).await;
    let scan_ts = field(&v, "updated").to_string();
    assert_eq!((t.as_str(), k.as_str()), ("app.public.dogs", "[1]"));
    assert_eq!(
        v,
        format!(
            "{{\"after\": {{\"age\": null, \"born\": \"2026-11-27T10:00:00.5Z\", \"doc\": {{\"__crdb_json_null__\": true}}, \
             \"id\": 1, \"name\": \"rex\", \"photo\": \"\\\\x0102ff\", \"price\": 10.50, \"score\": 1.5E+3, \"seen\": null}}, \
             \"before\": null, \"updated\": \"{scan_ts}\"}}"
        )
    );
    let (_, k, v) = data(&mut s).await;
    assert_eq!(k, "[2]");
    assert!(
        v.contains("\"doc\": null") && v.contains("\"score\": \"NaN\"") && v.contains("\"price\": null"),
        "{v}"
    );
    assert_eq!(field(&v, "updated"), scan_ts);
    let scan_ts = Hlc::parse_decimal(&scan_ts).unwrap();
    assert!(resolved(&mut s).await >= scan_ts);

    // Live changes from real writes: one transaction, then another.
    pg.batch_execute(
        "BEGIN; UPDATE dogs SET name = 'max' WHERE id = 1; \
         INSERT INTO dogs (id, name) VALUES (3, 'new'); COMMIT; DELETE FROM dogs WHERE id = 2",
    )
    .await
    .unwrap();
    let (_, k1, v1) = data(&mut s).await;
    let (_, k3, v3) = data(&mut s).await;
    let (_, k2, v2) = data(&mut s).await;
    assert_eq!((k1.as_str(), k3.as_str(), k2.as_str()), ("[1]", "[3]", "[2]"));
    assert!(
        v1.contains("\"name\": \"max\"") && v1.contains("\"before\": {") && v1.contains("\"name\": \"rex\""),
        "{v1}"
    );
    assert!(
        v3.contains("\"before\": null") && v3.contains("\"name\": \"new\""),
        "{v3}"
    );
    assert!(v2.starts_with("{\"after\": null, \"before\": {"), "{v2}");
    let t1 = Hlc::parse_decimal(field(&v1, "updated")).unwrap();
    assert_eq!(
        field(&v3, "updated"),
        field(&v1, "updated"),
        "one transaction, one timestamp"
    );
    let t2 = Hlc::parse_decimal(field(&v2, "updated")).unwrap();
    assert!(scan_ts < t1 && t1 < t2);
    assert!(resolved(&mut s).await >= t2);
    assert!(!env.crdb.resolved_emitted().is_empty());

    // A failing node drops the connection.
    env.crdb.fail_feeds("node down");
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match next_message(&mut s, Duration::from_secs(10)).await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_at_a_past_cursor() {
    let env = Env::new(CockroachVersion::V23_2, on()).await;
    let pg = env.pg().await;
    pg.batch_execute("INSERT INTO dogs (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await
        .unwrap();
    let cursor = env.crdb.sync_now().await.unwrap();
    pg.batch_execute(
        "UPDATE dogs SET name = 'a2' WHERE id = 1; DELETE FROM dogs WHERE id = 2; \
         INSERT INTO dogs (id, name) VALUES (4, 'd')",
    )
    .await
    .unwrap();
    let c = env.crdb().await;
    // initial_scan = 'only' at the cursor: that moment's rows, then the statement completes.
    let mut s = feed(
        &c,
        &format!("CREATE CHANGEFEED FOR TABLE dogs WITH initial_scan = 'only', cursor = '{cursor}'"),
    )
    .await;
    let mut got = Vec::new();
    loop {
        match next_message(&mut s, Duration::from_secs(30)).await.unwrap() {
            Ok((_, k, v)) => got.push((k.unwrap(), v)),
            Err(e) => {
                assert_eq!(e, "complete");
                break;
            }
        }
    }
    let names: Vec<(String, String)> = got
        .iter()
        .map(|(k, v)| (k.clone(), field(v, "name").to_string()))
        .collect();
    assert_eq!(
        names,
        [
            ("[1]".into(), "a".into()),
            ("[2]".into(), "b".into()),
            ("[3]".into(), "c".into())
        ]
    );
    assert!(!got[0].1.contains("updated"));
    drop(s);
    // With initial_scan = 'yes' and the cursor: scanned rows carry updated = the cursor, then
    // the changes after it follow (issue #19, point 2).
    let mut s = feed(
        &c,
        &format!(
            "CREATE CHANGEFEED FOR TABLE dogs WITH initial_scan = 'yes', cursor = '{cursor}', updated, \
             resolved = '0s', min_checkpoint_frequency = '100ms'"
        ),
    )
    .await;
    let mut scanned = Vec::new();
    for _ in 0..3 {
        let (_, k, v) = data(&mut s).await;
        assert_eq!(field(&v, "updated"), cursor.to_string(), "{v}");
        scanned.push(k);
    }
    assert_eq!(scanned, ["[1]", "[2]", "[3]"]);
    let mut later = Vec::new();
    for _ in 0..3 {
        let (_, k, v) = data(&mut s).await;
        assert!(Hlc::parse_decimal(field(&v, "updated")).unwrap() > cursor);
        later.push((k, v.starts_with("{\"after\": null")));
    }
    assert_eq!(
        later,
        [("[1]".into(), false), ("[2]".into(), true), ("[4]".into(), false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_cadence_honours_min_checkpoint_frequency() {
    let env = Env::new(CockroachVersion::V24_2, on()).await;
    let c = env.crdb().await;
    let mut s = feed(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs WITH resolved = '100ms', min_checkpoint_frequency = '500ms'",
    )
    .await;
    let start = Instant::now();
    let mut stamps = Vec::new();
    while stamps.len() < 4 {
        stamps.push((resolved(&mut s).await, Instant::now()));
    }
    for w in stamps.windows(2) {
        assert!(w[1].0 > w[0].0);
        assert!(
            w[1].1 - w[0].1 >= Duration::from_millis(450),
            "{:?}",
            w[1].1 - w[0].1
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(1900));
    // The default min_checkpoint_frequency is 30 s: no resolved message for a while.
    let c2 = env.crdb().await;
    let mut s2 = feed(&c2, "CREATE CHANGEFEED FOR TABLE dogs WITH resolved = '100ms'").await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), resolved(&mut s2)).await;
    assert!(
        quiet.is_err(),
        "a resolved message before min_checkpoint_frequency"
    );
    drop(s2);
    // Resolved timestamps trail real time by the closed-timestamp target. (`c2` stays busy
    // with its changefeed, as a connection streaming one does.)
    let c3 = env.crdb().await;
    assert_eq!(
        one_col(&c3, "SHOW CLUSTER SETTING kv.closed_timestamp.target_duration").await,
        [Some("0s".into())]
    );
    c3.simple_query("SET CLUSTER SETTING kv.closed_timestamp.target_duration = '2s'")
        .await
        .unwrap();
    let mut s3 = feed(
        &c3,
        "CREATE CHANGEFEED FOR TABLE dogs WITH resolved = '0s', min_checkpoint_frequency = '100ms'",
    )
    .await;
    // The first is the start (the high-water mark never goes below it); the next ones trail.
    let first = resolved(&mut s3).await;
    let r = resolved(&mut s3).await;
    assert!(r > first);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now - r.wall >= 2_000_000_000, "{} ns behind", now - r.wall);
}

/// An HTTPS endpoint recording requests and answering with the statuses queued (200 when
/// none is).
struct Hook {
    port: u16,
    ca_pem: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    fail_all: Arc<Mutex<bool>>,
}

impl Hook {
    async fn start() -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_pem = generated.cert.pem();
        let key_pem = generated.signing_key.serialize_pem();
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook = Self {
            port,
            ca_pem: cert_pem,
            requests: Arc::default(),
            statuses: Arc::default(),
            fail_all: Arc::default(),
        };
        let (requests, statuses, fail_all) = (
            hook.requests.clone(),
            hook.statuses.clone(),
            hook.fail_all.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (requests, statuses, fail_all) = (requests.clone(), statuses.clone(), fail_all.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head, body) = loop {
                        let n = tls.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|l| l.trim().parse().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                break (head.to_string(), body.to_string());
                            }
                        }
                    };
                    requests.lock().unwrap().push((head, body));
                    let status = if *fail_all.lock().unwrap() {
                        500
                    } else {
                        statuses.lock().unwrap().pop_front().unwrap_or(200)
                    };
                    let reason = if status == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    };
                    let text = if status == 200 { "" } else { "nope" };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        hook
    }

    fn uri(&self) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let ca: String = url::form_urlencoded::byte_serialize(ca.as_bytes()).collect();
        format!("webhook-https://127.0.0.1:{}/hook/a?ca_cert={ca}", self.port)
    }

    fn bodies(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.1.clone())
            .collect()
    }

    async fn wait(&self, what: &str, check: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check(&self.bodies()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", self.bodies());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn job_state(c: &Client, id: &str) -> Vec<Option<String>> {
    rows_text(
        c.simple_query(&format!(
            "SELECT status, running_status, error, high_water_timestamp::text FROM [SHOW CHANGEFEED JOB {id}]"
        ))
        .await
        .unwrap(),
    )
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivery_retries_and_failure() {
    let env = Env::new(CockroachVersion::V24_2, on()).await;
    let pg = env.pg().await;
    pg.batch_execute("INSERT INTO dogs (id, name) VALUES (1, 'rex')")
        .await
        .unwrap();
    let hook = Hook::start().await;
    let c = env.crdb().await;
    c.simple_query(
        "SET CLUSTER SETTING changefeed.permissions.require_external_connection_sink.enabled = true",
    )
    .await
    .unwrap();
    // A direct webhook URI is refused under the deployment's setting.
    let (code, msg, _) = error_of(
        &c,
        &format!("CREATE CHANGEFEED FOR TABLE dogs INTO '{}'", hook.uri()),
    )
    .await;
    assert_eq!(code, "42501");
    assert!(
        msg.starts_with(
            "the CHANGEFEED privilege on all tables can only be used with external connection sinks"
        ),
        "{msg}"
    );
    c.simple_query(&format!("CREATE EXTERNAL CONNECTION hook AS '{}'", hook.uri()))
        .await
        .unwrap();
    let (_, msg, _) = error_of(&c, "CREATE CHANGEFEED FOR TABLE dogs INTO 'external://missing'").await;
    assert_eq!(
        msg,
        "failed to load external connection object: external connection with name missing does not exist"
    );
    // The first request fails: retried with the same body.
    hook.statuses.lock().unwrap().push_back(500);
    let id = one_col(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs INTO 'external://hook' WITH updated, resolved = '0s', \
         min_checkpoint_frequency = '200ms', webhook_auth_header = 'Bearer s3cret', \
         webhook_sink_config = '{\"Retry\": {\"Max\": 2, \"Backoff\": \"20ms\"}}'",
    )
    .await
    .remove(0)
    .unwrap();
    hook.wait("the scanned row, twice, then a resolved", |b| {
        b.len() >= 3 && b.iter().any(|x| x.starts_with("{\"resolved\""))
    })
    .await;
    let bodies = hook.bodies();
    assert_eq!(bodies[0], bodies[1]);
    let row = &bodies[0];
    assert!(
        row.starts_with("{\"payload\":[{\"after\": {") && row.ends_with("}],\"length\":1}"),
        "{row}"
    );
    assert!(
        row.contains("\"key\": [1], \"topic\": \"dogs\", \"updated\": \""),
        "{row}"
    );
    let head = hook.requests.lock().unwrap()[0].0.clone();
    assert!(head.starts_with("POST /hook/a HTTP/1.1"), "{head}");
    assert!(
        head.contains("Authorization: Bearer s3cret") && head.contains("Content-Type: application/json"),
        "{head}"
    );
    let state = job_state(&c, &id).await;
    assert_eq!(state[0].as_deref(), Some("running"));
    env.crdb
        .wait_job(Duration::from_secs(30), |j| j.high_water.is_some())
        .await
        .unwrap();

    // Retries run out: a retryable error; the job keeps running and restarts from its
    // high-water mark once the endpoint is back.
    *hook.fail_all.lock().unwrap() = true;
    pg.batch_execute("INSERT INTO dogs (id, name) VALUES (2, 'fido')")
        .await
        .unwrap();
    let job = env
        .crdb
        .wait_job(Duration::from_secs(30), |j| j.restarts > 0)
        .await
        .unwrap();
    assert_eq!(job.status, "running");
    assert!(
        job.running_status
            .as_deref()
            .unwrap()
            .starts_with("retryable error: 500 Internal Server Error: nope"),
        "{:?}",
        job.running_status
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !job_state(&c, &id).await[1]
        .as_deref()
        .is_some_and(|s| s.starts_with("retryable error"))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = hook.bodies().len();
    *hook.fail_all.lock().unwrap() = false;
    hook.wait("fido delivered after the restart", |b| {
        b[before..].iter().any(|x| x.contains("\"name\": \"fido\""))
    })
    .await;

    // A failing node fails the job: visible in SHOW CHANGEFEED JOB.
    env.crdb.fail_feeds("node failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = job_state(&c, &id).await;
        if state[0].as_deref() == Some("failed") {
            assert_eq!(state[2].as_deref(), Some("node failed"));
            break;
        }
        assert!(Instant::now() < deadline, "{state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, msg, _) = error_of(&c, &format!("CANCEL JOB {id}")).await;
    assert_eq!(msg, "job with status failed cannot be requested to be canceled");
    let (_, msg, _) = error_of(&c, "CANCEL JOB 1").await;
    assert_eq!(msg, "job with ID 1 does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_validation_errors() {
    let env = Env::new(CockroachVersion::V24_2, StandInOptions::default()).await;
    let c = env.crdb().await;
    let (code, msg, _) = error_of(&c, "CREATE CHANGEFEED FOR TABLE dogs").await;
    assert_eq!(code, "XXUUU");
    assert!(
        msg.starts_with("rangefeeds require the kv.rangefeed.enabled setting. See https://"),
        "{msg}"
    );
    c.simple_query("SET CLUSTER SETTING kv.rangefeed.enabled = true")
        .await
        .unwrap();
    for (sql, code, message) in [
        (
            "CREATE CHANGEFEED FOR TABLE dogs WITH bogus",
            "XXUUU",
            "invalid option \"bogus\"",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE dogs WITH resolved = 'bar'",
            "22023",
            "problem parsing option resolved: time: invalid duration \"bar\"",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE dogs WITH initial_scan = 'only', updated",
            "22023",
            "cannot specify both initial_scan='only' and updated",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE dogs WITH envelope = 'nope'",
            "22023",
            "unknown envelope: nope, valid values are 'row', 'key_only', 'wrapped', 'deprecated_row',  and 'bare'",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE nope",
            "XXUUU",
            "failed to resolve targets in the CHANGEFEED stmt: table \"nope\" does not exist",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE dogs INTO ''",
            "XXUUU",
            "omit the SINK clause for inline results",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE dogs WITH cursor = '9000000000000000000'",
            "XXUUU",
            "AS OF SYSTEM TIME: cannot specify timestamp in the future",
        ),
        (
            "SET CLUSTER SETTING no.such.setting = 1",
            "42704",
            "unknown cluster setting 'no.such.setting'",
        ),
    ] {
        let got = error_of(&c, sql).await;
        assert_eq!((got.0.as_str(), got.1.as_str()), (code, message), "{sql}");
    }
    // TRUNCATE of a captured table is refused (row triggers would not see it).
    let pg = env.pg().await;
    let e = pg.batch_execute("TRUNCATE dogs").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("does not model TRUNCATE of dogs"),
        "{e}"
    );
    // A core changefeed needs SELECT on its tables.
    env.pg
        .psql("app", "CREATE ROLE reader LOGIN; GRANT SELECT ON plain TO reader")
        .unwrap();
    let reader = connect(&env.crdb.url("reader")).await;
    let (code, msg, _) = error_of(&reader, "CREATE CHANGEFEED FOR TABLE dogs").await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "42501",
            "user reader requires the SELECT privilege on all target tables to be able to run a core changefeed"
        )
    );
    // A cursor older than the GC threshold (here: before the stand-in's history begins).
    let (code, msg, hint) = error_of(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs WITH cursor = '1000000000000000000'",
    )
    .await;
    assert_eq!(code, "XXUUU");
    assert!(
        msg.starts_with("failed to resolve targets in the CHANGEFEED stmt: batch timestamp 1000000000.000000000,0 must be after replica GC threshold"),
        "{msg}"
    );
    assert_eq!(
        hint.as_deref(),
        Some("do the targets exist at the specified cursor time 1000000000.000000000,0?")
    );
    // encode_json_value_null_as_object exists from v24.2 only.
    assert!(
        c.simple_query("CREATE CHANGEFEED FOR TABLE dogs INTO 'webhook-https://127.0.0.1:1/x' WITH encode_json_value_null_as_object, kafka_sink_config = '{}'")
            .await
            .unwrap_err()
            .as_db_error()
            .unwrap()
            .message()
            .contains("this sink is incompatible with option kafka_sink_config")
    );
    env.pg.psql("postgres", "CREATE DATABASE old").unwrap();
    env.pg.psql("old", SCHEMA).unwrap();
    let old = StandInCluster::start(
        env.pg.port(),
        "old",
        StandInOptions {
            version: CockroachVersion::V23_2,
            ..on()
        },
    )
    .await
    .unwrap();
    let c = connect(&old.url("postgres")).await;
    let (_, msg, _) = error_of(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs WITH encode_json_value_null_as_object",
    )
    .await;
    assert_eq!(msg, "invalid option \"encode_json_value_null_as_object\"");
    let (code, msg, _) = error_of(
        &c,
        "CREATE CHANGEFEED FOR TABLE dogs WITH initial_scan = 'only', resolved",
    )
    .await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("XXUUU", "cannot specify both initial_scan_only and resolved")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_backfill_and_a_cursor_from_cluster_logical_timestamp() {
    let env = Env::new(
        CockroachVersion::V24_2,
        StandInOptions {
            duplicates: true,
            seed: 7,
            ..on()
        },
    )
    .await;
    let pg = env.pg().await;
    pg.batch_execute("INSERT INTO dogs (id, name) VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let c = env.crdb().await;
    // A cursor read after the inserts: the changefeed starts after them.
    let cursor = one_col(&c, "SELECT cluster_logical_timestamp()::text")
        .await
        .remove(0)
        .unwrap();
    let cursor = Hlc::parse_decimal(&cursor).unwrap();
    let mut s = feed(
        &c,
        &format!(
            "EXPERIMENTAL CHANGEFEED FOR dogs WITH cursor = '{cursor}', updated, resolved = '0s', \
             min_checkpoint_frequency = '100ms'"
        ),
    )
    .await;
    for i in 0..20 {
        pg.batch_execute(&format!(
            "UPDATE dogs SET name = 'a{i}' WHERE id = 1; UPDATE dogs SET name = 'b{i}' WHERE id = 2"
        ))
        .await
        .unwrap();
    }
    // At least once, in order per key, nothing at or before the cursor.
    let mut seen: Vec<(String, String, Hlc)> = Vec::new();
    while !(seen.iter().any(|m| m.1 == "a19") && seen.iter().any(|m| m.1 == "b19")) {
        let (t, k, v) = data(&mut s).await;
        assert_eq!(t, "dogs");
        let ts = Hlc::parse_decimal(field(&v, "updated")).unwrap();
        assert!(ts > cursor, "{v}");
        seen.push((k, field(&v, "name").to_string(), ts));
    }
    assert!(seen.len() > 40 - 2, "{}", seen.len());
    for (key, prefix) in [("[1]", "a"), ("[2]", "b")] {
        let mut firsts: Vec<&str> = Vec::new();
        for m in seen.iter().filter(|m| m.0 == key) {
            if !firsts.contains(&m.1.as_str()) {
                firsts.push(&m.1);
            }
        }
        let want: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(firsts, want, "per-key order");
    }
    let first_of_key: Vec<usize> = ["[1]", "[2]"]
        .iter()
        .map(|k| seen.iter().position(|m| m.0 == *k).unwrap())
        .collect();
    let interleaved = seen.windows(2).any(|w| w[0].0 != w[1].0);
    assert!(interleaved && first_of_key.len() == 2);
    // Duplicates were injected (same key and timestamp twice).
    let mut stamps: Vec<(String, Hlc)> = seen.iter().map(|m| (m.0.clone(), m.2)).collect();
    let n = stamps.len();
    stamps.sort();
    stamps.dedup();
    assert!(stamps.len() < n, "no duplicate among {n} messages");
    // A column backfill re-emits every row with the new column at one new timestamp.
    pg.batch_execute("ALTER TABLE dogs ADD COLUMN color text DEFAULT 'brown'")
        .await
        .unwrap();
    let at = env.crdb.backfill("dogs").await.unwrap();
    let mut backfilled = Vec::new();
    while backfilled.len() < 2 {
        let (_, k, v) = data(&mut s).await;
        if v.contains("\"color\": \"brown\"") {
            assert_eq!(field(&v, "updated"), at.to_string());
            if !backfilled.contains(&k) {
                backfilled.push(k);
            }
        }
    }
    backfilled.sort();
    assert_eq!(backfilled, ["[1]", "[2]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_arrive_as_cockroachdb_encodes_them() {
    let env = Env::new(CockroachVersion::V24_2, on()).await;
    let pg = env.pg().await;
    pg.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE vals (id int PRIMARY KEY, i2 smallint, big int8, f4 real, dec numeric, nan numeric,
           flag bool, dt date, tm time, tz timetz, tz2 timetz, ts timestamp, iv interval, iv2 interval,
           u uuid, ip inet, net inet, b bit(4), arr int[], tarr text[], e mood, j json, o oid)",
    )
    .await
    .unwrap();
    let insert = |id: i32| {
        format!(
            "INSERT INTO vals VALUES ({id}, 7, 9007199254740993, 0.1, 0.00000010, 'NaN', true, '2026-11-27', \
             '10:00:00.123456', '10:00:00+00', '10:00:00.5-05', '2026-11-27 10:00:00', \
             '1 year 2 mons 3 days 04:05:06.789', '-1 day +2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
             '192.168.0.1', '10.0.0.0/8', B'0101', '{{1,2,NULL}}', '{{a,\"b c\"}}', 'happy', \
             '{{\"b\": 1, \"a\": [1, 2]}}', 26)"
        )
    };
    pg.batch_execute(&insert(1)).await.unwrap();
    let want = |id: i32| {
        format!(
            "{{\"after\": {{\"arr\": [1, 2, null], \"b\": \"0101\", \"big\": 9007199254740993, \"dec\": 1.0E-7, \
             \"dt\": \"2026-11-27\", \"e\": \"happy\", \"f4\": 0.10000000149011612, \"flag\": true, \"i2\": 7, \
             \"id\": {id}, \"ip\": \"192.168.0.1\", \"iv\": \"1 year 2 mons 3 days 04:05:06.789\", \
             \"iv2\": \"-1 days +02:00:00\", \"j\": {{\"a\": [1, 2], \"b\": 1}}, \"nan\": \"NaN\", \
             \"net\": \"10.0.0.0/8\", \"o\": \"26\", \"tarr\": [\"a\", \"b c\"], \"tm\": \"10:00:00.123456\", \
             \"ts\": \"2026-11-27T10:00:00\", \"tz\": \"10:00:00+00\", \"tz2\": \"10:00:00.5-05\", \
             \"u\": \"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"}}}}"
        )
    };
    let c = env.crdb().await;
    // Scanned (read in one snapshot by the stand-in) …
    let mut s = feed(&c, "CREATE CHANGEFEED FOR TABLE vals").await;
    let (_, k, v) = data(&mut s).await;
    assert_eq!(k, "[1]");
    assert_eq!(v, want(1));
    // … and captured by the triggers: the same text.
    pg.batch_execute(&insert(2)).await.unwrap();
    let (_, k, v) = data(&mut s).await;
    assert_eq!(k, "[2]");
    assert_eq!(v, want(2));
}
