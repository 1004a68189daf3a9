//! Logging in with an OIDC token as the password (`auth.oidc`), for tools that cannot do
//! OAuth: psql, JDBC, psycopg, BI tools send the token where a password goes.
//!
//! A token must reach the server whole, so the endpoint asks for the password in clear
//! (`AuthenticationCleartextPassword`) — for users that are not configured ones; configured
//! users keep SCRAM, where the password never crosses the wire. Because a clear secret is
//! readable on an unencrypted connection, a login from a non-loopback address over plain TCP
//! is refused before the client sends it (SQLSTATE 28000), unless
//! `auth.allow_plaintext_passwords` says otherwise. The token's user must be the user the
//! connection names (or the connection names none). The principal (user and groups) is kept in
//! the connection's session extensions for what decides on it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{DefaultServerParameterProvider, LoginInfo, StartupHandler};
use pgwire::api::{
    ClientInfo, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tarn_auth::{Authenticator, Principal};

/// Asks for the password in clear and reads it as a token or a configured user's password.
pub(crate) struct TokenLogin {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) allow_plaintext: bool,
    pub(crate) params: Arc<DefaultServerParameterProvider>,
    pub(crate) connections: Arc<ConnectionManager>,
    pub(crate) pids: RandomPidSecretKeyGenerator,
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

#[async_trait]
impl StartupHandler for TokenLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                let addr = client.socket_addr();
                if !client.is_secure() && !addr.ip().is_loopback() && !self.allow_plaintext {
                    metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
                    return Err(fatal(
                        "28000",
                        format!(
                            "a password or token must not cross a connection without TLS from {}: connect \
                             over TLS, or set auth.allow_plaintext_passwords = true on a trusted network",
                            addr.ip()
                        ),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_string();
                let principal: Principal = match self.auth.password(&user, &pwd.password).await {
                    Ok(p) => p,
                    Err(e) => {
                        metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
                        tracing::info!(%user, peer = %client.socket_addr(), reason = %e, "login refused");
                        return Err(fatal("28P01", e.to_string()));
                    }
                };
                tracing::info!(user = %principal.user, groups = ?principal.groups, method = ?principal.method, "logged in");
                let (pid, secret) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.connections.register(pid, secret);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                client.session_extensions().insert(Arc::new(principal));
                pgwire::api::auth::finish_authentication(client, self.params.as_ref()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
