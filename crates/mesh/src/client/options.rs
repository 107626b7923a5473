//! [`CallOptions`]: what a caller may set on one call.

use std::time::Duration;

use http::HeaderMap;

/// Per-call options (the design document's `{ clientId }` and friends).
/// `Debug` shows the headers by name only: their values may be secrets
/// (`Authorization`).
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Headers to send.
    pub headers: HeaderMap,
    /// The call's deadline: the whole call, retries included, has its
    /// response's headers within this (or sooner, by the route's `[retry]
    /// deadline`), failing with `MeshError::Timeout` when it runs out. The
    /// body is then read at the caller's pace: bound that read with
    /// `tokio::time::timeout` where a server may stall mid-body.
    pub timeout: Option<Duration>,
    /// A client key for session affinity and consistent hashing: used by
    /// the balancer when its `sticky` sources include `"extension"` (or the
    /// strategy is `consistent_hash`), and to keep a client on one canary
    /// subset.
    pub affinity_key: Option<String>,
}

// === impl CallOptions ===

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("headers", &mesh_core::HeaderNames(&self.headers))
            .field("timeout", &self.timeout)
            .field("affinity_key", &self.affinity_key)
            .finish()
    }
}

impl CallOptions {
    /// Options with an affinity key (the design document's `clientId`).
    pub fn client_id(key: impl Into<String>) -> Self {
        CallOptions {
            affinity_key: Some(key.into()),
            ..CallOptions::default()
        }
    }

    /// With a timeout for the whole call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With a header.
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_show() {
        let options = CallOptions::client_id("client-7").header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer t0k3n"),
        );
        let shown = format!("{options:?}");
        assert!(
            shown.contains("authorization") && shown.contains("client-7"),
            "{shown}"
        );
        assert!(!shown.contains("t0k3n"), "{shown}");
    }
}
