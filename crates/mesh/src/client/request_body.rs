//! [`RequestBody`]: what a call sends, whole or streamed, and
//! [`SentBody`], the form a service's stack sends it in: replayable, so a
//! retry can send it again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::BoxError;
use mesh_retry::{ReplayBody, ReplayableBody};

/// The body of a request sent through a [`MeshClient`](crate::MeshClient).
///
/// A whole body (`Bytes`, `String`, `Full<Bytes>`...) is kept as it is: a
/// retry sends the same bytes again at no copy cost. A streamed body
/// ([`RequestBody::stream`], what [`GrpcChannel`](crate::GrpcChannel)
/// sends) goes out as it is produced, never gathered first: its first
/// bytes (up to the service's `replay_buffer`) are kept so a retry can
/// send them again; past that the call is committed to its first attempt
/// and is never failed for its size.
pub struct RequestBody(Kind);

enum Kind {
    Whole(Full<Bytes>),
    Stream(UnsyncBoxBody<Bytes, StreamError>),
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> RequestBody {
        RequestBody(Kind::Whole(Full::default()))
    }

    /// A body streamed from `body` (a client stream, an upload).
    pub fn stream<B>(body: B) -> RequestBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        RequestBody(Kind::Stream(
            body.map_err(|e| StreamError(e.into())).boxed_unsync(),
        ))
    }

    /// This body as the stack sends it, keeping up to `limit` bytes of a
    /// stream for retries.
    pub(crate) fn replayable(self, limit: usize) -> SentBody {
        match self.0 {
            Kind::Whole(body) => SentBody::Whole(body),
            Kind::Stream(body) => SentBody::Replay(ReplayBody::new(body, limit)),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Whole(_) => "RequestBody::Whole",
            Kind::Stream(_) => "RequestBody::Stream",
        })
    }
}

impl Default for RequestBody {
    fn default() -> RequestBody {
        RequestBody::empty()
    }
}

impl From<Full<Bytes>> for RequestBody {
    fn from(body: Full<Bytes>) -> RequestBody {
        RequestBody(Kind::Whole(body))
    }
}

impl From<Empty<Bytes>> for RequestBody {
    fn from(_: Empty<Bytes>) -> RequestBody {
        RequestBody::empty()
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> RequestBody {
        RequestBody(Kind::Whole(Full::new(bytes)))
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> RequestBody {
        Bytes::from(text).into()
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> RequestBody {
        Bytes::from(bytes).into()
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> RequestBody {
        Bytes::from_static(text.as_bytes()).into()
    }
}

/// Why a streamed request body stopped: its source's error.
#[derive(Debug)]
pub(crate) struct StreamError(BoxError);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A request body as a service's stack sends it: whole, or streamed
/// through a bounded replay buffer.
#[derive(Clone)]
pub(crate) enum SentBody {
    Whole(Full<Bytes>),
    Replay(ReplayBody<UnsyncBoxBody<Bytes, StreamError>>),
}

impl ReplayableBody for SentBody {
    fn is_replayable(&self) -> bool {
        match self {
            SentBody::Whole(_) => true,
            SentBody::Replay(body) => body.is_replayable(),
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            SentBody::Whole(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            SentBody::Replay(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SentBody::Whole(body) => body.is_end_stream(),
            SentBody::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SentBody::Whole(body) => body.size_hint(),
            SentBody::Replay(body) => body.size_hint(),
        }
    }
}
