//! Observability: the alert rules pass Prometheus' own checks and unit tests; a real
//! Prometheus scrapes a running `tarn serve` (SQL load, a CDC pipeline from PostgreSQL, REST
//! catalog requests) and answers PromQL over tarn's metrics; `/metrics` passes
//! `promtool check metrics`; every Grafana dashboard's query parses as PromQL (Prometheus
//! answers it) and every tarn metric it names is on that live `/metrics` (or is listed below
//! with the process that exports it).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tarn_test_utils::{PostgresServer, free_port, wait_for_port, workspace_root};

/// Metrics the dashboards or alerts show that a `tarn serve` with SQL and CDC from
/// PostgreSQL does not export, with who does. Each is still checked to parse, and the tarn
/// ones to carry help text in `tarn_server::metric_help`.
const EXPORTED_ELSEWHERE: &[(&str, &str)] = &[
    ("up", "Prometheus itself"),
    ("pg_replication_slot_slot_current_wal_lsn", "postgres_exporter"),
    (
        "pg_replication_slot_slot_confirmed_flush_lsn",
        "postgres_exporter",
    ),
    ("pg_replication_slot_slot_is_active", "postgres_exporter"),
    ("kafka_consumergroup_lag", "kafka_exporter"),
    ("tarn_kafka_consumer_lag", "tarn ingest kafka --metrics-listen"),
    ("tarn_kafka_records_total", "tarn ingest kafka --metrics-listen"),
    (
        "tarn_kafka_dead_letters_total",
        "tarn ingest kafka --metrics-listen",
    ),
    (
        "tarn_pgwire_auth_failures_total",
        "tarn serve, after the first refused login",
    ),
    (
        "tarn_cdc_restarts_total",
        "tarn serve, after the first pipeline restart",
    ),
    (
        "tarn_maintenance_files_rewritten_total",
        "tarn maintain and automatic maintenance",
    ),
    (
        "tarn_maintenance_snapshots_expired_total",
        "tarn maintain and automatic maintenance",
    ),
    (
        "tarn_maintenance_bytes_deleted_total",
        "tarn maintain and automatic maintenance",
    ),
    ("tarn_scheduler_active", "tarn serve with [jobs]"),
    ("tarn_job_runs_total", "tarn serve with [jobs]"),
    ("tarn_job_tries_total", "tarn serve with [jobs]"),
    ("tarn_job_sla_misses_total", "tarn serve with [jobs]"),
];

fn promtool(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn prometheus_dir() -> PathBuf {
    workspace_root().join("deploy/prometheus")
}

#[test]
fn alert_rules_pass_promtool_and_fire_in_its_unit_tests() {
    let dir = prometheus_dir();
    let (ok, out) = promtool(&["check", "rules", "rules/tarn.rules.yml"], &dir);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(ok, "promtool check config:\n{out}");
    // The unit tests: lag, freshness burn, job failure, scheduler lease, WAL retained,
    // conflicts and catalog errors fire when they should and not before.
    let (ok, out) = promtool(&["test", "rules", "tests/tarn.rules.test.yml"], &dir);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    // A broken expectation must fail: the lag alert does not fire at minute 15.
    let tmp = tempfile::tempdir().unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/tarn.rules.test.yml"))
        .unwrap()
        .replace(
            "../rules/tarn.rules.yml",
            &dir.join("rules/tarn.rules.yml").display().to_string(),
        )
        .replacen(
            "- eval_time: 16m\n        alertname: TarnCdcLagHigh",
            "- eval_time: 15m\n        alertname: TarnCdcLagHigh",
            1,
        );
    std::fs::write(tmp.path().join("t.yml"), tests).unwrap();
    let (ok, out) = promtool(&["test", "rules", "t.yml"], tmp.path());
    assert!(
        !ok && out.contains("TarnCdcLagHigh"),
        "a wrong expectation passed:\n{out}"
    );
}

/// A `tarn serve` on free loopback ports, with `extra` appended to its tarn.toml; killed on
/// drop.
struct Served {
    child: Child,
    pg_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-obs-").tempdir().unwrap();
        let (pg_port, http_port) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
                 [auth]\ntrust_loopback = true\n{extra}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let served = Self {
            child,
            pg_port,
            http_port,
            dir,
        };
        for port in [pg_port, http_port] {
            if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
                panic!("tarn serve did not start: {e}\n{}", served.log());
            }
        }
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn psql(&self, sql: &str) -> (bool, String) {
        let out = Command::new("psql")
            .arg(format!("postgres://tarn@127.0.0.1:{}/tarn", self.pg_port))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus on a free loopback port, its data in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates tarn's rules.
    fn start(target: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-prom-").tempdir().unwrap();
        let port = free_port();
        let rules = prometheus_dir().join("rules/tarn.rules.yml");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tarn\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/setup.sh installs it)");
        let prometheus = Self {
            child,
            port,
            _dir: dir,
        };
        if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
            let log =
                std::fs::read_to_string(prometheus._dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("prometheus did not start: {e}\n{log}");
        }
        prometheus
    }

    /// Waits until Prometheus says it is ready: it listens before its storage is open, and
    /// answers queries with a plain-text 503 until then.
    async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("http://127.0.0.1:{}/-/ready", self.port);
        wait_body(http, &url, Duration::from_secs(60), |_| true).await;
    }

    /// `/api/v1/query`: the HTTP status and the JSON answer.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> (u16, serde_json::Value) {
        let response = http
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        let answer = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {status} {body:?} to {expr:?}: {e}"));
        (status, answer)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric names of a Prometheus text exposition (`_bucket`, `_sum`, `_count` included).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, strings
/// and grouping clauses that are not functions, keywords or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        // Aggregations, which may precede their `by (...)` clause: `sum by (le) (...)`.
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut skip_parens = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '"' || c == '[' {
            let close = match c {
                '{' => '}',
                '"' => '"',
                _ => ']',
            };
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
        } else if c == '(' && skip_parens {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_parens = false;
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                skip_parens = true;
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number (1e-9, 0.99) or a duration.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '-')
            {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, route) (rate(tarn_x_bucket{job=~\"a\"}[5m]))) / on (instance) clamp_min(up, 1e-9) > bool 300",
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["tarn_x_bucket", "up"]);
}

/// Every panel query of every dashboard: (dashboard file, panel title, expression).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = workspace_root().join("deploy/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "tarn-overview.json",
        "tarn-cdc-kafka.json",
        "tarn-sql.json",
        "tarn-lake.json",
        "tarn-jobs.json",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no dashboard {want} in {}",
            dir.display()
        );
    }
    let mut uids = BTreeSet::new();
    let mut queries = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_string()),
            "{name}: uid used twice"
        );
        assert!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            variables,
            ["datasource", "job", "instance"],
            "{name}: template variables"
        );
        let panels = dashboard["panels"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: panel id used twice"
            );
            let grid = &panel["gridPos"];
            assert!(
                grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
                "{name}: panel wider than the grid"
            );
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap().to_string();
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}/{title}: data source"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}/{title}: no query");
            for target in targets {
                queries.push((
                    name.clone(),
                    title.clone(),
                    target["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    queries
}

/// A dashboard query with Grafana's variables replaced as Grafana would.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// Fetches `url` until it answers 200 and `check` accepts the body, or panics after `timeout`.
async fn wait_body(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            last = r.text().await.unwrap_or_default();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{url} did not answer as expected within {timeout:?}; last:\n{last}");
}

/// `/healthz` answers while the process runs; `/readyz` only while the catalog answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_catalog_and_healthz_does_not() {
    crate::init_logs();
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE catalog").unwrap();
    let served = Served::start(&format!("[catalog]\nurl = \"{}\"\n", pg.url("catalog")));
    let http = reqwest::Client::new();
    let ready = wait_body(&http, &served.url("/readyz"), Duration::from_secs(30), |b| {
        b == "ready\n"
    })
    .await;
    assert_eq!(ready, "ready\n");
    // The catalog database goes away.
    drop(pg);
    let deadline = Instant::now() + Duration::from_secs(90);
    let (status, body) = loop {
        let r = http.get(served.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 503, "{body}\n{}", served.log());
    assert!(body.contains("catalog unavailable"), "{body}");
    let health = http.get(served.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_tarn_and_every_dashboard_query_parses_and_names_its_metrics() {
    crate::init_logs();
    let pg = PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, status TEXT); INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 50) g;",
    )
    .unwrap();
    // An empty job directory: the scheduler runs and reports its (empty) queue.
    let jobs = tempfile::Builder::new()
        .prefix("tarn-obs-jobs-")
        .tempdir()
        .unwrap();
    let served = Served::start(&format!(
        "[cdc]\nsource = \"{}\"\nflush = {{ interval = \"200ms\", bridged_interval = \"200ms\" }}\n[jobs]\ndir = \"{}\"\n",
        pg.url("app"),
        jobs.path().display()
    ));
    let http = reqwest::Client::new();

    // Liveness and readiness.
    let health = http.get(served.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = wait_body(&http, &served.url("/readyz"), Duration::from_secs(30), |b| {
        b.contains("ready")
    })
    .await;
    assert_eq!(ready, "ready\n");

    // SQL load: DDL, writes (commits, files, rows), reads, an error.
    let (ok, out) = served.psql("CREATE TABLE sales (id BIGINT NOT NULL, region VARCHAR, amount DOUBLE)");
    assert!(ok, "{out}\n{}", served.log());
    for i in 0..10 {
        let (ok, out) = served.psql(&format!(
            "INSERT INTO sales VALUES ({i}, 'eu', {i}.5), ({}, 'us', 1.0)",
            i + 100
        ));
        assert!(ok, "{out}");
    }
    let (ok, out) = served.psql("SELECT count(*) FROM sales");
    assert!(ok && out.trim() == "20", "{out}");
    let (ok, _) = served.psql("SELECT * FROM no_such_table");
    assert!(!ok);
    // CDC: changes after the snapshot.
    pg.psql("app", "INSERT INTO orders SELECT g, 'late' FROM generate_series(51, 80) g; UPDATE orders SET status = 'paid' WHERE id <= 10;")
        .unwrap();
    // The REST catalog.
    for path in [
        "/iceberg/v1/config",
        "/iceberg/v1/namespaces",
        "/iceberg/v1/namespaces/nope",
    ] {
        http.get(served.url(path)).send().await.unwrap();
    }

    // /metrics once CDC has streamed the changes: the lag and event counters are there.
    let metrics = wait_body(&http, &served.url("/metrics"), Duration::from_secs(90), |m| {
        m.contains("tarn_cdc_events_total")
            && m.contains("tarn_cdc_lag_seconds")
            && m.contains("tarn_cdc_commit_seconds")
    })
    .await;
    let scrape = served.dir.path().join("metrics.prom");
    std::fs::write(&scrape, &metrics).unwrap();
    // Prometheus' linter: help text on every metric, _total on counters only, base units.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < '{}'", scrape.display()))
        .output()
        .unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{lint}\n{metrics}");
    assert!(metrics.contains("# HELP tarn_commits_total "), "{metrics}");
    let exposed = exposed_names(&metrics);
    for want in [
        "tarn_pgwire_queries_total",
        "tarn_pgwire_errors_total",
        "tarn_commits_total",
        "tarn_commit_conflicts_total",
        "tarn_rows_written_total",
        "tarn_catalog_requests_total",
        "tarn_catalog_request_duration_seconds_bucket",
        "tarn_cdc_lag_bytes",
        "tarn_sql_statement_duration_seconds_bucket",
        "tarn_sql_rows_returned_total",
        "tarn_sql_errors_total",
        "tarn_job_runs_queued",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(exposed.contains(want), "{want} is not on /metrics:\n{metrics}");
    }
    // Between commits the lag is set on a timer: with the changes committed and nothing
    // pending, it drops to 0 (at a commit it is the last change's source-to-lake time).
    wait_body(&http, &served.url("/metrics"), Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "tarn_cdc_lag_seconds 0")
    })
    .await;

    // A real Prometheus scrapes tarn and answers PromQL over its metrics.
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", served.http_port));
    prometheus.wait_ready(&http).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let commits = loop {
        let (status, answer) = prometheus
            .query(&http, "sum(tarn_commits_total{job=\"tarn\"})")
            .await;
        assert_eq!(status, 200, "{answer}");
        if let Some(v) = answer["data"]["result"][0]["value"][1].as_str() {
            break v.parse::<f64>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no tarn_commits_total after 60 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // 10 INSERTs and the CDC pipeline's commits.
    assert!(commits >= 10.0, "sum(tarn_commits_total) = {commits}");
    let (_, answer) = prometheus.query(&http, "tarn_pgwire_queries_total").await;
    let queries: f64 = answer["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(queries >= 13.0, "tarn_pgwire_queries_total = {queries}");
    // Statement latency by kind, rows returned, errors by SQLSTATE, process metrics.
    let value = |answer: &serde_json::Value| -> Vec<(String, f64)> {
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"].to_string(),
                    r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect()
    };
    let (_, answer) = prometheus
        .query(
            &http,
            "sum by (kind) (tarn_sql_statement_duration_seconds_count{job=\"tarn\"})",
        )
        .await;
    let by_kind = value(&answer);
    let count = |kind: &str| {
        by_kind
            .iter()
            .find(|(m, _)| m.contains(&format!("\"kind\":\"{kind}\"")))
            .map_or(0.0, |(_, v)| *v)
    };
    assert!(
        count("insert") >= 10.0 && count("select") >= 2.0 && count("ddl") >= 1.0,
        "{answer}"
    );
    let (_, answer) = prometheus
        .query(
            &http,
            // Over the counts since start (a rate needs statements between two scrapes).
            "histogram_quantile(0.99, sum by (le) (tarn_sql_statement_duration_seconds_bucket{job=\"tarn\"}))",
        )
        .await;
    assert!(value(&answer).first().is_some_and(|(_, v)| *v > 0.0), "{answer}");
    let (_, answer) = prometheus
        .query(&http, "tarn_sql_errors_total{sqlstate=\"42P01\",class=\"42\"}")
        .await;
    assert!(value(&answer).first().is_some_and(|(_, v)| *v >= 1.0), "{answer}");
    let (_, answer) = prometheus
        .query(&http, "sum(tarn_sql_rows_returned_total{kind=\"select\"})")
        .await;
    assert!(value(&answer).first().is_some_and(|(_, v)| *v >= 1.0), "{answer}");
    let (_, answer) = prometheus
        .query(&http, "process_resident_memory_bytes{job=\"tarn\"} > 1e6")
        .await;
    assert_eq!(value(&answer).len(), 1, "{answer}");
    let (_, answer) = prometheus
        .query(
            &http,
            "sum(tarn_job_runs_queued{job=\"tarn\"}) + sum(tarn_scheduler_active)",
        )
        .await;
    assert_eq!(value(&answer).first().map(|(_, v)| *v), Some(1.0), "{answer}");
    // The rules loaded and evaluate without errors.
    let rules: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/api/v1/rules", prometheus.port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(groups.len() >= 5, "{rules}");
    for group in groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(
                rule["health"], "err",
                "rule {} fails: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    // A parse error is an error: the check below can fail.
    let (status, answer) = prometheus.query(&http, "sum(rate(tarn_commits_total[1m])").await;
    assert_eq!(
        (status, answer["errorType"].as_str()),
        (400, Some("bad_data")),
        "{answer}"
    );

    // Every dashboard query parses, and names metrics tarn exports.
    let help: BTreeSet<&str> = tarn_server::metric_help::names().collect();
    let elsewhere: HashMap<&str, &str> = EXPORTED_ELSEWHERE.iter().copied().collect();
    let mut problems = Vec::new();
    let mut from_scrape = 0;
    let queries = dashboard_queries();
    for (dashboard, panel, expr) in &queries {
        let (status, answer) = prometheus.query(&http, &as_grafana_sends(expr)).await;
        if status != 200 || answer["status"] != "success" {
            problems.push(format!("{dashboard} / {panel}: {expr}: {answer}"));
        }
        for name in metric_names(expr) {
            if exposed.contains(&name) {
                from_scrape += 1;
                continue;
            }
            match elsewhere.get(name.as_str()) {
                None => problems.push(format!(
                    "{dashboard} / {panel}: {name} is not on tarn's /metrics (nor listed in EXPORTED_ELSEWHERE)"
                )),
                Some(_) if name.starts_with("tarn_") && !help.contains(name.as_str()) => {
                    problems.push(format!("{dashboard} / {panel}: {name} has no help text in metric_help"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "dashboard queries:\n{}", problems.join("\n"));
    // The query KEDA's Prometheus trigger sends for the scheduler parses too.
    let file = workspace_root().join("deploy/kubernetes/base/scheduler-scaledobject.yaml");
    let keda: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: ").map(str::to_string))
        .collect();
    assert_eq!(keda.len(), 1, "{}: one Prometheus query", file.display());
    for expr in &keda {
        let (status, answer) = prometheus.query(&http, expr).await;
        assert!(status == 200 && answer["status"] == "success", "{expr}: {answer}");
    }
    // Most of the dashboards' metric names come from the live scrape, not the list of
    // metrics exported elsewhere (29 of them when written).
    assert!(
        queries.len() >= 40 && from_scrape >= 25,
        "{} queries, {from_scrape} names from the live scrape",
        queries.len()
    );
}

/// Spans received by a test OTLP/HTTP receiver: (name, trace id in hex, parent span id or
/// empty), from the protobuf `ExportTraceServiceRequest`s `tarn serve` posts.
type Spans = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver on a free loopback port: `POST /v1/traces` decoded with the
/// OpenTelemetry protocol's own message types.
async fn otlp_receiver() -> (u16, Spans, tokio::task::JoinHandle<()>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans: Spans = Default::default();
    let received = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                assert_eq!(
                    headers.get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/x-protobuf")
                );
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                let mut received = received.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value));
                    assert!(
                        service.as_deref().is_some_and(|s| s.contains("\"tarn\"")),
                        "service.name: {service:?}"
                    );
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                            received.push((span.name, trace, span.parent_span_id));
                        }
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, spans, task)
}

/// With `telemetry.otlp_endpoint`, a statement sent through the Postgres wire endpoint
/// reaches an OTLP receiver as a `statement` span, an INSERT's commit as a `commit` span in the
/// same trace; with `log.format = "json"` the statement's log line is JSON with the stable
/// fields and the span's trace id, and carries no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_reaches_an_otlp_receiver_with_its_trace_id_in_the_json_log() {
    crate::init_logs();
    let (port, spans, _receiver) = otlp_receiver().await;
    let served = Served::start(&format!(
        "[log]\nformat = \"json\"\nlevel = \"info,tarn::statement=debug\"\n\
         [telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n"
    ));
    let (ok, out) = served.psql("SELECT 42 AS answer");
    assert!(ok && out.trim() == "42", "{out}\n{}", served.log());
    let (ok, out) = served.psql("CREATE TABLE traced (id BIGINT NOT NULL)");
    assert!(ok, "{out}");
    let (ok, out) = served.psql("INSERT INTO traced VALUES (1), (2)");
    assert!(ok, "{out}");

    // The batch exporter sends every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (statement_traces, commit_traces) = loop {
        let got = spans.lock().unwrap().clone();
        let statements: Vec<String> = got
            .iter()
            .filter(|(name, _, parent)| name == "statement" && parent.is_empty())
            .map(|(_, trace, _)| trace.clone())
            .collect();
        let commits: Vec<String> = got
            .iter()
            .filter(|(name, _, parent)| name == "commit" && !parent.is_empty())
            .map(|(_, trace, _)| trace.clone())
            .collect();
        if statements.len() >= 3 && !commits.is_empty() {
            break (statements, commits);
        }
        assert!(
            Instant::now() < deadline,
            "spans received after 60 s: {got:?}\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The commit is a child span of the INSERT's statement.
    assert!(
        commit_traces.iter().all(|t| statement_traces.contains(t)),
        "commit traces {commit_traces:?}, statement traces {statement_traces:?}"
    );

    // The statement's JSON log line: stable fields, the span's kind and trace id.
    let log = served.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log written to a file:\n{log}"
    );
    let finished: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("statement finished"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let select = finished
        .iter()
        .find(|l| l["span"]["kind"] == "select")
        .unwrap_or_else(|| panic!("no log line of the SELECT:\n{log}"));
    for field in ["timestamp", "level", "target"] {
        assert!(select[field].is_string(), "{field} missing: {select}");
    }
    assert_eq!(select["fields"]["message"], "statement finished", "{select}");
    assert_eq!(select["fields"]["rows"], 1, "{select}");
    assert!(select["span"]["query_id"].is_u64(), "{select}");
    let trace = select["span"]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id: {select}"));
    assert!(
        statement_traces.iter().any(|t| t == trace),
        "the log line's trace id {trace} is not a received statement span's: {statement_traces:?}"
    );

    // The Fluent Bit configurations in deploy/logging read these lines as they are (JSON,
    // the fields their filters and labels name, the timestamp format).
    let lines = served.dir.path().join("lines.json");
    std::fs::write(&lines, &log).unwrap();
    let out = Command::new(workspace_root().join(".venv/bin/python"))
        .arg(workspace_root().join("deploy/logging/check.py"))
        .arg(&lines)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/logging/check.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_overhead_benchmark_refuses_to_measure_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &["bench", "observability", "--sf", "0", "--changes", "0"],
    );
    assert!(!ok && err.contains("nothing to measure"), "{err}");
    let (ok, _, err) = crate::tarn(dir.path(), &["bench", "observability", "--sf=-1"]);
    assert!(!ok && err.contains("--sf must not be negative"), "{err}");
}
