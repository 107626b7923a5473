//! The hostname lookups behind Consul instances: at most one at a time per
//! name, a bounded number at once, and each name's last good addresses
//! kept.
//!
//! Why this shape: the system resolver (`getaddrinfo`) blocks, so tokio
//! runs it on its blocking pool, and a timeout stops *waiting* for it but
//! cannot stop it: the thread stays busy until the resolver gives up on
//! its own (after the timeouts and attempts of `resolv.conf`). Starting
//! fresh lookups of every name on every Consul answer would, while DNS
//! hangs, pile blocked threads into the pool that hyper's connector
//! (`GaiResolver`) needs for every connection. So, per registry (its
//! clones share one [`HostLookups`]):
//!
//! - A name is looked up again only once its previous lookup has ended. An
//!   answer that lists a name whose lookup is still running waits for that
//!   lookup, until its deadline (its start plus `hostname_lookup_timeout`,
//!   so an overdue lookup is not waited on again), and starts no other.
//! - At most `MAX_CONCURRENT_LOOKUPS` lookups run at once; others queue,
//!   and their deadline runs while they queue.
//! - At most `MAX_NAMES` names are tracked. A name is forgotten once no
//!   service lists it any more and its lookup has ended; when the map is
//!   full, the idle name listed least recently makes room, else the new
//!   name is not looked up and its instances are left out.
//! - A name that resolved once keeps its last good addresses: a lookup
//!   that fails, finds no address or misses its deadline leaves them in
//!   use (one warning per failure streak), so a DNS blip never makes a
//!   published set smaller, and a lookup that ends late still refreshes
//!   them. A name that never resolved is left out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mesh_core::ServiceName;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::registry::BoxFuture;

/// The most hostnames one registry tracks (Consul writes them, so they are
/// few, but nothing outside bounds them).
const MAX_NAMES: usize = 1024;
/// The most lookups one registry runs at once: each may hold a thread of
/// tokio's blocking pool (512 by default) for as long as the system
/// resolver takes to give up.
const MAX_CONCURRENT_LOOKUPS: usize = 16;

/// Resolves a hostname to its addresses: the system resolver, or a test's
/// script.
pub(crate) trait LookupHost: Send + Sync + 'static {
    /// The addresses `name` resolves to, in the resolver's order.
    fn lookup(&self, name: &str) -> BoxFuture<io::Result<Vec<IpAddr>>>;
}

/// `getaddrinfo` through tokio's blocking pool, so `/etc/hosts` and the
/// host's search domains apply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SystemResolver;

// === impl SystemResolver ===

impl LookupHost for SystemResolver {
    fn lookup(&self, name: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
        let name = name.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// Why a name has no fresh addresses.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The resolver answered with an error.
    #[error("the system resolver failed")]
    Failed(#[source] Arc<io::Error>),
    /// The resolver answered with no address.
    #[error("the system resolver found no address")]
    NoAddresses,
    /// No answer by the deadline; the lookup goes on.
    #[error("no answer within {0:?} (the name is not looked up again until this lookup ends)")]
    TimedOut(Duration),
    /// The lookup task ended without an answer (it panicked).
    #[error("the lookup ended without an answer")]
    Abandoned,
    /// The name did not fit in the map.
    #[error("{0} hostnames are tracked already and all of them are in use, so this one is not looked up")]
    TooManyNames(usize),
}

/// A lookup's result: its distinct addresses, or why there are none.
type Outcome = Result<Arc<[IpAddr]>, LookupError>;

/// The bounds of a [`HostLookups`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The most names tracked.
    pub(crate) names: usize,
    /// The most lookups running at once.
    pub(crate) concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            names: MAX_NAMES,
            concurrent: MAX_CONCURRENT_LOOKUPS,
        }
    }
}

/// The hostnames of one registry, each with its running lookup and last
/// good addresses; cheap to clone (clones share it).
#[derive(Clone)]
pub(crate) struct HostLookups(Arc<Shared>);

struct Shared {
    resolver: Arc<dyn LookupHost>,
    timeout: Duration,
    limits: Limits,
    permits: Arc<Semaphore>,
    names: Mutex<HashMap<String, NameState>>,
}

/// What is known of one name.
struct NameState {
    /// The addresses of the last lookup that found some.
    last_good: Option<Arc<[IpAddr]>>,
    /// The lookup started and not yet ended.
    running: Option<Running>,
    /// A failure was reported and no lookup succeeded since.
    failing: bool,
    /// The services whose last answer lists the name.
    listed_by: HashSet<ServiceName>,
    /// When an answer last listed it (the eviction order when full).
    last_listed: Instant,
}

/// A running lookup, as those waiting for it see it.
#[derive(Clone)]
struct Running {
    /// When those waiting stop waiting.
    deadline: Instant,
    /// `Some` once the lookup has ended.
    outcome: watch::Receiver<Option<Outcome>>,
}

/// What an answer waits on for one name.
enum Wait {
    Lookup(Running),
    Refused,
}

// === impl HostLookups ===

impl HostLookups {
    /// Lookups through `resolver`, each waited on for at most `timeout`.
    pub(crate) fn new(resolver: Arc<dyn LookupHost>, timeout: Duration, limits: Limits) -> Self {
        HostLookups(Arc::new(Shared {
            resolver,
            timeout,
            limits,
            permits: Arc::new(Semaphore::new(limits.concurrent)),
            names: Mutex::new(HashMap::new()),
        }))
    }

    /// The system resolver's lookups, with the default limits.
    #[cfg(test)]
    pub(crate) fn system(timeout: Duration) -> Self {
        Self::new(Arc::new(SystemResolver), timeout, Limits::default())
    }

    /// The addresses of each of `names`, which `service`'s latest answer
    /// lists: fresh where a lookup answers in time, else the name's last
    /// good ones; a name with neither is absent. Names `service` listed
    /// before and no longer does are forgotten (unless another service
    /// lists them).
    pub(crate) async fn addresses(
        &self,
        service: &ServiceName,
        names: &BTreeSet<String>,
    ) -> HashMap<String, Arc<[IpAddr]>> {
        let waits = self.start(service, names);
        let mut outcomes = Vec::with_capacity(waits.len());
        // One after the other, each until its own deadline: as long as
        // waiting for all of them at once.
        for (name, wait) in waits {
            let outcome = match wait {
                Wait::Lookup(running) => self.wait(running).await,
                Wait::Refused => Err(LookupError::TooManyNames(self.0.limits.names)),
            };
            outcomes.push((name, outcome));
        }
        self.settle(service, outcomes)
    }

    /// Notes what `service` lists now and starts the lookups `names` need
    /// (none for a name whose lookup is still running).
    fn start(&self, service: &ServiceName, names: &BTreeSet<String>) -> Vec<(String, Wait)> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|name, state| {
            if !names.contains(name) {
                state.listed_by.remove(service);
            }
            !state.listed_by.is_empty() || !state.is_idle()
        });
        let mut waits = Vec::with_capacity(names.len());
        for name in names {
            if !map.contains_key(name)
                && map.len() >= self.0.limits.names
                && !make_room(&mut map, names)
            {
                waits.push((name.clone(), Wait::Refused));
                continue;
            }
            let state = map.entry(name.clone()).or_insert_with(|| NameState {
                last_good: None,
                running: None,
                failing: false,
                listed_by: HashSet::new(),
                last_listed: now,
            });
            state.listed_by.insert(service.clone());
            state.last_listed = now;
            let running = match &state.running {
                Some(running) if !running.ended() => running.clone(),
                _ => {
                    let running = self.spawn_lookup(name, now);
                    state.running = Some(running.clone());
                    running
                }
            };
            waits.push((name.clone(), Wait::Lookup(running)));
        }
        waits
    }

    /// Starts looking `name` up on a task of its own, which outlives the
    /// answer that started it (a timeout cannot stop `getaddrinfo`) and
    /// records what it finds.
    fn spawn_lookup(&self, name: &str, now: Instant) -> Running {
        let (done, outcome) = watch::channel(None);
        let shared = Arc::downgrade(&self.0);
        let resolver = Arc::clone(&self.0.resolver);
        let permits = Arc::clone(&self.0.permits);
        let name = name.to_owned();
        tokio::spawn(async move {
            // The semaphore is never closed.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let outcome = match resolver.lookup(&name).await {
                Ok(ips) => distinct(ips),
                Err(e) => Err(LookupError::Failed(Arc::new(e))),
            };
            if let Some(shared) = shared.upgrade() {
                HostLookups(shared).finish(&name, &outcome);
            }
            done.send_replace(Some(outcome));
        });
        Running {
            deadline: now + self.0.timeout,
            outcome,
        }
    }

    /// Records the end of `name`'s lookup.
    fn finish(&self, name: &str, outcome: &Outcome) {
        let mut map = self.lock();
        let Some(state) = map.get_mut(name) else {
            return;
        };
        state.running = None;
        if let Ok(ips) = outcome {
            state.last_good = Some(Arc::clone(ips));
        }
        if state.listed_by.is_empty() {
            map.remove(name);
        }
    }

    /// The outcome of `running`, or why there is none by its deadline.
    async fn wait(&self, mut running: Running) -> Outcome {
        let ended = running.outcome.wait_for(Option::is_some);
        match tokio::time::timeout_at(running.deadline, ended).await {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Err(LookupError::Abandoned)),
            Ok(Err(_)) => Err(LookupError::Abandoned),
            Err(_) => Err(LookupError::TimedOut(self.0.timeout)),
        }
    }

    /// The addresses to publish for each name, given its outcome, with
    /// one warning per failure streak.
    fn settle(
        &self,
        service: &ServiceName,
        outcomes: Vec<(String, Outcome)>,
    ) -> HashMap<String, Arc<[IpAddr]>> {
        let mut map = self.lock();
        let mut resolved = HashMap::with_capacity(outcomes.len());
        for (host, outcome) in outcomes {
            let state = map.get_mut(&host);
            match outcome {
                Ok(ips) => {
                    if state.is_some_and(|state| std::mem::take(&mut state.failing)) {
                        tracing::info!(%service, %host, "Consul instance address resolves again");
                    }
                    resolved.insert(host, ips);
                }
                Err(error) => {
                    let error = mesh_core::error_chain(&error);
                    let (first, last_good) = match state {
                        Some(state) => (
                            !std::mem::replace(&mut state.failing, true),
                            state.last_good.clone(),
                        ),
                        None => (true, None),
                    };
                    match last_good {
                        Some(ips) => {
                            if first {
                                tracing::warn!(%service, %host, %error, "Consul instance address does not resolve; its last addresses are kept until it does");
                            }
                            resolved.insert(host, ips);
                        }
                        None if first => {
                            tracing::warn!(%service, %host, %error, "Consul instance address does not resolve; its instances are left out");
                        }
                        None => {}
                    }
                }
            }
        }
        resolved
    }

    /// The map; a panic elsewhere while it was held leaves each entry
    /// usable (a lookup that never ends is noticed by its closed channel),
    /// so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, NameState>> {
        self.0.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl NameState ===

impl NameState {
    /// No lookup of the name is running.
    fn is_idle(&self) -> bool {
        self.running.as_ref().is_none_or(Running::ended)
    }
}

// === impl Running ===

impl Running {
    /// The lookup task is gone without recording its end (it panicked).
    fn ended(&self) -> bool {
        self.outcome.has_changed().is_err()
    }
}

/// Frees one place in a full `map` by forgetting the idle name listed
/// least recently, never one of `keep`; false when every name is busy.
fn make_room(map: &mut HashMap<String, NameState>, keep: &BTreeSet<String>) -> bool {
    let oldest = map
        .iter()
        .filter(|(name, state)| !keep.contains(*name) && state.is_idle())
        .min_by_key(|(_, state)| state.last_listed)
        .map(|(name, _)| name.clone());
    oldest.is_some_and(|name| map.remove(&name).is_some())
}

/// `ips` without duplicates, in the resolver's order; none is an error.
fn distinct(ips: Vec<IpAddr>) -> Outcome {
    let mut unique: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    if unique.is_empty() {
        return Err(LookupError::NoAddresses);
    }
    Ok(unique.into())
}

#[cfg(test)]
mod tests;
