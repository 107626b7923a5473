//! The leaf of every stack: hyper-util's pooled client, over plain TCP or
//! mesh-tls's connector, behind one type.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use mesh_tls::MeshConnector;
use tower::Service;

/// hyper-util's client with or without mutual TLS; both answer with the
/// same future type, so the stack above has one type either way.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<MeshConnector<HttpConnector>, Full<Bytes>>),
}

impl Service<Request<Full<Bytes>>> for Transport {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready (it pools internally).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        match self {
            Transport::Plain(client) => client.request(req),
            Transport::Tls(client) => client.request(req),
        }
    }
}
