use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use http::{Request, Response};
use mesh_core::ext::{CallContext, SelectedEndpoint};
use mesh_core::grpc::{Answer, GrpcCodes};
use mesh_core::{BoxError, Endpoint, MeshError, ServiceName};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower::Service;

use crate::body::{InFlight, TrackedBody};
use crate::service::Chooser;
use crate::slots::{Slots, Waiter};

pin_project! {
    /// The response future of [`crate::Balance`].
    ///
    /// Dropping it before the response arrives (a cancelled request) ends
    /// the in-flight count at once.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called {
            #[pin]
            future: S::Future,
            call: Option<Call>,
        },
        Failed { error: Option<MeshError> },
        // Every endpoint was at its connection limit: look again each time
        // a call of this balancer ends, until one has room or the deadline
        // passes. Boxed, so that this rare state does not make every
        // call's future larger.
        Waiting { waiting: Pin<Box<Waiting<S, B>>> },
    }
}

pin_project! {
    /// A request waiting for a connection slot.
    struct Waiting<S, B> {
        #[pin]
        freed: OwnedNotified,
        #[pin]
        deadline: Sleep,
        waiter: Waiter,
        inner: S,
        chooser: Chooser,
        req: Option<Request<B>>,
    }
}

/// What the balancer remembers about a dispatched call.
pub(crate) struct Call {
    in_flight: InFlight,
    chosen: Chosen,
}

/// Where the endpoint a call went to is kept.
pub(crate) enum Chosen {
    /// In the call's context, read back only to name it in an error.
    InContext(CallContext),
    /// Here, for a request without a context: the response names it.
    Here {
        endpoint: Endpoint,
        service: ServiceName,
    },
}

impl Call {
    pub(crate) fn new(in_flight: InFlight, chosen: Chosen) -> Self {
        Call { in_flight, chosen }
    }
}

impl Chosen {
    /// Whether the call is a gRPC call, when its context says.
    fn grpc_call(&self) -> Option<bool> {
        match self {
            Chosen::InContext(context) => context.is_grpc_call(),
            Chosen::Here { .. } => None,
        }
    }

    /// `error` from the endpoint chosen, wrapped in
    /// [`MeshError::Endpoint`] naming it.
    fn blame(self, error: BoxError) -> BoxError {
        let (service, endpoint) = match self {
            Chosen::Here { endpoint, service } => (service, endpoint),
            Chosen::InContext(context) => match context.chosen_with_service() {
                Some(chosen) => chosen,
                None => return error,
            },
        };
        MeshError::Endpoint {
            service,
            endpoint: endpoint.id().clone(),
            address: endpoint.address(),
            source: error,
        }
        .into()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn called(future: S::Future, call: Call) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                call: Some(call),
            },
        }
    }

    pub(crate) fn failed(error: MeshError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(
        inner: S,
        chooser: Chooser,
        slots: Arc<Slots>,
        req: Request<B>,
        max: Duration,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    freed: slots.next_freed(),
                    deadline: tokio::time::sleep(max),
                    waiter: Waiter::new(slots),
                    inner,
                    chooser,
                    req: Some(req),
                }),
            },
        }
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<TrackedBody<RB>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Called { future, call } => return poll_called(future, call, cx),
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(match error.take() {
                        Some(e) => e.into(),
                        None => "balance response future polled after completion".into(),
                    }))
                }
                StateProj::Waiting { waiting } => {
                    std::task::ready!(poll_waiting(waiting.as_mut(), cx))?
                }
            };
            this.state.set(next);
        }
    }
}

/// Looks for a slot, and waits for the next freed one (or the deadline)
/// when there is none; ready with the call to make once there is one.
fn poll_waiting<S, B, RB>(
    mut waiting: Pin<&mut Waiting<S, B>>,
    cx: &mut Context<'_>,
) -> Poll<Result<State<S, B>, BoxError>>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    loop {
        let mut w = waiting.as_mut().project();
        // Registered before looking, so a slot freed in between wakes us.
        w.freed.as_mut().enable();
        if let Err(e) = std::task::ready!(w.inner.poll_ready(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        let Some(mut request) = w.req.take() else {
            return Poll::Ready(Err("balance response future polled after completion".into()));
        };
        let error = match w.chooser.dispatch(&mut request) {
            Ok(call) => {
                return Poll::Ready(Ok(State::Called {
                    future: w.inner.call(request),
                    call: Some(call),
                }))
            }
            Err(error @ MeshError::AtCapacity { .. }) => {
                *w.req = Some(request);
                error
            }
            Err(error) => return Poll::Ready(Err(error.into())),
        };
        if w.deadline.poll(cx).is_ready() {
            return Poll::Ready(Err(error.into()));
        }
        std::task::ready!(w.freed.as_mut().poll(cx));
        // Woken by a freed slot: wait on the next one, and look again.
        w.freed.set(w.waiter.slots().next_freed());
    }
}

fn poll_called<F, RB, E>(
    future: Pin<&mut F>,
    call: &mut Option<Call>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<TrackedBody<RB>>, BoxError>>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    let result = std::task::ready!(future.poll(cx));
    let Some(Call {
        mut in_flight,
        chosen,
    }) = call.take()
    else {
        return Poll::Ready(Err("balance response future polled after completion".into()));
    };
    Poll::Ready(match result {
        Ok(response) => {
            // A server error answered fast is no sign of a fast instance,
            // nor is a gRPC failure answered trailers-only.
            let answer = Answer::of_call(chosen.grpc_call(), &response);
            let grpc_failed = match answer {
                Answer::TrailersOnly(code) => GrpcCodes::failures().contains(code),
                Answer::Http | Answer::Streamed => false,
            };
            match response.status().is_server_error() || grpc_failed {
                true => in_flight.failed(),
                false => in_flight.responded(),
            }
            let status_at_end = answer == Answer::Streamed;
            let mut response = response.map(|body| {
                let tracked = TrackedBody::new(body, in_flight);
                match status_at_end {
                    true => tracked.status_at_end(),
                    false => tracked,
                }
            });
            if let Chosen::Here { endpoint, .. } = chosen {
                response.extensions_mut().insert(SelectedEndpoint(endpoint));
            }
            Ok(response)
        }
        Err(error) => {
            in_flight.failed();
            drop(in_flight);
            Err(chosen.blame(error.into()))
        }
    })
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
