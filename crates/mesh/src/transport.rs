//! The leaf of every stack, behind one type: plain HTTP/1.1 on
//! connections kept per endpoint ([`EndpointClient`]), and hyper-util's
//! pooled client for h2c and for mutual TLS.
//!
//! Over mutual TLS every destination service gets a client of its own,
//! whose connector accepts only a server presenting that service's
//! identity: hyper-util pools connections by scheme and authority, and the
//! balancer sets the authority to an endpoint's address, so one shared pool
//! would hand a connection verified for one service to a call for another
//! that happens to list the same address.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::client::SentBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use mesh_core::ext::{with_endpoint_set, TargetService};
use mesh_core::{BoxError, MeshError, ServiceName};
use mesh_discover::Catalog;
use mesh_tls::{Credentials, MeshConnector, SpiffeId, TlsConfig};
use tower::Service;

use crate::endpoint_client::{self, tcp, EndpointClient};

/// A hyper-util client over mesh-tls's connector (https only).
pub(crate) type TlsClient = Client<MeshConnector<HttpConnector>, SentBody>;

/// hyper-util's client without TLS, or the per-service mutual TLS clients;
/// both answer with hyper's response.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    /// Plain HTTP/1.1: connections kept per endpoint.
    Http1(EndpointClient<SentBody>),
    /// Shared: a stack is cloned per lane (and per call when its lane is
    /// busy), and one `Arc` is cheaper to clone than the client's own
    /// handles.
    Plain(Arc<Client<HttpConnector, SentBody>>),
    Tls(Arc<TlsClients>),
}

pin_project_lite::pin_project! {
    /// The response future: hyper-util's, [`EndpointClient`]'s, or a
    /// refusal made before anything was sent.
    #[project = TransportFutureProj]
    pub(crate) enum TransportFuture {
        Sent { #[pin] future: ResponseFuture },
        OnEndpoint { #[pin] future: endpoint_client::ResponseFuture },
        Refused { error: Option<BoxError> },
    }
}

// === impl TransportFuture ===

impl Future for TransportFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TransportFutureProj::Sent { future } => future.poll(cx).map_err(Into::into),
            TransportFutureProj::OnEndpoint { future } => future.poll(cx),
            TransportFutureProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "mesh transport: polled after completion".into()))),
        }
    }
}

// === impl Transport ===

impl Transport {
    /// Plain TCP, HTTP/1.1 on connections kept per endpoint.
    pub(crate) fn http1() -> Transport {
        Transport::Http1(EndpointClient::new())
    }

    /// Plain TCP, HTTP/2 by prior knowledge (h2c).
    pub(crate) fn h2c() -> Transport {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(true);
        Transport::Plain(Arc::new(builder.build(tcp())))
    }
}

impl Service<Request<SentBody>> for Transport {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready (it pools internally).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<SentBody>) -> Self::Future {
        match self {
            Transport::Http1(endpoints) => TransportFuture::OnEndpoint {
                future: endpoints.call(req),
            },
            Transport::Plain(client) => TransportFuture::Sent {
                future: client.request(req),
            },
            Transport::Tls(clients) => match clients.send(req) {
                Ok(future) => TransportFuture::Sent { future },
                Err(error) => TransportFuture::Refused { error: Some(error) },
            },
        }
    }
}

// === impl TlsClients ===

/// The most destination services with a client of their own; past it,
/// clients of services discovery no longer knows are dropped first.
const MAX_CLIENTS: usize = 4096;

/// One mutual TLS client per destination service, each expecting that
/// service's identity (`[tls] peer_identity`, or the service's own
/// `identity`), built on the service's first call.
pub(crate) struct TlsClients {
    config: TlsConfig,
    credentials: Credentials,
    http2_only: bool,
    /// Identities configured per service, over the template.
    identities: HashMap<ServiceName, SpiffeId>,
    /// Which services still exist, to drop clients of gone ones.
    catalog: Catalog,
    clients: ArcSwap<HashMap<ServiceName, TlsClient>>,
    /// Serializes first-call inserts.
    adding: Mutex<()>,
}

impl std::fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClients")
            .field("http2_only", &self.http2_only)
            .field("services", &self.clients.load().len())
            .finish_non_exhaustive()
    }
}

impl TlsClients {
    pub(crate) fn new(
        config: TlsConfig,
        credentials: Credentials,
        identities: HashMap<ServiceName, SpiffeId>,
        catalog: Catalog,
        http2_only: bool,
    ) -> TlsClients {
        TlsClients {
            config,
            credentials,
            http2_only,
            identities,
            catalog,
            clients: ArcSwap::default(),
            adding: Mutex::new(()),
        }
    }

    /// Sends `req` over mutual TLS to the service it is for, whatever the
    /// scheme its URI was written with.
    fn send(&self, req: Request<SentBody>) -> Result<ResponseFuture, BoxError> {
        let service = destination(&req).ok_or(MeshError::Misconfigured {
            layer: "mesh transport",
            missing: "target service",
            hint: "mutual TLS needs to know which service a request is for: \
                   route it through discovery, or set TargetService",
        })?;
        let client = self.client_for(&service)?;
        let (mut parts, body) = req.into_parts();
        parts.uri = https(parts.uri)?;
        Ok(client.request(Request::from_parts(parts, body)))
    }

    /// The client for `service`: built on first use.
    pub(crate) fn client_for(&self, service: &ServiceName) -> Result<TlsClient, BoxError> {
        if let Some(client) = self.clients.load().get(service) {
            return Ok(client.clone());
        }
        let _adding = self
            .adding
            .lock()
            .map_err(|_| "mesh transport: lock poisoned")?;
        let current = self.clients.load_full();
        if let Some(client) = current.get(service) {
            return Ok(client.clone());
        }
        let mut clients = HashMap::clone(&current);
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|name, _| self.catalog.get(name.as_str()).is_some());
        }
        if clients.len() >= MAX_CLIENTS {
            return Err(format!(
                "mutual TLS to {service}: clients for {MAX_CLIENTS} services already exist, \
                 and discovery knows all of them"
            )
            .into());
        }
        let client = self.build(service)?;
        clients.insert(service.clone(), client.clone());
        self.clients.store(Arc::new(clients));
        Ok(client)
    }

    /// The identity `service` must present: its own, else the template's.
    /// A service with neither is refused: a name check against the
    /// endpoint's address would let any mesh certificate answer for it.
    pub(crate) fn identity_for(&self, service: &ServiceName) -> Result<SpiffeId, BoxError> {
        if let Some(id) = self.identities.get(service) {
            return Ok(id.clone());
        }
        self.config
            .peer_identity_for(service.as_str())?
            .ok_or_else(|| {
                format!(
                    "mutual TLS to {service}: no identity is expected of it; set \
                     services.{service}.identity or [tls] peer_identity"
                )
                .into()
            })
    }

    fn build(&self, service: &ServiceName) -> Result<TlsClient, BoxError> {
        let expected = self.identity_for(service)?;
        let tls = self
            .config
            .client_expecting(self.credentials.clone(), Some(expected))?;
        let mut http = tcp();
        // The connector refuses plain http itself; this lets https through.
        http.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(self.http2_only);
        Ok(builder.build(tls.wrap(http)))
    }
}

/// The service a request is for: the caller's [`TargetService`], else the
/// set discovery resolved.
fn destination<B>(req: &Request<B>) -> Option<ServiceName> {
    req.extensions()
        .get::<TargetService>()
        .map(|t| t.0.clone())
        .or_else(|| with_endpoint_set(req, |s| s.service().clone()))
}

/// `uri` with the https scheme: on a mutual TLS route the scheme a caller
/// wrote names the call, not the wire.
fn https(uri: Uri) -> Result<Uri, http::Error> {
    if uri.scheme() == Some(&Scheme::HTTPS) {
        return Ok(uri);
    }
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Ok(Uri::from_parts(parts)?)
}

// === impl Transports ===

/// Every transport a client's routes choose from.
#[derive(Debug)]
pub(crate) struct Transports {
    http1: Transport,
    h2c: Transport,
    /// Over mutual TLS: HTTP/1.1 or HTTP/2 as ALPN agrees, and HTTP/2 only.
    tls: Option<(Transport, Transport)>,
}

impl Transports {
    /// Plain transports, and mutual TLS ones when `tls` is given: its
    /// configuration, loaded credentials and the identities configured
    /// per service.
    pub(crate) fn new(
        tls: Option<(&TlsConfig, &Credentials, HashMap<ServiceName, SpiffeId>)>,
        catalog: &Catalog,
    ) -> Transports {
        let tls = tls.map(|(config, credentials, identities)| {
            let clients = |http2_only| {
                Transport::Tls(Arc::new(TlsClients::new(
                    config.clone(),
                    credentials.clone(),
                    identities.clone(),
                    catalog.clone(),
                    http2_only,
                )))
            };
            (clients(false), clients(true))
        });
        Transports {
            http1: Transport::http1(),
            h2c: Transport::h2c(),
            tls,
        }
    }

    /// The transport for a route: mutual TLS whenever it is on, unless
    /// the route says `plaintext`; HTTP/2 only for `http2`.
    pub(crate) fn pick(&self, http2: bool, plaintext: bool) -> &Transport {
        match (&self.tls, plaintext, http2) {
            (Some((tls, _)), false, false) => tls,
            (Some((_, tls_h2)), false, true) => tls_h2,
            (_, _, false) => &self.http1,
            (_, _, true) => &self.h2c,
        }
    }
}

impl Transports {
    /// The client `service`'s upstream probes go through: its mutual TLS
    /// client while TLS is on (and the service not `plaintext`), so probes
    /// are held to the same identity as calls; `None` for plain probes.
    pub(crate) fn probe_client(
        &self,
        service: &ServiceName,
        plaintext: bool,
    ) -> Result<Option<mesh_health::ProbeClient>, BoxError> {
        let Some((Transport::Tls(clients), _)) = &self.tls else {
            return Ok(None);
        };
        if plaintext {
            return Ok(None);
        }
        let client = clients.client_for(service)?;
        let probes =
            tower::ServiceExt::map_request(client, |req: Request<http_body_util::Empty<Bytes>>| {
                req.map(|_| SentBody::Whole(Full::new(Bytes::new())))
            });
        Ok(Some(mesh_health::ProbeClient::new(probes)))
    }

    /// The client `service`'s gRPC health checks go through: its HTTP/2
    /// mutual TLS client while TLS is on (and the service not
    /// `plaintext`); `None` for h2c.
    pub(crate) fn grpc_probe_client(
        &self,
        service: &ServiceName,
        plaintext: bool,
    ) -> Result<Option<mesh_health::grpc::GrpcProbeClient>, BoxError> {
        let Some((_, Transport::Tls(clients))) = &self.tls else {
            return Ok(None);
        };
        if plaintext {
            return Ok(None);
        }
        let client = clients.client_for(service)?;
        let probes = tower::ServiceExt::map_request(client, streamed);
        Ok(Some(mesh_health::grpc::GrpcProbeClient::new(probes)))
    }
}

/// `req` with its body streamed, never replayed (a health check is not
/// retried).
fn streamed<B>(req: Request<B>) -> Request<SentBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    req.map(|body| crate::client::RequestBody::stream(body).replayable(0))
}
