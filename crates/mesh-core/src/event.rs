//! [`MeshEvent`]s and the [`EventBus`] that carries them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::classify::FailureKind;
use crate::name::{EndpointId, ServiceName};
use crate::state::Health;

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls are refused without being sent, until the open duration ends.
    Open,
    /// A configured number of probe calls pass to test recovery; the
    /// others are refused.
    HalfOpen,
    /// Held open by an operator: every call is refused until released.
    ForcedOpen,
    /// Switched off by an operator: every call passes and nothing is
    /// recorded.
    Disabled,
    /// Recording without acting: every call passes, rates are computed and
    /// reported, the circuit never trips.
    MetricsOnly,
}

impl CircuitState {
    /// Whether calls are refused in this state (all, or all but probes).
    pub fn refuses_calls(self) -> bool {
        matches!(
            self,
            CircuitState::Open | CircuitState::HalfOpen | CircuitState::ForcedOpen
        )
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
            CircuitState::ForcedOpen => "forced-open",
            CircuitState::Disabled => "disabled",
            CircuitState::MetricsOnly => "metrics-only",
        })
    }
}

/// One of a service's Kubernetes-style probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Is the process alive (restart it if not)?
    Liveness,
    /// Should it receive traffic?
    Readiness,
    /// Has it finished starting (gates the other two until it has)?
    Startup,
}

impl Probe {
    /// All three, in a fixed order.
    pub const ALL: [Probe; 3] = [Probe::Liveness, Probe::Readiness, Probe::Startup];

    /// `liveness`, `readiness` or `startup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Liveness => "liveness",
            Probe::Readiness => "readiness",
            Probe::Startup => "startup",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeStatus {
    /// Every check it depends on passes.
    Healthy,
    /// Only non-critical checks fail: still passing.
    Degraded,
    /// A critical check fails (or has not passed yet, or the service is
    /// stopping).
    Unhealthy,
}

impl ProbeStatus {
    /// Whether the probe passes (healthy or degraded).
    pub fn passes(self) -> bool {
        !matches!(self, ProbeStatus::Unhealthy)
    }

    /// `healthy`, `degraded` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Healthy => "healthy",
            ProbeStatus::Degraded => "degraded",
            ProbeStatus::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened in the mesh that an operator may want to see.
///
/// Events are for transitions and decisions (a breaker opening, a retry
/// being scheduled, a set of endpoints changing). The one per-call event,
/// [`MeshEvent::BreakerRejected`], is published only while someone
/// subscribes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MeshEvent {
    /// A circuit breaker changed state.
    BreakerTransition {
        /// The service the breaker guards.
        service: Option<ServiceName>,
        /// The endpoint, for a per-endpoint breaker.
        endpoint: Option<EndpointId>,
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
    },
    /// A circuit breaker refused a call without sending it.
    BreakerRejected {
        /// The service the breaker guards.
        service: Option<ServiceName>,
        /// The endpoint, for a per-endpoint breaker.
        endpoint: Option<EndpointId>,
        /// The state that refused it.
        state: CircuitState,
    },
    /// A breaker's failure rate reached its threshold (once per state; a
    /// metrics-only breaker reports it without tripping).
    BreakerFailureRateExceeded {
        /// The service the breaker guards.
        service: Option<ServiceName>,
        /// The endpoint, for a per-endpoint breaker.
        endpoint: Option<EndpointId>,
        /// Failed calls in the window, in percent.
        failure_rate: f64,
    },
    /// A breaker's slow-call rate reached its threshold (once per state; a
    /// metrics-only breaker reports it without tripping).
    BreakerSlowCallRateExceeded {
        /// The service the breaker guards.
        service: Option<ServiceName>,
        /// The endpoint, for a per-endpoint breaker.
        endpoint: Option<EndpointId>,
        /// Slow calls in the window, in percent.
        slow_call_rate: f64,
    },
    /// A request is going to be sent again.
    RetryScheduled {
        /// The service the request is for.
        service: Option<ServiceName>,
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The endpoint that failed the previous attempt, if known.
        failed_endpoint: Option<EndpointId>,
        /// Why the previous attempt failed.
        reason: FailureKind,
        /// How long the retry waits before sending.
        backoff: Duration,
    },
    /// A request still failed after its last allowed retry (the design
    /// document's `service-mesh:retry:max-reached`).
    RetriesExhausted {
        /// The service the request is for.
        service: Option<ServiceName>,
        /// Attempts made, the first included.
        attempts: u32,
        /// Why the last attempt failed.
        reason: FailureKind,
    },
    /// A retry was not made because the retry budget was spent.
    RetryBudgetExhausted {
        /// The service the request is for.
        service: Option<ServiceName>,
        /// Why the attempt that was not retried failed.
        reason: FailureKind,
    },
    /// Discovery published a new set of endpoints for a service.
    EndpointsChanged {
        /// The service.
        service: ServiceName,
        /// Endpoints in the new set.
        total: usize,
        /// Endpoints that were not in the previous set.
        added: usize,
        /// Endpoints of the previous set that are gone.
        removed: usize,
    },
    /// A registry could not answer for a service; the last good set stays
    /// in use, marked stale.
    DiscoveryFailed {
        /// The service.
        service: ServiceName,
        /// What went wrong.
        error: String,
        /// How long the service's set has not been refreshed.
        stale_for: Duration,
    },
    /// A service's set stayed stale longer than its follower's max
    /// staleness and was withdrawn: requests fail with "no endpoints"
    /// until the registry answers again, instead of going to addresses
    /// that may long since belong to something else.
    DiscoveryExpired {
        /// The service.
        service: ServiceName,
        /// How long the set had not been refreshed.
        stale_for: Duration,
    },
    /// A registry answers again for a service whose set was stale.
    DiscoveryRecovered {
        /// The service.
        service: ServiceName,
    },
    /// The number of endpoints a balancer may use changed (health,
    /// ejection or discovery), as seen by the balancer.
    AvailableEndpointsChanged {
        /// The service.
        service: ServiceName,
        /// Endpoints available now.
        available: usize,
        /// Endpoints in all.
        total: usize,
        /// Whether too few are available and the balancer uses them all
        /// (panic mode).
        panic: bool,
    },
    /// Health checking changed its verdict on an endpoint.
    EndpointHealthChanged {
        /// The service.
        service: ServiceName,
        /// The endpoint.
        endpoint: EndpointId,
        /// The previous verdict.
        from: Health,
        /// The new verdict.
        to: Health,
    },
    /// A call through the mesh facade ended (published only while someone
    /// subscribes).
    RequestCompleted {
        /// The service called.
        service: ServiceName,
        /// The instance that answered (or failed), when one was chosen.
        endpoint: Option<EndpointId>,
        /// The status, when a response came back.
        status: Option<u16>,
        /// The error, when none did.
        error: Option<String>,
        /// From the call to its response (retries included).
        elapsed: Duration,
    },
    /// A health check reached its failure threshold (the design document's
    /// `service-mesh:health:check-failed`).
    HealthCheckFailed {
        /// The check's name.
        check: String,
        /// Whether its failure makes its probes unhealthy (else degraded).
        critical: bool,
        /// The last failure.
        error: String,
        /// Failures in a row.
        consecutive_failures: u32,
    },
    /// A failing health check reached its success threshold again.
    HealthCheckRecovered {
        /// The check's name.
        check: String,
    },
    /// A probe's verdict changed.
    ProbeStatusChanged {
        /// The probe.
        probe: Probe,
        /// The verdict before.
        from: ProbeStatus,
        /// The verdict now.
        to: ProbeStatus,
    },
    /// New TLS material (certificate, key or CA) is in use for new
    /// handshakes; established connections keep what they negotiated.
    CertificateRotated {
        /// The workload identity of the new certificate (its SPIFFE URI),
        /// or its first DNS name.
        identity: Option<String>,
        /// When the new certificate expires, in seconds since the Unix
        /// epoch.
        not_after_unix: i64,
    },
    /// Changed TLS files were refused (unreadable, malformed, a key that
    /// does not match the certificate, a certificate expired or not valid
    /// yet); the previous material stays in use.
    CertificateRotationRejected {
        /// Why, naming the file.
        reason: String,
    },
    /// A TLS handshake was refused or failed.
    HandshakeRejected {
        /// Which end saw it: `"client"` or `"server"`.
        side: &'static str,
        /// The peer's address, when known.
        peer: Option<std::net::SocketAddr>,
        /// Why, as a stable short label: `unknown-ca`, `expired`,
        /// `not-yet-valid`, `identity-not-allowed`, `unexpected-identity`
        /// (a valid mesh certificate of another service), `no-identity`,
        /// `ambiguous-identity`, `no-client-certificate`, `name-mismatch`,
        /// `refused-by-peer` or `other` (mesh-tls's
        /// `HandshakeRejection::LABELS`).
        reason: &'static str,
        /// The full reason.
        detail: String,
    },
}

/// A broadcast channel of [`MeshEvent`]s shared by every layer of a stack.
///
/// Publishing never blocks and never fails: with no subscriber the event is
/// dropped, and a subscriber that falls more than `capacity` events behind
/// skips the oldest ones (it sees [`broadcast::error::RecvError::Lagged`])
/// rather than slowing the request path down.
///
/// ```
/// use mesh_core::{CircuitState, EventBus, MeshEvent};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::new(64);
/// let mut events = bus.subscribe();
/// bus.publish(MeshEvent::BreakerTransition {
///     service: None,
///     endpoint: None,
///     from: CircuitState::Closed,
///     to: CircuitState::Open,
/// });
/// assert!(matches!(events.recv().await, Ok(MeshEvent::BreakerTransition { .. })));
/// # }
/// ```
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<MeshEvent>,
    /// Set by the first subscription, never cleared: until then, asking
    /// whether anyone listens reads one flag instead of taking the
    /// channel's lock, which every call's publisher would contend for.
    ever_subscribed: Arc<AtomicBool>,
}

// === impl EventBus ===

impl EventBus {
    /// The number of events a default bus buffers per subscriber.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// The most events a bus buffers, whatever is asked: a bigger buffer
    /// would only hide a subscriber that never reads.
    pub const MAX_CAPACITY: usize = 1 << 20;

    /// A bus that buffers up to `capacity` events per subscriber, clamped
    /// to `1..=MAX_CAPACITY`.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.clamp(1, Self::MAX_CAPACITY));
        EventBus {
            sender,
            ever_subscribed: Arc::default(),
        }
    }

    /// A new subscriber that sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.ever_subscribed.store(true, Ordering::Relaxed);
        self.sender.subscribe()
    }

    /// Publishes an event to every current subscriber, without waiting.
    pub fn publish(&self, event: MeshEvent) {
        tracing::debug!(?event, "mesh event");
        // An error only means nobody is listening, which is fine.
        let _ = self.sender.send(event);
    }

    /// How many subscribers are listening.
    pub fn subscriber_count(&self) -> usize {
        if !self.ever_subscribed.load(Ordering::Relaxed) {
            return 0;
        }
        self.sender.receiver_count()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> MeshEvent {
        MeshEvent::RetryScheduled {
            service: None,
            attempt: n,
            failed_endpoint: None,
            reason: FailureKind::Timeout,
            backoff: Duration::ZERO,
        }
    }

    #[test]
    fn publishing_without_subscribers_drops_the_event() {
        let bus = EventBus::new(4);
        assert_eq!(bus.subscriber_count(), 0);
        bus.publish(event(1));
        let mut late = bus.subscribe();
        assert!(
            late.try_recv().is_err(),
            "events before subscribing are not replayed"
        );
        bus.publish(event(2));
        assert_eq!(late.try_recv().unwrap(), event(2));
    }

    #[test]
    fn subscribers_are_counted_by_every_clone_and_uncounted_when_dropped() {
        let bus = EventBus::new(4);
        let clone = bus.clone();
        let first = clone.subscribe();
        let second = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 2);
        assert_eq!(clone.subscriber_count(), 2);
        drop(first);
        drop(second);
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[test]
    fn absurd_capacities_are_clamped_instead_of_panicking() {
        let bus = EventBus::new(usize::MAX);
        let mut rx = bus.subscribe();
        bus.publish(event(1));
        assert_eq!(rx.try_recv().unwrap(), event(1));
    }

    #[tokio::test]
    async fn slow_subscribers_lose_old_events_instead_of_blocking() {
        let bus = EventBus::new(2);
        let mut rx = bus.subscribe();
        for n in 0..10 {
            bus.publish(event(n));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(8))
        ));
        assert_eq!(rx.recv().await.unwrap(), event(8));
        assert_eq!(rx.recv().await.unwrap(), event(9));
    }
}
