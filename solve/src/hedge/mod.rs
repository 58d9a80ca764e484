//! Kwiken's reissue apportioning (SumVar) for `hydrus solve --policy hedge`: from each route's
//! logged latency distribution, choose its reissue timeout so that the extra load fits the
//! budget and the summed (traffic-weighted) variance of latency is smallest.
//!
//! A route's latency with a reissue at timeout `t` is `min(L1, t + L2)` for `L1 > t`, with `L1`,
//! `L2` independent draws of its distribution (Kwiken section 5.1's simulator assumption), and its
//! cost is the share of requests reissued, `P(L > t)`, times the route's share of traffic. Each
//! route's (cost, variance) candidates are reduced to their lower convex hull, and the budget is
//! handed out greedily by variance saved per unit of cost, as SumVar does.

use crate::read::LineSink;
use hydrus_filters::hedge::{HedgeTableFile, RouteHedge};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct HedgeRecord {
    #[serde(default)]
    chosen: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    upstream_ms: Option<f64>,
    #[serde(default)]
    hedge: Option<String>,
}

/// Logged latencies by route (strategy, or cluster without a hydrus filter).
#[derive(Debug, Default)]
pub struct HedgeInputs {
    pub routes: BTreeMap<String, Vec<f64>>,
    pub records: u64,
    pub malformed: u64,
    /// Records already hedged: their latency is not the route's own, so they are left out.
    pub hedged: u64,
}

impl LineSink for HedgeInputs {
    fn line(&mut self, line: &[u8], _place: &dyn Fn() -> String) -> Option<usize> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        let Ok(r) = serde_json::from_slice::<HedgeRecord>(line) else {
            self.malformed += 1;
            return None;
        };
        self.records += 1;
        if r.hedge.is_some() {
            self.hedged += 1;
            return None;
        }
        let route = match (r.chosen, r.cluster) {
            (Some(c), Some(cluster)) if c == "default" => cluster,
            (Some(c), _) => c,
            (None, Some(cluster)) => cluster,
            (None, None) => return None,
        };
        if let Some(ms) = r.upstream_ms.filter(|m| m.is_finite() && *m >= 0.0) {
            self.routes.entry(route).or_default().push(ms);
        }
        None
    }

    fn incomplete(&mut self) {}
}

/// Latencies with weights: the distribution of a route under a reissue policy.
#[derive(Debug, Clone)]
pub struct Weighted(pub Vec<(f64, f64)>);

impl Weighted {
    pub fn mean(&self) -> f64 {
        let w: f64 = self.0.iter().map(|x| x.1).sum();
        self.0.iter().map(|x| x.0 * x.1).sum::<f64>() / w.max(1e-300)
    }

    pub fn var(&self) -> f64 {
        let m = self.mean();
        let w: f64 = self.0.iter().map(|x| x.1).sum();
        self.0
            .iter()
            .map(|x| (x.0 - m) * (x.0 - m) * x.1)
            .sum::<f64>()
            / w.max(1e-300)
    }

    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = v.iter().map(|x| x.1).sum();
        let mut acc = 0.0;
        for (x, w) in &v {
            acc += w;
            if acc >= q * total {
                return *x;
            }
        }
        v.last().map_or(0.0, |x| x.0)
    }
}

/// The latency distribution of `samples` with a reissue at `timeout` (none: never).
pub fn with_reissue(samples: &[f64], timeout: Option<f64>) -> Weighted {
    let Some(t) = timeout else {
        return Weighted(samples.iter().map(|&x| (x, 1.0)).collect());
    };
    let step = (samples.len() / 64).max(1);
    let second: Vec<f64> = samples.iter().step_by(step).copied().collect();
    let w = 1.0 / second.len().max(1) as f64;
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &l1 in samples {
        if l1 <= t {
            out.push((l1, 1.0));
        } else {
            out.extend(second.iter().map(|&l2| (l1.min(t + l2), w)));
        }
    }
    Weighted(out)
}

/// One candidate policy of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub timeout_ms: Option<f64>,
    /// Extra requests as a share of all requests (route share times reissue rate).
    pub cost: f64,
    /// Route share times the variance with this policy.
    pub weighted_var: f64,
    pub reissue_rate: f64,
}

/// Quantiles tried as reissue timeouts.
const QUANTILES: [f64; 14] = [
    0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999,
];

/// A route's candidates on the lower convex hull of (cost, weighted variance), cheapest first,
/// starting at "never reissue".
pub fn candidates(samples: &[f64], share: f64) -> Vec<Candidate> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let mut pts: Vec<Candidate> = vec![Candidate {
        timeout_ms: None,
        cost: 0.0,
        weighted_var: share * with_reissue(&sorted, None).var(),
        reissue_rate: 0.0,
    }];
    for q in QUANTILES {
        if sorted.is_empty() {
            break;
        }
        let t = sorted[((q * (n - 1.0)) as usize).min(sorted.len() - 1)];
        let rate = sorted.iter().filter(|&&x| x > t).count() as f64 / n;
        if rate == 0.0 {
            continue;
        }
        pts.push(Candidate {
            timeout_ms: Some(t),
            cost: share * rate,
            weighted_var: share * with_reissue(&sorted, Some(t)).var(),
            reissue_rate: rate,
        });
    }
    lower_hull(pts)
}

/// The lower convex hull, cheapest first, variance strictly falling.
pub fn lower_hull(mut pts: Vec<Candidate>) -> Vec<Candidate> {
    pts.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(a.weighted_var.total_cmp(&b.weighted_var))
    });
    let mut hull: Vec<Candidate> = Vec::new();
    for p in pts {
        if hull
            .last()
            .is_some_and(|l| p.weighted_var >= l.weighted_var)
        {
            continue; // costs more, saves nothing
        }
        while hull.len() >= 2 {
            let (a, b) = (&hull[hull.len() - 2], &hull[hull.len() - 1]);
            // b is above the segment a-p: not on the lower hull.
            let cross = (b.cost - a.cost) * (p.weighted_var - a.weighted_var)
                - (b.weighted_var - a.weighted_var) * (p.cost - a.cost);
            if cross <= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// SumVar: per route an index into its candidates, within `budget` of extra load.
pub fn sumvar(routes: &[Vec<Candidate>], budget: f64) -> Vec<usize> {
    let mut at = vec![0usize; routes.len()];
    let mut spent = 0.0;
    let mut blocked = vec![false; routes.len()];
    loop {
        let mut best: Option<(usize, f64)> = None;
        for (r, c) in routes.iter().enumerate() {
            if blocked[r] || at[r] + 1 >= c.len() {
                continue;
            }
            let (cur, next) = (&c[at[r]], &c[at[r] + 1]);
            let dc = next.cost - cur.cost;
            if spent + dc > budget + 1e-12 {
                blocked[r] = true;
                continue;
            }
            let gain = (cur.weighted_var - next.weighted_var) / dc.max(1e-15);
            if best.is_none_or(|b| gain > b.1) {
                best = Some((r, gain));
            }
        }
        let Some((r, _)) = best else {
            return at;
        };
        spent += routes[r][at[r] + 1].cost - routes[r][at[r]].cost;
        at[r] += 1;
    }
}

/// A route's policy: its hull point `at`, or, for a share `q` of requests, the next point
/// `next`: mixing two neighbouring points spends any budget exactly (a single timeout could
/// only spend it in steps, and a budget smaller than the first step bought nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub at: usize,
    pub next: Option<(usize, f64)>,
}

impl Pick {
    /// (cost, weighted variance) of the mix, as the LP along the hull segment sees it.
    pub fn objective(&self, c: &[Candidate]) -> (f64, f64) {
        let lo = &c[self.at];
        match self.next {
            Some((j, q)) => (
                (1.0 - q) * lo.cost + q * c[j].cost,
                (1.0 - q) * lo.weighted_var + q * c[j].weighted_var,
            ),
            None => (lo.cost, lo.weighted_var),
        }
    }
}

/// SumVar with its last step taken in part: the whole steps as [`sumvar`] hands them out, then
/// what is left of the budget buys the share of the best next step that fits.
pub fn sumvar_mixed(routes: &[Vec<Candidate>], budget: f64) -> Vec<Pick> {
    let at = sumvar(routes, budget);
    let spent: f64 = at.iter().zip(routes).map(|(&i, c)| c[i].cost).sum();
    let left = budget - spent;
    let mut picks: Vec<Pick> = at.iter().map(|&at| Pick { at, next: None }).collect();
    if left <= 1e-12 {
        return picks;
    }
    let best = routes
        .iter()
        .enumerate()
        .filter(|(r, c)| at[*r] + 1 < c.len())
        .map(|(r, c)| {
            let (cur, next) = (&c[at[r]], &c[at[r] + 1]);
            let dc = (next.cost - cur.cost).max(1e-15);
            (r, dc, (cur.weighted_var - next.weighted_var) / dc)
        })
        .max_by(|a, b| a.2.total_cmp(&b.2));
    if let Some((r, dc, gain)) = best {
        if gain > 0.0 {
            picks[r].next = Some((at[r] + 1, (left / dc).min(1.0)));
        }
    }
    picks
}

/// The latency distribution of a route under a picked policy.
fn picked_distribution(samples: &[f64], c: &[Candidate], p: &Pick) -> Weighted {
    let lo = with_reissue(samples, c[p.at].timeout_ms);
    let Some((j, q)) = p.next else {
        return lo;
    };
    let hi = with_reissue(samples, c[j].timeout_ms);
    let (lw, hw) = (
        (1.0 - q) / lo.0.iter().map(|x| x.1).sum::<f64>().max(1e-300),
        q / hi.0.iter().map(|x| x.1).sum::<f64>().max(1e-300),
    );
    Weighted(
        lo.0.iter()
            .map(|x| (x.0, x.1 * lw))
            .chain(hi.0.iter().map(|x| (x.0, x.1 * hw)))
            .collect(),
    )
}

/// The table entry of a picked policy.
fn route_entry(c: &[Candidate], p: &Pick) -> (RouteHedge, f64) {
    let lo = &c[p.at];
    match p.next {
        Some((j, q)) if q > 0.0 => {
            let rate = (1.0 - q) * lo.reissue_rate + q * c[j].reissue_rate;
            (
                RouteHedge {
                    timeout_ms: c[j].timeout_ms,
                    reissue_rate: Some(rate),
                    probability: Some(q),
                    alt_timeout_ms: lo.timeout_ms,
                },
                rate,
            )
        }
        _ => (
            RouteHedge {
                timeout_ms: lo.timeout_ms,
                reissue_rate: lo.timeout_ms.map(|_| lo.reissue_rate),
                probability: None,
                alt_timeout_ms: None,
            },
            lo.reissue_rate,
        ),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub share: f64,
    pub samples: usize,
    pub timeout_ms: Option<f64>,
    /// The share of requests that get `timeout_ms` (the others `alt_timeout_ms`).
    pub probability: f64,
    pub alt_timeout_ms: Option<f64>,
    pub reissue_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_with_reissue_ms: f64,
    pub var: f64,
    pub var_with_reissue: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HedgeReport {
    pub budget: f64,
    pub extra_load: f64,
    pub p99_ms: f64,
    pub p99_with_reissue_ms: f64,
    pub p99_reduction: f64,
    pub routes: Vec<RouteReport>,
}

/// Why no hedge table could be solved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HedgeError {
    /// The logs hold no latency to solve from.
    #[error("no record with an upstream time")]
    NoUpstreamTime,
}

/// Solve the hedge table for `budget` (extra requests as a share of all requests).
pub fn solve(
    inputs: &HedgeInputs,
    budget: f64,
) -> Result<(HedgeTableFile, HedgeReport), HedgeError> {
    let total: usize = inputs.routes.values().map(Vec::len).sum();
    if total == 0 {
        return Err(HedgeError::NoUpstreamTime);
    }
    let names: Vec<&String> = inputs.routes.keys().collect();
    let shares: Vec<f64> = inputs
        .routes
        .values()
        .map(|v| v.len() as f64 / total as f64)
        .collect();
    let cands: Vec<Vec<Candidate>> = inputs
        .routes
        .values()
        .zip(&shares)
        .map(|(s, &sh)| candidates(s, sh))
        .collect();
    let pick = sumvar_mixed(&cands, budget);
    let mut routes = BTreeMap::new();
    let mut reports = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut extra = 0.0;
    for (i, name) in names.iter().enumerate() {
        let p = &pick[i];
        let samples = &inputs.routes[*name];
        let base = with_reissue(samples, None);
        let hedged = picked_distribution(samples, &cands[i], p);
        let (entry, rate) = route_entry(&cands[i], p);
        // Mix routes by share: weight each route's points so its total is its share.
        let bw = shares[i] / base.0.iter().map(|x| x.1).sum::<f64>().max(1e-300);
        let hw = shares[i] / hedged.0.iter().map(|x| x.1).sum::<f64>().max(1e-300);
        before.extend(base.0.iter().map(|x| (x.0, x.1 * bw)));
        after.extend(hedged.0.iter().map(|x| (x.0, x.1 * hw)));
        extra += p.objective(&cands[i]).0;
        reports.push(RouteReport {
            route: name.to_string(),
            share: shares[i],
            samples: samples.len(),
            timeout_ms: entry.timeout_ms,
            probability: entry.probability.unwrap_or(1.0),
            alt_timeout_ms: entry.alt_timeout_ms,
            reissue_rate: rate,
            p50_ms: base.quantile(0.5),
            p99_ms: base.quantile(0.99),
            p99_with_reissue_ms: hedged.quantile(0.99),
            var: base.var(),
            var_with_reissue: hedged.var(),
        });
        routes.insert(name.to_string(), entry);
    }
    let (p99, p99h) = (
        Weighted(before).quantile(0.99),
        Weighted(after).quantile(0.99),
    );
    Ok((
        HedgeTableFile {
            budget,
            generated_at_ms: Some(hydrus_filters::clock::unix_ms()),
            routes,
        },
        HedgeReport {
            budget,
            extra_load: extra,
            p99_ms: p99,
            p99_with_reissue_ms: p99h,
            p99_reduction: if p99 > 0.0 { 1.0 - p99h / p99 } else { 0.0 },
            routes: reports,
        },
    ))
}

#[cfg(test)]
mod tests;
