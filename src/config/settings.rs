//! The process-wide sections of the config: listeners, admin, shutdown, limits, pingora's
//! server settings, the identity header names; their checks; and [`StartOnly`], everything
//! that takes effect only at start, compared as a whole on reload so that none is missed.

use super::errors::{Checker, DAY};
use http::HeaderName;
use hydrus_filters::log::LogRuntime;
use hydrus_filters::route::EscapedSlashes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/metrics`, `/ready`, `/config`, `/ktable`. Loopback by default: it shows the config.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub listen: String,
    /// Simulated ranking time per candidate.
    #[serde(default, with = "humantime_serde")]
    pub per_candidate: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM or SIGQUIT, how long in-flight requests get to finish (whole seconds).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    /// Then, how long the runtimes get to stop (whole seconds).
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The socket a new binary takes the listeners over from (`hydrus serve --upgrade`).
    /// Default `/tmp/hydrus-upgrade-PORT.sock` (PORT of `listen`): one per proxy on a host.
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    /// The pid of the serving process (default `/tmp/hydrus-PORT.pid`, PORT of `listen`).
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: default_grace(),
            timeout: default_stop_timeout(),
            upgrade_sock: None,
            pid_file: None,
        }
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

/// pingora's server settings that change what a request costs (measured in `benches/load.sh`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// One multi-threaded runtime whose threads steal each other's tasks (true), or one runtime
    /// per thread (false, the default): a connection, its streams and the upstream connections
    /// it reuses stay on one thread, as in nginx and Envoy, without a wake-up of another thread
    /// per event (measured in `benches/load.sh`: less CPU a request, lower serial latency).
    pub work_stealing: bool,
    /// Accept tasks per listening socket.
    pub listener_tasks_per_fd: usize,
    /// Idle upstream connections kept for reuse, across clusters.
    pub upstream_keepalive_pool_size: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            work_stealing: false,
            listener_tasks_per_fd: 1,
            upstream_keepalive_pool_size: 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open client connections at most; default: from the open-file limit (half of what is left
    /// after a reserve for upstream, admin and log files). At the cap, the longest-idle
    /// keep-alive connections are closed to admit new ones; with none idle, new ones are refused.
    pub max_connections: Option<usize>,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request header must arrive whole within this long of its first byte (of the
    /// connection's opening, for the first request).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body must arrive whole within this long of its header.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Larger request headers (request line and fields) are answered 431.
    pub max_request_header_bytes: usize,
    /// A write to the client that makes no progress for this long ends the request and closes
    /// the connection; an HTTP/2 stream whose flow-control window stays shut this long is
    /// reset. A client that stops reading holds its upstream connection and buffers no longer.
    /// 60 s, as nginx's `send_timeout`: the timer is armed only when a write blocks.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// A request path with an encoded slash or backslash (`%2F`, `%5C`, `\`): `reject` (400)
    /// or `unescape` (read as `/`, then routed and forwarded normalized).
    pub escaped_slashes: EscapedSlashes,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 << 10,
            send_timeout: Duration::from_secs(60),
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Names of the request headers hydrus reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderNames {
    pub user_id: String,
    pub device_id: String,
    pub request_id: String,
    pub qoe: String,
    pub scenario: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            user_id: "x-user-id".into(),
            device_id: "x-device-id".into(),
            request_id: "x-request-id".into(),
            qoe: "x-qoe-score".into(),
            scenario: "x-scenario".into(),
        }
    }
}

impl HeaderNames {
    /// Compiled, in the order of `hydrus_filters::filter::USER_ID` ... (a bad name is an error
    /// and keeps its default).
    pub fn compile(&self, c: &mut Checker<'_>) -> [HeaderName; 5] {
        let fields = [
            ("user_id", &self.user_id, "x-user-id"),
            ("device_id", &self.device_id, "x-device-id"),
            ("request_id", &self.request_id, "x-request-id"),
            ("qoe", &self.qoe, "x-qoe-score"),
            ("scenario", &self.scenario, "x-scenario"),
        ];
        fields.map(|(field, name, default)| {
            c.problems
                .header_name(&format!("headers.{field}"), name)
                .unwrap_or(HeaderName::from_static(default))
        })
    }
}

/// Everything that takes effect only when the process starts (or is upgraded). A reload that
/// changes any of it says so: it is compared as a whole, so no setting can be missed.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOnly {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub server: ServerSettings,
    pub shutdown: ShutdownConfig,
    pub pid_file: PathBuf,
    pub upgrade_sock: String,
    /// The log queue and sink: one per process.
    pub log: Option<LogRuntime>,
    pub demo_upstream: Option<DemoConfig>,
    /// The span exporter's settings (its sampling fields are reloadable: see
    /// [`super::Running::tracing`]; here at their defaults, so that changing them is no
    /// start-only change).
    pub tracing: Option<crate::otel::TracingConfig>,
    pub log_format: crate::logging::LogFormat,
}

impl StartOnly {
    /// The names of the settings that differ (for the reload warning).
    pub fn changed(&self, new: &StartOnly) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |differs: bool, name: &'static str| {
            if differs {
                out.push(name);
            }
        };
        note(self.listen != new.listen, "listen");
        note(self.admin_listen != new.admin_listen, "admin.listen");
        note(self.threads != new.threads, "threads");
        note(self.server != new.server, "server.*");
        note(
            self.shutdown != new.shutdown
                || self.pid_file != new.pid_file
                || self.upgrade_sock != new.upgrade_sock,
            "shutdown.*",
        );
        note(self.log != new.log, "the log filter's sink and queue");
        note(self.demo_upstream != new.demo_upstream, "demo_upstream");
        note(self.log_format != new.log_format, "log_format");
        note(
            self.tracing != new.tracing,
            "tracing's exporter (added, or otlp, queue_capacity, max_batch, flush_interval, service_name changed)",
        );
        out
    }
}

/// Check the process-wide sections.
pub fn check_limits(c: &mut Checker<'_>, l: &LimitsConfig, sv: &ServerSettings) {
    if l.max_connections == Some(0) {
        c.error("limits.max_connections", "must be at least 1");
    }
    for (f, d) in [
        ("limits.idle_timeout", l.idle_timeout),
        ("limits.header_timeout", l.header_timeout),
        ("limits.body_timeout", l.body_timeout),
        ("limits.send_timeout", l.send_timeout),
    ] {
        c.duration_positive(f, d);
        c.duration_at_most(f, d, DAY);
    }
    if l.max_request_header_bytes < 1024 {
        c.error("limits.max_request_header_bytes", "must be at least 1024");
    }
    if !(1..=64).contains(&sv.listener_tasks_per_fd) {
        c.error("server.listener_tasks_per_fd", "must be 1-64");
    }
    if sv.upstream_keepalive_pool_size > 1_000_000 {
        c.error(
            "server.upstream_keepalive_pool_size",
            "must be at most 1000000",
        );
    }
}

/// Check the shutdown section.
pub fn check_shutdown(c: &mut Checker<'_>, s: &ShutdownConfig) {
    if s.upgrade_sock.as_deref() == Some("") {
        c.error("shutdown.upgrade_sock", "must not be empty");
    }
    for (f, d) in [
        ("shutdown.grace_period", s.grace_period),
        ("shutdown.timeout", s.timeout),
    ] {
        c.duration_at_most(f, d, DAY);
        if d.subsec_nanos() != 0 {
            c.error(
                f,
                format!(
                    "`{}` is not whole seconds: pingora counts its shutdown in seconds (write e.g. `2s`)",
                    humantime::format_duration(d)
                ),
            );
        }
    }
}

/// The worker threads: as configured, else one per CPU.
pub fn threads(c: &mut Checker<'_>, configured: Option<usize>) -> usize {
    match configured {
        Some(0) => {
            c.error("threads", "must be at least 1");
            1
        }
        Some(n) if n > 1024 => {
            c.error("threads", "must be at most 1024");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}
