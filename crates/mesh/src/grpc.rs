//! [`GrpcChannel`]: the client as a channel for tonic's generated clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::grpc::GrpcCode;
use mesh_core::{BoxError, FailureClassifier, FailureKind, MeshError};
use tower::Service;

use crate::client::{MeshBody, MeshClient, RequestBody};

/// The client as a channel for tonic (or any client whose requests carry
/// their own body type): each request body, unary or a client stream, is
/// streamed through the stack as it is produced ([`RequestBody::stream`]),
/// its first `replay_buffer` bytes kept so a retry can send them again;
/// a stream longer than that is committed to its first attempt, never
/// failed for its size. A gRPC call's `grpc-timeout` (what tonic's
/// `Request::set_timeout` sends; read on `application/grpc` requests,
/// which tonic's are) is its deadline: every attempt and every backoff
/// ends within it, the response's headers arrive by it, and the server is
/// told no more. A call the mesh cannot complete is answered as
/// a gRPC server would answer it, trailers-only: `DEADLINE_EXCEEDED` when
/// its deadline runs out, `RESOURCE_EXHAUSTED` over a limit, `UNAVAILABLE`
/// when no instance could answer (none known or available, circuits open,
/// connections refused), `INTERNAL` for a request the mesh cannot route;
/// the message says why.
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
        let req = req.map(RequestBody::stream);
        Box::pin(async move {
            let sent = client.send(req).await;
            Ok(sent.unwrap_or_else(|error| failed(&*error)))
        })
    }
}

/// A call the mesh could not complete, answered as a gRPC server would
/// (trailers-only): its code is what gRPC clients expect for the cause
/// (`DEADLINE_EXCEEDED` for a deadline that ran out, `UNAVAILABLE` when no
/// instance could answer...), so a tonic client sees a `Status` it can
/// act on rather than `UNKNOWN`; the message is the error's.
fn failed(error: &(dyn std::error::Error + 'static)) -> Response<MeshBody> {
    let code = code_for(error);
    let message =
        percent_encoding::utf8_percent_encode(&error.to_string(), MESSAGE_ESCAPES).to_string();
    let mut response = Response::new(MeshBody::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        http::HeaderValue::from(u16::from(code.get())),
    );
    if let Ok(message) = http::HeaderValue::from_str(&message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// The bytes `grpc-message` percent-encodes: controls, `%` and all that is
/// not ASCII (gRPC's wire format).
const MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The gRPC code for a call that failed with `error`.
fn code_for(error: &(dyn std::error::Error + 'static)) -> GrpcCode {
    if FailureClassifier::default().classify_error(error) == FailureKind::Timeout {
        return GrpcCode::DEADLINE_EXCEEDED;
    }
    let chain = std::iter::successors(Some(error), |e| e.source());
    let first = chain
        .filter_map(|e| e.downcast_ref::<MeshError>())
        .find(|e| !matches!(e, MeshError::Endpoint { .. }));
    match first {
        Some(MeshError::LimitExceeded { .. } | MeshError::AtCapacity { .. }) => {
            GrpcCode::RESOURCE_EXHAUSTED
        }
        Some(
            MeshError::Misconfigured { .. }
            | MeshError::MissingAuthority
            | MeshError::InvalidAuthority { .. }
            | MeshError::InvalidPath { .. },
        ) => GrpcCode::INTERNAL,
        // No instance answered: unknown or empty service, open circuit,
        // refused or broken connection, shutting down.
        _ => GrpcCode::UNAVAILABLE,
    }
}
