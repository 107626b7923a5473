//! A measure for the choice of connection pool, not a client: hyper's own
//! HTTP/1 connections (`hyper::client::conn`), kept per instance in
//! hyper-util's per-destination cache (`client::pool::cache`), in place
//! of hyper-util's legacy client and its one pool shared by every
//! destination (whose key, scheme and authority, is hashed three times a
//! request).
//!
//! It retries nothing: a connection the server closed while idle fails
//! the next call sent on it, where the legacy client sends that request
//! again on another. It keeps idle connections forever. Good enough for
//! loopback instances that keep their connections open; not for use.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use mesh::prelude::BoxError;
use tower::Service;

/// A boxed future, as hyper-util's legacy client returns.
type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The request body every bench stack sends.
type Body = http_body_util::Full<Bytes>;

/// Sends each request to the instance its URI names, or, when it names
/// none, to the next instance in turn (as raw hyper's anchor does), on a
/// connection from that instance's cache.
pub struct PerInstance<C> {
    instances: Arc<[Instance<C>]>,
    next: Arc<AtomicUsize>,
}

/// One instance: where it is, its `Host`, its connections.
struct Instance<C> {
    addr: SocketAddr,
    authority: http::uri::Authority,
    host: HeaderValue,
    connections: C,
}

impl<C: Clone> Clone for PerInstance<C> {
    fn clone(&self) -> Self {
        PerInstance {
            instances: Arc::clone(&self.instances),
            next: Arc::clone(&self.next),
        }
    }
}

/// A [`PerInstance`] over `addrs`, each with a cache of its own.
pub fn per_instance(
    addrs: &[SocketAddr],
) -> impl Service<
    Request<Body>,
    Response = Response<
        impl hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
    >,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let instances = addrs
        .iter()
        .map(|&addr| Instance {
            addr,
            authority: addr.to_string().parse().expect("authority"),
            host: HeaderValue::try_from(addr.to_string()).expect("host"),
            connections: hyper_util::client::pool::cache::builder()
                .executor(hyper_util::rt::TokioExecutor::new())
                .build(tower::service_fn(connect)),
        })
        .collect();
    PerInstance {
        instances,
        next: Arc::default(),
    }
}

impl<C, R> Service<Request<Body>> for PerInstance<C>
where
    C: Service<SocketAddr, Response = R, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send,
    R: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + Send + 'static,
    R::Future: Send,
{
    type Response = Response<Kept<Incoming, R>>;
    type Error = BoxError;
    type Future = Boxed<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let named = self
            .instances
            .iter()
            .find(|i| Some(&i.authority) == req.uri().authority());
        let instance = named.unwrap_or_else(|| {
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            &self.instances[turn % self.instances.len()]
        });
        let (addr, mut cache) = (instance.addr, instance.connections.clone());
        // Origin form and the instance's `Host`, as the legacy client
        // writes a request.
        let path = req.uri().path_and_query().cloned();
        *req.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
        req.headers_mut().insert(HOST, instance.host.clone());
        Box::pin(async move {
            std::future::poll_fn(|cx| cache.poll_ready(cx)).await?;
            let mut connection = cache.call(addr).await?;
            std::future::poll_fn(|cx| connection.poll_ready(cx)).await?;
            let response = connection.call(req).await?;
            Ok(response.map(|body| Kept {
                body,
                _connection: connection,
            }))
        })
    }
}

/// A response body that holds its connection until it is dropped: the
/// connection goes back to its cache once the answer is read.
pub struct Kept<B, R> {
    body: B,
    _connection: R,
}

impl<B: hyper::body::Body + Unpin, R: Unpin> hyper::body::Body for Kept<B, R> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One HTTP/1 connection, as a tower service.
pub struct Connection(SendRequest<Body>);

impl Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Boxed<Response<Incoming>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let answer = self.0.send_request(req);
        Box::pin(async move { Ok(answer.await?) })
    }
}

/// Opens an HTTP/1 connection to `addr`, its task spawned.
fn connect(addr: SocketAddr) -> Boxed<Connection> {
    Box::pin(async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (send, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Connection(send))
    })
}
