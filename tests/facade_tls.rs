//! Mutual TLS through the front door: `MeshClient` built from a
//! configuration file with `[tls]` on, against real mutual TLS servers on
//! 127.0.0.1 (certificates made with rcgen), a plaintext listener that
//! must never see a request, and an impostor holding a valid mesh
//! certificate of another service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mesh::core::MeshEvent;
use mesh::tls::{Credentials, IdentityPolicy, PeerIdentity, PemSource, ServerTls};
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_testkit::{Backend, Behavior};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A mutual TLS upstream presenting `service`'s certificate, answering
/// "<its port> <HTTP version> <caller's SPIFFE ID>", counting requests.
struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
}

async fn upstream(ca: &Ca, service: &str) -> Upstream {
    let issued = ca.issue(Leaf::service(service));
    let credentials = Credentials::load(PemSource::memory(
        issued.cert_pem,
        issued.key_pem,
        ca.pem.clone(),
    ))
    .expect("credentials");
    let tls = ServerTls::builder(credentials)
        .allow(
            IdentityPolicy::new().allow(
                "spiffe://cluster.local/ns/default/sa/api-gateway"
                    .parse()
                    .expect("id"),
            ),
        )
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        let app = tower::service_fn(move |req: Request<Incoming>| {
            count.fetch_add(1, Ordering::SeqCst);
            let caller = req
                .extensions()
                .get::<PeerIdentity>()
                .and_then(|p| p.spiffe_id())
                .map(|id| id.to_string())
                .unwrap_or_default();
            let body = format!("{} {:?} {caller}", addr.port(), req.version());
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
        });
        tls.serve(listener, app).await
    });
    Upstream { addr, served }
}

/// A TCP listener standing in for an upstream: records the first bytes of
/// every connection.
async fn raw_listener() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                buf.truncate(n);
                record.lock().expect("lock").push(buf);
            });
        }
    });
    (addr, seen)
}

/// The gateway's certificate files, and a `[tls]` section naming them.
fn tls_section(dir: &TempDir, ca: &Ca, extra: &str) -> String {
    tls_section_of(dir, ca, "api-gateway", extra)
}

/// `service`'s certificate files, and a `[tls]` section naming them.
fn tls_section_of(dir: &TempDir, ca: &Ca, service: &str, extra: &str) -> String {
    let issued = ca.issue(Leaf::service(service));
    let [cert, key, ca_path] = dir.write(service, &issued, &ca.pem);
    format!(
        "[tls]\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n\
         peer_identity = \"spiffe://cluster.local/ns/default/sa/{{service}}\"\n{extra}\n",
        path(&cert),
        path(&key),
        path(&ca_path)
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A client built from `text` written to a file, as a user builds one.
async fn client_from_file(dir: &TempDir, text: &str) -> MeshClient {
    let file = dir.path("mesh.toml");
    std::fs::write(&file, text).expect("write config");
    let config = MeshConfig::load_with_env(&file, |_| None).expect("config");
    MeshClient::from_config(config).await.expect("client")
}

fn static_discovery(services: &[(&str, Vec<SocketAddr>)]) -> String {
    let mut text = "[discovery]\nkind = \"static\"\n[discovery.services]\n".to_owned();
    for (name, addrs) in services {
        let list: Vec<String> = addrs
            .iter()
            .map(|a| format!("{:?}", a.to_string()))
            .collect();
        text.push_str(&format!("{name} = [{}]\n", list.join(", ")));
    }
    text
}

const SERVICE: &str = "profile = \"production\"\n[service]\nname = \"api-gateway\"\n";

async fn body_text(response: Response<mesh::MeshBody>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_a_plaintext_listener_never_sees_a_request() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-plain");
    let (addr, seen) = raw_listener().await;
    let text = format!(
        "{SERVICE}{}\n{}",
        static_discovery(&[("users", vec![addr])]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;

    let options = CallOptions::default().timeout(Duration::from_secs(3));
    let outcome = client.get("users", "/api", options).await;
    assert!(outcome.is_err(), "a listener speaking no TLS answered");
    client.shutdown(Duration::from_secs(1)).await;

    let seen = seen.lock().expect("lock").clone();
    assert!(!seen.is_empty(), "the client never connected");
    for first in &seen {
        assert!(!first.starts_with(b"GET"), "plaintext sent: {first:?}");
        // A TLS record of type handshake (the ClientHello).
        assert_eq!(first.first(), Some(&0x16), "not a TLS handshake: {first:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_over_mutual_tls_and_an_impostor_of_another_service_is_routed_around() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-identity");
    let users = [upstream(&ca, "users").await, upstream(&ca, "users").await];
    // A valid mesh certificate, but billing's: listed under users (a
    // registry entry under the wrong name), it must serve nothing.
    let impostor = upstream(&ca, "billing").await;
    let addrs = vec![users[0].addr, users[1].addr, impostor.addr];
    let text = format!(
        "{SERVICE}{}\n{}",
        static_discovery(&[("users", addrs)]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;
    let mut events = client.subscribe();

    for _ in 0..12 {
        let response = client
            .get("users", "/api", CallOptions::default())
            .await
            .expect("every call succeeds");
        let body = body_text(response).await;
        assert!(
            body.ends_with(" spiffe://cluster.local/ns/default/sa/api-gateway"),
            "{body}"
        );
    }
    assert_eq!(
        impostor.served.load(Ordering::SeqCst),
        0,
        "the impostor served"
    );
    assert_eq!(
        users
            .iter()
            .map(|u| u.served.load(Ordering::SeqCst))
            .sum::<usize>(),
        12
    );
    let metrics = client.metrics();
    let tls = metrics.tls.expect("tls metrics");
    assert!(tls.handshakes >= 2, "{tls:?}");
    let failures: u64 = tls.failures.iter().map(|(_, n)| n).sum();
    assert!(
        failures >= 1,
        "the impostor's handshake was not counted: {tls:?}"
    );
    let mut rejected = false;
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::HandshakeRejected { detail, .. } = &event {
            rejected |= detail.contains(&impostor.addr.port().to_string());
        }
    }
    assert!(rejected, "no HandshakeRejected event names the impostor");
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_route_is_http2_inside_mutual_tls() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-h2");
    let greeter = upstream(&ca, "greeter").await;
    let text = format!(
        "{SERVICE}{}\n{}\n[services.greeter]\nprotocol = \"h2c\"\n",
        static_discovery(&[("greeter", vec![greeter.addr])]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;
    let response = client
        .get("greeter", "/", CallOptions::default())
        .await
        .expect("call");
    let body = body_text(response).await;
    assert!(body.contains("HTTP/2.0"), "{body}");
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_plaintext_only_when_its_configuration_says_so() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-explicit-plain");
    let legacy = Backend::start(Behavior::Ok).await.expect("backend");
    let other = Backend::start(Behavior::Ok).await.expect("backend");
    let text = format!(
        "{SERVICE}{}\n{}\n[services.legacy]\nplaintext = true\n",
        static_discovery(&[
            ("legacy", vec![legacy.addr()]),
            ("other", vec![other.addr()])
        ]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;
    let response = client
        .get("legacy", "/", CallOptions::default())
        .await
        .expect("plaintext route");
    assert!(response.status().is_success());
    body_text(response).await;
    assert_eq!(legacy.stats().requests, 1);

    // Not marked plaintext: refused, nothing reaches the plain server.
    let options = CallOptions::default().timeout(Duration::from_secs(3));
    assert!(client.get("other", "/", options).await.is_err());
    assert_eq!(other.stats().requests, 0);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_s_own_identity_overrides_the_template() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-override");
    // The payments instances run as the `ledger` account.
    let ledger = upstream(&ca, "ledger").await;
    let text = format!(
        "{SERVICE}{}\n{}\n[services.payments]\nidentity = \"spiffe://cluster.local/ns/default/sa/ledger\"\n",
        static_discovery(&[("payments", vec![ledger.addr]), ("ledger", vec![ledger.addr])]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;
    let response = client
        .get("payments", "/", CallOptions::default())
        .await
        .expect("payments presents the configured identity");
    body_text(response).await;
    assert_eq!(ledger.served.load(Ordering::SeqCst), 1);
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_health_probes_go_over_mutual_tls() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-probes");
    let users = upstream(&ca, "users").await;
    let (plain, seen) = raw_listener().await;
    let text = format!(
        "{SERVICE}{}\n{}\n[upstream_health]\nprobe = {{ http = {{ path = \"/healthz\" }} }}\ninterval = \"100ms\"\njitter = \"0s\"\n",
        static_discovery(&[("users", vec![users.addr, plain])]),
        tls_section(&dir, &ca, "")
    );
    let client = client_from_file(&dir, &text).await;
    // The first call starts the service's upstream checker.
    let _ = client.get("users", "/api", CallOptions::default()).await;
    let probed = async {
        while users.served.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), probed)
        .await
        .expect("probes reached the mutual TLS instance");
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() >= 2, "probes never reached the plain listener");
    for first in &seen {
        assert_eq!(first.first(), Some(&0x16), "a plaintext probe: {first:?}");
    }
    client.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_side_admits_only_the_callers_it_allows() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-server");
    // The users service's own client, whose server side admits the gateway
    // only.
    let users_text = format!(
        "[service]\nname = \"users\"\n{}\n{}",
        static_discovery(&[]),
        tls_section_of(
            &dir,
            &ca,
            "users",
            "allowed_callers = [\"spiffe://cluster.local/ns/default/sa/api-gateway\"]"
        )
    );
    let users = client_from_file(&dir, &users_text).await;
    let server = users.server_tls().expect("server side").expect("tls on");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    let metrics = server.clone();
    tokio::spawn(async move {
        let app = tower::service_fn(move |_req: Request<Incoming>| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
        });
        server.serve(listener, app).await
    });

    for (caller, admitted) in [("api-gateway", true), ("billing", false)] {
        let caller_dir = TempDir::new(&format!("facade-server-{caller}"));
        let text = format!(
            "[service]\nname = \"{caller}\"\n{}\n{}",
            static_discovery(&[("users", vec![addr])]),
            tls_section_of(&caller_dir, &ca, caller, "")
        );
        let client = client_from_file(&caller_dir, &text).await;
        let options = CallOptions::default().timeout(Duration::from_secs(3));
        let outcome = client.get("users", "/", options).await;
        assert_eq!(outcome.is_ok(), admitted, "{caller}: {outcome:?}");
        client.shutdown(Duration::from_secs(1)).await;
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "only the gateway was served"
    );
    let refused = metrics
        .metrics()
        .snapshot()
        .failures_for("identity-not-allowed");
    assert!(refused >= 1, "the refusal was not counted");
    users.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_an_expected_identity_is_refused_at_start() {
    let dir = TempDir::new("facade-no-identity");
    let err = load_gateway_tls(&dir, "").expect_err("no identity");
    assert!(err.to_string().contains("tls.peer_identity"), "{err}");
}

/// The gateway's configuration with mutual TLS on (its certificate issued
/// by a fresh CA, written to `dir`), `rest` after its `[tls]` keys, loaded
/// from a file.
fn load_gateway_tls(dir: &TempDir, rest: &str) -> Result<MeshConfig, mesh::core::ConfigError> {
    let ca = Ca::new("mesh CA");
    let issued = ca.issue(Leaf::service("api-gateway"));
    let [cert, key, ca_path] = dir.write("gateway", &issued, &ca.pem);
    let text = format!(
        "{SERVICE}{}\n[tls]\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n{rest}",
        static_discovery(&[]),
        path(&cert),
        path(&key),
        path(&ca_path)
    );
    let file = dir.path("mesh.toml");
    std::fs::write(&file, text).expect("write config");
    MeshConfig::load_with_env(&file, |_| None)
}

/// The system's roots vouch for names, never for workload identities, and
/// `MeshClient` verifies every service by identity: the key is refused at
/// start rather than failing every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusting_the_system_roots_is_refused_at_start() {
    let dir = TempDir::new("facade-system-roots");
    for roots in [false, true] {
        let rest = format!(
            "trust_system_roots = {roots}\n[services.users]\n\
             identity = \"spiffe://cluster.local/ns/default/sa/users\"\n"
        );
        match load_gateway_tls(&dir, &rest) {
            Ok(_) => assert!(!roots, "system roots accepted"),
            Err(err) => {
                assert!(roots, "{err}");
                assert!(err.to_string().contains("tls.trust_system_roots"), "{err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_no_expected_identity_is_refused_and_nothing_is_sent() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-partial-identity");
    let payments = upstream(&ca, "payments").await;
    let other = upstream(&ca, "billing").await;
    // No template: only payments says what it must present.
    let issued = ca.issue(Leaf::service("api-gateway"));
    let [cert, key, ca_path] = dir.write("gateway", &issued, &ca.pem);
    let text = format!(
        "{SERVICE}{}\n[tls]\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n\
         [services.payments]\nidentity = \"spiffe://cluster.local/ns/default/sa/payments\"\n",
        static_discovery(&[
            ("payments", vec![payments.addr]),
            ("other", vec![other.addr])
        ]),
        path(&cert),
        path(&key),
        path(&ca_path)
    );
    let client = client_from_file(&dir, &text).await;
    let response = client
        .get("payments", "/", CallOptions::default())
        .await
        .expect("payments has an identity");
    body_text(response).await;
    let err = client
        .get("other", "/", CallOptions::default())
        .await
        .expect_err("no identity expected of it");
    let chain = mesh::core::error_chain(&*err);
    assert!(chain.contains("services.other.identity"), "{chain}");
    assert_eq!(other.served.load(Ordering::SeqCst), 0);
    client.shutdown(Duration::from_secs(1)).await;
}
