//! Mutual TLS through this crate against raw hyper over tokio-rustls with
//! the same certificates, in one run.
//!
//! - `pooled/*`: one request at a time over a pooled connection (ALPN h2
//!   on both sides), so the figure is the per-request cost once the
//!   handshake is paid. Raw: hyper-rustls with a fixed rustls
//!   `ClientConfig`, against a tokio-rustls acceptor with rustls's own
//!   client verifier. Mesh: `ClientTls::connector` against
//!   `ServerTls::serve` (rotating material, identity checks on both ends:
//!   the client expects the one identity of the service it calls, the
//!   server admits callers of the trust domain).
//! - `handshake/*`: a fresh TCP connection and full TLS 1.3 handshake with
//!   client certificate, no request.
//!
//! Client, server and criterion share two cores, and whichever pooled
//! benchmark runs second has been measured 10-60% slower in either order.
//! So before criterion runs, the two pooled stacks also run in
//! alternating rounds (15 rounds of 1000 requests each) and the medians
//! are printed: that ratio is the one to read.
//!
//! ```text
//! cargo bench -p mesh-tls --bench mtls
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_testkit::pki::der::{chain, key, provider, roots};
use mesh_testkit::pki::{Ca, Issued, Leaf};
use mesh_tls::rustls::pki_types::ServerName;
use mesh_tls::rustls::server::WebPkiClientVerifier;
use mesh_tls::rustls::{ClientConfig, ServerConfig};
use mesh_tls::{ClientTls, Credentials, IdentityPolicy, PemSource, ServerTls};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Raw: tokio-rustls with rustls's own client verifier, hyper-util's auto
/// server.
async fn raw_server(ca: &Ca, issued: &Issued) -> SocketAddr {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .expect("verifier");
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(issued), key(issued))
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(hello))
                        .await;
                }
            });
        }
    });
    addr
}

async fn mesh_server(ca: &Ca, issued: &Issued) -> SocketAddr {
    let credentials = Credentials::load(PemSource::memory(
        issued.cert_pem.clone(),
        issued.key_pem.clone(),
        ca.pem.clone(),
    ))
    .expect("credentials");
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
    tokio::spawn(async move { tls.serve(listener, tower::service_fn(hello)).await });
    addr
}

fn raw_client_config(ca: &Ca, issued: &Issued) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(chain(issued), key(issued))
        .expect("client config")
}

async fn requests<C>(client: &Client<C, Empty<Bytes>>, uri: &http::Uri, n: u64) -> Duration
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let started = Instant::now();
    for _ in 0..n {
        let response = client.get(uri.clone()).await.expect("request");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.expect("body");
        std::hint::black_box(body);
    }
    started.elapsed()
}

async fn handshakes(config: Arc<ClientConfig>, addr: SocketAddr, n: u64) -> Duration {
    let connector = tokio_rustls::TlsConnector::from(config);
    let started = Instant::now();
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        std::hint::black_box(tls);
    }
    started.elapsed()
}

pub(crate) fn mtls(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = Ca::new("bench CA");
    let server_cert = ca.issue(Leaf::service("users"));
    let client_cert = ca.issue(Leaf::service("api"));
    let (raw_addr, mesh_addr) = rt.block_on(async {
        (
            raw_server(&ca, &server_cert).await,
            mesh_server(&ca, &server_cert).await,
        )
    });

    // Raw: hyper-rustls over a fixed rustls configuration.
    let raw_config = raw_client_config(&ca, &client_cert);
    let raw_client = {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(raw_config.clone())
            .https_only()
            .enable_all_versions()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https)
    };
    let mesh_tls = ClientTls::builder(
        Credentials::load(PemSource::memory(
            client_cert.cert_pem.clone(),
            client_cert.key_pem.clone(),
            ca.pem.clone(),
        ))
        .expect("credentials"),
    )
    // As the facade calls a service: only its own identity is accepted.
    .expect_identity(
        "spiffe://cluster.local/ns/default/sa/users"
            .parse()
            .expect("id"),
    )
    .build()
    .expect("client");
    let mesh_client =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(mesh_tls.connector());
    let raw_uri: http::Uri = format!("https://localhost:{}/", raw_addr.port())
        .parse()
        .expect("uri");
    let mesh_uri: http::Uri = format!("https://localhost:{}/", mesh_addr.port())
        .parse()
        .expect("uri");

    let per_request = |d: Duration, n: u32| d.as_secs_f64() * 1e6 / f64::from(n);
    let (mut raw, mut mesh) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        raw.push(per_request(
            rt.block_on(requests(&raw_client, &raw_uri, 1000)),
            1000,
        ));
        mesh.push(per_request(
            rt.block_on(requests(&mesh_client, &mesh_uri, 1000)),
            1000,
        ));
    }
    raw.sort_by(f64::total_cmp);
    mesh.sort_by(f64::total_cmp);
    eprintln!(
        "pooled, alternating rounds, median per request: raw {:.1} µs, mesh {:.1} µs, mesh/raw {:.3}",
        raw[7],
        mesh[7],
        mesh[7] / raw[7]
    );

    let mut group = c.benchmark_group("pooled");
    group.bench_function("raw_hyper_tokio_rustls", |b| {
        b.iter_custom(|n| rt.block_on(requests(&raw_client, &raw_uri, n)))
    });
    group.bench_function("mesh_tls", |b| {
        b.iter_custom(|n| rt.block_on(requests(&mesh_client, &mesh_uri, n)))
    });
    group.finish();

    let raw_config = Arc::new(raw_config);
    let mut group = c.benchmark_group("handshake");
    group.bench_function("raw_tokio_rustls", |b| {
        b.iter_custom(|n| rt.block_on(handshakes(Arc::clone(&raw_config), raw_addr, n)))
    });
    group.bench_function("mesh_tls", |b| {
        b.iter_custom(|n| rt.block_on(handshakes(mesh_tls.rustls_config(), mesh_addr, n)))
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::mtls);
}
criterion_main!(group::benches);
