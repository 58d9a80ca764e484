//! The decision rule of the Hydrus paper (Algorithm 3): for multiplier `k`, choose the strategy
//! maximizing `qoe_j - k * cost_j`. Ties go to the cheaper strategy (then configuration order), so
//! the rule never spends more than the solver planned for: `hydrus solve` picks `k` assuming it.

use crate::hydrus::qoe::QoeVector;
use crate::hydrus::strategy::StrategySet;

/// The chosen strategy's index, or `None` when the request has no candidate strategy.
pub fn decide(set: &StrategySet, qoe: &QoeVector, k: f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &j in set.by_cost() {
        if let Some(q) = qoe.get(j) {
            let value = q - k * set.cost(j);
            // Strictly greater: an equal value at a higher cost loses, and cheaper ones come first.
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((j, value));
            }
        }
    }
    best.map(|(j, _)| j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydrus::strategy::Strategy;
    use proptest::prelude::*;

    fn set(costs: &[f64]) -> StrategySet {
        let strategies = costs
            .iter()
            .enumerate()
            .map(|(i, &cost)| Strategy {
                name: format!("s{i}"),
                cost,
                qoe_scale: 1.0,
            })
            .collect();
        StrategySet::new(strategies, "s0").expect("valid")
    }

    fn qoe(values: &[f64]) -> QoeVector {
        let mut v = QoeVector::empty();
        for (j, &q) in values.iter().enumerate() {
            v.set(j, q);
        }
        v
    }

    #[test]
    fn hand_computed() {
        // values at k=0.01: 0.30-0.06=0.24, 0.36-0.10=0.26, 0.40-0.20=0.20
        let s = set(&[6.0, 10.0, 20.0]);
        let q = qoe(&[0.30, 0.36, 0.40]);
        assert_eq!(decide(&s, &q, 0.01), Some(1));
        assert_eq!(decide(&s, &q, 0.0), Some(2));
        assert_eq!(decide(&s, &q, 1.0), Some(0));
    }

    #[test]
    fn ties_go_to_the_cheaper() {
        // k = 0.125 (exact in binary): 0.75 - 0.5 = 0.25 and 0.5 - 0.25 = 0.25
        let s = set(&[4.0, 2.0]);
        let q = qoe(&[0.75, 0.5]);
        assert_eq!(decide(&s, &q, 0.125), Some(1));
        // equal cost: configuration order
        let s = set(&[5.0, 5.0]);
        assert_eq!(decide(&s, &qoe(&[0.2, 0.2]), 0.1), Some(0));
    }

    #[test]
    fn only_candidates() {
        let s = set(&[1.0, 2.0]);
        let mut q = QoeVector::empty();
        q.set(1, 0.1);
        assert_eq!(decide(&s, &q, 100.0), Some(1));
        assert_eq!(decide(&s, &QoeVector::empty(), 0.0), None);
    }

    proptest! {
        /// The rule agrees with a plain argmax, with ties broken to the lower cost, then index.
        #[test]
        fn matches_reference(
            pts in proptest::collection::vec((0u8..20, 0u8..20), 1..10),
            k in prop_oneof![Just(0.0), 0.0f64..0.2],
        ) {
            let costs: Vec<f64> = pts.iter().map(|p| p.0 as f64).collect();
            let values: Vec<f64> = pts.iter().map(|p| p.1 as f64 / 20.0).collect();
            let s = set(&costs);
            let got = decide(&s, &qoe(&values), k).expect("has candidates");
            let best = (0..pts.len())
                .map(|j| values[j] - k * costs[j])
                .fold(f64::NEG_INFINITY, f64::max);
            let want = (0..pts.len())
                .filter(|&j| values[j] - k * costs[j] == best)
                .min_by(|&a, &b| costs[a].total_cmp(&costs[b]).then(a.cmp(&b)))
                .expect("non-empty");
            prop_assert_eq!(got, want);
        }

        /// A larger k never picks a more expensive strategy.
        #[test]
        fn cost_falls_as_k_grows(
            pts in proptest::collection::vec((0u8..20, 0u8..20), 1..10),
            k1 in 0.0f64..0.1, dk in 0.0f64..0.1,
        ) {
            let costs: Vec<f64> = pts.iter().map(|p| p.0 as f64).collect();
            let values: Vec<f64> = pts.iter().map(|p| p.1 as f64 / 20.0).collect();
            let s = set(&costs);
            let a = decide(&s, &qoe(&values), k1).expect("some");
            let b = decide(&s, &qoe(&values), k1 + dk).expect("some");
            prop_assert!(costs[b] <= costs[a]);
        }
    }
}
