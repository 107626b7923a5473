//! The tonic example's call passes through the mesh (asserted, not only
//! printed): a tonic client on the mesh's channel, two tonic servers on
//! 127.0.0.1, HTTP/2 by prior knowledge.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_calls_through_the_mesh_and_is_balanced() {
    let greeters = [
        grpc::serve().await.expect("greeter"),
        grpc::serve().await.expect("greeter"),
    ];
    let client = grpc::mesh_client(&greeters).await.expect("client");
    // The default balancer (p2c) sends a lone caller's next call to either
    // greeter until both are measured, so the second one answers within a
    // few calls; 64 leave a chance of 2^-63 that it never does.
    let mut answered_by = std::collections::HashSet::new();
    let mut calls = 0;
    while answered_by.len() < 2 && calls < 64 {
        let reply = grpc::say_hello(&client, &format!("caller-{calls}"))
            .await
            .expect("the call succeeds");
        assert!(
            reply.starts_with(&format!("Hello caller-{calls} from ")),
            "{reply}"
        );
        answered_by.insert(reply.rsplit(' ').next().map(str::to_owned));
        calls += 1;
    }
    assert_eq!(answered_by.len(), 2, "balanced over both greeters");
    let route = greeter_route(&client);
    assert_eq!(
        route.retry.requests, calls,
        "every call went through the stack"
    );
    let served: u64 = route.services[0].instances.iter().map(|i| i.requests).sum();
    assert_eq!(served, calls);
    // Each call's status came in the trailers after its message: counted
    // when the body ended, as OK, with its latency.
    let text = client.prometheus();
    let sum = |prefix: &str, needle: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let ok = r#"grpc_code="OK""#;
    let calls = calls as f64;
    assert_eq!(sum("mesh_requests_total{", ok), calls, "{text}");
    assert_eq!(
        sum("mesh_requests_total{", "service=\"greeter\""),
        calls,
        "{text}"
    );
    let count = "mesh_request_duration_seconds_count{";
    assert_eq!(sum(count, "service=\"greeter\""), calls, "{text}");
}

/// A mesh client from TOML calling the greeter at `addr` over h2c: `own`
/// written in its `[services.greeter]` table, `tables` after it.
async fn greeter_client(addr: std::net::SocketAddr, own: &str, tables: &str) -> mesh::MeshClient {
    let config = mesh::MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\n\
         services = {{ greeter = [\"{addr}\"] }}\n[services.greeter]\nprotocol = \"h2c\"\n\
         {own}{tables}"
    ))
    .expect("config");
    mesh::MeshClient::from_config(config).await.expect("client")
}

/// One SayHello through the mesh, as tonic sends it with
/// `Request::set_timeout(timeout)` (`grpc-timeout`).
async fn say_hello_within(
    client: &mesh::MeshClient,
    timeout: Duration,
) -> Result<tonic::Response<grpc::HelloReply>, tonic::Status> {
    let mut channel = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://greeter".parse().expect("uri"),
    );
    channel.ready().await.expect("ready");
    let mut request = tonic::Request::new(grpc::HelloRequest {
        name: "Ada".to_owned(),
    });
    request.set_timeout(timeout);
    channel
        .unary(
            request,
            http::uri::PathAndQuery::from_static(grpc::SAY_HELLO),
            tonic_prost::ProstCodec::<grpc::HelloRequest, grpc::HelloReply>::default(),
        )
        .await
}

/// The metrics of the greeter's own route.
fn greeter_route(client: &mesh::MeshClient) -> mesh::metrics::RouteMetrics {
    let metrics = client.metrics();
    metrics
        .routes
        .into_iter()
        .find(|r| r.route == "greeter")
        .expect("the greeter's own route")
}

/// A gRPC server on a loopback port answering every call with `status`
/// trailers-only (as tonic sends a handler's error), counting the calls.
async fn answering(status: fn() -> tonic::Status) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    answering_after(Duration::ZERO, status).await
}

/// [`answering`], each answer after `delay`.
async fn answering_after(
    delay: Duration,
    status: fn() -> tonic::Status,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let answer = tower::service_fn(move |_req: http::Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(status().into_http::<tonic::body::Body>())
        }
    });
    let addr = mesh_testkit::h2c::serve(answer).await.expect("served");
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_instance_is_retried_elsewhere_and_ejected() {
    let good = grpc::serve().await.expect("greeter");
    let (bad, bad_calls) = answering(|| tonic::Status::unavailable("draining")).await;
    let client = grpc::mesh_client(&[good, bad]).await.expect("client");
    for i in 0..40 {
        grpc::say_hello(&client, &format!("caller-{i}"))
            .await
            .expect("UNAVAILABLE is retried on the other greeter");
    }
    // UNAVAILABLE (HTTP 200, trailers-only) counted as a failure: the
    // balancer steers away and the breaker records it; the greeter saw a
    // handful of the 40 calls, not half.
    let seen = bad_calls.load(Ordering::SeqCst);
    assert!(
        (1..=10).contains(&seen),
        "the unavailable greeter saw {seen}"
    );
    let route = greeter_route(&client);
    assert!(route.retry.retries >= 1, "{:?}", route.retry);
    // Open (its window starts afresh, empty), or closed with every call
    // it recorded failed.
    let bad_key = format!("greeter/{bad}");
    let breaker = route.breakers.iter().find(|b| b.key == bad_key);
    assert!(
        breaker.is_some_and(|b| b.state == "open" || b.failure_rate == Some(100.0)),
        "{:?}",
        route.breakers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_code_is_neither_retried_nor_held_against_the_instance() {
    let (missing, calls) = answering(|| tonic::Status::not_found("no such user")).await;
    let client = grpc::mesh_client(&[missing]).await.expect("client");
    for i in 0..10 {
        let err = grpc::say_hello(&client, &format!("caller-{i}"))
            .await
            .expect_err("NOT_FOUND reaches the caller");
        assert!(err.to_string().contains("no such user"), "{err}");
    }
    // One attempt each, all recorded as successes by the breaker.
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    let route = greeter_route(&client);
    let rates: Vec<_> = route
        .breakers
        .iter()
        .map(|b| (b.state.as_str(), b.failure_rate, b.buffered_calls))
        .collect();
    assert_eq!(rates, [("closed", Some(0.0), 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_s_grpc_timeout_is_its_deadline_through_the_mesh() {
    let (slow, _) = answering_after(Duration::from_secs(3), || tonic::Status::ok("late")).await;
    let client = grpc::mesh_client(&[slow]).await.expect("client");
    let started = Instant::now();
    // Sent as `grpc-timeout: 300m`.
    let status = say_hello_within(&client, Duration::from_millis(300))
        .await
        .expect_err("past its deadline");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{status:?}"
    );
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("timed out"), "{status:?}");
}

/// A gRPC call sent with `MeshClient::send` (as a hand-written gRPC client
/// would) keeps its `grpc-timeout` too: the call ends by it, the server is
/// told no more than it, and one already spent sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_send_a_grpc_timeout_bounds_the_call_and_is_what_the_server_is_told() {
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = Arc::clone(&told);
    // Says hello only after 3 s; answers anything else at once.
    let hung = tower::service_fn(move |req: http::Request<Incoming>| {
        let hello = req.uri().path() == grpc::SAY_HELLO;
        if hello {
            let timeout = req.headers().get("grpc-timeout").cloned();
            heard.lock().expect("log").push(timeout);
        }
        async move {
            if hello {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok::<_, Infallible>(tonic::Status::ok("").into_http::<tonic::body::Body>())
        }
    });
    let addr = mesh_testkit::h2c::serve(hung).await.expect("served");
    let client = grpc::mesh_client(&[addr]).await.expect("client");
    let call_to = |path: &str, timeout: &str| {
        http::Request::post(format!("http://greeter{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(bytes::Bytes::new())
            .expect("request")
    };
    let call = |timeout: &str| call_to(grpc::SAY_HELLO, timeout);
    // The connection made first, so the short deadline below is the call's.
    client
        .send(call_to("/warm.Up/Now", "10S"))
        .await
        .expect("answered at once");
    let started = Instant::now();
    let err = client
        .send(call("300m"))
        .await
        .expect_err("past its deadline");
    assert!(started.elapsed() < Duration::from_millis(1500), "{err}");
    assert!(
        matches!(
            mesh::core::MeshError::find(&*err),
            Some(mesh::core::MeshError::Timeout { .. })
        ),
        "{err}"
    );
    let told_first = told.lock().expect("log").clone();
    let [Some(value)] = &told_first[..] else {
        panic!("one attempt, with a grpc-timeout: {told_first:?}")
    };
    let millis: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_suffix('m')?.parse().ok())
        .unwrap_or_else(|| panic!("{value:?}"));
    assert!((1..=300).contains(&millis), "the server was told {value:?}");
    // No time left: nothing is sent.
    let err = client.send(call("0m")).await.expect_err("no time left");
    assert!(
        matches!(
            mesh::core::MeshError::find(&*err),
            Some(mesh::core::MeshError::Timeout { .. })
        ),
        "{err}"
    );
    assert_eq!(told.lock().expect("log").len(), 1, "nothing more was sent");
}

/// Hedged, a call answered UNAVAILABLE with a pushback longer than its
/// deadline returns that answer at once: no copy could be sent in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_does_not_wait_out_a_pushback_past_its_deadline() {
    let (busy, calls) = answering(|| {
        let mut status = tonic::Status::unavailable("come back in a minute");
        let pushback = tonic::metadata::MetadataValue::from_static("60000");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", pushback);
        status
    })
    .await;
    let retry = "[retry]\nhedging = { max_attempts = 3, delay = \"1s\" }\n";
    let client = greeter_client(busy, "", retry).await;
    let started = Instant::now();
    // A deadline longer than the call takes, shorter than the pushback.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        say_hello_within(&client, Duration::from_secs(5)),
    )
    .await
    .expect("answered long before the pushback ends");
    let status = answer.expect_err("UNAVAILABLE");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{status:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no copy after the pushback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_grpc_codes_decide_which_codes_are_retried() {
    for (codes, sent) in [("[]", 1), ("[14]", 3)] {
        let (busy, calls) = answering(|| tonic::Status::unavailable("draining")).await;
        let breaker =
            "breaker = { scope = \"endpoint\", consecutive_failures = 100, minimum_calls = 100 }\n";
        let retry = format!(
            "[retry]\nmax_retries = 2\ninitial = \"1ms\"\nretryable_grpc_codes = {codes}\n"
        );
        let client = greeter_client(busy, breaker, &retry).await;
        let err = grpc::say_hello(&client, "Ada")
            .await
            .expect_err("UNAVAILABLE reaches the caller");
        let status = err
            .downcast_ref::<tonic::Status>()
            .unwrap_or_else(|| panic!("a gRPC status: {err}"));
        assert_eq!(status.code(), tonic::Code::Unavailable, "{codes}");
        assert_eq!(calls.load(Ordering::SeqCst), sent, "{codes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_s_grpc_failure_codes_decide_what_counts_against_an_instance() {
    let (missing, _) = answering(|| tonic::Status::not_found("no such user")).await;
    let breaker =
        "breaker = { scope = \"endpoint\", grpc_failure_codes = [5], minimum_calls = 100 }\n";
    let client = greeter_client(missing, breaker, "").await;
    for i in 0..4 {
        grpc::say_hello(&client, &format!("caller-{i}"))
            .await
            .expect_err("NOT_FOUND reaches the caller");
    }
    let route = greeter_route(&client);
    let rates: Vec<_> = route
        .breakers
        .iter()
        .map(|b| (b.failure_rate, b.buffered_calls))
        .collect();
    assert_eq!(
        rates,
        [(Some(100.0), 4)],
        "NOT_FOUND counted, as configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_instance_can_answer_is_unavailable_as_grpc_says() {
    // A port nothing listens on: every connection is refused.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let client = grpc::mesh_client(&[gone]).await.expect("client");
    let err = grpc::say_hello(&client, "Ada").await.expect_err("refused");
    let status = err
        .downcast_ref::<tonic::Status>()
        .unwrap_or_else(|| panic!("a gRPC status: {err}"));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&gone.to_string()), "{status:?}");
}

/// A proxy's page in front of a greeter: HTTP 200 in `text/html`, with a
/// stray `grpc-status: 14` header. It is not a gRPC answer, so nothing in
/// the mesh reads that status: the call is not retried and counts as a
/// success, as a gRPC client would judge it by its HTTP status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_grpc_is_judged_by_its_http_status() {
    judged_by_http_status("text/html", Some("application/grpc")).await;
}

/// A plain call (no gRPC content type) answered in `application/grpc`
/// with `UNAVAILABLE`: only a gRPC call has a gRPC answer, so it too is
/// judged by its HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_call_is_judged_by_its_http_status_whatever_its_answer_says() {
    judged_by_http_status("application/grpc", None).await;
}

/// `mesh-breaker`'s `FallbackLayer`, replacing failed answers, assembled
/// by hand over `MeshClient` (built from TOML) and an instance answering
/// every call 200 in `application/grpc` with `UNAVAILABLE`: a plain call's
/// answer is an HTTP 200 and passes, not retried, as every layer below
/// judges it; a gRPC call's is a failure, retried twice (the production
/// profile), then replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_layer_replaces_only_a_grpc_call_s_failed_answer() {
    use http_body_util::BodyExt;
    use mesh::breaker::{FallbackLayer, Fault};
    use tower::ServiceExt;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let unavailable = tower::service_fn(move |_req: http::Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let answer = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("response");
            Ok::<_, Infallible>(answer)
        }
    });
    let greeter = mesh_testkit::h2c::serve(unavailable).await.expect("served");
    let client = grpc::mesh_client(&[greeter]).await.expect("client");
    let guarded = tower::ServiceBuilder::new()
        .layer(
            FallbackLayer::new(|fault: Fault| {
                let Fault::Response(status) = fault else {
                    return Err("an answer was expected".into());
                };
                let text = format!("fallback for {}", status.as_u16());
                Ok(http::Response::new(mesh::MeshBody::from(text)))
            })
            .on_failed_responses(mesh::core::FailureClassifier::default()),
        )
        .service(client.clone());
    let call = |content_type: Option<&str>| {
        let mut call = http::Request::post("http://greeter/helloworld.Greeter/SayHello");
        if let Some(content_type) = content_type {
            call = call.header("content-type", content_type);
        }
        call.body(bytes::Bytes::new()).expect("request")
    };
    let plain_answer = guarded.clone().oneshot(call(None)).await;
    let plain_answer = plain_answer.expect("answered");
    assert_eq!(
        plain_answer
            .headers()
            .get("grpc-status")
            .map(|v| v.as_bytes()),
        Some(&b"14"[..]),
        "the instance's own answer, not the fallback's"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a plain call is not retried"
    );
    let grpc_answer = guarded.oneshot(call(Some("application/grpc"))).await;
    let body = grpc_answer.expect("answered").into_body().collect().await;
    assert_eq!(&body.expect("body").to_bytes()[..], b"fallback for 200");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1 + 3,
        "the gRPC call was sent three times (two retries) before the fallback answered"
    );
    client.shutdown(Duration::from_secs(1)).await;
}

/// Three calls through `MeshClient` (content type `request_type`, if
/// any) to an instance answering 200 in `answer_type` with
/// `grpc-status: 14`: each is judged by its HTTP status alone, by every
/// layer and the facade's metrics.
async fn judged_by_http_status(answer_type: &'static str, request_type: Option<&'static str>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let page = tower::service_fn(move |_req: http::Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let answer = http::Response::builder()
                .header("content-type", answer_type)
                .header("grpc-status", "14")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"<p>maintenance</p>",
                )))
                .expect("response");
            Ok::<_, Infallible>(answer)
        }
    });
    let proxy = mesh_testkit::h2c::serve(page).await.expect("served");
    let client = grpc::mesh_client(&[proxy]).await.expect("client");
    for _ in 0..3 {
        let mut call = http::Request::post("http://greeter/helloworld.Greeter/SayHello");
        if let Some(content_type) = request_type {
            call = call.header("content-type", content_type);
        }
        let call = call.body(bytes::Bytes::new()).expect("request");
        let answer = client
            .send(call)
            .await
            .expect("the answer reaches the caller");
        assert_eq!(answer.status(), http::StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "no call was retried");
    let route = greeter_route(&client);
    assert_eq!(route.retry.retries, 0, "{:?}", route.retry);
    let rates: Vec<_> = route
        .breakers
        .iter()
        .map(|b| (b.failure_rate, b.buffered_calls))
        .collect();
    assert_eq!(rates, [(Some(0.0), 3)], "recorded as successes");
    // The balancer kept the instance in service; the facade's metrics
    // counted three 2xx answers and no gRPC code.
    let instances = &route.services[0].instances;
    assert_eq!(instances.iter().map(|i| i.requests).sum::<u64>(), 3);
    assert!(instances.iter().all(|i| i.available), "{instances:?}");
    let text = client.prometheus();
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{") && l.contains("service=\"greeter\""))
        .collect();
    assert_eq!(calls.len(), 1, "{text}");
    assert!(calls[0].contains("grpc_code=\"\""), "{}", calls[0]);
    assert!(calls[0].ends_with(" 3"), "{}", calls[0]);
}
