//! Loads Parquet, CSV and JSON-lines files into a table (`tarn load`).
//!
//! Sources are local paths or `s3://` URLs, with glob patterns (`data/*.csv`,
//! `s3://bucket/raw/2026-*.parquet`). DataFusion reads them (schema inferred across all files),
//! tarn creates the table from the inferred schema when it does not exist, and the rows are
//! written in parallel and committed as one snapshot. Columns are matched by name; a column the
//! table lacks is an error, a table column the files lack is filled with NULL.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::Column;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::logical_expr::{Expr, cast, lit};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use futures::TryStreamExt;
use iceberg::TableIdent;
use object_store::{ObjectStore, ObjectStoreExt};
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::TableLayout;
use url::Url;

use crate::session::{TarnSession, from_df_error, lake_schema};
use crate::write::{WriteOutcome, WriteProgress, write_and_commit};

/// A file format `tarn load` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl FileFormat {
    /// The format a file name's extension implies.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        let lower = lower.trim_end_matches(".gz").trim_end_matches(".zst");
        if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(Self::Parquet)
        } else if lower.ends_with(".csv") || lower.ends_with(".tsv") {
            Some(Self::Csv)
        } else if lower.ends_with(".json") || lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(Self::JsonLines)
        } else {
            None
        }
    }

    /// Parses `parquet`, `csv` or `json`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "jsonl" | "ndjson" => Ok(Self::JsonLines),
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown format {other:?}: expected parquet, csv or json"),
            )),
        }
    }
}

/// Options of a load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The format; from the file extension when unset.
    pub format: Option<FileFormat>,
    /// CSV delimiter (default `,`).
    pub delimiter: Option<u8>,
    /// CSV files have a header line (default true).
    pub has_header: Option<bool>,
    /// Layout of the table if it is created.
    pub layout: TableLayout,
}

/// The files a load will read.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Resolved file URLs.
    pub files: Vec<String>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their format.
    pub format: FileFormat,
}

/// Expands `sources` (paths, URLs, globs) into the files to load.
pub async fn plan_load(session: &TarnSession, sources: &[String], options: &LoadOptions) -> Result<LoadPlan> {
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for source in sources {
        let found = if source.starts_with("s3://") || source.starts_with("s3a://") {
            list_object_store(session, source).await?
        } else {
            list_local(source)?
        };
        if found.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no files match {source:?}"),
            ));
        }
        for (url, size) in found {
            bytes += size;
            files.push(url);
        }
    }
    let format = match options.format {
        Some(f) => f,
        None => {
            let first = files.first().map(String::as_str).unwrap_or_default();
            let format = FileFormat::from_path(first).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot tell the format of {first:?} from its name: pass --format parquet|csv|json"
                    ),
                )
            })?;
            if let Some(other) = files.iter().find(|f| FileFormat::from_path(f) != Some(format)) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{other:?} is not {format:?} like {first:?}: load one format at a time"),
                ));
            }
            format
        }
    };
    Ok(LoadPlan { files, bytes, format })
}

fn list_local(pattern: &str) -> Result<Vec<(String, u64)>> {
    let pattern = pattern.strip_prefix("file://").unwrap_or(pattern);
    let mut out = Vec::new();
    let paths = glob::glob(pattern).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("bad glob pattern {pattern:?}: {e}"),
        )
    })?;
    for entry in paths {
        let path = entry.map_err(|e| {
            Error::new(ErrorKind::Storage, format!("cannot read {}", e.path().display())).with_source(e)
        })?;
        let meta = std::fs::metadata(&path).map_err(|e| {
            Error::new(ErrorKind::Storage, format!("cannot read {}", path.display())).with_source(e)
        })?;
        if meta.is_file() {
            let abs = tarn_core::config::absolute(&path);
            out.push((format!("file://{}", abs.display()), meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The directory to list for a glob: everything before the first wildcard, up to its last `/`
/// (object stores list by whole path segments).
fn listing_prefix(pattern: &str) -> &str {
    let literal = pattern.split(['*', '?', '[']).next().unwrap_or(pattern);
    if literal.len() == pattern.len() {
        return pattern;
    }
    match literal.rfind('/') {
        Some(i) => &literal[..i],
        None => literal,
    }
}

async fn list_object_store(session: &TarnSession, pattern: &str) -> Result<Vec<(String, u64)>> {
    let resolved = session
        .lake()
        .stores()
        .resolve(listing_prefix(pattern))
        .map_err(|e| tarn_lake::iceberg_error(format!("cannot open {pattern}"), e))?;
    let base = Url::parse(&resolved.base_url)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("bad URL {pattern:?}: {e}")))?;
    session
        .context()
        .register_object_store(&base, resolved.store.clone());
    if listing_prefix(pattern) == pattern {
        // One object, no wildcard.
        return match resolved.store.head(&resolved.path).await {
            Ok(meta) => Ok(vec![(pattern.to_string(), meta.size)]),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(Error::new(ErrorKind::Storage, format!("cannot read {pattern}")).with_source(e)),
        };
    }
    let key_pattern = pattern
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, key)| key.to_string())
        .unwrap_or_default();
    let matcher = glob::Pattern::new(&key_pattern).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("bad glob pattern {pattern:?}: {e}"),
        )
    })?;
    let objects: Vec<_> = resolved
        .store
        .list(Some(&resolved.path))
        .try_collect()
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, format!("cannot list {pattern}")).with_source(e))?;
    let mut out: Vec<(String, u64)> = objects
        .into_iter()
        .filter(|o| matcher.matches(o.location.as_ref()))
        .map(|o| (format!("{}/{}", resolved.base_url, o.location), o.size))
        .collect();
    out.sort();
    Ok(out)
}

/// Loads the files of `plan` into `ident`, creating the table if needed; `progress` counts
/// rows as they are written.
pub async fn load(
    session: &TarnSession,
    plan: &LoadPlan,
    ident: &TableIdent,
    options: &LoadOptions,
    progress: Arc<WriteProgress>,
) -> Result<WriteOutcome> {
    // The source files are read in a context of their own, sharing the session's object
    // stores and settings but not its policy rule: they are no lake table, and the policy asks
    // about the table written (below), not about a listing of files the operator named.
    let ctx = datafusion::prelude::SessionContext::new_with_config_rt(
        session.context().copied_config(),
        session.context().runtime_env(),
    );
    for file in &plan.files {
        // Fail on an unreadable source before anything is written.
        ListingTableUrl::parse(file)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("bad source {file:?}: {e}")))?;
    }
    let df = match plan.format {
        FileFormat::Parquet => {
            ctx.read_parquet(plan.files.clone(), ParquetReadOptions::default())
                .await
        }
        FileFormat::Csv => {
            let mut opts = CsvReadOptions::new().has_header(options.has_header.unwrap_or(true));
            if let Some(d) = options.delimiter {
                opts = opts.delimiter(d);
            }
            let ext = plan.files[0].rsplit('.').next().unwrap_or("csv").to_string();
            ctx.read_csv(plan.files.clone(), opts.file_extension(&format!(".{ext}")))
                .await
        }
        FileFormat::JsonLines => {
            let ext = plan.files[0].rsplit('.').next().unwrap_or("json").to_string();
            ctx.read_json(
                plan.files.clone(),
                JsonReadOptions::default().file_extension(&format!(".{ext}")),
            )
            .await
        }
    }
    .map_err(|e| {
        let e = from_df_error(e);
        Error::new(e.kind(), format!("cannot read {:?} files: {e}", plan.format))
    })?;

    let source_schema: Schema = df.schema().as_arrow().clone();
    let lake = session.lake();
    let exists = lake.table_exists(ident).await?;
    // Under a policy (a scheduled `load` task runs as its job's principal), the load is asked
    // like the statement it is: creating the table if it must, inserting into it.
    if let Some(g) = session.governance() {
        if !exists {
            g.check_table_write("CreateTable", ident, None)?;
        }
        g.check_table_write("InsertIntoTable", ident, None)?;
    }
    let created = if exists {
        false
    } else {
        if !lake.namespace_exists(ident.namespace()).await? {
            lake.create_namespace(ident.namespace(), true).await?;
        }
        let schema = lake_schema(&source_schema)?;
        lake.create_table(ident, &schema, &options.layout).await?;
        true
    };
    let table = lake.load_table(ident).await?;
    let target = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| tarn_lake::iceberg_error(format!("cannot map the schema of {ident}"), e))?;
    for field in source_schema.fields() {
        if target.field_with_name(field.name()).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the files have a column {:?} that table {ident} does not (columns: {})",
                    field.name(),
                    target
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let projection: Vec<Expr> = target
        .fields()
        .iter()
        .map(|f| {
            let source = if source_schema.field_with_name(f.name()).is_ok() {
                Expr::Column(Column::new_unqualified(f.name()))
            } else {
                lit(datafusion::scalar::ScalarValue::Null)
            };
            cast(source, f.data_type().clone()).alias(f.name())
        })
        .collect();
    let written = async {
        let df = df.select(projection).map_err(from_df_error)?;
        let streams = df.execute_stream_partitioned().await.map_err(from_df_error)?;
        let summary = HashMap::from([("tarn.operation".to_string(), "load".to_string())]);
        write_and_commit(lake, ident, streams, summary, progress).await
    }
    .await;
    match written {
        Ok(outcome) => {
            if let Some(g) = session.governance() {
                g.record_table_write("InsertIntoTable", ident, outcome.rows);
            }
            Ok(outcome)
        }
        Err(e) => {
            if created && let Err(drop_err) = lake.drop_table(ident, true).await {
                tracing::warn!(table = %ident, error = %drop_err, "cannot drop table after failed load");
            }
            Err(e)
        }
    }
}

/// Registers `store` with the session for URLs under `base` (e.g. `s3://bucket`).
pub fn register_store(session: &TarnSession, base: &Url, store: Arc<dyn ObjectStore>) {
    session.context().register_object_store(base, store);
}
