//! [`RetryPolicy`]: the decisions, as a [`tower::retry::Policy`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response};
use mesh_core::ext::{Attempt, AvoidEndpoints, SelectedEndpoint};
use mesh_core::{
    BoxError, EndpointId, EventBus, FailureClassifier, FailureKind, MeshError, MeshEvent,
    ServiceName,
};
use tokio::time::Sleep;

use crate::config::RetryConfig;

/// Counters of one retry layer, shared by all its clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    retries: AtomicU64,
    exhausted: AtomicU64,
}

/// A snapshot of a retry layer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Attempts made beyond the first.
    pub retries: u64,
    /// Requests that still failed when they ran out of retries.
    pub exhausted: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RetryConfig,
    pub(crate) classifier: FailureClassifier,
    pub(crate) events: EventBus,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn stats(&self) -> RetryStats {
        RetryStats {
            retries: self.counters.retries.load(Ordering::Relaxed),
            exhausted: self.counters.exhausted.load(Ordering::Relaxed),
        }
    }
}

/// Decides, per request, whether and when to send it again.
///
/// It implements [`tower::retry::Policy`], so it also works with tower's
/// own `Retry` service: take one from [`crate::RetryLayer::policy`]. A
/// policy value is cloned for each request (tower does this), and counts
/// that request's retries.
///
/// Backoff sleeps on tokio's timer, so the runtime must have time enabled
/// (`#[tokio::main]` does; a hand-built runtime needs `enable_time`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
    retries: u32,
}

impl RetryPolicy {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RetryPolicy { shared, retries: 0 }
    }

    /// Whether `req` may be sent more than once whatever the failure:
    /// idempotent methods (RFC 9110 section 9.2.2), requests carrying an
    /// `Idempotency-Key`, or anything when configured so. Other requests
    /// are retried only after failures that prove they were never sent.
    pub fn may_retry<B>(&self, req: &Request<B>) -> bool {
        self.shared.config.retry_non_idempotent()
            || is_idempotent(req.method())
            || req.headers().contains_key("idempotency-key")
    }

    /// Why this result should be retried, or `None` if it should not be.
    fn retryable<RB>(&self, result: &Result<Response<RB>, BoxError>) -> Option<FailureKind> {
        let config = &self.shared.config;
        match result {
            Ok(response) => config
                .retries_status(response.status())
                .then(|| FailureKind::Status(response.status())),
            Err(error) => {
                let kind = self.shared.classifier.classify_error(error.as_ref());
                config.retries_error(kind).then_some(kind)
            }
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The endpoint that served (or failed) an attempt, if the balancer said.
fn failed_endpoint<RB>(result: &Result<Response<RB>, BoxError>) -> Option<EndpointId> {
    match result {
        Ok(response) => response
            .extensions()
            .get::<SelectedEndpoint>()
            .map(|s| s.0.id().clone()),
        Err(error) => {
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
            while let Some(e) = next {
                if let Some(MeshError::Endpoint { endpoint, .. }) = e.downcast_ref::<MeshError>() {
                    return Some(endpoint.clone());
                }
                next = e.source();
            }
            None
        }
    }
}

impl<B, RB> tower::retry::Policy<Request<B>, Response<RB>, BoxError> for RetryPolicy
where
    B: Clone,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<RB>, BoxError>,
    ) -> Option<Self::Future> {
        let reason = self.retryable(result)?;
        if !self.may_retry(req) && !reason.never_sent() {
            // A non-idempotent request may have been applied upstream; only
            // a failure that provably never sent it (refused connection,
            // open circuit) may be retried.
            return None;
        }
        if self.retries >= self.shared.config.max_retries() {
            self.shared
                .counters
                .exhausted
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%reason, retries = self.retries, "retries exhausted");
            return None;
        }
        let backoff = self.shared.config.backoff().delay(self.retries);
        self.retries += 1;
        let attempt = Attempt::FIRST.0.saturating_add(self.retries);
        let failed = failed_endpoint(result);
        if let Some(id) = &failed {
            req.extensions_mut()
                .get_or_insert_default::<AvoidEndpoints>()
                .insert(id.clone());
        }
        req.extensions_mut().insert(Attempt(attempt));
        self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%reason, attempt = attempt.get(), ?failed, ?backoff, "retrying");
        self.shared.events.publish(MeshEvent::RetryScheduled {
            service: req.uri().host().and_then(|h| ServiceName::new(h).ok()),
            attempt: attempt.get(),
            failed_endpoint: failed,
            reason,
            backoff,
        });
        Some(tokio::time::sleep(backoff))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // Kept even when no retry is left, so that `retry` still sees the
        // last outcome and counts an exhausted request; kept for
        // non-idempotent requests too, which may be retried when a failure
        // proves they were never sent.
        if self.shared.config.max_retries() == 0 {
            return None;
        }
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backoff, RetryConfig, RetryLayer};
    use http::{Request, Response, StatusCode};
    use mesh_core::ext::{Attempt, AvoidEndpoints, SelectedEndpoint};
    use mesh_core::{BoxError, Endpoint, MeshError, ServiceName};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    #[derive(Debug)]
    struct Seen {
        attempt: u32,
        avoid: Vec<String>,
    }

    fn layer(max_retries: u32) -> RetryLayer {
        RetryLayer::new(
            RetryConfig::builder()
                .max_retries(max_retries)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .unwrap(),
        )
    }

    /// A service that answers `statuses` in turn (`None` = connect error),
    /// each "from" endpoint 127.0.0.1:<attempt>, and logs what it saw.
    fn upstream(
        statuses: Vec<Option<u16>>,
        log: Arc<Mutex<Vec<Seen>>>,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        let statuses = Arc::new(statuses);
        service_fn(move |req: Request<String>| {
            let mut log = log.lock().unwrap();
            let attempt = req
                .extensions()
                .get::<Attempt>()
                .copied()
                .unwrap_or_default()
                .get();
            let avoid = req
                .extensions()
                .get::<AvoidEndpoints>()
                .map(|a| a.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default();
            log.push(Seen { attempt, avoid });
            let index = log.len() - 1;
            let endpoint = Endpoint::builder(([127, 0, 0, 1], index as u16 + 1).into()).build();
            let answer = statuses[index.min(statuses.len() - 1)];
            async move {
                match answer {
                    Some(code) => {
                        let mut r = Response::builder().status(code).body(()).unwrap();
                        r.extensions_mut().insert(SelectedEndpoint(endpoint));
                        Ok(r)
                    }
                    None => Err(Box::new(MeshError::Endpoint {
                        service: ServiceName::new("users").unwrap(),
                        endpoint: endpoint.id().clone(),
                        address: endpoint.address(),
                        source: Box::new(std::io::Error::from(
                            std::io::ErrorKind::ConnectionRefused,
                        )),
                    }) as BoxError),
                }
            }
        })
    }

    fn get() -> Request<String> {
        Request::get("http://users/x").body(String::new()).unwrap()
    }

    #[tokio::test]
    async fn each_retry_avoids_the_endpoints_that_failed_and_counts_attempts() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(503), None, Some(200)], Arc::clone(&log)));
        let response = svc.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let log = log.lock().unwrap();
        assert_eq!(log.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(log[1].avoid, ["127.0.0.1:1"]);
        assert_eq!(log[2].avoid, ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[tokio::test]
    async fn exhausted_retries_return_the_last_real_response() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = layer(2);
        let svc = l.layer(upstream(
            vec![Some(503), Some(502), Some(500)],
            Arc::clone(&log),
        ));
        let response = svc.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(log.lock().unwrap().len(), 3);
        assert_eq!(l.stats().retries, 2);
        assert_eq!(l.stats().exhausted, 1);
    }

    #[tokio::test]
    async fn exhausted_retries_return_the_last_real_error() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(1).layer(upstream(vec![None], Arc::clone(&log)));
        let err = svc.oneshot(get()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request to users endpoint 127.0.0.1:2 (127.0.0.1:2) failed"
        );
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn non_idempotent_requests_are_retried_only_when_never_sent() {
        let log = Arc::new(Mutex::new(Vec::new()));
        // A refused connection, then a 503: the POST is resent after the
        // first (it never left) but not after the second (it may have
        // been applied).
        let svc = layer(3).layer(upstream(vec![None, Some(503), Some(200)], Arc::clone(&log)));
        let post = Request::post("http://users/x")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.oneshot(post).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn non_idempotent_requests_are_sent_once_unless_keyed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(503)], Arc::clone(&log)));
        let post = Request::post("http://users/x")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 1);

        let keyed = Request::post("http://users/x")
            .header("Idempotency-Key", "abc")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.oneshot(keyed).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 5, "1 + 4 attempts");
    }

    #[tokio::test]
    async fn client_errors_and_unknown_errors_are_not_retried() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(404)], Arc::clone(&log)));
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 404);
        assert_eq!(log.lock().unwrap().len(), 1);

        let calls = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&calls);
        let svc = layer(3).layer(service_fn(move |_req: Request<String>| {
            *counted.lock().unwrap() += 1;
            async { Err::<Response<()>, BoxError>("unroutable".into()) }
        }));
        assert!(svc.oneshot(get()).await.is_err());
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
