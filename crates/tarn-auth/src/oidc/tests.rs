//! The validator against a test OIDC issuer: a discovery document and a JWKS served over
//! HTTPS on loopback (a CA made on the spot), tokens signed with fixed RSA and EC keys
//! (`tests/keys/`). Every refusal the issue lists, each with its own error.

use std::sync::atomic::Ordering;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tarn_test_utils::oidc::{EC1, Issuer, RSA1, RSA2, Signer, issuer, now};

use super::*;

/// The validator's config for `issuer`: audience `tarn`, keys fetched again at will.
fn config_for(issuer: &Issuer) -> OidcConfig {
    OidcConfig {
        issuer: issuer.url.clone(),
        audience: "tarn".into(),
        ca_file: Some(issuer.ca_file.clone()),
        refresh_min: "0s".into(),
        ..OidcConfig::default()
    }
}

#[tokio::test]
async fn good_tokens_name_their_user_and_roles() {
    let rsa = Signer::rsa("rsa-1", RSA1);
    let ec = Signer::ec("ec-1", EC1);
    let issuer = issuer(vec![rsa.clone(), ec.clone()]).await;
    let v = Validator::new(&config_for(&issuer)).unwrap();
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
    let v = Validator::new(&config_for(&issuer)).unwrap();
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
    let mut config = config_for(&issuer);
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
    let v = Validator::new(&config_for(&issuer)).unwrap();
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
    let mut untrusted = config_for(&issuer);
    untrusted.ca_file = None;
    let v = Validator::new(&untrusted).unwrap();
    let err = v
        .validate(&Signer::rsa("rsa-1", RSA1).sign(&issuer.claims("ana")))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Unreachable { .. }), "{err}");
}
