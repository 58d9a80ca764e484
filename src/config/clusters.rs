//! The `clusters:` section, checked and compiled into running [`Cluster`]s.

use super::errors::{Checker, YEAR};
use crate::cluster::{Cluster, ClusterConfig, HealthCheckConfig, MAX_RETRIES};
use http::HeaderValue;
use std::net::SocketAddr;

/// Check and compile one cluster; `None` when it has errors (they are in `c`).
pub fn compile_cluster(c: &mut Checker<'_>, name: &str, cc: &ClusterConfig) -> Option<Cluster> {
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
    if c.count() > before {
        return None;
    }
    Some(Cluster::new(name, cc.clone(), endpoints))
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
