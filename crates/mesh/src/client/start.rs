//! `MeshClient::start`: the wiring parts built from the configuration in
//! order, then the local service registered.

use std::sync::{Arc, Mutex};

use mesh_core::{ConfigError, EventBus, ServiceName};

use super::builder::FromCode;
use super::error::StartError;
use super::lifecycle::Calls;
use super::{Inner, MeshClient};
use crate::config::MeshConfig;
use crate::services::ServiceStates;
use crate::wiring::discovery::Discovery;
use crate::wiring::routes::{self, RouteParts, Routes};
use crate::wiring::{health, transport};

// === impl MeshClient ===

impl MeshClient {
    /// Validates `config`, builds each part (discovery, health, splits,
    /// transports, routes), then registers with Consul when configured.
    pub(super) async fn start(
        config: MeshConfig,
        code: FromCode,
    ) -> Result<MeshClient, StartError> {
        config.validate()?;
        let name = ServiceName::new(&config.service.name)
            .map_err(|e| ConfigError::new("service.name", e))?;
        let bus = EventBus::new(config.event_capacity);
        let identities = config.identities()?;
        let discovery = Discovery::from_config(&config, &bus)?;
        let fallbacks = crate::fallback::coded(&config, code.fallbacks)?;
        let health = health::manager(&config, code.checks, &bus)?;
        let splits = routes::splits(&config);
        let tls = transport::credentials(&config, &bus)?;
        let transports =
            transport::transports(&config, tls.as_ref(), identities, &discovery.catalog);
        let parts = RouteParts {
            config: &config,
            discover: &discovery.layer,
            splits: &splits,
            bus: &bus,
        };
        let routes = Routes::new(&parts, &transports)?;
        name_routes(&routes);
        let client = MeshClient {
            inner: Arc::new(Inner {
                name,
                bus,
                discovery,
                splits,
                routes,
                services: ServiceStates::default(),
                transports,
                calls: Calls::default(),
                call_metrics: Default::default(),
                health,
                fallbacks,
                registered: Mutex::new(None),
                tls,
                config,
            }),
        };
        client.register().await?;
        Ok(client)
    }
}

/// Names each route in the spans of its calls (`mesh.route`) as its
/// Prometheus metrics label it (`*` for the shared default layers, else the
/// service's name: both come from [`Routes::all`]), with its per-method
/// policies to name the rule a call matched (`mesh.method_policy`).
fn name_routes(routes: &Routes) {
    for (name, route) in routes.all() {
        let policies = route
            .policies
            .map(|p| p as Arc<dyn mesh_retry::MethodPolicyNames>);
        route.retry.name_route(&name, policies);
    }
}
