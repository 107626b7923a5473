use tower_layer::Layer;

use crate::catalog::Catalog;
use crate::service::Discover;

/// Wraps a service so that each request carries its target service's
/// current [`EndpointSet`](mesh_core::EndpointSet); see [`Discover`].
#[derive(Clone, Debug)]
pub struct DiscoverLayer {
    catalog: Catalog,
}

impl DiscoverLayer {
    /// Resolves requests against `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        DiscoverLayer { catalog }
    }
}

impl<S> Layer<S> for DiscoverLayer {
    type Service = Discover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Discover::new(inner, self.catalog.clone())
    }
}
