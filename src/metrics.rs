//! Prometheus metrics of the edge (requests, upstreams, connections, the log, reloads), and
//! the registry every filter kind registers its own families in. The request path uses handles
//! resolved once per config or table generation (see [`crate::config::RouteHandles`]), so it
//! never hashes label values or takes the registry's locks.

use hydrus_filters::filter::FilterKind;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::any::Any;
use std::sync::Arc;

/// A filter kind and its registered metric families.
pub type KindMetrics = (&'static dyn FilterKind, Arc<dyn Any + Send + Sync>);

/// Every metric hydrus exports.
pub struct Metrics {
    pub registry: Registry,
    pub decision_seconds: Histogram,
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub request_seconds: HistogramVec,
    pub overhead_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub log_records: IntCounterVec,
    pub log_queue_depth: IntGauge,
    pub log_sink_errors: IntCounterVec,
    pub trace_spans: IntCounterVec,
    pub trace_queue_depth: IntGauge,
    pub traces_sampled: IntCounter,
    pub upstream_retries: IntCounterVec,
    pub outlier_ejections: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_ejected: IntGaugeVec,
    pub cluster_endpoints: IntGaugeVec,
    pub discovery_updates: IntCounterVec,
    pub fleet_proxies: IntGaugeVec,
    pub downstream_connections: IntGauge,
    pub downstream_closed: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub log_fields_truncated: IntCounterVec,
    pub log_fields_escaped: IntCounterVec,
    pub config_dropped: IntCounterVec,
    pub allocations: IntCounter,
    /// Every filter kind's families (`hydrus_k`, `hydrus_e2e_decisions_total`, ...).
    pub filters: Vec<KindMetrics>,
}

/// Set by a binary built with the `alloc-stats` feature: heap allocations so far.
pub static ALLOCATIONS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Why hydrus closed a client connection (`hydrus_downstream_connections_closed_total`).
pub const CLOSE_REASONS: [&str; 6] = [
    "idle_timeout",
    "header_timeout",
    "body_timeout",
    "send_timeout",
    "evicted",
    "refused",
];

/// Why hydrus answered a request itself (`hydrus_requests_rejected_total`).
pub const REJECT_REASONS: [&str; 6] = [
    "header_too_large",
    "bad_target",
    "bad_host",
    "bad_content_length",
    "escaped_slash",
    "no_route",
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

/// Registers families with constant, valid definitions (checked by the tests): a failure is a
/// duplicate name, a bug.
struct Families<'r>(&'r Registry);

#[allow(clippy::expect_used)] // constant, valid metric definitions
impl Families<'_> {
    fn keep<T: Collector + Clone + 'static>(&self, m: T) -> T {
        if let Err(e) = self.0.register(Box::new(m.clone())) {
            log::error!("metric registration failed: {e}");
        }
        m
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.keep(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.keep(IntGaugeVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.keep(IntGauge::new(name, help).expect("metric"))
    }

    fn histograms(&self, name: &str, help: &str, b: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(b.to_vec());
        self.keep(HistogramVec::new(opts, labels).expect("metric"))
    }
}

impl Metrics {
    #[allow(clippy::expect_used)] // constant, valid metric definitions
    pub fn new() -> Self {
        let r = Registry::new();
        let f = Families(&r);
        let m = Self {
            decision_seconds: f.keep(Histogram::with_opts(HistogramOpts::new("hydrus_decision_seconds", "Time the filter chain spends deciding one request (its own overhead).").buckets(DECISION.to_vec())).expect("metric")),
            responses: f.counters("hydrus_responses_total", "Requests by how they ended, counted once at the end whoever answered: by route, group, applied strategy and class (2xx ... 5xx; a gRPC call's status name; client_gone).", &["route", "group", "strategy", "class"]),
            requests: f.counters("hydrus_requests_total", "Requests by route, applied strategy (`default` on routes without a hydrus filter), group and k-table scenario.", &["route", "strategy", "group", "scenario"]),
            fallbacks: f.counters("hydrus_fallback_total", "Requests that got the default strategy (or E2E's default policy) because of bad input or a missing, stale or mismatched table, and requests without a user id on a route with a rollout, by route and group (control: what treatment would have fallen back on, shadow mode).", &["route", "group", "reason"]),
            config_reloads: f.counters("hydrus_config_reloads_total", "Config reloads by result.", &["result"]),
            upstream_seconds: f.histograms("hydrus_upstream_seconds", "Upstream response-header time by route and strategy.", LATENCY, &["route", "strategy"]),
            request_seconds: f.histograms("hydrus_request_seconds", "Whole-request time in the proxy by route and group.", LATENCY, &["route", "group"]),
            overhead_seconds: f.histograms("hydrus_proxy_overhead_seconds", "Latency the proxy adds per request: its whole time minus the wait for the upstream's response header, by route and group.", OVERHEAD, &["route", "group"]),
            upstream_errors: f.counters("hydrus_upstream_errors_total", "Failed upstream attempts by cluster and kind.", &["cluster", "kind"]),
            log_records: f.counters("hydrus_log_records_total", "Decision log records: accepted into the queue, written by the sink, dropped (queue full).", &["result"]),
            log_queue_depth: f.gauge("hydrus_log_queue_depth", "Records waiting for the log sink."),
            log_sink_errors: f.counters("hydrus_log_sink_errors_total", "Log sink failures (write, delivery) by kind.", &["kind"]),
            trace_spans: f.counters("hydrus_trace_spans_total", "Spans of sampled requests (`tracing:`): `exported` (the collector took them), `queue_full` (dropped: the export queue was full), `export_failed` (dropped: the collector refused, failed or timed out).", &["result"]),
            trace_queue_depth: f.gauge("hydrus_trace_queue_depth", "Sampled requests whose spans wait for export."),
            traces_sampled: f.keep(IntCounter::new("hydrus_traces_sampled_total", "Requests whose spans were recorded (sampled here, or by their caller's traceparent).").expect("metric")),
            upstream_retries: f.counters("hydrus_upstream_retries_total", "Retries of idempotent requests on another endpoint: `sent`, or `budget_exhausted` (the retry budget said no).", &["cluster", "result"]),
            outlier_ejections: f.counters("hydrus_outlier_ejections_total", "Endpoints ejected by passive health (consecutive failures).", &["cluster", "endpoint"]),
            endpoint_healthy: f.gauges("hydrus_endpoint_healthy", "1 when the endpoint passes its active health check (always 1 without one).", &["cluster", "endpoint"]),
            endpoint_ejected: f.gauges("hydrus_endpoint_ejected", "1 while passive health sets the endpoint aside (ejected, or holding requests without answering).", &["cluster", "endpoint"]),
            cluster_endpoints: f.gauges("hydrus_cluster_endpoints", "The endpoints (addresses) a cluster sends to now.", &["cluster"]),
            fleet_proxies: f.gauges("hydrus_fleet_proxies", "The proxies a fleet's name (spend_control proxies: { dns }) resolved to at its last good answer.", &["fleet"]),
            discovery_updates: f.counters("hydrus_discovery_updates_total", "Resolutions of a cluster's names, by result: changed, unchanged, failed, empty (failed and empty keep the last set).", &["cluster", "result"]),
            downstream_connections: f.gauge("hydrus_downstream_connections", "Open client connections on the proxy listener."),
            downstream_closed: f.counters("hydrus_downstream_connections_closed_total", "Client connections hydrus closed or refused: `idle_timeout`, `header_timeout`, `body_timeout`, `send_timeout` (a write to the client made no progress for `limits.send_timeout`: the connection closed, or an HTTP/2 stream reset), `evicted` (not being served, to admit a new one at the cap), `refused` (at the cap, none evictable), `tls_handshake` (a TLS handshake failed or did not finish within the header timeout).", &["reason"]),
            requests_rejected: f.counters("hydrus_requests_rejected_total", "Requests answered by hydrus itself without proxying: `header_too_large` (431), `bad_target` (400), `bad_host` (400: an HTTP/1.1 request without `Host`, or a `Host` that is empty or not `host[:port]`), `bad_content_length` (400: `Content-Length` values that differ or are not numbers; pingora's parser refuses these first, uncounted), `escaped_slash` (400: `%2F`, `%5C` or a backslash in the path, under `limits.escaped_slashes: reject`), `no_route` (404: no route matched), `body_too_large` (413: a body over the hedge filter's `max_body_bytes` on a route marked idempotent). A gRPC call gets the matching `grpc-status` instead of the HTTP status.", &["reason"]),
            log_fields_truncated: f.counters("hydrus_log_fields_truncated_total", "Request header values cut to fit a log record.", &["field"]),
            log_fields_escaped: f.counters("hydrus_log_fields_escaped_total", "Request header values that were not UTF-8, written escaped in a log record (and named in its `escaped` field), by record field.", &["field"]),
            config_dropped: f.counters("hydrus_config_reload_dropped_total", "Running filters and routes a reload removed: by filter kind (a route that stays lost it), or `route` (a route gone).", &["kind"]),
            allocations: f.keep(IntCounter::new("hydrus_process_allocations_total", "Heap allocations by the process (0 unless built with the alloc-stats feature).").expect("metric")),
            filters: hydrus_filters::kinds()
                .map(|k| (k, k.metrics(&r)))
                .collect(),
            registry: r,
        };
        m.baseline();
        m
    }

    /// The process collector, and every fixed series at 0 from the start, so rates and alerts
    /// have a baseline.
    fn baseline(&self) {
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, ...: the process as the kernel sees it.
        #[cfg(target_os = "linux")]
        if let Err(e) = self.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            log::error!("process metrics: {e}");
        }
        for reason in CLOSE_REASONS {
            self.downstream_closed.with_label_values(&[reason]);
        }
        for reason in REJECT_REASONS {
            self.requests_rejected.with_label_values(&[reason]);
        }
        for (kind, _) in &self.filters {
            self.config_dropped.with_label_values(&[kind.name()]);
        }
        self.config_dropped.with_label_values(&["route"]);
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for result in ["accepted", "written", "dropped"] {
            self.log_records.with_label_values(&[result]);
        }
        for result in ["exported", "queue_full", "export_failed"] {
            self.trace_spans.with_label_values(&[result]);
        }
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
