//! gRPC through tower-mesh against tonic over a raw channel, in one
//! process and one run, over three loopback tonic servers:
//!
//! - stacks: tonic over hyper-util's pooled client speaking HTTP/2 by
//!   prior knowledge (h2c), round robin by hand, no resilience (the
//!   anchor); and `MeshClient::grpc_channel()`, the client built from a
//!   TOML config (static discovery, `protocol = "h2c"`, every other key
//!   at its default).
//! - scenes: healthy; one instance answering every call UNAVAILABLE
//!   (trailers-only, as tonic answers `Err(Status::unavailable(..))`)
//!   while another answers 50 ms late.
//! - loads: a closed loop (32 callers, each sending its next call when
//!   the last is answered) and an open loop (5,000 calls per second
//!   whatever the answers do; at most 1,024 waiting, more are shed and
//!   count as failures), 1.5 s per run after 250 ms of unmeasured calls,
//!   each run with a new client; three rounds, the stacks' order
//!   alternating. Medians over rounds; each ratio is the median of the
//!   per-round ratios of tower-mesh to the anchor.
//! - per load, scene and stack: successes per second, success rate, p50,
//!   p99, calls that reached a server per call sent (attempts), the share
//!   of calls sent that reached the slow instance.
//! - streamed-call memory: client-streaming uploads of 1, 8 and 64 MiB
//!   (64 KiB messages, produced as they are sent) through each stack; the
//!   peak of live heap bytes, client and servers together, above the
//!   level at the call's start (sampled by a thread every ~50 µs and at
//!   every message produced), median of three calls.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench grpc
//! ```
//!
//! Prints two tables and writes `target/grpc.json`.

#[path = "output.rs"]
mod output;

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mesh::prelude::BoxError;
use mesh::{MeshClient, MeshConfig};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tonic::client::{Grpc, GrpcService};
use tonic::Status;
use tonic_prost::ProstCodec;
use tower::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const INSTANCES: usize = 3;
/// Each run is measured this long...
const RUN: Duration = Duration::from_millis(1500);
/// ...after this long of the same load, unmeasured: connections, the
/// balancer's estimates and the breakers' counts, as in service.
const WARM_UP: Duration = Duration::from_millis(250);
const ROUNDS: usize = 3;
/// Callers of the closed loop.
const CALLERS: usize = 32;
/// Calls arriving per millisecond in the open loop (5,000 per second)...
const RATE_PER_MS: usize = 5;
/// ...and at most this many waiting at once before arrivals are shed.
const MAX_IN_FLIGHT: usize = 1024;
/// A call not answered by then counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How late the slow instance answers.
const SLOW: Duration = Duration::from_millis(50);
/// Which instances fail, in the scene that has them.
const UNAVAILABLE_ONE: usize = 2;
const SLOW_ONE: usize = 1;
/// The message size of uploads, and their sizes.
const CHUNK: usize = 64 * 1024;
const UPLOADS_MIB: [usize; 3] = [1, 8, 64];
const UPLOAD_REPEATS: usize = 3;

const GET: &str = "/store.Store/Get";
const PUT: &str = "/store.Store/Put";

/// `store.Chunk`: a call's argument, or a piece of an upload.
#[derive(Clone, PartialEq, prost::Message)]
struct Chunk {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// `store.Count`: a length, or the bytes an upload delivered.
#[derive(Clone, PartialEq, prost::Message)]
struct Count {
    #[prost(uint64, tag = "1")]
    bytes: u64,
}

// === the servers ===

/// How an instance answers, switched between runs.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Good,
    /// Every call UNAVAILABLE, trailers-only, the request unread.
    Unavailable,
    /// Every call answered [`SLOW`] late.
    Slow,
}

/// One tonic server: `Get` (unary, answers the argument's length) and
/// `Put` (client stream, answers the bytes received).
#[derive(Clone)]
struct Store {
    mode: Arc<AtomicU8>,
    /// Calls that reached it, whatever it answered.
    calls: Arc<AtomicU64>,
}

impl Store {
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Unavailable,
            2 => Mode::Slow,
            _ => Mode::Good,
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }
}

impl Service<Request<Incoming>> for Store {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mode = self.mode();
        Box::pin(async move {
            match mode {
                Mode::Unavailable => return Ok(Status::unavailable("draining").into_http()),
                Mode::Slow => tokio::time::sleep(SLOW).await,
                Mode::Good => {}
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Count, Chunk>::default());
            Ok(match req.uri().path() {
                GET => grpc.unary(get(), req).await,
                PUT => grpc.client_streaming(put(), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

fn get() -> impl Service<
    tonic::Request<Chunk>,
    Response = tonic::Response<Count>,
    Error = Status,
    Future = impl Send,
> {
    tower::service_fn(|req: tonic::Request<Chunk>| async move {
        let bytes = req.into_inner().data.len() as u64;
        Ok(tonic::Response::new(Count { bytes }))
    })
}

/// Counts the bytes uploaded, keeping none of them.
fn put() -> impl Service<
    tonic::Request<tonic::Streaming<Chunk>>,
    Response = tonic::Response<Count>,
    Error = Status,
    Future = impl Send,
> {
    tower::service_fn(|req: tonic::Request<tonic::Streaming<Chunk>>| async move {
        let mut stream = req.into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await? {
            bytes += chunk.data.len() as u64;
        }
        Ok(tonic::Response::new(Count { bytes }))
    })
}

/// A store on a loopback port (HTTP/2 only, as gRPC requires).
async fn serve() -> (SocketAddr, Store) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = Store {
        mode: Arc::new(AtomicU8::new(Mode::Good as u8)),
        calls: Arc::default(),
    };
    let served = store.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // As tonic's own server does: without it, Nagle's algorithm
            // meets delayed ACKs and small answers wait up to 40 ms.
            let _ = tcp.set_nodelay(true);
            let store = served.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(store))
                    .await;
            });
        }
    });
    (addr, store)
}

// === the stacks ===

/// What the drivers need of a channel: what tonic's generated clients
/// ask of one, and to be shared by spawned callers.
trait Channel:
    GrpcService<
        tonic::body::Body,
        Error: Into<BoxError> + Send,
        Future: Send,
        ResponseBody: http_body::Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> Channel for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<BoxError> + Send,
            Future: Send,
            ResponseBody: http_body::Body<Data = Bytes, Error: Into<BoxError> + Send>
                              + Send
                              + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The anchor: tonic over hyper-util's pooled h2c client, each call sent
/// to the next instance in turn.
#[derive(Clone)]
struct RawChannel {
    client: Client<HttpConnector, tonic::body::Body>,
    instances: Arc<[Authority]>,
    next: Arc<AtomicUsize>,
}

impl RawChannel {
    fn new(instances: &[SocketAddr]) -> RawChannel {
        // As tonic's own `Channel` connects (and the mesh's transport):
        // `build_http()`'s connector leaves Nagle's algorithm on, and
        // then a loaded client waits for delayed ACKs (in a first run,
        // servers without it too: 1,700 calls per second and a 90 ms
        // p99, against about 30,000 and 3-6 ms with it).
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        RawChannel {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(tcp),
            instances: instances
                .iter()
                .map(|a| a.to_string().parse().expect("authority"))
                .collect(),
            next: Arc::default(),
        }
    }
}

impl Service<Request<tonic::body::Body>> for RawChannel {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> ResponseFuture {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        let mut uri = req.uri().clone().into_parts();
        uri.authority = Some(self.instances[i].clone());
        *req.uri_mut() = Uri::from_parts(uri).expect("uri");
        self.client.request(req)
    }
}

/// The full stack, from the config a user would write.
async fn mesh_client(instances: &[SocketAddr]) -> MeshClient {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "bench"
[discovery]
kind = "static"
services = {{ store = [{}] }}
[services.store]
protocol = "h2c"
"#,
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

fn grpc<T: Channel>(channel: T) -> Grpc<T> {
    Grpc::with_origin(channel, Uri::from_static("http://store"))
}

// === the loads ===

/// What a run saw.
#[derive(Default)]
struct Tally {
    /// Of every call answered or timed out (shed arrivals have none).
    latencies: Vec<Duration>,
    calls: u64,
    ok: u64,
    elapsed: Duration,
}

impl Tally {
    fn record(&mut self, (ok, latency): (bool, Option<Duration>)) {
        self.calls += 1;
        self.ok += u64::from(ok);
        self.latencies.extend(latency);
    }

    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
    }
}

/// One `Get`, timed from `arrived`: whether it succeeded, and how long.
async fn call<T: Channel>(grpc: &mut Grpc<T>, arrived: Instant) -> (bool, Option<Duration>) {
    let get = async {
        grpc.ready().await.ok()?;
        let req = tonic::Request::new(Chunk { data: vec![1; 16] });
        let codec = ProstCodec::<Chunk, Count>::default();
        grpc.unary(req, PathAndQuery::from_static(GET), codec)
            .await
            .ok()
    };
    let ok = matches!(
        tokio::time::timeout(CALL_TIMEOUT, get).await,
        Ok(Some(r)) if r.get_ref().bytes == 16
    );
    (ok, Some(arrived.elapsed()))
}

/// [`CALLERS`] callers, each sending its next call when the last is
/// answered, for `time`.
async fn closed_loop<T: Channel>(grpc: Grpc<T>, time: Duration) -> Tally {
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let mut grpc = grpc.clone();
        callers.spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < time {
                tally.record(call(&mut grpc, Instant::now()).await);
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(done) = callers.join_next().await {
        all.merge(done.expect("caller"));
    }
    all.elapsed = started.elapsed();
    all
}

/// [`RATE_PER_MS`] arrivals every millisecond for `time`, whatever the
/// answers do, as a service's own callers send: a fast failure does not
/// bring the next call sooner, nor a slow answer delay it.
async fn open_loop<T: Channel>(grpc: Grpc<T>, time: Duration) -> Tally {
    let started = Instant::now();
    let waiting = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let mut tally = Tally::default();
    while started.elapsed() < time {
        tick.tick().await;
        for _ in 0..RATE_PER_MS {
            let arrived = Instant::now();
            let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
                tally.record((false, None));
                continue;
            };
            let mut grpc = grpc.clone();
            calls.spawn(async move {
                let answer = call(&mut grpc, arrived).await;
                drop(permit);
                answer
            });
        }
        while let Some(done) = calls.try_join_next() {
            tally.record(done.expect("call"));
        }
    }
    while let Some(done) = calls.join_next().await {
        tally.record(done.expect("call"));
    }
    tally.elapsed = started.elapsed();
    tally
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Closed,
    Open,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Closed => "closed, 32 callers",
            Load::Open => "open, 5,000/s",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scene {
    Healthy,
    UnavailableAndSlow,
}

impl Scene {
    fn name(self) -> &'static str {
        match self {
            Scene::Healthy => "healthy",
            Scene::UnavailableAndSlow => "one UNAVAILABLE + one slow",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stack {
    RawTonic,
    TowerMesh,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::RawTonic => "raw tonic",
            Stack::TowerMesh => "tower-mesh",
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Measure {
    throughput: f64,
    success: f64,
    p50: Duration,
    p99: Duration,
    /// Calls that reached an instance, per call sent.
    attempts: f64,
    /// Calls that reached the slow instance, per call sent.
    slow: f64,
}

/// Plays `scene` on the instances, warms a new `stack` up under `load`,
/// then measures it.
async fn run(lab: &Lab, load: Load, scene: Scene, stack: Stack) -> Measure {
    lab.play(scene);
    match stack {
        Stack::RawTonic => drive(lab, load, grpc(RawChannel::new(&lab.addrs))).await,
        Stack::TowerMesh => {
            let client = mesh_client(&lab.addrs).await;
            let measure = drive(lab, load, grpc(client.grpc_channel())).await;
            client.shutdown(Duration::from_secs(1)).await;
            measure
        }
    }
}

/// Warms `grpc` up under `load`, then measures it, counting what
/// reached each instance.
async fn drive<T: Channel>(lab: &Lab, load: Load, grpc: Grpc<T>) -> Measure {
    let looped = |time| match load {
        Load::Closed => {
            Box::pin(closed_loop(grpc.clone(), time)) as Pin<Box<dyn Future<Output = Tally> + Send>>
        }
        Load::Open => Box::pin(open_loop(grpc.clone(), time)),
    };
    looped(WARM_UP).await;
    let before = lab.calls();
    let mut tally = looped(RUN).await;
    let reached: Vec<u64> = lab
        .calls()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    tally.latencies.sort_unstable();
    let sent = tally.calls.max(1) as f64;
    Measure {
        throughput: tally.ok as f64 / tally.elapsed.as_secs_f64(),
        success: tally.ok as f64 / sent,
        p50: pct(&tally.latencies, 0.50),
        p99: pct(&tally.latencies, 0.99),
        attempts: reached.iter().sum::<u64>() as f64 / sent,
        slow: reached[SLOW_ONE] as f64 / sent,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The three instances, and the scenes played on them.
struct Lab {
    addrs: Vec<SocketAddr>,
    stores: Vec<Store>,
}

impl Lab {
    async fn new() -> Lab {
        let mut lab = Lab {
            addrs: Vec::new(),
            stores: Vec::new(),
        };
        for _ in 0..INSTANCES {
            let (addr, store) = serve().await;
            lab.addrs.push(addr);
            lab.stores.push(store);
        }
        lab
    }

    /// Calls that reached each instance so far.
    fn calls(&self) -> Vec<u64> {
        self.stores
            .iter()
            .map(|s| s.calls.load(Ordering::Relaxed))
            .collect()
    }

    fn play(&self, scene: Scene) {
        for store in &self.stores {
            store.set(Mode::Good);
        }
        if scene == Scene::UnavailableAndSlow {
            self.stores[UNAVAILABLE_ONE].set(Mode::Unavailable);
            self.stores[SLOW_ONE].set(Mode::Slow);
        }
    }
}

// === streamed-call memory ===

/// Live heap bytes now, the whole process.
fn live() -> usize {
    let stats = GLOBAL.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
}

/// The most live heap bytes seen since it was made.
#[derive(Default)]
struct Peak(AtomicUsize);

impl Peak {
    fn observe(&self) {
        self.0.fetch_max(live(), Ordering::Relaxed);
    }
}

/// Uploads `size` bytes through `grpc` in [`CHUNK`] messages made as
/// they are sent; returns the peak of live heap bytes above the level at
/// the call's start, or `None` when the upload failed.
async fn upload_peak<T: Channel>(grpc: &mut Grpc<T>, size: usize) -> Option<usize> {
    grpc.ready().await.ok()?;
    let start = live();
    let peak = Arc::new(Peak::default());
    let stop = Arc::new(AtomicBool::new(false));
    // A thread, not a task: it samples while the runtime's threads are busy.
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.observe();
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let chunks = {
        let peak = Arc::clone(&peak);
        tokio_stream::iter((0..size / CHUNK).map(move |_| {
            peak.observe();
            Chunk {
                data: vec![7; CHUNK],
            }
        }))
    };
    let stored = grpc
        .client_streaming(
            tonic::Request::new(chunks),
            PathAndQuery::from_static(PUT),
            ProstCodec::<Chunk, Count>::default(),
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let delivered = stored.ok()?.into_inner().bytes;
    (delivered == size as u64).then(|| peak.0.load(Ordering::Relaxed).saturating_sub(start))
}

#[derive(serde::Serialize)]
struct MemoryRow {
    stack: &'static str,
    upload_mib: usize,
    /// Median over [`UPLOAD_REPEATS`] calls; `None` if one failed.
    peak_bytes: Option<usize>,
}

async fn streamed_memory<T: Channel>(stack: Stack, mut grpc: Grpc<T>) -> Vec<MemoryRow> {
    // The connection and the pool's first buffers are not the stream's.
    upload_peak(&mut grpc, 1 << 20).await;
    let mut rows = Vec::new();
    for mib in UPLOADS_MIB {
        let mut peaks = Vec::new();
        for _ in 0..UPLOAD_REPEATS {
            peaks.push(upload_peak(&mut grpc, mib << 20).await);
        }
        let peaks: Option<Vec<usize>> = peaks.into_iter().collect();
        rows.push(MemoryRow {
            stack: stack.name(),
            upload_mib: mib,
            peak_bytes: peaks.map(|mut p| {
                p.sort_unstable();
                p[p.len() / 2]
            }),
        });
    }
    rows
}

// === the report ===

#[derive(serde::Serialize)]
struct Row {
    load: &'static str,
    scene: &'static str,
    stack: &'static str,
    throughput: f64,
    success_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    attempts_per_call: f64,
    /// Calls that reached the slow instance (in the scene that has one),
    /// per call sent.
    slow_share: f64,
    /// Medians of the per-round ratios to the anchor (1 for the anchor).
    throughput_vs_raw: f64,
    success_vs_raw: f64,
    p99_vs_raw: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians over rounds of `rounds` (per round: raw, then mesh).
fn summarize(load: Load, scene: Scene, rounds: &[[Measure; 2]]) -> [Row; 2] {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |i: usize, stack: Stack| {
        let of = |f: &dyn Fn(&Measure) -> f64| median(rounds.iter().map(|r| f(&r[i])).collect());
        let vs = |f: &dyn Fn(&Measure) -> f64| {
            median(rounds.iter().map(|r| f(&r[i]) / f(&r[0])).collect())
        };
        Row {
            load: load.name(),
            scene: scene.name(),
            stack: stack.name(),
            throughput: of(&|m| m.throughput),
            success_rate: of(&|m| m.success),
            p50_ms: of(&|m| ms(m.p50)),
            p99_ms: of(&|m| ms(m.p99)),
            attempts_per_call: of(&|m| m.attempts),
            slow_share: of(&|m| m.slow),
            throughput_vs_raw: vs(&|m| m.throughput),
            success_vs_raw: vs(&|m| m.success),
            p99_vs_raw: vs(&|m| ms(m.p99)),
        }
    };
    [row(0, Stack::RawTonic), row(1, Stack::TowerMesh)]
}

fn print_tables(rows: &[Row], memory: &[MemoryRow]) {
    println!(
        "{:<18} {:<26} {:<10} {:>7} {:>8} {:>8} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7}",
        "load",
        "scene",
        "stack",
        "req/s",
        "success",
        "p50",
        "p99",
        "att/call",
        "slow",
        "req/s x",
        "succ x",
        "p99 x"
    );
    for r in rows {
        println!(
            "{:<18} {:<26} {:<10} {:>7.0} {:>7.2}% {:>6.2}ms {:>6.2}ms {:>8.3} {:>5.1}% \
             {:>6.3}x {:>6.3}x {:>6.3}x",
            r.load,
            r.scene,
            r.stack,
            r.throughput,
            r.success_rate * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.attempts_per_call,
            r.slow_share * 100.0,
            r.throughput_vs_raw,
            r.success_vs_raw,
            r.p99_vs_raw
        );
    }
    println!(
        "\n{:<10} {:>10} {:>18}",
        "stack", "upload", "peak above start"
    );
    for m in memory {
        let peak = m.peak_bytes.map_or("failed".to_owned(), |b| {
            format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
        });
        println!("{:<10} {:>6} MiB {:>18}", m.stack, m.upload_mib, peak);
    }
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    let (rows, memory) = runtime.block_on(async {
        let lab = Lab::new().await;
        let mut rows = Vec::new();
        for load in [Load::Closed, Load::Open] {
            for scene in [Scene::Healthy, Scene::UnavailableAndSlow] {
                let mut rounds = Vec::new();
                for round in 0..ROUNDS {
                    // Alternate which stack runs first, so neither always
                    // meets the machine warmer.
                    let (raw, mesh) = if round % 2 == 0 {
                        let raw = run(&lab, load, scene, Stack::RawTonic).await;
                        (raw, run(&lab, load, scene, Stack::TowerMesh).await)
                    } else {
                        let mesh = run(&lab, load, scene, Stack::TowerMesh).await;
                        (run(&lab, load, scene, Stack::RawTonic).await, mesh)
                    };
                    rounds.push([raw, mesh]);
                }
                rows.extend(summarize(load, scene, &rounds));
            }
        }
        lab.play(Scene::Healthy);
        let mut memory = streamed_memory(Stack::RawTonic, grpc(RawChannel::new(&lab.addrs))).await;
        let client = mesh_client(&lab.addrs).await;
        memory.extend(streamed_memory(Stack::TowerMesh, grpc(client.grpc_channel())).await);
        (rows, memory)
    });
    print_tables(&rows, &memory);
    let json = serde_json::json!({ "runs": rows, "streamed_memory": memory });
    output::write_json("grpc", &json);
}
