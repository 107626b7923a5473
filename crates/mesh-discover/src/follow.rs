//! Keeping a [`Catalog`] fresh from a [`Registry`].

use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use mesh_core::{clock, EndpointSet, MeshEvent, ServiceName};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::followers::{Lease, Next};
use crate::registry::{DiscoveryError, Registry};

/// A background task (following a registry into a catalog, sending
/// heartbeats); it stops when dropped.
#[derive(Debug)]
pub struct Follow {
    task: JoinHandle<()>,
}

impl Follow {
    /// Runs `task` in the background until the handle is dropped.
    pub(crate) fn spawn<F>(task: F) -> Follow
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        Follow {
            task: tokio::spawn(task),
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Catalog {
    /// Follows `service` in `registry`: every snapshot the registry's watch
    /// yields replaces the service's set (identical ones change nothing).
    /// When the registry fails, the last good set stays in use and a
    /// [`MeshEvent::DiscoveryFailed`] says how stale it is; the first good
    /// answer after that publishes [`MeshEvent::DiscoveryRecovered`]. A
    /// watch stream that ends is restarted after `retry_after`.
    ///
    /// The last good set is kept for as long as the registry fails; see
    /// [`Catalog::follow_with_max_staleness`] to bound that.
    ///
    /// Needs a tokio runtime.
    pub fn follow(
        &self,
        registry: Arc<dyn Registry>,
        service: ServiceName,
        retry_after: Duration,
    ) -> Follow {
        self.follow_inner(registry, service, retry_after, None, None)
    }

    /// [`Catalog::follow`], except that once the registry is failing, a set
    /// left unrefreshed for longer than `max_staleness` is replaced by an
    /// empty one and [`MeshEvent::DiscoveryExpired`] is
    /// published: past some age, addresses may belong to other workloads
    /// and failing clearly beats calling them. The next good answer
    /// restores the service.
    ///
    /// Age counts only while the registry reports errors: many watches
    /// (files, Consul blocking queries, etcd) are silent while nothing
    /// changes, and silence is not staleness. A registry that hangs rather
    /// than failing must time out into an error (Consul's blocking queries
    /// do) for its set to expire.
    ///
    /// Needs a tokio runtime.
    pub fn follow_with_max_staleness(
        &self,
        registry: Arc<dyn Registry>,
        service: ServiceName,
        retry_after: Duration,
        max_staleness: Duration,
    ) -> Follow {
        self.follow_inner(registry, service, retry_after, Some(max_staleness), None)
    }

    /// [`Catalog::follow`] for a service followed on behalf of a
    /// [`DiscoverLayer`](crate::DiscoverLayer): publications go through
    /// `lease`, which decides whether a first answer makes the service
    /// known, and the task leaves once the service is idle.
    pub(crate) fn follow_leased(
        &self,
        registry: Arc<dyn Registry>,
        service: ServiceName,
        retry_after: Duration,
        max_staleness: Option<Duration>,
        lease: Arc<Lease>,
    ) -> Follow {
        self.follow_inner(registry, service, retry_after, max_staleness, Some(lease))
    }

    fn follow_inner(
        &self,
        registry: Arc<dyn Registry>,
        service: ServiceName,
        retry_after: Duration,
        max_staleness: Option<Duration>,
        lease: Option<Arc<Lease>>,
    ) -> Follow {
        let catalog = self.clone();
        let task = tokio::spawn(async move {
            let mut last_good: Option<mesh_core::clock::Nanos> = None;
            let started = clock::now();
            let mut failing = false;
            let mut expired = false;
            // Publishes a set: straight into the catalog, or through the
            // lease of a layer's follower (which may have left).
            let publish = |set: EndpointSet| match &lease {
                Some(lease) => lease.answer(set),
                None => {
                    catalog.update(set);
                    Next::Continue
                }
            };
            // Withdraws the set once the registry has failed for too long
            // since the last good answer; checked on every answer and by a
            // timer, so a registry that fails and then hangs expires too.
            // Returns how long until expiry while that is still ahead.
            let expire_if_due =
                |last_good: Option<clock::Nanos>, failing: bool, expired: &mut bool| {
                    let max = match max_staleness {
                        Some(max) if failing && !*expired => max,
                        _ => return None,
                    };
                    let stale_for = clock::now().saturating_since(last_good.unwrap_or(started));
                    if stale_for < max {
                        return Some(max - stale_for);
                    }
                    *expired = true;
                    tracing::error!(%service, ?stale_for, "discovery set expired; withdrawing it");
                    let empty = EndpointSet::empty(service.clone());
                    match &lease {
                        Some(lease) => {
                            lease.withdraw(empty);
                        }
                        None => {
                            catalog.update(empty);
                        }
                    }
                    catalog.events().publish(MeshEvent::DiscoveryExpired {
                        service: service.clone(),
                        stale_for,
                    });
                    None
                };
            // When to look again without an answer: for expiry, or to see
            // whether the service has gone idle.
            let wake_at = |left: Option<Duration>| {
                let expiry = left.map(|left| Instant::now() + left);
                let idle = lease.as_ref().and_then(|lease| lease.idle_at());
                match (expiry, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let idle = || match &lease {
                Some(lease) => lease.leave_if_idle() == Next::Stop,
                None => false,
            };
            loop {
                let mut watch = registry.watch(&service);
                loop {
                    if idle() {
                        return;
                    }
                    let left = expire_if_due(last_good, failing, &mut expired);
                    let answer = match wake_at(left) {
                        Some(at) => match tokio::time::timeout_at(at, next(&mut watch)).await {
                            Ok(answer) => answer,
                            Err(_) => continue,
                        },
                        None => next(&mut watch).await,
                    };
                    let Some(answer) = answer else { break };
                    // One root span per answer from the registry: a
                    // background round, no call's child.
                    let span = tracing::info_span!(
                        parent: None,
                        "mesh.discovery.update",
                        mesh.service = %service,
                        mesh.endpoints = tracing::field::Empty,
                        mesh.outcome = tracing::field::Empty,
                        error.type = tracing::field::Empty,
                    );
                    let _entered = span.enter();
                    if !span.is_disabled() {
                        match &answer {
                            Ok(set) => span
                                .record("mesh.endpoints", set.len() as u64)
                                .record("mesh.outcome", "answered"),
                            Err(error) => span
                                .record("mesh.outcome", "failed")
                                .record("error.type", error_type(error)),
                        };
                    }
                    match answer {
                        Ok(set) if set.service() == &service => {
                            if std::mem::take(&mut failing) {
                                tracing::info!(%service, "registry answers again");
                                catalog.events().publish(MeshEvent::DiscoveryRecovered {
                                    service: service.clone(),
                                });
                            }
                            if publish(set) == Next::Stop {
                                return;
                            }
                            last_good = Some(clock::now());
                            expired = false;
                        }
                        Ok(set) => {
                            tracing::warn!(%service, other = %set.service(), "registry answered for another service; ignored");
                        }
                        Err(DiscoveryError::UnknownService(_))
                            if lease.as_ref().is_some_and(|l| l.not_listed() == Next::Stop) =>
                        {
                            return;
                        }
                        Err(error) => {
                            failing = true;
                            // Never refreshed yet: stale for as long as it has been followed.
                            let stale_for =
                                clock::now().saturating_since(last_good.unwrap_or(started));
                            tracing::warn!(%service, %error, ?stale_for, "registry failed; keeping the last good set");
                            catalog.events().publish(MeshEvent::DiscoveryFailed {
                                service: service.clone(),
                                error: error.to_string(),
                                stale_for,
                            });
                        }
                    }
                }
                // Wait before restarting the watch, still expiring and
                // leaving when idle on time.
                let restart = Instant::now() + retry_after;
                while Instant::now() < restart {
                    if idle() {
                        return;
                    }
                    let left = expire_if_due(last_good, failing, &mut expired);
                    let at = wake_at(left).map_or(restart, |at| at.min(restart));
                    tokio::time::sleep_until(at).await;
                }
            }
        });
        Follow { task }
    }
}

/// A failed answer's `error.type`, in a word (the span's field stays
/// low-cardinality; the warning and the event carry the message).
fn error_type(error: &DiscoveryError) -> &'static str {
    match error {
        DiscoveryError::Unavailable(_) => "unavailable",
        DiscoveryError::Malformed(_) => "malformed",
        DiscoveryError::UnknownService(_) => "unknown_service",
    }
}

async fn next<S: Stream + Unpin + ?Sized>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
