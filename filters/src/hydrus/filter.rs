//! The hydrus filter: for each request, the strategy (or the default, and why), its cluster,
//! headers and query parameters; what control would have got (shadow mode); the spend and
//! predicted QoE counters; the k-table it reads.

use super::ktable::{KTable, DEFAULT_SCENARIO};
use super::rule::{Fallback, HydrusRule, RequestInputs};
use super::spend::{SpendControl, SpendLoop, SpendMetrics};
use super::SCENARIO_OTHER;
use crate::filter::Group;
use crate::filter::{
    fallback_index, register, Candidates, Filter, Input, RecordParts, RequestState, Strategies,
    Upstream, QOE, SCENARIO,
};
use crate::table::{ReloadableTable, Table, TableError, TableSlot, TableSource};
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use prometheus::{
    Counter, CounterVec, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

/// `x-hydrus-strategy`: the strategy applied, on the upstream request.
pub const HEADER_STRATEGY: HeaderName = HeaderName::from_static("x-hydrus-strategy");

/// What applying a strategy does to the upstream request.
#[derive(Debug, Clone)]
pub struct StrategyAction {
    pub cluster: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Vec<(String, String)>,
    /// `query` as gRPC metadata, pair by pair (see [`Upstream::set_query_or_metadata`]).
    pub query_metadata: Vec<Option<(HeaderName, HeaderValue)>>,
    /// The strategy's name as a header value, for `x-hydrus-strategy`.
    pub name_value: HeaderValue,
}

impl Table for KTable {
    const WHAT: &'static str = "k-table";

    fn parse_table(text: &str) -> Result<Self, TableError> {
        KTable::parse(text).map_err(|e| TableError::Parse(e.to_string()))
    }

    fn generated_at(&self) -> Option<u64> {
        self.generated_at_ms()
    }

    fn describe(&self) -> String {
        format!("{} scenarios", self.scenario_names().len())
    }
}

/// The hydrus kind's metric families.
pub struct HydrusMetrics {
    k: GaugeVec,
    expected: [GaugeVec; 2],
    ktable_age: prometheus::GaugeVec,
    ktable_loaded: IntGaugeVec,
    ktable_reloads: IntCounterVec,
    cost: CounterVec,
    cost_requests: IntCounterVec,
    qoe: CounterVec,
    qoe_requests: IntCounterVec,
    shadow: IntCounterVec,
    spend: SpendMetrics,
}

#[allow(clippy::expect_used)] // constant, valid metric definitions: checked by tests
impl HydrusMetrics {
    pub fn new(r: &Registry) -> Self {
        let opts = Opts::new;
        let spend = ["route", "group", "scenario", "decision"];
        let m = Self {
            k: GaugeVec::new(opts("hydrus_k", "k_t in use for the current window, by route, scenario and resource (`default` when costs are plain numbers)."), &["route", "scenario", "resource"]).expect("metric"),
            expected: [
                GaugeVec::new(opts("hydrus_ktable_expected_cost_per_request", "The cost per request the k-table's solver expected for the current window, by route, scenario and resource (the planned spend)."), &["route", "scenario", "resource"]).expect("metric"),
                GaugeVec::new(opts("hydrus_ktable_expected_qoe_per_request", "The QoE per request the k-table's solver expected for the current window, by route and scenario."), &["route", "scenario"]).expect("metric"),
            ],
            ktable_age: prometheus::GaugeVec::new(opts("hydrus_ktable_age_seconds", "Age of the running k-table."), &["route"]).expect("metric"),
            ktable_loaded: IntGaugeVec::new(opts("hydrus_ktable_loaded", "1 when a k-table is loaded."), &["route"]).expect("metric"),
            ktable_reloads: IntCounterVec::new(opts("hydrus_ktable_reloads_total", "k-table loads by result."), &["result"]).expect("metric"),
            cost: CounterVec::new(opts("hydrus_cost_total", "Sum of the cost of the strategy applied (`decision=applied`), and for control requests of the one treatment would have chosen (`decision=shadow`); with several resources, the cost summed over them (per resource: hydrus_spend_cost_per_second)."), &spend).expect("metric"),
            qoe: CounterVec::new(opts("hydrus_predicted_qoe_total", "Sum of the QoE predicted for the strategy applied (or, `decision=shadow`, the one treatment would have chosen), over requests with a QoE header."), &spend).expect("metric"),
            qoe_requests: IntCounterVec::new(opts("hydrus_predicted_qoe_requests_total", "Requests counted in hydrus_predicted_qoe_total."), &spend).expect("metric"),
            cost_requests: IntCounterVec::new(opts("hydrus_cost_requests_total", "Requests counted in hydrus_cost_total: those a hydrus filter decided (the denominator of cost per request; routes without a hydrus filter are not in it)."), &spend).expect("metric"),
            shadow: IntCounterVec::new(opts("hydrus_shadow_requests_total", "Control requests by the strategy treatment would have chosen (shadow mode)."), &["route", "strategy"]).expect("metric"),
            spend: SpendMetrics::new(r),
        };
        for result in ["ok", "error"] {
            m.ktable_reloads.with_label_values(&[result]);
        }
        let [ec, eq] = m.expected;
        Self {
            k: register(r, m.k),
            expected: [register(r, ec), register(r, eq)],
            ktable_age: register(r, m.ktable_age),
            ktable_loaded: register(r, m.ktable_loaded),
            ktable_reloads: register(r, m.ktable_reloads),
            cost: register(r, m.cost),
            qoe: register(r, m.qoe),
            qoe_requests: register(r, m.qoe_requests),
            cost_requests: register(r, m.cost_requests),
            shadow: register(r, m.shadow),
            spend: m.spend,
        }
    }
}

/// One request's spend: its strategy's cost, and the QoE predicted for it when known.
#[derive(Debug, Clone, Copy)]
struct Spend {
    cost: f64,
    qoe: Option<f64>,
}

struct SpendCounters {
    cost: Counter,
    /// Requests counted in `cost`.
    requests: IntCounter,
    qoe: Counter,
    qoe_requests: IntCounter,
}

impl SpendCounters {
    fn add(&self, s: Spend) {
        self.cost.inc_by(s.cost);
        self.requests.inc();
        if let Some(q) = s.qoe {
            self.qoe.inc_by(q);
            self.qoe_requests.inc();
        }
    }
}

/// Handles resolved for one (config, k-table) generation: the request path never hashes
/// label values.
pub struct HydrusHandles {
    /// Scenario labels by slot: the declared scenarios, `default` and `other`.
    pub labels: Vec<String>,
    default_slot: usize,
    other_slot: usize,
    /// `[group][slot][applied, shadow]`, flattened.
    spend: Vec<SpendCounters>,
    shadow: Vec<IntCounter>,
    fallbacks: Vec<IntCounter>,
    /// The spend loops by k-table row and resource (`row * K + r`; none where the scenario
    /// is not controlled), for the k-table they were built for (its address: a request that
    /// sees another table uses none).
    loops: Vec<Option<Arc<SpendLoop>>>,
    loops_table: usize,
    /// Loops per row: the strategies' resources.
    loop_resources: usize,
    /// The controlled scenarios' names with each resource (their gauge series).
    loop_names: Vec<(String, String)>,
}

impl HydrusHandles {
    /// The spend loop of a k-table row and resource, when that table is the one these handles
    /// were built for.
    fn spend_loop(&self, table: usize, row: usize, r: usize) -> Option<&SpendLoop> {
        if table != self.loops_table || r >= self.loop_resources {
            return None;
        }
        self.loops.get(row * self.loop_resources + r)?.as_deref()
    }

    /// The label slot of a scenario header's value (none: `default`); an undeclared one is
    /// `other`, so labels stay bounded whatever clients send.
    pub fn scenario_slot(&self, scenario: Option<&[u8]>, declared: bool) -> usize {
        match scenario {
            None => self.default_slot,
            Some(_) if !declared => self.other_slot,
            Some(name) => self
                .labels
                .iter()
                .position(|l| l.as_bytes() == name)
                .unwrap_or(self.other_slot),
        }
    }
}

/// The scenario labels for a declared list (or a k-table's rows), with `default` and `other`.
pub fn scenario_labels(declared: &[String]) -> Vec<String> {
    let mut labels: Vec<String> = declared.to_vec();
    for extra in [DEFAULT_SCENARIO, SCENARIO_OTHER] {
        if !labels.iter().any(|l| l == extra) {
            labels.push(extra.to_string());
        }
    }
    labels
}

/// The hydrus filter of one route.
pub struct HydrusFilter {
    pub rule: HydrusRule,
    pub actions: Vec<StrategyAction>,
    pub ktable: Arc<TableSlot<KTable>>,
    owned_headers: Vec<HeaderName>,
    owned_query: Vec<String>,
    route: String,
    metrics: HydrusMetricsRef,
    fallback_family: IntCounterVec,
    handles: ArcSwap<HydrusHandles>,
    /// The spend controller (`spend_control`), when on.
    spend: Option<SpendControl>,
    /// `resources.NAME.budget_per_request` as configured (what `hydrus solve --config` uses).
    pub resource_budgets: std::collections::BTreeMap<String, f64>,
    /// The scenarios whose `hydrus_k` (and expectation) series are exported: removed when
    /// their row goes, so a large table replaced by a small one leaves nothing behind.
    k_series: Mutex<Vec<(String, String)>>,
}

/// The families a filter keeps (cloned handles to the registered families).
struct HydrusMetricsRef {
    k: GaugeVec,
    expected: [GaugeVec; 2],
    /// Resolved when the config runs (at each scrape), not when it compiles: a config that is
    /// refused must not export a route's `hydrus_ktable_loaded 0`.
    ktable_age: prometheus::GaugeVec,
    ktable_loaded: IntGaugeVec,
    cost: CounterVec,
    cost_requests: IntCounterVec,
    qoe: CounterVec,
    qoe_requests: IntCounterVec,
    shadow: IntCounterVec,
    spend: SpendMetrics,
}

mod spend;

/// A k-table's address, to tell generations apart.
fn table_id(k: Option<&Arc<crate::table::Loaded<KTable>>>) -> usize {
    k.map_or(0, |k| Arc::as_ptr(k) as usize)
}

impl HydrusFilter {
    pub fn new(
        rule: HydrusRule,
        actions: Vec<StrategyAction>,
        ktable: TableSource,
        m: &HydrusMetrics,
        fallbacks: &IntCounterVec,
        route: &str,
    ) -> Self {
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        let mut owned_query: Vec<String> = Vec::new();
        for a in &actions {
            for (name, _) in &a.headers {
                if !owned_headers.contains(name) {
                    owned_headers.push(name.clone());
                }
            }
            for (k, _) in &a.query {
                if !owned_query.contains(k) {
                    owned_query.push(k.clone());
                }
            }
        }
        let reloads = [
            m.ktable_reloads.with_label_values(&["ok"]),
            m.ktable_reloads.with_label_values(&["error"]),
        ];
        let refs = HydrusMetricsRef {
            k: m.k.clone(),
            expected: m.expected.clone(),
            ktable_age: m.ktable_age.clone(),
            ktable_loaded: m.ktable_loaded.clone(),
            cost: m.cost.clone(),
            cost_requests: m.cost_requests.clone(),
            qoe: m.qoe.clone(),
            qoe_requests: m.qoe_requests.clone(),
            shadow: m.shadow.clone(),
            spend: m.spend.clone(),
        };
        let filter = Self {
            rule,
            actions,
            ktable: Arc::new(TableSlot::new(ktable, reloads)),
            owned_headers,
            owned_query,
            route: route.to_string(),
            handles: ArcSwap::from_pointee(HydrusHandles {
                labels: Vec::new(),
                default_slot: 0,
                other_slot: 0,
                spend: Vec::new(),
                shadow: Vec::new(),
                fallbacks: Vec::new(),
                loops: Vec::new(),
                loops_table: 0,
                loop_resources: 1,
                loop_names: Vec::new(),
            }),
            metrics: refs,
            fallback_family: fallbacks.clone(),
            spend: None,
            resource_budgets: std::collections::BTreeMap::new(),
            k_series: Mutex::new(Vec::new()),
        };
        filter.rebuild_handles();
        filter
    }

    /// The spend controller's settings, when it runs.
    pub fn spend_control(&self) -> Option<&SpendControl> {
        self.spend.as_ref()
    }

    /// Run the spend controller (`spend_control`).
    pub fn with_spend_control(mut self, spend: Option<SpendControl>) -> Self {
        self.spend = spend;
        self.rebuild_handles();
        self
    }

    /// The strategy names, in config order.
    pub fn strategy_names(&self) -> Vec<String> {
        self.rule
            .strategies
            .strategies()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The declared scenarios: the config's list, else the k-table's rows.
    pub fn declared_scenarios(&self) -> Vec<String> {
        match &self.rule.scenarios {
            Some(list) => list.clone(),
            None => self
                .ktable
                .get()
                .map(|k| k.table.scenario_names().to_vec())
                .unwrap_or_default(),
        }
    }

    pub fn handles(&self) -> Arc<HydrusHandles> {
        self.handles.load_full()
    }

    fn rebuild_handles(&self) {
        let labels = scenario_labels(&self.declared_scenarios());
        let m = &self.metrics;
        let ktable = self.ktable.get();
        // A new k-table (or config) starts every loop afresh, at m = 1. One loop per
        // resource of a controlled row.
        let resources = self.rule.strategies.resources();
        let per_row = resources.len();
        let loops: Vec<Option<Arc<SpendLoop>>> = match (&self.spend, &ktable) {
            (Some(sc), Some(k)) => k
                .table
                .scenario_names()
                .iter()
                .flat_map(|n| {
                    // (Only a row requests can name runs a loop.)
                    let caps = sc
                        .scenario(n)
                        .filter(|_| self.rule.declared(n.as_bytes(), Some(&k.table)));
                    (0..per_row).map(move |r| {
                        let cap = caps.as_ref()?.get(r).cloned().flatten();
                        Some(Arc::new(SpendLoop::with_cap(sc.settings, cap)))
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        self.retire_spend_gauges();
        let groups = Group::ALL;
        let route = self.route.as_str();
        // Series of scenarios no longer declared (a table's rows without a list) go with them.
        for gone in self
            .handles
            .load()
            .labels
            .iter()
            .filter(|l| !labels.contains(l))
        {
            for g in groups {
                for d in ["applied", "shadow"] {
                    let v = [route, g.as_str(), gone.as_str(), d];
                    let _ = m.cost.remove_label_values(&v);
                    let _ = m.cost_requests.remove_label_values(&v);
                    let _ = m.qoe.remove_label_values(&v);
                    let _ = m.qoe_requests.remove_label_values(&v);
                }
            }
        }
        let spend = groups
            .iter()
            .flat_map(|g| labels.iter().map(move |l| (g, l)))
            .flat_map(|(g, l)| {
                ["applied", "shadow"].map(|d| {
                    let v = [route, g.as_str(), l.as_str(), d];
                    SpendCounters {
                        cost: m.cost.with_label_values(&v),
                        requests: m.cost_requests.with_label_values(&v),
                        qoe: m.qoe.with_label_values(&v),
                        qoe_requests: m.qoe_requests.with_label_values(&v),
                    }
                })
            })
            .collect();
        let position = |x: &str| labels.iter().position(|l| l == x).unwrap_or(0);
        self.handles.store(Arc::new(HydrusHandles {
            default_slot: position(DEFAULT_SCENARIO),
            other_slot: position(SCENARIO_OTHER),
            spend,
            shadow: self
                .strategy_names()
                .iter()
                .map(|s| m.shadow.with_label_values(&[route, s.as_str()]))
                .collect(),
            fallbacks: groups
                .iter()
                .flat_map(|g| Fallback::ALL_REASONS.iter().map(move |r| (g, r)))
                .map(|(g, r)| {
                    self.fallback_family
                        .with_label_values(&[route, g.as_str(), r])
                })
                .collect(),
            labels,
            loop_names: match &ktable {
                Some(k) => (k.table.scenario_names().iter())
                    .flat_map(|n| resources.iter().map(move |r| (n, r)))
                    .zip(&loops)
                    .filter(|(_, l)| l.is_some())
                    .map(|((n, r), _)| (n.clone(), r.clone()))
                    .collect(),
                None => Vec::new(),
            },
            loops,
            loop_resources: per_row,
            loops_table: table_id(ktable.as_ref()),
        }));
    }

    /// Remove the `hydrus_k` and expectation series of the scenarios exported before but not
    /// in `now`, and remember `now`.
    fn retire_k_series(&self, now: &[(String, String)]) {
        let mut series = self.k_series.lock().unwrap_or_else(PoisonError::into_inner);
        for (scenario, resource) in series.iter().filter(|s| !now.contains(s)) {
            let v = [self.route.as_str(), scenario.as_str(), resource.as_str()];
            let _ = self.metrics.k.remove_label_values(&v);
            let _ = self.metrics.expected[0].remove_label_values(&v);
            let _ = self.metrics.expected[1].remove_label_values(&v[..2]);
        }
        now.clone_into(&mut series);
    }

    fn spend_of(&self, j: usize, d: &super::Decision) -> Spend {
        Spend {
            cost: if j < self.rule.strategies.len() {
                self.rule.strategies.cost(j)
            } else {
                0.0
            },
            qoe: d.qoe.as_ref().and_then(|q| q.get(j)),
        }
    }
}

impl Filter for HydrusFilter {
    fn kind(&self) -> &'static str {
        "hydrus"
    }

    fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        state.now_ms = input.now_ms;
        let ktable = self.ktable.get();
        let inputs = RequestInputs {
            qoe: input.id(QOE),
            scenario: input.id(SCENARIO),
            now_ms: input.now_ms,
        };
        let stale = ktable
            .as_ref()
            .is_some_and(|k| k.stale(self.ktable.source.max_age, input.now_ms));
        let h = self.handles.load();
        let id = table_id(ktable.as_ref());
        let d = self.rule.decide_with(
            state.group,
            &inputs,
            ktable.as_ref().map(|k| &k.table),
            stale,
            |row, r| h.spend_loop(id, row, r).map_or(1.0, SpendLoop::m),
        );
        if let Some(f) = d.fallback {
            // (On a control request: what treatment would have fallen back on.)
            let reasons = Fallback::ALL_REASONS;
            if let Some(i) = reasons.iter().position(|r| *r == f.reason()) {
                let at = fallback_index(state.group, i, reasons.len());
                if let Some(c) = h.fallbacks.get(at) {
                    c.inc();
                }
            }
            state.fell_back(f.reason());
        }
        if let Some(a) = self.actions.get(d.strategy) {
            state.cluster = a.cluster;
        }
        state.strategy = Some(d.strategy);
        state.scenario_slot = Some(h.scenario_slot(input.id(SCENARIO), d.scenario_declared));
        state.scenario_declared = d.scenario_declared;
        state.put(d);
    }

    fn edit_upstream(&self, state: &RequestState, up: &mut dyn Upstream) {
        let Some(a) = state
            .get::<super::Decision>()
            .and_then(|d| self.actions.get(d.strategy))
        else {
            return;
        };
        up.set_header(&HEADER_STRATEGY, a.name_value.clone());
        for (name, value) in &a.headers {
            up.set_header(name, value.clone());
        }
        up.set_query_or_metadata(&a.query, &a.query_metadata);
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.owned_headers
    }

    fn owned_query_keys(&self) -> &[String] {
        &self.owned_query
    }

    fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        vec![self.ktable.clone()]
    }

    fn tables_changed(&self) {
        self.rebuild_handles();
    }

    fn adopt(&self, old: &dyn Filter) {
        if let Some(old) = old.as_any().downcast_ref::<HydrusFilter>() {
            self.ktable.adopt(&old.ktable);
            // The new generation's loops start afresh (and may be fewer, or none).
            old.retire_spend_gauges();
            self.rebuild_handles();
        }
    }

    fn done(&self, state: &RequestState, _end: &crate::outcome::RequestEnd) {
        let (Some(d), Some(scenario_slot)) = (state.get::<super::Decision>(), state.scenario_slot)
        else {
            return;
        };
        let h = self.handles.load();
        let at =
            |decision: usize| (state.group.index() * h.labels.len() + scenario_slot) * 2 + decision;
        if let Some(s) = h.spend.get(at(0)) {
            s.add(self.spend_of(d.strategy, d));
        }
        if let Some(j) = d.would_choose {
            if let Some(s) = h.spend.get(at(1)) {
                s.add(self.spend_of(j, d));
            }
            if let Some(c) = h.shadow.get(j) {
                c.inc();
            }
        }
        self.spend_done(&h, state, d);
    }

    fn record<'a>(&'a self, state: &'a RequestState, parts: &mut RecordParts<'a>) {
        let set = &self.rule.strategies;
        let name = |j: usize| set.get(j).map(|s| s.name.as_str());
        parts.strategy_set = Some(&self.rule.fingerprint);
        let Some(d) = state.get::<super::Decision>() else {
            return;
        };
        parts.chosen = Some(name(d.strategy).unwrap_or_default());
        parts.k = d.k.as_ref().map(|k| (set.resources(), k.as_slice()));
        parts.would_choose = d.would_choose.and_then(name);
        parts.value_info = d
            .qoe
            .as_ref()
            .map(|q| (set as &dyn Strategies, q as &dyn Candidates));
    }

    fn strategy_labels(&self) -> Option<Vec<String>> {
        Some(self.strategy_names())
    }

    fn scenario_labels(&self) -> Option<Vec<String>> {
        Some(self.handles().labels.clone())
    }

    fn refresh_gauges(&self, now_ms: u64) {
        let m = &self.metrics;
        let route = [self.route.as_str()];
        let (loaded, age) = (
            m.ktable_loaded.with_label_values(&route),
            m.ktable_age.with_label_values(&route),
        );
        match self.ktable.get() {
            Some(k) => {
                loaded.set(1);
                age.set(k.age(now_ms).as_secs_f64());
                let w = k.table.window_of(now_ms);
                let mut exported = Vec::new();
                let resources = k.table.resources();
                for (i, name) in k.table.scenario_names().iter().enumerate() {
                    if !self.rule.declared(name.as_bytes(), Some(&k.table)) {
                        continue; // a row no request can name: no series
                    }
                    let put = |g: &GaugeVec, v: &[&str], x: Option<f64>| match x {
                        Some(x) => g.with_label_values(v).set(x),
                        None => {
                            let _ = g.remove_label_values(v);
                        }
                    };
                    for (r, resource) in resources.iter().enumerate() {
                        exported.push((name.clone(), resource.clone()));
                        let v = [self.route.as_str(), name.as_str(), resource.as_str()];
                        let k_r = k.table.ks(i, w).and_then(|ks| ks.get(r).copied());
                        if let Some(k_r) = k_r {
                            m.k.with_label_values(&v).set(k_r);
                        }
                        put(&m.expected[0], &v, k.table.expected_cost_of(i, w, r));
                    }
                    let v = [self.route.as_str(), name.as_str()];
                    put(&m.expected[1], &v, k.table.expected_qoe(i, w));
                }
                self.retire_k_series(&exported);
            }
            None => {
                loaded.set(0);
                age.set(0.0);
                self.retire_k_series(&[]);
            }
        }
        if let Some(k) = self.ktable.get() {
            let w = k.table.window_of(now_ms);
            for (name, r, l) in self.spend_series() {
                let row = k.table.scenario_index(name.as_bytes());
                let mut snapshot = l.snapshot(now_ms);
                // The target of the current window, whether or not a request has ended in it.
                snapshot.target_per_request = row.and_then(|i| k.table.expected_cost_of(i, w, r));
                let k_t = row.and_then(|i| k.table.ks(i, w)?.get(r).copied());
                let resource = self.rule.strategies.resources().get(r);
                let resource = resource.map_or(crate::resource::DEFAULT_RESOURCE, String::as_str);
                m.spend.set(&self.route, &name, resource, &snapshot, k_t);
            }
        }
    }

    fn retire(&self) {
        let m = &self.metrics;
        let route = [self.route.as_str()];
        let _ = m.ktable_loaded.remove_label_values(&route);
        let _ = m.ktable_age.remove_label_values(&route);
        self.retire_spend_gauges();
        self.retire_k_series(&[]);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
