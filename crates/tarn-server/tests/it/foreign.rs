//! Tables other engines wrote: Spark 3.5 with Iceberg 1.10 (through Iceberg's `JdbcCatalog`)
//! and pyiceberg 0.12 (through its `SqlCatalog`), both on the test lake's own catalog
//! database, build one table per class of foreign table (`tests/interop/foreign_tables.py`
//! lists them) and read it back; tarn must read exactly the same rows. Then tarn appends to
//! Spark's tables and Spark must read tarn's rows too.

use std::collections::BTreeMap;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;
use tarn_query::{Output, TarnSession};
use tarn_test_utils::run_python;

use crate::TestLake;

type Rows = Vec<Vec<Option<String>>>;

/// Runs `foreign_tables.py COMMAND` against `t`'s catalog; the writer sees the warehouse as
/// `warehouse` (Spark's Hadoop file system as `file:/dir`, pyiceberg as `file:///dir`).
fn fixture(t: &TestLake, command: &str, warehouse: &str, extra: &[&str]) -> BTreeMap<String, Value> {
    let db = t.path().join("catalog.db").display().to_string();
    let mut args = vec![
        command,
        "--db",
        &db,
        "--warehouse",
        warehouse,
        "--name",
        &t.config.catalog.name,
    ];
    args.extend_from_slice(extra);
    let out = run_python("foreign_tables.py", &args).unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{command} printed no JSON ({e}):\n{out}"))
}

fn spark_warehouse(t: &TestLake) -> String {
    format!("file:{}", t.path().join("warehouse").display())
}

/// Columns and rows of `SELECT * FROM table` as tarn reads it: cells as text, NULL as `None`,
/// rows sorted.
async fn tarn_rows(session: &TarnSession, table: &str) -> (Vec<String>, Rows) {
    let statement = TarnSession::prepare(&format!("SELECT * FROM {table}"))
        .unwrap()
        .remove(0);
    let Output::Rows(stream) = session
        .run(&statement)
        .await
        .unwrap_or_else(|e| panic!("tarn cannot read {table}: {e}"))
    else {
        panic!("SELECT returned no rows");
    };
    let schema = stream.schema();
    let batches = datafusion::physical_plan::common::collect(stream)
        .await
        .unwrap_or_else(|e| panic!("tarn cannot read {table}: {e}"));
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in &batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    rows.sort();
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    (columns, rows)
}

/// The writer's columns and rows of one table from the fixture's JSON, rows sorted.
fn writer_rows(out: &BTreeMap<String, Value>, table: &str) -> (Vec<String>, Rows) {
    let entry = &out[table];
    let columns = serde_json::from_value(entry["columns"].clone()).unwrap();
    let mut rows: Rows = serde_json::from_value(entry["rows"].clone()).unwrap();
    rows.sort();
    (columns, rows)
}

/// Asserts tarn reads `table` as its writer did; returns the rows.
async fn assert_reads_as_writer(session: &TarnSession, out: &BTreeMap<String, Value>, table: &str) -> Rows {
    let expected = writer_rows(out, table);
    let seen = tarn_rows(session, table).await;
    assert_eq!(seen.0, expected.0, "columns of {table}");
    assert_eq!(seen.1, expected.1, "rows of {table}");
    assert!(!seen.1.is_empty(), "{table} is empty");
    seen.1
}

fn delete_files(out: &BTreeMap<String, Value>, table: &str) -> Vec<String> {
    serde_json::from_value(out[table]["delete_files"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_spark_tables_read_as_spark_reads_them_and_take_tarn_inserts() {
    let t = TestLake::new().await;
    let warehouse = spark_warehouse(&t);
    let spark = fixture(&t, "spark-write", &warehouse, &[]);
    t.session.refresh().await.unwrap();

    // The fixtures are what they claim to be.
    for (table, v) in &spark {
        let location = v["location"].as_str().unwrap();
        assert!(
            location.starts_with("file:/") && !location.starts_with("file://"),
            "{table}: Spark wrote {location}, not a Hadoop-style location"
        );
    }
    assert_eq!(
        delete_files(&spark, "spark.mor"),
        ["1:PARQUET"],
        "position deletes"
    );
    assert_eq!(delete_files(&spark, "spark.dv"), ["1:PUFFIN"], "deletion vectors");
    assert_eq!(
        delete_files(&spark, "spark.eq"),
        ["2:PARQUET"],
        "equality deletes"
    );
    assert_eq!(
        delete_files(&spark, "spark.evolved"),
        ["1:PARQUET"],
        "position deletes"
    );

    for table in [
        "spark.plain",
        "spark.mor",
        "spark.dv",
        "spark.eq",
        "spark.evolved",
        "spark.uuids",
    ] {
        assert_reads_as_writer(&t.session, &spark, table).await;
    }
    // Filters and projections go through the same delete handling.
    assert_eq!(
        t.query("SELECT count(*), sum(qty) FROM spark.dv WHERE kind = 'b'")
            .await,
        t.query("SELECT count(*), sum(qty) FROM spark.mor WHERE kind = 'b'")
            .await,
    );
    assert_eq!(
        t.query("SELECT id FROM spark.uuids WHERE u = 'f81d4fae-7dec-11d0-a765-00a0c91e6bf6'")
            .await,
        ["1"]
    );
    // Time travel shows `uuid` columns as UUIDs too.
    let snapshot = t
        .query("SELECT snapshot_id FROM spark.\"uuids$snapshots\" ORDER BY committed_at DESC LIMIT 1")
        .await;
    assert_eq!(
        t.query(&format!(
            "SELECT u FROM spark.\"uuids@{}\" WHERE u = 'f81d4fae-7dec-11d0-a765-00a0c91e6bf6'",
            snapshot[0]
        ))
        .await,
        ["f81d4fae-7dec-11d0-a765-00a0c91e6bf6"]
    );
    // Time travel to the current snapshot of the v3 table applies its deletion vectors too.
    let snapshot = t
        .query("SELECT snapshot_id FROM spark.\"dv$snapshots\" ORDER BY committed_at DESC LIMIT 1")
        .await;
    assert_eq!(
        t.query(&format!("SELECT count(*) FROM spark.\"dv@{}\"", snapshot[0]))
            .await,
        [writer_rows(&spark, "spark.dv").1.len().to_string()]
    );
    // The equality delete by `id` does not hide the row re-inserted after it.
    assert_eq!(t.query("SELECT note FROM spark.eq WHERE id = 4").await, ["again"]);

    // tarn appends to Spark's tables; Spark reads tarn's rows (second Spark session).
    for insert in [
        "INSERT INTO spark.plain VALUES (4, 'eu', 4.40, TIMESTAMP '2026-05-01 08:00:00', \
         TIMESTAMP '2026-05-01 08:00:00+00:00', true, 0.25, DATE '2026-05-01')",
        "INSERT INTO spark.mor VALUES (900, 'a', 9), (901, 'z', NULL)",
        "INSERT INTO spark.dv VALUES (900, 'b', 9)",
        "INSERT INTO spark.eq VALUES (2, 'keep', 'back')",
        "INSERT INTO spark.evolved VALUES (7, 70, 'seven', 7.5, 7.77, TIMESTAMP '2026-05-07 07:00:00', 'e7', 77)",
        "INSERT INTO spark.uuids VALUES (4, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'tarn')",
    ] {
        t.exec(insert).await;
    }
    let tables = "spark.plain,spark.mor,spark.dv,spark.eq,spark.evolved,spark.uuids";
    let after = fixture(&t, "spark-read", &warehouse, &["--tables", tables]);
    for table in tables.split(',') {
        let rows = assert_reads_as_writer(&t.session, &after, table).await;
        assert_eq!(
            rows.len(),
            writer_rows(&spark, table).1.len() + if table == "spark.mor" { 2 } else { 1 },
            "{table}: tarn's rows are in"
        );
    }
    assert_eq!(
        t.query("SELECT label FROM spark.uuids WHERE u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'")
            .await,
        ["tarn"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pyiceberg_tables_read_as_pyiceberg_reads_them() {
    let t = TestLake::new().await;
    let warehouse = t.config.warehouse_url();
    let py = fixture(&t, "py-write", &warehouse, &[]);
    t.session.refresh().await.unwrap();
    for table in ["py.evolved", "py.deleted", "py.uuids"] {
        assert_reads_as_writer(&t.session, &py, table).await;
    }
    // Files under all three partition specs are pruned by the right one.
    assert_eq!(
        t.query("SELECT id FROM py.evolved WHERE label = 'three'").await,
        ["3"]
    );
    assert_eq!(
        t.query("SELECT id FROM py.evolved WHERE extra = 'e4'").await,
        ["4"]
    );
    assert_eq!(
        t.query("SELECT id FROM py.uuids WHERE u = '123e4567-e89b-12d3-a456-426614174000'")
            .await,
        ["3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_uuid_columns_are_uuids_over_pgwire() {
    let served = crate::pgwire::Served::start(false);
    let dir = served.dir();
    let db = dir.join("catalog.db").display().to_string();
    let warehouse = format!("file://{}", dir.join("warehouse").display());
    run_python(
        "foreign_tables.py",
        &[
            "py-write",
            "--db",
            &db,
            "--warehouse",
            &warehouse,
            "--name",
            "tarn",
        ],
    )
    .unwrap();
    let port = served.pg_port.to_string();
    let out = run_python(
        "foreign_tables.py",
        &[
            "pg-uuid",
            "--port",
            &port,
            "--user",
            "analyst",
            "--password",
            "s3cret-pw",
        ],
    )
    .unwrap();
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    let rows = serde_json::json!([
        ["1", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"],
        ["2", null],
        ["3", "123e4567-e89b-12d3-a456-426614174000"]
    ]);
    for way in ["simple", "extended_text", "extended_binary"] {
        assert_eq!(
            seen[way]["oids"],
            serde_json::json!([20, 2950]),
            "{way}: int8, uuid"
        );
        assert_eq!(seen[way]["rows"], rows, "{way}");
    }
    // psycopg turned the values into Python UUIDs, in text and in binary.
    assert_eq!(seen["extended_text"]["python_types"], serde_json::json!(["UUID"]));
    assert_eq!(
        seen["extended_binary"]["python_types"],
        serde_json::json!(["UUID"])
    );
    assert_eq!(seen["by_text_parameter"], serde_json::json!([3]));
    let (ok, out, err) = served.psql("SELECT u FROM py.uuids WHERE id = 1");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
}
