//! A TLS 1.3 client connection counts its handshake exactly once, however
//! it ends, even when the server never sends a byte: the server closing
//! it (cleanly, or without TLS's close_notify), or the client dropping it
//! unread. (A refusal arriving on the first read is counted as a failure
//! instead: `tests/alerts.rs`.) Loopback only.

mod support;
use support::credentials;

use std::time::Duration;

use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use mesh_testkit::pki::{Ca, Leaf};
use mesh_tls::rustls::ProtocolVersion;
use mesh_tls::{ClientTls, HandshakeRejection, MeshStream, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

/// How the test server ends each connection once its handshake is done.
#[derive(Clone, Copy)]
enum Close {
    /// Sends TLS's close_notify, then closes: the client reads the end of
    /// the stream.
    CleanlyWithoutWriting,
    /// Closes the TCP connection with no close_notify: the client's read
    /// fails with an I/O error that is not a TLS error.
    AbruptlyWithoutWriting,
    /// Keeps it open, silent, until the client goes.
    Never,
}

/// A server (this crate's acceptor) accepting every client handshake on
/// a loopback port and then closing as `close` says, never writing.
async fn silent_server(ca: &Ca, close: Close) -> (u16, ServerTls) {
    let tls = ServerTls::builder(credentials(ca, &ca.issue(Leaf::service("users"))))
        .build()
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepting = tls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let tls = accepting.clone();
            tokio::spawn(async move {
                let (mut stream, _identity) = tls.accept(tcp, Some(peer)).await.expect("handshake");
                match close {
                    Close::CleanlyWithoutWriting => {
                        stream.shutdown().await.expect("close_notify");
                    }
                    Close::AbruptlyWithoutWriting => drop(stream),
                    Close::Never => {
                        // Until the client closes.
                        let mut discard = [0u8; 64];
                        while let Ok(1..) = stream.read(&mut discard).await {}
                    }
                }
            });
        }
    });
    (port, tls)
}

/// A client with its own credentials (so its counters are its own).
fn client(ca: &Ca) -> ClientTls {
    ClientTls::builder(credentials(ca, &ca.issue(Leaf::service("api"))))
        .build()
        .expect("client")
}

/// Connects to `localhost:port` through the client's connector, as
/// hyper-util's `Client` would: the handshake is done, nothing read yet.
async fn connect(tls: &ClientTls, port: u16) -> MeshStream<TokioIo<tokio::net::TcpStream>> {
    let uri = format!("https://localhost:{port}/").parse().expect("uri");
    let mut connector = tls.connector();
    let stream = connector
        .ready()
        .await
        .expect("ready")
        .call(uri)
        .await
        .expect("connected");
    let MaybeHttpsStream::Https(tls) = stream.get_ref() else {
        panic!("a TLS connection");
    };
    assert_eq!(
        tls.inner().get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3),
        "this file is about TLS 1.3, where the server's verdict comes after the handshake"
    );
    stream
}

/// Reads from `stream` once, with a bound so a hang fails the test.
async fn read_once(stream: MeshStream<TokioIo<tokio::net::TcpStream>>) -> std::io::Result<usize> {
    let mut stream = TokioIo::new(stream);
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the read ended in time")
}

#[tokio::test]
async fn a_server_closing_after_the_handshake_without_writing_counts_one_handshake() {
    let ca = Ca::new("mesh CA");
    let (port, server) = silent_server(&ca, Close::CleanlyWithoutWriting).await;
    let tls = client(&ca);

    let stream = connect(&tls, port).await;
    assert_eq!(
        tls.metrics().snapshot().handshakes,
        0,
        "a TLS 1.3 handshake awaits the server's verdict"
    );
    // An idle pooled connection the server closes looks like this: the
    // end of the stream, no bytes, no alert.
    assert_eq!(read_once(stream).await.expect("end of stream"), 0);

    let snapshot = tls.metrics().snapshot();
    assert_eq!(
        snapshot.handshakes, 1,
        "counted once, the stream dropped too"
    );
    assert!(
        snapshot.failures.iter().all(|(_, n)| *n == 0),
        "{snapshot:?}"
    );
    assert_eq!(server.metrics().snapshot().handshakes, 1);
}

#[tokio::test]
async fn a_server_dropping_the_connection_without_close_notify_counts_one_handshake() {
    let ca = Ca::new("mesh CA");
    let (port, _server) = silent_server(&ca, Close::AbruptlyWithoutWriting).await;
    let tls = client(&ca);

    let stream = connect(&tls, port).await;
    let error = read_once(stream).await.expect_err("no close_notify");
    assert_eq!(
        HandshakeRejection::find(&error),
        None,
        "not a refusal: {error:?}"
    );

    let snapshot = tls.metrics().snapshot();
    assert_eq!(snapshot.handshakes, 1);
    assert!(
        snapshot.failures.iter().all(|(_, n)| *n == 0),
        "{snapshot:?}"
    );
}

#[tokio::test]
async fn a_connection_dropped_before_any_read_counts_one_handshake() {
    let ca = Ca::new("mesh CA");
    let (port, _server) = silent_server(&ca, Close::Never).await;
    let tls = client(&ca);

    let stream = connect(&tls, port).await;
    assert_eq!(tls.metrics().snapshot().handshakes, 0);
    // A request cancelled before its response, say.
    drop(stream);

    let snapshot = tls.metrics().snapshot();
    assert_eq!(snapshot.handshakes, 1);
    assert!(
        snapshot.failures.iter().all(|(_, n)| *n == 0),
        "{snapshot:?}"
    );

    // Two more, each counted once.
    for _ in 0..2 {
        drop(connect(&tls, port).await);
    }
    assert_eq!(tls.metrics().snapshot().handshakes, 3);
}
