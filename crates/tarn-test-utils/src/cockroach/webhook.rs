//! The webhook sink: what CockroachDB's batching webhook sink (`sink_webhook_v2.go`, the
//! default since v23.2; research §11) sends, over a small HTTP/1.1 client on tokio-rustls.
//!
//! - `POST` to the URI without `webhook-`, with `ca_cert`, `client_cert`, `client_key` and
//!   `insecure_tls_skip_verify` taken out of the query; `Content-Type: application/json`;
//!   `Authorization:` the `webhook_auth_header` verbatim.
//! - Row batches as `{"payload":[…],"length":N}`; resolved messages bare.
//! - Batching per `webhook_sink_config` `Flush` (all zero: one message per request;
//!   `shouldFlushBatch`), retries per `Retry` (default Max 3, Backoff 500 ms doubling up to
//!   30 s; `defaultRetryConfig`, `getSinkConfigFromJson` in `sink.go`), any status outside
//!   200–299 an error `"<status>: <body>"`, `webhook_client_timeout` per request.
//! - Only `webhook-https` (`this sink requires https`); the server is verified against the
//!   base64 PEM in `ca_cert`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::json::{self, Json};
use super::options::parse_go_duration;
use super::statements::SqlError;

/// Where and how to post.
#[derive(Clone)]
pub struct WebhookTarget {
    /// `https://host:port/path?query` (sink parameters taken out), for messages.
    pub url: String,
    host: String,
    port: u16,
    path: String,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget").field("url", &self.url).finish()
    }
}

/// Parses and checks a `webhook-https://` sink URI as creating the canary sink would.
pub fn parse_target(uri: &str) -> Result<WebhookTarget, SqlError> {
    let rest = uri
        .strip_prefix("webhook-")
        .ok_or_else(|| SqlError::not_modelled(&format!("the sink {uri}")))?;
    let url = url::Url::parse(rest).map_err(|e| SqlError::uncategorized(format!("parse \"{uri}\": {e}")))?;
    if url.scheme() != "https" {
        return Err(SqlError::uncategorized("this sink requires https"));
    }
    let mut ca = None;
    let mut kept = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "ca_cert" => ca = Some(v.to_string()),
            "insecure_tls_skip_verify" | "client_cert" | "client_key" => {
                return Err(SqlError::not_modelled(&format!("the webhook parameter {k}")));
            }
            _ => kept.push((k.to_string(), v.to_string())),
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca.trim())
            .map_err(|e| SqlError::uncategorized(format!("failed to decode base64 ca_cert: {e}")))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| SqlError::uncategorized(format!("invalid ca_cert: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SqlError::uncategorized(format!("invalid ca_cert: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlError::uncategorized(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let mut clean = url.clone();
    clean.set_query(None);
    if !kept.is_empty() {
        clean.query_pairs_mut().extend_pairs(kept);
    }
    let path = match clean.query() {
        Some(q) => format!("{}?{q}", clean.path()),
        None => clean.path().to_string(),
    };
    Ok(WebhookTarget {
        url: clean.to_string(),
        host,
        port,
        path,
        tls: Arc::new(tls),
    })
}

/// `webhook_sink_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkConfig {
    /// `Flush.Messages`.
    pub flush_messages: usize,
    /// `Flush.Bytes`.
    pub flush_bytes: usize,
    /// `Flush.Frequency`.
    pub flush_frequency: Duration,
    /// `Retry.Max` (`None`: `inf`).
    pub retry_max: Option<u32>,
    /// `Retry.Backoff`.
    pub retry_backoff: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            flush_messages: 0,
            flush_bytes: 0,
            flush_frequency: Duration::ZERO,
            retry_max: Some(3),
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// Parses `webhook_sink_config` as `getSinkConfigFromJson` does.
pub fn parse_sink_config(text: Option<&str>) -> Result<SinkConfig, SqlError> {
    let mut cfg = SinkConfig::default();
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(cfg);
    };
    let bad = |e: String| SqlError::uncategorized(format!("error unmarshalling json: {e}"));
    let v = json::parse(text).map_err(bad)?;
    let int = |j: &Json| -> Result<i64, SqlError> {
        match j {
            Json::Number(n) => n.parse::<i64>().map_err(|e| bad(e.to_string())),
            other => Err(bad(format!("cannot unmarshal {other:?} into an int"))),
        }
    };
    let duration = |j: &Json| -> Result<i128, SqlError> {
        match j {
            Json::String(s) => parse_go_duration(s).map_err(bad),
            other => Err(bad(format!("cannot unmarshal {other:?} into a duration"))),
        }
    };
    let mut negative = false;
    if let Some(flush) = v.get("Flush") {
        if let Some(m) = flush.get("Messages") {
            let m = int(m)?;
            negative |= m < 0;
            cfg.flush_messages = m.max(0) as usize;
        }
        if let Some(b) = flush.get("Bytes") {
            let b = int(b)?;
            negative |= b < 0;
            cfg.flush_bytes = b.max(0) as usize;
        }
        if let Some(f) = flush.get("Frequency") {
            let f = duration(f)?;
            negative |= f < 0;
            cfg.flush_frequency = Duration::from_nanos(f.max(0) as u64);
        }
    }
    if let Some(retry) = v.get("Retry") {
        if let Some(m) = retry.get("Max") {
            let max_err = || {
                SqlError::uncategorized(
                    "error unmarshalling json: Retry.Max must be either a positive int or 'inf' for infinite retries.",
                )
            };
            cfg.retry_max = match m {
                Json::Number(n) => match n.parse::<i64>() {
                    Ok(i) if i > 0 => Some(i as u32),
                    Ok(_) => {
                        return Err(SqlError::uncategorized(
                            "error unmarshalling json: Retry.Max must be a positive integer. use 'inf' for infinite retries.",
                        ));
                    }
                    Err(_) => return Err(max_err()),
                },
                Json::String(s) if s.eq_ignore_ascii_case("inf") => None,
                Json::String(s) => Some(s.parse::<u32>().map_err(|_| max_err())?),
                _ => return Err(max_err()),
            };
        }
        if let Some(b) = retry.get("Backoff") {
            let b = duration(b)?;
            negative |= b < 0;
            cfg.retry_backoff = Duration::from_nanos(b.max(0) as u64);
        }
    }
    if negative {
        return Err(SqlError::uncategorized(
            "invalid sink config, all values must be non-negative",
        ));
    }
    if (cfg.flush_messages > 0 || cfg.flush_bytes > 0) && cfg.flush_frequency.is_zero() {
        return Err(SqlError::uncategorized(
            "invalid sink config, Flush.Frequency is not set, messages may never be sent",
        ));
    }
    Ok(cfg)
}

/// A webhook sink of one running changefeed flow.
pub struct WebhookSink {
    target: WebhookTarget,
    config: SinkConfig,
    auth: Option<String>,
    timeout: Duration,
    batch: Vec<String>,
    bytes: usize,
    first_at: Option<Instant>,
    /// Requests sent (each attempt), for tests.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
}

impl WebhookSink {
    /// A sink posting to `target`.
    pub fn new(target: WebhookTarget, config: SinkConfig, auth: Option<String>, timeout: Duration) -> Self {
        Self {
            target,
            config,
            auth,
            timeout,
            batch: Vec::new(),
            bytes: 0,
            first_at: None,
            requests: Arc::default(),
        }
    }

    /// Adds a row message; posts the batch when `Flush` says so.
    pub async fn row(&mut self, value: String) -> Result<(), String> {
        self.bytes += value.len();
        self.batch.push(value);
        self.first_at.get_or_insert_with(Instant::now);
        let c = &self.config;
        let flush = (c.flush_messages == 0 && c.flush_bytes == 0 && c.flush_frequency.is_zero())
            || (c.flush_messages > 0 && self.batch.len() >= c.flush_messages)
            || (c.flush_bytes > 0 && self.bytes >= c.flush_bytes);
        if flush { self.flush().await } else { Ok(()) }
    }

    /// When the batch must be posted by `Flush.Frequency`, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        if self.config.flush_frequency.is_zero() {
            return None;
        }
        self.first_at.map(|t| t + self.config.flush_frequency)
    }

    /// Posts the batch if its `Flush.Frequency` has passed.
    pub async fn tick(&mut self) -> Result<(), String> {
        match self.deadline() {
            Some(d) if Instant::now() >= d => self.flush().await,
            _ => Ok(()),
        }
    }

    /// Posts what is batched.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let body = format!(
            "{{\"payload\":[{}],\"length\":{}}}",
            self.batch.join(","),
            self.batch.len()
        );
        self.post(&body).await?;
        self.batch.clear();
        self.bytes = 0;
        self.first_at = None;
        Ok(())
    }

    /// Posts a resolved message (bare), after the batch.
    pub async fn resolved(&mut self, body: String) -> Result<(), String> {
        self.flush().await?;
        self.post(&body).await
    }

    /// One request with retries (`retry.Options`: InitialBackoff, Multiplier 2, MaxBackoff 30 s).
    async fn post(&self, body: &str) -> Result<(), String> {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 0u32;
        loop {
            self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let err = match post_once(&self.target, self.auth.as_deref(), body, self.timeout).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if self.config.retry_max.is_some_and(|max| attempt >= max) {
                return Err(err);
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// One HTTPS POST; `Err` as Go's HTTP client and the sink word it.
async fn post_once(
    target: &WebhookTarget,
    auth: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let url = &target.url;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("Post \"{url}\": dial tcp {}:{}: {e}", target.host, target.port))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|e| format!("Post \"{url}\": {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(target.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Post \"{url}\": tls: {e}"))?;
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            target.path,
            target.host,
            target.port,
            body.len()
        );
        if let Some(a) = auth {
            request.push_str(&format!("Authorization: {a}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("Post \"{url}\": {e}"))?;
        tls.flush().await.map_err(|e| format!("Post \"{url}\": {e}"))?;
        let mut response = Vec::new();
        // A server may close without TLS close_notify; what arrived counts.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status_line = head.lines().next().unwrap_or_default();
        let status = status_line
            .split_once(' ')
            .map(|x| x.1)
            .unwrap_or_default()
            .to_string();
        let code: u16 = status.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0);
        if code == 0 {
            return Err(format!("Post \"{url}\": EOF"));
        }
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked { dechunk(body) } else { body.to_string() };
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Post \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_config() {
        assert_eq!(parse_sink_config(None).unwrap(), SinkConfig::default());
        let c = parse_sink_config(Some(
            r#"{"Flush": {"Messages": 10, "Frequency": "1s"}, "Retry": {"Max": "inf", "Backoff": "10ms"}}"#,
        ))
        .unwrap();
        assert_eq!(c.flush_messages, 10);
        assert_eq!(c.flush_frequency, Duration::from_secs(1));
        assert_eq!(c.retry_max, None);
        assert_eq!(c.retry_backoff, Duration::from_millis(10));
        assert_eq!(
            parse_sink_config(Some(r#"{"Flush": {"Messages": 10}}"#))
                .unwrap_err()
                .message,
            "invalid sink config, Flush.Frequency is not set, messages may never be sent"
        );
        assert_eq!(
            parse_sink_config(Some(r#"{"Retry": {"Max": 0}}"#))
                .unwrap_err()
                .message,
            "error unmarshalling json: Retry.Max must be a positive integer. use 'inf' for infinite retries."
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("webhook-http://127.0.0.1:1/x").unwrap_err().message,
            "this sink requires https"
        );
        let t = parse_target("webhook-https://127.0.0.1:8443/hook/a?x=1").unwrap();
        assert_eq!(t.url, "https://127.0.0.1:8443/hook/a?x=1");
        assert_eq!(t.path, "/hook/a?x=1");
        assert_eq!(dechunk("3\r\nabc\r\n0\r\n\r\n"), "abc");
    }
}
