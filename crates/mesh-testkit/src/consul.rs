//! An in-repo double of Consul's `/v1/health/service/:name` endpoint,
//! written to the documented API and blocking-query rules: an `index`
//! parameter at or above the current index blocks until the index moves or
//! `wait` passes (then answers the same data with the same index); each
//! answer carries `X-Consul-Index`; `passing=true` keeps only entries whose
//! checks all pass. Test hooks: change the entries (the index moves),
//! force the index (backwards or to 0, as an agent restart or old-Consul
//! bug does), fail the next requests with 500, delay answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// What the double holds: the catalog, its index and the test hooks.
#[derive(Default)]
struct State {
    index: u64,
    services: HashMap<String, Vec<serde_json::Value>>,
    fail_next: u32,
    delay: Duration,
    requests: Vec<String>,
    /// Agent registrations by ID, as sent.
    registered: HashMap<String, serde_json::Value>,
    heartbeats: u32,
}

/// The double, listening on `127.0.0.1`; stops (and closes its
/// connections) when dropped.
///
/// It starts at index 10 with no services.
pub struct ConsulDouble {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A health entry of service `users` for `ip:port` on `node`, its one
/// check in `status` (`"passing"`, `"warning"`, `"critical"`), as
/// `/v1/health/service/users` lists it. `ip` is written as both the
/// service's and the node's address; Consul takes any string there, so a
/// hostname (`"localhost"`) or `""` (no service address: clients use the
/// node's) are served as given.
pub fn entry(node: &str, ip: &str, port: u16, status: &str) -> serde_json::Value {
    serde_json::json!({
        "Node": { "Node": node, "Address": ip },
        "Service": { "ID": format!("svc-{port}"), "Service": "users", "Address": ip, "Port": port, "Tags": [], "Meta": {}, "Weights": { "Passing": 1, "Warning": 1 } },
        "Checks": [{ "Status": status }]
    })
}

// === impl ConsulDouble ===

impl ConsulDouble {
    /// The double over plain HTTP.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> ConsulDouble {
        Self::start_on(|tcp| std::future::ready(Some(tcp))).await
    }

    /// The double behind `wrap`, which turns each accepted connection into
    /// the stream to serve HTTP on (a TLS handshake, say), or refuses it.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start_on<F, Fut, IO>(wrap: F) -> ConsulDouble
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => panic!("the Consul double cannot bind 127.0.0.1: {error}"),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(error) => panic!("the Consul double has no local address: {error}"),
        };
        let state = Arc::new(Mutex::new(State {
            index: 10,
            ..State::default()
        }));
        let changed = Arc::new(Notify::new());
        let (s, c) = (Arc::clone(&state), Arc::clone(&changed));
        let task = tokio::spawn(async move {
            // Connections live in this set: dropping the double (aborting
            // this task) closes them too, as a dead Consul would.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (s, c) = (Arc::clone(&s), Arc::clone(&c));
                let wrapped = wrap(stream);
                connections.spawn(async move {
                    let Some(stream) = wrapped.await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, Arc::clone(&s), Arc::clone(&c))
                    });
                    // HTTP/1.1 or h2 (over TLS, ALPN picks h2 as Consul's
                    // Go server does).
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        ConsulDouble {
            addr,
            state,
            changed,
            task,
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`, as a Consul client takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock().expect("state"));
        self.changed.notify_waiters();
        out
    }

    /// Replaces a service's entries; the index moves forward.
    pub fn set(&self, service: &str, entries: Vec<serde_json::Value>) {
        self.with(|s| {
            s.services.insert(service.to_owned(), entries);
            s.index += 1;
        });
    }

    /// Forces the index (an agent restart sends it backwards).
    pub fn force_index(&self, index: u64) {
        self.with(|s| s.index = index);
    }

    /// Answers the next `n` health queries with 500, as a Consul server
    /// without a leader does.
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    /// Delays every health answer by `d` from now on (zero: no delay).
    pub fn delay(&self, d: Duration) {
        self.with(|s| s.delay = d);
    }

    /// The registration sent for `id`, if any.
    pub fn registration(&self, id: &str) -> Option<serde_json::Value> {
        self.state
            .lock()
            .expect("state")
            .registered
            .get(id)
            .cloned()
    }

    /// TTL heartbeats received.
    pub fn heartbeats(&self) -> u32 {
        self.state.lock().expect("state").heartbeats
    }

    /// The query strings received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn wait_of(query: &str) -> Duration {
    // Consul accepts "10s", "500ms", "5m"; the client here sends ms.
    let Some(w) = param(query, "wait") else {
        return Duration::from_secs(300);
    };
    if let Some(ms) = w.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap_or(0));
    }
    if let Some(s) = w.strip_suffix('s') {
        return Duration::from_secs(s.parse().unwrap_or(0));
    }
    Duration::from_secs(300)
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::new()))
}

/// The agent API: register (the instance appears in the health answers,
/// critical until a TTL heartbeat when its check is a TTL), deregister,
/// and TTL passes.
async fn agent(
    req: Request<Incoming>,
    state: &Mutex<State>,
    changed: &Notify,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = state.lock().expect("state");
    if path == "/v1/agent/service/register" {
        let Ok(reg) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Response::builder()
                .status(400)
                .body(Full::new(Bytes::from("bad JSON")))
                .expect("response");
        };
        let id = reg["ID"].as_str().unwrap_or_default().to_owned();
        let name = reg["Name"].as_str().unwrap_or_default().to_owned();
        let status = if reg["Check"]["TTL"].is_string() {
            "critical"
        } else {
            "passing"
        };
        let entry = serde_json::json!({
            "Node": { "Node": "agent", "Address": "127.0.0.1" },
            "Service": { "ID": id, "Service": name, "Address": reg["Address"], "Port": reg["Port"], "Tags": reg["Tags"], "Meta": reg["Meta"] },
            "Checks": [{ "Status": status, "ServiceID": id }]
        });
        let entries = s.services.entry(name).or_default();
        entries.retain(|e| e["Service"]["ID"] != id.as_str());
        entries.push(entry);
        s.registered.insert(id, reg);
    } else if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
        s.registered.remove(id);
        for entries in s.services.values_mut() {
            entries.retain(|e| e["Service"]["ID"] != id);
        }
    } else if let Some(id) = path.strip_prefix("/v1/agent/check/pass/service:") {
        s.heartbeats += 1;
        for entries in s.services.values_mut() {
            for e in entries.iter_mut().filter(|e| e["Service"]["ID"] == id) {
                e["Checks"][0]["Status"] = serde_json::json!("passing");
            }
        }
    } else {
        return Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .expect("response");
    }
    s.index += 1;
    drop(s);
    changed.notify_waiters();
    ok()
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == http::Method::PUT {
        return Ok(agent(req, &state, &changed).await);
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let Some(service) = path.strip_prefix("/v1/health/service/").map(str::to_owned) else {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .expect("response"));
    };
    let (fail, delay) = {
        let mut s = state.lock().expect("state");
        s.requests.push(query.clone());
        let fail = s.fail_next > 0;
        if fail {
            s.fail_next -= 1;
        }
        (fail, s.delay)
    };
    // A zero sleep still waits for the timer's next 1 ms tick.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fail {
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::from("rpc error")))
            .expect("response"));
    }
    // Blocking: an index at or above the current one waits for a change,
    // up to `wait`.
    if let Some(index) = param(&query, "index").and_then(|i| i.parse::<u64>().ok()) {
        let deadline = tokio::time::Instant::now() + wait_of(&query);
        loop {
            let notified = changed.notified();
            // Consul blocks while the requested index is at or above the
            // current one.
            if state.lock().expect("state").index > index {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
    }
    let s = state.lock().expect("state");
    let passing_only = param(&query, "passing") == Some("true");
    let entries: Vec<&serde_json::Value> = s
        .services
        .get(&service)
        .map(|v| {
            v.iter()
                .filter(|e| {
                    !passing_only
                        || e["Checks"]
                            .as_array()
                            .is_some_and(|c| c.iter().all(|c| c["Status"] == "passing"))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Response::builder()
        .header("x-consul-index", s.index.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&entries).expect("json"),
        )))
        .expect("response"))
}
