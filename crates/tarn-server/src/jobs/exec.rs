//! Running one try of one task: each kind's executor, its log, its timeout and cancellation.
//!
//! `sql`, `load`, `maintain` and `export` run in this process on the governed session (as the
//! job's principal), and so do `ingest-kafka` checks; `shell` and `airbyte` run a child process in a process group of its own,
//! whose id is recorded with the try so that a scheduler taking over after a crash can make
//! sure nothing of the old try still runs before it starts the next one ([`kill_group`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use tarn_core::Config;
use tarn_query::{Output, TarnSession};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::spec::{Job, Task, TaskKind};
use super::store::Store;
use super::template::Context as Template;

/// The log of one try: lines in `tarn_job_logs`, and on tarn's own log at debug level.
#[derive(Clone)]
pub struct TryLog {
    store: Store,
    run_id: String,
    task_id: String,
    try_number: i64,
}

/// Line numbers: one sequence per process, starting at the process's start time in
/// microseconds, so lines written to one try's log by several writers (its output streams, the
/// driver, a later owner recovering it) never collide and sort in the order written.
fn next_line_no() -> i64 {
    static NEXT: std::sync::OnceLock<AtomicI64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| AtomicI64::new(chrono::Utc::now().timestamp_micros()))
        .fetch_add(1, Ordering::Relaxed)
}

impl TryLog {
    /// The log of try `try_number` of `task_id` in `run_id`.
    pub fn new(store: Store, run_id: &str, task_id: &str, try_number: i64) -> Self {
        Self {
            store,
            run_id: run_id.into(),
            task_id: task_id.into(),
            try_number,
        }
    }

    /// Appends `line`.
    pub async fn line(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::debug!(run = %self.run_id, task = %self.task_id, try_number = self.try_number, "{line}");
        let n = next_line_no();
        if let Err(e) = self
            .store
            .log(&self.run_id, &self.task_id, self.try_number, n, &line)
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), run = %self.run_id, task = %self.task_id, "cannot store a task log line");
        }
    }
}

/// Everything a try needs.
pub struct TryContext {
    /// tarn's configuration.
    pub config: Config,
    /// The governed session.
    pub session: TarnSession,
    /// The job.
    pub job: Arc<Job>,
    /// The task.
    pub task: Task,
    /// The run.
    pub run_id: String,
    /// The try's number.
    pub try_number: i64,
    /// The template values.
    pub template: Template,
    /// The try's log.
    pub log: TryLog,
    /// The job tables (to record a child's process group).
    pub store: Store,
    /// Fires on timeout, lost ownership or shutdown.
    pub cancel: CancellationToken,
}

/// Runs the try to its end: `Ok` on success, the reason otherwise. Times out after the task's
/// `timeout`, and stops when `cancel` fires.
pub async fn run_try(cx: TryContext) -> Result<()> {
    let timeout = cx.task.timeout;
    let cancel = cx.cancel.clone();
    let work = execute(&cx);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        () = tokio::time::sleep(timeout) => {
            cancel.cancel();
            // A child process is killed on cancellation; give it a moment to go.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut work).await;
            Err(anyhow!("timed out after {}", humantime::format_duration(timeout)))
        }
        () = cancel.cancelled() => {
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut work).await;
            Err(anyhow!("cancelled"))
        }
    }
}

fn render(cx: &TryContext, field: &str, text: &str) -> Result<String> {
    cx.template
        .render(&format!("task `{}`: {field}", cx.task.id), text)
}

/// The session the job's statements run in: as its principal when it names one.
fn session_for(cx: &TryContext) -> TarnSession {
    match &cx.job.principal {
        Some(user) => cx
            .session
            .for_principal(tarn_auth::Principal::trusted(user.clone(), cx.job.groups.clone())),
        None => cx.session.clone(),
    }
}

async fn execute(cx: &TryContext) -> Result<()> {
    match &cx.task.kind {
        TaskKind::Sql { sql } => {
            let sql = render(cx, "sql", sql)?;
            run_sql(cx, &sql).await
        }
        TaskKind::Export { sql, path } => {
            let sql = render(cx, "sql", sql)?;
            let path = render(cx, "path", path)?;
            let target = if path.contains("://") {
                path
            } else {
                format!("{}/{}", cx.config.warehouse_url(), path.trim_start_matches('/'))
            };
            if target.contains('\'') {
                bail!("task `{}`: path {target:?} must not contain a quote", cx.task.id);
            }
            if let Some(dir) = target.strip_prefix("file://") {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
            } else {
                // The bucket's store (storage.s3's endpoint and keys), for DataFusion's COPY.
                let resolved = cx
                    .session
                    .lake()
                    .stores()
                    .resolve(&target)
                    .map_err(|e| anyhow!("task `{}`: cannot write to {target}: {e}", cx.task.id))?;
                let base = url::Url::parse(&resolved.base_url)
                    .with_context(|| format!("task `{}`: bad URL {target}", cx.task.id))?;
                tarn_query::load::register_store(&cx.session, &base, resolved.store);
            }
            let copy = format!(
                "COPY ({}) TO '{target}' STORED AS PARQUET",
                sql.trim().trim_end_matches(';')
            );
            cx.log.line(format!("exporting to {target}")).await;
            run_sql(cx, &copy).await
        }
        TaskKind::Load {
            paths,
            table,
            format,
            delimiter,
            header,
            partition_by,
        } => {
            let paths = paths
                .iter()
                .map(|p| render(cx, "paths", p).map(|p| resolve(&cx.job.file, &p)))
                .collect::<Result<Vec<_>>>()?;
            let table = render(cx, "table", table)?;
            let ident = tarn_lake::parse_table_name(&table)?;
            let options = tarn_query::load::LoadOptions {
                format: format
                    .as_deref()
                    .map(tarn_query::load::FileFormat::parse)
                    .transpose()?,
                delimiter: delimiter
                    .map(|d| u8::try_from(d).context("delimiter must be one ASCII character"))
                    .transpose()?,
                has_header: *header,
                layout: tarn_lake::TableLayout {
                    partition: partition_by
                        .iter()
                        .map(|f| tarn_lake::layout::parse_partition_field(f))
                        .collect::<tarn_core::Result<_>>()?,
                    ..tarn_lake::TableLayout::default()
                },
            };
            let session = session_for(cx);
            let principal = session.principal();
            let (outcome, bytes, elapsed) = tarn_query::governance::with_principal(
                principal,
                crate::load::load_with_progress(&session, &paths, &ident, &options, false),
            )
            .await?;
            cx.log
                .line(format!(
                    "loaded {} rows ({bytes} bytes) into {ident} in {:.2}s: {} data file(s), snapshot {}",
                    outcome.rows,
                    elapsed.as_secs_f64(),
                    outcome.files,
                    outcome.snapshot_id.map_or("none".into(), |s| s.to_string())
                ))
                .await;
            Ok(())
        }
        TaskKind::Maintain {
            tables,
            compact,
            expire,
            orphans,
        } => {
            let tables = tables
                .iter()
                .map(|t| render(cx, "tables", t))
                .collect::<Result<Vec<_>>>()?;
            let session = session_for(cx);
            let args = crate::maintain::MaintainArgs::new(tables, *compact, *expire, *orphans, false)
                .governed(session.governance().cloned());
            let mut lines = Vec::new();
            let done = tarn_query::governance::with_principal(
                session.principal(),
                crate::maintain::maintain_yielding(session.lake(), &cx.config, &args, false, &mut |l| {
                    lines.push(l)
                }),
            )
            .await;
            for l in lines {
                cx.log.line(l).await;
            }
            done
        }
        TaskKind::Http {
            url,
            method,
            body,
            headers,
            expect_status,
        } => {
            let url = render(cx, "url", url)?;
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow!("task `{}`: method {method:?} is not an HTTP method", cx.task.id))?;
            let client = reqwest::Client::builder().timeout(cx.task.timeout).build()?;
            let mut request = client.request(method.clone(), &url);
            for (k, v) in headers {
                request = request.header(k.as_str(), render(cx, "headers", v)?);
            }
            if let Some(body) = body {
                request = request.body(render(cx, "body", body)?);
            }
            cx.log.line(format!("{method} {url}")).await;
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {url} failed"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let shown: String = text.chars().take(2000).collect();
            cx.log.line(format!("status {status}: {shown}")).await;
            let ok = if expect_status.is_empty() {
                status.is_success()
            } else {
                expect_status.contains(&status.as_u16())
            };
            if !ok {
                bail!("{method} {url} answered {status}");
            }
            Ok(())
        }
        TaskKind::Shell { command, env, cwd } => {
            let command = render(cx, "command", command)?;
            let dir = job_dir(&cx.job.file);
            let cwd = cwd.as_ref().map_or(dir.clone(), |c| dir.join(c));
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(&command).current_dir(&cwd);
            for (k, v) in env {
                cmd.env(k, render(cx, "env", v)?);
            }
            run_child(cx, cmd, &format!("sh -c {command:?}")).await
        }
        TaskKind::Airbyte {
            connector,
            config,
            catalog,
            namespace,
        } => {
            let exe = std::env::current_exe().context("cannot find the tarn binary")?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(crate::cli::global_args())
                .arg("ingest")
                .arg("airbyte")
                .arg("--connector")
                .arg(render(cx, "connector", connector)?)
                .arg("--config")
                .arg(resolve(&cx.job.file, &render(cx, "config", config)?))
                .arg("--catalog")
                .arg(resolve(&cx.job.file, &render(cx, "catalog", catalog)?))
                .arg("--namespace")
                .arg(render(cx, "namespace", namespace)?)
                .current_dir(job_dir(&cx.job.file));
            if let Some(user) = &cx.job.principal {
                // The sync is asked of the policy, and audited, as the job's principal.
                cmd.arg("--as").arg(user);
                for group in &cx.job.groups {
                    cmd.arg("--group").arg(group);
                }
            }
            run_child(cx, cmd, "tarn ingest airbyte").await
        }
        TaskKind::IngestKafka { .. } => check_kafka(cx).await,
    }
}

/// An `ingest-kafka` task: how far the Kafka pipeline's lake tables are behind its topics
/// (`tarn_cdc::kafka::check`), each partition in the log; fails past `max_lag` or `max_age`.
#[cfg(feature = "kafka")]
async fn check_kafka(cx: &TryContext) -> Result<()> {
    let TaskKind::IngestKafka {
        pipeline,
        namespace,
        brokers,
        topics,
        group,
        max_lag,
        max_age,
    } = &cx.task.kind
    else {
        unreachable!("check_kafka runs ingest-kafka tasks");
    };
    let id = &cx.task.id;
    let mut config = cx.config.clone();
    if let Some(p) = pipeline {
        config.cdc.pipeline = render(cx, "pipeline", p)?;
    }
    if let Some(n) = namespace {
        config.cdc.namespace = render(cx, "namespace", n)?;
    }
    if let Some(b) = brokers {
        config.cdc.kafka.brokers = render(cx, "brokers", b)?;
    }
    if !topics.is_empty() {
        config.cdc.kafka.topics = topics
            .iter()
            .map(|t| render(cx, "topics", t))
            .collect::<Result<_>>()?;
    }
    if let Some(g) = group {
        config.cdc.kafka.group = render(cx, "group", g)?;
    }
    if config.cdc.kafka.topics.is_empty() {
        bail!("task `{id}`: no topics to check: set `topics`, or `cdc.kafka.topics` in tarn.toml");
    }
    if config.cdc.kafka.brokers.trim().is_empty() {
        bail!("task `{id}`: no brokers: set `brokers`, or `cdc.kafka.brokers` in tarn.toml");
    }
    let max_age = max_age
        .as_deref()
        .map(|a| humantime::parse_duration(a.trim()))
        .transpose()
        .map_err(|e| anyhow!("task `{id}`: max_age: {e}"))?;
    let max_lag = max_lag.unwrap_or(if max_age.is_some() { u64::MAX } else { 0 });
    let status = tarn_cdc::pipeline::PipelineStatus::default();
    let source = tarn_cdc::kafka::KafkaSource::connect(&config, cx.session.lake().clone(), &status)?;
    let wait = cx.task.timeout.min(Duration::from_secs(30));
    let report = source.check(&config, wait).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let age_of = |ms: i64| Duration::from_millis((now_ms - ms).max(0) as u64);
    for p in &report.partitions {
        cx.log
            .line(format!(
                "{}:{}  lake {}  end {}  lag {}{}",
                p.topic,
                p.partition,
                p.resume.map_or("-".into(), |r| r.to_string()),
                p.end,
                p.lag,
                p.oldest_pending_ms.map_or(String::new(), |ms| format!(
                    "  oldest record not in the lake {} old",
                    humantime::format_duration(Duration::from_secs(age_of(ms).as_secs()))
                ))
            ))
            .await;
    }
    let lag = report.lag().max(0) as u64;
    let age = report.oldest_pending_ms().map(age_of);
    cx.log
        .line(format!(
            "pipeline {}: {lag} record(s) not in the lake over {} partition(s), {} lake table(s)",
            config.cdc.pipeline,
            report.partitions.len(),
            report.tables
        ))
        .await;
    let mut failures = Vec::new();
    if lag > max_lag {
        failures.push(format!("{lag} record(s) behind the topics (max_lag {max_lag})"));
    }
    if let (Some(max), Some(age)) = (max_age, age)
        && age > max
    {
        failures.push(format!(
            "its oldest record not in the lake is {} old (max_age {})",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max)
        ));
    }
    if !failures.is_empty() {
        bail!(
            "Kafka pipeline {} ({}): {}",
            config.cdc.pipeline,
            config.cdc.kafka.topics.join(", "),
            failures.join("; ")
        );
    }
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn check_kafka(cx: &TryContext) -> Result<()> {
    bail!(
        "task `{}`: ingest-kafka checks need a build with the `kafka` feature (cargo build --features kafka)",
        cx.task.id
    )
}

async fn run_sql(cx: &TryContext, sql: &str) -> Result<()> {
    let session = session_for(cx);
    for (i, statement) in TarnSession::prepare(sql)?.into_iter().enumerate() {
        let n = i + 1;
        match session
            .run(&statement)
            .await
            .with_context(|| format!("statement {n}"))?
        {
            Output::Rows(mut stream) => {
                let mut rows = 0usize;
                while let Some(batch) = stream.next().await {
                    rows += batch.map_err(tarn_query::from_df_error)?.num_rows();
                }
                cx.log.line(format!("statement {n}: {rows} row(s)")).await;
            }
            Output::Command { tag, .. } => cx.log.line(format!("statement {n}: {tag}")).await,
        }
    }
    Ok(())
}

/// The directory of the job file (where relative paths start).
fn job_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A local path relative to the job file's directory; URLs unchanged.
fn resolve(job_file: &Path, path: &str) -> String {
    if path.contains("://") || Path::new(path).is_absolute() {
        path.to_string()
    } else {
        job_dir(job_file).join(path).display().to_string()
    }
}

/// Runs a child process in a process group of its own, its output lines into the log; kills
/// the whole group on cancellation.
/// The gate a child process passes before it runs its command: `sh` reads one line from its
/// standard input, which tarn writes only after it has recorded the child's process group with
/// the try. A tarn that dies before that closes the pipe, the read fails, and the command never
/// starts — so no command runs that a later owner could not find and stop.
const GATE: &str = "read -r _ || exit 125; exec \"$@\"";

async fn run_child(cx: &TryContext, inner: tokio::process::Command, what: &str) -> Result<()> {
    let inner = inner.as_std();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(GATE)
        .arg("tarn-gate")
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in cx.template.env() {
        cmd.env(k, v);
    }
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("TARN_BIN", exe);
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    let pid = child
        .id()
        .map(i64::from)
        .context("the child process ended at once")?;
    cx.store
        .set_try_pid(&cx.run_id, &cx.task.id, cx.try_number, pid)
        .await?;
    // Recorded: open the gate, and leave the command an empty standard input.
    let mut stdin = child.stdin.take().context("no pipe to the child")?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
        .await
        .with_context(|| format!("cannot start {what}"))?;
    drop(stdin);
    cx.log.line(format!("started {what} (process group {pid})")).await;
    // Each stream's lines go to the try's log; the last one that says something is kept for
    // the error of a failed command (a `tarn` child's `error: ...`).
    let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, log: TryLog| async move {
        let mut last = None;
        if let Some(s) = stream {
            let mut lines = BufReader::new(s).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.trim().is_empty() {
                    last = Some(line.clone());
                }
                log.line(line).await;
            }
        }
        last
    };
    let out = tokio::spawn(pump(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        cx.log.clone(),
    ));
    let err = tokio::spawn(pump(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        cx.log.clone(),
    ));
    let status = tokio::select! {
        s = child.wait() => s.context("cannot wait for the child process")?,
        () = cx.cancel.cancelled() => {
            kill_group(pid).await;
            let _ = child.wait().await;
            let _ = out.await;
            let _ = err.await;
            bail!("{what} was stopped");
        }
    };
    let _ = out.await;
    let last = err.await.ok().flatten();
    if status.success() {
        Ok(())
    } else {
        match last {
            Some(line) => bail!("{what} exited with {status}: {}", truncate_line(&line)),
            None => bail!("{what} exited with {status}"),
        }
    }
}

/// `line`, cut to 500 characters for a try's error.
fn truncate_line(line: &str) -> String {
    const MAX: usize = 500;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// Whether a live (not zombie) process of process group `pgid` exists on this machine.
pub fn group_alive(pgid: i64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return std::process::Command::new("kill")
            .args(["-0", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i64>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// Kills process group `pgid` and waits (up to 30 s) until none of it runs.
pub async fn kill_group(pgid: i64) {
    if pgid <= 1 {
        return;
    }
    let _ = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
