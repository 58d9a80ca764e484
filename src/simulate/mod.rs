//! `hydrus simulate`: a trace-driven evaluation that reproduces the Hydrus paper's Figures 5, 7, 8
//! and 10 on data anyone can regenerate (seeded), or on a population read from decision logs.

pub mod hedge;
pub mod plots;
pub mod policies;
pub mod population;

use crate::solve::algo::{k_max, solve_exact, Instance};
use indicatif::{ProgressBar, ProgressStyle};
use policies::{at_k, dcaf, default, evaluate, greedy, hydrus_bisection, hydrus_exact};
use population::Population;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The `hydrus simulate` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Seed of every random choice: the same seed, the same results.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Users per experiment (the paper: 1000).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Experiments for the QoE-per-run figure (the paper: 50).
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Read the population from decision logs (value_info; the default policy is `chosen`).
    #[arg(long)]
    pub from_logs: Option<PathBuf>,
    /// Where to write results.json, results.md and the SVG figures (without it, only the table
    /// is printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hedging mode: Kwiken's p99 reduction against the reissue budget, instead of the Hydrus
    /// experiments (writes hedge.json, hedge.md and fig_hedge.svg).
    #[arg(long)]
    pub hedge: bool,
    /// Hedging mode: requests per (train, test) sample.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
}

/// One policy at the default policy's cost.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub policy: String,
    pub mean_qoe: f64,
    pub mean_latency_ms: f64,
    pub cost_over_default: f64,
    pub qoe_gain: f64,
    pub qoe_over_optimum_bound: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadPoint {
    pub load: usize,
    pub default_qoe: f64,
    pub hydrus_qoe: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KPoint {
    pub k: f64,
    pub mean_qoe: f64,
    pub mean_latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPoint {
    pub run: usize,
    pub default_qoe: f64,
    pub greedy_qoe: f64,
    pub hydrus_qoe: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub seed: u64,
    pub users: usize,
    pub source: String,
    /// Every policy at the default policy's total latency (one population).
    pub equal_cost: Vec<PolicyRow>,
    /// Hydrus exact's QoE gain at equal cost (paper: +35.6%).
    pub qoe_gain_equal_cost: f64,
    /// Latency reduction at equal QoE (paper: 10.1%).
    pub latency_reduction_equal_qoe: f64,
    /// Throughput gain at equal QoE under a fixed latency limit (paper: 54.5%), or `None` when
    /// Hydrus matched the default's QoE at every load tried.
    pub throughput_gain_equal_qoe: Option<f64>,
    pub max_load_tried: usize,
    /// Std-dev over users of their mean latency difference to the default over 10 experiments
    /// (paper: DCAF 119.24, Hydrus 7.99): how unequally a policy treats users.
    pub latency_consistency_dcaf: f64,
    pub latency_consistency_hydrus: f64,
    pub runs: Vec<RunPoint>,
    pub mean_run_gain_over_default: f64,
    pub mean_run_gain_over_greedy: f64,
    pub k_sweep: Vec<KPoint>,
    pub load: Vec<LoadPoint>,
    /// Per-user QoE of one population, sorted, for the CDF.
    pub cdf_default: Vec<f64>,
    pub cdf_greedy: Vec<f64>,
    pub cdf_hydrus: Vec<f64>,
}

fn per_user(inst: &Instance, a: &policies::Allocation) -> (Vec<f64>, Vec<f64>) {
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
pub fn run(args: &SimulateArgs) -> Result<Results, String> {
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
    let n = inst.len() as f64;
    let bar = progress((args.runs + 10 + 4) as u64);

    // Equal cost: every policy at the default policy's total latency.
    let d = default(inst);
    let (budget, q_default) = evaluate(inst, &d);
    let g = greedy(inst, &d, &mut rng);
    let (k_exact, he) = hydrus_exact(inst, budget);
    let (_, hb) = hydrus_bisection(inst, budget, 1e-9);
    let dc = dcaf(inst, budget);
    let bound = solve_exact(inst, budget).lp_bound;
    let row = |name: &str, a: &policies::Allocation| {
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
    let mut equal_cost = vec![
        row("default (random)", &d),
        row("greedy (section 2.4)", &g),
        row("DCAF-style", &dc),
        row("Hydrus, bisection (Alg. 2)", &hb),
        row("Hydrus, exact", &he),
    ];
    equal_cost.push(PolicyRow {
        policy: "optimum (LP bound)".into(),
        mean_qoe: bound / n,
        mean_latency_ms: budget / n,
        cost_over_default: 1.0,
        qoe_gain: bound / q_default - 1.0,
        qoe_over_optimum_bound: 1.0,
    });
    bar.inc(1);

    // Latency at equal QoE.
    let b_eq = budget_for_qoe(inst, q_default, budget);
    let (_, h_eq) = hydrus_exact(inst, b_eq);
    let latency_reduction = 1.0 - evaluate(inst, &h_eq).0 / budget;
    bar.inc(1);

    // k sweep (Figure 8).
    let kmax = k_max(inst).max(k_exact * 4.0);
    let k_sweep: Vec<KPoint> = (0..=100)
        .map(|s| {
            let k = kmax * f64::from(s) / 100.0;
            let (c, q) = evaluate(inst, &at_k(inst, k));
            KPoint {
                k,
                mean_qoe: q / n,
                mean_latency_ms: c / n,
            }
        })
        .collect();
    bar.inc(1);

    // Load (Figure 10): a fixed latency limit, the default's cost at the base load.
    let base_load = (users * 550 / 1000).max(1);
    let limit = {
        let p = pop.prefix(base_load);
        evaluate(&p.instance, &default(&p.instance)).0
    };
    let max_load = (base_load * 2).min(base.len());
    let step = (base_load / 22).max(1);
    let mut load = Vec::new();
    let mut l = base_load;
    while l <= max_load {
        let p = base.prefix(l);
        let dq = default_under_limit(&p.instance, limit / l as f64, &mut rng);
        let hq = solve_exact(&p.instance, limit).qoe / l as f64;
        load.push(LoadPoint {
            load: l,
            default_qoe: dq,
            hydrus_qoe: hq,
        });
        l += step;
    }
    let base_default = load.first().map_or(0.0, |p| p.default_qoe);
    let best = load
        .iter()
        .filter(|p| p.hydrus_qoe >= base_default)
        .map(|p| p.load)
        .max();
    let throughput_gain = match best {
        Some(b) if b < load.last().map_or(0, |p| p.load) => Some(b as f64 / base_load as f64 - 1.0),
        _ => None,
    };
    bar.inc(1);

    // Latency consistency (Figure 9): the same users, 10 experiments with new default draws.
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

    // Runs (Figure 7): fresh users each time.
    let mut runs = Vec::new();
    for r in 0..args.runs {
        let p = if args.from_logs.is_some() {
            pop.clone()
        } else {
            Population::generate(users, &mut rng)
        };
        let ri = &p.instance;
        let rd = default(ri);
        let (rb, rq) = evaluate(ri, &rd);
        let rg = evaluate(ri, &greedy(ri, &rd, &mut rng)).1;
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
    bar.finish_and_clear();
    let avg = |f: &dyn Fn(&RunPoint) -> f64| mean(&runs.iter().map(f).collect::<Vec<_>>());
    let (rd, rg, rh) = (
        avg(&|r| r.default_qoe),
        avg(&|r| r.greedy_qoe),
        avg(&|r| r.hydrus_qoe),
    );

    let sorted = |a: &policies::Allocation| {
        let (_, mut q) = per_user(inst, a);
        q.sort_by(f64::total_cmp);
        q
    };
    Ok(Results {
        seed: args.seed,
        users,
        source,
        qoe_gain_equal_cost: equal_cost[4].qoe_gain,
        equal_cost,
        latency_reduction_equal_qoe: latency_reduction,
        throughput_gain_equal_qoe: throughput_gain,
        max_load_tried: max_load,
        latency_consistency_dcaf: std_dev(&diff_dcaf),
        latency_consistency_hydrus: std_dev(&diff_hydrus),
        mean_run_gain_over_default: if rd > 0.0 { rh / rd - 1.0 } else { 0.0 },
        mean_run_gain_over_greedy: if rg > 0.0 { rh / rg - 1.0 } else { 0.0 },
        runs,
        k_sweep,
        load,
        cdf_default: sorted(&d),
        cdf_greedy: sorted(&g),
        cdf_hydrus: sorted(&he),
    })
}

/// A population from decision logs: each usable record is a user; `chosen` is the default.
pub fn from_logs(path: &Path) -> Result<Population, String> {
    let mut c = crate::solve::input::Collector::new(86_400, crate::solve::input::Keying::OfDay);
    crate::solve::input::read_path(path, &mut c)?;
    let mut instance = Instance::new();
    let mut opts = Vec::new();
    for inst in c.pools.values() {
        for i in 0..inst.len() {
            let (cs, qs) = inst.options(i);
            opts.clear();
            opts.extend(cs.iter().copied().zip(qs.iter().copied()));
            instance.push(&opts, inst.chosen[i]);
        }
    }
    if instance.is_empty() {
        return Err(format!("{}: no usable record", path.display()));
    }
    Ok(Population {
        instance,
        curves: Vec::new(),
    })
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// The results table, as in the README.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Seed {}, {} users ({}).\n\n",
        r.seed, r.users, r.source
    ));
    s.push_str("| policy (at the default's total latency) | mean QoE | mean latency (ms) | cost / default | QoE vs default | QoE / optimum bound |\n|---|---|---|---|---|---|\n");
    for p in &r.equal_cost {
        s.push_str(&format!(
            "| {} | {:.4} | {:.1} | {:.4} | {} | {:.4} |\n",
            p.policy,
            p.mean_qoe,
            p.mean_latency_ms,
            p.cost_over_default,
            pct(p.qoe_gain),
            p.qoe_over_optimum_bound
        ));
    }
    s.push_str("\n| metric | hydrus simulate | paper |\n|---|---|---|\n");
    s.push_str(&format!(
        "| QoE gain at equal cost (Hydrus exact vs default) | {} | +35.6% |\n",
        pct(r.qoe_gain_equal_cost)
    ));
    s.push_str(&format!(
        "| latency reduction at equal QoE | {:.1}% | 10.1% |\n",
        r.latency_reduction_equal_qoe * 100.0
    ));
    s.push_str(&format!(
        "| throughput gain at equal QoE, fixed latency limit | {} | +54.5% |\n",
        match r.throughput_gain_equal_qoe {
            Some(g) => pct(g),
            None => format!(
                "over {} (every load tried)",
                pct(r.max_load_tried as f64 / r.load.first().map_or(1, |p| p.load) as f64 - 1.0)
            ),
        }
    ));
    s.push_str(&format!(
        "| latency consistency: std-dev of per-user latency difference vs default (ms), DCAF / Hydrus | {:.2} / {:.2} | 119.24 / 7.99 |\n",
        r.latency_consistency_dcaf, r.latency_consistency_hydrus
    ));
    s.push_str(&format!(
        "| QoE over {} runs: Hydrus vs default / vs greedy | {} / {} | +49% / +25% |\n",
        r.runs.len(),
        pct(r.mean_run_gain_over_default),
        pct(r.mean_run_gain_over_greedy)
    ));
    s
}

/// `hydrus simulate`: run, print the table, and with `--out` write results.json, results.md
/// and the figures.
pub fn main(args: &SimulateArgs) -> Result<(), String> {
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let write = |name: &str, text: &str| -> Result<(), String> {
        match &args.out {
            Some(out) => {
                let p = out.join(name);
                std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
            }
            None => Ok(()),
        }
    };
    if args.hedge {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let r = hedge::run(args.seed, args.requests.max(100), &mut rng);
        let md = hedge::markdown(&r);
        let json = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        write("hedge.json", &json)?;
        write("hedge.md", &md)?;
        print!("{md}");
        match &args.out {
            Some(out) => {
                plots::hedge(&r, out)?;
                eprintln!(
                    "wrote {}/hedge.json, hedge.md, fig_hedge.svg",
                    out.display()
                );
            }
            None => eprintln!("(--out DIR writes hedge.json, hedge.md and fig_hedge.svg)"),
        }
        return Ok(());
    }
    let r = run(args)?;
    let json = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
    write("results.json", &json)?;
    let md = markdown(&r);
    write("results.md", &md)?;
    print!("{md}");
    match &args.out {
        Some(out) => {
            plots::all(&r, out)?;
            eprintln!(
                "wrote {}/results.json, results.md, fig5_cdf.svg, fig7_runs.svg, fig8_k_sweep.svg, fig10_load.svg",
                out.display()
            );
        }
        None => eprintln!(
            "(--out DIR writes results.json, results.md and the figures fig5_cdf.svg, fig7_runs.svg, fig8_k_sweep.svg, fig10_load.svg)"
        ),
    }
    Ok(())
}
