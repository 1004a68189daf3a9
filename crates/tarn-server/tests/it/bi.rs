//! BI tools over `tarn serve`'s Postgres wire endpoint, with the clients themselves: SQLAlchemy
//! 1.4 + psycopg2 (what Superset 6 runs on), the catalog queries Metabase's PostgreSQL driver
//! syncs with (recorded from its source in `tests/fixtures/metabase_sync_queries.sql`, run over
//! pgjdbc as Metabase runs them), pgjdbc's `DatabaseMetaData` (DBeaver's view), and psql's
//! `\dn`, `\dt+`, `\d+`, `\df`. The lake tables are made by pyiceberg through tarn's Iceberg REST
//! catalog, as another engine would: `shop.orders` with an identifier field (its primary key),
//! a table comment and column docs, and `shop.every_type` with a column of each Iceberg type.
//! With a policy, a principal who may not see a table learns nothing of its keys or comments.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tarn_test_utils::{free_port, run_python, wait_for_port, workspace_root};

/// A `tarn serve` process on free loopback ports; killed on drop.
struct Served {
    child: Child,
    pg_port: u16,
    http_port: u16,
}

impl Served {
    /// Serves `dir` (config `extra` appended to the listeners'), trusting loopback clients.
    fn start(dir: &Path, extra: &str) -> Self {
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::write(
            dir.join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n{extra}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir)
            .arg("serve")
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        for port in [pg_port, http_port] {
            if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
                let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                panic!("tarn serve did not start: {e}\n{log}");
            }
        }
        Self {
            child,
            pg_port,
            http_port,
        }
    }

    /// `psql` as `user` (trusted loopback): (success, stdout, stderr).
    fn psql(&self, user: &str, command: &str) -> (bool, String, String) {
        let out = Command::new("psql")
            .arg(format!("postgres://{user}@127.0.0.1:{}/tarn", self.pg_port))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", command])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `tests/interop/BiJdbc.java` with pgjdbc: its stdout lines.
    fn jdbc(&self, user: &str, password: &str, args: &[&str]) -> Vec<String> {
        let out = Command::new("java")
            .arg("-cp")
            .arg(pgjdbc_jar())
            .arg(workspace_root().join("tests/interop/BiJdbc.java"))
            .args([&self.pg_port.to_string(), user, password])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "BiJdbc {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(str::to_string).collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgjdbc_jar() -> PathBuf {
    std::fs::read_dir("/usr/share/java")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("postgresql"))
        })
        .expect("pgjdbc jar: install libpostgresql-jdbc-java (scripts/setup.sh)")
}

/// The JSON document `tests/interop/<script>` prints, run with `args` by the Python of
/// Superset's stack ([`superset_python`]); panics with its output when it fails.
pub(crate) fn superset_script(script: &str, args: &[&str]) -> Value {
    let out = Command::new(superset_python())
        .arg(workspace_root().join("tests/interop").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Python of the venv with SQLAlchemy 1.4 and psycopg2 (`scripts/setup.sh` makes it).
fn superset_python() -> PathBuf {
    let python = workspace_root().join(".venv-superset/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it makes the SQLAlchemy 1.4 + psycopg2 venv)",
        python.display()
    );
    python
}

/// A served lake with the BI tables made through the REST catalog (module doc).
fn lake_with_tables(dir: &Path) -> Served {
    let served = Served::start(dir, "[auth]\ntrust_loopback = true\n");
    let uri = format!("http://127.0.0.1:{}/iceberg", served.http_port);
    let out = run_python("bi_setup.py", &["--uri", &uri]).unwrap();
    assert!(out.contains("shop.orders"), "{out}");
    let (ok, _, err) = served.psql(
        "setup",
        "CREATE TABLE public.plain (id BIGINT NOT NULL, name VARCHAR)",
    );
    assert!(ok, "{err}");
    served
}

#[test]
fn sqlalchemy_superset_stack_reflects_keys_comments_and_types() {
    let dir = tempfile::Builder::new().prefix("tarn-bi-").tempdir().unwrap();
    let served = lake_with_tables(dir.path());
    let seen = superset_script("bi_sqlalchemy.py", &["--port", &served.pg_port.to_string()]);
    assert!(seen["sqlalchemy"].as_str().unwrap().starts_with("1.4."), "{seen}");
    // The dialect reads a PostgreSQL version from `select pg_catalog.version()`.
    assert_eq!(seen["server_version"], json!([15, 0]));
    assert_eq!(seen["default_schema"], "public");
    assert_eq!(seen["schemas"], json!(["public", "shop"]));
    assert_eq!(
        seen["tables"],
        json!({"public": ["plain"], "shop": ["every_type", "orders"]})
    );
    assert_eq!(seen["views"], json!([]));
    assert_eq!(
        seen["columns"],
        json!([
            {"name": "id", "type": "BIGINT()", "nullable": false, "comment": "order number"},
            {"name": "customer", "type": "TEXT()", "nullable": true, "comment": "who ordered"},
            {"name": "total", "type": "NUMERIC(precision=12, scale=2)", "nullable": true, "comment": null},
            {"name": "placed_at", "type": "TIMESTAMP(timezone=True)", "nullable": true, "comment": null},
        ])
    );
    assert_eq!(
        seen["pk"],
        json!({"constrained_columns": ["id"], "name": "orders_pkey"})
    );
    // The primary key's index is not listed among the table's other indexes, as PostgreSQL's.
    assert_eq!(seen["indexes"], json!([]));
    assert_eq!(seen["foreign_keys"], json!([]));
    assert_eq!(seen["unique"], json!([]));
    assert_eq!(seen["checks"], json!([]));
    assert_eq!(seen["comment"], json!({"text": "orders placed in the shop"}));
    assert_eq!(
        seen["reflected"],
        json!([
            ["id", "BIGINT", true],
            ["customer", "TEXT", false],
            ["total", "NUMERIC(12, 2)", false],
            ["placed_at", "TIMESTAMP", false]
        ])
    );
    // Every Iceberg type: the type SQLAlchemy reflects, the OID psycopg2 sees, the value it reads.
    let types: Vec<(String, String)> = seen["every_type_columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("c_boolean", "BOOLEAN()", 16, "True"),
        ("c_int", "INTEGER()", 23, "42"),
        ("c_long", "BIGINT()", 20, "9000000000"),
        ("c_float", "REAL()", 700, "1.5"),
        ("c_double", "DOUBLE_PRECISION(precision=53)", 701, "2.25"),
        (
            "c_decimal",
            "NUMERIC(precision=10, scale=3)",
            1700,
            "Decimal('1234.567')",
        ),
        ("c_date", "DATE()", 1082, "datetime.date(2026, 3, 4)"),
        ("c_time", "TIME()", 1083, "datetime.time(5, 6, 7, 890000)"),
        (
            "c_timestamp",
            "TIMESTAMP()",
            1114,
            "datetime.datetime(2026, 3, 4, 5, 6, 7, 890000)",
        ),
        (
            "c_timestamptz",
            "TIMESTAMP(timezone=True)",
            1184,
            "datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.timezone.utc)",
        ),
        ("c_string", "TEXT()", 25, "'héllo'"),
        (
            "c_uuid",
            "UUID()",
            2950,
            "UUID('12345678-1234-5678-1234-567812345678')",
        ),
        ("c_fixed", "BYTEA()", 17, "\\x616263"),
        ("c_binary", "BYTEA()", 17, "\\x0001ff"),
    ];
    for (i, (name, reflected, oid, value)) in expected.iter().enumerate() {
        assert_eq!(types[i], (name.to_string(), reflected.to_string()), "{seen}");
        assert_eq!(seen["type_oids"][name], json!(oid), "{name}: {seen}");
        assert_eq!(seen["values"][0][i], json!(value), "{name}: {seen}");
        assert_eq!(seen["values"][1][i], Value::Null, "{name}: {seen}");
    }
    assert_eq!(seen["count"], 1);
    // Scoped to a schema with `search_path`, as Superset's SQL Lab connects.
    assert_eq!(
        seen["scoped"],
        json!({"default_schema": "shop", "tables": ["every_type", "orders"], "count": 1, "after_set": "public"})
    );
}

/// The fixture's blocks: (name, expected column labels).
fn fixture_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("-- name: ") {
            name = Some(n.trim().to_string());
        } else if let Some(columns) = line.strip_prefix("-- columns:") {
            let columns = columns.trim();
            let columns = if columns.is_empty() {
                Vec::new()
            } else {
                columns.split('|').map(str::to_string).collect()
            };
            blocks.push((name.take().expect("a name before the columns"), columns));
        }
    }
    blocks
}

/// `BiJdbc queries` output: by block name, (column labels, rows as `a|b` lines).
fn query_results(lines: &[String]) -> std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut results = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in lines {
        if let Some(name) = line.strip_prefix('#') {
            current = name.to_string();
            results.insert(current.clone(), (Vec::new(), Vec::new()));
        } else if let Some(columns) = line.strip_prefix("columns") {
            let entry = results.get_mut(&current).unwrap();
            entry.0 = columns
                .strip_prefix('|')
                .map(|c| c.split('|').map(str::to_string).collect())
                .unwrap_or_default();
        } else if let Some(row) = line.strip_prefix("row|") {
            results.get_mut(&current).unwrap().1.push(row.to_string());
        } else {
            panic!("unexpected output line {line:?}");
        }
    }
    results
}

#[test]
fn metabase_sync_pgjdbc_metadata_and_psql_describe_lake_tables() {
    let dir = tempfile::Builder::new().prefix("tarn-bi-").tempdir().unwrap();
    let served = lake_with_tables(dir.path());

    // Metabase's sync queries, from its driver's source, over pgjdbc on a read-only connection.
    let fixture = workspace_root().join("tests/fixtures/metabase_sync_queries.sql");
    let blocks = fixture_blocks(&std::fs::read_to_string(&fixture).unwrap());
    assert!(blocks.len() >= 10, "{blocks:?}");
    let results = query_results(&served.jdbc("metabase", "", &["queries", fixture.to_str().unwrap()]));
    for (name, columns) in &blocks {
        let (got, _) = results
            .get(name)
            .unwrap_or_else(|| panic!("{name} did not run: {results:?}"));
        if columns != &["*"] {
            assert_eq!(got, columns, "{name}: the result's columns");
        }
    }
    let rows = |name: &str| results[name].1.clone();
    assert_eq!(rows("db-default-timezone"), ["UTC"]);
    assert_eq!(
        rows("describe-database"),
        [
            "shop|every_type|TABLE|null|null",
            "shop|orders|TABLE|orders placed in the shop|null"
        ]
    );
    assert_eq!(
        rows("describe-fields"),
        [
            "id|int8|0|shop|orders|t|order number|t|f",
            "customer|text|1|shop|orders|f|who ordered|f|f",
            "total|numeric|2|shop|orders|f|null|f|f",
            "placed_at|timestamptz|3|shop|orders|f|null|f|f",
        ]
    );
    assert_eq!(rows("describe-indexes"), ["shop|orders|id"]);
    assert_eq!(rows("describe-fks"), Vec::<String>::new());
    assert_eq!(rows("enum-types"), Vec::<String>::new());
    let privileges = rows("table-privileges");
    assert!(
        privileges.contains(&"null|shop|orders|t|t|t|t".to_string()),
        "{privileges:?}"
    );

    // DBeaver's navigator: a schema's tables, columns, constraints and indexes, by the schema's
    // oid (read once, used by every later query: oids stay put between statements).
    let fixture = workspace_root().join("tests/fixtures/dbeaver_navigator_queries.sql");
    let blocks = fixture_blocks(&std::fs::read_to_string(&fixture).unwrap());
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    let dbeaver = query_results(&served.jdbc("dbeaver", "", &["queries", fixture.to_str().unwrap()]));
    let rows_with = |name: &str, needle: &str| -> usize {
        dbeaver[name].1.iter().filter(|row| row.contains(needle)).count()
    };
    assert_eq!(dbeaver["dbeaver-tables"].1.len(), 2, "{dbeaver:?}");
    assert_eq!(rows_with("dbeaver-tables", "|orders|"), 1, "{dbeaver:?}");
    assert_eq!(
        rows_with("dbeaver-tables", "|orders placed in the shop|"),
        1,
        "{dbeaver:?}"
    );
    assert_eq!(dbeaver["dbeaver-columns"].1.len(), 4 + 14, "{dbeaver:?}");
    assert_eq!(rows_with("dbeaver-columns", "|order number"), 1, "{dbeaver:?}");
    assert_eq!(rows_with("dbeaver-columns", "c_uuid|2950|"), 1, "{dbeaver:?}");
    assert_eq!(dbeaver["dbeaver-constraints"].1.len(), 1, "{dbeaver:?}");
    assert_eq!(
        rows_with("dbeaver-constraints", "|orders_pkey|"),
        1,
        "{dbeaver:?}"
    );
    assert_eq!(dbeaver["dbeaver-indexes"].1.len(), 1, "{dbeaver:?}");
    assert_eq!(rows_with("dbeaver-indexes", "|orders_pkey|"), 1, "{dbeaver:?}");

    // pgjdbc's DatabaseMetaData, as DBeaver reads it.
    let metadata = served.jdbc("dbeaver", "", &["metadata"]);
    let has = |line: &str| metadata.iter().any(|l| l == line);
    assert!(has("product|PostgreSQL|15"), "{metadata:?}");
    for schema in ["schema|public", "schema|shop"] {
        assert!(has(schema), "{schema}: {metadata:?}");
    }
    assert!(
        has("table|shop|orders|TABLE|orders placed in the shop"),
        "{metadata:?}"
    );
    assert!(has("table|shop|every_type|TABLE|null"), "{metadata:?}");
    for column in [
        "column|id|int8|-5|19|0|NO|order number|1",
        "column|customer|text|12|2147483647|0|YES|who ordered|2",
        "column|total|numeric|2|12|2|YES|null|3",
        "column|placed_at|timestamptz|93|35|6|YES|null|4",
    ] {
        assert!(has(column), "{column}: {metadata:?}");
    }
    assert!(has("pk|shop|orders|id|1|orders_pkey"), "{metadata:?}");
    assert!(has("index|orders_pkey|f|id|1"), "{metadata:?}");

    // psql's describe commands.
    let (ok, out, err) = served.psql("analyst", "\\dn");
    assert!(ok && out.contains("shop") && out.contains("public"), "{out}{err}");
    let (ok, out, err) = served.psql("analyst", "\\dt+ shop.*");
    assert!(ok, "{err}");
    let orders = out
        .lines()
        .find(|l| l.contains(" orders "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        orders.contains("orders placed in the shop") && orders.contains("bytes"),
        "{out}"
    );
    let (ok, out, err) = served.psql("analyst", "\\d+ shop.orders");
    assert!(ok, "{err}");
    for expected in [
        "id        | bigint",
        "total     | numeric(12,2)",
        "placed_at | timestamp with time zone",
        "order number",
        "\"orders_pkey\" PRIMARY KEY, btree (id)",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    let (ok, out, err) = served.psql("analyst", "\\df");
    assert!(ok && out.contains("List of functions"), "{out}{err}");
}

const POLICY: &str = r#"
package trino

import rego.v1

default allow := false

allow if input.context.identity.user == "admin"

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas"}

allow if {
	input.context.identity.user == "analyst"
	input.action.operation in {"SelectFromColumns", "FilterTables", "FilterColumns"}
	input.action.resource.table.tableName != "orders"
}
"#;

/// Rows of `sql` in the simple protocol as `a|b` lines.
async fn simple(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

async fn connect(port: u16, user: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={user}-pw dbname=tarn"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// A principal who may not see `shop.orders` finds neither its key, its index, its comments nor
/// its columns in any catalog relation or look-up function; one who may, finds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_hides_keys_and_comments_of_tables_a_principal_may_not_see() {
    let dir = tempfile::Builder::new().prefix("tarn-bi-gov-").tempdir().unwrap();
    drop(lake_with_tables(dir.path()));
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    let served = Served::start(
        dir.path(),
        &format!(
            "[[auth.users]]\nname = \"admin\"\npassword = \"admin-pw\"\n\
             [[auth.users]]\nname = \"analyst\"\npassword = \"analyst-pw\"\n\
             [policy]\nfile = \"{}\"\n",
            dir.path().join("policy.rego").display()
        ),
    );
    let admin = connect(served.pg_port, "admin").await;
    let analyst = connect(served.pg_port, "analyst").await;
    let oid = simple(
        &admin,
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'shop' AND c.relname = 'orders'",
    )
    .await;
    let [oid] = oid.as_slice() else { panic!("{oid:?}") };
    let lookups = format!(
        "SELECT col_description({oid}, 1), obj_description({oid}, 'pg_class'), \
         pg_catalog.pg_get_constraintdef({oid} + 1500000000), 'shop.orders'::regclass::oid, \
         pg_catalog.pg_get_indexdef({oid} + 1000000000)"
    );
    // (probe, what the analyst sees, what the admin sees)
    let probes: Vec<(String, Vec<String>, String)> = vec![
        (
            "SELECT conname FROM pg_catalog.pg_constraint WHERE conname LIKE 'orders%'".into(),
            vec![],
            "orders_pkey".into(),
        ),
        (
            "SELECT c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
             WHERE i.indisprimary AND c.relname LIKE 'orders%'"
                .into(),
            vec![],
            "orders_pkey".into(),
        ),
        (
            "SELECT relname FROM pg_catalog.pg_class WHERE relname LIKE 'orders%' ORDER BY 1".into(),
            vec![],
            "orders,orders_pkey".into(),
        ),
        (
            "SELECT description FROM pg_catalog.pg_description \
             WHERE description IN ('orders placed in the shop', 'order number', 'who ordered') ORDER BY 1"
                .into(),
            vec![],
            "order number,orders placed in the shop,who ordered".into(),
        ),
        (
            "SELECT table_name, constraint_name, constraint_type FROM information_schema.table_constraints".into(),
            vec![],
            "orders|orders_pkey|PRIMARY KEY".into(),
        ),
        (
            "SELECT table_name, column_name, ordinal_position FROM information_schema.key_column_usage".into(),
            vec![],
            "orders|id|1".into(),
        ),
        (
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position"
                .into(),
            vec![],
            "id,customer,total,placed_at".into(),
        ),
        (
            format!("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {oid} ORDER BY attnum"),
            vec![],
            "id,customer,total,placed_at".into(),
        ),
        (
            lookups,
            vec!["NULL|NULL|NULL|NULL|NULL".into()],
            format!(
                "order number|orders placed in the shop|PRIMARY KEY (id)|{oid}|\
                 CREATE UNIQUE INDEX orders_pkey ON shop.orders USING btree (id)"
            ),
        ),
    ];
    for (probe, hidden, shown) in &probes {
        assert_eq!(
            &simple(&analyst, probe).await,
            hidden,
            "the analyst, through {probe}"
        );
        // The extended protocol too.
        let rows = analyst
            .query(probe.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{probe}: {e:?}"));
        assert_eq!(
            rows.len(),
            hidden.len(),
            "the analyst, extended protocol: {probe}"
        );
        assert_eq!(
            &simple(&admin, probe).await.join(","),
            shown,
            "the admin, through {probe}"
        );
    }
    // What the analyst may see, it sees described.
    let seen = simple(
        &analyst,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'every_type' AND column_name = 'c_uuid'",
    )
    .await;
    assert_eq!(seen, ["c_uuid|uuid"]);
}
