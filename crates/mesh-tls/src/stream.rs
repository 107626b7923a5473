//! [`MeshStream`]: the client's connection, watching for a refusal that
//! arrives after the handshake.
//!
//! With TLS 1.3 the client finishes its handshake before the server has
//! judged the client's certificate: a server refusing it sends its alert
//! after, and the client reads it in place of the first response. The
//! connector has already returned by then, so the stream itself reports
//! that refusal (counted, published, named), once. Until then the
//! connection awaits the server's verdict, and its handshake is counted
//! when the verdict turns out to be acceptance, so a refused connection is
//! never counted as both:
//!
//! | What ends the wait | Counted as |
//! |---|---|
//! | the server's first bytes | a handshake |
//! | a read error carrying a TLS error (the server's alert) | a failure, with its reason |
//! | the end of the stream before any bytes (a pooled connection the server closed while idle) | a handshake |
//! | a read error with no TLS error in it (a reset) | a handshake |
//! | the stream dropped, never having read (a cancelled request) | a handshake |
//!
//! The last three count a handshake because the server did not refuse this
//! end: it would have said so with an alert. Leaving them uncounted would
//! make the handshake count fall short of the connections made.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection};
use mesh_core::MeshEvent;

use crate::client::HandshakeError;
use crate::credentials::Credentials;
use crate::error::HandshakeRejection;

/// A connection made by [`MeshConnector`](crate::MeshConnector): TLS (or,
/// where allowed, plain TCP) over the inner connector's stream.
///
/// It reads and writes as the stream it wraps. Until the server's first
/// bytes arrive on a TLS 1.3 connection, a read error carrying the
/// server's alert is counted as a failed handshake, published as
/// [`MeshEvent::HandshakeRejected`] (side `client`) and returned as an
/// I/O error whose inner error is a [`HandshakeError`] naming the
/// authority and the [`HandshakeRejection`]. Anything else that ends the
/// wait (the first bytes, the end of the stream, a read error that is not
/// TLS's, or dropping the stream) counts the handshake, once.
pub struct MeshStream<T> {
    inner: MaybeHttpsStream<T>,
    /// Set while the server may still refuse this end (TLS 1.3, nothing
    /// read yet); taken by whatever ends the wait, which counts it.
    pending: Option<Pending>,
}

/// A TLS 1.3 connection awaiting the server's verdict: what its
/// handshake, or its refusal, is counted and reported with.
struct Pending {
    credentials: Credentials,
    authority: String,
}

// === impl MeshStream ===

impl<T> MeshStream<T> {
    /// Wraps a connection just made: a TLS 1.3 connection waits for the
    /// server's first bytes to count its handshake; any other is counted
    /// now (TLS 1.2 ends with the server's verdict) or not at all
    /// (plaintext).
    pub(crate) fn new(
        inner: MaybeHttpsStream<T>,
        credentials: &Credentials,
        authority: String,
    ) -> Self {
        let pending = match &inner {
            MaybeHttpsStream::Http(_) => None,
            MaybeHttpsStream::Https(tls) => {
                let version = tls.inner().get_ref().1.protocol_version();
                if version == Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3) {
                    Some(Pending {
                        credentials: credentials.clone(),
                        authority,
                    })
                } else {
                    credentials.metrics().handshake();
                    None
                }
            }
        };
        MeshStream { inner, pending }
    }

    /// The stream underneath (hyper-rustls's TLS or plain stream).
    pub fn get_ref(&self) -> &MaybeHttpsStream<T> {
        &self.inner
    }
}

impl<T> Drop for MeshStream<T> {
    /// Dropped while awaiting the verdict: the server refused nothing, so
    /// the handshake counts.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.accepted();
        }
    }
}

impl<T> std::fmt::Debug for MeshStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStream")
            .field("tls", &matches!(self.inner, MaybeHttpsStream::Https(_)))
            .field("awaiting_server_verdict", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Read + Write + Connection + Unpin> Connection for MeshStream<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: Read + Write + Unpin> Read for MeshStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Until the verdict, read through a small buffer of this frame's
        // to see whether bytes came (a cursor cannot be lent and looked at
        // after); once, per connection.
        let mut first = [0u8; 4096];
        let room = buf.remaining().min(first.len());
        if room == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut read = hyper::rt::ReadBuf::new(&mut first[..room]);
        let outcome = ready!(Pin::new(&mut this.inner).poll_read(cx, read.unfilled()));
        Poll::Ready(match outcome {
            Ok(()) => {
                // Bytes, or the end of the stream with none (the server
                // closed without refusing): either way, accepted.
                buf.put_slice(read.filled());
                if let Some(pending) = this.pending.take() {
                    pending.accepted();
                }
                Ok(())
            }
            Err(error) => Err(match this.pending.take() {
                Some(pending) => pending.read_failed(error),
                None => error,
            }),
        })
    }
}

impl<T: Read + Write + Unpin> Write for MeshStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

// === impl Pending ===

impl Pending {
    /// The server accepted this end (or ended the connection without
    /// refusing it): count the handshake.
    fn accepted(self) {
        self.credentials.metrics().handshake();
    }

    /// The first read failed: a refusal if the error is TLS's (the
    /// server's alert), counted and named; otherwise (a reset, say) the
    /// server did not refuse this end, so the handshake counts and hyper
    /// reports the error as it is.
    fn read_failed(self, error: io::Error) -> io::Error {
        match HandshakeRejection::find(&error) {
            Some(rejection) => self.refused(rejection, error),
            None => {
                self.accepted();
                error
            }
        }
    }

    /// The server refused this end: count, publish, and name the cause.
    fn refused(self, rejection: HandshakeRejection, error: io::Error) -> io::Error {
        let authority = self.authority;
        self.credentials.metrics().failure(&rejection);
        tracing::warn!(%authority, %rejection, "TLS handshake refused after it completed");
        self.credentials.publish(MeshEvent::HandshakeRejected {
            side: "client",
            peer: None,
            reason: rejection.label(),
            detail: format!("{authority}: {rejection}"),
        });
        io::Error::new(
            error.kind(),
            HandshakeError {
                authority,
                rejection,
            },
        )
    }
}
