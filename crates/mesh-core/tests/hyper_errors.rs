//! hyper's errors are classified by what happened on a real connection:
//! a peer that closes without answering (an instance that died with the
//! request on the wire) is a reset, retryable for idempotent requests.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{FailureClassifier, FailureKind};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_connection_closed_before_the_answer_is_a_reset() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            // Read the request, then close without a response.
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let error = client
        .get(format!("http://{addr}/").parse().expect("uri"))
        .await
        .expect_err("no answer");
    assert_eq!(
        FailureClassifier::default().classify_error(&error),
        FailureKind::Reset,
        "{error:?}"
    );
}
