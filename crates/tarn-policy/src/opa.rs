//! An OPA server asked over its data API (`POST {url}/v1/data/{package}/{rule}` with
//! `{"input": ...}`, answer `{"result": ...}`), as Trino's plugin asks it.
//!
//! Decisions are asked from planning code, which is synchronous, so requests run on a thread
//! of their own with its own small runtime, and the caller waits for the answer at most
//! `policy.timeout`. A server that cannot be reached, answers with an error status or too late
//! denies, with an error that says which.
//!
//! Which optional rules the server's policy has cannot be seen from outside: filters are asked
//! one resource at a time of `allow`, masks one column at a time of `columnMask`, and an
//! undefined `rowFilters`/`columnMask` means none (as when Trino has those URIs configured).

use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Decide, PolicyError, Rule};

type Reply = mpsc::Sender<Result<Option<Value>, PolicyError>>;

/// An external OPA server.
pub struct OpaServer {
    base: String,
    timeout: Duration,
    requests: tokio::sync::mpsc::UnboundedSender<(String, Value, Reply)>,
}

impl OpaServer {
    /// A client of the OPA server at `url`, for the rules of `package`.
    pub fn new(url: &str, package: &str, timeout: Duration) -> Result<Self, PolicyError> {
        let load_error = |message: String| PolicyError::Load {
            path: "policy.opa_url".into(),
            message,
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(load_error(format!(
                "expected an http:// or https:// URL, got {url:?}"
            )));
        }
        let base = format!(
            "{}/v1/data/{}",
            url.trim_end_matches('/'),
            package.replace('.', "/")
        );
        // The process-wide TLS provider reqwest's rustls needs (the one the rest of tarn uses).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| load_error(format!("cannot build an HTTP client: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value, Reply)>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| load_error(format!("cannot start the OPA client: {e}")))?;
        std::thread::Builder::new()
            .name("tarn-opa-client".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((url, input, reply)) = rx.recv().await {
                        let http = http.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(ask(&http, &url, input).await);
                        });
                    }
                });
            })
            .map_err(|e| load_error(format!("cannot start the OPA client: {e}")))?;
        Ok(Self {
            base,
            timeout,
            requests: tx,
        })
    }
}

async fn ask(http: &reqwest::Client, url: &str, input: Value) -> Result<Option<Value>, PolicyError> {
    let unreachable = |e: String| PolicyError::Evaluation(format!("OPA at {url}: {e}"));
    let response = http
        .post(url)
        .json(&json!({ "input": input }))
        .send()
        .await
        .map_err(|e| unreachable(format!("cannot be reached: {e}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| unreachable(format!("answer cut short: {e}")))?;
    if !status.is_success() {
        return Err(unreachable(format!(
            "answered {status}: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    let answer: Value =
        serde_json::from_str(&body).map_err(|e| unreachable(format!("answered non-JSON: {e}")))?;
    Ok(answer.get("result").cloned())
}

impl Decide for OpaServer {
    fn query(&self, rule: Rule, input: &Value) -> Result<Option<Value>, PolicyError> {
        let (tx, rx) = mpsc::channel();
        let url = format!("{}/{}", self.base, rule.name());
        self.requests
            .send((url.clone(), input.clone(), tx))
            .map_err(|_| PolicyError::Evaluation("the OPA client has stopped".into()))?;
        rx.recv_timeout(self.timeout + Duration::from_millis(500))
            .map_err(|_| {
                PolicyError::Evaluation(format!("OPA at {url}: no answer within {:?}", self.timeout))
            })?
    }

    fn declares(&self, rule: Rule) -> bool {
        matches!(rule, Rule::Allow | Rule::RowFilters | Rule::ColumnMask)
    }

    fn describe(&self) -> String {
        format!("OPA at {}", self.base)
    }
}
