//! [`ServiceBudgets`]: one retry budget per service a layer serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use http::Request;
use mesh_core::clock::{self, Nanos};
use mesh_core::ext::{Destination, TargetService};
use mesh_core::ServiceName;

use crate::budget::{RetryBudget, RetryBudgetConfig};

/// The most services given a budget of their own: names come from
/// requests (a URI's host), so the table is bounded. Past it, new services
/// share one budget.
pub(crate) const MAX_SERVICES: usize = 1024;

/// How often a full table is looked over for idle budgets: at most once a
/// second, so that hosts arriving past the bound cost a lookup, not a scan.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A budget per service, each with the layer's settings, made on the
/// service's first call, so that a failing service spends only retries
/// its own traffic funded. Found by name in a lock-free snapshot; a new
/// service takes a mutex and copies the table (once per service, not per
/// call).
///
/// Bounded at [`MAX_SERVICES`]: a full table first drops the budgets no
/// request used for a whole window (a budget so idle holds what a fresh
/// one holds), and a service found unknown can be forgotten at once
/// ([`ServiceBudgets::forget`]). Requests that name no service (no host),
/// services past the bound, and hosts that are no valid service name
/// share one more budget.
#[derive(Debug)]
pub(crate) struct ServiceBudgets {
    settings: RetryBudgetConfig,
    by_service: ArcSwap<HashMap<ServiceName, RetryBudget>>,
    changing: Mutex<()>,
    /// When a full table was last looked over (clock nanos).
    swept: AtomicU64,
    shared: RetryBudget,
}

// === impl ServiceBudgets ===

impl ServiceBudgets {
    /// Budgets made with `settings`, which were validated with the rest of
    /// the configuration.
    pub(crate) fn new(settings: RetryBudgetConfig, shared: RetryBudget) -> Self {
        ServiceBudgets {
            settings,
            by_service: ArcSwap::from_pointee(HashMap::new()),
            changing: Mutex::new(()),
            swept: AtomicU64::new(0),
            shared,
        }
    }

    /// The budget of the service `req` goes to: its [`TargetService`],
    /// else its URI's host.
    pub(crate) fn of<B>(&self, req: &Request<B>) -> RetryBudget {
        let table = self.by_service.load();
        // Most requests name their service by their whole authority
        // (`http://users/...`): found so, the host is never parsed out.
        let quick = match req.extensions().get::<TargetService>() {
            Some(TargetService(service)) => Some(service.as_str()),
            None => req.uri().authority().map(|a| a.as_str()),
        };
        if let Some(budget) = quick.and_then(|key| table.get(key)) {
            return budget.clone();
        }
        let Some(destination) = Destination::of(req) else {
            return self.shared.clone();
        };
        if let Some(budget) = table.get(destination.as_str()) {
            return budget.clone();
        }
        // A full table makes no room until its next sweep: until then a
        // new name costs no allocation and no lock.
        if table.len() >= MAX_SERVICES && !self.sweep_due(clock::now()) {
            return self.shared.clone();
        }
        drop(table);
        let name = match destination {
            Destination::Named(service) => service.clone(),
            Destination::Host(host) => match ServiceName::new(host) {
                Ok(name) => name,
                Err(_) => return self.shared.clone(),
            },
        };
        self.add(name)
    }

    /// Drops `service`'s budget, if it has one: for a service the call
    /// found unknown, so that names taken from requests leave nothing
    /// behind.
    pub(crate) fn forget(&self, service: &ServiceName) {
        if !self.by_service.load().contains_key(service) {
            return;
        }
        let _changing = self.lock();
        let current = self.by_service.load_full();
        if current.contains_key(service) {
            let mut next = HashMap::clone(&current);
            next.remove(service);
            self.by_service.store(Arc::new(next));
        }
    }

    /// `service`'s budget, made now unless another call just did.
    fn add(&self, service: ServiceName) -> RetryBudget {
        // A host written in another case finds its service's budget here,
        // without the lock.
        if let Some(budget) = self.by_service.load().get(&service) {
            return budget.clone();
        }
        let _changing = self.lock();
        let current = self.by_service.load_full();
        if let Some(budget) = current.get(&service) {
            return budget.clone();
        }
        let full = current.len() >= MAX_SERVICES;
        let now = clock::now();
        if full && !self.sweep_due(now) {
            return self.shared.clone();
        }
        let Ok(budget) = self.settings.new_budget() else {
            return self.shared.clone();
        };
        let mut next = HashMap::clone(&current);
        if full {
            self.swept.store(now.0, Ordering::Relaxed);
            next.retain(|_, kept| !kept.is_idle(now));
            if next.len() >= MAX_SERVICES {
                return self.shared.clone();
            }
        }
        next.insert(service, budget.clone());
        self.by_service.store(Arc::new(next));
        budget
    }

    /// Whether a full table may be looked over again at `now`.
    fn sweep_due(&self, now: Nanos) -> bool {
        let last = Nanos(self.swept.load(Ordering::Relaxed));
        last == Nanos::ZERO || now.saturating_since(last) >= SWEEP_EVERY
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many services have a budget of their own.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_service.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::clock::Nanos;
    use std::time::Duration;

    /// Budgets of 100% and no per-second minimum: one retry per request
    /// counted, none unfunded.
    fn budgets() -> ServiceBudgets {
        let settings = RetryBudgetConfig {
            percent: 100.0,
            min_per_second: 0,
            ttl: Duration::from_secs(10),
        };
        let shared = settings.new_budget().expect("valid");
        ServiceBudgets::new(settings, shared)
    }

    fn to(uri: &str) -> Request<()> {
        Request::get(uri).body(()).expect("request")
    }

    #[test]
    fn each_service_spends_what_its_own_requests_funded() {
        let budgets = budgets();
        let users = budgets.of(&to("http://users/a"));
        users.deposit(Nanos(1));
        assert!(budgets.of(&to("http://users/b")).try_withdraw(Nanos(1)));
        assert!(
            !budgets.of(&to("http://orders/")).try_withdraw(Nanos(1)),
            "orders funded nothing"
        );
        assert!(!users.try_withdraw(Nanos(1)), "users' one retry is spent");
    }

    #[test]
    fn a_service_is_one_budget_however_it_is_named() {
        let budgets = budgets();
        budgets.of(&to("http://Users:8080/")).deposit(Nanos(1));
        let mut named = to("http://10.0.0.1/");
        named
            .extensions_mut()
            .insert(TargetService(ServiceName::new("users").expect("name")));
        assert!(budgets.of(&named).try_withdraw(Nanos(1)));
        assert_eq!(budgets.len(), 1);
    }

    /// Fills the table with services that each counted a request now.
    fn fill(budgets: &ServiceBudgets) {
        for i in 0..MAX_SERVICES {
            budgets
                .of(&to(&format!("http://s{i}/")))
                .deposit(clock::now());
        }
        assert_eq!(budgets.len(), MAX_SERVICES);
    }

    #[tokio::test(start_paused = true)]
    async fn services_past_the_bound_and_unnamed_requests_share_one_budget() {
        let budgets = budgets();
        fill(&budgets);
        budgets.of(&to("http://late/")).deposit(clock::now());
        assert_eq!(budgets.len(), MAX_SERVICES, "no budget past the bound");
        assert!(
            budgets.of(&to("/no-host")).try_withdraw(clock::now()),
            "the late service funded the shared budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_makes_room_by_dropping_budgets_idle_for_a_window() {
        let budgets = budgets();
        fill(&budgets);
        // A whole window (10 s) passes; one service keeps calling.
        tokio::time::advance(Duration::from_secs(11)).await;
        let busy = budgets.of(&to("http://s7/"));
        busy.deposit(clock::now());
        let late = budgets.of(&to("http://late/"));
        assert_eq!(budgets.len(), 2, "the idle ones made room");
        late.deposit(clock::now());
        assert!(late.try_withdraw(clock::now()), "late has its own");
        assert!(
            budgets.of(&to("http://s7/")).try_withdraw(clock::now()),
            "s7 kept its account"
        );
    }

    #[test]
    fn a_forgotten_service_leaves_nothing_behind() {
        let budgets = budgets();
        budgets.of(&to("http://typo/")).deposit(Nanos(1));
        budgets.forget(&ServiceName::new("typo").expect("name"));
        assert_eq!(budgets.len(), 0);
        assert!(
            !budgets.of(&to("http://typo/")).try_withdraw(Nanos(1)),
            "made afresh: nothing funded"
        );
    }
}
