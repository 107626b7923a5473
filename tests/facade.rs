//! The facade with Consul (the in-repo double of its HTTP API; no Consul
//! binary here): it registers the local service at start, discovers
//! another service through blocking queries, and deregisters on shutdown.

use http_body_util::BodyExt;
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::{consul, Backend, Behavior};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_discovers_through_consul_and_deregisters_on_shutdown() {
    let double = consul::ConsulDouble::start().await;
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    double.set(
        "user-service",
        vec![consul::entry(
            "n1",
            "127.0.0.1",
            users.addr().port(),
            "passing",
        )],
    );
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
address = "127.0.0.1"
port = 18080
tags = ["v1"]

[discovery]
kind = "consul"
url = "{}"
register = true
"#,
        double.url()
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");

    // Registered, with a TTL check kept passing by heartbeats.
    let id = "api-gateway-127.0.0.1-18080";
    let registration = double.registration(id).expect("registered");
    assert_eq!(registration["Name"], "api-gateway");
    assert_eq!(registration["Port"], 18080);
    assert_eq!(registration["Tags"][0], "v1");

    let response = client
        .get("user-service", "/api/users", CallOptions::default())
        .await
        .expect("found through Consul");
    assert!(response.status().is_success());
    response.into_body().collect().await.expect("body");
    assert_eq!(users.stats().requests, 1);

    assert_eq!(client.shutdown(std::time::Duration::from_secs(1)).await, 0);
    assert!(
        double.registration(id).is_none(),
        "deregistered on shutdown"
    );
}
