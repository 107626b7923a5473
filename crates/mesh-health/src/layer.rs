//! [`HealthLayer`]: answers `/health/live`, `/health/ready` and
//! `/health/startup` in front of any hyper service or axum `Router`.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use mesh_core::{ConfigError, Probe, ProbeStatus};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::ResponseFuture;
use crate::manager::HealthCheckManager;

/// Where the probes are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPaths {
    live: Arc<str>,
    ready: Arc<str>,
    startup: Arc<str>,
}

impl Default for HealthPaths {
    fn default() -> Self {
        HealthPaths {
            live: Arc::from("/health/live"),
            ready: Arc::from("/health/ready"),
            startup: Arc::from("/health/startup"),
        }
    }
}

impl HealthPaths {
    /// Custom paths (say `/livez`, `/readyz`, `/startupz`): each must start
    /// with `/` and the three must differ.
    ///
    /// ```
    /// use mesh_health::HealthPaths;
    /// let paths = HealthPaths::new("/livez", "/readyz", "/startupz")?;
    /// # let _ = paths;
    /// let err = HealthPaths::new("/livez", "readyz", "/startupz").unwrap_err();
    /// assert_eq!(err.key(), "health.paths.ready");
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path at fault (`health.paths.ready`),
    /// or `health.paths` when two are the same.
    pub fn new(live: &str, ready: &str, startup: &str) -> Result<Self, ConfigError> {
        for (what, path) in [("live", live), ("ready", ready), ("startup", startup)] {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                // Quoted without a query, which may carry a token.
                let shown = path.split(['?', '#']).next().unwrap_or_default();
                return Err(ConfigError::new(
                    format!("health.paths.{what}"),
                    format!("{shown:?} is not a path (it must start with '/', without query or fragment)"),
                ));
            }
        }
        if live == ready || ready == startup || live == startup {
            return Err(ConfigError::new(
                "health.paths",
                "the three probe paths must differ",
            ));
        }
        Ok(HealthPaths {
            live: Arc::from(live),
            ready: Arc::from(ready),
            startup: Arc::from(startup),
        })
    }

    /// The probe served at `path`, if any: three string comparisons, no
    /// allocation.
    pub fn probe_for(&self, path: &str) -> Option<Probe> {
        if path == &*self.live {
            Some(Probe::Liveness)
        } else if path == &*self.ready {
            Some(Probe::Readiness)
        } else if path == &*self.startup {
            Some(Probe::Startup)
        } else {
            None
        }
    }
}

/// Serves the probes of a [`HealthCheckManager`] and passes every other
/// request to the inner service untouched.
///
/// A `GET` or `HEAD` of a probe path answers `200` when the probe passes
/// (healthy or degraded) and `503` when it does not, with the status alone
/// as JSON (`{"status":"healthy"}`); `HEAD` answers the same status with
/// no body. The detailed report (each check's name, status, last error,
/// last duration and consecutive failures) is served only when asked for
/// with [`HealthLayer::details`]: check names and errors describe the
/// service's internals to whoever can reach the port, and a kubelet or a
/// load balancer needs only the status code. Other
/// methods, and all other paths, go to the inner service. The service is
/// always ready, so probes never queue behind the application; the inner
/// service must be `Clone` (an axum `Router` and hyper `service_fn`s are).
///
/// ```
/// use mesh_health::{HealthCheckManager, HealthLayer};
/// use tower::ServiceBuilder;
/// # fn main() -> Result<(), mesh_core::ConfigError> {
/// let manager = HealthCheckManager::builder().build()?;
/// let app = ServiceBuilder::new()
///     .layer(HealthLayer::new(manager))
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
///     });
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HealthLayer {
    manager: HealthCheckManager,
    paths: HealthPaths,
    details: bool,
}

impl HealthLayer {
    /// Serves `manager`'s probes on the default paths.
    pub fn new(manager: HealthCheckManager) -> Self {
        HealthLayer {
            manager,
            paths: HealthPaths::default(),
            details: false,
        }
    }

    /// Serves them on `paths` instead.
    pub fn paths(mut self, paths: HealthPaths) -> Self {
        self.paths = paths;
        self
    }

    /// Whether probes answer the detailed report (each check's name,
    /// status, last error, last duration and consecutive failures) rather
    /// than the status alone (the default): for a port only operators
    /// reach.
    ///
    /// ```
    /// use mesh_health::{HealthCheckManager, HealthLayer};
    /// # fn main() -> Result<(), mesh_core::ConfigError> {
    /// let layer = HealthLayer::new(HealthCheckManager::builder().build()?).details(true);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn details(mut self, details: bool) -> Self {
        self.details = details;
        self
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            manager: self.manager.clone(),
            paths: self.paths.clone(),
            details: self.details,
        }
    }
}

/// The service [`HealthLayer`] makes.
#[derive(Clone, Debug)]
pub struct HealthService<S> {
    inner: S,
    manager: HealthCheckManager,
    paths: HealthPaths,
    details: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HealthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<Either<Full<Bytes>, ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Oneshot<S, Request<ReqBody>>>;

    /// Always ready: a probe must be answered even when the application is
    /// overloaded or failing (a liveness probe stuck behind a full
    /// concurrency limit would get the pod restarted). Requests for the
    /// application wait for its readiness in their future instead.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method();
        if method == Method::GET || method == Method::HEAD {
            if let Some(probe) = self.paths.probe_for(req.uri().path()) {
                return ResponseFuture::probe(self.answer(probe, method == Method::HEAD));
            }
        }
        // The clone takes this one's place; the original (which may hold a
        // readiness reservation) is driven by oneshot: poll_ready, call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::inner(inner.oneshot(req))
    }
}

impl<S> HealthService<S> {
    fn answer(&self, probe: Probe, head: bool) -> Response<Full<Bytes>> {
        let (verdict, body) = match (head, self.details) {
            (true, _) => (self.manager.status(probe), Bytes::new()),
            (false, false) => {
                let verdict = self.manager.status(probe);
                (verdict, status_only(verdict))
            }
            (false, true) => {
                let report = self.manager.report(probe);
                let body = serde_json::to_vec(&report)
                    .map(Bytes::from)
                    .unwrap_or_else(|_| status_only(report.status));
                (report.status, body)
            }
        };
        let status = match verdict.passes() {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }
}

/// The body that says the status and nothing else.
fn status_only(status: ProbeStatus) -> Bytes {
    Bytes::from_static(match status {
        ProbeStatus::Healthy => br#"{"status":"healthy"}"#,
        ProbeStatus::Degraded => br#"{"status":"degraded"}"#,
        ProbeStatus::Unhealthy => br#"{"status":"unhealthy"}"#,
    })
}
