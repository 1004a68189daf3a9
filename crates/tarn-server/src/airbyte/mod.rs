//! `tarn ingest airbyte`: runs an Airbyte source connector and writes its streams into
//! Iceberg tables, one table per stream (`NAMESPACE.PREFIX<stream>`).
//!
//! The connector runs as a subprocess speaking the Airbyte protocol ([`protocol`]): `check`,
//! then `discover` when no configured catalog is given, then `read`. Records are decoded in
//! bounded batches by arrow-json against the table's schema, which comes from the stream's
//! JSON schema ([`schema`]).
//!
//! Sync modes, per stream of the configured catalog:
//!
//! - full refresh + overwrite: the rows are written as they come and replace the table's rows
//!   in one overwrite commit at the end of the stream's read;
//! - full refresh + append: one append commit at the end;
//! - incremental + append: an append commit at STATE boundaries (see below);
//! - incremental + append_dedup: at STATE boundaries, the pending records replace the table's
//!   rows of the same primary key: one row-delta commit of new data files and position deletes
//!   of the old rows ([`crate::upsert`]). Of the records of one key, the one with the greatest
//!   value of the stream's cursor field wins (ties: the later one), in one commit and across
//!   commits: a record older than the table's row of its key does not replace it (Airbyte's
//!   dedup semantics). Without a cursor (or with a nested one) the last record received wins.
//!
//! Exactly once: a STATE message of a stream covers the records of that stream before it. The
//! data pending at a STATE boundary is committed with that state in the snapshot summary
//! (`tarn.airbyte.state`), in the same commit, once `--commit-rows` rows are pending or
//! `--commit-interval` has passed (else the state waits for the next boundary, with the data).
//! The next run reads the states back from the tables and passes them to the connector as
//! `--state`, so a sync killed at any point resumes from the last committed state: no record
//! twice, none lost. An error (an error TRACE, a malformed line, a non-zero exit, a record that
//! does not fit its schema) stops the sync and commits nothing of what is pending; what earlier
//! STATE boundaries committed stays, with its state.
//!
//! GLOBAL and LEGACY states cover every stream, so they may only be handed back once every
//! table holds the rows before them, and Iceberg commits one table at a time. They are
//! committed as numbered epochs ([`commit_global`]): every incremental stream's files are
//! written first, then (when more than one table has rows) a journal naming each table's
//! files and the state, then each table commits its files with the state, the epoch
//! (`tarn.airbyte.epoch`) and the journal's path (`tarn.airbyte.journal`), then the journal
//! is removed. The next run resumes from the newest epoch any table holds; if its journal is
//! still there, the run before was killed between the tables' commits, and the tables that
//! lack the epoch commit their part from the journal first ([`resume_global`], a roll
//! forward). So every table holds exactly the rows up to the state handed back. Resuming from
//! the oldest table's state instead would repeat records in the tables ahead (only dedup
//! absorbs that), and per-table high-water marks need records in cursor order, which CDC
//! streams do not promise.

pub mod protocol;
pub mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use clap::Args;
use iceberg::TableIdent;
use iceberg::table::Table;
use serde_json::{Value, json};
use tarn_core::Config;
use tarn_lake::{DataWriter, Lake, Overwrite, RowDelta, TableLayout};

use protocol::{Connector, MessageStream, descriptor_name, log_message, message_type, trace_error, truncate};
use schema::{DATA_COLUMN, EMITTED_AT, Shape};

/// The snapshot summary key holding the STATE message a commit covers.
pub const STATE_KEY: &str = "tarn.airbyte.state";
/// The snapshot summary key naming the stream a commit came from.
pub const STREAM_KEY: &str = "tarn.airbyte.stream";
/// The snapshot summary key numbering the commits of GLOBAL / LEGACY states (epochs).
pub const EPOCH_KEY: &str = "tarn.airbyte.epoch";
/// The snapshot summary key naming the journal of an epoch that spans several tables.
pub const JOURNAL_KEY: &str = "tarn.airbyte.journal";

/// `tarn ingest airbyte`'s flags.
#[derive(Debug, Args)]
pub struct AirbyteArgs {
    /// The connector's command: words separated by spaces, run with the Airbyte command
    /// appended, e.g. `source-faker` (PyPI package `airbyte-source-faker`) or
    /// `docker run --rm -i -v /cfg:/cfg airbyte/source-faker:6` (then the files must be
    /// visible at the same path inside the container).
    #[arg(long, value_name = "COMMAND")]
    connector: String,
    /// The connector's configuration (JSON, as its `spec` describes). tarn's own config file
    /// is then given by `TARN_CONFIG` or the global `--config` before `ingest`.
    #[arg(long = "config", id = "connector_config", value_name = "CONFIG.json")]
    config: PathBuf,
    /// A configured catalog (JSON: `{"streams": [{"stream": ..., "sync_mode": ...,
    /// "destination_sync_mode": ..., "primary_key": ..., "cursor_field": ...}]}`). Without it,
    /// tarn discovers the streams and syncs every one (or those of `--stream`): incremental +
    /// append_dedup where the stream has a cursor and a primary key, incremental + append
    /// with a cursor only, else full refresh + overwrite.
    #[arg(long, value_name = "CATALOG.json")]
    catalog: Option<PathBuf>,
    /// The namespace of the tables (created when missing).
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// Prefix of the table names: stream `users` lands in `NS.PREFIXusers`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Sync only this stream of the catalog; repeatable.
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Rows decoded into one Arrow batch.
    #[arg(long, default_value_t = 10_000, value_name = "ROWS")]
    batch_rows: usize,
    /// Commit at the first STATE boundary after this many rows of a stream are pending.
    #[arg(long, default_value_t = 100_000, value_name = "ROWS")]
    commit_rows: u64,
    /// Commit at the first STATE boundary after this long since the stream's last commit,
    /// e.g. `30s`; `0s` commits at every STATE message.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    commit_interval: Duration,
    /// Don't run the connector's `check` before reading.
    #[arg(long)]
    skip_check: bool,
    /// Print the connector's `spec` or the configured catalog tarn would sync (edit it and
    /// pass it as `--catalog`), then exit without syncing.
    #[arg(long, value_parser = ["spec", "catalog"])]
    print: Option<String>,
    /// Sync as this user under the configured policy (`[policy]`, docs/governance.md): each
    /// stream's table is asked for `CreateTable` (when new), `AddColumn` (when the stream's
    /// schema grew), `InsertIntoTable`, and `DeleteFromTable` (overwrite and dedup modes),
    /// and every commit is audited as this user. A scheduled `airbyte` task passes its job's
    /// principal here. Without it, the sync runs as the operator of the data directory.
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
    /// A group (role) of the `--as` user; repeatable.
    #[arg(long = "group", value_name = "GROUP", requires = "as_user")]
    groups: Vec<String>,
    /// The policy the sync is asked of (from `--as`).
    #[arg(skip)]
    governance: Option<Arc<tarn_query::governance::Governance>>,
}

impl AirbyteArgs {
    /// Asks the policy (with `--as`) whether the sync may write `ident` in `mode`.
    fn authorize(&self, ident: &TableIdent, mode: Mode, exists: bool) -> Result<()> {
        let Some(g) = &self.governance else {
            return Ok(());
        };
        if !exists {
            g.check_table_write("CreateTable", ident, None)?;
        }
        g.check_table_write("InsertIntoTable", ident, None)?;
        if matches!(mode, Mode::FullOverwrite | Mode::IncrementalDedup) {
            g.check_table_write("DeleteFromTable", ident, None)?;
        }
        Ok(())
    }

    /// Records (with `--as`) a commit to `ident` that added `inserted` rows and deleted
    /// `deleted`.
    fn audit(&self, ident: &TableIdent, inserted: u64, deleted: u64) {
        let Some(g) = &self.governance else { return };
        for (operation, rows) in [("InsertIntoTable", inserted), ("DeleteFromTable", deleted)] {
            if rows > 0 {
                g.record_table_write(operation, ident, rows);
            }
        }
    }
}

/// The rows `files` hold.
fn rows_of(files: &[iceberg::spec::DataFile]) -> u64 {
    files.iter().map(|f| f.record_count()).sum()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tarn_core::config::parse_duration("--commit-interval", s).map_err(|e| e.to_string())
}

/// How a stream lands in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    FullOverwrite,
    FullAppend,
    IncrementalAppend,
    IncrementalDedup,
}

impl Mode {
    fn of(configured: &Value, name: &str) -> Result<Self> {
        let sync = configured
            .get("sync_mode")
            .and_then(Value::as_str)
            .unwrap_or("full_refresh");
        let dest = configured
            .get("destination_sync_mode")
            .and_then(Value::as_str)
            .unwrap_or(if sync == "incremental" {
                "append"
            } else {
                "overwrite"
            });
        Ok(match (sync, dest) {
            ("full_refresh", "overwrite" | "overwrite_dedup") => Mode::FullOverwrite,
            ("full_refresh", "append") => Mode::FullAppend,
            ("incremental", "append") => Mode::IncrementalAppend,
            ("incremental", "append_dedup") => Mode::IncrementalDedup,
            _ => bail!(
                "stream {name}: unsupported sync mode {sync} with destination sync mode {dest} \
                 (full_refresh: overwrite or append; incremental: append or append_dedup)"
            ),
        })
    }

    fn incremental(self) -> bool {
        matches!(self, Mode::IncrementalAppend | Mode::IncrementalDedup)
    }
}

/// Runs `tarn ingest airbyte`.
pub async fn run(args: AirbyteArgs, config: Config) -> Result<ExitCode> {
    let connector = Connector::parse(&args.connector)?;
    if args.print.as_deref() == Some("spec") {
        let specs = connector.collect("spec", &[], "SPEC").await?;
        let spec = specs
            .first()
            .and_then(|m| m.get("spec"))
            .ok_or_else(|| anyhow!("the connector {:?} printed no SPEC message", connector.name()))?;
        println!("{}", serde_json::to_string_pretty(spec)?);
        return Ok(ExitCode::SUCCESS);
    }
    let connector_config: Value = read_json(&args.config, "--config")?;
    if !connector_config.is_object() {
        bail!("--config {}: expected a JSON object", args.config.display());
    }
    let work = WorkDir::new()?;
    // The connector reads the config from a path of tarn's: the same file, absolute.
    let config_path = tarn_core::config::absolute(&args.config);
    if !args.skip_check && args.print.is_none() {
        check(&connector, &config_path).await?;
    }
    let catalog = match &args.catalog {
        Some(path) => read_json(path, "--catalog")?,
        None => discover(&connector, &config_path).await?,
    };
    let catalog = select_streams(catalog, &args.streams)?;
    if args.print.as_deref() == Some("catalog") {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut args = args;
    let (lake, session, principal) = match &args.as_user {
        Some(user) => {
            let session = crate::cli::open_as(&config, user.clone(), args.groups.clone()).await?;
            args.governance = session.governance().cloned();
            let principal = session.principal();
            (session.lake().clone(), Some(session), principal)
        }
        None => (Lake::open(&config).await?, None, None),
    };
    let synced = tarn_query::governance::with_principal(
        principal,
        sync(&lake, &connector, &config_path, &catalog, &args, &work),
    )
    .await;
    if let Some(session) = &session {
        // The audit trail's last records (a denial too) are appended before exit.
        crate::cli::close_session(session).await;
    }
    for (stream, (ident, rows, commits)) in &synced? {
        eprintln!("{stream}: {rows} record(s) into {ident} in {commits} commit(s)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The configured catalog a sync without `--catalog` uses: every stream `connector`
/// discovers with `config`, in the best mode it supports.
pub async fn discovered_catalog(connector: &str, config: &Path) -> Result<Value> {
    let connector = Connector::parse(connector)?;
    discover(&connector, &tarn_core::config::absolute(config)).await
}

/// Syncs as `tarn ingest airbyte` does with `args` (the command's flags, e.g. `["--connector",
/// "source-faker", ...]`) into `lake`, without `check`; returns the records synced.
pub async fn sync_with_flags(lake: &Lake, flags: &[String]) -> Result<u64> {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        args: AirbyteArgs,
    }
    let args = <Flags as clap::Parser>::try_parse_from(
        std::iter::once("airbyte".to_string()).chain(flags.iter().cloned()),
    )?
    .args;
    let connector = Connector::parse(&args.connector)?;
    let config_path = tarn_core::config::absolute(&args.config);
    let catalog = match &args.catalog {
        Some(path) => read_json(path, "--catalog")?,
        None => discover(&connector, &config_path).await?,
    };
    let catalog = select_streams(catalog, &args.streams)?;
    let work = WorkDir::new()?;
    let summary = sync(lake, &connector, &config_path, &catalog, &args, &work).await?;
    Ok(summary.iter().map(|(_, (_, rows, _))| rows).sum())
}

/// A private directory for the catalog and state files handed to the connector.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tarn-airbyte-{}", uuid_like()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn write(&self, name: &str, value: &Value) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, serde_json::to_vec(value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

fn read_json(path: &Path, flag: &str) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{flag}: {} is not valid JSON", path.display()))
}

async fn check(connector: &Connector, config: &Path) -> Result<()> {
    let statuses = connector
        .collect("check", &[("--config", config)], "CONNECTION_STATUS")
        .await?;
    let status = statuses
        .first()
        .and_then(|m| m.get("connectionStatus"))
        .ok_or_else(|| {
            anyhow!(
                "the connector {:?} (check) reported no connection status",
                connector.name()
            )
        })?;
    if status.get("status").and_then(Value::as_str) != Some("SUCCEEDED") {
        bail!(
            "the connector {:?} cannot connect with this config (check): {}",
            connector.name(),
            status
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
        );
    }
    tracing::info!(connector = connector.name(), "check succeeded");
    Ok(())
}

/// Discovers the streams and configures each in the best mode it supports.
async fn discover(connector: &Connector, config: &Path) -> Result<Value> {
    let catalogs = connector
        .collect("discover", &[("--config", config)], "CATALOG")
        .await?;
    let streams = catalogs
        .first()
        .and_then(|m| m.pointer("/catalog/streams"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            anyhow!(
                "the connector {:?} (discover) printed no catalog",
                connector.name()
            )
        })?;
    let configured: Vec<Value> = streams
        .iter()
        .map(|stream| {
            let incremental = stream
                .get("supported_sync_modes")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(|m| m == "incremental"));
            let cursor = stream
                .get("default_cursor_field")
                .filter(|c| c.as_array().is_some_and(|c| !c.is_empty()));
            let source_cursor = stream.get("source_defined_cursor").and_then(Value::as_bool) == Some(true);
            let key = stream
                .get("source_defined_primary_key")
                .filter(|k| k.as_array().is_some_and(|k| !k.is_empty()));
            let (sync, dest) = match (incremental && (source_cursor || cursor.is_some()), key) {
                (true, Some(_)) => ("incremental", "append_dedup"),
                (true, None) => ("incremental", "append"),
                (false, _) => ("full_refresh", "overwrite"),
            };
            let mut c = json!({"stream": stream, "sync_mode": sync, "destination_sync_mode": dest});
            if let Some(cursor) = cursor {
                c["cursor_field"] = cursor.clone();
            }
            if let Some(key) = key {
                c["primary_key"] = key.clone();
            }
            c
        })
        .collect();
    Ok(json!({ "streams": configured }))
}

fn select_streams(mut catalog: Value, wanted: &[String]) -> Result<Value> {
    let streams = catalog
        .get_mut("streams")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("the catalog has no \"streams\" array"))?;
    for s in streams.iter() {
        if s.pointer("/stream/name").and_then(Value::as_str).is_none() {
            bail!(
                "a stream of the catalog has no stream.name: {}",
                truncate(&s.to_string(), 200)
            );
        }
    }
    if !wanted.is_empty() {
        let names: Vec<String> = streams
            .iter()
            .filter_map(|s| {
                s.pointer("/stream/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        if let Some(missing) = wanted.iter().find(|w| !names.contains(w)) {
            bail!(
                "--stream {missing}: the catalog has no such stream (it has {})",
                names.join(", ")
            );
        }
        streams.retain(|s| {
            s.pointer("/stream/name")
                .and_then(Value::as_str)
                .is_some_and(|n| wanted.iter().any(|w| w == n))
        });
    }
    Ok(catalog)
}

/// One stream being synced into its table.
struct StreamSync {
    name: String,
    ident: TableIdent,
    mode: Mode,
    table: Table,
    /// The table's Arrow schema (with Iceberg field ids).
    schema: SchemaRef,
    shape: Shape,
    /// Records are wrapped as `{"_airbyte_data": record}` (a schema without properties).
    wrap: bool,
    /// Primary-key columns (dedup mode).
    key: Vec<String>,
    /// The cursor column (dedup mode): of several records of a key, the one with the greatest
    /// cursor wins (ties: the later one). `None`: the last record received wins.
    cursor: Option<String>,
    /// Decoded-not-yet-written records (append modes) or every pending record (dedup).
    pending: Vec<Value>,
    writer: Option<DataWriter>,
    /// Data files written since the last commit.
    files: Vec<iceberg::spec::DataFile>,
    rows_since_commit: u64,
    last_commit: Instant,
    /// The last STATE message of the stream not committed yet.
    state: Option<Value>,
    /// The last state committed or read back (carried into later commits).
    committed_state: Option<Value>,
    records: u64,
    commits: u64,
}

type Summary = Vec<(String, (TableIdent, u64, u64))>;

async fn sync(
    lake: &Lake,
    connector: &Connector,
    config: &Path,
    catalog: &Value,
    args: &AirbyteArgs,
    work: &WorkDir,
) -> Result<Summary> {
    let ns = iceberg::NamespaceIdent::from_strs(args.namespace.split('.'))
        .map_err(|e| anyhow!("--namespace {:?}: {e}", args.namespace))?;
    if !lake.namespace_exists(&ns).await? {
        lake.create_namespace(&ns, true).await?;
    }
    let mut streams: HashMap<String, StreamSync> = HashMap::new();
    let mut order = Vec::new();
    let mut states = Vec::new();
    let mut globals = Vec::new();
    for configured in catalog
        .get("streams")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = configured
            .pointer("/stream/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mode = Mode::of(configured, &name)?;
        let ident = TableIdent::new(ns.clone(), format!("{}{}", args.prefix, name));
        let json_schema = configured
            .pointer("/stream/json_schema")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let (fields, shape) = schema::columns(&json_schema);
        let wrap = fields.len() == 1 && fields[0].name() == DATA_COLUMN;
        args.authorize(&ident, mode, lake.table_exists(&ident).await?)?;
        let table = ensure_table(lake, &ident, &name, fields.clone(), args).await?;
        let shape = as_stored(shape, &fields, &table)?;
        let key = if mode == Mode::IncrementalDedup {
            primary_key(configured, &name)?
        } else {
            Vec::new()
        };
        let arrow_schema = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
                .map_err(|e| anyhow!("cannot map the schema of {ident}: {e}"))?,
        );
        for k in &key {
            if arrow_schema.field_with_name(k).is_err() {
                bail!("stream {name}: primary key column {k:?} is not a column of {ident}");
            }
        }
        let cursor = if mode == Mode::IncrementalDedup {
            cursor_column(configured, &name)
        } else {
            None
        };
        if let Some(c) = &cursor
            && arrow_schema.field_with_name(c).is_err()
        {
            bail!("stream {name}: cursor field {c:?} is not a column of {ident}");
        }
        let stored = if mode.incremental() {
            stored_commit(&table)
        } else {
            None
        };
        let committed_state = stored.as_ref().map(|s| s.state.clone());
        if let Some(stored) = stored {
            if is_global(&stored.state) {
                globals.push((ident.clone(), stored));
            } else {
                tracing::info!(stream = name, table = %ident, "resuming from the state the table holds");
                states.push(stored.state);
            }
        }
        order.push(name.clone());
        streams.insert(
            name.clone(),
            StreamSync {
                name,
                ident,
                mode,
                table,
                schema: arrow_schema,
                shape,
                wrap,
                key,
                cursor,
                pending: Vec::new(),
                writer: None,
                files: Vec::new(),
                rows_since_commit: 0,
                last_commit: Instant::now(),
                state: None,
                committed_state,
                records: 0,
                commits: 0,
            },
        );
    }
    if streams.is_empty() {
        bail!("the catalog has no streams to sync");
    }
    let mut global = Global {
        state: None,
        committed: None,
        epoch: 0,
        last_commit: Instant::now(),
    };
    if !globals.is_empty() {
        let (state, epoch) = resume_global(lake, globals).await?;
        tracing::info!(epoch, "resuming from the GLOBAL/LEGACY state the tables hold");
        for stream in streams.values_mut() {
            if stream.mode.incremental() {
                // A rolled-forward epoch changed the table.
                stream.table = lake.load_table(&stream.ident).await?;
                stream.committed_state = Some(state.clone());
            }
        }
        states.push(state.clone());
        global.committed = Some(state);
        global.epoch = epoch;
    }
    let catalog_path = work.write("catalog.json", catalog)?;
    let state_path = match state_file(states) {
        None => None,
        Some(state) => Some(work.write("state.json", &state)?),
    };
    let mut cmd_args: Vec<(&str, &Path)> = vec![("--config", config), ("--catalog", &catalog_path)];
    if let Some(state) = &state_path {
        cmd_args.push(("--state", state));
    }
    let mut messages = connector.run("read", &cmd_args)?;
    let read = read_messages(lake, &mut messages, &mut streams, &order, &mut global, args).await;
    if let Err(e) = read {
        messages.kill().await;
        return Err(e);
    }
    messages.finish().await.map_err(|e| {
        let current = streams
            .values()
            .filter(|s| s.rows_since_commit > 0 || !s.pending.is_empty())
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>();
        if current.is_empty() {
            e
        } else {
            e.context(format!(
                "nothing of stream(s) {} since their last commit was committed",
                current.join(", ")
            ))
        }
    })?;
    // The connector ended well: every stream's last rows (and state) are committed.
    let global_mode = global.state.is_some() || global.committed.is_some();
    if global_mode {
        // Rows after the last state ride with it, as with per-stream states.
        if let Some(state) = global.state.take().or_else(|| global.committed.clone()) {
            commit_global(lake, &mut streams, &order, &mut global, state, args).await?;
        }
    }
    for name in &order {
        let stream = streams.get_mut(name).expect("a stream of the catalog");
        if global_mode && stream.mode.incremental() {
            continue;
        }
        finish_stream(lake, stream, args).await?;
    }
    Ok(order
        .iter()
        .map(|n| {
            let s = &streams[n];
            (n.clone(), (s.ident.clone(), s.records, s.commits))
        })
        .collect())
}

async fn read_messages(
    lake: &Lake,
    messages: &mut MessageStream,
    streams: &mut HashMap<String, StreamSync>,
    order: &[String],
    global: &mut Global,
    args: &AirbyteArgs,
) -> Result<()> {
    let mut current_stream: Option<String> = None;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut total: u64 = 0;
    while let Some(message) = messages.next().await? {
        match message_type(&message) {
            "RECORD" => {
                let record = message.get("record").cloned().unwrap_or_default();
                let name = record
                    .get("stream")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let stream = streams.get_mut(&name).ok_or_else(|| {
                    anyhow!("the connector sent a record of stream {name:?}, which is not in the catalog")
                })?;
                current_stream = Some(name);
                stream.add(record, args).await?;
                total += 1;
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        records = total,
                        rate = format!("{:.0}/s", total as f64 / secs),
                        "syncing"
                    );
                }
            }
            "STATE" => {
                let state = message.get("state").cloned().unwrap_or_default();
                match state.get("type").and_then(Value::as_str).unwrap_or("LEGACY") {
                    "STREAM" => {
                        let name = state
                            .pointer("/stream/stream_descriptor")
                            .and_then(descriptor_name)
                            .unwrap_or_default();
                        let Some(stream) = streams.get_mut(&name) else {
                            tracing::warn!(stream = name, "a state of a stream not in the catalog: ignored");
                            continue;
                        };
                        let mut state = state;
                        if let Some(obj) = state.as_object_mut() {
                            // Statistics of this one message, not part of what to resume from.
                            obj.remove("sourceStats");
                            obj.remove("destinationStats");
                        }
                        stream.state = Some(state);
                        stream.maybe_commit(lake, args).await?;
                    }
                    other => {
                        // A GLOBAL or LEGACY state covers every stream: every table commits
                        // with it, as one epoch (see the module doc).
                        tracing::debug!(kind = other, "a state for every stream");
                        let mut state = state;
                        if let Some(obj) = state.as_object_mut() {
                            obj.remove("sourceStats");
                            obj.remove("destinationStats");
                        }
                        for stream in streams.values_mut() {
                            // Full refresh streams record it with their one commit.
                            stream.state = Some(state.clone());
                        }
                        global.state = Some(state);
                        let pending: u64 = streams
                            .values()
                            .filter(|s| s.mode.incremental())
                            .map(|s| s.rows_since_commit)
                            .sum();
                        if pending >= args.commit_rows || global.last_commit.elapsed() >= args.commit_interval
                        {
                            let state = global.state.take().expect("set above");
                            commit_global(lake, streams, order, global, state, args).await?;
                        }
                    }
                }
            }
            "TRACE" => {
                if let Some((stream, text)) = trace_error(&message) {
                    let stream = stream.or(current_stream.clone());
                    bail!(
                        "the connector failed{}: {text}; nothing of the records since the last commit was committed",
                        stream.map(|s| format!(" in stream {s}")).unwrap_or_default()
                    );
                }
                if let Some(name) = message
                    .pointer("/trace/stream_status/stream_descriptor")
                    .and_then(descriptor_name)
                {
                    current_stream = Some(name);
                }
                log_message(&message);
            }
            _ => log_message(&message),
        }
    }
    Ok(())
}

impl StreamSync {
    async fn add(&mut self, record: Value, args: &AirbyteArgs) -> Result<()> {
        let emitted_at = record
            .get("emitted_at")
            .and_then(Value::as_f64)
            .unwrap_or_default();
        let mut data = record.get("data").cloned().unwrap_or(Value::Null);
        if self.wrap {
            data = json!({ DATA_COLUMN: data });
        }
        let Value::Object(ref mut map) = data else {
            bail!(
                "stream {}: record {} is not a JSON object: {}",
                self.name,
                self.records + 1,
                truncate(&data.to_string(), 300)
            );
        };
        // Microseconds, the unit of the column.
        map.insert(EMITTED_AT.to_string(), json!((emitted_at * 1000.0) as i64));
        self.shape.normalize(&mut data);
        self.records += 1;
        self.rows_since_commit += 1;
        if self.mode == Mode::IncrementalDedup {
            self.check_key(&data)?;
            // Every record is kept: which one of a key wins is decided on typed values, by
            // cursor, when the records are committed.
            self.pending.push(data);
            return Ok(());
        }
        self.pending.push(data);
        if self.pending.len() >= args.batch_rows {
            self.write_pending(args).await?;
        }
        Ok(())
    }

    fn check_key(&self, data: &Value) -> Result<()> {
        let values: Vec<&Value> = self
            .key
            .iter()
            .map(|k| data.get(k).unwrap_or(&Value::Null))
            .collect();
        if values.iter().all(|v| v.is_null()) {
            bail!(
                "stream {}: record {} has no primary key ({}): {}",
                self.name,
                self.records,
                self.key.join(", "),
                truncate(&data.to_string(), 300)
            );
        }
        Ok(())
    }

    /// Decodes the pending records into batches (at most `batch_rows` rows each).
    fn decode_pending(&mut self, batch_rows: usize) -> Result<Vec<RecordBatch>> {
        let records = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        for (chunk_no, chunk) in records.chunks(batch_rows.max(1)).enumerate() {
            match decode(&self.schema, chunk) {
                Ok(Some(batch)) => out.push(batch),
                Ok(None) => {}
                Err(e) => {
                    // Find the record that does not fit, to name it.
                    let at = chunk
                        .iter()
                        .position(|r| decode(&self.schema, std::slice::from_ref(r)).is_err())
                        .unwrap_or(0);
                    let bad = &chunk[at];
                    let emitted = bad.get(EMITTED_AT).and_then(Value::as_i64).unwrap_or_default() / 1000;
                    let mut shown = bad.clone();
                    if let Some(m) = shown.as_object_mut() {
                        m.remove(EMITTED_AT);
                    }
                    bail!(
                        "stream {}: a record does not fit the stream's schema (table {}): {e}; record (emitted_at {emitted}, #{} of the batch): {}",
                        self.name,
                        self.ident,
                        chunk_no * batch_rows + at + 1,
                        truncate(&shown.to_string(), 500)
                    );
                }
            }
        }
        Ok(out)
    }

    async fn write_pending(&mut self, args: &AirbyteArgs) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batches = self.decode_pending(args.batch_rows)?;
        if self.writer.is_none() {
            let prefix = format!("airbyte-{}", uuid_like());
            self.writer = Some(DataWriter::new(&self.table, &prefix)?);
        }
        let writer = self.writer.as_mut().expect("opened above");
        for batch in batches {
            writer.write(batch).await?;
        }
        Ok(())
    }

    async fn close_writer(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            self.files.extend(writer.close().await?);
        }
        Ok(())
    }

    fn summary(&self, state: Option<&Value>) -> HashMap<String, String> {
        let mut summary = HashMap::from([
            ("tarn.operation".to_string(), "airbyte".to_string()),
            (STREAM_KEY.to_string(), self.name.clone()),
        ]);
        if let Some(state) = state {
            summary.insert(STATE_KEY.to_string(), state.to_string());
        }
        summary
    }

    /// At a STATE boundary: commits the pending rows with the state when enough is pending.
    async fn maybe_commit(&mut self, lake: &Lake, args: &AirbyteArgs) -> Result<()> {
        if !self.mode.incremental() {
            // Full refresh commits once, at the end; the state only rides along.
            return Ok(());
        }
        if self.rows_since_commit < args.commit_rows && self.last_commit.elapsed() < args.commit_interval {
            return Ok(());
        }
        self.commit_incremental(lake, args).await
    }

    async fn commit_incremental(&mut self, lake: &Lake, args: &AirbyteArgs) -> Result<()> {
        let Some(state) = self.state.take().or_else(|| self.committed_state.clone()) else {
            if self.rows_since_commit == 0 {
                return Ok(());
            }
            return self.commit_rows_with(lake, args, None).await;
        };
        if self.rows_since_commit == 0 && self.committed_state.as_ref() == Some(&state) {
            return Ok(());
        }
        self.commit_rows_with(lake, args, Some(state)).await
    }

    async fn commit_rows_with(
        &mut self,
        lake: &Lake,
        args: &AirbyteArgs,
        state: Option<Value>,
    ) -> Result<()> {
        let (table, mut delta) = self.prepare(lake, args).await?;
        tarn_core::failpoint::hit("airbyte.before_commit").await?;
        // An empty delta commits nothing (the state is not recorded alone; resuming from the
        // previous one reads no records that would land again).
        delta.summary = self.summary(state.as_ref());
        let (inserted, deleted) = (rows_of(&delta.data_files), rows_of(&delta.delete_files));
        let table = lake.commit_row_delta(&table, delta).await?;
        args.audit(&self.ident, inserted, deleted);
        self.committed(table, state);
        tarn_core::failpoint::hit("airbyte.after_commit").await?;
        Ok(())
    }

    /// Bookkeeping after a commit of the pending rows with `state`.
    fn committed(&mut self, table: Table, state: Option<Value>) {
        tracing::info!(stream = self.name, table = %self.ident, rows = self.rows_since_commit, "committed");
        self.table = table;
        self.rows_since_commit = 0;
        self.last_commit = Instant::now();
        self.commits += 1;
        if state.is_some() {
            self.committed_state = state;
        }
    }

    /// The pending rows as a row delta on the table (files written, nothing committed):
    /// appended rows, or for dedup the winning records and position deletes of the rows they
    /// replace.
    async fn prepare(&mut self, lake: &Lake, args: &AirbyteArgs) -> Result<(Table, RowDelta)> {
        if self.mode == Mode::IncrementalDedup {
            return self.upsert_delta(lake, args).await;
        }
        self.write_pending(args).await?;
        self.close_writer().await?;
        let delta = RowDelta {
            data_files: std::mem::take(&mut self.files),
            ..RowDelta::default()
        };
        Ok((self.table.clone(), delta))
    }

    /// The pending records of dedup mode as a row delta: of the records of one key, the one
    /// with the greatest cursor wins (ties: the later one; without a cursor: the last one),
    /// and it replaces the table's row of that key unless that row's cursor is greater.
    async fn upsert_delta(&mut self, lake: &Lake, args: &AirbyteArgs) -> Result<(Table, RowDelta)> {
        let batches = self.decode_pending(args.batch_rows)?;
        let table = lake.load_table(&self.ident).await?;
        let prefix = format!("airbyte-{}", uuid_like());
        let upsert = crate::upsert::delta(
            lake,
            &table,
            &self.key,
            self.cursor.as_deref(),
            &batches,
            args.batch_rows,
            &prefix,
        )
        .await?;
        if upsert.stale_keys > 0 {
            tracing::info!(
                stream = self.name,
                keys = upsert.stale_keys,
                "records older (by cursor) than the table's rows of their key: skipped"
            );
        }
        Ok((table, upsert.delta))
    }
}

/// Commits what is left of `stream` after the connector ended well.
async fn finish_stream(lake: &Lake, stream: &mut StreamSync, args: &AirbyteArgs) -> Result<()> {
    match stream.mode {
        Mode::IncrementalAppend | Mode::IncrementalDedup => stream.commit_incremental(lake, args).await,
        Mode::FullAppend | Mode::FullOverwrite => {
            stream.write_pending(args).await?;
            stream.close_writer().await?;
            tarn_core::failpoint::hit("airbyte.before_commit").await?;
            let files = std::mem::take(&mut stream.files);
            let state = stream.state.take();
            let summary = stream.summary(state.as_ref());
            let table = if stream.mode == Mode::FullAppend {
                if files.is_empty() {
                    return Ok(());
                }
                let inserted = rows_of(&files);
                let table = lake.append(&stream.ident, files, summary).await?;
                args.audit(&stream.ident, inserted, 0);
                table
            } else {
                let table = lake.load_table(&stream.ident).await?;
                let (live_data, live_deletes) = Lake::live_files(&table).await?;
                let overwrite = Overwrite {
                    removed_data_files: live_data,
                    removed_delete_files: live_deletes,
                    added_data_files: files,
                    summary,
                };
                if overwrite.is_empty() {
                    return Ok(());
                }
                let inserted = rows_of(&overwrite.added_data_files);
                let deleted = rows_of(&overwrite.removed_data_files)
                    .saturating_sub(rows_of(&overwrite.removed_delete_files));
                let table = lake.commit_overwrite(&table, overwrite).await?;
                args.audit(&stream.ident, inserted, deleted);
                table
            };
            tracing::info!(stream = stream.name, table = %stream.ident, rows = stream.records, "committed");
            stream.table = table;
            stream.commits += 1;
            Ok(())
        }
    }
}

fn decode(schema: &SchemaRef, records: &[Value]) -> Result<Option<RecordBatch>> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len().max(1))
        .build_decoder()?;
    decoder.serialize(records)?;
    Ok(decoder.flush()?)
}

fn primary_key(configured: &Value, name: &str) -> Result<Vec<String>> {
    let key = configured
        .get("primary_key")
        .filter(|k| k.as_array().is_some_and(|k| !k.is_empty()))
        .or_else(|| configured.pointer("/stream/source_defined_primary_key"))
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            anyhow!("stream {name}: append_dedup needs a primary key (primary_key in the catalog)")
        })?;
    key.iter()
        .map(|path| match path.as_array().map(Vec::as_slice) {
            Some([Value::String(column)]) => Ok(column.clone()),
            _ => Err(anyhow!(
                "stream {name}: primary key {path} is not a top-level column (nested keys are not supported)"
            )),
        })
        .collect()
}

/// The cursor column of a dedup stream: the catalog's `cursor_field`, else the stream's
/// `default_cursor_field`. A nested cursor (a path of several names) is not supported: the
/// last record received of a key wins then, as without a cursor.
fn cursor_column(configured: &Value, name: &str) -> Option<String> {
    let path = configured
        .get("cursor_field")
        .filter(|c| c.as_array().is_some_and(|c| !c.is_empty()))
        .or_else(|| configured.pointer("/stream/default_cursor_field"))
        .and_then(Value::as_array)?;
    match path.as_slice() {
        [] => None,
        [Value::String(column)] => Some(column.clone()),
        _ => {
            let cursor = Value::Array(path.clone()).to_string();
            tracing::warn!(
                stream = name,
                cursor,
                "a nested cursor field cannot order the records of a key: the last one received wins"
            );
            None
        }
    }
}

/// The table of a stream: created from its columns (and `_airbyte_emitted_at`), or the
/// existing one with columns the stream gained added.
async fn ensure_table(
    lake: &Lake,
    ident: &TableIdent,
    stream: &str,
    mut fields: Vec<Field>,
    args: &AirbyteArgs,
) -> Result<Table> {
    fields.push(Field::new(
        EMITTED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        true,
    ));
    if !lake.table_exists(ident).await? {
        let schema = Schema::new(fields);
        tracing::info!(stream, table = %ident, "creating the table");
        return Ok(lake.create_table(ident, &schema, &TableLayout::default()).await?);
    }
    let table = lake.load_table(ident).await?;
    let current = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| anyhow!("cannot map the schema of {ident}: {e}"))?;
    // The `iceberg` crate's reader cannot fill a list column missing from older data files
    // with NULLs: on a table with rows, a new column holding a list is stored as JSON text.
    let has_rows = table.metadata().current_snapshot().is_some();
    let added: Vec<Field> = fields
        .into_iter()
        .filter(|f| current.field_with_name(f.name()).is_err())
        .map(|f| {
            if has_rows && holds_list(f.data_type()) {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f
            }
        })
        .collect();
    if added.is_empty() {
        return Ok(table);
    }
    if let Some(g) = &args.governance {
        g.check_table_write("AddColumn", ident, None)?;
    }
    evolve(lake, &table, ident, stream, &added).await
}

/// Adds `added` (optional columns) to `table`'s schema.
async fn evolve(
    lake: &Lake,
    table: &Table,
    ident: &TableIdent,
    stream: &str,
    added: &[Field],
) -> Result<Table> {
    let metadata = table.metadata();
    let mut next_id = metadata.last_column_id() + 1;
    let with_ids: Vec<Field> = added.iter().map(|f| assign_ids(f, &mut next_id)).collect();
    let new = iceberg::arrow::arrow_schema_to_schema(&Schema::new(with_ids))
        .map_err(|e| anyhow!("stream {stream}: cannot map the new columns of {ident}: {e}"))?;
    let current = metadata.current_schema();
    let mut fields: Vec<_> = current.as_struct().fields().to_vec();
    fields.extend(new.as_struct().fields().iter().cloned());
    let schema = iceberg::spec::Schema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(fields)
        .with_identifier_field_ids(current.identifier_field_ids())
        .build()
        .map_err(|e| anyhow!("stream {stream}: cannot add columns to {ident}: {e}"))?;
    tracing::info!(
        stream,
        table = %ident,
        columns = added.iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        "the stream has new columns: adding them"
    );
    Ok(lake.evolve_schema(table, schema, HashMap::new()).await?)
}

fn assign_ids(field: &Field, next: &mut i32) -> Field {
    let id = *next;
    *next += 1;
    let dt = match field.data_type() {
        DataType::Struct(children) => {
            DataType::Struct(children.iter().map(|c| assign_ids(c, next)).collect())
        }
        DataType::List(item) => DataType::List(Arc::new(assign_ids(item, next))),
        other => other.clone(),
    };
    Field::new(field.name(), dt, true).with_metadata(HashMap::from([(
        parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_string(),
        id.to_string(),
    )]))
}

/// The Airbyte state a table's commit holds, with its epoch and journal (GLOBAL / LEGACY).
struct Stored {
    state: Value,
    epoch: u64,
    journal: Option<String>,
}

/// The state of the last commit of the table's current snapshot lineage that holds one.
fn stored_commit(table: &Table) -> Option<Stored> {
    let metadata = table.metadata();
    let mut snapshot = metadata.current_snapshot().cloned();
    while let Some(s) = snapshot {
        let props = &s.summary().additional_properties;
        if let Some(state) = props.get(STATE_KEY) {
            return Some(Stored {
                state: serde_json::from_str(state).ok()?,
                epoch: props.get(EPOCH_KEY).and_then(|e| e.parse().ok()).unwrap_or(0),
                journal: props.get(JOURNAL_KEY).cloned(),
            });
        }
        snapshot = s
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p).cloned());
    }
    None
}

/// Whether `state` is a GLOBAL or LEGACY state (one for every stream).
fn is_global(state: &Value) -> bool {
    matches!(
        state.get("type").and_then(Value::as_str).unwrap_or("LEGACY"),
        "GLOBAL" | "LEGACY"
    )
}

/// The GLOBAL / LEGACY state of a sync: the one received and not committed yet, the last one
/// committed, and its epoch.
struct Global {
    state: Option<Value>,
    committed: Option<Value>,
    epoch: u64,
    last_commit: Instant,
}

/// One table's part of an epoch, as its journal holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct JournalTable {
    namespace: Vec<String>,
    name: String,
    stream: String,
    /// Data and delete files, in the Iceberg REST catalog's JSON form of a data file.
    data_files: Vec<String>,
    delete_files: Vec<String>,
    referenced: Vec<String>,
}

/// The journal of an epoch: what every table commits with `state`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    epoch: u64,
    state: Value,
    tables: Vec<JournalTable>,
}

fn journal_files(table: &Table, files: &[iceberg::spec::DataFile]) -> Result<Vec<String>> {
    let partition_type = table.metadata().default_partition_type();
    files
        .iter()
        .map(|f| {
            iceberg::spec::serialize_data_file_to_json(
                f.clone(),
                partition_type,
                iceberg::spec::FormatVersion::V2,
            )
            .map_err(|e| anyhow!("cannot write down data file {}: {e}", f.file_path()))
        })
        .collect()
}

fn journal_data_files(table: &Table, files: &[String]) -> Result<Vec<iceberg::spec::DataFile>> {
    let metadata = table.metadata();
    files
        .iter()
        .map(|f| {
            iceberg::spec::deserialize_data_file_from_json(
                f,
                metadata.default_partition_spec_id(),
                metadata.default_partition_type(),
                metadata.current_schema(),
            )
            .map_err(|e| {
                anyhow!(
                    "a data file of the journal of {} does not read back: {e}",
                    table.identifier()
                )
            })
        })
        .collect()
}

fn epoch_summary(stream: &str, state: &Value, epoch: u64, journal: Option<&str>) -> HashMap<String, String> {
    let mut summary = HashMap::from([
        ("tarn.operation".to_string(), "airbyte".to_string()),
        (STREAM_KEY.to_string(), stream.to_string()),
        (STATE_KEY.to_string(), state.to_string()),
        (EPOCH_KEY.to_string(), epoch.to_string()),
    ]);
    if let Some(journal) = journal {
        summary.insert(JOURNAL_KEY.to_string(), journal.to_string());
    }
    summary
}

/// Commits the pending rows of every incremental stream with the GLOBAL / LEGACY `state`, as
/// the next epoch: the files of every table are written first; when more than one table has
/// rows, a journal listing them is written next to the first table's metadata; then each table
/// commits its rows with the state, the epoch and the journal's path in the summary. A kill
/// between those commits is finished by the next run ([`resume_global`]).
async fn commit_global(
    lake: &Lake,
    streams: &mut HashMap<String, StreamSync>,
    order: &[String],
    global: &mut Global,
    state: Value,
    args: &AirbyteArgs,
) -> Result<()> {
    let mut prepared = Vec::new();
    for name in order {
        let stream = streams.get_mut(name).expect("a stream of the catalog");
        if !stream.mode.incremental() {
            continue;
        }
        let (table, delta) = stream.prepare(lake, args).await?;
        if delta.is_empty() {
            // Nothing (or only records older than the table's) since the last epoch.
            stream.rows_since_commit = 0;
            continue;
        }
        prepared.push((name.clone(), table, delta));
    }
    if prepared.is_empty() {
        // Not recorded alone: resuming from the previous state reads no record that would
        // land again.
        return Ok(());
    }
    let epoch = global.epoch + 1;
    let journal = if prepared.len() > 1 {
        let tables = prepared
            .iter()
            .map(|(name, table, delta)| {
                let ident = table.identifier();
                Ok(JournalTable {
                    namespace: ident.namespace().clone().inner(),
                    name: ident.name().to_string(),
                    stream: name.clone(),
                    data_files: journal_files(table, &delta.data_files)?,
                    delete_files: journal_files(table, &delta.delete_files)?,
                    referenced: delta.referenced_data_files.iter().cloned().collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let journal = Journal {
            epoch,
            state: state.clone(),
            tables,
        };
        let path = format!(
            "{}/metadata/tarn-airbyte-epoch-{epoch}-{}.json",
            prepared[0].1.metadata().location().trim_end_matches('/'),
            uuid_like()
        );
        lake.file_io()
            .new_output(&path)
            .map_err(|e| anyhow!("cannot write the journal {path}: {e}"))?
            .write(serde_json::to_vec(&journal)?.into())
            .await
            .map_err(|e| anyhow!("cannot write the journal {path}: {e}"))?;
        Some(path)
    } else {
        None
    };
    tarn_core::failpoint::hit("airbyte.before_commit").await?;
    for (i, (name, table, mut delta)) in prepared.into_iter().enumerate() {
        if i > 0 {
            tarn_core::failpoint::hit("airbyte.between_commits").await?;
        }
        delta.summary = epoch_summary(&name, &state, epoch, journal.as_deref());
        let (inserted, deleted) = (rows_of(&delta.data_files), rows_of(&delta.delete_files));
        let table = lake.commit_row_delta(&table, delta).await?;
        args.audit(table.identifier(), inserted, deleted);
        let stream = streams.get_mut(&name).expect("a stream of the catalog");
        stream.committed(table, Some(state.clone()));
    }
    if let Some(path) = &journal
        && let Err(e) = lake.file_io().delete(path).await
    {
        tracing::warn!(
            journal = path,
            "cannot remove the journal of a committed epoch: {e}"
        );
    }
    for stream in streams.values_mut() {
        if stream.mode.incremental() {
            stream.committed_state = Some(state.clone());
        }
    }
    global.epoch = epoch;
    global.committed = Some(state);
    global.last_commit = Instant::now();
    tarn_core::failpoint::hit("airbyte.after_commit").await?;
    Ok(())
}

/// Where a sync with GLOBAL / LEGACY states resumes: the state of the newest epoch any table
/// holds. When that epoch has a journal still there, the run that committed it was killed
/// before removing it: the tables of the journal that do not hold the epoch yet get their
/// files committed now (roll forward), so every table holds the rows up to the state.
async fn resume_global(lake: &Lake, stored: Vec<(TableIdent, Stored)>) -> Result<(Value, u64)> {
    let (_, newest) = stored
        .into_iter()
        .max_by_key(|(_, s)| s.epoch)
        .expect("called with stored states");
    let Some(path) = newest.journal.as_deref() else {
        return Ok((newest.state, newest.epoch));
    };
    let exists = lake
        .file_io()
        .exists(path)
        .await
        .map_err(|e| anyhow!("cannot look for the journal {path}: {e}"))?;
    if !exists {
        // Removed after every table committed the epoch.
        return Ok((newest.state, newest.epoch));
    }
    let bytes = lake
        .file_io()
        .new_input(path)
        .map_err(|e| anyhow!("cannot read the journal {path}: {e}"))?
        .read()
        .await
        .map_err(|e| anyhow!("cannot read the journal {path}: {e}"))?;
    let journal: Journal =
        serde_json::from_slice(&bytes).with_context(|| format!("the journal {path} is not valid"))?;
    if journal.epoch != newest.epoch {
        bail!(
            "the journal {path} is of epoch {}, the tables name it for epoch {}",
            journal.epoch,
            newest.epoch
        );
    }
    for part in &journal.tables {
        let ns = iceberg::NamespaceIdent::from_vec(part.namespace.clone())
            .map_err(|e| anyhow!("the journal {path} names a bad namespace: {e}"))?;
        let ident = TableIdent::new(ns, part.name.clone());
        let table = lake.load_table(&ident).await?;
        let held = stored_commit(&table).map(|s| s.epoch).unwrap_or(0);
        if held >= journal.epoch {
            continue;
        }
        tracing::info!(
            table = %ident,
            epoch = journal.epoch,
            "the last sync was stopped between the commits of one state: committing this table's part"
        );
        let delta = RowDelta {
            data_files: journal_data_files(&table, &part.data_files)?,
            delete_files: journal_data_files(&table, &part.delete_files)?,
            referenced_data_files: part.referenced.iter().cloned().collect(),
            summary: epoch_summary(&part.stream, &journal.state, journal.epoch, Some(path)),
        };
        lake.commit_row_delta(&table, delta).await.with_context(|| {
            format!(
                "cannot finish the commit of epoch {} to {ident} (journal {path})",
                journal.epoch
            )
        })?;
    }
    if let Err(e) = lake.file_io().delete(path).await {
        tracing::warn!(
            journal = path,
            "cannot remove the journal of a committed epoch: {e}"
        );
    }
    Ok((journal.state, journal.epoch))
}

/// What `--state` hands the connector: the per-stream states as an array; a GLOBAL state
/// (stored in every table it covered: the first stream's) alone; a LEGACY state as its bare
/// `data`.
fn state_file(states: Vec<Value>) -> Option<Value> {
    let kind = |s: &Value| {
        s.get("type")
            .and_then(Value::as_str)
            .unwrap_or("LEGACY")
            .to_string()
    };
    if let Some(legacy) = states.iter().find(|s| kind(s) == "LEGACY") {
        return Some(legacy.get("data").cloned().unwrap_or_default());
    }
    if let Some(global) = states.iter().find(|s| kind(s) == "GLOBAL") {
        return Some(Value::Array(vec![global.clone()]));
    }
    let mut out: Vec<Value> = Vec::new();
    for state in states {
        if !out.contains(&state) {
            out.push(state);
        }
    }
    (!out.is_empty()).then_some(Value::Array(out))
}

fn holds_list(dt: &DataType) -> bool {
    match dt {
        DataType::List(_) => true,
        DataType::Struct(fields) => fields.iter().any(|f| holds_list(f.data_type())),
        _ => false,
    }
}

/// `shape` adjusted to the table as it is: a column the table stores as text while the
/// stream's schema gives it another type (a list column added to a table with rows, a column
/// whose shape changed) is stored as JSON text.
fn as_stored(shape: Shape, fields: &[Field], table: &Table) -> Result<Shape> {
    let stored = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| anyhow!("cannot map the schema of {}: {e}", table.identifier()))?;
    let Shape::Struct(mut shapes) = shape else {
        return Ok(shape);
    };
    for field in fields {
        let as_text = stored
            .field_with_name(field.name())
            .is_ok_and(|f| f.data_type() == &DataType::Utf8 && field.data_type() != &DataType::Utf8);
        if as_text {
            shapes.retain(|(name, _)| name != field.name());
            shapes.push((field.name().clone(), Shape::Json));
        }
    }
    Ok(Shape::Struct(shapes))
}
