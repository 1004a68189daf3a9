//! One catalog-and-table suite, run against every catalog backend (SQLite, a real PostgreSQL)
//! and every storage backend (local directory, a real S3 API server).

use tarn_test_utils::{PostgresServer, S3Server};

use crate::TestLake;

/// The suite: namespaces, create/list/drop, appends from two sessions (two pools, as two
/// processes), a commit race, and reading back.
async fn conformance(t: &TestLake) {
    t.exec("CREATE SCHEMA IF NOT EXISTS crm").await;
    t.exec("CREATE SCHEMA IF NOT EXISTS crm").await;
    assert!(t.error("CREATE SCHEMA crm").await.contains("already exists"));
    t.exec("CREATE TABLE crm.people (id BIGINT NOT NULL, name VARCHAR, joined DATE) PARTITIONED BY (year(joined))")
        .await;
    t.exec("INSERT INTO crm.people VALUES (1, 'ada', DATE '2020-05-01'), (2, 'bo', DATE '2021-06-01')")
        .await;

    // A second session (another pool) sees the table and appends.
    let other = t.second_session().await;
    crate::query(
        &other,
        "INSERT INTO crm.people VALUES (3, 'cy', DATE '2021-07-01')",
    )
    .await
    .unwrap();
    assert_eq!(t.query("SELECT count(*) FROM crm.people").await, vec!["3"]);
    assert_eq!(
        t.query("SELECT name FROM crm.people WHERE joined >= DATE '2021-01-01' ORDER BY id")
            .await,
        vec!["bo", "cy"]
    );

    // Racing appends from both sessions all land.
    let a = t.session.clone();
    let b = other.clone();
    let (ra, rb) = tokio::join!(
        async move {
            for i in 0..5 {
                crate::query(
                    &a,
                    &format!(
                        "INSERT INTO crm.people VALUES ({}, 'a', DATE '2022-01-01')",
                        100 + i
                    ),
                )
                .await
                .unwrap();
            }
        },
        async move {
            for i in 0..5 {
                crate::query(
                    &b,
                    &format!(
                        "INSERT INTO crm.people VALUES ({}, 'b', DATE '2022-01-01')",
                        200 + i
                    ),
                )
                .await
                .unwrap();
            }
        }
    );
    let ((), ()) = (ra, rb);
    assert_eq!(t.query("SELECT count(*) FROM crm.people").await, vec!["13"]);

    let lake = t.session.lake();
    let tables = lake.list_all_tables().await.unwrap();
    assert!(tables.iter().any(|i| i.to_string() == "crm.people"), "{tables:?}");
    assert!(t.error("DROP SCHEMA crm").await.contains("not empty"));
    t.exec("DROP TABLE crm.people PURGE").await;
    t.exec("DROP SCHEMA crm").await;
    assert!(
        !lake
            .namespace_exists(&iceberg::NamespaceIdent::new("crm".into()))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_catalog_local_storage() {
    let t = TestLake::new().await;
    conformance(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_catalog() {
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE catalog").unwrap();
    let url = pg.url("catalog");
    let t = TestLake::with(&[("catalog.url", &url)]).await;
    conformance(&t).await;
    // The catalog rows are in PostgreSQL, in the JDBC catalog layout.
    let rows = pg
        .psql("catalog", "SELECT count(*) FROM iceberg_namespace_properties")
        .unwrap();
    assert!(rows.trim().parse::<i64>().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage() {
    let s3 = S3Server::start("lake").unwrap();
    let endpoint = s3.endpoint();
    let t = TestLake::with(&[
        ("storage.warehouse", "s3://lake/warehouse"),
        ("storage.s3.endpoint", &endpoint),
        ("storage.s3.region", "us-east-1"),
        ("storage.s3.access_key_id", "test"),
        ("storage.s3.secret_access_key", "test"),
        ("storage.s3.path_style", "true"),
        ("storage.s3.allow_http", "true"),
    ])
    .await;
    conformance(&t).await;
    t.exec("CREATE TABLE kv (k VARCHAR, v BIGINT)").await;
    t.exec("INSERT INTO kv VALUES ('a', 1), ('b', 2)").await;
    assert_eq!(t.query("SELECT sum(v) FROM kv").await, vec!["3"]);
    let table = t
        .session
        .lake()
        .load_table(&tarn_lake::parse_table_name("public.kv").unwrap())
        .await
        .unwrap();
    assert!(
        table
            .metadata_location()
            .unwrap()
            .starts_with("s3://lake/warehouse/")
    );

    // `tarn load` reads s3:// sources with globs.
    s3.put("raw/events-1.csv", b"id,kind\n1,click\n2,view\n").unwrap();
    s3.put("raw/events-2.csv", b"id,kind\n3,click\n").unwrap();
    s3.put("raw/other.txt", b"not matched").unwrap();
    let options = tarn_query::load::LoadOptions::default();
    let sources = ["s3://lake/raw/events-*.csv".to_string()];
    let plan = tarn_query::load::plan_load(&t.session, &sources, &options)
        .await
        .unwrap();
    assert_eq!(plan.files.len(), 2, "{:?}", plan.files);
    let ident = tarn_lake::parse_table_name("raw.events").unwrap();
    let outcome = tarn_query::load::load(&t.session, &plan, &ident, &options, Default::default())
        .await
        .unwrap();
    assert_eq!(outcome.rows, 3);
    let one = ["s3://lake/raw/events-2.csv".to_string()];
    let plan = tarn_query::load::plan_load(&t.session, &one, &options)
        .await
        .unwrap();
    assert_eq!(plan.files, one);
    assert_eq!(
        t.query("SELECT kind, count(*) FROM raw.events GROUP BY kind ORDER BY kind")
            .await,
        vec!["click|2", "view|1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bucket_is_a_clear_error() {
    let port = tarn_test_utils::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let t = TestLake::with(&[
        ("storage.warehouse", "s3://nowhere/warehouse"),
        ("storage.s3.endpoint", &endpoint),
        ("storage.s3.access_key_id", "test"),
        ("storage.s3.secret_access_key", "test"),
        ("storage.s3.path_style", "true"),
        ("storage.s3.allow_http", "true"),
    ])
    .await;
    let err = t.error("CREATE TABLE x (a INT)").await;
    assert!(err.contains("s3://nowhere"), "{err}");
    // Nothing was registered in the catalog.
    assert!(
        t.session
            .lake()
            .list_tables(&iceberg::NamespaceIdent::new("public".into()))
            .await
            .unwrap()
            .is_empty()
    );
}
