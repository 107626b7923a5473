//! gRPC answers whose status comes in trailers after their messages are
//! judged when the trailers arrive, not at the headers.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer, BreakerMetrics};
use mesh_core::BoxError;
use tower::{service_fn, Layer, ServiceExt};

/// A gRPC response body: one message, then what the test ends it with.
struct Stream(VecDeque<Frame<Bytes>>);

impl Body for Stream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A message followed by trailers carrying `status`, or by nothing.
fn answer(status: Option<&'static str>) -> Response<Stream> {
    let mut frames = VecDeque::from([Frame::data(Bytes::from_static(b"\0\0\0\0\x01m"))]);
    if let Some(code) = status {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().expect("value"));
        frames.push_back(Frame::trailers(trailers));
    }
    Response::builder()
        .header("content-type", "application/grpc")
        .body(Stream(frames))
        .expect("response")
}

fn layer() -> BreakerLayer {
    BreakerLayer::new(
        BreakerConfig::builder()
            .call_timeout(Duration::from_millis(100))
            .build()
            .expect("config"),
    )
}

fn metrics(layer: &BreakerLayer) -> BreakerMetrics {
    let key = BreakerKey::Authority(http::uri::Authority::from_static("greeter"));
    layer.handle(&key).expect("a breaker").metrics()
}

async fn call(
    layer: &BreakerLayer,
    status: Option<&'static str>,
) -> Response<mesh_breaker::ResponseBody<Stream>> {
    let upstream =
        service_fn(move |_req: Request<()>| async move { Ok::<_, BoxError>(answer(status)) });
    let req = Request::post("http://greeter/helloworld.Greeter/SayHello")
        .body(())
        .expect("request");
    layer.layer(upstream).oneshot(req).await.expect("answered")
}

#[tokio::test]
async fn a_status_in_trailers_counts_when_the_trailers_arrive() {
    let layer = layer();
    let response = call(&layer, Some("14")).await;
    let before = metrics(&layer);
    assert_eq!(
        (before.failed_total, before.successful_total),
        (0, 0),
        "nothing judged at the headers"
    );
    let read = response.into_body().collect().await.expect("read");
    assert_eq!(
        read.trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes()),
        Some(&b"14"[..])
    );
    assert_eq!(
        metrics(&layer).failed_total,
        1,
        "UNAVAILABLE in trailers is a failure"
    );

    let response = call(&layer, Some("5")).await;
    response.into_body().collect().await.expect("read");
    let after = metrics(&layer);
    assert_eq!(
        (after.failed_total, after.successful_total),
        (1, 1),
        "NOT_FOUND is an answer"
    );
}

#[tokio::test]
async fn a_body_without_a_status_fails_and_one_dropped_early_counts_neither_way() {
    let layer = layer();
    call(&layer, None)
        .await
        .into_body()
        .collect()
        .await
        .expect("read");
    assert_eq!(metrics(&layer).failed_total, 1, "no grpc-status: INTERNAL");

    drop(call(&layer, Some("14")).await);
    let m = metrics(&layer);
    assert_eq!(
        (m.failed_total, m.ignored_total),
        (1, 1),
        "the reader cancelled it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_read_past_the_call_timeout_is_not_a_timeout() {
    let layer = layer();
    let response = call(&layer, Some("0")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    response.into_body().collect().await.expect("read");
    let m = metrics(&layer);
    assert_eq!(
        (m.failed_total, m.successful_total),
        (0, 1),
        "the headers came in time"
    );
    drop(call(&layer, Some("0")).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics(&layer).failed_total,
        0,
        "a late drop is a cancellation"
    );
}

#[tokio::test]
async fn which_grpc_codes_count_is_the_configuration_s_choice() {
    let config: BreakerConfig =
        serde_json::from_str(r#"{ "grpc_failure_codes": [5], "call_timeout": "1s" }"#)
            .expect("config");
    let layer = BreakerLayer::new(config);
    call(&layer, Some("5"))
        .await
        .into_body()
        .collect()
        .await
        .expect("read");
    call(&layer, Some("14"))
        .await
        .into_body()
        .collect()
        .await
        .expect("read");
    let m = metrics(&layer);
    assert_eq!(
        (m.failed_total, m.successful_total),
        (1, 1),
        "NOT_FOUND fails, UNAVAILABLE not"
    );
    let refused = serde_json::from_str::<BreakerConfig>(r#"{ "grpc_failure_codes": [17] }"#)
        .expect_err("17 is no code");
    assert!(
        refused.to_string().contains("breaker.grpc_failure_codes"),
        "{refused}"
    );
}
