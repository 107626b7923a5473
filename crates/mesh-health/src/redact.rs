//! URLs as they may be printed: a check's URL can carry credentials
//! (`http://admin:s3cret@db:8080/health`), and everything a check prints
//! ends up in reports served on `/health/*`, in logs and in events.

use std::fmt;

/// Displays a URI with its userinfo password replaced by `***`
/// (`http://admin:***@db:8080/health`); a userinfo without a password is
/// taken as a token and hidden whole (`https://***@host/`), and so is a
/// query (`/health?***`), which may carry one (`?token=...`).
pub(crate) struct Redacted<'a>(pub(crate) &'a http::Uri);

// === impl Redacted ===

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if mesh_core::ShownUri::may_split_userinfo(uri) {
            return f.write_str("***");
        }
        if let Some(authority) = uri.authority() {
            // The host follows the last '@': a raw '@' cannot appear in a
            // host, so everything before it is userinfo.
            match authority.as_str().rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => write!(f, "{user}:***@{host}")?,
                    None => write!(f, "***@{host}")?,
                },
                None => f.write_str(authority.as_str())?,
            }
        }
        f.write_str(uri.path())?;
        if uri.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `uri` without its userinfo: what goes on the wire, where credentials
/// travel in the `Authorization` header instead.
pub(crate) fn without_userinfo(uri: &http::Uri) -> http::Uri {
    let Some(authority) = uri.authority() else {
        return uri.clone();
    };
    let Some((_, host)) = authority.as_str().rsplit_once('@') else {
        return uri.clone();
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = host.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The `user:password` of `uri`'s userinfo, percent-decoded, when it has a
/// password: for HTTP Basic authentication, as curl sends it.
pub(crate) fn basic_credentials(uri: &http::Uri) -> Option<String> {
    let (userinfo, _) = uri.authority()?.as_str().rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some(format!(
        "{}:{}",
        percent_decode(user),
        percent_decode(password)
    ))
}

/// `%XX` sequences decoded; anything else, including a stray `%`, kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (RFC 4648), for the `Basic` header.
pub(crate) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(uri: &str) -> String {
        Redacted(&uri.parse().expect("uri")).to_string()
    }

    #[test]
    fn passwords_and_tokens_are_hidden_and_the_rest_kept() {
        assert_eq!(
            shown("http://admin:s3cret@127.0.0.1:8080/health?x=1"),
            "http://admin:***@127.0.0.1:8080/health?***"
        );
        assert_eq!(
            shown("http://127.0.0.1:8080/health?token=s3cret"),
            "http://127.0.0.1:8080/health?***"
        );
        assert_eq!(shown("https://tok3n@host/"), "https://***@host/");
        // A password holding '/' or '#' ends the parsed authority early:
        // nothing past the scheme is shown.
        assert_eq!(shown("http://admin:pa/ss@db/health"), "http://***");
        assert_eq!(shown("http://admin:pa#ss@db/health"), "http://***");
        assert_eq!(shown("http://tok/en@db/health"), "http://***");
        assert_eq!(shown("http://127.0.0.1:80/a"), "http://127.0.0.1:80/a");
        assert_eq!(shown("http://[::1]:80"), "http://[::1]:80/");
        assert_eq!(shown("/relative"), "/relative");
    }

    #[test]
    fn credentials_move_from_the_url_to_a_basic_header() {
        let uri: http::Uri = "http://ad%40min:s3%3Acret@127.0.0.1:8080/h"
            .parse()
            .expect("uri");
        assert_eq!(
            without_userinfo(&uri).to_string(),
            "http://127.0.0.1:8080/h"
        );
        assert_eq!(basic_credentials(&uri).as_deref(), Some("ad@min:s3:cret"));
        let plain: http::Uri = "http://host/h".parse().expect("uri");
        assert_eq!(basic_credentials(&plain), None);
        assert_eq!(without_userinfo(&plain), plain);
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
