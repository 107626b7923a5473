//! [`TrackedBody`]: a response body that ends its request's in-flight count.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use mesh_core::clock::{self, Nanos};
use mesh_core::grpc::{BodyEnd, GrpcCodes};
use mesh_core::EndpointState;
use pin_project_lite::pin_project;

use crate::slots::Slots;

/// Counts one request in its endpoint's in-flight gauge for as long as it
/// lives; records the request's latency when it ends after a response.
#[derive(Debug)]
pub(crate) struct InFlight {
    state: Arc<EndpointState>,
    started: Nanos,
    responded: bool,
    failed: bool,
    /// Told when the slot frees, when requests may wait for one.
    slots: Option<Arc<Slots>>,
}

impl InFlight {
    #[cfg(test)]
    pub(crate) fn start(state: Arc<EndpointState>) -> Self {
        InFlight::start_at(state, clock::now())
    }

    /// Counts a request on `state` that started at `now` (the time its
    /// endpoint was picked: one clock read serves both).
    pub(crate) fn start_at(state: Arc<EndpointState>, now: Nanos) -> Self {
        state.start_request();
        InFlight::adopt(state, now)
    }

    /// Takes over a request already counted (by
    /// [`EndpointState::try_start_request`]) that started at `now`.
    pub(crate) fn adopt(state: Arc<EndpointState>, now: Nanos) -> Self {
        InFlight {
            state,
            started: now,
            responded: false,
            failed: false,
            slots: None,
        }
    }

    /// Wakes `slots`' waiters when this call ends.
    pub(crate) fn freeing(mut self, slots: Option<Arc<Slots>>) -> Self {
        self.slots = slots;
        self
    }

    /// Marks that the endpoint answered, so that the latency is recorded.
    /// A call that failed before any response records a penalty instead
    /// (see [`InFlight::failed`]).
    pub(crate) fn responded(&mut self) {
        self.responded = true;
    }

    /// Marks that the call failed: no answer (not a cancellation), a
    /// server error, or a gRPC failure (known at the headers or, for one
    /// sent in trailers, at the end of the body).
    pub(crate) fn failed(&mut self) {
        self.responded = false;
        self.failed = true;
    }
}

/// The least a failed call counts as, for latency-aware strategies.
const FAILURE_PENALTY_FLOOR: Duration = Duration::from_millis(10);
/// The most repeated failures double the estimate to: high enough to
/// steer traffic away, low enough that the estimate fades back (by half
/// every 5 s) within a minute once the instance recovers.
const FAILURE_PENALTY_CAP: Duration = Duration::from_millis(100);

/// What a failed call (no answer, or a server error) counts as: twice the
/// endpoint's current estimate (at most [`FAILURE_PENALTY_CAP`]), at least
/// [`FAILURE_PENALTY_FLOOR`], at least what it took. A refused connection
/// or a quick 503 ends in microseconds: counted as it is, or not at all
/// while the old estimate fades, it would make a failing instance look like
/// the fastest and draw the traffic latency-aware strategies send by speed.
fn failure_penalty(estimate: Option<Duration>, elapsed: Duration) -> Duration {
    let doubled = estimate.map_or(Duration::ZERO, |e| e.saturating_mul(2));
    doubled
        .min(FAILURE_PENALTY_CAP)
        .max(FAILURE_PENALTY_FLOOR)
        .max(elapsed)
}

/// What a call cancelled before its answer, after `elapsed`, says of an
/// endpoint whose estimate is `estimate` (its caller gave up, or a hedged
/// copy lost the race to one sent later): that it takes at least that
/// long. As long as the failure floor, it counts as a failure does (twice
/// the estimate, at least what it took): a slow endpoint whose every call
/// is hedged away is never measured whole, and recorded at its cut-off it
/// would come to look as fast as the hedge delay and draw more calls.
/// Shorter but longer than the estimate, it is recorded as it is. A quick
/// cancellation says nothing.
fn cancelled_at(estimate: Option<Duration>, elapsed: Duration) -> Option<Duration> {
    if elapsed >= FAILURE_PENALTY_FLOOR {
        return Some(failure_penalty(estimate, elapsed));
    }
    estimate.filter(|l| elapsed > *l).map(|_| elapsed)
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.finish_request();
        if let Some(slots) = &self.slots {
            slots.freed();
        }
        let now = clock::now();
        let elapsed = now.saturating_since(self.started);
        if self.responded {
            self.state.record_latency_at(elapsed, now);
        } else if self.failed {
            let penalty = failure_penalty(self.state.latency_at(now), elapsed);
            self.state.record_latency_at(penalty, now);
        } else if let Some(slower) = cancelled_at(self.state.latency_at(now), elapsed) {
            self.state.record_latency_at(slower, now);
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight on the
    /// endpoint that serves it until the body ends, fails, or is dropped.
    ///
    /// It yields exactly the inner body's frames; use it as you would the
    /// inner body (for example with `http_body_util::BodyExt::collect`).
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
        // A gRPC answer whose status comes in the trailers that end it.
        status_at_end: bool,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        TrackedBody {
            inner,
            in_flight: Some(in_flight),
            status_at_end: false,
        }
    }

    /// Judges the call again when the body ends: a gRPC failure in its
    /// trailers (or none, or a broken stream) counts as a failure.
    pub(crate) fn status_at_end(mut self) -> Self {
        self.status_at_end = true;
        self
    }

    /// The inner body (the request stays counted until this wrapper is
    /// dropped or ends; use [`TrackedBody::into_inner`] to stop tracking).
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Stops tracking and returns the inner body: the request counts as
    /// finished now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if *this.status_at_end {
            if let Some(end) = BodyEnd::of(&polled) {
                if end == BodyEnd::Broken || GrpcCodes::failures().contains(end.code()) {
                    if let Some(in_flight) = this.in_flight.as_mut() {
                        in_flight.failed();
                    }
                }
                this.in_flight.take();
            }
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // End of stream or a broken body: the request is over.
            this.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody")
            .field("in_flight", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn a_quick_failure_counts_as_slow_and_a_quick_cancellation_not_at_all() {
        let state = Arc::new(EndpointState::new());
        // 20 ms: a cancellation at once stays well under it, however
        // loaded the machine.
        let estimate = Duration::from_millis(20);
        state.record_latency_at(estimate, clock::now());
        drop(InFlight::start(Arc::clone(&state)));
        assert_eq!(state.latency(), Some(estimate));
        let mut failed = InFlight::start(Arc::clone(&state));
        failed.failed();
        drop(failed);
        // Twice the (barely faded) estimate.
        let penalty = state.latency().expect("an estimate");
        assert!(
            penalty > Duration::from_millis(35) && penalty <= Duration::from_millis(40),
            "{penalty:?}"
        );
        assert_eq!(
            failure_penalty(Some(Duration::from_millis(40)), Duration::ZERO),
            Duration::from_millis(80)
        );
    }

    /// Twenty quick failures, then the instance recovers: the estimate
    /// stays bounded and, left alone, fades back within a minute.
    #[test]
    fn repeated_failures_are_bounded_and_fade_once_the_instance_recovers() {
        let state = Arc::new(EndpointState::new());
        state.record_latency(Duration::from_micros(300));
        for _ in 0..20 {
            let mut failed = InFlight::start(Arc::clone(&state));
            failed.failed();
            drop(failed);
        }
        let worst = state.latency().expect("an estimate");
        assert!(worst <= FAILURE_PENALTY_CAP, "{worst:?}");
        let later = clock::now().saturating_add(Duration::from_secs(40));
        let faded = state.latency_at(later).expect("an estimate");
        assert!(faded < Duration::from_millis(1), "{faded:?} after 40 s");
        // A good answer then pulls from the faded estimate, not the peak.
        state.record_latency_at(Duration::from_micros(300), later);
        assert!(state.latency().expect("an estimate") < Duration::from_millis(1));
    }

    #[test]
    fn a_cancellation_says_the_endpoint_takes_at_least_that_long() {
        let ms = Duration::from_millis;
        assert_eq!(cancelled_at(None, ms(1)), None, "quick: nothing");
        assert_eq!(
            cancelled_at(None, ms(12)),
            Some(ms(12)),
            "no estimate: learned"
        );
        assert_eq!(
            cancelled_at(Some(ms(1)), ms(3)),
            Some(ms(3)),
            "slower than usual"
        );
        assert_eq!(cancelled_at(Some(ms(5)), ms(3)), None, "quicker than usual");
        assert_eq!(
            cancelled_at(Some(ms(12)), ms(10)),
            Some(ms(24)),
            "a hedged-away copy counts as a failure: the estimate grows"
        );
        assert_eq!(
            cancelled_at(Some(ms(80)), ms(10)),
            Some(ms(100)),
            "up to the cap"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_cancellation_teaches_an_endpoint_with_no_estimate() {
        let state = Arc::new(EndpointState::new());
        drop(InFlight::start(Arc::clone(&state)));
        assert_eq!(state.latency(), None, "a quick cancellation says nothing");
        let cancelled = InFlight::start(Arc::clone(&state));
        tokio::time::advance(Duration::from_millis(50)).await;
        drop(cancelled);
        let learned = state.latency().expect("an estimate");
        assert!(learned >= Duration::from_millis(50), "{learned:?}");
    }

    #[tokio::test]
    async fn count_ends_with_the_body_and_latency_is_recorded() {
        let state = Arc::new(EndpointState::new());
        let mut guard = InFlight::start(Arc::clone(&state));
        guard.responded();
        let body = TrackedBody::new(Full::new(Bytes::from_static(b"hi")), guard);
        assert_eq!(state.in_flight(), 1);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hi");
        assert_eq!(state.in_flight(), 0);
        assert!(state.latency().is_some());
    }

    #[tokio::test]
    async fn dropping_a_half_read_body_ends_the_count() {
        let state = Arc::new(EndpointState::new());
        let chunks = futures_stream(vec![Ok(Frame::data(Bytes::from_static(b"a")))]);
        let mut body = TrackedBody::new(chunks, InFlight::start(Arc::clone(&state)));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        assert_eq!(state.in_flight(), 1, "still streaming");
        drop(body);
        assert_eq!(state.in_flight(), 0);
        assert!(state.latency().is_none(), "no response was marked");
    }

    #[tokio::test]
    async fn a_failing_body_ends_the_count_at_the_error() {
        let state = Arc::new(EndpointState::new());
        let chunks = futures_stream(vec![Err(std::io::Error::other("reset"))]);
        let mut body = TrackedBody::new(chunks, InFlight::start(Arc::clone(&state)));
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(state.in_flight(), 0);
        drop(body);
        assert_eq!(state.in_flight(), 0, "no double decrement");
    }

    #[tokio::test]
    async fn a_grpc_failure_in_trailers_counts_as_slow_and_ends_the_count() {
        let ended_with = |code: &'static str| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(code));
            futures_stream(vec![
                Ok(Frame::data(Bytes::from_static(b"m"))),
                Ok(Frame::trailers(trailers)),
            ])
        };
        for (code, penalized) in [("14", true), ("5", false), ("0", false)] {
            let state = Arc::new(EndpointState::new());
            let mut guard = InFlight::start(Arc::clone(&state));
            guard.responded();
            let mut body = TrackedBody::new(ended_with(code), guard).status_at_end();
            body.frame().await.expect("a message").expect("data");
            assert_eq!(state.in_flight(), 1, "still streaming");
            body.frame().await.expect("trailers").expect("trailers");
            assert_eq!(state.in_flight(), 0, "the trailers end the call");
            let latency = state.latency().expect("recorded");
            assert_eq!(
                latency >= FAILURE_PENALTY_FLOOR,
                penalized,
                "{code}: {latency:?}"
            );
        }
    }

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    /// A body that yields `chunks` and then stays pending forever (as a
    /// slow upstream would), so only an error or a drop can end it.
    struct ThenPending(std::collections::VecDeque<Chunk>);

    impl Body for ThenPending {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Chunk>> {
            match self.0.pop_front() {
                Some(chunk) => Poll::Ready(Some(chunk)),
                None => Poll::Pending,
            }
        }
    }

    fn futures_stream(chunks: Vec<Chunk>) -> ThenPending {
        ThenPending(chunks.into())
    }
}
