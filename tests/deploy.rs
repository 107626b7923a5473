//! Every manifest in deploy/ parses, and the gateway's Deployment points
//! its probes and port at what examples/gateway.rs serves.

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::path::PathBuf;

use serde::Deserialize;

fn documents(file: &str) -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("manifest");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

#[test]
fn every_manifest_parses() {
    for file in ["gateway.yaml", "istio.yaml", "linkerd.yaml"] {
        let docs = documents(file);
        assert!(!docs.is_empty(), "{file}");
        for doc in docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{file}: {doc}"
            );
        }
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/consul-registration.json");
    let registration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("registration")).expect("JSON");
    assert_eq!(registration["Port"], gateway::PORT);
    assert!(registration["Check"]["HTTP"]
        .as_str()
        .is_some_and(|u| u.ends_with(gateway::READY)));
}

#[test]
fn probes_and_ports_match_what_the_gateway_serves() {
    let docs = documents("gateway.yaml");
    let by_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment = by_kind("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for (probe, path) in [
        ("startupProbe", gateway::STARTUP),
        ("livenessProbe", gateway::LIVE),
        ("readinessProbe", gateway::READY),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(
            container[probe]["httpGet"]["port"],
            gateway::PORT,
            "{probe}"
        );
    }
    assert_eq!(container["ports"][0]["containerPort"], gateway::PORT);
    let env: Vec<&str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // What the example reads: the mesh's override, and where to listen
    // (all interfaces, or the kubelet's probes cannot reach it).
    for var in ["SERVICE_NAME", "PORT", "BIND"] {
        assert!(env.contains(&var), "{var} is set");
    }
    let bind = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "BIND")
        .map(|e| e["value"].clone());
    assert_eq!(bind, Some(serde_json::json!("0.0.0.0")));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        by_kind("ServiceAccount")["metadata"]["name"]
    );
    let service = by_kind("Service");
    assert_eq!(
        service["spec"]["clusterIP"], "None",
        "headless for DNS discovery"
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], gateway::PORT);
    let policy = by_kind("NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"],
        gateway::PORT
    );
    assert!(policy["spec"]["ingress"][0]["from"]
        .as_array()
        .is_some_and(|f| !f.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_its_routes_probes_and_metrics() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let upstream = mesh_testkit::Backend::start(mesh_testkit::Behavior::Ok)
        .await
        .expect("backend");
    let client = gateway::client(&[upstream.addr()]).await.expect("client");
    client.health().expect("health").run_once().await;
    let app = gateway::app(client.clone());
    let get = |path: &str| {
        let app = app.clone();
        let req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        async move {
            let response = app.oneshot(req).await.expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = get("/api/users").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        upstream.stats().requests,
        1,
        "the call went through the mesh"
    );
    for path in [gateway::LIVE, gateway::READY, gateway::STARTUP] {
        let (status, body) = get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, text) = get(gateway::METRICS).await;
    assert_eq!(status, 200);
    assert!(text.contains("mesh_instance_requests_total"), "{text}");
    client.shutdown(std::time::Duration::from_secs(1)).await;
    let (status, _) = get(gateway::READY).await;
    assert_eq!(status, 503, "not ready once shutting down");
}
