//! This crate against itself and against real peers: `openssl s_server`
//! (requiring a client certificate), `curl` and `openssl s_client`
//! (Debian's openssl and curl, installed by scripts/test.sh). Loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_testkit::fs::TempDir;
use mesh_testkit::net::free_port;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::{
    ClientTls, Credentials, HandshakeRejection, IdentityPolicy, PeerIdentity, PemSource, ServerTls,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Answers with the caller's verified SPIFFE ID.
async fn whoami(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.spiffe_id())
        .map_or_else(|| "nobody".to_owned(), |id| id.to_string());
    Ok(Response::new(Full::new(Bytes::from(who))))
}

/// This crate's server on a loopback port, allowing `policy`.
async fn mesh_server(credentials: Credentials, policy: IdentityPolicy) -> (SocketAddr, ServerTls) {
    let tls = ServerTls::builder(credentials)
        .allow(policy)
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tls.clone();
    tokio::spawn(async move {
        serving.serve(listener, tower::service_fn(whoami)).await;
    });
    (addr, tls)
}

fn files(dir: &TempDir, name: &str, ca: &Ca) -> [PathBuf; 3] {
    dir.write(name, &ca.issue(Leaf::service(name)), &ca.pem)
}

fn load(paths: &[PathBuf; 3]) -> Credentials {
    Credentials::load(PemSource::files(&paths[0], &paths[1], &paths[2])).expect("credentials")
}

async fn get(
    client: &ClientTls,
    url: String,
) -> Result<(http::Version, String), mesh_core::BoxError> {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(client.connector());
    let response = client.get(url.parse()?).await?;
    let version = response.version();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((version, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn mesh_client_and_server_agree_on_identities_and_h2() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("roundtrip");
    let (addr, server) = mesh_server(
        load(&files(&dir, "users", &ca)),
        IdentityPolicy::new().allow(
            "spiffe://cluster.local/ns/default/sa/api"
                .parse()
                .expect("id"),
        ),
    )
    .await;
    let api = ClientTls::builder(load(&files(&dir, "api", &ca)))
        .verify_identity(
            IdentityPolicy::new().allow(
                "spiffe://cluster.local/ns/default/sa/users"
                    .parse()
                    .expect("id"),
            ),
        )
        .build()
        .expect("client");

    // By IP, verified by identity; ALPN picks h2; the server saw our ID.
    let (version, body) = get(&api, format!("https://127.0.0.1:{}/", addr.port()))
        .await
        .expect("call");
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(body, "spiffe://cluster.local/ns/default/sa/api");
    assert_eq!(server.metrics().snapshot().handshakes, 1);

    // A client the server does not allow: the server refuses with an
    // alert, which the client reports as refused by the peer.
    let billing = ClientTls::builder(load(&files(&dir, "billing", &ca)))
        .build()
        .expect("client");
    let error = get(&billing, format!("https://localhost:{}/", addr.port()))
        .await
        .expect_err("not allowed");
    assert!(
        matches!(
            HandshakeRejection::find(&*error),
            Some(HandshakeRejection::RefusedByPeer { .. })
        ),
        "{error:?}"
    );
    let refused = async {
        while server
            .metrics()
            .snapshot()
            .failures_for("identity-not-allowed")
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the server counts the refusal");

    // Plain http: refused by default, sent only by a client that allows it.
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = plain.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(tcp),
                hyper::service::service_fn(whoami),
            ));
        }
    });
    let error = get(&api, format!("http://127.0.0.1:{}/", plain_addr.port()))
        .await
        .expect_err("plaintext refused");
    assert!(
        mesh_core::error_chain(&*error).contains("refusing to send plaintext"),
        "{error:?}"
    );
    let lenient = ClientTls::builder(load(&files(&dir, "api", &ca)))
        .allow_plaintext(true)
        .build()
        .expect("client");
    let (_, body) = get(&lenient, format!("http://127.0.0.1:{}/", plain_addr.port()))
        .await
        .expect("plain http");
    assert_eq!(body, "nobody");
}

/// Kills the child when dropped.
struct Peer(tokio::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn our_client_against_openssl_s_server_requiring_a_client_certificate() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("someone else's CA");
    let dir = TempDir::new("s-server");
    let [cert, key, ca_file] = files(&dir, "users", &ca);
    let port = free_port();
    let server = Peer(
        tokio::process::Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-CAfile")
            .arg(&ca_file)
            .args(["-Verify", "1", "-verify_return_error", "-www", "-quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl could not start: install Debian's openssl (scripts/test.sh does)"),
    );
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "s_server never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let api = ClientTls::builder(load(&files(&dir, "api", &ca)))
        .build()
        .expect("client");
    let (_, body) = get(&api, format!("https://localhost:{port}/"))
        .await
        .expect("s_server accepts our client certificate");
    // s_server -www describes the session, naming our certificate.
    assert!(body.contains("api"), "{body}");

    // A client certificate from another CA: s_server refuses it.
    let stranger = dir.write("stranger", &other_ca.issue(Leaf::service("api")), &ca.pem);
    let stranger = ClientTls::builder(load(&stranger)).build().expect("client");
    let error = get(&stranger, format!("https://localhost:{port}/"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            HandshakeRejection::find(&*error),
            Some(HandshakeRejection::RefusedByPeer { .. })
        ),
        "{error:?}"
    );
    drop(server);
}

async fn run(cmd: &mut tokio::process::Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("could not start: install Debian's curl and openssl (scripts/test.sh does)");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).await.expect("stdin");
    }
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the peer finished in time")
        .expect("output")
}

#[tokio::test]
async fn curl_and_openssl_s_client_against_our_server() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("curl");
    let (addr, server) = mesh_server(
        load(&files(&dir, "users", &ca)),
        IdentityPolicy::new()
            .allow_trust_domain("cluster.local")
            .expect("trust domain"),
    )
    .await;
    let [cert, key, ca_file] = files(&dir, "api", &ca);
    let port = addr.port();

    // curl with a client certificate: verified and identified.
    let out = run(
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--cacert")
            .arg(&ca_file)
            .arg(format!("https://localhost:{port}/")),
        b"",
    )
    .await;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "spiffe://cluster.local/ns/default/sa/api"
    );

    // curl without one is refused.
    let out = run(
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&ca_file)
            .arg(format!("https://localhost:{port}/")),
        b"",
    )
    .await;
    assert!(!out.status.success(), "curl without a certificate got in");
    let refused = async {
        while server
            .metrics()
            .snapshot()
            .failures_for("no-client-certificate")
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the server counts the missing certificate");

    // openssl s_client, verifying our server and presenting a certificate.
    let out = run(
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-servername",
                "localhost",
                "-verify_return_error",
                "-ign_eof",
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-CAfile")
            .arg(&ca_file),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("HTTP/1.1 200 OK"), "{stdout}");
    assert!(
        stdout.contains("spiffe://cluster.local/ns/default/sa/api"),
        "{stdout}"
    );
}
