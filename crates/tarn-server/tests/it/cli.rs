//! The `tarn` binary: sql, load, table, config; bad input gives clear errors and exit codes.

use crate::tarn;

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn sql_formats_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = tarn(
        d,
        &[
            "sql",
            "CREATE TABLE t (a INT, b VARCHAR); INSERT INTO t VALUES (1, 'x'), (2, NULL)",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("INSERT 0 2"), "{out}");
    let (ok, out, _) = tarn(d, &["sql", "--format", "csv", "SELECT a, b FROM t ORDER BY a"]);
    assert!(ok);
    assert_eq!(out, "a,b\n1,x\n2,\n");
    let (ok, out, _) = tarn(d, &["sql", "--format", "json", "SELECT a FROM t ORDER BY a"]);
    assert!(ok);
    assert_eq!(out, "{\"a\":1}\n{\"a\":2}\n");
    let (ok, out, _) = tarn(d, &["sql", "SELECT count(*) AS n FROM t"]);
    assert!(ok);
    assert!(out.contains("| 2 |") && out.contains("(1 row)"), "{out}");
    let (ok, _, err) = tarn(d, &["sql", "SELECT * FROM nope"]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
    let (ok, _, err) = tarn(d, &["sql", "SELEC 1"]);
    assert!(!ok);
    assert!(err.starts_with("error:"), "{err}");
}

/// Headers name unaliased columns as PostgreSQL does (`count`, not `count(*)`), repeats too.
#[test]
fn sql_headers_use_postgresql_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, _, err) = tarn(
        d,
        &[
            "sql",
            "CREATE TABLE s (a INT, bee VARCHAR); INSERT INTO s VALUES (1, 'x'), (2, 'y')",
        ],
    );
    assert!(ok, "{err}");
    let query = "SELECT count(*), sum(s.a), string_agg(bee, ',' ORDER BY bee), a::text, count(*), 1 AS one, 2 FROM s GROUP BY a ORDER BY 2";
    let (ok, out, err) = tarn(d, &["sql", "--format", "csv", query]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "count,sum,string_agg,a,count,one,?column?\n1,1,x,1,1,1,2\n1,2,y,2,1,1,2\n"
    );
    let (ok, out, err) = tarn(d, &["sql", "--format", "json", "SELECT sum(a), max(bee) FROM s"]);
    assert!(ok, "{err}");
    assert_eq!(out, "{\"sum\":3,\"max\":\"y\"}\n");
    let (ok, out, err) = tarn(d, &["sql", "SELECT count(*), coalesce(max(bee), '-') FROM s"]);
    assert!(ok, "{err}");
    let header = out.lines().nth(1).unwrap_or_default();
    assert_eq!(
        header.split('|').map(str::trim).collect::<Vec<_>>(),
        ["", "count", "coalesce", ""],
        "{out}"
    );
}

#[test]
fn load_csv_json_parquet_with_globs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    write(&src.join("a-1.csv"), "id,name,score\n1,ann,1.5\n2,bob,2.5\n");
    write(&src.join("a-2.csv"), "id,name,score\n3,cy,3.5\n");
    let glob = format!("{}/a-*.csv", src.display());
    let (ok, _, err) = tarn(d, &["load", &glob, "--table", "raw.people"]);
    assert!(ok, "{err}");
    assert!(err.contains("loaded 3 rows"), "{err}");
    let (_, out, _) = tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT id, name FROM raw.people ORDER BY id",
        ],
    );
    assert_eq!(out, "id,name\n1,ann\n2,bob\n3,cy\n");

    // JSON lines into the same table: columns by name, missing ones NULL.
    write(
        &src.join("more.jsonl"),
        "{\"id\": 4, \"name\": \"dee\"}\n{\"id\": 5, \"name\": \"eve\", \"score\": 5.5}\n",
    );
    let (ok, _, err) = tarn(
        d,
        &[
            "load",
            src.join("more.jsonl").to_str().unwrap(),
            "--table",
            "raw.people",
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n, count(score) AS s FROM raw.people",
        ],
    );
    assert_eq!(out, "n,s\n5,4\n");

    // Parquet written by DataFusion (via COPY) loads too.
    let pq = src.join("p.parquet");
    let (ok, _, err) = tarn(
        d,
        &[
            "sql",
            &format!(
                "COPY (SELECT 7 AS id, 'pq' AS name) TO '{}' STORED AS PARQUET",
                pq.display()
            ),
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = tarn(d, &["load", pq.to_str().unwrap(), "--table", "raw.people"]);
    assert!(ok, "{err}");
    let (_, out, _) = tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT name FROM raw.people WHERE id = 7",
        ],
    );
    assert_eq!(out, "name\npq\n");

    let (ok, out, _) = tarn(d, &["table", "history", "raw.people"]);
    assert!(ok);
    assert_eq!(out.matches("snapshot ").count(), 3, "{out}");
    assert!(out.contains("added-records = 3"), "{out}");
    let (ok, out, _) = tarn(d, &["table", "describe", "raw.people"]);
    assert!(ok);
    assert!(out.contains("write.parquet.compression-codec = zstd"), "{out}");
    let (ok, out, _) = tarn(d, &["table", "list"]);
    assert!(ok);
    assert!(out.contains("raw.people"), "{out}");
}

#[test]
fn bad_files_fail_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, _, err) = tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA raw; CREATE TABLE raw.t (id BIGINT, name VARCHAR); INSERT INTO raw.t VALUES (1, 'a')",
        ],
    );
    assert!(ok, "{err}");
    let (_, before, _) = tarn(d, &["table", "history", "raw.t"]);

    let missing = d.join("missing.csv");
    let (ok, _, err) = tarn(d, &["load", missing.to_str().unwrap(), "--table", "raw.t"]);
    assert!(!ok);
    assert!(err.contains("no files match"), "{err}");

    let corrupt = d.join("corrupt.parquet");
    write(&corrupt, "this is not parquet");
    let (ok, _, err) = tarn(d, &["load", corrupt.to_str().unwrap(), "--table", "raw.t"]);
    assert!(!ok);
    assert!(
        err.contains("corrupt.parquet") || err.to_lowercase().contains("parquet"),
        "{err}"
    );

    let wrong = d.join("wrong.csv");
    write(&wrong, "id,name,extra\n1,a,zzz\n");
    let (ok, _, err) = tarn(d, &["load", wrong.to_str().unwrap(), "--table", "raw.t"]);
    assert!(!ok);
    assert!(err.contains("extra"), "{err}");

    let badtype = d.join("badtype.csv");
    write(&badtype, "id,name\nnot-a-number,a\n");
    let (ok, _, err) = tarn(d, &["load", badtype.to_str().unwrap(), "--table", "raw.t"]);
    assert!(!ok, "{err}");

    let (_, after, _) = tarn(d, &["table", "history", "raw.t"]);
    assert_eq!(before, after, "failed loads must not commit");
    let (_, out, _) = tarn(d, &["sql", "--format", "csv", "SELECT * FROM raw.t"]);
    assert_eq!(out, "id,name\n1,a\n");
    // A load that would create a table and fails leaves no table.
    let (ok, _, _) = tarn(d, &["load", corrupt.to_str().unwrap(), "--table", "raw.fresh"]);
    assert!(!ok);
    let (_, out, _) = tarn(d, &["table", "list"]);
    assert!(!out.contains("raw.fresh"), "{out}");
}

#[test]
fn config_errors_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("tarn.toml"), "[catalog]\nurll = \"sqlite://x\"\n");
    let (ok, _, err) = tarn(d, &["sql", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("urll") && err.contains("tarn.toml"), "{err}");
    write(&d.join("tarn.toml"), "[write]\ntarget_file_size = \"big\"\n");
    let (ok, _, err) = tarn(d, &["sql", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("write.target_file_size"), "{err}");
    write(&d.join("tarn.toml"), "[storage]\nwarehouse = \"ftp://host/x\"\n");
    let (ok, _, err) = tarn(d, &["config", "show"]);
    assert!(!ok);
    assert!(err.contains("storage.warehouse"), "{err}");
    write(
        &d.join("tarn.toml"),
        "[catalog]\nurl = \"postgres://u:hunter2@127.0.0.1:1/c\"\n[[auth.users]]\nname = \"a\"\npassword = \"hunter2\"\n",
    );
    let (ok, out, err) = tarn(d, &["config", "show"]);
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2") && out.contains("***"), "{out}");
    let (ok, _, err) = tarn(d, &["--set", "server.pg_listen=nonsense", "config", "show"]);
    assert!(!ok);
    assert!(err.contains("server.pg_listen"), "{err}");
    // An unreachable catalog database is named.
    std::fs::remove_file(d.join("tarn.toml")).unwrap();
    let port = tarn_test_utils::free_port();
    let url = format!("catalog.url=postgres://u:pw@127.0.0.1:{port}/c");
    let (ok, _, err) = tarn(d, &["--set", &url, "sql", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("catalog") && !err.contains(":pw@"), "{err}");
}
