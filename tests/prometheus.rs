//! The metrics as Prometheus itself reads them: `promtool check metrics`
//! passes on the gateway's `/metrics`, and a real Prometheus server
//! scraping the gateway example on loopback answers the dashboard's
//! questions (request rate, error ratio, p99 from the histogram) with
//! what the client saw. Under faults (one instance failing, one too
//! slow, retries and per-endpoint breakers on) its counts of calls,
//! retries, picks and ejections are the client's own, and square with
//! the requests each upstream received. Debian's `prometheus` package
//! brings both programs; scripts/test.sh installs it.

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "support/promtool.rs"]
mod promtool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use mesh::{MeshClient, MeshConfig};
use promtool::{program, promtool_check};

/// What every upstream call takes: all of them fall in the histogram's
/// 25 ms to 50 ms bucket unless the machine stalls a call past 50 ms.
const UPSTREAM_DELAY: Duration = Duration::from_millis(30);

/// Every fourth upstream answer is a 503.
const ERROR_EVERY: u64 = 4;

/// One instance of `user-service` on loopback, counting the requests it
/// received (when its handler starts, before any delay: a request the
/// client gave up on while it waited is counted all the same).
struct Upstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

// === impl Upstream ===

impl Upstream {
    /// Answers its `n`th request (from 0) as `answer(n)` says: after a
    /// delay, with a status.
    async fn start(answer: fn(u64) -> (Duration, StatusCode)) -> Upstream {
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let app = Router::new().route(
            "/api/users",
            get(move || {
                let (delay, status) = answer(counter.fetch_add(1, Ordering::Relaxed));
                async move {
                    tokio::time::sleep(delay).await;
                    let body = if status.is_success() {
                        "[]"
                    } else {
                        "try later"
                    };
                    (status, body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, received }
    }

    /// The requests it received so far.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Every call waits [`UPSTREAM_DELAY`], every [`ERROR_EVERY`]th is
/// answered 503.
fn answers_every_fourth_503(n: u64) -> (Duration, StatusCode) {
    if n % ERROR_EVERY == ERROR_EVERY - 1 {
        (UPSTREAM_DELAY, StatusCode::SERVICE_UNAVAILABLE)
    } else {
        (UPSTREAM_DELAY, StatusCode::OK)
    }
}

/// Every call waits [`UPSTREAM_DELAY`] and succeeds.
fn answers_200(_: u64) -> (Duration, StatusCode) {
    (UPSTREAM_DELAY, StatusCode::OK)
}

/// Every call waits [`UPSTREAM_DELAY`] and is answered 503.
fn answers_503(_: u64) -> (Duration, StatusCode) {
    (UPSTREAM_DELAY, StatusCode::SERVICE_UNAVAILABLE)
}

/// Every call succeeds, after 150 ms to 300 ms: always past
/// [`ATTEMPT_TIMEOUT`].
fn answers_slowly(n: u64) -> (Duration, StatusCode) {
    (Duration::from_millis(150 + n * 37 % 151), StatusCode::OK)
}

/// The per-attempt timeout of the fault scene, which the slow instance
/// never answers within.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// A client that never retries (so each call is one upstream answer).
const NO_RETRIES: &str = "[retry]\nretryable_statuses = []\n";

/// The gateway example's app over a client of `upstreams` as
/// `user-service`, configured with the TOML `policies` on top of the
/// service and discovery sections, served on loopback.
async fn gateway(upstreams: &[SocketAddr], policies: &str) -> (MeshClient, SocketAddr) {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ user-service = [{}] }}
{policies}"#,
        list.join(", ")
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = gateway::app(client.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (client, addr)
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

fn http() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// `GET url`: its status and body.
async fn fetch(http: &Http, url: &str) -> (StatusCode, String) {
    let response = http.get(url.parse().expect("url")).await.expect("GET");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `calls` calls through the gateway's `/api/users`, `workers` at a
/// time; returns when each one completed, and the status it got.
async fn traffic(gateway: SocketAddr, calls: u64, workers: u64) -> Vec<(SystemTime, StatusCode)> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let http = http();
            let mut done = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let (status, _) = fetch(&http, &format!("http://{gateway}/api/users")).await;
                done.push((SystemTime::now(), status));
            }
            done
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await.expect("worker"));
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_wrong_with_the_exposition() {
    let upstream = Upstream::start(answers_every_fourth_503).await;
    let (client, gateway) = gateway(&[upstream.addr], NO_RETRIES).await;
    traffic(gateway, 40, 4).await;
    let (status, text) = fetch(&http(), &format!("http://{gateway}{}", gateway::METRICS)).await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "mesh_requests_total",
        "mesh_request_duration_seconds_bucket",
        "mesh_retry_delay_seconds_total",
        "mesh_instance_share_ratio",
        "mesh_breaker_state",
    ] {
        assert!(text.contains(name), "{name} is exported:\n{text}");
    }
    promtool_check(&text);
    client.shutdown(Duration::from_secs(5)).await;
}

/// A Prometheus server on loopback scraping one target every second,
/// stopped (and its data removed) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    async fn scraping(target: SocketAddr) -> Prometheus {
        let binary = program("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "tower-mesh-prometheus-{}-{}",
            std::process::id(),
            target.port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: gateway\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    metrics_path: {}\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                gateway::METRICS
            ),
        )
        .expect("config");
        let addr: SocketAddr = format!("127.0.0.1:{}", mesh_testkit::net::free_port())
            .parse()
            .expect("addr");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, addr, dir };
        let http = http();
        let started = Instant::now();
        loop {
            let ready = http
                .get(format!("http://{addr}/-/ready").parse().expect("url"))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus ready on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    /// The value of `query` at `at` (now when `None`), if it has exactly
    /// one sample.
    async fn query(&self, query: &str, at: Option<SystemTime>) -> Option<f64> {
        let mut url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            percent_encode(query)
        );
        if let Some(at) = at {
            let secs = at.duration_since(UNIX_EPOCH).expect("time").as_secs_f64();
            url.push_str(&format!("&time={secs:.3}"));
        }
        let (status, body) = fetch(&http(), &url).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let result = json["data"]["result"].as_array()?;
        match &result[..] {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits (bounded) until `query` answers `want`.
    async fn until(&self, query: &str, want: f64) {
        let started = Instant::now();
        loop {
            let got = self.query(query, None).await;
            if got == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{query}: {got:?}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `[range]` for `rate()` over traffic from `started` to `ended`: the
/// whole of it, with room for the scrapes on either side.
fn rate_window(started: SystemTime, ended: SystemTime) -> u64 {
    ended.duration_since(started).expect("time").as_secs() + 5
}

/// The dashboard's error ratio (deploy/grafana-dashboard.json) for
/// `user-service`, over `window` seconds: failed calls (a 5xx answer, or
/// no answer at all) over all calls, both from rates.
fn error_ratio(window: u64) -> String {
    format!(
        r#"sum by (service) (rate(mesh_requests_total{{service=~"user-service",status_class=~"5xx|error"}}[{window}s])) / sum by (service) (rate(mesh_requests_total{{service=~"user-service"}}[{window}s]))"#
    )
}

/// `histogram_quantile(q, ...)` as Prometheus computes it, over the
/// cumulative buckets `(le, count)` of the client's own exposition.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().expect("+Inf").1;
    let rank = q * total;
    let i = buckets.iter().position(|b| b.1 >= rank).expect("bucket");
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (upper, count) = buckets[i];
    lower + (upper - lower) * (rank - below) / (count - below)
}

/// The cumulative buckets of `mesh_request_duration_seconds` for
/// `user-service`, summed over endpoints, from the client's own text.
fn buckets(text: &str) -> Vec<(f64, f64)> {
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("mesh_request_duration_seconds_bucket{")
            || !line.contains("service=\"user-service\"")
        {
            continue;
        }
        let le = line.split("le=\"").nth(1).and_then(|s| s.split('"').next());
        let le: f64 = match le.expect("le") {
            "+Inf" => f64::INFINITY,
            le => le.parse().expect("le"),
        };
        let n: f64 = line.rsplit(' ').next().expect("value").parse().expect("n");
        match by_le.iter_mut().find(|b| b.0 == le) {
            Some(b) => b.1 += n,
            None => by_le.push((le, n)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scraping_the_gateway_sees_what_the_client_saw() {
    let upstream = Upstream::start(answers_every_fourth_503).await;
    let (client, gateway) = gateway(&[upstream.addr], NO_RETRIES).await;
    let prometheus = Prometheus::scraping(gateway).await;
    prometheus.until(r#"up{job="gateway"}"#, 1.0).await;

    // 800 calls, 4 at a time: about 30 ms each, some 6 s of traffic.
    let calls = 800;
    let traffic_started = SystemTime::now();
    let done = traffic(gateway, calls, 4).await;
    let traffic_ended = SystemTime::now();
    assert_eq!(done.len() as u64, calls);

    // Every call, counted once, scraped.
    let total = r#"sum(mesh_requests_total{service="user-service"})"#;
    prometheus.until(total, calls as f64).await;
    assert_eq!(upstream.received(), calls, "one upstream request per call");
    let errors = r#"sum(mesh_requests_total{service="user-service",status_class="5xx"})"#;
    assert_eq!(
        prometheus.query(errors, None).await,
        Some((calls / ERROR_EVERY) as f64),
        "one call in {ERROR_EVERY} answered 503"
    );

    // The error ratio, as the dashboard asks it (from rates).
    let window = rate_window(traffic_started, traffic_ended);
    let at = traffic_ended + Duration::from_secs(2);
    let got = prometheus
        .query(&error_ratio(window), Some(at))
        .await
        .expect("ratio");
    assert!(
        (got - 0.25).abs() < 0.03,
        "error ratio {got}, the client saw 0.25"
    );

    // The request rate over 4 s in the middle of the traffic, against
    // the calls the test saw complete in that window.
    let middle = traffic_started + traffic_ended.duration_since(traffic_started).expect("t") / 2;
    let span = Duration::from_secs(4);
    let from = middle - span;
    let seen = done
        .iter()
        .filter(|(t, _)| *t > from && *t <= middle)
        .count() as f64;
    let expected = seen / span.as_secs_f64();
    let rate = r#"sum(rate(mesh_requests_total{service="user-service"}[4s]))"#;
    let got = prometheus.query(rate, Some(middle)).await.expect("rate");
    assert!(
        (got - expected).abs() <= expected * 0.35,
        "request rate {got}/s, the client saw {expected}/s"
    );

    // p99 from the histogram: what the client's own buckets give, and
    // close to the upstream's 30 ms.
    let p99 = r#"histogram_quantile(0.99, sum by (le) (mesh_request_duration_seconds_bucket{service="user-service"}))"#;
    let got = prometheus.query(p99, None).await.expect("p99");
    let own = quantile(0.99, &buckets(&client.prometheus()));
    assert!(
        (got - own).abs() < 1e-9,
        "p99 {got}, the client's buckets give {own}"
    );
    // Near the upstream's 30 ms; the upper bound leaves room for a loaded
    // machine stalling a few calls of the 1 % the p99 reads.
    assert!(
        (0.025..=0.25).contains(&got),
        "p99 {got}s for calls of {UPSTREAM_DELAY:?}"
    );
    let p99_rate = format!(
        r#"histogram_quantile(0.99, sum by (le) (rate(mesh_request_duration_seconds_bucket{{service="user-service"}}[{window}s])))"#
    );
    let got = prometheus.query(&p99_rate, Some(at)).await.expect("p99");
    assert!(
        (0.025..=0.25).contains(&got),
        "p99 from rates {got}s for calls of {UPSTREAM_DELAY:?}"
    );

    // A scrape during shutdown answers, and loses no count.
    let scraping = {
        let http = http();
        tokio::spawn(async move {
            let mut texts = Vec::new();
            for _ in 0..20 {
                let url = format!("http://{gateway}{}", gateway::METRICS);
                if let Ok(r) = http.get(url.parse().expect("url")).await {
                    let body = r.into_body().collect().await.expect("body").to_bytes();
                    texts.push(String::from_utf8_lossy(&body).into_owned());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            texts
        })
    };
    client.shutdown(Duration::from_secs(5)).await;
    let after = client.prometheus();
    for text in scraping.await.expect("scrapes").iter().chain([&after]) {
        let sum: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("mesh_requests_total{") && l.contains("service=\"user-service\"")
            })
            .map(|l| l.rsplit(' ').next().expect("n").parse::<f64>().expect("n"))
            .sum();
        assert_eq!(sum, calls as f64, "every call still counted:\n{text}");
    }
}

/// The fault scene's settings for `user-service`, as a user would write
/// them: each attempt timed by its endpoint's breaker (so a slow answer
/// counts against the instance that gave it, and the retry goes
/// elsewhere), 503 retried, one breaker per endpoint that ejects its
/// instance from the balancer.
fn fault_policies() -> String {
    format!(
        r#"
[services.user-service]
timeout = "{attempt}ms"

[services.user-service.balance]
strategy = "power_of_two_choices"

[services.user-service.breaker]
scope = "endpoint"
consecutive_failures = 3
failure_rate_threshold = 50.0
minimum_calls = 10
open_duration = "1s"
# Two of the three instances may be out at once.
max_ejection_percent = 70.0

[services.user-service.retry]
max_retries = 2
initial = "10ms"
retryable_statuses = [503]
deadline = "1s"
"#,
        attempt = ATTEMPT_TIMEOUT.as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_prometheus_counts_what_the_client_and_the_upstreams_counted() {
    let instances = [
        ("healthy", Upstream::start(answers_200).await),
        ("failing", Upstream::start(answers_503).await),
        ("slow", Upstream::start(answers_slowly).await),
    ];
    let addrs: Vec<SocketAddr> = instances.iter().map(|(_, u)| u.addr).collect();
    let (client, gateway) = gateway(&addrs, &fault_policies()).await;
    let prometheus = Prometheus::scraping(gateway).await;
    prometheus.until(r#"up{job="gateway"}"#, 1.0).await;

    // 400 calls, 4 at a time: some 4 s of traffic.
    let calls = 400;
    let traffic_started = SystemTime::now();
    let done = traffic(gateway, calls, 4).await;
    let traffic_ended = SystemTime::now();
    assert_eq!(done.len() as u64, calls);

    // Every call counted once, by the class of what the test received:
    // the upstream's answer passed on, or the gateway's 502 for a call
    // that got none (an upstream never answers 502 here).
    let total = r#"sum(mesh_requests_total{service="user-service"})"#;
    prometheus.until(total, calls as f64).await;
    let seen = |wanted: &dyn Fn(StatusCode) -> bool| {
        done.iter().filter(|(_, status)| wanted(*status)).count() as u64
    };
    let ok = seen(&|s| s == StatusCode::OK);
    let answered_503 = seen(&|s| s == StatusCode::SERVICE_UNAVAILABLE);
    let unanswered = seen(&|s| s == StatusCode::BAD_GATEWAY);
    assert_eq!(
        ok + answered_503 + unanswered,
        calls,
        "only 200, 503 and 502 expected"
    );
    for (class, n) in [("2xx", ok), ("5xx", answered_503), ("error", unanswered)] {
        let query = format!(
            r#"sum(mesh_requests_total{{service="user-service",status_class="{class}"}}) or vector(0)"#
        );
        prometheus.until(&query, n as f64).await;
    }
    let failed = answered_503 + unanswered;
    assert!(
        failed * 20 <= calls,
        "retries and breakers hide the faults: {failed} of {calls} calls failed"
    );

    // The client's own counts, final once no circuit is open: every call
    // has ended, and an open circuit half-opens on a timer (1 s here),
    // traffic or not, while a half-open or closed one changes only with
    // calls.
    let settling = Instant::now();
    let own = loop {
        let own = client.metrics();
        let open: Vec<_> = own
            .routes
            .iter()
            .flat_map(|r| &r.breakers)
            .filter(|b| b.state == "open")
            .collect();
        if open.is_empty() {
            break own;
        }
        assert!(
            settling.elapsed() < Duration::from_secs(10),
            "circuits still open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let route = own
        .routes
        .iter()
        .find(|r| r.route == "user-service")
        .expect("user-service has its own route");
    let retry = &route.retry;
    assert_eq!(retry.requests, calls, "the retry layer saw every call");
    assert_eq!(retry.hedges, 0);
    assert_eq!(retry.attempts, retry.requests + retry.retries);
    assert!(retry.retries > 0, "the faults were retried: {retry:?}");
    for (name, n) in [
        ("requests", retry.requests),
        ("attempts", retry.attempts),
        ("retries", retry.retries),
        ("successes_after_retry", retry.successes_after_retry),
        ("exhausted", retry.exhausted),
        ("budget_exhausted", retry.budget_exhausted),
    ] {
        let query = format!(r#"mesh_retry_{name}_total{{route="user-service"}}"#);
        prometheus.until(&query, n as f64).await;
    }

    // Per instance. Each attempt is one balancer pick (static discovery
    // answers at once and the balancer always has an instance to pick:
    // the healthy one is never ejected), counted in
    // `mesh_instance_requests_total`; the picked endpoint's breaker then
    // sends it, or refuses it when its circuit is open (a pick that raced
    // the ejection, or a half-open circuit whose probes are all out).
    // So each upstream received exactly its picks minus its breaker's
    // refusals: an attempt the breaker timed out had reached the upstream.
    let balanced = route
        .services
        .iter()
        .find(|s| s.service == "user-service")
        .expect("balanced");
    let (mut picks, mut refused, mut received) = (0, 0, 0);
    for (role, upstream) in &instances {
        let address = upstream.addr.to_string();
        let instance = balanced
            .instances
            .iter()
            .find(|i| i.address == address)
            .unwrap_or_else(|| panic!("the {role} instance {address} is balanced"));
        let key = format!("user-service/{address}");
        // A breaker is made by the first attempt its endpoint is picked for.
        let breaker = route.breakers.iter().find(|b| b.key == key);
        let (opened, rejected) = breaker.map_or((0, 0), |b| (b.opened_total, b.rejected_total));
        if *role == "failing" {
            assert!(opened >= 1, "the failing instance was ejected: {breaker:?}");
        }
        assert_eq!(
            upstream.received(),
            instance.requests - rejected,
            "the {role} instance received its picks less its breaker's refusals: {instance:?} {breaker:?}"
        );
        (picks, refused, received) = (
            picks + instance.requests,
            refused + rejected,
            received + upstream.received(),
        );
        // Named by `endpoint` and `address`, never `instance`: that is
        // the label Prometheus gives every scraped series (the target,
        // here the gateway).
        let instance_requests = format!(
            r#"mesh_instance_requests_total{{route="user-service",service="user-service",endpoint="{address}",address="{address}",instance="{gateway}"}}"#
        );
        prometheus
            .until(&instance_requests, instance.requests as f64)
            .await;
        let Some(breaker) = breaker else {
            continue;
        };
        // Its counts, its state, and its endpoint's ejections (its
        // openings, counted again per endpoint).
        let breaker_label = format!(r#"route="user-service",breaker="{key}""#);
        for (family, n) in [
            ("opened", opened),
            ("rejected", rejected),
            ("transitions", breaker.transitions_total),
        ] {
            let query = format!("mesh_breaker_{family}_total{{{breaker_label}}}");
            prometheus.until(&query, n as f64).await;
        }
        let state = &breaker.state;
        let state_query = format!(r#"mesh_breaker_state{{{breaker_label},state="{state}"}}"#);
        prometheus.until(&state_query, 1.0).await;
        let ejections = format!(
            r#"mesh_endpoint_ejections_total{{route="user-service",service="user-service",endpoint="{address}"}}"#
        );
        prometheus.until(&ejections, opened as f64).await;
    }
    assert_eq!(picks, retry.attempts, "one pick per attempt");
    assert_eq!(
        received,
        retry.attempts - refused,
        "the upstreams received every attempt no breaker refused"
    );
    let picks_query = r#"sum(mesh_instance_requests_total{route="user-service"})"#;
    prometheus.until(picks_query, retry.attempts as f64).await;

    // The error ratio from the totals, exactly, and as the dashboard
    // asks it, from rates over the whole traffic: what the test saw
    // (rate()'s extrapolation at the series' edges may move it a little).
    let seen_ratio = failed as f64 / calls as f64;
    let totals = r#"sum(mesh_requests_total{service="user-service",status_class=~"5xx|error"}) / sum(mesh_requests_total{service="user-service"})"#;
    let got = prometheus.query(totals, None).await;
    assert_eq!(got.unwrap_or(0.0), seen_ratio, "error ratio of the totals");
    let at = traffic_ended + Duration::from_secs(2);
    if let Ok(ahead) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(ahead + Duration::from_secs(1)).await;
    }
    let window = rate_window(traffic_started, traffic_ended);
    let got = prometheus.query(&error_ratio(window), Some(at)).await;
    // With no failed call there is no failed series: no data, as the
    // dashboard shows it.
    assert!(
        failed > 0 || got.is_none_or(|r| r == 0.0),
        "error ratio {got:?} without a failed call"
    );
    let got = got.unwrap_or(0.0);
    assert!(
        (got - seen_ratio).abs() < 0.02,
        "error ratio {got} from rates, the test saw {seen_ratio} ({failed} of {calls})"
    );

    client.shutdown(Duration::from_secs(5)).await;
}
