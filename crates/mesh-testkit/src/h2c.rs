//! Serving a tower service over HTTP/2 cleartext on a loopback port, as
//! gRPC servers speak: one accept loop for every test that needs a tonic
//! (or any HTTP/2) server.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;

/// Serves `service` over HTTP/2 by prior knowledge on a free port of
/// 127.0.0.1, each connection on a task of its own, until the runtime
/// ends; returns the address.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let hello = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
///         bytes::Bytes::from_static(b"hi"),
///     )))
/// });
/// let addr = mesh_testkit::h2c::serve(hello).await?;
/// assert!(addr.ip().is_loopback());
/// # Ok(()) }
/// ```
pub async fn serve<S, B>(service: S) -> std::io::Result<SocketAddr>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
