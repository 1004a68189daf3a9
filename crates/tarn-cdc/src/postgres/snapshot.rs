//! Copies tables inside an exported snapshot: the initial snapshot of a pipeline, and the
//! snapshot of a table added later.
//!
//! A table is split into chunks — ranges of heap pages (`ctid`), read by a TID range scan on
//! PostgreSQL 14 and later; on older servers ranges of an integer primary key where the table
//! has one (a `ctid` range is a full scan there) — that `parallelism` connections copy at
//! once, each inside `SET TRANSACTION SNAPSHOT` of the same exported snapshot, so together
//! they read exactly the table as of the slot's consistent point. Each connection streams
//! `COPY (SELECT ...) TO STDOUT` rows into Arrow batches of [`BATCH_ROWS`] and hands them to
//! its own [`crate::source::BatchWriter`]; memory stays bounded by one batch and the writer's
//! buffers per connection.
//!
//! The copy is in PostgreSQL's binary format when every column has a binary reader
//! ([`BinaryFormat::of`]: integers, floats, `numeric`, `bool`, text types, `bytea`, dates,
//! times, timestamps), in text format otherwise. Both land every value identically; binary
//! spares PostgreSQL the text formatting of timestamps and numerics and tarn its parsing, and
//! a page range spares PostgreSQL the primary key's index: on two cores shared by PostgreSQL
//! and tarn, what PostgreSQL does per row bounds the copy as much as what tarn does
//! (BENCHMARKS.md, "Change data capture").

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tarn_core::{Error, ErrorKind, Result};
use tokio::sync::Mutex;

use super::connect::{SourceAddress, query_error, quote_ident, quote_literal};
use super::copy_binary::CopyBinaryReader;
use super::copy_text::CopyTextReader;
use crate::source::{BatchWriter, CopyProgress, TableSpec};
use crate::value::ColumnType;
use crate::value::binary::BinaryFormat;
use crate::value::builder::BatchBuilder;

/// Rows per Arrow batch handed to a writer.
pub const BATCH_ROWS: usize = 8192;

/// How to copy one table.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    /// The table.
    pub spec: Arc<TableSpec>,
    /// The exported snapshot to read in.
    pub snapshot_name: String,
    /// Parallel connections.
    pub parallelism: usize,
    /// Target rows per chunk.
    pub chunk_rows: u64,
}

fn is_integer(t: &ColumnType) -> bool {
    matches!(t, ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64)
}

async fn begin_in_snapshot(client: &tokio_postgres::Client, snapshot: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| query_error(format!("cannot use exported snapshot {snapshot}"), e))
}

/// Splits a table into `WHERE` conditions of about `chunk_rows` rows each.
async fn plan_chunks(
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    chunk_rows: u64,
) -> Result<Vec<String>> {
    let table = format!("{}.{}", quote_ident(&spec.schema), quote_ident(&spec.name));
    let stats = client
        .query_one(
            "SELECT greatest(reltuples, 0)::float8, relpages::int8, \
             current_setting('server_version_num')::int4 FROM pg_class WHERE oid = $1",
            &[&spec.id],
        )
        .await
        .map_err(|e| query_error(format!("cannot read the size of {}", spec.qualified()), e))?;
    let tuples: f64 = stats.get(0);
    let pages: i64 = stats.get(1);
    let server_version: i32 = stats.get(2);
    let chunks = ((tuples / chunk_rows as f64).ceil() as i64).max(1);
    if chunks <= 1 {
        return Ok(vec!["true".into()]);
    }
    let keys = spec.key_columns();
    // PostgreSQL 14 reads a ctid range with a TID range scan: sequential heap pages, cheaper
    // than walking the primary key's index. Before 14 it would scan the whole table per chunk.
    if server_version < 140_000
        && spec.key_kind == crate::source::KeyKind::PrimaryKey
        && keys.len() == 1
        && is_integer(&spec.columns[keys[0]].column_type)
    {
        let key = quote_ident(&spec.columns[keys[0]].name);
        let row = client
            .query_one(
                &format!("SELECT min({key})::int8, max({key})::int8 FROM {table}"),
                &[],
            )
            .await
            .map_err(|e| query_error(format!("cannot read the key range of {}", spec.qualified()), e))?;
        let (Some(min), Some(max)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) else {
            return Ok(vec!["true".into()]);
        };
        let span = (i128::from(max) - i128::from(min) + 1).max(1);
        let step = (span / i128::from(chunks)).max(1);
        let mut out = Vec::new();
        let mut lo = i128::from(min);
        while lo <= i128::from(max) {
            let hi = lo + step;
            if hi > i128::from(max) {
                out.push(format!("{key} >= {lo}"));
            } else {
                out.push(format!("{key} >= {lo} AND {key} < {hi}"));
            }
            lo = hi;
        }
        return Ok(out);
    }
    if pages <= 1 {
        return Ok(vec!["true".into()]);
    }
    let step = (pages / chunks).max(1);
    let mut out = Vec::new();
    let mut lo = 0i64;
    while lo < pages {
        let hi = lo + step;
        if hi >= pages {
            out.push(format!("ctid >= '({lo},0)'::tid"));
        } else {
            out.push(format!("ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid"));
        }
        lo = hi;
    }
    Ok(out)
}

/// Copies `request.spec` into writers made by `make_writer` (one per connection), returning
/// each writer's output.
pub async fn copy_table<W, F>(
    address: &SourceAddress,
    request: &CopyRequest,
    make_writer: F,
    progress: Arc<CopyProgress>,
) -> Result<Vec<W::Output>>
where
    W: BatchWriter + 'static,
    F: Fn(usize) -> Result<W>,
{
    let spec = request.spec.clone();
    let planner = address.connect().await?;
    begin_in_snapshot(&planner, &request.snapshot_name).await?;
    let chunks = plan_chunks(&planner, &spec, request.chunk_rows).await?;
    drop(planner);
    progress.chunks.fetch_add(chunks.len() as u64, Ordering::Relaxed);
    let workers = request.parallelism.min(chunks.len()).max(1);
    let queue = Arc::new(Mutex::new(chunks));
    let columns = spec
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let table = format!("{}.{}", quote_ident(&spec.schema), quote_ident(&spec.name));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..workers {
        let writer = make_writer(i)?;
        let client = address.connect().await?;
        begin_in_snapshot(&client, &request.snapshot_name).await?;
        let (queue, spec, progress) = (queue.clone(), spec.clone(), progress.clone());
        let (columns, table) = (columns.clone(), table.clone());
        tasks.spawn(async move {
            let mut writer = writer;
            loop {
                let Some(condition) = queue.lock().await.pop() else {
                    break;
                };
                copy_chunk(
                    &client,
                    &spec,
                    &columns,
                    &table,
                    &condition,
                    &mut writer,
                    &progress,
                )
                .await?;
                progress.chunks_done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.batch_execute("COMMIT").await;
            writer.finish().await
        });
    }
    let mut outputs = Vec::with_capacity(workers);
    while let Some(joined) = tasks.join_next().await {
        let output = joined
            .map_err(|e| Error::new(ErrorKind::Internal, "a snapshot copy task failed").with_source(e))??;
        outputs.push(output);
    }
    Ok(outputs)
}

async fn copy_chunk<W: BatchWriter>(
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    columns: &str,
    table: &str,
    condition: &str,
    writer: &mut W,
    progress: &CopyProgress,
) -> Result<()> {
    let mut reader = match binary_formats(spec) {
        Some(formats) => Reader::Binary(CopyBinaryReader::new(spec.columns.len()), formats),
        None => Reader::Text(CopyTextReader::new(spec.columns.len())),
    };
    let sql = format!(
        "COPY (SELECT {columns} FROM {table} WHERE {condition}) TO STDOUT{}",
        if matches!(reader, Reader::Binary(..)) {
            " (FORMAT binary)"
        } else {
            ""
        }
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| query_error(format!("cannot copy {}", spec.qualified()), e))?;
    futures::pin_mut!(stream);
    let mut batch = BatchBuilder::new(spec, BATCH_ROWS);
    // Counted per batch: PostgreSQL sends a message per row, and an atomic shared by the copy
    // connections updated per row costs a cache-line transfer each time.
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| query_error(format!("copying {} failed", spec.qualified()), e))?;
        bytes += chunk.len() as u64;
        match &mut reader {
            Reader::Binary(r, formats) => r.push(&chunk, |row| batch.append_binary(row, formats))?,
            Reader::Text(r) => r.push(&chunk, |row| batch.append(row))?,
        }
        if batch.len() >= BATCH_ROWS {
            let rows = batch.len() as u64;
            writer.write(batch.finish()?).await?;
            progress.rows.fetch_add(rows, Ordering::Relaxed);
            progress
                .bytes
                .fetch_add(std::mem::take(&mut bytes), Ordering::Relaxed);
        }
    }
    progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    match reader {
        Reader::Binary(r, _) => r.finish()?,
        Reader::Text(r) => r.finish()?,
    }
    if !batch.is_empty() {
        let rows = batch.len() as u64;
        writer.write(batch.finish()?).await?;
        progress.rows.fetch_add(rows, Ordering::Relaxed);
    }
    Ok(())
}

enum Reader {
    Binary(CopyBinaryReader, Vec<BinaryFormat>),
    Text(CopyTextReader),
}

/// The binary reader of every column of `spec`, `None` if one has none (the copy is in text).
pub fn binary_formats(spec: &TableSpec) -> Option<Vec<BinaryFormat>> {
    spec.columns
        .iter()
        .map(|c| BinaryFormat::of(c.type_oid, &c.column_type))
        .collect()
}
