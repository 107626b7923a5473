//! Debian's `prometheus` package as the metrics tests use it
//! (`tests/prometheus.rs`, `tests/request_metrics.rs`): finding its
//! programs, and `promtool check metrics`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A program of Debian's `prometheus` package, or a clear failure.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: these tests need Debian's `prometheus` package \
                 (scripts/test.sh installs it: apt-get install prometheus)"
            )
        })
}

/// Fails unless `promtool check metrics` finds nothing wrong in `text`.
pub fn promtool_check(text: &str) {
    let mut check = Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the exposition:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
