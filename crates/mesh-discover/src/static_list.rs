//! [`StaticRegistry`]: endpoints listed in code or configuration.

use std::net::SocketAddr;

use mesh_core::{ConfigError, Endpoint, EndpointSet, EventBus, ServiceName};

use crate::catalog::Catalog;

/// A fixed list of endpoints per service.
///
/// Useful in development, in tests, and for upstreams that have stable
/// addresses. Every entry is validated when the registry is built, so a typo
/// fails at startup with the entry named, not at the first request.
///
/// ```
/// use mesh_discover::StaticRegistry;
/// let err = StaticRegistry::builder()
///     .service("user-service", ["127.0.0.1:8080", "127.0.0.1:80800"])
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("127.0.0.1:80800"), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct StaticRegistry {
    catalog: Catalog,
}

impl StaticRegistry {
    /// Starts listing services.
    pub fn builder() -> StaticRegistryBuilder {
        StaticRegistryBuilder::default()
    }

    /// The catalog holding the listed services, for [`crate::DiscoverLayer`].
    pub fn catalog(&self) -> Catalog {
        self.catalog.clone()
    }
}

enum Entry {
    Address(String),
    Endpoint(Endpoint),
}

/// Builds a [`StaticRegistry`]; see [`StaticRegistry::builder`].
#[derive(Default)]
pub struct StaticRegistryBuilder {
    services: Vec<(String, Vec<Entry>)>,
    events: Option<EventBus>,
}

impl StaticRegistryBuilder {
    /// Lists `service` at `addresses` (`"ip:port"` each). Calling it again
    /// for the same service adds to its list.
    pub fn service<I, A>(mut self, service: &str, addresses: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let entries = addresses
            .into_iter()
            .map(|a| Entry::Address(a.into()))
            .collect();
        self.add(service, entries);
        self
    }

    /// Lists `service` at fully described endpoints (weights, tags,
    /// metadata, zone).
    pub fn endpoints<I>(mut self, service: &str, endpoints: I) -> Self
    where
        I: IntoIterator<Item = Endpoint>,
    {
        let entries = endpoints.into_iter().map(Entry::Endpoint).collect();
        self.add(service, entries);
        self
    }

    /// Publishes the catalog's events on `events`.
    pub fn events(mut self, events: EventBus) -> Self {
        self.events = Some(events);
        self
    }

    fn add(&mut self, service: &str, mut entries: Vec<Entry>) {
        // Service names compare case-insensitively, as hosts do.
        match self
            .services
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(service))
        {
            Some((_, list)) => list.append(&mut entries),
            None => self.services.push((service.to_owned(), entries)),
        }
    }

    /// Validates every service name and address.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad entry: `services.<name>`
    /// for a service name that is not one, `services.<name>[<i>]` for the
    /// `i`th address listed for it that is not `ip:port` (the parser's
    /// error kept as the cause). A larger configuration that lists them
    /// under its own key adds its prefix with
    /// [`ConfigError::within`].
    ///
    /// ```
    /// use mesh_discover::StaticRegistry;
    /// let err = StaticRegistry::builder()
    ///     .service("users", ["10.0.0.7:8080", "10.0.0.8"])
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.within("discovery.").key(), "discovery.services.users[1]");
    /// ```
    pub fn build(self) -> Result<StaticRegistry, ConfigError> {
        let catalog = Catalog::new(self.events.unwrap_or_default());
        for (service, entries) in self.services {
            let name = ServiceName::new(&service).map_err(|e| {
                ConfigError::new(format!("services.{service}"), "not a service name").caused_by(e)
            })?;
            let endpoints = entries
                .into_iter()
                .enumerate()
                .map(|(i, entry)| match entry {
                    Entry::Endpoint(ep) => Ok(ep),
                    Entry::Address(addr) => match addr.trim().parse::<SocketAddr>() {
                        Ok(address) => Ok(Endpoint::builder(address).build()),
                        Err(e) => Err(ConfigError::new(
                            format!("services.{service}[{i}]"),
                            format!(
                                "{addr:?} is not ip:port, such as \"10.0.0.7:8080\" or \"[::1]:8080\""
                            ),
                        )
                        .caused_by(e)),
                    },
                })
                .collect::<Result<Vec<_>, _>>()?;
            catalog.update(EndpointSet::new(name, endpoints));
        }
        Ok(StaticRegistry { catalog })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_services_and_merges_repeated_ones() {
        let reg = StaticRegistry::builder()
            .service("a", ["127.0.0.1:1"])
            .service("A", [" 127.0.0.1:2 "])
            .service("b", ["[::1]:3"])
            .build()
            .unwrap();
        let catalog = reg.catalog();
        assert_eq!(catalog.get("a").unwrap().len(), 2);
        assert_eq!(catalog.get("b").unwrap().endpoints()[0].address().port(), 3);
    }

    #[test]
    fn refuses_bad_names_and_addresses_naming_the_entry() {
        let err = StaticRegistry::builder()
            .service("bad name", ["127.0.0.1:1"])
            .build()
            .unwrap_err();
        assert_eq!(err.key(), "services.bad name");
        assert!(err.to_string().contains("\"bad name\""), "{err}");
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");

        let err = StaticRegistry::builder()
            .service("a", ["127.0.0.1:1"])
            .service("A", ["localhost"])
            .build()
            .unwrap_err();
        assert_eq!(err.key(), "services.a[1]");
        let msg = err.to_string();
        assert!(msg.contains("\"localhost\" is not ip:port"), "{msg}");
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    }

    #[test]
    fn an_empty_list_is_a_known_service_with_no_endpoints() {
        let reg = StaticRegistry::builder()
            .service("idle", Vec::<String>::new())
            .build()
            .unwrap();
        assert!(reg.catalog().get("idle").unwrap().is_empty());
    }
}
