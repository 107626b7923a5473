//! The hand-assembled tonic example works (asserted, not only printed):
//! tonic calls, spawned so their futures must be `Send`, go through retry,
//! discovery, balancer and breaker over h2c to two tonic servers on
//! 127.0.0.1.

#[path = "../examples/grpc_by_hand.rs"]
#[allow(dead_code)]
mod grpc_by_hand;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tonic_calls_go_through_the_hand_built_stack_and_are_balanced() {
    let greeters = [
        grpc_by_hand::greeter::serve().await.expect("greeter"),
        grpc_by_hand::greeter::serve().await.expect("greeter"),
    ];
    let stack = grpc_by_hand::channel(&greeters).expect("stack");
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let channel = stack.channel.clone();
            tokio::spawn(async move {
                let name = format!("caller-{i}");
                (name.clone(), grpc_by_hand::say_hello(channel, &name).await)
            })
        })
        .collect();
    let mut answered_by = std::collections::HashSet::new();
    for call in calls {
        let (name, reply) = call.await.expect("the task ends");
        let reply = reply.expect("the call succeeds");
        assert!(reply.starts_with(&format!("Hello {name} from ")), "{reply}");
        answered_by.insert(reply.rsplit(' ').next().map(str::to_owned));
    }
    assert_eq!(answered_by.len(), 2, "balanced over both greeters");
    let stats = stack.retry.stats();
    assert_eq!(stats.requests, 6, "every call went through the stack");
    assert_eq!(stats.retries, 0, "no call needed a retry");
}
