//! [`CallPolicy`]: one call's own retry or hedging policy, carried as a
//! request extension.
//!
//! A gRPC service config gives each method its own `retryPolicy` or
//! `hedgingPolicy` (gRFC A6); one [`crate::RetryLayer`] serves every method
//! of a service. So the per-method policy travels with the request, and the
//! layer reads it at each decision, instead of one layer per method.

use std::time::Duration;

use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::ConfigError;

use crate::backoff::Backoff;
use crate::config::check_backoff;
use crate::hedge::Hedging;

/// One call's retry or hedging policy, replacing the layer's for that call
/// when the request carries it as an extension.
///
/// It replaces the attempts, the backoff, the retryable gRPC codes, the
/// per-attempt timeout (none unless set) and hedging (none unless set: the
/// call is then retried, not hedged). What protects the upstream still
/// applies: the retry budget, the deadline, the idempotency rules, the
/// replayable body, the retryable HTTP statuses and errors, and a circuit
/// open for the whole service.
///
/// Built with [`CallPolicy::builder`], which refuses values out of range,
/// naming the key (`call_policy.max_attempts`).
///
/// ```
/// use std::time::Duration;
/// use mesh_core::grpc::{GrpcCode, GrpcCodes};
/// use mesh_retry::{Backoff, CallPolicy, Jitter};
///
/// // A method config's retryPolicy: maxAttempts 4, initialBackoff 0.1s,
/// // maxBackoff 1s, backoffMultiplier 2, retryableStatusCodes UNAVAILABLE.
/// let policy = CallPolicy::builder()
///     .max_attempts(4)
///     .backoff(Backoff::exponential(Duration::from_millis(100), 2.0)
///         .max_delay(Duration::from_secs(1))
///         .jitter(Jitter::Full))
///     .retryable_grpc_codes(GrpcCodes::of([GrpcCode::UNAVAILABLE]))
///     .build()?;
/// let mut req = http::Request::post("http://users/pkg.Users/Get").body(())?;
/// req.extensions_mut().insert(policy);
///
/// let err = CallPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.key(), "call_policy.max_attempts");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CallPolicy {
    max_attempts: u32,
    backoff: Backoff,
    retryable_grpc_codes: GrpcCodes,
    per_attempt_timeout: Option<Duration>,
    hedging: Option<Hedging>,
}

/// Builds a [`CallPolicy`].
#[derive(Clone, Debug)]
pub struct CallPolicyBuilder {
    policy: CallPolicy,
}

// === impl CallPolicy ===

impl CallPolicy {
    /// The most attempts a policy may allow: the layer's limit of 100
    /// retries, plus the first attempt.
    pub const MAX_ATTEMPTS: u32 = 101;

    /// Starts from 3 attempts, the default [`Backoff`], `UNAVAILABLE` as
    /// the one retryable gRPC code, no per-attempt timeout and no hedging
    /// (what a default [`crate::RetryConfig`] does).
    pub fn builder() -> CallPolicyBuilder {
        CallPolicyBuilder {
            policy: CallPolicy {
                max_attempts: 3,
                backoff: Backoff::default(),
                retryable_grpc_codes: GrpcCodes::retryable(),
                per_attempt_timeout: None,
                hedging: None,
            },
        }
    }

    /// Attempts in all, the first included (1: no retry).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between retries.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Whether a gRPC call answered (trailers-only) with `code` is retried.
    pub fn retries_grpc(&self, code: GrpcCode) -> bool {
        self.retryable_grpc_codes.contains(code)
    }

    /// The timeout of each attempt (and each hedged copy), if any.
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        self.per_attempt_timeout
    }

    /// The hedging the call uses instead of retries, if any.
    pub fn hedging(&self) -> Option<&Hedging> {
        self.hedging.as_ref()
    }

    /// Retries after the first attempt.
    pub(crate) fn max_retries(&self) -> u32 {
        self.max_attempts - 1
    }
}

// === impl CallPolicyBuilder ===

impl CallPolicyBuilder {
    /// Sends at most `n` attempts in all (1 to [`CallPolicy::MAX_ATTEMPTS`]).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n;
        self
    }

    /// Waits according to `backoff` before each retry. gRFC A6's
    /// `initialBackoff`, `maxBackoff` and `backoffMultiplier` are
    /// `Backoff::exponential(initial, multiplier).max_delay(max)`, with the
    /// jitter of your choice.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// Retries exactly the gRPC calls answered with these codes.
    pub fn retryable_grpc_codes(mut self, codes: GrpcCodes) -> Self {
        self.policy.retryable_grpc_codes = codes;
        self
    }

    /// Cancels each attempt (each hedged copy) after `d`.
    pub fn per_attempt_timeout(mut self, d: Duration) -> Self {
        self.policy.per_attempt_timeout = Some(d);
        self
    }

    /// Hedges the call as `hedging` says instead of retrying it; the
    /// attempts, backoff and retryable codes are then unused, as gRFC A6
    /// has a method either retried or hedged.
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.policy.hedging = Some(hedging);
        self
    }

    /// Validates the policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first value
    /// out of range: `call_policy.max_attempts`,
    /// `call_policy.backoff.multiplier`, `call_policy.backoff.max_delay`,
    /// `call_policy.per_attempt_timeout`.
    pub fn build(self) -> Result<CallPolicy, ConfigError> {
        let p = self.policy;
        if !(1..=CallPolicy::MAX_ATTEMPTS).contains(&p.max_attempts) {
            return Err(ConfigError::new(
                "call_policy.max_attempts",
                format!(
                    "{} is outside [1, {}]",
                    p.max_attempts,
                    CallPolicy::MAX_ATTEMPTS
                ),
            ));
        }
        check_backoff(&p.backoff).map_err(|e| e.within("call_policy.backoff."))?;
        if let Some(d) = p.per_attempt_timeout {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(ConfigError::new(
                    "call_policy.per_attempt_timeout",
                    format!("{d:?} is out of range: use more than 0 and at most 1h"),
                ));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused_by_name() {
        let cases = [
            (
                CallPolicy::builder().max_attempts(102),
                "call_policy.max_attempts",
            ),
            (
                CallPolicy::builder().backoff(Backoff::exponential(Duration::from_millis(1), 0.5)),
                "call_policy.backoff.multiplier",
            ),
            (
                CallPolicy::builder().per_attempt_timeout(Duration::ZERO),
                "call_policy.per_attempt_timeout",
            ),
        ];
        for (builder, key) in cases {
            assert_eq!(builder.build().expect_err(key).key(), key);
        }
    }

    #[test]
    fn one_attempt_is_a_valid_policy_without_retries() {
        let policy = CallPolicy::builder()
            .max_attempts(1)
            .build()
            .expect("valid");
        assert_eq!(policy.max_retries(), 0);
        assert!(policy.retries_grpc(GrpcCode::UNAVAILABLE));
        assert!(policy.hedging().is_none());
    }
}
