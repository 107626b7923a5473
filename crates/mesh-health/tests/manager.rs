//! The manager's judgement on tokio's paused clock: thresholds, intervals,
//! startup gating, timeouts, concurrency, criticality, events, shutdown.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{EventBus, MeshEvent, Probe, ProbeStatus};
use mesh_health::{CheckError, CheckStatus, HealthCheck, HealthCheckManager};
use tokio::time::Instant;

/// A check whose outcome the test sets, counting its runs.
#[derive(Clone, Default)]
struct Switch {
    failing: Arc<AtomicBool>,
    runs: Arc<AtomicU32>,
}

impl Switch {
    fn check(&self, name: &str) -> mesh_health::HealthCheckBuilder {
        let this = self.clone();
        HealthCheck::builder(name, move || {
            let this = this.clone();
            async move {
                this.runs.fetch_add(1, Ordering::SeqCst);
                match this.failing.load(Ordering::SeqCst) {
                    true => Err(CheckError::new("switched off")),
                    false => Ok(()),
                }
            }
        })
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Lets the checks' tasks run what is due at the current (paused) time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn thresholds_and_intervals_decide_the_verdict() {
    let db = Switch::default();
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let manager = HealthCheckManager::builder()
        .check(
            db.check("db")
                .interval(Duration::from_secs(10))
                .failure_threshold(3)
                .success_threshold(2)
                .build()
                .expect("check"),
        )
        .events(bus)
        .build()
        .expect("manager");
    manager.start();
    settle().await;
    // The first run is at once; then one per interval.
    assert_eq!(db.runs(), 1);
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(db.runs(), 4);

    // Two failures in a row are not enough; the third is.
    db.fail(true);
    for expected in [
        ProbeStatus::Healthy,
        ProbeStatus::Healthy,
        ProbeStatus::Unhealthy,
    ] {
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(manager.status(Probe::Readiness), expected);
    }
    let report = manager.report(Probe::Readiness);
    assert_eq!(report.checks[0].status, CheckStatus::Failing);
    assert_eq!(report.checks[0].consecutive_failures, 3);
    assert_eq!(report.checks[0].last_error.as_deref(), Some("switched off"));

    // One success is not enough to come back; two are.
    db.fail(false);
    for expected in [ProbeStatus::Unhealthy, ProbeStatus::Healthy] {
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(manager.status(Probe::Readiness), expected);
    }

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            MeshEvent::HealthCheckFailed {
                check,
                consecutive_failures,
                ..
            } => seen.push(format!("failed {check} after {consecutive_failures}")),
            MeshEvent::HealthCheckRecovered { check } => seen.push(format!("recovered {check}")),
            MeshEvent::ProbeStatusChanged {
                probe: Probe::Readiness,
                from,
                to,
            } => seen.push(format!("readiness {from} -> {to}")),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "readiness unhealthy -> healthy",
            "failed db after 3",
            "readiness healthy -> unhealthy",
            "recovered db",
            "readiness unhealthy -> healthy",
        ]
    );
    manager.shutdown();
}

#[tokio::test(start_paused = true)]
async fn the_startup_probe_gates_the_others_until_it_passes_once() {
    let warmup = Switch::default();
    warmup.fail(true);
    let db = Switch::default();
    let manager = HealthCheckManager::builder()
        .check(
            warmup
                .check("cache-warmup")
                .probes([Probe::Startup])
                .interval(Duration::from_secs(1))
                .build()
                .expect("check"),
        )
        .check(
            db.check("db")
                .probes([Probe::Liveness, Probe::Readiness])
                .interval(Duration::from_secs(1))
                .build()
                .expect("check"),
        )
        .build()
        .expect("manager");
    manager.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(manager.status(Probe::Startup), ProbeStatus::Unhealthy);
    for probe in [Probe::Liveness, Probe::Readiness] {
        let report = manager.report(probe);
        assert_eq!(report.status, ProbeStatus::Unhealthy);
        assert_eq!(report.reason, Some("waiting for startup"));
    }
    assert_eq!(db.runs(), 0, "gated checks do not run before startup");

    warmup.fail(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(manager.status(Probe::Startup), ProbeStatus::Healthy);
    assert!(db.runs() >= 1);
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);

    // Passed once is enough: a later startup failure does not gate again.
    warmup.fail(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
    manager.shutdown();
}

#[tokio::test(start_paused = true)]
async fn a_hung_check_times_out_as_a_failure() {
    let manager = HealthCheckManager::builder()
        .check(
            HealthCheck::builder("hangs", std::future::pending::<Result<(), CheckError>>)
                .timeout(Duration::from_secs(2))
                .failure_threshold(1)
                .build()
                .expect("check"),
        )
        .build()
        .expect("manager");
    let started = Instant::now();
    manager.run_once().await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let report = manager.report(Probe::Readiness);
    assert_eq!(report.status, ProbeStatus::Unhealthy);
    assert_eq!(
        report.checks[0].last_error.as_deref(),
        Some("timed out after 2s")
    );
}

#[tokio::test(start_paused = true)]
async fn checks_run_concurrently() {
    let mut builder = HealthCheckManager::builder();
    for i in 0..10 {
        builder = builder.check(
            HealthCheck::builder(format!("slow-{i}"), || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<(), CheckError>(())
            })
            .build()
            .expect("check"),
        );
    }
    let manager = builder.build().expect("manager");
    let started = Instant::now();
    manager.run_once().await;
    // Ten 100 ms checks in 100 ms, not 1 s.
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
    assert!(manager.metrics().iter().all(|m| m.runs == 1));
}

#[tokio::test(start_paused = true)]
async fn non_critical_failures_degrade_and_pending_checks_do_not_kill() {
    let cache = Switch::default();
    cache.fail(true);
    let db = Switch::default();
    let manager = HealthCheckManager::builder()
        .check(
            cache
                .check("cache")
                .probes([Probe::Liveness, Probe::Readiness])
                .critical(false)
                .failure_threshold(1)
                .build()
                .expect("check"),
        )
        .check(
            db.check("db")
                .probes([Probe::Liveness, Probe::Readiness])
                .build()
                .expect("check"),
        )
        .build()
        .expect("manager");
    // Nothing has run: not ready, but alive.
    assert_eq!(manager.status(Probe::Liveness), ProbeStatus::Healthy);
    assert_eq!(
        manager.report(Probe::Readiness).reason,
        Some("checks pending")
    );
    manager.run_once().await;
    let report = manager.report(Probe::Readiness);
    assert_eq!(report.status, ProbeStatus::Degraded);
    assert!(report.status.passes());

    manager.shutdown();
    let report = manager.report(Probe::Readiness);
    assert_eq!(
        (report.status, report.reason),
        (ProbeStatus::Unhealthy, Some("stopping"))
    );
    // Alive while it drains.
    assert!(manager.status(Probe::Liveness).passes());
}

#[test]
fn bad_configurations_are_named() {
    let ok = || async { Ok::<(), CheckError>(()) };
    let err = HealthCheck::builder("db", ok)
        .failure_threshold(0)
        .build()
        .expect_err("zero threshold");
    assert!(
        err.to_string()
            .contains("health.checks.db.failure_threshold"),
        "{err}"
    );
    let err = HealthCheck::builder("db", ok)
        .probes([])
        .build()
        .expect_err("no probes");
    assert!(err.to_string().contains("health.checks.db.probes"), "{err}");
    let twice = HealthCheckManager::builder()
        .check(HealthCheck::builder("db", ok).build().expect("check"))
        .check(HealthCheck::builder("db", ok).build().expect("check"))
        .build()
        .expect_err("duplicate");
    assert!(twice.to_string().contains("health.checks.db"), "{twice}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_fails_instead_of_freezing() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let manager = HealthCheckManager::builder()
        .check(
            HealthCheck::builder("buggy", move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n > 0 {
                        panic!("a bug in the check");
                    }
                    Ok::<(), CheckError>(())
                }
            })
            .failure_threshold(2)
            .interval(Duration::from_secs(1))
            .build()
            .expect("check"),
        )
        .build()
        .expect("manager");
    manager.start();
    settle().await;
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
    // It panics from the second run on: the task survives, the runs count
    // as failures, and the threshold turns the probe unhealthy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    let report = manager.report(Probe::Readiness);
    assert_eq!(report.status, ProbeStatus::Unhealthy);
    assert_eq!(
        report.checks[0].last_error.as_deref(),
        Some("the check panicked")
    );
    assert!(calls.load(Ordering::SeqCst) >= 3);
    manager.shutdown();
}

#[tokio::test(start_paused = true)]
async fn a_shut_down_manager_stays_down() {
    let db = Switch::default();
    let manager = HealthCheckManager::builder()
        .check(
            db.check("db")
                .interval(Duration::from_secs(1))
                .build()
                .expect("check"),
        )
        .build()
        .expect("manager");
    manager.start();
    settle().await;
    assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
    manager.shutdown();
    let runs = db.runs();
    // start() after shutdown() does not bring readiness back.
    manager.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(db.runs(), runs, "the checks stopped");
    assert_eq!(manager.report(Probe::Readiness).reason, Some("stopping"));
}
