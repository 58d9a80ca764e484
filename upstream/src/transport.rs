//! How hydrus talks to a cluster's endpoints: `protocol` (HTTP/1.1, HTTP/2 in clear text with
//! prior knowledge, HTTP/2 over TLS) and `tls`, turned into pingora peers.

use crate::tls::UpstreamTls;
use pingora::prelude::HttpPeer;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
    /// The server name of an address not (yet) among those: `tls.sni`, else the first name
    /// among the endpoints (a health check built before discovery found the address).
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
        match self.server_names.iter().position(|(a, _)| *a == addr) {
            Some(i) => self.peer(i, addr),
            None => {
                let mut t = self.clone();
                t.server_names = vec![(addr, self.default_name.clone())];
                t.peer(0, addr)
            }
        }
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
    fn h2_peers_multiplex_and_tls_peers_verify() {
        let t = Transport {
            protocol: UpstreamProtocol::H2c,
            tls: None,
            server_names: vec![],
            default_name: String::new(),
        };
        let p = t.peer(0, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(p.options.alpn.get_min_http_version(), 2);
        assert_eq!(p.options.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        assert!(p.sni.is_empty());
    }
}
