//! One HTTP/1 connection as its endpoint's cache keeps it, and the
//! service that opens them.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use mesh_core::BoxError;
use tower::Service;

/// Why a connection gave no answer.
pub(super) enum Unsent<B> {
    /// The connection was closed, or closed before the request was
    /// written (then the request is handed back, boxed: the answer's
    /// `Result` would otherwise be as large as a request on every call).
    /// `serial` tells a connection opened after the request began from
    /// one it found cached.
    Closed {
        serial: u64,
        request: Option<Box<Request<B>>>,
    },
    /// The request may have been written: it must not go out again.
    Failed(BoxError),
}

impl<B> fmt::Debug for Unsent<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsent::Closed { serial, request } => f
                .debug_struct("Closed")
                .field("serial", serial)
                .field("request_back", &request.is_some())
                .finish(),
            Unsent::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
        }
    }
}

/// One HTTP/1 connection.
pub(super) struct Connection<B> {
    sender: http1::SendRequest<B>,
    /// Set while a request is on it and until its answer's head came:
    /// a connection given up in between (its call failed, or was
    /// cancelled) is reported closed, so that its cache drops it instead
    /// of handing it, busy or broken, to the next request.
    busy: Arc<AtomicBool>,
    /// Whether a request took it since the sweep last looked.
    taken: bool,
    /// Its place in the order its client opened connections.
    serial: u64,
}

impl<B> Connection<B> {
    pub(super) fn closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Whether a request took it since the last call, which resets it.
    pub(super) fn taken_since_last_look(&mut self) -> bool {
        std::mem::take(&mut self.taken)
    }
}

impl<B> Service<Request<B>> for Connection<B>
where
    B: http_body::Body + Send + 'static,
{
    type Response = Response<Incoming>;
    type Error = Unsent<B>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Unsent<B>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Unsent<B>>> {
        let closed = Unsent::Closed {
            serial: self.serial,
            request: None,
        };
        if self.busy.load(Ordering::Relaxed) {
            return Poll::Ready(Err(closed));
        }
        self.sender.poll_ready(cx).map_err(|_| closed)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.taken = true;
        self.busy.store(true, Ordering::Relaxed);
        let (busy, serial) = (Arc::clone(&self.busy), self.serial);
        let sent = self.sender.try_send_request(req);
        Box::pin(async move {
            let answer = sent.await;
            if answer.is_ok() {
                busy.store(false, Ordering::Relaxed);
            }
            answer.map_err(|mut e| match e.take_message() {
                Some(req) => Unsent::Closed {
                    serial,
                    request: Some(Box::new(req)),
                },
                None => Unsent::Failed(e.into_error().into()),
            })
        })
    }
}

/// Opens plain HTTP/1 connections, each driven by a task of its own,
/// numbering them in `opened`.
pub(super) struct Connect<B> {
    tcp: HttpConnector,
    opened: Arc<AtomicU64>,
    body: PhantomData<fn(B)>,
}

impl<B> Connect<B> {
    pub(super) fn new(tcp: HttpConnector, opened: Arc<AtomicU64>) -> Connect<B> {
        Connect {
            tcp,
            opened,
            body: PhantomData,
        }
    }
}

impl<B> Clone for Connect<B> {
    fn clone(&self) -> Self {
        Connect::new(self.tcp.clone(), Arc::clone(&self.opened))
    }
}

impl<B> Service<Authority> for Connect<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Connection<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, authority: Authority) -> Self::Future {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query("/")
            .build();
        let (mut tcp, opened) = (self.tcp.clone(), Arc::clone(&self.opened));
        Box::pin(async move {
            let stream = tcp.call(uri?).await?;
            let (sender, connection) = http1::handshake(stream).await?;
            tokio::spawn(async move {
                // Upgrades (WebSocket...) work as through hyper-util's client.
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "connection ended");
                }
            });
            Ok(Connection {
                sender,
                busy: Arc::default(),
                taken: true,
                serial: opened.fetch_add(1, Ordering::Relaxed) + 1,
            })
        })
    }
}
