//! The verdict on one endpoint from its probes: Envoy's healthy and
//! unhealthy thresholds, or a streamed gRPC status taken at its word,
//! written into the endpoint's shared state with a compare-and-set.

use mesh_core::{Endpoint, EventBus, Health, MeshEvent, ServiceName};

use super::watch::Follower;
use super::{Prober, UpstreamCheckConfig};

/// One endpoint being probed, with its run of results.
pub(super) struct Tracked {
    pub(super) endpoint: Endpoint,
    pub(super) successes: u32,
    pub(super) failures: u32,
    pub(super) checked: bool,
    /// Its gRPC `Watch` stream being followed, when the probe says so.
    pub(super) follower: Option<Follower>,
}

// === impl Tracked ===

impl Tracked {
    /// Whether the checker's rounds probe it now: not while its `Watch`
    /// stream judges it (nor while that stream is being opened).
    pub(super) fn polled(&self) -> bool {
        self.follower.as_ref().is_none_or(Follower::polling)
    }
}

/// Takes a streamed status at its word: `outcome` is the verdict, with no
/// threshold. Nothing is written once the checker has been dropped (its
/// `open` gate closed), so a stream cannot condemn an endpoint the checker
/// has handed back.
pub(super) fn declare(prober: &Prober, endpoint: &Endpoint, outcome: Result<(), String>) {
    let Ok(open) = prober.open.lock() else { return };
    if !*open {
        return;
    }
    let before = endpoint.state().health();
    let after = match outcome {
        Ok(()) => Health::Healthy,
        Err(error) => {
            tracing::debug!(service = %prober.service, %endpoint, %error, "upstream says it is not serving");
            Health::Unhealthy
        }
    };
    if before != after && before != Health::Draining {
        change(
            &prober.service,
            endpoint,
            before,
            after,
            prober.events.as_ref(),
        );
    }
}

/// Records one probe's `outcome` for `t` and changes its health when a
/// threshold is crossed, telling `events`.
pub(super) fn judge(
    service: &ServiceName,
    t: &mut Tracked,
    outcome: Result<(), String>,
    config: &UpstreamCheckConfig,
    events: Option<&EventBus>,
) {
    let state = t.endpoint.state();
    let before = state.health();
    let first = !t.checked;
    t.checked = true;
    let after = match outcome {
        Ok(()) => {
            t.failures = 0;
            t.successes = t.successes.saturating_add(1);
            match before {
                Health::Healthy | Health::Draining => return,
                // Never judged by us yet: one pass is enough.
                _ if first || before == Health::Unknown => Health::Healthy,
                _ if t.successes >= config.healthy_threshold => Health::Healthy,
                _ => return,
            }
        }
        Err(error) => {
            t.successes = 0;
            t.failures = t.failures.saturating_add(1);
            tracing::debug!(%service, endpoint = %t.endpoint, %error, failures = t.failures, "upstream probe failed");
            match before {
                Health::Unhealthy | Health::Draining => return,
                _ if t.failures >= config.unhealthy_threshold => Health::Unhealthy,
                _ => return,
            }
        }
    };
    change(service, &t.endpoint, before, after, events);
}

/// Moves `endpoint` from `before` to `after` unless it changed meanwhile,
/// telling `events`.
fn change(
    service: &ServiceName,
    endpoint: &Endpoint,
    before: Health,
    after: Health,
    events: Option<&EventBus>,
) {
    if !endpoint.state().compare_and_set_health(before, after) {
        // Changed meanwhile (set draining by someone else): leave it.
        return;
    }
    tracing::info!(%service, %endpoint, from = ?before, to = ?after, "upstream health changed");
    if let Some(bus) = events {
        bus.publish(MeshEvent::EndpointHealthChanged {
            service: service.clone(),
            endpoint: endpoint.id().clone(),
            from: before,
            to: after,
        });
    }
}
