//! Bounded waits for a state the code under test reaches on its own
//! (a catalog filled by a registry's background task, say).

use std::time::Duration;

use tokio::time::Instant;

/// How long [`until_endpoints`] waits before it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `endpoints` (how many endpoints the caller's catalog holds
/// for a service, `None` while it holds none) returns `Some(want)`, and
/// returns how long that took.
///
/// `endpoints` is read every millisecond, so latency bounds a caller asserts
/// stay meaningful; on a paused tokio clock the wait costs no real time.
///
/// # Panics
///
/// After [`PATIENCE`], naming the count wanted and the last one seen.
pub async fn until_endpoints(
    mut endpoints: impl FnMut() -> Option<usize>,
    want: usize,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = endpoints();
        if seen == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "never saw {want} endpoints: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `done` holds, reading it every 10 ms.
///
/// # Panics
///
/// After [`PATIENCE`], naming `what` was awaited.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
