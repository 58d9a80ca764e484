//! `hydrus simulate`: a trace-driven evaluation that reproduces the Hydrus paper's Figures 5, 7, 8
//! and 10 on data anyone can regenerate (seeded), or on a population read from decision logs.

mod experiments;
pub mod hedge;
pub mod plots;
pub mod policies;
pub mod population;
pub mod ramp;
pub mod resources;
pub mod shift;

pub use experiments::run;

use crate::hydrus::algo::Instance;
use crate::read::InputError;
use plots::PlotError;
use population::Population;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why `hydrus simulate` failed (the binary prints it after `error: `); each variant names the
/// file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// `--from-logs` could not be read.
    #[error(transparent)]
    Logs(#[from] InputError),
    #[error("{}: no usable record", path.display())]
    NoUsableRecord { path: PathBuf },
    /// The `--out` directory could not be created.
    #[error("{}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Results could not be serialized as JSON for `file`.
    #[error("{file}: {source}")]
    Json {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// The `hydrus simulate` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Seed of every random choice: the same seed, the same results.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Users per experiment (the paper: 1000); with `--resources`, users (requests) per window
    /// of each day (default 500000 there).
    #[arg(
        long,
        default_value_t = 1000,
        default_value_if("resources", clap::builder::ArgPredicate::IsPresent, "500000")
    )]
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
    /// Spend-control mode: a shifted day (traffic surge, score shift, class growth), open loop
    /// against the closed loop and the optimum (writes shift.json, shift.md and the figures
    /// fig_shift_spend.svg, fig_shift_qoe.svg).
    #[arg(long, conflicts_with = "hedge")]
    pub shift: bool,
    /// Hedging mode: requests per (train, test) sample.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// Rollout mode: a ramp with a regression injected into treatment, when the guard trips it
    /// and how many users met it; then runs without one, how often the guard trips on noise
    /// (writes ramp.json and ramp.md).
    #[arg(long, conflicts_with_all = ["hedge", "shift"])]
    pub ramp: bool,
    /// Rollout mode: treatment's errors exceed control's by this share (0.05: 5 points).
    #[arg(long, default_value_t = 0.05)]
    pub error_increase: f64,
    /// Rollout mode: treatment's request times are this much longer (0.3: 30%).
    #[arg(long, default_value_t = 0.0)]
    pub p99_increase: f64,
    /// Rollout mode: runs without a regression, and requests in each.
    #[arg(long, default_value_t = 20)]
    pub ramp_seeds: u64,
    #[arg(long, default_value_t = 50_000)]
    pub ramp_requests: u64,
    /// Per-resource mode: strategies that spend two clusters (large, small), each with its own
    /// budget; one folded k against one k per resource, solved on a train day and measured on
    /// a held-out day (writes resources.json and resources.md).
    #[arg(long, conflicts_with_all = ["hedge", "shift", "ramp"])]
    pub resources: bool,
    /// Per-resource mode: windows of the day.
    #[arg(long, default_value_t = 24)]
    pub windows: usize,
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

/// A population from decision logs: each usable record is a user; `chosen` is the default.
pub fn from_logs(path: &Path) -> Result<Population, SimulateError> {
    let mut c = crate::read::Collector::new(86_400, crate::read::Keying::OfDay);
    crate::read::read_path(path, &mut c)?;
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
        return Err(SimulateError::NoUsableRecord {
            path: path.to_path_buf(),
        });
    }
    Ok(Population {
        instance,
        curves: Vec::new(),
    })
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// The results table, as in docs/results.md.
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

/// `hydrus simulate --shift`: the shifted day (shift.json, shift.md and its figures).
fn shift_main(
    args: &SimulateArgs,
    write: &dyn Fn(&str, &str) -> Result<(), SimulateError>,
) -> Result<(), SimulateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let r = shift::run(args.seed, args.users, &mut rng);
    let md = shift::markdown(&r);
    let json = serde_json::to_string_pretty(&r).map_err(|source| SimulateError::Json {
        file: "shift.json",
        source,
    })?;
    write("shift.json", &json)?;
    write("shift.md", &md)?;
    print!("{md}");
    if let Some(out) = &args.out {
        plots::shift(&r, out)?;
        eprintln!(
            "wrote {}/shift.json, shift.md, fig_shift_spend.svg, fig_shift_qoe.svg",
            out.display()
        );
    }
    Ok(())
}

/// `hydrus simulate`: run, print the table, and with `--out` write results.json, results.md
/// and the figures.
pub fn main(args: &SimulateArgs) -> Result<(), SimulateError> {
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|source| SimulateError::CreateDir {
            dir: out.clone(),
            source,
        })?;
    }
    let write = |name: &str, text: &str| -> Result<(), SimulateError> {
        match &args.out {
            Some(out) => {
                let path = out.join(name);
                std::fs::write(&path, text).map_err(|source| SimulateError::Write { path, source })
            }
            None => Ok(()),
        }
    };
    if args.shift {
        return shift_main(args, &write);
    }
    if args.resources {
        let r = resources::run(args.seed, args.windows, args.users);
        let md = resources::markdown(&r);
        let json = serde_json::to_string_pretty(&r).map_err(|source| SimulateError::Json {
            file: "resources.json",
            source,
        })?;
        write("resources.json", &json)?;
        write("resources.md", &md)?;
        print!("{md}");
        return Ok(());
    }
    if args.ramp {
        let r = ramp::run(ramp::RampSetup {
            seed: args.seed,
            error_increase: args.error_increase,
            p99_increase: args.p99_increase,
            seeds: args.ramp_seeds,
            requests: args.ramp_requests,
        });
        let md = ramp::markdown(&r);
        let json = serde_json::to_string_pretty(&r).map_err(|source| SimulateError::Json {
            file: "ramp.json",
            source,
        })?;
        write("ramp.json", &json)?;
        write("ramp.md", &md)?;
        print!("{md}");
        return Ok(());
    }
    if args.hedge {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let r = hedge::run(args.seed, args.requests.max(100), &mut rng);
        let md = hedge::markdown(&r);
        let json = serde_json::to_string_pretty(&r).map_err(|source| SimulateError::Json {
            file: "hedge.json",
            source,
        })?;
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
    let json = serde_json::to_string_pretty(&r).map_err(|source| SimulateError::Json {
        file: "results.json",
        source,
    })?;
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
