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

mod drift;
mod matching;
mod model;
#[cfg(test)]
mod tests;

pub use drift::{inputs_moved, js_divergence};
pub use matching::{bucketize, max_weight_matching};
pub use model::DelayModel;

use crate::read::LineSink;
use hydrus_filters::e2e::QoeModelConfig;
use hydrus_filters::e2e::{BucketFile, E2eTable, E2eTableError, E2eTableFile};
use matching::{apportion, splits};
use model::{expected, loads};
use serde::{Deserialize, Serialize};

/// Why no decision table could be solved from the logs.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("no record has an external delay (is the e2e filter's header set?)")]
    NoExternalDelay,
    #[error("no record was routed to a group with its upstream time and load")]
    NoDelaySample,
    #[error("no candidate split")]
    NoCandidateSplit,
    /// The solved table would not load in the proxy (a bug if ever seen).
    #[error("controller produced an invalid table: {0}")]
    InvalidTable(#[source] E2eTableError),
}

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

/// The delay buckets: bounds between them, each one's share of the requests, and a thinned
/// sample of its delays for the expectations.
struct Buckets {
    bounds: Vec<f64>,
    shares: Vec<f64>,
    reps: Vec<Vec<f64>>,
}

impl Buckets {
    fn of(external: &[f64], opts: &E2eOptions) -> Self {
        let mut sorted = external.to_vec();
        sorted.sort_by(f64::total_cmp);
        let bounds = bucketize(&sorted, opts.buckets, opts.delta_ms);
        let mut members: Vec<Vec<f64>> = vec![Vec::new(); bounds.len() + 1];
        for &c in &sorted {
            members[bounds.partition_point(|&b| b < c)].push(c);
        }
        let shares = members
            .iter()
            .map(|m| m.len() as f64 / sorted.len() as f64)
            .collect();
        // Each bucket's delays, thinned for the expectation.
        let reps = members
            .iter()
            .map(|m| {
                let step = (m.len() / 16).max(1);
                m.iter().step_by(step).copied().collect()
            })
            .collect();
        Self {
            bounds,
            shares,
            reps,
        }
    }

    fn len(&self) -> usize {
        self.shares.len()
    }
}

/// Each group's delay model as fitted (`None` without samples), and as used: a group never
/// tried gets the others' model (no evidence it is any different).
fn delay_models(
    inputs: &E2eInputs,
) -> Result<(Vec<Option<DelayModel>>, Vec<DelayModel>), E2eError> {
    let models: Vec<Option<DelayModel>> =
        inputs.samples.iter().map(|s| DelayModel::fit(s)).collect();
    let Some(fallback_model) = models.iter().flatten().next().cloned() else {
        return Err(E2eError::NoDelaySample);
    };
    let usable = models
        .iter()
        .map(|m| m.clone().unwrap_or_else(|| fallback_model.clone()))
        .collect();
    Ok((models, usable))
}

/// The best split found: its mean QoE, the split, per-bucket unit counts per group, and each
/// bucket's expected QoE on each group at that split's loads.
struct BestSplit {
    qoe: f64,
    split: Vec<f64>,
    counts: Vec<Vec<usize>>,
    weights: Vec<Vec<f64>>,
}

/// Try each candidate split over `groups` groups: match request units (buckets in proportion
/// to their population) to slots (groups in proportion to the split); keep the best.
fn best_split(
    buckets: &Buckets,
    models: &[DelayModel],
    groups: usize,
    rate_per_ms: f64,
    opts: &E2eOptions,
) -> Option<BestSplit> {
    let nb = buckets.len();
    let units = opts.units.max(nb).max(2);
    let unit_bucket: Vec<usize> = apportion(&buckets.shares, units)
        .iter()
        .enumerate()
        .flat_map(|(b, &n)| std::iter::repeat_n(b, n))
        .collect();
    let mut best: Option<BestSplit> = None;
    for split in splits(groups) {
        let w = expected(
            &opts.qoe,
            &buckets.reps,
            models,
            &loads(models, rate_per_ms, &split),
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
        let mut counts = vec![vec![0usize; groups]; nb];
        for (u, &s) in assign.iter().enumerate() {
            counts[unit_bucket[u]][slot_group[s]] += 1;
        }
        if best.as_ref().is_none_or(|b| total > b.qoe + 1e-12) {
            best = Some(BestSplit {
                qoe: total,
                split,
                counts,
                weights: w,
            });
        }
    }
    best
}

/// The table's buckets and their report lines: routes from the best split's matching (a
/// bucket without units is balanced), priorities when asked for.
fn table_buckets(
    buckets: &Buckets,
    best: &BestSplit,
    balanced: &[f64],
    priorities: bool,
) -> (Vec<BucketFile>, Vec<BucketReport>) {
    // Priorities: buckets that gain most from their best group over their worst are `high`.
    let spread: Vec<f64> = best
        .weights
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
    let bounds = &buckets.bounds;
    let mut files = Vec::with_capacity(buckets.len());
    let mut reports = Vec::with_capacity(buckets.len());
    for (b, counts) in best.counts.iter().enumerate() {
        let n: usize = counts.iter().sum();
        let route: Vec<f64> = if n == 0 {
            balanced.to_vec()
        } else {
            counts.iter().map(|&c| c as f64 / n as f64).collect()
        };
        let priority =
            priorities.then(|| if spread[b] > median { "high" } else { "low" }.to_string());
        let max_ms = bounds.get(b).copied();
        reports.push(BucketReport {
            bucket: b,
            from_ms: if b == 0 { 0.0 } else { bounds[b - 1] },
            to_ms: max_ms,
            share: buckets.shares[b],
            route: route.clone(),
            priority: priority.clone(),
        });
        files.push(BucketFile {
            max_ms,
            route,
            priority,
        });
    }
    (files, reports)
}

/// Solve the decision table. Fails when the logs hold no external delays or no group has
/// delay samples.
pub fn solve(inputs: &E2eInputs, opts: &E2eOptions) -> Result<(E2eTableFile, E2eReport), E2eError> {
    let g = inputs.groups.len();
    if inputs.external.is_empty() {
        return Err(E2eError::NoExternalDelay);
    }
    let (models, usable) = delay_models(inputs)?;
    let span_ms = inputs
        .last_ms
        .zip(inputs.first_ms)
        .map_or(1, |(l, f)| l.saturating_sub(f).max(1));
    let rate_per_ms = inputs.records as f64 / span_ms as f64;
    let buckets = Buckets::of(&inputs.external, opts);

    let balanced = vec![1.0 / g as f64; g];
    let default_w = expected(
        &opts.qoe,
        &buckets.reps,
        &usable,
        &loads(&usable, rate_per_ms, &balanced),
    );
    let default_qoe: f64 = (0..buckets.len())
        .map(|b| buckets.shares[b] * default_w[b].iter().sum::<f64>() / g as f64)
        .sum();
    let best =
        best_split(&buckets, &usable, g, rate_per_ms, opts).ok_or(E2eError::NoCandidateSplit)?;
    let (table_buckets, report_buckets) =
        table_buckets(&buckets, &best, &balanced, opts.priorities);
    let file = E2eTableFile {
        groups: inputs.groups.clone(),
        generated_at_ms: Some(hydrus_filters::clock::unix_ms()),
        buckets: table_buckets,
        inputs: Some(drift::histograms(inputs)),
    };
    // The table must load in the proxy.
    E2eTable::new(file.clone()).map_err(E2eError::InvalidTable)?;
    let e2e_qoe = best.qoe;
    Ok((
        file,
        E2eReport {
            records: inputs.records,
            requests_with_external_delay: inputs.external.len(),
            groups: inputs.groups.clone(),
            models,
            arrival_per_s: rate_per_ms * 1000.0,
            split: best.split,
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
