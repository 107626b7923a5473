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
    assert_eq!(
        (r.failure_rate_exceeded, r.slow_call_rate_exceeded),
        (Some(50.0), None)
    );
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
    assert_eq!(
        (r.failure_rate_exceeded, r.slow_call_rate_exceeded),
        (None, Some(60.0))
    );
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
    c.transition_to(CircuitState::Open, ms(5)).unwrap();
    c.transition_to(CircuitState::HalfOpen, ms(5)).unwrap();
    let stale = c.acquire(ms(5)).unwrap();
    c.transition_to(CircuitState::Open, ms(5)).unwrap();
    c.transition_to(CircuitState::HalfOpen, ms(5)).unwrap();
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
    c.transition_to(CircuitState::ForcedOpen, ms(100)).unwrap();
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
    let t = c
        .transition_to(CircuitState::ForcedOpen, ms(0))
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.from, t.to),
        (CircuitState::Closed, CircuitState::ForcedOpen)
    );
    let refused = c.acquire(ms(1_000_000)).unwrap_err();
    assert_eq!(
        (refused.state, refused.retry_in),
        (CircuitState::ForcedOpen, None)
    );
    assert_eq!(
        c.transition_to(CircuitState::ForcedOpen, ms(1)),
        Ok(None),
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

    // A circuit that never trips has nothing to open for (changed on
    // purpose: METRICS_ONLY to OPEN used to be allowed).
    let refused = c.transition_to(CircuitState::Open, ms(4)).unwrap_err();
    assert_eq!(
        (refused.from(), refused.to()),
        (CircuitState::MetricsOnly, CircuitState::Open)
    );
    assert_eq!(c.state(), CircuitState::MetricsOnly);

    // Manual transitions and reset.
    c.transition_to(CircuitState::Closed, ms(4)).unwrap();
    assert_eq!(
        c.transition_to(CircuitState::Open, ms(4))
            .unwrap()
            .unwrap()
            .until,
        Some(ms(104))
    );
    assert_eq!(
        c.transition_to(CircuitState::HalfOpen, ms(5))
            .unwrap()
            .unwrap()
            .to,
        CircuitState::HalfOpen
    );
    assert_eq!(c.reset(ms(6)).unwrap().to, CircuitState::Closed);
    assert!(c.reset(ms(7)).is_none(), "already closed");
    assert_eq!(
        c.metrics(ms(7)).buffered_calls,
        0,
        "reset empties the window"
    );
    assert_eq!(c.metrics(ms(7)).transitions, 7);
}

#[test]
fn metrics_only_reports_a_rate_crossing_again_only_after_it_fell_back() {
    let c = Circuit::new(
        config()
            .failure_rate_threshold(50.0)
            .slow_calls(Duration::from_millis(100), 50.0)
            .window(WindowConfig::Count { size: 4 })
            .minimum_calls(2)
            .build()
            .unwrap(),
    );
    let slow = |c: &Circuit, outcome: Outcome| {
        let a = c.acquire(ms(0)).unwrap();
        let r = c.record(a.permit, outcome, Duration::from_millis(100), ms(0));
        (r.failure_rate_exceeded, r.slow_call_rate_exceeded)
    };
    let fast = |c: &Circuit, outcome: Outcome| {
        let r = call(c, outcome, ms(0));
        (r.failure_rate_exceeded, r.slow_call_rate_exceeded)
    };
    c.transition_to(CircuitState::MetricsOnly, ms(0)).unwrap();
    assert_eq!(fast(&c, Outcome::Success), (None, None));
    assert_eq!(
        fast(&c, FAIL),
        (Some(50.0), None),
        "S F: only the failure rate crossed"
    );
    // Not repeated while it stays at or above its threshold.
    assert_eq!(fast(&c, FAIL), (None, None), "S F F: 67%, still above");
    assert_eq!(
        slow(&c, Outcome::Success),
        (None, None),
        "S F F S(slow): 50% failed, 25% slow"
    );
    assert_eq!(
        slow(&c, Outcome::Success),
        (None, Some(50.0)),
        "F F S S, two slow: the slow-call rate crosses, on its own"
    );
    assert_eq!(
        slow(&c, FAIL),
        (None, None),
        "F S S F(slow): both still above, no repeat"
    );
    // Back under both thresholds, then over again: a second incident is
    // reported (changed on purpose: a metrics-only breaker, which never
    // changes state, used to report each crossing once for its life).
    for _ in 0..4 {
        assert_eq!(fast(&c, Outcome::Success), (None, None));
    }
    assert_eq!(slow(&c, FAIL), (None, None), "S S S F(slow): 25%");
    assert_eq!(
        slow(&c, FAIL),
        (Some(50.0), Some(50.0)),
        "S S F F, both slow: both cross again"
    );
    assert_eq!(slow(&c, FAIL), (None, None), "75%: still above");
    assert_eq!(c.state(), CircuitState::MetricsOnly);
    // A new state is a new count.
    c.transition_to(CircuitState::Disabled, ms(1)).unwrap();
    c.transition_to(CircuitState::MetricsOnly, ms(2)).unwrap();
    assert_eq!(
        c.metrics(ms(2)).buffered_calls,
        0,
        "entering starts from zero"
    );
    slow(&c, FAIL);
    assert_eq!(slow(&c, FAIL), (Some(100.0), Some(100.0)));
}

#[test]
fn a_probe_reporting_after_the_maximum_wait_does_not_close_the_circuit() {
    // Found by testing: the deadline used to be checked only on the next
    // acquire, so a slow probe with no other call meanwhile closed it.
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .half_open_max_wait(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    let late = c.record(probe.permit, Outcome::Success, Duration::ZERO, ms(150));
    let t = late.transition.unwrap();
    assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
    assert_eq!(c.state(), CircuitState::Open);
}

#[test]
fn half_open_can_be_set_to_close_when_its_maximum_wait_runs_out() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(2)
            .half_open_max_wait(Duration::from_millis(50))
            .half_open_expiry(crate::HalfOpenExpiry::Closed)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    assert_eq!(c.expire(ms(149)), None, "not due");
    let t = c.expire(ms(150)).unwrap();
    assert_eq!(
        (t.from, t.to),
        (CircuitState::HalfOpen, CircuitState::Closed)
    );
    // The probe's late failure belongs to a state that is over.
    assert!(c
        .record(probe.permit, FAIL, Duration::ZERO, ms(151))
        .transition
        .is_none());
    assert_eq!(c.state(), CircuitState::Closed);
    // Lazily too: a call after the wait is admitted by a closed circuit.
    call(&c, FAIL, ms(200));
    c.acquire(ms(300)).unwrap();
    let admitted = c.acquire(ms(400)).unwrap();
    assert_eq!(admitted.transition.unwrap().to, CircuitState::Closed);
    assert!(matches!(admitted.permit, Permit::Normal { .. }));
}

#[test]
fn automatic_half_open_moves_on_expire_with_no_probe_taken() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .automatic_half_open(true)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    assert_eq!(c.next_deadline(), Some(ms(100)));
    assert_eq!(c.expire(ms(99)), None);
    let t = c.expire(ms(100)).unwrap();
    assert_eq!((t.from, t.to), (CircuitState::Open, CircuitState::HalfOpen));
    // Changed on purpose: the maximum wait used to run from here, so an
    // idle half-open reopened; it now starts with the first probe.
    assert_eq!(t.until, None, "no deadline before the first probe");
    assert_eq!(c.next_deadline(), None);
    let probe = c.acquire(ms(101)).unwrap();
    assert!(probe.transition.is_none(), "already half-open");
    let deadline = ms(101).saturating_add(Duration::from_secs(30));
    assert_eq!(
        probe.probes_exhausted,
        Some(deadline),
        "the one probe was still free"
    );
    assert_eq!(probe.max_wait_until, Some(deadline), "its wait starts now");
    assert_eq!(c.next_deadline(), Some(deadline));

    // Without it, expire leaves OPEN to the next call.
    let manual = Circuit::new(config().consecutive_failures(1).build().unwrap());
    call(&manual, FAIL, ms(0));
    assert_eq!(manual.next_deadline(), None);
    assert_eq!(manual.expire(ms(1000)), None);
    assert_eq!(manual.state(), CircuitState::Open);
}

#[test]
fn an_idle_half_open_waits_for_its_first_probe_without_reopening_or_growing() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(2)
            .half_open_max_wait(Duration::from_millis(50))
            .open_duration_growth(2.0, Duration::from_secs(60))
            .automatic_half_open(true)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    assert_eq!(c.expire(ms(100)).unwrap().to, CircuitState::HalfOpen);
    // A whole night with no call: nothing falls due, nothing changes.
    for now in [150, 1_000, 36_000_000] {
        assert_eq!(c.expire(ms(now)), None, "at {now} ms");
        assert_eq!(c.next_deadline(), None);
        assert!(c.is_settled(ms(now)), "nothing depends on it");
    }
    assert_eq!(c.state(), CircuitState::HalfOpen);
    assert_eq!(
        c.metrics(ms(0)).transitions,
        2,
        "CLOSED-OPEN-HALF_OPEN only"
    );
    // The first probe starts the wait; a second one does not move it.
    let night = 36_000_000;
    let first = c.acquire(ms(night)).unwrap();
    assert_eq!(first.max_wait_until, Some(ms(night + 50)));
    let second = c.acquire(ms(night + 10)).unwrap();
    assert_eq!(second.max_wait_until, None, "already running");
    assert_eq!(second.probes_exhausted, Some(ms(night + 50)));
    assert!(!c.is_settled(ms(night + 49)));
    // Both hang: the wait still ends them, and the open duration has
    // grown once (the second trip in a row), not once per quiet cycle.
    let t = c.expire(ms(night + 50)).unwrap();
    assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
    assert_eq!(t.until, Some(ms(night + 50 + 200)));
}

#[test]
fn the_maximum_wait_is_off_again_when_every_probe_is_given_back() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .half_open_max_wait(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    assert_eq!(probe.max_wait_until, Some(ms(150)));
    let r = c.record(probe.permit, Outcome::Ignored, Duration::ZERO, ms(120));
    assert!(r.probe_slot_freed);
    assert_eq!(c.next_deadline(), None, "no probe out, none reported");
    assert_eq!(c.expire(ms(1_000)), None);
    assert_eq!(c.state(), CircuitState::HalfOpen);
    // The next probe starts it afresh; a cancelled one gives it back too.
    let probe = c.acquire(ms(1_000)).unwrap();
    assert_eq!(probe.max_wait_until, Some(ms(1_050)));
    c.abandon(probe.permit);
    assert_eq!(c.next_deadline(), None);
    let probe = c.acquire(ms(2_000)).unwrap();
    assert_eq!(probe.max_wait_until, Some(ms(2_050)));
    let t = c
        .record(probe.permit, Outcome::Success, Duration::ZERO, ms(2_049))
        .transition
        .unwrap();
    assert_eq!(t.to, CircuitState::Closed);
}

#[test]
fn a_refused_opening_keeps_the_circuit_closed_and_counts_afresh() {
    let c = Circuit::new(
        config()
            .consecutive_failures(2)
            .no_failure_rate()
            .build()
            .unwrap(),
    );
    let record = |c: &Circuit, permit, now, may_open: bool| {
        let asked = std::cell::Cell::new(None);
        let r = c.record_gated(
            permit,
            FAIL,
            Duration::ZERO,
            || ms(now),
            |until| {
                asked.set(Some(until));
                may_open
            },
        );
        (r, asked.get())
    };
    let before = c.acquire(ms(0)).unwrap();
    call(&c, FAIL, ms(0));
    let (r, asked) = record(&c, c.acquire(ms(1)).unwrap().permit, 1, false);
    assert_eq!(asked, Some(ms(101)), "asked with the end OPEN would have");
    assert!(r.opening_held);
    assert_eq!(r.transition, None, "no state change");
    assert_eq!(c.state(), CircuitState::Closed);
    let m = c.metrics(ms(1));
    assert_eq!((m.buffered_calls, m.transitions), (0, 0), "a fresh window");
    // A call admitted before counts no more, and the streak starts over.
    let (r, asked) = record(&c, before.permit, 2, false);
    assert_eq!((r, asked), (Recorded::default(), None));
    let (r, asked) = record(&c, c.acquire(ms(2)).unwrap().permit, 2, false);
    assert_eq!((r.opening_held, asked), (false, None), "one of two");
    let (r, _) = record(&c, c.acquire(ms(3)).unwrap().permit, 3, true);
    assert_eq!(r.transition.unwrap().to, CircuitState::Open);
}

#[test]
fn a_failed_probe_whose_opening_is_refused_closes_the_circuit() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .half_open_probes(1)
            .half_open_max_wait(Duration::from_millis(50))
            .open_duration_growth(2.0, Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probe = c.acquire(ms(100)).unwrap();
    let r = c.record_gated(probe.permit, FAIL, Duration::ZERO, || ms(101), |_| false);
    assert!(r.opening_held);
    let t = r.transition.unwrap();
    assert_eq!(
        (t.from, t.to),
        (CircuitState::HalfOpen, CircuitState::Closed)
    );
    // Closed for good: the next trip is a first one, not grown.
    let t = call(&c, FAIL, ms(200)).transition.unwrap();
    assert_eq!(t.until, Some(ms(300)));
    // A late verdict ending HALF_OPEN in OPEN is asked too.
    let probe = c.acquire(ms(300)).unwrap();
    let r = c.record_gated(
        probe.permit,
        Outcome::Success,
        Duration::ZERO,
        || ms(350),
        |_| false,
    );
    assert!(r.opening_held);
    assert_eq!(r.transition.unwrap().to, CircuitState::Closed);
}

#[test]
fn judging_all_probes_waits_for_the_last_one() {
    let c = Circuit::new(
        config()
            .consecutive_failures(1)
            .failure_rate_threshold(50.0)
            .half_open_probes(4)
            .half_open_verdict(crate::ProbeVerdict::AfterAllProbes)
            .build()
            .unwrap(),
    );
    call(&c, FAIL, ms(0));
    let probes: Vec<_> = (0..4).map(|_| c.acquire(ms(100)).unwrap()).collect();
    // Two failures already reach 50% of 4, but the others are judged too.
    for (probe, outcome) in probes[..3].iter().zip([FAIL, FAIL, Outcome::Success]) {
        assert!(c
            .record(probe.permit, outcome, Duration::ZERO, ms(101))
            .transition
            .is_none());
    }
    let m = c.metrics(ms(101));
    assert_eq!(
        (m.state, m.buffered_calls, m.failed_calls),
        (CircuitState::HalfOpen, 3, 2)
    );
    let t = c.record(probes[3].permit, Outcome::Success, Duration::ZERO, ms(102));
    assert_eq!(
        t.transition.unwrap().to,
        CircuitState::Open,
        "2 of 4 failed: 50%"
    );
}

#[test]
fn each_state_shows_its_own_calls() {
    let c = Circuit::new(
        config()
            .consecutive_failures(3)
            .half_open_probes(2)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        call(&c, FAIL, ms(0));
    }
    let open = c.metrics(ms(1));
    assert_eq!(
        (open.state, open.buffered_calls, open.failure_rate),
        (CircuitState::Open, 0, None),
        "OPEN admitted no call"
    );
    assert_eq!(open.failed_total, 3, "totals are kept");
    let probe = c.acquire(ms(100)).unwrap();
    c.record(probe.permit, Outcome::Success, Duration::ZERO, ms(100));
    let half = c.metrics(ms(100));
    assert_eq!(
        (
            half.state,
            half.buffered_calls,
            half.failed_calls,
            half.failure_rate
        ),
        (CircuitState::HalfOpen, 1, 0, Some(0.0)),
        "the probes, not the window that tripped"
    );
    for state in [CircuitState::ForcedOpen, CircuitState::Disabled] {
        c.transition_to(state, ms(101)).unwrap();
        assert_eq!(c.metrics(ms(101)).buffered_calls, 0, "{state}");
    }
}

#[test]
fn manual_opening_for_a_duration_or_until_an_instant() {
    let c = Circuit::new(config().build().unwrap());
    let t = c.open_until(ms(500)).unwrap();
    assert_eq!(
        (t.from, t.to, t.until),
        (CircuitState::Closed, CircuitState::Open, Some(ms(500)))
    );
    assert_eq!(
        c.acquire(ms(400)).unwrap_err().retry_in,
        Some(Duration::from_millis(100))
    );
    let moved = c.open_until(ms(200)).unwrap();
    assert_eq!(
        (moved.from, moved.to),
        (CircuitState::Open, CircuitState::Open),
        "a new end, no new state"
    );
    assert_eq!(c.metrics(ms(0)).transitions, 1);
    assert!(c.acquire(ms(200)).is_ok(), "probes at the new end");
    c.transition_to(CircuitState::MetricsOnly, ms(201)).unwrap();
    let refused = c.open_until(ms(900)).unwrap_err();
    assert_eq!(
        (refused.from(), refused.to()),
        (CircuitState::MetricsOnly, CircuitState::Open)
    );
}

#[test]
fn forbidden_manual_transitions_are_refused_naming_both_states() {
    use CircuitState::*;
    let all = [Closed, Open, HalfOpen, ForcedOpen, Disabled, MetricsOnly];
    for from in all {
        for to in all {
            let c = Circuit::new(config().build().unwrap());
            // Reach `from` by an allowed path.
            match from {
                Closed => {}
                HalfOpen => {
                    c.transition_to(Open, ms(1)).unwrap();
                    c.transition_to(HalfOpen, ms(2)).unwrap();
                }
                other => {
                    c.transition_to(other, ms(1)).unwrap();
                }
            }
            assert_eq!(c.state(), from);
            let forbidden = matches!(
                (from, to),
                (Closed, HalfOpen) | (MetricsOnly, Open) | (MetricsOnly, HalfOpen)
            );
            match c.transition_to(to, ms(3)) {
                Err(e) => {
                    assert!(forbidden, "{from} -> {to} refused");
                    assert_eq!((e.from(), e.to()), (from, to));
                    assert!(
                        e.to_string().contains(&format!("from {from} to {to}")),
                        "{e}"
                    );
                    assert_eq!(c.state(), from, "left as it was");
                }
                Ok(t) => {
                    assert!(!forbidden, "{from} -> {to} allowed");
                    assert_eq!(t.is_none(), from == to);
                    assert_eq!(c.state(), to);
                }
            }
        }
    }
}

// === The model test ===

/// A reference model of the breaker, written for clarity, not speed: a
/// plain state enum, a `VecDeque` of the last outcomes, and a period
/// counter for telling stale permits apart.
#[derive(Debug)]
struct Model {
    state: CircuitState,
    open_until: u64,
    /// HALF_OPEN's maximum wait: from its first probe, off while none is
    /// out and none reported.
    wait_until: Option<u64>,
    period: u64,
    window: VecDeque<(bool, bool)>,
    consecutive: u32,
    trips: u32,
    admitted: u32,
    succeeded: u32,
    failed: u32,
    slow: u32,
    failure_crossed: bool,
    slow_crossed: bool,
    p: Params,
}

#[derive(Clone, Copy, Debug)]
struct Params {
    consecutive: Option<u32>,
    rate: Option<f64>,
    size: u32,
    min: u32,
    probes: u32,
    automatic: bool,
    expiry_closes: bool,
    all_probes: bool,
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
            wait_until: None,
            period: 0,
            window: VecDeque::new(),
            consecutive: 0,
            trips: 0,
            admitted: 0,
            succeeded: 0,
            failed: 0,
            slow: 0,
            failure_crossed: false,
            slow_crossed: false,
            p,
        }
    }

    /// Every state starts its measures from zero.
    fn enter(&mut self, state: CircuitState) {
        self.state = state;
        self.period += 1;
        self.window.clear();
        self.consecutive = 0;
        (self.failure_crossed, self.slow_crossed) = (false, false);
    }

    fn trip(&mut self, now: u64) {
        let d = (OPEN_MS << self.trips.min(10)).min(MAX_OPEN_MS);
        self.trips += 1;
        self.open_until = now + d;
        self.enter(CircuitState::Open);
    }

    fn close(&mut self) {
        self.trips = 0;
        self.enter(CircuitState::Closed);
    }

    fn half_open(&mut self, now: u64, admitted: u32) {
        self.enter(CircuitState::HalfOpen);
        self.wait_until = (admitted > 0).then_some(now + MAX_WAIT_MS);
        (self.admitted, self.succeeded, self.failed, self.slow) = (admitted, 0, 0, 0);
    }

    fn half_open_expired(&self, now: u64) -> bool {
        self.state == CircuitState::HalfOpen && self.wait_until.is_some_and(|w| now >= w)
    }

    /// A probe's slot comes back without a verdict.
    fn give_back(&mut self) {
        self.admitted -= 1;
        if self.admitted == 0 {
            self.wait_until = None;
        }
    }

    fn end_half_open(&mut self, now: u64) {
        if self.p.expiry_closes {
            self.close();
        } else {
            self.trip(now);
        }
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
                self.half_open(now, 1);
                Some(ModelPermit::Probe(self.period))
            }
            CircuitState::HalfOpen => {
                if self.half_open_expired(now) {
                    self.end_half_open(now);
                    return (self.state == CircuitState::Closed)
                        .then_some(ModelPermit::Normal(self.period));
                }
                if self.admitted < self.p.probes {
                    self.admitted += 1;
                    self.wait_until.get_or_insert(now + MAX_WAIT_MS);
                    Some(ModelPermit::Probe(self.period))
                } else {
                    None
                }
            }
        }
    }

    /// The timer: deadlines that fell due.
    fn expire(&mut self, now: u64) {
        if self.state == CircuitState::Open && self.p.automatic && now >= self.open_until {
            self.half_open(now, 0);
        } else if self.half_open_expired(now) {
            self.end_half_open(now);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        match self.state {
            CircuitState::Open if self.p.automatic => Some(self.open_until),
            CircuitState::HalfOpen => self.wait_until,
            _ => None,
        }
    }

    /// Records an outcome; returns the (failure, slow-call) rate crossings
    /// it reported.
    fn record(
        &mut self,
        permit: ModelPermit,
        outcome: Outcome,
        elapsed_ms: u64,
        now: u64,
    ) -> (bool, bool) {
        let failed = matches!(outcome, Outcome::Failure(_));
        let slow = elapsed_ms >= SLOW_MS;
        match permit {
            ModelPermit::Unrecorded => (false, false),
            ModelPermit::Normal(period) => {
                if outcome == Outcome::Ignored || period != self.period {
                    return (false, false);
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
                let by_failures = judged && self.p.rate.is_some_and(|r| 100.0 * fails / calls >= r);
                let by_slow = judged && 100.0 * slows / calls >= SLOW_RATE;
                // Reported on reaching the threshold, re-armed below it.
                let was = (
                    std::mem::replace(&mut self.failure_crossed, by_failures),
                    std::mem::replace(&mut self.slow_crossed, by_slow),
                );
                let reported = (by_failures && !was.0, by_slow && !was.1);
                let by_count = self.p.consecutive.is_some_and(|n| self.consecutive >= n);
                if self.state == CircuitState::Closed && (by_failures || by_slow || by_count) {
                    self.trip(now);
                }
                reported
            }
            ModelPermit::Probe(period) => {
                if period != self.period {
                    return (false, false);
                }
                if self.half_open_expired(now) {
                    // Late: the maximum wait decides, not this probe.
                    self.end_half_open(now);
                    return (false, false);
                }
                match outcome {
                    Outcome::Ignored => {
                        self.give_back();
                        return (false, false);
                    }
                    Outcome::Success => self.succeeded += 1,
                    Outcome::Failure(_) => self.failed += 1,
                }
                if slow {
                    self.slow += 1;
                }
                let n = self.p.probes;
                let done = self.succeeded + self.failed;
                // The share of all n probes: reopen once it must reach a
                // threshold, close once it cannot (early), or judge once
                // all reported.
                let fail_needed = self
                    .p
                    .rate
                    .map_or(1, |r| ((r * n as f64 / 100.0).ceil() as u32).clamp(1, n));
                let slow_needed = ((SLOW_RATE * n as f64 / 100.0).ceil() as u32).clamp(1, n);
                let reopen = self.failed >= fail_needed || self.slow >= slow_needed;
                let decided = if self.p.all_probes {
                    done == n
                } else {
                    reopen
                        || (self.failed + (n - done) < fail_needed
                            && self.slow + (n - done) < slow_needed)
                };
                match (decided, reopen) {
                    (true, true) => self.trip(now),
                    (true, false) => self.close(),
                    _ => {}
                }
                (false, false)
            }
        }
    }

    fn abandon(&mut self, permit: ModelPermit) {
        if permit == ModelPermit::Probe(self.period) {
            self.give_back();
        }
    }

    /// A manual move; `false` if the state machine forbids it.
    fn manual(&mut self, target: CircuitState, now: u64) -> bool {
        use CircuitState::*;
        if target == self.state {
            return true;
        }
        if matches!(
            (self.state, target),
            (Closed, HalfOpen) | (MetricsOnly, Open) | (MetricsOnly, HalfOpen)
        ) {
            return false;
        }
        match target {
            Closed => self.close(),
            Open => {
                self.open_until = now + OPEN_MS;
                self.enter(Open);
            }
            HalfOpen => self.half_open(now, 0),
            other => self.enter(other),
        }
        true
    }

    /// What the state's metrics show: (calls, failed, slow).
    fn counts(&self) -> (usize, usize, usize) {
        match self.state {
            CircuitState::Closed | CircuitState::MetricsOnly => (
                self.window.len(),
                self.window.iter().filter(|c| c.0).count(),
                self.window.iter().filter(|c| c.1).count(),
            ),
            CircuitState::HalfOpen => (
                (self.succeeded + self.failed) as usize,
                self.failed as usize,
                self.slow as usize,
            ),
            _ => (0, 0, 0),
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
    /// The timer fires (it may fire late, or find nothing due).
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), 0u8..3, any::<bool>()).prop_map(|(i, o, s)| Op::Finish(i, o, s)),
        1 => any::<usize>().prop_map(Op::Abandon),
        2 => (0u64..200).prop_map(Op::Advance),
        1 => (0u8..6).prop_map(Op::Manual),
        1 => Just(Op::Expire),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (
        proptest::option::of(1u32..5),
        proptest::option::of(prop_oneof![Just(25.0), Just(50.0), Just(100.0)]),
        1u32..8,
        1u32..4,
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_flat_map(
            |(consecutive, rate, size, probes, (automatic, expiry_closes, all_probes))| {
                (1..=size).prop_map(move |min| Params {
                    consecutive,
                    rate,
                    size,
                    min,
                    probes,
                    automatic,
                    expiry_closes,
                    all_probes,
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random calls, outcomes, durations, cancellations, clock advances,
    /// timer firings and operator transitions, applied to the breaker and
    /// to the model: the state, the state's own counts, the next deadline,
    /// every admission decision, every refused manual move and every rate
    /// crossing reported (once, then again only after the rate fell back
    /// below its threshold or the state changed) agree at every step.
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
            .slow_calls(Duration::from_millis(SLOW_MS), SLOW_RATE)
            .automatic_half_open(p.automatic)
            .half_open_expiry(if p.expiry_closes { crate::HalfOpenExpiry::Closed } else { crate::HalfOpenExpiry::Open })
            .half_open_verdict(if p.all_probes { crate::ProbeVerdict::AfterAllProbes } else { crate::ProbeVerdict::Early });
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
                    let r = c.record(real, outcome, Duration::from_millis(elapsed), ms(now));
                    let crossings = m.record(model, outcome, elapsed, now);
                    prop_assert_eq!(
                        (r.failure_rate_exceeded.is_some(), r.slow_call_rate_exceeded.is_some()),
                        crossings,
                        "rate crossings reported"
                    );
                }
                Op::Abandon(i) => {
                    let (real, model) = outstanding.remove(i % outstanding.len());
                    c.abandon(real);
                    m.abandon(model);
                }
                Op::Expire => {
                    let t = c.expire(ms(now));
                    let before = m.state;
                    m.expire(now);
                    prop_assert_eq!(t.is_some(), before != m.state, "expiry at {} in {:?}", now, before);
                }
                Op::Manual(k) => {
                    // A manual move starts a new period; one ms apart keeps
                    // every period's instant distinct, as on a real clock.
                    now += 1;
                    let target = [
                        CircuitState::Closed, CircuitState::Open, CircuitState::HalfOpen,
                        CircuitState::ForcedOpen, CircuitState::Disabled, CircuitState::MetricsOnly,
                    ][k as usize];
                    let real = c.transition_to(target, ms(now));
                    let allowed = m.manual(target, now);
                    prop_assert_eq!(real.is_ok(), allowed, "{:?} -> {:?}", c.state(), target);
                }
            }
            prop_assert_eq!(c.state(), m.state);
            prop_assert_eq!(c.next_deadline(), m.next_deadline().map(ms));
            let metrics = c.metrics(ms(now));
            prop_assert_eq!(
                (metrics.buffered_calls as usize, metrics.failed_calls as usize, metrics.slow_calls as usize),
                m.counts(),
                "the counts of {:?}", m.state
            );
        }
    }
}
