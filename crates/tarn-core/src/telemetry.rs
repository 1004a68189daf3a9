//! Trace ids in log lines: the spans of a statement, a commit and a CDC flush carry a
//! `trace_id` field, filled in from the OpenTelemetry span behind them when traces are exported
//! (`telemetry.otlp_endpoint`), so that a JSON log line and its trace can be joined. The binary
//! installs the function that reads the id; libraries only ask for it.

use std::sync::OnceLock;

/// Reads the trace id of a span (32 hex digits), when it has one.
pub type TraceIdSource = fn(&tracing::Span) -> Option<String>;

static SOURCE: OnceLock<TraceIdSource> = OnceLock::new();

/// Installs the function [`record_trace_id`] uses; the first call wins.
pub fn set_trace_id_source(source: TraceIdSource) {
    let _ = SOURCE.set(source);
}

/// Records the span's trace id in its `trace_id` field (declared `tracing::field::Empty` by the
/// span), when traces are exported.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(source) = SOURCE.get()
        && let Some(id) = source(span)
    {
        span.record("trace_id", id.as_str());
    }
}
