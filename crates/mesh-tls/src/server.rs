//! The server side: an acceptor that requires client certificates, and a
//! serve loop for any hyper or tower service (an axum `Router` included)
//! that hands handlers the verified peer identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_core::{BoxError, ConfigError, MeshEvent};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tower::Service;

use crate::credentials::Credentials;
use crate::error::{HandshakeRejection, TlsError};
use crate::identity::{IdentityPolicy, PeerIdentity};
use crate::verify::{ClientVerifier, CurrentCert};

/// Mutual TLS for incoming connections: presents the current server
/// certificate, requires a client certificate signed by the current CA,
/// and (optionally) admits only identities on an allow-list.
///
/// ```no_run
/// use mesh_tls::{Credentials, IdentityPolicy, PemSource, PeerIdentity, ServerTls};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credentials = Credentials::load(PemSource::files("tls.crt", "tls.key", "ca.crt"))?;
/// let tls = ServerTls::builder(credentials)
///     .allow(IdentityPolicy::new().allow_trust_domain("cluster.local")?)
///     .build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
///     let who = req.extensions().get::<PeerIdentity>().and_then(|p| p.spiffe_id()).map(|id| id.to_string());
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(who.unwrap_or_default()))))
/// });
/// tls.serve(listener, app).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    config: Arc<ServerConfig>,
    credentials: Credentials,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the rustls configuration: it holds the signing key.
        f.debug_struct("ServerTls")
            .field("credentials", &self.credentials)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ServerTls`].
#[derive(Debug)]
pub struct ServerTlsBuilder {
    credentials: Credentials,
    policy: Option<IdentityPolicy>,
    handshake_timeout: Duration,
}

impl ServerTls {
    /// Starts from `credentials`: any client certificate signed by their
    /// CA is accepted until [`ServerTlsBuilder::allow`] narrows it.
    pub fn builder(credentials: Credentials) -> ServerTlsBuilder {
        ServerTlsBuilder {
            credentials,
            policy: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Handshakes and failures counted by this server (shared with
    /// everything built from the same credentials).
    pub fn metrics(&self) -> &crate::TlsMetrics {
        self.credentials.metrics()
    }

    /// The rustls configuration (it rotates with the credentials).
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// Runs the handshake on an accepted connection. On success, the
    /// stream and the client's verified identity; on failure, why (also
    /// counted, logged and published as [`MeshEvent::HandshakeRejected`]).
    ///
    /// # Call it on a task per connection
    ///
    /// This future can take a while, and the time is the client's to
    /// spend, not the server's:
    ///
    /// - the handshake itself waits for the client, up to the
    ///   [handshake timeout](ServerTlsBuilder::handshake_timeout) (10 s by
    ///   default);
    /// - a **refused** connection is closed gracefully before this
    ///   returns: the alert sent, the write half shut, and what the client
    ///   still sends read and discarded until it closes or **100 ms**
    ///   pass, so that the client reads the alert rather than a reset.
    ///
    /// So do not await it in your accept loop: one slow client would hold
    /// up every connection behind it, and each refused client would stall
    /// the loop for up to 100 ms. Spawn a task per accepted TCP connection
    /// and call `accept` in it, as [`ServerTls::serve`] does; then the
    /// wait costs only that connection's task, which holds its socket up
    /// to 100 ms longer after a refusal.
    ///
    /// ```no_run
    /// # async fn run(tls: mesh_tls::ServerTls) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// loop {
    ///     let (tcp, peer) = listener.accept().await?;
    ///     let tls = tls.clone();
    ///     tokio::spawn(async move {
    ///         let Ok((stream, identity)) = tls.accept(tcp, Some(peer)).await else {
    ///             return; // Refused: counted, logged and published already.
    ///         };
    ///         // Serve `stream` for `identity`.
    ///         # let _ = (stream, identity);
    ///     });
    /// }
    /// # }
    /// ```
    pub async fn accept<IO>(
        &self,
        io: IO,
        peer: Option<SocketAddr>,
    ) -> Result<(TlsStream<IO>, PeerIdentity), HandshakeRejection>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        // Fallible, so a refused connection comes back to be closed
        // gracefully below.
        let handshake = self.acceptor.accept(io).into_fallible();
        let (outcome, refused) = match tokio::time::timeout(self.handshake_timeout, handshake).await
        {
            Err(_) => (
                Err(HandshakeRejection::HandshakeTimeout {
                    timeout: self.handshake_timeout,
                }),
                None,
            ),
            Ok(Err((error, io))) => (
                Err(HandshakeRejection::find(&error)
                    .unwrap_or_else(|| HandshakeRejection::Other(error.to_string()))),
                Some(io),
            ),
            Ok(Ok(stream)) => {
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(PeerIdentity::from_cert);
                match identity {
                    Some(identity) => (Ok((stream, identity)), None),
                    // The verifier requires a certificate; this is only
                    // reachable if rustls changes its mind.
                    None => (Err(HandshakeRejection::NoClientCertificate), None),
                }
            }
        };
        let metrics = self.credentials.metrics();
        match &outcome {
            Ok(_) => metrics.handshake(),
            Err(rejection) => {
                metrics.failure(rejection);
                tracing::warn!(?peer, %rejection, "TLS handshake refused");
                self.credentials.publish(MeshEvent::HandshakeRejected {
                    side: "server",
                    peer,
                    reason: rejection.label(),
                    detail: rejection.to_string(),
                });
            }
        }
        if let Some(io) = refused {
            close_after_alert(io).await;
        }
        outcome
    }

    /// Accepts connections from `listener`, each served on its own task
    /// with HTTP/1.1 or HTTP/2 (by ALPN). Every request carries the
    /// client's [`PeerIdentity`] in its extensions. Runs until dropped:
    /// accept errors (a full file table, an aborted connection) are logged
    /// and retried after a pause, never fatal. Dropping the future stops
    /// the server and its connections.
    pub async fn serve<S, B>(&self, listener: TcpListener, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends clear when connections close;
                    // pausing keeps the loop from spinning meanwhile.
                    tracing::warn!(%error, "accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tls, service) = (self.clone(), service.clone());
            connections.spawn(async move {
                let Ok((stream, identity)) = tls.accept(tcp, Some(peer)).await else {
                    return;
                };
                let service = TowerToHyperService::new(WithPeer {
                    inner: service,
                    identity,
                });
                if let Err(error) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            });
        }
    }
}

impl ServerTlsBuilder {
    /// Admits only clients whose SPIFFE identity `policy` admits.
    pub fn allow(mut self, policy: IdentityPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// How long a client may take to complete its handshake (10 s by
    /// default), so a stalled client cannot hold a task forever.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Builds. A zero handshake timeout is refused as [`TlsError::Config`]
    /// naming `tls.handshake_timeout`.
    pub fn build(self) -> Result<ServerTls, TlsError> {
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::new("tls.handshake_timeout", "must be above zero").into());
        }
        let provider = Arc::clone(self.credentials.provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::unusable_protocol_versions)?
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                credentials: self.credentials.clone(),
                policy: self.policy,
            }))
            .with_cert_resolver(Arc::new(CurrentCert(self.credentials.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No session resumption: a resumed session skips certificate
        // verification, so a client whose certificate expired or whose CA
        // was rotated out could keep reconnecting on an old ticket. Pooled
        // connections make full handshakes rare enough to pay.
        config.session_storage = Arc::new(tokio_rustls::rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::clone(&config)),
            config,
            credentials: self.credentials,
            handshake_timeout: self.handshake_timeout,
        })
    }
}

/// How long a refused connection is kept open, at most, so the peer can
/// read the alert that says why.
const ALERT_LINGER: Duration = Duration::from_millis(100);

/// Closes a refused connection so that the peer reads the alert rustls
/// wrote, not a reset: flushes, shuts the write half down (a FIN after the
/// alert), then reads and discards what the peer still sends until it
/// closes, for at most [`ALERT_LINGER`].
///
/// Dropping the socket at once loses the alert nearly every time: a TLS
/// 1.3 client sends its certificate and, its handshake done, its first
/// request in one flight, and closing a socket with unread data makes the
/// kernel answer with a reset, which the peer reports ("connection reset
/// by peer") in place of the alert still in its receive buffer.
async fn close_after_alert<IO>(mut io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let drain = async {
        if io.flush().await.is_err() || io.shutdown().await.is_err() {
            return;
        }
        let mut discard = [0u8; 4096];
        while let Ok(1..) = io.read(&mut discard).await {}
    };
    let _ = tokio::time::timeout(ALERT_LINGER, drain).await;
}

/// Inserts the connection's peer identity into each request.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    identity: PeerIdentity,
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.identity.clone());
        self.inner.call(req)
    }
}
