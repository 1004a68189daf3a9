//! An Iceberg REST catalog (`catalog.kind = "rest"`): Lakekeeper, Polaris, Unity Catalog,
//! another `tarn serve` (`/iceberg`), anything that speaks the protocol.
//!
//! Namespaces, table creation, listing and drops go through `iceberg-catalog-rest`'s
//! `RestCatalog`. Two calls tarn makes itself, with the crate's serde types: loading a table's
//! current metadata, and commits. The crate commits only what the `iceberg` crate's
//! `Transaction` builds (its `TableCommit` cannot be made outside that crate), while tarn's
//! commits (row deltas, rewrites, overwrites, schema changes with given field ids; see
//! [`crate::commit`]) build their own metadata changes. So a commit here is
//! `POST {uri}/v1/{prefix}/namespaces/{ns}/tables/{table}` with the changes as `updates` and
//! the requirements that stand for "the table is as read" (`assert-table-uuid`,
//! `assert-ref-snapshot-id` of `main`, `assert-current-schema-id`, ...); the catalog writes the
//! metadata file. 409 is a lost race (the caller re-reads, re-validates and re-applies); a 5xx
//! leaves the outcome unknown and is an error that keeps the attempt's files.
//!
//! Authentication: a fixed bearer token (`catalog.rest.token`), or OAuth2 client credentials
//! (`catalog.rest.credential = "client_id:client_secret"`) exchanged at the token endpoint
//! (`catalog.rest.oauth2_server_uri`, default `<uri>/v1/oauth/tokens`) with
//! `catalog.rest.scope` (default `catalog`). tarn keeps the token it got until shortly before
//! it expires (`expires_in`) or the catalog answers 401, then asks for a new one — and makes
//! the crate's client do the same, since it never refreshes on its own.
//!
//! Opening the backend asks the catalog for its configuration (`GET /v1/config`), so a wrong
//! URL or a refused token fails right away with an error naming the catalog and the key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableIdent};
use iceberg_catalog_rest::{
    CommitTableRequest, CommitTableResponse, LoadTableResult, REST_CATALOG_PROP_URI,
    REST_CATALOG_PROP_WAREHOUSE, RestCatalog, RestCatalogBuilder,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tarn_core::config::RestClientConfig;
use tarn_core::{Config, Error, ErrorKind, Result};
use tokio::sync::Mutex;

use super::{
    CatalogBackend, CatalogKind, CommitOutcome, CurrentMetadata, MetadataCommit, MetadataSwap, StorageProps,
};
use crate::storage::ObjectStoreStorageFactory;

/// How long connecting to the catalog may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// An Iceberg REST catalog; see the module doc.
#[derive(Debug)]
pub(crate) struct RestBackend {
    catalog: Arc<RestCatalog>,
    client: RestClient,
}

impl RestBackend {
    /// Connects to the REST catalog `config.catalog.rest` names: asks it for its configuration
    /// (checking the URL and the credentials), then opens the crate's client on it.
    pub(crate) async fn open(config: &Config, storage: StorageProps) -> Result<Self> {
        let rest = &config.catalog.rest;
        let client = RestClient::connect(rest).await?;
        let mut props = storage;
        props.insert(REST_CATALOG_PROP_URI.into(), client.uri.clone());
        if let Some(warehouse) = &rest.warehouse {
            props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), warehouse.clone());
        }
        for (key, value) in [
            ("token", &rest.token),
            ("credential", &rest.credential),
            ("oauth2-server-uri", &rest.oauth2_server_uri),
            ("scope", &rest.scope),
        ] {
            if let Some(value) = value {
                props.insert(key.into(), value.clone());
            }
        }
        let catalog = RestCatalogBuilder::default()
            .with_storage_factory(Arc::new(ObjectStoreStorageFactory))
            .load(config.catalog.name.clone(), props)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "cannot open the Iceberg REST catalog at {}: {}",
                        client.uri,
                        e.message()
                    ),
                )
                .with_source(e)
            })?;
        Ok(Self {
            catalog: Arc::new(catalog),
            client,
        })
    }

    /// Sends a request, renewing an OAuth2 token (here and in the crate's client) when the
    /// catalog refuses the current one.
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&CommitTableRequest>,
    ) -> Result<reqwest::Response> {
        let response = self.client.send(method.clone(), url.clone(), body).await?;
        if response.status() == StatusCode::UNAUTHORIZED && self.client.auth.renews() {
            self.client.auth.forget().await;
            let response = self.client.send(method, url, body).await?;
            self.renew_crate_token().await;
            return Ok(response);
        }
        if self.client.auth.take_renewed() {
            self.renew_crate_token().await;
        }
        Ok(response)
    }

    /// Makes the crate's client fetch a new token too: it keeps its first one forever.
    async fn renew_crate_token(&self) {
        if let Err(e) = self.catalog.regenerate_token().await {
            tracing::warn!(catalog = %self.client.uri, error = %e, "cannot renew the REST catalog client's token");
        }
    }
}

#[async_trait]
impl CatalogBackend for RestBackend {
    fn kind(&self) -> CatalogKind {
        CatalogKind::Rest
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    async fn current_metadata(&self, ident: &TableIdent) -> Result<CurrentMetadata> {
        let url = self.client.table_url(ident);
        let response = self.send(Method::GET, url, None).await?;
        match response.status() {
            StatusCode::OK => {
                let loaded: LoadTableResult = self.client.json(response, "load table").await?;
                let location = loaded.metadata_location.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Catalog,
                        format!(
                            "the Iceberg REST catalog at {} returned table {ident} without a metadata location (a staged table?)",
                            self.client.uri
                        ),
                    )
                })?;
                Ok(CurrentMetadata {
                    location,
                    metadata: Some(loaded.metadata),
                })
            }
            StatusCode::NOT_FOUND => Err(Error::new(
                ErrorKind::NotFound,
                format!("table {ident} does not exist"),
            )),
            _ => Err(self
                .client
                .refused(response, &format!("cannot load table {ident}"))
                .await),
        }
    }

    async fn commit(&self, commit: MetadataCommit<'_>, _written: &mut Vec<String>) -> Result<CommitOutcome> {
        let ident = commit.current.identifier();
        let request = CommitTableRequest {
            identifier: Some(ident.clone()),
            requirements: commit.requirements,
            updates: commit.updates,
        };
        let url = self.client.table_url(ident);
        let response = self.send(Method::POST, url, Some(&request)).await?;
        let status = response.status();
        match status {
            StatusCode::OK => {
                let committed: CommitTableResponse = self.client.json(response, "commit").await?;
                Ok(CommitOutcome::Committed {
                    location: committed.metadata_location,
                    metadata: committed.metadata,
                })
            }
            StatusCode::CONFLICT => {
                let message = error_message(response).await;
                tracing::debug!(table = %ident, %message, "REST catalog commit conflict");
                Ok(CommitOutcome::Conflict)
            }
            StatusCode::NOT_FOUND => Err(Error::new(
                ErrorKind::NotFound,
                format!("table {ident} does not exist"),
            )),
            s if s.is_server_error() => {
                let message = error_message(response).await;
                Err(Error::new(
                    ErrorKind::Catalog,
                    format!(
                        "the Iceberg REST catalog at {} answered the commit to {ident} with HTTP {s} ({message}): \
                         whether it landed is unknown; the table's next load tells",
                        self.client.uri
                    ),
                ))
            }
            _ => Err(self
                .client
                .refused(response, &format!("cannot commit to table {ident}"))
                .await),
        }
    }

    async fn swap_metadata_locations(&self, _swaps: &[MetadataSwap]) -> Result<bool> {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "swapping metadata locations needs catalog.kind = \"sql\"; the Iceberg REST catalog at {} commits table updates",
                self.client.uri
            ),
        ))
    }

    async fn remove_namespace_properties(&self, ns: &NamespaceIdent, keys: &[String]) -> Result<Vec<String>> {
        // The crate's `update_namespace` is not implemented (0.10): the spec's own call.
        let mut url = self.client.base.clone();
        url.path_segments_mut().expect("an http(s) URL").extend([
            "namespaces",
            &ns.join("\u{1f}"),
            "properties",
        ]);
        let body = serde_json::json!({ "removals": keys, "updates": {} });
        let response = self.client.send_json(Method::POST, url, &body).await?;
        if response.status() != StatusCode::OK {
            return Err(self
                .client
                .refused(
                    response,
                    &format!("cannot remove properties of namespace {}", ns.join(".")),
                )
                .await);
        }
        #[derive(Deserialize)]
        struct Removed {
            #[serde(default)]
            removed: Vec<String>,
        }
        Ok(self
            .client
            .json::<Removed>(response, "update namespace")
            .await?
            .removed)
    }
}

/// tarn's own HTTP client for the calls it makes itself: the catalog's address and
/// authentication.
#[derive(Debug)]
struct RestClient {
    http: reqwest::Client,
    /// `catalog.rest.uri` as configured (or as the catalog's config overrides it), for messages.
    uri: String,
    /// `<uri>/v1[/<prefix>]`.
    base: reqwest::Url,
    auth: Auth,
}

/// What `GET /v1/config` answers.
#[derive(Debug, Default, Deserialize)]
struct CatalogConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

impl RestClient {
    async fn connect(rest: &RestClientConfig) -> Result<Self> {
        let uri = rest
            .uri
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "key `catalog.rest.uri`: not set"))?
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::new(ErrorKind::Internal, "cannot build an HTTP client").with_source(e))?;
        let parse = |key: &str, value: &str| {
            reqwest::Url::parse(value).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("key `{key}`: not a valid URL: {value:?}"),
                )
                .with_source(e)
            })
        };
        let auth = match (&rest.token, &rest.credential) {
            (Some(token), _) => Auth::Token(token.clone()),
            (None, Some(credential)) => {
                let (client_id, secret) = match credential.split_once(':') {
                    Some((id, secret)) => (Some(id.to_string()), secret.to_string()),
                    None => (None, credential.clone()),
                };
                let endpoint = match &rest.oauth2_server_uri {
                    Some(endpoint) => parse("catalog.rest.oauth2_server_uri", endpoint)?,
                    None => parse("catalog.rest.uri", &format!("{uri}/v1/oauth/tokens"))?,
                };
                Auth::ClientCredentials(Box::new(ClientCredentials {
                    endpoint,
                    client_id,
                    secret,
                    scope: rest.scope.clone().unwrap_or_else(|| "catalog".into()),
                    token: Mutex::new(None),
                    renewed: std::sync::atomic::AtomicBool::new(false),
                }))
            }
            (None, None) => Auth::None,
        };
        let mut client = Self {
            http,
            base: parse("catalog.rest.uri", &format!("{uri}/v1"))?,
            uri,
            auth,
        };
        let mut url = client.base.clone();
        url.path_segments_mut().expect("an http(s) URL").push("config");
        if let Some(warehouse) = &rest.warehouse {
            url.query_pairs_mut().append_pair("warehouse", warehouse);
        }
        let response = client.send(Method::GET, url, None).await?;
        client.auth.take_renewed();
        if response.status() != StatusCode::OK {
            let status = response.status();
            let what = if status == StatusCode::NOT_FOUND {
                "no Iceberg REST catalog there (GET /v1/config: HTTP 404): check catalog.rest.uri (the part before /v1)"
                    .to_string()
            } else {
                format!(
                    "cannot read its configuration (GET /v1/config{})",
                    match &rest.warehouse {
                        Some(w) => format!("?warehouse={w}"),
                        None => String::new(),
                    }
                )
            };
            return Err(client.refused(response, &what).await);
        }
        let config: CatalogConfigResponse = client.json(response, "config").await?;
        if let Some(overridden) = config.overrides.get("uri") {
            client.uri = overridden.trim_end_matches('/').to_string();
        }
        let mut base = parse("catalog.rest.uri", &format!("{}/v1", client.uri))?;
        if let Some(prefix) = config.overrides.get("prefix").or(config.defaults.get("prefix")) {
            let mut segments = base.path_segments_mut().expect("an http(s) URL");
            for part in prefix.split('/').filter(|p| !p.is_empty()) {
                segments.push(part);
            }
        }
        client.base = base;
        tracing::info!(catalog = %client.uri, base = %client.base, "connected to the Iceberg REST catalog");
        Ok(client)
    }

    /// `<base>/namespaces/<ns>/tables/<table>`, namespace levels joined by the unit separator
    /// as the spec says.
    fn table_url(&self, ident: &TableIdent) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an http(s) URL").extend([
            "namespaces",
            &ident.namespace().join("\u{1f}"),
            "tables",
            ident.name(),
        ]);
        url
    }

    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&CommitTableRequest>,
    ) -> Result<reqwest::Response> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        self.execute(request, &method, &url).await
    }

    async fn send_json(
        &self,
        method: Method,
        url: reqwest::Url,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response> {
        let request = self.http.request(method.clone(), url.clone()).json(body);
        self.execute(request, &method, &url).await
    }

    async fn execute(
        &self,
        mut request: reqwest::RequestBuilder,
        method: &Method,
        url: &reqwest::Url,
    ) -> Result<reqwest::Response> {
        if let Some(token) = self.auth.bearer(&self.http, &self.uri).await? {
            request = request.bearer_auth(token);
        }
        request.send().await.map_err(|e| {
            Error::new(
                ErrorKind::Catalog,
                format!(
                    "cannot reach the Iceberg REST catalog at {} (catalog.rest.uri): {method} {}: {}",
                    self.uri,
                    url.path(),
                    error_chain(&e)
                ),
            )
            .with_source(e)
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<T> {
        let bytes = response.bytes().await.map_err(|e| {
            Error::new(
                ErrorKind::Catalog,
                format!(
                    "the Iceberg REST catalog at {}: cannot read the {what} response",
                    self.uri
                ),
            )
            .with_source(e)
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Catalog,
                format!(
                    "the Iceberg REST catalog at {} sent a {what} response tarn cannot read: {e}",
                    self.uri
                ),
            )
        })
    }

    /// The error for a response the call did not expect, naming the catalog and the status.
    async fn refused(&self, response: reqwest::Response, what: &str) -> Error {
        let status = response.status();
        let message = error_message(response).await;
        let (kind, hint) = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => (
                ErrorKind::Catalog,
                match &self.auth {
                    Auth::None => {
                        " — it wants credentials: set catalog.rest.token or catalog.rest.credential"
                    }
                    Auth::Token(_) => " — it refused the token of catalog.rest.token",
                    Auth::ClientCredentials(_) => {
                        " — it refused the token obtained with catalog.rest.credential"
                    }
                },
            ),
            s if s.is_client_error() => (ErrorKind::InvalidInput, ""),
            _ => (ErrorKind::Catalog, ""),
        };
        Error::new(
            kind,
            format!(
                "the Iceberg REST catalog at {}: {what}: HTTP {status}{}{hint}",
                self.uri,
                if message.is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                }
            ),
        )
    }
}

/// The message of an Iceberg `ErrorModel` (or OAuth2 error) body, else the body's start.
async fn error_message(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let pick = |v: &serde_json::Value| v.as_str().map(str::to_string);
    pick(&value["error"]["message"])
        .or_else(|| {
            pick(&value["error"]).map(|e| match pick(&value["error_description"]) {
                Some(d) => format!("{e}: {d}"),
                None => e,
            })
        })
        .or_else(|| pick(&value["message"]))
        .unwrap_or_else(|| text.chars().take(200).collect::<String>().trim().to_string())
}

/// An error and its sources, joined: reqwest's own message ("error sending request") hides the
/// reason (connection refused, DNS) in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// How tarn authenticates to the catalog.
#[derive(Debug)]
enum Auth {
    None,
    Token(String),
    ClientCredentials(Box<ClientCredentials>),
}

/// OAuth2 client credentials and the token they were last exchanged for.
#[derive(Debug)]
struct ClientCredentials {
    endpoint: reqwest::Url,
    client_id: Option<String>,
    secret: String,
    scope: String,
    /// The token and when to renew it.
    token: Mutex<Option<(String, Option<Instant>)>>,
    /// A token was fetched again since the last look (the crate's client should renew too).
    renewed: std::sync::atomic::AtomicBool,
}

/// What a token endpoint answers.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Auth {
    /// Whether a refused token can be replaced by asking for a new one.
    fn renews(&self) -> bool {
        matches!(self, Auth::ClientCredentials(_))
    }

    /// Drops the cached token, so the next request asks for a new one.
    async fn forget(&self) {
        if let Auth::ClientCredentials(c) = self {
            *c.token.lock().await = None;
        }
    }

    /// Whether a token was fetched again since the last call (not counting the first).
    fn take_renewed(&self) -> bool {
        match self {
            Auth::ClientCredentials(c) => c.renewed.swap(false, std::sync::atomic::Ordering::Relaxed),
            _ => false,
        }
    }

    /// The bearer token to send, fetching one when needed.
    async fn bearer(&self, http: &reqwest::Client, catalog: &str) -> Result<Option<String>> {
        let c = match self {
            Auth::None => return Ok(None),
            Auth::Token(token) => return Ok(Some(token.clone())),
            Auth::ClientCredentials(c) => c,
        };
        let mut cached = c.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(Some(token.clone()));
        }
        let first = cached.is_none();
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_secret", c.secret.as_str()),
            ("scope", c.scope.as_str()),
        ];
        if let Some(id) = &c.client_id {
            form.push(("client_id", id));
        }
        let failed = |reason: String| {
            Error::new(
                ErrorKind::Catalog,
                format!(
                    "cannot get a token for the Iceberg REST catalog at {catalog} from {} with catalog.rest.credential: {reason}",
                    c.endpoint
                ),
            )
        };
        let response = http
            .post(c.endpoint.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        if status != StatusCode::OK {
            let message = error_message(response).await;
            return Err(failed(format!("HTTP {status} ({message})")));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| failed(format!("unreadable answer: {}", error_chain(&e))))?;
        let renew_at = body.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2))
        });
        tracing::debug!(catalog, endpoint = %c.endpoint, expires_in = ?body.expires_in, "got an OAuth2 token");
        *cached = Some((body.access_token.clone(), renew_at));
        if !first {
            c.renewed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Some(body.access_token))
    }
}
