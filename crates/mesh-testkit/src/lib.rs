#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod backend;
pub mod echo;
pub mod fs;
pub mod net;
pub mod wait;

#[cfg(feature = "anchors")]
pub mod anchors;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "dnsmasq")]
pub mod dnsmasq;
#[cfg(feature = "h2c")]
pub mod h2c;
#[cfg(feature = "pki")]
pub mod pki;

pub use backend::{Backend, BackendStats, Behavior};

/// Drives one call through `svc` to completion (readiness, call, future)
/// on a no-op waker, with no executor: for benchmarks of layers over a ready
/// in-memory service, where an executor would cost more than the layer.
/// `None` if the service or its future is not ready at once.
pub fn call_now<S, R>(svc: &mut S, req: R) -> Option<Result<S::Response, S::Error>>
where
    S: tower::Service<R>,
{
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        std::task::Poll::Ready(Ok(())) => {}
        std::task::Poll::Ready(Err(e)) => return Some(Err(e)),
        std::task::Poll::Pending => return None,
    }
    let mut future = std::pin::pin!(svc.call(req));
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}
