//! What this crate's tests share beyond mesh-testkit: waiting on a
//! [`Catalog`], a type mesh-testkit cannot name (it depends on no crate of
//! this workspace).

use std::time::Duration;

use mesh_discover::Catalog;

/// Waits until the catalog holds exactly `want` endpoints for `users`
/// (a service it does not hold never matches) and returns how long that
/// took; fails the test after [`mesh_testkit::wait::PATIENCE`].
pub async fn until(catalog: &Catalog, want: usize) -> Duration {
    mesh_testkit::wait::until_endpoints(|| catalog.get("users").map(|s| s.len()), want).await
}
