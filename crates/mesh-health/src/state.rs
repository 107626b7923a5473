//! The judgement of one check's results: thresholds in, a status out.

use std::time::Duration;

use serde::Serialize;

/// Where a check stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Not passed yet: never run, or failed fewer times than its failure
    /// threshold before any success.
    Pending,
    /// Passing.
    Passing,
    /// Failed `failure_threshold` times in a row and not recovered since.
    Failing,
}

/// A change of status worth telling about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Failed,
    Recovered,
}

/// The running record of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckState {
    pub(crate) status: CheckStatus,
    pub(crate) consecutive_failures: u32,
    pub(crate) consecutive_successes: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) last_duration: Option<Duration>,
    pub(crate) runs: u64,
    pub(crate) failures: u64,
}

impl CheckState {
    pub(crate) fn new() -> Self {
        CheckState {
            status: CheckStatus::Pending,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_error: None,
            last_duration: None,
            runs: 0,
            failures: 0,
        }
    }

    /// Records one run. A pending check passes on its first success (there
    /// is nothing to recover from) and fails after `failure_threshold`
    /// failures like a passing one; a failing one passes again after
    /// `success_threshold` successes in a row.
    pub(crate) fn record(
        &mut self,
        outcome: Result<(), String>,
        took: Duration,
        failure_threshold: u32,
        success_threshold: u32,
    ) -> Transition {
        self.runs += 1;
        self.last_duration = Some(took);
        match outcome {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                match self.status {
                    CheckStatus::Pending => {
                        self.status = CheckStatus::Passing;
                        Transition::None
                    }
                    CheckStatus::Failing if self.consecutive_successes >= success_threshold => {
                        self.status = CheckStatus::Passing;
                        self.last_error = None;
                        Transition::Recovered
                    }
                    _ => Transition::None,
                }
            }
            Err(error) => {
                self.failures += 1;
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(error);
                if self.status != CheckStatus::Failing
                    && self.consecutive_failures >= failure_threshold
                {
                    self.status = CheckStatus::Failing;
                    Transition::Failed
                } else {
                    Transition::None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: failing exactly when the last
        /// `failure_threshold` runs failed (counting from passing), and
        /// passing again exactly after `success_threshold` successes.
        #[test]
        fn thresholds_hold_for_any_sequence(
            runs in proptest::collection::vec(any::<bool>(), 0..200),
            fail_at in 1u32..6,
            pass_at in 1u32..6,
        ) {
            let mut state = CheckState::new();
            let mut model = CheckStatus::Pending;
            let (mut fails, mut oks) = (0u32, 0u32);
            for ok in runs {
                let outcome = if ok { Ok(()) } else { Err("down".to_owned()) };
                let transition = state.record(outcome, Duration::from_millis(1), fail_at, pass_at);
                let before = model;
                if ok {
                    fails = 0;
                    oks += 1;
                    model = match model {
                        CheckStatus::Pending => CheckStatus::Passing,
                        CheckStatus::Failing if oks >= pass_at => CheckStatus::Passing,
                        other => other,
                    };
                } else {
                    oks = 0;
                    fails += 1;
                    if fails >= fail_at {
                        model = CheckStatus::Failing;
                    }
                }
                prop_assert_eq!(state.status, model);
                let expected = match (before, model) {
                    (CheckStatus::Failing, CheckStatus::Passing) => Transition::Recovered,
                    (b, CheckStatus::Failing) if b != CheckStatus::Failing => Transition::Failed,
                    _ => Transition::None,
                };
                prop_assert_eq!(transition, expected);
            }
        }
    }
}
