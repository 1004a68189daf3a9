//! Traces over OpenTelemetry: with `telemetry.otlp_endpoint` set, tracing's spans (a SQL
//! statement, a table commit, a CDC flush, and what runs inside them) become OpenTelemetry
//! spans, batched and posted to the collector over OTLP/HTTP with protobuf. The batch task runs
//! on tokio; the exporter's HTTP client is reqwest's.

use anyhow::{Context, Result};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A tracer provider exporting to `url` (the full `/v1/traces` URL). Must run in the runtime.
pub fn tracer_provider(url: &str) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint: cannot export spans to {url}"))?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("tarn")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// The trace id of `span`'s OpenTelemetry span (32 hex digits), when it has a valid one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
