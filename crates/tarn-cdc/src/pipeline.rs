//! A CDC pipeline: one source database into the lake, from the initial snapshot on.
//!
//! [`run`] sets everything up and streams until shutdown:
//!
//! 1. find the captured tables and make the publication cover them;
//! 2. attach every table to the [`LakeSink`] (creating lake tables, reading the position each
//!    holds, rebuilding key indexes);
//! 3. with no slot yet, create it with an exported snapshot and copy every table inside that
//!    snapshot; with a slot, copy only tables that hold no position yet (new tables) inside a
//!    temporary slot's exported snapshot — either way each copy is committed with the exact
//!    position its snapshot ends at, so nothing is missed or applied twice;
//! 4. stream: apply changes, commit when the flush policy says so (interval, rows or bytes,
//!    whichever first, always between transactions), then acknowledge the committed position
//!    to the source. While the lake commits, nothing is read from the stream, so a slow lake
//!    holds the source back (its WAL waits in the slot) instead of growing memory.
//!
//! Transient failures (the source restarting, a commit conflict with a concurrent rewrite, the
//! bucket unreachable) restart the pipeline from the last acknowledged position after a
//! backoff; what was not committed is replayed, what was is skipped.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tarn_core::{Config, Error, ErrorKind, Result, failpoint};
use tarn_lake::Lake;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::postgres::change_source::PostgresChangeSource;
use crate::sink::{ChangeSink, LakeSink, PendingPublisher, SinkOptions};
use crate::source::CopyProgress;
use crate::source::{ChangeSource, FlushRule, Next, Position, SourceEvent};

/// How a pipeline runs besides its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Drop the slot and copy every table again (the recovery when the slot was lost).
    pub resnapshot: bool,
    /// Stop after this long (for demos and benchmarks).
    pub duration: Option<Duration>,
    /// Where the lake writer publishes its pending state at every transaction boundary, for
    /// bridge reads by SQL in the same process ([`tarn_query::bridge`]).
    pub bridge: Option<Arc<PendingPublisher>>,
    /// The audit trail the lake writer records each commit in, as the pipeline's principal
    /// (`tarn serve` passes its SQL endpoint's; [`commit_audit_log`] makes one). Its owner
    /// closes it.
    pub audit: Option<Arc<tarn_query::audit::AuditLog>>,
}

/// An audit trail for a pipeline's commits, when a policy is configured and `[audit]` is on
/// (as the SQL endpoint keeps one): close it when the pipeline has stopped.
pub fn commit_audit_log(config: &Config, lake: &Lake) -> Result<Option<Arc<tarn_query::audit::AuditLog>>> {
    if !config.policy.is_configured() || !config.audit.enabled {
        return Ok(None);
    }
    let settings = tarn_query::audit::AuditSettings::from_config(&config.audit)?;
    Ok(Some(tarn_query::audit::AuditLog::start(lake.clone(), settings)))
}

/// What a running pipeline is doing, for `tarn cdc status`, the console and metrics.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct StatusReport {
    /// `starting`, `snapshotting`, `streaming`, `retrying`, `stopped`, `failed`.
    pub state: String,
    /// The pipeline name.
    pub pipeline: String,
    /// The source, password redacted.
    pub source: String,
    /// The slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Changes applied since start.
    pub events_total: u64,
    /// Changes per second over the last few seconds.
    pub events_per_second: f64,
    /// The last position acknowledged to the source.
    pub acknowledged: Option<Position>,
    /// The newest position received.
    pub received: Option<Position>,
    /// Seconds between the last applied source commit and its arrival in the lake.
    pub lag_seconds: Option<f64>,
    /// Changes buffered, not yet committed.
    pub pending_events: u64,
    /// The table being copied, rows copied so far.
    pub snapshot: Option<SnapshotReport>,
    /// Per-table state.
    pub tables: Vec<TableReport>,
    /// Kafka sources: each partition's position, end and lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionReport>,
    /// Kafka sources: records consumed per second over the last second or so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_per_second: Option<f64>,
    /// Kafka sources: records sent to the dead-letter topic since start.
    #[serde(default)]
    pub dead_letters: u64,
    /// The last error, if the pipeline is retrying or failed.
    pub last_error: Option<String>,
    /// Unix time of this report (seconds).
    pub updated_at: u64,
}

/// A table copy in progress.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct SnapshotReport {
    /// The source table.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// Chunks done of planned.
    pub chunks_done: u64,
    /// Chunks planned.
    pub chunks: u64,
}

/// One table of a pipeline.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct TableReport {
    /// The lake table.
    pub table: String,
    /// The position it holds everything up to.
    pub position: Option<Position>,
    /// Why it was stopped.
    pub stopped: Option<String>,
    /// Changes applied since start.
    pub changes: u64,
    /// Commits since start.
    pub commits: u64,
}

/// One partition of a Kafka source: how far it is read and how far behind its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the source delivered to the lake writer.
    pub position: i64,
    /// The partition's end for a `read_committed` reader (its last stable offset), from the
    /// broker's latest fetch response; `None` before the first one.
    pub end: Option<i64>,
    /// `end - position` (never negative); `None` without an end.
    pub lag: Option<i64>,
}

/// Shared, live status of a pipeline.
#[derive(Debug, Default)]
pub struct PipelineStatus {
    report: Mutex<StatusReport>,
    copy: Mutex<Option<(String, Arc<CopyProgress>)>>,
    pub(crate) events: AtomicU64,
}

impl PipelineStatus {
    /// The current report.
    pub fn report(&self) -> StatusReport {
        let mut report = self.report.lock().expect("status poisoned").clone();
        report.events_total = self.events.load(Ordering::Relaxed);
        if let Some((table, p)) = self.copy.lock().expect("status poisoned").as_ref() {
            report.snapshot = Some(SnapshotReport {
                table: table.clone(),
                rows: p.rows.load(Ordering::Relaxed),
                chunks_done: p.chunks_done.load(Ordering::Relaxed),
                chunks: p.chunks.load(Ordering::Relaxed),
            });
        }
        report.updated_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        report
    }

    /// The copy in progress, for progress bars.
    pub fn copy_progress(&self) -> Option<(String, Arc<CopyProgress>)> {
        self.copy.lock().expect("status poisoned").clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        f(&mut self.report.lock().expect("status poisoned"));
    }
}

/// A pipeline running in a task of its own: what `tarn demo`, `tarn bench`, `tarn serve`,
/// `tarn cdc run` and the tests hold. [`spawn`](Self::spawn) starts [`run`],
/// [`wait_for`](Self::wait_for) waits on its status with a deadline, [`stop`](Self::stop)
/// stops it cleanly (a last commit, the source told) and returns how it ended.
pub struct PipelineHandle {
    stop: CancellationToken,
    /// `None` once joined.
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    status: Arc<PipelineStatus>,
}

impl PipelineHandle {
    /// Starts the pipeline `config.cdc` describes, writing into `lake`.
    pub fn spawn(config: &Config, lake: Lake, options: RunOptions) -> Self {
        Self::spawn_with(config, lake, options, CancellationToken::new())
    }

    /// Like [`spawn`](Self::spawn), stopped also when `shutdown` is cancelled (a server's
    /// shutdown).
    pub fn spawn_with(config: &Config, lake: Lake, options: RunOptions, shutdown: CancellationToken) -> Self {
        let status = Arc::new(PipelineStatus::default());
        let task = tokio::spawn({
            let (config, stop, status) = (config.clone(), shutdown.clone(), status.clone());
            async move { run(&config, lake, options, status, stop).await }
        });
        Self {
            stop: shutdown,
            task: Some(task),
            status,
        }
    }

    /// The live status.
    pub fn status(&self) -> &Arc<PipelineStatus> {
        &self.status
    }

    /// The current status report.
    pub fn report(&self) -> StatusReport {
        self.status.report()
    }

    /// Whether the pipeline has ended (stopped, failed or its duration passed).
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Waits until `done` holds for the status report (it may look elsewhere too, e.g. query
    /// the lake), checking every 20 ms. Fails when the pipeline ends first, when `timeout`
    /// passes, or when `interrupt` is cancelled; the error names `what` and the pipeline's
    /// state. `done`'s own errors end the wait as they are.
    pub async fn wait_for<E, F, D>(
        &self,
        what: &str,
        timeout: Duration,
        interrupt: Option<&CancellationToken>,
        mut done: D,
    ) -> std::result::Result<StatusReport, E>
    where
        E: From<Error>,
        D: FnMut(StatusReport) -> F,
        F: Future<Output = std::result::Result<bool, E>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.status.report();
            if done(report.clone()).await? {
                return Ok(report);
            }
            let last_error = report
                .last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default();
            if report.state == "failed" || self.is_finished() {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "the CDC pipeline stopped while waiting for {what} (state {}{last_error})",
                        report.state
                    ),
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Cancelled,
                    format!(
                        "timed out after {timeout:?} waiting for {what} (pipeline {}, acknowledged {}{last_error})",
                        report.state,
                        crate::position::text_or_dash(report.acknowledged.as_ref()),
                    ),
                )
                .into());
            }
            if interrupt.is_some_and(CancellationToken::is_cancelled) {
                return Err(Error::new(
                    ErrorKind::Cancelled,
                    format!("interrupted while waiting for {what}"),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`wait_for`](Self::wait_for) a condition on the status report alone.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StatusReport) -> bool,
    ) -> Result<StatusReport> {
        self.wait_for(what, timeout, None, |r| std::future::ready(Ok(done(&r))))
            .await
    }

    /// Stops the pipeline and waits (at most 60 s) for it to end; returns how it ended.
    pub async fn stop(&mut self) -> Result<()> {
        self.stop.cancel();
        self.join(Duration::from_secs(60)).await
    }

    /// Waits (at most `timeout`) for the pipeline to end by itself (`RunOptions::duration`,
    /// a failure, its shutdown token); returns how it ended (`Ok` when it was joined before).
    pub async fn join(&mut self, timeout: Duration) -> Result<()> {
        self.ended(Some(timeout)).await
    }

    /// Waits, without a limit, for the pipeline to end; returns how it ended (`Ok` when it was
    /// joined before). Cancel-safe: dropping the future leaves the pipeline running.
    pub async fn finished(&mut self) -> Result<()> {
        self.ended(None).await
    }

    async fn ended(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let ended = match timeout {
            Some(t) => tokio::time::timeout(t, task).await,
            None => Ok(task.await),
        };
        match ended {
            Err(_) => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "the CDC pipeline did not stop within {:?}",
                    timeout.unwrap_or_default()
                ),
            )),
            Ok(joined) => {
                self.task = None;
                match joined {
                    Err(e) => Err(Error::new(
                        ErrorKind::Internal,
                        format!("the CDC pipeline panicked: {e}"),
                    )),
                    Ok(result) => result,
                }
            }
        }
    }
}

/// Where a pipeline's status file lives: `DATA_DIR/cdc/<pipeline>.status.json`.
pub fn status_path(config: &Config) -> PathBuf {
    config
        .data_dir
        .join("cdc")
        .join(format!("{}.status.json", config.cdc.pipeline))
}

fn retryable(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Source | ErrorKind::CommitConflict | ErrorKind::Storage | ErrorKind::Catalog
    )
}

/// Runs the pipeline `config.cdc` describes until `shutdown` (or `options.duration`); retries
/// transient failures with backoff. See the module doc.
pub async fn run(
    config: &Config,
    lake: Lake,
    options: RunOptions,
    status: Arc<PipelineStatus>,
    shutdown: CancellationToken,
) -> Result<()> {
    let stop = shutdown.child_token();
    if let Some(d) = options.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let writer = tokio::spawn(write_status_file(
        status_path(config),
        status.clone(),
        stop.clone(),
    ));
    let mut backoff = Duration::from_millis(500);
    let mut options = options;
    let result = loop {
        let started = Instant::now();
        let attempt = run_once(config, lake.clone(), &options, &status, &stop).await;
        match attempt {
            Ok(()) => break Ok(()),
            Err(e) if retryable(&e) && !stop.is_cancelled() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "CDC pipeline interrupted; restarting from the last acknowledged position");
                metrics::counter!("tarn_cdc_restarts_total").increment(1);
                status.update(|r| {
                    r.state = "retrying".into();
                    r.last_error = Some(e.to_string());
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break Ok(()),
                }
                backoff = if started.elapsed() > Duration::from_secs(60) {
                    Duration::from_millis(500)
                } else {
                    (backoff * 2).min(Duration::from_secs(30))
                };
                // A resnapshot happens once.
                options.resnapshot = false;
            }
            Err(e) => {
                status.update(|r| {
                    r.state = "failed".into();
                    r.last_error = Some(e.to_string());
                });
                break Err(e);
            }
        }
    };
    if result.is_ok() {
        status.update(|r| r.state = "stopped".into());
    }
    stop.cancel();
    let _ = writer.await;
    result
}

async fn write_status_file(path: PathBuf, status: Arc<PipelineStatus>, stop: CancellationToken) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut last_events = 0u64;
    let mut last_at = Instant::now();
    loop {
        let done = stop.is_cancelled();
        let events = status.events.load(Ordering::Relaxed);
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        let rate = (events - last_events) as f64 / secs;
        (last_events, last_at) = (events, Instant::now());
        status.update(|r| r.events_per_second = rate);
        metrics::gauge!("tarn_cdc_events_per_second").set(rate);
        let report = status.report();
        if let Ok(json) = serde_json::to_vec_pretty(&report) {
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        if done {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {}
        }
    }
}

pub(crate) fn refresh_tables(sink: &impl ChangeSink, status: &PipelineStatus) {
    let tables = sink
        .table_positions()
        .into_iter()
        .map(|t| TableReport {
            table: t.target,
            position: t.position,
            stopped: t.stopped,
            changes: t.counters.changes,
            commits: t.counters.commits,
        })
        .collect();
    status.update(|r| r.tables = tables);
}

/// What a [`ChangeSource`] sees of the pipeline that drives it.
pub struct SourceContext<'a> {
    /// The whole config (`cdc` describes the pipeline).
    pub config: &'a Config,
    /// How this run was started.
    pub options: &'a RunOptions,
    /// The live status the source reports into (state, copy progress, source name).
    pub status: &'a PipelineStatus,
    /// Cancelled when the pipeline stops.
    pub stop: &'a CancellationToken,
}

impl SourceContext<'_> {
    /// Shows the copy of `table` in progress (or none) in the status.
    pub fn set_copy(&self, copy: Option<(String, Arc<CopyProgress>)>) {
        *self.status.copy.lock().expect("status poisoned") = copy;
    }
}

/// One attempt: the source `config.cdc.source_kind` names, driven until stopped or failed.
async fn run_once(
    config: &Config,
    lake: Lake,
    options: &RunOptions,
    status: &PipelineStatus,
    stop: &CancellationToken,
) -> Result<()> {
    let ctx = SourceContext {
        config,
        options,
        status,
        stop,
    };
    status.update(|r| {
        r.state = "starting".into();
        r.pipeline = config.cdc.pipeline.clone();
    });
    // Topic ACLs: a pipeline the policy does not allow its topics refuses to start.
    if config.cdc.source_kind == "kafka" {
        crate::topic_acl::TopicAccess::from_config(config)?
            .audited(config, &lake)?
            .check_ingest(config)
            .await?;
    }
    match config.cdc.source_kind.as_str() {
        "cockroachdb" => {
            let source = crate::cockroach::ChangefeedSource::connect(config, status).await?;
            drive_into(source, lake, &ctx).await
        }
        #[cfg(feature = "kafka")]
        "kafka" if config.cdc.kafka.archive => crate::kafka::archive::run(config, lake, &ctx).await,
        #[cfg(feature = "kafka")]
        "kafka" => {
            let consumer = crate::kafka::KafkaSource::connect(config, lake.clone(), status)?;
            if !consumer.group_mode() {
                return drive_with(consumer, publishing_sink(config, lake.clone(), &ctx), lake, &ctx).await;
            }
            // Group mode: a rebalance, or a commit fenced by another worker, restarts the run
            // on the same consumer (leaving the group would rebalance every worker again);
            // what was not committed is discarded and read again from the lake's offsets.
            loop {
                let source = consumer.fresh();
                let generation = consumer.rebalances();
                let result = drive_with(
                    source,
                    publishing_sink(config, lake.clone(), &ctx),
                    lake.clone(),
                    &ctx,
                )
                .await;
                match result {
                    Err(e) if consumer.rebalanced_since(generation) && !stop.is_cancelled() => {
                        tracing::info!(reason = %e, "restarting the run on the consumer group's new assignment");
                    }
                    Err(e) if e.kind() == ErrorKind::CommitConflict && !stop.is_cancelled() => {
                        tracing::warn!(error = %e, "restarting the run from the lake's offsets");
                        metrics::counter!("tarn_cdc_restarts_total").increment(1);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => return other,
                }
            }
        }
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(Error::new(
            ErrorKind::Config,
            "cdc.source_kind = \"kafka\" needs a tarn built with Kafka support (cargo build --features kafka); \
             this binary was built without it",
        )),
        _ => {
            let source = PostgresChangeSource::connect(config, status).await?;
            drive_into(source, lake, &ctx).await
        }
    }
}

/// The lake writer of the pipeline `config.cdc` describes.
pub fn lake_sink(config: &Config, lake: Lake) -> LakeSink {
    let cdc = &config.cdc;
    LakeSink::new(
        lake,
        SinkOptions {
            pipeline: cdc.pipeline.clone(),
            namespace: cdc.namespace.clone(),
            table_name: cdc.table_name.clone(),
            spill_bytes: (cdc.flush.max_bytes / 2) as usize,
        },
    )
}

/// [`lake_sink`], publishing its pending state where the run's options say. Publishing, it
/// spills at `cdc.flush.max_bytes` rather than half of it: readers can merge the buffer only
/// while none of it is in files, and between transactions the commit at `max_bytes` comes
/// first, so only a transaction larger than that spills (the bound on memory is `max_bytes`).
fn publishing_sink(config: &Config, lake: Lake, ctx: &SourceContext<'_>) -> LakeSink {
    let audit = ctx.options.audit.clone().map(|log| crate::sink::CommitAudit {
        log,
        principal: crate::topic_acl::pipeline_principal(config),
        policy: match tarn_policy::Policy::from_config(&config.policy) {
            Ok(Some(policy)) => policy.describe(),
            _ => "none".into(),
        },
    });
    let sink = lake_sink(config, lake).with_audit(audit);
    match &ctx.options.bridge {
        Some(_) => sink
            .with_spill_bytes(config.cdc.flush.max_bytes as usize)
            .with_publisher(ctx.options.bridge.clone()),
        None => sink,
    }
}

/// Drives a database source into the sink `cdc.sink` names: the lake, or Kafka topics.
async fn drive_into<S: ChangeSource>(source: S, lake: Lake, ctx: &SourceContext<'_>) -> Result<()> {
    let config = ctx.config;
    match config.cdc.sink.as_str() {
        #[cfg(feature = "kafka")]
        "kafka" => {
            let kafka = crate::kafka::sink::KafkaSink::connect(config, &lake, ctx.status).await?;
            drive_with(source, kafka, lake, ctx).await
        }
        #[cfg(feature = "kafka")]
        "lake+kafka" => {
            let kafka = crate::kafka::sink::KafkaSink::connect(config, &lake, ctx.status).await?;
            let both = crate::sink::Both::new(publishing_sink(config, lake.clone(), ctx), kafka);
            drive_with(source, both, lake, ctx).await
        }
        #[cfg(not(feature = "kafka"))]
        "kafka" | "lake+kafka" => Err(Error::new(
            ErrorKind::Config,
            "cdc.sink = \"kafka\" needs a tarn built with Kafka support (cargo build --features kafka); \
             this binary was built without it",
        )),
        _ => drive_with(source, publishing_sink(config, lake.clone(), ctx), lake, ctx).await,
    }
}

/// [`drive`], through the SQL transforms of `cdc.transforms` when there are any.
async fn drive_with<S: ChangeSource, K: ChangeSink>(
    source: S,
    sink: K,
    lake: Lake,
    ctx: &SourceContext<'_>,
) -> Result<()> {
    let transforms = &ctx.config.cdc.transforms;
    if transforms.is_empty() {
        drive(source, sink, ctx).await
    } else {
        let sink = crate::transform::Transformed::new(sink, transforms, lake).await?;
        drive(source, sink, ctx).await
    }
}

/// How often the pipeline calls [`ChangeSource::tick`].
const TICK_INTERVAL: Duration = Duration::from_secs(10);

/// Drives `source` into the lake: start (attach and copy), then apply its events, commit when
/// the flush policy says so (between transactions), acknowledge what was committed, run table
/// maintenance between commits. While the lake commits nothing is read from the source, so a
/// slow lake holds the source back instead of growing memory.
pub async fn drive<S: ChangeSource, K: ChangeSink>(
    mut source: S,
    mut sink: K,
    ctx: &SourceContext<'_>,
) -> Result<()> {
    let config = ctx.config;
    let cdc = &config.cdc;
    let status = ctx.status;
    let Some(start) = source.start(&mut sink, ctx).await? else {
        return Ok(());
    };
    refresh_tables(&sink, status);
    tracing::info!(from = %start, "streaming");
    status.update(|r| {
        r.state = "streaming".into();
        r.snapshot = None;
        r.last_error = None;
        r.acknowledged = Some(start.clone());
    });
    let interval = sink.flush_interval().unwrap_or_else(|| cdc.flush_interval());
    let rule = source.flush_rule();
    let mut acknowledged = start;
    let mut durable: Option<Position> = None;
    let mut next_tick = Instant::now() + TICK_INTERVAL;
    // The lag gauges move between commits too: a stalled flush or a long transaction shows.
    let mut next_lag = Instant::now() + LAG_INTERVAL;
    let maintenance_every = config.maintenance.duration("interval");
    let mut next_maintenance = Instant::now() + maintenance_every;
    // Measured from the start of a commit: a commit that takes a while must not push the
    // next one past the following checkpoint.
    let mut last_commit = Instant::now() - interval;
    // Looked up once: per event it is then one atomic add, not a registry lookup.
    let events_total = metrics::counter!("tarn_cdc_events_total");
    loop {
        let flush_at = sink.pending_since().map(|t| t + interval);
        // Within a transaction only its end can come next: no deadline.
        let deadline = if sink.in_transaction() {
            Instant::now() + Duration::from_secs(3600)
        } else {
            let mut d = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            d = d.min(next_tick).min(next_lag);
            if config.maintenance.auto {
                d = d.min(next_maintenance);
            }
            d
        };
        let mut flush_now = false;
        match source.next(ctx, deadline).await? {
            Next::Stopped => {
                if !sink.in_transaction()
                    && let Some(p) = {
                        let span = flush_span(&cdc.pipeline, &sink);
                        sink.flush().instrument(span).await?
                    }
                {
                    source.acknowledge(&p, &mut sink).await?;
                    acknowledged = p.clone();
                    durable = Some(p);
                }
                source.stop(&mut sink, durable.as_ref()).await?;
                tracing::info!(acknowledged = %acknowledged, "CDC pipeline stopped");
                return Ok(());
            }
            Next::Idle => flush_now = flush_at.is_some_and(|t| Instant::now() >= t),
            Next::Events(events) => {
                let mut report = false;
                for event in events {
                    failpoint::hit("cdc.on_event").await?;
                    tracing::trace!(?event, "event");
                    match event {
                        SourceEvent::Relation(spec) if !sink.has_table(spec.id) => {
                            source.adopt(spec, &mut sink, ctx).await?;
                            refresh_tables(&sink, status);
                        }
                        SourceEvent::Keepalive { position } => {
                            report = true;
                            if !sink.in_transaction() && sink.pending_events() == 0 && position > acknowledged
                            {
                                source.acknowledge(&position, &mut sink).await?;
                                acknowledged = position;
                            }
                        }
                        event => {
                            let is_change = matches!(
                                event,
                                SourceEvent::Insert { .. }
                                    | SourceEvent::Update { .. }
                                    | SourceEvent::Delete { .. }
                            );
                            let is_commit = matches!(event, SourceEvent::Commit { .. });
                            sink.apply(event).await?;
                            if is_change {
                                status.events.fetch_add(1, Ordering::Relaxed);
                                events_total.increment(1);
                                sink.spill_if_needed().await?;
                                report |= sink.pending_events().is_multiple_of(1024);
                            }
                            if !is_commit {
                                continue;
                            }
                            report = true;
                            if sink.pending_events() == 0
                                && let Some((p, _)) = sink.last_commit()
                                && p > acknowledged
                            {
                                // Nothing of this transaction is waiting (the tables held it).
                                source.acknowledge(&p, &mut sink).await?;
                                acknowledged = p;
                            }
                            let full = sink.pending_events() >= cdc.flush.max_rows
                                || sink.pending_bytes() as u64 >= cdc.flush.max_bytes;
                            let due = match rule {
                                FlushRule::OldestChange => {
                                    sink.pending_since().is_some_and(|t| t.elapsed() >= interval)
                                }
                                FlushRule::EachCheckpoint => last_commit.elapsed() >= interval * 9 / 10,
                            };
                            flush_now |= full || due;
                        }
                    }
                }
                if report {
                    status.update(|r| {
                        r.received = source.received();
                        r.acknowledged = Some(acknowledged.clone());
                        r.pending_events = sink.pending_events();
                    });
                }
            }
        }
        if Instant::now() >= next_lag {
            report_lag(&sink, source.received(), &acknowledged);
            next_lag = Instant::now() + LAG_INTERVAL;
        }
        if sink.in_transaction() {
            continue;
        }
        if flush_now && sink.pending_since().is_some() {
            let commit_started = Instant::now();
            if let Some(p) = {
                let span = flush_span(&cdc.pipeline, &sink);
                sink.flush().instrument(span).await?
            } {
                last_commit = commit_started;
                failpoint::hit("cdc.before_ack").await?;
                source.acknowledge(&p, &mut sink).await?;
                acknowledged = p.clone();
                durable = Some(p.clone());
                committed(&sink, p, source.received(), status);
            }
        }
        // Housekeeping, between transactions, also under a steady stream of changes.
        let now = Instant::now();
        if now >= next_tick {
            source.tick(&mut sink, ctx).await?;
            next_tick = Instant::now() + TICK_INTERVAL;
        }
        if config.maintenance.auto && now >= next_maintenance {
            // Starts a round in the background (at maintenance's lower priority) unless one
            // is running; the next commits go on meanwhile (see the sink's `maintenance`).
            sink.maintain(&config.maintenance).await?;
            next_maintenance = Instant::now() + maintenance_every;
        }
    }
}

/// How often the lag gauges are set between commits.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// A CDC flush's span: the pipeline, the changes it commits, and the trace id when traces
/// are exported.
fn flush_span(pipeline: &str, sink: &impl ChangeSink) -> tracing::Span {
    let span = tracing::info_span!(
        "cdc_flush",
        pipeline,
        events = sink.pending_events(),
        trace_id = tracing::field::Empty
    );
    tarn_core::telemetry::record_trace_id(&span);
    span
}

/// Sets the lag gauges from where the source is against what is committed, on a timer:
/// `tarn_cdc_lag_seconds` is the age of the oldest change received and not yet committed (0
/// when everything received is in the lake), `tarn_cdc_lag_bytes` the WAL between the last
/// received and the acknowledged position (PostgreSQL sources).
fn report_lag(sink: &impl ChangeSink, received: Option<Position>, acknowledged: &Position) {
    let seconds = sink.pending_since().map_or(0.0, |t| t.elapsed().as_secs_f64());
    metrics::gauge!("tarn_cdc_lag_seconds").set(seconds);
    if let (Some(received), Some(acked)) = (received.as_ref().and_then(Position::lsn), acknowledged.lsn()) {
        metrics::gauge!("tarn_cdc_lag_bytes").set(received.0.saturating_sub(acked.0) as f64);
    }
}

/// Reports a commit: lag, positions, tables.
fn committed(
    sink: &impl ChangeSink,
    acknowledged: Position,
    received: Option<Position>,
    status: &PipelineStatus,
) {
    let lag = sink.last_commit().map(|(_, t)| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        (now - t).max(0) as f64 / 1e6
    });
    if let Some(lag) = lag {
        metrics::gauge!("tarn_cdc_lag_seconds").set(lag);
    }
    status.update(|r| {
        r.state = "streaming".into();
        r.acknowledged = Some(acknowledged);
        r.received = received;
        r.lag_seconds = lag;
        r.pending_events = sink.pending_events();
    });
    refresh_tables(sink, status);
}
