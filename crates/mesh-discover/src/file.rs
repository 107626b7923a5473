//! [`FileRegistry`]: endpoints listed in a JSON or TOML file, watched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::{BoxError, ConfigError, Endpoint, EndpointId, EndpointSet, ServiceName, Weight};
use serde::Deserialize;

use crate::registry::{BoxFuture, BoxStream, DiscoveryError, Registry};

/// Services and their endpoints from a file, re-read when it changes.
///
/// Build it with [`FileRegistry::open`] to refuse a missing or malformed
/// file at start; [`FileRegistry::new`] accepts any path and reports a
/// bad file when a service is first resolved. A service the file does not
/// list is unknown ([`DiscoveryError::UnknownService`]); one it listed and
/// no longer does has no endpoints.
///
/// The format follows the extension: `.json`, or `.toml` (anything else is
/// read as TOML). An endpoint is an address, or a table with an address and
/// optional `id`, `weight`, `tags`, `metadata` and `zone`:
///
/// ```toml
/// [services]
/// user-service = ["10.0.0.7:8080", "10.0.0.8:8080"]
/// payments = [
///   { address = "10.0.1.1:9000", weight = 3, tags = ["v2"], zone = "eu-west-1a" },
///   { address = "10.0.1.2:9000", metadata = { version = "2.1.0" } },
/// ]
/// ```
///
/// A file that does not parse, or with an entry that is not valid (a bad
/// address, a zero weight, an unknown key), is refused whole with an error
/// naming the file and the entry: the last good set stays in use.
///
/// ```
/// use mesh_discover::{FileRegistry, Registry};
/// use mesh_core::ServiceName;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("mesh-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("services.json");
/// std::fs::write(&path, r#"{ "services": { "users": ["127.0.0.1:8080", { "address": "127.0.0.1:8081", "weight": 2 }] } }"#)?;
/// let registry = FileRegistry::new(&path);
/// let set = registry.resolve(&ServiceName::new("users")?).await?;
/// assert_eq!(set.len(), 2);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FileRegistry {
    path: Arc<PathBuf>,
    interval: Duration,
}

/// What tells a file changed: modification time and length, plus inode
/// and change time where the platform has them (an edit of the same length
/// within the timestamp granularity, or a rename over the file with the old
/// mtime, still changes those).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: (i64, i64),
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let (inode, changed) = {
        use std::os::unix::fs::MetadataExt;
        (m.ino(), (m.ctime(), m.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (inode, changed) = (0, (0, 0));
    Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
        changed,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    #[serde(default)]
    services: BTreeMap<String, Vec<FileEndpoint>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileEndpoint {
    Address(String),
    Full(FullEndpoint),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullEndpoint {
    address: String,
    id: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    zone: Option<String>,
}

impl FileRegistry {
    /// Reads `path`, checking it for changes every 50 ms.
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileRegistry {
            path: Arc::new(path.as_ref().to_path_buf()),
            interval: Duration::from_millis(50),
        }
    }

    /// Reads and parses `path` once, now, so that a missing, unreadable or
    /// malformed file is refused at start rather than at the first
    /// request; then follows it as [`FileRegistry::new`] does.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with the key `file` and a reason that names the
    /// path (`cannot read /etc/mesh/services.json`) or the entry at fault;
    /// the cause (the I/O error, the JSON or TOML parser's error, the
    /// refused address) is kept as its
    /// [`source`](std::error::Error::source) and ends the message.
    ///
    /// ```
    /// use mesh_discover::FileRegistry;
    /// let err = FileRegistry::open("/nonexistent/services.json").unwrap_err();
    /// assert_eq!(err.key(), "file");
    /// assert_eq!(err.reason(), "cannot read /nonexistent/services.json");
    /// // The io::Error is kept, and its text ends the message.
    /// let cause = std::error::Error::source(&err).expect("the cause");
    /// assert!(err.to_string().ends_with(&cause.to_string()), "{err}");
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new("file", format!("cannot read {}", path.display())).caused_by(e)
        })?;
        parse(path, &bytes)
            .map_err(|bad| ConfigError::new("file", bad.reason).caused_by(bad.cause))?;
        Ok(FileRegistry::new(path))
    }

    /// Checks the file for changes every `interval` instead (at least 1 ms).
    pub fn check_every(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    async fn load(&self) -> Result<BTreeMap<ServiceName, EndpointSet>, DiscoveryError> {
        let bytes = tokio::fs::read(&*self.path)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("{}: {e}", self.path.display())))?;
        parse(&self.path, &bytes).map_err(|bad| DiscoveryError::Malformed(bad.to_string()))
    }
}

/// What is wrong with a services file: where, naming the file and the
/// entry, and the error that refused it. At start it becomes a
/// [`ConfigError`] keeping the cause; once running, a registry answer
/// [`DiscoveryError::Malformed`].
#[derive(Debug)]
pub(crate) struct BadFile {
    reason: String,
    cause: BoxError,
}

impl BadFile {
    fn new(reason: String, cause: impl Into<BoxError>) -> Self {
        BadFile {
            reason,
            cause: cause.into(),
        }
    }
}

impl std::fmt::Display for BadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.cause)
    }
}

/// Parses a services file; errors name the file and the entry.
pub(crate) fn parse(
    path: &Path,
    bytes: &[u8],
) -> Result<BTreeMap<ServiceName, EndpointSet>, BadFile> {
    let file = path.display();
    let text =
        std::str::from_utf8(bytes).map_err(|e| BadFile::new(format!("{file} is not UTF-8"), e))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let contents: FileContents = if json {
        serde_json::from_str(text)
            .map_err(|e| BadFile::new(format!("cannot parse {file} as JSON"), e))?
    } else {
        toml::from_str(text).map_err(|e| BadFile::new(format!("cannot parse {file} as TOML"), e))?
    };
    let mut out = BTreeMap::new();
    for (name, entries) in contents.services {
        let service = ServiceName::new(&name)
            .map_err(|e| BadFile::new(format!("{file} lists a bad service name"), e))?;
        let mut endpoints = Vec::with_capacity(entries.len());
        for entry in entries {
            let full = match entry {
                FileEndpoint::Address(address) => FullEndpoint {
                    address,
                    id: None,
                    weight: None,
                    tags: Vec::new(),
                    metadata: BTreeMap::new(),
                    zone: None,
                },
                FileEndpoint::Full(full) => full,
            };
            let address: SocketAddr = full.address.trim().parse().map_err(|e| {
                BadFile::new(
                    format!(
                        "{file}: service {name:?} endpoint {:?} is not ip:port",
                        full.address
                    ),
                    e,
                )
            })?;
            let mut b = Endpoint::builder(address);
            if let Some(id) = full.id {
                b = b.id(EndpointId::new(&id).map_err(|e| {
                    BadFile::new(format!("{file}: service {name:?} has a bad endpoint id"), e)
                })?);
            }
            if let Some(w) = full.weight {
                b = b.weight(Weight::new(w).map_err(|e| {
                    BadFile::new(
                        format!("{file}: service {name:?} endpoint {address} has a bad weight"),
                        e,
                    )
                })?);
            }
            for tag in full.tags {
                b = b.tag(tag);
            }
            for (k, v) in full.metadata {
                b = b.metadata(k, v);
            }
            if let Some(zone) = full.zone {
                b = b.zone(zone);
            }
            endpoints.push(b.build());
        }
        out.insert(service.clone(), EndpointSet::new(service, endpoints));
    }
    Ok(out)
}

impl Registry for FileRegistry {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        Box::pin(async move {
            this.load()
                .await?
                .remove(&service)
                .ok_or(DiscoveryError::UnknownService(service))
        })
    }

    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        // Poll the file's modification time and length; a change (or the
        // first look) re-reads it and sends the service's set. The task
        // ends when the stream is dropped.
        crate::registry::watch_task(move |tx| async move {
            let mut seen: Option<Stamp> = None;
            let mut listed = false;
            // The same failure is reported once, not on every look.
            let mut last_error: Option<String> = None;
            loop {
                let stamp = tokio::fs::metadata(&*this.path).await.map(|m| stamp_of(&m));
                let answer = match stamp {
                    Err(e) => {
                        seen = None;
                        Some(Err(DiscoveryError::Unavailable(format!(
                            "{}: {e}",
                            this.path.display()
                        ))))
                    }
                    Ok(stamp) if Some(stamp) == seen => None,
                    Ok(stamp) => {
                        seen = Some(stamp);
                        // A service the file listed and no longer does has
                        // no endpoints (as Consul answers `[]`), rather than
                        // a failure that would keep the old set forever; one
                        // it never listed is unknown.
                        Some(
                            this.load()
                                .await
                                .and_then(|mut all| match all.remove(&service) {
                                    Some(set) => {
                                        listed = true;
                                        Ok(set)
                                    }
                                    None if listed => Ok(EndpointSet::empty(service.clone())),
                                    None => Err(DiscoveryError::UnknownService(service.clone())),
                                }),
                        )
                    }
                };
                let answer = match answer {
                    Some(Err(e)) if last_error.as_deref() == Some(e.to_string().as_str()) => None,
                    Some(Err(e)) => {
                        last_error = Some(e.to_string());
                        Some(Err(e))
                    }
                    Some(Ok(set)) => {
                        last_error = None;
                        Some(Ok(set))
                    }
                    None => None,
                };
                if let Some(answer) = answer {
                    if tx.send(answer).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(this.interval).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_json_and_toml_and_names_bad_entries() {
        let json = br#"{ "services": { "a": ["127.0.0.1:1", { "address": "127.0.0.1:2", "weight": 3, "tags": ["x"], "zone": "z" }] } }"#;
        let sets = parse(Path::new("s.json"), json).unwrap();
        let a = &sets[&ServiceName::new("a").unwrap()];
        assert_eq!(a.len(), 2);
        assert_eq!(a.endpoints()[1].weight().get(), 3);

        let toml = b"[services]\nb = [\"[::1]:9\"]\n";
        assert_eq!(parse(Path::new("s.toml"), toml).unwrap().len(), 1);

        let err = parse(
            Path::new("s.json"),
            br#"{ "services": { "a": ["127.0.0.1:99999"] } }"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.1:99999") && err.to_string().contains("s.json"),
            "{err}"
        );
        let err = parse(
            Path::new("s.json"),
            br#"{ "services": { "a": [{ "address": "127.0.0.1:1", "weight": 0 }] } }"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
        let err = parse(Path::new("s.json"), br#"{ "servics": {} }"#).unwrap_err();
        assert!(err.to_string().contains("servics"), "{err}");
    }

    proptest! {
        /// Whatever the bytes, parsing answers (a set or an error), never
        /// panics.
        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(Path::new("f.json"), &bytes);
            let _ = parse(Path::new("f.toml"), &bytes);
        }

        /// Near-valid JSON (random addresses, weights and names) parses or
        /// errs, never panics.
        #[test]
        fn near_valid_entries_never_panic(name in "[a-z.~ -]{0,12}", addr in ".{0,24}", weight in any::<u32>()) {
            let doc = serde_json::json!({ "services": { name: [ { "address": addr, "weight": weight } ] } });
            let _ = parse(Path::new("f.json"), doc.to_string().as_bytes());
        }
    }
}
