//! Health for tower-mesh services and their upstreams (in progress).
//!
//! This crate will hold the design document's health check manager:
//!
//! - liveness, readiness and startup probes built from checks with
//!   intervals, timeouts, failure and success thresholds, and criticality;
//! - common checks: TCP connect, HTTP GET, memory and disk usage, and any
//!   async closure (a database ping);
//! - a server layer answering `/health/live`, `/health/ready` and
//!   `/health/startup` in front of any axum `Router` or hyper service;
//! - active health checking of upstream endpoints, writing its verdicts into
//!   each endpoint's shared [`mesh_core::EndpointState`] (through
//!   [`mesh_core::EndpointState::set_health`]) so that the balancer skips
//!   unhealthy instances.
//!
//! Until then the endpoint state it will write is already part of
//! `mesh-core`, and the balancer already honours it:
//!
//! ```
//! use mesh_core::{clock, Endpoint, Health};
//! let endpoint = Endpoint::builder("127.0.0.1:8080".parse()?).build();
//! endpoint.state().set_health(Health::Unhealthy);
//! assert!(!endpoint.state().is_available(clock::now()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]
