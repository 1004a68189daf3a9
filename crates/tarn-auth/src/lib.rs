//! Identities: who is asking, from a configured user's password or an OIDC bearer token.
//!
//! Every entry point (the Postgres wire endpoint, the HTTP APIs) turns its credentials into
//! one [`Principal`] — a user name and the groups (roles) that policies grant to — through
//! [`Authenticator`]:
//!
//! - a **configured user** (`[[auth.users]]`) proves itself with its password (SCRAM on the
//!   Postgres wire endpoint); it has no groups unless policies name the user;
//! - an **OIDC token** (a JWT of `auth.oidc.issuer`, e.g. a Keycloak realm) is validated by
//!   [`oidc::Validator`]: signature with the issuer's published keys (RS256/RS384/RS512,
//!   PS256, ES256/ES384; `none` and shared-secret algorithms refused), `iss`, `aud`,
//!   `exp`/`nbf` within the configured clock skew; the user from `auth.oidc.user_claim`, the
//!   groups from `auth.oidc.groups_claims` (Keycloak's realm and client roles by default).
//!
//! - a **client certificate** (`server.tls.client_ca`) logs in as the user its common name
//!   maps to ([`Authenticator::certificate_user`]).
//!
//! Nothing falls back to "allow": an issuer that cannot be reached refuses the token, with an
//! error that says so. A password or token is accepted over plain TCP only from loopback
//! ([`secret_may_cross`]) unless `auth.allow_plaintext_passwords` says otherwise.

pub mod oidc;
mod transport;

use std::fmt;

use tarn_core::config::AuthConfig;

pub use oidc::{TokenError, Validator};
pub use transport::{PlaintextSecretRefused, is_loopback_peer, secret_may_cross};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A configured user's password.
    Password,
    /// An OIDC bearer token.
    Token,
    /// A loopback connection trusted without credentials (`auth.trust_loopback`).
    Trusted,
    /// A client certificate signed by `server.tls.client_ca`.
    Certificate,
}

/// Who is asking: what policies decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// Groups and roles, sorted, each once.
    pub groups: Vec<String>,
    /// How it authenticated.
    pub method: Method,
}

impl Principal {
    /// `user` with `groups` (sorted, each once), vouched for by tarn itself: a job's or a
    /// pipeline's principal, `--as USER` on the command line.
    pub fn trusted(user: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        let mut groups: Vec<String> = groups.into_iter().collect();
        groups.sort();
        groups.dedup();
        Self {
            user: user.into(),
            groups,
            method: Method::Trusted,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.user)?;
        if !self.groups.is_empty() {
            write!(f, " ({})", self.groups.join(", "))?;
        }
        Ok(())
    }
}

/// Whether `secret` has the shape of a JWT (three base64url parts), so that a password field
/// holding a token is read as one.
pub fn looks_like_jwt(secret: &str) -> bool {
    let parts: Vec<&str> = secret.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Turns credentials into principals, from `[auth]`. Clones share the issuer's key set (and
/// its fetch rate limit): a process makes one and hands it to every endpoint, so a rotated key
/// is fetched once and accepted by all of them at once.
#[derive(Clone)]
pub struct Authenticator {
    users: Vec<(String, String)>,
    oidc: Option<std::sync::Arc<Validator>>,
    certificate_users: std::collections::BTreeMap<String, String>,
}

/// Why credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No such user, or the wrong password.
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    /// The token was refused; the reason says why.
    #[error("token refused: {0}")]
    Token(#[from] TokenError),
    /// A token was offered, but no issuer is configured.
    #[error("bearer tokens are not accepted: auth.oidc is not configured")]
    NoIssuer,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "users",
                &self.users.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("oidc", &self.oidc.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator `auth` describes; the OIDC issuer is contacted on the first token.
    pub fn new(auth: &AuthConfig) -> tarn_core::Result<Self> {
        Ok(Self {
            users: auth
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            oidc: auth
                .oidc
                .as_ref()
                .map(|o| Validator::new(o).map(std::sync::Arc::new))
                .transpose()?,
            certificate_users: auth.certificate_users.clone(),
        })
    }

    /// The user a client certificate with common name `common_name` logs in as
    /// (`auth.certificate_users`, or the user of that name).
    pub fn certificate_user(&self, common_name: &str) -> String {
        self.certificate_users
            .get(common_name)
            .cloned()
            .unwrap_or_else(|| common_name.to_string())
    }

    /// Whether OIDC tokens are accepted.
    pub fn accepts_tokens(&self) -> bool {
        self.oidc.is_some()
    }

    /// Whether `user` is a configured user (who logs in with a password, not a token).
    pub fn is_user(&self, user: &str) -> bool {
        self.users.iter().any(|(name, _)| name == user)
    }

    /// A bearer token's principal.
    pub async fn token(&self, token: &str) -> Result<Principal, AuthError> {
        let validator = self.oidc.as_ref().ok_or(AuthError::NoIssuer)?;
        Ok(validator.validate(token).await?)
    }

    /// The principal of a password login as `user`: a token (when it looks like one and OIDC
    /// is on) whose user must be `user` unless `user` is empty, or a configured user's
    /// password.
    pub async fn password(&self, user: &str, secret: &str) -> Result<Principal, AuthError> {
        if self.oidc.is_some() && !self.is_user(user) && looks_like_jwt(secret) {
            let principal = self.token(secret).await?;
            if !user.is_empty() && principal.user != user {
                return Err(AuthError::Token(TokenError::Claims(format!(
                    "the token is for user \"{}\", the connection asked for \"{user}\"",
                    principal.user
                ))));
            }
            return Ok(principal);
        }
        let known = self
            .users
            .iter()
            .any(|(name, password)| name == user && constant_time_eq(password.as_bytes(), secret.as_bytes()));
        if known {
            Ok(Principal {
                user: user.to_string(),
                groups: Vec::new(),
                method: Method::Password,
            })
        } else {
            Err(AuthError::BadPassword(user.to_string()))
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shapes() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."));
        assert!(!looks_like_jwt("hunter2"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a b.c.d"));
    }

    #[tokio::test]
    async fn configured_users_log_in_with_their_password() {
        let auth = AuthConfig {
            users: vec![tarn_core::config::UserConfig {
                name: "ana".into(),
                password: "s3cret".into(),
            }],
            ..AuthConfig::default()
        };
        let a = Authenticator::new(&auth).unwrap();
        let p = a.password("ana", "s3cret").await.unwrap();
        assert_eq!((p.user.as_str(), p.method), ("ana", Method::Password));
        assert!(matches!(a.password("ana", "nope").await, Err(AuthError::BadPassword(u)) if u == "ana"));
        assert!(matches!(
            a.password("bob", "s3cret").await,
            Err(AuthError::BadPassword(_))
        ));
        assert!(matches!(a.token("x.y.z").await, Err(AuthError::NoIssuer)));
    }

    #[test]
    fn certificate_common_names_map_to_users() {
        let auth = AuthConfig {
            certificate_users: [("etl.example.com".to_string(), "etl".to_string())].into(),
            ..AuthConfig::default()
        };
        let a = Authenticator::new(&auth).unwrap();
        assert_eq!(a.certificate_user("etl.example.com"), "etl");
        assert_eq!(a.certificate_user("ana"), "ana");
    }
}
