//! Summaries against the in-memory exact solver: same `k` (relative 1e-9), same decisions,
//! same cost, QoE and LP bound, whole or split into parts and merged.

use super::*;
use crate::hydrus::algo::{solve_exact, Instance};
use proptest::prelude::*;

/// Records with a few distinct efficiencies (ties) or arbitrary ones, 1-8 options each.
fn records() -> impl Strategy<Value = Vec<(Vec<(f64, f64)>, usize)>> {
    let option = prop_oneof![
        (1.0f64..50.0, 0.0f64..1.0),
        (1u32..6, 0u32..4).prop_map(|(c, q)| (f64::from(c) * 2.0, f64::from(q) * 0.25)),
    ];
    proptest::collection::vec((proptest::collection::vec(option, 1..9), 0usize..8), 1..60)
}

fn instance(records: &[(Vec<(f64, f64)>, usize)]) -> Instance {
    let mut inst = Instance::new();
    for (opts, chosen) in records {
        inst.push(opts, Some((*chosen % opts.len()) as u32));
    }
    inst
}

/// The records summarized in `parts` pieces (each keeping at most `cap` increments), merged.
fn summary(records: &[(Vec<(f64, f64)>, usize)], parts: usize, cap: usize) -> WindowSummary {
    let mut pieces = vec![WindowSummary::new(cap, Budget::Logged); parts];
    for (i, (opts, chosen)) in records.iter().enumerate() {
        pieces[i % parts].push(opts, chosen % opts.len());
    }
    let mut all = WindowSummary::new(cap, Budget::Logged);
    for p in &pieces {
        all.merge(p);
    }
    all
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300) + 1e-12
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_summary_solves_as_the_records_do(
        recs in records(), share in 0.0f64..1.3, parts in 1usize..5,
    ) {
        let inst = instance(&recs);
        let (lo, hi) = (0..inst.len()).fold((0.0, 0.0), |(lo, hi), i| {
            let c = inst.options(i).0;
            (lo + c.iter().copied().fold(f64::INFINITY, f64::min), hi + c.iter().copied().fold(0.0, f64::max))
        });
        let budget = lo + share * (hi - lo);
        let want = solve_exact(&inst, budget);
        // A cap the records fit in: exact whatever the split.
        let got = solve_summary(&summary(&recs, parts, 1 << 20), budget);
        prop_assert!(got.exact);
        let s = &got.solution;
        prop_assert_eq!(s.feasible, want.feasible);
        prop_assert!(close(s.k, want.k, 1e-9), "k {} want {}", s.k, want.k);
        prop_assert!(close(s.cost, want.cost, 1e-9), "cost {} want {}", s.cost, want.cost);
        prop_assert!(close(s.qoe, want.qoe, 1e-9), "qoe {} want {}", s.qoe, want.qoe);
        prop_assert!(close(s.lp_bound, want.lp_bound, 1e-9), "bound {} want {}", s.lp_bound, want.lp_bound);
        // Same decisions: the live rule at either k picks the same option for every record.
        for i in 0..inst.len() {
            prop_assert_eq!(inst.live_choice(i, s.k), inst.live_choice(i, want.k));
        }
    }

    #[test]
    fn a_small_band_is_exact_or_says_so_and_stays_within_budget(
        recs in records(), parts in 1usize..5, cap in 2usize..40,
    ) {
        let inst = instance(&recs);
        let budget = inst.logged_budget();
        let want = solve_exact(&inst, budget);
        let sum = summary(&recs, parts, cap);
        prop_assert!(sum.kept().len() <= cap);
        let got = solve_summary(&sum, budget);
        let s = &got.solution;
        if got.exact {
            // The in-memory solver subtracts from the budget as it selects, the summary adds
            // up what it takes: when the increments fill the budget to the last bit they may
            // round to either side of it (both k then spend the budget, to rounding).
            let (cost, _) = inst.live(s.k);
            let at_the_edge = (cost - budget).abs() <= 1e-12 * budget;
            prop_assert!(close(s.k, want.k, 1e-9) || at_the_edge, "k {} want {}", s.k, want.k);
        } else {
            // Within budget, k above the exact one by at most a bucket.
            let (cost, _) = inst.live(s.k);
            prop_assert!(cost <= budget * (1.0 + 1e-9) + 1e-9);
            prop_assert!(s.k >= want.k * (1.0 - 1e-9));
            prop_assert!(s.k <= want.k * (1.0 + 2.0 / PAGE as f64) + 1e-12);
        }
    }
}

#[test]
fn buckets_are_monotone_and_fine() {
    let mut last = 0;
    for e in [1e-9, 1e-4, 0.0012, 0.0013, 0.5, 1.0, 3.0, 1e6] {
        let k = bucket_of(e);
        assert!(k > last);
        assert!(bucket_floor(k) <= e && e < bucket_floor(k + 1));
        assert!(bucket_floor(k + 1) / bucket_floor(k) - 1.0 < 1.0 / PAGE as f64 + 1e-12);
        last = k;
    }
}

#[test]
fn the_kept_band_stays_within_its_cap_on_a_large_window() {
    let mut s = WindowSummary::new(1000, Budget::Logged);
    let mut inst = Instance::new();
    let mut x: u64 = 1;
    for i in 0..20_000u32 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let opts = [(1.0, 0.1 + 0.5 * u), (3.0, 0.3 + u), (8.0, 0.35 + 1.2 * u)];
        s.push(&opts, (i % 3) as usize);
        inst.push(&opts, Some(i % 3));
    }
    assert!(s.kept().len() <= 1000);
    let got = solve_summary(&s, inst.logged_budget());
    let want = solve_exact(&inst, inst.logged_budget());
    assert!(got.exact, "the band missed the marginal bucket");
    assert!(close(got.solution.k, want.k, 1e-9));
}
