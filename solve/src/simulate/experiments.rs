//! The Hydrus experiments of `hydrus simulate`, one function per figure or table row, run in
//! a fixed order on one seeded generator (so a seed always gives the same results).

use super::policies::{
    at_k, dcaf, default, evaluate, greedy, hydrus_bisection, hydrus_exact, Allocation,
};
use super::population::Population;
use super::{
    from_logs, KPoint, LoadPoint, PolicyRow, Results, RunPoint, SimulateArgs, SimulateError,
};
use crate::hydrus::algo::{k_max, solve_exact, Instance};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn per_user(inst: &Instance, a: &Allocation) -> (Vec<f64>, Vec<f64>) {
    a.iter()
        .enumerate()
        .map(|(i, &j)| {
            let (c, q) = inst.options(i);
            (c[j], q[j])
        })
        .unzip()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn std_dev(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// The smallest budget at which Hydrus's QoE reaches `target` (bisection on the budget).
fn budget_for_qoe(inst: &Instance, target: f64, hi: f64) -> f64 {
    let lo_cost: f64 = (0..inst.len())
        .map(|i| {
            inst.options(i)
                .0
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    let (mut lo, mut hi) = (lo_cost, hi);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if solve_exact(inst, mid).qoe >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The default policy under a latency limit: random strategies from the cheapest ones whose mean
/// latency fits `limit` per user (it degrades its menu as load grows).
fn default_under_limit(inst: &Instance, per_user_limit: f64, rng: &mut ChaCha8Rng) -> f64 {
    use rand::Rng;
    let mut qoe = 0.0;
    for i in 0..inst.len() {
        let (c, q) = inst.options(i);
        let mut order: Vec<usize> = (0..c.len()).collect();
        order.sort_by(|&a, &b| c[a].total_cmp(&c[b]));
        let mut m = order.len();
        while m > 1 && order[..m].iter().map(|&j| c[j]).sum::<f64>() / m as f64 > per_user_limit {
            m -= 1;
        }
        qoe += q[order[rng.random_range(0..m)]];
    }
    qoe / inst.len().max(1) as f64
}

fn progress(len: u64) -> ProgressBar {
    let p = ProgressBar::new(len);
    p.set_style(
        ProgressStyle::with_template("{spinner} simulating {pos}/{len} [{bar:30}] {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    p
}

/// Run every experiment. Deterministic for a seed.
pub fn run(args: &SimulateArgs) -> Result<Results, SimulateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let (base, source) = match &args.from_logs {
        Some(path) => (
            from_logs(path)?,
            format!("decision logs: {}", path.display()),
        ),
        None => (
            Population::generate(args.users.max(1) * 2, &mut rng),
            "generated (section 2 classes)".to_string(),
        ),
    };
    let users = if args.from_logs.is_some() {
        base.len()
    } else {
        args.users.max(1)
    };
    let pop = base.prefix(users);
    let inst = &pop.instance;
    let bar = progress((args.runs + 10 + 4) as u64);

    let eq = EqualCost::of(inst, &mut rng);
    bar.inc(1);
    let latency_reduction = latency_reduction_at_equal_qoe(inst, &eq);
    bar.inc(1);
    let k_sweep = k_sweep(inst, eq.k_exact);
    bar.inc(1);
    let load = LoadCurve::of(&base, &pop, users, &mut rng);
    bar.inc(1);
    let (diff_dcaf, diff_hydrus) = latency_consistency(inst, users, &mut rng, &bar);
    let runs = runs(args, &pop, users, &mut rng, &bar);
    bar.finish_and_clear();
    let avg = |f: &dyn Fn(&RunPoint) -> f64| mean(&runs.iter().map(f).collect::<Vec<_>>());
    let (rd, rg, rh) = (
        avg(&|r| r.default_qoe),
        avg(&|r| r.greedy_qoe),
        avg(&|r| r.hydrus_qoe),
    );

    let sorted = |a: &Allocation| {
        let (_, mut q) = per_user(inst, a);
        q.sort_by(f64::total_cmp);
        q
    };
    Ok(Results {
        seed: args.seed,
        users,
        source,
        qoe_gain_equal_cost: eq.rows[4].qoe_gain,
        latency_reduction_equal_qoe: latency_reduction,
        throughput_gain_equal_qoe: load.throughput_gain,
        max_load_tried: load.max_load,
        latency_consistency_dcaf: std_dev(&diff_dcaf),
        latency_consistency_hydrus: std_dev(&diff_hydrus),
        mean_run_gain_over_default: if rd > 0.0 { rh / rd - 1.0 } else { 0.0 },
        mean_run_gain_over_greedy: if rg > 0.0 { rh / rg - 1.0 } else { 0.0 },
        runs,
        k_sweep,
        load: load.points,
        cdf_default: sorted(&eq.default),
        cdf_greedy: sorted(&eq.greedy),
        cdf_hydrus: sorted(&eq.hydrus),
        equal_cost: eq.rows,
    })
}

/// Every policy at the default policy's total latency (one population), and what the later
/// experiments reuse from it.
struct EqualCost {
    rows: Vec<PolicyRow>,
    /// The default policy's total latency: the budget every policy gets.
    budget: f64,
    /// The default policy's total QoE.
    q_default: f64,
    k_exact: f64,
    default: Allocation,
    greedy: Allocation,
    hydrus: Allocation,
}

impl EqualCost {
    fn of(inst: &Instance, rng: &mut ChaCha8Rng) -> Self {
        let n = inst.len() as f64;
        let d = default(inst);
        let (budget, q_default) = evaluate(inst, &d);
        let g = greedy(inst, &d, rng);
        let (k_exact, he) = hydrus_exact(inst, budget);
        let (_, hb) = hydrus_bisection(inst, budget, 1e-9);
        let dc = dcaf(inst, budget);
        let bound = solve_exact(inst, budget).lp_bound;
        let row = |name: &str, a: &Allocation| {
            let (c, q) = evaluate(inst, a);
            PolicyRow {
                policy: name.into(),
                mean_qoe: q / n,
                mean_latency_ms: c / n,
                cost_over_default: c / budget,
                qoe_gain: q / q_default - 1.0,
                qoe_over_optimum_bound: q / bound,
            }
        };
        let mut rows = vec![
            row("default (random)", &d),
            row("greedy (section 2.4)", &g),
            row("DCAF-style", &dc),
            row("Hydrus, bisection (Alg. 2)", &hb),
            row("Hydrus, exact", &he),
        ];
        rows.push(PolicyRow {
            policy: "optimum (LP bound)".into(),
            mean_qoe: bound / n,
            mean_latency_ms: budget / n,
            cost_over_default: 1.0,
            qoe_gain: bound / q_default - 1.0,
            qoe_over_optimum_bound: 1.0,
        });
        Self {
            rows,
            budget,
            q_default,
            k_exact,
            default: d,
            greedy: g,
            hydrus: he,
        }
    }
}

/// Latency at equal QoE: how much less Hydrus spends to match the default's QoE.
fn latency_reduction_at_equal_qoe(inst: &Instance, eq: &EqualCost) -> f64 {
    let b_eq = budget_for_qoe(inst, eq.q_default, eq.budget);
    let (_, h_eq) = hydrus_exact(inst, b_eq);
    1.0 - evaluate(inst, &h_eq).0 / eq.budget
}

/// QoE and latency against k (Figure 8), up to well past the solved `k_exact`.
fn k_sweep(inst: &Instance, k_exact: f64) -> Vec<KPoint> {
    let n = inst.len() as f64;
    let kmax = k_max(inst).max(k_exact * 4.0);
    (0..=100)
        .map(|s| {
            let k = kmax * f64::from(s) / 100.0;
            let (c, q) = evaluate(inst, &at_k(inst, k));
            KPoint {
                k,
                mean_qoe: q / n,
                mean_latency_ms: c / n,
            }
        })
        .collect()
}

/// QoE against load under a fixed latency limit (Figure 10), and the throughput gain at the
/// default's QoE that it shows.
struct LoadCurve {
    points: Vec<LoadPoint>,
    throughput_gain: Option<f64>,
    max_load: usize,
}

impl LoadCurve {
    /// The limit is the default's cost at the base load (55% of `users`).
    fn of(base: &Population, pop: &Population, users: usize, rng: &mut ChaCha8Rng) -> Self {
        let base_load = (users * 550 / 1000).max(1);
        let limit = {
            let p = pop.prefix(base_load);
            evaluate(&p.instance, &default(&p.instance)).0
        };
        let max_load = (base_load * 2).min(base.len());
        let step = (base_load / 22).max(1);
        let mut points = Vec::new();
        let mut l = base_load;
        while l <= max_load {
            let p = base.prefix(l);
            let dq = default_under_limit(&p.instance, limit / l as f64, rng);
            let hq = solve_exact(&p.instance, limit).qoe / l as f64;
            points.push(LoadPoint {
                load: l,
                default_qoe: dq,
                hydrus_qoe: hq,
            });
            l += step;
        }
        let base_default = points.first().map_or(0.0, |p| p.default_qoe);
        let best = points
            .iter()
            .filter(|p| p.hydrus_qoe >= base_default)
            .map(|p| p.load)
            .max();
        let throughput_gain = match best {
            Some(b) if b < points.last().map_or(0, |p| p.load) => {
                Some(b as f64 / base_load as f64 - 1.0)
            }
            _ => None,
        };
        Self {
            points,
            throughput_gain,
            max_load,
        }
    }
}

/// Latency consistency (Figure 9): the same users, 10 experiments with new default draws.
/// Returns each user's mean latency difference to the default under DCAF and under Hydrus.
fn latency_consistency(
    inst: &Instance,
    users: usize,
    rng: &mut ChaCha8Rng,
    bar: &ProgressBar,
) -> (Vec<f64>, Vec<f64>) {
    let mut diff_dcaf = vec![0.0; users];
    let mut diff_hydrus = vec![0.0; users];
    for _ in 0..10 {
        let mut redrawn = Instance::new();
        let mut opts = Vec::new();
        for i in 0..users {
            use rand::Rng;
            let (c, q) = inst.options(i);
            opts.clear();
            opts.extend(c.iter().copied().zip(q.iter().copied()));
            redrawn.push(&opts, Some(rng.random_range(0..c.len() as u32)));
        }
        let dd = default(&redrawn);
        let (b, _) = evaluate(&redrawn, &dd);
        let (ld, _) = per_user(&redrawn, &dd);
        let (lc, _) = per_user(&redrawn, &dcaf(&redrawn, b));
        let (lh, _) = per_user(&redrawn, &hydrus_exact(&redrawn, b).1);
        for i in 0..users {
            diff_dcaf[i] += (lc[i] - ld[i]) / 10.0;
            diff_hydrus[i] += (lh[i] - ld[i]) / 10.0;
        }
        bar.inc(1);
    }
    (diff_dcaf, diff_hydrus)
}

/// QoE per run (Figure 7): fresh users each time (the same population from logs).
fn runs(
    args: &SimulateArgs,
    pop: &Population,
    users: usize,
    rng: &mut ChaCha8Rng,
    bar: &ProgressBar,
) -> Vec<RunPoint> {
    let mut runs = Vec::new();
    for r in 0..args.runs {
        let p = if args.from_logs.is_some() {
            pop.clone()
        } else {
            Population::generate(users, rng)
        };
        let ri = &p.instance;
        let rd = default(ri);
        let (rb, rq) = evaluate(ri, &rd);
        let rg = evaluate(ri, &greedy(ri, &rd, rng)).1;
        let rh = solve_exact(ri, rb).qoe;
        let rn = ri.len() as f64;
        runs.push(RunPoint {
            run: r + 1,
            default_qoe: rq / rn,
            greedy_qoe: rg / rn,
            hydrus_qoe: rh / rn,
        });
        bar.inc(1);
    }
    runs
}
