//! Policies enforced at the one choke point (docs/governance.md): `tarn serve` with a Rego
//! policy in Trino's contract, OIDC tokens from the test issuer and a SCRAM user, and a bypass
//! suite — every query shape over the Postgres wire protocol (simple and extended) against a
//! masked column (`sales.customers.email`) and a row-filtered table (`sales.orders`, only
//! region `eu`) — none returns an unmasked value, a filtered row or a hidden table. Also:
//! deny by default, a policy syntax error refuses to start, `tarn sql --as`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tarn_test_utils::oidc::{Issuer, RSA1, Signer, issuer};
use tarn_test_utils::{free_port, wait_for_port};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::Type;

/// What no analyst may see: the masked emails, the filtered orders' region and amounts, the
/// hidden table.
const SECRETS: [&str; 5] = ["secret.example", "hidden-us", "777777", "888888", "salar"];

pub(crate) const POLICY: &str = r#"
package trino

import rego.v1

default allow := false

admin if "admin" in input.context.identity.groups

analyst if "analyst" in input.context.identity.groups

analyst if input.context.identity.user == "svc"

allow if admin

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas", "ShowSchemas", "ShowTables"}

allow if {
	input.context.identity.user == "svc"
	input.action.operation == "CopyTo"
}

allow if {
	analyst
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns"}
	input.action.resource.table.schemaName == "sales"
}

rowFilters contains {"expression": "region = 'eu'"} if {
	not admin
	input.action.resource.table.schemaName == "sales"
	input.action.resource.table.tableName == "orders"
}

columnMask := {"expression": "'****' || substr(email, strpos(email, '@') - 1, 1)"} if {
	not admin
	input.action.resource.column.schemaName == "sales"
	input.action.resource.column.tableName == "customers"
	input.action.resource.column.columnName == "email"
}
"#;

pub(crate) struct Served {
    child: Child,
    pub(crate) port: u16,
    http: u16,
    pub(crate) dir: tempfile::TempDir,
}

impl Served {
    /// `GET path` with a bearer token: (status, body).
    pub(crate) fn get(&self, path: &str, token: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &std::path::Path, issuer: &Issuer, port: u16, http: u16) {
    write_config_with(dir, issuer, port, http, POLICY);
}

fn write_config_with(dir: &std::path::Path, issuer: &Issuer, port: u16, http: u16, policy: &str) {
    std::fs::write(dir.join("policy.rego"), policy).unwrap();
    std::fs::write(
        dir.join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [[auth.users]]\nname = \"svc\"\npassword = \"svc-pw\"\n\
             [auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\n\
             [policy]\nfile = \"{}\"\n",
            issuer.url,
            issuer.ca_file.display(),
            dir.join("policy.rego").display()
        ),
    )
    .unwrap();
}

/// The lake with its tables (written by the operator, whom no policy restricts), served.
pub(crate) fn serve(issuer: &Issuer) -> (Served, i64) {
    let dir = tempfile::Builder::new().prefix("tarn-gov-").tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    write_config(dir.path(), issuer, port, http);
    serve_in(dir, port, http)
}

/// [`serve`] in `dir`, whose `tarn.toml` listens on `port` (pgwire) and `http`.
fn serve_in(dir: tempfile::TempDir, port: u16, http: u16) -> (Served, i64) {
    let setup = "CREATE SCHEMA sales; CREATE SCHEMA hr;
        CREATE TABLE sales.orders (id BIGINT, region VARCHAR, amount BIGINT);
        INSERT INTO sales.orders VALUES (1, 'eu', 10), (2, 'hidden-us', 777777), (3, 'eu', 30);
        CREATE TABLE sales.customers (id BIGINT, email VARCHAR, region VARCHAR);
        INSERT INTO sales.customers VALUES (1, 'ana@secret.example', 'eu'), (2, 'bob@secret.example', 'us');
        CREATE TABLE hr.salaries (name VARCHAR, salary BIGINT);
        INSERT INTO hr.salaries VALUES ('ana', 100);
        CREATE TABLE hr.customers (id BIGINT, hidden_rating BIGINT)";
    let (ok, _, err) = crate::tarn(dir.path(), &["sql", setup]);
    assert!(ok, "{err}");
    let (ok, first, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "--format",
            "csv",
            "SELECT snapshot_id FROM sales.\"orders$snapshots\"",
        ],
    );
    assert!(ok, "{err}");
    let snapshot: i64 = first.lines().nth(1).unwrap().trim().parse().unwrap();
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "INSERT INTO sales.orders VALUES (4, 'hidden-us', 888888), (5, 'eu', 50)",
        ],
    );
    assert!(ok, "{err}");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = Command::new(crate::tarn_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        panic!("tarn serve did not start: {e}\n{log}");
    }
    wait_for_port(http, Duration::from_secs(30)).unwrap();
    (
        Served {
            child,
            port,
            http,
            dir,
        },
        snapshot,
    )
}

pub(crate) async fn connect(port: u16, user: &str, password: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("tarn");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Rows of the simple protocol as `a|b` lines.
async fn simple(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, (String, String)> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()),
        Err(e) => Err(sqlstate(&e)),
    }
}

/// Rows of the extended protocol (a prepared statement with `params`) as `a|b` lines.
async fn extended(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>, (String, String)> {
    let rows = client.query(sql, params).await.map_err(|e| sqlstate(&e))?;
    Ok(rows
        .iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| match *c.type_() {
                    Type::INT8 => row
                        .get::<_, Option<i64>>(i)
                        .map_or("NULL".into(), |v| v.to_string()),
                    Type::INT4 => row
                        .get::<_, Option<i32>>(i)
                        .map_or("NULL".into(), |v| v.to_string()),
                    Type::TEXT | Type::VARCHAR => {
                        row.get::<_, Option<String>>(i).unwrap_or_else(|| "NULL".into())
                    }
                    ref other => format!("<{other}>"),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect())
}

/// The text of `COPY ... TO STDOUT` as the client receives it; the error's message otherwise.
async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    use futures::TryStreamExt;
    let stream = client.copy_out(sql).await.map_err(|e| sqlstate(&e).1)?;
    let chunks: Vec<_> = stream.try_collect().await.map_err(|e| sqlstate(&e).1)?;
    Ok(chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_ref()))
        .collect())
}

fn sqlstate(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => ("?".into(), e.to_string()),
    }
}

fn assert_clean(sql: &str, rows: &[String]) {
    for row in rows {
        for secret in SECRETS {
            assert!(!row.contains(secret), "{sql:?} leaked {secret:?}: {rows:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_bypass_suite_masks_and_filters_every_query_shape() {
    crate::init_logs();
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let (served, snapshot) = serve(&issuer);
    let port = served.port;
    // `ana` has the realm role `analyst` (the issuer's default claims).
    let ana = connect(port, "ana", &rsa.sign(&issuer.claims("ana"))).await;
    let svc = connect(port, "svc", "svc-pw").await;

    // Shapes that read the masked column or the filtered table, with the rows an analyst sees.
    let shapes: Vec<(String, Option<Vec<&str>>)> = vec![
        ("SELECT * FROM sales.orders ORDER BY id".into(), Some(vec!["1|eu|10", "3|eu|30", "5|eu|50"])),
        ("SELECT id, email FROM sales.customers ORDER BY id".into(), Some(vec!["1|****a", "2|****b"])),
        ("SELECT * FROM sales.customers ORDER BY id".into(), Some(vec!["1|****a|eu", "2|****b|us"])),
        ("SELECT email FROM sales.customers WHERE email LIKE '%secret%'".into(), Some(vec![])),
        ("SELECT count(*) FROM sales.orders".into(), Some(vec!["3"])),
        ("SELECT sum(amount), max(amount) FROM sales.orders".into(), Some(vec!["90|50"])),
        ("SELECT id FROM sales.orders WHERE region <> 'eu'".into(), Some(vec![])),
        // A predicate that fails on a hidden row (orders 2 and 4 hold 777777 and 888888) must
        // not run on it: an error would tell that such a row exists.
        ("SELECT count(*) FROM sales.orders WHERE 1 / (amount - 777777) > -1".into(), Some(vec!["3"])),
        ("SELECT id FROM (SELECT * FROM sales.orders) o WHERE 1 / (o.amount - 888888) > -1 AND region = 'eu' ORDER BY id".into(),
            Some(vec!["1", "3", "5"])),
        ("SELECT o.id FROM sales.orders o JOIN sales.customers c ON c.id + 1 = o.id WHERE 1 / (o.amount - 777777) > -1".into(),
            Some(vec!["3"])),
        ("SELECT (SELECT max(email) FROM sales.customers), (SELECT max(amount) FROM sales.orders)".into(), Some(vec!["****b|50"])),
        ("SELECT id FROM sales.orders WHERE amount IN (SELECT amount FROM sales.orders WHERE amount > 100)".into(), Some(vec![])),
        ("SELECT id FROM sales.orders o WHERE EXISTS (SELECT 1 FROM sales.orders i WHERE i.id = o.id AND i.amount > 100)".into(), Some(vec![])),
        ("WITH c AS (SELECT * FROM sales.customers) SELECT email FROM c ORDER BY email".into(), Some(vec!["****a", "****b"])),
        ("SELECT o.id, c.email FROM sales.orders o JOIN sales.customers c ON o.id = c.id ORDER BY o.id".into(), Some(vec!["1|****a"])),
        ("SELECT email FROM sales.customers UNION ALL SELECT region FROM sales.orders".into(), None),
        ("SELECT email, count(*) FROM sales.customers GROUP BY email ORDER BY email".into(), Some(vec!["****a|1", "****b|1"])),
        ("SELECT id FROM sales.customers ORDER BY email DESC".into(), Some(vec!["2", "1"])),
        ("SELECT array_agg(email) FROM sales.customers".into(), None),
        ("SELECT max(length(email)) FROM sales.customers".into(), Some(vec!["5"])),
        (format!("SELECT * FROM sales.orders FOR VERSION AS OF {snapshot} ORDER BY id"), Some(vec!["1|eu|10", "3|eu|30"])),
        (format!("SELECT * FROM sales.\"orders@{snapshot}\" ORDER BY id"), Some(vec!["1|eu|10", "3|eu|30"])),
        ("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('information_schema', 'pg_catalog') ORDER BY 1, 2".into(),
            Some(vec!["sales|customers", "sales|orders"])),
        ("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'hr'".into(), Some(vec![])),
        ("SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'hr'".into(), None),
        ("SHOW TABLES".into(), None),
        ("SELECT relname FROM pg_catalog.pg_class WHERE relname = 'salaries'".into(), Some(vec![])),
        // A hidden table with a visible table's name (hr.customers, sales.customers): only the
        // visible one is listed, and only its columns.
        ("SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relname = 'customers'".into(), Some(vec!["sales"])),
        ("SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
          WHERE c.relname = 'customers' AND a.attnum > 0 ORDER BY a.attnum".into(), Some(vec!["id", "email", "region"])),
        ("SELECT count(*) FROM pg_catalog.pg_attribute WHERE attname = 'hidden_rating'".into(), Some(vec!["0"])),
        ("SELECT schemaname, tablename FROM pg_catalog.pg_tables WHERE schemaname = 'hr'".into(), Some(vec![])),
        ("EXPLAIN SELECT * FROM sales.customers".into(), None),
        ("EXPLAIN ANALYZE SELECT email FROM sales.customers".into(), None),
    ];
    for client in [&ana, &svc] {
        for (sql, expected) in &shapes {
            let rows = simple(client, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql:?}: {e:?}"));
            assert_clean(sql, &rows);
            if let Some(expected) = expected {
                assert_eq!(&rows, expected, "{sql}");
            }
            // The extended protocol (what JDBC, psycopg and tokio-postgres's `query` use); it
            // has no `FOR VERSION AS OF` (tarn rewrites that in the simple protocol only), the
            // `"t@id"` form covers time travel there.
            if !sql.starts_with("SHOW") && !sql.starts_with("EXPLAIN") && !sql.contains("FOR VERSION") {
                match extended(client, sql, &[]).await {
                    Ok(rows) => {
                        assert_clean(sql, &rows);
                        if let Some(expected) = expected
                            && !rows.iter().any(|r| r.contains('<'))
                        {
                            assert_eq!(&rows, expected, "{sql} (extended)");
                        }
                    }
                    Err(e) => panic!("{sql:?} (extended): {e:?}"),
                }
            }
        }
    }

    // Prepared statements with parameters, executed more than once.
    let by_id = ana
        .prepare("SELECT email FROM sales.customers WHERE id = $1")
        .await
        .unwrap();
    for id in [1i64, 2] {
        let rows = ana.query(&by_id, &[&id]).await.unwrap();
        let email: String = rows[0].get(0);
        assert!(email.starts_with("****"), "{email}");
    }
    let rows = extended(
        &ana,
        "SELECT id, amount FROM sales.orders WHERE amount > $1 ORDER BY id",
        &[&0i64],
    )
    .await
    .unwrap();
    assert_eq!(rows, vec!["1|10", "3|30", "5|50"]);
    let rows = extended(
        &ana,
        "SELECT count(*) FROM sales.customers WHERE email = $1",
        &[&"ana@secret.example"],
    )
    .await
    .unwrap();
    assert_eq!(rows, vec!["0"]);

    // Denied: the hidden table, writes, DDL, metadata tables of a masked table, views, COPY.
    for sql in [
        "SELECT * FROM hr.salaries",
        "SELECT count(*) FROM hr.salaries",
        "SELECT o.id FROM sales.orders o JOIN hr.salaries s ON true",
        "WITH s AS (SELECT * FROM hr.salaries) SELECT count(*) FROM s",
        "EXPLAIN SELECT * FROM hr.salaries",
        // Its row counts would count the rows the row filter hides.
        "EXPLAIN ANALYZE SELECT count(*) FROM sales.orders",
        "INSERT INTO sales.orders VALUES (9, 'eu', 1)",
        "INSERT INTO sales.orders SELECT 1, name, salary FROM hr.salaries",
        "DROP TABLE sales.orders",
        "CREATE TABLE sales.copy AS SELECT * FROM sales.customers",
        "CREATE SCHEMA mine",
        "SELECT * FROM sales.\"customers$manifests\"",
        "SELECT snapshot_id FROM sales.\"orders$snapshots\"",
        "CREATE VIEW sales.v AS SELECT * FROM sales.customers",
    ] {
        let (code, message) = simple(&ana, sql).await.expect_err(sql);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("denied"), "{sql}: {message}");
        let (code, message) = extended(&ana, sql, &[]).await.expect_err(sql);
        assert_eq!(code, "42501", "{sql} (extended): {message}");
    }

    // COPY ... TO a file: refused without `CopyTo`; with it (svc), the file holds what a query
    // would show — masked values, filtered rows — and a hidden table stays hidden.
    let out = served.dir.path().join("copied");
    std::fs::create_dir_all(&out).unwrap();
    let copy =
        |what: &str, file: &str| format!("COPY {what} TO '{}' STORED AS CSV", out.join(file).display());
    for sql in [
        copy("(SELECT * FROM sales.customers)", "ana.csv"),
        copy("sales.orders", "ana-orders.csv"),
    ] {
        let (code, message) = simple(&ana, &sql).await.expect_err(&sql);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("CopyTo"), "{sql}: {message}");
    }
    for (sql, file, expected) in [
        (
            copy("(SELECT id, email FROM sales.customers ORDER BY id)", "c.csv"),
            "c.csv",
            "id,email\n1,****a\n2,****b\n",
        ),
        (copy("sales.orders", "o.csv"), "o.csv", ""),
        (
            copy(
                "(SELECT email, count(*) AS n FROM sales.customers GROUP BY email ORDER BY email)",
                "g.csv",
            ),
            "g.csv",
            "email,n\n****a,1\n****b,1\n",
        ),
    ] {
        simple(&svc, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?}: {e:?}"));
        let written = std::fs::read_to_string(out.join(file)).unwrap();
        assert_clean(&sql, std::slice::from_ref(&written));
        if expected.is_empty() {
            let mut ids: Vec<&str> = written
                .lines()
                .skip(1)
                .filter_map(|l| l.split(',').next())
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, ["1", "3", "5"], "{sql}: {written}");
        } else {
            assert_eq!(written, expected, "{sql}");
        }
    }
    let sql = copy("hr.salaries", "s.csv");
    let (code, message) = simple(&svc, &sql).await.expect_err(&sql);
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(!out.join("s.csv").exists());
    // COPY ... TO STDOUT (psql's \copy) needs only what a query needs, and sends what a query
    // would show.
    for (sql, expected) in [
        (
            "COPY (SELECT id, email FROM sales.customers ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
            "id,email\n1,****a\n2,****b\n",
        ),
        ("COPY sales.customers (email) TO STDOUT", "****a\n****b\n"),
        (
            "COPY (SELECT id FROM sales.orders ORDER BY id) TO STDOUT",
            "1\n3\n5\n",
        ),
    ] {
        assert_eq!(copy_out(&ana, sql).await.unwrap(), expected, "{sql}");
    }
    let message = copy_out(&ana, "COPY hr.salaries TO STDOUT").await.unwrap_err();
    assert!(message.contains("denied"), "{message}");

    // Deny by default: a user without the role reads nothing, but may run statements that read
    // no table.
    let mut claims = issuer.claims("zed");
    claims["realm_access"]["roles"] = serde_json::json!([]);
    claims["resource_access"] = serde_json::json!({});
    let zed = connect(port, "zed", &rsa.sign(&claims)).await;
    assert_eq!(simple(&zed, "SELECT 40 + 2").await.unwrap(), vec!["42"]);
    let (code, message) = simple(&zed, "SELECT id FROM sales.orders").await.unwrap_err();
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("SelectFromColumns") && message.contains("zed"),
        "{message}"
    );
    let tables = simple(
        &zed,
        "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('sales', 'hr')",
    )
    .await
    .unwrap();
    assert!(tables.is_empty(), "{tables:?}");

    // The admin role sees everything.
    let mut claims = issuer.claims("root");
    claims["realm_access"]["roles"] = serde_json::json!(["admin"]);
    let root = connect(port, "root", &rsa.sign(&claims)).await;
    assert_eq!(
        simple(&root, "SELECT count(*) FROM sales.orders").await.unwrap(),
        vec!["5"]
    );
    assert_eq!(
        simple(&root, "SELECT email FROM sales.customers ORDER BY id")
            .await
            .unwrap(),
        vec!["ana@secret.example", "bob@secret.example"]
    );
    assert_eq!(
        simple(&root, "SELECT salary FROM hr.salaries").await.unwrap(),
        vec!["100"]
    );

    // The REST catalog hands out no table it would mask or filter, and says why; what it
    // would not restrict it hands out.
    let token = rsa.sign(&issuer.claims("ana"));
    for table in ["customers", "orders"] {
        let (status, body) = served.get(&format!("/iceberg/v1/namespaces/sales/tables/{table}"), &token);
        assert_eq!(status, 403, "{table}: {body}");
        assert!(
            body.contains("cannot be masked") && body.contains("ForbiddenException"),
            "{body}"
        );
    }
    let (status, body) = served.get("/iceberg/v1/namespaces/hr/tables/salaries", &token);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SelectFromColumns"), "{body}");
    let admin = rsa.sign(&claims);
    let (status, body) = served.get("/iceberg/v1/namespaces/sales/tables/customers", &admin);
    assert_eq!(status, 200, "{body}");
    // Its listings show what the caller may see, as information_schema does.
    let listed = |path: &str, token: &str| {
        let (status, body) = served.get(path, token);
        assert_eq!(status, 200, "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut names: Vec<String> = body["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        listed("/iceberg/v1/namespaces/sales/tables", &token),
        ["customers", "orders"]
    );
    assert!(listed("/iceberg/v1/namespaces/hr/tables", &token).is_empty());
    assert_eq!(
        listed("/iceberg/v1/namespaces/hr/tables", &admin),
        ["customers", "salaries"]
    );

    // psql's listing of the hidden schema shows nothing to the analyst.
    let token = rsa.sign(&issuer.claims("ana"));
    let psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "ana",
            "-d",
            "tarn",
            "-X",
            "-At",
        ])
        .args(["-c", "\\dt hr.*", "-c", "\\dt sales.*"])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&psql.stdout).to_string() + &String::from_utf8_lossy(&psql.stderr);
    assert!(!out.contains("salaries"), "{out}");
    assert!(out.contains("customers"), "{out}");
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_sql_as_user_applies_the_policy_and_a_syntax_error_refuses_to_start() {
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa]).await;
    let dir = tempfile::Builder::new().prefix("tarn-gov-").tempdir().unwrap();
    write_config(dir.path(), &issuer, free_port(), free_port());
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "CREATE SCHEMA sales; CREATE TABLE sales.customers (id BIGINT, email VARCHAR); INSERT INTO sales.customers VALUES (1, 'ana@secret.example')",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "--as",
            "ana",
            "--group",
            "analyst",
            "--format",
            "csv",
            "SELECT email FROM sales.customers",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("****a"), "{out}");
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &["sql", "--as", "zed", "SELECT email FROM sales.customers"],
    );
    assert!(!ok);
    assert!(err.contains("denied") && err.contains("zed"), "{err}");

    // `tarn policy test`: recorded inputs against Trino's documented row filter example.
    let docs = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tarn-policy/tests/trino-docs/row_filters.rego"
    );
    let table = r#"{"table": {"catalogName": "sample_catalog", "schemaName": "sample_schema", "tableName": "restricted_table"}}"#;
    let case = |name: &str, user: &str, expect: &str| {
        format!(
            r#"{{"name": "{name}", "rule": "rowFilters", "input": {{"context": {{"identity": {{"user": "{user}", "groups": []}}}}, "action": {{"operation": "GetRowFilters", "resource": {table}}}}}, "expect": {expect}}}"#
        )
    };
    let cases = dir.path().join("cases.jsonl");
    let good = [
        case(
            "alice is filtered",
            "alice",
            r#"[{"expression": "user_type <> 'customer'"}]"#,
        ),
        case("admin is not", "admin", "[]"),
    ];
    std::fs::write(&cases, good.join("\n")).unwrap();
    let (ok, out, err) = crate::tarn(
        dir.path(),
        &["policy", "test", docs, "--cases", cases.to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    std::fs::write(
        &cases,
        case("wrong expectation", "admin", r#"[{"expression": "true"}]"#),
    )
    .unwrap();
    let (ok, out, _) = crate::tarn(
        dir.path(),
        &["policy", "test", docs, "--cases", cases.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(out.contains("FAIL  wrong expectation"), "{out}");

    // A syntax error: neither `tarn sql --as` nor `tarn serve` starts, and both name the line.
    let broken = POLICY.replace("allow if admin\n", "allow if admin {\n");
    std::fs::write(dir.path().join("policy.rego"), broken).unwrap();
    let line = POLICY.lines().position(|l| l == "allow if admin").unwrap() + 1;
    let (ok, _, err) = crate::tarn(dir.path(), &["sql", "--as", "ana", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("policy.rego:"), "{err}");
    let named = err
        .rsplit("policy.rego:")
        .next()
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        named.is_some_and(|n| n >= line && n <= line + 2),
        "expected line {line}: {err}"
    );
    let (ok, _, err) = crate::tarn(dir.path(), &["serve"]);
    assert!(!ok, "serve started with a broken policy");
    assert!(
        err.contains("cannot load the policy") && err.contains("policy.rego:"),
        "{err}"
    );
}

/// `rest_catalog.vend_credentials` hands out storage.s3's keys to the whole bucket, around any
/// policy: `tarn serve` with both refuses to start and names both keys (it would otherwise
/// serve, so the test waits for the process to exit, with a deadline).
#[test]
fn serve_refuses_vended_credentials_beside_a_policy() {
    let dir = tempfile::Builder::new()
        .prefix("tarn-gov-vend-")
        .tempdir()
        .unwrap();
    let (port, http) = (free_port(), free_port());
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [auth]\ntrust_loopback = true\n\
             [storage.s3]\nregion = \"us-east-1\"\naccess_key_id = \"tarn-key\"\nsecret_access_key = \"tarn-secret\"\n\
             [rest_catalog]\nvend_credentials = true\n\
             [policy]\nfile = \"{}\"\n",
            dir.path().join("policy.rego").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(crate::tarn_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tarn serve started with rest_catalog.vend_credentials and a policy");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("rest_catalog.vend_credentials") && err.contains("policy.file"),
        "{err}"
    );
    assert!(!err.contains("tarn-secret"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the Postgres wire port opened"
    );
}

/// Trino's documented column-mask policy (`crates/tarn-policy/tests/trino-docs/column_mask.rego`),
/// unchanged, on a table of the catalog it names: the masks give Trino's values. Its
/// `'****' || substring(user_name, -3)` shows the last three characters, as in Trino (with
/// PostgreSQL's `substring` it showed the whole name), and `admin` sees the columns as they are.
#[test]
fn trinos_documented_column_masks_give_trinos_values() {
    let dir = tempfile::Builder::new()
        .prefix("tarn-gov-trino-")
        .tempdir()
        .unwrap();
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tarn-policy/tests/trino-docs/column_mask.rego"
    );
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!("[catalog]\nname = \"sample_catalog\"\n[policy]\nfile = \"{policy}\"\n"),
    )
    .unwrap();
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "--as",
            "admin",
            "CREATE SCHEMA sample_schema; CREATE TABLE sample_schema.restricted_table (id BIGINT, user_name VARCHAR, user_phone VARCHAR); \
             INSERT INTO sample_schema.restricted_table VALUES (1, 'alexandra', '555-0101'), (2, 'bo', '555-0102'), (3, NULL, NULL)",
        ],
    );
    assert!(ok, "{err}");
    let read = |user: &str| {
        let (ok, out, err) = crate::tarn(
            dir.path(),
            &[
                "sql",
                "--as",
                user,
                "--format",
                "csv",
                "SELECT id, user_name, user_phone, substring(user_name, -3) AS own FROM sample_schema.restricted_table ORDER BY id",
            ],
        );
        assert!(ok, "{user}: {err}");
        out.lines().skip(1).map(str::to_string).collect::<Vec<_>>()
    };
    // The statement's own `substring` keeps PostgreSQL's meaning (a start before the string
    // counts from a position before its first character); the policy's has Trino's.
    assert_eq!(
        read("ana"),
        vec![
            "1,****dra,,****dra".to_string(),
            "2,****,,****".to_string(),
            "3,,,".to_string()
        ]
    );
    assert_eq!(
        read("admin"),
        vec![
            "1,alexandra,555-0101,alexandra".to_string(),
            "2,bo,555-0102,bo".to_string(),
            "3,,,".to_string()
        ]
    );
}

/// What the OPA stand-in answers: as a policy would, with an error status, or too late.
#[derive(Clone, Copy, PartialEq)]
enum OpaMode {
    Decide,
    Fail,
    Slow,
}

/// An OPA server's data API played from Trino's OPA plugin documentation (OPA itself cannot
/// run on these machines): `POST /v1/data/trino/{allow,rowFilters,columnMask}` with
/// `{"input": ...}`, answered `{"result": ...}` by hand-written decisions — not by tarn's Rego
/// engine, so the contract is checked from the outside. Every request is recorded.
struct OpaStandIn {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    mode: std::sync::Arc<std::sync::Mutex<OpaMode>>,
}

impl OpaStandIn {
    async fn start() -> Self {
        use axum::extract::{Path, State};
        use serde_json::{Value, json};
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
            std::sync::Arc<std::sync::Mutex<OpaMode>>,
        );
        async fn decide(
            State((requests, mode)): State<Shared>,
            Path(rule): Path<String>,
            axum::Json(body): axum::Json<Value>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            requests.lock().unwrap().push((rule.clone(), body.clone()));
            let mode = *mode.lock().unwrap();
            match mode {
                OpaMode::Fail => {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "policy evaluation failed",
                    )
                        .into_response();
                }
                OpaMode::Slow => tokio::time::sleep(Duration::from_secs(4)).await,
                OpaMode::Decide => {}
            }
            let input = &body["input"];
            let action = &input["action"];
            let table = &action["resource"]["table"];
            let column = &action["resource"]["column"];
            let result = match rule.as_str() {
                "allow" => Some(json!(match action["operation"].as_str().unwrap_or("") {
                    "ExecuteQuery" | "AccessCatalog" | "FilterCatalogs" | "FilterSchemas" | "ShowSchemas"
                    | "ShowTables" => true,
                    "SelectFromColumns" | "FilterTables" | "FilterColumns" => {
                        input["context"]["identity"]["user"] == "svc" && table["schemaName"] == "sales"
                    }
                    _ => false,
                })),
                "rowFilters" if table["tableName"] == "orders" => {
                    Some(json!([{ "expression": "region = 'eu'" }]))
                }
                "columnMask" if column["columnName"] == "email" => Some(json!({ "expression": "'****'" })),
                // An undefined rule: OPA answers without a result.
                _ => None,
            };
            axum::Json(match result {
                Some(result) => json!({ "result": result }),
                None => json!({}),
            })
            .into_response()
        }
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mode = std::sync::Arc::new(std::sync::Mutex::new(OpaMode::Decide));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v1/data/trino/{rule}", axum::routing::post(decide))
            .with_state((requests.clone(), mode.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, requests, mode }
    }

    fn set(&self, mode: OpaMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The inputs of the recorded requests to `rule` whose operation is `operation`.
    fn inputs(&self, rule: &str, operation: &str) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, body)| r == rule && body["input"]["action"]["operation"] == operation)
            .map(|(_, body)| body["input"].clone())
            .collect()
    }
}

/// `tarn serve` with `policy.opa_url`: the decisions of an external OPA server, asked in
/// Trino's contract, are enforced over the Postgres wire (a denied table, a row filter, a
/// column mask); an OPA that answers an error or too late denies with an error naming it, and
/// the next statement after it recovers is decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_opa_servers_decisions_are_asked_in_trinos_contract_and_enforced() {
    let opa = OpaStandIn::start().await;
    let dir = tempfile::Builder::new().prefix("tarn-opa-").tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [[auth.users]]\nname = \"svc\"\npassword = \"svc-pw\"\n\
             [[auth.users]]\nname = \"eve\"\npassword = \"eve-pw\"\n\
             [policy]\nopa_url = \"{}\"\ntimeout = \"1s\"\n",
            opa.url
        ),
    )
    .unwrap();
    let (served, _) = serve_in(dir, port, http);
    let svc = connect(served.port, "svc", "svc-pw").await;

    // Enforced: the row filter and the column mask OPA answered, the table it denied.
    let orders = simple(&svc, "SELECT id, region FROM sales.orders ORDER BY id").await;
    assert_eq!(orders, Ok(vec!["1|eu".into(), "3|eu".into(), "5|eu".into()]));
    let emails = simple(&svc, "SELECT id, email FROM sales.customers ORDER BY id").await;
    assert_eq!(emails, Ok(vec!["1|****".into(), "2|****".into()]));
    let denied = simple(&svc, "SELECT * FROM hr.salaries").await.unwrap_err();
    assert_eq!(denied.0, "42501", "{denied:?}");
    assert!(
        denied.1.contains("hr.salaries") || denied.1.contains("salaries"),
        "{denied:?}"
    );
    let eve = connect(served.port, "eve", "eve-pw").await;
    let denied = simple(&eve, "SELECT id FROM sales.orders").await.unwrap_err();
    assert_eq!(denied.0, "42501", "eve may not read sales.orders: {denied:?}");

    // Asked in Trino's contract.
    let selects = opa.inputs("allow", "SelectFromColumns");
    let asked = selects
        .iter()
        .find(|i| {
            i["action"]["resource"]["table"]["tableName"] == "orders"
                && i["context"]["identity"]["user"] == "svc"
        })
        .unwrap_or_else(|| panic!("no SelectFromColumns of orders by svc among {selects:#?}"));
    assert_eq!(
        asked["context"]["identity"]["groups"],
        serde_json::json!([]),
        "{asked:#}"
    );
    let table = &asked["action"]["resource"]["table"];
    assert_eq!(table["catalogName"], "tarn", "{asked:#}");
    assert_eq!(table["schemaName"], "sales", "{asked:#}");
    let columns: Vec<&str> = table["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("columns is not an array: {asked:#}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        columns.contains(&"id") && columns.contains(&"region"),
        "{asked:#}"
    );
    let filters = opa.inputs("rowFilters", "GetRowFilters");
    assert!(
        filters.iter().any(|i| i["action"]["resource"]["table"]
            == serde_json::json!({"catalogName": "tarn", "schemaName": "sales", "tableName": "orders"})),
        "no GetRowFilters of sales.orders among {filters:#?}"
    );
    let masks = opa.inputs("columnMask", "GetColumnMask");
    let email = masks
        .iter()
        .find(|i| i["action"]["resource"]["column"]["columnName"] == "email")
        .unwrap_or_else(|| panic!("no GetColumnMask of email among {masks:#?}"));
    let column = &email["action"]["resource"]["column"];
    assert_eq!(
        (
            &column["catalogName"],
            &column["schemaName"],
            &column["tableName"],
            &column["columnType"]
        ),
        (
            &serde_json::json!("tarn"),
            &serde_json::json!("sales"),
            &serde_json::json!("customers"),
            &serde_json::json!("varchar")
        ),
        "{email:#}"
    );

    // An error status denies, naming the server and what it answered.
    opa.set(OpaMode::Fail);
    let failed = simple(&svc, "SELECT id FROM sales.orders").await.unwrap_err();
    assert_eq!(failed.0, "42501", "{failed:?}");
    assert!(
        failed.1.contains(&opa.url) && failed.1.contains("500"),
        "the error names the OPA server and its answer: {failed:?}"
    );
    // Too late denies too, within the configured timeout and a margin, not the OPA's 4 s.
    opa.set(OpaMode::Slow);
    let started = std::time::Instant::now();
    let late = simple(&svc, "SELECT id FROM sales.orders").await.unwrap_err();
    assert_eq!(late.0, "42501", "{late:?}");
    assert!(late.1.contains(&opa.url), "{late:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        started.elapsed()
    );
    // Recovered: decided again, on the same connection.
    opa.set(OpaMode::Decide);
    let orders = simple(&svc, "SELECT count(*) FROM sales.orders").await;
    assert_eq!(orders, Ok(vec!["3".into()]));
}

/// A REST commit is authorized by what it does, not as "a commit": a writer the policy lets
/// insert into `sales` appends with pyiceberg, and its overwrite, row delete, added column and
/// property change are refused (403, naming the operation) and change nothing; an admin's all
/// land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_commits_are_authorized_by_what_they_change() {
    const WRITER_POLICY: &str = r#"
package trino

import rego.v1

default allow := false

allow if "admin" in input.context.identity.groups

allow if input.context.identity.user == "svc"

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas", "ShowSchemas", "ShowTables"}

allow if {
	"writer" in input.context.identity.groups
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns", "InsertIntoTable"}
	input.action.resource.table.schemaName == "sales"
}
"#;
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let dir = tempfile::Builder::new().prefix("tarn-gov-").tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    write_config_with(dir.path(), &issuer, port, http, WRITER_POLICY);
    let (served, _) = serve_in(dir, port, http);
    let uri = format!("http://127.0.0.1:{http}/iceberg");
    let token = |role: &str| {
        let mut claims = issuer.claims(role);
        claims["realm_access"]["roles"] = serde_json::json!([role]);
        rsa.sign(&claims)
    };
    let changes = |token: String| {
        let out = tarn_test_utils::run_python(
            "rest_catalog.py",
            &[
                "governed",
                "--uri",
                &uri,
                "--table",
                "sales.orders",
                "--token",
                &token,
            ],
        )
        .unwrap();
        serde_json::from_str::<serde_json::Value>(out.lines().last().unwrap()).unwrap()
    };
    let svc = connect(served.port, "svc", "svc-pw").await;
    let state = async || {
        let rows = simple(&svc, "SELECT id FROM sales.orders ORDER BY id")
            .await
            .unwrap();
        let columns = simple(
            &svc,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'sales' AND table_name = 'orders' ORDER BY ordinal_position",
        )
        .await
        .unwrap();
        (rows, columns)
    };

    let writer = changes(token("writer"));
    assert_eq!(writer["append"], "ok", "{writer:#}");
    for (change, operation) in [
        ("overwrite", "DeleteFromTable"),
        ("delete", "DeleteFromTable"),
        ("add-column", "AddColumn"),
        ("set-property", "SetTableProperties"),
    ] {
        let got = writer[change].as_str().unwrap();
        assert!(
            got.starts_with("ForbiddenError") && got.contains(operation),
            "{change}: {got}"
        );
    }
    let (rows, columns) = state().await;
    assert_eq!(rows, ["1", "2", "3", "4", "5", "1001"], "only the append landed");
    assert_eq!(columns, ["id", "region", "amount"]);
    // A multi-table transaction: each table's change decided the same way.
    let transaction = |token: &str| {
        use std::io::{Read, Write};
        let body = r#"{"table-changes": [{"identifier": {"namespace": ["sales"], "name": "orders"}, "requirements": [], "updates": [{"action": "set-properties", "updates": {"governed.tx": "1"}}]}]}"#;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        write!(
            s,
            "POST /iceberg/v1/transactions/commit HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    let refused = transaction(&token("writer"));
    assert!(
        refused.starts_with("HTTP/1.1 403") && refused.contains("SetTableProperties"),
        "{refused}"
    );
    assert!(transaction(&token("admin")).starts_with("HTTP/1.1 204"));

    let admin = changes(token("admin"));
    for change in ["append", "overwrite", "delete", "add-column", "set-property"] {
        assert_eq!(admin[change], "ok", "{change}: {admin:#}");
    }
    let (rows, columns) = state().await;
    assert_eq!(rows, ["1002"], "the admin's overwrite replaced every row");
    assert_eq!(columns, ["id", "region", "amount", "governed_note"]);
}
