use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use mesh_core::ext::SelectedEndpoint;
use mesh_core::{BoxError, Endpoint, MeshError, ServiceName};
use pin_project_lite::pin_project;

use crate::body::{InFlight, TrackedBody};

pin_project! {
    /// The response future of [`crate::Balance`].
    ///
    /// Dropping it before the response arrives (a cancelled request) ends
    /// the in-flight count at once.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            call: Option<Call>,
        },
        Failed { error: Option<MeshError> },
    }
}

/// What the balancer remembers about a dispatched call.
struct Call {
    endpoint: Endpoint,
    service: ServiceName,
    in_flight: InFlight,
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(
        future: F,
        endpoint: Endpoint,
        service: ServiceName,
        in_flight: InFlight,
    ) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                call: Some(Call {
                    endpoint,
                    service,
                    in_flight,
                }),
            },
        }
    }

    pub(crate) fn failed(error: MeshError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TrackedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, call } => {
                let result = std::task::ready!(future.poll(cx));
                let Some(Call {
                    endpoint,
                    service,
                    mut in_flight,
                }) = call.take()
                else {
                    return Poll::Ready(Err(
                        "balance response future polled after completion".into()
                    ));
                };
                Poll::Ready(match result {
                    Ok(response) => {
                        in_flight.responded();
                        let mut response = response.map(|body| TrackedBody::new(body, in_flight));
                        response.extensions_mut().insert(SelectedEndpoint(endpoint));
                        Ok(response)
                    }
                    Err(error) => {
                        drop(in_flight);
                        let source = error.into();
                        Err(MeshError::Endpoint {
                            service,
                            endpoint: endpoint.id().clone(),
                            address: endpoint.address(),
                            source,
                        }
                        .into())
                    }
                })
            }
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => "balance response future polled after completion".into(),
            })),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
