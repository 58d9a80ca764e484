//! The running state every request reads: the config (with its routes, their filters and the
//! filters' tables) in an `ArcSwap`, replaced whole on reload, so a request sees one consistent
//! snapshot and never waits on a lock.

use crate::config::Running;
use crate::logsink::LogQueue;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use hydrus_filters::clock::unix_ms;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Drop the gauge series of the filters that no longer run: a route gone, or a kind gone from
/// a route.
fn retire_dropped(old: &Running, new: &Running) {
    for o in &old.routes {
        let kept = new.routes.iter().find(|r| r.name() == o.name());
        for s in &o.route.chain.filters {
            let runs =
                kept.is_some_and(|r| r.route.chain.filters.iter().any(|n| n.kind() == s.kind()));
            if !runs {
                s.retire();
            }
        }
    }
}

pub struct State {
    pub config: ArcSwap<Running>,
    pub metrics: Arc<Metrics>,
    pub log: Option<LogQueue>,
    /// The (cluster, endpoint) label pairs of the endpoint gauges, to drop those a reload removes.
    endpoint_series: std::sync::Mutex<Vec<(String, String)>>,
    /// False once shutdown began: `/ready` answers 503 so load balancers stop sending.
    pub ready: AtomicBool,
}

impl State {
    pub fn new(running: Running, metrics: Arc<Metrics>, log: Option<LogQueue>) -> Self {
        let state = Self {
            config: ArcSwap::from_pointee(running),
            metrics,
            log,
            endpoint_series: std::sync::Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
        };
        state.touch_cluster_series(&state.config.load());
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

    /// Swap in a reloaded config. A cluster whose section is unchanged keeps running (its
    /// health, ejections and requests in flight carry over); a route's filters take over the
    /// tables the same route's filters had loaded, when their sources are unchanged.
    pub fn set_config(&self, mut running: Running) {
        let old = self.config.load();
        for c in running.clusters.iter_mut() {
            if let Some(o) = old
                .clusters
                .iter()
                .find(|o| o.name == c.name && o.same_as(c))
            {
                *c = o.clone();
            }
        }
        for r in &running.routes {
            match old.routes.iter().find(|o| o.name() == r.name()) {
                Some(o) => r.adopt(o),
                // A new or renamed route: any table an old route loaded from the same source.
                None => old.routes.iter().for_each(|o| r.adopt(o)),
            }
        }
        self.touch_cluster_series(&running);
        let new = Arc::new(running);
        self.config.store(new.clone());
        retire_dropped(&old, &new);
        self.refresh_gauges();
    }

    /// A table was loaded, replaced or dropped: the routes rebuild what depends on it.
    pub fn tables_changed(&self) {
        for r in &self.config.load().routes {
            r.tables_changed();
        }
        self.refresh_gauges();
    }

    /// Update the gauges: every filter's, and the endpoints'.
    pub fn refresh_gauges(&self) {
        self.refresh_endpoint_gauges();
        self.config.load().refresh_gauges(unix_ms());
    }

    /// Update the per-endpoint gauges (active health, passive ejection), dropping the series
    /// of endpoints no longer configured.
    pub fn refresh_endpoint_gauges(&self) {
        let running = self.config.load();
        let now = hydrus_filters::clock::monotonic_ms();
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
