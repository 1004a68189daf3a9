//! The shop's one error type, [`ShopError`]: what went wrong in terms a client can act on
//! (which field is invalid, which row is missing, which constraint refused the change).
//!
//! Errors are mapped to HTTP statuses only at the edge (`api::error`); the library itself knows
//! nothing of HTTP. Database errors keep their SQLSTATE so the transaction helper
//! ([`crate::db::Db::write`]) can tell a serialization failure (retry) from a real error.

use sqlx::error::DatabaseError;

/// SQLSTATE `serialization_failure`: the transaction lost a conflict and must be retried.
/// CockroachDB reports every retryable conflict this way; PostgreSQL does at SERIALIZABLE
/// (and REPEATABLE READ) isolation.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE `deadlock_detected`: PostgreSQL aborted one of two transactions waiting on each
/// other; retrying it is safe for the same reason.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE `unique_violation`.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE `foreign_key_violation`.
pub const FOREIGN_KEY_VIOLATION: &str = "23503";
/// SQLSTATE `check_violation`.
pub const CHECK_VIOLATION: &str = "23514";

/// An error of the shop library.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// The request body is not JSON, or not the expected shape.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A field has a value the shop does not accept.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as a JSON path (`email`, `items[1].quantity`).
        field: String,
        /// What is wrong with it and what was expected.
        message: String,
    },
    /// The addressed row does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// The kind of row (`customer`, `order`, ...).
        entity: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The change conflicts with the current state: a duplicate unique value, a reference to
    /// a missing row or from an existing one, an impossible status change, too little stock.
    #[error("{message}")]
    Conflict {
        /// The field the conflict is about, where there is one.
        field: Option<String>,
        /// What conflicts.
        message: String,
    },
    /// The transaction kept losing serialization conflicts and the retry budget ran out.
    #[error(
        "{what}: gave up after {attempts} attempts, each aborted by a serialization conflict \
         with concurrent transactions (SQLSTATE {sqlstate}); retry the request"
    )]
    RetriesExhausted {
        /// The operation (`create order`).
        what: &'static str,
        /// How many times it ran.
        attempts: u32,
        /// The SQLSTATE of the last failure.
        sqlstate: String,
        /// The last failure.
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached (pool timeout, closed connection, I/O error).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ShopError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => ShopError::Unavailable(error),
            other => ShopError::Database(other),
        }
    }
}

impl ShopError {
    /// A field error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ShopError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A conflict about `field`.
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        ShopError::Conflict {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A missing row.
    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        ShopError::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// The SQLSTATE of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            ShopError::Database(e) => sqlstate(e),
            _ => None,
        }
    }

    /// Whether running the whole transaction again can succeed: a serialization failure or a
    /// deadlock. Nothing else is retried (a unique violation stays one).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.sqlstate().as_deref(),
            Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED)
        )
    }
}

/// The SQLSTATE of a database error.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// The violated constraint of a database error, with its SQLSTATE.
pub fn violated_constraint(error: &sqlx::Error) -> Option<(String, &str)> {
    let db: &dyn DatabaseError = error.as_database_error()?;
    Some((db.code()?.into_owned(), db.constraint()?))
}

/// Turns a violation of one named constraint into a domain error; other errors pass through.
pub(crate) trait ConstraintExt<T> {
    /// When the error is a violation of `constraint`, returns `make()` instead.
    fn on_constraint(self, constraint: &str, make: impl FnOnce() -> ShopError) -> Result<T, ShopError>;
}

impl<T> ConstraintExt<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, constraint: &str, make: impl FnOnce() -> ShopError) -> Result<T, ShopError> {
        match self {
            Ok(v) => Ok(v),
            Err(e) if violated_constraint(&e).is_some_and(|(_, c)| c == constraint) => Err(make()),
            Err(e) => Err(e.into()),
        }
    }
}

impl<T> ConstraintExt<T> for Result<T, ShopError> {
    fn on_constraint(self, constraint: &str, make: impl FnOnce() -> ShopError) -> Result<T, ShopError> {
        match self {
            Err(ShopError::Database(e)) => Err(e).on_constraint(constraint, make),
            other => other,
        }
    }
}
