//! [`host_of`]: a URI's host, as `http` reads it, in one pass over the
//! authority.
//!
//! Every call is routed by its URI's host, so the host is read once per
//! call by discovery and by each layer that keys state by service.
//! `http::Uri::host` splits the authority with string iterators (about
//! 300 instructions for a short name); the same slice is a byte scan.

/// The host of `uri`'s authority, exactly as [`http::Uri::host`] returns
/// it: without userinfo and port, an IPv6 literal with its brackets.
///
/// ```
/// use mesh_core::ext::host_of;
///
/// let uri: http::Uri = "http://user:pw@users:8080/api".parse().unwrap();
/// assert_eq!(host_of(&uri), Some("users"));
/// let uri: http::Uri = "http://[::1]:8080/".parse().unwrap();
/// assert_eq!(host_of(&uri), Some("[::1]"));
/// assert_eq!(host_of(&"/relative".parse().unwrap()), None);
/// ```
pub fn host_of(uri: &http::Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let bytes = authority.as_bytes();
    // Userinfo ends at the last '@' (a parsed authority has at most one).
    let start = bytes
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |at| at + 1);
    let rest = &bytes[start..];
    let end = match rest.first() {
        // An IPv6 literal keeps its brackets; its colons are not a port's.
        Some(b'[') => rest
            .iter()
            .position(|&b| b == b']')
            .map_or(rest.len(), |i| i + 1),
        _ => rest.iter().position(|&b| b == b':').unwrap_or(rest.len()),
    };
    // Both ends are at ASCII bytes (or the ends of the text): char
    // boundaries.
    authority.get(start..start + end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_every_form_of_authority_as_http_does() {
        for uri in [
            "http://users/",
            "http://users:8080/a?b",
            "http://u@users/",
            "http://u:p@users:1/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://u:p@[fe80::1%25eth0]:80/",
            "users:80",
            "/only/a/path",
        ] {
            let uri: http::Uri = uri.parse().expect("valid");
            assert_eq!(host_of(&uri), uri.host(), "{uri}");
        }
    }

    proptest! {
        /// Any authority `http` accepts reads the same host.
        #[test]
        fn agrees_with_http(
            user in proptest::option::of("[a-z0-9:%._~-]{0,8}"),
            host in prop_oneof![
                "[a-z0-9._~-]{1,12}",
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
                "\\[[0-9a-f:]{2,12}\\]",
            ],
            port in proptest::option::of(0u32..70_000),
        ) {
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            if let Ok(uri) = format!("http://{user}{host}{port}/p").parse::<http::Uri>() {
                prop_assert_eq!(host_of(&uri), uri.host());
            }
        }
    }
}
