//! Resolving a cluster's endpoints: every name to all its addresses, A and AAAA asked
//! separately, with a resolver built for this pass alone (so an answer is never reused past
//! its pass, whatever the resolver's cache would keep).

use crate::{DiscoveryConfig, Endpoint, QUERY_TIMEOUT};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, Resolver, TokioResolver};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// What one pass found: each address with the host it was written as (its TLS server name),
/// sorted by address; the shortest TTL among the answers; and the address families a name got
/// no answer for while the other family answered (the caller keeps what it had for those).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    pub addrs: Vec<(SocketAddr, String)>,
    pub ttl: Option<Duration>,
    pub unanswered: Vec<Unanswered>,
}

/// A name's address family whose query failed (not "no such record") beside answers of the
/// other family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub host: String,
    pub port: u16,
    pub v6: bool,
}

impl Found {
    /// How many replicas the answer names: the larger of its IPv4 and IPv6 address counts (a
    /// dual-stack replica has one of each).
    pub fn replicas(&self) -> usize {
        let v6 = self.addrs.iter().filter(|(a, _)| a.is_ipv6()).count();
        v6.max(self.addrs.len() - v6)
    }
}

/// Why a pass found nothing usable: the cluster keeps the addresses it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveFailed {
    #[error("`{name}` did not resolve: {why}")]
    Failed { name: String, why: String },
    #[error("`{name}` has no A or AAAA record")]
    Empty { name: String },
    #[error("cannot set up a DNS resolver: {0}")]
    Setup(String),
}

impl ResolveFailed {
    /// The `result` label of `hydrus_discovery_updates_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "empty",
            _ => "failed",
        }
    }
}

fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, ResolveFailed> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match cfg.resolver {
        Some(server) => {
            let mut rc = ResolverConfig::new();
            rc.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            rc.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
            Resolver::builder_with_config(rc, provider)
        }
        None => Resolver::builder(provider).map_err(|e| ResolveFailed::Setup(e.to_string()))?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 2;
    opts.cache_size = 0;
    Ok(builder.build())
}

/// Resolve every name among `endpoints` (addresses are kept as written). Fails when any name
/// fails: a cluster's set changes only on a whole answer. An AAAA failure beside A answers (or
/// the reverse) is not a failure: it is listed in [`Found::unanswered`].
pub async fn resolve(
    endpoints: &[Endpoint],
    cfg: &DiscoveryConfig,
) -> Result<Found, ResolveFailed> {
    let mut found: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut ttl: Option<Duration> = None;
    let mut unanswered = Vec::new();
    let names = endpoints.iter().any(Endpoint::is_name);
    let r = if names { Some(resolver(cfg)?) } else { None };
    for e in endpoints {
        match (e, &r) {
            (Endpoint::Addr(a), _) => {
                found.entry(*a).or_insert_with(|| a.ip().to_string());
            }
            (Endpoint::Name { host, port }, Some(r)) => {
                let failed = |why: String| ResolveFailed::Failed {
                    name: host.clone(),
                    why,
                };
                let answer = tokio::time::timeout(QUERY_TIMEOUT, lookup(r, host))
                    .await
                    .map_err(|_| failed(format!("no answer within {QUERY_TIMEOUT:?}")))??;
                if let Some(t) = answer.ttl {
                    ttl = Some(ttl.map_or(t, |x| x.min(t)));
                }
                let server_name = host.trim_end_matches('.');
                for ip in answer.ips {
                    found
                        .entry(SocketAddr::new(ip, *port))
                        .or_insert_with(|| server_name.to_string());
                }
                unanswered.extend(answer.unanswered.map(|v6| Unanswered {
                    host: server_name.to_string(),
                    port: *port,
                    v6,
                }));
            }
            (Endpoint::Name { .. }, None) => {}
        }
    }
    Ok(Found {
        addrs: found.into_iter().collect(),
        ttl,
        unanswered,
    })
}

/// One name's answer: its addresses, the shortest TTL (none from the system's resolver), and
/// the family that failed beside answers of the other (`Some(true)`: IPv6).
struct Answer {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
    unanswered: Option<bool>,
}

/// A and AAAA for one name, as written: a name without a final dot gets the resolver's search
/// domains (`ranker.prod` in Kubernetes), as with the system's resolver. `localhost` is asked
/// of the system's resolver (`/etc/hosts`), which may give it one address where a DNS
/// resolver would give two.
async fn lookup(r: &TokioResolver, host: &str) -> Result<Answer, ResolveFailed> {
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        let ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| ResolveFailed::Failed {
                name: host.to_string(),
                why: e.to_string(),
            })?
            .map(|a| a.ip())
            .collect();
        return Ok(Answer {
            ips,
            ttl: None,
            unanswered: None,
        });
    }
    let (v4, v6) = tokio::join!(r.ipv4_lookup(host), r.ipv6_lookup(host));
    let now = Instant::now();
    let left = |until: Instant| until.saturating_duration_since(now);
    let mut ips = Vec::new();
    let mut ttl = None::<Duration>;
    let (mut e4, mut e6) = (None::<ResolveError>, None::<ResolveError>);
    match v4 {
        Ok(l) => {
            ttl = Some(left(l.valid_until()));
            ips.extend(l.iter().map(|a| IpAddr::V4(a.0)));
        }
        Err(e) => e4 = Some(e),
    }
    match v6 {
        Ok(l) => {
            let t = left(l.valid_until());
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
            ips.extend(l.iter().map(|a| IpAddr::V6(a.0)));
        }
        Err(e) => e6 = Some(e),
    }
    let failed = |e: &Option<ResolveError>| e.as_ref().is_some_and(|e| !e.is_no_records_found());
    if !ips.is_empty() {
        let unanswered = if failed(&e4) {
            Some(false)
        } else if failed(&e6) {
            Some(true)
        } else {
            None
        };
        return Ok(Answer {
            ips,
            ttl,
            unanswered,
        });
    }
    match [e4, e6]
        .into_iter()
        .flatten()
        .find(|e| !e.is_no_records_found())
    {
        Some(e) => Err(ResolveFailed::Failed {
            name: host.to_string(),
            why: e.to_string(),
        }),
        None => Err(ResolveFailed::Empty {
            name: host.to_string(),
        }),
    }
}

/// [`resolve`] from code that is not async (loading a config): on a runtime of its own, on a
/// thread of its own when called from within a runtime.
pub fn resolve_blocking(
    endpoints: &[Endpoint],
    cfg: &DiscoveryConfig,
) -> Result<Found, ResolveFailed> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ResolveFailed::Setup(e.to_string()))?
            .block_on(resolve(endpoints, cfg))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|_| Err(ResolveFailed::Setup("the resolver thread panicked".into())))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_no_resolver() {
        let eps = [
            Endpoint::parse("127.0.0.2:80").unwrap(),
            Endpoint::parse("127.0.0.1:80").unwrap(),
            Endpoint::parse("127.0.0.2:80").unwrap(),
        ];
        // A resolver that does not exist is never asked.
        let cfg = DiscoveryConfig {
            resolver: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        };
        let f = resolve_blocking(&eps, &cfg).unwrap();
        let addrs: Vec<String> = f.addrs.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:80", "127.0.0.2:80"]);
        assert_eq!(f.ttl, None);
    }

    #[test]
    fn localhost_is_what_the_system_says_and_replicas_count_each_family_once() {
        let eps = [Endpoint::parse("localhost:80").unwrap()];
        let cfg = DiscoveryConfig {
            resolver: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        };
        let f = resolve_blocking(&eps, &cfg).unwrap();
        let system: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs("localhost:80")
            .unwrap()
            .collect();
        assert!(
            f.addrs.iter().all(|(a, _)| system.contains(a)),
            "{f:?} {system:?}"
        );
        assert!(f.addrs.iter().all(|(_, h)| h == "localhost"));
        let dual = Found {
            addrs: ["10.0.0.1:80", "10.0.0.2:80", "[fd00::1]:80", "[fd00::2]:80"]
                .iter()
                .map(|a| (a.parse().unwrap(), "x".to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(dual.replicas(), 2);
    }

    #[test]
    fn a_resolver_that_does_not_answer_is_a_failure_not_an_empty_set() {
        let eps = [Endpoint::parse("ranker.test:80").unwrap()];
        let cfg = DiscoveryConfig {
            // Nothing listens on the discard port of loopback: refused (or a timeout).
            resolver: Some("127.0.0.1:9".parse().unwrap()),
            ..Default::default()
        };
        let started = Instant::now();
        let e = resolve_blocking(&eps, &cfg).unwrap_err();
        assert_eq!(e.label(), "failed", "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
