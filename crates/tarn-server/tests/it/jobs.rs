//! The scheduler (`tarn jobs`, docs/jobs.md), with the real binary: a DAG run on its cron
//! schedule in dependency order, retries with backoff then alerts to a webhook and an SMTP
//! server (both started here on loopback), an SLA miss, catch-up of missed intervals and a
//! backfill, kill -9 of the scheduler mid-run, two scheduler replicas, and the HTTP API.
//! Run state is read from the catalog database with the library's own `Store`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tarn_server::jobs::store::{Run, RunState, Store, TaskStatus, Try};

/// A data directory with a `tarn.toml` (short ticks and lease) and an empty `jobs/`.
fn data_dir(extra_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("tarn-jobs-").tempdir().unwrap();
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!("[jobs]\ntick = \"200ms\"\nlease_ttl = \"2s\"\n{extra_toml}\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    dir
}

fn write_job(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join("jobs").join(format!("{name}.toml")), text).unwrap();
}

async fn store(dir: &Path) -> Store {
    Store::open(&crate::config_for(dir, &[])).await.unwrap()
}

/// Waits (polling, with a deadline) until `check` gives a value.
async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn successful_runs(store: &Store, job: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = store
        .runs(Some(job), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.state == RunState::Success)
        .collect();
    runs.sort_by_key(|r| r.logical_date);
    runs
}

fn try_of<'a>(tries: &'a [Try], task: &str, n: i64) -> &'a Try {
    tries
        .iter()
        .find(|t| t.task_id == task && t.try_number == n)
        .unwrap_or_else(|| panic!("no try {n} of {task} in {tries:#?}"))
}

/// A `tarn jobs scheduler` process; killed on drop.
struct Scheduler {
    child: Child,
    log: PathBuf,
}

impl Scheduler {
    fn start(dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["jobs", "scheduler"])
            .env_remove("TARN_CONFIG")
            .env_remove("TARN_DATA_DIR")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid in an owner name `HOST:PID:RANDOM`.
fn owner_pid(owner: &str) -> u32 {
    owner.split(':').nth(1).unwrap().parse().unwrap()
}

/// A Slack-style webhook receiver: every request body, with when it arrived.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                seen.lock().unwrap().push((Instant::now(), value));
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        Self { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/alerts", self.port)
    }

    fn texts(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// A minimal SMTP receiver (RFC 5321's commands a client sends, answered with success): every
/// message's envelope recipients and DATA.
/// Messages received: envelope recipients and DATA.
type Mailbox = Arc<Mutex<Vec<(Vec<String>, String)>>>;

struct Smtp {
    port: u16,
    messages: Mailbox,
}

impl Smtp {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut out) = stream else { continue };
                let mut reader = BufReader::new(out.try_clone().unwrap());
                let _ = out.write_all(b"220 test.invalid ESMTP ready\r\n");
                let mut rcpt = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-test.invalid\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[8..].trim().to_string());
                        b"250 OK\r\n"
                    } else if upper.starts_with("DATA") {
                        let _ = out.write_all(b"354 go ahead\r\n");
                        let mut data = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == ".\r\n" {
                                break;
                            }
                            data.push_str(&line);
                        }
                        seen.lock().unwrap().push((std::mem::take(&mut rcpt), data));
                        b"250 OK queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = out.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    if out.write_all(reply).is_err() {
                        break;
                    }
                }
            }
        });
        Self { port, messages }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn messages(&self) -> Vec<(Vec<String>, String)> {
        self.messages.lock().unwrap().clone()
    }
}

fn alerts_toml(webhook: &Webhook, smtp: &Smtp) -> String {
    format!(
        "[jobs.alerts]\nwebhook_url = \"{}\"\nsmtp_url = \"{}\"\nemail_from = \"tarn@example.com\"\nemail_to = [\"oncall@example.com\"]\n",
        webhook.url(),
        smtp.url()
    )
}

#[tokio::test]
async fn a_dag_of_sql_load_maintain_and_export_runs_on_cron_in_dependency_order() {
    let dir = data_dir("");
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA sales; CREATE TABLE sales.runs (logical VARCHAR, interval_end VARCHAR, region VARCHAR)",
        ],
    );
    assert!(ok, "{err}");
    std::fs::write(d.join("jobs/orders.csv"), "id,amount\n1,10\n2,20\n3,30\n").unwrap();
    write_job(
        d,
        "pipeline",
        r#"
        description = "stage, load, maintain, export"
        schedule = "*/2 * * * * *"
        [params]
        region = "eu"
        [[tasks]]
        id = "stage"
        kind = "sql"
        sql = "INSERT INTO sales.runs VALUES ('{{ ts }}', '{{ data_interval_end }}', '{{ params.region }}')"
        [[tasks]]
        id = "load"
        kind = "load"
        depends_on = ["stage"]
        paths = ["orders.csv"]
        table = "sales.orders"
        [[tasks]]
        id = "maintain"
        kind = "maintain"
        depends_on = ["load"]
        tables = ["sales.orders"]
        compact = true
        [[tasks]]
        id = "export"
        kind = "export"
        depends_on = ["load"]
        sql = "SELECT count(*) AS n FROM sales.orders"
        path = "exports/{{ ds_nodash }}/{{ run_id }}"
        "#,
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("pipeline") && out.contains("*/2 * * * * *"), "{out}");
    assert!(out.contains("load:load <- stage"), "{out}");

    let mut scheduler = Scheduler::start(d, "scheduler");
    let store = store(d).await;
    let runs = wait_until(
        "two scheduled runs to succeed",
        Duration::from_secs(120),
        || async {
            let runs = successful_runs(&store, "pipeline").await;
            (runs.len() >= 2).then_some(runs)
        },
    )
    .await;
    assert!(scheduler.stop().success(), "{}", scheduler.log());
    assert!(
        scheduler.log().contains("this process is the active scheduler"),
        "{}",
        scheduler.log()
    );

    for run in &runs {
        assert_eq!(run.trigger, "scheduled");
        // Cron intervals: two seconds long, on even seconds.
        assert_eq!(
            (run.interval_end - run.interval_start).num_seconds(),
            2,
            "{run:?}"
        );
        assert_eq!(run.logical_date.timestamp() % 2, 0, "{run:?}");
        let tries = store.tries(&run.run_id).await.unwrap();
        assert_eq!(tries.len(), 4, "{tries:#?}");
        let (stage, load) = (try_of(&tries, "stage", 1), try_of(&tries, "load", 1));
        let (maintain, export) = (try_of(&tries, "maintain", 1), try_of(&tries, "export", 1));
        assert!(tries.iter().all(|t| t.state == TaskStatus::Success), "{tries:#?}");
        assert!(stage.finished_at.unwrap() <= load.started_at, "{tries:#?}");
        assert!(load.finished_at.unwrap() <= maintain.started_at, "{tries:#?}");
        assert!(load.finished_at.unwrap() <= export.started_at, "{tries:#?}");
        let logs = store.logs(&run.run_id, Some("load"), None).await.unwrap();
        assert!(logs.iter().any(|l| l.line.contains("loaded 3 rows")), "{logs:#?}");
        let exported = d.join(format!(
            "warehouse/exports/{}/{}",
            run.logical_date.format("%Y%m%d"),
            run.run_id
        ));
        assert!(exported.exists(), "no export at {}", exported.display());
    }
    // Each run's parameters reached its SQL: one row per run, with its own interval.
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT logical, interval_end, region FROM sales.runs ORDER BY logical",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    for run in &runs {
        let line = format!(
            "{},{},eu",
            run.logical_date.format("%Y-%m-%dT%H:%M:%SZ"),
            run.interval_end.format("%Y-%m-%dT%H:%M:%SZ")
        );
        assert!(rows.contains(&line.as_str()), "{line} not in {rows:?}");
    }
    let all = store.runs(Some("pipeline"), 1000).await.unwrap();
    let (ok, out, _) = crate::tarn(
        d,
        &["sql", "--format", "csv", "SELECT count(*) FROM sales.orders"],
    );
    assert!(ok);
    let loaded: usize = out.lines().nth(1).unwrap().parse().unwrap();
    let loads = {
        let mut n = 0;
        for r in &all {
            let tries = store.tries(&r.run_id).await.unwrap();
            n += tries
                .iter()
                .filter(|t| t.task_id == "load" && t.state == TaskStatus::Success)
                .count();
        }
        n
    };
    assert_eq!(loaded, 3 * loads);
    // The CLI shows the history and the logs.
    let (ok, out, err) = crate::tarn(d, &["jobs", "history", "pipeline"]);
    assert!(ok && out.contains(&runs[0].run_id), "{out}{err}");
    let (ok, out, err) = crate::tarn(d, &["jobs", "logs", &runs[0].run_id, "load"]);
    assert!(ok && out.contains("loaded 3 rows"), "{out}{err}");
}

#[tokio::test]
async fn a_failing_task_retries_with_backoff_then_alerts_by_webhook_and_email() {
    let (webhook, smtp) = (Webhook::start(), Smtp::start());
    let dir = data_dir(&alerts_toml(&webhook, &smtp));
    let d = dir.path();
    write_job(
        d,
        "flaky",
        r#"
        [[tasks]]
        id = "fetch"
        kind = "shell"
        command = "echo attempt $TARN_TRY_NUMBER of {{ job }}; exit 3"
        retries = 2
        retry_delay = "400ms"
        [[tasks]]
        id = "after"
        kind = "shell"
        command = "echo never"
        depends_on = ["fetch"]
        "#,
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "flaky"]);
    assert!(!ok, "a failed run exits non-zero: {out}{err}");
    assert!(out.contains("failed") && out.contains("upstream_failed"), "{out}");
    let store = store(d).await;
    let run = store.runs(Some("flaky"), 1).await.unwrap().remove(0);
    assert_eq!(run.state, RunState::Failed);
    let tries = store.tries(&run.run_id).await.unwrap();
    assert_eq!(tries.len(), 3, "one try and two retries: {tries:#?}");
    assert!(
        tries.iter().all(|t| t.state == TaskStatus::Failed
            && t.error.as_deref().unwrap_or_default().contains("exited with")),
        "{tries:#?}"
    );
    // Exponential backoff: 400 ms, then 800 ms.
    let gap = |a: i64, b: i64| {
        (try_of(&tries, "fetch", b).started_at - try_of(&tries, "fetch", a).finished_at.unwrap())
            .num_milliseconds()
    };
    assert!(gap(1, 2) >= 400, "{tries:#?}");
    assert!(gap(2, 3) >= 800, "{tries:#?}");
    let tasks = store.tasks(&run.run_id).await.unwrap();
    assert_eq!(
        tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.state.as_str()))
            .collect::<Vec<_>>(),
        [("after", "upstream_failed"), ("fetch", "failed")]
    );
    let logs = store.logs(&run.run_id, Some("fetch"), Some(3)).await.unwrap();
    assert!(logs.iter().any(|l| l.line == "attempt 3 of flaky"), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.line.contains("no retries left")),
        "{logs:#?}"
    );
    // One alert to each destination, after the last try.
    let texts = webhook.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("task fetch of job flaky failed") && texts[0].contains("after 3 tries"),
        "{}",
        texts[0]
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let (rcpt, data) = &messages[0];
    assert_eq!(rcpt, &["<oncall@example.com>"]);
    assert!(
        data.contains("Subject: [tarn] task fetch of job flaky failed"),
        "{data}"
    );
    assert!(data.contains(&run.run_id), "{data}");
}

#[tokio::test]
async fn concurrency_limits_http_tasks_and_timeouts_that_kill_the_command() {
    let target = Webhook::start();
    let dir = data_dir("");
    let d = dir.path();
    let marks = d.join("marks");
    write_job(
        d,
        "limits",
        &format!(
            r#"
            max_active_tasks = 1
            [[tasks]]
            id = "a"
            kind = "shell"
            command = "echo a-start >> {marks}; sleep 1; echo a-end >> {marks}"
            [[tasks]]
            id = "b"
            kind = "shell"
            command = "echo b-start >> {marks}; sleep 1; echo b-end >> {marks}"
            [[tasks]]
            id = "ping"
            kind = "http"
            depends_on = ["a", "b"]
            url = "{url}"
            method = "post"
            body = '{{"text": "ran {{{{ ds }}}} as {{{{ task }}}}"}}'
            headers = {{ "Content-Type" = "application/json" }}
            [[tasks]]
            id = "hang"
            kind = "shell"
            depends_on = ["ping"]
            command = "sleep 60; echo woke >> {marks}"
            timeout = "1s"
            "#,
            marks = marks.display(),
            url = target.url()
        ),
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "limits", "--date", "2026-12-03"]);
    assert!(!ok, "the timed-out task fails the run: {out}{err}");
    // One task at a time: each task's lines together.
    let lines: Vec<String> = std::fs::read_to_string(&marks)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines[0].split('-').next(),
        lines[1].split('-').next(),
        "{lines:?}"
    );
    assert!(
        lines[0].ends_with("-start") && lines[1].ends_with("-end"),
        "{lines:?}"
    );
    assert_eq!(target.texts(), ["ran 2026-12-03 as ping"]);
    let store = store(d).await;
    let run = store.runs(Some("limits"), 1).await.unwrap().remove(0);
    let tries = store.tries(&run.run_id).await.unwrap();
    let hang = try_of(&tries, "hang", 1);
    assert_eq!(hang.error.as_deref(), Some("timed out after 1s"), "{hang:?}");
    // The command's whole process group was killed: its `sleep` too.
    let pgid = hang.pid.expect("the command's process group is recorded");
    assert!(
        !tarn_server::jobs::exec::group_alive(pgid),
        "process group {pgid} still runs"
    );
    assert!(
        (hang.finished_at.unwrap() - hang.started_at).num_seconds() < 10,
        "{hang:?}"
    );
}

#[tokio::test]
async fn a_run_past_its_sla_alerts_while_it_still_runs() {
    let (webhook, smtp) = (Webhook::start(), Smtp::start());
    let dir = data_dir(&alerts_toml(&webhook, &smtp));
    let d = dir.path();
    write_job(
        d,
        "slow",
        "sla = \"1s\"\n[[tasks]]\nid = \"crunch\"\nkind = \"shell\"\ncommand = \"sleep 4\"\n",
    );
    let started = Instant::now();
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "slow"]);
    let ended = Instant::now();
    assert!(ok, "{out}{err}");
    assert!(out.contains("SLA missed"), "{out}");
    let store = store(d).await;
    let run = store.runs(Some("slow"), 1).await.unwrap().remove(0);
    assert!(run.sla_missed && run.state == RunState::Success, "{run:?}");
    let bodies = webhook.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "one SLA alert: {bodies:?}");
    let (at, body) = &bodies[0];
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("SLA missed: job slow") && text.contains("sla 1s"),
        "{text}"
    );
    // Alerted while the task ran, not at its end.
    assert!(*at > started + Duration::from_millis(900), "alerted too early");
    assert!(
        ended.duration_since(*at) > Duration::from_secs(1),
        "alerted only at the end"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].1.contains("SLA missed"), "{}", messages[0].1);
}

#[tokio::test]
async fn catchup_runs_each_missed_interval_once_and_backfill_runs_a_range() {
    let dir = data_dir("");
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA daily; CREATE TABLE daily.days (ds VARCHAR, run VARCHAR)",
        ],
    );
    assert!(ok, "{err}");
    let today = Utc::now().date_naive();
    let start = today - chrono::Duration::days(3);
    write_job(
        d,
        "days",
        &format!(
            "schedule = \"0 0 * * *\"\nstart = \"{start}\"\ncatchup = true\n[[tasks]]\nid = \"mark\"\nkind = \"sql\"\nsql = \"INSERT INTO daily.days VALUES ('{{{{ ds }}}}', '{{{{ run_id }}}}')\"\n"
        ),
    );
    let mut scheduler = Scheduler::start(d, "scheduler");
    let store = store(d).await;
    let runs = wait_until(
        "three missed intervals to run",
        Duration::from_secs(90),
        || async {
            let runs = successful_runs(&store, "days").await;
            (runs.len() >= 3).then_some(runs)
        },
    )
    .await;
    // A few more ticks: nothing more is due until tomorrow.
    let ticks_later = Instant::now() + Duration::from_secs(1);
    while Instant::now() < ticks_later {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(scheduler.stop().success());
    let all = store.runs(Some("days"), 100).await.unwrap();
    assert_eq!(all.len(), 3, "{all:#?}");
    let days: Vec<String> = runs
        .iter()
        .map(|r| r.logical_date.format("%Y-%m-%d").to_string())
        .collect();
    let expected: Vec<String> = (0..3)
        .map(|i| (start + chrono::Duration::days(i)).to_string())
        .collect();
    assert_eq!(days, expected);
    // A backfill of two earlier days, run here.
    let (from, to) = (
        start - chrono::Duration::days(10),
        start - chrono::Duration::days(9),
    );
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "jobs",
            "run",
            "days",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("days__backfill__")).count(),
        2,
        "{out}"
    );
    let (ok, out, err) = crate::tarn(
        d,
        &["sql", "--format", "csv", "SELECT ds FROM daily.days ORDER BY ds"],
    );
    assert!(ok, "{err}");
    let mut want: Vec<String> = vec![from.to_string(), to.to_string()];
    want.extend(expected);
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), want);
}

#[tokio::test]
async fn kill_9_of_the_scheduler_mid_run_resumes_the_run_without_two_tries_at_once() {
    let dir = data_dir("");
    let d = dir.path();
    let marks = d.join("marks");
    let lock = d.join("lock");
    write_job(
        d,
        "longrun",
        &format!(
            r#"
            [[tasks]]
            id = "first"
            kind = "shell"
            command = "echo first >> {marks}"
            [[tasks]]
            id = "slow"
            kind = "shell"
            depends_on = ["first"]
            retries = 1
            retry_delay = "100ms"
            command = "flock -n {lock} -c 'echo start $TARN_TRY_NUMBER >> {marks}; sleep 5; echo end $TARN_TRY_NUMBER >> {marks}' || echo busy >> {marks}"
            "#,
            marks = marks.display(),
            lock = lock.display()
        ),
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "longrun", "--queue"]);
    assert!(ok, "{err}");
    let run_id = out.trim().to_string();
    let read = || std::fs::read_to_string(&marks).unwrap_or_default();
    let mut a = Scheduler::start(d, "a");
    wait_until(
        "the slow task's first try to start",
        Duration::from_secs(60),
        || async { read().contains("start 1").then_some(()) },
    )
    .await;
    a.kill9();
    let mut b = Scheduler::start(d, "b");
    let store = store(d).await;
    let run = wait_until(
        "the run to end after the restart",
        Duration::from_secs(90),
        || async {
            let r = store.run(&run_id).await.unwrap()?;
            matches!(r.state, RunState::Success | RunState::Failed).then_some(r)
        },
    )
    .await;
    assert!(b.stop().success());
    assert_eq!(run.state, RunState::Success, "{run:?}\n{}", b.log());
    assert_eq!(owner_pid(run.owner.as_deref().unwrap()), b.pid());
    // The first try was killed before the second started: it never ended, and the second
    // found the lock free.
    let lines: Vec<String> = read().lines().map(str::to_string).collect();
    assert_eq!(lines, ["first", "start 1", "start 2", "end 2"], "{lines:?}");
    let tries = store.tries(&run_id).await.unwrap();
    assert_eq!(tries.len(), 3, "{tries:#?}");
    assert_eq!(try_of(&tries, "first", 1).state, TaskStatus::Success);
    let interrupted = try_of(&tries, "slow", 1);
    assert_eq!(interrupted.state, TaskStatus::Failed);
    assert!(
        interrupted.error.as_deref().unwrap().contains("interrupted"),
        "{interrupted:?}"
    );
    assert_eq!(owner_pid(&interrupted.owner), a.child.id());
    let second = try_of(&tries, "slow", 2);
    assert_eq!(second.state, TaskStatus::Success);
    assert!(
        second.started_at >= interrupted.finished_at.unwrap(),
        "{tries:#?}"
    );
    let logs = store.logs(&run_id, Some("slow"), Some(1)).await.unwrap();
    assert!(
        logs.iter().any(|l| l.line.contains("killing process group")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn of_two_scheduler_replicas_one_is_active_and_the_other_takes_over() {
    let dir = data_dir("");
    let d = dir.path();
    let ran = d.join("ran");
    write_job(
        d,
        "tick",
        &format!(
            "schedule = \"* * * * * *\"\n[[tasks]]\nid = \"note\"\nkind = \"shell\"\ncommand = \"echo $TARN_RUN_ID >> {}\"\n",
            ran.display()
        ),
    );
    let mut a = Scheduler::start(d, "a");
    let mut b = Scheduler::start(d, "b");
    let store = store(d).await;
    let first = wait_until("four runs", Duration::from_secs(90), || async {
        let runs = successful_runs(&store, "tick").await;
        (runs.len() >= 4).then_some(runs)
    })
    .await;
    let owners: std::collections::BTreeSet<u32> = first
        .iter()
        .map(|r| owner_pid(r.owner.as_deref().unwrap()))
        .collect();
    assert_eq!(owners.len(), 1, "one replica runs everything: {first:#?}");
    let active_pid = *owners.iter().next().unwrap();
    let (active, standby) = if active_pid == a.pid() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(active.pid(), active_pid);
    assert!(active.log().contains("this process is the active scheduler"));
    assert!(
        !standby.log().contains("this process is the active scheduler"),
        "{}",
        standby.log()
    );
    assert!(standby.log().contains("standing by"), "{}", standby.log());
    let (holder, _) = store.lease_holder("scheduler").await.unwrap().unwrap();
    assert_eq!(owner_pid(&holder), active_pid);

    active.kill9();
    let killed_at: DateTime<Utc> = Utc::now();
    let standby_pid = standby.pid();
    wait_until("the standby to run the job", Duration::from_secs(60), || async {
        let runs = successful_runs(&store, "tick").await;
        runs.iter()
            .any(|r| owner_pid(r.owner.as_deref().unwrap()) == standby_pid && r.created_at > killed_at)
            .then_some(())
    })
    .await;
    assert!(
        standby.log().contains("this process is the active scheduler"),
        "{}",
        standby.log()
    );
    assert!(standby.stop().success());
    // No run's task ran twice.
    let text = std::fs::read_to_string(&ran).unwrap();
    let mut ids: Vec<&str> = text.lines().collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a run's task ran twice: {text}");
}

/// A `tarn serve` on free loopback ports; killed on drop.
struct Server {
    child: Child,
    pg_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(dir: tempfile::TempDir) -> Self {
        let (pg_port, http_port) = (tarn_test_utils::free_port(), tarn_test_utils::free_port());
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--set", &format!("server.pg_listen=127.0.0.1:{pg_port}")])
            .args(["--set", &format!("server.http_listen=127.0.0.1:{http_port}")])
            .args(["--set", "auth.trust_loopback=true", "serve"])
            .env_remove("TARN_CONFIG")
            .env_remove("TARN_DATA_DIR")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let server = Self {
            child,
            pg_port,
            http_port,
            dir,
        };
        if let Err(e) = tarn_test_utils::wait_for_port(http_port, Duration::from_secs(60)) {
            panic!("tarn serve did not start: {e}\n{}", server.log());
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_http_api_lists_triggers_and_shows_runs_and_logs() {
    let dir = data_dir("");
    write_job(
        dir.path(),
        "hello",
        "[params]\nwho = \"world\"\n[[tasks]]\nid = \"greet\"\nkind = \"shell\"\ncommand = \"echo hello {{ params.who }} on {{ ds }}\"\n",
    );
    std::fs::write(
        dir.path().join("jobs/broken.toml"),
        "[[tasks]]\nid = \"x\"\nkind = \"spark\"\n",
    )
    .unwrap();
    let server = Server::start(dir);
    let http = reqwest::Client::new();
    let listed: serde_json::Value = http
        .get(server.url("/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["name"], "hello", "{listed}");
    assert_eq!(listed["jobs"][0]["tasks"][0]["kind"], "shell", "{listed}");
    assert!(
        listed["errors"][0].as_str().unwrap().contains("broken.toml"),
        "{listed}"
    );

    let response = http
        .post(server.url("/jobs/hello/runs"))
        .json(&serde_json::json!({"logical_date": "2026-11-30", "params": {"who": "tarn"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let run: serde_json::Value = response.json().await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    assert_eq!(run["state"], "queued");
    let done = wait_until("the triggered run to succeed", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), server.url(&format!("/jobs/hello/runs/{run_id}")));
        async move {
            let v: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["run"]["state"] == "success").then_some(v)
        }
    })
    .await;
    assert_eq!(done["tasks"][0]["state"], "success", "{done}");
    assert_eq!(done["tries"][0]["try_number"], 1, "{done}");
    let logs: serde_json::Value = http
        .get(server.url(&format!("/jobs/hello/runs/{run_id}/logs?task=greet")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines.contains(&"hello tarn on 2026-11-30"),
        "{lines:?}\n{}",
        server.log()
    );
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tarn_job_runs_total{job=\"hello\",state=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tarn_scheduler_active 1"), "{metrics}");
    let runs: serde_json::Value = http
        .get(server.url("/jobs/hello/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs["runs"][0]["run_id"], run_id.as_str());
    // Errors name what is wrong.
    let missing = http.post(server.url("/jobs/nope/runs")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no job \"nope\""),
        "{body}"
    );
    let bad = http
        .post(server.url("/jobs/hello/runs"))
        .json(&serde_json::json!({"logical_date": "yesterday"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn sql_tasks_run_as_the_jobs_principal_under_the_policy_and_the_api_needs_a_token() {
    let policy_dir = tempfile::Builder::new()
        .prefix("tarn-jobs-policy-")
        .tempdir()
        .unwrap();
    let policy = policy_dir.path().join("policy.rego");
    std::fs::write(&policy, crate::governance::POLICY).unwrap();
    let dir = data_dir(&format!("[policy]\nfile = \"{}\"\n", policy.display()));
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA sales; CREATE TABLE sales.orders (id BIGINT, region VARCHAR);
             INSERT INTO sales.orders VALUES (1, 'eu'), (2, 'us'), (3, 'eu')",
        ],
    );
    assert!(ok, "{err}");
    let job = |principal: &str, groups: &str| {
        format!(
            "principal = \"{principal}\"\ngroups = [{groups}]\n[[tasks]]\nid = \"read\"\nkind = \"sql\"\nsql = \"SELECT id FROM sales.orders\"\n"
        )
    };
    write_job(d, "report", &job("ana", "\"analyst\""));
    write_job(d, "snoop", &job("zed", ""));
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "report"]);
    assert!(ok, "{out}{err}");
    let store = store(d).await;
    let run = store.runs(Some("report"), 1).await.unwrap().remove(0);
    let logs = store.logs(&run.run_id, Some("read"), None).await.unwrap();
    // The row filter of the policy applies to ana: the two rows of region eu.
    assert!(
        logs.iter().any(|l| l.line == "statement 1: 2 row(s)"),
        "{logs:#?}"
    );
    let (ok, out, _) = crate::tarn(d, &["jobs", "run", "snoop"]);
    assert!(!ok, "{out}");
    let run = store.runs(Some("snoop"), 1).await.unwrap().remove(0);
    let tries = store.tries(&run.run_id).await.unwrap();
    let error = tries[0].error.as_deref().unwrap();
    assert!(
        error.contains("access denied") || error.contains("not allowed for user zed"),
        "{error}"
    );

    // With a policy and no OIDC, the jobs API has nobody to ask for: 401.
    let server = Server::start(dir);
    let response = reqwest::get(server.url("/jobs")).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OIDC bearer token"),
        "{body}"
    );
}

/// Runs `program` with `args` and `envs`; panics with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str], envs: &[(&str, String)], cwd: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

#[tokio::test]
async fn airflow_drives_tarn_with_the_packages_operators() {
    let root = tarn_test_utils::workspace_root();
    let venv = root.join(".venv-airflow/bin");
    assert!(
        venv.join("airflow").exists(),
        "no Airflow in {}: run scripts/setup.sh",
        venv.display()
    );
    let dir = data_dir("");
    let (ok, _, err) = crate::tarn(
        dir.path(),
        &[
            "sql",
            "CREATE SCHEMA airflow; CREATE TABLE airflow.events (day VARCHAR, source VARCHAR)",
        ],
    );
    assert!(ok, "{err}");
    write_job(
        dir.path(),
        "nightly",
        "[params]\nsource = \"tarn-job\"\n[[tasks]]\nid = \"mark\"\nkind = \"sql\"\nsql = \"INSERT INTO airflow.events VALUES ('{{ ds }}', '{{ params.source }}')\"\n",
    );
    write_job(
        dir.path(),
        "doomed",
        "[[tasks]]\nid = \"fail\"\nkind = \"shell\"\ncommand = \"echo boom; exit 1\"\n",
    );
    let server = Server::start(dir);
    tarn_test_utils::wait_for_port(server.pg_port, Duration::from_secs(30)).unwrap();
    let pg = format!("127.0.0.1:{}", server.pg_port);
    let http = format!("http://127.0.0.1:{}", server.http_port);
    let home = tempfile::Builder::new()
        .prefix("tarn-airflow-")
        .tempdir()
        .unwrap();
    let package = root.join("integrations/airflow");
    let (host, port) = pg.rsplit_once(':').unwrap();
    let conn = serde_json::json!({
        "conn_type": "postgres", "host": host, "port": port.parse::<u16>().unwrap(),
        "login": "airflow", "schema": "tarn", "extra": {"http_url": http},
    });
    let envs = [
        ("AIRFLOW_HOME", home.path().display().to_string()),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".to_string()),
        (
            "AIRFLOW__CORE__DAGS_FOLDER",
            package.join("example_dags").display().to_string(),
        ),
        (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            format!("sqlite:///{}/airflow.db", home.path().display()),
        ),
        ("AIRFLOW__CORE__UNIT_TEST_MODE", "False".to_string()),
        ("AIRFLOW_CONN_TARN_DEFAULT", conn.to_string()),
        ("PYTHONPATH", package.join("src").display().to_string()),
        ("TARN_TEST_DSN", format!("postgresql://airflow@{pg}/tarn")),
        ("TARN_TEST_HTTP", http.clone()),
        (
            "PATH",
            format!("{}:{}", venv.display(), std::env::var("PATH").unwrap_or_default()),
        ),
    ];
    // The package's own tests: the client and the hook.
    let out = run_ok(
        &venv.join("python"),
        &["-m", "unittest", "discover", "-s", "tests", "-v"],
        &envs,
        &package,
    );
    assert!(out.contains("OK") && !out.contains("skipped"), "{out}");
    // Airflow 3 on SQLite runs the example DAG against tarn.
    run_ok(&venv.join("airflow"), &["db", "migrate"], &envs, home.path());
    let out = run_ok(
        &venv.join("airflow"),
        &["dags", "test", "tarn_example", "2026-12-01"],
        &envs,
        home.path(),
    );
    assert!(!out.contains("state=failed") && !out.contains("FAILED"), "{out}");
    let (client, connection) = tokio_postgres::connect(
        &format!("host={host} port={port} user=airflow dbname=tarn"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let rows: Vec<String> = client
        .query(
            "SELECT source FROM airflow.events WHERE day = '2026-12-01' ORDER BY source",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    // The SQL operator's row and the tarn job's row, for the DAG run's logical date.
    assert_eq!(rows, ["airflow", "tarn-job"], "{out}");
    let store = store(server.dir.path()).await;
    let runs = store.runs(Some("nightly"), 10).await.unwrap();
    assert!(
        runs.iter()
            .any(|r| r.state == RunState::Success
                && r.logical_date.format("%Y-%m-%d").to_string() == "2026-12-01"),
        "{runs:#?}"
    );
}

#[tokio::test]
async fn run_history_logs_and_the_lease_live_in_a_postgresql_catalog_too() {
    let pg = tarn_test_utils::start_postgres().unwrap();
    let dir = data_dir(&format!("[catalog]\nurl = \"{}\"\n", pg.url("postgres")));
    let d = dir.path();
    write_job(
        d,
        "second_time",
        "[[tasks]]\nid = \"try\"\nkind = \"shell\"\nretries = 1\nretry_delay = \"100ms\"\ncommand = \"echo try $TARN_TRY_NUMBER; test $TARN_TRY_NUMBER -ge 2\"\n",
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "second_time", "--param", "x=1"]);
    assert!(ok, "{out}{err}");
    // Two processes migrating the same database: idempotent.
    let (store, again) = tokio::join!(store(d), store(d));
    let run = again.runs(Some("second_time"), 1).await.unwrap().remove(0);
    assert_eq!(run.state, RunState::Success);
    assert_eq!(run.params, Some(serde_json::json!({"x": "1"})));
    let tries = store.tries(&run.run_id).await.unwrap();
    assert_eq!(
        tries.iter().map(|t| t.state.as_str()).collect::<Vec<_>>(),
        ["failed", "success"]
    );
    let logs = store.logs(&run.run_id, Some("try"), Some(2)).await.unwrap();
    assert!(logs.iter().any(|l| l.line == "try 2"), "{logs:#?}");
    let ttl = Duration::from_secs(60);
    assert!(store.acquire_lease("test", "one", ttl).await.unwrap());
    assert!(!again.acquire_lease("test", "two", ttl).await.unwrap());
    assert!(store.acquire_lease("test", "one", ttl).await.unwrap(), "renewal");
    store.release_lease("test", "one").await.unwrap();
    assert!(
        again.acquire_lease("test", "two", ttl).await.unwrap(),
        "taken after release"
    );
    assert_eq!(store.lease_holder("test").await.unwrap().unwrap().0, "two");
}

#[tokio::test]
async fn the_jobs_api_asks_the_policy_about_the_tokens_principal() {
    use tarn_test_utils::oidc::{RSA1, Signer, issuer};
    let issuer = issuer(vec![Signer::rsa("rsa-1", RSA1)]).await;
    let signer = Signer::rsa("rsa-1", RSA1);
    let policy_dir = tempfile::Builder::new()
        .prefix("tarn-jobs-policy-")
        .tempdir()
        .unwrap();
    let policy = policy_dir.path().join("policy.rego");
    std::fs::write(
        &policy,
        r#"package trino

import rego.v1

default allow := false

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas"}

allow if {
	input.action.operation == "ViewJob"
	"analyst" in input.context.identity.groups
	input.action.resource.job.name != "secret"
}

allow if {
	input.action.operation == "RunJob"
	input.context.identity.user == "ana"
	input.action.resource.job.name == "hello"
}
"#,
    )
    .unwrap();
    let dir = data_dir(&format!(
        "[policy]\nfile = \"{}\"\n[auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\n",
        policy.display(),
        issuer.url,
        issuer.ca_file.display()
    ));
    for name in ["hello", "secret"] {
        write_job(
            dir.path(),
            name,
            "[[tasks]]\nid = \"t\"\nkind = \"shell\"\ncommand = \"true\"\n",
        );
    }
    let server = Server::start(dir);
    let http = reqwest::Client::new();
    let bearer = |user: &str| format!("Bearer {}", signer.sign(&issuer.claims(user)));
    let (ana, bob) = (bearer("ana"), bearer("bob"));
    // No token: the endpoint's middleware refuses.
    let none = http.get(server.url("/jobs")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    // Listing shows only what the policy lets the caller view.
    let listed: serde_json::Value = http
        .get(server.url("/jobs"))
        .header("Authorization", &ana)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello"], "{listed}");
    let hidden = http
        .get(server.url("/jobs/secret/runs"))
        .header("Authorization", &ana)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 403);
    // Running: ana may run hello, bob may not.
    let refused = http
        .post(server.url("/jobs/hello/runs"))
        .header("Authorization", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("RunJob") && message.contains("bob"), "{message}");
    let allowed = http
        .post(server.url("/jobs/hello/runs"))
        .header("Authorization", &ana)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 201, "{}", server.log());
}

#[tokio::test]
async fn export_writes_parquet_to_the_bucket_and_load_reads_it_back() {
    let s3 = tarn_test_utils::S3Server::start("lake").unwrap();
    let dir = data_dir(&format!(
        "[storage]\nwarehouse = \"s3://lake/warehouse\"\n[storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\npath_style = true\nallow_http = true\n",
        s3.endpoint()
    ));
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA shop; CREATE TABLE shop.orders (id BIGINT, amount BIGINT); INSERT INTO shop.orders VALUES (1, 10), (2, 20), (3, 30)",
        ],
    );
    assert!(ok, "{err}");
    write_job(
        d,
        "roundtrip",
        r#"
        [[tasks]]
        id = "export"
        kind = "export"
        sql = "SELECT id, amount * 2 AS doubled FROM shop.orders WHERE id >= 2"
        path = "exports/{{ ds }}"
        [[tasks]]
        id = "reload"
        kind = "load"
        depends_on = ["export"]
        paths = ["s3://lake/warehouse/exports/{{ ds }}/*.parquet"]
        table = "shop.doubled"
        "#,
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "roundtrip", "--date", "2026-12-04"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT id, doubled FROM shop.doubled ORDER BY id",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["2,40", "3,60"]);
}

/// The protocol-exact test connector's files in `dir/jobs` (`source.json`: 12 records;
/// `catalog.json`: stream `items`, full refresh + overwrite); returns the connector's command.
fn airbyte_fixture(dir: &Path) -> String {
    std::fs::write(dir.join("jobs/source.json"), r#"{"count": 12, "state_every": 5}"#).unwrap();
    let stream = serde_json::json!({
        "name": "items",
        "json_schema": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": ["null", "string"]}, "price": {"type": "number"}
        }},
        "supported_sync_modes": ["full_refresh", "incremental"],
        "source_defined_primary_key": [["id"]]
    });
    std::fs::write(
        dir.join("jobs/catalog.json"),
        serde_json::json!({"streams": [{"stream": stream, "sync_mode": "full_refresh",
            "destination_sync_mode": "overwrite"}]})
        .to_string(),
    )
    .unwrap();
    format!(
        "{} {}",
        tarn_test_utils::python().unwrap().display(),
        tarn_test_utils::workspace_root()
            .join("tests/interop/airbyte_source.py")
            .display()
    )
}

/// The issue's DAG: sql → load → airbyte → maintain, on a cron schedule, in dependency order;
/// the `airbyte` task runs `tarn ingest airbyte` with the protocol-exact test connector
/// (`tests/interop/airbyte_source.py`, full refresh + overwrite, so every run leaves the same
/// rows), its output in the task's log.
#[tokio::test]
async fn a_dag_of_sql_load_airbyte_and_maintain_runs_on_cron_in_order() {
    let dir = data_dir("");
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA ops; CREATE TABLE ops.runs (logical VARCHAR)",
        ],
    );
    assert!(ok, "{err}");
    std::fs::write(d.join("jobs/orders.csv"), "id,amount\n1,10\n2,20\n").unwrap();
    let connector = airbyte_fixture(d);
    write_job(
        d,
        "ingest",
        &format!(
            r#"
        description = "sql, load, airbyte, maintain"
        schedule = "*/3 * * * * *"
        [params]
        ns = "abi"
        [[tasks]]
        id = "stage"
        kind = "sql"
        sql = "INSERT INTO ops.runs VALUES ('{{{{ ts }}}}')"
        [[tasks]]
        id = "load"
        kind = "load"
        depends_on = ["stage"]
        paths = ["orders.csv"]
        table = "ops.orders"
        [[tasks]]
        id = "sync"
        kind = "airbyte"
        depends_on = ["load"]
        connector = "{connector}"
        config = "source.json"
        catalog = "catalog.json"
        namespace = "{{{{ params.ns }}}}"
        [[tasks]]
        id = "maintain"
        kind = "maintain"
        depends_on = ["sync"]
        tables = ["abi.items", "ops.orders"]
        compact = true
        "#
        ),
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("sync:airbyte <- load"), "{out}");

    let mut scheduler = Scheduler::start(d, "scheduler");
    let store = store(d).await;
    let runs = wait_until(
        "two scheduled runs to succeed",
        Duration::from_secs(180),
        || async {
            let runs = successful_runs(&store, "ingest").await;
            (runs.len() >= 2).then_some(runs)
        },
    )
    .await;
    assert!(scheduler.stop().success(), "{}", scheduler.log());

    for run in &runs {
        assert_eq!(run.trigger, "scheduled");
        assert_eq!(
            (run.interval_end - run.interval_start).num_seconds(),
            3,
            "{run:?}"
        );
        let tries = store.tries(&run.run_id).await.unwrap();
        assert_eq!(tries.len(), 4, "{tries:#?}");
        assert!(tries.iter().all(|t| t.state == TaskStatus::Success), "{tries:#?}");
        let order = ["stage", "load", "sync", "maintain"].map(|task| try_of(&tries, task, 1));
        for pair in order.windows(2) {
            assert!(
                pair[0].finished_at.unwrap() <= pair[1].started_at,
                "{} must end before {} starts: {tries:#?}",
                pair[0].task_id,
                pair[1].task_id
            );
        }
        let logs = store.logs(&run.run_id, Some("sync"), None).await.unwrap();
        assert!(
            logs.iter()
                .any(|l| l.line.contains("items: 12 record(s) into abi.items")),
            "{logs:#?}"
        );
        let logs = store.logs(&run.run_id, Some("maintain"), None).await.unwrap();
        assert!(logs.iter().any(|l| l.line.contains("abi.items")), "{logs:#?}");
    }
    // Full refresh + overwrite: the synced table holds the connector's records once, whatever
    // the number of runs; the load appended once per run.
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM abi.items",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("12,12,1,12"), "{out}");
    let (ok, out, err) = crate::tarn(d, &["sql", "--format", "csv", "SELECT count(*) FROM ops.runs"]);
    assert!(ok, "{err}");
    let staged: usize = out.lines().nth(1).unwrap().parse().unwrap();
    let (ok, out, err) = crate::tarn(d, &["sql", "--format", "csv", "SELECT count(*) FROM ops.orders"]);
    assert!(ok, "{err}");
    let loaded: usize = out.lines().nth(1).unwrap().parse().unwrap();
    // (A run the stop interrupted may have staged without loading.)
    assert!(
        loaded.is_multiple_of(2) && loaded / 2 >= runs.len() && loaded / 2 <= staged,
        "{loaded} rows loaded, {staged} staged, {} runs",
        runs.len()
    );
}

/// `ingest-kafka` checks against a real Kafka-protocol broker (tansu): before the pipeline
/// ran, the lake holds none of the topic, so the check fails with each partition's lag, is
/// retried, and fails the run. `tarn ingest kafka` (a child process on the same `tarn.toml`)
/// then catches up and the check passes; stopped, with more records produced, the check fails
/// again with the new lag, while a check bounding only the age (`max_age = "1h"`) passes and
/// one with `max_age = "1ms"` fails naming the age.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_kafka_checks_fail_while_the_lake_is_behind_the_topic_and_pass_once_caught_up() {
    use tarn_test_utils::kafka::Broker;
    let broker = tokio::task::block_in_place(|| {
        let broker = Broker::start().expect("a tansu broker (bash scripts/setup.sh installs it)");
        broker.create_topic("web.clicks", 2).unwrap();
        broker
    });
    let dir = data_dir(&format!(
        r#"
[maintenance]
auto = false
[cdc]
source_kind = "kafka"
pipeline = "clicks"
[cdc.flush]
interval = "100ms"
[cdc.kafka]
brokers = "{}"
topics = ["web.clicks"]
group = "clicks"
format = "json"
session_timeout = "6s"
"#,
        broker.bootstrap()
    ));
    let d = dir.path();
    let produce = |from: i32, to: i32| produce_clicks(&broker, from, to);
    produce(0, 10);
    write_job(
        d,
        "caught-up",
        r#"
        [[tasks]]
        id = "check"
        kind = "ingest-kafka"
        retries = 1
        retry_delay = "100ms"
        "#,
    );
    let store = store(d).await;
    let latest = |job: &'static str| {
        let store = store.clone();
        async move { store.runs(Some(job), 1).await.unwrap().remove(0) }
    };
    let logs = |run: String, task: &'static str| {
        let store = store.clone();
        async move {
            store
                .logs(&run, Some(task), None)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.line)
                .collect::<Vec<_>>()
                .join("\n")
        }
    };

    // Nothing in the lake yet: 10 records behind; the task is retried, then the run fails.
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "caught-up"]);
    assert!(!ok, "{out}{err}");
    let run = latest("caught-up").await;
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    let tries = store.tries(&run.run_id).await.unwrap();
    assert_eq!(tries.len(), 2, "{tries:#?}");
    for t in &tries {
        assert_eq!(t.state, TaskStatus::Failed, "{tries:#?}");
        let error = t.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("Kafka pipeline clicks (web.clicks): 10 record(s) behind the topics (max_lag 0)"),
            "{error}"
        );
    }
    let log = logs(run.run_id.clone(), "check").await;
    assert!(log.contains("web.clicks:0  lake -  end 5  lag 5"), "{log}");
    assert!(log.contains("web.clicks:1  lake -  end 5  lag 5"), "{log}");

    // `tarn ingest kafka` on the same tarn.toml: once the lake holds all 10 records, the
    // check passes. (The table is `cdc.web_clicks`: `cdc.table_name` defaults to `{table}`,
    // and a plain topic's `{table}` is the topic name with `.` as `_`.)
    let ingest = KafkaIngest::start(d);
    let lake = tarn_lake::Lake::open(&crate::config_for(d, &[])).await.unwrap();
    let session = tarn_query::TarnSession::new(lake).await.unwrap();
    let count = "SELECT count(*), count(DISTINCT (_kafka_partition, _kafka_offset)) FROM cdc.web_clicks";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = crate::query(&session, count).await;
        if rows.as_ref().is_ok_and(|r| r == &["10|10"]) {
            break;
        }
        ingest.assert_running(&format!("{rows:?}"));
        assert!(
            Instant::now() < deadline,
            "the 10 records not in the lake after 90 s: {rows:?}; tarn ingest kafka logged:\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "caught-up"]);
    assert!(ok, "{out}{err}\n{}", ingest.log());
    let run = latest("caught-up").await;
    assert_eq!(run.state, RunState::Success, "{run:?}");
    let log = logs(run.run_id.clone(), "check").await;
    assert!(log.contains("web.clicks:0  lake 5  end 5  lag 0"), "{log}");
    assert!(log.contains("web.clicks:1  lake 5  end 5  lag 0"), "{log}");
    assert!(
        log.contains("pipeline clicks: 0 record(s) not in the lake over 2 partition(s), 1 lake table(s)"),
        "{log}"
    );

    // Stopped, and 6 more records produced: behind again, by exactly those.
    let stderr = ingest.stop();
    assert!(stderr.contains("stopped: 10 change(s) applied"), "{stderr}");
    produce(10, 16);
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "caught-up"]);
    assert!(!ok, "{out}{err}");
    let run = latest("caught-up").await;
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    let tries = store.tries(&run.run_id).await.unwrap();
    let error = tries.last().and_then(|t| t.error.clone()).unwrap_or_default();
    assert!(
        error.contains("Kafka pipeline clicks (web.clicks): 6 record(s) behind the topics (max_lag 0)"),
        "{error}"
    );
    let log = logs(run.run_id.clone(), "check").await;
    assert!(
        log.contains("web.clicks:0  lake 5  end 8  lag 3  oldest record not in the lake"),
        "{log}"
    );
    assert!(
        log.contains("web.clicks:1  lake 5  end 8  lag 3  oldest record not in the lake"),
        "{log}"
    );

    // `max_age` alone does not bound the lag: the pending records are fresh...
    write_job(
        d,
        "fresh",
        r#"
        [[tasks]]
        id = "check"
        kind = "ingest-kafka"
        max_age = "1h"
        "#,
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "fresh"]);
    assert!(ok, "{out}{err}");
    assert_eq!(latest("fresh").await.state, RunState::Success);
    // ...but older than a millisecond.
    write_job(
        d,
        "stale",
        r#"
        [[tasks]]
        id = "check"
        kind = "ingest-kafka"
        max_age = "1ms"
        "#,
    );
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "stale"]);
    assert!(!ok, "{out}{err}");
    let run = latest("stale").await;
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    let error = store
        .tries(&run.run_id)
        .await
        .unwrap()
        .remove(0)
        .error
        .unwrap_or_default();
    assert!(
        error.contains("Kafka pipeline clicks (web.clicks): its oldest record not in the lake is")
            && error.contains("old (max_age 1ms)"),
        "{error}"
    );
}

/// Produces the JSON records `{"user": i}` for `i` in `from..to` to topic `web.clicks`, record
/// `i` to partition `i % 2`.
#[cfg(feature = "kafka")]
pub(crate) fn produce_clicks(broker: &tarn_test_utils::kafka::Broker, from: i32, to: i32) {
    let records: Vec<tarn_test_utils::kafka::Record> = (from..to)
        .map(|i| tarn_test_utils::kafka::Record {
            topic: "web.clicks".into(),
            partition: i % 2,
            key: None,
            value: Some(format!(r#"{{"user": {i}}}"#).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    tokio::task::block_in_place(|| broker.produce(&records).unwrap());
}

/// `tarn ingest kafka` as a child process on a data directory's own `tarn.toml`, its stderr
/// collected (for the failure messages) by a thread.
#[cfg(feature = "kafka")]
pub(crate) struct KafkaIngest {
    child: Mutex<Child>,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "kafka")]
impl KafkaIngest {
    pub(crate) fn start(dir: &Path) -> Self {
        let mut child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["ingest", "kafka"])
            .env_remove("TARN_DATA_DIR")
            .env_remove("TARN_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child: Mutex::new(child),
            stderr,
            reader: Some(reader),
        }
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Panics, with its stderr, when the process has exited.
    pub(crate) fn assert_running(&self, what: &str) {
        if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
            panic!("tarn ingest kafka exited ({status}; {what}): {}", self.log());
        }
    }

    /// SIGTERM, then waits for it to end; returns its stderr.
    pub(crate) fn stop(mut self) -> String {
        let child = self.child.get_mut().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log();
        assert!(status.success(), "tarn ingest kafka: {status}: {log}");
        log
    }
}

#[cfg(feature = "kafka")]
impl Drop for KafkaIngest {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A policy where `etl` writes `raw` tables (creating them) and nothing else, and the `ops`
/// role may only compact (`optimize`) them.
const WRITER_POLICY: &str = r#"
package trino

import rego.v1

default allow := false

allow if input.action.operation in {"ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas", "ShowSchemas", "ShowTables", "FilterTables", "FilterColumns"}

allow if {
	input.context.identity.user == "etl"
	input.action.operation in {"CreateTable", "InsertIntoTable", "DeleteFromTable", "AddColumn", "SelectFromColumns"}
	input.action.resource.table.schemaName == "raw"
}

allow if {
	"ops" in input.context.identity.groups
	input.action.operation == "ExecuteTableProcedure"
	input.action.resource.function.functionName == "optimize"
	input.action.resource.table.schemaName == "raw"
}
"#;

/// `load`, `airbyte` and `maintain` tasks write as their job's principal: each is asked of the
/// policy like the statement it stands for (`CreateTable`/`InsertIntoTable`, Trino's
/// `ExecuteTableProcedure` with the procedure's name), a denial fails the task before anything
/// is written, and what they write is audited under that principal.
#[tokio::test]
async fn load_airbyte_and_maintain_tasks_are_authorized_and_audited_as_the_jobs_principal() {
    let policy_dir = tempfile::Builder::new()
        .prefix("tarn-jobs-policy-")
        .tempdir()
        .unwrap();
    let policy = policy_dir.path().join("policy.rego");
    std::fs::write(&policy, WRITER_POLICY).unwrap();
    let dir = data_dir(&format!(
        "[policy]\nfile = \"{}\"\n[audit]\nauditor_role = \"compliance\"\n",
        policy.display()
    ));
    let d = dir.path();
    let (ok, _, err) = crate::tarn(
        d,
        &[
            "sql",
            "CREATE SCHEMA raw; CREATE SCHEMA secure; CREATE TABLE secure.keys (id BIGINT, amount BIGINT)",
        ],
    );
    assert!(ok, "{err}");
    std::fs::write(d.join("jobs/orders.csv"), "id,amount\n1,10\n2,20\n3,30\n").unwrap();
    let connector = airbyte_fixture(d);
    let load = |table: &str| {
        format!("[[tasks]]\nid = \"load\"\nkind = \"load\"\npaths = [\"orders.csv\"]\ntable = \"{table}\"\n")
    };
    let sync = |ns: &str| {
        format!(
            "[[tasks]]\nid = \"sync\"\nkind = \"airbyte\"\nconnector = \"{connector}\"\nconfig = \"source.json\"\ncatalog = \"catalog.json\"\nnamespace = \"{ns}\"\n"
        )
    };
    let maintain = |what: &str| {
        format!(
            "[[tasks]]\nid = \"maintain\"\nkind = \"maintain\"\ntables = [\"raw.orders\"]\n{what} = true\n"
        )
    };
    let as_user = |user: &str, groups: &str, tasks: &str| {
        format!("principal = \"{user}\"\ngroups = [{groups}]\n{tasks}")
    };
    write_job(
        d,
        "ingest",
        &as_user("etl", "", &format!("{}{}", load("raw.orders"), sync("raw"))),
    );
    write_job(d, "sneak_load", &as_user("etl", "", &load("secure.keys")));
    write_job(d, "sneak_sync", &as_user("etl", "", &sync("secure")));
    write_job(d, "etl_compacts", &as_user("etl", "", &maintain("compact")));
    write_job(
        d,
        "ops_compacts",
        &as_user("olga", "\"ops\"", &maintain("compact")),
    );
    write_job(d, "ops_expires", &as_user("olga", "\"ops\"", &maintain("expire")));
    let store = store(d).await;
    let failure = |job: &'static str| {
        let store = &store;
        async move {
            let (ok, out, _) = crate::tarn(d, &["jobs", "run", job]);
            assert!(!ok, "{job} ran: {out}");
            let run = store.runs(Some(job), 1).await.unwrap().remove(0);
            let tries = store.tries(&run.run_id).await.unwrap();
            tries[0].error.clone().unwrap_or_default()
        }
    };

    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "ingest"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = crate::tarn(d, &["jobs", "run", "ops_compacts"]);
    assert!(ok, "{out}{err}");

    let error = failure("sneak_load").await;
    assert!(
        error.contains("InsertIntoTable") && error.contains("tarn.secure.keys") && error.contains("etl"),
        "{error}"
    );
    let error = failure("sneak_sync").await;
    assert!(
        error.contains("CreateTable") && error.contains("tarn.secure.items"),
        "{error}"
    );
    let error = failure("etl_compacts").await;
    assert!(
        error.contains("ExecuteTableProcedure") && error.contains("optimize"),
        "{error}"
    );
    let error = failure("ops_expires").await;
    assert!(
        error.contains("ExecuteTableProcedure") && error.contains("expire_snapshots"),
        "{error}"
    );
    // Nothing of the denied tasks was written.
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT count(*) FROM secure.keys; SHOW TABLES",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(1), Some("0"), "{out}");
    assert!(!out.contains("secure,items,"), "{out}");

    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--as",
            "aud",
            "--group",
            "compliance",
            "--format",
            "csv",
            "SELECT user_name, operations, tables, sum(rows_written) FROM tarn_audit.events \
             WHERE kind = 'write' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ],
    );
    assert!(ok, "{err}");
    let writes: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(
        writes,
        [
            "etl,InsertIntoTable,tarn.raw.items,12",
            "etl,InsertIntoTable,tarn.raw.orders,3",
            "olga,ExecuteTableProcedure(optimize),tarn.raw.orders,0",
        ],
        "{out}"
    );
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "sql",
            "--as",
            "aud",
            "--group",
            "compliance",
            "--format",
            "csv",
            "SELECT DISTINCT user_name, operations, tables FROM tarn_audit.events \
             WHERE kind = 'decision' AND decision = 'deny' ORDER BY 1, 2, 3",
        ],
    );
    assert!(ok, "{err}");
    let denials: Vec<&str> = out.lines().skip(1).collect();
    for expected in [
        "etl,CreateTable,tarn.secure.items",
        "etl,ExecuteTableProcedure,tarn.raw.orders",
        "etl,InsertIntoTable,tarn.secure.keys",
        "olga,ExecuteTableProcedure,tarn.raw.orders",
    ] {
        assert!(denials.contains(&expected), "{expected} missing from {out}");
    }
}
