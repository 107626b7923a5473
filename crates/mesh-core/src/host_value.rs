//! A service's name as a `Host` header value that costs nothing to clone.
//!
//! The balancer gives every request addressed to a service by its name
//! that name as its `Host` header. A value made per request is an
//! allocation and a copy; one value shared by every request is a
//! reference count that every core writes, twice a request, which on a
//! busy multi-core client costs more than the copy (`benches/contention.rs`).
//! A value over `'static` bytes has neither: cloning it copies a pointer.
//! So each name gets its bytes leaked once, and is found again by name
//! when discovery builds the service's next endpoint set. The names kept
//! are bounded ([`MAX_NAMES`]): past that, sets get a shared value.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use http::HeaderValue;

use crate::name::ServiceName;

/// The most names given `'static` bytes; about 30 bytes each.
pub(crate) const MAX_NAMES: usize = 4096;

/// `service`'s name as a `Host` value: over `'static` bytes while fewer
/// than [`MAX_NAMES`] names have them, else over bytes of its own.
/// `None` only for a name no header could carry, which a validated
/// [`ServiceName`] never is.
pub(crate) fn host_value(service: &ServiceName) -> Option<HeaderValue> {
    let name = service.as_str();
    // Validated here, so that the `'static` value below cannot fail.
    let own = HeaderValue::from_str(name).ok()?;
    Some(match interned(name) {
        Some(bytes) => HeaderValue::from_static(bytes),
        None => own,
    })
}

/// `name`'s `'static` copy: the one made before, else a new one while
/// the set of them has room.
fn interned(name: &str) -> Option<&'static str> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Mutex::default);
    // A poisoned lock guards a set that is only ever added to, whole.
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(kept) = names.get(name) {
        return Some(kept);
    }
    if names.len() >= MAX_NAMES {
        return None;
    }
    let kept: &'static str = Box::leak(Box::from(name));
    names.insert(kept);
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_static_copy_per_name_and_a_bounded_number_of_names() {
        let name = ServiceName::new("host-value-test").unwrap();
        let a = host_value(&name).unwrap();
        let b = host_value(&name).unwrap();
        assert_eq!(a, "host-value-test");
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr(), "one copy");
        // Fill the set: names past the bound still get a value of their own.
        for i in 0..MAX_NAMES {
            let _ = host_value(&ServiceName::new(&format!("fill-{i}")).unwrap());
        }
        let late = ServiceName::new("host-value-late").unwrap();
        let (x, y) = (host_value(&late).unwrap(), host_value(&late).unwrap());
        assert_eq!(x, "host-value-late");
        assert_ne!(
            x.as_bytes().as_ptr(),
            y.as_bytes().as_ptr(),
            "made each time"
        );
        // A name kept before the set filled keeps its copy.
        let again = host_value(&name).unwrap();
        assert_eq!(again.as_bytes().as_ptr(), a.as_bytes().as_ptr());
    }
}
