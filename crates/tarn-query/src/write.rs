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
    let (_, files) = write_files(lake, ident, streams, progress).await?;
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

/// What an overwrite replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverwriteScope {
    /// The partitions the new rows fall into (`INSERT OVERWRITE`); the whole table when it
    /// has no partitions.
    Partitions,
    /// Every row (`CREATE OR REPLACE TABLE ... AS`).
    Table,
}

/// Writes every stream of `streams` into `ident` and replaces, in one commit, what `scope`
/// says: see the module doc.
pub async fn write_and_overwrite(
    lake: &Lake,
    ident: &TableIdent,
    base: Option<iceberg::table::Table>,
    streams: Vec<SendableRecordBatchStream>,
    scope: OverwriteScope,
    progress: Arc<WriteProgress>,
) -> Result<WriteOutcome> {
    let (loaded, files) = write_files(lake, ident, streams, progress).await?;
    let table = base.unwrap_or(loaded);
    let rows: u64 = files.iter().map(|f| f.record_count()).sum();
    let file_bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    let count = files.len();
    let metadata = table.metadata();
    let whole = scope == OverwriteScope::Table || metadata.default_partition_spec().is_unpartitioned();
    if !whole && metadata.partition_specs_iter().count() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("INSERT OVERWRITE into {ident}, whose partitioning has changed, is not supported"),
        ));
    }
    let replaced: std::collections::HashSet<iceberg::spec::Struct> =
        files.iter().map(|f| f.partition().clone()).collect();
    let (live_data, live_deletes) = Lake::live_files(&table).await?;
    let in_replaced = |f: &iceberg::spec::DataFile| whole || replaced.contains(f.partition());
    let overwrite = tarn_lake::Overwrite {
        removed_data_files: live_data.into_iter().filter(|f| in_replaced(f)).collect(),
        removed_delete_files: live_deletes.into_iter().filter(|f| in_replaced(f)).collect(),
        added_data_files: files,
        summary: HashMap::from([(
            "tarn.statement".to_string(),
            match scope {
                OverwriteScope::Partitions => "insert-overwrite",
                OverwriteScope::Table => "replace-table",
            }
            .to_string(),
        )]),
    };
    let written: Vec<String> = overwrite
        .added_data_files
        .iter()
        .map(|f| f.file_path().to_string())
        .collect();
    let guard = serializable_overwrite(lake, &table, (!whole).then_some(replaced), scope);
    let committed = match lake
        .commit_overwrite_guarded(&table, overwrite, Some(&guard))
        .await
    {
        Ok(committed) => committed,
        Err(e) => {
            for path in &written {
                if let Err(e) = lake.file_io().delete(path).await {
                    tracing::warn!(file = %path, error = %e, "cannot delete a file of a failed overwrite");
                }
            }
            return Err(e);
        }
    };
    metrics::counter!("tarn_data_files_written_total").increment(count as u64);
    Ok(WriteOutcome {
        rows,
        files: count,
        file_bytes,
        snapshot_id: committed.metadata().current_snapshot_id(),
    })
}

/// The check an overwrite planned on `base` commits with (module doc): no snapshot since
/// `base` changed a file in `partitions` (`None`: anywhere in the table).
fn serializable_overwrite(
    lake: &Lake,
    base: &iceberg::table::Table,
    partitions: Option<std::collections::HashSet<iceberg::spec::Struct>>,
    scope: OverwriteScope,
) -> tarn_lake::CommitGuard {
    let lake = lake.clone();
    let from = base.metadata().current_snapshot_id();
    let statement = match scope {
        OverwriteScope::Partitions => "INSERT OVERWRITE",
        OverwriteScope::Table => "CREATE OR REPLACE TABLE",
    };
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

/// Writes every stream of `streams` as data files of `ident` (one writer task per stream);
/// returns the table as loaded for writing and the files, not committed.
async fn write_files(
    lake: &Lake,
    ident: &TableIdent,
    streams: Vec<SendableRecordBatchStream>,
    progress: Arc<WriteProgress>,
) -> Result<(iceberg::table::Table, Vec<iceberg::spec::DataFile>)> {
    let table = lake.load_table(ident).await?;
    let prefix = uuid::Uuid::new_v4().to_string();
    let mut tasks = JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut writer = DataWriter::new(&table, &format!("{prefix}-{i}"))?;
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
    Ok((table, files))
}
