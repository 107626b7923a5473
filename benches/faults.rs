//! The same traffic, in one process and one run, through five stacks and
//! eight scenes, over loopback servers: an open loop of 10,000 requests
//! per second for 1.5 s per scene and stack (at most 1,024 waiting; more
//! are shed and count as failures), after 200 unmeasured requests that
//! warm each stack up (connections, discovery, estimates), about 75 s in
//! all:
//!
//! - stacks: the raw hyper client (round robin by hand, no resilience);
//!   `tower::balance::p2c` with `PeakEwma` behind a `Buffer`, under
//!   `tower::retry` (2 retries on errors and 5xx); tower-resilience's
//!   circuit breaker over the raw client; tower-mesh (retry with a
//!   20% budget, discovery from a watched file, least response time,
//!   per-endpoint breakers, 1 s timeout); and the same tower-mesh stack
//!   hedging (see [`HEDGING_DELAY`]: up to 3 copies, the next one 10 ms
//!   after the last went unanswered, paid from the same 20% budget).
//! - scenes over five instances: healthy; one answering 503; one 50 ms
//!   slow; both at once; one killed a third of the way in and restarted
//!   at two thirds;
//!   the registry file deleted a third of the way in (only tower-mesh
//!   reads a registry: the others have fixed lists); one flapping (100 ms
//!   healthy, 100 ms failing); a retry storm (every instance failing from
//!   a third to two thirds of the run).
//! - per scene and stack: throughput, p50, p99, p99.9, success rate,
//!   requests that reached a server per request sent (attempts; a
//!   refused connection to a killed instance reaches none), allocations
//!   per request (client and loopback servers together, the same servers
//!   for every stack).
//! - for the two tower-mesh stacks, from the retry layer's own counters
//!   (`RetryLayer::stats`): retries and hedged copies per request, calls
//!   a hedged copy won, and the budget's use: the extra attempts of the
//!   stack's whole life (warm-up included) against what the budget
//!   allows over it (20% of its requests plus 10 per second), never above
//!   100%.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench faults
//! ```
//!
//! Prints two tables and writes `target/faults.json`, and a picture per
//! scene, `target/faults/<scene>.svg`: each stack's latency percentiles,
//! and its success per 50 ms with the time of the fault shaded (drawn by
//! the demo's `examples/plot.rs`).

#[path = "output.rs"]
mod output;
#[path = "../examples/plot.rs"]
mod plot;

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::alloc::System;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::Strategy;
use mesh::discover::{Catalog, FileRegistry, Registry};
use mesh::prelude::*;
use mesh::retry::{Hedging, RetryStats};
use mesh_testkit::fs::{write_atomically, TempDir};
use mesh_testkit::{anchors, Backend, Behavior};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const INSTANCES: usize = 5;
/// Each scene runs this long per stack; its events happen at a third and
/// two thirds of it.
const SCENE: Duration = Duration::from_millis(1500);
/// Requests arriving per millisecond (10,000 per second)...
const RATE_PER_MS: u64 = 10;
/// ...and at most this many in all.
const REQUESTS: u64 = 300_000;
/// Requests sent, one at a time, before a run is measured.
const WARM_UP: u32 = 200;
/// Requests waiting at once before arrivals are shed.
const MAX_IN_FLIGHT: usize = 1024;
/// tower-mesh's retry budget: this share of the requests of the last
/// [`BUDGET_TTL`] (the whole of a run)...
const BUDGET_PERCENT: f64 = 20.0;
/// ...plus this many per second...
const BUDGET_MIN_PER_SECOND: u32 = 10;
/// ...over this window.
const BUDGET_TTL: Duration = Duration::from_secs(10);
/// How long a hedging call waits for an answer before sending another
/// copy. Healthy loopback calls here answer within about 0.5 ms at p99
/// and 1 to 5 ms at p99.9 (the two cores are shared by client, servers
/// and harness), so 10 ms hedges almost nothing when nothing is wrong,
/// and cuts a call stuck on the 50 ms instance to about 10 ms.
const HEDGING_DELAY: Duration = Duration::from_millis(10);
/// Copies of one hedging call, the first included: the same cap as the
/// plain stack's 1 + 2 retries, since a hedging call is never retried
/// too (a 503 sends the next copy at once instead).
const HEDGING_COPIES: u32 = 3;
/// The pictures count successes per this much of a run.
const BUCKET: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scene {
    Healthy,
    OneFailing,
    OneSlow,
    FailingAndSlow,
    KilledAndRestarted,
    RegistryDies,
    Flapping,
    RetryStorm,
}

impl Scene {
    const ALL: [Scene; 8] = [
        Scene::Healthy,
        Scene::OneFailing,
        Scene::OneSlow,
        Scene::FailingAndSlow,
        Scene::KilledAndRestarted,
        Scene::RegistryDies,
        Scene::Flapping,
        Scene::RetryStorm,
    ];

    /// The scene's picture's file name, without its extension.
    fn file_name(self) -> &'static str {
        match self {
            Scene::Healthy => "healthy",
            Scene::OneFailing => "one-failing",
            Scene::OneSlow => "one-slow",
            Scene::FailingAndSlow => "failing-and-slow",
            Scene::KilledAndRestarted => "killed-and-restarted",
            Scene::RegistryDies => "registry-dies",
            Scene::Flapping => "flapping",
            Scene::RetryStorm => "retry-storm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scene::Healthy => "healthy",
            Scene::OneFailing => "one 503",
            Scene::OneSlow => "one 50ms slow",
            Scene::FailingAndSlow => "one 503 + one slow",
            Scene::KilledAndRestarted => "one killed+restarted",
            Scene::RegistryDies => "registry dies",
            Scene::Flapping => "one flapping",
            Scene::RetryStorm => "retry storm",
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Row {
    scene: &'static str,
    stack: &'static str,
    requests: u64,
    successes: u64,
    success_rate: f64,
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    attempts_per_request: f64,
    allocations_per_request: f64,
    /// Requests that reached each instance (the last one is the slow,
    /// the killed or the flapping one).
    requests_per_instance: Vec<u64>,
    /// The retry layer's counters, for the tower-mesh stacks.
    retry: Option<RetryRow>,
    /// Its percentiles and success over time, for the picture.
    #[serde(skip)]
    picture: plot::Stack,
    /// When the scene's events happened, from the start of the run (for
    /// the flapping scene, each time the instance turned).
    #[serde(skip)]
    events: Vec<Duration>,
}

/// What became of one request.
struct Outcome {
    /// When it arrived, from the start of the run.
    sent_at: Duration,
    latency: Duration,
    succeeded: bool,
}

/// What a tower-mesh stack's retry layer did in one run.
#[derive(Debug, serde::Serialize)]
struct RetryRow {
    /// Retries per request, in the measured run.
    retries_per_request: f64,
    /// Hedged copies (beyond each call's first) per request, in the
    /// measured run.
    hedges_per_request: f64,
    hedges: u64,
    /// Calls answered by a copy other than their first.
    hedges_won: u64,
    /// Retries and copies refused because the budget was spent.
    budget_exhausted: u64,
    /// Retries and copies over the stack's life, warm-up included...
    extra_attempts: u64,
    /// ...and the most the budget allows over that life.
    budget_allows: u64,
}

impl RetryRow {
    /// From the counters after warm-up (`before`) and at the end
    /// (`after`) of a run of `requests` requests; `life` is how long the
    /// layer served, warm-up included.
    fn new(before: RetryStats, after: RetryStats, requests: u64, life: Duration) -> RetryRow {
        let per_request = |n: u64| n as f64 / requests.max(1) as f64;
        // The budget of `mesh_retry::RetryBudget`: `percent` of the
        // requests of the last ttl (a run is shorter than the ttl, so all
        // of them), plus a bucket refilling `min_per_second`, at most
        // `min_per_second x (seconds + 1)` over a run.
        let share = (after.requests as f64 * BUDGET_PERCENT / 100.0).floor() as u64;
        let trickle = u64::from(BUDGET_MIN_PER_SECOND) * (life.as_secs() + 2);
        RetryRow {
            retries_per_request: per_request(after.retries - before.retries),
            hedges_per_request: per_request(after.hedges - before.hedges),
            hedges: after.hedges - before.hedges,
            hedges_won: after.hedges_won - before.hedges_won,
            budget_exhausted: after.budget_exhausted - before.budget_exhausted,
            extra_attempts: after.retries + after.hedges,
            budget_allows: share + trickle,
        }
    }
}

type Body = Full<Bytes>;

/// Runs the open-loop arrivals through `svc` while
/// `scene` plays out on the instances; measures, and reads `retry`'s
/// counters if the stack has a retry layer of ours.
async fn drive<S, B>(
    scene: Scene,
    stack: &'static str,
    svc: S,
    retry: Option<&RetryLayer>,
    lab: &mut Lab,
) -> Row
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let born = Instant::now();
    // Warm up, unmeasured and the same for every stack: pooled
    // connections, a first discovery answer, latency estimates.
    for _ in 0..WARM_UP {
        let req = Request::get("http://user-service/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req)).await
        {
            let _ = r.into_body().collect().await;
        }
    }
    for b in &lab.backends {
        b.reset_stats();
    }
    let retry_before = retry.map(RetryLayer::stats);
    let ok = Arc::new(AtomicU64::new(0));
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    // Open loop: requests arrive at RATE whatever the answers do, as a
    // service's own callers do; a fast failure does not bring the next
    // request sooner. At most MAX_IN_FLIGHT wait at once (beyond, the
    // arrival is counted as failed: shed).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let arrivals = {
        let (svc, ok, in_flight) = (svc.clone(), Arc::clone(&ok), Arc::clone(&in_flight));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0u64;
            let mut calls = tokio::task::JoinSet::new();
            while started.elapsed() < SCENE && sent < REQUESTS {
                tick.tick().await;
                for _ in 0..RATE_PER_MS {
                    sent += 1;
                    let t = Instant::now();
                    let sent_at = t.duration_since(started);
                    let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                        let _ = lat_tx.send(Outcome {
                            sent_at,
                            latency: Duration::ZERO,
                            succeeded: false,
                        });
                        continue;
                    };
                    let (svc, ok, lat_tx) = (svc.clone(), Arc::clone(&ok), lat_tx.clone());
                    calls.spawn(async move {
                        let req = Request::get("http://user-service/")
                            .body(Full::new(Bytes::new()))
                            .expect("request");
                        let answer =
                            tokio::time::timeout(Duration::from_secs(5), svc.oneshot(req)).await;
                        let mut succeeded = false;
                        if let Ok(Ok(r)) = answer {
                            if r.status().is_success() && r.into_body().collect().await.is_ok() {
                                ok.fetch_add(1, Ordering::Relaxed);
                                succeeded = true;
                            }
                        }
                        let _ = lat_tx.send(Outcome {
                            sent_at,
                            latency: t.elapsed(),
                            succeeded,
                        });
                        drop(permit);
                    });
                }
                while calls.try_join_next().is_some() {}
            }
            while calls.join_next().await.is_some() {}
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        let _ = arrivals.await;
        Vec::<Duration>::new()
    });
    // The scene's events, by time through the run.
    let mut flap = tokio::time::interval(Duration::from_millis(100));
    let mut failing = false;
    let mut stage = 0;
    let mut events = Vec::with_capacity(64);
    let mut latencies = Vec::new();
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => latencies.extend(done.unwrap_or_default()),
                None => break,
            },
            _ = flap.tick(), if scene == Scene::Flapping => {
                failing = !failing;
                events.push(started.elapsed());
                lab.backends[INSTANCES - 1].set_behavior(if failing {
                    Behavior::Status(503)
                } else {
                    Behavior::Ok
                });
            }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let at = started.elapsed();
                if stage == 0 && at >= SCENE / 3 {
                    stage = 1;
                    events.push(at);
                    lab.first_third(scene).await;
                } else if stage == 1 && at >= SCENE * 2 / 3 {
                    stage = 2;
                    events.push(at);
                    lab.second_third(scene).await;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let allocations = region.change().allocations as f64;
    let mut timeline = plot::Timeline::new(BUCKET, SCENE);
    while let Ok(outcome) = lat_rx.try_recv() {
        latencies.push(outcome.latency);
        timeline.record(outcome.sent_at, outcome.succeeded);
    }
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let successes = ok.load(Ordering::Relaxed);
    let requests_per_instance: Vec<u64> = lab.backends.iter().map(|b| b.stats().requests).collect();
    let attempts: u64 = requests_per_instance.iter().sum();
    let ms = |p: f64| pct(&latencies, p).as_secs_f64() * 1e3;
    Row {
        scene: scene.name(),
        stack,
        requests,
        successes,
        success_rate: successes as f64 / requests.max(1) as f64,
        throughput: successes as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        attempts_per_request: attempts as f64 / requests.max(1) as f64,
        allocations_per_request: allocations / requests.max(1) as f64,
        requests_per_instance,
        retry: retry
            .zip(retry_before)
            .map(|(layer, before)| RetryRow::new(before, layer.stats(), requests, born.elapsed())),
        picture: plot::Stack::new(stack, &latencies, timeline),
        events,
    }
}

fn pct(l: &[Duration], p: f64) -> Duration {
    if l.is_empty() {
        return Duration::ZERO;
    }
    l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
}

/// The five instances and the registry file, and what scenes do to them.
struct Lab {
    backends: Vec<Backend>,
    addrs: Vec<std::net::SocketAddr>,
    services: PathBuf,
    /// Holds `services`; removed with the lab.
    _dir: TempDir,
}

impl Lab {
    async fn new() -> Lab {
        let mut backends = Vec::new();
        for _ in 0..INSTANCES {
            backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        let addrs = backends.iter().map(Backend::addr).collect();
        let dir = TempDir::new("faults");
        let lab = Lab {
            backends,
            addrs,
            services: dir.path("services.json"),
            _dir: dir,
        };
        lab.write_registry();
        lab
    }

    fn write_registry(&self) {
        let list: Vec<String> = self.addrs.iter().map(|a| format!("\"{a}\"")).collect();
        write_atomically(
            &self.services,
            format!(
                "{{ \"services\": {{ \"user-service\": [{}] }} }}",
                list.join(", ")
            ),
        );
    }

    /// Every instance answering, the registry in place.
    async fn reset(&mut self) {
        // A killed instance comes back where it was.
        while self.backends.len() < INSTANCES {
            let addr = self.addrs[self.backends.len()];
            self.backends.push(
                Backend::start_on(addr, Behavior::Ok)
                    .await
                    .expect("restart"),
            );
        }
        for b in &self.backends {
            b.set_behavior(Behavior::Ok);
        }
        self.write_registry();
    }

    async fn first_third(&mut self, scene: Scene) {
        match scene {
            Scene::KilledAndRestarted => {
                self.backends.pop();
            }
            Scene::RegistryDies => {
                let _ = std::fs::remove_file(&self.services);
            }
            Scene::RetryStorm => {
                for b in &self.backends {
                    b.set_behavior(Behavior::Status(503));
                }
            }
            _ => {}
        }
    }

    async fn second_third(&mut self, scene: Scene) {
        match scene {
            Scene::KilledAndRestarted => {
                let addr = self.addrs[INSTANCES - 1];
                self.backends.push(
                    Backend::start_on(addr, Behavior::Ok)
                        .await
                        .expect("restart"),
                );
            }
            Scene::RetryStorm => {
                for b in &self.backends {
                    b.set_behavior(Behavior::Ok);
                }
            }
            _ => {}
        }
    }

    fn set_up(&self, scene: Scene) {
        match scene {
            Scene::OneFailing => self.backends[INSTANCES - 1].set_behavior(Behavior::Status(503)),
            Scene::OneSlow => {
                self.backends[INSTANCES - 1].set_behavior(Behavior::Slow(Duration::from_millis(50)))
            }
            Scene::FailingAndSlow => {
                self.backends[INSTANCES - 2].set_behavior(Behavior::Status(503));
                self.backends[INSTANCES - 1]
                    .set_behavior(Behavior::Slow(Duration::from_millis(50)));
            }
            _ => {}
        }
    }
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    let rows = runtime.block_on(async {
        let mut lab = Lab::new().await;
        let client: anchors::HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let mut rows = Vec::new();
        for scene in Scene::ALL {
            macro_rules! run {
                ($name:expr, $svc:expr) => {
                    run!($name, $svc, None)
                };
                ($name:expr, $svc:expr, $retry:expr) => {{
                    lab.reset().await;
                    lab.set_up(scene);
                    let svc = $svc;
                    let retry: Option<RetryLayer> = $retry;
                    rows.push(drive(scene, $name, svc, retry.as_ref(), &mut lab).await);
                }};
            }
            run!(
                "raw hyper",
                anchors::RoundRobin::new(client.clone(), &lab.addrs)
            );
            run!(
                "tower p2c+retry",
                anchors::tower_p2c_retry(client.clone(), &lab.addrs)
            );
            run!(
                "tower-resilience",
                anchors::resilience_breaker(client.clone(), &lab.addrs)
            );
            let retry = retry_layer(None);
            run!(
                "tower-mesh",
                mesh_stack(client.clone(), &lab.services, &retry),
                Some(retry)
            );
            let hedging = Hedging::new(HEDGING_COPIES, HEDGING_DELAY).expect("hedging");
            let retry = retry_layer(Some(hedging));
            run!(
                "tower-mesh+hedging",
                mesh_stack(client.clone(), &lab.services, &retry),
                Some(retry)
            );
        }
        rows
    });
    print_table(&rows);
    output::write_json("faults", &rows);
    draw(&rows);
}

/// A picture per scene of its stacks side by side, into
/// `<target>/faults/`.
fn draw(rows: &[Row]) {
    let mut written = Vec::new();
    for scene in Scene::ALL {
        let stacks: Vec<&Row> = rows.iter().filter(|r| r.scene == scene.name()).collect();
        // Every stack's run plays the scene at the same times, give or
        // take the 5 ms the driver's clock ticks by: the first's will do.
        let Some(first) = stacks.first() else {
            continue;
        };
        let picture = plot::Picture {
            title: format!(
                "fault suite, scene \"{}\": 10,000 requests/s for {} s to five instances",
                scene.name(),
                SCENE.as_secs_f64()
            ),
            stacks: stacks.iter().map(|r| r.picture.clone()).collect(),
            faults: fault_windows(scene, &first.events),
        };
        let path = plot::target_path(&format!("faults/{}.svg", scene.file_name()));
        match picture.write(&path) {
            Ok(()) => written.push(path),
            Err(error) => eprintln!("not written: {}: {error}", path.display()),
        }
    }
    if let Some(dir) = written.first().and_then(|p| p.parent()) {
        println!("pictures ({}): {}", written.len(), dir.display());
    }
}

/// When `scene`'s fault was in force, from when `drive` saw its events
/// happen (`events`, from the start of the run).
fn fault_windows(scene: Scene, events: &[Duration]) -> Vec<plot::FaultWindow> {
    let window = |from: Duration, to: Duration, label: &str| plot::FaultWindow {
        from,
        to: to.min(SCENE),
        label: label.to_owned(),
    };
    let at = |i: usize, otherwise: Duration| events.get(i).copied().unwrap_or(otherwise);
    let (third, two_thirds) = (at(0, SCENE / 3), at(1, SCENE * 2 / 3));
    match scene {
        Scene::Healthy => Vec::new(),
        Scene::OneFailing => vec![window(
            Duration::ZERO,
            SCENE,
            "instance 5 answers 503, all run long",
        )],
        Scene::OneSlow => vec![window(
            Duration::ZERO,
            SCENE,
            "instance 5 is 50 ms slow, all run long",
        )],
        Scene::FailingAndSlow => vec![window(
            Duration::ZERO,
            SCENE,
            "instance 4 answers 503 and instance 5 is 50 ms slow, all run long",
        )],
        Scene::KilledAndRestarted => {
            vec![window(
                third,
                two_thirds,
                "instance 5 killed, then restarted",
            )]
        }
        Scene::RegistryDies => vec![window(third, SCENE, "registry file deleted")],
        // The instance turns failing at the first event, healthy at the
        // second, and so on.
        Scene::Flapping => events
            .chunks(2)
            .filter(|turns| turns[0] < SCENE)
            .map(|turns| {
                let healthy_again = turns.get(1).copied().unwrap_or(SCENE);
                window(
                    turns[0],
                    healthy_again,
                    "instance 5 answers 503 every other 100 ms",
                )
            })
            .collect(),
        Scene::RetryStorm => vec![window(third, two_thirds, "every instance answers 503")],
    }
}

/// tower-mesh's retry layer for this bench: 2 retries 1 ms apart within
/// the budget, and `hedging` if any. A fresh layer per run: fresh
/// counters, a fresh budget.
fn retry_layer(hedging: Option<Hedging>) -> RetryLayer {
    let mut config = RetryConfig::builder()
        .max_retries(2)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(BUDGET_PERCENT, BUDGET_MIN_PER_SECOND, BUDGET_TTL);
    if let Some(hedging) = hedging {
        config = config.hedging(hedging);
    }
    RetryLayer::new(config.build().expect("retry"))
}

fn mesh_stack(
    client: anchors::HttpClient,
    services: &std::path::Path,
    retry: &RetryLayer,
) -> impl Service<
    Request<Body>,
    Response = Response<
        mesh::balance::TrackedBody<mesh::breaker::ResponseBody<hyper::body::Incoming>>,
    >,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let registry: Arc<dyn Registry> =
        Arc::new(FileRegistry::new(services).check_every(Duration::from_millis(20)));
    let catalog = Catalog::default();
    ServiceBuilder::new()
        .layer(retry.clone())
        .layer(DiscoverLayer::with_registry(
            catalog,
            registry,
            Duration::from_secs(2),
        ))
        .layer(BalanceLayer::new(Strategy::LeastResponseTime))
        .layer(BreakerLayer::new(
            BreakerConfig::builder()
                .scope(BreakerScope::Endpoint)
                .consecutive_failures(5)
                .failure_rate_threshold(50.0)
                .minimum_calls(10)
                .open_duration(Duration::from_millis(300))
                .build()
                .expect("breaker"),
        ))
        .timeout(Duration::from_secs(1))
        .service(client)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:<19} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "scene", "stack", "success", "req/s", "p50", "p99", "p99.9", "att/req", "alloc/req"
    );
    for r in rows {
        println!(
            "{:<22} {:<19} {:>7.2}% {:>9.0} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>9.2} {:>8.0}",
            r.scene,
            r.stack,
            100.0 * r.success_rate,
            r.throughput,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.attempts_per_request,
            r.allocations_per_request
        );
    }
    println!(
        "\ntower-mesh's retry layer: retries and hedged copies per request (measured run); \
         copies that won; refused for want of budget; budget use over the stack's life"
    );
    println!(
        "{:<22} {:<19} {:>9} {:>9} {:>8} {:>8} {:>8} {:>15}",
        "scene", "stack", "retry/req", "hedge/req", "hedges", "won", "refused", "budget use"
    );
    for r in rows {
        let Some(retry) = &r.retry else {
            continue;
        };
        println!(
            "{:<22} {:<19} {:>9.3} {:>9.3} {:>8} {:>8} {:>8} {:>6}/{:<6}{:>3.0}%",
            r.scene,
            r.stack,
            retry.retries_per_request,
            retry.hedges_per_request,
            retry.hedges,
            retry.hedges_won,
            retry.budget_exhausted,
            retry.extra_attempts,
            retry.budget_allows,
            100.0 * retry.extra_attempts as f64 / retry.budget_allows.max(1) as f64
        );
    }
}
