//! `idle_in_transaction_session_timeout`: a connection that sits in an open transaction
//! (after `BEGIN`, before `COMMIT`/`ROLLBACK`) with no statement running for longer than its
//! timeout is closed, as PostgreSQL closes it, so a forgotten session does not hold a
//! connection slot forever.
//!
//! Each connection has a [`ConnectionState`], keyed by its peer address, that the query
//! handlers keep current (in a transaction or not, statements in flight, idle since when) and
//! a watchdog task waits on. The watchdog holds a second handle of the connection's socket and
//! shuts it down when the timeout passes: pgwire owns the connection's framing, so the client
//! sees the connection end rather than PostgreSQL's `FATAL 25P03` message first.
//!
//! The timeout is what the session `SET` (`SET idle_in_transaction_session_timeout = '5s'`,
//! milliseconds without a unit as in PostgreSQL; `0`: none), else the default of the
//! principal's roles (`[query.roles.NAME] idle_in_transaction_session_timeout`, the shortest
//! when several apply), else `query.idle_in_transaction_session_timeout` (`0`: none). The
//! default is taken from the principal with each statement ([`ConnectionState::begin`]), so it
//! is known before a transaction can be open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use pgwire::api::ClientInfo;
use pgwire::api::results::{Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The setting's name.
pub(crate) const SETTING: &str = "idle_in_transaction_session_timeout";

/// What the watchdog of one connection watches.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    in_transaction: AtomicBool,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// What the session `SET` (`0`: none); [`UNSET`] when it set nothing.
    session_ms: AtomicU64,
    /// The default of the principal's roles, or the server's (`0`: none).
    default_ms: AtomicU64,
    changed: Notify,
}

/// [`ConnectionState::session_ms`] when the session has not set the timeout.
const UNSET: u64 = u64::MAX;

fn millis(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(UNSET - 1))
}

impl ConnectionState {
    fn touch(&self) {
        *self.idle_since.lock().expect("connection state poisoned") = Instant::now();
        self.changed.notify_one();
    }

    /// The timeout in force, in milliseconds (`0`: none).
    fn timeout_ms(&self) -> u64 {
        match self.session_ms.load(Ordering::SeqCst) {
            UNSET => self.default_ms.load(Ordering::SeqCst),
            set => set,
        }
    }

    /// A statement starts; `transaction`: it opens (`Some(true)`) or ends (`Some(false)`) a
    /// transaction; `default`: the timeout of the principal's roles or the server's, which
    /// applies unless the session sets its own. Returns a guard that marks it finished when
    /// dropped.
    pub(crate) fn begin(self: &Arc<Self>, transaction: Option<bool>, default: Option<Duration>) -> Busy {
        self.default_ms.store(millis(default), Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        if let Some(open) = transaction {
            self.in_transaction.store(open, Ordering::SeqCst);
        }
        self.touch();
        Busy(self.clone())
    }
}

/// A statement in flight on a connection; when dropped (its rows sent), the connection is idle
/// again from that moment.
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnectionState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// The states of all open connections.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    states: Mutex<HashMap<SocketAddr, Arc<ConnectionState>>>,
    default_ms: u64,
}

impl Connections {
    pub(crate) fn new(default: Option<Duration>) -> Self {
        Self {
            states: Mutex::default(),
            default_ms: millis(default),
        }
    }

    /// The state of the connection from `peer`, when it is open.
    pub(crate) fn get(&self, peer: SocketAddr) -> Option<Arc<ConnectionState>> {
        self.states
            .lock()
            .expect("connections poisoned")
            .get(&peer)
            .cloned()
    }

    /// Registers the connection from `peer` and starts its watchdog over `socket` (a second
    /// handle of the connection's socket); the watchdog stops when `done` fires.
    pub(crate) fn open(
        self: &Arc<Self>,
        peer: SocketAddr,
        socket: std::net::TcpStream,
        done: CancellationToken,
    ) {
        let state = Arc::new(ConnectionState {
            in_transaction: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            session_ms: AtomicU64::new(UNSET),
            default_ms: AtomicU64::new(self.default_ms),
            changed: Notify::new(),
        });
        self.states
            .lock()
            .expect("connections poisoned")
            .insert(peer, state.clone());
        let connections = self.clone();
        tokio::spawn(async move {
            watch(&state, &socket, &done).await;
            connections
                .states
                .lock()
                .expect("connections poisoned")
                .remove(&peer);
        });
    }
}

/// Closes the connection once it has been idle in a transaction for longer than its timeout.
async fn watch(state: &ConnectionState, socket: &std::net::TcpStream, done: &CancellationToken) {
    loop {
        let timeout = state.timeout_ms();
        let armed = timeout > 0
            && state.in_transaction.load(Ordering::SeqCst)
            && state.active.load(Ordering::SeqCst) == 0;
        let since = *state.idle_since.lock().expect("connection state poisoned");
        let deadline = async {
            if armed {
                tokio::time::sleep_until((since + Duration::from_millis(timeout)).into()).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = done.cancelled() => return,
            () = state.changed.notified() => {}
            () = deadline => {
                let still = state.in_transaction.load(Ordering::SeqCst)
                    && state.active.load(Ordering::SeqCst) == 0
                    && *state.idle_since.lock().expect("connection state poisoned") == since;
                if still {
                    metrics::counter!("tarn_query_idle_in_transaction_closed_total").increment(1);
                    tracing::info!(
                        peer = ?socket.peer_addr().ok(),
                        timeout_ms = timeout,
                        "terminating connection due to idle-in-transaction timeout"
                    );
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Whether `statement` opens (`Some(true)`) or ends (`Some(false)`) a transaction.
pub(crate) fn transaction_effect(statement: &Statement) -> Option<bool> {
    match statement {
        Statement::StartTransaction { .. } => Some(true),
        Statement::Commit { .. } | Statement::Rollback { .. } => Some(false),
        _ => None,
    }
}

/// A PostgreSQL time setting: milliseconds, or a number with a unit (`500ms`, `5s`, `1min`);
/// `0` turns it off.
fn parse_ms(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'').trim_matches('"').trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Some(ms);
    }
    let v = v.replace("min", "m");
    humantime::parse_duration(&v)
        .ok()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `SET idle_in_transaction_session_timeout` and `SHOW idle_in_transaction_session_timeout`.
pub(crate) struct IdleTimeoutHook {
    pub(crate) connections: Arc<Connections>,
}

impl IdleTimeoutHook {
    fn apply(&self, statement: &Statement, peer: SocketAddr) -> Option<PgWireResult<Response>> {
        let Statement::Set(Set::SingleAssignment { variable, values, .. }) = statement else {
            return None;
        };
        if !variable.to_string().eq_ignore_ascii_case(SETTING) {
            return None;
        }
        let value = values.first().map(ToString::to_string).unwrap_or_default();
        let Some(ms) = parse_ms(&value) else {
            return Some(Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22023".into(),
                format!(
                    "invalid value for parameter \"{SETTING}\": {value} (expected milliseconds, or a duration like 5s)"
                ),
            )))));
        };
        if let Some(state) = self.connections.get(peer) {
            state.session_ms.store(ms.min(UNSET - 1), Ordering::SeqCst);
            state.changed.notify_one();
        }
        Some(Ok(Response::Execution(Tag::new("SET"))))
    }

    fn is_ours(statement: &Statement) -> bool {
        matches!(statement, Statement::Set(Set::SingleAssignment { variable, .. }) if variable.to_string().eq_ignore_ascii_case(SETTING))
    }
}

#[async_trait]
impl QueryHook for IdleTimeoutHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.apply(statement, client.socket_addr())
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Self::is_ours(statement).then(|| Ok(crate::no_rows_plan()))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.apply(statement, client.socket_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn settings_parse_as_postgresql_reads_them() {
        assert_eq!(parse_ms("'500ms'"), Some(500));
        assert_eq!(parse_ms("5000"), Some(5000));
        assert_eq!(parse_ms("'5s'"), Some(5000));
        assert_eq!(parse_ms("'1min'"), Some(60_000));
        assert_eq!(parse_ms("0"), Some(0));
        assert_eq!(parse_ms("'soon'"), None);
    }
}
