//! What the Postgres wire endpoint reports about each statement: a `statement` span (kind,
//! query id, trace id; exported over OTLP when configured), its latency and rows by kind, and
//! errors by SQLSTATE.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

/// Latency of statements by kind, seconds (histogram).
pub const DURATION_METRIC: &str = "tarn_sql_statement_duration_seconds";
/// Rows sent to clients by statement kind.
pub const ROWS_METRIC: &str = "tarn_sql_rows_returned_total";
/// Failed statements by SQLSTATE.
pub const ERRORS_METRIC: &str = "tarn_sql_errors_total";

/// The kind of the (first) statement in `sql`, a label from a fixed set.
pub(crate) fn statement_kind(parser: &PostgresCompatibilityParser, sql: &str) -> &'static str {
    let Ok(statements) = parser.parse(sql) else {
        return "other";
    };
    let Some(statement) = statements.first() else {
        return "other";
    };
    kind_of(statement)
}

fn kind_of(statement: &Statement) -> &'static str {
    match statement {
        Statement::Query(_) => "select",
        Statement::Insert(_) => "insert",
        Statement::Update(_) => "update",
        Statement::Delete(_) => "delete",
        Statement::Merge(_) => "merge",
        Statement::Copy { .. } => "copy",
        Statement::Explain { .. } | Statement::ExplainTable { .. } => "explain",
        Statement::Set(_) | Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => "set",
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. } => "transaction",
        Statement::CreateTable(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateView { .. }
        | Statement::Drop { .. }
        | Statement::AlterTable { .. }
        | Statement::Truncate { .. } => "ddl",
        _ => "other",
    }
}

/// A statement's span: `kind`, `query_id` (filled once the statement is listed) and `trace_id`
/// (when traces are exported). Log lines inside it carry these fields.
pub(crate) fn statement_span(kind: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "statement",
        kind,
        query_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    tarn_core::telemetry::record_trace_id(&span);
    span
}

/// Times a statement from its start until its rows are sent (or it fails), counting the rows;
/// records both, and logs the statement at `debug` inside its span, when dropped.
pub(crate) struct StatementTimer {
    kind: &'static str,
    started: Instant,
    rows: Arc<AtomicU64>,
    span: tracing::Span,
}

impl StatementTimer {
    pub(crate) fn start(kind: &'static str, span: tracing::Span) -> Self {
        Self {
            kind,
            started: Instant::now(),
            rows: Arc::new(AtomicU64::new(0)),
            span,
        }
    }

    /// The counter the row stream adds to.
    pub(crate) fn rows(&self) -> Arc<AtomicU64> {
        self.rows.clone()
    }
}

impl Drop for StatementTimer {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let rows = self.rows.load(Ordering::Relaxed);
        metrics::histogram!(DURATION_METRIC, "kind" => self.kind).record(seconds);
        if rows > 0 {
            metrics::counter!(ROWS_METRIC, "kind" => self.kind).increment(rows);
        }
        self.span.in_scope(|| {
            tracing::debug!(
                target: "tarn::statement",
                seconds,
                rows,
                "statement finished"
            );
        });
    }
}

/// Counts a failed statement by its SQLSTATE (a code from tarn's fixed list and pgwire's).
pub(crate) fn count_error(code: &str) {
    // Codes are five characters from [0-9A-Z]; anything else is not a SQLSTATE.
    let code = if code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        code.to_string()
    } else {
        "XX000".to_string()
    };
    let class = code[..2].to_string();
    metrics::counter!(ERRORS_METRIC, "sqlstate" => code, "class" => class).increment(1);
}
