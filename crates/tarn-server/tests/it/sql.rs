//! SQL over the lake through the library: DDL, DML, time travel, listings, errors that leave
//! tables unchanged, and concurrent writers.

use crate::TestLake;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_insert_select_partitioned() {
    let t = TestLake::new().await;
    t.exec("CREATE SCHEMA sales").await;
    t.exec(
        "CREATE TABLE sales.orders (id BIGINT NOT NULL, customer VARCHAR, amount DECIMAL(10,2), ts TIMESTAMP) \
         PARTITIONED BY (day(ts), bucket(4, id)) SORTED BY (id)",
    )
    .await;
    let tag = t
        .query(
            "INSERT INTO sales.orders VALUES \
             (1, 'ann', 10.50, TIMESTAMP '2026-01-01 10:00:00'), \
             (2, 'bob', 20.00, TIMESTAMP '2026-01-02 11:00:00'), \
             (3, NULL, NULL, TIMESTAMP '2026-01-02 12:00:00')",
        )
        .await;
    assert_eq!(tag, vec!["INSERT 0 3"]);
    assert_eq!(
        t.query("SELECT id, customer, amount FROM sales.orders ORDER BY id")
            .await,
        vec!["1|ann|10.50", "2|bob|20.00", "3|NULL|NULL"]
    );
    // Partition pruning still returns the right rows.
    assert_eq!(
        t.query("SELECT count(*) FROM sales.orders WHERE ts >= TIMESTAMP '2026-01-02 00:00:00'")
            .await,
        vec!["2"]
    );
    let table = t
        .session
        .lake()
        .load_table(&tarn_lake::parse_table_name("sales.orders").unwrap())
        .await
        .unwrap();
    let spec = table.metadata().default_partition_spec();
    assert_eq!(spec.fields().len(), 2);
    assert!(!table.metadata().default_sort_order().is_unsorted());
    let snapshot = table.metadata().current_snapshot().unwrap();
    let summary = &snapshot.summary().additional_properties;
    assert_eq!(summary.get("added-records").map(String::as_str), Some("3"));
    assert_eq!(summary.get("total-records").map(String::as_str), Some("3"));
    // Three rows in three (day, bucket) partitions at most; files are zstd Parquet.
    let data_files = std::fs::read_dir(t.path().join("warehouse/sales/orders/data"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(data_files >= 1, "data directory has partition folders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctas_time_travel_and_listings() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE t (a INT, b VARCHAR)").await;
    t.exec("INSERT INTO t VALUES (1, 'x')").await;
    let lake = t.session.lake();
    let ident = tarn_lake::parse_table_name("public.t").unwrap();
    let first = lake
        .load_table(&ident)
        .await
        .unwrap()
        .metadata()
        .current_snapshot_id()
        .unwrap();
    t.exec("INSERT INTO t SELECT a + 1, b || 'y' FROM t").await;
    assert_eq!(t.query("SELECT count(*) FROM t").await, vec!["2"]);
    assert_eq!(
        t.query(&format!("SELECT a, b FROM t FOR VERSION AS OF {first}"))
            .await,
        vec!["1|x"]
    );
    assert_eq!(t.query(&format!("SELECT a FROM \"t@{first}\"")).await, vec!["1"]);
    let err = t.error("SELECT * FROM t FOR VERSION AS OF 42").await;
    assert!(err.contains("no snapshot 42"), "{err}");

    assert_eq!(
        t.query("CREATE TABLE t2 AS SELECT a * 10 AS a10, b FROM t").await,
        vec!["SELECT 2"]
    );
    assert_eq!(t.query("SELECT a10 FROM t2 ORDER BY a10").await, vec!["10", "20"]);
    assert_eq!(
        t.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            .await,
        vec!["t", "t2"]
    );
    let shown = t.query("SHOW TABLES").await.join("\n");
    assert!(shown.contains("|public|t2|"), "{shown}");
    let described = t.query("DESCRIBE t2").await.join("\n");
    assert!(described.contains("a10|Int64"), "{described}");
    let plan = t.query("EXPLAIN SELECT a FROM t WHERE a > 1").await.join("\n");
    assert!(
        plan.contains("DataSourceExec") && plan.contains("file_type=parquet"),
        "{plan}"
    );
    let snapshots = t.query("SELECT count(*) FROM \"t$snapshots\"").await;
    assert_eq!(snapshots, vec!["2"]);

    t.exec("DROP TABLE t2").await;
    assert!(t.error("SELECT * FROM t2").await.contains("t2"));
    t.exec("DROP TABLE IF EXISTS t2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_statements_leave_tables_unchanged() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE t (a INT NOT NULL, b VARCHAR)").await;
    t.exec("INSERT INTO t VALUES (1, 'one')").await;
    let before = t.metadata_location("public.t").await;

    let err = t.error("SELEC * FROM t").await;
    assert!(
        err.to_lowercase().contains("syntax") || err.contains("SELEC"),
        "{err}"
    );
    let err = t.error("SELECT * FROM missing").await;
    assert!(err.contains("missing"), "{err}");
    let err = t.error("INSERT INTO t VALUES ('not a number', 'x')").await;
    assert!(
        err.to_lowercase().contains("cast") || err.contains("not a number"),
        "{err}"
    );
    let err = t.error("INSERT INTO t VALUES (NULL, 'x')").await;
    assert!(err.to_lowercase().contains("null"), "{err}");
    let err = t.error("INSERT INTO t (a, b, c) VALUES (1, 'x', 2)").await;
    assert!(err.contains('c'), "{err}");
    let err = t.error("CREATE TABLE t (x INT)").await;
    assert!(err.contains("already exists"), "{err}");
    let err = t.error("CREATE TABLE p (x INT) PARTITIONED BY (day(nope))").await;
    assert!(err.contains("nope"), "{err}");
    let err = t.error("CREATE TABLE nosuch.x (a INT)").await;
    assert!(err.contains("nosuch"), "{err}");
    // A CTAS that fails part-way leaves no table behind.
    let err = t
        .error("CREATE TABLE c AS SELECT CAST(b AS INT) AS n FROM t")
        .await;
    assert!(!err.is_empty());
    assert!(t.error("SELECT * FROM c").await.contains('c'));

    let after = t.metadata_location("public.t").await;
    assert_eq!(before, after, "failed statements must not commit");
    assert_eq!(t.query("SELECT a, b FROM t").await, vec!["1|one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_all_land() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE c (writer INT, n INT)").await;
    const WRITERS: i32 = 8;
    const INSERTS: i32 = 5;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // Each writer has its own catalog connection pool, like a separate process.
        let session = t.second_session().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..INSERTS {
                crate::query(
                    &session,
                    &format!("INSERT INTO c VALUES ({w}, {i}), ({w}, {})", i + 100),
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected = (WRITERS * INSERTS * 2).to_string();
    assert_eq!(t.query("SELECT count(*) FROM c").await, vec![expected]);
    assert_eq!(
        t.query("SELECT count(DISTINCT writer * 1000 + n) FROM c").await,
        vec![(WRITERS * INSERTS * 2).to_string()]
    );
    let snapshots = t.query("SELECT count(*) FROM \"c$snapshots\"").await;
    assert_eq!(snapshots, vec![(WRITERS * INSERTS).to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_at_target_size_with_zstd_and_statistics() {
    let t = TestLake::with(&[("write.target_file_size", "1048576")]).await;
    // About 8 MB of poorly compressible rows, written by one writer.
    t.exec(
        "CREATE TABLE big AS SELECT value AS id, sha256(CAST(value AS VARCHAR)) AS h \
         FROM generate_series(1, 200000) ORDER BY value",
    )
    .await;
    let table = t
        .session
        .lake()
        .load_table(&tarn_lake::parse_table_name("public.big").unwrap())
        .await
        .unwrap();
    let metadata = table.metadata();
    let snapshot = metadata.current_snapshot().unwrap();
    let list_bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())
        .unwrap()
        .read()
        .await
        .unwrap();
    let list =
        iceberg::spec::ManifestList::parse_with_version(&list_bytes, metadata.format_version()).unwrap();
    let mut files = Vec::new();
    for manifest in list.entries() {
        for entry in manifest.load_manifest(table.file_io()).await.unwrap().entries() {
            files.push(entry.data_file().clone());
        }
    }
    assert!(
        files.len() > 2,
        "expected files rolled at 1 MiB, got {}",
        files.len()
    );
    let id_field = metadata.current_schema().field_by_name("id").unwrap().id;
    for file in &files {
        // Column statistics in the manifest let scans skip files.
        assert!(
            file.lower_bounds().contains_key(&id_field),
            "no lower bound in {}",
            file.file_path()
        );
        assert!(file.upper_bounds().contains_key(&id_field));
        assert!(
            file.file_size_in_bytes() < 3 * 1024 * 1024,
            "{} is {} bytes",
            file.file_path(),
            file.file_size_in_bytes()
        );
    }
    // Data files are zstd-compressed Parquet.
    let path = files[0].file_path().strip_prefix("file://").unwrap().to_string();
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    use parquet::file::reader::FileReader;
    let codec = reader.metadata().row_group(0).column(0).compression();
    assert!(matches!(codec, parquet::basic::Compression::ZSTD(_)), "{codec:?}");
    // A range filter reads only some files: the result is right either way.
    assert_eq!(
        t.query("SELECT count(*) FROM big WHERE id BETWEEN 1000 AND 1999")
            .await,
        vec!["1000"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_statement_commits_nothing() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE c (id BIGINT, h VARCHAR)").await;
    t.exec("INSERT INTO c VALUES (0, 'seed')").await;
    let before = t.metadata_location("public.c").await;
    let statement = tarn_query::TarnSession::prepare(
        "INSERT INTO c SELECT value, md5(CAST(value AS VARCHAR)) FROM generate_series(1, 50000000)",
    )
    .unwrap()
    .remove(0);
    let session = t.session.clone();
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(300), async move {
        crate::query(&session, &statement.sql).await
    })
    .await;
    assert!(
        outcome.is_err(),
        "the statement should still be running when cancelled"
    );
    let after = t.metadata_location("public.c").await;
    assert_eq!(before, after);
    assert_eq!(t.query("SELECT count(*) FROM c").await, vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_filters_drop_probe_rows_at_the_scan_without_changing_results() {
    let t = TestLake::new().await;
    t.exec("CREATE TABLE dim (k BIGINT NOT NULL, tag VARCHAR NOT NULL)")
        .await;
    t.exec(
        "INSERT INTO dim SELECT value, CASE WHEN value % 10 = 3 THEN 'keep' ELSE 'skip' END \
         FROM generate_series(0, 99)",
    )
    .await;
    t.exec("CREATE TABLE fact (k BIGINT NOT NULL, v BIGINT NOT NULL)")
        .await;
    t.exec("INSERT INTO fact SELECT value % 100, value FROM generate_series(1, 50000)")
        .await;
    let query = "SELECT count(*), sum(f.v) FROM dim d JOIN fact f ON f.k = d.k WHERE d.tag = 'keep'";
    // Keys 3, 13, ..., 93: 500 rows each.
    let expected: i64 = (1..=50_000i64).filter(|v| v % 100 % 10 == 3).sum();
    assert_eq!(t.query(query).await, vec![format!("5000|{expected}")]);

    let plan = t.query(&format!("EXPLAIN ANALYZE {query}")).await.join("\n");
    let line = plan
        .lines()
        .find(|l| l.contains("RuntimeFilterExec"))
        .unwrap_or_else(|| panic!("no RuntimeFilterExec in\n{plan}"));
    // 45,000 of the 50,000 fact rows have no partner. A dynamic filter passes every row until
    // the join's build side is done, and on a busy machine the scan may run ahead of it, so
    // how many are dropped depends on timing; what must hold is that rows were dropped and
    // none went missing (DataFusion prints the counts in thousands, rounded).
    let metric = |name: &str| -> f64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len()
            + 1;
        let text: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let value: f64 = text.parse().unwrap_or_else(|_| panic!("{name} in {line}"));
        if line[at + text.len()..].starts_with(" K") {
            value * 1000.0
        } else {
            value
        }
    };
    let (dropped, output) = (metric("rows_dropped"), metric("output_rows"));
    assert!(dropped > 0.0, "{line}");
    assert!((dropped + output - 50_000.0).abs() <= 20.0, "{line}");

    // Without dynamic filters: the same answer.
    t.exec("SET datafusion.optimizer.enable_dynamic_filter_pushdown = false")
        .await;
    assert_eq!(t.query(query).await, vec![format!("5000|{expected}")]);
    let plan = t.query(&format!("EXPLAIN {query}")).await.join("\n");
    assert!(!plan.contains("RuntimeFilterExec"), "{plan}");
}
