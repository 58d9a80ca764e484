//! Reading decision logs: JSON lines from a file, a directory of `*.jsonl` (gzip too), or a
//! stream. Malformed lines are counted and skipped, the first few named by file and line; a last
//! line without its newline is a record still being written, counted as incomplete.

pub mod fastjson;
pub mod follow;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod parallel;

use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Why logs could not be read; each names the file (or stream) at fault and keeps the I/O error.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// `--logs PATH` could not be listed (missing, or an unreadable directory).
    #[error("{}: {source}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading lines failed part-way; `name` is the file or stream as named in examples.
    #[error("{name}: {source}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a followed source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// A growing log file could not be reopened at the offset read so far.
    #[error("{}: {source}", path.display())]
    Reopen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

/// The fields of a log record the solver uses; the rest are skipped unparsed.
#[derive(Deserialize)]
pub(crate) struct LightValue<'a> {
    #[serde(borrow)]
    pub(crate) strategy: Cow<'a, str>,
    /// A number, or (several resources) an object by resource.
    pub(crate) cost: hydrus_filters::resource::PerResource,
    pub(crate) qoe: f64,
}

/// An option's cost as read: one number, or one per resource by name (serde's map, or the
/// fast scanner's entries of `line`, names in increasing order).
#[derive(Clone, Copy)]
pub(crate) enum CostIn<'a> {
    One(f64),
    Many(&'a BTreeMap<String, f64>),
    Scanned(&'a [u8], &'a [fastjson::ResourceCost]),
}

impl<'a> CostIn<'a> {
    /// Each resource's name and cost, in name order (`None` for a plain number).
    fn entries(self) -> Option<impl Iterator<Item = (&'a [u8], f64)>> {
        let (map, scanned) = match self {
            CostIn::One(_) => return None,
            CostIn::Many(m) => (Some(m), None),
            CostIn::Scanned(line, e) => (None, Some((line, e))),
        };
        let map = map.into_iter().flatten().map(|(k, v)| (k.as_bytes(), *v));
        let scanned = scanned
            .into_iter()
            .flat_map(|(line, e)| e.iter().map(move |&((a, b), v)| (&line[a..b], v)));
        Some(map.chain(scanned))
    }
}

#[derive(Deserialize)]
pub(crate) struct LightRecord<'a> {
    pub(crate) ts_ms: u64,
    #[serde(borrow, default)]
    pub(crate) scenario: Option<Cow<'a, str>>,
    /// Present when the proxy did not recognise the scenario header: never a row.
    #[serde(default)]
    pub(crate) scenario_raw: Option<serde::de::IgnoredAny>,
    /// The proxy's strategy set.
    #[serde(borrow, default)]
    pub(crate) strategy_set: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) chosen: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) value_info: Vec<LightValue<'a>>,
    /// The route the request took (records written before routes name none).
    #[serde(borrow, default)]
    pub(crate) route: Option<Cow<'a, str>>,
}

/// What reading found.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadStats {
    pub files: usize,
    pub lines: u64,
    pub records: u64,
    pub malformed: u64,
    /// `file:line: why` of the first few malformed lines.
    pub malformed_examples: Vec<String>,
    pub incomplete: u64,
    /// Records of a hydrus decision without usable values (no QoE header, so no value_info;
    /// a value that is not a finite number; the chosen strategy not among them).
    pub unusable: u64,
    /// Records with no hydrus decision at all: neither a strategy set nor values (a route
    /// without a hydrus filter, e.g. an `e2e` or passthrough route logging to the same place).
    /// Skipped; they never decide which strategy set is the newest.
    #[serde(default)]
    pub no_decision: u64,
    /// Usable records of another route than `--route` names (skipped).
    #[serde(default)]
    pub other_route: u64,
    /// Usable records by route (`""`: records written before routes, which belong to any).
    /// A k-table belongs to one route: records of several, without `--route`, are refused.
    #[serde(default)]
    pub routes: BTreeMap<String, u64>,
    /// Records whose scenario the proxy did not recognise (`scenario_raw`), or beyond the
    /// first [`MAX_SCENARIOS`] distinct scenarios: skipped, never made a row.
    #[serde(default)]
    pub undeclared_scenario: u64,
    /// Usable records of another strategy set than the newest usable records' (skipped: a
    /// k-table is solved for one set).
    #[serde(default)]
    pub other_strategy_set: u64,
}

/// Most distinct scenarios the solver keeps: a k-table row each, as many as a proxy loads.
/// Logs written before scenarios were declared may name any value a client sent.
pub use hydrus_filters::hydrus::ktable::MAX_SCENARIOS;

const EXAMPLES: usize = 5;

/// How records are grouped: by window of the day (batch: days pooled), or by absolute window
/// (follow: each occurrence on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    OfDay,
    Absolute,
}

/// What a [`Collector`] gathers a window's records into (the k solver's: the records
/// themselves, or their summary).
pub trait Pool: Clone {
    /// One usable record: its options `(cost, qoe)` and the index of the logged one.
    fn push_record(&mut self, options: &[(f64, f64)], chosen: u32);
    /// Another collector's records of the same window.
    fn merge_pool(&mut self, other: &Self);
}

/// Turns lines into per-(scenario, window) pools (a policy's: the k solver keeps records or
/// summaries of them).
#[derive(Clone)]
pub struct Collector<P: Pool> {
    pub window_secs: u32,
    pub keying: Keying,
    pub pools: BTreeMap<(String, usize), P>,
    /// A new window's empty pool.
    template: P,
    pub stats: ReadStats,
    scratch: Vec<(f64, f64)>,
    scenarios: std::collections::BTreeSet<String>,
    /// The strategy set being solved: the newest records'. Records of an older one are
    /// skipped; a newer one replaces what was collected.
    pub strategy_set: Option<String>,
    set_newest_ts: Option<u64>,
    /// Usable records collected for the current set.
    collected: u64,
    /// Usable records collected, then dropped for a newer strategy set (`stats` counts them
    /// as another set's too): the solver's metrics count each record once.
    pub replaced: u64,
    /// Only records of this route are solved (`--route`); `None`: every route's.
    route: Option<String>,
    /// Reused per line: the fast scanner's `value_info`, and a pool's key.
    values: Vec<fastjson::Value>,
    costs: Vec<fastjson::ResourceCost>,
    key: (String, usize),
    /// With several resources (costs as objects): the resources of the set being solved, in
    /// name order, and per (scenario, window) its summary ([`crate::multi`]).
    pub resources: Vec<String>,
    pub multi: BTreeMap<(String, usize), crate::multi::MultiSummary>,
    /// A new window's empty multi-resource summary, given its resource count.
    multi_template: MultiTemplate,
    /// Reused per record: costs `j * K + r` and QoE per option, the record's resources.
    multi_costs: Vec<f64>,
    multi_qoe: Vec<f64>,
    record_resources: Vec<String>,
}

/// How a collector makes a multi-resource window's summary.
#[derive(Clone, Debug)]
pub struct MultiTemplate {
    pub cap: usize,
    /// Budget per request by resource name; a resource not named: what was logged.
    pub budget_per_request: BTreeMap<String, f64>,
}

impl Default for MultiTemplate {
    fn default() -> Self {
        Self {
            cap: crate::multi::DEFAULT_CAP,
            budget_per_request: BTreeMap::new(),
        }
    }
}

impl MultiTemplate {
    fn budget(&self, resources: &[String]) -> crate::multi::MultiBudget {
        let budget = resources
            .iter()
            .map(|r| self.budget_per_request.get(r).copied())
            .collect();
        crate::multi::MultiBudget(budget)
    }

    fn summary(&self, resources: &[String]) -> crate::multi::MultiSummary {
        crate::multi::MultiSummary::new(resources.len(), self.cap, self.budget(resources))
    }

    /// A summary file's window, as this template makes summaries.
    pub fn from_parts(
        &self,
        parts: crate::multi::MultiParts,
        resources: &[String],
    ) -> Result<crate::multi::MultiSummary, crate::multi::PartsError> {
        crate::multi::MultiSummary::from_parts(parts, self.cap, self.budget(resources))
    }
}

impl<P: Pool> Collector<P> {
    /// Whether a record of strategy set `set` (written at `ts_ms`) belongs to the set being
    /// solved; a newer set than everything collected replaces it.
    fn same_set(&mut self, set: Option<&str>, ts_ms: u64) -> bool {
        if set == self.strategy_set.as_deref() {
            return true;
        }
        match self.set_newest_ts {
            Some(newest) if ts_ms <= newest => false,
            _ => {
                self.stats.other_strategy_set += self.collected;
                self.replaced += self.collected;
                self.collected = 0;
                self.pools.clear();
                self.multi.clear();
                self.resources.clear();
                self.scenarios.clear();
                self.strategy_set = set.map(str::to_string);
                self.set_newest_ts = None;
                true
            }
        }
    }

    /// Solve only the records of `route` (`--route`); the others are counted as another
    /// route's.
    pub fn for_route(mut self, route: Option<String>) -> Self {
        self.route = route;
        self
    }

    /// A collector starting each window from `template` (an empty pool).
    pub fn with_pool(window_secs: u32, keying: Keying, template: P) -> Self {
        Self {
            window_secs,
            keying,
            pools: BTreeMap::new(),
            template,
            stats: ReadStats::default(),
            scratch: Vec::with_capacity(16),
            scenarios: std::collections::BTreeSet::new(),
            strategy_set: None,
            set_newest_ts: None,
            collected: 0,
            replaced: 0,
            route: None,
            values: Vec::new(),
            costs: Vec::new(),
            key: (String::new(), 0),
            resources: Vec::new(),
            multi: BTreeMap::new(),
            multi_template: MultiTemplate::default(),
            multi_costs: Vec::new(),
            multi_qoe: Vec::new(),
            record_resources: Vec::new(),
        }
    }

    /// Make multi-resource windows' summaries like this (cap, budgets per request).
    pub fn with_multi(mut self, template: MultiTemplate) -> Self {
        self.multi_template = template;
        self
    }

    fn malformed(&mut self, place: &dyn Fn() -> String, why: &str) {
        self.stats.malformed += 1;
        if self.stats.malformed_examples.len() < EXAMPLES {
            self.stats
                .malformed_examples
                .push(format!("{}: {why}", place()));
        }
    }

    /// One line (without its newline). `place` names it in error examples. Returns the
    /// record's window key when it was usable.
    pub fn add_line(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize> {
        self.stats.lines += 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        let mut values = std::mem::take(&mut self.values);
        let mut costs = std::mem::take(&mut self.costs);
        let added = match fastjson::parse(line, &mut values, &mut costs) {
            Some(f) => {
                let range = |(a, b): (usize, usize)| &line[a..b];
                let view = RecordView {
                    ts_ms: f.ts_ms,
                    scenario: f.scenario.map(range),
                    scenario_raw: f.scenario_raw,
                    strategy_set: f.strategy_set.map(range),
                    chosen: range(f.chosen),
                    route: f.route.map(range),
                };
                let cost = |c: f64, (from, to): (u32, u32)| {
                    if from == to {
                        CostIn::One(c)
                    } else {
                        CostIn::Scanned(line, &costs[from as usize..to as usize])
                    }
                };
                self.add_record(
                    &view,
                    values.iter().map(|&(s, c, q, r)| (range(s), cost(c, r), q)),
                )
            }
            None => self.add_with_serde(line, place),
        };
        self.values = values;
        self.costs = costs;
        added
    }

    /// A line the fast scanner left to serde: read it, or count it as malformed.
    fn add_with_serde(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize> {
        let rec: LightRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                self.malformed(place, &e.to_string());
                return None;
            }
        };
        let view = RecordView {
            ts_ms: rec.ts_ms,
            scenario: rec.scenario.as_deref().map(str::as_bytes),
            scenario_raw: rec.scenario_raw.is_some(),
            strategy_set: rec.strategy_set.as_deref().map(str::as_bytes),
            chosen: rec.chosen.as_bytes(),
            route: rec.route.as_deref().map(str::as_bytes),
        };
        use hydrus_filters::resource::PerResource;
        let values = rec.value_info.iter().map(|v| {
            let cost = match &v.cost {
                PerResource::One(c) => CostIn::One(*c),
                PerResource::Many(m) => CostIn::Many(m),
            };
            (v.strategy.as_bytes(), cost, v.qoe)
        });
        self.add_record(&view, values)
    }

    /// One parsed record; returns its window key when it was usable. A record is judged in
    /// this order: an undeclared scenario; no decision at all; unusable values; another route
    /// than `--route`; only then is its strategy set compared with the newest usable one's, so
    /// that nothing the solver cannot use decides which set is solved.
    fn add_record<'v>(
        &mut self,
        rec: &RecordView,
        values: impl Iterator<Item = (&'v [u8], CostIn<'v>, f64)>,
    ) -> Option<usize> {
        self.stats.records += 1;
        if rec.scenario_raw {
            self.stats.undeclared_scenario += 1;
            return None;
        }
        self.scratch.clear();
        self.multi_costs.clear();
        let mut chosen = None;
        let mut finite = true;
        // Costs by resource: all options alike (the same resources), or none of them.
        let mut many: Option<bool> = None;
        for (j, (strategy, cost, qoe)) in values.enumerate() {
            finite &= qoe.is_finite();
            if strategy == rec.chosen {
                chosen = Some(j as u32);
            }
            match cost {
                CostIn::One(c) => {
                    finite &= c.is_finite() && c >= 0.0 && many != Some(true);
                    many = Some(false);
                    self.scratch.push((c, qoe));
                }
                CostIn::Many(_) | CostIn::Scanned(..) => {
                    finite &= many != Some(false);
                    many = Some(true);
                    let names = || cost.entries().into_iter().flatten().map(|e| e.0);
                    let same = names().eq(self.record_resources.iter().map(String::as_bytes));
                    if j == 0 && !same {
                        // (A new list: the first record of a set, or hand-written logs.)
                        self.record_resources.clear();
                        self.record_resources
                            .extend(names().map(|n| String::from_utf8_lossy(n).into_owned()));
                    } else {
                        finite &= same;
                    }
                    let mut sum = 0.0;
                    for (_, c) in cost.entries().into_iter().flatten() {
                        finite &= c.is_finite() && c >= 0.0;
                        self.multi_costs.push(c);
                        sum += c;
                    }
                    self.scratch.push((sum, qoe));
                }
            }
        }
        // One named resource is one resource.
        let several = many == Some(true) && self.record_resources.len() > 1;
        finite &=
            !several || self.record_resources.len() <= hydrus_filters::resource::MAX_RESOURCES;
        if rec.strategy_set.is_none() && self.scratch.is_empty() {
            self.stats.no_decision += 1;
            return None;
        }
        let Some(chosen) = chosen.filter(|_| finite && !self.scratch.is_empty()) else {
            self.stats.unusable += 1;
            return None;
        };
        // (A record that names no route predates routes, when a proxy ran one chain: it is
        // any route's.)
        if let (Some(want), Some(route)) = (&self.route, rec.route) {
            if want.as_bytes() != route {
                self.stats.other_route += 1;
                return None;
            }
        }
        self.count_route(rec.route.unwrap_or_default());
        let set = rec.strategy_set.map(String::from_utf8_lossy);
        if !self.same_set(set.as_deref(), rec.ts_ms) {
            self.stats.other_strategy_set += 1;
            return None;
        }
        let window = match self.keying {
            Keying::OfDay => hydrus_filters::hydrus::ktable::window_of(rec.ts_ms, self.window_secs),
            Keying::Absolute => (rec.ts_ms / 1000 / u64::from(self.window_secs)) as usize,
        };
        let scenario = rec.scenario.map_or(
            Cow::Borrowed(hydrus_filters::hydrus::ktable::DEFAULT_SCENARIO),
            String::from_utf8_lossy,
        );
        if !self.scenarios.contains(scenario.as_ref()) {
            if self.scenarios.len() >= MAX_SCENARIOS {
                self.stats.undeclared_scenario += 1;
                return None;
            }
            self.scenarios.insert(scenario.to_string());
        }
        self.collected += 1;
        self.set_newest_ts = Some(self.set_newest_ts.map_or(rec.ts_ms, |t| t.max(rec.ts_ms)));
        // The key in a buffer kept across records: no allocation per record.
        self.key.0.clear();
        self.key.0.push_str(&scenario);
        self.key.1 = window;
        if several {
            if self.resources.is_empty() && self.multi.is_empty() && self.pools.is_empty() {
                self.resources = self.record_resources.clone();
            }
            if self.resources != self.record_resources {
                // Another resource list in one strategy set: hand-written logs.
                self.stats.unusable += 1;
                self.collected -= 1;
                return None;
            }
            self.multi_qoe.clear();
            self.multi_qoe.extend(self.scratch.iter().map(|o| o.1));
            if !self.multi.contains_key(&self.key) {
                let fresh = self.multi_template.summary(&self.resources);
                self.multi.insert(self.key.clone(), fresh);
            }
            if let Some(pool) = self.multi.get_mut(&self.key) {
                pool.push(&self.multi_costs, &self.multi_qoe, chosen as usize);
            }
            return Some(window);
        }
        if !self.resources.is_empty() {
            self.stats.unusable += 1;
            self.collected -= 1;
            return None;
        }
        if !self.pools.contains_key(&self.key) {
            self.pools.insert(self.key.clone(), self.template.clone());
        }
        if let Some(pool) = self.pools.get_mut(&self.key) {
            pool.push_record(&self.scratch, chosen);
        }
        Some(window)
    }
}

/// The fields of a record the solver uses, however it was parsed.
struct RecordView<'a> {
    ts_ms: u64,
    scenario: Option<&'a [u8]>,
    scenario_raw: bool,
    strategy_set: Option<&'a [u8]>,
    chosen: &'a [u8],
    route: Option<&'a [u8]>,
}

/// Most distinct routes counted in [`ReadStats::routes`] (a config has at most 64).
const MAX_ROUTES: usize = 64;

/// Add `n` records of `route` (no allocation once the route is known).
fn add_route(routes: &mut BTreeMap<String, u64>, route: &str, n: u64) {
    if let Some(count) = routes.get_mut(route) {
        *count += n;
    } else if routes.len() < MAX_ROUTES {
        routes.insert(route.to_string(), n);
    }
}

impl<P: Pool> Collector<P> {
    /// Count a usable record of `route`.
    fn count_route(&mut self, route: &[u8]) {
        add_route(&mut self.stats.routes, &String::from_utf8_lossy(route), 1);
    }
}

/// Records of several routes with a hydrus filter were read without `--route`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("records of several routes with a hydrus filter: {}; each route has its own strategies and k-table: solve one route at a time with --route NAME", .0.join(", "))]
pub struct SeveralRoutes(pub Vec<String>);

impl ReadStats {
    /// The counts the solver's metrics export, with the collector's `replaced` and the follow
    /// loop's `late` records.
    pub fn counts(&self, replaced: u64, late: u64) -> crate::metrics::ReadCounts {
        crate::metrics::ReadCounts {
            lines: self.lines,
            records: self.records,
            malformed: self.malformed,
            no_decision: self.no_decision,
            unusable: self.unusable,
            undeclared_scenario: self.undeclared_scenario,
            other_route: self.other_route,
            other_strategy_set: self.other_strategy_set,
            replaced,
            late,
        }
    }

    /// Add another reader's counts (not its routes or examples).
    pub fn add_counts(&mut self, o: &ReadStats) {
        self.files += o.files;
        self.lines += o.lines;
        self.records += o.records;
        self.malformed += o.malformed;
        self.incomplete += o.incomplete;
        self.unusable += o.unusable;
        self.undeclared_scenario += o.undeclared_scenario;
        self.other_strategy_set += o.other_strategy_set;
        self.no_decision += o.no_decision;
        self.other_route += o.other_route;
    }

    /// Refuse records of several routes: a k-table is solved for one route's strategies.
    pub fn one_route(&self) -> Result<(), SeveralRoutes> {
        match self.several_routes() {
            Some(routes) => Err(SeveralRoutes(routes)),
            None => Ok(()),
        }
    }

    /// The routes whose usable records were read, when there are several (records written
    /// before routes belong to any).
    pub fn several_routes(&self) -> Option<Vec<String>> {
        let named: Vec<String> = self
            .routes
            .iter()
            .filter(|(r, _)| !r.is_empty())
            .map(|(r, n)| format!("{r} ({n} records)"))
            .collect();
        (named.len() > 1).then_some(named)
    }
}

impl<P: Pool> Collector<P> {
    /// When the newest record of the strategy set being solved was written.
    pub fn newest_ts_ms(&self) -> Option<u64> {
        self.set_newest_ts
    }

    /// Pools read elsewhere (a summary file), as if this collector had read their records.
    pub(crate) fn restore(
        &mut self,
        stats: ReadStats,
        strategy_set: Option<String>,
        newest_ts_ms: Option<u64>,
        pools: BTreeMap<(String, usize), P>,
        records: u64,
    ) {
        self.stats = stats;
        self.strategy_set = strategy_set;
        self.set_newest_ts = newest_ts_ms;
        self.collected = records;
        self.scenarios = pools.keys().map(|(s, _)| s.clone()).collect();
        self.pools = pools;
    }

    /// Add what another collector (of other files or chunks) read. Of two strategy sets, the
    /// newer one's records are kept and the other's counted as another set's.
    pub fn merge(&mut self, other: Collector<P>) {
        self.stats.add_counts(&other.stats);
        let s = &mut self.stats;
        let o = &other.stats;
        for (route, n) in &o.routes {
            add_route(&mut s.routes, route, *n);
        }
        for e in &o.malformed_examples {
            if s.malformed_examples.len() < EXAMPLES {
                s.malformed_examples.push(e.clone());
            }
        }
        self.replaced += other.replaced;
        if other.collected == 0 {
            return;
        }
        if self.collected > 0 && other.strategy_set != self.strategy_set {
            if other.set_newest_ts <= self.set_newest_ts {
                self.stats.other_strategy_set += other.collected;
                self.replaced += other.collected;
                return;
            }
            self.stats.other_strategy_set += self.collected;
            self.replaced += self.collected;
            self.pools.clear();
            self.multi.clear();
            self.resources.clear();
            self.scenarios.clear();
            self.collected = 0;
        }
        let mut lost = 0;
        if self.resources.is_empty() {
            self.resources = other.resources;
        } else if !other.resources.is_empty() && other.resources != self.resources {
            // Another resource list in one strategy set (hand-made logs): not solvable together.
            lost = other.multi.values().map(|m| m.records()).sum();
            self.stats.unusable += lost;
        }
        for (key, pool) in other.multi.into_iter().filter(|_| lost == 0) {
            match self.multi.get_mut(&key) {
                Some(mine) => mine.merge(&pool),
                None => {
                    self.multi.insert(key, pool);
                }
            }
        }
        self.strategy_set = other.strategy_set;
        self.set_newest_ts = self.set_newest_ts.max(other.set_newest_ts);
        self.collected += other.collected.saturating_sub(lost);
        self.scenarios.extend(other.scenarios);
        for (key, pool) in other.pools {
            match self.pools.get_mut(&key) {
                Some(mine) => mine.merge_pool(&pool),
                None => {
                    self.pools.insert(key, pool);
                }
            }
        }
    }
}

/// Something that takes log lines: the k solver's [`Collector`], the E2E controller's.
pub trait LineSink {
    /// One line (without its newline); `place` names it. Returns the record's window key
    /// when it was usable and windowed.
    fn line(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize>;
    /// A last line without its newline was seen (still being written).
    fn incomplete(&mut self);
}

impl<P: Pool> LineSink for Collector<P> {
    fn line(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize> {
        self.add_line(line, place)
    }

    fn incomplete(&mut self) {
        self.stats.incomplete += 1;
    }
}

/// Read lines from `r` to its end into `sink`. Returns the bytes and lines consumed up to the
/// last complete line (a trailing partial line is left for later and reported as incomplete).
pub fn read_lines(
    r: &mut dyn BufRead,
    name: &str,
    first_line: u64,
    progress: Option<&ProgressBar>,
    sink: &mut dyn LineSink,
) -> Result<(u64, u64), InputError> {
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = first_line;
    let mut consumed = 0u64;
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|source| InputError::Read {
                name: name.to_string(),
                source,
            })?;
        if n == 0 {
            return Ok((consumed, line_no - first_line));
        }
        if buf.last() != Some(&b'\n') {
            sink.incomplete();
            return Ok((consumed, line_no - first_line));
        }
        line_no += 1;
        consumed += n as u64;
        let ln = line_no;
        sink.line(&buf[..n - 1], &|| format!("{name}:{ln}"));
        if let Some(p) = progress {
            p.inc(n as u64);
        }
    }
}

fn is_log_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".json.gz")
}

/// The files `--logs PATH` names: the file itself, or a directory's `*.jsonl[.gz]`, sorted.
pub fn list_inputs(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let unlistable = |source| InputError::List {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unlistable)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(unlistable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_log_file(p))
        .collect();
    files.sort();
    Ok(files)
}

pub fn open(path: &Path) -> Result<Box<dyn BufRead>, InputError> {
    let f = std::fs::File::open(path).map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let r: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(256 << 10, r)))
}

/// A progress bar on stderr for inputs over 64 MiB (hidden when stderr is not a terminal).
pub fn progress(total_bytes: u64) -> Option<ProgressBar> {
    if total_bytes < 64 << 20 {
        return None;
    }
    let p = ProgressBar::new(total_bytes);
    p.set_style(
        ProgressStyle::with_template(
            "{spinner} reading logs {bytes}/{total_bytes} [{bar:30}] {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(p)
}

/// The size of `files` together (for the progress bar; one that cannot be read counts 0).
pub fn total_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Read every file of `--logs PATH` into `c`; returns how many files.
pub fn read_path(path: &Path, c: &mut dyn LineSink) -> Result<usize, InputError> {
    let files = list_inputs(path)?;
    let bar = progress(total_bytes(&files));
    for f in &files {
        let mut r = open(f)?;
        read_lines(&mut *r, &f.display().to_string(), 0, bar.as_ref(), c)?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(files.len())
}

/// What reading found, one line (and one more per malformed example), for stderr.
pub fn stats_line(s: &ReadStats) -> String {
    let mut line = format!(
        "read {} records ({} lines, {} files); {} malformed, {} incomplete",
        s.records, s.lines, s.files, s.malformed, s.incomplete
    );
    let skipped = [
        (
            s.no_decision,
            "with no hydrus decision (routes without a hydrus filter)",
        ),
        (
            s.unusable,
            "unusable (a decision without a QoE header, or with values that are not numbers)",
        ),
        (s.undeclared_scenario, "with an undeclared scenario"),
        (s.other_route, "of another route than --route"),
        (
            s.other_strategy_set,
            "of an older strategy set (the table is solved for the newest)",
        ),
    ];
    for (n, why) in skipped {
        if n > 0 {
            line.push_str(&format!("; skipped {n} {why}"));
        }
    }
    for e in &s.malformed_examples {
        line.push_str(&format!("\n  malformed: {e}"));
    }
    line
}

/// A pool that keeps each record's options and chosen index, for tests of reading.
#[cfg(test)]
pub(crate) mod test_pool {
    /// The records of a window.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Records(pub Vec<(Vec<(f64, f64)>, u32)>);

    impl super::Pool for Records {
        fn push_record(&mut self, options: &[(f64, f64)], chosen: u32) {
            self.0.push((options.to_vec(), chosen));
        }

        fn merge_pool(&mut self, other: &Self) {
            self.0.extend(other.0.iter().cloned());
        }
    }

    impl Records {
        pub fn len(&self) -> usize {
            self.0.len()
        }

        /// The chosen options' cost and QoE, summed.
        pub fn logged(&self) -> (f64, f64) {
            self.0.iter().fold((0.0, 0.0), |(c, q), (o, j)| {
                let (oc, oq) = o[*j as usize];
                (c + oc, q + oq)
            })
        }
    }

    /// A collector of records.
    pub fn collector(window_secs: u32, keying: super::Keying) -> super::Collector<Records> {
        super::Collector::with_pool(window_secs, keying, Records::default())
    }
}

#[cfg(test)]
mod tests {
    use super::test_pool::{collector, Records};
    use super::*;
    use std::io::Write;

    const GOOD: &str = r#"{"ts_ms":1000,"request_id":"r","user_id":"u","device_id":"","scenario":"default","group":"hydrus","chosen":"b","k":0.1,"value_info":[{"strategy":"a","cost":1.0,"qoe":0.1},{"strategy":"b","cost":2.0,"qoe":0.3}],"status":200,"upstream_ms":1.0}"#;

    #[test]
    fn counts_malformed_incomplete_and_unusable() {
        let text = format!(
            "{GOOD}\nnot json\n{}\n{GOOD}\n{{\"ts_ms\":1,\"chosen\":\"x\",\"value_info\":[],\"strategy_set\":\"ab\"}}\n{GOOD}",
            r#"{"ts_ms": "#
        );
        let mut c = collector(900, Keying::OfDay);
        let (consumed, lines) =
            read_lines(&mut text.as_bytes(), "f.jsonl", 0, None, &mut c).expect("reads");
        assert_eq!(lines, 5);
        assert_eq!(c.stats.records, 3);
        assert_eq!(c.stats.malformed, 2);
        assert_eq!(c.stats.unusable, 1);
        assert_eq!(c.stats.incomplete, 1);
        assert!(
            c.stats.malformed_examples[0].starts_with("f.jsonl:2: "),
            "{:?}",
            c.stats.malformed_examples
        );
        assert!(c.stats.malformed_examples[1].starts_with("f.jsonl:3: "));
        assert_eq!(consumed as usize, text.rfind('\n').expect("nl") + 1);
        let inst = &c.pools[&("default".to_string(), 0)];
        assert_eq!(inst.len(), 2);
        assert_eq!(inst.logged(), (4.0, 0.6));
    }

    /// A rank route's record (strategy set `set`) at `ts_ms`.
    fn rank(ts_ms: u64, route: &str, set: &str) -> String {
        format!(
            r#"{{"ts_ms":{ts_ms},"scenario":"default","group":"hydrus","chosen":"b","value_info":[{{"strategy":"a","cost":1.0,"qoe":0.1}},{{"strategy":"b","cost":2.0,"qoe":0.3}}],"strategy_set":"{set}","route":"{route}"}}"#
        )
    }

    /// A record of a route without a hydrus filter (an e2e route's, as the proxy writes it).
    fn e2e(ts_ms: u64) -> String {
        format!(
            r#"{{"ts_ms":{ts_ms},"request_id":"r","user_id":"u","device_id":"","scenario":"default","group":"hydrus","chosen":"default","k":null,"value_info":[],"status":200,"upstream_ms":1.0,"route":"search","e2e_bucket":2}}"#
        )
    }

    fn collect(lines: &[String], route: Option<&str>) -> Collector<Records> {
        let text = lines.join("\n") + "\n";
        let mut c = collector(900, Keying::OfDay).for_route(route.map(str::to_string));
        read_lines(&mut text.as_bytes(), "f.jsonl", 0, None, &mut c).expect("reads");
        c
    }

    #[test]
    fn records_without_a_decision_never_displace_the_strategy_set() {
        // 100 rank records with a newer e2e record after every tenth: all 100 are solved.
        let mut lines = Vec::new();
        for i in 0..100u64 {
            lines.push(rank(1000 + i * 10, "rank", "s1"));
            if i % 10 == 9 {
                lines.push(e2e(1005 + i * 10));
            }
        }
        let c = collect(&lines, None);
        assert_eq!(c.stats.records, 110);
        assert_eq!(c.stats.no_decision, 10);
        assert_eq!((c.stats.other_strategy_set, c.stats.unusable), (0, 0));
        assert_eq!(c.pools[&("default".to_string(), 0)].len(), 100);
        assert_eq!(c.strategy_set.as_deref(), Some("s1"));
        assert_eq!(c.stats.several_routes(), None);
    }

    #[test]
    fn unusable_records_of_a_newer_set_never_displace_the_usable_ones() {
        let mut lines: Vec<String> = (0..20).map(|i| rank(1000 + i, "rank", "s1")).collect();
        // A newer set's decisions without a QoE header: no values to solve from.
        lines.push(
            r#"{"ts_ms":5000,"chosen":"b","value_info":[],"strategy_set":"s2","route":"rank"}"#
                .into(),
        );
        lines.push(rank(1100, "rank", "s1"));
        let c = collect(&lines, None);
        assert_eq!((c.stats.unusable, c.stats.other_strategy_set), (1, 0));
        assert_eq!(c.pools[&("default".to_string(), 0)].len(), 21);
        assert_eq!(c.strategy_set.as_deref(), Some("s1"));
        // A newer set's usable records still replace an older set's.
        lines.push(rank(6000, "rank", "s2"));
        let c = collect(&lines, None);
        assert_eq!(c.stats.other_strategy_set, 21);
        assert_eq!(c.replaced, 21, "all 21 were used before the newer set came");
        assert_eq!(c.strategy_set.as_deref(), Some("s2"));
    }

    #[test]
    fn records_of_two_hydrus_routes_are_solved_one_route_at_a_time() {
        let mut lines: Vec<String> = (0..30).map(|i| rank(1000 + i, "rank", "s1")).collect();
        lines.extend((0..12).map(|i| rank(1000 + i, "rank-b", "s9")));
        // A record written before routes belongs to any route.
        lines.push(r#"{"ts_ms":900,"chosen":"b","value_info":[{"strategy":"a","cost":1.0,"qoe":0.1},{"strategy":"b","cost":2.0,"qoe":0.3}],"strategy_set":"s1"}"#.into());
        let all = collect(&lines, None);
        assert_eq!(
            all.stats.several_routes(),
            Some(vec![
                "rank (30 records)".to_string(),
                "rank-b (12 records)".to_string()
            ])
        );
        let rank_only = collect(&lines, Some("rank"));
        assert_eq!(rank_only.stats.several_routes(), None);
        assert_eq!(rank_only.stats.other_route, 12);
        assert_eq!(rank_only.stats.other_strategy_set, 0);
        assert_eq!(rank_only.pools[&("default".to_string(), 0)].len(), 31);
        // Merged from chunks, the routes add up the same.
        let (a, b) = lines.split_at(20);
        let mut merged = collect(a, None);
        merged.merge(collect(b, None));
        assert_eq!(merged.stats.routes, all.stats.routes);
    }

    #[test]
    fn reads_gzip_and_directories() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.jsonl"), format!("{GOOD}\n")).expect("write");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(dir.path().join("b.jsonl.gz")).expect("create"),
            flate2::Compression::fast(),
        );
        gz.write_all(format!("{GOOD}\n{GOOD}\n").as_bytes())
            .expect("gz");
        gz.finish().expect("finish");
        std::fs::write(dir.path().join("ignored.txt"), "x").expect("write");
        let mut c = collector(900, Keying::OfDay);
        let files = read_path(dir.path(), &mut c).expect("reads");
        assert_eq!((files, c.stats.records), (2, 3));
    }
}
