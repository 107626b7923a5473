//! Request bodies that can be sent more than once.
//!
//! A retry sends the same request again, body included. Buffered bodies
//! (`Full<Bytes>`, `Empty`, `String`) clone by reference count, so they
//! replay at no copy cost and need nothing from you. A streaming body is
//! read only once; wrap it in [`ReplayBody`] to keep what is sent, up to a
//! cap, so a retry can send it again. A body that outgrew its cap is
//! streamed to the end on its first attempt but never retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A request body the retry layer can send again: cloning it gives a body
/// that yields the same bytes. [`ReplayableBody::is_replayable`] says
/// whether that is still true (a [`ReplayBody`] past its cap is not).
pub trait ReplayableBody: Clone {
    /// Whether a clone taken now would replay the whole body.
    fn is_replayable(&self) -> bool {
        true
    }
}

impl<D: Buf + Clone> ReplayableBody for http_body_util::Full<D> {}
impl<D: Buf + Clone> ReplayableBody for http_body_util::Empty<D> {}
impl ReplayableBody for String {}
impl ReplayableBody for Bytes {}
/// For services that take requests without a body.
impl ReplayableBody for () {}

/// A streaming request body kept while it is sent, so it can be sent again.
///
/// The first attempt streams from the source and keeps each frame (by
/// reference for `Bytes`; other buffers are copied once). A clone, made for
/// a retry, replays the kept frames and then continues from the source
/// where the last reader stopped, so a retry after an early answer (a 503
/// before the whole body was read) still sends the whole body. Past `cap`
/// bytes nothing more is kept and the body stops being replayable: the
/// attempt in progress finishes, no retry follows.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use mesh_retry::{ReplayBody, ReplayableBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Any body works; a real caller would wrap a stream.
/// let body = ReplayBody::new(Full::new(Bytes::from("hello world")), 1024);
/// let retry = body.clone();
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
/// assert!(retry.is_replayable());
/// assert_eq!(retry.collect().await.unwrap().to_bytes(), "hello world");
///
/// let big = ReplayBody::new(Full::new(Bytes::from(vec![0u8; 100])), 10);
/// let too_late = big.clone();
/// assert_eq!(big.collect().await.unwrap().to_bytes().len(), 100, "sent once, whole");
/// assert!(!too_late.is_replayable(), "but never again");
/// # }
/// ```
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// How many kept frames this reader has replayed.
    replayed: usize,
    /// This reader holds the source (taken from the shared state while it
    /// reads, so that no lock is held across its polls).
    source: Option<Pin<Box<B>>>,
    /// This reader has yielded its end (or its trailers).
    done: bool,
}

struct Shared<B> {
    /// The source, when no reader holds it; `None` once it has ended.
    source: Option<Pin<Box<B>>>,
    ended: bool,
    kept: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    kept_bytes: usize,
    cap: usize,
    overflowed: bool,
}

impl<B> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes of it for replay.
    pub fn new(body: B, cap: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(Box::pin(body)),
                ended: false,
                kept: Vec::new(),
                trailers: None,
                kept_bytes: 0,
                cap,
                overflowed: false,
            })),
            replayed: 0,
            source: None,
            done: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B> Clone for ReplayBody<B> {
    fn clone(&self) -> Self {
        ReplayBody {
            shared: Arc::clone(&self.shared),
            replayed: 0,
            source: None,
            done: false,
        }
    }
}

impl<B> ReplayableBody for ReplayBody<B> {
    fn is_replayable(&self) -> bool {
        !self.lock().overflowed
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the source back, so the next attempt continues from here.
        if let Some(source) = self.source.take() {
            let mut shared = self.lock();
            shared.source = Some(source);
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.source.is_none() {
            let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(chunk) = shared.kept.get(this.replayed) {
                let chunk = chunk.clone();
                this.replayed += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if shared.ended {
                this.done = true;
                return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
            }
            match shared.source.take() {
                Some(source) => this.source = Some(source),
                // Another reader holds the source: only one attempt is in
                // flight at a time, so this one was overtaken; end it.
                None => return Poll::Ready(None),
            }
        }
        let Some(source) = this.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = source.as_mut().poll_frame(cx);
        let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                this.source = None;
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    if !shared.overflowed {
                        if shared.kept_bytes + bytes.len() <= shared.cap {
                            shared.kept_bytes += bytes.len();
                            shared.kept.push(bytes.clone());
                            this.replayed = shared.kept.len();
                        } else {
                            shared.overflowed = true;
                            shared.kept = Vec::new();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                Err(frame) => {
                    // Trailers end a body: keep them for replays.
                    let trailers = frame.into_trailers().ok();
                    shared.trailers.clone_from(&trailers);
                    shared.ended = true;
                    this.source = None;
                    this.done = true;
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.lock();
        if shared.ended && !shared.overflowed {
            let rest: usize = shared.kept.iter().skip(self.replayed).map(Bytes::len).sum();
            return SizeHint::with_exact(rest as u64);
        }
        match &shared.source {
            Some(source) if self.replayed == shared.kept.len() => source.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.lock();
        f.debug_struct("ReplayBody")
            .field("kept_bytes", &shared.kept_bytes)
            .field("cap", &shared.cap)
            .field("overflowed", &shared.overflowed)
            .field("ended", &shared.ended)
            .finish()
    }
}
