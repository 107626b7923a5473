//! The start-up wiring of a [`crate::MeshClient`], one part per module,
//! each built from the configuration by a short constructor: where
//! instances are found ([`discovery`]), the local service's health
//! ([`health`]), the transports calls go out on ([`transport`]) and the
//! per-service stacks that tie them together ([`routes`]), each lent to
//! calls rather than cloned for them ([`lent_stacks`]).
//!
//! A facade is wiring; split this way, each part reads on its own and
//! `MeshClient::start` only puts them in order.

pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod lent_stacks;
pub(crate) mod routes;
pub(crate) mod transport;
