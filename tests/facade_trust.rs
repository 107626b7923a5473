//! The facade's promises, each kept through the front door: `MeshClient`
//! built from a configuration file against real loopback servers and the
//! in-repo Consul double (it follows Consul's documented HTTP API and
//! blocking-query rules; no Consul binary can be installed here).
//! Discovery stays bounded against request hosts, limits apply from a
//! service's first call, time is bounded by the call's deadline, retries
//! are funded per service, never hammer an open circuit and are
//! reported under the service the call was routed to, bad
//! configuration fails at start naming the file or key, and no secret
//! reaches `Debug` or the health endpoints.

#[path = "support/retry_events.rs"]
mod retry_events;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::core::{MeshError, Probe};
use mesh::{CallOptions, MeshClient, MeshConfig, StartError};
use mesh_testkit::fs::TempDir;
use mesh_testkit::{consul, Backend, Behavior};
use tower::ServiceExt;

/// A client from `text` written to a file, as a user builds one.
async fn client(text: &str) -> Result<MeshClient, StartError> {
    // Left in place, as a user's configuration directory is.
    let dir = TempDir::new("trust").keep();
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).expect("write config");
    MeshClient::from_config(MeshConfig::load_with_env(&file, |_| None)?).await
}

fn consul_config(url: &str, extra: &str) -> String {
    format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\nurl = \"{url}\"\n{extra}\n"
    )
}

/// Static discovery of one service; `top` holds top-level keys, `tables`
/// the tables after.
fn static_config(service: &str, addr: SocketAddr, top: &str, tables: &str) -> String {
    format!(
        "{top}\n[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {{ {service} = [\"{addr}\"] }}\n{tables}\n"
    )
}

/// A server answering every request with `status` and `Retry-After`,
/// counting requests.
async fn retry_after_server(status: u16, retry_after: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let retry_after = retry_after.to_owned();
    let app = axum::Router::new().fallback(move || {
        seen.fetch_add(1, Ordering::SeqCst);
        let retry_after = retry_after.clone();
        async move {
            (
                StatusCode::from_u16(status).expect("status"),
                [(http::header::RETRY_AFTER, retry_after)],
                "busy",
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

/// Calls `count` hosts no registry knows, each failing as unknown.
async fn call_junk_hosts(client: &MeshClient, count: usize) {
    for i in 0..count {
        let err = client
            .get(&format!("junk-{i}"), "/", CallOptions::default())
            .await
            .expect_err("no such service");
        assert!(
            matches!(
                MeshError::find(&*err),
                Some(MeshError::UnknownService { .. })
            ),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_request_hosts_leave_nothing_behind_and_a_real_service_still_resolves() {
    let double = consul::ConsulDouble::start().await;
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    let client = client(&consul_config(&double.url(), ""))
        .await
        .expect("client");
    // More junk hosts than any cap: Consul answers `200 []` for each.
    call_junk_hosts(&client, 1500).await;
    assert!(
        client.catalog().services().is_empty(),
        "junk hosts left followers: {:?}",
        client.catalog().services().len()
    );
    // A real service, never seen before, resolves at once.
    double.set(
        "user-service",
        vec![consul::entry(
            "n1",
            "127.0.0.1",
            users.addr().port(),
            "passing",
        )],
    );
    let started = Instant::now();
    let response = client
        .get("user-service", "/api", CallOptions::default())
        .await
        .expect("a real service after the junk");
    assert!(response.status().is_success());
    assert!(started.elapsed() < Duration::from_secs(5));
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_from_a_discovered_service_s_very_first_call() {
    let double = consul::ConsulDouble::start().await;
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(500)))
        .await
        .expect("backend");
    double.set(
        "reports",
        vec![consul::entry(
            "n1",
            "127.0.0.1",
            slow.addr().port(),
            "passing",
        )],
    );
    let client = client(&consul_config(&double.url(), "[limits]\nconcurrency = 1\n"))
        .await
        .expect("client");
    // Both are the service's first calls: neither may escape the limit.
    let (a, b) = tokio::join!(
        client.get("reports", "/", CallOptions::default()),
        client.get("reports", "/", CallOptions::default()),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| {
            r.as_ref().is_err_and(|e| {
                matches!(MeshError::find(&**e), Some(MeshError::LimitExceeded { .. }))
            })
        })
        .count();
    assert_eq!(refused, 1, "{a:?} {b:?}");
    assert_eq!(slow.stats().requests, 1);
    client.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_returns_the_server_s_answer_instead_of_holding_the_call() {
    let (addr, count) = retry_after_server(503, "4").await;
    // The production profile: 5 s attempts, two retries.
    let client = client(&static_config(
        "users",
        addr,
        "profile = \"production\"",
        "",
    ))
    .await
    .expect("client");
    let started = Instant::now();
    let response = client
        .get("users", "/", CallOptions::default())
        .await
        .expect("the server's answer");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "4");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "held for {:?}",
        started.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retry_after_lets_a_short_enough_wait_be_honoured() {
    // `Retry-After: 2`: past the default bound (1 s), within 3 s.
    for (bound, sent) in [("", 1), ("max_retry_after = \"3s\"\n", 2)] {
        let (addr, count) = retry_after_server(503, "2").await;
        let client = client(&static_config(
            "users",
            addr,
            "",
            &format!("[retry]\nmax_retries = 1\n{bound}"),
        ))
        .await
        .expect("client");
        let started = Instant::now();
        let response = client
            .get("users", "/", CallOptions::default())
            .await
            .expect("answer");
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(count.load(Ordering::SeqCst), sent, "{bound:?}");
        match sent {
            1 => assert!(took < Duration::from_millis(1500), "{bound:?}: {took:?}"),
            _ => assert!(took >= Duration::from_millis(1900), "{bound:?}: {took:?}"),
        }
        client.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_zero_sends_no_retry() {
    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let client = client(&static_config(
        "users",
        failing.addr(),
        "",
        "[retry]\nmax_retries = 3\ninitial = \"1ms\"\nbudget_percent = 0\n",
    ))
    .await
    .expect("client");
    for _ in 0..5 {
        let response = client
            .get("users", "/", CallOptions::default())
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(failing.stats().requests, 5);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_cannot_spend_retries_funded_by_a_healthy_one() {
    let retries = retries_of_a_failing_service_after(0).await;
    eprintln!("the failing service retried {retries} times");
}

/// Hosts no registry knows take no room from real services' budgets: each
/// is forgotten when its call finds it unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_hosts_take_no_room_from_real_services_budgets() {
    let retries = retries_of_a_failing_service_after(1500).await;
    eprintln!("after 1500 junk hosts, the failing service retried {retries} times");
}

/// Sends `junk` calls to hosts no registry knows, then 400 calls to a
/// healthy service and 100 to a failing one (429: retried, but no failure
/// for the breaker, which stays out of the way), all on the default
/// route; asserts the failing one retried only on what its own calls
/// funded, and returns how often it retried.
async fn retries_of_a_failing_service_after(junk: usize) -> u64 {
    let healthy = Backend::start(Behavior::Ok).await.expect("backend");
    let failing = Backend::start(Behavior::Status(429))
        .await
        .expect("backend");
    let text = format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\n\
         services = {{ healthy = [\"{}\"], failing = [\"{}\"] }}\n\
         [retry]\nmax_retries = 1\ninitial = \"1ms\"\nbudget_percent = 10\n",
        healthy.addr(),
        failing.addr()
    );
    let client = client(&text).await.expect("client");
    call_junk_hosts(&client, junk).await;
    // Plenty of healthy traffic: with one shared budget it would fund
    // retries for everyone.
    for _ in 0..400 {
        let response = client
            .get("healthy", "/", CallOptions::default())
            .await
            .expect("healthy");
        response.into_body().collect().await.expect("body");
    }
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let _ = client.get("failing", "/", CallOptions::default()).await;
    }
    // Its own 100 calls fund 10 % plus the per-second minimum (10 a
    // second, at most one second's worth held): far fewer than the 100
    // retries a shared budget would have allowed, however slow the run.
    let seconds = started.elapsed().as_secs_f64();
    let bound = 100 / 10 + (10.0 * (seconds + 1.0)).ceil() as u64 + 5;
    assert!(
        bound < 100,
        "a run of {seconds:.1}s is too slow to tell budgets apart"
    );
    let retries = failing.stats().requests - 100;
    assert!(
        retries <= bound,
        "the failing service retried {retries} times in {seconds:.2}s (bound {bound})"
    );
    client.shutdown(Duration::from_secs(1)).await;
    retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_service_wide_circuit_is_not_retried() {
    let failing = Backend::start(Behavior::Status(500))
        .await
        .expect("backend");
    let client = client(&static_config(
        "users",
        failing.addr(),
        "",
        "[breaker]\nscope = \"service\"\nconsecutive_failures = 1\nopen_duration = \"30s\"\n\
         [retry]\nmax_retries = 3\ninitial = \"50ms\"\nretry_non_idempotent = true\n",
    ))
    .await
    .expect("client");
    // The first call opens the circuit.
    let _ = client.get("users", "/", CallOptions::default()).await;
    let sent = failing.stats().requests;
    let started = Instant::now();
    for _ in 0..10 {
        let err = client
            .post("users", "/", "x", CallOptions::default())
            .await
            .expect_err("open circuit");
        assert!(
            matches!(MeshError::find(&*err), Some(MeshError::CircuitOpen { .. })),
            "{err}"
        );
    }
    // No backoff waited: ten refusals at once, not ten times three.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(failing.stats().requests, sent);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_s_deadline_bounds_a_call_against_a_hanging_service() {
    let hanging = Backend::start(Behavior::Slow(Duration::from_secs(60)))
        .await
        .expect("backend");
    // 300 ms attempts: the deadline is two of them, retries included.
    let client = client(&static_config(
        "users",
        hanging.addr(),
        "timeout = \"300ms\"",
        "[retry]\nmax_retries = 5\ninitial = \"1ms\"\nbudget_percent = 100\n",
    ))
    .await
    .expect("client");
    let started = Instant::now();
    let _ = client
        .get("users", "/", CallOptions::default())
        .await
        .expect_err("hangs");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert!(hanging.stats().requests <= 3);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_discovery_file_fails_at_start_naming_the_file() {
    let err = client(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"file\"\npath = \"no-such-services.json\"\n",
    )
    .await
    .expect_err("missing file");
    let text = err.to_string();
    assert!(text.contains("no-such-services.json"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_fails_at_start_naming_the_file() {
    let err = client(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {}\n\
         [tls]\ncert_path = \"/nonexistent/tls.crt\"\nkey_path = \"/nonexistent/tls.key\"\n\
         ca_path = \"/nonexistent/ca.crt\"\n\
         peer_identity = \"spiffe://cluster.local/ns/default/sa/{service}\"\n",
    )
    .await
    .expect_err("missing certificate");
    let text = err.to_string();
    assert!(text.contains("/nonexistent/tls.crt"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_profile_fails_naming_the_key() {
    let err = client(
        "profile = \"prod\"\n[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {}\n",
    )
    .await
    .expect_err("unknown profile");
    let text = err.to_string();
    assert!(text.contains("profile"), "{text}");
    assert!(
        text.contains("production"),
        "the valid values are named: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_timeout_names_the_registry() {
    let double = consul::ConsulDouble::start().await;
    // Consul answers nothing within the first call's wait.
    double.delay(Duration::from_secs(30));
    let client = client(&consul_config(&double.url(), ""))
        .await
        .expect("client");
    let err = client
        .get("users", "/", CallOptions::default())
        .await
        .expect_err("no answer");
    let text = err.to_string();
    assert!(text.contains(&double.url()), "{text}");
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_token_appears_in_no_debug_output() {
    let double = consul::ConsulDouble::start().await;
    let text = consul_config(&double.url(), "token = \"acl-7f3e-very-secret\"");
    let config = MeshConfig::from_toml_str(&text).expect("config");
    assert!(!format!("{config:?}").contains("very-secret"));
    let serialized = serde_json::to_string(&config).expect("serialize");
    assert!(!serialized.contains("very-secret"), "{serialized}");
    let client = client(&text).await.expect("client");
    assert!(!format!("{client:?}").contains("very-secret"));
    assert!(!format!("{:?}", client.config()).contains("very-secret"));
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_the_status_only_unless_details_are_asked_for() {
    async fn body(client: &MeshClient) -> String {
        let layer = client.health_layer().expect("health layer");
        let app = tower::Layer::layer(
            &layer,
            tower::service_fn(|_req: Request<Full<bytes::Bytes>>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    bytes::Bytes::new(),
                )))
            }),
        );
        let response = app
            .oneshot(
                Request::get("/health/live")
                    .body(Full::new(bytes::Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("served");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    let base = "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {}\n";
    for (details, expect_names) in [("", false), ("details = true\n", true)] {
        let text = format!("{base}[health]\n{details}");
        let config = MeshConfig::from_toml_str(&text).expect("config");
        let client = MeshClient::builder(config)
            .check_with("database-password-store", [Probe::Liveness], || async {
                Err(mesh::health::CheckError::new("connection to db failed"))
            })
            .expect("check")
            .build()
            .await
            .expect("client");
        // Let the check run once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = body(&client).await;
        assert_eq!(
            text.contains("database-password-store"),
            expect_names,
            "details {details:?}: {text}"
        );
        assert!(text.contains("status"), "{text}");
        client.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_consul_url_are_refused_naming_the_key() {
    let err = MeshConfig::from_toml_str(&consul_config("http://admin:hunter2@127.0.0.1:8500", ""))
        .expect_err("credentials in the URL");
    let text = err.to_string();
    assert!(text.contains("discovery.url"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // A password holding '/', '?' or '#' ends a URL parser's authority
    // early: refused all the same, over https too, and never quoted.
    for url in [
        "http://admin:hun/ter2@127.0.0.1:8500",
        "http://admin:hun?ter#2@127.0.0.1:8500",
        "https://admin:hun/ter2@consul.internal:8501",
        "consul://admin:hun/ter2@127.0.0.1:8500",
    ] {
        let err = MeshConfig::from_toml_str(&consul_config(url, "")).expect_err(url);
        let text = format!("{err} {err:?}");
        assert!(text.contains("credentials"), "{url}: {text}");
        assert!(!text.contains("ter2") && !text.contains("ter#2"), "{text}");
    }
    // A token in a query is refused the same way, and not quoted either.
    let err = MeshConfig::from_toml_str(&consul_config("http://127.0.0.1:8500/?token=hunter2", ""))
        .expect_err("a query");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("discovery.url") && text.contains("query"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_at_registration_is_a_registration_failure_not_bad_config() {
    // Nothing listens there.
    let url = format!("http://127.0.0.1:{}", mesh_testkit::net::free_port());
    let text = format!(
        "[service]\nname = \"api-gateway\"\naddress = \"127.0.0.1\"\nport = 18080\n\
         [discovery]\nkind = \"consul\"\nurl = \"{url}\"\nregister = true\n"
    );
    let err = client(&text).await.expect_err("no agent to register with");
    assert!(
        matches!(err, StartError::Registration { .. }),
        "reported as {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("consul at {url}")), "{text}");
}

/// Retry events name the service a call was routed to: a request sent to
/// an instance's own address, routed by a `TargetService`, names that
/// service in its retry events, not the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_events_name_the_service_a_request_is_routed_to() {
    use mesh::core::ext::TargetService;
    use mesh::core::ServiceName;

    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let text = static_config(
        "users",
        failing.addr(),
        "",
        "[retry]\nmax_retries = 1\ninitial = \"1ms\"\nbudget_percent = 100\n",
    );
    let client = client(&text).await.expect("client");
    let mut events = client.subscribe();
    let users = ServiceName::new("users").expect("name");
    let mut req = Request::get(format!("http://{}/", failing.addr()))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    req.extensions_mut().insert(TargetService(users.clone()));
    let answer = client.send(req).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.stats().requests, 2, "retried once, at the instance");
    let named = retry_events::services_named(&mut events);
    assert!(!named.is_empty(), "the retry was reported");
    assert!(
        named.iter().all(|s| s.as_ref() == Some(&users)),
        "every retry event names the routed service: {named:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
}
