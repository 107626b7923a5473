//! Registering the local service with a Consul agent (the design
//! document's `registerService` / `deregisterService`).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::consul::ConsulRegistry;
use crate::registry::DiscoveryError;

/// How Consul checks the registered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentCheck {
    /// Consul GETs `url` every `interval`; 2xx is passing.
    Http {
        /// The URL to probe (for example the service's `/health/ready`).
        url: String,
        /// How often.
        interval: Duration,
        /// How long one probe may take.
        timeout: Duration,
    },
    /// Consul connects to `address` (`host:port`) every `interval`.
    Tcp {
        /// Where to connect.
        address: String,
        /// How often.
        interval: Duration,
        /// How long one connect may take.
        timeout: Duration,
    },
    /// The service reports itself: a heartbeat at least every `ttl`
    /// ([`ConsulRegistry::pass_ttl`]), or Consul marks it critical.
    Ttl {
        /// The longest gap between heartbeats.
        ttl: Duration,
    },
}

/// The local service instance, as registered with the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Unique per agent (the design document's `id`, say `api-gateway-1`).
    pub id: String,
    /// The service name (say `api-gateway`).
    pub name: String,
    /// Where others reach it.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its tags (`v1`, `production`...).
    pub tags: Vec<String>,
    /// Its metadata.
    pub meta: std::collections::BTreeMap<String, String>,
    /// How Consul checks it, if at all.
    pub check: Option<AgentCheck>,
    /// Consul removes the instance after its check has been critical this
    /// long (so a crashed instance does not linger).
    pub deregister_critical_after: Option<Duration>,
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterBody<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    address: String,
    port: u16,
    tags: &'a [String],
    meta: &'a std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<CheckBody>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deregister_critical_service_after: Option<String>,
}

impl ConsulRegistry {
    /// Registers `service` with the agent (`PUT /v1/agent/service/register`).
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::Unavailable`] when the agent cannot be reached or
    /// refuses, with its answer.
    pub async fn register(&self, service: &Registration) -> Result<(), DiscoveryError> {
        let mut check = service.check.as_ref().map(|c| match c {
            AgentCheck::Http {
                url,
                interval,
                timeout,
            } => CheckBody {
                http: Some(url.clone()),
                interval: Some(go_duration(*interval)),
                timeout: Some(go_duration(*timeout)),
                ..CheckBody::default()
            },
            AgentCheck::Tcp {
                address,
                interval,
                timeout,
            } => CheckBody {
                tcp: Some(address.clone()),
                interval: Some(go_duration(*interval)),
                timeout: Some(go_duration(*timeout)),
                ..CheckBody::default()
            },
            AgentCheck::Ttl { ttl } => CheckBody {
                ttl: Some(go_duration(*ttl)),
                ..CheckBody::default()
            },
        });
        if let (Some(check), Some(after)) = (check.as_mut(), service.deregister_critical_after) {
            check.deregister_critical_service_after = Some(go_duration(after));
        }
        let body = RegisterBody {
            id: &service.id,
            name: &service.name,
            address: service.address.to_string(),
            port: service.port,
            tags: &service.tags,
            meta: &service.meta,
            check,
        };
        let json =
            serde_json::to_vec(&body).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
        self.agent_put("/v1/agent/service/register", Bytes::from(json))
            .await
    }

    /// Deregisters instance `id` (`PUT /v1/agent/service/deregister/:id`).
    ///
    /// # Errors
    ///
    /// As [`ConsulRegistry::register`].
    pub async fn deregister(&self, id: &str) -> Result<(), DiscoveryError> {
        self.agent_put(
            &format!("/v1/agent/service/deregister/{}", crate::consul::encode(id)),
            Bytes::new(),
        )
        .await
    }

    /// Reports instance `id`'s TTL check as passing (a heartbeat:
    /// `PUT /v1/agent/check/pass/service:<id>`).
    ///
    /// # Errors
    ///
    /// As [`ConsulRegistry::register`].
    pub async fn pass_ttl(&self, id: &str) -> Result<(), DiscoveryError> {
        self.agent_put(
            &format!("/v1/agent/check/pass/service:{}", crate::consul::encode(id)),
            Bytes::new(),
        )
        .await
    }

    /// Sends [`ConsulRegistry::pass_ttl`] heartbeats for `registration`
    /// every `every` (pick a third of the TTL) until the returned handle is
    /// dropped. A refused heartbeat (an agent restarted without its state
    /// forgets the service) registers the service again; a beat that could
    /// not be sent is retried at the next one, without a burst of catch-up
    /// beats.
    pub fn heartbeat(&self, registration: Registration, every: Duration) -> crate::Follow {
        let this = self.clone();
        crate::Follow::spawn(async move {
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let id = &registration.id;
                if let Err(error) = this.pass_ttl(id).await {
                    tracing::warn!(%id, %error, "TTL heartbeat to Consul failed; registering again");
                    if let Err(error) = this.register(&registration).await {
                        tracing::warn!(%id, %error, "registering again failed");
                    }
                }
            }
        })
    }

    /// A `PUT` to the agent API, with the token (marked sensitive).
    pub(crate) fn agent_request(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, DiscoveryError> {
        let mut req = Request::builder().method(Method::PUT).uri(url);
        if let Some(token) = self.token_header() {
            req = req.header(crate::consul::TOKEN_HEADER, token.clone());
        }
        req.body(Full::new(body)).map_err(|e| {
            DiscoveryError::Malformed(format!("{}: {e}", crate::consul::redact_userinfo(url)))
        })
    }

    async fn agent_put(&self, path: &str, body: Bytes) -> Result<(), DiscoveryError> {
        let mut url = format!("{}{}", self.base_url().trim_end_matches('/'), path);
        // The same namespace and datacenter as the health queries, so what
        // is registered is what is watched.
        let mut query = Vec::new();
        if let Some(ns) = self.namespace_value() {
            query.push(format!("ns={}", crate::consul::encode(ns)));
        }
        if let Some(dc) = self.datacenter_value() {
            query.push(format!("dc={}", crate::consul::encode(dc)));
        }
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let req = self.agent_request(&url, body)?;
        // What errors may show: the address without userinfo.
        let url = crate::consul::redact_userinfo(&url);
        let response = tokio::time::timeout(Duration::from_secs(10), self.transport().send(req))
            .await
            .map_err(|_| DiscoveryError::Unavailable(format!("{url}: no answer within 10s")))?
            .map_err(|e| {
                DiscoveryError::Unavailable(format!("{url}: {}", mesh_core::error_chain(&e)))
            })?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(());
        }
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect();
        let text = tokio::time::timeout(Duration::from_secs(5), body)
            .await
            .map_err(|_| {
                DiscoveryError::Unavailable(format!(
                    "{url}: Consul answered {status}, then stalled"
                ))
            })?
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes()[..])
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
            .unwrap_or_default();
        Err(DiscoveryError::Unavailable(format!(
            "{url}: Consul answered {status}: {text}"
        )))
    }
}
