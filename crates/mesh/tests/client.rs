//! The facade end to end: configured from a file with file-based
//! discovery over three real hyper servers on 127.0.0.1; one server is
//! killed mid-traffic and no call fails; metrics and events are read;
//! shutdown drains calls in flight and loses none.

use std::time::Duration;

use http_body_util::BodyExt;
use mesh::core::{MeshError, MeshEvent};
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::{Backend, Behavior};

fn write_services(path: &std::path::Path, backends: &[&Backend]) {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(
            "{{ \"services\": {{ \"user-service\": [{}] }} }}",
            list.join(", ")
        ),
    )
    .expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_from_a_file_it_survives_a_dead_instance_and_drains_on_shutdown() {
    let a = Backend::start(Behavior::Ok).await.expect("backend");
    let b = Backend::start(Behavior::Ok).await.expect("backend");
    let c = Backend::start(Behavior::Ok).await.expect("backend");
    let dir = std::env::temp_dir().join(format!("mesh-facade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    write_services(&dir.join("services.json"), &[&a, &b, &c]);
    let config_path = dir.join("mesh.toml");
    std::fs::write(
        &config_path,
        r#"
profile = "production"

[service]
name = "api-gateway"

[discovery]
kind = "file"
path = "services.json"
check_every = "50ms"

[retry]
max_retries = 2
backoff = "constant"
initial = "1ms"
budget_percent = 100

[upstream_health]
probe = "tcp"
interval = "50ms"
jitter = "10ms"
timeout = "1s"
unhealthy_threshold = 1
"#,
    )
    .expect("config");

    let config = MeshConfig::load_with_env(&config_path, |_| None).expect("loads");
    let client = MeshClient::from_config(config).await.expect("client");
    let mut events = client.subscribe();

    let call = |client: MeshClient| async move {
        let response = client
            .get(
                "user-service",
                "/api/users",
                CallOptions::client_id("client-123"),
            )
            .await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, mesh::core::BoxError>(status)
    };
    for _ in 0..30 {
        assert!(call(client.clone()).await.expect("call").is_success());
    }

    // Kill one instance mid-traffic: no call fails.
    let dead_addr = c.addr();
    drop(c);
    for _ in 0..100 {
        let status = call(client.clone()).await.expect("no call fails");
        assert!(status.is_success());
    }

    // Metrics as a JSON document.
    let metrics = serde_json::to_value(client.metrics()).expect("JSON");
    assert_eq!(metrics["service"], "api-gateway");
    let instances = &metrics["routes"][0]["services"][0]["instances"];
    assert_eq!(instances.as_array().map(Vec::len), Some(3), "{metrics}");
    let served: u64 = instances
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(served >= 130, "{metrics}");
    assert_eq!(metrics["routes"][0]["retry"]["requests"], 130);

    // And in Prometheus's text format.
    let text = client.prometheus();
    assert!(
        text.contains("# TYPE mesh_instance_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("mesh_retry_requests_total{route=\"*\"} 130"),
        "{text}"
    );
    // The dead instance is taken out (by its breaker, or by the upstream
    // check when the balancer sent it nothing lately).
    let dead = format!("address=\"{dead_addr}\"");
    let unavailable = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("mesh_instance_available") && l.contains(&dead) && l.ends_with(" 0.0")
        })
    };
    let started = std::time::Instant::now();
    while !unavailable(&client.prometheus()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dead instance is unavailable: {}",
            client.prometheus()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Events: one per call, and the dead instance was noticed.
    let (mut completed, mut noticed) = (0, false);
    while let Ok(event) = events.try_recv() {
        match event {
            MeshEvent::RequestCompleted { status, .. } => {
                assert_eq!(status, Some(200));
                completed += 1;
            }
            MeshEvent::EndpointHealthChanged { .. } | MeshEvent::BreakerTransition { .. } => {
                noticed = true
            }
            _ => {}
        }
    }
    assert_eq!(completed, 130, "one event per call");
    assert!(noticed, "the dead instance was noticed");

    // Shut down with calls in flight: they finish, none is lost; new ones
    // are refused.
    a.set_behavior(Behavior::Slow(Duration::from_millis(150)));
    b.set_behavior(Behavior::Slow(Duration::from_millis(150)));
    let mut in_flight = Vec::new();
    for _ in 0..8 {
        in_flight.push(tokio::spawn(call(client.clone())));
    }
    // All eight entered (bounded wait), then shut down under them.
    let started = tokio::time::Instant::now();
    while client.metrics().in_flight < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the calls never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let left = client.shutdown(Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    for call in in_flight {
        assert!(call
            .await
            .expect("task")
            .expect("drained, not lost")
            .is_success());
    }
    let refused = call(client.clone()).await.expect_err("closed");
    assert!(
        matches!(
            MeshError::find(&*refused),
            Some(MeshError::ShuttingDown { .. })
        ),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_calls_are_refused_at_once_with_the_limit_named() {
    let slow = Backend::start(Behavior::Slow(Duration::from_secs(2)))
        .await
        .expect("backend");
    let fast = Backend::start(Behavior::Ok).await.expect("backend");
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"

[discovery]
kind = "static"
services = {{ reports = ["{}"], users = ["{}"] }}

[services.reports]
limits = {{ concurrency = 2 }}

[services.users]
limits = {{ requests = 5, per = "1h" }}
"#,
        slow.addr(),
        fast.addr()
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");

    // Two slow calls fill the concurrency limit; the third is refused at
    // once, not queued.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("reports", "/", CallOptions::default()).await })
        })
        .collect();
    mesh_testkit::wait::until("both slow calls reach the server", || {
        slow.stats().requests == 2
    })
    .await;
    let started = tokio::time::Instant::now();
    let refused = client
        .get("reports", "/", CallOptions::default())
        .await
        .expect_err("over the concurrency limit");
    // A queued call would wait the 2 s the slow calls hold their slots.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert!(
        matches!(
            MeshError::find(&*refused),
            Some(MeshError::LimitExceeded { limit, .. }) if limit == "2 calls in flight"
        ),
        "{refused}"
    );
    for call in busy {
        assert!(call
            .await
            .expect("task")
            .expect("admitted")
            .status()
            .is_success());
    }

    // Five calls per hour: the sixth is refused; other services are not
    // affected.
    for _ in 0..5 {
        client
            .get("users", "/", CallOptions::default())
            .await
            .expect("within the rate");
    }
    let refused = client
        .get("users", "/", CallOptions::default())
        .await
        .expect_err("over the rate");
    assert!(
        refused.to_string().contains("5 calls per 3600s"),
        "{refused}"
    );
    assert!(client
        .get("reports", "/", CallOptions::default())
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_older_than_max_staleness_is_withdrawn() {
    let up = Backend::start(Behavior::Ok).await.expect("backend");
    let dir = std::env::temp_dir().join(format!("mesh-facade-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let services = dir.join("services.json");
    write_services(&services, &[&up]);
    let config = MeshConfig::from_toml_str(&format!(
        r#"
max_staleness = "300ms"
[service]
name = "api-gateway"
[discovery]
kind = "file"
path = "{}"
check_every = "20ms"
"#,
        services.display()
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    let mut events = client.subscribe();
    client
        .get("user-service", "/", CallOptions::default())
        .await
        .expect("served from the file");

    // The registry fails (its file is gone): the last good set serves on
    // until it is older than the limit, then it is withdrawn.
    std::fs::remove_file(&services).expect("remove");
    let expired = async {
        loop {
            if let Ok(MeshEvent::DiscoveryExpired { service, .. }) = events.recv().await {
                return service;
            }
        }
    };
    let service = tokio::time::timeout(Duration::from_secs(5), expired)
        .await
        .expect("a DiscoveryExpired event");
    assert_eq!(service.as_str(), "user-service");
    let err = client
        .get("user-service", "/", CallOptions::default())
        .await
        .expect_err("withdrawn");
    assert!(
        matches!(
            MeshError::find(&*err),
            Some(
                MeshError::UnknownService { .. }
                    | MeshError::DiscoveryTimeout { .. }
                    | MeshError::NoAvailableEndpoints { total: 0, .. }
            )
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_notification_sample_runs_as_is() {
    // config/notification-service.toml unchanged, beside a services.json
    // listing three real servers.
    let servers = [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let dir = std::env::temp_dir().join(format!("mesh-sample-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/notification-service.toml");
    std::fs::copy(&sample, dir.join("mesh.toml")).expect("copy");
    let list: Vec<String> = servers
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    std::fs::write(
        dir.join("services.json"),
        format!("{{ \"services\": {{ \"email\": [{}] }} }}", list.join(", ")),
    )
    .expect("services");
    let client = MeshClient::from_config(
        MeshConfig::load_with_env(dir.join("mesh.toml"), |_| None).expect("sample"),
    )
    .await
    .expect("client");
    for _ in 0..20 {
        client
            .post("email", "/send", "hello", CallOptions::default())
            .await
            .expect("sent");
    }
    // A POST is not retried by default, so kill an instance between calls
    // and let the breaker and the balancer route around it: GETs (which
    // are retried) keep succeeding.
    let [a, b, c] = servers;
    drop(c);
    let before = a.stats().requests + b.stats().requests;
    for _ in 0..30 {
        let response = client
            .get("email", "/status", CallOptions::default())
            .await
            .expect("no failed call");
        assert!(response.status().is_success());
    }
    // Every GET was served by the two left.
    assert!(a.stats().requests + b.stats().requests - before >= 30);
    assert_eq!(client.shutdown(Duration::from_secs(1)).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server on 127.0.0.1 answering each request with its path and query.
async fn echo_path() -> std::net::SocketAddr {
    mesh_testkit::echo::serve(|req| {
        let path = req.uri().path_and_query().map(|p| p.to_string());
        bytes::Bytes::from(path.unwrap_or_default())
    })
    .await
    .expect("echo server")
}

/// A client whose service `users` is the one instance at `addr`.
async fn users_on(addr: std::net::SocketAddr) -> MeshClient {
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "caller"
[discovery]
kind = "static"
services = {{ users = ["{addr}"] }}
"#
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_reaches_the_server_whole_with_or_without_its_leading_slash() {
    let client = users_on(echo_path().await).await;
    // "Users" is not the service's own spelling, so its URI is made from
    // its name on every call; "users" is, and its URI is made from the
    // authority kept with the service's state (made by the first call).
    let cases = [
        ("/api/users?page=2", "/api/users?page=2"),
        ("api/users?page=2", "/api/users?page=2"),
        ("", "/"),
        ("/a?b=c#fragment", "/a?b=c"),
        ("//elsewhere/x", "//elsewhere/x"),
    ];
    let calls = ["Users", "users", "users"]
        .into_iter()
        .flat_map(|name| cases.map(|c| (name, c)));
    for (name, (path, expected)) in calls {
        let response = client
            .get(name, path, CallOptions::default())
            .await
            .expect("answer");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], expected.as_bytes(), "{name} {path:?}");
    }
    client.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_no_uri_path_is_refused_naming_the_service_not_the_query() {
    let client = users_on(echo_path().await).await;
    let error = client
        .get("users", "/a b?token=s3cret", CallOptions::default())
        .await
        .expect_err("a space is no URI character");
    let text = error.to_string();
    assert!(
        text.contains("users") && text.contains("not a valid URI path"),
        "{text}"
    );
    assert!(
        matches!(
            MeshError::find(&*error),
            Some(MeshError::InvalidPath { service, .. }) if service.as_str() == "users"
        ),
        "typed: {error:?}"
    );
    assert!(!text.contains("s3cret"), "the query is not echoed: {text}");
    // A good path still goes through.
    let response = client
        .get("users", "/api/users", CallOptions::default())
        .await
        .expect("answer");
    assert!(response.status().is_success());
    // Dropped: an answer still held counts its call as in flight, and
    // the shutdown below would wait for it.
    drop(response);
    // And a bad one is refused the same way once the service is known.
    let again = client
        .get("users", "/a b?token=s3cret", CallOptions::default())
        .await
        .expect_err("still no URI path");
    assert!(
        matches!(
            MeshError::find(&*again),
            Some(MeshError::InvalidPath { .. })
        ),
        "typed: {again:?}"
    );
    assert!(!again.to_string().contains("s3cret"), "{again}");
    // A path whose URI would be longer than `http` parses (65,534 bytes)
    // is refused too, through the first call's path and the kept one's.
    let long = format!("/{}", "a".repeat(65_534 - "http://users".len()));
    for name in ["Users", "users"] {
        let error = client
            .get(name, &long, CallOptions::default())
            .await
            .expect_err("too long a URI");
        assert!(
            matches!(
                MeshError::find(&*error),
                Some(MeshError::InvalidPath { .. })
            ),
            "{name}: {error:?}"
        );
    }
    // One byte shorter, it is a URI.
    let response = client
        .get("users", &long[..long.len() - 1], CallOptions::default())
        .await
        .expect("the longest URI is sent");
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(body.to_bytes().len(), long.len() - 1, "the path echoed");
    client.shutdown(Duration::from_secs(5)).await;
}
