//! A real dnsmasq (Debian's dnsmasq-base) on a loopback port, serving the
//! records Kubernetes DNS would for a headless service: A records from a
//! hosts directory (changes picked up without a restart) and SRV records
//! for a named port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::fs::TempDir;
use crate::net::free_udp_and_tcp_port;

/// A running dnsmasq; killed (and its directory removed) when dropped.
pub struct Dnsmasq {
    child: Child,
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    /// Its hosts directory, for [`write_hosts`].
    pub hosts: PathBuf,
    /// Holds `hosts`; dropped after the process is killed.
    _root: TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === impl Dnsmasq ===

impl Dnsmasq {
    /// Stops the process (`SIGSTOP`) without closing its sockets: queries
    /// reach it and are never answered, as with a hung or overloaded DNS
    /// server. [`resume`](Self::resume) lets it answer again.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d dnsmasq run again (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        match Command::new("kill").args([signal, &pid]).status() {
            Ok(status) if status.success() => {}
            other => panic!("kill {signal} {pid} (dnsmasq): {other:?}"),
        }
    }
}

/// The headless service's name.
pub const NAME: &str = "users.default.svc.cluster.local";

/// Points the service's A records (and `pod-N` names) at `ips`; dnsmasq
/// answers with them within a second.
///
/// # Panics
///
/// When the hosts file cannot be written.
pub fn write_hosts(dir: &Path, ips: &[&str]) {
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
    if let Err(error) = std::fs::write(&file, body) {
        panic!("cannot write {}: {error}", file.display());
    }
}

/// Starts dnsmasq on a free loopback port serving `ips` for [`NAME`] and
/// two SRV records on `_http._tcp`.
///
/// # Panics
///
/// When dnsmasq cannot be run, naming the package to install.
pub fn start(ips: &[&str]) -> Dnsmasq {
    try_start(ips)
        .expect("dnsmasq could not start: install Debian's dnsmasq-base (scripts/test.sh does)")
}

/// [`start`], or `None` when dnsmasq cannot be run: for a benchmark that
/// skips its DNS case on a machine without it.
pub fn try_start(ips: &[&str]) -> Option<Dnsmasq> {
    let root = TempDir::new("dnsmasq");
    let hosts = root.path("hosts");
    std::fs::create_dir_all(&hosts).ok()?;
    write_hosts(&hosts, ips);
    let port = free_udp_and_tcp_port();
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
        .ok()?;
    Some(Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        hosts,
        _root: root,
    })
}
