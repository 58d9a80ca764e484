//! The YAML configuration: what users write ([`Config`]), how it is checked, and the compiled
//! form the proxy runs on ([`Running`]), swapped whole on every reload.
//!
//! - [`settings`]: the process-wide sections, and [`StartOnly`].
//! - [`clusters`]: upstream clusters.
//! - [`routes`]: routes and their chains of filters (each filter's own section is compiled by
//!   its kind, in `hydrus-filters`).
//! - [`errors`], [`locate`]: problems named by file, line, column and field.
//!
//! Unknown fields are errors.

pub mod clusters;
pub mod errors;
pub mod locate;
pub mod routes;
pub mod settings;

pub use crate::cluster::{Cluster, ClusterConfig};
pub use errors::{ConfigError, ConfigErrors};
pub use routes::{LegacyRouteConfig, RouteHandles, RouteRuntime, DEFAULT_ROUTE};
pub use settings::{
    AdminConfig, DemoConfig, HeaderNames, LimitsConfig, ServerSettings, ShutdownConfig, StartOnly,
};

use crate::metrics::Metrics;
use errors::Checker;
use hydrus_filters::route::RouteConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The configuration file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy listens, `IP:PORT`.
    pub listen: String,
    /// Worker threads of the proxy; default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// A built-in demo ranking service, so that a fresh checkout answers curl at once.
    #[serde(default)]
    pub demo_upstream: Option<DemoConfig>,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Protection of the proxy's listener: connections, idle and header deadlines, sizes.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// pingora's runtime settings (start-only).
    #[serde(default)]
    pub server: ServerSettings,
    /// TLS on the proxy's listener (HTTP/1.1 and HTTP/2 by ALPN); without it, clear text
    /// (HTTP/1.1, and HTTP/2 with prior knowledge: h2c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::ListenerTlsConfig>,
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// The identity headers hydrus reads.
    #[serde(default)]
    pub headers: HeaderNames,
    /// The routes, matched in order; each with its cluster and chain of filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteConfig>>,
    /// The single-route shape: one catch-all route to this cluster, running `filters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<LegacyRouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<serde_norway::Value>>,
    /// Trace context and spans over OTLP; without it, `traceparent` passes through untouched
    /// and no span is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::otel::TracingConfig>,
    /// The process log: `text` lines or `json` objects, one per line (start-only).
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
}

/// The running configuration: everything a request needs, checked and compiled once.
#[derive(Clone)]
pub struct Running {
    pub file: PathBuf,
    pub source: Config,
    /// What takes effect only at start.
    pub start: StartOnly,
    pub limits: LimitsConfig,
    pub clusters: Vec<Arc<Cluster>>,
    /// The identity headers (user id, device id, request id, QoE, scenario), in the order of
    /// `hydrus_filters::filter::USER_ID` ...
    pub identity: hydrus_filters::identity::IdentityNames,
    pub routes: Vec<Arc<RouteRuntime>>,
    /// The listener's TLS, when `tls:` is set: each new connection's handshake takes it from
    /// the running config, so a reload rotates certificates.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Warnings that do not stop the config from loading (`hydrus check` prints them).
    pub warnings: Vec<ConfigError>,
    /// How requests are sampled, when `tracing:` is set (reloadable; the exporter is
    /// start-only: removing `tracing:` stops tracing at once, adding it takes a restart).
    pub tracing: Option<crate::otel::Sampling>,
}

impl Running {
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.name == name)
    }

    /// The route a request takes: the first that matches.
    pub fn route_for(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&Arc<RouteRuntime>> {
        self.routes
            .iter()
            .find(|r| r.route.matcher.matches(method, path, headers))
    }

    /// Every filter's hot-reloaded tables.
    pub fn tables(&self) -> Vec<Arc<dyn hydrus_filters::table::ReloadableTable>> {
        self.routes
            .iter()
            .flat_map(|r| r.route.chain.tables())
            .collect()
    }

    /// Update every filter's gauges.
    pub fn refresh_gauges(&self, now_ms: u64) {
        for r in &self.routes {
            r.route.chain.refresh_gauges(now_ms);
        }
    }
}

/// The default config, built into the binary: `hydrus serve` runs it when no `--config` is
/// given and there is no `config/hydrus.yaml` where it runs.
pub const EMBEDDED: &str = include_str!("../../config/hydrus.yaml");

/// Where the default config is looked for, and what the embedded one is anchored at (its
/// relative paths resolve as if it were this file of the current directory).
pub const DEFAULT_PATH: &str = "config/hydrus.yaml";

/// Where a config comes from: a file, or the copy built into the binary.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigFile {
    Path(PathBuf),
    Embedded,
}

impl ConfigFile {
    /// `--config` as given; without it, `config/hydrus.yaml` when there is one here, else the
    /// embedded default.
    pub fn from_flag(flag: Option<PathBuf>) -> Self {
        match flag {
            Some(p) => Self::Path(p),
            None if Path::new(DEFAULT_PATH).exists() => Self::Path(DEFAULT_PATH.into()),
            None => Self::Embedded,
        }
    }

    /// The file's path (the embedded config's anchor).
    pub fn path(&self) -> &Path {
        match self {
            Self::Path(p) => p,
            Self::Embedded => Path::new(DEFAULT_PATH),
        }
    }

    /// Its text now.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Path(p) => std::fs::read(p),
            Self::Embedded => Ok(EMBEDDED.as_bytes().to_vec()),
        }
    }

    /// As messages name it.
    pub fn describe(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Embedded => format!("the embedded default config (as {DEFAULT_PATH})"),
        }
    }
}

/// What a config is loaded for: serving (every endpoint name must resolve here), or `hydrus
/// check`, which may run on another machine than the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    #[default]
    Serve,
    Check,
}

/// Read, parse, check and compile a config file.
pub fn load(file: &Path, m: &Metrics) -> Result<Running, ConfigErrors> {
    load_from(&ConfigFile::Path(file.to_path_buf()), m, Purpose::Serve)
}

/// Read, parse, check and compile a config, for `purpose`.
pub fn load_from(cf: &ConfigFile, m: &Metrics, purpose: Purpose) -> Result<Running, ConfigErrors> {
    let file = cf.path();
    let text = cf
        .read()
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map_err(|e| {
            ConfigErrors(vec![ConfigError::whole(
                file,
                None,
                None,
                format!("cannot read: {e}"),
            )])
        })?;
    load_text(file, &text, m, purpose)
}

/// Parse, check and compile config text; `file` names it in errors and anchors relative paths.
/// Filters register nothing: their metric families are `m`'s.
pub fn load_str(file: &Path, text: &str, m: &Metrics) -> Result<Running, ConfigErrors> {
    load_text(file, text, m, Purpose::Serve)
}

fn load_text(
    file: &Path,
    text: &str,
    m: &Metrics,
    purpose: Purpose,
) -> Result<Running, ConfigErrors> {
    let source: Config = serde_norway::from_str(text).map_err(|e| {
        let loc = e.location();
        // The YAML parser appends " at line L column C" to the message; the prefix says it already.
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) if loc.is_some() => msg[..i].to_string(),
            _ => msg,
        };
        ConfigErrors(vec![ConfigError::whole(
            file,
            loc.as_ref().map(|l| l.line()),
            loc.as_ref().map(|l| l.column()),
            hydrus_filters::filter::with_duration_hint(msg),
        )])
    })?;
    compile(file, text, source, m, purpose)
}

fn compile(
    file: &Path,
    text: &str,
    source: Config,
    m: &Metrics,
    purpose: Purpose,
) -> Result<Running, ConfigErrors> {
    let mut c = Checker::new(file, text);
    c.purpose = purpose;
    let start = start_only(&mut c, &source, file);
    settings::check_limits(&mut c, &source.limits, &source.server);
    let mut clusters = Vec::new();
    if source.clusters.is_empty() {
        c.error("clusters", "at least one cluster is needed");
    }
    let tls = listener_tls(&mut c, &source, file);
    if let Some(t) = &source.tracing {
        for (field, message) in crate::otel::check(t) {
            c.error(field, message);
        }
    }
    for (name, cc) in &source.clusters {
        if let Some(cluster) = clusters::compile_cluster(&mut c, file, name, cc) {
            clusters.push(Arc::new(cluster));
        }
    }
    // Every cluster written, also one with errors: a route naming it is not wrong too (its
    // errors are reported once, at the cluster). (The indices are the running clusters' when
    // every cluster compiled; otherwise the config is refused.)
    let names: Vec<String> = source.clusters.keys().cloned().collect();
    let identity = source.headers.compile(&mut c);
    let routes = routes::compile_routes(
        &mut c,
        routes::RoutesSource {
            routes: source.routes.as_deref(),
            route: source.route.as_ref(),
            filters: source.filters.as_deref(),
        },
        &names,
        &identity,
        m,
    );
    let warnings = c.finish()?;
    // Every field was checked above: on success, the start settings are all there.
    let Some(mut start) = start else {
        return Err(ConfigErrors(Vec::new()));
    };
    start.log = routes.log;
    let tracing = source
        .tracing
        .as_ref()
        .map(crate::otel::TracingConfig::sampling);
    Ok(Running {
        file: file.to_path_buf(),
        limits: source.limits.clone(),
        source,
        start,
        clusters,
        identity: hydrus_filters::identity::IdentityNames::new(identity),
        routes: routes.routes,
        tls,
        warnings,
        tracing,
    })
}

/// The listener's TLS from `tls:`, its files relative to the config's.
fn listener_tls(
    c: &mut Checker<'_>,
    source: &Config,
    file: &Path,
) -> Option<Arc<rustls::ServerConfig>> {
    let t = source.tls.as_ref()?;
    let resolved = crate::tls::ListenerTlsConfig {
        cert_file: relative_to(file, &t.cert_file),
        key_file: relative_to(file, &t.key_file),
        client_ca_file: t.client_ca_file.as_ref().map(|p| relative_to(file, p)),
    };
    if let Some(p) = crate::tls::validity_problem(&resolved.cert_file) {
        c.warn("tls.cert_file", format!("{p}: clients will refuse it"));
    }
    match crate::tls::server_config(&resolved) {
        Ok(sc) => Some(sc),
        Err((field, e)) => {
            c.error(format!("tls.{field}"), e.to_string());
            None
        }
    }
}

/// The start-only settings, checked (the log sink is filled in from the routes).
fn start_only(c: &mut Checker<'_>, source: &Config, file: &Path) -> Option<StartOnly> {
    let listen = c.socket("listen", &source.listen);
    let admin_listen = c.socket("admin.listen", &source.admin.listen);
    if admin_listen.is_some_and(|a| !a.ip().is_loopback()) {
        c.warn(
            "admin.listen",
            "not a loopback address: /config, /metrics and /ktable are open to the network",
        );
    }
    if let Some(demo) = &source.demo_upstream {
        c.socket("demo_upstream.listen", &demo.listen);
    }
    let threads = settings::threads(c, source.threads);
    settings::check_shutdown(c, &source.shutdown);
    let (listen, admin_listen) = (listen?, admin_listen?);
    let upgrade_sock = source
        .shutdown
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| format!("/tmp/hydrus-upgrade-{}.sock", listen.port()));
    let pid_file = match &source.shutdown.pid_file {
        Some(p) => relative_to(file, p),
        None => PathBuf::from(format!("/tmp/hydrus-{}.pid", listen.port())),
    };
    Some(StartOnly {
        listen,
        admin_listen,
        threads,
        server: source.server.clone(),
        shutdown: source.shutdown.clone(),
        pid_file,
        upgrade_sock,
        log: None,
        demo_upstream: source.demo_upstream.clone(),
        tracing: source
            .tracing
            .as_ref()
            .map(crate::otel::TracingConfig::exporter_part),
        log_format: source.log_format,
    })
}

/// Resolve `p` against the directory of the config file.
pub fn relative_to(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
