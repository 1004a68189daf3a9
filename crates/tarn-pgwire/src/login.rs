//! The logins tarn writes itself (pgwire has SCRAM and "trust"): an OIDC token as the
//! password, and a client certificate.
//!
//! **Token** (`auth.oidc`), for tools that cannot do OAuth: psql, JDBC, psycopg, BI tools send
//! the token where a password goes. A token must reach the server whole, so the endpoint asks
//! for the password in clear (`AuthenticationCleartextPassword`) — for users that are not
//! configured ones; configured users keep SCRAM, where the password never crosses the wire.
//! Whether a secret may be asked for at all over this connection (TLS, or loopback) is decided
//! before either starts ([`tarn_auth::secret_may_cross`]). The token's user must be the user
//! the connection names (or the connection names none).
//!
//! **Certificate** (`server.tls.client_ca`): a client certificate the TLS handshake verified
//! against that CA logs in as the user its common name maps to (`auth.certificate_users`,
//! else the user of that name), as PostgreSQL's `cert` method does; a connection that names
//! another user is refused (SQLSTATE 28000), nothing is asked for.
//!
//! The principal (user and groups) is kept in the connection's session extensions for what
//! decides on it.

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
    pub(crate) params: Arc<DefaultServerParameterProvider>,
    pub(crate) connections: Arc<ConnectionManager>,
    pub(crate) pids: Arc<RandomPidSecretKeyGenerator>,
}

pub(crate) fn fatal(code: &str, message: String) -> PgWireError {
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
                logged_in(client, principal, &self.connections, &self.pids, &self.params).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Registers a logged-in connection (for cancel requests) with its principal and tells the
/// client it may query.
async fn logged_in<C>(
    client: &mut C,
    principal: Principal,
    connections: &Arc<ConnectionManager>,
    pids: &RandomPidSecretKeyGenerator,
    params: &DefaultServerParameterProvider,
) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    tracing::info!(user = %principal.user, groups = ?principal.groups, method = ?principal.method, "logged in");
    let (pid, secret) = pids.generate(client);
    client.set_pid_and_secret_key(pid, secret.clone());
    let (handle, guard) = connections.register(pid, secret);
    client.session_extensions().insert(handle);
    client.session_extensions().insert(guard);
    client.session_extensions().insert(Arc::new(principal));
    pgwire::api::auth::finish_authentication(client, params).await
}

/// Logs in the user a verified client certificate names.
pub(crate) struct CertificateLogin {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) params: Arc<DefaultServerParameterProvider>,
    pub(crate) connections: Arc<ConnectionManager>,
    pub(crate) pids: Arc<RandomPidSecretKeyGenerator>,
}

#[async_trait]
impl StartupHandler for CertificateLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(ref startup) = message else {
            return Ok(());
        };
        pgwire::api::auth::protocol_negotiation(client, startup).await?;
        pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
        // Only a certificate the handshake verified against `server.tls.client_ca` is here.
        let common_name = client
            .client_certificates()
            .and_then(|chain| chain.first().and_then(tarn_tls::common_name));
        let Some(common_name) = common_name else {
            metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
            return Err(fatal(
                "28000",
                "certificate authentication failed: the client certificate has no common name (CN) to log in with".into(),
            ));
        };
        let user = self.auth.certificate_user(&common_name);
        let asked = LoginInfo::from_client_info(client)
            .user()
            .unwrap_or_default()
            .to_string();
        if !asked.is_empty() && asked != user {
            metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
            tracing::info!(%asked, %common_name, %user, peer = %client.socket_addr(), "certificate login refused");
            return Err(fatal(
                "28000",
                format!(
                    "certificate authentication failed for user \"{asked}\": the client certificate (CN \"{common_name}\") logs in as \"{user}\""
                ),
            ));
        }
        client
            .metadata_mut()
            .insert(pgwire::api::METADATA_USER.into(), user.clone());
        let principal = Principal {
            user,
            groups: Vec::new(),
            method: tarn_auth::Method::Certificate,
        };
        logged_in(client, principal, &self.connections, &self.pids, &self.params).await
    }
}
