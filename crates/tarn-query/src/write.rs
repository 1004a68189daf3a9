//! The write path every statement and load shares: partitioned record-batch streams in, one
//! Iceberg append commit out.
//!
//! Each input partition gets its own [`DataWriter`] on its own task, so a multi-file load or a
//! multi-partition `INSERT ... SELECT` encodes Parquet on every core. The data files of all
//! writers are committed together in one snapshot, and only if every writer succeeded: a failed
//! or cancelled write commits nothing, so the table stays exactly as it was. Dropping the
//! returned future aborts the writer tasks.
//!
//! `INSERT OVERWRITE` ([`write_and_overwrite`]) is a dynamic partition overwrite, as in Spark
//! and Hive: the partitions the new rows fall into are replaced (their data files and the
//! delete files of those partitions removed) in the same commit that adds the new files; other
//! partitions keep their rows; a table without partitions is replaced whole.
//!
//! An overwrite is serializable against concurrent writers (a CDC pipeline, another statement,
//! another engine): it replaces what it saw in the table as the statement planned (`base`), so
//! its commit validates every snapshot committed since — one that added or removed a data or
//! delete file in the scope it replaces (the partitions, or any for a whole table) conflicts,
//! and the statement fails with [`ErrorKind::CommitConflict`] (SQLSTATE 40001) and its files
//! are deleted; commits elsewhere in the table land beside it. Without the check a row a CDC
//! commit added to a replaced partition meanwhile survived the overwrite next to the new rows,
//! and a file a compaction rewrote meanwhile came back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use iceberg::TableIdent;
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::{DataWriter, Lake};
use tokio::task::JoinSet;

/// Live counters of a write, for progress bars and metrics.
#[derive(Debug, Default)]
pub struct WriteProgress {
    /// Rows written so far.
    pub rows: AtomicU64,
    /// In-memory Arrow bytes written so far.
    pub bytes: AtomicU64,
}

/// What a committed write did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// Rows committed.
    pub rows: u64,
    /// Data files added.
    pub files: usize,
    /// Bytes of the data files added.
    pub file_bytes: u64,
    /// The new snapshot, if anything was committed.
    pub snapshot_id: Option<i64>,
}

/// Writes every stream of `streams` into `ident` and commits the files as one snapshot with
/// `summary` added to the snapshot summary.
pub async fn write_and_commit(
    lake: &Lake,
    ident: &TableIdent,
    streams: Vec<SendableRecordBatchStream>,
    summary: HashMap<String, String>,
    progress: Arc<WriteProgress>,
) -> Result<WriteOutcome> {
    let files = write_files(&lake.load_table(ident).await?, streams, progress).await?;
    let rows: u64 = files.iter().map(|f| f.record_count()).sum();
    let file_bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    let count = files.len();
    if files.is_empty() {
        return Ok(WriteOutcome {
            rows: 0,
            files: 0,
            file_bytes: 0,
            snapshot_id: None,
        });
    }
    let committed = lake.append(ident, files, summary).await?;
    metrics::counter!("tarn_data_files_written_total").increment(count as u64);
    Ok(WriteOutcome {
        rows,
        files: count,
        file_bytes,
        snapshot_id: committed.metadata().current_snapshot_id(),
    })
}

/// Writes every stream of `streams` into `ident` and replaces, in one commit, the partitions
/// the new rows fall into (the whole table when it has no partitions): see the module doc.
pub async fn write_and_overwrite(
    lake: &Lake,
    ident: &TableIdent,
    base: Option<iceberg::table::Table>,
    streams: Vec<SendableRecordBatchStream>,
    progress: Arc<WriteProgress>,
) -> Result<WriteOutcome> {
    let table = match base {
        Some(table) => table,
        None => lake.load_table(ident).await?,
    };
    let files = write_files(&table, streams, progress).await?;
    let metadata = table.metadata();
    let whole = metadata.default_partition_spec().is_unpartitioned();
    if !whole && metadata.partition_specs_iter().count() > 1 {
        delete_written(lake, &files).await;
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("INSERT OVERWRITE into {ident}, whose partitioning has changed, is not supported"),
        ));
    }
    let replaced: std::collections::HashSet<iceberg::spec::Struct> =
        files.iter().map(|f| f.partition().clone()).collect();
    let (live_data, live_deletes) = match Lake::live_files(&table).await {
        Ok(live) => live,
        Err(e) => {
            delete_written(lake, &files).await;
            return Err(e);
        }
    };
    let in_replaced = |f: &iceberg::spec::DataFile| whole || replaced.contains(f.partition());
    let overwrite = tarn_lake::Overwrite {
        removed_data_files: live_data.into_iter().filter(|f| in_replaced(f)).collect(),
        removed_delete_files: live_deletes.into_iter().filter(|f| in_replaced(f)).collect(),
        added_data_files: files,
        summary: HashMap::from([("tarn.statement".to_string(), "insert-overwrite".to_string())]),
    };
    let guard = serializable_overwrite(lake, &table, (!whole).then_some(replaced), "INSERT OVERWRITE");
    commit_written(lake, overwrite, async |o| {
        lake.commit_overwrite_guarded(&table, o, Some(&guard)).await
    })
    .await
}

/// `CREATE OR REPLACE TABLE ... AS` of an existing table: writes every stream of `streams`
/// as the rows of `base` redefined by `replacement` (its columns, partitioning, sort order and
/// properties; see [`Lake::plan_replacement`]) and commits the new definition and rows in one
/// snapshot that removes every row `base` had. Serializable like an overwrite of the whole
/// table: any commit since `base` fails it with a conflict.
pub async fn write_and_replace(
    lake: &Lake,
    base: &iceberg::table::Table,
    replacement: tarn_lake::Replacement,
    streams: Vec<SendableRecordBatchStream>,
    progress: Arc<WriteProgress>,
) -> Result<WriteOutcome> {
    let target = lake.replacement_table(base, &replacement)?;
    let files = write_files(&target, streams, progress).await?;
    let (removed_data_files, removed_delete_files) = match Lake::live_files(base).await {
        Ok(live) => live,
        Err(e) => {
            delete_written(lake, &files).await;
            return Err(e);
        }
    };
    let overwrite = tarn_lake::Overwrite {
        removed_data_files,
        removed_delete_files,
        added_data_files: files,
        summary: HashMap::from([("tarn.statement".to_string(), "replace-table".to_string())]),
    };
    let guard = serializable_overwrite(lake, base, None, "CREATE OR REPLACE TABLE");
    commit_written(lake, overwrite, async |o| {
        lake.commit_replacement(base, o, replacement, Some(&guard)).await
    })
    .await
}

/// Commits `overwrite` through `commit`; when it fails, the files it would have added are
/// deleted (nothing references them).
async fn commit_written(
    lake: &Lake,
    overwrite: tarn_lake::Overwrite,
    commit: impl AsyncFnOnce(tarn_lake::Overwrite) -> Result<iceberg::table::Table>,
) -> Result<WriteOutcome> {
    let files = overwrite.added_data_files.clone();
    let committed = match commit(overwrite).await {
        Ok(committed) => committed,
        Err(e) => {
            delete_written(lake, &files).await;
            return Err(e);
        }
    };
    metrics::counter!("tarn_data_files_written_total").increment(files.len() as u64);
    Ok(WriteOutcome {
        rows: files.iter().map(|f| f.record_count()).sum(),
        files: files.len(),
        file_bytes: files.iter().map(|f| f.file_size_in_bytes()).sum(),
        snapshot_id: committed.metadata().current_snapshot_id(),
    })
}

/// Deletes data files a failed statement wrote.
async fn delete_written(lake: &Lake, files: &[iceberg::spec::DataFile]) {
    for file in files {
        if let Err(e) = lake.file_io().delete(file.file_path()).await {
            tracing::warn!(file = %file.file_path(), error = %e, "cannot delete a file of a failed overwrite");
        }
    }
}

/// The check an overwrite planned on `base` commits with (module doc): no snapshot since
/// `base` changed a file in `partitions` (`None`: anywhere in the table).
fn serializable_overwrite(
    lake: &Lake,
    base: &iceberg::table::Table,
    partitions: Option<std::collections::HashSet<iceberg::spec::Struct>>,
    statement: &'static str,
) -> tarn_lake::CommitGuard {
    let lake = lake.clone();
    let from = base.metadata().current_snapshot_id();
    let partitions = Arc::new(partitions);
    tarn_lake::CommitGuard::new_async(move |current: iceberg::table::Table| {
        let (lake, partitions) = (lake.clone(), partitions.clone());
        async move {
            let ident = current.identifier().clone();
            let conflict = |why: String| {
                Error::new(
                    ErrorKind::CommitConflict,
                    format!("{statement} of {ident} conflicts with a concurrent commit: {why}; run it again"),
                )
            };
            let Some(changed) = lake.files_changed_since(&current, from).await? else {
                return Err(conflict(format!(
                    "snapshot {} it read is no longer in the table's history",
                    from.map_or("none".into(), |id| id.to_string())
                )));
            };
            let in_scope = |f: &iceberg::spec::DataFile| {
                partitions
                    .as_ref()
                    .as_ref()
                    .is_none_or(|p| p.contains(f.partition()))
            };
            if let Some(c) = changed.iter().find(|c| in_scope(&c.file)) {
                return Err(conflict(format!(
                    "snapshot {} ({}) {} {} in {}",
                    c.snapshot_id,
                    c.operation,
                    if c.added { "added" } else { "removed" },
                    c.file.file_path(),
                    if partitions.is_some() {
                        "a partition it replaces"
                    } else {
                        "the table it replaces"
                    }
                )));
            }
            Ok(HashMap::new())
        }
    })
}

/// Writes every stream of `streams` as data files of `table` (one writer task per stream),
/// not committed.
async fn write_files(
    table: &iceberg::table::Table,
    streams: Vec<SendableRecordBatchStream>,
    progress: Arc<WriteProgress>,
) -> Result<Vec<iceberg::spec::DataFile>> {
    let prefix = uuid::Uuid::new_v4().to_string();
    let mut tasks = JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut writer = DataWriter::new(table, &format!("{prefix}-{i}"))?;
        let progress = progress.clone();
        tasks.spawn(async move {
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| {
                    Error::new(ErrorKind::Query, "reading the rows to write failed").with_source(e)
                })?;
                let (rows, bytes) = (batch.num_rows() as u64, batch.get_array_memory_size() as u64);
                writer.write(batch).await?;
                progress.rows.fetch_add(rows, Ordering::Relaxed);
                progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                metrics::counter!("tarn_rows_written_total").increment(rows);
            }
            writer.close().await
        });
    }
    let mut files = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let written =
            joined.map_err(|e| Error::new(ErrorKind::Internal, "a writer task failed").with_source(e))??;
        files.extend(written);
    }
    Ok(files)
}
