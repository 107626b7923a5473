//! One connection cache per endpoint authority, found with one lookup in
//! a lock-free table, and the sweep that closes idle connections.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hashbrown::HashMap;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::clock::Nanos;
use mesh_core::{BoxError, ConnectError};
use tower::Service;

use super::connection::{Connect, Connection, Unsent};

/// A response on its way.
pub(super) type Sending =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

/// What an [`EndpointClient`](super::EndpointClient) needs of its caches,
/// whose type hyper-util keeps unnameable.
pub(super) trait Pools<B>: Send + Sync {
    fn send(&self, req: Request<B>) -> Sending;
    fn sweep(&self);
    fn endpoints(&self) -> usize;
}

/// Caches of connections opened by `tcp`, swept every `period` from the
/// first request on.
pub(super) fn over<B>(tcp: HttpConnector, period: Duration) -> Arc<dyn Pools<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let opened = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&opened);
    Arc::new_cyclic(|me| {
        caches(
            move || {
                hyper_util::client::pool::cache::builder()
                    .executor(TokioExecutor::new())
                    .build(Connect::new(tcp.clone(), Arc::clone(&counted)))
            },
            // Keeps the connections a request took since the last sweep,
            // and says whether any is left.
            |cache| {
                cache.retain(|c: &mut Connection<B>| c.taken_since_last_look() && !c.closed());
                cache.is_empty()
            },
            Sweeps {
                opened,
                period,
                me: me.clone(),
                sweeper: Arc::default(),
                numbered: AtomicU64::new(0),
                swept_at: Arc::default(),
            },
        )
    })
}

/// Sweeps `pools` every `period` for as long as they exist and `sweeper`
/// is the one running. Unless another task took over, `sweeper` says none
/// runs when the task ends, however it ends (its runtime shut down, say),
/// so that the next request starts another.
async fn sweep_every<P: Pools<B> + ?Sized, B>(period: Duration, pools: Weak<P>, sweeper: Sweeper) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if !sweeper.is_current() {
            return;
        }
        match pools.upgrade() {
            Some(pools) => pools.sweep(),
            None => return,
        }
        sweeper.swept();
    }
}

/// One sweeping task's number, and where the running one's is kept.
struct Sweeper {
    number: u64,
    running: Arc<AtomicU64>,
    swept_at: Arc<AtomicU64>,
}

impl Sweeper {
    /// Whether no other task has taken over the sweeping.
    fn is_current(&self) -> bool {
        self.running.load(Ordering::Relaxed) == self.number
    }

    /// Notes a sweep, for the requests that check the sweeper is alive.
    fn swept(&self) {
        self.swept_at.store(wall_now().0, Ordering::Relaxed);
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        // Only its own number: a task taken over leaves its successor be.
        let _ = self.running.compare_exchange(
            self.number,
            NO_SWEEPER,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The running sweeper's number when none runs.
const NO_SWEEPER: u64 = 0;

/// Now, on the process's clock read without tokio's: sweepers on
/// different runtimes are compared, and a paused runtime's clock (a test's)
/// runs ahead of the others or stands still.
fn wall_now() -> Nanos {
    Nanos::from_instant(std::time::Instant::now())
}

/// One cache per authority, made by `make` on the first request to it,
/// and tidied by `tidy` at each sweep.
struct Caches<C, F, T> {
    make: F,
    tidy: T,
    caches: ArcSwap<HashMap<Authority, Arc<Entry<C>>>>,
    /// Serializes inserts and sweeps.
    adding: Mutex<()>,
    sweeps: Sweeps<Self>,
}

/// What the sweep and the count of opened connections need.
struct Sweeps<P> {
    /// How many connections were opened: a connection numbered past the
    /// count a request began with was opened for it (or while it waited).
    opened: Arc<AtomicU64>,
    period: Duration,
    /// The caches themselves, for the sweeping task to hold weakly.
    me: Weak<P>,
    /// The number of the sweeping task that runs, [`NO_SWEEPER`] when
    /// none does.
    sweeper: Arc<AtomicU64>,
    /// Sweeping tasks numbered so far.
    numbered: AtomicU64,
    /// When the sweeping task last swept, or started ([`wall_now`]).
    swept_at: Arc<AtomicU64>,
}

impl<P: 'static> Sweeps<P> {
    /// Starts the sweeping task unless one runs, if a tokio runtime is
    /// there to run it (requests need one anyway). Called on every
    /// request: one that outlives the runtime its sweep ran on starts
    /// another on its own.
    fn start<B: 'static>(&self)
    where
        P: Pools<B>,
    {
        // A read only: a write on every call would pass the line between
        // cores.
        if self.sweeper.load(Ordering::Relaxed) == NO_SWEEPER {
            self.take_over::<B>(NO_SWEEPER);
        }
    }

    /// Replaces a sweeping task that has not swept for two periods: it
    /// runs on a runtime that is alive but no longer driven (one kept
    /// after its last `block_on`), and would never sweep again. Called
    /// when an endpoint is added, so that the caches it would forget stay
    /// bounded.
    fn revive<B: 'static>(&self)
    where
        P: Pools<B>,
    {
        // Acquire: the time the running sweeper stored before it took
        // over is read with its number, never an older one.
        let running = self.sweeper.load(Ordering::Acquire);
        let swept_at = Nanos(self.swept_at.load(Ordering::Relaxed));
        if running != NO_SWEEPER && wall_now().saturating_since(swept_at) > self.period * 2 {
            self.take_over::<B>(running);
        }
    }

    /// Starts a sweeping task in place of `running`'s, unless another
    /// request just did, if a tokio runtime is there to run it.
    fn take_over<B: 'static>(&self, running: u64)
    where
        P: Pools<B>,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let number = self.numbered.fetch_add(1, Ordering::Relaxed) + 1;
        // Dated before it is published, so that no request finds the new
        // sweeper with the old one's time and takes over again at once.
        self.swept_at.store(wall_now().0, Ordering::Relaxed);
        if self
            .sweeper
            .compare_exchange(running, number, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // The sweeper is an argument, not made in the task's body: a task
        // dropped before it ever ran (its runtime shutting down) still
        // says none runs.
        let sweeper = Sweeper {
            number,
            running: Arc::clone(&self.sweeper),
            swept_at: Arc::clone(&self.swept_at),
        };
        drop(runtime.spawn(sweep_every(self.period, self.me.clone(), sweeper)));
    }
}

/// [`Caches`] made by `make` and tidied by `tidy`: a function, so that
/// `tidy`'s argument is known to be `make`'s cache.
fn caches<C, F, T>(make: F, tidy: T, sweeps: Sweeps<Caches<C, F, T>>) -> Caches<C, F, T>
where
    F: Fn() -> C,
    T: Fn(&mut C) -> bool,
{
    Caches {
        make,
        tidy,
        caches: ArcSwap::default(),
        adding: Mutex::new(()),
        sweeps,
    }
}

/// An endpoint's cache, and whether a request took it since the last
/// sweep.
struct Entry<C> {
    cache: C,
    called: AtomicBool,
}

impl<B, C, F, T, L> Pools<B> for Caches<C, F, T>
where
    B: Send + 'static,
    F: Fn() -> C + Send + Sync + 'static,
    T: Fn(&mut C) -> bool + Send + Sync + 'static,
    C: Service<Authority, Response = L, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    L: Service<Request<B>, Response = Response<Incoming>, Error = Unsent<B>> + Send + 'static,
    L::Future: Send,
{
    fn send(&self, mut req: Request<B>) -> Sending {
        if let Some(why) = unsupported(&req) {
            return refused(why);
        }
        let Some(authority) = req.uri().authority().map(endpoint_of) else {
            return refused("the request names no endpoint: its URI has no authority");
        };
        let Ok(authority) = authority else {
            return refused("the URI's authority names no endpoint after its userinfo");
        };
        let began = self.sweeps.opened.load(Ordering::Relaxed);
        self.sweeps.start::<B>();
        let cache = match self.caches.load().get(&authority) {
            Some(entry) => entry.take(),
            None => {
                self.sweeps.revive::<B>();
                self.add(&authority)
            }
        };
        origin_form(&mut req, &authority);
        Box::pin(send_on(cache, authority, req, began))
    }

    fn sweep(&self) {
        // A poisoned lock guards nothing broken: the table is replaced
        // whole, never edited in place.
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
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

/// Takes a connection from `cache` and sends `req` on it. Cached
/// connections found closed are passed over, however many (a restarted
/// peer, or one whose keep-alive is shorter than the sweep, closes them
/// all), and a request one of them handed back unwritten goes out on the
/// next; a connection opened since the request `began` that closes at
/// once fails it: the peer, not a stale connection, is at fault.
///
/// The loop ends: each pass either fails, answers, or drops from the
/// cache a connection opened before the request began (a connection that
/// reports itself closed never goes back), and those are finitely many.
async fn send_on<B, C, L>(
    mut cache: C,
    authority: Authority,
    mut req: Request<B>,
    began: u64,
) -> Result<L::Response, BoxError>
where
    C: Service<Authority, Response = L, Error = BoxError>,
    L: Service<Request<B>, Error = Unsent<B>> + Send + 'static,
{
    loop {
        std::future::poll_fn(|cx| cache.poll_ready(cx))
            .await
            .map_err(ConnectError::new)?;
        let taken = cache
            .call(authority.clone())
            .await
            .map_err(ConnectError::new)?;
        let mut connection = Lease::new(taken);
        let closed = match std::future::poll_fn(|cx| connection.get().poll_ready(cx)).await {
            Err(Unsent::Closed { serial, .. }) => serial,
            Err(Unsent::Failed(error)) => return Err(error),
            Ok(()) => match connection.get().call(req).await {
                Ok(response) => {
                    connection.give_back_when_idle();
                    return Ok(response);
                }
                Err(Unsent::Closed {
                    serial,
                    request: Some(unsent),
                }) => {
                    req = *unsent;
                    serial
                }
                Err(Unsent::Closed { request: None, .. }) => {
                    return Err(unsent(&authority, "its connection closed"));
                }
                Err(Unsent::Failed(error)) => return Err(error),
            },
        };
        if closed > began {
            return Err(unsent(&authority, "a new connection closed at once"));
        }
    }
}

/// The endpoint `authority` names: itself, or, when it carries userinfo
/// (`user:password@host:port`), its host and port alone, so that no
/// credential keys a cache or reaches an error message.
fn endpoint_of(authority: &Authority) -> Result<Authority, http::uri::InvalidUri> {
    match authority.as_str().rsplit_once('@') {
        None => Ok(authority.clone()),
        Some((_, endpoint)) => Authority::try_from(endpoint),
    }
}

/// The error of a request that could not be written to `authority`: a
/// [`ConnectError`], since it was never sent (retrying it is safe).
fn unsent(authority: &Authority, why: &str) -> BoxError {
    ConnectError::new(format!("{authority}: the request was never written: {why}")).into()
}

/// A connection taken from its cache for one request. Dropped before its
/// answer came (the call failed, or was cancelled), it is polled once, so
/// that it reports itself closed (see `Connection::poll_ready`) and its
/// cache drops it instead of handing it on busy.
struct Lease<L, B>
where
    L: Service<Request<B>>,
{
    connection: Option<L>,
    body: PhantomData<fn(B)>,
}

impl<L, B> Lease<L, B>
where
    L: Service<Request<B>> + Send + 'static,
{
    fn new(connection: L) -> Self {
        Lease {
            connection: Some(connection),
            body: PhantomData,
        }
    }

    fn get(&mut self) -> &mut L {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until it ends")
    }

    /// Lets the connection go back to its cache once it is ready for
    /// another request (its response read), or be dropped if it fails
    /// first.
    fn give_back_when_idle(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        if connection.poll_ready(&mut cx).is_pending() {
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| connection.poll_ready(cx)).await;
            });
        }
    }
}

impl<L, B> Drop for Lease<L, B>
where
    L: Service<Request<B>>,
{
    fn drop(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ = connection.poll_ready(&mut Context::from_waker(Waker::noop()));
        }
    }
}

/// Why `req` cannot go out on a plain HTTP/1.1 connection, if it cannot.
fn unsupported<B>(req: &Request<B>) -> Option<&'static str> {
    if !matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        return Some("only HTTP/1.0 and HTTP/1.1 requests go out here: send HTTP/2 over h2c");
    }
    if req.uri().scheme().is_some_and(|s| *s != Scheme::HTTP) {
        return Some(
            "only http URIs go out here: an https one would be sent in cleartext \
             (for TLS, use mesh-tls's connector under hyper-util's client)",
        );
    }
    if req.method() == Method::CONNECT {
        return Some("CONNECT is a request for a proxy, not for an endpoint");
    }
    None
}

/// A refusal, made before anything was sent.
fn refused(why: &'static str) -> Sending {
    Box::pin(async move { Err(format!("mesh EndpointClient: {why}").into()) })
}

/// `req` as written on an HTTP/1 connection: its path alone, and a `Host`
/// (the one it carries, else the endpoint's host, and its port unless it
/// is http's 80).
fn origin_form<B>(req: &mut Request<B>, authority: &Authority) {
    if !req.headers().contains_key(HOST) {
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        if let Ok(host) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let path = req.uri().path_and_query().cloned();
    *req.uri_mut() = Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
}

#[cfg(test)]
mod tests;
