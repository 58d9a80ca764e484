//! Upstream clusters: the `clusters.NAME` section, and the running cluster that picks an
//! endpoint for each attempt.
//!
//! Endpoints are picked by `pingora-load-balancing` (round robin, or Ketama consistent hashing
//! of the user id so that a user's requests land on the same replica), among those that pass the
//! active health check (TCP connect or an HTTP path, run by [`crate::health`]) and are not set
//! aside by passive outlier detection ([`hydrus_filters::outlier`]). If every endpoint is out,
//! requests go to all of them (Envoy's panic routing) rather than failing.
//!
//! A running cluster is shared across config reloads while its section is unchanged, so health
//! and ejections survive a reload that touches something else. An endpoint written as a name
//! is resolved to all its addresses, and again while serving ([`hydrus_discovery`]): a new set
//! is a new running cluster ([`Cluster::rebuilt`]) that keeps the health, ejections and
//! schedules of the addresses that stay; requests in flight finish on the set they started on.

use crate::probe::{self, HealthCheckConfig};
use crate::tls::UpstreamTlsConfig;
use crate::transport::{Transport, UpstreamProtocol};
use hydrus_discovery::{DiscoveryConfig, Endpoint};
use hydrus_filters::clock::Schedule;
use hydrus_filters::outlier::{OutlierSection, Outliers};
use hydrus_filters::retry::{RetryBudget, RetryConfig, Tried, MAX_RETRIES};
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, HealthRegistry, LoadBalancer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `clusters.NAME` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `ADDRESS:PORT` or `NAME:PORT` of each endpoint; a name stands for all its addresses.
    pub endpoints: Vec<String>,
    /// How names among the endpoints are resolved again while serving (every 30 s through the
    /// system's resolver without this section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for each read from the upstream.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How an endpoint is picked.
    #[serde(default)]
    pub lb: LbPolicy,
    /// Active health checks; none by default.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health: ejecting endpoints that fail.
    #[serde(default)]
    pub outlier: OutlierSection,
    /// Retries of idempotent requests on another endpoint.
    #[serde(default)]
    pub retry: RetryConfig,
    /// What the endpoints speak: `http1`, `h2c` or `h2`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (on by default with `protocol: h2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Ketama hashing of the user id header: a user's requests go to the same endpoint while it
    /// is available. Requests without a user id are spread round robin.
    ConsistentHash,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
}

/// A running cluster.
pub struct Cluster {
    pub name: String,
    pub source: ClusterConfig,
    pub endpoints: Vec<SocketAddr>,
    /// The endpoints with the host each was found for (the name written, or the address).
    pub found: Vec<(SocketAddr, String)>,
    /// Protocol and TLS to the endpoints.
    pub transport: Transport,
    /// The endpoints sorted by address, with their positions.
    by_addr: Vec<(SocketAddr, usize)>,
    backends: Vec<Backend>,
    balancer: Balancer,
    pub outliers: Outliers,
    pub retry: RetryConfig,
    /// Requests in flight to this cluster and the retries among them (shared by its endpoint
    /// sets: one budget whatever set a request started on).
    pub budget: Arc<RetryBudget>,
    /// Round-robin position for hashed clusters' requests without a key.
    unkeyed: AtomicUsize,
    /// When the next active health check is due (ms since start of the process), and whether
    /// one is running.
    next_check_ms: AtomicU64,
    checking: AtomicBool,
    /// The active health of every address, kept across endpoint sets.
    health: Arc<HealthRegistry>,
    /// The endpoints as written, and when their names are resolved next (shared by the
    /// cluster's endpoint sets).
    pub specs: Vec<Endpoint>,
    pub rediscover: Arc<Schedule>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// An upstream endpoint with its cluster's transport and timeouts.
pub fn peer(cluster: &Cluster, i: usize) -> pingora::upstreams::peer::HttpPeer {
    let addr = cluster
        .endpoints
        .get(i)
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut peer = cluster.transport.peer(i, addr);
    let s = &cluster.source;
    peer.options.connection_timeout = Some(s.connect_timeout);
    peer.options.total_connection_timeout = Some(s.connect_timeout);
    peer.options.read_timeout = Some(s.read_timeout);
    // (The proxy's own path drops it for a request without a body, see `upstream_peer`.)
    peer.options.write_timeout = Some(s.read_timeout);
    peer.options.idle_timeout = Some(s.idle_timeout);
    peer
}

fn balancer<S>(backends: &[Backend], health: &Arc<HealthRegistry>) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let set: BTreeSet<Backend> = backends.iter().cloned().collect();
    let view = Backends::new_with_health_registry(Static::new(set), health.clone());
    let lb = LoadBalancer::<S>::from_backends(view);
    // Static discovery answers at once: the balancer is built before this returns.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = {
        let mut update = std::pin::pin!(lb.update());
        update.as_mut().poll(&mut cx)
    };
    match polled {
        std::task::Poll::Ready(Ok(())) => {}
        std::task::Poll::Ready(Err(e)) => log::error!("load balancer: {e}"),
        std::task::Poll::Pending => log::error!("load balancer: static discovery did not answer"),
    }
    lb
}

/// The balancer's backend for an address, weight 1.
fn backend_at(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        // Empty: cloning a Backend with extensions allocates, and the balancer clones the ones
        // it returns (the index is found from the address instead).
        ext: Default::default(),
    }
}

/// What an endpoint set inherits from the set before it.
struct Inherited {
    budget: Arc<RetryBudget>,
    health: Arc<HealthRegistry>,
    outliers: Outliers,
    rediscover: Arc<Schedule>,
}

impl Cluster {
    /// Build a running cluster from its checked section, its endpoints as written, and the
    /// addresses found for them (distinct, each with its server name).
    pub fn new(
        name: &str,
        source: ClusterConfig,
        specs: Vec<Endpoint>,
        found: &[(SocketAddr, String)],
        transport: Transport,
    ) -> Self {
        let o = &source.outlier;
        let inherited = Inherited {
            budget: Arc::default(),
            health: Arc::new(HealthRegistry::new()),
            outliers: Outliers::new(o.config(source.read_timeout), found.len()),
            rediscover: Arc::default(),
        };
        let c = Self::build(name, source, specs, found, transport, inherited);
        if let Some(hc) = &c.source.health_check {
            // Once per cluster section: its endpoint sets share the checks' results.
            c.health.set_health_check(probe::build(hc, &c.transport));
        }
        c
    }

    /// This cluster on another endpoint set (its names resolved again): the addresses that stay
    /// keep their active health and ejections.
    pub fn rebuilt(&self, found: &[(SocketAddr, String)]) -> Self {
        let was: Vec<Option<usize>> = found.iter().map(|(a, _)| self.position(*a)).collect();
        let inherited = Inherited {
            budget: self.budget.clone(),
            health: self.health.clone(),
            outliers: self.outliers.carried(&was),
            rediscover: self.rediscover.clone(),
        };
        let next_check = self.next_check_ms.load(Ordering::Relaxed);
        let c = Self::build(
            &self.name,
            self.source.clone(),
            self.specs.clone(),
            found,
            self.transport.clone(),
            inherited,
        );
        c.next_check_ms.store(next_check, Ordering::Relaxed);
        c
    }

    /// The position of an address among the endpoints.
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.index_of(&backend_at(addr))
    }

    /// Of `found` (another set's addresses), those of names this cluster lists at the same port.
    pub fn still_listed(&self, found: &[(SocketAddr, String)]) -> Vec<(SocketAddr, String)> {
        let listed = |a: &SocketAddr, h: &str| {
            self.specs.iter().any(|e| match e {
                Endpoint::Name { host, port } => {
                    *port == a.port() && host.trim_end_matches('.') == h
                }
                Endpoint::Addr(_) => false,
            })
        };
        found
            .iter()
            .filter(|(a, h)| listed(a, h))
            .cloned()
            .collect()
    }

    /// Whether the endpoints include a name (resolved again while serving).
    pub fn discovers(&self) -> bool {
        self.specs.iter().any(Endpoint::is_name)
    }

    /// How names are resolved: the section's `discovery`, else the defaults.
    pub fn discovery(&self) -> DiscoveryConfig {
        self.source.discovery.clone().unwrap_or_default()
    }

    /// The active health check for new endpoints to pass before they join, if any.
    fn probe(&self) -> Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>> {
        let hc = self.source.health_check.as_ref()?;
        Some(probe::build(hc, &self.transport))
    }

    fn build(
        name: &str,
        source: ClusterConfig,
        specs: Vec<Endpoint>,
        found: &[(SocketAddr, String)],
        mut transport: Transport,
        inherited: Inherited,
    ) -> Self {
        let sni = transport.tls.as_ref().and_then(|t| t.sni.clone());
        transport.server_names = found
            .iter()
            .map(|(a, host)| (*a, sni.clone().unwrap_or_else(|| host.clone())))
            .collect();
        transport
            .latest_names
            .store(Arc::new(transport.server_names.clone()));
        let endpoints: Vec<SocketAddr> = found.iter().map(|(a, _)| *a).collect();
        let health = inherited.health;
        let backends: Vec<Backend> = endpoints.iter().map(|a| backend_at(*a)).collect();
        let balancer = match source.lb {
            LbPolicy::RoundRobin => Balancer::RoundRobin(balancer(&backends, &health)),
            LbPolicy::ConsistentHash => Balancer::Hash(balancer(&backends, &health)),
        };
        let r = &source.retry;
        let mut by_addr: Vec<(SocketAddr, usize)> =
            endpoints.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        by_addr.sort();
        Self {
            by_addr,
            name: name.to_string(),
            retry: RetryConfig {
                attempts: r.attempts.min(MAX_RETRIES),
                ..*r
            },
            source,
            endpoints,
            found: found.to_vec(),
            transport,
            backends,
            balancer,
            outliers: inherited.outliers,
            budget: inherited.budget,
            unkeyed: AtomicUsize::new(0),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            health,
            specs,
            rediscover: inherited.rediscover,
        }
    }

    /// Whether this running cluster can serve as `new` (a reload keeps it): same section
    /// (endpoints as written included: names are resolved by discovery, not by a reload), same
    /// certificates.
    pub fn same_as(&self, new: &Cluster) -> bool {
        self.source == new.source && self.transport.same_tls(&new.transport)
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(usize, bool) -> bool) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let iterations = 4 * n + 8;
        let f = |b: &Backend, healthy: bool| self.index_of(b).is_some_and(|i| accept(i, healthy));
        let picked = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, iterations, f),
            Balancer::Hash(lb) => lb.select_with(key, iterations, f),
        };
        picked.and_then(|b| self.index_of(&b))
    }

    /// The position of a backend among the endpoints (a short scan: clusters are small; a
    /// binary search over the sorted addresses for large ones).
    fn index_of(&self, b: &Backend) -> Option<usize> {
        let pingora::protocols::l4::socket::SocketAddr::Inet(addr) = b.addr else {
            return None;
        };
        if self.endpoints.len() <= 16 {
            return self.endpoints.iter().position(|e| *e == addr);
        }
        self.by_addr
            .binary_search_by(|(a, _)| a.cmp(&addr))
            .ok()
            .map(|k| self.by_addr[k].1)
    }

    /// The endpoint for the next attempt of a request: one it has not tried, healthy and not set
    /// aside if there is one; else any it has not tried (panic routing). `key`: the user id, for
    /// consistent hashing.
    pub fn select(&self, key: Option<&[u8]>, tried: &Tried, now_ms: u64) -> Option<usize> {
        if let Balancer::RoundRobin(_) = &self.balancer {
            // Endpoints in turn (all of weight 1: pingora's round robin would pick the same),
            // without building the balancer's candidate iterator and hashing each candidate to
            // look up its health (looked up only when a health check sets it). A turn per
            // endpoint looked at, as pingora's iterator takes one: those left when one is set
            // aside share its turns evenly, rather than the next in line taking them all.
            let checked = self.source.health_check.is_some();
            let n = self.endpoints.len();
            let first = |ok: &dyn Fn(usize) -> bool| {
                (0..n)
                    .map(|_| self.unkeyed.fetch_add(1, Ordering::Relaxed) % n)
                    .find(|&i| ok(i))
            };
            return first(&|i| {
                !tried.contains(i)
                    && (!checked || self.healthy(i))
                    && self.outliers.available(i, now_ms)
            })
            .or_else(|| first(&|i| self.healthy(i) && !tried.contains(i)))
            .or_else(|| first(&|i| !tried.contains(i)));
        }
        let counter;
        let key: &[u8] = match (&self.balancer, key) {
            (Balancer::Hash(_), Some(k)) if !k.is_empty() => k,
            (Balancer::Hash(_), _) => {
                counter = self.unkeyed.fetch_add(1, Ordering::Relaxed).to_le_bytes();
                &counter
            }
            _ => b"",
        };
        self.select_with(key, |i, healthy| {
            healthy && !tried.contains(i) && self.outliers.available(i, now_ms)
        })
        .or_else(|| self.rotate(|i| self.healthy(i) && !tried.contains(i)))
        .or_else(|| self.rotate(|i| !tried.contains(i)))
    }

    /// The next endpoint in turn that `ok` accepts: the fallback when the balancer finds none
    /// both healthy and available (then requests spread over what is left, Envoy's panic mode).
    fn rotate(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.unkeyed.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
    }

    /// What of `found` may take requests: the addresses the cluster has, and the new ones that
    /// pass its active health check (all, without one). If none would be left, the set the
    /// cluster has; with none, all of `found` (as with every endpoint unhealthy, requests
    /// spread over them rather than fail).
    pub async fn admit(&self, found: Vec<(SocketAddr, String)>) -> Vec<(SocketAddr, String)> {
        let Some(probe) = self.probe() else {
            return found;
        };
        let probe: Arc<dyn pingora::lb::health_check::HealthCheck + Send + Sync> = Arc::from(probe);
        let mut checks = Vec::new();
        for (a, _) in found.iter().filter(|(a, _)| self.position(*a).is_none()) {
            let (probe, addr) = (probe.clone(), *a);
            let b = backend_at(addr);
            checks.push((
                addr,
                tokio::spawn(async move { probe.check(&b).await.is_ok() }),
            ));
        }
        let mut failed = Vec::new();
        for (addr, check) in checks {
            if !check.await.unwrap_or(false) {
                failed.push(addr);
            }
        }
        if !failed.is_empty() {
            log::info!(
                "cluster `{}`: new endpoints {failed:?} failed their health check: not added yet",
                self.name
            );
        }
        let kept: Vec<_> = found
            .iter()
            .filter(|(a, _)| !failed.contains(a))
            .cloned()
            .collect();
        match (kept.is_empty(), self.found.is_empty()) {
            (false, _) => kept,
            (true, false) => self.found.clone(),
            (true, true) => found,
        }
    }

    /// Whether the active health check passes (always, without one).
    pub fn healthy(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().ready(b),
            Balancer::Hash(lb) => lb.backends().ready(b),
        }
    }

    /// Start an active health check pass if one is due: returns whether the caller should run
    /// [`Self::run_health_checks`] now.
    pub fn health_check_due(&self, now_ms: u64) -> bool {
        let Some(hc) = &self.source.health_check else {
            return false;
        };
        if now_ms < self.next_check_ms.load(Ordering::Relaxed)
            || self.checking.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        self.next_check_ms
            .store(now_ms + hc.interval.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// One pass of active health checks over every endpoint, in parallel.
    pub async fn run_health_checks(&self) {
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.checking);
        self.health.run_health_check(true).await;
    }

    /// The endpoint after `a` in order that may take new requests (healthy, not set aside),
    /// else the next one, else `a` itself: where a reissue of a request sent to `a` goes.
    /// Leaves the balancer's rotation alone.
    pub fn other_than(&self, a: usize, now_ms: u64) -> usize {
        let n = self.endpoints.len();
        let next = |k: usize| (a + k) % n.max(1);
        (1..n)
            .map(next)
            .find(|&j| self.healthy(j) && self.outliers.available(j, now_ms))
            .or_else(|| (n > 1).then(|| next(1)))
            .unwrap_or(a)
    }

    /// Whether an endpoint other than `i` may take new requests (healthy, not set aside).
    pub fn others_available(&self, i: usize, now_ms: u64) -> bool {
        (0..self.endpoints.len())
            .any(|j| j != i && self.healthy(j) && self.outliers.available(j, now_ms))
    }
}

#[cfg(test)]
mod tests;
