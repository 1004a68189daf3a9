//! The automatic maintenance of the tables a sink writes (`[maintenance]` in the config):
//! compaction, snapshot expiry and orphan-file removal, in the background of the writer.
//!
//! Every `maintenance.interval` the pipeline asks for a round ([`LakeSink::maintain`]). Unless
//! the sink's previous round is still running, a round starts on the process's maintenance
//! runtime ([`tarn_core::priority::maintenance_runtime`]: `maintenance.threads` workers at
//! `maintenance.thread_nice` below the pipeline's operating system priority) and the call
//! returns at once: the writer goes on applying changes and committing while the round
//! compacts, expires and removes orphans of its tables, one table after another. So
//! maintenance never runs concurrently with itself, and it does not delay the next commit.
//!
//! **The writer's commits.** Compaction rewrites data files; the writer's position deletes
//! point at rows of data files through its key index. The two are kept apart by the sink's
//! commit lock:
//!
//! - the writer holds it from the moment it plans position deletes (its first write of a
//!   commit's files — a spill inside a large transaction, a schema change's write-out, the
//!   flush itself) to the end of the commit;
//! - a compaction holds it for its commit only ([`tarn_lake::CompactOptions::commit_lock`]):
//!   it plans, reads and rewrites without it. The lake validates the rewrite against the
//!   writer's commits since the compaction's plan: one that deleted a row of a file being
//!   rewritten fails the rewrite with a conflict (nothing of it is committed, so no row is
//!   lost or doubled), and the compaction plans again. A table whose rows are updated all
//!   over, all the time, would make every attempt lose, so the last of
//!   [`ATTEMPTS`] holds the lock from planning to commit: the writer waits for that one
//!   rewrite, and the compaction cannot lose to it (another process's commit can still make
//!   it fail; the round then logs why and the next round tries again). That attempt runs on
//!   the writer's runtime, at the writer's priority: at the maintenance runtime's lowered one,
//!   on a machine kept busy by the very changes the writer applies, the rewrite waited for
//!   the CPU while the writer waited for it (a writer went 11 s without a commit);
//! - right after its commit, still holding the lock, a compaction hands the writer what it
//!   did. Before the writer next plans deletes it moves its index: the rewritten files'
//!   entries are dropped and the key columns of the written files read in (the only part of
//!   maintenance on the commit path). When anything but this compaction was committed on the
//!   table since the snapshot the index describes (another process's compaction, a
//!   row-level statement), the index is rebuilt from the table's current snapshot instead,
//!   so no key points at a file that is gone and none is missing.
//!
//! Snapshot expiry and orphan removal change no rows. Expiry keeps the current snapshot, and
//! the writer takes a compaction's snapshot as its base before it commits again, so the
//! snapshot its index describes is not expired under it; orphan removal deletes only files
//! older than `maintenance.orphan_age`, far older than the files of a commit in progress.
//! Stopped tables are left alone. A round's failure is logged and counted
//! (`tarn_cdc_maintenance_rounds_total{outcome="error"}`), never fatal to the pipeline; the
//! next round tries again. A pipeline that stops or restarts aborts its running round (files
//! it wrote and did not commit are orphans, removed later).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use iceberg::TableIdent;
use iceberg::table::Table;
use tarn_core::config::MaintenanceConfig;
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::{CompactionOutcome, Lake};
use tokio::sync::OwnedMutexGuard;

use super::{LakeSink, rebuild_index};
use crate::index::KeyIndex;

/// Attempts of a compaction (`CompactOptions::max_attempts`): optimistic ones, then one
/// holding the commit lock throughout (module doc).
const ATTEMPTS: u32 = 5;

/// What a round hands the writer, in order.
enum Handed {
    /// A compaction it committed.
    Compacted(Box<Compacted>),
    /// A table it maintained, as it was at the end (for [`LakeSink::check_table`]).
    Checked(TableIdent, Box<Table>),
}

/// A compaction a round committed, for the writer to move its key index.
struct Compacted {
    ident: TableIdent,
    /// The table as the compaction committed it.
    table: Table,
    /// The parent of the compaction's snapshot.
    parent: Option<i64>,
    removed: HashSet<String>,
    added: HashSet<String>,
}

/// A sink's background maintenance; see the module doc.
#[derive(Default)]
pub(super) struct Background {
    commit_lock: Arc<tokio::sync::Mutex<()>>,
    /// The writer's hold of the commit lock.
    held: Option<OwnedMutexGuard<()>>,
    /// What rounds did that the writer's key indexes do not know yet.
    handed: Arc<Mutex<Vec<Handed>>>,
    /// The round running or last run.
    round: Option<Round>,
}

impl Background {
    /// Whether the writer holds the commit lock.
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }
}

/// A round's task, aborted when dropped (with the sink).
struct Round(tokio::task::JoinHandle<()>);

impl Drop for Round {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LakeSink {
    /// Starts a round of automatic maintenance of every table this sink writes in the
    /// background (module doc), unless the previous one is still running; returns at once.
    pub async fn maintain(&mut self, config: &MaintenanceConfig) -> Result<()> {
        if self.background.round.as_ref().is_some_and(|r| !r.0.is_finished()) {
            tracing::debug!(pipeline = %self.options.pipeline, "the previous maintenance round is still running");
            return Ok(());
        }
        let idents: Vec<TableIdent> = self
            .tables
            .values()
            .filter(|t| t.stopped.is_none())
            .map(|t| t.ident.clone())
            .collect();
        if idents.is_empty() {
            return Ok(());
        }
        let runtime =
            tarn_core::priority::maintenance_runtime(config.threads, config.thread_nice).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot start the maintenance runtime: {e}"),
                )
            })?;
        let task = round(
            self.lake.clone(),
            self.options.pipeline.clone(),
            idents,
            config.clone(),
            Locked {
                commit_lock: self.background.commit_lock.clone(),
                // The writer's: it waits for the compaction holding the lock (`Locked`).
                runtime: tokio::runtime::Handle::current(),
            },
            self.background.handed.clone(),
        );
        self.background.round = Some(Round(runtime.spawn(task)));
        Ok(())
    }

    /// Waits for the running round of maintenance to end, then moves the key indexes past
    /// what it compacted. Not while a commit's files are written (the round may be waiting for
    /// that commit).
    pub async fn wait_for_maintenance(&mut self) -> Result<()> {
        if self.background.held.is_some() {
            return Err(Error::new(
                ErrorKind::Internal,
                "waiting for maintenance while a commit is being written",
            ));
        }
        if let Some(round) = self.background.round.as_mut() {
            let _ = (&mut round.0).await;
        }
        self.hold_commits().await?;
        self.release_commits();
        Ok(())
    }

    /// Takes the commit lock (waiting out a compaction's commit), then moves the key indexes
    /// past the compactions committed since the last time. Held until
    /// [`LakeSink::release_commits`].
    pub(super) async fn hold_commits(&mut self) -> Result<()> {
        if self.background.held.is_none() {
            self.background.held = Some(self.background.commit_lock.clone().lock_owned().await);
        }
        let handed = std::mem::take(&mut *self.background.handed.lock().expect("maintenance poisoned"));
        for h in handed {
            match h {
                Handed::Compacted(c) => self.follow_compaction(*c).await?,
                Handed::Checked(ident, table) => self.check_table(&ident, &table).await?,
            }
        }
        Ok(())
    }

    /// Lets compactions commit again (after a commit).
    pub(super) fn release_commits(&mut self) {
        self.background.held = None;
    }

    /// Moves the key index of the compacted table: patched when the compaction landed right on
    /// the snapshot the index describes, rebuilt from the current snapshot otherwise.
    async fn follow_compaction(&mut self, c: Compacted) -> Result<()> {
        let lake = self.lake.clone();
        for state in self
            .tables
            .values_mut()
            .filter(|t| t.ident == c.ident && t.stopped.is_none())
        {
            let started = Instant::now();
            let indexed = state.table.metadata().current_snapshot_id();
            let patched = c.parent == indexed;
            if patched {
                state.table = c.table.clone();
                state.index.remove_files(&c.removed);
                rebuild_index(&lake, state, Some(&c.added)).await?;
                state.synced = state.table.metadata().current_snapshot_id();
            } else {
                tracing::info!(table = %c.ident, "the table changed besides this writer's compaction; rebuilding its key index");
                state.table = lake.load_table(&c.ident).await?;
                state.index = KeyIndex::for_table(&state.spec);
                rebuild_index(&lake, state, None).await?;
            }
            tracing::info!(
                table = %c.ident,
                removed = c.removed.len(),
                added = c.added.len(),
                index = if patched { "patched" } else { "rebuilt" },
                seconds = started.elapsed().as_secs_f64(),
                "key index follows the background compaction"
            );
        }
        Ok(())
    }

    /// After a round maintained table `ident` (`table` as the round last saw it): when another
    /// writer rewrote it (a `replace` snapshot this sink's compactions did not hand over —
    /// `tarn maintain` or a scheduled `maintain` task in another process) since the snapshot
    /// the key index was last built or moved to, the index is rebuilt from the current
    /// snapshot, before a commit's deletes point at files that are gone. (A commit that does
    /// so anyway fails the lake's check of the files its deletes reference, and the pipeline
    /// restarts from the lake.)
    async fn check_table(&mut self, ident: &TableIdent, table: &Table) -> Result<()> {
        let lake = self.lake.clone();
        for state in self
            .tables
            .values_mut()
            .filter(|t| t.ident == *ident && t.stopped.is_none())
        {
            // The newer of the two: the round's view, or the writer's own after a commit the
            // round did not see.
            let own = state.table.metadata().current_snapshot_id();
            let fresh = match own {
                Some(id) if table.metadata().snapshot_by_id(id).is_none() => state.table.clone(),
                _ => table.clone(),
            };
            if let Some(foreign) = rewrite_since(&fresh, state.synced) {
                tracing::info!(table = %ident, snapshot = foreign, "another writer rewrote the table; rebuilding its key index");
                state.table = lake.load_table(ident).await?;
                state.index = KeyIndex::for_table(&state.spec);
                rebuild_index(&lake, state, None).await?;
            } else {
                state.synced = fresh.metadata().current_snapshot_id();
            }
        }
        Ok(())
    }
}

/// The newest `replace` snapshot of `table` after snapshot `synced` (the whole history when
/// `None`), if any. The walk stops at a snapshot no longer in the metadata (expired): what
/// went before cannot be told, and the commit-time check stands behind it.
fn rewrite_since(table: &Table, synced: Option<i64>) -> Option<i64> {
    let metadata = table.metadata();
    let mut next = metadata.current_snapshot();
    while let Some(snapshot) = next {
        if Some(snapshot.snapshot_id()) == synced {
            return None;
        }
        if snapshot.summary().operation == iceberg::spec::Operation::Replace {
            return Some(snapshot.snapshot_id());
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|parent| metadata.snapshot_by_id(parent));
    }
    None
}

/// The sink's commit lock, and the runtime of the writer that takes it: a compaction's last
/// attempt holds the lock from planning to commit (module doc) and runs there, at the writer's
/// priority rather than the maintenance runtime's lowered one, since the writer waits for it
/// ([`tarn_lake::CompactOptions::locked_runtime`]).
struct Locked {
    commit_lock: Arc<tokio::sync::Mutex<()>>,
    runtime: tokio::runtime::Handle,
}

/// One round: each table in turn (module doc). Failures are logged and counted.
async fn round(
    lake: Lake,
    pipeline: String,
    idents: Vec<TableIdent>,
    config: MaintenanceConfig,
    locked: Locked,
    handed: Arc<Mutex<Vec<Handed>>>,
) {
    let started = Instant::now();
    let mut failed = 0usize;
    let mut compactions = 0usize;
    for ident in &idents {
        match maintain_table(&lake, ident, &config, &locked, &handed).await {
            Ok(did_compact) => compactions += usize::from(did_compact),
            Err(e) => {
                failed += 1;
                tracing::warn!(%pipeline, table = %ident, error = %e, "background maintenance of the table failed; the next round tries again");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let outcome = if failed == 0 { "ok" } else { "error" };
    metrics::counter!("tarn_cdc_maintenance_rounds_total", "pipeline" => pipeline.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("tarn_cdc_maintenance_round_seconds", "pipeline" => pipeline.clone()).record(seconds);
    if compactions > 0 || failed > 0 {
        tracing::info!(%pipeline, tables = idents.len(), compactions, failed, seconds, "background maintenance round done");
    } else {
        tracing::debug!(%pipeline, tables = idents.len(), seconds, "background maintenance round done");
    }
}

/// Compaction, snapshot expiry and orphan removal of one table; whether it compacted.
async fn maintain_table(
    lake: &Lake,
    ident: &TableIdent,
    config: &MaintenanceConfig,
    locked: &Locked,
    handed: &Arc<Mutex<Vec<Handed>>>,
) -> Result<bool> {
    // (A crash test's `sleep(ms)` here makes each table's maintenance take that long.)
    tarn_core::failpoint::hit("cdc.maintenance.table").await?;
    let now = chrono::Utc::now();
    let age =
        |key: &str| chrono::Duration::from_std(config.duration(key)).unwrap_or(chrono::Duration::hours(1));
    let hand_over: tarn_lake::CommitHook = {
        let (ident, handed) = (ident.clone(), handed.clone());
        Arc::new(move |table: &Table, outcome: &CompactionOutcome| {
            let Some(snapshot) = outcome.snapshot_id else {
                return;
            };
            handed
                .lock()
                .expect("maintenance poisoned")
                .push(Handed::Compacted(Box::new(Compacted {
                    ident: ident.clone(),
                    table: table.clone(),
                    parent: table
                        .metadata()
                        .snapshot_by_id(snapshot)
                        .and_then(|s| s.parent_snapshot_id()),
                    removed: outcome.removed_data_files.iter().cloned().collect(),
                    added: outcome
                        .added_data_files
                        .iter()
                        .map(|f| f.file_path().to_string())
                        .collect(),
                })));
        })
    };
    let outcome = lake
        .compact(
            ident,
            &tarn_lake::CompactOptions {
                small_file_threshold: config.small_file_bytes,
                min_input_files: config.min_files,
                delete_ratio_threshold: config.delete_ratio,
                file_prefix: format!("compact-{}", uuid::Uuid::new_v4()),
                max_attempts: ATTEMPTS,
                commit_lock: Some(locked.commit_lock.clone()),
                locked_runtime: Some(locked.runtime.clone()),
                on_commit: Some(hand_over),
                ..tarn_lake::CompactOptions::default()
            },
        )
        .await?;
    let expired = lake
        .expire_snapshots(
            ident,
            &tarn_lake::ExpireOptions {
                older_than: now - age("snapshot_age"),
                retain_last: config.retain_snapshots,
                progress: None,
            },
        )
        .await?;
    let orphans = lake
        .remove_orphan_files(
            ident,
            &tarn_lake::OrphanOptions {
                older_than: now - age("orphan_age"),
                dry_run: false,
                progress: None,
            },
        )
        .await?;
    if !expired.expired_snapshots.is_empty() || orphans.deleted > 0 {
        tracing::info!(
            table = %ident,
            expired_snapshots = expired.expired_snapshots.len(),
            deleted_files = expired.deleted_data_files + expired.deleted_delete_files,
            orphans = orphans.deleted,
            "expired snapshots and removed orphan files"
        );
    }
    let table = lake.load_table(ident).await?;
    handed
        .lock()
        .expect("maintenance poisoned")
        .push(Handed::Checked(ident.clone(), Box::new(table)));
    Ok(outcome.snapshot_id.is_some())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use iceberg::spec::Operation;
    use tarn_core::Config;
    use tarn_lake::Lake;

    use crate::position::Lsn;
    use crate::scripted::testing::{lake_rows, row, table};
    use crate::sink::{LakeSink, SinkOptions};
    use crate::source::{SourceEvent, TableSpec};

    async fn apply_txn(sink: &mut LakeSink, at: u64, changes: Vec<SourceEvent>) {
        sink.apply(SourceEvent::Begin {
            commit_position: Lsn(at).into(),
            transaction_id: None,
        })
        .await
        .unwrap();
        for change in changes {
            sink.apply(change).await.unwrap();
            sink.spill_if_needed().await.unwrap();
        }
        sink.apply(SourceEvent::Commit {
            position: Lsn(at + 1).into(),
            commit_time_micros: 0,
        })
        .await
        .unwrap();
    }

    async fn commit(sink: &mut LakeSink, at: u64, changes: Vec<SourceEvent>) {
        apply_txn(sink, at, changes).await;
        sink.flush().await.unwrap();
    }

    fn sink(lake: Lake, config: &Config, spill_bytes: usize) -> LakeSink {
        LakeSink::new(
            lake,
            SinkOptions {
                pipeline: config.cdc.pipeline.clone(),
                namespace: config.cdc.namespace.clone(),
                table_name: config.cdc.table_name.clone(),
                spill_bytes,
            },
        )
    }

    fn updates(ids: std::ops::Range<i64>, v: &str) -> Vec<SourceEvent> {
        ids.map(|id| SourceEvent::Update {
            table: 1,
            old: None,
            new: row(id, Some(v)),
        })
        .collect()
    }

    /// Another process compacts the table between this writer's commits; the writer's
    /// maintenance round notices, the writer rebuilds its key index from the current snapshot,
    /// and the next updates replace the rows where they now are (no conflict, no row twice).
    #[tokio::test]
    async fn a_compaction_by_another_writer_rebuilds_the_key_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.cdc.pipeline = "p".into();
        // The writer's own compaction never starts: only the other process compacts.
        config.maintenance.min_files = 1000;
        let spec: Arc<TableSpec> = table(1, "items");
        let mut writer = sink(Lake::open(&config).await.unwrap(), &config, 1 << 20);
        writer.attach(spec.clone()).await.unwrap();
        for i in 0..4u64 {
            let id = i as i64;
            let insert = SourceEvent::Insert {
                table: 1,
                new: row(id, Some("first")),
            };
            commit(&mut writer, 0x100 * (i + 1), vec![insert]).await;
        }
        let other = Lake::open(&config).await.unwrap();
        let ident = writer.lake_ident(&spec);
        let outcome = other
            .compact(
                &ident,
                &tarn_lake::CompactOptions {
                    min_input_files: 2,
                    ..tarn_lake::CompactOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(outcome.snapshot_id.is_some(), "the other writer did not compact");
        writer.maintain(&config.maintenance).await.unwrap();
        writer.wait_for_maintenance().await.unwrap();
        commit(&mut writer, 0x1000, updates(0..4, "second")).await;
        let rows = lake_rows(&config, &spec).await;
        let values: Vec<Option<String>> = rows.values().map(|r| r[1].clone()).collect();
        assert_eq!(values, vec![Some("second".to_string()); 4], "{rows:?}");
    }

    /// Files named `compact-*` under `dir`: what a compaction wrote, committed or not.
    fn compaction_files(dir: &std::path::Path) -> usize {
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("compact-"))
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// The writer's own compaction runs in the background and loses a race: while it rewrites
    /// the table's files, the writer plans deletes of rows in those files (holding the commit
    /// lock from its spill on), so the compaction's commit waits, then conflicts with the
    /// writer's commit, plans again and commits on top of it. The writer follows the
    /// compaction (its key index moves to the new file) and its next updates land on the
    /// rows where they now are: every key once, with its last value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_background_compaction_that_loses_to_the_writer_plans_again_and_the_writer_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.cdc.pipeline = "p".into();
        config.maintenance.min_files = 2;
        let spec: Arc<TableSpec> = table(1, "items");
        // Spills at the first change: the commit lock is held from there to the flush.
        let mut writer = sink(Lake::open(&config).await.unwrap(), &config, 1);
        writer.attach(spec.clone()).await.unwrap();
        for i in 0..4i64 {
            let inserts = (i * 5..i * 5 + 5)
                .map(|id| SourceEvent::Insert {
                    table: 1,
                    new: row(id, Some("first")),
                })
                .collect();
            commit(&mut writer, 0x100 * (i as u64 + 1), inserts).await;
        }
        // Updates of every row, their deletes planned against the four files...
        apply_txn(&mut writer, 0x1000, updates(0..20, "second")).await;
        assert!(writer.background.holds());
        // ...while the compaction rewrites them and then waits for the lock.
        writer.maintain(&config.maintenance).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while compaction_files(dir.path()) == 0 {
            assert!(Instant::now() < deadline, "the compaction wrote nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writers_commit = {
            writer.flush().await.unwrap();
            let state = writer.tables.values().next().unwrap();
            state.table.metadata().current_snapshot_id()
        };
        writer.wait_for_maintenance().await.unwrap();
        let ident = writer.lake_ident(&spec);
        let table = Lake::open(&config)
            .await
            .unwrap()
            .load_table(&ident)
            .await
            .unwrap();
        let current = table.metadata().current_snapshot().unwrap();
        assert_eq!(
            current.summary().operation,
            Operation::Replace,
            "no compaction committed"
        );
        assert_eq!(
            current.parent_snapshot_id(),
            writers_commit,
            "the compaction committed on top of the writer's deletes (it planned again)"
        );
        // The writer's index follows: the next updates replace the compacted rows.
        commit(&mut writer, 0x2000, updates(0..20, "third")).await;
        let rows = lake_rows(&config, &spec).await;
        let values: Vec<Option<String>> = rows.values().map(|r| r[1].clone()).collect();
        assert_eq!(values, vec![Some("third".to_string()); 20], "{rows:?}");
    }
}
