//! A health check from an async closure: a Redis PING through the real
//! `redis` client (the design document's database check), with the
//! connection kept between runs and re-opened after a failure.
//!
//! ```text
//! redis-server --port 6379 &          # Debian's redis-server
//! cargo run -p mesh-health --example redis_check -- redis://127.0.0.1:6379/
//! ```
//!
//! It runs the check once and prints the readiness report as served on
//! `/health/ready`. `tests/redis.rs` runs the same check against a real
//! redis-server it starts on a loopback port.

use std::sync::Arc;
use std::time::Duration;

use mesh_health::{CheckError, CheckFuture, HealthCheck, HealthCheckManager, Probe};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// A check that PINGs Redis at `url`. The connection is opened on the
/// first run and kept; a failed PING drops it so the next run reconnects.
pub fn redis_ping(
    url: &str,
) -> Result<impl Fn() -> CheckFuture + Send + Sync + 'static, CheckError> {
    let client =
        redis::Client::open(url).map_err(|e| CheckError::new(format!("Redis URL {url:?}: {e}")))?;
    let connection: Arc<Mutex<Option<MultiplexedConnection>>> = Arc::new(Mutex::new(None));
    Ok(move || -> CheckFuture {
        let (client, connection) = (client.clone(), Arc::clone(&connection));
        Box::pin(async move {
            let mut slot = connection.lock().await;
            let con = match slot.as_mut() {
                Some(con) => con,
                None => slot.insert(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| CheckError::new(format!("connecting to Redis: {e}")))?,
                ),
            };
            match redis::cmd("PING").query_async::<String>(con).await {
                Ok(pong) if pong == "PONG" => Ok(()),
                Ok(other) => Err(CheckError::new(format!("Redis answered {other:?} to PING"))),
                Err(e) => {
                    *slot = None;
                    Err(CheckError::new(format!("Redis PING: {e}")))
                }
            }
        })
    })
}

/// The check as a service would register it: readiness, critical, every
/// 10 s, 2 s timeout, 3 failures to fail.
pub fn redis_check(url: &str) -> Result<HealthCheck, Box<dyn std::error::Error>> {
    Ok(HealthCheck::builder("redis", redis_ping(url)?)
        .probes([Probe::Readiness])
        .interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .failure_threshold(3)
        .build()?)
}

#[allow(dead_code)] // the test includes this file for its functions only
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());
    let manager = HealthCheckManager::builder()
        .check(redis_check(&url)?)
        .build()?;
    manager.run_once().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&manager.report(Probe::Readiness))?
    );
    Ok(())
}
