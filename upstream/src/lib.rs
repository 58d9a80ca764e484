//! hydrus's upstream clusters, apart from the proxy that uses them: where a cluster's endpoints
//! are (addresses, and names that [`hydrus_discovery`] resolves while serving), which one an
//! attempt goes to (round robin or consistent hashing, active and passive health), and how to
//! reach it (protocol, TLS).
//!
//! - [`cluster`]: the `clusters.NAME` section and the running cluster on one endpoint set.
//! - [`probe`]: active health probes (TCP, HTTP, gRPC health).
//! - [`transport`]: HTTP/1.1, h2c or h2 to the endpoints, as pingora peers.
//! - [`tls`]: certificates and keys, for the listener and to the endpoints.

pub mod cluster;
pub mod probe;
pub mod tls;
pub mod transport;
