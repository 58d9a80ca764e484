//! The `routes:` list (or the older single-route shape, `route` + `filters`), assembled into
//! running routes: each a matcher, a cluster, its chain of filters, and the request-metric
//! handles of its label values.

use super::errors::Checker;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use http::HeaderName;
use hydrus_filters::hydrus::filter::scenario_labels;
use hydrus_filters::log::{LogRuntime, SinkConfig};
use hydrus_filters::outcome;
use hydrus_filters::route::{compile_route, shadowed, Route, RouteConfig, RouteEnv, MAX_ROUTES};
use hydrus_filters::Group;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// `route:` of the single-route shape: the cluster of its one catch-all route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyRouteConfig {
    pub cluster: String,
}

/// The name of the one route of the single-route shape.
pub const DEFAULT_ROUTE: &str = "default";

/// Per-request metric handles of one route, for one (config, table) generation.
pub struct RouteHandles {
    /// `hydrus_requests_total`, `[strategy][group][scenario slot]` flattened.
    requests: Vec<IntCounter>,
    slots: usize,
    /// The scenario labels of the slots.
    labels: Vec<String>,
    /// `hydrus_upstream_seconds` by strategy (one `default` entry without a hydrus filter).
    pub upstream_by_strategy: Vec<Histogram>,
    pub request_by_group: [Histogram; 2],
    pub overhead_by_group: [Histogram; 2],
    /// `hydrus_responses_total`, `[strategy][group][class]` flattened, each resolved when first
    /// counted (most classes never are: no series at 0 for them).
    responses: Vec<OnceLock<IntCounter>>,
    responses_family: IntCounterVec,
    route: String,
    strategies: Vec<String>,
}

impl RouteHandles {
    /// Count a request.
    pub fn request(&self, strategy: usize, group: Group, slot: usize) {
        let i = (strategy * 2 + group.index()) * self.slots + slot;
        if let Some(c) = self.requests.get(i) {
            c.inc();
        }
    }

    /// Count a request hydrus answered itself before any decision ran (a header too large, a
    /// bad target or Host): strategy `none`.
    pub fn refused(&self, group: Group, class: usize) {
        let c = outcome::CLASSES.get(class).copied().unwrap_or_default();
        self.responses_family
            .with_label_values(&[self.route.as_str(), group.as_str(), "none", c])
            .inc();
    }

    /// Count how a request ended (`class`: an index into [`outcome::CLASSES`]).
    pub fn response(&self, strategy: usize, group: Group, class: usize) {
        let i = (strategy * 2 + group.index()) * outcome::CLASSES.len() + class;
        let Some(slot) = self.responses.get(i) else {
            return;
        };
        slot.get_or_init(|| {
            let s = self.strategies.get(strategy).map_or("", String::as_str);
            let c = outcome::CLASSES.get(class).copied().unwrap_or_default();
            self.responses_family
                .with_label_values(&[self.route.as_str(), group.as_str(), s, c])
        })
        .inc();
    }
}

/// The request families, kept to rebuild handles when labels change.
struct Families {
    requests: IntCounterVec,
    responses: IntCounterVec,
    upstream: HistogramVec,
    request: HistogramVec,
    overhead: HistogramVec,
}

/// A route as the edge runs it.
pub struct RouteRuntime {
    pub route: Route,
    /// Whether its requests are logged (its chain has a `log` filter).
    pub logged: bool,
    handles: ArcSwap<RouteHandles>,
    families: Families,
}

impl RouteRuntime {
    fn new(route: Route, m: &Metrics) -> Self {
        let families = Families {
            requests: m.requests.clone(),
            responses: m.responses.clone(),
            upstream: m.upstream_seconds.clone(),
            request: m.request_seconds.clone(),
            overhead: m.overhead_seconds.clone(),
        };
        let handles = ArcSwap::from_pointee(Self::handles_for(&route, &families));
        Self {
            logged: hydrus_filters::log::of(&route.chain).is_some(),
            route,
            handles,
            families,
        }
    }

    pub fn name(&self) -> &str {
        &self.route.name
    }

    pub fn handles(&self) -> Arc<RouteHandles> {
        self.handles.load_full()
    }

    /// The strategy labels: those of the filter that chooses strategies, or `default`.
    pub fn strategy_labels(&self) -> Vec<String> {
        strategy_labels(&self.route)
    }

    fn handles_for(route: &Route, f: &Families) -> RouteHandles {
        let strategies = strategy_labels(route);
        let labels = route
            .chain
            .scenario_labels()
            .unwrap_or_else(|| scenario_labels(&[]));
        let name = route.name.as_str();
        let groups = [Group::Treatment, Group::Control];
        let mut requests = Vec::new();
        for s in &strategies {
            for g in groups {
                for l in &labels {
                    requests.push(f.requests.with_label_values(&[name, s, g.as_str(), l]));
                }
            }
        }
        RouteHandles {
            requests,
            slots: labels.len(),
            labels,
            responses: (0..strategies.len() * 2 * outcome::CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            responses_family: f.responses.clone(),
            route: name.to_string(),
            upstream_by_strategy: strategies
                .iter()
                .map(|s| f.upstream.with_label_values(&[name, s.as_str()]))
                .collect(),
            request_by_group: groups.map(|g| f.request.with_label_values(&[name, g.as_str()])),
            overhead_by_group: groups.map(|g| f.overhead.with_label_values(&[name, g.as_str()])),
            strategies,
        }
    }

    /// A table of the chain was loaded, replaced or dropped.
    pub fn tables_changed(&self) {
        self.route.chain.tables_changed();
        let new = Self::handles_for(&self.route, &self.families);
        // The request series of scenarios no longer declared (a smaller k-table's rows) go.
        let old = self.handles.load();
        let name = self.name();
        for gone in old.labels.iter().filter(|l| !new.labels.contains(l)) {
            for s in self.strategy_labels() {
                for g in Group::ALL {
                    let v = [name, s.as_str(), g.as_str(), gone.as_str()];
                    let _ = self.families.requests.remove_label_values(&v);
                }
            }
        }
        self.handles.store(Arc::new(new));
    }

    /// Take over what the same route loaded before a config reload.
    pub fn adopt(&self, old: &RouteRuntime) {
        self.route.chain.adopt(&old.route.chain);
        self.tables_changed();
    }
}

/// A route's strategy labels: those of the filter that chooses strategies, or `default`.
fn strategy_labels(route: &Route) -> Vec<String> {
    route
        .chain
        .strategy_labels()
        .unwrap_or_else(|| vec!["default".into()])
}

/// What the routes section compiled to.
pub struct Routes {
    pub routes: Vec<Arc<RouteRuntime>>,
    /// The one log sink every `log` filter names.
    pub log: Option<LogRuntime>,
}

/// The routes as written: the `routes:` list, or the single-route shape as one catch-all route
/// named `default` (its fields keep their top-level paths in errors).
pub struct RoutesSource<'a> {
    pub routes: Option<&'a [RouteConfig]>,
    pub route: Option<&'a LegacyRouteConfig>,
    pub filters: Option<&'a [serde_norway::Value]>,
}

/// Compile every route; problems go to `c`.
pub fn compile_routes(
    c: &mut Checker<'_>,
    src: RoutesSource<'_>,
    cluster_names: &[String],
    identity: &[HeaderName; 5],
    m: &Metrics,
) -> Routes {
    let listed = written_routes(c, &src);
    if listed.len() > MAX_ROUTES {
        c.error("routes", format!("at most {MAX_ROUTES} routes"));
    }
    let env = RouteEnv {
        file: c.file,
        cluster_names,
        identity,
        kinds: &m.filters,
        fallbacks: &m.fallbacks,
    };
    let mut compiled: Vec<(usize, Route)> = Vec::new();
    for (i, (rc, field, cluster_field)) in listed.iter().enumerate() {
        if listed[..i].iter().any(|(o, _, _)| o.name == rc.name) {
            c.error(
                format!("{field}.name"),
                format!("`{}` is used by an earlier route", rc.name),
            );
        }
        if let Some(r) = compile_route(rc, field, cluster_field, &env, &mut c.problems) {
            compiled.push((i, r));
        }
    }
    let refs: Vec<(usize, &Route)> = compiled.iter().map(|(i, r)| (*i, r)).collect();
    for (earlier, later) in shadowed(&refs) {
        let (rc, field, _) = &listed[later];
        let at = if rc.matches == Default::default() {
            "name"
        } else {
            "match"
        };
        c.warn(
            format!("{field}.{at}"),
            format!(
                "unreachable: route `{}` before it takes every request it matches",
                listed[earlier].0.name
            ),
        );
    }
    let log = one_log(c, &compiled, &listed);
    Routes {
        routes: compiled
            .into_iter()
            .map(|(_, r)| Arc::new(RouteRuntime::new(r, m)))
            .collect(),
        log,
    }
}

/// Each route as written, with its field path and its cluster's field path.
fn written_routes(
    c: &mut Checker<'_>,
    src: &RoutesSource<'_>,
) -> Vec<(RouteConfig, String, String)> {
    match (src.routes, src.route, src.filters) {
        (Some(list), None, None) => {
            if list.is_empty() {
                c.error("routes", "at least one route is needed");
            }
            list.iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        r.clone(),
                        format!("routes[{i}]"),
                        format!("routes[{i}].cluster"),
                    )
                })
                .collect()
        }
        (Some(_), _, _) => {
            c.error(
                "routes",
                "`routes` replaces `route` and `filters`: move them into a route (`- name: default`, `cluster: ...`, `filters: [...]`)",
            );
            Vec::new()
        }
        (None, Some(r), filters) => vec![(
            RouteConfig {
                name: DEFAULT_ROUTE.into(),
                matches: Default::default(),
                cluster: r.cluster.clone(),
                filters: filters.unwrap_or_default().to_vec(),
                idempotent: false,
                single_route_shape: true,
            },
            String::new(),
            "route.cluster".into(),
        )],
        (None, None, Some(_)) => {
            c.error(
                "filters",
                "the single-route shape needs `route: {cluster: NAME}` too (or list routes in `routes:`, each with a name, a cluster and its filters)",
            );
            Vec::new()
        }
        (None, None, None) => {
            c.error(
                "routes",
                "no routes: list them in `routes:` (each with a name, a cluster and its filters)",
            );
            Vec::new()
        }
    }
}

/// The log sink: every route's `log` filter must name the same one (there is one per process).
fn one_log(
    c: &mut Checker<'_>,
    compiled: &[(usize, Route)],
    listed: &[(RouteConfig, String, String)],
) -> Option<LogRuntime> {
    let mut log: Option<&LogRuntime> = None;
    for (i, r) in compiled {
        let Some(filter) = hydrus_filters::log::of(&r.chain) else {
            continue;
        };
        let (rc, route_field, _) = &listed[*i];
        let at = rc
            .filters
            .iter()
            .position(|f| f.get("log").is_some())
            .unwrap_or(0);
        let field = format!("{route_field}.filters[{at}].log")
            .trim_start_matches('.')
            .to_string();
        match log {
            None => log = Some(&filter.runtime),
            Some(first) if *first != filter.runtime => c.error(
                field.clone(),
                "every route's `log` filter must name the same sink and queue (there is one log per proxy)",
            ),
            Some(_) => {}
        }
        if matches!(filter.runtime.sink, SinkConfig::Kafka(_)) && !cfg!(feature = "kafka") {
            c.error(
                format!("{field}.kafka"),
                "this hydrus was built without the `kafka` feature",
            );
        }
    }
    log.cloned()
}
