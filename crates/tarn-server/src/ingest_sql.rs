//! `tarn ingest sql`: the rows of a query against a PostgreSQL or CockroachDB database into an
//! Iceberg table, in full or incrementally by a cursor column.
//!
//! The source connects as the CDC source does ([`SourceAddress`]: a `postgres://` URL, TLS by
//! libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey`, the same session settings), and column
//! types map as CDC maps them (`docs/cdc-types.md`; `cdc.unconstrained_numeric` and
//! `cdc.unsupported_types` apply). Rows stream with `COPY (SELECT ...) TO STDOUT` into Arrow
//! batches of `--batch-rows`, written to data files as they come.
//!
//! Modes:
//!
//! - full (no `--cursor`): the table's rows are replaced by the query's in one overwrite
//!   commit at the end; a run that stops before leaves the table as it was;
//! - incremental (`--cursor COLUMN`): the query's rows with a cursor greater than the table's
//!   high-water mark, in cursor order (rows whose cursor is NULL are skipped), appended — or
//!   with `--primary-key`, upserted: the row of the greatest cursor of each key replaces the
//!   table's row of that key (one row delta of data files and position deletes).
//!
//! Exactly once: the high-water mark (the cursor's text as the source prints it) is stored in
//! the snapshot summary of the commit that holds the rows up to it (`tarn.sql.cursor`), so a
//! killed run resumes after the last commit. Commits happen every `--commit-rows` rows, but
//! only between two different cursor values: the rows of one cursor value are committed
//! together, so resuming with "greater than the mark" skips none of them. Rows that appear in
//! the source later with a cursor at or below the mark (a transaction that committed late, a
//! clock going back) are not read: the known limit of cursor-based sync, as in Airbyte. With
//! `--primary-key` the next run reads from the mark inclusive (`>=`), and the upsert makes
//! the re-read rows replace themselves, which also picks up late rows of the mark's value.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::RecordBatch;
use clap::Args;
use futures::StreamExt;
use iceberg::table::Table;
use tarn_cdc::postgres::catalog::TypeCache;
use tarn_cdc::postgres::connect::{SourceAddress, query_error, quote_ident, quote_literal};
use tarn_cdc::postgres::copy_text::CopyTextReader;
use tarn_cdc::source::{ColumnSpec, KeyKind, TableSpec};
use tarn_cdc::value::builder::{BatchBuilder, arrow_schema};
use tarn_core::Config;
use tarn_lake::{DataWriter, Lake, Overwrite, RowDelta, TableLayout};

/// The snapshot summary key holding the high-water mark of the rows a commit covers.
pub const CURSOR_KEY: &str = "tarn.sql.cursor";
/// The snapshot summary key naming the cursor column of the mark.
pub const CURSOR_COLUMN_KEY: &str = "tarn.sql.cursor_column";

/// `tarn ingest sql`'s flags.
#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// The source database: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=CA.pem]`
    /// (PostgreSQL or CockroachDB; TLS parameters as libpq's). Default: `cdc.source` of the
    /// config.
    #[arg(long, env = "TARN_INGEST_SOURCE", value_name = "URL")]
    pub source: Option<String>,
    /// The query whose rows land in the table, e.g. `SELECT id, name, updated_at FROM
    /// public.users`. Its column names and types become the table's.
    #[arg(long, value_name = "SQL")]
    pub query: String,
    /// The table, `NS.NAME`: created from the query's columns when missing (its namespace
    /// too).
    #[arg(long, value_name = "NS.NAME")]
    pub table: String,
    /// Incremental: the column of the query that orders its rows (e.g. `updated_at` or an
    /// increasing id). Each run reads the rows past the high-water mark the table holds.
    /// Without it every run reads all rows and replaces the table's.
    #[arg(long, value_name = "COLUMN")]
    pub cursor: Option<String>,
    /// Upsert by these columns (comma-separated): a row replaces the table's row of the same
    /// key (with `--cursor`; without it the run replaces the table's rows anyway). They become
    /// the table's identifier fields and must not be NULL.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    pub primary_key: Vec<String>,
    /// Rows per Arrow batch.
    #[arg(long, default_value_t = 10_000, value_name = "ROWS")]
    pub batch_rows: usize,
    /// Incremental: commit once this many rows are pending (at the next change of the
    /// cursor's value). Upserts hold the pending rows in memory.
    #[arg(long, default_value_t = 500_000, value_name = "ROWS")]
    pub commit_rows: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Rows read from the source.
    pub rows: u64,
    /// Commits made.
    pub commits: u64,
    /// The high-water mark after the run (incremental).
    pub mark: Option<String>,
}

/// Runs `tarn ingest sql`.
pub async fn run(args: SqlArgs, config: Config) -> Result<ExitCode> {
    let outcome = ingest(&args, &config).await?;
    let mark = outcome
        .mark
        .as_ref()
        .map(|m| format!("; {} is now past {m}", args.cursor.as_deref().unwrap_or_default()))
        .unwrap_or_default();
    eprintln!(
        "{} row(s) into {} in {} commit(s){mark}",
        outcome.rows, args.table, outcome.commits
    );
    Ok(ExitCode::SUCCESS)
}

/// The mark the table's last commit of `cursor` holds.
fn stored_mark(table: &Table, cursor: &str) -> Result<Option<String>> {
    let metadata = table.metadata();
    let mut snapshot = metadata.current_snapshot().cloned();
    while let Some(s) = snapshot {
        let props = &s.summary().additional_properties;
        if let Some(mark) = props.get(CURSOR_KEY) {
            let column = props
                .get(CURSOR_COLUMN_KEY)
                .map(String::as_str)
                .unwrap_or_default();
            if column != cursor {
                bail!(
                    "table {} was synced by cursor column {column:?}, not {cursor:?}: use --cursor {column}, \
                     or a new table",
                    table.identifier()
                );
            }
            return Ok(Some(mark.clone()));
        }
        snapshot = s
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
    }
    Ok(None)
}

/// Runs the ingestion; see the module doc.
pub async fn ingest(args: &SqlArgs, config: &Config) -> Result<Outcome> {
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    let source = args
        .source
        .clone()
        .or_else(|| config.cdc.source.clone())
        .ok_or_else(|| {
            anyhow!("give the source database with --source postgres://... (or cdc.source in the config)")
        })?;
    let address = SourceAddress::parse(&source).map_err(|e| {
        anyhow!(
            "--source: {}",
            e.to_string().replace("cdc.source", "the source URL")
        )
    })?;
    let ident =
        tarn_lake::parse_table_name(&args.table).map_err(|e| anyhow!("--table {}: {e}", args.table))?;
    let query = args.query.trim().trim_end_matches(';').trim();
    if query.is_empty() {
        bail!("--query is empty");
    }
    let client = address.connect().await?;
    // The query's columns, without running it.
    let statement = client
        .prepare(&format!("SELECT * FROM ({query}) AS tarn_q"))
        .await
        .map_err(|e| query_error("the query cannot run", e))?;
    let types = TypeCache::load(&client).await?;
    let options = tarn_cdc::postgres::type_options(&config.cdc);
    let mut columns = Vec::new();
    for c in statement.columns() {
        if columns.iter().any(|s: &ColumnSpec| s.name == c.name()) {
            bail!(
                "the query returns two columns named {:?}: give them distinct names (AS)",
                c.name()
            );
        }
        let typmod = match (c.table_oid(), c.column_id()) {
            (Some(table), Some(attnum)) if table != 0 && attnum > 0 => client
                .query_opt(
                    "SELECT atttypmod FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                    &[&table, &attnum],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i32>(0))
                .unwrap_or(-1),
            _ => -1,
        };
        let column_type = types.resolve(c.name(), c.type_().oid(), typmod, &options)?;
        let key = args.primary_key.iter().any(|k| k == c.name());
        columns.push(ColumnSpec {
            name: c.name().to_string(),
            column_type,
            key,
            not_null: key,
            type_oid: c.type_().oid(),
            type_name: c.type_().name().to_string(),
            attnum: 0,
        });
    }
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    for k in &args.primary_key {
        if !names.contains(&k.as_str()) {
            bail!(
                "--primary-key {k}: the query has no such column (it has {})",
                names.join(", ")
            );
        }
    }
    let cursor_index = match &args.cursor {
        Some(c) => Some(names.iter().position(|n| n == c).ok_or_else(|| {
            anyhow!(
                "--cursor {c}: the query has no such column (it has {})",
                names.join(", ")
            )
        })?),
        None => None,
    };
    let key_kind = KeyKind::of(&columns);
    let spec = Arc::new(TableSpec {
        id: 0,
        schema: ident.namespace().join("."),
        name: ident.name().to_string(),
        columns,
        key_kind,
    });
    let schema = arrow_schema(&spec);

    // The table, and where the last run stopped.
    let lake = Lake::open(config).await?;
    if !lake.namespace_exists(ident.namespace()).await? {
        lake.create_namespace(ident.namespace(), true).await?;
    }
    let table = if lake.table_exists(&ident).await? {
        let table = lake.load_table(&ident).await?;
        check_columns(&table, &schema)?;
        table
    } else {
        let keys: Vec<&str> = args.primary_key.iter().map(String::as_str).collect();
        let iceberg_schema = tarn_lake::iceberg_schema_with_keys(&schema, &keys)?;
        tracing::info!(table = %ident, "creating the table from the query's columns");
        lake.create_table_with_schema(&ident, iceberg_schema, &TableLayout::default())
            .await?
    };
    let mark = match &args.cursor {
        Some(c) => stored_mark(&table, c)?,
        None => None,
    };
    let sql = match &args.cursor {
        None => format!("COPY (SELECT * FROM ({query}) AS tarn_q) TO STDOUT"),
        Some(c) => {
            let column = format!("tarn_q.{}", quote_ident(c));
            let condition = match &mark {
                // Upserts re-read the mark's rows (they replace themselves); appends cannot.
                Some(m) if args.primary_key.is_empty() => format!("{column} > {}", quote_literal(m)),
                Some(m) => format!("{column} >= {}", quote_literal(m)),
                None => format!("{column} IS NOT NULL"),
            };
            format!("COPY (SELECT * FROM ({query}) AS tarn_q WHERE {condition} ORDER BY {column}) TO STDOUT")
        }
    };
    if let Some(m) = &mark {
        tracing::info!(table = %ident, mark = m, "resuming past the table's high-water mark");
    }
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| query_error("the query failed", e))?;
    futures::pin_mut!(stream);

    let order = table_order(&schema, &table)?;
    let mut run = Run {
        lake: &lake,
        table,
        args,
        order,
        writer: None,
        held: Vec::new(),
        commits: 0,
        mark: mark.clone(),
        query: query.to_string(),
    };
    let mut reader = CopyTextReader::new(spec.columns.len());
    let mut cut = Cutter {
        builder: BatchBuilder::new(&spec, args.batch_rows),
        batches: Vec::new(),
        pending: 0,
        last: None,
        want_cut: false,
        cut: None,
        batch_rows: args.batch_rows,
        commit_rows: args.commit_rows.max(1),
        cursor: cursor_index,
    };
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut rows: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| query_error("the query failed", e))?;
        let before = reader.rows();
        reader.push(&chunk, |row| cut.push(row))?;
        rows += reader.rows() - before;
        if let Some((batches, mark)) = cut.cut.take() {
            run.take(batches).await?;
            run.commit(mark).await?;
        }
        let ready = std::mem::take(&mut cut.batches);
        run.take(ready).await?;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(rows, rate = format!("{:.0}/s", rows as f64 / secs), table = %ident, "ingesting");
        }
    }
    reader.finish()?;
    let mut rest = std::mem::take(&mut cut.batches);
    if !cut.builder.is_empty() {
        rest.push(cut.builder.finish()?);
    }
    run.take(rest).await?;
    if args.cursor.is_some() {
        let last = cut.last.map(|l| String::from_utf8_lossy(&l).into_owned());
        if let Some(last) = last {
            run.commit(Some(last)).await?;
        }
    } else {
        run.overwrite().await?;
    }
    Ok(Outcome {
        rows,
        commits: run.commits,
        mark: run.mark,
    })
}

/// Checks that the query's columns are columns of `table`.
fn check_columns(table: &Table, schema: &arrow::datatypes::Schema) -> Result<()> {
    let stored = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| anyhow!("cannot map the schema of {}: {e}", table.identifier()))?;
    for field in schema.fields() {
        if stored.field_with_name(field.name()).is_err() {
            bail!(
                "column {} of the query is not a column of {} (it has {})",
                field.name(),
                table.identifier(),
                stored
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// For each of the table's columns, the query's column of that name (by index), if any.
fn table_order(schema: &arrow::datatypes::Schema, table: &Table) -> Result<Vec<Option<usize>>> {
    let stored = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| anyhow!("cannot map the schema of {}: {e}", table.identifier()))?;
    Ok(stored
        .fields()
        .iter()
        .map(|f| schema.index_of(f.name()).ok())
        .collect())
}

/// Splits the rows into commits: every `commit_rows` rows, at the first change of the
/// cursor's value after that.
struct Cutter {
    builder: BatchBuilder,
    /// Full batches not handed on yet.
    batches: Vec<RecordBatch>,
    /// Rows since the last cut.
    pending: u64,
    /// The cursor text of the last row.
    last: Option<Vec<u8>>,
    want_cut: bool,
    /// Batches ending at a cut (after the batches handed on before) and the mark of the cut.
    cut: Option<(Vec<RecordBatch>, Option<String>)>,
    batch_rows: usize,
    commit_rows: u64,
    cursor: Option<usize>,
}

impl Cutter {
    fn push(&mut self, row: &[Option<&[u8]>]) -> tarn_core::Result<()> {
        if let Some(i) = self.cursor {
            let value = row[i];
            if self.want_cut && self.cut.is_none() && self.last.as_deref() != value {
                // The rows so far end with a whole group of their cursor value: cut here.
                let mut batches = std::mem::take(&mut self.batches);
                if !self.builder.is_empty() {
                    batches.push(self.builder.finish()?);
                }
                let mark = self
                    .last
                    .as_ref()
                    .map(|l| String::from_utf8_lossy(l).into_owned());
                self.cut = Some((batches, mark));
                self.pending = 0;
                self.want_cut = false;
            }
            self.last = value.map(<[u8]>::to_vec);
        }
        self.builder.append(row)?;
        self.pending += 1;
        if self.builder.len() >= self.batch_rows {
            self.batches.push(self.builder.finish()?);
        }
        if self.cursor.is_some() && self.pending >= self.commit_rows {
            self.want_cut = true;
        }
        Ok(())
    }
}

/// The writing side of a run.
struct Run<'a> {
    lake: &'a Lake,
    table: Table,
    args: &'a SqlArgs,
    /// The query's column of each table column.
    order: Vec<Option<usize>>,
    writer: Option<DataWriter>,
    /// Upserts: the rows since the last commit.
    held: Vec<RecordBatch>,
    commits: u64,
    mark: Option<String>,
    query: String,
}

impl Run<'_> {
    fn upsert(&self) -> bool {
        self.args.cursor.is_some() && !self.args.primary_key.is_empty()
    }

    /// The batch in the table's column order (columns the query lacks are left out; the
    /// writer fills them with NULLs by name).
    fn reorder(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let indices: Vec<usize> = self.order.iter().filter_map(|i| *i).collect();
        if indices.iter().copied().eq(0..batch.num_columns()) {
            return Ok(batch);
        }
        Ok(batch.project(&indices)?)
    }

    /// Hands rows on: to the data files, or held for the next upsert.
    async fn take(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        for batch in batches {
            let batch = self.reorder(batch)?;
            if self.upsert() {
                self.held.push(batch);
                continue;
            }
            if self.writer.is_none() {
                let prefix = format!("sql-{}", uuid::Uuid::new_v4().simple());
                self.writer = Some(DataWriter::new(&self.table, &prefix)?);
            }
            self.writer
                .as_mut()
                .expect("opened above")
                .write(batch)
                .await
                .with_context(|| format!("cannot write rows of {}", self.table.identifier()))?;
        }
        Ok(())
    }

    fn summary(&self, mark: Option<&str>) -> HashMap<String, String> {
        let mut summary = HashMap::from([
            ("tarn.operation".to_string(), "ingest-sql".to_string()),
            ("tarn.sql.query".to_string(), truncate(&self.query, 1000)),
        ]);
        if let (Some(cursor), Some(mark)) = (&self.args.cursor, mark) {
            summary.insert(CURSOR_COLUMN_KEY.to_string(), cursor.clone());
            summary.insert(CURSOR_KEY.to_string(), mark.to_string());
        }
        summary
    }

    /// Commits the rows handed on so far with `mark` (incremental).
    async fn commit(&mut self, mark: Option<String>) -> Result<()> {
        let table = self.lake.load_table(self.table.identifier()).await?;
        let mut delta = if self.upsert() {
            let batches = std::mem::take(&mut self.held);
            let prefix = format!("sql-{}", uuid::Uuid::new_v4().simple());
            let upsert = crate::upsert::delta(
                self.lake,
                &table,
                &self.args.primary_key,
                self.args.cursor.as_deref(),
                &batches,
                self.args.batch_rows,
                &prefix,
            )
            .await?;
            upsert.delta
        } else {
            let files = match self.writer.take() {
                Some(w) => w.close().await?,
                None => Vec::new(),
            };
            RowDelta {
                data_files: files,
                ..RowDelta::default()
            }
        };
        if delta.is_empty() {
            // Nothing new: the mark stays where the table has it.
            return Ok(());
        }
        tarn_core::failpoint::hit("ingest_sql.before_commit").await?;
        delta.summary = self.summary(mark.as_deref());
        let rows: u64 = delta.data_files.iter().map(|f| f.record_count()).sum();
        self.table = self.lake.commit_row_delta(&table, delta).await?;
        self.commits += 1;
        tracing::info!(table = %self.table.identifier(), rows, mark = mark.as_deref().unwrap_or(""), "committed");
        self.mark = mark;
        tarn_core::failpoint::hit("ingest_sql.after_commit").await?;
        Ok(())
    }

    /// Replaces the table's rows with the rows written (full).
    async fn overwrite(&mut self) -> Result<()> {
        let files = match self.writer.take() {
            Some(w) => w.close().await?,
            None => Vec::new(),
        };
        let table = self.lake.load_table(self.table.identifier()).await?;
        let (live_data, live_deletes) = Lake::live_files(&table).await?;
        let overwrite = Overwrite {
            removed_data_files: live_data,
            removed_delete_files: live_deletes,
            added_data_files: files,
            summary: self.summary(None),
        };
        if overwrite.is_empty() {
            return Ok(());
        }
        tarn_core::failpoint::hit("ingest_sql.before_commit").await?;
        self.table = self.lake.commit_overwrite(&table, overwrite).await?;
        self.commits += 1;
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
