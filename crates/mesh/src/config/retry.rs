//! Retries in the file: mesh-retry's own [`RetrySettings`] (the `[retry]`
//! keys), and the defaults derived from the per-attempt timeout
//! ([`deadline_for`], [`retry_after_for`]).

use std::time::Duration;

pub use mesh_retry::RetrySettings;

/// The longest a whole call may take when its attempts may take `attempt`
/// each, retries and their waits included: two attempts' worth, so one
/// slow attempt still leaves room for a retry elsewhere, and no call waits
/// for ever.
pub fn deadline_for(attempt: Duration) -> Duration {
    RetrySettings::deadline_for(attempt)
}

/// The longest `Retry-After` honoured by default when attempts may take
/// `attempt`: mesh-retry's default (1 s), or less when attempts are
/// shorter. A server asking for longer gets its answer back at once rather
/// than holding the call.
pub fn retry_after_for(attempt: Duration) -> Duration {
    RetrySettings::max_retry_after_for(attempt)
}
