//! The tower-mesh demo: five loopback instances of `user-service` (three
//! healthy, one answering 503 to everything, one 50 ms slow), the same
//! traffic sent twice, once by the bare hyper client and once through the
//! mesh pipeline, and a report of what each got: a table, and a picture
//! of it (`target/demo.svg`: latency percentiles and success over time
//! for both clients, drawn by `plot.rs`).
//!
//! ```text
//! cargo run --release --example demo [-- --requests 4000 --rate 2000 --svg PATH]
//! ```

#[path = "plot.rs"]
mod plot;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::core::{clock, CircuitState, EndpointId, MeshEvent};
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tokio::sync::broadcast::error::TryRecvError;
use tower::{Service, ServiceBuilder, ServiceExt};

const SERVICE: &str = "user-service";

/// What one run (bare or mesh) produced.
struct RunResult {
    latencies: Vec<Duration>,
    /// Which requests succeeded, by when they were sent: for the picture.
    timeline: plot::Timeline,
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

impl RunResult {
    fn percentile(&self, p: f64) -> Duration {
        plot::percentile(&self.latencies, p)
    }

    fn success_rate(&self) -> f64 {
        100.0 * self.ok as f64 / (self.ok + self.failed).max(1) as f64
    }
}

struct Options {
    requests: u64,
    /// Requests started per second. The load is open-loop (sent on a
    /// schedule, not when earlier ones finish), so both clients face the
    /// same offered load and a slow answer cannot quietly lower it.
    rate: u64,
    /// Where the picture of the run goes.
    svg: PathBuf,
}

impl Options {
    /// How long sending takes: the span of the picture's timeline.
    fn sending_time(&self) -> Duration {
        Duration::from_secs_f64(self.requests as f64 / self.rate as f64)
    }
}

fn options() -> Result<Options, String> {
    let mut opts = Options {
        requests: 4000,
        rate: 2000,
        svg: plot::target_path("demo.svg"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        if flag == "--svg" {
            opts.svg = PathBuf::from(value);
            continue;
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--requests" if (1..=1_000_000).contains(&n) => opts.requests = n,
            "--rate" if (1..=100_000).contains(&n) => opts.rate = n,
            "--requests" | "--rate" => return Err(format!("{flag}: {n} is out of range")),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --requests N --rate N --svg PATH"
                ))
            }
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let opts = options().map_err(|e| -> BoxError { e.into() })?;
    let roles = [
        ("healthy", Behavior::Ok),
        ("healthy", Behavior::Ok),
        ("healthy", Behavior::Ok),
        ("failing (503)", Behavior::Status(503)),
        ("slow (50 ms)", Behavior::Slow(Duration::from_millis(50))),
    ];
    let mut backends = Vec::new();
    for (_, behavior) in roles {
        backends.push(Backend::start(behavior).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    println!(
        "tower-mesh demo: {} requests at {}/s to {SERVICE} on {} loopback instances",
        opts.requests,
        opts.rate,
        addrs.len()
    );

    // 1. The bare hyper client, round robin over the same instances.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let bare = {
        let client = client.clone();
        let addrs = Arc::new(addrs.clone());
        run("bare hyper", &opts, move |i| {
            let client = client.clone();
            let addr = addrs[(i as usize) % addrs.len()];
            async move {
                let uri = format!("http://{addr}/api/users/{i}");
                let response = client.get(uri.parse()?).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok::<bool, BoxError>(ok)
            }
        })
        .await
    };
    let bare_per_instance: Vec<u64> = backends.iter().map(|b| b.stats().requests).collect();
    backends.iter().for_each(Backend::reset_stats);

    // 2. The same traffic through the mesh pipeline.
    let events = EventBus::new(1 << 16);
    let mut subscriber = events.subscribe();
    let registry = StaticRegistry::builder()
        .service(SERVICE, addrs.iter().map(ToString::to_string))
        .events(events.clone())
        .build()?;
    let retry = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(2)))
            .build()?,
    )
    .events(events.clone());
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(5)
            .open_duration(Duration::from_millis(500))
            .half_open_probes(1)
            // The per-attempt timeout: a slow instance counts as failing.
            .call_timeout(Duration::from_millis(20))
            .build()?,
    )
    .events(events.clone());
    let stack = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(breaker)
        .service(client);
    let meshed = run("tower-mesh", &opts, move |i| {
        let mut stack = stack.clone();
        async move {
            let req = Request::get(format!("http://{SERVICE}/api/users/{i}"))
                .body(Full::new(Bytes::new()))?;
            let response = stack.ready().await?.call(req).await?;
            let ok = response.status().is_success();
            response.into_body().collect().await?;
            Ok::<bool, BoxError>(ok)
        }
    })
    .await;
    let set = registry
        .catalog()
        .get(SERVICE)
        .ok_or("the demo service vanished from the catalog")?;
    let mut transitions = Vec::new();
    loop {
        match subscriber.try_recv() {
            Ok(MeshEvent::BreakerTransition {
                endpoint: Some(endpoint),
                from,
                to,
                ..
            }) => transitions.push((endpoint, from, to)),
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }

    // 3. The report.
    println!("\nPer instance (tower-mesh run; bare run for comparison)");
    println!(
        "{:<22} {:<14} {:>10} {:>10} {:>10} {:>16}",
        "instance", "role", "bare reqs", "mesh reqs", "mesh 5xx", "mesh latency est"
    );
    for ((backend, (role, _)), bare_reqs) in backends.iter().zip(roles).zip(&bare_per_instance) {
        let stats = backend.stats();
        let ewma = set
            .get(&EndpointId::from_addr(backend.addr()))
            .and_then(|e| e.state().latency())
            .map_or("-".to_owned(), |l| format!("{l:.2?}"));
        println!(
            "{:<22} {:<14} {:>10} {:>10} {:>10} {:>16}",
            backend.addr(),
            role,
            bare_reqs,
            stats.requests,
            stats.errors,
            ewma
        );
    }

    println!("\nBreaker transitions ({})", transitions.len());
    for (endpoint, from, to) in transitions.iter().take(12) {
        println!("  {endpoint:<21} {from} -> {to}");
    }
    if transitions.len() > 12 {
        println!("  ... {} more", transitions.len() - 12);
    }
    let opened = transitions
        .iter()
        .filter(|t| t.2 == CircuitState::Open)
        .count();
    let stats = retry.stats();
    println!(
        "\nRetries: {} (exhausted: {}); circuits opened {} times",
        stats.retries, stats.exhausted, opened
    );
    let now = clock::now();
    let ejected = set.iter().filter(|e| !e.state().is_available(now)).count();
    println!("Endpoints ejected at the end: {ejected} of {}", set.len());

    println!(
        "\n{:<12} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "client", "success", "failed", "p50", "p99", "max", "req/s"
    );
    for (name, r) in [("bare hyper", &bare), ("tower-mesh", &meshed)] {
        println!(
            "{:<12} {:>8.2}% {:>9} {:>10} {:>10} {:>10} {:>10.0}",
            name,
            r.success_rate(),
            r.failed,
            format!("{:.2?}", r.percentile(0.50)),
            format!("{:.2?}", r.percentile(0.99)),
            format!("{:.2?}", r.percentile(1.0)),
            (r.ok + r.failed) as f64 / r.elapsed.as_secs_f64().max(1e-9),
        );
    }
    draw(&opts, &bare, &meshed);

    // The demo is also CI's check that the main job works: the mesh must
    // carry the traffic through the failing and the slow instance.
    if meshed.success_rate() < 99.0 {
        return Err(format!(
            "tower-mesh success rate {:.2}% is under 99%",
            meshed.success_rate()
        )
        .into());
    }
    Ok(())
}

/// Draws both runs side by side into `opts.svg`; a picture that cannot
/// be written is reported, and the demo goes on.
fn draw(opts: &Options, bare: &RunResult, meshed: &RunResult) {
    let picture = plot::Picture {
        title: format!(
            "tower-mesh demo: {} requests at {}/s to five instances, \
             one answering 503 and one 50 ms slow",
            opts.requests, opts.rate
        ),
        stacks: vec![
            plot::Stack::new("bare hyper", &bare.latencies, bare.timeline.clone()),
            plot::Stack::new("tower-mesh", &meshed.latencies, meshed.timeline.clone()),
        ],
        // The two faults last the whole run.
        faults: vec![plot::FaultWindow {
            from: Duration::ZERO,
            to: opts.sending_time(),
            label: "one instance answers 503, one is 50 ms slow, all run long".to_owned(),
        }],
    };
    match picture.write(&opts.svg) {
        Ok(()) => println!("\nPicture: {}", opts.svg.display()),
        Err(error) => eprintln!("\nno picture at {}: {error}", opts.svg.display()),
    }
}

/// Starts `opts.requests` requests made by `send`, `opts.rate` per second
/// on a fixed schedule, with a live progress line; returns what they got.
async fn run<F, Fut>(label: &str, opts: &Options, send: F) -> RunResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool, BoxError>> + Send + 'static,
{
    const TICK: Duration = Duration::from_millis(5);
    let per_tick = (opts.rate as f64 * TICK.as_secs_f64()).max(1.0);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut last_print = Instant::now();
    let mut ticks = 0u64;
    // About 40 buckets over the run, whole milliseconds each.
    let bucket =
        Duration::from_millis((opts.sending_time().as_millis() as u64 / 40).clamp(10, 1000));
    let mut timeline = plot::Timeline::new(bucket, opts.sending_time());
    while sent < opts.requests {
        ticker.tick().await;
        ticks += 1;
        let due = ((ticks as f64 * per_tick) as u64).min(opts.requests);
        while sent < due {
            let request = send(sent);
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            let sent_at = started.elapsed();
            requests.spawn(async move {
                let t = Instant::now();
                // Bound every request, so that one hung call cannot hang the demo.
                let success = matches!(
                    tokio::time::timeout(Duration::from_secs(5), request).await,
                    Ok(Ok(true))
                );
                let counter = if success { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                (t.elapsed(), sent_at, success)
            });
            sent += 1;
        }
        if last_print.elapsed() >= Duration::from_millis(100) {
            last_print = Instant::now();
            progress(label, opts.requests, sent, &ok, &failed);
        }
    }
    let mut latencies = Vec::with_capacity(opts.requests as usize);
    while let Some(joined) = requests.join_next().await {
        if let Ok((latency, sent_at, success)) = joined {
            latencies.push(latency);
            timeline.record(sent_at, success);
        }
    }
    let elapsed = started.elapsed();
    progress(label, opts.requests, sent, &ok, &failed);
    eprintln!();
    latencies.sort_unstable();
    RunResult {
        latencies,
        timeline,
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed,
    }
}

fn progress(label: &str, total: u64, sent: u64, ok: &AtomicU64, failed: &AtomicU64) {
    eprint!(
        "\r{label:<11} {sent:>7}/{total} sent, {:>7} ok, {:>6} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
