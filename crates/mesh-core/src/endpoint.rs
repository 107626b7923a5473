//! [`Endpoint`]: one instance of a service, and its [`Weight`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::Authority;

use crate::name::{EndpointId, InvalidName};
use crate::state::EndpointState;
use crate::static_text::StaticTexts;

/// The relative share of traffic an endpoint should receive; never zero.
///
/// Weighted strategies honour it; round robin, the only strategy so far,
/// treats every endpoint alike.
///
/// An endpoint that should receive nothing is removed from the set or marked
/// unhealthy, not given weight zero: that keeps "weight" meaning one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The default weight, 1.
    pub const ONE: Weight = Weight(NonZeroU32::MIN);

    /// A weight; zero is refused.
    pub fn new(weight: u32) -> Result<Weight, InvalidName> {
        NonZeroU32::new(weight)
            .map(Weight)
            .ok_or_else(|| InvalidName {
                what: "weight",
                name: weight.to_string(),
                reason: "a weight must be at least 1",
            })
    }

    /// The weight as an integer.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::ONE
    }
}

/// One instance of a service: where it is, how it is described, and its
/// live state.
///
/// The description (address, weight, tags, metadata, zone) is immutable;
/// the [`EndpointState`] is shared by `Arc` with every layer that reads or
/// writes it. Cloning an `Endpoint` is two reference-count increments.
///
/// ```
/// use mesh_core::{Endpoint, Weight};
/// let ep = Endpoint::builder("10.0.0.7:8080".parse()?)
///     .weight(Weight::new(2)?)
///     .tag("v2")
///     .metadata("version", "2.1.0")
///     .zone("eu-west-1a")
///     .build();
/// assert_eq!(ep.id().as_str(), "10.0.0.7:8080");
/// assert!(ep.has_tag("v2"));
/// assert_eq!(ep.metadata().get("version").map(String::as_str), Some("2.1.0"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Endpoint {
    info: Arc<EndpointInfo>,
    state: Arc<EndpointState>,
}

#[derive(PartialEq, Eq)]
struct EndpointInfo {
    id: EndpointId,
    address: SocketAddr,
    /// The address as a URI authority, built once so that rewriting a
    /// request's URI to this endpoint allocates nothing.
    authority: Authority,
    weight: Weight,
    tags: Box<[String]>,
    metadata: BTreeMap<String, String>,
    zone: Option<String>,
}

// === impl Endpoint ===

impl Endpoint {
    /// Starts describing an endpoint at `address`; its id defaults to the
    /// address.
    pub fn builder(address: SocketAddr) -> EndpointBuilder {
        EndpointBuilder {
            id: None,
            address,
            weight: Weight::ONE,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            zone: None,
        }
    }

    /// The endpoint's identity, stable across discovery updates.
    pub fn id(&self) -> &EndpointId {
        &self.info.id
    }

    /// Where to connect.
    pub fn address(&self) -> SocketAddr {
        self.info.address
    }

    /// The address as a URI authority (`10.0.0.7:8080`, `[::1]:8080`).
    /// For the first 16,384 addresses a process sees, it is over
    /// `'static` text kept once per address, so a clone copies a pointer
    /// and writes no reference count.
    pub fn authority(&self) -> &Authority {
        &self.info.authority
    }

    /// Its relative share of traffic.
    pub fn weight(&self) -> Weight {
        self.info.weight
    }

    /// Its tags, such as `v2` or `canary`.
    pub fn tags(&self) -> &[String] {
        &self.info.tags
    }

    /// Whether it carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.info.tags.iter().any(|t| t == tag)
    }

    /// Its metadata (key-value pairs from the registry).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.info.metadata
    }

    /// Its zone or locality, if the registry knows it.
    pub fn zone(&self) -> Option<&str> {
        self.info.zone.as_deref()
    }

    /// Its live state, shared with every layer.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The same endpoint description carrying `state` instead of its own;
    /// used to keep live state across discovery updates.
    pub fn with_state(&self, state: Arc<EndpointState>) -> Endpoint {
        Endpoint {
            info: Arc::clone(&self.info),
            state,
        }
    }

    /// Whether two endpoints have the same description (live state aside).
    pub fn same_description(&self, other: &Endpoint) -> bool {
        Arc::ptr_eq(&self.info, &other.info) || self.info == other.info
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.info.id)
            .field("address", &self.info.address)
            .field("weight", &self.info.weight.get())
            .field("tags", &self.info.tags)
            .field("metadata", &self.info.metadata)
            .field("zone", &self.info.zone)
            .field("state", &self.state)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.info.id.as_str() == self.info.address.to_string() {
            write!(f, "{}", self.info.address)
        } else {
            write!(f, "{} ({})", self.info.id, self.info.address)
        }
    }
}

/// Builds an [`Endpoint`]; see [`Endpoint::builder`].
#[derive(Debug)]
pub struct EndpointBuilder {
    id: Option<EndpointId>,
    address: SocketAddr,
    weight: Weight,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    zone: Option<String>,
}

// === impl EndpointBuilder ===

impl EndpointBuilder {
    /// Sets the id (defaults to the address).
    pub fn id(mut self, id: EndpointId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the weight (defaults to 1).
    pub fn weight(mut self, weight: Weight) -> Self {
        self.weight = weight;
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Finishes the endpoint, with fresh live state.
    pub fn build(self) -> Endpoint {
        Endpoint {
            info: Arc::new(EndpointInfo {
                id: self
                    .id
                    .unwrap_or_else(|| EndpointId::from_addr(self.address)),
                address: self.address,
                authority: authority_of(self.address),
                weight: self.weight,
                tags: self.tags.into_boxed_slice(),
                metadata: self.metadata,
                zone: self.zone,
            }),
            state: Arc::new(EndpointState::new()),
        }
    }
}

/// The most endpoint addresses whose authority is kept `'static`; about
/// 40 bytes each.
pub(crate) const MAX_AUTHORITIES: usize = 16_384;

/// The addresses kept.
static AUTHORITIES: StaticTexts = StaticTexts::new(MAX_AUTHORITIES);

/// `address` as an authority: over `'static` bytes while fewer than
/// [`MAX_AUTHORITIES`] addresses have them, so that the copy the balancer
/// puts in every request's URI writes no count every core shares; else
/// over bytes of its own.
fn authority_of(address: SocketAddr) -> Authority {
    let text = address.to_string();
    let kept = AUTHORITIES
        .get(&text)
        .map(|t| Bytes::from_static(t.as_bytes()));
    // A socket address always prints as a valid authority ("ip:port" or
    // "[ipv6]:port"); the fallback only keeps this free of panics.
    kept.and_then(|bytes| Authority::from_maybe_shared(bytes).ok())
        .or_else(|| Authority::try_from(text).ok())
        .unwrap_or_else(|| Authority::from_static("0.0.0.0:0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_at_one_address_share_one_static_authority() {
        let a = Endpoint::builder("127.0.0.9:7".parse().unwrap()).build();
        let b = Endpoint::builder("127.0.0.9:7".parse().unwrap()).build();
        assert_eq!(a.authority().as_str(), "127.0.0.9:7");
        let (x, y) = (a.authority().as_str(), b.authority().as_str());
        assert_eq!(x.as_ptr(), y.as_ptr(), "one copy of the text");
    }

    #[test]
    fn zero_weight_is_refused() {
        assert!(Weight::new(0).is_err());
        assert_eq!(Weight::new(5).unwrap().get(), 5);
    }

    #[test]
    fn with_state_shares_the_given_state() {
        let a = Endpoint::builder("127.0.0.1:1".parse().unwrap()).build();
        let b = Endpoint::builder("127.0.0.1:1".parse().unwrap()).build();
        assert!(a.same_description(&b));
        assert_eq!(a.authority().as_str(), "127.0.0.1:1");
        let v6 = Endpoint::builder("[::1]:80".parse().unwrap()).build();
        assert_eq!(v6.authority().as_str(), "[::1]:80");
        assert!(!Arc::ptr_eq(a.state(), b.state()));
        let c = b.with_state(Arc::clone(a.state()));
        assert!(Arc::ptr_eq(a.state(), c.state()));
    }
}
