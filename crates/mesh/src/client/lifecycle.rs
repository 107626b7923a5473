//! A client's life after start: calls admitted and counted until
//! shutdown, registration with Consul, and the graceful shutdown that
//! drains the calls in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::MeshError;
use mesh_discover::{AgentCheck, Follow, Registration};
use tokio::sync::Notify;

use super::body::CallGuard;
use super::error::StartError;
use super::MeshClient;
use crate::config::DiscoveryConfig;
use crate::lanes::LaneCount;

/// How long Consul waits for a heartbeat before marking the service
/// critical.
const TTL: Duration = Duration::from_secs(30);
/// How often the heartbeat is sent: well within [`TTL`].
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long Consul keeps a critical registration before removing it, for
/// an instance that died without deregistering.
const DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(300);

/// The calls in flight and whether new ones are still admitted: what
/// shutdown's drain waits on.
#[derive(Debug, Default)]
pub(super) struct Calls {
    /// Set once shutdown begins: new calls are refused.
    closed: AtomicBool,
    /// Calls admitted and not yet over (response bodies included), in
    /// lanes: every call adds and takes one, on both cores.
    in_flight: LaneCount,
    /// Woken when the last call in flight ends.
    drained: Notify,
}

/// The local service's registration with Consul, kept alive by its
/// heartbeat until shutdown.
pub(super) struct Registered {
    /// The service ID Consul knows the registration by.
    id: String,
    /// The heartbeat task; stops when dropped.
    heartbeat: Follow,
}

// === impl Calls ===

impl Calls {
    /// How many calls are in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.sum(Ordering::SeqCst)
    }

    /// Whether shutdown has begun.
    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Counts one call out, waking the drain when it was the last.
    ///
    /// Only a closed client sums the lanes. A call that leaves before the
    /// close shows in the drain's first sum: the count and the flag are
    /// both sequentially consistent, so either this call sees the flag or
    /// the drain sees the count.
    pub(super) fn leave(&self) {
        self.in_flight.sub(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) && self.in_flight() == 0 {
            self.drained.notify_waiters();
        }
    }
}

// === impl MeshClient ===

impl MeshClient {
    /// Graceful shutdown: readiness fails at once and the local service
    /// leaves Consul (heartbeat stopped, then deregistered), so callers
    /// stop sending; new calls are refused; calls in flight (their
    /// response bodies included) get up to `drain` to finish, and are not
    /// cancelled; then the background tasks stop: health checks, upstream
    /// checks, discovery watches and certificate watching. Returns how many
    /// calls were still in flight when the drain ended (0 when all
    /// finished).
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.inner.calls.closed.store(true, Ordering::SeqCst);
        if let Some(health) = &self.inner.health {
            health.shutdown();
        }
        self.deregister().await;
        let left = self.drain(drain).await;
        if left > 0 {
            tracing::warn!(left, "shutdown: calls still in flight after the drain");
        }
        self.stop_background();
        left
    }

    /// Counts a call in, or refuses it once shutdown has begun.
    pub(super) fn enter(&self) -> Result<CallGuard, MeshError> {
        let calls = &self.inner.calls;
        if calls.closed.load(Ordering::SeqCst) {
            return Err(self.shutting_down());
        }
        calls.in_flight.add(Ordering::SeqCst);
        let guard = CallGuard::new(Arc::clone(&self.inner));
        // Closed between the check and the count: undo (the guard's drop)
        // and refuse.
        if calls.closed.load(Ordering::SeqCst) {
            drop(guard);
            return Err(self.shutting_down());
        }
        Ok(guard)
    }

    fn shutting_down(&self) -> MeshError {
        MeshError::ShuttingDown {
            service: self.inner.name.clone(),
        }
    }

    /// Registers the local service with the Consul agent (when the
    /// configuration says `register = true`), with a TTL check kept
    /// passing by heartbeats.
    pub(super) async fn register(&self) -> Result<(), StartError> {
        let Some(registration) = self.registration() else {
            return Ok(());
        };
        let Some(consul) = &self.inner.discovery.consul else {
            return Ok(());
        };
        consul
            .register(&registration)
            .await
            .map_err(|e| StartError::Registration {
                service: self.inner.name.clone(),
                registry: mesh_discover::Registry::describe(consul),
                source: Box::new(e),
            })?;
        let id = registration.id.clone();
        let heartbeat = consul.heartbeat(registration, HEARTBEAT);
        if let Ok(mut registered) = self.inner.registered.lock() {
            *registered = Some(Registered { id, heartbeat });
        }
        Ok(())
    }

    /// What the local service registers as, when the configuration asks
    /// for registration and gives its address and port.
    fn registration(&self) -> Option<Registration> {
        let config = &self.inner.config;
        let DiscoveryConfig::Consul { register: true, .. } = &config.discovery else {
            return None;
        };
        let (address, port) = (config.service.address?, config.service.port?);
        Some(Registration {
            id: format!("{}-{address}-{port}", self.inner.name),
            name: self.inner.name.to_string(),
            address,
            port,
            tags: config.service.tags.clone(),
            meta: Default::default(),
            check: Some(AgentCheck::Ttl { ttl: TTL }),
            deregister_critical_after: Some(DEREGISTER_CRITICAL_AFTER),
        })
    }

    /// Leaves Consul, if registered: the heartbeat first, so none
    /// re-registers after the deregister. A failure is logged, not
    /// returned: shutdown goes on.
    async fn deregister(&self) {
        let registered = self.inner.registered.lock().ok().and_then(|mut r| r.take());
        let (Some(Registered { id, heartbeat }), Some(consul)) =
            (registered, &self.inner.discovery.consul)
        else {
            return;
        };
        drop(heartbeat);
        if let Err(error) = consul.deregister(&id).await {
            tracing::warn!(%error, "deregistering from Consul failed");
        }
    }

    /// Waits up to `drain` for the calls in flight to end (woken by the
    /// last one, never polling); returns how many are left.
    async fn drain(&self, drain: Duration) -> usize {
        let calls = &self.inner.calls;
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            // Registered before the count is read, so an end between the
            // two still wakes this wait.
            let waiting = calls.drained.notified();
            if calls.in_flight() == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, waiting).await;
        }
        calls.in_flight()
    }

    /// Stops the background tasks: upstream checkers (with the
    /// per-service state), discovery watches, certificate watching.
    fn stop_background(&self) {
        self.inner.services.clear();
        self.inner.discovery.layer.stop_following();
        if let Some(tls) = &self.inner.tls {
            tls.stop_watching();
        }
    }
}
