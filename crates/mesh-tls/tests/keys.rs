//! Key formats and chains, proven by full handshakes: PKCS#1 RSA and SEC1
//! EC keys made by the real openssl (rcgen's PKCS#8 keys are used
//! everywhere else), and a leaf sent with its intermediate from one file.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_testkit::fs::TempDir;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::{ClientTls, Credentials, PemSource, ServerTls};
use tokio::net::TcpListener;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl could not start: install Debian's openssl (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `localhost` with a key made by the openssl command
/// `genkey` (`OUT` stands for the key file), signed by `ca` through openssl.
fn openssl_leaf(dir: &TempDir, ca: &Ca, name: &str, genkey: &[&str]) -> (PathBuf, PathBuf) {
    let ca_crt = dir.path("signing-ca.crt");
    let ca_key = dir.path("signing-ca.key");
    std::fs::write(&ca_crt, &ca.pem).expect("write");
    std::fs::write(&ca_key, ca.key_pem()).expect("write");
    let key = dir.path(&format!("{name}.key"));
    let csr = dir.path(&format!("{name}.csr"));
    let crt = dir.path(&format!("{name}.crt"));
    let ext = dir.path(&format!("{name}.ext"));
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write");
    let args: Vec<&str> = genkey
        .iter()
        .map(|a| if *a == "OUT" { path(&key) } else { a })
        .collect();
    openssl(&args);
    openssl(&[
        "req",
        "-new",
        "-key",
        path(&key),
        "-subj",
        "/CN=localhost",
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&ca_crt),
        "-CAkey",
        path(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        path(&ext),
        "-out",
        path(&crt),
    ]);
    (crt, key)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Serves once with `server` and calls it with `client`: the body.
async fn round_trip(server: Credentials, client: Credentials) -> String {
    let tls = ServerTls::builder(server).build().expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let serving = tokio::spawn(async move {
        tls.serve(
            listener,
            tower::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"hello"),
                )))
            }),
        )
        .await
    });
    let client = ClientTls::builder(client).build().expect("client");
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(client.connector());
    let response = client
        .get(format!("https://localhost:{port}/").parse().expect("url"))
        .await
        .expect("handshake and call");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serving.abort();
    String::from_utf8_lossy(&body).into_owned()
}

fn client_credentials(ca: &Ca) -> Credentials {
    let api = ca.issue(Leaf::service("api"));
    Credentials::load(PemSource::memory(api.cert_pem, api.key_pem, ca.pem.clone()))
        .expect("client credentials")
}

#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_serve_handshakes() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("keys");
    let ca_file = dir.path("ca.crt");
    std::fs::write(&ca_file, &ca.pem).expect("write");
    for (name, genkey, header) in [
        (
            "rsa",
            &["genrsa", "-traditional", "-out", "OUT", "2048"][..],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "ec",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "OUT",
            ][..],
            "BEGIN EC PRIVATE KEY",
        ),
    ] {
        let (crt, key) = openssl_leaf(&dir, &ca, name, genkey);
        let pem = std::fs::read_to_string(&key).expect("key");
        assert!(pem.contains(header), "{name}: openssl wrote {pem}");
        let server = Credentials::load(PemSource::files(&crt, &key, &ca_file))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            round_trip(server, client_credentials(&ca)).await,
            "hello",
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_chain_in_the_certificate_file_reaches_the_peer() {
    let root = Ca::new("mesh root");
    let intermediate = root.intermediate("mesh intermediate");
    let leaf = intermediate.issue(Leaf::service("users"));
    // Leaf first, then the intermediate; peers trust only the root.
    let chain = format!("{}{}", leaf.cert_pem, intermediate.pem);
    let server = Credentials::load(PemSource::memory(chain, leaf.key_pem, root.pem.clone()))
        .expect("server credentials");
    assert_eq!(server.current().chain().len(), 2);
    assert_eq!(round_trip(server, client_credentials(&root)).await, "hello");
}
