//! A refused peer learns why: this crate's server sends the TLS alert and
//! lets the peer read it before closing (no reset in its place), proven
//! with curl, run again and again so a race would show; and this crate's
//! client, refused after its TLS 1.3 handshake completed, counts and
//! publishes the refusal like any other. Loopback only.

mod support;
use support::credentials;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{EventBus, MeshEvent};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::{ClientTls, Credentials, HandshakeRejection, IdentityPolicy, ServerTls};
use tokio::net::TcpListener;

async fn ok(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// This crate's server on a loopback port, admitting `cluster.local`.
async fn mesh_server(credentials: Credentials) -> (SocketAddr, ServerTls) {
    let tls = ServerTls::builder(credentials)
        .allow(
            IdentityPolicy::new()
                .allow_trust_domain("cluster.local")
                .expect("trust domain"),
        )
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tls.clone();
    tokio::spawn(async move { serving.serve(listener, tower::service_fn(ok)).await });
    (addr, tls)
}

/// Runs curl against `https://localhost:{port}/` with `extra` arguments:
/// whether it succeeded, and its stderr.
async fn curl(port: u16, ca_file: &PathBuf, extra: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca_file)
        .args(extra)
        .arg(format!("https://localhost:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("curl finished in time")
        .expect("curl could not start: install Debian's curl (scripts/test.sh does)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// Runs curl `RUNS` times in a row; every run must be refused with stderr
/// naming `alert`.
async fn refused_every_time(
    port: u16,
    ca_file: &PathBuf,
    extra: &[&std::ffi::OsStr],
    alert: &str,
) -> String {
    const RUNS: usize = 10;
    let mut last = String::new();
    for run in 0..RUNS {
        let (success, stderr) = curl(port, ca_file, extra).await;
        assert!(!success, "run {run}: curl got in");
        assert!(
            stderr.contains(alert),
            "run {run}: curl did not see the alert {alert:?}, it said: {stderr}"
        );
        assert!(
            !stderr.contains("reset by peer") && !stderr.contains("getpeername"),
            "run {run}: {stderr}"
        );
        last = stderr;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_refused_by_our_server_reads_the_alert_every_time() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("someone else's CA");
    let dir = TempDir::new("alerts-curl");
    let (addr, server) = mesh_server(credentials(&ca, &ca.issue(Leaf::service("users")))).await;
    let port = addr.port();
    let ca_file = dir.path("ca.crt");
    std::fs::write(&ca_file, &ca.pem).expect("write");

    // No client certificate.
    let stderr = refused_every_time(port, &ca_file, &[], "certificate required").await;
    println!("curl without a certificate: {stderr}");

    // An expired client certificate.
    let [cert, key, _] = dir.write(
        "expired",
        &ca.issue(Leaf::service("api").expired()),
        &ca.pem,
    );
    let args = [
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ];
    let stderr = refused_every_time(port, &ca_file, &args, "certificate expired").await;
    println!("curl with an expired certificate: {stderr}");

    // A client certificate from a CA the server does not trust.
    let [cert, key, _] = dir.write("stranger", &other_ca.issue(Leaf::service("api")), &ca.pem);
    let args = [
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ];
    let stderr = refused_every_time(port, &ca_file, &args, "unknown ca").await;
    println!("curl with a certificate of an unknown CA: {stderr}");

    let snapshot = server.metrics().snapshot();
    assert_eq!(snapshot.failures_for("no-client-certificate"), 10);
    assert_eq!(snapshot.failures_for("expired"), 10);
    assert_eq!(snapshot.failures_for("unknown-ca"), 10);
    assert_eq!(snapshot.handshakes, 0);
}

/// Calls `url` once with a fresh client over `tls`.
async fn call(tls: &ClientTls, url: &str) -> Result<String, mesh_core::BoxError> {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tls.connector());
    let response = client.get(url.parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_tls13_client_refused_after_its_handshake_counts_and_publishes_the_refusal() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("someone else's CA");
    let (addr, server) = mesh_server(credentials(&ca, &ca.issue(Leaf::service("users")))).await;
    let url = format!("https://localhost:{}/", addr.port());

    // Accepted: the handshake is counted once the server's bytes arrive.
    let accepted = ClientTls::builder(credentials(&ca, &ca.issue(Leaf::service("api"))))
        .build()
        .expect("client");
    assert_eq!(call(&accepted, &url).await.expect("call"), "ok");
    let snapshot = accepted.metrics().snapshot();
    assert_eq!(snapshot.handshakes, 1);
    assert_eq!(snapshot.failures_for("refused-by-peer"), 0);

    // Refused by the server after the client's TLS 1.3 handshake ended:
    // an identity outside the allow-list, then a CA the server does not
    // trust. The client names, counts and publishes each.
    let cases = [
        (
            ca.issue(Leaf {
                uris: vec!["spiffe://evil.example/ns/default/sa/api".to_owned()],
                ..Leaf::service("api")
            }),
            "certificate_unknown",
        ),
        (other_ca.issue(Leaf::service("api")), "unknown_ca"),
    ];
    for (issued, alert) in cases {
        let bus = EventBus::new(16);
        let mut events = bus.subscribe();
        let refused = ClientTls::builder(credentials(&ca, &issued).with_events(bus))
            .build()
            .expect("client");
        let error = call(&refused, &url).await.expect_err("refused");
        let want = HandshakeRejection::RefusedByPeer {
            alert: alert.to_owned(),
        };
        assert_eq!(
            HandshakeRejection::find(&*error),
            Some(want.clone()),
            "{error:?}"
        );
        let chain = mesh_core::error_chain(&*error);
        assert!(
            chain.contains(&format!("TLS to localhost:{} failed", addr.port())),
            "{chain}"
        );

        let snapshot = refused.metrics().snapshot();
        assert_eq!(snapshot.failures_for("refused-by-peer"), 1, "{alert}");
        assert_eq!(
            snapshot.handshakes, 0,
            "a refused handshake is not counted as one"
        );
        let event = events.try_recv().expect("a HandshakeRejected event");
        let MeshEvent::HandshakeRejected {
            side,
            reason,
            detail,
            ..
        } = event
        else {
            panic!("{event:?}");
        };
        assert_eq!((side, reason), ("client", "refused-by-peer"));
        assert!(detail.contains(alert), "{detail}");
        assert!(events.try_recv().is_err(), "published once");
    }
    let snapshot = server.metrics().snapshot();
    assert_eq!(snapshot.failures_for("identity-not-allowed"), 1);
    assert_eq!(snapshot.failures_for("unknown-ca"), 1);
}
