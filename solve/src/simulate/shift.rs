//! `hydrus simulate --shift`: a day that differs from the one the k-table was solved for. The
//! k-table (one `k_t` and expected cost per request per hour) is solved on the seeded
//! population; the shifted day then replays requests second by second, where traffic doubles
//! (08:00-10:00), the QoE scores grow 30% (13:00-15:00) and the class of users who reward
//! accuracy grows from 30% to 60% (18:00-20:00). Open loop applies `k_t`; closed loop
//! multiplies it by the spend controller's `m` (the very `SpendLoop` of hydrus-filters, driven
//! by simulated time), against the expected cost per request and a cost-per-second cap; the
//! optimum is the per-window LP bound of the shifted day's requests at the same spend.

use super::population::{Class, Population};
use crate::hydrus::algo::{solve_exact, Instance};
use hydrus_filters::hydrus::spend::{Settings, SpendLoop};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

const DAY: usize = 86_400;
const WINDOW: usize = 3_600;
const WINDOWS: usize = DAY / WINDOW;
/// Seconds after a shift begins before the goals are checked.
pub const SETTLE_S: usize = 30;

/// A shift of the day: from, to (seconds of the day), what changes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub from_s: usize,
    pub to_s: usize,
    pub traffic: f64,
    pub score_scale: f64,
    /// Share of requests from the high-QoE-at-high-latency class (else the population's).
    pub accuracy_class_share: Option<f64>,
}

pub const PHASES: [Phase; 3] = [
    Phase {
        name: "2x traffic surge",
        from_s: 8 * WINDOW,
        to_s: 10 * WINDOW,
        traffic: 2.0,
        score_scale: 1.0,
        accuracy_class_share: None,
    },
    Phase {
        name: "+30% QoE scores",
        from_s: 13 * WINDOW,
        to_s: 15 * WINDOW,
        traffic: 1.0,
        score_scale: 1.3,
        accuracy_class_share: None,
    },
    Phase {
        name: "accuracy class 30% -> 60%",
        from_s: 18 * WINDOW,
        to_s: 20 * WINDOW,
        traffic: 1.0,
        score_scale: 1.0,
        accuracy_class_share: Some(0.6),
    },
];

/// How a policy did in one phase, over every minute from `SETTLE_S` after its start.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    pub phase: &'static str,
    /// Worst minute: spend per second over the cap (the surge) ...
    pub open_worst_over_cap: f64,
    pub closed_worst_over_cap: f64,
    /// ... and cost per request against the solver's expectation (largest |deviation|).
    pub open_worst_cost_dev: f64,
    pub closed_worst_cost_dev: f64,
}

/// One minute of the day, for the spend figure (cost per second, minute means).
#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub minute: usize,
    pub open: f64,
    pub closed: f64,
    pub expected: f64,
    pub m: f64,
}

/// One window: QoE of each policy over the LP optimum at that policy's spend.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub window: usize,
    pub open_over_optimum: f64,
    pub closed_over_optimum: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShiftResults {
    pub seed: u64,
    pub users: usize,
    pub base_rate: f64,
    pub cap_per_second: f64,
    pub phases: Vec<PhaseRow>,
    /// Whole day: QoE over the per-window LP optimum at the same spend.
    pub open_over_optimum: f64,
    pub closed_over_optimum: f64,
    pub minutes: Vec<Minute>,
    pub windows: Vec<WindowRow>,
}

/// The plan: `k_t` and the expected cost per request of each hour, solved on the population
/// at a budget that follows the day (the default policy's spend, +-8%).
fn plan(pop: &Population) -> (Vec<f64>, Vec<f64>) {
    let inst = &pop.instance;
    let n = inst.len().max(1) as f64;
    let logged = inst.logged_budget() / n;
    (0..WINDOWS)
        .map(|w| {
            let phase = (w as f64 - 6.0) / WINDOWS as f64 * std::f64::consts::TAU;
            let budget = logged * (1.0 + 0.08 * phase.sin()) * n;
            let s = solve_exact(inst, budget);
            (s.k, s.cost / n)
        })
        .unzip()
}

/// What one second of the day saw, by policy: cost and QoE.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    requests: u32,
    cost: [f64; 2],
    qoe: [f64; 2],
    m: f64,
}

fn phase_at(s: usize) -> Option<&'static Phase> {
    PHASES.iter().find(|p| (p.from_s..p.to_s).contains(&s))
}

/// A request's user: from the whole population, or the accuracy class at its phase's share.
fn draw_user(
    pop: &Population,
    accurate: &[usize],
    phase: Option<&Phase>,
    rng: &mut ChaCha8Rng,
) -> usize {
    let n = pop.len();
    if let Some(share) = phase.and_then(|p| p.accuracy_class_share) {
        let base = accurate.len() as f64 / n as f64;
        // Draw from the class with the probability that lifts its share from `base` to `share`.
        let extra = ((share - base) / (1.0 - base)).clamp(0.0, 1.0);
        if !accurate.is_empty() && rng.random::<f64>() < extra {
            return accurate[rng.random_range(0..accurate.len())];
        }
    }
    rng.random_range(0..n)
}

struct Day<'a> {
    pop: &'a Population,
    ks: Vec<f64>,
    expected: Vec<f64>,
    base_rate: f64,
    control: SpendLoop,
}

impl Day<'_> {
    /// Replay the day; returns each second, and each window's requests (user, score scale).
    fn replay(&self, rng: &mut ChaCha8Rng) -> (Vec<Second>, Vec<Vec<(usize, f64)>>) {
        let accurate: Vec<usize> = (0..self.pop.len())
            .filter(|&i| self.pop.curves.get(i).map(|c| c.class) == Some(Class::HighQoeHighLatency))
            .collect();
        let mut seconds = vec![Second::default(); DAY];
        let mut requests = vec![Vec::new(); WINDOWS];
        let day_ms: u64 = 1_795_305_600_000; // 2026-11-22T00:00Z
        for (s, sec) in seconds.iter_mut().enumerate() {
            let phase = phase_at(s);
            let w = s / WINDOW;
            let rate = self.base_rate * phase.map_or(1.0, |p| p.traffic);
            let n = rate.round() as u64;
            let scale = phase.map_or(1.0, |p| p.score_scale);
            for r in 0..n {
                let now = day_ms + s as u64 * 1000 + r * 1000 / n.max(1);
                let u = draw_user(self.pop, &accurate, phase, rng);
                requests[w].push((u, scale));
                let (c, q) = self.pop.instance.options(u);
                for (policy, m) in [(0, 1.0), (1, self.control.m())] {
                    // q * scale - k c is maximized where q - (k / scale) c is.
                    let j = self.pop.instance.live_choice(u, self.ks[w] * m / scale);
                    sec.cost[policy] += c[j];
                    sec.qoe[policy] += q[j] * scale;
                    if policy == 1 && self.control.record(c[j], now) {
                        self.control.tick(now, Some(self.expected[w]));
                    }
                }
            }
            sec.requests = n as u32;
            sec.m = self.control.m();
        }
        (seconds, requests)
    }
}

/// QoE over the LP optimum at the same spend, per window and policy.
fn against_optimum(
    pop: &Population,
    seconds: &[Second],
    requests: &[Vec<(usize, f64)>],
) -> Vec<[(f64, f64); 2]> {
    let mut out = Vec::new();
    let mut opts = Vec::new();
    for (w, reqs) in requests.iter().enumerate() {
        let mut inst = Instance::new();
        for &(u, scale) in reqs {
            let (c, q) = pop.instance.options(u);
            opts.clear();
            opts.extend(c.iter().zip(q).map(|(&c, &q)| (c, q * scale)));
            inst.push(&opts, None);
        }
        let secs = &seconds[w * WINDOW..(w + 1) * WINDOW];
        let per = |p: usize| {
            let spend: f64 = secs.iter().map(|s| s.cost[p]).sum();
            let qoe: f64 = secs.iter().map(|s| s.qoe[p]).sum();
            (qoe, solve_exact(&inst, spend).lp_bound)
        };
        out.push([per(0), per(1)]);
    }
    out
}

/// The worst minute of a phase after the settle: (spend per second / cap, |cost per request /
/// expected - 1|), by policy.
fn worst(seconds: &[Second], expected: &[f64], cap: f64, p: &Phase) -> [(f64, f64); 2] {
    let mut w = [(0.0f64, 0.0f64); 2];
    for start in (p.from_s + SETTLE_S)..=(p.to_s - 60) {
        let minute = &seconds[start..start + 60];
        let want: f64 = minute
            .iter()
            .enumerate()
            .map(|(i, s)| f64::from(s.requests) * expected[(start + i) / WINDOW])
            .sum();
        for (policy, worst) in w.iter_mut().enumerate() {
            let cost: f64 = minute.iter().map(|s| s.cost[policy]).sum();
            worst.0 = worst.0.max(cost / 60.0 / cap);
            worst.1 = worst.1.max((cost / want - 1.0).abs());
        }
    }
    w
}

/// Run the shifted day. Deterministic for a seed.
pub fn run(seed: u64, users: usize, rng: &mut ChaCha8Rng) -> ShiftResults {
    let pop = Population::generate(users.max(10), rng);
    let (ks, expected) = plan(&pop);
    let base_rate = 20.0;
    // The cap: half again the day's highest planned spend per second.
    let cap = 1.5 * base_rate * expected.iter().copied().fold(0.0, f64::max);
    let day = Day {
        pop: &pop,
        ks,
        expected: expected.clone(),
        base_rate,
        control: SpendLoop::new(Settings::defaults(), Some(cap)),
    };
    let (seconds, requests) = day.replay(rng);
    let opt = against_optimum(&pop, &seconds, &requests);
    let ratio = |p: usize| {
        let (q, b) = opt
            .iter()
            .fold((0.0, 0.0), |a, w| (a.0 + w[p].0, a.1 + w[p].1));
        q / b
    };
    let phases = PHASES
        .iter()
        .map(|p| {
            let [o, c] = worst(&seconds, &expected, cap, p);
            PhaseRow {
                phase: p.name,
                open_worst_over_cap: o.0,
                closed_worst_over_cap: c.0,
                open_worst_cost_dev: o.1,
                closed_worst_cost_dev: c.1,
            }
        })
        .collect();
    let minutes = seconds
        .chunks(60)
        .enumerate()
        .map(|(i, m)| Minute {
            minute: i,
            open: m.iter().map(|s| s.cost[0]).sum::<f64>() / 60.0,
            closed: m.iter().map(|s| s.cost[1]).sum::<f64>() / 60.0,
            expected: base_rate * expected[i * 60 / WINDOW],
            m: m.iter().map(|s| s.m).sum::<f64>() / 60.0,
        })
        .collect();
    let windows = opt
        .iter()
        .enumerate()
        .map(|(w, o)| WindowRow {
            window: w,
            open_over_optimum: o[0].0 / o[0].1,
            closed_over_optimum: o[1].0 / o[1].1,
        })
        .collect();
    ShiftResults {
        seed,
        users: pop.len(),
        base_rate,
        cap_per_second: cap,
        phases,
        open_over_optimum: ratio(0),
        closed_over_optimum: ratio(1),
        minutes,
        windows,
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The results table, as in docs/results.md.
pub fn markdown(r: &ShiftResults) -> String {
    let mut s = format!(
        "Seed {}, {} users, {} requests/s (x2 in the surge), cap {:.0} cost/s; every minute from {} s after a shift begins.\n\n",
        r.seed, r.users, r.base_rate, r.cap_per_second, SETTLE_S
    );
    s.push_str("| shift | worst minute: spend / cap, open loop | closed loop | worst minute: cost per request vs expected, open loop | closed loop |\n|---|---|---|---|---|\n");
    for p in &r.phases {
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {} | {} |\n",
            p.phase,
            p.open_worst_over_cap,
            p.closed_worst_over_cap,
            pct(p.open_worst_cost_dev),
            pct(p.closed_worst_cost_dev)
        ));
    }
    s.push_str(&format!(
        "\n| whole day | open loop | closed loop |\n|---|---|---|\n| QoE / LP optimum at the same spend (per window) | {:.4} | {:.4} |\n",
        r.open_over_optimum, r.closed_over_optimum
    ));
    s
}
