//! The facade test matrix (issue 14): for each section of the
//! configuration, a `MeshClient` built from a file as a user builds one
//! (`MeshConfig::load_with_env` then `MeshClient::from_config`), against
//! real loopback peers, showing that the setting changes behaviour: the
//! same traffic, with and without the key, ends differently.
//!
//! Counts are preferred over durations; a duration is only ever a loose
//! bound, with room for a loaded two-core machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::core::{BoxError, MeshError, Probe, ProbeStatus};
use mesh::{CallOptions, MeshBody, MeshClient, MeshConfig};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_testkit::{consul, dnsmasq, Backend, Behavior};
use tower::ServiceExt;

// === helpers ===

/// A fresh directory for one configuration file (and its neighbours),
/// left in place: the client may read its neighbours for as long as it
/// runs.
fn scratch_dir() -> PathBuf {
    TempDir::new("matrix").keep()
}

/// `text` written as `mesh.toml` in `dir` and loaded as a user loads it.
fn load_in(dir: &std::path::Path, text: &str) -> MeshConfig {
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).expect("write config");
    MeshConfig::load_with_env(&file, |_| None).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
}

/// A client from `text` written to a file of its own.
async fn client_in(dir: &std::path::Path, text: &str) -> MeshClient {
    MeshClient::from_config(load_in(dir, text))
        .await
        .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
}

async fn start_client(text: &str) -> MeshClient {
    client_in(&scratch_dir(), text).await
}

/// `[service]` and static discovery of `services` (name, instances),
/// after `top` (top-level keys) and before `tables`.
fn static_config(top: &str, services: &[(&str, &[SocketAddr])], tables: &str) -> String {
    let mut text = format!(
        "{top}\n[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\n[discovery.services]\n"
    );
    for (name, addrs) in services {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!("{name} = [{}]\n", list.join(", ")));
    }
    format!("{text}{tables}\n")
}

/// Retries off, so that each call is one request.
const NO_RETRY: &str = "[retry]\nmax_retries = 0\n";

/// Calls spread evenly over the instances: for tests of other keys that
/// count the calls each instance gets (the default, power of two choices,
/// sends sequential calls to whichever instance answered fastest).
const ROUND_ROBIN: &str = "[balance]\nstrategy = \"round_robin\"\n";

/// A breaker that never trips in these tests (so another key's effect is
/// seen alone).
const NO_BREAKER: &str = "[breaker]\nscope = \"endpoint\"\nconsecutive_failures = 100000\n\
                          failure_rate_threshold = 100.0\nwindow = { kind = \"count\", size = 100000 }\n\
                          minimum_calls = 100000\n";

/// One GET; the body read to its end.
async fn get(client: &MeshClient, service: &str) -> Result<StatusCode, BoxError> {
    get_with(client, service, CallOptions::default()).await
}

async fn get_with(
    client: &MeshClient,
    service: &str,
    options: CallOptions,
) -> Result<StatusCode, BoxError> {
    let response = client.get(service, "/api", options).await?;
    Ok(drain(response).await)
}

async fn drain(response: http::Response<MeshBody>) -> StatusCode {
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

fn mesh_error(error: &BoxError) -> Option<&MeshError> {
    MeshError::find(&**error)
}

/// Whether a timeout ended the call: every time limit of the facade (the
/// per-attempt timeout, the deadline) fails with the one `MeshError::Timeout`.
fn timed_out(error: &BoxError) -> bool {
    matches!(mesh_error(error), Some(MeshError::Timeout { .. }))
}

/// Waits (at most 10 s) for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === top level: profile, timeout, max_staleness, event_capacity ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_sets_how_often_a_failing_call_is_retried() {
    let mut sent = Vec::new();
    for profile in ["development", "production"] {
        let failing = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            &format!("profile = \"{profile}\""),
            &[("users", &[failing.addr()])],
            "",
        ))
        .await;
        let status = get(&client, "users").await.expect("the server's answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        sent.push(failing.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Development: one retry; production: two.
    assert_eq!(sent, [2, 3], "requests per call (development, production)");
}

/// `MESH_PROFILE` overrides the file's profile, as a deployment sets it;
/// `SERVICE_NAME` the service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_s_profile_and_name_override_the_file_s() {
    let mut seen = Vec::new();
    for profile in [None, Some("development")] {
        let failing = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let text = static_config(
            "profile = \"production\"",
            &[("users", &[failing.addr()])],
            "",
        );
        let file = scratch_dir().join("mesh.toml");
        std::fs::write(&file, text).expect("write config");
        let config = MeshConfig::load_with_env(&file, |name| match name {
            "MESH_PROFILE" => profile.map(str::to_owned),
            "SERVICE_NAME" => Some("billing-api".to_owned()),
            _ => None,
        })
        .expect("config");
        let client = MeshClient::from_config(config).await.expect("client");
        let status = get(&client, "users").await.expect("the server's answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        seen.push((client.metrics().service, failing.stats().requests));
        client.shutdown(Duration::from_secs(1)).await;
    }
    // The file's profile (production): two retries; development: one.
    let name = "billing-api".to_owned();
    assert_eq!(seen, [(name.clone(), 3), (name, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_a_slow_instance_and_a_service_s_own_timeout_applies_to_it_alone() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(2500)))
        .await
        .expect("backend");
    let services: &[(&str, &[SocketAddr])] =
        &[("reports", &[slow.addr()]), ("users", &[slow.addr()])];
    // Only reports has a 200 ms timeout: its call fails fast, the same
    // call to users waits for the answer.
    let client = start_client(&static_config(
        "",
        services,
        &format!("{NO_RETRY}[services.reports]\ntimeout = \"200ms\"\n"),
    ))
    .await;
    let (reports, users) = tokio::join!(
        async {
            let started = Instant::now();
            (get(&client, "reports").await, started.elapsed())
        },
        get(&client, "users"),
    );
    let (reports, took) = reports;
    let err = reports.expect_err("reports timed out");
    assert!(timed_out(&err), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(users.expect("users waited"), StatusCode::OK);
    client.shutdown(Duration::from_secs(1)).await;

    // The top-level timeout covers every service.
    let client = start_client(&static_config("timeout = \"200ms\"", services, NO_RETRY)).await;
    let started = Instant::now();
    let err = get(&client, "users").await.expect_err("users timed out");
    assert!(timed_out(&err), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    client.shutdown(Duration::from_secs(1)).await;
}

/// A file-discovery configuration over `services.json` in `dir`.
fn file_config(top: &str, check_every: &str, tables: &str) -> String {
    format!(
        "{top}\n[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"file\"\n\
         path = \"services.json\"\ncheck_every = \"{check_every}\"\n{tables}\n"
    )
}

fn write_services(dir: &std::path::Path, addrs: &[SocketAddr]) {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let tmp = dir.join("services.tmp");
    std::fs::write(
        &tmp,
        format!("{{ \"services\": {{ \"users\": [{}] }} }}", list.join(", ")),
    )
    .expect("write");
    std::fs::rename(&tmp, dir.join("services.json")).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_withdraws_a_set_whose_registry_keeps_failing() {
    let up = Backend::start(Behavior::Ok).await.expect("backend");
    let mut outcomes = Vec::new();
    for top in ["max_staleness = \"300ms\"", ""] {
        let dir = scratch_dir();
        write_services(&dir, &[up.addr()]);
        let client = client_in(&dir, &file_config(top, "20ms", NO_RETRY)).await;
        get(&client, "users").await.expect("served from the file");
        // The registry fails from now on: its file is gone.
        std::fs::remove_file(dir.join("services.json")).expect("remove");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        outcomes.push(get(&client, "users").await.is_ok());
        client.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    // With the limit: withdrawn; without: the last good set serves on.
    assert_eq!(outcomes, [false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_capacity_bounds_what_a_slow_subscriber_is_kept() {
    let up = Backend::start(Behavior::Ok).await.expect("backend");
    let mut lagged = Vec::new();
    for top in ["event_capacity = 4", ""] {
        let client = start_client(&static_config(top, &[("users", &[up.addr()])], "")).await;
        let mut events = client.subscribe();
        for _ in 0..20 {
            get(&client, "users").await.expect("call");
        }
        let mut lost = 0;
        loop {
            match events.try_recv() {
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => lost += n,
                Err(_) => break,
            }
        }
        lagged.push(lost);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert!(lagged[0] >= 16, "capacity 4 kept more: lost {}", lagged[0]);
    assert_eq!(lagged[1], 0, "the default capacity lost events");
}

// === [discovery]: file, consul, kubernetes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_check_every_sets_how_soon_a_changed_file_is_followed() {
    let (old, new) = (
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    );
    let mut moved = Vec::new();
    for every in ["50ms", "1h"] {
        let dir = scratch_dir();
        write_services(&dir, &[old.addr()]);
        let client = client_in(&dir, &file_config("", every, NO_RETRY)).await;
        get(&client, "users").await.expect("from the file");
        new.reset_stats();
        write_services(&dir, &[new.addr()]);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for _ in 0..5 {
            get(&client, "users").await.expect("call");
        }
        moved.push(new.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(
        moved,
        [5, 0],
        "calls to the newly listed instance (50ms, 1h)"
    );
}

/// A Consul health entry for `addr` with `tags`.
fn tagged_entry(addr: SocketAddr, tags: &[&str]) -> serde_json::Value {
    let mut entry = consul::entry("n1", "127.0.0.1", addr.port(), "passing");
    entry["Service"]["Tags"] = serde_json::json!(tags);
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_instance_listed_by_hostname_is_called() {
    let double = consul::ConsulDouble::start().await;
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    // Consul allows a hostname as the address; the client resolves it.
    double.set(
        "users",
        vec![consul::entry(
            "n1",
            "localhost",
            backend.addr().port(),
            "passing",
        )],
    );
    let client = start_client(&format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\nurl = \"{}\"\n",
        double.url()
    ))
    .await;
    // `localhost` may also resolve to ::1, where nothing listens: a
    // connect error there is retried on 127.0.0.1.
    for _ in 0..3 {
        assert_eq!(get(&client, "users").await.expect("called"), StatusCode::OK);
    }
    assert_eq!(backend.stats().requests, 3);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_tags_datacenter_and_register_change_what_is_asked_and_called() {
    let double = consul::ConsulDouble::start().await;
    let production = Backend::start(Behavior::Ok).await.expect("backend");
    let canary = Backend::start(Behavior::Ok).await.expect("backend");
    double.set(
        "users",
        vec![
            tagged_entry(production.addr(), &["production"]),
            tagged_entry(canary.addr(), &["canary"]),
        ],
    );
    let service = "[service]\nname = \"api-gateway\"\naddress = \"127.0.0.1\"\nport = 18081\n\
                   tags = [\"blue\"]\n";
    let discovery = format!(
        "[discovery]\nkind = \"consul\"\nurl = \"{}\"\n",
        double.url()
    );

    // Without the keys: both instances called, no datacenter asked, no
    // registration.
    let client = start_client(&format!("{service}{discovery}{NO_RETRY}{ROUND_ROBIN}")).await;
    for _ in 0..10 {
        get(&client, "users").await.expect("call");
    }
    assert!(
        production.stats().requests >= 3 && canary.stats().requests >= 3,
        "both instances are called"
    );
    assert!(double.requests().iter().all(|q| !q.contains("dc=")));
    assert!(double.registration("api-gateway-127.0.0.1-18081").is_none());
    client.shutdown(Duration::from_secs(1)).await;

    // With them: only the tagged instances, the datacenter in every query,
    // and the local service registered (with its own tags) until shutdown.
    production.reset_stats();
    canary.reset_stats();
    let client = start_client(&format!(
        "{service}{discovery}datacenter = \"dc9\"\ntags = [\"production\"]\nregister = true\n{NO_RETRY}"
    ))
    .await;
    let registration = double
        .registration("api-gateway-127.0.0.1-18081")
        .expect("registered");
    assert_eq!(registration["Port"], 18081);
    assert_eq!(registration["Tags"][0], "blue");
    for _ in 0..10 {
        get(&client, "users").await.expect("call");
    }
    assert_eq!(
        (production.stats().requests, canary.stats().requests),
        (10, 0)
    );
    assert!(
        double.requests().iter().any(|q| q.contains("dc=dc9")),
        "{:?}",
        double.requests()
    );
    client.shutdown(Duration::from_secs(1)).await;
    assert!(
        double.registration("api-gateway-127.0.0.1-18081").is_none(),
        "deregistered on shutdown"
    );
}

/// A Consul stand-in with ACLs: the health API answers `users` (at `addr`)
/// only to the token `t0k3n`, 403 otherwise.
async fn consul_with_acl(addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |req: Request<axum::body::Body>| async move {
        let blocking = req.uri().query().is_some_and(|q| q.contains("index="));
        if blocking {
            // Nothing changes here: hold the blocking query a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let allowed = req
            .headers()
            .get("x-consul-token")
            .is_some_and(|t| t == "t0k3n");
        let body = match allowed {
            true => serde_json::json!([consul::entry("n1", "127.0.0.1", addr.port(), "passing")]),
            false => serde_json::json!("ACL not found"),
        };
        let status = match allowed {
            true => StatusCode::OK,
            false => StatusCode::FORBIDDEN,
        };
        (
            status,
            [
                ("x-consul-index", "7"),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_token_opens_an_acl_protected_catalog() {
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    let consul = consul_with_acl(users.addr()).await;
    let mut outcomes = Vec::new();
    for token in ["token = \"t0k3n\"", ""] {
        let client = start_client(&format!(
            "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\n\
             url = \"http://{consul}\"\n{token}\n{NO_RETRY}"
        ))
        .await;
        let options = CallOptions::default().timeout(Duration::from_secs(6));
        outcomes.push(get_with(&client, "users", options).await.is_ok());
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(outcomes, [true, false]);
    assert_eq!(users.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_port_name_namespace_and_zone_choose_the_records_asked_for() {
    // SRV records of the named port `http` point at port 8080 of these.
    let ips = ["127.0.0.71", "127.0.0.72"];
    let pods = [
        Backend::start_on(
            format!("{}:8080", ips[0]).parse().expect("addr"),
            Behavior::Ok,
        )
        .await
        .expect("backend on :8080"),
        Backend::start_on(
            format!("{}:8080", ips[1]).parse().expect("addr"),
            Behavior::Ok,
        )
        .await
        .expect("backend on :8080"),
    ];
    let dns = dnsmasq::start(&ips);
    let config = |keys: &str| {
        format!(
            "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"kubernetes\"\n\
             nameserver = \"{}\"\n{keys}\n{NO_RETRY}{ROUND_ROBIN}",
            dns.addr
        )
    };
    let client = start_client(&config("port_name = \"http\"")).await;
    for _ in 0..8 {
        get(&client, "users").await.expect("found by SRV");
    }
    assert_eq!(pods.iter().map(|p| p.stats().requests).sum::<u64>(), 8);
    assert!(
        pods.iter().all(|p| p.stats().requests > 0),
        "both pods called"
    );
    client.shutdown(Duration::from_secs(1)).await;

    // Another namespace or zone names records that do not exist.
    for keys in [
        "port_name = \"http\"\nnamespace = \"staging\"",
        "port_name = \"http\"\nzone = \"other.local\"",
    ] {
        let client = start_client(&config(keys)).await;
        let options = CallOptions::default().timeout(Duration::from_secs(6));
        assert!(
            get_with(&client, "users", options).await.is_err(),
            "{keys}: found"
        );
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(pods.iter().map(|p| p.stats().requests).sum::<u64>(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_resolver_timeout_and_attempts_bound_how_soon_a_hung_dns_is_reported() {
    let ip = "127.0.0.73";
    let _pod = Backend::start_on(format!("{ip}:8080").parse().expect("addr"), Behavior::Ok)
        .await
        .expect("backend on :8080");
    let dns = dnsmasq::start(&[ip]);
    let mut took = Vec::new();
    for keys in ["resolver_timeout = \"200ms\"\nresolver_attempts = 1\n", ""] {
        let client = start_client(&format!(
            "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"kubernetes\"\n\
             port = 8080\nnameserver = \"{}\"\n{keys}{NO_RETRY}",
            dns.addr
        ))
        .await;
        get(&client, "users").await.expect("resolved");
        let mut events = client.subscribe();
        // The records live 1 s; the next refresh meets a hung server.
        dns.pause();
        let started = Instant::now();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
                .await
                .expect("a failure is reported")
                .expect("events");
            if let mesh::core::MeshEvent::DiscoveryFailed { .. } = event {
                break;
            }
        }
        took.push(started.elapsed());
        dns.resume();
        client.shutdown(Duration::from_secs(1)).await;
    }
    // 200 ms x 1 after the refresh is due; the defaults (2 s x 2) take 4 s.
    assert!(took[0] < Duration::from_millis(2500), "{took:?}");
    assert!(took[1] >= Duration::from_millis(3500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_max_error_backoff_caps_the_pause_between_queries_to_a_failing_agent() {
    let mut queries = Vec::new();
    for keys in ["max_error_backoff = \"200ms\"\n", ""] {
        let double = consul::ConsulDouble::start().await;
        double.fail_next(u32::MAX);
        let client = start_client(&format!(
            "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\nurl = \"{}\"\n\
             {keys}{NO_RETRY}",
            double.url()
        ))
        .await;
        // The first call follows the service and waits; Consul fails.
        let call = tokio::spawn({
            let client = client.clone();
            async move { get(&client, "users").await }
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        queries.push(double.requests().len());
        call.abort();
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Capped at 200 ms: a query every 200 ms or so; uncapped, the pauses
    // double (250 ms, 500 ms, 1 s, 2 s...).
    assert!(queries[0] >= 8, "{queries:?}");
    assert!(queries[1] <= 6, "{queries:?}");
}

#[test]
fn consul_hostname_lookup_timeout_reaches_the_registry() {
    // Its effect needs a resolver that hangs, which a test cannot make
    // here; that the key reaches the registry is shown by its check.
    let text = "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\n\
                url = \"http://127.0.0.1:8500\"\nhostname_lookup_timeout = \"0s\"\n";
    let config = MeshConfig::from_toml_str(text).expect("parses");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = runtime
        .block_on(MeshClient::from_config(config))
        .expect_err("refused at start");
    assert!(
        err.to_string()
            .contains("discovery.hostname_lookup_timeout"),
        "{err}"
    );
}

// === [balance] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_response_time_sends_fewer_calls_to_a_slow_instance_than_round_robin() {
    let mut to_slow = Vec::new();
    for strategy in ["round_robin", "least_response_time"] {
        let slow = Backend::start(Behavior::Slow(Duration::from_millis(80)))
            .await
            .expect("backend");
        let fast = Backend::start(Behavior::Ok).await.expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[slow.addr(), fast.addr()])],
            &format!("{NO_RETRY}[balance]\nstrategy = \"{strategy}\"\n"),
        ))
        .await;
        for _ in 0..30 {
            get(&client, "users").await.expect("call");
        }
        to_slow.push(slow.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert!(
        (13..=17).contains(&to_slow[0]),
        "round robin sent {} of 30",
        to_slow[0]
    );
    assert!(
        to_slow[1] <= 8,
        "least response time sent {} of 30",
        to_slow[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_slow_instance_among_healthy_ones_gets_few_calls() {
    // Three healthy instances and one 50 ms one: with no [balance] section
    // (power of two choices over latency and load), the slow one gets
    // little; one line of configuration brings round robin's quarter back.
    let mut to_slow = Vec::new();
    for balance in ["", "[balance]\nstrategy = \"round_robin\"\n"] {
        let slow = Backend::start(Behavior::Slow(Duration::from_millis(50)))
            .await
            .expect("backend");
        let mut fast = Vec::new();
        for _ in 0..3 {
            fast.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        let addrs = [slow.addr(), fast[0].addr(), fast[1].addr(), fast[2].addr()];
        let client = start_client(&static_config(
            "",
            &[("users", &addrs)],
            &format!("{NO_RETRY}{balance}"),
        ))
        .await;
        for _ in 0..80 {
            get(&client, "users").await.expect("call");
        }
        to_slow.push(slow.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert!(to_slow[0] <= 10, "the default sent {} of 80", to_slow[0]);
    assert!(
        (18..=22).contains(&to_slow[1]),
        "round robin sent {} of 80",
        to_slow[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keeps_a_client_on_one_instance() {
    let backends = [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let addrs = [backends[0].addr(), backends[1].addr()];
    let mut busiest = Vec::new();
    for balance in [
        "[balance]\nsticky = [{ header = \"x-client-id\" }]\n",
        ROUND_ROBIN,
    ] {
        for b in &backends {
            b.reset_stats();
        }
        let client = start_client(&static_config(
            "",
            &[("users", &addrs)],
            &format!("{NO_RETRY}{balance}"),
        ))
        .await;
        for _ in 0..10 {
            let options = CallOptions::default().header(
                http::HeaderName::from_static("x-client-id"),
                http::HeaderValue::from_static("client-123"),
            );
            get_with(&client, "users", options).await.expect("call");
        }
        busiest.push(backends.iter().map(|b| b.stats().requests).max());
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(busiest, [Some(10), Some(5)], "(sticky, round robin)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_instance_refuses_a_call_over_the_limit_unless_it_may_wait() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(600)))
        .await
        .expect("backend");
    let mut refused = Vec::new();
    for balance in [
        "[balance]\nmax_connections_per_instance = 1\n",
        // Long enough for the first call to end and free its slot.
        "[balance]\nmax_connections_per_instance = 1\nwait_at_capacity = \"3s\"\n",
        "",
    ] {
        let client = start_client(&static_config(
            "",
            &[("users", &[slow.addr()])],
            &format!("{NO_RETRY}{balance}"),
        ))
        .await;
        let first = {
            let client = client.clone();
            tokio::spawn(async move { get(&client, "users").await })
        };
        until("the first call is in flight", || {
            client.metrics().in_flight == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = get(&client, "users").await;
        refused.push(match &second {
            Ok(status) => Some(*status == StatusCode::OK),
            Err(e) if matches!(mesh_error(e), Some(MeshError::AtCapacity { .. })) => None,
            Err(e) => panic!("{balance}: {e}"),
        });
        first.await.expect("task").expect("the first call");
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Refused at capacity; answered once the slot freed; no limit.
    assert_eq!(refused, [None, Some(true), Some(true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_s_own_balance_applies_to_it_alone() {
    let backends = [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let addrs = [backends[0].addr(), backends[1].addr()];
    let client = start_client(&static_config(
        "",
        &[("users", &addrs), ("orders", &addrs)],
        &format!(
            "{NO_RETRY}{ROUND_ROBIN}[services.users]\nbalance = {{ sticky = [{{ header = \"x-client-id\" }}] }}\n"
        ),
    ))
    .await;
    let mut busiest = Vec::new();
    for service in ["users", "orders"] {
        for b in &backends {
            b.reset_stats();
        }
        for _ in 0..10 {
            let options = CallOptions::default().header(
                http::HeaderName::from_static("x-client-id"),
                http::HeaderValue::from_static("client-123"),
            );
            get_with(&client, service, options).await.expect("call");
        }
        busiest.push(backends.iter().map(|b| b.stats().requests).max());
    }
    assert_eq!(
        busiest,
        [Some(10), Some(5)],
        "(users: sticky, orders: round robin)"
    );
    client.shutdown(Duration::from_secs(1)).await;
}

/// A plaintext server speaking HTTP/2 only (h2c, as a gRPC server does),
/// counting the requests it serves.
async fn h2c_only_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from("h2"),
                        )))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_h2c_speaks_http2_to_a_plaintext_service() {
    let (addr, served) = h2c_only_server().await;
    let mut outcomes = Vec::new();
    for protocol in ["[services.greeter]\nprotocol = \"h2c\"\n", ""] {
        let client = start_client(&static_config(
            "",
            &[("greeter", &[addr])],
            &format!("{NO_RETRY}{protocol}"),
        ))
        .await;
        let options = CallOptions::default().timeout(Duration::from_secs(3));
        outcomes.push(get_with(&client, "greeter", options).await.is_ok());
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(outcomes, [true, false], "(h2c, default http1)");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

// === [breaker] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_opens_the_circuit_after_that_many_and_open_duration_reopens_it() {
    let mut reached = Vec::new();
    for n in [3, 8] {
        let failing = Backend::start(Behavior::Status(500))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[failing.addr()])],
            &format!(
                "{NO_RETRY}[breaker]\nscope = \"service\"\nconsecutive_failures = {n}\n\
                 open_duration = \"300ms\"\nopen_duration_jitter = 0.0\n"
            ),
        ))
        .await;
        for _ in 0..12 {
            let _ = get(&client, "users").await;
        }
        reached.push(failing.stats().requests);
        // Past open_duration, a probe goes through again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = failing.stats().requests;
        let _ = get(&client, "users").await;
        assert_eq!(
            failing.stats().requests,
            before + 1,
            "no probe after open_duration"
        );
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(reached, [3, 8], "requests before the circuit opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_duration_keeps_the_circuit_open() {
    let failing = Backend::start(Behavior::Status(500))
        .await
        .expect("backend");
    let client = start_client(&static_config(
        "",
        &[("users", &[failing.addr()])],
        &format!("{NO_RETRY}[breaker]\nscope = \"service\"\nconsecutive_failures = 2\nopen_duration = \"30s\"\n"),
    ))
    .await;
    for _ in 0..2 {
        let _ = get(&client, "users").await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = get(&client, "users").await.expect_err("still open");
    assert!(
        matches!(mesh_error(&err), Some(MeshError::CircuitOpen { .. })),
        "{err}"
    );
    assert_eq!(failing.stats().requests, 2);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_endpoint_ejects_the_bad_instance_where_scope_service_refuses_the_service() {
    let mut ok_calls = Vec::new();
    for scope in ["endpoint", "service"] {
        let bad = Backend::start(Behavior::Status(500))
            .await
            .expect("backend");
        let good = Backend::start(Behavior::Ok).await.expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[bad.addr(), good.addr()])],
            &format!(
                "{NO_RETRY}{ROUND_ROBIN}[breaker]\nscope = \"{scope}\"\nconsecutive_failures = 1\n\
                 open_duration = \"30s\"\n"
            ),
        ))
        .await;
        let mut ok = 0;
        for _ in 0..10 {
            if get(&client, "users").await.is_ok_and(|s| s.is_success()) {
                ok += 1;
            }
        }
        ok_calls.push(ok);
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Per endpoint, the good instance serves on (every call but the first
    // or second); per service, one failure refuses everything after it.
    assert!(
        ok_calls[0] >= 8,
        "endpoint scope: {} of 10 served",
        ok_calls[0]
    );
    assert!(
        ok_calls[1] <= 1,
        "service scope: {} of 10 served",
        ok_calls[1]
    );
}

/// The states of `client`'s breakers.
fn breaker_states(client: &MeshClient) -> Vec<String> {
    let metrics = client.metrics();
    let breakers = metrics.routes.iter().flat_map(|r| r.breakers.iter());
    breakers.map(|b| b.state.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_half_open_moves_an_idle_breaker_by_timer() {
    let mut states = Vec::new();
    for keys in ["automatic_half_open = false", "automatic_half_open = true"] {
        let failing = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[failing.addr()])],
            &format!(
                "{NO_RETRY}[breaker]\nscope = \"endpoint\"\nconsecutive_failures = 1\n\
                 open_duration = \"200ms\"\nopen_duration_jitter = 0.0\n{keys}\n"
            ),
        ))
        .await;
        let _ = get(&client, "users").await;
        // No call arrives: only a timer can move the breaker.
        tokio::time::sleep(Duration::from_millis(900)).await;
        states.push(breaker_states(&client));
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(states, [["open"], ["half-open"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_expiry_says_where_a_hanging_probe_leaves_the_breaker() {
    let mut states = Vec::new();
    for expiry in ["closed", "open"] {
        let backend = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[backend.addr()])],
            &format!(
                "{NO_RETRY}[breaker]\nscope = \"endpoint\"\nconsecutive_failures = 1\n\
                 open_duration = \"500ms\"\nopen_duration_jitter = 0.0\nhalf_open_probes = 1\n\
                 half_open_max_wait = \"300ms\"\nhalf_open_expiry = \"{expiry}\"\n"
            ),
        ))
        .await;
        let _ = get(&client, "users").await;
        // Half-open by timer after 500 ms.
        tokio::time::sleep(Duration::from_millis(700)).await;
        // The probe hangs past the half-open maximum wait (300 ms); where
        // the breaker goes then is looked at 300 ms later, well before an
        // OPEN would end (500 ms).
        backend.set_behavior(Behavior::Slow(Duration::from_secs(3)));
        let probe = tokio::spawn({
            let client = client.clone();
            async move { get(&client, "users").await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        states.push(breaker_states(&client));
        probe.abort();
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(states, [["closed"], ["open"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_keeps_part_of_a_failing_service_in_service() {
    let mut reached = Vec::new();
    for cap in ["50.0", "100.0"] {
        let failing: Vec<Backend> = backends_of(4, Behavior::Status(503)).await;
        let addrs: Vec<SocketAddr> = failing.iter().map(Backend::addr).collect();
        let client = start_client(&static_config(
            "",
            &[("users", &addrs)],
            &format!(
                "{NO_RETRY}{ROUND_ROBIN}[breaker]\nscope = \"endpoint\"\nconsecutive_failures = 1\n\
                 open_duration = \"30s\"\nmax_ejection_percent = {cap}\n"
            ),
        ))
        .await;
        // One failure each: as many breakers open as the cap allows.
        for _ in 0..4 {
            let _ = get(&client, "users").await;
        }
        let before: u64 = failing.iter().map(|b| b.stats().requests).sum();
        for _ in 0..10 {
            let _ = get(&client, "users").await;
        }
        let after: u64 = failing.iter().map(|b| b.stats().requests).sum();
        reached.push(after - before);
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Half the service kept in: every later call still reaches it; the
    // cap lifted, the whole service is ejected and nothing is sent.
    assert_eq!(reached, [10, 0]);
}

/// `n` backends behaving as `behavior`.
async fn backends_of(n: usize, behavior: Behavior) -> Vec<Backend> {
    let mut backends = Vec::new();
    for _ in 0..n {
        backends.push(Backend::start(behavior).await.expect("backend"));
    }
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rate_threshold_opens_on_a_rate_that_never_makes_a_run_of_failures() {
    let mut reached = Vec::new();
    // Half the calls fail, alternately (round robin): never two failures
    // in a row.
    for rate in ["40.0", "100.0"] {
        let bad = Backend::start(Behavior::Status(500))
            .await
            .expect("backend");
        let good = Backend::start(Behavior::Ok).await.expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[bad.addr(), good.addr()])],
            &format!(
                "{NO_RETRY}{ROUND_ROBIN}[breaker]\nscope = \"service\"\nconsecutive_failures = 1000\n\
                 failure_rate_threshold = {rate}\nwindow = {{ kind = \"count\", size = 20 }}\n\
                 minimum_calls = 10\nopen_duration = \"30s\"\n"
            ),
        ))
        .await;
        for _ in 0..30 {
            let _ = get(&client, "users").await;
        }
        reached.push(bad.stats().requests + good.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert!(
        reached[0] <= 12,
        "a 40% threshold let {} of 30 through",
        reached[0]
    );
    assert_eq!(reached[1], 30, "a 100% threshold tripped on 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_call_rate_opens_on_calls_slower_than_slow_call_duration() {
    let mut reached = Vec::new();
    for slow_after in ["50ms", "10s"] {
        let slow = Backend::start(Behavior::Slow(Duration::from_millis(150)))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[slow.addr()])],
            &format!(
                "{NO_RETRY}[breaker]\nscope = \"service\"\nconsecutive_failures = 1000\n\
                 slow_call_rate_threshold = 50.0\nslow_call_duration = \"{slow_after}\"\n\
                 window = {{ kind = \"count\", size = 10 }}\nminimum_calls = 3\nopen_duration = \"30s\"\n"
            ),
        ))
        .await;
        for _ in 0..8 {
            let _ = get(&client, "users").await;
        }
        reached.push(slow.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(reached, [3, 8], "(50ms, 10s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_counts_against_the_breaker_which_has_no_timeout_of_its_own() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(1500)))
        .await
        .expect("backend");
    let services: &[(&str, &[SocketAddr])] = &[("users", &[slow.addr()])];
    let breaker = "[breaker]\nscope = \"service\"\nconsecutive_failures = 2\n";
    let client = start_client(&static_config(
        "timeout = \"200ms\"",
        services,
        &format!("{NO_RETRY}{breaker}"),
    ))
    .await;
    let mut events = client.subscribe();
    for call in 0..2 {
        let err = get(&client, "users").await.expect_err("too slow");
        assert!(timed_out(&err), "call {call}: {err}");
        // The endpoint that was slow is named, in the error and the event.
        let named = MeshError::endpoint_of(&*err).map(|e| e.to_string());
        assert_eq!(named, Some(slow.addr().to_string()), "{err}");
    }
    let completed: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|event| match event {
            mesh::core::MeshEvent::RequestCompleted { endpoint, .. } => Some(endpoint),
            _ => None,
        })
        .collect();
    let slow_id = mesh::core::EndpointId::new(&slow.addr().to_string()).expect("id");
    assert_eq!(completed, [Some(slow_id.clone()), Some(slow_id)]);
    // Two timeouts, counted by the breaker: the third call is refused
    // without being sent.
    let err = get(&client, "users").await.expect_err("open");
    assert!(
        matches!(mesh_error(&err), Some(MeshError::CircuitOpen { .. })),
        "{err}"
    );
    assert_eq!(slow.stats().requests, 2);
    client.shutdown(Duration::from_secs(1)).await;

    // A breaker's own call timeout would be a second per-attempt limit.
    for (tables, key) in [
        (
            "[breaker]\ncall_timeout = \"200ms\"\n",
            "breaker.call_timeout",
        ),
        (
            "[services.users.breaker]\ncall_timeout = \"200ms\"\n",
            "services.users.breaker.call_timeout",
        ),
    ] {
        let err =
            MeshConfig::from_toml_str(&static_config("", services, tables)).expect_err("refused");
        assert_eq!(err.key(), key);
        assert!(err.reason().contains("timeout`"), "{err}");
    }
}

// === [retry] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_and_retryable_statuses_set_the_requests_a_failing_call_makes() {
    let cases = [
        ("max_retries = 0", 1),
        ("max_retries = 3", 4),
        // 503 is not among these: no retry.
        ("max_retries = 3\nretryable_statuses = [500]", 1),
        ("max_retries = 3\nretryable_statuses = [503]", 4),
    ];
    for (retry, expected) in cases {
        let failing = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[failing.addr()])],
            &format!("{NO_BREAKER}[retry]\n{retry}\ninitial = \"1ms\"\nbudget_percent = 100\n"),
        ))
        .await;
        let status = get(&client, "users").await.expect("the answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failing.stats().requests, expected, "{retry}");
        client.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_non_idempotent_lets_a_post_be_retried() {
    let mut sent = Vec::new();
    for flag in ["true", "false"] {
        let failing = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let client = start_client(&static_config(
            "",
            &[("users", &[failing.addr()])],
            &format!(
                "{NO_BREAKER}[retry]\nmax_retries = 2\ninitial = \"1ms\"\nbudget_percent = 100\n\
                 retry_non_idempotent = {flag}\n"
            ),
        ))
        .await;
        let response = client
            .post("users", "/orders", "order", CallOptions::default())
            .await
            .expect("the answer");
        assert_eq!(drain(response).await, StatusCode::SERVICE_UNAVAILABLE);
        sent.push(failing.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(sent, [3, 1], "(true, false)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_initial_and_max_delay_set_the_wait_between_attempts() {
    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let mut took = Vec::new();
    for extra in ["", "max_delay = \"5ms\"\n"] {
        let client = start_client(&static_config(
            "",
            &[("users", &[failing.addr()])],
            &format!(
                "{NO_BREAKER}[retry]\nmax_retries = 2\nbackoff = \"constant\"\ninitial = \"400ms\"\n\
                 jitter = \"none\"\nbudget_percent = 100\n{extra}"
            ),
        ))
        .await;
        let started = Instant::now();
        get(&client, "users").await.expect("the answer");
        took.push(started.elapsed());
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Two waits of 400 ms; capped at 5 ms, the same three attempts are
    // done well before one wait would end.
    assert!(took[0] >= Duration::from_millis(800), "{:?}", took[0]);
    assert!(took[1] < Duration::from_millis(400), "{:?}", took[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_deadline_bounds_the_whole_call() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(2000)))
        .await
        .expect("backend");
    let mut outcomes = Vec::new();
    for deadline in ["deadline = \"300ms\"\n", ""] {
        let client = start_client(&static_config(
            "",
            &[("users", &[slow.addr()])],
            &format!("{NO_BREAKER}[retry]\nmax_retries = 0\n{deadline}"),
        ))
        .await;
        let started = Instant::now();
        let outcome = get(&client, "users").await;
        if let Err(err) = &outcome {
            // The caller's time ran out: a timeout that blames no endpoint.
            assert!(timed_out(err), "{err}");
            assert_eq!(MeshError::endpoint_of(&**err), None, "{err}");
        }
        outcomes.push((
            outcome.is_ok(),
            started.elapsed() < Duration::from_millis(1500),
        ));
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(outcomes, [(false, true), (true, false)], "(ok, fast)");
}

// === [limits] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_requests_per_period_refuse_the_excess_until_the_period_passes() {
    let up = Backend::start(Behavior::Ok).await.expect("backend");
    let services: &[(&str, &[SocketAddr])] = &[("users", &[up.addr()]), ("orders", &[up.addr()])];
    let client = start_client(&static_config(
        "",
        services,
        "[limits]\nrequests = 3\nper = \"3s\"\n",
    ))
    .await;
    for _ in 0..3 {
        get(&client, "users").await.expect("within the rate");
    }
    let err = get(&client, "users").await.expect_err("over the rate");
    assert!(
        matches!(mesh_error(&err), Some(MeshError::LimitExceeded { .. })),
        "{err}"
    );
    // Each service has its own allowance.
    get(&client, "orders")
        .await
        .expect("another service's allowance");
    // The period refills it: one call's allowance a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(&client, "users").await.expect("after the period");
    assert_eq!(up.stats().requests, 5);
    client.shutdown(Duration::from_secs(1)).await;

    // Without limits: nothing refused.
    let client = start_client(&static_config("", services, "")).await;
    for _ in 0..10 {
        get(&client, "users").await.expect("no limit");
    }
    client.shutdown(Duration::from_secs(1)).await;
}

/// How `calls` concurrent GETs to `users` ended: "ok", "limit" or "other".
async fn concurrent_outcomes(
    client: &MeshClient,
    calls: usize,
    options: CallOptions,
) -> Vec<&'static str> {
    let runs: Vec<_> = (0..calls)
        .map(|_| {
            let (client, options) = (client.clone(), options.clone());
            tokio::spawn(async move { get_with(&client, "users", options).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(match run.await.expect("the call's task") {
            Ok(_) => "ok",
            Err(e) if matches!(mesh_error(&e), Some(MeshError::LimitExceeded { .. })) => "limit",
            Err(_) => "other",
        });
    }
    outcomes.sort_unstable();
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_queues_a_call_over_the_concurrency_limit_and_queue_bounds_the_waiters() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(150)))
        .await
        .expect("backend");
    let services: &[(&str, &[SocketAddr])] = &[("users", &[slow.addr()])];
    let mut seen = Vec::new();
    for limits in [
        "concurrency = 1",
        "concurrency = 1\nmax_wait = \"2s\"\nqueue = 5",
        // The queue holds as many as the concurrency limit by default.
        "concurrency = 1\nmax_wait = \"2s\"",
    ] {
        let client = start_client(&static_config(
            "",
            services,
            &format!("{NO_RETRY}{NO_BREAKER}[limits]\n{limits}\n"),
        ))
        .await;
        seen.push(concurrent_outcomes(&client, 3, CallOptions::default()).await);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(
        seen,
        [
            vec!["limit", "limit", "ok"],
            // Each waits its turn.
            vec!["ok", "ok", "ok"],
            // One runs, one waits, the third finds the queue full.
            vec!["limit", "ok", "ok"],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_waits_no_longer_than_its_deadline() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(1500)))
        .await
        .expect("backend");
    let client = start_client(&static_config(
        "",
        &[("users", &[slow.addr()])],
        &format!("{NO_RETRY}{NO_BREAKER}[limits]\nconcurrency = 1\nmax_wait = \"10s\"\n"),
    ))
    .await;
    // The first call holds the one slot for 1.5 s.
    let first = tokio::spawn({
        let client = client.clone();
        async move { get(&client, "users").await }
    });
    mesh_testkit::wait::until("the first call reaches the server", || {
        slow.stats().requests == 1
    })
    .await;
    // The second waits for it until its own deadline, not the 10 s max_wait.
    let started = Instant::now();
    let options = CallOptions::default().timeout(Duration::from_millis(300));
    let err = get_with(&client, "users", options)
        .await
        .expect_err("no slot before the deadline");
    assert!(started.elapsed() < Duration::from_millis(1200), "{err}");
    // Its deadline, not the limit, ended the wait: the call timed out.
    assert!(
        matches!(
            mesh_error(&err),
            Some(MeshError::Timeout { after }) if *after == Duration::from_millis(300)
        ),
        "{err}"
    );
    assert!(first.await.expect("task").is_ok());
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_lets_a_call_over_the_rate_wait_for_its_permit() {
    let up = Backend::start(Behavior::Ok).await.expect("backend");
    let services: &[(&str, &[SocketAddr])] = &[("users", &[up.addr()])];
    let mut seen = Vec::new();
    for limits in ["", "max_wait = \"1s\"\n"] {
        let client = start_client(&static_config(
            "",
            services,
            &format!("[limits]\nrequests = 1\nper = \"300ms\"\n{limits}"),
        ))
        .await;
        // Timed from before the first call: its permit, taken after this,
        // is followed by the next one 300 ms later.
        let started = Instant::now();
        get(&client, "users").await.expect("the first permit");
        let second = get(&client, "users").await;
        seen.push((
            second.is_ok(),
            started.elapsed() >= Duration::from_millis(250),
        ));
        client.shutdown(Duration::from_secs(1)).await;
    }
    // Refused at once; then admitted when the next permit came.
    assert_eq!(seen, [(false, false), (true, true)], "(ok, waited)");
}

// === [services.X]: breaker, retry, limits apply to X only ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_s_own_retry_breaker_and_limits_apply_to_it_alone() {
    let (mine, other) = (
        Backend::start(Behavior::Status(503))
            .await
            .expect("backend"),
        Backend::start(Behavior::Status(503))
            .await
            .expect("backend"),
    );
    let client = start_client(&static_config(
        "",
        &[("payments", &[mine.addr()]), ("users", &[other.addr()])],
        &format!(
            "{NO_BREAKER}[retry]\nmax_retries = 2\ninitial = \"1ms\"\nbudget_percent = 100\n\
             [services.payments]\nretry = {{ max_retries = 0 }}\n\
             breaker = {{ scope = \"service\", consecutive_failures = 2, open_duration = \"30s\" }}\n\
             limits = {{ requests = 4, per = \"1h\" }}\n"
        ),
    ))
    .await;
    let mut refused = Vec::new();
    for _ in 0..5 {
        let outcome = get(&client, "payments").await;
        refused.push(outcome.err().map(|e| match mesh_error(&e) {
            Some(MeshError::CircuitOpen { .. }) => "open",
            Some(MeshError::LimitExceeded { .. }) => "limit",
            _ => "other",
        }));
        let status = get(&client, "users").await.expect("users' answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // payments: no retries, open after 2 failures, 4 calls admitted.
    assert_eq!(
        refused,
        [None, None, Some("open"), Some("open"), Some("limit")]
    );
    assert_eq!(mine.stats().requests, 2);
    // users: the file's retries, no breaker, no limit.
    assert_eq!(other.stats().requests, 15);
    client.shutdown(Duration::from_secs(1)).await;
}

// === [health] ===

/// The probe at `path` through `client`'s health layer, over an app that
/// answers "app" to anything else.
async fn probe(client: &MeshClient, path: &str) -> (StatusCode, String) {
    let layer = client.health_layer().expect("health layer");
    let app = tower::Layer::layer(
        &layer,
        tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("app"))))
        }),
    );
    let response = app
        .oneshot(
            Request::get(path)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("served");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_interval_failure_threshold_and_paths_shape_the_probes() {
    let mut live = Vec::new();
    for threshold in [2, 1000] {
        let dir = scratch_dir();
        let config = load_in(
            &dir,
            &format!(
                "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {{}}\n\
                 [health]\nliveness_interval = \"50ms\"\nfailure_threshold = {threshold}\n\
                 paths = {{ live = \"/custom/live\" }}\n"
            ),
        );
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let client = MeshClient::builder(config)
            // Passes twice (a check that never passed is unhealthy
            // whatever the threshold), then fails on every run.
            .check_with("database", [Probe::Liveness], move || {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        0 | 1 => Ok(()),
                        _ => Err(mesh::health::CheckError::new("connection refused")),
                    }
                }
            })
            .expect("check")
            .build()
            .await
            .expect("client");
        // Every 50 ms: six failing runs within a second or so.
        until("the check ran 8 times", || runs.load(Ordering::SeqCst) >= 8).await;
        live.push(client.liveness().expect("report").status);
        // Served on the configured path; the default one is the app's.
        let (status, _) = probe(&client, "/custom/live").await;
        let expected = match threshold {
            2 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        assert_eq!(status, expected, "threshold {threshold}");
        assert_eq!(
            probe(&client, "/health/live").await,
            (StatusCode::OK, "app".to_owned())
        );
        client.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(live, [ProbeStatus::Unhealthy, ProbeStatus::Healthy]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_put_check_names_in_the_probe_answer() {
    let mut named = Vec::new();
    for details in ["details = true", ""] {
        let dir = scratch_dir();
        let config = load_in(
            &dir,
            &format!(
                "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {{}}\n\
                 [health]\nliveness_interval = \"50ms\"\n{details}\n"
            ),
        );
        let client = MeshClient::builder(config)
            .check_with("database", [Probe::Liveness], || async { Ok(()) })
            .expect("check")
            .build()
            .await
            .expect("client");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, body) = probe(&client, "/health/live").await;
        named.push(body.contains("database"));
        client.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(named, [true, false]);
}

// === [upstream_health] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http_checks_eject_a_failing_instance_after_unhealthy_threshold() {
    let cases = [
        // HTTP probes, one failure ejects.
        (
            "probe = { http = { path = \"/health/ready\" } }\nunhealthy_threshold = 1",
            true,
        ),
        // Too many failures needed: never ejected within the test.
        (
            "probe = { http = { path = \"/health/ready\" } }\nunhealthy_threshold = 1000",
            false,
        ),
        // A TCP probe: the failing instance still accepts connections.
        ("probe = \"tcp\"\nunhealthy_threshold = 1", false),
    ];
    for (upstream, ejected) in cases {
        let bad = Backend::start(Behavior::Status(503))
            .await
            .expect("backend");
        let good = [
            Backend::start(Behavior::Ok).await.expect("backend"),
            Backend::start(Behavior::Ok).await.expect("backend"),
        ];
        let client = start_client(&static_config(
            "",
            &[("users", &[bad.addr(), good[0].addr(), good[1].addr()])],
            &format!(
                "{NO_RETRY}{NO_BREAKER}{ROUND_ROBIN}[upstream_health]\n{upstream}\ninterval = \"50ms\"\n\
                 jitter = \"10ms\"\ntimeout = \"1s\"\n"
            ),
        ))
        .await;
        // The first call starts the service's checker; let it probe a
        // few rounds.
        let _ = get(&client, "users").await;
        let probed = || bad.stats().requests >= 6;
        if upstream.contains("http") {
            until("the failing instance was probed", probed).await;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut failed = 0;
        for _ in 0..30 {
            if !get(&client, "users").await.is_ok_and(|s| s.is_success()) {
                failed += 1;
            }
        }
        match ejected {
            true => assert_eq!(failed, 0, "{upstream}"),
            false => assert!(failed >= 8, "{upstream}: only {failed} of 30 failed"),
        }
        client.shutdown(Duration::from_secs(1)).await;
    }
}

// === [services.X.fallback] ===

/// The body and whether a fallback gave it.
async fn answer(response: http::Response<MeshBody>) -> (StatusCode, String, Option<bool>) {
    let status = response.status();
    let used = response
        .extensions()
        .get::<mesh::FallbackUsed>()
        .map(|f| f.last_good);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_fallback_answers_a_failed_call_and_without_one_the_error_comes_back() {
    // Nothing listens there: every call fails to connect.
    let dead: SocketAddr = format!("127.0.0.1:{}", mesh_testkit::net::free_port())
        .parse()
        .expect("address");
    let fallback = "[services.users.fallback]\nbody = '{\"users\":[]}'\n\
                    content_type = \"application/json\"\n";
    let mut seen = Vec::new();
    for tables in [fallback, ""] {
        let client = start_client(&static_config(
            "",
            &[("users", &[dead])],
            &format!("{NO_RETRY}{tables}"),
        ))
        .await;
        let outcome = client
            .get("users", "/api/users", CallOptions::default())
            .await;
        seen.push(match outcome {
            Ok(response) => {
                let kind = response.headers().get("content-type").cloned();
                assert_eq!(
                    kind.as_ref().map(|k| k.as_bytes()),
                    Some(&b"application/json"[..])
                );
                Some(answer(response).await)
            }
            Err(_) => None,
        });
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(
        seen,
        [
            Some((StatusCode::OK, "{\"users\":[]}".to_owned(), Some(false))),
            None
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_fallback_answers_with_its_status() {
    let dead: SocketAddr = format!("127.0.0.1:{}", mesh_testkit::net::free_port())
        .parse()
        .expect("address");
    let mut statuses = Vec::new();
    for status in ["", "status = 503\n"] {
        let tables = format!("[services.users.fallback]\nbody = \"maintenance\"\n{status}");
        let client = start_client(&static_config(
            "",
            &[("users", &[dead])],
            &format!("{NO_RETRY}{tables}"),
        ))
        .await;
        let response = client
            .get("users", "/api/users", CallOptions::default())
            .await
            .expect("the fallback answers");
        let (status, body, _) = answer(response).await;
        assert_eq!(body, "maintenance");
        statuses.push(status);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_good_answers_a_get_while_fresh_and_never_a_post() {
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    let client = start_client(&static_config(
        "",
        &[("users", &[backend.addr()])],
        &format!(
            "{NO_RETRY}{NO_BREAKER}[services.users.fallback]\nlast_good = \"600ms\"\non_status = [503]\n"
        ),
    ))
    .await;
    let get = || client.get("users", "/api/users?page=2", CallOptions::default());
    let good = answer(get().await.expect("good")).await;
    assert_eq!(good.0, StatusCode::OK);
    assert_eq!(good.2, None, "the service's own answer");

    backend.set_behavior(Behavior::Status(503));
    // The same GET: the last good answer, marked.
    assert_eq!(
        answer(get().await.expect("kept")).await,
        (StatusCode::OK, good.1.clone(), Some(true))
    );
    // Another path was never good; a POST is never answered from it.
    let other = client
        .get("users", "/api/users?page=3", CallOptions::default())
        .await;
    assert_eq!(
        answer(other.expect("503")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let post = client
        .post("users", "/api/users?page=2", "x", CallOptions::default())
        .await;
    assert_eq!(
        answer(post.expect("503")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Past its age, the answer is the service's own again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stale = answer(get().await.expect("503")).await;
    assert_eq!((stale.0, stale.2), (StatusCode::SERVICE_UNAVAILABLE, None));
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_in_code_answers_a_call_refused_by_the_service_s_limit() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(300)))
        .await
        .expect("backend");
    let dir = scratch_dir();
    let config = load_in(
        &dir,
        &static_config(
            "",
            &[("users", &[slow.addr()])],
            "[services.users]\nlimits = { concurrency = 1 }\n",
        ),
    );
    let client = MeshClient::builder(config)
        .fallback("users", |cause| {
            let refused = cause.error.and_then(|e| MeshError::find(&**e));
            matches!(refused, Some(MeshError::LimitExceeded { .. }))
                .then(|| http::Response::new(MeshBody::from(format!("busy: {}", cause.uri.path()))))
        })
        .build()
        .await
        .expect("client");
    let (first, second) = tokio::join!(client.get("users", "/a", CallOptions::default()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.get("users", "/b", CallOptions::default()).await
    });
    assert_eq!(answer(first.expect("admitted")).await.2, None);
    assert_eq!(
        answer(second.expect("answered by code")).await,
        (StatusCode::OK, "busy: /b".to_owned(), Some(false))
    );
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_breaker_s_fallback_layer_sits_over_the_client() {
    use mesh::breaker::{FallbackLayer, Fault};
    let dead: SocketAddr = format!("127.0.0.1:{}", mesh_testkit::net::free_port())
        .parse()
        .expect("address");
    let client = start_client(&static_config("", &[("users", &[dead])], NO_RETRY)).await;
    let guarded = tower::ServiceBuilder::new()
        .layer(FallbackLayer::new(|_fault: Fault| {
            Ok(http::Response::new(MeshBody::from("from the layer")))
        }))
        .service(client.clone());
    let request = Request::get("http://users/api")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = guarded.oneshot(request).await.expect("the layer's answer");
    assert_eq!(answer(response).await.1, "from the layer");
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_cannot_answer_is_refused_at_start() {
    let base = "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {}\n";
    let config = |tables: &str| MeshConfig::from_toml_str(&format!("{base}{tables}"));
    // on_status alone: only code can answer; without it, refused at start.
    let only_status = config("[services.users.fallback]\non_status = [503]\n").expect("parses");
    let err = MeshClient::from_config(only_status.clone())
        .await
        .expect_err("nothing answers");
    assert!(err.to_string().contains("services.users.fallback"), "{err}");
    MeshClient::builder(only_status)
        .fallback("users", |_| None)
        .build()
        .await
        .expect("code answers")
        .shutdown(Duration::from_secs(1))
        .await;
    // A name that is no service's, given in code.
    let plain = config("").expect("parses");
    let err = MeshClient::builder(plain)
        .fallback("Not A Name", |_| None)
        .build()
        .await
        .expect_err("bad name");
    assert!(
        err.to_string().contains("services.Not A Name.fallback"),
        "{err}"
    );
    // gRPC reads its status from trailers: no HTTP body may stand in.
    let grpc = config("[services.users]\nprotocol = \"h2c\"\nfallback = { body = \"x\" }\n")
        .expect_err("h2c with a body");
    assert_eq!(grpc.key(), "services.users.fallback");
}

#[test]
fn fallback_keys_are_validated_by_name() {
    let base = |fallback: &str| {
        format!(
            "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {{}}\n\
             [services.users.fallback]\n{fallback}\n"
        )
    };
    for (fallback, key) in [
        ("", "services.users.fallback.status"),
        (
            "on_status = [503]\nstatus = 99",
            "services.users.fallback.status",
        ),
        ("status = 99", "services.users.fallback.status"),
        ("last_good = \"0s\"", "services.users.fallback.last_good"),
        (
            "body = \"x\"\non_status = [200, 700]",
            "services.users.fallback.on_status[1]",
        ),
        (
            "body = \"x\"\ncontent_type = \"a\\nb\"",
            "services.users.fallback.content_type",
        ),
    ] {
        let err = MeshConfig::from_toml_str(&base(fallback)).expect_err(fallback);
        assert_eq!(err.key(), key, "{err}");
    }
}

// === [services.X] split, with the tags Consul lists ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_sends_calls_to_the_subset_its_tags_select() {
    let double = consul::ConsulDouble::start().await;
    let v1 = Backend::start(Behavior::Ok).await.expect("backend");
    let v2 = Backend::start(Behavior::Ok).await.expect("backend");
    double.set(
        "users",
        vec![
            tagged_entry(v1.addr(), &["v1"]),
            tagged_entry(v2.addr(), &["v2"]),
        ],
    );
    let base = format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"consul\"\nurl = \"{}\"\n{NO_RETRY}{ROUND_ROBIN}",
        double.url()
    );
    let mut to_v2 = Vec::new();
    for split in [
        "[[services.users.split]]\nname = \"stable\"\ntag = \"v1\"\nweight = 1\n",
        "[[services.users.split]]\nname = \"stable\"\ntag = \"v1\"\nweight = 0\n\
         [[services.users.split]]\nname = \"canary\"\ntag = \"v2\"\nweight = 1\n",
        "",
    ] {
        v2.reset_stats();
        let client = start_client(&format!("{base}{split}")).await;
        for _ in 0..20 {
            get(&client, "users").await.expect("call");
        }
        to_v2.push(v2.stats().requests);
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(to_v2[..2], [0, 20], "calls to v2 (v1 only, v2 only)");
    assert!(
        (7..=13).contains(&to_v2[2]),
        "without a split v2 got {} of 20",
        to_v2[2]
    );
}

// === [tls] ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_enabled_false_calls_in_plaintext_and_true_refuses_a_plain_server() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("matrix-enabled");
    let issued = ca.issue(Leaf::service("api-gateway"));
    let [cert, key, ca_path] = dir.write("gateway", &issued, &ca.pem);
    let plain = Backend::start(Behavior::Ok).await.expect("backend");
    let mut served = Vec::new();
    for enabled in ["false", "true"] {
        let tls = format!(
            "[tls]\nenabled = {enabled}\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n\
             peer_identity = \"spiffe://cluster.local/ns/default/sa/{{service}}\"\n",
            cert.display().to_string(),
            key.display().to_string(),
            ca_path.display().to_string()
        );
        let client = client_in(
            &dir.0,
            &static_config(
                "",
                &[("users", &[plain.addr()])],
                &format!("{NO_RETRY}{tls}"),
            ),
        )
        .await;
        let options = CallOptions::default().timeout(Duration::from_secs(3));
        served.push(get_with(&client, "users", options).await.is_ok());
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(served, [true, false], "(enabled = false, enabled = true)");
    assert_eq!(plain.stats().requests, 1);
}

/// A `[tls]` section naming `service`'s certificate files, written in `dir`.
fn tls_files(dir: &TempDir, ca: &Ca, service: &str, extra: &str) -> String {
    let issued = ca.issue(Leaf::service(service));
    let [cert, key, ca_path] = dir.write(service, &issued, &ca.pem);
    format!(
        "[tls]\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n{extra}\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca_path.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_callers_decides_who_the_server_side_admits() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("matrix-callers");
    let mut outcomes = Vec::new();
    for allowed in ["api-gateway", "billing"] {
        // The server side of `users`: its own MeshClient, from its own
        // configuration file.
        let server_dir = scratch_dir();
        let users = client_in(
            &server_dir,
            &format!(
                "[service]\nname = \"users\"\n[discovery]\nkind = \"static\"\nservices = {{}}\n{}",
                tls_files(
                    &dir,
                    &ca,
                    "users",
                    &format!(
                        "peer_identity = \"spiffe://cluster.local/ns/default/sa/{{service}}\"\n\
                         allowed_callers = [\"spiffe://cluster.local/ns/default/sa/{allowed}\"]"
                    )
                )
            ),
        )
        .await;
        let server = users
            .server_tls()
            .expect("server side")
            .expect("[tls] is on");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        let task = tokio::spawn(async move {
            let app = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                }
            });
            server.serve(listener, app).await
        });

        // The gateway calls it over mutual TLS.
        let client = start_client(&static_config(
            "",
            &[("users", &[addr])],
            &format!(
                "{NO_RETRY}{}",
                tls_files(
                    &dir,
                    &ca,
                    "api-gateway",
                    "peer_identity = \"spiffe://cluster.local/ns/default/sa/{service}\""
                )
            ),
        ))
        .await;
        let options = CallOptions::default().timeout(Duration::from_secs(3));
        let ok = get_with(&client, "users", options).await.is_ok();
        outcomes.push((ok, served.load(Ordering::SeqCst)));
        client.shutdown(Duration::from_secs(1)).await;
        task.abort();
        users.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&server_dir);
    }
    assert_eq!(
        outcomes,
        [(true, 1), (false, 0)],
        "(gateway allowed, only billing allowed)"
    );
}
