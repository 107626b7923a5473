//! The mesh's gRPC behaviour against an implementation that is not tonic:
//! gRPC's own C core, as Debian's python3-grpcio serves it
//! (`peers/grpc_peer.py`, one process per instance on 127.0.0.1, h2c).
//!
//! Every call goes through a `MeshClient` built from a configuration file,
//! by a tonic client on `client.grpc_channel()`, as an application would
//! send it. What is checked is what gRPC's reference implementation does
//! on the wire: its trailers-only UNAVAILABLE is retried elsewhere and
//! held against the instance; a status in trailers after a message fails
//! the call unretried (it was committed) and still counts against the
//! instance; its `grpc-retry-pushback-ms` sets the wait before the retry,
//! and a negative one stops the retries; a hedged copy beats a slow
//! instance, whose copy the C core sees cancelled; a call's `grpc-timeout`
//! bounds it and reaches the server as its deadline. The peers also report
//! the `grpc-previous-rpc-attempts` each attempt carried, as the C core
//! parsed it.
//!
//! The peer needs Debian's python3-grpcio: scripts/test.sh installs it.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use mesh::{MeshClient, MeshConfig};
use tonic_prost::ProstCodec;

use grpc::{HelloReply, HelloRequest, SAY_HELLO};

const SAY_HELLOS: &str = "/helloworld.Greeter/SayHellos";

/// What the tests say when the peer cannot run.
const NEEDS_GRPCIO: &str =
    "the gRPC interop peer needs Debian's python3-grpcio (scripts/test.sh installs it)";

/// How long a slow peer takes: far longer than any call that did not wait.
const SLOW: Duration = Duration::from_secs(2);
/// A call that did not wait for a slow peer took well under this, even on
/// a loaded two-core machine.
const QUICK: Duration = Duration::from_secs(1);

/// How a peer answers (the modes of `peers/grpc_peer.py`).
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Every call as it should.
    Good,
    /// Every call UNAVAILABLE before any message: trailers-only.
    Unavailable,
    /// As `Good`, after this long (or until the client cancels).
    Slow(Duration),
    /// Calls 1, 3, 5... UNAVAILABLE trailers-only with this
    /// `grpc-retry-pushback-ms`; calls 2, 4, 6... as `Good`.
    Pushback(i64),
    /// `SayHellos` sends one message, then UNAVAILABLE in its trailers.
    FailingStream,
}

impl Mode {
    fn args(self) -> Vec<String> {
        match self {
            Mode::Good => vec!["good".to_owned()],
            Mode::Unavailable => vec!["unavailable".to_owned()],
            Mode::Slow(after) => vec!["slow".to_owned(), after.as_secs_f64().to_string()],
            Mode::Pushback(ms) => vec!["pushback".to_owned(), ms.to_string()],
            Mode::FailingStream => vec!["failing_stream".to_owned()],
        }
    }
}

/// One call a peer received, as it reported it.
#[derive(Debug)]
struct Received {
    /// `SayHello` or `SayHellos`.
    method: String,
    /// When it arrived, on the peer's monotonic clock.
    at: Duration,
    /// Its `grpc-previous-rpc-attempts`, if it carried one.
    previous_attempts: Option<u32>,
    /// What its deadline left when it arrived, if it had one.
    remaining: Option<Duration>,
    /// How its handler ended: running, answered, aborted or cancelled.
    ended: String,
}

/// A grpcio peer process on a loopback port; killed when dropped.
struct Peer {
    addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === impl Peer ===

impl Peer {
    /// Starts one peer per mode, all at once (each takes a moment to
    /// import grpc), and waits for their ports.
    fn start_all(modes: &[Mode]) -> Vec<Peer> {
        tokio::task::block_in_place(|| Peer::start_blocking(modes))
    }

    /// [`Peer::start_all`], blocking the thread. A peer whose test panics
    /// before it is ready exits too: its stdin closes with its `Child`.
    fn start_blocking(modes: &[Mode]) -> Vec<Peer> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/grpc_peer.py");
        let children: Vec<Child> = modes
            .iter()
            .map(|mode| {
                Command::new(python())
                    .arg("-u")
                    .arg(script)
                    .arg("0")
                    .args(mode.args())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{NEEDS_GRPCIO}: cannot run {}: {e}", python()))
            })
            .collect();
        children.into_iter().map(Peer::ready).collect()
    }

    /// Starts one peer.
    fn start(mode: Mode) -> Peer {
        Peer::start_all(&[mode]).pop().expect("one peer")
    }

    /// Reads the port `child` listens on from its first line.
    fn ready(mut child: Child) -> Peer {
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let port = stdout
            .read_line(&mut line)
            .ok()
            .and_then(|_| line.trim().strip_prefix("port ")?.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!(
                "the gRPC peer did not say its port (its first line: {line:?}; its error is above)"
            );
        };
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdin,
            stdout,
        }
    }

    /// Every call the peer has received so far, in order of arrival.
    fn received(&mut self) -> Vec<Received> {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "calls").expect("the peer reads its stdin");
            self.stdin.flush().expect("flushed");
            let mut calls = Vec::new();
            loop {
                let mut line = String::new();
                let read = self.stdout.read_line(&mut line).expect("the peer answers");
                assert!(read > 0, "the gRPC peer at {} exited", self.addr);
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    ["end"] => return calls,
                    ["call", method, at, previous, remaining, ended] => calls.push(Received {
                        method: (*method).to_owned(),
                        at: Duration::from_secs_f64(at.parse().expect("seconds")),
                        previous_attempts: previous.parse().ok(),
                        remaining: remaining.parse().ok().map(Duration::from_secs_f64),
                        ended: (*ended).to_owned(),
                    }),
                    _ => panic!("the gRPC peer said {line:?}"),
                }
            }
        })
    }

    /// How many calls the peer has received.
    fn calls(&mut self) -> usize {
        self.received().len()
    }

    /// What this peer's `SayHello` answers `name`.
    fn greeting(&self, name: &str) -> String {
        format!("Hello {name} from {}", self.addr.port())
    }
}

/// A Python that can import grpc: the one on PATH, else Debian's own (a
/// pyenv or virtualenv on PATH does not see Debian's packages).
fn python() -> &'static str {
    static PYTHON: OnceLock<&'static str> = OnceLock::new();
    PYTHON.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|python| {
                Command::new(python)
                    .args(["-c", "import grpc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .unwrap_or_else(|| panic!("{NEEDS_GRPCIO}: no python3 here can import grpc"))
    })
}

/// A mesh client for the `greeter` service at `peers` (h2c), with `extra`
/// after `protocol` in `[services.greeter]`: more of its keys, then other
/// tables (`[retry]`).
async fn mesh(peers: &[&Peer], extra: &str) -> MeshClient {
    let list: Vec<String> = peers.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let text = format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ greeter = [{}] }}
[services.greeter]
protocol = "h2c"
{extra}
"#,
        list.join(", ")
    );
    let config = MeshConfig::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    MeshClient::from_config(config).await.expect("client")
}

async fn channel(client: &MeshClient) -> tonic::client::Grpc<mesh::GrpcChannel> {
    let mut grpc = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://greeter".parse().expect("uri"),
    );
    grpc.ready().await.expect("ready");
    grpc
}

/// One `SayHello` through the mesh, with `timeout` as its `grpc-timeout`:
/// the greeting or the status, and how long it took.
async fn say_hello(
    client: &MeshClient,
    name: &str,
    timeout: Option<Duration>,
) -> (Result<String, tonic::Status>, Duration) {
    let mut grpc = channel(client).await;
    let mut request = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let started = Instant::now();
    let reply = grpc
        .unary(
            request,
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await;
    (reply.map(|r| r.into_inner().message), started.elapsed())
}

/// One `SayHellos` through the mesh, read to its end: the messages that
/// arrived, and the status it ended with.
async fn say_hellos(client: &MeshClient, name: &str) -> (Vec<String>, Result<(), tonic::Status>) {
    let mut grpc = channel(client).await;
    let answer = grpc
        .server_streaming(
            tonic::Request::new(HelloRequest {
                name: name.to_owned(),
            }),
            PathAndQuery::from_static(SAY_HELLOS),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await;
    let mut stream = match answer {
        Ok(answer) => answer.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => messages.push(reply.message),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}

/// The breaker snapshot of `peer` on the greeter's route: its state and
/// failure rate.
fn breaker_of(client: &MeshClient, peer: &Peer) -> (String, Option<f64>) {
    let key = format!("greeter/{}", peer.addr);
    let metrics = client.metrics();
    let route = metrics
        .routes
        .iter()
        .find(|r| r.route == "greeter")
        .expect("the greeter's route");
    let breaker = route
        .breakers
        .iter()
        .find(|b| b.key == key)
        .unwrap_or_else(|| panic!("no breaker {key}: {:?}", route.breakers));
    (breaker.state.clone(), breaker.failure_rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_unavailable_from_grpcio_is_retried_elsewhere_and_steered_away_from() {
    let [mut bad, mut good_a, mut good_b]: [Peer; 3] =
        Peer::start_all(&[Mode::Unavailable, Mode::Good, Mode::Good])
            .try_into()
            .ok()
            .expect("three peers");
    let client = mesh(&[&bad, &good_a, &good_b], "").await;
    for i in 0..60 {
        let name = format!("caller-{i}");
        let (reply, _) = say_hello(&client, &name, None).await;
        let reply = reply.unwrap_or_else(|s| panic!("call {i}: UNAVAILABLE is retried: {s:?}"));
        assert!(
            reply == good_a.greeting(&name) || reply == good_b.greeting(&name),
            "{reply}"
        );
    }
    // Round robin would give it 20 of the 60 first attempts; as a failing
    // instance it gets a handful before its breaker or the balancer's
    // latency steers the calls away.
    let bad_calls = bad.received();
    assert!(
        (1..=12).contains(&bad_calls.len()),
        "the unavailable instance took {} of 60 calls",
        bad_calls.len()
    );
    assert!(
        bad_calls
            .iter()
            .all(|c| c.method == "SayHello" && c.ended == "aborted"),
        "{bad_calls:?}"
    );
    // Each was a first attempt, retried once on a good instance, which the
    // C core was told with grpc-previous-rpc-attempts: 1.
    assert!(
        bad_calls.iter().all(|c| c.previous_attempts.is_none()),
        "{bad_calls:?}"
    );
    let good_calls: Vec<Received> = good_a
        .received()
        .into_iter()
        .chain(good_b.received())
        .collect();
    assert_eq!(good_calls.len(), 60, "one answered attempt per call");
    let retries = good_calls
        .iter()
        .filter(|c| c.previous_attempts == Some(1))
        .count();
    assert_eq!(retries, bad_calls.len(), "{good_calls:?}");
    // Its breaker held each against it: all failed, or opened by them
    // (a new state's window starts empty).
    let (state, failure_rate) = breaker_of(&client, &bad);
    assert!(
        state != "closed" || failure_rate == Some(100.0),
        "{state} {failure_rate:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_in_grpcio_s_trailers_after_a_message_fails_the_call_unretried_and_counts() {
    let [mut bad, mut good_a, mut good_b]: [Peer; 3] =
        Peer::start_all(&[Mode::FailingStream, Mode::Good, Mode::Good])
            .try_into()
            .ok()
            .expect("three peers");
    let client = mesh(&[&bad, &good_a, &good_b], "").await;
    let mut failed = 0;
    for i in 0..60 {
        let name = format!("caller-{i}");
        let (messages, ended) = say_hellos(&client, &name).await;
        match ended {
            Ok(()) => assert_eq!(messages.len(), 3, "{messages:?}"),
            Err(status) => {
                // The message arrived, then the status: the call was
                // committed to this instance and is not retried.
                assert_eq!(messages, [bad.greeting(&name)]);
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "lost its greeting", "{status:?}");
                failed += 1;
            }
        }
    }
    let bad_calls = bad.received();
    assert!(
        bad_calls
            .iter()
            .all(|c| c.method == "SayHellos" && c.ended == "aborted"),
        "{bad_calls:?}"
    );
    assert_eq!(
        failed,
        bad_calls.len(),
        "every call it took failed, unretried"
    );
    // Judged at the headers (HTTP 200, no grpc-status), it would look
    // healthy and keep its third (20 calls); judged at its trailers, it is
    // steered away from.
    assert!(
        (1..=12).contains(&failed),
        "the failing instance took {failed} of 60 calls"
    );
    let good_calls: Vec<Received> = good_a
        .received()
        .into_iter()
        .chain(good_b.received())
        .collect();
    assert_eq!(good_calls.len() + failed, 60, "no call was sent twice");
    assert!(
        good_calls
            .iter()
            .chain(&bad_calls)
            .all(|c| c.previous_attempts.is_none()),
        "no attempt was a retry"
    );
    let (state, failure_rate) = breaker_of(&client, &bad);
    assert!(
        state != "closed" || failure_rate.is_some_and(|r| r > 0.0),
        "its failures were recorded: {state} {failure_rate:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_s_pushback_is_the_wait_before_the_retry() {
    let mut peer = Peer::start(Mode::Pushback(300));
    let client = mesh(&[&peer], "[retry]\nmax_retries = 1").await;
    for i in 0..3 {
        let name = format!("caller-{i}");
        let (reply, took) = say_hello(&client, &name, None).await;
        assert_eq!(reply.expect("the retry is answered"), peer.greeting(&name));
        // The backoff alone (50 ms, full jitter) would retry sooner.
        assert!(
            (Duration::from_millis(300)..Duration::from_secs(2)).contains(&took),
            "call {i} took {took:?}"
        );
    }
    let calls = peer.received();
    assert_eq!(calls.len(), 6, "each call and its one retry: {calls:?}");
    for pair in calls.chunks(2) {
        let (pushed_back, retry) = (&pair[0], &pair[1]);
        assert_eq!(pushed_back.ended, "aborted");
        assert_eq!(retry.ended, "answered");
        assert_eq!(pushed_back.previous_attempts, None);
        assert_eq!(retry.previous_attempts, Some(1));
        let waited = retry.at - pushed_back.at;
        assert!(
            (Duration::from_millis(300)..QUICK).contains(&waited),
            "the retry came {waited:?} after the pushback of 300 ms"
        );
        // Each attempt tells the server the deadline as it leaves (the
        // route's, two per-attempt timeouts): the retry has less left.
        let (first, second) = (pushed_back.remaining, retry.remaining);
        let (first, second) = (first.expect("a deadline"), second.expect("a deadline"));
        assert!(
            second + Duration::from_millis(250) < first,
            "{first:?} left at the first attempt, {second:?} at the retry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_grpcio_pushback_stops_the_retries() {
    let mut peer = Peer::start(Mode::Pushback(-1));
    let client = mesh(&[&peer], "[retry]\nmax_retries = 2").await;
    let (reply, took) = say_hello(&client, "Ada", None).await;
    let status = reply.expect_err("the server asked not to be retried");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "pushing back", "{status:?}");
    assert!(took < QUICK, "{took:?}");
    assert_eq!(
        peer.calls(),
        1,
        "one attempt, though two retries were allowed"
    );
    // The next call is the server's second: answered, so the refusal above
    // was the pushback's, not an exhausted budget's.
    let (reply, _) = say_hello(&client, "Grace", None).await;
    assert_eq!(reply.expect("answered"), peer.greeting("Grace"));
    assert_eq!(peer.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_copy_beats_a_slow_grpcio_instance_which_sees_its_copy_cancelled() {
    let [mut slow, mut good]: [Peer; 2] = Peer::start_all(&[Mode::Slow(SLOW), Mode::Good])
        .try_into()
        .ok()
        .expect("two peers");
    // Round robin, so the slow instance gets its share of first copies
    // (by latency, the balancer would soon stop sending it any).
    let client = mesh(
        &[&slow, &good],
        "balance = { strategy = \"round_robin\" }\n\
         [retry]\nhedging = { max_attempts = 2, delay = \"50ms\" }",
    )
    .await;
    for i in 0..6 {
        let name = format!("caller-{i}");
        let (reply, took) = say_hello(&client, &name, None).await;
        assert_eq!(reply.expect("answered"), good.greeting(&name));
        assert!(took < QUICK, "call {i} took {took:?}");
    }
    let started = Instant::now();
    let slow_calls = loop {
        let calls = slow.received();
        if calls.iter().all(|c| c.ended == "cancelled") {
            break calls;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow copies were never cancelled: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first_copies = slow_calls
        .iter()
        .filter(|c| c.previous_attempts.is_none())
        .count();
    assert!(first_copies >= 1, "round robin sent it first copies");
    // Each first copy it sat on was hedged on the good instance, which was
    // told one attempt went before.
    let hedged = good
        .received()
        .iter()
        .filter(|c| c.previous_attempts == Some(1))
        .count();
    assert!(
        hedged >= first_copies,
        "{hedged} hedged copies, {slow_calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_bounds_a_call_to_a_slow_grpcio_instance_and_reaches_it() {
    let mut slow = Peer::start(Mode::Slow(SLOW));
    let client = mesh(&[&slow], "").await;
    let (reply, took) = say_hello(&client, "Ada", Some(Duration::from_millis(200))).await;
    let status = reply.expect_err("past its deadline");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        (Duration::from_millis(200)..QUICK).contains(&took),
        "{took:?} {status:?}"
    );
    let calls = slow.received();
    assert_eq!(calls.len(), 1, "no retry past the deadline: {calls:?}");
    // The C core read the call's grpc-timeout as its deadline.
    let remaining = calls[0].remaining.expect("a deadline");
    assert!(remaining <= Duration::from_millis(200), "{remaining:?}");
}
