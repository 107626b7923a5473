//! Ready-made checks (the design document's `CommonHealthChecks`): TCP
//! connect, HTTP GET, memory and disk usage. Any async closure is a check
//! too (see [`crate::HealthCheck::builder`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::check::{CheckError, CheckFuture};

/// Checks anyone can use; each returns the closure to hand to
/// [`crate::HealthCheck::builder`].
///
/// ```
/// use mesh_health::{common, HealthCheck};
/// let disk = HealthCheck::builder("disk", common::disk_usage("/", 95.0)).build()?;
/// let memory = HealthCheck::builder("memory", common::memory_usage(90.0)).build()?;
/// # let _ = (disk, memory);
/// # Ok::<(), mesh_core::MeshError>(())
/// ```
pub fn tcp_connect(addr: SocketAddr) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        Box::pin(async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| CheckError(format!("cannot connect to {addr}: {e}")))
        })
    }
}

/// What an HTTP check expects.
#[derive(Clone, Debug)]
pub struct HttpExpect {
    /// Statuses that pass (by default 200-399).
    pub statuses: std::ops::RangeInclusive<u16>,
    /// Text the body must contain, if any (the first 64 KiB are read).
    pub body_contains: Option<String>,
}

impl Default for HttpExpect {
    fn default() -> Self {
        HttpExpect {
            statuses: 200..=399,
            body_contains: None,
        }
    }
}

/// GETs `url` (plain HTTP) and checks the status and, optionally, the body.
pub fn http_get(
    url: http::Uri,
    expect: HttpExpect,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    move || {
        let (client, url, expect) = (client.clone(), url.clone(), expect.clone());
        Box::pin(async move {
            let response = client
                .get(url.clone())
                .await
                .map_err(|e| CheckError(format!("GET {url}: {}", causes(&e))))?;
            let status = response.status();
            if !expect.statuses.contains(&status.as_u16()) {
                return Err(CheckError(format!(
                    "GET {url}: status {status}, expected {}-{}",
                    expect.statuses.start(),
                    expect.statuses.end()
                )));
            }
            if let Some(needle) = &expect.body_contains {
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map_err(|e| CheckError(format!("GET {url}: reading the body: {e}")))?
                    .to_bytes();
                if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                    return Err(CheckError(format!(
                        "GET {url}: the body does not contain {needle:?}"
                    )));
                }
            }
            Ok(())
        })
    }
}

/// An HTTP status as the check reports it.
pub fn expect_status(status: StatusCode) -> HttpExpect {
    HttpExpect {
        statuses: status.as_u16()..=status.as_u16(),
        body_contains: None,
    }
}

/// Fails when memory in use exceeds `max_percent` of the limit: the cgroup
/// v2 limit when the process has one (a container's), else the machine's
/// memory.
pub fn memory_usage(max_percent: f64) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        Box::pin(async move {
            let usage = tokio::task::spawn_blocking(memory::read)
                .await
                .map_err(|e| CheckError(format!("reading memory usage: {e}")))??;
            let percent = usage.percent();
            if percent > max_percent {
                return Err(CheckError(format!(
                    "memory {percent:.1}% of {} ({}) is above {max_percent}%",
                    usage.limit, usage.source
                )));
            }
            Ok(())
        })
    }
}

/// Fails when the filesystem holding `path` is more than `max_percent`
/// full (as `df` counts it: space unavailable to unprivileged users is
/// used).
pub fn disk_usage(
    path: impl Into<PathBuf>,
    max_percent: f64,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    let path = path.into();
    move || {
        let path = path.clone();
        Box::pin(async move {
            let percent = tokio::task::spawn_blocking(move || disk_percent(&path))
                .await
                .map_err(|e| CheckError(format!("reading disk usage: {e}")))??;
            if percent > max_percent {
                return Err(CheckError(format!(
                    "disk {percent:.1}% full, above {max_percent}%"
                )));
            }
            Ok(())
        })
    }
}

/// Percent of the filesystem at `path` in use.
pub fn disk_percent(path: &Path) -> Result<f64, CheckError> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| CheckError(format!("statvfs {}: {e}", path.display())))?;
    let total = stat.f_blocks as f64;
    let available = stat.f_bavail as f64;
    let free = stat.f_bfree as f64;
    // df: used / (used + available), where used = total - free.
    let used = total - free;
    if used + available <= 0.0 {
        return Err(CheckError(format!(
            "statvfs {}: the filesystem reports no blocks",
            path.display()
        )));
    }
    Ok(used / (used + available) * 100.0)
}

/// Memory in use against its limit.
pub mod memory {
    use crate::check::CheckError;

    /// Bytes in use and the limit they count against.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Usage {
        /// Bytes in use.
        pub used: u64,
        /// The limit in bytes.
        pub limit: u64,
        /// Where the figures come from: `cgroup v2` or `/proc/meminfo`.
        pub source: &'static str,
    }

    impl Usage {
        /// Percent of the limit in use.
        pub fn percent(&self) -> f64 {
            self.used as f64 / self.limit.max(1) as f64 * 100.0
        }
    }

    /// Reads the cgroup v2 figures of this process when it has a limit,
    /// else the machine's.
    pub fn read() -> Result<Usage, CheckError> {
        if let Some(usage) = cgroup_v2(std::path::Path::new("/sys/fs/cgroup")) {
            return Ok(usage);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| CheckError(format!("reading /proc/meminfo: {e}")))?;
        from_meminfo(&meminfo)
    }

    /// The cgroup v2 usage under `root`, when a limit is set (`memory.max`
    /// is not `max`).
    pub fn cgroup_v2(root: &std::path::Path) -> Option<Usage> {
        let limit = std::fs::read_to_string(root.join("memory.max")).ok()?;
        let limit: u64 = limit.trim().parse().ok()?;
        let used: u64 = std::fs::read_to_string(root.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Usage {
            used,
            limit,
            source: "cgroup v2",
        })
    }

    /// The machine's usage from `/proc/meminfo` text: total minus
    /// available.
    pub fn from_meminfo(text: &str) -> Result<Usage, CheckError> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| CheckError(format!("/proc/meminfo has no {name}")))
        };
        let total = field("MemTotal:")?;
        let available = field("MemAvailable:")?;
        Ok(Usage {
            used: total.saturating_sub(available),
            limit: total,
            source: "/proc/meminfo",
        })
    }
}

fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_as_total_minus_available() {
        let usage = memory::from_meminfo(
            "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n",
        )
        .unwrap();
        assert_eq!(usage.used, 750 * 1024);
        assert_eq!(usage.limit, 1000 * 1024);
        assert!((usage.percent() - 75.0).abs() < 1e-9);
        assert!(memory::from_meminfo("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn a_cgroup_limit_is_used_only_when_set() {
        let dir = std::env::temp_dir().join(format!("mesh-health-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.current"), "100\n").unwrap();
        assert_eq!(memory::cgroup_v2(&dir), None);
        std::fs::write(dir.join("memory.max"), "400\n").unwrap();
        let usage = memory::cgroup_v2(&dir).unwrap();
        assert!((usage.percent() - 25.0).abs() < 1e-9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_usage_of_the_root_is_a_percentage() {
        let percent = disk_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&percent), "{percent}");
        assert!(disk_percent(Path::new("/no/such/path")).is_err());
    }
}
