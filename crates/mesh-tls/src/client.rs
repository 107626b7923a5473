//! The client side: a connector for hyper-util's `Client` that speaks
//! mutual TLS to `https` URIs and refuses plaintext unless told otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use mesh_core::{BoxError, ConfigError, ConnectError, MeshEvent};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tower::Service;

use crate::credentials::Credentials;
use crate::error::{HandshakeRejection, PlaintextRefused, TlsError};
use crate::identity::{IdentityPolicy, SpiffeId};
use crate::stream::MeshStream;
use crate::verify::{CurrentCert, PeerVerification, ServerVerifier};

/// Mutual TLS for outgoing calls: presents the current client
/// certificate, trusts the configured CA (and, by choice, the system
/// roots), and verifies the server by name or by workload identity.
///
/// Its connectors speak TLS only: an `http` URI (or one without a scheme)
/// is refused with [`PlaintextRefused`] before any connection is opened,
/// unless [`ClientTlsBuilder::allow_plaintext`] says otherwise.
///
/// To tie each destination service to its own identity, build one
/// `ClientTls` per service with [`ClientTlsBuilder::expect_identity`] and
/// give each its own hyper-util `Client`, so that pooled connections
/// verified for one service are never reused for another.
///
/// ```no_run
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use mesh_tls::{ClientTls, Credentials, IdentityPolicy, PemSource};
/// # fn main() -> Result<(), mesh_core::BoxError> {
/// let credentials = Credentials::load(PemSource::files("tls.crt", "tls.key", "ca.crt"))?;
/// let tls = ClientTls::builder(credentials)
///     .verify_identity(IdentityPolicy::new().allow("spiffe://cluster.local/ns/default/sa/users".parse()?))
///     .build()?;
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, Empty<bytes::Bytes>>(tls.connector());
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    credentials: Credentials,
    verification: PeerVerification,
    allow_plaintext: bool,
}

/// Builds a [`ClientTls`].
pub struct ClientTlsBuilder {
    credentials: Credentials,
    verification: PeerVerification,
    system_roots: bool,
    allow_plaintext: bool,
}

// === impl ClientTls ===

impl ClientTls {
    /// Starts from `credentials`; by default the server is verified by
    /// name against the credentials' CA only.
    pub fn builder(credentials: Credentials) -> ClientTlsBuilder {
        ClientTlsBuilder {
            credentials,
            verification: PeerVerification::ServerName,
            system_roots: false,
            allow_plaintext: false,
        }
    }

    /// A connector over hyper-util's `HttpConnector` (TCP_NODELAY on, a
    /// 5 s connect timeout): TLS for `https` URIs, ALPN offering h2 and
    /// http/1.1; other URIs are refused with [`PlaintextRefused`] before
    /// any TCP connection (or, with
    /// [`ClientTlsBuilder::allow_plaintext`], sent over plain TCP). Bound
    /// the handshake itself with the per-attempt timeout above the client
    /// (tower's `timeout`).
    pub fn connector(&self) -> MeshConnector<HttpConnector> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        self.wrap(http)
    }

    /// The same over any connector that yields a TCP-like stream (it must
    /// accept `https` URIs: hyper-util's `HttpConnector` needs
    /// `enforce_http(false)`).
    pub fn wrap<H>(&self, http: H) -> MeshConnector<H> {
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*self.config).clone());
        // https_only as a second lock behind the connector's own check.
        let https = match self.allow_plaintext {
            true => builder.https_or_http(),
            false => builder.https_only(),
        }
        .enable_all_versions()
        .wrap_connector(http);
        MeshConnector {
            inner: https,
            credentials: self.credentials.clone(),
            allow_plaintext: self.allow_plaintext,
        }
    }

    /// How this client verifies servers.
    pub fn verification(&self) -> &PeerVerification {
        &self.verification
    }

    /// The one identity servers must present, when built with
    /// [`ClientTlsBuilder::expect_identity`].
    pub fn expected_identity(&self) -> Option<&SpiffeId> {
        match &self.verification {
            PeerVerification::ExpectedIdentity(id) => Some(id),
            _ => None,
        }
    }

    /// Whether `http` URIs go out as plaintext
    /// ([`ClientTlsBuilder::allow_plaintext`]).
    pub fn allows_plaintext(&self) -> bool {
        self.allow_plaintext
    }

    /// Handshakes and failures counted by this client's connectors (shared
    /// with everything built from the same credentials).
    pub fn metrics(&self) -> &crate::TlsMetrics {
        self.credentials.metrics()
    }

    /// The rustls configuration, for use with tokio-rustls directly (it
    /// rotates with the credentials like the connector).
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the rustls configuration: it holds the signing key.
        f.debug_struct("ClientTls")
            .field("credentials", &self.credentials)
            .field("verification", &self.verification)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

// === impl ClientTlsBuilder ===

impl ClientTlsBuilder {
    /// Verifies the server by the host name or IP address of the URI (the
    /// default).
    pub fn verify_server_name(mut self) -> Self {
        self.verification = PeerVerification::ServerName;
        self
    }

    /// Verifies the server by its SPIFFE identity instead of its name.
    pub fn verify_identity(mut self, policy: IdentityPolicy) -> Self {
        self.verification = PeerVerification::Identity(policy);
        self
    }

    /// Accepts only a server presenting exactly `identity` (chained to the
    /// credentials' CA): the identity of the one destination service this
    /// client calls. A valid mesh certificate of any other workload is
    /// refused as [`HandshakeRejection::UnexpectedIdentity`].
    pub fn expect_identity(mut self, identity: SpiffeId) -> Self {
        self.verification = PeerVerification::ExpectedIdentity(identity);
        self
    }

    /// Verifies the server as `verification` says.
    pub fn verify(mut self, verification: PeerVerification) -> Self {
        self.verification = verification;
        self
    }

    /// Also trusts the system's root certificates for servers verified by
    /// name (off by default: a mesh trusts its own CA). Refused with
    /// identity verification (by [`ClientTlsBuilder::build`], as a
    /// [`TlsError::Config`] naming `tls.trust_system_roots`): a public CA
    /// must not vouch for workload identities.
    pub fn trust_system_roots(mut self, yes: bool) -> Self {
        self.system_roots = yes;
        self
    }

    /// **Dangerous**: lets the connectors send `http` URIs over plain TCP,
    /// with no encryption and no authentication of either end. Off by
    /// default, when an `http` URI is refused with [`PlaintextRefused`]
    /// before any connection is opened. Turn it on only for a destination
    /// whose configuration explicitly says it is plaintext; `https` URIs
    /// still get mutual TLS.
    pub fn allow_plaintext(mut self, yes: bool) -> Self {
        self.allow_plaintext = yes;
        self
    }

    /// Builds, loading the system roots if asked to. A combination that
    /// would weaken verification is refused as [`TlsError::Config`]; system
    /// roots that cannot be loaded are [`TlsError::InvalidCa`].
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let by_identity = matches!(
            self.verification,
            PeerVerification::Identity(_) | PeerVerification::ExpectedIdentity(_)
        );
        if self.system_roots && by_identity {
            return Err(ConfigError::new(
                "tls.trust_system_roots",
                "cannot be combined with identity verification: only the mesh CA may \
                 vouch for workload identities",
            )
            .into());
        }
        let system_roots = match self.system_roots {
            false => None,
            true => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::InvalidCa {
                        what: "the system's root certificates".to_owned(),
                        detail: format!("none could be loaded ({:?})", found.errors),
                    });
                }
                Some(Arc::new(roots))
            }
        };
        let provider = Arc::clone(self.credentials.provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::unusable_protocol_versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                credentials: self.credentials.clone(),
                system_roots,
                verification: self.verification.clone(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.credentials.clone())));
        // No resumption: a resumed session skips verifying the server, so a
        // server whose CA was rotated out would stay trusted.
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
        Ok(ClientTls {
            config: Arc::new(config),
            credentials: self.credentials,
            verification: self.verification,
            allow_plaintext: self.allow_plaintext,
        })
    }
}

impl std::fmt::Debug for ClientTlsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsBuilder")
            .field("credentials", &self.credentials)
            .field("verification", &self.verification)
            .field("system_roots", &self.system_roots)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

// === impl MeshConnector ===

/// The connector [`ClientTls::connector`] makes: hyper-rustls's
/// `HttpsConnector`, counting handshakes and reporting failures (metrics,
/// [`MeshEvent::HandshakeRejected`], and a [`HandshakeError`] naming the
/// cause, wrapped in [`mesh_core::ConnectError`] so retries know the
/// request was never sent and may try another endpoint). Its connections
/// are [`crate::MeshStream`]s, which report a TLS 1.3 refusal arriving
/// after the handshake the same way. A plaintext URI
/// is refused with [`PlaintextRefused`] (not a `ConnectError`: no endpoint
/// would take it) unless the client allows plaintext.
#[derive(Clone)]
pub struct MeshConnector<H> {
    inner: HttpsConnector<H>,
    credentials: Credentials,
    allow_plaintext: bool,
}

impl<H> std::fmt::Debug for MeshConnector<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector")
            .field("credentials", &self.credentials)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

/// A TLS connection to `authority` could not be set up.
///
/// With TLS 1.3 the client finishes its handshake before the server has
/// judged the client's certificate, so a server refusing this end's
/// certificate shows up on the first read instead: the connection
/// ([`crate::MeshStream`]) then counts and publishes the refusal like the
/// connector does, and returns an I/O error holding this error, so
/// [`HandshakeRejection::find`] reads it from hyper's error as
/// [`HandshakeRejection::RefusedByPeer`] with the alert. (hyper delivers
/// it as a request error, not a connect error: the request was written,
/// though the server never read it.)
#[derive(Debug, thiserror::Error)]
#[error("TLS to {authority} failed: {rejection}")]
pub struct HandshakeError {
    /// Where the connection went.
    pub authority: String,
    /// Why it failed.
    #[source]
    pub rejection: HandshakeRejection,
}

impl<H> Service<Uri> for MeshConnector<H>
where
    H: Service<Uri> + Send,
    H::Response: Connection + hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
{
    type Response = MeshStream<H::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if !https && !self.allow_plaintext {
            // Checked before the inner connector is called, so not even a
            // TCP connection is opened.
            let refused = PlaintextRefused {
                authority: authority(&uri),
            };
            tracing::warn!(authority = %refused.authority, "plaintext refused: mutual TLS is required");
            return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)));
        }
        let connecting = self.inner.call(uri.clone());
        let credentials = self.credentials.clone();
        Box::pin(async move {
            match connecting.await {
                // The handshake is counted by the stream: at once, or
                // with TLS 1.3 once the server's verdict is known (its
                // first bytes, or the connection ending unrefused).
                Ok(stream) => Ok(MeshStream::new(stream, &credentials, authority(&uri))),
                Err(error) => match HandshakeRejection::find(&*error) {
                    // Not a TLS failure (refused, unreachable): hyper's
                    // error says it best.
                    None => Err(error),
                    Some(rejection) => {
                        credentials.metrics().failure(&rejection);
                        let authority = authority(&uri);
                        tracing::warn!(%authority, %rejection, "TLS handshake failed");
                        credentials.publish(MeshEvent::HandshakeRejected {
                            side: "client",
                            peer: None,
                            reason: rejection.label(),
                            detail: format!("{authority}: {rejection}"),
                        });
                        // As a ConnectError: the request was never sent, so
                        // a retry may safely go to another instance.
                        Err(Box::new(ConnectError::new(HandshakeError {
                            authority,
                            rejection,
                        })) as BoxError)
                    }
                },
            }
        })
    }
}

/// Where `uri` points, for messages, logs and events: its host and port,
/// never its userinfo (a password) nor its path and query.
fn authority(uri: &Uri) -> String {
    match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => "(no host)".to_owned(),
    }
}
