//! gRPC statuses as the layers judge them: a call answered with HTTP 200
//! may still have failed, its outcome in `grpc-status`.
//!
//! Only an `application/grpc` answer has a gRPC status; any other is
//! judged by its HTTP status. A *trailers-only* response (what a server
//! sends for an error before any message, as tonic does for a handler's
//! `Err(Status)`) carries `grpc-status` in its headers, so the outcome is
//! known when the headers arrive. A status sent in trailers after messages
//! arrives only at the end of the body. [`Answer::of`] tells the kinds
//! apart in one reading of the headers, and [`BodyEnd::of`] reads a
//! streamed answer's status from the frame that ends its body.

use std::fmt;
use std::task::Poll;

use http_body::Frame;

/// A gRPC status code (0 `OK` to 16 `UNAUTHENTICATED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcCode(u8);

impl GrpcCode {
    /// `OK`.
    pub const OK: GrpcCode = GrpcCode(0);
    /// `UNKNOWN`.
    pub const UNKNOWN: GrpcCode = GrpcCode(2);
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: GrpcCode = GrpcCode(4);
    /// `NOT_FOUND`.
    pub const NOT_FOUND: GrpcCode = GrpcCode(5);
    /// `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: GrpcCode = GrpcCode(8);
    /// `INTERNAL`.
    pub const INTERNAL: GrpcCode = GrpcCode(13);
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);

    /// The code numbered `n`, if gRPC defines one (0 to 16).
    pub fn new(n: u32) -> Option<GrpcCode> {
        (n <= 16).then_some(GrpcCode(n as u8))
    }

    /// Its number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The code named `name` as gRPC's service config and status
    /// documentation write it (`UNAVAILABLE`, `NOT_FOUND`...).
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        let n = NAMES.iter().position(|known| *known == name)?;
        GrpcCode::new(n as u32)
    }

    /// Its name (`UNAVAILABLE`).
    pub fn name(self) -> &'static str {
        NAMES[usize::from(self.0)]
    }
}

/// gRPC's code names, by number.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc-status {}", self.0)
    }
}

/// A set of gRPC codes, as a bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// No code.
    pub const NONE: GrpcCodes = GrpcCodes(0);

    /// The codes that count against an instance by default, as gRPC's own
    /// guidance has them: `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE`. Application codes
    /// (`NOT_FOUND`, `INVALID_ARGUMENT`...) never do.
    pub fn failures() -> GrpcCodes {
        GrpcCodes::of([
            GrpcCode::UNKNOWN,
            GrpcCode::DEADLINE_EXCEEDED,
            GrpcCode::RESOURCE_EXHAUSTED,
            GrpcCode::INTERNAL,
            GrpcCode::UNAVAILABLE,
        ])
    }

    /// The codes retried by default: `UNAVAILABLE` (the server did not
    /// process the call).
    pub fn retryable() -> GrpcCodes {
        GrpcCodes::of([GrpcCode::UNAVAILABLE])
    }

    /// Exactly `codes`.
    pub fn of(codes: impl IntoIterator<Item = GrpcCode>) -> GrpcCodes {
        GrpcCodes(codes.into_iter().fold(0, |bits, c| bits | 1 << c.0))
    }

    /// Whether `code` is in the set.
    pub fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code.0) != 0
    }

    /// The codes in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = GrpcCode> {
        (0..=16)
            .filter_map(GrpcCode::new)
            .filter(move |c| self.contains(*c))
    }
}

/// What a response's headers say of its gRPC status, read with one
/// lookup of its content type and, for a gRPC answer only, one of
/// `grpc-status`: the layers that judge a response read it once.
///
/// Only a gRPC answer has a gRPC status: one whose content type is not
/// `application/grpc` (a proxy's error page, say) is judged by its HTTP
/// status, whatever headers it carries, as gRPC's own clients do. This
/// also spares every other answer the lookup of a name that is not a
/// standard header's.
///
/// ```
/// use mesh_core::grpc::{Answer, GrpcCode};
///
/// let answer = |content_type: &str, status: Option<&str>| {
///     let mut b = http::Response::builder().header("content-type", content_type);
///     if let Some(s) = status {
///         b = b.header("grpc-status", s);
///     }
///     Answer::of(&b.body(()).unwrap())
/// };
/// assert_eq!(
///     answer("application/grpc", Some("14")),
///     Answer::TrailersOnly(GrpcCode::UNAVAILABLE)
/// );
/// assert_eq!(answer("application/grpc+proto", None), Answer::Streamed);
/// assert_eq!(answer("text/html", Some("14")), Answer::Http);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Judged by its HTTP status: not a gRPC answer, or one that is not
    /// `200` and names no status.
    Http,
    /// A trailers-only answer: its status is in its headers (a malformed
    /// one reads as `UNKNOWN`, as gRPC clients read it).
    TrailersOnly(GrpcCode),
    /// A `200` gRPC answer whose status comes in the trailers after its
    /// messages: its outcome is known only at the end of its body
    /// ([`BodyEnd::of`]).
    Streamed,
}

impl Answer {
    /// What `response`'s headers say, for a call its context says is
    /// (`Some(true)`) or is not (`Some(false)`) a gRPC call
    /// ([`CallContext::is_grpc_call`](crate::ext::CallContext::is_grpc_call)),
    /// or `None` when no layer noted it: the answer to a plain call is
    /// judged by its HTTP status, without a lookup.
    pub fn of_call<B>(grpc_call: Option<bool>, response: &http::Response<B>) -> Answer {
        match grpc_call {
            Some(false) => Answer::Http,
            Some(true) | None => Answer::of(response),
        }
    }

    /// The gRPC code that decides an answer with HTTP `status`: a
    /// trailers-only code of a `200`; any other answer is decided by its
    /// HTTP status (or, streamed, by its trailers).
    pub fn deciding_code(self, status: http::StatusCode) -> Option<GrpcCode> {
        match self {
            Answer::TrailersOnly(code) if status == http::StatusCode::OK => Some(code),
            _ => None,
        }
    }

    /// What `response`'s headers say.
    pub fn of<B>(response: &http::Response<B>) -> Answer {
        if !is_grpc(response) {
            return Answer::Http;
        }
        match status_in(response.headers()) {
            Some(code) => Answer::TrailersOnly(code),
            None if response.status() == http::StatusCode::OK => Answer::Streamed,
            None => Answer::Http,
        }
    }
}

/// The `grpc-status` a gRPC response's headers carry (a trailers-only
/// response), if any; see [`Answer`].
pub fn status_of<B>(response: &http::Response<B>) -> Option<GrpcCode> {
    match Answer::of(response) {
        Answer::TrailersOnly(code) => Some(code),
        Answer::Http | Answer::Streamed => None,
    }
}

/// Whether `response` is a gRPC answer: its content type is
/// `application/grpc`, alone or with a suffix (`+proto`, `-web`).
pub fn is_grpc<B>(response: &http::Response<B>) -> bool {
    has_grpc_content_type(response.headers())
}

/// Whether `req` is a gRPC call: its content type is `application/grpc`,
/// alone or with a suffix. Only a gRPC call's answer is read for a gRPC
/// status ([`Answer::of_call`]); any other call's is judged by its HTTP
/// status, as gRPC's own clients judge it.
///
/// ```
/// let call = http::Request::post("http://greeter/helloworld.Greeter/SayHello")
///     .header("content-type", "application/grpc+proto")
///     .body(())
///     .unwrap();
/// assert!(mesh_core::grpc::is_grpc_call(&call));
/// assert!(!mesh_core::grpc::is_grpc_call(&http::Request::new(())));
/// ```
pub fn is_grpc_call<B>(req: &http::Request<B>) -> bool {
    has_grpc_content_type(req.headers())
}

fn has_grpc_content_type(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in `headers` (response headers or trailers), if any;
/// a malformed value reads as `UNKNOWN`.
pub fn status_in(headers: &http::HeaderMap) -> Option<GrpcCode> {
    // A constant name: looking up by `&str` would parse it on every
    // response.
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(&GRPC_STATUS)?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .and_then(GrpcCode::new);
    Some(code.unwrap_or(GrpcCode::UNKNOWN))
}

/// The `grpc-timeout` a gRPC caller set in `headers`: how long the caller
/// waits for the call (`100m`, `5S`: at most 8 digits and a unit of `H`,
/// `M`, `S`, `m`, `u` or `n`, as gRPC's wire format has it). `None` when
/// absent or malformed, which sets no deadline.
///
/// ```
/// use std::time::Duration;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-timeout", http::HeaderValue::from_static("250m"));
/// assert_eq!(mesh_core::grpc::timeout_in(&headers), Some(Duration::from_millis(250)));
/// headers.insert("grpc-timeout", http::HeaderValue::from_static("1.5S"));
/// assert_eq!(mesh_core::grpc::timeout_in(&headers), None);
/// ```
pub fn timeout_in(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether `response` is a gRPC answer whose status comes in trailers
/// after its messages ([`Answer::Streamed`]).
pub fn ends_in_trailers<B>(response: &http::Response<B>) -> bool {
    Answer::of(response) == Answer::Streamed
}

/// How a gRPC response body ended, as read from the frame that ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Trailers arrived carrying this status (`UNKNOWN` for a malformed
    /// one).
    Status(GrpcCode),
    /// The body ended without a `grpc-status`: the server broke the
    /// protocol, which gRPC clients report as `INTERNAL`.
    NoStatus,
    /// The body failed (the stream was reset, the connection lost).
    Broken,
}

impl BodyEnd {
    /// How the body ended, if `polled` (a body's `poll_frame` result)
    /// ends it: trailers, the end of the stream, or an error. Data frames
    /// and pending polls end nothing.
    pub fn of<D, E>(polled: &Poll<Option<Result<Frame<D>, E>>>) -> Option<BodyEnd> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| status_in(t).map_or(BodyEnd::NoStatus, BodyEnd::Status)),
            Poll::Ready(None) => Some(BodyEnd::NoStatus),
            Poll::Ready(Some(Err(_))) => Some(BodyEnd::Broken),
            Poll::Pending => None,
        }
    }

    /// The status the caller sees: a missing one is `INTERNAL`, a broken
    /// body `UNAVAILABLE` (what gRPC clients report for a lost stream).
    pub fn code(self) -> GrpcCode {
        match self {
            BodyEnd::Status(code) => code,
            BodyEnd::NoStatus => GrpcCode::INTERNAL,
            BodyEnd::Broken => GrpcCode::UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_wire_writes_them_and_malformed_ones_set_none() {
        use std::time::Duration;
        let read = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-timeout",
                http::HeaderValue::from_str(v).expect("value"),
            );
            timeout_in(&headers)
        };
        assert_eq!(read("100m"), Some(Duration::from_millis(100)));
        assert_eq!(read("5S"), Some(Duration::from_secs(5)));
        assert_eq!(read("2M"), Some(Duration::from_secs(120)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("250u"), Some(Duration::from_micros(250)));
        assert_eq!(read("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "m", "100", "100x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(timeout_in(&http::HeaderMap::new()), None);
    }

    fn answered(status: &str) -> http::Response<()> {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", status)
            .body(())
            .expect("response")
    }

    #[test]
    fn a_trailers_only_status_is_read_and_a_malformed_one_is_unknown() {
        assert_eq!(status_of(&answered("14")), Some(GrpcCode::UNAVAILABLE));
        assert_eq!(status_of(&answered("0")), Some(GrpcCode::OK));
        assert_eq!(status_of(&answered("banana")), Some(GrpcCode::UNKNOWN));
        assert_eq!(status_of(&answered("99")), Some(GrpcCode::UNKNOWN));
        assert_eq!(status_of(&http::Response::new(())), None);
    }

    #[test]
    fn an_answer_that_is_not_grpc_has_no_grpc_status() {
        let page = |content_type: &str| {
            http::Response::builder()
                .status(http::StatusCode::OK)
                .header("content-type", content_type)
                .header("grpc-status", "14")
                .body(())
                .expect("response")
        };
        assert_eq!(status_of(&page("text/html")), None, "a proxy's page");
        assert_eq!(status_of(&page("application/json")), None);
        assert_eq!(
            status_of(&page("application/grpc-web+proto")),
            Some(GrpcCode::UNAVAILABLE)
        );
        let untyped = http::Response::builder()
            .header("grpc-status", "14")
            .body(())
            .expect("response");
        assert_eq!(status_of(&untyped), None, "no content type");
    }

    #[test]
    fn a_body_ends_with_its_trailers_status_or_without_one() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        type Polled = Poll<Option<Result<Frame<&'static [u8]>, ()>>>;
        let ended = |p: Polled| BodyEnd::of(&p);
        assert_eq!(
            ended(Poll::Ready(Some(Ok(Frame::trailers(trailers))))),
            Some(BodyEnd::Status(GrpcCode::UNAVAILABLE))
        );
        let no_status = Frame::trailers(http::HeaderMap::new());
        assert_eq!(
            ended(Poll::Ready(Some(Ok(no_status)))),
            Some(BodyEnd::NoStatus)
        );
        assert_eq!(
            ended(Poll::Ready(None)).map(BodyEnd::code),
            Some(GrpcCode::INTERNAL)
        );
        assert_eq!(ended(Poll::Ready(Some(Err(())))), Some(BodyEnd::Broken));
        assert_eq!(ended(Poll::Ready(Some(Ok(Frame::data(&b"m"[..]))))), None);
        assert_eq!(ended(Poll::Pending), None);
    }

    #[test]
    fn only_a_grpc_answer_without_a_status_in_its_headers_waits_for_trailers() {
        let grpc = |status: Option<&str>| {
            let mut b = http::Response::builder().header("content-type", "application/grpc+proto");
            if let Some(s) = status {
                b = b.header("grpc-status", s);
            }
            b.body(()).expect("response")
        };
        assert!(ends_in_trailers(&grpc(None)));
        assert!(!ends_in_trailers(&grpc(Some("0"))), "trailers-only");
        assert!(!ends_in_trailers(&http::Response::new(())), "not gRPC");
    }

    #[test]
    fn one_reading_tells_every_kind_of_answer_apart() {
        let answer = |status: u16, content_type: Option<&str>, grpc_status: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(t) = content_type {
                b = b.header("content-type", t);
            }
            if let Some(s) = grpc_status {
                b = b.header("grpc-status", s);
            }
            Answer::of(&b.body(()).expect("response"))
        };
        let grpc = Some("application/grpc");
        assert_eq!(answer(200, grpc, None), Answer::Streamed);
        assert_eq!(
            answer(200, grpc, Some("14")),
            Answer::TrailersOnly(GrpcCode::UNAVAILABLE)
        );
        assert_eq!(
            answer(503, grpc, Some("14")),
            Answer::TrailersOnly(GrpcCode::UNAVAILABLE),
            "read whatever the HTTP status; the classifier weighs it"
        );
        assert_eq!(answer(503, grpc, None), Answer::Http, "a proxy's 503");
        assert_eq!(answer(200, Some("text/html"), Some("14")), Answer::Http);
        assert_eq!(answer(200, None, None), Answer::Http);
    }

    #[test]
    fn a_plain_call_s_answer_is_read_for_its_http_status_alone() {
        let unavailable = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(())
            .expect("response");
        assert_eq!(Answer::of_call(Some(false), &unavailable), Answer::Http);
        let read = Answer::TrailersOnly(GrpcCode::UNAVAILABLE);
        assert_eq!(Answer::of_call(Some(true), &unavailable), read);
        assert_eq!(Answer::of_call(None, &unavailable), read, "not noted");
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(
            GrpcCode::from_name("UNAVAILABLE"),
            Some(GrpcCode::UNAVAILABLE)
        );
        assert_eq!(GrpcCode::from_name("OK"), Some(GrpcCode::OK));
        assert_eq!(
            GrpcCode::from_name("UNAUTHENTICATED").map(GrpcCode::get),
            Some(16)
        );
        assert_eq!(GrpcCode::from_name("unavailable"), None);
        assert_eq!(GrpcCode::NOT_FOUND.name(), "NOT_FOUND");
    }

    #[test]
    fn application_codes_never_count_against_an_instance() {
        let failures = GrpcCodes::failures();
        assert!(failures.contains(GrpcCode::UNAVAILABLE));
        assert!(!failures.contains(GrpcCode::NOT_FOUND));
        assert!(!failures.contains(GrpcCode::OK));
        assert!(GrpcCodes::retryable().contains(GrpcCode::UNAVAILABLE));
        let listed: Vec<u8> = failures.iter().map(GrpcCode::get).collect();
        assert_eq!(listed, [2, 4, 8, 13, 14]);
        assert!(!GrpcCodes::retryable().contains(GrpcCode::INTERNAL));
    }
}
