//! [`ConsulRegistry`]: services from Consul's health API, watched with
//! blocking queries.
//!
//! Blocking queries follow Consul's documented rules
//! (<https://developer.hashicorp.com/consul/api-docs/features/blocking>):
//! the `X-Consul-Index` of each answer is sent back as `index` with a
//! `wait`; the HTTP timeout exceeds `wait x 17/16` (Consul adds up to
//! wait/16 of jitter); an answer is not proof of a change, so sets are
//! compared (the catalog drops identical ones); an index that goes
//! backwards resets to 0; an index below 1 is treated as 1; requests are
//! spaced by a minimum interval, and errors back off exponentially (up
//! to a configurable cap). Instances whose address is a hostname are
//! resolved before the set is published (see `consul_hosts`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{ConfigError, EndpointSet, Secret, ServiceName, Weight};
use serde::Deserialize;

use crate::backoff::ErrorBackoff;
use crate::consul_hosts::{resolve_instances, Host, Instance};
use crate::consul_lookup::{HostLookups, Limits, LookupHost, SystemResolver};
use crate::registry::{BoxFuture, BoxStream, DiscoveryError, Registry};

/// The default cap of the pause between queries after errors.
const DEFAULT_MAX_ERROR_BACKOFF: Duration = Duration::from_secs(30);
/// The default bound on resolving one instance's hostname.
const DEFAULT_HOSTNAME_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read from Consul (a bigger one is an error).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the registry reaches Consul: one pooled hyper-util client over
/// whichever connector the builder was given, behind one type so the
/// registry stays a plain (non-generic) type.
trait Transport: Send + Sync {
    fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> BoxFuture<Result<http::Response<Incoming>, hyper_util::client::legacy::Error>>;
}

impl<C> Transport for Client<C, Full<Bytes>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> BoxFuture<Result<http::Response<Incoming>, hyper_util::client::legacy::Error>> {
        Box::pin(self.request(req))
    }
}

/// The transport, shared by clones of the registry (they share its
/// connection pool too).
#[derive(Clone)]
pub(crate) struct SharedTransport(std::sync::Arc<dyn Transport>);

impl SharedTransport {
    fn new<C: Connect + Clone + Send + Sync + 'static>(connector: C) -> Self {
        SharedTransport(std::sync::Arc::new(
            Client::builder(TokioExecutor::new()).build::<C, Full<Bytes>>(connector),
        ))
    }

    pub(crate) fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> BoxFuture<Result<http::Response<Incoming>, hyper_util::client::legacy::Error>> {
        self.0.send(req)
    }
}

impl std::fmt::Debug for SharedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

/// A Consul catalog, read through the health API of an agent or server.
///
/// ```
/// use std::time::Duration;
/// use mesh_discover::ConsulRegistry;
/// let consul = ConsulRegistry::builder("http://127.0.0.1:8500")
///     .token("secret")
///     .datacenter("dc1")
///     .tag("v2")
///     .wait(Duration::from_secs(60))
///     .build()?;
/// # let _ = consul;
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
///
/// Neither `Debug`, errors nor logs show the ACL token, or a password
/// written into the address (`http://user:password@host`): both print as
/// `<redacted>`. The token is sent as a sensitive `X-Consul-Token` header
/// (HTTP/2's HPACK never indexes it).
#[derive(Clone)]
pub struct ConsulRegistry {
    base: Uri,
    /// `base` as it may be shown: without userinfo.
    shown: String,
    /// The `X-Consul-Token` value, marked sensitive.
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    namespace: Option<String>,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    passing_only: bool,
    wait: Duration,
    min_interval: Duration,
    max_error_backoff: Duration,
    hostname_lookup_timeout: Duration,
    /// The hostname lookups, shared by clones (one lookup per name at a
    /// time, each name's last good addresses).
    hosts: HostLookups,
    client: SharedTransport,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("address", &self.shown)
            .field("token", &self.token.as_ref().map(|_| Secret::new("")))
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("tags", &self.tags)
            .field("meta", &self.meta)
            .field("passing_only", &self.passing_only)
            .field("wait", &self.wait)
            .field("min_interval", &self.min_interval)
            .field("max_error_backoff", &self.max_error_backoff)
            .field("hostname_lookup_timeout", &self.hostname_lookup_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ConsulRegistry`]. Its `Debug` shows no token or password.
pub struct ConsulRegistryBuilder {
    base: String,
    token: Option<Secret>,
    datacenter: Option<String>,
    namespace: Option<String>,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    passing_only: bool,
    wait: Duration,
    min_interval: Duration,
    max_error_backoff: Duration,
    hostname_lookup_timeout: Duration,
    transport: Option<SharedTransport>,
    /// The system resolver, unless a test scripts one.
    resolver: Arc<dyn LookupHost>,
}

impl std::fmt::Debug for ConsulRegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistryBuilder")
            .field("address", &redact_userinfo(&self.base))
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("tags", &self.tags)
            .field("meta", &self.meta)
            .field("passing_only", &self.passing_only)
            .field("wait", &self.wait)
            .field("min_interval", &self.min_interval)
            .field("max_error_backoff", &self.max_error_backoff)
            .field("hostname_lookup_timeout", &self.hostname_lookup_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// Starts configuring a registry at `address` (`http://host:8500`).
    pub fn builder(address: impl Into<String>) -> ConsulRegistryBuilder {
        ConsulRegistryBuilder {
            base: address.into(),
            token: None,
            datacenter: None,
            namespace: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            passing_only: true,
            wait: Duration::from_secs(300),
            min_interval: Duration::from_millis(100),
            max_error_backoff: DEFAULT_MAX_ERROR_BACKOFF,
            hostname_lookup_timeout: DEFAULT_HOSTNAME_LOOKUP_TIMEOUT,
            transport: None,
            resolver: Arc::new(SystemResolver),
        }
    }

    pub(crate) fn base_url(&self) -> String {
        self.base.to_string()
    }

    pub(crate) fn transport(&self) -> &SharedTransport {
        &self.client
    }

    /// The `X-Consul-Token` header value, marked sensitive.
    pub(crate) fn token_header(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    pub(crate) fn namespace_value(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub(crate) fn datacenter_value(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    fn url(&self, service: &ServiceName, index: Option<u64>) -> Result<Uri, DiscoveryError> {
        let mut query = Vec::new();
        if self.passing_only {
            query.push("passing=true".to_owned());
        }
        if let Some(index) = index {
            query.push(format!("index={index}"));
            query.push(format!("wait={}ms", self.wait.as_millis()));
        }
        if let Some(dc) = &self.datacenter {
            query.push(format!("dc={}", encode(dc)));
        }
        if let Some(ns) = &self.namespace {
            query.push(format!("ns={}", encode(ns)));
        }
        for tag in &self.tags {
            query.push(format!("tag={}", encode(tag)));
        }
        let base = self.base.to_string();
        let url = format!(
            "{}/v1/health/service/{}?{}",
            base.trim_end_matches('/'),
            encode(service.as_str()),
            query.join("&")
        );
        url.parse().map_err(|e| {
            DiscoveryError::Malformed(format!("Consul URL {:?}: {e}", redact_userinfo(&url)))
        })
    }

    /// The health query for `service` (blocking when `index` is given).
    fn health_request(
        &self,
        service: &ServiceName,
        index: Option<u64>,
    ) -> Result<Request<Full<Bytes>>, DiscoveryError> {
        let mut req = Request::get(self.url(service, index)?);
        if let Some(token) = &self.token {
            req = req.header(TOKEN_HEADER, token.clone());
        }
        req.body(Full::default())
            .map_err(|e| DiscoveryError::Malformed(e.to_string()))
    }

    /// One health query: the set and the index of the answer.
    async fn query(
        &self,
        service: &ServiceName,
        index: Option<u64>,
    ) -> Result<(EndpointSet, u64), DiscoveryError> {
        let req = self.health_request(service, index)?;
        // Consul may hold a blocking query up to wait + wait/16; a query
        // without an index answers at once. The timeout covers the body too:
        // a stalled body must not freeze the watch.
        let timeout = match index {
            Some(_) => self.wait + self.wait / 16 + Duration::from_secs(5),
            None => Duration::from_secs(10),
        };
        let exchange = async {
            let response = self.client.send(req).await.map_err(|e| {
                DiscoveryError::Unavailable(format!(
                    "Consul request failed: {}",
                    mesh_core::error_chain(&e)
                ))
            })?;
            let status = response.status();
            let new_index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| DiscoveryError::Unavailable(format!("reading Consul's answer: {e}")))?
                .to_bytes();
            Ok::<_, DiscoveryError>((status, new_index, body))
        };
        let (status, new_index, body) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| {
                    DiscoveryError::Unavailable(format!("no answer from Consul within {timeout:?}"))
                })??;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(DiscoveryError::Unavailable(format!(
                "Consul answered {status}: {text}"
            )));
        }
        let instances = parse_health(service, &body, self.passing_only, &self.tags, &self.meta)?;
        let set = resolve_instances(service, instances, &self.hosts).await;
        Ok((set, new_index.unwrap_or(0)))
    }
}

impl ConsulRegistryBuilder {
    /// Reaches Consul through `connector` instead of plain TCP: a TLS
    /// connector for an `https://` address (mesh-tls's, or any
    /// hyper-util connector), with the CA and client certificate Consul's
    /// `verify_incoming` asks for. The agent API (registration, heartbeats)
    /// goes through it too.
    pub fn connector<C>(mut self, connector: C) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        self.transport = Some(SharedTransport::new(connector));
        self
    }

    /// Sends this ACL token (`X-Consul-Token`, marked sensitive). A
    /// `String`, a `&str` or a [`Secret`] (as read from configuration).
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Asks this datacenter.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }
    /// Asks this namespace (Consul Enterprise).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    /// Keeps only instances with this tag (repeat for several: all must match).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
    /// Keeps only instances whose service metadata has `key = value`.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
    /// Includes instances with warning checks (weighted by their Warning
    /// weight); by default only passing ones.
    pub fn include_warning(mut self) -> Self {
        self.passing_only = false;
        self
    }
    /// How long one blocking query may wait for a change (Consul caps it
    /// at 10 minutes).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
    /// The shortest time between two queries (rate limit).
    pub fn min_interval(mut self, d: Duration) -> Self {
        self.min_interval = d;
        self
    }
    /// The longest pause between queries while Consul keeps failing
    /// (30 s by default). After an error the watch waits 250 ms, doubling
    /// at each further error in a row up to this cap, each pause jittered
    /// to between half and all of it; an answer starts it over. A lower
    /// cap notices a recovered Consul sooner and costs it more queries
    /// while it is down. Between 1 ms and 10 minutes; the
    /// [`min_interval`](Self::min_interval) still applies.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_discover::ConsulRegistry;
    /// let consul = ConsulRegistry::builder("http://127.0.0.1:8500")
    ///     .max_error_backoff(Duration::from_secs(5))
    ///     .build()?;
    /// # let _ = consul;
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn max_error_backoff(mut self, cap: Duration) -> Self {
        self.max_error_backoff = cap;
        self
    }
    /// How long resolving an instance's hostname may take (2 s by
    /// default). Consul allows a hostname as a service's address (and as
    /// a node's, used when the service has none); such names are resolved
    /// with the system resolver after each answer, concurrently, before
    /// the set is published. Each address a name resolves to is one
    /// endpoint: with one, its id is the instance's (`node/service-id`);
    /// with several, `node/service-id@ip`. Between 1 ms and 60 s.
    ///
    /// A name that does not resolve within this time, or at all, keeps
    /// the addresses it last resolved to, with one warning per failure
    /// streak, so a DNS blip never makes the published set smaller; a
    /// name that never resolved is logged as a warning and its instance
    /// left out, while the other instances are still served.
    ///
    /// The system resolver cannot be cancelled: a lookup past this time
    /// goes on holding a thread of tokio's blocking pool until the
    /// resolver gives up. So a name is never looked up twice at once (an
    /// answer that lists a name whose lookup still runs waits for that
    /// one, and only until its deadline), a registry runs at most 16
    /// lookups at once and tracks at most 1024 names, and a late answer
    /// still refreshes the name's addresses.
    ///
    /// Names are resolved when Consul answers: on a change, and at the
    /// latest when a blocking query's [`wait`](Self::wait) runs out. A DNS
    /// change with no change in Consul is therefore seen within `wait`
    /// (5 minutes by default); lower it to see such changes sooner.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_discover::ConsulRegistry;
    /// let consul = ConsulRegistry::builder("http://127.0.0.1:8500")
    ///     .hostname_lookup_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// # let _ = consul;
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn hostname_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.hostname_lookup_timeout = timeout;
        self
    }

    /// Resolves instance hostnames with `resolver` instead of the system's.
    #[cfg(test)]
    pub(crate) fn host_resolver(mut self, resolver: Arc<dyn LookupHost>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the value at fault: `consul.address` (not
    /// an `http://` URL, or `https://` without a
    /// [`connector`](Self::connector)), `consul.wait`,
    /// `consul.min_interval`, `consul.max_error_backoff`,
    /// `consul.hostname_lookup_timeout` or `consul.token`. Neither the
    /// token nor a password in the address is ever quoted.
    pub fn build(self) -> Result<ConsulRegistry, ConfigError> {
        let shown = redact_userinfo(&self.base);
        let base: Uri = self.base.parse().map_err(|e| {
            ConfigError::new("consul.address", format!("{shown:?} is not a URL")).caused_by(e)
        })?;
        // A password holding '/', '?' or '#' ends the URL's authority
        // early: the rest of it would be sent, and shown, as a path or a
        // fragment. Refused, so that no part of it ever is.
        let after_scheme = self.base.split_once("://").map_or(&*self.base, |(_, r)| r);
        let userinfo_parsed = base.authority().is_some_and(|a| a.as_str().contains('@'));
        if after_scheme.contains(['?', '#']) || (after_scheme.contains('@') && !userinfo_parsed) {
            return Err(ConfigError::new(
                "consul.address",
                "holds a query, a fragment, or a password with '/', '?' or '#' in it: \
                 Consul's address is scheme, host and port (percent-encode a password's \
                 %23, %2F, %3F, or give an ACL token as the token instead)",
            ));
        }
        match (base.scheme_str(), base.authority(), &self.transport) {
            (Some("http"), Some(_), _) | (Some("https"), Some(_), Some(_)) => {}
            (Some("https"), Some(_), None) => {
                return Err(ConfigError::new(
                    "consul.address",
                    format!(
                        "{shown:?}: https needs a TLS connector (ConsulRegistryBuilder::connector, for example mesh-tls's)"
                    ),
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    "consul.address",
                    format!("{shown:?}: use http://host:port or https://host:port"),
                ))
            }
        }
        if self.wait.is_zero() || self.wait > Duration::from_secs(600) {
            return Err(ConfigError::new(
                "consul.wait",
                format!("{:?} is outside (0, 10m]", self.wait),
            ));
        }
        if self.min_interval < Duration::from_millis(1)
            || self.min_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "consul.min_interval",
                format!(
                    "{:?} is outside [1ms, 60s]: blocking queries must be rate limited",
                    self.min_interval
                ),
            ));
        }
        if self.max_error_backoff < Duration::from_millis(1)
            || self.max_error_backoff > Duration::from_secs(600)
        {
            return Err(ConfigError::new(
                "consul.max_error_backoff",
                format!("{:?} is outside [1ms, 10m]", self.max_error_backoff),
            ));
        }
        if self.hostname_lookup_timeout < Duration::from_millis(1)
            || self.hostname_lookup_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "consul.hostname_lookup_timeout",
                format!("{:?} is outside [1ms, 60s]", self.hostname_lookup_timeout),
            ));
        }
        let token = match &self.token {
            None => None,
            Some(token) => {
                // The error must not quote the token (http's does not).
                let mut value = HeaderValue::from_str(token.expose()).map_err(|e| {
                    ConfigError::new(
                        "consul.token",
                        "not a valid HTTP header value: use visible ASCII characters only",
                    )
                    .caused_by(e)
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(ConsulRegistry {
            base,
            shown: shown.trim_end_matches('/').to_owned(),
            token,
            datacenter: self.datacenter,
            namespace: self.namespace,
            tags: self.tags,
            meta: self.meta,
            passing_only: self.passing_only,
            wait: self.wait,
            min_interval: self.min_interval,
            max_error_backoff: self.max_error_backoff,
            hostname_lookup_timeout: self.hostname_lookup_timeout,
            hosts: HostLookups::new(
                self.resolver,
                self.hostname_lookup_timeout,
                Limits::default(),
            ),
            client: match self.transport {
                Some(transport) => transport,
                None => {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(Duration::from_secs(5)));
                    connector.set_nodelay(true);
                    SharedTransport::new(connector)
                }
            },
        })
    }
}

/// The header that carries the ACL token.
pub(crate) const TOKEN_HEADER: &str = "x-consul-token";

/// `url` without its userinfo (`http://user:password@host` reads
/// `http://<redacted>@host`), for anything shown: the user part may be a
/// token too. Everything up to the last `@` is hidden, not only what a
/// URL parser would take for userinfo: a password holding `/`, `?` or `#`
/// (base64 tokens do) ends a parser's authority early, and would show.
/// Text with no `@` is returned as is.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let host_and_rest = &rest[at + 1..];
    match scheme {
        Some(scheme) => format!("{scheme}://<redacted>@{host_and_rest}"),
        None => format!("<redacted>@{host_and_rest}"),
    }
}

/// Percent-encodes a query or path component.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Option<Vec<Check>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: serde_json::Value,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(default)]
    status: String,
}

/// Parses a `/v1/health/service` answer into the instances to serve. An
/// entry that cannot be used (no address, a port out of range, failing
/// checks, a filter that does not match, weight zero) is skipped, never
/// fatal; an answer that is not the documented JSON is an error. An
/// address that is not an IP is kept as a hostname, resolved later.
pub(crate) fn parse_health(
    service: &ServiceName,
    body: &[u8],
    passing_only: bool,
    tags: &[String],
    meta: &BTreeMap<String, String>,
) -> Result<Vec<Instance>, DiscoveryError> {
    let entries: Vec<Entry> = serde_json::from_slice(body).map_err(|e| {
        DiscoveryError::Malformed(format!("Consul health answer for {service}: {e}"))
    })?;
    let mut instances = Vec::with_capacity(entries.len());
    for entry in entries {
        // Filter client-side too: a check not passing drops the instance
        // (or, with warnings allowed, a critical one does).
        let checks = entry.checks.as_deref().unwrap_or_default();
        let warning = checks.iter().any(|c| c.status == "warning");
        let critical = checks
            .iter()
            .any(|c| c.status != "passing" && c.status != "warning");
        if critical || (passing_only && warning) {
            continue;
        }
        let s = entry.service;
        let entry_tags = s.tags.clone().unwrap_or_default();
        if !tags.iter().all(|t| entry_tags.contains(t)) {
            continue;
        }
        let entry_meta = s.meta.clone().unwrap_or_default();
        if !meta.iter().all(|(k, v)| entry_meta.get(k) == Some(v)) {
            continue;
        }
        let host = if s.address.is_empty() {
            &entry.node.address
        } else {
            &s.address
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) if host.is_empty() => {
                tracing::debug!(%service, id = %s.id, "skipping Consul entry without an address");
                continue;
            }
            Err(_) => Host::Name(host.clone()),
        };
        // Fields of odd types skip the entry, never the whole answer.
        let Some(port) = s.port.as_u64().and_then(|p| u16::try_from(p).ok()) else {
            tracing::debug!(%service, port = %s.port, "skipping Consul entry without a port");
            continue;
        };
        if port == 0 {
            continue;
        }
        let weight_of = |key: &str| {
            s.weights
                .as_ref()
                .and_then(|w| w.get(key))
                .and_then(serde_json::Value::as_u64)
                .map(|w| u32::try_from(w).unwrap_or(u32::MAX))
        };
        let weight = if warning {
            weight_of("Warning")
        } else {
            weight_of("Passing")
        }
        .unwrap_or(1);
        let Ok(weight) = Weight::new(weight) else {
            continue; // weight 0: Consul's way to say "send nothing"
        };
        // Service IDs are unique per agent, not across nodes.
        let id = (!s.id.is_empty()).then(|| format!("{}/{}", entry.node.node, s.id));
        instances.push(Instance {
            host,
            port,
            id,
            weight,
            tags: entry_tags,
            meta: entry_meta,
        });
    }
    Ok(instances)
}

impl Registry for ConsulRegistry {
    fn describe(&self) -> String {
        match &self.datacenter {
            Some(dc) => format!("consul at {} (datacenter {dc})", self.shown),
            None => format!("consul at {}", self.shown),
        }
    }

    fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        Box::pin(async move { this.query(&service, None).await.map(|(set, _)| set) })
    }

    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        crate::registry::watch_task(move |tx| async move {
            let mut index: u64 = 0;
            let mut backoff = ErrorBackoff::new(this.max_error_backoff);
            loop {
                let started = tokio::time::Instant::now();
                let answer = this.query(&service, (index > 0).then_some(index)).await;
                let answer = match answer {
                    Ok((set, new_index)) => {
                        backoff.reset();
                        // Below 1 is treated as 1 (else queries return at
                        // once, forever); then an index that went backwards
                        // (a restarted agent) starts over from 0.
                        let new_index = new_index.max(1);
                        index = if new_index < index { 0 } else { new_index };
                        Ok(set)
                    }
                    Err(e) => Err(e),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() {
                    return;
                }
                // Rate limit, and back off (with jitter) after an error.
                let mut pause = this.min_interval.saturating_sub(started.elapsed());
                if failed {
                    pause = pause.max(backoff.next_pause(fastrand::f64()));
                }
                // A zero sleep would still wait for the timer's next tick.
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> ServiceName {
        ServiceName::new("users").unwrap()
    }

    #[test]
    fn keeps_passing_instances_that_match_the_filters_with_their_weights() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"u1","Address":"","Port":8080,"Tags":["v2"],"Meta":{"zone":"a"},"Weights":{"Passing":3,"Warning":1}},"Checks":[{"Status":"passing"}]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},"Service":{"ID":"u2","Address":"10.0.9.2","Port":8080,"Tags":["v2"],"Meta":{"zone":"a"}},"Checks":[{"Status":"passing"},{"Status":"critical"}]},
          {"Node":{"Node":"n3","Address":"10.0.0.3"},"Service":{"ID":"u3","Address":"","Port":8080,"Tags":["v1"],"Meta":{"zone":"a"}},"Checks":[]},
          {"Node":{"Node":"n4","Address":"10.0.0.4"},"Service":{"ID":"u4","Address":"","Port":8080,"Tags":["v2"],"Meta":{"zone":"a"},"Weights":{"Passing":0,"Warning":0}},"Checks":[]},
          {"Node":{"Node":"n5","Address":"not-an-ip"},"Service":{"ID":"u5","Address":"","Port":8080,"Tags":["v2"],"Meta":{"zone":"a"}},"Checks":[]},
          {"Node":{"Node":"n6","Address":"10.0.0.6"},"Service":{"ID":"u6","Address":"","Port":70000,"Tags":["v2"],"Meta":{"zone":"a"}},"Checks":[]}
        ]"#;
        let meta = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let instances = parse_health(&name(), body, true, &["v2".to_owned()], &meta).unwrap();
        assert_eq!(instances.len(), 2, "{instances:?}");
        let e = &instances[0];
        assert_eq!(
            e.host,
            Host::Ip("10.0.0.1".parse().unwrap()),
            "node address when the service has none"
        );
        assert_eq!(e.port, 8080);
        assert_eq!(e.weight.get(), 3);
        assert_eq!(e.id.as_deref(), Some("n1/u1"));
        // A hostname is kept, to be resolved.
        assert_eq!(instances[1].host, Host::Name("not-an-ip".into()));
        assert_eq!(instances[1].id.as_deref(), Some("n5/u5"));
    }

    #[test]
    fn warning_instances_use_their_warning_weight_when_allowed() {
        let body = br#"[{"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"s","Port":80,"Weights":{"Passing":5,"Warning":1}},"Checks":[{"Status":"warning"}]}]"#;
        assert!(parse_health(&name(), body, true, &[], &BTreeMap::new())
            .unwrap()
            .is_empty());
        let instances = parse_health(&name(), body, false, &[], &BTreeMap::new()).unwrap();
        assert_eq!(instances[0].weight.get(), 1);
    }

    #[test]
    fn a_bad_address_is_refused_when_built() {
        assert!(ConsulRegistry::builder("consul:8500").build().is_err());
        assert!(ConsulRegistry::builder("http://127.0.0.1:8500")
            .wait(Duration::from_secs(3600))
            .build()
            .is_err());
    }

    #[test]
    fn backoff_cap_and_hostname_lookup_timeout_are_validated_naming_their_key() {
        let base = || ConsulRegistry::builder("http://127.0.0.1:8500");
        for cap in [Duration::ZERO, Duration::from_secs(601)] {
            let err = base().max_error_backoff(cap).build().unwrap_err();
            assert_eq!(err.key(), "consul.max_error_backoff", "{err}");
        }
        for timeout in [Duration::ZERO, Duration::from_secs(61)] {
            let err = base().hostname_lookup_timeout(timeout).build().unwrap_err();
            assert_eq!(err.key(), "consul.hostname_lookup_timeout", "{err}");
        }
        let consul = base()
            .max_error_backoff(Duration::from_millis(1))
            .hostname_lookup_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        assert_eq!(consul.max_error_backoff, Duration::from_millis(1));
        let defaults = base().build().unwrap();
        assert_eq!(defaults.max_error_backoff, Duration::from_secs(30));
        assert_eq!(defaults.hostname_lookup_timeout, Duration::from_secs(2));
    }

    #[test]
    fn https_needs_a_connector_and_says_so() {
        let err = ConsulRegistry::builder("https://127.0.0.1:8501")
            .build()
            .expect_err("plain TCP cannot speak https");
        assert!(err.to_string().contains("needs a TLS connector"), "{err}");
        // Any hyper-util connector is accepted; this one would fail the
        // handshake, but the configuration itself is valid.
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        assert!(ConsulRegistry::builder("https://127.0.0.1:8501")
            .connector(connector)
            .build()
            .is_ok());
        assert!(ConsulRegistry::builder("ftp://127.0.0.1:8501")
            .build()
            .is_err());
    }

    #[test]
    fn the_token_and_url_passwords_never_show_and_the_header_is_sensitive() {
        let builder = ConsulRegistry::builder("http://alice:pa55word@127.0.0.1:8500/")
            .token("s3cr3t-token")
            .datacenter("dc1");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pa55"),
            "{shown}"
        );
        let consul = builder.build().unwrap();
        for shown in [
            format!("{consul:?}"),
            format!("{consul:#?}"),
            consul.describe(),
        ] {
            assert!(
                !shown.contains("s3cr3t") && !shown.contains("pa55") && !shown.contains("alice"),
                "{shown}"
            );
        }
        assert_eq!(
            consul.describe(),
            "consul at http://<redacted>@127.0.0.1:8500 (datacenter dc1)"
        );

        let health = consul.health_request(&name(), Some(3)).unwrap();
        let token = health.headers().get("x-consul-token").unwrap();
        assert_eq!(token, "s3cr3t-token");
        assert!(token.is_sensitive());
        let agent = consul
            .agent_request(
                "http://127.0.0.1:8500/v1/agent/service/register",
                Bytes::new(),
            )
            .unwrap();
        assert!(agent.headers()["x-consul-token"].is_sensitive());

        // Without a token, no header.
        let open = ConsulRegistry::builder("http://127.0.0.1:8500")
            .build()
            .unwrap();
        assert!(open
            .health_request(&name(), None)
            .unwrap()
            .headers()
            .get("x-consul-token")
            .is_none());
        assert_eq!(open.describe(), "consul at http://127.0.0.1:8500");
    }

    #[test]
    fn configuration_errors_never_quote_secrets() {
        let err = ConsulRegistry::builder("ftp://alice:pa55word@127.0.0.1:8500")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("pa55"), "{err}");
        assert!(err.to_string().contains("consul.address"), "{err}");
        // Refused by the URI parser, whose error is kept as the cause.
        let err = ConsulRegistry::builder("http://alice:pa55 word@127.0.0.1:8500")
            .build()
            .unwrap_err();
        assert_eq!(err.key(), "consul.address");
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("pa55"), "{shown}");
        }
        let err = ConsulRegistry::builder("http://127.0.0.1:8500")
            .token("s3cr3t\ntoken")
            .build()
            .unwrap_err();
        assert_eq!(err.key(), "consul.token");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn a_password_that_would_end_the_authority_early_is_refused_unquoted() {
        for url in [
            "http://admin:hun#ter2@127.0.0.1:8500",
            "http://admin:hun/ter2@127.0.0.1:8500",
            "http://admin:hun?ter2@127.0.0.1:8500",
            "http://127.0.0.1:8500/#ter2",
            "http://127.0.0.1:8500/?token=ter2",
        ] {
            let err = ConsulRegistry::builder(url).build().expect_err(url);
            assert_eq!(err.key(), "consul.address", "{url}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("ter2"), "{shown}");
        }
        // Percent-encoded, it is a URL like any other.
        assert!(
            ConsulRegistry::builder("http://admin:hun%2Fter2@127.0.0.1:8500")
                .build()
                .is_ok()
        );
    }

    #[test]
    fn userinfo_is_redacted_from_urls() {
        for (url, shown) in [
            ("http://u:p@h:1/x", "http://<redacted>@h:1/x"),
            ("https://token@h", "https://<redacted>@h"),
            // A password with '/', '?' or '#' in it, written as it is.
            ("http://u:p/w@h:1", "http://<redacted>@h:1"),
            ("http://u:p?w#x@h:1/y", "http://<redacted>@h:1/y"),
            ("https://b64+/=@h", "https://<redacted>@h"),
            // An '@' further on hides what precedes it too: it may be a
            // credential.
            ("http://h:1/a@b", "http://<redacted>@b"),
            ("h:1", "h:1"),
            ("u:p@h", "<redacted>@h"),
            ("", ""),
        ] {
            assert_eq!(redact_userinfo(url), shown, "{url}");
        }
    }

    /// Resolves `db.internal` to 10.0.0.9, then fails, then hangs, as
    /// told; counts its lookups.
    #[derive(Default)]
    struct FlakyDns {
        mode: std::sync::atomic::AtomicU8,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl LookupHost for FlakyDns {
        fn lookup(&self, _name: &str) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            let mode = self.mode.load(SeqCst);
            Box::pin(async move {
                match mode {
                    0 => Ok(vec!["10.0.0.9".parse().unwrap()]),
                    1 => Err(std::io::Error::other("SERVFAIL")),
                    _ => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hostname_that_stops_resolving_keeps_its_instance_in_every_answer() {
        use mesh_testkit::consul::{entry, ConsulDouble};
        use std::sync::atomic::Ordering::SeqCst;

        let double = ConsulDouble::start().await;
        double.set(
            "users",
            vec![
                entry("n1", "10.0.0.1", 80, "passing"),
                entry("n2", "db.internal", 81, "passing"),
            ],
        );
        let dns = Arc::new(FlakyDns::default());
        let consul = ConsulRegistry::builder(double.url())
            .hostname_lookup_timeout(Duration::from_millis(200))
            .host_resolver(dns.clone())
            .build()
            .unwrap();
        let first = consul.resolve(&name()).await.unwrap();
        let addresses: Vec<String> = first.iter().map(|e| e.address().to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1:80", "10.0.0.9:81"]);

        dns.mode.store(1, SeqCst);
        let failed = consul.resolve(&name()).await.unwrap();
        assert!(failed.same_endpoints(&first), "{failed:?}");

        // A hanging resolver: the answer keeps the instance, within the
        // timeout; the clone shares the running lookup and starts none.
        dns.mode.store(2, SeqCst);
        let started = std::time::Instant::now();
        let hung = consul.resolve(&name()).await.unwrap();
        assert!(hung.same_endpoints(&first), "{hung:?}");
        let again = consul.clone().resolve(&name()).await.unwrap();
        assert!(again.same_endpoints(&first), "{again:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(dns.calls.load(SeqCst), 3);
    }

    proptest! {
        /// No password written into a Consul address ever shows.
        #[test]
        fn passwords_in_addresses_never_show(user in "[a-z]{1,8}", password in "[A-Za-z0-9/?#+=]{12,20}", path in "[a-z/@:]{0,10}") {
            let url = format!("http://{user}:{password}@127.0.0.1:8500/{path}");
            let redacted = redact_userinfo(&url);
            prop_assert!(!redacted.contains(&password), "{}", redacted);
            let builder = ConsulRegistry::builder(url);
            let shown = format!("{builder:?}");
            prop_assert!(!shown.contains(&password), "{}", shown);
            match builder.build() {
                Ok(consul) => {
                    let shown = format!("{consul:?}");
                    prop_assert!(!shown.contains(&password), "{}", shown);
                    prop_assert!(!consul.describe().contains(&password));
                }
                Err(err) => prop_assert!(!err.to_string().contains(&password)),
            }
        }

        /// Whatever Consul answers, parsing gives a set or an error, never
        /// a panic.
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_health(&name(), &bytes, true, &[], &BTreeMap::new());
        }

        #[test]
        fn near_valid_entries_never_panic(addr in ".{0,20}", port in any::<u32>(), passing in any::<u32>(), status in "[a-z]{0,8}") {
            let doc = serde_json::json!([{ "Node": { "Node": "n", "Address": addr }, "Service": { "ID": "s", "Port": port, "Weights": { "Passing": passing, "Warning": 1 } }, "Checks": [{ "Status": status }] }]);
            let _ = parse_health(&name(), doc.to_string().as_bytes(), false, &[], &BTreeMap::new());
        }
    }
}
