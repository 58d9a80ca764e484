//! The E2E controller (`hydrus solve --policy e2e`): from logged requests, build the decision
//! table the e2e filter routes by.
//!
//! 1. External delays are cut into buckets of equal population, each split further while its
//!    span exceeds `delta` (E2E section 5, spatial coarsening).
//! 2. Each replica group's server-side delay is modelled from the logged (load, upstream time)
//!    pairs: a least-squares line in the load, plus the observed residuals as its spread. A
//!    candidate load split is turned into per-group loads by Little's law at the logged arrival
//!    rate.
//! 3. For each candidate split, `units` request units (buckets in proportion to their
//!    population) are matched to as many slots (groups in proportion to the split) by a
//!    maximum-weight bipartite matching (Kuhn-Munkres), the weight of an edge being the expected
//!    QoE `E[Q(external + server-side)]` (E2E section 4, Figure 12). The best split wins.
//! 4. The matching becomes per-bucket routing probabilities; the table is rewritten only when
//!    the inputs moved: Jensen-Shannon divergence of the delay histograms above a threshold
//!    (E2E section 5, temporal coarsening).

use super::input::LineSink;
use hydrus_filters::e2e::QoeModelConfig;
use hydrus_filters::e2e::{BucketFile, E2eTable, E2eTableFile, MAX_BUCKETS};
use pathfinding::prelude::{kuhn_munkres, Matrix};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fields of a log record the controller uses.
#[derive(Deserialize)]
struct E2eRecord {
    ts_ms: u64,
    #[serde(default)]
    external_delay_ms: Option<f64>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    upstream_ms: Option<f64>,
    #[serde(default)]
    cluster_load: Option<u32>,
}

/// Logged requests, as the controller needs them.
#[derive(Debug, Default)]
pub struct E2eInputs {
    pub groups: Vec<String>,
    pub external: Vec<f64>,
    /// Per group: (load, server-side delay ms).
    pub samples: Vec<Vec<(f64, f64)>>,
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub records: u64,
    pub malformed: u64,
    pub malformed_examples: Vec<String>,
}

impl E2eInputs {
    pub fn new(groups: Vec<String>) -> Self {
        let n = groups.len();
        Self {
            groups,
            samples: vec![Vec::new(); n],
            ..Default::default()
        }
    }
}

impl LineSink for E2eInputs {
    fn line(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        let r: E2eRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                self.malformed += 1;
                if self.malformed_examples.len() < 5 {
                    self.malformed_examples.push(format!("{}: {e}", place()));
                }
                return None;
            }
        };
        self.records += 1;
        self.first_ms = Some(self.first_ms.map_or(r.ts_ms, |f| f.min(r.ts_ms)));
        self.last_ms = Some(self.last_ms.map_or(r.ts_ms, |l| l.max(r.ts_ms)));
        if let Some(e) = r.external_delay_ms.filter(|e| e.is_finite() && *e >= 0.0) {
            self.external.push(e);
        }
        if let (Some(c), Some(ms), Some(load)) = (r.cluster, r.upstream_ms, r.cluster_load) {
            if let Some(g) = self.groups.iter().position(|g| *g == c) {
                if ms.is_finite() && ms >= 0.0 {
                    self.samples[g].push((f64::from(load), ms));
                }
            }
        }
        None
    }

    fn incomplete(&mut self) {}
}

/// A group's server-side delay as a function of its load.
#[derive(Debug, Clone, Serialize)]
pub struct DelayModel {
    pub intercept_ms: f64,
    pub per_load_ms: f64,
    /// Observed deviations from the line (a bounded sample), giving the spread.
    #[serde(skip)]
    pub residuals: Vec<f64>,
    pub samples: usize,
}

impl DelayModel {
    pub fn fit(samples: &[(f64, f64)]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
        let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
        let sxx: f64 = samples.iter().map(|s| (s.0 - mx) * (s.0 - mx)).sum();
        let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
        let slope = if sxx > 1e-9 {
            (sxy / sxx).max(0.0)
        } else {
            0.0
        };
        let intercept = my - slope * mx;
        let step = (samples.len() / 64).max(1);
        let residuals = samples
            .iter()
            .step_by(step)
            .map(|s| s.1 - (intercept + slope * s.0))
            .collect();
        Some(Self {
            intercept_ms: intercept,
            per_load_ms: slope,
            residuals,
            samples: samples.len(),
        })
    }

    pub fn mean_at(&self, load: f64) -> f64 {
        (self.intercept_ms + self.per_load_ms * load).max(0.0)
    }

    /// Delay samples at `load`.
    pub fn at(&self, load: f64) -> impl Iterator<Item = f64> + '_ {
        let m = self.intercept_ms + self.per_load_ms * load;
        self.residuals.iter().map(move |r| (m + r).max(0.0))
    }
}

/// Equal-population bucket bounds, each bucket's span capped at `delta_ms` (by splitting it).
/// Returns the upper bounds of all buckets but the last.
pub fn bucketize(sorted: &[f64], buckets: usize, delta_ms: f64) -> Vec<f64> {
    if sorted.len() < 2 {
        return Vec::new();
    }
    let k = buckets.clamp(1, MAX_BUCKETS);
    // Cut halfway between the neighbours at each quantile, so equal delays share a bucket.
    let mut cuts: Vec<f64> = (1..k)
        .map(|i| {
            let j = (i * sorted.len() / k).clamp(1, sorted.len() - 1);
            (sorted[j - 1] + sorted[j]) / 2.0
        })
        .collect();
    cuts.dedup();
    // Split spans over delta (only where there are requests), within the bucket budget.
    let mut bounds = Vec::new();
    let mut lo = sorted[0];
    let hi_all = sorted[sorted.len() - 1];
    for &c in cuts.iter().chain(std::iter::once(&hi_all)) {
        if delta_ms > 0.0 && c - lo > delta_ms {
            let parts = ((c - lo) / delta_ms).ceil() as usize;
            for p in 1..parts {
                let b = lo + (c - lo) * p as f64 / parts as f64;
                let has =
                    sorted.partition_point(|&x| x <= b) > sorted.partition_point(|&x| x <= lo);
                if has {
                    bounds.push(b);
                }
            }
        }
        bounds.push(c);
        lo = c;
    }
    bounds.pop(); // the last bucket is open-ended
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds.truncate(MAX_BUCKETS - 1);
    bounds
}

/// Maximum-weight assignment of rows to columns (`weights[r][c]`), by Kuhn-Munkres on weights
/// scaled to integers. Returns the column of each row.
pub fn max_weight_matching(weights: &[Vec<f64>]) -> Vec<usize> {
    let rows = weights.len();
    if rows == 0 {
        return Vec::new();
    }
    let cols = weights[0].len().max(rows);
    let mut data = Vec::with_capacity(rows * cols);
    for r in weights {
        for c in 0..cols {
            let w = r.get(c).copied().unwrap_or(0.0);
            data.push((w * 1e9).round() as i64);
        }
    }
    match Matrix::from_vec(rows, cols, data) {
        Ok(m) => kuhn_munkres(&m).1,
        Err(_) => (0..rows).collect(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketReport {
    pub bucket: usize,
    pub from_ms: f64,
    pub to_ms: Option<f64>,
    pub share: f64,
    pub route: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub records: u64,
    pub requests_with_external_delay: usize,
    pub groups: Vec<String>,
    pub models: Vec<Option<DelayModel>>,
    pub arrival_per_s: f64,
    /// The chosen load split (share of requests per group).
    pub split: Vec<f64>,
    pub buckets: Vec<BucketReport>,
    /// Mean QoE under load balancing, and under the table, by the models.
    pub default_qoe: f64,
    pub e2e_qoe: f64,
    pub gain: f64,
}

pub struct E2eOptions {
    pub buckets: usize,
    pub delta_ms: f64,
    pub units: usize,
    pub qoe: QoeModelConfig,
    /// Set priorities (`high`/`low`) in the table.
    pub priorities: bool,
}

/// Per-group loads for a split, by Little's law: load = 1 + rate * share * delay(load).
fn loads(models: &[DelayModel], rate_per_ms: f64, split: &[f64]) -> Vec<f64> {
    models
        .iter()
        .zip(split)
        .map(|(m, &f)| {
            let mut l = 1.0;
            for _ in 0..100 {
                let next = 1.0 + rate_per_ms * f * m.mean_at(l);
                if !next.is_finite() || next > 1e6 {
                    return 1e6;
                }
                l = 0.5 * l + 0.5 * next;
            }
            l
        })
        .collect()
}

/// Expected QoE of each bucket's requests on each group at the given loads.
fn expected(
    q: &QoeModelConfig,
    bucket_delays: &[Vec<f64>],
    models: &[DelayModel],
    loads: &[f64],
) -> Vec<Vec<f64>> {
    bucket_delays
        .iter()
        .map(|cs| {
            models
                .iter()
                .zip(loads)
                .map(|(m, &l)| {
                    let (mut sum, mut n) = (0.0, 0usize);
                    for c in cs {
                        for s in m.at(l) {
                            sum += q.qoe(c + s);
                            n += 1;
                        }
                    }
                    if n == 0 {
                        0.0
                    } else {
                        sum / n as f64
                    }
                })
                .collect()
        })
        .collect()
}

/// Integer counts proportional to `shares` summing to `total` (largest remainders).
fn apportion(shares: &[f64], total: usize) -> Vec<usize> {
    let sum: f64 = shares.iter().sum::<f64>().max(1e-300);
    let exact: Vec<f64> = shares.iter().map(|s| s / sum * total as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut rest: Vec<usize> = (0..shares.len()).collect();
    rest.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let mut left = total.saturating_sub(counts.iter().sum());
    for i in rest {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// Candidate splits over `g` groups on a grid.
fn splits(g: usize) -> Vec<Vec<f64>> {
    let steps = match g {
        0 | 1 => return vec![vec![1.0; g]],
        2 => 20,
        3 => 10,
        4 => 6,
        _ => {
            let mut v = vec![vec![1.0 / g as f64; g]];
            for i in 0..g {
                let mut one = vec![0.0; g];
                one[i] = 1.0;
                v.push(one);
            }
            return v;
        }
    };
    let mut out = Vec::new();
    let mut cur = vec![0usize; g];
    fn rec(i: usize, left: usize, cur: &mut Vec<usize>, steps: usize, out: &mut Vec<Vec<f64>>) {
        if i + 1 == cur.len() {
            cur[i] = left;
            out.push(cur.iter().map(|&c| c as f64 / steps as f64).collect());
            return;
        }
        for c in 0..=left {
            cur[i] = c;
            rec(i + 1, left - c, cur, steps, out);
        }
    }
    rec(0, steps, &mut cur, steps, &mut out);
    out
}

/// Solve the decision table. `None` when the logs hold no external delays or no group has
/// delay samples.
pub fn solve(inputs: &E2eInputs, opts: &E2eOptions) -> Result<(E2eTableFile, E2eReport), String> {
    let g = inputs.groups.len();
    if inputs.external.is_empty() {
        return Err("no record has an external delay (is the e2e filter's header set?)".into());
    }
    let models: Vec<Option<DelayModel>> =
        inputs.samples.iter().map(|s| DelayModel::fit(s)).collect();
    let Some(fallback_model) = models.iter().flatten().next().cloned() else {
        return Err("no record was routed to a group with its upstream time and load".into());
    };
    // A group never tried gets the others' model: no evidence it is any different.
    let usable: Vec<DelayModel> = models
        .iter()
        .map(|m| m.clone().unwrap_or_else(|| fallback_model.clone()))
        .collect();
    let span_ms = inputs
        .last_ms
        .zip(inputs.first_ms)
        .map_or(1, |(l, f)| l.saturating_sub(f).max(1));
    let rate_per_ms = inputs.records as f64 / span_ms as f64;

    let mut sorted = inputs.external.clone();
    sorted.sort_by(f64::total_cmp);
    let bounds = bucketize(&sorted, opts.buckets, opts.delta_ms);
    let nb = bounds.len() + 1;
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); nb];
    for &c in &sorted {
        members[bounds.partition_point(|&b| b < c)].push(c);
    }
    let shares: Vec<f64> = members
        .iter()
        .map(|m| m.len() as f64 / sorted.len() as f64)
        .collect();
    // Each bucket's delays, thinned for the expectation.
    let reps: Vec<Vec<f64>> = members
        .iter()
        .map(|m| {
            let step = (m.len() / 16).max(1);
            m.iter().step_by(step).copied().collect()
        })
        .collect();
    let units = opts.units.max(nb).max(2);
    let unit_bucket: Vec<usize> = apportion(&shares, units)
        .iter()
        .enumerate()
        .flat_map(|(b, &n)| std::iter::repeat_n(b, n))
        .collect();

    let balanced = vec![1.0 / g as f64; g];
    let default_w = expected(
        &opts.qoe,
        &reps,
        &usable,
        &loads(&usable, rate_per_ms, &balanced),
    );
    let default_qoe: f64 = (0..nb)
        .map(|b| shares[b] * default_w[b].iter().sum::<f64>() / g as f64)
        .sum();

    /// The best split so far: mean QoE, split, per-bucket unit counts per group, weights.
    type Best = (f64, Vec<f64>, Vec<Vec<usize>>, Vec<Vec<f64>>);
    let mut best: Option<Best> = None;
    for split in splits(g) {
        let w = expected(
            &opts.qoe,
            &reps,
            &usable,
            &loads(&usable, rate_per_ms, &split),
        );
        let slot_group: Vec<usize> = apportion(&split, units)
            .iter()
            .enumerate()
            .flat_map(|(gi, &n)| std::iter::repeat_n(gi, n))
            .collect();
        let weights: Vec<Vec<f64>> = unit_bucket
            .iter()
            .map(|&b| slot_group.iter().map(|&gi| w[b][gi]).collect())
            .collect();
        let assign = max_weight_matching(&weights);
        let total: f64 = assign
            .iter()
            .enumerate()
            .map(|(u, &s)| weights[u][s])
            .sum::<f64>()
            / units as f64;
        let mut counts = vec![vec![0usize; g]; nb];
        for (u, &s) in assign.iter().enumerate() {
            counts[unit_bucket[u]][slot_group[s]] += 1;
        }
        if best.as_ref().is_none_or(|b| total > b.0 + 1e-12) {
            best = Some((total, split, counts, w));
        }
    }
    let Some((e2e_qoe, split, counts, w)) = best else {
        return Err("no candidate split".into());
    };
    // Priorities: buckets that gain most from their best group over their worst are `high`.
    let spread: Vec<f64> = w
        .iter()
        .map(|row| {
            row.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                - row.iter().copied().fold(f64::INFINITY, f64::min)
        })
        .collect();
    let median = {
        let mut s = spread.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let mut buckets = Vec::with_capacity(nb);
    let mut report_buckets = Vec::with_capacity(nb);
    for b in 0..nb {
        let n: usize = counts[b].iter().sum();
        let route: Vec<f64> = if n == 0 {
            balanced.clone()
        } else {
            counts[b].iter().map(|&c| c as f64 / n as f64).collect()
        };
        let priority = opts
            .priorities
            .then(|| if spread[b] > median { "high" } else { "low" }.to_string());
        let max_ms = bounds.get(b).copied();
        report_buckets.push(BucketReport {
            bucket: b,
            from_ms: if b == 0 { 0.0 } else { bounds[b - 1] },
            to_ms: max_ms,
            share: shares[b],
            route: route.clone(),
            priority: priority.clone(),
        });
        buckets.push(BucketFile {
            max_ms,
            route,
            priority,
        });
    }
    let file = E2eTableFile {
        groups: inputs.groups.clone(),
        generated_at_ms: Some(crate::state::now_ms()),
        buckets,
        inputs: Some(histograms(inputs)),
    };
    // The table must load in the proxy.
    E2eTable::new(file.clone())
        .map_err(|e| format!("controller produced an invalid table: {e}"))?;
    Ok((
        file,
        E2eReport {
            records: inputs.records,
            requests_with_external_delay: inputs.external.len(),
            groups: inputs.groups.clone(),
            models,
            arrival_per_s: rate_per_ms * 1000.0,
            split,
            buckets: report_buckets,
            default_qoe,
            e2e_qoe,
            gain: if default_qoe > 0.0 {
                e2e_qoe / default_qoe - 1.0
            } else {
                0.0
            },
        },
    ))
}

/// Log-spaced histogram bins, 1 ms to ~100 s.
fn bin(ms: f64) -> usize {
    ((ms.max(1.0).log10() * 8.0) as usize).min(39)
}

fn histogram(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut h = vec![0.0; 40];
    let mut n = 0.0;
    for v in values {
        h[bin(v)] += 1.0;
        n += 1.0;
    }
    if n > 0.0 {
        for x in &mut h {
            *x /= n;
        }
    }
    h
}

/// The inputs' histograms, stored in the table to decide later whether they moved.
fn histograms(inputs: &E2eInputs) -> serde_json::Value {
    let groups: BTreeMap<&str, Vec<f64>> = inputs
        .groups
        .iter()
        .zip(&inputs.samples)
        .map(|(g, s)| (g.as_str(), histogram(s.iter().map(|x| x.1))))
        .collect();
    serde_json::json!({
        "external": histogram(inputs.external.iter().copied()),
        "server": groups,
    })
}

/// Jensen-Shannon divergence (base 2, in [0, 1]) of two distributions on the same bins.
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).log2())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).clamp(0.0, 1.0)
}

/// How far the inputs moved since `old` was solved: the largest JS divergence over the
/// external-delay and per-group server-delay histograms; 1 when they cannot be compared.
pub fn inputs_moved(old: &E2eTableFile, new: &E2eTableFile) -> f64 {
    if old.groups != new.groups {
        return 1.0;
    }
    let (Some(a), Some(b)) = (&old.inputs, &new.inputs) else {
        return 1.0;
    };
    let vec = |v: &serde_json::Value| -> Option<Vec<f64>> {
        v.as_array()?.iter().map(|x| x.as_f64()).collect()
    };
    let mut worst: f64 = 0.0;
    let mut pairs = vec![(vec(&a["external"]), vec(&b["external"]))];
    for g in &new.groups {
        pairs.push((vec(&a["server"][g]), vec(&b["server"][g])));
    }
    for (x, y) in pairs {
        match (x, y) {
            (Some(x), Some(y)) if x.len() == y.len() => worst = worst.max(js_divergence(&x, &y)),
            _ => return 1.0,
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(w: &[Vec<f64>]) -> f64 {
        fn rec(w: &[Vec<f64>], row: usize, used: &mut Vec<bool>) -> f64 {
            if row == w.len() {
                return 0.0;
            }
            let mut best = f64::NEG_INFINITY;
            for c in 0..w[0].len() {
                if !used[c] {
                    used[c] = true;
                    best = best.max(w[row][c] + rec(w, row + 1, used));
                    used[c] = false;
                }
            }
            best
        }
        rec(w, 0, &mut vec![false; w[0].len()])
    }

    proptest! {
        /// Kuhn-Munkres finds the maximum-weight matching found by enumerating them all.
        #[test]
        fn matching_is_optimal(n in 1usize..7, extra in 0usize..2, seed in proptest::collection::vec(0.0f64..1.0, 64)) {
            let cols = n + extra;
            let w: Vec<Vec<f64>> = (0..n).map(|r| (0..cols).map(|c| seed[(r * cols + c) % 64]).collect()).collect();
            let a = max_weight_matching(&w);
            let got: f64 = a.iter().enumerate().map(|(r, &c)| w[r][c]).sum();
            let mut seen = std::collections::HashSet::new();
            prop_assert!(a.iter().all(|c| seen.insert(*c)), "a matching");
            prop_assert!((got - brute_force(&w)).abs() < 1e-6);
        }

        #[test]
        fn buckets_respect_delta(mut v in proptest::collection::vec(0.0f64..5000.0, 1..300), k in 1usize..12) {
            v.sort_by(f64::total_cmp);
            let delta = 400.0;
            let b = bucketize(&v, k, delta);
            prop_assert!(b.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(b.len() < MAX_BUCKETS);
            // Within the data's range, consecutive bounds holding requests are at most delta
            // apart unless the quantile cut itself was wider and had no requests inside.
            let t = E2eTable::new(E2eTableFile {
                groups: vec!["a".into()],
                generated_at_ms: None,
                buckets: b.iter().map(|&m| BucketFile { max_ms: Some(m), route: vec![1.0], priority: None })
                    .chain(std::iter::once(BucketFile { max_ms: None, route: vec![1.0], priority: None }))
                    .collect(),
                inputs: None,
            });
            prop_assert!(t.is_ok());
        }
    }

    #[test]
    fn js_divergence_bounds() {
        assert_eq!(js_divergence(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
        assert!((js_divergence(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        let d = js_divergence(&[0.6, 0.4], &[0.5, 0.5]);
        assert!(d > 0.0 && d < 0.05);
    }

    #[test]
    fn sensitive_requests_go_to_the_faster_group() {
        // QoE falls steeply around 600 ms total; "fast" answers in ~20 ms, "slow" in ~150 ms.
        let mut inputs = E2eInputs::new(vec!["fast".into(), "slow".into()]);
        for i in 0..3000u64 {
            let ext = [50.0, 500.0, 3000.0][(i % 3) as usize] + (i % 7) as f64;
            inputs.external.push(ext);
            let load = 1.0 + (i % 4) as f64;
            inputs.samples[(i % 2) as usize].push(if i % 2 == 0 {
                (load, 10.0 + 5.0 * load)
            } else {
                (load, 140.0 + 2.0 * load)
            });
        }
        inputs.records = 3000;
        inputs.first_ms = Some(0);
        inputs.last_ms = Some(60_000);
        let opts = E2eOptions {
            buckets: 3,
            delta_ms: 10_000.0,
            units: 30,
            qoe: QoeModelConfig {
                d50_ms: 600.0,
                width_ms: 40.0,
                max: 1.0,
            },
            priorities: true,
        };
        let (table, report) = solve(&inputs, &opts).expect("solves");
        let t = E2eTable::new(table).expect("valid");
        let sensitive = t.bucket(503.0);
        assert!(
            report.buckets[sensitive].route[0] > 0.9,
            "{:?}",
            report.buckets
        );
        assert_eq!(t.priority(sensitive), Some("high"));
        assert!(report.gain > 0.0, "{}", report.gain);
        assert!(report.e2e_qoe >= report.default_qoe);
    }
}
