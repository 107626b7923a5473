use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_layer::Layer;

use crate::catalog::Catalog;
use crate::registry::Registry;
use crate::service::{Discover, Source};

/// Wraps a service so that each request carries its target service's
/// current [`EndpointSet`](mesh_core::EndpointSet); see [`Discover`].
#[derive(Clone, Debug)]
pub struct DiscoverLayer {
    catalog: Catalog,
    source: Option<Arc<Source>>,
}

impl DiscoverLayer {
    /// Resolves requests against `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        DiscoverLayer {
            catalog,
            source: None,
        }
    }

    /// Resolves requests against `catalog`, backed by `registry`: the first
    /// request for a service the catalog does not hold starts following it
    /// (see [`Catalog::follow`]) and waits up to `first_wait` for the
    /// registry's first answer, then fails with
    /// [`mesh_core::MeshError::DiscoveryTimeout`]. Later requests never
    /// wait on the registry.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use mesh_discover::{Catalog, ConsulRegistry, DiscoverLayer};
    ///
    /// let consul = ConsulRegistry::builder("http://127.0.0.1:8500").build()?;
    /// let layer = DiscoverLayer::with_registry(Catalog::default(), Arc::new(consul), Duration::from_secs(2));
    /// # let _ = layer;
    /// # Ok::<(), mesh_core::MeshError>(())
    /// ```
    pub fn with_registry(
        catalog: Catalog,
        registry: Arc<dyn Registry>,
        first_wait: Duration,
    ) -> Self {
        DiscoverLayer {
            catalog,
            source: Some(Arc::new(Source {
                registry,
                first_wait,
                retry_after: Duration::from_secs(1),
                max_staleness: None,
                follows: Mutex::new(Default::default()),
            })),
        }
    }
}

impl DiscoverLayer {
    /// Withdraws a followed service's set once its registry has failed for
    /// longer than `limit` since its last good answer (see
    /// [`Catalog::follow_with_max_staleness`]); without it, the last good
    /// set is kept for as long as the registry fails. Applies to services
    /// followed from now on; without a registry it changes nothing.
    pub fn max_staleness(mut self, limit: Duration) -> Self {
        if let Some(source) = self.source.take() {
            self.source = Some(Arc::new(Source {
                registry: Arc::clone(&source.registry),
                first_wait: source.first_wait,
                retry_after: source.retry_after,
                max_staleness: Some(limit),
                follows: Mutex::new(Default::default()),
            }));
        }
        self
    }
}

impl DiscoverLayer {
    /// Stops every watch this layer started (a shutting-down client's
    /// discovery). Sets already in the catalog stay; a later request for a
    /// service starts following it again.
    pub fn stop_following(&self) {
        if let Some(source) = &self.source {
            if let Ok(mut follows) = source.follows.lock() {
                follows.clear();
            }
        }
    }
}

impl<S> Layer<S> for DiscoverLayer {
    type Service = Discover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Discover::with_source(inner, self.catalog.clone(), self.source.clone())
    }
}
