//! A custom registry, worked end to end: instances kept in etcd v3.
//!
//! Layout: one key per instance under `<prefix>/<service>/`, whose value is
//! JSON such as `{"address": "10.0.0.7:8080", "weight": 2, "tags": ["v2"]}`
//! (`weight` and `tags` optional). The key's last segment is the endpoint id.
//!
//! It talks to etcd's JSON gateway (`/v3/kv/range`, `/v3/watch`) with the
//! hyper client the rest of the crate already uses, so it adds no gRPC stack.
//! `watch` reads the whole prefix, then holds an etcd watch open from the
//! next revision; any event re-reads the prefix and yields a full snapshot
//! (`Catalog::follow` drops snapshots that change nothing). When etcd goes
//! away, or cancels the watch, the stream yields an error (the catalog
//! keeps the last good set) and reconnects after a pause; TCP keepalive
//! notices a peer that vanished without closing the connection.
//!
//! Run against a local etcd:
//!
//! ```text
//! cargo run -p mesh-discover --example etcd_registry -- http://127.0.0.1:2379 users
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mesh_core::{Endpoint, EndpointId, EndpointSet, ServiceName, Weight};
use mesh_discover::{BoxFuture, BoxStream, DiscoveryError, Registry, WatchSender};

/// Instances of every service under one etcd key prefix.
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port` of one etcd member, without a trailing slash.
    base: String,
    prefix: String,
    retry_after: Duration,
}

/// How one instance is written into etcd.
#[derive(serde::Deserialize)]
struct Instance {
    address: SocketAddr,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    tags: Vec<String>,
}

impl EtcdRegistry {
    /// A registry reading `<prefix>/<service>/*` from the etcd at `base`
    /// (for example `http://127.0.0.1:2379`).
    pub fn new(base: &str, prefix: &str) -> Self {
        // A watch is one long-lived request: TCP keepalive is what notices
        // an etcd that vanished without closing the connection.
        let mut connector = HttpConnector::new();
        connector.set_keepalive(Some(Duration::from_secs(15)));
        EtcdRegistry {
            inner: Arc::new(Inner {
                client: Client::builder(TokioExecutor::new()).build(connector),
                base: base.trim_end_matches('/').to_owned(),
                prefix: prefix.trim_end_matches('/').to_owned(),
                retry_after: Duration::from_millis(500),
            }),
        }
    }

    /// The key range `[start, end)` holding one service's instances.
    fn range(&self, service: &ServiceName) -> (String, String) {
        let start = format!("{}/{}/", self.inner.prefix, service.as_str());
        // etcd's prefix idiom: the end is the prefix with its last byte
        // incremented ('/' + 1 == '0').
        let end = format!("{}/{}0", self.inner.prefix, service.as_str());
        (B64.encode(start), B64.encode(end))
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<Bytes, DiscoveryError> {
        let request = http::Request::post(format!("{}{path}", self.inner.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd request: {e}")))?;
        let response = self
            .inner
            .client
            .request(request)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd {path}: {e}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd {path}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(DiscoveryError::Unavailable(format!(
                "etcd {path}: {status}"
            )));
        }
        Ok(body)
    }

    /// Reads the service's instances and the revision they were read at.
    async fn read(&self, service: &ServiceName) -> Result<(EndpointSet, i64), DiscoveryError> {
        let (key, range_end) = self.range(service);
        let body = self
            .post(
                "/v3/kv/range",
                serde_json::json!({ "key": key, "range_end": range_end }),
            )
            .await?;
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| DiscoveryError::Malformed(format!("etcd range: {e}")))?;
        // The gateway writes 64-bit integers as strings.
        let revision = answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse::<i64>().ok())
            .ok_or_else(|| DiscoveryError::Malformed("etcd range: no revision".into()))?;
        let mut endpoints = Vec::new();
        for kv in answer["kvs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            // A bad entry is skipped, not fatal: one operator's typo must
            // not take every other instance of the service away.
            match parse_instance(kv) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(reason) => tracing::warn!(service = %service, %reason, "skipping etcd entry"),
            }
        }
        Ok((EndpointSet::new(service.clone(), endpoints), revision))
    }

    /// Follows one etcd watch until it ends; `Ok` when it ends cleanly.
    async fn follow(&self, service: &ServiceName, tx: &WatchSender) -> Result<(), DiscoveryError> {
        let (set, revision) = self.read(service).await?;
        if tx.send(Ok(set)).await.is_err() {
            return Ok(());
        }
        let (key, range_end) = self.range(service);
        let create = serde_json::json!({ "create_request": {
            "key": key, "range_end": range_end, "start_revision": (revision + 1).to_string(),
        }});
        let request = http::Request::post(format!("{}/v3/watch", self.inner.base))
            .body(Full::new(Bytes::from(create.to_string())))
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd watch: {e}")))?;
        let mut body = self
            .inner
            .client
            .request(request)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd watch: {e}")))?
            .into_body();
        // The gateway streams one JSON watch response per line; a line may
        // span frames. Rather than merging events into the set (and
        // getting deletes or compaction subtly wrong), a response carrying
        // events re-reads the prefix.
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| DiscoveryError::Unavailable(format!("etcd watch: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if watch_changed(&line)? {
                    let (set, _) = self.read(service).await?;
                    if tx.send(Ok(set)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Err(DiscoveryError::Unavailable("etcd watch ended".into()))
    }
}

/// Whether one watch response reports changes; an error when the watch is
/// over (cancelled, for example after compaction, or an error line), so the
/// caller reconnects instead of waiting on a dead watch.
fn watch_changed(line: &[u8]) -> Result<bool, DiscoveryError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let response: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| DiscoveryError::Malformed(format!("etcd watch: {e}")))?;
    if let Some(error) = response.get("error") {
        return Err(DiscoveryError::Unavailable(format!("etcd watch: {error}")));
    }
    let result = &response["result"];
    if result["canceled"].as_bool() == Some(true) {
        return Err(DiscoveryError::Unavailable(format!(
            "etcd watch cancelled: {}",
            result["cancel_reason"]
                .as_str()
                .unwrap_or("no reason given")
        )));
    }
    Ok(result["events"]
        .as_array()
        .is_some_and(|events| !events.is_empty()))
}

fn parse_instance(kv: &serde_json::Value) -> Result<Endpoint, String> {
    let decode = |field: &str| -> Result<Vec<u8>, String> {
        let text = kv[field].as_str().ok_or(format!("no {field}"))?;
        B64.decode(text).map_err(|e| format!("{field}: {e}"))
    };
    let key = String::from_utf8(decode("key")?).map_err(|e| format!("key: {e}"))?;
    let instance: Instance =
        serde_json::from_slice(&decode("value")?).map_err(|e| format!("{key}: {e}"))?;
    let id = key.rsplit('/').next().unwrap_or(&key);
    let mut builder = Endpoint::builder(instance.address)
        .id(EndpointId::new(id).map_err(|e| format!("{key}: {e}"))?);
    if let Some(weight) = instance.weight {
        builder = builder.weight(Weight::new(weight).map_err(|e| format!("{key}: {e}"))?);
    }
    for tag in instance.tags {
        builder = builder.tag(tag);
    }
    Ok(builder.build())
}

impl Registry for EtcdRegistry {
    /// Named in errors such as a first call's discovery timeout.
    fn describe(&self) -> String {
        format!("etcd at {} (prefix {})", self.inner.base, self.inner.prefix)
    }

    fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        Box::pin(async move { this.read(&service).await.map(|(set, _)| set) })
    }

    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        mesh_discover::watch_task(move |tx| async move {
            loop {
                let error = match this.follow(&service, &tx).await {
                    Ok(()) => return,
                    Err(e) => e,
                };
                if tx.send(Err(error)).await.is_err() {
                    return;
                }
                tokio::time::sleep(this.inner.retry_after).await;
            }
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".to_owned());
    let service = ServiceName::new(&args.next().unwrap_or_else(|| "users".to_owned()))?;
    let registry = EtcdRegistry::new(&base, "mesh");
    let set = registry.resolve(&service).await?;
    println!("{} instance(s) of {service}:", set.len());
    for endpoint in set.iter() {
        println!("  {} {}", endpoint.id().as_str(), endpoint.address());
    }
    Ok(())
}
