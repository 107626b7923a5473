//! W3C trace context on every attempt (the `opentelemetry` feature).
//!
//! Each attempt carries its own span's context, so the server's span is the
//! child of the attempt that reached it (a retried call shows which attempt
//! each server saw). The headers are written by OpenTelemetry's global
//! propagator, which the application sets once:
//! `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())`
//! for `traceparent`/`tracestate` (another propagator, B3 say, works the
//! same). The span's context comes from `tracing-opentelemetry`'s layer;
//! without that layer, or with the span disabled, nothing is written.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use opentelemetry::propagation::Injector;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `span`'s trace context into `headers`, replacing any the request
/// carried (an earlier attempt's, or the caller's).
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Headers(headers));
    });
}

/// Request headers as OpenTelemetry's carrier.
struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator writes valid names and values; anything else is
        // dropped rather than failing the request.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
