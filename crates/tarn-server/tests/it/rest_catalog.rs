//! The Iceberg REST catalog of `tarn serve`, with real clients: pyiceberg's `RestCatalog`,
//! DuckDB's REST attach, raw HTTP for the error model, and tarn's own SQL over the Postgres
//! wire endpoint on the same catalog.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tarn_test_utils::{PostgresServer, S3Server, free_port, run_python, wait_for_port};

/// A `tarn serve` process with the REST catalog on free loopback ports; killed on drop.
struct RestServer {
    child: Child,
    pg_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl RestServer {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With more of `tarn.toml` (tables of its own, e.g. `[catalog]`, `[storage]`, `[cdc]`).
    fn start_with(extra_toml: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-rest-").tempdir().unwrap();
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
                 [auth]\ntrust_loopback = true\n[log]\nformat = \"json\"\nlevel = \"tarn_rest_catalog=debug,info\"\n\
                 {extra_toml}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .env_remove("TARN_CONFIG")
            .env_remove("TARN_DATA_DIR")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let server = Self {
            child,
            pg_port,
            http_port,
            dir,
        };
        for port in [pg_port, http_port] {
            if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
                panic!("tarn serve did not start: {e}\n{}", server.log());
            }
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// The catalog URL clients are given.
    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/iceberg", self.http_port)
    }

    /// A tarn SQL client over the Postgres wire endpoint.
    async fn sql(&self) -> tokio_postgres::Client {
        let config = format!("host=127.0.0.1 port={} user=tarn dbname=tarn", self.pg_port);
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// One HTTP request; returns the status and the body as JSON (`null` when empty).
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.http_with(method, path, body, "")
    }

    /// [`Self::http`] with more header lines (each ending in `\r\n`).
    fn http_with(&self, method: &str, path: &str, body: Option<&str>, headers: &str) -> (u16, Value) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer None\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status: u16 = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let payload = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let value = if payload.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(payload).unwrap_or_else(|e| panic!("{method} {path}: {e}: {payload:?}"))
        };
        (status, value)
    }

    fn python(&self, args: &[&str]) -> Value {
        let uri = self.uri();
        let mut all: Vec<&str> = vec![args[0], "--uri", &uri];
        all.extend_from_slice(&args[1..]);
        let out = run_python("rest_catalog.py", &all).unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows of a query as `a|b|c` lines (NULL as `NULL`), every column cast to text by the query.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_pyiceberg_duckdb_and_tarn_sql_share_tables() {
    let server = RestServer::start();
    let seen = server.python(&["pyiceberg"]);
    assert_eq!(seen["duplicate_namespace"], "NamespaceAlreadyExistsError");
    assert_eq!(strings(&seen["namespaces"]), ["a1", "a2", "a3", "public", "py"]);
    assert_eq!(strings(&seen["children_of_py"]), ["py.nested"]);
    assert_eq!(seen["py_properties"], json!({"owner": "pyiceberg"}));
    assert_eq!(
        seen["properties_update"],
        json!({"updated": ["team"], "removed": ["owner"], "missing": ["nope"]})
    );
    assert_eq!(seen["py_properties_after"], json!({"team": "data"}));
    assert_eq!(seen["missing_namespace"], "NoSuchNamespaceError");
    assert_eq!(seen["duplicate_table"], "TableAlreadyExistsError");
    // append 1,2,3; overwrite id 3 with 4,5; delete id 2; add column `note`; append 6.
    assert_eq!(
        seen["events"],
        json!([
            ["1", "a", "1.5", null],
            ["4", "d", "4.0", null],
            ["5", "e", "5.0", null],
            ["6", "f", "6.0", "evolved"]
        ])
    );
    assert_eq!(seen["events_schema_id"], 1);
    assert_eq!(seen["table_exists"], json!([true, false]));
    assert_eq!(seen["staged"], json!([["10", "staged", "1.0"]]));
    assert_eq!(seen["renamed"], json!([["7", "g", "7.0"]]));
    assert_eq!(seen["old_name_gone"], "NoSuchTableError");
    assert_eq!(seen["drop_non_empty_namespace"], "NamespaceNotEmptyError");
    assert_eq!(seen["purged_files_left"], 0, "purge deletes the table's files");
    assert_eq!(strings(&seen["tables"]), ["py.events", "py.staged"]);
    assert_eq!(strings(&seen["namespaces_after"]), ["a1", "a2", "public", "py"]);

    // tarn's SQL sees what pyiceberg wrote: its deletes, overwrite and evolved schema.
    let sql = server.sql().await;
    assert_eq!(
        rows(&sql, "SELECT id, name, score, note FROM py.events ORDER BY id").await,
        ["1|a|1.5|NULL", "4|d|4|NULL", "5|e|5|NULL", "6|f|6|evolved"]
    );
    // pyiceberg and DuckDB (through the REST catalog) read what tarn's SQL wrote.
    sql.batch_execute(
        "CREATE SCHEMA sq; CREATE TABLE sq.orders (id BIGINT NOT NULL, region VARCHAR, amount DOUBLE); \
         INSERT INTO sq.orders VALUES (1, 'eu', 10.5), (2, 'us', NULL); \
         INSERT INTO sq.orders VALUES (3, NULL, 3.25); \
         INSERT INTO py.events (id, name) VALUES (100, 'tarn')",
    )
    .await
    .unwrap();
    let orders = server.python(&["read", "--table", "sq.orders"]);
    let expected = json!([["1", "eu", "10.5"], ["2", "us", null], ["3", null, "3.25"]]);
    assert_eq!(orders["pyiceberg"], expected);
    assert_eq!(orders["duckdb"], expected);
    assert_eq!(orders["snapshots"], 2);
    let events = server.python(&["read", "--table", "py.events"]);
    assert_eq!(events["pyiceberg"], events["duckdb"]);
    assert_eq!(events["pyiceberg"].as_array().unwrap().len(), 5);
    assert!(
        events["pyiceberg"]
            .as_array()
            .unwrap()
            .contains(&json!(["100", "tarn", null, null]))
    );
    // pyiceberg appends to the table tarn created; tarn sees it.
    server.python(&["append", "--table", "sq.orders", "--ids", "4,5"]);
    assert_eq!(
        rows(&sql, "SELECT id, region FROM sq.orders ORDER BY id").await,
        ["1|eu", "2|us", "3|NULL", "4|py-4", "5|py-5"]
    );
    // DuckDB inserts through the REST catalog too; tarn sees its rows.
    let duck = server.python(&["duckdb-insert", "--table", "sq.orders", "--ids", "6,7"]);
    assert_eq!(duck["rows"].as_array().unwrap().len(), 7, "{duck}");
    assert_eq!(
        rows(&sql, "SELECT id, region FROM sq.orders WHERE id > 5 ORDER BY id").await,
        ["6|duck", "7|duck"]
    );
    let listed = server.python(&["duckdb"]);
    assert_eq!(
        strings(&listed["tables"]),
        ["py.events", "py.staged", "sq.orders"]
    );

    let (status, metrics) = {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        (text.lines().next().unwrap_or_default().to_string(), text)
    };
    assert!(status.contains("200"), "{status}");
    assert!(
        metrics.contains(
            "tarn_catalog_requests_total{route=\"POST /iceberg/v1/{prefix}/namespaces/{namespace}/tables/{table}\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tarn_catalog_request_duration_seconds_bucket{route="),
        "{metrics}"
    );
}

/// The body's error type and code; panics when the body is not the specification's envelope.
fn error_of(body: &Value) -> (String, u64) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    (
        error["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no error type: {body}"))
            .to_string(),
        error["code"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_bad_input_gets_the_spec_errors_and_changes_nothing() {
    let server = RestServer::start();
    let v1 = "/iceberg/v1/tarn";
    let (status, config) = server.http("GET", "/iceberg/v1/config?warehouse=anything", None);
    assert_eq!(status, 200);
    assert_eq!(config["overrides"]["prefix"], "tarn");

    // Malformed JSON, a missing field.
    let (status, body) = server.http(
        "POST",
        &format!("{v1}/namespaces"),
        Some("{\"namespace\": [\"a\""),
    );
    assert_eq!(
        (status, error_of(&body)),
        (400, ("BadRequestException".into(), 400))
    );
    let (status, body) = server.http("POST", &format!("{v1}/namespaces"), Some("{}"));
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("namespace"),
        "{body}"
    );

    let (status, _) = server.http(
        "POST",
        &format!("{v1}/namespaces"),
        Some(r#"{"namespace": ["ns"]}"#),
    );
    assert_eq!(status, 200);
    // Unknown namespace and table.
    let (status, body) = server.http("GET", &format!("{v1}/namespaces/nope/tables"), None);
    assert_eq!(
        (status, error_of(&body).0),
        (404, "NoSuchNamespaceException".into())
    );
    let (status, body) = server.http("GET", &format!("{v1}/namespaces/ns/tables/nope"), None);
    assert_eq!((status, error_of(&body).0), (404, "NoSuchTableException".into()));
    let (status, body) = server.http("GET", &format!("{v1}/namespaces/a%1Fb"), None);
    assert_eq!(
        (status, error_of(&body).0),
        (404, "NoSuchNamespaceException".into())
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("a.b"),
        "{body}"
    );
    let (status, _) = server.http("HEAD", &format!("{v1}/namespaces/nope"), None);
    assert_eq!(status, 404);
    let (status, body) = server.http("GET", "/iceberg/v1/elsewhere/namespaces", None);
    assert_eq!(
        (status, error_of(&body).0),
        (404, "NoSuchWarehouseException".into())
    );
    let (status, body) = server.http("GET", "/iceberg/v1/tarn/views", None);
    assert_eq!(status, 404);
    error_of(&body);

    // A table, then commits whose requirements fail: 409 and the catalog unchanged.
    let create = json!({
        "name": "t",
        "schema": {"type": "struct", "schema-id": 0, "fields": [
            {"id": 1, "name": "id", "required": true, "type": "long"},
            {"id": 2, "name": "v", "required": false, "type": "string"}
        ]}
    });
    let (status, created) = server.http(
        "POST",
        &format!("{v1}/namespaces/ns/tables"),
        Some(&create.to_string()),
    );
    assert_eq!(status, 200, "{created}");
    let location = created["metadata-location"].as_str().unwrap().to_string();
    let uuid = created["metadata"]["table-uuid"].as_str().unwrap().to_string();
    let (status, body) = server.http(
        "POST",
        &format!("{v1}/namespaces/ns/tables"),
        Some(&create.to_string()),
    );
    assert_eq!(
        (status, error_of(&body).0),
        (409, "AlreadyExistsException".into())
    );

    let table = format!("{v1}/namespaces/ns/tables/t");
    let set = |requirements: Value| {
        json!({"requirements": requirements, "updates": [{"action": "set-properties", "updates": {"k": "v"}}]})
            .to_string()
    };
    for requirement in [
        json!({"type": "assert-current-schema-id", "current-schema-id": 7}),
        json!({"type": "assert-table-uuid", "uuid": "00000000-0000-0000-0000-000000000000"}),
        json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": 42}),
        json!({"type": "assert-last-assigned-field-id", "last-assigned-field-id": 9}),
        json!({"type": "assert-last-assigned-partition-id", "last-assigned-partition-id": 1001}),
        json!({"type": "assert-default-spec-id", "default-spec-id": 3}),
        json!({"type": "assert-default-sort-order-id", "default-sort-order-id": 5}),
        json!({"type": "assert-create"}),
    ] {
        let (status, body) = server.http("POST", &table, Some(&set(json!([requirement.clone()]))));
        assert_eq!(
            (status, error_of(&body)),
            (409, ("CommitFailedException".into(), 409)),
            "{requirement}: {body}"
        );
    }
    // An update that does not apply: 400.
    let bad_update =
        json!({"requirements": [], "updates": [{"action": "set-current-schema", "schema-id": 42}]});
    let (status, body) = server.http("POST", &table, Some(&bad_update.to_string()));
    assert_eq!((status, error_of(&body).0), (400, "BadRequestException".into()));
    let (_, loaded) = server.http("GET", &table, None);
    assert_eq!(
        loaded["metadata-location"],
        location.as_str(),
        "failed commits change nothing"
    );

    // Requirements that hold: the commit lands.
    let good = set(json!([
        {"type": "assert-table-uuid", "uuid": uuid},
        {"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": null},
        {"type": "assert-current-schema-id", "current-schema-id": 0}
    ]));
    let (status, committed) = server.http("POST", &table, Some(&good));
    assert_eq!(status, 200, "{committed}");
    let after = committed["metadata-location"].as_str().unwrap().to_string();
    assert_ne!(after, location);
    assert!(after.contains("/metadata/00001-"), "{after}");
    assert_eq!(committed["metadata"]["properties"]["k"], "v");

    // A transaction with one failing change commits none of them.
    let (status, _) = server.http(
        "POST",
        &format!("{v1}/namespaces/ns/tables"),
        Some(&create.to_string().replace("\"t\"", "\"u\"")),
    );
    assert_eq!(status, 200);
    let transaction = json!({"table-changes": [
        {"identifier": {"namespace": ["ns"], "name": "u"}, "requirements": [],
         "updates": [{"action": "set-properties", "updates": {"tx": "1"}}]},
        {"identifier": {"namespace": ["ns"], "name": "t"},
         "requirements": [{"type": "assert-current-schema-id", "current-schema-id": 3}],
         "updates": [{"action": "set-properties", "updates": {"tx": "1"}}]}
    ]});
    let (status, body) = server.http(
        "POST",
        &format!("{v1}/transactions/commit"),
        Some(&transaction.to_string()),
    );
    assert_eq!((status, error_of(&body).0), (409, "CommitFailedException".into()));
    let (_, u) = server.http("GET", &format!("{v1}/namespaces/ns/tables/u"), None);
    assert!(u["metadata"]["properties"].get("tx").is_none(), "{u}");
    let ok = transaction
        .to_string()
        .replace("\"current-schema-id\":3", "\"current-schema-id\":0");
    let (status, _) = server.http("POST", &format!("{v1}/transactions/commit"), Some(&ok));
    assert_eq!(status, 204);
    for name in ["t", "u"] {
        let (_, loaded) = server.http("GET", &format!("{v1}/namespaces/ns/tables/{name}"), None);
        assert_eq!(loaded["metadata"]["properties"]["tx"], "1", "{name}");
    }

    // Namespace rules.
    let (status, body) = server.http("DELETE", &format!("{v1}/namespaces/ns"), None);
    assert_eq!(
        (status, error_of(&body).0),
        (409, "NamespaceNotEmptyException".into())
    );
    let (status, body) = server.http(
        "POST",
        &format!("{v1}/namespaces/ns/properties"),
        Some(r#"{"removals": ["a"], "updates": {"a": "1"}}"#),
    );
    assert_eq!(
        (status, error_of(&body).0),
        (422, "UnprocessableEntityException".into())
    );
    // Rename onto an existing table, into a missing namespace.
    let rename = |to_ns: &str, to: &str| {
        json!({"source": {"namespace": ["ns"], "name": "t"}, "destination": {"namespace": [to_ns], "name": to}})
            .to_string()
    };
    let (status, body) = server.http("POST", &format!("{v1}/tables/rename"), Some(&rename("ns", "u")));
    assert_eq!(
        (status, error_of(&body).0),
        (409, "AlreadyExistsException".into())
    );
    let (status, body) = server.http("POST", &format!("{v1}/tables/rename"), Some(&rename("nope", "t")));
    assert_eq!(
        (status, error_of(&body).0),
        (404, "NoSuchNamespaceException".into())
    );
    // Metrics reports are accepted.
    let (status, _) = server.http(
        "POST",
        &format!("{table}/metrics"),
        Some(r#"{"report-type": "scan-report"}"#),
    );
    assert_eq!(status, 204);
    // Register the table's current metadata under another name; drop; pagination.
    let register = json!({"name": "again", "metadata-location": after}).to_string();
    let (status, body) = server.http("POST", &format!("{v1}/namespaces/ns/register"), Some(&register));
    assert_eq!(status, 200, "{body}");
    let (status, page) = server.http(
        "GET",
        &format!("{v1}/namespaces/ns/tables?pageToken=&pageSize=2"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(page["identifiers"].as_array().unwrap().len(), 2);
    let token = page["next-page-token"].as_str().unwrap().to_string();
    let (_, rest) = server.http(
        "GET",
        &format!("{v1}/namespaces/ns/tables?pageToken={token}&pageSize=2"),
        None,
    );
    assert_eq!(rest["identifiers"], json!([{"namespace": ["ns"], "name": "u"}]));
    assert!(rest["next-page-token"].is_null());
    let (status, _) = server.http("DELETE", &format!("{v1}/namespaces/ns/tables/again"), None);
    assert_eq!(status, 204);
    let (status, body) = server.http("DELETE", &format!("{v1}/namespaces/ns/tables/again"), None);
    assert_eq!((status, error_of(&body).0), (404, "NoSuchTableException".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_concurrent_writers_lose_nothing() {
    let server = RestServer::start();
    let sql = server.sql().await;
    sql.batch_execute("CREATE SCHEMA c; CREATE TABLE c.t (id BIGINT NOT NULL, name VARCHAR)")
        .await
        .unwrap();
    // pyiceberg appends from 4 threads while tarn's SQL inserts through the same catalog.
    let uri = server.uri();
    let writers = tokio::task::spawn_blocking(move || {
        run_python(
            "rest_catalog.py",
            &[
                "concurrent",
                "--uri",
                &uri,
                "--table",
                "c.t",
                "--writers",
                "4",
                "--appends",
                "6",
            ],
        )
    });
    let mut tarn_ids = Vec::new();
    for i in 0..10 {
        let id = 90_000 + i;
        sql.batch_execute(&format!("INSERT INTO c.t VALUES ({id}, 'tarn')"))
            .await
            .unwrap();
        tarn_ids.push(id);
    }
    let out = writers
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let seen: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let landed: Vec<i64> = seen["landed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let conflicts = seen["conflicts"].as_u64().unwrap();
    assert_eq!(
        landed.len() as u64 + conflicts,
        24,
        "every append lands or gets 409: {seen}"
    );
    assert!(!landed.is_empty(), "{seen}");
    let mut expected: Vec<i64> = landed.iter().copied().chain(tarn_ids).collect();
    expected.sort_unstable();
    let ids: Vec<i64> = rows(&sql, "SELECT id FROM c.t ORDER BY id")
        .await
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    assert_eq!(ids, expected, "each successful append exactly once, nothing else");
    let mut py_ids: Vec<i64> = seen["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    py_ids.sort_unstable();
    // pyiceberg's read after its writers finished may predate tarn's last inserts.
    assert!(py_ids.iter().all(|i| ids.contains(i)), "{py_ids:?} {ids:?}");
    // pyiceberg refreshes and retries an append whose commit got 409, so the server's 409s are
    // counted from its request log.
    let commit_409s = server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            let f = &l["fields"];
            f["message"] == "iceberg rest request" && f["method"] == "POST" && f["status"] == 409
        })
        .count();
    eprintln!(
        "concurrent writers: {} pyiceberg appends landed, {conflicts} failed, {commit_409s} commits answered 409, 10 tarn inserts",
        landed.len()
    );
}

/// The JSON document a `tests/interop` script printed last; panics with the servers' logs.
fn script_json(result: anyhow::Result<String>, servers: &[&RestServer]) -> Value {
    let out = result.unwrap_or_else(|e| {
        let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
        panic!("{e}\n{}", logs.join("\n----\n"))
    });
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Rows a script printed (lists of strings or null) as `a|b|c` lines, NULL as `NULL`, in the
/// order printed.
fn printed_rows(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list of rows: {value}"))
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// A counter's value summed over its label sets, from the server's `/metrics`.
fn metric_sum(server: &RestServer, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Spark 3.5 (Iceberg 1.10's REST client, `snapshot-loading-mode=refs`) writes through tarn's
/// catalog — INSERT, MERGE INTO, DELETE FROM, UPDATE with merge-on-read position deletes, on a
/// table tarn created and on one Spark created (partitioned, with a branch) — and tarn's SQL
/// reads exactly what Spark reads; then tarn inserts and Spark reads that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_spark_merge_delete_and_tarn_reads_the_same() {
    let server = RestServer::start();
    let sql = server.sql().await;
    sql.batch_execute(
        "CREATE SCHEMA sq; \
         CREATE TABLE sq.accounts (id BIGINT NOT NULL, owner VARCHAR, balance DECIMAL(10,2)); \
         INSERT INTO sq.accounts VALUES (1, 'alice', 10.00), (2, 'bob', 20.00)",
    )
    .await
    .unwrap();
    let uri = server.uri();
    let run = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            run_python(
                "rest_spark.py",
                &["write", "--uri", &uri, "--tarn-table", "sq.accounts"],
            )
        })
        .await
        .unwrap()
    };
    let seen = script_json(run, &[&server]);
    // What Spark itself reads after its writes.
    assert_eq!(
        printed_rows(&seen["tarn_table"]),
        ["1|ALICE|10.00", "2|bob|25.50", "5|erin|50.00", "6|frank|60.00"]
    );
    assert_eq!(
        printed_rows(&seen["accounts"]),
        [
            "1|ann|11.00|2026-01-01",
            "4|di|40.00|NULL",
            "7|new|70.00|2026-02-01"
        ]
    );
    assert_eq!(printed_rows(&seen["audit_branch"]), ["4", "7", "9"]);
    // Merge-on-read: Spark's commits added position delete files (content 1) beside data files.
    assert_eq!(seen["tarn_table_files"], json!([0, 1]), "{seen}");
    assert_eq!(seen["accounts_files"], json!([0, 1]), "{seen}");
    assert_eq!(strings(&seen["namespaces"]), ["public", "sp", "sq"]);

    // tarn's SQL reads exactly what Spark reads (main, not the branch).
    assert_eq!(
        rows(&sql, "SELECT id, owner, balance FROM sq.accounts ORDER BY id").await,
        printed_rows(&seen["tarn_table"])
    );
    assert_eq!(
        rows(
            &sql,
            "SELECT id, owner, balance, opened FROM sp.accounts ORDER BY id"
        )
        .await,
        printed_rows(&seen["accounts"])
    );

    // `snapshots=refs` leaves out what no branch points at; `all` has Spark's whole history.
    let path = "/iceberg/v1/tarn/namespaces/sp/tables/accounts";
    let (status, all) = server.http("GET", path, None);
    assert_eq!(status, 200);
    let (status, refs) = server.http("GET", &format!("{path}?snapshots=refs"), None);
    assert_eq!(status, 200);
    let count = |v: &Value| v["metadata"]["snapshots"].as_array().map_or(0, Vec::len);
    assert_eq!(count(&all) as u64, seen["accounts_snapshots"].as_u64().unwrap());
    assert_eq!(count(&refs), 2, "main and audit: {}", refs["metadata"]["refs"]);
    assert!(count(&all) > 2);
    let (status, body) = server.http("GET", &format!("{path}?snapshots=some"), None);
    assert_eq!((status, error_of(&body).0), (400, "BadRequestException".into()));

    // tarn writes to Spark's table; Spark reads it.
    sql.batch_execute("INSERT INTO sp.accounts VALUES (8, 'from-tarn', 8.00, DATE '2026-03-01')")
        .await
        .unwrap();
    let run = tokio::task::spawn_blocking(move || {
        run_python(
            "rest_spark.py",
            &["read", "--uri", &uri, "--table", "sp.accounts"],
        )
    })
    .await
    .unwrap();
    let read = script_json(run, &[&server]);
    assert_eq!(
        printed_rows(&read["rows"]),
        [
            "1|ann|11.00|2026-01-01",
            "4|di|40.00|NULL",
            "7|new|70.00|2026-02-01",
            "8|from-tarn|8.00|2026-03-01"
        ]
    );
}

/// Two `tarn serve` replicas on one PostgreSQL catalog and one warehouse: pyiceberg writers
/// commit through both at once (each 409 reloaded and retried) while tarn's SQL inserts through
/// both. Every append lands exactly once and both replicas read the same table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_two_replicas_on_one_postgres_catalog_lose_nothing() {
    let pg = tokio::task::block_in_place(PostgresServer::start_temporary).unwrap();
    pg.psql("postgres", "CREATE DATABASE catalog").unwrap();
    let shared = tempfile::Builder::new()
        .prefix("tarn-replicas-")
        .tempdir()
        .unwrap();
    let extra = format!(
        "[catalog]\nurl = \"{}\"\n[storage]\nwarehouse = \"file://{}/warehouse\"\n",
        pg.url("catalog"),
        shared.path().display()
    );
    let a = RestServer::start_with(&extra);
    let b = RestServer::start_with(&extra);
    let (sql_a, sql_b) = (a.sql().await, b.sql().await);
    sql_a
        .batch_execute("CREATE SCHEMA c; CREATE TABLE c.t (id BIGINT NOT NULL, name VARCHAR)")
        .await
        .unwrap();
    let (uri_a, uri_b) = (a.uri(), b.uri());
    let writers = tokio::task::spawn_blocking(move || {
        run_python(
            "rest_catalog.py",
            &[
                "retrying",
                "--uri",
                &uri_a,
                "--uri",
                &uri_b,
                "--table",
                "c.t",
                "--writers",
                "4",
                "--appends",
                "8",
            ],
        )
    });
    let mut tarn_ids = Vec::new();
    for i in 0..12 {
        let id = 90_000 + i;
        let via = if i % 2 == 0 { &sql_a } else { &sql_b };
        via.batch_execute(&format!("INSERT INTO c.t VALUES ({id}, 'tarn')"))
            .await
            .unwrap_or_else(|e| panic!("tarn insert {id}: {e}"));
        tarn_ids.push(id);
    }
    let seen = script_json(writers.await.unwrap(), &[&a, &b]);
    assert_eq!(seen["gave_up"], 0, "{seen}");
    let landed: Vec<i64> = seen["landed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut all_py: Vec<i64> = (0..4).flat_map(|w| (0..8).map(move |a| w * 1000 + a)).collect();
    all_py.sort_unstable();
    assert_eq!(landed, all_py, "every append landed: {seen}");
    let mut expected: Vec<i64> = landed.into_iter().chain(tarn_ids).collect();
    expected.sort_unstable();
    for (name, sql) in [("a", &sql_a), ("b", &sql_b)] {
        let ids: Vec<i64> = rows(sql, "SELECT id FROM c.t ORDER BY id")
            .await
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        assert_eq!(
            ids, expected,
            "replica {name}: each append exactly once, nothing else"
        );
    }
    // Both replicas served commits, and they raced: 409s to clients (pyiceberg reloads and
    // retries those itself, the script a few more times) or swaps lost and retried by a server.
    let (ca, cb) = (commit_statuses(&a), commit_statuses(&b));
    assert!(ca.contains(&200) && cb.contains(&200), "{ca:?} {cb:?}");
    let answered_409 = ca.iter().chain(&cb).filter(|s| **s == 409).count();
    let lost_swaps = metric_sum(&a, "tarn_catalog_commit_conflicts_total")
        + metric_sum(&b, "tarn_catalog_commit_conflicts_total");
    eprintln!(
        "two replicas: 32 pyiceberg appends + 12 tarn inserts landed; {answered_409} commits answered 409, \
         {lost_swaps} catalog swaps lost and retried by the servers"
    );
}

/// The statuses of the commits (`POST`s) a server answered, from its request log.
fn commit_statuses(server: &RestServer) -> Vec<u64> {
    server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            let f = &l["fields"];
            f["message"] == "iceberg rest request" && f["method"] == "POST"
        })
        .map(|l| l["fields"]["status"].as_u64().unwrap_or(0))
        .collect()
}

/// tarn's CDC pipeline (in `tarn serve`) streams a PostgreSQL table into the lake while
/// pyiceberg, through the REST catalog, adds a column to that table and sets its properties
/// round after round, and appends to another table of the same namespace. Every commit lands
/// (409s reloaded and retried), no commit undoes another's, and the CDC table still equals
/// PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_cdc_and_pyiceberg_commit_side_by_side() {
    let pg = tokio::task::block_in_place(PostgresServer::start_temporary).unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE accounts (id INT PRIMARY KEY, owner TEXT, balance NUMERIC(10,2)); \
         INSERT INTO accounts SELECT g, 'owner-' || g, g FROM generate_series(1, 200) g;",
    )
    .unwrap();
    let server = RestServer::start_with(&format!(
        "[cdc]\nsource = \"{}\"\ntables = [\"public.accounts\"]\n[cdc.flush]\ninterval = \"100ms\"\n",
        pg.url("app")
    ));
    let sql = server.sql().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let count = sql.simple_query("SELECT count(*) FROM cdc.accounts").await.ok();
        let n = count.and_then(|m| {
            m.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
        });
        if n.as_deref() == Some("200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no initial snapshot\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sql.batch_execute("CREATE TABLE cdc.side (id BIGINT NOT NULL, name VARCHAR)")
        .await
        .unwrap();
    let count = |query: &'static str| {
        let sql = &sql;
        async move { rows(sql, query).await[0].parse::<u64>().unwrap() }
    };
    let snapshots_before = count("SELECT count(*) FROM cdc.\"accounts$snapshots\"").await;

    // A workload on PostgreSQL for as long as pyiceberg writes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = pg.url("app");
    let workload = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 20 {
                let statements = format!(
                    "UPDATE accounts SET balance = balance + 1, owner = 'upd-{i}' WHERE id = {}; \
                     INSERT INTO accounts VALUES ({}, 'new-{i}', {i}); \
                     DELETE FROM accounts WHERE id = {};",
                    i % 200 + 1,
                    1000 + i,
                    1000 + i - 3
                );
                let out = Command::new("psql")
                    .args([&url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &statements])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                i += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            i
        }
    });
    let uri = server.uri();
    let run = tokio::task::spawn_blocking(move || {
        run_python(
            "rest_catalog.py",
            &[
                "cdc-side",
                "--uri",
                &uri,
                "--table",
                "cdc.accounts",
                "--side",
                "cdc.side",
                "--rounds",
                "30",
            ],
        )
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let workload_rounds = workload.join().unwrap();
    let seen = script_json(run, &[&server]);
    assert_eq!(seen["gave_up"], 0, "{seen}");
    let mut expected_changes = vec!["ext_note".to_string()];
    expected_changes.extend((0..30).map(|i| format!("ext.round.{i}")));
    assert_eq!(strings(&seen["cdc_table_changes"]), expected_changes);
    assert_eq!(seen["side_appended"].as_array().unwrap().len(), 30);
    let mut properties: Vec<String> = (0..30).map(|i| format!("ext.round.{i}")).collect();
    properties.sort();
    assert_eq!(
        strings(&seen["cdc_properties"]),
        properties,
        "no property lost to a CDC commit"
    );
    assert!(
        strings(&seen["cdc_columns"]).contains(&"ext_note".to_string()),
        "{seen}"
    );

    // The lake catches up and equals PostgreSQL; the column pyiceberg added is there, empty.
    let source = || {
        let out = Command::new("psql")
            .args([
                &pg.url("app"),
                "-X",
                "-At",
                "-P",
                "null=NULL",
                "-c",
                "SELECT id, owner, balance FROM accounts ORDER BY id",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let expected = source();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lake = rows(&sql, "SELECT id, owner, balance FROM cdc.accounts ORDER BY id").await;
        if lake == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lake did not catch up: {} rows vs {} in PostgreSQL\n{}",
            lake.len(),
            expected.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        rows(
            &sql,
            "SELECT count(*) FROM cdc.accounts WHERE ext_note IS NOT NULL"
        )
        .await,
        ["0"]
    );
    assert_eq!(rows(&sql, "SELECT count(*) FROM cdc.side").await, ["30"]);
    let snapshots_after = count("SELECT count(*) FROM cdc.\"accounts$snapshots\"").await;
    // CDC committed while pyiceberg did (the property rounds are metadata-only commits).
    assert!(
        snapshots_after >= snapshots_before + 3,
        "{snapshots_before} -> {snapshots_after}"
    );
    let answered_409 = commit_statuses(&server).iter().filter(|s| **s == 409).count();
    eprintln!(
        "CDC beside pyiceberg: {workload_rounds} workload rounds, CDC snapshots {snapshots_before} -> {snapshots_after}, \
         {answered_409} commits answered 409, {} catalog swaps lost and retried by the server",
        metric_sum(&server, "tarn_catalog_commit_conflicts_total")
    );
}

/// A warehouse on S3 (moto): the catalog hands out the bucket's endpoint, region and
/// path-style, and with `rest_catalog.vend_credentials` the keys, so pyiceberg and DuckDB given
/// nothing but the catalog URL write and read the table's files in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_s3_warehouse_needs_only_the_catalog_url() {
    let s3 = tokio::task::block_in_place(|| S3Server::start("lake")).unwrap();
    let server = RestServer::start_with(&format!(
        "[storage]\nwarehouse = \"s3://lake/wh\"\n\
         [storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"tarn-key\"\n\
         secret_access_key = \"tarn-secret\"\npath_style = true\nallow_http = true\n\
         [rest_catalog]\nvend_credentials = true\n",
        s3.endpoint()
    ));
    let (status, config) = server.http("GET", "/iceberg/v1/config", None);
    assert_eq!(status, 200);
    assert_eq!(
        config["defaults"],
        json!({"s3.endpoint": s3.endpoint(), "s3.region": "us-east-1", "client.region": "us-east-1",
               "s3.path-style-access": "true"}),
        "settings, never keys, for every client"
    );
    // pyiceberg with no S3 settings or AWS credentials of its own.
    let clean = |args: Vec<String>| {
        let out = Command::new(tarn_test_utils::python().unwrap())
            .arg(tarn_test_utils::workspace_root().join("tests/interop/rest_catalog.py"))
            .args(&args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(anyhow::anyhow!(
                "rest_catalog.py {args:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let uri = server.uri();
    let seen = script_json(clean(vec!["s3".into(), "--uri".into(), uri.clone()]), &[&server]);
    assert_eq!(printed_rows(&seen["rows"]), ["1|a|1.0", "3|c|3.0", "4|d|4.0"]);
    assert_eq!(seen["location"], "s3://lake/wh/s3ns/t");
    let files = strings(&seen["data_files"]);
    assert!(!files.is_empty());
    assert!(
        files.iter().all(|f| f.starts_with("s3://lake/wh/s3ns/t/data/")),
        "{files:?}"
    );
    assert_eq!(seen["table_io"]["s3.endpoint"], s3.endpoint());
    assert_eq!(seen["table_io"]["s3.access-key-id"], "tarn-key", "vended: {seen}");
    assert_eq!(seen["table_io"]["s3.secret-access-key"], "<set>");
    // DuckDB, also given only the URL, reads what pyiceberg wrote; so does tarn.
    let read = script_json(
        clean(vec![
            "read".into(),
            "--uri".into(),
            uri,
            "--table".into(),
            "s3ns.t".into(),
        ]),
        &[&server],
    );
    assert_eq!(read["duckdb"], seen["rows"]);
    assert_eq!(read["pyiceberg"], seen["rows"]);
    let sql = server.sql().await;
    assert_eq!(
        rows(&sql, "SELECT id, name, score FROM s3ns.t ORDER BY id").await,
        ["1|a|1", "3|c|3", "4|d|4"]
    );

    // Keys only for requests that ask for vended credentials.
    let path = "/iceberg/v1/tarn/namespaces/s3ns/tables/t";
    let (status, plain) = server.http("GET", path, None);
    assert_eq!(status, 200);
    assert_eq!(plain["config"]["s3.endpoint"], s3.endpoint());
    assert!(plain["config"].get("s3.secret-access-key").is_none(), "{plain}");
    assert!(plain.get("storage-credentials").is_none(), "{plain}");
    let asking = "X-Iceberg-Access-Delegation: vended-credentials\r\n";
    let (_, vended) = server.http_with("GET", path, None, asking);
    assert_eq!(vended["config"]["s3.secret-access-key"], "tarn-secret");
    assert_eq!(
        vended["storage-credentials"],
        json!([{"prefix": "s3://lake/wh/s3ns/t", "config": {
            "s3.access-key-id": "tarn-key", "s3.secret-access-key": "tarn-secret"}}])
    );
    let (status, credentials) = server.http_with("GET", &format!("{path}/credentials"), None, asking);
    assert_eq!(status, 200);
    assert_eq!(credentials["storage-credentials"], vended["storage-credentials"]);
    let (_, none) = server.http("GET", &format!("{path}/credentials"), None);
    assert_eq!(none["storage-credentials"], json!([]));
}

/// `CREATE EXTERNAL CATALOG` keeps its connection URL, password included, as the property
/// `tarn.external-catalog.<name>` of the `public` namespace. The REST catalog never returns
/// tarn's own (`tarn.`) properties, and refuses to set or remove them (which would create or
/// drop an external catalog around SQL's authorization); other properties work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_hides_and_guards_tarn_namespace_properties() {
    const PASSWORD: &str = "Fed3ratedS3cret";
    let pg = tokio::task::block_in_place(PostgresServer::start_temporary).unwrap();
    pg.psql(
        "postgres",
        &format!(
            "CREATE USER app PASSWORD '{PASSWORD}'; CREATE TABLE customers (id INT PRIMARY KEY); \
             INSERT INTO customers VALUES (1), (2), (3); GRANT SELECT ON customers TO app"
        ),
    )
    .unwrap();
    // Password logins for `app` over TCP (the harness trusts everyone else).
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();

    let server = RestServer::start();
    let sql = server.sql().await;
    sql.simple_query(&format!(
        "CREATE EXTERNAL CATALOG shop FROM 'postgres://app:{PASSWORD}@127.0.0.1:{}/postgres'",
        pg.port()
    ))
    .await
    .unwrap();
    let count = "SELECT count(*) FROM shop.public.customers";
    assert_eq!(rows(&sql, count).await, vec!["3"]);

    for path in [
        "/iceberg/v1/namespaces/public",
        "/iceberg/v1/tarn/namespaces/public",
    ] {
        let (status, body) = server.http("GET", path, None);
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
        assert!(!text.contains("tarn.external-catalog"), "{text}");
    }
    let v1 = "/iceberg/v1/tarn";
    let properties = format!("{v1}/namespaces/public/properties");
    let refused = |body: &Value, key: &str| {
        let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(key), "{body}");
    };
    // Setting one (an external catalog of the client's choosing) and removing one (dropping
    // `shop`) are refused, naming the key.
    let evil = "tarn.external-catalog.evil";
    let (status, body) = server.http(
        "POST",
        &properties,
        Some(&json!({"updates": {evil: "postgres://x@127.0.0.1:1/y"}}).to_string()),
    );
    assert_eq!((status, error_of(&body).0), (400, "BadRequestException".into()));
    refused(&body, evil);
    let (status, body) = server.http(
        "POST",
        &properties,
        Some(r#"{"removals": ["tarn.external-catalog.shop"]}"#),
    );
    assert_eq!((status, error_of(&body).0), (400, "BadRequestException".into()));
    refused(&body, "tarn.external-catalog.shop");
    let (status, body) = server.http(
        "POST",
        &format!("{v1}/namespaces"),
        Some(r#"{"namespace": ["other"], "properties": {"tarn.x": "1"}}"#),
    );
    assert_eq!((status, error_of(&body).0), (400, "BadRequestException".into()));
    refused(&body, "tarn.x");
    // Nothing changed: `shop` still works, `evil` does not exist.
    assert_eq!(rows(&sql, count).await, vec!["3"]);
    let err = sql
        .simple_query("SELECT 1 FROM evil.public.customers")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("evil"), "{err:?}");
    // The client's own properties are set, shown and removed as before.
    let (status, body) = server.http("POST", &properties, Some(r#"{"updates": {"owner": "ana"}}"#));
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.http("GET", &format!("{v1}/namespaces/public"), None);
    assert_eq!(body["properties"]["owner"], "ana", "{body}");
    assert!(!body.to_string().contains(PASSWORD), "{body}");
    let (status, body) = server.http("POST", &properties, Some(r#"{"removals": ["owner"]}"#));
    assert_eq!(status, 200, "{body}");
}
