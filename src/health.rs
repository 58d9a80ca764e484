//! Keeping clusters' endpoints current: one thread with its own small runtime runs each
//! cluster's active health checks (`clusters.NAME.health_check`) every interval, and resolves
//! the names among its endpoints again when due (`clusters.NAME.discovery`), on whatever
//! clusters the running config has, so a reload that adds a cluster or changes its checks is
//! picked up at the next tick.

use crate::cluster::Cluster;
use crate::state::State;
use std::sync::atomic::{AtomicBool, Ordering};
use std::{sync::Arc, time::Duration};

const TICK: Duration = Duration::from_millis(100);

/// Stops the health-check thread when dropped.
pub struct HealthChecks {
    stop: Arc<AtomicBool>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Why the health checks could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the health-check {what}: {source}")]
pub struct HealthError {
    what: &'static str,
    source: std::io::Error,
}

pub fn spawn(state: Arc<State>) -> Result<HealthChecks, HealthError> {
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| HealthError {
            what: "runtime",
            source,
        })?;
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("hydrus-health".into())
        .spawn(move || {
            rt.block_on(async move {
                while !flag.load(Ordering::SeqCst) {
                    let running = state.config.load_full();
                    let now = hydrus_filters::clock::monotonic_ms();
                    for c in &running.clusters {
                        if c.health_check_due(now) {
                            let c = c.clone();
                            tokio::spawn(async move { c.run_health_checks().await });
                        }
                        if c.discovers() && c.rediscover.due(now) {
                            let (c, state) = (c.clone(), state.clone());
                            tokio::spawn(async move { rediscover(&state, &c).await });
                        }
                    }
                    for (name, size) in hydrus_filters::fleet::fleets() {
                        if size.schedule.due(now) {
                            let state = state.clone();
                            tokio::spawn(async move {
                                let (ep, cfg) = crate::state::fleet_query(&name);
                                let found = match ep {
                                    Ok(ep) => hydrus_discovery::resolve(&[ep], &cfg).await,
                                    Err(e) => Err(e),
                                };
                                crate::state::fleet_counted(&state.metrics, &name, &size, found);
                            });
                        }
                    }
                    tokio::time::sleep(TICK).await;
                }
            });
        })
        .map_err(|source| HealthError {
            what: "thread",
            source,
        })?;
    Ok(HealthChecks { stop })
}

/// Resolve a cluster's names again; on a new set, swap in the cluster on it. New addresses
/// join once they pass the active health check (where one is configured); a failed or empty
/// answer keeps the set the cluster has.
async fn rediscover(state: &State, c: &Arc<Cluster>) {
    let cfg = c.discovery();
    let found = hydrus_discovery::resolve(&c.specs, &cfg).await;
    let count = |result: &str| {
        let labels = [c.name.as_str(), result];
        let m = &state.metrics;
        m.discovery_updates.with_label_values(&labels).inc();
    };
    // (The next pass is scheduled once this one is done, so that two never overlap.)
    let done = |after| {
        c.rediscover
            .done(hydrus_filters::clock::monotonic_ms(), after)
    };
    let f = match found {
        Ok(f) => f,
        Err(e) => {
            let n = c.endpoints.len();
            tracing::warn!(cluster = %c.name, "cluster `{}`: {e}; keeping its {n} endpoints", c.name);
            count(e.label());
            return done(cfg.retry_after_failure());
        }
    };
    let next = cfg.next_after(f.ttl);
    let mut addrs = f.addrs;
    // A family that did not answer beside the other: its addresses stay as they were.
    for u in &f.unanswered {
        let same = |(a, h): &&(std::net::SocketAddr, String)| {
            a.is_ipv6() == u.v6 && a.port() == u.port && *h == u.host
        };
        let kept: Vec<_> = c.found.iter().filter(same).cloned().collect();
        for k in kept {
            if !addrs.contains(&k) {
                addrs.push(k);
            }
        }
    }
    addrs.sort();
    let admitted = c.admit(addrs).await;
    if admitted == c.found {
        count("unchanged");
        return done(next);
    }
    let (before, after) = (c.endpoints.len(), admitted.len());
    if state.replace_cluster(c, c.rebuilt(&admitted)) {
        count("changed");
        log::info!("cluster `{}`: {before} -> {after} endpoints", c.name);
    }
    done(next);
}
