//! Round robin over the available endpoints.

use hashbrown::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::clock::Nanos;
use mesh_core::ext::AvoidEndpoints;
use mesh_core::{Endpoint, EndpointSet, ServiceName};

/// Sends each request to the next available endpoint in turn.
///
/// A pick takes the next turn over the whole set: when that endpoint is a
/// candidate (the usual case) the pick is O(1). A turn that falls on an
/// endpoint that is out goes to the next candidate of a second, separate
/// rotation over the candidates only, so the out endpoint's share spreads
/// evenly: with `[a, b(down), c]`, `a` and `c` get equal traffic. (Stepping
/// to `b`'s neighbour instead would give `c` two turns in three,
/// overloading the neighbour of every failed endpoint.) Every available
/// endpoint stays within two picks of every other.
///
/// Candidates are the available endpoints minus those to avoid; when that
/// leaves nothing, the available endpoints, since a retry on an endpoint that
/// failed once beats no retry at all.
///
/// Each service has its own turn counter, so that calls alternating between
/// two services do not lock each into one endpoint. The counters live in a
/// snapshot map shared by all clones: a pick is a lock-free lookup and one
/// atomic increment, reads the set twice and allocates nothing.
#[derive(Debug, Default)]
pub struct RoundRobin {
    turns: ArcSwap<HashMap<ServiceName, Arc<Turns>>>,
}

/// One service's rotation: shared by the picks of every clone of a
/// balancer, carried from one endpoint-set snapshot to the next.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    /// Over the whole set.
    all: AtomicUsize,
    /// Over the candidates, for turns that fell on an endpoint that is out.
    spill: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first endpoint.
    pub fn new() -> Self {
        RoundRobin::default()
    }

    /// Picks an endpoint of `set` at `now`, or `None` if none is available.
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        avoid: Option<&AvoidEndpoints>,
        now: Nanos,
    ) -> Option<&'a Endpoint> {
        let avoid = avoid.filter(|a| !a.is_empty());
        let preferred = |e: &Endpoint| {
            e.state().is_available(now) && !avoid.is_some_and(|a| a.contains(e.id()))
        };
        self.nth_matching(set, preferred)
            .or_else(|| avoid.and_then(|_| self.nth_matching(set, |e| e.state().is_available(now))))
    }

    fn nth_matching<'a>(
        &self,
        set: &'a EndpointSet,
        candidate: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        if set.is_empty() {
            return None;
        }
        // Borrowed from the table: a clone of its `Arc` would write a
        // count every core shares, on every pick.
        let table = self.turns.load();
        let added;
        let turns = match table.get(set.service()) {
            Some(turns) => &**turns,
            None => {
                added = self.turns_of(set.service());
                &*added
            }
        };
        turns.next(set, candidate)
    }

    /// Adds `service`'s counter, unless another pick just did (a pick
    /// borrows an existing one from the table).
    fn turns_of(&self, service: &ServiceName) -> Arc<Turns> {
        let mut found = None;
        self.turns.rcu(|turns| {
            if let Some(existing) = turns.get(service) {
                found = Some(Arc::clone(existing));
                return Arc::clone(turns);
            }
            let fresh = Arc::new(Turns::default());
            found = Some(Arc::clone(&fresh));
            let mut turns = HashMap::clone(turns);
            turns.insert(service.clone(), fresh);
            Arc::new(turns)
        });
        found.unwrap_or_default()
    }
}

// === impl Turns ===

impl Turns {
    /// The next endpoint of `set` in turn among those `candidate` accepts.
    pub(crate) fn next<'a>(
        &self,
        set: &'a EndpointSet,
        candidate: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let turn = self.all.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(e) = set.endpoints().get(turn).filter(|e| candidate(e)) {
            return Some(e);
        }
        let count = set.iter().filter(|e| candidate(e)).count();
        if count == 0 {
            return None;
        }
        let spill = self.spill.fetch_add(1, Ordering::Relaxed) % count;
        // Availability is live: an endpoint may have been ejected since the
        // count. Then take the last candidate rather than failing a request
        // that other endpoints can serve.
        set.iter().filter(|e| candidate(e)).take(spill + 1).last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Health, ServiceName};
    use proptest::prelude::*;

    fn set(n: u16) -> EndpointSet {
        named_set("s", n)
    }

    fn named_set(name: &str, n: u16) -> EndpointSet {
        EndpointSet::new(
            ServiceName::new(name).unwrap(),
            (1..=n)
                .map(|p| Endpoint::builder(([127, 0, 0, 1], p).into()).build())
                .collect(),
        )
    }

    fn port(e: Option<&Endpoint>) -> Option<u16> {
        e.map(|e| e.address().port())
    }

    #[test]
    fn skips_unavailable_endpoints_without_favouring_their_neighbours() {
        let set = set(3);
        set.endpoints()[1].state().set_health(Health::Unhealthy);
        let rr = RoundRobin::new();
        let picks: Vec<_> = (0..6)
            .map(|_| port(rr.pick(&set, None, Nanos(0))))
            .collect();
        assert_eq!(
            picks.iter().filter(|p| **p == Some(1)).count(),
            3,
            "{picks:?}"
        );
        assert_eq!(
            picks.iter().filter(|p| **p == Some(3)).count(),
            3,
            "{picks:?}"
        );
    }

    #[test]
    fn services_take_turns_independently() {
        let (a, b) = (named_set("a", 2), named_set("b", 2));
        let rr = RoundRobin::new();
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.push(port(rr.pick(&a, None, Nanos(0))));
            picks.push(port(rr.pick(&b, None, Nanos(0))));
        }
        // Interleaved calls still alternate within each service.
        assert_eq!(picks, [1, 1, 2, 2, 1, 1, 2, 2].map(Some));
    }

    #[test]
    fn avoids_failed_endpoints_unless_nothing_else_is_left() {
        let set = set(2);
        let rr = RoundRobin::new();
        let mut avoid = AvoidEndpoints::default();
        avoid.insert(set.endpoints()[0].id().clone());
        for _ in 0..3 {
            assert_eq!(port(rr.pick(&set, Some(&avoid), Nanos(0))), Some(2));
        }
        avoid.insert(set.endpoints()[1].id().clone());
        assert!(rr.pick(&set, Some(&avoid), Nanos(0)).is_some());
    }

    #[test]
    fn nothing_available_means_no_pick() {
        let set = set(2);
        for e in set.iter() {
            e.state().eject_until(Nanos(10));
        }
        assert!(RoundRobin::new().pick(&set, None, Nanos(5)).is_none());
        assert!(RoundRobin::new().pick(&set, None, Nanos(10)).is_some());
        let empty = EndpointSet::empty(ServiceName::new("s").unwrap());
        assert!(RoundRobin::new().pick(&empty, None, Nanos(0)).is_none());
    }

    proptest! {
        /// At every moment every available endpoint is within two picks
        /// of every other, and no unavailable one is ever picked.
        #[test]
        fn distributes_evenly_over_available_endpoints(
            down in proptest::collection::vec(any::<bool>(), 1..12),
            rounds in 1usize..20,
        ) {
            let set = set(down.len() as u16);
            for (e, d) in set.iter().zip(&down) {
                if *d { e.state().set_health(Health::Unhealthy); }
            }
            let rr = RoundRobin::new();
            let mut counts = vec![0usize; down.len()];
            for _ in 0..rounds * down.len() {
                if let Some(e) = rr.pick(&set, None, Nanos(0)) {
                    counts[usize::from(e.address().port()) - 1] += 1;
                }
                let up: Vec<usize> = counts.iter().zip(&down).filter(|(_, d)| !**d).map(|(c, _)| *c).collect();
                if let (Some(lo), Some(hi)) = (up.iter().min(), up.iter().max()) {
                    prop_assert!(hi - lo <= 2, "{:?}", counts);
                }
            }
            for (count, d) in counts.iter().zip(&down) {
                if *d { prop_assert_eq!(*count, 0); }
            }
        }
    }
}
