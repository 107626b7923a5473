use super::*;

const GREETER: &str = r#"{
  "methodConfig": [
    {
      "name": [{ "service": "helloworld.Greeter", "method": "SayHello" }],
      "timeout": "1.5s",
      "retryPolicy": {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", 8]
      }
    },
    {
      "name": [{ "service": "helloworld.Greeter" }],
      "hedgingPolicy": { "maxAttempts": 9, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"] }
    },
    { "name": [{}], "timeout": "10s" }
  ]
}"#;

#[test]
fn a_service_config_is_read_as_the_grpc_libraries_read_it() {
    let rules = parse(GREETER).expect("valid");
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0].path,
        PathMatch::Exact("/helloworld.Greeter/SayHello".into())
    );
    assert_eq!(rules[0].applied.timeout, Some(Duration::from_millis(1500)));
    let retry = rules[0].applied.call.as_ref().expect("retry policy");
    assert_eq!(retry.max_attempts(), 4);
    assert!(retry.retries_grpc(GrpcCode::UNAVAILABLE));
    assert!(retry.retries_grpc(GrpcCode::RESOURCE_EXHAUSTED));
    assert!(!retry.retries_grpc(GrpcCode::INTERNAL));
    assert_eq!(
        rules[1].path,
        PathMatch::Prefix("/helloworld.Greeter/".into())
    );
    let hedging = rules[1]
        .applied
        .call
        .as_ref()
        .and_then(CallPolicy::hedging)
        .expect("hedging");
    assert_eq!(hedging.max_attempts(), 5, "clamped as gRPC clamps");
    assert_eq!(hedging.delay(), Duration::from_millis(50));
    assert_eq!(rules[2].path, PathMatch::Any);
    assert_eq!(parse("{}").expect("empty"), Vec::new());
}

#[test]
fn bad_values_are_refused_saying_where_they_are() {
    let cases = [
        (
            r#"{"retryThrottling": {}}"#,
            "retryThrottling",
            "unknown field `retryThrottling`",
        ),
        (
            r#"{"methodConfig": [{"waitForReady": true}]}"#,
            "methodConfig[0].waitForReady",
            "unknown field",
        ),
        (
            r#"{"methodConfig": [{"timeout": "1.5"}]}"#,
            "methodConfig[0].timeout",
            "not a duration",
        ),
        (
            r#"{"methodConfig": [{"timeout": "0s"}]}"#,
            "methodConfig[0].timeout",
            "not a duration",
        ),
        (
            r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}}]}"#,
            "methodConfig[0].retryPolicy.maxAttempts",
            "at least 2",
        ),
        (
            r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}}]}"#,
            "methodConfig[0].retryPolicy.initialBackoff",
            "above 0",
        ),
        (
            r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": []}}]}"#,
            "methodConfig[0].retryPolicy.retryableStatusCodes",
            "at least one",
        ),
        (
            r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILIBLE"]}}]}"#,
            "methodConfig[0].retryPolicy.retryableStatusCodes",
            "not a gRPC code name",
        ),
        (
            r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2}}]}"#,
            "methodConfig[0].retryPolicy",
            "missing field",
        ),
        (
            r#"{"methodConfig": [{"hedgingPolicy": {"maxAttempts": 2}, "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}}]}"#,
            "methodConfig[0]",
            "cannot both",
        ),
        (
            r#"{"methodConfig": [{"name": [{"method": "Get"}]}]}"#,
            "methodConfig[0].name[0]",
            "needs its service",
        ),
        (
            r#"{"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "a.B"}]}]}"#,
            "methodConfig[1].name[0]",
            "earlier",
        ),
        ("not json", "", "expected"),
    ];
    for (text, at, why) in cases {
        let (found_at, found_why) = parse(text).expect_err(text);
        assert_eq!(found_at.trim_start_matches('.'), at, "{text}: {found_why}");
        assert!(found_why.contains(why), "{text}: {found_why}");
    }
}

#[test]
fn durations_are_read_in_protobuf_s_json_form() {
    assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(duration("0.000000001s"), Some(Duration::from_nanos(1)));
    assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
    for bad in [
        "",
        "s",
        "1",
        "1.5",
        "-1s",
        "1.0000000001s",
        "1ms",
        "1e3s",
        ".5s",
    ] {
        assert_eq!(duration(bad), None, "{bad:?}");
    }
}
