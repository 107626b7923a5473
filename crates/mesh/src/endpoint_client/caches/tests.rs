//! `send_on` over a scripted cache: which connections a request is tried
//! on, and when it gives up.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use super::*;

/// What the next connection taken from the cache does.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// A cached connection, found closed when polled.
    Closed,
    /// A cached connection that closes before the request is written, and
    /// hands it back.
    Unwritten,
    /// A connection opened for the request, closed at once.
    NewClosed,
    /// A connection opened for the request that closes before it is
    /// written.
    NewUnwritten,
    /// Fails after the request was written.
    Fails,
    Answers,
}

impl Next {
    /// The connection's serial: cached ones were opened before the
    /// request began ([`BEGAN`]), new ones after.
    fn serial(self) -> u64 {
        match self {
            Next::NewClosed | Next::NewUnwritten => BEGAN + 1,
            _ => BEGAN - 1,
        }
    }
}

/// How many connections were opened when each request began.
const BEGAN: u64 = 10;

/// A cache handing out connections as scripted, counting what they do.
#[derive(Clone, Default)]
struct Script {
    next: Arc<Mutex<VecDeque<Next>>>,
    written: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
}

impl Script {
    fn of(plan: impl IntoIterator<Item = Next>) -> Script {
        let script = Script::default();
        script.next.lock().unwrap().extend(plan);
        script
    }
}

impl Service<Authority> for Script {
    type Response = Scripted;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Scripted, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _authority: Authority) -> Self::Future {
        let next = self.next.lock().unwrap().pop_front();
        std::future::ready(match next {
            Some(next) => Ok(Scripted {
                next,
                script: self.clone(),
            }),
            None => Err("the script ran out".into()),
        })
    }
}

struct Scripted {
    next: Next,
    script: Script,
}

impl Service<Request<()>> for Scripted {
    type Response = &'static str;
    type Error = Unsent<()>;
    type Future = std::future::Ready<Result<&'static str, Unsent<()>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> std::task::Poll<Result<(), Unsent<()>>> {
        self.script.polls.fetch_add(1, Ordering::SeqCst);
        std::task::Poll::Ready(match self.next {
            Next::Closed | Next::NewClosed => Err(Unsent::Closed {
                serial: self.next.serial(),
                request: None,
            }),
            _ => Ok(()),
        })
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        std::future::ready(match self.next {
            Next::Unwritten | Next::NewUnwritten => Err(Unsent::Closed {
                serial: self.next.serial(),
                request: Some(Box::new(req)),
            }),
            Next::Fails => {
                self.script.written.fetch_add(1, Ordering::SeqCst);
                Err(Unsent::Failed("reset".into()))
            }
            _ => {
                self.script.written.fetch_add(1, Ordering::SeqCst);
                Ok("answer")
            }
        })
    }
}

async fn send(script: &Script) -> Result<&'static str, BoxError> {
    let authority = Authority::from_static("10.0.0.1:80");
    send_on(script.clone(), authority, Request::new(()), BEGAN).await
}

fn is_connect_error(error: &BoxError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = cause {
        if e.is::<ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[tokio::test]
async fn closed_cached_connections_are_passed_over() {
    let script = Script::of([Next::Closed; 10].into_iter().chain([Next::Answers]));
    assert_eq!(send(&script).await.unwrap(), "answer");
    assert_eq!(script.written.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_a_cached_connection_handed_back_goes_out_on_another() {
    let script = Script::of([
        Next::Unwritten,
        Next::Closed,
        Next::Unwritten,
        Next::Unwritten,
        Next::Answers,
    ]);
    assert_eq!(send(&script).await.unwrap(), "answer");
    assert_eq!(script.written.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_new_connection_closing_at_once_fails_the_request_as_never_sent() {
    for first in [Next::NewClosed, Next::NewUnwritten] {
        let script = Script::of([first, Next::Answers]);
        let error = send(&script).await.unwrap_err();
        assert!(is_connect_error(&error), "{error}");
        let cause = error.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("never written"), "{cause}");
        assert_eq!(
            script.next.lock().unwrap().len(),
            1,
            "no other connection tried"
        );
    }
}

#[tokio::test]
async fn every_closed_cached_connection_is_passed_over_however_many() {
    // A burst opened 500 connections; the peer restarted since.
    let script = Script::of([Next::Closed; 500].into_iter().chain([Next::Answers]));
    assert_eq!(send(&script).await.unwrap(), "answer");
    assert_eq!(script.written.load(Ordering::SeqCst), 1);
    assert!(script.next.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_request_written_is_never_sent_again_and_its_connection_is_polled_to_close() {
    let script = Script::of([Next::Fails, Next::Answers]);
    let error = send(&script).await.unwrap_err();
    assert_eq!(error.to_string(), "reset");
    assert_eq!(script.written.load(Ordering::SeqCst), 1);
    // Polled before the call, and once more as the lease ends: on a real
    // `Connection` that poll finds it closed (its request given up
    // mid-way), which makes hyper-util's cache drop it instead of taking
    // it back.
    assert_eq!(script.polls.load(Ordering::SeqCst), 2);
}

#[test]
fn userinfo_is_left_out_of_the_endpoint() {
    let endpoint = |a: &'static str| endpoint_of(&Authority::from_static(a)).map(|a| a.to_string());
    assert_eq!(endpoint("u:s3cret@10.0.0.1:80").unwrap(), "10.0.0.1:80");
    assert_eq!(endpoint("a@b@users:8080").unwrap(), "users:8080");
    assert_eq!(endpoint("[::1]:80").unwrap(), "[::1]:80");
    assert_eq!(endpoint("users").unwrap(), "users");
    // Valid whole, but nothing valid after its userinfo: refused.
    assert!(endpoint("[a@b]").is_err());
}
