use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use mesh_core::ext::{
    with_endpoint_set, with_endpoint_set_from, AffinityKey, AvoidEndpoints, CallContext,
    SelectedEndpoint,
};
use mesh_core::{clock, BoxError, Endpoint, EndpointSet, EndpointState, MeshError, ServiceName};
use tower::Service;

use crate::body::{InFlight, TrackedBody};
use crate::future::{Call, Chosen, ResponseFuture};
use crate::slots::Slots;
use crate::strategy::{hash_key, KeySource, NoPick, PickContext, Picker};

/// Sends each request to one available endpoint of its service.
///
/// Expects the service's [`EndpointSet`] in the request's call context or
/// its extensions (put there by `mesh-discover`'s `DiscoverLayer`, or by
/// hand); without it the call fails
/// with [`MeshError::Misconfigured`]. With no available endpoint it fails
/// with [`MeshError::NoAvailableEndpoints`]. Errors from the inner service
/// come back wrapped in [`MeshError::Endpoint`], naming the endpoint.
#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
    chooser: Chooser,
}

/// What picks, shared by the service and a future waiting for capacity.
#[derive(Clone, Debug)]
pub(crate) struct Chooser {
    picker: Arc<Picker>,
    keys: Arc<[KeySource]>,
    /// Present when requests may wait for a slot (`wait_at_capacity`).
    slots: Option<Arc<Slots>>,
}

impl<S> Balance<S> {
    pub(crate) fn new(inner: S, picker: Arc<Picker>, keys: Arc<[KeySource]>) -> Self {
        let slots = picker
            .config()
            .wait_at_capacity()
            .map(|_| Arc::new(Slots::default()));
        Balance {
            inner,
            chooser: Chooser {
                picker,
                keys,
                slots,
            },
        }
    }
}

impl Chooser {
    pub(crate) fn picker(&self) -> &Picker {
        &self.picker
    }

    /// Where waiting requests learn of freed slots, when they may wait.
    pub(crate) fn slots(&self) -> Option<&Arc<Slots>> {
        self.slots.as_ref()
    }

    /// A hash of the request's affinity key, from the first source that
    /// has one.
    fn key_hash<B>(&self, req: &Request<B>) -> Option<u64> {
        self.keys.iter().find_map(|source| match source {
            KeySource::Extension => req
                .extensions()
                .get::<AffinityKey>()
                .map(|k| k.0.as_bytes())
                .filter(|k| !k.is_empty())
                .map(hash_key),
            // An empty value is no key: it would send every anonymous
            // client to one instance.
            KeySource::Header(name) => req
                .headers()
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|k| !k.is_empty())
                .map(hash_key),
            KeySource::Cookie(name) => cookie(req.headers(), name)
                .filter(|k| !k.is_empty())
                .map(hash_key),
        })
    }

    fn choose<B>(&self, req: &Request<B>, now: clock::Nanos) -> Result<Picked, MeshError> {
        let cx = PickContext {
            avoid: req.extensions().get::<AvoidEndpoints>(),
            key_hash: self.key_hash(req),
        };
        let context = CallContext::of(req);
        let pick = |set: &EndpointSet, noted: bool| match self.picker.pick(set, &cx, now) {
            Ok(e) => {
                tracing::trace!(endpoint = %e, "picked endpoint");
                Ok(Picked {
                    state: Arc::clone(e.state()),
                    authority: e.authority().clone(),
                    host: host_for(req, set),
                    named: Named::of(context.filter(|_| noted), set, e),
                })
            }
            Err(NoPick::NoneAvailable) => Err(MeshError::NoAvailableEndpoints {
                service: set.service().clone(),
                total: set.len(),
            }),
            Err(NoPick::AtCapacity { available }) => {
                Err(self.at_capacity(set.service().clone(), available))
            }
        };
        with_endpoint_set_from(req, pick).unwrap_or(Err(MeshError::Misconfigured {
            layer: "BalanceLayer",
            missing: "EndpointSet",
            hint: "place DiscoverLayer above BalanceLayer, or insert an EndpointSet into the request's extensions",
        }))
    }

    fn at_capacity(&self, service: ServiceName, available: usize) -> MeshError {
        MeshError::AtCapacity {
            service,
            available,
            limit: self
                .picker
                .config()
                .max_connections_per_instance()
                .unwrap_or(0),
        }
    }

    /// Picks an endpoint, takes a slot on it, and points `req` at it; else
    /// says why none could be taken, `req` left as it was. The request is
    /// borrowed, not passed through: each pass would copy it twice.
    pub(crate) fn dispatch<B>(&self, req: &mut Request<B>) -> Result<Call, MeshError> {
        let limit = self.picker.config().max_connections_per_instance();
        // With a connection limit, the pick and the count must agree: the
        // slot is taken atomically, and a pick that lost the race for the
        // last slot of an endpoint picks again (that endpoint is now full).
        for _ in 0..4 {
            let now = clock::now();
            let Picked {
                state,
                authority,
                host,
                named,
            } = self.choose(req, now)?;
            let in_flight = match limit {
                None => InFlight::start_at(state, now),
                Some(l) => match state.try_start_request(l) {
                    true => InFlight::adopt(state, now).freeing(self.slots.clone()),
                    false => continue,
                },
            };
            rewrite(req, authority, host);
            let chosen = named.note(req);
            return Ok(Call::new(in_flight, chosen));
        }
        let error = match with_endpoint_set(req, |set| (set.service().clone(), set.len())) {
            Some((service, total)) => self.at_capacity(service, total),
            None => MeshError::Misconfigured {
                layer: "BalanceLayer",
                missing: "EndpointSet",
                hint: "place DiscoverLayer above BalanceLayer",
            },
        };
        Err(error)
    }
}

/// What a pick gives the call: the endpoint's live state and authority,
/// the `Host` header the request needs, if any, and how the layers above
/// will know the endpoint.
struct Picked {
    state: Arc<EndpointState>,
    authority: Authority,
    host: Option<HeaderValue>,
    named: Named,
}

/// How the endpoint picked is named to the layers above.
enum Named {
    /// By its position in the set the call's context noted, where it was
    /// picked: nothing is copied (each copy of the endpoint or its service
    /// writes a count every core shares).
    Position {
        context: CallContext,
        generation: u64,
        position: usize,
    },
    /// By copies: picked in a set inserted by hand, with or without a
    /// call context.
    Copies {
        endpoint: Endpoint,
        service: ServiceName,
    },
}

impl Named {
    /// How to name `endpoint` of `set`; `context` is the call's, given
    /// only when `set` is the one it noted.
    fn of(context: Option<&CallContext>, set: &EndpointSet, endpoint: &Endpoint) -> Named {
        match (context, set.position_of(endpoint)) {
            (Some(context), Some(position)) => Named::Position {
                context: context.clone(),
                generation: set.generation(),
                position,
            },
            _ => Named::Copies {
                endpoint: endpoint.clone(),
                service: set.service().clone(),
            },
        }
    }

    /// Notes the endpoint where the layers above read it: in the call's
    /// context when it has one; without one, on the request and, through
    /// the [`Chosen`] returned, the response.
    fn note<B>(self, req: &mut Request<B>) -> Chosen {
        match self {
            Named::Position {
                context,
                generation,
                position,
            } => {
                // Not noted only if another call noted other endpoints in
                // the context since the pick (a context belongs to one
                // call): then it names no endpoint rather than a wrong one.
                let _ = context.choose_noted(generation, position);
                Chosen::InContext(context)
            }
            Named::Copies { endpoint, service } => match CallContext::of(req) {
                Some(context) => {
                    context.choose(service, endpoint);
                    Chosen::InContext(context.clone())
                }
                None => {
                    req.extensions_mut()
                        .insert(SelectedEndpoint(endpoint.clone()));
                    Chosen::Here { endpoint, service }
                }
            },
        }
    }
}

/// The `Host` header `req` needs before it is pointed at an endpoint:
/// none when it has one; else its authority, the set's own value (made
/// once, over `'static` bytes: cloning it copies a pointer) when the
/// authority is the service's name.
fn host_for<B>(req: &Request<B>, set: &EndpointSet) -> Option<HeaderValue> {
    if req.headers().contains_key(HOST) {
        return None;
    }
    let authority = req.uri().authority()?;
    match set.host() {
        Some(host) if authority.as_str() == set.service().as_str() => Some(host.clone()),
        _ => host_header(authority),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then(|| &v[1..])
        })
}

/// The `Host` header for `authority`: host[:port] only, since an
/// authority's userinfo ("user:pw@") must never travel in a header. One
/// copy of the text, sliced from the authority (no formatting).
fn host_header(authority: &http::uri::Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host_port = text.rsplit_once('@').map_or(text, |(_, after)| after);
    HeaderValue::from_str(host_port).ok()
}

/// Points `req` at the endpoint at `authority`, keeping the logical
/// authority in `Host` (`host`, from [`host_for`]). The URI is taken
/// apart rather than copied: its scheme and path move into the new one,
/// beside the endpoint's authority.
fn rewrite<B>(req: &mut Request<B>, authority: Authority, host: Option<HeaderValue>) {
    if let Some(value) = host {
        req.headers_mut().insert(HOST, value);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts.authority = Some(authority);
    parts
        .path_and_query
        .get_or_insert_with(|| http::uri::PathAndQuery::from_static("/"));
    // With a scheme, an authority and a path this cannot fail; if it
    // somehow did, the request is left with no authority, which the inner
    // client refuses, rather than sent anywhere but where it was meant.
    let uri = Uri::from_parts(parts);
    debug_assert!(uri.is_ok(), "a URI of scheme, authority and path: {uri:?}");
    *req.uri_mut() = uri.unwrap_or_default();
}

impl<S, B, RB> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.chooser.dispatch(&mut req) {
            Ok(call) => ResponseFuture::called(self.inner.call(req), call),
            Err(error @ MeshError::AtCapacity { .. }) => {
                let wait = self.chooser.picker().config().wait_at_capacity();
                match (wait, self.chooser.slots()) {
                    // Wait (bounded) for a slot, with a clone of the inner
                    // service to call once one frees.
                    (Some(max), Some(slots)) => ResponseFuture::waiting(
                        self.inner.clone(),
                        self.chooser.clone(),
                        Arc::clone(slots),
                        req,
                        max,
                    ),
                    _ => ResponseFuture::failed(error),
                }
            }
            Err(error) => {
                tracing::debug!(%error, "balancer refused request");
                ResponseFuture::failed(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BalanceLayer;
    use http_body_util::{BodyExt, Full};
    use mesh_core::Health;
    use std::convert::Infallible;
    use tower::{service_fn, Layer, ServiceExt};

    fn set() -> EndpointSet {
        EndpointSet::new(
            ServiceName::new("users").unwrap(),
            vec![
                Endpoint::builder("127.0.0.1:1".parse().unwrap()).build(),
                Endpoint::builder("127.0.0.1:2".parse().unwrap()).build(),
            ],
        )
    }

    fn request(set: &EndpointSet) -> Request<()> {
        let mut req = Request::get("http://users/a?b=c").body(()).unwrap();
        req.extensions_mut().insert(set.clone());
        req
    }

    #[tokio::test]
    async fn rewrites_the_uri_keeps_the_host_and_reports_the_choice() {
        let set = set();
        let svc = BalanceLayer::round_robin().layer(service_fn(|req: Request<()>| async move {
            let host = req.headers()[HOST].to_str().unwrap().to_owned();
            let picked = req
                .extensions()
                .get::<SelectedEndpoint>()
                .unwrap()
                .0
                .address();
            Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::from(format!(
                "{} {host} {picked}",
                req.uri()
            ))))
        }));
        let response = svc.oneshot(request(&set)).await.unwrap();
        let chosen = response
            .extensions()
            .get::<SelectedEndpoint>()
            .unwrap()
            .0
            .clone();
        assert_eq!(chosen.state().in_flight(), 1, "body not consumed yet");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"http://127.0.0.1:1/a?b=c users 127.0.0.1:1");
        assert_eq!(chosen.state().in_flight(), 0);
    }

    /// The URI each request arrives with at the endpoint's service.
    async fn rewritten(uri: &str) -> String {
        let set = set();
        let svc = BalanceLayer::round_robin().layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::from(
                req.uri().to_string(),
            )))
        }));
        let mut req = Request::get(uri).body(()).unwrap();
        req.extensions_mut().insert(set);
        let response = svc.oneshot(req).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_endpoint_replaces_the_authority_alone() {
        assert_eq!(
            rewritten("https://users/a/b?c=d&e").await,
            "https://127.0.0.1:1/a/b?c=d&e",
            "scheme, path and query kept"
        );
        assert_eq!(
            rewritten("/a?b").await,
            "http://127.0.0.1:1/a?b",
            "origin form"
        );
        assert_eq!(
            rewritten("http://users").await,
            "http://127.0.0.1:1/",
            "no path"
        );
    }

    /// The `Host` header `req` arrives with at the endpoint's service, and
    /// where its bytes are.
    async fn host_sent(req: Request<()>) -> (String, usize) {
        let svc = BalanceLayer::round_robin().layer(service_fn(|req: Request<()>| async move {
            let host = &req.headers()[HOST];
            let sent = format!(
                "{} {}",
                host.to_str().unwrap(),
                host.as_bytes().as_ptr() as usize
            );
            Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::from(sent)))
        }));
        let body = svc.oneshot(req).await.unwrap().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        let (host, at) = std::str::from_utf8(&body).unwrap().split_once(' ').unwrap();
        (host.to_owned(), at.parse().unwrap())
    }

    fn with_set(uri: &str, set: &EndpointSet) -> Request<()> {
        let mut req = Request::get(uri).body(()).unwrap();
        req.extensions_mut().insert(set.clone());
        req
    }

    #[tokio::test]
    async fn the_host_header_never_carries_userinfo() {
        let (host, _) = host_sent(with_set("http://user:pw@users:8080/", &set())).await;
        assert_eq!(host, "users:8080");
    }

    #[tokio::test]
    async fn the_host_header_is_the_authority_asked_for() {
        let set = set();
        let made_once = set.host().unwrap().as_bytes().as_ptr() as usize;
        assert_eq!(
            host_sent(with_set("http://users/", &set)).await,
            ("users".to_owned(), made_once),
            "the service's name: the set's own value, not a copy"
        );
        let (host, at) = host_sent(with_set("http://Users/", &set)).await;
        assert_eq!(host, "Users", "as the caller wrote it");
        assert_ne!(at, made_once);
        let (host, _) = host_sent(with_set("http://users:8080/", &set)).await;
        assert_eq!(host, "users:8080");
        let mut own = with_set("http://users/", &set);
        own.headers_mut()
            .insert(HOST, HeaderValue::from_static("users.example"));
        let (host, _) = host_sent(own).await;
        assert_eq!(host, "users.example", "the caller's own Host is kept");
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_no_count_behind() {
        let set = set();
        let svc = BalanceLayer::round_robin().layer(service_fn(|_req: Request<()>| async move {
            std::future::pending::<Result<Response<Full<bytes::Bytes>>, Infallible>>().await
        }));
        let future = svc.oneshot(request(&set));
        let mut future = Box::pin(future);
        assert!(futures_poll_once(&mut future).is_none());
        assert_eq!(set.endpoints()[0].state().in_flight(), 1);
        drop(future);
        assert_eq!(set.endpoints()[0].state().in_flight(), 0);
    }

    #[tokio::test]
    async fn errors_name_the_endpoint_and_unavailable_sets_fail_clearly() {
        let set = set();
        let failing = || {
            BalanceLayer::round_robin().layer(service_fn(|_req: Request<()>| async move {
                Err::<Response<Full<bytes::Bytes>>, _>(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))
            }))
        };
        let err = failing().oneshot(request(&set)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request to users endpoint 127.0.0.1:1 failed: connection refused"
        );
        assert_eq!(set.endpoints()[0].state().in_flight(), 0);

        for e in set.iter() {
            e.state().set_health(Health::Draining);
        }
        let err = failing().oneshot(request(&set)).await.unwrap_err();
        assert!(matches!(
            MeshError::find(&*err),
            Some(MeshError::NoAvailableEndpoints { total: 2, .. })
        ));

        let bare = Request::get("http://users/").body(()).unwrap();
        let err = failing().oneshot(bare).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("place DiscoverLayer above BalanceLayer"),
            "{err}"
        );
    }

    /// A balancer over a leaf that answers with the authority it was
    /// sent to, or fails when `fail`.
    fn reporting(
        fail: bool,
    ) -> impl Service<Request<()>, Response = Response<TrackedBody<Full<bytes::Bytes>>>, Error = BoxError>
    {
        BalanceLayer::round_robin().layer(service_fn(move |req: Request<()>| async move {
            if fail {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
            }
            let sent_to = req.uri().authority().unwrap().to_string();
            Ok(Response::new(Full::<bytes::Bytes>::from(sent_to)))
        }))
    }

    #[tokio::test]
    async fn the_call_context_names_the_endpoint_sent_to_whichever_way_the_set_came() {
        let set = set();
        for noted in [true, false] {
            let mut svc = reporting(false);
            for _ in 0..3 {
                let mut req = Request::get("http://users/").body(()).unwrap();
                let context = CallContext::attach(&mut req).clone();
                match noted {
                    // As discovery notes it, below a retry layer.
                    true => context.set_endpoints(set.clone()),
                    // A set inserted by hand, in a request with a context.
                    false => drop(req.extensions_mut().insert(set.clone())),
                }
                let states = || -> usize { set.iter().map(|e| Arc::strong_count(e.state())).sum() };
                let before = states();
                let response = svc.ready().await.unwrap().call(req).await.unwrap();
                assert!(response.extensions().get::<SelectedEndpoint>().is_none());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                // The context holds the choice: by position when it noted
                // the set, else as a copy of the endpoint (and its state).
                let copies = usize::from(!noted);
                assert_eq!(states(), before + copies, "noted: {noted}");
                let chosen = context.chosen().expect("named in the context");
                assert_eq!(
                    chosen.authority().as_str().as_bytes(),
                    &body[..],
                    "noted: {noted}"
                );
                let ours = set.iter().find(|e| e.id() == chosen.id()).unwrap();
                assert!(Arc::ptr_eq(ours.state(), chosen.state()));
            }
        }
        let mut req = Request::get("http://users/").body(()).unwrap();
        CallContext::attach(&mut req).set_endpoints(set.clone());
        let err = reporting(true).oneshot(req).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request to users endpoint 127.0.0.1:1 failed: connection refused"
        );
    }

    fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}

#[cfg(test)]
mod sticky_tests {
    use super::*;
    use crate::{BalanceLayer, Strategy};
    use std::convert::Infallible;
    use tower::{service_fn, Layer, ServiceExt};

    fn set() -> EndpointSet {
        EndpointSet::new(
            ServiceName::new("users").unwrap(),
            (1..=8)
                .map(|p| Endpoint::builder(([127, 0, 0, 1], p).into()).build())
                .collect(),
        )
    }

    async fn pick(layer: &BalanceLayer, set: &EndpointSet, cookie: Option<&str>) -> String {
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.uri().authority().unwrap().to_string()))
        }));
        let mut req = Request::get("http://users/").body(()).unwrap();
        if let Some(c) = cookie {
            req.headers_mut()
                .insert(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        req.extensions_mut().insert(set.clone());
        svc.oneshot(req).await.unwrap().into_body().into_inner()
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; session=abc;  b=2"),
        );
        assert_eq!(cookie(&headers, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&headers, "sess"), None);
    }

    #[tokio::test]
    async fn a_session_cookie_keeps_a_client_on_one_instance() {
        let set = set();
        let layer = BalanceLayer::new(Strategy::RoundRobin)
            .sticky_by([KeySource::Cookie("session".into())]);
        let home = pick(&layer, &set, Some("theme=dark; session=alice")).await;
        for _ in 0..50 {
            assert_eq!(pick(&layer, &set, Some("session=alice")).await, home);
        }
        let mut spread = std::collections::HashSet::new();
        for _ in 0..16 {
            spread.insert(pick(&layer, &set, None).await);
        }
        assert_eq!(spread.len(), 8, "without a cookie, round robin");
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::{BalanceConfig, BalanceLayer};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{service_fn, Layer, ServiceExt};

    /// Many callers on many threads: no endpoint ever holds more than its
    /// limit, because the pick and the count are one atomic step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_connection_limit_holds_under_concurrency() {
        let set = EndpointSet::new(
            ServiceName::new("users").unwrap(),
            (1..=3)
                .map(|p| Endpoint::builder(([127, 0, 0, 1], p).into()).build())
                .collect(),
        );
        let worst = Arc::new(AtomicU32::new(0));
        let layer = BalanceLayer::from_config(
            BalanceConfig::builder()
                .max_connections_per_instance(2)
                .build()
                .unwrap(),
        );
        let svc = {
            let worst = Arc::clone(&worst);
            layer.layer(service_fn(move |req: Request<()>| {
                let picked = req
                    .extensions()
                    .get::<SelectedEndpoint>()
                    .unwrap()
                    .0
                    .clone();
                worst.fetch_max(picked.state().in_flight(), Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    Ok::<_, std::convert::Infallible>(Response::new(()))
                }
            }))
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (svc, set) = (svc.clone(), set.clone());
            tasks.spawn(async move {
                let mut refused = 0;
                for _ in 0..200 {
                    let mut req = Request::get("http://users/").body(()).unwrap();
                    req.extensions_mut().insert(set.clone());
                    match svc.clone().oneshot(req).await {
                        Ok(_) => {}
                        Err(e) => {
                            assert!(
                                matches!(
                                    MeshError::find(&*e),
                                    Some(MeshError::AtCapacity { limit: 2, .. })
                                ),
                                "{e}"
                            );
                            refused += 1;
                        }
                    }
                }
                refused
            });
        }
        let mut refused = 0;
        while let Some(r) = tasks.join_next().await {
            refused += r.unwrap();
        }
        assert!(
            worst.load(Ordering::SeqCst) <= 2,
            "an endpoint held {}",
            worst.load(Ordering::SeqCst)
        );
        assert!(set.iter().all(|e| e.state().in_flight() == 0));
        let _ = refused;
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;
    use crate::{BalanceConfig, BalanceLayer};
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tower::{service_fn, Layer, ServiceExt};

    /// One endpoint with one slot, requests waiting up to `wait` for it,
    /// and an inner service whose first call holds the slot until
    /// `release` is sent.
    fn one_slot_held(
        wait: Duration,
    ) -> (
        EndpointSet,
        impl Service<
                Request<()>,
                Response = Response<TrackedBody<()>>,
                Error = BoxError,
                Future: Send,
            > + Clone
            + Send
            + 'static,
        oneshot::Sender<()>,
    ) {
        let set = EndpointSet::new(
            ServiceName::new("users").unwrap(),
            vec![Endpoint::builder("127.0.0.1:1".parse().unwrap()).build()],
        );
        let layer = BalanceLayer::from_config(
            BalanceConfig::builder()
                .max_connections_per_instance(1)
                .wait_at_capacity(wait)
                .build()
                .unwrap(),
        );
        let (release, held) = oneshot::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(Some(held)));
        let svc = layer.layer(service_fn(move |_req: Request<()>| {
            let held = held.lock().unwrap().take();
            async move {
                if let Some(held) = held {
                    let _ = held.await; // the first call holds its slot
                }
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        }));
        (set, svc, release)
    }

    fn request_for(set: &EndpointSet) -> Request<()> {
        let mut req = Request::get("http://users/").body(()).unwrap();
        req.extensions_mut().insert(set.clone());
        req
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_slot_then_fails_clearly_when_none_frees() {
        let (set, svc, release) = one_slot_held(Duration::from_millis(200));
        let request = || request_for(&set);
        let first = tokio::spawn(svc.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(set.endpoints()[0].state().in_flight(), 1);
        // The second waits; the first finishes 20 ms later; the second goes.
        let second = tokio::spawn(svc.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "waiting for the slot");
        release.send(()).unwrap();
        let first = first.await.unwrap().unwrap();
        drop(first);
        second.await.unwrap().expect("got the slot");

        // Now hold the slot for good: a waiter gives up after 200 ms.
        let hold = Arc::clone(set.endpoints()[0].state());
        hold.start_request();
        let started = tokio::time::Instant::now();
        let err = svc.oneshot(request()).await.unwrap_err();
        assert!(
            matches!(
                MeshError::find(&*err),
                Some(MeshError::AtCapacity { limit: 1, .. })
            ),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        hold.finish_request();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_is_woken_by_the_freed_slot_not_by_a_timer() {
        let (set, svc, release) = one_slot_held(Duration::from_secs(10));
        let request = || request_for(&set);
        let first = tokio::spawn(svc.clone().oneshot(request()));
        while set.endpoints()[0].state().in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn(svc.clone().oneshot(request()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished(), "waiting for the slot");
        // The clock is paused: any timer the waiter polled on would have
        // to advance it.
        let before = tokio::time::Instant::now();
        release.send(()).unwrap();
        drop(first.await.unwrap().unwrap());
        second.await.unwrap().expect("got the freed slot");
        assert_eq!(tokio::time::Instant::now(), before, "woken by a timer");
    }
}
