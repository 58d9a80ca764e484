//! Active health probes: what `clusters.NAME.health_check` says (a TCP connect, an HTTP path,
//! or the gRPC health-checking protocol), built into pingora's checks, each bounded as a whole
//! by its timeout. The health-check runner (`crate::health`) runs them on every cluster.

pub mod grpc;

use crate::transport::Transport;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `GET` this path and expect a 200; without it (and without `grpc_service`), a TCP
    /// connect is the check.
    #[serde(default)]
    pub path: Option<String>,
    /// Ask the gRPC health-checking protocol (`grpc.health.v1.Health/Check`) about this
    /// service (`""`: the server as a whole); only `SERVING` passes. For `h2c`/`h2` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// The `Host` header of the HTTP check (default: the endpoint's address).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Passing checks in a row that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: usize,
    /// Failing checks in a row that take an endpoint out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: usize,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_healthy() -> usize {
    2
}

fn default_unhealthy() -> usize {
    3
}

/// A health check bounded as a whole by its timeout: pingora's checks bound each read, so an
/// endpoint trickling its answer would hold a pass (and every later one) forever.
struct Bounded {
    check: Box<dyn HealthCheck + Send + Sync>,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HealthCheck for Bounded {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match tokio::time::timeout(self.timeout, self.check.check(target)).await {
            Ok(r) => r,
            Err(_) => pingora::Error::e_explain(
                pingora::ErrorType::ReadTimedout,
                "health check took longer than its timeout",
            ),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.check.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}

/// The check `hc` describes, for endpoints reached over `t`, bounded by its timeout.
pub fn build(hc: &HealthCheckConfig, t: &Transport) -> Box<dyn HealthCheck + Send + Sync> {
    Box::new(Bounded {
        check: unbounded_check(hc, t),
        timeout: hc.timeout,
    })
}

fn unbounded_check(hc: &HealthCheckConfig, t: &Transport) -> Box<dyn HealthCheck + Send + Sync> {
    if let Some(service) = &hc.grpc_service {
        return Box::new(grpc::GrpcHealthCheck::new(service, hc, t.clone()));
    }
    match &hc.path {
        None => {
            let mut tcp = TcpHealthCheck::new();
            tcp.consecutive_success = hc.healthy_threshold;
            tcp.consecutive_failure = hc.unhealthy_threshold;
            tcp.peer_template.options.connection_timeout = Some(hc.timeout);
            tcp
        }
        Some(path) => {
            let host = hc.host.as_deref().unwrap_or("localhost");
            let mut http = HttpHealthCheck::new(host, t.tls.is_some());
            if let Some(tls) = &t.tls {
                http.peer_template.options.ca = tls.ca.clone();
                http.peer_template.client_cert_key = tls.client.clone();
                http.peer_template.options.verify_cert = tls.verify;
                http.peer_template.options.verify_hostname = tls.verify;
            }
            if t.protocol.is_h2() {
                http.peer_template.options.set_http_version(2, 2);
            }
            if let Ok(mut req) = pingora::http::RequestHeader::build("GET", path.as_bytes(), None) {
                let _ = req.insert_header("host", host);
                let _ = req.insert_header("user-agent", "hydrus-health-check");
                http.req = req;
            }
            http.consecutive_success = hc.healthy_threshold;
            http.consecutive_failure = hc.unhealthy_threshold;
            http.peer_template.options.connection_timeout = Some(hc.timeout);
            http.peer_template.options.total_connection_timeout = Some(hc.timeout);
            http.peer_template.options.read_timeout = Some(hc.timeout);
            http.peer_template.options.write_timeout = Some(hc.timeout);
            Box::new(http)
        }
    }
}
