//! The client's promises about where a request may go, against real peers
//! on loopback: plaintext is refused before a connection is opened, and a
//! destination service is accepted only when it presents its own identity
//! (an impostor with another service's valid mesh certificate is refused
//! at the handshake, counted, published, and reported as never sent).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{ConnectError, EventBus, FailureClassifier, FailureKind, MeshEvent};
use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::{
    ClientTls, Credentials, HandshakeError, HandshakeRejection, MeshConnector, PemSource,
    PlaintextRefused, ServerTls, TlsConfig,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const TEMPLATE: &str = "spiffe://cluster.local/ns/default/sa/{service}";

fn credentials(ca: &Ca, service: &str) -> Credentials {
    let issued = ca.issue(Leaf::service(service));
    Credentials::load(PemSource::memory(
        issued.cert_pem,
        issued.key_pem,
        ca.pem.clone(),
    ))
    .expect("credentials")
}

fn config() -> TlsConfig {
    let mut config = TlsConfig::new("unused.crt", "unused.key", "unused-ca.crt");
    config.peer_identity = Some(TEMPLATE.to_owned());
    config
}

/// This crate's server with a certificate for `service`, answering with
/// its own name and counting the requests that reach it.
async fn server(ca: &Ca, service: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let tls = ServerTls::builder(credentials(ca, service))
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    let app = tower::service_fn(move |_req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(service)))) }
    });
    tokio::spawn(async move { tls.serve(listener, app).await });
    (addr, served)
}

fn client(tls: &ClientTls) -> Client<MeshConnector<HttpConnector>, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tls.connector())
}

/// The first error of type `T` in `error`'s source chain.
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[tokio::test]
async fn a_server_with_another_services_valid_certificate_is_refused_and_routed_around() {
    let ca = Ca::new("mesh CA");
    let (impostor, impostor_served) = server(&ca, "billing").await;
    let (genuine, genuine_served) = server(&ca, "users").await;
    let bus = EventBus::new(16);
    let mut events = bus.subscribe();
    let tls = config()
        .client_for(credentials(&ca, "api").with_events(bus), "users")
        .expect("client");
    assert_eq!(
        tls.expected_identity().map(|id| id.as_str()),
        Some("spiffe://cluster.local/ns/default/sa/users")
    );
    let client = client(&tls);

    let error = client
        .get(
            format!("https://127.0.0.1:{}/", impostor.port())
                .parse()
                .expect("uri"),
        )
        .await
        .expect_err("the impostor must be refused");
    let handshake = find::<HandshakeError>(&error).expect("a HandshakeError");
    assert_eq!(
        handshake.rejection,
        HandshakeRejection::UnexpectedIdentity {
            identity: "spiffe://cluster.local/ns/default/sa/billing".to_owned(),
            expected: "spiffe://cluster.local/ns/default/sa/users".to_owned(),
        }
    );
    assert_eq!(
        handshake.authority,
        format!("127.0.0.1:{}", impostor.port())
    );
    assert!(
        handshake.to_string().contains("not the expected"),
        "{handshake}"
    );
    // Never sent, so a retry may take it to another endpoint.
    assert!(find::<ConnectError>(&error).is_some(), "{error:?}");
    assert_eq!(
        FailureClassifier::default().classify_error(&error),
        FailureKind::Connect
    );

    // Counted and published under its own reason.
    let metrics = tls.metrics().snapshot();
    assert_eq!(metrics.failures_for("unexpected-identity"), 1);
    assert_eq!(metrics.handshakes, 0);
    match events.try_recv() {
        Ok(MeshEvent::HandshakeRejected {
            side,
            reason,
            detail,
            ..
        }) => {
            assert_eq!(side, "client");
            assert_eq!(reason, "unexpected-identity");
            assert!(detail.contains("sa/billing"), "{detail}");
        }
        other => panic!("expected HandshakeRejected, got {other:?}"),
    }

    // The genuine service is accepted through the same client.
    let response = client
        .get(
            format!("https://127.0.0.1:{}/", genuine.port())
                .parse()
                .expect("uri"),
        )
        .await
        .expect("the genuine service is accepted");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"users");
    assert_eq!(tls.metrics().snapshot().handshakes, 1);
    assert_eq!(genuine_served.load(Ordering::SeqCst), 1);
    assert_eq!(impostor_served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_for_one_service_is_refused_by_the_others() {
    // The same template, two destinations: each client accepts only its
    // own service, so connections never serve the wrong one.
    let ca = Ca::new("mesh CA");
    let (users, _) = server(&ca, "users").await;
    let (billing, _) = server(&ca, "billing").await;
    let config = config();
    let me = credentials(&ca, "api");
    let for_users = client(&config.client_for(me.clone(), "users").expect("client"));
    let for_billing = client(&config.client_for(me.clone(), "billing").expect("client"));
    let url = |addr: SocketAddr| {
        format!("https://127.0.0.1:{}/", addr.port())
            .parse()
            .expect("uri")
    };

    assert!(for_users.get(url(users)).await.is_ok());
    assert!(for_billing.get(url(billing)).await.is_ok());
    for (client, addr) in [(&for_users, billing), (&for_billing, users)] {
        let error = client.get(url(addr)).await.expect_err("wrong service");
        assert!(
            matches!(
                HandshakeRejection::find(&error),
                Some(HandshakeRejection::UnexpectedIdentity { .. })
            ),
            "{error:?}"
        );
    }
    assert_eq!(
        me.metrics().snapshot().failures_for("unexpected-identity"),
        2
    );
}

#[tokio::test]
async fn without_a_template_servers_are_verified_by_name_and_client_refuses_a_template() {
    let ca = Ca::new("mesh CA");
    let (users, _) = server(&ca, "users").await;
    let plain = TlsConfig::new("unused.crt", "unused.key", "unused-ca.crt");
    let tls = plain.client(credentials(&ca, "api")).expect("client");
    assert_eq!(tls.expected_identity(), None);
    // The test certificates carry 127.0.0.1 and localhost.
    client(&tls)
        .get(
            format!("https://localhost:{}/", users.port())
                .parse()
                .expect("uri"),
        )
        .await
        .expect("verified by name");

    // With a template, a single client for every destination is refused.
    let err = config()
        .client(credentials(&ca, "api"))
        .expect_err("a template needs a client per service");
    assert!(
        matches!(&err, mesh_tls::TlsError::Config(e) if e.key() == "tls.peer_identity"),
        "{err:?}"
    );
    assert!(err.to_string().contains("TlsConfig::client_for"), "{err}");
}

/// A raw TCP listener standing in for an upstream; counts connections and
/// keeps whatever bytes arrive.
async fn raw_listener() -> (SocketAddr, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    (listener.local_addr().expect("addr"), listener)
}

#[tokio::test]
async fn plaintext_is_refused_before_any_connection_is_opened() {
    let ca = Ca::new("mesh CA");
    let (addr, listener) = raw_listener().await;
    for tls in [
        ClientTls::builder(credentials(&ca, "api"))
            .build()
            .expect("client"),
        config()
            .client_for(credentials(&ca, "api"), "users")
            .expect("client"),
    ] {
        assert!(!tls.allows_plaintext());
        let client = client(&tls);
        let error = client
            .get(
                format!("http://127.0.0.1:{}/api", addr.port())
                    .parse()
                    .expect("uri"),
            )
            .await
            .expect_err("plaintext must be refused");
        let refused = find::<PlaintextRefused>(&error).expect("PlaintextRefused");
        assert_eq!(refused.authority, format!("127.0.0.1:{}", addr.port()));
        assert_eq!(
            refused.to_string(),
            format!(
                "refusing to send plaintext to 127.0.0.1:{}: mutual TLS is required (use an https URI)",
                addr.port()
            )
        );
        // A configuration error, not a connection failure: not for a
        // retry to try elsewhere.
        assert!(find::<ConnectError>(&error).is_none(), "{error:?}");
        assert_eq!(HandshakeRejection::find(&error), None);
        assert_eq!(tls.metrics().snapshot().handshakes, 0);
    }
    // The call has returned: a connection made by it would already be in
    // the accept queue, so a short wait is enough to prove there is none.
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the plaintext listener saw a connection");

    // A URI without a scheme is refused the same way.
    let tls = ClientTls::builder(credentials(&ca, "api"))
        .build()
        .expect("client");
    let mut connector = tls.connector();
    let error = tower::ServiceExt::oneshot(&mut connector, "/api".parse().expect("uri"))
        .await
        .expect_err("no scheme");
    assert!(error.is::<PlaintextRefused>(), "{error:?}");

    // Userinfo, path and query are named nowhere: only host and port.
    let with_secrets = format!(
        "http://admin:hunter2@127.0.0.1:{}/api?token=s3cret",
        addr.port()
    );
    let error = tower::ServiceExt::oneshot(&mut connector, with_secrets.parse().expect("uri"))
        .await
        .expect_err("plaintext");
    let refused = find::<PlaintextRefused>(&*error).expect("PlaintextRefused");
    assert_eq!(refused.authority, format!("127.0.0.1:{}", addr.port()));
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
}

#[tokio::test]
async fn plaintext_goes_out_only_when_explicitly_allowed() {
    let ca = Ca::new("mesh CA");
    let (addr, listener) = raw_listener().await;
    let tls = ClientTls::builder(credentials(&ca, "api"))
        .allow_plaintext(true)
        .build()
        .expect("client");
    assert!(tls.allows_plaintext());
    let client = client(&tls);
    let call = tokio::spawn(async move {
        client
            .get(
                format!("http://127.0.0.1:{}/api", addr.port())
                    .parse()
                    .expect("uri"),
            )
            .await
    });
    let (mut tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("a connection")
        .expect("accept");
    let mut seen = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut seen))
        .await
        .expect("bytes")
        .expect("read");
    assert!(
        seen[..n].starts_with(b"GET /api HTTP/1.1"),
        "{:?}",
        &seen[..n]
    );
    drop(tcp);
    call.abort();
}
