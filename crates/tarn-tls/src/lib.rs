//! TLS on tarn's own listeners: the server's certificate chain and key (and, optionally, the
//! CA that signs client certificates) read from PEM files into rustls configurations for the
//! Postgres wire endpoint and the HTTP endpoint, and read again without a restart.
//!
//! **Start-up.** [`ServerTls::load`] reads every file; a missing, unreadable or invalid one (no
//! PEM certificate, no private key, a key that does not fit the certificate) is an error that
//! names the config key and the file, and `tarn serve` does not start.
//!
//! **Reload.** As PostgreSQL (`pg_ctl reload`) and nginx do, on SIGHUP; and, because
//! certificate managers (cert-manager, a Vault agent, certbot's hooks) replace files without
//! signalling anyone, also when the files' contents change, checked every
//! `server.tls.reload_interval` ([`ServerTls::watch`]). New connections get the new
//! certificate, open ones keep the one they negotiated. A new set that does not load (a
//! half-written file, a key that does not fit yet) is logged, naming the file, and counted in
//! `tarn_tls_reloads_total{outcome="failed"}`; the old set stays in use, so a bad rotation
//! never takes the listeners down, and the next change or SIGHUP tries again.
//!
//! **Client certificates.** With `server.tls.client_ca`, the Postgres wire endpoint asks for a
//! client certificate and verifies one that is offered against that CA (a client that offers
//! none goes on to the other login methods); [`common_name`] is the name it logs in with. The
//! HTTP endpoint does not ask (browsers would prompt for one).
//!
//! rustls with the ring provider, as the rest of tarn's TLS; TLS 1.2 and 1.3.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tarn_core::config::TlsConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The ALPN protocol name of PostgreSQL 17's direct TLS connections (`sslnegotiation=direct`).
const POSTGRESQL_ALPN: &[u8] = b"postgresql";

/// The files TLS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM (`server.tls.cert`).
    pub cert: PathBuf,
    /// Its private key, PEM (`server.tls.key`).
    pub key: PathBuf,
    /// CA certificates for client certificates, PEM (`server.tls.client_ca`).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of `server.tls` (validated config: both `cert` and `key` set).
    pub fn from_config(tls: &TlsConfig) -> Self {
        Self {
            cert: tls.cert.clone().unwrap_or_default(),
            key: tls.key.clone().unwrap_or_default(),
            client_ca: tls.client_ca.clone(),
        }
    }
}

/// A TLS file that cannot be used: the key that names it, the file, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {}: {problem}", file.display())]
pub struct TlsError {
    /// The config key naming the file (`server.tls.cert`, ...).
    pub key: &'static str,
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// What one load produced: the files' bytes (to tell a change) and a rustls configuration per
/// listener.
struct Loaded {
    contents: Vec<Vec<u8>>,
    pgwire: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
}

/// The server side of TLS, shared by both listeners and replaced whole on a reload.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish()
    }
}

impl ServerTls {
    /// Reads `files`; an error names the key and the file that cannot be used.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = build(&files, read_all(&files)?)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// The files this reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether client certificates are asked for (`server.tls.client_ca`).
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("TLS state poisoned").clone()
    }

    /// An acceptor for one Postgres wire connection, with the current certificate.
    pub fn pgwire_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().pgwire.clone())
    }

    /// An acceptor for one HTTPS connection, with the current certificate.
    pub fn https_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().https.clone())
    }

    /// Reads the files again: `Ok(true)` when they changed and the new set is in use,
    /// `Ok(false)` when they did not change, an error (the old set stays) when the new set
    /// cannot be used.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        if self.current().contents == contents {
            return Ok(false);
        }
        let loaded = build(&self.files, contents)?;
        *self.current.write().expect("TLS state poisoned") = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads on SIGHUP and, with `interval`, whenever the files' contents change, until
    /// `shutdown`; each outcome is logged and counted (`tarn_tls_reloads_total`).
    ///
    /// The SIGHUP handler is installed before this returns, so a SIGHUP sent once it has
    /// returned reloads (and never ends the process).
    pub fn watch(
        self: Arc<Self>,
        interval: Option<Duration>,
        shutdown: CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            let mut ticks = interval.filter(|d| !d.is_zero()).map(|every| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let cause = tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(()) = hangup.recv() => "SIGHUP",
                    _ = async {
                        match ticks.as_mut() {
                            Some(t) => t.tick().await,
                            None => std::future::pending().await,
                        }
                    } => "a periodic check",
                };
                let tls = self.clone();
                let outcome = tokio::task::spawn_blocking(move || tls.reload()).await;
                match outcome {
                    Ok(Ok(true)) => {
                        metrics::counter!("tarn_tls_reloads_total", "outcome" => "reloaded").increment(1);
                        tracing::info!(cause, cert = %self.files.cert.display(), "TLS certificates reloaded");
                    }
                    Ok(Ok(false)) => {
                        tracing::debug!(cause, "TLS files unchanged");
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("tarn_tls_reloads_total", "outcome" => "failed").increment(1);
                        tracing::error!(cause, error = %e, "TLS certificates not reloaded: the previous ones stay in use");
                    }
                    Err(e) => {
                        tracing::error!(cause, error = %e, "TLS reload task failed");
                    }
                }
            }
        }))
    }
}

/// The common name (CN) of a certificate's subject, when it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    x509_certificate::X509Certificate::from_der(cert.as_ref())
        .ok()?
        .subject_common_name()
}

fn bad(key: &'static str, file: &Path, problem: impl Into<String>) -> TlsError {
    TlsError {
        key,
        file: file.to_path_buf(),
        problem: problem.into(),
    }
}

/// The files' bytes, in the order cert, key, client CA.
fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| bad(key, path, format!("cannot read it: {e}")))
    };
    let mut contents = vec![
        read("server.tls.cert", &files.cert)?,
        read("server.tls.key", &files.key)?,
    ];
    if let Some(ca) = &files.client_ca {
        contents.push(read("server.tls.client_ca", ca)?);
    }
    Ok(contents)
}

fn certificates(
    key: &'static str,
    file: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, file, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            key,
            file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    for cert in &certs {
        if x509_certificate::X509Certificate::from_der(cert.as_ref()).is_err() {
            return Err(bad(key, file, "holds a certificate that is not valid X.509"));
        }
    }
    Ok(certs)
}

fn build(files: &TlsFiles, contents: Vec<Vec<u8>>) -> Result<Loaded, TlsError> {
    let chain = certificates("server.tls.cert", &files.cert, &contents[0])?;
    let key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| {
        bad(
            "server.tls.key",
            &files.key,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("server.tls.key", &files.key, format!("cannot use the key: {e}")))?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), signing_key));
    match certified.keys_match() {
        Ok(()) => {}
        // A key type whose public key rustls cannot derive is checked at the first handshake.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(bad(
                "server.tls.key",
                &files.key,
                format!("does not fit the certificate in {}: {e}", files.cert.display()),
            ));
        }
    }
    if let Ok(leaf) = x509_certificate::X509Certificate::from_der(chain[0].as_ref()) {
        let not_after = leaf.validity_not_after();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("tarn_tls_certificate_expiry_seconds").set(not_after.timestamp() as f64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if not_after.timestamp() < now {
            tracing::warn!(cert = %files.cert.display(), %not_after, "the server certificate has expired: clients will refuse it");
        }
    }
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                bad(
                    "server.tls.cert",
                    &files.cert,
                    format!("no TLS version to offer: {e}"),
                )
            })
    };
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    let mut pgwire = match (&files.client_ca, contents.get(2)) {
        (Some(ca_file), Some(ca_pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("server.tls.client_ca", ca_file, ca_pem)? {
                roots.add(cert).map_err(|e| {
                    bad(
                        "server.tls.client_ca",
                        ca_file,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| {
                bad(
                    "server.tls.client_ca",
                    ca_file,
                    format!("cannot verify clients with it: {e}"),
                )
            })?;
            builder()?.with_client_cert_verifier(verifier)
        }
        _ => builder()?.with_no_client_auth(),
    }
    .with_cert_resolver(resolver.clone());
    pgwire.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
    let mut https = builder()?.with_no_client_auth().with_cert_resolver(resolver);
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        contents,
        pgwire: Arc::new(pgwire),
        https: Arc::new(https),
    })
}

#[cfg(test)]
mod tests;
