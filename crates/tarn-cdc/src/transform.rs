//! Streaming SQL: a SQL transformation of a table's changes before the sink writes them (the
//! seed's "Spark Structured Streaming" box), `[[cdc.transforms]]` in the config.
//!
//! A transform names a source table (`schema.table`) and a `SELECT` over the relation
//! `changes`: the new rows of one micro-batch of that table, with the source's columns. It may
//! project, filter, derive columns and join lake tables (`cdc.customers`, any namespace of the
//! lake). [`Transformed`] wraps any [`ChangeSink`] and runs the transform with DataFusion:
//!
//! - **Schema.** The output columns (planned on an empty batch at attach, and again when the
//!   source's schema changes) are the table the sink creates and writes. They must keep the
//!   source's key columns under their names: the key identifies rows in the sink as in the
//!   source. A table without a key keeps whole rows as its identity.
//! - **Micro-batches.** Events are held until the transaction that contains them commits (or
//!   enough rows are held, then at the next commit), the new rows of each transformed table in
//!   the batch go through the SQL at once, and the events are handed on in their order with
//!   the transformed rows: an insert whose row the SQL filters out is dropped, an update whose
//!   new row is filtered out becomes a delete of its key (the row no longer qualifies), deletes
//!   and truncates pass with their keys. Transaction boundaries and positions pass unchanged,
//!   so the sink's exactly-once positions hold for the transformed table as for any other.
//! - **Copies.** A table copy's batches go through the same SQL before the sink's writer.
//!
//! A transform's SQL should be a function of the row (and of lookups): one that aggregates
//! across rows sees only a micro-batch. An unchanged TOASTed value (PostgreSQL did not resend
//! it) is taken from the old row when the source sent it, and is an error naming the table
//! otherwise — give such a table `REPLICA IDENTITY FULL`, or leave the column out of the
//! transform's source.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use tarn_core::config::{MaintenanceConfig, TransformConfig};
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tokio::sync::Mutex;

use crate::sink::{Attached, ChangeSink, TablePosition};
use crate::source::{
    BatchWriter, ColumnSpec, KeyKind, Position, Row, SourceEvent, TableId, TableSpec, Value,
};
use crate::value::ColumnType;
use crate::value::arrow_text::row_values;
use crate::value::builder::BatchBuilder;

/// The catalog the transforms' `changes` relation lives in.
const STREAM_CATALOG: &str = "tarn_stream";
/// Rows held before the next commit hands them on.
const MAX_HELD_ROWS: usize = 50_000;

/// The DataFusion side of the transforms: a context whose default schema holds `changes` and
/// whose other schemas are the lake's namespaces.
struct Engine {
    ctx: SessionContext,
    changes: Arc<MemorySchemaProvider>,
}

impl Engine {
    async fn new(lake: Lake) -> Result<Self> {
        let tarn = TarnSession::new(lake.clone()).await?;
        let lake_catalog = tarn
            .context()
            .catalog(lake.name())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the lake's catalog is not registered"))?;
        let catalog = Arc::new(MemoryCatalogProvider::new());
        let changes = Arc::new(MemorySchemaProvider::new());
        catalog
            .register_schema("public", changes.clone())
            .map_err(tarn_query::from_df_error)?;
        for name in lake_catalog.schema_names() {
            if name == "public" {
                continue;
            }
            if let Some(schema) = lake_catalog.schema(&name) {
                catalog
                    .register_schema(&name, schema)
                    .map_err(tarn_query::from_df_error)?;
            }
        }
        let mut config = tarn.context().copied_config();
        config.options_mut().catalog.default_catalog = STREAM_CATALOG.into();
        config.options_mut().catalog.default_schema = "public".into();
        let state = SessionStateBuilder::new_from_existing(tarn.context().state())
            .with_config(config)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(STREAM_CATALOG, catalog);
        Ok(Self { ctx, changes })
    }

    /// `sql` over `batch` as `changes`: its output schema and batches.
    async fn run(
        &self,
        sql: &str,
        batch: RecordBatch,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
        let schema = batch.schema();
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(tarn_query::from_df_error)?;
        self.changes
            .register_table("changes".into(), Arc::new(table))
            .map_err(tarn_query::from_df_error)?;
        let result = async {
            let frame = self.ctx.sql(sql).await?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            Ok((schema, frame.collect().await?))
        }
        .await;
        let _ = self.changes.deregister_table("changes");
        result.map_err(tarn_query::from_df_error)
    }
}

/// One source table's transform.
struct TableTransform {
    sql: String,
    source: Arc<TableSpec>,
    output: Arc<TableSpec>,
}

/// A sink whose tables are transformed by SQL first; see the module doc.
pub struct Transformed<K> {
    inner: K,
    lake: Lake,
    engine: Arc<Mutex<Engine>>,
    configured: HashMap<String, String>,
    tables: HashMap<TableId, TableTransform>,
    held: Vec<SourceEvent>,
    held_rows: usize,
    in_transaction: bool,
    pending_since: Option<Instant>,
}

fn transform_error(table: &str, message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("the transform of {table} (cdc.transforms): {message}"),
    )
}

/// The tarn column type of an output column, and the Arrow type its array is cast to.
fn column_type(field: &Field) -> Option<ColumnType> {
    Some(match field.data_type() {
        DataType::Boolean => ColumnType::Bool,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            ColumnType::Int32
        }
        DataType::Int64 | DataType::UInt32 => ColumnType::Int64,
        DataType::Float16 | DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Decimal128(p, s) if *s >= 0 => ColumnType::Decimal {
            precision: *p,
            scale: *s,
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Bytea,
        DataType::Date32 => ColumnType::Date,
        DataType::Time64(TimeUnit::Microsecond) => ColumnType::Time,
        DataType::Timestamp(_, None) => ColumnType::Timestamp,
        DataType::Timestamp(_, Some(_)) => ColumnType::TimestampTz,
        _ => return None,
    })
}

/// The spec of a transform's output: its columns, typed; the source's key kept by name.
fn output_spec(source: &TableSpec, schema: &Schema) -> Result<TableSpec> {
    let table = source.qualified();
    let mut columns = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let t = column_type(field).ok_or_else(|| {
            transform_error(
                &table,
                format!(
                    "column {} is of type {}, which tarn cannot store",
                    field.name(),
                    field.data_type()
                ),
            )
        })?;
        let key = source.columns.iter().any(|c| c.key && c.name == *field.name());
        columns.push(ColumnSpec::new(
            field.name(),
            t,
            key,
            i16::try_from(i + 1).unwrap_or(0),
        ));
    }
    if source.key_kind != KeyKind::PrimaryKey {
        return Err(transform_error(
            &table,
            "a transformed table needs a primary key (its output rows are matched to its changes by key)",
        ));
    }
    {
        let missing: Vec<&str> = source
            .columns
            .iter()
            .filter(|c| c.key && !columns.iter().any(|o| o.name == c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(transform_error(
                &table,
                format!(
                    "the output must keep the key column(s) {} under their names",
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(TableSpec {
        id: source.id,
        schema: source.schema.clone(),
        name: source.name.clone(),
        key_kind: source.key_kind,
        columns,
    })
}

/// `batch` with every column cast to its output column's Arrow type.
fn conform(batch: &RecordBatch, spec: &TableSpec) -> Result<RecordBatch> {
    let schema = crate::value::builder::arrow_schema(spec);
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| transform_error(&spec.qualified(), format!("cannot convert its output: {e}")))?;
    RecordBatch::try_new(schema, columns)
        .map_err(|e| transform_error(&spec.qualified(), format!("cannot convert its output: {e}")))
}

/// Rows of `spec` (text cells) as one Arrow batch.
fn rows_batch(spec: &TableSpec, rows: &[&Row]) -> Result<RecordBatch> {
    let mut builder = BatchBuilder::new(spec, rows.len());
    for row in rows {
        let cells: Vec<Option<&[u8]>> = row
            .iter()
            .zip(&spec.columns)
            .map(|(v, c)| match v {
                Value::Null => Ok(None),
                Value::Text(b) => Ok(Some(&b[..])),
                Value::Unchanged | Value::Binary(_) => Err(transform_error(
                    &spec.qualified(),
                    format!(
                        "column {} arrived as an unchanged TOASTed value without its old row; give the table \
                         REPLICA IDENTITY FULL",
                        c.name
                    ),
                )),
            })
            .collect::<Result<_>>()?;
        builder.append(&cells)?;
    }
    builder.finish()
}

/// The output row of a key-only source row (a delete's old key): the key cells by name,
/// NULL elsewhere.
fn key_row(t: &TableTransform, row: &Row) -> Row {
    t.output
        .columns
        .iter()
        .map(|c| {
            t.source
                .columns
                .iter()
                .position(|s| s.name == c.name && s.key)
                .and_then(|i| row.get(i).cloned())
                .unwrap_or(Value::Null)
        })
        .collect()
}

impl<K: ChangeSink> Transformed<K> {
    /// `inner` with `transforms` applied, lookups against `lake`.
    pub async fn new(inner: K, transforms: &[TransformConfig], lake: Lake) -> Result<Self> {
        Ok(Self {
            inner,
            engine: Arc::new(Mutex::new(Engine::new(lake.clone()).await?)),
            lake,
            configured: transforms
                .iter()
                .map(|t| (t.table.clone(), t.sql.clone()))
                .collect(),
            tables: HashMap::new(),
            held: Vec::new(),
            held_rows: 0,
            in_transaction: false,
            pending_since: None,
        })
    }

    /// The transform of `spec`, planned on an empty batch, if one is configured.
    async fn plan(&self, spec: &Arc<TableSpec>) -> Result<Option<TableTransform>> {
        let Some(sql) = self.configured.get(&spec.qualified()) else {
            return Ok(None);
        };
        let empty = rows_batch(spec, &[])?;
        let schema = {
            let mut engine = self.engine.lock().await;
            // The lake's namespaces as they are now (a lookup's table may be new).
            *engine = Engine::new(self.lake.clone()).await?;
            engine
                .run(sql, empty)
                .await
                .map_err(|e| transform_error(&spec.qualified(), e))?
                .0
        };
        let output = output_spec(spec, &schema)?;
        tracing::info!(table = %spec.qualified(), columns = output.columns.len(), "transforming with SQL");
        Ok(Some(TableTransform {
            sql: sql.clone(),
            source: spec.clone(),
            output: Arc::new(output),
        }))
    }

    /// The transformed rows of `rows` (output spec; at most one row per key), `None` for a
    /// row the SQL filtered out. Output rows are matched back to their input by key.
    async fn transform_rows(&self, t: &TableTransform, rows: &[&Row]) -> Result<Vec<Option<Row>>> {
        let batch = rows_batch(&t.source, rows)?;
        let (_, out) = self.engine.lock().await.run(&t.sql, batch.clone()).await?;
        let key_of_output: Vec<usize> = t
            .output
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let mut by_key: HashMap<Vec<Value>, Row> = HashMap::new();
        for b in &out {
            let b = conform(b, &t.output)?;
            for r in 0..b.num_rows() {
                let row = row_values(&b, r, &t.output)?;
                let key = key_of_output.iter().map(|&i| row[i].clone()).collect();
                if by_key.insert(key, row).is_some() {
                    return Err(transform_error(
                        &t.source.qualified(),
                        "its output has two rows of one key; a transform keeps at most one row per changed row",
                    ));
                }
            }
        }
        // The keys as Arrow renders them (the output's key columns keep the source's types).
        let key_of_source = t.source.key_columns();
        (0..rows.len())
            .map(|r| {
                let row = row_values(&batch, r, &t.source)?;
                let key: Vec<Value> = key_of_source.iter().map(|&i| row[i].clone()).collect();
                Ok(by_key.get(&key).cloned())
            })
            .collect()
    }

    /// Hands the held events on, the new rows of transformed tables through their SQL.
    async fn release(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.held);
        self.held_rows = 0;
        // The rows to transform, per table: the last new row of each key (earlier versions
        // in the batch are superseded, as the sink would collapse them).
        let mut last: HashMap<(TableId, Vec<Value>), usize> = HashMap::new();
        for (i, event) in held.iter().enumerate() {
            if let SourceEvent::Insert { table, new } | SourceEvent::Update { table, new, .. } = event
                && let Some(t) = self.tables.get(table)
            {
                let key = t.source.key_columns().iter().map(|&k| new[k].clone()).collect();
                last.insert((*table, key), i);
            }
        }
        let latest: std::collections::HashSet<usize> = last.values().copied().collect();
        let mut rows: HashMap<TableId, (Vec<usize>, Vec<&Row>)> = HashMap::new();
        for &i in &latest {
            if let SourceEvent::Insert { table, new } | SourceEvent::Update { table, new, .. } = &held[i] {
                let entry = rows.entry(*table).or_default();
                entry.0.push(i);
                entry.1.push(new);
            }
        }
        // Each transformed row, by the index of its event.
        let mut results: HashMap<usize, Option<Row>> = HashMap::new();
        for (id, (indexes, table_rows)) in &rows {
            let out = self.transform_rows(&self.tables[id], table_rows).await?;
            results.extend(indexes.iter().copied().zip(out));
        }
        drop(rows);
        for (i, event) in held.into_iter().enumerate() {
            let event = match event {
                SourceEvent::Insert { table, .. } if self.tables.contains_key(&table) => {
                    match results.remove(&i).flatten() {
                        Some(new) => SourceEvent::Insert { table, new },
                        // Filtered out, or superseded later in the batch.
                        None => continue,
                    }
                }
                SourceEvent::Update { table, .. }
                    if self.tables.contains_key(&table) && !results.contains_key(&i) =>
                {
                    // Superseded later in the batch.
                    continue;
                }
                SourceEvent::Update { table, old, new } if self.tables.contains_key(&table) => {
                    let t = &self.tables[&table];
                    let old = old.map(|o| key_row(t, &o));
                    match results.remove(&i).flatten() {
                        Some(out) => SourceEvent::Update { table, old, new: out },
                        // Filtered out: the row no longer qualifies.
                        None => SourceEvent::Delete {
                            table,
                            old: old.unwrap_or_else(|| key_row(t, &new)),
                        },
                    }
                }
                SourceEvent::Delete { table, old } if self.tables.contains_key(&table) => {
                    SourceEvent::Delete {
                        table,
                        old: key_row(&self.tables[&table], &old),
                    }
                }
                other => other,
            };
            self.inner.apply(event).await?;
        }
        self.pending_since = None;
        Ok(())
    }
}

/// A copy connection's writer: each batch through the table's SQL, then the inner writer.
pub struct TransformedWriter<W> {
    inner: W,
    transform: Option<(String, Arc<TableSpec>, Arc<Mutex<Engine>>)>,
}

#[async_trait::async_trait]
impl<W: BatchWriter> BatchWriter for TransformedWriter<W> {
    type Output = W::Output;

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let Some((sql, output, engine)) = &self.transform else {
            return self.inner.write(batch).await;
        };
        let (_, out) = engine.lock().await.run(sql, batch).await?;
        for b in out {
            if b.num_rows() > 0 {
                self.inner.write(conform(&b, output)?).await?;
            }
        }
        Ok(())
    }

    async fn finish(self) -> Result<W::Output> {
        self.inner.finish().await
    }
}

impl<K: ChangeSink> ChangeSink for Transformed<K> {
    type Copy = K::Copy;
    type CopyPart = K::CopyPart;
    type CopyWriter = TransformedWriter<K::CopyWriter>;

    fn has_table(&self, id: TableId) -> bool {
        self.inner.has_table(id)
    }

    fn table_positions(&self) -> Vec<TablePosition> {
        self.inner.table_positions()
    }

    fn pending_events(&self) -> u64 {
        self.inner.pending_events() + self.held_rows as u64
    }

    fn pending_bytes(&self) -> usize {
        self.inner.pending_bytes()
    }

    fn pending_since(&self) -> Option<Instant> {
        match (self.inner.pending_since(), self.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn last_commit(&self) -> Option<(Position, i64)> {
        self.inner.last_commit()
    }

    async fn attach(&mut self, spec: Arc<TableSpec>) -> Result<Attached> {
        match self.plan(&spec).await? {
            Some(t) => {
                let output = t.output.clone();
                self.tables.insert(spec.id, t);
                self.inner.attach(output).await
            }
            None => self.inner.attach(spec).await,
        }
    }

    async fn apply(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Relation(spec) if self.configured.contains_key(&spec.qualified()) => {
                // A schema change: what was held is transformed with the old spec first.
                self.release().await?;
                if let Some(t) = self.plan(&spec).await? {
                    let output = t.output.clone();
                    self.tables.insert(spec.id, t);
                    self.inner.apply(SourceEvent::Relation(output)).await?;
                }
                Ok(())
            }
            SourceEvent::Begin { .. } => {
                self.in_transaction = true;
                self.held.push(event);
                Ok(())
            }
            SourceEvent::Commit { .. } => {
                self.in_transaction = false;
                self.held.push(event);
                if self.held_rows >= MAX_HELD_ROWS {
                    self.release().await?;
                }
                Ok(())
            }
            event => {
                if matches!(event, SourceEvent::Insert { .. } | SourceEvent::Update { .. }) {
                    self.held_rows += 1;
                    self.pending_since.get_or_insert_with(Instant::now);
                }
                self.held.push(event);
                Ok(())
            }
        }
    }

    async fn spill_if_needed(&mut self) -> Result<()> {
        self.inner.spill_if_needed().await
    }

    async fn mark_idle(&mut self, position: &Position) -> Result<()> {
        self.inner.mark_idle(position).await
    }

    async fn flush(&mut self) -> Result<Option<Position>> {
        self.release().await?;
        self.inner.flush().await
    }

    async fn begin_copy(&mut self, id: TableId, position: &Position) -> Result<Self::Copy> {
        self.inner.begin_copy(id, position).await
    }

    fn copy_writer(&self, id: TableId, part: usize, copy: &Self::Copy) -> Result<Self::CopyWriter> {
        Ok(TransformedWriter {
            inner: self.inner.copy_writer(id, part, copy)?,
            transform: self
                .tables
                .get(&id)
                .map(|t| (t.sql.clone(), t.output.clone(), self.engine.clone())),
        })
    }

    async fn finish_copy(
        &mut self,
        id: TableId,
        parts: Vec<Self::CopyPart>,
        copy: Self::Copy,
        position: Position,
        kind: &str,
    ) -> Result<u64> {
        self.inner.finish_copy(id, parts, copy, position, kind).await
    }

    fn flush_interval(&self) -> Option<std::time::Duration> {
        self.inner.flush_interval()
    }

    async fn maintain(&mut self, config: &MaintenanceConfig) -> Result<()> {
        self.release().await?;
        self.inner.maintain(config).await
    }
}
