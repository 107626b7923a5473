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

/// The metric names in a Prometheus text exposition: each family's name
/// from its `# TYPE` line, and a histogram's `_bucket`, `_sum` and
/// `_count` series.
fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every PromQL query of a Grafana dashboard: panel targets' `expr` and
/// templating variables' `query`.
fn queries(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(q)) if q.contains('(') => {
                        found.push(q.clone())
                    }
                    _ => queries(v, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, found)),
        _ => {}
    }
}

/// The `mesh_*` metric names `query` reads.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("mesh_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_query_names_metrics_the_client_exports() {
    // The gateway's own client, after a few calls, so that every family
    // the dashboard reads has series (a per-endpoint breaker per instance).
    let a = mesh_testkit::Backend::start(mesh_testkit::Behavior::Ok)
        .await
        .expect("backend");
    let b = mesh_testkit::Backend::start(mesh_testkit::Behavior::Ok)
        .await
        .expect("backend");
    let client = gateway::client(&[a.addr(), b.addr()])
        .await
        .expect("client");
    for _ in 0..10 {
        let response = client
            .get(
                "user-service",
                "/api/users",
                mesh::CallOptions::client_id("t"),
            )
            .await
            .expect("call");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body");
    }
    let exported = exported_names(&client.prometheus());
    client.shutdown(std::time::Duration::from_secs(5)).await;

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    assert!(found.len() >= 10, "the dashboard's queries: {found:?}");
    for query in &found {
        let names = metric_names(query);
        assert!(!names.is_empty(), "{query} reads no mesh metric");
        for name in names {
            assert!(
                exported.contains(&name),
                "{query} reads {name}, which the client does not export; it exports {exported:?}"
            );
        }
    }
}
