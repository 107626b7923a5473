//! The local service's health from configuration: the manager that runs
//! its checks and answers its probes.

use mesh_core::{ConfigError, EventBus};
use mesh_health::{HealthCheck, HealthCheckManager};

use crate::config::MeshConfig;

/// The local service's health manager, started, with `checks`: `None`
/// when there is neither a `[health]` section nor a check, so no probe
/// runs for nothing.
pub(crate) fn manager(
    config: &MeshConfig,
    checks: Vec<HealthCheck>,
    bus: &EventBus,
) -> Result<Option<HealthCheckManager>, ConfigError> {
    if config.health.is_none() && checks.is_empty() {
        return Ok(None);
    }
    let mut builder = HealthCheckManager::builder().events(bus.clone());
    for check in checks {
        builder = builder.check(check);
    }
    let manager = builder.build()?;
    manager.start();
    Ok(Some(manager))
}
