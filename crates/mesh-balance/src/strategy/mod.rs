//! Picking strategies, with no tower in them.
//!
//! A [`Picker`] chooses one endpoint of an [`EndpointSet`] for a request.
//! Every strategy sees the same candidates: endpoints that are available
//! (healthy or unchecked, not ejected) and not on the request's avoid list;
//! when that leaves none, the available ones, avoid list or not.
//!
//! Tables a strategy needs (the smooth weighted sequence, the hash ring)
//! are computed once per endpoint-set snapshot and kept beside it; a new
//! snapshot from discovery gets new tables on its first pick.

mod least;
mod ring;
mod swrr;
#[cfg(test)]
mod tests;
mod weighted;

use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use mesh_core::clock::Nanos;
use mesh_core::ext::AvoidEndpoints;
use mesh_core::{Endpoint, EndpointId, EndpointSet, EventBus, MeshEvent, ServiceName};

use crate::config::BalanceConfig;
use crate::round_robin::Turns;
use least::Pool;
use ring::Ring;
use weighted::Cumulative;

/// How the balancer chooses among candidates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// weight), ties broken at random. Over more than 16 candidates, the
    /// best of 4 drawn at random (as Envoy's least request): O(1) per
    /// pick at any size.
    LeastConnections,
    /// The candidate with the lowest expected wait: latency estimate x
    /// (in flight + 1), relative to its weight (as linkerd and Finagle).
    /// Over more than 16 candidates, the best of 4 drawn at random.
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

/// Why no endpoint could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPick {
    /// No endpoint is available.
    NoneAvailable,
    /// Every available endpoint is at its connection limit.
    AtCapacity {
        /// How many were available.
        available: usize,
    },
}

/// How often the share of available endpoints is recounted, for the panic
/// threshold and for events (a count is O(n), so not per pick).
const RECOUNT: Duration = Duration::from_millis(100);

/// Tables and counts kept per endpoint-set snapshot.
#[derive(Debug)]
struct Memo {
    set: EndpointSet,
    swrr: Vec<u32>,
    /// Running weight totals, for draws by weight (random and weighted
    /// round robin strategies only).
    cumulative: Cumulative,
    cursor: AtomicUsize,
    /// The service's round-robin rotation, carried over from the previous
    /// snapshot's memo: found with the memo, in the same lookup.
    turns: Arc<Turns>,
    ring: Option<Ring>,
    /// When availability was last counted (clock nanos), and the result.
    counted_at: AtomicU64,
    available: AtomicUsize,
    panic: AtomicBool,
    uniform_weights: bool,
}

/// One instance in a [`ServiceMetrics`] snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceMetrics {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its address.
    pub address: std::net::SocketAddr,
    /// Requests ever dispatched to it.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Its latency estimate, if measured.
    pub latency: Option<Duration>,
    /// Its share of this service's requests so far (0 to 1).
    pub share: f64,
    /// Whether it may take a request now.
    pub available: bool,
}

/// A balancer's view of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceMetrics {
    /// The service.
    pub service: ServiceName,
    /// Whether the balancer is in panic mode for it.
    pub panic: bool,
    /// Its instances, in set order.
    pub instances: Vec<InstanceMetrics>,
}

/// Chooses endpoints for one balancer layer (shared by its clones).
#[derive(Debug)]
pub struct Picker {
    config: BalanceConfig,
    events: EventBus,
    memos: ArcSwap<HashMap<ServiceName, Arc<Memo>>>,
}

impl Picker {
    /// A picker for `config`, publishing availability changes on `events`.
    pub fn new(config: BalanceConfig, events: EventBus) -> Self {
        Picker {
            config,
            events,
            memos: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    fn strategy(&self) -> &Strategy {
        self.config.strategy()
    }

    fn hashes(&self) -> bool {
        !self.config.sticky().is_empty() || *self.strategy() == Strategy::ConsistentHash
    }

    /// Picks an endpoint of `set` at `now`.
    ///
    /// # Errors
    ///
    /// [`NoPick`] says why none could be picked.
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        cx: &PickContext<'_>,
        now: Nanos,
    ) -> Result<&'a Endpoint, NoPick> {
        // Borrowed from the table while it is current: a clone of its
        // `Arc` would write a count every core shares, on every pick.
        let memos = self.memos.load();
        let fresh;
        let memo = match memos.get(set.service()).filter(|m| m.set.ptr_eq(set)) {
            Some(current) => &**current,
            None => {
                fresh = self.memo(set);
                &*fresh
            }
        };
        let panic = self.recount(memo, now);
        let avoid = cx.avoid.filter(|a| !a.is_empty());
        let limit = self.config.max_connections_per_instance();
        // In panic mode (too few available), endpoints that health checks
        // doubt are candidates again: better to spread load over them than
        // crush the few (Envoy's panic threshold). Ejected (open breaker)
        // and draining endpoints stay out: those are decisions, not doubts.
        let usable = |e: &Endpoint| {
            e.state().is_available(now)
                || (panic
                    && e.state().health() == mesh_core::Health::Unhealthy
                    && e.state().ejected_until(now).is_none())
        };
        let under_limit = |e: &Endpoint| limit.is_none_or(|l| e.state().in_flight() < l);
        let preferred = |e: &Endpoint| {
            usable(e) && under_limit(e) && !avoid.is_some_and(|a| a.contains(e.id()))
        };
        let fallback = |e: &Endpoint| usable(e) && under_limit(e);
        let picked = match cx.key_hash {
            Some(hash) if self.hashes() => self
                .by_hash(memo, set, hash, &preferred)
                .or_else(|| self.by_hash(memo, set, hash, &fallback)),
            _ => self
                .pick_with(memo, set, &preferred, now)
                .or_else(|| avoid.and_then(|_| self.pick_with(memo, set, &fallback, now))),
        };
        picked.ok_or_else(|| {
            let available = set.iter().filter(|e| usable(e)).count();
            if available > 0 && limit.is_some() {
                NoPick::AtCapacity { available }
            } else {
                NoPick::NoneAvailable
            }
        })
    }

    fn pick_with<'a>(
        &self,
        memo: &Memo,
        set: &'a EndpointSet,
        ok: &dyn Fn(&Endpoint) -> bool,
        now: Nanos,
    ) -> Option<&'a Endpoint> {
        let endpoints = set.endpoints();
        match self.strategy() {
            Strategy::RoundRobin | Strategy::ConsistentHash => memo.turns.next(set, ok),
            Strategy::Random if memo.uniform_weights => random(endpoints, ok),
            Strategy::Random => memo.cumulative.pick(endpoints, ok),
            Strategy::WeightedRoundRobin => weighted(memo, set, ok),
            Strategy::LeastConnections => Pool::of(endpoints, ok)
                .least_by(|e| f64::from(e.state().in_flight()) / f64::from(e.weight().get())),
            Strategy::LeastResponseTime => Pool::of(endpoints, ok).least_expected_wait(
                |e| e.state().latency_at(now),
                |e| (f64::from(e.state().in_flight()) + 1.0) / f64::from(e.weight().get()),
                self.config.unknown_latency(),
            ),
            Strategy::PowerOfTwoChoices => self.two_choices(endpoints, ok, now),
        }
    }

    /// Expected wait at `e`, relative to its weight: `latency` (its
    /// estimate, read once by the caller: its fading takes an
    /// exponential) x (in flight + 1) / weight, in seconds; the
    /// configured unknown latency for an endpoint with none. In floating
    /// point: an integer division per candidate would cost more than the
    /// rest of the comparison, and equal inputs still give equal costs
    /// for ties.
    fn cost(&self, e: &Endpoint, latency: Option<Duration>) -> f64 {
        let latency = latency
            .unwrap_or(self.config.unknown_latency())
            .as_secs_f64()
            .max(1e-9);
        latency * (f64::from(e.state().in_flight()) + 1.0) / f64::from(e.weight().get())
    }

    fn two_choices<'a>(
        &self,
        endpoints: &'a [Endpoint],
        ok: &dyn Fn(&Endpoint) -> bool,
        now: Nanos,
    ) -> Option<&'a Endpoint> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let draw = || {
            // A few random draws find a candidate at once unless most
            // endpoints are out; then fall back to a uniform scan.
            (0..4)
                .map(|_| &endpoints[fastrand::usize(..n)])
                .find(|e| ok(e))
                .or_else(|| uniform(endpoints, ok))
        };
        let a = draw()?;
        // Two *distinct* candidates whenever two are usable: a candidate
        // left alone is taken unchallenged, however slow. Four draws
        // usually find the second; when all four miss (each drawing `a`
        // again or an endpoint that is out: 1/16 of the picks with two
        // endpoints, both usable), a scan does. Without it, a slow
        // instance beside a fast one would take one request in 32 of a
        // lone caller's.
        let other = |e: &Endpoint| ok(e) && !std::ptr::eq(a, e);
        let b = (0..4)
            .map(|_| &endpoints[fastrand::usize(..n)])
            .find(|e| other(e))
            .or_else(|| uniform(endpoints, &other));
        // An unmeasured candidate is taken to be as fast as the other.
        let (la, lb) = (
            a.state().latency_at(now),
            b.and_then(|b| b.state().latency_at(now)),
        );
        Some(match b {
            Some(b) if self.cost(b, lb.or(la)) < self.cost(a, la.or(lb)) => b,
            _ => a,
        })
    }

    /// The tables for `set`, a snapshot the table has no memo for yet
    /// (`pick` borrows the current one).
    fn memo(&self, set: &EndpointSet) -> Arc<Memo> {
        let previous = self.memos.load().get(set.service()).cloned();
        let weights: Vec<u32> = set.iter().map(|e| e.weight().get()).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let memo = Arc::new(Memo {
            set: set.clone(),
            swrr: match self.strategy() {
                // Equal weights: the smooth sequence is plain order.
                Strategy::WeightedRoundRobin if uniform => (0..weights.len() as u32).collect(),
                // Building costs sum(weights) x n: past that budget, weighted
                // random keeps the proportions without the table.
                Strategy::WeightedRoundRobin
                    if total.saturating_mul(weights.len() as u64) <= 10_000_000 =>
                {
                    swrr::sequence(&weights)
                }
                _ => Vec::new(),
            },
            cumulative: match self.strategy() {
                Strategy::Random | Strategy::WeightedRoundRobin => Cumulative::new(&weights),
                _ => Cumulative::default(),
            },
            cursor: AtomicUsize::new(0),
            turns: previous
                .as_ref()
                .map_or_else(Arc::default, |p| Arc::clone(&p.turns)),
            ring: self.hashes().then(|| Ring::new(set.endpoints())),
            counted_at: AtomicU64::new(u64::MAX),
            // Carried over, so a new snapshot with the same availability
            // publishes no event.
            available: AtomicUsize::new(
                previous
                    .as_ref()
                    .map_or(usize::MAX, |p| p.available.load(Ordering::Relaxed)),
            ),
            panic: AtomicBool::new(false),
            uniform_weights: uniform,
        });
        // A request still carrying an older snapshot (a retry, a call in
        // flight during a swap) gets tables for it, but never replaces the
        // newer snapshot's.
        let generation = set.generation();
        self.memos.rcu(|memos| {
            if memos
                .get(set.service())
                .is_some_and(|m| m.set.generation() >= generation)
            {
                return Arc::clone(memos);
            }
            let mut memos = HashMap::clone(memos);
            memos.insert(set.service().clone(), Arc::clone(&memo));
            Arc::new(memos)
        });
        memo
    }

    /// Whether the service is in panic mode at `now`, recounting the
    /// available endpoints at most every 100 ms (and publishing a change).
    fn recount(&self, memo: &Memo, now: Nanos) -> bool {
        let last = memo.counted_at.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_since(Nanos(last)) >= RECOUNT;
        if !due
            || memo
                .counted_at
                .compare_exchange(last, now.0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return memo.panic.load(Ordering::Relaxed);
        }
        let total = memo.set.len();
        let available = memo.set.available(now).count();
        let threshold = self.config.panic_threshold();
        let panic =
            total > 0 && threshold > 0.0 && (available as f64) * 100.0 < threshold * total as f64;
        memo.panic.store(panic, Ordering::Relaxed);
        let before = memo.available.swap(available, Ordering::Relaxed);
        if before != available {
            if panic {
                tracing::warn!(service = %memo.set.service(), available, total, "too few endpoints available: balancing over all of them");
            }
            self.events.publish(MeshEvent::AvailableEndpointsChanged {
                service: memo.set.service().clone(),
                available,
                total,
                panic,
            });
        }
        panic
    }

    fn by_hash<'a>(
        &self,
        memo: &Memo,
        set: &'a EndpointSet,
        hash: u64,
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
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

    /// A snapshot of every service this balancer has picked for.
    pub fn metrics(&self) -> Vec<ServiceMetrics> {
        let now = mesh_core::clock::now();
        let mut all: Vec<ServiceMetrics> = self
            .memos
            .load()
            .values()
            .map(|memo| {
                let total: u64 = memo.set.iter().map(|e| e.state().requests()).sum();
                ServiceMetrics {
                    service: memo.set.service().clone(),
                    panic: memo.panic.load(Ordering::Relaxed),
                    instances: memo
                        .set
                        .iter()
                        .map(|e| InstanceMetrics {
                            endpoint: e.id().clone(),
                            address: e.address(),
                            requests: e.state().requests(),
                            in_flight: e.state().in_flight(),
                            latency: e.state().latency_at(now),
                            share: if total == 0 {
                                0.0
                            } else {
                                e.state().requests() as f64 / total as f64
                            },
                            available: e.state().is_available(now),
                        })
                        .collect(),
                }
            })
            .collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all
    }
}

fn weighted<'a>(
    memo: &Memo,
    set: &'a EndpointSet,
    ok: &dyn Fn(&Endpoint) -> bool,
) -> Option<&'a Endpoint> {
    let len = memo.swrr.len();
    if len == 0 {
        return memo.cumulative.pick(set.endpoints(), ok);
    }
    let turn = memo.cursor.fetch_add(1, Ordering::Relaxed) % len;
    let endpoints = set.endpoints();
    match endpoints.get(memo.swrr[turn] as usize) {
        Some(e) if ok(e) => Some(e),
        // The turn of an endpoint that is out goes to a candidate drawn
        // by weight, so its share spreads over the others in their
        // proportions (stepping to the next turn instead would hand it
        // all to whichever endpoint follows it in the cycle).
        _ => memo.cumulative.pick(endpoints, ok),
    }
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
