//! The audit trail (docs/governance.md, "Audit"): decisions (allowed and denied) and writes of
//! statements run under a policy land in `tarn_audit.events` and as JSON log lines; only the
//! auditor role reads the table, even when the policy allows the caller everything; nobody
//! writes, drops or alters it through SQL.

/// `tarn sql --as USER --group G... SQL`: (ok, stdout, stderr).
fn sql_as(dir: &std::path::Path, user: &str, groups: &[&str], sql: &str) -> (bool, String, String) {
    let mut args = vec!["sql", "--as", user, "--format", "csv"];
    for g in groups {
        args.extend(["--group", g]);
    }
    args.push(sql);
    crate::tarn(dir, &args)
}

#[test]
fn audit_records_decisions_and_writes_and_only_the_auditor_reads_them() {
    let dir = tempfile::Builder::new().prefix("tarn-audit-").tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.rego"), crate::governance::POLICY).unwrap();
    std::fs::write(
        d.join("tarn.toml"),
        format!(
            "[log]\nformat = \"json\"\n[policy]\nfile = \"{}\"\n[audit]\nauditor_role = \"compliance\"\n",
            d.join("policy.rego").display()
        ),
    )
    .unwrap();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA sales; CREATE TABLE sales.orders (id BIGINT, region VARCHAR, amount BIGINT);
             INSERT INTO sales.orders VALUES (1, 'eu', 10), (2, 'us', 20)",
        ],
    );
    assert!(ok, "{err}");

    // An allowed read, a denied read, a write.
    let (ok, out, err) = sql_as(
        d,
        "ana",
        &["analyst"],
        "SELECT id FROM sales.orders WHERE amount > 5",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["1"], "{out}");
    // The decision is a JSON log line with the principal, operations, tables and fingerprint.
    let line = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "tarn::audit")
        .unwrap_or_else(|| panic!("no tarn::audit JSON line in {err}"));
    let fields = &line["fields"];
    assert_eq!(fields["user"], "ana", "{line}");
    assert_eq!(fields["decision"], "allow", "{line}");
    assert_eq!(fields["tables"], "tarn.sales.orders", "{line}");
    assert!(
        fields["operations"]
            .as_str()
            .unwrap()
            .contains("SelectFromColumns"),
        "{line}"
    );
    assert_eq!(
        fields["statement"], "select id from sales.orders where amount > ?",
        "{line}"
    );
    assert_eq!(fields["fingerprint"].as_str().map(str::len), Some(16), "{line}");

    let (ok, _, err) = sql_as(d, "zed", &[], "SELECT * FROM sales.orders");
    assert!(!ok);
    assert!(err.contains("access denied"), "{err}");
    let (ok, _, err) = sql_as(
        d,
        "root",
        &["admin"],
        "INSERT INTO sales.orders VALUES (3, 'eu', 30), (4, 'eu', 40)",
    );
    assert!(ok, "{err}");
    // Row-level writes: a record per kind of change, with its rows.
    for statement in [
        "UPDATE sales.orders SET amount = 11 WHERE id = 1",
        "DELETE FROM sales.orders WHERE region = 'nowhere'",
        "MERGE INTO sales.orders t USING (SELECT 2 AS id UNION ALL SELECT 5) s ON t.id = s.id \
         WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'eu', 50)",
        "CREATE OR REPLACE TABLE sales.orders AS SELECT * FROM sales.orders WHERE id <> 3",
    ] {
        let (ok, _, err) = sql_as(d, "root", &["admin"], statement);
        assert!(ok, "{statement}: {err}");
    }

    // The admin, whom the policy allows everything, may not read the trail, list it, or change it.
    let (ok, _, err) = sql_as(d, "root", &["admin"], "SELECT * FROM tarn_audit.events");
    assert!(!ok, "a non-auditor read the audit trail");
    assert!(
        err.contains("access denied") && err.contains("compliance"),
        "{err}"
    );
    let (ok, out, err) = sql_as(
        d,
        "root",
        &["admin"],
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tarn_audit'",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        1,
        "the trail is listed for a non-auditor: {out}"
    );
    for (groups, statement) in [
        (
            &["admin"][..],
            "INSERT INTO tarn_audit.events (event_id) VALUES ('forged')",
        ),
        (&["admin"][..], "DROP TABLE tarn_audit.events"),
        (&["compliance"][..], "DROP TABLE tarn_audit.events"),
        (&["compliance"][..], "DROP SCHEMA tarn_audit"),
        (
            &["compliance", "admin"][..],
            "CREATE TABLE tarn_audit.fake AS SELECT 1 AS x",
        ),
        (
            &["compliance", "admin"][..],
            "INSERT INTO tarn_audit.events SELECT * FROM tarn_audit.events",
        ),
        (
            &["compliance", "admin"][..],
            "ALTER TABLE tarn_audit.events RENAME TO gone",
        ),
    ] {
        let (ok, _, err) = sql_as(d, "root", groups, statement);
        assert!(!ok, "{statement} ran for {groups:?}");
        assert!(err.contains("access denied"), "{statement}: {err}");
    }

    // The auditor reads every record: the allowed read, the denial, the write with its rows,
    // and the refused attempts on the trail itself.
    let (ok, out, err) = sql_as(
        d,
        "audrey",
        &["compliance"],
        "SELECT user_name, kind, decision, tables, rows_written, statement, reason FROM tarn_audit.events ORDER BY event_time",
    );
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    let has = |f: &dyn Fn(&str) -> bool| rows.iter().any(|r| f(r));
    assert!(
        has(&|r| r.starts_with(
            "ana,decision,allow,tarn.sales.orders,,select id from sales.orders where amount > ?"
        )),
        "{out}"
    );
    assert!(
        has(&|r| r.starts_with("zed,decision,deny,tarn.sales.orders") && r.contains("access denied")),
        "{out}"
    );
    assert!(
        has(&|r| r.starts_with(
            r#"root,write,allow,tarn.sales.orders,2,"insert into sales.orders values (?, ?, ?), (?, ?, ?)""#
        )),
        "{out}"
    );
    for expected in [
        "root,write,allow,tarn.sales.orders,1,update sales.orders set amount = ? where id = ?",
        "root,write,allow,tarn.sales.orders,0,delete from sales.orders where region = ?",
        "root,write,allow,tarn.sales.orders,1,\"merge into sales.orders t using",
        "root,write,allow,tarn.sales.orders,3,create or replace table sales.orders as select",
    ] {
        assert!(has(&|r| r.starts_with(expected)), "{expected}: {out}");
    }
    // The MERGE deleted one row and inserted one: two records.
    assert_eq!(
        rows.iter()
            .filter(|r| r.starts_with("root,write,allow,tarn.sales.orders,1,\"merge into"))
            .count(),
        2,
        "{out}"
    );
    assert!(
        has(&|r| r.starts_with("root,decision,deny,tarn.tarn_audit.events") && r.contains("compliance")),
        "{out}"
    );
    assert!(has(&|r| r.contains("drop schema tarn_audit")), "{out}");
    // No literal of any statement is in the trail.
    assert!(!out.contains("'eu'") && !out.contains("forged"), "{out}");
}

/// A role file as `policy.file`: the same masks and decisions as the hand-written Rego, and
/// `tarn policy compile` prints the Rego it evaluates.
#[test]
fn role_file_policy_is_enforced_and_compiles_to_rego() {
    let dir = tempfile::Builder::new().prefix("tarn-roles-").tempdir().unwrap();
    let d = dir.path();
    let role_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tarn-policy/tests/role-file/governance.toml"
    );
    std::fs::copy(role_file, d.join("policy.toml")).unwrap();
    std::fs::write(
        d.join("tarn.toml"),
        format!(
            "[policy]\nfile = \"{}\"\n[audit]\nenabled = false\n",
            d.join("policy.toml").display()
        ),
    )
    .unwrap();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA sales; CREATE TABLE sales.customers (id BIGINT, email VARCHAR);
             INSERT INTO sales.customers VALUES (1, 'ana@secret.example')",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = sql_as(d, "ana", &["analyst"], "SELECT email FROM sales.customers");
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("****a"), "{out}");
    let (ok, out, err) = sql_as(d, "svc", &[], "SELECT email FROM sales.customers");
    assert!(ok, "svc has the analyst role through [users]: {err}");
    assert_eq!(out.lines().nth(1), Some("****a"), "{out}");
    let (ok, out, err) = sql_as(d, "root", &["admin"], "SELECT email FROM sales.customers");
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("ana@secret.example"), "{out}");
    let (ok, _, err) = sql_as(d, "zed", &[], "SELECT email FROM sales.customers");
    assert!(!ok && err.contains("access denied"), "{err}");

    let (ok, rego, err) = crate::tarn(d, &["policy", "compile", d.join("policy.toml").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        rego.contains("package trino") && rego.contains("rowFilters contains"),
        "{rego}"
    );

    // An unknown key: neither `tarn sql --as` nor `policy compile` goes on, and both name the line.
    std::fs::write(d.join("policy.toml"), "[roles.analyst]\ngrants = []\nmask = []\n").unwrap();
    let (ok, _, err) = sql_as(d, "ana", &["analyst"], "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains("policy.toml:3:") && err.contains("unknown field `mask`"),
        "{err}"
    );
    let (ok, _, err) = crate::tarn(d, &["policy", "compile", d.join("policy.toml").to_str().unwrap()]);
    assert!(!ok && err.contains("policy.toml:3:"), "{err}");
}

/// Topic ACLs: `tarn ingest kafka` whose principal the policy does not let consume its topic
/// refuses to start, naming the topic and principal (before contacting any broker); `tarn
/// policy kafka-acls` prints the broker ACLs of the grants.
#[cfg(feature = "kafka")]
#[test]
fn a_kafka_pipeline_the_policy_denies_refuses_to_start() {
    let dir = tempfile::Builder::new().prefix("tarn-topics-").tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("policy.toml"),
        "[roles.ingest]\ntopics = [{ name = \"orders\", allow = [\"consume\"] }, { name = \"orders.dlq\", allow = [\"publish\"] }]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("tarn.toml"),
        format!(
            "[policy]\nfile = \"{}\"\n[cdc]\nprincipal = \"etl\"\nprincipal_roles = [\"ingest\"]\n[cdc.kafka]\ngroup = \"orders\"\n",
            d.join("policy.toml").display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "ingest",
            "kafka",
            "--brokers",
            "127.0.0.1:9",
            "--topic",
            "payments",
        ],
    );
    assert!(!ok, "a denied pipeline started");
    assert!(
        err.contains("access denied")
            && err.contains("ConsumeFromTopic")
            && err.contains("\"payments\"")
            && err.contains("etl"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // The refusal is in the audit trail, for the auditor.
    let (ok, out, err) = sql_as(
        d,
        "audrey",
        &["auditor"],
        "SELECT user_name, kind, decision, operations, tables FROM tarn_audit.events",
    );
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l == "etl,decision,deny,ConsumeFromTopic,topic:payments"),
        "{out}"
    );

    let (ok, out, err) = crate::tarn(
        d,
        &[
            "policy",
            "kafka-acls",
            "--topic",
            "orders",
            "--topic",
            "orders.dlq",
            "--topic",
            "payments",
            "--bootstrap-server",
            "kafka:9092",
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let base = "kafka-acls.sh --bootstrap-server kafka:9092 --add --allow-principal User:etl";
    assert!(
        lines.contains(&format!("{base} --operation Read --operation Describe --topic orders").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&format!("{base} --operation Write --operation Describe --topic orders.dlq").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&format!("{base} --operation Read --group orders").as_str()),
        "{out}"
    );
    assert!(!out.contains("payments"), "{out}");
}

/// `tarn serve`: statements over the Postgres wire protocol (simple and extended) are recorded
/// with their fingerprints, and the records reach the table on the flush interval while the
/// server runs (no shutdown needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_of_the_wire_endpoint_are_appended_while_serving() {
    use tarn_test_utils::oidc::{RSA1, Signer, issuer};
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let (served, _) = crate::governance::serve(&issuer);
    let client = crate::governance::connect(served.port, "svc", "svc-pw").await;
    client
        .simple_query("SELECT id FROM sales.orders WHERE amount > 20")
        .await
        .unwrap();
    let rows = client
        .query("SELECT email FROM sales.customers WHERE id = $1", &[&1i64])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(client.simple_query("SELECT * FROM hr.salaries").await.is_err());

    // The operator (plain `tarn sql`, no policy) reads the trail as the server appends it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let out = loop {
        let (ok, out, err) = crate::tarn(
            served.dir.path(),
            &[
                "sql",
                "--format",
                "csv",
                "SELECT decision, tables, fingerprint, statement FROM tarn_audit.events WHERE user_name = 'svc' ORDER BY event_time",
            ],
        );
        if ok && out.contains("hr.salaries") && out.contains("sales.customers where id = $1") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the records did not reach tarn_audit.events: {out}{err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let lines: Vec<&str> = out.lines().collect();

    // The REST catalog: the audit table is loaded by the auditor only, even an admin is refused;
    // its requests are recorded too.
    let token = |user: &str, roles: &[&str]| {
        let mut claims = issuer.claims(user);
        claims["realm_access"]["roles"] = serde_json::json!(roles);
        rsa.sign(&claims)
    };
    let path = "/iceberg/v1/namespaces/tarn_audit/tables/events";
    let (status, body) = served.get(path, &token("root", &["admin"]));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auditor"), "{body}");
    let (status, body) = served.get(path, &token("audrey", &["auditor"]));
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, out, err) = crate::tarn(
            served.dir.path(),
            &[
                "sql",
                "--format",
                "csv",
                "SELECT user_name, decision, operations FROM tarn_audit.events WHERE operations LIKE 'REST %'",
            ],
        );
        if ok && out.contains("root,deny,REST GET") && out.contains("audrey,allow,REST GET") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no REST records: {out}{err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    assert!(
        lines.iter().any(|l| l.starts_with("allow,tarn.sales.orders,")
            && l.ends_with(",select id from sales.orders where amount > ?")),
        "{out}"
    );
    let extended: Vec<&&str> = lines
        .iter()
        .filter(|l| l.ends_with("select email from sales.customers where id = $1"))
        .collect();
    assert_eq!(
        extended.len(),
        1,
        "the extended protocol's statement recorded once: {out}"
    );
    assert!(extended[0].starts_with("allow,tarn.sales.customers,"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("deny,tarn.hr.salaries,")),
        "{out}"
    );
}

/// A CDC pipeline's commits are writes in the audit trail, as the pipeline's principal: the
/// initial copy and each streamed commit, `InsertIntoTable` with the rows added and
/// `DeleteFromTable` with the rows deleted (an update is both), naming the lake table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdc_pipelines_commits_are_audited_as_its_principal() {
    let mut cdc = crate::cdc::Cdc::new(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'v' FROM generate_series(1, 10) g;",
    )
    .await;
    let policy = cdc.lake.path().join("policy.rego");
    std::fs::write(&policy, crate::governance::POLICY).unwrap();
    cdc.set("policy.file", policy.to_str().unwrap());
    cdc.set("cdc.principal", "etl");
    cdc.set("cdc.principal_roles", "[\"ingest\"]");
    cdc.set("cdc.flush.interval", "100ms");
    let log = tarn_cdc::pipeline::commit_audit_log(&cdc.config(), cdc.lake.session.lake())
        .unwrap()
        .expect("a trail under a policy");
    let running = cdc
        .start_with(tarn_cdc::pipeline::RunOptions {
            audit: Some(log.clone()),
            ..Default::default()
        })
        .await;
    let (source, lake) = (
        "SELECT id, v FROM items ORDER BY id",
        "SELECT id, v FROM cdc.items ORDER BY id",
    );
    cdc.wait_same(source, lake, std::time::Duration::from_secs(60))
        .await;
    cdc.sql("UPDATE items SET v = 'w' WHERE id <= 3; DELETE FROM items WHERE id = 10; INSERT INTO items VALUES (11, 'n')");
    cdc.wait_same(source, lake, std::time::Duration::from_secs(60))
        .await;
    running.stop().await;
    log.close().await.unwrap();

    let rows = crate::query(
        &cdc.lake.session,
        "SELECT user_name, groups, operations, tables, decision, sum(rows_written) FROM tarn_audit.events \
         WHERE kind = 'write' GROUP BY 1, 2, 3, 4, 5 ORDER BY 3",
    )
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            "etl|ingest|DeleteFromTable|tarn.cdc.items|allow|4",
            "etl|ingest|InsertIntoTable|tarn.cdc.items|allow|14",
        ],
        "10 copied, 3 updated (deleted and added), 1 deleted, 1 inserted"
    );
}
