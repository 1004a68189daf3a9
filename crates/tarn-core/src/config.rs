//! Layered configuration: defaults → `tarn.toml` → `TARN_*` environment variables → flags.
//!
//! Every layer is a TOML table; later layers override earlier ones key by key. The merged
//! table is then deserialized into [`Config`] with unknown keys refused, and [`Config::validate`]
//! checks values (URLs, addresses, sizes). Every error names the key (`catalog.url`) and what
//! was expected, and for file errors the file.
//!
//! Environment variables map to keys by prefix `TARN_` and `__` between sections:
//! `TARN_CATALOG__URL` is `catalog.url`, `TARN_STORAGE__S3__ENDPOINT` is
//! `storage.s3.endpoint`. Only variables of that shape are configuration (see [`env_key`]):
//! a `TARN_*` variable without `__` (a wrapper script's `TARN_BIN`) is left alone, while
//! `TARN_CATALOG__URLL` is an unknown key and an error naming the variable. A value is read
//! as a TOML value when it parses as one (numbers, booleans) and as a string otherwise.
//! S3 credentials may also come from the standard
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` and
//! `AWS_ENDPOINT_URL` variables, which rank below `TARN_*` ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::console_config::ConsoleConfig;
pub use crate::jobs_config::{AlertsConfig, JobsConfig};
use crate::{Error, ErrorKind, Result};

/// The name of the config file looked for in the data directory.
pub const CONFIG_FILE_NAME: &str = "tarn.toml";

/// The `TARN_*` environment variables tarn reads outside the config layers: `TARN_DATA_DIR`
/// and `TARN_CONFIG` (the `--data-dir` and `--config` flags), `TARN_LOG`, `TARN_FAILPOINTS`
/// and `TARN_BENCH_PYTHON`.
pub const OTHER_VARIABLES: &[&str] = &[
    "TARN_DATA_DIR",
    "TARN_CONFIG",
    "TARN_LOG",
    "TARN_FAILPOINTS",
    "TARN_BENCH_PYTHON",
];

/// The config key environment variable `name` sets, when it has the shape of one:
/// `TARN_SECTION__KEY`, sections and key joined by `__` (`TARN_STORAGE__S3__ENDPOINT` is
/// `storage.s3.endpoint`). Other variables, `TARN_*` ones without `__` among them, are not
/// configuration: `None`.
pub fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("TARN_")?;
    if OTHER_VARIABLES.contains(&name) || !rest.contains("__") {
        return None;
    }
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// tarn's effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The local installation directory: holds the default catalog and warehouse.
    pub data_dir: PathBuf,
    /// The Iceberg catalog.
    pub catalog: CatalogConfig,
    /// Where table files live.
    pub storage: StorageConfig,
    /// How tables are written.
    pub write: WriteConfig,
    /// The long-lived endpoints of `tarn serve`.
    pub server: ServerConfig,
    /// Who may connect to the SQL endpoint.
    pub auth: AuthConfig,
    /// Authorization: who may read and change what, column masks and row filters
    /// (docs/governance.md). Without a policy every authenticated user may do everything.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The audit trail of authorization decisions and writes (`tarn_audit.events`,
    /// docs/governance.md), kept while a policy is configured.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Logging.
    pub log: LogConfig,
    /// Traces over OpenTelemetry (docs/observability.md).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Change data capture from an OLTP database (`tarn cdc run`, and `tarn serve` when
    /// `cdc.source` is set).
    pub cdc: CdcConfig,
    /// Table maintenance: compaction, snapshot expiry, orphan-file removal.
    pub maintenance: MaintenanceConfig,
    /// The Iceberg REST catalog `tarn serve` serves on its HTTP listener.
    pub rest_catalog: RestCatalogConfig,
    /// DataHub: the lake's tables, their schemas and lineage, and the pipelines, as DataHub
    /// metadata (`tarn catalog export datahub`, and `tarn serve` pushing changes to a GMS).
    pub datahub: DatahubConfig,
    /// The scheduler: jobs of tasks in files, cron schedules, retries, SLAs, alerts
    /// (docs/jobs.md).
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Workload management of SQL statements: memory budget and spilling, admission control,
    /// timeouts and per-role limits (docs/workload.md).
    #[serde(default)]
    pub query: QueryConfig,
    /// Live PostgreSQL / CockroachDB databases attached as catalogs beside the lake
    /// (`[[federation]]`, docs/federation.md).
    #[serde(default)]
    pub federation: Vec<FederationConfig>,
    /// The web console under `/console` (docs/console.md).
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// One live database attached as a catalog (`[[federation]]`, docs/federation.md): its tables
/// are `<name>.<schema>.<table>` in SQL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The catalog's name in SQL: lower-case letters, digits and `_`.
    pub name: String,
    /// `postgres://user:password@host:port/database` (query parameters `sslmode` —
    /// `disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full` — and
    /// `sslrootcert`, as for the CDC source). The password is redacted in `config show`.
    pub url: String,
    /// Connections kept open to the database at most.
    #[serde(default = "default_federation_pool_size")]
    pub pool_size: u32,
    /// How long opening a connection may take (`5s`).
    #[serde(default = "default_federation_connect_timeout")]
    pub connect_timeout: String,
    /// How long one remote query may run (the remote `statement_timeout`); `0`: the server's.
    #[serde(default = "default_federation_statement_timeout")]
    pub statement_timeout: String,
}

fn default_federation_pool_size() -> u32 {
    8
}

fn default_federation_connect_timeout() -> String {
    "10s".into()
}

fn default_federation_statement_timeout() -> String {
    "0".into()
}

impl FederationConfig {
    /// The connect timeout.
    pub fn connect_timeout(&self) -> Result<std::time::Duration> {
        parse_duration(
            &format!("federation.{}.connect_timeout", self.name),
            &self.connect_timeout,
        )
    }

    /// The remote statement timeout; `None`: the server's.
    pub fn statement_timeout(&self) -> Result<Option<std::time::Duration>> {
        parse_timeout(
            &format!("federation.{}.statement_timeout", self.name),
            &self.statement_timeout,
        )
    }
}

/// Workload management of the SQL endpoint (docs/workload.md): how much memory statements may
/// use together and where they spill, how many run at once and how many wait, and how long
/// one may run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// The memory budget of all running statements together: bytes with a unit (`512MB`,
    /// `4GB`; units are 1024-based as in PostgreSQL), a share of the machine's memory (`50%`,
    /// of the cgroup's limit when there is one), or `unlimited`. Sorts, aggregations and joins
    /// that reach it spill to `spill_dir`; a statement that still cannot fit fails with
    /// SQLSTATE 53200.
    pub memory_limit: String,
    /// Where statements spill; default `<data_dir>/spill`. Emptied at start.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes all spill files together may hold, e.g. `100GB`.
    pub spill_limit: String,
    /// Most statements running at once; the rest wait in a queue. 0: twice the CPU count.
    pub max_concurrent: usize,
    /// Most statements waiting for a slot; one more is refused with SQLSTATE 53300.
    pub queue_size: usize,
    /// Longest a statement waits in the queue before it is refused (53300), e.g. `60s`.
    pub queue_timeout: String,
    /// The default `statement_timeout` of a session (`0`: none); `SET statement_timeout`
    /// changes it per session. A statement running longer is cancelled (SQLSTATE 57014).
    pub statement_timeout: String,
    /// The default `idle_in_transaction_session_timeout` (`0`: none): a connection idle in an
    /// open transaction for longer is closed. `SET` per session.
    pub idle_in_transaction_session_timeout: String,
    /// Worker threads of the runtime that executes statements, apart from the threads of the
    /// pipelines and the HTTP endpoint. 0: the CPU count.
    pub threads: usize,
    /// How much lower than the process's the operating system priority (nice value) of the
    /// query runtime's threads is, 0-19: with the CPU saturated, the pipelines' threads
    /// (change data capture, Kafka ingest, the scheduler, the HTTP endpoint) get the cores
    /// first. Linux only; 0 keeps the process's priority.
    pub thread_nice: i32,
    /// The default `tarn.read_mode` of a session: `latest` reads a CDC pipeline's tables with
    /// the changes it has not committed yet (when the pipeline runs in this process, `tarn
    /// serve` with `[cdc]`), `committed` reads the lake only, as other engines see it. `SET
    /// tarn.read_mode` changes it per session.
    pub read_mode: String,
    /// Limits per role (a user name or a group of the principal), e.g.
    /// `[query.roles.analyst] max_concurrent = 2`. A principal in several roles is held to
    /// each of them.
    pub roles: BTreeMap<String, RoleLimits>,
}

/// Limits of the statements of one role (`[query.roles.NAME]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleLimits {
    /// Most statements of this role running at once (0: only the global limit).
    pub max_concurrent: usize,
    /// The role's default `statement_timeout`, in place of `query.statement_timeout`.
    pub statement_timeout: Option<String>,
    /// The role's default `idle_in_transaction_session_timeout`, in place of
    /// `query.idle_in_transaction_session_timeout`.
    pub idle_in_transaction_session_timeout: Option<String>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: "50%".into(),
            spill_dir: None,
            spill_limit: "100GB".into(),
            max_concurrent: 0,
            queue_size: 64,
            queue_timeout: "60s".into(),
            statement_timeout: "0".into(),
            idle_in_transaction_session_timeout: "0".into(),
            threads: 0,
            thread_nice: 5,
            read_mode: "latest".into(),
            roles: BTreeMap::new(),
        }
    }
}

/// A memory budget: bytes, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// No limit.
    Unlimited,
    /// At most this many bytes.
    Bytes(u64),
}

impl QueryConfig {
    /// `memory_limit` resolved against the machine's memory (`machine_memory`, bytes).
    pub fn memory_limit(&self, machine_memory: u64) -> Result<MemoryLimit> {
        let value = self.memory_limit.trim();
        if value.eq_ignore_ascii_case("unlimited") || value == "0" {
            return Ok(MemoryLimit::Unlimited);
        }
        if let Some(percent) = value.strip_suffix('%') {
            return match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => {
                    Ok(MemoryLimit::Bytes((machine_memory as f64 * p / 100.0) as u64))
                }
                _ => Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "key `query.memory_limit`: expected a share of memory between 0% and 100%, got {value:?}"
                    ),
                )),
            };
        }
        parse_size("query.memory_limit", value).map(MemoryLimit::Bytes)
    }

    /// `statement_timeout`, or `None` for no timeout.
    pub fn statement_timeout(&self) -> Result<Option<std::time::Duration>> {
        parse_timeout("query.statement_timeout", &self.statement_timeout)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.memory_limit(1 << 30)?;
        parse_size("query.spill_limit", &self.spill_limit)?;
        parse_duration("query.queue_timeout", &self.queue_timeout)?;
        self.statement_timeout()?;
        check_nice("query.thread_nice", self.thread_nice)?;
        if !matches!(self.read_mode.as_str(), "latest" | "committed") {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "query.read_mode = {:?}: expected \"latest\" or \"committed\"",
                    self.read_mode
                ),
            ));
        }
        parse_timeout(
            "query.idle_in_transaction_session_timeout",
            &self.idle_in_transaction_session_timeout,
        )?;
        for (role, limits) in &self.roles {
            if let Some(t) = &limits.statement_timeout {
                parse_timeout(&format!("query.roles.{role}.statement_timeout"), t)?;
            }
            if let Some(t) = &limits.idle_in_transaction_session_timeout {
                parse_timeout(
                    &format!("query.roles.{role}.idle_in_transaction_session_timeout"),
                    t,
                )?;
            }
        }
        Ok(())
    }
}

/// A nice increment (`query.thread_nice`, `maintenance.thread_nice`): 0-19, as `nice -n`;
/// errors name `key`.
pub fn check_nice(key: &str, value: i32) -> Result<()> {
    if (0..=19).contains(&value) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "key `{key}`: expected a nice increment from 0 to 19 (higher runs at lower priority), got {value}"
            ),
        ))
    }
}

/// A timeout: `0` is none, otherwise a duration (`500ms`, `30s`, `5m`); errors name `key`.
pub fn parse_timeout(key: &str, value: &str) -> Result<Option<std::time::Duration>> {
    if value.trim() == "0" {
        return Ok(None);
    }
    let d = parse_duration(key, value)?;
    Ok((!d.is_zero()).then_some(d))
}

/// Parses a size like `512MB`, `4GB`, `100kB` or plain bytes (units 1024-based, as
/// PostgreSQL's; `MiB`, `GiB` accepted too); errors name `key`.
pub fn parse_size(key: &str, value: &str) -> Result<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => u64::MAX,
    };
    match number.parse::<f64>() {
        Ok(n) if factor != u64::MAX && n >= 0.0 => Ok((n * factor as f64) as u64),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("key `{key}`: expected a size like 512MB or 4GB, got {value:?}"),
        )),
    }
}

/// Where and how tarn describes itself to DataHub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatahubConfig {
    /// DataHub's GMS, e.g. `http://datahub-gms:8080`. Set: `tarn serve` pushes every change of
    /// the lake's metadata there (checked every `interval`). Unset: nothing is pushed.
    pub gms_url: Option<String>,
    /// The GMS's personal access token (sent as `Authorization: Bearer`); redacted in
    /// `config show`. Prefer `TARN_DATAHUB__TOKEN`.
    pub token: Option<String>,
    /// DataHub's environment (fabric) of every URN, e.g. `PROD`, `DEV`.
    pub env: String,
    /// DataHub's platform instance of the lake's datasets, when several lakes share a DataHub.
    pub platform_instance: Option<String>,
    /// How often `tarn serve` looks for changes to push, e.g. `30s`.
    pub interval: String,
}

/// The Iceberg REST catalog of `tarn serve`: the catalog's tables for every engine that speaks
/// the protocol (Spark, Trino, Flink, DuckDB, pyiceberg), under `/iceberg` on
/// `server.http_listen`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestCatalogConfig {
    /// Serve it. On by default. It has no authentication yet: whoever reaches
    /// `server.http_listen` may change every table, so keep that address private (the default
    /// is loopback) or turn this off.
    pub enabled: bool,
    /// Hand the static S3 keys of `storage.s3` (`access_key_id`, `secret_access_key`,
    /// `session_token`) to every client that asks for vended credentials (the
    /// `X-Iceberg-Access-Delegation: vended-credentials` header), in `loadTable`'s `config` and
    /// `storage-credentials`, so engines need nothing but the catalog URL. Off by default: it
    /// gives every client of the catalog tarn's own keys to the whole bucket.
    pub vend_credentials: bool,
}

/// The Iceberg catalog: by default a SQL database in the layout of Iceberg's JDBC catalog;
/// or any Iceberg REST catalog, or a Hive Metastore (`kind`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Which catalog holds the tables: `sql` (default), `rest` or `hms`.
    #[serde(default)]
    pub kind: CatalogKind,
    /// `sqlite://FILE` or `postgres://user:pass@host:port/db`. Default: `DATA_DIR/catalog.db`.
    /// Only for `kind = "sql"`.
    pub url: Option<String>,
    /// The catalog name (the `catalog_name` column), shared by every engine that opens it.
    pub name: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// An Iceberg REST catalog (`kind = "rest"`).
    #[serde(default)]
    pub rest: RestClientConfig,
    /// A Hive Metastore (`kind = "hms"`).
    #[serde(default)]
    pub hms: HmsConfig,
}

/// Which catalog holds tarn's tables.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    /// A SQL database in the layout of Iceberg's JDBC catalog (`catalog.url`).
    #[default]
    Sql,
    /// An Iceberg REST catalog (`catalog.rest.*`): Lakekeeper, Polaris, Unity, another
    /// `tarn serve`.
    Rest,
    /// A Hive Metastore (`catalog.hms.*`).
    Hms,
}

impl std::fmt::Display for CatalogKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sql => "sql",
            Self::Rest => "rest",
            Self::Hms => "hms",
        })
    }
}

/// How tarn reaches an Iceberg REST catalog. The keys follow the Iceberg REST catalog
/// properties of the same names (`uri`, `warehouse`, `token`, `credential`,
/// `oauth2-server-uri`, `scope`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestClientConfig {
    /// The catalog's base URL, the part before `/v1/...`, e.g. `http://host:8181/catalog`
    /// (Lakekeeper), `http://host:8181/api/catalog` (Polaris), `http://host:8433/iceberg` (tarn).
    pub uri: Option<String>,
    /// The warehouse to ask the catalog for (`GET /v1/config?warehouse=...`): a name (Lakekeeper,
    /// Polaris, Unity) or a location, as the catalog expects.
    pub warehouse: Option<String>,
    /// A bearer token sent with every request. Redacted in `config show`.
    pub token: Option<String>,
    /// OAuth2 client credentials `client_id:client_secret`, exchanged for a token at
    /// `oauth2_server_uri`. Redacted in `config show`.
    pub credential: Option<String>,
    /// The OAuth2 token endpoint; default `<uri>/v1/oauth/tokens`.
    pub oauth2_server_uri: Option<String>,
    /// The OAuth2 scope asked for; default `catalog` (Polaris wants `PRINCIPAL_ROLE:ALL`).
    pub scope: Option<String>,
}

/// How tarn reaches a Hive Metastore.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HmsConfig {
    /// The metastore's thrift address `host:port` (default port 9083).
    pub uri: Option<String>,
    /// The thrift transport: `buffered` (Hive's default) or `framed`.
    pub thrift_transport: Option<String>,
}

/// Object storage for table files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The warehouse root: `file:///dir` or `s3://bucket/prefix`. Default: `DATA_DIR/warehouse`.
    pub warehouse: Option<String>,
    /// S3-compatible bucket settings, used for `s3://` locations.
    pub s3: S3Config,
}

/// Settings of an S3-compatible object store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers (R2, MinIO, SeaweedFS); AWS when unset.
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when unset.
    pub region: Option<String>,
    /// Access key id; from `AWS_ACCESS_KEY_ID` when unset.
    pub access_key_id: Option<String>,
    /// Secret access key; from `AWS_SECRET_ACCESS_KEY` when unset. Redacted in `config show`.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials. Redacted in `config show`.
    pub session_token: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
}

/// How table data is written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WriteConfig {
    /// Target size of a Parquet data file in bytes; a writer rolls to a new file past it.
    pub target_file_size: u64,
    /// Parquet compression codec: `zstd`, `snappy` or `uncompressed`.
    pub compression: String,
    /// How many times a commit that lost a race is retried before failing.
    pub commit_retries: u32,
}

/// The listeners of `tarn serve`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the Postgres wire protocol endpoint.
    pub pg_listen: String,
    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub http_listen: String,
    /// Most concurrent SQL connections; 0 for no limit.
    pub max_connections: usize,
    /// TLS on both listeners (`server.tls.cert` and `server.tls.key`); plain TCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Load balancers (addresses or CIDR ranges, e.g. `10.0.0.0/8`) whose connections to the
    /// Postgres wire endpoint begin with a PROXY protocol header (HAProxy's, v1 or v2) naming
    /// the client: the client's address is then the one logins and logs see. Connections from
    /// elsewhere send none. Empty: no PROXY headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol_from: Vec<String>,
}

impl ServerConfig {
    /// `server.proxy_protocol_from` as networks (a bare address is a network of one).
    pub fn proxy_networks(&self) -> Result<Vec<ipnet::IpNet>> {
        self.proxy_protocol_from
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        Error::new(
                            ErrorKind::Config,
                            format!(
                                "server.proxy_protocol_from: expected an IP address or a CIDR range such as 10.0.0.0/8, got {entry:?}"
                            ),
                        )
                    })
            })
            .collect()
    }
}

/// TLS on the Postgres wire endpoint and the HTTP endpoint (docs/serving.md, "TLS").
///
/// The files are read at start-up (an unreadable or invalid one stops tarn, naming it) and
/// again on SIGHUP and every `reload_interval`; a changed set that is valid replaces the old
/// one for new connections, an invalid one is logged and the old one kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM: its own certificate first, then intermediates.
    pub cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates, PEM, whose client certificates the Postgres wire endpoint accepts: a
    /// client presenting one logs in as the user its common name names
    /// (`auth.certificate_users`), without a password. No client certificates when absent.
    pub client_ca: Option<PathBuf>,
    /// Refuse Postgres wire connections that do not negotiate TLS (SQLSTATE 28000). The HTTP
    /// endpoint speaks only HTTPS once TLS is configured.
    pub require: bool,
    /// How often the files are checked for changes, e.g. `1m`; `0s` only on SIGHUP.
    pub reload_interval: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            require: true,
            reload_interval: "1m".into(),
        }
    }
}

/// Authentication of the SQL endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept connections from loopback addresses without a password. Off by default.
    pub trust_loopback: bool,
    /// Users allowed to connect with SCRAM-SHA-256 passwords.
    pub users: Vec<UserConfig>,
    /// OIDC single sign-on: bearer tokens (JWTs) of this issuer are accepted as identities —
    /// in `Authorization: Bearer` on HTTP, as the password on the Postgres wire endpoint.
    pub oidc: Option<OidcConfig>,
    /// Accept a password or token from a non-loopback address over a connection without TLS:
    /// a SCRAM or clear-text password or an OIDC token on the Postgres wire endpoint, a bearer
    /// token on HTTP. Off: such a login is refused (on the Postgres wire endpoint before the
    /// secret is sent). Only for a network trusted end to end.
    #[serde(default)]
    pub allow_plaintext_passwords: bool,
    /// Client certificates (`server.tls.client_ca`): the user a certificate's common name logs
    /// in as, by common name. A common name not listed logs in as the user of that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificate_users: BTreeMap<String, String>,
}

/// Authorization policies in Rego, with the input and output contract of Trino's OPA access
/// control (docs/governance.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A `.rego` file, or a directory whose `.rego` files are loaded (not recursively).
    /// Once set, everything the policy does not allow is denied.
    pub file: Option<PathBuf>,
    /// An OPA server's base URL (e.g. `http://127.0.0.1:8181`), asked over its data API
    /// instead of evaluating `file` in process.
    pub opa_url: Option<String>,
    /// The Rego package holding the rules `allow`, `batch`, `rowFilters`, `columnMask`,
    /// `batchColumnMasks` (Trino's documentation uses `trino`).
    pub package: String,
    /// How long to wait for `opa_url`.
    pub timeout: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            file: None,
            opa_url: None,
            package: "trino".into(),
            timeout: "2s".into(),
        }
    }
}

/// The audit trail: every authorization decision and every write by a statement, as JSON log
/// lines (target `tarn::audit`) and rows of the Iceberg table `tarn_audit.events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Whether decisions and writes are recorded while a policy is configured.
    pub enabled: bool,
    /// The role (group) whose members may read `tarn_audit.events`, whatever the policy says;
    /// nobody else reads it, and nobody writes, alters or drops it through SQL.
    pub auditor_role: String,
    /// How long records wait in memory before they are appended, e.g. `5s`. A crash loses at
    /// most this much of the table's records (the log lines are written at once).
    pub flush_interval: String,
    /// Records held in memory at most; beyond, records are dropped from the table (never from
    /// the log) and counted in `tarn_audit_dropped_total`.
    pub max_buffered: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auditor_role: "auditor".into(),
            flush_interval: "5s".into(),
            max_buffered: 100_000,
        }
    }
}

impl PolicyConfig {
    /// Whether a policy decides (a file or an OPA server is configured).
    pub fn is_configured(&self) -> bool {
        self.file.is_some() || self.opa_url.is_some()
    }
}

/// An OIDC issuer whose tokens are identities (Keycloak, Entra ID, Okta, Dex, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL, exactly as tokens carry it in `iss` (for Keycloak
    /// `https://HOST/realms/REALM`); its discovery document is
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The audience tokens must carry in `aud` (the client id tarn is registered as).
    pub audience: String,
    /// The claim naming the user.
    pub user_claim: String,
    /// Claims holding the principal's groups/roles, as dotted paths into the token; `{audience}`
    /// is replaced by `audience`. Keycloak's realm and client roles, and `groups`, by default.
    pub groups_claims: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub clock_skew: String,
    /// The shortest time between two fetches of the issuer's keys (a token naming an unknown
    /// key fetches them again, at most this often).
    pub refresh_min: String,
    /// A PEM file of CA certificates to trust for the issuer's HTTPS (beside the system's).
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the issuer.
    pub timeout: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            user_claim: "preferred_username".into(),
            groups_claims: vec![
                "realm_access.roles".into(),
                "resource_access.{audience}.roles".into(),
                "groups".into(),
            ],
            clock_skew: "30s".into(),
            refresh_min: "30s".into(),
            ca_file: None,
            timeout: "5s".into(),
        }
    }
}

/// A user of the SQL endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub name: String,
    /// The password. Redacted in `config show`.
    pub password: String,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log shippers.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `tarn=debug,info`.
    pub level: String,
}

/// Traces: tarn's spans (a SQL statement, a table commit, a CDC flush) sent to an
/// OpenTelemetry collector over OTLP/HTTP with protobuf.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://otel-collector:4318` (tarn posts to
    /// `/v1/traces` under it; a URL ending in `/v1/traces` is used as it is). Unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Record metrics for `/metrics` (default true). Off, `/metrics` has the process metrics
    /// only; `tarn bench observability` measures what recording costs.
    #[serde(default = "default_true")]
    pub metrics: bool,
}

fn default_true() -> bool {
    true
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            metrics: true,
        }
    }
}

impl TelemetryConfig {
    /// The URL spans are posted to, when an endpoint is configured.
    pub fn traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if endpoint.ends_with("/v1/traces") {
            endpoint.to_string()
        } else {
            format!("{endpoint}/v1/traces")
        })
    }
}

/// Change data capture: one source database streamed into Iceberg tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// Who the pipeline runs as for topic ACLs (`PublishToTopic`, `ConsumeFromTopic`; see
    /// docs/governance.md, "Topic ACLs"); default `pipeline:<pipeline>`.
    #[serde(default)]
    pub principal: Option<String>,
    /// The roles (groups) of `principal`.
    #[serde(default)]
    pub principal_roles: Vec<String>,
    /// The source: `postgres://user:password@host:port/database` (query parameters `sslmode`,
    /// `sslrootcert`, `application_name` understood). The password is redacted in
    /// `config show`. Unset: no CDC.
    pub source: Option<String>,
    /// The pipeline's name: it names the replication slot and publication (`tarn_<pipeline>`)
    /// and is recorded in every commit, so several pipelines can feed one lake.
    pub pipeline: String,
    /// The replication slot; default `tarn_<pipeline>`.
    pub slot: Option<String>,
    /// The publication; default `tarn_<pipeline>`. tarn creates it when missing, for the
    /// included tables; an existing publication is used as it is.
    pub publication: Option<String>,
    /// Tables to capture, as `schema.table` patterns where `*` matches any characters.
    pub tables: Vec<String>,
    /// Tables to leave out, as patterns; applied after `tables`.
    pub exclude: Vec<String>,
    /// The lake namespace the captured tables land in.
    pub namespace: String,
    /// The lake table name for a source table: `{schema}` and `{table}` are replaced.
    pub table_name: String,
    /// `initial`: copy every table before streaming (the default); `never`: stream only.
    pub snapshot: String,
    /// How many connections copy tables in parallel during a snapshot.
    pub snapshot_parallelism: usize,
    /// Rows per chunk of a snapshot copy (chunks are primary-key or page ranges).
    pub snapshot_chunk_rows: u64,
    /// When changes are committed to the lake.
    pub flush: FlushConfig,
    /// Unconstrained `numeric` columns: `decimal` (decimal(38,18); a value that does not fit
    /// stops the table with an error) or `text`.
    pub unconstrained_numeric: String,
    /// Columns of types tarn cannot map: `error` (refuse the table, naming the column) or
    /// `text` (carry the value's text form).
    pub unsupported_types: String,
    /// What `cdc.source` is: `postgres` (logical replication through a slot),
    /// `cockroachdb` (a changefeed; see `[cdc.changefeed]`) or `kafka` (Debezium change-event
    /// topics; see `[cdc.kafka]`, `cdc.source` unused).
    pub source_kind: String,
    /// How a CockroachDB source delivers its changefeed.
    pub changefeed: ChangefeedConfig,
    /// The Kafka topics a `kafka` source consumes.
    pub kafka: KafkaSourceConfig,
    /// Where a database source's changes go: `lake` (Iceberg tables, the default), `kafka`
    /// (Debezium change events on one topic per table, each source transaction in one Kafka
    /// transaction; see `[cdc.publish]`) or `lake+kafka` (both, from one slot).
    pub sink: String,
    /// The topics a `kafka` sink publishes to.
    pub publish: KafkaPublishConfig,
    /// SQL transformations of tables' changes before they are written (streaming SQL), at
    /// most one per source table: `[[cdc.transforms]]`.
    pub transforms: Vec<TransformConfig>,
}

/// A SQL transformation of one source table's changes (`[[cdc.transforms]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The source table, `schema.table` (for a Kafka source: the events' `source` schema —
    /// or database — and table).
    pub table: String,
    /// A `SELECT` over `changes` (the new rows of a micro-batch, with the source's columns)
    /// that may join lake tables (`cdc.customers`); it must keep the table's key columns.
    pub sql: String,
}

/// Kafka topics a database source's changes are published to (`cdc.sink = "kafka"`): one
/// topic `<topic_prefix>.<schema>.<table>` per table, Debezium's change-event envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaPublishConfig {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// Debezium's `topic.prefix`: the first part of topic and schema names; default the
    /// pipeline name.
    pub topic_prefix: Option<String>,
    /// Partitions of the topics tarn creates (existing topics are used as they are).
    pub partitions: i32,
    /// Replication factor of the topics tarn creates.
    pub replication_factor: i32,
    /// Embed the Connect schema in keys and values (`schemas.enable` of Kafka Connect's
    /// JsonConverter).
    pub schemas: bool,
    /// A tombstone (same key, null value) after each delete, for log compaction.
    pub tombstones: bool,
    /// The compacted topic holding each table's published position, written in the same
    /// Kafka transaction as the events (what makes a restart publish nothing twice).
    pub positions_topic: String,
    /// The producer's `transaction.timeout.ms`, e.g. `5m`: the longest a Kafka transaction
    /// (a flush, or a whole table copy) may stay open.
    pub transaction_timeout: String,
    /// Longest time between a change arriving and its Kafka commit, e.g. `100ms` (Kafka
    /// transactions are cheap; `cdc.flush.interval` paces lake commits). The size limits of
    /// `cdc.flush` still apply.
    pub flush_interval: String,
}

/// Kafka topics of Debezium change events consumed into the lake (`cdc.source_kind = "kafka"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// Topics to consume: names, or one regular expression starting with `^` (librdkafka's
    /// convention) matched against the broker's topics at start.
    pub topics: Vec<String>,
    /// The consumer group: the offsets tarn commits for monitoring (the lake holds the
    /// offsets that count).
    pub group: String,
    /// The consumer's `session.timeout.ms`, e.g. `10s`.
    pub session_timeout: String,
    /// Where partitions start for a pipeline without lake tables and without group offsets:
    /// `earliest` or `latest` (with lake tables, a partition nothing knows starts at its
    /// beginning, and the tables skip what they hold).
    pub start: String,
    /// Which partitions this worker reads: `all` (every partition of the topics, one worker
    /// per pipeline) or `group` (the consumer group splits the partitions among the workers
    /// running the pipeline with the same group, and moves them as workers come and go).
    pub assignment: String,
    /// What the records are: `debezium` (change events: upserts, deletes, truncates) or
    /// `json` (plain JSON objects, each appended as a row of its topic's table).
    pub format: String,
    /// `format = "json"`: the columns, `"name type"` in PostgreSQL type names (e.g.
    /// `"amount numeric(10,2)"`); other fields are ignored. Empty: inferred from the records.
    pub columns: Vec<String>,
    /// Archive the topics' records unchanged (key, value, headers, topic, partition, offset,
    /// timestamp) as Parquet files of the Iceberg table `archive_table`, instead of applying
    /// them as change events (`tarn ingest kafka --archive`; see docs/kafka-archive.md).
    pub archive: bool,
    /// The archive's table: `NAME` (in `cdc.namespace`) or `NAMESPACE.NAME`.
    pub archive_table: String,
    /// Where records that are not valid change events go, with the reason in Kafka
    /// Connect's `__connect.errors.*` headers; created when missing. Default `<group>.dlq`.
    pub dead_letter_topic: Option<String>,
}

impl KafkaSourceConfig {
    /// The dead-letter topic: `dead_letter_topic`, or `<group>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.group))
    }
}

/// The CockroachDB changefeed tarn creates and consumes (`cdc.source_kind = "cockroachdb"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangefeedConfig {
    /// `sinkless`: a core changefeed streamed over tarn's SQL connection; `webhook`: an
    /// enterprise changefeed posting to tarn's HTTPS endpoint.
    pub sink: String,
    /// How often CockroachDB emits resolved timestamps; each one is a commit to the lake.
    pub resolved: String,
    /// The changefeed's `schema_change_policy`: `backfill`, `nobackfill` or `stop`.
    pub schema_change_policy: String,
    /// Where tarn listens for webhook deliveries (HTTPS).
    pub webhook_listen: String,
    /// The URL CockroachDB posts to, as its nodes reach tarn; default `https://` plus
    /// `webhook_listen`.
    pub webhook_url: Option<String>,
    /// PEM certificate chain of the webhook endpoint; unset: tarn makes a self-signed
    /// certificate at start and hands it to the changefeed as its `ca_cert`.
    pub webhook_cert: Option<String>,
    /// PEM private key of `webhook_cert`.
    pub webhook_key: Option<String>,
    /// PEM CA certificate CockroachDB should trust for `webhook_cert` (passed as `ca_cert`);
    /// unset with `webhook_cert`: the system roots.
    pub webhook_ca: Option<String>,
    /// Name of the CockroachDB external connection that holds the webhook URI (`sink =
    /// "webhook"` only): tarn creates its changefeed `INTO 'external://<name>'`, as clusters
    /// with `changefeed.permissions.require_external_connection_sink.enabled` demand. The
    /// endpoint's path and certificate then stay the same across starts; `tarn cdc
    /// external-connection` prints the statement an admin runs to create the connection.
    pub external_connection: Option<String>,
}

/// When the CDC writer commits: whichever limit is reached first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// Longest time between a change arriving and its commit, e.g. `1s`, `250ms`.
    pub interval: String,
    /// The interval instead of `interval` when the pipeline runs inside `tarn serve` whose
    /// sessions read `latest` by default (`query.read_mode`): its queries see uncommitted
    /// changes (bridge reads), so commits wait for larger files; other engines see changes
    /// this much later. Left at its default while `interval` is set to another value than
    /// its own default, `interval` is used (a configuration asking for fast commits keeps
    /// them).
    pub bridged_interval: String,
    /// Most buffered changes before a commit.
    pub max_rows: u64,
    /// Most buffered bytes before a commit; also the bound on the writer's memory.
    pub max_bytes: u64,
}

/// Table maintenance, by `tarn maintain` and by the automatic policy of the CDC writer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Run maintenance automatically inside the CDC writer.
    pub auto: bool,
    /// How often the automatic policy checks a table, e.g. `5m`.
    pub interval: String,
    /// Data files smaller than this many bytes are compaction candidates.
    pub small_file_bytes: u64,
    /// Compact when a table has at least this many candidate files.
    pub min_files: usize,
    /// Compact a data file whose deleted rows exceed this fraction of its rows.
    pub delete_ratio: f64,
    /// Snapshots older than this are expired, e.g. `1h`, `7d`.
    pub snapshot_age: String,
    /// Snapshots always kept, however old.
    pub retain_snapshots: usize,
    /// Files unreferenced by the table and older than this are deleted, e.g. `1d`.
    pub orphan_age: String,
    /// Worker threads of the runtime `tarn maintain` and scheduled `maintain` tasks run on
    /// (at least 1): bounds the cores maintenance takes from the pipelines and queries.
    #[serde(default = "default_maintenance_threads")]
    pub threads: usize,
    /// How much lower than the process's the operating system priority (nice value) of
    /// maintenance's threads is, 0-19, so it yields the CPU to the pipelines and to queries.
    /// Linux only.
    #[serde(default = "default_maintenance_nice")]
    pub thread_nice: i32,
}

fn default_maintenance_threads() -> usize {
    1
}

fn default_maintenance_nice() -> i32 {
    10
}

impl Config {
    /// The defaults, for data directory `data_dir`.
    pub fn defaults(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            catalog: CatalogConfig {
                kind: CatalogKind::Sql,
                url: None,
                name: "tarn".into(),
                max_connections: 10,
                rest: RestClientConfig::default(),
                hms: HmsConfig::default(),
            },
            storage: StorageConfig {
                warehouse: None,
                s3: S3Config::default(),
            },
            write: WriteConfig {
                target_file_size: 128 * 1024 * 1024,
                compression: "zstd".into(),
                commit_retries: 20,
            },
            server: ServerConfig {
                pg_listen: "127.0.0.1:5433".into(),
                http_listen: "127.0.0.1:8433".into(),
                max_connections: 100,
                tls: None,
                proxy_protocol_from: Vec::new(),
            },
            auth: AuthConfig::default(),
            policy: PolicyConfig::default(),
            audit: AuditConfig::default(),
            log: LogConfig {
                format: "text".into(),
                level: "info".into(),
            },
            telemetry: TelemetryConfig::default(),
            cdc: CdcConfig {
                principal: None,
                principal_roles: Vec::new(),
                source: None,
                pipeline: "main".into(),
                slot: None,
                publication: None,
                tables: vec!["public.*".into()],
                exclude: Vec::new(),
                namespace: "cdc".into(),
                table_name: "{table}".into(),
                snapshot: "initial".into(),
                snapshot_parallelism: 2,
                snapshot_chunk_rows: 250_000,
                flush: FlushConfig {
                    interval: "1s".into(),
                    bridged_interval: "60s".into(),
                    max_rows: 200_000,
                    max_bytes: 64 * 1024 * 1024,
                },
                unconstrained_numeric: "decimal".into(),
                unsupported_types: "error".into(),
                source_kind: "postgres".into(),
                changefeed: ChangefeedConfig {
                    sink: "sinkless".into(),
                    resolved: "1s".into(),
                    schema_change_policy: "backfill".into(),
                    webhook_listen: "127.0.0.1:9443".into(),
                    webhook_url: None,
                    webhook_cert: None,
                    webhook_key: None,
                    webhook_ca: None,
                    external_connection: None,
                },
                kafka: KafkaSourceConfig {
                    brokers: "127.0.0.1:9092".into(),
                    topics: Vec::new(),
                    group: "tarn".into(),
                    session_timeout: "10s".into(),
                    start: "earliest".into(),
                    assignment: "all".into(),
                    format: "debezium".into(),
                    columns: Vec::new(),
                    archive: false,
                    archive_table: "kafka_archive".into(),
                    dead_letter_topic: None,
                },
                sink: "lake".into(),
                publish: KafkaPublishConfig {
                    brokers: "127.0.0.1:9092".into(),
                    topic_prefix: None,
                    partitions: 1,
                    replication_factor: 1,
                    schemas: true,
                    tombstones: true,
                    positions_topic: "tarn-cdc-positions".into(),
                    transaction_timeout: "5m".into(),
                    flush_interval: "100ms".into(),
                },
                transforms: Vec::new(),
            },
            rest_catalog: RestCatalogConfig {
                enabled: true,
                vend_credentials: false,
            },
            datahub: DatahubConfig {
                gms_url: None,
                token: None,
                env: "PROD".into(),
                platform_instance: None,
                interval: "30s".into(),
            },
            query: QueryConfig::default(),
            maintenance: MaintenanceConfig {
                auto: true,
                interval: "5m".into(),
                small_file_bytes: 32 * 1024 * 1024,
                min_files: 16,
                delete_ratio: 0.2,
                snapshot_age: "1h".into(),
                retain_snapshots: 10,
                orphan_age: "1d".into(),
                threads: default_maintenance_threads(),
                thread_nice: default_maintenance_nice(),
            },
            jobs: JobsConfig::default(),
            federation: Vec::new(),
            console: ConsoleConfig::default(),
        }
    }

    /// Loads the layers: defaults, the config file (`config_file`, or `tarn.toml` in the data
    /// directory when it exists), the environment `env`, and `overrides` (`key=value` pairs
    /// from flags), then validates the result.
    pub fn load(
        data_dir: &Path,
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Self> {
        let defaults = Self::defaults(data_dir);
        let mut merged = toml::Table::try_from(&defaults)
            .map_err(|e| Error::new(ErrorKind::Internal, "cannot encode defaults").with_source(e))?;

        let implicit = data_dir.join(CONFIG_FILE_NAME);
        let file = match config_file {
            Some(path) => Some(path.to_path_buf()),
            None if implicit.is_file() => Some(implicit),
            None => None,
        };
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::new(ErrorKind::Config, "cannot read config file")
                    .with_context("file", path.display())
                    .with_source(e)
            })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "config file {} is not valid TOML: {}",
                        path.display(),
                        e.message()
                    ),
                )
                .with_context("at", line_col(&text, e.span()))
            })?;
            merge(&mut merged, table);
        }

        // Where keys set by the environment and flags came from, to name it in errors.
        let mut origins: Vec<(String, String)> = Vec::new();
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (aws, key) in [
            ("AWS_ACCESS_KEY_ID", "storage.s3.access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "storage.s3.secret_access_key"),
            ("AWS_SESSION_TOKEN", "storage.s3.session_token"),
            ("AWS_REGION", "storage.s3.region"),
            ("AWS_ENDPOINT_URL", "storage.s3.endpoint"),
        ] {
            if let Some(value) = env.get(aws) {
                set_key(&mut merged, key, toml::Value::String(value.clone()), aws)?;
            }
        }
        for (name, value) in &env {
            let Some(key) = env_key(name) else {
                continue;
            };
            let origin = format!("environment variable {name}");
            set_key(&mut merged, &key, parse_scalar(value), &origin)?;
            origins.push((key, origin));
        }
        for (key, value) in overrides {
            let origin = format!("--set {key}");
            set_key(&mut merged, key, parse_scalar(value), &origin)?;
            origins.push((key.clone(), origin));
        }

        let file_origin = file
            .as_ref()
            .map(|p| format!("config file {}", p.display()))
            .unwrap_or_else(|| "configuration".to_string());
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let path = e.path().to_string();
            // The last layer that set the key, a key inside it or the section holding it is
            // where it came from.
            let within = |inner: &str, outer: &str| {
                inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            let origin = origins
                .iter()
                .rev()
                .find(|(key, _)| within(&path, key) || within(key, &path))
                .map_or(&file_origin, |(_, origin)| origin);
            Error::new(
                ErrorKind::Config,
                format!("{origin}: key `{path}`: {}", e.inner()),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot: URLs, listen addresses, sizes, names.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        if let Some(url) = &self.catalog.url {
            let scheme = url.split("://").next().unwrap_or_default();
            if !url.contains("://") || !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
                return bad(
                    "catalog.url",
                    format!("expected a sqlite:// or postgres:// URL, got {url:?}"),
                );
            }
            if let (true, Err(e)) = (scheme != "sqlite", url::Url::parse(url)) {
                return bad(
                    "catalog.url",
                    format!("not a valid URL ({e}): {:?}", redact_url(url)),
                );
            }
        }
        if self.catalog.name.trim().is_empty() {
            return bad("catalog.name", "must not be empty".into());
        }
        self.validate_catalog_kind()?;
        self.jobs.validate()?;
        self.console.validate()?;
        let mut names = std::collections::BTreeSet::new();
        for f in &self.federation {
            let key = format!("federation.{}", f.name);
            if f.name.is_empty()
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return bad(
                    "federation.name",
                    format!("{:?}: use lower-case letters, digits and _", f.name),
                );
            }
            if !names.insert(f.name.clone()) || f.name == self.catalog.name {
                return bad("federation.name", format!("{:?} names two catalogs", f.name));
            }
            match url::Url::parse(&f.url) {
                Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
                _ => {
                    return bad(
                        &format!("{key}.url"),
                        format!("expected a postgres:// URL, got {:?}", redact_url(&f.url)),
                    );
                }
            }
            if f.pool_size == 0 {
                return bad(&format!("{key}.pool_size"), "must be at least 1".into());
            }
            f.connect_timeout()?;
            f.statement_timeout()?;
        }
        if let Some(gms) = &self.datahub.gms_url {
            match url::Url::parse(gms) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return bad(
                        "datahub.gms_url",
                        format!("expected an http:// or https:// URL, got {gms:?}"),
                    );
                }
            }
        }
        if self.datahub.env.is_empty()
            || !self
                .datahub
                .env
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
        {
            return bad(
                "datahub.env",
                format!(
                    "expected an upper-case DataHub fabric like PROD or DEV, got {:?}",
                    self.datahub.env
                ),
            );
        }
        parse_duration("datahub.interval", &self.datahub.interval)?;
        if let Some(warehouse) = &self.storage.warehouse {
            match url::Url::parse(warehouse) {
                Ok(u) if matches!(u.scheme(), "file" | "s3" | "s3a") => {
                    if u.scheme() != "file" && u.host_str().unwrap_or_default().is_empty() {
                        return bad("storage.warehouse", format!("no bucket in {warehouse:?}"));
                    }
                }
                Ok(u) => {
                    return bad(
                        "storage.warehouse",
                        format!("expected a file:// or s3:// URL, got scheme {:?}", u.scheme()),
                    );
                }
                Err(e) => {
                    return bad(
                        "storage.warehouse",
                        format!("expected a file:// or s3:// URL ({e}), got {warehouse:?}"),
                    );
                }
            }
        }
        if let Some(endpoint) = &self.storage.s3.endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return bad(
                        "storage.s3.endpoint",
                        format!("expected an http:// or https:// URL, got {endpoint:?}"),
                    );
                }
            }
        }
        if self.write.target_file_size < 1024 * 1024 {
            return bad(
                "write.target_file_size",
                format!(
                    "expected at least 1048576 bytes, got {}",
                    self.write.target_file_size
                ),
            );
        }
        if !matches!(
            self.write.compression.as_str(),
            "zstd" | "snappy" | "uncompressed"
        ) {
            return bad(
                "write.compression",
                format!(
                    "expected zstd, snappy or uncompressed, got {:?}",
                    self.write.compression
                ),
            );
        }
        for (key, addr) in [
            ("server.pg_listen", &self.server.pg_listen),
            ("server.http_listen", &self.server.http_listen),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                return bad(
                    key,
                    format!("expected HOST:PORT with an IP address, got {addr:?}"),
                );
            }
        }
        self.server.proxy_networks()?;
        if let Some(tls) = &self.server.tls {
            for (key, file) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if file.as_ref().is_none_or(|f| f.as_os_str().is_empty()) {
                    return bad(
                        key,
                        "must name a PEM file: TLS needs both server.tls.cert and server.tls.key".into(),
                    );
                }
            }
            parse_duration("server.tls.reload_interval", &tls.reload_interval)?;
        }
        if !self.auth.certificate_users.is_empty()
            && self.server.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return bad(
                "auth.certificate_users",
                "client certificates need server.tls.client_ca (the CA that signs them)".into(),
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(
                "log.format",
                format!("expected text or json, got {:?}", self.log.format),
            );
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => {
                    return bad(
                        "telemetry.otlp_endpoint",
                        format!("expected an http:// or https:// URL, got scheme {:?}", u.scheme()),
                    );
                }
                Err(e) => {
                    return bad(
                        "telemetry.otlp_endpoint",
                        format!("{endpoint:?} is not a URL: {e}"),
                    );
                }
            }
        }
        if self.policy.file.is_some() && self.policy.opa_url.is_some() {
            return bad(
                "policy.opa_url",
                "set either policy.file (evaluated in process) or policy.opa_url (an OPA server), not both"
                    .into(),
            );
        }
        if self.policy.package.trim().is_empty() {
            return bad("policy.package", "must not be empty".into());
        }
        parse_duration("policy.timeout", &self.policy.timeout)?;
        self.query.validate()?;
        parse_duration("audit.flush_interval", &self.audit.flush_interval)?;
        if self.audit.auditor_role.trim().is_empty() {
            return bad("audit.auditor_role", "must not be empty".into());
        }
        if self.audit.max_buffered == 0 {
            return bad("audit.max_buffered", "must be at least 1".into());
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            if user.name.is_empty() {
                return bad(&format!("auth.users[{i}].name"), "must not be empty".into());
            }
        }
        if let Some(oidc) = &self.auth.oidc {
            match url::Url::parse(&oidc.issuer) {
                Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_host(&u)) => {}
                _ => {
                    return bad(
                        "auth.oidc.issuer",
                        format!(
                            "expected the issuer's https:// URL (http:// only on loopback), got {:?}",
                            oidc.issuer
                        ),
                    );
                }
            }
            if oidc.audience.is_empty() {
                return bad(
                    "auth.oidc.audience",
                    "must name the client id tokens are issued for (their `aud`)".into(),
                );
            }
            for (key, value) in [
                ("auth.oidc.clock_skew", &oidc.clock_skew),
                ("auth.oidc.refresh_min", &oidc.refresh_min),
                ("auth.oidc.timeout", &oidc.timeout),
            ] {
                parse_duration(key, value)?;
            }
        }
        self.validate_cdc()?;
        for (key, value) in [
            ("maintenance.interval", &self.maintenance.interval),
            ("maintenance.snapshot_age", &self.maintenance.snapshot_age),
            ("maintenance.orphan_age", &self.maintenance.orphan_age),
        ] {
            parse_duration(key, value)?;
        }
        check_nice("maintenance.thread_nice", self.maintenance.thread_nice)?;
        if self.maintenance.threads == 0 {
            return bad("maintenance.threads", "expected at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.maintenance.delete_ratio) {
            return bad(
                "maintenance.delete_ratio",
                format!(
                    "expected a fraction between 0 and 1, got {}",
                    self.maintenance.delete_ratio
                ),
            );
        }
        Ok(())
    }

    fn validate_cdc(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        let cdc = &self.cdc;
        if let Some(source) = &cdc.source {
            match url::Url::parse(source) {
                Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {
                    if u.host_str().unwrap_or_default().is_empty() {
                        return bad("cdc.source", format!("no host in {:?}", redact_url(source)));
                    }
                }
                Ok(u) => {
                    return bad(
                        "cdc.source",
                        format!("expected a postgres:// URL, got scheme {:?}", u.scheme()),
                    );
                }
                Err(e) => {
                    return bad(
                        "cdc.source",
                        format!("expected a postgres:// URL ({e}), got {:?}", redact_url(source)),
                    );
                }
            }
        }
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 58
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !ident_ok(&cdc.pipeline) {
            return bad(
                "cdc.pipeline",
                format!(
                    "expected 1-58 lowercase letters, digits or underscores (it names a replication slot), got {:?}",
                    cdc.pipeline
                ),
            );
        }
        for (key, value) in [("cdc.slot", &cdc.slot), ("cdc.publication", &cdc.publication)] {
            if let Some(v) = value
                && !ident_ok(v)
            {
                return bad(
                    key,
                    format!("expected 1-58 lowercase letters, digits or underscores, got {v:?}"),
                );
            }
        }
        if cdc.tables.is_empty() {
            return bad(
                "cdc.tables",
                "expected at least one pattern, e.g. [\"public.*\"]".into(),
            );
        }
        for (key, patterns) in [("cdc.tables", &cdc.tables), ("cdc.exclude", &cdc.exclude)] {
            for p in patterns {
                if p.split('.').count() != 2 || p.split('.').any(str::is_empty) {
                    return bad(key, format!("expected SCHEMA.TABLE patterns, got {p:?}"));
                }
            }
        }
        if cdc.namespace.trim().is_empty() {
            return bad("cdc.namespace", "must not be empty".into());
        }
        if !cdc.table_name.contains("{table}") {
            return bad(
                "cdc.table_name",
                format!(
                    "expected a template containing {{table}}, got {:?}",
                    cdc.table_name
                ),
            );
        }
        if !matches!(cdc.snapshot.as_str(), "initial" | "never") {
            return bad(
                "cdc.snapshot",
                format!("expected initial or never, got {:?}", cdc.snapshot),
            );
        }
        if cdc.snapshot_parallelism == 0 || cdc.snapshot_parallelism > 64 {
            return bad(
                "cdc.snapshot_parallelism",
                format!("expected 1 to 64, got {}", cdc.snapshot_parallelism),
            );
        }
        if cdc.snapshot_chunk_rows == 0 {
            return bad("cdc.snapshot_chunk_rows", "must be at least 1".into());
        }
        let interval = parse_duration("cdc.flush.interval", &cdc.flush.interval)?;
        if interval.is_zero() {
            return bad("cdc.flush.interval", "must be more than 0".into());
        }
        if parse_duration("cdc.flush.bridged_interval", &cdc.flush.bridged_interval)?.is_zero() {
            return bad("cdc.flush.bridged_interval", "must be more than 0".into());
        }
        if cdc.flush.max_rows == 0 {
            return bad("cdc.flush.max_rows", "must be at least 1".into());
        }
        if cdc.flush.max_bytes < 1024 * 1024 {
            return bad(
                "cdc.flush.max_bytes",
                format!("expected at least 1048576 bytes, got {}", cdc.flush.max_bytes),
            );
        }
        if !matches!(cdc.unconstrained_numeric.as_str(), "decimal" | "text") {
            return bad(
                "cdc.unconstrained_numeric",
                format!("expected decimal or text, got {:?}", cdc.unconstrained_numeric),
            );
        }
        if !matches!(cdc.source_kind.as_str(), "postgres" | "cockroachdb" | "kafka") {
            return bad(
                "cdc.source_kind",
                format!(
                    "expected postgres, cockroachdb or kafka, got {:?}",
                    cdc.source_kind
                ),
            );
        }
        self.validate_kafka_source()?;
        self.validate_kafka_publish()?;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in cdc.transforms.iter().enumerate() {
            let key = format!("cdc.transforms[{i}]");
            if t.table
                .split_once('.')
                .is_none_or(|(s, n)| s.is_empty() || n.is_empty())
            {
                return bad(
                    &format!("{key}.table"),
                    format!("expected schema.table, got {:?}", t.table),
                );
            }
            if !seen.insert(t.table.as_str()) {
                return bad(&format!("{key}.table"), format!("{} has two transforms", t.table));
            }
            if !t.sql.trim_start().to_ascii_lowercase().starts_with("select")
                && !t.sql.trim_start().to_ascii_lowercase().starts_with("with")
            {
                return bad(&format!("{key}.sql"), "expected a SELECT over `changes`".into());
            }
        }
        let feed = &cdc.changefeed;
        if !matches!(feed.sink.as_str(), "sinkless" | "webhook") {
            return bad(
                "cdc.changefeed.sink",
                format!("expected sinkless or webhook, got {:?}", feed.sink),
            );
        }
        if parse_duration("cdc.changefeed.resolved", &feed.resolved)?.is_zero() {
            return bad("cdc.changefeed.resolved", "must be more than 0".into());
        }
        if !matches!(
            feed.schema_change_policy.as_str(),
            "backfill" | "nobackfill" | "stop"
        ) {
            return bad(
                "cdc.changefeed.schema_change_policy",
                format!(
                    "expected backfill, nobackfill or stop, got {:?}",
                    feed.schema_change_policy
                ),
            );
        }
        if feed.webhook_listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "cdc.changefeed.webhook_listen",
                format!(
                    "expected an address like 0.0.0.0:9443, got {:?}",
                    feed.webhook_listen
                ),
            );
        }
        if let Some(u) = &feed.webhook_url {
            match url::Url::parse(u) {
                Ok(u) if u.scheme() == "https" => {}
                _ => {
                    return bad(
                        "cdc.changefeed.webhook_url",
                        format!("expected an https:// URL, got {u:?}"),
                    );
                }
            }
        }
        if let Some(name) = &feed.external_connection {
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return bad(
                    "cdc.changefeed.external_connection",
                    format!("expected a connection name like tarn_webhook, got {name:?}"),
                );
            }
            if feed.sink != "webhook" {
                return bad(
                    "cdc.changefeed.external_connection",
                    "an external connection holds a webhook URI: set cdc.changefeed.sink = \"webhook\" too"
                        .into(),
                );
            }
        }
        if feed.webhook_cert.is_some() != feed.webhook_key.is_some() {
            return bad(
                "cdc.changefeed.webhook_cert",
                "webhook_cert and webhook_key go together".into(),
            );
        }
        if !matches!(cdc.unsupported_types.as_str(), "error" | "text") {
            return bad(
                "cdc.unsupported_types",
                format!("expected error or text, got {:?}", cdc.unsupported_types),
            );
        }
        Ok(())
    }

    fn validate_kafka_source(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        let kafka = &self.cdc.kafka;
        let consumed = self.cdc.source_kind == "kafka";
        check_brokers("cdc.kafka.brokers", &kafka.brokers)?;
        if consumed && kafka.topics.is_empty() {
            return bad(
                "cdc.kafka.topics",
                "expected at least one topic (or a ^regex) to consume with source_kind = \"kafka\"".into(),
            );
        }
        for topic in &kafka.topics {
            if !topic.starts_with('^') && !legal_topic(topic) {
                return bad(
                    "cdc.kafka.topics",
                    format!(
                        "expected topic names of letters, digits, '.', '_' and '-' (or a regex starting with ^), got {topic:?}"
                    ),
                );
            }
        }
        if kafka.group.trim().is_empty() {
            return bad("cdc.kafka.group", "must not be empty".into());
        }
        // After the group: the default name is made from it.
        let dead_letters = kafka.dead_letter_topic();
        if !legal_topic(&dead_letters) {
            return bad(
                "cdc.kafka.dead_letter_topic",
                format!(
                    "expected a topic name of letters, digits, '.', '_' and '-' (the default is the group followed by .dlq), got {dead_letters:?}"
                ),
            );
        }
        let timeout = parse_duration("cdc.kafka.session_timeout", &kafka.session_timeout)?;
        if timeout < std::time::Duration::from_secs(1) || timeout > std::time::Duration::from_secs(3600) {
            return bad(
                "cdc.kafka.session_timeout",
                format!("expected 1s to 1h, got {:?}", kafka.session_timeout),
            );
        }
        if !matches!(kafka.start.as_str(), "earliest" | "latest") {
            return bad(
                "cdc.kafka.start",
                format!("expected earliest or latest, got {:?}", kafka.start),
            );
        }
        if !matches!(kafka.assignment.as_str(), "all" | "group") {
            return bad(
                "cdc.kafka.assignment",
                format!("expected all or group, got {:?}", kafka.assignment),
            );
        }
        if !matches!(kafka.format.as_str(), "debezium" | "json") {
            return bad(
                "cdc.kafka.format",
                format!("expected debezium or json, got {:?}", kafka.format),
            );
        }
        if !kafka.columns.is_empty() && kafka.format != "json" {
            return bad(
                "cdc.kafka.columns",
                "columns describe plain JSON records: expected cdc.kafka.format = \"json\" (change events carry their own schema)".into(),
            );
        }
        if kafka.archive && kafka.assignment != "all" {
            return bad(
                "cdc.kafka.assignment",
                "the archive reads every partition of its topics itself: expected all with cdc.kafka.archive"
                    .into(),
            );
        }
        if kafka.archive && !consumed {
            return bad(
                "cdc.kafka.archive",
                format!(
                    "the archive consumes Kafka topics: expected cdc.source_kind = \"kafka\", got {:?} \
                     (`tarn ingest kafka --archive` sets it)",
                    self.cdc.source_kind
                ),
            );
        }
        let parts: Vec<&str> = kafka.archive_table.split('.').collect();
        let legal_part = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if parts.len() > 2 || !parts.iter().all(|p| legal_part(p)) {
            return bad(
                "cdc.kafka.archive_table",
                format!(
                    "expected NAME or NAMESPACE.NAME of letters, digits and '_', got {:?}",
                    kafka.archive_table
                ),
            );
        }
        Ok(())
    }

    fn validate_kafka_publish(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        let cdc = &self.cdc;
        if !matches!(cdc.sink.as_str(), "lake" | "kafka" | "lake+kafka") {
            return bad(
                "cdc.sink",
                format!("expected lake, kafka or lake+kafka, got {:?}", cdc.sink),
            );
        }
        if cdc.sink != "lake" && cdc.source_kind == "kafka" {
            return bad(
                "cdc.sink",
                "a Kafka source (cdc.source_kind = \"kafka\") writes into the lake; expected sink = \"lake\""
                    .into(),
            );
        }
        let publish = &cdc.publish;
        check_brokers("cdc.publish.brokers", &publish.brokers)?;
        if let Some(prefix) = &publish.topic_prefix
            && !legal_topic(prefix)
        {
            return bad(
                "cdc.publish.topic_prefix",
                format!("expected letters, digits, '.', '_' and '-', got {prefix:?}"),
            );
        }
        if !legal_topic(&publish.positions_topic) {
            return bad(
                "cdc.publish.positions_topic",
                format!(
                    "expected a topic name of letters, digits, '.', '_' and '-', got {:?}",
                    publish.positions_topic
                ),
            );
        }
        if publish.partitions < 1 {
            return bad(
                "cdc.publish.partitions",
                format!("expected at least 1, got {}", publish.partitions),
            );
        }
        if publish.replication_factor < 1 {
            return bad(
                "cdc.publish.replication_factor",
                format!("expected at least 1, got {}", publish.replication_factor),
            );
        }
        parse_duration("cdc.publish.flush_interval", &publish.flush_interval)?;
        let timeout = parse_duration("cdc.publish.transaction_timeout", &publish.transaction_timeout)?;
        if timeout < std::time::Duration::from_secs(1) || timeout > std::time::Duration::from_secs(3600) {
            return bad(
                "cdc.publish.transaction_timeout",
                format!("expected 1s to 1h, got {:?}", publish.transaction_timeout),
            );
        }
        Ok(())
    }

    /// The settings of `catalog.kind`: a REST catalog needs `catalog.rest.uri` (an http(s) URL),
    /// a Hive Metastore `catalog.hms.uri` (`host:port`) and a warehouse location.
    fn validate_catalog_kind(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        match self.catalog.kind {
            CatalogKind::Sql => {}
            CatalogKind::Rest => {
                let rest = &self.catalog.rest;
                let Some(uri) = &rest.uri else {
                    return bad(
                        "catalog.rest.uri",
                        "catalog.kind = \"rest\" needs the REST catalog's URL, e.g. http://host:8181/catalog"
                            .into(),
                    );
                };
                for (key, value) in [
                    ("catalog.rest.uri", Some(uri)),
                    ("catalog.rest.oauth2_server_uri", rest.oauth2_server_uri.as_ref()),
                ] {
                    let Some(value) = value else { continue };
                    match url::Url::parse(value) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                        _ => {
                            return bad(key, format!("expected an http:// or https:// URL, got {value:?}"));
                        }
                    }
                }
                if rest.token.is_some() && rest.credential.is_some() {
                    return bad(
                        "catalog.rest.credential",
                        "set either catalog.rest.token or catalog.rest.credential, not both".into(),
                    );
                }
                if rest.oauth2_server_uri.is_some() && rest.credential.is_none() {
                    return bad(
                        "catalog.rest.oauth2_server_uri",
                        "needs catalog.rest.credential (client_id:client_secret) to exchange for a token"
                            .into(),
                    );
                }
            }
            CatalogKind::Hms => {
                let Some(uri) = &self.catalog.hms.uri else {
                    return bad(
                        "catalog.hms.uri",
                        "catalog.kind = \"hms\" needs the metastore's thrift address, e.g. metastore:9083"
                            .into(),
                    );
                };
                let address = uri.strip_prefix("thrift://").unwrap_or(uri);
                if address
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    return bad(
                        "catalog.hms.uri",
                        format!("expected host:port or thrift://host:port, got {uri:?}"),
                    );
                }
                if let Some(t) = &self.catalog.hms.thrift_transport
                    && !matches!(t.as_str(), "buffered" | "framed")
                {
                    return bad(
                        "catalog.hms.thrift_transport",
                        format!("expected buffered or framed, got {t:?}"),
                    );
                }
            }
        }
        if self.catalog.kind != CatalogKind::Sql && self.catalog.url.is_some() {
            return bad(
                "catalog.url",
                format!(
                    "is the SQL catalog's database; with catalog.kind = \"{}\" leave it unset",
                    self.catalog.kind
                ),
            );
        }
        Ok(())
    }

    /// The catalog in a few words for people: the SQL catalog's URL (password redacted), or
    /// which REST catalog or metastore.
    pub fn catalog_description(&self) -> String {
        match self.catalog.kind {
            CatalogKind::Sql => redact_url(&self.catalog_url()),
            CatalogKind::Rest => format!(
                "Iceberg REST catalog {}",
                self.catalog.rest.uri.as_deref().unwrap_or_default()
            ),
            CatalogKind::Hms => format!(
                "Hive Metastore {}",
                self.catalog.hms.uri.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The catalog URL, defaulting to `DATA_DIR/catalog.db`.
    pub fn catalog_url(&self) -> String {
        match &self.catalog.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("catalog.db").display()),
        }
    }

    /// The warehouse root URL, defaulting to `DATA_DIR/warehouse`.
    pub fn warehouse_url(&self) -> String {
        match &self.storage.warehouse {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let dir = absolute(&self.data_dir.join("warehouse"));
                format!("file://{}", dir.display())
            }
        }
    }

    /// The effective configuration as TOML, with passwords and secret keys replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.catalog.url = shown.catalog.url.as_deref().map(redact_url);
        shown.cdc.source = shown.cdc.source.as_deref().map(redact_url);
        for f in &mut shown.federation {
            f.url = redact_url(&f.url);
        }
        shown.jobs.alerts.smtp_url = shown.jobs.alerts.smtp_url.as_deref().map(redact_url);
        // A Slack webhook's URL is its secret.
        if shown.jobs.alerts.webhook_url.is_some() {
            shown.jobs.alerts.webhook_url = Some("***".into());
        }
        for secret in [
            &mut shown.storage.s3.secret_access_key,
            &mut shown.storage.s3.session_token,
            &mut shown.datahub.token,
            &mut shown.catalog.rest.token,
        ] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        // The client id of `client_id:client_secret` is no secret; it says who tarn is.
        if let Some(credential) = &mut shown.catalog.rest.credential {
            *credential = match credential.split_once(':') {
                Some((id, _)) => format!("{id}:***"),
                None => "***".into(),
            };
        }
        for user in &mut shown.auth.users {
            user.password = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// Whether `url`'s host is a loopback address or `localhost`.
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Parses a duration like `1s`, `250ms`, `5m`, `7d`; errors name `key`.
pub fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("key `{key}`: expected a duration like 1s, 250ms or 5m, got {value:?} ({e})"),
        )
    })
}

impl CdcConfig {
    /// The replication slot's name.
    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("tarn_{}", self.pipeline))
    }

    /// The publication's name.
    pub fn publication_name(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| format!("tarn_{}", self.pipeline))
    }

    /// The flush interval (validated at load).
    pub fn flush_interval(&self) -> std::time::Duration {
        parse_duration("cdc.flush.interval", &self.flush.interval)
            .unwrap_or(std::time::Duration::from_secs(1))
    }
}

impl MaintenanceConfig {
    /// A duration setting of this section (validated at load), by key name.
    pub fn duration(&self, key: &str) -> std::time::Duration {
        let value = match key {
            "interval" => &self.interval,
            "snapshot_age" => &self.snapshot_age,
            _ => &self.orphan_age,
        };
        parse_duration(&format!("maintenance.{key}"), value).unwrap_or(std::time::Duration::from_secs(3600))
    }
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// `path` made absolute against the current directory, without touching the filesystem.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_key(table: &mut toml::Table, dotted: &str, value: toml::Value, origin: &str) -> Result<()> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{origin}: key `{dotted}`: `{part}` is not a section"),
                ));
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_scalar(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

fn line_col(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "unknown position".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
    format!("line {line}, column {col}")
}

/// Checks a `host:port[,host:port...]` list of Kafka brokers.
fn check_brokers(key: &str, brokers: &str) -> Result<()> {
    for server in brokers.split(',') {
        let port_ok = server
            .trim()
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(Error::new(
                ErrorKind::Config,
                format!("key `{key}`: expected HOST:PORT[,HOST:PORT...], got {brokers:?}"),
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a legal Kafka topic name: 1 to 249 ASCII letters, digits, `.`, `_`, `-`.
fn legal_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tarn.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let flags: Vec<_> = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(dir.path(), None, env, &flags)
    }

    /// The config of `dir` with `--set` style `pairs`.
    fn with_overrides(dir: &std::path::Path, pairs: &[(&str, &str)]) -> Result<Config> {
        let overrides: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(dir, None, Vec::new(), &overrides)
    }

    #[test]
    fn kafka_source_is_validated_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let set = |pairs: &[(&str, &str)]| with_overrides(dir.path(), pairs);
        let config = set(&[
            ("cdc.source_kind", "kafka"),
            ("cdc.kafka.topics", "[\"shop.public.orders\", \"^shop\\\\..*\"]"),
        ])
        .unwrap();
        assert_eq!(config.cdc.kafka.topics.len(), 2);
        assert!(!config.cdc.kafka.archive);
        let archive = set(&[
            ("cdc.source_kind", "kafka"),
            ("cdc.kafka.topics", "[\"orders\"]"),
            ("cdc.kafka.archive", "true"),
            ("cdc.kafka.archive_table", "raw.kafka_archive"),
        ])
        .unwrap();
        assert!(archive.cdc.kafka.archive);
        assert_eq!(archive.cdc.kafka.archive_table, "raw.kafka_archive");
        for (pairs, key) in [
            (vec![("cdc.source_kind", "kafka")], "cdc.kafka.topics"),
            (vec![("cdc.kafka.brokers", "nohost")], "cdc.kafka.brokers"),
            (vec![("cdc.kafka.topics", "[\"a b\"]")], "cdc.kafka.topics"),
            (vec![("cdc.kafka.start", "middle")], "cdc.kafka.start"),
            (vec![("cdc.kafka.assignment", "some")], "cdc.kafka.assignment"),
            (vec![("cdc.kafka.format", "avro")], "cdc.kafka.format"),
            (
                vec![("cdc.kafka.columns", "[\"id bigint\"]")],
                "cdc.kafka.columns",
            ),
            (
                vec![("cdc.kafka.session_timeout", "soon")],
                "cdc.kafka.session_timeout",
            ),
            (vec![("cdc.kafka.group", " ")], "cdc.kafka.group"),
            (vec![("cdc.kafka.archive", "true")], "cdc.kafka.archive"),
            (
                vec![("cdc.kafka.archive_table", "a.b.c")],
                "cdc.kafka.archive_table",
            ),
            (
                vec![("cdc.kafka.archive_table", "raw.")],
                "cdc.kafka.archive_table",
            ),
            (
                vec![("cdc.kafka.archive_table", "kafka-archive")],
                "cdc.kafka.archive_table",
            ),
            (
                vec![("cdc.kafka.dead_letter_topic", "bad topic")],
                "cdc.kafka.dead_letter_topic",
            ),
        ] {
            let err = set(&pairs).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn publishing_and_transforms_are_validated_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let set = |pairs: &[(&str, &str)]| with_overrides(dir.path(), pairs);
        let config = set(&[
            ("cdc.sink", "lake+kafka"),
            ("cdc.publish.partitions", "3"),
            (
                "cdc.transforms",
                "[{table = \"public.orders\", sql = \"SELECT id FROM changes\"}]",
            ),
        ])
        .unwrap();
        assert_eq!(config.cdc.publish.partitions, 3);
        assert_eq!(config.cdc.transforms[0].table, "public.orders");
        let transform = |table: &str, sql: &str| format!("[{{table = {table:?}, sql = {sql:?}}}]");
        for (pairs, key) in [
            (vec![("cdc.sink", "s3")], "cdc.sink".to_string()),
            (
                vec![
                    ("cdc.sink", "kafka"),
                    ("cdc.source_kind", "kafka"),
                    ("cdc.kafka.topics", "[\"t\"]"),
                ],
                "cdc.sink".into(),
            ),
            (
                vec![("cdc.publish.brokers", "nohost")],
                "cdc.publish.brokers".into(),
            ),
            (
                vec![("cdc.publish.partitions", "0")],
                "cdc.publish.partitions".into(),
            ),
            (
                vec![("cdc.publish.topic_prefix", "a b")],
                "cdc.publish.topic_prefix".into(),
            ),
            (
                vec![("cdc.publish.flush_interval", "soon")],
                "cdc.publish.flush_interval".into(),
            ),
            (
                vec![("cdc.publish.transaction_timeout", "0s")],
                "cdc.publish.transaction_timeout".into(),
            ),
            (
                vec![("cdc.transforms", transform("orders", "SELECT 1").as_str())],
                "cdc.transforms[0].table".into(),
            ),
            (
                vec![(
                    "cdc.transforms",
                    transform("public.orders", "DELETE FROM changes").as_str(),
                )],
                "cdc.transforms[0].sql".into(),
            ),
        ] {
            let err = set(&pairs).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn layers_override_in_order() {
        let c = load(
            Some("[write]\ntarget_file_size = 2097152\n[server]\npg_listen = \"127.0.0.1:6000\"\n"),
            &[
                ("TARN_SERVER__PG_LISTEN", "127.0.0.1:6001"),
                ("HOME", "/x"),
                ("TARN_LOG", "debug"),
                ("TARN_FAILPOINTS", "a=abort"),
            ],
            &[("write.commit_retries", "3")],
        )
        .unwrap();
        assert_eq!(c.write.target_file_size, 2 * 1024 * 1024);
        assert_eq!(c.server.pg_listen, "127.0.0.1:6001");
        assert_eq!(c.write.commit_retries, 3);
        assert_eq!(c.catalog.name, "tarn");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(Some("[catalog]\nurll = \"x\"\n"), &[], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("catalog") && msg.contains("urll"), "{msg}");
    }

    #[test]
    fn unknown_key_from_the_environment_names_the_variable() {
        let err = load(None, &[("TARN_CATALOG__URLL", "sqlite://x.db")], &[]).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            msg.starts_with(
                "environment variable TARN_CATALOG__URLL: key `catalog.urll`: unknown field `urll`"
            ),
            "{msg}"
        );
        // A section that does not exist is a typo too.
        let err = load(None, &[("TARN_CATLOG__URL", "sqlite://x.db")], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable TARN_CATLOG__URL: key `catlog`"),
            "{err}"
        );
        let err = load(None, &[], &[("write.commit_retries", "many")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--set write.commit_retries: key `write.commit_retries`"),
            "{err}"
        );
    }

    #[test]
    fn other_tarn_variables_are_not_configuration() {
        let c = load(
            None,
            &[
                ("TARN_BIN", "/opt/tarn/bin/tarn"),
                ("TARN_HOME", "x"),
                ("TARN_", "x"),
                ("TARN_DATA_DIR", "/elsewhere"),
                ("TARN_CONFIG", "/elsewhere/tarn.toml"),
                ("TARN_WRITE__COMMIT_RETRIES", "7"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.write.commit_retries, 7);
        assert_eq!(env_key("TARN_BIN"), None);
        assert_eq!(env_key("TARN_LOG"), None);
        assert_eq!(env_key("TARN_DATA_DIR"), None);
        assert_eq!(env_key("PATH"), None);
        assert_eq!(
            env_key("TARN_STORAGE__S3__ENDPOINT").as_deref(),
            Some("storage.s3.endpoint")
        );
        assert_eq!(
            env_key("TARN_SERVER__MAX_CONNECTIONS").as_deref(),
            Some("server.max_connections")
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load(Some("[write]\ntarget_file_size = \"big\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("write.target_file_size"), "{err}");
    }

    #[test]
    fn bad_url_is_named() {
        let err = load(None, &[("TARN_CATALOG__URL", "mysql://x")], &[]).unwrap_err();
        assert!(err.to_string().contains("catalog.url"), "{err}");
        let err = load(Some("[storage]\nwarehouse = \"ftp://x/y\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("storage.warehouse"), "{err}");
    }

    #[test]
    fn proxy_protocol_networks_parse_and_a_bad_one_is_named() {
        let c = load(
            Some("[server]\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n"),
            &[],
            &[],
        )
        .unwrap();
        let nets = c.server.proxy_networks().unwrap();
        assert!(nets[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(!nets[1].contains(&"192.0.2.8".parse::<std::net::IpAddr>().unwrap()));
        let err = load(
            Some("[server]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.proxy_protocol_from"), "{err}");
    }

    #[test]
    fn bad_toml_names_line() {
        let err = load(Some("[write]\ntarget_file_size = = 3\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn telemetry_keys_are_checked() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(c.telemetry.traces_url(), None);
        assert!(c.telemetry.metrics);
        let c = load(
            None,
            &[("TARN_TELEMETRY__OTLP_ENDPOINT", "http://collector:4318/")],
            &[("telemetry.metrics", "false")],
        )
        .unwrap();
        assert_eq!(
            c.telemetry.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert!(!c.telemetry.metrics);
        let c = load(
            Some("[telemetry]\notlp_endpoint = \"https://c/v1/traces\"\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.telemetry.traces_url().as_deref(), Some("https://c/v1/traces"));
        let err = load(
            Some("[telemetry]\notlp_endpoint = \"collector:4318\"\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
        let err = load(Some("[telemetry]\notlp_endpoint = \"not a url\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
    }

    #[test]
    fn tls_keys_are_checked() {
        // From the environment and flags, as from the file.
        let c = load(
            None,
            &[
                ("TARN_SERVER__TLS__CERT", "/etc/tarn/server.crt"),
                ("TARN_SERVER__TLS__KEY", "/etc/tarn/server.key"),
            ],
            &[("server.tls.reload_interval", "0s")],
        )
        .unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert.as_deref(), Some(Path::new("/etc/tarn/server.crt")));
        assert!(tls.require, "TLS, once configured, is required by default");
        assert_eq!(tls.reload_interval, "0s");
        assert_eq!(load(None, &[], &[]).unwrap().server.tls, None);

        let err = load(Some("[server.tls]\ncert = \"/etc/tarn/server.crt\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("server.tls.key"), "{err}");
        let err = load(
            Some("[server.tls]\ncert = \"a\"\nkey = \"b\"\nreload_interval = \"often\"\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.tls.reload_interval"), "{err}");
        let err = load(Some("[auth.certificate_users]\n\"cn\" = \"ana\"\n"), &[], &[]).unwrap_err();
        assert!(
            err.to_string().contains("auth.certificate_users")
                && err.to_string().contains("server.tls.client_ca"),
            "{err}"
        );
    }

    #[test]
    fn cdc_keys_are_checked() {
        let err = load(None, &[("TARN_CDC__SOURCE", "mysql://x/y")], &[]).unwrap_err();
        assert!(err.to_string().contains("cdc.source"), "{err}");
        let err = load(Some("[cdc.flush]\ninterval = \"soon\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("cdc.flush.interval"), "{err}");
        let err = load(None, &[], &[("cdc.pipeline", "Has-Dash")]).unwrap_err();
        assert!(err.to_string().contains("cdc.pipeline"), "{err}");
        let err = load(None, &[], &[("cdc.tables", "[\"orders\"]")]).unwrap_err();
        assert!(err.to_string().contains("SCHEMA.TABLE"), "{err}");
        let c = load(None, &[("TARN_CDC__FLUSH__INTERVAL", "250ms")], &[]).unwrap();
        assert_eq!(c.cdc.flush_interval(), std::time::Duration::from_millis(250));
        assert_eq!(c.cdc.slot_name(), "tarn_main");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(
            Some(
                "[catalog]\nurl = \"postgres://u:hunter2@127.0.0.1:5432/c\"\n\
                 [cdc]\nsource = \"postgres://app:hunter2@127.0.0.1:5432/shop\"\n\
                 [[auth.users]]\nname = \"a\"\npassword = \"hunter2\"\n",
            ),
            &[("AWS_SECRET_ACCESS_KEY", "hunter2")],
            &[],
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn rest_catalog_secrets_are_redacted() {
        for (auth, shown_as) in [
            ("token = \"hunter2\"", "token = \"***\""),
            ("credential = \"tarn:hunter2\"", "credential = \"tarn:***\""),
        ] {
            let c = load(
                Some(&format!(
                    "[catalog]\nkind = \"rest\"\n[catalog.rest]\nuri = \"http://127.0.0.1:8181/catalog\"\n{auth}\n"
                )),
                &[],
                &[],
            )
            .unwrap();
            let shown = c.to_redacted_toml();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(shown_as), "{shown}");
        }
    }

    #[test]
    fn catalog_kinds_name_the_missing_key() {
        let err = load(Some("[catalog]\nkind = \"rest\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("catalog.rest.uri"), "{err}");
        let err = load(Some("[catalog]\nkind = \"hms\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("catalog.hms.uri"), "{err}");
        let err = load(
            Some("[catalog]\nkind = \"rest\"\n[catalog.rest]\nuri = \"ftp://x\"\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("catalog.rest.uri"), "{err}");
        let err = load(Some("[catalog]\nkind = \"glue\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("catalog.kind"), "{err}");
        let ok = load(
            Some("[catalog]\nkind = \"hms\"\n[catalog.hms]\nuri = \"thrift://127.0.0.1:9083\"\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(ok.catalog.kind, CatalogKind::Hms);
        let env = load(
            None,
            &[
                ("TARN_CATALOG__KIND", "rest"),
                ("TARN_CATALOG__REST__URI", "http://127.0.0.1:1/iceberg"),
                ("TARN_CATALOG__REST__TOKEN", "t"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(env.catalog.kind, CatalogKind::Rest);
        assert_eq!(env.catalog.rest.token.as_deref(), Some("t"));
    }
}
