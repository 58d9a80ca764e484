//! The running state every request reads: the config (with its routes, their filters and the
//! filters' tables) in an `ArcSwap`, replaced whole on reload, so a request sees one consistent
//! snapshot and never waits on a lock.

use crate::cluster::Cluster;
use crate::config::Running;
use crate::logsink::LogQueue;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use hydrus_discovery::{DiscoveryConfig, Found, ResolveFailed};
use hydrus_filters::clock::unix_ms;
use hydrus_filters::fleet::{FleetName, FleetSize};
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

/// Resolve the names of the clusters a config just compiled (not those carried over from
/// `old`, which keep their sets), each cluster on a thread of its own: a changed section whose
/// endpoints are written as before starts on the set the old one had; else the names are
/// resolved now, and if that fails the cluster starts on the old one's addresses for the names
/// it still lists (none at start: then it has no endpoint until discovery finds one).
fn resolve_names(running: &mut Running, old: Option<&Running>, metrics: &Metrics) {
    let now = hydrus_filters::clock::monotonic_ms();
    let fresh = |c: &Arc<Cluster>| {
        c.discovers() && !old.is_some_and(|o| o.clusters.iter().any(|o| Arc::ptr_eq(o, c)))
    };
    let before = |c: &Cluster| old.and_then(|o| o.clusters.iter().find(|o| o.name == c.name));
    let answers: Vec<(usize, Result<Found, ResolveFailed>)> = std::thread::scope(|s| {
        let jobs: Vec<_> = running
            .clusters
            .iter()
            .enumerate()
            .filter(|(_, c)| fresh(c))
            .filter(|(_, c)| {
                !before(c).is_some_and(|b| b.specs == c.specs && !b.endpoints.is_empty())
            })
            .map(|(i, c)| {
                let c = c.clone();
                (
                    i,
                    s.spawn(move || hydrus_discovery::resolve_blocking(&c.specs, &c.discovery())),
                )
            })
            .collect();
        jobs.into_iter()
            .map(|(i, j)| {
                (
                    i,
                    j.join()
                        .unwrap_or_else(|_| Err(ResolveFailed::Setup("panicked".into()))),
                )
            })
            .collect()
    });
    for (i, c) in running.clusters.iter_mut().enumerate() {
        if !fresh(c) {
            continue;
        }
        let b = before(c);
        let cfg = c.discovery();
        let found = match answers.iter().find(|(j, _)| *j == i).map(|(_, a)| a) {
            None => b.map(|b| b.found.clone()).unwrap_or_default(),
            Some(Ok(f)) => {
                c.rediscover.done(now, cfg.next_after(f.ttl));
                f.addrs.clone()
            }
            Some(Err(e)) => {
                let kept = b.map(|b| c.still_listed(&b.found)).unwrap_or_default();
                tracing::warn!(
                    cluster = %c.name,
                    "cluster `{}`: {e}; starting on {} endpoints until it resolves",
                    c.name,
                    kept.len()
                );
                let labels = [c.name.as_str(), e.label()];
                metrics.discovery_updates.with_label_values(&labels).inc();
                c.rediscover.done(now, cfg.retry_after_failure());
                let mut all = c.found.clone();
                all.extend(kept.into_iter().filter(|(a, _)| c.position(*a).is_none()));
                all.sort();
                all
            }
        };
        *c = Arc::new(c.rebuilt(&found));
    }
}

/// What to resolve to count a fleet, and how.
pub fn fleet_query(
    name: &FleetName,
) -> (
    Result<hydrus_discovery::Endpoint, ResolveFailed>,
    DiscoveryConfig,
) {
    let cfg = DiscoveryConfig {
        interval: name.interval.unwrap_or(hydrus_discovery::DEFAULT_INTERVAL),
        resolver: name.resolver,
    };
    let ep = hydrus_discovery::Endpoint::parse(&name.dns).map_err(|e| ResolveFailed::Failed {
        name: name.dns.clone(),
        why: e.to_string(),
    });
    (ep, cfg)
}

/// A fleet's name answered (or not): its count, the gauge, and when to ask again. A failed or
/// empty answer keeps the last count.
pub fn fleet_counted(
    metrics: &Metrics,
    name: &FleetName,
    size: &FleetSize,
    found: Result<hydrus_discovery::Found, ResolveFailed>,
) {
    let now = hydrus_filters::clock::monotonic_ms();
    let (_, cfg) = fleet_query(name);
    match found {
        Ok(f) => {
            let n = u32::try_from(f.replicas()).unwrap_or(u32::MAX);
            if n != size.found() {
                log::info!("fleet `{}`: {} -> {n} proxies", name.dns, size.found());
            }
            size.set(n);
            let gauge = metrics
                .fleet_proxies
                .with_label_values(&[name.dns.as_str()]);
            gauge.set(i64::from(n));
            size.schedule.done(now, cfg.next_after(f.ttl));
        }
        Err(e) => {
            let kept = size.proxies();
            tracing::warn!(
                fleet = %name.dns,
                "fleet `{}`: {e}; sharing its cap among {kept} proxies",
                name.dns
            );
            size.schedule.done(now, cfg.retry_after_failure());
        }
    }
}

pub struct State {
    pub config: ArcSwap<Running>,
    pub metrics: Arc<Metrics>,
    pub log: Option<LogQueue>,
    /// The span queue, when `tracing:` was set at start.
    pub traces: Option<crate::otel::export::TraceQueue>,
    /// The (cluster, endpoint) label pairs of the endpoint gauges, to drop those a reload removes.
    endpoint_series: std::sync::Mutex<Vec<(String, String)>>,
    /// False once shutdown began: `/ready` answers 503 so load balancers stop sending.
    pub ready: AtomicBool,
    /// Set once every cluster has had an endpoint (a name may not resolve at start): until then
    /// `/ready` says not ready; a cluster a reload adds does not take readiness away.
    pub endpoints_found: AtomicBool,
    /// Set once the proxy's listener is bound: pingora says it runs before a service's
    /// listeners are bound, and `/ready` must not answer 200 to a port that refuses.
    pub listening: AtomicBool,
    swap: std::sync::Mutex<()>,
}

impl State {
    pub fn new(
        mut running: Running,
        metrics: Arc<Metrics>,
        log: Option<LogQueue>,
        traces: Option<crate::otel::export::TraceQueue>,
    ) -> Self {
        resolve_names(&mut running, None, &metrics);
        for (name, size) in hydrus_filters::fleet::fleets() {
            let (ep, cfg) = fleet_query(&name);
            let found = ep.and_then(|ep| hydrus_discovery::resolve_blocking(&[ep], &cfg));
            fleet_counted(&metrics, &name, &size, found);
        }
        let state = Self {
            config: ArcSwap::from_pointee(running),
            metrics,
            log,
            traces,
            endpoint_series: std::sync::Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            endpoints_found: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            swap: std::sync::Mutex::new(()),
        };
        state.touch_cluster_series(&state.config.load());
        state.refresh_endpoint_gauges();
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
            if c.discovers() {
                for result in ["changed", "unchanged", "failed", "empty"] {
                    self.metrics
                        .discovery_updates
                        .with_label_values(&[c.name.as_str(), result]);
                }
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
        resolve_names(&mut running, Some(&old), &self.metrics);
        // Discovery may have swapped in a carried cluster's next endpoint set while the names
        // above resolved: carry that one (under the lock discovery swaps under).
        let _swapping = self.swapping();
        let current = self.config.load();
        for c in running.clusters.iter_mut() {
            let carried = old.clusters.iter().any(|o| Arc::ptr_eq(o, c));
            if let Some(now) = current.clusters.iter().find(|n| n.name == c.name) {
                if carried && !Arc::ptr_eq(now, c) && now.same_as(c) {
                    *c = now.clone();
                }
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

    /// Put `new` (the same cluster on another endpoint set) in place of `old`, unless a reload
    /// replaced `old` meanwhile. Requests in flight keep the set they started on.
    pub fn replace_cluster(&self, old: &Arc<Cluster>, new: Cluster) -> bool {
        let swapping = self.swapping();
        let cur = self.config.load_full();
        let Some(i) = cur.clusters.iter().position(|c| Arc::ptr_eq(c, old)) else {
            return false;
        };
        let mut r = Running::clone(&cur);
        r.clusters[i] = Arc::new(new);
        self.config.store(Arc::new(r));
        drop(swapping);
        self.touch_cluster_series(&self.config.load());
        self.refresh_endpoint_gauges();
        true
    }

    /// Held while the running config is swapped by a reload or by discovery, so that neither
    /// undoes the other.
    fn swapping(&self) -> std::sync::MutexGuard<'_, ()> {
        self.swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        if running.clusters.iter().all(|c| !c.endpoints.is_empty()) {
            self.endpoints_found
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.metrics.cluster_endpoints.reset();
        for c in &running.clusters {
            self.metrics
                .cluster_endpoints
                .with_label_values(&[c.name.as_str()])
                .set(c.endpoints.len() as i64);
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
            let _ = self.metrics.outlier_ejections.remove_label_values(&[c, e]);
        }
        *series = current;
    }
}
