//! gRPC's retry metadata (gRFC A6): the server's pushback on an answer,
//! and the count of earlier attempts a retry or hedge tells the server.
//!
//! Both are plain headers, read and written here so that the retry policy
//! and the hedging future treat them alike.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use mesh_core::grpc::is_grpc_call;

/// The header a server sets on a trailers-only answer to steer the
/// client's next attempt.
pub(crate) const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The header each retry or hedge of a gRPC call carries: the number of
/// attempts sent before it.
pub(crate) static PREVIOUS_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// What a server's `grpc-retry-pushback-ms` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Send the next attempt after exactly this long, instead of the
    /// backoff (a valid non-negative integer of milliseconds).
    After(Duration),
    /// Send no other attempt: a negative or malformed value, which gRFC A6
    /// reads as the server asking not to be retried.
    Stop,
}

/// The pushback a response's headers carry, if any.
pub(crate) fn pushback<RB>(response: &Response<RB>) -> Option<Pushback> {
    let value = response.headers().get(PUSHBACK)?;
    let ms = value
        .to_str()
        .ok()
        .map(str::trim)
        // Digits only: `-5`, `+5`, `1.5` and `soon` all mean "stop".
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok());
    Some(ms.map_or(Pushback::Stop, |ms| {
        Pushback::After(Duration::from_millis(ms))
    }))
}

/// The header carrying a gRPC call's deadline to the server.
pub(crate) static TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Tells the server, on a gRPC call, the time `left` before the call's
/// deadline, as this attempt leaves: a retry or a hedged copy sent later
/// gets less than the first attempt did, as gRPC clients send it. Rounded
/// up to the millisecond (gRPC's wire format allows at most 8 digits,
/// so past about 27 hours in seconds); other requests are left alone.
pub(crate) fn note_time_left<B>(req: &mut Request<B>, left: Duration, grpc_call: Option<bool>) {
    if !grpc_call.unwrap_or_else(|| is_grpc_call(req)) {
        return;
    }
    let millis = left.as_nanos().div_ceil(1_000_000).max(1);
    let value = match millis < 100_000_000 {
        true => format!("{millis}m"),
        false => format!("{}S", millis.div_ceil(1000).min(99_999_999)),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        req.headers_mut().insert(TIMEOUT.clone(), value);
    }
}

/// Tells the server, on a gRPC call, how many attempts went before this
/// one (overwriting any value the caller set); other requests are left
/// alone.
pub(crate) fn note_previous_attempts<B>(req: &mut Request<B>, previous: u32) {
    if is_grpc_call(req) {
        req.headers_mut()
            .insert(PREVIOUS_ATTEMPTS.clone(), HeaderValue::from(previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    fn answered(value: &str) -> Response<()> {
        Response::builder()
            .header("grpc-status", "14")
            .header(PUSHBACK, value)
            .body(())
            .expect("response")
    }

    #[test]
    fn a_non_negative_integer_is_a_wait_and_anything_else_stops() {
        assert_eq!(
            pushback(&answered("250")),
            Some(Pushback::After(Duration::from_millis(250)))
        );
        assert_eq!(
            pushback(&answered("0")),
            Some(Pushback::After(Duration::ZERO))
        );
        for bad in ["-1", "+5", "1.5", "soon", "", "99999999999999999999999"] {
            assert_eq!(pushback(&answered(bad)), Some(Pushback::Stop), "{bad:?}");
        }
        assert_eq!(pushback(&Response::new(())), None);
    }

    #[test]
    fn a_grpc_call_is_told_the_time_left_in_the_wire_s_units() {
        let told = |left: Duration| {
            let mut call = Request::post("http://users/pkg.Users/Get")
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-timeout", "5S")
                .body(())
                .expect("request");
            note_time_left(&mut call, left, None);
            call.headers()[&TIMEOUT]
                .to_str()
                .map(str::to_owned)
                .expect("ascii")
        };
        assert_eq!(told(Duration::from_millis(1683)), "1683m");
        assert_eq!(told(Duration::from_micros(1500)), "2m", "rounded up");
        assert_eq!(told(Duration::ZERO), "1m");
        assert_eq!(told(Duration::from_secs(200_000)), "200000S");
        let mut plain = Request::get("http://users/").body(()).expect("request");
        note_time_left(&mut plain, Duration::from_secs(1), None);
        assert!(plain.headers().get(&TIMEOUT).is_none());
    }

    #[test]
    fn only_grpc_calls_are_told_their_previous_attempts() {
        let mut call = Request::post("http://users/pkg.Users/Get")
            .header(CONTENT_TYPE, "application/grpc+proto")
            .header(&PREVIOUS_ATTEMPTS, "7")
            .body(())
            .expect("request");
        note_previous_attempts(&mut call, 2);
        assert_eq!(call.headers()[&PREVIOUS_ATTEMPTS], "2", "overwritten");

        let mut plain = Request::post("http://users/")
            .header(CONTENT_TYPE, "application/json")
            .body(())
            .expect("request");
        note_previous_attempts(&mut plain, 2);
        assert!(!plain.headers().contains_key(&PREVIOUS_ATTEMPTS));
    }
}
