//! gRPC streams through `MeshClient`'s channel against tonic servers on
//! 127.0.0.1: request streams are sent as they are produced (never
//! gathered first), replayed for a retry from a bounded buffer, committed
//! past it and never failed for their size; a status sent in trailers
//! after messages counts against its instance when the trailers arrive.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use mesh::{MeshClient, MeshConfig};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

/// `store.Chunk`: a piece of an upload.
#[derive(Clone, PartialEq, prost::Message)]
struct Chunk {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// `store.Count`: how many bytes were received, or a message's length.
#[derive(Clone, PartialEq, prost::Message)]
struct Count {
    #[prost(uint64, tag = "1")]
    bytes: u64,
}

const PUT: &str = "/store.Store/Put";
const ECHO: &str = "/store.Store/Echo";
const LIST: &str = "/store.Store/List";

/// How an instance answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every method as it should.
    Good,
    /// Every call UNAVAILABLE, trailers-only, without reading the request.
    Unavailable,
    /// `List` sends a message, then UNAVAILABLE in its trailers.
    FailsAfterAMessage,
}

/// What an instance saw.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    /// Bytes of `Put` uploads received, over all calls.
    received: AtomicU64,
    /// Told when a `Put` call's first message arrives.
    first_message: Notify,
}

#[derive(Clone)]
struct Store {
    mode: Mode,
    seen: Arc<Seen>,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Store {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let store = self.clone();
        store.seen.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if store.mode == Mode::Unavailable {
                return Ok(Status::unavailable("draining").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Count, Chunk>::default());
            Ok(match req.uri().path() {
                PUT => grpc.client_streaming(store.put(), req).await,
                ECHO => grpc.streaming(echo(), req).await,
                LIST => grpc.server_streaming(store.list(), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

impl Store {
    /// `Put`: counts the bytes uploaded, telling when the first arrives.
    fn put(
        &self,
    ) -> impl tower::Service<
        tonic::Request<Streaming<Chunk>>,
        Response = tonic::Response<Count>,
        Error = Status,
        Future = impl Send,
    > {
        let seen = Arc::clone(&self.seen);
        tower::service_fn(move |req: tonic::Request<Streaming<Chunk>>| {
            let seen = Arc::clone(&seen);
            async move {
                let mut stream = req.into_inner();
                let mut total = 0u64;
                while let Some(chunk) = stream.message().await? {
                    if total == 0 {
                        seen.first_message.notify_one();
                    }
                    total += chunk.data.len() as u64;
                }
                seen.received.fetch_add(total, Ordering::SeqCst);
                Ok(tonic::Response::new(Count { bytes: total }))
            }
        })
    }

    /// `List`: one message, then OK, or UNAVAILABLE in the trailers.
    fn list(
        &self,
    ) -> impl tower::Service<
        tonic::Request<Chunk>,
        Response = tonic::Response<ReceiverStream<Result<Count, Status>>>,
        Error = Status,
        Future = impl Send,
    > {
        let fails = self.mode == Mode::FailsAfterAMessage;
        tower::service_fn(move |_req: tonic::Request<Chunk>| async move {
            let (tx, rx) = mpsc::channel(2);
            let _ = tx.send(Ok(Count { bytes: 1 })).await;
            if fails {
                let _ = tx.send(Err(Status::unavailable("lost its store"))).await;
            }
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// `Echo`: answers each chunk with its length, as it arrives.
fn echo() -> impl tower::Service<
    tonic::Request<Streaming<Chunk>>,
    Response = tonic::Response<ReceiverStream<Result<Count, Status>>>,
    Error = Status,
    Future = impl Send,
> + Send {
    tower::service_fn(|req: tonic::Request<Streaming<Chunk>>| async move {
        let mut stream = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = stream.message().await {
                let echoed = Count {
                    bytes: chunk.data.len() as u64,
                };
                if tx.send(Ok(echoed)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    })
}

/// A store on a loopback port (HTTP/2 only, as gRPC requires).
async fn serve(mode: Mode) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let store = Store {
        mode,
        seen: Arc::clone(&seen),
    };
    let addr = mesh_testkit::h2c::serve(store).await.expect("served");
    (addr, seen)
}

/// A mesh client for the `store` service at `instances`, with `extra`
/// keys in its `[services.store]` section.
async fn client(instances: &[SocketAddr], extra: &str) -> MeshClient {
    client_from("", instances, extra).await
}

/// [`client`], with `top` written before every table (top-level keys).
async fn client_from(top: &str, instances: &[SocketAddr], extra: &str) -> MeshClient {
    let list: Vec<String> = instances.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"{top}
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ store = [{}] }}
[services.store]
protocol = "h2c"
{extra}
"#,
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

async fn channel(client: &MeshClient) -> tonic::client::Grpc<mesh::GrpcChannel> {
    let mut grpc = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://store".parse().expect("uri"),
    );
    grpc.ready().await.expect("ready");
    grpc
}

/// Uploads `chunks` chunks of `size` bytes through `client`.
async fn upload(client: &MeshClient, chunks: usize, size: usize) -> Result<u64, Status> {
    let mut grpc = channel(client).await;
    let stream = tokio_stream::iter((0..chunks).map(move |_| Chunk {
        data: vec![7; size],
    }));
    let stored = grpc
        .client_streaming(
            tonic::Request::new(stream),
            PathAndQuery::from_static(PUT),
            ProstCodec::<Chunk, Count>::default(),
        )
        .await?;
    Ok(stored.into_inner().bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_reaches_the_server_as_it_is_sent() {
    let (store, seen) = serve(Mode::Good).await;
    let client = client(&[store], "").await;
    let (tx, rx) = mpsc::channel(1);
    let mut grpc = channel(&client).await;
    let call = tokio::spawn(async move {
        grpc.client_streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(PUT),
            ProstCodec::<Chunk, Count>::default(),
        )
        .await
    });
    tx.send(Chunk { data: vec![1; 10] }).await.expect("sent");
    // The stream is still open: a client that gathered it first would
    // send nothing until it ended.
    tokio::time::timeout(Duration::from_secs(20), seen.first_message.notified())
        .await
        .expect("the first message arrived before the stream ended");
    tx.send(Chunk { data: vec![2; 20] }).await.expect("sent");
    drop(tx);
    let stored = call.await.expect("joined").expect("stored");
    assert_eq!(stored.into_inner().bytes, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_larger_than_the_replay_buffer_succeeds() {
    let (store, seen) = serve(Mode::Good).await;
    let client = client(&[store], "").await;
    // 8 MiB, eight times the default replay buffer.
    let stored = upload(&client, 128, 64 * 1024).await.expect("stored");
    assert_eq!(stored, 8 << 20);
    assert_eq!(seen.received.load(Ordering::SeqCst), 8 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_is_answered_while_it_is_sent() {
    let (store, _) = serve(Mode::Good).await;
    let client = client(&[store], "").await;
    let (tx, rx) = mpsc::channel(1);
    let mut grpc = channel(&client).await;
    let response = grpc.streaming(
        tonic::Request::new(ReceiverStream::new(rx)),
        PathAndQuery::from_static(ECHO),
        ProstCodec::<Chunk, Count>::default(),
    );
    let send_first = tx.send(Chunk {
        data: vec![0; 1000],
    });
    let (response, sent) = tokio::join!(response, send_first);
    sent.expect("sent");
    let mut replies = response.expect("answered").into_inner();
    // Each reply arrives before the next chunk is sent: 2 MiB in all,
    // past the replay buffer.
    for size in std::iter::once(1000).chain(std::iter::repeat_n(64 * 1024, 32)) {
        if size != 1000 {
            tx.send(Chunk {
                data: vec![0; size],
            })
            .await
            .expect("sent");
        }
        let echoed = tokio::time::timeout(Duration::from_secs(20), replies.message())
            .await
            .expect("echoed while the stream is open")
            .expect("a reply")
            .expect("not the end");
        assert_eq!(echoed.bytes, size as u64);
    }
    drop(tx);
    assert!(replies.message().await.expect("ends well").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_call_within_the_replay_buffer_is_retried_elsewhere_whole() {
    let (bad, bad_seen) = serve(Mode::Unavailable).await;
    let (good, good_seen) = serve(Mode::Good).await;
    let client = client(&[bad, good], "").await;
    for _ in 0..10 {
        // 96 KiB each, within the default 1 MiB replay buffer.
        let stored = upload(&client, 3, 32 * 1024)
            .await
            .expect("retried elsewhere");
        assert_eq!(stored, 96 * 1024);
    }
    assert!(
        bad_seen.calls.load(Ordering::SeqCst) >= 1,
        "some went to the bad one first"
    );
    assert_eq!(good_seen.received.load(Ordering::SeqCst), 10 * 96 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_replay_buffer_a_streamed_call_is_committed_and_never_retried() {
    // The service's own buffer, and the file's for every service.
    for (top, own) in [
        ("", "replay_buffer = 1024\n"),
        ("replay_buffer = 1024\n", ""),
    ] {
        past_the_replay_buffer(top, own).await;
    }
}

async fn past_the_replay_buffer(top: &str, own: &str) {
    let (bad, bad_seen) = serve(Mode::Unavailable).await;
    let (good, good_seen) = serve(Mode::Good).await;
    // Round robin, so that half the calls meet the bad instance first.
    let extra = format!("{own}balance = {{ strategy = \"round_robin\" }}");
    let client = client_from(top, &[bad, good], &extra).await;
    let mut unavailable = 0;
    for _ in 0..10 {
        match upload(&client, 3, 32 * 1024).await {
            Ok(stored) => assert_eq!(stored, 96 * 1024),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
    }
    let bad_calls = bad_seen.calls.load(Ordering::SeqCst);
    assert!(bad_calls >= 1, "the bad instance was tried");
    assert_eq!(
        unavailable, bad_calls,
        "each call the bad one took failed, unretried"
    );
    assert_eq!(
        good_seen.received.load(Ordering::SeqCst),
        (10 - unavailable as u64) * 96 * 1024,
        "the good one got only its own calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_trailers_after_a_message_counts_against_its_instance() {
    let (bad, bad_seen) = serve(Mode::FailsAfterAMessage).await;
    let (good_a, _) = serve(Mode::Good).await;
    let (good_b, _) = serve(Mode::Good).await;
    let client = client(&[bad, good_a, good_b], "").await;
    let mut failed = 0;
    for _ in 0..60 {
        let mut grpc = channel(&client).await;
        let mut stream = grpc
            .server_streaming(
                tonic::Request::new(Chunk::default()),
                PathAndQuery::from_static(LIST),
                ProstCodec::<Chunk, Count>::default(),
            )
            .await
            .expect("headers")
            .into_inner();
        let first = stream.message().await.expect("a message");
        assert!(first.is_some());
        if let Err(status) = stream.message().await {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            failed += 1;
        }
    }
    // Judged at headers, the bad instance would look healthy and keep
    // its third (20 calls); judged at its trailers, it is steered away
    // from and its breaker opens.
    let seen = bad_seen.calls.load(Ordering::SeqCst);
    assert_eq!(failed, seen, "every call it took failed");
    assert!(seen <= 12, "the failing instance took {seen} of 60 calls");
    let metrics = client.metrics();
    let route = metrics
        .routes
        .iter()
        .find(|r| r.route == "store")
        .expect("route");
    let bad_key = format!("store/{bad}");
    let breaker = route
        .breakers
        .iter()
        .find(|b| b.key == bad_key)
        .expect("the bad instance's breaker");
    assert!(
        breaker.state != "closed" || breaker.failure_rate.is_some_and(|r| r > 0.0),
        "its failures were recorded: {breaker:?}"
    );
}
