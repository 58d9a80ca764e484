//! `hydrus simulate --resources`: strategies that spend two resources, the large model's GPU
//! cluster (`large`) and the small model's CPUs (`small`), each with its own budget per window.
//!
//! Four strategies, costs per request in each cluster's own unit: `s10` {small: 10}, `s20`
//! {small: 20}, `s40` {large: 20, small: 4}, `s80` {large: 40, small: 4}. (The small cluster's
//! unit is as large as the large one's, so that folding the costs into their sum leaves room
//! for the large cluster to overspend: with `small` a few units a request, a folded budget
//! could not overload `large` by much.) A user's QoE per strategy comes from two latent
//! scores, `a` (what more candidates from the small model are worth to them) and `b` (what the
//! large model's ranking is worth), scaled by their engagement `e`; the large model's worth
//! follows the day ([`large_gain`]: highest at 20:00, lowest at 08:00). The budgets are
//! constant per request ([`BUDGET`]), chosen so that at the day's mean large-model gain the two
//! resources' multipliers are about equal, where one folded `k` spends about what the
//! per-resource ones do.
//!
//! Each window draws a TRAIN day's users (seed) and a held-out TEST day's (seed + 1: same
//! distribution, other users). Two policies are solved on the train day and applied to the test
//! day: the paper's one-cost model (costs and budgets summed over the resources, `k` by
//! [`solve_exact`]) and the per-resource one ([`MultiSummary`], exact, the proxy's rule
//! [`live_choice`]). Each is measured by each resource's spend over its budget and by QoE over
//! the test day's own K-constraint LP bound (every resource within its budget).

use crate::hydrus::algo::{solve_exact, Instance};
use crate::multi::{live_choice, MultiBudget, MultiSummary};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The resources, in cost-vector order.
pub const RESOURCES: [&str; 2] = ["large", "small"];

/// A strategy: its name and its cost in each resource (per request).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Strategy {
    pub name: &'static str,
    pub cost: [f64; 2],
}

pub const STRATEGIES: [Strategy; 4] = [
    Strategy {
        name: "s10",
        cost: [0.0, 10.0],
    },
    Strategy {
        name: "s20",
        cost: [0.0, 20.0],
    },
    Strategy {
        name: "s40",
        cost: [20.0, 4.0],
    },
    Strategy {
        name: "s80",
        cost: [40.0, 4.0],
    },
];

/// Budget per request of each resource, every window.
pub const BUDGET: [f64; 2] = [16.0, 10.0];

/// Amplitude of the large model's diurnal worth (see [`large_gain`]).
pub const AMPLITUDE: f64 = 0.5;

/// How much the large model is worth at `hour` (0-24) relative to the day's mean:
/// `1 + AMPLITUDE cos(2 pi (hour - 20) / 24)`.
pub fn large_gain(hour: f64) -> f64 {
    1.0 + AMPLITUDE * ((hour - 20.0) / 24.0 * std::f64::consts::TAU).cos()
}

/// One user's QoE per strategy (in [`STRATEGIES`] order) at the large model's worth `m`.
fn draw_user(m: f64, rng: &mut ChaCha8Rng) -> [f64; 4] {
    let e: f64 = rng.random_range(0.5..1.5);
    let a: f64 = rng.random();
    let b: f64 = rng.random();
    [
        e * 0.30,
        e * (0.30 + 0.30 * a),
        e * (0.30 + 0.10 * a + 0.50 * b * m),
        e * (0.30 + 0.12 * a + 0.75 * b * m),
    ]
}

/// The row-major cost vectors of every strategy (`j * 2 + r`).
fn cost_vectors() -> Vec<f64> {
    STRATEGIES.iter().flat_map(|s| s.cost).collect()
}

/// One cost per strategy: the sum over the resources (the one-cost model).
fn folded_costs() -> [f64; 4] {
    STRATEGIES.map(|s| s.cost.iter().sum())
}

/// One window: each policy's spend over budget per resource (`[large, small]`) and QoE over
/// the test day's K-constraint LP bound, both on the held-out test day.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub window: usize,
    /// Start of the window, `HH:MM`.
    pub start: String,
    /// The large model's worth this window ([`large_gain`] at its middle).
    pub large_gain: f64,
    pub single_k: f64,
    pub single_spend: [f64; 2],
    pub single_qoe_over_bound: f64,
    pub k: [f64; 2],
    pub per_resource_spend: [f64; 2],
    pub per_resource_qoe_over_bound: f64,
    /// Cutting-plane iterations of the train day's solve, and whether it was exact.
    pub iterations: u32,
    pub exact: bool,
}

/// A policy's spend over budget in one resource: its largest and smallest over the windows,
/// and the windows' starts.
#[derive(Debug, Clone, Serialize)]
pub struct Range {
    pub most: f64,
    pub most_at: String,
    pub least: f64,
    pub least_at: String,
}

impl Range {
    fn of(rows: &[WindowRow], spend: impl Fn(&WindowRow) -> f64) -> Self {
        let mut r = Range {
            most: f64::NEG_INFINITY,
            most_at: String::new(),
            least: f64::INFINITY,
            least_at: String::new(),
        };
        for row in rows {
            let x = spend(row);
            if x > r.most {
                r.most = x;
                r.most_at.clone_from(&row.start);
            }
            if x < r.least {
                r.least = x;
                r.least_at.clone_from(&row.start);
            }
        }
        r
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourcesResults {
    pub seed: u64,
    pub windows: usize,
    pub users: usize,
    pub resources: [&'static str; 2],
    pub strategies: Vec<Strategy>,
    pub budget: [f64; 2],
    pub rows: Vec<WindowRow>,
    /// Largest `|spend / budget - 1|` of the per-resource policy over windows and resources.
    pub worst_per_resource_deviation: f64,
    /// Smallest per-resource QoE over the K-constraint bound over windows.
    pub min_per_resource_qoe_over_bound: f64,
    /// Per-resource QoE over the bound, the whole day (sums over windows).
    pub day_per_resource_qoe_over_bound: f64,
    /// The single-k policy's spend over budget, per resource (`[large, small]`).
    pub single_spend: [Range; 2],
    /// Every per-resource solve on a train day was exact.
    pub all_exact: bool,
}

/// One window of one day: `users` users' QoE per strategy.
fn draw_window(users: usize, m: f64, rng: &mut ChaCha8Rng) -> Vec<[f64; 4]> {
    (0..users).map(|_| draw_user(m, rng)).collect()
}

/// Spend per resource and QoE of choices `choice(q)` over `day`.
fn apply(day: &[[f64; 4]], mut choice: impl FnMut(&[f64; 4]) -> usize) -> ([f64; 2], f64) {
    let mut spend = [0.0; 2];
    let mut qoe = 0.0;
    for q in day {
        let j = choice(q);
        qoe += q[j];
        for (s, c) in spend.iter_mut().zip(STRATEGIES[j].cost) {
            *s += c;
        }
    }
    (spend, qoe)
}

fn summary(day: &[[f64; 4]], costs: &[f64]) -> MultiSummary {
    let mut s = MultiSummary::new(
        RESOURCES.len(),
        usize::MAX,
        MultiBudget(BUDGET.iter().map(|&b| Some(b)).collect()),
    );
    for q in day {
        s.push(costs, q, 0);
    }
    s
}

fn one_cost_instance(day: &[[f64; 4]]) -> Instance {
    let folded = folded_costs();
    let mut inst = Instance::new();
    let mut opts = Vec::with_capacity(folded.len());
    for q in day {
        opts.clear();
        opts.extend(folded.iter().copied().zip(q.iter().copied()));
        inst.push(&opts, None);
    }
    inst
}

fn hhmm(minutes: usize) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Run the day: `windows` windows of `users` users each. Deterministic for a seed.
pub fn run(seed: u64, windows: usize, users: usize) -> ResourcesResults {
    let windows = windows.max(1);
    let users = users.max(10);
    let n = users as f64;
    let mut train_rng = ChaCha8Rng::seed_from_u64(seed);
    let mut test_rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    let costs = cost_vectors();
    let total_budget: f64 = BUDGET.iter().sum::<f64>() * n;
    let mut rows = Vec::with_capacity(windows);
    // Per-resource QoE and the bound, summed over the windows.
    let mut day = (0.0, 0.0);
    for w in 0..windows {
        let hour = (w as f64 + 0.5) * 24.0 / windows as f64;
        let m = large_gain(hour);
        let train = draw_window(users, m, &mut train_rng);
        let test = draw_window(users, m, &mut test_rng);
        let over = |spend: [f64; 2]| [0, 1].map(|r| spend[r] / (BUDGET[r] * n));

        // The one-cost model: k on the train day, the rule on the test day.
        let one = solve_exact(&one_cost_instance(&train), total_budget);
        let test_inst = one_cost_instance(&test);
        let mut i = 0;
        let (single_spend, single_qoe) = apply(&test, |_| {
            let j = test_inst.live_choice(i, one.k);
            i += 1;
            j
        });

        // Per resource: k on the train day, the proxy's rule on the test day.
        let multi = summary(&train, &costs).solve();
        let (spend, qoe) = apply(&test, |q| live_choice(&costs, q, &multi.k));
        let bound = summary(&test, &costs).solve().lp_bound;
        day.0 += qoe;
        day.1 += bound;

        rows.push(WindowRow {
            window: w,
            start: hhmm(w * 24 * 60 / windows),
            large_gain: m,
            single_k: one.k,
            single_spend: over(single_spend),
            single_qoe_over_bound: single_qoe / bound,
            k: [multi.k[0], multi.k.get(1).copied().unwrap_or(0.0)],
            per_resource_spend: over(spend),
            per_resource_qoe_over_bound: qoe / bound,
            iterations: multi.iterations,
            exact: multi.exact,
        });
    }
    let worst_per_resource_deviation = rows
        .iter()
        .flat_map(|r| r.per_resource_spend)
        .map(|x| (x - 1.0).abs())
        .fold(0.0, f64::max);
    let min_per_resource_qoe_over_bound = rows
        .iter()
        .map(|r| r.per_resource_qoe_over_bound)
        .fold(f64::INFINITY, f64::min);
    let single_spend = [0, 1].map(|r| Range::of(&rows, |row| row.single_spend[r]));
    ResourcesResults {
        seed,
        windows,
        users,
        resources: RESOURCES,
        strategies: STRATEGIES.to_vec(),
        budget: BUDGET,
        worst_per_resource_deviation,
        min_per_resource_qoe_over_bound,
        day_per_resource_qoe_over_bound: day.0 / day.1,
        single_spend,
        all_exact: rows.iter().all(|r| r.exact),
        rows,
    }
}

/// The results table, as in docs/results.md.
pub fn markdown(r: &ResourcesResults) -> String {
    let strategies: Vec<String> = r
        .strategies
        .iter()
        .map(|s| {
            let parts: Vec<String> = RESOURCES
                .iter()
                .zip(s.cost)
                .filter(|(_, c)| *c > 0.0)
                .map(|(name, c)| format!("{name}: {c}"))
                .collect();
            format!("{} {{{}}}", s.name, parts.join(", "))
        })
        .collect();
    let mut s = format!(
        "Seed {}, {} windows of {} users each (train day: seed, test day: seed + 1); strategies {}; budget per request: large {}, small {}.\n\n",
        r.seed,
        r.windows,
        r.users,
        strategies.join(", "),
        r.budget[0],
        r.budget[1]
    );
    s.push_str("| window | large-model gain | single k: large / budget | small / budget | per-resource k: large / budget | small / budget | QoE / K-constraint LP bound: per-resource k | single k |\n|---|---|---|---|---|---|---|---|\n");
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.2} | {:.3} | {:.3} | {:.4} | {:.4} | {:.5} | {:.5} |\n",
            row.start,
            row.large_gain,
            row.single_spend[0],
            row.single_spend[1],
            row.per_resource_spend[0],
            row.per_resource_spend[1],
            row.per_resource_qoe_over_bound,
            row.single_qoe_over_bound,
        ));
    }
    let range = |x: &Range| {
        format!(
            "{:.3} ({}) / {:.3} ({})",
            x.most, x.most_at, x.least, x.least_at
        )
    };
    s.push_str(&format!(
        "\n| over every window (test day) | figure | goal |\n|---|---|---|\n\
         | per-resource k: worst spend vs budget, any resource | {:.2}% | within 1% |\n\
         | per-resource k: least QoE / K-constraint LP bound | {:.5} | >= 0.999 |\n\
         | per-resource k: QoE / K-constraint LP bound, whole day | {:.5} | |\n\
         | single k: large spend / budget, most / least | {} | |\n\
         | single k: small spend / budget, most / least | {} | |\n",
        r.worst_per_resource_deviation * 100.0,
        r.min_per_resource_qoe_over_bound,
        r.day_per_resource_qoe_over_bound,
        range(&r.single_spend[0]),
        range(&r.single_spend[1]),
    ));
    if !r.all_exact {
        s.push_str("\nSome train-day solve stopped before its bounds met (`exact: false` in resources.json).\n");
    }
    s
}
