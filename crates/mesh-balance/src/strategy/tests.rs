use std::collections::HashMap;

use mesh_core::{EndpointId, Health, Weight};

use super::*;

fn picker_for(strategy: Strategy, sticky: bool) -> Picker {
    let mut b = BalanceConfig::builder()
        .strategy(strategy)
        .panic_threshold(0.0);
    if sticky {
        b = b.sticky_by([KeySource::Extension]);
    }
    Picker::new(b.build().unwrap(), EventBus::default())
}

fn set_of(weights: &[u32]) -> EndpointSet {
    EndpointSet::new(
        ServiceName::new("svc").unwrap(),
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Endpoint::builder(([10, 0, (i / 250) as u8, (i % 250) as u8], 80).into())
                    .weight(Weight::new(*w).unwrap())
                    .build()
            })
            .collect(),
    )
}

fn counts(picker: &Picker, set: &EndpointSet, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; set.len()];
    let index: HashMap<&EndpointId, usize> =
        set.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
    for _ in 0..picks {
        let e = picker.pick(set, &PickContext::default(), Nanos(0)).unwrap();
        counts[index[e.id()]] += 1;
    }
    counts
}

#[test]
fn smooth_weighted_round_robin_matches_the_weights_within_one_percent() {
    for weights in [vec![198, 1, 1], vec![5, 1, 1]] {
        let set = set_of(&weights);
        let picker = picker_for(Strategy::WeightedRoundRobin, false);
        let got = counts(&picker, &set, 100_000);
        let total: u32 = weights.iter().sum();
        for (c, w) in got.iter().zip(&weights) {
            let expected = 100_000.0 * f64::from(*w) / f64::from(total);
            assert!(
                (*c as f64 - expected).abs() <= 0.01 * 100_000.0,
                "{got:?} for {weights:?}"
            );
        }
    }
}

#[test]
fn weighted_round_robin_shares_a_down_endpoint_s_turns() {
    let set = set_of(&[2, 1, 1]);
    set.endpoints()[0].state().set_health(Health::Unhealthy);
    let got = counts(
        &picker_for(Strategy::WeightedRoundRobin, false),
        &set,
        10_000,
    );
    assert_eq!(got[0], 0);
    // Equal weights: equal shares (the down one's half split at random,
    // about +-50 at one sigma).
    assert!((got[1] as i64 - got[2] as i64).abs() <= 400, "{got:?}");
}

#[test]
fn random_passes_a_chi_square_test() {
    // Seeded: the draws are the same every run, so the bound at p = 0.001
    // (which a fair draw exceeds once in a thousand runs) never trips by
    // chance, and still catches a draw favouring one endpoint by 4 %.
    fastrand::seed(19);
    let set = set_of(&[1; 10]);
    let got = counts(&picker_for(Strategy::Random, false), &set, 100_000);
    let expected = 10_000.0;
    let chi2: f64 = got
        .iter()
        .map(|c| (*c as f64 - expected).powi(2) / expected)
        .sum();
    // 9 degrees of freedom, p = 0.001.
    assert!(chi2 < 27.877, "chi2 = {chi2}, counts {got:?}");
}

#[test]
fn least_connections_never_picks_above_the_minimum() {
    let set = set_of(&[1; 8]);
    let picker = picker_for(Strategy::LeastConnections, false);
    for round in 0..2000u32 {
        // Random loads, some endpoints out.
        for e in set.iter() {
            while e.state().in_flight() > 0 {
                e.state().finish_request();
            }
            for _ in 0..fastrand::u32(..5) {
                e.state().start_request();
            }
            e.state().set_health(if fastrand::u8(..10) == 0 {
                Health::Unhealthy
            } else {
                Health::Healthy
            });
        }
        let min = set.available(Nanos(0)).map(|e| e.state().in_flight()).min();
        let picked = picker.pick(&set, &PickContext::default(), Nanos(0)).ok();
        assert_eq!(picked.map(|e| e.state().in_flight()), min, "round {round}");
    }
}

/// 5 instances, one ten times slower; requests arrive every 0.1 ms and
/// hold their instance for its latency: least response time and P2C send
/// the slow one under 10% of the traffic.
#[test]
fn least_response_time_and_p2c_starve_a_slow_instance() {
    for strategy in [Strategy::LeastResponseTime, Strategy::PowerOfTwoChoices] {
        let set = set_of(&[1; 5]);
        let latency = |i: usize| if i == 4 { 10_000u64 } else { 1_000 }; // us
        for (i, e) in set.iter().enumerate() {
            e.state().record_latency(Duration::from_micros(latency(i)));
        }
        let picker = picker_for(strategy.clone(), false);
        let index: HashMap<&EndpointId, usize> =
            set.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
        let mut finishing: Vec<(u64, usize)> = Vec::new();
        let mut picks = [0usize; 5];
        for t in (0..2_000_000u64).step_by(100) {
            finishing.retain(|(end, i)| {
                let done = *end <= t;
                if done {
                    set.endpoints()[*i].state().finish_request();
                }
                !done
            });
            let e = picker
                .pick(&set, &PickContext::default(), Nanos(0))
                .unwrap();
            let i = index[e.id()];
            e.state().start_request();
            finishing.push((t + latency(i), i));
            picks[i] += 1;
        }
        let share = picks[4] as f64 / picks.iter().sum::<usize>() as f64;
        assert!(
            share < 0.10,
            "{strategy:?}: slow share {share:.3}, picks {picks:?}"
        );
    }
}

/// Power of two choices compares two distinct candidates whenever two
/// are usable: a lone caller (nothing in flight) never lands on an
/// instance slower than every other, however few are usable, with an
/// ejected one among them or not.
#[test]
fn p2c_never_picks_the_slowest_unchallenged() {
    let picker = picker_for(Strategy::PowerOfTwoChoices, false);
    for usable in 2..=5 {
        for ejected in [false, true] {
            let set = set_of(&vec![1; usable + usize::from(ejected)]);
            for (i, e) in set.iter().enumerate() {
                let slow = i == 0;
                let latency = if slow { 50_000 } else { 100 }; // us
                e.state().record_latency(Duration::from_micros(latency));
            }
            if ejected {
                set.endpoints()[usable]
                    .state()
                    .eject_until(Nanos(u64::MAX / 2));
            }
            let picks = counts(&picker, &set, 20_000);
            assert_eq!(
                picks[0], 0,
                "{usable} usable, ejected one: {ejected}: picks {picks:?}"
            );
            if ejected {
                assert_eq!(picks[usable], 0, "the ejected one is never picked");
            }
        }
    }
}

/// Past the exact-scan size, least connections and least response time
/// compare a sample: with half of 1,000 instances loaded (or slow), the
/// loaded half gets about 1/2^SAMPLE of the picks, never most of them,
/// and no instance that is out is ever picked.
#[test]
fn sampled_least_cost_picks_avoid_the_loaded_half_of_a_large_set() {
    let n = 1_000;
    for strategy in [Strategy::LeastConnections, Strategy::LeastResponseTime] {
        let set = set_of(&vec![1; n]);
        for (i, e) in set.iter().enumerate() {
            let loaded = i % 2 == 1;
            e.state()
                .record_latency(Duration::from_micros(if loaded { 10_000 } else { 1_000 }));
            for _ in 0..if loaded { 8 } else { 1 } {
                e.state().start_request();
            }
            if i % 10 == 0 {
                e.state().set_health(Health::Unhealthy);
            }
        }
        let picker = picker_for(strategy.clone(), false);
        let picks = 20_000;
        let mut loaded = 0;
        for _ in 0..picks {
            let e = picker
                .pick(&set, &PickContext::default(), Nanos(0))
                .unwrap();
            assert!(
                e.state().is_available(Nanos(0)),
                "{strategy:?} picked one that is out"
            );
            loaded += usize::from(e.state().in_flight() == 8);
        }
        let share = loaded as f64 / picks as f64;
        // Four available endpoints are drawn, and 5 in 9 available ones
        // are loaded (the unhealthy tenth are all unloaded): the loaded
        // one wins only when all four are, (5/9)^4 = 0.095 of picks. 0.12
        // leaves room for chance (the deviation over 20,000 picks is
        // 0.002); a pick blind to load would give 0.56.
        assert!(share < 0.12, "{strategy:?}: loaded half got {share:.3}");
    }
}

/// Weighted draws (random strategy, weighted round robin's spill) keep
/// the weights' proportions among the candidates left when some are out.
#[test]
fn weighted_draws_keep_proportions_among_the_endpoints_left() {
    let weights: Vec<u32> = (0..100).map(|i| if i % 2 == 0 { 3 } else { 1 }).collect();
    let set = set_of(&weights);
    for e in set.iter().take(50) {
        e.state().set_health(Health::Unhealthy);
    }
    let got = counts(&picker_for(Strategy::Random, false), &set, 100_000);
    assert!(
        got[..50].iter().all(|c| *c == 0),
        "an endpoint that is out was picked"
    );
    let heavy: usize = got[50..].iter().step_by(2).sum();
    let light: usize = got[51..].iter().step_by(2).sum();
    let ratio = heavy as f64 / light as f64;
    assert!((2.7..3.3).contains(&ratio), "weights 3:1 drew {ratio:.2}:1");
}

/// A new instance beside a measured fast one: taken to be as fast as the
/// instances it is compared with, it gets its share at once instead of
/// starving behind them (a fixed guess slower than loopback would never
/// let it be measured).
#[test]
fn an_unmeasured_instance_gets_its_share_beside_measured_fast_ones() {
    for strategy in [Strategy::LeastResponseTime, Strategy::PowerOfTwoChoices] {
        let set = set_of(&[1; 2]);
        set.endpoints()[0]
            .state()
            .record_latency(Duration::from_micros(300));
        let picker = picker_for(strategy.clone(), false);
        let new = set.endpoints()[1].id().clone();
        let to_new = (0..200)
            .filter(|_| {
                let picked = picker
                    .pick(&set, &PickContext::default(), Nanos(0))
                    .unwrap();
                picked.id() == &new
            })
            .count();
        assert!(
            to_new >= 50,
            "{strategy:?}: the new instance got {to_new} of 200"
        );
    }
}

fn owners(picker: &Picker, set: &EndpointSet, keys: u32) -> Vec<EndpointId> {
    (0..keys)
        .map(|k| {
            let cx = PickContext {
                avoid: None,
                key_hash: Some(hash_key(&k.to_le_bytes())),
            };
            picker.pick(set, &cx, Nanos(0)).unwrap().id().clone()
        })
        .collect()
}

#[test]
fn consistent_hashing_moves_about_one_nth_of_keys_and_shares_fairly() {
    let ten = set_of(&[1; 10]);
    let picker = picker_for(Strategy::ConsistentHash, false);
    let before = owners(&picker, &ten, 100_000);
    let mut share: HashMap<&EndpointId, usize> = HashMap::new();
    for id in &before {
        *share.entry(id).or_default() += 1;
    }
    for (id, n) in &share {
        assert!((8_000..=12_000).contains(n), "{id}: {n} keys");
    }

    // One more instance: at most 1/11 + 2% of keys move.
    let eleven = set_of(&[1; 11]);
    let after = owners(&picker, &eleven, 100_000);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(
        moved as f64 <= 100_000.0 * (1.0 / 11.0 + 0.02),
        "{moved} moved"
    );

    // One fewer: only the removed instance's keys move.
    let nine = EndpointSet::new(ten.service().clone(), ten.endpoints()[..9].to_vec());
    let gone = ten.endpoints()[9].id().clone();
    let after = owners(&picker, &nine, 100_000);
    for (a, b) in before.iter().zip(&after) {
        if *a != gone {
            assert_eq!(a, b, "a key of a remaining instance moved");
        }
    }
}

#[test]
fn affinity_holds_moves_when_the_instance_is_ejected_and_moves_back() {
    let set = set_of(&[1; 5]);
    let picker = picker_for(Strategy::RoundRobin, true);
    let cx = PickContext {
        avoid: None,
        key_hash: Some(hash_key(b"client-123")),
    };
    let home = picker.pick(&set, &cx, Nanos(0)).unwrap().id().clone();
    for _ in 0..1000 {
        assert_eq!(picker.pick(&set, &cx, Nanos(0)).unwrap().id(), &home);
    }
    let home_ep = set.get(&home).unwrap();
    home_ep.state().eject_until(Nanos(100));
    let away = picker.pick(&set, &cx, Nanos(50)).unwrap().id().clone();
    assert_ne!(away, home);
    for _ in 0..100 {
        assert_eq!(
            picker.pick(&set, &cx, Nanos(50)).unwrap().id(),
            &away,
            "a stable second choice"
        );
    }
    assert_eq!(
        picker.pick(&set, &cx, Nanos(100)).unwrap().id(),
        &home,
        "back once it recovers"
    );
    home_ep.state().clear_ejection();
    // Requests without a key still go round robin.
    let plain = counts(&picker, &set, 500);
    assert!(plain.iter().all(|c| *c == 100), "{plain:?}");
}

#[test]
fn instances_at_their_limit_are_skipped_and_a_full_house_says_so() {
    let set = set_of(&[1; 3]);
    let picker = Picker::new(
        BalanceConfig::builder()
            .max_connections_per_instance(2)
            .build()
            .unwrap(),
        EventBus::default(),
    );
    for _ in 0..6 {
        let e = picker
            .pick(&set, &PickContext::default(), Nanos(0))
            .unwrap();
        e.state().start_request();
    }
    assert!(set.iter().all(|e| e.state().in_flight() == 2));
    assert_eq!(
        picker
            .pick(&set, &PickContext::default(), Nanos(0))
            .unwrap_err(),
        NoPick::AtCapacity { available: 3 }
    );
    set.endpoints()[1].state().finish_request();
    assert_eq!(
        picker
            .pick(&set, &PickContext::default(), Nanos(0))
            .unwrap()
            .id(),
        set.endpoints()[1].id()
    );
}

#[tokio::test]
async fn below_the_panic_threshold_every_instance_takes_traffic() {
    let set = set_of(&[1; 4]);
    for e in &set.endpoints()[..3] {
        e.state().set_health(Health::Unhealthy);
    }
    let bus = EventBus::new(8);
    let mut events = bus.subscribe();
    let picker = Picker::new(
        BalanceConfig::builder()
            .panic_threshold(50.0)
            .build()
            .unwrap(),
        bus,
    );
    // The default strategy draws at random among equals: 200 picks miss
    // one of four with a chance of 4 x (3/4)^200.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        seen.insert(
            picker
                .pick(&set, &PickContext::default(), Nanos(0))
                .unwrap()
                .id()
                .clone(),
        );
    }
    assert_eq!(seen.len(), 4, "1 of 4 available is under 50%: all are used");
    assert!(matches!(
        events.try_recv(),
        Ok(MeshEvent::AvailableEndpointsChanged {
            available: 1,
            total: 4,
            panic: true,
            ..
        })
    ));
    // Back above the threshold (recounted after 100 ms): only healthy ones.
    for e in &set.endpoints()[..2] {
        e.state().set_health(Health::Healthy);
    }
    let later = Nanos(200_000_000);
    let picks: std::collections::HashSet<_> = (0..200)
        .map(|_| {
            picker
                .pick(&set, &PickContext::default(), later)
                .unwrap()
                .id()
                .clone()
        })
        .collect();
    assert_eq!(picks.len(), 3);
    assert!(!picks.contains(set.endpoints()[2].id()));
    for _ in 0..10 {
        picker
            .pick(&set, &PickContext::default(), later)
            .unwrap()
            .state()
            .start_request();
    }
    let metrics = picker.metrics();
    assert_eq!(metrics.len(), 1);
    assert!(!metrics[0].panic);
    let shares: f64 = metrics[0].instances.iter().map(|i| i.share).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
    assert_eq!(metrics[0].instances[2].requests, 0, "unhealthy: no traffic");
}

proptest::proptest! {
    /// Whatever the set's size, load and availability: least connections
    /// and least response time pick an available endpoint whenever one
    /// exists; up to 16 endpoints, the one with the fewest in flight
    /// (least connections); past that, never a busier one than the
    /// busiest candidate.
    #[test]
    fn least_cost_picks_are_available_and_exact_on_small_sets(
        loads in proptest::collection::vec((0u32..6, proptest::bool::weighted(0.8)), 1..64),
    ) {
        let set = set_of(&vec![1; loads.len()]);
        for (e, (load, up)) in set.iter().zip(&loads) {
            for _ in 0..*load {
                e.state().start_request();
            }
            e.state().set_health(if *up { Health::Healthy } else { Health::Unhealthy });
        }
        let available: Vec<u32> = set
            .available(Nanos(0))
            .map(|e| e.state().in_flight())
            .collect();
        for strategy in [Strategy::LeastConnections, Strategy::LeastResponseTime] {
            let picked = picker_for(strategy.clone(), false)
                .pick(&set, &PickContext::default(), Nanos(0))
                .ok();
            proptest::prop_assert_eq!(picked.is_some(), !available.is_empty());
            if let Some(e) = picked {
                proptest::prop_assert!(e.state().is_available(Nanos(0)));
                let max = available.iter().max().copied().unwrap_or(0);
                proptest::prop_assert!(e.state().in_flight() <= max);
                if loads.len() <= 16 && strategy == Strategy::LeastConnections {
                    let min = available.iter().min().copied();
                    proptest::prop_assert_eq!(Some(e.state().in_flight()), min);
                }
            }
        }
    }
}

/// A new endpoint-set snapshot (discovery's next answer, the same
/// endpoints) continues the rotation where the last one left it, rather
/// than sending its first pick to the first endpoint again.
#[test]
fn round_robin_turns_carry_over_to_the_next_snapshot() {
    let picker = picker_for(Strategy::RoundRobin, false);
    let first = set_of(&[1, 1, 1]);
    let pick = |set: &EndpointSet| {
        picker
            .pick(set, &PickContext::default(), Nanos(0))
            .unwrap()
            .id()
            .clone()
    };
    let ids: Vec<EndpointId> = first.iter().map(|e| e.id().clone()).collect();
    assert_eq!(pick(&first), ids[0]);
    assert_eq!(pick(&first), ids[1]);
    let next = set_of(&[1, 1, 1]);
    assert_ne!(next.generation(), first.generation(), "a new snapshot");
    assert_eq!(pick(&next), ids[2], "the third turn, not the first again");
    assert_eq!(pick(&next), ids[0]);
}
