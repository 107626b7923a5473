//! What `MeshClient` does with its connections, from a TOML configuration
//! against real HTTP/1.1 servers on 127.0.0.1: one connection per
//! instance for calls made one after another, and a request that meets a
//! connection its instance closed while idle sent once, on a new one.

use std::time::Duration;

use http_body_util::BodyExt;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};

/// A client of service `users` at `backends`, everything else the
/// defaults (plain HTTP/1.1).
async fn client_of(backends: &[Backend]) -> MeshClient {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    let config = MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"caller\"\n[discovery]\nkind = \"static\"\nservices = {{ users = [{}] }}\n",
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_one_after_another_keep_one_connection_per_instance() {
    let backends = [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let client = client_of(&backends).await;
    for _ in 0..50 {
        let response = client
            .get("users", "/", CallOptions::default())
            .await
            .expect("call");
        assert!(response.status().is_success());
        response.into_body().collect().await.expect("body");
    }
    let stats: Vec<_> = backends.iter().map(Backend::stats).collect();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 50);
    for s in &stats {
        assert!(s.requests > 0, "both instances called: {stats:?}");
        assert_eq!(s.connections, 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_connection_the_instance_closed_while_idle_is_sent_once_on_a_new_one() {
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    backend.close_idle_after(Some(Duration::from_millis(100)));
    let client = client_of(std::slice::from_ref(&backend)).await;
    for round in 1..=4 {
        let response = client
            .post("users", "/orders", "order", CallOptions::default())
            .await
            .expect("call");
        assert!(response.status().is_success());
        response.into_body().collect().await.expect("body");
        // The instance closes the idle connection the client keeps; the
        // next call comes after that.
        eventually("the instance closed the idle connection", || {
            backend.stats().connections_ended == round
        })
        .await;
    }
    let stats = backend.stats();
    assert_eq!(stats.requests, 4, "each POST sent once: {stats:?}");
    assert_eq!(stats.connections, 4, "{stats:?}");
}
