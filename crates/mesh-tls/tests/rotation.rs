//! Certificate rotation without a restart: a server's files are swapped
//! the way Kubernetes updates a secret volume (new files in a new
//! directory, then the `..data` symlink renamed over) while a client keeps
//! a request loop running on pooled connections.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{EventBus, MeshEvent};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{Ca, Issued, Leaf};
use mesh_tls::rustls::pki_types::ServerName;
use mesh_tls::{ClientTls, Credentials, IdentityPolicy, PemSource, ServerTls, TlsError};
use tokio::net::{TcpListener, TcpStream};

/// Writes a version directory and points `..data` at it by renaming a
/// fresh symlink over it, as the kubelet does.
fn publish(root: &Path, version: &str, files: [(&str, &str); 3]) {
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).expect("write");
    }
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("..data")).expect("swap");
}

fn secret(issued: &Issued, ca: &Ca) -> [(&'static str, String); 3] {
    [
        ("tls.crt", issued.cert_pem.clone()),
        ("tls.key", issued.key_pem.clone()),
        ("ca.crt", ca.pem.clone()),
    ]
}

fn publish_secret(root: &Path, version: &str, files: &[(&'static str, String); 3]) {
    publish(
        root,
        version,
        [
            (files[0].0, files[0].1.as_str()),
            (files[1].0, files[1].1.as_str()),
            (files[2].0, files[2].1.as_str()),
        ],
    );
}

/// The certificate a fresh handshake is presented.
async fn presented(client: &ClientTls, addr: std::net::SocketAddr) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(client.rustls_config());
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a certificate")
}

async fn ok(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swap_rotates_new_handshakes_and_no_request_fails() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("rotation");
    let root = &dir.0;
    let v1 = ca.issue(Leaf::service("users"));
    let v2 = ca.issue(Leaf::service("users"));
    publish_secret(root, "..v1", &secret(&v1, &ca));
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).expect("link");
    }

    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let credentials = Credentials::load(PemSource::files(
        root.join("tls.crt"),
        root.join("tls.key"),
        root.join("ca.crt"),
    ))
    .expect("credentials")
    .with_events(bus);
    credentials.watch(Duration::from_millis(50)).expect("watch");
    let server = ServerTls::builder(credentials.clone())
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, tower::service_fn(ok)).await });

    let api = ca.issue(Leaf::service("api"));
    let client_tls = ClientTls::builder(
        Credentials::load(PemSource::memory(api.cert_pem, api.key_pem, ca.pem.clone()))
            .expect("client credentials"),
    )
    .verify_identity(
        IdentityPolicy::new()
            .allow_trust_domain("cluster.local")
            .expect("trust domain"),
    )
    .build()
    .expect("client");
    assert_eq!(presented(&client_tls, addr).await, v1.der);

    // A request loop on pooled connections, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let looping = {
        let client =
            Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(client_tls.connector());
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let url: http::Uri = format!("https://localhost:{}/", addr.port())
            .parse()
            .expect("url");
        tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < 100_000
                && started.elapsed() < Duration::from_secs(20)
            {
                let outcome = match client.get(url.clone()).await {
                    Ok(response) => response.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !outcome {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Rotate: new handshakes see v2 within a second.
    let swapped = Instant::now();
    publish_secret(root, "..v2", &secret(&v2, &ca));
    while presented(&client_tls, addr).await != v2.der {
        assert!(
            swapped.elapsed() < Duration::from_secs(1),
            "new handshakes still see the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut rotated = false;
    while let Ok(event) = events.try_recv() {
        rotated |= matches!(
            event,
            MeshEvent::CertificateRotated { identity: Some(ref id), .. }
                if id == "spiffe://cluster.local/ns/default/sa/users"
        );
    }
    assert!(rotated, "a CertificateRotated event");

    // A broken update (a key that is not the certificate's) is refused
    // with an event; v2 stays in use.
    let stranger = ca.issue(Leaf::service("users"));
    publish_secret(
        root,
        "..v3",
        &[
            ("tls.crt", v1.cert_pem.clone()),
            ("tls.key", stranger.key_pem.clone()),
            ("ca.crt", ca.pem.clone()),
        ],
    );
    let refused = async {
        loop {
            if let Ok(MeshEvent::CertificateRotationRejected { reason }) = events.recv().await {
                return reason;
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("a CertificateRotationRejected event");
    assert!(reason.contains("does not match"), "{reason}");
    assert_eq!(presented(&client_tls, addr).await, v2.der);

    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    looping.await.expect("loop");
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 10, "the loop ran across the rotations ({sent})");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    let metrics = credentials.metrics().snapshot();
    assert_eq!(metrics.rotations, 1);
    assert_eq!(metrics.rotations_rejected, 1);
}

#[tokio::test]
async fn a_certificate_not_valid_yet_is_refused_once_and_retried_until_it_is() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("not-yet");
    let [cert, key, ca_file] = dir.write("users", &ca.issue(Leaf::service("users")), &ca.pem);
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let credentials = Credentials::load(PemSource::files(&cert, &key, &ca_file))
        .expect("credentials")
        .with_events(bus);
    let before = credentials.current().chain()[0].clone();

    // The issuer's clock runs a day ahead: refused, reported once, and
    // checked again at every reload (not forgotten until the files change).
    let early = ca.issue(Leaf::service("users").not_yet_valid());
    dir.write("users", &early, &ca.pem);
    for _ in 0..3 {
        let err = credentials.reload().expect_err("not valid yet");
        assert!(matches!(err, TlsError::NotYetValid { .. }), "{err:?}");
    }
    let mut refusals = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::CertificateRotationRejected { reason } = event {
            refusals.push(reason);
        }
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains("not valid before"), "{refusals:?}");
    assert_eq!(
        credentials.current().chain()[0],
        before,
        "the old one stays"
    );

    // A valid certificate replaces it at the next reload.
    let fresh = ca.issue(Leaf::service("users"));
    dir.write("users", &fresh, &ca.pem);
    assert!(credentials.reload().expect("rotates"));
    assert_eq!(credentials.current().chain()[0].as_ref(), &fresh.der[..]);
    // Nothing changed since: nothing to do.
    assert!(!credentials.reload().expect("unchanged"));
}

/// The `CertificateRotationRejected` reasons received so far.
fn refusals(events: &mut tokio::sync::broadcast::Receiver<MeshEvent>) -> Vec<String> {
    let mut reasons = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::CertificateRotationRejected { reason } = event {
            reasons.push(reason);
        }
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_written_before_its_key_rotates_without_a_spurious_refusal() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("cert-then-key");
    let [cert, key, ca_file] = dir.write("users", &ca.issue(Leaf::service("users")), &ca.pem);
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let credentials = Credentials::load(PemSource::files(&cert, &key, &ca_file))
        .expect("credentials")
        .with_events(bus);
    credentials.watch(Duration::from_millis(50)).expect("watch");

    // Not atomic, in both orders: one file, several checks of the watch
    // later the other. The pair in between does not match.
    for (round, cert_first) in [(1, true), (2, false)] {
        let next = ca.issue(Leaf::service("users"));
        let (first, second) = match cert_first {
            true => ((&cert, &next.cert_pem), (&key, &next.key_pem)),
            false => ((&key, &next.key_pem), (&cert, &next.cert_pem)),
        };
        std::fs::write(first.0, first.1).expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(second.0, second.1).expect("write");
        let written = Instant::now();
        while credentials.current().chain()[0].as_ref() != &next.der[..] {
            assert!(
                written.elapsed() < Duration::from_secs(2),
                "round {round}: the new pair is not in use"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(refusals(&mut events), Vec::<String>::new(), "round {round}");
        let metrics = credentials.metrics().snapshot();
        assert_eq!(metrics.rotations, round, "round {round}");
        assert_eq!(metrics.rotations_rejected, 0, "round {round}");
    }

    // A key that stays mismatched is refused, once it has settled.
    let stranger = ca.issue(Leaf::service("users"));
    std::fs::write(&key, &stranger.key_pem).expect("write");
    let written = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        refusals(&mut events),
        Vec::<String>::new(),
        "not settled yet"
    );
    let mut reasons = Vec::new();
    while reasons.is_empty() {
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "a mismatch that stays is refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        reasons = refusals(&mut events);
    }
    assert!(
        written.elapsed() >= Duration::from_secs(1),
        "after the settle delay"
    );
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("does not match"), "{reasons:?}");
    assert_eq!(credentials.metrics().snapshot().rotations_rejected, 1);
}
