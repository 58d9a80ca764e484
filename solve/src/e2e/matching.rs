//! Turning delays and splits into the matching's two sides: equal-population delay buckets
//! (spatial coarsening), request units and group slots in proportion (largest remainders), the
//! candidate splits, and the maximum-weight matching between units and slots.

use hydrus_filters::e2e::MAX_BUCKETS;
use pathfinding::prelude::{kuhn_munkres, Matrix};

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

/// Integer counts proportional to `shares` summing to `total` (largest remainders).
pub(super) fn apportion(shares: &[f64], total: usize) -> Vec<usize> {
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
pub(super) fn splits(g: usize) -> Vec<Vec<f64>> {
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
