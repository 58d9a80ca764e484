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
//! and ejections survive a reload that touches something else.

use crate::probe::{self, HealthCheckConfig};
use crate::tls::UpstreamTlsConfig;
use crate::transport::{Transport, UpstreamProtocol};
use hydrus_filters::outlier::{OutlierSection, Outliers};
use hydrus_filters::retry::{RetryBudget, RetryConfig, Tried, MAX_RETRIES};
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// `clusters.NAME` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `HOST:PORT` of each endpoint.
    pub endpoints: Vec<String>,
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
    /// Protocol and TLS to the endpoints.
    pub transport: Transport,
    /// The endpoints sorted by address, with their positions.
    by_addr: Vec<(SocketAddr, usize)>,
    backends: Vec<Backend>,
    balancer: Balancer,
    pub outliers: Outliers,
    pub retry: RetryConfig,
    /// Requests in flight to this cluster and the retries among them.
    pub budget: RetryBudget,
    /// Round-robin position for hashed clusters' requests without a key.
    unkeyed: AtomicUsize,
    /// When the next active health check is due (ms since start of the process), and whether
    /// one is running.
    next_check_ms: AtomicU64,
    checking: AtomicBool,
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
    peer.options.write_timeout = Some(s.read_timeout);
    peer.options.idle_timeout = Some(s.idle_timeout);
    peer
}

fn balancer<S>(
    backends: &[Backend],
    hc: Option<&HealthCheckConfig>,
    t: &Transport,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let set: BTreeSet<Backend> = backends.iter().cloned().collect();
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(set)));
    if let Some(hc) = hc {
        lb.set_health_check(probe::build(hc, t));
    }
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

impl Cluster {
    /// Build a running cluster from its checked section and resolved endpoints (distinct).
    pub fn new(
        name: &str,
        source: ClusterConfig,
        endpoints: Vec<SocketAddr>,
        transport: Transport,
    ) -> Self {
        let backends: Vec<Backend> = endpoints
            .iter()
            .map(|a| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                // Empty: cloning a Backend with extensions allocates, and the balancer clones
                // the ones it returns (the index is found from the address instead).
                ext: Default::default(),
            })
            .collect();
        let hc = source.health_check.as_ref();
        let balancer = match source.lb {
            LbPolicy::RoundRobin => Balancer::RoundRobin(balancer(&backends, hc, &transport)),
            LbPolicy::ConsistentHash => Balancer::Hash(balancer(&backends, hc, &transport)),
        };
        let o = &source.outlier;
        let outliers = Outliers::new(o.config(source.read_timeout), endpoints.len());
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
            transport,
            backends,
            balancer,
            outliers,
            budget: RetryBudget::default(),
            unkeyed: AtomicUsize::new(0),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
        }
    }

    /// Whether this running cluster can serve as `new` (a reload keeps it): same section, same
    /// endpoints, same certificates.
    pub fn same_as(&self, new: &Cluster) -> bool {
        self.source == new.source
            && self.endpoints == new.endpoints
            && self.transport.same_as(&new.transport)
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(usize, bool) -> bool) -> Option<usize> {
        let n = self.backends.len();
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
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Balancer::Hash(lb) => lb.backends().run_health_check(true).await,
        }
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
