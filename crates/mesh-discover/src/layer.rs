use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::catalog::Catalog;
use crate::followers::{Followers, Settings};
use crate::registry::Registry;
use crate::service::DiscoverService;

/// How long a followed service may go without a call before it is no
/// longer followed, unless [`DiscoverLayer::idle_timeout`] says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How many services one layer follows at most, unless
/// [`DiscoverLayer::max_followed`] says otherwise.
pub const DEFAULT_MAX_FOLLOWED: usize = 1024;

/// Wraps a service so that each request carries its target service's
/// current [`EndpointSet`](mesh_core::EndpointSet); see [`DiscoverService`].
#[derive(Clone, Debug)]
pub struct DiscoverLayer {
    catalog: Catalog,
    followers: Option<Arc<Followers>>,
}

// === impl DiscoverLayer ===

impl DiscoverLayer {
    /// Resolves requests against `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        DiscoverLayer {
            catalog,
            followers: None,
        }
    }

    /// Resolves requests against `catalog`, backed by `registry`: the first
    /// request for a service the catalog does not hold starts following it
    /// (see [`Catalog::follow`]) and waits up to `first_wait` for the
    /// registry's first answer. Later requests never wait on the registry.
    ///
    /// Request hosts pick the services followed, so following is bounded
    /// (see [`DiscoverLayer::idle_timeout`] and
    /// [`DiscoverLayer::max_followed`]):
    ///
    /// - a first answer with no instance (Consul's `200 []`, an NXDOMAIN,
    ///   a file that does not list the service) fails the waiting requests
    ///   with [`MeshError::UnknownService`](mesh_core::MeshError::UnknownService)
    ///   and follows nothing; once a service has had instances, an empty
    ///   answer is followed like any change;
    /// - no answer within `first_wait` fails them with
    ///   [`MeshError::DiscoveryTimeout`](mesh_core::MeshError::DiscoveryTimeout),
    ///   naming the registry ([`Registry::describe`]); when the last waiting
    ///   request gives up (timed out or dropped) before any answer, the
    ///   service is no longer followed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use mesh_discover::{Catalog, ConsulRegistry, DiscoverLayer};
    ///
    /// let consul = ConsulRegistry::builder("http://127.0.0.1:8500").build()?;
    /// let layer = DiscoverLayer::with_registry(Catalog::default(), Arc::new(consul), Duration::from_secs(2))
    ///     .idle_timeout(Duration::from_secs(300))
    ///     .max_followed(256);
    /// # let _ = layer;
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn with_registry(
        catalog: Catalog,
        registry: Arc<dyn Registry>,
        first_wait: Duration,
    ) -> Self {
        let settings = Settings {
            first_wait,
            retry_after: Duration::from_secs(1),
            max_staleness: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_followed: DEFAULT_MAX_FOLLOWED,
        };
        DiscoverLayer {
            followers: Some(Arc::new(Followers::new(
                registry,
                catalog.clone(),
                settings,
            ))),
            catalog,
        }
    }

    /// Withdraws a followed service's set once its registry has failed for
    /// longer than `limit` since its last good answer (see
    /// [`Catalog::follow_with_max_staleness`]); without it, the last good
    /// set is kept for as long as the registry fails. Applies to services
    /// followed from now on; without a registry it changes nothing.
    pub fn max_staleness(self, limit: Duration) -> Self {
        self.reconfigure(|s| s.max_staleness = Some(limit))
    }

    /// Stops following a service (and withdraws its set from the catalog)
    /// once it has had no request for `timeout` (at least 1 ms; 10 minutes
    /// by default, [`DEFAULT_IDLE_TIMEOUT`]); its next request follows it
    /// again, waiting for the registry's first answer. This is what keeps
    /// background work proportional to the services actually in use.
    /// Applies to services followed from now on; without a registry it
    /// changes nothing.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        let timeout = timeout.max(Duration::from_millis(1));
        self.reconfigure(|s| s.idle_timeout = timeout)
    }

    /// Follows at most `limit` services at once (at least 1; 1024 by
    /// default, [`DEFAULT_MAX_FOLLOWED`]). A request for one more service
    /// evicts idle services first; when none is idle it fails with
    /// [`TooManyServices`](crate::TooManyServices). Applies from now on;
    /// without a registry it changes nothing.
    pub fn max_followed(self, limit: usize) -> Self {
        let limit = limit.max(1);
        self.reconfigure(|s| s.max_followed = limit)
    }

    /// The services this layer follows now, sorted (for diagnostics and
    /// tests: each has one background task).
    pub fn followed(&self) -> Vec<mesh_core::ServiceName> {
        self.followers
            .as_ref()
            .map(|f| f.followed())
            .unwrap_or_default()
    }

    /// Stops every watch this layer started (a shutting-down client's
    /// discovery). Sets already in the catalog stay; a later request for a
    /// service starts following it again.
    pub fn stop_following(&self) {
        if let Some(followers) = &self.followers {
            followers.clear();
        }
    }

    /// A layer with changed settings. Followers are per settings, so the
    /// services followed so far are dropped (this is configuration time).
    fn reconfigure(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        if let Some(followers) = self.followers.take() {
            let mut settings = followers.settings().clone();
            change(&mut settings);
            self.followers = Some(Arc::new(Followers::new(
                Arc::clone(followers.registry()),
                self.catalog.clone(),
                settings,
            )));
        }
        self
    }
}

impl<S> Layer<S> for DiscoverLayer {
    type Service = DiscoverService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DiscoverService::with_followers(inner, self.catalog.clone(), self.followers.clone())
    }
}
