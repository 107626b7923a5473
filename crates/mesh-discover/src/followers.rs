//! The services a [`DiscoverLayer`](crate::DiscoverLayer) follows from its
//! registry, kept bounded against request data.
//!
//! Hosts come from requests, so any caller can name any service. The rules
//! that keep memory and background tasks bounded whatever hosts arrive:
//!
//! - A service is followed from its first call, which waits for the
//!   registry's first answer.
//! - A first answer with no instance (Consul's `200 []`, an NXDOMAIN, a
//!   file that does not list the service) means the service is unknown:
//!   the follower stops and leaves, and its waiting calls fail with
//!   [`MeshError::UnknownService`](mesh_core::MeshError::UnknownService).
//!   Once a service has had instances, an empty answer is a real change
//!   (scaled to zero) and is followed like any other.
//! - A follower with no answer yet whose last waiting call gives up (its
//!   wait ran out, or its future was dropped) stops and leaves.
//! - A followed service with no call for the idle timeout stops and leaves
//!   the catalog; its next call follows it again.
//! - At most `max_followed` services are followed; when that many are,
//!   idle ones are evicted first, and if none is idle the call is refused
//!   with [`TooManyServices`].
//!
//! Calls to a followed service take no lock: the map sits behind an
//! [`ArcSwap`] and each follower's last use is an atomic. The mutex only
//! orders the rare changes (a follower joining or leaving, and a
//! follower's publications into the catalog, so that a follower that has
//! left can never write into the catalog again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::{clock, EndpointSet, ServiceName};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::error::TooManyServices;
use crate::follow::Follow;
use crate::registry::Registry;

/// A follower's last use is written at most this often, so that calls on
/// many cores do not all write the same cache line.
const TOUCH_EVERY: Duration = Duration::from_millis(1);

/// How a layer follows services from its registry.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) first_wait: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) max_staleness: Option<Duration>,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_followed: usize,
}

/// What a follower's first answer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum First {
    /// No answer yet.
    Pending,
    /// The service has instances; its set is in the catalog.
    Known,
    /// The registry does not know the service; the follower has left.
    Unknown,
}

/// The followed services of one layer (shared by its clones).
pub(crate) struct Followers {
    registry: Arc<dyn Registry>,
    /// The registry's description, computed once for errors.
    registry_name: String,
    catalog: Catalog,
    settings: Settings,
    map: ArcSwap<HashMap<ServiceName, Arc<Follower>>>,
    /// Orders joins, departures and followers' publications (not calls).
    changes: Mutex<()>,
}

/// One followed service: its shared state and its background task (which
/// stops when this is dropped, that is when it leaves the map).
struct Follower {
    lease: Arc<Lease>,
    _task: Follow,
}

/// The state a follower's task, its waiting calls and the map share.
pub(crate) struct Lease {
    service: ServiceName,
    followers: Weak<Followers>,
    /// When the service was last called, on [`mesh_core::clock`].
    last_used: AtomicU64,
    /// Calls waiting for the first answer.
    waiters: AtomicUsize,
    /// Cleared (under the changes mutex) when the follower leaves.
    live: AtomicBool,
    first: watch::Sender<First>,
}

/// What a follower's task does after handing over an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep following.
    Continue,
    /// The follower has left: end the task.
    Stop,
}

// === impl Followers ===

impl Followers {
    pub(crate) fn new(registry: Arc<dyn Registry>, catalog: Catalog, settings: Settings) -> Self {
        Followers {
            registry_name: registry.describe(),
            registry,
            catalog,
            settings,
            map: ArcSwap::from_pointee(HashMap::new()),
            changes: Mutex::new(()),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The services followed now, sorted.
    pub(crate) fn followed(&self) -> Vec<ServiceName> {
        let mut names: Vec<ServiceName> = self.map.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Records a call to `service` (the hot path: no lock, one atomic).
    pub(crate) fn touch(&self, service: &ServiceName) {
        if let Some(follower) = self.map.load().get(service) {
            follower.lease.touch();
        }
    }

    /// Joins the wait for `service`'s first answer, following it first if
    /// no one does yet.
    pub(crate) fn join(self: &Arc<Self>, service: &ServiceName) -> Result<Waiter, TooManyServices> {
        let _changes = self.lock();
        if let Some(follower) = self.map.load().get(service) {
            return Ok(Waiter::new(Arc::clone(&follower.lease)));
        }
        let mut map = HashMap::clone(&self.map.load());
        if map.len() >= self.settings.max_followed {
            let idle: Vec<ServiceName> = map
                .values()
                .filter(|f| f.lease.is_idle(self.settings.idle_timeout))
                .map(|f| f.lease.service.clone())
                .collect();
            for name in idle {
                if let Some(follower) = map.remove(&name) {
                    tracing::info!(service = %name, "no longer following an idle service to make room");
                    follower.lease.live.store(false, Ordering::Release);
                    self.catalog.remove(&name);
                }
            }
            if map.len() >= self.settings.max_followed {
                return Err(TooManyServices {
                    service: service.clone(),
                    limit: self.settings.max_followed,
                    idle_timeout: self.settings.idle_timeout,
                });
            }
        }
        tracing::info!(%service, registry = %self.registry_name, "following a new service");
        let lease = Arc::new(Lease {
            service: service.clone(),
            followers: Arc::downgrade(self),
            last_used: AtomicU64::new(clock::now().0),
            waiters: AtomicUsize::new(0),
            live: AtomicBool::new(true),
            first: watch::Sender::new(First::Pending),
        });
        let task = self.catalog.follow_leased(
            Arc::clone(&self.registry),
            service.clone(),
            self.settings.retry_after,
            self.settings.max_staleness,
            Arc::clone(&lease),
        );
        map.insert(
            service.clone(),
            Arc::new(Follower {
                lease: Arc::clone(&lease),
                _task: task,
            }),
        );
        self.map.store(Arc::new(map));
        Ok(Waiter::new(lease))
    }

    /// Stops following every service (sets in the catalog stay).
    pub(crate) fn clear(&self) {
        let _changes = self.lock();
        for follower in self.map.load().values() {
            follower.lease.live.store(false, Ordering::Release);
        }
        self.map.store(Arc::new(HashMap::new()));
    }

    /// Takes the changes mutex; a panic elsewhere while it was held leaves
    /// the map consistent (every change is one store), so poisoning is
    /// ignored.
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes `lease`'s follower from the map (the caller holds the
    /// changes mutex). Dropping it aborts its task.
    fn remove(&self, lease: &Lease) {
        lease.live.store(false, Ordering::Release);
        let map = self.map.load();
        let Some(current) = map.get(&lease.service) else {
            return;
        };
        if !std::ptr::eq(Arc::as_ptr(&current.lease), lease) {
            return;
        }
        let mut map = HashMap::clone(&map);
        // Dropped after the new map is stored, outside the borrow of it.
        let removed = map.remove(&lease.service);
        self.map.store(Arc::new(map));
        drop(removed);
    }
}

impl std::fmt::Debug for Followers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followers")
            .field("registry", &self.registry_name)
            .field("settings", &self.settings)
            .field("followed", &self.map.load().len())
            .finish()
    }
}

// === impl Lease ===

impl Lease {
    fn touch(&self) {
        let now = clock::now();
        let last = self.last_used.load(Ordering::Relaxed);
        if now.saturating_since(clock::Nanos(last)) >= TOUCH_EVERY {
            self.last_used.store(now.0, Ordering::Relaxed);
        }
    }

    /// Known, and not called for `idle_timeout`.
    fn is_idle(&self, idle_timeout: Duration) -> bool {
        *self.first.borrow() == First::Known
            && clock::now().saturating_since(clock::Nanos(self.last_used.load(Ordering::Relaxed)))
                >= idle_timeout
    }

    /// When the follower becomes idle if no call comes first; `None`
    /// before its first answer (waiting calls decide its fate then).
    pub(crate) fn idle_at(&self) -> Option<tokio::time::Instant> {
        let followers = self.followers.upgrade()?;
        if *self.first.borrow() != First::Known {
            return None;
        }
        let last = clock::Nanos(self.last_used.load(Ordering::Relaxed));
        let at = last.saturating_add(followers.settings.idle_timeout);
        Some(at.to_tokio_instant())
    }

    /// Leaves (and withdraws the service's set) when idle. Returns
    /// [`Next::Stop`] when the follower has left, idle or otherwise.
    pub(crate) fn leave_if_idle(&self) -> Next {
        let Some(followers) = self.followers.upgrade() else {
            return Next::Stop;
        };
        let _changes = followers.lock();
        if !self.live.load(Ordering::Acquire) {
            return Next::Stop;
        }
        if !self.is_idle(followers.settings.idle_timeout) {
            return Next::Continue;
        }
        tracing::info!(service = %self.service, idle_timeout = ?followers.settings.idle_timeout, "no longer following an idle service");
        followers.catalog.remove(&self.service);
        followers.remove(self);
        Next::Stop
    }

    /// Hands over a good answer: the first one decides whether the service
    /// exists (no instance: unknown, and the follower leaves); later ones
    /// are published as they come.
    pub(crate) fn answer(&self, set: EndpointSet) -> Next {
        let Some(followers) = self.followers.upgrade() else {
            return Next::Stop;
        };
        let _changes = followers.lock();
        if !self.live.load(Ordering::Acquire) {
            return Next::Stop;
        }
        if *self.first.borrow() == First::Pending {
            if set.is_empty() {
                return self.unknown(&followers);
            }
            followers.catalog.update(set);
            self.first.send_replace(First::Known);
            return Next::Continue;
        }
        followers.catalog.update(set);
        Next::Continue
    }

    /// Publishes `set` only when the service is known (an expiry has
    /// nothing to withdraw before the first answer).
    pub(crate) fn withdraw(&self, set: EndpointSet) -> Next {
        let Some(followers) = self.followers.upgrade() else {
            return Next::Stop;
        };
        let _changes = followers.lock();
        if !self.live.load(Ordering::Acquire) {
            return Next::Stop;
        }
        if *self.first.borrow() == First::Known {
            followers.catalog.update(set);
        }
        Next::Continue
    }

    /// The registry said it does not know the service: before the first
    /// answer the follower leaves; after it, this is an error like any
    /// other ([`Next::Continue`]).
    pub(crate) fn not_listed(&self) -> Next {
        let Some(followers) = self.followers.upgrade() else {
            return Next::Stop;
        };
        let _changes = followers.lock();
        if !self.live.load(Ordering::Acquire) {
            return Next::Stop;
        }
        if *self.first.borrow() == First::Pending {
            return self.unknown(&followers);
        }
        Next::Continue
    }

    fn unknown(&self, followers: &Followers) -> Next {
        tracing::debug!(service = %self.service, "the registry does not list the service; not following it");
        self.first.send_replace(First::Unknown);
        followers.remove(self);
        Next::Stop
    }
}

// === impl Waiter ===

/// A call waiting for its service's first answer. Dropping the last
/// waiter of a follower that has had no answer yet removes the follower:
/// nobody is left to want it.
pub(crate) struct Waiter {
    lease: Arc<Lease>,
}

impl Waiter {
    fn new(lease: Arc<Lease>) -> Waiter {
        // Counted under the changes mutex (the caller holds it), as is the
        // decrement in `drop`, so a departure never races a join.
        lease.waiters.fetch_add(1, Ordering::Relaxed);
        Waiter { lease }
    }

    /// The first answer as it becomes known.
    pub(crate) fn subscribe(&self) -> watch::Receiver<First> {
        self.lease.first.subscribe()
    }

    /// The registry's description, for a timeout error.
    pub(crate) fn registry_name(&self) -> String {
        self.lease
            .followers
            .upgrade()
            .map_or_else(|| "the registry".to_owned(), |f| f.registry_name.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(followers) = self.lease.followers.upgrade() else {
            return;
        };
        let _changes = followers.lock();
        let left = self.lease.waiters.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0
            && *self.lease.first.borrow() == First::Pending
            && self.lease.live.load(Ordering::Acquire)
        {
            tracing::debug!(service = %self.lease.service, "no call waits for the first answer any more; not following the service");
            followers.remove(&self.lease);
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("service", &self.lease.service)
            .finish()
    }
}
