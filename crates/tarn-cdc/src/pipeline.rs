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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tarn_core::{Config, Error, ErrorKind, Result, failpoint};
use tarn_lake::Lake;
use tokio_util::sync::CancellationToken;

use crate::postgres::PostgresSource;
use crate::postgres::slot::PublicationAction;
use crate::postgres::snapshot::{CopyProgress, CopyRequest, copy_table};
use crate::sink::{LakeSink, SinkOptions};
use crate::source::{Position, SourceEvent, TableSpec};

/// How a pipeline runs besides its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Drop the slot and copy every table again (the recovery when the slot was lost).
    pub resnapshot: bool,
    /// Stop after this long (for demos and benchmarks).
    pub duration: Option<Duration>,
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
    pub acknowledged: Option<String>,
    /// The newest position received.
    pub received: Option<String>,
    /// Seconds between the last applied source commit and its arrival in the lake.
    pub lag_seconds: Option<f64>,
    /// Changes buffered, not yet committed.
    pub pending_events: u64,
    /// The table being copied, rows copied so far.
    pub snapshot: Option<SnapshotReport>,
    /// Per-table state.
    pub tables: Vec<TableReport>,
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
    pub position: Option<String>,
    /// Why it was stopped.
    pub stopped: Option<String>,
    /// Changes applied since start.
    pub changes: u64,
    /// Commits since start.
    pub commits: u64,
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
        let attempt = if config.cdc.source_kind == "cockroachdb" {
            crate::cockroach::run_once(config, lake.clone(), &options, &status, &stop).await
        } else {
            run_once(config, lake.clone(), &options, &status, &stop).await
        };
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

/// An exported snapshot to copy tables in: its name, the position it ends at, and what kind of
/// copy it is (recorded in the commit summary).
struct SnapshotAt<'a> {
    name: &'a str,
    position: Position,
    kind: &'a str,
}

async fn snapshot_tables(
    config: &Config,
    source: &PostgresSource,
    sink: &mut LakeSink,
    specs: &[Arc<TableSpec>],
    at: SnapshotAt<'_>,
    status: &PipelineStatus,
) -> Result<()> {
    let SnapshotAt {
        name: snapshot_name,
        position,
        kind,
    } = at;
    for spec in specs {
        let started = Instant::now();
        let progress = Arc::new(CopyProgress::default());
        *status.copy.lock().expect("status poisoned") = Some((spec.qualified(), progress.clone()));
        let request = CopyRequest {
            spec: spec.clone(),
            snapshot_name: snapshot_name.to_string(),
            parallelism: config.cdc.snapshot_parallelism,
            chunk_rows: config.cdc.snapshot_chunk_rows,
        };
        tracing::info!(table = %spec.qualified(), %position, "copying");
        let index = sink.snapshot_index(spec.id)?;
        let parts = copy_table(
            source.address(),
            &request,
            |part| sink.snapshot_writer(spec.id, part, index.clone()),
            progress.clone(),
        )
        .await?;
        failpoint::hit("cdc.snapshot.after_copy").await?;
        let rows = sink
            .finish_snapshot(spec.id, parts, index, position, kind)
            .await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            table = %spec.qualified(),
            rows,
            seconds = secs,
            rows_per_second = rows as f64 / secs,
            "table copied"
        );
        *status.copy.lock().expect("status poisoned") = None;
    }
    Ok(())
}

pub(crate) fn refresh_tables(sink: &LakeSink, status: &PipelineStatus) {
    let tables = sink
        .table_positions()
        .into_iter()
        .map(|(ident, position, stopped, counters)| TableReport {
            table: ident.to_string(),
            position: position.map(|p| p.to_string()),
            stopped,
            changes: counters.changes,
            commits: counters.commits,
        })
        .collect();
    status.update(|r| r.tables = tables);
}

async fn run_once(
    config: &Config,
    lake: Lake,
    options: &RunOptions,
    status: &PipelineStatus,
    stop: &CancellationToken,
) -> Result<()> {
    let cdc = &config.cdc;
    status.update(|r| {
        r.state = "starting".into();
        r.pipeline = cdc.pipeline.clone();
        r.slot = cdc.slot_name();
        r.publication = cdc.publication_name();
    });
    let mut source = PostgresSource::connect(cdc).await?;
    status.update(|r| r.source = source.display().to_string());
    let specs = source.discover().await?;
    if specs.is_empty() {
        tracing::warn!(patterns = ?cdc.tables, "no source table matches cdc.tables; waiting for new tables");
    }
    match source.ensure_publication(&specs).await? {
        PublicationAction::Created(t) => {
            tracing::info!(publication = %source.publication_name(), tables = ?t, "created publication")
        }
        PublicationAction::Added(t) => {
            tracing::info!(publication = %source.publication_name(), tables = ?t, "added tables to publication")
        }
        PublicationAction::Reused => {
            tracing::info!(publication = %source.publication_name(), "using existing publication")
        }
    }
    let sink_options = SinkOptions {
        pipeline: cdc.pipeline.clone(),
        namespace: cdc.namespace.clone(),
        table_name: cdc.table_name.clone(),
        spill_bytes: (cdc.flush.max_bytes / 2) as usize,
    };
    let mut sink = LakeSink::new(lake.clone(), sink_options);
    let mut held = Vec::new();
    let mut unheld = Vec::new();
    for spec in &specs {
        let attached = sink.attach(spec.clone()).await?;
        tracing::info!(
            source = %spec.qualified(),
            table = %attached.ident,
            position = ?attached.position.map(|p| p.to_string()),
            indexed_rows = attached.indexed_rows,
            stopped = ?attached.stopped,
            "attached table"
        );
        if attached.stopped.is_some() {
            continue;
        }
        match attached.position {
            Some(_) => held.push(spec.clone()),
            None => unheld.push(spec.clone()),
        }
    }
    refresh_tables(&sink, status);
    let mut slot = source.slot_info().await?;
    if options.resnapshot && slot.is_some() {
        crate::postgres::slot::drop_slot(source.client(), source.slot_name()).await?;
        tracing::info!(slot = %source.slot_name(), "dropped replication slot for a new snapshot");
        slot = None;
    }
    let start = match slot {
        None => {
            if !held.is_empty() && !options.resnapshot {
                // Needs an operator's decision: not retried.
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "replication slot {} does not exist, but {} table(s) hold changes of pipeline {} (e.g. {}); \
                         changes made since they were captured may be lost. Run `tarn cdc run --resnapshot` to copy \
                         every table again and start a new slot",
                        source.slot_name(),
                        held.len(),
                        cdc.pipeline,
                        held[0].qualified()
                    ),
                ));
            }
            let exported = source.create_slot().await?;
            tracing::info!(
                slot = %source.slot_name(),
                consistent_point = %exported.consistent_point,
                "created replication slot"
            );
            if cdc.snapshot == "initial" || options.resnapshot {
                status.update(|r| r.state = "snapshotting".into());
                let kind = if options.resnapshot {
                    "resnapshot"
                } else {
                    "initial"
                };
                snapshot_tables(
                    config,
                    &source,
                    &mut sink,
                    &specs,
                    SnapshotAt {
                        name: &exported.snapshot_name,
                        position: exported.consistent_point,
                        kind,
                    },
                    status,
                )
                .await?;
            }
            let point = exported.consistent_point;
            source.start_stream(Some(exported.session), point).await?;
            point
        }
        Some(info) => {
            if info.is_lost() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "replication slot {} was invalidated by PostgreSQL (wal_status = {}): the WAL it needs is gone \
                         and changes may be lost. Run `tarn cdc run --resnapshot` to copy every table again",
                        info.name,
                        info.wal_status.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
            if info.plugin.as_deref() != Some("pgoutput") {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "replication slot {} uses plugin {:?}, not pgoutput; choose another cdc.slot",
                        info.name, info.plugin
                    ),
                ));
            }
            if let Some(pid) = info.active_pid {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "replication slot {} is in use by process {pid}; is another tarn running pipeline {}?",
                        info.name, cdc.pipeline
                    ),
                ));
            }
            if !unheld.is_empty() && cdc.snapshot == "initial" {
                status.update(|r| r.state = "snapshotting".into());
                let exported = source.export_snapshot().await?;
                snapshot_tables(
                    config,
                    &source,
                    &mut sink,
                    &unheld,
                    SnapshotAt {
                        name: &exported.snapshot_name,
                        position: exported.consistent_point,
                        kind: "table-added",
                    },
                    status,
                )
                .await?;
                // Closing the session ends the temporary slot (a session that never
                // streamed ends when dropped).
                drop(exported.session);
            }
            let start = info.confirmed_flush.unwrap_or_default();
            source.start_stream(None, start).await?;
            start
        }
    };
    refresh_tables(&sink, status);
    tracing::info!(slot = %source.slot_name(), from = %start, "streaming");
    status.update(|r| {
        r.state = "streaming".into();
        r.last_error = None;
        r.acknowledged = Some(start.to_string());
    });
    stream(config, &mut source, &mut sink, status, stop, start).await
}

async fn stream(
    config: &Config,
    source: &mut PostgresSource,
    sink: &mut LakeSink,
    status: &PipelineStatus,
    stop: &CancellationToken,
    start: Position,
) -> Result<()> {
    let cdc = &config.cdc;
    let interval = cdc.flush_interval();
    let mut acknowledged = start;
    let mut poll_tables = tokio::time::interval(Duration::from_secs(10));
    poll_tables.tick().await;
    let mut maintain = tokio::time::interval(config.maintenance.duration("interval"));
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    maintain.tick().await;
    loop {
        let deadline = sink
            .pending_since()
            .map(|t| t + interval)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let raw = tokio::select! {
            raw = source.recv() => Some(raw?),
            () = tokio::time::sleep_until(deadline.into()), if !sink.in_transaction() => None,
            _ = poll_tables.tick(), if !sink.in_transaction() => {
                add_new_tables(config, source, sink, status).await?;
                continue;
            }
            _ = maintain.tick(), if config.maintenance.auto && !sink.in_transaction() => {
                // Commit what is buffered first, so maintenance never races this writer.
                if let Some(p) = sink.flush().await? {
                    source.acknowledge(p);
                    acknowledged = p;
                }
                sink.maintain(&config.maintenance).await?;
                continue;
            }
            () = stop.cancelled() => {
                if !sink.in_transaction()
                    && let Some(p) = sink.flush().await?
                {
                    source.acknowledge(p);
                    acknowledged = p;
                }
                source.stop().await;
                tracing::info!(acknowledged = %acknowledged, "CDC pipeline stopped");
                return Ok(());
            }
        };
        // A deadline (raw = None) flushes; a commit flushes when a limit is reached.
        let mut flush_now = raw.is_none();
        if let Some(raw) = raw {
            let Some(event) = source.convert(raw).await? else {
                continue;
            };
            failpoint::hit("cdc.on_event").await?;
            tracing::trace!(?event, "event");
            match event {
                SourceEvent::Relation(spec) if !sink.has_table(spec.id) => {
                    // A table appeared in the publication: copy it, then take its changes.
                    snapshot_new_table(config, source, sink, status, spec).await?;
                }
                SourceEvent::Keepalive { position } => {
                    if !sink.in_transaction() && sink.pending_events() == 0 && position > acknowledged {
                        source.acknowledge(position);
                        acknowledged = position;
                    }
                    status.update(|r| {
                        r.received = Some(source.received().to_string());
                        r.acknowledged = Some(acknowledged.to_string());
                        r.pending_events = sink.pending_events();
                    });
                }
                event => {
                    let is_change = matches!(
                        event,
                        SourceEvent::Insert { .. } | SourceEvent::Update { .. } | SourceEvent::Delete { .. }
                    );
                    let is_commit = matches!(event, SourceEvent::Commit { .. });
                    sink.apply(event).await?;
                    if is_change {
                        status.events.fetch_add(1, Ordering::Relaxed);
                        if sink.pending_events().is_multiple_of(1024) {
                            status.update(|r| r.pending_events = sink.pending_events());
                        }
                        metrics::counter!("tarn_cdc_events_total").increment(1);
                        sink.spill_if_needed().await?;
                    }
                    if is_commit
                        && sink.pending_events() == 0
                        && let Some((p, _)) = sink.last_commit()
                        && p > acknowledged
                    {
                        // Nothing of this transaction is waiting (the tables held it already).
                        source.acknowledge(p);
                        acknowledged = p;
                    }
                    let full = sink.pending_events() >= cdc.flush.max_rows
                        || sink.pending_bytes() as u64 >= cdc.flush.max_bytes;
                    flush_now =
                        is_commit && (full || sink.pending_since().is_some_and(|t| t.elapsed() >= interval));
                }
            }
        }
        if !flush_now || sink.in_transaction() || sink.pending_since().is_none() {
            continue;
        }
        let Some(p) = sink.flush().await? else {
            continue;
        };
        failpoint::hit("cdc.before_ack").await?;
        source.acknowledge(p);
        acknowledged = p;
        let lag = sink.last_commit().map(|(_, t)| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            (now - t).max(0) as f64 / 1e6
        });
        if let Some(lag) = lag {
            metrics::gauge!("tarn_cdc_lag_seconds").set(lag);
        }
        metrics::gauge!("tarn_cdc_acknowledged_lsn").set(p.lsn() as f64);
        metrics::gauge!("tarn_cdc_lag_bytes").set(source.received().lsn().saturating_sub(p.lsn()) as f64);
        status.update(|r| {
            r.acknowledged = Some(p.to_string());
            r.received = Some(source.received().to_string());
            r.lag_seconds = lag;
            r.pending_events = 0;
        });
        refresh_tables(sink, status);
    }
}

async fn snapshot_new_table(
    config: &Config,
    source: &mut PostgresSource,
    sink: &mut LakeSink,
    status: &PipelineStatus,
    spec: Arc<TableSpec>,
) -> Result<()> {
    let attached = sink.attach(spec.clone()).await?;
    if attached.position.is_some() || attached.stopped.is_some() || config.cdc.snapshot != "initial" {
        return Ok(());
    }
    tracing::info!(table = %spec.qualified(), "new table in the publication: copying it");
    let exported = source.export_snapshot().await?;
    snapshot_tables(
        config,
        source,
        sink,
        std::slice::from_ref(&spec),
        SnapshotAt {
            name: &exported.snapshot_name,
            position: exported.consistent_point,
            kind: "table-added",
        },
        status,
    )
    .await?;
    drop(exported.session);
    refresh_tables(sink, status);
    Ok(())
}

/// Picks up source tables created since start that match the pipeline's patterns: adds them
/// to the publication (when tarn manages its table list) and copies them.
async fn add_new_tables(
    config: &Config,
    source: &mut PostgresSource,
    sink: &mut LakeSink,
    status: &PipelineStatus,
) -> Result<()> {
    let specs = match source.discover().await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            tracing::warn!(error = %e, "some new tables cannot be captured");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let new: Vec<Arc<TableSpec>> = specs.into_iter().filter(|s| !sink.has_table(s.id)).collect();
    if new.is_empty() {
        return Ok(());
    }
    if let PublicationAction::Added(t) = source.ensure_publication(&new).await? {
        tracing::info!(tables = ?t, "added new tables to the publication");
    }
    let by_id: HashMap<u32, Arc<TableSpec>> = new.into_iter().map(|s| (s.id, s)).collect();
    for spec in by_id.into_values() {
        snapshot_new_table(config, source, sink, status, spec).await?;
    }
    Ok(())
}
