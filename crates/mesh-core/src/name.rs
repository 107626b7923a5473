//! Validated names: [`ServiceName`] and [`EndpointId`].

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {name:?}: {reason}")]
pub struct InvalidName {
    pub(crate) what: &'static str,
    pub(crate) name: String,
    pub(crate) reason: &'static str,
}

/// The logical name of a service, such as `user-service`.
///
/// A request for `http://user-service/api/users` targets the service
/// `user-service`: the URI authority's host is the service name. Names are
/// DNS-like (ASCII letters, digits, `-`, `_` and `.`, at most 253 bytes) and
/// stored in lower case, because hosts compare case-insensitively. Cloning is
/// a reference-count increment.
///
/// ```
/// use mesh_core::ServiceName;
/// let name = ServiceName::new("User-Service")?;
/// assert_eq!(name.as_str(), "user-service");
/// assert!(ServiceName::new("bad name").is_err());
/// # Ok::<(), mesh_core::InvalidName>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    /// Validates and normalises (to lower case) a service name.
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        let invalid = |reason| InvalidName {
            what: "service name",
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 253 {
            return Err(invalid("it is longer than 253 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        Ok(ServiceName(Arc::from(name.to_ascii_lowercase())))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a URI authority (`user-service`), for requests
    /// addressed to the service by name. For a service discovery lists
    /// (the first 4,096 names it lists keep a `'static` copy, shared with
    /// their `Host` value), it is over that copy, so a clone copies a
    /// pointer and writes no reference count; for any other name, over
    /// bytes of its own (asking keeps no name). `None` only for a name no
    /// authority could carry, which a validated name never is.
    ///
    /// ```
    /// use mesh_core::ServiceName;
    /// let name = ServiceName::new("User-Service")?;
    /// assert_eq!(name.authority().map(|a| a.to_string()).as_deref(), Some("user-service"));
    /// # Ok::<(), mesh_core::InvalidName>(())
    /// ```
    pub fn authority(&self) -> Option<http::uri::Authority> {
        crate::name_values::authority(self)
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for ServiceName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::new(s)
    }
}

/// The identity of one endpoint (instance) of a service.
///
/// Discovery backends supply their own identifiers (a Consul service ID, a
/// pod name); endpoints built from a bare address use the address itself.
/// The id is what keeps an endpoint's live state across discovery updates,
/// so two endpoints of one set never share it.
///
/// ```
/// use mesh_core::EndpointId;
/// let id = EndpointId::new("user-service-1")?;
/// assert_eq!(id.to_string(), "user-service-1");
/// # Ok::<(), mesh_core::InvalidName>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(Arc<str>);

impl EndpointId {
    /// Validates an endpoint id: non-empty, at most 512 bytes, no control
    /// characters or whitespace.
    pub fn new(id: &str) -> Result<Self, InvalidName> {
        let invalid = |reason| InvalidName {
            what: "endpoint id",
            name: id.to_owned(),
            reason,
        };
        if id.is_empty() {
            return Err(invalid("it is empty"));
        }
        if id.len() > 512 {
            return Err(invalid("it is longer than 512 bytes"));
        }
        if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("it contains whitespace or control characters"));
        }
        Ok(EndpointId(Arc::from(id)))
    }

    /// The id of an endpoint known only by its address.
    pub fn from_addr(addr: std::net::SocketAddr) -> Self {
        EndpointId(Arc::from(addr.to_string()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for EndpointId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_lowercased_and_validated() {
        assert_eq!(ServiceName::new("A.b_C-1").unwrap().as_str(), "a.b_c-1");
        let err = ServiceName::new("user/service").unwrap_err();
        assert!(err.to_string().contains("\"user/service\""), "{err}");
        assert!(ServiceName::new("").is_err());
        assert!(ServiceName::new(&"a".repeat(254)).is_err());
    }

    #[test]
    fn endpoint_ids_refuse_whitespace() {
        assert!(EndpointId::new("pod 1").is_err());
        assert!(EndpointId::new("").is_err());
        let addr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(EndpointId::from_addr(addr).as_str(), "127.0.0.1:80");
    }
}
