//! Transactions that survive contention: [`Db::write`] is the one way the shop writes.
//!
//! CockroachDB runs every transaction at SERIALIZABLE isolation and, when two of them
//! conflict, aborts one with SQLSTATE `40001` ("restart transaction"); its documentation
//! requires clients to retry such a transaction from the start. PostgreSQL does the same at
//! SERIALIZABLE isolation (and reports `40P01` when it breaks a deadlock). So every write path
//! of the shop runs its whole transaction — `BEGIN` … `COMMIT` — inside [`Db::write`], which:
//!
//! 1. begins a transaction at the requested [`Isolation`],
//! 2. runs the caller's closure on it; a `40001`/`40P01` from any statement *or from
//!    `COMMIT`* rolls back and
//! 3. sleeps an exponentially growing, fully jittered delay ([`RetryPolicy::backoff`]) and runs
//!    the closure again on a fresh transaction, up to [`RetryPolicy::max_attempts`] times;
//! 4. then gives up with [`ShopError::RetriesExhausted`] (HTTP 503 with a clear message).
//!
//! The closure must therefore be safe to run more than once: it reads what it needs inside
//! the transaction and keeps no side effects outside it. Retrying the whole transaction is the
//! simple client-side protocol CockroachDB documents; its `SAVEPOINT cockroach_restart`
//! variant only saves a round trip and is CockroachDB-only, so the shop does not use it.
//!
//! [`TxStats`] counts attempts, retries and give-ups; the HTTP service publishes them on
//! `/metrics`.
//!
//! An error of the kind CockroachDB calls an *ambiguous commit* (`40003`, the connection
//! broke during `COMMIT`) is not retried: the transaction may have committed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use sqlx::{PgConnection, PgPool};

use crate::error::ShopError;

/// How often and how patiently a transaction is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// The delay bound after the first failure; it doubles with each further failure.
    pub base_delay: Duration,
    /// The largest delay bound.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The delay bound after failed attempt number `attempt` (1-based):
    /// `min(max_delay, base_delay · 2^(attempt-1))`.
    pub fn delay_bound(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The sleep after failed attempt number `attempt`: uniformly random in
    /// `[0, delay_bound(attempt)]` ("full jitter"), so transactions that collided once do not
    /// collide again in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let bound = self.delay_bound(attempt).as_micros() as u64;
        Duration::from_micros(rand::rng().random_range(0..=bound))
    }
}

/// Transaction isolation for [`Db::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The database's default: READ COMMITTED on PostgreSQL, SERIALIZABLE on CockroachDB.
    /// For single-row writes whose correctness needs no more.
    DatabaseDefault,
    /// SERIALIZABLE: for read-check-write transactions (stock, order totals, payments). On
    /// PostgreSQL this is what makes concurrent conflicts fail with `40001` instead of
    /// silently losing an update.
    Serializable,
    /// REPEATABLE READ, READ ONLY: one consistent snapshot for several reads (an order and
    /// its items). CockroachDB runs it as SERIALIZABLE unless its repeatable-read isolation
    /// is enabled; either way the reads see one state.
    ReadOnlySnapshot,
}

/// Counters of [`Db::write`]; see [`TxStats::snapshot`].
#[derive(Debug, Default)]
pub struct TxStats {
    attempts: AtomicU64,
    committed: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

/// A copy of [`TxStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TxStatsSnapshot {
    /// Transactions begun, retries included.
    pub attempts: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Attempts that failed with a retryable error and were run again.
    pub retries: u64,
    /// Writes that failed because the retry budget ran out.
    pub exhausted: u64,
}

impl TxStats {
    /// The current counts.
    pub fn snapshot(&self) -> TxStatsSnapshot {
        TxStatsSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }
}

/// The future a [`Db::write`] closure returns: it borrows the transaction's connection.
pub type TxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, ShopError>> + Send + 'c>>;

/// The shop's database handle: a connection pool, the retry policy and its counters.
/// Cheap to clone; clones share the pool and the counters.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    policy: RetryPolicy,
    stats: Arc<TxStats>,
}

impl Db {
    /// A handle with the default [`RetryPolicy`].
    pub fn new(pool: PgPool) -> Self {
        Self::with_policy(pool, RetryPolicy::default())
    }

    /// A handle with `policy`.
    pub fn with_policy(pool: PgPool, policy: RetryPolicy) -> Self {
        Self {
            pool,
            policy: RetryPolicy {
                max_attempts: policy.max_attempts.max(1),
                ..policy
            },
            stats: Arc::default(),
        }
    }

    /// The connection pool, for reads.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The transaction counters.
    pub fn stats(&self) -> TxStatsSnapshot {
        self.stats.snapshot()
    }

    /// Runs `body` in a transaction at `isolation` and commits it, retrying the whole
    /// transaction on serialization failures as the module doc describes. `what` names the
    /// operation in logs and in the error when retries run out.
    ///
    /// `body` gets the transaction's connection and may run many times; it should own what
    /// it uses (clone inputs into the `async move` block).
    pub async fn write<T, F>(
        &self,
        what: &'static str,
        isolation: Isolation,
        mut body: F,
    ) -> Result<T, ShopError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> TxFuture<'c, T>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let outcome = self.attempt(isolation, &mut body).await;
            let error = match outcome {
                Ok(value) => {
                    self.stats.committed.fetch_add(1, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let sqlstate = error.sqlstate().unwrap_or_default();
            if attempt >= self.policy.max_attempts {
                self.stats.exhausted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(what, attempt, sqlstate, "transaction retries exhausted");
                let ShopError::Database(source) = error else {
                    unreachable!("retryable errors are database errors")
                };
                return Err(ShopError::RetriesExhausted {
                    what,
                    attempts: attempt,
                    sqlstate,
                    source,
                });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let delay = self.policy.backoff(attempt);
            tracing::debug!(what, attempt, sqlstate, ?delay, "retrying transaction");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T, F>(&self, isolation: Isolation, body: &mut F) -> Result<T, ShopError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> TxFuture<'c, T>,
    {
        let mut tx = match isolation {
            Isolation::DatabaseDefault => self.pool.begin().await?,
            Isolation::Serializable => self.pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?,
            Isolation::ReadOnlySnapshot => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?
            }
        };
        match body(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(error) => {
                // A failed rollback only means the connection is gone; the pool drops it.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_bound_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        assert_eq!(p.delay_bound(1), Duration::from_millis(10));
        assert_eq!(p.delay_bound(2), Duration::from_millis(20));
        assert_eq!(p.delay_bound(4), Duration::from_millis(80));
        assert_eq!(p.delay_bound(5), Duration::from_millis(100));
        assert_eq!(p.delay_bound(60), Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_jittered_within_the_bound() {
        let p = RetryPolicy::default();
        let samples: Vec<Duration> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(samples.iter().all(|d| *d <= p.delay_bound(3)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 10, "backoff is not random: {distinct:?}");
    }
}
