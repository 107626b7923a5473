//! The cost of one pick, per strategy, at 10, 1,000 and 10,000 instances
//! (all available, nothing in flight, sets prepared beforehand).
//!
//! ```text
//! cargo bench -p mesh-balance --bench pick
//! ```

use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion};
use mesh_balance::{hash_key, BalanceConfig, KeySource, PickContext, Picker, Strategy};
use mesh_core::clock::Nanos;
use mesh_core::{Endpoint, EndpointSet, EventBus, ServiceName};

fn set(n: usize) -> EndpointSet {
    EndpointSet::new(
        ServiceName::new("svc").expect("name"),
        (0..n)
            .map(|i| {
                Endpoint::builder(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80).into())
                    .build()
            })
            .collect(),
    )
}

pub(crate) fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10usize, 1_000, 10_000] {
        let set = set(n);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::WeightedRoundRobin,
            Strategy::Random,
            Strategy::LeastConnections,
            Strategy::LeastResponseTime,
            Strategy::PowerOfTwoChoices,
            Strategy::ConsistentHash,
        ] {
            let mut config = BalanceConfig::builder().strategy(strategy.clone());
            if strategy == Strategy::ConsistentHash {
                config = config.sticky_by([KeySource::Extension]);
            }
            let picker = Picker::new(config.build().expect("config"), EventBus::default());
            let key = hash_key(b"client-123");
            let cx = PickContext {
                avoid: None,
                key_hash: (strategy == Strategy::ConsistentHash).then_some(key),
            };
            // Build the per-set tables outside the measurement.
            let _ = picker.pick(&set, &cx, Nanos(0));
            group.bench_with_input(BenchmarkId::new(format!("{strategy:?}"), n), &n, |b, _| {
                b.iter(|| black_box(picker.pick(&set, &cx, Nanos(0)).is_ok()))
            });
        }
    }
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::picks);
}
criterion_main!(group::benches);
