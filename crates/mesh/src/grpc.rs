//! [`GrpcChannel`]: the client as a channel for tonic's generated clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use mesh_core::BoxError;
use tower::Service;

use crate::client::{MeshBody, MeshClient};

/// The largest request body a [`GrpcChannel`] reads.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

/// The client as a channel for tonic (or any client whose requests carry
/// their own body type): each request body is read (up to 4 MiB: unary
/// calls and small streams) so retries can replay it, then sent through
/// the stack like [`MeshClient::send`].
///
/// ```no_run
/// # async fn run(client: mesh::MeshClient) -> Result<(), Box<dyn std::error::Error>> {
/// let grpc = tonic::client::Grpc::with_origin(client.grpc_channel(), "http://greeter".parse()?);
/// # let _ = grpc; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcChannel {
    client: MeshClient,
}

// === impl MeshClient ===

impl MeshClient {
    /// This client as a channel for tonic's generated clients (route the
    /// service with `protocol = "h2c"` or over mutual TLS).
    pub fn grpc_channel(&self) -> GrpcChannel {
        GrpcChannel {
            client: self.clone(),
        }
    }
}

// === impl GrpcChannel ===

impl<B> Service<Request<B>> for GrpcChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MeshBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = Limited::new(body, MAX_REQUEST_BODY)
                .collect()
                .await?
                .to_bytes();
            client
                .send(Request::from_parts(parts, Full::new(body)))
                .await
        })
    }
}
