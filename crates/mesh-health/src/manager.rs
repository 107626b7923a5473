//! [`HealthCheckManager`]: runs the checks and judges the probes.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use mesh_core::{ConfigError, EventBus, MeshEvent, Probe, ProbeStatus};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::health_check::HealthCheck;
use crate::report::{CheckMetrics, CheckReport, ProbeReport};
use crate::state::{CheckState, CheckStatus, Transition};

/// Runs a service's health checks and answers its liveness, readiness and
/// startup probes (the design document's health check manager).
///
/// Each check runs on its own tokio task at its own interval, bounded by
/// its timeout (a hung check is a failure), judged by its thresholds. A
/// probe is unhealthy when a critical check feeding it fails, degraded
/// (still passing) when only non-critical ones do. Until the startup probe
/// has passed once, checks that feed only liveness or readiness do not
/// run and both probes report `waiting for startup`; with no startup check
/// registered, startup passes at once. [`HealthCheckManager::shutdown`]
/// turns readiness unhealthy first, so traffic drains, then stops the
/// checks. Clones share everything.
///
/// ```
/// use std::time::Duration;
/// use mesh_core::{Probe, ProbeStatus};
/// use mesh_health::{CheckError, HealthCheck, HealthCheckManager};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), mesh_core::ConfigError> {
/// let manager = HealthCheckManager::builder()
///     .check(HealthCheck::builder("always", || async { Ok::<(), CheckError>(()) })
///         .probes([Probe::Liveness, Probe::Readiness])
///         .build()?)
///     .build()?;
/// manager.run_once().await;
/// assert_eq!(manager.status(Probe::Readiness), ProbeStatus::Healthy);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HealthCheckManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    checks: Vec<Registered>,
    events: Option<EventBus>,
    started: watch::Sender<bool>,
    stopping: AtomicBool,
    last: Mutex<[ProbeStatus; 3]>,
    /// Each probe's verdict, sent on change (in `Probe::ALL` order), for
    /// whoever serves it as a stream (the gRPC health service).
    changes: [watch::Sender<ProbeStatus>; 3],
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Debug)]
struct Registered {
    check: HealthCheck,
    state: Mutex<CheckState>,
}

/// Builds a [`HealthCheckManager`].
#[derive(Debug, Default)]
pub struct HealthCheckManagerBuilder {
    checks: Vec<HealthCheck>,
    events: Option<EventBus>,
}

impl HealthCheckManagerBuilder {
    /// Adds a check.
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Publishes check failures and recoveries and probe changes to `bus`.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }

    /// Builds; check names must be unique.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the check (`health.checks.<name>`) when
    /// two have the same name.
    pub fn build(self) -> Result<HealthCheckManager, ConfigError> {
        let mut names = HashSet::new();
        for check in &self.checks {
            if !names.insert(check.name.clone()) {
                return Err(ConfigError::new(
                    format!("health.checks.{}", check.name),
                    "two checks have this name",
                ));
            }
        }
        let has_startup = self
            .checks
            .iter()
            .any(|c| c.probes.contains(&Probe::Startup));
        let manager = HealthCheckManager {
            inner: Arc::new(Inner {
                checks: self
                    .checks
                    .into_iter()
                    .map(|check| Registered {
                        check,
                        state: Mutex::new(CheckState::new()),
                    })
                    .collect(),
                events: self.events,
                started: watch::Sender::new(!has_startup),
                stopping: AtomicBool::new(false),
                last: Mutex::new([ProbeStatus::Unhealthy; 3]),
                changes: Probe::ALL.map(|_| watch::Sender::new(ProbeStatus::Unhealthy)),
                tasks: Mutex::new(JoinSet::new()),
            }),
        };
        // The verdicts before any check has run, as the baseline for
        // change events.
        if let Ok(mut last) = manager.inner.last.lock() {
            *last = Probe::ALL.map(|p| manager.status(p));
            for (sender, status) in manager.inner.changes.iter().zip(*last) {
                sender.send_replace(status);
            }
        }
        Ok(manager)
    }
}

impl HealthCheckManager {
    /// Starts configuring a manager.
    pub fn builder() -> HealthCheckManagerBuilder {
        HealthCheckManagerBuilder::default()
    }

    /// Starts every check on its own task (needs a tokio runtime). A
    /// second call restarts them; after [`HealthCheckManager::shutdown`] it
    /// does nothing (a stopped service stays not ready).
    pub fn start(&self) {
        if self.inner.stopping.load(Ordering::Relaxed) {
            tracing::warn!("health checks not started: the manager was shut down");
            return;
        }
        let Ok(mut tasks) = self.inner.tasks.lock() else {
            return;
        };
        // Dropping the old set aborts its tasks.
        *tasks = JoinSet::new();
        for index in 0..self.inner.checks.len() {
            // Weak: the tasks must not keep the manager alive; dropping the
            // last clone stops them.
            tasks.spawn(run_forever(Arc::downgrade(&self.inner), index));
        }
    }

    /// Runs every check that may run now once, all concurrently, and
    /// returns when all have finished (or timed out).
    pub async fn run_once(&self) {
        let mut runs = JoinSet::new();
        for index in 0..self.inner.checks.len() {
            if self.inner.may_run(index) {
                let inner = Arc::clone(&self.inner);
                runs.spawn(async move { inner.run(index).await });
            }
        }
        while runs.join_next().await.is_some() {}
    }

    /// Graceful stop, for good: readiness turns unhealthy (`stopping`) at
    /// once so traffic drains while liveness keeps passing, then the check
    /// tasks stop (a run in flight is abandoned).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        self.inner.publish_changes();
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            *tasks = JoinSet::new();
        }
    }

    /// A probe's verdict now.
    pub fn status(&self, probe: Probe) -> ProbeStatus {
        self.inner.verdict(probe).0
    }

    /// A probe's verdict now and every change to it: the receiver holds
    /// the current verdict and is woken each time it changes (never for a
    /// run that leaves it as it was). Receivers outliving the manager see
    /// the channel closed.
    ///
    /// ```
    /// use mesh_core::{Probe, ProbeStatus};
    /// use mesh_health::HealthCheckManager;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), mesh_core::ConfigError> {
    /// let manager = HealthCheckManager::builder().build()?;
    /// let mut readiness = manager.subscribe(Probe::Readiness);
    /// assert_eq!(*readiness.borrow_and_update(), ProbeStatus::Healthy);
    /// manager.shutdown();
    /// readiness.changed().await.expect("the manager is alive");
    /// assert_eq!(*readiness.borrow(), ProbeStatus::Unhealthy);
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, probe: Probe) -> watch::Receiver<ProbeStatus> {
        self.inner.changes[probe_index(probe)].subscribe()
    }

    /// A probe's verdict with each check behind it.
    pub fn report(&self, probe: Probe) -> ProbeReport {
        let (status, reason) = self.inner.verdict(probe);
        let checks = self
            .inner
            .checks
            .iter()
            .filter(|r| r.check.probes.contains(&probe))
            .map(|r| {
                let state = r.snapshot();
                CheckReport {
                    name: r.check.name.to_string(),
                    status: state.status,
                    critical: r.check.critical,
                    last_error: state.last_error,
                    last_duration_ms: state.last_duration.map(|d| d.as_secs_f64() * 1e3),
                    consecutive_failures: state.consecutive_failures,
                }
            })
            .collect();
        ProbeReport {
            probe,
            status,
            reason,
            checks,
        }
    }

    /// Counters per check.
    pub fn metrics(&self) -> Vec<CheckMetrics> {
        self.inner
            .checks
            .iter()
            .map(|r| {
                let state = r.snapshot();
                CheckMetrics {
                    name: r.check.name.to_string(),
                    status: state.status,
                    runs: state.runs,
                    failures: state.failures,
                    consecutive_failures: state.consecutive_failures,
                    last_duration_ms: state.last_duration.map(|d| d.as_secs_f64() * 1e3),
                }
            })
            .collect()
    }
}

impl Registered {
    fn snapshot(&self) -> CheckState {
        match self.state.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Inner {
    fn started(&self) -> bool {
        *self.started.borrow()
    }

    /// Checks feeding only liveness or readiness wait for startup.
    fn may_run(&self, index: usize) -> bool {
        self.started() || self.checks[index].check.probes.contains(&Probe::Startup)
    }

    async fn run(&self, index: usize) {
        let registered = &self.checks[index];
        let span = tracing::debug_span!(
            parent: None,
            "mesh.health.check",
            mesh.check = %registered.check.name,
            mesh.outcome = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.run_in_span(index), span).await
    }

    /// [`Inner::run`], inside its span.
    async fn run_in_span(&self, index: usize) {
        let registered = &self.checks[index];
        let check = &registered.check;
        let started = tokio::time::Instant::now();
        // A check that panics (building its future or running it) fails;
        // it must not kill the task and freeze its last status.
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (check.run)())) {
            Err(_) => Err("the check panicked".to_owned()),
            Ok(future) => {
                let timeout = check.timeout;
                let run = tokio::spawn(async move { tokio::time::timeout(timeout, future).await });
                match run.await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(error))) => Err(error.0),
                    Ok(Err(_)) => Err(format!("timed out after {timeout:?}")),
                    Err(joined) if joined.is_panic() => Err("the check panicked".to_owned()),
                    Err(_) => Err("the check was cancelled".to_owned()),
                }
            }
        };
        let took = started.elapsed();
        let verdict = if outcome.is_ok() {
            "success"
        } else {
            "failure"
        };
        tracing::Span::current().record("mesh.outcome", verdict);
        let (transition, state) = {
            let mut state = match registered.state.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            let transition = state.record(
                outcome,
                took,
                check.failure_threshold,
                check.success_threshold,
            );
            (transition, state.clone())
        };
        match transition {
            Transition::Failed => {
                let error = state.last_error.clone().unwrap_or_default();
                tracing::warn!(check = %check.name, %error, failures = state.consecutive_failures, "health check failing");
                self.publish(MeshEvent::HealthCheckFailed {
                    check: check.name.to_string(),
                    critical: check.critical,
                    error,
                    consecutive_failures: state.consecutive_failures,
                });
            }
            Transition::Recovered => {
                tracing::info!(check = %check.name, "health check recovered");
                self.publish(MeshEvent::HealthCheckRecovered {
                    check: check.name.to_string(),
                });
            }
            Transition::None => {}
        }
        if !self.started() && self.verdict(Probe::Startup).0.passes() {
            tracing::info!("startup probe passed");
            self.started.send_replace(true);
        }
        self.publish_changes();
    }

    fn verdict(&self, probe: Probe) -> (ProbeStatus, Option<&'static str>) {
        if probe == Probe::Readiness && self.stopping.load(Ordering::Relaxed) {
            return (ProbeStatus::Unhealthy, Some("stopping"));
        }
        if probe != Probe::Startup && !self.started() {
            return (ProbeStatus::Unhealthy, Some("waiting for startup"));
        }
        let mut verdict = ProbeStatus::Healthy;
        for registered in self
            .checks
            .iter()
            .filter(|r| r.check.probes.contains(&probe))
        {
            let status = registered.snapshot().status;
            let critical = registered.check.critical;
            match (status, critical) {
                (CheckStatus::Failing, true) => return (ProbeStatus::Unhealthy, None),
                // Not run yet: a process that is starting is not dead, but
                // is not ready or started either.
                (CheckStatus::Pending, true) if probe != Probe::Liveness => {
                    return (ProbeStatus::Unhealthy, Some("checks pending"))
                }
                // Startup has not passed until every one of its checks has
                // run, critical or not.
                (CheckStatus::Pending, false) if probe == Probe::Startup && !self.started() => {
                    return (ProbeStatus::Unhealthy, Some("checks pending"))
                }
                (CheckStatus::Failing, false) => verdict = ProbeStatus::Degraded,
                _ => {}
            }
        }
        (verdict, None)
    }

    fn publish(&self, event: MeshEvent) {
        if let Some(bus) = &self.events {
            bus.publish(event);
        }
    }

    fn publish_changes(&self) {
        // Judged and published under the lock: two runs finishing at once
        // must not publish their changes out of order.
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = Probe::ALL.map(|p| self.verdict(p).0);
        let before = std::mem::replace(&mut *last, now);
        for ((probe, from), to) in Probe::ALL.into_iter().zip(before).zip(now) {
            if from != to {
                self.changes[probe_index(probe)].send_replace(to);
                tracing::info!(%probe, %from, %to, "probe status changed");
                self.publish(MeshEvent::ProbeStatusChanged { probe, from, to });
            }
        }
    }
}

/// Where `probe` sits in `Probe::ALL` (and so in `Inner::changes`).
fn probe_index(probe: Probe) -> usize {
    match probe {
        Probe::Liveness => 0,
        Probe::Readiness => 1,
        Probe::Startup => 2,
    }
}

async fn run_forever(weak: Weak<Inner>, index: usize) {
    let (interval, gate) = {
        let Some(inner) = weak.upgrade() else { return };
        let gate = (!inner.may_run(index)).then(|| inner.started.subscribe());
        (inner.checks[index].check.interval, gate)
    };
    if let Some(mut started) = gate {
        if started.wait_for(|s| *s).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        inner.run(index).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            tasks.abort_all();
        }
    }
}
