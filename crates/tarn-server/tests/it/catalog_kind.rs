//! tarn on other catalogs (`catalog.kind`): SQL, CDC from PostgreSQL and `tarn maintain` on
//! an Iceberg REST catalog — a second `tarn serve`'s `/iceberg`, reached through a small
//! proxy in the test that demands a bearer token (the server has no authentication), plays
//! the OAuth2 token endpoint, records every request and can answer a commit with 409 — plus
//! pyiceberg committing to the same table at the same time, the errors of a wrong URL or a
//! refused token, and a real Hive Metastore (Hive 2.3.9 from the PySpark wheel) when Java and
//! PySpark are there.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tarn_test_utils::{free_port, run_python, wait_for_port};

use crate::cdc::Cdc;
use crate::{TestLake, config_for, query};

/// A `tarn serve` whose REST catalog the tarn under test uses; killed on drop.
struct CatalogServer {
    child: Child,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl CatalogServer {
    fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-catsrv-").tempdir().unwrap();
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
                 [auth]\ntrust_loopback = true\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let server = Self {
            child,
            http_port,
            dir,
        };
        if let Err(e) = wait_for_port(http_port, Duration::from_secs(60)) {
            panic!(
                "tarn serve did not start: {e}\n{}",
                std::fs::read_to_string(server.dir.path().join("serve.log")).unwrap_or_default()
            );
        }
        server
    }

    /// A session on the server's own (SQL) catalog: what the catalog really holds.
    async fn own_session(&self) -> TarnSession {
        let lake = Lake::open(&config_for(self.dir.path(), &[])).await.unwrap();
        TarnSession::new(lake).await.unwrap()
    }
}

impl Drop for CatalogServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
    status: u16,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    /// The bearer token catalog requests must carry.
    token: String,
    /// `client_id:secret` the token endpoint accepts.
    credential: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Commits answered with 409 before forwarding resumes.
    fail_commits: Arc<AtomicUsize>,
    http: reqwest::Client,
}

/// The stand-in for an authenticating catalog: `/iceberg/...` forwarded to a `tarn serve`
/// when the bearer token is right (401 otherwise), `/oauth/token` an OAuth2 token endpoint
/// issuing that token for the client credentials.
struct AuthProxy {
    port: u16,
    state: ProxyState,
}

impl AuthProxy {
    async fn start(upstream_port: u16, token: &str, credential: &str) -> Self {
        let state = ProxyState {
            upstream: format!("http://127.0.0.1:{upstream_port}"),
            token: token.to_string(),
            credential: credential.to_string(),
            seen: Arc::default(),
            fail_commits: Arc::default(),
            http: reqwest::Client::new(),
        };
        let app = Router::new()
            .route("/oauth/token", post(issue_token))
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, state }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/iceberg", self.port)
    }

    fn token_uri(&self) -> String {
        format!("http://127.0.0.1:{}/oauth/token", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Commits (`POST .../tables/{table}`) to `table`.
    fn commits(&self, table: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST" && s.path.ends_with(&format!("/tables/{table}")))
            .collect()
    }

    fn fail_next_commits(&self, n: usize) {
        self.state.fail_commits.store(n, Ordering::SeqCst);
    }
}

fn record(state: &ProxyState, method: &str, path: &str, headers: &HeaderMap, body: &[u8], status: u16) {
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.to_string(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(body).into_owned(),
        status,
    });
}

fn error_model(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

async fn issue_token(State(state): State<ProxyState>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let presented = format!(
        "{}:{}",
        form.get("client_id").map_or("", String::as_str),
        form.get("client_secret").map_or("", String::as_str)
    );
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && presented == state.credential;
    record(
        &state,
        "POST",
        "/oauth/token",
        &headers,
        &body,
        if ok { 200 } else { 401 },
    );
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": "invalid_client", "error_description": "unknown client or wrong secret"}),
            ),
        )
            .into_response();
    }
    axum::Json(json!({"access_token": state.token, "token_type": "bearer", "expires_in": 3600}))
        .into_response()
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path().to_string();
    let method = parts.method.to_string();
    let authorized = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", state.token));
    if !authorized {
        record(&state, &method, &path, &parts.headers, &body, 401);
        return error_model(
            StatusCode::UNAUTHORIZED,
            "NotAuthorizedException",
            "Not authorized: bad or missing token",
        );
    }
    let is_commit = method == "POST" && path.contains("/tables/") && !path.ends_with("/tables");
    if is_commit
        && state
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        record(&state, &method, &path, &parts.headers, &body, 409);
        return error_model(
            StatusCode::CONFLICT,
            "CommitFailedException",
            "injected: requirement failed",
        );
    }
    let url = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = state.http.request(parts.method.clone(), url).body(body.clone());
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        upstream = upstream.header(header::CONTENT_TYPE, ct);
    }
    let response = upstream.send().await.unwrap();
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = response.bytes().await.unwrap();
    record(&state, &method, &path, &parts.headers, &body, status.as_u16());
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

/// The settings that point a tarn at the proxy with a bearer token.
fn rest_settings(proxy: &AuthProxy, token: &str) -> Vec<(String, String)> {
    vec![
        ("catalog.kind".into(), "rest".into()),
        ("catalog.rest.uri".into(), proxy.uri()),
        ("catalog.rest.token".into(), token.into()),
    ]
}

fn as_refs(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn rows(session: &TarnSession, sql: &str) -> Vec<String> {
    session.refresh().await.unwrap();
    query(session, sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_kind_rest_sql_and_cdc_with_a_bearer_token_then_maintain() {
    crate::init_logs();
    let server = CatalogServer::start();
    let proxy = AuthProxy::start(server.http_port, "s3cret", "unused:unused").await;

    // SQL: tarn's INSERT commits through the crate's client, a 409 retried.
    let settings = rest_settings(&proxy, "s3cret");
    let client = TestLake::with(&as_refs(&settings)).await;
    client.exec("CREATE SCHEMA sq").await;
    client
        .exec("CREATE TABLE sq.orders (id BIGINT NOT NULL, region VARCHAR, amount DOUBLE)")
        .await;
    client
        .exec("INSERT INTO sq.orders VALUES (1, 'eu', 10.5), (2, 'us', NULL)")
        .await;
    proxy.fail_next_commits(1);
    client.exec("INSERT INTO sq.orders VALUES (3, NULL, 3.25)").await;
    let want = ["1|eu|10.5", "2|us|NULL", "3|NULL|3.25"];
    assert_eq!(client.query("SELECT * FROM sq.orders ORDER BY id").await, want);
    let own = server.own_session().await;
    assert_eq!(rows(&own, "SELECT * FROM sq.orders ORDER BY id").await, want);
    let statuses: Vec<u16> = proxy.commits("orders").iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200, 409, 200], "the injected 409 was retried once");

    // CREATE OR REPLACE TABLE: the new schema, partition spec and sort order go to the REST
    // catalog in the same commit as the rows; the catalog's own server reads the new table.
    client
        .exec("CREATE TABLE sq.daily AS SELECT id, region FROM sq.orders")
        .await;
    client
        .exec(
            "CREATE OR REPLACE TABLE sq.daily PARTITIONED BY (region) SORTED BY (total DESC) \
             AS SELECT region, sum(amount) AS total FROM sq.orders GROUP BY region",
        )
        .await;
    let daily = "SELECT region, total FROM sq.daily ORDER BY region NULLS FIRST";
    let want = ["NULL|3.25", "eu|10.5", "us|NULL"];
    assert_eq!(client.query(daily).await, want);
    assert_eq!(rows(&own, daily).await, want);
    let table = own
        .lake()
        .load_table(&tarn_lake::parse_table_name("sq.daily").unwrap())
        .await
        .unwrap();
    let spec = table.metadata().default_partition_spec();
    assert_eq!(
        spec.fields().iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["region"],
        "the catalog holds the new partition spec"
    );
    assert_eq!(table.metadata().default_sort_order().fields.len(), 1);

    // CDC from PostgreSQL: snapshot, updates and deletes (position deletes), a schema change,
    // all through tarn's own REST commits; one of them answered 409 first.
    let mut cdc = Cdc::new(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 200) g;",
    )
    .await;
    for (key, value) in &settings {
        cdc.set(key, value);
    }
    let lake_session = TarnSession::new(Lake::open(&cdc.config()).await.unwrap())
        .await
        .unwrap();
    let running = cdc.start().await;
    let source = "SELECT id, name, coalesce(qty::text, 'NULL') FROM items ORDER BY id";
    let lake = "SELECT id, name, qty FROM cdc.items ORDER BY id";
    wait_same(&cdc, &lake_session, source, lake).await;
    proxy.fail_next_commits(1);
    cdc.sql("UPDATE items SET qty = qty * 10 WHERE id % 3 = 0; DELETE FROM items WHERE id % 7 = 0;");
    wait_same(&cdc, &lake_session, source, lake).await;
    cdc.sql("ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'n' || id WHERE id <= 5;");
    let source_note = "SELECT id, coalesce(note, 'NULL') FROM items ORDER BY id";
    let lake_note = "SELECT id, note FROM cdc.items ORDER BY id";
    wait_same(&cdc, &lake_session, source_note, lake_note).await;
    running.stop().await;

    let commits = proxy.commits("items");
    assert!(
        commits.iter().any(|c| c.status == 409),
        "a CDC commit met a 409: {commits:?}"
    );
    let bodies: Vec<Value> = commits
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| serde_json::from_str(&c.body).unwrap())
        .collect();
    let has = |body: &Value, key: &str, kind: &str| {
        body[key]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == kind || x["action"] == kind)
    };
    let snapshot_commits: Vec<&Value> = bodies
        .iter()
        .filter(|b| has(b, "updates", "add-snapshot"))
        .collect();
    assert!(snapshot_commits.len() >= 2, "{bodies:?}");
    for body in &snapshot_commits {
        for requirement in [
            "assert-table-uuid",
            "assert-ref-snapshot-id",
            "assert-current-schema-id",
        ] {
            assert!(
                has(body, "requirements", requirement),
                "{requirement} missing: {body}"
            );
        }
        assert!(has(body, "updates", "set-snapshot-ref"), "{body}");
    }
    assert!(
        bodies
            .iter()
            .any(|b| has(b, "updates", "add-schema") && has(b, "requirements", "assert-current-schema-id")),
        "the schema change went as add-schema + set-current-schema: {bodies:?}"
    );
    // The server's catalog holds what the source has: position deletes and the new column.
    let want = cdc.source_rows(source_note);
    assert_eq!(rows(&own, lake_note).await, want);
    // pyiceberg, through the same authenticated catalog, reads it too.
    let read = python(&proxy, &["read", "--table", "cdc.items"]);
    assert_eq!(read["rows"].as_array().unwrap().len(), want.len());

    // `tarn maintain` with the catalog in the data directory's tarn.toml: a compaction
    // committed through the REST catalog, rows unchanged.
    std::fs::write(
        client.path().join("tarn.toml"),
        format!(
            "[catalog]\nkind = \"rest\"\n[catalog.rest]\nuri = \"{}\"\ntoken = \"s3cret\"\n",
            proxy.uri()
        ),
    )
    .unwrap();
    let (ok, out, err) = crate::tarn(client.path(), &["maintain", "--compact", "cdc.items"]);
    assert!(ok, "tarn maintain failed:\n{out}\n{err}");
    let read = python(&proxy, &["read", "--table", "cdc.items"]);
    assert!(
        read["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "replace"),
        "a compaction snapshot: {read}\n{out}"
    );
    assert_eq!(rows(&own, lake_note).await, want);
    let (ok, shown, _) = crate::tarn(client.path(), &["config", "show"]);
    assert!(
        ok && shown.contains("token = \"***\"") && !shown.contains("s3cret"),
        "{shown}"
    );

    // Every catalog request carried the token.
    let seen = proxy.seen();
    assert!(seen.len() > 20);
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer s3cret"),
            "{} {}",
            s.method,
            s.path
        );
    }
}

async fn wait_same(cdc: &Cdc, session: &TarnSession, source: &str, lake: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = None;
    while Instant::now() < deadline {
        let want = cdc.source_rows(source);
        got = async {
            session.refresh().await.ok()?;
            query(session, lake).await.ok()
        }
        .await;
        if got.as_ref() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the lake did not catch up: {got:?}");
}

fn python(proxy: &AuthProxy, args: &[&str]) -> Value {
    let uri = proxy.uri();
    let mut all = vec![args[0], "--uri", &uri, "--token", "s3cret"];
    all.extend_from_slice(&args[1..]);
    let out = run_python("catalog_kind.py", &all).unwrap();
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_kind_rest_oauth2_client_credentials_and_clear_refusals() {
    crate::init_logs();
    let server = CatalogServer::start();
    let proxy = AuthProxy::start(server.http_port, "issued-token-1", "tarn-client:pw").await;
    let settings = [
        ("catalog.kind", "rest"),
        ("catalog.rest.uri", proxy.uri().as_str()),
        ("catalog.rest.credential", "tarn-client:pw"),
        ("catalog.rest.oauth2_server_uri", proxy.token_uri().as_str()),
        ("catalog.rest.scope", "PRINCIPAL_ROLE:ALL"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let client = TestLake::with(&as_refs(&settings)).await;
    client.exec("CREATE SCHEMA o").await;
    client
        .exec("CREATE TABLE o.t (id BIGINT NOT NULL, name VARCHAR)")
        .await;
    client.exec("INSERT INTO o.t VALUES (1, 'a'), (2, 'b')").await;
    assert_eq!(
        client.query("SELECT * FROM o.t ORDER BY id").await,
        ["1|a", "2|b"]
    );
    let seen = proxy.seen();
    let token_requests: Vec<&Seen> = seen.iter().filter(|s| s.path == "/oauth/token").collect();
    assert!(!token_requests.is_empty());
    for t in &token_requests {
        let form: HashMap<String, String> = url::form_urlencoded::parse(t.body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "tarn-client");
        assert_eq!(form["client_secret"], "pw");
        assert_eq!(form["scope"], "PRINCIPAL_ROLE:ALL");
    }
    for s in seen.iter().filter(|s| s.path != "/oauth/token") {
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer issued-token-1"),
            "{} {}",
            s.method,
            s.path
        );
        assert!(s.status < 400 || s.status == 404, "{s:?}");
    }

    // Refusals name the catalog and the key to fix.
    let open = |pairs: Vec<(String, String)>| async move {
        let dir = tempfile::tempdir().unwrap();
        Lake::open(&config_for(dir.path(), &as_refs(&pairs)))
            .await
            .unwrap_err()
            .to_string()
    };
    let mut wrong_secret = settings.to_vec();
    wrong_secret[2].1 = "tarn-client:wrong".into();
    let err = open(wrong_secret).await;
    assert!(
        err.contains(&proxy.token_uri()) && err.contains("catalog.rest.credential") && err.contains("401"),
        "{err}"
    );
    let err = open(rest_settings(&proxy, "not-the-token")).await;
    assert!(
        err.contains(&proxy.uri())
            && err.contains("401")
            && err.contains("refused the token of catalog.rest.token"),
        "{err}"
    );
    let mut no_auth = rest_settings(&proxy, "x");
    no_auth.pop();
    let err = open(no_auth).await;
    assert!(
        err.contains("set catalog.rest.token or catalog.rest.credential"),
        "{err}"
    );
    let nowhere = format!("http://127.0.0.1:{}/iceberg", free_port());
    let err = open(vec![
        ("catalog.kind".into(), "rest".into()),
        ("catalog.rest.uri".into(), nowhere.clone()),
    ])
    .await;
    assert!(
        err.contains(&format!(
            "cannot reach the Iceberg REST catalog at {nowhere} (catalog.rest.uri)"
        )),
        "{err}"
    );
    let not_a_catalog = format!("http://127.0.0.1:{}/elsewhere", server.http_port);
    let err = open(vec![
        ("catalog.kind".into(), "rest".into()),
        ("catalog.rest.uri".into(), not_a_catalog.clone()),
    ])
    .await;
    assert!(err.contains(&not_a_catalog) && err.contains("404"), "{err}");
    // The CLI says the same.
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = crate::tarn(
        dir.path(),
        &[
            "--set",
            "catalog.kind=rest",
            "--set",
            &format!("catalog.rest.uri={nowhere}"),
            "sql",
            "SELECT 1",
        ],
    );
    assert!(
        !ok && stderr.contains("cannot reach the Iceberg REST catalog"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_kind_rest_tarn_and_pyiceberg_commit_at_the_same_time() {
    crate::init_logs();
    let server = CatalogServer::start();
    let proxy = AuthProxy::start(server.http_port, "s3cret", "unused:unused").await;
    let settings = rest_settings(&proxy, "s3cret");
    let client = TestLake::with(&as_refs(&settings)).await;
    client.exec("CREATE SCHEMA c").await;
    client
        .exec("CREATE TABLE c.t (id BIGINT NOT NULL, name VARCHAR)")
        .await;
    let py_ids: Vec<String> = (1000..1020).map(|i| i.to_string()).collect();
    let py_ids = py_ids.join(",");
    let uri = proxy.uri();
    let py = std::thread::spawn(move || {
        run_python(
            "catalog_kind.py",
            &[
                "append", "--uri", &uri, "--token", "s3cret", "--table", "c.t", "--ids", &py_ids,
            ],
        )
        .unwrap()
    });
    // tarn's own commits (row deltas) and SQL appends, interleaved with pyiceberg's.
    let other = client.second_session().await;
    for i in 0..20 {
        let session = if i % 2 == 0 { &client.session } else { &other };
        query(session, &format!("INSERT INTO c.t VALUES ({i}, 'tarn-{i}')"))
            .await
            .unwrap();
    }
    let py: Value = serde_json::from_str(py.join().unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(py["landed"].as_array().unwrap().len(), 20, "{py}");
    let mut want: Vec<String> = (0..20).map(|i| format!("{i}|tarn-{i}")).collect();
    want.extend((1000..1020).map(|i| format!("{i}|py-{i}")));
    let got = rows(&client.session, "SELECT id, name FROM c.t ORDER BY id").await;
    assert_eq!(got, want, "every commit landed once");
    let conflicts = proxy.commits("t").iter().filter(|c| c.status == 409).count();
    tracing::info!(conflicts, pyiceberg_retries = %py["retries"], "concurrent commits");
}

/// Where the PySpark wheel's jars are, when Java and PySpark are installed.
fn pyspark_jars() -> Option<std::path::PathBuf> {
    let venv = tarn_test_utils::workspace_root().join(".venv/lib");
    let jars = std::fs::read_dir(venv)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/pyspark/jars"))
        .find(|p| p.join("hive-metastore-2.3.9.jar").exists())?;
    Command::new("java")
        .arg("-version")
        .output()
        .ok()?
        .status
        .success()
        .then_some(jars)
}

/// A Hive Metastore 2.3.9 on embedded Derby, with the transaction tables table locks need
/// (`hive.in.test` creates them); killed on drop.
struct Metastore {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Metastore {
    fn start(jars: &std::path::Path) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-hms-").tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("hms.log")).unwrap();
        let d = dir.path().display();
        let child = Command::new("java")
            .arg("-Xmx512m")
            .arg("-cp")
            .arg(format!("{}/*", jars.display()))
            .args([
                "-Dhive.async.log.enabled=false",
                &format!("-Dhive.metastore.warehouse.dir={d}/warehouse"),
                &format!(
                    "-Djavax.jdo.option.ConnectionURL=jdbc:derby:;databaseName={d}/metastore_db;create=true"
                ),
                &format!("-Dderby.system.home={d}"),
                &format!("-Dhive.log.dir={d}"),
                "-Ddatanucleus.schema.autoCreateAll=true",
                "-Dhive.metastore.schema.verification=false",
                "-Dhive.support.concurrency=true",
                "-Dhive.txn.manager=org.apache.hadoop.hive.ql.lockmgr.DbTxnManager",
                "-Dhive.in.test=true",
                "org.apache.hadoop.hive.metastore.HiveMetaStore",
                "-p",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let metastore = Self { child, port, dir };
        if let Err(e) = wait_for_port(port, Duration::from_secs(120)) {
            panic!(
                "the Hive Metastore did not start: {e}\n{}",
                std::fs::read_to_string(metastore.dir.path().join("hms.log")).unwrap_or_default()
            );
        }
        metastore
    }
}

impl Metastore {
    /// The metastore's own log (errors behind "Internal error processing ...").
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("hive.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" DEBUG ")).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Metastore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_kind_hms_on_a_real_hive_metastore() {
    crate::init_logs();
    let Some(jars) = pyspark_jars() else {
        eprintln!("skipped: needs Java and the PySpark wheel's Hive jars (scripts/setup.sh installs both)");
        return;
    };
    let metastore = Metastore::start(&jars);
    let uri = format!("thrift://127.0.0.1:{}", metastore.port);
    let settings = [("catalog.kind", "hms"), ("catalog.hms.uri", uri.as_str())];
    let client = TestLake::with(&settings).await;
    client.exec("CREATE SCHEMA h").await;
    client
        .exec("CREATE TABLE h.t (id BIGINT NOT NULL, name VARCHAR)")
        .await;
    if let Err(e) = query(&client.session, "INSERT INTO h.t VALUES (1, 'a'), (2, 'b')").await {
        panic!("{e}\n{}", metastore.log());
    }
    client.exec("INSERT INTO h.t VALUES (3, 'c')").await;
    // Another tarn on the same metastore sees the commits, and commits itself.
    let other = client.second_session().await;
    assert_eq!(
        rows(&other, "SELECT * FROM h.t ORDER BY id").await,
        ["1|a", "2|b", "3|c"]
    );
    query(&other, "INSERT INTO h.t VALUES (4, 'd')").await.unwrap();
    assert_eq!(rows(&client.session, "SELECT count(*) FROM h.t").await, ["4"]);
    // tarn's own commits: a compaction (rewrite) through the metastore lock and alter_table.
    let ident = tarn_lake::parse_table_name("h.t").unwrap();
    let lake = client.session.lake();
    let before = lake.current_metadata_location(&ident).await.unwrap();
    let options = tarn_lake::CompactOptions {
        min_input_files: 2,
        ..tarn_lake::CompactOptions::default()
    };
    let outcome = lake.compact(&ident, &options).await.unwrap();
    assert!(outcome.snapshot_id.is_some(), "{outcome:?}");
    let after = lake.current_metadata_location(&ident).await.unwrap();
    assert_ne!(before, after, "the compaction committed");
    assert_eq!(
        rows(&other, "SELECT * FROM h.t ORDER BY id").await,
        ["1|a", "2|b", "3|c", "4|d"]
    );
    // Snapshot expiry goes through the `iceberg` crate's transaction, committed the same way:
    // every snapshot but the last goes, and the files only they reached with them.
    let snapshots = || async { rows(&other, "SELECT count(*) FROM \"h\".\"t$snapshots\"").await };
    assert_eq!(snapshots().await, ["4"]);
    let expired = lake
        .expire_snapshots(
            &ident,
            &tarn_lake::ExpireOptions {
                older_than: chrono::Utc::now() + chrono::Duration::seconds(1),
                retain_last: 1,
                progress: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(expired.expired_snapshots.len(), 3, "{expired:?}");
    assert!(expired.deleted_data_files >= 3, "{expired:?}");
    assert_eq!(snapshots().await, ["1"]);
    assert_eq!(
        rows(&other, "SELECT * FROM h.t ORDER BY id").await,
        ["1|a", "2|b", "3|c", "4|d"]
    );
    let err = Lake::open(&config_for(
        client.path(),
        &[
            ("catalog.kind", "hms"),
            ("catalog.hms.uri", &format!("127.0.0.1:{}", free_port())),
        ],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot reach the Hive Metastore"), "{err}");
}
