//! Mutual TLS for tower-mesh (in progress).
//!
//! This crate will hold the design document's security layer, over
//! tokio-rustls:
//!
//! - a client connector for hyper-util's `Client` that presents a client
//!   certificate, trusts a custom CA and verifies the peer by DNS name, IP
//!   or SPIFFE workload identity, with ALPN for h2 and http/1.1;
//! - a server acceptor for hyper and axum that requires client certificates,
//!   authorizes peer identities and hands them to handlers;
//! - certificate rotation from watched PEM files without a restart, with
//!   errors that name their cause and [`mesh_core::MeshEvent`]s for
//!   rotations and rejected handshakes.
//!
//! The connector will slot in under the stack exactly where the plain
//! `HttpConnector` sits today:
//!
//! ```
//! // Today: plain HTTP under the mesh layers.
//! let connector = hyper_util::client::legacy::connect::HttpConnector::new();
//! # let _ = connector;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]
