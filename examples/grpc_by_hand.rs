//! tonic without the facade: the layers assembled by hand (retry,
//! discovery, balancer, breaker) over hyper-util's client speaking HTTP/2
//! by prior knowledge (h2c), handed to a tonic client as its channel.
//!
//! ```text
//! cargo run --example grpc_by_hand
//! ```
//!
//! Two things make the stack a channel tonic accepts (any
//! `T: tonic::client::GrpcService<tonic::body::Body>`):
//!
//! - The request body. tonic sends a streaming `tonic::body::Body`, read
//!   once; the retry layer needs a body it can send again
//!   (`mesh_retry::ReplayableBody`). [`replayable`] wraps it in a
//!   `ReplayBody`, which keeps what it sends (up to a cap) for a retry.
//! - The error. Every layer answers `BoxError`
//!   (`Box<dyn Error + Send + Sync>`), which tonic takes as it is: do not
//!   convert it. See [`GreeterChannel`] for the `implementation of From is
//!   not general enough` error and what causes it.
//!
//! The greeters (tonic servers on 127.0.0.1) and their messages are the
//! ones of the `grpc` example, `examples/grpc.rs`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_balance::BalanceLayer;
use mesh_breaker::{BreakerConfig, BreakerLayer, BreakerScope};
use mesh_core::BoxError;
use mesh_discover::{DiscoverLayer, StaticRegistry};
use mesh_retry::{ReplayBody, RetryConfig, RetryLayer};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;

#[path = "grpc.rs"]
#[allow(dead_code)] // only the greeter server and its messages are used here
pub mod greeter;

use greeter::{HelloReply, HelloRequest};

/// The most bytes of a request body kept for a retry; a larger message is
/// sent once and never retried.
const MAX_REPLAY: usize = 64 * 1024;

/// hyper-util's pooled client, sending the replayable bodies.
type H2c = Client<HttpConnector, ReplayBody<tonic::body::Body>>;

/// The stack, outermost layer first: tonic's body made replayable, then
/// retry, discovery, balancer, breaker, and the h2c client.
///
/// Its error is `BoxError`, named by each layer's `type Error = BoxError`.
/// That is what makes it compile where tonic's futures must be `Send`
/// (`tokio::spawn`). The error "implementation of `From` is not general
/// enough" ("`Box<dyn Error + Send + Sync + 'static>` must implement
/// `From<Box<dyn Error + Send + Sync + '0>>`, for any lifetime `'0`", or
/// the same of `FnOnce`) comes when the type handed to tonic *carries*
/// `BoxError` in its own type, as a closure's or fn pointer's argument or
/// result, or as a type parameter:
///
/// - `tower::service_fn(|req| async move { ...; Ok::<_, BoxError>(res) })`
///   as the adapter,
/// - `.map_err(|e: BoxError| ...)` or `.map_err(f as fn(BoxError) -> _)`,
///   whatever it maps to (`tonic::Status` too),
/// - `BoxCloneSyncService<Request<_>, Response<_>, BoxError>`.
///
/// Checking that a spawned future is `Send`, the compiler forgets the
/// `'static` of `dyn Error + Send + Sync + 'static` inside such a type
/// (rust-lang/rust#64552), then cannot prove the `Into<BoxError>` that
/// tonic's `GrpcService` asks for. The fix: no conversion at all (the
/// layers' errors are already what tonic wants); or, where you need an
/// adapter, a named type, `struct Adapter<S>(S)` with
/// `impl Service<..> for Adapter<S> { type Error = BoxError; .. }`; and
/// map requests with functions whose types say nothing of errors, as
/// [`replayable`] does.
pub type GreeterChannel = tower::util::MapRequest<
    mesh_retry::Retry<
        mesh_discover::DiscoverService<mesh_balance::Balance<mesh_breaker::Breaker<H2c>>>,
    >,
    fn(Request<tonic::body::Body>) -> Request<ReplayBody<tonic::body::Body>>,
>;

/// tonic's request, its body made replayable for the retry layer.
fn replayable(req: Request<tonic::body::Body>) -> Request<ReplayBody<tonic::body::Body>> {
    req.map(|body| ReplayBody::new(body, MAX_REPLAY))
}

/// The channel, and the retry layer (to read its counters).
pub struct Greeters {
    /// What tonic's clients send through.
    pub channel: GreeterChannel,
    /// The stack's retry layer.
    pub retry: RetryLayer,
}

/// The stack over h2c to `greeters`, listed as service `greeter`.
pub fn channel(greeters: &[SocketAddr]) -> Result<Greeters, BoxError> {
    let registry = StaticRegistry::builder()
        .service("greeter", greeters.iter().map(SocketAddr::to_string))
        .build()?;
    // gRPC calls are POSTs, yet retried when answered UNAVAILABLE (the
    // server did not process them) or never sent.
    let retry = RetryLayer::new(RetryConfig::builder().max_retries(2).build()?);
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(5)
            .build()?,
    );
    // Nagle's algorithm off: small gRPC frames would otherwise wait for
    // acknowledgements.
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let h2c: H2c = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(tcp);
    let channel = ServiceBuilder::new()
        .map_request(replayable as fn(_) -> _)
        .layer(retry.clone())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(breaker)
        .service(h2c);
    Ok(Greeters { channel, retry })
}

/// One SayHello over any channel a tonic generated client accepts (these
/// bounds are the generated `GreeterClient<T>`'s).
pub async fn say_hello<T>(channel: T, name: &str) -> Result<String, BoxError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<BoxError> + Send,
{
    let mut grpc = tonic::client::Grpc::with_origin(channel, "http://greeter".parse()?);
    grpc.ready().await.map_err(Into::into)?;
    let reply = grpc
        .unary(
            tonic::Request::new(HelloRequest {
                name: name.to_owned(),
            }),
            PathAndQuery::from_static("/helloworld.Greeter/SayHello"),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

#[allow(dead_code)] // the test includes this file for its functions
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let greeters = [greeter::serve().await?, greeter::serve().await?];
    let Greeters { channel, retry } = channel(&greeters)?;
    // Spawned, so each call's future must be Send: the error type matters.
    let calls: Vec<_> = ["Ada", "Grace", "Barbara"]
        .into_iter()
        .map(|name| tokio::spawn(say_hello(channel.clone(), name)))
        .collect();
    for call in calls {
        println!("{}", call.await??);
    }
    let stats = retry.stats();
    println!("through the stack: {} calls", stats.requests);
    if stats.requests != 3 {
        return Err("the calls did not go through the stack".into());
    }
    Ok(())
}
