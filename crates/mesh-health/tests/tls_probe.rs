//! Upstream HTTP probes through a caller's client: a mutual-TLS server on
//! 127.0.0.1 (rustls, demanding a client certificate) probed through a
//! hyper-rustls client handed to the checker, as a mesh running mutual
//! TLS does. The probe must travel over TLS with the `https` scheme, and a
//! plaintext listener must never see a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{Endpoint, EndpointSet, Health, ServiceName};
use mesh_health::{ProbeClient, UpstreamCheckConfig, UpstreamHealthChecker, UpstreamProbe};
use mesh_testkit::pki::der::{chain, key, provider, roots};
use mesh_testkit::pki::{Ca, Issued, Leaf};
use mesh_testkit::{Backend, Behavior};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A CA and two leaves it signed, for 127.0.0.1: the server's and the
/// client's.
struct Pki {
    roots: Arc<RootCertStore>,
    server: Issued,
    client: Issued,
}

fn pki() -> Pki {
    let ca = Ca::new("test mesh CA");
    Pki {
        roots: roots(&ca),
        server: ca.issue(Leaf::service("users")),
        client: ca.issue(Leaf::service("gateway")),
    }
}

/// What the mutual-TLS server saw.
#[derive(Default)]
struct Seen {
    handshakes: AtomicUsize,
    requests: AtomicUsize,
}

/// A server on 127.0.0.1 that completes a handshake only with a client
/// certificate from the CA, then answers every request 200.
async fn mtls_server(pki: &Pki) -> (SocketAddr, Arc<Seen>) {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&pki.roots), provider())
        .build()
        .expect("verifier");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&pki.server), key(&pki.server))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counts) = (acceptor.clone(), Arc::clone(&counts));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counts.handshakes.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |_req| {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new()))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// What the client was asked to send: each URI, and whether the request
/// named the service and the endpoint.
type Sent = Arc<Mutex<Vec<(http::Uri, Option<ServiceName>, bool)>>>;

/// A hyper client over hyper-rustls presenting the client certificate,
/// https only, recording each request it is given.
fn mtls_client(pki: &Pki, sent: &Sent) -> ProbeClient {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(Arc::clone(&pki.roots))
        .with_client_auth_cert(chain(&pki.client), key(&pki.client))
        .expect("client config");
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let sent = Arc::clone(sent);
    ProbeClient::new(
        tower::ServiceBuilder::new()
            .map_request(move |req: http::Request<Empty<Bytes>>| {
                let service = req.extensions().get::<TargetService>().map(|t| t.0.clone());
                let endpoint = req.extensions().get::<SelectedEndpoint>().is_some();
                if let Ok(mut sent) = sent.lock() {
                    sent.push((req.uri().clone(), service, endpoint));
                }
                req
            })
            .service(client),
    )
}

fn config() -> UpstreamCheckConfig {
    UpstreamCheckConfig {
        probe: UpstreamProbe::Http {
            path: "/health/ready".to_owned(),
        },
        interval: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        // Generous for a loaded machine: handshakes on 2 busy cores.
        timeout: Duration::from_secs(2),
        healthy_threshold: 1,
        unhealthy_threshold: 2,
        unhealthy_until_checked: true,
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
async fn probes_go_through_the_given_client_over_mutual_tls_with_the_https_scheme() {
    let pki = pki();
    let (addr, seen) = mtls_server(&pki).await;
    let users = ServiceName::new("users").expect("name");
    let set = EndpointSet::new(users.clone(), vec![Endpoint::builder(addr).build()]);
    let sent = Sent::default();
    let source = set.clone();
    let _checker =
        UpstreamHealthChecker::builder(users.clone(), config(), move || Some(source.clone()))
            .client(mtls_client(&pki, &sent), Scheme::HTTPS)
            .spawn()
            .expect("checker");

    until("healthy through mutual TLS", || {
        set.endpoints()[0].state().health() == Health::Healthy
    })
    .await;
    assert!(seen.handshakes.load(Ordering::SeqCst) >= 1);
    assert!(seen.requests.load(Ordering::SeqCst) >= 1);
    let sent = sent.lock().expect("sent").clone();
    let (uri, service, endpoint) = sent.first().expect("the client was called");
    assert_eq!(uri.to_string(), format!("https://{addr}/health/ready"));
    assert_eq!(
        service.as_ref(),
        Some(&users),
        "the probe names its service"
    );
    assert!(endpoint, "the probe names its endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_probe_sends_no_request_to_a_plaintext_listener() {
    let pki = pki();
    let plaintext = Backend::start(Behavior::Ok).await.expect("backend");
    let users = ServiceName::new("users").expect("name");
    let set = EndpointSet::new(
        users.clone(),
        vec![Endpoint::builder(plaintext.addr()).build()],
    );
    let sent = Sent::default();
    let source = set.clone();
    // Usable until proven otherwise: the verdict must come from the probes.
    let config = UpstreamCheckConfig {
        unhealthy_until_checked: false,
        ..config()
    };
    let _checker = UpstreamHealthChecker::builder(users, config, move || Some(source.clone()))
        .client(mtls_client(&pki, &sent), Scheme::HTTPS)
        .spawn()
        .expect("checker");

    until("condemned after its failed probes", || {
        set.endpoints()[0].state().health() == Health::Unhealthy
    })
    .await;
    assert!(sent.lock().map(|s| s.len()).unwrap_or(0) >= 2);
    assert_eq!(
        plaintext.stats().requests,
        0,
        "no HTTP request reached the plaintext listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_probe_cannot_pass_a_mutual_tls_server() {
    let pki = pki();
    let (addr, seen) = mtls_server(&pki).await;
    let users = ServiceName::new("users").expect("name");
    let set = EndpointSet::new(users.clone(), vec![Endpoint::builder(addr).build()]);
    let source = set.clone();
    // No client given: plain HTTP, which the server cannot take for a
    // handshake.
    let config = UpstreamCheckConfig {
        unhealthy_until_checked: false,
        ..config()
    };
    let _checker = UpstreamHealthChecker::spawn(users, config, move || Some(source.clone()), None)
        .expect("checker");
    until("condemned after its failed probes", || {
        set.endpoints()[0].state().health() == Health::Unhealthy
    })
    .await;
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), 0);
}

#[test]
fn a_scheme_other_than_http_or_https_is_refused_by_name() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let err =
        UpstreamHealthChecker::builder(ServiceName::new("users").expect("name"), config(), || None)
            .client(ProbeClient::plaintext(), "ftp".parse().expect("scheme"))
            .spawn()
            .expect_err("ftp");
    assert!(err.to_string().contains("health.upstream.scheme"), "{err}");
}
