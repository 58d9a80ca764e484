//! How many proxies a fleet has, when it is not a fixed number: `proxies: { dns: NAME:PORT }`
//! counts the addresses a name resolves to (a Kubernetes headless Service of the proxies, say).
//! The spend controller divides a fleet's cap by the count; the proxy resolves the names again
//! while serving and stores what it found here. Each name is registered once per process and
//! dropped when no running filter holds it.

use crate::clock::Schedule;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// `proxies: { dns: NAME:PORT }` as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetName {
    /// A name whose addresses are the fleet's proxies (the port is not used).
    pub dns: String,
    /// Resolve it again this often (the records' TTL, when shorter, wins; default 30 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// The DNS server to ask; the system's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<SocketAddr>,
}

impl FleetName {
    /// Whether `dns` is written `NAME:PORT`.
    pub fn problem(&self) -> Option<String> {
        let ok = self
            .dns
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        (!ok).then(|| format!("`{}` is not NAME:PORT", self.dns))
    }
}

/// The size of one fleet, and when its name is resolved next.
#[derive(Debug, Default)]
pub struct FleetSize {
    /// Replicas found at the last good answer; 0 before any.
    count: AtomicU32,
    pub schedule: Schedule,
}

impl FleetSize {
    /// The proxies sharing the fleet's cap: the last count found, 1 before any was found (a
    /// proxy that cannot count its fleet takes the cap as its own, and says so in the log).
    pub fn proxies(&self) -> u32 {
        self.count.load(Relaxed).max(1)
    }

    /// The last count found (0: none yet).
    pub fn found(&self) -> u32 {
        self.count.load(Relaxed)
    }

    pub fn set(&self, n: u32) {
        self.count.store(n, Relaxed);
    }
}

type Registry = BTreeMap<FleetName, Weak<FleetSize>>;

fn registry() -> &'static Mutex<Registry> {
    static FLEETS: std::sync::OnceLock<Mutex<Registry>> = std::sync::OnceLock::new();
    FLEETS.get_or_init(Mutex::default)
}

/// The size of the fleet `name` counts: shared by every filter that names it, so a reload
/// keeps the count found.
pub fn fleet(name: &FleetName) -> Arc<FleetSize> {
    let mut r = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = r.get(name).and_then(Weak::upgrade) {
        return f;
    }
    let f = Arc::new(FleetSize::default());
    r.insert(name.clone(), Arc::downgrade(&f));
    f
}

/// Every fleet a running filter names, to resolve.
pub fn fleets() -> Vec<(FleetName, Arc<FleetSize>)> {
    let mut r = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    r.retain(|_, w| w.strong_count() > 0);
    r.iter()
        .filter_map(|(n, w)| w.upgrade().map(|f| (n.clone(), f)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_size_per_name_while_something_holds_it() {
        let name = FleetName {
            dns: "peers.fleet-test:9901".into(),
            interval: None,
            resolver: None,
        };
        let a = fleet(&name);
        assert_eq!(a.proxies(), 1, "before any count");
        a.set(4);
        assert_eq!(fleet(&name).proxies(), 4, "the same fleet");
        assert!(fleets().iter().any(|(n, _)| *n == name));
        drop(a);
        assert!(
            !fleets().iter().any(|(n, _)| *n == name),
            "dropped with its last holder"
        );
        assert!(FleetName {
            dns: "peers".into(),
            interval: None,
            resolver: None
        }
        .problem()
        .is_some());
    }
}
