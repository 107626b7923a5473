//! The circuit state machine, with no tower in it.
//!
//! ```text
//! CLOSED --(N consecutive failures)--> OPEN --(open duration elapsed,
//!    ^                                  ^      next call is the probe)
//!    |                                  |              |
//!    +----(probe succeeds)---- HALF_OPEN <-------------+
//!                                   |
//!                                   +--(probe fails)--> OPEN
//! ```
//!
//! The state and the instant it refers to (when CLOSED began, when OPEN
//! ends, when the HALF_OPEN probe started) are packed into one `AtomicU64`,
//! so every transition is a single compare-and-swap: two threads can never
//! both open the circuit, both win the probe, or see a state with a stale
//! deadline. Every permit carries the instant of the state that issued
//! it, so a late outcome from an earlier period is ignored instead of
//! counting against the current one. The consecutive-failure count is a
//! separate atomic, zeroed before each closed period starts. A closed
//! circuit costs one atomic load per call and one atomic add per failure.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mesh_core::clock::Nanos;
use mesh_core::CircuitState;

use crate::config::BreakerConfig;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn pack(state: u64, at: Nanos) -> u64 {
    // 62 bits of nanoseconds cover 146 years of process uptime.
    (at.0.min(u64::MAX >> 2) << 2) | state
}

fn unpack(word: u64) -> (u64, Nanos) {
    (word & 0b11, Nanos(word >> 2))
}

fn state_of(bits: u64) -> CircuitState {
    match bits {
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        _ => CircuitState::Closed,
    }
}

/// What a caller was allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// A normal call through a closed circuit. It remembers which closed
    /// period admitted it, so that a call admitted before the circuit
    /// opened cannot count against the next closed period.
    Normal {
        /// When the closed period that admitted the call began.
        closed_since: Nanos,
    },
    /// The half-open probe: its outcome decides whether the circuit closes.
    /// It remembers when it started, so that the outcome of a probe that
    /// was presumed lost (and replaced) cannot decide for its successor.
    Probe {
        /// When the probe was admitted.
        started: Nanos,
    },
}

/// A state change, for events and ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
    /// Until when calls are refused: the end of OPEN, or for HALF_OPEN the
    /// latest the probe may take before another one is allowed.
    pub until: Option<Nanos>,
}

/// The refusal of a call by an open (or probing) circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The longest until a call may be admitted again.
    pub retry_in: Duration,
}

/// One circuit breaker.
#[derive(Debug)]
pub struct Circuit {
    config: BreakerConfig,
    word: AtomicU64,
    consecutive_failures: AtomicU32,
}

// === impl Circuit ===

impl Circuit {
    /// A closed circuit.
    pub fn new(config: BreakerConfig) -> Self {
        Circuit {
            config,
            word: AtomicU64::new(pack(CLOSED, Nanos::ZERO)),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        state_of(unpack(self.word.load(Ordering::Acquire)).0)
    }

    /// Asks to make a call at `now`.
    ///
    /// In CLOSED every call passes. In OPEN calls are refused until the
    /// open duration ends; then exactly one caller wins the transition to
    /// HALF_OPEN and makes the probe. In HALF_OPEN calls are refused while
    /// the probe is out; a probe that takes longer than the open duration
    /// is presumed lost, and the next caller probes instead.
    pub fn acquire(&self, now: Nanos) -> Result<(Permit, Option<Transition>), Rejected> {
        let word = self.word.load(Ordering::Acquire);
        let (state, at) = unpack(word);
        let probe_deadline = now.saturating_add(self.config.open_duration());
        match state {
            CLOSED => Ok((Permit::Normal { closed_since: at }, None)),
            OPEN | HALF_OPEN => {
                let expires = match state {
                    OPEN => at,
                    _ => at.saturating_add(self.config.open_duration()),
                };
                if now < expires {
                    return Err(Rejected {
                        retry_in: expires.saturating_since(now),
                    });
                }
                let next = pack(HALF_OPEN, now);
                match self
                    .word
                    .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Ok((
                        Permit::Probe { started: now },
                        (state == OPEN).then_some(Transition {
                            from: CircuitState::Open,
                            to: CircuitState::HalfOpen,
                            until: Some(probe_deadline),
                        }),
                    )),
                    Err(_) => Err(Rejected {
                        retry_in: self.config.open_duration(),
                    }),
                }
            }
            _ => Ok((Permit::Normal { closed_since: at }, None)),
        }
    }

    /// Records the outcome of a permitted call at `now`.
    pub fn record(&self, permit: Permit, failed: bool, now: Nanos) -> Option<Transition> {
        match (permit, failed) {
            (Permit::Normal { closed_since }, false) => {
                // Skip the store when already zero: a healthy circuit under
                // load then never writes the shared cache line.
                if self.is_current(CLOSED, closed_since)
                    && self.consecutive_failures.load(Ordering::Relaxed) != 0
                {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                None
            }
            (Permit::Normal { closed_since }, true) => {
                if !self.is_current(CLOSED, closed_since) {
                    return None;
                }
                let failures = self
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if failures < self.config.consecutive_failures() {
                    return None;
                }
                self.transition_from(pack(CLOSED, closed_since), OPEN, now)
            }
            (Permit::Probe { started }, false) => {
                // Zeroed before the circuit closes, so the new closed period
                // starts from a clean count.
                if self.is_current(HALF_OPEN, started) {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                self.transition_from(pack(HALF_OPEN, started), CLOSED, now)
            }
            (Permit::Probe { started }, true) => {
                self.transition_from(pack(HALF_OPEN, started), OPEN, now)
            }
        }
    }

    fn is_current(&self, state: u64, at: Nanos) -> bool {
        self.word.load(Ordering::Acquire) == pack(state, at)
    }

    /// Gives a probe back without an outcome (its call was cancelled): the
    /// circuit returns to OPEN with its duration already over, so the next
    /// call probes at once instead of waiting for the lost one.
    pub fn abandon(&self, permit: Permit, now: Nanos) -> Option<Transition> {
        let Permit::Probe { started } = permit else {
            return None;
        };
        let expected = pack(HALF_OPEN, started);
        self.word
            .compare_exchange(
                expected,
                pack(OPEN, now),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .map(|_| Transition {
                from: CircuitState::HalfOpen,
                to: CircuitState::Open,
                until: Some(now),
            })
    }

    /// Moves from exactly `word` to `to`; fails if the circuit moved on.
    fn transition_from(&self, word: u64, to: u64, now: Nanos) -> Option<Transition> {
        let until = (to == OPEN).then(|| now.saturating_add(self.config.open_duration()));
        // OPEN records when it ends; CLOSED records when it began.
        let next = pack(to, until.unwrap_or(now));
        self.word
            .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Transition {
                from: state_of(unpack(word).0),
                to: state_of(to),
                until,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn circuit(threshold: u32, open_ms: u64) -> Circuit {
        Circuit::new(
            BreakerConfig::builder()
                .consecutive_failures(threshold)
                .open_duration(Duration::from_millis(open_ms))
                .build()
                .unwrap(),
        )
    }

    fn normal(c: &Circuit, now: Nanos) -> Permit {
        let (permit, _) = c.acquire(now).unwrap();
        assert!(matches!(permit, Permit::Normal { .. }));
        permit
    }

    #[test]
    fn a_failure_admitted_before_the_circuit_opened_does_not_count_after_it_closes() {
        let c = circuit(2, 100);
        let stale = normal(&c, Nanos(0));
        c.record(normal(&c, Nanos(0)), true, Nanos(0));
        c.record(normal(&c, Nanos(0)), true, Nanos(0));
        assert_eq!(c.state(), CircuitState::Open);
        let (probe, _) = c.acquire(Nanos(100 * MS)).unwrap();
        c.record(probe, false, Nanos(100 * MS));
        assert_eq!(c.state(), CircuitState::Closed);
        // The stale failure arrives late: ignored, the count stays at zero.
        assert!(c.record(stale, true, Nanos(101 * MS)).is_none());
        c.record(normal(&c, Nanos(101 * MS)), true, Nanos(101 * MS));
        assert_eq!(c.state(), CircuitState::Closed, "one failure of two");
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let c = circuit(3, 100);
        let t = Nanos(MS);
        c.record(normal(&c, t), true, t);
        c.record(normal(&c, t), true, t);
        c.record(normal(&c, t), false, t);
        c.record(normal(&c, t), true, t);
        c.record(normal(&c, t), true, t);
        assert_eq!(c.state(), CircuitState::Closed);
        let opened = c.record(normal(&c, t), true, t).unwrap();
        assert_eq!(
            (opened.from, opened.to),
            (CircuitState::Closed, CircuitState::Open)
        );
        assert_eq!(opened.until, Some(Nanos(101 * MS)));
        assert_eq!(
            c.acquire(Nanos(51 * MS)).unwrap_err().retry_in,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn one_probe_after_the_open_duration_then_close_on_success() {
        let c = circuit(1, 100);
        c.record(normal(&c, Nanos(0)), true, Nanos(0));
        let (permit, t) = c.acquire(Nanos(100 * MS)).unwrap();
        assert!(matches!(permit, Permit::Probe { .. }));
        assert_eq!(t.unwrap().to, CircuitState::HalfOpen);
        assert!(c.acquire(Nanos(100 * MS)).is_err(), "only one probe");
        let closed = c.record(permit, false, Nanos(101 * MS)).unwrap();
        assert_eq!(closed.to, CircuitState::Closed);
        assert!(matches!(
            c.acquire(Nanos(101 * MS)).unwrap().0,
            Permit::Normal { .. }
        ));
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_duration() {
        let c = circuit(1, 100);
        c.record(normal(&c, Nanos(0)), true, Nanos(0));
        let (permit, _) = c.acquire(Nanos(150 * MS)).unwrap();
        let reopened = c.record(permit, true, Nanos(160 * MS)).unwrap();
        assert_eq!(reopened.to, CircuitState::Open);
        assert!(c.acquire(Nanos(259 * MS)).is_err());
        assert!(matches!(
            c.acquire(Nanos(260 * MS)).unwrap().0,
            Permit::Probe { .. }
        ));
    }

    #[test]
    fn an_abandoned_or_lost_probe_lets_the_next_caller_probe() {
        let c = circuit(1, 100);
        c.record(normal(&c, Nanos(0)), true, Nanos(0));
        let (permit, _) = c.acquire(Nanos(100 * MS)).unwrap();
        assert!(c.abandon(permit, Nanos(110 * MS)).is_some());
        let (permit, _) = c.acquire(Nanos(110 * MS)).unwrap();
        assert!(matches!(permit, Permit::Probe { .. }));
        // This probe never reports; after one open duration another may go.
        assert!(c.acquire(Nanos(209 * MS)).is_err());
        let (again, t) = c.acquire(Nanos(210 * MS)).unwrap();
        assert!(matches!(again, Permit::Probe { .. }));
        assert!(t.is_none(), "still half-open: no new transition");
        // The lost probe's late verdict no longer decides anything.
        assert!(c.record(permit, true, Nanos(211 * MS)).is_none());
        assert!(c.abandon(permit, Nanos(211 * MS)).is_none());
        assert_eq!(
            c.record(again, false, Nanos(212 * MS)).unwrap().to,
            CircuitState::Closed
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire,
        Succeed(usize),
        Fail(usize),
        Abandon(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Acquire),
            2 => any::<usize>().prop_map(Op::Succeed),
            3 => any::<usize>().prop_map(Op::Fail),
            1 => any::<usize>().prop_map(Op::Abandon),
            2 => (0u64..150).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Under any interleaving of calls, outcomes, cancellations and time:
        /// never two live probes at once; a closed circuit admits everyone;
        /// an open one admits a caller exactly when its deadline has passed;
        /// every transition starts from the state the circuit was in; and
        /// `threshold` consecutive failures of calls admitted in the current
        /// closed period always open it, while outcomes of calls admitted in
        /// an earlier period change nothing.
        #[test]
        fn transitions_are_consistent(threshold in 1u32..5, ops in proptest::collection::vec(op(), 1..200)) {
            let c = circuit(threshold, 100);
            let mut now = Nanos(0);
            // (permit, closed period that admitted it, when)
            let mut outstanding: Vec<(Permit, u32, Nanos)> = Vec::new();
            let mut period = 0u32;
            let mut streak = 0u32;
            let mut open_until = Nanos(0);
            for op in ops {
                let before = c.state();
                let transition = match op {
                    Op::Advance(ms) => { now = Nanos(now.0 + ms * MS); None }
                    Op::Acquire => {
                        let acquired = c.acquire(now);
                        if before == CircuitState::Open {
                            prop_assert_eq!(acquired.is_ok(), now >= open_until);
                        }
                        match acquired {
                            Ok((permit, t)) => {
                                if before == CircuitState::Closed {
                                    let normal = matches!(permit, Permit::Normal { .. });
                                    prop_assert!(normal);
                                }
                                outstanding.push((permit, period, now));
                                t
                            }
                            Err(_) => {
                                prop_assert_ne!(before, CircuitState::Closed);
                                None
                            }
                        }
                    }
                    Op::Succeed(_) | Op::Fail(_) | Op::Abandon(_) if outstanding.is_empty() => None,
                    Op::Succeed(i) => {
                        let (p, admitted_in, _) = outstanding.remove(i % outstanding.len());
                        let current = matches!(p, Permit::Normal { .. }) && admitted_in == period && before == CircuitState::Closed;
                        if current { streak = 0; }
                        c.record(p, false, now)
                    }
                    Op::Fail(i) => {
                        let (p, admitted_in, _) = outstanding.remove(i % outstanding.len());
                        let current = matches!(p, Permit::Normal { .. }) && admitted_in == period && before == CircuitState::Closed;
                        if current { streak += 1; }
                        let t = c.record(p, true, now);
                        if current && streak >= threshold {
                            prop_assert_eq!(c.state(), CircuitState::Open);
                        } else if matches!(p, Permit::Normal { .. }) {
                            prop_assert!(t.is_none(), "a stale or early failure opened the circuit");
                        }
                        t
                    }
                    Op::Abandon(i) => {
                        let (p, _, _) = outstanding.remove(i % outstanding.len());
                        c.abandon(p, now)
                    }
                };
                if let Some(t) = transition {
                    prop_assert_eq!(t.from, before);
                    prop_assert_eq!(t.to, c.state());
                    match t.to {
                        CircuitState::Closed => { period += 1; streak = 0; }
                        CircuitState::Open => { open_until = t.until.unwrap(); streak = 0; }
                        CircuitState::HalfOpen => {}
                    }
                }
                // A second probe only once the first is presumed lost (older
                // than one open duration) or was given back.
                let live_probes = outstanding
                    .iter()
                    .filter(|(p, _, at)| matches!(p, Permit::Probe { .. }) && now.saturating_since(*at) < Duration::from_millis(100))
                    .count();
                prop_assert!(live_probes <= 1, "{} live probes", live_probes);
            }
        }
    }
}
