//! Plain HTTP/1.1 with connections kept per endpoint: hyper's own
//! connections (`hyper::client::conn::http1`), each endpoint's in a
//! cache of its own (hyper-util's `client::pool::cache`).
//!
//! hyper-util's legacy client keeps every destination in one pool, keyed
//! by scheme and authority and hashed with SipHash one byte at a time,
//! three times a request: with its checkout futures, about a quarter of a
//! plain request's instructions (BENCHMARKS.md, "A connection cache per
//! endpoint"). Here a request finds its endpoint's cache with one
//! foldhash lookup, and the cache hands out an idle connection under a
//! short lock.
//!
//! What the legacy client does for a pooled connection is kept:
//! - a request that could not be written because its reused connection
//!   had closed meanwhile (the peer's idle timeout, a restart) is sent
//!   again on another connection: it never reached the peer, whatever its
//!   method;
//! - a connection goes back to its cache once its response has been read
//!   (a task waits for that while the caller is still reading);
//! - idle connections are closed, and caches of endpoints no longer
//!   called are dropped, by a sweep every [`SWEEP`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::BoxError;
use tower::Service;

use crate::client::SentBody;

/// How often idle connections are closed and unused caches dropped: a
/// connection no request took for a whole sweep (so idle between one and
/// two sweeps) is closed.
pub(crate) const SWEEP: Duration = Duration::from_secs(45);

/// How many connections a request that was never written is tried on.
const TRIES: usize = 3;

/// A response on its way, boxed as hyper-util's own client boxes it.
pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

/// Sends each request on a connection to the endpoint its URI names.
#[derive(Clone)]
pub(crate) struct PerEndpoint {
    pools: Arc<dyn Pools>,
}

impl fmt::Debug for PerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerEndpoint")
            .field("endpoints", &self.pools.endpoints())
            .finish()
    }
}

impl PerEndpoint {
    /// Connections opened by `tcp`; swept every `sweep` while a tokio
    /// runtime is there to run the sweep.
    pub(crate) fn new(tcp: HttpConnector, sweep: Duration) -> PerEndpoint {
        let pools: Arc<dyn Pools> = Arc::new(caches(
            move || {
                hyper_util::client::pool::cache::builder()
                    .executor(TokioExecutor::new())
                    .build(Connect(tcp.clone()))
            },
            // Keeps the connections a request took since the last sweep,
            // and says whether any is left.
            |cache| {
                cache.retain(|c: &mut Connection| std::mem::take(&mut c.taken) && !c.closed());
                cache.is_empty()
            },
        ));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_every(sweep, Arc::downgrade(&pools)));
        }
        PerEndpoint { pools }
    }

    /// Sends `req`, in origin form, to the endpoint its URI's authority
    /// names.
    pub(crate) fn send(&self, req: Request<SentBody>) -> ResponseFuture {
        self.pools.send(req)
    }

    /// How many endpoints have a cache.
    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> usize {
        self.pools.endpoints()
    }

    /// Sweeps now.
    #[cfg(test)]
    pub(crate) fn sweep(&self) {
        self.pools.sweep();
    }
}

/// Sweeps `caches` every `period` for as long as they exist.
async fn sweep_every(period: Duration, caches: Weak<dyn Pools>) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match caches.upgrade() {
            Some(caches) => caches.sweep(),
            None => return,
        }
    }
}

/// What [`PerEndpoint`] needs of its caches, whose type hyper-util keeps
/// unnameable.
trait Pools: Send + Sync {
    fn send(&self, req: Request<SentBody>) -> ResponseFuture;
    fn sweep(&self);
    fn endpoints(&self) -> usize;
}

/// One cache per authority, made by `make` on the first request to it,
/// and tidied by `tidy` at each sweep.
struct Caches<C, F, T> {
    make: F,
    tidy: T,
    caches: ArcSwap<HashMap<Authority, Arc<Entry<C>>>>,
    /// Serializes inserts and sweeps.
    adding: Mutex<()>,
}

/// [`Caches`] made by `make` and tidied by `tidy`: a function, so that
/// `tidy`'s argument is known to be `make`'s cache.
fn caches<C, F, T>(make: F, tidy: T) -> Caches<C, F, T>
where
    F: Fn() -> C,
    T: Fn(&mut C) -> bool,
{
    Caches {
        make,
        tidy,
        caches: ArcSwap::default(),
        adding: Mutex::new(()),
    }
}

/// An endpoint's cache, and whether a request took it since the last
/// sweep.
struct Entry<C> {
    cache: C,
    called: AtomicBool,
}

impl<C, F, T, L> Pools for Caches<C, F, T>
where
    F: Fn() -> C + Send + Sync + 'static,
    T: Fn(&mut C) -> bool + Send + Sync + 'static,
    C: Service<Authority, Response = L, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    L: Service<Request<SentBody>, Response = Response<Incoming>, Error = Unsent> + Send + 'static,
    L::Future: Send,
{
    fn send(&self, mut req: Request<SentBody>) -> ResponseFuture {
        if req.version() == Version::HTTP_2 {
            return refused("an HTTP/2 request on an HTTP/1.1 route: set the service's http2");
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return refused("the request names no endpoint: its URI has no authority");
        };
        let cache = match self.caches.load().get(&authority) {
            Some(entry) => entry.take(),
            None => self.add(&authority),
        };
        origin_form(&mut req, &authority);
        Box::pin(send_on(cache, authority, req))
    }

    fn sweep(&self) {
        let Ok(_adding) = self.adding.lock() else {
            return;
        };
        let current = self.caches.load_full();
        let mut kept = HashMap::with_capacity(current.len());
        for (authority, entry) in current.iter() {
            let called = entry.called.swap(false, Ordering::Relaxed);
            let empty = (self.tidy)(&mut entry.cache.clone());
            if called || !empty {
                kept.insert(authority.clone(), Arc::clone(entry));
            }
        }
        if kept.len() < current.len() {
            self.caches.store(Arc::new(kept));
        }
    }

    fn endpoints(&self) -> usize {
        self.caches.load().len()
    }
}

impl<C, F, T> Caches<C, F, T>
where
    F: Fn() -> C,
    C: Clone,
{
    /// The cache for `authority`, made on its first request.
    fn add(&self, authority: &Authority) -> C {
        // A poisoned lock guards nothing broken: the table is replaced
        // whole, never edited in place.
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.caches.load_full();
        if let Some(entry) = current.get(authority) {
            return entry.take();
        }
        let mut caches = HashMap::clone(&current);
        let entry = Arc::new(Entry {
            cache: (self.make)(),
            called: AtomicBool::new(true),
        });
        let cache = entry.take();
        caches.insert(authority.clone(), entry);
        self.caches.store(Arc::new(caches));
        cache
    }
}

impl<C: Clone> Entry<C> {
    /// A handle on the cache, noting the call for the sweep.
    fn take(&self) -> C {
        // Read first: a store on every call would pass the line between
        // cores.
        if !self.called.load(Ordering::Relaxed) {
            self.called.store(true, Ordering::Relaxed);
        }
        self.cache.clone()
    }
}

/// Takes a connection from `cache` and sends `req` on it; a request never
/// written goes out on another connection, up to [`TRIES`] in all.
async fn send_on<C, L>(
    mut cache: C,
    authority: Authority,
    mut req: Request<SentBody>,
) -> Result<Response<Incoming>, BoxError>
where
    C: Service<Authority, Response = L, Error = BoxError>,
    L: Service<Request<SentBody>, Response = Response<Incoming>, Error = Unsent> + Send + 'static,
    L::Future: Send,
{
    for _ in 0..TRIES {
        std::future::poll_fn(|cx| cache.poll_ready(cx)).await?;
        let mut connection = cache.call(authority.clone()).await?;
        // A connection found closed is dropped by its cache.
        if std::future::poll_fn(|cx| connection.poll_ready(cx))
            .await
            .is_err()
        {
            continue;
        }
        match connection.call(req).await {
            Ok(response) => {
                give_back_when_idle(connection);
                return Ok(response);
            }
            Err(Unsent::Again(unsent)) => req = *unsent,
            Err(Unsent::Failed(error)) => return Err(error),
        }
    }
    Err(format!("{authority}: every connection tried closed before the request was written").into())
}

/// Lets `connection` go back to its cache once it is ready for another
/// request (its response read), or be dropped if it fails first.
fn give_back_when_idle<L, R>(mut connection: L)
where
    L: Service<R> + Send + 'static,
{
    let mut cx = Context::from_waker(Waker::noop());
    if connection.poll_ready(&mut cx).is_pending() {
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| connection.poll_ready(cx)).await;
        });
    }
}

/// A boxed refusal, made before anything was sent.
fn refused(why: &'static str) -> ResponseFuture {
    Box::pin(async move { Err(format!("mesh transport: {why}").into()) })
}

/// `req` as written on an HTTP/1 connection: its path alone, and a `Host`
/// (the balancer's logical one, else the endpoint's).
fn origin_form(req: &mut Request<SentBody>, authority: &Authority) {
    if !req.headers().contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let path = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
}

// === connections ===

/// Why a connection gave no answer.
pub(crate) enum Unsent {
    /// The request was never written on a reused connection: it may go
    /// out on another. Boxed: the answer's `Result` would otherwise be as
    /// large as a request on every call.
    Again(Box<Request<SentBody>>),
    Failed(BoxError),
}

impl fmt::Debug for Unsent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsent::Again(_) => f.write_str("Again"),
            Unsent::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
        }
    }
}

/// One HTTP/1 connection, as its cache keeps it.
pub(crate) struct Connection {
    sender: http1::SendRequest<SentBody>,
    /// Whether it has carried a request before the one it carries now.
    used: bool,
    /// Whether a request took it since the last sweep.
    taken: bool,
}

impl Connection {
    fn closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Service<Request<SentBody>> for Connection {
    type Response = Response<Incoming>;
    type Error = Unsent;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Unsent>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Unsent>> {
        self.sender
            .poll_ready(cx)
            .map_err(|e| Unsent::Failed(e.into()))
    }

    fn call(&mut self, req: Request<SentBody>) -> Self::Future {
        let reused = std::mem::replace(&mut self.used, true);
        self.taken = true;
        let sent = self.sender.try_send_request(req);
        Box::pin(async move {
            sent.await.map_err(|mut e| match e.take_message() {
                // A new connection that takes no request says the
                // endpoint is wrong, not the connection: no other try.
                Some(req) if reused => Unsent::Again(Box::new(req)),
                _ => Unsent::Failed(e.into_error().into()),
            })
        })
    }
}

/// Opens plain HTTP/1 connections.
#[derive(Clone)]
struct Connect(HttpConnector);

impl Service<Authority> for Connect {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, authority: Authority) -> Self::Future {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query("/")
            .build();
        let mut tcp = self.0.clone();
        Box::pin(async move {
            let stream = tcp.call(uri?).await?;
            let (sender, connection) = http1::handshake(stream).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended");
                }
            });
            Ok(Connection {
                sender,
                used: false,
                taken: true,
            })
        })
    }
}

#[cfg(test)]
mod tests;
