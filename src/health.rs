//! Active health checks: one thread with its own small runtime runs each cluster's checks
//! (`clusters.NAME.health_check`) every interval, on whatever clusters the running config has,
//! so a reload that adds a cluster or changes its checks is picked up at the next tick.

use crate::state::State;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
