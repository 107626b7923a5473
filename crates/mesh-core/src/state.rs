//! [`EndpointState`]: the live, shared state of one endpoint.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::clock::Nanos;

/// What health checking last concluded about an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Health {
    /// Not checked (yet). Usable: a newly discovered endpoint takes traffic
    /// at once unless a health checker says otherwise.
    Unknown = 0,
    /// Passing its checks.
    Healthy = 1,
    /// Failing its checks: the balancer skips it.
    Unhealthy = 2,
    /// Shutting down gracefully: finish what is in flight, send nothing new.
    Draining = 3,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            3 => Health::Draining,
            _ => Health::Unknown,
        }
    }

    /// Whether an endpoint in this health may receive new requests.
    pub fn accepts_traffic(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy)
    }
}

/// The live state of one endpoint, shared by `Arc` between layers.
///
/// Every field is an atomic: the balancer reads them on each pick, and the
/// breaker, health checker and discovery write them, without a lock.
/// Discovery carries the same `EndpointState` across updates of the
/// endpoint set (see [`crate::EndpointSet::reconcile`]), so counts and
/// ejections survive a registry refresh.
pub struct EndpointState {
    in_flight: AtomicU32,
    /// Requests ever dispatched to the endpoint.
    requests: AtomicU64,
    /// Peak-sensitive moving average of latency, in nanoseconds; 0 means
    /// "no sample yet".
    latency_ewma: AtomicU64,
    /// When the estimate was last updated (clock nanos).
    latency_at: AtomicU64,
    health: AtomicU8,
    /// Until when (on [`crate::clock`]) the endpoint is ejected; 0 = not.
    ejected_until: AtomicU64,
}

// === impl EndpointState ===

impl EndpointState {
    /// Weight of a new latency sample in the moving average. 1/8 smooths out
    /// single outliers yet follows a real shift within a few dozen calls.
    const EWMA_SHIFT: u32 = 3;

    /// Fresh state: nothing in flight, no latency sample, health unknown,
    /// not ejected.
    pub fn new() -> Self {
        EndpointState {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            latency_ewma: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Requests dispatched to the endpoint whose response has not ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more request in flight if fewer than `limit` are: the
    /// check and the count are one atomic step, so concurrent callers can
    /// never push the endpoint past its limit. Returns whether it counted.
    pub fn try_start_request(&self, limit: u32) -> bool {
        let counted = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if counted {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        counted
    }

    /// Counts one more request in flight. Pair every call with
    /// [`EndpointState::finish_request`]; balancers do it with a guard.
    pub fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests ever dispatched to the endpoint (counted by
    /// [`EndpointState::start_request`]).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts one request as finished.
    pub fn finish_request(&self) {
        // Saturate rather than wrap, so a stray extra call cannot make the
        // endpoint look infinitely loaded.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The latency estimate (peak-sensitive moving average), if any sample
    /// was recorded.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_ewma.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// The latency estimate as of `now`, decayed towards zero by half every
    /// [`EndpointState::LATENCY_HALF_LIFE`] without a new sample: an
    /// endpoint that was slow and then left alone looks better with time,
    /// so a latency-aware balancer tries it again instead of starving it
    /// forever (its next answer resets the estimate).
    pub fn latency_at(&self, now: Nanos) -> Option<Duration> {
        let estimate = self.latency()?;
        if self.in_flight() > 0 {
            // Requests still out say nothing good yet: no fading while
            // they are (a hung endpoint must not look faster with time).
            return Some(estimate);
        }
        let at = Nanos(self.latency_at.load(Ordering::Relaxed));
        let age = now.saturating_since(at).as_secs_f64();
        let half_lives = age / Self::LATENCY_HALF_LIFE.as_secs_f64();
        // In nanoseconds: `Duration::mul_f64` checks for overflow and
        // negative results that a factor in [0, 1] cannot give.
        let faded = estimate.as_nanos() as f64 * 0.5f64.powf(half_lives);
        Some(Duration::from_nanos(faded as u64))
    }

    /// How fast an unrefreshed latency estimate fades (see
    /// [`EndpointState::latency_at`]).
    pub const LATENCY_HALF_LIFE: Duration = Duration::from_secs(5);

    /// Folds one latency sample, taken at `now`, into the estimate as it
    /// has faded by then (see [`EndpointState::latency_at`] and
    /// [`EndpointState::record_latency`]): a sample after a long silence
    /// pulls from what a balancer saw, not from the old peak.
    pub fn record_latency_at(&self, sample: Duration, now: Nanos) {
        let factor = match self.in_flight() {
            0 => {
                let at = Nanos(self.latency_at.load(Ordering::Relaxed));
                let age = now.saturating_since(at).as_secs_f64();
                0.5f64.powf(age / Self::LATENCY_HALF_LIFE.as_secs_f64())
            }
            _ => 1.0,
        };
        self.fold(sample, factor);
        self.latency_at.store(now.0, Ordering::Relaxed);
    }

    /// Folds one latency sample into the estimate, peak-sensitive as
    /// linkerd's and Finagle's: a sample above the estimate replaces it at
    /// once (an endpoint turning slow is noticed on its first slow answer),
    /// a sample below pulls it down by 1/8 of the difference (recovery is
    /// believed gradually).
    pub fn record_latency(&self, sample: Duration) {
        self.fold(sample, 1.0);
    }

    /// Folds `sample` into the estimate, the old one scaled by `factor`
    /// (its fading) first.
    fn fold(&self, sample: Duration, factor: f64) {
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let old = match old {
                    0 => 0,
                    // Faded, but never to "no sample".
                    _ => ((old as f64 * factor) as u64).max(1),
                };
                Some(if old == 0 || sample >= old {
                    sample
                } else {
                    // old + (sample - old) / 8, in signed arithmetic.
                    let delta = (i128::from(sample) - i128::from(old)) >> Self::EWMA_SHIFT;
                    u64::try_from(i128::from(old) + delta).unwrap_or(1).max(1)
                })
            });
    }

    /// What health checking last concluded.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Records a health verdict; returns the previous one.
    pub fn set_health(&self, health: Health) -> Health {
        Health::from_u8(self.health.swap(health as u8, Ordering::Relaxed))
    }

    /// Records `health` only if the verdict is still `expected` (a checker
    /// must not overwrite a `Draining` set meanwhile by someone else);
    /// whether it did.
    pub fn compare_and_set_health(&self, expected: Health, health: Health) -> bool {
        self.health
            .compare_exchange(
                expected as u8,
                health as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Until when the endpoint is ejected, if it is ejected at `now`.
    pub fn ejected_until(&self, now: Nanos) -> Option<Nanos> {
        let until = Nanos(self.ejected_until.load(Ordering::Relaxed));
        (until > now).then_some(until)
    }

    /// Ejects the endpoint until `until` (a breaker opening, outlier
    /// detection). A later call replaces the deadline.
    pub fn eject_until(&self, until: Nanos) {
        self.ejected_until.store(until.0, Ordering::Relaxed);
    }

    /// Ends an ejection at once.
    pub fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }

    /// Whether the endpoint may receive a new request at `now`: its health
    /// accepts traffic and it is not ejected.
    pub fn is_available(&self, now: Nanos) -> bool {
        self.health().accepts_traffic() && self.ejected_until(now).is_none()
    }
}

impl Default for EndpointState {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("in_flight", &self.in_flight())
            .field("latency", &self.latency())
            .field("health", &self.health())
            .field(
                "ejected_until",
                &Nanos(self.ejected_until.load(Ordering::Relaxed)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slow_sample_is_believed_at_once_and_recovery_gradually() {
        let s = EndpointState::new();
        s.record_latency(Duration::from_millis(10));
        s.record_latency(Duration::from_millis(80));
        assert_eq!(s.latency(), Some(Duration::from_millis(80)));
        s.record_latency(Duration::from_millis(0));
        assert_eq!(s.latency(), Some(Duration::from_millis(70)));
    }

    #[test]
    fn an_estimate_left_alone_fades_by_half_every_half_life() {
        let s = EndpointState::new();
        s.record_latency_at(Duration::from_millis(80), Nanos(0));
        let later = Nanos(0).saturating_add(EndpointState::LATENCY_HALF_LIFE * 2);
        assert_eq!(s.latency_at(later), Some(Duration::from_millis(20)));
        assert_eq!(s.latency_at(Nanos(0)), Some(Duration::from_millis(80)));
    }

    #[test]
    fn ejection_expires() {
        let s = EndpointState::new();
        s.eject_until(Nanos(100));
        assert!(!s.is_available(Nanos(99)));
        assert!(s.is_available(Nanos(100)));
        s.clear_ejection();
        assert!(s.is_available(Nanos(0)));
    }

    #[test]
    fn unhealthy_and_draining_refuse_traffic() {
        let s = EndpointState::new();
        assert_eq!(s.set_health(Health::Unhealthy), Health::Unknown);
        assert!(!s.is_available(Nanos(0)));
        s.set_health(Health::Draining);
        assert!(!s.is_available(Nanos(0)));
        s.set_health(Health::Healthy);
        assert!(s.is_available(Nanos(0)));
    }

    #[test]
    fn finish_never_underflows() {
        let s = EndpointState::new();
        s.finish_request();
        assert_eq!(s.in_flight(), 0);
        s.start_request();
        s.start_request();
        s.finish_request();
        assert_eq!(s.in_flight(), 1);
    }

    proptest! {
        #[test]
        fn latency_estimate_stays_within_the_samples(samples in proptest::collection::vec(1u64..10_000_000, 1..200)) {
            let s = EndpointState::new();
            for &n in &samples {
                s.record_latency(Duration::from_nanos(n));
            }
            let min = *samples.iter().min().unwrap();
            let max = *samples.iter().max().unwrap();
            let avg = s.latency().unwrap().as_nanos() as u64;
            prop_assert!(avg >= min.saturating_sub(8) && avg <= max, "{avg} not in [{min}, {max}]");
        }
    }
}
