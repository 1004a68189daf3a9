//! The snapshot writer: a table's initial copy (or a later re-copy) written into the lake and
//! committed as one snapshot.
//!
//! A copy runs on several connections at once. Each has its own [`SnapshotPartWriter`]
//! ([`LakeSink::snapshot_writer`]) that writes Parquet data files and puts the key of every
//! row it writes into one index shared by the copy ([`LakeSink::snapshot_index`]), so the
//! keys of a large table are held once. [`LakeSink::finish_snapshot`] commits the parts as
//! one snapshot holding everything up to the copy's position — a plain append into an empty
//! table, an overwrite of everything otherwise — and makes the shared index the table's.
//!
//! Data files of a copy that never commits are never referenced (orphan-file removal deletes
//! them).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use iceberg::TableIdent;
use iceberg::spec::DataFile;
use tarn_core::{Error, ErrorKind, Result, failpoint};
use tarn_lake::{PositionedDataWriter, RowDelta};

use super::summary::snapshot_summary;
use super::{LakeSink, current_files};
use crate::index::{KeyEncoder, KeyIndex};
use crate::source::BatchWriter;
use crate::source::{Position, TableId};

/// A snapshot copy connection's writer: data files plus the index entries of their rows.
pub struct SnapshotPartWriter {
    table: TableIdent,
    writer: PositionedDataWriter,
    encoder: Arc<KeyEncoder>,
    key_columns: Vec<usize>,
    index: Arc<Mutex<KeyIndex>>,
}

/// What one copy connection wrote (the keys went into the shared snapshot index).
pub struct SnapshotPart {
    files: Vec<DataFile>,
}

impl SnapshotPart {
    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(DataFile::record_count).sum()
    }
}

#[async_trait::async_trait]
impl BatchWriter for SnapshotPartWriter {
    type Output = SnapshotPart;

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let key_columns: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self.encoder.encode(&key_columns)?;
        let rows = batch.num_rows();
        let written = self.writer.write(batch).await?;
        if written.len() > 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "table {} is partitioned; CDC writes unpartitioned tables only",
                    self.table
                ),
            ));
        }
        let placed: usize = written.iter().map(|w| w.batch.num_rows()).sum();
        if placed != rows {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("wrote {placed} rows of {rows} into {}", self.table),
            ));
        }
        // One file number per written run of rows, not one lookup per row.
        let mut index = self.index.lock().expect("snapshot index poisoned");
        let mut from = 0;
        for w in written {
            let n = w.batch.num_rows();
            let file = index.file_number(&w.data_file);
            let first_pos = u32::try_from(w.first_pos).map_err(|_| {
                Error::new(
                    ErrorKind::Internal,
                    format!(
                        "data file {} of {} holds more than 2^32 rows",
                        w.data_file, self.table
                    ),
                )
            })?;
            index.insert_run(&keys[from..from + n], file, first_pos);
            from += n;
        }
        Ok(())
    }

    async fn finish(self) -> Result<SnapshotPart> {
        let files = self.writer.close().await?;
        Ok(SnapshotPart { files })
    }
}

impl LakeSink {
    /// Starts writing a snapshot copy of table `id`: one writer per copy connection.
    pub fn snapshot_writer(
        &self,
        id: TableId,
        part: usize,
        index: Arc<Mutex<KeyIndex>>,
    ) -> Result<SnapshotPartWriter> {
        let state = self.state(id)?;
        Ok(SnapshotPartWriter {
            table: state.ident.clone(),
            writer: PositionedDataWriter::new(
                &state.table,
                &format!("snap-{}-{part}", uuid::Uuid::new_v4()),
            )?,
            encoder: state.encoder.clone(),
            key_columns: state.key_columns.clone(),
            index,
        })
    }

    /// The index a snapshot copy of table `id` fills while it writes (shared by its copy
    /// connections, so the keys of a large table are held once).
    pub fn snapshot_index(&self, id: TableId) -> Result<Arc<Mutex<KeyIndex>>> {
        let state = self.state(id)?;
        Ok(Arc::new(Mutex::new(KeyIndex::for_table(&state.spec))))
    }

    /// Commits a finished snapshot copy of table `id` as one snapshot holding everything up to
    /// `position`, replacing whatever the table held.
    pub async fn finish_snapshot(
        &mut self,
        id: TableId,
        parts: Vec<SnapshotPart>,
        index: Arc<Mutex<KeyIndex>>,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        let pipeline = self.options.pipeline.clone();
        let lake = self.lake.clone();
        // The files it replaces are read from the table as this sink knows it: no compaction
        // commits meanwhile (see `maintenance`).
        let held = self.background.holds();
        self.hold_commits().await?;
        let state = self.state_mut(id)?;
        failpoint::hit("cdc.snapshot.before_commit").await?;
        let mut data_files = Vec::new();
        for part in &parts {
            data_files.extend(part.files.iter().cloned());
        }
        let rows: u64 = data_files.iter().map(DataFile::record_count).sum();
        let summary = snapshot_summary(&pipeline, &position, kind);
        let (old_data, old_deletes) = current_files(&state.table).await?;
        // The rows a copy over earlier ones replaces (their position deletes taken off).
        let replaced = old_data
            .iter()
            .map(DataFile::record_count)
            .sum::<u64>()
            .saturating_sub(old_deletes.iter().map(DataFile::record_count).sum());
        state.table = if old_data.is_empty() && old_deletes.is_empty() {
            lake.commit_row_delta(
                &state.table,
                RowDelta {
                    data_files,
                    delete_files: Vec::new(),
                    referenced_data_files: HashSet::new(),
                    summary,
                },
            )
            .await?
        } else {
            lake.commit_overwrite(
                &state.table,
                tarn_lake::Overwrite {
                    removed_data_files: old_data,
                    removed_delete_files: old_deletes,
                    added_data_files: data_files,
                    summary,
                },
            )
            .await?
        };
        state.position = Some(position);
        state.index = match Arc::try_unwrap(index) {
            Ok(index) => index.into_inner().expect("snapshot index poisoned"),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "a snapshot writer outlived its copy",
                ));
            }
        };
        state.counters.commits += 1;
        state.synced = state.table.metadata().current_snapshot_id();
        metrics::counter!("tarn_cdc_snapshot_rows_total", "table" => state.ident.to_string()).increment(rows);
        let table = format!("{}.{}", lake.name(), state.ident);
        if let Some(audit) = &self.audit {
            audit.record(&table, rows, replaced);
        }
        if !held {
            self.release_commits();
        }
        self.publish();
        Ok(rows)
    }
}
