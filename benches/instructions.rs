//! Instructions per request, counted by valgrind's callgrind: raw hyper,
//! tower's retry + timeout (the anchor), tower-mesh assembled by hand
//! (over raw hyper's client, and over `EndpointClient`: `by-hand-EndpointClient`),
//! `MeshClient` (round robin, as by hand) and `MeshClient` with every
//! setting its default (`MeshClient-defaults`: power of two choices),
//! each sending [`CALLS`] requests one after the other to
//! four loopback instances, client and servers on one current-thread
//! runtime.
//!
//! Instruction counts do not vary with the machine's load the way time
//! does, so they rank changes a few percent apart that the closed-loop
//! bench (`healthy`) cannot tell from its noise. They are not time: a
//! cache miss is one instruction. Only the measured calls are counted
//! (callgrind collects inside [`measured_calls`] only): every stack's
//! count includes the same servers' work, so differences between stacks
//! are the stacks' own; the kernel's work is not counted.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench instructions
//! ```
//!
//! Run that way, it runs itself once per stack under
//! `valgrind --tool=callgrind` and prints a table; without valgrind on
//! the `PATH` it says so and measures nothing. Stacks can be named as
//! arguments, each word naming every stack whose name contains it
//! (`MeshClient` names both `MeshClient` stacks); `--stack=<name>` runs
//! one stack uncounted, as each counted run does.

#[path = "healthy_stacks.rs"]
mod stacks;

use std::net::SocketAddr;
use std::process::Command;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::prelude::*;
use mesh_testkit::{anchors, Backend, Behavior};
use tower::Service;

/// Requests counted per stack.
const CALLS: usize = 2_000;
/// Requests sent first, uncounted: connections, discovery, estimates.
const WARM_UP: usize = 500;
/// Loopback instances of the service.
const INSTANCES: usize = 4;
/// How a run's line giving a future's size starts, for the counting
/// process to pass on.
const FUTURE_SIZE: &str = "future size:";
/// Seeds the random draws of the counted calls.
const RANDOM_SEED: u64 = 19;

/// The stacks, by the name each run is given.
const STACKS: [&str; 6] = [
    "raw",
    "tower-retry-timeout",
    "by-hand",
    "by-hand-EndpointClient",
    "MeshClient",
    "MeshClient-defaults",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without `--bench`.
        return;
    }
    match args.iter().find_map(|a| a.strip_prefix("--stack=")) {
        Some(stack) => run_one(stack),
        None => count_each(&args),
    }
}

/// Runs every stack asked for under callgrind, and prints the counts.
fn count_each(args: &[String]) {
    let named: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let chosen = STACKS
        .into_iter()
        .filter(|s| named.is_empty() || named.iter().any(|n| s.contains(n.as_str())));
    let me = std::env::current_exe().expect("this bench's path");
    let mut rows = Vec::new();
    for stack in chosen {
        let output = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--toggle-collect=*measured_calls*",
                "--callgrind-out-file=/dev/null",
            ])
            .arg(&me)
            .args(["--bench", &format!("--stack={stack}")])
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                eprintln!(
                    "valgrind could not be started ({e}): install valgrind to count instructions"
                );
                return;
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        // A run that failed part way still has a count, of part of its
        // calls; a count of nothing means the counted function was not
        // found.
        let counted = collected(&stderr).filter(|n| *n > 0);
        let Some(collected) = counted.filter(|_| output.status.success()) else {
            eprintln!("{stack}: no whole count ({}):\n{stderr}", output.status);
            std::process::exit(1);
        };
        for line in stderr.lines().filter(|l| l.starts_with(FUTURE_SIZE)) {
            eprintln!("{stack}: {line}");
        }
        let per_call = collected as f64 / CALLS as f64;
        eprintln!("{stack}: {per_call:.0} instructions per request");
        rows.push((stack, per_call));
    }
    print_table(&rows);
}

/// The instructions callgrind collected, from its summary line
/// (`==pid== Collected : 123`).
fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let (_, count) = line.split_once("Collected :")?;
        count.trim().parse().ok()
    })
}

/// Prints each stack's count, and what it adds to raw hyper's.
fn print_table(rows: &[(&str, f64)]) {
    let raw = rows.iter().find(|(s, _)| *s == "raw").map(|(_, n)| *n);
    println!("| stack | instructions per request | added to raw hyper | ratio |");
    println!("|---|---|---|---|");
    for (stack, n) in rows {
        match raw {
            Some(raw) => println!("| {stack} | {n:.0} | {:+.0} | {:.2}x |", n - raw, n / raw),
            None => println!("| {stack} | {n:.0} | | |"),
        }
    }
}

/// Builds `stack`, warms it up, and sends the counted calls.
fn run_one(stack: &str) {
    fastrand::seed(RANDOM_SEED);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut backends = Vec::new();
    let addrs: Vec<SocketAddr> = runtime.block_on(async {
        for _ in 0..INSTANCES {
            backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        backends.iter().map(Backend::addr).collect()
    });
    let client: anchors::HttpClient = Client::builder(TokioExecutor::new()).build_http();
    match stack {
        "raw" => drive(&runtime, anchors::RoundRobin::new(client, &addrs)),
        "tower-retry-timeout" => drive(&runtime, stacks::tower_retry_timeout(client, &addrs)),
        "by-hand" => drive(
            &runtime,
            stacks::mesh_stack(&addrs, Strategy::RoundRobin, client),
        ),
        "by-hand-EndpointClient" => drive(
            &runtime,
            stacks::mesh_stack(&addrs, Strategy::RoundRobin, EndpointClient::new()),
        ),
        "MeshClient" => drive_facade(&runtime, runtime.block_on(stacks::facade(&addrs))),
        "MeshClient-defaults" => drive_facade(
            &runtime,
            runtime.block_on(stacks::facade_with_defaults(&addrs)),
        ),
        other => {
            eprintln!("unknown stack {other:?}: one of {STACKS:?}");
            std::process::exit(2);
        }
    }
}

/// Sends the warm-up and the counted calls through `mesh`, called as a
/// user calls it: `get(service, path, options)`.
fn drive_facade(runtime: &tokio::runtime::Runtime, mesh: MeshClient) {
    let future = mesh.get(stacks::SERVICE, "/", CallOptions::default());
    let size = std::mem::size_of_val(&future);
    eprintln!("{FUTURE_SIZE} MeshClient::get's, {size} bytes");
    drop(future);
    let mesh = &mesh;
    let call = move || async move {
        let response = mesh.get(stacks::SERVICE, "/", CallOptions::default());
        read(response.await.expect("call")).await;
    };
    runtime.block_on(calls(WARM_UP, call));
    measured_calls(runtime, call);
}

/// Sends the warm-up and the counted calls through a tower stack, driven
/// as the healthy bench drives it: one service, `ready` then `call`.
fn drive<S, B>(runtime: &tokio::runtime::Runtime, svc: S)
where
    S: Service<Request<stacks::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
{
    let svc = std::cell::RefCell::new(svc);
    let call = || async {
        std::future::poll_fn(|cx| svc.borrow_mut().poll_ready(cx))
            .await
            .expect("ready");
        let future = svc.borrow_mut().call(stacks::request());
        read(future.await.expect("call")).await
    };
    runtime.block_on(calls(WARM_UP, call));
    measured_calls(runtime, call);
}

/// The calls callgrind counts: everything the runtime runs meanwhile
/// (client, servers) is inside this function.
#[inline(never)]
fn measured_calls<F: std::future::Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    call: impl Fn() -> F,
) {
    // The same random draws every run (the balancer's power of two
    // choices draws from this thread's generator): which instances a
    // run happens to pick would otherwise move its count by hundreds.
    fastrand::seed(RANDOM_SEED);
    runtime.block_on(calls(CALLS, call));
}

/// Sends `n` calls made by `call`, one after the other.
async fn calls<F: std::future::Future<Output = ()>>(n: usize, call: impl Fn() -> F) {
    for _ in 0..n {
        call().await;
    }
}

/// Reads a response's whole body, as a caller would.
async fn read<B: http_body::Body>(response: http::Response<B>) {
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await;
    assert!(body.is_ok(), "the body failed");
}
