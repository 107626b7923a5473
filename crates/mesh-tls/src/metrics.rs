//! Handshake and rotation counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::HandshakeRejection;

/// Counters shared by the connectors and acceptors built from one
/// [`crate::Credentials`]; cheap to clone, updated without locks.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    handshakes: AtomicU64,
    failures: [AtomicU64; HandshakeRejection::LABELS.len()],
    rotations: AtomicU64,
    rotations_rejected: AtomicU64,
    not_after_unix: AtomicI64,
}

/// A point-in-time copy of [`TlsMetrics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMetricsSnapshot {
    /// Handshakes completed, both sides.
    pub handshakes: u64,
    /// Failed handshakes by reason ([`HandshakeRejection::label`]); every
    /// label is present, zeros included.
    pub failures: Vec<(&'static str, u64)>,
    /// Rotations to new material.
    pub rotations: u64,
    /// Changed files refused.
    pub rotations_rejected: u64,
    /// When the certificate in use expires, in seconds since the Unix
    /// epoch.
    pub certificate_not_after_unix: i64,
}

impl TlsMetricsSnapshot {
    /// Failed handshakes for one reason label.
    pub fn failures_for(&self, label: &str) -> u64 {
        self.failures
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }
}

impl TlsMetrics {
    /// A copy of the counters now.
    pub fn snapshot(&self) -> TlsMetricsSnapshot {
        let c = &self.0;
        TlsMetricsSnapshot {
            handshakes: c.handshakes.load(Ordering::Relaxed),
            failures: HandshakeRejection::LABELS
                .iter()
                .zip(&c.failures)
                .map(|(label, n)| (*label, n.load(Ordering::Relaxed)))
                .collect(),
            rotations: c.rotations.load(Ordering::Relaxed),
            rotations_rejected: c.rotations_rejected.load(Ordering::Relaxed),
            certificate_not_after_unix: c.not_after_unix.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn handshake(&self) {
        self.0.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self, reason: &HandshakeRejection) {
        self.0.failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rotated(&self, not_after_unix: i64) {
        self.0.rotations.fetch_add(1, Ordering::Relaxed);
        self.set_not_after(not_after_unix);
    }

    pub(crate) fn rotation_rejected(&self) {
        self.0.rotations_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_not_after(&self, not_after_unix: i64) {
        self.0
            .not_after_unix
            .store(not_after_unix, Ordering::Relaxed);
    }
}
