//! A window's records as a mergeable summary whose size does not grow with the records.
//!
//! The exact solver ([`super::algo::solve_exact`]) only needs, per window, the sum of the
//! records' cheapest options, the logged allocation's cost and QoE, and the hull increments
//! walked by decreasing efficiency until the budget runs out. So each increment is added into a
//! log-spaced efficiency bucket (2^[`MANTISSA_BITS`] per octave: the top bits of the f64, so a
//! bucket's increments are contiguous in efficiency order) that keeps their cost, QoE, count
//! and efficiency range. The walk needs the individual increments only in the one bucket where
//! the budget runs out; a summary keeps every increment of a contiguous band of buckets around
//! where it estimates that to be (re-estimated from the records so far), at most `cap` of them,
//! narrowing the band as records arrive. When the budget runs out inside the band the answer
//! is the exact one; outside it, `k` is the top of that bucket (within budget, within one
//! bucket's width of the exact `k`) and the window says it is not exact.

use super::algo::{hull_of_points, nudge, Increment, Solution};
use super::Budget;

/// Buckets per octave of efficiency: 2^10, so a bucket is 0.07% wide.
pub const MANTISSA_BITS: u32 = 10;
const SHIFT: u32 = 52 - MANTISSA_BITS;
const PAGE: usize = 1 << MANTISSA_BITS;
/// Octaves of a positive finite f64 (its exponents).
const OCTAVES: usize = 2047;
/// Default for how many increments a window keeps one by one (16 bytes each).
pub const DEFAULT_CAP: usize = 1 << 16;

/// The bucket of a positive, finite efficiency: its f64 bits above the top mantissa bits
/// (monotone in the efficiency).
pub fn bucket_of(eff: f64) -> u32 {
    (eff.to_bits() >> SHIFT) as u32
}

/// The smallest efficiency of bucket `key`.
pub fn bucket_floor(key: u32) -> f64 {
    f64::from_bits(u64::from(key) << SHIFT)
}

/// The increments of one efficiency bucket, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub count: u64,
    pub cost: f64,
    pub qoe: f64,
    pub min_eff: f64,
    pub max_eff: f64,
}

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.cost += other.cost;
        self.qoe += other.qoe;
        self.min_eff = self.min_eff.min(other.min_eff);
        self.max_eff = self.max_eff.max(other.max_eff);
    }
}

/// One (scenario, window)'s records, summarized (see the module docs).
#[derive(Debug, Clone)]
pub struct WindowSummary {
    pub records: u64,
    /// Cost and QoE of every record's cheapest option (the hull's base).
    pub base_cost: f64,
    pub base_qoe: f64,
    /// Cost and QoE of the logged (`chosen`) options.
    pub logged_cost: f64,
    pub logged_qoe: f64,
    /// Buckets by octave (`key >> MANTISSA_BITS`, the f64 exponent), each octave's buckets in
    /// a page allocated when first used.
    pages: Vec<Option<Box<[Bucket]>>>,
    /// Buckets `lo..=hi` have every one of their increments in `kept` (none when lo > hi).
    kept_range: (u32, u32),
    /// `(cost, qoe)` of each increment in the kept band.
    kept: Vec<(f64, f64)>,
    /// Most increments kept one by one before the band is narrowed.
    cap: usize,
    /// The budget the band is centred for.
    budget: Budget,
    scratch: Vec<(f64, f64)>,
    incs: Vec<Increment>,
}

impl Default for WindowSummary {
    fn default() -> Self {
        Self::new(DEFAULT_CAP, Budget::Logged)
    }
}

impl WindowSummary {
    /// An empty summary keeping at most `cap` increments, its band centred for `budget`.
    pub fn new(cap: usize, budget: Budget) -> Self {
        Self {
            records: 0,
            base_cost: 0.0,
            base_qoe: 0.0,
            logged_cost: 0.0,
            logged_qoe: 0.0,
            pages: Vec::new(),
            kept_range: (0, u32::MAX),
            kept: Vec::new(),
            cap: cap.max(2),
            budget,
            scratch: Vec::new(),
            incs: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Add a record: its options `(cost, qoe)` (not empty) and the index of the logged one.
    pub fn push(&mut self, options: &[(f64, f64)], chosen: usize) {
        if options.is_empty() {
            return;
        }
        self.records += 1;
        if let Some(&(c, q)) = options.get(chosen) {
            self.logged_cost += c;
            self.logged_qoe += q;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut incs = std::mem::take(&mut self.incs);
        scratch.clear();
        scratch.extend_from_slice(options);
        incs.clear();
        let (bc, bq) = hull_of_points(&mut scratch, &mut incs);
        self.base_cost += bc;
        self.base_qoe += bq;
        for inc in &incs {
            self.add_increment(inc.eff, inc.dc, inc.dq);
        }
        self.scratch = scratch;
        self.incs = incs;
    }

    fn page_mut(&mut self, octave: usize) -> &mut [Bucket] {
        if self.pages.len() <= octave {
            self.pages.resize(OCTAVES.max(octave + 1), None);
        }
        self.pages[octave].get_or_insert_with(|| {
            // Written, not `calloc`ed: the first touch of a calloc'ed page maps the shared zero
            // page, and the first add then copies it and flushes every core's TLB.
            let mut page = Vec::with_capacity(PAGE);
            page.resize(PAGE, Bucket::default());
            page.into_boxed_slice()
        })
    }

    fn bucket_mut(&mut self, key: u32) -> &mut Bucket {
        &mut self.page_mut((key >> MANTISSA_BITS) as usize)[key as usize & (PAGE - 1)]
    }

    fn add_increment(&mut self, eff: f64, dc: f64, dq: f64) {
        let key = bucket_of(eff);
        self.bucket_mut(key).add(&Bucket {
            count: 1,
            cost: dc,
            qoe: dq,
            min_eff: eff,
            max_eff: eff,
        });
        if self.kept_range.0 <= key && key <= self.kept_range.1 {
            self.kept.push((dc, dq));
            if self.kept.len() > self.cap {
                self.narrow();
            }
        }
    }

    /// Non-empty buckets by decreasing efficiency.
    pub fn buckets_desc(&self) -> impl Iterator<Item = (u32, &Bucket)> {
        self.pages
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(octave, page)| Some((octave as u32, page.as_ref()?)))
            .flat_map(|(octave, page)| {
                page.iter()
                    .enumerate()
                    .rev()
                    .filter(|(_, b)| b.count > 0)
                    .map(move |(i, b)| ((octave << MANTISSA_BITS) | i as u32, b))
            })
    }

    /// Buckets whose increments are all kept one by one, as an inclusive range (None: none).
    pub fn kept_range(&self) -> Option<(u32, u32)> {
        (self.kept_range.0 <= self.kept_range.1).then_some(self.kept_range)
    }

    /// The increments kept one by one, `(cost, qoe)`.
    pub fn kept(&self) -> &[(f64, f64)] {
        &self.kept
    }

    /// The cost available to increments of the records so far under `budget`: what is left
    /// after every record's cheapest option. A total budget is for records not all read yet:
    /// the logged cost stands in for it (the band then may miss; `hydrus solve` keeps records
    /// for `--budget-total`).
    fn remaining(&self, budget: Budget) -> f64 {
        let total = match budget {
            Budget::Logged | Budget::Total(_) => self.logged_cost,
            Budget::Mean(c) => c * self.records as f64,
        };
        total - self.base_cost
    }

    /// The bucket where the records so far would run out of budget (the lowest one when
    /// everything fits).
    fn estimate_marginal(&self) -> u32 {
        let remaining = self.remaining(self.budget);
        let mut taken = 0.0;
        let mut last = 0;
        for (key, b) in self.buckets_desc() {
            if taken + b.cost > remaining {
                return key;
            }
            taken += b.cost;
            last = key;
        }
        last
    }

    /// Shrink the kept band, around the estimated marginal bucket, to at most `cap / 2`
    /// increments, dropping the others' (their buckets keep the sums).
    fn narrow(&mut self) {
        let m = self.estimate_marginal();
        let (lo, hi) = self.kept_range;
        let mut counts: Vec<(u32, u64)> = self
            .buckets_desc()
            .filter(|(k, _)| lo <= *k && *k <= hi)
            .map(|(k, b)| (k, b.count))
            .collect();
        counts.reverse();
        let target = (self.cap / 2) as u64;
        // Grow [i, j) of `counts` outward from m, nearer side first, while it fits.
        let mut i = counts.partition_point(|c| c.0 < m);
        let mut j = i;
        let mut total = 0;
        loop {
            let below = (i > 0).then(|| (m.saturating_sub(counts[i - 1].0), counts[i - 1].1));
            let above = counts.get(j).map(|c| (c.0.saturating_sub(m), c.1));
            let take_above = match (below, above) {
                (Some(b), Some(a)) => a.0 <= b.0,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            let n = if take_above {
                counts[j].1
            } else {
                counts[i - 1].1
            };
            if total + n > target {
                break;
            }
            total += n;
            if take_above {
                j += 1;
            } else {
                i -= 1;
            }
        }
        self.kept_range = if i == j {
            (1, 0)
        } else {
            let new_lo = if i > 0 { counts[i - 1].0 + 1 } else { lo };
            let new_hi = counts.get(j).map_or(hi, |c| c.0 - 1);
            (new_lo, new_hi)
        };
        let (lo, hi) = self.kept_range;
        self.kept.retain(|&(dc, dq)| {
            let k = bucket_of(dq / dc);
            lo <= k && k <= hi
        });
    }

    /// Add `other`'s records (from other files, chunks or processes).
    pub fn merge(&mut self, other: &WindowSummary) {
        self.records += other.records;
        self.base_cost += other.base_cost;
        self.base_qoe += other.base_qoe;
        self.logged_cost += other.logged_cost;
        self.logged_qoe += other.logged_qoe;
        for (octave, page) in other.pages.iter().enumerate() {
            let Some(page) = page else { continue };
            for (m, o) in self.page_mut(octave).iter_mut().zip(page.iter()) {
                m.add(o);
            }
        }
        // Only buckets kept whole on both sides are kept whole in the sum.
        let lo = self.kept_range.0.max(other.kept_range.0);
        let hi = self.kept_range.1.min(other.kept_range.1);
        self.kept_range = (lo, hi);
        self.kept.extend_from_slice(&other.kept);
        self.kept.retain(|&(dc, dq)| {
            let k = bucket_of(dq / dc);
            lo <= k && k <= hi
        });
        if self.kept.len() > self.cap {
            self.narrow();
        }
    }

    /// A copy keeping at most `cap` increments one by one (narrowed as [`Self::narrow`] does).
    pub fn narrowed(&self, cap: usize) -> WindowSummary {
        let mut s = self.clone();
        s.cap = cap.max(2);
        if s.kept.len() > s.cap {
            s.narrow();
        }
        s.cap = self.cap;
        s
    }

    /// Rebuild a summary from its parts (a summary file).
    pub(crate) fn from_parts(parts: SummaryParts, cap: usize, budget: Budget) -> Self {
        let mut s = Self::new(cap, budget);
        s.records = parts.records;
        s.base_cost = parts.base_cost;
        s.base_qoe = parts.base_qoe;
        s.logged_cost = parts.logged_cost;
        s.logged_qoe = parts.logged_qoe;
        for (key, b) in parts.buckets {
            *s.bucket_mut(key) = b;
        }
        s.kept_range = parts.kept_range.unwrap_or((1, 0));
        s.kept = parts.kept;
        s
    }

    /// The parts a summary file holds.
    pub(crate) fn to_parts(&self) -> SummaryParts {
        let mut buckets: Vec<(u32, Bucket)> = self.buckets_desc().map(|(k, b)| (k, *b)).collect();
        buckets.reverse();
        SummaryParts {
            records: self.records,
            base_cost: self.base_cost,
            base_qoe: self.base_qoe,
            logged_cost: self.logged_cost,
            logged_qoe: self.logged_qoe,
            buckets,
            kept_range: self.kept_range(),
            kept: self.kept.clone(),
        }
    }
}

/// A summary's contents, as a summary file holds them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SummaryParts {
    pub records: u64,
    pub base_cost: f64,
    pub base_qoe: f64,
    pub logged_cost: f64,
    pub logged_qoe: f64,
    /// Non-empty buckets, by increasing key.
    pub buckets: Vec<(u32, Bucket)>,
    pub kept_range: Option<(u32, u32)>,
    pub kept: Vec<(f64, f64)>,
}

/// What solving a summary found: the solution, and whether it is the exact one.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySolution {
    pub solution: Solution,
    /// False when the budget ran out in a bucket whose increments were not kept: `k` is then
    /// that bucket's top efficiency (within budget, at most a bucket's width above the exact).
    pub exact: bool,
}

/// The marginal bucket's kept increments by decreasing efficiency, equal ones together, as
/// (efficiency, cost, qoe) groups.
fn kept_groups(s: &WindowSummary, key: u32) -> Vec<(f64, f64, f64)> {
    let mut incs: Vec<(f64, f64, f64)> = s
        .kept
        .iter()
        .map(|&(dc, dq)| (dq / dc, dc, dq))
        .filter(|x| bucket_of(x.0) == key)
        .collect();
    incs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut groups: Vec<(f64, f64, f64)> = Vec::with_capacity(incs.len());
    for (e, c, q) in incs {
        match groups.last_mut() {
            Some(g) if g.0 == e => {
                g.1 += c;
                g.2 += q;
            }
            _ => groups.push((e, c, q)),
        }
    }
    groups
}

/// The exact multiplier for `budget` from a summary, as [`super::algo::solve_exact`] finds it
/// from the records (same `k` up to rounding, same decisions).
pub fn solve_summary(s: &WindowSummary, budget: f64) -> SummarySolution {
    let remaining = budget - s.base_cost;
    if remaining < 0.0 {
        let max_eff = s.buckets_desc().next().map_or(0.0, |(_, b)| b.max_eff);
        let solution = Solution {
            k: nudge(max_eff, f64::INFINITY),
            cost: s.base_cost,
            qoe: s.base_qoe,
            lp_bound: s.base_qoe,
            feasible: false,
            iterations: 0,
        };
        return SummarySolution {
            solution,
            exact: true,
        };
    }
    // An increment that fills the budget to its last bits fits: the in-memory solver, which
    // subtracts as it selects, takes it, and so must this sum (else the summary's k sits on that
    // increment's breakpoint and leaves it out: under budget by the whole increment).
    let remaining = remaining + 1e-12 * budget.abs().max(1.0);
    let (mut taken_c, mut taken_q) = (0.0, 0.0);
    let mut floor_taken = f64::INFINITY;
    let mut marginal = None;
    let mut exact = true;
    'walk: for (key, b) in s.buckets_desc() {
        if taken_c + b.cost <= remaining {
            taken_c += b.cost;
            taken_q += b.qoe;
            floor_taken = floor_taken.min(b.min_eff);
            continue;
        }
        let kept = s
            .kept_range()
            .is_some_and(|(lo, hi)| lo <= key && key <= hi);
        if !kept {
            marginal = Some(b.max_eff);
            exact = false;
            break;
        }
        for (e, c, q) in kept_groups(s, key) {
            if taken_c + c > remaining {
                marginal = Some(e);
                break 'walk;
            }
            taken_c += c;
            taken_q += q;
            floor_taken = floor_taken.min(e);
        }
        // Rounding: the bucket fitted one by one after all; go on to the next.
    }
    let (k, lp_bound) = match marginal {
        None => (0.0, s.base_qoe + taken_q),
        Some(k) => (
            nudge(k, floor_taken),
            s.base_qoe + taken_q + k * (remaining - taken_c),
        ),
    };
    SummarySolution {
        solution: Solution {
            k,
            cost: s.base_cost + taken_c,
            qoe: s.base_qoe + taken_q,
            lp_bound,
            feasible: true,
            iterations: 0,
        },
        exact,
    }
}

#[cfg(test)]
mod tests;
