//! Each replica group's server-side delay as a function of its load (a least-squares line plus
//! the observed residuals), and what it implies: per-group loads for a split (Little's law) and
//! the expected QoE of a bucket's requests on a group.

use hydrus_filters::e2e::QoeModelConfig;
use serde::Serialize;

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

/// Per-group loads for a split, by Little's law: load = 1 + rate * share * delay(load).
pub(super) fn loads(models: &[DelayModel], rate_per_ms: f64, split: &[f64]) -> Vec<f64> {
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
pub(super) fn expected(
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
