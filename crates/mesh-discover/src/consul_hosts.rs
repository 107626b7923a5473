//! Consul instances whose address is a hostname.
//!
//! Consul accepts any string as `Service.Address`, and when it is empty
//! clients use `Node.Address`, which may be a name too (`db-1.internal`).
//! A health answer is therefore parsed into [`Instance`]s whose [`Host`]
//! is an IP or a name, and the names are resolved here, after the answer
//! and before the set is published.
//!
//! Names are resolved with the system resolver (`getaddrinfo`, through
//! tokio), so `/etc/hosts` and the host's search domains apply as they do
//! for Consul's own clients; this keeps the Consul backend free of the
//! optional hickory dependency. The distinct names of an answer are looked
//! up concurrently, each waited on for at most the registry's
//! `hostname_lookup_timeout`, through the registry's
//! [`HostLookups`](crate::consul_lookup::HostLookups): never two lookups
//! of one name at once, a bounded number in all, and each name's last
//! good addresses kept. A name whose lookup fails or is late is served at
//! its last good addresses (a DNS blip never makes the set smaller); one
//! that never resolved is reported with a warning and its instances are
//! left out, while the other instances are still served, so one bad
//! registration does not hide a service.
//!
//! Names are resolved when Consul answers: on a change, and at the latest
//! when a blocking query's `wait` runs out. A DNS change alone is
//! therefore seen within `wait` (5 minutes by default).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use mesh_core::{Endpoint, EndpointId, EndpointSet, ServiceName, Weight};

use crate::consul_lookup::HostLookups;

/// Where an instance is reached, as Consul wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP address, used as is.
    Ip(IpAddr),
    /// A hostname, resolved before the set is published.
    Name(String),
}

/// One usable entry of a health answer (checks and filters passed).
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    pub(crate) host: Host,
    pub(crate) port: u16,
    /// `node/service-id`, when Consul gave a service ID.
    pub(crate) id: Option<String>,
    pub(crate) weight: Weight,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
}

// === impl Instance ===

impl Instance {
    /// The endpoint at `ip`, identified by `id` (else by its address).
    fn endpoint(&self, ip: IpAddr, id: Option<&str>) -> Endpoint {
        let mut b = Endpoint::builder(SocketAddr::new(ip, self.port)).weight(self.weight);
        if let Some(id) = id.and_then(|id| EndpointId::new(id).ok()) {
            b = b.id(id);
        }
        for tag in &self.tags {
            b = b.tag(tag.clone());
        }
        for (k, v) in &self.meta {
            b = b.metadata(k.clone(), v.clone());
        }
        b.build()
    }

    /// The endpoints of this instance, given the addresses its name
    /// resolved to. One address keeps the instance's own id
    /// (`node/service-id`); several make one endpoint each, `id@ip`, so
    /// each id stays the same from one answer to the next.
    fn endpoints<'a>(&'a self, ips: &'a [IpAddr]) -> impl Iterator<Item = Endpoint> + 'a {
        let several = ips.len() > 1;
        ips.iter().map(move |ip| match (&self.id, several) {
            (Some(id), true) => self.endpoint(*ip, Some(&format!("{id}@{ip}"))),
            (id, _) => self.endpoint(*ip, id.as_deref()),
        })
    }
}

/// The set `instances` make once their hostnames are resolved through
/// `hosts`; an instance whose name has neither fresh nor last good
/// addresses is left out.
pub(crate) async fn resolve_instances(
    service: &ServiceName,
    instances: Vec<Instance>,
    hosts: &HostLookups,
) -> EndpointSet {
    let names: BTreeSet<String> = instances
        .iter()
        .filter_map(|instance| match &instance.host {
            Host::Name(name) => Some(name.clone()),
            Host::Ip(_) => None,
        })
        .collect();
    // Asked even without names: the names this service listed before are
    // then forgotten.
    let resolved = hosts.addresses(service, &names).await;
    let mut endpoints = Vec::with_capacity(instances.len());
    for instance in &instances {
        match &instance.host {
            Host::Ip(ip) => endpoints.push(instance.endpoint(*ip, instance.id.as_deref())),
            Host::Name(name) => {
                if let Some(ips) = resolved.get(name) {
                    endpoints.extend(instance.endpoints(ips));
                }
            }
        }
    }
    EndpointSet::new(service.clone(), endpoints)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::consul_lookup::{Limits, LookupHost};
    use crate::registry::BoxFuture;

    /// Resolves every name to one address per name, until told to fail.
    #[derive(Default)]
    struct Flaky {
        failing: AtomicBool,
    }

    impl LookupHost for Flaky {
        fn lookup(&self, name: &str) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
            let answer = if self.failing.load(Ordering::SeqCst) {
                Err(std::io::Error::other("SERVFAIL"))
            } else if name == "a" {
                Ok(vec![
                    "10.0.0.1".parse().expect("ip"),
                    "10.0.0.2".parse().expect("ip"),
                ])
            } else {
                Ok(vec!["10.0.0.3".parse().expect("ip")])
            };
            Box::pin(async move { answer })
        }
    }

    fn instance(host: Host, id: Option<&str>) -> Instance {
        Instance {
            host,
            port: 8080,
            id: id.map(str::to_owned),
            weight: Weight::ONE,
            tags: vec!["v2".to_owned()],
            meta: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        }
    }

    #[test]
    fn one_address_keeps_the_instance_id_and_several_get_one_id_each() {
        let one = instance(Host::Name("db".into()), Some("n1/db-1"));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let ids: Vec<String> = one
            .endpoints(&[ip])
            .map(|e| e.id().as_str().to_owned())
            .collect();
        assert_eq!(ids, ["n1/db-1"]);

        let two: IpAddr = "10.0.0.2".parse().expect("ip");
        let endpoints: Vec<Endpoint> = one.endpoints(&[ip, two]).collect();
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id().as_str()).collect();
        assert_eq!(ids, ["n1/db-1@10.0.0.1", "n1/db-1@10.0.0.2"]);
        assert!(endpoints.iter().all(|e| e.address().port() == 8080));

        // Without a service ID, each endpoint is known by its address.
        let anonymous = instance(Host::Name("db".into()), None);
        let ids: Vec<String> = anonymous
            .endpoints(&[ip, two])
            .map(|e| e.id().as_str().to_owned())
            .collect();
        assert_eq!(ids, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    }

    #[tokio::test]
    async fn names_resolve_and_a_name_that_does_not_is_left_out() {
        let service = ServiceName::new("users").expect("name");
        let set = resolve_instances(
            &service,
            vec![
                instance(Host::Ip("10.0.0.1".parse().expect("ip")), Some("n1/a")),
                instance(Host::Name("localhost".into()), Some("n2/b")),
                instance(Host::Name("no-such-host.invalid".into()), Some("n3/c")),
            ],
            &HostLookups::system(Duration::from_secs(5)),
        )
        .await;
        let addresses: Vec<String> = set.iter().map(|e| e.address().to_string()).collect();
        assert!(
            addresses.contains(&"10.0.0.1:8080".to_owned()),
            "{addresses:?}"
        );
        assert!(
            addresses.contains(&"127.0.0.1:8080".to_owned()),
            "{addresses:?}"
        );
        assert!(
            set.iter().all(|e| !e.id().as_str().starts_with("n3/")),
            "{set:?}"
        );
    }

    #[tokio::test]
    async fn when_every_name_fails_the_set_stays_what_it_was() {
        let service = ServiceName::new("users").expect("name");
        let dns = Arc::new(Flaky::default());
        let hosts = HostLookups::new(dns.clone(), Duration::from_secs(2), Limits::default());
        let instances = || {
            vec![
                instance(Host::Name("a".into()), Some("n1/a")),
                instance(Host::Name("b".into()), Some("n2/b")),
            ]
        };
        let before = resolve_instances(&service, instances(), &hosts).await;
        assert_eq!(before.len(), 3, "{before:?}");

        dns.failing.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            let after = resolve_instances(&service, instances(), &hosts).await;
            assert!(
                after.same_endpoints(&before),
                "a DNS outage publishes the last good set: {after:?}"
            );
        }
    }
}
