//! The CockroachDB source: changefeeds into the lake, exactly once.
//!
//! CockroachDB has no PostgreSQL logical replication; it streams row changes as
//! *changefeeds*. tarn creates them itself, always in the JSON format with the `wrapped`
//! envelope and `full_table_name` (see [`message`] for the shapes, [`values`] for the value
//! encodings). Supported: CockroachDB v23.1 and later.
//!
//! **Scan.** Tables without a lake position — all of them on the first start, a table added
//! to `cdc.tables` later, every table on `--resnapshot` — are copied first, as of one cluster
//! timestamp `T` (`cluster_logical_timestamp()`), by a scan-only changefeed
//! (`initial_scan = 'only', cursor = T`) read on a SQL connection. The copy is one lake
//! transaction at `T`, committed only when the scan has ended, so a crash mid-scan leaves
//! the tables without a position and the next start scans again. Tables that already have a
//! position are not scanned again (a changefeed with `initial_scan = 'yes'` would scan every
//! target, and stamp each scanned row with its cursor).
//!
//! **Stream.** Then one changefeed over all captured tables runs from `cursor =` the oldest
//! table position, with `updated`, `resolved = <cdc.changefeed.resolved>` and
//! `min_checkpoint_frequency` set to the same interval (CockroachDB emits resolved
//! timestamps no more often than that, 30 s unless set): a core changefeed read over tarn's
//! SQL connection (`cdc.changefeed.sink = "sinkless"`), or an enterprise changefeed posting
//! to tarn's HTTPS endpoint (`"webhook"`), directly or through an external connection
//! (`cdc.changefeed.external_connection`). tarn checks the webhook job's state every few
//! seconds and starts over when it has failed or was paused.
//!
//! Changefeeds deliver at least once, ordered only per key. The [`window::Window`]
//! deduplicates by key and `updated` and holds messages until a resolved timestamp `T`
//! arrives; then the state at `T` of every key changed in the window is applied to the
//! [`LakeSink`] as one transaction at position `T` and committed under the flush policy. The
//! snapshot summary of each commit records `T` (`tarn.cdc.resolved`). After a restart tarn
//! reads the positions back from the tables and creates the changefeed again with
//! `cursor=` the oldest of them; a table holding a later position skips the transactions it
//! holds already, and re-applying a key's state at a later time replaces an earlier one.
//! Nothing is lost, nothing doubled.
//!
//! Memory: a window holds at most `cdc.flush.max_bytes / 2`. A larger one is applied early,
//! each key at its newest version, in a transaction positioned just before the oldest change
//! it holds. Such a commit may hold changes after its recorded position; a replay from that
//! position applies them again and reaches the same state. A later, older duplicate of a key
//! applied early is recognised by the window's floors and dropped. A scan streams into the
//! lake writer, which spills to data files as it goes.
//!
//! The schema of each table comes from CockroachDB's `pg_catalog` (the queries of
//! `postgres::catalog`, written to what CockroachDB answers: `relispartition` is NULL there,
//! `relreplident` NULL before v23.2, the hidden `rowid` a primary-key column), the
//! primary-key order from `information_schema`. Key columns take their values from the
//! message's key array (a hash-sharded key's virtual shard column is never in `after`). A
//! row carrying a column tarn does not know makes it read the table's schema again and
//! evolve the lake table (the default `schema_change_policy='backfill'` then re-sends every
//! row with the new column).
//!
//! Not available without a real cluster here: the contract tests in
//! `crates/tarn-server/tests/it/cockroach.rs` run against `tarn_test_utils::cockroach`, a
//! stand-in that answers as CockroachDB does (`docs/cockroachdb.md` says how to run against a
//! cluster).

pub mod feed;
pub mod message;
pub mod values;
pub mod window;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tarn_core::{Config, Error, ErrorKind, Result};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::pipeline::{PipelineStatus, SourceContext};
use crate::position::Hlc;
use crate::postgres::catalog::{TableFilter, TypeCache, describe_table, discover_tables};
use crate::postgres::connect::{SourceAddress, query_error, quote_ident, quote_literal};
use crate::postgres::type_options;
use crate::postgres::types::TypeOptions;
use crate::sink::ChangeSink;
use crate::source::{ChangeSource, FlushRule, Next, Position, Row, SourceEvent, TableId, TableSpec, Value};
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
        values::cell(raw, &c.column_type, c.type_oid).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "changefeed message for {topic}, column {} ({}): {e}",
                    c.name, c.type_name
                ),
            )
        })
    }

    /// The row of an upsert: `after`'s values by column name; absent columns are NULL, but
    /// for key columns, which the key array carries (a hash-sharded primary key's virtual
    /// shard column is in the key, never in `after`).
    fn row(&self, message: &RowMessage, after: &[(String, Box<serde_json::value::RawValue>)]) -> Result<Row> {
        let mut row = self.key_row(message)?;
        for (name, raw) in after {
            if let Some(&i) = self.by_name.get(name)
                && !self.key_order.contains(&i)
            {
                row[i] = self.cell(i, raw, &message.topic)?;
            }
        }
        Ok(row)
    }

    /// The key columns from the key array, the rest NULL (the old row of a delete).
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

/// A CockroachDB release, from `SELECT version()` (`CockroachDB CCL v24.2.3 (...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterVersion {
    /// Year-based major version (`24`).
    pub major: u32,
    /// Release of the year (`2`).
    pub minor: u32,
}

impl ClusterVersion {
    /// The oldest release tarn supports: 23.1.
    pub const OLDEST: Self = Self { major: 23, minor: 1 };

    /// Reads the release out of `version()`'s text; `None` when it is not CockroachDB's.
    pub fn parse(version: &str) -> Option<Self> {
        let rest = version.split_once("CockroachDB")?.1;
        let v = rest.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
        let mut parts = v.split(['.', '-']);
        Some(Self {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }

    /// Whether changefeeds accept `encode_json_value_null_as_object` (v24.2+), which keeps a
    /// JSONB `null` apart from SQL NULL.
    pub fn encodes_json_null(self) -> bool {
        self >= Self { major: 24, minor: 2 }
    }
}

impl std::fmt::Display for ClusterVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

/// The options every changefeed tarn creates shares: the wrapped JSON envelope with
/// `full_table_name` (see `message`), and JSONB `null` kept apart where the cluster can.
fn common_options(version: ClusterVersion) -> Vec<String> {
    let mut options = vec![
        "envelope = 'wrapped'".to_string(),
        "format = 'json'".into(),
        "full_table_name".into(),
    ];
    if version.encodes_json_null() {
        options.push("encode_json_value_null_as_object".into());
    }
    options
}

/// The streaming changefeed's `WITH` options. Resolved timestamps come no more often than
/// `min_checkpoint_frequency` (30 s unless set), so that is the cadence tarn asks for
/// (`cdc.changefeed.resolved`). At each checkpoint CockroachDB emits a resolved timestamp
/// only when it is at least `resolved` past the last one it emitted; checkpoints `d` apart
/// carry timestamps about `d` apart, give or take, so `resolved` equal to `d` would skip
/// every checkpoint that falls a little short and halve the cadence. `resolved` is set a
/// fifth below the cadence so that every checkpoint carries one.
fn feed_options(config: &Config, version: ClusterVersion, cursor: Option<Hlc>) -> Vec<String> {
    let feed = &config.cdc.changefeed;
    let cadence = tarn_core::config::parse_duration("cdc.changefeed.resolved", &feed.resolved)
        .unwrap_or(Duration::from_secs(1));
    let resolved = format!("{}ms", (cadence.as_millis() * 4 / 5).max(1));
    let mut options = common_options(version);
    options.extend([
        "updated".to_string(),
        format!("resolved = {}", quote_literal(&resolved)),
        format!(
            "min_checkpoint_frequency = {}",
            quote_literal(&format!("{}ms", cadence.as_millis().max(1)))
        ),
        format!(
            "schema_change_policy = {}",
            quote_literal(&feed.schema_change_policy)
        ),
        "initial_scan = 'no'".into(),
    ]);
    if let Some(c) = cursor {
        options.push(format!("cursor = {}", quote_literal(&c.to_string())));
    }
    options
}

/// How long a cluster node waits for tarn's reply to a delivery before it retries; tarn
/// answers once the delivery is buffered, which waits while the lake commits.
const WEBHOOK_CLIENT_TIMEOUT: &str = "60s";

/// Batches of up to 1,000 rows (CockroachDB sends one row per request unless told), at
/// most 100 ms old; retried without end while tarn is unreachable (the job would otherwise
/// fail after three tries and need a restart).
const WEBHOOK_SINK_CONFIG: &str =
    r#"{"Flush": {"Messages": 1000, "Frequency": "100ms"}, "Retry": {"Max": "inf", "Backoff": "500ms"}}"#;

/// `targets` as a changefeed's target list.
fn target_list(specs: &[&TableSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The webhook endpoint's fixed path when the changefeed goes through an external
/// connection (whose URI cannot change at every start).
pub fn stable_webhook_path(pipeline: &str) -> String {
    format!("/changefeed/{pipeline}")
}

/// The host name the webhook endpoint's certificate is made for.
fn webhook_host(config: &Config) -> Result<String> {
    let feed = &config.cdc.changefeed;
    let listen: std::net::SocketAddr = feed.webhook_listen.parse().map_err(|_| {
        Error::new(
            ErrorKind::Config,
            format!(
                "key `cdc.changefeed.webhook_listen`: bad address {:?}",
                feed.webhook_listen
            ),
        )
    })?;
    Ok(match &feed.webhook_url {
        Some(u) => url::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default(),
        None => listen.ip().to_string(),
    })
}

/// The endpoint's TLS material: the configured certificate; else, behind an external
/// connection, one made once and kept in the data directory; else one made for this start.
fn webhook_tls(config: &Config) -> Result<feed::WebhookTls> {
    let feed = &config.cdc.changefeed;
    let host = webhook_host(config)?;
    if feed.webhook_cert.is_none() && feed.external_connection.is_some() {
        return feed::WebhookTls::persisted(
            &config.data_dir.join("cdc"),
            &format!("{}.webhook", config.cdc.pipeline),
            &host,
        );
    }
    feed::WebhookTls::load_or_generate(
        feed.webhook_cert.as_deref(),
        feed.webhook_key.as_deref(),
        feed.webhook_ca.as_deref(),
        &host,
    )
}

/// `webhook-https://<url><path>[?ca_cert=<base64 PEM>]`, the sink URI of a webhook changefeed.
fn webhook_uri(base: &str, path: &str, ca_pem: Option<&str>) -> String {
    let mut uri = format!("webhook-{}{path}", base.trim_end_matches('/'));
    if let Some(ca) = ca_pem {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
        let encoded: String = url::form_urlencoded::byte_serialize(encoded.as_bytes()).collect();
        uri.push_str(&format!("?ca_cert={encoded}"));
    }
    uri
}

/// The statements an admin runs once so that tarn's webhook changefeed can go through the
/// external connection `cdc.changefeed.external_connection` (`tarn cdc external-connection`).
pub fn external_connection_statements(config: &Config, user: &str) -> Result<String> {
    let feed = &config.cdc.changefeed;
    let name = feed.external_connection.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "set cdc.changefeed.external_connection (and cdc.changefeed.sink = \"webhook\") first",
        )
    })?;
    let base = match &feed.webhook_url {
        Some(u) => u.clone(),
        None => format!("https://{}", feed.webhook_listen),
    };
    let tls = webhook_tls(config)?;
    let uri = webhook_uri(
        &base,
        &stable_webhook_path(&config.cdc.pipeline),
        tls.ca_pem.as_deref(),
    );
    Ok(format!(
        "CREATE EXTERNAL CONNECTION {} AS {};\nGRANT USAGE ON EXTERNAL CONNECTION {} TO {};\n",
        quote_ident(name),
        quote_literal(&uri),
        quote_ident(name),
        quote_ident(user)
    ))
}

/// The CockroachDB change source; see the module doc.
pub struct ChangefeedSource {
    address: SourceAddress,
    client: tokio_postgres::Client,
    version: ClusterVersion,
    types: TypeCache,
    type_opts: TypeOptions,
    tables: Tables,
    window: Window,
    /// The stream changefeed's deliveries, once started.
    feed: Option<mpsc::Receiver<feed::Delivery>>,
    /// Stops the changefeed readers (and the webhook server) when the source goes away.
    _feed_guard: Option<DropGuard>,
    /// The webhook changefeed job, if that is the sink.
    job: Option<String>,
    job_path: PathBuf,
    /// A window larger than this is applied early.
    budget: usize,
    /// No resolved timestamp for this long is worth a warning.
    quiet_limit: Duration,
    last_resolved: Instant,
    last_idle_mark: Instant,
    /// Changes were applied since the last idle mark.
    changed_since_mark: bool,
    received: Option<Hlc>,
}

impl ChangefeedSource {
    /// Connects to `cdc.source` and checks it runs a CockroachDB tarn supports.
    pub async fn connect(config: &Config, status: &PipelineStatus) -> Result<Self> {
        let cdc = &config.cdc;
        let feed = &cdc.changefeed;
        status.update(|r| {
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
        let version_text: String = client
            .query_one("SELECT version()", &[])
            .await
            .map_err(|e| query_error("cannot read the server version", e))?
            .get(0);
        let version = match ClusterVersion::parse(&version_text) {
            Some(v) if v < ClusterVersion::OLDEST => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{} runs CockroachDB {v}; tarn's changefeed source needs {} or later",
                        address.display,
                        ClusterVersion::OLDEST
                    ),
                ));
            }
            Some(v) => v,
            None => {
                tracing::warn!(version = %version_text, "cdc.source_kind is cockroachdb, but the server does not say it is CockroachDB");
                ClusterVersion::OLDEST
            }
        };
        let types = TypeCache::load(&client).await?;
        let resolved_every = tarn_core::config::parse_duration("cdc.changefeed.resolved", &feed.resolved)?;
        Ok(Self {
            address,
            client,
            version,
            types,
            type_opts: type_options(cdc),
            tables: Tables::default(),
            window: Window::new(None),
            feed: None,
            _feed_guard: None,
            job: None,
            job_path: job_path(config),
            budget: (cdc.flush.max_bytes / 2) as usize,
            quiet_limit: (resolved_every * 10).max(Duration::from_secs(60)),
            last_resolved: Instant::now(),
            last_idle_mark: Instant::now(),
            changed_since_mark: false,
            received: None,
        })
    }

    /// Creates the stream changefeed from `cursor`: sinkless on this connection's address, or
    /// a webhook job posting to tarn's endpoint.
    async fn create_changefeed(
        &mut self,
        config: &Config,
        specs: &[Arc<TableSpec>],
        cursor: Option<Hlc>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let cdc = &config.cdc;
        let feed = &cdc.changefeed;
        let client = &self.client;
        let version = self.version;
        let targets = target_list(&specs.iter().map(Arc::as_ref).collect::<Vec<_>>());
        let feed_stop = stop.child_token();
        self._feed_guard = Some(feed_stop.clone().drop_guard());
        let (tx, rx) = mpsc::channel(64);
        if feed.sink == "webhook" {
            if let Ok(previous) = std::fs::read_to_string(&self.job_path) {
                let previous = previous.trim().to_string();
                match client.simple_query(&format!("CANCEL JOB {previous}")).await {
                    Ok(_) => tracing::info!(job = %previous, "cancelled the previous changefeed job"),
                    Err(e) => {
                        tracing::info!(job = %previous, error = %e, "previous changefeed job not cancelled (it may be gone)")
                    }
                }
                let _ = std::fs::remove_file(&self.job_path);
            }
            let tls = webhook_tls(config)?;
            // Behind an external connection the path stays the same; otherwise each start uses a
            // fresh one. The secret is a changefeed option, so it is fresh at every start.
            let path = match &feed.external_connection {
                Some(_) => stable_webhook_path(&cdc.pipeline),
                None => format!("/changefeed/{}/{}", cdc.pipeline, random_token()),
            };
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
            let sink_uri = match &feed.external_connection {
                Some(name) => format!("external://{name}"),
                None => {
                    let base = match &feed.webhook_url {
                        Some(u) => u.clone(),
                        None => format!("https://{}", server.local_addr),
                    };
                    webhook_uri(&base, &path, server.ca_pem.as_deref())
                }
            };
            let mut with = feed_options(config, version, cursor);
            with.extend([
                format!(
                    "webhook_auth_header = {}",
                    quote_literal(&format!("Bearer {secret}"))
                ),
                format!(
                    "webhook_client_timeout = {}",
                    quote_literal(WEBHOOK_CLIENT_TIMEOUT)
                ),
                format!("webhook_sink_config = {}", quote_literal(WEBHOOK_SINK_CONFIG)),
            ]);
            let statement = format!(
                "CREATE CHANGEFEED FOR TABLE {targets} INTO {} WITH {}",
                quote_literal(&sink_uri),
                with.join(", ")
            );
            let rows = client.simple_query(&statement).await.map_err(|e| {
                let hint = if feed.external_connection.is_none() {
                    " (on a cluster that allows only external-connection sinks, set \
                     cdc.changefeed.external_connection; see `tarn cdc external-connection`)"
                } else {
                    ""
                };
                query_error(format!("cannot create the webhook changefeed{hint}"), e)
            })?;
            let id = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .ok_or_else(|| Error::new(ErrorKind::Source, "CREATE CHANGEFEED returned no job id"))?;
            if let Some(dir) = self.job_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&self.job_path, &id).map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("cannot record the changefeed job: {e}"),
                )
            })?;
            tracing::info!(job = %id, endpoint = %server.local_addr, sink = %feed.external_connection.as_deref().map_or("direct", |_| "external connection"),
                cursor = ?cursor.map(|c| c.to_string()), "created webhook changefeed");
            self.job = Some(id);
        } else {
            let statement = format!(
                "CREATE CHANGEFEED FOR TABLE {targets} WITH {}",
                feed_options(config, version, cursor).join(", ")
            );
            tracing::info!(cursor = ?cursor.map(|c| c.to_string()), "starting core changefeed");
            tokio::spawn(feed::run_core(
                self.address.clone(),
                statement,
                None,
                tx.clone(),
                feed_stop.clone(),
            ));
        }
        self.feed = Some(rx);
        Ok(())
    }

    /// Copies `scanned` as of one cluster timestamp `T` with a scan-only changefeed
    /// (`initial_scan = 'only'`, `cursor = T`: CockroachDB scans at the cursor), read
    /// on a SQL connection whatever `cdc.changefeed.sink` says (it needs `SELECT`, as a sinkless
    /// changefeed does). The tables are emptied and filled in one lake transaction at `T`,
    /// committed only once the scan is complete: a stop or crash mid-scan leaves them without a
    /// position, and the next start scans again. Returns `T`, or `None` when stopped.
    async fn scan<K: ChangeSink>(
        &self,
        sink: &mut K,
        scanned: &[&TableSpec],
        ctx: &SourceContext<'_>,
    ) -> Result<Option<Hlc>> {
        let status = ctx.status;
        // DECIMAL `wall.logical`; its text form is the cursor's.
        let now = self
            .client
            .simple_query("SELECT cluster_logical_timestamp()")
            .await
            .map_err(|e| query_error("cannot read the cluster's time", e))?
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default();
        let at: Hlc = now.parse().map_err(|e| {
            Error::new(
                ErrorKind::Source,
                format!("cluster_logical_timestamp() returned {now:?}, not a timestamp: {e}"),
            )
        })?;
        let names = scanned
            .iter()
            .map(|s| s.qualified())
            .collect::<Vec<_>>()
            .join(", ");
        let mut with = common_options(self.version);
        with.extend([
            "initial_scan = 'only'".to_string(),
            format!("cursor = {}", quote_literal(&at.to_string())),
        ]);
        let statement = format!(
            "CREATE CHANGEFEED FOR TABLE {} WITH {}",
            target_list(scanned),
            with.join(", ")
        );
        tracing::info!(tables = %names, at = %at, "scanning tables");
        status.update(|r| {
            r.state = "snapshotting".into();
            r.snapshot = Some(crate::pipeline::SnapshotReport {
                table: names.clone(),
                ..Default::default()
            });
        });
        sink.apply(SourceEvent::Begin {
            commit_position: at.into(),
            transaction_id: None,
        })
        .await?;
        sink.apply(SourceEvent::Truncate {
            tables: scanned.iter().map(|s| s.id).collect(),
        })
        .await?;
        let scan_stop = ctx.stop.child_token();
        let _scan_guard = scan_stop.clone().drop_guard();
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(feed::run_core(
            self.address.clone(),
            statement,
            Some(at),
            tx,
            scan_stop.clone(),
        ));
        let started = Instant::now();
        let mut rows = 0u64;
        loop {
            let delivery = tokio::select! {
                biased;
                () = ctx.stop.cancelled() => {
                    tracing::info!(rows, "stopped during a scan; nothing of it is committed");
                    return Ok(None);
                }
                d = rx.recv() => d,
            };
            let Some(delivery) = delivery else { break };
            for message in delivery? {
                let Message::Row(row) = message else { continue };
                let captured = self.tables.lookup(&row.topic)?;
                // A scan has no deletes; an `after` of null would be a row gone before `T`.
                if let Some(after) = &row.after {
                    let new = captured.row(&row, after)?;
                    sink.apply(SourceEvent::Insert {
                        table: captured.spec.id,
                        new,
                    })
                    .await?;
                    sink.spill_if_needed().await?;
                    rows += 1;
                }
            }
            status.update(|r| {
                if let Some(s) = r.snapshot.as_mut() {
                    s.rows = rows;
                }
                r.pending_events = sink.pending_events();
            });
        }
        sink.apply(SourceEvent::Commit {
            position: at.into(),
            commit_time_micros: at.unix_micros(),
        })
        .await?;
        sink.flush().await?;
        status.events.fetch_add(rows, Ordering::Relaxed);
        metrics::counter!("tarn_cdc_events_total").increment(rows);
        crate::pipeline::refresh_tables(sink, status);
        tracing::info!(tables = %names, rows, at = %at, seconds = started.elapsed().as_secs_f64(), "scan committed");
        Ok(Some(at))
    }

    /// The state at `position` of the keys in `changes`, as one transaction: Begin, the
    /// upserts and deletes, Commit. A column tarn does not know makes it read the table's
    /// schema again first (and emit the new schema).
    async fn transaction(&mut self, changes: Vec<RowMessage>, position: Hlc) -> Result<Vec<SourceEvent>> {
        let mut events = Vec::with_capacity(changes.len() + 2);
        let mut refresh = Vec::new();
        for m in &changes {
            let captured = self.tables.lookup(&m.topic)?;
            if let Some(after) = &m.after
                && !captured.knows_all(after)
                && !refresh.contains(&captured.spec.id)
            {
                refresh.push(captured.spec.id);
            }
        }
        for id in refresh {
            self.types = TypeCache::load(&self.client).await?;
            if let Some(spec) = describe_table(&self.client, id, &self.types, &self.type_opts).await? {
                let keys = key_names(&self.client, &spec).await?;
                if spec != self.tables.by_id[&id].spec {
                    tracing::info!(table = %spec.qualified(), "schema changed");
                    events.push(SourceEvent::Relation(spec.clone()));
                }
                self.tables.insert(Captured::new(spec, &keys)?);
            }
        }
        events.push(SourceEvent::Begin {
            commit_position: position.into(),
            transaction_id: None,
        });
        self.changed_since_mark |= !changes.is_empty();
        for m in &changes {
            let captured = self.tables.lookup(&m.topic)?;
            let id = captured.spec.id;
            events.push(match &m.after {
                Some(after) => SourceEvent::Insert {
                    table: id,
                    new: captured.row(m, after)?,
                },
                None => SourceEvent::Delete {
                    table: id,
                    old: captured.key_row(m)?,
                },
            });
        }
        events.push(SourceEvent::Commit {
            position: position.into(),
            commit_time_micros: position.unix_micros(),
        });
        Ok(events)
    }
}

impl ChangeSource for ChangefeedSource {
    async fn start<K: ChangeSink>(
        &mut self,
        sink: &mut K,
        ctx: &SourceContext<'_>,
    ) -> Result<Option<Position>> {
        let (config, options) = (ctx.config, ctx.options);
        let cdc = &config.cdc;
        let filter = TableFilter {
            include: cdc.tables.clone(),
            exclude: cdc.exclude.clone(),
        };
        let specs = discover_tables(&self.client, &filter, &self.types, &self.type_opts).await?;
        if specs.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "no table of {} matches cdc.tables {:?}; a changefeed needs at least one",
                    self.address.display, cdc.tables
                ),
            ));
        }
        let mut held: Vec<Hlc> = Vec::new();
        let mut unheld: Vec<TableId> = Vec::new();
        for spec in &specs {
            let keys = key_names(&self.client, spec).await?;
            let attached = sink.attach(spec.clone()).await?;
            tracing::info!(source = %spec.qualified(), table = %attached.target,
                position = ?attached.position.as_ref().map(ToString::to_string), stopped = ?attached.stopped, "attached table");
            if attached.stopped.is_none() {
                match attached.position {
                    Some(p) if !options.resnapshot => held.push(p.hlc().ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "lake table {} holds {} position {p} for pipeline {}, not a CockroachDB timestamp: \
                                 another kind of source wrote it; choose another cdc.pipeline or cdc.namespace",
                                attached.target,
                                p.kind(),
                                cdc.pipeline
                            ),
                        )
                    })?),
                    _ => unheld.push(spec.id),
                }
            }
            self.tables.insert(Captured::new(spec.clone(), &keys)?);
        }
        crate::pipeline::refresh_tables(sink, ctx.status);
        // Tables without a position (all of them on the first run, a table added since, every
        // table on a resnapshot) are copied first, as of one cluster timestamp.
        if !unheld.is_empty() && (cdc.snapshot == "initial" || options.resnapshot) {
            let scanned = specs
                .iter()
                .filter(|s| unheld.contains(&s.id))
                .map(Arc::as_ref)
                .collect::<Vec<_>>();
            match self.scan(sink, &scanned, ctx).await? {
                Some(at) => held.push(at),
                None => return Ok(None),
            }
        }
        // Stream from where the table that is furthest behind stands.
        let cursor = held.iter().min().copied();
        self.window = Window::new(cursor);
        self.received = cursor;
        self.create_changefeed(config, &specs, cursor, ctx.stop).await?;
        self.last_resolved = Instant::now();
        Ok(Some(cursor.unwrap_or_default().into()))
    }

    async fn next(&mut self, ctx: &SourceContext<'_>, deadline: Instant) -> Result<Next> {
        loop {
            let feed = self
                .feed
                .as_mut()
                .ok_or_else(|| Error::new(ErrorKind::Internal, "the changefeed was not started"))?;
            let delivery = tokio::select! {
                // Stopping closes the feed too: see the stop first.
                biased;
                () = ctx.stop.cancelled() => return Ok(Next::Stopped),
                d = feed.recv() => match d {
                    Some(d) => d?,
                    None => return Err(Error::new(ErrorKind::Source, "the changefeed stopped delivering")),
                },
                () = tokio::time::sleep_until(deadline.into()) => return Ok(Next::Idle),
            };
            let mut events = Vec::new();
            for message in delivery {
                match message {
                    Message::Row(row) => {
                        self.tables.lookup(&row.topic)?;
                        self.window.push(row);
                        if self.window.bytes() > self.budget {
                            let early = self.window.oldest().map(Hlc::prev).unwrap_or_default();
                            let changes = self.window.take_all();
                            tracing::info!(changes = changes.len(), position = %early, "window over its memory budget; applying it early");
                            events.extend(self.transaction(changes, early).await?);
                        }
                    }
                    Message::Resolved(resolved) => {
                        self.last_resolved = Instant::now();
                        if self.window.resolved().is_some_and(|r| resolved <= r) {
                            continue;
                        }
                        let changes = self.window.take(resolved);
                        events.extend(self.transaction(changes, resolved).await?);
                        self.received = Some(resolved);
                        let (duplicates, stale) = self.window.dropped();
                        metrics::gauge!("tarn_cdc_changefeed_duplicates_total").set(duplicates as f64);
                        metrics::gauge!("tarn_cdc_changefeed_stale_total").set(stale as f64);
                    }
                }
            }
            if !events.is_empty() {
                return Ok(Next::Events(events));
            }
        }
    }

    async fn acknowledge<K: ChangeSink>(&mut self, position: &Position, sink: &mut K) -> Result<()> {
        // The changefeed's cursor is the oldest table position: quiet tables would otherwise
        // hold the restart cursor at their last change (and behind the cluster's GC).
        if self.changed_since_mark && self.last_idle_mark.elapsed() >= IDLE_MARK_INTERVAL {
            sink.mark_idle(position).await?;
            self.last_idle_mark = Instant::now();
            self.changed_since_mark = false;
        }
        Ok(())
    }

    async fn adopt<K: ChangeSink>(
        &mut self,
        spec: Arc<TableSpec>,
        _sink: &mut K,
        _ctx: &SourceContext<'_>,
    ) -> Result<()> {
        // A changefeed's targets are fixed when it is created; a table only comes in at start.
        Err(Error::new(
            ErrorKind::Internal,
            format!(
                "changefeed message for {}, which was not captured at start",
                spec.qualified()
            ),
        ))
    }

    async fn tick<K: ChangeSink>(&mut self, _sink: &mut K, _ctx: &SourceContext<'_>) -> Result<()> {
        let quiet = self.last_resolved.elapsed();
        metrics::gauge!("tarn_cdc_changefeed_resolved_age_seconds").set(quiet.as_secs_f64());
        if let Some(id) = &self.job {
            check_job(&self.client, id).await?;
        }
        if quiet > self.quiet_limit {
            tracing::warn!(seconds = quiet.as_secs(), job = ?self.job,
                "no resolved timestamp from the changefeed for a while; the lake is not advancing \
                 (webhook: can the cluster's nodes reach cdc.changefeed.webhook_url?)");
        }
        Ok(())
    }

    async fn stop<K: ChangeSink>(&mut self, sink: &mut K, durable: Option<&Position>) -> Result<()> {
        if let Some(p) = durable {
            // The next start resumes from here, quiet tables included.
            sink.mark_idle(p).await?;
        }
        tracing::info!(resolved = ?self.window.resolved().map(|r| r.to_string()), "changefeed source stopped");
        if let Some(id) = self.job.take() {
            // A clean stop: the next start creates the changefeed again from the lake's position.
            match self.client.simple_query(&format!("CANCEL JOB {id}")).await {
                Ok(_) => {
                    let _ = std::fs::remove_file(&self.job_path);
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "could not cancel the changefeed job"),
            }
        }
        Ok(())
    }

    fn received(&self) -> Option<Position> {
        self.received.map(Position::from)
    }

    fn flush_rule(&self) -> FlushRule {
        FlushRule::EachCheckpoint
    }
}

/// Fails (so the pipeline starts over with a new changefeed) when the webhook changefeed job
/// `id` is no longer running: failed after its retries, paused or cancelled by someone.
/// CockroachDB keeps a job with retryable errors `running` and says so in `running_status`.
async fn check_job(client: &tokio_postgres::Client, id: &str) -> Result<()> {
    let rows = client
        .simple_query(&format!(
            "SELECT status, coalesce(error, ''), coalesce(running_status, '') FROM [SHOW CHANGEFEED JOB {id}]"
        ))
        .await
        .map_err(|e| query_error(format!("cannot read the state of changefeed job {id}"), e))?;
    let Some((state, error, running)) = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some((
            r.get(0).unwrap_or_default().to_string(),
            r.get(1).unwrap_or_default().to_string(),
            r.get(2).unwrap_or_default().to_string(),
        )),
        _ => None,
    }) else {
        return Err(Error::new(
            ErrorKind::Source,
            format!("changefeed job {id} is gone"),
        ));
    };
    if state != "running" && state != "pending" {
        let why = if error.is_empty() {
            String::new()
        } else {
            format!(": {error}")
        };
        return Err(Error::new(
            ErrorKind::Source,
            format!("changefeed job {id} is {state}{why}; creating it again"),
        ));
    }
    if running.starts_with("retryable error") {
        tracing::warn!(job = %id, %running, "the changefeed job retries");
    }
    Ok(())
}
