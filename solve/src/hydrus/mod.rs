//! The k solver: per scenario and window of the day, the `k_t` that spends the window's budget
//! best, from decision logs; written as a k-table that `hydrus serve` hot-reloads.
//!
//! This module holds the per-window solving and its report; the algorithms ([`algo`], the
//! fleet-scale [`summary`] and its [`summary_file`]), following logs as windows close
//! ([`follow`]), solving in a group of processes (`group`) and the table and report written
//! ([`output`]) have their own modules.

pub mod algo;
pub mod follow;
#[cfg(feature = "kafka")]
pub mod group;
pub mod output;
pub mod summary;
pub mod summary_file;

pub use output::{print_table, table_from_rows, TableRows};

use crate::read::{Collector, Keying, Pool, SourceError};
use crate::write::OutputError;
use algo::{solve_bisection, solve_exact, Instance, Solution};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use summary::{solve_summary, WindowSummary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The exact Lagrange multiplier (hull increments, weighted selection).
    Exact,
    /// The paper's Algorithm 2: bisection on k to within --epsilon.
    Bisection,
}

impl Pool for Instance {
    fn push_record(&mut self, options: &[(f64, f64)], chosen: u32) {
        self.push(options, Some(chosen));
    }

    fn merge_pool(&mut self, other: &Self) {
        for i in 0..other.len() {
            let (c, q) = other.options(i);
            let opts: Vec<(f64, f64)> = c.iter().copied().zip(q.iter().copied()).collect();
            self.push(&opts, other.chosen[i]);
        }
    }
}

impl Pool for WindowSummary {
    fn push_record(&mut self, options: &[(f64, f64)], chosen: u32) {
        self.push(options, chosen as usize);
    }

    fn merge_pool(&mut self, other: &Self) {
        self.merge(other);
    }
}

impl Collector<Instance> {
    /// A collector keeping every record in memory.
    pub fn new(window_secs: u32, keying: Keying) -> Self {
        Self::with_pool(window_secs, keying, Instance::new())
    }
}

/// Why following the logs stopped: a source that cannot be read, or a table not written.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Group(#[from] group::GroupError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    SeveralRoutes(#[from] crate::read::SeveralRoutes),
}

/// How `--follow` runs: the table it maintains, how late a window closes, how often it polls.
pub struct FollowOptions {
    pub out: PathBuf,
    /// How multi-resource windows are summarized (budgets per request).
    pub multi: crate::read::MultiTemplate,
    pub lateness: Duration,
    pub poll: Duration,
    pub json: bool,
    /// The solver's own metrics (served with `--metrics-listen`).
    pub metrics: std::sync::Arc<crate::metrics::SolverMetrics>,
}

/// How a window's budget `I` is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// The paper's observed capacity: the cost of the logged (`chosen`) strategies.
    Logged,
    /// Mean cost per request times the window's records.
    Mean(f64),
    /// The same total for every window.
    Total(f64),
}

impl Budget {
    pub fn for_instance(self, inst: &Instance) -> f64 {
        match self {
            Budget::Logged => inst.logged_budget(),
            Budget::Mean(c) => c * inst.len() as f64,
            Budget::Total(i) => i,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    pub window_secs: u32,
    pub budget: Budget,
    pub method: Method,
    pub epsilon: f64,
    /// Solve only this route's records (`--route`); without it, records of several routes
    /// with a hydrus filter are refused.
    pub route: Option<String>,
}

/// One window's result, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub scenario: String,
    pub window: usize,
    /// Start of the window, `HH:MM` UTC.
    pub start: String,
    pub records: usize,
    pub budget: f64,
    pub k: f64,
    pub cost: f64,
    pub cost_over_budget: f64,
    pub qoe: f64,
    pub lp_bound: f64,
    pub qoe_over_bound: f64,
    /// QoE of what was logged (`chosen`), and the solution's gain over it.
    pub logged_qoe: f64,
    pub gain: f64,
    pub feasible: bool,
    pub iterations: u32,
    /// What the live rule at `k` spends and earns per request of the window (the k-table's
    /// `expected`); a filled window carries its source's.
    pub cost_per_request: f64,
    pub qoe_per_request: f64,
    /// False when the window was solved from a summary whose budget ran out outside the
    /// buckets it kept one by one: `k` is then within one bucket (0.07%) above the exact.
    pub exact: bool,
    /// Set when the window had no records and took this window's `k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled_from: Option<usize>,
    /// With several resources, each one's figures (then `budget`, `k`, `cost`,
    /// `cost_over_budget` and `cost_per_request` above are the first resource's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceReport>,
}

/// One resource's figures in a window's report.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceReport {
    pub resource: String,
    pub budget: f64,
    pub k: f64,
    pub cost: f64,
    pub cost_over_budget: f64,
    pub cost_per_request: f64,
}

impl WindowReport {
    /// `k` per resource (one value with one resource).
    pub fn ks(&self) -> Vec<f64> {
        if self.resources.is_empty() {
            vec![self.k]
        } else {
            self.resources.iter().map(|r| r.k).collect()
        }
    }

    /// The resources' names (empty with one resource).
    pub fn resource_names(&self) -> Vec<String> {
        self.resources.iter().map(|r| r.resource.clone()).collect()
    }
}

/// Records grouped by scenario and window of the day.
pub type Pools = BTreeMap<(String, usize), Instance>;

/// A scenario's expectation per window, as the k-table carries it.
pub use hydrus_filters::hydrus::ktable::Expected;

/// Setting one window of an [`Expected`] from a report.
pub trait SetExpected {
    fn set(&mut self, window: usize, r: &WindowReport, windows: usize);
}

impl SetExpected for Expected {
    /// Window `window` from `r` (lists grown to `windows`; a QoE below 0, which the k-table
    /// does not carry, as null).
    fn set(&mut self, window: usize, r: &WindowReport, windows: usize) {
        use hydrus_filters::hydrus::ktable::Row;
        let ok = |x: f64| (x.is_finite() && x >= 0.0).then_some(x);
        let put = |list: &mut Vec<Option<f64>>, x: f64| {
            list.resize(windows, None);
            if let Some(slot) = list.get_mut(window) {
                *slot = ok(x);
            }
        };
        match (&mut self.cost_per_request, r.resources.is_empty()) {
            (Row::One(list), true) => put(list, r.cost_per_request),
            (Row::Many(lists), false) if lists.len() == r.resources.len() => {
                for x in &r.resources {
                    put(
                        lists.entry(x.resource.clone()).or_default(),
                        x.cost_per_request,
                    );
                }
            }
            // Another form than before (the resources changed): start the lists afresh.
            (cost, _) => {
                *cost = if r.resources.is_empty() {
                    let mut list = Vec::new();
                    put(&mut list, r.cost_per_request);
                    Row::One(list)
                } else {
                    Row::Many(
                        r.resources
                            .iter()
                            .map(|x| {
                                let mut list = Vec::new();
                                put(&mut list, x.cost_per_request);
                                (x.resource.clone(), list)
                            })
                            .collect(),
                    )
                };
            }
        }
        put(&mut self.qoe_per_request, r.qoe_per_request);
    }
}

pub fn hhmm(window: usize, window_secs: u32) -> String {
    let s = window as u64 * u64::from(window_secs);
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// Solve one window.
pub fn solve_window(inst: &Instance, opts: &SolveOptions) -> (f64, Solution) {
    let budget = opts.budget.for_instance(inst);
    let s = match opts.method {
        Method::Exact => solve_exact(inst, budget),
        Method::Bisection => solve_bisection(inst, budget, opts.epsilon),
    };
    (budget, s)
}

pub fn report(scenario: &str, window: usize, inst: &Instance, opts: &SolveOptions) -> WindowReport {
    let (budget, s) = solve_window(inst, opts);
    let lp_bound = if s.lp_bound.is_nan() {
        solve_exact(inst, budget).lp_bound
    } else {
        s.lp_bound
    };
    let base = Found {
        records: inst.len() as u64,
        budget,
        logged_qoe: inst.logged().1,
        lp_bound,
        exact: true,
    };
    base.report(scenario, window, &s, opts)
}

/// What a window's report is made of besides the solution.
struct Found {
    records: u64,
    budget: f64,
    logged_qoe: f64,
    lp_bound: f64,
    exact: bool,
}

impl Found {
    fn report(
        &self,
        scenario: &str,
        window: usize,
        s: &Solution,
        opts: &SolveOptions,
    ) -> WindowReport {
        let (budget, lp_bound, logged_qoe) = (self.budget, self.lp_bound, self.logged_qoe);
        let per_request = |x: f64| {
            if self.records > 0 {
                x / self.records as f64
            } else {
                0.0
            }
        };
        WindowReport {
            scenario: scenario.to_string(),
            window,
            start: hhmm(window, opts.window_secs),
            records: self.records as usize,
            budget,
            k: s.k,
            cost: s.cost,
            cost_over_budget: if budget > 0.0 { s.cost / budget } else { 0.0 },
            qoe: s.qoe,
            lp_bound,
            qoe_over_bound: if lp_bound > 0.0 {
                s.qoe / lp_bound
            } else {
                1.0
            },
            logged_qoe,
            gain: if logged_qoe > 0.0 {
                s.qoe / logged_qoe - 1.0
            } else {
                0.0
            },
            feasible: s.feasible,
            iterations: s.iterations,
            cost_per_request: per_request(s.cost),
            qoe_per_request: per_request(s.qoe),
            exact: self.exact,
            filled_from: None,
            resources: Vec::new(),
        }
    }
}

/// A window's records as solved: in memory ([`Instance`], any method) or summarized
/// ([`WindowSummary`], the exact method).
pub trait WindowData {
    fn has_records(&self) -> bool;
    fn window_report(&self, scenario: &str, window: usize, opts: &SolveOptions) -> WindowReport;
}

impl WindowData for Instance {
    fn has_records(&self) -> bool {
        !self.is_empty()
    }
    fn window_report(&self, scenario: &str, window: usize, opts: &SolveOptions) -> WindowReport {
        report(scenario, window, self, opts)
    }
}

impl WindowData for WindowSummary {
    fn has_records(&self) -> bool {
        !self.is_empty()
    }
    fn window_report(&self, scenario: &str, window: usize, opts: &SolveOptions) -> WindowReport {
        let budget = match opts.budget {
            Budget::Logged => self.logged_cost,
            Budget::Mean(c) => c * self.records as f64,
            Budget::Total(i) => i,
        };
        let found = solve_summary(self, budget);
        let base = Found {
            records: self.records,
            budget,
            logged_qoe: self.logged_qoe,
            lp_bound: found.solution.lp_bound,
            exact: found.exact,
        };
        base.report(scenario, window, &found.solution, opts)
    }
}

/// A multi-resource window's summary with its resources' names, as solved.
pub struct Named<'a> {
    pub summary: &'a crate::multi::MultiSummary,
    pub resources: &'a [String],
}

impl WindowData for Named<'_> {
    fn has_records(&self) -> bool {
        !self.summary.is_empty()
    }

    fn window_report(&self, scenario: &str, window: usize, opts: &SolveOptions) -> WindowReport {
        let s = self.summary.solve();
        let records = self.summary.records();
        let per_request = |x: f64| if records > 0 { x / records as f64 } else { 0.0 };
        let over = |c: f64, b: f64| if b > 0.0 { c / b } else { 0.0 };
        let resources: Vec<ResourceReport> = (self.resources.iter().enumerate())
            .map(|(r, name)| {
                let (k, cost, budget) = (s.k[r], s.cost[r], s.budget[r]);
                ResourceReport {
                    resource: name.clone(),
                    budget,
                    k,
                    cost,
                    cost_over_budget: over(cost, budget),
                    cost_per_request: per_request(cost),
                }
            })
            .collect();
        // The first resource's figures stand in the report's one-resource fields.
        let first = resources.first();
        let one = Solution {
            k: first.map_or(0.0, |x| x.k),
            cost: first.map_or(0.0, |x| x.cost),
            qoe: s.qoe,
            lp_bound: s.lp_bound,
            feasible: s.feasible,
            iterations: s.iterations,
        };
        let found = Found {
            records,
            budget: first.map_or(0.0, |x| x.budget),
            logged_qoe: self.summary.logged_qoe(),
            lp_bound: s.lp_bound,
            exact: s.exact,
        };
        WindowReport {
            resources,
            ..found.report(scenario, window, &one, opts)
        }
    }
}

/// Solve multi-resource summaries ([`solve_pools`] over them).
pub fn solve_multi(
    pools: &BTreeMap<(String, usize), crate::multi::MultiSummary>,
    resources: &[String],
    opts: &SolveOptions,
) -> (TableRows, Vec<WindowReport>) {
    let named: BTreeMap<(String, usize), Named<'_>> = pools
        .iter()
        .map(|(key, summary)| (key.clone(), Named { summary, resources }))
        .collect();
    solve_pools(&named, opts)
}

/// Solve every pool and fill windows without records from the nearest solved one (circularly;
/// the earlier on a tie). Returns the table rows and the reports, solved and filled.
pub fn solve_pools<W: WindowData>(
    pools: &BTreeMap<(String, usize), W>,
    opts: &SolveOptions,
) -> (TableRows, Vec<WindowReport>) {
    let windows = (86_400 / opts.window_secs) as usize;
    let mut solved: BTreeMap<String, Vec<Option<WindowReport>>> = BTreeMap::new();
    for ((scenario, window), inst) in pools {
        if !inst.has_records() || *window >= windows {
            continue;
        }
        let r = inst.window_report(scenario, *window, opts);
        solved
            .entry(scenario.clone())
            .or_insert_with(|| vec![None; windows])[*window] = Some(r);
    }
    let mut rows = TableRows::default();
    let mut reports = Vec::new();
    for (scenario, slots) in solved {
        let first = slots.iter().flatten().next();
        rows.resources = first.map(WindowReport::resource_names).unwrap_or_default();
        let per = rows.resources.len().max(1);
        let mut row = vec![0.0; windows * per];
        let mut expected = Expected::default();
        for (w, slot) in row.chunks_mut(per).enumerate() {
            let source = (0..=windows / 2)
                .flat_map(|d| [(w + windows - d) % windows, (w + d) % windows])
                .find(|&s| slots[s].is_some());
            let Some(src) = source else { continue };
            let Some(r) = &slots[src] else { continue };
            slot.copy_from_slice(&r.ks());
            expected.set(w, r, windows);
            if src == w {
                reports.push(r.clone());
            } else {
                reports.push(WindowReport {
                    window: w,
                    start: hhmm(w, opts.window_secs),
                    records: 0,
                    budget: 0.0,
                    cost: 0.0,
                    cost_over_budget: 0.0,
                    qoe: 0.0,
                    lp_bound: 0.0,
                    qoe_over_bound: 0.0,
                    logged_qoe: 0.0,
                    gain: 0.0,
                    iterations: 0,
                    filled_from: Some(src),
                    ..r.clone()
                });
            }
        }
        rows.k.insert(scenario.clone(), row);
        rows.expected.insert(scenario, expected);
    }
    (rows, reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(records: &[(f64, f64, f64, f64)]) -> Instance {
        let mut i = Instance::new();
        for &(c1, q1, c2, q2) in records {
            i.push(&[(c1, q1), (c2, q2)], Some(1));
        }
        i
    }

    #[test]
    fn fills_empty_windows_from_the_nearest() {
        let opts = SolveOptions {
            window_secs: 21_600, // 4 windows
            budget: Budget::Logged,
            method: Method::Exact,
            epsilon: 1e-9,
            route: None,
        };
        let mut pools = Pools::new();
        pools.insert(
            ("default".into(), 1),
            inst(&[(1.0, 0.1, 2.0, 0.5), (1.0, 0.1, 2.0, 0.2)]),
        );
        let (rows, reports) = solve_pools(&pools, &opts);
        let row = &rows.k["default"];
        assert_eq!(row.len(), 4);
        assert!(row.iter().all(|&k| k == row[1]));
        assert_eq!(
            reports.iter().filter(|r| r.filled_from == Some(1)).count(),
            3
        );
        assert_eq!(
            reports.iter().find(|r| r.window == 1).map(|r| r.records),
            Some(2)
        );
        let mut out = Vec::new();
        print_table(&reports, &mut out).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("3 window(s) without records take the k of the nearest solved window: 00:00, 12:00-18:00"),
            "{text}"
        );
    }

    #[test]
    fn budget_modes() {
        let i = inst(&[(1.0, 0.1, 3.0, 0.5), (1.0, 0.1, 3.0, 0.2)]);
        assert_eq!(Budget::Logged.for_instance(&i), 6.0);
        assert_eq!(Budget::Mean(2.0).for_instance(&i), 4.0);
        assert_eq!(Budget::Total(5.0).for_instance(&i), 5.0);
    }
}
