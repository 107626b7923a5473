//! [`ServiceBudgets`]: one retry budget per service a layer serves.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use http::Request;
use mesh_core::ext::{Destination, TargetService};
use mesh_core::ServiceName;

use crate::budget::{RetryBudget, RetryBudgetConfig};

/// The most services given a budget of their own: names come from
/// requests (a URI's host), so the table is bounded. Past it, new services
/// share one budget.
pub(crate) const MAX_SERVICES: usize = 1024;

/// A budget per service, each with the layer's settings, made on the
/// service's first call, so that a failing service spends only retries
/// its own traffic funded. Found by name in a lock-free snapshot; a new
/// service takes a mutex and copies the table (once per service, not per
/// call).
///
/// Requests that name no service (no host), services past
/// [`MAX_SERVICES`], and hosts that are no valid service name share one
/// more budget.
#[derive(Debug)]
pub(crate) struct ServiceBudgets {
    settings: RetryBudgetConfig,
    by_service: ArcSwap<HashMap<ServiceName, RetryBudget>>,
    adding: Mutex<()>,
    shared: RetryBudget,
}

impl ServiceBudgets {
    /// Budgets made with `settings`, which were validated with the rest of
    /// the configuration.
    pub(crate) fn new(settings: RetryBudgetConfig, shared: RetryBudget) -> Self {
        ServiceBudgets {
            settings,
            by_service: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
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

    /// `service`'s budget, made now unless another call just did.
    fn add(&self, service: ServiceName) -> RetryBudget {
        // A host written in another case finds its service's budget here,
        // without the lock.
        if let Some(budget) = self.by_service.load().get(&service) {
            return budget.clone();
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.by_service.load_full();
        if let Some(budget) = current.get(&service) {
            return budget.clone();
        }
        if current.len() >= MAX_SERVICES {
            return self.shared.clone();
        }
        let Ok(budget) = self.settings.new_budget() else {
            return self.shared.clone();
        };
        let mut next = HashMap::clone(&current);
        next.insert(service, budget.clone());
        self.by_service.store(Arc::new(next));
        budget
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

    #[test]
    fn services_past_the_bound_and_unnamed_requests_share_one_budget() {
        let budgets = budgets();
        for i in 0..MAX_SERVICES {
            budgets.of(&to(&format!("http://s{i}/")));
        }
        assert_eq!(budgets.len(), MAX_SERVICES);
        budgets.of(&to("http://late/")).deposit(Nanos(1));
        assert_eq!(budgets.len(), MAX_SERVICES, "no budget past the bound");
        assert!(
            budgets.of(&to("/no-host")).try_withdraw(Nanos(1)),
            "the late service funded the shared budget"
        );
    }
}
