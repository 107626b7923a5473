//! [`FallbackLayer`]: answer from a fallback when a call is refused or fails
//! (the design document's `execute(fn, fallback)`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use mesh_core::ext::CallContext;
use mesh_core::grpc::{is_grpc_call, Answer};
use mesh_core::{BoxError, FailureClassifier, FailureKind, MeshError, Outcome};
use pin_project_lite::pin_project;
use tower::Service;
use tower_layer::Layer;

/// Why the fallback is asked to answer.
#[derive(Debug)]
pub enum Fault {
    /// A circuit breaker refused the call (it was never sent).
    Rejected(BoxError),
    /// The call failed with an error (connect, timeout, reset...).
    Error(BoxError),
    /// The call was answered with a status the classifier calls a failure
    /// (only with [`FallbackLayer::on_failed_responses`]).
    Response(StatusCode),
}

/// Answers with `fallback(fault)` instead of an error (and, if asked,
/// instead of a failed response). The fallback's body is any type that
/// converts into the inner service's (over a breaker, a plain body
/// becomes its [`ResponseBody`](crate::ResponseBody)).
///
/// Put it above the breaker, and above retries if the fallback should only
/// answer once they are spent:
///
/// ```
/// use mesh_breaker::{BreakerConfig, BreakerLayer, FallbackLayer, Fault};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let svc = ServiceBuilder::new()
///     .layer(FallbackLayer::new(|fault: Fault| {
///         // A cached or default answer: notifications can wait.
///         let note = match fault {
///             Fault::Rejected(_) => "queued: notifications are paused",
///             _ => "queued: notifications are failing",
///         };
///         Ok(http::Response::new(note.to_owned()))
///     }))
///     .layer(BreakerLayer::new(BreakerConfig::lenient()))
///     .service(service_fn(|_req: http::Request<()>| async {
///         Err::<http::Response<String>, _>(std::io::Error::other("upstream down"))
///     }));
/// let response = svc.oneshot(http::Request::get("http://notify/").body(())?).await?;
/// assert_eq!(response.into_body().into_inner(), "queued: notifications are failing");
/// # Ok(()) }
/// ```
pub struct FallbackLayer<F> {
    fallback: Arc<F>,
    failed_responses: Option<FailureClassifier>,
}

impl<F> FallbackLayer<F> {
    /// Answers errors and refusals with `fallback`.
    pub fn new(fallback: F) -> Self {
        FallbackLayer {
            fallback: Arc::new(fallback),
            failed_responses: None,
        }
    }

    /// Also replaces responses that `classifier` calls failures (a 503,
    /// say) with the fallback's answer. A gRPC call's answer is judged by
    /// a status in its headers (a trailers-only answer: one in trailers
    /// comes after the answer was passed on); any other call's by its HTTP
    /// status alone, whatever its headers say. The kind of call is noted
    /// in the request's [`CallContext`], if it has one (the facade's, or a
    /// caller's), so that the layers below judge the answer alike; without
    /// one, layers below with no retry layer above them read each answer
    /// for a gRPC status, as they always do without a note.
    pub fn on_failed_responses(mut self, classifier: FailureClassifier) -> Self {
        self.failed_responses = Some(classifier);
        self
    }
}

impl<F> Clone for FallbackLayer<F> {
    fn clone(&self) -> Self {
        FallbackLayer {
            fallback: Arc::clone(&self.fallback),
            failed_responses: self.failed_responses.clone(),
        }
    }
}

impl<F> std::fmt::Debug for FallbackLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("failed_responses", &self.failed_responses)
            .finish_non_exhaustive()
    }
}

impl<S, F> Layer<S> for FallbackLayer<F> {
    type Service = Fallback<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`FallbackLayer`].
pub struct Fallback<S, F> {
    inner: S,
    layer: FallbackLayer<F>,
}

impl<S: Clone, F> Clone for Fallback<S, F> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for Fallback<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, B, RB, FB> Service<Request<B>> for Fallback<S, F>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    F: Fn(Fault) -> Result<Response<FB>, BoxError>,
    FB: Into<RB>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = FallbackFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Only when answers may be replaced.
        let grpc_call = self
            .layer
            .failed_responses
            .as_ref()
            .map(|_| kind_of_call(&req));
        FallbackFuture {
            inner: self.inner.call(req),
            layer: self.layer.clone(),
            grpc_call,
        }
    }
}

pin_project! {
    /// The response future of [`Fallback`].
    pub struct FallbackFuture<Fut, F> {
        #[pin]
        inner: Fut,
        layer: FallbackLayer<F>,
        // Whether the call is a gRPC call, when its answer may be replaced.
        grpc_call: Option<bool>,
    }
}

impl<Fut, F, RB, FB, E> Future for FallbackFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    F: Fn(Fault) -> Result<Response<FB>, BoxError>,
    FB: Into<RB>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let fault = match result {
            Ok(response) => match &this.layer.failed_responses {
                Some(c) if failed(c, *this.grpc_call, &response) => {
                    Fault::Response(response.status())
                }
                _ => return Poll::Ready(Ok(response)),
            },
            Err(error) => {
                let error: BoxError = error.into();
                let refused = FailureClassifier::default().classify_error(error.as_ref())
                    == FailureKind::CircuitOpen
                    || matches!(
                        MeshError::find(error.as_ref()),
                        Some(MeshError::CircuitOpen { .. })
                    );
                if refused {
                    Fault::Rejected(error)
                } else {
                    Fault::Error(error)
                }
            }
        };
        tracing::debug!(?fault, "answering from fallback");
        Poll::Ready((this.layer.fallback)(fault).map(|answer| answer.map(Into::into)))
    }
}

/// Whether `req` is a gRPC call: as a layer above noted it in the call's
/// context, else as its content type says, then noted in the context if
/// the request has one, so that the layers below judge the answer as this
/// one does, a breaker with no retry layer above it included. None is
/// attached for the note: a context changes where the layers below leave
/// theirs (the balancer's choice would no longer ride on the response).
fn kind_of_call<B>(req: &Request<B>) -> bool {
    let context = CallContext::of(req);
    if let Some(noted) = context.and_then(CallContext::is_grpc_call) {
        return noted;
    }
    let grpc_call = is_grpc_call(req);
    if let Some(context) = context {
        context.note_grpc_call(grpc_call);
    }
    grpc_call
}

/// Whether `classifier` calls `response` a failure: by its gRPC status
/// only for a gRPC call.
fn failed<B>(
    classifier: &FailureClassifier,
    grpc_call: Option<bool>,
    response: &Response<B>,
) -> bool {
    let answer = Answer::of_call(grpc_call, response);
    matches!(
        classifier.classify_answer(response.status(), answer),
        Outcome::Failure(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BreakerConfig, BreakerKey, BreakerLayer};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn answer(fault: Fault) -> Result<Response<String>, BoxError> {
        Ok(Response::new(match fault {
            Fault::Rejected(_) => "rejected".to_owned(),
            Fault::Error(e) => format!("error: {e}"),
            Fault::Response(s) => format!("status {}", s.as_u16()),
        }))
    }

    #[tokio::test]
    async fn answers_refusals_errors_and_if_asked_failed_responses() {
        let breaker = BreakerLayer::new(BreakerConfig::default());
        let svc = ServiceBuilder::new()
            .layer(FallbackLayer::new(answer).on_failed_responses(FailureClassifier::default()))
            .layer(breaker.clone())
            .service(service_fn(|req: http::Request<()>| async move {
                match req.uri().path() {
                    "/err" => Err::<Response<String>, BoxError>("boom".into()),
                    "/503" => Ok(http::Response::builder()
                        .status(503)
                        .body(String::new())
                        .unwrap()),
                    _ => Ok(Response::new("real".to_owned())),
                }
            }));
        let get = |path: &str| {
            http::Request::get(format!("http://api{path}"))
                .body(())
                .unwrap()
        };
        let body = |r: Response<crate::ResponseBody<String>>| r.into_body().into_inner();
        assert_eq!(body(svc.clone().oneshot(get("/ok")).await.unwrap()), "real");
        assert_eq!(
            body(svc.clone().oneshot(get("/err")).await.unwrap()),
            "error: boom"
        );
        assert_eq!(
            body(svc.clone().oneshot(get("/503")).await.unwrap()),
            "status 503"
        );
        let key = BreakerKey::Authority(http::uri::Authority::from_static("api"));
        breaker.handle(&key).unwrap().force_open();
        assert_eq!(body(svc.oneshot(get("/ok")).await.unwrap()), "rejected");
    }

    /// Every answer is a 200 in `application/grpc` with `grpc-status: 14`:
    /// a gRPC call's is a failure and is replaced; a plain call's is a 200
    /// and passes. The breaker below, with no retry layer to note the kind
    /// of call, judges each as the fallback does from the note in the
    /// calls' contexts (attached by the caller, as the facade does).
    #[tokio::test]
    async fn only_a_grpc_call_is_judged_by_its_grpc_status() {
        let breaker = BreakerLayer::new(BreakerConfig::default());
        let svc = ServiceBuilder::new()
            .layer(FallbackLayer::new(answer).on_failed_responses(FailureClassifier::default()))
            .layer(breaker.clone())
            .service(service_fn(|_req: http::Request<()>| async move {
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14")
                        .body("real".to_owned())
                        .unwrap(),
                )
            }));
        let body = |r: Response<crate::ResponseBody<String>>| r.into_body().into_inner();
        let key = BreakerKey::Authority(http::uri::Authority::from_static("api"));
        let mut plain = http::Request::get("http://api/").body(()).unwrap();
        CallContext::attach(&mut plain);
        let passed = svc.clone().oneshot(plain).await.unwrap();
        assert_eq!(body(passed), "real", "a plain call's 200 passes");
        let judged = breaker.handle(&key).unwrap().metrics();
        assert_eq!((judged.successful_total, judged.failed_total), (1, 0));
        let mut grpc = http::Request::post("http://api/greeter.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        CallContext::attach(&mut grpc);
        let replaced = svc.oneshot(grpc).await.unwrap();
        assert_eq!(body(replaced), "status 200", "UNAVAILABLE is replaced");
        let judged = breaker.handle(&key).unwrap().metrics();
        assert_eq!((judged.successful_total, judged.failed_total), (1, 1));
    }

    /// The kind of call is noted only in a context the request carries: a
    /// context attached here would move the notes of the layers below
    /// (the balancer's choice) off the response.
    #[tokio::test]
    async fn a_request_without_a_context_gets_none() {
        let svc = ServiceBuilder::new()
            .layer(FallbackLayer::new(answer).on_failed_responses(FailureClassifier::default()))
            .service(service_fn(|req: http::Request<()>| async move {
                let attached = CallContext::of(&req).is_some();
                Ok::<_, BoxError>(Response::new(format!("context: {attached}")))
            }));
        let plain = http::Request::get("http://api/").body(()).unwrap();
        let answered = svc.oneshot(plain).await.unwrap();
        assert_eq!(answered.into_body(), "context: false");
    }
}
