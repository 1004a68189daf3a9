//! The row buffer of one table: changes collapsed by key between writes, unchanged TOASTed
//! values resolved, and the buffer turned into a data file plus position deletes.
//!
//! [`RowBuffer`] holds at most one change per key (the last change of a key wins). A table
//! keyed by the whole row ([`KeyKind::FullRow`]) keeps a net count per distinct row instead,
//! since identical rows can come and go several times. A key change (an update whose old key
//! differs) becomes a delete of the old key and an upsert of the new one.
//!
//! **Unchanged TOASTed values** ([`Value::Unchanged`]: PostgreSQL did not resend a large value
//! that did not change) keep their previous value, taken from, in this order: the old row when
//! the source sent a full one; the key's buffered version; the row's current version in the
//! lake, which [`write_pending`] reads back at the location the key index gives (before the
//! index forgets it). A value with no previous version anywhere is written as NULL and counted
//! (`tarn_cdc_unresolved_toast_total`).
//!
//! [`write_pending`] drains the buffer into one Parquet data file of new row versions and the
//! position deletes of the versions they replace, updating the key index; nothing is
//! committed until the sink's flush.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use tarn_core::{Error, ErrorKind, Result, failpoint};
use tarn_lake::{Lake, PositionedDataWriter};

use super::{TableState, placements};
use crate::index::{IndexKey, RowLocation};
use crate::source::{KeyKind, Row, TableSpec, Value};
use crate::value::builder::{BatchBuilder, ColumnBuilder};

/// One buffered change of a key.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// The row's new version; `fill_from` names the key whose current lake row supplies
    /// still-unchanged TOASTed values.
    Upsert { row: Row, fill_from: Option<Box<[u8]>> },
    /// The key is gone.
    Delete,
    /// Whole-row keys: this row, `net` more (or fewer) times.
    Net { row: Row, net: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) key_cells: Vec<Value>,
    pub(super) change: Change,
}

/// The changes of one table since its last write, one per key; see the module doc.
///
/// A persistent map: [`RowBuffer::entries`] hands bridge reads a copy in O(1) that shares
/// every entry with the buffer ([`super::publish`]).
#[derive(Debug, Default)]
pub(super) struct RowBuffer {
    entries: imbl::HashMap<Box<[u8]>, Entry>,
}

/// The buffer's estimate of a row's size.
fn cell_bytes(row: &Row) -> usize {
    row.iter()
        .map(|v| match v {
            Value::Text(b) | Value::Binary(b) => b.len() + 16,
            _ => 16,
        })
        .sum()
}

pub(super) fn text_cell(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Text(b) | Value::Binary(b) => Some(b.as_ref()),
        Value::Null | Value::Unchanged => None,
    }
}

/// A collapse key: the key cells' text, length-prefixed (NULL and unchanged marked).
fn text_key(cells: &[&Value]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(cells.len() * 12);
    for v in cells {
        match v {
            Value::Text(b) | Value::Binary(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            Value::Null => out.push(0),
            Value::Unchanged => out.push(2),
        }
    }
    out.into_boxed_slice()
}

impl RowBuffer {
    /// Whether nothing is buffered.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The buffered changes as they are now, sharing their entries with the buffer.
    pub(super) fn entries(&self) -> imbl::HashMap<Box<[u8]>, Entry> {
        self.entries.clone()
    }

    /// Forgets every buffered change (a truncate, a stopped table).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    fn net_of(&self, tkey: &[u8]) -> i64 {
        match self.entries.get(tkey) {
            Some(Entry {
                change: Change::Net { net, .. },
                ..
            }) => *net,
            _ => 0,
        }
    }

    /// Buffers an inserted row; returns the bytes it adds to the buffer.
    pub(super) fn insert(&mut self, spec: &TableSpec, key_columns: &[usize], new: Row) -> usize {
        let key: Vec<&Value> = key_columns.iter().map(|&i| &new[i]).collect();
        let key_cells = key.iter().map(|v| (*v).clone()).collect();
        let tkey = text_key(&key);
        let bytes = cell_bytes(&new);
        let change = if spec.key_kind == KeyKind::FullRow {
            let net = self.net_of(&tkey) + 1;
            Change::Net { row: new, net }
        } else {
            Change::Upsert {
                row: new,
                fill_from: None,
            }
        };
        self.entries.insert(tkey, Entry { key_cells, change });
        bytes
    }

    /// Buffers a deleted row (`old` holds at least the key columns); returns the bytes it adds
    /// to the buffer.
    ///
    /// Errors: a key cell is an unchanged TOASTed value (only possible without a primary key).
    pub(super) fn delete(&mut self, spec: &TableSpec, key_columns: &[usize], old: Row) -> Result<usize> {
        let key: Vec<&Value> = key_columns.iter().map(|&i| &old[i]).collect();
        if key.iter().any(|v| matches!(v, Value::Unchanged)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a delete from {} carries an unchanged TOASTed value in its key; give the table a primary key",
                    spec.qualified()
                ),
            ));
        }
        let key_cells = key.iter().map(|v| (*v).clone()).collect();
        let tkey = text_key(&key);
        let change = if spec.key_kind == KeyKind::FullRow {
            let net = self.net_of(&tkey) - 1;
            Change::Net { row: old, net }
        } else {
            Change::Delete
        };
        self.entries.insert(tkey, Entry { key_cells, change });
        Ok(64)
    }

    /// Buffers an updated row: `old` is the old key (when the key changed) or the whole old
    /// row (full replica identity), `new` the new row with [`Value::Unchanged`] for TOASTed
    /// values not resent. Returns the bytes it adds to the buffer.
    ///
    /// Errors (tables keyed by the whole row): the old row is missing, or holds an unchanged
    /// TOASTed value.
    pub(super) fn update(
        &mut self,
        spec: &TableSpec,
        key_columns: &[usize],
        old: Option<Row>,
        mut new: Row,
    ) -> Result<usize> {
        let bytes = cell_bytes(&new);
        if spec.key_kind == KeyKind::FullRow {
            let Some(old) = old else {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("an update of {} arrived without its old row", spec.qualified()),
                ));
            };
            if old.iter().any(|v| matches!(v, Value::Unchanged)) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "an update of {} (no primary key) carries an unchanged TOASTed value in its old row; give the table a primary key",
                        spec.qualified()
                    ),
                ));
            }
            for (n, o) in new.iter_mut().zip(&old) {
                if matches!(n, Value::Unchanged) {
                    *n = o.clone();
                }
            }
            for (row, delta) in [(old, -1i64), (new, 1)] {
                let key: Vec<&Value> = key_columns.iter().map(|&i| &row[i]).collect();
                let key_cells = key.iter().map(|v| (*v).clone()).collect();
                let tkey = text_key(&key);
                let net = self.net_of(&tkey) + delta;
                self.entries.insert(
                    tkey,
                    Entry {
                        key_cells,
                        change: Change::Net { row, net },
                    },
                );
            }
            return Ok(bytes);
        }
        let new_key: Vec<&Value> = key_columns.iter().map(|&i| &new[i]).collect();
        let new_tkey = text_key(&new_key);
        let new_cells: Vec<Value> = new_key.iter().map(|v| (*v).clone()).collect();
        // The key the row had before: the old tuple's, when the key changed.
        let old_tkey = match &old {
            Some(o) => {
                let k: Vec<&Value> = key_columns.iter().map(|&i| &o[i]).collect();
                text_key(&k)
            }
            None => new_tkey.clone(),
        };
        // Unchanged TOASTed values: from a full old row, else from the buffered version, else
        // from the lake row of the old key.
        if let Some(o) = &old {
            for (n, ov) in new.iter_mut().zip(o) {
                if matches!(n, Value::Unchanged) && !matches!(ov, Value::Unchanged | Value::Null) {
                    *n = ov.clone();
                }
            }
        }
        let mut fill_from = None;
        if new.iter().any(|v| matches!(v, Value::Unchanged)) {
            match self.entries.get(&old_tkey) {
                Some(Entry {
                    change: Change::Upsert { row, fill_from: f },
                    ..
                }) => {
                    for (n, pv) in new.iter_mut().zip(row) {
                        if matches!(n, Value::Unchanged) {
                            *n = pv.clone();
                        }
                    }
                    fill_from = f.clone();
                }
                Some(Entry {
                    change: Change::Delete,
                    ..
                }) => {}
                _ => fill_from = Some(old_tkey.clone()),
            }
            if !new.iter().any(|v| matches!(v, Value::Unchanged)) {
                fill_from = None;
            }
        }
        if old_tkey != new_tkey {
            let old_cells = old
                .as_ref()
                .map(|o| key_columns.iter().map(|&i| o[i].clone()).collect())
                .unwrap_or_default();
            self.entries.insert(
                old_tkey,
                Entry {
                    key_cells: old_cells,
                    change: Change::Delete,
                },
            );
        }
        self.entries.insert(
            new_tkey,
            Entry {
                key_cells: new_cells,
                change: Change::Upsert { row: new, fill_from },
            },
        );
        Ok(bytes)
    }
}

/// Index keys of text key cells (one row per entry).
fn keys_of(state: &TableState, cells: &[&[Value]]) -> Result<Vec<IndexKey>> {
    let mut columns = Vec::with_capacity(state.key_columns.len());
    for (k, &col) in state.key_columns.iter().enumerate() {
        let spec = &state.spec.columns[col];
        let mut builder = ColumnBuilder::new(
            format!("{}.{}", state.spec.qualified(), spec.name),
            &spec.column_type,
            cells.len(),
        );
        for row in cells {
            builder.append(text_cell(&row[k]))?;
        }
        columns.push(builder.finish());
    }
    state.encoder.encode(&columns)
}

/// Turns the table's buffer into data files and position deletes (not committed).
pub(super) async fn write_pending(lake: &Lake, state: &mut TableState) -> Result<()> {
    state.pending_bytes = 0;
    if state.buffer.is_empty() {
        return Ok(());
    }
    failpoint::hit("cdc.before_write").await?;
    let entries: Vec<(Box<[u8]>, Entry)> = std::mem::take(&mut state.buffer.entries).into_iter().collect();
    // Index keys of every entry and of every row whose lake version fills unchanged values.
    let mut fill_keys: Vec<Box<[u8]>> = Vec::new();
    let mut fill_cells: Vec<Vec<Value>> = Vec::new();
    let mut fill_slot: HashMap<Box<[u8]>, usize> = HashMap::new();
    for (_, entry) in &entries {
        if let Change::Upsert {
            fill_from: Some(from),
            row,
        } = &entry.change
            && !fill_slot.contains_key(from)
        {
            // The filling key's cells: the key of this entry's old version. When it is the
            // entry's own key the cells are known; otherwise they are in the matching Delete.
            let cells = entries
                .iter()
                .find(|(k, _)| k == from)
                .map(|(_, e)| e.key_cells.clone())
                .unwrap_or_else(|| state.key_columns.iter().map(|&i| row[i].clone()).collect());
            fill_slot.insert(from.clone(), fill_keys.len());
            fill_keys.push(from.clone());
            fill_cells.push(cells);
        }
    }
    let cell_refs: Vec<&[Value]> = entries.iter().map(|(_, e)| e.key_cells.as_slice()).collect();
    let keys = keys_of(state, &cell_refs)?;
    let fill_refs: Vec<&[Value]> = fill_cells.iter().map(Vec::as_slice).collect();
    let fill_index_keys = if fill_refs.is_empty() {
        Vec::new()
    } else {
        keys_of(state, &fill_refs)?
    };
    // Locations of filling rows, before anything is removed from the index.
    let fill_locations: Vec<Option<RowLocation>> =
        fill_index_keys.iter().map(|k| state.index.get(k)).collect();

    let mut rows: Vec<(IndexKey, Row, Option<RowLocation>)> = Vec::new();
    let mut deleted = 0u64;
    for ((_, entry), key) in entries.into_iter().zip(keys) {
        match entry.change {
            Change::Upsert { row, fill_from } => {
                // The key's row, and any more rows of it another writer left (spares).
                let spares = state.index.take_spares(&key);
                for old in state.index.remove(&key).into_iter().chain(spares) {
                    state
                        .deletes
                        .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                    deleted += 1;
                }
                let fill = fill_from.and_then(|f| fill_slot.get(&f).and_then(|&i| fill_locations[i]));
                rows.push((key, row, fill));
            }
            Change::Delete => {
                let spares = state.index.take_spares(&key);
                for old in state.index.remove(&key).into_iter().chain(spares) {
                    state
                        .deletes
                        .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                    deleted += 1;
                }
            }
            Change::Net { row, net } => {
                for _ in net..0 {
                    match state.index.remove(&key) {
                        Some(old) => {
                            state
                                .deletes
                                .push((state.index.file_path(old.file).clone(), u64::from(old.pos)));
                            deleted += 1;
                        }
                        None => tracing::warn!(table = %state.ident, "a deleted row is not in the lake"),
                    }
                }
                for _ in 0..net {
                    rows.push((key, row.clone(), None));
                }
            }
        }
    }
    state.counters.deletes_written += deleted;
    if rows.is_empty() {
        return Ok(());
    }
    let batch = build_rows(lake, state, &rows).await?;
    let mut writer = PositionedDataWriter::new(&state.table, &format!("cdc-{}", uuid::Uuid::new_v4()))?;
    let placed = placements(writer.write(batch).await?, rows.len(), &state.ident)?;
    let files = writer.close().await?;
    failpoint::hit("cdc.after_write").await?;
    for ((key, _, _), (path, pos)) in rows.iter().zip(placed) {
        let file = state.index.file_number(&path);
        state.index.insert(
            *key,
            RowLocation {
                file,
                pos: pos as u32,
            },
        );
    }
    state.counters.rows_written += rows.len() as u64;
    state.data_files.extend(files);
    Ok(())
}

/// The batch of new row versions, with unchanged TOASTed values filled from the lake.
async fn build_rows(
    lake: &Lake,
    state: &TableState,
    rows: &[(IndexKey, Row, Option<RowLocation>)],
) -> Result<RecordBatch> {
    let mut builder = BatchBuilder::new(&state.spec, rows.len());
    // (row, column, location) of every value to fill.
    let mut patches: Vec<(usize, usize, RowLocation)> = Vec::new();
    let mut cells: Vec<Option<&[u8]>> = Vec::with_capacity(state.spec.columns.len());
    for (r, (_, row, fill)) in rows.iter().enumerate() {
        cells.clear();
        for (c, v) in row.iter().enumerate() {
            if matches!(v, Value::Unchanged) {
                match fill {
                    Some(location) => patches.push((r, c, *location)),
                    None => {
                        metrics::counter!("tarn_cdc_unresolved_toast_total").increment(1);
                        tracing::error!(table = %state.ident, column = %state.spec.columns[c].name,
                            "an unchanged TOASTed value has no previous version in the lake; writing NULL");
                    }
                }
            }
            cells.push(text_cell(v));
        }
        builder.append(&cells)?;
    }
    let batch = builder.finish()?;
    if patches.is_empty() {
        return Ok(batch);
    }
    fill_unchanged(lake, state, batch, &patches).await
}

/// Replaces the `patches` (row, column, lake location) of `batch` with the values the lake
/// holds at those locations.
async fn fill_unchanged(
    lake: &Lake,
    state: &TableState,
    batch: RecordBatch,
    patches: &[(usize, usize, RowLocation)],
) -> Result<RecordBatch> {
    // Read each needed row once: file → sorted positions.
    let mut by_file: HashMap<u32, Vec<u32>> = HashMap::new();
    for (_, _, l) in patches {
        by_file.entry(l.file).or_default().push(l.pos);
    }
    let columns: Vec<String> = state.spec.columns.iter().map(|c| c.name.clone()).collect();
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut where_is: HashMap<(u32, u32), (usize, usize)> = HashMap::new();
    for (file, mut positions) in by_file {
        positions.sort_unstable();
        positions.dedup();
        let path = state.index.file_path(file).clone();
        let wanted: Vec<u64> = positions.iter().map(|&p| u64::from(p)).collect();
        let read = lake.read_rows_at(&state.table, &path, &wanted, &columns).await?;
        for (i, p) in positions.iter().enumerate() {
            where_is.insert((file, *p), (sources.len() + 1, i));
        }
        sources.push(read);
    }
    let schema: SchemaRef = batch.schema();
    let mut out: Vec<ArrayRef> = batch.columns().to_vec();
    let patched_columns: HashSet<usize> = patches.iter().map(|(_, c, _)| *c).collect();
    for c in patched_columns {
        let target = schema.field(c).data_type().clone();
        let mut arrays: Vec<ArrayRef> = vec![out[c].clone()];
        for s in &sources {
            let a = s.column(c);
            arrays.push(if a.data_type() == &target {
                a.clone()
            } else {
                arrow::compute::cast(a, &target).map_err(|e| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("cannot read back column {}: {e}", schema.field(c).name()),
                    )
                })?
            });
        }
        let mut indices: Vec<(usize, usize)> = (0..batch.num_rows()).map(|r| (0, r)).collect();
        for (r, pc, l) in patches {
            if *pc == c
                && let Some(&(src, i)) = where_is.get(&(l.file, l.pos))
            {
                indices[*r] = (src, i);
            }
        }
        let refs: Vec<&dyn Array> = arrays.iter().map(AsRef::as_ref).collect();
        out[c] = arrow::compute::interleave(&refs, &indices)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot fill unchanged values: {e}")))?;
    }
    RecordBatch::try_new(schema, out)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot fill unchanged values: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ColumnSpec;
    use crate::value::ColumnType;

    fn spec(key_kind: KeyKind) -> TableSpec {
        let column = |name: &str, column_type, key, attnum| ColumnSpec {
            name: name.into(),
            column_type,
            key,
            not_null: key,
            type_oid: 0,
            type_name: String::new(),
            attnum,
        };
        TableSpec {
            id: 1,
            schema: "public".into(),
            name: "docs".into(),
            columns: vec![
                column("id", ColumnType::Int64, true, 1),
                column("body", ColumnType::Text, false, 2),
            ],
            key_kind,
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(id: &str, body: Value) -> Row {
        vec![text(id), body]
    }

    fn change<'a>(buffer: &'a RowBuffer, key: &[&Value]) -> &'a Change {
        &buffer.entries[&text_key(key)].change
    }

    fn upsert(row: Row, fill_from: Option<&Value>) -> Change {
        Change::Upsert {
            row,
            fill_from: fill_from.map(|k| text_key(&[k])),
        }
    }

    #[test]
    fn the_last_change_of_a_key_wins() {
        let spec = spec(KeyKind::PrimaryKey);
        let keys = spec.key_columns();
        let mut buffer = RowBuffer::default();
        assert_eq!(
            buffer.insert(&spec, &keys, row("1", text("abc"))),
            (1 + 16) + (3 + 16)
        );
        buffer.update(&spec, &keys, None, row("1", text("b"))).unwrap();
        buffer.insert(&spec, &keys, row("2", text("c")));
        assert_eq!(buffer.delete(&spec, &keys, row("2", Value::Null)).unwrap(), 64);
        assert_eq!(buffer.entries.len(), 2);
        assert_eq!(change(&buffer, &[&text("1")]), &upsert(row("1", text("b")), None));
        assert_eq!(change(&buffer, &[&text("2")]), &Change::Delete);
        assert_eq!(buffer.entries[&text_key(&[&text("2")])].key_cells, [text("2")]);
        buffer.clear();
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_key_change_deletes_the_old_key() {
        let spec = spec(KeyKind::PrimaryKey);
        let keys = spec.key_columns();
        let mut buffer = RowBuffer::default();
        buffer.insert(&spec, &keys, row("1", text("a")));
        buffer
            .update(&spec, &keys, Some(row("1", Value::Null)), row("2", text("b")))
            .unwrap();
        assert_eq!(change(&buffer, &[&text("1")]), &Change::Delete);
        assert_eq!(change(&buffer, &[&text("2")]), &upsert(row("2", text("b")), None));
    }

    #[test]
    fn unchanged_values_come_from_the_old_row_then_the_buffer_then_the_lake() {
        let spec = spec(KeyKind::PrimaryKey);
        let keys = spec.key_columns();
        let mut buffer = RowBuffer::default();
        // A full old row supplies the value.
        buffer
            .update(
                &spec,
                &keys,
                Some(row("1", text("big"))),
                row("1", Value::Unchanged),
            )
            .unwrap();
        assert_eq!(
            change(&buffer, &[&text("1")]),
            &upsert(row("1", text("big")), None)
        );
        // The buffered version supplies it.
        buffer.insert(&spec, &keys, row("2", text("large")));
        buffer
            .update(&spec, &keys, None, row("2", Value::Unchanged))
            .unwrap();
        assert_eq!(
            change(&buffer, &[&text("2")]),
            &upsert(row("2", text("large")), None)
        );
        // Nothing buffered: the lake row of the key will.
        buffer
            .update(&spec, &keys, None, row("3", Value::Unchanged))
            .unwrap();
        assert_eq!(
            change(&buffer, &[&text("3")]),
            &upsert(row("3", Value::Unchanged), Some(&text("3")))
        );
    }

    #[test]
    fn the_lake_row_to_fill_from_follows_key_changes() {
        let spec = spec(KeyKind::PrimaryKey);
        let keys = spec.key_columns();
        let mut buffer = RowBuffer::default();
        buffer
            .update(
                &spec,
                &keys,
                Some(row("1", Value::Null)),
                row("2", Value::Unchanged),
            )
            .unwrap();
        assert_eq!(change(&buffer, &[&text("1")]), &Change::Delete);
        assert_eq!(
            change(&buffer, &[&text("2")]),
            &upsert(row("2", Value::Unchanged), Some(&text("1")))
        );
        // A later update of the new key still fills from the row of the old key.
        buffer
            .update(&spec, &keys, None, row("2", Value::Unchanged))
            .unwrap();
        assert_eq!(
            change(&buffer, &[&text("2")]),
            &upsert(row("2", Value::Unchanged), Some(&text("1")))
        );
    }

    #[test]
    fn whole_row_keys_count_each_row() {
        let spec = spec(KeyKind::FullRow);
        let keys = spec.key_columns();
        let mut buffer = RowBuffer::default();
        let (r, s) = (row("1", text("a")), row("1", text("b")));
        buffer.insert(&spec, &keys, r.clone());
        buffer.insert(&spec, &keys, r.clone());
        buffer.delete(&spec, &keys, r.clone()).unwrap();
        let net = |buffer: &RowBuffer, row: &Row| match change(buffer, &row.iter().collect::<Vec<_>>()) {
            Change::Net { net, .. } => *net,
            other => panic!("not a net change: {other:?}"),
        };
        assert_eq!(net(&buffer, &r), 1);
        // An update is a delete of the old row and an insert of the new, with unchanged
        // values taken from the old row.
        buffer
            .update(&spec, &keys, Some(r.clone()), row("1", Value::Unchanged))
            .unwrap();
        assert_eq!(net(&buffer, &r), 1);
        buffer.update(&spec, &keys, Some(r.clone()), s.clone()).unwrap();
        assert_eq!(net(&buffer, &r), 0);
        assert_eq!(net(&buffer, &s), 1);
    }

    #[test]
    fn changes_that_cannot_be_keyed_are_refused() {
        let full = spec(KeyKind::FullRow);
        let keys = full.key_columns();
        let mut buffer = RowBuffer::default();
        let err = buffer
            .update(&full, &keys, None, row("1", text("a")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .contains("public.docs arrived without its old row"),
            "{err}"
        );
        let err = buffer
            .update(
                &full,
                &keys,
                Some(row("1", Value::Unchanged)),
                row("1", text("a")),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("unchanged TOASTed value in its old row"),
            "{err}"
        );
        let err = buffer
            .delete(&full, &keys, row("1", Value::Unchanged))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("a delete from public.docs"), "{err}");
        assert!(buffer.is_empty());
    }
}
