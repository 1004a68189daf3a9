//! `tarn serve` as a real process, with real clients: psql, tokio-postgres, psycopg, pgjdbc.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tarn_test_utils::{free_port, wait_for, wait_for_port, workspace_root};

/// A `tarn serve` process on free loopback ports; killed on drop.
pub(crate) struct Served {
    child: Child,
    pub(crate) pg_port: u16,
    http_port: u16,
    _dir: tempfile::TempDir,
}

pub(crate) const USER: &str = "analyst";
pub(crate) const PASSWORD: &str = "s3cret-pw";

impl Served {
    pub(crate) fn start(trust_loopback: bool) -> Self {
        Self::start_with(trust_loopback, "")
    }

    /// [`Self::start`] with `extra` appended to its `tarn.toml` (more sections).
    pub(crate) fn start_with(trust_loopback: bool, extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-serve-").tempdir().unwrap();
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
                 [auth]\ntrust_loopback = {trust_loopback}\n[[auth.users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n{extra}"
            ),
        )
        .unwrap();
        let child = Self::spawn(dir.path(), [pg_port, http_port]);
        Self {
            child,
            pg_port,
            http_port,
            _dir: dir,
        }
    }

    /// Runs `tarn serve` on `dir` (its log appended to `serve.log`) and waits for `ports`.
    fn spawn(dir: &std::path::Path, ports: [u16; 2]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir)
            .arg("serve")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        for port in ports {
            if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
                let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                panic!("tarn serve did not start: {e}\n{log}");
            }
        }
        child
    }

    /// Kills the server (SIGKILL: nothing flushed, nothing shut down), runs `meanwhile`, and
    /// starts it again on the same data directory and ports.
    pub(crate) fn kill_and_restart_after(&mut self, meanwhile: impl FnOnce()) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        meanwhile();
        self.child = Self::spawn(self._dir.path(), [self.pg_port, self.http_port]);
    }

    /// The served lake's data directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/tarn", self.pg_port)
    }

    pub(crate) fn psql(&self, sql: &str) -> (bool, String, String) {
        let out = Command::new("psql")
            .arg(self.url())
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A tokio-postgres client logged in with the configured user.
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let config = format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=tarn",
            self.pg_port
        );
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    pub(crate) fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn psql_ddl_dml_catalog_and_errors() {
    let s = Served::start(false);
    let (ok, out, err) = s.psql(
        "CREATE TABLE sales (id BIGINT NOT NULL, region VARCHAR, amount DOUBLE) PARTITIONED BY (region); \
         INSERT INTO sales VALUES (1, 'eu', 2.5), (2, 'us', 4.0);",
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = s.psql("SELECT region, sum(amount) FROM sales GROUP BY region ORDER BY region");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "eu|2.5\nus|4");
    // Quotes inside string literals, in a query and in the row-level statements tarn runs.
    let (ok, out, err) = s.psql(
        "INSERT INTO sales VALUES (3, 'it''s', 1.0); UPDATE sales SET region = 'O''Brien' WHERE id = 3; \
         SELECT 'it''s', E'a\\'b', region FROM sales WHERE region = 'O''Brien'",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim().lines().last(), Some("it's|a'b|O'Brien"), "{out}");
    let (ok, _, err) = s.psql("DELETE FROM sales WHERE region = 'O''Brien'");
    assert!(ok, "{err}");
    // psql's catalog commands.
    let (ok, out, err) = s.psql("\\dt");
    assert!(ok, "{err}");
    assert!(out.contains("sales"), "{out}");
    let (ok, out, err) = s.psql("\\d sales");
    assert!(ok, "{err}");
    assert!(out.contains("region"), "{out}");
    // Errors carry SQLSTATEs.
    let (ok, _, err) = s.psql("SELECT * FROM nope");
    assert!(!ok && err.contains("nope"), "{err}");
    let out = Command::new("psql")
        .arg(s.url())
        .args(["-X", "-At", "-v", "VERBOSITY=verbose", "-c", "SELEC 1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("42601"), "{err}");
    // Wrong password is refused.
    let out = Command::new("psql")
        .arg(format!("postgres://{USER}:wrong@127.0.0.1:{}/tarn", s.pg_port))
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // HTTP endpoints.
    assert!(s.http_get("/healthz").contains("200 OK"));
    let metrics = s.http_get("/metrics");
    assert!(metrics.contains("tarn_pgwire_connections_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_with_parameters() {
    let s = Served::start(false);
    let client = s.client().await;
    client
        .batch_execute("CREATE TABLE tp (id BIGINT, name VARCHAR, ok BOOLEAN)")
        .await
        .unwrap();
    let n = client
        .execute("INSERT INTO tp VALUES ($1, $2, $3)", &[&1i64, &"one", &true])
        .await
        .unwrap();
    assert_eq!(n, 1);
    client
        .execute("INSERT INTO tp VALUES ($1, $2, $3)", &[&2i64, &"two", &false])
        .await
        .unwrap();
    let rows = client
        .query("SELECT id, name, ok FROM tp WHERE id > $1 ORDER BY id", &[&0i64])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let id: i64 = rows[1].get(0);
    let name: String = rows[1].get(1);
    let ok: bool = rows[1].get(2);
    assert_eq!((id, name.as_str(), ok), (2, "two", false));
    let stmt = client
        .prepare("SELECT count(*) FROM tp WHERE ok = $1")
        .await
        .unwrap();
    let count: i64 = client.query_one(&stmt, &[&true]).await.unwrap().get(0);
    assert_eq!(count, 1);
    // Twelve parameters, BIGINT and VARCHAR alternating: Describe announces each its own type
    // (from the tenth on they were another parameter's) and the values bind.
    let many = format!(
        "SELECT count(*) FROM tp WHERE {}",
        (0..6)
            .map(|i| format!("(id = ${} AND name = ${})", 2 * i + 1, 2 * i + 2))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    let stmt = client.prepare(&many).await.unwrap();
    let announced: Vec<&str> = stmt.params().iter().map(|t| t.name()).collect();
    assert_eq!(announced.len(), 12);
    for (i, t) in announced.iter().enumerate() {
        let want = if i % 2 == 0 { "int8" } else { "text" };
        assert!(
            *t == want || (want == "text" && *t == "varchar"),
            "${}: {t} ({announced:?})",
            i + 1
        );
    }
    let (ids, names) = ([9i64, 9, 9, 9, 9, 2], ["x", "x", "x", "x", "x", "two"]);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = ids
        .iter()
        .zip(&names)
        .flat_map(|(id, name)| [id as &(dyn tokio_postgres::types::ToSql + Sync), name as _])
        .collect();
    let count: i64 = client.query_one(&stmt, &params).await.unwrap().get(0);
    assert_eq!(count, 1, "the twelfth parameter's row");
    let err = client
        .query("SELECT * FROM missing_table", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert!(db.message().contains("missing_table"), "{db:?}");
    assert_eq!(db.code().code(), "42P01", "{db:?}");
}

#[test]
fn psycopg_and_jdbc_clients() {
    let s = Served::start(false);
    let out = tarn_test_utils::run_python(
        "pg_clients.py",
        &[
            "--port",
            &s.pg_port.to_string(),
            "--user",
            USER,
            "--password",
            PASSWORD,
        ],
    )
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        seen["rows"],
        serde_json::json!([[1, "one", 1.5], [2, "two", null]])
    );
    assert_eq!(seen["names"], serde_json::json!(["count", "sum", "max", "count"]));
    assert_eq!(seen["prepared"], serde_json::json!(["one", "two"]));
    assert_eq!(seen["many_params"], 1, "the twelfth parameters matched");
    assert_eq!(seen["error"], "42P01");
    assert_eq!(seen["copy_csv"], "id,name\n1,one\n2,two\n");
    assert_eq!(seen["copy_binary"], serde_json::json!([[1, "one"], [2, "two"]]));

    let jar = std::fs::read_dir("/usr/share/java")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("postgresql"))
        })
        .expect("pgjdbc jar: install libpostgresql-jdbc-java");
    let source = workspace_root().join("tests/interop/JdbcClient.java");
    let out = Command::new("java")
        .arg("-cp")
        .arg(&jar)
        .arg(&source)
        .args([&s.pg_port.to_string(), USER, PASSWORD])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name=seven"), "{stdout}");
    assert!(stdout.contains("table=jdbc_t"), "{stdout}");

    // pgjdbc's CopyManager.
    let out = Command::new("java")
        .arg("-cp")
        .arg(&jar)
        .arg(workspace_root().join("tests/interop/JdbcCopy.java"))
        .args([&s.pg_port.to_string(), USER, PASSWORD])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "rows=1\nid,name\n7,seven\n");
}

#[test]
fn trust_loopback_only_when_configured() {
    let s = Served::start(true);
    let out = Command::new("psql")
        .arg(format!("postgres://anyone@127.0.0.1:{}/tarn", s.pg_port))
        .args(["-X", "-At", "-c", "SELECT 41 + 1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    drop(s);
    let s = Served::start(false);
    let out = Command::new("psql")
        .arg(format!("postgres://anyone@127.0.0.1:{}/tarn", s.pg_port))
        .args(["-X", "-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut s = Served::start(false);
    let pid = s.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut status = None;
    wait_for("tarn serve to exit", Duration::from_secs(20), || {
        status = s.child.try_wait().unwrap();
        status.is_some()
    })
    .unwrap();
    assert!(status.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let s = Served::start(false);
    let client = s.client().await;
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move {
        // Minutes of work if nothing stops it.
        client
            .simple_query("SELECT count(*) FROM generate_series(1, 100000000000)")
            .await
    });
    // Send cancel requests until the query ends; a request that arrives before the query
    // starts has nothing to cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !running.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the query was not cancelled within 30s"
        );
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = running.await.unwrap().unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57014", "{db:?}");
}

/// A tokio-postgres client of a real PostgreSQL's database `postgres`.
async fn reference_client(pg: &tarn_test_utils::PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The column names of `sql`'s result: described by the extended protocol, and in the simple
/// protocol's row description.
async fn column_names(client: &tokio_postgres::Client, sql: &str) -> (Vec<String>, Vec<String>) {
    let statement = client
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let described = statement.columns().iter().map(|c| c.name().to_string()).collect();
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let simple = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(columns) => {
                Some(columns.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row description"));
    (described, simple)
}

/// Result columns are named as PostgreSQL names them: the same queries against a real
/// PostgreSQL and against tarn give the same names, in both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_column_names_are_postgresql_names() {
    let s = Served::start(false);
    let tarn = s.client().await;
    let pg = tarn_test_utils::start_postgres().unwrap();
    let reference = reference_client(&pg).await;
    let setup = "CREATE TABLE s (a INT, bee TEXT, d DECIMAL(10,2)); \
                 INSERT INTO s VALUES (1, 'x', 1.50), (2, 'y', 2.25)";
    tarn.batch_execute(setup).await.unwrap();
    reference.batch_execute(setup).await.unwrap();
    for sql in [
        "SELECT count(*), count(*), sum(s.a), string_agg(bee, ',' ORDER BY bee) FILTER (WHERE a > 1) FROM s",
        "SELECT a, s.bee, a + 1, a::text, CAST(d AS DOUBLE PRECISION), coalesce(bee, '-'), nullif(a, 1), \
         greatest(a, 1), least(a, 2), CASE WHEN a > 1 THEN 'big' END, upper(bee), 1::int, 'x'::text, \
         DATE '2026-01-01', (SELECT max(a) FROM s), a IS NULL, 2 AS two, a AS \"Quoted\" FROM s",
        "SELECT *, a FROM s",
        "SELECT 1, 1, 'x'",
        "SELECT count(*) FROM s UNION ALL SELECT 7",
        "SELECT row_number() OVER (ORDER BY a), now(), current_timestamp FROM s",
    ] {
        let expected = column_names(&reference, sql).await;
        assert_eq!(expected.0, expected.1, "PostgreSQL: {sql}");
        let got = column_names(&tarn, sql).await;
        assert_eq!(got.0, expected.0, "described (extended protocol): {sql}");
        assert_eq!(got.1, expected.0, "row description (simple protocol): {sql}");
    }
}

/// `now()` and `current_timestamp` are `timestamptz` in PostgreSQL's text format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_is_timestamptz() {
    let s = Served::start(false);
    let client = s.client().await;
    let statement = client.prepare("SELECT now(), current_timestamp").await.unwrap();
    for column in statement.columns() {
        assert_eq!(
            column.type_(),
            &tokio_postgres::types::Type::TIMESTAMPTZ,
            "{column:?}"
        );
    }
    let row = client.query_one(&statement, &[]).await.unwrap();
    let now: std::time::SystemTime = row.get(0);
    let skew = std::time::SystemTime::now()
        .duration_since(now)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "now() is {skew:?} off");
    let messages = client.simple_query("SELECT now()").await.unwrap();
    let text = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    // PostgreSQL's text form in UTC: `2026-12-06 04:17:02.123456+00`.
    let (stamp, zone) = text.split_at(text.len() - 3);
    assert_eq!(zone, "+00", "{text}");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f").is_ok(),
        "{text}"
    );
}

/// psql's `\d` shows the types PostgreSQL shows for the same table: `numeric(10,2)`,
/// `timestamp with time zone`, ...
#[test]
fn psql_describe_shows_postgresql_types() {
    let s = Served::start(false);
    let pg = tarn_test_utils::start_postgres().unwrap();
    let create = "CREATE TABLE t (id BIGINT NOT NULL, n INT, amount DECIMAL(10,2), whole NUMERIC(12,0), \
                  note TEXT, at TIMESTAMPTZ, ts TIMESTAMP, day DATE, ok BOOLEAN, score DOUBLE PRECISION)";
    let (ok, out, err) = s.psql(create);
    assert!(ok, "{out}{err}");
    pg.psql("postgres", create).unwrap();
    // `\d t` in unaligned tuples-only form: one `column|type|collation|nullable|default` line
    // per column.
    let columns = |described: &str| -> Vec<String> {
        described
            .lines()
            .filter(|l| l.contains('|'))
            .map(|l| l.split('|').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (ok, out, err) = s.psql("\\d t");
    assert!(ok, "{err}");
    let tarn_columns = columns(&out);
    let pg_columns = columns(&pg.psql("postgres", "\\d t").unwrap());
    assert_eq!(tarn_columns, pg_columns, "tarn:\n{out}");
    assert!(
        tarn_columns.contains(&"amount numeric(10,2)".to_string()),
        "{out}"
    );
}

/// `COPY ... TO STDOUT` sends what PostgreSQL sends for the same rows: the same statements,
/// through psql's `\copy` and tokio-postgres, against tarn and a real PostgreSQL, in text and
/// CSV (with tabs, quotes, commas, backslashes, newlines and NULLs in the values), and a binary
/// COPY that tokio-postgres's decoder reads back.
/// Floating-point and time values in text results read as PostgreSQL writes them, in both
/// query protocols (pgwire's own spelling was `10000000000.0`, `-inf`, `10:00:00.500000`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_and_time_text_is_what_postgresql_sends() {
    let s = Served::start(false);
    let tarn = s.client().await;
    let pg = tarn_test_utils::start_postgres().unwrap();
    let reference = reference_client(&pg).await;
    let sql = "SELECT CAST(x AS DOUBLE PRECISION) AS d, CAST(x AS REAL) AS r FROM (VALUES \
        (1e10), (1e14), (1e15), (123456789012345678), (0.0001), (0.00001), (0.1), (1), (1.5), \
        (-2.25), (123456.7), (1234567), (0)) AS v(x)";
    let times = "SELECT TIMESTAMP '2024-01-01 10:00:00.120' AS t, TIMESTAMP '2024-01-01 10:00:00' AS w, \
        TIME '10:00:00.25' AS tm, CAST('Infinity' AS DOUBLE PRECISION) AS inf, \
        CAST('-Infinity' AS DOUBLE PRECISION) AS ninf, CAST('NaN' AS DOUBLE PRECISION) AS nan";
    for sql in [sql, times] {
        let text = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<Option<String>>> {
            messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        };
        let expected = text(reference.simple_query(sql).await.unwrap());
        // Simple protocol.
        assert_eq!(text(tarn.simple_query(sql).await.unwrap()), expected, "{sql}");
    }
    // Extended protocol, text results (psycopg 3), read as the text the server sent.
    let extended = |conninfo: &str| -> serde_json::Value {
        let out = tarn_test_utils::run_python("pg_text_values.py", &[conninfo, sql, times]).unwrap();
        serde_json::from_str(out.trim()).unwrap()
    };
    let tarn_conninfo = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=tarn",
        s.pg_port
    );
    let expected = extended(&pg.url("postgres"));
    assert_eq!(
        extended(&tarn_conninfo),
        expected,
        "through psycopg's extended protocol"
    );
    assert_eq!(expected[0][2][0], "1e+15", "{expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_sends_what_postgresql_sends() {
    use futures::TryStreamExt;
    let s = Served::start(false);
    let tarn = s.client().await;
    let pg = tarn_test_utils::start_postgres().unwrap();
    let reference = reference_client(&pg).await;
    let rows = "INSERT INTO c VALUES (1, 'plain', 1.5, true, DATE '2024-01-02'), \
        (2, 'tab' || chr(9) || 'quote \" comma, end', NULL, false, NULL), \
        (3, NULL, -0.25, NULL, DATE '2024-12-31'), \
        (4, 'back\\slash' || chr(10) || 'line ;', 12345.625, true, DATE '1999-03-04'), \
        (5, 'floats', 1e15, true, NULL), (6, 'tiny', 1e-7, false, NULL), \
        (7, 'infinite', CAST('-Infinity' AS DOUBLE PRECISION), NULL, NULL)";
    tarn.batch_execute(&format!(
        "CREATE TABLE c (id BIGINT, name VARCHAR, score DOUBLE, ok BOOLEAN, day DATE); {rows}"
    ))
    .await
    .unwrap();
    reference
        .batch_execute(&format!(
            "CREATE TABLE c (id BIGINT, name VARCHAR, score DOUBLE PRECISION, ok BOOLEAN, day DATE); {rows}"
        ))
        .await
        .unwrap();
    async fn copied(client: &tokio_postgres::Client, sql: &str) -> String {
        let chunks: Vec<_> = client
            .copy_out(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c.as_ref()))
            .collect()
    }
    for sql in [
        "COPY c TO STDOUT",
        "COPY (SELECT * FROM c ORDER BY id) TO STDOUT",
        "COPY (SELECT * FROM c ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        "COPY (SELECT id, name FROM c ORDER BY id) TO STDOUT WITH (FORMAT csv, DELIMITER ';', NULL 'n/a', FORCE_QUOTE (id, name))",
        "COPY (SELECT name, id FROM c ORDER BY id) TO STDOUT (DELIMITER '|', NULL '')",
        "COPY (SELECT * FROM c WHERE id > 100) TO STDOUT (FORMAT csv, HEADER)",
        "COPY c (id, day) TO STDOUT csv header",
    ] {
        let expected = copied(&reference, sql).await;
        let mut got = copied(&tarn, sql).await;
        if sql == "COPY c TO STDOUT" {
            // A table's rows come in no particular order.
            let mut lines: Vec<&str> = got.split_inclusive('\n').collect();
            lines.sort_unstable();
            got = lines.concat();
        }
        assert_eq!(got, expected, "{sql}");
    }

    // psql's \copy sends the pre-9.0 spelling and writes the file on the client.
    let file = s.dir().join("copied.csv");
    let (ok, out, err) = s.psql(&format!(
        "\\copy (SELECT id, name FROM c ORDER BY id) to '{}' csv header",
        file.display()
    ));
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "COPY 7", "{out}");
    let expected = copied(
        &reference,
        "COPY (SELECT id, name FROM c ORDER BY id) TO STDOUT csv header",
    )
    .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);

    // Binary: read back by tokio-postgres's decoder.
    let types = [
        tokio_postgres::types::Type::INT8,
        tokio_postgres::types::Type::TEXT,
    ];
    let stream = tarn
        .copy_out("COPY (SELECT id, name FROM c ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    let rows: Vec<tokio_postgres::binary_copy::BinaryCopyOutRow> =
        tokio_postgres::binary_copy::BinaryCopyOutStream::new(stream, &types)
            .try_collect()
            .await
            .unwrap();
    let decoded: Vec<(i64, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(decoded.len(), 7);
    assert_eq!(decoded[0], (1, Some("plain".into())));
    assert_eq!(decoded[2], (3, None));

    // What tarn does not run is refused, saying what to use.
    for (sql, hint) in [
        ("COPY c FROM STDIN", "tarn load"),
        ("COPY c TO '/tmp/x.csv' (FORMAT csv)", "STORED AS"),
        ("COPY c TO STDOUT (FORMAT xml)", "not recognized"),
        // No policy: no user writes files on the server.
        (
            "COPY (SELECT 1) TO '/tmp/tarn-copy-refused.csv' STORED AS CSV",
            "no policy",
        ),
        ("COPY nope TO STDOUT", "nope"),
    ] {
        let e = tarn
            .copy_out(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        let message = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string());
        assert!(message.contains(hint), "{sql}: {message}");
    }
    // The session stays usable.
    assert_eq!(copied(&tarn, "COPY (SELECT 42) TO STDOUT").await, "42\n");
}

/// A `json` value as the text (or, binary, the bytes) the server sent.
#[derive(Debug, PartialEq)]
struct RawJson(String);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJson {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(String::from_utf8(raw.to_vec())?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSON
    }
}

/// Nested columns reach clients typed as the catalog describes them: a list of scalars as
/// PostgreSQL's array of that type (`bigint[]`, OID 1016), structs, maps and lists of lists as
/// `json` (OID 114) holding their JSON text — in the simple protocol, and the extended one in
/// text and binary. Maps and nested lists were refused outright ("Unsupported Datatype"), and
/// structs went out as anonymous records while `pg_attribute` said `json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_columns_are_arrays_and_json_as_the_catalog_says() {
    use tokio_postgres::types::Type;
    let s = Served::start(false);
    let tarn = s.client().await;
    tarn.batch_execute(
        "CREATE TABLE nest AS SELECT 1 AS id, make_array(1, 2, 3) AS a, named_struct('x', 1, 'y', 'b') AS s, \
         map(['k1', 'k2'], [1, 2]) AS m, make_array(make_array(1, 2), make_array(3)) AS l, make_array('p', 'q') AS t",
    )
    .await
    .unwrap();
    let sql = "SELECT a, s, m, l, t FROM nest";
    let statement = tarn.prepare(sql).await.unwrap();
    let types: Vec<Type> = statement.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        [
            Type::INT8_ARRAY,
            Type::JSON,
            Type::JSON,
            Type::JSON,
            Type::TEXT_ARRAY
        ]
    );
    // Binary results (tokio-postgres asks for binary).
    let row = tarn.query_one(&statement, &[]).await.unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), [1, 2, 3]);
    assert_eq!(row.get::<_, RawJson>(1), RawJson(r#"{"x":1,"y":"b"}"#.into()));
    assert_eq!(row.get::<_, RawJson>(2), RawJson(r#"{"k1":1,"k2":2}"#.into()));
    assert_eq!(row.get::<_, RawJson>(3), RawJson("[[1,2],[3]]".into()));
    assert_eq!(row.get::<_, Vec<String>>(4), ["p", "q"]);
    // Text results, simple protocol.
    let text: Vec<Option<String>> = tarn
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        text,
        [
            Some("{1,2,3}".to_string()),
            Some(r#"{"x":1,"y":"b"}"#.to_string()),
            Some(r#"{"k1":1,"k2":2}"#.to_string()),
            Some("[[1,2],[3]]".to_string()),
            Some("{p,q}".to_string()),
        ]
    );
    // The catalog says the same.
    let (ok, out, err) = s.psql(
        "SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname = 'nest' AND a.attnum > 1 ORDER BY a.attnum",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "a|1016|bigint[]",
            "s|114|json",
            "m|114|json",
            "l|114|json",
            "t|1009|text[]"
        ]
    );
    let (ok, out, err) = s.psql(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns \
         WHERE table_name = 'nest' AND column_name <> 'id' ORDER BY ordinal_position",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "a|ARRAY|_int8",
            "s|json|json",
            "m|json|json",
            "l|json|json",
            "t|ARRAY|_text"
        ]
    );
}
