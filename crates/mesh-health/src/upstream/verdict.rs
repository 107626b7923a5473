//! The verdict on one endpoint from its probes: Envoy's healthy and
//! unhealthy thresholds, written into the endpoint's shared state with a
//! compare-and-set.

use mesh_core::{Endpoint, EventBus, Health, MeshEvent, ServiceName};

use super::UpstreamCheckConfig;

/// One endpoint being probed, with its run of results.
pub(super) struct Tracked {
    pub(super) endpoint: Endpoint,
    pub(super) successes: u32,
    pub(super) failures: u32,
    pub(super) checked: bool,
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
    if !state.compare_and_set_health(before, after) {
        // Changed meanwhile (set draining by someone else): leave it.
        return;
    }
    tracing::info!(%service, endpoint = %t.endpoint, from = ?before, to = ?after, "upstream health changed");
    if let Some(bus) = events {
        bus.publish(MeshEvent::EndpointHealthChanged {
            service: service.clone(),
            endpoint: t.endpoint.id().clone(),
            from: before,
            to: after,
        });
    }
}
