//! Connections to the source PostgreSQL: a control connection (`tokio-postgres`) for catalog
//! queries, publication and slot management and snapshot copies, and replication sessions
//! (`pgwire-replication`) for slot creation with an exported snapshot and for streaming.
//!
//! Every session sets the same output settings, so text values look the same in a snapshot
//! copy and in the stream and parse the way [`super::types`] expects: ISO dates, ISO 8601
//! intervals, UTC time zone, shortest-exact floats, hex bytea.
//!
//! TLS follows libpq's URL parameters: `sslmode=disable|allow|prefer` connects in the clear,
//! `require` encrypts (and verifies the server against `sslrootcert` when one is given),
//! `verify-ca` and `verify-full` verify the server's certificate chain against `sslrootcert`
//! and its name against the host (tarn checks the name for `verify-ca` too); `sslcert` and
//! `sslkey` authenticate tarn with a client certificate. Control connections use rustls
//! through `tokio-postgres-rustls`, replication sessions `pgwire-replication`'s own rustls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig};
use tarn_core::{Error, ErrorKind, Result};
use tokio_postgres::NoTls;

/// Session settings of every source connection (the startup `options` parameter).
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c IntervalStyle=iso_8601 -c TimeZone=UTC \
     -c extra_float_digits=3 -c bytea_output=hex";

/// How long connecting to the source may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How tarn secures its connections to the source (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceTls {
    /// `None`: no TLS; `Some(false)`: encrypt without verifying; `Some(true)`: verify.
    pub verify: Option<bool>,
    /// CA certificates (PEM) to verify the server against.
    pub root_cert: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub client_key: Option<PathBuf>,
}

impl SourceTls {
    /// Takes libpq's TLS parameters out of `url` (tokio-postgres knows only some of them).
    fn take_from(url: &mut url::Url) -> std::result::Result<Self, String> {
        let mut tls = Self::default();
        let mut mode = None;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| {
                match k.as_ref() {
                    "sslmode" => mode = Some(v.to_string()),
                    "sslrootcert" => tls.root_cert = Some(PathBuf::from(v.as_ref())),
                    "sslcert" => tls.client_cert = Some(PathBuf::from(v.as_ref())),
                    "sslkey" => tls.client_key = Some(PathBuf::from(v.as_ref())),
                    _ => return Some((k.to_string(), v.to_string())),
                }
                None
            })
            .collect();
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
        tls.verify = match mode.as_deref().unwrap_or("prefer") {
            "disable" | "allow" | "prefer" => None,
            "require" => Some(tls.root_cert.is_some()),
            "verify-ca" | "verify-full" => {
                if tls.root_cert.is_none() {
                    return Err(format!(
                        "sslmode={} needs sslrootcert=<file of CA certificates>",
                        mode.unwrap_or_default()
                    ));
                }
                Some(true)
            }
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        Ok(tls)
    }

    /// The rustls client configuration, `None` without TLS.
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let Some(verify) = self.verify else {
            return Ok(None);
        };
        let bad = |what: &str, path: &PathBuf, e: String| {
            Error::new(
                ErrorKind::Config,
                format!("cdc.source: {what} {}: {e}", path.display()),
            )
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("TLS setup: {e}")))?;
        let builder = if verify {
            let path = self
                .root_cert
                .as_ref()
                .expect("verification has a root certificate");
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| bad("cannot read sslrootcert", path, e.to_string()))?
            {
                let cert = cert.map_err(|e| bad("bad certificate in sslrootcert", path, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("unusable certificate in sslrootcert", path, e.to_string()))?;
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        };
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("cannot read sslcert", cert, e.to_string()))?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad("bad certificate in sslcert", cert, e.to_string()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad("cannot read sslkey", key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("sslcert and sslkey do not fit", cert, e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }

    /// The same settings for a replication session to `host`. The replication client checks
    /// host names only for DNS names; for an IP address it verifies the chain, and the name
    /// is checked by the control connection (rustls matches IP addresses) before any session.
    fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        let mut tls = match self.verify {
            None => pgwire_replication::TlsConfig::disabled(),
            Some(false) => pgwire_replication::TlsConfig::require(),
            Some(true) if host.parse::<std::net::IpAddr>().is_ok() => {
                pgwire_replication::TlsConfig::verify_ca(self.root_cert.clone())
            }
            Some(true) => pgwire_replication::TlsConfig::verify_full(self.root_cert.clone()),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        tls
    }
}

/// `sslmode=require` without a root certificate: encrypt, accept any server certificate (as
/// libpq does). Signatures are still checked, so the session is bound to the presented key.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

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
    /// TLS settings.
    pub tls: SourceTls,
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
        let bad = |what: &str| {
            Error::new(ErrorKind::Config, format!("cdc.source: {what}")).with_context("source", &display)
        };
        let (url, tls) = match url::Url::parse(url) {
            Ok(mut u) if matches!(u.scheme(), "postgres" | "postgresql") => {
                let tls = SourceTls::take_from(&mut u).map_err(|e| bad(&e))?;
                (u.to_string(), tls)
            }
            _ => (url.to_string(), SourceTls::default()),
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cdc.source is not a valid PostgreSQL URL: {e}"),
            )
            .with_context("source", &display)
        })?;
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
        // TLS is decided by `tls` alone.
        config.ssl_mode(if tls.verify.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        // Read the key files now, so a bad path fails at start-up.
        tls.client_config()?;
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
            tls,
        })
    }

    /// Opens a control connection; its driver runs on a spawned task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let failed = |e| source_error("cannot connect to the source database", &self.display, e);
        let source = self.display.clone();
        let closed =
            move |e: tokio_postgres::Error| tracing::debug!(%source, error = %e, "source connection closed");
        match self.tls.client_config()? {
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                Ok(client)
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                let (client, connection) = self.config.connect(tls).await.map_err(failed)?;
                tokio::spawn(async move { connection.await.map_err(closed) });
                Ok(client)
            }
        }
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
        .with_tls(self.tls.replication(&self.host))
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
