//! Table maintenance: compaction, snapshot expiry and orphan-file removal.
//!
//! A CDC table collects small data files (one per flush) and position delete files (one per
//! flush with updates or deletes); every snapshot keeps the files it saw reachable. Left
//! alone, scans slow down and storage grows. These operations, run by `tarn maintain` and by
//! the CDC writer's automatic policy, keep a table lean without ever losing a committed row:
//!
//! - [`Lake::compact`] rewrites small data files and files with many deleted rows into files of
//!   the target size holding only live rows (read with [`Lake::scan_live_rows`]), drops delete
//!   files that no longer apply to any remaining data file, and commits a `replace` snapshot
//!   with [`Lake::commit_rewrite`]. A concurrent commit is never lost: the rewrite is re-applied
//!   on top of it, and when that commit deleted rows of a file being rewritten the rewrite fails
//!   validation, is thrown away and planned again from the new snapshot.
//! - [`Lake::expire_snapshots`] removes old snapshots from the metadata (never the current
//!   snapshot, never one a branch or tag points at, always keeping the last `retain_last` of
//!   each branch) with the `iceberg` crate's `ExpireSnapshotsAction`, then deletes manifest
//!   lists, manifests, data and delete files that no remaining snapshot reaches.
//! - [`Lake::remove_orphan_files`] lists every file under the table's location and deletes
//!   those the current metadata does not reach and that are older than a threshold: files of
//!   failed writes and of crashed commits. The age threshold is what protects a writer that
//!   has written files but not committed them yet.
//!
//! A table whose property [`PROPERTY_COMPACTION`] is `off` is never compacted (its file names
//! and sizes mean something: the Kafka archive's files are named by topic, hour, partition and
//! offset); expiry and orphan removal still apply.
//!
//! Progress goes to an optional callback ([`ProgressFn`]), counters to `metrics`
//! (`tarn_maintenance_*`), and a summary line to `tracing`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use iceberg::TableIdent;
use iceberg::spec::{DataContentType, DataFile, Manifest, Struct, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use tarn_core::{Error, ErrorKind, Result};

use crate::commit::Rewrite;

/// Table property: `off` keeps [`Lake::compact`] away from the table; see the module doc.
pub const PROPERTY_COMPACTION: &str = "tarn.compaction";

/// Whether `table` says it must not be compacted ([`PROPERTY_COMPACTION`] = `off`).
fn compaction_is_off(table: &Table) -> bool {
    table
        .metadata()
        .properties()
        .get(PROPERTY_COMPACTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("off"))
}
use crate::lake::{Lake, iceberg_error};
use crate::rows::{FileEntry, SnapshotFiles, for_each_position_delete, single_referenced_file};
use crate::writer::{PositionedDataWriter, table_target_file_size};

/// Manifests read or files deleted at once.
const CONCURRENCY: usize = 8;

/// How far a maintenance operation has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// What is being done: `compact`, `expire`, `list` or `delete`.
    pub phase: &'static str,
    /// Files done so far in this phase.
    pub files_done: u64,
    /// Files this phase will handle (0 while unknown, e.g. while listing).
    pub files_total: u64,
    /// Bytes done so far in this phase.
    pub bytes_done: u64,
    /// Bytes this phase will handle (0 while unknown).
    pub bytes_total: u64,
}

/// A progress callback, called after every file.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

fn report(progress: &Option<ProgressFn>, p: &Progress) {
    if let Some(f) = progress {
        f(p);
    }
}

/// What [`Lake::compact`] rewrites.
#[derive(Clone)]
pub struct CompactOptions {
    /// Size of the files written; `None`: the table's `write.target-file-size-bytes`.
    pub target_file_size: Option<u64>,
    /// Data files smaller than this are candidates (`maintenance.small_file_bytes`).
    pub small_file_threshold: u64,
    /// Compact only when at least this many small files are candidates
    /// (`maintenance.min_files`); files with too many deletes are compacted regardless.
    pub min_input_files: usize,
    /// A data file whose deleted rows make up at least this fraction of its rows is rewritten
    /// (`maintenance.delete_ratio`). Files with equality deletes are always rewritten.
    pub delete_ratio_threshold: f64,
    /// How often a plan that lost to a conflicting commit is made again (at least 1 try).
    pub max_attempts: u32,
    /// Prefix of the names of the files written.
    pub file_prefix: String,
    /// Called after each input file.
    pub progress: Option<ProgressFn>,
    /// Held for the commit, so that a writer holding it between planning its own position
    /// deletes and committing them never has a compaction commit under it (the CDC writer's
    /// automatic maintenance). Planning and rewriting run without it, except on the last of
    /// `max_attempts`: that one holds it from planning to commit, so a writer whose commits
    /// keep deleting rows of the files being rewritten cannot make it lose too (the writer
    /// waits for that one rewrite instead).
    pub commit_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The runtime the attempt holding `commit_lock` throughout runs on. The writer waits for
    /// that attempt, so it runs at the writer's priority: on a runtime whose threads run at a
    /// lowered one (`maintenance.thread_nice`) a machine busy with the writer's own work would
    /// leave the rewrite waiting for the CPU while the writer waits for the lock (a priority
    /// inversion: a CDC writer went 11 s without a commit). `None`: the caller's runtime.
    pub locked_runtime: Option<tokio::runtime::Handle>,
    /// Called with the committed table and the outcome right after the commit, while
    /// `commit_lock` is still held.
    pub on_commit: Option<CommitHook>,
}

/// See [`CompactOptions::on_commit`].
pub type CommitHook = Arc<dyn Fn(&Table, &CompactionOutcome) + Send + Sync>;

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_file_size: None,
            small_file_threshold: 32 * 1024 * 1024,
            min_input_files: 16,
            delete_ratio_threshold: 0.2,
            max_attempts: 8,
            file_prefix: "compact".to_string(),
            progress: None,
            commit_lock: None,
            locked_runtime: None,
            on_commit: None,
        }
    }
}

impl fmt::Debug for CompactOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompactOptions")
            .field("target_file_size", &self.target_file_size)
            .field("small_file_threshold", &self.small_file_threshold)
            .field("min_input_files", &self.min_input_files)
            .field("delete_ratio_threshold", &self.delete_ratio_threshold)
            .field("max_attempts", &self.max_attempts)
            .field("file_prefix", &self.file_prefix)
            .finish_non_exhaustive()
    }
}

/// Files of one partition that were rewritten into new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenGroup {
    /// The partition (empty for an unpartitioned table).
    pub partition: Struct,
    /// The data files rewritten.
    pub removed: Vec<String>,
    /// The data files that now hold their live rows.
    pub added: Vec<String>,
}

/// What [`Lake::compact`] did.
#[derive(Debug, Clone, Default)]
pub struct CompactionOutcome {
    /// The `replace` snapshot committed; `None` when there was nothing to compact.
    pub snapshot_id: Option<i64>,
    /// Data files removed.
    pub removed_data_files: Vec<String>,
    /// Delete files removed (they applied only to removed data files).
    pub removed_delete_files: Vec<String>,
    /// Data files added.
    pub added_data_files: Vec<DataFile>,
    /// Old → new data files, per partition. Rows of a group's removed files are in its added
    /// files (rows of one partition may be spread over several added files).
    pub groups: Vec<RewrittenGroup>,
    /// Live rows rewritten.
    pub rows_rewritten: u64,
    /// Rows of the removed files that were deleted (and are now gone for good).
    pub rows_purged: u64,
    /// Bytes of the removed data files.
    pub bytes_read: u64,
    /// Bytes of the added data files.
    pub bytes_written: u64,
    /// Plans made (more than 1 when concurrent commits conflicted).
    pub attempts: u32,
}

/// What [`Lake::expire_snapshots`] expires.
#[derive(Clone)]
pub struct ExpireOptions {
    /// Snapshots older than this are expired (`maintenance.snapshot_age` before now).
    pub older_than: DateTime<Utc>,
    /// The most recent snapshots of each branch kept however old (`maintenance.retain_snapshots`, at least 1).
    pub retain_last: usize,
    /// Called after each deleted file.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for ExpireOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpireOptions")
            .field("older_than", &self.older_than)
            .field("retain_last", &self.retain_last)
            .finish_non_exhaustive()
    }
}

/// What [`Lake::expire_snapshots`] did.
#[derive(Debug, Clone, Default)]
pub struct ExpireOutcome {
    /// Snapshots removed from the metadata.
    pub expired_snapshots: Vec<i64>,
    /// Manifest lists deleted.
    pub deleted_manifest_lists: u64,
    /// Manifests deleted.
    pub deleted_manifests: u64,
    /// Data files deleted.
    pub deleted_data_files: u64,
    /// Delete files deleted.
    pub deleted_delete_files: u64,
    /// Bytes of the data and delete files deleted.
    pub deleted_bytes: u64,
    /// Files that could not be deleted (logged; orphan removal gets them later).
    pub failed_deletes: u64,
}

/// What [`Lake::remove_orphan_files`] removes.
#[derive(Clone)]
pub struct OrphanOptions {
    /// Only files last modified before this are removed (`maintenance.orphan_age` before
    /// now; a day is a safe default: a running writer's uncommitted files are younger).
    pub older_than: DateTime<Utc>,
    /// List the orphans without deleting them.
    pub dry_run: bool,
    /// Called after each listed and each deleted file.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for OrphanOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrphanOptions")
            .field("older_than", &self.older_than)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// What [`Lake::remove_orphan_files`] did.
#[derive(Debug, Clone, Default)]
pub struct OrphanOutcome {
    /// Files found under the table location.
    pub files_listed: u64,
    /// The orphans found (deleted unless dry run), as locations.
    pub orphans: Vec<String>,
    /// Bytes of the orphans.
    pub orphan_bytes: u64,
    /// Orphans deleted.
    pub deleted: u64,
}

/// A compaction plan made from one snapshot.
struct CompactionPlan {
    groups: Vec<(Struct, Vec<FileEntry>)>,
    removed_deletes: Vec<DataFile>,
}

/// Deletes `paths` (location, bytes) with bounded concurrency; returns (deleted, failed).
async fn delete_all(
    table: &Table,
    paths: Vec<(String, u64)>,
    phase: &'static str,
    progress: &Option<ProgressFn>,
) -> (u64, u64) {
    let total = Progress {
        phase,
        files_total: paths.len() as u64,
        bytes_total: paths.iter().map(|(_, b)| b).sum(),
        ..Progress::default()
    };
    let mut done = total.clone();
    let mut failed = 0;
    let io = table.file_io().clone();
    let mut results = futures::stream::iter(paths)
        .map(|(path, bytes)| {
            let io = io.clone();
            async move { (io.delete(&path).await.map_err(|e| (path, e)), bytes) }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((result, bytes)) = results.next().await {
        match result {
            Ok(()) => {
                done.files_done += 1;
                done.bytes_done += bytes;
            }
            Err((path, e)) => {
                failed += 1;
                tracing::warn!(table = %table.identifier(), file = %path, error = %e, "cannot delete file");
            }
        }
        report(progress, &done);
    }
    (done.files_done, failed)
}

/// Every manifest of `snapshots`, loaded once each.
async fn load_manifests(
    table: &Table,
    metadata: &TableMetadata,
    snapshot_ids: &[i64],
) -> Result<(Vec<String>, HashMap<String, Manifest>)> {
    load_manifests_of(table, metadata, snapshot_ids, false).await
}

/// [`load_manifests`] of snapshots just expired: a manifest list or manifest that is gone was
/// deleted by another process expiring the same snapshots at the same time (a CDC writer's
/// automatic maintenance beside `tarn maintain`); its files are that process's to delete, so
/// it is left out rather than failing the expiry.
async fn load_expired_manifests(
    table: &Table,
    metadata: &TableMetadata,
    snapshot_ids: &[i64],
) -> Result<(Vec<String>, HashMap<String, Manifest>)> {
    load_manifests_of(table, metadata, snapshot_ids, true).await
}

/// Whether `path` no longer exists (an error reading it aside).
async fn gone(io: &iceberg::io::FileIO, path: &str) -> bool {
    matches!(io.exists(path).await, Ok(false))
}

async fn load_manifests_of(
    table: &Table,
    metadata: &TableMetadata,
    snapshot_ids: &[i64],
    gone_ok: bool,
) -> Result<(Vec<String>, HashMap<String, Manifest>)> {
    let ident = table.identifier();
    let io = table.file_io().clone();
    let mut lists = Vec::new();
    let mut manifest_files = HashMap::new();
    for id in snapshot_ids {
        let Some(snapshot) = metadata.snapshot_by_id(*id) else {
            continue;
        };
        let list = match table.manifest_list_reader(snapshot).load().await {
            Ok(list) => list,
            Err(_) if gone_ok && gone(&io, snapshot.manifest_list()).await => continue,
            Err(e) => {
                return Err(iceberg_error(
                    format!("cannot read the manifest list of snapshot {id} of {ident}"),
                    e,
                ));
            }
        };
        lists.push(snapshot.manifest_list().to_string());
        for m in list.entries() {
            manifest_files
                .entry(m.manifest_path.clone())
                .or_insert_with(|| m.clone());
        }
    }
    let manifests: Vec<Option<(String, Manifest)>> = futures::stream::iter(manifest_files.into_values())
        .map(|m| {
            let io = io.clone();
            async move {
                match m.load_manifest(&io).await {
                    Ok(loaded) => Ok(Some((m.manifest_path, loaded))),
                    Err(_) if gone_ok && gone(&io, &m.manifest_path).await => Ok(None),
                    Err(e) => Err(iceberg_error(
                        format!("cannot read manifest {} of {ident}", m.manifest_path),
                        e,
                    )),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok((lists, manifests.into_iter().flatten().collect()))
}

/// How an attempt of [`Lake::compact`] ended.
enum Attempt {
    /// Committed, or nothing to do.
    Done(CompactionOutcome),
    /// Lost to a concurrent commit; nothing of it was committed.
    Lost(Error),
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Lake {
    /// Compacts table `ident`; see the module doc. Returns what was rewritten (nothing when
    /// the table does not need it).
    pub async fn compact(&self, ident: &TableIdent, options: &CompactOptions) -> Result<CompactionOutcome> {
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // The last attempt holds the commit lock throughout (see `commit_lock`), at the
            // priority of the writer that waits for it (see `locked_runtime`).
            let locked = options.commit_lock.is_some() && attempt >= options.max_attempts.max(1);
            let tried = match &options.locked_runtime {
                Some(runtime) if locked => {
                    let (lake, table, opts) = (self.clone(), ident.clone(), options.clone());
                    let task = runtime
                        .spawn(async move { lake.compact_once(&table, &opts, attempt, started).await });
                    // Dropped with this call (an aborted maintenance round): so is the attempt.
                    let _abort = AbortOnDrop(task.abort_handle());
                    task.await.map_err(|e| {
                        Error::new(
                            ErrorKind::Internal,
                            format!("the compaction of {ident} holding the commit lock stopped: {e}"),
                        )
                    })?
                }
                _ => self.compact_once(ident, options, attempt, started).await,
            };
            match tried? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Lost(e) => {
                    if attempt >= options.max_attempts.max(1) {
                        return Err(Error::new(
                            ErrorKind::CommitConflict,
                            format!(
                                "compaction of {ident} conflicted with other commits {attempt} times: {}",
                                e.message()
                            ),
                        )
                        .with_source(e));
                    }
                    tracing::info!(table = %ident, attempt, error = %e, "compaction conflicted with a concurrent commit; planning again");
                    // A writer committing every second (CDC) or another compactor: let its
                    // commit land before planning again, a little longer each time.
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// Attempt `attempt` of [`Lake::compact`]: plans, rewrites and commits, holding the commit
    /// lock throughout on the last attempt.
    async fn compact_once(
        &self,
        ident: &TableIdent,
        options: &CompactOptions,
        attempt: u32,
        started: std::time::Instant,
    ) -> Result<Attempt> {
        let mut held = match &options.commit_lock {
            Some(lock) if attempt >= options.max_attempts.max(1) => {
                tracing::info!(table = %ident, attempt, "compaction lost to concurrent commits; planning again holding the commit lock");
                Some(lock.clone().lock_owned().await)
            }
            _ => None,
        };
        let began = std::time::Instant::now();
        let table = self.load_table(ident).await?;
        if compaction_is_off(&table) {
            tracing::debug!(table = %ident, "compaction is off for this table ({PROPERTY_COMPACTION})");
            return Ok(Attempt::Done(CompactionOutcome {
                attempts: attempt,
                ..CompactionOutcome::default()
            }));
        }
        let Some(plan) = self.plan_compaction(&table, options).await? else {
            tracing::debug!(table = %ident, "nothing to compact");
            return Ok(Attempt::Done(CompactionOutcome {
                attempts: attempt,
                ..CompactionOutcome::default()
            }));
        };
        let mut outcome = CompactionOutcome {
            attempts: attempt,
            removed_delete_files: plan
                .removed_deletes
                .iter()
                .map(|f| f.file_path().to_string())
                .collect(),
            ..CompactionOutcome::default()
        };
        let planned_ms = began.elapsed().as_millis() as u64;
        let written = self.rewrite_groups(&table, &plan, options, &mut outcome).await;
        let rewritten_ms = began.elapsed().as_millis() as u64;
        let added = match written {
            Ok(added) => added,
            Err(e) => {
                delete_unreferenced(&table, &outcome.added_data_files).await;
                return Err(e);
            }
        };
        let records: u64 = plan
            .groups
            .iter()
            .flat_map(|(_, files)| files.iter().map(|f| f.file().record_count()))
            .sum();
        outcome.rows_purged = records.saturating_sub(outcome.rows_rewritten);
        let removed_data: Vec<DataFile> = plan
            .groups
            .iter()
            .flat_map(|(_, files)| files.iter().map(|f| f.file().clone()))
            .collect();
        let rewrite = Rewrite {
            removed_data_files: removed_data,
            removed_delete_files: plan.removed_deletes.clone(),
            added_data_files: added,
            summary: HashMap::from([("tarn.maintenance".to_string(), "compact".to_string())]),
        };
        let commit_lock = match (held.take(), &options.commit_lock) {
            (Some(guard), _) => Some(guard),
            (None, Some(lock)) => Some(lock.clone().lock_owned().await),
            (None, None) => None,
        };
        match self.commit_rewrite(&table, rewrite).await {
            Ok(committed) => {
                outcome.snapshot_id = committed.metadata().current_snapshot_id();
                if let Some(hook) = &options.on_commit {
                    hook(&committed, &outcome);
                }
                drop(commit_lock);
                let table_label = ident.to_string();
                metrics::counter!("tarn_maintenance_compactions_total", "table" => table_label.clone())
                    .increment(1);
                metrics::counter!("tarn_maintenance_files_rewritten_total", "table" => table_label.clone())
                    .increment(outcome.removed_data_files.len() as u64);
                metrics::counter!("tarn_maintenance_delete_files_removed_total", "table" => table_label.clone())
                    .increment(outcome.removed_delete_files.len() as u64);
                metrics::counter!("tarn_maintenance_bytes_rewritten_total", "table" => table_label)
                    .increment(outcome.bytes_read);
                tracing::info!(
                    table = %ident,
                    snapshot_id = ?outcome.snapshot_id,
                    removed_data_files = outcome.removed_data_files.len(),
                    removed_delete_files = outcome.removed_delete_files.len(),
                    added_data_files = outcome.added_data_files.len(),
                    rows = outcome.rows_rewritten,
                    rows_purged = outcome.rows_purged,
                    bytes_read = outcome.bytes_read,
                    bytes_written = outcome.bytes_written,
                    attempts = attempt,
                    // The last attempt's phases, from its start: planned, rewritten, committed.
                    planned_ms,
                    rewritten_ms,
                    committed_ms = began.elapsed().as_millis() as u64,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compacted"
                );
                Ok(Attempt::Done(outcome))
            }
            Err(e) if e.kind() == ErrorKind::CommitConflict => {
                drop(commit_lock);
                // The rewrite was not committed: its files are garbage.
                delete_unreferenced(&table, &outcome.added_data_files).await;
                metrics::counter!("tarn_maintenance_conflicts_total", "table" => ident.to_string(), "op" => "compact")
                    .increment(1);
                Ok(Attempt::Lost(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Picks the files to rewrite and the delete files that become unnecessary.
    async fn plan_compaction(
        &self,
        table: &Table,
        options: &CompactOptions,
    ) -> Result<Option<CompactionPlan>> {
        let files = SnapshotFiles::current(table).await?;
        if files.data.is_empty() && files.deletes.is_empty() {
            return Ok(None);
        }
        // Deleted rows per data file, and the data files each position delete file points at.
        let mut deleted_rows: HashMap<String, u64> = HashMap::new();
        let mut delete_targets: HashMap<String, HashSet<String>> = HashMap::new();
        for delete in files
            .deletes
            .iter()
            .filter(|d| d.content() == DataContentType::PositionDeletes)
        {
            let mut targets = HashSet::new();
            if let Some(single) = single_referenced_file(delete.file()) {
                *deleted_rows.entry(single.clone()).or_default() += delete.file().record_count();
                targets.insert(single);
            } else {
                for_each_position_delete(self.stores(), delete.file(), |path, _| {
                    if let Some(n) = deleted_rows.get_mut(path) {
                        *n += 1;
                    } else {
                        deleted_rows.insert(path.to_string(), 1);
                    }
                    if !targets.contains(path) {
                        targets.insert(path.to_string());
                    }
                })
                .await?;
            }
            delete_targets.insert(delete.path().to_string(), targets);
        }

        struct Candidate<'a> {
            entry: &'a FileEntry,
            small: bool,
            heavy: bool,
            has_deletes: bool,
        }
        let mut by_partition: HashMap<(i32, Struct), Vec<Candidate<'_>>> = HashMap::new();
        for data in &files.data {
            let applicable = files.deletes_for(data);
            let has_equality = applicable
                .iter()
                .any(|d| d.content() == DataContentType::EqualityDeletes);
            let records = data.file().record_count();
            let deleted = deleted_rows.get(data.path()).copied().unwrap_or(0).min(records);
            let ratio = if records == 0 {
                1.0
            } else {
                deleted as f64 / records as f64
            };
            let small = data.file().file_size_in_bytes() < options.small_file_threshold;
            let heavy = has_equality
                || (deleted > 0 && ratio >= options.delete_ratio_threshold)
                || deleted == records;
            if small || heavy {
                by_partition
                    .entry((data.spec_id, data.file().partition().clone()))
                    .or_default()
                    .push(Candidate {
                        entry: data,
                        small,
                        heavy,
                        has_deletes: deleted > 0 || has_equality,
                    });
            }
        }
        let mut small_count = 0usize;
        let mut any_heavy = false;
        let mut groups = Vec::new();
        for ((_, partition), candidates) in by_partition {
            // One file alone without deletes gains nothing from a rewrite.
            if candidates.len() == 1 && !candidates[0].has_deletes {
                continue;
            }
            small_count += candidates.iter().filter(|c| c.small).count();
            any_heavy |= candidates.iter().any(|c| c.heavy);
            groups.push((
                partition,
                candidates.iter().map(|c| c.entry.clone()).collect::<Vec<_>>(),
            ));
        }
        if !(any_heavy || (small_count > 0 && small_count >= options.min_input_files)) {
            groups.clear();
        }
        let removed: HashSet<&str> = groups
            .iter()
            .flat_map(|(_, f)| f.iter().map(FileEntry::path))
            .collect();
        // Delete files still needed by a data file that stays.
        let mut needed: HashSet<&str> = HashSet::new();
        for data in files.data.iter().filter(|d| !removed.contains(d.path())) {
            for delete in files.deletes_for(data) {
                let exact = delete_targets.get(delete.path());
                if exact.is_none_or(|targets| targets.contains(data.path())) {
                    needed.insert(delete.path());
                }
            }
        }
        let removed_deletes: Vec<DataFile> = files
            .deletes
            .iter()
            .filter(|d| !needed.contains(d.path()))
            .map(|d| d.file().clone())
            .collect();
        if groups.is_empty() && removed_deletes.is_empty() {
            return Ok(None);
        }
        groups.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        Ok(Some(CompactionPlan {
            groups,
            removed_deletes,
        }))
    }

    /// Rewrites the live rows of every group of `plan`; fills the outcome's file lists.
    async fn rewrite_groups(
        &self,
        table: &Table,
        plan: &CompactionPlan,
        options: &CompactOptions,
        outcome: &mut CompactionOutcome,
    ) -> Result<Vec<DataFile>> {
        let columns = crate::column_names(table);
        let target = options
            .target_file_size
            .unwrap_or_else(|| table_target_file_size(table));
        let mut progress = Progress {
            phase: "compact",
            files_total: plan.groups.iter().map(|(_, f)| f.len() as u64).sum(),
            bytes_total: plan
                .groups
                .iter()
                .flat_map(|(_, f)| f.iter().map(|e| e.file().file_size_in_bytes()))
                .sum(),
            ..Progress::default()
        };
        report(&options.progress, &progress);
        let mut added_all = Vec::new();
        for (partition, files) in &plan.groups {
            let sizes: HashMap<&str, u64> = files
                .iter()
                .map(|f| (f.path(), f.file().file_size_in_bytes()))
                .collect();
            let wanted: HashSet<String> = files.iter().map(|f| f.path().to_string()).collect();
            let mut rows = self.scan_live_rows(table, &columns, Some(&wanted)).await?;
            let mut writer =
                PositionedDataWriter::with_target_file_size(table, &options.file_prefix, target)?;
            let (mut files_counted, mut bytes_counted) = (0u64, 0u64);
            let mut last: Option<Arc<str>> = None;
            while let Some(live) = rows.try_next().await? {
                if last.as_deref() != Some(&*live.data_file)
                    && let Some(previous) = last.replace(live.data_file.clone())
                {
                    let bytes = sizes.get(&*previous).copied().unwrap_or(0);
                    files_counted += 1;
                    bytes_counted += bytes;
                    progress.files_done += 1;
                    progress.bytes_done += bytes;
                    report(&options.progress, &progress);
                }
                let batch = live
                    .batch
                    .project(&(0..columns.len()).collect::<Vec<_>>())
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Internal,
                            format!("cannot project rows of {}", live.data_file),
                        )
                        .with_source(e)
                    })?;
                outcome.rows_rewritten += batch.num_rows() as u64;
                writer.write(batch).await?;
            }
            let added = writer.close().await?;
            // The rest of the group, including files whose rows were all deleted.
            let group_bytes: u64 = sizes.values().sum();
            progress.files_done += files.len() as u64 - files_counted;
            progress.bytes_done += group_bytes - bytes_counted;
            report(&options.progress, &progress);
            outcome.bytes_read += group_bytes;
            outcome.bytes_written += added.iter().map(DataFile::file_size_in_bytes).sum::<u64>();
            outcome
                .removed_data_files
                .extend(files.iter().map(|f| f.path().to_string()));
            outcome.groups.push(RewrittenGroup {
                partition: partition.clone(),
                removed: files.iter().map(|f| f.path().to_string()).collect(),
                added: added.iter().map(|f| f.file_path().to_string()).collect(),
            });
            outcome.added_data_files.extend(added.iter().cloned());
            added_all.extend(added);
        }
        Ok(added_all)
    }

    /// Expires old snapshots of `ident` and deletes the files only they reached; see the
    /// module doc.
    pub async fn expire_snapshots(
        &self,
        ident: &TableIdent,
        options: &ExpireOptions,
    ) -> Result<ExpireOutcome> {
        let before = self.load_table(ident).await?;
        let cutoff = options.older_than.timestamp_millis();
        let retain_last = options.retain_last.max(1);
        // Cheap pre-check: nothing old enough beyond the retained tail means no commit at all.
        let mut recent: HashSet<i64> = HashSet::new();
        let mut next = before.metadata().current_snapshot_id();
        while let Some(id) = next {
            if recent.len() >= retain_last {
                break;
            }
            recent.insert(id);
            next = before
                .metadata()
                .snapshot_by_id(id)
                .and_then(|s| s.parent_snapshot_id());
        }
        let any_old = before
            .metadata()
            .snapshots()
            .any(|s| s.timestamp_ms() < cutoff && !recent.contains(&s.snapshot_id()));
        if !any_old {
            return Ok(ExpireOutcome::default());
        }
        let tx = Transaction::new(&before);
        let action = tx
            .expire_snapshots()
            .expire_older_than_ms(cutoff)
            .retain_last(retain_last);
        let tx = action
            .apply(tx)
            .map_err(|e| iceberg_error(format!("cannot expire snapshots of {ident}"), e))?;
        let after = tx
            .commit(self.catalog().as_ref())
            .await
            .map_err(|e| iceberg_error(format!("cannot expire snapshots of {ident}"), e))?;
        let kept: HashSet<i64> = after.metadata().snapshots().map(|s| s.snapshot_id()).collect();
        let expired: Vec<i64> = before
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .filter(|id| !kept.contains(id))
            .collect();
        let mut outcome = ExpireOutcome {
            expired_snapshots: expired.clone(),
            ..ExpireOutcome::default()
        };
        if expired.is_empty() {
            return Ok(outcome);
        }
        // Everything the remaining snapshots reach stays.
        let kept_ids: Vec<i64> = kept.iter().copied().collect();
        let (kept_lists, kept_manifests) = load_manifests(&after, after.metadata(), &kept_ids).await?;
        let mut reachable: HashSet<&str> = kept_lists.iter().map(String::as_str).collect();
        for (path, manifest) in &kept_manifests {
            reachable.insert(path.as_str());
            // A file a kept snapshot lists as deleted is history, not content: it stays only
            // if some kept snapshot still has it live.
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                reachable.insert(entry.file_path());
            }
        }
        for s in after.metadata().statistics_iter() {
            reachable.insert(s.statistics_path.as_str());
        }
        for s in after.metadata().partition_statistics_iter() {
            reachable.insert(s.statistics_path.as_str());
        }
        // What the expired snapshots reached, minus that.
        let (expired_lists, expired_manifests) =
            load_expired_manifests(&before, before.metadata(), &expired).await?;
        let mut doomed: Vec<(String, u64)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for list in expired_lists {
            if !reachable.contains(list.as_str()) && seen.insert(list.clone()) {
                outcome.deleted_manifest_lists += 1;
                doomed.push((list, 0));
            }
        }
        for (path, manifest) in &expired_manifests {
            if reachable.contains(path.as_str()) {
                continue;
            }
            for entry in manifest.entries() {
                let file = entry.file_path();
                if !reachable.contains(file) && seen.insert(file.to_string()) {
                    let size = entry.file_size_in_bytes();
                    outcome.deleted_bytes += size;
                    if entry.content_type() == DataContentType::Data {
                        outcome.deleted_data_files += 1;
                    } else {
                        outcome.deleted_delete_files += 1;
                    }
                    doomed.push((file.to_string(), size));
                }
            }
            if seen.insert(path.clone()) {
                outcome.deleted_manifests += 1;
                doomed.push((path.clone(), 0));
            }
        }
        for id in &expired {
            for s in before
                .metadata()
                .statistics_iter()
                .filter(|s| s.snapshot_id == *id)
            {
                if !reachable.contains(s.statistics_path.as_str()) && seen.insert(s.statistics_path.clone()) {
                    doomed.push((s.statistics_path.clone(), 0));
                }
            }
        }
        let (_, failed) = delete_all(&after, doomed, "expire", &options.progress).await;
        outcome.failed_deletes = failed;
        let label = ident.to_string();
        metrics::counter!("tarn_maintenance_snapshots_expired_total", "table" => label.clone())
            .increment(outcome.expired_snapshots.len() as u64);
        metrics::counter!("tarn_maintenance_files_deleted_total", "table" => label.clone(), "op" => "expire")
            .increment(
                outcome.deleted_manifest_lists
                    + outcome.deleted_manifests
                    + outcome.deleted_data_files
                    + outcome.deleted_delete_files
                    - failed,
            );
        metrics::counter!("tarn_maintenance_bytes_deleted_total", "table" => label, "op" => "expire")
            .increment(outcome.deleted_bytes);
        tracing::info!(
            table = %ident,
            expired = outcome.expired_snapshots.len(),
            manifest_lists = outcome.deleted_manifest_lists,
            manifests = outcome.deleted_manifests,
            data_files = outcome.deleted_data_files,
            delete_files = outcome.deleted_delete_files,
            bytes = outcome.deleted_bytes,
            failed,
            "expired snapshots"
        );
        Ok(outcome)
    }

    /// Deletes files under the location of `ident` that its metadata does not reach and that
    /// are older than `options.older_than`; see the module doc.
    pub async fn remove_orphan_files(
        &self,
        ident: &TableIdent,
        options: &OrphanOptions,
    ) -> Result<OrphanOutcome> {
        let table = self.load_table(ident).await?;
        let location = table.metadata().location().to_string();
        let root = self
            .stores()
            .resolve(&location)
            .map_err(|e| iceberg_error(format!("cannot resolve the location of {ident}"), e))?;
        let mut reachable = self.reachable_paths(&table).await?;
        let mut progress = Progress {
            phase: "list",
            ..Progress::default()
        };
        let mut outcome = OrphanOutcome::default();
        let mut candidates: Vec<(String, u64)> = Vec::new();
        let mut listing = root.store.list(Some(&root.path));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("cannot list the files of {ident} under {location}"),
                )
                .with_source(e)
            })?;
            outcome.files_listed += 1;
            progress.files_done += 1;
            progress.bytes_done += meta.size;
            report(&options.progress, &progress);
            let key = meta.location.to_string();
            if meta.last_modified < options.older_than && !reachable.contains(&key) {
                candidates.push((key, meta.size));
            }
        }
        drop(listing);
        // A commit may have landed while listing: whatever it reaches stays too.
        let latest = self.load_table(ident).await?;
        if latest.metadata_location() != table.metadata_location() {
            reachable.extend(self.reachable_paths(&latest).await?);
            candidates.retain(|(key, _)| !reachable.contains(key));
        }
        // Locations in the form the table's file IO takes.
        let base = &root.base_url;
        let sep = if base.ends_with('/') { "" } else { "/" };
        let orphans: Vec<(String, u64)> = candidates
            .into_iter()
            .map(|(key, size)| (format!("{base}{sep}{key}"), size))
            .collect();
        outcome.orphan_bytes = orphans.iter().map(|(_, s)| s).sum();
        outcome.orphans = orphans.iter().map(|(p, _)| p.clone()).collect();
        if !options.dry_run && !orphans.is_empty() {
            let (deleted, _failed) = delete_all(&latest, orphans, "delete", &options.progress).await;
            outcome.deleted = deleted;
        }
        let label = ident.to_string();
        metrics::counter!("tarn_maintenance_files_deleted_total", "table" => label.clone(), "op" => "orphans")
            .increment(outcome.deleted);
        if !options.dry_run {
            metrics::counter!("tarn_maintenance_bytes_deleted_total", "table" => label, "op" => "orphans")
                .increment(outcome.orphan_bytes);
        }
        tracing::info!(
            table = %ident,
            listed = outcome.files_listed,
            orphans = outcome.orphans.len(),
            bytes = outcome.orphan_bytes,
            deleted = outcome.deleted,
            dry_run = options.dry_run,
            "orphan files"
        );
        Ok(outcome)
    }

    /// Store keys of every file `table`'s metadata reaches: metadata files (current and
    /// logged), manifest lists, manifests, data and delete files of all snapshots, statistics.
    async fn reachable_paths(&self, table: &Table) -> Result<HashSet<String>> {
        let metadata = table.metadata();
        let mut locations: Vec<String> = Vec::new();
        if let Some(current) = table.metadata_location() {
            locations.push(current.to_string());
        }
        locations.extend(metadata.metadata_log().iter().map(|m| m.metadata_file.clone()));
        locations.extend(metadata.statistics_iter().map(|s| s.statistics_path.clone()));
        locations.extend(
            metadata
                .partition_statistics_iter()
                .map(|s| s.statistics_path.clone()),
        );
        let ids: Vec<i64> = metadata.snapshots().map(|s| s.snapshot_id()).collect();
        let (lists, manifests) = load_manifests(table, metadata, &ids).await?;
        locations.extend(lists);
        let mut keys = HashSet::new();
        let mut add = |location: &str| {
            if let Ok(resolved) = self.stores().resolve(location) {
                keys.insert(resolved.path.to_string());
            }
        };
        for location in &locations {
            add(location);
        }
        for (path, manifest) in &manifests {
            add(path);
            for entry in manifest.entries() {
                add(entry.file_path());
            }
        }
        Ok(keys)
    }
}

/// Deletes data files written for a rewrite that was not committed.
async fn delete_unreferenced(table: &Table, files: &[DataFile]) {
    for file in files {
        if let Err(e) = table.file_io().delete(file.file_path()).await {
            tracing::warn!(table = %table.identifier(), file = %file.file_path(), error = %e, "cannot delete an uncommitted file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::RowDelta;
    use crate::testing::{
        Index, TestLake, delete, deletes_for, iceberg_rows, ident, insert, kv_batch, live_rows, python_rows,
    };
    use crate::testing_eq::equality_delete_file;

    fn local(location: &str) -> PathBuf {
        PathBuf::from(location.trim_start_matches("file://"))
    }

    fn all_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out
    }

    /// Callers spawn these futures: they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(lake: &Lake, table: &Table, ident: &TableIdent, writer: &mut PositionedDataWriter) {
        fn send<T: Send>(_: T) {}
        send(lake.compact(ident, &CompactOptions::default()));
        let expire = ExpireOptions {
            older_than: Utc::now(),
            retain_last: 1,
            progress: None,
        };
        send(lake.expire_snapshots(ident, &expire));
        let orphans = OrphanOptions {
            older_than: Utc::now(),
            dry_run: true,
            progress: None,
        };
        send(lake.remove_orphan_files(ident, &orphans));
        send(lake.commit_row_delta(table, RowDelta::default()));
        send(lake.commit_rewrite(table, Rewrite::default()));
        send(lake.evolve_schema(
            table,
            table.metadata().current_schema().as_ref().clone(),
            HashMap::new(),
        ));
        send(lake.set_properties(ident, HashMap::new()));
        send(lake.scan_live_rows(table, &[], None));
        send(lake.read_rows_at(table, "", &[], &[]));
        send(crate::write_position_deletes(table, "", Vec::new()));
        send(writer.write(kv_batch(&[])));
    }

    fn options() -> CompactOptions {
        CompactOptions {
            min_input_files: 2,
            ..CompactOptions::default()
        }
    }

    /// Ten small files of ten rows each (ids 0..100), some rows deleted, one updated.
    async fn busy_table(t: &TestLake, name: &str, partition: &[&str]) -> (Table, Index) {
        let mut table = t.create(name, partition).await;
        let mut index = Index::new();
        for f in 0..10i64 {
            let rows: Vec<(i64, String, &str)> = (f * 10..f * 10 + 10)
                .map(|i| (i, format!("n{i}"), if i % 3 == 0 { "eu" } else { "us" }))
                .collect();
            let refs: Vec<(i64, &str, &str)> = rows.iter().map(|(i, n, r)| (*i, n.as_str(), *r)).collect();
            let (next, more) = insert(&t.lake, &table, vec![kv_batch(&refs)]).await;
            table = next;
            index.extend(more);
        }
        let table = delete(
            &t.lake,
            &table,
            &index,
            &[1, 2, 3, 11, 50, 51, 52, 53, 54, 55, 56, 57, 99],
        )
        .await;
        // An update of 20 and an equality delete of 30 (a key the index could not place).
        let (deletes, referenced) = deletes_for(&table, &index, &[20]).await;
        let (data, new_index) = crate::testing::write(&table, vec![kv_batch(&[(20, "n20-new", "eu")])]).await;
        let mut delete_files = deletes;
        // Row 30 is in partition region=eu of a partitioned table.
        let partition = if partition.is_empty() {
            Struct::empty()
        } else {
            Struct::from_iter([Some(iceberg::spec::Literal::string("eu"))])
        };
        delete_files.push(equality_delete_file(&table, &[30], partition).await);
        let table = t
            .lake
            .commit_row_delta(
                &table,
                RowDelta {
                    data_files: data,
                    delete_files,
                    referenced_data_files: referenced,
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap();
        index.extend(new_index);
        (table, index)
    }

    #[tokio::test]
    async fn compaction_keeps_rows_exactly_and_drops_spent_deletes() {
        let t = TestLake::new().await;
        for (name, partition) in [("c", vec![]), ("cp", vec!["region"])] {
            let (before, _) = busy_table(&t, name, &partition).await;
            let rows_before = iceberg_rows(&before).await;
            assert_eq!(rows_before.len(), 100 - 13 - 1);
            assert_eq!(live_rows(&t.lake, &before).await, rows_before);
            let calls = Arc::new(Mutex::new(Vec::new()));
            let seen = calls.clone();
            let progress: ProgressFn = Arc::new(move |p: &Progress| seen.lock().unwrap().push(p.clone()));
            let outcome = t
                .lake
                .compact(
                    &ident(name),
                    &CompactOptions {
                        progress: Some(progress),
                        ..options()
                    },
                )
                .await
                .unwrap();
            let after = t.lake.load_table(&ident(name)).await.unwrap();
            assert_eq!(outcome.snapshot_id, after.metadata().current_snapshot_id());
            assert_eq!(iceberg_rows(&after).await, rows_before, "{name}");
            assert_eq!(live_rows(&t.lake, &after).await, rows_before, "{name}");
            let files = SnapshotFiles::current(&after).await.unwrap();
            let groups = if partition.is_empty() { 1 } else { 2 };
            assert_eq!(files.data.len(), groups, "{name}: one file per partition");
            assert!(
                files.deletes.is_empty(),
                "{name}: every delete file applied only to rewritten files"
            );
            // Partitioned, each batch of ten rows made two files.
            let (data_files, delete_files) = if partition.is_empty() { (11, 3) } else { (21, 4) };
            assert_eq!(outcome.removed_data_files.len(), data_files);
            assert_eq!(outcome.removed_delete_files.len(), delete_files);
            assert_eq!(outcome.groups.len(), groups);
            assert_eq!(outcome.rows_rewritten, rows_before.len() as u64);
            assert_eq!(outcome.rows_purged, 101 - rows_before.len() as u64);
            assert_eq!(outcome.attempts, 1);
            let added: HashSet<&str> = outcome.added_data_files.iter().map(|f| f.file_path()).collect();
            assert_eq!(
                files.data.iter().map(FileEntry::path).collect::<HashSet<_>>(),
                added
            );
            let summary = after.metadata().current_snapshot().unwrap().summary();
            assert_eq!(summary.operation.as_str(), "replace");
            assert_eq!(
                summary.additional_properties["total-records"],
                rows_before.len().to_string()
            );
            assert_eq!(summary.additional_properties["total-delete-files"], "0");
            assert_eq!(summary.additional_properties["tarn.maintenance"], "compact");
            let last = calls.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                (last.files_done, last.files_total),
                (data_files as u64, data_files as u64)
            );
            assert_eq!(last.bytes_done, outcome.bytes_read);
            // The manifests were merged: the new files, and what the rewrite removed.
            let list = after
                .manifest_list_reader(after.metadata().current_snapshot().unwrap())
                .load()
                .await
                .unwrap();
            assert_eq!(list.entries().len(), 3, "{name}: {:?}", list.entries());
            let py = t.python_read(name);
            assert_eq!(python_rows(&py["pyiceberg"]), rows_before, "{py}");
            assert_eq!(python_rows(&py["duckdb"]), rows_before, "{py}");
            // Nothing left to do.
            let again = t.lake.compact(&ident(name), &options()).await.unwrap();
            assert_eq!(again.snapshot_id, None);
            // The next commit leaves the manifests of removed files behind.
            let (next, _) = insert(&t.lake, &after, vec![kv_batch(&[(1000, "x", "eu")])]).await;
            let list = next
                .manifest_list_reader(next.metadata().current_snapshot().unwrap())
                .load()
                .await
                .unwrap();
            assert_eq!(list.entries().len(), 2, "{name}: {:?}", list.entries());
        }
    }

    #[tokio::test]
    async fn few_small_files_without_deletes_are_left_alone() {
        let t = TestLake::new().await;
        let table = t.create("few", &[]).await;
        let (table, _) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu")])]).await;
        let (_, _) = insert(&t.lake, &table, vec![kv_batch(&[(2, "b", "eu")])]).await;
        let outcome = t
            .lake
            .compact(
                &ident("few"),
                &CompactOptions {
                    min_input_files: 3,
                    ..CompactOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome.snapshot_id, None);
        assert!(outcome.removed_data_files.is_empty());
    }

    #[tokio::test]
    async fn a_table_with_compaction_off_is_left_alone() {
        let t = TestLake::new().await;
        let (_, _) = busy_table(&t, "off", &[]).await;
        let off = HashMap::from([(PROPERTY_COMPACTION.to_string(), "off".to_string())]);
        let before = t.lake.set_properties(&ident("off"), off).await.unwrap();
        let outcome = t.lake.compact(&ident("off"), &options()).await.unwrap();
        assert_eq!(outcome.snapshot_id, None);
        assert!(outcome.removed_data_files.is_empty());
        let after = t.lake.load_table(&ident("off")).await.unwrap();
        assert_eq!(after.metadata_location(), before.metadata_location());
        // Turned back on, the same table is compacted.
        let on = HashMap::from([(PROPERTY_COMPACTION.to_string(), "on".to_string())]);
        t.lake.set_properties(&ident("off"), on).await.unwrap();
        let outcome = t.lake.compact(&ident("off"), &options()).await.unwrap();
        assert!(outcome.snapshot_id.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_replans_after_a_concurrent_delete() {
        let t = TestLake::new().await;
        let (table, index) = busy_table(&t, "race", &[]).await;
        let writer = t.other_writer().await;
        // Hold the compaction after it planned and started reading, until a delete committed.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let started = Mutex::new(Some(started_tx));
        let go = Mutex::new(Some(go_rx));
        let progress: ProgressFn = Arc::new(move |_p: &Progress| {
            if let Some(tx) = started.lock().unwrap().take() {
                tx.send(()).unwrap();
                let rx = go.lock().unwrap().take().unwrap();
                rx.recv_timeout(Duration::from_secs(60)).unwrap();
            }
        });
        let lake = t.lake.clone();
        let compaction = tokio::spawn(async move {
            lake.compact(
                &ident("race"),
                &CompactOptions {
                    progress: Some(progress),
                    ..options()
                },
            )
            .await
        });
        started_rx.await.unwrap();
        let deleted = delete(&writer, &table, &index, &[4, 5]).await;
        let expected = iceberg_rows(&deleted).await;
        go_tx.send(()).unwrap();
        let outcome = compaction.await.unwrap().unwrap();
        assert_eq!(outcome.attempts, 2, "the first plan conflicted with the delete");
        let after = t.lake.load_table(&ident("race")).await.unwrap();
        assert_eq!(iceberg_rows(&after).await, expected);
        assert!(
            !expected
                .iter()
                .any(|r| r.starts_with("4|") || r.starts_with("5|"))
        );
        // The rewrite of the lost attempt left no files behind.
        let referenced = t.lake.reachable_paths(&after).await.unwrap();
        let data_dir = local(&format!("{}/data", after.metadata().location()));
        for file in all_files(&data_dir) {
            let key = file.to_string_lossy().trim_start_matches('/').to_string();
            assert!(referenced.contains(&key), "unreferenced file {key}");
        }
    }

    /// The last attempt holds the commit lock from planning to commit: started while a
    /// writer holds the lock and commits a delete of rows in the files to rewrite, a
    /// one-attempt compaction plans after that commit instead of losing to it. That attempt
    /// runs on `locked_runtime` (the writer's), not on the runtime that called `compact`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_attempt_holds_the_commit_lock_and_cannot_lose_to_its_holder() {
        let t = TestLake::new().await;
        let (table, index) = busy_table(&t, "locked", &[]).await;
        let writer = t.other_writer().await;
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let held = lock.clone().lock_owned().await;
        let handed = Arc::new(Mutex::new(None));
        let hook: CommitHook = {
            let handed = handed.clone();
            Arc::new(move |table: &Table, outcome: &CompactionOutcome| {
                let thread = std::thread::current().name().map(str::to_string);
                *handed.lock().unwrap() = Some((
                    table.metadata().current_snapshot_id(),
                    outcome.snapshot_id,
                    thread,
                ));
            })
        };
        let writers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-writers")
            .enable_all()
            .build()
            .unwrap();
        let lake = t.lake.clone();
        let locked_runtime = Some(writers.handle().clone());
        let compaction = tokio::spawn(async move {
            lake.compact(
                &ident("locked"),
                &CompactOptions {
                    max_attempts: 1,
                    commit_lock: Some(lock),
                    locked_runtime,
                    on_commit: Some(hook),
                    ..options()
                },
            )
            .await
        });
        let deleted = delete(&writer, &table, &index, &[4, 5]).await;
        let expected = iceberg_rows(&deleted).await;
        drop(held);
        let outcome = compaction.await.unwrap().unwrap();
        assert_eq!(outcome.attempts, 1);
        let after = t.lake.load_table(&ident("locked")).await.unwrap();
        let snapshot = after.metadata().current_snapshot().unwrap();
        assert_eq!(Some(snapshot.snapshot_id()), outcome.snapshot_id);
        assert_eq!(
            snapshot.parent_snapshot_id(),
            deleted.metadata().current_snapshot_id(),
            "planned on the delete"
        );
        assert_eq!(iceberg_rows(&after).await, expected);
        // The hook ran with the committed table, on the writers' runtime.
        assert_eq!(
            *handed.lock().unwrap(),
            Some((
                outcome.snapshot_id,
                outcome.snapshot_id,
                Some("the-writers".to_string())
            ))
        );
        writers.shutdown_background();
    }

    #[tokio::test]
    async fn expiry_deletes_only_unreachable_files() {
        let t = TestLake::new().await;
        let (_, _) = busy_table(&t, "ex", &[]).await;
        t.lake.compact(&ident("ex"), &options()).await.unwrap();
        let before = t.lake.load_table(&ident("ex")).await.unwrap();
        let rows = iceberg_rows(&before).await;
        let snapshots = before.metadata().snapshots().count();
        assert_eq!(snapshots, 13);
        let old_files: Vec<PathBuf> = t
            .lake
            .reachable_paths(&before)
            .await
            .unwrap()
            .into_iter()
            .map(|k| PathBuf::from(format!("/{k}")))
            .collect();
        let outcome = t
            .lake
            .expire_snapshots(
                &ident("ex"),
                &ExpireOptions {
                    older_than: Utc::now() + chrono::Duration::seconds(1),
                    retain_last: 2,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome.expired_snapshots.len(), snapshots - 2);
        let after = t.lake.load_table(&ident("ex")).await.unwrap();
        assert_eq!(after.metadata().snapshots().count(), 2);
        assert_eq!(iceberg_rows(&after).await, rows);
        assert_eq!(live_rows(&t.lake, &after).await, rows);
        // The compaction removed 11 data files and 3 delete files; the second-last snapshot,
        // kept, still reaches them, so nothing of theirs is gone yet.
        assert_eq!(outcome.deleted_data_files, 0);
        assert!(outcome.deleted_manifest_lists as usize == snapshots - 2);
        assert_eq!(outcome.failed_deletes, 0);
        // Keep only the current snapshot: the rewritten files go now.
        let outcome = t
            .lake
            .expire_snapshots(
                &ident("ex"),
                &ExpireOptions {
                    older_than: Utc::now() + chrono::Duration::seconds(1),
                    retain_last: 1,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome.expired_snapshots.len(), 1);
        assert_eq!(outcome.deleted_data_files, 11);
        assert_eq!(outcome.deleted_delete_files, 3);
        let after = t.lake.load_table(&ident("ex")).await.unwrap();
        assert_eq!(iceberg_rows(&after).await, rows);
        // Every file a remaining snapshot reads is there; the others are gone.
        let mut live: HashSet<String> = HashSet::new();
        for snapshot in after.metadata().snapshots() {
            let files = SnapshotFiles::load(&after, snapshot).await.unwrap();
            live.extend(
                files
                    .data
                    .iter()
                    .chain(&files.deletes)
                    .map(|f| f.path().to_string()),
            );
        }
        let metadata_files = t.lake.reachable_paths(&after).await.unwrap();
        for file in old_files {
            let key = file.to_string_lossy().trim_start_matches('/').to_string();
            let location = format!("file://{}", file.display());
            let expected = if key.contains("/data/") {
                live.contains(&location)
            } else {
                metadata_files.contains(&key) || key.ends_with(".metadata.json")
            };
            assert_eq!(file.exists(), expected, "{key}");
        }
        for path in &live {
            assert!(local(path).exists(), "live file {path} was deleted");
        }
        let py = t.python_read("ex");
        assert_eq!(python_rows(&py["pyiceberg"]), rows);
        // Nothing old is left: no commit.
        let location = after.metadata_location().map(str::to_string);
        let outcome = t
            .lake
            .expire_snapshots(
                &ident("ex"),
                &ExpireOptions {
                    older_than: Utc::now() + chrono::Duration::seconds(1),
                    retain_last: 1,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert!(outcome.expired_snapshots.is_empty());
        let now = t.lake.load_table(&ident("ex")).await.unwrap();
        assert_eq!(now.metadata_location().map(str::to_string), location);
    }

    #[tokio::test]
    async fn orphan_removal_spares_referenced_and_young_files() {
        let t = TestLake::new().await;
        let (table, _) = busy_table(&t, "orph", &["region"]).await;
        let rows = iceberg_rows(&table).await;
        let root = local(table.metadata().location());
        let junk_data = root.join("data/region=eu/junk.parquet");
        let junk_meta = root.join("metadata/junk-m0.avro");
        let young = root.join("data/young.parquet");
        for f in [&junk_data, &junk_meta, &young] {
            std::fs::write(f, b"junk").unwrap();
        }
        // Everything, referenced files included, is two days old except `young`.
        let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        for f in all_files(&root) {
            if f != young {
                std::fs::File::options()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let day_ago = Utc::now() - chrono::Duration::days(1);
        let dry = t
            .lake
            .remove_orphan_files(
                &ident("orph"),
                &OrphanOptions {
                    older_than: day_ago,
                    dry_run: true,
                    progress: None,
                },
            )
            .await
            .unwrap();
        let mut orphans = dry.orphans.clone();
        orphans.sort();
        let expect = |p: &Path| format!("file://{}", p.display());
        assert_eq!(orphans, {
            let mut v = vec![expect(&junk_data), expect(&junk_meta)];
            v.sort();
            v
        });
        assert_eq!(dry.deleted, 0);
        assert!(junk_data.exists());
        assert_eq!(dry.files_listed as usize, all_files(&root).len());
        let real = t
            .lake
            .remove_orphan_files(
                &ident("orph"),
                &OrphanOptions {
                    older_than: day_ago,
                    dry_run: false,
                    progress: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(real.deleted, 2);
        assert!(!junk_data.exists() && !junk_meta.exists());
        assert!(
            young.exists(),
            "young files may belong to a writer about to commit"
        );
        let table = t.lake.load_table(&ident("orph")).await.unwrap();
        assert_eq!(iceberg_rows(&table).await, rows);
        assert_eq!(live_rows(&t.lake, &table).await, rows);
    }
}

#[cfg(test)]
mod measure {
    use std::time::Instant;

    use super::*;
    use crate::testing::{Index, TestLake, delete, ident, insert, kv_batch};

    /// Throughput of writing, deleting, scanning and compacting; run with
    /// `cargo test -p tarn-lake --release -- --ignored measure --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn measure_cdc_like_table() {
        let t = TestLake::new().await;
        let mut table = t.create("m", &[]).await;
        let mut index = Index::new();
        let (files, rows_per_file) = (100i64, 10_000i64);
        let started = Instant::now();
        for f in 0..files {
            let rows: Vec<(i64, String)> = (f * rows_per_file..(f + 1) * rows_per_file)
                .map(|i| (i, format!("name-{i:08}")))
                .collect();
            let refs: Vec<(i64, &str, &str)> = rows.iter().map(|(i, n)| (*i, n.as_str(), "eu")).collect();
            let (next, more) = insert(&t.lake, &table, vec![kv_batch(&refs)]).await;
            table = next;
            index.extend(more);
        }
        eprintln!(
            "insert: {} rows in {files} commits: {:?}",
            files * rows_per_file,
            started.elapsed()
        );
        let started = Instant::now();
        for round in 0..20i64 {
            // Every 10th row of five files per round: 10% of the rows overall.
            let ids: Vec<i64> = (round * 5 * rows_per_file..(round + 1) * 5 * rows_per_file)
                .step_by(10)
                .collect();
            table = delete(&t.lake, &table, &index, &ids).await;
        }
        eprintln!(
            "position deletes: 20 commits of 5000 deletes: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let mut stream = t
            .lake
            .scan_live_rows(&table, &["id".to_string()], None)
            .await
            .unwrap();
        let mut live = 0;
        while let Some(rows) = stream.try_next().await.unwrap() {
            live += rows.batch.num_rows();
        }
        eprintln!("scan_live_rows: {live} live rows: {:?}", started.elapsed());
        let started = Instant::now();
        let outcome = t
            .lake
            .compact(
                &ident("m"),
                &CompactOptions {
                    small_file_threshold: u64::MAX,
                    min_input_files: 2,
                    ..CompactOptions::default()
                },
            )
            .await
            .unwrap();
        eprintln!(
            "compact: {} files ({} bytes) → {} files ({} bytes), {} rows, {} purged: {:?}",
            outcome.removed_data_files.len(),
            outcome.bytes_read,
            outcome.added_data_files.len(),
            outcome.bytes_written,
            outcome.rows_rewritten,
            outcome.rows_purged,
            started.elapsed()
        );
        assert_eq!(outcome.rows_rewritten as usize, live);
    }
}
