//! The `clusters:` section, checked and compiled into running [`Cluster`]s.

use super::errors::{Checker, YEAR};
use super::relative_to;
use crate::cluster::{Cluster, ClusterConfig};
use crate::probe::HealthCheckConfig;
use crate::tls::{UpstreamTls, UpstreamTlsConfig};
use crate::transport::{Transport, UpstreamProtocol};
use http::HeaderValue;
use hydrus_discovery::Endpoint;
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
    let specs = endpoints(c, &field, cc);
    c.duration_positive(&format!("{field}.connect_timeout"), cc.connect_timeout);
    c.duration_positive(&format!("{field}.read_timeout"), cc.read_timeout);
    c.duration_at_most(&format!("{field}.idle_timeout"), cc.idle_timeout, YEAR);
    if let Some(hc) = &cc.health_check {
        health_check(c, &format!("{field}.health_check"), hc);
    }
    outlier_and_retry(c, &field, cc);
    let transport = transport(c, file, &field, cc);
    if c.count() > before {
        return None;
    }
    // Addresses now; names once the cluster runs (`State` resolves them before serving).
    let literal: Vec<(SocketAddr, String)> = specs
        .iter()
        .filter_map(|e| match e {
            Endpoint::Addr(a) => Some((*a, a.ip().to_string())),
            Endpoint::Name { .. } => None,
        })
        .collect();
    Some(Cluster::new(name, cc.clone(), specs, &literal, transport))
}

/// The cluster's protocol and TLS, its files read now (relative to the config's).
fn transport(c: &mut Checker<'_>, file: &Path, field: &str, cc: &ClusterConfig) -> Transport {
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
    let first_name = cc.endpoints.iter().find_map(|e| match Endpoint::parse(e) {
        Ok(Endpoint::Name { host, .. }) => Some(host),
        _ => None,
    });
    let default_name = tls.as_ref().and_then(|t| t.sni.clone()).or(first_name);
    Transport {
        protocol: cc.protocol,
        tls,
        server_names: Vec::new(),
        latest_names: Default::default(),
        default_name: default_name.unwrap_or_default(),
    }
}

fn endpoints(c: &mut Checker<'_>, field: &str, cc: &ClusterConfig) -> Vec<Endpoint> {
    let list = &cc.endpoints;
    if list.is_empty() {
        c.error(
            format!("{field}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let f = format!("{field}.endpoints[{i}]");
        match c.endpoint(&f, e) {
            Some(a) if endpoints.contains(&a) => c.error(f, format!("`{e}` is listed twice")),
            Some(a) => endpoints.push(a),
            None => {}
        }
    }
    if let Some(d) = &cc.discovery {
        let f = format!("{field}.discovery.interval");
        c.duration_at_most(&f, d.interval, YEAR);
        if d.interval < hydrus_discovery::MIN_INTERVAL {
            c.error(f, "at least 1s");
        }
        if !endpoints.iter().any(Endpoint::is_name) {
            c.warn(
                format!("{field}.discovery"),
                "no endpoint is a name: there is nothing to resolve",
            );
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
