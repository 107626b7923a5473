//! [`GrpcProbeClient`]: the HTTP/2 client gRPC health probes are sent
//! through.

use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::BoxError;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::probe::{erase_body, ProbeBody};

/// The HTTP/2 client a gRPC health probe goes through.
///
/// [`GrpcProbeClient::plaintext`] speaks HTTP/2 over cleartext TCP (h2c,
/// prior knowledge), what a plain tonic server expects. A mesh running
/// mutual TLS hands in its own HTTP/2 client instead, as it does a
/// [`ProbeClient`](crate::ProbeClient) for HTTP probes: any cloneable tower
/// service from `http::Request<tonic::body::Body>` to an `http::Response`
/// fits. The request's URI is absolute (`http://10.0.0.7:50051/grpc.health.v1.Health/Check`)
/// and carries the [`TargetService`](mesh_core::ext::TargetService) and
/// [`SelectedEndpoint`](mesh_core::ext::SelectedEndpoint) extensions.
/// Clones share the connection pool.
///
/// ```
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use mesh_health::grpc::GrpcProbeClient;
///
/// // What `plaintext()` builds; a mesh passes its TLS connector instead.
/// let hyper = Client::builder(TokioExecutor::new())
///     .http2_only(true)
///     .build_http::<tonic::body::Body>();
/// let client = GrpcProbeClient::new(hyper);
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct GrpcProbeClient {
    inner: BoxCloneSyncService<Request<tonic::body::Body>, Response<ProbeBody>, BoxError>,
}

// === impl GrpcProbeClient ===

impl GrpcProbeClient {
    /// Probes through `service`, which must speak HTTP/2.
    pub fn new<S, B>(service: S) -> Self
    where
        S: Service<Request<tonic::body::Body>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let erased = service.map_response(erase_body).map_err(Into::into);
        GrpcProbeClient {
            inner: BoxCloneSyncService::new(erased),
        }
    }

    /// An HTTP/2 cleartext client of its own (hyper-util's, over TCP):
    /// what gRPC probes use when given none. It refuses `https` URIs.
    pub fn plaintext() -> Self {
        GrpcProbeClient::new(
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http::<tonic::body::Body>(),
        )
    }
}

/// So tonic's generated `HealthClient` can call through it.
impl Service<Request<tonic::body::Body>> for GrpcProbeClient {
    type Response = Response<ProbeBody>;
    type Error = BoxError;
    type Future = <BoxCloneSyncService<
        Request<tonic::body::Body>,
        Response<ProbeBody>,
        BoxError,
    > as Service<Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        self.inner.call(request)
    }
}

impl fmt::Debug for GrpcProbeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcProbeClient").finish_non_exhaustive()
    }
}
