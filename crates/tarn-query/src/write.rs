//! The write path every statement and load shares: partitioned record-batch streams in, one
//! Iceberg append commit out.
//!
//! Each input partition gets its own [`DataWriter`] on its own task, so a multi-file load or a
//! multi-partition `INSERT ... SELECT` encodes Parquet on every core. The data files of all
//! writers are committed together in one snapshot, and only if every writer succeeded: a failed
//! or cancelled write commits nothing, so the table stays exactly as it was. Dropping the
//! returned future aborts the writer tasks.

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
