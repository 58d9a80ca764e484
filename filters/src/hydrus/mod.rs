//! The hydrus policy (the Hydrus paper's per-request allocation): `- hydrus:` in a route's
//! chain. Its section, its checks and compile, its k-table, its metrics and its filter.
//!
//! - [`strategy`]: the strategy set (cost, QoE scale) from the config.
//! - [`qoe`]: the QoE header parser.
//! - [`decide`]: the decision rule, `argmax_j qoe_j - k * cost_j`, ties to the cheaper.
//! - [`ktable`]: the per-window k-table written by `hydrus solve`.
//! - [`rule`]: all of the above for one request, with its fallbacks.
//! - [`filter`]: the filter a route runs.

pub mod decide;
pub mod filter;
pub mod ktable;
pub mod qoe;
pub mod rule;
pub mod spend;
pub mod strategy;

pub use filter::{HydrusFilter, HydrusMetrics, StrategyAction};
pub use rule::{Decision, Fallback, HydrusRule, RequestInputs};

use crate::filter::{normalized, CompileCtx, Filter, FilterKind, HOP_OR_FRAMING};
use crate::table::TableSourceConfig;
use http::{HeaderName, HeaderValue};
use qoe::QoeRange;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use strategy::{Strategy, StrategyError, StrategySet};

/// Most scenarios a config may declare (each labels metric series).
pub const MAX_SCENARIOS: usize = 256;

/// The hydrus filter of a chain, if it has one.
pub fn of(chain: &crate::route::Chain) -> Option<&HydrusFilter> {
    chain.find::<HydrusFilter>()
}

/// The hydrus decision of a request, when a hydrus filter decided it.
pub fn decision(state: &crate::filter::RequestState) -> Option<&Decision> {
    state.get::<Decision>()
}

/// The metric label of undeclared scenarios: reserved.
pub const SCENARIO_OTHER: &str = "other";

/// `- hydrus:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrusConfig {
    /// What control traffic and every fallback gets.
    pub default_strategy: String,
    /// `[min, max]` a QoE value must lie in; default `[0, 1]`.
    #[serde(default)]
    pub qoe_range: Option<[f64; 2]>,
    /// The scenarios a request may name in the scenario header (besides `default`); without
    /// this list, the k-table's rows. Other values are never used as a key.
    #[serde(default)]
    pub scenarios: Option<Vec<String>>,
    pub ktable: TableSourceConfig,
    pub strategies: Vec<StrategyConfig>,
    /// Per resource (the names strategies' cost maps use): its budget. Without an entry, the
    /// solver's default: what the logged (control) decisions spent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, ResourceConfig>,
    /// The spend controller: off without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_control: Option<spend::SpendControlConfig>,
}

/// `resources.NAME` in the hydrus section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// The resource's budget per request (`hydrus solve --config` reads it).
    #[serde(default)]
    pub budget_per_request: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    pub name: String,
    /// Resource cost per request, in the unit the budget is in (e.g. ms of ranking time): a
    /// number, or one per resource (`{ large: 34, small: 2 }`).
    pub cost: crate::resource::PerResource,
    /// QoE under this strategy relative to the default strategy's (the paper's coefficient).
    #[serde(default = "default_scale")]
    pub qoe_scale: f64,
    /// The upstream cluster; default: the route's.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Request headers set (replaced) upstream.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Query parameters set (replaced) upstream, e.g. the candidate count.
    #[serde(default)]
    pub set_query: BTreeMap<String, String>,
}

fn default_scale() -> f64 {
    1.0
}

fn query_text_ok(s: &str, is_key: bool) -> bool {
    !s.bytes().any(|b| {
        b.is_ascii_control() || b == b' ' || b == b'&' || b == b'#' || (is_key && b == b'=')
    })
}

pub struct HydrusKind;

/// The `hydrus` kind.
pub static KIND: HydrusKind = HydrusKind;

impl FilterKind for HydrusKind {
    fn name(&self) -> &'static str {
        "hydrus"
    }

    fn metrics(&self, r: &prometheus::Registry) -> Arc<dyn Any + Send + Sync> {
        Arc::new(HydrusMetrics::new(r))
    }

    fn running_section(&self, section: &serde_norway::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<HydrusConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let hc: HydrusConfig = cx.parse(section)?;
        let before = cx.problems.count();
        if cx.before.contains(&"hedge") {
            cx.error(
                "",
                "hydrus must come before hedge in the chain (hedge looks up the strategy hydrus chose)",
            );
        }
        if cx.before.contains(&"e2e") {
            cx.error(
                "",
                "hydrus must come before e2e in the chain (e2e picks the replica last)",
            );
        }
        let set = strategy_set(&hc, cx);
        let actions: Vec<StrategyAction> = hc
            .strategies
            .iter()
            .enumerate()
            .map(|(i, s)| action(s, i, cx))
            .collect();
        let qoe_range = match hc.qoe_range {
            None => QoeRange::default(),
            Some([min, max]) => {
                if !(min.is_finite() && max.is_finite() && min < max) {
                    cx.error("qoe_range", "must be [min, max] with min < max");
                }
                QoeRange { min, max }
            }
        };
        check_scenarios(hc.scenarios.as_deref(), cx);
        let ktable = cx.table_source(&hc.ktable, "ktable");
        if let Some(set) = &set {
            check_resources(&hc.resources, set.resources(), cx);
        }
        let resources = set.as_ref().map_or(&[][..], |s| s.resources());
        let spend = hc.spend_control.as_ref().and_then(|sc| {
            sc.compile(hc.scenarios.as_deref(), resources)
                .map_err(|e| cx.error(&format!("spend_control.{}", e.field), e.problem))
                .ok()
        });
        if cx.problems.count() > before {
            return None;
        }
        let m = cx.metrics.downcast_ref::<HydrusMetrics>()?;
        let rule = rule::HydrusRule::new(set?, qoe_range).with_scenarios(hc.scenarios);
        let mut filter = HydrusFilter::new(rule, actions, ktable, m, cx.fallbacks, cx.route)
            .with_spend_control(spend);
        filter.resource_budgets = (hc.resources.iter())
            .filter_map(|(name, r)| Some((name.clone(), r.budget_per_request?)))
            .collect();
        Some(Arc::new(filter))
    }
}

fn strategy_set(hc: &HydrusConfig, cx: &mut CompileCtx<'_>) -> Option<StrategySet> {
    let strategies: Vec<Strategy> = hc
        .strategies
        .iter()
        .map(|s| Strategy {
            name: s.name.clone(),
            cost: s.cost.clone(),
            qoe_scale: s.qoe_scale,
        })
        .collect();
    match StrategySet::new(strategies, &hc.default_strategy) {
        Ok(set) => Some(set),
        Err(e) => {
            let at = |name: &str| {
                hc.strategies
                    .iter()
                    .rposition(|s| s.name == name)
                    .map_or("strategies".to_string(), |i| format!("strategies[{i}]"))
            };
            let place = match &e {
                StrategyError::Duplicate(n) | StrategyError::BadName(n) => at(n),
                StrategyError::BadCost { name, .. }
                | StrategyError::BadResource { name, .. }
                | StrategyError::NoResource { name }
                | StrategyError::MixedCosts { name } => format!("{}.cost", at(name)),
                StrategyError::TooManyResources(_) => "strategies".into(),
                StrategyError::BadScale { name, .. } => format!("{}.qoe_scale", at(name)),
                StrategyError::UnknownDefault(_) => "default_strategy".into(),
                StrategyError::Empty | StrategyError::TooMany(_) => "strategies".into(),
            };
            cx.error(&place, e.to_string());
            None
        }
    }
}

/// A strategy header's name, checked: not hydrus's own, not framing or hop-by-hop, not an
/// identity header.
fn strategy_header(cx: &mut CompileCtx<'_>, field: &str, name: &str) -> Option<HeaderName> {
    let f = cx.sub(field);
    let hn = cx.problems.header_name(&f, name)?;
    let n = normalized(&hn);
    let why = if n.starts_with("x-hydrus-") {
        "x-hydrus-* headers are set by hydrus itself"
    } else if HOP_OR_FRAMING.contains(&n.as_ref()) {
        "a framing or hop-by-hop header cannot be set by a strategy"
    } else if cx.identity.iter().any(|h| normalized(h) == n) {
        "a header hydrus reads (user id, device id, request id, QoE, scenario) cannot be set by a strategy"
    } else {
        return Some(hn);
    };
    cx.error(field, why);
    None
}

fn action(s: &StrategyConfig, i: usize, cx: &mut CompileCtx<'_>) -> StrategyAction {
    let sf = format!("strategies[{i}]");
    let cluster = match &s.cluster {
        None => cx.route_cluster,
        Some(name) => (cx.cluster_index)(name).unwrap_or_else(|| {
            cx.error(
                &format!("{sf}.cluster"),
                format!("no cluster named `{name}`"),
            );
            cx.route_cluster
        }),
    };
    let mut headers = Vec::new();
    for (name, value) in &s.set_headers {
        let hf = format!("{sf}.set_headers.{name}");
        let Some(hn) = strategy_header(cx, &hf, name) else {
            continue;
        };
        match HeaderValue::from_str(value) {
            Ok(hv) => headers.push((hn, hv)),
            Err(_) => cx.error(&hf, format!("`{value}` is not a valid header value")),
        }
    }
    let mut query = Vec::new();
    for (k, v) in &s.set_query {
        let qf = format!("{sf}.set_query.{k}");
        if k.is_empty() || !query_text_ok(k, true) {
            cx.error(&qf, format!("`{k}` is not a plain query parameter name"));
        } else if !query_text_ok(v, false) {
            cx.error(
                &qf,
                format!("`{v}` is not a plain query value (percent-encode it)"),
            );
        } else {
            query.push((k.clone(), v.clone()));
        }
    }
    let query_metadata = crate::query::as_metadata(&query);
    StrategyAction {
        cluster,
        headers,
        query,
        query_metadata,
        name_value: HeaderValue::from_str(&s.name).unwrap_or(HeaderValue::from_static("invalid")),
    }
}

/// `resources`: each one a resource the strategies' costs name, with a budget > 0.
fn check_resources(
    resources: &BTreeMap<String, ResourceConfig>,
    named: &[String],
    cx: &mut CompileCtx<'_>,
) {
    for (name, r) in resources {
        let f = format!("resources.{name}");
        if !named.contains(name) {
            cx.error(
                &f,
                format!(
                    "no strategy's cost names `{name}` (the resources are: {})",
                    named.join(", ")
                ),
            );
        } else if let Some(b) = r.budget_per_request {
            if !(b.is_finite() && b > 0.0) {
                cx.error(&format!("{f}.budget_per_request"), "must be a number > 0");
            }
        }
    }
}

fn check_scenarios(list: Option<&[String]>, cx: &mut CompileCtx<'_>) {
    let Some(list) = list else {
        return;
    };
    for (i, name) in list.iter().enumerate() {
        let f = format!("scenarios[{i}]");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            cx.error(
                &f,
                format!("`{name}`: use 1-64 letters, digits, `_`, `-` or `.`"),
            );
        } else if name == SCENARIO_OTHER {
            cx.error(&f, "`other` is reserved: it labels undeclared scenarios");
        } else if list[..i].contains(name) {
            cx.error(&f, format!("`{name}` is listed twice"));
        }
    }
    if list.len() > MAX_SCENARIOS {
        cx.error("scenarios", format!("at most {MAX_SCENARIOS} scenarios"));
    }
}
