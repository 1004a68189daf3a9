//! The web console, under `/console` on `tarn serve`'s HTTP listener (docs/console.md): a
//! catalog browser, a SQL editor with result downloads and charts, saved charts on a
//! dashboard, pipeline pages (this process's CDC pipeline live, and every pipeline's history
//! from the lake's commits) and jobs pages.
//!
//! Pages are rendered on the server from askama templates (`templates/console/`) with a small
//! script of our own (`assets/console.js`); charts are plotly.js figures built with the
//! `plotly` crate's types ([`chart`]), and plotly.js is the copy that crate embeds — every
//! asset is in the binary, nothing is fetched from elsewhere and no Node step builds it.
//!
//! Who is logged in ([`login`]) is the same [`tarn_auth::Principal`] the Postgres wire endpoint
//! and the HTTP APIs use: a configured user's password (the one SCRAM checks) or the OIDC
//! issuer's authorization code flow with PKCE. Its statements run through the same session,
//! policy, workload admission and `statement_timeout` as a Postgres client's ([`sql`]).

mod catalog;
mod chart;
mod login;
mod ops;
mod pipelines;
mod sql;
mod store;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tarn_auth::Principal;
use tarn_cdc::pipeline::PipelineStatus;
use tarn_core::Config;
use tarn_query::TarnSession;
use tarn_query::workload::Workload;

pub(crate) use login::Sessions;

/// What the console's handlers share.
pub(crate) struct Console {
    /// The SQL session (with the endpoint's workload); each statement runs for the caller's
    /// principal.
    session: TarnSession,
    workload: Arc<Workload>,
    /// The runtime statements execute on (the Postgres wire endpoint's).
    query_runtime: tokio::runtime::Handle,
    auth: Arc<tarn_auth::Authenticator>,
    /// `auth.allow_plaintext_passwords`.
    allow_plaintext: bool,
    oidc: Option<login::OidcClient>,
    sessions: Sessions,
    /// Whether the HTTP endpoint speaks TLS (cookies are then `Secure`).
    tls: bool,
    max_rows: usize,
    cdc: Option<Arc<PipelineStatus>>,
    /// `cdc.kafka.brokers`: where the Kafka pipelines' pages read their partitions' ends.
    kafka_brokers: String,
    jobs: Option<Arc<crate::jobs::Jobs>>,
    store: Option<store::ChartStore>,
}

/// What [`router`] needs from the endpoint that serves it.
pub(crate) struct ConsoleSetup<'a> {
    pub(crate) config: &'a Config,
    pub(crate) session: TarnSession,
    pub(crate) workload: Arc<Workload>,
    pub(crate) query_runtime: tokio::runtime::Handle,
    pub(crate) tls: bool,
    pub(crate) cdc: Option<Arc<PipelineStatus>>,
    pub(crate) jobs: Option<Arc<crate::jobs::Jobs>>,
    /// The endpoint's authenticator, shared with the others (one key set per issuer).
    pub(crate) auth: Arc<tarn_auth::Authenticator>,
}

/// The console's routes (all under `/console`), or none when `console.enabled = false`.
pub(crate) async fn router(setup: ConsoleSetup<'_>) -> anyhow::Result<Option<Router>> {
    let config = setup.config;
    if !config.console.enabled {
        return Ok(None);
    }
    let ttl = tarn_core::config::parse_duration("console.session_ttl", &config.console.session_ttl)?;
    let store = match &setup.jobs {
        Some(jobs) => Some(store::ChartStore::open(jobs.store()).await?),
        None => None,
    };
    let oidc = config
        .auth
        .oidc
        .as_ref()
        .map(|o| login::OidcClient::new(o, &config.console));
    let console = Arc::new(Console {
        session: setup.session,
        workload: setup.workload,
        query_runtime: setup.query_runtime,
        auth: setup.auth,
        allow_plaintext: config.auth.allow_plaintext_passwords,
        oidc: oidc.transpose()?,
        sessions: Sessions::new(ttl),
        tls: setup.tls,
        max_rows: config.console.max_rows.max(1),
        cdc: setup.cdc,
        kafka_brokers: config.cdc.kafka.brokers.clone(),
        jobs: setup.jobs,
        store,
    });
    let app = Router::new()
        .route("/console", get(|| async { Redirect::to("/console/catalog") }))
        .route("/console/", get(|| async { Redirect::to("/console/catalog") }))
        .route("/console/assets/{name}", get(asset))
        .route("/console/login", get(login::page).post(login::password))
        .route("/console/logout", post(login::logout))
        .route("/console/oidc/start", get(login::oidc_start))
        .route("/console/oidc/callback", get(login::oidc_callback))
        .route("/console/catalog", get(catalog::listing))
        .route("/console/catalog/{namespace}/{table}", get(catalog::table))
        .route("/console/sql", get(sql::editor))
        .route("/console/api/query", post(sql::query))
        .route("/console/download", post(sql::download))
        .route("/console/api/chart", post(chart::figure))
        .route("/console/api/charts", post(chart::save))
        .route("/console/api/charts/{id}/figure", get(chart::saved_figure))
        .route("/console/charts/{id}/delete", post(chart::delete))
        .route("/console/dashboard", get(chart::dashboard))
        .route("/console/pipeline", get(ops::pipeline))
        .route("/console/api/pipeline", get(ops::pipeline_status))
        .route("/console/pipelines", get(pipelines::list))
        .route("/console/pipelines/{kind}/{name}", get(pipelines::history))
        .route("/console/jobs", get(ops::jobs))
        .route("/console/jobs/{job}", get(ops::job_runs))
        .route("/console/jobs/{job}/trigger", post(ops::trigger))
        .route("/console/jobs/{job}/runs/{run_id}", get(ops::run))
        .route("/console/jobs/{job}/runs/{run_id}/retry", post(ops::retry))
        .with_state(console);
    Ok(Some(app))
}

/// The parts every page's frame shows: who is logged in, which page is current.
pub(crate) struct Frame {
    /// The logged-in user and groups, as shown.
    pub(crate) user: String,
    /// The navigation entry to highlight.
    pub(crate) nav: &'static str,
}

impl Frame {
    fn of(principal: &Principal, nav: &'static str) -> Self {
        Self {
            user: principal.to_string(),
            nav,
        }
    }
}

#[derive(Template)]
#[template(path = "console/refused.html")]
struct Refused<'a> {
    frame: Frame,
    status: u16,
    title: &'a str,
    message: &'a str,
}

/// A page saying why the request was refused (403 for a governance refusal, with its text).
fn refused(principal: &Principal, status: StatusCode, title: &str, message: &str) -> Response {
    let page = Refused {
        frame: Frame::of(principal, ""),
        status: status.as_u16(),
        title,
        message,
    };
    (status, render(&page)).into_response()
}

/// `page` as HTML; a template that fails to render answers 500 with the reason.
fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

/// A JSON error `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({"error": message.into()}))).into_response()
}

/// The HTTP status of a tarn error: 403 for a refusal of the policy, 400 for bad SQL, 503
/// when the workload refuses, 408 for a statement stopped (its `statement_timeout`), 500
/// otherwise.
fn status_of(e: &tarn_core::Error) -> StatusCode {
    use tarn_core::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::InvalidInput | ErrorKind::NotFound | ErrorKind::AlreadyExists => StatusCode::BAD_REQUEST,
        ErrorKind::TooManyStatements | ErrorKind::OutOfMemory => StatusCode::SERVICE_UNAVAILABLE,
        // Cancelled, or past its statement_timeout.
        ErrorKind::Cancelled => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// plotly.js as the `plotly` crate embeds it (its offline sources are script elements; the
/// first holds plotly.js).
fn plotly_js() -> &'static str {
    static JS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JS.get_or_init(|| {
        let sources = plotly::Plot::offline_js_sources();
        let start = sources.find('>').map_or(0, |i| i + 1);
        let end = sources[start..]
            .find("</script>")
            .map_or(sources.len(), |i| start + i);
        sources[start..end].to_string()
    })
}

/// The console's own script and style sheet, and plotly.js; cached by the browser for an hour.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match name.as_str() {
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        "plotly.js" => (plotly_js(), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, format!("no console asset {name:?}")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
