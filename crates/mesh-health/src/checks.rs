//! Ready-made checks (the design document's `CommonHealthChecks`): TCP
//! connect, HTTP GET, memory and disk usage. Each returns the closure to
//! hand to [`crate::HealthCheck::builder`]; any async closure is a check
//! too.
//!
//! ```
//! use mesh_health::{checks, HealthCheck};
//! let disk = HealthCheck::builder("disk", checks::disk_usage("/", 95.0)).build()?;
//! let memory = HealthCheck::builder("memory", checks::memory_usage(90.0)).build()?;
//! # let _ = (disk, memory);
//! # Ok::<(), mesh_core::ConfigError>(())
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::health_check::{CheckError, CheckFuture};
use crate::probe::ProbeClient;
use crate::redact::{base64, basic_credentials, without_userinfo, Redacted};

/// Connects to `addr` over TCP.
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
    /// Text the body must contain, if any, within its first 64 KiB (the
    /// rest is not read).
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

/// GETs `url` over plain HTTP and checks the status and, optionally, the
/// body; [`http_get_with`] sends it through a client of the caller's
/// (`https` through a TLS one).
///
/// A `user:password@` in the URL is sent as HTTP Basic authentication (a
/// sensitive header), as curl does, and never printed: errors, and so
/// reports, logs and events, show the URL as `user:***@host`, and a query
/// as `?***`. A password's `/`, `?` and `#` must be percent-encoded
/// (`%2F`, `%3F`, `%23`), as in any URL: unencoded, they end the
/// authority where `http` parses it, and a `#` drops the rest unseen.
pub fn http_get(
    url: http::Uri,
    expect: HttpExpect,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    http_get_with(ProbeClient::plaintext(), url, expect)
}

/// [`http_get`] through `client`: the way to check an `https` URL (hand
/// it a client over your TLS connector).
///
/// ```
/// use mesh_health::{checks, HealthCheck, ProbeClient};
/// let url = "http://admin:s3cret@127.0.0.1:8080/health".parse()?;
/// let check = checks::http_get_with(ProbeClient::plaintext(), url, checks::HttpExpect::default());
/// let check = HealthCheck::builder("admin-api", check).build()?;
/// # let _ = check;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn http_get_with(
    client: ProbeClient,
    url: http::Uri,
    expect: HttpExpect,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    // The message prefix is built once, redacted; the URL on the wire has
    // no userinfo (hyper would drop it silently), its credentials travel
    // in the header instead.
    let shown: Arc<str> = Arc::from(format!("GET {}", Redacted(&url)));
    let authorization = basic_credentials(&url).and_then(|credentials| {
        let mut value =
            HeaderValue::from_str(&format!("Basic {}", base64(credentials.as_bytes()))).ok()?;
        value.set_sensitive(true);
        Some(value)
    });
    let target = without_userinfo(&url);
    move || {
        let (client, shown, expect) = (client.clone(), Arc::clone(&shown), expect.clone());
        let mut request = Request::get(target.clone());
        if let Some(value) = &authorization {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        let request = request.body(Empty::<Bytes>::new());
        Box::pin(async move {
            let request = request.map_err(|e| CheckError(format!("{shown}: {e}")))?;
            let response = client
                .send(request)
                .await
                .map_err(|e| CheckError(format!("{shown}: {}", mesh_core::error_chain(&*e))))?;
            let status = response.status();
            if !expect.statuses.contains(&status.as_u16()) {
                return Err(CheckError(format!(
                    "{shown}: status {status}, expected {}-{}",
                    expect.statuses.start(),
                    expect.statuses.end()
                )));
            }
            if let Some(needle) = &expect.body_contains {
                let body = read_prefix(response.into_body(), 64 * 1024)
                    .await
                    .map_err(|e| CheckError(format!("{shown}: reading the body: {e}")))?;
                if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                    return Err(CheckError(format!(
                        "{shown}: the body does not contain {needle:?}"
                    )));
                }
            }
            Ok(())
        })
    }
}

/// Expects exactly `status` (say `204`), no body match.
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
    use std::path::{Path, PathBuf};

    use crate::health_check::CheckError;

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

    /// This process's cgroup v2 usage when a limit applies to it (its own
    /// cgroup's or an ancestor's), else the machine's.
    pub fn read() -> Result<Usage, CheckError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok();
        if let (Some(own), Some(mounts)) = (own, mounts) {
            if let Some(dir) = own_cgroup_dir(&own, &mounts) {
                if let Some(usage) = cgroup_v2(&dir) {
                    return Ok(usage);
                }
            }
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| CheckError(format!("reading /proc/meminfo: {e}")))?;
        from_meminfo(&meminfo)
    }

    /// The directory of this process's cgroup v2: its `0::/path` line in
    /// `/proc/self/cgroup`, under the cgroup2 mount from
    /// `/proc/self/mountinfo`.
    pub fn own_cgroup_dir(proc_self_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
        let path = proc_self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .trim();
        let mount = mountinfo.lines().find_map(|line| {
            // "36 25 0:30 / /sys/fs/cgroup rw,... - cgroup2 cgroup2 rw"
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2")
                .then(|| fields.split_whitespace().nth(4))
                .flatten()
        })?;
        Some(Path::new(mount).join(path.trim_start_matches('/')))
    }

    /// Usage in the cgroup at `dir` against the tightest `memory.max` on
    /// the way up to the root; `None` when none is set. Usage leaves out
    /// inactive page cache (`inactive_file`), which the kernel reclaims
    /// before it would kill, as the kubelet counts it.
    pub fn cgroup_v2(dir: &Path) -> Option<Usage> {
        let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let mut limit: Option<u64> = None;
        let mut at = Some(dir);
        while let Some(d) = at {
            if let Ok(text) = std::fs::read_to_string(d.join("memory.max")) {
                if let Ok(max) = text.trim().parse::<u64>() {
                    limit = Some(limit.map_or(max, |l| l.min(max)));
                }
            } else {
                // Above the cgroup2 mount: no more memory.max files.
                break;
            }
            at = d.parent();
        }
        let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("inactive_file "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Some(Usage {
            used: current.saturating_sub(inactive_file),
            limit: limit?,
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

/// Up to `limit` bytes of a body; the rest is left unread.
pub(crate) async fn read_prefix<B>(mut body: B, limit: usize) -> Result<Vec<u8>, B::Error>
where
    B: http_body::Body + Unpin,
{
    let mut read = Vec::new();
    while read.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(mut data) = frame?.into_data() {
            let take = data.remaining().min(limit - read.len());
            read.extend_from_slice(&data.copy_to_bytes(take));
        }
    }
    Ok(read)
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
    fn the_tightest_cgroup_limit_up_the_tree_counts_without_page_cache() {
        let root = std::env::temp_dir().join(format!("mesh-health-cgroup-{}", std::process::id()));
        let leaf = root.join("kubepods").join("pod1");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("kubepods").join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.current"), "300\n").unwrap();
        std::fs::write(leaf.join("memory.stat"), "anon 200\ninactive_file 100\n").unwrap();
        // No limit anywhere: not a cgroup answer.
        assert_eq!(memory::cgroup_v2(&leaf), None);
        // A parent's limit applies; page cache does not count.
        std::fs::write(root.join("kubepods").join("memory.max"), "800\n").unwrap();
        let usage = memory::cgroup_v2(&leaf).unwrap();
        assert_eq!((usage.used, usage.limit), (200, 800));
        // The tightest wins.
        std::fs::write(leaf.join("memory.max"), "400\n").unwrap();
        assert!((memory::cgroup_v2(&leaf).unwrap().percent() - 50.0).abs() < 1e-9);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_process_cgroup_is_found_under_the_cgroup2_mount() {
        let mountinfo = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                         36 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let dir = memory::own_cgroup_dir("0::/kubepods/pod1/ctr\n", mountinfo).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/kubepods/pod1/ctr"));
        assert_eq!(memory::own_cgroup_dir("1:cpu:/x\n", mountinfo), None);
        assert_eq!(
            memory::own_cgroup_dir("0::/\n", "22 1 8:1 / / rw - ext4 x rw\n"),
            None
        );
    }

    #[test]
    fn reading_this_machine_gives_a_percentage() {
        let usage = memory::read().unwrap();
        assert!(usage.limit > 0 && usage.percent() >= 0.0, "{usage:?}");
    }

    #[test]
    fn disk_usage_of_the_root_is_a_percentage() {
        let percent = disk_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&percent), "{percent}");
        assert!(disk_percent(Path::new("/no/such/path")).is_err());
    }
}
