//! `tarn ingest airbyte` with real connectors: `source-faker` (PyPI `airbyte-source-faker`,
//! in its own venv `.venv-airbyte`, see scripts/setup.sh) and `tests/interop/airbyte_source.py`,
//! a small connector speaking the protocol whose records and states are deterministic (record
//! i has id i; each STATE covers exactly the records before it), so a sync can be checked
//! against the connector's own output. The tables are read back through tarn's SQL, and by
//! pyiceberg and DuckDB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tarn_test_utils::{python, run_python, workspace_root};

use crate::{TestLake, tarn, tarn_bin};

/// The test connector's command.
pub(crate) fn test_source() -> String {
    format!(
        "{} {}",
        python().unwrap().display(),
        workspace_root().join("tests/interop/airbyte_source.py").display()
    )
}

/// `source-faker` from the venv scripts/setup.sh makes.
fn faker() -> String {
    let path = workspace_root().join(".venv-airbyte/bin/source-faker");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (it installs airbyte-source-faker)",
        path.display()
    );
    path.display().to_string()
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// Runs `tarn ingest airbyte` with `extra` arguments; returns (ok, stdout, stderr).
fn ingest(
    t: &TestLake,
    connector: &str,
    config: &Path,
    namespace: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let config = config.display().to_string();
    let mut args = vec![
        "ingest",
        "airbyte",
        "--connector",
        connector,
        "--config",
        &config,
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    tarn(t.path(), &args)
}

fn ingest_ok(t: &TestLake, connector: &str, config: &Path, namespace: &str, extra: &[&str]) -> String {
    let (ok, out, err) = ingest(t, connector, config, namespace, extra);
    assert!(ok, "tarn ingest airbyte failed:\n{out}\n{err}");
    err
}

/// A configured catalog of the test connector's stream (its schema as `discover` prints it)
/// in `sync_mode` / `destination`.
fn items_catalog(dir: &Path, name: &str, sync_mode: &str, destination: &str) -> PathBuf {
    let stream = json!({
        "name": "items",
        "json_schema": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": ["null", "string"]}, "price": {"type": "number"},
            "active": {"type": "boolean"}, "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}},
            "tags": {"type": "array", "items": {"type": "string"}}, "extra": {}
        }},
        "supported_sync_modes": ["full_refresh", "incremental"],
        "source_defined_primary_key": [["id"]]
    });
    write_json(
        dir,
        name,
        &json!({"streams": [{"stream": stream, "sync_mode": sync_mode, "destination_sync_mode": destination,
                              "cursor_field": ["id"], "primary_key": [["id"]]}]}),
    )
}

/// `count(*)|count(DISTINCT id)|min(id)|max(id)` of `table`.
async fn ids(t: &TestLake, table: &str) -> String {
    let session = t.second_session().await;
    crate::query(
        &session,
        &format!("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}"),
    )
    .await
    .unwrap()
    .join("\n")
}

async fn snapshot_count(t: &TestLake, table: &str) -> usize {
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let ident = tarn_lake::parse_table_name(table).unwrap();
    match lake.load_table(&ident).await {
        Ok(table) => table.metadata().snapshots().count(),
        Err(_) => 0,
    }
}

/// The states the commits of `table` hold, oldest first.
async fn stored_states(t: &TestLake, table: &str) -> Vec<Value> {
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let table = lake
        .load_table(&tarn_lake::parse_table_name(table).unwrap())
        .await
        .unwrap();
    let mut snapshots: Vec<_> = table.metadata().snapshots().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    snapshots
        .iter()
        .filter_map(|s| s.summary().additional_properties.get("tarn.airbyte.state"))
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connector_in_every_sync_mode() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let source = test_source();
    let config = |name: &str, v: Value| write_json(&dir, name, &v);

    // Discovered: incremental + append_dedup (the stream has a cursor and a primary key).
    let c12 = config("c12.json", json!({"count": 12, "state_every": 5}));
    let err = ingest_ok(&t, &source, &c12, "ab", &[]);
    assert!(err.contains("items: 12 record(s) into ab.items"), "{err}");
    assert_eq!(ids(&t, "ab.items").await, "12|12|1|12");
    let states = stored_states(&t, "ab.items").await;
    assert_eq!(
        states.last().unwrap()["stream"]["stream_state"]["cursor"],
        12,
        "{states:?}"
    );
    // The types of the JSON schema, nested ones included.
    let row = t
        .query(
            "SELECT name, price, active, day, at, address['city'], address['zip'], tags, extra, extra IS NULL \
             FROM ab.items WHERE id IN (3, 4) ORDER BY id",
        )
        .await;
    assert_eq!(
        row,
        vec![
            "item 3|4.5|false|2026-01-04|2026-01-01T00:00:03Z|city 0|1003|[t1, all]|{\"n\":3}|false",
            "item 4|6.0|true|2026-01-05|2026-01-01T00:00:04Z|city 1|1004|[t0, all]|[4]|false",
        ]
    );
    let types = t
        .query("SELECT arrow_typeof(id), arrow_typeof(day), arrow_typeof(at), arrow_typeof(_airbyte_emitted_at) FROM ab.items LIMIT 1")
        .await;
    assert_eq!(
        types,
        vec!["Int64|Date32|Timestamp(µs, \"+00:00\")|Timestamp(µs, \"+00:00\")"]
    );

    // The next run resumes after the stored state: only 13..15 are read.
    let c15 = config("c15.json", json!({"count": 15, "state_every": 5}));
    let err = ingest_ok(&t, &source, &c15, "ab", &[]);
    assert!(err.contains("items: 3 record(s)"), "{err}");
    assert_eq!(ids(&t, "ab.items").await, "15|15|1|15");
    // Records of keys the table has replace their rows (append_dedup).
    let updates = config("u.json", json!({"count": 15, "state_every": 5, "updates": 3}));
    ingest_ok(&t, &source, &updates, "ab", &[]);
    assert_eq!(ids(&t, "ab.items").await, "15|15|1|15");
    assert_eq!(
        t.query("SELECT id FROM ab.items WHERE name = 'updated' ORDER BY id")
            .await,
        vec!["1", "2", "3"]
    );

    // pyiceberg and DuckDB read the same rows.
    let args = [
        "read".to_string(),
        "--uri".into(),
        format!("sqlite:///{}", t.path().join("catalog.db").display()),
        "--warehouse".into(),
        t.config.warehouse_url(),
        "--name".into(),
        t.config.catalog.name.clone(),
        "--table".into(),
        "ab.items".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let seen: Value = serde_json::from_str(run_python("lake_readers.py", &refs).unwrap().trim()).unwrap();
    let py = seen["pyiceberg"].as_array().unwrap();
    let duck = seen["duckdb"].as_array().unwrap();
    assert_eq!(py.len(), 15);
    assert_eq!(duck.len(), 15);
    let id_names = |rows: &[Value]| -> BTreeMap<String, String> {
        // Columns are in schema order: sorted properties, then `_airbyte_emitted_at`.
        rows.iter()
            .map(|r| {
                (
                    r[5].as_str().unwrap().to_string(),
                    r[6].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(id_names(py), id_names(duck));
    assert_eq!(id_names(py)["2"], "updated");

    // Full refresh + overwrite: each run replaces the rows.
    let overwrite = items_catalog(&dir, "overwrite.json", "full_refresh", "overwrite");
    let c8 = config("c8.json", json!({"count": 8}));
    let overwrite_arg = overwrite.display().to_string();
    ingest_ok(&t, &source, &c8, "fo", &["--catalog", &overwrite_arg]);
    ingest_ok(&t, &source, &c8, "fo", &["--catalog", &overwrite_arg]);
    assert_eq!(ids(&t, "fo.items").await, "8|8|1|8");
    let c5 = config("c5.json", json!({"count": 5}));
    ingest_ok(&t, &source, &c5, "fo", &["--catalog", &overwrite_arg]);
    assert_eq!(ids(&t, "fo.items").await, "5|5|1|5");

    // Full refresh + append: each run adds every record again.
    let append = items_catalog(&dir, "append.json", "full_refresh", "append");
    let append_arg = append.display().to_string();
    let c4 = config("c4.json", json!({"count": 4}));
    ingest_ok(&t, &source, &c4, "fa", &["--catalog", &append_arg]);
    ingest_ok(&t, &source, &c4, "fa", &["--catalog", &append_arg]);
    assert_eq!(ids(&t, "fa.items").await, "8|4|1|4");

    // Incremental + append, committing at every STATE message.
    let incremental = items_catalog(&dir, "incremental.json", "incremental", "append");
    let incremental_arg = incremental.display().to_string();
    let c6 = config("c6.json", json!({"count": 6, "state_every": 2}));
    ingest_ok(
        &t,
        &source,
        &c6,
        "ia",
        &["--catalog", &incremental_arg, "--commit-interval", "0s"],
    );
    assert_eq!(snapshot_count(&t, "ia.items").await, 3);
    let c9 = config("c9.json", json!({"count": 9, "state_every": 2}));
    ingest_ok(
        &t,
        &source,
        &c9,
        "ia",
        &["--catalog", &incremental_arg, "--commit-interval", "0s"],
    );
    assert_eq!(ids(&t, "ia.items").await, "9|9|1|9");
}

/// The ids the test connector itself emits for `config` (no state): the ground truth.
fn connector_ids(config: &Path, catalog: &Path) -> Vec<i64> {
    let out = std::process::Command::new(python().unwrap())
        .arg(workspace_root().join("tests/interop/airbyte_source.py"))
        .args(["read", "--config"])
        .arg(config)
        .arg("--catalog")
        .arg(catalog)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| m["type"] == "RECORD")
        .map(|m| m["record"]["data"]["id"].as_i64().unwrap())
        .collect()
}

async fn table_ids(t: &TestLake, table: &str) -> Vec<i64> {
    let session = t.second_session().await;
    crate::query(&session, &format!("SELECT id FROM {table} ORDER BY id"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sync_resumes_exactly_once() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    // Incremental + append: a record read twice would be a duplicate row.
    let catalog = items_catalog(&dir, "incremental.json", "incremental", "append");
    let config = write_json(
        &dir,
        "c.json",
        &json!({"count": 300, "state_every": 20, "sleep_ms": 40}),
    );
    let expected = connector_ids(&config, &catalog);
    assert_eq!(expected, (1..=300).collect::<Vec<_>>());

    let mut child = std::process::Command::new(tarn_bin())
        .arg("--data-dir")
        .arg(t.path())
        .args(["ingest", "airbyte", "--connector", &test_source(), "--config"])
        .arg(&config)
        .arg("--catalog")
        .arg(&catalog)
        .args(["--namespace", "k", "--commit-interval", "0s", "--skip-check"])
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once a few states are committed, mid-sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_count(&t, "k.items").await < 3 {
        assert!(Instant::now() < deadline, "no commits within 60s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = table_ids(&t, "k.items").await;
    assert!(
        partial.len() < 300,
        "the sync finished before the kill: {}",
        partial.len()
    );
    assert_eq!(
        partial,
        (1..=partial.len() as i64).collect::<Vec<_>>(),
        "a prefix, once"
    );

    // Killed before its first commit (files written, nothing committed): nothing to see.
    let catalog_arg = catalog.display().to_string();
    let (ok, _, err) = {
        let out = std::process::Command::new(tarn_bin())
            .arg("--data-dir")
            .arg(t.path())
            .args(["ingest", "airbyte", "--connector", &test_source(), "--config"])
            .arg(&config)
            .args([
                "--catalog",
                &catalog_arg,
                "--namespace",
                "k",
                "--commit-interval",
                "0s",
            ])
            .env("TARN_FAILPOINTS", "airbyte.before_commit=abort")
            .output()
            .unwrap();
        (
            out.status.success(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(
        !ok && err.contains("failpoint airbyte.before_commit: aborting"),
        "{err}"
    );
    assert_eq!(table_ids(&t, "k.items").await, partial);

    // Run again: it resumes from the last committed state; no duplicate, no gap.
    ingest_ok(
        &t,
        &test_source(),
        &config,
        "k",
        &["--catalog", &catalog_arg, "--commit-interval", "0s"],
    );
    assert_eq!(table_ids(&t, "k.items").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_failures_leave_the_table_unchanged() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let source = test_source();
    let first = write_json(&dir, "first.json", &json!({"count": 3}));
    ingest_ok(&t, &source, &first, "f", &[]);
    let before = t.metadata_location("f.items").await;
    let cases = [
        (
            "crash",
            vec!["exited with", "lost the connection to the source database"],
        ),
        (
            "trace",
            vec!["failed in stream items: the API refused the token (HTTP 401)"],
        ),
        ("malformed", vec!["malformed message at line", "\"RECORD\""]),
        (
            "violate",
            vec![
                "stream items: a record does not fit the stream's schema (table f.items)",
                "not-a-number",
            ],
        ),
    ];
    for (fail, wanted) in cases {
        let config = write_json(
            &dir,
            &format!("{fail}.json"),
            &json!({"count": 20, "state_every": 2, "fail": fail, "fail_after": 5}),
        );
        let (ok, _, err) = ingest(&t, &source, &config, "f", &[]);
        assert!(!ok, "{fail}: the sync succeeded");
        for w in wanted {
            assert!(err.contains(w), "{fail}: {w:?} not in the error:\n{err}");
        }
        assert_eq!(
            t.metadata_location("f.items").await,
            before,
            "{fail} changed the table"
        );
        assert_eq!(ids(&t, "f.items").await, "3|3|1|3");
    }
    // A check that fails names the connector's message.
    let bad = write_json(&dir, "bad.json", &json!({"count": -1}));
    let (ok, _, err) = ingest(&t, &source, &bad, "f", &[]);
    assert!(
        !ok && err.contains("cannot connect with this config (check): count must not be negative"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faker_full_refresh_and_incremental() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let faker = faker();
    let config = write_json(
        &dir,
        "faker.json",
        &json!({"count": 25, "seed": 7, "records_per_slice": 10, "always_updated": false, "parallelism": 1}),
    );
    // The catalog tarn syncs by default, printed: every stream incremental + append_dedup.
    let config_arg = config.display().to_string();
    let (ok, printed, err) = tarn(
        t.path(),
        &[
            "ingest",
            "airbyte",
            "--connector",
            &faker,
            "--config",
            &config_arg,
            "--namespace",
            "fk",
            "--print",
            "catalog",
        ],
    );
    assert!(ok, "{err}");
    let catalog: Value = serde_json::from_str(&printed).unwrap();
    let streams = catalog["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3);
    for s in streams {
        assert_eq!(s["sync_mode"], "incremental");
        assert_eq!(s["destination_sync_mode"], "append_dedup");
    }
    let catalog_path = write_json(&dir, "catalog.json", &catalog);

    // The connector's own output, per stream.
    let out = std::process::Command::new(&faker)
        .args(["read", "--config"])
        .arg(&config)
        .arg("--catalog")
        .arg(&catalog_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut own: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        if m["type"] == "RECORD" {
            own.entry(m["record"]["stream"].as_str().unwrap().to_string())
                .or_default()
                .push(m["record"]["data"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(own.len(), 3, "{own:?}");

    ingest_ok(&t, &faker, &config, "fk", &[]);
    for (stream, ids) in &own {
        let mut ids = ids.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(table_ids(&t, &format!("fk.{stream}")).await, ids, "{stream}");
    }
    // Nested objects are structs.
    let cities = t.query("SELECT count(address['city']) FROM fk.users").await;
    assert_eq!(cities, vec![own["users"].len().to_string()]);
    // Again, with the stored states: nothing doubles.
    ingest_ok(&t, &faker, &config, "fk", &[]);
    for (stream, ids) in &own {
        let mut ids = ids.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(table_ids(&t, &format!("fk.{stream}")).await, ids, "{stream}");
    }

    // Full refresh + overwrite of one stream, twice: the table holds one copy.
    let mut full = catalog.clone();
    full["streams"] = Value::Array(
        streams
            .iter()
            .filter(|s| s["stream"]["name"] == "users")
            .map(|s| {
                let mut s = s.clone();
                s["sync_mode"] = json!("full_refresh");
                s["destination_sync_mode"] = json!("overwrite");
                s
            })
            .collect(),
    );
    let full_path = write_json(&dir, "full.json", &full).display().to_string();
    ingest_ok(&t, &faker, &config, "ff", &["--catalog", &full_path]);
    ingest_ok(&t, &faker, &config, "ff", &["--catalog", &full_path]);
    let n = own["users"].len();
    assert_eq!(ids(&t, "ff.users").await, format!("{n}|{n}|1|{n}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_properties_add_columns() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let source = test_source();
    // First with a catalog that knows two of the stream's properties (others are not stored).
    let mut narrow: Value = serde_json::from_str(
        &std::fs::read_to_string(items_catalog(&dir, "full.json", "incremental", "append")).unwrap(),
    )
    .unwrap();
    narrow["streams"][0]["stream"]["json_schema"]["properties"] =
        json!({"id": {"type": "integer"}, "name": {"type": "string"}});
    let narrow = write_json(&dir, "narrow.json", &narrow).display().to_string();
    let c3 = write_json(&dir, "c3.json", &json!({"count": 3}));
    ingest_ok(&t, &source, &c3, "ev", &["--catalog", &narrow]);
    assert_eq!(
        t.query("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'ev' AND table_name = 'items'")
            .await,
        vec!["3"]
    );
    // Then the whole schema: the table gains the columns; old rows read NULL there. (A list
    // column added to a table with rows is stored as JSON text: docs/airbyte.md.)
    let full = dir.join("full.json").display().to_string();
    let c5 = write_json(&dir, "c5.json", &json!({"count": 5}));
    let err = ingest_ok(&t, &source, &c5, "ev", &["--catalog", &full]);
    assert!(err.contains("items: 2 record(s)"), "{err}");
    assert_eq!(
        t.query("SELECT id, price, address['city'], tags FROM ev.items ORDER BY id")
            .await,
        vec![
            "1|NULL|NULL|NULL",
            "2|NULL|NULL|NULL",
            "3|NULL|NULL|NULL",
            "4|6.0|city 1|[\"t0\",\"all\"]",
            "5|7.5|city 2|[\"t1\",\"all\"]",
        ]
    );
}

/// `items_catalog` with the stream's `seq` column and `cursor_field: ["seq"]` (dedup).
fn seq_catalog(dir: &Path) -> PathBuf {
    let path = items_catalog(dir, "seq.json", "incremental", "append_dedup");
    let mut catalog: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    catalog["streams"][0]["stream"]["json_schema"]["properties"]["seq"] =
        json!({"type": ["null", "integer"]});
    catalog["streams"][0]["cursor_field"] = json!(["seq"]);
    write_json(dir, "seq.json", &catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_keeps_the_record_with_the_greatest_cursor() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let catalog = seq_catalog(&dir).display().to_string();
    // In one batch: id 1's greatest cursor comes first; id 2's two records tie (the later wins).
    let first = write_json(
        &dir,
        "first.json",
        &json!({"count": 3, "versions": [
            {"id": 1, "seq": 5, "name": "five"}, {"id": 1, "seq": 3, "name": "three"},
            {"id": 2, "seq": 2, "name": "a"}, {"id": 2, "seq": 2, "name": "b"}]}),
    );
    ingest_ok(&t, &test_source(), &first, "cd", &["--catalog", &catalog]);
    assert_eq!(
        t.query("SELECT id, seq, name FROM cd.items ORDER BY id").await,
        vec!["1|5|five", "2|2|b", "3|NULL|item 3"]
    );
    // Across batches: a record older than the table's row of its key does not replace it;
    // newer ones (and any value over a NULL cursor) do.
    let second = write_json(
        &dir,
        "second.json",
        &json!({"count": 3, "versions": [
            {"id": 1, "seq": 4, "name": "four"}, {"id": 2, "seq": 9, "name": "nine"},
            {"id": 3, "seq": 1, "name": "one"}, {"id": 4, "seq": 1, "name": "new"}]}),
    );
    ingest_ok(&t, &test_source(), &second, "cd", &["--catalog", &catalog]);
    assert_eq!(
        t.query("SELECT id, seq, name FROM cd.items ORDER BY id").await,
        vec!["1|5|five", "2|9|nine", "3|1|one", "4|1|new"]
    );
}

/// A configured catalog of the test connector's two streams, incremental + append.
fn two_streams_catalog(dir: &Path) -> PathBuf {
    let one: Value = serde_json::from_str(
        &std::fs::read_to_string(items_catalog(dir, "one.json", "incremental", "append")).unwrap(),
    )
    .unwrap();
    let items = one["streams"][0].clone();
    let mut others = items.clone();
    others["stream"]["name"] = json!("others");
    write_json(dir, "two.json", &json!({"streams": [items, others]}))
}

fn spawn_ingest(t: &TestLake, config: &Path, catalog: &Path, namespace: &str) -> std::process::Child {
    std::process::Command::new(tarn_bin())
        .arg("--data-dir")
        .arg(t.path())
        .args(["ingest", "airbyte", "--connector", &test_source(), "--config"])
        .arg(config)
        .arg("--catalog")
        .arg(catalog)
        .args([
            "--namespace",
            namespace,
            "--commit-interval",
            "0s",
            "--skip-check",
        ])
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_and_legacy_states_resume_exactly_once() {
    let t = TestLake::new().await;
    let dir = t.path().to_path_buf();
    let catalog = two_streams_catalog(&dir);
    let catalog_arg = catalog.display().to_string();
    for kind in ["GLOBAL", "LEGACY"] {
        let ns = kind.to_lowercase();
        let config = write_json(
            &dir,
            &format!("{ns}.json"),
            &json!({"count": 300, "state_every": 20, "sleep_ms": 40, "streams": ["items", "others"],
                    "state_kind": kind}),
        );
        let expected = connector_ids(&config, &catalog);
        assert_eq!(expected.len(), 600, "{kind}: both streams, 1..300 each");

        // kill -9 mid-sync, once a few epochs are committed.
        let mut child = spawn_ingest(&t, &config, &catalog, &ns);
        let items = format!("{ns}.items");
        let others = format!("{ns}.others");
        let deadline = Instant::now() + Duration::from_secs(60);
        while snapshot_count(&t, &others).await < 3 {
            assert!(Instant::now() < deadline, "{kind}: no commits within 60s");
            assert!(
                child.try_wait().unwrap().is_none(),
                "{kind}: the sync ended before it was killed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let partial = table_ids(&t, &items).await;
        assert!(partial.len() < 300, "{kind}: the sync finished before the kill");
        assert_eq!(
            partial,
            (1..=partial.len() as i64).collect::<Vec<_>>(),
            "{kind}: a prefix, once"
        );
        let states = stored_states(&t, &items).await;
        assert_eq!(states.last().unwrap()["type"], kind, "{states:?}");

        // Killed between the two tables' commits of one state: `items` holds the epoch,
        // `others` does not.
        let out = std::process::Command::new(tarn_bin())
            .arg("--data-dir")
            .arg(t.path())
            .args(["ingest", "airbyte", "--connector", &test_source(), "--config"])
            .arg(&config)
            .args([
                "--catalog",
                &catalog_arg,
                "--namespace",
                &ns,
                "--commit-interval",
                "0s",
                "--skip-check",
            ])
            .env("TARN_FAILPOINTS", "airbyte.between_commits=abort")
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{kind}: the failpoint did not stop the sync"
        );
        let (in_items, in_others) = (table_ids(&t, &items).await, table_ids(&t, &others).await);
        assert!(
            in_items.len() > in_others.len(),
            "{kind}: items {} rows, others {} rows",
            in_items.len(),
            in_others.len()
        );

        // Resumed: the half-committed state is finished first, then the sync goes on from it.
        let err = ingest_ok(
            &t,
            &test_source(),
            &config,
            &ns,
            &["--catalog", &catalog_arg, "--commit-interval", "0s"],
        );
        assert!(err.contains("committing this table's part"), "{kind}: {err}");
        assert_eq!(
            table_ids(&t, &items).await,
            (1..=300).collect::<Vec<_>>(),
            "{kind}: items"
        );
        assert_eq!(
            table_ids(&t, &others).await,
            (1..=300).collect::<Vec<_>>(),
            "{kind}: others"
        );
        // A run with nothing new adds nothing.
        ingest_ok(&t, &test_source(), &config, &ns, &["--catalog", &catalog_arg]);
        assert_eq!(table_ids(&t, &others).await.len(), 300, "{kind}");
    }
}

/// What a connector says reaches tarn's log: its LOG messages at their level (`tarn::airbyte::
/// connector`), its stream statuses and row estimates as progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_logs_statuses_and_estimates_reach_the_log() {
    let t = TestLake::new().await;
    let config = write_json(
        t.path(),
        "talk.json",
        &json!({"count": 7, "warn": "the API answers slowly; backing off"}),
    );
    let err = ingest_ok(&t, &test_source(), &config, "talk", &[]);
    let line = |needles: &[&str]| err.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        line(&["INFO", "tarn::airbyte::connector", "reading after"]),
        "the connector's INFO LOG:\n{err}"
    );
    assert!(
        line(&[
            "WARN",
            "tarn::airbyte::connector",
            "the API answers slowly; backing off"
        ]),
        "the connector's WARN LOG:\n{err}"
    );
    assert!(line(&["stream status", "items", "STARTED"]), "{err}");
    assert!(line(&["stream status", "items", "COMPLETE"]), "{err}");
    assert!(line(&["the connector estimates", "items", "7"]), "{err}");
    assert_eq!(ids(&t, "talk.items").await, "7|7|1|7");
}
