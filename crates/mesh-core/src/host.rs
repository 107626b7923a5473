//! [`host_of`]: a URI's host, as `http` reads it, by scanning the
//! authority's bytes.
//!
//! Every call is routed by its URI's host, which discovery reads on every
//! call. `http::Uri::host` finds the same slice with string splitting
//! iterators: about 300 instructions for a short service name, against
//! about 150 for two byte scans (`benches/instructions.rs`, BENCHMARKS.md).

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
    // Userinfo ends at the last '@', as `http` reads it (it accepts several).
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
    // A parsed authority is ASCII, so both ends are char boundaries; were
    // one not, the request would name no host rather than a wrong one.
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
            "http://a@b@c/",
            "http://[x]@h/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::1]:80/",
            "http://u:p@[fe80::1%25eth0]:80/",
            "http://a[::1]/",
            "http://Users.EXAMPLE:80/",
            "users:80",
            "u@:80",
            ":80",
            "/only/a/path",
        ] {
            let uri: http::Uri = uri.parse().expect(uri);
            assert_eq!(host_of(&uri), uri.host(), "{uri}");
        }
    }

    proptest! {
        /// Any authority `http` accepts, with or without a scheme, reads
        /// the same host: every character an authority may hold, in any
        /// order (several '@', brackets anywhere, empty hosts).
        #[test]
        fn agrees_with_http(
            authority in "[a-zA-Z0-9:@\\[\\]%._~!$&'()*+,;=-]{0,16}",
            scheme in any::<bool>(),
        ) {
            let text = match scheme {
                true => format!("http://{authority}/p"),
                false => authority,
            };
            let parsed = text.parse::<http::Uri>();
            prop_assume!(parsed.is_ok());
            let uri = parsed.expect("assumed");
            prop_assert_eq!(host_of(&uri), uri.host());
        }
    }
}
