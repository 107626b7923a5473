//! [`ResponseFuture`]: the response future of
//! [`HealthService`](crate::HealthService): a probe's answer, or the inner
//! service's response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

pin_project! {
    /// The response future of [`HealthService`](crate::HealthService).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Probe { response: Option<Response<Full<Bytes>>> },
        Inner { #[pin] future: F },
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(crate) fn probe(response: Response<Full<Bytes>>) -> Self {
        ResponseFuture {
            kind: Kind::Probe {
                response: Some(response),
            },
        }
    }

    pub(crate) fn inner(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Either<Full<Bytes>, B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Probe { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Left))),
                // Polled again after completing: an empty 500 rather than
                // a panic.
                None => {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Poll::Ready(Ok(response.map(Either::Left)))
                }
            },
            KindProj::Inner { future } => future
                .poll(cx)
                .map(|r| r.map(|response| response.map(Either::Right))),
        }
    }
}
