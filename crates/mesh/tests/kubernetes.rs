//! The facade with Kubernetes DNS discovery, against a real dnsmasq
//! (Debian's dnsmasq-base, installed by scripts/test.sh) serving a headless
//! service's A records on a loopback port.

use http_body_util::BodyExt;
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::{dnsmasq, Backend, Behavior};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_instances_cluster_dns_lists() {
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    let dns = dnsmasq::start(&["127.0.0.1"]);
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "kubernetes"
port = {}
nameserver = "{}"
"#,
        users.addr().port(),
        dns.addr
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    let response = client
        .get("users", "/api", CallOptions::default())
        .await
        .expect("resolved through cluster DNS");
    assert!(response.status().is_success());
    response.into_body().collect().await.expect("body");
    assert_eq!(users.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_cluster_dns_does_not_know_leave_nothing_behind() {
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    let dns = dnsmasq::start(&["127.0.0.1"]);
    let config = MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"kubernetes\"\nport = {}\nnameserver = \"{}\"\n",
        users.addr().port(),
        dns.addr
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    // NXDOMAIN for each: unknown at once, no follower re-resolving it.
    for i in 0..200 {
        let err = client
            .get(&format!("junk-{i}"), "/", CallOptions::default())
            .await
            .expect_err("no such service");
        assert!(
            matches!(
                mesh::core::MeshError::find(&*err),
                Some(mesh::core::MeshError::UnknownService { .. })
            ),
            "{err}"
        );
    }
    assert!(client.catalog().services().is_empty());
    let response = client
        .get("users", "/api", CallOptions::default())
        .await
        .expect("a real service still resolves");
    response.into_body().collect().await.expect("body");
    assert_eq!(client.catalog().services().len(), 1);
    client.shutdown(std::time::Duration::from_secs(1)).await;
}
