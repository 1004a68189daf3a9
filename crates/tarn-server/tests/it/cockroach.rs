//! Contract tests of the CockroachDB source. CockroachDB cannot run on these machines, so a
//! stand-in speaks its documented changefeed formats: a proxy in front of a real PostgreSQL
//! answers the changefeed statements (`EXPERIMENTAL CHANGEFEED FOR ...` streams rows of
//! `table`, `key`, `value` as a core changefeed does; `CREATE CHANGEFEED ... INTO
//! 'webhook-https://...'` returns a job id; `CANCEL JOB`), and passes everything else — the
//! schema queries tarn sends to CockroachDB's `pg_catalog` and `information_schema` — to
//! PostgreSQL, which holds the same tables. The test plays the cluster: it sends row and
//! resolved messages (wrapped envelope, `updated`, `resolved`, `full_table_name`) with
//! duplicates, out-of-order versions, deletes and schema changes, and posts webhook
//! deliveries over HTTPS with the certificate tarn handed to the changefeed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tarn_cdc::source::Position;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::cdc::Cdc;

/// One message the stand-in cluster sends down a core changefeed.
enum FeedRow {
    Row {
        table: String,
        key: String,
        value: String,
    },
    Resolved(String),
    /// Drop the connection, as a failing node would.
    Close,
}

/// A core changefeed tarn opened: the statement and the way to feed it.
struct Feed {
    statement: String,
    tx: mpsc::UnboundedSender<FeedRow>,
}

impl Feed {
    fn row(&self, table: &str, key: &str, after: Option<&str>, updated: &str) {
        let value = match after {
            Some(a) => format!(r#"{{"after": {a}, "updated": "{updated}"}}"#),
            None => format!(r#"{{"after": null, "updated": "{updated}"}}"#),
        };
        self.tx
            .send(FeedRow::Row {
                table: table.into(),
                key: key.into(),
                value,
            })
            .unwrap();
    }

    fn resolved(&self, ts: &str) {
        self.tx.send(FeedRow::Resolved(ts.into())).unwrap();
    }

    fn close(&self) {
        let _ = self.tx.send(FeedRow::Close);
    }
}

/// The stand-in: a pgwire proxy to PostgreSQL that answers changefeed statements itself.
struct FakeCockroach {
    port: u16,
    statements: Arc<Mutex<Vec<String>>>,
    feeds: mpsc::UnboundedReceiver<Feed>,
}

impl FakeCockroach {
    async fn start(pg_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let statements = Arc::new(Mutex::new(Vec::new()));
        let (feeds_tx, feeds) = mpsc::unbounded_channel();
        let recorded = statements.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(proxy(client, pg_port, recorded.clone(), feeds_tx.clone()));
            }
        });
        Self {
            port,
            statements,
            feeds,
        }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    async fn next_feed(&mut self) -> Feed {
        tokio::time::timeout(Duration::from_secs(60), self.feeds.recv())
            .await
            .expect("tarn opens a changefeed within 60 s")
            .unwrap()
    }

    fn statements(&self) -> Vec<String> {
        self.statements.lock().unwrap().clone()
    }

    async fn wait_statement(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self
                .statements()
                .into_iter()
                .rev()
                .find(|s| s.starts_with(prefix))
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix} statement within 60 s: {:?}",
                self.statements()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_message(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let tag = r.read_u8().await.ok()?;
    let len = r.read_i32().await.ok()? as usize;
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn row_description(fields: &[(&str, i32)]) -> Vec<u8> {
    let mut b = (fields.len() as i16).to_be_bytes().to_vec();
    for (name, oid) in fields {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    message(b'T', &b)
}

fn data_row(cells: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (cells.len() as i16).to_be_bytes().to_vec();
    for c in cells {
        match c {
            Some(c) => {
                b.extend_from_slice(&(c.len() as i32).to_be_bytes());
                b.extend_from_slice(c);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    message(b'D', &b)
}

fn bytea(s: &str) -> Vec<u8> {
    let mut out = b"\\x".to_vec();
    for b in s.bytes() {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

async fn proxy(
    client: TcpStream,
    pg_port: u16,
    statements: Arc<Mutex<Vec<String>>>,
    feeds: mpsc::UnboundedSender<Feed>,
) {
    let (mut from_client, to_client) = client.into_split();
    let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
    // Startup (answering an SSL request with "no").
    let startup = loop {
        let Ok(len) = from_client.read_i32().await else {
            return;
        };
        let mut body = vec![0; len as usize - 4];
        if from_client.read_exact(&mut body).await.is_err() {
            return;
        }
        if body[..4] == 80_877_103i32.to_be_bytes() {
            to_client.lock().await.write_all(b"N").await.unwrap();
            continue;
        }
        let mut m = len.to_be_bytes().to_vec();
        m.extend(body);
        break m;
    };
    let Ok(server) = TcpStream::connect(("127.0.0.1", pg_port)).await else {
        return;
    };
    let (mut from_server, mut to_server) = server.into_split();
    to_server.write_all(&startup).await.unwrap();
    let back = to_client.clone();
    let pump = tokio::spawn(async move {
        while let Some((tag, body)) = read_message(&mut from_server).await {
            if back.lock().await.write_all(&message(tag, &body)).await.is_err() {
                return;
            }
        }
    });
    while let Some((tag, body)) = read_message(&mut from_client).await {
        let query = (tag == b'Q').then(|| {
            String::from_utf8_lossy(&body[..body.len() - 1])
                .trim()
                .to_string()
        });
        match query {
            Some(q) if q.starts_with("EXPERIMENTAL CHANGEFEED") => {
                statements.lock().unwrap().push(q.clone());
                let (tx, mut rx) = mpsc::unbounded_channel();
                feeds.send(Feed { statement: q, tx }).unwrap();
                let mut out = to_client.lock().await;
                out.write_all(&row_description(&[("table", 25), ("key", 17), ("value", 17)]))
                    .await
                    .unwrap();
                out.flush().await.unwrap();
                while let Some(row) = rx.recv().await {
                    let m = match row {
                        FeedRow::Row { table, key, value } => {
                            data_row(&[Some(table.as_bytes()), Some(&bytea(&key)), Some(&bytea(&value))])
                        }
                        FeedRow::Resolved(ts) => {
                            data_row(&[None, None, Some(&bytea(&format!(r#"{{"resolved":"{ts}"}}"#)))])
                        }
                        FeedRow::Close => break,
                    };
                    if out.write_all(&m).await.is_err() {
                        break;
                    }
                    let _ = out.flush().await;
                }
                let _ = out.shutdown().await;
                pump.abort();
                return;
            }
            // Answered by PostgreSQL with a stand-in query, so replies keep their order with
            // requests still in flight on this connection (statement closes, ...).
            Some(q) if q.starts_with("CREATE CHANGEFEED") || q.starts_with("CANCEL JOB") => {
                let stand_in = if q.starts_with("CREATE") {
                    "SELECT 4711::int8 AS job_id\0"
                } else {
                    "SELECT 1 AS cancelled\0"
                };
                statements.lock().unwrap().push(q);
                if to_server
                    .write_all(&message(b'Q', stand_in.as_bytes()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            _ => {
                if to_server.write_all(&message(tag, &body)).await.is_err() {
                    break;
                }
            }
        }
    }
    pump.abort();
}

/// CockroachDB's timestamp `base + n` seconds, as `updated`/`resolved` carry it.
fn ts(n: u64) -> String {
    format!("{}.0000000000", 1_800_000_000_000_000_000u64 + n * 1_000_000_000)
}

const SCHEMA: &str = "
CREATE TABLE dogs (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12,2), born timestamptz, tags text[], doc jsonb, photo bytea);
CREATE TABLE visits (dog_id bigint NOT NULL, day date NOT NULL, n int, PRIMARY KEY (day, dog_id));
";

const DOGS: &str = "SELECT id, name, price, born, tags, doc, photo FROM cdc.dogs ORDER BY id";
const VISITS: &str = "SELECT dog_id, day, n FROM cdc.visits ORDER BY day, dog_id";

fn dog(id: i64, name: &str, price: &str) -> String {
    format!(
        r#"{{"id": {id}, "name": "{name}", "price": {price}, "born": "2020-01-0{}T10:00:00Z", "tags": ["a", "b"], "doc": {{"k": {id}}}, "photo": "AQL/"}}"#,
        id % 9 + 1
    )
}

fn dog_line(id: i64, name: &str, price: &str) -> String {
    format!(
        "{id}|{name}|{price}|2020-01-0{}T10:00:00Z|[a, b]|{{\"k\": {id}}}|0102ff",
        id % 9 + 1
    )
}

async fn wait_lake(cdc: &Cdc, query: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = None;
    while Instant::now() < deadline {
        got = cdc.lake_rows(query).await;
        if got.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the lake did not reach\n  {}\ngot\n  {:?}",
        want.join("\n  "),
        got
    );
}

async fn resolved_position(cdc: &Cdc, table: &str) -> Option<Position> {
    let lake = tarn_lake::Lake::open(&cdc.config()).await.unwrap();
    let ident = iceberg::TableIdent::from_strs(["cdc", table]).unwrap();
    let table = lake.load_table(&ident).await.unwrap();
    tarn_cdc::sink::table_position(&table, "main").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_changefeed_exactly_once() {
    let mut cdc = Cdc::new(SCHEMA).await;
    let mut crdb = FakeCockroach::start(cdc.pg.port()).await;
    cdc.set("cdc.source", &crdb.url("app"));
    cdc.set("cdc.source_kind", "cockroachdb");
    let running = cdc.start().await;

    // First start: an initial scan, no cursor.
    let feed = crdb.next_feed().await;
    for part in [
        "updated",
        "resolved = '1s'",
        "envelope = 'wrapped'",
        "full_table_name",
        "initial_scan = 'yes'",
    ] {
        assert!(
            feed.statement.contains(part),
            "{part} missing: {}",
            feed.statement
        );
    }
    assert!(!feed.statement.contains("cursor"), "{}", feed.statement);
    assert!(
        feed.statement.contains("dogs") && feed.statement.contains("visits"),
        "{}",
        feed.statement
    );
    for id in 1..=5 {
        feed.row(
            "app.public.dogs",
            &format!("[{id}]"),
            Some(&dog(id, &format!("dog{id}"), "10.50")),
            &ts(1),
        );
    }
    // The key array is in primary-key order (day, dog_id), not column order.
    feed.row(
        "app.public.visits",
        r#"["2026-11-01", 1]"#,
        Some(r#"{"dog_id": 1, "day": "2026-11-01", "n": 3}"#),
        &ts(1),
    );
    feed.row(
        "app.public.visits",
        r#"["2026-11-02", 2]"#,
        Some(r#"{"dog_id": 2, "day": "2026-11-02", "n": 4}"#),
        &ts(1),
    );
    // Nothing is visible before the resolved timestamp.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cdc.lake_rows(DOGS).await.unwrap_or_default().is_empty());
    feed.resolved(&ts(1));
    let mut want: BTreeMap<i64, String> = (1..=5)
        .map(|i| (i, dog_line(i, &format!("dog{i}"), "10.50")))
        .collect();
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;
    wait_lake(
        &cdc,
        VISITS,
        &["1|2026-11-01|3".to_string(), "2|2026-11-02|4".to_string()],
    )
    .await;
    assert_eq!(resolved_position(&cdc, "dogs").await, Position::parse_hlc(&ts(1)));

    // Duplicates, versions out of order within a window, deletes (by key only).
    feed.row("app.public.dogs", "[1]", Some(&dog(1, "rex", "20.00")), &ts(3));
    feed.row("app.public.dogs", "[1]", Some(&dog(1, "old", "15.00")), &ts(2)); // older, late
    feed.row("app.public.dogs", "[1]", Some(&dog(1, "rex", "20.00")), &ts(3)); // duplicate
    feed.row("app.public.dogs", "[2]", None, &ts(2));
    feed.row("app.public.dogs", "[2]", None, &ts(2));
    feed.row("app.public.dogs", "[6]", Some(&dog(6, "new", "1.00")), &ts(2));
    feed.row("app.public.visits", r#"["2026-11-01", 1]"#, None, &ts(3));
    // After the resolved timestamp: must wait for the next one.
    feed.row("app.public.dogs", "[3]", Some(&dog(3, "later", "3.00")), &ts(5));
    feed.resolved(&ts(4));
    want.insert(1, dog_line(1, "rex", "20.00"));
    want.remove(&2);
    want.insert(6, dog_line(6, "new", "1.00"));
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;
    wait_lake(&cdc, VISITS, &["2|2026-11-02|4".to_string()]).await;
    // A stale message (at or before the last resolved timestamp) changes nothing.
    feed.row("app.public.dogs", "[1]", Some(&dog(1, "stale", "0.00")), &ts(2));
    feed.resolved(&ts(6));
    want.insert(3, dog_line(3, "later", "3.00"));
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;

    // The connection drops mid-window: tarn reconnects with cursor = what the lake holds, and
    // the cluster replays everything after it; nothing is doubled or lost.
    feed.row("app.public.dogs", "[4]", Some(&dog(4, "lost?", "4.00")), &ts(7));
    feed.close();
    let feed = crdb.next_feed().await;
    // The quiet table (visits, last changed at ts(4)) holds the cursor back.
    assert!(
        feed.statement.contains(&format!("cursor = '{}'", ts(4))),
        "{}",
        feed.statement
    );
    assert!(
        feed.statement.contains("initial_scan = 'no'"),
        "{}",
        feed.statement
    );
    feed.row("app.public.dogs", "[4]", Some(&dog(4, "found", "4.00")), &ts(7));
    feed.row("app.public.dogs", "[5]", Some(&dog(5, "moved", "5.00")), &ts(7));
    feed.resolved(&ts(8));
    want.insert(4, dog_line(4, "found", "4.00"));
    want.insert(5, dog_line(5, "moved", "5.00"));
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;

    // A schema change: the cluster adds a column and (schema_change_policy backfill) sends
    // rows with it; tarn reads the schema again and evolves the lake table.
    cdc.sql("ALTER TABLE dogs ADD COLUMN color text");
    feed.row(
        "app.public.dogs",
        "[6]",
        Some(r#"{"id": 6, "name": "new", "price": 1.00, "born": null, "tags": [], "doc": null, "photo": null, "color": "brown"}"#),
        &ts(9),
    );
    feed.resolved(&ts(10));
    wait_lake(
        &cdc,
        "SELECT id, color FROM cdc.dogs WHERE color IS NOT NULL",
        &["6|brown".to_string()],
    )
    .await;
    assert_eq!(
        resolved_position(&cdc, "dogs").await,
        Position::parse_hlc(&ts(10))
    );
    running.stop().await;

    // A clean restart resumes from the lake's position.
    let running = cdc.start().await;
    let feed = crdb.next_feed().await;
    // A clean stop moved the quiet table up too.
    assert!(
        feed.statement.contains(&format!("cursor = '{}'", ts(10))),
        "{}",
        feed.statement
    );
    feed.row("app.public.dogs", "[7]", Some(&dog(7, "seven", "7.00")), &ts(11));
    feed.resolved(&ts(12));
    wait_lake(&cdc, "SELECT count(*) FROM cdc.dogs", &["6".to_string()]).await;

    // A malformed message stops the pipeline with an error naming it; nothing of its window
    // is committed.
    feed.row(
        "app.public.dogs",
        "[8]",
        Some(r#"{"id": 8, "name": "x", "price": "lots"}"#),
        &ts(13),
    );
    feed.resolved(&ts(14));
    let err = running.wait_error("the malformed message").await;
    assert!(err.contains("price") && err.contains("decimal"), "{err}");
    assert_eq!(
        cdc.lake_rows("SELECT count(*) FROM cdc.dogs WHERE id = 8")
            .await
            .unwrap(),
        vec!["0"]
    );
    drop(running);

    // `tarn cdc status` shows the changefeed and each table's resolved position.
    let source = format!("cdc.source={}", crdb.url("app"));
    let (ok, out, err) = crate::tarn(
        cdc.lake.path(),
        &[
            "--set",
            "cdc.source_kind=cockroachdb",
            "--set",
            &source,
            "cdc",
            "status",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("(CockroachDB)") && out.contains("sinkless sink"),
        "{out}"
    );
    assert!(out.contains("cdc.dogs") && out.contains(&ts(12)), "{out}");
}

/// An HTTPS POST with the CA the changefeed was given; returns (status, body).
async fn post(url: &url::Url, ca_pem: &str, authorization: &str, body: &str) -> (u16, String) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let host = url.host_str().unwrap().to_string();
    let tcp = TcpStream::connect((host.as_str(), url.port().unwrap()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS with the certificate tarn handed to the changefeed");
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path(),
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// The webhook sink's target, CA and auth header out of tarn's CREATE CHANGEFEED statement.
fn webhook_target(statement: &str) -> (url::Url, String, String) {
    let uri = statement
        .split("INTO '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let url = url::Url::parse(uri.strip_prefix("webhook-").unwrap()).unwrap();
    let ca = url
        .query_pairs()
        .find(|(k, _)| k == "ca_cert")
        .unwrap()
        .1
        .to_string();
    use base64::Engine as _;
    let ca = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ca).unwrap()).unwrap();
    let auth = statement
        .split("webhook_auth_header = '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    (url, ca, auth)
}

fn delivery(messages: &[String]) -> String {
    format!(
        r#"{{"payload": [{}], "length": {}}}"#,
        messages.join(","),
        messages.len()
    )
}

fn webhook_row(table: &str, key: &str, after: Option<&str>, updated: &str) -> String {
    format!(
        r#"{{"after": {}, "key": {key}, "topic": "app.public.{table}", "updated": "{updated}"}}"#,
        after.unwrap_or("null")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_changefeed_exactly_once() {
    let mut cdc = Cdc::new(SCHEMA).await;
    let crdb = FakeCockroach::start(cdc.pg.port()).await;
    cdc.set("cdc.source", &crdb.url("app"));
    cdc.set("cdc.source_kind", "cockroachdb");
    cdc.set("cdc.changefeed.sink", "webhook");
    cdc.set("cdc.changefeed.webhook_listen", "127.0.0.1:0");
    let running = cdc.start().await;
    let statement = crdb.wait_statement("CREATE CHANGEFEED").await;
    assert!(
        statement.contains("initial_scan = 'yes'") && !statement.contains("cursor"),
        "{statement}"
    );
    let (url, ca, auth) = webhook_target(&statement);
    assert_eq!(url.scheme(), "https");

    // Refusals: a wrong path, a wrong secret, malformed deliveries; nothing lands.
    let mut elsewhere = url.clone();
    elsewhere.set_path("/changefeed/main/guess");
    assert_eq!(post(&elsewhere, &ca, &auth, "{}").await.0, 404);
    assert_eq!(post(&url, &ca, "Bearer wrong", "{}").await.0, 401);
    let (status, body) = post(&url, &ca, &auth, "{\"payload\": [{\"after\": {}, \"key\": [1]}]}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("payload[0].topic"), "{body}");
    let (status, body) = post(
        &url,
        &ca,
        &auth,
        &delivery(&[webhook_row("dogs", "[1]", Some("{}"), "yesterday")]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("payload[0].updated"), "{body}");

    // The initial scan, delivered twice (at least once), then resolved.
    let scan: Vec<String> = (1..=3)
        .map(|id| {
            webhook_row(
                "dogs",
                &format!("[{id}]"),
                Some(&dog(id, &format!("dog{id}"), "2.00")),
                &ts(1),
            )
        })
        .collect();
    for _ in 0..2 {
        assert_eq!(post(&url, &ca, &auth, &delivery(&scan)).await.0, 200);
    }
    assert_eq!(
        post(&url, &ca, &auth, &format!(r#"{{"resolved": "{}"}}"#, ts(1)))
            .await
            .0,
        200
    );
    let mut want: BTreeMap<i64, String> = (1..=3)
        .map(|i| (i, dog_line(i, &format!("dog{i}"), "2.00")))
        .collect();
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;

    // Out of order across deliveries, a delete, resolved inside a payload.
    let later = delivery(&[webhook_row("dogs", "[1]", Some(&dog(1, "b", "3.00")), &ts(3))]);
    let earlier = delivery(&[
        webhook_row("dogs", "[1]", Some(&dog(1, "a", "2.50")), &ts(2)),
        webhook_row("dogs", "[2]", None, &ts(2)),
    ]);
    assert_eq!(post(&url, &ca, &auth, &later).await.0, 200);
    assert_eq!(post(&url, &ca, &auth, &earlier).await.0, 200);
    assert_eq!(
        post(
            &url,
            &ca,
            &auth,
            &format!(r#"{{"payload": [{{"resolved": "{}"}}], "length": 1}}"#, ts(4))
        )
        .await
        .0,
        200
    );
    want.insert(1, dog_line(1, "b", "3.00"));
    want.remove(&2);
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;
    assert_eq!(resolved_position(&cdc, "dogs").await, Position::parse_hlc(&ts(4)));

    // A delivery acknowledged but not yet resolved when tarn stops is replayed by the new
    // changefeed, which starts at the lake's cursor; the old job is cancelled.
    let pending = delivery(&[webhook_row(
        "dogs",
        "[3]",
        Some(&dog(3, "pending", "9.00")),
        &ts(5),
    )]);
    assert_eq!(post(&url, &ca, &auth, &pending).await.0, 200);
    running.stop().await;
    assert!(
        crdb.statements().iter().any(|s| s == "CANCEL JOB 4711"),
        "{:?}",
        crdb.statements()
    );
    let before = crdb.statements().len();
    let running = cdc.start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let statement = loop {
        if let Some(s) = crdb.statements()[before..]
            .iter()
            .find(|s| s.starts_with("CREATE CHANGEFEED"))
        {
            break s.clone();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        statement.contains(&format!("cursor = '{}'", ts(4))),
        "{statement}"
    );
    assert!(statement.contains("initial_scan = 'no'"), "{statement}");
    let (url, ca, auth) = webhook_target(&statement);
    assert_eq!(post(&url, &ca, &auth, &pending).await.0, 200);
    assert_eq!(
        post(&url, &ca, &auth, &format!(r#"{{"resolved": "{}"}}"#, ts(6)))
            .await
            .0,
        200
    );
    want.insert(3, dog_line(3, "pending", "9.00"));
    wait_lake(&cdc, DOGS, &want.values().cloned().collect::<Vec<_>>()).await;
    running.stop().await;
}
