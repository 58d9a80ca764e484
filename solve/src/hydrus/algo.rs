//! The parameter solver of the Hydrus paper (section 4.1), on plain data.
//!
//! The problem: records `i` each choose one option `(cost, qoe)`; maximize total QoE with total
//! cost at most `I`. The live rule, `argmax_j q_ij - k * c_ij` with ties to the cheaper, can only
//! produce "threshold" allocations, so the solver's job is the `k` whose threshold allocation is
//! best within `I`.
//!
//! - [`solve_exact`]: the exact Lagrange multiplier. Per record, drop dominated options and take
//!   the upper concave hull of (cost, qoe); the hull's edges are increments with decreasing
//!   efficiency `dq/dc`. Walking all increments by efficiency until the budget runs out gives
//!   `k`, the efficiency of the first increment that does not fit (found by a weighted
//!   quickselect, linear time, not a sort). The live rule at that `k` takes exactly the
//!   increments above it; `k` is nudged so floating-point rounding cannot take the marginal one.
//! - [`solve_bisection`]: Algorithm 2 as published (bisection on `k`), for comparison.
//! - [`solve_quadratic`]: Algorithm 1 for smooth concave QoE models: equal marginal utility in
//!   closed form, with the box constraints of the strategy range.

/// Records and their options, stored flat: record `i` has options `offsets[i]..offsets[i+1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub cost: Vec<f64>,
    pub qoe: Vec<f64>,
    pub offsets: Vec<usize>,
    /// The logged choice of each record (an option index within the record), if known.
    pub chosen: Vec<Option<u32>>,
}

impl Default for Instance {
    fn default() -> Self {
        Self::new()
    }
}

impl Instance {
    pub fn new() -> Self {
        Self {
            cost: Vec::new(),
            qoe: Vec::new(),
            offsets: vec![0],
            chosen: Vec::new(),
        }
    }

    /// Add a record with options `(cost, qoe)`; `chosen` indexes them.
    pub fn push(&mut self, options: &[(f64, f64)], chosen: Option<u32>) {
        for &(c, q) in options {
            self.cost.push(c);
            self.qoe.push(q);
        }
        self.offsets.push(self.cost.len());
        self.chosen.push(chosen);
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn options(&self, i: usize) -> (&[f64], &[f64]) {
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.cost[r.clone()], &self.qoe[r])
    }

    /// The paper's budget: the cost of what was logged.
    pub fn logged_budget(&self) -> f64 {
        self.logged().0
    }

    /// (cost, QoE) of the logged allocation.
    pub fn logged(&self) -> (f64, f64) {
        let mut cost = 0.0;
        let mut qoe = 0.0;
        for i in 0..self.len() {
            if let Some(j) = self.chosen[i] {
                let k = self.offsets[i] + j as usize;
                cost += self.cost[k];
                qoe += self.qoe[k];
            }
        }
        (cost, qoe)
    }

    /// The live rule for one record: the option maximizing `q - k c`, ties to the cheaper, then
    /// the earlier. Mirrors `hydrus_filters::decide`.
    pub fn live_choice(&self, i: usize, k: f64) -> usize {
        let (c, q) = self.options(i);
        let mut best = 0;
        let mut best_v = f64::NEG_INFINITY;
        let mut best_c = f64::INFINITY;
        for j in 0..c.len() {
            let v = q[j] - k * c[j];
            if v > best_v || (v == best_v && c[j] < best_c) {
                best = j;
                best_v = v;
                best_c = c[j];
            }
        }
        best
    }

    /// (cost, QoE) of the live rule's allocation at `k`.
    pub fn live(&self, k: f64) -> (f64, f64) {
        let mut cost = 0.0;
        let mut qoe = 0.0;
        for i in 0..self.len() {
            let j = self.offsets[i] + self.live_choice(i, k);
            cost += self.cost[j];
            qoe += self.qoe[j];
        }
        (cost, qoe)
    }
}

/// What a solve found.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// The multiplier for the live rule.
    pub k: f64,
    /// Cost and QoE of the live rule's allocation at `k`.
    pub cost: f64,
    pub qoe: f64,
    /// The LP relaxation's optimum: no allocation within the budget has more QoE.
    pub lp_bound: f64,
    /// False when even the cheapest option of every record exceeds the budget.
    pub feasible: bool,
    /// Bisection steps (0 for the exact method).
    pub iterations: u32,
}

/// One hull edge of one record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Increment {
    pub(crate) eff: f64,
    pub(crate) dc: f64,
    pub(crate) dq: f64,
}

/// The upper concave hull of one record's options, from its cheapest option: pushes the hull's
/// increments to `out` and returns the base (cost, qoe). `scratch` is reused across records.
fn hull(
    cost: &[f64],
    qoe: &[f64],
    scratch: &mut Vec<(f64, f64)>,
    out: &mut Vec<Increment>,
) -> (f64, f64) {
    scratch.clear();
    scratch.extend(cost.iter().copied().zip(qoe.iter().copied()));
    hull_of_points(scratch, out)
}

/// [`hull`] of the (cost, qoe) points in `scratch` (reordered and overwritten; not empty).
pub(crate) fn hull_of_points(scratch: &mut [(f64, f64)], out: &mut Vec<Increment>) -> (f64, f64) {
    // Cheapest first; at equal cost the best QoE first.
    scratch.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    // Drop dominated options (no more QoE for more cost), then keep a concave chain.
    let mut n = 0;
    for idx in 0..scratch.len() {
        let p = scratch[idx];
        if n > 0 && p.1 <= scratch[n - 1].1 {
            continue;
        }
        // Pop the last point while it is on or below the segment from the one before it to p.
        while n >= 2 {
            let (a, b) = (scratch[n - 2], scratch[n - 1]);
            let cross = (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0);
            if cross >= 0.0 {
                n -= 1;
            } else {
                break;
            }
        }
        scratch[n] = p;
        n += 1;
    }
    for w in scratch[..n].windows(2) {
        let (dc, dq) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
        out.push(Increment {
            eff: dq / dc,
            dc,
            dq,
        });
    }
    scratch[0]
}

/// All records' hulls: base cost and QoE, and every increment.
fn hulls(inst: &Instance) -> (f64, f64, Vec<Increment>) {
    let mut incs = Vec::with_capacity(inst.cost.len());
    let mut scratch = Vec::with_capacity(16);
    let (mut base_c, mut base_q) = (0.0, 0.0);
    for i in 0..inst.len() {
        let (c, q) = inst.options(i);
        if c.is_empty() {
            continue;
        }
        let (bc, bq) = hull(c, q, &mut scratch, &mut incs);
        base_c += bc;
        base_q += bq;
    }
    (base_c, base_q, incs)
}

/// Split `items` around a pivot efficiency: `[> pivot | == pivot | < pivot]`; returns the two
/// boundaries. (Dutch national flag partition.)
fn partition3(items: &mut [Increment], pivot: f64) -> (usize, usize) {
    let (mut lt, mut i, mut gt) = (0, 0, items.len());
    // Invariant: [0,lt) > pivot, [lt,i) == pivot, [gt,len) < pivot.
    while i < gt {
        let e = items[i].eff;
        if e > pivot {
            items.swap(lt, i);
            lt += 1;
            i += 1;
        } else if e < pivot {
            gt -= 1;
            items.swap(i, gt);
        } else {
            i += 1;
        }
    }
    (lt, gt)
}

/// Weighted selection: the efficiency `k` of the first increment, by decreasing efficiency, whose
/// inclusion exceeds `budget`, and the cost and QoE of all increments above `k`. `None` for `k`
/// when everything fits.
fn threshold(items: &mut [Increment], mut budget: f64) -> (Option<f64>, f64, f64, f64) {
    let (mut taken_c, mut taken_q) = (0.0, 0.0);
    let mut lo = 0;
    let mut hi = items.len();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    // The smallest efficiency taken so far, for nudging k without crossing it.
    let mut floor_taken = f64::INFINITY;
    while lo < hi {
        let slice = &mut items[lo..hi];
        // A pseudo-random pivot: median of three random picks, robust to sorted input.
        let mut pick = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            slice[(rng % slice.len() as u64) as usize].eff
        };
        let (a, b, c) = (pick(), pick(), pick());
        let pivot = a.max(b.min(c)).min(b.max(c));
        let (gt_end, eq_end) = partition3(slice, pivot);
        let sum_gt_c: f64 = slice[..gt_end].iter().map(|x| x.dc).sum();
        if sum_gt_c > budget {
            hi = lo + gt_end;
            continue;
        }
        let sum_eq_c: f64 = slice[gt_end..eq_end].iter().map(|x| x.dc).sum();
        let sum_gt_q: f64 = slice[..gt_end].iter().map(|x| x.dq).sum();
        if gt_end > 0 {
            floor_taken = slice[..gt_end]
                .iter()
                .map(|x| x.eff)
                .fold(floor_taken, f64::min);
        }
        if sum_gt_c + sum_eq_c > budget {
            return (
                Some(pivot),
                taken_c + sum_gt_c,
                taken_q + sum_gt_q,
                floor_taken,
            );
        }
        let sum_eq_q: f64 = slice[gt_end..eq_end].iter().map(|x| x.dq).sum();
        budget -= sum_gt_c + sum_eq_c;
        taken_c += sum_gt_c + sum_eq_c;
        taken_q += sum_gt_q + sum_eq_q;
        floor_taken = floor_taken.min(pivot);
        lo += eq_end;
    }
    (None, taken_c, taken_q, floor_taken)
}

/// Raise `k` a hair above the marginal efficiency so that rounding in `q - k c` cannot make the
/// live rule take the marginal increment; never up to the lowest efficiency that is taken.
pub(crate) fn nudge(k: f64, floor_taken: f64) -> f64 {
    let up = k + (k.abs() * 1e-9).max(1e-12);
    if floor_taken.is_finite() {
        up.min(k + (floor_taken - k) / 2.0)
    } else {
        up
    }
}

/// The exact multiplier for budget `budget` (see the module docs).
pub fn solve_exact(inst: &Instance, budget: f64) -> Solution {
    let (base_c, base_q, mut incs) = hulls(inst);
    if base_c > budget {
        // Even the cheapest options overspend: a k above every efficiency gives them all.
        let max_eff = incs.iter().map(|x| x.eff).fold(0.0, f64::max);
        let k = nudge(max_eff, f64::INFINITY);
        let (cost, qoe) = inst.live(k);
        return Solution {
            k,
            cost,
            qoe,
            lp_bound: base_q,
            feasible: false,
            iterations: 0,
        };
    }
    let remaining = budget - base_c;
    let (marginal, taken_c, taken_q, floor_taken) = threshold(&mut incs, remaining);
    let (k, lp_bound) = match marginal {
        None => (0.0, base_q + taken_q),
        // The LP fills what is left with increments of efficiency k.
        Some(k) => (k, base_q + taken_q + k * (remaining - taken_c)),
    };
    let mut k = if marginal.is_some() {
        nudge(k, floor_taken)
    } else {
        k
    };
    let (mut cost, mut qoe) = inst.live(k);
    // Belt and braces: should rounding still overspend, step k up towards the next taken one.
    let mut guard = 0;
    while cost > budget && guard < 60 && floor_taken.is_finite() {
        k += (floor_taken - k) / 2.0;
        (cost, qoe) = inst.live(k);
        guard += 1;
    }
    Solution {
        k,
        cost,
        qoe,
        lp_bound,
        feasible: true,
        iterations: 0,
    }
}

/// Equation (8) of the paper: `max_i q_i(c(s_1)) / c(s_1)`, with `s_1` each record's cheapest
/// option.
pub fn k_max(inst: &Instance) -> f64 {
    let mut best: f64 = 0.0;
    for i in 0..inst.len() {
        let (c, q) = inst.options(i);
        if let Some(j) = (0..c.len()).min_by(|&a, &b| c[a].total_cmp(&c[b])) {
            if c[j] > 0.0 {
                best = best.max(q[j] / c[j]);
            }
        }
    }
    best
}

/// Algorithm 2 of the paper: bisection on `k` in `[0, k_max]`.
///
/// As published, the loop tests `|sum c - I| <= epsilon` (which discrete costs may never meet,
/// and its `gap` starts at minus infinity so the loop would not run) and returns the midpoint,
/// which may overspend. Here the bracket is halved until it is narrower than `epsilon` and its
/// upper (within-budget) end is returned; `k_max` is doubled first if it does not bring the cost
/// within the budget.
pub fn solve_bisection(inst: &Instance, budget: f64, epsilon: f64) -> Solution {
    let mut k_l = 0.0;
    let mut k_r = k_max(inst).max(1e-12);
    let mut iterations = 0;
    let max_eff = {
        let (_, _, incs) = hulls(inst);
        incs.iter().map(|x| x.eff).fold(0.0, f64::max)
    };
    while inst.live(k_r).0 > budget && k_r <= max_eff {
        k_r *= 2.0;
        iterations += 1;
    }
    let feasible = inst.live(k_r).0 <= budget;
    if inst.live(0.0).0 <= budget {
        k_r = 0.0;
    }
    let epsilon = epsilon.max(f64::EPSILON * k_r.max(1e-300));
    while k_r - k_l > epsilon && iterations < 10_000 {
        let k_m = (k_l + k_r) / 2.0;
        if inst.live(k_m).0 <= budget {
            k_r = k_m;
        } else {
            k_l = k_m;
        }
        iterations += 1;
    }
    let (cost, qoe) = inst.live(k_r);
    Solution {
        k: k_r,
        cost,
        qoe,
        lp_bound: f64::NAN,
        feasible,
        iterations,
    }
}

/// A smooth QoE model `q(c) = a + b c - d c^2` (`d > 0`), as in the paper's section 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quadratic {
    pub a: f64,
    pub b: f64,
    pub d: f64,
}

impl Quadratic {
    pub fn value(&self, c: f64) -> f64 {
        self.a + self.b * c - self.d * c * c
    }
}

/// Algorithm 1: costs `c_i` in `[lo, hi]` with equal marginal utility `q_i'(c_i) = lambda`
/// (clipped at the bounds) and `sum c_i = budget`; `lambda >= 0`, so a budget larger than every
/// user's peak leaves each at its peak. Returns `(lambda, costs)`; `None` when the users are
/// not strictly concave or the bounds are wrong.
pub fn solve_quadratic(
    users: &[Quadratic],
    lo: f64,
    hi: f64,
    budget: f64,
) -> Option<(f64, Vec<f64>)> {
    let bad_user = |u: &Quadratic| u.d.is_nan() || u.d <= 0.0 || !u.b.is_finite();
    if lo.is_nan() || hi.is_nan() || lo > hi || users.iter().any(bad_user) {
        return None;
    }
    let cost_at = |lambda: f64| -> Vec<f64> {
        users
            .iter()
            .map(|u| ((u.b - lambda) / (2.0 * u.d)).clamp(lo, hi))
            .collect()
    };
    let total = |lambda: f64| -> f64 {
        users
            .iter()
            .map(|u| ((u.b - lambda) / (2.0 * u.d)).clamp(lo, hi))
            .sum()
    };
    if total(0.0) <= budget {
        return Some((0.0, cost_at(0.0)));
    }
    // sum c(lambda) is piecewise linear and non-increasing; its breakpoints are where a user
    // hits a bound: lambda = b - 2 d hi (below it, c = hi) and b - 2 d lo (above it, c = lo).
    let mut points: Vec<f64> = users
        .iter()
        .flat_map(|u| [u.b - 2.0 * u.d * hi, u.b - 2.0 * u.d * lo])
        .filter(|&l| l > 0.0)
        .collect();
    points.push(0.0);
    points.sort_by(f64::total_cmp);
    points.dedup();
    if total(*points.last().unwrap_or(&0.0)) > budget {
        // Every user at `lo` still overspends: the budget cannot be met.
        let top = *points.last().unwrap_or(&0.0);
        return Some((top, cost_at(top)));
    }
    // Find the segment [p0, p1] with total(p0) > budget >= total(p1); interpolate (linear there).
    let idx = points.partition_point(|&l| total(l) > budget);
    let (p0, p1) = (points[idx.saturating_sub(1)], points[idx]);
    let (t0, t1) = (total(p0), total(p1));
    let lambda = if t0 == t1 {
        p1
    } else {
        p0 + (t0 - budget) * (p1 - p0) / (t0 - t1)
    };
    Some((lambda, cost_at(lambda)))
}

#[cfg(test)]
mod tests;
