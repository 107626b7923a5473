//! Waiting, bounded, for the catalog to reach a state.

use std::time::Duration;

use mesh_discover::Catalog;
use tokio::time::Instant;

/// Waits until the catalog holds exactly `want` endpoints for `users`
/// (a service it does not hold never matches) and returns how long that
/// took. Fails after 10 s. Polls every millisecond, so latency bounds the
/// callers assert stay meaningful; on a paused tokio clock it is instant.
pub async fn until(catalog: &Catalog, want: usize) -> Duration {
    let started = Instant::now();
    while catalog.get("users").map(|s| s.len()) != Some(want) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never saw {want} endpoints: {:?}",
            catalog.get("users").map(|s| s.len())
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}
