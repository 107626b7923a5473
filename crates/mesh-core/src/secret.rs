//! [`Secret`]: a string that must never reach output.
//!
//! ACL tokens and passwords travel through configuration structs that
//! derive `Debug` and `Serialize`, so a `{config:?}` in a log line or an
//! event would print them. Holding them as a `Secret` makes every way of
//! printing one say `<redacted>`; the value is read only where it is sent,
//! through [`Secret::expose`], which is easy to grep for.

use std::fmt;

/// What every printed or serialized [`Secret`] reads as.
const REDACTED: &str = "<redacted>";

/// A string secret (an ACL token, a password) that prints as `<redacted>`.
///
/// `Debug`, `Display` and `Serialize` all write `<redacted>`: a serialized
/// configuration is for display, not for reloading, since its secrets are
/// gone. `Deserialize` reads a plain string, so a configuration file holds
/// the secret as written; a value of another type (a number written
/// without its quotes) is refused without being quoted.
///
/// ```
/// use mesh_core::Secret;
/// let token = Secret::new("s3cr3t");
/// assert_eq!(format!("{token:?} {token}"), "<redacted> <redacted>");
/// assert_eq!(token.expose(), "s3cr3t");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

// === impl Secret ===

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it (a header, a
    /// handshake). Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `any`, not `string`: a format (or serde's buffering of a tagged
        // enum) asked for a string refuses another type itself, quoting it.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Reads a string, and refuses anything else without quoting it: serde's
/// own message for a value of the wrong type quotes the value
/// (``invalid type: integer `12345678` ``), and a secret written without
/// its quotes would be shown.
struct SecretVisitor;

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret(value))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(not_a_string())
    }

    fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<Secret, E> {
        std::str::from_utf8(value)
            .map(Secret::new)
            .map_err(|_| not_a_string())
    }
}

/// The refusal of a secret that is not a string, which quotes nothing.
fn not_a_string<E: serde::de::Error>() -> E {
    E::custom("a secret is a string: write it in quotes (its value is not shown)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        token: Secret,
        password: Option<Secret>,
    }

    #[test]
    fn printing_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:#?}"), "<redacted>");
        let config = Config {
            token: "hunter2".into(),
            password: Some(String::from("hunter3").into()),
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter"), "{shown}");
    }

    #[test]
    fn reads_a_plain_string_and_serializes_redacted() {
        let config: Config =
            serde_json::from_str(r#"{ "token": "abc", "password": "def" }"#).unwrap();
        assert_eq!(config.token.expose(), "abc");
        assert_eq!(config.password.as_ref().map(Secret::expose), Some("def"));
        let written = serde_json::to_string(&config).unwrap();
        assert_eq!(written, r#"{"token":"<redacted>","password":"<redacted>"}"#);
        assert!(serde_json::from_str::<Config>(r#"{ "token": 1, "password": null }"#).is_err());
    }

    #[test]
    fn compares_by_value() {
        assert_eq!(Secret::new("a"), Secret::from("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_eq!(Secret::new("a").clone().expose(), "a");
    }
}
