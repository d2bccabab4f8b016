//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: an incoming request's
//! context becomes the parent of its RPC span, so an evaluator's spans join the caller's trace; and
//! a proxy's upstream calls carry the current span's context, so a root's spans join the proxy's.
//! Without trace export both directions cost a header lookup.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";

/// Whether spans leave the process (an OTLP exporter is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records that trace export is on; the logging set-up calls it when it installs an exporter.
pub fn exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether a span per RPC is worth making: spans are exported, or debug logs are on (log lines
/// then carry the RPC's method). Otherwise the span would only cost time (about 1 µs per request
/// at the default log level, where the text log formats its fields) and appear nowhere.
pub fn rpc_spans() -> bool {
    EXPORTING.load(Ordering::Relaxed) || tracing::enabled!(tracing::Level::DEBUG)
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(key),
            HeaderValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes the caller's trace (if `headers` carry one) the parent of `span`. A malformed
/// `traceparent` is ignored: the span starts a trace of its own.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key(TRACEPARENT) || span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Extract(headers));
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed, when there is nothing to join.
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's trace context to outgoing `headers`, if it is being traced.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
    }
}

/// Copies the trace-context headers of an incoming HTTP request (for handlers that build their own
/// request objects, like the Connect handler).
pub fn carried(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [TRACEPARENT, "tracestate"] {
        if let Some(v) = headers.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}
