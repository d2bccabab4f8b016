//! Logs and traces: tracing as text on stderr or JSON lines on stdout (filtered by level), one build-info line at
//! start, and OpenTelemetry trace export over OTLP/gRPC when an endpoint is configured
//! (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`); a no-op otherwise.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Trace export settings.
#[derive(Clone, Debug, Default)]
pub struct Tracing {
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`; `None` disables export.
    pub otlp_endpoint: Option<String>,
    /// Fraction of root traces sampled (parent-based: a sampled caller's trace is always kept).
    pub sample_ratio: f64,
}

/// Flushes and stops trace export when dropped at shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes pending spans and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not flush cleanly");
        }
    }
}

/// Installs the global subscriber. Must run inside a Tokio runtime when tracing is enabled (the
/// exporter's connection lives on it). A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat, filter: &str, tracing_cfg: &Tracing) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let provider = tracing_cfg
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .and_then(|endpoint| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build();
            match exporter {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                            tracing_cfg.sample_ratio,
                        ))))
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name("pbflags-evaluator")
                                .with_attribute(opentelemetry::KeyValue::new(
                                    "service.version",
                                    env!("CARGO_PKG_VERSION"),
                                ))
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("warning: OTLP trace export disabled: {e}");
                    None
                }
            }
        });
    if provider.is_some() {
        crate::protocol::trace_context::exporting();
    }
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("pbflags-evaluator")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // JSON lines go to stdout, where log collectors expect structured output; text stays on
    // stderr, beside usage errors, for people at a terminal.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stdout)
                    .json()
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    tracing::info!(
        version = pbflags_runtime::VERSION,
        git_sha = pbflags_runtime::GIT_SHA,
        traces = provider.is_some(),
        "pbflags-evaluator starting"
    );
    Telemetry { provider }
}
