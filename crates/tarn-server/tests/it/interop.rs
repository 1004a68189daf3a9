//! Interoperability with independent Iceberg readers and writers: pyiceberg's `SqlCatalog` on
//! the very same catalog file, and DuckDB's `iceberg_scan`.

use tarn_test_utils::run_python;

use crate::TestLake;

fn reader_args(t: &TestLake, table: &str) -> Vec<String> {
    vec![
        "--uri".into(),
        format!("sqlite:///{}", t.path().join("catalog.db").display()),
        "--warehouse".into(),
        t.config.warehouse_url(),
        "--name".into(),
        t.config.catalog.name.clone(),
        "--table".into(),
        table.into(),
    ]
}

fn python(command: &str, args: &[String]) -> serde_json::Value {
    let mut all = vec![command.to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = run_python("lake_readers.py", &refs).unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_what_tarn_wrote() {
    let t = TestLake::new().await;
    t.exec("CREATE SCHEMA shop").await;
    t.exec(
        "CREATE TABLE shop.orders (id BIGINT NOT NULL, region VARCHAR, amount DOUBLE, placed DATE) \
         PARTITIONED BY (region, month(placed))",
    )
    .await;
    t.exec("INSERT INTO shop.orders VALUES (1, 'eu', 10.5, DATE '2026-01-03'), (2, 'us', 20.25, DATE '2026-02-04')")
        .await;
    t.exec("INSERT INTO shop.orders VALUES (3, 'eu', NULL, DATE '2026-02-05'), (4, NULL, 1.0, NULL)")
        .await;
    let ours = t
        .query("SELECT CAST(id AS VARCHAR) AS sid, region, amount, placed FROM shop.orders ORDER BY id")
        .await;
    assert_eq!(ours.len(), 4);

    let seen = python("read", &reader_args(&t, "shop.orders"));
    assert_eq!(seen["snapshots"], 2);
    assert_eq!(seen["format_version"], 2);
    let expected = serde_json::json!([
        ["1", "eu", "10.5", "2026-01-03"],
        ["2", "us", "20.25", "2026-02-04"],
        ["3", "eu", null, "2026-02-05"],
        ["4", null, "1.0", null]
    ]);
    assert_eq!(seen["pyiceberg"], expected, "pyiceberg rows");
    assert_eq!(seen["duckdb"], expected, "duckdb rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarn_reads_and_appends_to_a_pyiceberg_table() {
    let t = TestLake::new().await;
    let args = reader_args(&t, "ext.scores");
    python("write", &args);
    t.session.refresh().await.unwrap();
    assert_eq!(
        t.query("SELECT id, name, score, day FROM ext.scores ORDER BY id")
            .await,
        vec![
            "1|alpha|1.5|2026-01-01",
            "2|beta|NULL|2026-02-01",
            "3|NULL|3.25|NULL"
        ]
    );
    t.exec("INSERT INTO ext.scores VALUES (4, 'tarn', 4.0, DATE '2026-04-01')")
        .await;
    python("append", &args);
    assert_eq!(t.query("SELECT count(*) FROM ext.scores").await, vec!["6"]);
    let seen = python("read", &args);
    assert_eq!(seen["snapshots"], 3);
    let ids: Vec<String> = seen["pyiceberg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let mut ids_sorted: Vec<i64> = ids.iter().map(|s| s.parse().unwrap()).collect();
    ids_sorted.sort();
    assert_eq!(ids_sorted, vec![1, 2, 3, 4, 10, 11]);
    assert_eq!(seen["pyiceberg"], seen["duckdb"]);
}
