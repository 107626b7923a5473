//! One layer used alone: a circuit breaker around a plain hyper client,
//! no discovery, no balancer. The breaker keys on the URI's authority.
//!
//! ```text
//! cargo run --example breaker_alone
//! ```
//!
//! A loopback server answers 503 to everything: after three failures the
//! breaker opens and further calls fail at once without reaching it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::breaker::{BreakerConfig, BreakerLayer};
use mesh::core::MeshError;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), mesh::core::BoxError> {
    let failing = Backend::start(Behavior::Status(503)).await?;
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(30))
            .build()?,
    );
    let client = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let uri: http::Uri = format!("http://{}/api", failing.addr()).parse()?;
    for i in 1..=5 {
        let req = http::Request::get(uri.clone()).body(Empty::new())?;
        match client.clone().oneshot(req).await {
            Ok(response) => println!("call {i}: {}", response.status()),
            Err(error) => match MeshError::find(&*error) {
                Some(open @ MeshError::CircuitOpen { .. }) => println!("call {i}: refused: {open}"),
                _ => println!("call {i}: {error}"),
            },
        }
    }
    let reached = failing.stats().requests;
    println!("the server saw {reached} of 5 calls");
    if reached != 3 {
        return Err(format!(
            "expected the breaker to stop calls after 3 failures, the server saw {reached}"
        )
        .into());
    }
    Ok(())
}
