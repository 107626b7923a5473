//! Ring hash consistent hashing (Karger et al.; Envoy's `RING_HASH`).
//!
//! Each endpoint places `VNODES x weight` points on a ring of `u64` hashes
//! of its id; a key belongs to the first point at or after its own hash.
//! Removing an endpoint hands exactly its keys to the points that follow
//! (no other key moves); adding one takes about 1/N of the keys. A lookup
//! is a binary search over the points. When a key's endpoint cannot serve,
//! the following points give a stable second choice, the same endpoint
//! that would inherit the key if the first were removed.

use std::hash::BuildHasher;

use mesh_core::Endpoint;

/// Points per unit of weight: the share of each endpoint stays within a
/// few percent of fair (the deviation goes as 1/sqrt(VNODES)).
const VNODES: u64 = 500;
/// The most points on one ring (16 bytes each).
const MAX_POINTS: u64 = 1 << 20;

pub(crate) fn hash(seed: u64, bytes: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(seed).hash_one(bytes)
}

/// The ring of one endpoint set: (point, index in the set), sorted.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    pub(crate) fn new(endpoints: &[Endpoint]) -> Ring {
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight().get())).sum();
        let scale = if total_weight * VNODES > MAX_POINTS {
            (MAX_POINTS as f64) / ((total_weight * VNODES) as f64)
        } else {
            1.0
        };
        let mut points = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let n = ((VNODES * u64::from(e.weight().get())) as f64 * scale).max(1.0) as u64;
            let id = e.id().as_str().as_bytes();
            for v in 0..n {
                points.push((hash(v, id), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    /// The position of the first point at or after `key_hash`.
    pub(crate) fn position(&self, key_hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.points.partition_point(|(p, _)| *p < key_hash);
        Some(at % self.points.len())
    }

    /// The endpoint index at `position` (wrapping around the ring).
    pub(crate) fn at(&self, position: usize) -> Option<usize> {
        let len = self.points.len();
        (len > 0).then(|| self.points[position % len].1 as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}
