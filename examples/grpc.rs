//! A tonic client going through the mesh to a tonic server: the client's
//! unary call is resolved, balanced, guarded by the breaker and bounded by
//! the timeout like any other call. Its `grpc-status` is judged as gRPC
//! means it: UNAVAILABLE is retried elsewhere, UNKNOWN, DEADLINE_EXCEEDED,
//! RESOURCE_EXHAUSTED, INTERNAL and UNAVAILABLE count against the instance
//! (in the headers, or in the trailers after messages), application codes
//! never do. Request streams are sent as they are produced, the first
//! `replay_buffer` bytes kept for a retry.
//!
//! ```text
//! cargo run --example grpc
//! ```
//!
//! The messages are written with prost's derive (what tonic's codegen
//! would generate from a `.proto`), so no protoc is needed; the server is
//! tonic's own `Grpc` handler served over HTTP/2 by hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mesh::{MeshClient, MeshConfig};
use tonic_prost::ProstCodec;

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The path of `helloworld.Greeter`'s `SayHello`.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The server's one method.
#[derive(Clone)]
struct SayHello(SocketAddr);

impl tower::Service<tonic::Request<HelloRequest>> for SayHello {
    type Response = tonic::Response<HelloReply>;
    type Error = tonic::Status;
    type Future = std::future::Ready<Result<Self::Response, tonic::Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(HelloReply {
            message: format!("Hello {} from {}", req.into_inner().name, self.0),
        })))
    }
}

/// The greeter service, routed by path as tonic's codegen does.
#[derive(Clone)]
struct Greeter(SocketAddr);

impl tower::Service<http::Request<hyper::body::Incoming>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            if req.uri().path() != SAY_HELLO {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(SayHello(addr), req).await)
        })
    }
}

/// Starts a greeter on a loopback port (HTTP/2, as gRPC requires).
pub async fn serve() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(Greeter(addr)))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A mesh client that knows the greeters and speaks h2c to them.
pub async fn mesh_client(greeters: &[SocketAddr]) -> Result<MeshClient, mesh::core::BoxError> {
    let list: Vec<String> = greeters.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ greeter = [{}] }}
[services.greeter]
protocol = "h2c"
"#,
        list.join(", ")
    ))?;
    Ok(MeshClient::from_config(config).await?)
}

/// One SayHello through the mesh, as tonic's generated client would send it.
pub async fn say_hello(client: &MeshClient, name: &str) -> Result<String, mesh::core::BoxError> {
    let mut grpc =
        tonic::client::Grpc::with_origin(client.grpc_channel(), "http://greeter".parse()?);
    grpc.ready().await?;
    let reply = grpc
        .unary(
            tonic::Request::new(HelloRequest {
                name: name.to_owned(),
            }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

#[allow(dead_code)] // the test includes this file for its functions
#[tokio::main]
async fn main() -> Result<(), mesh::core::BoxError> {
    let greeters = [serve().await?, serve().await?];
    let client = mesh_client(&greeters).await?;
    for name in ["Ada", "Grace", "Barbara"] {
        println!("{}", say_hello(&client, name).await?);
    }
    let metrics = client.metrics();
    let greeter = metrics
        .routes
        .iter()
        .find(|r| r.route == "greeter")
        .ok_or("no greeter route")?;
    println!("through the mesh: {} calls", greeter.retry.requests);
    if greeter.retry.requests != 3 {
        return Err("the calls did not go through the mesh".into());
    }
    Ok(())
}
