//! Kubernetes DNS against a real dnsmasq (Debian's dnsmasq-base, installed
//! by .ci/run) on a loopback port, serving the records Kubernetes DNS would
//! for a headless service: A records from a hosts directory (changes picked
//! up without a restart) and SRV records for a named port.

#[path = "support/wait.rs"]
mod wait;
use wait::until;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ServiceName;
use mesh_discover::{Catalog, KubernetesDnsRegistry, PortSource, Registry};

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.hosts.parent().unwrap_or(&self.hosts));
    }
}

const NAME: &str = "users.default.svc.cluster.local";

fn free_port() -> u16 {
    // A port free for UDP and TCP both (dnsmasq serves both).
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn write_hosts(dir: &Path, ips: &[&str]) {
    let lines: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    let pods: String = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{ip} pod-{i}.{NAME}\n"))
        .collect();
    // In place (not by rename): dnsmasq drops a modified file's old
    // records and reads the new ones.
    let file = dir.join("users");
    // (A deleted file's records linger in dnsmasq 2.90: scaled to zero is
    // a file without the service's names.)
    let body = if ips.is_empty() {
        "127.0.0.99 placeholder.invalid\n".to_owned()
    } else {
        format!("{lines}{pods}")
    };
    std::fs::write(file, body).expect("hosts");
}

fn start(ips: &[&str]) -> Dnsmasq {
    let root = std::env::temp_dir().join(format!(
        "mesh-dnsmasq-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    let hosts = root.join("hosts");
    std::fs::create_dir_all(&hosts).expect("dir");
    write_hosts(&hosts, ips);
    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--user=root",
            "--pid-file",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            // Authoritative for the cluster zone, as Kubernetes DNS is: an
            // unknown name is NXDOMAIN, not a refusal.
            "--local=/cluster.local/",
            &format!("--hostsdir={}", hosts.display()),
            "--local-ttl=1",
            &format!("--srv-host=_http._tcp.{NAME},pod-0.{NAME},8080,0,10"),
            &format!("--srv-host=_http._tcp.{NAME},pod-1.{NAME},8080,0,30"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq could not start: install Debian's dnsmasq-base (.ci/run does)");
    Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        hosts,
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

fn registry(dns: &Dnsmasq, port: PortSource) -> KubernetesDnsRegistry {
    KubernetesDnsRegistry::builder(port)
        .nameserver(dns.addr)
        .refresh_between(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("config")
}

async fn ready(registry: &KubernetesDnsRegistry) {
    let started = Instant::now();
    let users = ServiceName::new("users").expect("name");
    while registry
        .resolve(&users)
        .await
        .map_or(true, |s| s.is_empty())
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dnsmasq never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_is_seen_and_zero_instances_is_an_empty_set() {
    let dns = start(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let registry = registry(&dns, PortSource::Fixed(8080));
    ready(&registry).await;
    let catalog = Catalog::default();
    let _follow = catalog.follow(
        Arc::new(registry),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 3).await;
    let set = catalog.get("users").expect("set");
    assert!(set.iter().all(|e| e.address().port() == 8080));

    write_hosts(
        &dns.hosts,
        &["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"],
    );
    until(&catalog, 4).await;
    write_hosts(&dns.hosts, &["127.0.0.12"]);
    until(&catalog, 1).await;
    write_hosts(&dns.hosts, &[]);
    until(&catalog, 0).await; // NXDOMAIN: no instances, not an error
    write_hosts(&dns.hosts, &["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    until(&catalog, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights() {
    let dns = start(&["127.0.0.21", "127.0.0.22"]);
    let registry = registry(
        &dns,
        PortSource::Srv {
            name: "http".into(),
            protocol: "tcp".into(),
        },
    );
    ready(&registry).await;
    let set = registry
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .expect("answer");
    let mut seen: Vec<(String, u32)> = set
        .iter()
        .map(|e| (e.address().to_string(), e.weight().get()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("127.0.0.21:8080".to_owned(), 10),
            ("127.0.0.22:8080".to_owned(), 30)
        ]
    );
}
