//! The least-cost picks (least connections, least response time): an
//! exact minimum over a small set, the best of a random sample over a
//! large one.
//!
//! Scanning every candidate costs O(n) per request: 7 µs at 1,000
//! instances. Past [`EXACT_UP_TO`] candidates a pick compares
//! [`SAMPLE`] random ones instead, as Envoy's least-request balancer
//! does (its `choice_count`, 2 by default): O(1), and the chance of
//! picking from the most loaded half falls to 1/2^[`SAMPLE`] (6%). Small
//! sets, where one misplaced request matters most, keep the exact
//! minimum.

use std::time::Duration;

use mesh_core::Endpoint;

/// Up to this many endpoints, a pick scans them all for the minimum.
pub(super) const EXACT_UP_TO: usize = 16;

/// How many random candidates a pick over a larger set compares.
pub(super) const SAMPLE: usize = 4;

/// Random draws a sample may take to find [`SAMPLE`] candidates before
/// giving up on sampling (most endpoints out) and scanning.
const DRAWS: usize = SAMPLE * 4;

/// The candidates one pick compares.
pub(super) enum Pool<'a, 'f> {
    /// Up to [`EXACT_UP_TO`] of them, checked once: every candidate of a
    /// small set, or a random sample of a large one (drawn with
    /// replacement: past [`EXACT_UP_TO`] endpoints a repeat is rare and
    /// harmless).
    Gathered([Option<&'a Endpoint>; EXACT_UP_TO]),
    /// Every endpoint `ok` accepts, of a large set where random draws
    /// kept missing (most endpoints out).
    Scan(&'a [Endpoint], &'f dyn Fn(&Endpoint) -> bool),
}

// === impl Pool ===

impl<'a, 'f> Pool<'a, 'f> {
    /// The pool for one pick among `endpoints` that `ok` accepts.
    pub(super) fn of(endpoints: &'a [Endpoint], ok: &'f dyn Fn(&Endpoint) -> bool) -> Self {
        let n = endpoints.len();
        let mut gathered = [None; EXACT_UP_TO];
        if n <= EXACT_UP_TO {
            for (slot, e) in gathered.iter_mut().zip(endpoints.iter().filter(|e| ok(e))) {
                *slot = Some(e);
            }
            return Pool::Gathered(gathered);
        }
        let mut found = 0;
        for _ in 0..DRAWS {
            let e = &endpoints[fastrand::usize(..n)];
            if ok(e) {
                gathered[found] = Some(e);
                found += 1;
                if found == SAMPLE {
                    return Pool::Gathered(gathered);
                }
            }
        }
        // Few draws hit a candidate: most endpoints are out, and the few
        // left deserve the exact choice.
        Pool::Scan(endpoints, ok)
    }

    /// Its candidates.
    pub(super) fn iter(&self) -> impl Iterator<Item = &'a Endpoint> + '_ {
        let (gathered, scan) = match self {
            Pool::Gathered(gathered) => (Some(gathered.iter().map_while(|e| *e)), None),
            Pool::Scan(endpoints, ok) => (None, Some(endpoints.iter().filter(|e| ok(e)))),
        };
        gathered
            .into_iter()
            .flatten()
            .chain(scan.into_iter().flatten())
    }

    /// The candidate with the least `cost` (finite), ties broken
    /// uniformly at random.
    pub(super) fn least_by(&self, cost: impl Fn(&Endpoint) -> f64) -> Option<&'a Endpoint> {
        let mut least = Least::default();
        for e in self.iter() {
            least.offer(e, cost(e));
        }
        least.best.map(|(e, _)| e)
    }

    /// The candidate with the lowest expected wait, its latency x
    /// `load` (in flight + 1, relative to its weight), in one pass that
    /// reads each latency once. A candidate with no latency yet is taken
    /// to be as fast as the mean of those measured (`unknown` when none
    /// is), so a new instance gets its share at once instead of starving
    /// behind measured fast ones.
    pub(super) fn least_expected_wait(
        &self,
        latency: impl Fn(&Endpoint) -> Option<Duration>,
        load: impl Fn(&Endpoint) -> f64,
        unknown: Duration,
    ) -> Option<&'a Endpoint> {
        let (mut measured, mut unmeasured) = (Least::default(), Least::default());
        let (mut sum, mut n) = (0.0, 0u32);
        for e in self.iter() {
            match latency(e) {
                Some(l) => {
                    let seconds = seconds(l);
                    (sum, n) = (sum + seconds, n + 1);
                    measured.offer(e, seconds * load(e));
                }
                // Its load alone: every unmeasured one shares the latency.
                None => unmeasured.offer(e, load(e)),
            }
        }
        let assumed = if n > 0 {
            sum / f64::from(n)
        } else {
            seconds(unknown)
        };
        match (measured.best, unmeasured.best) {
            (Some((m, wait)), Some((u, load))) => {
                let other = assumed * load;
                Some(if other < wait || (other == wait && fastrand::bool()) {
                    u
                } else {
                    m
                })
            }
            (best, None) | (None, best) => best.map(|(e, _)| e),
        }
    }
}

/// A latency in seconds, never zero (a zero would make every load equal).
fn seconds(latency: Duration) -> f64 {
    latency.as_secs_f64().max(1e-9)
}

/// The least-cost candidate offered so far, ties broken uniformly at
/// random (reservoir sampling over the tied ones).
#[derive(Default)]
struct Least<'a> {
    best: Option<(&'a Endpoint, f64)>,
    ties: u32,
}

impl<'a> Least<'a> {
    fn offer(&mut self, e: &'a Endpoint, cost: f64) {
        match self.best {
            Some((_, b)) if cost > b => {}
            Some((_, b)) if cost == b => {
                self.ties += 1;
                if fastrand::u32(..=self.ties) == 0 {
                    self.best = Some((e, cost));
                }
            }
            _ => {
                self.best = Some((e, cost));
                self.ties = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                Endpoint::builder(([10, 0, (i / 250) as u8, (i % 250) as u8], 80).into()).build()
            })
            .collect()
    }

    /// How many candidates a pool checked, and how many it holds.
    fn checked(n: usize) -> (usize, usize) {
        let endpoints = endpoints(n);
        let checks = Cell::new(0);
        let ok = |_: &Endpoint| {
            checks.set(checks.get() + 1);
            true
        };
        let pool = Pool::of(&endpoints, &ok);
        let held = pool.iter().count();
        (checks.get(), held)
    }

    #[test]
    fn a_small_set_is_checked_whole_and_a_large_one_sampled() {
        assert_eq!(checked(EXACT_UP_TO), (EXACT_UP_TO, EXACT_UP_TO));
        for n in [EXACT_UP_TO + 1, 1_000, 10_000] {
            assert_eq!(checked(n), (SAMPLE, SAMPLE), "{n} endpoints");
        }
    }
}
