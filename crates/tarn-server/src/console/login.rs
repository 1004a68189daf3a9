//! Logging in to the console, and the login sessions.
//!
//! - **Password**: a configured user's name and password (`[[auth.users]]`), checked by the
//!   same [`tarn_auth::Authenticator`] whose password the Postgres wire endpoint's SCRAM
//!   exchange proves; refused over plain HTTP from another machine unless
//!   `auth.allow_plaintext_passwords` ([`tarn_auth::secret_may_cross`]).
//! - **OIDC** (when `[auth.oidc]` is set): the authorization code flow with PKCE (S256)
//!   against the issuer's discovery document, as a public client (`console.oidc_client_id`,
//!   default `auth.oidc.audience`); the access token the issuer hands back is validated as any
//!   bearer token is, so the principal (user and groups) is the one the APIs see.
//!
//! A login is a random 256-bit id in a cookie (`HttpOnly`, `SameSite=Lax`, `Secure` over
//! TLS, `Path=/console`), mapped in memory to its principal until `console.session_ttl` after
//! the login; then the browser is sent back to the login page with a message. Logins are
//! per process: behind a load balancer, keep a browser on one replica (sticky sessions).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use sha2::Digest;
use tarn_auth::Principal;
use tarn_core::config::{ConsoleConfig, OidcConfig};

use super::{Console, Frame, render};

/// The cookie holding the login's id.
const COOKIE: &str = "tarn_console";

/// How long an OIDC login may take between leaving for the issuer and coming back.
const OIDC_PENDING_TTL: Duration = Duration::from_secs(600);

/// A random 256-bit value, base64url.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The logins of this process.
pub(crate) struct Sessions {
    ttl: Duration,
    logins: Mutex<HashMap<String, (Arc<Principal>, Instant)>>,
}

/// Why a request has no principal.
enum NoLogin {
    /// No cookie, or one this process does not know.
    Missing,
    /// The login ran out.
    Expired,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            logins: Mutex::new(HashMap::new()),
        }
    }

    fn start(&self, principal: Principal) -> String {
        let id = random_token();
        let mut logins = self.logins.lock().expect("console sessions poisoned");
        let now = Instant::now();
        logins.retain(|_, (_, expires)| *expires > now);
        logins.insert(id.clone(), (Arc::new(principal), now + self.ttl));
        id
    }

    fn get(&self, id: &str) -> Result<Arc<Principal>, NoLogin> {
        let mut logins = self.logins.lock().expect("console sessions poisoned");
        match logins.get(id) {
            Some((principal, expires)) if *expires > Instant::now() => Ok(principal.clone()),
            Some(_) => {
                logins.remove(id);
                Err(NoLogin::Expired)
            }
            None => Err(NoLogin::Missing),
        }
    }

    fn end(&self, id: &str) {
        self.logins.lock().expect("console sessions poisoned").remove(id);
    }
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

impl Console {
    fn set_cookie(&self, id: &str, max_age: Duration) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!(
            "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            max_age.as_secs()
        )
    }

    fn principal_of(&self, parts: &Parts) -> Result<Arc<Principal>, NoLogin> {
        let id = cookie(&parts.headers, COOKIE).ok_or(NoLogin::Missing)?;
        self.sessions.get(id)
    }
}

/// The logged-in principal of a page request; without one, the browser goes to the login
/// page (with a message when the login ran out) and comes back after.
pub(crate) struct Caller(pub(crate) Arc<Principal>);

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Response> {
        match console.principal_of(parts) {
            Ok(p) => Ok(Caller(p)),
            Err(why) => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/console/catalog", |p| p.as_str());
                let next = if parts.method == axum::http::Method::GET {
                    next
                } else {
                    "/console/catalog"
                };
                let mut target = url::Url::parse("http://console/console/login").expect("static URL");
                target.query_pairs_mut().append_pair("next", next);
                if matches!(why, NoLogin::Expired) {
                    target
                        .query_pairs_mut()
                        .append_pair("message", "Your session has expired: log in again.");
                }
                let location = &target[url::Position::BeforePath..];
                Err(Redirect::to(location).into_response())
            }
        }
    }
}

/// The principal of a script's request: with an `Authorization` header, its bearer token's
/// (validated as the other HTTP APIs validate it, [`crate::serve::bearer_principal`], the
/// login cookie then not looked at); else the logged-in principal. Without one, 401 with the
/// reason.
pub(crate) struct ApiCaller(pub(crate) Arc<Principal>);

impl FromRequestParts<Arc<Console>> for ApiCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Response> {
        if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
            let authorization = authorization.to_str().unwrap_or_default();
            let transport = parts.extensions.get::<crate::http::Transport>().copied();
            return match crate::serve::bearer_principal(
                &console.auth,
                console.allow_plaintext,
                authorization,
                transport,
            )
            .await
            {
                Ok(principal) => Ok(ApiCaller(Arc::new(principal))),
                Err(reason) => {
                    metrics::counter!("tarn_http_auth_failures_total").increment(1);
                    let mut response = super::json_error(StatusCode::UNAUTHORIZED, reason);
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static("Bearer"),
                    );
                    Err(response)
                }
            };
        }
        match console.principal_of(parts) {
            Ok(p) => Ok(ApiCaller(p)),
            Err(NoLogin::Expired) => Err(super::json_error(
                StatusCode::UNAUTHORIZED,
                "your session has expired: log in again",
            )),
            Err(NoLogin::Missing) => Err(super::json_error(
                StatusCode::UNAUTHORIZED,
                "not logged in to the console",
            )),
        }
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    frame: Frame,
    message: Option<String>,
    error: Option<String>,
    next: String,
    oidc: bool,
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    message: Option<String>,
    error: Option<String>,
}

/// Only a path of the console is a place to go back to after logging in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/console/catalog".to_string(),
    }
}

fn login_page(
    console: &Console,
    status: StatusCode,
    next: String,
    message: Option<String>,
    error: Option<String>,
) -> Response {
    let page = LoginPage {
        frame: Frame {
            user: String::new(),
            nav: "login",
        },
        message,
        error,
        next,
        oidc: console.oidc.is_some(),
    };
    (status, render(&page)).into_response()
}

/// `GET /console/login`.
pub(crate) async fn page(State(console): State<Arc<Console>>, Query(q): Query<LoginQuery>) -> Response {
    login_page(
        &console,
        StatusCode::OK,
        safe_next(q.next.as_deref()),
        q.message,
        q.error,
    )
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    user: String,
    password: String,
    next: Option<String>,
}

/// `POST /console/login`: a configured user's password.
pub(crate) async fn password(
    State(console): State<Arc<Console>>,
    transport: Option<axum::extract::Extension<crate::http::Transport>>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let (peer, encrypted) = transport.map_or((std::net::Ipv4Addr::UNSPECIFIED.into(), false), |t| {
        (t.peer.ip(), t.encrypted)
    });
    if let Err(refused) = tarn_auth::secret_may_cross(peer, encrypted, console.allow_plaintext) {
        metrics::counter!("tarn_console_logins_total", "method" => "password", "outcome" => "refused")
            .increment(1);
        return login_page(
            &console,
            StatusCode::FORBIDDEN,
            next,
            None,
            Some(refused.to_string()),
        );
    }
    // Tokens log in through the OIDC flow, not the password field.
    let outcome = if tarn_auth::looks_like_jwt(&form.password) && !console.auth.is_user(&form.user) {
        Err(tarn_auth::AuthError::BadPassword(form.user.clone()))
    } else {
        console.auth.password(&form.user, &form.password).await
    };
    match outcome {
        Ok(principal) => {
            metrics::counter!("tarn_console_logins_total", "method" => "password", "outcome" => "ok")
                .increment(1);
            tracing::info!(user = %principal.user, "console login");
            let id = console.sessions.start(principal);
            (
                [(header::SET_COOKIE, console.set_cookie(&id, console.sessions.ttl))],
                Redirect::to(&next),
            )
                .into_response()
        }
        Err(e) => {
            metrics::counter!("tarn_console_logins_total", "method" => "password", "outcome" => "refused")
                .increment(1);
            tracing::info!(user = %form.user, error = %e, "console login refused");
            login_page(
                &console,
                StatusCode::UNAUTHORIZED,
                next,
                None,
                Some(e.to_string()),
            )
        }
    }
}

/// `POST /console/logout`.
pub(crate) async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        console.sessions.end(id);
    }
    (
        [(header::SET_COOKIE, console.set_cookie("", Duration::ZERO))],
        Redirect::to("/console/login?message=Logged+out."),
    )
        .into_response()
}

/// The console as a public OIDC client of `auth.oidc.issuer`.
pub(crate) struct OidcClient {
    issuer: String,
    client_id: String,
    http: reqwest::Client,
    /// Logins under way: state → (PKCE verifier, redirect URI, where to go after, since).
    pending: Mutex<HashMap<String, (String, String, String, Instant)>>,
}

#[derive(Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

impl OidcClient {
    pub(crate) fn new(oidc: &OidcConfig, console: &ConsoleConfig) -> anyhow::Result<Self> {
        let timeout = tarn_core::config::parse_duration("auth.oidc.timeout", &oidc.timeout)?;
        let mut http = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = &oidc.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("key `auth.oidc.ca_file`: cannot read {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Self {
            issuer: oidc.issuer.trim_end_matches('/').to_string(),
            client_id: console
                .oidc_client_id
                .clone()
                .unwrap_or_else(|| oidc.audience.clone()),
            http: http.build()?,
            pending: Mutex::new(HashMap::new()),
        })
    }

    async fn endpoints(&self) -> anyhow::Result<Endpoints> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the OIDC issuer {} ({url}): {e}", self.issuer))?;
        if !response.status().is_success() {
            anyhow::bail!(
                "the OIDC issuer {} answered {} for its discovery document",
                self.issuer,
                response.status()
            );
        }
        response.json().await.map_err(|e| {
            anyhow::anyhow!(
                "the OIDC issuer {}'s discovery document has no authorization_endpoint and token_endpoint: {e}",
                self.issuer
            )
        })
    }
}

/// The console's own address as the browser reached it, for the redirect URI.
fn origin(console: &Console, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if console.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// `GET /console/oidc/start`: off to the issuer's login with a fresh state and PKCE pair.
pub(crate) async fn oidc_start(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let Some(oidc) = &console.oidc else {
        return login_page(
            &console,
            StatusCode::NOT_FOUND,
            next,
            None,
            Some("OIDC login is not configured ([auth.oidc])".into()),
        );
    };
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            return login_page(
                &console,
                StatusCode::BAD_GATEWAY,
                next,
                None,
                Some(format!("{e:#}")),
            );
        }
    };
    let (state, verifier) = (random_token(), random_token());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let redirect_uri = format!("{}/console/oidc/callback", origin(&console, &headers));
    let Ok(mut target) = url::Url::parse(&endpoints.authorization_endpoint) else {
        return login_page(
            &console,
            StatusCode::BAD_GATEWAY,
            next,
            None,
            Some(format!(
                "the OIDC issuer's authorization_endpoint {:?} is not a URL",
                endpoints.authorization_endpoint
            )),
        );
    };
    target
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    {
        let mut pending = oidc.pending.lock().expect("pending logins poisoned");
        pending.retain(|_, (.., since)| since.elapsed() < OIDC_PENDING_TTL);
        pending.insert(state, (verifier, redirect_uri, next, Instant::now()));
    }
    Redirect::to(target.as_str()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

/// `GET /console/oidc/callback`: the code exchanged for a token with the PKCE verifier; the
/// token validated like a bearer token; a login started.
pub(crate) async fn oidc_callback(
    State(console): State<Arc<Console>>,
    Query(q): Query<Callback>,
) -> Response {
    let fail = |status: StatusCode, message: String| {
        metrics::counter!("tarn_console_logins_total", "method" => "oidc", "outcome" => "refused")
            .increment(1);
        login_page(&console, status, "/console/catalog".into(), None, Some(message))
    };
    let Some(oidc) = &console.oidc else {
        return fail(
            StatusCode::NOT_FOUND,
            "OIDC login is not configured ([auth.oidc])".into(),
        );
    };
    if let Some(error) = q.error {
        let detail = q.error_description.map(|d| format!(": {d}")).unwrap_or_default();
        return fail(
            StatusCode::UNAUTHORIZED,
            format!("the OIDC issuer refused the login: {error}{detail}"),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the OIDC callback has no code and state".into(),
        );
    };
    let pending = oidc
        .pending
        .lock()
        .expect("pending logins poisoned")
        .remove(&state);
    let Some((verifier, redirect_uri, next, since)) = pending else {
        return fail(
            StatusCode::BAD_REQUEST,
            "this OIDC login is unknown or was already used: start again".into(),
        );
    };
    if since.elapsed() > OIDC_PENDING_TTL {
        return fail(
            StatusCode::BAD_REQUEST,
            "this OIDC login took too long: start again".into(),
        );
    }
    let endpoints = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    };
    let answer = oidc
        .http
        .post(&endpoints.token_endpoint)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", oidc.client_id.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await;
    let token = match answer {
        Ok(r) if r.status().is_success() => match r.json::<TokenAnswer>().await {
            Ok(t) => t.access_token,
            Err(e) => {
                return fail(
                    StatusCode::BAD_GATEWAY,
                    format!("the OIDC issuer's token answer has no access_token: {e}"),
                );
            }
        },
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return fail(
                StatusCode::UNAUTHORIZED,
                format!("the OIDC issuer refused the code ({status}): {body}"),
            );
        }
        Err(e) => {
            return fail(
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the OIDC issuer's token endpoint: {e}"),
            );
        }
    };
    match console.auth.token(&token).await {
        Ok(principal) => {
            metrics::counter!("tarn_console_logins_total", "method" => "oidc", "outcome" => "ok")
                .increment(1);
            tracing::info!(user = %principal.user, "console login over OIDC");
            let id = console.sessions.start(principal);
            (
                [(header::SET_COOKIE, console.set_cookie(&id, console.sessions.ttl))],
                Redirect::to(&next),
            )
                .into_response()
        }
        Err(e) => fail(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_places_to_return_to() {
        assert_eq!(safe_next(Some("/console/sql")), "/console/sql");
        for bad in [
            "https://evil.example/",
            "//evil.example/console",
            "/metrics",
            "/console\\x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/catalog", "{bad}");
        }
        assert_eq!(safe_next(None), "/console/catalog");
    }

    #[test]
    fn logins_expire() {
        let sessions = Sessions::new(Duration::ZERO);
        let id = sessions.start(Principal {
            user: "ana".into(),
            groups: vec![],
            method: tarn_auth::Method::Password,
        });
        assert!(matches!(sessions.get(&id), Err(NoLogin::Expired)));
        assert!(matches!(sessions.get(&id), Err(NoLogin::Missing)));
        assert_eq!(random_token().len(), 43);
    }
}
