//! The CockroachDB source: a changefeed into the lake, exactly once.
//!
//! CockroachDB has no PostgreSQL logical replication; it streams row changes as
//! *changefeeds*. tarn creates the changefeed itself — a core changefeed read over its SQL
//! connection (`cdc.changefeed.sink = "sinkless"`), or an enterprise changefeed posting to
//! tarn's HTTPS endpoint (`"webhook"`) — always with `envelope='wrapped'`, `updated`,
//! `resolved` and `full_table_name`, so every row message carries its MVCC timestamp and
//! every resolved message promises that nothing at or before it is still to come.
//!
//! Changefeeds deliver at least once, ordered only per key. The [`window::Window`]
//! deduplicates by key and `updated` and holds messages until a resolved timestamp `T`
//! arrives; then the state at `T` of every key changed in the window is applied to the
//! [`LakeSink`] as one transaction at position `T` and committed under the flush policy. The
//! snapshot summary of each commit records `T` (`tarn.cdc.resolved`). After a restart tarn
//! reads the positions back from the tables and creates the changefeed again with
//! `cursor=` the oldest of them; what the tables hold already is skipped or re-applied
//! idempotently (the state of a key at a later time replaces an earlier one). Nothing is lost,
//! nothing doubled.
//!
//! Memory: a window holds at most `cdc.flush.max_bytes / 2`. A larger one (an initial scan
//! of a big table comes as one window) is applied early, each key at its newest version, in
//! a transaction positioned just before the oldest change it holds. Such a commit may hold
//! changes after its recorded position; a replay from that position applies them again and
//! reaches the same state. A later, older duplicate of a key applied early is recognised by
//! the window's floors and dropped.
//!
//! The schema of each table comes from CockroachDB's `pg_catalog` (the same queries as for
//! PostgreSQL), the primary-key order from `information_schema`. A row carrying a column
//! tarn does not know makes it read the table's schema again and evolve the lake table (the
//! default `schema_change_policy='backfill'` then re-sends every row with the new column).
//!
//! Not available without a real cluster here: the contract tests in
//! `crates/tarn-server/tests/it/cockroach.rs` speak CockroachDB's documented formats
//! (`docs/cockroachdb.md` says how to run against a cluster).

pub mod feed;
pub mod message;
pub mod values;
pub mod window;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tarn_core::{Config, Error, ErrorKind, Result, failpoint};
use tarn_lake::Lake;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{PipelineStatus, RunOptions};
use crate::postgres::catalog::{TableFilter, TypeCache, describe_table, discover_tables};
use crate::postgres::connect::{SourceAddress, query_error, quote_ident, quote_literal};
use crate::postgres::type_options;
use crate::postgres::types::TypeOptions;
use crate::sink::{LakeSink, SinkOptions};
use crate::source::{Position, Row, SourceEvent, TableId, TableSpec, Value};
use message::{Message, RowMessage};
use window::Window;

/// A captured table and how its changefeed messages map onto its columns.
struct Captured {
    spec: Arc<TableSpec>,
    /// Column indexes of the primary key, in primary-index order (the key array's order).
    key_order: Vec<usize>,
    /// Column name → index.
    by_name: HashMap<String, usize>,
}

impl Captured {
    fn new(spec: Arc<TableSpec>, key_names: &[String]) -> Result<Self> {
        let by_name: HashMap<String, usize> = spec
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let mut key_order = Vec::new();
        for name in key_names {
            key_order.push(*by_name.get(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!(
                        "primary-key column {name} of {} is not among its columns",
                        spec.qualified()
                    ),
                )
            })?);
        }
        if key_order.is_empty() {
            key_order = spec.key_columns();
        }
        Ok(Self {
            spec,
            key_order,
            by_name,
        })
    }

    fn cell(&self, column: usize, raw: &serde_json::value::RawValue, topic: &str) -> Result<Value> {
        let c = &self.spec.columns[column];
        values::cell(raw, &c.column_type).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "changefeed message for {topic}, column {} ({}): {e}",
                    c.name, c.type_name
                ),
            )
        })
    }

    /// The row of an upsert: `after`'s values by column name; absent columns are NULL.
    fn row(&self, message: &RowMessage, after: &[(String, Box<serde_json::value::RawValue>)]) -> Result<Row> {
        let mut row = vec![Value::Null; self.spec.columns.len()];
        for (name, raw) in after {
            if let Some(&i) = self.by_name.get(name) {
                row[i] = self.cell(i, raw, &message.topic)?;
            }
        }
        Ok(row)
    }

    /// The old row of a delete: the key columns from the key array, the rest NULL.
    fn key_row(&self, message: &RowMessage) -> Result<Row> {
        if message.key.len() != self.key_order.len() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "changefeed message for {}: key {} has {} values, the primary key of {} has {} columns",
                    message.topic,
                    message.key_text(),
                    message.key.len(),
                    self.spec.qualified(),
                    self.key_order.len()
                ),
            ));
        }
        let mut row = vec![Value::Null; self.spec.columns.len()];
        for (raw, &i) in message.key.iter().zip(&self.key_order) {
            row[i] = self.cell(i, raw, &message.topic)?;
        }
        Ok(row)
    }

    fn knows_all(&self, after: &[(String, Box<serde_json::value::RawValue>)]) -> bool {
        after.iter().all(|(name, _)| self.by_name.contains_key(name))
    }
}

/// The captured tables by the names changefeed topics use.
#[derive(Default)]
struct Tables {
    by_id: HashMap<TableId, Captured>,
    /// `schema.table` → id (topics are `database.schema.table`).
    by_name: HashMap<String, TableId>,
}

impl Tables {
    fn insert(&mut self, captured: Captured) {
        self.by_name.insert(captured.spec.qualified(), captured.spec.id);
        self.by_id.insert(captured.spec.id, captured);
    }

    fn lookup(&self, topic: &str) -> Result<&Captured> {
        let parts: Vec<&str> = topic.splitn(3, '.').collect();
        let qualified = match parts.as_slice() {
            [_, schema, table] => format!("{schema}.{table}"),
            [schema, table] => format!("{schema}.{table}"),
            _ => format!("public.{topic}"),
        };
        self.by_name
            .get(&qualified)
            .and_then(|id| self.by_id.get(id))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("changefeed message for table {topic}, which this pipeline does not capture"),
                )
            })
    }
}

/// Reads the primary-key columns of `schema.table` in key order.
async fn key_names(client: &tokio_postgres::Client, spec: &TableSpec) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT k.column_name::text \
             FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_name = c.constraint_name AND k.constraint_schema = c.constraint_schema \
              AND k.table_name = c.table_name \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = $1 AND c.table_name = $2 \
             ORDER BY k.ordinal_position",
            &[&spec.schema, &spec.name],
        )
        .await
        .map_err(|e| query_error(format!("cannot read the primary key of {}", spec.qualified()), e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How often tables without changes get their position moved up (a metadata-only commit).
const IDLE_MARK_INTERVAL: Duration = Duration::from_secs(60);

/// Where the id of the webhook changefeed job tarn created last is kept.
fn job_path(config: &Config) -> PathBuf {
    config
        .data_dir
        .join("cdc")
        .join(format!("{}.changefeed-job", config.cdc.pipeline))
}

/// The id of the webhook changefeed job a pipeline created and has not cancelled, if any.
pub fn recorded_job(config: &Config) -> Option<String> {
    std::fs::read_to_string(job_path(config))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Cancels the pipeline's recorded webhook changefeed job (`tarn cdc drop`); returns its id.
/// A core changefeed ends with its connection and needs no cancelling.
pub async fn cancel_recorded_job(config: &Config) -> Result<Option<String>> {
    let Some(id) = recorded_job(config) else {
        return Ok(None);
    };
    let url = config.cdc.source.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "no CDC source: set cdc.source to the cluster's postgres:// URL",
        )
    })?;
    let client = SourceAddress::parse(url)?.connect().await?;
    client
        .simple_query(&format!("CANCEL JOB {id}"))
        .await
        .map_err(|e| query_error(format!("cannot cancel changefeed job {id}"), e))?;
    let _ = std::fs::remove_file(job_path(config));
    Ok(Some(id))
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The changefeed's `WITH` options.
fn feed_options(config: &Config, cursor: Option<Position>, initial_scan: bool) -> Vec<String> {
    let feed = &config.cdc.changefeed;
    let mut options = vec![
        "updated".to_string(),
        format!("resolved = {}", quote_literal(&feed.resolved)),
        "envelope = 'wrapped'".into(),
        "format = 'json'".into(),
        "full_table_name".into(),
        format!(
            "schema_change_policy = {}",
            quote_literal(&feed.schema_change_policy)
        ),
        format!("initial_scan = {}", if initial_scan { "'yes'" } else { "'no'" }),
    ];
    if let Some(c) = cursor {
        options.push(format!("cursor = {}", quote_literal(&c.to_string())));
    }
    options
}

/// Runs the CockroachDB pipeline once; see the module doc. Errors the caller may retry are
/// [`ErrorKind::Source`] and lake errors.
pub(crate) async fn run_once(
    config: &Config,
    lake: Lake,
    options: &RunOptions,
    status: &PipelineStatus,
    stop: &CancellationToken,
) -> Result<()> {
    let cdc = &config.cdc;
    let feed = &cdc.changefeed;
    status.update(|r| {
        r.state = "starting".into();
        r.pipeline = cdc.pipeline.clone();
        r.slot = format!("changefeed ({})", feed.sink);
        r.publication = String::new();
    });
    let url = cdc.source.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "no CDC source: set cdc.source to the cluster's postgres:// URL",
        )
    })?;
    let address = SourceAddress::parse(url)?;
    let client = address.connect().await?;
    status.update(|r| r.source = address.display.clone());
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(|e| query_error("cannot read the server version", e))?
        .get(0);
    if !version.contains("CockroachDB") {
        tracing::warn!(%version, "cdc.source_kind is cockroachdb, but the server does not say it is CockroachDB");
    }
    let type_opts = type_options(cdc);
    let types = TypeCache::load(&client).await?;
    let filter = TableFilter {
        include: cdc.tables.clone(),
        exclude: cdc.exclude.clone(),
    };
    let specs = discover_tables(&client, &filter, &types, &type_opts).await?;
    if specs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "no table of {} matches cdc.tables {:?}; a changefeed needs at least one",
                address.display, cdc.tables
            ),
        ));
    }
    let sink_options = SinkOptions {
        pipeline: cdc.pipeline.clone(),
        namespace: cdc.namespace.clone(),
        table_name: cdc.table_name.clone(),
        spill_bytes: (cdc.flush.max_bytes / 2) as usize,
    };
    let mut sink = LakeSink::new(lake, sink_options);
    let mut tables = Tables::default();
    let mut held: Vec<Position> = Vec::new();
    let mut unheld: Vec<TableId> = Vec::new();
    for spec in &specs {
        let keys = key_names(&client, spec).await?;
        let attached = sink.attach(spec.clone()).await?;
        tracing::info!(source = %spec.qualified(), table = %attached.ident,
            position = ?attached.position.map(|p| p.to_string()), stopped = ?attached.stopped, "attached table");
        if attached.stopped.is_none() {
            match attached.position {
                Some(p) if !options.resnapshot => held.push(p),
                _ => unheld.push(spec.id),
            }
        }
        tables.insert(Captured::new(spec.clone(), &keys)?);
    }
    crate::pipeline::refresh_tables(&sink, status);
    // Start where the table that is furthest behind stands; a table without a position (or
    // all, on the first run) gets an initial scan.
    let cursor = held.iter().min().copied();
    let initial_scan = !unheld.is_empty() && (cdc.snapshot == "initial" || options.resnapshot);
    if initial_scan {
        // The scanned tables start empty (a resnapshot replaces what they held), and every
        // one of them is committed with the first resolved timestamp, even when the scan
        // finds no rows, so the next start does not scan again. The first window's changes
        // join this transaction.
        sink.apply(SourceEvent::Begin {
            commit_position: Position(u128::MAX),
        })
        .await?;
        sink.apply(SourceEvent::Truncate {
            tables: unheld.clone(),
        })
        .await?;
    }
    let targets = specs
        .iter()
        .map(|s| format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let feed_stop = stop.child_token();
    let _feed_guard = feed_stop.clone().drop_guard();
    let (tx, mut rx) = mpsc::channel(64);
    let mut job = None;
    if feed.sink == "webhook" {
        if let Ok(previous) = std::fs::read_to_string(job_path(config)) {
            let previous = previous.trim().to_string();
            match client.simple_query(&format!("CANCEL JOB {previous}")).await {
                Ok(_) => tracing::info!(job = %previous, "cancelled the previous changefeed job"),
                Err(e) => {
                    tracing::info!(job = %previous, error = %e, "previous changefeed job not cancelled (it may be gone)")
                }
            }
            let _ = std::fs::remove_file(job_path(config));
        }
        let listen: std::net::SocketAddr = feed.webhook_listen.parse().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "key `cdc.changefeed.webhook_listen`: bad address {:?}",
                    feed.webhook_listen
                ),
            )
        })?;
        let host = match &feed.webhook_url {
            Some(u) => url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default(),
            None => listen.ip().to_string(),
        };
        let tls = feed::WebhookTls::load_or_generate(
            feed.webhook_cert.as_deref(),
            feed.webhook_key.as_deref(),
            feed.webhook_ca.as_deref(),
            &host,
        )?;
        let token = random_token();
        let path = format!("/changefeed/{}/{token}", cdc.pipeline);
        let secret = random_token();
        let server = feed::start_webhook(
            &feed.webhook_listen,
            &tls,
            path.clone(),
            format!("Bearer {secret}"),
            tx.clone(),
            feed_stop.clone(),
        )
        .await?;
        let base = match &feed.webhook_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("https://{}", server.local_addr),
        };
        let mut sink_uri = format!("webhook-{base}{path}");
        if let Some(ca) = &server.ca_pem {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
            let encoded: String = url::form_urlencoded::byte_serialize(encoded.as_bytes()).collect();
            sink_uri.push_str(&format!("?ca_cert={encoded}"));
        }
        let mut with = feed_options(config, cursor, initial_scan);
        with.push(format!(
            "webhook_auth_header = {}",
            quote_literal(&format!("Bearer {secret}"))
        ));
        let statement = format!(
            "CREATE CHANGEFEED FOR TABLE {targets} INTO {} WITH {}",
            quote_literal(&sink_uri),
            with.join(", ")
        );
        let rows = client
            .simple_query(&statement)
            .await
            .map_err(|e| query_error("cannot create the webhook changefeed", e))?;
        let id = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| Error::new(ErrorKind::Source, "CREATE CHANGEFEED returned no job id"))?;
        if let Some(dir) = job_path(config).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(job_path(config), &id).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("cannot record the changefeed job: {e}"),
            )
        })?;
        tracing::info!(job = %id, endpoint = %server.local_addr, cursor = ?cursor.map(|c| c.to_string()), initial_scan, "created webhook changefeed");
        job = Some(id);
    } else {
        let statement = format!(
            "EXPERIMENTAL CHANGEFEED FOR TABLE {targets} WITH {}",
            feed_options(config, cursor, initial_scan).join(", ")
        );
        tracing::info!(cursor = ?cursor.map(|c| c.to_string()), initial_scan, "starting core changefeed");
        tokio::spawn(feed::run_core(
            address.clone(),
            statement,
            tx.clone(),
            feed_stop.clone(),
        ));
    }
    drop(tx);
    status.update(|r| {
        r.state = if initial_scan { "snapshotting" } else { "streaming" }.into();
        r.last_error = None;
        r.acknowledged = cursor.map(|c| c.to_string());
    });
    let result = stream(
        config,
        &client,
        &types,
        &mut sink,
        &mut tables,
        &mut rx,
        cursor,
        status,
        stop,
    )
    .await;
    if let (Some(id), Ok(())) = (&job, &result) {
        // A clean stop: the next start creates the changefeed again from the lake's position.
        match client.simple_query(&format!("CANCEL JOB {id}")).await {
            Ok(_) => {
                let _ = std::fs::remove_file(job_path(config));
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "could not cancel the changefeed job"),
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    config: &Config,
    client: &tokio_postgres::Client,
    types: &TypeCache,
    sink: &mut LakeSink,
    tables: &mut Tables,
    rx: &mut mpsc::Receiver<feed::Delivery>,
    cursor: Option<Position>,
    status: &PipelineStatus,
    stop: &CancellationToken,
) -> Result<()> {
    let cdc = &config.cdc;
    let interval = cdc.flush_interval();
    let budget = (cdc.flush.max_bytes / 2) as usize;
    let mut window = Window::new(cursor);
    let mut types = types.clone();
    let type_opts = type_options(cdc);
    let mut last_idle_mark = Instant::now();
    let mut last_flushed: Option<Position> = None;
    loop {
        let deadline = sink
            .pending_since()
            .map(|t| t + interval)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let delivery = tokio::select! {
            // Stopping closes the feed too: see the stop first.
            biased;
            () = stop.cancelled() => {
                if !sink.in_transaction() {
                    if let Some(p) = sink.flush().await? {
                        status.update(|r| r.acknowledged = Some(p.to_string()));
                        last_flushed = Some(p);
                    }
                    if let Some(p) = last_flushed {
                        // The next start resumes from here, quiet tables included.
                        sink.mark_idle(p).await?;
                    }
                }
                tracing::info!(resolved = ?window.resolved().map(|r| r.to_string()), "CDC pipeline stopped");
                return Ok(());
            }
            d = rx.recv() => match d {
                Some(d) => Some(d?),
                None => return Err(Error::new(ErrorKind::Source, "the changefeed stopped delivering")),
            },
            () = tokio::time::sleep_until(deadline.into()) => None,
        };
        let mut flush_now = delivery.is_none();
        for message in delivery.into_iter().flatten() {
            failpoint::hit("cdc.on_event").await?;
            match message {
                Message::Row(row) => {
                    tables.lookup(&row.topic)?;
                    window.push(row);
                    if window.bytes() > budget {
                        let early = window.oldest().map(|o| Position(o.0 - 1)).unwrap_or_default();
                        let changes = window.take_all();
                        tracing::info!(changes = changes.len(), position = %early, "window over its memory budget; applying it early");
                        apply(
                            client, &mut types, &type_opts, sink, tables, changes, early, status,
                        )
                        .await?;
                    }
                }
                Message::Resolved(resolved) => {
                    if window.resolved().is_some_and(|r| resolved <= r) {
                        continue;
                    }
                    let changes = window.take(resolved);
                    apply(
                        client, &mut types, &type_opts, sink, tables, changes, resolved, status,
                    )
                    .await?;
                    status.update(|r| r.received = Some(resolved.to_string()));
                    let full = sink.pending_events() >= cdc.flush.max_rows
                        || sink.pending_bytes() as u64 >= cdc.flush.max_bytes;
                    flush_now |= full || sink.pending_since().is_some_and(|t| t.elapsed() >= interval);
                    let (duplicates, stale) = window.dropped();
                    metrics::gauge!("tarn_cdc_changefeed_duplicates_total").set(duplicates as f64);
                    metrics::gauge!("tarn_cdc_changefeed_stale_total").set(stale as f64);
                }
            }
        }
        status.update(|r| r.pending_events = window.len() as u64 + sink.pending_events());
        if !flush_now || sink.in_transaction() || sink.pending_since().is_none() {
            continue;
        }
        if let Some(p) = sink.flush().await? {
            failpoint::hit("cdc.before_ack").await?;
            last_flushed = Some(p);
            if last_idle_mark.elapsed() >= IDLE_MARK_INTERVAL {
                // Quiet tables would otherwise hold the restart cursor at their last change.
                sink.mark_idle(p).await?;
                last_idle_mark = Instant::now();
            }
            let lag = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                .saturating_sub(p.wall_nanos())) as f64
                / 1e9;
            metrics::gauge!("tarn_cdc_lag_seconds").set(lag);
            status.update(|r| {
                r.acknowledged = Some(p.to_string());
                r.lag_seconds = Some(lag);
                r.state = "streaming".into();
            });
            crate::pipeline::refresh_tables(sink, status);
        }
    }
}

/// Applies the state at `position` of the keys in `changes` as one transaction.
#[allow(clippy::too_many_arguments)]
async fn apply(
    client: &tokio_postgres::Client,
    types: &mut TypeCache,
    type_opts: &TypeOptions,
    sink: &mut LakeSink,
    tables: &mut Tables,
    changes: Vec<RowMessage>,
    position: Position,
    status: &PipelineStatus,
) -> Result<()> {
    // A column tarn does not know: read the table's schema again first.
    let mut refresh = Vec::new();
    for m in &changes {
        let captured = tables.lookup(&m.topic)?;
        if let Some(after) = &m.after
            && !captured.knows_all(after)
            && !refresh.contains(&captured.spec.id)
        {
            refresh.push(captured.spec.id);
        }
    }
    for id in refresh {
        *types = TypeCache::load(client).await?;
        if let Some(spec) = describe_table(client, id, types, type_opts).await? {
            let keys = key_names(client, &spec).await?;
            if spec != tables.by_id[&id].spec {
                tracing::info!(table = %spec.qualified(), "schema changed");
                sink.apply(SourceEvent::Relation(spec.clone())).await?;
            }
            tables.insert(Captured::new(spec, &keys)?);
        }
    }
    sink.apply(SourceEvent::Begin {
        commit_position: position,
    })
    .await?;
    let mut events = 0u64;
    for m in &changes {
        let captured = tables.lookup(&m.topic)?;
        let id = captured.spec.id;
        let event = match &m.after {
            Some(after) => SourceEvent::Insert {
                table: id,
                new: captured.row(m, after)?,
            },
            None => SourceEvent::Delete {
                table: id,
                old: captured.key_row(m)?,
            },
        };
        sink.apply(event).await?;
        events += 1;
        sink.spill_if_needed().await?;
    }
    sink.apply(SourceEvent::Commit {
        position,
        commit_time_micros: (position.wall_nanos() / 1000) as i64,
    })
    .await?;
    status.events.fetch_add(events, Ordering::Relaxed);
    metrics::counter!("tarn_cdc_events_total").increment(events);
    Ok(())
}
