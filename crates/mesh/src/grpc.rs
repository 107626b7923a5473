//! [`GrpcChannel`]: the client as a channel for tonic's generated clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::BoxError;
use tower::Service;

use crate::client::{MeshBody, MeshClient, RequestBody};

/// The client as a channel for tonic (or any client whose requests carry
/// their own body type): each request body, unary or a client stream, is
/// streamed through the stack as it is produced ([`RequestBody::stream`]),
/// its first `replay_buffer` bytes kept so a retry can send them again;
/// a stream longer than that is committed to its first attempt, never
/// failed for its size. A call's `grpc-timeout` (what tonic's
/// `Request::set_timeout` sends) is its deadline: every attempt and every
/// backoff ends within it, and the call fails with `MeshError::Timeout`
/// when it runs out.
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
        let deadline = req.headers().get("grpc-timeout").and_then(grpc_timeout);
        let req = req.map(RequestBody::stream);
        Box::pin(async move { client.send_within(req, deadline).await })
    }
}

/// A `grpc-timeout` value (`100m`, `5S`: at most 8 digits and a unit of
/// `H`, `M`, `S`, `m`, `u` or `n`, as gRPC's wire format has it); `None`
/// for a malformed one, which then sets no deadline.
fn grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_wire_writes_them_and_malformed_ones_set_none() {
        let read = |v: &str| grpc_timeout(&http::HeaderValue::from_str(v).expect("value"));
        assert_eq!(read("100m"), Some(Duration::from_millis(100)));
        assert_eq!(read("5S"), Some(Duration::from_secs(5)));
        assert_eq!(read("2M"), Some(Duration::from_secs(120)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("250u"), Some(Duration::from_micros(250)));
        assert_eq!(read("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "m", "100", "100x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }
}
