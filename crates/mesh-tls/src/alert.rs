//! TLS alerts by their standard names, and what each asks the refused
//! end to fix: the words of [`HandshakeRejection::RefusedByPeer`].
//!
//! [`HandshakeRejection::RefusedByPeer`]: crate::HandshakeRejection::RefusedByPeer

use tokio_rustls::rustls::AlertDescription;

/// An alert's standard name (RFC 8446 section 6, and the registry), which
/// does not change with the rustls version.
pub(crate) fn alert_name(alert: AlertDescription) -> String {
    let code = u8::from(alert);
    let name = match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "encrypted_client_hello_required",
        _ => return format!("alert_{code}"),
    };
    name.to_owned()
}

/// The standard name of an alert rustls wrote by its `Debug` name
/// (`UnknownCA`), or that text when no alert has it.
pub(crate) fn alert_name_from_debug(debug: &str) -> String {
    (0..=u8::MAX)
        .map(AlertDescription::from)
        .find(|alert| format!("{alert:?}") == debug)
        .map_or_else(|| debug.to_owned(), alert_name)
}

/// What the peer's alert asks this end to fix.
pub(crate) fn alert_hint(alert: &str) -> &'static str {
    match alert {
        "certificate_required" => {
            "it requires a client certificate and this end sent none; configure this end's \
             certificate and key"
        }
        "unknown_ca" => {
            "it does not trust the CA that issued this end's certificate; give it this CA, \
             or this end a certificate from its CA"
        }
        "certificate_expired" => {
            "it found this end's certificate expired or not valid yet; rotate the \
             certificate, or check the clocks"
        }
        "certificate_revoked" => "this end's certificate was revoked; issue a new one",
        "bad_certificate" => {
            "it found this end's certificate malformed, or not valid for the name it expects; \
             reissue it"
        }
        "unsupported_certificate" => {
            "this end's certificate is not issued for this use (extended key usage) or uses an \
             unsupported key; reissue it"
        }
        "certificate_unknown" => {
            "it refused this end's certificate after checking it (for a mesh peer: this end's \
             identity is not on its allow-list); see the peer's logs"
        }
        "access_denied" => {
            "it accepted this end's certificate but not this end; check its allow-list"
        }
        "decrypt_error" => {
            "a handshake signature did not verify (a key that is not the certificate's?)"
        }
        "handshake_failure" | "insufficient_security" | "protocol_version" => {
            "the two ends have no TLS version, cipher suite or key exchange in common"
        }
        "no_application_protocol" => "no application protocol (ALPN: h2, http/1.1) in common",
        _ => "see the peer's logs for why",
    }
}
