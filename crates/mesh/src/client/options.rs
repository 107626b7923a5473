//! [`CallOptions`]: what a caller may set on one call.

use std::time::Duration;

use http::HeaderMap;

/// Per-call options (the design document's `{ clientId }` and friends).
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Headers to send.
    pub headers: HeaderMap,
    /// The call's deadline: the whole call, retries included, ends within
    /// this (or sooner, by the route's `[retry] deadline`), failing with
    /// `MeshError::Timeout` when it runs out.
    pub timeout: Option<Duration>,
    /// A client key for session affinity and consistent hashing: used by
    /// the balancer when its `sticky` sources include `"extension"` (or the
    /// strategy is `consistent_hash`), and to keep a client on one canary
    /// subset.
    pub affinity_key: Option<String>,
}

// === impl CallOptions ===

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
