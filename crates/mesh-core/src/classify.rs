//! Failure classification, shared by the breaker and retry layers.
//!
//! Both layers must agree on what a failure is, or a breaker would open on
//! calls that retry considers fine. The default: a connect error, a timeout,
//! a reset connection and a 5xx status are failures; a 4xx is the caller's
//! mistake, not the upstream's, and is not. Which statuses fail is
//! configurable; every error is a failure, and its kind is read from the
//! error itself.

use std::error::Error;
use std::fmt;
use std::io;

use http::StatusCode;

use crate::error::MeshError;

/// How a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection could not be established: the request was never sent,
    /// so it is always safe to send again.
    Connect,
    /// The call took longer than its timeout.
    Timeout,
    /// The connection broke while the request or response was in transit.
    Reset,
    /// A circuit breaker refused the call without sending it.
    CircuitOpen,
    /// The upstream answered with a status classified as a failure.
    Status(StatusCode),
    /// Any other error.
    Other,
}

impl FailureKind {
    /// Whether the request certainly never reached the upstream, so sending
    /// it again cannot apply it twice.
    pub fn never_sent(self) -> bool {
        matches!(self, FailureKind::Connect | FailureKind::CircuitOpen)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Connect => f.write_str("connect error"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Reset => f.write_str("connection reset"),
            FailureKind::CircuitOpen => f.write_str("circuit open"),
            FailureKind::Status(s) => write!(f, "status {}", s.as_u16()),
            FailureKind::Other => f.write_str("error"),
        }
    }
}

/// The verdict on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded (a response not classified as a failure).
    Success,
    /// The call failed.
    Failure(FailureKind),
}

impl Outcome {
    /// Whether this is a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure(_))
    }
}

/// A set of HTTP status codes, as a fixed 500-bit bitmap (codes 100 to 599):
/// membership is one shift and one mask, with no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusSet([u64; 8]);

// === impl StatusSet ===

impl StatusSet {
    /// The empty set.
    pub const EMPTY: StatusSet = StatusSet([0; 8]);

    fn slot(code: StatusCode) -> Option<(usize, u64)> {
        let i = usize::from(code.as_u16()).checked_sub(100)?;
        (i < 500).then(|| (i / 64, 1u64 << (i % 64)))
    }

    /// Adds a status.
    pub fn insert(&mut self, code: StatusCode) {
        if let Some((word, bit)) = Self::slot(code) {
            self.0[word] |= bit;
        }
    }

    /// Removes a status.
    pub fn remove(&mut self, code: StatusCode) {
        if let Some((word, bit)) = Self::slot(code) {
            self.0[word] &= !bit;
        }
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: StatusCode) -> bool {
        Self::slot(code).is_some_and(|(word, bit)| self.0[word] & bit != 0)
    }

    /// A set of every code in `lo..=hi` that is a valid status.
    pub fn range(lo: u16, hi: u16) -> StatusSet {
        let mut set = StatusSet::EMPTY;
        for code in lo..=hi {
            if let Ok(code) = StatusCode::from_u16(code) {
                set.insert(code);
            }
        }
        set
    }

    /// The codes in the set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = StatusCode> + '_ {
        (100u16..600)
            .filter_map(|c| StatusCode::from_u16(c).ok())
            .filter(|c| self.contains(*c))
    }
}

impl FromIterator<StatusCode> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusCode>>(iter: I) -> Self {
        let mut set = StatusSet::EMPTY;
        for code in iter {
            set.insert(code);
        }
        set
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|c| c.as_u16()))
            .finish()
    }
}

/// Decides whether a response or an error is a failure.
///
/// ```
/// use http::StatusCode;
/// use mesh_core::{FailureClassifier, FailureKind, Outcome};
///
/// let default = FailureClassifier::default();
/// assert_eq!(default.classify_status(StatusCode::OK), Outcome::Success);
/// assert_eq!(default.classify_status(StatusCode::NOT_FOUND), Outcome::Success);
/// assert_eq!(
///     default.classify_status(StatusCode::SERVICE_UNAVAILABLE),
///     Outcome::Failure(FailureKind::Status(StatusCode::SERVICE_UNAVAILABLE)),
/// );
///
/// // Treat 429 as a failure too, and 501 as a plain answer.
/// let custom = FailureClassifier::default()
///     .with_failure_status(StatusCode::TOO_MANY_REQUESTS)
///     .without_failure_status(StatusCode::NOT_IMPLEMENTED);
/// assert!(custom.classify_status(StatusCode::TOO_MANY_REQUESTS).is_failure());
/// assert!(!custom.classify_status(StatusCode::NOT_IMPLEMENTED).is_failure());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureClassifier {
    failure_statuses: StatusSet,
}

// === impl FailureClassifier ===

impl FailureClassifier {
    /// A classifier where exactly `statuses` are failures (errors always are).
    pub fn with_failure_statuses(statuses: StatusSet) -> Self {
        FailureClassifier {
            failure_statuses: statuses,
        }
    }

    /// This classifier, also counting `code` as a failure.
    pub fn with_failure_status(mut self, code: StatusCode) -> Self {
        self.failure_statuses.insert(code);
        self
    }

    /// This classifier, no longer counting `code` as a failure.
    pub fn without_failure_status(mut self, code: StatusCode) -> Self {
        self.failure_statuses.remove(code);
        self
    }

    /// The statuses counted as failures.
    pub fn failure_statuses(&self) -> StatusSet {
        self.failure_statuses
    }

    /// The verdict on a response status.
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        if self.failure_statuses.contains(status) {
            Outcome::Failure(FailureKind::Status(status))
        } else {
            Outcome::Success
        }
    }

    /// The verdict on a response.
    pub fn classify_response<B>(&self, response: &http::Response<B>) -> Outcome {
        self.classify_status(response.status())
    }

    /// How an error failed: every error is a failure, and this names its
    /// kind by walking the source chain for a timeout, a refused or reset
    /// connection, or an open circuit.
    pub fn classify_error(&self, error: &(dyn Error + 'static)) -> FailureKind {
        classify_error_chain(error)
    }

    /// The verdict on a call's result.
    pub fn classify_result<B, E>(&self, result: &Result<http::Response<B>, E>) -> Outcome
    where
        E: AsRef<dyn Error + Send + Sync + 'static>,
    {
        match result {
            Ok(response) => self.classify_response(response),
            Err(error) => Outcome::Failure(self.classify_error(error.as_ref())),
        }
    }
}

impl Default for FailureClassifier {
    /// 5xx statuses and all errors are failures.
    fn default() -> Self {
        FailureClassifier::with_failure_statuses(StatusSet::range(500, 599))
    }
}

fn classify_error_chain(error: &(dyn Error + 'static)) -> FailureKind {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<tower::timeout::error::Elapsed>() {
            return FailureKind::Timeout;
        }
        if let Some(mesh) = e.downcast_ref::<MeshError>() {
            match mesh {
                MeshError::CircuitOpen { .. } => return FailureKind::CircuitOpen,
                MeshError::Endpoint { .. } => {}
                _ => return FailureKind::Other,
            }
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable => return FailureKind::Connect,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return FailureKind::Reset,
                io::ErrorKind::TimedOut => return FailureKind::Timeout,
                _ => {}
            }
        }
        next = e.source();
    }
    FailureKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{EndpointId, ServiceName};
    use proptest::prelude::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn finds_io_kinds_deep_in_the_chain() {
        let c = FailureClassifier::default();
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(c.classify_error(&refused), FailureKind::Connect);
        let reset = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(c.classify_error(&reset), FailureKind::Reset);
        let other = Wrapper(io::Error::other("boom"));
        assert_eq!(c.classify_error(&other), FailureKind::Other);
    }

    #[test]
    fn recognises_tower_timeouts_and_open_circuits_behind_endpoint_context() {
        let c = FailureClassifier::default();
        let wrapped = MeshError::Endpoint {
            service: ServiceName::new("s").unwrap(),
            endpoint: EndpointId::new("e").unwrap(),
            address: "127.0.0.1:1".parse().unwrap(),
            source: Box::new(tower::timeout::error::Elapsed::new()),
        };
        assert_eq!(c.classify_error(&wrapped), FailureKind::Timeout);
        let open = MeshError::CircuitOpen {
            service: None,
            endpoint: None,
            retry_in: std::time::Duration::ZERO,
        };
        assert_eq!(c.classify_error(&open), FailureKind::CircuitOpen);
        assert!(FailureKind::CircuitOpen.never_sent());
        assert!(!FailureKind::Timeout.never_sent());
    }

    proptest! {
        #[test]
        fn default_fails_exactly_the_5xx(code in 100u16..600) {
            let status = StatusCode::from_u16(code).unwrap();
            let failed = FailureClassifier::default().classify_status(status).is_failure();
            prop_assert_eq!(failed, (500..600).contains(&code));
        }

        #[test]
        fn status_set_is_a_set(codes in proptest::collection::btree_set(100u16..600, 0..50)) {
            let set: StatusSet = codes.iter().map(|c| StatusCode::from_u16(*c).unwrap()).collect();
            let back: Vec<u16> = set.iter().map(|c| c.as_u16()).collect();
            prop_assert_eq!(back, codes.into_iter().collect::<Vec<_>>());
        }
    }
}
