//! Picking strategies, with no tower in them.
//!
//! A [`Picker`] chooses one endpoint of an [`EndpointSet`] for a request.
//! Every strategy sees the same candidates: endpoints that are available
//! (healthy or unchecked, not ejected) and not on the request's avoid list;
//! when that leaves none, the available ones, avoid list or not.
//!
//! Tables a strategy needs (the smooth weighted sequence, the Maglev table)
//! are computed once per endpoint-set snapshot and kept beside it; a new
//! snapshot from discovery gets new tables on its first pick.

mod ring;
mod swrr;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use mesh_core::clock::Nanos;
use mesh_core::ext::AvoidEndpoints;
use mesh_core::{Endpoint, EndpointSet, ServiceName};

use crate::round_robin::RoundRobin;
use ring::Ring;

/// How the balancer chooses among candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Each candidate in turn.
    RoundRobin,
    /// Each candidate in proportion to its weight, spread out (nginx's
    /// smooth weighted round robin).
    WeightedRoundRobin,
    /// A uniformly random candidate.
    Random,
    /// The candidate with the fewest requests in flight (relative to its
    /// weight), ties broken at random.
    LeastConnections,
    /// The candidate with the lowest expected wait: latency estimate x
    /// (in flight + 1), relative to its weight (as linkerd and Finagle).
    LeastResponseTime,
    /// The better of two random candidates by that same cost.
    PowerOfTwoChoices,
    /// The candidate a hash of the request's key maps to (ring hash): the
    /// design document's IP hash and client affinity. Requests without a
    /// key go round robin.
    ConsistentHash,
}

/// Where a request's affinity key comes from, tried in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The [`mesh_core::ext::AffinityKey`] extension (the design document's
    /// `clientId`).
    Extension,
    /// A request header, such as `x-client-id`.
    Header(HeaderName),
    /// A cookie, such as `session`.
    Cookie(String),
}

/// What a pick knows about the request.
#[derive(Debug, Default)]
pub struct PickContext<'a> {
    /// Endpoints that failed earlier attempts.
    pub avoid: Option<&'a AvoidEndpoints>,
    /// A hash of the request's affinity key, if it has one.
    pub key_hash: Option<u64>,
}

/// Hashes an affinity key the same way in every process, so that clients
/// agree on where a key goes.
pub fn hash_key(key: &[u8]) -> u64 {
    ring::hash(0x6b65_7973, key)
}

/// Tables kept per endpoint-set snapshot.
#[derive(Debug)]
struct Memo {
    set: EndpointSet,
    swrr: Vec<u32>,
    cursor: AtomicUsize,
    ring: Option<Ring>,
}

/// Chooses endpoints for one balancer layer (shared by its clones).
#[derive(Debug)]
pub struct Picker {
    strategy: Strategy,
    sticky: bool,
    unknown_latency: Duration,
    rr: RoundRobin,
    memos: ArcSwap<HashMap<ServiceName, Arc<Memo>>>,
}

impl Picker {
    /// A picker for `strategy`; `sticky` sends requests that carry a key
    /// by consistent hashing whatever the strategy.
    pub fn new(strategy: Strategy, sticky: bool) -> Self {
        Picker {
            strategy,
            sticky,
            // An endpoint with no sample yet is assumed this fast: not 0,
            // which would send it everything until its first answer.
            unknown_latency: Duration::from_millis(10),
            rr: RoundRobin::new(),
            memos: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// Picks an endpoint of `set` at `now`, or `None` if none is available.
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        cx: &PickContext<'_>,
        now: Nanos,
    ) -> Option<&'a Endpoint> {
        let avoid = cx.avoid.filter(|a| !a.is_empty());
        let preferred = |e: &Endpoint| {
            e.state().is_available(now) && !avoid.is_some_and(|a| a.contains(e.id()))
        };
        let available = |e: &Endpoint| e.state().is_available(now);
        if let (Some(hash), true) = (
            cx.key_hash,
            self.sticky || self.strategy == Strategy::ConsistentHash,
        ) {
            return self
                .by_hash(set, hash, &preferred)
                .or_else(|| self.by_hash(set, hash, &available));
        }
        if matches!(
            self.strategy,
            Strategy::RoundRobin | Strategy::ConsistentHash
        ) {
            return self.rr.pick(set, avoid, now);
        }
        self.pick_with(set, &preferred)
            .or_else(|| avoid.and_then(|_| self.pick_with(set, &available)))
    }

    fn pick_with<'a>(
        &self,
        set: &'a EndpointSet,
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let endpoints = set.endpoints();
        match self.strategy {
            Strategy::RoundRobin | Strategy::ConsistentHash => uniform(endpoints, ok),
            Strategy::Random => random(endpoints, ok),
            Strategy::WeightedRoundRobin => self.weighted(set, ok),
            Strategy::LeastConnections => least_by(endpoints, ok, |e| {
                u128::from(e.state().in_flight()) * 1_000_000 / u128::from(e.weight().get())
            }),
            Strategy::LeastResponseTime => least_by(endpoints, ok, |e| self.cost(e)),
            Strategy::PowerOfTwoChoices => self.two_choices(endpoints, ok),
        }
    }

    /// Expected wait at `e`, scaled to compare across weights: latency x
    /// (in flight + 1) / weight, in nanoseconds x 1000.
    fn cost(&self, e: &Endpoint) -> u128 {
        let latency = e
            .state()
            .latency()
            .unwrap_or(self.unknown_latency)
            .as_nanos()
            .max(1);
        latency * (u128::from(e.state().in_flight()) + 1) * 1000 / u128::from(e.weight().get())
    }

    fn two_choices<'a>(
        &self,
        endpoints: &'a [Endpoint],
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let n = endpoints.len();
        let draw = || {
            // A few random draws find a candidate at once unless most
            // endpoints are out; then fall back to a uniform scan.
            (0..4)
                .map(|_| &endpoints[fastrand::usize(..n)])
                .find(|e| ok(e))
                .or_else(|| uniform(endpoints, ok))
        };
        if n == 0 {
            return None;
        }
        let a = draw()?;
        let b = draw()?;
        Some(if self.cost(b) < self.cost(a) { b } else { a })
    }

    fn memo(&self, set: &EndpointSet) -> Arc<Memo> {
        if let Some(m) = self.memos.load().get(set.service()) {
            if m.set.ptr_eq(set) {
                return Arc::clone(m);
            }
        }
        let weights: Vec<u32> = set.iter().map(|e| e.weight().get()).collect();
        let memo = Arc::new(Memo {
            set: set.clone(),
            swrr: if self.strategy == Strategy::WeightedRoundRobin {
                swrr::sequence(&weights)
            } else {
                Vec::new()
            },
            cursor: AtomicUsize::new(0),
            ring: (self.sticky || self.strategy == Strategy::ConsistentHash)
                .then(|| Ring::new(set.endpoints())),
        });
        self.memos.rcu(|memos| {
            let mut memos = HashMap::clone(memos);
            memos.insert(set.service().clone(), Arc::clone(&memo));
            Arc::new(memos)
        });
        memo
    }

    fn weighted<'a>(
        &self,
        set: &'a EndpointSet,
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let memo = self.memo(set);
        let len = memo.swrr.len();
        if len == 0 {
            return None;
        }
        let turn = memo.cursor.fetch_add(1, Ordering::Relaxed) % len;
        let endpoints = set.endpoints();
        match endpoints.get(memo.swrr[turn] as usize) {
            Some(e) if ok(e) => Some(e),
            // The turn of an endpoint that is out goes to a candidate drawn
            // by weight, so its share spreads over the others in their
            // proportions (stepping to the next turn instead would hand it
            // all to whichever endpoint follows it in the cycle).
            _ => weighted_random(endpoints, ok),
        }
    }

    fn by_hash<'a>(
        &self,
        set: &'a EndpointSet,
        hash: u64,
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let memo = self.memo(set);
        let ring = memo.ring.as_ref()?;
        let start = ring.position(hash)?;
        // The key's own endpoint if it can serve, else the next points'
        // around the ring: a stable second choice (the endpoint that would
        // inherit the key), and the key moves back when the first recovers.
        (0..ring.len())
            .filter_map(|k| ring.at(start + k))
            .filter_map(|i| set.endpoints().get(i))
            .find(|e| ok(e))
    }
}

/// A candidate drawn with probability proportional to its weight.
fn weighted_random<'a>(
    endpoints: &'a [Endpoint],
    ok: &dyn Fn(&Endpoint) -> bool,
) -> Option<&'a Endpoint> {
    let total: u64 = endpoints
        .iter()
        .filter(|e| ok(e))
        .map(|e| u64::from(e.weight().get()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(..total);
    endpoints.iter().filter(|e| ok(e)).find(|e| {
        let w = u64::from(e.weight().get());
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

/// A uniformly random candidate, by counting (allocation-free).
fn uniform<'a>(endpoints: &'a [Endpoint], ok: &dyn Fn(&Endpoint) -> bool) -> Option<&'a Endpoint> {
    let count = endpoints.iter().filter(|e| ok(e)).count();
    if count == 0 {
        return None;
    }
    endpoints
        .iter()
        .filter(|e| ok(e))
        .nth(fastrand::usize(..count))
}

fn random<'a>(endpoints: &'a [Endpoint], ok: &dyn Fn(&Endpoint) -> bool) -> Option<&'a Endpoint> {
    if endpoints.is_empty() {
        return None;
    }
    // Rejection sampling stays uniform over candidates and is O(1) while
    // most endpoints are up; the scan covers the rest.
    (0..4)
        .map(|_| &endpoints[fastrand::usize(..endpoints.len())])
        .find(|e| ok(e))
        .or_else(|| uniform(endpoints, ok))
}

/// The candidate with the least `cost`, ties broken uniformly at random.
fn least_by<'a>(
    endpoints: &'a [Endpoint],
    ok: &dyn Fn(&Endpoint) -> bool,
    cost: impl Fn(&Endpoint) -> u128,
) -> Option<&'a Endpoint> {
    let mut best: Option<(&Endpoint, u128)> = None;
    let mut ties = 0u32;
    for e in endpoints.iter().filter(|e| ok(e)) {
        let c = cost(e);
        match best {
            Some((_, b)) if c > b => {}
            Some((_, b)) if c == b => {
                ties += 1;
                if fastrand::u32(..=ties) == 0 {
                    best = Some((e, c));
                }
            }
            _ => {
                best = Some((e, c));
                ties = 0;
            }
        }
    }
    best.map(|(e, _)| e)
}
