//! Smooth weighted round robin (nginx's), precomputed.
//!
//! nginx's algorithm gives each endpoint `current += weight` per pick and
//! takes the largest `current`, less the total: exact proportions, spread
//! out (weights 5/1/1 give a a b a c a a, not a a a a a b c). The sequence
//! repeats every `sum(weights)` picks, so it is computed once per endpoint
//! set and each pick is one index into it. Weights are divided by their
//! greatest common divisor first; a set whose weights still sum past
//! `MAX_SEQUENCE` has them scaled down proportionally.

/// The longest sequence kept (4 bytes per entry).
const MAX_SEQUENCE: u64 = 1 << 16;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The order of endpoint indices over one full cycle.
pub(crate) fn sequence(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, w| gcd(g, u64::from(*w)))
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| u64::from(*x) / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SEQUENCE {
        for x in &mut w {
            *x = (*x * MAX_SEQUENCE / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_nginx_order_and_exact_proportions() {
        assert_eq!(sequence(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let s = sequence(&[198, 1, 1]);
        assert_eq!(s.len(), 200);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 198);
        assert_eq!(sequence(&[4, 2]), [0, 1, 0], "reduced by the gcd");
    }
}
