//! [`EndpointClient`] against real HTTP/1.1 servers on loopback that count
//! the connections they accept and can close idle ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use http::header::HOST;

use mesh_testkit::wait::until;

use super::*;

/// A server's counts: connections accepted, connections ended, requests.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    ended: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP/1.1 server answering 200 with `body_len` bytes; it closes a
/// connection on which no request begins within `idle` (as servers close
/// idle keep-alive connections).
async fn server(idle: Option<Duration>, body_len: usize) -> (SocketAddr, Arc<Seen>) {
    slow_first(idle, body_len, Duration::ZERO).await
}

/// [`server`], answering its first request only after `first_after`.
async fn slow_first(
    idle: Option<Duration>,
    body_len: usize,
    first_after: Duration,
) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let answers = Arc::clone(&counts);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answers = Arc::clone(&answers);
                    async move {
                        let _ = req.into_body().collect().await;
                        if answers.requests.fetch_add(1, Ordering::SeqCst) == 0 {
                            tokio::time::sleep(first_after).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![
                            b'x';
                            body_len
                        ]))))
                    }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                if let Some(idle) = idle {
                    http.timer(TokioTimer::new()).header_read_timeout(idle);
                }
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                counts.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

type Body = Full<Bytes>;

fn client() -> EndpointClient<Body> {
    // Sweeps only when a test asks.
    EndpointClient::sweeping_every(Duration::from_secs(3600))
}

fn request(method: Method, addr: SocketAddr) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}/path?q=1"))
        .header(HOST, "users")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap()
}

/// Sends one request and reads its answer whole.
async fn call(client: &EndpointClient<Body>, method: Method, addr: SocketAddr) -> StatusCode {
    let response = client.clone().call(request(method, addr)).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn calls_one_after_another_share_one_connection_per_endpoint() {
    let (a, seen_a) = server(None, 10).await;
    let (b, seen_b) = server(None, 10).await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(call(&client, Method::GET, a).await, StatusCode::OK);
        assert_eq!(call(&client, Method::GET, b).await, StatusCode::OK);
    }
    assert_eq!(seen_a.requests.load(Ordering::SeqCst), 20);
    assert_eq!(seen_a.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen_b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.endpoints(), 2);
}

#[tokio::test]
async fn concurrent_calls_each_get_a_connection_and_all_come_back() {
    let (addr, seen) = server(None, 10).await;
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let client = client.clone();
        calls.spawn(async move { call(&client, Method::GET, addr).await });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    // A connect that lost its race to an idle connection finishes in the
    // background, into the cache: let those land before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = seen.accepted.load(Ordering::SeqCst);
    assert!((1..=16).contains(&opened), "{opened} connections");
    // Every connection is back in its cache: as many calls again, all at
    // once, open none.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..opened {
        let client = client.clone();
        calls.spawn(async move {
            let response = client
                .clone()
                .call(request(Method::GET, addr))
                .await
                .unwrap();
            // Holds its connection until every call has one.
            tokio::time::sleep(Duration::from_millis(100)).await;
            response.into_body().collect().await.unwrap();
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), opened);
}

#[tokio::test]
async fn a_request_is_written_in_origin_form_with_the_callers_host() {
    let (head, addr) = one_request_head().await;
    let client = client();
    assert_eq!(
        call(&client, Method::POST, addr).await,
        StatusCode::NO_CONTENT
    );
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("post /path?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: users\r\n"), "{head}");

    // Without a Host of its own, the endpoint's.
    let (head, addr) = one_request_head().await;
    let mut req = request(Method::GET, addr);
    req.headers_mut().remove(HOST);
    client.clone().call(req).await.unwrap();
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
}

/// A server that reads one request's head, answers 204, and returns the
/// head it read.
async fn one_request_head() -> (tokio::task::JoinHandle<String>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                .await
                .unwrap();
            read.extend_from_slice(&buf[..n]);
        }
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut stream, answer)
            .await
            .unwrap();
        String::from_utf8(read).unwrap()
    });
    (head, addr)
}

#[tokio::test]
async fn a_request_after_the_server_closed_the_idle_connection_goes_out_on_a_new_one() {
    // The server closes a connection idle for 1 s (long enough for a
    // loaded machine to write the request first); each call comes after
    // that, on the connection the cache kept.
    let (addr, seen) = server(Some(Duration::from_secs(1)), 10).await;
    let client = client();
    for round in 1..=4 {
        assert_eq!(call(&client, Method::POST, addr).await, StatusCode::OK);
        until("the server closed the idle connection", || {
            seen.ended.load(Ordering::SeqCst) >= round
        })
        .await;
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4, "each POST once");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_call_given_up_mid_request_leaves_the_next_call_a_connection_of_its_own() {
    let (addr, seen) = slow_first(None, 10, Duration::from_secs(5)).await;
    let client = client();
    let first = tokio::time::timeout(
        Duration::from_millis(200),
        client.clone().call(request(Method::GET, addr)),
    );
    assert!(first.await.is_err(), "the first answer takes 5 s");
    // Its connection still carries that request: the next call gets one
    // of its own, and its answer at once, not after the first one's.
    let next = tokio::time::timeout(Duration::from_secs(4), call(&client, Method::GET, addr));
    assert_eq!(
        next.await.expect("waited behind the abandoned request"),
        StatusCode::OK
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_dropped_unread_leaves_the_next_call_a_connection() {
    // 1 MiB: more than a socket's buffers, so the connection is still
    // busy with it when the caller drops it.
    let (addr, seen) = server(None, 1 << 20).await;
    let client = client();
    for _ in 0..3 {
        let response = client
            .clone()
            .call(request(Method::GET, addr))
            .await
            .unwrap();
        drop(response);
        let next = tokio::time::timeout(Duration::from_secs(10), call(&client, Method::GET, addr));
        assert_eq!(next.await.expect("the next call stalled"), StatusCode::OK);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    // Each connection whose answer was dropped is closed, not kept busy:
    // only the last call's stays open.
    until("the abandoned connections closed", || {
        seen.accepted.load(Ordering::SeqCst) - seen.ended.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn the_sweep_closes_idle_connections_and_forgets_endpoints_no_longer_called() {
    let (addr, seen) = server(None, 10).await;
    let client = client();
    call(&client, Method::GET, addr).await;
    // Time for the connection to go back to its cache (it goes once
    // hyper's connection task has seen the answer through).
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Called since the last sweep: kept, and the next call takes it.
    client.sweep();
    assert_eq!(client.endpoints(), 1);
    assert_eq!(call(&client, Method::GET, addr).await, StatusCode::OK);
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "the kept connection"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.sweep();
    // Idle for a whole sweep: its connection closed, its cache dropped.
    client.sweep();
    until("the idle connection closed", || {
        seen.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(client.endpoints(), 0);
    // Called again, it connects again.
    assert_eq!(call(&client, Method::GET, addr).await, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

/// A runtime for servers, alive throughout the test while the client's
/// calls run on others.
fn servers_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime for some of the client's calls.
fn current() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_client_outliving_the_runtime_its_sweep_ran_on_sweeps_on_the_next() {
    let servers = servers_runtime();
    let (addr, seen) = servers.block_on(server(None, 10));
    let client = EndpointClient::<Body>::sweeping_every(Duration::from_millis(200));
    // The first runtime starts the sweep, and ends with it.
    current().block_on(call(&client, Method::GET, addr));
    current().block_on(async {
        assert_eq!(call(&client, Method::GET, addr).await, StatusCode::OK);
        // That call's connection, idle, is closed by a sweep this
        // runtime runs.
        until("the idle connection closed by a sweep", || {
            seen.ended.load(Ordering::SeqCst) == seen.accepted.load(Ordering::SeqCst)
        })
        .await;
        until("the endpoint forgotten", || client.endpoints() == 0).await;
    });
}

#[tokio::test]
async fn userinfo_keys_no_cache_of_its_own() {
    let (addr, seen) = server(None, 10).await;
    let client = client();
    let with_userinfo = Request::get(format!("http://user:s3cret@{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.clone().call(with_userinfo).await.unwrap();
    response.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&client, Method::GET, addr).await, StatusCode::OK);
    assert_eq!(client.endpoints(), 1, "one cache for the endpoint");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "one connection");
}

#[tokio::test]
async fn a_refused_connection_fails_with_its_io_cause() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let error = client().call(request(Method::GET, addr)).await.unwrap_err();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    let mut refused = false;
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    assert!(refused, "{error:?}");
}

#[tokio::test]
async fn requests_a_plain_http1_connection_cannot_carry_are_refused_before_sending() {
    let client = client();
    let mut no_authority = Request::new(Full::new(Bytes::new()));
    *no_authority.uri_mut() = http::Uri::from_static("/path");
    let error = client.clone().call(no_authority).await.unwrap_err();
    assert!(error.to_string().contains("no authority"), "{error}");

    let (addr, seen) = server(None, 10).await;
    let mut h2 = request(Method::GET, addr);
    *h2.version_mut() = http::Version::HTTP_2;
    let error = client.clone().call(h2).await.unwrap_err();
    assert!(error.to_string().contains("HTTP/2"), "{error}");

    // An https URI would go out in cleartext.
    let mut https = request(Method::GET, addr);
    *https.uri_mut() = format!("https://{addr}/path").parse().unwrap();
    let error = client.clone().call(https).await.unwrap_err();
    assert!(error.to_string().contains("cleartext"), "{error}");

    let connect = request(Method::CONNECT, addr);
    let error = client.clone().call(connect).await.unwrap_err();
    assert!(error.to_string().contains("CONNECT"), "{error}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 0);
}

/// A runtime kept after its last `block_on` is alive but never runs its
/// tasks again: a sweep started there would never sweep, and the caches
/// of endpoints called once would pile up. A request to a new endpoint
/// finds the sweep two periods late and starts it again on its own
/// runtime.
#[test]
fn a_sweep_on_a_runtime_no_longer_driven_is_started_again_elsewhere() {
    let servers = servers_runtime();
    let (first, _) = servers.block_on(server(None, 10));
    let (second, _) = servers.block_on(server(None, 10));
    let client = EndpointClient::<Body>::sweeping_every(Duration::from_millis(200));
    // The sweep starts on `kept`, which is never driven again.
    let kept = current();
    assert_eq!(
        kept.block_on(call(&client, Method::GET, first)),
        StatusCode::OK
    );
    current().block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(client.endpoints(), 1, "no sweep ran on the kept runtime");
        assert_eq!(call(&client, Method::GET, second).await, StatusCode::OK);
        until("both endpoints forgotten", || client.endpoints() == 0).await;
    });
    drop(kept);
}
