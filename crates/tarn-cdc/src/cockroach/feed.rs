//! Receiving a changefeed: a core changefeed read over a SQL connection, or a webhook
//! changefeed posting to tarn's HTTPS endpoint. Both hand parsed [`Message`]s to the
//! pipeline through a bounded channel, so a slow lake slows the feed down (the SQL stream
//! is not read; webhook requests wait for their reply, and CockroachDB waits for them).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tarn_core::{Error, ErrorKind, Result};

use super::message::{Message, parse_core_row, parse_webhook};
use crate::postgres::connect::{SourceAddress, query_error};

/// What the feed tasks send: a delivery of messages, or why the feed ended.
pub type Delivery = Result<Vec<Message>>;

/// Reads a core changefeed (`statement`) on a connection of its own until it ends or `stop`.
/// A scan-only feed (`initial_scan = 'only'` at `scanned_at`) ends by closing `tx`; any other
/// feed that ends sends an error.
pub async fn run_core(
    address: SourceAddress,
    statement: String,
    scanned_at: Option<crate::position::Hlc>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let result = async {
        let client = address.connect().await?;
        let stream = client
            .simple_query_raw(&statement)
            .await
            .map_err(|e| query_error("cannot start the changefeed", e))?;
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = stop.cancelled() => return Ok(()),
            };
            let Some(message) = next else {
                if scanned_at.is_some() {
                    return Ok(());
                }
                return Err(Error::new(
                    ErrorKind::Source,
                    "the changefeed ended (connection closed by the source)",
                ));
            };
            let message = message.map_err(|e| query_error("the changefeed failed", e))?;
            let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let table = row.get(0);
            let key = row.get(1).map(bytea);
            let value = row.get(2).map(bytea).unwrap_or_default();
            let parsed = parse_core_row(table, key.as_deref(), &value, scanned_at).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("malformed changefeed message: {e}"),
                )
            })?;
            if tx.send(Ok(vec![parsed])).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

/// A `BYTES` column in text form (`\x` hex) → its bytes; other text as it is.
fn bytea(text: &str) -> Vec<u8> {
    let Some(hex) = text.strip_prefix("\\x") else {
        return text.as_bytes().to_vec();
    };
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let h = hex.as_bytes();
    let mut out = Vec::with_capacity(h.len() / 2);
    for pair in h.chunks(2) {
        match (
            pair.first().and_then(|&c| digit(c)),
            pair.get(1).and_then(|&c| digit(c)),
        ) {
            (Some(a), Some(b)) => out.push(a << 4 | b),
            _ => return text.as_bytes().to_vec(),
        }
    }
    out
}

/// The HTTPS endpoint a webhook changefeed posts to.
pub struct WebhookServer {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// PEM of the certificate CockroachDB must trust (self-signed or `webhook_ca`), if any.
    pub ca_pem: Option<String>,
}

#[derive(Clone)]
struct Hook {
    path: Arc<str>,
    authorization: Arc<str>,
    tx: mpsc::Sender<Delivery>,
}

/// TLS material for the endpoint.
pub struct WebhookTls {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// What to tell CockroachDB to trust, PEM.
    pub ca_pem: Option<String>,
}

impl WebhookTls {
    /// Reads `cert`/`key` files, or makes a self-signed certificate for `host`.
    pub fn load_or_generate(
        cert: Option<&str>,
        key: Option<&str>,
        ca: Option<&str>,
        host: &str,
    ) -> Result<Self> {
        let read = |what: &str, path: &str| {
            std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("key `cdc.changefeed.{what}`: cannot read {path}: {e}"),
                )
            })
        };
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Self {
                cert_pem: read("webhook_cert", cert)?,
                key_pem: read("webhook_key", key)?,
                ca_pem: ca.map(|c| read("webhook_ca", c)).transpose()?,
            }),
            _ => {
                let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("cannot make a certificate for {host}: {e}"),
                    )
                })?;
                let cert_pem = generated.cert.pem();
                Ok(Self {
                    ca_pem: Some(cert_pem.clone()),
                    cert_pem,
                    key_pem: generated.signing_key.serialize_pem(),
                })
            }
        }
    }

    /// The endpoint's certificate kept in `dir` (`<stem>.crt`, `<stem>.key`): made once for
    /// `host` and reused at every start, so an external connection that names its CA stays
    /// valid. Delete the files to make a new one (then create the connection again).
    pub fn persisted(dir: &std::path::Path, stem: &str, host: &str) -> Result<Self> {
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        let storage = |what: &str, path: &std::path::Path, e: std::io::Error| {
            Error::new(
                ErrorKind::Storage,
                format!("cannot {what} the webhook certificate {}: {e}", path.display()),
            )
        };
        if cert_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| storage("read", &cert_path, e))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(|e| storage("read", &key_path, e))?;
            return Ok(Self {
                ca_pem: Some(cert_pem.clone()),
                cert_pem,
                key_pem,
            });
        }
        let made = Self::load_or_generate(None, None, None, host)?;
        std::fs::create_dir_all(dir).map_err(|e| storage("write", dir, e))?;
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut key = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(|e| storage("write", &key_path, e))?;
            key.write_all(made.key_pem.as_bytes())
                .map_err(|e| storage("write", &key_path, e))?;
        }
        std::fs::write(&cert_path, &made.cert_pem).map_err(|e| storage("write", &cert_path, e))?;
        tracing::info!(certificate = %cert_path.display(), %host, "made the webhook endpoint's certificate");
        Ok(made)
    }

    fn server_config(&self) -> Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: String| {
            Error::new(ErrorKind::Config, format!("key `cdc.changefeed.{what}`: {e}"))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad("webhook_cert", format!("not a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(bad("webhook_cert", "holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("webhook_key", format!("not a PEM private key: {e}")))?;
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("webhook_cert", format!("certificate and key do not fit: {e}")))
    }
}

/// Starts the endpoint on `listen`: deliveries to `path` with `authorization` go to `tx`.
pub async fn start_webhook(
    listen: &str,
    tls: &WebhookTls,
    path: String,
    authorization: String,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) -> Result<WebhookServer> {
    let config = tls.server_config()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("key `cdc.changefeed.webhook_listen`: cannot listen on {listen}: {e}"),
        )
    })?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("listener address: {e}")))?;
    let hook = Hook {
        path: path.into(),
        authorization: authorization.into(),
        tx,
    };
    let app = axum::Router::new().fallback(receive).with_state(hook);
    tokio::spawn(async move {
        loop {
            let (socket, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook endpoint: accept failed");
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(socket).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(error = %e, "webhook endpoint: TLS handshake failed");
                        return;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "webhook endpoint: connection ended");
                    },
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(WebhookServer {
        local_addr,
        ca_pem: tls.ca_pem.clone(),
    })
}

async fn receive(
    State(hook): State<Hook>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if uri.path() != &*hook.path {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no changefeed is delivered to {}; tarn expects {}\n",
                uri.path(),
                hook.path
            ),
        )
            .into_response();
    }
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if given != &*hook.authorization {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization header (the changefeed's webhook_auth_header)\n",
        )
            .into_response();
    }
    match parse_webhook(&body) {
        Ok(messages) => {
            metrics::counter!("tarn_cdc_webhook_requests_total", "outcome" => "accepted").increment(1);
            if hook.tx.send(Ok(messages)).await.is_err() {
                return (StatusCode::SERVICE_UNAVAILABLE, "tarn is stopping\n").into_response();
            }
            (StatusCode::OK, "").into_response()
        }
        Err(e) => {
            metrics::counter!("tarn_cdc_webhook_requests_total", "outcome" => "malformed").increment(1);
            tracing::warn!(error = %e, "rejected a malformed changefeed delivery");
            (
                StatusCode::BAD_REQUEST,
                format!("malformed changefeed delivery: {e}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytea_text() {
        assert_eq!(super::bytea("\\x5b315d"), b"[1]");
        assert_eq!(super::bytea("[1]"), b"[1]");
    }
}
