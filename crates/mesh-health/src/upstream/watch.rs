//! Following one endpoint's gRPC health `Watch` stream: each streamed
//! status is the verdict at once, with no interval and no threshold (the
//! server is the authority on its own health, as in gRFC A17).
//!
//! Where the stream cannot be had, the endpoint is left to the checker's
//! periodic `Check`s, judged by the thresholds like any probe:
//!
//! - A server answering `UNIMPLEMENTED` has no `Watch` (A17: do not retry):
//!   `Check` from then on, for as long as the endpoint is tracked.
//! - A server refusing the call with `NOT_FOUND` (tonic-health's answer
//!   for a service it does not know, where the protocol streams
//!   `SERVICE_UNKNOWN`) is a verdict: the endpoint goes out at once; the
//!   stream is then asked for again like a broken one.
//! - Any other failure (refused, reset, the stream ended, nothing said
//!   within the timeout) is retried after a backoff that starts at the
//!   interval and doubles up to [`MAX_BACKOFF`] (or the interval, if
//!   longer), reset once a stream has said something; meanwhile `Check`s
//!   judge the endpoint, so a dead server still goes out after
//!   `unhealthy_threshold` failed ones.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::Endpoint;
use tonic::Code;

use super::grpc::{describe, serving};
use super::verdict::declare;
use super::Prober;

/// The longest wait before asking for a broken stream again (unless the
/// interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The stream is being asked for: no `Check` meanwhile (it is bounded by
/// the timeout).
const OPENING: u8 = 0;
/// The stream answers: it alone judges the endpoint.
const STREAMING: u8 = 1;
/// No stream: the checker's rounds `Check` the endpoint.
const POLLING: u8 = 2;

/// The task following one endpoint's `Watch` stream; dropping it stops it.
#[derive(Debug)]
pub(super) struct Follower {
    task: tokio::task::JoinHandle<()>,
    mode: Arc<AtomicU8>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a stream stopped being followed.
enum Ended {
    /// The server has no `Watch`: never ask again.
    Unsupported(String),
    /// Anything else: ask again later. `heard` when it had said something.
    Broken { error: String, heard: bool },
}

// === impl Follower ===

impl Follower {
    /// Starts following `endpoint`'s status of `service`.
    pub(super) fn spawn(prober: Arc<Prober>, endpoint: Endpoint, service: String) -> Self {
        let mode = Arc::new(AtomicU8::new(OPENING));
        let task = tokio::spawn(follow(prober, endpoint, service, Arc::clone(&mode)));
        Follower { task, mode }
    }

    /// Whether the checker's rounds must `Check` the endpoint now.
    pub(super) fn polling(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == POLLING
    }
}

async fn follow(prober: Arc<Prober>, endpoint: Endpoint, service: String, mode: Arc<AtomicU8>) {
    let interval = prober.config.interval;
    let mut backoff = interval;
    loop {
        mode.store(OPENING, Ordering::Relaxed);
        let ended = follow_once(&prober, &endpoint, &service, &mode).await;
        mode.store(POLLING, Ordering::Relaxed);
        match ended {
            Ended::Unsupported(error) => {
                tracing::info!(service = %prober.service, %endpoint, %error, "no gRPC health Watch: judged by Check from now on");
                return;
            }
            Ended::Broken { error, heard } => {
                tracing::debug!(service = %prober.service, %endpoint, %error, "gRPC health Watch broken: judged by Check until it is back");
                if heard {
                    backoff = interval;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF.max(interval));
            }
        }
    }
}

/// Opens one `Watch` stream and follows it until it ends.
async fn follow_once(
    prober: &Prober,
    endpoint: &Endpoint,
    service: &str,
    mode: &AtomicU8,
) -> Ended {
    let broken = |error: String, heard: bool| Ended::Broken { error, heard };
    let mut client = match prober.health_client(endpoint) {
        Ok(client) => client,
        Err(error) => return broken(error, false),
    };
    let request = prober.health_request(endpoint.clone(), service);
    let timeout = prober.config.timeout;
    // Opened means answered: a server that accepts the call and says
    // nothing must not hold the endpoint unjudged.
    let opened = tokio::time::timeout(timeout, async {
        let mut stream = client.watch(request).await?.into_inner();
        let first = stream.message().await?;
        Ok::<_, tonic::Status>((stream, first))
    })
    .await;
    let (mut stream, mut next) = match opened {
        Err(_) => return broken(format!("no status within {timeout:?}"), false),
        Ok(Err(status)) if status.code() == Code::Unimplemented => {
            return Ended::Unsupported(describe(&status))
        }
        Ok(Err(status)) if status.code() == Code::NotFound => {
            // The protocol streams SERVICE_UNKNOWN for a service the server
            // does not know; some servers (tonic-health) refuse the call
            // with NOT_FOUND instead. Either is a verdict: out at once, not
            // left in rotation until the next round's Check.
            let unknown = format!(
                "gRPC health Watch of {}: service unknown ({})",
                endpoint.address(),
                describe(&status)
            );
            declare(prober, endpoint, Err(unknown));
            return broken(describe(&status), false);
        }
        Ok(Err(status)) => return broken(describe(&status), false),
        Ok(Ok(opened)) => opened,
    };
    mode.store(STREAMING, Ordering::Relaxed);
    loop {
        let Some(response) = next else {
            return broken("the server ended the stream".to_owned(), true);
        };
        let verdict = serving(response.status)
            .map_err(|answer| format!("gRPC health Watch of {}: {answer}", endpoint.address()));
        declare(prober, endpoint, verdict);
        next = match stream.message().await {
            Ok(next) => next,
            Err(status) => return broken(describe(&status), true),
        };
    }
}
