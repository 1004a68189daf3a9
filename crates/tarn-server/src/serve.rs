//! `tarn serve`: the Postgres wire endpoint and the HTTP endpoint (`/healthz`, `/readyz`,
//! `/metrics`, `/cdc/status`, the jobs API under `/jobs`, the Iceberg REST catalog under
//! `/iceberg` unless `rest_catalog.enabled = false`, and the web console under `/console`
//! unless `console.enabled = false`) until SIGINT or SIGTERM, with the jobs'
//! scheduler (`crate::jobs`) unless `jobs.scheduler = false`.
//!
//! With `server.tls`, both listeners speak TLS with the same certificate, read again on SIGHUP
//! and when the files change (crate `tarn_tls`): the Postgres wire endpoint after an
//! SSLRequest (plain connections refused unless `server.tls.require = false`), the HTTP
//! endpoint as HTTPS only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tarn_cdc::pipeline::{PipelineHandle, PipelineStatus, RunOptions};
use tarn_core::Config;
use tarn_query::TarnSession;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    session: TarnSession,
    cdc: Option<Arc<PipelineStatus>>,
}

/// Liveness: the process answers HTTP. It does not look at the catalog, so that a catalog
/// database that is down for a while makes replicas unready (`/readyz`), not restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the catalog answers, so the process can plan and commit queries. 503 with the
/// reason otherwise.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.session.lake().list_namespaces().await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: catalog unavailable: {e}\n"),
        ),
    }
}

async fn metrics_page(State(state): State<HttpState>) -> String {
    let mut text = state.metrics.render();
    text.push_str(&crate::measure::process_metrics());
    text
}

async fn cdc_status(State(state): State<HttpState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match &state.cdc {
        Some(status) => (
            StatusCode::OK,
            axum::Json(serde_json::to_value(status.report()).unwrap_or_default()),
        ),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no CDC pipeline: cdc.source is not set"})),
        ),
    }
}

/// Installs the Prometheus recorder; every `metrics::` call from here on is exported.
/// The REST catalog's request latency is a histogram with fixed buckets (other timings are
/// summaries).
pub fn install_metrics() -> Result<PrometheusHandle> {
    install_metrics_if(true)
}

/// [`install_metrics`] when `record` (`telemetry.metrics`); else a handle of a recorder that is
/// not installed, so `metrics::` calls do nothing and `/metrics` renders nothing of tarn's.
pub fn install_metrics_if(record: bool) -> Result<PrometheusHandle> {
    if !record {
        return Ok(PrometheusBuilder::new().build_recorder().handle());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(tarn_pgwire::observe::DURATION_METRIC.to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ],
        )
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(tarn_rest_catalog::LATENCY_METRIC.to_string()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    crate::metric_help::describe_all();
    Ok(handle)
}

/// The Iceberg REST catalog's routes, to nest under `/iceberg`, when `rest_catalog.enabled`.
fn rest_catalog(config: &Config, session: &TarnSession) -> Option<Router> {
    if !config.rest_catalog.enabled {
        return None;
    }
    if config.catalog.kind != tarn_core::config::CatalogKind::Sql {
        // Its commits swap the SQL catalog's rows; clients can use the catalog tarn uses.
        tracing::info!(catalog = %config.catalog_description(), "not serving /iceberg: tarn's REST catalog needs catalog.kind = \"sql\"");
        return None;
    }
    let lake = session.lake().clone();
    let mut options = tarn_rest_catalog::RestCatalogOptions::for_config(&lake, config);
    if let Some(governance) = session.governance() {
        options.authorizer = Arc::new(crate::policy::PolicyAuthorizer::new(
            governance.clone(),
            lake.clone(),
        ));
    }
    Some(tarn_rest_catalog::router(lake, options))
}

/// The Postgres wire endpoint and the HTTP endpoint, running as tasks until their shutdown
/// token fires: `tarn serve` and `tarn demo` start them the same way.
pub(crate) struct Endpoints {
    /// Where the Postgres wire endpoint listens.
    pub(crate) pg_addr: std::net::SocketAddr,
    /// Where the HTTP endpoint listens.
    pub(crate) http_addr: std::net::SocketAddr,
    /// Whether both endpoints speak TLS.
    pub(crate) tls: bool,
    http_task: JoinHandle<Result<()>>,
    pg_task: JoinHandle<Result<()>>,
    reload_task: Option<JoinHandle<()>>,
    /// The runtime SQL statements execute on; kept apart from the pipelines' (see
    /// [`QueryRuntime`]).
    query_runtime: QueryRuntime,
}

/// The tokio runtime the Postgres wire endpoint, and so every statement's planning and
/// execution (DataFusion spawns its tasks on the runtime it runs on), runs on: its own
/// threads (`query.threads`, at `query.thread_nice`), so change data capture, Kafka ingest, the scheduler and the
/// HTTP endpoint on the main runtime are never queued behind a query's tasks and keep their
/// latency while queries saturate the CPU (docs/workload.md).
pub(crate) struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    /// `threads` workers (0: the CPU count), each `nice` steps below the process's operating
    /// system priority (`query.thread_nice`), so the pipelines' threads get the cores first.
    pub(crate) fn start(threads: usize, nice: i32) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            threads
        };
        let runtime = tarn_core::priority::runtime_builder("tarn-query", threads, nice)
            .build()
            .context("cannot start the query runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("query runtime running").handle()
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from async code would block; its tasks have stopped by now.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Endpoints {
    /// Starts both endpoints on the bound listeners; `cdc` is the status `/cdc/status` serves.
    pub(crate) async fn start(
        config: &Config,
        session: TarnSession,
        metrics: PrometheusHandle,
        cdc: Option<Arc<PipelineStatus>>,
        jobs: Option<Arc<crate::jobs::Jobs>>,
        (pg, http): (TcpListener, TcpListener),
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let (pg_addr, http_addr) = (pg.local_addr()?, http.local_addr()?);
        let workload = tarn_query::workload::Workload::new(
            tarn_query::workload::WorkloadSettings::from_config(&config.query, &config.data_dir)?,
        )?;
        let session = session.with_workload(&workload);
        tracing::info!(
            memory_limit = %workload.settings().memory_limit.map_or_else(|| "unlimited".to_string(), tarn_query::workload::human_bytes),
            max_concurrent = workload.settings().max_concurrent,
            queue_size = workload.settings().queue_size,
            spill_dir = %workload.settings().spill_dir.display(),
            "query workload limits"
        );
        let query_runtime = QueryRuntime::start(config.query.threads, config.query.thread_nice)?;
        let tls = load_tls(config)?;
        let reload_task = match (&tls, &config.server.tls) {
            (Some(tls), Some(settings)) => {
                let every = tarn_core::config::parse_duration(
                    "server.tls.reload_interval",
                    &settings.reload_interval,
                )?;
                Some(
                    tls.clone()
                        .watch(Some(every), shutdown.clone())
                        .context("cannot install the SIGHUP handler that reloads TLS certificates")?,
                )
            }
            _ => None,
        };
        let state_cdc = cdc.clone();
        let console_jobs = jobs.clone();
        let state = HttpState {
            metrics,
            session: session.clone(),
            cdc,
        };
        // One authenticator for every endpoint: one key set per issuer, fetched once.
        let authenticator = Arc::new(tarn_auth::Authenticator::new(&config.auth)?);
        let open = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_page))
            .with_state(state.clone());
        let mut guarded = Router::new()
            .route("/cdc/status", get(cdc_status))
            .with_state(state);
        if let Some(jobs) = jobs {
            guarded = guarded.merge(crate::jobs::api::router(jobs, session.governance().cloned()));
        }
        if let Some(catalog) = rest_catalog(config, &session) {
            guarded = guarded.nest("/iceberg", catalog);
        }
        // With OIDC on, the APIs that show or change data take a bearer token (health,
        // readiness and metrics stay open for probes and scrapers).
        if config.auth.oidc.is_some() {
            let check = Arc::new(TokenCheck {
                auth: authenticator.clone(),
                allow_plaintext: config.auth.allow_plaintext_passwords,
            });
            guarded = guarded.layer(axum::middleware::from_fn_with_state(check, require_token));
        }
        let mut app = open.merge(guarded);
        // The console logs its users in itself (a login cookie, not a bearer token).
        if let Some(console) = crate::console::router(crate::console::ConsoleSetup {
            config,
            session: session.clone(),
            workload: workload.clone(),
            query_runtime: query_runtime.handle().clone(),
            tls: tls.is_some(),
            cdc: state_cdc,
            jobs: console_jobs,
            auth: authenticator.clone(),
        })
        .await?
        {
            app = app.merge(console);
        }
        let http_task = tokio::spawn({
            let (tls, shutdown) = (tls.clone(), shutdown.clone());
            async move {
                crate::http::serve(http, app, tls, shutdown)
                    .await
                    .context("the HTTP endpoint failed")
            }
        });
        let pg_task = query_runtime.handle().spawn({
            let options = tarn_pgwire::ServeOptions {
                auth: config.auth.clone(),
                authenticator: Some(authenticator),
                max_connections: config.server.max_connections,
                tls: tls.clone(),
                require_tls: config.server.tls.as_ref().is_some_and(|t| t.require),
                workload,
                proxy_protocol_from: config.server.proxy_networks()?,
            };
            let shutdown = shutdown.clone();
            async move {
                tarn_pgwire::serve(pg, session, options, shutdown)
                    .await
                    .context("the Postgres wire endpoint failed")
            }
        });
        Ok(Self {
            pg_addr,
            http_addr,
            tls: tls.is_some(),
            http_task,
            pg_task,
            reload_task,
            query_runtime,
        })
    }

    /// Resolves when an endpoint stops by itself (before shutdown: an error or a panic).
    pub(crate) async fn stopped(&mut self) -> Result<()> {
        let result = tokio::select! {
            r = &mut self.http_task => r,
            r = &mut self.pg_task => r,
        };
        result.context("an endpoint task panicked")??;
        anyhow::bail!("an endpoint stopped unexpectedly")
    }

    /// Waits for both endpoints to finish after their shutdown token fired.
    pub(crate) async fn join(self) {
        let _ = self.http_task.await;
        let _ = self.pg_task.await;
        if let Some(reload) = self.reload_task {
            let _ = reload.await;
        }
        drop(self.query_runtime);
    }
}

/// `server.tls`'s certificates, read now: a file that is missing, unreadable or invalid stops
/// the start, naming the key and the file.
fn load_tls(config: &Config) -> Result<Option<Arc<tarn_tls::ServerTls>>> {
    let Some(settings) = &config.server.tls else {
        return Ok(None);
    };
    let tls = tarn_tls::ServerTls::load(tarn_tls::TlsFiles::from_config(settings))
        .context("cannot set up TLS on the listeners")?;
    tracing::info!(
        cert = %settings.cert.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
        client_certificates = tls.verifies_clients(),
        require = settings.require,
        "TLS on the Postgres wire and HTTP endpoints"
    );
    Ok(Some(Arc::new(tls)))
}

/// What [`require_token`] checks a bearer token with.
struct TokenCheck {
    auth: Arc<tarn_auth::Authenticator>,
    /// `auth.allow_plaintext_passwords`.
    allow_plaintext: bool,
}

/// The principal of `authorization` (an `Authorization` header's value), which must be
/// `Bearer TOKEN` with a token `auth` accepts, or why not. A token that came over plain TCP
/// from a non-loopback address is refused unread ([`tarn_auth::secret_may_cross`]) unless
/// `allow_plaintext`. Shared by [`require_token`] and the console's APIs.
pub(crate) async fn bearer_principal(
    auth: &tarn_auth::Authenticator,
    allow_plaintext: bool,
    authorization: &str,
    transport: Option<crate::http::Transport>,
) -> Result<tarn_auth::Principal, String> {
    match authorization.strip_prefix("Bearer ").map(str::trim) {
        Some(token) if !token.is_empty() && token != "None" => {
            // Every request comes through `http::serve`, which says how it arrived; one that
            // does not say is treated as plain TCP from elsewhere.
            let (peer, encrypted) = transport.map_or((std::net::Ipv4Addr::UNSPECIFIED.into(), false), |t| {
                (t.peer.ip(), t.encrypted)
            });
            match tarn_auth::secret_may_cross(peer, encrypted, allow_plaintext) {
                Ok(()) => auth.token(token).await.map_err(|e| e.to_string()),
                Err(refused) => Err(refused.to_string()),
            }
        }
        _ => Err("this endpoint needs an OIDC bearer token (Authorization: Bearer TOKEN)".to_string()),
    }
}

/// Lets a request through with a valid bearer token (its [`tarn_auth::Principal`] in the
/// request's extensions), or answers 401 with the reason, in the Iceberg REST error shape
/// (which REST clients show) and a `WWW-Authenticate` header. A token that came over plain
/// TCP from a non-loopback address is refused unread ([`tarn_auth::secret_may_cross`]).
async fn require_token(
    State(check): State<Arc<TokenCheck>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let transport = request.extensions().get::<crate::http::Transport>().copied();
    let outcome = bearer_principal(&check.auth, check.allow_plaintext, &header, transport).await;
    match outcome {
        Ok(principal) => {
            request.extensions_mut().insert(Arc::new(principal));
            next.run(request).await
        }
        Err(reason) => {
            metrics::counter!("tarn_http_auth_failures_total").increment(1);
            let body = serde_json::json!({
                "error": {"message": reason, "type": "NotAuthorizedException", "code": 401}
            });
            (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(body),
            )
                .into_response()
        }
    }
}

/// Binds the listener of `key` (`server.pg_listen`, `server.http_listen`).
pub(crate) async fn bind(addr: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Refuses what `tarn serve` must not run with: `rest_catalog.vend_credentials` beside a policy
/// (`[policy]`). Vended credentials are storage.s3's static keys, good for every file of the
/// bucket, so a principal the policy lets load one table could read the files of every other
/// table, masked, filtered or hidden (the audit trail's too), around the policy.
pub fn check_config(config: &Config) -> Result<()> {
    let policy = config.policy.file.is_some() || config.policy.opa_url.is_some();
    if config.rest_catalog.enabled && config.rest_catalog.vend_credentials && policy {
        let key = if config.policy.file.is_some() {
            "policy.file"
        } else {
            "policy.opa_url"
        };
        anyhow::bail!(
            "rest_catalog.vend_credentials = true and {key} are both set: vended credentials are storage.s3's keys to the whole bucket, which would let any client that may load one table read every table's files around the policy; set rest_catalog.vend_credentials = false (docs/governance.md)"
        );
    }
    Ok(())
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: &Config, session: TarnSession, metrics: PrometheusHandle) -> Result<()> {
    check_config(config)?;
    let shutdown = CancellationToken::new();
    // Before the ports open: a client (or an orchestrator) that sees them open may signal at
    // once, and must get a clean shutdown, not the default action of SIGTERM.
    let mut signals = ShutdownSignals::install();
    let pg = bind(&config.server.pg_listen, "server.pg_listen").await?;
    let http = bind(&config.server.http_listen, "server.http_listen").await?;
    if config.auth.users.is_empty() && !config.auth.trust_loopback {
        tracing::warn!(
            "no users configured and auth.trust_loopback is off: nobody can connect; add [[auth.users]] or set auth.trust_loopback = true"
        );
    }
    let http_addr = http.local_addr()?;
    let pg_addr = pg.local_addr()?;
    if config.server.tls.is_none()
        && !config.auth.allow_plaintext_passwords
        && !(pg_addr.ip().is_loopback() && http_addr.ip().is_loopback())
    {
        tracing::warn!(
            %pg_addr,
            %http_addr,
            "server.tls is not set: clients on other machines cannot log in with a password or token over plain TCP; configure server.tls (docs/serving.md, \"TLS\")"
        );
    }
    if config.rest_catalog.enabled && !http_addr.ip().is_loopback() && config.auth.oidc.is_none() {
        tracing::warn!(
            %http_addr,
            "the Iceberg REST catalog (/iceberg) takes requests without a token when auth.oidc is not set: whoever reaches {http_addr} can change every table; set [auth.oidc], keep server.http_listen private or set rest_catalog.enabled = false"
        );
    }
    if config.rest_catalog.enabled && config.rest_catalog.vend_credentials {
        if config.storage.s3.access_key_id.is_some() && config.storage.s3.secret_access_key.is_some() {
            tracing::warn!(
                "rest_catalog.vend_credentials is on: every client of the Iceberg REST catalog that asks for vended credentials gets storage.s3's keys, with access to the whole bucket"
            );
        } else {
            tracing::warn!(
                "rest_catalog.vend_credentials is on but storage.s3 has no access_key_id and secret_access_key: no credentials are vended"
            );
        }
    }
    tracing::info!(
        pg = %pg.local_addr()?,
        http = %http_addr,
        iceberg_rest = %if config.rest_catalog.enabled {
            let scheme = if config.server.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{http_addr}/iceberg")
        } else {
            "off".to_string()
        },
        catalog = %tarn_core::config::redact_url(&config.catalog_url()),
        warehouse = %config.warehouse_url(),
        "tarn serving"
    );
    // The CDC pipeline, when configured, runs beside the endpoints, and publishes its pending
    // changes for their `latest` reads (tarn_query::bridge).
    let read_mode = config
        .query
        .read_mode
        .parse::<tarn_query::bridge::ReadMode>()
        .map_err(|e| anyhow::anyhow!("query.read_mode: {e}"))?;
    session.bridge().set_default_mode(read_mode);
    let mut pipeline = config.cdc.source.as_ref().map(|_| {
        tracing::info!(pipeline = %config.cdc.pipeline, read_mode = %read_mode, "starting the CDC pipeline");
        let publisher = tarn_cdc::sink::PendingPublisher::for_pipeline(&config.cdc.pipeline);
        session.bridge().register(publisher.clone());
        // The endpoint's queries read pending changes: commits can wait for larger files.
        let mut config = config.clone();
        if read_mode == tarn_query::bridge::ReadMode::Latest {
            config.cdc.flush.interval = bridged_flush_interval(&config);
            tracing::info!(interval = %config.cdc.flush.interval,
                "the CDC pipeline's flush interval; queries here read its pending changes");
        }
        PipelineHandle::spawn_with(
            &config,
            session.lake().clone(),
            RunOptions {
                bridge: Some(publisher),
                // The endpoint's trail (closed at shutdown): the pipeline's commits beside
                // the statements'.
                audit: session.governance().and_then(|g| g.audit().cloned()),
                ..RunOptions::default()
            },
            shutdown.clone(),
        )
    });
    let pipeline_status = pipeline.as_ref().map(|p| p.status().clone());
    // DataHub, when configured: every change of the lake's metadata, pushed by a task of its own.
    if let Some(gms) = crate::datahub::Gms::from_config(config)? {
        tracing::info!(gms = ?config.datahub.gms_url, every = %config.datahub.interval, "pushing metadata changes to DataHub");
        tokio::spawn(crate::datahub::sync(
            session.lake().clone(),
            config.clone(),
            gms,
            shutdown.clone(),
        ));
    }
    // The jobs' API, and the scheduler (active in one replica at a time) unless turned off.
    let jobs = crate::jobs::Jobs::open(config, session.clone()).await?;
    let scheduler = config
        .jobs
        .scheduler
        .then(|| tokio::spawn(jobs.clone().scheduler(shutdown.clone())));
    let closing = session.clone();
    let mut endpoints = Endpoints::start(
        config,
        session,
        metrics,
        pipeline_status,
        Some(jobs),
        (pg, http),
        &shutdown,
    )
    .await?;
    // Run until a signal, or until an endpoint or the pipeline stops by itself (an error).
    let cdc_done = async {
        match pipeline.as_mut() {
            Some(p) => p.finished().await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        () = signals.recv() => {
            tracing::info!("shutting down");
            None
        }
        r = endpoints.stopped() => Some(r),
        r = cdc_done => Some(r.context("the CDC pipeline failed").and_then(|()| {
            anyhow::bail!("the CDC pipeline stopped unexpectedly")
        })),
    };
    shutdown.cancel();
    if let Some(result) = early {
        result?;
    }
    let drain = async {
        endpoints.join().await;
        if let Some(s) = scheduler
            && let Ok(Err(e)) = s.await
        {
            tracing::error!(error = %format!("{e:#}"), "scheduler");
        }
        if let Some(p) = pipeline.as_mut()
            && let Err(e) = p.finished().await
        {
            tracing::error!(error = %e, "CDC pipeline");
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("endpoints did not stop within 10s");
    }
    crate::cli::close_session(&closing).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    ShutdownSignals::install().recv().await
}

/// SIGINT and SIGTERM, caught from [`ShutdownSignals::install`] on (a signal before
/// [`ShutdownSignals::recv`] is awaited is not lost).
pub(crate) struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Catches the signals from now on.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
        }
    }

    /// Resolves on the first of them.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The flush interval of a CDC pipeline inside `tarn serve` whose queries read `latest`:
/// `cdc.flush.bridged_interval` when it was set, else `cdc.flush.interval` when that was set
/// (a configuration that asks for fast commits keeps them), else the bridged default (the
/// endpoint's queries see changes before they are committed, so commits wait for larger files).
fn bridged_flush_interval(config: &Config) -> String {
    let defaults = Config::defaults(&config.data_dir).cdc.flush;
    let flush = &config.cdc.flush;
    if flush.bridged_interval == defaults.bridged_interval && flush.interval != defaults.interval {
        flush.interval.clone()
    } else {
        flush.bridged_interval.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A route behind [`require_token`] with an issuer nobody listens on: a token that gets as
    /// far as validation fails with "cannot reach"; one refused for its transport never does.
    async fn status_and_message(peer: &str, encrypted: bool, allow_plaintext: bool) -> (StatusCode, String) {
        let port = tarn_test_utils::free_port();
        let auth = tarn_core::config::AuthConfig {
            oidc: Some(tarn_core::config::OidcConfig {
                issuer: format!("http://127.0.0.1:{port}/realms/data"),
                audience: "tarn".into(),
                timeout: "2s".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let check = Arc::new(TokenCheck {
            auth: Arc::new(tarn_auth::Authenticator::new(&auth).unwrap()),
            allow_plaintext,
        });
        let app = Router::new()
            .route("/cdc/status", get(|| async { "through" }))
            .layer(axum::middleware::from_fn_with_state(check, require_token));
        let mut request = axum::http::Request::get("/cdc/status")
            .header(
                "authorization",
                "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            )
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(crate::http::Transport {
            peer: peer.parse().unwrap(),
            encrypted,
        });
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_bearer_token_over_plain_http_from_another_machine_is_refused_unread() {
        let (status, body) = status_and_message("10.1.2.3:40000", false, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body.contains("must not cross a connection without TLS from 10.1.2.3")
                && body.contains("auth.allow_plaintext_passwords"),
            "{body}"
        );
        // Over TLS, from loopback, or where allowed, the token goes on to the issuer.
        for (peer, encrypted, allow) in [
            ("10.1.2.3:40000", true, false),
            ("127.0.0.1:40000", false, false),
            ("[::1]:40000", false, false),
            ("10.1.2.3:40000", false, true),
        ] {
            let (status, body) = status_and_message(peer, encrypted, allow).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{peer}");
            assert!(!body.contains("without TLS"), "{peer}: {body}");
            assert!(body.contains("issuer"), "{peer}: {body}");
        }
    }
}
