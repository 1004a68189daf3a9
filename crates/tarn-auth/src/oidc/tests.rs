//! The validator against a test OIDC issuer: a discovery document and a JWKS served over
//! HTTPS on loopback (a CA made on the spot), tokens signed with fixed RSA and EC keys
//! (`tests/keys/`). Every refusal the issue lists, each with its own error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
use serde_json::json;

use super::*;

const RSA1: &str = include_str!("../../tests/keys/rsa1.pem");
const RSA2: &str = include_str!("../../tests/keys/rsa2.pem");
const EC1: &str = include_str!("../../tests/keys/ec1.pem");

/// A signing key of the issuer: its kid, algorithm and private key.
#[derive(Clone)]
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn rsa(kid: &'static str, pem: &str) -> Self {
        Self {
            kid,
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        }
    }

    fn ec(kid: &'static str, pem: &str) -> Self {
        Self {
            kid,
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.to_string());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// The test issuer: its URL, the CA file to trust, the keys it publishes (changeable), and
/// how often its keys were fetched.
struct Issuer {
    url: String,
    ca_file: std::path::PathBuf,
    published: Arc<Mutex<Vec<Signer>>>,
    fetches: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn issuer(keys: Vec<Signer>) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/realms/tarn",
        listener.local_addr().unwrap().port()
    );
    let published = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (doc_url, jwks_keys, jwks_fetches) = (url.clone(), published.clone(), fetches.clone());
    let app = Router::new()
        .route(
            "/realms/tarn/.well-known/openid-configuration",
            get(move || {
                let url = doc_url.clone();
                async move {
                    axum::Json(json!({
                        "issuer": url,
                        "jwks_uri": format!("{url}/protocol/openid-connect/certs"),
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
        _dir: dir,
    }
}

impl Issuer {
    fn config(&self) -> OidcConfig {
        OidcConfig {
            issuer: self.url.clone(),
            audience: "tarn".into(),
            ca_file: Some(self.ca_file.clone()),
            refresh_min: "0s".into(),
            ..OidcConfig::default()
        }
    }

    /// Claims of a good token for `user`, valid for a minute.
    fn claims(&self, user: &str) -> Value {
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn good_tokens_name_their_user_and_roles() {
    let rsa = Signer::rsa("rsa-1", RSA1);
    let ec = Signer::ec("ec-1", EC1);
    let issuer = issuer(vec![rsa.clone(), ec.clone()]).await;
    let v = Validator::new(&issuer.config()).unwrap();
    for signer in [&rsa, &ec] {
        let p = v.validate(&signer.sign(&issuer.claims("ana"))).await.unwrap();
        assert_eq!(p.user, "ana");
        // Realm roles and this client's roles; not another client's.
        assert_eq!(p.groups, ["analyst", "offline_access", "reader"]);
        assert_eq!(p.method, Method::Token);
    }
    // Keys are fetched once for both.
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
}

/// What a refused token's error must be.
type Expect = fn(&TokenError) -> bool;

#[tokio::test]
async fn bad_tokens_are_refused_each_with_its_reason() {
    let rsa = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let v = Validator::new(&issuer.config()).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = issuer.claims("ana");
        change(&mut c);
        rsa.sign(&c)
    };
    let cases: Vec<(&str, String, Expect)> = vec![
        ("expired", with(&|c| c["exp"] = json!(now() - 120)), |e| {
            matches!(e, TokenError::Expired)
        }),
        ("not yet valid", with(&|c| c["nbf"] = json!(now() + 120)), |e| {
            matches!(e, TokenError::NotYetValid)
        }),
        ("wrong audience", with(&|c| c["aud"] = json!("superset")), |e| {
            matches!(e, TokenError::Audience(_))
        }),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example/realms/tarn")),
            |e| matches!(e, TokenError::Issuer(_)),
        ),
        (
            "forged signature",
            Signer::rsa("rsa-1", RSA2).sign(&issuer.claims("ana")),
            |e| matches!(e, TokenError::Signature(_)),
        ),
        (
            "unknown kid",
            Signer::rsa("rsa-9", RSA2).sign(&issuer.claims("ana")),
            |e| matches!(e, TokenError::UnknownKey(k, _) if k == "rsa-9"),
        ),
        ("not a JWT", "hello".to_string(), |e| {
            matches!(e, TokenError::Malformed(_))
        }),
        (
            "no user",
            with(&|c| {
                c.as_object_mut().unwrap().remove("preferred_username");
                c.as_object_mut().unwrap().remove("sub");
            }),
            |e| matches!(e, TokenError::Claims(_)),
        ),
    ];
    // alg: none — a token anyone can make.
    let none_token = {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&issuer.claims("ana"))
        )
    };
    // HS256 signed with the RSA public key as a shared secret (the classic confusion attack).
    let hs_token = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &issuer.claims("ana"),
            &EncodingKey::from_secret(b"public key").unwrap(),
        )
        .unwrap()
    };
    for (what, token, expected) in cases.into_iter().chain([
        (
            "alg none",
            none_token,
            (|e: &TokenError| matches!(e, TokenError::Algorithm(_))) as fn(&TokenError) -> bool,
        ),
        ("HS256", hs_token, |e| matches!(e, TokenError::Algorithm(_))),
    ]) {
        let err = v.validate(&token).await.expect_err(what);
        assert!(expected(&err), "{what}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_fetches_are_rate_limited() {
    let old = Signer::rsa("rsa-1", RSA1);
    let new = Signer::rsa("rsa-2", RSA2);
    let issuer = issuer(vec![old.clone()]).await;
    let mut config = issuer.config();
    config.refresh_min = "1h".into();
    let v = Validator::new(&config).unwrap();
    v.validate(&old.sign(&issuer.claims("ana"))).await.unwrap();
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // The issuer rotates: within refresh_min the new kid is not fetched for.
    *issuer.published.lock().unwrap() = vec![new.clone()];
    let err = v.validate(&new.sign(&issuer.claims("ana"))).await.unwrap_err();
    assert!(matches!(err, TokenError::UnknownKey(..)), "{err}");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // With refresh allowed, an unknown kid fetches the keys again, once.
    *issuer.published.lock().unwrap() = vec![old.clone()];
    let v = Validator::new(&issuer.config()).unwrap();
    v.validate(&old.sign(&issuer.claims("ana"))).await.unwrap();
    let before = issuer.fetches.load(Ordering::SeqCst);
    *issuer.published.lock().unwrap() = vec![new.clone()];
    let p = v.validate(&new.sign(&issuer.claims("bo"))).await.unwrap();
    assert_eq!(p.user, "bo");
    v.validate(&new.sign(&issuer.claims("bo"))).await.unwrap();
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), before + 1);
    // The old key is gone with the rotation.
    let err = v.validate(&old.sign(&issuer.claims("ana"))).await.unwrap_err();
    assert!(matches!(err, TokenError::UnknownKey(..)), "{err}");
}

#[tokio::test]
async fn an_unreachable_issuer_refuses_and_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = OidcConfig {
        issuer: format!("https://127.0.0.1:{port}/realms/tarn"),
        audience: "tarn".into(),
        ..OidcConfig::default()
    };
    let v = Validator::new(&config).unwrap();
    let token =
        Signer::rsa("rsa-1", RSA1).sign(&json!({"iss": config.issuer, "aud": "tarn", "exp": now() + 60}));
    let err = v.validate(&token).await.unwrap_err();
    assert!(matches!(err, TokenError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach the OIDC issuer"), "{err}");
    // An issuer whose certificate is not trusted is unreachable too.
    let issuer = issuer(vec![Signer::rsa("rsa-1", RSA1)]).await;
    let mut untrusted = issuer.config();
    untrusted.ca_file = None;
    let v = Validator::new(&untrusted).unwrap();
    let err = v
        .validate(&Signer::rsa("rsa-1", RSA1).sign(&issuer.claims("ana")))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Unreachable { .. }), "{err}");
}
