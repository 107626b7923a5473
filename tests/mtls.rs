//! Mutual TLS under the whole pipeline, and to Consul: mesh-tls's
//! connector in place of the plain `HttpConnector`, against real mTLS
//! servers on 127.0.0.1 (certificates made with rcgen).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::core::ServiceName;
use mesh::discover::{ConsulRegistry, Registry};
use mesh::prelude::*;
use mesh::tls::{ClientTls, Credentials, IdentityPolicy, PeerIdentity, PemSource, ServerTls};
use mesh_testkit::consul;
use mesh_testkit::pki::{Ca, Leaf};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

fn credentials(ca: &Ca, ca_pem: &str, service: &str) -> Credentials {
    let issued = ca.issue(Leaf::service(service));
    Credentials::load(PemSource::memory(
        issued.cert_pem,
        issued.key_pem,
        ca_pem.to_owned(),
    ))
    .expect("credentials")
}

/// An mTLS upstream answering "<its port> <caller's SPIFFE ID>".
async fn upstream(credentials: Credentials) -> SocketAddr {
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
    tokio::spawn(async move {
        let app = tower::service_fn(move |req: Request<Incoming>| async move {
            let caller = req
                .extensions()
                .get::<PeerIdentity>()
                .and_then(|p| p.spiffe_id())
                .map(|id| id.to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "{} {caller}",
                addr.port()
            )))))
        });
        tls.serve(listener, app).await
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_speaks_mutual_tls_and_routes_around_an_impostor() {
    let ca = Ca::new("mesh CA");
    let impostor_ca = Ca::new("impostor CA");
    let mut addrs = Vec::new();
    for _ in 0..3 {
        addrs.push(upstream(credentials(&ca, &ca.pem, "users")).await);
    }
    // Listed under the same service, but its certificate comes from
    // another CA: the client must refuse it and go elsewhere.
    let impostor = upstream(credentials(&impostor_ca, &ca.pem, "users")).await;
    addrs.push(impostor);

    let registry = StaticRegistry::builder()
        .service("users", addrs.iter().map(|a| a.to_string()))
        .build()
        .expect("static list");
    let tls = ClientTls::builder(credentials(&ca, &ca.pem, "api-gateway"))
        .verify_identity(
            IdentityPolicy::new().allow(
                "spiffe://cluster.local/ns/default/sa/users"
                    .parse()
                    .expect("id"),
            ),
        )
        .build()
        .expect("client tls");
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(tls.connector());
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryConfig::builder()
                .max_retries(2)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .expect("retry"),
        ))
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(
            BreakerConfig::builder()
                .scope(BreakerScope::Endpoint)
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(30))
                .build()
                .expect("breaker"),
        ))
        .timeout(Duration::from_secs(5))
        .service(client);

    let mut served: HashMap<u16, u32> = HashMap::new();
    for _ in 0..30 {
        let req = Request::get("https://users/api")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = stack
            .clone()
            .oneshot(req)
            .await
            .expect("every call succeeds");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        let (port, caller) = body.split_once(' ').expect("port and caller");
        assert_eq!(caller, "spiffe://cluster.local/ns/default/sa/api-gateway");
        *served.entry(port.parse().expect("port")).or_default() += 1;
    }
    assert_eq!(served.get(&impostor.port()), None, "the impostor served");
    assert_eq!(served.len(), 3, "{served:?}");
    let failures = tls.metrics().snapshot().failures_for("unknown-ca");
    assert!(failures >= 1, "the impostor's handshake was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_over_mutual_tls() {
    let ca = Ca::new("consul CA");
    let server = ServerTls::builder(credentials(&ca, &ca.pem, "consul"))
        .build()
        .expect("server");
    let consul_side = server.clone();
    let double = consul::ConsulDouble::start_on(move |tcp| {
        let server = server.clone();
        async move { server.accept(tcp, None).await.ok().map(|(tls, _)| tls) }
    })
    .await;
    double.set(
        "users",
        vec![consul::entry("n1", "10.0.0.1", 8080, "passing")],
    );
    let https = format!("https://localhost:{}", double.addr.port());

    // Without a TLS connector the address is refused up front.
    let err = ConsulRegistry::builder(&https)
        .build()
        .expect_err("plain TCP");
    assert!(err.to_string().contains("TLS connector"), "{err}");

    let tls = ClientTls::builder(credentials(&ca, &ca.pem, "api-gateway"))
        .build()
        .expect("client tls");
    let registry: Arc<dyn Registry> = Arc::new(
        ConsulRegistry::builder(&https)
            .connector(tls.connector())
            .build()
            .expect("consul"),
    );
    let set = registry
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .expect("resolved over mTLS");
    assert_eq!(set.len(), 1);
    assert_eq!(set.endpoints()[0].address().port(), 8080);
    assert_eq!(tls.metrics().snapshot().handshakes, 1);

    // A client certificate from another CA is refused by Consul's side.
    let stranger_ca = Ca::new("stranger CA");
    let stranger = ClientTls::builder(credentials(&stranger_ca, &ca.pem, "api-gateway"))
        .build()
        .expect("client tls");
    let refused = ConsulRegistry::builder(&https)
        .connector(stranger.connector())
        .build()
        .expect("consul")
        .resolve(&ServiceName::new("users").expect("name"))
        .await;
    let err = refused.expect_err("a stranger resolved over mTLS");
    assert!(err.to_string().contains("Consul request failed"), "{err}");
    // Consul's side refused the certificate for its CA. (With TLS 1.3 the
    // client learns it on its first read, as an alert or, over h2, a
    // closed connection.)
    let counted = async {
        while consul_side.metrics().snapshot().failures_for("unknown-ca") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), counted)
        .await
        .expect("the refusal is counted on Consul's side");
}
