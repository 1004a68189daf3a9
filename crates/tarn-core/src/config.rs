//! Layered configuration: defaults → `tarn.toml` → `TARN_*` environment variables → flags.
//!
//! Every layer is a TOML table; later layers override earlier ones key by key. The merged
//! table is then deserialized into [`Config`] with unknown keys refused, and [`Config::validate`]
//! checks values (URLs, addresses, sizes). Every error names the key (`catalog.url`) and what
//! was expected, and for file errors the file.
//!
//! Environment variables map to keys by prefix `TARN_` and `__` between sections:
//! `TARN_CATALOG__URL` is `catalog.url`, `TARN_STORAGE__S3__ENDPOINT` is
//! `storage.s3.endpoint`. A value is read as a TOML value when it parses as one (numbers,
//! booleans) and as a string otherwise. S3 credentials may also come from the standard
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` and
//! `AWS_ENDPOINT_URL` variables, which rank below `TARN_*` ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// The name of the config file looked for in the data directory.
pub const CONFIG_FILE_NAME: &str = "tarn.toml";

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
    /// Logging.
    pub log: LogConfig,
}

/// The Iceberg catalog: a SQL database in the layout of Iceberg's JDBC catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `sqlite://FILE` or `postgres://user:pass@host:port/db`. Default: `DATA_DIR/catalog.db`.
    pub url: Option<String>,
    /// The catalog name (the `catalog_name` column), shared by every engine that opens it.
    pub name: String,
    /// Connection pool size.
    pub max_connections: u32,
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
    /// Address of the HTTP endpoint (`/healthz`, `/metrics`).
    pub http_listen: String,
    /// Most concurrent SQL connections; 0 for no limit.
    pub max_connections: usize,
}

/// Authentication of the SQL endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept connections from loopback addresses without a password. Off by default.
    pub trust_loopback: bool,
    /// Users allowed to connect with SCRAM-SHA-256 passwords.
    pub users: Vec<UserConfig>,
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

impl Config {
    /// The defaults, for data directory `data_dir`.
    pub fn defaults(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            catalog: CatalogConfig {
                url: None,
                name: "tarn".into(),
                max_connections: 10,
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
            },
            auth: AuthConfig::default(),
            log: LogConfig {
                format: "text".into(),
                level: "info".into(),
            },
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
            let Some(rest) = name.strip_prefix("TARN_") else {
                continue;
            };
            // Variables the CLI reads itself, not config keys.
            if matches!(rest, "DATA_DIR" | "CONFIG") {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            set_key(&mut merged, &key, parse_scalar(value), name)?;
        }
        for (key, value) in overrides {
            set_key(&mut merged, key, parse_scalar(value), &format!("--set {key}"))?;
        }

        let origin = file
            .as_ref()
            .map(|p| format!("config file {}", p.display()))
            .unwrap_or_else(|| "configuration".to_string());
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let path = e.path().to_string();
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
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(
                "log.format",
                format!("expected text or json, got {:?}", self.log.format),
            );
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            if user.name.is_empty() {
                return bad(&format!("auth.users[{i}].name"), "must not be empty".into());
            }
        }
        Ok(())
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
        for secret in [
            &mut shown.storage.s3.secret_access_key,
            &mut shown.storage.s3.session_token,
        ] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        for user in &mut shown.auth.users {
            user.password = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
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

    #[test]
    fn layers_override_in_order() {
        let c = load(
            Some("[write]\ntarget_file_size = 2097152\n[server]\npg_listen = \"127.0.0.1:6000\"\n"),
            &[("TARN_SERVER__PG_LISTEN", "127.0.0.1:6001"), ("HOME", "/x")],
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
    fn bad_toml_names_line() {
        let err = load(Some("[write]\ntarget_file_size = = 3\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(
            Some(
                "[catalog]\nurl = \"postgres://u:hunter2@127.0.0.1:5432/c\"\n\
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
}
