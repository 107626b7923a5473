//! How long to wait before each retry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the base delay grows from one retry to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Growth {
    /// `initial x multiplier^n` before retry `n` (from 0).
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The growth factor (at least 1).
        multiplier: f64,
    },
    /// `initial x (n + 1)` before retry `n`.
    Linear {
        /// The first delay, and the step.
        initial: Duration,
    },
    /// The same delay before every retry.
    Constant {
        /// The delay.
        delay: Duration,
    },
    /// `initial x fib(n + 1)` before retry `n`: 1, 1, 2, 3, 5, 8... times
    /// the initial delay.
    Fibonacci {
        /// The first delay.
        initial: Duration,
    },
}

/// How randomness spreads the delays, so that clients that failed together
/// do not retry together. A file names it in lower case: `none`, `full`,
/// `equal`, `decorrelated`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Exactly the delay its growth gives.
    #[default]
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
    /// "Decorrelated" (from AWS's analysis of backoff): uniform in
    /// `[initial, 3 x previous delay]`, so each delay depends on the last
    /// one rather than on the retry number.
    Decorrelated,
}

/// A backoff schedule: a [`Growth`], a cap on any single delay, and a
/// [`Jitter`]. Every delay lies in `[0, max_delay]`.
///
/// It is a plain value, usable without tower: [`Backoff::delays`] is an
/// iterator over the schedule.
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::{Backoff, Jitter};
///
/// let ms = Duration::from_millis;
/// let fib = Backoff::fibonacci(ms(100)).max_delay(ms(600));
/// assert_eq!(fib.delays().take(6).collect::<Vec<_>>(), [ms(100), ms(100), ms(200), ms(300), ms(500), ms(600)]);
///
/// let expo = Backoff::exponential(ms(50), 2.0).max_delay(ms(1000)).jitter(Jitter::Full);
/// assert!(expo.delays().take(20).all(|d| d <= ms(1000)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    growth: Growth,
    max_delay: Duration,
    jitter: Jitter,
}

/// The cap on a single delay until [`Backoff::max_delay`] says otherwise.
pub(crate) const DEFAULT_CAP: Duration = Duration::from_secs(30);

impl Backoff {
    /// Exponential backoff from `initial`, capped at 30 s until
    /// [`Backoff::max_delay`] says otherwise.
    pub fn exponential(initial: Duration, multiplier: f64) -> Backoff {
        Backoff::of(Growth::Exponential {
            initial,
            multiplier,
        })
    }

    /// Linear backoff by steps of `initial`.
    pub fn linear(initial: Duration) -> Backoff {
        Backoff::of(Growth::Linear { initial })
    }

    /// The same `delay` before every retry.
    pub fn constant(delay: Duration) -> Backoff {
        Backoff::of(Growth::Constant { delay })
    }

    /// Fibonacci backoff from `initial`.
    pub fn fibonacci(initial: Duration) -> Backoff {
        Backoff::of(Growth::Fibonacci { initial })
    }

    fn of(growth: Growth) -> Backoff {
        Backoff {
            growth,
            max_delay: DEFAULT_CAP,
            jitter: Jitter::None,
        }
    }

    /// Caps every delay at `max`.
    pub fn max_delay(mut self, max: Duration) -> Backoff {
        self.max_delay = max;
        self
    }

    /// Spreads delays with `jitter`.
    pub fn jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// How the delay grows.
    pub fn growth(&self) -> Growth {
        self.growth
    }

    /// The cap on any single delay.
    pub fn cap(&self) -> Duration {
        self.max_delay
    }

    /// The jitter.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The first delay, before jitter and cap.
    fn initial(&self) -> Duration {
        match self.growth {
            Growth::Exponential { initial, .. }
            | Growth::Linear { initial }
            | Growth::Fibonacci { initial } => initial,
            Growth::Constant { delay } => delay,
        }
    }

    /// The growth's delay before retry `n` (from 0), capped, without
    /// jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        let nanos = |d: Duration| d.as_nanos() as f64;
        let raw = match self.growth {
            Growth::Constant { delay } => nanos(delay),
            Growth::Linear { initial } => nanos(initial) * (f64::from(n) + 1.0),
            Growth::Exponential {
                initial,
                multiplier,
            } => nanos(initial) * multiplier.powi(n.min(1024) as i32),
            Growth::Fibonacci { initial } => nanos(initial) * fibonacci(n.saturating_add(1)),
        };
        clamp(raw, self.max_delay)
    }

    /// The delay before retry `n`, with jitter; `previous` is the delay
    /// actually used before retry `n - 1` (decorrelated jitter needs it).
    pub fn delay(&self, n: u32, previous: Option<Duration>) -> Duration {
        let base = self.base_delay(n);
        let d = base.as_nanos() as f64;
        let jittered = match self.jitter {
            Jitter::None => return base,
            Jitter::Full => d * fastrand::f64(),
            Jitter::Equal => d / 2.0 + d / 2.0 * fastrand::f64(),
            Jitter::Decorrelated => {
                let low = self.initial().as_nanos() as f64;
                let high = previous.map_or(low, |p| p.as_nanos() as f64 * 3.0).max(low);
                low + (high - low) * fastrand::f64()
            }
        };
        clamp(jittered, self.max_delay)
    }

    /// The delays before the first, second, third... retry.
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            n: 0,
            previous: None,
        }
    }
}

impl Default for Backoff {
    /// Exponential from 25 ms, doubling, capped at 1 s, with equal jitter:
    /// in the mesh a retry goes to another endpoint, so it need not wait
    /// long, and jitter keeps clients that failed together apart.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(25), 2.0)
            .max_delay(Duration::from_secs(1))
            .jitter(Jitter::Equal)
    }
}

fn clamp(nanos: f64, cap: Duration) -> Duration {
    let cap_nanos = cap.as_nanos() as f64;
    if nanos.is_nan() || nanos <= 0.0 {
        Duration::ZERO
    } else if nanos >= cap_nanos {
        cap
    } else {
        Duration::from_nanos(nanos as u64)
    }
}

/// fib(1) = fib(2) = 1, as a float (saturates to infinity, then the cap).
fn fibonacci(n: u32) -> f64 {
    let (mut a, mut b) = (0.0f64, 1.0f64);
    for _ in 1..n.min(2000) {
        (a, b) = (b, a + b);
    }
    if n == 0 {
        0.0
    } else {
        b
    }
}

/// The iterator of [`Backoff::delays`]: endless; take what you need.
#[derive(Clone, Debug)]
pub struct Delays {
    backoff: Backoff,
    n: u32,
    previous: Option<Duration>,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.backoff.delay(self.n, self.previous);
        self.n = self.n.saturating_add(1);
        self.previous = Some(d);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::{Backoff, Duration, Jitter};
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn unjittered_schedules_are_exact() {
        let take = |b: Backoff| {
            b.max_delay(Duration::from_secs(3600))
                .delays()
                .take(6)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            take(Backoff::exponential(MS(10), 2.0)),
            [10, 20, 40, 80, 160, 320].map(MS)
        );
        assert_eq!(
            take(Backoff::linear(MS(10))),
            [10, 20, 30, 40, 50, 60].map(MS)
        );
        assert_eq!(take(Backoff::constant(MS(7))), [7; 6].map(MS));
        assert_eq!(
            take(Backoff::fibonacci(MS(10))),
            [10, 10, 20, 30, 50, 80].map(MS)
        );
    }

    #[test]
    fn the_cap_holds_even_when_the_schedule_overflows() {
        let b = Backoff::exponential(MS(1), 10.0).max_delay(MS(500));
        assert_eq!(b.base_delay(1000), MS(500));
        assert_eq!(
            Backoff::fibonacci(MS(1))
                .max_delay(MS(5))
                .base_delay(u32::MAX),
            MS(5)
        );
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        let d = (1u64..1000).prop_map(Duration::from_millis);
        prop_oneof![
            (d.clone(), 1.0f64..5.0).prop_map(|(i, m)| Backoff::exponential(i, m)),
            d.clone().prop_map(Backoff::linear),
            d.clone().prop_map(Backoff::constant),
            d.prop_map(Backoff::fibonacci),
        ]
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        /// Every delay of every growth and jitter lies in [0, cap], and
        /// each jitter stays within its documented range.
        #[test]
        fn delays_stay_within_their_bounds(b in backoff(), j in jitter(), cap_ms in 1u64..20_000, n in 0usize..40) {
            let b = b.max_delay(Duration::from_millis(cap_ms)).jitter(j);
            let mut previous = None;
            for (i, d) in b.delays().take(n).enumerate() {
                prop_assert!(d <= b.cap());
                let base = b.base_delay(i as u32);
                match j {
                    Jitter::None => prop_assert_eq!(d, base),
                    Jitter::Full => prop_assert!(d <= base),
                    Jitter::Equal => prop_assert!(d >= base / 2 && d <= base),
                    Jitter::Decorrelated => {
                        let low = b.initial().min(b.cap());
                        let high = previous.map_or(low, |p: Duration| p * 3).max(low).min(b.cap());
                        prop_assert!(d >= low && d <= high, "{:?} not in [{:?}, {:?}]", d, low, high);
                    }
                }
                previous = Some(d);
            }
        }

        /// Without jitter the schedules follow their formulas exactly.
        #[test]
        fn schedules_follow_their_formulas(initial_ms in 1u64..100, m in 1u32..4, n in 0u32..15) {
            let i = Duration::from_millis(initial_ms);
            let big = Duration::from_secs(1 << 40);
            prop_assert_eq!(Backoff::exponential(i, f64::from(m)).max_delay(big).base_delay(n), i * m.pow(n));
            prop_assert_eq!(Backoff::linear(i).max_delay(big).base_delay(n), i * (n + 1));
            let fib = |k: u32| { let (mut a, mut b) = (0u32, 1u32); for _ in 1..k { (a, b) = (b, a + b); } b };
            prop_assert_eq!(Backoff::fibonacci(i).max_delay(big).base_delay(n), i * fib(n + 1));
        }
    }
}
