//! The Redis PING check of `examples/redis_check.rs` against a real
//! redis-server (Debian's, installed by scripts/test.sh) on a loopback port:
//! passing while it runs, failing once it is killed, passing again after a
//! restart (the check reconnects).

#[path = "../examples/redis_check.rs"]
mod example;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_health::{HealthCheckManager, Probe, ProbeStatus};
use mesh_testkit::net::free_port;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(port: u16) -> Redis {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "redis-server could not start: install Debian's redis-server (scripts/test.sh does)",
        );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Redis(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_redis_ping_passes_fails_and_recovers() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let manager = HealthCheckManager::builder()
        .check(example::redis_check(&url).expect("check"))
        .build()
        .expect("manager");

    let redis = start(port).await;
    manager.run_once().await;
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);

    drop(redis);
    for _ in 0..3 {
        manager.run_once().await;
    }
    let report = manager.report(Probe::Readiness);
    assert_eq!(report.status, ProbeStatus::Unhealthy);
    assert!(
        report.checks[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Redis")),
        "{report:?}"
    );

    let _redis = start(port).await;
    manager.run_once().await;
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
}
