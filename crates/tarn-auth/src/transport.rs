//! When a secret may be accepted: a password or token crosses a connection without TLS only
//! from a loopback address (it never leaves the machine), or where
//! `auth.allow_plaintext_passwords` says the network is trusted end to end.
//!
//! One rule for every entry point: the Postgres wire endpoint checks it before it asks for a
//! password (SCRAM or clear text), the HTTP endpoint before it reads a bearer token.

use std::net::IpAddr;

/// A secret offered over plain TCP from a non-loopback address, refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a password or token must not cross a connection without TLS from {peer}: connect over TLS \
     (server.tls), or set auth.allow_plaintext_passwords = true on a network trusted end to end"
)]
pub struct PlaintextSecretRefused {
    /// The client's address.
    pub peer: IpAddr,
}

/// Whether `peer` is on this machine: a loopback address, also as an IPv4 address mapped into
/// IPv6 (`::ffff:127.0.0.1`, as a dual-stack listener reports it). What `auth.trust_loopback`
/// and [`secret_may_cross`] mean by loopback.
pub fn is_loopback_peer(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Whether a password or token from `peer` may be accepted on a connection that is
/// (`encrypted`) or is not under TLS; `allow_plaintext` is `auth.allow_plaintext_passwords`.
/// An IPv4 address mapped into IPv6 (`::ffff:127.0.0.1`, as a dual-stack listener reports it)
/// counts as the IPv4 address.
pub fn secret_may_cross(
    peer: IpAddr,
    encrypted: bool,
    allow_plaintext: bool,
) -> Result<(), PlaintextSecretRefused> {
    if encrypted || allow_plaintext || is_loopback_peer(peer) {
        Ok(())
    } else {
        Err(PlaintextSecretRefused { peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_secrets_only_from_loopback_unless_allowed() {
        for loopback in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback_peer(ip(loopback)), "{loopback}");
            assert_eq!(secret_may_cross(ip(loopback), false, false), Ok(()), "{loopback}");
        }
        for remote in [
            "10.0.0.7",
            "192.168.1.2",
            "2001:db8::1",
            "::ffff:10.0.0.7",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_peer(ip(remote)), "{remote}");
            let refused = secret_may_cross(ip(remote), false, false).unwrap_err();
            assert_eq!(refused.peer, ip(remote));
            let message = refused.to_string();
            assert!(message.contains(remote), "{message}");
            assert!(message.contains("auth.allow_plaintext_passwords"), "{message}");
            // Over TLS, or where the operator allows it, the same address may send one.
            assert_eq!(secret_may_cross(ip(remote), true, false), Ok(()), "{remote}");
            assert_eq!(secret_may_cross(ip(remote), false, true), Ok(()), "{remote}");
        }
    }
}
