//! Connections to the source PostgreSQL: a control connection (`tokio-postgres`) for catalog
//! queries, publication and slot management and snapshot copies, and replication sessions
//! (`pgwire-replication`) for slot creation with an exported snapshot and for streaming.
//!
//! Every session sets the same output settings, so text values look the same in a snapshot
//! copy and in the stream and parse the way [`super::types`] expects: ISO dates, ISO 8601
//! intervals, UTC time zone, shortest-exact floats, hex bytea.

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig};
use tarn_core::{Error, ErrorKind, Result};
use tokio_postgres::NoTls;

/// Session settings of every source connection (the startup `options` parameter).
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c IntervalStyle=iso_8601 -c TimeZone=UTC \
     -c extra_float_digits=3 -c bytea_output=hex";

/// How long connecting to the source may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and as whom to connect to the source.
#[derive(Clone)]
pub struct SourceAddress {
    /// For control connections.
    pub config: tokio_postgres::Config,
    /// Host name or IP (TCP) or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (empty for trust authentication).
    pub password: String,
    /// Database.
    pub database: String,
    /// The URL with its password redacted, for messages.
    pub display: String,
}

impl std::fmt::Debug for SourceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceAddress({})", self.display)
    }
}

fn source_error(
    what: impl std::fmt::Display,
    display: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(ErrorKind::Source, what.to_string())
        .with_context("source", display)
        .with_source(e)
}

impl SourceAddress {
    /// Parses a `postgres://` URL.
    pub fn parse(url: &str) -> Result<Self> {
        let display = tarn_core::config::redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cdc.source is not a valid PostgreSQL URL: {e}"),
            )
            .with_context("source", &display)
        })?;
        let bad = |what: &str| {
            Error::new(ErrorKind::Config, format!("cdc.source: {what}")).with_context("source", &display)
        };
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => return Err(bad("no host")),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().ok_or_else(|| bad("no user"))?.to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        if matches!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require) {
            return Err(bad(
                "sslmode=require is not supported for the CDC source yet; use sslmode=disable or prefer",
            ));
        }
        config
            .options(SESSION_OPTIONS)
            .application_name("tarn-cdc")
            .connect_timeout(CONNECT_TIMEOUT)
            .dbname(&database);
        Ok(Self {
            config,
            host,
            port,
            user,
            password,
            database,
            display,
        })
    }

    /// Opens a control connection; its driver runs on a spawned task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| source_error("cannot connect to the source database", &self.display, e))?;
        let source = self.display.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%source, error = %e, "source connection closed");
            }
        });
        Ok(client)
    }

    /// A replication session configuration for `slot` and `publication`, starting at `start`.
    pub fn replication_config(&self, slot: &str, publication: &str, start: u64) -> ReplicationConfig {
        ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(pgwire_replication::TlsConfig::disabled())
        .with_start_lsn(Lsn::from_u64(start))
        .with_status_interval(Duration::from_millis(500))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_buffer_size(4096)
        .with_options(SESSION_OPTIONS)
        .with_application_name("tarn-cdc")
    }

    /// Opens a replication session that waits for commands before streaming.
    pub async fn replication_session(&self, slot: &str, publication: &str) -> Result<ReplicationClient> {
        let config = self.replication_config(slot, publication, 0);
        ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| replication_error("cannot open a replication session", &self.display, e))
    }
}

/// Maps a replication-client error, naming what was being done.
pub fn replication_error(what: &str, display: &str, e: pgwire_replication::PgWireError) -> Error {
    let kind = match &e {
        pgwire_replication::PgWireError::Auth(_) => ErrorKind::Config,
        _ => ErrorKind::Source,
    };
    Error::new(kind, format!("{what}: {e}")).with_context("source", display)
}

/// Maps a control-connection error, naming what was being done (the server's message and
/// SQLSTATE included).
pub fn query_error(what: impl std::fmt::Display, e: tokio_postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Error::new(ErrorKind::Source, format!("{what}: {detail}"))
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let a = SourceAddress::parse("postgres://app:secret@127.0.0.1:6543/shop").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.user.as_str()),
            ("127.0.0.1", 6543, "app")
        );
        assert_eq!(a.database, "shop");
        assert!(!a.display.contains("secret"));
        let err = SourceAddress::parse("postgres://127.0.0.1/shop").unwrap_err();
        assert!(err.to_string().contains("no user"), "{err}");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
