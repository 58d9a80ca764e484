//! Prometheus metrics. The request path uses handles resolved once per config or k-table
//! generation ([`Handles`]), so it never hashes label values or takes the registry's locks.

use hydrus_filters::{Fallback, Group};
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric hydrus exports.
pub struct Metrics {
    pub registry: Registry,
    pub decision_seconds: Histogram,
    pub requests: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub k: GaugeVec,
    pub ktable_age: Gauge,
    pub ktable_loaded: IntGauge,
    pub config_reloads: IntCounterVec,
    pub ktable_reloads: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub request_seconds: HistogramVec,
    pub overhead_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub rollout_percent: Gauge,
    pub log_records: IntCounterVec,
    pub log_queue_depth: IntGauge,
    pub log_sink_errors: IntCounterVec,
    pub e2e_decisions: IntCounterVec,
    pub e2e_reloads: IntCounterVec,
    pub e2e_age: Gauge,
    pub e2e_loaded: IntGauge,
    pub hedges: IntCounterVec,
    pub hedge_reloads: IntCounterVec,
    pub hedge_loaded: IntGauge,
    pub upstream_retries: IntCounterVec,
    pub outlier_ejections: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_ejected: IntGaugeVec,
    pub downstream_connections: IntGauge,
    pub downstream_closed: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub log_fields_truncated: IntCounterVec,
    pub config_dropped: IntCounterVec,
    pub allocations: IntCounter,
    pub cost: CounterVec,
    pub predicted_qoe: CounterVec,
    pub predicted_qoe_requests: IntCounterVec,
    pub shadow_requests: IntCounterVec,
}

/// Set by a binary built with the `alloc-stats` feature: heap allocations so far.
pub static ALLOCATIONS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are unique constants below; registration can only fail on a duplicate.
    if let Err(e) = r.register(Box::new(m.clone())) {
        log::error!("metric registration failed: {e}");
    }
    m
}

/// Why hydrus closed a client connection (`hydrus_downstream_connections_closed_total`).
pub const CLOSE_REASONS: [&str; 5] = [
    "idle_timeout",
    "header_timeout",
    "body_timeout",
    "evicted",
    "refused",
];

/// Latency buckets (seconds) for the proxy and upstream: 0.1 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Proxy-overhead buckets (seconds): 5 us to 100 ms.
const OVERHEAD: &[f64] = &[
    5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 7.5e-5, 1e-4, 1.5e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
    1e-1,
];

/// Decision-time buckets (seconds): 100 ns to 1 ms; the goal is under 1 us.
const DECISION: &[f64] = &[
    1e-7, 2e-7, 3e-7, 4e-7, 5e-7, 7.5e-7, 1e-6, 1.5e-6, 2e-6, 3e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4,
    1e-3,
];

impl Metrics {
    #[allow(clippy::expect_used)] // constant, valid metric definitions: checked by tests
    pub fn new() -> Self {
        let r = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };
        let m = Self {
            decision_seconds: register(
                &r,
                Histogram::with_opts(hist(
                    "hydrus_decision_seconds",
                    "Time the filter chain spends deciding one request (its own overhead).",
                    DECISION,
                ))
                .expect("metric"),
            ),
            requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_requests_total", "Requests by applied strategy, group and k-table scenario."),
                    &["strategy", "group", "scenario"],
                )
                .expect("metric"),
            ),
            fallbacks: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_fallback_total", "Requests that got the default strategy because of bad input or a missing or stale k-table, and control requests without a user id."),
                    &["reason"],
                )
                .expect("metric"),
            ),
            k: register(
                &r,
                GaugeVec::new(
                    Opts::new("hydrus_k", "k_t in use for the current window, per scenario."),
                    &["scenario"],
                )
                .expect("metric"),
            ),
            ktable_age: register(
                &r,
                Gauge::new("hydrus_ktable_age_seconds", "Age of the running k-table.").expect("metric"),
            ),
            ktable_loaded: register(
                &r,
                IntGauge::new("hydrus_ktable_loaded", "1 when a k-table is loaded.").expect("metric"),
            ),
            config_reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_config_reloads_total", "Config reloads by result."),
                    &["result"],
                )
                .expect("metric"),
            ),
            ktable_reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_ktable_reloads_total", "k-table loads by result."),
                    &["result"],
                )
                .expect("metric"),
            ),
            upstream_seconds: register(
                &r,
                HistogramVec::new(
                    hist("hydrus_upstream_seconds", "Upstream response-header time by strategy.", LATENCY),
                    &["strategy"],
                )
                .expect("metric"),
            ),
            request_seconds: register(
                &r,
                HistogramVec::new(
                    hist("hydrus_request_seconds", "Whole-request time in the proxy by group.", LATENCY),
                    &["group"],
                )
                .expect("metric"),
            ),
            overhead_seconds: register(
                &r,
                HistogramVec::new(
                    hist("hydrus_proxy_overhead_seconds", "Latency the proxy adds per request: its whole time minus the wait for the upstream's response header, by group.", OVERHEAD),
                    &["group"],
                )
                .expect("metric"),
            ),
            upstream_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_upstream_errors_total", "Failed upstream attempts by cluster and kind."),
                    &["cluster", "kind"],
                )
                .expect("metric"),
            ),
            rollout_percent: register(
                &r,
                Gauge::new("hydrus_rollout_percent", "Configured share of users in treatment.").expect("metric"),
            ),
            log_records: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_log_records_total", "Decision log records: accepted into the queue, written by the sink, dropped (queue full)."),
                    &["result"],
                )
                .expect("metric"),
            ),
            log_queue_depth: register(
                &r,
                IntGauge::new("hydrus_log_queue_depth", "Records waiting for the log sink.").expect("metric"),
            ),
            log_sink_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_log_sink_errors_total", "Log sink failures (write, delivery) by kind."),
                    &["kind"],
                )
                .expect("metric"),
            ),
            e2e_decisions: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_e2e_decisions_total", "E2E routing decisions by external-delay bucket and replica group (bucket `none`: the default policy)."),
                    &["bucket", "group"],
                )
                .expect("metric"),
            ),
            e2e_reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_e2e_table_reloads_total", "E2E decision table loads by result."),
                    &["result"],
                )
                .expect("metric"),
            ),
            e2e_age: register(
                &r,
                Gauge::new("hydrus_e2e_table_age_seconds", "Age of the running E2E decision table.").expect("metric"),
            ),
            e2e_loaded: register(
                &r,
                IntGauge::new("hydrus_e2e_table_loaded", "1 when an E2E decision table is loaded.").expect("metric"),
            ),
            hedges: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_hedges_total", "Hedging by route: `sent` reissues, `won` (the reissue answered first), `lost` (the first attempt still did), `denied` (past the timeout but out of budget)."),
                    &["route", "result"],
                )
                .expect("metric"),
            ),
            hedge_reloads: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_hedge_table_reloads_total", "Hedge table loads by result."),
                    &["result"],
                )
                .expect("metric"),
            ),
            hedge_loaded: register(
                &r,
                IntGauge::new("hydrus_hedge_table_loaded", "1 when a hedge table is loaded.").expect("metric"),
            ),
            upstream_retries: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_upstream_retries_total", "Retries of idempotent requests on another endpoint: `sent`, or `budget_exhausted` (the retry budget said no)."),
                    &["cluster", "result"],
                )
                .expect("metric"),
            ),
            outlier_ejections: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_outlier_ejections_total", "Endpoints ejected by passive health (consecutive failures)."),
                    &["cluster", "endpoint"],
                )
                .expect("metric"),
            ),
            endpoint_healthy: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("hydrus_endpoint_healthy", "1 when the endpoint passes its active health check (always 1 without one)."),
                    &["cluster", "endpoint"],
                )
                .expect("metric"),
            ),
            endpoint_ejected: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("hydrus_endpoint_ejected", "1 while passive health sets the endpoint aside (ejected, or holding requests without answering)."),
                    &["cluster", "endpoint"],
                )
                .expect("metric"),
            ),
            downstream_connections: register(
                &r,
                IntGauge::new("hydrus_downstream_connections", "Open client connections on the proxy listener.").expect("metric"),
            ),
            downstream_closed: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_downstream_connections_closed_total", "Client connections hydrus closed or refused: `idle_timeout`, `header_timeout`, `body_timeout`, `evicted` (not being served, to admit a new one at the cap), `refused` (at the cap, none evictable)."),
                    &["reason"],
                )
                .expect("metric"),
            ),
            requests_rejected: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_requests_rejected_total", "Requests answered by hydrus itself without proxying: `header_too_large` (431)."),
                    &["reason"],
                )
                .expect("metric"),
            ),
            log_fields_truncated: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_log_fields_truncated_total", "Request header values cut to fit a log record."),
                    &["field"],
                )
                .expect("metric"),
            ),
            config_dropped: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_config_reload_dropped_total", "Reloads that removed a filter that was running, by filter kind."),
                    &["kind"],
                )
                .expect("metric"),
            ),
            allocations: register(
                &r,
                IntCounter::new("hydrus_process_allocations_total", "Heap allocations by the process (0 unless built with the alloc-stats feature).").expect("metric"),
            ),
            cost: register(
                &r,
                CounterVec::new(
                    Opts::new("hydrus_cost_total", "Sum of the cost of the strategy applied (`decision=applied`), and for control requests of the one treatment would have chosen (`decision=shadow`), by group and scenario."),
                    &["group", "scenario", "decision"],
                )
                .expect("metric"),
            ),
            predicted_qoe: register(
                &r,
                CounterVec::new(
                    Opts::new("hydrus_predicted_qoe_total", "Sum of the QoE predicted for the strategy applied (or, `decision=shadow`, the one treatment would have chosen), over requests with a QoE header."),
                    &["group", "scenario", "decision"],
                )
                .expect("metric"),
            ),
            predicted_qoe_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_predicted_qoe_requests_total", "Requests counted in hydrus_predicted_qoe_total."),
                    &["group", "scenario", "decision"],
                )
                .expect("metric"),
            ),
            shadow_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new("hydrus_shadow_requests_total", "Control requests by the strategy treatment would have chosen (shadow mode)."),
                    &["strategy"],
                )
                .expect("metric"),
            ),
            registry: r,
        };
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, ...: the process as the kernel sees it.
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            log::error!("process metrics: {e}");
        }
        for reason in CLOSE_REASONS {
            m.downstream_closed.with_label_values(&[reason]);
        }
        m.requests_rejected.with_label_values(&["header_too_large"]);
        for kind in ["rollout", "hydrus", "e2e", "hedge", "log"] {
            m.config_dropped.with_label_values(&[kind]);
        }
        // Export every series at 0 from the start, so rates and alerts have a baseline.
        for reason in Fallback::ALL_REASONS.iter().chain(&["missing_user_id"]) {
            m.fallbacks.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
            m.ktable_reloads.with_label_values(&[result]);
            m.e2e_reloads.with_label_values(&[result]);
            m.hedge_reloads.with_label_values(&[result]);
        }
        for reason in hydrus_filters::e2e::E2eFallback::ALL_REASONS {
            m.fallbacks.with_label_values(&[reason]);
        }
        for result in ["accepted", "written", "dropped"] {
            m.log_records.with_label_values(&[result]);
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        if let Some(count) = ALLOCATIONS.get() {
            let (now, seen) = (count(), self.allocations.get());
            self.allocations.inc_by(now.saturating_sub(seen));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One request's spend: its strategy's cost, and the QoE predicted for it when known.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub cost: f64,
    pub qoe: Option<f64>,
}

/// The spend counters of one (group, scenario, decision).
struct SpendCounters {
    cost: Counter,
    qoe: Counter,
    qoe_requests: IntCounter,
}

impl SpendCounters {
    fn add(&self, s: Spend) {
        self.cost.inc_by(s.cost);
        if let Some(q) = s.qoe {
            self.qoe.inc_by(q);
            self.qoe_requests.inc();
        }
    }
}

/// Pre-resolved per-request metric handles for one (config, k-table) generation.
pub struct Handles {
    /// `[strategy][group][scenario slot]`, flattened.
    requests: Vec<IntCounter>,
    groups: usize,
    slots: usize,
    /// The scenario labels, by slot: the declared scenarios, `default` and `other`.
    labels: Vec<String>,
    default_slot: usize,
    other_slot: usize,
    /// Upstream time by strategy (one `default` entry for chains without a hydrus filter).
    pub upstream_by_strategy: Vec<Histogram>,
    pub request_by_group: [Histogram; 2],
    pub overhead_by_group: [Histogram; 2],
    fallbacks: Vec<IntCounter>,
    pub missing_user_id: IntCounter,
    /// `hydrus_e2e_decisions_total` by (bucket + 1, or 0 for none) x group, resolved at first use.
    e2e: Vec<std::sync::OnceLock<IntCounter>>,
    /// `[group][scenario slot][applied, shadow]`, flattened.
    spend: Vec<SpendCounters>,
    /// Control requests by the strategy treatment would have chosen.
    shadow_requests: Vec<IntCounter>,
}

/// E2E replica groups whose decision counters are kept resolved (more are looked up).
const E2E_GROUPS: usize = 8;

/// The scenario label of a request whose scenario has no row in the k-table.
pub const SCENARIO_DEFAULT: &str = "default";
pub const SCENARIO_OTHER: &str = "other";

impl Handles {
    /// `strategies`: strategy names (or the route's pseudo strategy); `scenarios`: the declared
    /// scenarios (the config's list, else the k-table's rows).
    pub fn new(m: &Metrics, strategies: &[String], scenarios: &[String]) -> Self {
        let mut labels: Vec<&str> = scenarios.iter().map(|s| s.as_str()).collect();
        let default_slot = match labels.iter().position(|l| *l == SCENARIO_DEFAULT) {
            Some(i) => i,
            None => {
                labels.push(SCENARIO_DEFAULT);
                labels.len() - 1
            }
        };
        let other_slot = match labels.iter().position(|l| *l == SCENARIO_OTHER) {
            Some(i) => i,
            None => {
                labels.push(SCENARIO_OTHER);
                labels.len() - 1
            }
        };
        let groups = [Group::Treatment, Group::Control];
        let mut requests = Vec::new();
        for s in strategies {
            for g in groups {
                for l in &labels {
                    requests.push(m.requests.with_label_values(&[s.as_str(), g.as_str(), l]));
                }
            }
        }
        Self {
            requests,
            groups: groups.len(),
            slots: labels.len(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            default_slot,
            other_slot,
            upstream_by_strategy: strategies
                .iter()
                .map(|s| m.upstream_seconds.with_label_values(&[s.as_str()]))
                .collect(),
            request_by_group: groups.map(|g| m.request_seconds.with_label_values(&[g.as_str()])),
            overhead_by_group: groups.map(|g| m.overhead_seconds.with_label_values(&[g.as_str()])),
            fallbacks: Fallback::ALL_REASONS
                .iter()
                .map(|r| m.fallbacks.with_label_values(&[r]))
                .collect(),
            missing_user_id: m.fallbacks.with_label_values(&["missing_user_id"]),
            e2e: (0..(hydrus_filters::e2e::MAX_BUCKETS + 1) * E2E_GROUPS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            spend: groups
                .iter()
                .flat_map(|g| labels.iter().map(move |l| (g, l)))
                .flat_map(|(g, l)| {
                    ["applied", "shadow"].map(|d| {
                        let v = [g.as_str(), *l, d];
                        SpendCounters {
                            cost: m.cost.with_label_values(&v),
                            qoe: m.predicted_qoe.with_label_values(&v),
                            qoe_requests: m.predicted_qoe_requests.with_label_values(&v),
                        }
                    })
                })
                .collect(),
            shadow_requests: strategies
                .iter()
                .map(|s| m.shadow_requests.with_label_values(&[s.as_str()]))
                .collect(),
        }
    }

    /// Count an E2E routing decision (`bucket` none: the default policy).
    pub fn e2e_decision(&self, m: &Metrics, bucket: Option<usize>, group: usize, names: &[String]) {
        let resolve = || {
            let b = bucket.map_or_else(|| "none".to_string(), |b| b.to_string());
            let g = names.get(group).map_or("", |s| s.as_str());
            m.e2e_decisions.with_label_values(&[b.as_str(), g])
        };
        let slot = bucket.map_or(0, |b| b + 1) * E2E_GROUPS + group;
        match self.e2e.get(slot) {
            Some(c) if group < E2E_GROUPS => c.get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }

    /// The label slot of a scenario header's value (none: `default`); an undeclared one is
    /// `other`, so the label set stays bounded whatever clients send.
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

    /// Count a request of a scenario slot.
    pub fn request(&self, strategy: usize, group: Group, slot: usize) {
        let i = (strategy * self.groups + group.index()) * self.slots + slot;
        if let Some(c) = self.requests.get(i) {
            c.inc();
        }
    }

    /// Add a request's spend: the cost and predicted QoE of the strategy applied, and for a
    /// control request those of the one treatment would have chosen (`shadow`).
    pub fn spend(&self, group: Group, slot: usize, applied: Spend, shadow: Option<(usize, Spend)>) {
        let at = |decision: usize| (group.index() * self.slots + slot) * 2 + decision;
        if let Some(s) = self.spend.get(at(0)) {
            s.add(applied);
        }
        if let Some((strategy, sp)) = shadow {
            if let Some(s) = self.spend.get(at(1)) {
                s.add(sp);
            }
            if let Some(c) = self.shadow_requests.get(strategy) {
                c.inc();
            }
        }
    }

    pub fn fallback(&self, f: Fallback) {
        if let Some(i) = Fallback::ALL_REASONS.iter().position(|r| *r == f.reason()) {
            self.fallbacks[i].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        let h = Handles::new(
            &m,
            &["s1".into(), "s2".into()],
            &["default".into(), "feed".into()],
        );
        h.request(1, Group::Treatment, h.scenario_slot(Some(b"feed"), true));
        h.request(0, Group::Control, h.scenario_slot(None, true));
        h.request(0, Group::Control, h.scenario_slot(Some(b"made-up"), false));
        m.decision_seconds.observe(1e-6);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains(
                r#"hydrus_requests_total{group="hydrus",scenario="feed",strategy="s2"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"hydrus_requests_total{group="control",scenario="default",strategy="s1"} 1"#
        ));
        assert!(text.contains(
            r#"hydrus_requests_total{group="control",scenario="other",strategy="s1"} 1"#
        ));
        assert!(text.contains(r#"hydrus_fallback_total{reason="stale_ktable"} 0"#));
        assert!(text.contains("hydrus_decision_seconds_count 1"));
    }

    #[test]
    fn default_slot_when_table_lacks_default() {
        let m = Metrics::new();
        let h = Handles::new(&m, &["s".into()], &["feed".into()]);
        h.request(0, Group::Treatment, h.scenario_slot(None, true));
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains(
                r#"hydrus_requests_total{group="hydrus",scenario="default",strategy="s"} 1"#
            ),
            "{text}"
        );
    }
}
