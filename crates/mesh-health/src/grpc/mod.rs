//! gRPC health checking, the standard way (`grpc.health.v1.Health`, gRFC
//! A17): both sides of it.
//!
//! - Serving: [`health_service`] answers `Check` and `Watch` for a tonic
//!   server from a [`HealthCheckManager`](crate::HealthCheckManager)'s
//!   readiness, so load balancers and meshes that speak the protocol see
//!   the same verdict as `/health/ready`. `Watch` is fed by the manager's
//!   change notification ([`HealthCheckManager::subscribe`](crate::HealthCheckManager::subscribe)),
//!   never by polling.
//! - Probing: the upstream checker's
//!   [`UpstreamProbe::Grpc`](crate::UpstreamProbe::Grpc) asks each endpoint
//!   through a [`GrpcProbeClient`], by `Check` at an interval or by
//!   following its `Watch` stream.
//!
//! The messages, the generated client and the server come from
//! `tonic-health`; calls travel over hyper-util's HTTP/2 client (cleartext
//! by default) rather than tonic's transport, which would bring a second
//! connection stack for one small RPC.

mod client;
mod server;

pub use client::GrpcProbeClient;
pub use server::{health_service, ReadinessHealth, ReadinessWatch};
