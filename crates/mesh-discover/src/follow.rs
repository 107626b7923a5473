//! Keeping a [`Catalog`] fresh from a [`Registry`].

use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use mesh_core::{clock, EndpointSet, MeshEvent, ServiceName};
use tokio::task::JoinHandle;

use crate::catalog::Catalog;
use crate::registry::Registry;

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
        self.follow_inner(registry, service, retry_after, None)
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
        self.follow_inner(registry, service, retry_after, Some(max_staleness))
    }

    fn follow_inner(
        &self,
        registry: Arc<dyn Registry>,
        service: ServiceName,
        retry_after: Duration,
        max_staleness: Option<Duration>,
    ) -> Follow {
        let catalog = self.clone();
        let task = tokio::spawn(async move {
            let mut last_good: Option<mesh_core::clock::Nanos> = None;
            let started = clock::now();
            let mut failing = false;
            let mut expired = false;
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
                    catalog.update(EndpointSet::empty(service.clone()));
                    catalog.events().publish(MeshEvent::DiscoveryExpired {
                        service: service.clone(),
                        stale_for,
                    });
                    None
                };
            loop {
                let mut watch = registry.watch(&service);
                loop {
                    let answer = match expire_if_due(last_good, failing, &mut expired) {
                        Some(left) => match tokio::time::timeout(left, next(&mut watch)).await {
                            Ok(answer) => answer,
                            Err(_) => continue,
                        },
                        None => next(&mut watch).await,
                    };
                    let Some(answer) = answer else { break };
                    match answer {
                        Ok(set) if set.service() == &service => {
                            if std::mem::take(&mut failing) {
                                tracing::info!(%service, "registry answers again");
                                catalog.events().publish(MeshEvent::DiscoveryRecovered {
                                    service: service.clone(),
                                });
                            }
                            catalog.update(set);
                            last_good = Some(clock::now());
                            expired = false;
                        }
                        Ok(set) => {
                            tracing::warn!(%service, other = %set.service(), "registry answered for another service; ignored");
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
                // Wait before restarting the watch, still expiring on time.
                let restart = tokio::time::Instant::now() + retry_after;
                while let Some(left) = expire_if_due(last_good, failing, &mut expired) {
                    if tokio::time::Instant::now() >= restart {
                        break;
                    }
                    tokio::time::sleep_until(restart.min(tokio::time::Instant::now() + left)).await;
                }
                tokio::time::sleep_until(restart).await;
            }
        });
        Follow { task }
    }
}

async fn next<S: Stream + Unpin + ?Sized>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
