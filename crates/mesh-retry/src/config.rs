//! [`RetryConfig`]: validated retry settings.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, Uri};
use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::{ConfigError, FailureKind, StatusSet};

use crate::backoff::{Backoff, Growth};
use crate::budget::{RetryBudget, RetryBudgetConfig};
use crate::hedge::Hedging;

/// What a custom retry condition sees of one attempt. `Debug` shows no
/// header value, userinfo or query: they may hold secrets.
pub struct RetryContext<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The request's URI (the logical one, before balancing).
    pub uri: &'a Uri,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The attempt that just ended (1 for the first).
    pub attempt: u32,
    /// Its outcome: the response status, or the error.
    pub outcome: Result<StatusCode, &'a (dyn std::error::Error + 'static)>,
}

impl std::fmt::Debug for RetryContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryContext")
            .field("method", self.method)
            .field("uri", &mesh_core::ShownUri(self.uri))
            .field("headers", &mesh_core::HeaderNames(self.headers))
            .field("attempt", &self.attempt)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// A custom retry condition: `Some(true)` retries, `Some(false)` does not,
/// `None` leaves the decision to the statuses and error kinds. Idempotency,
/// the retry limit, the budget, the deadline and `max_retry_after` still
/// apply, and a circuit open for a whole service is never retried.
pub type RetryPredicate = dyn Fn(&RetryContext<'_>) -> Option<bool> + Send + Sync;

/// Which failures are retried, how often, how far apart, and within what
/// limits. Built with [`RetryConfig::builder`], which refuses values that
/// make no sense, naming the field; a configuration file's form is
/// [`crate::RetrySettings`].
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::{Backoff, Jitter, RetryConfig};
///
/// let config = RetryConfig::builder()
///     .max_retries(3)
///     .backoff(Backoff::exponential(Duration::from_millis(50), 2.0).max_delay(Duration::from_secs(2)).jitter(Jitter::Full))
///     .budget(20.0, 10, Duration::from_secs(10))
///     .deadline(Duration::from_secs(5))
///     .per_attempt_timeout(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(config.max_retries(), 3);
/// assert!(config.retries_status(http::StatusCode::SERVICE_UNAVAILABLE));
/// assert!(!config.retries_status(http::StatusCode::NOT_FOUND));
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryConfig {
    max_retries: u32,
    backoff: Backoff,
    retryable_statuses: StatusSet,
    retryable_grpc_codes: GrpcCodes,
    retryable_errors: Vec<FailureKind>,
    retry_non_idempotent: bool,
    honor_retry_after: bool,
    max_retry_after: Duration,
    budget: Option<RetryBudgetConfig>,
    deadline: Option<Duration>,
    per_attempt_timeout: Option<Duration>,
    hedging: Option<Hedging>,
    predicate: Option<Arc<RetryPredicate>>,
}

impl RetryConfig {
    /// The longest `Retry-After` honoured by default: one second. A server
    /// asking for a longer wait is answered with its own response rather
    /// than held for; callers with a per-attempt timeout usually raise it
    /// to that timeout ([`RetryConfigBuilder::max_retry_after`]).
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

    /// The design document's retryable statuses: 408, 429, 500, 502, 503, 504.
    pub const DEFAULT_RETRYABLE_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

    /// Starts from [`RetryConfig::default`].
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder {
            config: RetryConfig::default(),
        }
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Whether a response with `status` is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.retryable_statuses.contains(status)
    }

    /// Whether a gRPC call answered (trailers-only) with `code` is
    /// retried: `UNAVAILABLE` by default, whatever the HTTP method (a gRPC
    /// call is a POST; its retry policy, as in gRFC A6, decides).
    pub fn retries_grpc(&self, code: GrpcCode) -> bool {
        self.retryable_grpc_codes.contains(code)
    }

    /// Whether an error of `kind` is retried: by default connect errors,
    /// resets, timeouts and open circuits; other errors are not, since
    /// sending the same request again would fail the same way.
    ///
    /// An open circuit is retried only when it guards one endpoint (its
    /// [`mesh_core::MeshError::CircuitOpen`] names the endpoint), since another
    /// endpoint may serve the retry; a circuit open for the whole service
    /// (or a custom key) refuses every attempt alike, so such a refusal is
    /// returned at once whatever this says.
    pub fn retries_error(&self, kind: FailureKind) -> bool {
        self.retryable_errors.contains(&kind)
    }

    /// Whether requests with non-idempotent methods (POST, PATCH...) and no
    /// `Idempotency-Key` header are retried after any retryable failure
    /// (by default only after failures that prove they were never sent).
    pub fn retry_non_idempotent(&self) -> bool {
        self.retry_non_idempotent
    }

    /// Whether a `Retry-After` hint on 429 and 503 responses sets the delay.
    pub fn honor_retry_after(&self) -> bool {
        self.honor_retry_after
    }

    /// The longest `Retry-After` honoured; see
    /// [`RetryConfigBuilder::max_retry_after`].
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The budget settings; `None` without a budget.
    pub fn budget(&self) -> Option<RetryBudgetConfig> {
        self.budget
    }

    /// A fresh budget account with this configuration's settings, or `None`
    /// for a configuration without a budget.
    ///
    /// Attach it to requests as an extension to count them, and fund their
    /// retries, against it rather than against the budget of the
    /// [`crate::RetryLayer`] they pass through: one account per service
    /// keeps a failing service from spending retries that another
    /// service's traffic funded. Clones share the account.
    ///
    /// ```
    /// use mesh_retry::RetryConfig;
    ///
    /// let config = RetryConfig::default();
    /// let users = config.new_budget().expect("the default has a budget");
    /// let mut req = http::Request::get("http://users/").body(()).unwrap();
    /// req.extensions_mut().insert(users.clone());
    /// ```
    pub fn new_budget(&self) -> Option<RetryBudget> {
        // A built config was validated, so its budget settings are valid.
        self.make_budget().ok().flatten()
    }

    /// The overall deadline across all attempts, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The timeout of each attempt, if any.
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        self.per_attempt_timeout
    }

    /// The hedging calls get instead of retries, if any; see
    /// [`RetryConfigBuilder::hedging`].
    pub fn hedging(&self) -> Option<&Hedging> {
        self.hedging.as_ref()
    }

    pub(crate) fn predicate(&self) -> Option<&RetryPredicate> {
        self.predicate.as_deref()
    }

    pub(crate) fn make_budget(&self) -> Result<Option<RetryBudget>, ConfigError> {
        self.budget.map(|b| b.new_budget()).transpose()
    }
}

impl Default for RetryConfig {
    /// 2 retries (3 attempts); the default [`Backoff`]; the design
    /// document's statuses; connect errors, resets, timeouts and open
    /// circuits; idempotent requests only; `Retry-After` honoured up to
    /// [`RetryConfig::DEFAULT_MAX_RETRY_AFTER`]; a budget
    /// of 20% of the last 10 s of requests plus 10 retries per second; no
    /// deadline and no per-attempt timeout.
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            backoff: Backoff::default(),
            retryable_grpc_codes: GrpcCodes::retryable(),
            retryable_statuses: Self::DEFAULT_RETRYABLE_STATUSES
                .iter()
                .filter_map(|c| StatusCode::from_u16(*c).ok())
                .collect(),
            retryable_errors: vec![
                FailureKind::Connect,
                FailureKind::Reset,
                FailureKind::Timeout,
                FailureKind::CircuitOpen,
            ],
            retry_non_idempotent: false,
            honor_retry_after: true,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
            budget: Some(RetryBudgetConfig::default()),
            deadline: None,
            per_attempt_timeout: None,
            hedging: None,
            predicate: None,
        }
    }
}

impl std::fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryConfig")
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("retryable_statuses", &self.retryable_statuses)
            .field("retryable_grpc_codes", &self.retryable_grpc_codes)
            .field("retryable_errors", &self.retryable_errors)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("honor_retry_after", &self.honor_retry_after)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &self.budget)
            .field("deadline", &self.deadline)
            .field("per_attempt_timeout", &self.per_attempt_timeout)
            .field("hedging", &self.hedging)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

/// Builds a [`RetryConfig`].
#[derive(Clone, Debug)]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

/// Checks the parameters of `backoff` a file can write: a bad one is
/// refused under its bare name (`max_delay`, `multiplier`), for the caller
/// to place with [`ConfigError::within`] (`retry.backoff.` in code,
/// `retry.` in a file, where they are keys of their own).
pub(crate) fn check_backoff(backoff: &Backoff) -> Result<(), ConfigError> {
    if backoff.cap() > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            "max_delay",
            format!("{:?} is more than one hour", backoff.cap()),
        ));
    }
    if let Growth::Exponential { multiplier, .. } = backoff.growth() {
        if !(1.0..=100.0).contains(&multiplier) {
            return Err(ConfigError::new(
                "multiplier",
                format!("{multiplier} is outside [1, 100]"),
            ));
        }
    }
    Ok(())
}

impl RetryConfigBuilder {
    /// Retries at most `n` times after the first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Waits according to `backoff` before each retry.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Retries exactly the responses with these statuses.
    pub fn retryable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.retryable_statuses = statuses.into_iter().collect();
        self
    }

    /// Retries exactly the gRPC calls answered with these codes.
    pub fn retryable_grpc_codes(mut self, codes: GrpcCodes) -> Self {
        self.config.retryable_grpc_codes = codes;
        self
    }

    /// Retries exactly the errors of these kinds.
    pub fn retryable_errors(mut self, kinds: impl IntoIterator<Item = FailureKind>) -> Self {
        self.config.retryable_errors = kinds.into_iter().collect();
        self
    }

    /// Retries non-idempotent requests after any retryable failure (only if
    /// the upstream tolerates duplicates).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.config.retry_non_idempotent = yes;
        self
    }

    /// Honours (or ignores) `Retry-After` on 429 and 503 responses.
    pub fn honor_retry_after(mut self, yes: bool) -> Self {
        self.config.honor_retry_after = yes;
        self
    }

    /// Sets the longest `Retry-After` honoured (by default
    /// [`RetryConfig::DEFAULT_MAX_RETRY_AFTER`], one second; at most one
    /// hour).
    ///
    /// A hint up to `d` replaces the backoff delay. A server asking for a
    /// longer wait is not retried sooner than it asked, nor waited for:
    /// the request is not retried and the caller gets the server's own
    /// response (the 429 or 503 with its `Retry-After`) at once. A wait
    /// that would end past the request's deadline is likewise never
    /// started.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.config.max_retry_after = d;
        self
    }

    /// Limits retries to `percent` of the requests of the last `ttl`, plus
    /// `min_per_second`; see [`RetryBudget`].
    ///
    /// `budget(0.0, 0, ttl)` allows no retry at all (the budget is spent
    /// before it is funded), unlike [`RetryConfigBuilder::no_budget`], which
    /// leaves retries unbounded but for `max_retries`. `budget(0.0, n, ttl)`
    /// allows only `n` retries per second, whatever the traffic.
    pub fn budget(mut self, percent: f64, min_per_second: u32, ttl: Duration) -> Self {
        self.config.budget = Some(RetryBudgetConfig {
            percent,
            min_per_second,
            ttl,
        });
        self
    }

    /// Limits retries as `budget` says; the same as
    /// [`RetryConfigBuilder::budget`] with its fields.
    pub fn budget_config(mut self, budget: RetryBudgetConfig) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Retries without a budget (only the retry limit bounds them). For no
    /// retries at all, use `budget(0.0, 0, ttl)` or `max_retries(0)`.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Gives up, across all attempts and waits, after `d`.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.config.deadline = Some(d);
        self
    }

    /// Cancels an attempt after `d` (it then counts as a timeout, which is
    /// retryable).
    pub fn per_attempt_timeout(mut self, d: Duration) -> Self {
        self.config.per_attempt_timeout = Some(d);
        self
    }

    /// Hedges calls instead of retrying them: a copy goes to another
    /// endpoint every [`Hedging::delay`] without an answer, the first
    /// fatal answer wins, and each copy after the first is paid from the
    /// retry budget (see [`Hedging`]). Only requests that may be sent more
    /// than once are hedged (an idempotent method, an `Idempotency-Key`,
    /// [`RetryConfigBuilder::retry_non_idempotent`], or a gRPC call) with
    /// a replayable body; the others are retried as usual. The custom
    /// condition ([`RetryConfigBuilder::retry_if`]) does not apply to
    /// hedges.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_retry::{Hedging, RetryConfig};
    ///
    /// let config = RetryConfig::builder()
    ///     .hedging(Hedging::new(3, Duration::from_millis(50))?)
    ///     .build()?;
    /// assert_eq!(config.hedging().map(Hedging::max_attempts), Some(3));
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.config.hedging = Some(hedging);
        self
    }

    /// Asks `predicate` first about every failed or successful attempt.
    ///
    /// ```
    /// use mesh_retry::RetryConfig;
    /// // Also retry a 409 Conflict on this API, and never a 429.
    /// let config = RetryConfig::builder()
    ///     .retry_if(|ctx| match ctx.outcome {
    ///         Ok(s) if s == 409 => Some(true),
    ///         Ok(s) if s == 429 => Some(false),
    ///         _ => None,
    ///     })
    ///     .build()?;
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn retry_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&RetryContext<'_>) -> Option<bool> + Send + Sync + 'static,
    {
        self.config.predicate = Some(Arc::new(predicate));
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first
    /// field out of range (`retry.max_retries`, `retry.backoff.multiplier`,
    /// `retry.budget.percent`...).
    pub fn build(self) -> Result<RetryConfig, ConfigError> {
        let c = self.config;
        let hour = Duration::from_secs(3600);
        if c.max_retries > 100 {
            return Err(ConfigError::new(
                "retry.max_retries",
                format!(
                    "{} is more than 100; a request retried that often is a retry storm",
                    c.max_retries
                ),
            ));
        }
        check_backoff(&c.backoff).map_err(|e| e.within("retry.backoff."))?;
        c.make_budget()?;
        if c.max_retry_after > hour {
            return Err(ConfigError::new(
                "retry.max_retry_after",
                format!("{:?} is more than one hour", c.max_retry_after),
            ));
        }
        for (key, d) in [
            ("retry.deadline", c.deadline),
            ("retry.per_attempt_timeout", c.per_attempt_timeout),
        ] {
            if let Some(d) = d {
                if d.is_zero() || d > hour {
                    return Err(ConfigError::new(
                        key,
                        format!("{d:?} is out of range: use more than 0 and at most 1h"),
                    ));
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_context_prints_no_secret() {
        let uri: Uri = "http://admin:hunter2@api/x?token=s3cret".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t0k3n".parse().unwrap());
        let context = RetryContext {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            attempt: 1,
            outcome: Ok(StatusCode::SERVICE_UNAVAILABLE),
        };
        let printed = format!("{context:?}");
        assert!(
            printed.contains("authorization") && printed.contains("api/x"),
            "{printed}"
        );
        for secret in ["hunter2", "s3cret", "t0k3n"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn defaults_follow_the_design_document() {
        let c = RetryConfig::default();
        for code in RetryConfig::DEFAULT_RETRYABLE_STATUSES {
            assert!(c.retries_status(StatusCode::from_u16(code).unwrap()));
        }
        assert!(!c.retries_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!c.retries_error(FailureKind::Other));
        assert!(c.retries_error(FailureKind::Connect));
        assert_eq!(c.max_retry_after(), Duration::from_secs(1));
    }

    #[test]
    fn a_zero_budget_is_valid_and_funds_nothing() {
        let c = RetryConfig::builder()
            .budget(0.0, 0, Duration::from_secs(10))
            .build()
            .unwrap();
        let budget = c.new_budget().expect("a budget");
        let now = mesh_core::clock::now();
        for _ in 0..1000 {
            budget.deposit(now);
        }
        assert!(!budget.try_withdraw(now));
        assert!(RetryConfig::builder()
            .no_budget()
            .build()
            .unwrap()
            .new_budget()
            .is_none());
    }

    #[test]
    fn absurd_values_are_refused_by_name() {
        let cases = [
            (
                RetryConfig::builder().max_retries(1000),
                "retry.max_retries",
            ),
            (
                RetryConfig::builder().backoff(
                    Backoff::constant(Duration::from_secs(1)).max_delay(Duration::from_secs(7200)),
                ),
                "retry.backoff.max_delay",
            ),
            (
                RetryConfig::builder().backoff(Backoff::exponential(Duration::from_secs(1), 0.5)),
                "retry.backoff.multiplier",
            ),
            (
                RetryConfig::builder().budget(2000.0, 0, Duration::from_secs(10)),
                "retry.budget.percent",
            ),
            (
                RetryConfig::builder().max_retry_after(Duration::from_secs(7200)),
                "retry.max_retry_after",
            ),
            (
                RetryConfig::builder().deadline(Duration::ZERO),
                "retry.deadline",
            ),
            (
                RetryConfig::builder().per_attempt_timeout(Duration::from_secs(7200)),
                "retry.per_attempt_timeout",
            ),
        ];
        for (builder, key) in cases {
            let err = builder.build().expect_err(key);
            assert_eq!(err.key(), key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
