//! What a call costs when two threads call at once: the stacks of
//! `per_call` (the leaf, then Discover; + Balance; + Breaker; + Retry),
//! each timed on one thread and then on two threads at once, each thread
//! with its own runtime and its own clone of the stack, as each core of a
//! busy client has.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench contention
//! ```
//!
//! A count every clone shares (a reference count, an endpoint's
//! in-flight count, a breaker's window, the round-robin turn) costs a few
//! nanoseconds on one thread, and tens when two cores take turns writing
//! it: the difference between the two columns is what the stack's shared
//! writes cost on two cores. No allocation is counted here (counting would
//! itself be a shared write): `per_call` counts them. Stacks can be named
//! as arguments, as for `per_call`.

#[path = "per_call_stacks.rs"]
mod stacks;

use stacks::nanos_per_call;

fn main() {
    let stacks = stacks::named(std::env::args().skip(1));
    let leaf_alone = nanos_per_call(&stacks[0].1, 1);
    let leaf_shared = nanos_per_call(&stacks[0].1, 2);
    println!("| stack | 1 thread: ns per call | added vs leaf | 2 threads: ns per call, each | added vs leaf | ratio, 2 threads to 1 |");
    println!("|---|---|---|---|---|---|");
    for (name, stack) in &stacks {
        let alone = nanos_per_call(stack, 1);
        let shared = nanos_per_call(stack, 2);
        println!(
            "| {name} | {alone:.0} | {:+.0} ns | {shared:.0} | {:+.0} ns | {:.2}x |",
            alone - leaf_alone,
            shared - leaf_shared,
            shared / alone
        );
    }
}
