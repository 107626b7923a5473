//! Requests as `Debug` may show them: a URI's userinfo and query, and
//! header values (`Authorization`, cookies), may hold secrets, and
//! whatever a user prints with `{:?}` can end up in a log.

use std::fmt;

use http::{HeaderMap, Uri};

/// A URI shown without its userinfo or query: scheme, host, port and
/// path (`http://users:8080/api/users`, the query as `?***`). A URI whose
/// userinfo may have been split into its path (see
/// [`ShownUri::may_split_userinfo`]) is shown as its scheme alone.
///
/// ```
/// use mesh_core::ShownUri;
///
/// let uri = "http://admin:s3cret@users:8080/api?token=t0k3n".parse().unwrap();
/// assert_eq!(ShownUri(&uri).to_string(), "http://users:8080/api?***");
/// let split = "http://admin:s3/cret@users:8080/api".parse().unwrap();
/// assert_eq!(ShownUri(&split).to_string(), "http://***");
/// ```
#[derive(Clone, Copy)]
pub struct ShownUri<'a>(
    /// The URI shown.
    pub &'a Uri,
);

impl ShownUri<'_> {
    /// Whether part of `uri`'s userinfo may lie outside its authority: a
    /// password holding `/`, `?` or `#` ends the authority early (`http`
    /// then reads `admin:pa` as host and port, the rest as the path), so a
    /// port that is no number, or an `@` past the authority, is taken as
    /// a credential split apart. It errs towards hiding: a path with an
    /// `@` of its own (`/users/@me`) is hidden too. A userinfo cut by `#`
    /// leaves no trace in a parsed URI (`http` drops the fragment): where
    /// URLs are configured, `#` is better refused.
    pub fn may_split_userinfo(uri: &Uri) -> bool {
        let port_no_number = uri.authority().is_some_and(|authority| {
            let text = authority.as_str();
            let host_port = text.rsplit_once('@').map_or(text, |(_, after)| after);
            // An IPv6 host's colons are inside its brackets.
            let after_host = host_port
                .rsplit_once(']')
                .map_or(host_port, |(_, after)| after);
            after_host.contains(':') && uri.port_u16().is_none()
        });
        port_no_number || uri.path().contains('@') || uri.query().is_some_and(|q| q.contains('@'))
    }
}

impl fmt::Display for ShownUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if ShownUri::may_split_userinfo(uri) {
            return f.write_str("***");
        }
        if let Some(host) = uri.host() {
            f.write_str(host)?;
        }
        if let Some(port) = uri.port_u16() {
            write!(f, ":{port}")?;
        }
        f.write_str(uri.path())?;
        if uri.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShownUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Headers shown by name only, never by value.
///
/// ```
/// use mesh_core::HeaderNames;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "Bearer s3cret".parse().unwrap());
/// assert_eq!(format!("{:?}", HeaderNames(&headers)), r#"["authorization"]"#);
/// ```
#[derive(Clone, Copy)]
pub struct HeaderNames<'a>(
    /// The headers shown.
    pub &'a HeaderMap,
);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}
