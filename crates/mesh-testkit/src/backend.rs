//! A real HTTP/1.1 server on loopback whose answers a test scripts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 at once.
    Ok,
    /// This status at once (a failing instance: 500, 503...).
    Status(u16),
    /// 200 after this delay (a slow instance).
    Slow(Duration),
}

/// What a backend has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Requests received.
    pub requests: u64,
    /// Requests answered with a status of 500 or more.
    pub errors: u64,
    /// Total time spent answering, for mean service time.
    pub busy: Duration,
    /// Connections accepted.
    pub connections: u64,
    /// Connections that have ended (closed by either side).
    pub connections_ended: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    busy_nanos: AtomicU64,
    connections: AtomicU64,
    connections_ended: AtomicU64,
}

/// What the accept loop and the handle share: the script, the counters,
/// and how long a connection may wait for its next request.
struct BackendState {
    behavior: Mutex<Behavior>,
    counters: Counters,
    idle_timeout: Mutex<Option<Duration>>,
}

/// A real HTTP/1.1 server on `127.0.0.1`, stopped when dropped.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(behavior: Behavior) -> std::io::Result<Backend> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behavior).await
    }

    /// Starts a backend on `addr`: the address of a backend dropped
    /// earlier, to restart an instance where discovery expects it.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr, behavior: Behavior) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BackendState {
            behavior: Mutex::new(behavior),
            counters: Counters::default(),
            idle_timeout: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), addr));
        Ok(Backend { addr, state, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how it answers from the next request on.
    pub fn set_behavior(&self, behavior: Behavior) {
        if let Ok(mut b) = self.state.behavior.lock() {
            *b = behavior;
        }
    }

    /// Closes, from now on, any connection on which no request begins
    /// within `idle` (as servers close idle keep-alive connections);
    /// `None` keeps them open.
    pub fn close_idle_after(&self, idle: Option<Duration>) {
        if let Ok(mut timeout) = self.state.idle_timeout.lock() {
            *timeout = idle;
        }
    }

    /// What it has seen so far.
    pub fn stats(&self) -> BackendStats {
        let c = &self.state.counters;
        BackendStats {
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            busy: Duration::from_nanos(c.busy_nanos.load(Ordering::Relaxed)),
            connections: c.connections.load(Ordering::Relaxed),
            connections_ended: c.connections_ended.load(Ordering::Relaxed),
        }
    }

    /// Sets the counters back to zero.
    pub fn reset_stats(&self) {
        let c = &self.state.counters;
        c.requests.store(0, Ordering::Relaxed);
        c.errors.store(0, Ordering::Relaxed);
        c.busy_nanos.store(0, Ordering::Relaxed);
        c.connections.store(0, Ordering::Relaxed);
        c.connections_ended.store(0, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<BackendState>, addr: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, %addr, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        // Connections live in the JoinSet so that aborting the accept loop
        // (dropping the Backend) closes them too.
        state.counters.connections.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let mut http = http1::Builder::new();
            if let Some(idle) = state.idle_timeout.lock().ok().and_then(|t| *t) {
                // hyper times the wait for each request's head, the wait
                // between two requests included.
                http.timer(TokioTimer::new()).header_read_timeout(idle);
            }
            let answers = Arc::clone(&state);
            let service = service_fn(move |req| answer(req, Arc::clone(&answers), addr));
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
            state
                .counters
                .connections_ended
                .fetch_add(1, Ordering::Relaxed);
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    _req: Request<Incoming>,
    state: Arc<BackendState>,
    addr: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let behavior = state
        .behavior
        .lock()
        .map(|b| *b)
        .unwrap_or(Behavior::Status(500));
    let status = match behavior {
        Behavior::Ok => StatusCode::OK,
        Behavior::Status(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Behavior::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
    };
    if status.is_server_error() {
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    state.counters.busy_nanos.fetch_add(busy, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::from(format!("{status} from {addr}\n"))));
    *response.status_mut() = status;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[tokio::test]
    async fn answers_as_scripted_and_counts() {
        let backend = Backend::start(Behavior::Status(503)).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri: http::Uri = format!("http://{}/", backend.addr()).parse().unwrap();
        let r = client.get(uri.clone()).await.unwrap();
        assert_eq!(r.status(), 503);
        backend.set_behavior(Behavior::Slow(Duration::from_millis(20)));
        let r = client.get(uri).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"200 OK from 127.0.0.1:"));
        let stats = backend.stats();
        assert_eq!((stats.requests, stats.errors), (2, 1));
        // One, or two when the second request began before the first's
        // connection was back in the client's pool.
        assert!((1..=2).contains(&stats.connections), "{stats:?}");
        assert!(stats.busy >= Duration::from_millis(20));
        backend.reset_stats();
        assert_eq!(backend.stats(), BackendStats::default());
    }

    #[tokio::test]
    async fn closes_connections_idle_past_its_timeout_and_counts_them() {
        let backend = Backend::start(Behavior::Ok).await.unwrap();
        backend.close_idle_after(Some(Duration::from_millis(50)));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri: http::Uri = format!("http://{}/", backend.addr()).parse().unwrap();
        let r = client.get(uri).await.unwrap();
        r.into_body().collect().await.unwrap();
        for _ in 0..200 {
            if backend.stats().connections_ended == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = backend.stats();
        assert_eq!((stats.connections, stats.connections_ended), (1, 1));
    }
}
