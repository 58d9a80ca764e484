//! How hydrus talks to a cluster's endpoints: `protocol` (HTTP/1.1, HTTP/2 in clear text with
//! prior knowledge, HTTP/2 over TLS) and `tls`, turned into pingora peers.

use crate::tls::UpstreamTls;
use arc_swap::ArcSwap;
use pingora::prelude::HttpPeer;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// `clusters.NAME.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when `tls:` is set).
    #[default]
    Http1,
    /// HTTP/2 in clear text with prior knowledge: what gRPC servers speak without TLS.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); TLS with the system's roots unless `tls:` says otherwise.
    H2,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

/// Concurrent streams hydrus opens on one HTTP/2 connection to an endpoint before it opens
/// another (pingora's default is one, which would make HTTP/2 a connection per request).
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

/// A cluster's transport, compiled.
#[derive(Clone, Default)]
pub struct Transport {
    pub protocol: UpstreamProtocol,
    pub tls: Option<UpstreamTls>,
    /// Each endpoint's address and server name (SNI and verification, when TLS is on).
    pub server_names: Vec<(SocketAddr, String)>,
    /// The server names of the cluster's latest endpoint set, shared by every clone of this
    /// transport: health checks, set up once per cluster, find addresses discovery added since.
    pub latest_names: Arc<ArcSwap<Vec<(SocketAddr, String)>>>,
    /// The server name of an address in no set: `tls.sni`, else the first name among the
    /// endpoints.
    pub default_name: String,
}

impl Transport {
    /// Whether two transports would connect the same way, whatever their endpoints (a reload
    /// keeps the running cluster, and its pooled connections, only then).
    pub fn same_tls(&self, other: &Transport) -> bool {
        self.protocol == other.protocol
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.fingerprint == b.fingerprint && a.verify == b.verify && a.sni == b.sni
                }
                _ => false,
            }
    }

    /// A peer for the endpoint at `addr` (for health checks, which know endpoints by address).
    pub fn peer_at(&self, addr: SocketAddr) -> HttpPeer {
        if let Some(i) = self.server_names.iter().position(|(a, _)| *a == addr) {
            return self.peer(i, addr);
        }
        let mut t = self.clone();
        t.server_names = vec![(addr, self.server_name_of(addr))];
        t.peer(0, addr)
    }

    /// The server name of an address of the cluster's latest endpoint set, else the default.
    fn server_name_of(&self, addr: SocketAddr) -> String {
        let latest = self.latest_names.load();
        let name = latest.iter().find(|(a, _)| *a == addr).map(|(_, n)| n);
        name.unwrap_or(&self.default_name).clone()
    }

    /// A peer for endpoint `i` at `addr`, without the cluster's timeouts.
    pub fn peer(&self, i: usize, addr: SocketAddr) -> HttpPeer {
        let sni = match &self.tls {
            Some(_) => self
                .server_names
                .get(i)
                .map(|(_, n)| n.clone())
                .unwrap_or_default(),
            None => String::new(),
        };
        let mut peer = HttpPeer::new(addr, self.tls.is_some(), sni);
        if self.protocol.is_h2() {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        } else {
            peer.options.set_http_version(1, 1);
        }
        if let Some(t) = &self.tls {
            // pingora pools connections by address, SNI and client certificate, not by the
            // CA they were verified against: keep each trust's connections apart.
            peer.group_key = t.pool_key;
            peer.options.ca = t.ca.clone();
            peer.client_cert_key = t.client.clone();
            peer.options.verify_cert = t.verify;
            peer.options.verify_hostname = t.verify;
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_set_up_before_an_address_was_found_knows_its_server_name() {
        let t = Transport {
            default_name: "first.svc".into(),
            ..Transport::default()
        };
        let probe = t.clone();
        let (a, b) = (
            SocketAddr::from(([10, 0, 0, 1], 443)),
            SocketAddr::from(([10, 0, 0, 2], 443)),
        );
        t.latest_names.store(Arc::new(vec![
            (a, "second.svc".into()),
            (b, "first.svc".into()),
        ]));
        assert_eq!(probe.server_name_of(a), "second.svc");
        assert_eq!(probe.server_name_of(b), "first.svc");
        let gone = SocketAddr::from(([10, 0, 0, 9], 443));
        assert_eq!(probe.server_name_of(gone), "first.svc");
    }

    #[test]
    fn h2_peers_multiplex_and_tls_peers_verify() {
        let t = Transport {
            protocol: UpstreamProtocol::H2c,
            tls: None,
            server_names: vec![],
            latest_names: Arc::default(),
            default_name: String::new(),
        };
        let p = t.peer(0, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(p.options.alpn.get_min_http_version(), 2);
        assert_eq!(p.options.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        assert!(p.sni.is_empty());
    }
}
