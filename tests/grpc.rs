//! The tonic example's call passes through the mesh (asserted, not only
//! printed): a tonic client on the mesh's channel, two tonic servers on
//! 127.0.0.1, HTTP/2 by prior knowledge.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_calls_through_the_mesh_and_is_balanced() {
    let greeters = [
        grpc::serve().await.expect("greeter"),
        grpc::serve().await.expect("greeter"),
    ];
    let client = grpc::mesh_client(&greeters).await.expect("client");
    let mut answered_by = std::collections::HashSet::new();
    for i in 0..6 {
        let reply = grpc::say_hello(&client, &format!("caller-{i}"))
            .await
            .expect("the call succeeds");
        assert!(
            reply.starts_with(&format!("Hello caller-{i} from ")),
            "{reply}"
        );
        answered_by.insert(reply.rsplit(' ').next().map(str::to_owned));
    }
    assert_eq!(answered_by.len(), 2, "balanced over both greeters");
    let metrics = client.metrics();
    let route = metrics
        .routes
        .iter()
        .find(|r| r.route == "greeter")
        .expect("the greeter's own route");
    assert_eq!(route.retry.requests, 6, "every call went through the stack");
    let served: u64 = route.services[0].instances.iter().map(|i| i.requests).sum();
    assert_eq!(served, 6);
}
