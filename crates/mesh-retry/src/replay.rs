//! Request bodies that can be sent more than once.
//!
//! A retry sends the same request again, body included. Buffered bodies
//! backed by `Bytes` (`Full<Bytes>`, `Empty`, `Bytes`) clone by reference
//! count, so they replay at no copy cost and need nothing from you (a
//! `String` body works too, but its clone copies it). A streaming body is
//! read only once; wrap it in [`ReplayBody`] to keep what is sent, up to a
//! cap, so a retry can send it again. A body that outgrew its cap is
//! streamed to the end on its first attempt but never retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

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
impl ReplayableBody for Bytes {}
/// Replayable, but a clone copies the string: prefer `Full<Bytes>` for
/// large bodies.
impl ReplayableBody for String {}
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
    shared: Arc<Mutex<Recording<B>>>,
    /// How many kept frames this reader has replayed.
    replayed: usize,
    /// This reader holds the source (taken from the shared state while it
    /// reads, so that no lock is held across its polls).
    source: Option<Pin<Box<B>>>,
    /// This reader has yielded its end (or its trailers).
    done: bool,
    /// Bytes this reader has yielded.
    sent: u64,
}

struct Recording<B> {
    /// The source's size hint before anything was read: every reader's
    /// hint is this less what it has sent, so a retry announces the same
    /// length as the first attempt.
    original: SizeHint,
    /// The source, when no reader holds it; `None` once it has ended.
    source: Option<Pin<Box<B>>>,
    ended: bool,
    /// The source failed: what was sent cannot be completed.
    failed: bool,
    kept: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    kept_bytes: usize,
    cap: usize,
    overflowed: bool,
    /// Readers waiting for the reader that holds the source (an earlier
    /// attempt still sending) to keep more, finish, or hand it back.
    waiting: Vec<Waker>,
}

impl<B> Recording<B> {
    fn wake_all(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }
}

/// Why a replay could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    /// The source body failed.
    #[error("request body failed")]
    Source(#[source] E),
    /// A retry could not replay the body: it outgrew the replay buffer, or
    /// the source failed, while the earlier attempt was still sending it.
    #[error("request body could not be replayed: {0}")]
    Lost(&'static str),
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes of it for replay.
    pub fn new(body: B, cap: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Recording {
                original: body.size_hint(),
                source: Some(Box::pin(body)),
                ended: false,
                failed: false,
                kept: Vec::new(),
                trailers: None,
                kept_bytes: 0,
                cap,
                overflowed: false,
                waiting: Vec::new(),
            })),
            replayed: 0,
            source: None,
            done: false,
            sent: 0,
        }
    }
}

impl<B> ReplayBody<B> {
    fn lock(&self) -> MutexGuard<'_, Recording<B>> {
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
            sent: 0,
        }
    }
}

impl<B> ReplayableBody for ReplayBody<B> {
    fn is_replayable(&self) -> bool {
        let shared = self.lock();
        !shared.overflowed && !shared.failed
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the source back, so the next attempt continues from here.
        if let Some(source) = self.source.take() {
            let mut shared = self.lock();
            shared.source = Some(source);
            shared.wake_all();
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = ReplayError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.source.is_none() {
            let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.overflowed || shared.failed {
                // What this reader would need was not kept: fail loudly
                // rather than send a body that looks whole but is not.
                this.done = true;
                let why = if shared.failed {
                    "the source failed"
                } else {
                    "it outgrew its replay buffer"
                };
                return Poll::Ready(Some(Err(ReplayError::Lost(why))));
            }
            if let Some(chunk) = shared.kept.get(this.replayed) {
                let chunk = chunk.clone();
                this.replayed += 1;
                this.sent += chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if shared.ended {
                this.done = true;
                return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
            }
            match shared.source.take() {
                Some(source) => this.source = Some(source),
                None => {
                    // An earlier attempt still holds the source (its
                    // connection is still sending): wait for it to keep
                    // more, finish, or hand the source back.
                    shared.waiting.push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(source) = this.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = source.as_mut().poll_frame(cx);
        let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        let out = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                this.source = None;
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.failed = true;
                this.source = None;
                this.done = true;
                Poll::Ready(Some(Err(ReplayError::Source(e))))
            }
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
                    this.sent += bytes.len() as u64;
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
        };
        shared.wake_all();
        out
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.lock();
        if shared.ended && !shared.overflowed && !shared.failed {
            return SizeHint::with_exact((shared.kept_bytes as u64).saturating_sub(self.sent));
        }
        let mut hint = SizeHint::new();
        hint.set_lower(shared.original.lower().saturating_sub(self.sent));
        if let Some(upper) = shared.original.upper() {
            hint.set_upper(upper.saturating_sub(self.sent));
        }
        hint
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// Yields its chunks one per poll, then ends.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
            )
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
        }
    }

    fn chunks() -> Chunks {
        Chunks(["ab", "cd", "ef"].into_iter().collect())
    }

    #[tokio::test]
    async fn a_retry_after_an_early_answer_still_sends_the_whole_body() {
        let first = ReplayBody::new(chunks(), 100);
        let retry = first.clone();
        let mut first = Box::pin(first);
        // The first attempt sent one chunk, then the answer came.
        let sent = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(sent, "ab");
        assert_eq!(
            retry.size_hint().exact(),
            Some(6),
            "a retry keeps its Content-Length"
        );
        drop(first);
        assert_eq!(retry.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_retry_waits_for_an_attempt_still_sending() {
        let first = ReplayBody::new(chunks(), 100);
        let retry = first.clone();
        let mut first = Box::pin(first);
        first.frame().await.unwrap().unwrap();
        let reader = tokio::spawn(async move { retry.collect().await.map(|c| c.to_bytes()) });
        tokio::task::yield_now().await;
        // The earlier attempt's connection keeps sending to the end.
        while first.frame().await.is_some() {}
        let replayed = reader.await.unwrap().unwrap();
        assert_eq!(replayed, "abcdef");
    }

    #[tokio::test]
    async fn a_retry_fails_rather_than_send_a_body_cut_by_the_cap() {
        let first = ReplayBody::new(chunks(), 3);
        let retry = first.clone();
        assert!(
            first.collect().await.is_ok(),
            "the first attempt sends it whole"
        );
        assert!(!retry.is_replayable());
        assert!(matches!(retry.collect().await, Err(ReplayError::Lost(_))));
    }
}
