//! The circuit state machine, with no tower in it.
//!
//! ```text
//!            trip condition met                 open duration over
//!   CLOSED ----------------------> OPEN ----------------------------> HALF_OPEN
//!     ^                             ^  (on a timer if automatic,         |
//!     |                             |   else the next call probes)       |
//!     |                             +--- probes fail, or max wait over --+
//!     +------------- probes succeed (or max wait over, if so set) -------+
//!
//!   operator states, entered and left only by hand:
//!   FORCED_OPEN (refuse all)   DISABLED (pass all, record nothing)
//!   METRICS_ONLY (pass all, record, never trip)
//! ```
//!
//! The state and the instant it refers to (when CLOSED or an operator
//! state began, when OPEN ends, when HALF_OPEN began) are packed into one
//! `AtomicU64`. The closed path reads that word and records outcomes in
//! atomics, with no lock and no allocation. Every permit carries the
//! instant of the state that issued it, so the late outcome of a call
//! from an earlier period (admitted before the circuit opened, or a probe
//! of an earlier half-open) is ignored instead of counting against the
//! current one.
//!
//! Each state measures its own calls: entering any state starts its
//! window, failure streak and rate crossings from zero (totals since the
//! breaker was created are kept), HALF_OPEN counts its probes, and OPEN,
//! FORCED_OPEN and DISABLED, which record nothing, show nothing.
//!
//! HALF_OPEN's maximum wait runs from the first probe's admission, not
//! from the state's start: it bounds how long probes may take, so a
//! half-open circuit that no call reaches (an idle endpoint moved there by
//! the timer) waits for its first probe with no deadline, instead of
//! reopening (and growing its open duration) for want of traffic. If
//! every probe out is given back before any verdict (cancelled, or its
//! outcome ignored), the wait is off again until the next one.
//!
//! The deadlines (the end of OPEN, HALF_OPEN's maximum wait) are applied
//! by whoever comes first: the next call, a probe's late verdict (which
//! then decides nothing), or [`Circuit::expire`], which the layer calls on
//! a timer at [`Circuit::next_deadline`]. The circuit itself knows no
//! timer and no executor.
//!
//! Everything else (tripping, half-open admission, operator transitions)
//! takes a small mutex, held for a few instructions and never across an
//! await. That is what makes "exactly N probes, under any concurrency" a
//! plain comparison instead of a lock-free puzzle, and it costs nothing
//! while the circuit is closed and healthy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mesh_core::clock::Nanos;
use mesh_core::{CircuitState, Outcome};

use crate::config::{BreakerConfig, HalfOpenExpiry, ProbeVerdict};
use crate::error::IllegalTransition;
use crate::window::{Window, WindowCounts};

#[cfg(test)]
mod tests;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const METRICS_ONLY: u64 = 5;
const STATE_BITS: u32 = 3;

fn pack(state: u64, at: Nanos) -> u64 {
    // 61 bits of nanoseconds cover 73 years of process uptime.
    (at.0.min(u64::MAX >> STATE_BITS) << STATE_BITS) | state
}

fn unpack(word: u64) -> (u64, Nanos) {
    (word & 0b111, Nanos(word >> STATE_BITS))
}

fn state_of(bits: u64) -> CircuitState {
    match bits {
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        FORCED_OPEN => CircuitState::ForcedOpen,
        DISABLED => CircuitState::Disabled,
        METRICS_ONLY => CircuitState::MetricsOnly,
        _ => CircuitState::Closed,
    }
}

fn bits_of(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => CLOSED,
        CircuitState::Open => OPEN,
        CircuitState::HalfOpen => HALF_OPEN,
        CircuitState::ForcedOpen => FORCED_OPEN,
        CircuitState::Disabled => DISABLED,
        CircuitState::MetricsOnly => METRICS_ONLY,
    }
}

/// What a caller was allowed to do; hand it back with the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// A call through a closed (or metrics-only) circuit.
    Normal {
        /// When the state that admitted it began.
        period: Nanos,
    },
    /// A half-open probe.
    Probe {
        /// When the half-open state that admitted it began.
        started: Nanos,
    },
    /// A call through a disabled circuit: nothing is recorded.
    Unrecorded,
}

/// A state change. `from` and `to` are equal only for a new deadline of
/// an OPEN circuit ([`Circuit::open_until`] while open), which is not a
/// state change and publishes no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
    /// For OPEN, when it ends; for HALF_OPEN entered with a probe, the
    /// latest it lasts (`None` when entered with none: its maximum wait
    /// starts with its first probe, see [`Admitted::max_wait_until`]).
    pub until: Option<Nanos>,
}

/// A call the circuit let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Hand it back to [`Circuit::record`] or [`Circuit::abandon`].
    pub permit: Permit,
    /// The transition this admission caused (OPEN to HALF_OPEN).
    pub transition: Option<Transition>,
    /// This was the last probe HALF_OPEN admits: until they report, the
    /// endpoint may as well be skipped by the balancer.
    pub probes_exhausted: Option<Nanos>,
    /// This was the first probe out: HALF_OPEN's maximum wait started with
    /// it and runs out at this instant (for [`Circuit::expire`] on a
    /// timer). Also set when the admission entered HALF_OPEN.
    pub max_wait_until: Option<Nanos>,
}

/// A call the circuit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The state that refused it.
    pub state: CircuitState,
    /// The longest until a call may pass again; `None` while an operator
    /// holds the circuit open.
    pub retry_in: Option<Duration>,
    /// A transition the refusal caused (HALF_OPEN to OPEN when the probes
    /// took longer than the maximum wait).
    pub transition: Option<Transition>,
}

/// What recording an outcome caused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recorded {
    /// The transition it caused, if any.
    pub transition: Option<Transition>,
    /// A half-open probe's slot was given back (its outcome was ignored):
    /// another call may probe, so an endpoint ejected because every probe
    /// was out should take traffic again.
    pub probe_slot_freed: bool,
    /// The window's failure rate in percent, when this call made it reach
    /// its threshold: the first time in the current state, or the first
    /// time since it fell back below.
    pub failure_rate_exceeded: Option<f64>,
    /// The window's slow-call rate in percent, when this call made it
    /// reach its threshold: the first time in the current state, or the
    /// first time since it fell back below.
    pub slow_call_rate_exceeded: Option<f64>,
    /// The circuit would have opened, but the check given to
    /// [`Circuit::record_gated`] refused: it is CLOSED with a fresh window
    /// instead (from HALF_OPEN, `transition` says so; from CLOSED, there is
    /// no state change and no transition).
    pub opening_held: bool,
}

/// A snapshot of one breaker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerMetrics {
    /// The state now. The window's figures are this state's own: entering
    /// a state starts them from zero.
    pub state: CircuitState,
    /// Failed calls in the window, in percent (`None` with no call).
    pub failure_rate: Option<f64>,
    /// Slow calls in the window, in percent (`None` with no call).
    pub slow_call_rate: Option<f64>,
    /// Calls in the window (in HALF_OPEN, probes that reported; in OPEN,
    /// FORCED_OPEN and DISABLED, none: those states record nothing).
    pub buffered_calls: u32,
    /// Failed calls in the window (in HALF_OPEN, failed probes).
    pub failed_calls: u32,
    /// Slow calls in the window (in HALF_OPEN, slow probes).
    pub slow_calls: u32,
    /// Calls that succeeded, since the breaker was created.
    pub successful_total: u64,
    /// Calls that failed, since the breaker was created.
    pub failed_total: u64,
    /// Calls whose outcome was ignored, since the breaker was created.
    pub ignored_total: u64,
    /// Calls refused, since the breaker was created.
    pub rejected_total: u64,
    /// State transitions, since the breaker was created.
    pub transitions: u64,
    /// Transitions into OPEN or FORCED_OPEN, since the breaker was
    /// created: for a per-endpoint breaker, the ejections of its endpoint.
    pub opened_total: u64,
}

#[derive(Debug, Default)]
struct Totals {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    rejected: AtomicU64,
    transitions: AtomicU64,
    opened: AtomicU64,
}

/// What only the slow path touches, under the mutex.
#[derive(Debug, Default)]
struct Control {
    /// Trips since the circuit last closed, for the growing open duration.
    trips: u32,
    half_open: Probes,
    /// The start of the last period whose permits are recorded (CLOSED,
    /// HALF_OPEN, METRICS_ONLY): the next one starts strictly later, so two
    /// periods never share a word even when the clock stands still
    /// (tokio's paused clock, a coarse clock).
    last_at: u64,
}

#[derive(Debug, Default)]
struct Probes {
    /// Probes holding a slot: out, or reported with a verdict.
    admitted: u32,
    succeeded: u32,
    failed: u32,
    slow: u32,
    /// When the maximum wait runs out: set by the first admission, cleared
    /// when every slot is given back before a verdict. `None` while no
    /// probe has been admitted: an idle HALF_OPEN has no deadline.
    wait_until: Option<Nanos>,
}

// === impl Probes ===

impl Probes {
    /// A probe's slot comes back with no verdict (cancelled, or ignored).
    /// With none left out and none reported, the maximum wait is off
    /// again: the next probe starts it afresh.
    fn give_back(&mut self) {
        self.admitted = self.admitted.saturating_sub(1);
        if self.admitted == 0 {
            self.wait_until = None;
        }
    }
}

/// One circuit breaker.
#[derive(Debug)]
pub struct Circuit {
    config: BreakerConfig,
    word: AtomicU64,
    consecutive_failures: AtomicU32,
    window: Window,
    /// The failure rate is at or above its threshold and was reported;
    /// cleared when it falls back below (or the state changes).
    failure_rate_crossed: AtomicBool,
    /// The slow-call rate is at or above its threshold and was reported;
    /// cleared when it falls back below (or the state changes).
    slow_call_rate_crossed: AtomicBool,
    totals: Totals,
    control: Mutex<Control>,
}

// === impl Circuit ===

impl Circuit {
    /// A closed circuit.
    pub fn new(config: BreakerConfig) -> Self {
        Circuit {
            window: Window::new(config.window()),
            config,
            word: AtomicU64::new(pack(CLOSED, Nanos::ZERO)),
            consecutive_failures: AtomicU32::new(0),
            failure_rate_crossed: AtomicBool::new(false),
            slow_call_rate_crossed: AtomicBool::new(false),
            totals: Totals::default(),
            control: Mutex::new(Control::default()),
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        state_of(unpack(self.word.load(Ordering::Acquire)).0)
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding this lock cannot leave the counters in a
        // state worse than stale; keep serving.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call at `now`.
    pub fn acquire(&self, now: Nanos) -> Result<Admitted, Rejected> {
        self.acquire_with(|| now)
    }

    /// [`Circuit::acquire`], reading the clock only if the state needs it:
    /// a closed circuit admits without knowing the time.
    pub fn acquire_with(&self, clock: impl Fn() -> Nanos) -> Result<Admitted, Rejected> {
        let word = self.word.load(Ordering::Acquire);
        let (state, at) = unpack(word);
        match state {
            CLOSED | METRICS_ONLY => Ok(Admitted {
                permit: Permit::Normal { period: at },
                transition: None,
                probes_exhausted: None,
                max_wait_until: None,
            }),
            DISABLED => Ok(Admitted {
                permit: Permit::Unrecorded,
                transition: None,
                probes_exhausted: None,
                max_wait_until: None,
            }),
            FORCED_OPEN => Err(self.reject(CircuitState::ForcedOpen, None, None)),
            _ => {
                let now = clock();
                if state == OPEN && now < at {
                    return Err(self.reject(
                        CircuitState::Open,
                        Some(at.saturating_since(now)),
                        None,
                    ));
                }
                self.acquire_slow(now)
            }
        }
    }

    fn reject(
        &self,
        state: CircuitState,
        retry_in: Option<Duration>,
        transition: Option<Transition>,
    ) -> Rejected {
        self.totals.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected {
            state,
            retry_in,
            transition,
        }
    }

    /// OPEN past its deadline, or HALF_OPEN: decided under the lock.
    fn acquire_slow(&self, now: Nanos) -> Result<Admitted, Rejected> {
        let mut control = self.control();
        let word = self.word.load(Ordering::Acquire);
        let (state, at) = unpack(word);
        let probes = self.config.half_open_probes();
        let max_wait = self.config.half_open_max_wait();
        match state {
            OPEN if now >= at => {
                let transition = self.enter_half_open(&mut control, now, 1);
                let started = unpack(self.word.load(Ordering::Acquire)).1;
                let deadline = control.half_open.wait_until;
                Ok(Admitted {
                    permit: Permit::Probe { started },
                    transition: Some(transition),
                    probes_exhausted: deadline.filter(|_| probes == 1),
                    max_wait_until: deadline,
                })
            }
            HALF_OPEN => {
                if control.half_open.wait_until.is_some_and(|d| now >= d) {
                    // The probes took too long: leave as configured.
                    let transition = self.expire_half_open(&mut control, now, |_| true);
                    let (state, at) = unpack(self.word.load(Ordering::Acquire));
                    if state == CLOSED {
                        return Ok(Admitted {
                            permit: Permit::Normal { period: at },
                            transition: Some(transition),
                            probes_exhausted: None,
                            max_wait_until: None,
                        });
                    }
                    return Err(self.reject(
                        CircuitState::Open,
                        transition.until.map(|u| u.saturating_since(now)),
                        Some(transition),
                    ));
                }
                let half_open = &mut control.half_open;
                if half_open.admitted < probes {
                    half_open.admitted += 1;
                    // The first probe out starts the maximum wait.
                    let first = half_open.wait_until.is_none();
                    let deadline = *half_open
                        .wait_until
                        .get_or_insert_with(|| now.max(at).saturating_add(max_wait));
                    return Ok(Admitted {
                        permit: Permit::Probe { started: at },
                        transition: None,
                        probes_exhausted: (half_open.admitted == probes).then_some(deadline),
                        max_wait_until: first.then_some(deadline),
                    });
                }
                // Every slot is taken, so the wait has started.
                let retry_in = half_open.wait_until.map(|d| d.saturating_since(now));
                Err(self.reject(CircuitState::HalfOpen, retry_in, None))
            }
            // The state moved on between the first look and the lock
            // (tripped again, closed, or set by hand): decide afresh.
            _ => {
                drop(control);
                self.acquire(now)
            }
        }
    }

    /// Records the outcome of a permitted call that took `elapsed`.
    pub fn record(
        &self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        now: Nanos,
    ) -> Recorded {
        self.record_with(permit, outcome, elapsed, || now)
    }

    /// [`Circuit::record`], reading the clock only if needed (a time
    /// window, or a transition): a success in a count window needs none.
    pub fn record_with(
        &self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        clock: impl Fn() -> Nanos,
    ) -> Recorded {
        self.record_gated(permit, outcome, elapsed, clock, |_| true)
    }

    /// [`Circuit::record_with`], asking `may_open` before the outcome
    /// opens the circuit: a trip from CLOSED, failed probes, or a probe's
    /// late verdict ending HALF_OPEN in OPEN. It is called at most once,
    /// under the circuit's lock (keep it short, and never call the circuit
    /// back from it), with the instant OPEN would end. If it says no, the
    /// circuit never enters OPEN: from CLOSED it stays CLOSED and counts
    /// afresh (a new window, a new period: calls admitted before are
    /// ignored), from HALF_OPEN it closes; [`Recorded::opening_held`] says
    /// so. This is how a per-endpoint breaker honours
    /// [`BreakerConfig::max_ejection_percent`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_breaker::{BreakerConfig, Circuit};
    /// use mesh_core::clock::Nanos;
    /// use mesh_core::{CircuitState, FailureKind, Outcome};
    ///
    /// let circuit = Circuit::new(BreakerConfig::builder().consecutive_failures(1).build()?);
    /// let call = circuit.acquire(Nanos::ZERO).expect("closed");
    /// let failed = Outcome::Failure(FailureKind::Other);
    /// let recorded = circuit.record_gated(call.permit, failed, Duration::ZERO, || Nanos::ZERO, |_until| false);
    /// assert!(recorded.opening_held);
    /// assert_eq!(circuit.state(), CircuitState::Closed);
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn record_gated(
        &self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        clock: impl Fn() -> Nanos,
        may_open: impl FnOnce(Nanos) -> bool,
    ) -> Recorded {
        if permit == Permit::Unrecorded {
            return Recorded::default();
        }
        let failed = matches!(outcome, Outcome::Failure(_));
        let slow = self.config.slow_call_rate_threshold().is_some()
            && elapsed >= self.config.slow_call_duration();
        let total = match outcome {
            Outcome::Success => &self.totals.successes,
            Outcome::Failure(_) => &self.totals.failures,
            Outcome::Ignored => &self.totals.ignored,
        };
        total.fetch_add(1, Ordering::Relaxed);
        match permit {
            Permit::Normal { period } => {
                if outcome == Outcome::Ignored {
                    return Recorded::default();
                }
                self.record_normal(period, failed, slow, clock, may_open)
            }
            Permit::Probe { started } => {
                self.record_probe(started, outcome, slow, clock(), may_open)
            }
            Permit::Unrecorded => Recorded::default(),
        }
    }

    fn record_normal(
        &self,
        period: Nanos,
        failed: bool,
        slow: bool,
        clock: impl Fn() -> Nanos,
        may_open: impl FnOnce(Nanos) -> bool,
    ) -> Recorded {
        let word = self.word.load(Ordering::Acquire);
        if word != pack(CLOSED, period) && word != pack(METRICS_ONLY, period) {
            return Recorded::default(); // from an earlier period
        }
        self.window.record(failed, slow, &clock);
        let consecutive = if failed {
            self.consecutive_failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            // Skip the store when already zero: a healthy circuit under
            // load then never writes this cache line.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            0
        };
        let by_count = self
            .config
            .consecutive_failures()
            .is_some_and(|n| consecutive >= n);
        let (failure_rate, slow_call_rate) = self.rates_exceeded(&clock);
        // A crossing is reported once, then again only after the rate fell
        // back below its threshold (or the state changed, which clears the
        // marks): a metrics-only breaker, which never changes state, still
        // reports its second incident.
        let crossing = |rate: Option<f64>, crossed: &AtomicBool| match rate {
            Some(rate) => (!crossed.load(Ordering::Relaxed)
                && !crossed.swap(true, Ordering::Relaxed))
            .then_some(rate),
            None => {
                // Load first: a healthy circuit never writes this line.
                if crossed.load(Ordering::Relaxed) {
                    crossed.store(false, Ordering::Relaxed);
                }
                None
            }
        };
        let mut recorded = Recorded {
            failure_rate_exceeded: crossing(failure_rate, &self.failure_rate_crossed),
            slow_call_rate_exceeded: crossing(slow_call_rate, &self.slow_call_rate_crossed),
            ..Recorded::default()
        };
        let by_rate = failure_rate.is_some() || slow_call_rate.is_some();
        if (by_count || by_rate) && unpack(word).0 == CLOSED {
            let mut control = self.control();
            if self.word.load(Ordering::Acquire) == word {
                let now = clock();
                match self.trip_if(&mut control, now, may_open) {
                    Some(t) => recorded.transition = Some(t),
                    None => {
                        // Held closed: count afresh, in a new period.
                        self.clear_measures();
                        self.set(&mut control, CLOSED, now, None);
                        recorded.opening_held = true;
                    }
                }
            }
        }
        recorded
    }

    /// The window's (failure rate, slow-call rate), each only if the
    /// window is judged (enough calls) and the rate reaches its threshold;
    /// `None` re-arms its crossing.
    fn rates_exceeded(&self, clock: impl Fn() -> Nanos) -> (Option<f64>, Option<f64>) {
        let (fail_at, slow_at) = (
            self.config.failure_rate_threshold(),
            self.config.slow_call_rate_threshold(),
        );
        if (fail_at.is_none() && slow_at.is_none()) || !self.window.may_have_bad_calls() {
            return (None, None);
        }
        let counts = self.window.counts(clock);
        if counts.calls < self.config.minimum_calls() {
            return (None, None);
        }
        let reached = |rate: Option<f64>, threshold: Option<f64>| {
            let rate = rate.unwrap_or(0.0);
            threshold.is_some_and(|t| rate >= t).then_some(rate)
        };
        (
            reached(counts.failure_rate(), fail_at),
            reached(counts.slow_call_rate(), slow_at),
        )
    }

    fn record_probe(
        &self,
        started: Nanos,
        outcome: Outcome,
        slow: bool,
        now: Nanos,
        may_open: impl FnOnce(Nanos) -> bool,
    ) -> Recorded {
        let mut control = self.control();
        if self.word.load(Ordering::Acquire) != pack(HALF_OPEN, started) {
            return Recorded::default(); // a probe of an earlier half-open
        }
        if control.half_open.wait_until.is_some_and(|d| now >= d) {
            // The maximum wait ran out before this verdict (no call and no
            // timer came to apply it): the verdict is late and decides
            // nothing; HALF_OPEN ends as configured.
            let mut held = false;
            let transition = self.expire_half_open(&mut control, now, |until| {
                held = !may_open(until);
                !held
            });
            return Recorded {
                transition: Some(transition),
                opening_held: held,
                ..Recorded::default()
            };
        }
        let probes = &mut control.half_open;
        match outcome {
            // An ignored probe proves nothing: give its slot to another.
            Outcome::Ignored => {
                probes.give_back();
                return Recorded {
                    probe_slot_freed: true,
                    ..Recorded::default()
                };
            }
            Outcome::Success => probes.succeeded += 1,
            Outcome::Failure(_) => probes.failed += 1,
        }
        if slow {
            probes.slow += 1;
        }
        let n = self.config.half_open_probes();
        let needed = |threshold: Option<f64>| {
            // The fewest of n probes whose share reaches the threshold;
            // with no rate rule, one failed probe is enough to reopen.
            threshold.map_or(1, |t| {
                ((t * f64::from(n) / 100.0).ceil() as u32).clamp(1, n)
            })
        };
        let fail_needed = needed(self.config.failure_rate_threshold());
        let slow_needed = self
            .config
            .slow_call_rate_threshold()
            .map(|t| needed(Some(t)));
        let (failed, slow, done) = (probes.failed, probes.slow, probes.succeeded + probes.failed);
        let remaining = n.saturating_sub(done);
        let reopen = failed >= fail_needed || slow_needed.is_some_and(|s| slow >= s);
        let decide = match self.config.half_open_verdict() {
            // Close as soon as the remaining probes could no longer reach
            // either threshold, even if all of them failed and were slow.
            ProbeVerdict::Early => {
                reopen
                    || (failed + remaining < fail_needed
                        && slow_needed.is_none_or(|s| slow + remaining < s))
            }
            ProbeVerdict::AfterAllProbes => remaining == 0,
        };
        let mut opening_held = false;
        let transition = match (decide, reopen) {
            (false, _) => None,
            (true, true) => Some(match self.trip_if(&mut control, now, may_open) {
                Some(t) => t,
                None => {
                    opening_held = true;
                    self.close(&mut control, now)
                }
            }),
            (true, false) => Some(self.close(&mut control, now)),
        };
        Recorded {
            transition,
            opening_held,
            ..Recorded::default()
        }
    }

    /// Gives a probe's slot back without an outcome (its call was
    /// cancelled), so another call may probe in its place.
    pub fn abandon(&self, permit: Permit) {
        if let Permit::Probe { started } = permit {
            let mut control = self.control();
            if self.word.load(Ordering::Acquire) == pack(HALF_OPEN, started) {
                control.half_open.give_back();
            }
        }
    }

    /// Moves to OPEN, for longer after each failed recovery, if
    /// `may_open` agrees to OPEN ending at the instant it is given;
    /// otherwise nothing changes and `None`.
    fn trip_if(
        &self,
        control: &mut Control,
        now: Nanos,
        may_open: impl FnOnce(Nanos) -> bool,
    ) -> Option<Transition> {
        let until = now.saturating_add(self.open_duration(control));
        may_open(until).then(|| self.open(control, until))
    }

    /// Enters OPEN until `until`, counting the trip for growth.
    fn open(&self, control: &mut Control, until: Nanos) -> Transition {
        control.trips = control.trips.saturating_add(1);
        self.set(control, OPEN, until, Some(until))
    }

    /// How long the next trip stays open: grown after failed recoveries,
    /// capped, with jitter.
    fn open_duration(&self, control: &Control) -> Duration {
        // In whole nanoseconds, so that durations without jitter are exact.
        let base = self.config.open_duration().as_nanos() as f64;
        let grown = base
            * self
                .config
                .open_duration_multiplier()
                .powi(control.trips.min(64) as i32);
        let capped = grown.min(self.config.open_duration_max().as_nanos() as f64);
        let jitter = self.config.open_duration_jitter();
        let factor = if jitter > 0.0 {
            1.0 + jitter * (2.0 * fastrand::f64() - 1.0)
        } else {
            1.0
        };
        // Jitter spreads below the cap too: the cap is a hard limit.
        let max = self.config.open_duration_max().as_nanos() as f64;
        Duration::from_nanos((capped * factor).min(max).round().max(1_000_000.0) as u64)
    }

    /// Moves to CLOSED with a fresh window and no growth.
    fn close(&self, control: &mut Control, now: Nanos) -> Transition {
        control.trips = 0;
        self.set(control, CLOSED, now, None)
    }

    /// Moves to HALF_OPEN at `now`, with `admitted` probes already out:
    /// with one, its maximum wait starts now; with none, it has no
    /// deadline until the first probe.
    fn enter_half_open(&self, control: &mut Control, now: Nanos, admitted: u32) -> Transition {
        control.half_open = Probes {
            admitted,
            ..Probes::default()
        };
        let mut transition = self.set(control, HALF_OPEN, now, None);
        if admitted > 0 {
            let started = unpack(self.word.load(Ordering::Acquire)).1;
            let deadline = started.saturating_add(self.config.half_open_max_wait());
            control.half_open.wait_until = Some(deadline);
            transition.until = Some(deadline);
        }
        transition
    }

    /// Leaves HALF_OPEN whose maximum wait ran out, as configured; to
    /// CLOSED instead of OPEN if `may_open` refuses.
    fn expire_half_open(
        &self,
        control: &mut Control,
        now: Nanos,
        may_open: impl FnOnce(Nanos) -> bool,
    ) -> Transition {
        match self.config.half_open_expiry() {
            HalfOpenExpiry::Open => match self.trip_if(control, now, may_open) {
                Some(t) => t,
                None => self.close(control, now),
            },
            HalfOpenExpiry::Closed => self.close(control, now),
        }
    }

    /// HALF_OPEN's maximum wait, if it is HALF_OPEN and a probe started it.
    fn half_open_deadline(&self) -> Option<Nanos> {
        let control = self.control();
        (unpack(self.word.load(Ordering::Acquire)).0 == HALF_OPEN)
            .then_some(control.half_open.wait_until)
            .flatten()
    }

    /// Clears what a state measures, for the state being entered.
    fn clear_measures(&self) {
        self.window.reset();
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.failure_rate_crossed.store(false, Ordering::Relaxed);
        self.slow_call_rate_crossed.store(false, Ordering::Relaxed);
    }

    fn set(
        &self,
        control: &mut Control,
        state: u64,
        at: Nanos,
        until: Option<Nanos>,
    ) -> Transition {
        // States whose permits are recorded against their period start
        // strictly after the last such start. (OPEN's instant is a deadline
        // and issues no permit: it is left as it is.)
        let at = if matches!(state, CLOSED | HALF_OPEN | METRICS_ONLY) {
            let at = Nanos(at.0.max(control.last_at.saturating_add(1)));
            control.last_at = at.0;
            at
        } else {
            at
        };
        // Entering a state starts its measures from zero (before the new
        // word is published, so that none of its own calls is lost). Only a
        // new OPEN deadline keeps the state, and its (empty) measures.
        let changes = unpack(self.word.load(Ordering::Acquire)).0 != state;
        if changes {
            self.clear_measures();
        }
        let word = pack(state, at);
        let previous = self.word.swap(word, Ordering::AcqRel);
        if changes {
            self.totals.transitions.fetch_add(1, Ordering::Relaxed);
            if matches!(
                state_of(state),
                CircuitState::Open | CircuitState::ForcedOpen
            ) {
                self.totals.opened.fetch_add(1, Ordering::Relaxed);
            }
        }
        Transition {
            from: state_of(unpack(previous).0),
            to: state_of(unpack(word).0),
            until,
        }
    }

    /// Moves to `target` by hand at `now` (an operator's decision). A move
    /// to the current state does nothing and returns `Ok(None)`.
    ///
    /// CLOSED starts a fresh window; OPEN lasts the configured open
    /// duration; HALF_OPEN admits a fresh set of probes; the operator states
    /// hold until the next manual transition.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] for a move the state machine forbids (CLOSED
    /// to HALF_OPEN, METRICS_ONLY to OPEN or HALF_OPEN); nothing changes.
    pub fn transition_to(
        &self,
        target: CircuitState,
        now: Nanos,
    ) -> Result<Option<Transition>, IllegalTransition> {
        let mut control = self.control();
        let current = self.state();
        if current == target {
            return Ok(None);
        }
        IllegalTransition::check(current, target)?;
        Ok(Some(match target {
            CircuitState::Closed => self.close(&mut control, now),
            CircuitState::Open => {
                let until = now.saturating_add(self.config.open_duration());
                self.set(&mut control, OPEN, until, Some(until))
            }
            CircuitState::HalfOpen => self.enter_half_open(&mut control, now, 0),
            other => self.set(&mut control, bits_of(other), now, None),
        }))
    }

    /// Opens by hand until `until` (resilience4j's
    /// `transitionToOpenStateUntil`). While already OPEN, replaces the
    /// deadline: the transition returned then goes from OPEN to OPEN.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from METRICS_ONLY, which never opens.
    pub fn open_until(&self, until: Nanos) -> Result<Transition, IllegalTransition> {
        let mut control = self.control();
        IllegalTransition::check(self.state(), CircuitState::Open)?;
        Ok(self.set(&mut control, OPEN, until, Some(until)))
    }

    /// Applies the deadlines that have passed at `now`: OPEN over (when
    /// [`BreakerConfig::automatic_half_open`]) moves to HALF_OPEN with no
    /// probe out yet (and so no deadline: it waits for its first probe);
    /// HALF_OPEN past the maximum wait its first probe started ends as
    /// [`BreakerConfig::half_open_expiry`] says. Returns the transition, if
    /// any; a layer calls this on a timer at [`Circuit::next_deadline`].
    pub fn expire(&self, now: Nanos) -> Option<Transition> {
        let mut control = self.control();
        let (state, at) = unpack(self.word.load(Ordering::Acquire));
        match state {
            OPEN if self.config.automatic_half_open() && now >= at => {
                Some(self.enter_half_open(&mut control, now, 0))
            }
            HALF_OPEN if control.half_open.wait_until.is_some_and(|d| now >= d) => {
                Some(self.expire_half_open(&mut control, now, |_| true))
            }
            _ => None,
        }
    }

    /// When [`Circuit::expire`] next has something to do: the end of OPEN
    /// (with automatic half-open), or HALF_OPEN's maximum wait once a
    /// probe has started it. `None` in the other states (and in HALF_OPEN
    /// before its first probe), which end only on a call or by hand.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let (state, at) = unpack(self.word.load(Ordering::Acquire));
        match state {
            OPEN if self.config.automatic_half_open() => Some(at),
            HALF_OPEN => self.half_open_deadline(),
            _ => None,
        }
    }

    /// Back to a fresh CLOSED circuit: empty window, no failure streak, no
    /// growth of the open duration. Returns the transition, if the state
    /// was not CLOSED already.
    pub fn reset(&self, now: Nanos) -> Option<Transition> {
        let mut control = self.control();
        if self.state() == CircuitState::Closed {
            control.trips = 0;
            self.clear_measures();
            return None;
        }
        Some(self.close(&mut control, now))
    }

    /// Whether nothing depends on this breaker at `now`: CLOSED, or OPEN
    /// past its deadline, or HALF_OPEN with no probe out or past its
    /// maximum wait (the next call would probe or reopen anyway). Operator
    /// states are never settled: they change only by hand. A registry may
    /// forget a settled breaker.
    pub fn is_settled(&self, now: Nanos) -> bool {
        let (state, at) = unpack(self.word.load(Ordering::Acquire));
        match state {
            CLOSED => true,
            OPEN => now >= at,
            HALF_OPEN => self.half_open_deadline().is_none_or(|d| now >= d),
            _ => false,
        }
    }

    /// A snapshot of the breaker at `now`: the current state's own
    /// figures (the window in CLOSED and METRICS_ONLY, the probes in
    /// HALF_OPEN, nothing in the states that record nothing).
    pub fn metrics(&self, now: Nanos) -> BreakerMetrics {
        let state = self.state();
        let counts = match state {
            CircuitState::Closed | CircuitState::MetricsOnly => self.window.counts(|| now),
            CircuitState::HalfOpen => {
                let control = self.control();
                let p = &control.half_open;
                WindowCounts {
                    calls: p.succeeded + p.failed,
                    failures: p.failed,
                    slow: p.slow,
                }
            }
            _ => WindowCounts::default(),
        };
        let t = &self.totals;
        BreakerMetrics {
            state,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_call_rate(),
            buffered_calls: counts.calls,
            failed_calls: counts.failures,
            slow_calls: counts.slow,
            successful_total: t.successes.load(Ordering::Relaxed),
            failed_total: t.failures.load(Ordering::Relaxed),
            ignored_total: t.ignored.load(Ordering::Relaxed),
            rejected_total: t.rejected.load(Ordering::Relaxed),
            transitions: t.transitions.load(Ordering::Relaxed),
            opened_total: t.opened.load(Ordering::Relaxed),
        }
    }
}
