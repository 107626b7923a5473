use std::task::{Context, Poll};

use http::Request;
use mesh_core::ext::{CallContext, Destination};
use mesh_core::{BoxError, EndpointSet, MeshError, ServiceName};
use tower::Service;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::followers::Followers;
use crate::future::ResponseFuture;

/// Resolves each request's target service to its endpoints.
///
/// The target is the [`TargetService`](mesh_core::ext::TargetService)
/// extension when the request carries one, else the host of the URI
/// authority ([`Destination::of`]). The service's current
/// [`EndpointSet`] is noted for the layers below in the request's
/// [`CallContext`] (the retry layer attaches one to every call), else
/// inserted into its extensions; it names its service, so nothing else is
/// added.
///
/// A request with no authority, a host that is not a valid service name, or
/// a service no registry knows fails at once with a [`MeshError`] saying
/// which, without reaching the inner service. Behind a registry (see
/// [`DiscoverLayer::with_registry`](crate::DiscoverLayer::with_registry)),
/// a service not in the catalog yet is followed first, within the limits
/// described there; past them the call fails with
/// [`TooManyServices`](crate::TooManyServices).
#[derive(Clone, Debug)]
pub struct DiscoverService<S> {
    inner: S,
    catalog: Catalog,
    followers: Option<Arc<Followers>>,
}

impl<S> DiscoverService<S> {
    /// Wraps `inner`, resolving against `catalog`.
    pub fn new(inner: S, catalog: Catalog) -> Self {
        DiscoverService {
            inner,
            catalog,
            followers: None,
        }
    }

    pub(crate) fn with_followers(
        inner: S,
        catalog: Catalog,
        followers: Option<Arc<Followers>>,
    ) -> Self {
        DiscoverService {
            inner,
            catalog,
            followers,
        }
    }

    /// The catalog requests resolve against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn resolve<B>(&self, req: &Request<B>) -> Result<EndpointSet, MeshError> {
        let host = match Destination::of(req) {
            Some(Destination::Named(service)) => {
                return self.catalog.get(service.as_str()).ok_or_else(|| {
                    MeshError::UnknownService {
                        service: service.clone(),
                    }
                });
            }
            Some(Destination::Host(host)) => host,
            None => return Err(MeshError::MissingAuthority),
        };
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

/// Hands `set` to the layers below: in the request's call context when it
/// has one (no allocation), else as an extension.
pub(crate) fn note_endpoints<B>(req: &mut Request<B>, set: EndpointSet) {
    match CallContext::of(req) {
        Some(context) => context.set_endpoints(set),
        None => {
            req.extensions_mut().insert(set);
        }
    }
}

impl<S, B> Service<Request<B>> for DiscoverService<S>
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
                if let Some(followers) = &self.followers {
                    followers.touch(set.service());
                }
                // The set names its service, which is all the layers below
                // need (see `mesh_core::ext`).
                note_endpoints(&mut req, set);
                ResponseFuture::called(self.inner.call(req))
            }
            Err(MeshError::UnknownService { service }) if self.followers.is_some() => {
                // The first request for a service behind a registry: follow
                // it, and wait (bounded) for the registry's first answer.
                let Some(followers) = &self.followers else {
                    return ResponseFuture::failed(MeshError::UnknownService { service });
                };
                match followers.join(&service) {
                    Ok(waiter) => ResponseFuture::waiting(
                        self.inner.clone(),
                        self.catalog.clone(),
                        service,
                        req,
                        followers.settings().first_wait,
                        waiter,
                    ),
                    Err(full) => {
                        tracing::warn!(error = %full, "discovery refused request");
                        ResponseFuture::refused(full.into())
                    }
                }
            }
            Err(error) => {
                // Host and path only: userinfo and query may hold secrets.
                tracing::debug!(
                    %error,
                    host = req.uri().host().unwrap_or_default(),
                    path = req.uri().path(),
                    "discovery refused request"
                );
                ResponseFuture::failed(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticRegistry;
    use mesh_core::ext::TargetService;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    fn svc() -> impl Service<Request<()>, Response = String, Error = BoxError> {
        let catalog = StaticRegistry::builder()
            .service("users", ["127.0.0.1:1"])
            .service("other", ["127.0.0.1:2"])
            .build()
            .unwrap()
            .catalog();
        DiscoverService::new(
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
