//! The design document's integration sample, in Rust: an axum service
//! (`api-gateway`) that makes its outbound calls through a `MeshClient`
//! and serves `/health/live`, `/health/ready`, `/health/startup` and
//! `/metrics` through the health layer.
//!
//! ```text
//! cargo run --example gateway
//! ```
//!
//! On embedded defaults it starts two loopback instances of `user-service`,
//! serves the gateway on 127.0.0.1:8080 (or `BIND`:`PORT`), calls itself once on
//! each route, prints what it got and exits; with `--serve` it keeps
//! serving. `deploy/` holds its Kubernetes manifests.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use mesh::health::CheckError;
use mesh::{CallOptions, MeshClient, MeshConfig};

/// The port the gateway serves on, and the probe and metrics paths the
/// manifests in `deploy/` point at.
pub const PORT: u16 = 8080;
/// Liveness.
pub const LIVE: &str = "/health/live";
/// Readiness.
pub const READY: &str = "/health/ready";
/// Startup.
pub const STARTUP: &str = "/health/startup";
/// Prometheus.
pub const METRICS: &str = "/metrics";

/// The gateway's routes: `/api/users` goes to `user-service` through the
/// mesh; the health layer answers the probes; `/metrics` serves the
/// mesh's counters in Prometheus's format.
pub fn app(client: MeshClient) -> Router {
    let mut router = Router::new()
        .route("/api/users", get(users))
        .route(METRICS, get(metrics))
        .with_state(client.clone());
    if let Some(health) = client.health_layer() {
        router = router.layer(health);
    }
    router
}

async fn users(State(client): State<MeshClient>) -> impl IntoResponse {
    match client
        .get(
            "user-service",
            "/api/users",
            CallOptions::client_id("gateway"),
        )
        .await
    {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => (status, body.to_bytes()).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

/// Every mesh metric (`mesh_requests_total`, `mesh_request_duration_seconds`,
/// the layers' counters...) in Prometheus's text format.
async fn metrics(State(client): State<MeshClient>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, mesh::prometheus::CONTENT_TYPE)],
        client.prometheus(),
    )
}

/// The gateway's mesh client: static discovery of `upstreams` as
/// `user-service`, with one readiness check (the upstream is reachable).
pub async fn client(upstreams: &[SocketAddr]) -> Result<MeshClient, mesh::core::BoxError> {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
profile = "production"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ user-service = [{}] }}
[health]
readiness_interval = "1s"
"#,
        list.join(", ")
    ))?;
    // SERVICE_NAME and MESH_PROFILE, as the Deployment in deploy/ sets them.
    let mut config = config;
    config.apply_env(|k| std::env::var(k).ok())?;
    let first = upstreams.first().copied();
    // A readiness check with the file's [health] defaults (every 1 s).
    let client = MeshClient::builder(config)
        .check_with(
            "user-service-reachable",
            [mesh::core::Probe::Readiness],
            move || async move {
                match first {
                    Some(addr) => tokio::net::TcpStream::connect(addr)
                        .await
                        .map(drop)
                        .map_err(|e| CheckError::new(format!("user-service at {addr}: {e}"))),
                    None => Err(CheckError::new("no user-service instance configured")),
                }
            },
        )?
        .build()
        .await?;
    Ok(client)
}

#[allow(dead_code)] // the test includes this file for its functions
#[tokio::main]
async fn main() -> Result<(), mesh::core::BoxError> {
    // Two loopback instances of user-service.
    let a = mesh_testkit::Backend::start(mesh_testkit::Behavior::Ok).await?;
    let b = mesh_testkit::Backend::start(mesh_testkit::Behavior::Ok).await?;
    let client = client(&[a.addr(), b.addr()]).await?;
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(PORT);
    // BIND=0.0.0.0 in a pod (deploy/ sets it), so the kubelet's probes reach it.
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let listener = tokio::net::TcpListener::bind((bind.as_str(), port)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, app(client.clone())).into_future());
    println!("api-gateway on http://{addr}");
    if std::env::args().any(|a| a == "--serve") {
        let _ = server.await;
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // a readiness run
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for path in ["/api/users", LIVE, READY, METRICS] {
        let response = http.get(format!("http://{addr}{path}").parse()?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        let first = text.lines().next().unwrap_or_default();
        println!("GET {path} -> {status} {first}");
    }
    client.shutdown(Duration::from_secs(5)).await;
    server.abort();
    Ok(())
}
