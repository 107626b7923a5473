//! gRPC statuses as the layers judge them: a call answered with HTTP 200
//! may still have failed, its outcome in `grpc-status`.
//!
//! A *trailers-only* response (what a server sends for an error before
//! any message, as tonic does for a handler's `Err(Status)`) carries
//! `grpc-status` in its headers, so the outcome is known when the headers
//! arrive; that is what [`status_of`] reads. A status sent in trailers
//! after messages arrives only at the end of the body.

use std::fmt;

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
}

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
}

/// The `grpc-status` a response's headers carry (a trailers-only
/// response), if any. A malformed value reads as `UNKNOWN`, as gRPC
/// clients read it.
pub fn status_of<B>(response: &http::Response<B>) -> Option<GrpcCode> {
    let value = response.headers().get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .and_then(GrpcCode::new);
    Some(code.unwrap_or(GrpcCode::UNKNOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &str) -> http::Response<()> {
        http::Response::builder()
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
    fn application_codes_never_count_against_an_instance() {
        let failures = GrpcCodes::failures();
        assert!(failures.contains(GrpcCode::UNAVAILABLE));
        assert!(!failures.contains(GrpcCode::NOT_FOUND));
        assert!(!failures.contains(GrpcCode::OK));
        assert!(GrpcCodes::retryable().contains(GrpcCode::UNAVAILABLE));
        assert!(!GrpcCodes::retryable().contains(GrpcCode::INTERNAL));
    }
}
