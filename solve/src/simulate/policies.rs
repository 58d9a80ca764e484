//! The policies the paper compares, each an allocation (an option per user) for an instance.

use crate::hydrus::algo::{solve_bisection, solve_exact, Instance};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// An option index per user.
pub type Allocation = Vec<usize>;

/// Total (cost, QoE) of an allocation.
pub fn evaluate(inst: &Instance, alloc: &Allocation) -> (f64, f64) {
    let mut cost = 0.0;
    let mut qoe = 0.0;
    for (i, &j) in alloc.iter().enumerate() {
        let (c, q) = inst.options(i);
        cost += c[j];
        qoe += q[j];
    }
    (cost, qoe)
}

/// The default policy: what was logged (random strategies, for generated populations).
pub fn default(inst: &Instance) -> Allocation {
    inst.chosen
        .iter()
        .map(|c| c.unwrap_or(0) as usize)
        .collect()
}

/// The live rule at `k` for every user.
pub fn at_k(inst: &Instance, k: f64) -> Allocation {
    (0..inst.len()).map(|i| inst.live_choice(i, k)).collect()
}

/// The greedy re-allocation of section 2.4: users in random order each take the strategy they
/// like best among those the default allocation handed out and nobody took yet. Same strategies,
/// so exactly the same cost.
pub fn greedy(inst: &Instance, default: &Allocation, rng: &mut ChaCha8Rng) -> Allocation {
    let m = (0..inst.len())
        .map(|i| inst.options(i).0.len())
        .max()
        .unwrap_or(0);
    let mut left = vec![0usize; m];
    for &j in default {
        left[j] += 1;
    }
    let mut order: Vec<usize> = (0..inst.len()).collect();
    order.shuffle(rng);
    let mut alloc = vec![0; inst.len()];
    for i in order {
        let (_, q) = inst.options(i);
        let best = (0..q.len())
            .filter(|&j| left[j] > 0)
            .max_by(|&a, &b| q[a].total_cmp(&q[b]).then(b.cmp(&a)));
        if let Some(j) = best {
            left[j] -= 1;
            alloc[i] = j;
        }
    }
    alloc
}

/// Hydrus with the exact multiplier for `budget`.
pub fn hydrus_exact(inst: &Instance, budget: f64) -> (f64, Allocation) {
    let s = solve_exact(inst, budget);
    (s.k, at_k(inst, s.k))
}

/// Hydrus with the paper's bisection (Algorithm 2) for `budget`.
pub fn hydrus_bisection(inst: &Instance, budget: f64, epsilon: f64) -> (f64, Allocation) {
    let s = solve_bisection(inst, budget, epsilon);
    (s.k, at_k(inst, s.k))
}

/// DCAF-style: a Lagrangian allocation of computation by each user's value, where value grows
/// with computation and with the user's importance (best QoE), and latency costs nothing
/// (DCAF models the value of compute, not the QoE drop when answers get slow).
pub fn dcaf(inst: &Instance, budget: f64) -> Allocation {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for c in &inst.cost {
        lo = lo.min(*c);
        hi = hi.max(*c);
    }
    let span = (hi - lo).max(1e-9);
    let mut value = Instance::new();
    let mut opts = Vec::new();
    for i in 0..inst.len() {
        let (c, q) = inst.options(i);
        let importance = q.iter().copied().fold(0.0, f64::max);
        opts.clear();
        opts.extend(
            c.iter()
                .map(|&cj| (cj, importance * (0.6 + 0.4 * (cj - lo) / span))),
        );
        value.push(&opts, inst.chosen[i]);
    }
    let s = solve_exact(&value, budget);
    at_k(&value, s.k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::population::Population;
    use rand::SeedableRng;

    #[test]
    fn equal_cost_policies_cost_the_same_and_the_bound_bounds_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..5 {
            let p = Population::generate(1000, &mut rng);
            let inst = &p.instance;
            let d = default(inst);
            let (budget, q_default) = evaluate(inst, &d);
            let g = greedy(inst, &d, &mut rng);
            let (_, he) = hydrus_exact(inst, budget);
            let (_, hb) = hydrus_bisection(inst, budget, 1e-9);
            let dc = dcaf(inst, budget);
            let bound = solve_exact(inst, budget).lp_bound;
            for (name, a) in [
                ("greedy", &g),
                ("exact", &he),
                ("bisection", &hb),
                ("dcaf", &dc),
            ] {
                let (c, q) = evaluate(inst, a);
                assert!(c <= budget + 1e-6, "{name} within budget");
                assert!(
                    c >= budget * 0.999,
                    "{name}: cost {c} is not equal to {budget} within 0.1%"
                );
                assert!(q <= bound + 1e-9, "{name}: the optimum bounds it");
            }
            assert_eq!(
                evaluate(inst, &g).0,
                budget,
                "greedy reuses the same strategies"
            );
            let q = |a: &Allocation| evaluate(inst, a).1;
            assert!(q(&he) >= q(&hb) - 1e-9, "exact >= bisection");
            assert!(
                q(&he) > q(&g) && q(&g) > q_default,
                "hydrus > greedy > default"
            );
            assert!(q(&he) > q(&dc), "hydrus > dcaf on QoE");
        }
    }
}
