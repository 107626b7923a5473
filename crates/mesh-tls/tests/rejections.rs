//! The rejection matrix, both sides, each case asserting its specific
//! reason: certificates made with rcgen, real TCP on loopback, this crate
//! on one end and a plain rustls peer presenting the bad certificate on
//! the other.

mod support;
use support::credentials;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{EventBus, MeshEvent};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::der::{chain, key, provider, roots};
use mesh_testkit::pki::{Ca, Issued, Leaf};
use mesh_tls::rustls::pki_types::ServerName;
use mesh_tls::rustls::{self, ClientConfig, ServerConfig};
use mesh_tls::{
    ClientTls, Credentials, HandshakeError, HandshakeRejection, IdentityPolicy, PemSource,
    ServerTls, TlsError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A plain rustls server presenting `issued` (whatever it is), not asking
/// for a client certificate; answers one HTTP request per connection.
async fn plain_server(issued: &Issued) -> std::net::SocketAddr {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain(issued), key(issued))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    addr
}

/// This crate's client calling `url`: the rejection it reports.
async fn client_rejection(tls: &ClientTls, url: String) -> HandshakeRejection {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(tls.connector());
    let error = client
        .get(url.parse().expect("url"))
        .await
        .expect_err("the handshake must fail");
    // The connector names the authority and the cause.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(handshake) = e.downcast_ref::<HandshakeError>() {
            assert!(handshake.to_string().contains("TLS to "), "{handshake}");
            return handshake.rejection.clone();
        }
        source = e.source();
    }
    panic!("no HandshakeError in {error:?}");
}

#[tokio::test]
async fn the_client_refuses_servers_by_cause() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("someone else's CA");
    let me = ca.issue(Leaf::service("api"));
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let by_name = ClientTls::builder(credentials(&ca, &me).with_events(bus))
        .build()
        .expect("client");
    let by_identity = ClientTls::builder(credentials(&ca, &me))
        .verify_identity(
            IdentityPolicy::new().allow(
                "spiffe://cluster.local/ns/default/sa/users"
                    .parse()
                    .expect("id"),
            ),
        )
        .build()
        .expect("client");

    let cases: Vec<(&str, &ClientTls, Issued, HandshakeRejection)> = vec![
        (
            "untrusted CA",
            &by_name,
            other_ca.issue(Leaf::service("users")),
            HandshakeRejection::UnknownCa,
        ),
        (
            "expired",
            &by_name,
            ca.issue(Leaf::service("users").expired()),
            HandshakeRejection::Expired,
        ),
        (
            "not yet valid",
            &by_name,
            ca.issue(Leaf::service("users").not_yet_valid()),
            HandshakeRejection::NotYetValid,
        ),
        (
            "wrong identity",
            &by_identity,
            ca.issue(Leaf::service("billing")),
            HandshakeRejection::IdentityNotAllowed {
                identity: "spiffe://cluster.local/ns/default/sa/billing".to_owned(),
                allowed: "spiffe://cluster.local/ns/default/sa/users".to_owned(),
            },
        ),
        (
            "no identity",
            &by_identity,
            ca.issue(Leaf {
                uris: Vec::new(),
                ..Leaf::service("users")
            }),
            HandshakeRejection::NoIdentity,
        ),
    ];
    for (case, tls, server_cert, want) in cases {
        let addr = plain_server(&server_cert).await;
        let got = client_rejection(tls, format!("https://localhost:{}/", addr.port())).await;
        assert_eq!(got, want, "{case}");
    }

    // The name is checked when identities are not.
    let addr = plain_server(&ca.issue(Leaf::service("users").dns_only("users.internal"))).await;
    let got = client_rejection(&by_name, format!("https://localhost:{}/", addr.port())).await;
    assert!(
        matches!(got, HandshakeRejection::NameMismatch { .. }),
        "{got:?}"
    );

    // Counted by reason, and published.
    let metrics = by_name.metrics().snapshot();
    assert_eq!(metrics.failures_for("unknown-ca"), 1);
    assert_eq!(metrics.failures_for("expired"), 1);
    assert_eq!(metrics.failures_for("not-yet-valid"), 1);
    assert_eq!(metrics.failures_for("name-mismatch"), 1);
    let mut reasons = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::HandshakeRejected { side, reason, .. } = event {
            assert_eq!(side, "client");
            reasons.push(reason);
        }
    }
    assert_eq!(
        reasons,
        ["unknown-ca", "expired", "not-yet-valid", "name-mismatch"]
    );
}

/// A plain rustls client presenting `cert` (or none) to this crate's
/// server: the server's verdict.
async fn server_verdict(
    server: &ServerTls,
    ca: &Ca,
    cert: Option<&Issued>,
) -> Result<(), HandshakeRejection> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca));
    let config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(chain(cert), key(cert))
            .expect("client config"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        // The client's own handshake may complete (TLS 1.3 verifies the
        // client certificate after); the server's verdict is what counts.
        let _ = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await;
    });
    let (tcp, peer) = listener.accept().await.expect("accept");
    let verdict = server.accept(tcp, Some(peer)).await.map(|_| ());
    let _ = client.await;
    verdict
}

#[tokio::test]
async fn the_server_refuses_clients_by_cause() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("someone else's CA");
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let server =
        ServerTls::builder(credentials(&ca, &ca.issue(Leaf::service("users"))).with_events(bus))
            .allow(
                IdentityPolicy::new()
                    .allow_trust_domain("cluster.local")
                    .expect("trust domain"),
            )
            .build()
            .expect("server");

    let good = ca.issue(Leaf::service("api"));
    assert_eq!(server_verdict(&server, &ca, Some(&good)).await, Ok(()));

    let cases = [
        (
            "untrusted CA",
            Some(other_ca.issue(Leaf::service("api"))),
            HandshakeRejection::UnknownCa,
        ),
        (
            "expired",
            Some(ca.issue(Leaf::service("api").expired())),
            HandshakeRejection::Expired,
        ),
        (
            "not yet valid",
            Some(ca.issue(Leaf::service("api").not_yet_valid())),
            HandshakeRejection::NotYetValid,
        ),
        (
            "wrong identity",
            Some(ca.issue(Leaf {
                uris: vec!["spiffe://evil.example/ns/default/sa/api".to_owned()],
                ..Leaf::service("api")
            })),
            HandshakeRejection::IdentityNotAllowed {
                identity: "spiffe://evil.example/ns/default/sa/api".to_owned(),
                allowed: "spiffe://cluster.local/*".to_owned(),
            },
        ),
        (
            "no identity",
            Some(ca.issue(Leaf {
                uris: Vec::new(),
                ..Leaf::service("api")
            })),
            HandshakeRejection::NoIdentity,
        ),
        (
            // An allowed identity beside another: which one a handler
            // would see is ambiguous, so neither is trusted.
            "two identities",
            Some(ca.issue(Leaf {
                uris: vec![
                    "spiffe://cluster.local/ns/default/sa/admin".to_owned(),
                    "spiffe://cluster.local/ns/default/sa/api".to_owned(),
                ],
                ..Leaf::service("api")
            })),
            HandshakeRejection::AmbiguousIdentity {
                uris: "spiffe://cluster.local/ns/default/sa/admin, spiffe://cluster.local/ns/default/sa/api".to_owned(),
            },
        ),
        (
            "no client certificate",
            None,
            HandshakeRejection::NoClientCertificate,
        ),
    ];
    for (case, cert, want) in cases {
        assert_eq!(
            server_verdict(&server, &ca, cert.as_ref()).await,
            Err(want),
            "{case}"
        );
    }

    let snapshot = server.metrics().snapshot();
    assert_eq!(snapshot.handshakes, 1);
    for label in [
        "unknown-ca",
        "expired",
        "not-yet-valid",
        "identity-not-allowed",
        "no-identity",
        "ambiguous-identity",
        "no-client-certificate",
    ] {
        assert_eq!(snapshot.failures_for(label), 1, "{label}");
    }
    let mut reasons = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::HandshakeRejected {
            side, reason, peer, ..
        } = event
        {
            assert_eq!(side, "server");
            assert!(peer.is_some());
            reasons.push(reason);
        }
    }
    assert_eq!(reasons.len(), 7, "{reasons:?}");
}

#[test]
fn bad_material_is_refused_naming_the_file_and_the_cause() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("bad-material");
    let good = ca.issue(Leaf::service("api"));
    let other = ca.issue(Leaf::service("billing"));
    let [cert, key, ca_path] = dir.write("api", &good, &ca.pem);
    let load = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        Credentials::load(PemSource::files(cert, key, ca)).map(|_| ())
    };
    assert!(load(&cert, &key, &ca_path).is_ok());

    // Missing file.
    let missing = dir.path("missing.crt");
    let err = load(&missing, &key, &ca_path).expect_err("missing");
    assert!(matches!(err, TlsError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.crt"), "{err}");

    // Corrupt PEM: the base64 body is damaged.
    let corrupt = dir.path("corrupt.crt");
    let damaged = good.cert_pem.replacen("MII", "M!!", 1);
    std::fs::write(&corrupt, damaged).expect("write");
    let err = load(&corrupt, &key, &ca_path).expect_err("corrupt");
    assert!(matches!(err, TlsError::MalformedPem { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.crt"), "{err}");

    // No certificate at all.
    let empty = dir.path("empty.crt");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let err = load(&empty, &key, &ca_path).expect_err("empty");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");

    // A key file with no key.
    let err = load(&cert, &cert, &ca_path).expect_err("no key");
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");

    // The key of another certificate.
    let other_key = dir.path("other.key");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let err = load(&cert, &other_key, &ca_path).expect_err("mismatch");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("other.key") && err.to_string().contains("api.crt"),
        "{err}"
    );

    // An expired certificate is not loaded (a rotation to it would break
    // every handshake).
    let expired = ca.issue(Leaf::service("api").expired());
    let [old_cert, old_key, _] = dir.write("expired", &expired, &ca.pem);
    let err = load(&old_cert, &old_key, &ca_path).expect_err("expired");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn sessions_are_never_resumed_so_every_connection_is_verified() {
    // A resumed session would skip verification: a client whose
    // certificate expired or whose CA was rotated out could keep coming
    // back on an old ticket.
    let ca = Ca::new("mesh CA");
    let server = ServerTls::builder(credentials(&ca, &ca.issue(Leaf::service("users"))))
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        server
            .serve(
                listener,
                tower::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                }),
            )
            .await
    });
    // A plain rustls client that would resume if offered a ticket.
    let me = ca.issue(Leaf::service("api"));
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(&ca))
        .with_client_auth_cert(chain(&me), key(&me))
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for round in 0..2 {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "round {round}"
        );
        // Read a whole exchange, so any ticket sent would have arrived.
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut response)
            .await
            .expect("read");
        assert!(response.starts_with(b"HTTP/1.1 200"), "round {round}");
    }
}

#[test]
fn configurations_that_would_weaken_verification_are_refused() {
    let ca = Ca::new("mesh CA");
    let me = ca.issue(Leaf::service("api"));
    // A public CA must not vouch for workload identities.
    let err = ClientTls::builder(credentials(&ca, &me))
        .verify_identity(IdentityPolicy::any())
        .trust_system_roots(true)
        .build()
        .expect_err("identity with system roots");
    assert!(
        matches!(&err, TlsError::Config(e) if e.key() == "tls.trust_system_roots"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("invalid configuration: tls.trust_system_roots: cannot be combined"),
        "{err}"
    );

    // A disabled block is never half used.
    let mut config = mesh_tls::TlsConfig::new("c", "k", "a");
    config.enabled = false;
    let err = config.credentials().expect_err("disabled");
    assert!(
        matches!(&err, TlsError::Config(e) if e.key() == "tls.enabled"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("invalid configuration: tls.enabled: mutual TLS is disabled"),
        "{err}"
    );

    // A handshake that could wait forever.
    let err = ServerTls::builder(credentials(&ca, &me))
        .handshake_timeout(std::time::Duration::ZERO)
        .build()
        .expect_err("no handshake timeout");
    assert!(
        matches!(&err, TlsError::Config(e) if e.key() == "tls.handshake_timeout"),
        "{err:?}"
    );
}

#[test]
fn watching_outside_a_runtime_is_refused_with_tokios_error_kept_as_the_cause() {
    let ca = Ca::new("mesh CA");
    let err = credentials(&ca, &ca.issue(Leaf::service("api")))
        .watch(std::time::Duration::from_millis(250))
        .expect_err("no runtime");
    let TlsError::Config(config) = &err else {
        panic!("not a configuration error: {err:?}");
    };
    assert_eq!(config.key(), "tls.watch_interval");
    assert_eq!(config.reason(), "watching the files needs a tokio runtime");
    let cause = std::error::Error::source(&err).expect("the cause is kept");
    assert!(cause.is::<tokio::runtime::TryCurrentError>(), "{cause:?}");
    // Said once, ending with tokio's own words.
    assert_eq!(
        err.to_string(),
        format!("invalid configuration: tls.watch_interval: watching the files needs a tokio runtime: {cause}")
    );
}
