//! Active health checks of upstream endpoints against real hyper servers
//! on 127.0.0.1: a stopped server is marked unhealthy, a restarted one
//! healthy again; removed endpoints stop being probed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::{Endpoint, EndpointSet, EventBus, Health, MeshEvent, ServiceName};
use mesh_health::{UpstreamCheckConfig, UpstreamHealthChecker, UpstreamProbe};
use mesh_testkit::{Backend, Behavior};

fn config(probe: UpstreamProbe) -> UpstreamCheckConfig {
    UpstreamCheckConfig {
        probe,
        interval: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        // Generous: a live endpoint on a loaded CI machine must not be
        // condemned by a slow answer; dead ones are refused at once.
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        unhealthy_until_checked: false,
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_turns_unhealthy_and_a_restarted_one_healthy() {
    for probe in [
        UpstreamProbe::Tcp,
        UpstreamProbe::Http {
            path: "/health/ready".to_owned(),
        },
    ] {
        let a = Backend::start(Behavior::Ok).await.expect("backend");
        let b = Backend::start(Behavior::Ok).await.expect("backend");
        let b_addr = b.addr();
        let set = EndpointSet::new(
            ServiceName::new("users").expect("name"),
            vec![
                Endpoint::builder(a.addr()).build(),
                Endpoint::builder(b_addr).build(),
            ],
        );
        let bus = EventBus::new(64);
        let mut events = bus.subscribe();
        let source = set.clone();
        let _checker = UpstreamHealthChecker::spawn(
            ServiceName::new("users").expect("name"),
            config(probe.clone()),
            move || Some(source.clone()),
            Some(bus),
        )
        .expect("checker");
        let health = |i: usize| set.endpoints()[i].state().health();
        until("both checked healthy", || {
            health(0) == Health::Healthy && health(1) == Health::Healthy
        })
        .await;

        drop(b);
        until("b unhealthy", || health(1) == Health::Unhealthy).await;
        assert_eq!(health(0), Health::Healthy, "{probe:?}");

        let b = Backend::start_on(b_addr, Behavior::Ok)
            .await
            .expect("restart");
        until("b healthy again", || health(1) == Health::Healthy).await;
        if matches!(probe, UpstreamProbe::Http { .. }) {
            assert!(b.stats().requests >= 2, "the probes reached the path");
        }

        let mut changes = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let MeshEvent::EndpointHealthChanged {
                endpoint, from, to, ..
            } = event
            {
                if endpoint == *set.endpoints()[1].id() {
                    changes.push((from, to));
                }
            }
        }
        assert_eq!(
            changes,
            [
                (Health::Unknown, Health::Healthy),
                (Health::Healthy, Health::Unhealthy),
                (Health::Unhealthy, Health::Healthy),
            ],
            "{probe:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_probe_judges_by_status() {
    let sick = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let set = EndpointSet::new(
        ServiceName::new("users").expect("name"),
        vec![Endpoint::builder(sick.addr()).build()],
    );
    let source = set.clone();
    let _checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        config(UpstreamProbe::Http {
            path: "/health".to_owned(),
        }),
        move || Some(source.clone()),
        None,
    )
    .expect("checker");
    until("503 is unhealthy", || {
        set.endpoints()[0].state().health() == Health::Unhealthy
    })
    .await;
    sick.set_behavior(Behavior::Ok);
    until("200 is healthy", || {
        set.endpoints()[0].state().health() == Health::Healthy
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_endpoints_wait_for_a_probe_if_asked_and_removed_ones_are_dropped() {
    let a = Backend::start(Behavior::Ok).await.expect("backend");
    // A port nothing listens on (tcpmux): connections are refused.
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let name = ServiceName::new("users").expect("name");
    let current = Arc::new(Mutex::new(EndpointSet::new(
        name.clone(),
        vec![Endpoint::builder(a.addr()).build()],
    )));
    let source = Arc::clone(&current);
    let mut config = config(UpstreamProbe::Tcp);
    config.unhealthy_until_checked = true;
    let checker = UpstreamHealthChecker::spawn(
        name.clone(),
        config,
        move || source.lock().ok().map(|s| s.clone()),
        None,
    )
    .expect("checker");
    until("one tracked", || checker.tracked() == 1).await;

    // Discovery adds a dead endpoint: out of rotation from the start, never
    // let in.
    let grown = EndpointSet::new(
        name.clone(),
        vec![
            current.lock().expect("set").endpoints()[0].clone(),
            Endpoint::builder(dead).build(),
        ],
    );
    let dead_state = Arc::clone(grown.endpoints()[1].state());
    *current.lock().expect("set") = grown;
    until("two tracked", || checker.tracked() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dead_state.health(), Health::Unhealthy);

    // Discovery removes it: no longer probed.
    let shrunk = EndpointSet::new(
        name,
        vec![current.lock().expect("set").endpoints()[0].clone()],
    );
    *current.lock().expect("set") = shrunk;
    until("one tracked again", || checker.tracked() == 1).await;
}

#[test]
fn bad_configurations_are_named() {
    let config = UpstreamCheckConfig {
        timeout: Duration::from_secs(600),
        ..UpstreamCheckConfig::default()
    };
    let err = config.validate().expect_err("a ten-minute timeout");
    assert!(err.to_string().contains("health.upstream.timeout"), "{err}");
    let err = serde_json::from_str::<UpstreamCheckConfig>(r#"{"intervall": "5s"}"#)
        .expect_err("unknown key");
    assert!(err.to_string().contains("intervall"), "{err}");
    let config: UpstreamCheckConfig =
        serde_json::from_str(r#"{"probe": {"http": {"path": "health"}}}"#).expect("parses");
    let err = config.validate().expect_err("relative path");
    assert!(err.to_string().contains("probe.http.path"), "{err}");
    // A path the URI parser refuses keeps the parser's error as its cause.
    let config: UpstreamCheckConfig =
        serde_json::from_str(r#"{"probe": {"http": {"path": "/health ready"}}}"#).expect("parses");
    let err = config.validate().expect_err("a space in the path");
    assert_eq!(err.key(), "health.upstream.probe.http.path");
    assert_eq!(err.reason(), r#""/health ready" is not a path"#);
    let cause = std::error::Error::source(&err).expect("the parse error is kept");
    assert!(err.to_string().ends_with(&cause.to_string()), "{err}");
    // Its query, which may carry a token, is not quoted.
    let config: UpstreamCheckConfig =
        serde_json::from_str(r#"{"probe": {"http": {"path": "/health ready?token=s3cret"}}}"#)
            .expect("parses");
    let err = config.validate().expect_err("a space in the path");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_new_endpoint_is_held_back_only_when_asked() {
    // A slow answer keeps the first probe in flight long enough to see the
    // endpoint's standing before it.
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(300)))
        .await
        .expect("backend");
    for (hold_back, before) in [(true, Health::Unhealthy), (false, Health::Unknown)] {
        let set = EndpointSet::new(
            ServiceName::new("users").expect("name"),
            vec![Endpoint::builder(slow.addr()).build()],
        );
        let mut config = config(UpstreamProbe::Http {
            path: "/health".to_owned(),
        });
        config.unhealthy_until_checked = hold_back;
        let source = set.clone();
        let checker = UpstreamHealthChecker::spawn(
            ServiceName::new("users").expect("name"),
            config,
            move || Some(source.clone()),
            None,
        )
        .expect("checker");
        until("tracked", || checker.tracked() == 1).await;
        assert_eq!(
            set.endpoints()[0].state().health(),
            before,
            "hold back: {hold_back}"
        );
        until("healthy after its probe", || {
            set.endpoints()[0].state().health() == Health::Healthy
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_is_left_alone_and_dropping_the_checker_hands_verdicts_back() {
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let live = Backend::start(Behavior::Ok).await.expect("backend");
    let set = EndpointSet::new(
        ServiceName::new("users").expect("name"),
        vec![
            Endpoint::builder(dead).build(),
            Endpoint::builder(live.addr()).build(),
        ],
    );
    // Someone else drains the live one before the checker sees it.
    set.endpoints()[1].state().set_health(Health::Draining);
    let source = set.clone();
    let checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        config(UpstreamProbe::Tcp),
        move || Some(source.clone()),
        None,
    )
    .expect("checker");
    until("the dead one condemned", || {
        set.endpoints()[0].state().health() == Health::Unhealthy
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(set.endpoints()[1].state().health(), Health::Draining);

    // Turning health checking off must not leave the dead one out for
    // good: its verdict goes back to unknown; draining stays.
    drop(checker);
    assert_eq!(set.endpoints()[0].state().health(), Health::Unknown);
    assert_eq!(set.endpoints()[1].state().health(), Health::Draining);
}
