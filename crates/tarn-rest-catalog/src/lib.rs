//! The Iceberg REST catalog protocol over tarn's catalog: what lets Spark, Trino, Flink,
//! DuckDB and pyiceberg open tarn's tables with nothing but a URL.
//!
//! [`router`] returns an axum `Router` for the specification's routes (the `v1/...` paths of
//! `open-api/rest-catalog-open-api.yaml` in the Iceberg repository); `tarn serve` mounts it
//! under `/iceberg` on its HTTP listener. Routes exist with and without the `{prefix}` segment;
//! `GET /v1/config` tells clients to use the prefix (the catalog name), as the specification
//! intends, and the plain form serves clients that ignore it.
//!
//! Backing store: [`tarn_lake::Lake`], i.e. the SQL catalog (SQLite, or PostgreSQL for several
//! tarn replicas) that tarn's own SQL, CDC and maintenance commit to. Every table commit is a
//! compare-and-swap of the table's catalog row, so REST clients, tarn's writers and engines on
//! the JDBC catalog exclude each other; a lost race is retried on the new metadata when the
//! client's requirements still hold there, and otherwise answered with 409
//! `CommitFailedException`. Never a lost update: see [`commit`].
//!
//! Why our own server: no crate implements the server side worth depending on (lakekeeper is an
//! application with its own database schema). The request and response bodies are
//! `iceberg-catalog-rest`'s public serde types (`CreateTableRequest`, `LoadTableResult`,
//! `CommitTableRequest`, ...) and `iceberg`'s `TableRequirement`/`TableUpdate`/`TableMetadata`,
//! whose serde is the specification's JSON; requirement checks and update application are
//! `iceberg`'s own (`TableRequirement::check`, `TableUpdate::apply` on a `TableMetadataBuilder`).
//! Only the envelopes that crate keeps private or lacks (`CatalogConfig`, the error envelope,
//! `CommitTransactionRequest`) are written here.
//!
//! Authentication and authorization: one seam, [`Authorizer`], asked before every request
//! (and for the listings, which tables and namespaces the caller may see);
//! [`AllowAll`] lets everything through (the `Authorization` header, e.g. pyiceberg's
//! `Bearer None`, is ignored); `tarn serve` plugs its policy in there when one is configured.

mod commit;
mod envelope;
mod error;
mod handlers;
mod storage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tarn_lake::Lake;

pub use error::RestError;
pub use storage::{ACCESS_DELEGATION_HEADER, StorageAccess};

/// The name of the request counter: labels `route` (method and matched path) and `status`.
pub const REQUESTS_METRIC: &str = "tarn_catalog_requests_total";
/// The name of the request latency histogram (seconds), label `route`.
pub const LATENCY_METRIC: &str = "tarn_catalog_request_duration_seconds";
/// The name of the counter of commits whose catalog swap lost a race (each re-checked and
/// retried on the new metadata).
pub const COMMIT_CONFLICTS_METRIC: &str = "tarn_catalog_commit_conflicts_total";

/// One request as an [`Authorizer`] sees it.
#[derive(Debug)]
pub struct CatalogRequest<'a> {
    /// The HTTP method.
    pub method: &'a Method,
    /// The route as declared, e.g. `/v1/{prefix}/namespaces/{namespace}/tables/{table}`.
    pub route: &'a str,
    /// The path parameters (`namespace` with levels separated by `0x1F`, `table`, `prefix`).
    pub params: &'a HashMap<String, String>,
    /// The request headers (`Authorization`, ...).
    pub headers: &'a HeaderMap,
    /// The request's extensions: what middleware in front of the catalog put there (`tarn
    /// serve`'s bearer-token check puts the caller's principal).
    pub extensions: &'a axum::http::Extensions,
}

/// Decides whether a request may proceed: the seam where authentication (bearer tokens,
/// OAuth2) and table grants plug in. Asked once per request, before its handler runs; an
/// error is the response (401 `NotAuthorizedException`, 403 `ForbiddenException`).
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` lets the request through.
    async fn authorize(&self, request: &CatalogRequest<'_>) -> Result<(), RestError>;

    /// A commit to `table` (`POST .../tables/{table}`, each change of `/transactions/commit`)
    /// with its parsed `updates`, asked after [`Self::authorize`] let the request through and
    /// before anything is written: what the commit does (appends, deletes, schema and property
    /// changes) decides, not only that it is a commit. `extensions` as in
    /// [`CatalogRequest::extensions`]. Allowed by default.
    async fn authorize_commit(
        &self,
        _extensions: &axum::http::Extensions,
        _table: &iceberg::TableIdent,
        _updates: &[iceberg::TableUpdate],
    ) -> Result<(), RestError> {
        Ok(())
    }

    /// Of the tables a listing (`GET .../namespaces/{namespace}/tables`) found, the ones the
    /// caller (`extensions`, as in [`CatalogRequest::extensions`]) may see. All by default.
    async fn visible_tables(
        &self,
        _extensions: &axum::http::Extensions,
        tables: Vec<iceberg::TableIdent>,
    ) -> Result<Vec<iceberg::TableIdent>, RestError> {
        Ok(tables)
    }

    /// Of the namespaces a listing (`GET .../namespaces`) found, the ones the caller may see.
    /// All by default.
    async fn visible_namespaces(
        &self,
        _extensions: &axum::http::Extensions,
        namespaces: Vec<iceberg::NamespaceIdent>,
    ) -> Result<Vec<iceberg::NamespaceIdent>, RestError> {
        Ok(namespaces)
    }
}

/// Lets every request through and ignores credentials (pyiceberg sends
/// `Authorization: Bearer None` when it has no token). For a catalog reachable only by those
/// who may change every table.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

#[async_trait::async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _request: &CatalogRequest<'_>) -> Result<(), RestError> {
        Ok(())
    }
}

/// How the catalog is served.
#[derive(Clone)]
pub struct RestCatalogOptions {
    /// The `{prefix}` path segment clients are told to use (`GET /v1/config` overrides);
    /// tarn uses the catalog name.
    pub prefix: String,
    /// Asked before every request.
    pub authorizer: Arc<dyn Authorizer>,
    /// How often a commit whose catalog swap lost a race is re-validated and re-applied
    /// before the client gets 409.
    pub commit_retries: u32,
    /// The object-store settings (and vended credentials) clients are given for the tables'
    /// files.
    pub storage: StorageAccess,
}

impl RestCatalogOptions {
    /// Options for `lake`: its catalog name as the prefix, no authorization, no storage
    /// settings for clients.
    pub fn for_lake(lake: &Lake, commit_retries: u32) -> Self {
        Self {
            prefix: lake.name().to_string(),
            authorizer: Arc::new(AllowAll),
            commit_retries,
            storage: StorageAccess::default(),
        }
    }

    /// Options for the lake `config` opens: [`Self::for_lake`] with the storage settings (and,
    /// when `rest_catalog.vend_credentials` is on, the credentials) of `config`.
    pub fn for_config(lake: &Lake, config: &tarn_core::Config) -> Self {
        Self {
            storage: StorageAccess::from_config(config),
            ..Self::for_lake(lake, config.write.commit_retries)
        }
    }
}

/// Everything a handler needs.
#[derive(Clone)]
pub(crate) struct RestState {
    pub(crate) lake: Lake,
    pub(crate) options: RestCatalogOptions,
}

/// The catalog's routes (paths start with `/v1`): mount the router where clients are told
/// the catalog lives (`tarn serve` nests it under `/iceberg`).
pub fn router(lake: Lake, options: RestCatalogOptions) -> Router {
    let state = RestState { lake, options };
    let mut app = Router::new().route("/v1/config", get(handlers::get_config));
    for base in ["/v1", "/v1/{prefix}"] {
        app = app
            .route(
                &format!("{base}/namespaces"),
                get(handlers::list_namespaces).post(handlers::create_namespace),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}"),
                get(handlers::load_namespace)
                    .head(handlers::namespace_exists)
                    .delete(handlers::drop_namespace),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/properties"),
                post(handlers::update_namespace_properties),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/tables"),
                get(handlers::list_tables).post(handlers::create_table),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/register"),
                post(handlers::register_table),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/tables/{{table}}"),
                get(handlers::load_table)
                    .head(handlers::table_exists)
                    .post(handlers::commit_table)
                    .delete(handlers::drop_table),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/tables/{{table}}/credentials"),
                get(handlers::load_credentials),
            )
            .route(
                &format!("{base}/namespaces/{{namespace}}/tables/{{table}}/metrics"),
                post(handlers::report_metrics),
            )
            .route(&format!("{base}/tables/rename"), post(handlers::rename_table))
            .route(
                &format!("{base}/transactions/commit"),
                post(handlers::commit_transaction),
            );
    }
    app.route_layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .fallback(unknown_route)
        .with_state(state)
}

/// Authorizes, then runs the request; logs it at debug and counts it with its latency.
async fn observe(
    State(state): State<RestState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    use axum::RequestPartsExt;
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    // Routes without parameters (`/v1/config`) have none to extract.
    let params = parts
        .extract::<axum::extract::Path<HashMap<String, String>>>()
        .await
        .map(|p| p.0)
        .unwrap_or_default();
    let request = Request::from_parts(parts, body);
    let method = request.method().clone();
    let route = matched
        .as_ref()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let uri = request.uri().clone();
    let denied = state
        .options
        .authorizer
        .authorize(&CatalogRequest {
            method: &method,
            route: &route,
            params: &params,
            headers: request.headers(),
            extensions: request.extensions(),
        })
        .await
        .err();
    let response = match denied {
        Some(e) => e.into_response(),
        None => next.run(request).await,
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let label = format!("{method} {route}");
    tracing::debug!(%method, %uri, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "iceberg rest request");
    metrics::counter!(REQUESTS_METRIC, "route" => label.clone(), "status" => status.to_string()).increment(1);
    metrics::histogram!(LATENCY_METRIC, "route" => label).record(elapsed.as_secs_f64());
    response
}

/// Paths that are not the specification's (or not implemented: views, scan planning,
/// credentials) get the error model too.
async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    metrics::counter!(REQUESTS_METRIC, "route" => "unmatched", "status" => "404").increment(1);
    RestError::new(
        axum::http::StatusCode::NOT_FOUND,
        "NotFoundException",
        format!("no Iceberg REST route {method} {}", uri.path()),
    )
    .into_response()
}
