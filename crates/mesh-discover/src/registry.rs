//! [`Registry`]: the trait every discovery backend implements.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use mesh_core::{EndpointSet, ServiceName};

/// A boxed future, `Send` and `'static`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// A boxed stream, `Send` and `'static`.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// Why a registry could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The registry could not be reached or read (it may come back).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry answered something that cannot be used.
    #[error("registry answer malformed: {0}")]
    Malformed(String),
    /// The registry does not know the service.
    #[error("unknown service {0:?}")]
    UnknownService(ServiceName),
}

/// A discovery backend.
///
/// A backend answers two questions about a service: what are its endpoints
/// now ([`Registry::resolve`]), and what are they as they change
/// ([`Registry::watch`], a stream of complete snapshots). Both are boxed so
/// that a backend is an object (`Arc<dyn Registry>`), and a custom backend
/// (etcd, Redis, SQL) is one type with two methods (and, optionally,
/// [`Registry::describe`] to say where it reads):
///
/// ```
/// use std::sync::Arc;
/// use mesh_core::{Endpoint, EndpointSet, ServiceName};
/// use mesh_discover::{BoxFuture, BoxStream, DiscoveryError, Registry};
///
/// /// Every service lives on one fixed address (a toy backend).
/// struct OneAddress(std::net::SocketAddr);
///
/// impl Registry for OneAddress {
///     fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
///         let set = EndpointSet::new(service.clone(), vec![Endpoint::builder(self.0).build()]);
///         Box::pin(async move { Ok(set) })
///     }
///
///     fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
///         // A backend without change notification polls: `poll_watch`
///         // resolves at an interval and yields each answer.
///         mesh_discover::poll_watch(Arc::new(OneAddress(self.0)), service.clone(), std::time::Duration::from_secs(30))
///     }
/// }
/// ```
pub trait Registry: Send + Sync + 'static {
    /// The service's endpoints now.
    fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>>;

    /// The service's endpoints as they change: each item a complete
    /// snapshot (or an error; the stream goes on after one). Consumers drop
    /// repeated identical snapshots, so a backend may yield on every poll.
    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>>;

    /// Which registry this is, for errors and logs (`consul at
    /// http://127.0.0.1:8500`, `file /etc/mesh/services.json`): where it
    /// reads, never a token or password. The default names the type;
    /// override it to say where a custom backend reads.
    fn describe(&self) -> String {
        format!("registry {}", std::any::type_name::<Self>())
    }
}

/// A watch for backends without change notification: resolves `service`
/// every `interval` (the design document's `refreshInterval`) and yields
/// each answer, starting at once.
pub fn poll_watch<R: Registry + ?Sized>(
    registry: Arc<R>,
    service: ServiceName,
    interval: Duration,
) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
    Box::pin(PollWatch {
        registry,
        service,
        interval,
        pending: None,
        sleep: None,
    })
}

struct PollWatch<R: ?Sized> {
    registry: Arc<R>,
    service: ServiceName,
    interval: Duration,
    pending: Option<BoxFuture<Result<EndpointSet, DiscoveryError>>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R: Registry + ?Sized> Stream for PollWatch<R> {
    type Item = Result<EndpointSet, DiscoveryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                std::task::ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            if this.pending.is_none() {
                this.pending = Some(this.registry.resolve(&this.service));
            }
            if let Some(pending) = this.pending.as_mut() {
                let answer = std::task::ready!(pending.as_mut().poll(cx));
                this.pending = None;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.interval)));
                return Poll::Ready(Some(answer));
            }
        }
    }
}

/// The sending half a [`watch_task`] feeds its snapshots into.
pub type WatchSender = tokio::sync::mpsc::Sender<Result<EndpointSet, DiscoveryError>>;

/// A watch stream fed by a background task: `task` gets the sender and
/// sends each snapshot (or error) as the backend learns it. Dropping the
/// stream aborts the task at once; it may be blocked on a long poll or an
/// open watch, so waiting for its next send to fail would not be enough.
/// The channel holds one snapshot: a slow reader slows the task down
/// instead of queueing stale sets.
///
/// Needs a tokio runtime.
pub fn watch_task<F, Fut>(task: F) -> BoxStream<Result<EndpointSet, DiscoveryError>>
where
    F: FnOnce(WatchSender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(task(tx));
    Box::pin(TaskStream {
        rx,
        task: task.abort_handle(),
    })
}

struct TaskStream<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    task: tokio::task::AbortHandle,
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Stream for TaskStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}
