use std::collections::VecDeque;

use mesh_core::FailureKind;
use proptest::prelude::*;

use super::*;
use crate::config::WindowConfig;

const MS: u64 = 1_000_000;
const FAIL: Outcome = Outcome::Failure(FailureKind::Other);

fn config() -> crate::config::BreakerConfigBuilder {
    BreakerConfig::builder()
        .open_duration(Duration::from_millis(100))
        .open_duration_jitter(0.0)
}

fn ms(n: u64) -> Nanos {
    Nanos(n * MS)
}

fn call(c: &Circuit, outcome: Outcome, now: Nanos) -> Recorded {
    let admitted = c.acquire(now).expect("admitted");
    c.record(admitted.permit, outcome, Duration::ZERO, now)
}

#[test]
fn consecutive_failures_trip_and_a_success_resets_the_streak() {
    let c = Circuit::new(
        config()
            .consecutive_failures(3)
            .no_failure_rate()
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    call(&c, FAIL, ms(0));
    call(&c, Outcome::Success, ms(0));
    call(&c, FAIL, ms(0));
    call(&c, FAIL, ms(0));
    assert_eq!(c.state(), CircuitState::Closed);
    let t = call(&c, FAIL, ms(1)).transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.until),
        (CircuitState::Closed, CircuitState::Open, Some(ms(101)))
    );
    let refused = c.acquire(ms(51)).unwrap_err();
    assert_eq!(refused.state, CircuitState::Open);
    assert_eq!(refused.retry_in, Some(Duration::from_millis(50)));
}

#[test]
fn the_failure_rate_trips_at_the_threshold_once_the_minimum_is_reached() {
    let c = Circuit::new(
        config()
            .no_consecutive_failures()
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Count { size: 10 })
            .minimum_calls(4)
            .build()
            .unwrap(),
    );
    // 2 of 3 failed (67%), but only 3 calls: not judged yet.
    call(&c, FAIL, ms(0));
    call(&c, Outcome::Success, ms(0));
    call(&c, FAIL, ms(0));
    assert_eq!(c.state(), CircuitState::Closed);
    // The 4th call, a success, reaches the minimum at exactly 50%: ">=".
    let r = call(&c, Outcome::Success, ms(0));
    assert_eq!(r.transition.unwrap().to, CircuitState::Open);
    assert_eq!(r.rate_exceeded, Some((50.0, 0.0)));
}

#[test]
fn ignored_outcomes_count_neither_way() {
    let c = Circuit::new(
        config()
            .no_consecutive_failures()
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Count { size: 10 })
            .minimum_calls(2)
            .build()
            .unwrap(),
    );
    call(&c, Outcome::Success, ms(0));
    for _ in 0..10 {
        call(&c, Outcome::Ignored, ms(0));
    }
    assert_eq!(c.metrics(ms(0)).buffered_calls, 1);
    assert_eq!(c.metrics(ms(0)).ignored_total, 10);
    assert_eq!(
        call(&c, FAIL, ms(0)).transition.unwrap().to,
        CircuitState::Open
    );
}

#[test]
fn slow_calls_trip_a_breaker_whose_calls_all_succeed() {
    let c = Circuit::new(
        config()
            .no_consecutive_failures()
            .no_failure_rate()
            .slow_calls(Duration::from_millis(100), 60.0)
            .window(WindowConfig::Count { size: 5 })
            .minimum_calls(5)
            .build()
            .unwrap(),
    );
    let slow = |c: &Circuit, d: u64| {
        let a = c.acquire(ms(0)).unwrap();
        c.record(a.permit, Outcome::Success, Duration::from_millis(d), ms(0))
    };
    slow(&c, 150);
    slow(&c, 20);
    slow(&c, 100); // ">=": exactly the slow duration is slow
    slow(&c, 10);
    let r = slow(&c, 500);
    assert_eq!(r.transition.unwrap().to, CircuitState::Open);
    assert_eq!(r.rate_exceeded, Some((0.0, 60.0)));
}

#[test]
fn half_open_admits_exactly_the_configured_probes_and_closes_when_they_pass() {
    // No rate rule: a single failed probe would reopen, so all three must
    // pass before the circuit closes.
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .no_failure_rate()
            .half_open_probes(3)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let first = c.acquire(ms(100)).unwrap();
    assert_eq!(first.transition.unwrap().to, CircuitState::HalfOpen);
    assert_eq!(first.probes_exhausted, None);
    let second = c.acquire(ms(100)).unwrap();
    let third = c.acquire(ms(100)).unwrap();
    assert!(third.probes_exhausted.is_some(), "the last probe says so");
    let refused = c.acquire(ms(100)).unwrap_err();
    assert_eq!(refused.state, CircuitState::HalfOpen);
    for probe in [first, second] {
        assert!(c
            .record(probe.permit, Outcome::Success, Duration::ZERO, ms(101))
            .transition
            .is_none());
    }
    let closed = c.record(third.permit, Outcome::Success, Duration::ZERO, ms(102));
    assert_eq!(closed.transition.unwrap().to, CircuitState::Closed);
}

#[test]
fn half_open_closes_as_soon_as_the_probes_can_no_longer_reach_the_failure_rate() {
    // 50% of 3 probes needs 2 failures: after 2 successes it cannot.
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(3)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probes: Vec<_> = (0..3).map(|_| c.acquire(ms(100)).unwrap()).collect();
    assert!(c
        .record(probes[0].permit, Outcome::Success, Duration::ZERO, ms(101))
        .transition
        .is_none());
    let closed = c.record(probes[1].permit, Outcome::Success, Duration::ZERO, ms(101));
    assert_eq!(closed.transition.unwrap().to, CircuitState::Closed);
}

#[test]
fn half_open_reopens_as_soon_as_the_probes_reach_the_failure_rate() {
    // 50% of 4 probes: the second failure decides.
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Count { size: 10 })
            .minimum_calls(5)
            .half_open_probes(4)
            .open_duration_growth(2.0, Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probes: Vec<_> = (0..4).map(|_| c.acquire(ms(100)).unwrap()).collect();
    assert!(c
        .record(probes[0].permit, FAIL, Duration::ZERO, ms(101))
        .transition
        .is_none());
    assert!(c
        .record(probes[1].permit, Outcome::Success, Duration::ZERO, ms(101))
        .transition
        .is_none());
    let reopened = c
        .record(probes[2].permit, FAIL, Duration::ZERO, ms(102))
        .transition
        .unwrap();
    assert_eq!(reopened.to, CircuitState::Open);
    // The second trip in a row stays open twice as long.
    assert_eq!(reopened.until, Some(ms(302)));
    // The last probe reports late: it no longer decides anything.
    assert!(c
        .record(probes[3].permit, Outcome::Success, Duration::ZERO, ms(103))
        .transition
        .is_none());
    assert_eq!(c.state(), CircuitState::Open);
}

#[test]
fn open_duration_grows_on_repeated_trips_up_to_the_cap_and_resets_on_close() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .open_duration_growth(3.0, Duration::from_millis(500))
            .build()
            .unwrap(),
    );
    let mut now = 0;
    let mut lengths = Vec::new();
    let t = call(&c, FAIL, ms(now)).transition.unwrap();
    lengths.push(t.until.unwrap().0 / MS - now);
    for _ in 0..3 {
        now = t_until(&c, now);
        let probe = c.acquire(ms(now)).unwrap();
        let t = c
            .record(probe.permit, FAIL, Duration::ZERO, ms(now))
            .transition
            .unwrap();
        lengths.push(t.until.unwrap().0 / MS - now);
    }
    assert_eq!(lengths, [100, 300, 500, 500]);
    now = t_until(&c, now);
    let probe = c.acquire(ms(now)).unwrap();
    c.record(probe.permit, Outcome::Success, Duration::ZERO, ms(now));
    let t = call(&c, FAIL, ms(now)).transition.unwrap();
    assert_eq!(
        t.until,
        Some(ms(now + 100)),
        "growth starts over after a close"
    );
}

/// When the open state that is current ends, in ms.
fn t_until(c: &Circuit, after: u64) -> u64 {
    let mut now = after;
    while c.acquire(ms(now)).is_err() {
        now += 1;
    }
    // That acquire took the probe; give it back so the caller takes it.
    let word = c.word.load(Ordering::Acquire);
    let (_, started) = unpack(word);
    c.abandon(Permit::Probe { started });
    now
}

#[test]
fn jitter_keeps_open_durations_within_its_share() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .open_duration_jitter(0.2)
            .build()
            .unwrap(),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let t = call(&c, FAIL, ms(0)).transition.unwrap();
        let open_for = t.until.unwrap().0;
        assert!((80 * MS..=120 * MS + 10).contains(&open_for), "{open_for}");
        seen.insert(open_for);
        c.reset(ms(0));
    }
    assert!(seen.len() > 10, "durations actually vary: {seen:?}");
}

#[test]
fn half_open_that_waits_too_long_opens_again() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .half_open_max_wait(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let _lost = c.acquire(ms(100)).unwrap();
    assert!(c.acquire(ms(149)).is_err());
    let refused = c.acquire(ms(150)).unwrap_err();
    let t = refused.transition.unwrap();
    assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
}

#[test]
fn periods_started_at_the_same_instant_stay_distinct() {
    // A standing clock (tokio's paused one): half-open, then open and
    // half-open again by hand, all at the same instant. The first probe's
    // late verdict must not decide for the second half-open.
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .no_failure_rate()
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    c.transition_to(CircuitState::HalfOpen, ms(5));
    let stale = c.acquire(ms(5)).unwrap();
    c.transition_to(CircuitState::Open, ms(5));
    c.transition_to(CircuitState::HalfOpen, ms(5));
    assert!(c
        .record(stale.permit, Outcome::Success, Duration::ZERO, ms(5))
        .transition
        .is_none());
    assert_eq!(c.state(), CircuitState::HalfOpen);
    let current = c.acquire(ms(5)).unwrap();
    assert_eq!(
        c.record(current.permit, Outcome::Success, Duration::ZERO, ms(5))
            .transition
            .unwrap()
            .to,
        CircuitState::Closed
    );
}

#[test]
fn an_ignored_probe_frees_its_slot_and_says_so() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    let r = c.record(probe.permit, Outcome::Ignored, Duration::ZERO, ms(100));
    assert!(r.probe_slot_freed);
    assert!(matches!(
        c.acquire(ms(100)).unwrap().permit,
        Permit::Probe { .. }
    ));
}

#[test]
fn settled_breakers_are_closed_or_past_their_deadlines() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_max_wait(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    assert!(c.is_settled(ms(0)));
    call(&c, FAIL, ms(0));
    assert!(!c.is_settled(ms(99)));
    assert!(
        c.is_settled(ms(100)),
        "open past its deadline: nobody is protected any more"
    );
    c.transition_to(CircuitState::ForcedOpen, ms(100));
    assert!(!c.is_settled(ms(1_000_000)), "an operator's state is kept");
}

#[test]
fn an_abandoned_probe_gives_its_slot_back() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    assert!(c.acquire(ms(100)).is_err());
    c.abandon(probe.permit);
    let again = c.acquire(ms(101)).unwrap();
    assert!(matches!(again.permit, Permit::Probe { .. }));
    assert!(again.transition.is_none(), "still the same half-open");
}

#[test]
fn a_failure_admitted_before_the_circuit_opened_does_not_count_after_it_closes() {
    let c = Circuit::new(
        config()
            .consecutive_failures(2)
            .no_failure_rate()
            .half_open_probes(1)
            .build()
            .unwrap(),
    );
    let stale = c.acquire(ms(0)).unwrap();
    call(&c, FAIL, ms(0));
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    c.record(probe.permit, Outcome::Success, Duration::ZERO, ms(100));
    assert_eq!(c.state(), CircuitState::Closed);
    assert!(c
        .record(stale.permit, FAIL, Duration::ZERO, ms(101))
        .transition
        .is_none());
    call(&c, FAIL, ms(101));
    assert_eq!(c.state(), CircuitState::Closed, "one failure of two");
}

#[test]
fn operator_states_do_what_they_say() {
    let c = Circuit::new(config().consecutive_failures(1).build().unwrap());
    // Forced open: everything refused, without a deadline, whatever the time.
    let t = c.transition_to(CircuitState::ForcedOpen, ms(0)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (CircuitState::Closed, CircuitState::ForcedOpen)
    );
    let refused = c.acquire(ms(1_000_000)).unwrap_err();
    assert_eq!(
        (refused.state, refused.retry_in),
        (CircuitState::ForcedOpen, None)
    );
    assert!(
        c.transition_to(CircuitState::ForcedOpen, ms(1)).is_none(),
        "no event for no change"
    );

    // Disabled: everything passes, nothing recorded.
    c.transition_to(CircuitState::Disabled, ms(2)).unwrap();
    let before = c.metrics(ms(2));
    for _ in 0..10 {
        assert_eq!(call(&c, FAIL, ms(2)), Recorded::default());
    }
    let after = c.metrics(ms(2));
    assert_eq!(
        (after.failed_total, after.buffered_calls),
        (before.failed_total, 0)
    );
    assert_eq!(c.state(), CircuitState::Disabled);

    // Metrics only: recorded and reported, never tripped.
    c.transition_to(CircuitState::MetricsOnly, ms(3)).unwrap();
    let first = call(&c, FAIL, ms(3));
    assert!(first.transition.is_none());
    for _ in 0..30 {
        call(&c, FAIL, ms(3));
    }
    assert_eq!(c.state(), CircuitState::MetricsOnly);
    let m = c.metrics(ms(3));
    assert_eq!((m.buffered_calls, m.failed_calls), (31, 31));

    // Manual transitions and reset.
    assert_eq!(
        c.transition_to(CircuitState::Open, ms(4)).unwrap().until,
        Some(ms(104))
    );
    assert_eq!(
        c.transition_to(CircuitState::HalfOpen, ms(5)).unwrap().to,
        CircuitState::HalfOpen
    );
    assert_eq!(c.reset(ms(6)).unwrap().to, CircuitState::Closed);
    assert!(c.reset(ms(7)).is_none(), "already closed");
    assert_eq!(
        c.metrics(ms(7)).buffered_calls,
        0,
        "reset empties the window"
    );
    assert_eq!(c.metrics(ms(7)).transitions, 6);
}

#[test]
fn metrics_only_reports_the_rate_crossing_once() {
    let c = Circuit::new(
        config()
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Count { size: 4 })
            .minimum_calls(2)
            .build()
            .unwrap(),
    );
    c.transition_to(CircuitState::MetricsOnly, ms(0));
    call(&c, Outcome::Success, ms(0));
    let crossed = call(&c, FAIL, ms(0));
    assert_eq!(crossed.rate_exceeded, Some((50.0, 0.0)));
    assert_eq!(
        call(&c, FAIL, ms(0)).rate_exceeded,
        None,
        "still above: no repeat"
    );
    call(&c, Outcome::Success, ms(0));
    call(&c, Outcome::Success, ms(0));
    call(&c, Outcome::Success, ms(0)); // window: F S S S = 25%: back under
    assert_eq!(call(&c, FAIL, ms(0)).rate_exceeded, None, "S S S F = 25%");
    assert_eq!(
        call(&c, FAIL, ms(0)).rate_exceeded,
        Some((50.0, 0.0)),
        "S S F F: crossed again"
    );
}

// === The model test ===

/// A reference model of the breaker, written for clarity, not speed: a
/// plain state enum, a `VecDeque` of the last outcomes, and a period
/// counter for telling stale permits apart.
#[derive(Debug)]
struct Model {
    state: CircuitState,
    open_until: u64,
    half_open_since: u64,
    period: u64,
    window: VecDeque<(bool, bool)>,
    consecutive: u32,
    trips: u32,
    admitted: u32,
    succeeded: u32,
    failed: u32,
    slow: u32,
    p: Params,
}

#[derive(Clone, Copy, Debug)]
struct Params {
    consecutive: Option<u32>,
    rate: Option<f64>,
    size: u32,
    min: u32,
    probes: u32,
}

const OPEN_MS: u64 = 100;
const MAX_OPEN_MS: u64 = 400;
const MAX_WAIT_MS: u64 = 250;
const SLOW_MS: u64 = 50;
const SLOW_RATE: f64 = 75.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum ModelPermit {
    Normal(u64),
    Probe(u64),
    Unrecorded,
}

impl Model {
    fn new(p: Params) -> Model {
        Model {
            state: CircuitState::Closed,
            open_until: 0,
            half_open_since: 0,
            period: 0,
            window: VecDeque::new(),
            consecutive: 0,
            trips: 0,
            admitted: 0,
            succeeded: 0,
            failed: 0,
            slow: 0,
            p,
        }
    }

    fn enter(&mut self, state: CircuitState) {
        self.state = state;
        self.period += 1;
    }

    fn trip(&mut self, now: u64) {
        let d = (OPEN_MS << self.trips.min(10)).min(MAX_OPEN_MS);
        self.trips += 1;
        self.open_until = now + d;
        self.enter(CircuitState::Open);
    }

    fn close(&mut self) {
        self.trips = 0;
        self.window.clear();
        self.consecutive = 0;
        self.enter(CircuitState::Closed);
    }

    fn acquire(&mut self, now: u64) -> Option<ModelPermit> {
        match self.state {
            CircuitState::Closed | CircuitState::MetricsOnly => {
                Some(ModelPermit::Normal(self.period))
            }
            CircuitState::Disabled => Some(ModelPermit::Unrecorded),
            CircuitState::ForcedOpen => None,
            CircuitState::Open if now < self.open_until => None,
            CircuitState::Open => {
                self.enter(CircuitState::HalfOpen);
                self.half_open_since = now;
                (self.admitted, self.succeeded, self.failed, self.slow) = (1, 0, 0, 0);
                Some(ModelPermit::Probe(self.period))
            }
            CircuitState::HalfOpen => {
                if now >= self.half_open_since + MAX_WAIT_MS {
                    self.trip(now);
                    None
                } else if self.admitted < self.p.probes {
                    self.admitted += 1;
                    Some(ModelPermit::Probe(self.period))
                } else {
                    None
                }
            }
        }
    }

    fn record(&mut self, permit: ModelPermit, outcome: Outcome, elapsed_ms: u64, now: u64) {
        let failed = matches!(outcome, Outcome::Failure(_));
        let slow = elapsed_ms >= SLOW_MS;
        match permit {
            ModelPermit::Unrecorded => {}
            ModelPermit::Normal(period) => {
                if outcome == Outcome::Ignored || period != self.period {
                    return;
                }
                self.window.push_back((failed, slow));
                if self.window.len() > self.p.size as usize {
                    self.window.pop_front();
                }
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let calls = self.window.len() as f64;
                let fails = self.window.iter().filter(|c| c.0).count() as f64;
                let slows = self.window.iter().filter(|c| c.1).count() as f64;
                let judged = self.window.len() as u32 >= self.p.min;
                let by_rate = judged
                    && (self.p.rate.is_some_and(|r| 100.0 * fails / calls >= r)
                        || 100.0 * slows / calls >= SLOW_RATE);
                let by_count = self.p.consecutive.is_some_and(|n| self.consecutive >= n);
                if self.state == CircuitState::Closed && (by_rate || by_count) {
                    self.trip(now);
                }
            }
            ModelPermit::Probe(period) => {
                if period != self.period {
                    return;
                }
                match outcome {
                    Outcome::Ignored => {
                        self.admitted -= 1;
                        return;
                    }
                    Outcome::Success => self.succeeded += 1,
                    Outcome::Failure(_) => self.failed += 1,
                }
                if slow {
                    self.slow += 1;
                }
                let n = self.p.probes;
                let done = self.succeeded + self.failed;
                // Decide when the share of all n probes is settled: reopen
                // once it must reach a threshold, close once it cannot.
                let fail_needed = self
                    .p
                    .rate
                    .map_or(1, |r| ((r * n as f64 / 100.0).ceil() as u32).clamp(1, n));
                let slow_needed = ((SLOW_RATE * n as f64 / 100.0).ceil() as u32).clamp(1, n);
                if self.failed >= fail_needed || self.slow >= slow_needed {
                    self.trip(now);
                } else if self.failed + (n - done) < fail_needed
                    && self.slow + (n - done) < slow_needed
                {
                    self.close();
                }
            }
        }
    }

    fn abandon(&mut self, permit: ModelPermit) {
        if permit == ModelPermit::Probe(self.period) {
            self.admitted -= 1;
        }
    }

    fn manual(&mut self, target: CircuitState, now: u64) {
        if target == self.state {
            return;
        }
        match target {
            CircuitState::Closed => self.close(),
            CircuitState::Open => {
                self.open_until = now + OPEN_MS;
                self.enter(CircuitState::Open);
            }
            CircuitState::HalfOpen => {
                self.half_open_since = now;
                (self.admitted, self.succeeded, self.failed, self.slow) = (0, 0, 0, 0);
                self.enter(CircuitState::HalfOpen);
            }
            other => self.enter(other),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    Finish(usize, u8, bool),
    Abandon(usize),
    Advance(u64),
    Manual(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), 0u8..3, any::<bool>()).prop_map(|(i, o, s)| Op::Finish(i, o, s)),
        1 => any::<usize>().prop_map(Op::Abandon),
        2 => (0u64..200).prop_map(Op::Advance),
        1 => (0u8..6).prop_map(Op::Manual),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (
        proptest::option::of(1u32..5),
        proptest::option::of(prop_oneof![Just(25.0), Just(50.0), Just(100.0)]),
        1u32..8,
        1u32..4,
    )
        .prop_flat_map(|(consecutive, rate, size, probes)| {
            (1..=size).prop_map(move |min| Params {
                consecutive,
                rate,
                size,
                min,
                probes,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random calls, outcomes, durations, cancellations, clock advances and
    /// operator transitions, applied to the breaker and to the model: the
    /// state, the window's counts and every admission decision agree at
    /// every step.
    #[test]
    fn the_breaker_agrees_with_the_reference_model(p in params(), ops in proptest::collection::vec(op(), 1..300)) {
        let mut builder = BreakerConfig::builder()
            .window(WindowConfig::Count { size: p.size })
            .minimum_calls(p.min)
            .open_duration(Duration::from_millis(OPEN_MS))
            .open_duration_growth(2.0, Duration::from_millis(MAX_OPEN_MS))
            .open_duration_jitter(0.0)
            .half_open_probes(p.probes)
            .half_open_max_wait(Duration::from_millis(MAX_WAIT_MS))
            .slow_calls(Duration::from_millis(SLOW_MS), SLOW_RATE);
        builder = match p.consecutive { Some(n) => builder.consecutive_failures(n), None => builder.no_consecutive_failures() };
        builder = match p.rate { Some(r) => builder.failure_rate_threshold(r), None => builder.no_failure_rate() };
        let c = Circuit::new(builder.build().unwrap());
        let mut m = Model::new(p);
        let mut now = 0u64;
        let mut outstanding: Vec<(Permit, ModelPermit)> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(d) => now += d,
                Op::Acquire => {
                    let real = c.acquire(ms(now));
                    let model = m.acquire(now);
                    prop_assert_eq!(real.is_ok(), model.is_some(), "admission at {} in {:?}", now, m.state);
                    if let (Ok(a), Some(mp)) = (real, model) {
                        let same_kind = matches!(
                            (a.permit, mp),
                            (Permit::Normal { .. }, ModelPermit::Normal(_))
                                | (Permit::Probe { .. }, ModelPermit::Probe(_))
                                | (Permit::Unrecorded, ModelPermit::Unrecorded)
                        );
                        prop_assert!(same_kind, "{:?} vs {:?}", a.permit, mp);
                        outstanding.push((a.permit, mp));
                    }
                }
                Op::Finish(_, _, _) | Op::Abandon(_) if outstanding.is_empty() => {}
                Op::Finish(i, o, slow) => {
                    let (real, model) = outstanding.remove(i % outstanding.len());
                    let outcome = [Outcome::Success, FAIL, Outcome::Ignored][o as usize];
                    let elapsed = if slow { SLOW_MS } else { 0 };
                    c.record(real, outcome, Duration::from_millis(elapsed), ms(now));
                    m.record(model, outcome, elapsed, now);
                }
                Op::Abandon(i) => {
                    let (real, model) = outstanding.remove(i % outstanding.len());
                    c.abandon(real);
                    m.abandon(model);
                }
                Op::Manual(k) => {
                    // A manual move starts a new period; one ms apart keeps
                    // every period's instant distinct, as on a real clock.
                    now += 1;
                    let target = [
                        CircuitState::Closed, CircuitState::Open, CircuitState::HalfOpen,
                        CircuitState::ForcedOpen, CircuitState::Disabled, CircuitState::MetricsOnly,
                    ][k as usize];
                    c.transition_to(target, ms(now));
                    m.manual(target, now);
                }
            }
            prop_assert_eq!(c.state(), m.state);
            if matches!(m.state, CircuitState::Closed | CircuitState::MetricsOnly) {
                let metrics = c.metrics(ms(now));
                prop_assert_eq!(metrics.buffered_calls as usize, m.window.len());
                prop_assert_eq!(metrics.failed_calls as usize, m.window.iter().filter(|c| c.0).count());
                prop_assert_eq!(metrics.slow_calls as usize, m.window.iter().filter(|c| c.1).count());
            }
        }
    }
}
