//! The HTTP endpoint's server: plain HTTP/1.1, or HTTPS with `server.tls` — the certificate
//! current when a connection arrives (module `tarn_tls`), so a reload needs no restart.
//!
//! Our own accept loop instead of `axum::serve`, which speaks only plain TCP: each connection's
//! TLS handshake runs in its own task (a slow client does not hold up the others), and every
//! request carries its [`Transport`] — the peer's address and whether TLS protects it — for the
//! rule that a bearer token is not accepted over plain TCP from a non-loopback address
//! ([`tarn_auth::secret_may_cross`]). At shutdown the loop stops accepting and each connection
//! finishes its request in flight, as `axum::serve`'s graceful shutdown does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection a request arrived on, in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transport {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Whether TLS protects the connection.
    pub(crate) encrypted: bool,
}

/// Serves `app` on `listener` until `shutdown`, over TLS when `tls` is set.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tarn_tls::ServerTls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    continue;
                }
            },
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        // Taken per connection: a reload serves the next connection with the new certificate.
        let acceptor = tls.as_ref().map(|t| t.https_acceptor());
        connections.spawn(async move {
            let _ = socket.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                let transport = Transport {
                    peer,
                    encrypted: false,
                };
                return connection(socket, transport, app, shutdown).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let transport = Transport {
                        peer,
                        encrypted: true,
                    };
                    connection(stream, transport, app, shutdown).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("tarn_http_tls_handshake_failures_total").increment(1);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("tarn_http_tls_handshake_failures_total").increment(1);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection's requests, each with `transport` in its extensions.
async fn connection<S>(stream: S, transport: Transport, app: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(transport);
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(served);
    let outcome = tokio::select! {
        outcome = served.as_mut() => outcome,
        () = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(peer = %transport.peer, error = %e, "HTTP connection ended with an error");
    }
}
