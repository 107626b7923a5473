use std::task::{Context, Poll};

use http::Request;
use mesh_core::ext::TargetService;
use mesh_core::{BoxError, EndpointSet, MeshError, ServiceName};
use tower::Service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::follow::Follow;
use crate::future::ResponseFuture;
use crate::registry::Registry;

/// Resolves each request's target service to its endpoints.
///
/// The target is the [`TargetService`] extension when the request carries
/// one, else the host of the URI authority. The service's current
/// [`EndpointSet`] is inserted into the request's extensions for the
/// layers below; it names its service, so nothing else is inserted.
///
/// A request with no authority, a host that is not a valid service name, or
/// a service no registry knows fails at once with a [`MeshError`] saying
/// which, without reaching the inner service.
#[derive(Clone, Debug)]
pub struct Discover<S> {
    inner: S,
    catalog: Catalog,
    source: Option<Arc<Source>>,
}

/// The most services one layer follows from its registry.
const MAX_FOLLOWED: usize = 1024;

/// A registry behind the catalog: services not in the catalog yet are
/// followed from it on their first request.
pub(crate) struct Source {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) first_wait: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) max_staleness: Option<Duration>,
    pub(crate) follows: Mutex<HashMap<ServiceName, Follow>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("first_wait", &self.first_wait)
            .finish_non_exhaustive()
    }
}

impl<S> Discover<S> {
    /// Wraps `inner`, resolving against `catalog`.
    pub fn new(inner: S, catalog: Catalog) -> Self {
        Discover {
            inner,
            catalog,
            source: None,
        }
    }

    pub(crate) fn with_source(inner: S, catalog: Catalog, source: Option<Arc<Source>>) -> Self {
        Discover {
            inner,
            catalog,
            source,
        }
    }

    /// The catalog requests resolve against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn resolve<B>(&self, req: &Request<B>) -> Result<EndpointSet, MeshError> {
        if let Some(TargetService(service)) = req.extensions().get::<TargetService>() {
            return self
                .catalog
                .get(service.as_str())
                .ok_or_else(|| MeshError::UnknownService {
                    service: service.clone(),
                });
        }
        let host = req.uri().host().ok_or(MeshError::MissingAuthority)?;
        if let Some(set) = self.catalog.get(host) {
            return Ok(set);
        }
        // Not found: build the name only now, to tell a malformed host from
        // an unknown one.
        match ServiceName::new(host) {
            Ok(service) => Err(MeshError::UnknownService { service }),
            Err(source) => Err(MeshError::InvalidAuthority {
                authority: host.to_owned(),
                source,
            }),
        }
    }
}

impl<S, B> Service<Request<B>> for Discover<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.resolve(&req) {
            Ok(set) => {
                // One insert: the set names its service, which is all the
                // layers below need (see `mesh_core::ext`).
                req.extensions_mut().insert(set);
                ResponseFuture::called(self.inner.call(req))
            }
            Err(MeshError::UnknownService { service }) if self.source.is_some() => {
                // The first request for a service behind a registry: follow
                // it, and wait (bounded) for the registry's first answer.
                let Some(source) = &self.source else {
                    return ResponseFuture::failed(MeshError::UnknownService { service });
                };
                if let Ok(mut follows) = source.follows.lock() {
                    // Hosts come from requests: bound how many services a
                    // stream of typos can make the layer follow.
                    if follows.len() >= MAX_FOLLOWED && !follows.contains_key(&service) {
                        return ResponseFuture::failed(MeshError::UnknownService { service });
                    }
                    follows.entry(service.clone()).or_insert_with(|| {
                        tracing::info!(%service, "following a new service");
                        match source.max_staleness {
                            None => self.catalog.follow(
                                Arc::clone(&source.registry),
                                service.clone(),
                                source.retry_after,
                            ),
                            Some(limit) => self.catalog.follow_with_max_staleness(
                                Arc::clone(&source.registry),
                                service.clone(),
                                source.retry_after,
                                limit,
                            ),
                        }
                    });
                }
                ResponseFuture::waiting(
                    self.inner.clone(),
                    self.catalog.clone(),
                    service,
                    req,
                    source.first_wait,
                    Some(Arc::clone(source)),
                )
            }
            Err(error) => {
                tracing::debug!(%error, uri = %req.uri(), "discovery refused request");
                ResponseFuture::failed(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticRegistry;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    fn svc() -> impl Service<Request<()>, Response = String, Error = BoxError> {
        let catalog = StaticRegistry::builder()
            .service("users", ["127.0.0.1:1"])
            .service("other", ["127.0.0.1:2"])
            .build()
            .unwrap()
            .catalog();
        Discover::new(
            service_fn(|req: Request<()>| async move {
                let set = req.extensions().get::<EndpointSet>().unwrap();
                Ok::<_, Infallible>(format!(
                    "{} {}",
                    set.service(),
                    set.endpoints()[0].address()
                ))
            }),
            catalog,
        )
    }

    async fn send(req: Request<()>) -> Result<String, BoxError> {
        svc().oneshot(req).await
    }

    #[tokio::test]
    async fn resolves_the_authority_host() {
        let req = Request::get("http://Users:8080/x").body(()).unwrap();
        assert_eq!(send(req).await.unwrap(), "users 127.0.0.1:1");
    }

    #[tokio::test]
    async fn an_explicit_target_wins_over_the_authority() {
        let mut req = Request::get("http://users/x").body(()).unwrap();
        req.extensions_mut()
            .insert(TargetService(ServiceName::new("other").unwrap()));
        assert_eq!(send(req).await.unwrap(), "other 127.0.0.1:2");
    }

    #[tokio::test]
    async fn unknown_services_are_named_in_the_error() {
        let err = send(Request::get("http://billing/x").body(()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(
            MeshError::find(&*err),
            Some(MeshError::UnknownService { .. })
        ));
        assert!(err.to_string().contains("\"billing\""), "{err}");
    }

    #[tokio::test]
    async fn requests_without_authority_are_refused() {
        let err = send(Request::get("/x").body(()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(
            MeshError::find(&*err),
            Some(MeshError::MissingAuthority)
        ));
    }

    #[tokio::test]
    async fn malformed_hosts_are_told_apart_from_unknown_ones() {
        let err = send(Request::get("http://a~b/x").body(()).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                MeshError::find(&*err),
                Some(MeshError::InvalidAuthority { .. })
            ),
            "{err}"
        );
    }
}
