//! The decision rule of the Hydrus paper (Algorithm 3): for multiplier `k`, choose the strategy
//! maximizing `qoe_j - k * cost_j`; with several resources, one `k_r` each:
//! `qoe_j - sum_r k_r * cost_jr`. Ties go to the cheaper strategy (by its cost summed over
//! resources, then configuration order), so the rule never spends more than the solver planned
//! for: `hydrus solve` picks `k` assuming it.

use crate::hydrus::qoe::QoeVector;
use crate::hydrus::strategy::StrategySet;

/// The chosen strategy's index, or `None` when the request has no candidate strategy.
pub fn decide(set: &StrategySet, qoe: &QoeVector, k: f64) -> Option<usize> {
    argmax(set, qoe, |j| k * set.cost(j))
}

/// [`decide`] with one `k` per resource of the set (`ks` in [`StrategySet::resources`] order;
/// one value: [`decide`] itself).
pub fn decide_per_resource(set: &StrategySet, qoe: &QoeVector, ks: &[f64]) -> Option<usize> {
    match ks {
        [k] => decide(set, qoe, *k),
        _ => argmax(set, qoe, |j| {
            set.costs(j).iter().zip(ks).map(|(c, k)| c * k).sum::<f64>()
        }),
    }
}

#[inline]
fn argmax(set: &StrategySet, qoe: &QoeVector, price: impl Fn(usize) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &j in set.by_cost() {
        if let Some(q) = qoe.get(j) {
            let value = q - price(j);
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
                cost: cost.into(),
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

    fn set2(costs: &[(f64, f64)]) -> StrategySet {
        let strategies = costs
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| Strategy {
                name: format!("s{i}"),
                cost: crate::resource::PerResource::Many(
                    [("a".to_string(), a), ("b".to_string(), b)].into(),
                ),
                qoe_scale: 1.0,
            })
            .collect();
        StrategySet::new(strategies, "s0").expect("valid")
    }

    #[test]
    fn one_k_per_resource() {
        // s0 is heavy on a, s1 on b, s2 on neither but worse.
        let s = set2(&[(10.0, 1.0), (1.0, 10.0), (1.0, 1.0)]);
        let q = qoe(&[0.9, 0.9, 0.5]);
        // a is dear: s1; b is dear: s0; both dear: s2.
        assert_eq!(decide_per_resource(&s, &q, &[0.02, 0.001]), Some(1));
        assert_eq!(decide_per_resource(&s, &q, &[0.001, 0.02]), Some(0));
        assert_eq!(decide_per_resource(&s, &q, &[0.1, 0.1]), Some(2));
        // Ties by the summed cost: at k = 0 s0 and s1 tie at 0.9 (sums 11 and 11): config order.
        assert_eq!(decide_per_resource(&s, &q, &[0.0, 0.0]), Some(0));
    }

    proptest! {
        /// With several resources the rule agrees with a plain argmax of q - sum k_r c_r, ties
        /// to the lower summed cost, then index.
        #[test]
        fn per_resource_matches_reference(
            pts in proptest::collection::vec((0u8..20, 0u8..20, 0u8..20), 1..10),
            ka in prop_oneof![Just(0.0), 0.0f64..0.2],
            kb in prop_oneof![Just(0.0), 0.0f64..0.2],
        ) {
            let costs: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.1 as f64)).collect();
            let values: Vec<f64> = pts.iter().map(|p| p.2 as f64 / 20.0).collect();
            let s = set2(&costs);
            let got = decide_per_resource(&s, &qoe(&values), &[ka, kb]).expect("has candidates");
            let v = |j: usize| values[j] - (ka * costs[j].0 + kb * costs[j].1);
            let best = (0..pts.len()).map(v).fold(f64::NEG_INFINITY, f64::max);
            let sum = |j: usize| costs[j].0 + costs[j].1;
            let want = (0..pts.len())
                .filter(|&j| v(j) == best)
                .min_by(|&a, &b| sum(a).total_cmp(&sum(b)).then(a.cmp(&b)))
                .expect("non-empty");
            prop_assert_eq!(got, want);
        }

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
