//! What the gRPC tests share: an HTTP/2 cleartext server on loopback that
//! serves any tonic service (no tonic transport here, as in the crate), and
//! a bounded wait.

#![allow(dead_code)] // each test file uses its own part

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

/// A gRPC server on 127.0.0.1; dropping it closes the listener and every
/// connection (so streams break as when a process dies).
pub struct GrpcServer {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    /// Serves `service` on a free port.
    pub async fn start<S>(service: S) -> GrpcServer
    where
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        GrpcServer::start_on("127.0.0.1:0".parse().expect("addr"), service).await
    }

    /// Serves `service` on `addr` (a restarted server keeps its address).
    pub async fn start_on<S>(addr: SocketAddr, service: S) -> GrpcServer
    where
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (service, seen) = (service.clone(), Arc::clone(&seen));
                let answer = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    seen.lock()
                        .expect("calls")
                        .push(req.uri().path().to_owned());
                    service.clone().oneshot(req)
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), answer)
                        .await;
                });
            }
        });
        GrpcServer { addr, calls, task }
    }

    /// How many calls reached `method` (`"Check"` or `"Watch"`).
    pub fn calls(&self, method: &str) -> usize {
        let path = format!("/grpc.health.v1.Health/{method}");
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|p| **p == path)
            .count()
    }
}

/// Waits until `done`, failing the test after ten seconds (generous: a
/// loaded two-core machine); returns how long it took.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}
