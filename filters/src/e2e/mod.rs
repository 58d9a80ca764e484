//! The E2E policy (SIGCOMM'19): `- e2e:` in a route's chain routes each request to a replica
//! group by its external delay, from a decision table solved offline. Its section, compile,
//! metrics and filter; the table and the per-request decision are in [`table`].

pub mod table;

pub use table::*;

use crate::filter::{
    fallback_index, normalized, register, CompileCtx, Filter, FilterKind, Input, LogValue,
    RecordParts, RequestState, Upstream, HOP_OR_FRAMING,
};
use crate::table::{ReloadableTable, Table, TableError, TableSlot, TableSourceConfig};
use http::{HeaderName, HeaderValue};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// `- e2e:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eConfig {
    /// The header the front end tags the external delay in (milliseconds).
    #[serde(default = "default_header")]
    pub header: String,
    /// Clusters that are replicas of each other; the default policy balances across them.
    pub groups: Vec<String>,
    /// The decision table written by `hydrus solve --policy e2e`.
    pub table: TableSourceConfig,
    /// A request header set to the bucket's priority, when the table gives one.
    #[serde(default)]
    pub priority_header: Option<String>,
    /// The QoE model the controller optimizes: `max / (1 + exp((delay - d50) / width))`.
    #[serde(default)]
    pub qoe_model: QoeModelConfig,
}

fn default_header() -> String {
    "x-external-delay-ms".into()
}

/// A sigmoid QoE-vs-total-delay curve (E2E, Appendix B).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QoeModelConfig {
    pub d50_ms: f64,
    pub width_ms: f64,
    #[serde(default = "default_max")]
    pub max: f64,
}

fn default_max() -> f64 {
    1.0
}

impl Default for QoeModelConfig {
    fn default() -> Self {
        Self {
            d50_ms: 2000.0,
            width_ms: 400.0,
            max: 1.0,
        }
    }
}

impl QoeModelConfig {
    pub fn qoe(&self, delay_ms: f64) -> f64 {
        self.max / (1.0 + ((delay_ms - self.d50_ms) / self.width_ms).exp())
    }
}

impl Table for E2eTable {
    const WHAT: &'static str = "e2e table";

    fn parse_table(text: &str) -> Result<Self, TableError> {
        E2eTable::parse(text).map_err(|e| TableError::Parse(e.to_string()))
    }

    fn generated_at(&self) -> Option<u64> {
        self.generated_at_ms()
    }

    fn describe(&self) -> String {
        format!("{} buckets", self.buckets())
    }
}

/// The e2e kind's metric families.
pub struct E2eMetrics {
    decisions: IntCounterVec,
    reloads: IntCounterVec,
    age: GaugeVec,
    loaded: IntGaugeVec,
}

#[allow(clippy::expect_used)] // constant, valid metric definitions
impl E2eMetrics {
    fn new(r: &Registry) -> Self {
        let decisions = IntCounterVec::new(Opts::new("hydrus_e2e_decisions_total", "E2E routing decisions by route, external-delay bucket and replica group (bucket `none`: the default policy)."), &["route", "bucket", "group"]).expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "hydrus_e2e_table_reloads_total",
                "E2E decision table loads by result.",
            ),
            &["result"],
        )
        .expect("metric");
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        let by_route = |name: &str, help: &str| Opts::new(name, help);
        Self {
            decisions: register(r, decisions),
            reloads: register(r, reloads),
            age: register(
                r,
                GaugeVec::new(
                    by_route(
                        "hydrus_e2e_table_age_seconds",
                        "Age of the route's running E2E decision table.",
                    ),
                    &["route"],
                )
                .expect("metric"),
            ),
            loaded: register(
                r,
                IntGaugeVec::new(
                    by_route(
                        "hydrus_e2e_table_loaded",
                        "1 when the route's E2E decision table is loaded.",
                    ),
                    &["route"],
                )
                .expect("metric"),
            ),
        }
    }
}

/// The e2e filter of a chain, if it has one.
pub fn of(chain: &crate::route::Chain) -> Option<&E2eFilter> {
    chain.find::<E2eFilter>()
}

/// The e2e filter of one route.
pub struct E2eFilter {
    pub header: HeaderName,
    /// Cluster indices of the groups, in config order (the table's `groups` must match).
    pub groups: Vec<usize>,
    pub group_names: Vec<String>,
    pub priority_header: Option<HeaderName>,
    pub qoe_model: QoeModelConfig,
    pub table: Arc<TableSlot<E2eTable>>,
    owned: Vec<HeaderName>,
    /// Round-robin position over the groups (the default policy).
    rr: AtomicUsize,
    /// Decision counters by (bucket + 1, or 0 for none) x group, resolved at first use.
    decisions: Vec<OnceLock<IntCounter>>,
    family: IntCounterVec,
    fallbacks: Vec<IntCounter>,
    /// Resolved when the config runs (at each scrape), not when it compiles.
    age: GaugeVec,
    loaded: IntGaugeVec,
    route: String,
}

impl E2eFilter {
    fn count(&self, bucket: Option<usize>, group: usize) {
        let n = self.groups.len().max(1);
        let slot = bucket.map_or(0, |b| b + 1) * n + group;
        let resolve = || {
            let b = bucket.map_or_else(|| "none".to_string(), |b| b.to_string());
            let g = self.group_names.get(group).map_or("", |s| s.as_str());
            self.family
                .with_label_values(&[self.route.as_str(), b.as_str(), g])
        };
        match self.decisions.get(slot) {
            Some(c) => c.get_or_init(resolve).inc(),
            None => resolve().inc(),
        }
    }
}

impl Filter for E2eFilter {
    fn kind(&self) -> &'static str {
        "e2e"
    }

    fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        let table = self.table.get();
        let stale = table
            .as_ref()
            .is_some_and(|t| t.stale(self.table.source.max_age, input.now_ms));
        let raw = input.headers.get(&self.header).map(HeaderValue::as_bytes);
        let d = decide(
            raw,
            table.as_ref().map(|t| &t.table),
            stale,
            rand::random::<f64>(),
        );
        let group = match (d.group, d.fallback) {
            (Some(g), _) => g,
            (None, fallback) => {
                if let Some(f) = fallback {
                    if let Some(i) = E2eFallback::ALL_REASONS
                        .iter()
                        .position(|r| *r == f.reason())
                    {
                        let n = E2eFallback::ALL_REASONS.len();
                        if let Some(c) = self.fallbacks.get(fallback_index(state.group, i, n)) {
                            c.inc();
                        }
                    }
                    state.fell_back(f.reason());
                }
                // The default policy: balance across the groups.
                self.rr.fetch_add(1, Ordering::Relaxed) % self.groups.len().max(1)
            }
        };
        if let Some(&c) = self.groups.get(group) {
            state.cluster = c;
        }
        self.count(d.bucket, group);
        state.put(d);
    }

    fn record<'a>(&'a self, state: &'a RequestState, parts: &mut RecordParts<'a>) {
        let Some(d) = state.get::<E2eDecision>() else {
            return;
        };
        if let Some(ms) = d.external_ms {
            parts.extra.push(("external_delay_ms", LogValue::F64(ms)));
        }
        if let Some(b) = d.bucket {
            parts.extra.push(("e2e_bucket", LogValue::U64(b as u64)));
        }
    }

    fn edit_upstream(&self, state: &RequestState, up: &mut dyn Upstream) {
        let (Some(h), Some(bucket)) = (
            self.priority_header.as_ref(),
            state.get::<E2eDecision>().and_then(|e| e.bucket),
        ) else {
            return;
        };
        let table = self.table.get();
        if let Some(p) = table.as_ref().and_then(|t| t.table.priority(bucket)) {
            if let Ok(v) = HeaderValue::from_str(p) {
                up.set_header(h, v);
            }
        }
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.owned
    }

    fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        vec![self.table.clone()]
    }

    fn adopt(&self, old: &dyn Filter) {
        if let Some(old) = old.as_any().downcast_ref::<E2eFilter>() {
            if old.group_names == self.group_names {
                self.table.adopt(&old.table);
            }
        }
    }

    fn refresh_gauges(&self, now_ms: u64) {
        let route = [self.route.as_str()];
        let (loaded, age) = (
            self.loaded.with_label_values(&route),
            self.age.with_label_values(&route),
        );
        match self.table.get() {
            Some(t) => {
                loaded.set(1);
                age.set(t.age(now_ms).as_secs_f64());
            }
            None => {
                loaded.set(0);
                age.set(0.0);
            }
        }
    }

    fn retire(&self) {
        let route = [self.route.as_str()];
        let _ = self.loaded.remove_label_values(&route);
        let _ = self.age.remove_label_values(&route);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct E2eKind;

/// The `e2e` kind.
pub static KIND: E2eKind = E2eKind;

impl FilterKind for E2eKind {
    fn name(&self) -> &'static str {
        "e2e"
    }

    fn metrics(&self, r: &Registry) -> Arc<dyn Any + Send + Sync> {
        Arc::new(E2eMetrics::new(r))
    }

    fn running_section(&self, section: &serde_norway::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<E2eConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let ec: E2eConfig = cx.parse(section)?;
        let before = cx.problems.count();
        if cx.before.contains(&"hedge") {
            cx.error(
                "",
                "e2e must come before hedge in the chain (hedge times the replica e2e picked)",
            );
        }
        let hf = cx.sub("header");
        let header = cx.problems.header_name(&hf, &ec.header);
        if ec.groups.is_empty() {
            cx.error("groups", "at least one group (cluster) is needed");
        }
        let groups = cluster_groups(&ec.groups, cx);
        let priority_header = ec
            .priority_header
            .as_ref()
            .and_then(|h| priority_header(h, cx));
        let q = ec.qoe_model;
        if !(q.width_ms.is_finite()
            && q.width_ms > 0.0
            && q.d50_ms.is_finite()
            && q.max.is_finite()
            && q.max > 0.0)
        {
            cx.error(
                "qoe_model",
                "d50_ms, width_ms > 0 and max > 0 must be finite numbers",
            );
        }
        let source = cx.table_source(&ec.table, "table");
        if cx.problems.count() > before {
            return None;
        }
        let m = cx.metrics.downcast_ref::<E2eMetrics>()?;
        let names = ec.groups.clone();
        let table = table_slot(source, m, names.clone());
        Some(Arc::new(E2eFilter {
            header: header?,
            owned: priority_header.iter().cloned().collect(),
            decisions: (0..(MAX_BUCKETS + 1) * groups.len().max(1))
                .map(|_| OnceLock::new())
                .collect(),
            groups,
            group_names: names,
            priority_header,
            qoe_model: q,
            table: Arc::new(table),
            rr: AtomicUsize::new(0),
            family: m.decisions.clone(),
            fallbacks: cx.fallbacks_by_group(E2eFallback::ALL_REASONS),
            age: m.age.clone(),
            loaded: m.loaded.clone(),
            route: cx.route.to_string(),
        }))
    }
}

/// The clusters of the replica groups, each once.
fn cluster_groups(names: &[String], cx: &mut CompileCtx<'_>) -> Vec<usize> {
    let mut groups = Vec::new();
    for (i, g) in names.iter().enumerate() {
        match (cx.cluster_index)(g) {
            Some(ci) if !groups.contains(&ci) => groups.push(ci),
            Some(_) => cx.error(&format!("groups[{i}]"), format!("`{g}` is listed twice")),
            None => cx.error(&format!("groups[{i}]"), format!("no cluster named `{g}`")),
        }
    }
    groups
}

/// The priority header, checked: not hydrus's own, not framing or hop-by-hop.
fn priority_header(h: &str, cx: &mut CompileCtx<'_>) -> Option<HeaderName> {
    let f = cx.sub("priority_header");
    let hn = cx.problems.header_name(&f, h)?;
    let n = normalized(&hn);
    if n.starts_with("x-hydrus-") || HOP_OR_FRAMING.contains(&n.as_ref()) {
        cx.error(
            "priority_header",
            "x-hydrus-*, framing and hop-by-hop headers cannot be set",
        );
        return None;
    }
    Some(hn)
}

/// The decision table's slot: a table naming other groups (or another order) is refused.
fn table_slot(
    source: crate::table::TableSource,
    m: &E2eMetrics,
    names: Vec<String>,
) -> TableSlot<E2eTable> {
    let reloads = [
        m.reloads.with_label_values(&["ok"]),
        m.reloads.with_label_values(&["error"]),
    ];
    TableSlot::new(source, reloads).with_check(Box::new(move |t: &E2eTable| {
        if t.groups() == names.as_slice() {
            Ok(())
        } else {
            Err(TableError::Mismatch(format!(
                "groups {:?} are not the e2e filter's groups {:?}",
                t.groups(),
                names
            )))
        }
    }))
}
