//! Upserts by primary key for the ingestion commands (`tarn ingest airbyte` in append_dedup
//! mode, `tarn ingest sql --primary-key`): pending rows become one row delta — new data files
//! plus position deletes of the table's rows they replace.
//!
//! Which row of a key wins: among the pending rows, the one with the greatest cursor value
//! (ties, and rows without a cursor: the later one); against the table, the pending winner
//! replaces the table's row unless that row's cursor is greater (Airbyte's dedup semantics:
//! a late, older record does not overwrite a newer one). Cursor values compare as their Arrow
//! type sorts (NULL before any value).
//!
//! Cost: the pending rows are held in memory (the callers bound them by their commit size),
//! and the key (and cursor) columns of the whole table are read once per delta to find the
//! rows replaced.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::row::{OwnedRow, RowConverter, SortField};
use futures::StreamExt;
use iceberg::table::Table;
use tarn_lake::{DataWriter, Lake, RowDelta};

/// What [`delta`] made: the row delta (files written, not committed) and how many pending
/// keys lost against a newer row of the table.
pub struct Upsert {
    /// New data files and position deletes (`summary` empty).
    pub delta: RowDelta,
    /// Keys whose pending row was older (by cursor) than the table's row: skipped.
    pub stale_keys: u64,
    /// Rows written.
    pub rows: u64,
}

/// The row delta that upserts `batches` (pending rows, in arrival order, of the table's
/// columns) into `table` by `key`, ordered by `cursor`; data files are written in slices of
/// `batch_rows`, named with `prefix`.
pub async fn delta(
    lake: &Lake,
    table: &Table,
    key: &[String],
    cursor: Option<&str>,
    batches: &[RecordBatch],
    batch_rows: usize,
    prefix: &str,
) -> Result<Upsert> {
    let Some(first) = batches.first() else {
        return Ok(Upsert {
            delta: RowDelta::default(),
            stale_keys: 0,
            rows: 0,
        });
    };
    let schema = first.schema();
    let batch = arrow::compute::concat_batches(&schema, batches)?;
    let sort_field = |name: &str| -> Result<SortField> {
        Ok(SortField::new(
            schema
                .field_with_name(name)
                .map_err(|_| anyhow!("{name} is not a column of the rows"))?
                .data_type()
                .clone(),
        ))
    };
    let key_types: Vec<SortField> = key.iter().map(|k| sort_field(k)).collect::<Result<_>>()?;
    let key_converter = RowConverter::new(key_types).context("cannot compare primary keys")?;
    let cursor_converter = match cursor {
        Some(c) => Some(RowConverter::new(vec![sort_field(c)?]).context("cannot compare cursor values")?),
        None => None,
    };
    let column = |batch: &RecordBatch, name: &str| -> Result<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| anyhow!("no column {name}"))
    };
    let key_columns: Vec<ArrayRef> = key.iter().map(|k| column(&batch, k)).collect::<Result<_>>()?;
    let keys = key_converter.convert_columns(&key_columns)?;
    let cursors = match (&cursor_converter, cursor) {
        (Some(conv), Some(c)) => Some(conv.convert_columns(&[column(&batch, c)?])?),
        _ => None,
    };
    // The winning row of each key among the pending ones.
    let mut winners: HashMap<OwnedRow, usize> = HashMap::new();
    for i in 0..batch.num_rows() {
        match winners.entry(keys.row(i).owned()) {
            Entry::Vacant(e) => {
                e.insert(i);
            }
            Entry::Occupied(mut e) => {
                let later_wins = cursors.as_ref().is_none_or(|c| c.row(i) >= c.row(*e.get()));
                if later_wins {
                    e.insert(i);
                }
            }
        }
    }
    // The table's live rows of those keys, with their cursor.
    type LiveRow = (Arc<str>, u64, Option<OwnedRow>);
    let mut live: HashMap<OwnedRow, Vec<LiveRow>> = HashMap::new();
    let mut partitions = HashMap::new();
    if table.metadata().current_snapshot().is_some() {
        let mut columns = key.to_vec();
        columns.extend(cursor.map(str::to_string));
        let mut scan = lake.scan_live_rows(table, &columns, None).await?;
        while let Some(rows) = scan.next().await {
            let rows = rows?;
            let n = key.len();
            let converted = key_converter.convert_columns(&rows.batch.columns()[..n])?;
            let live_cursors = match &cursor_converter {
                Some(conv) => Some(conv.convert_columns(&rows.batch.columns()[n..n + 1])?),
                None => None,
            };
            let positions = rows
                .batch
                .column(columns.len())
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| anyhow!("the position column is not Int64"))?
                .clone();
            let mut hit = false;
            for (i, row) in converted.iter().enumerate() {
                let k = row.owned();
                if winners.contains_key(&k) {
                    let c = live_cursors.as_ref().map(|c| c.row(i).owned());
                    live.entry(k)
                        .or_default()
                        .push((rows.data_file.clone(), positions.value(i) as u64, c));
                    hit = true;
                }
            }
            if hit {
                partitions.insert(rows.data_file.clone(), rows.partition.clone());
            }
        }
    }
    let mut deletes = Vec::new();
    let mut stale_keys = 0u64;
    for (k, rows) in live {
        let winner = winners[&k];
        let newer_in_table = cursors.as_ref().is_some_and(|c| {
            rows.iter()
                .any(|(_, _, l)| l.as_ref().is_some_and(|l| l.row() > c.row(winner)))
        });
        if newer_in_table {
            winners.remove(&k);
            stale_keys += 1;
        } else {
            deletes.extend(rows.into_iter().map(|(file, pos, _)| (file, pos)));
        }
    }
    let mut indices: Vec<u32> = winners.into_values().map(|i| i as u32).collect();
    indices.sort_unstable();
    let winning = arrow::compute::take_record_batch(&batch, &UInt32Array::from(indices))?;
    drop(batch);
    let mut data_files = Vec::new();
    if winning.num_rows() > 0 {
        let mut writer = DataWriter::new(table, prefix)?;
        let step = batch_rows.max(1);
        let mut offset = 0;
        while offset < winning.num_rows() {
            let len = step.min(winning.num_rows() - offset);
            writer.write(winning.slice(offset, len)).await?;
            offset += len;
        }
        data_files = writer.close().await?;
    }
    let referenced: HashSet<String> = deletes.iter().map(|(f, _)| f.to_string()).collect();
    deletes.sort_unstable();
    let delete_files = if deletes.is_empty() {
        Vec::new()
    } else {
        tarn_lake::write_position_deletes_in_partitions(table, prefix, deletes, &partitions).await?
    };
    Ok(Upsert {
        delta: RowDelta {
            data_files,
            delete_files,
            referenced_data_files: referenced,
            summary: HashMap::new(),
        },
        stale_keys,
        rows: winning.num_rows() as u64,
    })
}
