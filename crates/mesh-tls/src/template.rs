//! Peer identity templates ([`crate::TlsConfig::peer_identity`]): the SPIFFE
//! ID each destination service must present, written once for the whole
//! mesh with `{service}` where the name of the service called goes.
//!
//! A service name may come from request data (a host), so it is admitted
//! only as one whole path segment: a name can never add segments, climb
//! with `..`, or reach the trust domain.

use mesh_core::ConfigError;

use crate::identity::SpiffeId;

/// The configuration key templates live under, named in every error.
const KEY: &str = "tls.peer_identity";

/// Where the name of the service called goes.
const PLACEHOLDER: &str = "{service}";

/// What the placeholder is replaced with when a template is checked.
const SAMPLE_SERVICE: &str = "sample-service";

/// Checks a template: a SPIFFE ID with `{service}` in its path and no
/// other placeholder.
pub(crate) fn check(template: &str) -> Result<(), ConfigError> {
    let Some(rest) = template.strip_prefix("spiffe://") else {
        return Err(invalid(format!("{template:?} must start with spiffe://")));
    };
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    if !path.contains(PLACEHOLDER) {
        return Err(invalid(format!(
            "{template:?} must contain {PLACEHOLDER} in its path, where the name of the service \
             called goes (spiffe://cluster.local/ns/default/sa/{PLACEHOLDER})"
        )));
    }
    let sample = template.replace(PLACEHOLDER, SAMPLE_SERVICE);
    if sample.contains(['{', '}']) {
        return Err(invalid(format!(
            "{template:?} holds a placeholder other than {PLACEHOLDER}"
        )));
    }
    sample.parse::<SpiffeId>().map(|_| ()).map_err(|e| {
        invalid(format!(
            "{template:?} does not make a SPIFFE ID: {}",
            e.reason()
        ))
    })
}

/// The identity `service` must present under `template`.
pub(crate) fn expand(template: &str, service: &str) -> Result<SpiffeId, ConfigError> {
    check(template)?;
    let one_segment = !service.is_empty()
        && service != "."
        && service != ".."
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !one_segment {
        return Err(invalid(format!(
            "the service name {service:?} cannot be part of a SPIFFE ID: it must be non-empty \
             and hold only ASCII letters, digits, '.', '-' and '_'"
        )));
    }
    template
        .replace(PLACEHOLDER, service)
        .parse()
        .map_err(|e: crate::InvalidSpiffeId| {
            invalid(format!("for the service {service:?}: {}", e.reason()))
        })
}

/// A template (or a service name expanded in it) refused, under [`KEY`].
/// The reason of a refused SPIFFE ID is taken without its own label, so
/// the message names one key, once.
fn invalid(reason: String) -> ConfigError {
    ConfigError::new(KEY, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_per_service() {
        for (template, want) in [
            (
                "spiffe://cluster.local/ns/default/sa/{service}",
                "spiffe://cluster.local/ns/default/sa/users",
            ),
            (
                "spiffe://dc1.consul/ns/default/dc/dc1/svc/{service}",
                "spiffe://dc1.consul/ns/default/dc/dc1/svc/users",
            ),
            (
                "spiffe://cluster.local/ns/prod/sa/{service}-sa",
                "spiffe://cluster.local/ns/prod/sa/users-sa",
            ),
        ] {
            check(template).unwrap();
            assert_eq!(expand(template, "users").unwrap().as_str(), want);
        }
    }

    #[test]
    fn a_service_name_cannot_reach_outside_its_path_segment() {
        let template = "spiffe://cluster.local/ns/default/sa/{service}";
        for bad in [
            "",
            ".",
            "..",
            "users/../admin",
            "users/x",
            "a b",
            "users?x",
            "usérs",
        ] {
            let err = expand(template, bad).unwrap_err();
            assert_eq!(err.key(), "tls.peer_identity", "{bad:?}: {err}");
            assert!(err.reason().contains(&format!("{bad:?}")), "{bad:?}: {err}");
            assert!(
                err.to_string()
                    .starts_with("invalid configuration: tls.peer_identity: "),
                "{bad:?}: {err}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a service is called (request hosts included), the ID
        /// expanded for it stays in the template's trust domain and fills
        /// exactly the placeholder's path segment, or is refused.
        #[test]
        fn a_service_name_fills_exactly_one_segment(service in "\\PC{0,12}|[a-z./-]{0,12}") {
            let template = "spiffe://cluster.local/ns/default/sa/{service}";
            if let Ok(id) = expand(template, &service) {
                proptest::prop_assert_eq!(id.trust_domain(), "cluster.local");
                let segments: Vec<&str> = id.path().split('/').collect();
                proptest::prop_assert_eq!(segments, vec!["", "ns", "default", "sa", service.as_str()]);
            }
        }
    }
}
