//! The one error type of the tarn crates.
//!
//! An [`Error`] has a [`ErrorKind`] (what went wrong, so callers can map it to an exit code,
//! an HTTP status or a SQLSTATE at the edge), a message that names the thing involved (table,
//! file, key, line) and what was expected, optional context pairs, and an optional source.

use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Configuration is malformed or inconsistent.
    Config,
    /// The user's input (SQL, file, argument) is invalid.
    InvalidInput,
    /// A named object (table, namespace, file, snapshot) does not exist.
    NotFound,
    /// A named object already exists.
    AlreadyExists,
    /// A concurrent writer committed first and retries ran out.
    CommitConflict,
    /// Object storage failed or is unreachable.
    Storage,
    /// The catalog database failed or is unreachable.
    Catalog,
    /// The query engine failed.
    Query,
    /// A change-data-capture source (the OLTP database) failed or refused.
    Source,
    /// An operation was cancelled before it committed.
    Cancelled,
    /// The principal may not do this: a policy denied it (SQLSTATE 42501, HTTP 403).
    PermissionDenied,
    /// A statement needed more memory than `query.memory_limit` leaves it (SQLSTATE 53200).
    OutOfMemory,
    /// A statement was refused by admission control: its queue is full or it waited past
    /// `query.queue_timeout` (SQLSTATE 53300).
    TooManyStatements,
    /// Anything else: a bug or an unexpected state.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::CommitConflict => "commit conflict",
            ErrorKind::Storage => "storage",
            ErrorKind::Catalog => "catalog",
            ErrorKind::Query => "query",
            ErrorKind::Source => "source",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::TooManyStatements => "too many statements",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A tarn error: kind, message, context and source.
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with tarn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Adds a `key: value` pair shown after the message.
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Records the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context or source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for (key, value) in &self.context {
            write!(f, " ({key}: {value})")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {self}", self.kind.as_str())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_message_context_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::new(ErrorKind::Storage, "cannot read data file")
            .with_context("file", "s3://b/t/data/1.parquet")
            .with_source(io);
        assert_eq!(
            err.to_string(),
            "cannot read data file (file: s3://b/t/data/1.parquet): no such file"
        );
        assert_eq!(err.kind(), ErrorKind::Storage);
    }
}
