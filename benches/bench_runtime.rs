//! The runtime the loopback benches run on.

/// Two workers (the machine's cores) for client, servers and harness
/// alike, or as many as `--workers=N` asks (`--workers=1` puts all the
/// user-space work on one core, the kernel's network work on the other:
/// a stack's CPU cost per request without cores trading cache lines);
/// `None` when `cargo test` runs the bench in test mode (without
/// `--bench`), which then skips it.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let workers =
        match std::env::args().find_map(|a| a.strip_prefix("--workers=").map(str::to_owned)) {
            None => 2,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("--workers={n}: expected a number of worker threads, at least 1");
                    std::process::exit(2);
                }
            },
        };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    Some(runtime)
}
