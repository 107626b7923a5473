//! Requests as `Debug` may show them: a URI's userinfo and query, and
//! header values (`Authorization`, cookies), may hold secrets, and
//! whatever a user prints with `{:?}` can end up in a log.

use std::fmt;

use http::{HeaderMap, Uri};

/// A URI shown without its userinfo or query: scheme, host, port and
/// path (`http://users:8080/api/users`, the query as `?***`).
///
/// ```
/// use mesh_core::ShownUri;
///
/// let uri = "http://admin:s3cret@users:8080/api?token=t0k3n".parse().unwrap();
/// assert_eq!(ShownUri(&uri).to_string(), "http://users:8080/api?***");
/// ```
#[derive(Clone, Copy)]
pub struct ShownUri<'a>(
    /// The URI shown.
    pub &'a Uri,
);

impl fmt::Display for ShownUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
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
