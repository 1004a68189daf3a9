//! A test OIDC issuer: a discovery document and a JWKS served over HTTPS on loopback (a CA
//! made on the spot), and tokens signed with fixed RSA and EC keys (`oidc-keys/`), so tests of
//! token logins talk to a real issuer over the real protocol. Keycloak itself does not run on
//! the test machines; the issuer serves what Keycloak's realm endpoints serve (its URL layout,
//! its `realm_access` / `resource_access` role claims), and the authorization code flow with
//! PKCE of a public client: `.../protocol/openid-connect/auth` hands a code for the user
//! [`Issuer::login_as`] names (as Keycloak does for a browser that already has a session
//! there) and `.../token` exchanges it, checking the S256 verifier, the client and the
//! redirect URI, for an access token of [`Issuer::claims`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use sha2::Digest;

/// The first RSA key (kid of your choice).
pub const RSA1: &str = include_str!("../oidc-keys/rsa1.pem");
/// A second RSA key: a rotated key, or a forger's.
pub const RSA2: &str = include_str!("../oidc-keys/rsa2.pem");
/// An EC P-256 key.
pub const EC1: &str = include_str!("../oidc-keys/ec1.pem");

/// A signing key of the issuer: its kid, algorithm and private key.
#[derive(Clone)]
pub struct Signer {
    /// The key id.
    pub kid: &'static str,
    /// The algorithm.
    pub alg: Algorithm,
    /// The private key.
    pub key: EncodingKey,
}

impl Signer {
    /// An RS256 key.
    pub fn rsa(kid: &'static str, pem: &str) -> Self {
        Self {
            kid,
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        }
    }

    /// An ES256 key.
    pub fn ec(kid: &'static str, pem: &str) -> Self {
        Self {
            kid,
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        }
    }

    /// Its public JWK.
    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.to_string());
        jwk
    }

    /// A token of `claims`, signed.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// The test issuer: its URL, the CA file to trust, the keys it publishes (changeable), and
/// how often its keys were fetched.
pub struct Issuer {
    /// The issuer URL (`iss`).
    pub url: String,
    /// The CA certificate of its HTTPS, PEM.
    pub ca_file: std::path::PathBuf,
    /// The keys it publishes now.
    pub published: Arc<Mutex<Vec<Signer>>>,
    /// How often its keys were fetched.
    pub fetches: Arc<AtomicUsize>,
    /// Who the authorization endpoint logs in (the user of the browser's session at the
    /// issuer).
    pub login_as: Arc<Mutex<String>>,
    /// Codes handed out and exchanged, for tests to count.
    pub codes_issued: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// A code handed out: its PKCE challenge, client, redirect URI and user.
struct Grant {
    challenge: String,
    client_id: String,
    redirect_uri: String,
    user: String,
}

/// The state of the code flow: codes not yet exchanged.
#[derive(Clone)]
struct CodeFlow {
    url: String,
    published: Arc<Mutex<Vec<Signer>>>,
    login_as: Arc<Mutex<String>>,
    issued: Arc<AtomicUsize>,
    grants: Arc<Mutex<HashMap<String, Grant>>>,
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `GET .../auth`: checks the request and sends the browser back with a code.
async fn authorize(flow: CodeFlow, q: HashMap<String, String>) -> Response {
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    if param("response_type") != "code" {
        return oauth_error("unsupported_response_type", "response_type must be code");
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() < 43 {
        return oauth_error(
            "invalid_request",
            "PKCE with code_challenge_method S256 is required",
        );
    }
    let redirect_uri = param("redirect_uri");
    let Ok(mut back) = url::Url::parse(&redirect_uri) else {
        return oauth_error("invalid_request", "redirect_uri is not a URL");
    };
    let code = format!("code-{}", flow.issued.fetch_add(1, Ordering::SeqCst) + 1);
    let user = flow.login_as.lock().unwrap().clone();
    flow.grants.lock().unwrap().insert(
        code.clone(),
        Grant {
            challenge: param("code_challenge"),
            client_id: param("client_id"),
            redirect_uri,
            user,
        },
    );
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &param("state"));
    Redirect::to(back.as_str()).into_response()
}

/// `POST .../token`: a code (once) for an access token, when verifier, client and redirect
/// URI match.
async fn token(flow: CodeFlow, body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let param = |k: &str| form.get(k).cloned().unwrap_or_default();
    if param("grant_type") != "authorization_code" {
        return oauth_error("unsupported_grant_type", "grant_type must be authorization_code");
    }
    let Some(grant) = flow.grants.lock().unwrap().remove(&param("code")) else {
        return oauth_error("invalid_grant", "unknown or used code");
    };
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(param("code_verifier").as_bytes()));
    if computed != grant.challenge {
        return oauth_error("invalid_grant", "PKCE verification failed");
    }
    if param("client_id") != grant.client_id || param("redirect_uri") != grant.redirect_uri {
        return oauth_error(
            "invalid_grant",
            "client_id or redirect_uri differ from the authorization request",
        );
    }
    let signer = flow.published.lock().unwrap()[0].clone();
    let now = now();
    let claims = json!({
        "iss": flow.url,
        "aud": ["tarn", "account"],
        "azp": grant.client_id,
        "sub": format!("sub-{}", grant.user),
        "preferred_username": grant.user,
        "exp": now + 60,
        "nbf": now - 5,
        "iat": now - 5,
        "realm_access": {"roles": ["analyst", "offline_access"]},
        "resource_access": {"tarn": {"roles": ["reader"]}},
    });
    axum::Json(json!({
        "access_token": signer.sign(&claims),
        "token_type": "Bearer",
        "expires_in": 60,
    }))
    .into_response()
}

/// Starts an issuer publishing `keys`.
pub async fn issuer(keys: Vec<Signer>) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/realms/tarn",
        listener.local_addr().unwrap().port()
    );
    let published = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (doc_url, jwks_keys, jwks_fetches) = (url.clone(), published.clone(), fetches.clone());
    let login_as = Arc::new(Mutex::new("ana".to_string()));
    let codes_issued = Arc::new(AtomicUsize::new(0));
    let flow = CodeFlow {
        url: url.clone(),
        published: published.clone(),
        login_as: login_as.clone(),
        issued: codes_issued.clone(),
        grants: Arc::new(Mutex::new(HashMap::new())),
    };
    let token_flow = flow.clone();
    let app = Router::new()
        .route(
            "/realms/tarn/.well-known/openid-configuration",
            get(move || {
                let url = doc_url.clone();
                async move {
                    axum::Json(json!({
                        "issuer": url,
                        "jwks_uri": format!("{url}/protocol/openid-connect/certs"),
                        "authorization_endpoint": format!("{url}/protocol/openid-connect/auth"),
                        "token_endpoint": format!("{url}/protocol/openid-connect/token"),
                        "code_challenge_methods_supported": ["S256"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }))
                }
            }),
        )
        .route(
            "/realms/tarn/protocol/openid-connect/certs",
            get(move || {
                let keys: Vec<Jwk> = jwks_keys.lock().unwrap().iter().map(Signer::jwk).collect();
                jwks_fetches.fetch_add(1, Ordering::SeqCst);
                async move { axum::Json(json!({ "keys": keys })) }
            }),
        )
        .route(
            "/realms/tarn/protocol/openid-connect/auth",
            get(move |Query(q): Query<HashMap<String, String>>| authorize(flow.clone(), q)),
        )
        .route(
            "/realms/tarn/protocol/openid-connect/token",
            post(move |body: axum::body::Bytes| token(token_flow.clone(), body)),
        );
    // HTTPS with a CA made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Issuer {
        url,
        ca_file,
        published,
        fetches,
        login_as,
        codes_issued,
        _dir: dir,
    }
}

impl Issuer {
    /// Claims of a good token for `user` (audience `tarn`, realm role `analyst`, client role
    /// `reader`), valid for a minute.
    pub fn claims(&self, user: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "aud": ["tarn", "account"],
            "sub": "0b2f-1",
            "preferred_username": user,
            "exp": now + 60,
            "nbf": now - 5,
            "iat": now - 5,
            "realm_access": {"roles": ["analyst", "offline_access"]},
            "resource_access": {"tarn": {"roles": ["reader"]}, "account": {"roles": ["manage-account"]}},
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
