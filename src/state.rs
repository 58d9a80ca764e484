//! The running state every request reads: the config and the k-table, each in an `ArcSwap` and
//! replaced whole on reload, so a request sees one consistent snapshot and never waits on a lock.

use crate::config::Running;
use crate::logsink::LogQueue;
use crate::metrics::{Handles, Metrics};
use arc_swap::{ArcSwap, ArcSwapOption};
use hydrus_filters::e2e::E2eTable;
use hydrus_filters::hedge::{Budget, HedgeTable};
use hydrus_filters::KTable;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A loaded table (k-table or e2e table) and what is known of its age.
#[derive(Debug)]
pub struct Loaded<T> {
    pub table: T,
    /// Where it came from: a path or URL.
    pub source: String,
    /// When this proxy loaded it (Unix ms).
    pub loaded_at_ms: u64,
    /// When it was made (Unix ms): its `generated_at_ms`, else the file's modification time or
    /// the response's `Last-Modified`, else when it was loaded.
    pub made_at_ms: u64,
}

pub type KTableState = Loaded<KTable>;
pub type E2eState = Loaded<E2eTable>;
pub type HedgeState = Loaded<HedgeTable>;

impl<T> Loaded<T> {
    /// Whether it is older than `max_age` (never, without one).
    pub fn stale(&self, max_age: Option<Duration>, now_ms: u64) -> bool {
        max_age.is_some_and(|max| self.age(now_ms) > max)
    }

    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.made_at_ms))
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn system_time_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

pub struct State {
    pub config: ArcSwap<Running>,
    pub ktable: ArcSwapOption<KTableState>,
    pub e2e: ArcSwapOption<E2eState>,
    pub hedge: ArcSwapOption<HedgeState>,
    /// The reissue budget: earns the hedge table's share per request, spent per reissue.
    pub hedge_budget: Budget,
    pub handles: ArcSwap<Handles>,
    pub metrics: Arc<Metrics>,
    pub log: Option<LogQueue>,
    /// Round-robin position over E2E's replica groups (its default policy).
    pub rr_groups: AtomicUsize,
    /// The (cluster, endpoint) label pairs of the endpoint gauges, to drop those a reload removes.
    endpoint_series: std::sync::Mutex<Vec<(String, String)>>,
    /// False once shutdown began: `/ready` answers 503 so load balancers stop sending.
    pub ready: AtomicBool,
}

/// The strategy names that label metrics: the hydrus filter's, or `default` without one.
pub fn strategy_labels(r: &Running) -> Vec<String> {
    match &r.hydrus {
        Some(h) => h
            .filter
            .strategies
            .strategies()
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        None => vec!["default".into()],
    }
}

impl State {
    pub fn new(running: Running, metrics: Arc<Metrics>, log: Option<LogQueue>) -> Self {
        let handles = Handles::new(&metrics, &strategy_labels(&running), &[]);
        if let Some(p) = running.rollout_percent {
            metrics.rollout_percent.set(p);
        } else {
            metrics.rollout_percent.set(100.0);
        }
        let state = Self {
            config: ArcSwap::from_pointee(running.clone()),
            ktable: ArcSwapOption::empty(),
            e2e: ArcSwapOption::empty(),
            hedge: ArcSwapOption::empty(),
            hedge_budget: Budget::new(0.0, running.hedge.as_ref().map_or(10.0, |h| h.burst)),
            handles: ArcSwap::from_pointee(handles),
            metrics,
            log,
            rr_groups: AtomicUsize::new(0),
            endpoint_series: std::sync::Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
        };
        state.touch_cluster_series(&running);
        state
    }

    /// Export every cluster's error series at 0, so rates and alerts have a baseline.
    fn touch_cluster_series(&self, running: &Running) {
        for c in &running.clusters {
            for kind in ["connect", "timeout", "response"] {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[c.name.as_str(), kind]);
            }
            for result in ["sent", "budget_exhausted"] {
                self.metrics
                    .upstream_retries
                    .with_label_values(&[c.name.as_str(), result]);
            }
            for e in &c.endpoints {
                self.metrics
                    .outlier_ejections
                    .with_label_values(&[c.name.as_str(), &e.to_string()]);
            }
        }
    }

    /// Rebuild the metric handles after the config or the k-table changed.
    pub fn rebuild_handles(&self) {
        let running = self.config.load();
        let declared = running
            .hydrus
            .as_ref()
            .and_then(|h| h.filter.scenarios.clone());
        let scenarios = declared.unwrap_or_else(|| {
            self.ktable
                .load()
                .as_ref()
                .map(|k| k.table.scenario_names().to_vec())
                .unwrap_or_default()
        });
        self.handles.store(Arc::new(Handles::new(
            &self.metrics,
            &strategy_labels(&running),
            &scenarios,
        )));
    }

    pub fn set_config(&self, mut running: Running) {
        // A cluster whose section is unchanged keeps running: its health, ejections and
        // requests in flight carry over.
        let old = self.config.load();
        for c in running.clusters.iter_mut() {
            if let Some(o) = old
                .clusters
                .iter()
                .find(|o| o.name == c.name && o.same_as(&c.source, &c.endpoints))
            {
                *c = o.clone();
            }
        }
        self.touch_cluster_series(&running);
        self.metrics
            .rollout_percent
            .set(running.rollout_percent.unwrap_or(100.0));
        self.config.store(Arc::new(running));
        self.rebuild_handles();
    }

    pub fn set_ktable(&self, k: Option<KTableState>) {
        self.ktable.store(k.map(Arc::new));
        self.rebuild_handles();
        self.refresh_gauges();
    }

    pub fn set_hedge(&self, t: Option<HedgeState>) {
        self.hedge_budget
            .set_rate(t.as_ref().map_or(0.0, |t| t.table.budget()));
        self.hedge.store(t.map(Arc::new));
        self.refresh_gauges();
    }

    pub fn set_e2e(&self, t: Option<E2eState>) {
        self.e2e.store(t.map(Arc::new));
        self.refresh_gauges();
    }

    /// Update the k-table gauges: age, and `k` of the current window per scenario.
    pub fn refresh_gauges(&self) {
        self.refresh_endpoint_gauges();
        let now = now_ms();
        match self.ktable.load().as_ref() {
            Some(k) => {
                self.metrics.ktable_loaded.set(1);
                self.metrics.ktable_age.set(k.age(now).as_secs_f64());
                let w = k.table.window_of(now);
                for (i, name) in k.table.scenario_names().iter().enumerate() {
                    if let Some(v) = k.table.k(i, w) {
                        self.metrics.k.with_label_values(&[name.as_str()]).set(v);
                    }
                }
            }
            None => {
                self.metrics.ktable_loaded.set(0);
                self.metrics.ktable_age.set(0.0);
            }
        }
        self.metrics
            .hedge_loaded
            .set(i64::from(self.hedge.load().is_some()));
        match self.e2e.load().as_ref() {
            Some(t) => {
                self.metrics.e2e_loaded.set(1);
                self.metrics.e2e_age.set(t.age(now).as_secs_f64());
            }
            None => {
                self.metrics.e2e_loaded.set(0);
                self.metrics.e2e_age.set(0.0);
            }
        }
    }

    /// Update the per-endpoint gauges (active health, passive ejection), dropping the series
    /// of endpoints no longer configured.
    pub fn refresh_endpoint_gauges(&self) {
        let running = self.config.load();
        let now = crate::clock::now_ms();
        let mut current = Vec::new();
        for c in &running.clusters {
            for (i, addr) in c.endpoints.iter().enumerate() {
                let labels = (c.name.clone(), addr.to_string());
                let l = [labels.0.as_str(), labels.1.as_str()];
                let m = &self.metrics;
                m.endpoint_healthy
                    .with_label_values(&l)
                    .set(i64::from(c.healthy(i)));
                m.endpoint_ejected
                    .with_label_values(&l)
                    .set(i64::from(!c.outliers.available(i, now)));
                current.push(labels);
            }
        }
        let mut series = self
            .endpoint_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (c, e) in series.iter().filter(|s| !current.contains(s)) {
            let _ = self.metrics.endpoint_healthy.remove_label_values(&[c, e]);
            let _ = self.metrics.endpoint_ejected.remove_label_values(&[c, e]);
        }
        *series = current;
    }
}
