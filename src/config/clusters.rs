//! The `clusters:` section, checked and compiled into running [`Cluster`]s.

use super::errors::{Checker, YEAR};
use super::relative_to;
use crate::cluster::{Cluster, ClusterConfig};
use crate::probe::HealthCheckConfig;
use crate::tls::{UpstreamTls, UpstreamTlsConfig};
use crate::transport::{host_of, Transport, UpstreamProtocol};
use http::HeaderValue;
use hydrus_filters::retry::MAX_RETRIES;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Check and compile one cluster; `None` when it has errors (they are in `c`).
pub fn compile_cluster(
    c: &mut Checker<'_>,
    file: &Path,
    name: &str,
    cc: &ClusterConfig,
) -> Option<Cluster> {
    let before = c.count();
    let field = format!("clusters.{name}");
    let endpoints = endpoints(c, &field, &cc.endpoints);
    c.duration_positive(&format!("{field}.connect_timeout"), cc.connect_timeout);
    c.duration_positive(&format!("{field}.read_timeout"), cc.read_timeout);
    c.duration_at_most(&format!("{field}.idle_timeout"), cc.idle_timeout, YEAR);
    if let Some(hc) = &cc.health_check {
        health_check(c, &format!("{field}.health_check"), hc);
    }
    outlier_and_retry(c, &field, cc);
    let transport = transport(c, file, &field, cc, &endpoints);
    if c.count() > before {
        return None;
    }
    Some(Cluster::new(name, cc.clone(), endpoints, transport))
}

/// The cluster's protocol and TLS, its files read now (relative to the config's).
fn transport(
    c: &mut Checker<'_>,
    file: &Path,
    field: &str,
    cc: &ClusterConfig,
    resolved: &[SocketAddr],
) -> Transport {
    let section = match (&cc.tls, cc.protocol) {
        (Some(t), _) => Some(t.clone()),
        (None, UpstreamProtocol::H2) => Some(UpstreamTlsConfig {
            ca_file: None,
            sni: None,
            verify: true,
            client_cert_file: None,
            client_key_file: None,
        }),
        (None, _) => None,
    };
    if cc.tls.is_some() && cc.protocol == UpstreamProtocol::H2c {
        c.error(
            format!("{field}.protocol"),
            "h2c is HTTP/2 in clear text: with `tls:`, write `protocol: h2`",
        );
    }
    if let Some(hc) = &cc.health_check {
        if hc.grpc_service.is_some() && !cc.protocol.is_h2() {
            c.error(
                format!("{field}.health_check.grpc_service"),
                "gRPC health checks need `protocol: h2c` or `h2`",
            );
        }
        if hc.grpc_service.is_some() && hc.path.is_some() {
            c.error(
                format!("{field}.health_check"),
                "either `path` (HTTP) or `grpc_service` (gRPC), not both",
            );
        }
    }
    let tls = section.and_then(|mut t| {
        let resolve = |p: &Option<PathBuf>| p.as_ref().map(|p| relative_to(file, p));
        t.ca_file = resolve(&t.ca_file);
        t.client_cert_file = resolve(&t.client_cert_file);
        t.client_key_file = resolve(&t.client_key_file);
        match UpstreamTls::load(&t) {
            Ok(tls) => Some(tls),
            Err((f, e)) => {
                c.error(format!("{field}.tls.{f}"), e.to_string());
                None
            }
        }
    });
    // (With an endpoint that did not resolve or is listed twice, the cluster is an error.)
    let server_names = resolved
        .iter()
        .zip(&cc.endpoints)
        .map(|(a, e)| {
            let name = tls.as_ref().and_then(|t| t.sni.clone());
            (*a, name.unwrap_or_else(|| host_of(e).to_string()))
        })
        .collect();
    Transport {
        protocol: cc.protocol,
        tls,
        server_names,
    }
}

fn endpoints(c: &mut Checker<'_>, field: &str, list: &[String]) -> Vec<SocketAddr> {
    if list.is_empty() {
        c.error(
            format!("{field}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let f = format!("{field}.endpoints[{i}]");
        if let Some(a) = c.resolve(&f, e) {
            if endpoints.contains(&a) {
                c.error(f, format!("`{e}` ({a}) is listed twice"));
            } else {
                endpoints.push(a);
            }
        }
    }
    if endpoints.len() > u16::MAX as usize {
        c.error(format!("{field}.endpoints"), "at most 65535 endpoints");
    }
    endpoints
}

fn health_check(c: &mut Checker<'_>, f: &str, hc: &HealthCheckConfig) {
    c.duration_positive(&format!("{f}.interval"), hc.interval);
    c.duration_positive(&format!("{f}.timeout"), hc.timeout);
    if hc.healthy_threshold == 0 {
        c.error(format!("{f}.healthy_threshold"), "must be at least 1");
    }
    if hc.unhealthy_threshold == 0 {
        c.error(format!("{f}.unhealthy_threshold"), "must be at least 1");
    }
    if let Some(p) = &hc.path {
        if !p.starts_with('/') || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
            c.error(
                format!("{f}.path"),
                format!("`{p}` is not an absolute request path"),
            );
        }
    }
    if let Some(h) = &hc.host {
        if HeaderValue::from_str(h).is_err() {
            c.error(
                format!("{f}.host"),
                format!("`{h}` is not a valid Host value"),
            );
        }
    }
}

fn outlier_and_retry(c: &mut Checker<'_>, field: &str, cc: &ClusterConfig) {
    let o = &cc.outlier;
    for (f, d) in [
        ("base_ejection_time", o.base_ejection_time),
        ("max_ejection_time", o.max_ejection_time),
    ] {
        c.duration_at_most(&format!("{field}.outlier.{f}"), d, YEAR);
    }
    if let Some(d) = o.stall_after {
        c.duration_at_most(&format!("{field}.outlier.stall_after"), d, YEAR);
    }
    if o.max_ejection_percent > 100 {
        c.error(
            format!("{field}.outlier.max_ejection_percent"),
            "must be 0-100",
        );
    }
    if o.consecutive_failures > 0 {
        c.duration_positive(
            &format!("{field}.outlier.base_ejection_time"),
            o.base_ejection_time,
        );
        if o.max_ejection_time < o.base_ejection_time {
            c.error(
                format!("{field}.outlier.max_ejection_time"),
                "must be at least base_ejection_time",
            );
        }
    }
    let r = &cc.retry;
    if r.attempts > MAX_RETRIES {
        c.error(
            format!("{field}.retry.attempts"),
            format!("at most {MAX_RETRIES}"),
        );
    }
    if !(r.budget_percent.is_finite() && (0.0..=100.0).contains(&r.budget_percent)) {
        c.error(format!("{field}.retry.budget_percent"), "must be 0-100");
    }
}
