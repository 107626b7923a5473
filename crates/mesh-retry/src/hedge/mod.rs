//! Hedging: racing copies of one call against slow instances (gRFC A6's
//! `hedgingPolicy`).
//!
//! A retry waits for a failure; a hedge does not wait for one. When a call
//! has gone [`Hedging::delay`] without an answer, another copy goes to
//! another instance, and the first real answer wins. It trims the tail
//! latency a slow instance adds, at the price of extra load, which is why
//! every copy after the first is paid from the same
//! [`RetryBudget`](crate::RetryBudget) as retries: when instances slow
//! down together, the budget runs dry and the copies stop.
//!
//! The parts: [`config`] (what a configuration says), [`race`] (the
//! bookkeeping of one call, with no tower in it) and [`future`] (the
//! future that sends, races and cancels the copies). The
//! [`RetryLayer`](crate::RetryLayer) takes this path for a call when its
//! configuration or the call's [`CallPolicy`](crate::CallPolicy) hedges,
//! and the request may be sent more than once; otherwise the retry path,
//! unchanged.

pub(crate) mod config;
pub(crate) mod future;
pub(crate) mod race;

pub use config::{Hedging, HedgingSettings};
pub use future::HedgeFuture;
