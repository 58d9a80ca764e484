//! Whether the inputs moved since a table was solved (temporal coarsening): log-spaced delay
//! histograms stored in the table, compared by Jensen-Shannon divergence.

use super::E2eInputs;
use hydrus_filters::e2e::E2eTableFile;
use std::collections::BTreeMap;

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
pub(super) fn histograms(inputs: &E2eInputs) -> serde_json::Value {
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
