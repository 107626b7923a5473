//! The lookups' contract, against a scripted resolver and tokio's paused
//! clock: a hanging lookup hangs for exactly as long as the test says.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);

/// What the scripted resolver does for one name.
#[derive(Clone)]
enum Script {
    Answer(Vec<IpAddr>),
    Fail,
    Hang,
    /// Waits for a permit of the gate, then answers.
    Gated(Vec<IpAddr>),
}

/// A resolver that follows a script, counting calls and the most lookups
/// running at once.
#[derive(Clone)]
struct ScriptedDns(Arc<Scripted>);

struct Scripted {
    script: Mutex<HashMap<String, Script>>,
    calls: Mutex<Vec<String>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    gate: Semaphore,
}

/// Counts one running lookup, until dropped.
struct RunningLookup(Arc<Scripted>);

impl Drop for RunningLookup {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ScriptedDns {
    fn new() -> Self {
        ScriptedDns(Arc::new(Scripted {
            script: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }))
    }

    fn set(&self, name: &str, script: Script) {
        self.0
            .script
            .lock()
            .unwrap()
            .insert(name.to_owned(), script);
    }

    fn calls(&self, name: &str) -> usize {
        self.0
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }

    fn total_calls(&self) -> usize {
        self.0.calls.lock().unwrap().len()
    }

    fn peak(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }

    fn open_gate(&self, permits: usize) {
        self.0.gate.add_permits(permits);
    }

    fn lookups(&self, limits: Limits) -> HostLookups {
        HostLookups::new(Arc::new(self.clone()), TIMEOUT, limits)
    }
}

impl LookupHost for ScriptedDns {
    fn lookup(&self, name: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
        let dns = Arc::clone(&self.0);
        dns.calls.lock().unwrap().push(name.to_owned());
        let now = dns.running.fetch_add(1, Ordering::SeqCst) + 1;
        dns.peak.fetch_max(now, Ordering::SeqCst);
        let script = dns.script.lock().unwrap().get(name).cloned();
        Box::pin(async move {
            let _running = RunningLookup(Arc::clone(&dns));
            match script {
                Some(Script::Answer(ips)) => Ok(ips),
                Some(Script::Gated(ips)) => {
                    dns.gate.acquire().await.unwrap().forget();
                    Ok(ips)
                }
                Some(Script::Hang) => std::future::pending().await,
                Some(Script::Fail) | None => Err(io::Error::other("no such host")),
            }
        })
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn tracked(lookups: &HostLookups) -> BTreeSet<String> {
    lookups.lock().keys().cloned().collect()
}

/// Lets spawned lookups run to their end (the paused clock moves only
/// once every task is idle).
async fn settle_tasks() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_name_that_resolved_once_keeps_its_last_addresses_when_its_lookup_fails_or_hangs() {
    let dns = ScriptedDns::new();
    let lookups = dns.lookups(Limits::default());
    let users = service("users");
    let db = names(&["db"]);
    let good: Arc<[IpAddr]> = vec![ip("10.0.0.1"), ip("10.0.0.2")].into();

    dns.set(
        "db",
        Script::Answer(vec![ip("10.0.0.1"), ip("10.0.0.1"), ip("10.0.0.2")]),
    );
    assert_eq!(lookups.addresses(&users, &db).await["db"], good);

    dns.set("db", Script::Fail);
    assert_eq!(lookups.addresses(&users, &db).await["db"], good);

    dns.set("db", Script::Answer(Vec::new()));
    assert_eq!(
        lookups.addresses(&users, &db).await["db"],
        good,
        "no address is a failure too"
    );

    dns.set("db", Script::Hang);
    let started = Instant::now();
    assert_eq!(lookups.addresses(&users, &db).await["db"], good);
    assert_eq!(
        started.elapsed(),
        TIMEOUT,
        "a hanging lookup is waited on until its deadline"
    );

    // The next answer joins the overdue lookup: no second lookup, no wait.
    let started = Instant::now();
    assert_eq!(lookups.addresses(&users, &db).await["db"], good);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(dns.calls("db"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_lookup_is_never_started_twice_whoever_asks() {
    let dns = ScriptedDns::new();
    dns.set("stuck", Script::Hang);
    let lookups = dns.lookups(Limits::default());
    let both = names(&["stuck"]);
    for _ in 0..3 {
        let resolved = lookups.addresses(&service("users"), &both).await;
        assert!(resolved.is_empty(), "a name never resolved is left out");
        // Another service listing the same name shares the lookup.
        let resolved = lookups.clone().addresses(&service("orders"), &both).await;
        assert!(resolved.is_empty());
        tokio::time::advance(Duration::from_secs(30)).await;
    }
    assert_eq!(dns.calls("stuck"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_that_ends_after_its_deadline_still_refreshes_the_last_addresses() {
    let dns = ScriptedDns::new();
    dns.set("slow", Script::Gated(vec![ip("10.0.0.7")]));
    let lookups = dns.lookups(Limits::default());
    let users = service("users");
    let slow = names(&["slow"]);
    assert!(lookups.addresses(&users, &slow).await.is_empty());

    dns.open_gate(1);
    settle_tasks().await;
    dns.set("slow", Script::Fail);
    let resolved = lookups.addresses(&users, &slow).await;
    assert_eq!(*resolved["slow"], [ip("10.0.0.7")]);
    assert_eq!(dns.calls("slow"), 2);
}

#[tokio::test(start_paused = true)]
async fn lookups_beyond_the_concurrency_limit_queue_and_none_starts_twice() {
    let dns = ScriptedDns::new();
    let all = ["a", "b", "c", "d", "e"];
    for name in all {
        dns.set(name, Script::Gated(vec![ip("10.0.0.1")]));
    }
    let lookups = dns.lookups(Limits {
        names: 64,
        concurrent: 2,
    });
    let users = service("users");
    let listed = names(&all);

    assert!(lookups.addresses(&users, &listed).await.is_empty());
    assert_eq!(dns.total_calls(), 2, "two run, three queue");
    // A second answer starts nothing: every name has its lookup.
    assert!(lookups.addresses(&users, &listed).await.is_empty());
    assert_eq!(dns.total_calls(), 2);

    dns.open_gate(all.len());
    settle_tasks().await;
    assert_eq!(dns.total_calls(), all.len(), "the queued ones ran in turn");
    for name in all {
        dns.set(name, Script::Answer(vec![ip("10.0.0.2")]));
    }
    let resolved = lookups.addresses(&users, &listed).await;
    assert_eq!(resolved.len(), all.len());
    assert!(resolved.values().all(|ips| **ips == [ip("10.0.0.2")]));
    assert_eq!(dns.total_calls(), 2 * all.len());
    assert_eq!(dns.peak(), 2, "never more than the limit at once");
}

#[tokio::test(start_paused = true)]
async fn names_beyond_the_cap_are_not_looked_up_while_every_tracked_name_is_busy() {
    let dns = ScriptedDns::new();
    let all = ["a", "b", "c", "d", "e"];
    for name in all {
        dns.set(name, Script::Hang);
    }
    let lookups = dns.lookups(Limits {
        names: 3,
        concurrent: 16,
    });
    assert!(lookups
        .addresses(&service("users"), &names(&all))
        .await
        .is_empty());
    assert_eq!(dns.total_calls(), 3);
    assert_eq!(tracked(&lookups).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn when_full_the_idle_name_listed_least_recently_makes_room() {
    let dns = ScriptedDns::new();
    for name in ["a", "b", "c"] {
        dns.set(name, Script::Answer(vec![ip("10.0.0.1")]));
    }
    let lookups = dns.lookups(Limits {
        names: 2,
        concurrent: 16,
    });
    for (svc, name) in [("users", "a"), ("orders", "b"), ("billing", "c")] {
        let resolved = lookups.addresses(&service(svc), &names(&[name])).await;
        assert!(resolved.contains_key(name), "{name}");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(tracked(&lookups), names(&["b", "c"]));
}

#[tokio::test(start_paused = true)]
async fn a_name_is_forgotten_once_no_service_lists_it_and_its_lookup_has_ended() {
    let dns = ScriptedDns::new();
    dns.set("x", Script::Answer(vec![ip("10.0.0.1")]));
    dns.set("y", Script::Answer(vec![ip("10.0.0.2")]));
    dns.set("slow", Script::Gated(vec![ip("10.0.0.3")]));
    let lookups = dns.lookups(Limits::default());
    let (users, orders) = (service("users"), service("orders"));

    lookups.addresses(&users, &names(&["x", "y"])).await;
    lookups.addresses(&orders, &names(&["y", "slow"])).await;
    lookups.addresses(&users, &names(&["x"])).await;
    assert_eq!(
        tracked(&lookups),
        names(&["slow", "x", "y"]),
        "orders still lists y"
    );

    lookups.addresses(&orders, &names(&[])).await;
    assert_eq!(
        tracked(&lookups),
        names(&["slow", "x"]),
        "slow is kept while its lookup runs"
    );
    dns.open_gate(1);
    settle_tasks().await;
    assert_eq!(tracked(&lookups), names(&["x"]));
}
