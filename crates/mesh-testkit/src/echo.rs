//! A loopback HTTP/1.1 server that answers each request with something
//! read from it (its `Host`, its path), for tests that check what reached
//! the instance.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Serves HTTP/1.1 on a free port of 127.0.0.1 until the runtime ends,
/// answering each request `200` with `read(&request)` as its body;
/// returns the address.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let path = |req: &http::Request<hyper::body::Incoming>| {
///     bytes::Bytes::from(req.uri().path().to_owned())
/// };
/// let addr = mesh_testkit::echo::serve(path).await?;
/// assert!(addr.ip().is_loopback());
/// # Ok(()) }
/// ```
pub async fn serve(read: fn(&http::Request<Incoming>) -> Bytes) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let echo = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let body = read(&req);
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), echo),
            );
        }
    });
    Ok(addr)
}
