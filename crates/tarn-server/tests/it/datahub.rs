//! DataHub metadata and lineage: tables made by SQL (CTAS, INSERT ... SELECT) and by CDC,
//! exported as an MCP file that the acryl-datahub package's own classes validate, pushed to a
//! stand-in GMS (`POST /aspects?action=ingestProposal`, checked against the DataHub REST
//! emitter's request format) by `tarn catalog push datahub` and by `tarn serve`, and shown by
//! `tarn table lineage`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tarn_cdc::source::{ColumnSpec, KeyKind, TableSpec};
use tarn_cdc::value::ColumnType;

use crate::{TestLake, tarn};

/// What the stand-in GMS received: (headers that matter, proposal) per request.
type Received = Arc<Mutex<Vec<(Option<String>, Option<String>, Value)>>>;

/// A GMS stand-in on a free loopback port answering `status`; what it received.
async fn gms(status: StatusCode) -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/aspects",
        post(
            move |axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >,
                  headers: HeaderMap,
                  body: String| {
                let sink = sink.clone();
                async move {
                    assert_eq!(q.get("action").map(String::as_str), Some("ingestProposal"));
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let body: Value = serde_json::from_str(&body).unwrap();
                    sink.lock().unwrap().push((
                        header("authorization"),
                        header("x-restli-protocol-version"),
                        body,
                    ));
                    (status, "{\"value\": \"ok\"}")
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// A lake with: `sales.orders` and `sales.customers` (SQL), `sales.summary` computed from
/// both by CTAS then fed by an INSERT ... SELECT from `sales.returns`, and `cdc.items`
/// created by a CDC sink of pipeline `shop` reading `postgres://.../app`.
async fn lineage_lake() -> TestLake {
    let lake = TestLake::with(&[
        ("cdc.pipeline", "shop"),
        ("cdc.source", "postgres://app_user@127.0.0.1:5432/app"),
        ("datahub.env", "DEV"),
    ])
    .await;
    lake.exec(
        "CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id BIGINT, customer BIGINT, amount DOUBLE);
         INSERT INTO sales.orders VALUES (1, 10, 5.0), (2, 11, 7.5);
         CREATE TABLE sales.customers (id BIGINT, name VARCHAR);
         INSERT INTO sales.customers VALUES (10, 'a'), (11, 'b');
         CREATE TABLE sales.returns (name VARCHAR, amount DOUBLE);
         INSERT INTO sales.returns VALUES ('a', -1.0);
         CREATE TABLE sales.summary AS
           SELECT c.name, sum(o.amount) AS total FROM sales.orders o JOIN sales.customers c ON o.customer = c.id
           GROUP BY c.name;
         INSERT INTO sales.summary SELECT name, amount FROM sales.returns;
         INSERT INTO sales.summary VALUES ('z', 0.0)",
    )
    .await;
    let mut sink = tarn_cdc::pipeline::lake_sink(&lake.config, lake.session.lake().clone());
    sink.attach(Arc::new(TableSpec {
        id: 1,
        schema: "public".into(),
        name: "items".into(),
        columns: vec![
            ColumnSpec::new("id", ColumnType::Int64, true, 1),
            ColumnSpec::new("v", ColumnType::Text, false, 2),
        ],
        key_kind: KeyKind::PrimaryKey,
    }))
    .await
    .unwrap();
    lake
}

fn urn(platform: &str, name: &str) -> String {
    format!("urn:li:dataset:(urn:li:dataPlatform:{platform},{name},DEV)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datahub_export_is_valid_and_carries_the_lineage() {
    let lake = lineage_lake().await;
    let dir = lake.path().display().to_string();
    // Lineage kept in tarn.
    let (ok, out, err) = tarn(lake.path(), &["table", "lineage", "sales.summary"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "upstream    sales.customers    (SQL)",
            "upstream    sales.orders    (SQL)",
            "upstream    sales.returns    (SQL)"
        ],
        "{out}"
    );
    let (ok, out, _) = tarn(lake.path(), &["table", "lineage", "sales.orders"]);
    assert!(ok);
    assert_eq!(out.trim(), "downstream  sales.summary    (SQL)");
    let (ok, out, err) = tarn(
        lake.path(),
        &[
            "--set",
            "cdc.pipeline=shop",
            "--set",
            "cdc.source=postgres://u@h:5432/app",
            "table",
            "lineage",
            "cdc.items",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "upstream    postgres:app.public.items    (CDC pipeline shop)"
    );
    let (ok, _, err) = tarn(lake.path(), &["table", "lineage", "sales.nope"]);
    assert!(!ok && err.contains("table sales.nope does not exist"), "{err}");

    // The export, validated by DataHub's own classes and CLI.
    let file = format!("{dir}/datahub.json");
    let (ok, _, err) = tarn(
        lake.path(),
        &[
            "--set",
            "cdc.pipeline=shop",
            "--set",
            "cdc.source=postgres://u@h:5432/app",
            "--set",
            "datahub.env=DEV",
            "catalog",
            "export",
            "datahub",
            &file,
        ],
    );
    assert!(ok, "{err}");
    let checked = tokio::task::block_in_place(|| tarn_test_utils::run_python("datahub_check.py", &[&file]))
        .unwrap_or_else(|e| panic!("{e}"));
    let report: Value = serde_json::from_str(checked.lines().last().unwrap()).unwrap();
    let counts = &report["counts"];
    // Five lake tables: properties and schema each; lineage on the two derived ones.
    assert_eq!(counts["datasetProperties"], 5, "{report}");
    assert_eq!(counts["schemaMetadata"], 5, "{report}");
    assert_eq!(counts["upstreamLineage"], 2, "{report}");
    assert_eq!(counts["dataFlowInfo"], 1, "{report}");
    assert_eq!(counts["dataJobInfo"], 1, "{report}");
    assert_eq!(counts["dataJobInputOutput"], 1, "{report}");
    let mut edges: Vec<(String, String, String)> = report["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
                e[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    edges.sort();
    let summary = urn("iceberg", "sales.summary");
    let items = urn("iceberg", "cdc.items");
    let mut expected = vec![
        (
            urn("iceberg", "sales.customers"),
            summary.clone(),
            "TRANSFORMED".to_string(),
        ),
        (
            urn("iceberg", "sales.orders"),
            summary.clone(),
            "TRANSFORMED".to_string(),
        ),
        (
            urn("iceberg", "sales.returns"),
            summary.clone(),
            "TRANSFORMED".to_string(),
        ),
        (
            urn("postgres", "app.public.items"),
            items.clone(),
            "COPY".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(edges, expected);
    let job = &report["jobs"][0];
    assert_eq!(job["job"], "urn:li:dataJob:(urn:li:dataFlow:(tarn,shop,DEV),cdc)");
    assert_eq!(
        job["in"],
        serde_json::json!([urn("postgres", "app.public.items")])
    );
    assert_eq!(job["out"], serde_json::json!([items]));
    // The schema names the key and the types.
    let file_json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let schema = file_json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["entityUrn"] == items && m["aspectName"] == "schemaMetadata")
        .unwrap();
    let fields = &schema["aspect"]["json"]["fields"];
    assert_eq!(fields[0]["fieldPath"], "id");
    assert_eq!(fields[0]["isPartOfKey"], true);
    assert_eq!(fields[0]["nativeDataType"], "long");
    assert_eq!(fields[1]["isPartOfKey"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datahub_push_sends_every_aspect_with_the_token_and_serve_sends_changes() {
    let lake = lineage_lake().await;
    let (url, received) = gms(StatusCode::OK).await;
    let gms_set = format!("datahub.gms_url={url}");
    let (ok, _, err) = tarn(
        lake.path(),
        &[
            "--set",
            &gms_set,
            "--set",
            "datahub.token=s3cret",
            "catalog",
            "push",
            "datahub",
        ],
    );
    assert!(ok, "{err}");
    let file = format!("{}/datahub.json", lake.path().display());
    let (ok, _, _) = tarn(lake.path(), &["catalog", "export", "datahub", &file]);
    assert!(ok);
    let exported: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), exported.len());
        for ((auth, restli, body), file_mcp) in got.iter().zip(&exported) {
            assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
            assert_eq!(restli.as_deref(), Some("2.0.0"));
            let proposal = &body["proposal"];
            assert_eq!(proposal["entityUrn"], file_mcp["entityUrn"]);
            assert_eq!(proposal["aspect"]["contentType"], "application/json");
            // The aspect travels as a JSON string, equal to the file's aspect.
            let aspect: Value = serde_json::from_str(proposal["aspect"]["value"].as_str().unwrap()).unwrap();
            assert_eq!(aspect, file_mcp["aspect"]["json"]);
        }
    }

    // A GMS that refuses the token: a clear error.
    let (denied, _) = gms(StatusCode::UNAUTHORIZED).await;
    let (ok, _, err) = tarn(
        lake.path(),
        &[
            "--set",
            &format!("datahub.gms_url={denied}"),
            "catalog",
            "push",
            "datahub",
        ],
    );
    assert!(
        !ok && err.contains("HTTP 401") && err.contains("check datahub.token"),
        "{err}"
    );
    let (ok, _, err) = tarn(lake.path(), &["catalog", "push", "datahub"]);
    assert!(!ok && err.contains("datahub.gms_url"), "{err}");
    let (ok, _, err) = tarn(
        lake.path(),
        &["--set", "datahub.gms_url=ftp://x", "catalog", "push", "datahub"],
    );
    assert!(!ok && err.contains("key `datahub.gms_url`"), "{err}");

    // `tarn serve` pushes everything once, then only what changes.
    let (url, received) = gms(StatusCode::OK).await;
    let mut serve = std::process::Command::new(crate::tarn_bin())
        .args(["--data-dir", &lake.path().display().to_string()])
        .args([
            "--set",
            &format!("datahub.gms_url={url}"),
            "--set",
            "datahub.interval=200ms",
        ])
        .args([
            "--set",
            "server.pg_listen=127.0.0.1:0",
            "--set",
            "server.http_listen=127.0.0.1:0",
        ])
        .arg("serve")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "GMS got {} of {n} aspects: {what}",
                received.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let total = exported.len();
    tokio::task::block_in_place(|| wait(total, "the first push"));
    // A new table (another process's commit): its two aspects, nothing else again.
    lake.exec("CREATE TABLE sales.late (id BIGINT)").await;
    tokio::task::block_in_place(|| wait(total + 2, "the new table"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got = received.lock().unwrap().clone();
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(got.len(), total + 2, "unchanged aspects were sent again");
    let late: Vec<&Value> = got[total..]
        .iter()
        .map(|(_, _, b)| &b["proposal"]["entityUrn"])
        .collect();
    // `tarn serve` runs on the defaults: environment PROD.
    let late_urn = urn("iceberg", "sales.late").replace(",DEV)", ",PROD)");
    assert!(late.iter().all(|u| u.as_str() == Some(&late_urn)), "{late:?}");
}
