//! OTLP export of tutti's spans (feature `otlp`): `tutti.job` → `tutti.episode` → `tutti.turn` →
//! `tutti.call` go to an OpenTelemetry collector over http/protobuf.
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
//! exporter reads those and the other standard `OTEL_*` variables itself. Spans are batched on the
//! SDK's own thread, so a slow or absent collector does not hold up episodes; what is still
//! batched is flushed when the command ends.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::Layer;

/// The exporter's provider; flushes and stops it when dropped.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("tutti: warning: the OTLP exporter did not flush: {e}");
        }
    }
}

/// The layer that exports tutti's spans (info level and above of tutti's own crates, whatever the
/// log's level), when the environment names a collector.
pub fn layer<S>() -> Result<Option<(impl Layer<S>, Exporter)>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    // The exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as the full URL; the general
    // variable is a base to which the signal's path is added.
    if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
        builder = builder.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    let exporter = builder
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter to {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("tutti").build())
        .build();
    let tracer = provider.tracer("tutti");
    let spans = Targets::new()
        .with_target("tutti", LevelFilter::INFO)
        .with_target("tutti_engine", LevelFilter::INFO);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(spans);
    Ok(Some((layer, Exporter(provider))))
}
