//! [`Race`]: the bookkeeping of one hedged call, with no tower in it: how
//! many copies went out, how many are still running, and what an answer
//! means for the next copy.

use std::time::Duration;

use http::Response;
use mesh_core::{BoxError, FailureClassifier, FailureKind, MeshError};

use crate::grpc::{self, Pushback};
use crate::hedge::config::Hedging;

/// What one copy's answer means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The call's answer: it wins, the other copies are cancelled.
    Fatal,
    /// This copy's instance failed it; another copy may do better.
    NonFatal {
        /// Why, for logs and events.
        reason: FailureKind,
        /// The server's `grpc-retry-pushback-ms`, if it sent one.
        pushback: Option<Pushback>,
    },
}

/// What the call does next, after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// End with the answer just received.
    Return,
    /// Send the next copy now.
    SendNow,
    /// Send the next copy after this long (the server's pushback).
    SendAfter(Duration),
    /// Wait for the copies still running (or the hedging timer).
    Await,
}

/// The copies of one hedged call.
#[derive(Clone, Debug)]
pub(crate) struct Race {
    max_copies: u32,
    sent: u32,
    running: u32,
    closed: bool,
}

// === impl Race ===

impl Race {
    /// A call that may send up to `max_copies` copies; none sent yet.
    pub(crate) fn new(max_copies: u32) -> Race {
        Race {
            max_copies,
            sent: 0,
            running: 0,
            closed: false,
        }
    }

    /// Whether another copy may go out.
    pub(crate) fn may_send(&self) -> bool {
        !self.closed && self.sent < self.max_copies
    }

    /// Notes a copy sent; returns its number (1 for the first).
    pub(crate) fn sent(&mut self) -> u32 {
        self.sent += 1;
        self.running += 1;
        self.sent
    }

    /// Copies sent so far.
    pub(crate) fn copies(&self) -> u32 {
        self.sent
    }

    /// Whether no copy is running.
    pub(crate) fn is_idle(&self) -> bool {
        self.running == 0
    }

    /// No more copies go out (the budget is spent, the deadline passed, the
    /// server pushed back for good or past the deadline with no copy left
    /// running).
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// A running copy ended with `answer`: what next.
    pub(crate) fn settle(&mut self, answer: Answer) -> Next {
        self.running = self.running.saturating_sub(1);
        let pushback = match answer {
            Answer::Fatal => return Next::Return,
            Answer::NonFatal { pushback, .. } => pushback,
        };
        if pushback == Some(Pushback::Stop) {
            self.close();
        }
        match (self.may_send(), pushback) {
            (true, Some(Pushback::After(d))) => Next::SendAfter(d),
            (true, _) => Next::SendNow,
            (false, _) if self.is_idle() => Next::Return,
            (false, _) => Next::Await,
        }
    }
}

/// Judges one copy's outcome under `hedging`.
///
/// Non-fatal: a status or gRPC code in the non-fatal sets, a connection
/// that could not be made or broke, an attempt cut by its own timeout (it
/// names its endpoint), and a circuit open for one endpoint. Everything
/// else is the call's answer, success and the deadline's timeout included.
pub(crate) fn judge<RB>(
    hedging: &Hedging,
    classifier: &FailureClassifier,
    result: &Result<Response<RB>, BoxError>,
    grpc_call: Option<bool>,
) -> Answer {
    match result {
        Ok(response) => judge_response(hedging, response, grpc_call),
        Err(error) => {
            let kind = classifier.classify_error(error.as_ref());
            let names_endpoint = MeshError::endpoint_of(error.as_ref()).is_some()
                || matches!(
                    MeshError::find(error.as_ref()),
                    Some(MeshError::CircuitOpen {
                        endpoint: Some(_),
                        ..
                    })
                );
            let non_fatal = match kind {
                FailureKind::Connect | FailureKind::Reset => true,
                FailureKind::Timeout | FailureKind::CircuitOpen => names_endpoint,
                _ => false,
            };
            if non_fatal {
                Answer::NonFatal {
                    reason: kind,
                    pushback: None,
                }
            } else {
                Answer::Fatal
            }
        }
    }
}

fn judge_response<RB>(
    hedging: &Hedging,
    response: &Response<RB>,
    grpc_call: Option<bool>,
) -> Answer {
    let grpc =
        mesh_core::grpc::Answer::of_call(grpc_call, response).deciding_code(response.status());
    let (non_fatal, reason) = match grpc {
        Some(code) => (hedging.is_non_fatal_grpc(code), FailureKind::Grpc(code)),
        None => (
            hedging.is_non_fatal_status(response.status()),
            FailureKind::Status(response.status()),
        ),
    };
    if !non_fatal {
        return Answer::Fatal;
    }
    Answer::NonFatal {
        reason,
        pushback: grpc.and_then(|_| grpc::pushback(response)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NON_FATAL: Answer = Answer::NonFatal {
        reason: FailureKind::Connect,
        pushback: None,
    };

    #[test]
    fn a_fatal_answer_ends_the_race_whatever_is_still_running() {
        let mut race = Race::new(3);
        race.sent();
        race.sent();
        assert_eq!(race.settle(Answer::Fatal), Next::Return);
    }

    #[test]
    fn a_non_fatal_answer_sends_the_next_copy_at_once_until_none_is_left() {
        let mut race = Race::new(2);
        race.sent();
        assert_eq!(race.settle(NON_FATAL), Next::SendNow);
        race.sent();
        assert_eq!(race.settle(NON_FATAL), Next::Return, "the last answer");
    }

    #[test]
    fn pushback_delays_the_next_copy_or_stops_them_all() {
        let mut race = Race::new(3);
        race.sent();
        let wait = Answer::NonFatal {
            reason: FailureKind::Connect,
            pushback: Some(Pushback::After(Duration::from_millis(70))),
        };
        assert_eq!(
            race.settle(wait),
            Next::SendAfter(Duration::from_millis(70))
        );
        race.sent();
        race.sent();
        let stop = Answer::NonFatal {
            reason: FailureKind::Connect,
            pushback: Some(Pushback::Stop),
        };
        assert_eq!(race.settle(stop), Next::Await, "one copy still runs");
        assert!(!race.may_send());
        assert_eq!(race.settle(NON_FATAL), Next::Return);
    }

    #[test]
    fn answers_are_judged_by_the_non_fatal_sets() {
        let hedging = Hedging::new(3, Duration::ZERO).expect("valid");
        let classifier = FailureClassifier::default();
        let answer = |status: u16, grpc: Option<&str>| {
            let mut r = Response::builder().status(status);
            if let Some(code) = grpc {
                r = r
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code);
            }
            judge(
                &hedging,
                &classifier,
                &Ok(r.body(()).expect("response")),
                None,
            )
        };
        assert_eq!(answer(200, None), Answer::Fatal);
        assert_eq!(answer(500, None), Answer::Fatal);
        assert!(matches!(answer(503, None), Answer::NonFatal { .. }));
        assert!(matches!(answer(200, Some("14")), Answer::NonFatal { .. }));
        assert_eq!(
            answer(200, Some("5")),
            Answer::Fatal,
            "NOT_FOUND is an answer"
        );
        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            judge::<()>(&hedging, &classifier, &Err(refused), None),
            Answer::NonFatal { .. }
        ));
        let deadline: BoxError = Box::new(MeshError::Timeout {
            after: Duration::from_millis(5),
        });
        assert_eq!(
            judge::<()>(&hedging, &classifier, &Err(deadline), None),
            Answer::Fatal
        );
    }

    proptest! {
        /// Whatever the answers, no more copies go out than allowed, and
        /// the race ends exactly when a fatal answer comes or nothing is
        /// left to wait for.
        #[test]
        fn copies_never_exceed_the_maximum(
            max in 2u32..=10,
            answers in proptest::collection::vec(any::<bool>(), 1..30),
        ) {
            let mut race = Race::new(max);
            race.sent();
            let mut ended = false;
            for fatal in answers {
                if race.is_idle() {
                    break;
                }
                let next = race.settle(if fatal { Answer::Fatal } else { NON_FATAL });
                prop_assert!(race.copies() <= max);
                match next {
                    Next::Return => { ended = true; break; }
                    Next::SendNow | Next::SendAfter(_) => { prop_assert!(race.may_send()); race.sent(); }
                    Next::Await => prop_assert!(!race.is_idle()),
                }
            }
            prop_assert!(race.copies() <= max);
            prop_assert!(ended || !race.is_idle());
        }
    }
}
