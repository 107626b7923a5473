//! Canary traffic splitting: a service's calls divided between subsets of
//! its instances (by tag or metadata) by weight, changeable at run time.

use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Request;
use mesh_core::ext::{with_endpoint_set_from, AffinityKey, CallContext};
use mesh_core::{ConfigError, Endpoint, EndpointSet, ServiceName};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

/// One subset of a service's instances and its share of the calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// Its name (`v1`, `canary`): lower case letters, digits and `-`.
    pub name: String,
    /// Instances carrying this tag belong to it...
    #[serde(default)]
    pub tag: Option<String>,
    /// ...or instances whose metadata has all these entries.
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
    /// Its relative weight (95 and 5 send 5% of calls to the second).
    pub weight: u32,
}

// === impl Subset ===

impl Subset {
    /// Whether `endpoint` belongs to this subset: it has the tag and all
    /// the metadata named.
    fn matches(&self, endpoint: &Endpoint) -> bool {
        self.tag
            .as_ref()
            .is_none_or(|t| endpoint.tags().iter().any(|x| x == t))
            && self
                .meta
                .iter()
                .all(|(k, v)| endpoint.metadata().get(k) == Some(v))
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        let invalid = |reason: &str| Err(ConfigError::new(format!("{what}.{}", self.name), reason));
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("a subset name is lower case letters, digits and '-'");
        }
        if self.tag.is_none() && self.meta.is_empty() {
            return invalid("a subset selects by tag or meta");
        }
        Ok(())
    }
}

/// Checks a service's split: valid, distinct subset names, some weight,
/// and subset names (`service.subset`) that are no configured service's.
pub(crate) fn validate_split<V>(
    service: &str,
    subsets: &[Subset],
    services: &std::collections::BTreeMap<String, V>,
) -> Result<(), ConfigError> {
    let what = format!("services.{service}.split");
    let mut seen = std::collections::HashSet::new();
    for subset in subsets {
        subset.validate(&what)?;
        if !seen.insert(subset.name.as_str()) {
            return Err(ConfigError::new(
                format!("{what}.{}", subset.name),
                "two subsets have this name",
            ));
        }
        let derived = format!("{service}.{}", subset.name);
        if services.contains_key(&derived) || ServiceName::new(&derived).is_err() {
            return Err(ConfigError::new(
                format!("{what}.{}", subset.name),
                format!(
                    "the subset is reported as {derived:?}, which is taken or not a valid name"
                ),
            ));
        }
    }
    if !subsets.is_empty() && subsets.iter().all(|s| s.weight == 0) {
        return Err(ConfigError::new(
            what,
            "every weight is 0; give one a weight, or remove the split",
        ));
    }
    Ok(())
}

/// The splits in force, by service; swapped whole on a change.
#[derive(Debug, Default)]
pub(crate) struct Splits {
    table: ArcSwap<HashMap<ServiceName, Arc<Split>>>,
    /// Whether `table` has any split: most clients have none, and their
    /// calls then look nothing up.
    any: AtomicBool,
    /// Serializes writers, so that `any` always follows the last table.
    writing: Mutex<()>,
}

/// One service's split: its subsets and the sets last cut for them.
#[derive(Debug)]
struct Split {
    subsets: Vec<Subset>,
    /// Subset sets built from one snapshot of the service's set, rebuilt
    /// when discovery publishes a new one (compared by pointer); read
    /// without a lock.
    cache: ArcSwapOption<(EndpointSet, Vec<EndpointSet>)>,
}

// === impl Splits ===

impl Splits {
    /// Sets (or, with no subsets, removes) the split of `service`.
    pub(crate) fn set(&self, service: ServiceName, subsets: Vec<Subset>) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = HashMap::clone(&self.table.load());
        if subsets.is_empty() || subsets.iter().all(|s| s.weight == 0) {
            table.remove(&service);
        } else {
            let split = Split {
                subsets,
                cache: ArcSwapOption::empty(),
            };
            table.insert(service, Arc::new(split));
        }
        self.any.store(!table.is_empty(), Ordering::Release);
        self.table.store(Arc::new(table));
    }

    /// Whether any service is split.
    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The weights in force for `service`.
    pub(crate) fn get(&self, service: &ServiceName) -> Option<Vec<Subset>> {
        self.table.load().get(service).map(|s| s.subsets.clone())
    }

    /// The subset set a call to `full`'s service goes to, if it is split:
    /// drawn at random, or from the affinity key's hash so one client stays
    /// on one subset.
    fn choose(&self, full: &EndpointSet, key: Option<&str>) -> Option<EndpointSet> {
        let table = self.table.load();
        if table.is_empty() {
            return None;
        }
        let split = table.get(full.service())?;
        split.draw(&split.sets_for(full).1, key)
    }
}

// === impl Split ===

impl Split {
    /// The subsets' sets cut from `full`: the cached ones while `full` is
    /// the snapshot they were cut from, else cut afresh and cached.
    fn sets_for(&self, full: &EndpointSet) -> Arc<(EndpointSet, Vec<EndpointSet>)> {
        if let Some(cached) = self.cache.load_full().filter(|c| c.0.ptr_eq(full)) {
            return cached;
        }
        let sets = self
            .subsets
            .iter()
            .map(|subset| {
                let name = ServiceName::new(&format!("{}.{}", full.service(), subset.name))
                    .unwrap_or_else(|_| full.service().clone());
                EndpointSet::new(
                    name,
                    full.iter().filter(|e| subset.matches(e)).cloned().collect(),
                )
            })
            .collect();
        let fresh = Arc::new((full.clone(), sets));
        self.cache.store(Some(Arc::clone(&fresh)));
        fresh
    }

    /// A weighted draw among the subsets that have instances (`sets`, in
    /// the subsets' order); `None`, the whole set, when none has.
    fn draw(&self, sets: &[EndpointSet], key: Option<&str>) -> Option<EndpointSet> {
        let total: u64 = self
            .subsets
            .iter()
            .zip(sets)
            .filter(|(_, set)| !set.is_empty())
            .map(|(s, _)| u64::from(s.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut draw = draw_point(key, total);
        for (subset, set) in self.subsets.iter().zip(sets) {
            if set.is_empty() {
                continue;
            }
            let weight = u64::from(subset.weight);
            if draw < weight {
                return Some(set.clone());
            }
            draw -= weight;
        }
        None
    }
}

/// A point in `0..total`: the affinity key's hash, so one client stays on
/// one subset, else at random.
fn draw_point(key: Option<&str>, total: u64) -> u64 {
    let Some(key) = key else {
        return fastrand::u64(0..total);
    };
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % total
}

/// Between discovery and the balancer: replaces the request's set by the
/// chosen subset's when its service is split.
#[derive(Clone, Debug)]
pub(crate) struct SplitLayer(pub(crate) Arc<Splits>);

// === impl SplitLayer ===

impl<S> Layer<S> for SplitLayer {
    type Service = SplitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SplitService {
            inner,
            splits: Arc::clone(&self.0),
        }
    }
}

/// [`SplitLayer`]'s service: the request's endpoint set swapped for
/// its subset's before the balancer sees it.
#[derive(Clone, Debug)]
pub(crate) struct SplitService<S> {
    inner: S,
    splits: Arc<Splits>,
}

// === impl SplitService ===

impl<S, B> Service<Request<B>> for SplitService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !self.splits.any() {
            return self.inner.call(req);
        }
        let key = req.extensions().get::<AffinityKey>().map(|k| &*k.0);
        // The set the balancer will read (the context's, else one inserted
        // by hand), narrowed where it lies: narrowing the other would
        // leave the balancer the full set.
        let subset = with_endpoint_set_from(&req, |full, noted| {
            self.splits.choose(full, key).map(|subset| (subset, noted))
        })
        .flatten();
        match (subset, CallContext::of(&req)) {
            (Some((subset, true)), Some(context)) => context.set_endpoints(subset),
            (Some((subset, _)), _) => {
                req.extensions_mut().insert(subset);
            }
            (None, _) => {}
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// What the service below the split saw: the services of the call
    /// context's set and of the set inserted by hand.
    type Seen = (Option<String>, Option<String>);

    fn users() -> EndpointSet {
        let endpoint = |addr: &str, tag: &str| {
            Endpoint::builder(addr.parse().expect("address"))
                .tag(tag)
                .build()
        };
        EndpointSet::new(
            ServiceName::new("users").expect("name"),
            vec![endpoint("127.0.0.1:1", "v1"), endpoint("127.0.0.1:2", "v2")],
        )
    }

    /// `req` through a split sending every call of `users` to `v2`.
    async fn seen(req: Request<()>) -> Seen {
        let splits = Splits::default();
        let v2 = Subset {
            name: "v2".to_owned(),
            tag: Some("v2".to_owned()),
            meta: Default::default(),
            weight: 1,
        };
        splits.set(ServiceName::new("users").expect("name"), vec![v2]);
        let below = tower::service_fn(|req: Request<()>| async move {
            let name = |set: EndpointSet| set.service().as_str().to_owned();
            let noted = CallContext::of(&req).and_then(CallContext::endpoints);
            let by_hand = req.extensions().get::<EndpointSet>().cloned();
            Ok::<Seen, Infallible>((noted.map(name), by_hand.map(name)))
        });
        let split = SplitLayer(Arc::new(splits)).layer(below);
        split.oneshot(req).await.expect("infallible")
    }

    #[tokio::test]
    async fn the_set_narrowed_is_the_one_the_balancer_reads() {
        let narrowed = || Some("users.v2".to_owned());
        // A set inserted by hand, and no context.
        let mut req = Request::new(());
        req.extensions_mut().insert(users());
        assert_eq!(seen(req).await, (None, narrowed()));
        // A context with no set yet: the set inserted by hand.
        let mut req = Request::new(());
        CallContext::attach(&mut req);
        req.extensions_mut().insert(users());
        assert_eq!(seen(req).await, (None, narrowed()));
        // A context's set beside one inserted by hand: the context's, which
        // the balancer reads first.
        let mut req = Request::new(());
        CallContext::attach(&mut req).set_endpoints(users());
        req.extensions_mut().insert(users());
        assert_eq!(seen(req).await, (narrowed(), Some("users".to_owned())));
    }
}
