//! Where a cluster's endpoints are. An endpoint is written `ADDRESS:PORT` (used as is) or
//! `NAME:PORT`: a name is resolved to all its addresses (A and AAAA) and resolved again while
//! serving, every `discovery.interval` (the records' TTL when shorter, at least 1 s), so the
//! replicas behind a Kubernetes headless Service or a DNS record follow deploys and autoscaling.
//!
//! This crate knows no proxy: it parses endpoints, resolves names, and says when the next
//! resolution is due. The proxy swaps in a cluster built on what it found.

mod endpoint;
mod resolve;

pub use endpoint::{Endpoint, EndpointError};
pub use resolve::{resolve, resolve_blocking, Found, ResolveFailed, Unanswered};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// How often names are resolved again without a `discovery` section.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest interval, whatever the TTL says: a record with TTL 0 is not a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long one name's lookup (its A and AAAA queries, retried) may take before it counts as
/// failed.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this long between tries while a name does not resolve (a shorter interval wins).
pub const FAILURE_RETRY: Duration = Duration::from_secs(5);

/// `clusters.NAME.discovery` (and `proxies: { dns: ... }`'s resolver) as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Resolve the names again this often (the records' TTL, when shorter, wins).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The DNS server to ask (UDP, then TCP for a truncated answer); the system's
    /// (`/etc/resolv.conf`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<SocketAddr>,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            resolver: None,
        }
    }
}

impl DiscoveryConfig {
    /// When to try again after a failed or empty answer: soon, so that a blip at start or
    /// reload does not leave a cluster without endpoints for a whole interval.
    pub fn retry_after_failure(&self) -> Duration {
        self.next_after(Some(FAILURE_RETRY))
    }

    /// When to resolve again after an answer whose shortest TTL was `ttl`.
    pub fn next_after(&self, ttl: Option<Duration>) -> Duration {
        let every = self.interval.max(MIN_INTERVAL);
        ttl.map_or(every, |t| t.min(every)).max(MIN_INTERVAL)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_ttl_wins_but_never_below_a_second() {
        let d = DiscoveryConfig {
            interval: Duration::from_secs(5),
            resolver: None,
        };
        assert_eq!(d.next_after(None), Duration::from_secs(5));
        assert_eq!(
            d.next_after(Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            d.next_after(Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert_eq!(d.next_after(Some(Duration::ZERO)), MIN_INTERVAL);
        let fast = DiscoveryConfig {
            interval: Duration::from_millis(10),
            resolver: None,
        };
        assert_eq!(fast.next_after(None), MIN_INTERVAL);
    }

    #[test]
    fn the_section_reads_as_documented() {
        let d: DiscoveryConfig =
            serde_yaml_like("{\"interval\": \"5s\", \"resolver\": \"127.0.0.1:5353\"}");
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    }

    fn serde_yaml_like(text: &str) -> DiscoveryConfig {
        serde_json::from_str(text).unwrap()
    }
}
