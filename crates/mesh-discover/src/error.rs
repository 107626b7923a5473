//! Errors of the discovery layer that are not [`mesh_core::MeshError`]s.

use std::time::Duration;

use mesh_core::ServiceName;

/// A call for a service not followed yet was refused: the layer already
/// follows its limit of services and none of them is idle.
///
/// Request hosts choose which services are followed, so their number is
/// capped ([`DiscoverLayer::max_followed`](crate::DiscoverLayer::max_followed));
/// idle ones make room first. Reaching the cap with every service busy
/// means either a client that really calls that many services (raise the
/// cap) or hosts that come from untrusted input (check the caller).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("service {service:?} not followed: this client already follows {limit} services (max_followed) and none has been idle for {idle_timeout:?}; raise max_followed or lower idle_timeout if it calls that many services, else check where request hosts come from")]
pub struct TooManyServices {
    /// The service refused.
    pub service: ServiceName,
    /// The cap on followed services.
    pub limit: usize,
    /// How long a followed service must go uncalled to make room.
    pub idle_timeout: Duration,
}
