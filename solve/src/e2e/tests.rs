//! The matching against brute force, bucket bounds, the divergence, and a solve end to end.

use super::*;
use hydrus_filters::e2e::MAX_BUCKETS;
use proptest::prelude::*;

fn brute_force(w: &[Vec<f64>]) -> f64 {
    fn rec(w: &[Vec<f64>], row: usize, used: &mut Vec<bool>) -> f64 {
        if row == w.len() {
            return 0.0;
        }
        let mut best = f64::NEG_INFINITY;
        for c in 0..w[0].len() {
            if !used[c] {
                used[c] = true;
                best = best.max(w[row][c] + rec(w, row + 1, used));
                used[c] = false;
            }
        }
        best
    }
    rec(w, 0, &mut vec![false; w[0].len()])
}

proptest! {
    /// Kuhn-Munkres finds the maximum-weight matching found by enumerating them all.
    #[test]
    fn matching_is_optimal(n in 1usize..7, extra in 0usize..2, seed in proptest::collection::vec(0.0f64..1.0, 64)) {
        let cols = n + extra;
        let w: Vec<Vec<f64>> = (0..n).map(|r| (0..cols).map(|c| seed[(r * cols + c) % 64]).collect()).collect();
        let a = max_weight_matching(&w);
        let got: f64 = a.iter().enumerate().map(|(r, &c)| w[r][c]).sum();
        let mut seen = std::collections::HashSet::new();
        prop_assert!(a.iter().all(|c| seen.insert(*c)), "a matching");
        prop_assert!((got - brute_force(&w)).abs() < 1e-6);
    }

    #[test]
    fn buckets_respect_delta(mut v in proptest::collection::vec(0.0f64..5000.0, 1..300), k in 1usize..12) {
        v.sort_by(f64::total_cmp);
        let delta = 400.0;
        let b = bucketize(&v, k, delta);
        prop_assert!(b.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(b.len() < MAX_BUCKETS);
        // Within the data's range, consecutive bounds holding requests are at most delta
        // apart unless the quantile cut itself was wider and had no requests inside.
        let t = E2eTable::new(E2eTableFile {
            groups: vec!["a".into()],
            generated_at_ms: None,
            buckets: b.iter().map(|&m| BucketFile { max_ms: Some(m), route: vec![1.0], priority: None })
                .chain(std::iter::once(BucketFile { max_ms: None, route: vec![1.0], priority: None }))
                .collect(),
            inputs: None,
        });
        prop_assert!(t.is_ok());
    }
}

#[test]
fn js_divergence_bounds() {
    assert_eq!(js_divergence(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
    assert!((js_divergence(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
    let d = js_divergence(&[0.6, 0.4], &[0.5, 0.5]);
    assert!(d > 0.0 && d < 0.05);
}

#[test]
fn sensitive_requests_go_to_the_faster_group() {
    // QoE falls steeply around 600 ms total; "fast" answers in ~20 ms, "slow" in ~150 ms.
    let mut inputs = E2eInputs::new(vec!["fast".into(), "slow".into()]);
    for i in 0..3000u64 {
        let ext = [50.0, 500.0, 3000.0][(i % 3) as usize] + (i % 7) as f64;
        inputs.external.push(ext);
        let load = 1.0 + (i % 4) as f64;
        inputs.samples[(i % 2) as usize].push(if i % 2 == 0 {
            (load, 10.0 + 5.0 * load)
        } else {
            (load, 140.0 + 2.0 * load)
        });
    }
    inputs.records = 3000;
    inputs.first_ms = Some(0);
    inputs.last_ms = Some(60_000);
    let opts = E2eOptions {
        buckets: 3,
        delta_ms: 10_000.0,
        units: 30,
        qoe: QoeModelConfig {
            d50_ms: 600.0,
            width_ms: 40.0,
            max: 1.0,
        },
        priorities: true,
    };
    let (table, report) = solve(&inputs, &opts).expect("solves");
    let t = E2eTable::new(table).expect("valid");
    let sensitive = t.bucket(503.0);
    assert!(
        report.buckets[sensitive].route[0] > 0.9,
        "{:?}",
        report.buckets
    );
    assert_eq!(t.priority(sensitive), Some("high"));
    assert!(report.gain > 0.0, "{}", report.gain);
    assert!(report.e2e_qoe >= report.default_qoe);
}
