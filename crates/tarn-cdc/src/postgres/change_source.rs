//! PostgreSQL as a [`ChangeSource`]: a publication and a logical replication slot
//! (`pgoutput`), the initial copy inside the slot's exported snapshot, then the slot's stream.
//!
//! [`start`](ChangeSource::start):
//!
//! 1. find the captured tables and make the publication cover them;
//! 2. attach every table to the sink (creating lake tables or topics, reading the position each
//!    holds, rebuilding key indexes);
//! 3. with no slot yet, create it with an exported snapshot and copy every table inside that
//!    snapshot; with a slot, copy only tables that hold no position yet (new tables) inside a
//!    temporary slot's exported snapshot — either way each copy is committed with the exact
//!    position its snapshot ends at, so nothing is missed or applied twice;
//! 4. stream from the slot's `confirmed_flush_lsn` (or the new slot's consistent point).
//!
//! A table that appears in the publication later ([`crate::source::SourceEvent::Relation`] of a
//! table the sink does not hold, or found by [`tick`](ChangeSource::tick) matching `cdc.tables`) is
//! copied the same way before its first change. Acknowledging a position confirms it to the
//! slot, which lets PostgreSQL recycle the WAL before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tarn_core::{Config, Error, ErrorKind, Result, failpoint};

use super::PostgresSource;
use super::slot::PublicationAction;
use super::snapshot::{CopyRequest, copy_table};
use crate::pipeline::{PipelineStatus, SourceContext, refresh_tables};
use crate::position::Lsn;
use crate::sink::ChangeSink;
use crate::source::{ChangeSource, CopyProgress, FlushRule, Next, Position, TableSpec};

/// The PostgreSQL change source; see the module doc.
pub struct PostgresChangeSource {
    source: PostgresSource,
}

impl PostgresChangeSource {
    /// Connects to `cdc.source` and checks the server can replicate.
    pub async fn connect(config: &Config, status: &PipelineStatus) -> Result<Self> {
        let cdc = &config.cdc;
        status.update(|r| {
            r.slot = cdc.slot_name();
            r.publication = cdc.publication_name();
        });
        let source = PostgresSource::connect(cdc).await?;
        status.update(|r| r.source = source.display().to_string());
        Ok(Self { source })
    }
}

impl ChangeSource for PostgresChangeSource {
    async fn start<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> Result<Option<Position>> {
        let cdc = &ctx.config.cdc;
        let (options, status) = (ctx.options, ctx.status);
        let source = &mut self.source;
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
        let mut held = Vec::new();
        let mut unheld = Vec::new();
        for spec in &specs {
            let attached = sink.attach(spec.clone()).await?;
            tracing::info!(
                source = %spec.qualified(),
                table = %attached.target,
                position = ?attached.position.as_ref().map(ToString::to_string),
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
        refresh_tables(sink, status);
        let mut slot = source.slot_info().await?;
        if options.resnapshot && slot.is_some() {
            super::slot::drop_slot(source.client(), source.slot_name()).await?;
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
                    let at = SnapshotAt {
                        name: &exported.snapshot_name,
                        position: exported.consistent_point,
                        kind,
                    };
                    copy_tables(source, sink, &specs, at, ctx).await?;
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
                    let at = SnapshotAt {
                        name: &exported.snapshot_name,
                        position: exported.consistent_point,
                        kind: "table-added",
                    };
                    copy_tables(source, sink, &unheld, at, ctx).await?;
                    // Closing the session ends the temporary slot (a session that never
                    // streamed ends when dropped).
                    drop(exported.session);
                }
                let start = info.confirmed_flush.unwrap_or_default();
                source.start_stream(None, start).await?;
                start
            }
        };
        tracing::info!(slot = %source.slot_name(), from = %start, "streaming from the replication slot");
        Ok(Some(start.into()))
    }

    async fn next(&mut self, ctx: &SourceContext<'_>, deadline: Instant) -> Result<Next> {
        loop {
            let raw = tokio::select! {
                biased;
                () = ctx.stop.cancelled() => return Ok(Next::Stopped),
                raw = self.source.recv() => raw?,
                () = tokio::time::sleep_until(deadline.into()) => return Ok(Next::Idle),
            };
            if let Some(event) = self.source.convert(raw).await? {
                return Ok(Next::Events(vec![event]));
            }
        }
    }

    async fn acknowledge<K: ChangeSink>(&mut self, position: &Position, _sink: &mut K) -> Result<()> {
        let Some(position) = position.lsn() else {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("a PostgreSQL source was asked to acknowledge {position}, not an LSN"),
            ));
        };
        self.source.acknowledge(position);
        metrics::gauge!("tarn_cdc_acknowledged_lsn").set(position.0 as f64);
        metrics::gauge!("tarn_cdc_lag_bytes").set(self.source.received().0.saturating_sub(position.0) as f64);
        Ok(())
    }

    async fn adopt<K: ChangeSink>(
        &mut self,
        spec: Arc<TableSpec>,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> Result<()> {
        copy_new_table(&self.source, sink, spec, ctx).await
    }

    /// Picks up source tables created since start that match the pipeline's patterns: adds
    /// them to the publication (when tarn manages its table list) and copies them.
    async fn tick<K: ChangeSink>(&mut self, sink: &mut K, ctx: &SourceContext<'_>) -> Result<()> {
        let source = &mut self.source;
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
            copy_new_table(source, sink, spec, ctx).await?;
        }
        Ok(())
    }

    async fn stop<K: ChangeSink>(&mut self, _sink: &mut K, _durable: Option<&Position>) -> Result<()> {
        self.source.stop().await;
        Ok(())
    }

    fn received(&self) -> Option<Position> {
        Some(self.source.received().into())
    }

    fn flush_rule(&self) -> FlushRule {
        FlushRule::OldestChange
    }
}

/// An exported snapshot to copy tables in: its name, the position it ends at, and what kind of
/// copy it is (recorded in the commit summary).
struct SnapshotAt<'a> {
    name: &'a str,
    position: Lsn,
    kind: &'a str,
}

/// Copies `specs` inside the exported snapshot `at`, each table committed at its position.
async fn copy_tables<K: ChangeSink>(
    source: &PostgresSource,
    sink: &mut K,
    specs: &[Arc<TableSpec>],
    at: SnapshotAt<'_>,
    ctx: &SourceContext<'_>,
) -> Result<()> {
    let cdc = &ctx.config.cdc;
    let SnapshotAt {
        name: snapshot_name,
        position,
        kind,
    } = at;
    for spec in specs {
        let started = Instant::now();
        let progress = Arc::new(CopyProgress::default());
        ctx.set_copy(Some((spec.qualified(), progress.clone())));
        let request = CopyRequest {
            spec: spec.clone(),
            snapshot_name: snapshot_name.to_string(),
            parallelism: cdc.snapshot_parallelism,
            chunk_rows: cdc.snapshot_chunk_rows,
        };
        tracing::info!(table = %spec.qualified(), %position, "copying");
        let copy = sink.begin_copy(spec.id, &position.into()).await?;
        let parts = copy_table(
            source.address(),
            &request,
            |part| sink.copy_writer(spec.id, part, &copy),
            progress.clone(),
        )
        .await?;
        failpoint::hit("cdc.snapshot.after_copy").await?;
        let rows = sink
            .finish_copy(spec.id, parts, copy, position.into(), kind)
            .await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            table = %spec.qualified(),
            rows,
            seconds = secs,
            rows_per_second = rows as f64 / secs,
            "table copied"
        );
        ctx.set_copy(None);
    }
    Ok(())
}

/// Attaches a table that appeared since start and copies it inside a fresh exported snapshot.
async fn copy_new_table<K: ChangeSink>(
    source: &PostgresSource,
    sink: &mut K,
    spec: Arc<TableSpec>,
    ctx: &SourceContext<'_>,
) -> Result<()> {
    let attached = sink.attach(spec.clone()).await?;
    if attached.position.is_some() || attached.stopped.is_some() || ctx.config.cdc.snapshot != "initial" {
        return Ok(());
    }
    tracing::info!(table = %spec.qualified(), "new table in the publication: copying it");
    let exported = source.export_snapshot().await?;
    let at = SnapshotAt {
        name: &exported.snapshot_name,
        position: exported.consistent_point,
        kind: "table-added",
    };
    copy_tables(source, sink, std::slice::from_ref(&spec), at, ctx).await?;
    drop(exported.session);
    refresh_tables(sink, ctx.status);
    Ok(())
}
