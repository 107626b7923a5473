//! Per-method policies from the configuration file, through `MeshClient`
//! against servers on 127.0.0.1: a gRPC service config's `methodConfig`
//! (timeout, retryPolicy, hedgingPolicy) for tonic calls, and
//! `[[services.<name>.methods]]` for HTTP paths.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use mesh::{MeshClient, MeshConfig};
use mesh_testkit::{Backend, Behavior};
use tonic_prost::ProstCodec;

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// How a gRPC instance answers each call, after its delay.
#[derive(Clone, Copy)]
enum Answer {
    Greet,
    Fail(tonic::Code),
}

/// A greeter on a loopback port answering each call with `answer` after
/// `delay`, counting the calls it starts and those it finishes (a call
/// cancelled by its client never finishes).
async fn greeter(delay: Duration, answer: Answer) -> (SocketAddr, Arc<[AtomicUsize; 2]>) {
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counted = Arc::clone(&counts);
    let serve = tower::service_fn(move |req: http::Request<Incoming>| {
        let counted = Arc::clone(&counted);
        async move {
            counted[0].fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            counted[1].fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(answered(req, answer).await)
        }
    });
    let addr = mesh_testkit::h2c::serve(serve).await.expect("served");
    (addr, counts)
}

async fn answered(
    req: http::Request<Incoming>,
    answer: Answer,
) -> http::Response<tonic::body::Body> {
    match answer {
        Answer::Fail(code) => tonic::Status::new(code, "refused").into_http(),
        Answer::Greet => {
            let hello = tower::service_fn(|req: tonic::Request<grpc::HelloRequest>| async move {
                let message = format!("Hello {}", req.into_inner().name);
                Ok::<_, tonic::Status>(tonic::Response::new(grpc::HelloReply { message }))
            });
            let codec = ProstCodec::<grpc::HelloReply, grpc::HelloRequest>::default();
            tonic::server::Grpc::new(codec).unary(hello, req).await
        }
    }
}

/// A service config written to a file of its own.
fn service_config(json: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-method-policies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("{}.json", WRITTEN.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, json).expect("written");
    path
}

/// A client for `service` at `instances`, round robin, with `extra` keys
/// in its `[services.<service>]` section.
async fn client(service: &str, instances: &[SocketAddr], h2c: bool, extra: &str) -> MeshClient {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    let protocol = if h2c { "protocol = \"h2c\"" } else { "" };
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ {service} = [{}] }}
[services.{service}]
{protocol}
balance = {{ strategy = "round_robin" }}
{extra}
"#,
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

async fn say_hello(client: &MeshClient) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://greeter".parse().expect("uri"),
    );
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let reply = grpc
        .unary(
            tonic::Request::new(grpc::HelloRequest { name: "Ada".into() }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<grpc::HelloRequest, grpc::HelloReply>::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

/// `calls` SayHellos, counting those that failed.
async fn failures(client: &MeshClient, calls: usize) -> usize {
    let mut failed = 0;
    for _ in 0..calls {
        failed += usize::from(say_hello(client).await.is_err());
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_s_retry_policy_retries_the_codes_it_names() {
    let (exhausted, _) =
        greeter(Duration::ZERO, Answer::Fail(tonic::Code::ResourceExhausted)).await;
    let (good, _) = greeter(Duration::ZERO, Answer::Greet).await;
    // By default only UNAVAILABLE is retried: RESOURCE_EXHAUSTED reaches
    // the callers the bad instance answered.
    let plain = client("greeter", &[exhausted, good], true, "").await;
    assert!(
        failures(&plain, 10).await >= 1,
        "some calls met the exhausted instance"
    );
    let config = service_config(
        r#"{"methodConfig": [{
            "name": [{"service": "helloworld.Greeter", "method": "SayHello"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
        }]}"#,
    );
    let configured = client(
        "greeter",
        &[exhausted, good],
        true,
        &format!("grpc_service_config = {:?}", config.display().to_string()),
    )
    .await;
    assert_eq!(
        failures(&configured, 10).await,
        0,
        "retried on the good greeter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_s_timeout_bounds_its_calls_and_no_other() {
    let (slow, _) = greeter(Duration::from_millis(800), Answer::Greet).await;
    let other = r#"{"name": [{"service": "other.Service"}], "timeout": "0.1s"}"#;
    let config = service_config(&format!(
        r#"{{"methodConfig": [{other}, {{"name": [{{"service": "helloworld.Greeter"}}], "timeout": "0.2s"}}]}}"#
    ));
    let key = format!("grpc_service_config = {:?}", config.display().to_string());
    let bounded = client("greeter", &[slow], true, &key).await;
    let started = Instant::now();
    let status = say_hello(&bounded)
        .await
        .expect_err("past its method's timeout");
    assert!(started.elapsed() < Duration::from_millis(700), "{status:?}");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("timed out"), "{status:?}");
    // Without the file, the same call waits for its answer.
    let unbounded = client("greeter", &[slow], true, "").await;
    assert_eq!(say_hello(&unbounded).await.expect("answered"), "Hello Ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_s_hedging_policy_wins_against_a_slow_instance_and_cancels_the_loser() {
    let (slow, slow_counts) = greeter(Duration::from_secs(3), Answer::Greet).await;
    let (fast, _) = greeter(Duration::ZERO, Answer::Greet).await;
    let config = service_config(
        r#"{"methodConfig": [{"name": [{}],
            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#,
    );
    let key = format!("grpc_service_config = {:?}", config.display().to_string());
    let hedged = client("greeter", &[slow, fast], true, &key).await;
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(say_hello(&hedged).await.expect("answered"), "Hello Ada");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        slow_counts[0].load(Ordering::SeqCst) >= 1,
        "the slow greeter was tried"
    );
    let route = hedged
        .metrics()
        .routes
        .into_iter()
        .find(|r| r.route == "greeter");
    let retry = route.expect("route").retry;
    assert!(retry.hedges >= 1 && retry.hedges_won >= 1, "{retry:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        slow_counts[1].load(Ordering::SeqCst),
        0,
        "the losers were cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_path_s_timeout_and_retry_policy_apply_to_it_alone() {
    let slow = Backend::start(Behavior::Slow(Duration::from_millis(800)))
        .await
        .expect("backend");
    let methods = r#"
[[services.users.methods]]
path = "/search"
method = "GET"
timeout = "200ms"
"#;
    let bounded = client("users", &[slow.addr()], false, methods).await;
    let options = || mesh::CallOptions::default();
    let started = Instant::now();
    let err = bounded
        .get("users", "/search/users", options())
        .await
        .expect_err("past its path's timeout");
    assert!(started.elapsed() < Duration::from_millis(700), "{err}");
    let answered = bounded.get("users", "/searchable", options()).await;
    assert!(answered.is_ok(), "another path waits: {answered:?}");
    let posted = bounded.post("users", "/search", "q", options()).await;
    assert!(posted.is_ok(), "another method waits: {posted:?}");

    // One attempt on a path whose policy says so: a 503 reaches the caller.
    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let good = Backend::start(Behavior::Ok).await.expect("backend");
    let once = "[[services.users.methods]]\npath = \"/once\"\nretry = { max_attempts = 1 }\n";
    let limited = client("users", &[failing.addr(), good.addr()], false, once).await;
    let mut refused = 0;
    for _ in 0..6 {
        let once = limited
            .get("users", "/once", options())
            .await
            .expect("answered");
        refused += usize::from(once.status() == 503);
        let retried = limited
            .get("users", "/twice", options())
            .await
            .expect("answered");
        assert_eq!(retried.status(), 200, "retried on the good instance");
    }
    assert!(
        refused >= 1,
        "a /once call met the failing instance unretried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_config_stops_the_client_naming_the_key_and_the_place() {
    let config = service_config(r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 1}}]}"#);
    let text = format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\nservices = {{}}\n\
         [services.greeter]\ngrpc_service_config = {:?}\n",
        config.display().to_string()
    );
    let err = MeshConfig::from_toml_str(&text).expect_err("refused");
    assert_eq!(err.key(), "services.greeter.grpc_service_config");
    assert!(
        err.to_string().contains("methodConfig[0].retryPolicy"),
        "{err}"
    );
    let missing = text.replace(&config.display().to_string(), "/nonexistent/greeter.json");
    let err = MeshConfig::from_toml_str(&missing).expect_err("refused");
    assert_eq!(err.key(), "services.greeter.grpc_service_config");
    assert!(
        err.to_string().contains("/nonexistent/greeter.json"),
        "{err}"
    );
}
