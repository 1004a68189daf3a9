//! Contract tests of the CockroachDB source. CockroachDB cannot run on these machines, so
//! tarn runs against `tarn_test_utils::cockroach::StandInCluster`, which plays a cluster of a
//! chosen version in front of a real PostgreSQL: its `pg_catalog` and `information_schema`
//! answer as CockroachDB's do (NULL `relispartition`, NULL `relreplident` on v23.1, the hidden
//! `rowid`, virtual tables of `crdb_internal`, virtual shard columns; anything unmodelled is
//! refused), changefeed statements are parsed and validated as CockroachDB does, changes come
//! from real writes with MVCC history (scans at a cursor, replays from a cursor, resolved
//! timestamps no more often than `min_checkpoint_frequency`), values are encoded as
//! CockroachDB's JSON encoder writes them, and webhook deliveries are batched, retried and
//! failed as CockroachDB's webhook sink does. Each behaviour is cited in the stand-in's
//! module docs.
//!
//! The tests write to the backing PostgreSQL as an application would and compare the lake
//! with it: every row, nothing lost, nothing doubled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_cdc::pipeline::RunOptions;
use tarn_test_utils::cockroach::{CockroachVersion, StandInCluster, StandInOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

use crate::cdc::Cdc;

/// A PostgreSQL behind a CockroachDB stand-in, a lake, and tarn's CockroachDB pipeline
/// pointed at the stand-in.
struct Crdb {
    cdc: Cdc,
    cluster: StandInCluster,
}

impl Crdb {
    /// `schema` runs after the stand-in is up, so keyless tables get CockroachDB's `rowid`.
    async fn new(schema: &str, options: StandInOptions) -> Self {
        let mut cdc = Cdc::new("").await;
        let cluster = StandInCluster::start(cdc.pg.port(), "app", options)
            .await
            .unwrap();
        if !schema.is_empty() {
            cdc.sql(schema);
        }
        cluster.capture_tables().await.unwrap();
        cdc.set("cdc.source", &cluster.url("postgres"));
        cdc.set("cdc.source_kind", "cockroachdb");
        Self { cdc, cluster }
    }

    /// A client of the backing database, writing as the application does.
    async fn writer(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.cdc.pg.url("app"), NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The changefeed statements tarn sent, oldest first.
    fn changefeeds(&self) -> Vec<String> {
        self.cluster
            .statements()
            .into_iter()
            .filter(|s| s.contains("CHANGEFEED FOR"))
            .collect()
    }

    async fn wait_changefeeds(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let feeds = self.changefeeds();
            if feeds.len() >= n {
                return feeds;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} changefeed statements within 60 s: {feeds:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn options(version: CockroachVersion) -> StandInOptions {
    StandInOptions {
        version,
        rangefeed_enabled: true,
        ..StandInOptions::default()
    }
}

const ZOO: &str = "
CREATE TABLE dogs (id bigint PRIMARY KEY, name text NOT NULL, weight numeric(6,2));
-- No primary key: CockroachDB gives it the hidden rowid.
CREATE TABLE notes (body text, n int);
-- The key array is in primary-index order (day, dog_id), not column order.
CREATE TABLE visits (dog_id bigint NOT NULL, day date NOT NULL, n int, PRIMARY KEY (day, dog_id));
-- A hash-sharded primary key: the shard column is virtual, in the key array, never in `after`.
CREATE TABLE sharded (id bigint NOT NULL,
  crdb_internal_id_shard_4 int8 GENERATED ALWAYS AS (abs(hashint8(id)) % 4) STORED,
  v text, PRIMARY KEY (crdb_internal_id_shard_4, id));
INSERT INTO dogs SELECT g, 'dog ' || g, g * 1.25 FROM generate_series(1, 300) g;
INSERT INTO notes SELECT 'note ' || g, g FROM generate_series(1, 50) g;
INSERT INTO visits SELECT g % 20 + 1, DATE '2026-11-01' + g % 7, g FROM generate_series(1, 100) g
  ON CONFLICT DO NOTHING;
INSERT INTO sharded (id, v) SELECT g, 'v' || g FROM generate_series(1, 40) g;
";

/// Source and lake queries of the ZOO tables, rendered alike.
const ZOO_QUERIES: [(&str, &str); 4] = [
    (
        "SELECT id, name, weight FROM dogs ORDER BY id",
        "SELECT id, name, weight FROM cdc.dogs ORDER BY id",
    ),
    (
        "SELECT rowid, body, n FROM notes ORDER BY rowid",
        "SELECT rowid, body, n FROM cdc.notes ORDER BY rowid",
    ),
    (
        "SELECT dog_id, day, n FROM visits ORDER BY day, dog_id",
        "SELECT dog_id, day, n FROM cdc.visits ORDER BY day, dog_id",
    ),
    (
        "SELECT crdb_internal_id_shard_4, id, v FROM sharded ORDER BY id",
        "SELECT crdb_internal_id_shard_4, id, v FROM cdc.sharded ORDER BY id",
    ),
];

async fn wait_zoo(crdb: &Crdb) {
    for (source, lake) in ZOO_QUERIES {
        crdb.cdc.wait_same(source, lake, Duration::from_secs(60)).await;
    }
}

/// tarn starts against each modelled release, captures every kind of table CockroachDB has,
/// and sends only statements that release accepts.
async fn starts_and_streams_on(version: CockroachVersion) {
    let mut crdb = Crdb::new(ZOO, options(version)).await;
    crdb.cluster
        .register_virtual_column("sharded", "crdb_internal_id_shard_4", true)
        .await
        .unwrap();
    // Every schema: crdb_internal's and pg_extension's virtual tables must be left out.
    crdb.cdc.set("cdc.tables", r#"["*.*"]"#);
    let running = crdb.cdc.start().await;
    wait_zoo(&crdb).await;

    let w = crdb.writer().await;
    w.batch_execute(
        "UPDATE dogs SET name = 'rex', weight = 31.5 WHERE id = 7;
         DELETE FROM dogs WHERE id BETWEEN 10 AND 19;
         INSERT INTO dogs VALUES (1000, 'new', NULL);
         UPDATE notes SET body = 'edited' WHERE n = 3;
         DELETE FROM notes WHERE n = 4;
         INSERT INTO notes VALUES ('late', 51);
         DELETE FROM visits WHERE dog_id = 2;
         UPDATE sharded SET v = 'changed' WHERE id = 5;
         DELETE FROM sharded WHERE id = 6;",
    )
    .await
    .unwrap();
    wait_zoo(&crdb).await;
    running.stop().await;

    let feeds = crdb.changefeeds();
    assert_eq!(feeds.len(), 2, "one scan, one stream: {feeds:#?}");
    let (scan, stream) = (&feeds[0], &feeds[1]);
    for f in &feeds {
        assert!(f.starts_with("CREATE CHANGEFEED FOR TABLE"), "{f}");
        assert!(
            !f.contains("crdb_internal.") && !f.contains("pg_extension."),
            "{f}"
        );
        assert_eq!(
            f.contains("encode_json_value_null_as_object"),
            version >= CockroachVersion::V24_2,
            "{f}"
        );
    }
    // A scan-only changefeed refuses `updated` and `resolved`.
    assert!(
        scan.contains("initial_scan = 'only'") && scan.contains("cursor = '"),
        "{scan}"
    );
    assert!(!scan.contains("updated") && !scan.contains("resolved"), "{scan}");
    for part in [
        "updated",
        // A fifth below the cadence, so that every checkpoint carries a resolved timestamp.
        "resolved = '800ms'",
        "min_checkpoint_frequency = '1000ms'",
        "initial_scan = 'no'",
        "cursor = '",
    ] {
        assert!(stream.contains(part), "{part} missing: {stream}");
    }
    // The stream starts where the scan was taken.
    let cursor = |s: &str| {
        s.split("cursor = '")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(cursor(scan), cursor(stream));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_streams_on_v23_1() {
    starts_and_streams_on(CockroachVersion::V23_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_streams_on_v23_2() {
    starts_and_streams_on(CockroachVersion::V23_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_streams_on_v24_2() {
    starts_and_streams_on(CockroachVersion::V24_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_streams_on_v25_2() {
    starts_and_streams_on(CockroachVersion::V25_2).await;
}

const PETS: &str = "
CREATE TABLE dogs (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE cats (id bigint PRIMARY KEY, name text NOT NULL, lives int);
INSERT INTO dogs SELECT g, 'dog ' || g FROM generate_series(1, 100) g;
INSERT INTO cats SELECT g, 'cat ' || g, 9 FROM generate_series(1, 500) g;
";
const DOGS: (&str, &str) = (
    "SELECT id, name FROM dogs ORDER BY id",
    "SELECT id, name FROM cdc.dogs ORDER BY id",
);
const CATS: (&str, &str) = (
    "SELECT id, name, lives FROM cats ORDER BY id",
    "SELECT id, name, lives FROM cdc.cats ORDER BY id",
);

/// A table added to the capture set after the others have positions: every row it already
/// held reaches the lake, then its changes; the other tables are not scanned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_later_keeps_its_rows() {
    let mut crdb = Crdb::new(
        PETS,
        StandInOptions {
            duplicates: true,
            ..options(CockroachVersion::V24_2)
        },
    )
    .await;
    crdb.cdc.set("cdc.tables", r#"["public.dogs"]"#);
    let running = crdb.cdc.start().await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    let w = crdb.writer().await;
    w.batch_execute("UPDATE dogs SET name = 'rex' WHERE id = 1; UPDATE cats SET lives = 8 WHERE id <= 10")
        .await
        .unwrap();
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    running.stop().await;

    // Meanwhile both tables change; then cats joins the capture set.
    w.batch_execute(
        "INSERT INTO cats SELECT g, 'cat ' || g, 7 FROM generate_series(501, 600) g;
         DELETE FROM cats WHERE id BETWEEN 20 AND 29;
         UPDATE dogs SET name = 'fido' WHERE id = 2;",
    )
    .await
    .unwrap();
    let before = crdb.changefeeds().len();
    crdb.cdc.set("cdc.tables", r#"["public.*"]"#);
    let running = crdb.cdc.start().await;
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    let feeds = crdb.wait_changefeeds(before + 2).await;
    let (scan, stream) = (&feeds[before], &feeds[before + 1]);
    assert!(scan.contains("initial_scan = 'only'"), "{scan}");
    assert!(
        scan.contains("cats") && !scan.contains("dogs"),
        "only the new table is scanned: {scan}"
    );
    assert!(stream.contains("cats") && stream.contains("dogs"), "{stream}");

    // Then its changes, and the old table's.
    w.batch_execute(
        "UPDATE cats SET lives = 1 WHERE id % 3 = 0;
         DELETE FROM cats WHERE id > 590;
         INSERT INTO dogs VALUES (101, 'pup');",
    )
    .await
    .unwrap();
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    running.stop().await;
}

/// Writes random inserts, updates and deletes over `keys` keys of `dogs` until `stop`;
/// returns how many statements committed.
async fn workload(
    client: tokio_postgres::Client,
    keys: i64,
    seed: u64,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    let mut n = 0u64;
    let mut x = seed;
    while !stop.is_cancelled() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = ((x >> 33) % keys as u64) as i64 + 1;
        let sql = match (x >> 20) % 4 {
            0 => format!(
                "INSERT INTO dogs VALUES ({id}, 'w{n}') ON CONFLICT (id) DO UPDATE SET name = excluded.name"
            ),
            1 => format!("UPDATE dogs SET name = name || '+' WHERE id = {id}"),
            2 => format!("DELETE FROM dogs WHERE id = {id}"),
            _ => format!(
                "BEGIN; UPDATE dogs SET name = 'pair' WHERE id = {id}; INSERT INTO dogs VALUES ({}, 'pair') \
                 ON CONFLICT (id) DO UPDATE SET name = 'pair'; COMMIT",
                (id % keys) + 1
            ),
        };
        client.batch_execute(&sql).await.unwrap();
        n += 1;
    }
    n
}

/// The sinkless changefeed end to end: at-least-once delivery with duplicates and reordering,
/// dropped connections, a disabled rangefeed setting, restarts — the lake ends equal to the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinkless_exactly_once_through_failures_and_restarts() {
    let crdb = Crdb::new(
        PETS,
        StandInOptions {
            duplicates: true,
            rangefeed_enabled: false,
            ..options(CockroachVersion::V25_2)
        },
    )
    .await;
    // As CockroachDB ships: changefeeds error until an admin turns rangefeeds on. The scan
    // (initial_scan = 'only') does not need them; the stream does.
    let running = crdb.cdc.start().await;
    let err = running
        .wait_error("changefeeds without kv.rangefeed.enabled")
        .await;
    assert!(err.contains("kv.rangefeed.enabled"), "{err}");
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    crdb.cluster
        .set_cluster_setting("kv.rangefeed.enabled", "true")
        .unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            let crdb = &crdb;
            async move { workload(crdb.writer().await, 200, 17 + i, stop).await }
        })
        .collect();
    let writers = futures::future::join_all(writers);
    let chaos = async {
        for round in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            crdb.cluster.fail_feeds(&format!("node {round} restarted"));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.cancel();
    };
    let (counts, ()) = tokio::join!(writers, chaos);
    assert!(counts.iter().sum::<u64>() > 20, "the workload ran: {counts:?}");
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    running.stop().await;

    // A clean restart resumes from the lake's position; nothing is scanned again.
    let before = crdb.changefeeds().len();
    let running = crdb.cdc.start().await;
    let w = crdb.writer().await;
    w.batch_execute("INSERT INTO dogs VALUES (5000, 'after restart'); DELETE FROM cats WHERE id = 1")
        .await
        .unwrap();
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    let feeds = crdb.changefeeds();
    assert!(
        feeds[before..]
            .iter()
            .all(|f| !f.contains("initial_scan = 'only'")),
        "{:#?}",
        &feeds[before..]
    );
    running.stop().await;

    // The independent readers see the same rows.
    let (pyiceberg, duckdb) = crdb.cdc.independent_rows("cdc.dogs");
    let source = crdb
        .cdc
        .source_rows("SELECT id::text, name FROM dogs ORDER BY id");
    assert_eq!(pyiceberg.as_array().unwrap().len(), source.len());
    assert_eq!(pyiceberg, duckdb);

    // `tarn cdc status` shows the changefeed and each table's resolved position.
    let source = format!("cdc.source={}", crdb.cluster.url("postgres"));
    let (ok, out, err) = crate::tarn(
        crdb.cdc.lake.path(),
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
    assert!(out.contains("cdc.dogs") && out.contains("cdc.cats"), "{out}");
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

/// Webhook mode under the deployment's settings: a cluster that allows `CHANGEFEED` holders
/// only external-connection sinks. A direct URI is refused with a pointer to the fix; through
/// the connection the admin created from `tarn cdc external-connection`, the feed runs, a job
/// that fails is replaced, and restarts lose and double nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_through_an_external_connection() {
    let mut crdb = Crdb::new(PETS, options(CockroachVersion::V25_2)).await;
    crdb.cluster
        .set_cluster_setting(
            "changefeed.permissions.require_external_connection_sink.enabled",
            "true",
        )
        .unwrap();
    let port = tarn_test_utils::free_port();
    crdb.cdc.set("cdc.changefeed.sink", "webhook");
    crdb.cdc
        .set("cdc.changefeed.webhook_listen", &format!("127.0.0.1:{port}"));

    // A direct webhook URI: refused by the cluster; tarn says what to set.
    let running = crdb.cdc.start().await;
    let err = running
        .wait_error("a direct webhook URI on a cluster that forbids it")
        .await;
    assert!(err.contains("external connection"), "{err}");
    assert!(err.contains("cdc.changefeed.external_connection"), "{err}");
    running.stop().await;

    crdb.cdc.set("cdc.changefeed.external_connection", "tarn_webhook");
    crdb.cdc
        .set("cdc.changefeed.webhook_url", &format!("https://127.0.0.1:{port}"));
    let config_args = [
        "--set",
        "cdc.source_kind=cockroachdb",
        "--set",
        "cdc.changefeed.sink=webhook",
        "--set",
        "cdc.changefeed.external_connection=tarn_webhook",
        "--set",
        &format!("cdc.changefeed.webhook_url=https://127.0.0.1:{port}"),
        "--set",
        &format!("cdc.changefeed.webhook_listen=127.0.0.1:{port}"),
    ];
    let mut args: Vec<&str> = config_args.to_vec();
    args.extend(["cdc", "external-connection", "--user", "postgres"]);
    let (ok, sql, err) = crate::tarn(crdb.cdc.lake.path(), &args);
    assert!(ok, "{err}");
    assert!(
        sql.contains(r#"CREATE EXTERNAL CONNECTION "tarn_webhook" AS 'webhook-https://127.0.0.1:"#),
        "{sql}"
    );
    assert!(sql.contains("/changefeed/main?ca_cert="), "{sql}");
    // The admin runs it.
    crdb.cdc
        .pg
        .psql("postgres", "CREATE ROLE root SUPERUSER LOGIN")
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&crdb.cluster.url("root"), NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    admin.batch_execute(&sql).await.unwrap();
    assert!(crdb.cluster.external_connections().contains_key("tarn_webhook"));
    // Running it again prints the same connection: the certificate is kept.
    let (_, again, _) = crate::tarn(crdb.cdc.lake.path(), &args);
    assert_eq!(sql, again);

    let running = crdb.cdc.start().await;
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    let stream = crdb
        .cluster
        .wait_job(Duration::from_secs(60), |j| {
            j.sink_uri == "external://tarn_webhook"
        })
        .await
        .unwrap()
        .description;
    let stream = crdb
        .changefeeds()
        .into_iter()
        .rev()
        .find(|s| s.contains("INTO 'external://tarn_webhook'"))
        .unwrap_or_else(|| panic!("no changefeed into the external connection: {stream}"));
    for part in [
        "webhook_auth_header = 'Bearer ",
        "webhook_client_timeout = '60s'",
        "webhook_sink_config = '",
    ] {
        assert!(stream.contains(part), "{part} missing: {stream}");
    }

    // What reaches tarn's endpoint other than the changefeed is refused, and lands nowhere.
    let uri = url::Url::parse(
        crdb.cluster.external_connections()["tarn_webhook"]
            .strip_prefix("webhook-")
            .unwrap(),
    )
    .unwrap();
    let ca = {
        use base64::Engine as _;
        let b64 = uri
            .query_pairs()
            .find(|(k, _)| k == "ca_cert")
            .unwrap()
            .1
            .to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    };
    let auth = stream
        .split("webhook_auth_header = '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let mut elsewhere = uri.clone();
    elsewhere.set_path("/changefeed/other");
    assert_eq!(post(&elsewhere, &ca, &auth, "{}").await.0, 404);
    assert_eq!(post(&uri, &ca, "Bearer wrong", "{}").await.0, 401);
    let (status, body) = post(
        &uri,
        &ca,
        &auth,
        r#"{"payload": [{"after": {"id": 1}, "key": [1], "topic": "app.public.dogs", "updated": "yesterday"}], "length": 1}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("payload[0].updated"), "{body}");

    let w = crdb.writer().await;
    w.batch_execute("UPDATE dogs SET name = 'hooked' WHERE id <= 5; DELETE FROM cats WHERE id > 450")
        .await
        .unwrap();
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;

    // The job fails (a node lost its way to tarn): tarn sees it within seconds and creates
    // the changefeed again from the lake's position.
    let first_job = crdb.cluster.jobs().last().unwrap().id;
    crdb.cluster.fail_feeds("webhook sink: connection refused");
    w.batch_execute("INSERT INTO dogs VALUES (777, 'after the failure')")
        .await
        .unwrap();
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    let last_job = crdb.cluster.jobs().last().unwrap().id;
    assert_ne!(first_job, last_job, "a new job replaced the failed one");

    // A retryable error replays from the job's high-water mark: duplicates, no change.
    crdb.cluster.restart_jobs("retryable: node drained");
    w.batch_execute("UPDATE cats SET lives = 2 WHERE id = 3")
        .await
        .unwrap();
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    running.stop().await;
    let job = crdb
        .cluster
        .jobs()
        .into_iter()
        .find(|j| j.id == last_job)
        .unwrap();
    assert_eq!(job.status, "canceled", "a clean stop cancels the job: {job:?}");

    // A restart through the same connection resumes; nothing is lost or doubled.
    w.batch_execute("INSERT INTO cats VALUES (9000, 'restart', 9)")
        .await
        .unwrap();
    let running = crdb.cdc.start().await;
    crdb.cdc.wait_same(CATS.0, CATS.1, Duration::from_secs(60)).await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    running.stop().await;
}

const VALUES: &str = r#"
CREATE TABLE vals (
  id int PRIMARY KEY, b bytea, iv interval, j jsonb, d numeric(20,6), dn numeric, f float8, r real,
  ts timestamp, tz timestamptz, dt date, tm time, ttz timetz, u uuid, ip inet, tags text[],
  big int8, ok bool, bits varbit, ivs interval[]
);
INSERT INTO vals VALUES
 (1, '\x0102ff', '1 year 2 mons 3 days 04:05:06.789', '{"b": 1, "aa": {"z": [1, 2.50, "é\n"], "a": null}}',
  1500, 1.5e3, 1500, 0.5, '2026-11-27 10:00:00.123456', '2026-11-27 10:00:00.5+02', '2026-11-27',
  '10:00:00.25', '10:00:00+05:30', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.0.0.0/8',
  '{a,"b c",NULL}', 9007199254740993, true, B'0101', '{"1 day","-00:00:01.5"}'),
 (2, '\x', '-1 days +02:03:04', 'null', 0.0000001, 1e-7, 'NaN', 'Infinity', '1999-12-31 23:59:59',
  '2000-01-01 00:00:00+00', '0001-01-01', '00:00:00', '23:59:59-08', NULL, '192.168.0.1', '{}',
  -9223372036854775808, false, B'', '{}'),
 (3, NULL, '00:00:00', NULL, -12345.678901, 123456789012345678.5, '-Infinity', 1e-7, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// The same values land the same way from CockroachDB (its JSON encodings: BYTES hex, INTERVAL
/// postgres style, JSONB null vs SQL NULL, DECIMAL and FLOAT in exponent form, NaN and
/// infinities as strings, TIMESTAMPTZ in UTC with `Z`) as from PostgreSQL (pgoutput text):
/// two pipelines, one per source, over the same table, compared row by row in the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_land_as_they_do_from_postgres() {
    let crdb = Crdb::new(VALUES, options(CockroachVersion::V24_2)).await;
    let dir = crdb.cdc.lake.path().to_path_buf();
    let common = [
        ("cdc.flush.interval", "200ms"),
        ("cdc.tables", r#"["public.vals"]"#),
    ];
    let pg_url = crdb.cdc.pg.url("app");
    let crdb_url = crdb.cluster.url("postgres");
    let mut pg_side = common.to_vec();
    pg_side.extend([
        ("cdc.source", pg_url.as_str()),
        ("cdc.pipeline", "pg"),
        ("cdc.namespace", "from_pg"),
    ]);
    let mut crdb_side = common.to_vec();
    crdb_side.extend([
        ("cdc.source", crdb_url.as_str()),
        ("cdc.source_kind", "cockroachdb"),
        ("cdc.pipeline", "crdb"),
        ("cdc.namespace", "from_crdb"),
    ]);
    let from_pg = crdb
        .cdc
        .start_config(crate::config_for(&dir, &pg_side), RunOptions::default())
        .await;
    let from_crdb = crdb
        .cdc
        .start_config(crate::config_for(&dir, &crdb_side), RunOptions::default())
        .await;
    let crdb = &crdb;
    let same = |what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let count = crdb.cdc.source_rows("SELECT count(*) FROM vals")[0].clone();
        loop {
            let a = crdb.cdc.lake_rows("SELECT * FROM from_pg.vals ORDER BY id").await;
            let b = crdb
                .cdc
                .lake_rows("SELECT * FROM from_crdb.vals ORDER BY id")
                .await;
            if let (Some(a), Some(b)) = (&a, &b)
                && a.len().to_string() == count
                && a == b
            {
                return a.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the two sources did not land alike within 60 s\nsource:\n  {}\nfrom PostgreSQL:\n  {}\nfrom CockroachDB:\n  {}",
                crdb.cdc
                    .source_rows("SELECT * FROM vals ORDER BY id")
                    .join("\n  "),
                a.unwrap_or_default().join("\n  "),
                b.unwrap_or_default().join("\n  ")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Scanned values.
    let rows = same("the scan").await;
    assert_eq!(rows.len(), 3);
    // A JSON null and SQL NULL stay apart (v24.2+).
    assert_eq!(
        crdb.cdc
            .lake_rows("SELECT id, j IS NULL FROM from_crdb.vals ORDER BY id")
            .await
            .unwrap(),
        vec!["1|false", "2|false", "3|true"]
    );
    // Streamed values.
    let w = crdb.writer().await;
    w.batch_execute(
        r#"UPDATE vals SET iv = iv * 2, j = '{"k": null, "kk": [null]}', f = 1e300, dn = 2.5e-7, b = '\xdeadbeef' WHERE id = 1;
           UPDATE vals SET j = NULL, iv = '-1 year -2 mons +3 days -00:00:00.000001' WHERE id = 2;
           UPDATE vals SET j = 'null', tz = '2026-12-06 04:17:02.999999+00' WHERE id = 3;
           INSERT INTO vals (id, iv, f, r) VALUES (4, '14 mons 25:00:00', 1.5e3, -0.0);"#,
    )
    .await
    .unwrap();
    let rows = same("streamed changes").await;
    assert_eq!(rows.len(), 4);
    from_pg.stop().await;
    from_crdb.stop().await;
}

/// `min_checkpoint_frequency` follows `resolved`, so the cluster emits resolved timestamps at
/// tarn's cadence (not every 30 s), and a change is in the lake about a cadence after its
/// commit. Freshness is measured against the stand-in's clock and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_cadence_and_freshness() {
    let crdb = Crdb::new(PETS, options(CockroachVersion::V24_2)).await;
    let running = crdb.cdc.start().await;
    crdb.cdc.wait_same(DOGS.0, DOGS.1, Duration::from_secs(60)).await;
    let stream = crdb.wait_changefeeds(2).await[1].clone();
    assert!(stream.contains("min_checkpoint_frequency = '1000ms'"), "{stream}");

    let w = crdb.writer().await;
    let mut freshness = Vec::new();
    for i in 0..8 {
        w.batch_execute(&format!("INSERT INTO dogs VALUES ({}, 'probe')", 10_000 + i))
            .await
            .unwrap();
        let committed = crdb.cluster.clock_now();
        let started = Instant::now();
        let query = format!("SELECT count(*) FROM cdc.dogs WHERE id = {}", 10_000 + i);
        loop {
            if crdb.cdc.lake_rows(&query).await.as_deref() == Some(&["1".to_string()][..]) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "probe {i} not in the lake within 10 s (a 30 s resolved cadence?)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = crdb.cluster.clock_now();
        freshness.push((seen.wall - committed.wall) as f64 / 1e9);
    }
    running.stop().await;
    freshness.sort_by(f64::total_cmp);
    eprintln!(
        "CockroachDB freshness at resolved = 1s (stand-in clock): min {:.2}s  p50 {:.2}s  max {:.2}s",
        freshness[0],
        freshness[freshness.len() / 2],
        freshness[freshness.len() - 1]
    );
    // The cluster's cadence, as it emitted resolved timestamps to tarn's stream.
    let all = crdb.cluster.resolved_emitted();
    let stream_feed = all.last().expect("resolved timestamps were emitted").feed.clone();
    let emitted: Vec<_> = all.into_iter().filter(|r| r.feed == stream_feed).collect();
    assert!(emitted.len() >= 4, "{emitted:?}");
    let gaps: Vec<f64> = emitted
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).unwrap_or_default().as_secs_f64())
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= 0.9),
        "no more often than min_checkpoint_frequency: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < 3.0),
        "about every second, not every 30 s: {gaps:?}"
    );
}
