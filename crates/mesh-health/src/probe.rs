//! [`ProbeClient`]: the HTTP client health probes are sent through.
//!
//! Probes build their own plain HTTP client unless they are given one. A
//! mesh running mutual TLS hands its own client in (a hyper client over its
//! TLS connector, say), so a probe travels exactly like a call: same
//! certificates, same verification, never plaintext. The client is a
//! type-erased tower service, so this crate needs no TLS of its own.

use std::fmt;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::BoxError;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

/// The body of an answer to a probe, whatever the client's body type.
pub type ProbeBody = UnsyncBoxBody<Bytes, BoxError>;

/// The HTTP client a probe's `GET` goes through.
///
/// Any cloneable tower service from `http::Request<Empty<Bytes>>` to an
/// `http::Response` fits: a hyper-util client with any connector (a
/// mutual-TLS one in a mesh), or a whole tower stack in front of one. The
/// request's URI is absolute (`https://10.0.0.7:8443/health/ready`), and
/// the service is called once per probe after `poll_ready`. Cloning is
/// cheap: clones share the service's connection pool when it has one.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use mesh_health::ProbeClient;
///
/// // The connector here is plain HTTP; a mesh passes its TLS connector.
/// let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
/// let client = ProbeClient::new(hyper);
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct ProbeClient {
    inner: BoxCloneSyncService<Request<Empty<Bytes>>, Response<ProbeBody>, BoxError>,
}

// === impl ProbeClient ===

impl ProbeClient {
    /// Probes through `service`.
    pub fn new<S, B>(service: S) -> Self
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let erased = service.map_response(erase_body).map_err(Into::into);
        ProbeClient {
            inner: BoxCloneSyncService::new(erased),
        }
    }

    /// A plain HTTP/1 client of its own (hyper-util's, over TCP): what
    /// probes use when given none. It refuses `https` URIs.
    pub fn plaintext() -> Self {
        ProbeClient::new(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>())
    }

    /// Sends `req` once the service is ready.
    pub(crate) async fn send(
        &self,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<ProbeBody>, BoxError> {
        self.inner.clone().oneshot(req).await
    }
}

/// `response` with its body as a [`ProbeBody`], whatever the client's body
/// type: the probe clients are type-erased so a mesh can hand in any stack.
pub(crate) fn erase_body<B>(response: Response<B>) -> Response<ProbeBody>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| {
        body.map_frame(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into)
            .boxed_unsync()
    })
}

impl fmt::Debug for ProbeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeClient").finish_non_exhaustive()
    }
}
