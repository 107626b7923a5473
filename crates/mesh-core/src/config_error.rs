//! [`ConfigError`]: a configuration refused when it is built, before any
//! request is sent.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{root_cause, BoxError};

/// A configuration value refused when a layer, registry or client is built:
/// the key at fault (`retry.max_retries`, `discovery.file`,
/// `services.users.breaker.failure_rate_threshold`) and why, in words that
/// say what to fix.
///
/// Every crate's `validate()` and builder returns this one type, so that a
/// configuration read as part of a larger one can be relabelled with
/// [`ConfigError::within`] and a user always meets the same shape. A
/// failure with a cause of its own (a file that cannot be read, a
/// certificate that does not parse) keeps it as the
/// [`source`](std::error::Error::source), and the message ends with its
/// root cause:
///
/// ```
/// use mesh_core::ConfigError;
///
/// let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
/// let err = ConfigError::new("discovery.file", "cannot read /etc/mesh/services.json")
///     .caused_by(missing);
/// assert_eq!(
///     err.to_string(),
///     "invalid configuration: discovery.file: cannot read /etc/mesh/services.json: \
///      No such file or directory"
/// );
/// assert!(std::error::Error::source(&err).is_some());
/// assert_eq!(err.within("services.users.").key(), "services.users.discovery.file");
/// ```
#[derive(Debug)]
pub struct ConfigError {
    file: Option<PathBuf>,
    key: String,
    reason: String,
    source: Option<BoxError>,
}

// === impl ConfigError ===

impl ConfigError {
    /// The value at `key` is refused, because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            reason: reason.to_string(),
            source: None,
        }
    }

    /// This error, caused by `source` (kept, and its root cause said at
    /// the end of the message).
    pub fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// This error with `prefix` before its key, for a configuration read as
    /// part of a larger one (`retry.backoff` becomes
    /// `services.users.retry.backoff`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.key.insert_str(0, prefix);
        self
    }

    /// This error with its key's leading `from` replaced by `to`, for a
    /// section a larger file names differently (`health.upstream` is
    /// `[upstream_health]` in the facade's file).
    pub fn renamed(mut self, from: &str, to: &str) -> Self {
        if let Some(rest) = self.key.strip_prefix(from) {
            self.key = format!("{to}{rest}");
        }
        self
    }

    /// This error, about a key of the file at `path` (said before the key).
    pub fn in_file(mut self, path: &Path) -> Self {
        self.file = Some(path.to_owned());
        self
    }

    /// The file the key is in, when the configuration was read from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The key (or file, or address) at fault.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why it was refused, without the cause's text.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "{}: {}", self.key, self.reason)?;
        let Some(source) = &self.source else {
            return Ok(());
        };
        // Said once: a reason that already ends with the cause's words
        // (a wrapped error's own message) does not repeat them.
        let root = root_cause(source.as_ref());
        match self.reason.ends_with(&root) {
            true => Ok(()),
            false => write!(f, ": {root}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_cause_the_message_is_key_and_reason() {
        let err = ConfigError::new("retry.backoff", "\"quadratic\" is not a backoff");
        assert_eq!(
            err.to_string(),
            "invalid configuration: retry.backoff: \"quadratic\" is not a backoff"
        );
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn a_reason_that_already_says_the_cause_does_not_repeat_it() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let err = ConfigError::new("tls", format!("cannot read /x/tls.crt: {io}")).caused_by(io);
        assert_eq!(
            err.to_string(),
            "invalid configuration: tls: cannot read /x/tls.crt: No such file or directory"
        );
    }

    #[test]
    fn renamed_changes_only_a_leading_match() {
        let err = ConfigError::new("health.upstream.interval", "zero");
        assert_eq!(
            err.renamed("health.upstream", "upstream_health").key(),
            "upstream_health.interval"
        );
        let other = ConfigError::new("tls.ca", "x").renamed("health.upstream", "u");
        assert_eq!(other.key(), "tls.ca");
    }
}
