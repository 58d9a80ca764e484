//! The solvers against brute force, against each other, and on hand-worked examples.

use super::*;
use proptest::prelude::*;

/// The best total QoE within `budget`, over every allocation.
fn brute_force(inst: &Instance, budget: f64) -> Option<f64> {
    let n = inst.len();
    let mut best: Option<f64> = None;
    let mut idx = vec![0usize; n];
    loop {
        let (mut c, mut q) = (0.0, 0.0);
        for (i, &j) in idx.iter().enumerate() {
            let (cs, qs) = inst.options(i);
            c += cs[j];
            q += qs[j];
        }
        if c <= budget + 1e-9 {
            best = Some(best.map_or(q, |b: f64| b.max(q)));
        }
        let mut i = 0;
        loop {
            if i == n {
                return best;
            }
            idx[i] += 1;
            if idx[i] < inst.options(i).0.len() {
                break;
            }
            idx[i] = 0;
            i += 1;
        }
    }
}

fn instance() -> impl Strategy<Value = Instance> {
    // 1-6 records, 1-4 options each, arbitrary (so non-concave and dominated) points.
    proptest::collection::vec(
        proptest::collection::vec((1.0f64..50.0, 0.0f64..1.0), 1..5),
        1..7,
    )
    .prop_map(|records| {
        let mut inst = Instance::new();
        for r in records {
            inst.push(&r, Some(0));
        }
        inst
    })
}

/// The largest single increment's QoE, over all records' hulls.
fn max_increment(inst: &Instance) -> f64 {
    let (_, _, incs) = hulls(inst);
    incs.iter().map(|x| x.dq).fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn exact_is_feasible_and_within_one_increment_of_the_bound(
        inst in instance(), share in 0.0f64..1.2,
    ) {
        let (min_c, max_c): (f64, f64) = (0..inst.len())
            .map(|i| {
                let c = inst.options(i).0;
                (c.iter().copied().fold(f64::INFINITY, f64::min), c.iter().copied().fold(0.0, f64::max))
            })
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let budget = min_c + share * (max_c - min_c);
        let s = solve_exact(&inst, budget);
        let opt = brute_force(&inst, budget);
        match opt {
            None => prop_assert!(!s.feasible),
            Some(opt) => {
                prop_assert!(s.feasible);
                prop_assert!(s.cost <= budget + 1e-9, "cost {} > budget {}", s.cost, budget);
                prop_assert!(s.qoe <= opt + 1e-9);
                prop_assert!(opt <= s.lp_bound + 1e-9, "opt {} > bound {}", opt, s.lp_bound);
                prop_assert!(s.lp_bound - s.qoe <= max_increment(&inst) + 1e-9);
            }
        }
    }

    #[test]
    fn bisection_agrees_with_exact_within_epsilon(inst in instance(), share in 0.05f64..0.95) {
        let (lo, hi): (f64, f64) = (0..inst.len())
            .map(|i| {
                let c = inst.options(i).0;
                (c.iter().copied().fold(f64::INFINITY, f64::min), c.iter().copied().fold(0.0, f64::max))
            })
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let budget = lo + share * (hi - lo);
        let eps = 1e-9;
        let e = solve_exact(&inst, budget);
        let b = solve_bisection(&inst, budget, eps);
        prop_assert!(b.cost <= budget + 1e-9);
        // Both are the least k within budget, up to the nudge and epsilon.
        prop_assert!((e.k - b.k).abs() <= eps + e.k * 1e-8 + 1e-12, "exact {} bisection {}", e.k, b.k);
        prop_assert!(b.qoe <= e.qoe + 1e-9);
    }

    #[test]
    fn k_falls_as_the_budget_grows(inst in instance(), a in 0.0f64..1.0, b in 0.0f64..1.0) {
        let (lo, hi): (f64, f64) = (0..inst.len())
            .map(|i| {
                let c = inst.options(i).0;
                (c.iter().copied().fold(f64::INFINITY, f64::min), c.iter().copied().fold(0.0, f64::max))
            })
            .fold((0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
        let (small, large) = (lo + a.min(b) * (hi - lo), lo + a.max(b) * (hi - lo));
        let ks = solve_exact(&inst, small);
        let kl = solve_exact(&inst, large);
        prop_assert!(kl.k <= ks.k, "k {} at {} but {} at {}", ks.k, small, kl.k, large);
        prop_assert!(kl.qoe >= ks.qoe - 1e-12);
    }
}

#[test]
fn hand_example() {
    // Two users, strategies cost 1, 2, 4.
    //  A: 0.2, 0.5, 0.6  -> hull increments 0.3/1 (0.30), 0.1/2 (0.05)
    //  B: 0.1, 0.2, 0.5  -> (1,0.1) (2,0.2) (4,0.5): (2,0.2) is under the chord: 0.4/3 (0.133)
    let mut inst = Instance::new();
    inst.push(&[(1.0, 0.2), (2.0, 0.5), (4.0, 0.6)], Some(1));
    inst.push(&[(1.0, 0.1), (2.0, 0.2), (4.0, 0.5)], Some(1));
    // Budget 4 (the logged allocation): base 2, then A's 0.30 (cost 1) fits, B's 0.133
    // (cost 3) does not: k = 0.133.., allocation A=2, B=1, QoE 0.6.
    let s = solve_exact(&inst, inst.logged_budget());
    assert!((s.k - 0.4 / 3.0).abs() < 1e-6, "{}", s.k);
    assert_eq!((s.cost, s.qoe), (3.0, 0.6));
    assert!((s.lp_bound - (0.6 + 0.4 / 3.0)).abs() < 1e-9);
    // Budget 6: B's increment fits too; A's 0.05 does not.
    let s = solve_exact(&inst, 6.0);
    assert!((s.k - 0.05).abs() < 1e-6);
    assert!((s.qoe - 1.0).abs() < 1e-12);
    // Budget 1: infeasible.
    assert!(!solve_exact(&inst, 1.0).feasible);
    // Everything fits: k = 0.
    assert_eq!(solve_exact(&inst, 100.0).k, 0.0);
}

#[test]
fn quadratic_equal_marginal_utility() {
    let users = [
        Quadratic {
            a: 0.1,
            b: 0.04,
            d: 0.001,
        }, // peak at c = 20
        Quadratic {
            a: 0.2,
            b: 0.02,
            d: 0.0005,
        }, // peak at 20
        Quadratic {
            a: 0.0,
            b: 0.06,
            d: 0.002,
        }, // peak at 15
    ];
    let (lambda, c) = solve_quadratic(&users, 5.0, 30.0, 30.0).expect("solvable");
    assert!((c.iter().sum::<f64>() - 30.0).abs() < 1e-9);
    // Interior users have marginal utility lambda.
    for (u, ci) in users.iter().zip(&c) {
        if *ci > 5.0 && *ci < 30.0 {
            assert!((u.b - 2.0 * u.d * ci - lambda).abs() < 1e-9);
        }
    }
    // Optimality: no small transfer between two interior users gains.
    let total = |c: &[f64]| users.iter().zip(c).map(|(u, x)| u.value(*x)).sum::<f64>();
    let base = total(&c);
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let mut t = c.clone();
                t[i] += 0.01;
                t[j] -= 0.01;
                if t.iter().all(|x| (5.0..=30.0).contains(x)) {
                    assert!(total(&t) <= base + 1e-12);
                }
            }
        }
    }
    // A budget above the peaks leaves everyone at the peak.
    let (l, c) = solve_quadratic(&users, 5.0, 30.0, 100.0).expect("solvable");
    assert_eq!(l, 0.0);
    assert!((c[0] - 20.0).abs() < 1e-9 && (c[2] - 15.0).abs() < 1e-9);
    assert!(solve_quadratic(
        &[Quadratic {
            a: 0.0,
            b: 1.0,
            d: 0.0
        }],
        0.0,
        1.0,
        1.0
    )
    .is_none());
}

proptest! {
    #[test]
    fn quadratic_meets_the_budget(
        users in proptest::collection::vec((0.0f64..0.5, 0.0f64..0.1, 0.0001f64..0.01), 1..20),
        share in 0.0f64..1.0,
    ) {
        let users: Vec<Quadratic> = users.into_iter().map(|(a, b, d)| Quadratic { a, b, d }).collect();
        let (lo, hi) = (1.0, 50.0);
        let budget = users.len() as f64 * (lo + share * (hi - lo));
        let (lambda, c) = solve_quadratic(&users, lo, hi, budget).expect("ok");
        let sum: f64 = c.iter().sum();
        prop_assert!(lambda >= 0.0);
        if lambda > 0.0 {
            prop_assert!((sum - budget).abs() < 1e-6 * budget.max(1.0), "sum {} budget {}", sum, budget);
        } else {
            prop_assert!(sum <= budget + 1e-9);
        }
    }
}

/// The multi-resource solver with one resource finds the LP bound the hull walk does.
#[test]
fn the_multi_resource_solver_agrees_with_one_resource() {
    use crate::multi::{MultiBudget, MultiSummary};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for case in 0..50 {
        let n = rng.random_range(1..300);
        let opts = rng.random_range(1..8);
        let mut inst = Instance::new();
        let mut multi = MultiSummary::new(1, usize::MAX, MultiBudget(vec![None]));
        let (mut lo, mut hi) = (0.0, 0.0);
        for _ in 0..n {
            let c: Vec<f64> = (0..opts).map(|_| rng.random_range(0.0..10.0)).collect();
            let q: Vec<f64> = (0..opts).map(|_| rng.random_range(0.0..1.0)).collect();
            let chosen = rng.random_range(0..opts);
            lo += c.iter().copied().fold(f64::INFINITY, f64::min);
            hi += c.iter().copied().fold(0.0, f64::max);
            let pairs: Vec<(f64, f64)> = c.iter().copied().zip(q.iter().copied()).collect();
            inst.push(&pairs, Some(chosen as u32));
            multi.push(&c, &q, chosen);
        }
        let budget = lo + rng.random_range(0.0..1.0) * (hi - lo);
        let want = solve_exact(&inst, budget);
        let got = multi.solve_for(&[budget]);
        assert!(got.exact, "case {case}");
        let rel = (got.lp_bound - want.lp_bound).abs() / want.lp_bound.abs().max(1e-300);
        assert!(
            rel <= 1e-9,
            "case {case}: {} vs {}",
            got.lp_bound,
            want.lp_bound
        );
    }
}
