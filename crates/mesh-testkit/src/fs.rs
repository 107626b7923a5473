//! Scratch directories and whole-file writes, for tests that hand files
//! (configurations, certificates, registries) to the code under test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system's temporary directory, removed with
/// its contents when dropped.
///
/// Its name holds a tag, the process ID and a counter, so tests running in
/// parallel (in one process or several) never share one.
///
/// ```
/// use mesh_testkit::fs::TempDir;
///
/// let dir = TempDir::new("doc");
/// let file = dir.path("services.json");
/// mesh_testkit::fs::write_atomically(&file, "{}");
/// assert_eq!(std::fs::read_to_string(&file).ok().as_deref(), Some("{}"));
/// ```
#[derive(Debug)]
pub struct TempDir(
    /// Where the directory is.
    pub PathBuf,
);

// === impl TempDir ===

impl TempDir {
    /// Creates an empty directory named after `tag`.
    ///
    /// # Panics
    ///
    /// When the directory cannot be created: the system's temporary
    /// directory (`TMPDIR`) must be writable.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-{tag}-{}-{n}", std::process::id()));
        // A directory left by an earlier run with the same process ID.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(error) = std::fs::create_dir_all(&dir) {
            panic!(
                "cannot create {}: {error}; set TMPDIR to a writable directory",
                dir.display()
            );
        }
        TempDir(dir)
    }

    /// The path of `name` in this directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Leaves the directory in place after all and returns its path: for
    /// files the code under test may read for as long as the test runs.
    pub fn keep(self) -> PathBuf {
        let dir = std::mem::ManuallyDrop::new(self);
        dir.0.clone()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `contents` to a file beside `path`, then renames it over `path`,
/// as configuration tools do: a reader sees the old file or the new one,
/// never half of one.
///
/// # Panics
///
/// When the file cannot be written or renamed: its directory must exist
/// and be writable.
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    if let Err(error) = std::fs::write(&tmp, contents) {
        panic!("cannot write {}: {error}", tmp.display());
    }
    if let Err(error) = std::fs::rename(&tmp, path) {
        panic!(
            "cannot rename {} to {}: {error}",
            tmp.display(),
            path.display()
        );
    }
}
