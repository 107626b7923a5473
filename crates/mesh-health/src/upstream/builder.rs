//! [`UpstreamHealthCheckerBuilder`]: the clients, scheme and event bus a
//! checker is given before it starts.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use http::uri::Scheme;
use mesh_core::{ConfigError, EndpointSet, EventBus, ServiceName};

use super::{run, Prober, UpstreamCheckConfig, UpstreamHealthChecker};
use crate::grpc::GrpcProbeClient;
use crate::probe::ProbeClient;

/// Sets up an [`UpstreamHealthChecker`]; made by
/// [`UpstreamHealthChecker::builder`].
pub struct UpstreamHealthCheckerBuilder<F> {
    pub(super) service: ServiceName,
    pub(super) config: UpstreamCheckConfig,
    pub(super) source: F,
    pub(super) events: Option<EventBus>,
    pub(super) client: Option<(ProbeClient, Scheme)>,
    pub(super) grpc_client: Option<(GrpcProbeClient, Scheme)>,
}

// === impl UpstreamHealthCheckerBuilder ===

impl<F> UpstreamHealthCheckerBuilder<F>
where
    F: Fn() -> Option<EndpointSet> + Send + Sync + 'static,
{
    /// Sends HTTP probes through `client`, to
    /// `<scheme>://<ip>:<port><path>` (`http` or `https`). Without it,
    /// probes use a plain HTTP client of their own and the `http` scheme.
    ///
    /// Each probe request carries the extensions
    /// [`TargetService`](mesh_core::ext::TargetService) (this service) and
    /// [`SelectedEndpoint`](mesh_core::ext::SelectedEndpoint) (the
    /// endpoint probed), so the client can pick the peer identity it
    /// expects. TCP probes only connect: they send no byte and use no
    /// client.
    pub fn client(mut self, client: ProbeClient, scheme: Scheme) -> Self {
        self.client = Some((client, scheme));
        self
    }

    /// Sends gRPC health probes through `client`, to
    /// `<scheme>://<ip>:<port>/grpc.health.v1.Health/...` (`http` or
    /// `https`), with the same extensions as HTTP probes. Without it, they
    /// use an HTTP/2 cleartext client of their own
    /// ([`GrpcProbeClient::plaintext`]) and the `http` scheme.
    pub fn grpc_client(mut self, client: GrpcProbeClient, scheme: Scheme) -> Self {
        self.grpc_client = Some((client, scheme));
        self
    }

    /// Publishes `EndpointHealthChanged` on `bus`.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }

    /// Validates the configuration and the schemes, and starts probing
    /// (needs a tokio runtime). Stops when the checker is dropped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] from [`UpstreamCheckConfig::validate`], or
    /// `health.upstream.scheme` for a scheme other than `http` or `https`.
    pub fn spawn(self) -> Result<UpstreamHealthChecker, ConfigError> {
        self.config.validate()?;
        let (client, scheme) = self
            .client
            .unwrap_or_else(|| (ProbeClient::plaintext(), Scheme::HTTP));
        let (grpc_client, grpc_scheme) = self
            .grpc_client
            .unwrap_or_else(|| (GrpcProbeClient::plaintext(), Scheme::HTTP));
        for scheme in [&scheme, &grpc_scheme] {
            if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
                return Err(ConfigError::new(
                    "health.upstream.scheme",
                    format!("{scheme:?} is neither http nor https"),
                ));
            }
        }
        let tracked = Arc::new(AtomicUsize::new(0));
        let judged = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Mutex::new(true));
        let task = tokio::spawn(run(
            Prober {
                service: self.service,
                config: self.config,
                client,
                scheme,
                grpc_client,
                grpc_scheme,
                events: self.events,
                open: Arc::clone(&open),
            },
            self.source,
            Arc::clone(&tracked),
            Arc::clone(&judged),
        ));
        Ok(UpstreamHealthChecker {
            task,
            tracked,
            judged,
            open,
        })
    }
}

impl<F> std::fmt::Debug for UpstreamHealthCheckerBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamHealthCheckerBuilder")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("scheme", &self.client.as_ref().map(|(_, scheme)| scheme))
            .field(
                "grpc_scheme",
                &self.grpc_client.as_ref().map(|(_, scheme)| scheme),
            )
            .finish_non_exhaustive()
    }
}
