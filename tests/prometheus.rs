//! The metrics as Prometheus itself reads them: `promtool check metrics`
//! passes on the gateway's `/metrics`, and a real Prometheus server
//! scraping the gateway example on loopback answers the dashboard's
//! questions (request rate, error ratio, p99 from the histogram) with
//! what the client saw. Debian's `prometheus` package brings both
//! programs; scripts/test.sh installs it.

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;

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

/// What every upstream call takes: all of them fall in the histogram's
/// 25 ms to 50 ms bucket unless the machine stalls a call past 50 ms.
const UPSTREAM_DELAY: Duration = Duration::from_millis(30);

/// Every fourth upstream answer is a 503.
const ERROR_EVERY: u64 = 4;

/// A program of Debian's `prometheus` package, or a clear failure.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: these tests need Debian's `prometheus` package \
                 (scripts/test.sh installs it: apt-get install prometheus)"
            )
        })
}

/// An upstream `user-service` on loopback: every call waits
/// [`UPSTREAM_DELAY`], every [`ERROR_EVERY`]th is answered 503.
async fn upstream() -> SocketAddr {
    let served = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/api/users",
        get(move || {
            let n = served.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(UPSTREAM_DELAY).await;
                if n % ERROR_EVERY == ERROR_EVERY - 1 {
                    (StatusCode::SERVICE_UNAVAILABLE, "try later")
                } else {
                    (StatusCode::OK, "[]")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The gateway example's app over a client of `upstream` that never
/// retries (so each call is one upstream answer), served on loopback.
async fn gateway(upstream: SocketAddr) -> (MeshClient, SocketAddr) {
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ user-service = ["{upstream}"] }}
[retry]
retryable_statuses = []
"#
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
/// time; returns when each one completed.
async fn traffic(gateway: SocketAddr, calls: u64, workers: u64) -> Vec<SystemTime> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let http = http();
            let mut done = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                fetch(&http, &format!("http://{gateway}/api/users")).await;
                done.push(SystemTime::now());
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
    let promtool = program("promtool");
    let (client, gateway) = gateway(upstream().await).await;
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
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the exposition:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let (client, gateway) = gateway(upstream().await).await;
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
    let errors = r#"sum(mesh_requests_total{service="user-service",status_class="5xx"})"#;
    assert_eq!(
        prometheus.query(errors, None).await,
        Some((calls / ERROR_EVERY) as f64),
        "one call in {ERROR_EVERY} answered 503"
    );

    // The error ratio, as the dashboard asks it (from rates).
    let window = traffic_ended
        .duration_since(traffic_started)
        .expect("time")
        .as_secs()
        + 5;
    let ratio = format!(
        r#"sum(rate(mesh_requests_total{{service="user-service",status_class="5xx"}}[{window}s])) / sum(rate(mesh_requests_total{{service="user-service"}}[{window}s]))"#
    );
    let at = traffic_ended + Duration::from_secs(2);
    let got = prometheus.query(&ratio, Some(at)).await.expect("ratio");
    assert!(
        (got - 0.25).abs() < 0.03,
        "error ratio {got}, the client saw 0.25"
    );

    // The request rate over 4 s in the middle of the traffic, against
    // the calls the test saw complete in that window.
    let middle = traffic_started + traffic_ended.duration_since(traffic_started).expect("t") / 2;
    let span = Duration::from_secs(4);
    let from = middle - span;
    let seen = done.iter().filter(|t| **t > from && **t <= middle).count() as f64;
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
    assert!(
        (0.025..=0.1).contains(&got),
        "p99 {got}s for calls of {UPSTREAM_DELAY:?}"
    );
    let p99_rate = format!(
        r#"histogram_quantile(0.99, sum by (le) (rate(mesh_request_duration_seconds_bucket{{service="user-service"}}[{window}s])))"#
    );
    let got = prometheus.query(&p99_rate, Some(at)).await.expect("p99");
    assert!(
        (0.025..=0.1).contains(&got),
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
