//! Drawing a candidate in proportion to its weight, in O(log n).

use mesh_core::Endpoint;

/// Random draws tried before scanning: a draw that lands on an endpoint
/// that is out is drawn again, which keeps the others' proportions.
const DRAWS: usize = 4;

/// The running totals of a snapshot's weights, kept with the snapshot:
/// a draw is a binary search instead of a walk over every endpoint.
#[derive(Debug, Default)]
pub(super) struct Cumulative {
    /// `sums[i]` is the weight of endpoints `0..=i`.
    sums: Vec<u64>,
}

// === impl Cumulative ===

impl Cumulative {
    /// The totals of `weights`, in endpoint order.
    pub(super) fn new(weights: &[u32]) -> Self {
        let sums = weights
            .iter()
            .scan(0u64, |total, w| {
                *total += u64::from(*w);
                Some(*total)
            })
            .collect();
        Cumulative { sums }
    }

    /// A candidate `ok` accepts, drawn with probability proportional to
    /// its weight: O(log n) while most endpoints are candidates, a scan
    /// when draws keep landing on endpoints that are out.
    pub(super) fn pick<'a>(
        &self,
        endpoints: &'a [Endpoint],
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'a Endpoint> {
        if let Some(&total) = self
            .sums
            .last()
            .filter(|_| self.sums.len() == endpoints.len())
        {
            for _ in 0..DRAWS {
                let point = fastrand::u64(..total.max(1));
                let i = self.sums.partition_point(|sum| *sum <= point);
                match endpoints.get(i) {
                    Some(e) if ok(e) => return Some(e),
                    _ => {}
                }
            }
        }
        scan(endpoints, ok)
    }
}

/// A candidate drawn with probability proportional to its weight, by
/// walking every endpoint (allocation-free).
fn scan<'a>(endpoints: &'a [Endpoint], ok: &dyn Fn(&Endpoint) -> bool) -> Option<&'a Endpoint> {
    let total: u64 = endpoints
        .iter()
        .filter(|e| ok(e))
        .map(|e| u64::from(e.weight().get()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(..total);
    endpoints.iter().filter(|e| ok(e)).find(|e| {
        let w = u64::from(e.weight().get());
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_draw_checks_one_candidate_while_all_are_up() {
        let endpoints: Vec<Endpoint> = (0..10_000)
            .map(|i| {
                Endpoint::builder(([10, 1, (i / 250) as u8, (i % 250) as u8], 80).into()).build()
            })
            .collect();
        let weights = vec![1; endpoints.len()];
        let cumulative = Cumulative::new(&weights);
        let checks = Cell::new(0);
        let ok = |_: &Endpoint| {
            checks.set(checks.get() + 1);
            true
        };
        for _ in 0..100 {
            assert!(cumulative.pick(&endpoints, &ok).is_some());
        }
        assert_eq!(checks.get(), 100, "one check per draw, no scan");
    }
}
