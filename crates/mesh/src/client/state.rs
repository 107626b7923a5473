//! What the client keeps per destination service, made on the service's
//! first call: its limits, its fallback and its upstream health
//! checker (see [`crate::services`] for how the map stays bounded).

use std::sync::Arc;

use mesh_core::{MeshError, ServiceName};
use mesh_health::UpstreamHealthChecker;

use super::MeshClient;
use crate::fallback::Fallback;
use crate::limits::Limits;
use crate::services::ServiceState;

// === impl MeshClient ===

impl MeshClient {
    /// What the client keeps for `service`, made on its first call.
    pub(super) fn service_state(
        &self,
        service: &ServiceName,
    ) -> Result<Arc<ServiceState>, MeshError> {
        self.inner.services.get_or_insert(
            service,
            |name| self.knows(name),
            || self.new_state(service),
        )
    }

    /// A fresh state for `service`, from its settings.
    fn new_state(&self, service: &ServiceName) -> ServiceState {
        let config = &self.inner.config;
        ServiceState {
            limits: config.limits_for(service.as_str()).map(Limits::new),
            queue_deadline: config
                .limits_for(service.as_str())
                .filter(|l| l.max_wait.is_some())
                .and_then(|_| config.retry_for(service.as_str()).ok()?.deadline()),
            replay_buffer: config.replay_buffer_for(service.as_str()),
            fallback: Fallback::new(
                config
                    .services
                    .get(service.as_str())
                    .and_then(|o| o.fallback.as_ref()),
                self.inner.fallbacks.get(service).cloned(),
            ),
            ..ServiceState::new(service.clone())
        }
    }

    /// Whether the configuration or discovery knows `service`.
    pub(super) fn knows(&self, service: &ServiceName) -> bool {
        self.inner.config.services.contains_key(service.as_str())
            || self.inner.discovery.catalog.get(service.as_str()).is_some()
    }

    /// Starts `service`'s upstream checker once discovery knows it.
    pub(super) fn check_upstream(&self, service: &ServiceName, state: &ServiceState) {
        let catalog = &self.inner.discovery.catalog;
        if state.checker.get().is_some() || catalog.get(service.as_str()).is_none() {
            return;
        }
        state.checker.get_or_init(|| self.upstream_checker(service));
    }

    /// `service`'s upstream checker, spawned, when `[upstream_health]` is
    /// configured; a failure to start one is logged, never fails a call.
    fn upstream_checker(&self, service: &ServiceName) -> Option<UpstreamHealthChecker> {
        let config = self.inner.config.upstream_health.as_ref()?;
        let catalog = self.inner.discovery.catalog.clone();
        let name = service.clone();
        let mut builder =
            UpstreamHealthChecker::builder(service.clone(), config.clone(), move || {
                catalog.get(name.as_str())
            })
            .events(self.inner.bus.clone());
        let plaintext =
            (self.inner.config.services.get(service.as_str())).is_some_and(|o| o.plaintext);
        let transports = &self.inner.transports;
        let clients = transports
            .probe_client(service, plaintext)
            .and_then(|http| Ok((http, transports.grpc_probe_client(service, plaintext)?)));
        match clients {
            Ok((http, grpc)) => {
                if let Some(client) = http {
                    builder = builder.client(client, http::uri::Scheme::HTTPS);
                }
                if let Some(client) = grpc {
                    builder = builder.grpc_client(client, http::uri::Scheme::HTTPS);
                }
            }
            Err(error) => {
                // Never probe in plaintext what is called over mutual TLS.
                tracing::warn!(%service, %error, "upstream health checks not started");
                return None;
            }
        }
        builder
            .spawn()
            .map_err(|error| tracing::warn!(%service, %error, "upstream health checks not started"))
            .ok()
    }
}
