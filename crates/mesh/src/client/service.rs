//! [`MeshClient`] as a [`tower::Service`], for anything that expects a
//! `Service<http::Request<_>>`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::BoxError;
use tower::Service;

use super::{MeshBody, MeshClient, RequestBody};

// === impl MeshClient ===

/// The client as a tower service: requests go to the service their URI's
/// host names (`http://users/...`), so it can sit under a tonic client or
/// anything that expects a `Service<http::Request<_>>`.
impl<B: Into<RequestBody>> Service<Request<B>> for MeshClient {
    type Response = Response<MeshBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call borrows (or, when busy, clones) its route's stack,
        // which waits for readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let req = req.map(Into::<RequestBody>::into);
        Box::pin(async move { this.send(req).await })
    }
}
