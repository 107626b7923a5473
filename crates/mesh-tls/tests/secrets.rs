//! No private key in `Debug`: every type that holds or reaches one prints
//! paths, identities and counts only. Built from PEM held in memory, the
//! case where the key bytes sit in the value itself.

use std::sync::Arc;

use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::{ClientTls, Credentials, Material, PemSource, ServerTls, TlsConfig};

/// Panics if `debug` holds any recognisable part of `key_pem`: its PEM
/// label or any 20-character slice of its base64 body.
fn assert_no_key(what: &str, debug: &str, key_pem: &str) {
    assert!(!debug.contains("PRIVATE KEY"), "{what}: {debug}");
    let body: String = key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(body.len() > 40, "the test key is real");
    let chars: Vec<char> = body.chars().collect();
    for window in chars.windows(20) {
        let slice: String = window.iter().collect();
        assert!(
            !debug.contains(&slice),
            "{what} shows key bytes {slice}: {debug}"
        );
    }
}

#[tokio::test]
async fn debug_output_never_holds_the_private_key() {
    let ca = Ca::new("mesh CA");
    let issued = ca.issue(Leaf::service("api"));
    let key = issued.key_pem.clone();
    let source = PemSource::memory(issued.cert_pem.clone(), key.clone(), ca.pem.clone());
    let material = Material::load(
        &source,
        &Arc::new(mesh_tls::rustls::crypto::ring::default_provider()),
    )
    .expect("material");
    let credentials = Credentials::load(source.clone()).expect("credentials");
    let client_builder = ClientTls::builder(credentials.clone()).allow_plaintext(false);
    let client_debug = format!("{client_builder:?}");
    let client = client_builder.build().expect("client");
    let server_builder = ServerTls::builder(credentials.clone());
    let server_builder_debug = format!("{server_builder:?}");
    let server = server_builder.build().expect("server");
    let mut config = TlsConfig::new("tls.crt", "tls.key", "ca.crt");
    config.peer_identity = Some("spiffe://cluster.local/ns/default/sa/{service}".to_owned());
    let for_users = config
        .client_for(credentials.clone(), "users")
        .expect("client");

    let cases = [
        ("PemSource", format!("{source:?}")),
        ("PemSource (alternate)", format!("{source:#?}")),
        ("Material", format!("{material:?}")),
        ("Credentials", format!("{credentials:#?}")),
        ("ClientTlsBuilder", client_debug),
        ("ClientTls", format!("{client:#?}")),
        ("ClientTls for a service", format!("{for_users:?}")),
        ("MeshConnector", format!("{:#?}", client.connector())),
        ("ServerTlsBuilder", server_builder_debug),
        ("ServerTls", format!("{server:#?}")),
    ];
    for (what, debug) in &cases {
        assert_no_key(what, debug, &key);
    }

    // What they show instead: the identity, and sizes for PEM in memory.
    let credentials_debug = &cases[3].1;
    assert!(
        credentials_debug.contains("spiffe://cluster.local/ns/default/sa/api"),
        "{credentials_debug}"
    );
    assert!(cases[0].1.contains("bytes of PEM"), "{}", cases[0].1);
    assert!(
        cases[6]
            .1
            .contains("spiffe://cluster.local/ns/default/sa/users"),
        "{}",
        cases[6].1
    );
}

#[test]
fn file_sources_show_their_paths() {
    let source = PemSource::files(
        "/etc/certs/tls.crt",
        "/etc/certs/tls.key",
        "/etc/certs/ca.crt",
    );
    let debug = format!("{source:?}");
    assert!(debug.contains("/etc/certs/tls.key"), "{debug}");
}
