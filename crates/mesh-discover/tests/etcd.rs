//! The worked custom registry (examples/etcd_registry.rs) against a real
//! etcd (Debian's etcd-server, installed by scripts/test.sh) on loopback ports.

#[allow(dead_code)]
#[path = "../examples/etcd_registry.rs"]
mod etcd_registry;

mod support;
use support::until;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mesh_core::{EventBus, MeshEvent, ServiceName};
use mesh_discover::{Catalog, Registry};
use mesh_testkit::net::free_port;

use etcd_registry::EtcdRegistry;

struct Etcd {
    child: Child,
    base: String,
    dir: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

impl Etcd {
    /// A fresh etcd on free loopback ports. A port picked free can be
    /// taken before etcd binds it (by the other test's etcd, say): etcd
    /// then exits at once, and starts again on fresh ports.
    async fn start() -> Etcd {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            match Etcd::try_start().await {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("etcd exited: {log}"),
            }
        }
        panic!("etcd found its ports taken {ATTEMPTS} times in a row");
    }

    /// Starts etcd and waits until it answers; `Err` with its status and
    /// log if it exits first.
    async fn try_start() -> Result<Etcd, String> {
        let dir =
            std::env::temp_dir().join(format!("mesh-etcd-{}-{}", std::process::id(), free_port()));
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        std::fs::create_dir_all(&dir).expect("dir");
        let log = std::fs::File::create(dir.with_extension("log")).expect("log");
        let child = Command::new("etcd")
            .args([
                "--data-dir",
                &dir.join("data").display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd could not start: install Debian's etcd-server (scripts/test.sh does)");
        let mut etcd = Etcd {
            child,
            base: client_url,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let started = Instant::now();
        while etcd
            .post("/v3/kv/range", r#"{"key":"AA=="}"#)
            .await
            .is_err()
        {
            // Fail at once, with etcd's own words, if it could not start
            // (a port taken between picking and binding, for example).
            if let Ok(Some(status)) = etcd.child.try_wait() {
                let log = std::fs::read_to_string(etcd.dir.with_extension("log"));
                return Err(format!("({status}) {}", log.unwrap_or_default()));
            }
            // Generous: a cold first start on a loaded 2-core machine is slow.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd never became ready: {}",
                std::fs::read_to_string(etcd.dir.with_extension("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(etcd)
    }

    async fn post(&self, path: &str, body: &str) -> Result<(), String> {
        let request = http::Request::post(format!("{}{path}", self.base))
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        status.is_success().then_some(()).ok_or(status.to_string())
    }

    async fn put(&self, key: &str, value: &str) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            B64.encode(key),
            B64.encode(value)
        );
        self.post("/v3/kv/put", &body).await.expect("put");
    }

    async fn delete(&self, key: &str) {
        let body = format!(r#"{{"key":"{}"}}"#, B64.encode(key));
        self.post("/v3/kv/deleterange", &body)
            .await
            .expect("delete");
    }

    async fn put_instance(&self, id: &str, address: &str) {
        self.put(
            &format!("mesh/users/{id}"),
            &format!(r#"{{"address":"{address}","weight":2,"tags":["v2"]}}"#),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_changes_are_watched_and_bad_entries_skipped() {
    let etcd = Etcd::start().await;
    for (id, address) in [("a", "127.0.0.1:9001"), ("b", "127.0.0.1:9002")] {
        etcd.put_instance(id, address).await;
    }
    // Another service's keys share the prefix but not the range.
    etcd.put("mesh/usersx/z", r#"{"address":"127.0.0.1:9999"}"#)
        .await;

    let registry = EtcdRegistry::new(&etcd.base, "mesh");
    let users = ServiceName::new("users").expect("name");
    let set = registry.resolve(&users).await.expect("resolve");
    let mut seen: Vec<(String, String, u32, bool)> = set
        .iter()
        .map(|e| {
            (
                e.id().as_str().to_owned(),
                e.address().to_string(),
                e.weight().get(),
                e.has_tag("v2"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_owned(), "127.0.0.1:9001".to_owned(), 2, true),
            ("b".to_owned(), "127.0.0.1:9002".to_owned(), 2, true),
        ]
    );

    let catalog = Catalog::default();
    let _follow = catalog.follow(Arc::new(registry), users, Duration::from_millis(50));
    until(&catalog, 2).await;

    etcd.put_instance("c", "127.0.0.1:9003").await;
    until(&catalog, 3).await;

    // A malformed entry is skipped; the good ones stay.
    etcd.put("mesh/users/broken", "not json").await;
    etcd.put("mesh/users/badport", r#"{"address":"127.0.0.1:70000"}"#)
        .await;
    etcd.put_instance("d", "127.0.0.1:9004").await;
    until(&catalog, 4).await;

    etcd.delete("mesh/users/a").await;
    etcd.delete("mesh/users/c").await;
    until(&catalog, 2).await;
    let mut left: Vec<String> = catalog
        .get("users")
        .expect("set")
        .iter()
        .map(|e| e.address().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["127.0.0.1:9002", "127.0.0.1:9004"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_going_away_keeps_the_last_good_set() {
    let mut etcd = Etcd::start().await;
    etcd.put_instance("a", "127.0.0.1:9101").await;
    let registry = EtcdRegistry::new(&etcd.base, "mesh");
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let _follow = catalog.follow(
        Arc::new(registry.clone()),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 1).await;

    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    assert!(registry
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .is_err());
    // The watch notices (its stream breaks) and says so; the set stays.
    let noticed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(MeshEvent::DiscoveryFailed { .. }) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event bus closed: {e}"),
            }
        }
    })
    .await;
    assert!(noticed.is_ok(), "etcd's death was never reported");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(1));
}
