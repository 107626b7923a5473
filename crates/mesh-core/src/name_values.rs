//! A service's name as the values its requests carry, a `Host` header
//! value and a URI authority, that cost nothing to clone: over `'static`
//! bytes kept once per name ([`crate::static_text`]), found again by name
//! when discovery builds the service's next endpoint set. The names kept
//! are bounded ([`MAX_NAMES`]): past that, values are over bytes of their
//! own.

use bytes::Bytes;
use http::uri::Authority;
use http::HeaderValue;

use crate::name::ServiceName;
use crate::static_text::StaticTexts;

/// The most names given `'static` bytes; about 30 bytes each.
pub(crate) const MAX_NAMES: usize = 4096;

/// The names kept.
static NAMES: StaticTexts = StaticTexts::new(MAX_NAMES);

/// `service`'s name as a `Host` value: over `'static` bytes while fewer
/// than [`MAX_NAMES`] names have them, else over bytes of its own.
/// `None` only for a name no header could carry, which a validated
/// [`ServiceName`] never is.
pub(crate) fn host_value(service: &ServiceName) -> Option<HeaderValue> {
    let name = service.as_str();
    match NAMES.get(name) {
        Some(kept) => HeaderValue::from_maybe_shared(Bytes::from_static(kept.as_bytes())).ok(),
        None => HeaderValue::from_str(name).ok(),
    }
}

/// `service`'s name as a URI authority: over the same `'static` bytes as
/// its `Host` value when the name was kept for one (by discovery, for a
/// service it lists), else over bytes of its own. Never keeps a name: a
/// caller may ask for any. `None` only for a name no authority could
/// carry, which a validated [`ServiceName`] never is.
pub(crate) fn authority(service: &ServiceName) -> Option<Authority> {
    let name = service.as_str();
    match NAMES.find(name) {
        Some(kept) => Authority::from_maybe_shared(Bytes::from_static(kept.as_bytes())).ok(),
        None => Authority::try_from(name).ok(),
    }
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
        let kept = authority(&name).unwrap();
        assert_eq!(kept.as_str(), "host-value-test");
        assert_eq!(
            kept.as_str().as_ptr(),
            a.as_bytes().as_ptr(),
            "the same copy"
        );
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
        let own = authority(&late).unwrap();
        assert_eq!(own.as_str(), "host-value-late", "one of its own");
        let asked = ServiceName::new("host-value-never-listed").unwrap();
        let _ = authority(&asked).unwrap();
        assert_eq!(
            NAMES.find(asked.as_str()),
            None,
            "an authority keeps no name"
        );
        // A name kept before the set filled keeps its copy.
        let again = host_value(&name).unwrap();
        assert_eq!(again.as_bytes().as_ptr(), a.as_bytes().as_ptr());
        let again = authority(&name).unwrap();
        assert_eq!(again.as_str().as_ptr(), a.as_bytes().as_ptr());
    }
}
