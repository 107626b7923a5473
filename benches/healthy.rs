//! Healthy traffic in a closed loop, at 1, 32 and 256 callers: what each
//! stack costs when nothing is wrong, against the raw hyper client, in one
//! process and one run.
//!
//! - Four healthy loopback instances (`mesh-testkit` servers), one tokio
//!   runtime with 2 workers (or `--workers=N`) for client, servers and
//!   harness.
//! - Closed loop: each caller sends its next request once the last one's
//!   body has been read. Per run, [`WARM_UP`] of the same loop unmeasured
//!   (connections, discovery, estimates), then [`WINDOW`] measured.
//! - Each stack's run is paired with a raw hyper run just before it; the
//!   ratios (throughput, p99) are taken per pair, over [`ROUNDS`] rounds
//!   (or `--rounds=N`: more rounds steady the medians on a noisy machine),
//!   and the medians reported. About 4 minutes in all.
//! - Stacks: raw hyper (round robin by hand: the anchor); tower's retry
//!   (2 retries on errors and 5xx) over tower's 5 s timeout over it;
//!   tower-resilience's circuit breaker over it; `tower::balance::p2c`
//!   with `PeakEwma` behind a `Buffer` (no retry); tower-mesh assembled by
//!   hand (Retry, Discover from a `StaticRegistry`, Balance, Breaker) with
//!   the production profile's settings (see [`stacks::mesh_stack`]), balancing
//!   round robin, power of two choices or least response time, over the
//!   same hyper-util client as raw hyper, and round robin over
//!   `EndpointClient` (connections kept per endpoint); and
//!   `MeshClient` from a TOML configuration (static discovery, round
//!   robin, production profile), and from one that lists the instances
//!   and sets nothing else (power of two choices, the default strategy),
//!   both called as a user would for plain HTTP:
//!   `client.get(service, path, CallOptions::default())`.
//! - Per stack and number of callers: requests per second, p50, p99, the
//!   two ratios against the paired raw runs, and allocations per request
//!   (a counting allocator: client, servers and harness together, the same
//!   servers for every stack, so differences are the stacks').
//!
//! - `--scene=failing-and-slow`: the same loops with one instance
//!   answering 503 and another answering after [`SLOW`] (the other two
//!   healthy), as a check of a stack under failure at a number of callers
//!   would run them. Throughput counts successful requests only; p99 is
//!   over every request, failed ones included.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench healthy
//! cargo bench -p tower-mesh-benches --bench healthy -- --callers=32 --scene=failing-and-slow
//! cargo bench -p tower-mesh-benches --bench healthy -- --callers=32 "by hand, round robin"
//! cargo bench -p tower-mesh-benches --bench healthy -- --callers=32 --workers=1 "MeshClient (round"
//! cargo bench -p tower-mesh-benches --bench healthy -- --callers=32 --rounds=9 MeshClient
//! ```
//!
//! A word names every stack whose name contains it (`MeshClient`: both
//! `MeshClient` stacks).
//!
//! Prints a markdown table and writes `target/healthy.json` (every pair,
//! and the medians).

#[path = "output.rs"]
mod output;

#[path = "bench_runtime.rs"]
mod bench_runtime;

#[path = "healthy_stacks.rs"]
mod stacks;

use std::alloc::System;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::prelude::*;
use mesh_testkit::{anchors, Backend, Behavior};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const INSTANCES: usize = 4;
const CALLERS: [usize; 3] = [1, 32, 256];
const ROUNDS: usize = 3;
/// Each run's unmeasured start...
const WARM_UP: Duration = Duration::from_millis(300);
/// ...and its measured window.
const WINDOW: Duration = Duration::from_millis(1500);
/// A caller still waiting this long after the window closed is stuck.
const STUCK: Duration = Duration::from_secs(10);
/// How late the slow instance of the failing-and-slow scene answers (as
/// in the fault scenes of `benches/faults.rs`).
const SLOW: Duration = Duration::from_millis(50);
/// Latencies a run keeps room for before it starts, so the harness's own
/// allocations stay out of the count.
const EXPECTED_REQUESTS: usize = 100_000;

/// What the instances do while the stacks are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scene {
    /// Every instance answers 200 at once.
    Healthy,
    /// One instance answers 503, one answers 200 after [`SLOW`].
    FailingAndSlow,
}

impl Scene {
    const ALL: [Scene; 2] = [Scene::Healthy, Scene::FailingAndSlow];

    fn name(self) -> &'static str {
        match self {
            Scene::Healthy => "healthy",
            Scene::FailingAndSlow => "failing-and-slow",
        }
    }

    fn parse(name: &str) -> Option<Scene> {
        Scene::ALL.into_iter().find(|scene| scene.name() == name)
    }

    /// Gives `backends` (at least two) their behaviours.
    fn set_up(self, backends: &[Backend]) {
        if let (Scene::FailingAndSlow, [.., failing, slow]) = (self, backends) {
            failing.set_behavior(Behavior::Status(503));
            slow.set_behavior(Behavior::Slow(SLOW));
        }
    }

    /// Where the JSON report goes, under the target directory.
    fn report_name(self) -> &'static str {
        match self {
            Scene::Healthy => "healthy",
            Scene::FailingAndSlow => "healthy-failing-and-slow",
        }
    }
}

/// The stacks measured against raw hyper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    Raw,
    TowerRetryTimeout,
    Resilience,
    TowerP2cBuffer,
    MeshRoundRobin,
    MeshP2c,
    MeshLeastResponseTime,
    Facade,
    FacadeDefaults,
    MeshOverEndpointClient,
}

impl Stack {
    /// Each paired with a raw run, in this order, every round.
    const PAIRED: [Stack; 9] = [
        Stack::TowerRetryTimeout,
        Stack::Resilience,
        Stack::TowerP2cBuffer,
        Stack::MeshRoundRobin,
        Stack::MeshP2c,
        Stack::MeshLeastResponseTime,
        Stack::Facade,
        Stack::FacadeDefaults,
        Stack::MeshOverEndpointClient,
    ];

    fn name(self) -> &'static str {
        match self {
            Stack::Raw => "raw hyper (round robin)",
            Stack::TowerRetryTimeout => "tower retry + timeout",
            Stack::Resilience => "tower-resilience breaker",
            Stack::TowerP2cBuffer => "tower p2c + Buffer",
            Stack::MeshRoundRobin => "tower-mesh by hand, round robin",
            Stack::MeshP2c => "tower-mesh by hand, p2c",
            Stack::MeshLeastResponseTime => "tower-mesh by hand, least response time",
            Stack::Facade => "MeshClient (round robin)",
            Stack::FacadeDefaults => "MeshClient (defaults: p2c)",
            Stack::MeshOverEndpointClient => "tower-mesh by hand (round robin) over EndpointClient",
        }
    }
}

// === the loop ===

/// One caller's handle on a stack.
trait Caller: Clone + Send + 'static {
    /// Sends one request and reads its whole body: whether it succeeded.
    fn call_once(&mut self) -> impl Future<Output = bool> + Send;
}

/// A tower service, driven as tower asks: `ready`, then `call`.
#[derive(Clone)]
struct Tower<S>(S);

impl<S, B> Caller for Tower<S>
where
    S: Service<Request<stacks::Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Send,
    S::Future: Send,
    B: http_body::Body + Send,
    B::Data: Send,
{
    async fn call_once(&mut self) -> bool {
        let req = stacks::request();
        let Ok(svc) = self.0.ready().await else {
            return false;
        };
        match svc.call(req).await {
            Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }
}

/// `MeshClient`, called by service name and path.
#[derive(Clone)]
struct Facade(MeshClient);

impl Caller for Facade {
    async fn call_once(&mut self) -> bool {
        match self
            .0
            .get(stacks::SERVICE, "/", CallOptions::default())
            .await
        {
            Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }
}

/// What the callers of one loop saw.
struct Tally {
    /// Of every call, failed ones included.
    latencies: Vec<Duration>,
    failures: u64,
}

/// `callers` closed loops through `caller` until `length` has passed;
/// returns once every caller has read its last answer.
async fn closed_loop(caller: &impl Caller, callers: usize, length: Duration) -> Tally {
    let until = Instant::now() + length;
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let mut caller = caller.clone();
        let mut latencies = Vec::with_capacity(EXPECTED_REQUESTS / callers);
        loops.spawn(async move {
            let mut failures = 0;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let ok = caller.call_once().await;
                latencies.push(sent.elapsed());
                failures += u64::from(!ok);
            }
            (latencies, failures)
        });
    }
    let mut tally = Tally {
        latencies: Vec::with_capacity(EXPECTED_REQUESTS),
        failures: 0,
    };
    let joined = tokio::time::timeout(length + STUCK, async {
        while let Some(done) = loops.join_next().await {
            let (latencies, failures) = done.expect("caller");
            tally.latencies.extend(latencies);
            tally.failures += failures;
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "a caller was still waiting {STUCK:?} after the window closed"
    );
    tally
}

/// One run's figures.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Run {
    requests: u64,
    failures: u64,
    /// Successful requests per second.
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    allocations_per_request: f64,
}

/// Warms `caller` up, then measures it for [`WINDOW`].
async fn measure(caller: &impl Caller, callers: usize) -> Run {
    closed_loop(caller, callers, WARM_UP).await;
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let mut tally = closed_loop(caller, callers, WINDOW).await;
    let elapsed = started.elapsed();
    let allocations = region.change().allocations as f64;
    tally.latencies.sort_unstable();
    let requests = tally.latencies.len() as u64;
    let us = |p: f64| pct(&tally.latencies, p).as_secs_f64() * 1e6;
    Run {
        requests,
        failures: tally.failures,
        throughput: (requests - tally.failures) as f64 / elapsed.as_secs_f64(),
        p50_us: us(0.50),
        p99_us: us(0.99),
        allocations_per_request: allocations / requests.max(1) as f64,
    }
}

fn pct(l: &[Duration], p: f64) -> Duration {
    if l.is_empty() {
        return Duration::ZERO;
    }
    l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
}

// === the stacks ===

/// Builds `stack` afresh (fresh breakers, budgets, estimates) over
/// `client` or, for `MeshClient`, over its own transport, and measures it.
async fn run(
    stack: Stack,
    callers: usize,
    client: &anchors::HttpClient,
    addrs: &[SocketAddr],
) -> Run {
    let client = client.clone();
    match stack {
        Stack::Raw => measure(&Tower(anchors::RoundRobin::new(client, addrs)), callers).await,
        Stack::TowerRetryTimeout => {
            measure(&Tower(stacks::tower_retry_timeout(client, addrs)), callers).await
        }
        Stack::Resilience => {
            measure(&Tower(anchors::resilience_breaker(client, addrs)), callers).await
        }
        Stack::TowerP2cBuffer => measure(&Tower(anchors::tower_p2c(client, addrs)), callers).await,
        Stack::MeshRoundRobin => mesh_run(Strategy::RoundRobin, client, addrs, callers).await,
        Stack::MeshP2c => mesh_run(Strategy::PowerOfTwoChoices, client, addrs, callers).await,
        Stack::MeshLeastResponseTime => {
            mesh_run(Strategy::LeastResponseTime, client, addrs, callers).await
        }
        Stack::Facade => facade_run(stacks::facade(addrs).await, callers).await,
        Stack::FacadeDefaults => {
            facade_run(stacks::facade_with_defaults(addrs).await, callers).await
        }
        Stack::MeshOverEndpointClient => {
            let stack = stacks::mesh_stack(addrs, Strategy::RoundRobin, EndpointClient::new());
            measure(&Tower(stack), callers).await
        }
    }
}

async fn facade_run(mesh: MeshClient, callers: usize) -> Run {
    let figures = measure(&Facade(mesh.clone()), callers).await;
    mesh.shutdown(Duration::from_secs(1)).await;
    figures
}

async fn mesh_run(
    strategy: Strategy,
    client: anchors::HttpClient,
    addrs: &[SocketAddr],
    callers: usize,
) -> Run {
    let stack = stacks::mesh_stack(addrs, strategy, client);
    measure(&Tower(stack), callers).await
}

// === the report ===

/// One stack's run and the raw run just before it.
#[derive(Debug, serde::Serialize)]
struct Pair {
    callers: usize,
    round: usize,
    stack: &'static str,
    raw: Run,
    run: Run,
    throughput_ratio: f64,
    p99_ratio: f64,
}

/// A stack at a number of callers: medians over the rounds.
#[derive(Debug, serde::Serialize)]
struct Row {
    callers: usize,
    stack: &'static str,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    /// Medians of the per-round ratios against the paired raw run.
    throughput_ratio: f64,
    p99_ratio: f64,
    /// The per-round ratios, in round order.
    throughput_ratios: Vec<f64>,
    p99_ratios: Vec<f64>,
    allocations_per_request: f64,
    /// Over every round.
    failures: u64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    scene: Scene,
    instances: usize,
    /// The runtime's worker threads.
    workers: usize,
    rounds: usize,
    warm_up_ms: u128,
    window_ms: u128,
    rows: Vec<Row>,
    pairs: Vec<Pair>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The rows of `callers`: raw hyper over all its runs, then each stack.
fn rows(callers: usize, pairs: &[Pair]) -> Vec<Row> {
    let at: Vec<&Pair> = pairs.iter().filter(|p| p.callers == callers).collect();
    if at.is_empty() {
        // Left out by the command line's filter.
        return Vec::new();
    }
    let row = |stack: Stack, runs: Vec<Run>, ratios: Vec<(f64, f64)>| {
        let of = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let (throughput_ratios, p99_ratios): (Vec<f64>, Vec<f64>) = ratios.into_iter().unzip();
        Row {
            callers,
            stack: stack.name(),
            throughput: of(|r| r.throughput),
            p50_us: of(|r| r.p50_us),
            p99_us: of(|r| r.p99_us),
            throughput_ratio: median(throughput_ratios.clone()),
            p99_ratio: median(p99_ratios.clone()),
            throughput_ratios,
            p99_ratios,
            allocations_per_request: of(|r| r.allocations_per_request),
            failures: runs.iter().map(|r| r.failures).sum(),
        }
    };
    let raw: Vec<Run> = at.iter().map(|p| p.raw).collect();
    let ones = vec![(1.0, 1.0); raw.len()];
    let mut rows = vec![row(Stack::Raw, raw, ones)];
    for stack in Stack::PAIRED {
        let of: Vec<&&Pair> = at.iter().filter(|p| p.stack == stack.name()).collect();
        if of.is_empty() {
            // Left out by the command line's filter.
            continue;
        }
        let runs = of.iter().map(|p| p.run).collect();
        let ratios = of
            .iter()
            .map(|p| (p.throughput_ratio, p.p99_ratio))
            .collect();
        rows.push(row(stack, runs, ratios));
    }
    rows
}

fn print_table(rows: &[Row]) {
    println!(
        "| callers | stack | req/s | p50 | p99 | throughput vs raw | p99 vs raw | allocs/req | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} us | {:.0} us | {:.2}x | {:.2}x | {:.1} | {} |",
            r.callers,
            r.stack,
            r.throughput,
            r.p50_us,
            r.p99_us,
            r.throughput_ratio,
            r.p99_ratio,
            r.allocations_per_request,
            r.failures
        );
    }
    println!("\nper-round ratios (throughput / p99), each round in order:");
    for r in rows.iter().filter(|r| r.stack != Stack::Raw.name()) {
        let each = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:>4} {:<40} {} / {}",
            r.callers,
            r.stack,
            each(&r.throughput_ratios),
            each(&r.p99_ratios)
        );
    }
}

/// What the command line narrows the run to, for profiling one stack:
/// words that a stack's name must contain (any of them), `--callers=N`,
/// `--rounds=N` rounds instead of [`ROUNDS`], and `--scene=NAME`.
struct Filters {
    names: Vec<String>,
    callers: Option<usize>,
    rounds: usize,
    scene: Scene,
}

/// The command line's filters, or why it cannot be run.
fn filters() -> Result<Filters, String> {
    let mut filters = Filters {
        names: Vec::new(),
        callers: None,
        rounds: ROUNDS,
        scene: Scene::Healthy,
    };
    for arg in std::env::args().skip(1) {
        if let Some(n) = arg.strip_prefix("--callers=") {
            let callers = n.parse().ok().filter(|n| CALLERS.contains(n));
            let callers = callers.ok_or_else(|| format!("{arg}: one of {CALLERS:?}"))?;
            filters.callers = Some(callers);
        } else if let Some(n) = arg.strip_prefix("--rounds=") {
            let rounds = n.parse().ok().filter(|n| *n > 0);
            filters.rounds = rounds.ok_or_else(|| format!("{arg}: a number above 0"))?;
        } else if let Some(name) = arg.strip_prefix("--scene=") {
            filters.scene = Scene::parse(name).ok_or_else(|| {
                let names: Vec<&str> = Scene::ALL.iter().map(|s| s.name()).collect();
                format!("{arg}: no such scene (one of {})", names.join(", "))
            })?;
        } else if !arg.starts_with("--") {
            let matches = |s: &Stack| s.name().contains(arg.as_str());
            if !Stack::PAIRED.iter().any(matches) {
                return Err(format!("{arg:?}: no stack's name contains it"));
            }
            filters.names.push(arg);
        }
    }
    Ok(filters)
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    let workers = runtime.metrics().num_workers();
    let Filters {
        names,
        callers: callers_only,
        rounds,
        scene,
    } = match filters() {
        Ok(filters) => filters,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let began = Instant::now();
    let pairs = runtime.block_on(async {
        let mut backends = Vec::new();
        for _ in 0..INSTANCES {
            backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        scene.set_up(&backends);
        let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
        let client: anchors::HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let mut pairs = Vec::new();
        let callers_run = CALLERS
            .into_iter()
            .filter(|c| callers_only.is_none_or(|only| only == *c));
        for callers in callers_run {
            for round in 1..=rounds {
                let stacks = Stack::PAIRED
                    .into_iter()
                    .filter(|s| names.is_empty() || names.iter().any(|n| s.name().contains(n.as_str())));
                for stack in stacks {
                    let raw = run(Stack::Raw, callers, &client, &addrs).await;
                    let figures = run(stack, callers, &client, &addrs).await;
                    eprintln!(
                        "{callers:>4} callers, round {round}: {:<40} {:>7.0} req/s ({:.2}x raw), p99 {:.0} us ({:.2}x raw)",
                        stack.name(),
                        figures.throughput,
                        figures.throughput / raw.throughput,
                        figures.p99_us,
                        figures.p99_us / raw.p99_us
                    );
                    pairs.push(Pair {
                        callers,
                        round,
                        stack: stack.name(),
                        throughput_ratio: figures.throughput / raw.throughput,
                        p99_ratio: figures.p99_us / raw.p99_us,
                        raw,
                        run: figures,
                    });
                }
            }
        }
        pairs
    });
    let rows: Vec<Row> = CALLERS.iter().flat_map(|&c| rows(c, &pairs)).collect();
    println!("scene: {}\n", scene.name());
    print_table(&rows);
    println!("\nran in {:.0} s", began.elapsed().as_secs_f64());
    output::write_json(
        scene.report_name(),
        &Report {
            scene,
            instances: INSTANCES,
            workers,
            rounds,
            warm_up_ms: WARM_UP.as_millis(),
            window_ms: WINDOW.as_millis(),
            rows,
            pairs,
        },
    );
}
