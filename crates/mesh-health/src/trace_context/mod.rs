//! [`TraceContextLayer`]: the server side of trace propagation (the
//! `opentelemetry` feature).
//!
//! Each request gets a `mesh.server` span (`otel.kind = "server"`, with
//! `http.request.method`, `url.path` and, once answered,
//! `http.response.status_code`) whose parent is the context the caller
//! sent: `traceparent`/`tracestate`, read by OpenTelemetry's global
//! propagator. The handler runs inside that span, so a call it makes
//! through a tower-mesh stack continues the same trace, hop after hop.
//!
//! A header that does not parse (a malformed or all-zero `traceparent`)
//! yields no remote parent: the span starts a new trace, and the request
//! is served as any other. Propagation never fails a request.
//!
//! ```
//! use mesh_health::TraceContextLayer;
//! use tower::ServiceBuilder;
//!
//! let handler = tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(TraceContextLayer::new())
//!     .service(handler);
//! # let _ = service;
//! ```

mod future;

use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::Extractor;
use tower::Service;
use tower_layer::Layer;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use future::TraceContextFuture;

/// Wraps a server's service in [`TraceContext`]: a span per request,
/// continuing the caller's trace; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer {
    _private: (),
}

impl TraceContextLayer {
    /// The layer. Set OpenTelemetry's global propagator
    /// (`TraceContextPropagator` for W3C trace context) once at start-up;
    /// the default one reads nothing.
    pub fn new() -> Self {
        TraceContextLayer::default()
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// A server's service whose every request runs in a `mesh.server` span
/// parented by the caller's trace context; made by [`TraceContextLayer`].
#[derive(Clone, Debug)]
pub struct TraceContext<S> {
    inner: S,
}

// === impl TraceContext ===

impl<S, B, RB> Service<Request<B>> for TraceContext<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "mesh.server",
            otel.kind = "server",
            http.request.method = %req.method(),
            url.path = req.uri().path(),
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        if !span.is_disabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&Headers(req.headers()))
            });
            // Fails only when no OpenTelemetry layer records this span:
            // then there is no trace to continue.
            let _ = span.set_parent(parent);
        }
        let future = span.in_scope(|| self.inner.call(req));
        TraceContextFuture::new(future, span)
    }
}

/// Request headers as OpenTelemetry's carrier.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
