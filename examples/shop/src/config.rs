//! The shop's settings: where the database is and how to reach it safely, where to listen,
//! how to retry.
//!
//! Layers, later ones winning: built-in defaults → the config file (`--config FILE` or
//! `SHOP_CONFIG`; its `[database] url`, then its discrete keys) → `SHOP_DATABASE_URL` →
//! discrete `SHOP_DB_*` variables → `--database-url`. Every value remembers where it came
//! from, so an error names the setting as the user wrote it (`SHOP_DB_PORT`,
//! `database.sslmode in shop.toml`, `sslmode in SHOP_DATABASE_URL`). Unknown keys and
//! variables are errors too: a typo (`SHOP_DB_SSL_MODE`) must not silently leave TLS off.
//!
//! | setting | file key (`[database]` unless noted) | variable | URL |
//! |---|---|---|---|
//! | host | `host` | `SHOP_DB_HOST` | host part |
//! | port | `port` | `SHOP_DB_PORT` | port part |
//! | user | `user` | `SHOP_DB_USER` | user part |
//! | password | `password` | `SHOP_DB_PASSWORD` | password part |
//! | database | `name` | `SHOP_DB_NAME` | path |
//! | TLS mode | `sslmode` | `SHOP_DB_SSLMODE` | `sslmode=` |
//! | CA certificate | `sslrootcert` | `SHOP_DB_SSLROOTCERT` | `sslrootcert=` |
//! | client certificate | `sslcert` | `SHOP_DB_SSLCERT` | `sslcert=` |
//! | client key | `sslkey` | `SHOP_DB_SSLKEY` | `sslkey=` |
//! | pool size | `pool_size` | `SHOP_DB_POOL_SIZE` | `pool_size=` |
//! | connect timeout | `connect_timeout` | `SHOP_DB_CONNECT_TIMEOUT` | `connect_timeout=` (seconds) |
//! | HTTP address | `listen` (top level) | `SHOP_LISTEN` | |
//! | retry attempts | `[retry] max_attempts` | `SHOP_RETRY_MAX_ATTEMPTS` | |
//! | first retry delay | `[retry] base_delay` | `SHOP_RETRY_BASE_DELAY` | |
//! | largest retry delay | `[retry] max_delay` | `SHOP_RETRY_MAX_DELAY` | |
//!
//! `sslmode` takes libpq's values. `verify-full` checks the server certificate against
//! `sslrootcert` (plus the public web roots, so a managed CockroachDB with a public
//! certificate needs none) *and* that it names the host; `verify-ca` skips the name check;
//! `require` encrypts without checking; `prefer` (the default) uses TLS when the server offers
//! it. Relative certificate paths in the config file are relative to the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::db::RetryPolicy;

/// A setting with a bad value, or a config file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One setting is wrong.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// The setting as the user wrote it: variable, file key or URL part.
        setting: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The setting this error is about, if it is about one.
    pub fn setting(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { setting, .. } => Some(setting),
            ConfigError::File { .. } => None,
        }
    }
}

/// The database connection failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {source}{hint}")]
pub struct ConnectError {
    target: String,
    hint: String,
    #[source]
    source: sqlx::Error,
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plain first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, unverified.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, certificate chain checked against the CA.
    VerifyCa,
    /// TLS, chain checked and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 6] = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("prefer")
    }

    fn to_sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!(
                    "expected one of {}, got {s:?}",
                    Self::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )
            })
    }
}

/// How to reach the database.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database name.
    pub database: String,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA certificate(s), PEM, to verify the server with.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate, PEM, for certificate authentication.
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    pub sslkey: Option<PathBuf>,
    /// Largest number of pooled connections.
    pub pool_size: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "shop".into(),
            password: None,
            database: "shop".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            pool_size: 10,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(f, "DatabaseSettings({self})")
    }
}

impl fmt::Display for DatabaseSettings {
    /// `postgres://user@host:port/database?sslmode=...`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}?sslmode={}",
            self.user,
            self.host,
            self.port,
            self.database,
            self.sslmode.as_str()
        )?;
        for (key, path) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
        ] {
            if let Some(path) = path {
                write!(f, "&{key}={}", path.display())?;
            }
        }
        Ok(())
    }
}

impl DatabaseSettings {
    /// Settings from one connection URL (`postgres://user:password@host:port/db?sslmode=...`)
    /// over the defaults.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        layers.url(url, "the database URL")?;
        Ok(layers.build()?.database)
    }

    /// sqlx's connect options for these settings.
    pub fn connect_options(&self) -> PgConnectOptions {
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .database(&self.database)
            .ssl_mode(self.sslmode.to_sqlx())
            .application_name("shop");
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        if let Some(path) = &self.sslrootcert {
            options = options.ssl_root_cert(path);
        }
        if let Some(path) = &self.sslcert {
            options = options.ssl_client_cert(path);
        }
        if let Some(path) = &self.sslkey {
            options = options.ssl_client_key(path);
        }
        options
    }

    /// Opens a pool of up to `pool_size` connections and checks that one connects.
    pub async fn connect(&self) -> Result<PgPool, ConnectError> {
        install_crypto_provider();
        PgPoolOptions::new()
            .max_connections(self.pool_size)
            .acquire_timeout(self.connect_timeout)
            .connect_with(self.connect_options())
            .await
            .map_err(|source| {
                // rustls' verdicts reach sqlx as I/O errors ("invalid peer certificate").
                let text = source.to_string().to_lowercase();
                let tls = matches!(source, sqlx::Error::Tls(_))
                    || ["certificate", "tls", "handshake"]
                        .iter()
                        .any(|w| text.contains(w));
                let hint = match &source {
                    _ if tls => format!(
                        " (TLS with sslmode {}: check sslrootcert{}, the server certificate's \
                         host names, and sslcert/sslkey)",
                        self.sslmode.as_str(),
                        self.sslrootcert
                            .as_ref()
                            .map(|p| format!(" = {}", p.display()))
                            .unwrap_or_default()
                    ),
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
                        " (check host and port, and that the server is up)".to_string()
                    }
                    _ => String::new(),
                };
                ConnectError {
                    target: self.to_string(),
                    hint,
                    source,
                }
            })
    }
}

/// Installs ring's rustls crypto provider as the process default, unless the program
/// installed one already.
///
/// sqlx builds part of its TLS setup (the `verify-ca` verifier), and an HTTP client may build
/// all of its, with the process-wide provider, which rustls cannot pick by itself when a
/// program links both of its providers (as tarn does); ring is the one sqlx itself uses.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// All of the shop's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The database.
    pub database: DatabaseSettings,
    /// The HTTP service's address.
    pub listen: SocketAddr,
    /// The transaction retry policy.
    pub retry: RetryPolicy,
}

impl Settings {
    /// Settings from the process environment: the config file named by `config` or
    /// `SHOP_CONFIG` (none if neither), the `SHOP_*` variables, then `url_override`.
    pub fn from_env(config: Option<&Path>, url_override: Option<&str>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = config
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SHOP_CONFIG").map(PathBuf::from));
        Self::load(file.as_deref(), env, url_override)
    }

    /// Settings from the config file `file`, the `SHOP_*` entries of `env`, and
    /// `url_override` (the `--database-url` flag), in the module doc's order.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        url_override: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            layers.file(path)?;
        }
        layers.env(env)?;
        if let Some(url) = url_override {
            layers.url(url, "--database-url")?;
        }
        layers.build()
    }
}

/// The settings one can set, by their canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    Host,
    Port,
    User,
    Password,
    Database,
    SslMode,
    SslRootCert,
    SslCert,
    SslKey,
    PoolSize,
    ConnectTimeout,
    Listen,
    RetryMaxAttempts,
    RetryBaseDelay,
    RetryMaxDelay,
}

/// (key, file key under `[database]`, variable)
const DATABASE_KEYS: [(Setting, &str, &str); 11] = [
    (Setting::Host, "host", "SHOP_DB_HOST"),
    (Setting::Port, "port", "SHOP_DB_PORT"),
    (Setting::User, "user", "SHOP_DB_USER"),
    (Setting::Password, "password", "SHOP_DB_PASSWORD"),
    (Setting::Database, "name", "SHOP_DB_NAME"),
    (Setting::SslMode, "sslmode", "SHOP_DB_SSLMODE"),
    (Setting::SslRootCert, "sslrootcert", "SHOP_DB_SSLROOTCERT"),
    (Setting::SslCert, "sslcert", "SHOP_DB_SSLCERT"),
    (Setting::SslKey, "sslkey", "SHOP_DB_SSLKEY"),
    (Setting::PoolSize, "pool_size", "SHOP_DB_POOL_SIZE"),
    (
        Setting::ConnectTimeout,
        "connect_timeout",
        "SHOP_DB_CONNECT_TIMEOUT",
    ),
];

/// (key, file key under `[retry]`, variable)
const RETRY_KEYS: [(Setting, &str, &str); 3] = [
    (
        Setting::RetryMaxAttempts,
        "max_attempts",
        "SHOP_RETRY_MAX_ATTEMPTS",
    ),
    (Setting::RetryBaseDelay, "base_delay", "SHOP_RETRY_BASE_DELAY"),
    (Setting::RetryMaxDelay, "max_delay", "SHOP_RETRY_MAX_DELAY"),
];

/// URL query parameters and the keys they set.
const URL_PARAMS: [(&str, Setting); 6] = [
    ("sslmode", Setting::SslMode),
    ("sslrootcert", Setting::SslRootCert),
    ("sslcert", Setting::SslCert),
    ("sslkey", Setting::SslKey),
    ("pool_size", Setting::PoolSize),
    ("connect_timeout", Setting::ConnectTimeout),
];

/// A value and where it came from.
#[derive(Debug, Clone)]
struct Value {
    text: String,
    origin: String,
    /// Directory that relative paths are relative to (the config file's).
    base: Option<PathBuf>,
}

/// The settings collected so far; a later `set` of a key replaces the earlier one.
#[derive(Debug, Default)]
struct Layers {
    values: BTreeMap<Setting, Value>,
}

impl Layers {
    fn set(&mut self, key: Setting, text: impl Into<String>, origin: impl Into<String>, base: Option<&Path>) {
        self.values.insert(
            key,
            Value {
                text: text.into(),
                origin: origin.into(),
                base: base.map(Path::to_path_buf),
            },
        );
    }

    /// A connection URL; `name` says where it came from.
    fn url(&mut self, url: &str, name: &str) -> Result<(), ConfigError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            ConfigError::invalid(
                name,
                format!("not a URL ({e}); expected postgres://user:password@host:port/database"),
            )
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::invalid(
                format!("scheme in {name}"),
                format!(
                    "expected postgres:// or postgresql://, got {}://",
                    parsed.scheme()
                ),
            ));
        }
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|e| {
                    ConfigError::invalid(format!("{what} in {name}"), format!("cannot be decoded: {e}"))
                })
        };
        if let Some(host) = parsed.host_str() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            self.set(Setting::Host, host, format!("host in {name}"), None);
        }
        if let Some(port) = parsed.port() {
            self.set(Setting::Port, port.to_string(), format!("port in {name}"), None);
        }
        if !parsed.username().is_empty() {
            let user = decode(parsed.username(), "user")?;
            self.set(Setting::User, user, format!("user in {name}"), None);
        }
        if let Some(password) = parsed.password() {
            let password = decode(password, "password")?;
            self.set(Setting::Password, password, format!("password in {name}"), None);
        }
        let path = parsed.path().trim_start_matches('/');
        if !path.is_empty() {
            let database = decode(path, "database")?;
            self.set(Setting::Database, database, format!("database in {name}"), None);
        }
        for (param, value) in parsed.query_pairs() {
            let Some((_, key)) = URL_PARAMS.iter().find(|(p, _)| *p == param) else {
                return Err(ConfigError::invalid(
                    format!("{param} in {name}"),
                    format!(
                        "unknown parameter; known: {}",
                        URL_PARAMS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            self.set(*key, value.into_owned(), format!("{param} in {name}"), None);
        }
        Ok(())
    }

    fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read it: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
        let base = path.parent().map(Path::to_path_buf);
        let fname = path.display().to_string();
        let origin = |key: &str| format!("{key} in {fname}");
        for (section, value) in &table {
            match (section.as_str(), value) {
                ("listen", value) => {
                    let text = scalar(value)
                        .ok_or_else(|| ConfigError::invalid(origin("listen"), "expected a string"))?;
                    self.set(Setting::Listen, text, origin("listen"), None);
                }
                ("database", toml::Value::Table(db)) => {
                    // The URL first, so discrete keys in the same section refine it.
                    if let Some(url) = db.get("url") {
                        let url = scalar(url).ok_or_else(|| {
                            ConfigError::invalid(origin("database.url"), "expected a string")
                        })?;
                        self.url(&url, &origin("database.url"))?;
                    }
                    for (key, value) in db.iter().filter(|(k, _)| k.as_str() != "url") {
                        let Some((k, _, _)) = DATABASE_KEYS.iter().find(|(_, f, _)| f == key) else {
                            return Err(ConfigError::invalid(
                                origin(&format!("database.{key}")),
                                format!(
                                    "unknown key; known: url, {}",
                                    DATABASE_KEYS
                                        .iter()
                                        .map(|(_, f, _)| *f)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        };
                        let setting = origin(&format!("database.{key}"));
                        let text = scalar(value)
                            .ok_or_else(|| ConfigError::invalid(&setting, "expected a string or a number"))?;
                        self.set(*k, text, setting, base.as_deref());
                    }
                }
                ("retry", toml::Value::Table(retry)) => {
                    for (key, value) in retry {
                        let Some((k, _, _)) = RETRY_KEYS.iter().find(|(_, f, _)| f == key) else {
                            return Err(ConfigError::invalid(
                                origin(&format!("retry.{key}")),
                                "unknown key; known: max_attempts, base_delay, max_delay",
                            ));
                        };
                        let setting = origin(&format!("retry.{key}"));
                        let text = scalar(value)
                            .ok_or_else(|| ConfigError::invalid(&setting, "expected a string or a number"))?;
                        self.set(*k, text, setting, None);
                    }
                }
                (other, _) => {
                    return Err(ConfigError::invalid(
                        origin(other),
                        "unknown key; known: listen, [database], [retry]",
                    ));
                }
            }
        }
        Ok(())
    }

    fn env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("SHOP_")).collect();
        if let Some(url) = env.get("SHOP_DATABASE_URL") {
            self.url(url, "SHOP_DATABASE_URL")?;
        }
        for (name, value) in &env {
            if let Some((key, _, _)) = DATABASE_KEYS
                .iter()
                .chain(&RETRY_KEYS)
                .find(|(_, _, v)| v == name)
            {
                self.set(*key, value.clone(), name.clone(), None);
            } else if name == "SHOP_LISTEN" {
                self.set(Setting::Listen, value.clone(), name.clone(), None);
            } else if name.starts_with("SHOP_DB_") || name.starts_with("SHOP_RETRY_") {
                let known: Vec<&str> = DATABASE_KEYS
                    .iter()
                    .chain(&RETRY_KEYS)
                    .map(|(_, _, v)| *v)
                    .collect();
                return Err(ConfigError::invalid(
                    name.clone(),
                    format!("unknown variable; known: SHOP_DATABASE_URL, {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn build(&self) -> Result<Settings, ConfigError> {
        let mut db = DatabaseSettings::default();
        let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("a socket address");
        let mut retry = RetryPolicy::default();
        for (key, value) in &self.values {
            let v = value.text.trim();
            let bad = |message: String| ConfigError::invalid(&value.origin, message);
            let non_empty = |what: &str| {
                if v.is_empty() {
                    Err(bad(format!("{what} must not be empty")))
                } else {
                    Ok(v.to_string())
                }
            };
            let file = || -> Result<PathBuf, ConfigError> {
                let path = PathBuf::from(non_empty("a file path")?);
                let path = match &value.base {
                    Some(base) if path.is_relative() => base.join(path),
                    _ => path,
                };
                std::fs::metadata(&path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
                    .and_then(|m| {
                        if m.is_file() {
                            Ok(path.clone())
                        } else {
                            Err(bad(format!("{} is not a file", path.display())))
                        }
                    })
            };
            let duration = || -> Result<Duration, ConfigError> {
                // A bare number is seconds, as libpq's connect_timeout.
                if let Ok(secs) = v.parse::<u64>() {
                    return Ok(Duration::from_secs(secs));
                }
                humantime::parse_duration(v).map_err(|e| {
                    bad(format!(
                        "expected a duration such as 10s or 250ms, got {v:?} ({e})"
                    ))
                })
            };
            match key {
                Setting::Host => db.host = non_empty("the host")?,
                Setting::Port => {
                    db.port = v
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad(format!("expected a port number 1-65535, got {v:?}")))?
                }
                Setting::User => db.user = non_empty("the user")?,
                Setting::Password => db.password = Some(value.text.clone()),
                Setting::Database => db.database = non_empty("the database name")?,
                Setting::SslMode => db.sslmode = v.parse().map_err(bad)?,
                Setting::SslRootCert => db.sslrootcert = Some(file()?),
                Setting::SslCert => db.sslcert = Some(file()?),
                Setting::SslKey => db.sslkey = Some(file()?),
                Setting::PoolSize => {
                    db.pool_size = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad(format!("expected a number of connections 1-1000, got {v:?}")))?
                }
                Setting::ConnectTimeout => db.connect_timeout = duration()?,
                Setting::Listen => {
                    listen = v
                        .parse()
                        .map_err(|_| bad(format!("expected an address such as 127.0.0.1:8080, got {v:?}")))?
                }
                Setting::RetryMaxAttempts => {
                    retry.max_attempts = v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        bad(format!("expected a number of attempts of at least 1, got {v:?}"))
                    })?
                }
                Setting::RetryBaseDelay => retry.base_delay = duration()?,
                Setting::RetryMaxDelay => retry.max_delay = duration()?,
            }
        }
        match (&db.sslcert, &db.sslkey) {
            (Some(_), None) | (None, Some(_)) => {
                let (given, missing) = if db.sslcert.is_some() {
                    (Setting::SslCert, "sslkey")
                } else {
                    (Setting::SslKey, "sslcert")
                };
                let origin = &self.values[&given].origin;
                return Err(ConfigError::invalid(
                    origin,
                    format!("a client certificate needs both sslcert and sslkey; {missing} is not set"),
                ));
            }
            _ => {}
        }
        if db.sslmode == SslMode::Disable && (db.sslrootcert.is_some() || db.sslcert.is_some()) {
            let origin = &self.values[&Setting::SslMode].origin;
            return Err(ConfigError::invalid(
                origin,
                "sslmode is disable but TLS certificates are configured; use verify-full (or remove the certificates)",
            ));
        }
        if retry.max_delay < retry.base_delay {
            let origin = self
                .values
                .get(&Setting::RetryMaxDelay)
                .or_else(|| self.values.get(&Setting::RetryBaseDelay))
                .map(|v| v.origin.clone())
                .unwrap_or_else(|| "retry.max_delay".into());
            return Err(ConfigError::invalid(
                origin,
                "the largest retry delay is below the first one",
            ));
        }
        Ok(Settings {
            database: db,
            listen,
            retry,
        })
    }
}

/// A TOML scalar as text.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error_setting(result: Result<Settings, ConfigError>) -> (String, String) {
        match result.expect_err("an error") {
            ConfigError::Invalid { setting, message } => (setting, message),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::load(None, env(&[]), None).unwrap();
        assert_eq!(s.database, DatabaseSettings::default());
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn url_then_discrete_variables() {
        let s = Settings::load(
            None,
            env(&[
                (
                    "SHOP_DATABASE_URL",
                    "postgresql://app:p%40ss%2Fw@db.internal:26257/shopdb?sslmode=require",
                ),
                ("SHOP_DB_POOL_SIZE", "25"),
                ("SHOP_DB_HOST", "other.internal"),
                ("SHOP_LOG", "debug"),
            ]),
            None,
        )
        .unwrap();
        let db = s.database;
        assert_eq!(db.host, "other.internal");
        assert_eq!(db.port, 26257);
        assert_eq!(db.user, "app");
        assert_eq!(db.password.as_deref(), Some("p@ss/w"));
        assert_eq!(db.database, "shopdb");
        assert_eq!(db.sslmode, SslMode::Require);
        assert_eq!(db.pool_size, 25);
        assert!(
            !format!("{db:?}").contains("p@ss"),
            "the password leaks into Debug"
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let (setting, message) = error_setting(Settings::load(None, env(&[("SHOP_DB_PORT", "54x")]), None));
        assert_eq!(setting, "SHOP_DB_PORT");
        assert!(message.contains("54x"), "{message}");

        let (setting, message) =
            error_setting(Settings::load(None, env(&[("SHOP_DB_SSLMODE", "verify")]), None));
        assert_eq!(setting, "SHOP_DB_SSLMODE");
        assert!(message.contains("verify-full"), "{message}");

        let (setting, _) = error_setting(Settings::load(
            None,
            env(&[("SHOP_DATABASE_URL", "postgres://h/db?sslmode=nope")]),
            None,
        ));
        assert_eq!(setting, "sslmode in SHOP_DATABASE_URL");

        let (setting, message) = error_setting(Settings::load(
            None,
            env(&[("SHOP_DATABASE_URL", "postgres://h/db?ssl_mode=require")]),
            None,
        ));
        assert_eq!(setting, "ssl_mode in SHOP_DATABASE_URL");
        assert!(message.contains("sslmode"), "{message}");

        let (setting, message) = error_setting(Settings::load(
            None,
            env(&[("SHOP_DB_SSL_MODE", "require")]),
            None,
        ));
        assert_eq!(setting, "SHOP_DB_SSL_MODE");
        assert!(message.contains("SHOP_DB_SSLMODE"), "{message}");

        let (setting, message) = error_setting(Settings::load(
            None,
            env(&[("SHOP_DB_SSLROOTCERT", "/nonexistent/ca.crt")]),
            None,
        ));
        assert_eq!(setting, "SHOP_DB_SSLROOTCERT");
        assert!(message.contains("/nonexistent/ca.crt"), "{message}");

        let (setting, _) = error_setting(Settings::load(None, env(&[("SHOP_DB_POOL_SIZE", "0")]), None));
        assert_eq!(setting, "SHOP_DB_POOL_SIZE");

        let (setting, _) = error_setting(Settings::load(None, env(&[]), Some("mysql://h/db")));
        assert_eq!(setting, "scheme in --database-url");
    }

    #[test]
    fn client_certificate_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, "x").unwrap();
        let (setting, message) = error_setting(Settings::load(
            None,
            env(&[("SHOP_DB_SSLCERT", cert.to_str().unwrap())]),
            None,
        ));
        assert_eq!(setting, "SHOP_DB_SSLCERT");
        assert!(message.contains("sslkey"), "{message}");
    }

    #[test]
    fn config_file_with_relative_certificates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/ca.crt"), "x").unwrap();
        let file = dir.path().join("shop.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[database]\nurl = \"postgres://shop@db:5433/shop\"\nsslmode = \"verify-full\"\n\
             sslrootcert = \"certs/ca.crt\"\npool_size = 4\n[retry]\nmax_attempts = 3\nbase_delay = \"5ms\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file), env(&[("SHOP_DB_PORT", "5434")]), None).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.database.host, "db");
        assert_eq!(s.database.port, 5434, "variables override the file");
        assert_eq!(s.database.sslmode, SslMode::VerifyFull);
        assert_eq!(s.database.sslrootcert, Some(dir.path().join("certs/ca.crt")));
        assert_eq!(s.database.pool_size, 4);
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(s.retry.base_delay, Duration::from_millis(5));

        std::fs::write(&file, "[database]\nsslmod = \"require\"\n").unwrap();
        let (setting, _) = error_setting(Settings::load(Some(&file), env(&[]), None));
        assert_eq!(setting, format!("database.sslmod in {}", file.display()));
    }
}
