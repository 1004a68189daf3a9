//! OIDC bearer tokens (JWTs) validated against the issuer's discovery document and keys.
//!
//! [`Validator::validate`]:
//!
//! 1. reads the token's header: the algorithm must be an asymmetric one the issuer can sign
//!    with (RS256/384/512, PS256/384/512, ES256/384; `none` and HMAC algorithms are refused —
//!    a shared-secret algorithm would let anyone holding the public key forge tokens), and
//!    the token must name its key (`kid`) when the issuer publishes several;
//! 2. finds the key in the issuer's JWKS (`jwks_uri` of `ISSUER/.well-known/openid-configuration`),
//!    fetched on first use; a `kid` not in the cached set fetches the set again — the issuer
//!    rotated its keys — at most once per `auth.oidc.refresh_min`, so a flood of forged kids
//!    cannot make tarn hammer the issuer;
//! 3. checks the signature with `jsonwebtoken`, then `iss` (exactly the configured issuer),
//!    `aud` (contains the configured audience), `exp` and `nbf` (with `auth.oidc.clock_skew`);
//! 4. reads the user from `auth.oidc.user_claim` (`sub` when absent) and the groups from each
//!    of `auth.oidc.groups_claims` (dotted paths; a string or an array of strings).
//!
//! Each refusal is a [`TokenError`] naming what failed; the issuer unreachable is one too
//! (never "allow").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tarn_core::config::{OidcConfig, parse_duration};
use tarn_core::{Error, ErrorKind};
use tokio::sync::Mutex;

use crate::{Method, Principal};

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT at all.
    #[error("not a JWT: {0}")]
    Malformed(String),
    /// `alg` is `none`, a shared-secret algorithm, or one the key cannot verify.
    #[error(
        "algorithm {0} is not accepted (the issuer's tokens are signed with RS256, PS256, ES256 and the like)"
    )]
    Algorithm(String),
    /// The signing key is not among the issuer's keys, even after fetching them again.
    #[error("the token is signed with key {0:?}, which issuer {1} does not publish")]
    UnknownKey(String, String),
    /// The signature does not verify.
    #[error("the signature does not verify with issuer {0}'s key")]
    Signature(String),
    /// Expired.
    #[error("the token has expired")]
    Expired,
    /// Not valid yet.
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// Issued by someone else.
    #[error("the token's issuer is not {0}")]
    Issuer(String),
    /// For another client.
    #[error("the token's audience does not include {0}")]
    Audience(String),
    /// A claim is missing or of the wrong shape.
    #[error("{0}")]
    Claims(String),
    /// The issuer's discovery document or keys could not be read.
    #[error("cannot reach the OIDC issuer {issuer} ({what}): {reason}")]
    Unreachable {
        /// The issuer.
        issuer: String,
        /// What was being fetched.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// The issuer's keys as last fetched.
struct KeyCache {
    jwks_uri: Option<String>,
    keys: HashMap<String, (Jwk, DecodingKey)>,
    fetched: Option<Instant>,
}

/// Validates the tokens of one issuer; see the module doc.
pub struct Validator {
    config: OidcConfig,
    http: reqwest::Client,
    skew: Duration,
    refresh_min: Duration,
    cache: Mutex<KeyCache>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: Option<String>,
    jwks_uri: String,
}

/// The algorithms a token may be signed with.
const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl Validator {
    /// A validator for `config`'s issuer; nothing is fetched yet.
    pub fn new(config: &OidcConfig) -> tarn_core::Result<Self> {
        let duration = |key: &str, value: &str| parse_duration(key, value);
        let timeout = duration("auth.oidc.timeout", &config.timeout)?;
        // reqwest's rustls needs a process-wide crypto provider: ring, as everywhere in tarn
        // (an error means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("key `auth.oidc.ca_file`: cannot read {}: {e}", ca.display()),
                )
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "key `auth.oidc.ca_file`: {} holds no PEM certificates: {e}",
                        ca.display()
                    ),
                )
            })? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot make an HTTP client for the OIDC issuer: {e}"),
            )
        })?;
        Ok(Self {
            config: config.clone(),
            http,
            skew: duration("auth.oidc.clock_skew", &config.clock_skew)?,
            refresh_min: duration("auth.oidc.refresh_min", &config.refresh_min)?,
            cache: Mutex::new(KeyCache {
                jwks_uri: None,
                keys: HashMap::new(),
                fetched: None,
            }),
        })
    }

    fn unreachable(&self, what: &str, reason: impl ToString) -> TokenError {
        metrics::counter!("tarn_auth_issuer_errors_total").increment(1);
        TokenError::Unreachable {
            issuer: self.config.issuer.clone(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, TokenError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unreachable(what, format!("{url} answered HTTP {status}")));
        }
        let body = response.bytes().await.map_err(|e| self.unreachable(what, e))?;
        serde_json::from_slice(&body)
            .map_err(|e| self.unreachable(what, format!("{url} did not return the expected JSON: {e}")))
    }

    /// Fetches the keys (and, the first time, the discovery document) into `cache`.
    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), TokenError> {
        let jwks_uri = match &cache.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url, "its discovery document").await?;
                if let Some(issuer) = &discovery.issuer
                    && issuer != &self.config.issuer
                {
                    return Err(self.unreachable(
                        "its discovery document",
                        format!("the document names issuer {issuer}, not the configured one"),
                    ));
                }
                cache.jwks_uri = Some(discovery.jwks_uri.clone());
                discovery.jwks_uri
            }
        };
        let set: JwkSet = self.get_json(&jwks_uri, "its keys (JWKS)").await?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            // Keys for encryption, or of kinds jsonwebtoken cannot verify with, are skipped.
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, (jwk, key));
        }
        tracing::debug!(issuer = %self.config.issuer, keys = keys.len(), "fetched the OIDC issuer's keys");
        cache.keys = keys;
        cache.fetched = Some(Instant::now());
        Ok(())
    }

    /// The key a token names (`kid`; none: the issuer's only key), fetching the keys again
    /// when it is unknown and the last fetch is older than `refresh_min`.
    async fn key(&self, kid: Option<&str>) -> Result<(Jwk, DecodingKey), TokenError> {
        let mut cache = self.cache.lock().await;
        let find = |cache: &KeyCache| match kid {
            Some(k) => cache.keys.get(k).cloned(),
            None if cache.keys.len() == 1 => cache.keys.values().next().cloned(),
            None => None,
        };
        if let Some(found) = find(&cache) {
            return Ok(found);
        }
        let stale = cache.fetched.is_none_or(|t| t.elapsed() >= self.refresh_min);
        if stale {
            self.refresh(&mut cache).await?;
            if let Some(found) = find(&cache) {
                return Ok(found);
            }
        }
        Err(TokenError::UnknownKey(
            kid.unwrap_or("(none)").to_string(),
            self.config.issuer.clone(),
        ))
    }

    /// The principal `token` names; see the module doc.
    pub async fn validate(&self, token: &str) -> Result<Principal, TokenError> {
        let result = self.validate_inner(token).await;
        let outcome = if result.is_ok() { "accepted" } else { "refused" };
        metrics::counter!("tarn_auth_tokens_total", "outcome" => outcome).increment(1);
        result
    }

    async fn validate_inner(&self, token: &str) -> Result<Principal, TokenError> {
        // `none` never gets as far as a key: decode_header refuses unknown algorithms, and
        // ACCEPTED lists only asymmetric ones.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match algorithm_name(token) {
            // A readable header with an algorithm jsonwebtoken does not know (`none`).
            Some(alg) if !ACCEPTED.iter().any(|a| format!("{a:?}") == alg) => TokenError::Algorithm(alg),
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let (jwk, key) = self.key(header.kid.as_deref()).await?;
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err(TokenError::Algorithm(format!(
                "{:?} (the key is for {alg:?})",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.skew.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::Signature(self.config.issuer.clone()),
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::Issuer(self.config.issuer.clone()),
                K::InvalidAudience => TokenError::Audience(self.config.audience.clone()),
                K::MissingRequiredClaim(c) => TokenError::Claims(format!("the token has no `{c}` claim")),
                K::InvalidAlgorithm => TokenError::Algorithm(format!("{:?}", header.alg)),
                _ => TokenError::Malformed(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let user = claim(&claims, &self.config.user_claim)
            .or_else(|| claim(&claims, "sub"))
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                TokenError::Claims(format!(
                    "the token names no user (claim `{}` or `sub`)",
                    self.config.user_claim
                ))
            })?
            .to_string();
        let mut groups: Vec<String> = Vec::new();
        for path in &self.config.groups_claims {
            let path = path.replace("{audience}", &self.config.audience);
            match claim(&claims, &path) {
                Some(Value::String(s)) => groups.push(s.clone()),
                Some(Value::Array(items)) => {
                    groups.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
                }
                _ => {}
            }
        }
        groups.sort();
        groups.dedup();
        Ok(Principal {
            user,
            groups,
            method: Method::Token,
        })
    }
}

/// The `alg` a token's header claims, read without validating anything (for messages).
fn algorithm_name(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_string)
}

/// The value at dotted `path` of `claims`.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    // A claim whose name contains dots (e.g. a URL-named claim) is looked up whole first.
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

#[cfg(test)]
mod tests;
