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
    /// The upstream answered a gRPC call with a `grpc-status` classified
    /// as a failure (HTTP 200; in its headers, or in the trailers that end
    /// its body).
    Grpc(crate::grpc::GrpcCode),
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
            FailureKind::Grpc(code) => code.fmt(f),
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
    /// The call says nothing about the upstream's health (a cancelled
    /// request, a status configured as ignored): it counts neither way.
    Ignored,
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

/// The kinds of error a classifier ignores, as a bitmask over the
/// non-status [`FailureKind`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct KindSet(u8);

impl KindSet {
    fn bit(kind: FailureKind) -> u8 {
        match kind {
            FailureKind::Connect => 1,
            FailureKind::Timeout => 2,
            FailureKind::Reset => 4,
            FailureKind::CircuitOpen => 8,
            FailureKind::Status(_) | FailureKind::Grpc(_) => 0,
            FailureKind::Other => 16,
        }
    }
}

/// A user rule consulted before the status and error rules: `Some` decides,
/// `None` leaves the call to them.
pub type OutcomePredicate =
    dyn Fn(Result<StatusCode, &(dyn Error + 'static)>) -> Option<Outcome> + Send + Sync;

/// Decides whether a response or an error is a success, a failure, or
/// neither (ignored).
///
/// Three rules, in order: a custom predicate if one is set; then for a
/// response, its status (failure statuses fail, ignored statuses count
/// neither way, anything else succeeds); for an error, its kind (ignored
/// kinds count neither way, any other error fails).
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
/// // Treat 429 as a failure too, 501 as a plain answer, and ignore 499.
/// let custom = FailureClassifier::default()
///     .with_failure_status(StatusCode::TOO_MANY_REQUESTS)
///     .without_failure_status(StatusCode::NOT_IMPLEMENTED)
///     .with_ignored_status(StatusCode::from_u16(499)?);
/// assert!(custom.classify_status(StatusCode::TOO_MANY_REQUESTS).is_failure());
/// assert!(!custom.classify_status(StatusCode::NOT_IMPLEMENTED).is_failure());
/// assert_eq!(custom.classify_status(StatusCode::from_u16(499)?), Outcome::Ignored);
/// # Ok::<(), http::status::InvalidStatusCode>(())
/// ```
#[derive(Clone)]
pub struct FailureClassifier {
    failure_statuses: StatusSet,
    grpc_failures: crate::grpc::GrpcCodes,
    ignored_statuses: StatusSet,
    ignored_kinds: KindSet,
    predicate: Option<std::sync::Arc<OutcomePredicate>>,
}

// === impl FailureClassifier ===

impl FailureClassifier {
    /// A classifier where exactly `statuses` are failures (errors always are).
    pub fn with_failure_statuses(statuses: StatusSet) -> Self {
        FailureClassifier {
            failure_statuses: statuses,
            grpc_failures: crate::grpc::GrpcCodes::failures(),
            ignored_statuses: StatusSet::EMPTY,
            ignored_kinds: KindSet::default(),
            predicate: None,
        }
    }

    /// This classifier, also counting `code` as a failure.
    pub fn with_failure_status(mut self, code: StatusCode) -> Self {
        self.failure_statuses.insert(code);
        self.ignored_statuses.remove(code);
        self
    }

    /// This classifier, no longer counting `code` as a failure.
    pub fn without_failure_status(mut self, code: StatusCode) -> Self {
        self.failure_statuses.remove(code);
        self
    }

    /// This classifier, counting responses with `code` neither way.
    pub fn with_ignored_status(mut self, code: StatusCode) -> Self {
        self.ignored_statuses.insert(code);
        self.failure_statuses.remove(code);
        self
    }

    /// This classifier, counting errors of `kind` neither way (for
    /// example [`FailureKind::CircuitOpen`], so that a breaker below this
    /// one refusing a call does not count against it).
    pub fn with_ignored_error(mut self, kind: FailureKind) -> Self {
        self.ignored_kinds.0 |= KindSet::bit(kind);
        self
    }

    /// This classifier, asking `predicate` first about every call.
    ///
    /// ```
    /// use http::StatusCode;
    /// use mesh_core::{FailureClassifier, FailureKind, Outcome};
    /// // A 200 from this upstream is only a success if it is not a 204.
    /// let c = FailureClassifier::default().with_predicate(|call| match call {
    ///     Ok(StatusCode::NO_CONTENT) => Some(Outcome::Failure(FailureKind::Other)),
    ///     _ => None,
    /// });
    /// assert!(c.classify_status(StatusCode::NO_CONTENT).is_failure());
    /// assert!(!c.classify_status(StatusCode::OK).is_failure());
    /// ```
    pub fn with_predicate<F>(mut self, predicate: F) -> Self
    where
        F: Fn(Result<StatusCode, &(dyn Error + 'static)>) -> Option<Outcome>
            + Send
            + Sync
            + 'static,
    {
        self.predicate = Some(std::sync::Arc::new(predicate));
        self
    }

    /// The statuses counted as failures.
    pub fn failure_statuses(&self) -> StatusSet {
        self.failure_statuses
    }

    /// The verdict on a response status.
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        if let Some(decided) = self.predicate.as_ref().and_then(|p| p(Ok(status))) {
            return decided;
        }
        if self.failure_statuses.contains(status) {
            Outcome::Failure(FailureKind::Status(status))
        } else if self.ignored_statuses.contains(status) {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }

    /// Counts the gRPC codes in `codes` as failures (by default
    /// [`GrpcCodes::failures`](crate::grpc::GrpcCodes::failures)).
    pub fn with_grpc_failures(mut self, codes: crate::grpc::GrpcCodes) -> Self {
        self.grpc_failures = codes;
        self
    }

    /// The verdict on a response: its status, or for a gRPC call answered
    /// trailers-only, its `grpc-status` (application codes never fail).
    pub fn classify_response<B>(&self, response: &http::Response<B>) -> Outcome {
        self.classify_answer(response.status(), crate::grpc::Answer::of(response))
    }

    /// The verdict on a response with `status` whose headers say `answer`
    /// (read once by a layer that needs it for more than this verdict).
    /// A gRPC answer still streaming is judged at its end
    /// ([`FailureClassifier::classify_body_end`]); until then its headers
    /// say nothing against it.
    ///
    /// ```
    /// use http::StatusCode;
    /// use mesh_core::grpc::{Answer, GrpcCode};
    /// use mesh_core::{FailureClassifier, Outcome};
    ///
    /// let c = FailureClassifier::default();
    /// let unavailable = Answer::TrailersOnly(GrpcCode::UNAVAILABLE);
    /// assert!(matches!(c.classify_answer(StatusCode::OK, unavailable), Outcome::Failure(_)));
    /// let not_found = Answer::TrailersOnly(GrpcCode::NOT_FOUND);
    /// assert_eq!(c.classify_answer(StatusCode::OK, not_found), Outcome::Success);
    /// assert!(matches!(c.classify_answer(StatusCode::BAD_GATEWAY, Answer::Http), Outcome::Failure(_)));
    /// ```
    pub fn classify_answer(&self, status: StatusCode, answer: crate::grpc::Answer) -> Outcome {
        match answer.deciding_code(status) {
            Some(code) if self.grpc_failures.contains(code) => {
                Outcome::Failure(FailureKind::Grpc(code))
            }
            Some(_) => Outcome::Success,
            None => self.classify_status(status),
        }
    }

    /// The verdict on a gRPC response whose status came at the end of its
    /// body ([`BodyEnd`](crate::grpc::BodyEnd)): its code as a trailers-only
    /// status would be judged; a body that ended without a status counts as
    /// `INTERNAL`, and a broken one as a reset connection.
    pub fn classify_body_end(&self, end: crate::grpc::BodyEnd) -> Outcome {
        match end {
            crate::grpc::BodyEnd::Broken => Outcome::Failure(FailureKind::Reset),
            _ if self.grpc_failures.contains(end.code()) => {
                Outcome::Failure(FailureKind::Grpc(end.code()))
            }
            _ => Outcome::Success,
        }
    }

    /// How an error failed, by walking the source chain for a timeout, a
    /// refused or reset connection, or an open circuit. This names the
    /// kind only; [`FailureClassifier::classify_error_outcome`] applies the
    /// predicate and the ignored kinds.
    pub fn classify_error(&self, error: &(dyn Error + 'static)) -> FailureKind {
        classify_error_chain(error)
    }

    /// The verdict on an error: a failure of its kind, unless the
    /// predicate decides otherwise or the kind is ignored.
    pub fn classify_error_outcome(&self, error: &(dyn Error + 'static)) -> Outcome {
        if let Some(decided) = self.predicate.as_ref().and_then(|p| p(Err(error))) {
            return decided;
        }
        let kind = classify_error_chain(error);
        if self.ignored_kinds.0 & KindSet::bit(kind) != 0 {
            Outcome::Ignored
        } else {
            Outcome::Failure(kind)
        }
    }

    /// The verdict on a call's result.
    pub fn classify_result<B, E>(&self, result: &Result<http::Response<B>, E>) -> Outcome
    where
        E: AsRef<dyn Error + Send + Sync + 'static>,
    {
        match result {
            Ok(response) => self.classify_response(response),
            Err(error) => {
                let error: &(dyn Error + Send + Sync + 'static) = error.as_ref();
                self.classify_error_outcome(error)
            }
        }
    }
}

impl fmt::Debug for FailureClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureClassifier")
            .field("failure_statuses", &self.failure_statuses)
            .field("grpc_failures", &self.grpc_failures)
            .field("ignored_statuses", &self.ignored_statuses)
            .field("ignored_kinds", &self.ignored_kinds)
            .field("predicate", &self.predicate.is_some())
            .finish()
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
        if e.is::<crate::error::ConnectError>() {
            return FailureKind::Connect;
        }
        // hyper's own kinds: a pooled connection the peer closed (the
        // instance died or restarted) shows up as an incomplete message, a
        // closed connection or a cancelled request, without an io::Error
        // to say so.
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return FailureKind::Reset;
            }
            if h.is_timeout() {
                return FailureKind::Timeout;
            }
        }
        if let Some(mesh) = e.downcast_ref::<MeshError>() {
            match mesh {
                MeshError::CircuitOpen { .. } => return FailureKind::CircuitOpen,
                MeshError::Timeout { .. } => return FailureKind::Timeout,
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
            // An io::Error's `source` skips the error it wraps (it returns
            // that error's source): step into the wrapped error instead, so
            // a connector's ConnectError carried in an I/O error counts.
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn Error + 'static));
                continue;
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

    #[derive(Debug, thiserror::Error)]
    #[error("client error")]
    struct ClientError(#[source] crate::error::ConnectError);

    #[test]
    fn a_trailers_only_grpc_failure_fails_and_an_application_code_does_not() {
        let c = FailureClassifier::default();
        let answered = |code: &str| {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(())
                .expect("response")
        };
        assert_eq!(
            c.classify_response(&answered("14")),
            Outcome::Failure(FailureKind::Grpc(crate::grpc::GrpcCode::UNAVAILABLE))
        );
        assert_eq!(c.classify_response(&answered("5")), Outcome::Success);
        assert_eq!(c.classify_response(&answered("0")), Outcome::Success);
        let none = c.with_grpc_failures(crate::grpc::GrpcCodes::NONE);
        assert_eq!(none.classify_response(&answered("14")), Outcome::Success);
    }

    #[test]
    fn a_status_in_trailers_is_judged_as_in_headers_and_a_missing_one_fails() {
        use crate::grpc::{BodyEnd, GrpcCode, GrpcCodes};
        let c = FailureClassifier::default();
        let unavailable = BodyEnd::Status(GrpcCode::UNAVAILABLE);
        assert_eq!(
            c.classify_body_end(unavailable),
            Outcome::Failure(FailureKind::Grpc(GrpcCode::UNAVAILABLE))
        );
        assert_eq!(
            c.classify_body_end(BodyEnd::Status(GrpcCode::NOT_FOUND)),
            Outcome::Success
        );
        assert_eq!(
            c.classify_body_end(BodyEnd::Status(GrpcCode::OK)),
            Outcome::Success
        );
        assert_eq!(
            c.classify_body_end(BodyEnd::NoStatus),
            Outcome::Failure(FailureKind::Grpc(GrpcCode::INTERNAL))
        );
        assert_eq!(
            c.classify_body_end(BodyEnd::Broken),
            Outcome::Failure(FailureKind::Reset)
        );
        let none = FailureClassifier::default().with_grpc_failures(GrpcCodes::NONE);
        assert_eq!(none.classify_body_end(unavailable), Outcome::Success);
    }

    #[test]
    fn a_connect_error_carried_in_an_io_error_is_a_connect_failure() {
        let c = FailureClassifier::default();
        let carried = io::Error::new(
            io::ErrorKind::InvalidData,
            crate::error::ConnectError::new("refused after the handshake"),
        );
        assert_eq!(c.classify_error(&Wrapper(carried)), FailureKind::Connect);
    }

    #[test]
    fn a_connector_s_connect_error_is_a_connect_failure() {
        let c = FailureClassifier::default();
        let failed = ClientError(crate::error::ConnectError::new("TLS handshake refused"));
        assert_eq!(c.classify_error(&failed), FailureKind::Connect);
        assert!(FailureKind::Connect.never_sent());
    }

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
            retry_in: None,
        };
        assert_eq!(c.classify_error(&open), FailureKind::CircuitOpen);
        assert!(FailureKind::CircuitOpen.never_sent());
        assert!(!FailureKind::Timeout.never_sent());
    }

    #[test]
    fn ignored_kinds_and_predicates_override_the_default() {
        let c = FailureClassifier::default().with_ignored_error(FailureKind::CircuitOpen);
        let open = MeshError::CircuitOpen {
            service: None,
            endpoint: None,
            retry_in: None,
        };
        assert_eq!(c.classify_error_outcome(&open), Outcome::Ignored);
        let timeout = MeshError::Timeout {
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            c.classify_error_outcome(&timeout),
            Outcome::Failure(FailureKind::Timeout)
        );
        let lenient = c.with_predicate(|call| call.is_err().then_some(Outcome::Success));
        assert_eq!(lenient.classify_error_outcome(&timeout), Outcome::Success);
        let r: Result<http::Response<()>, crate::BoxError> = Err(Box::new(timeout));
        assert_eq!(lenient.classify_result(&r), Outcome::Success);
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
