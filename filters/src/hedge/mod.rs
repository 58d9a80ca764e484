//! The hedge policy (Kwiken, SIGCOMM'13): `- hedge:` in a route's chain reissues a slow
//! idempotent request once, within a reissue budget, after a per-route timeout from a
//! hot-reloaded table. Its section, compile, metrics and filter; the table, the budget and the
//! race are in [`table`]. The filter decides the timeout; the edge runs the race (it owns the
//! sockets) and reports what happened through [`HedgeFilter::record`].

pub mod table;

pub use table::*;

use crate::filter::{
    register, CompileCtx, Filter, FilterKind, Input, LogValue, RecordParts, RequestState,
};
use crate::table::{ReloadableTable, Table, TableError, TableSlot, TableSourceConfig};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// `- hedge:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// Per-route reissue timeouts, written by `hydrus solve --policy hedge`.
    pub table: TableSourceConfig,
    /// Hedged responses are buffered whole; larger ones fail the attempt.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Reissue tokens that may be saved up for a burst.
    #[serde(default = "default_burst")]
    pub burst: f64,
}

fn default_body() -> usize {
    4 << 20
}

fn default_burst() -> f64 {
    10.0
}

impl Table for HedgeTable {
    const WHAT: &'static str = "hedge table";

    fn parse_table(text: &str) -> Result<Self, TableError> {
        HedgeTable::parse(text).map_err(|e| TableError::Parse(e.to_string()))
    }

    fn generated_at(&self) -> Option<u64> {
        self.generated_at_ms()
    }

    fn describe(&self) -> String {
        format!("budget {}", self.budget())
    }
}

/// The hedge kind's metric families.
pub struct HedgeMetrics {
    hedges: IntCounterVec,
    reloads: IntCounterVec,
    loaded: IntGaugeVec,
}

#[allow(clippy::expect_used)] // constant, valid metric definitions
impl HedgeMetrics {
    fn new(r: &Registry) -> Self {
        let hedges = IntCounterVec::new(Opts::new("hydrus_hedges_total", "Hedging by hedge route (strategy, or cluster without a hydrus filter): `sent` reissues, `won` (the reissue answered well first; a failure or a gateway error, 502 to 504 or gRPC UNAVAILABLE, is no answer while the other attempt runs), `lost` (the first attempt still did, or neither), `denied` (past the timeout but out of budget)."), &["route", "result"]).expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "hydrus_hedge_table_reloads_total",
                "Hedge table loads by result.",
            ),
            &["result"],
        )
        .expect("metric");
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        let loaded = IntGaugeVec::new(
            Opts::new(
                "hydrus_hedge_table_loaded",
                "1 when the route's hedge table is loaded.",
            ),
            &["route"],
        )
        .expect("metric");
        Self {
            hedges: register(r, hedges),
            reloads: register(r, reloads),
            loaded: register(r, loaded),
        }
    }
}

/// How a hedged request went, as the edge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeOutcome {
    /// Answered before the timeout: nothing to reissue.
    Fast,
    /// Past the timeout, but the budget had no token.
    Denied,
    /// Reissued; which attempt answered.
    Reissued(Winner),
}

/// What the hedge filter keeps of a request it may reissue.
#[derive(Debug, Clone, Copy)]
struct Reissue {
    /// Reissue it after this long without an answer.
    after: Duration,
    /// Which attempt answered (`hedge` or `primary`), once it was reissued.
    answered: Option<&'static str>,
}

/// When to reissue a request, if its route's hedge filter would (the edge races the attempts).
pub fn reissue_after(state: &RequestState) -> Option<Duration> {
    state.get::<Reissue>().map(|h| h.after)
}

/// The hedge filter of a chain, if it has one.
pub fn of(chain: &crate::route::Chain) -> Option<&HedgeFilter> {
    chain.find::<HedgeFilter>()
}

/// The hedge filter of one route.
pub struct HedgeFilter {
    pub table: Arc<TableSlot<HedgeTable>>,
    pub max_body_bytes: usize,
    /// The reissue budget: earns the table's share per request, spent per reissue.
    pub budget: Budget,
    /// The hedge-table route of each strategy (by index), and of each cluster (by index,
    /// used when no hydrus filter decided).
    strategy_routes: Option<Vec<String>>,
    cluster_routes: Vec<String>,
    hedges: IntCounterVec,
    /// Resolved when the config runs (at each scrape), not when it compiles.
    loaded: IntGaugeVec,
    /// The route's name (in `hydrus_hedges_total`, `route` is the hedge table's route).
    http_route: String,
}

impl HedgeFilter {
    /// The hedge-table route a request is looked up by: its strategy, else its cluster.
    pub fn route_of(&self, state: &RequestState) -> Option<&str> {
        match (&self.strategy_routes, state.strategy) {
            (Some(names), Some(j)) => names.get(j).map(String::as_str),
            _ => self.cluster_routes.get(state.cluster).map(String::as_str),
        }
    }

    /// Count how a hedged request went, and note it in the log record.
    pub fn record(&self, state: &mut RequestState, outcome: HedgeOutcome) {
        let Some(route) = self.route_of(state) else {
            return;
        };
        let count = |r: &str| self.hedges.with_label_values(&[route, r]).inc();
        match outcome {
            HedgeOutcome::Fast => {}
            HedgeOutcome::Denied => count("denied"),
            HedgeOutcome::Reissued(w) => {
                count("sent");
                // Won: the reissue answered well (a bad answer of its own is no win).
                count(if w == Winner::Hedge { "won" } else { "lost" });
                let answered = match w {
                    Winner::Hedge | Winner::HedgeFallback => "hedge",
                    Winner::Primary | Winner::PrimaryAfterHedge => "primary",
                };
                if let Some(h) = state.get_mut::<Reissue>() {
                    h.answered = Some(answered);
                }
            }
        }
    }
}

impl Filter for HedgeFilter {
    fn kind(&self) -> &'static str {
        "hedge"
    }

    fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        self.budget.earn();
        let table = self.table.get();
        let Some(t) = table.filter(|t| !t.stale(self.table.source.max_age, input.now_ms)) else {
            return;
        };
        let after = self
            .route_of(state)
            .and_then(|route| t.table.timeout(route, rand::random::<f64>()));
        if let Some(after) = after {
            state.put(Reissue {
                after,
                answered: None,
            });
        }
    }

    fn record<'a>(&'a self, state: &'a RequestState, parts: &mut RecordParts<'a>) {
        if let Some(answered) = state.get::<Reissue>().and_then(|h| h.answered) {
            parts.extra.push(("hedge", LogValue::Str(answered)));
        }
    }

    fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        vec![self.table.clone()]
    }

    fn tables_changed(&self) {
        let rate = self.table.get().map_or(0.0, |t| t.table.budget());
        self.budget.set_rate(rate);
    }

    fn adopt(&self, old: &dyn Filter) {
        if let Some(old) = old.as_any().downcast_ref::<HedgeFilter>() {
            if old.table.source == self.table.source {
                self.table.adopt(&old.table);
                self.budget.carry_from(&old.budget);
                self.tables_changed();
            }
        }
    }

    fn refresh_gauges(&self, _now_ms: u64) {
        self.loaded
            .with_label_values(&[self.http_route.as_str()])
            .set(i64::from(self.table.is_loaded()));
    }

    fn retire(&self) {
        let _ = self.loaded.remove_label_values(&[self.http_route.as_str()]);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct HedgeKind;

/// The `hedge` kind.
pub static KIND: HedgeKind = HedgeKind;

impl FilterKind for HedgeKind {
    fn name(&self) -> &'static str {
        "hedge"
    }

    fn metrics(&self, r: &Registry) -> Arc<dyn Any + Send + Sync> {
        Arc::new(HedgeMetrics::new(r))
    }

    fn running_section(&self, section: &serde_norway::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<HedgeConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let hc: HedgeConfig = cx.parse(section)?;
        let before = cx.problems.count();
        if hc.max_body_bytes == 0 {
            cx.error("max_body_bytes", "must be at least 1");
        }
        if !(hc.burst.is_finite() && hc.burst >= 1.0) {
            cx.error("burst", "must be a number >= 1");
        }
        let source = cx.table_source(&hc.table, "table");
        if cx.problems.count() > before {
            return None;
        }
        let m = cx.metrics.downcast_ref::<HedgeMetrics>()?;
        let reloads = [
            m.reloads.with_label_values(&["ok"]),
            m.reloads.with_label_values(&["error"]),
        ];
        Some(Arc::new(HedgeFilter {
            table: Arc::new(TableSlot::new(source, reloads)),
            max_body_bytes: hc.max_body_bytes,
            budget: Budget::new(0.0, hc.burst),
            strategy_routes: cx.strategies.map(<[String]>::to_vec),
            cluster_routes: cx.cluster_names.to_vec(),
            hedges: m.hedges.clone(),
            loaded: m.loaded.clone(),
            http_route: cx.route.to_string(),
        }))
    }
}
