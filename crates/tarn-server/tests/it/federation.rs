//! Federation: a live PostgreSQL attached as a catalog (`CREATE EXTERNAL CATALOG`), joined
//! with lake tables, its pushdown, its errors, cancellation and governance
//! (docs/federation.md).

use std::time::{Duration, Instant};

use crate::{TestLake, query};
use tarn_query::TarnSession;

/// A remote `customers` table, and the lake's `orders` referencing it.
async fn setup(pg: &tarn_test_utils::PostgresServer, t: &TestLake) {
    pg.psql(
        "postgres",
        "CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL, region TEXT, secret TEXT); \
         INSERT INTO customers SELECT i, 'customer ' || i, CASE WHEN i % 3 = 0 THEN 'eu' ELSE 'us' END, 's' || i \
         FROM generate_series(1, 50) i",
    )
    .unwrap();
    t.exec("CREATE TABLE orders (id BIGINT, customer_id INT, amount BIGINT)")
        .await;
    let values: Vec<String> = (1..=200)
        .map(|i| format!("({i}, {}, {})", i % 60 + 1, i * 7 % 101))
        .collect();
    t.exec(&format!("INSERT INTO orders VALUES {}", values.join(", ")))
        .await;
    t.exec(&format!(
        "CREATE EXTERNAL CATALOG shop FROM '{}'",
        pg.url("postgres")
    ))
    .await;
}

const JOIN: &str = "SELECT c.region, count(*) AS n, sum(o.amount) AS total, min(c.name) AS first \
                    FROM {orders} o JOIN {customers} c ON o.customer_id = c.id \
                    WHERE c.id > 2 AND c.region <> 'us' OR c.name = 'customer 7' GROUP BY c.region ORDER BY c.region";

/// A join of a lake table and a live one equals the same join in PostgreSQL over copies of
/// both; the catalog survives a new session (another process) and is dropped with SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_and_live_tables_join_as_in_postgresql() {
    crate::init_logs();
    let pg = tarn_test_utils::start_postgres().unwrap();
    let t = TestLake::new().await;
    setup(&pg, &t).await;
    let federated = t
        .query(
            &JOIN
                .replace("{orders}", "orders")
                .replace("{customers}", "shop.public.customers"),
        )
        .await;
    // The lake's orders copied into PostgreSQL, the same join there.
    let copy: Vec<String> = t.query("SELECT id, customer_id, amount FROM orders").await;
    let values: Vec<String> = copy
        .iter()
        .map(|l| format!("({})", l.replace('|', ",")))
        .collect();
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE orders_copy (id BIGINT, customer_id INT, amount BIGINT); INSERT INTO orders_copy VALUES {}",
            values.join(",")
        ),
    )
    .unwrap();
    let expected = pg
        .psql(
            "postgres",
            &JOIN
                .replace("{orders}", "orders_copy")
                .replace("{customers}", "customers"),
        )
        .unwrap();
    let expected: Vec<String> = expected.lines().map(str::to_string).collect();
    assert_eq!(federated, expected);
    assert_eq!(federated.len(), 2, "{federated:?}");
    assert!(federated[0].starts_with("eu|"), "{federated:?}");

    // Listed beside the lake's tables.
    let listed = t
        .query("SELECT table_catalog, table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'shop'")
        .await;
    assert!(
        listed.contains(&"shop|public|customers".to_string()),
        "{listed:?}"
    );

    // Kept in the catalog database: a new session (another process) sees it.
    let other = t.second_session().await;
    let rows = query(&other, "SELECT count(*) FROM shop.public.customers")
        .await
        .unwrap();
    assert_eq!(rows, vec!["50"]);
    t.exec("DROP EXTERNAL CATALOG shop").await;
    let gone = query(&other, "SELECT count(*) FROM shop.public.customers")
        .await
        .unwrap_err()
        .to_string();
    assert!(gone.contains("shop"), "{gone}");
    let again = t.error("DROP EXTERNAL CATALOG shop").await;
    assert!(again.contains("external catalog shop does not exist"), "{again}");
}

/// EXPLAIN shows the projection and the filter in the SQL sent to PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_filters_and_projections_pushed_down() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let t = TestLake::new().await;
    setup(&pg, &t).await;
    let plan = t
        .query("EXPLAIN SELECT name FROM shop.public.customers WHERE region = 'eu' LIMIT 5")
        .await
        .join("\n");
    let remote: Vec<&str> = plan.lines().filter(|l| l.contains("SELECT")).collect();
    assert!(!remote.is_empty(), "no remote SQL in the plan:\n{plan}");
    let sql = remote.join("\n");
    assert!(
        sql.contains("region") && sql.contains("'eu'"),
        "filter not pushed down:\n{plan}"
    );
    assert!(sql.contains("LIMIT 5"), "limit not pushed down:\n{plan}");
    assert!(!sql.contains("secret"), "projection not pushed down:\n{plan}");

    // Joined with a lake table: the remote table's columns and filter still go to PostgreSQL.
    let plan = t
        .query(
            "EXPLAIN SELECT count(*) FROM orders o JOIN shop.public.customers c ON o.customer_id = c.id \
             WHERE c.region = 'eu'",
        )
        .await
        .join("\n");
    let sql: Vec<&str> = plan.lines().filter(|l| l.contains("base_sql=")).collect();
    assert_eq!(sql.len(), 1, "one remote query expected:\n{plan}");
    assert!(
        sql[0].contains("WHERE") && sql[0].contains("'eu'"),
        "filter not pushed down:\n{plan}"
    );
    assert!(
        !sql[0].contains("secret") && !sql[0].contains("\"name\""),
        "projection not pushed down:\n{plan}"
    );
}

/// An unreachable database and a dropped remote table give errors naming the catalog or
/// table; the lake and the other catalog keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_failures_are_named_and_contained() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let t = TestLake::new().await;
    setup(&pg, &t).await;
    let port = tarn_test_utils::free_port();
    t.exec(&format!(
        "CREATE EXTERNAL CATALOG gone FROM 'postgres://postgres@127.0.0.1:{port}/postgres'"
    ))
    .await;
    let e = t.error("SELECT * FROM gone.public.customers").await;
    assert!(e.contains("external catalog gone"), "{e}");
    assert_eq!(
        t.query("SELECT count(*) FROM shop.public.customers").await,
        vec!["50"]
    );
    assert_eq!(t.query("SELECT count(*) FROM orders").await, vec!["200"]);

    pg.psql("postgres", "CREATE USER app PASSWORD 'right'").unwrap();
    let e = t.error("CREATE EXTERNAL CATALOG bad FROM 'mysql://x/y'").await;
    assert!(
        e.contains("external catalog bad: expected a postgres:// URL"),
        "{e}"
    );

    pg.psql("postgres", "DROP TABLE customers").unwrap();
    let e = t.error("SELECT * FROM shop.public.customers").await;
    assert!(e.contains("shop.public.customers"), "{e}");
    assert_eq!(t.query("SELECT count(*) FROM orders").await, vec!["200"]);
}

/// Dropping a statement (a cancel, a timeout) cancels its query on the remote server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_statement_cancels_the_remote_query() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let t = TestLake::new().await;
    setup(&pg, &t).await;
    pg.psql("postgres", "CREATE VIEW slow AS SELECT pg_sleep(60)::text AS x")
        .unwrap();
    cancelled_remote_query_stops(&pg, &t, "shop").await;
}

/// Runs `SELECT * FROM <catalog>.public.slow` (a remote `pg_sleep(60)`), aborts it once the
/// remote query runs, and waits (15 s at most) until it no longer runs on `pg`.
async fn cancelled_remote_query_stops(pg: &tarn_test_utils::PostgresServer, t: &TestLake, catalog: &str) {
    let session = t.session.clone();
    let sql = format!("SELECT * FROM {catalog}.public.slow");
    let running = tokio::spawn(async move { query(&session, &sql).await });
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tarn federation {catalog}' \
         AND state = 'active' AND query LIKE '%slow%'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("postgres", &active).unwrap().trim() != "1" {
        assert!(Instant::now() < deadline, "the remote query never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.psql("postgres", &active).unwrap().trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "the remote query still runs after the statement was cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A catalog reached over TLS (`sslmode=verify-full` against the server's CA): its sessions
/// are encrypted, a cancelled statement's remote query is cancelled over TLS too (a `require`
/// connection's cancel token refuses to go in the clear), and a CA that did not sign the
/// server's certificate is refused naming the catalog, other catalogs unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_over_tls_reads_cancels_and_refuses_a_wrong_ca() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let tls = tarn_test_utils::tls::enable_tls(&pg).unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE customers (id INT PRIMARY KEY); INSERT INTO customers SELECT generate_series(1, 7); \
         CREATE VIEW slow AS SELECT pg_sleep(60)::text AS x",
    )
    .unwrap();
    let t = TestLake::new().await;
    let url = |ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url("postgres"),
            ca.display()
        )
    };
    t.exec(&format!(
        "CREATE EXTERNAL CATALOG secure FROM '{}'",
        url(&tls.ca_file)
    ))
    .await;
    t.exec(&format!(
        "CREATE EXTERNAL CATALOG wrongca FROM '{}'",
        url(&tls.other_ca_file)
    ))
    .await;
    assert_eq!(
        t.query("SELECT count(*) FROM secure.public.customers").await,
        ["7"]
    );
    let encrypted = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'tarn federation secure'",
        )
        .unwrap();
    assert_ne!(encrypted.trim(), "0", "the federation sessions are encrypted");

    let err = query(&t.session, "SELECT count(*) FROM wrongca.public.customers")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("external catalog wrongca"), "{err}");
    assert_eq!(
        t.query("SELECT count(*) FROM secure.public.customers").await,
        ["7"]
    );

    cancelled_remote_query_stops(&pg, &t, "secure").await;
}

const POLICY: &str = r#"
package trino

import rego.v1

default allow := true

allow := false if {
	input.context.identity.user == "ann"
	input.action.operation == "SelectFromColumns"
	input.action.resource.table.catalogName == "shop"
	"secret" in input.action.resource.table.columns
}

columnMask := {"expression": "'***'"} if {
	input.context.identity.user == "bob"
	input.action.resource.column.catalogName == "shop"
	input.action.resource.column.columnName == "name"
}

rowFilters contains {"expression": "region = 'eu'"} if {
	input.context.identity.user == "bob"
	input.action.resource.table.catalogName == "shop"
}
"#;

/// The policy applies to foreign tables as to lake tables: a hidden column is refused, a
/// masked one masked, a row filter filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_to_foreign_tables() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let t = TestLake::new().await;
    setup(&pg, &t).await;
    std::fs::write(t.path().join("policy.rego"), POLICY).unwrap();
    let policy = tarn_policy::Policy::from_config(&tarn_core::config::PolicyConfig {
        file: Some(t.path().join("policy.rego")),
        opa_url: None,
        package: "trino".into(),
        timeout: "5s".into(),
    })
    .unwrap();
    let lake = tarn_lake::Lake::open(&t.config).await.unwrap();
    let governed = TarnSession::with_policy(lake, policy).await.unwrap();
    let as_user = |user: &str| {
        governed.for_principal(tarn_auth::Principal {
            user: user.into(),
            groups: vec![],
            method: tarn_auth::Method::Password,
        })
    };
    let denied = query(&as_user("ann"), "SELECT id, secret FROM shop.public.customers")
        .await
        .unwrap_err();
    assert_eq!(denied.kind(), tarn_core::ErrorKind::PermissionDenied, "{denied}");
    for count in ["count(name)", "count(*)", "count(1)"] {
        let sql = format!("SELECT {count} FROM shop.public.customers");
        assert_eq!(query(&as_user("ann"), &sql).await.unwrap(), vec!["50"], "{sql}");
    }
    // No column read: counted under bob's row filter.
    assert_eq!(
        query(&as_user("bob"), "SELECT count(*) FROM shop.public.customers")
            .await
            .unwrap(),
        vec!["16"]
    );
    let bob = query(
        &as_user("bob"),
        "SELECT DISTINCT name, region FROM shop.public.customers ORDER BY 1, 2",
    )
    .await
    .unwrap();
    assert_eq!(bob, vec!["***|eu"]);
    let joined = query(
        &as_user("bob"),
        "SELECT count(*) FROM orders o JOIN shop.public.customers c ON o.customer_id = c.id",
    )
    .await
    .unwrap();
    let expected = t
        .query("SELECT count(*) FROM orders o JOIN shop.public.customers c ON o.customer_id = c.id WHERE c.region = 'eu'")
        .await;
    assert_eq!(joined, expected);
    assert_ne!(expected, vec!["0".to_string()]);
    // Without the policy, the same join sees every region.
    let all = t
        .query("SELECT count(*) FROM orders o JOIN shop.public.customers c ON o.customer_id = c.id")
        .await;
    assert_ne!(all, expected);
}

/// A policy that lets everyone see and read the remote `customers` table and nothing else of
/// the remote database.
const LISTING_POLICY: &str = r#"
package trino

import rego.v1

default allow := false

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas", "ShowSchemas", "ShowTables"}

allow if {
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns"}
	input.action.resource.table.catalogName == "shop"
	input.action.resource.table.tableName == "customers"
}
"#;

/// Under a policy, listings show a foreign table exactly when the policy lets the caller see it
/// (`FilterTables` with the external catalog's name), in `information_schema` and `pg_catalog`
/// alike, over the Postgres wire endpoint; a hidden one is absent and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_the_foreign_tables_the_policy_lets_the_caller_see() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE customers (id INT PRIMARY KEY, name TEXT);          CREATE TABLE payroll (id INT PRIMARY KEY, salary INT);          INSERT INTO customers VALUES (1, 'a'), (2, 'b'); INSERT INTO payroll VALUES (1, 100)",
    )
    .unwrap();
    let policy_dir = tempfile::Builder::new()
        .prefix("tarn-fed-policy-")
        .tempdir()
        .unwrap();
    let policy = policy_dir.path().join("policy.rego");
    std::fs::write(&policy, LISTING_POLICY).unwrap();
    let served = crate::pgwire::Served::start_with(
        false,
        &format!(
            "[policy]\nfile = \"{}\"\n[[federation]]\nname = \"shop\"\nurl = \"{}\"\n",
            policy.display(),
            pg.url("postgres")
        ),
    );
    let listed = |sql: &str| {
        let (ok, out, err) = served.psql(sql);
        assert!(ok, "{sql}: {err}");
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        listed(
            "SELECT table_catalog, table_schema, table_name FROM information_schema.tables \
             WHERE table_schema NOT IN ('information_schema', 'pg_catalog') ORDER BY 1, 2, 3"
        ),
        ["shop|public|customers"]
    );
    assert_eq!(
        listed(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_catalog = 'shop' ORDER BY 1, 2"
        ),
        ["customers|id", "customers|name"]
    );
    assert_eq!(
        listed(
            "SELECT relname FROM pg_catalog.pg_class WHERE relname IN ('customers', 'payroll') ORDER BY 1"
        ),
        ["customers"]
    );
    assert_eq!(listed("SELECT count(*) FROM shop.public.customers"), ["2"]);
    let (ok, _, err) = served.psql("SELECT * FROM shop.public.payroll");
    assert!(!ok);
    assert!(err.contains("shop.public.payroll"), "{err}");
}

/// Over the Postgres wire endpoint, `CREATE`/`DROP EXTERNAL CATALOG` run in both protocols
/// (psql's simple queries, tokio-postgres's prepared statements); a wrong password is named
/// as such, for that catalog only, and the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_statements_over_both_protocols_and_a_wrong_password() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    pg.psql(
        "postgres",
        "CREATE USER app PASSWORD 'right'; \
         CREATE TABLE customers (id INT PRIMARY KEY, name TEXT); \
         INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 5) i; \
         GRANT SELECT ON customers TO app",
    )
    .unwrap();
    // Password logins for `app` over TCP (the harness trusts everyone else).
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();

    let served = crate::pgwire::Served::start(false);
    let url = |password: &str| format!("postgres://app:{password}@127.0.0.1:{}/postgres", pg.port());
    // Simple protocol.
    let (ok, _, err) = served.psql(&format!(
        "CREATE EXTERNAL CATALOG wrongpw FROM '{}'",
        url("Wr0ngSecret")
    ));
    assert!(ok, "{err}");
    let (ok, _, err) = served.psql("SELECT count(*) FROM wrongpw.public.customers");
    assert!(!ok);
    assert!(err.contains("external catalog wrongpw"), "{err}");
    assert!(err.to_lowercase().contains("authentication failed"), "{err}");
    assert!(!err.contains("Wr0ngSecret"), "the password leaked: {err}");
    // Extended protocol.
    let client = served.client().await;
    client
        .execute(
            &format!("CREATE EXTERNAL CATALOG rightpw FROM '{}'", url("right")),
            &[],
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT count(*) FROM rightpw.public.customers WHERE id > $1",
            &[&2i32],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 3);
    let e = client
        .execute("CREATE EXTERNAL CATALOG rightpw FROM 'postgres://x/y'", &[])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("catalog rightpw already exists")
            || format!("{e:?}").contains("already exists"),
        "{e:?}"
    );
    client
        .execute("DROP EXTERNAL CATALOG wrongpw", &[])
        .await
        .unwrap();
    let (ok, out, err) = served.psql("SELECT count(*) FROM rightpw.public.customers");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "5");
    let (ok, _, err) = served.psql("SELECT count(*) FROM wrongpw.public.customers");
    assert!(!ok && err.contains("wrongpw"), "{err}");
}

/// A join of two tables of one remote database, aggregated.
const JOINED: &str = "SELECT c.region, count(*), sum(v.n) FROM {t} c JOIN {v} v ON v.customer_id = c.id \
                      GROUP BY c.region ORDER BY c.region";

/// Catalogs from the configuration (`[[federation]]`): statements that `datafusion-federation`
/// sends to PostgreSQL whole (casts to text, aggregates, string functions) answer over the
/// Postgres wire endpoint what PostgreSQL answers, and none closes the connection; the
/// configured remote `statement_timeout` stops a slow remote query with an error naming the
/// catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_catalogs_answer_statements_of_many_shapes_as_postgresql_does() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL, region VARCHAR(8), score DOUBLE PRECISION); \
         INSERT INTO customers SELECT i, 'customer ' || i, CASE WHEN i % 3 = 0 THEN 'eu' ELSE 'us' END, i * 1.5 \
         FROM generate_series(1, 20) i; \
         CREATE TABLE visits (customer_id INT, n INT); \
         INSERT INTO visits SELECT i % 25 + 1, i FROM generate_series(1, 60) i; \
         CREATE VIEW slow AS SELECT 1 AS id FROM pg_sleep(5)",
    )
    .unwrap();
    let served = crate::pgwire::Served::start_with(
        false,
        &format!(
            "[[federation]]\nname = \"shop\"\nurl = \"{url}\"\npool_size = 2\n\
             [[federation]]\nname = \"hasty\"\nurl = \"{url}\"\nstatement_timeout = \"1s\"\n",
            url = pg.url("postgres")
        ),
    );
    for sql in [
        "SELECT count(*)::text FROM {t}",
        "SELECT CAST(count(*) AS VARCHAR) AS n FROM {t} WHERE region = 'eu'",
        "SELECT region, count(*)::text FROM {t} GROUP BY region ORDER BY region",
        "SELECT id::text || '-' || region FROM {t} WHERE id < 4 ORDER BY id",
        "SELECT upper(name), length(name) FROM {t} WHERE id IN (1, 12) ORDER BY id",
        "SELECT CAST(id AS VARCHAR) AS i, CAST(score AS TEXT) AS s FROM {t} ORDER BY id LIMIT 3",
        "SELECT region, max(name) FROM {t} GROUP BY region ORDER BY 1",
        "SELECT coalesce(region, 'none') FROM {t} WHERE id = 5",
        JOINED,
    ] {
        let (ok, out, err) = served.psql(
            &sql.replace("{t}", "shop.public.customers")
                .replace("{v}", "shop.public.visits"),
        );
        assert!(ok, "{sql}: {err}");
        let expected = pg
            .psql(
                "postgres",
                &sql.replace("{t}", "customers").replace("{v}", "visits"),
            )
            .unwrap();
        assert_eq!(out.trim(), expected.trim(), "{sql}");
    }
    // The join of two tables of one database and its aggregate go there as one query.
    let (ok, plan, err) = served.psql(&format!(
        "EXPLAIN {}",
        JOINED
            .replace("{t}", "shop.public.customers")
            .replace("{v}", "shop.public.visits")
    ));
    assert!(ok, "{err}");
    let remote: Vec<&str> = plan.lines().filter(|l| l.contains("base_sql=")).collect();
    assert_eq!(remote.len(), 1, "one remote query expected:\n{plan}");
    assert!(
        remote[0].contains(" JOIN ") && remote[0].contains("GROUP BY"),
        "join and aggregate not pushed down:\n{plan}"
    );
    let client = served.client().await;
    let rows = client
        .query(
            "SELECT count(*)::text FROM shop.public.customers WHERE id > $1",
            &[&10i32],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "10");
    assert_eq!(
        client
            .query_one("SELECT 1::bigint", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    // The remote statement_timeout of `hasty` (1 s) stops a remote query of 5 s.
    let started = Instant::now();
    let (ok, _, err) = served.psql("SELECT count(*) FROM hasty.public.slow");
    assert!(!ok, "the remote statement_timeout did not stop the query");
    assert!(
        err.contains("hasty") && err.contains("statement timeout"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// BI tools list a foreign table under its catalog and schema as one schema name
/// (`shop.public`) and query it by that name: SQLAlchemy 1.4 + psycopg2 (Superset's stack)
/// inspects and reads it, psql's `\dt` lists it, pgjdbc-style `"tarn"."shop.public".t` names
/// resolve, and a lake table of the same name in `public` stays the lake's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tools_list_and_query_foreign_tables_by_their_shown_schema() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL, region TEXT); \
         INSERT INTO customers VALUES (1, 'ada', 'eu'), (2, 'bob', NULL), (3, 'cy', 'us')",
    )
    .unwrap();
    let served = crate::pgwire::Served::start_with(
        true,
        &format!(
            "[[federation]]\nname = \"shop\"\nurl = \"{}\"\n",
            pg.url("postgres")
        ),
    );
    let psql = |sql: &str| {
        let (ok, out, err) = served.psql(sql);
        assert!(ok, "{sql}: {err}");
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    psql("CREATE TABLE customers (id BIGINT, note VARCHAR); INSERT INTO customers VALUES (99, 'lake')");

    let port = served.pg_port.to_string();
    let seen = crate::bi::superset_script(
        "bi_foreign.py",
        &["--port", &port, "--schema", "shop.public", "--table", "customers"],
    );
    let schemas: Vec<&str> = seen["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        schemas.contains(&"public") && schemas.contains(&"shop.public"),
        "{seen}"
    );
    assert_eq!(
        seen["tables"]["shop.public"],
        serde_json::json!(["customers"]),
        "{seen}"
    );
    assert_eq!(
        seen["tables"]["public"],
        serde_json::json!(["customers"]),
        "{seen}"
    );
    assert_eq!(
        seen["columns"],
        serde_json::json!([
            {"name": "id", "type": "INTEGER()", "nullable": false},
            {"name": "name", "type": "TEXT()", "nullable": false},
            {"name": "region", "type": "TEXT()", "nullable": true}
        ]),
        "{seen}"
    );
    assert_eq!(
        seen["rows"]["shop.public"],
        serde_json::json!([[1, "ada", "eu"], [2, "bob", null], [3, "cy", "us"]]),
        "{seen}"
    );
    assert_eq!(
        seen["rows"]["public"],
        serde_json::json!([[99, "lake"]]),
        "{seen}"
    );
    assert!(
        seen["sql"]
            .as_str()
            .unwrap()
            .contains("\"shop.public\".customers"),
        "SQLAlchemy quotes the shown schema: {seen}"
    );

    // psql lists it, and names it by the shown schema with or without the database.
    let listed = psql("\\dt \"shop.public\".*");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with("shop.public|customers|table"), "{listed:?}");
    assert_eq!(
        psql(
            "SELECT \"shop.public\".customers.name FROM \"tarn\".\"shop.public\".customers \
             WHERE \"shop.public\".customers.id = 2"
        ),
        ["bob"]
    );
    assert_eq!(psql("SELECT count(*) FROM shop.public.customers"), ["3"]);
}
