//! The runtime the loopback benches run on.

/// Two workers (the machine's cores) for client, servers and harness
/// alike; `None` when `cargo test` runs the bench in test mode (without
/// `--bench`), which then skips it.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    Some(runtime)
}
