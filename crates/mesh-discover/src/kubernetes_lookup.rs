//! The DNS queries behind [`KubernetesDnsRegistry`](crate::KubernetesDnsRegistry),
//! each of them bounded.
//!
//! A DNS outage must be reported, not waited out: while a resolution
//! hangs, the watch is blocked and the catalog cannot tell that its set is
//! getting stale. So each query is tried up to `attempts` times, each
//! attempt cut at `timeout` (hickory's own timeout is set to the same
//! value, and it does not retry on its own); NXDOMAIN or no records is an
//! answer (no instances) and is not tried again. [`Dns::bound`],
//! `timeout × attempts`, is also the limit of a whole resolution, however
//! many queries it takes (an SRV query, then its targets).
//!
//! The targets of one SRV priority are resolved concurrently, so a service
//! of fifty pods costs one round trip, not fifty.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::TokioResolver;
use mesh_core::{Endpoint, Weight};

use crate::registry::DiscoveryError;

/// One SRV record: priority, weight, port, target.
pub(crate) type SrvRecord = (u16, u16, u16, Name);

/// A resolver with the registry's time limits; cheap to clone.
#[derive(Clone)]
pub(crate) struct Dns {
    resolver: Arc<TokioResolver>,
    timeout: Duration,
    attempts: u8,
}

// === impl Dns ===

impl Dns {
    pub(crate) fn new(resolver: TokioResolver, timeout: Duration, attempts: u8) -> Self {
        Dns {
            resolver: Arc::new(resolver),
            timeout,
            attempts,
        }
    }

    /// The resolver, for queries given to [`Dns::ask`].
    pub(crate) fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The longest a whole resolution may take: `timeout × attempts`.
    pub(crate) fn bound(&self) -> Duration {
        self.timeout * u32::from(self.attempts)
    }

    /// The limits, as an error states them.
    pub(crate) fn limits(&self) -> String {
        format!(
            "resolver_timeout {:?} x resolver_attempts {}",
            self.timeout, self.attempts
        )
    }

    /// The addresses of `name`, or `None` when it has none (NXDOMAIN, no
    /// records).
    pub(crate) async fn ips(&self, name: Name) -> Result<Option<Vec<IpAddr>>, DiscoveryError> {
        let what = name.to_string();
        let lookup = self
            .ask(&what, || self.resolver.lookup_ip(name.clone()))
            .await?;
        Ok(lookup.map(|ips| ips.iter().collect()))
    }

    /// Runs `query` until it answers, at most `attempts` times, each
    /// within `timeout`. `Ok(None)` when the name has no such records.
    pub(crate) async fn ask<T, F, Fut>(
        &self,
        what: &str,
        query: F,
    ) -> Result<Option<T>, DiscoveryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match tokio::time::timeout(self.timeout, query()).await {
                Ok(Ok(answer)) => return Ok(Some(answer)),
                Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {:?}", self.timeout),
            }
            tracing::debug!(%what, attempt, error = %last, "DNS query failed");
        }
        Err(DiscoveryError::Unavailable(format!(
            "DNS {what}: {last} ({})",
            self.limits()
        )))
    }
}

/// The endpoints of SRV `records`: the lowest priority with an instance
/// serves, the others are fallbacks (RFC 2782). The targets of a priority
/// are resolved concurrently; a target without an address (its pod is
/// gone) is skipped, while any other failure (timeout, SERVFAIL) fails the
/// whole answer, so the last good set stays instead of a partial one.
pub(crate) async fn srv_endpoints(
    dns: &Dns,
    records: &[SrvRecord],
) -> Result<Vec<Endpoint>, DiscoveryError> {
    let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for serving in priorities {
        // Dropping the set (an error below, or the watch dropped) aborts
        // the lookups still running.
        let mut lookups = tokio::task::JoinSet::new();
        for (i, (_, weight, port, target)) in records.iter().filter(|r| r.0 == serving).enumerate()
        {
            let (dns, target, weight, port) = (dns.clone(), target.clone(), *weight, *port);
            lookups.spawn(async move {
                let answer = dns.ips(target.clone()).await;
                (i, target, weight, port, answer)
            });
        }
        let mut found: Vec<(usize, Vec<Endpoint>)> = Vec::with_capacity(lookups.len());
        while let Some(joined) = lookups.join_next().await {
            let (i, target, weight, port, answer) =
                joined.map_err(|e| DiscoveryError::Unavailable(format!("DNS lookup task: {e}")))?;
            let Some(ips) = answer? else {
                tracing::debug!(%target, "SRV target has no address; skipped");
                continue;
            };
            // SRV weight 0 means "rarely": the smallest weight there is.
            let weight = Weight::new(u32::from(weight)).unwrap_or(Weight::ONE);
            let endpoints = ips
                .into_iter()
                .map(|ip| {
                    Endpoint::builder(SocketAddr::new(ip, port))
                        .weight(weight)
                        .build()
                })
                .collect();
            found.push((i, endpoints));
        }
        // In the records' order, whichever lookup finished first.
        found.sort_unstable_by_key(|(i, _)| *i);
        let endpoints: Vec<Endpoint> = found.into_iter().flat_map(|(_, e)| e).collect();
        if !endpoints.is_empty() {
            return Ok(endpoints);
        }
    }
    Ok(Vec::new())
}
