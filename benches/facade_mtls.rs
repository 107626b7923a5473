//! Mutual TLS through the facade on pooled connections: `MeshClient` built
//! from a TOML file with `[tls]` on and a per-service `peer_identity`,
//! against the raw anchor (hyper-util's client over hyper-rustls with a
//! fixed rustls `ClientConfig`: client certificate and CA roots), over the
//! same mutual TLS servers (`ServerTls::serve`, two instances of `users`),
//! in one run on loopback.
//!
//! Two more stacks separate the TLS delta from the stack's own cost: the
//! same `MeshClient` configuration with TLS off and raw hyper-util, both
//! over plain TCP to two plain hyper servers. A second, independent raw
//! TLS client measured like the others shows the noise floor (an A/A
//! pair): a ratio inside its spread is nothing measurable.
//!
//! Closed loop, two shapes: one caller, one request at a time, and 32
//! concurrent callers. Client, servers and measurement share two cores,
//! so the stacks alternate in rounds (each round rotates which stack goes
//! first) and the table gives medians over the rounds; the ratios are the
//! medians of the per-round ratios to the anchor measured in that round.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench facade_mtls
//! ```

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{der, Ca, Issued, Leaf};
use mesh_tls::rustls::ClientConfig;
use mesh_tls::{ClientTls, Credentials, IdentityPolicy, MeshConnector, PemSource, ServerTls};
use tokio::net::TcpListener;

/// Rounds of every stack in both shapes.
const ROUNDS: usize = 15;
/// Requests per stack and round, one caller.
const SEQUENTIAL: usize = 4_000;
/// Concurrent callers in the second shape.
const CALLERS: usize = 32;
/// Requests per stack and round, shared by the concurrent callers.
const CONCURRENT: usize = 24_000;
/// Unmeasured requests per stack before the first round (connections,
/// handshakes, the facade's first discovery answer).
const WARM_UP: usize = 1_000;
/// Instances of the called service, per transport.
const INSTANCES: usize = 2;
/// The caller's identity (its certificate), the one the servers admit.
const CALLER: &str = "spiffe://cluster.local/ns/default/sa/api-gateway";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// A mutual TLS instance of `users` (its certificate carries
/// `spiffe://cluster.local/ns/default/sa/users`), admitting the gateway.
async fn tls_server(ca: &Ca) -> SocketAddr {
    let issued = ca.issue(Leaf::service("users"));
    let credentials = Credentials::load(PemSource::memory(
        issued.cert_pem,
        issued.key_pem,
        ca.pem.clone(),
    ))
    .expect("credentials");
    let tls = ServerTls::builder(credentials)
        .allow(IdentityPolicy::new().allow(CALLER.parse().expect("id")))
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { tls.serve(listener, tower::service_fn(hello)).await });
    addr
}

/// A plain instance: hyper-util's auto server over TCP, the same answer.
async fn plain_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(hello))
                    .await;
            });
        }
    });
    addr
}

fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http
}

/// The anchor: hyper-rustls over a fixed rustls configuration (the
/// gateway's certificate, the mesh CA as the only root), h2 or HTTP/1.1
/// by ALPN as the facade's connector offers them.
fn raw_tls_client(
    ca: &Ca,
    gateway: &Issued,
) -> Client<HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let config = ClientConfig::builder_with_provider(der::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(der::roots(ca))
        .with_client_auth_cert(der::chain(gateway), der::key(gateway))
        .expect("client config");
    let mut http = tcp();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// hyper-util over mesh-tls's own connector, expecting `users`'s
/// identity as the facade's client for `users` does: the connector and
/// its record layer without the facade.
fn mesh_connector_client(
    ca: &Ca,
    gateway: &Issued,
) -> Client<MeshConnector<HttpConnector>, Empty<Bytes>> {
    let credentials = Credentials::load(PemSource::memory(
        gateway.cert_pem.clone(),
        gateway.key_pem.clone(),
        ca.pem.clone(),
    ))
    .expect("credentials");
    let tls = ClientTls::builder(credentials)
        .expect_identity(
            "spiffe://cluster.local/ns/default/sa/users"
                .parse()
                .expect("id"),
        )
        .build()
        .expect("client");
    let mut http = tcp();
    http.enforce_http(false);
    Client::builder(TokioExecutor::new()).build(tls.wrap(http))
}

/// `MeshClient` as a user builds one: a TOML file, loaded and built.
async fn mesh_client(dir: &TempDir, name: &str, text: &str) -> MeshClient {
    let file = dir.path(name);
    std::fs::write(&file, text).expect("write config");
    let config = MeshConfig::load_with_env(&file, |_| None).expect("config");
    MeshClient::from_config(config).await.expect("client")
}

/// Production profile (retries, budget and breakers at its defaults),
/// static discovery of `users` at `addrs`, then `extra`.
fn config_text(addrs: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "profile = \"production\"\n\
         [service]\nname = \"api-gateway\"\n\
         [discovery]\nkind = \"static\"\n\
         [discovery.services]\nusers = [{}]\n{extra}",
        list.join(", ")
    )
}

/// What is measured: one stack, called the way its users call it.
enum Stack {
    RawTls(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
    MeshConnector(Client<MeshConnector<HttpConnector>, Empty<Bytes>>),
    RawPlain(Client<HttpConnector, Empty<Bytes>>),
    Mesh(MeshClient),
}

/// A stack with its name and, for the raw ones, the instances it round
/// robins over by hand.
struct Measured {
    name: &'static str,
    stack: Stack,
    uris: Vec<Uri>,
    next: AtomicUsize,
}

impl Measured {
    fn raw(name: &'static str, stack: Stack, scheme: &str, addrs: &[SocketAddr]) -> Measured {
        let uris = addrs
            .iter()
            .map(|a| format!("{scheme}://{a}/").parse().expect("uri"))
            .collect();
        Measured {
            name,
            stack,
            uris,
            next: AtomicUsize::new(0),
        }
    }

    fn mesh(name: &'static str, client: MeshClient) -> Measured {
        Measured {
            name,
            stack: Stack::Mesh(client),
            uris: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    fn uri(&self) -> Uri {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.uris.len();
        self.uris[i].clone()
    }

    /// One GET, body read; the HTTP version on success.
    async fn call(&self) -> Option<Version> {
        match &self.stack {
            Stack::RawTls(client) => read(client.get(self.uri()).await.ok()?).await,
            Stack::MeshConnector(client) => read(client.get(self.uri()).await.ok()?).await,
            Stack::RawPlain(client) => read(client.get(self.uri()).await.ok()?).await,
            Stack::Mesh(client) => {
                let response = client.get("users", "/", CallOptions::default()).await;
                read(response.ok()?).await
            }
        }
    }
}

async fn read<B: http_body::Body>(response: Response<B>) -> Option<Version> {
    let version = response.version();
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?;
    std::hint::black_box(body);
    Some(version)
}

/// One stack's pass: requests per second and sorted latencies.
struct Pass {
    per_second: f64,
    latencies: Vec<Duration>,
    failed: usize,
}

/// `total` requests by `callers` closed-loop callers.
async fn pass(stack: &Arc<Measured>, callers: usize, total: usize) -> Pass {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (stack, next) = (Arc::clone(stack), Arc::clone(&next));
        tasks.spawn(async move {
            let (mut latencies, mut failed) = (Vec::with_capacity(total / callers + 1), 0);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let ok = stack.call().await.is_some();
                latencies.push(t.elapsed());
                failed += usize::from(!ok);
            }
            (latencies, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::with_capacity(total), 0);
    while let Some(done) = tasks.join_next().await {
        let (l, f) = done.expect("caller");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Pass {
        per_second: (total - failed) as f64 / elapsed.as_secs_f64(),
        latencies,
        failed,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The spread of `values`: its lowest and highest quarter's bounds.
fn quartiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 4], values[values.len() * 3 / 4])
}

/// Per round, per stack: requests per second, p50 and p99 in µs.
#[derive(Clone, Copy, Default)]
struct Sample {
    per_second: f64,
    p50: f64,
    p99: f64,
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    runtime.block_on(run());
}

async fn run() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("facade-mtls-bench");
    let gateway = ca.issue(Leaf::service("api-gateway"));
    let [cert, key, ca_path] = dir.write("gateway", &gateway, &ca.pem);

    let mut tls_addrs = Vec::new();
    let mut plain_addrs = Vec::new();
    for _ in 0..INSTANCES {
        tls_addrs.push(tls_server(&ca).await);
        plain_addrs.push(plain_server().await);
    }
    let tls_section = format!(
        "[tls]\nenabled = true\ncert_path = {:?}\nkey_path = {:?}\nca_path = {:?}\n\
         peer_identity = \"spiffe://cluster.local/ns/default/sa/{{service}}\"\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca_path.display().to_string(),
    );
    let mesh_tls = mesh_client(&dir, "tls.toml", &config_text(&tls_addrs, &tls_section)).await;
    let mesh_plain = mesh_client(&dir, "plain.toml", &config_text(&plain_addrs, "")).await;

    let stacks: Vec<Arc<Measured>> = vec![
        Measured::raw(
            "raw hyper + rustls (anchor)",
            Stack::RawTls(raw_tls_client(&ca, &gateway)),
            "https",
            &tls_addrs,
        ),
        Measured::raw(
            "raw hyper + rustls, 2nd client (A/A)",
            Stack::RawTls(raw_tls_client(&ca, &gateway)),
            "https",
            &tls_addrs,
        ),
        Measured::raw(
            "raw hyper + mesh-tls connector",
            Stack::MeshConnector(mesh_connector_client(&ca, &gateway)),
            "https",
            &tls_addrs,
        ),
        Measured::mesh("MeshClient, mTLS + peer identity", mesh_tls),
        Measured::raw(
            "raw hyper, plain TCP",
            Stack::RawPlain(Client::builder(TokioExecutor::new()).build(tcp())),
            "http",
            &plain_addrs,
        ),
        Measured::mesh("MeshClient, TLS off, plain TCP", mesh_plain),
    ]
    .into_iter()
    .map(Arc::new)
    .collect();
    const ANCHOR: usize = 0;
    /// For each stack, its raw counterpart on the same transport.
    const OWN_RAW: [usize; 6] = [0, 0, 0, 0, 4, 4];

    eprintln!("warming up: {WARM_UP} requests per stack, {CALLERS} callers");
    for stack in &stacks {
        let version = stack.call().await.expect("first call");
        let warm = pass(stack, CALLERS, WARM_UP).await;
        assert_eq!(warm.failed, 0, "{}: failures while warming up", stack.name);
        eprintln!("  {:<38} {version:?}", stack.name);
    }
    let handshakes_before = tls_handshakes(&stacks);

    let shapes = [
        ("1 caller", 1, SEQUENTIAL),
        ("32 callers", CALLERS, CONCURRENT),
    ];
    // samples[shape][stack][round]
    let mut samples = vec![vec![Vec::<Sample>::new(); stacks.len()]; shapes.len()];
    let mut failed = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        for (s, &(_, callers, total)) in shapes.iter().enumerate() {
            for k in 0..stacks.len() {
                let i = (round + k) % stacks.len();
                let p = pass(&stacks[i], callers, total).await;
                failed += p.failed;
                samples[s][i].push(Sample {
                    per_second: p.per_second,
                    p50: pct(&p.latencies, 0.50).as_secs_f64() * 1e6,
                    p99: pct(&p.latencies, 0.99).as_secs_f64() * 1e6,
                });
            }
        }
        eprintln!(
            "round {}/{ROUNDS} done, {:.1?}",
            round + 1,
            started.elapsed()
        );
    }
    let handshakes_after = tls_handshakes(&stacks);

    println!();
    println!(
        "{ROUNDS} rounds; per round and stack {SEQUENTIAL} requests (1 caller) and \
         {CONCURRENT} ({CALLERS} callers); {INSTANCES} instances per transport; \
         medians over rounds; ratios are medians of per-round ratios (IQR in brackets)"
    );
    println!();
    println!(
        "| callers | stack | req/s | req/s vs anchor | req/s vs own raw | p50 | p99 | p99 vs anchor | p99 vs own raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (s, &(shape, _, _)) in shapes.iter().enumerate() {
        for (i, stack) in stacks.iter().enumerate() {
            let mine = &samples[s][i];
            let ratio = |to: usize, f: fn(&Sample) -> f64| {
                let per_round: Vec<f64> = mine
                    .iter()
                    .zip(&samples[s][to])
                    .map(|(a, b)| f(a) / f(b))
                    .collect();
                let (low, high) = quartiles(per_round.clone());
                format!("{:.3}x [{low:.3}-{high:.3}]", median(per_round))
            };
            let own = OWN_RAW[i];
            let own_column = |f: fn(&Sample) -> f64| {
                if own == ANCHOR || own == i {
                    "".to_owned()
                } else {
                    ratio(own, f)
                }
            };
            println!(
                "| {shape} | {} | {:.0} | {} | {} | {:.0} µs | {:.0} µs | {} | {} |",
                stack.name,
                median(mine.iter().map(|x| x.per_second).collect()),
                ratio(ANCHOR, |x| x.per_second),
                own_column(|x| x.per_second),
                median(mine.iter().map(|x| x.p50).collect()),
                median(mine.iter().map(|x| x.p99).collect()),
                ratio(ANCHOR, |x| x.p99),
                own_column(|x| x.p99),
            );
        }
    }
    println!();
    println!(
        "failed requests: {failed}; MeshClient TLS handshakes during the rounds: {} \
         (pooled: 0 expected); total run {:.1?}",
        handshakes_after - handshakes_before,
        started.elapsed()
    );

    for stack in &stacks {
        if let Stack::Mesh(client) = &stack.stack {
            client.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// Handshakes counted by the facade's mutual TLS client.
fn tls_handshakes(stacks: &[Arc<Measured>]) -> u64 {
    stacks
        .iter()
        .filter_map(|s| match &s.stack {
            Stack::Mesh(client) => client.metrics().tls.map(|t| t.handshakes),
            _ => None,
        })
        .sum()
}
