//! The health layer in front of a real axum app on 127.0.0.1, probed by
//! real curl (Debian's curl, installed by scripts/test.sh): the status alone by
//! default, the detailed report when asked for.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use mesh_core::Probe;
use mesh_health::{
    CheckError, HealthCheck, HealthCheckManager, HealthConfig, HealthLayer, HealthPaths,
};

/// A check the test switches on and off.
fn switch(name: &str, critical: bool, failing: &Arc<AtomicBool>) -> HealthCheck {
    let failing = Arc::clone(failing);
    HealthCheck::builder(name, move || {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            match failing {
                true => Err(CheckError::new("down")),
                false => Ok(()),
            }
        }
    })
    .probes([Probe::Liveness, Probe::Readiness])
    .critical(critical)
    .failure_threshold(1)
    .build()
    .expect("check")
}

struct Curl {
    status: u16,
    body: String,
}

async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl could not start: install Debian's curl (scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    Curl {
        status: status.trim().parse().expect("status code"),
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_healthy_degraded_and_failing_and_the_app_sees_the_rest() {
    let (db_down, cache_down) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let manager = HealthCheckManager::builder()
        .check(switch("db", true, &db_down))
        .check(switch("cache", false, &cache_down))
        .build()
        .expect("manager");
    manager.run_once().await;

    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .route("/health/ready", post(|| async { "the app's own POST" }))
        .layer(HealthLayer::new(manager.clone()).details(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Healthy.
    let ready = curl(&[&format!("{base}/health/ready")]).await;
    assert_eq!(ready.status, 200);
    let json: serde_json::Value = serde_json::from_str(&ready.body).expect("JSON");
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["probe"], "readiness");
    assert_eq!(json["checks"][0]["name"], "db");
    assert_eq!(json["checks"][0]["status"], "passing");
    assert_eq!(json["checks"][0]["consecutive_failures"], 0);
    assert!(json["checks"][0]["last_duration_ms"].is_number());

    // Degraded: a non-critical check fails; still 200.
    cache_down.store(true, Ordering::SeqCst);
    manager.run_once().await;
    let live = curl(&[&format!("{base}/health/live")]).await;
    assert_eq!(live.status, 200);
    let json: serde_json::Value = serde_json::from_str(&live.body).expect("JSON");
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["checks"][1]["name"], "cache");
    assert_eq!(json["checks"][1]["status"], "failing");
    assert_eq!(json["checks"][1]["last_error"], "down");

    // Failing: a critical check fails; 503, for GET and HEAD.
    db_down.store(true, Ordering::SeqCst);
    manager.run_once().await;
    let ready = curl(&[&format!("{base}/health/ready")]).await;
    assert_eq!(ready.status, 503);
    let json: serde_json::Value = serde_json::from_str(&ready.body).expect("JSON");
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["checks"][0]["consecutive_failures"], 1);
    let head = curl(&["-I", &format!("{base}/health/ready")]).await;
    assert_eq!(head.status, 503);
    assert!(
        head.body
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        head.body
    );

    // With no startup check, startup passes at once.
    assert_eq!(curl(&[&format!("{base}/health/startup")]).await.status, 200);

    // Everything else reaches the app untouched.
    let users = curl(&[&format!("{base}/api/users")]).await;
    assert_eq!((users.status, users.body.as_str()), (200, "users"));
    let post = curl(&["-X", "POST", &format!("{base}/health/ready")]).await;
    assert_eq!(
        (post.status, post.body.as_str()),
        (200, "the app's own POST")
    );
    assert_eq!(curl(&[&format!("{base}/nope")]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_probes_answer_the_status_and_nothing_else() {
    let db_down = Arc::new(AtomicBool::new(false));
    let manager = HealthCheckManager::builder()
        .check(switch("db", true, &db_down))
        .build()
        .expect("manager");
    manager.run_once().await;
    let app = Router::new()
        .route("/api/users", get(|| async { "users" }))
        .layer(HealthLayer::new(manager.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ready = curl(&[&format!("{base}/health/ready")]).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, r#"{"status":"healthy"}"#)
    );

    db_down.store(true, Ordering::SeqCst);
    manager.run_once().await;
    let ready = curl(&[&format!("{base}/health/ready")]).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, r#"{"status":"unhealthy"}"#),
        "no check name, no error"
    );
    let live = curl(&[&format!("{base}/health/live")]).await;
    assert_eq!(live.status, 503);
    assert!(
        !live.body.contains("db") && !live.body.contains("down"),
        "{}",
        live.body
    );
    assert_eq!(
        curl(&["-I", &format!("{base}/health/ready")]).await.status,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_turns_details_on_and_sets_the_paths() {
    let db_down = Arc::new(AtomicBool::new(true));
    let manager = HealthCheckManager::builder()
        .check(switch("db", true, &db_down))
        .build()
        .expect("manager");
    manager.run_once().await;
    let config: HealthConfig =
        serde_json::from_str(r#"{ "details": true, "paths": { "ready": "/readyz" } }"#)
            .expect("config");
    let app = Router::new().layer(config.layer(manager).expect("layer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ready = curl(&[&format!("{base}/readyz")]).await;
    assert_eq!(ready.status, 503);
    let json: serde_json::Value = serde_json::from_str(&ready.body).expect("JSON");
    assert_eq!(json["checks"][0]["name"], "db");
    assert_eq!(json["checks"][0]["last_error"], "down");

    let mut bad = HealthConfig::default();
    bad.paths.live = "live".to_owned();
    let err = bad
        .layer(HealthCheckManager::builder().build().expect("manager"))
        .expect_err("a relative path");
    assert!(err.to_string().contains("health.paths.live"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_are_configurable() {
    let manager = HealthCheckManager::builder().build().expect("manager");
    let app = Router::new()
        .route("/health/live", get(|| async { "now the app's" }))
        .layer(
            HealthLayer::new(manager)
                .paths(HealthPaths::new("/livez", "/readyz", "/startupz").expect("paths")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(curl(&[&format!("{base}/readyz")]).await.status, 200);
    let old = curl(&[&format!("{base}/health/live")]).await;
    assert_eq!(old.body, "now the app's");
    assert!(HealthPaths::new("livez", "/readyz", "/startupz").is_err());
    assert!(HealthPaths::new("/x", "/x", "/y").is_err());
}

/// An application that is never ready (a full concurrency limit, say).
#[derive(Clone)]
struct NeverReady;

impl tower::Service<http::Request<()>> for NeverReady {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new("app".to_owned())))
    }
}

#[tokio::test]
async fn probes_are_answered_while_the_app_is_not_ready() {
    use tower::{Layer, ServiceExt};
    let manager = HealthCheckManager::builder().build().expect("manager");
    let svc = HealthLayer::new(manager).layer(NeverReady);
    let probe = http::Request::get("/health/live")
        .body(())
        .expect("request");
    let answered = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(probe))
        .await
        .expect("the probe does not wait for the app")
        .expect("answer");
    assert_eq!(answered.status(), 200);
    // A request for the app waits for the app's readiness.
    let app = http::Request::get("/api").body(()).expect("request");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), svc.oneshot(app))
            .await
            .is_err(),
        "the app's request waits"
    );
}
