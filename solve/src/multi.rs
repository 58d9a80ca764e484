//! Per-resource budgets: the K >= 2 analogue of the one-resource solver (`hydrus::algo`'s
//! `solve_exact`) and its fleet-scale summary (`hydrus::summary`).
//!
//! Records `i` choose one option `j` with QoE `q_ij` and a cost vector `c_ij` over K resources;
//! the LP relaxation maximizes total QoE with total cost at most `B_r` in every resource. Its
//! dual, `D(k) = sum_i max_j (q_ij - k.c_ij) + k.B` over `k >= 0`, is convex and piecewise
//! linear, and the live rule at `k` (argmax `q - k.c`, ties to the smaller cost sum, then the
//! earlier option) is its Lagrangian allocation. The K = 1 walk over hull increments has no
//! K-dimensional analogue, so `min D` is found by cutting planes (Kelley): each iteration adds
//! the cut `D(k_t) + g_t.(k - k_t)` and solves the small LP `min theta` over the cuts in a box;
//! the model is a lower bound of `D` over the whole box, the best `D(k_t)` an upper bound, and
//! the loop stops when they agree to [`REL_TOL`].
//!
//! Bounded memory, as the one-resource summary does with its band of buckets: a summary keeps a box
//! `[lo_r, hi_r]` of multipliers. A record one of whose options beats every other strictly
//! everywhere in the box is *robust*: inside the box its part of `D` is linear, so it is added
//! to running sums and forgotten. The others are kept one by one (QoE and an interned cost
//! vector per option, 12 bytes plus 8 per record). When more than `cap` options are kept the
//! box is narrowed around the multiplier of the records so far (estimated on a sample of the
//! kept records), so that about `cap / 2` stay, but never to less than [`SPREAD`]` / sqrt(n)`
//! of that multiplier each side: the estimate still moves by about `1 / sqrt(n)` as records
//! arrive, and a narrower box would miss the final minimizer. So the kept records grow like
//! `sqrt(n)` (measured: 140 MB peak for 1e6 records x 8 x 3 read from a file, 465 MB for 1e7).
//! The solve is exact when its minimizer is not on a face where the box was narrowed (a
//! convex function's local minimum inside the box is its global one); with `cap =
//! usize::MAX` nothing is narrowed and the solve is the exact in-memory one.

use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Default for how many options a summary keeps one by one before it narrows: about 12 bytes
/// each plus the record offsets, so about 3 MB per window (and as much again transiently while
/// narrowing). A chunk of a file read in parallel (64 MiB, some 70,000 records) fits under it,
/// so the chunks do not narrow before they merge (each narrowing is a solve).
pub const DEFAULT_CAP: usize = 1 << 18;
/// Most cutting-plane iterations of one solve; a solve that stops here reports `exact = false`.
pub const MAX_ITERATIONS: u32 = 1000;
/// The solve stops when the upper bound (best `D` seen) exceeds the lower bound (the cutting
/// plane model's minimum over the box) by at most this, relative to the problem's QoE scale
/// (the sum over records of their largest `|q|`). Evaluating `D` sums every record's term,
/// whose rounding is about 1e-16 times that scale per thousand-odd terms, so 1e-12 is a few
/// hundred ulps of the scale: as tight as the arithmetic allows and no tighter.
pub const REL_TOL: f64 = 1e-12;
/// Doublings of an upper bound `U_r` of the box for the LP before the dual is deemed unbounded
/// (budgets that no allocation meets jointly).
const MAX_DOUBLINGS: u32 = 64;
/// The narrowest a box is narrowed to around the multiplier of the `n` records so far, relative
/// to that multiplier: `SPREAD / sqrt(n)` each side. The estimate from `n` records moves by
/// about `1 / sqrt(n)` of itself (sampling) as more records arrive; a box narrower than several
/// times that would likely miss the final minimizer (measured: 0 of 16 narrowed solves exact
/// with the cap alone deciding). The kept records then grow like `sqrt(n)`, not `n`.
pub const SPREAD: f64 = 32.0;
/// How closely a narrowing solves for the multiplier it centres the box on (relative to the
/// QoE scale, as [`REL_TOL`]): the box is wider than the estimate's sampling error by far, so
/// the last digits would only cost iterations.
const NARROW_TOL: f64 = 1e-5;
/// About how many kept options a narrowing's estimate is solved on (a sample of them when more
/// are kept).
const NARROW_SAMPLE: usize = 1 << 15;
/// Most evaluations, after the bounds meet, of the model's minimizer (see `solve_for`).
const MAX_POLISH: u32 = 50;

/// Budget of a window per resource: per request times the window's records (Some), or what the
/// logged (chosen) options spent (None).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiBudget(pub Vec<Option<f64>>);

/// What a solve found.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiSolution {
    /// The multiplier per resource (>= 0) for the live rule.
    pub k: Vec<f64>,
    /// Cost per resource and QoE of the live rule's (integral) allocation at `k`.
    pub cost: Vec<f64>,
    pub qoe: f64,
    /// The LP relaxation's optimum, `min D` (under the budget as raised when infeasible).
    pub lp_bound: f64,
    pub budget: Vec<f64>,
    /// False when, in some resource, even every record's cheapest option there exceeds the
    /// budget, or when no allocation meets the budgets jointly (the dual is unbounded).
    pub feasible: bool,
    /// False when the minimizer lies on a face where the summary's box was narrowed (the true
    /// one may lie outside it), or the iteration cap was reached before the bounds met.
    pub exact: bool,
    /// Cutting-plane iterations (evaluations of `D`).
    pub iterations: u32,
}

/// Why a summary could not be rebuilt from its parts: the field that is inconsistent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("multi-resource summary: inconsistent field `{0}`")]
pub struct PartsError(pub &'static str);

/// A summary's state as stored in a summary file (infinite box bounds as `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiParts {
    pub resources: usize,
    pub records: u64,
    pub logged_cost: Vec<f64>,
    pub logged_qoe: f64,
    pub min_cost: Vec<f64>,
    pub qoe_scale: f64,
    pub lo: Vec<f64>,
    pub hi: Vec<Option<f64>>,
    pub disjoint: bool,
    pub lin_records: u64,
    pub lin_qoe: f64,
    pub lin_cost: Vec<f64>,
    pub table: Vec<f64>,
    pub opt_qoe: Vec<f64>,
    pub opt_cost: Vec<u32>,
    pub offsets: Vec<u64>,
}

/// The live rule for one record: argmax `q - k.c`, ties to the smaller sum of costs over the
/// resources, then the earlier option. `costs` is row-major (`j * K + r`, `K = k.len()`).
/// Mirrors the proxy's rule; 0 for a record without options.
pub fn live_choice(costs: &[f64], qoe: &[f64], k: &[f64]) -> usize {
    let dims = k.len();
    let mut best = 0;
    let mut best_v = f64::NEG_INFINITY;
    let mut best_s = f64::INFINITY;
    for (j, &q) in qoe.iter().enumerate() {
        let c = &costs[j * dims..(j + 1) * dims];
        let v = q - dot(k, c);
        let s: f64 = c.iter().sum();
        if v > best_v || (v == best_v && s < best_s) {
            best = j;
            best_v = v;
            best_s = s;
        }
    }
    best
}

/// A cost vector's key in the interning index: its bit patterns.
fn bits(c: &[f64]) -> Box<[u64]> {
    c.iter().map(|x| x.to_bits()).collect()
}

/// The interning index of a table of cost vectors (`dims` each): each vector's id by its key.
fn index_of(table: &[f64], dims: usize) -> HashMap<Box<[u64]>, u32> {
    (table.chunks_exact(dims).enumerate())
        .map(|(id, c)| (bits(c), id as u32))
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The option that wins strictly everywhere in the box `[lo, hi]`, if any: the rule's choice
/// at `lo` (a robust winner wins there too), tested against every other option by the worst
/// case of `k.(c_j - c_j')` over the box, per coordinate.
fn robust_winner(costs: &[f64], qoe: &[f64], lo: &[f64], hi: &[f64]) -> Option<usize> {
    let dims = lo.len();
    let j = live_choice(costs, qoe, lo);
    let cj = &costs[j * dims..(j + 1) * dims];
    for (o, &q) in qoe.iter().enumerate() {
        if o == j {
            continue;
        }
        let co = &costs[o * dims..(o + 1) * dims];
        let mut worst = 0.0;
        for r in 0..dims {
            let d = cj[r] - co[r];
            if d > 0.0 {
                worst += hi[r] * d;
            } else if d < 0.0 {
                worst += lo[r] * d;
            }
        }
        // Written so that an infinite (or NaN) worst case is not robust.
        let margin = qoe[j] - q - worst;
        if margin.is_nan() || margin <= 0.0 {
            return None;
        }
    }
    Some(j)
}

/// One window's records over K resources, summarized (see the module docs).
#[derive(Debug, Clone)]
pub struct MultiSummary {
    dims: usize,
    cap: usize,
    /// The cap actually applied: raised when narrowing cannot get below it (degenerate data
    /// with many records tied at the multiplier), so pushes do not narrow on every record.
    cap_now: usize,
    budget: MultiBudget,
    records: u64,
    logged_cost: Vec<f64>,
    logged_qoe: f64,
    /// Per resource, the sum over records of their cheapest option there (feasibility).
    min_cost: Vec<f64>,
    /// Sum over records of their largest `|q|`: the scale of `D` for the tolerance.
    qoe_scale: f64,
    /// The box where the robust records' sums are valid.
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Set when a merge met boxes that do not intersect: no solve can then be exact.
    disjoint: bool,
    /// Robust records: count, and their winners' QoE and cost summed.
    lin_records: u64,
    lin_qoe: f64,
    lin_cost: Vec<f64>,
    /// Interned cost vectors (`dims` each) and their index by bit pattern.
    table: Vec<f64>,
    index: HashMap<Box<[u64]>, u32>,
    /// Kept options (QoE, cost vector id); record `i` is `offsets[i]..offsets[i + 1]`.
    opt_qoe: Vec<f64>,
    opt_cost: Vec<u32>,
    offsets: Vec<usize>,
    /// The last kept record's costs and their ids: consecutive records of one strategy set
    /// skip the hashing.
    last_costs: Vec<f64>,
    last_ids: Vec<u32>,
}

/// The dual at one point: its value and a subgradient.
struct Eval {
    d: f64,
    g: Vec<f64>,
}

/// A cut `D(k_t) + g_t.(k - k_t)`, stored as `a + g.k`.
struct Cut {
    a: f64,
    g: Vec<f64>,
}

impl Cut {
    fn at(&self, k: &[f64]) -> f64 {
        self.a + dot(&self.g, k)
    }
}

impl MultiSummary {
    /// An empty summary over `resources` resources keeping at most `cap` options one by one,
    /// its box centred for `budget` (whose length should be `resources`; missing entries are
    /// taken as logged).
    pub fn new(resources: usize, cap: usize, budget: MultiBudget) -> Self {
        let dims = resources.max(1);
        let cap = cap.max(2);
        Self {
            dims,
            cap,
            cap_now: cap,
            budget,
            records: 0,
            logged_cost: vec![0.0; dims],
            logged_qoe: 0.0,
            min_cost: vec![0.0; dims],
            qoe_scale: 0.0,
            lo: vec![0.0; dims],
            hi: vec![f64::INFINITY; dims],
            disjoint: false,
            lin_records: 0,
            lin_qoe: 0.0,
            lin_cost: vec![0.0; dims],
            table: Vec::new(),
            index: HashMap::new(),
            opt_qoe: Vec::new(),
            opt_cost: Vec::new(),
            offsets: vec![0],
            last_costs: Vec::new(),
            last_ids: Vec::new(),
        }
    }

    pub fn resources(&self) -> usize {
        self.dims
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Options kept one by one (the summary's memory, about 12 bytes each).
    pub fn kept_options(&self) -> usize {
        self.opt_qoe.len()
    }

    /// The box `(lo, hi)` where the summary is exact.
    pub fn band(&self) -> (&[f64], &[f64]) {
        (&self.lo, &self.hi)
    }

    /// Logged (chosen) cost per resource so far.
    pub fn logged_cost(&self) -> &[f64] {
        &self.logged_cost
    }

    /// Logged (chosen) QoE so far.
    pub fn logged_qoe(&self) -> f64 {
        self.logged_qoe
    }

    /// The window's budget per resource under the summary's [`MultiBudget`].
    pub fn budget(&self) -> Vec<f64> {
        (0..self.dims)
            .map(|r| match self.budget.0.get(r).copied().flatten() {
                Some(mean) => mean * self.records as f64,
                None => self.logged_cost[r],
            })
            .collect()
    }

    /// Add a record: `costs` is its options' cost vectors, row-major (option `j`, resource `r`
    /// at `j * K + r`), `qoe` one per option (same count), `chosen` the logged option's index.
    /// Options empty: ignored. A record whose `costs` is not `K` times as long as `qoe`, or with
    /// a non-finite value, is ignored too (no option of it can be trusted).
    pub fn push(&mut self, costs: &[f64], qoe: &[f64], chosen: usize) {
        let dims = self.dims;
        if qoe.is_empty()
            || costs.len() != qoe.len() * dims
            || !costs.iter().chain(qoe).all(|x| x.is_finite())
        {
            return;
        }
        self.records += 1;
        if let Some(&q) = qoe.get(chosen) {
            self.logged_qoe += q;
            let c = &costs[chosen * dims..(chosen + 1) * dims];
            for (l, x) in self.logged_cost.iter_mut().zip(c) {
                *l += x;
            }
        }
        for r in 0..dims {
            let m = costs[r..]
                .iter()
                .step_by(dims)
                .fold(f64::INFINITY, |a, &b| a.min(b));
            self.min_cost[r] += m;
        }
        self.qoe_scale += qoe.iter().fold(0.0, |a: f64, q| a.max(q.abs()));
        if let Some(j) = robust_winner(costs, qoe, &self.lo, &self.hi) {
            self.add_linear(qoe[j], &costs[j * dims..(j + 1) * dims]);
            return;
        }
        if costs != self.last_costs.as_slice() {
            self.last_ids.clear();
            for c in costs.chunks_exact(dims) {
                let id = self.intern(c);
                self.last_ids.push(id);
            }
            self.last_costs.clear();
            self.last_costs.extend_from_slice(costs);
        }
        self.opt_qoe.extend_from_slice(qoe);
        self.opt_cost.extend_from_slice(&self.last_ids);
        self.offsets.push(self.opt_qoe.len());
        if self.opt_qoe.len() > self.cap_now {
            self.narrow();
        }
    }

    fn add_linear(&mut self, q: f64, c: &[f64]) {
        self.lin_records += 1;
        self.lin_qoe += q;
        for (l, x) in self.lin_cost.iter_mut().zip(c) {
            *l += x;
        }
    }

    fn intern(&mut self, c: &[f64]) -> u32 {
        let key = bits(c);
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = (self.table.len() / self.dims) as u32;
        self.table.extend_from_slice(c);
        self.index.insert(key, id);
        id
    }

    fn cost_of(&self, id: u32) -> &[f64] {
        let s = id as usize * self.dims;
        &self.table[s..s + self.dims]
    }

    fn kept_records(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Kept record `i`'s options: QoE and cost vectors (row-major), into `costs`.
    fn record_into<'a>(&'a self, i: usize, costs: &mut Vec<f64>) -> &'a [f64] {
        let range = self.offsets[i]..self.offsets[i + 1];
        costs.clear();
        for &id in &self.opt_cost[range.clone()] {
            costs.extend_from_slice(self.cost_of(id));
        }
        &self.opt_qoe[range]
    }

    /// Move the kept records that are robust in the current box into the linear sums.
    fn absorb_robust(&mut self) {
        let mut costs = Vec::new();
        let (mut out_opt, mut out_rec) = (0, 0);
        let dims = self.dims;
        let mut lin = (0u64, 0.0, vec![0.0; dims]);
        for i in 0..self.kept_records() {
            let (s, e) = (self.offsets[i], self.offsets[i + 1]);
            let qoe = self.record_into(i, &mut costs);
            if let Some(j) = robust_winner(&costs, qoe, &self.lo, &self.hi) {
                lin.0 += 1;
                lin.1 += qoe[j];
                for r in 0..dims {
                    lin.2[r] += costs[j * dims + r];
                }
                continue;
            }
            self.opt_qoe.copy_within(s..e, out_opt);
            self.opt_cost.copy_within(s..e, out_opt);
            self.offsets[out_rec] = out_opt;
            out_opt += e - s;
            out_rec += 1;
        }
        self.offsets[out_rec] = out_opt;
        self.offsets.truncate(out_rec + 1);
        self.opt_qoe.truncate(out_opt);
        self.opt_cost.truncate(out_opt);
        self.lin_records += lin.0;
        self.lin_qoe += lin.1;
        for (l, x) in self.lin_cost.iter_mut().zip(&lin.2) {
            *l += x;
        }
        self.compact_table();
    }

    /// Drop interned cost vectors no kept option uses any more, when they outnumber the kept
    /// options (records whose costs are not from a few strategy sets).
    fn compact_table(&mut self) {
        let n = self.table.len() / self.dims;
        if n <= 64 || n <= self.opt_cost.len() {
            return;
        }
        let mut map = vec![u32::MAX; n];
        let mut table = Vec::new();
        for id in self.opt_cost.iter_mut() {
            let slot = &mut map[*id as usize];
            if *slot == u32::MAX {
                *slot = (table.len() / self.dims) as u32;
                let s = *id as usize * self.dims;
                table.extend_from_slice(&self.table[s..s + self.dims]);
            }
            *id = *slot;
        }
        self.table = table;
        self.index = index_of(&self.table, self.dims);
        self.last_costs.clear();
        self.last_ids.clear();
    }

    /// Shrink the box around the multiplier of the records so far so that about `cap / 2`
    /// options stay kept; the others become robust and go into the linear sums.
    fn narrow(&mut self) {
        // The estimate from every m-th kept record (and the linear sums scaled to match): its
        // sampling error is a fraction of the box's half-width, and it costs 1/m of a solve.
        let m = (self.opt_qoe.len() / NARROW_SAMPLE).max(1);
        let est = if m > 1 {
            let sub = self.subsample(m);
            let budget: Vec<f64> = self.budget().iter().map(|b| b / m as f64).collect();
            sub.solve_within(&budget, NARROW_TOL)
        } else {
            self.solve_within(&self.budget(), NARROW_TOL)
        };
        let kc = est.k;
        let dims = self.dims;
        // Scale of the box per resource: the multiplier itself, or where it is 0 the
        // data-derived upper bound of the solve.
        let guess = self.initial_upper();
        let scale: Vec<f64> = (0..dims)
            .map(|r| if kc[r] > 0.0 { kc[r] } else { guess[r] })
            .collect();
        // Per record, the half-width `w` (in units of `scale`, the box unclamped by the
        // current one) below which its winner at `kc` stays robust: the least, over the other
        // options, of the margin at `kc` over its slope in `w`.
        let mut widths: Vec<(f64, usize)> = Vec::with_capacity(self.kept_records());
        let mut costs = Vec::new();
        for i in 0..self.kept_records() {
            let qoe = self.record_into(i, &mut costs);
            let j = live_choice(&costs, qoe, &kc);
            let cj = &costs[j * dims..(j + 1) * dims];
            let mut w = f64::INFINITY;
            for (o, &q) in qoe.iter().enumerate() {
                if o == j {
                    continue;
                }
                let co = &costs[o * dims..(o + 1) * dims];
                let (mut margin, mut slope) = (qoe[j] - q, 0.0);
                for r in 0..dims {
                    let d = cj[r] - co[r];
                    margin -= kc[r] * d;
                    slope += d.abs() * scale[r];
                }
                if slope > 0.0 {
                    w = w.min(margin.max(0.0) / slope);
                } else if margin <= 0.0 {
                    w = 0.0;
                }
            }
            widths.push((w, qoe.len()));
        }
        widths.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let target = self.cap / 2;
        let mut taken = 0;
        let mut cut = widths.len();
        for (n, &(_, opts)) in widths.iter().enumerate() {
            if taken + opts > target {
                cut = n;
                break;
            }
            taken += opts;
        }
        if let Some(&(b, _)) = widths.get(cut) {
            let a = if cut > 0 { widths[cut - 1].0 } else { 0.0 };
            let mut w = 0.5 * (a + b);
            if w >= b {
                w = b * (1.0 - 1e-12);
            }
            // Never narrower than the estimate's own uncertainty: the multiplier of the
            // records so far moves by about 1/sqrt(n) of itself as more arrive.
            w = w.max(SPREAD / (self.records.max(1) as f64).sqrt());
            if w.is_finite() {
                for r in 0..dims {
                    self.lo[r] = self.lo[r].max(kc[r] - w * scale[r]);
                    self.hi[r] = self.hi[r].min(kc[r] + w * scale[r]);
                }
            }
        }
        self.absorb_robust();
        // The box is no narrower than the estimate's uncertainty, so the kept records grow
        // (like sqrt(n)); and degenerate data (many records tied at `kc`) may not narrow below
        // the cap at all: narrow next when four times as many are kept, so narrowings (a solve
        // each) stay a few per window.
        self.cap_now = self.cap.max(self.opt_qoe.len().saturating_mul(4));
    }

    /// Every `m`-th kept record, with the linear sums and totals divided by `m`: a summary of
    /// about `1/m` of the records whose dual, times `m`, estimates this one's.
    fn subsample(&self, m: usize) -> MultiSummary {
        let scale = 1.0 / m as f64;
        let mut sub = MultiSummary::new(self.dims, usize::MAX, MultiBudget(Vec::new()));
        sub.records = self.records / m as u64;
        sub.logged_cost = self.logged_cost.iter().map(|x| x * scale).collect();
        sub.logged_qoe = self.logged_qoe * scale;
        sub.min_cost = self.min_cost.iter().map(|x| x * scale).collect();
        sub.qoe_scale = self.qoe_scale * scale;
        sub.lo = self.lo.clone();
        sub.hi = self.hi.clone();
        sub.lin_records = self.lin_records / m as u64;
        sub.lin_qoe = self.lin_qoe * scale;
        sub.lin_cost = self.lin_cost.iter().map(|x| x * scale).collect();
        sub.table = self.table.clone();
        for i in (0..self.kept_records()).step_by(m) {
            let (s, e) = (self.offsets[i], self.offsets[i + 1]);
            sub.opt_qoe.extend_from_slice(&self.opt_qoe[s..e]);
            sub.opt_cost.extend_from_slice(&self.opt_cost[s..e]);
            sub.offsets.push(sub.opt_qoe.len());
        }
        sub
    }

    /// Add `other`'s records: the box is the intersection, the sums are added, the kept
    /// records concatenated and re-tested for robustness, then narrowed if over the cap.
    pub fn merge(&mut self, other: &MultiSummary) {
        if other.dims != self.dims {
            return;
        }
        self.records += other.records;
        self.logged_qoe += other.logged_qoe;
        self.qoe_scale += other.qoe_scale;
        self.lin_records += other.lin_records;
        self.lin_qoe += other.lin_qoe;
        self.disjoint |= other.disjoint;
        for r in 0..self.dims {
            self.logged_cost[r] += other.logged_cost[r];
            self.min_cost[r] += other.min_cost[r];
            self.lin_cost[r] += other.lin_cost[r];
            let (lo, hi) = (self.lo[r].max(other.lo[r]), self.hi[r].min(other.hi[r]));
            if lo > hi {
                // The two boxes do not meet: keep a point, and no solve is exact.
                let mid = 0.5 * (lo + hi);
                self.disjoint = true;
                (self.lo[r], self.hi[r]) = (mid, mid);
            } else {
                (self.lo[r], self.hi[r]) = (lo, hi);
            }
        }
        let ids: Vec<u32> = other
            .table
            .chunks_exact(other.dims)
            .map(|c| self.intern(c))
            .collect();
        self.opt_qoe.extend_from_slice(&other.opt_qoe);
        self.opt_cost
            .extend(other.opt_cost.iter().map(|&id| ids[id as usize]));
        let base = *self.offsets.last().unwrap_or(&0);
        self.offsets
            .extend(other.offsets.iter().skip(1).map(|&o| base + o));
        self.absorb_robust();
        if self.opt_qoe.len() > self.cap_now {
            self.narrow();
        }
    }

    /// The serializable parts of the summary (for a summary file).
    pub fn to_parts(&self) -> MultiParts {
        MultiParts {
            resources: self.dims,
            records: self.records,
            logged_cost: self.logged_cost.clone(),
            logged_qoe: self.logged_qoe,
            min_cost: self.min_cost.clone(),
            qoe_scale: self.qoe_scale,
            lo: self.lo.clone(),
            hi: self
                .hi
                .iter()
                .map(|&h| h.is_finite().then_some(h))
                .collect(),
            disjoint: self.disjoint,
            lin_records: self.lin_records,
            lin_qoe: self.lin_qoe,
            lin_cost: self.lin_cost.clone(),
            table: self.table.clone(),
            opt_qoe: self.opt_qoe.clone(),
            opt_cost: self.opt_cost.clone(),
            offsets: self.offsets.iter().map(|&o| o as u64).collect(),
        }
    }

    /// Rebuild a summary from its parts, checking that they fit together.
    pub fn from_parts(
        parts: MultiParts,
        cap: usize,
        budget: MultiBudget,
    ) -> Result<Self, PartsError> {
        let dims = parts.resources;
        if dims == 0 {
            return Err(PartsError("resources"));
        }
        let vectors = [
            ("logged_cost", &parts.logged_cost),
            ("min_cost", &parts.min_cost),
            ("lo", &parts.lo),
            ("lin_cost", &parts.lin_cost),
        ];
        for (name, v) in vectors {
            if v.len() != dims {
                return Err(PartsError(name));
            }
        }
        if parts.hi.len() != dims {
            return Err(PartsError("hi"));
        }
        if parts.table.len() % dims != 0 {
            return Err(PartsError("table"));
        }
        let ids = parts.table.len() / dims;
        if parts.opt_cost.len() != parts.opt_qoe.len()
            || parts.opt_cost.iter().any(|&id| id as usize >= ids)
        {
            return Err(PartsError("opt_cost"));
        }
        let offsets: Vec<usize> = parts.offsets.iter().map(|&o| o as usize).collect();
        let monotone = offsets.windows(2).all(|w| w[0] < w[1]);
        if offsets.first() != Some(&0) || offsets.last() != Some(&parts.opt_qoe.len()) || !monotone
        {
            return Err(PartsError("offsets"));
        }
        let mut s = Self::new(dims, cap, budget);
        s.records = parts.records;
        s.logged_cost = parts.logged_cost;
        s.logged_qoe = parts.logged_qoe;
        s.min_cost = parts.min_cost;
        s.qoe_scale = parts.qoe_scale;
        s.lo = parts.lo;
        s.hi = parts
            .hi
            .iter()
            .map(|h| h.unwrap_or(f64::INFINITY))
            .collect();
        s.disjoint = parts.disjoint;
        s.lin_records = parts.lin_records;
        s.lin_qoe = parts.lin_qoe;
        s.lin_cost = parts.lin_cost;
        s.index = index_of(&parts.table, dims);
        s.table = parts.table;
        s.opt_qoe = parts.opt_qoe;
        s.opt_cost = parts.opt_cost;
        s.offsets = offsets;
        s.cap_now = s.cap.max(s.opt_qoe.len().saturating_mul(2));
        Ok(s)
    }

    /// Solve under [`Self::budget`].
    pub fn solve(&self) -> MultiSolution {
        self.solve_for(&self.budget())
    }

    /// `D` at `k` (inside the box) under `budget`, and a subgradient: `budget` minus the cost
    /// of the rule's choice at `k`.
    fn eval(&self, k: &[f64], budget: &[f64], scratch: &mut Scratch) -> Eval {
        let dims = self.dims;
        let ids = self.table.len() / dims;
        scratch.kc.clear();
        scratch.sum.clear();
        for c in self.table.chunks_exact(dims) {
            scratch.kc.push(dot(k, c));
            scratch.sum.push(c.iter().sum());
        }
        scratch.count.clear();
        scratch.count.resize(ids, 0);
        let mut d = 0.0;
        for w in self.offsets.windows(2) {
            let mut best_v = f64::NEG_INFINITY;
            let mut best_s = f64::INFINITY;
            let mut best_id = 0;
            for o in w[0]..w[1] {
                let id = self.opt_cost[o] as usize;
                let v = self.opt_qoe[o] - scratch.kc[id];
                if v > best_v || (v == best_v && scratch.sum[id] < best_s) {
                    best_v = v;
                    best_s = scratch.sum[id];
                    best_id = id;
                }
            }
            d += best_v;
            scratch.count[best_id] += 1;
        }
        d += self.lin_qoe - dot(k, &self.lin_cost) + dot(k, budget);
        let mut g: Vec<f64> = budget
            .iter()
            .zip(&self.lin_cost)
            .map(|(b, c)| b - c)
            .collect();
        for (id, &n) in scratch.count.iter().enumerate() {
            if n > 0 {
                let c = &self.table[id * dims..(id + 1) * dims];
                for r in 0..dims {
                    g[r] -= n as f64 * c[r];
                }
            }
        }
        Eval { d, g }
    }

    /// Cost per resource and QoE of the live rule at `k` (inside the box).
    fn live(&self, k: &[f64]) -> (Vec<f64>, f64) {
        let mut cost = self.lin_cost.clone();
        let mut qoe = self.lin_qoe;
        let mut costs = Vec::new();
        for i in 0..self.kept_records() {
            let q = self.record_into(i, &mut costs);
            let j = live_choice(&costs, q, k);
            qoe += q[j];
            for (r, c) in cost.iter_mut().enumerate() {
                *c += costs[j * self.dims + r];
            }
        }
        (cost, qoe)
    }

    /// A first upper bound per resource for the LP's box where the summary's box has none:
    /// the largest QoE spread of a kept record over the least positive cost difference in that
    /// resource, the largest rate at which spending it can buy QoE (doubled if the minimizer
    /// turns out to sit on it).
    fn initial_upper(&self) -> Vec<f64> {
        let dims = self.dims;
        let spread = self
            .offsets
            .windows(2)
            .map(|w| {
                let q = &self.opt_qoe[w[0]..w[1]];
                let hi = q.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let lo = q.iter().fold(f64::INFINITY, |a, &b| a.min(b));
                hi - lo
            })
            .fold(0.0, f64::max);
        let vectors: Vec<&[f64]> = self.table.chunks_exact(dims).collect();
        let mut least = vec![f64::INFINITY; dims];
        // The table holds a few strategy sets' vectors; a sample bounds the pairs looked at.
        let sample = &vectors[..vectors.len().min(256)];
        for (a, ca) in sample.iter().enumerate() {
            for cb in &sample[a + 1..] {
                for r in 0..dims {
                    let d = (ca[r] - cb[r]).abs();
                    if d > 0.0 {
                        least[r] = least[r].min(d);
                    }
                }
            }
        }
        (0..dims)
            .map(|r| {
                let u = spread / least[r];
                if u.is_finite() && u > 0.0 {
                    u
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// Solve under `budget` (one entry per resource): Kelley's cutting planes over the box
    /// intersected with `[0, U]`, `U` doubled where the minimizer sits on it.
    pub fn solve_for(&self, budget: &[f64]) -> MultiSolution {
        self.solve_within(budget, REL_TOL)
    }

    /// [`Self::solve_for`] stopping when the bounds agree to `rel_tol` of the QoE scale (a
    /// narrowing only needs the multiplier roughly: [`NARROW_TOL`]).
    fn solve_within(&self, budget: &[f64], rel_tol: f64) -> MultiSolution {
        let dims = self.dims;
        let mut b: Vec<f64> = (0..dims)
            .map(|r| budget.get(r).copied().unwrap_or(0.0))
            .collect();
        // A resource whose cheapest options overspend gets the least budget it can meet.
        let mut feasible = true;
        for (b, &least) in b.iter_mut().zip(&self.min_cost) {
            if least > *b {
                *b = least;
                feasible = false;
            }
        }
        let mut scratch = Scratch::default();
        let lower = self.lo.clone();
        let guess = self.initial_upper();
        let mut upper: Vec<f64> = (0..dims)
            .map(|r| {
                if self.hi[r].is_finite() {
                    self.hi[r]
                } else {
                    guess[r].max(2.0 * lower[r]).max(f64::MIN_POSITIVE)
                }
            })
            .collect();
        let first = lower.clone();
        let e = self.eval(&first, &b, &mut scratch);
        let scale = self.qoe_scale.max(e.d.abs()).max(1.0);
        let tol = rel_tol * scale;
        // Rounding level of `D` and the cuts: a model minimizer whose `D` is within it is a
        // minimizer of `D`.
        let tight = scale * 64.0 * f64::EPSILON;
        let mut polish = 0;
        let mut cuts = vec![Cut {
            a: e.d - dot(&e.g, &first),
            g: e.g,
        }];
        let mut best = (e.d, first);
        let mut iterations = 1;
        let mut converged = false;
        let mut doublings = 0;
        // Best value when the box was last widened, to tell a minimizer on `U` from one beyond.
        let mut before_doubling = f64::INFINITY;
        let mut lp = CutLp::new(&lower, &upper, &best.1, e.d, scale, &cuts);
        while iterations < MAX_ITERATIONS {
            let Some(k) = lp.as_mut().and_then(|lp| lp.minimize()) else {
                break;
            };
            let model = cuts
                .iter()
                .map(|c| c.at(&k))
                .fold(f64::NEG_INFINITY, f64::max);
            // The simplex sees the objective to about 1e-10 of its unit: as the gap closes,
            // re-centre `theta` on the best value in units of the gap.
            let gap = best.0 - model;
            if let Some(current) = lp.as_ref().map(|lp| lp.scale_d) {
                if gap > tol && gap < current * 1e-3 {
                    lp = CutLp::new(&lower, &upper, &best.1, best.0, gap, &cuts);
                    continue;
                }
            }
            if best.0 - model <= tol && best.1 != k && polish < MAX_POLISH {
                // The bounds meet, but the best point is not the model's minimizer: evaluate
                // that too. Where `D` equals the model (to rounding) it is a minimizer of `D`,
                // and the vertex where the cuts meet is the same whatever path found them,
                // so merged and single summaries give the same `k` to rounding.
                let e = self.eval(&k, &b, &mut scratch);
                iterations += 1;
                polish += 1;
                cuts.push(Cut {
                    a: e.d - dot(&e.g, &k),
                    g: e.g,
                });
                if let Some(lp) = lp.as_mut() {
                    lp.add_cut(cuts.last());
                }
                if e.d - model <= tight || e.d < best.0 {
                    best = (e.d, k);
                }
                continue;
            }
            if best.0 - model <= tol {
                // The model's minimum over the box meets the best value: optimal in the box.
                let on_upper: Vec<usize> = (0..dims)
                    .filter(|&r| !self.hi[r].is_finite() && best.1[r] >= upper[r] * (1.0 - 1e-12))
                    .collect();
                if on_upper.is_empty() || before_doubling - best.0 <= tol {
                    converged = true;
                    break;
                }
                if doublings >= MAX_DOUBLINGS {
                    feasible = false;
                    break;
                }
                doublings += 1;
                before_doubling = best.0;
                for r in on_upper {
                    upper[r] *= 2.0;
                }
                lp = CutLp::new(&lower, &upper, &best.1, best.0, scale, &cuts);
                continue;
            }
            let e = self.eval(&k, &b, &mut scratch);
            iterations += 1;
            cuts.push(Cut {
                a: e.d - dot(&e.g, &k),
                g: e.g.clone(),
            });
            if let Some(lp) = lp.as_mut() {
                lp.add_cut(cuts.last());
            }
            if e.d < best.0 {
                best = (e.d, k);
                let rescale = lp.as_ref().is_some_and(|lp| {
                    (0..dims).any(|r| {
                        let s = lp_scale(best.1[r], upper[r]);
                        s > 4.0 * lp.scale_k[r] || s < 0.25 * lp.scale_k[r]
                    })
                });
                if rescale {
                    lp = CutLp::new(&lower, &upper, &best.1, best.0, scale, &cuts);
                }
            }
        }
        if converged {
            if let Some(v) = vertex(&cuts, &best.1, &lower, &upper) {
                let e = self.eval(&v, &b, &mut scratch);
                if e.d <= best.0 + tight {
                    best = (e.d, v);
                }
            }
        }
        let mut k = best.1;
        // An infeasible resource's budget is its least: `D` is flat in `k_r` beyond the
        // minimizer, and the rule at the minimizer may still take one dearer option on a tie;
        // raise `k_r` until it takes the cheapest (within the box).
        for r in 0..dims {
            if self.min_cost[r] > budget.get(r).copied().unwrap_or(0.0) {
                let mut steps = 0;
                while self.live(&k).0[r] > b[r] && steps < 64 && k[r] < self.hi[r] {
                    k[r] = (k[r] * 2.0).max(upper[r]).min(self.hi[r]);
                    steps += 1;
                }
            }
        }
        for x in &mut k {
            // No -0.0 from the simplex.
            *x = x.max(0.0) + 0.0;
        }
        let on_narrowed_face = (0..dims).any(|r| {
            let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
            (self.lo[r] > 0.0 && near(k[r], self.lo[r]))
                || (self.hi[r].is_finite() && near(k[r], self.hi[r]))
        });
        let (cost, qoe) = self.live(&k);
        MultiSolution {
            k,
            cost,
            qoe,
            lp_bound: best.0,
            budget: b,
            feasible,
            exact: converged && !on_narrowed_face && !self.disjoint,
            iterations,
        }
    }
}

/// The vertex of the cutting-plane model at `k`, recomputed in double precision from the
/// cuts and bounds tight there (the simplex's own tolerances are near 1e-10 in its scaled
/// units): the tightest `K + 1` independent ones, by Gaussian elimination with partial
/// pivoting. None when they do not determine a point or it leaves the box.
fn vertex(cuts: &[Cut], k: &[f64], lower: &[f64], upper: &[f64]) -> Option<Vec<f64>> {
    let dims = k.len();
    let n = dims + 1;
    let model = cuts
        .iter()
        .map(|c| c.at(k))
        .fold(f64::NEG_INFINITY, f64::max);
    // Rows over (z_r = k_r / upper_r, theta), with their slack at `k`.
    let mut rows: Vec<(f64, Vec<f64>)> = Vec::new();
    for c in cuts {
        // theta - sum g_r u_r z_r = a
        let mut row: Vec<f64> = (0..dims).map(|r| -c.g[r] * upper[r]).collect();
        row.push(1.0);
        row.push(c.a);
        let slack = (model - c.at(k)) / model.abs().max(1.0);
        rows.push((slack, row));
    }
    for r in 0..dims {
        for bound in [lower[r], upper[r]] {
            let mut row = vec![0.0; n + 1];
            row[r] = 1.0;
            row[n] = bound / upper[r];
            rows.push(((k[r] - bound).abs() / upper[r], row));
        }
    }
    rows.retain(|(slack, _)| *slack <= 1e-9);
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Pick independent rows greedily, reducing each against those picked (row echelon).
    let mut picked: Vec<(usize, Vec<f64>)> = Vec::new();
    for (_, mut row) in rows {
        for (col, p) in &picked {
            let f = row[*col] / p[*col];
            for (x, y) in row.iter_mut().zip(p) {
                *x -= f * y;
            }
        }
        let norm = row[..n].iter().fold(0.0, |m: f64, x| m.max(x.abs()));
        let (col, pivot) = row[..n].iter().enumerate().fold((0, 0.0), |acc, (i, &x)| {
            if x.abs() > acc.1 {
                (i, x.abs())
            } else {
                acc
            }
        });
        if norm == 0.0 || pivot <= 1e-9 * norm.max(1.0) || picked.iter().any(|(c, _)| *c == col) {
            continue;
        }
        picked.push((col, row));
        if picked.len() == n {
            break;
        }
    }
    if picked.len() < n {
        return None;
    }
    // Back substitution, last picked first.
    let mut x = vec![0.0; n];
    let mut known = vec![false; n];
    for (col, row) in picked.iter().rev() {
        let mut rhs = row[n];
        for i in 0..n {
            if i != *col && known[i] {
                rhs -= row[i] * x[i];
            } else if i != *col && row[i] != 0.0 {
                return None;
            }
        }
        x[*col] = rhs / row[*col];
        known[*col] = true;
    }
    let v: Vec<f64> = (0..dims).map(|r| x[r] * upper[r]).collect();
    let inside = (0..dims).all(|r| v[r] >= lower[r] && v[r] <= upper[r] && v[r].is_finite());
    inside.then_some(v)
}

/// Buffers of [`MultiSummary::eval`], reused across iterations.
#[derive(Default)]
struct Scratch {
    kc: Vec<f64>,
    sum: Vec<f64>,
    count: Vec<u32>,
}

/// The unit of `k_r` in the LP: the best point's `k_r`, or a thousandth of the box where that
/// is smaller (a slack resource).
fn lp_scale(k: f64, upper: f64) -> f64 {
    k.max(upper * 1e-3)
}

/// The cutting-plane LP in scaled variables: `z_r = k_r / s_r` with `s_r` near the best
/// point's `k_r` (rebuilt when that moves by more than a factor 4: the simplex's tolerances
/// are absolute, near 1e-10, and would otherwise blur a small `k_r`) and `theta = ref + S t`, so that the simplex (absolute tolerances near 1e-10) sees
/// numbers near 1 whatever the units of costs and QoE.
struct CutLp {
    scale_k: Vec<f64>,
    lower: Vec<f64>,
    upper: Vec<f64>,
    reference: f64,
    scale_d: f64,
    t: Variable,
    z: Vec<Variable>,
    state: LpState,
}

enum LpState {
    Built(Problem),
    Solved(microlp::Solution),
    Failed,
}

impl CutLp {
    fn new(
        lower: &[f64],
        upper: &[f64],
        near: &[f64],
        reference: f64,
        scale_d: f64,
        cuts: &[Cut],
    ) -> Option<Self> {
        let scale_k: Vec<f64> = upper
            .iter()
            .zip(near)
            .map(|(&u, &k)| lp_scale(k, u))
            .collect();
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let t = problem.add_var(1.0, (f64::NEG_INFINITY, f64::INFINITY));
        let z = lower
            .iter()
            .zip(upper)
            .zip(&scale_k)
            .map(|((&l, &u), &s)| problem.add_var(0.0, (l / s, u / s)))
            .collect();
        let mut lp = Self {
            scale_k,
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            reference,
            scale_d,
            t,
            z,
            state: LpState::Failed,
        };
        for c in cuts {
            let (expr, rhs) = lp.row(c);
            problem.add_constraint(expr, ComparisonOp::Ge, rhs);
        }
        lp.state = LpState::Built(problem);
        upper
            .iter()
            .all(|u| u.is_finite() && *u > 0.0)
            .then_some(lp)
    }

    /// The cut `theta >= a + g.k` as `t - sum (g_r s_r / S) z_r >= (a - ref) / S`.
    fn row(&self, c: &Cut) -> (Vec<(Variable, f64)>, f64) {
        let mut expr = vec![(self.t, 1.0)];
        for (r, &z) in self.z.iter().enumerate() {
            expr.push((z, -c.g[r] * self.scale_k[r] / self.scale_d));
        }
        (expr, (c.a - self.reference) / self.scale_d)
    }

    fn add_cut(&mut self, cut: Option<&Cut>) {
        let Some(cut) = cut else { return };
        let (expr, rhs) = self.row(cut);
        self.state = match std::mem::replace(&mut self.state, LpState::Failed) {
            LpState::Built(mut p) => {
                p.add_constraint(expr, ComparisonOp::Ge, rhs);
                LpState::Built(p)
            }
            LpState::Solved(s) => match s.add_constraint(expr, ComparisonOp::Ge, rhs) {
                Ok(outcome) => match outcome.into_solution() {
                    Ok(s) => LpState::Solved(s),
                    Err(_) => LpState::Failed,
                },
                Err(_) => LpState::Failed,
            },
            LpState::Failed => LpState::Failed,
        };
    }

    /// The model's minimizer `k`, or None when the LP failed.
    fn minimize(&mut self) -> Option<Vec<f64>> {
        if let LpState::Built(p) = &self.state {
            self.state = match p.solve().map(|o| o.into_solution()) {
                Ok(Ok(s)) => LpState::Solved(s),
                _ => LpState::Failed,
            };
        }
        let LpState::Solved(s) = &self.state else {
            return None;
        };
        Some(
            self.z
                .iter()
                .zip(&self.scale_k)
                .zip(self.lower.iter().zip(&self.upper))
                .map(|((&z, &scale), (&l, &u))| (s.var_value(z) * scale).clamp(l, u))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
