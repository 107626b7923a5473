//! Canary traffic splitting over real hyper servers on 127.0.0.1: calls
//! divided between tagged subsets by weight, changed at run time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::BodyExt;
use mesh::{CallOptions, MeshClient, MeshConfig, Subset};
use mesh_core::{Endpoint, EndpointSet, ServiceName};
use mesh_testkit::{Backend, Behavior};

/// A client of `users`, listed in a services file (in a directory of its
/// own, `name`, returned for removal) as `instances` (address, tag),
/// configured by `rest` beside the file's discovery.
async fn users_from_file(
    name: &str,
    instances: &[(SocketAddr, &str)],
    rest: &str,
) -> (MeshClient, PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let services = dir.join("services.json");
    let listed: Vec<String> = instances
        .iter()
        .map(|(addr, tag)| format!(r#"{{ "address": "{addr}", "tags": ["{tag}"] }}"#))
        .collect();
    let users = format!(
        r#"{{ "services": {{ "users": [{}] }} }}"#,
        listed.join(", ")
    );
    std::fs::write(&services, users).expect("services");
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "file"
path = "{}"
{rest}"#,
        services.display()
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    (client, dir)
}

fn subset(name: &str, weight: u32) -> Subset {
    Subset {
        name: name.to_owned(),
        tag: Some(name.to_owned()),
        meta: Default::default(),
        weight,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_weights_and_the_weights_change_without_a_restart() {
    let v1 = [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let v2 = Backend::start(Behavior::Ok).await.expect("backend");
    let (client, dir) = users_from_file(
        "mesh-split",
        &[
            (v1[0].addr(), "v1"),
            (v1[1].addr(), "v1"),
            (v2.addr(), "v2"),
        ],
        r#"
# Round robin within each subset, so "balanced" below means even.
[services.users.balance]
strategy = "round_robin"
[[services.users.split]]
name = "v1"
tag = "v1"
weight = 90
[[services.users.split]]
name = "v2"
tag = "v2"
weight = 10
"#,
    )
    .await;
    let send = |n: usize| {
        let client = client.clone();
        async move {
            for _ in 0..n {
                let response = client
                    .get("users", "/", CallOptions::default())
                    .await
                    .expect("call");
                response.into_body().collect().await.expect("body");
            }
        }
    };

    // 90/10 over 1000 calls: v2 gets about 100 (bounds far outside
    // binomial noise: sd is about 9.5).
    send(1000).await;
    let canary = v2.stats().requests;
    assert!((50..=160).contains(&canary), "v2 got {canary} of 1000");
    let stable: u64 = v1.iter().map(|b| b.stats().requests).sum();
    assert_eq!(stable + canary, 1000);
    // Each subset is balanced on its own: both v1 instances share.
    assert!(v1.iter().all(|b| b.stats().requests > 300), "v1 balanced");

    // Promote the canary to half, at run time.
    client
        .set_split("users", vec![subset("v1", 50), subset("v2", 50)])
        .expect("split");
    v2.reset_stats();
    send(1000).await;
    let canary = v2.stats().requests;
    assert!((400..=600).contains(&canary), "v2 got {canary} of 1000");

    // Roll back: no split, every instance again.
    client.set_split("users", Vec::new()).expect("unsplit");
    assert_eq!(client.split("users"), None);
    v2.reset_stats();
    send(300).await;
    let share = v2.stats().requests;
    assert!((60..=140).contains(&share), "a third of 300, got {share}");

    // A subset with no instance gets nothing; its weight goes elsewhere.
    client
        .set_split("users", vec![subset("v1", 50), subset("v3", 50)])
        .expect("split");
    v2.reset_stats();
    send(100).await;
    assert_eq!(v2.stats().requests, 0);

    assert!(client
        .set_split(
            "users",
            vec![Subset {
                tag: None,
                ..subset("v4", 1)
            }]
        )
        .is_err());
    client.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request that carries an endpoint set of its own (sent with
/// `MeshClient::send`) is split all the same: the subset narrows the set
/// the balancer reads, the one discovery noted for the call, not the
/// caller's copy beside it.
#[tokio::test]
async fn a_request_carrying_its_own_endpoint_set_is_split_too() {
    let stable = Backend::start(Behavior::Ok).await.expect("backend");
    let canary = Backend::start(Behavior::Ok).await.expect("backend");
    let (client, dir) = users_from_file(
        "mesh-split-own",
        &[(stable.addr(), "v1"), (canary.addr(), "v2")],
        r#"
[[services.users.split]]
name = "v1"
tag = "v1"
weight = 0
[[services.users.split]]
name = "v2"
tag = "v2"
weight = 100
"#,
    )
    .await;
    let own = EndpointSet::new(
        ServiceName::new("users").expect("name"),
        vec![
            Endpoint::builder(stable.addr()).tag("v1").build(),
            Endpoint::builder(canary.addr()).tag("v2").build(),
        ],
    );
    for _ in 0..20 {
        let mut req = http::Request::get("http://users/")
            .body(bytes::Bytes::new())
            .expect("request");
        req.extensions_mut().insert(own.clone());
        let response = client.send(req).await.expect("call");
        response.into_body().collect().await.expect("body");
    }
    assert_eq!(stable.stats().requests, 0, "every call to the v2 subset");
    assert_eq!(canary.stats().requests, 20);
    client.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
