//! The YAML configuration: what users write (`Config`), how it is checked, and the compiled form
//! the proxy runs on (`Running`), swapped whole on every reload.
//!
//! Every error names the file, line and column, and the path of the field at fault, as
//! `envoy --mode validate` does. Unknown fields are errors.

pub use crate::cluster::{Cluster, ClusterConfig};
use crate::locate::Locator;
use http::{HeaderName, HeaderValue};
use hydrus_filters::{HydrusFilter, QoeRange, Rollout, Strategy, StrategySet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest duration a setting may have: longer ones are mistakes (and could overflow clocks).
const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Most scenarios a config may declare (each labels metric series).
pub const MAX_SCENARIOS: usize = 256;

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
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Where requests go when no filter says otherwise.
    pub route: RouteConfig,
    #[serde(default)]
    pub headers: HeaderNames,
    /// The filter chain, in order: each entry a one-key map, `- rollout: {...}`.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub filters: Vec<FilterConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub listen: String,
    /// Simulated ranking time per candidate.
    #[serde(default, with = "humantime_serde")]
    pub per_candidate: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// per thread.
    pub work_stealing: bool,
    /// Accept tasks per listening socket.
    pub listener_tasks_per_fd: usize,
    /// Idle upstream connections kept for reuse, across clusters.
    pub upstream_keepalive_pool_size: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            work_stealing: true,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub cluster: String,
}

/// Names of the request headers hydrus reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// One entry of the filter chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    Rollout(RolloutConfig),
    Hydrus(HydrusConfig),
    E2e(E2eConfig),
    Hedge(HedgeConfig),
    Log(LogConfig),
}

impl FilterConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            FilterConfig::Rollout(_) => "rollout",
            FilterConfig::Hydrus(_) => "hydrus",
            FilterConfig::E2e(_) => "e2e",
            FilterConfig::Hedge(_) => "hedge",
            FilterConfig::Log(_) => "log",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Share of users in treatment, 0-100; fractions allowed.
    pub percent: f64,
    /// Changing the salt reshuffles which users are in treatment.
    #[serde(default = "default_salt")]
    pub salt: String,
}

fn default_salt() -> String {
    "hydrus".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydrusConfig {
    /// What control traffic and every fallback gets.
    pub default_strategy: String,
    /// `[min, max]` a QoE value must lie in; default `[0, 1]`.
    #[serde(default)]
    pub qoe_range: Option<[f64; 2]>,
    /// The scenarios a request may name in the scenario header (besides `default`); without
    /// this list, the k-table's rows. Other values are never used as a key.
    #[serde(default)]
    pub scenarios: Option<Vec<String>>,
    pub ktable: KTableSourceConfig,
    pub strategies: Vec<StrategyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KTableSourceConfig {
    /// A k-table file, reloaded when it changes (relative to this config file).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or an `http://` URL, polled with `If-None-Match`.
    #[serde(default)]
    pub url: Option<String>,
    /// How often the URL (or, as a backstop to file events, the file) is checked.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A table older than this (by its `generated_at_ms`, else the file's or response's
    /// modification time) is stale: requests fall back to the default strategy.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    pub name: String,
    /// Resource cost per request, in the unit the budget is in (e.g. ms of ranking time).
    pub cost: f64,
    /// QoE under this strategy relative to the default strategy's (the paper's coefficient).
    #[serde(default = "default_scale")]
    pub qoe_scale: f64,
    /// The upstream cluster; default: `route.cluster`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Request headers set (replaced) upstream.
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Query parameters set (replaced) upstream, e.g. the candidate count.
    #[serde(default)]
    pub set_query: BTreeMap<String, String>,
}

fn default_scale() -> f64 {
    1.0
}

/// The E2E filter: route by external delay among replica groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eConfig {
    /// The header the front end tags the external delay in (milliseconds).
    #[serde(default = "default_e2e_header")]
    pub header: String,
    /// Clusters that are replicas of each other; the default policy balances across them.
    pub groups: Vec<String>,
    /// The decision table written by `hydrus solve --policy e2e` (same fields as `ktable`).
    pub table: KTableSourceConfig,
    /// A request header set to the bucket's priority, when the table gives one.
    #[serde(default)]
    pub priority_header: Option<String>,
    /// The QoE model the controller optimizes: `max / (1 + exp((delay - d50) / width))`.
    #[serde(default)]
    pub qoe_model: QoeModelConfig,
}

fn default_e2e_header() -> String {
    "x-external-delay-ms".into()
}

/// The hedge filter: reissue slow idempotent requests within a budget (Kwiken).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// Per-route reissue timeouts, written by `hydrus solve --policy hedge` (fields as `ktable`).
    pub table: KTableSourceConfig,
    /// Hedged responses are buffered whole; larger ones fail the attempt.
    #[serde(default = "default_hedge_body")]
    pub max_body_bytes: usize,
    /// Reissue tokens that may be saved up for a burst.
    #[serde(default = "default_hedge_burst")]
    pub burst: f64,
}

fn default_hedge_body() -> usize {
    4 << 20
}

fn default_hedge_burst() -> f64 {
    10.0
}

/// The hedge filter, compiled.
#[derive(Debug, Clone)]
pub struct HedgeRuntime {
    pub table: KTableSource,
    pub max_body_bytes: usize,
    pub burst: f64,
}

/// A sigmoid QoE-vs-total-delay curve (E2E, Appendix B).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QoeModelConfig {
    pub d50_ms: f64,
    pub width_ms: f64,
    #[serde(default = "default_scale")]
    pub max: f64,
}

impl Default for QoeModelConfig {
    fn default() -> Self {
        Self {
            d50_ms: 2000.0,
            width_ms: 400.0,
            max: 1.0,
        }
    }
}

impl QoeModelConfig {
    pub fn qoe(&self, delay_ms: f64) -> f64 {
        self.max / (1.0 + ((delay_ms - self.d50_ms) / self.width_ms).exp())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Records waiting for the sink; when full, new records are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    #[serde(default)]
    pub file: Option<FileSinkConfig>,
    #[serde(default)]
    pub kafka: Option<KafkaSinkConfig>,
    /// At shutdown, how long the sink may take to write what is queued.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

fn default_queue() -> usize {
    65_536
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory of JSON-lines files, one per window (relative to this config file).
    pub dir: PathBuf,
    /// Window length for file rotation; matches the k-table's windows.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Also rotate when a file reaches this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Buffered records are written at least this often.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(900)
}

fn default_rotate_bytes() -> u64 {
    256 << 20
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    pub topic: String,
    /// Extra librdkafka producer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field at fault, e.g. `filters[1].hydrus.strategies[0].cluster`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// All problems found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What applying a strategy does to the upstream request.
#[derive(Debug, Clone)]
pub struct StrategyAction {
    pub cluster: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Vec<(String, String)>,
    /// The strategy's name as a header value, for `x-hydrus-strategy`.
    pub name_value: HeaderValue,
}

/// Header names, compiled.
#[derive(Debug, Clone)]
pub struct Headers {
    pub user_id: HeaderName,
    pub device_id: HeaderName,
    pub request_id: HeaderName,
    pub qoe: HeaderName,
    pub scenario: HeaderName,
}

impl Headers {
    /// The headers hydrus reads and forwards exactly as it read them.
    pub fn all(&self) -> [&HeaderName; 5] {
        [
            &self.user_id,
            &self.device_id,
            &self.request_id,
            &self.qoe,
            &self.scenario,
        ]
    }
}

/// Headers that frame a message or concern one hop: never set by a strategy (they would also
/// become "owned" and be stripped from every client request).
const HOP_OR_FRAMING: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "expect",
];

/// A header name as servers that fold `_` into `-` (CGI, WSGI, some proxies) see it.
pub fn normalized(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.contains('_') {
        std::borrow::Cow::Owned(s.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The hydrus filter, compiled.
#[derive(Debug, Clone)]
pub struct HydrusRuntime {
    pub filter: HydrusFilter,
    pub actions: Vec<StrategyAction>,
    pub ktable: KTableSource,
    /// Every header any strategy sets: removed from what the client sent on every request.
    pub owned_headers: Vec<HeaderName>,
    /// Every query key any strategy sets: likewise.
    pub owned_query: Vec<String>,
}

/// Where the k-table comes from, with relative paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct KTableSource {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub poll_interval: Duration,
    pub max_age: Option<Duration>,
}

/// The e2e filter, compiled.
#[derive(Debug, Clone)]
pub struct E2eRuntime {
    pub header: HeaderName,
    /// Cluster indices of the groups, in config order (the table's `groups` must match).
    pub groups: Vec<usize>,
    pub group_names: Vec<String>,
    pub table: KTableSource,
    pub priority_header: Option<HeaderName>,
    pub qoe_model: QoeModelConfig,
}

/// The log filter, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRuntime {
    pub queue_capacity: usize,
    pub sink: SinkConfig,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    File(FileSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// The running configuration: everything a request needs, checked and compiled once.
#[derive(Debug, Clone)]
pub struct Running {
    pub file: PathBuf,
    pub source: Config,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub clusters: Vec<std::sync::Arc<Cluster>>,
    pub default_cluster: usize,
    pub headers: Headers,
    pub rollout: Option<Rollout>,
    pub rollout_percent: Option<f64>,
    pub hydrus: Option<HydrusRuntime>,
    pub e2e: Option<E2eRuntime>,
    pub hedge: Option<HedgeRuntime>,
    pub log: Option<LogRuntime>,
    pub pid_file: PathBuf,
    pub upgrade_sock: String,
    pub limits: LimitsConfig,
    /// Warnings that do not stop the config from loading (`hydrus check` prints them).
    pub warnings: Vec<ConfigError>,
}

impl Running {
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.name == name)
    }
}

struct Checker<'a> {
    file: &'a Path,
    locator: Locator,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Checker<'_> {
    fn at(&self, field: String, message: String) -> ConfigError {
        let at = self.locator.find(&field);
        ConfigError {
            file: self.file.to_path_buf(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            field: Some(field),
            message,
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let e = self.at(field.into(), message.into());
        self.errors.push(e);
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let w = self.at(field.into(), message.into());
        self.warnings.push(w);
    }

    fn socket(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(field, format!("`{text}` is not an IP:PORT address"));
                None
            }
        }
    }

    fn resolve(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        match text.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                self.error(field, format!("`{text}` is not a HOST:PORT that resolves"));
                None
            }
        }
    }

    fn header_name(&mut self, field: &str, text: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(field, format!("`{text}` is not a valid header name"));
                None
            }
        }
    }

    /// Longer than zero, and at most a year (longer is a mistake, and could overflow clocks).
    fn duration_positive(&mut self, field: &str, d: Duration) {
        if d.is_zero() {
            self.error(field, "must be longer than 0");
        }
        self.duration_at_most(field, d, YEAR);
    }

    fn duration_at_most(&mut self, field: &str, d: Duration, max: Duration) {
        if d > max {
            self.error(
                field,
                format!("must be at most {}", humantime::format_duration(max)),
            );
        }
    }
}

/// Resolve `p` against the directory of the config file.
fn relative_to(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn query_text_ok(s: &str, is_key: bool) -> bool {
    !s.bytes().any(|b| {
        b.is_ascii_control() || b == b' ' || b == b'&' || b == b'#' || (is_key && b == b'=')
    })
}

/// Read, parse, check and compile a config file.
pub fn load(file: &Path) -> Result<Running, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    load_str(file, &text)
}

/// Parse, check and compile config text; `file` names it in errors and anchors relative paths.
pub fn load_str(file: &Path, text: &str) -> Result<Running, ConfigErrors> {
    let source: Config = serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location();
        // serde_yaml appends " at line L column C" to the message; the prefix says it already.
        let msg = e.to_string();
        let mut msg = match msg.find(" at line ") {
            Some(i) if loc.is_some() => msg[..i].to_string(),
            _ => msg,
        };
        // humantime's complaints: say what a duration looks like.
        if [
            "expected a duration",
            "expected number",
            "unknown time unit",
            "time unit needed",
            "number is too large",
        ]
        .iter()
        .any(|p| msg.contains(p))
        {
            msg.push_str(" (durations are written like 500ms, 2s, 15m, 1h, 1h30m)");
        }
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: None,
            message: msg,
        }])
    })?;
    compile(file, text, source)
}

fn compile(file: &Path, text: &str, source: Config) -> Result<Running, ConfigErrors> {
    let mut c = Checker {
        file,
        locator: Locator::new(text),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let listen = c.socket("listen", &source.listen);
    let admin_listen = c.socket("admin.listen", &source.admin.listen);
    if admin_listen.is_some_and(|a| !a.ip().is_loopback()) {
        c.warn(
            "admin.listen",
            "not a loopback address: /config, /metrics and /ktable are open to the network",
        );
    }
    let l = &source.limits;
    if l.max_connections == Some(0) {
        c.error("limits.max_connections", "must be at least 1");
    }
    c.duration_positive("limits.idle_timeout", l.idle_timeout);
    c.duration_positive("limits.header_timeout", l.header_timeout);
    c.duration_positive("limits.body_timeout", l.body_timeout);
    for (f, d) in [
        ("limits.idle_timeout", l.idle_timeout),
        ("limits.header_timeout", l.header_timeout),
        ("limits.body_timeout", l.body_timeout),
    ] {
        c.duration_at_most(f, d, DAY);
    }
    let sv = &source.server;
    if !(1..=64).contains(&sv.listener_tasks_per_fd) {
        c.error("server.listener_tasks_per_fd", "must be 1-64");
    }
    if sv.upstream_keepalive_pool_size > 1_000_000 {
        c.error(
            "server.upstream_keepalive_pool_size",
            "must be at most 1000000",
        );
    }
    if l.max_request_header_bytes < 1024 {
        c.error("limits.max_request_header_bytes", "must be at least 1024");
    }
    if let Some(demo) = &source.demo_upstream {
        c.socket("demo_upstream.listen", &demo.listen);
    }
    let threads = match source.threads {
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
    };
    c.duration_at_most("shutdown.grace_period", source.shutdown.grace_period, DAY);
    c.duration_at_most("shutdown.timeout", source.shutdown.timeout, DAY);
    if source.shutdown.upgrade_sock.as_deref() == Some("") {
        c.error("shutdown.upgrade_sock", "must not be empty");
    }
    for (f, d) in [
        ("shutdown.grace_period", source.shutdown.grace_period),
        ("shutdown.timeout", source.shutdown.timeout),
    ] {
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

    let mut clusters = Vec::new();
    if source.clusters.is_empty() {
        c.error("clusters", "at least one cluster is needed");
    }
    for (name, cc) in &source.clusters {
        if let Some(cluster) = compile_cluster(&mut c, name, cc) {
            clusters.push(std::sync::Arc::new(cluster));
        }
    }
    let cluster_index = |name: &str| clusters.iter().position(|cl| cl.name == name);
    let default_cluster = cluster_index(&source.route.cluster).unwrap_or_else(|| {
        c.error(
            "route.cluster",
            format!("no cluster named `{}`", source.route.cluster),
        );
        0
    });

    let h = &source.headers;
    let headers = Headers {
        user_id: c
            .header_name("headers.user_id", &h.user_id)
            .unwrap_or(HeaderName::from_static("x-user-id")),
        device_id: c
            .header_name("headers.device_id", &h.device_id)
            .unwrap_or(HeaderName::from_static("x-device-id")),
        request_id: c
            .header_name("headers.request_id", &h.request_id)
            .unwrap_or(HeaderName::from_static("x-request-id")),
        qoe: c
            .header_name("headers.qoe", &h.qoe)
            .unwrap_or(HeaderName::from_static("x-qoe-score")),
        scenario: c
            .header_name("headers.scenario", &h.scenario)
            .unwrap_or(HeaderName::from_static("x-scenario")),
    };

    let mut rollout = None;
    let mut rollout_percent = None;
    let mut hydrus = None;
    let mut e2e = None;
    let mut hedge = None;
    let mut log = None;
    let mut seen: Vec<&'static str> = Vec::new();
    for (i, f) in source.filters.iter().enumerate() {
        let field = format!("filters[{i}].{}", f.kind());
        if seen.contains(&f.kind()) {
            c.error(
                &field,
                format!("a second `{}` filter; each may appear once", f.kind()),
            );
            continue;
        }
        seen.push(f.kind());
        match f {
            FilterConfig::Rollout(r) => {
                if seen.contains(&"hydrus") {
                    c.error(&field, "rollout must come before hydrus in the chain");
                }
                match Rollout::new(r.percent, &r.salt) {
                    Ok(ro) => {
                        rollout = Some(ro);
                        rollout_percent = Some(r.percent);
                    }
                    Err(e) => c.error(format!("{field}.percent"), e.to_string()),
                }
            }
            FilterConfig::Hydrus(hc) => {
                if seen.contains(&"e2e") {
                    c.error(
                        &field,
                        "hydrus must come before e2e in the chain (e2e picks the replica last)",
                    );
                }
                hydrus = compile_hydrus(
                    &mut c,
                    file,
                    &field,
                    hc,
                    &cluster_index,
                    default_cluster,
                    &headers,
                );
            }
            FilterConfig::E2e(ec) => {
                e2e = compile_e2e(&mut c, file, &field, ec, &cluster_index);
            }
            FilterConfig::Hedge(hc) => {
                let before = c.errors.len();
                let table = table_source(&mut c, file, &format!("{field}.table"), &hc.table);
                if hc.max_body_bytes == 0 {
                    c.error(format!("{field}.max_body_bytes"), "must be at least 1");
                }
                if !(hc.burst.is_finite() && hc.burst >= 1.0) {
                    c.error(format!("{field}.burst"), "must be a number >= 1");
                }
                if c.errors.len() == before {
                    hedge = Some(HedgeRuntime {
                        table,
                        max_body_bytes: hc.max_body_bytes,
                        burst: hc.burst,
                    });
                }
            }
            FilterConfig::Log(lc) => {
                let sink = match (&lc.file, &lc.kafka) {
                    (Some(f), None) => {
                        c.duration_positive(&format!("{field}.file.window"), f.window);
                        c.duration_positive(
                            &format!("{field}.file.flush_interval"),
                            f.flush_interval,
                        );
                        if f.window.as_secs() == 0 || 86_400 % f.window.as_secs() != 0 {
                            c.error(
                                format!("{field}.file.window"),
                                "must be whole seconds that divide a day",
                            );
                        }
                        if f.rotate_bytes < 4096 {
                            c.error(
                                format!("{field}.file.rotate_bytes"),
                                "must be at least 4096",
                            );
                        }
                        let mut f = f.clone();
                        f.dir = relative_to(file, &f.dir);
                        Some(SinkConfig::File(f))
                    }
                    (None, Some(k)) => {
                        if k.brokers.trim().is_empty() {
                            c.error(format!("{field}.kafka.brokers"), "must not be empty");
                        }
                        if k.topic.trim().is_empty() {
                            c.error(format!("{field}.kafka.topic"), "must not be empty");
                        }
                        if !cfg!(feature = "kafka") {
                            c.error(
                                format!("{field}.kafka"),
                                "this hydrus was built without the `kafka` feature",
                            );
                        }
                        Some(SinkConfig::Kafka(k.clone()))
                    }
                    _ => {
                        c.error(&field, "name exactly one sink: `file` or `kafka`");
                        None
                    }
                };
                if lc.queue_capacity == 0 {
                    c.error(format!("{field}.queue_capacity"), "must be at least 1");
                }
                c.duration_positive(&format!("{field}.drain_timeout"), lc.drain_timeout);
                log = sink.map(|sink| LogRuntime {
                    queue_capacity: lc.queue_capacity.max(1),
                    sink,
                    drain_timeout: lc.drain_timeout,
                });
            }
        }
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    // Every field checked above; the fallbacks are unreachable on success.
    let (Some(listen), Some(admin_listen)) = (listen, admin_listen) else {
        return Err(ConfigErrors(vec![]));
    };
    let upgrade_sock = source
        .shutdown
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| format!("/tmp/hydrus-upgrade-{}.sock", listen.port()));
    let pid_file = match &source.shutdown.pid_file {
        Some(p) => relative_to(file, p),
        None => PathBuf::from(format!("/tmp/hydrus-{}.pid", listen.port())),
    };
    let warnings = std::mem::take(&mut c.warnings);
    Ok(Running {
        pid_file,
        upgrade_sock,
        e2e,
        hedge,
        limits: source.limits.clone(),
        warnings,
        file: file.to_path_buf(),
        source,
        listen,
        admin_listen,
        threads,
        clusters,
        default_cluster,
        headers,
        rollout,
        rollout_percent,
        hydrus,
        log,
    })
}

fn compile_cluster(c: &mut Checker<'_>, name: &str, cc: &ClusterConfig) -> Option<Cluster> {
    let before = c.errors.len();
    let field = format!("clusters.{name}");
    if cc.endpoints.is_empty() {
        c.error(
            format!("{field}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for (i, e) in cc.endpoints.iter().enumerate() {
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
    c.duration_positive(&format!("{field}.connect_timeout"), cc.connect_timeout);
    c.duration_positive(&format!("{field}.read_timeout"), cc.read_timeout);
    c.duration_at_most(&format!("{field}.idle_timeout"), cc.idle_timeout, YEAR);
    for (f, d) in [
        ("base_ejection_time", cc.outlier.base_ejection_time),
        ("max_ejection_time", cc.outlier.max_ejection_time),
    ] {
        c.duration_at_most(&format!("{field}.outlier.{f}"), d, YEAR);
    }
    if let Some(d) = cc.outlier.stall_after {
        c.duration_at_most(&format!("{field}.outlier.stall_after"), d, YEAR);
    }
    if let Some(hc) = &cc.health_check {
        let f = format!("{field}.health_check");
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
    let o = &cc.outlier;
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
    if r.attempts > crate::cluster::MAX_RETRIES {
        c.error(
            format!("{field}.retry.attempts"),
            format!("at most {}", crate::cluster::MAX_RETRIES),
        );
    }
    if !(r.budget_percent.is_finite() && (0.0..=100.0).contains(&r.budget_percent)) {
        c.error(format!("{field}.retry.budget_percent"), "must be 0-100");
    }
    if c.errors.len() > before {
        return None;
    }
    Some(Cluster::new(name, cc.clone(), endpoints))
}

fn table_source(
    c: &mut Checker<'_>,
    file: &Path,
    field: &str,
    kt: &KTableSourceConfig,
) -> KTableSource {
    match (&kt.path, &kt.url) {
        (Some(_), None) => {}
        (None, Some(u)) => {
            if !u.starts_with("http://") {
                c.error(format!("{field}.url"), "only http:// URLs are supported");
            }
        }
        _ => c.error(field, "name exactly one of `path` or `url`"),
    }
    c.duration_positive(&format!("{field}.poll_interval"), kt.poll_interval);
    if let Some(a) = kt.max_age {
        c.duration_positive(&format!("{field}.max_age"), a);
    }
    KTableSource {
        path: kt.path.as_ref().map(|p| relative_to(file, p)),
        url: kt.url.clone(),
        poll_interval: kt.poll_interval,
        max_age: kt.max_age,
    }
}

fn compile_e2e(
    c: &mut Checker<'_>,
    file: &Path,
    field: &str,
    ec: &E2eConfig,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
) -> Option<E2eRuntime> {
    let before = c.errors.len();
    let header = c.header_name(&format!("{field}.header"), &ec.header);
    if ec.groups.is_empty() {
        c.error(
            format!("{field}.groups"),
            "at least one group (cluster) is needed",
        );
    }
    let mut groups = Vec::new();
    for (i, g) in ec.groups.iter().enumerate() {
        match cluster_index(g) {
            Some(ci) if !groups.contains(&ci) => groups.push(ci),
            Some(_) => c.error(
                format!("{field}.groups[{i}]"),
                format!("`{g}` is listed twice"),
            ),
            None => c.error(
                format!("{field}.groups[{i}]"),
                format!("no cluster named `{g}`"),
            ),
        }
    }
    let priority_header = match &ec.priority_header {
        None => None,
        Some(h) => {
            let hn = c.header_name(&format!("{field}.priority_header"), h);
            if hn
                .as_ref()
                .is_some_and(|n| n.as_str().starts_with("x-hydrus-"))
            {
                c.error(
                    format!("{field}.priority_header"),
                    "x-hydrus-* headers are set by hydrus itself",
                );
            }
            hn
        }
    };
    let q = ec.qoe_model;
    if !(q.width_ms.is_finite()
        && q.width_ms > 0.0
        && q.d50_ms.is_finite()
        && q.max.is_finite()
        && q.max > 0.0)
    {
        c.error(
            format!("{field}.qoe_model"),
            "d50_ms, width_ms > 0 and max > 0 must be finite numbers",
        );
    }
    let table = table_source(c, file, &format!("{field}.table"), &ec.table);
    if c.errors.len() > before {
        return None;
    }
    Some(E2eRuntime {
        header: header?,
        groups,
        group_names: ec.groups.clone(),
        table,
        priority_header,
        qoe_model: q,
    })
}

fn compile_hydrus(
    c: &mut Checker<'_>,
    file: &Path,
    field: &str,
    hc: &HydrusConfig,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    default_cluster: usize,
    identity: &Headers,
) -> Option<HydrusRuntime> {
    let errors_before = c.errors.len();
    let strategies: Vec<Strategy> = hc
        .strategies
        .iter()
        .map(|s| Strategy {
            name: s.name.clone(),
            cost: s.cost,
            qoe_scale: s.qoe_scale,
        })
        .collect();
    let set = match StrategySet::new(strategies, &hc.default_strategy) {
        Ok(set) => Some(set),
        Err(e) => {
            use hydrus_filters::StrategyError as E;
            let at = |name: &str| {
                hc.strategies
                    .iter()
                    .rposition(|s| s.name == name)
                    .map_or(format!("{field}.strategies"), |i| {
                        format!("{field}.strategies[{i}]")
                    })
            };
            let place = match &e {
                E::Duplicate(n) | E::BadName(n) => at(n),
                E::BadCost { name, .. } => format!("{}.cost", at(name)),
                E::BadScale { name, .. } => format!("{}.qoe_scale", at(name)),
                E::UnknownDefault(_) => format!("{field}.default_strategy"),
                E::Empty | E::TooMany(_) => format!("{field}.strategies"),
            };
            c.error(place, e.to_string());
            None
        }
    };
    let mut actions = Vec::new();
    for (i, s) in hc.strategies.iter().enumerate() {
        let sf = format!("{field}.strategies[{i}]");
        let cluster = match &s.cluster {
            None => default_cluster,
            Some(name) => cluster_index(name).unwrap_or_else(|| {
                c.error(
                    format!("{sf}.cluster"),
                    format!("no cluster named `{name}`"),
                );
                default_cluster
            }),
        };
        let mut headers = Vec::new();
        for (name, value) in &s.set_headers {
            let hf = format!("{sf}.set_headers.{name}");
            let Some(hn) = c.header_name(&hf, name) else {
                continue;
            };
            if normalized(&hn).starts_with("x-hydrus-") {
                c.error(&hf, "x-hydrus-* headers are set by hydrus itself");
                continue;
            }
            if HOP_OR_FRAMING.contains(&normalized(&hn).as_ref()) {
                c.error(
                    &hf,
                    "a framing or hop-by-hop header cannot be set by a strategy",
                );
                continue;
            }
            if identity
                .all()
                .iter()
                .any(|h| normalized(h) == normalized(&hn))
            {
                c.error(
                    &hf,
                    "a header hydrus reads (user id, device id, request id, QoE, scenario) cannot be set by a strategy",
                );
                continue;
            }
            match HeaderValue::from_str(value) {
                Ok(hv) => headers.push((hn, hv)),
                Err(_) => c.error(&hf, format!("`{value}` is not a valid header value")),
            }
        }
        let mut query = Vec::new();
        for (k, v) in &s.set_query {
            let qf = format!("{sf}.set_query.{k}");
            if k.is_empty() || !query_text_ok(k, true) {
                c.error(&qf, format!("`{k}` is not a plain query parameter name"));
            } else if !query_text_ok(v, false) {
                c.error(
                    &qf,
                    format!("`{v}` is not a plain query value (percent-encode it)"),
                );
            } else {
                query.push((k.clone(), v.clone()));
            }
        }
        actions.push(StrategyAction {
            cluster,
            headers,
            query,
            name_value: HeaderValue::from_str(&s.name)
                .unwrap_or(HeaderValue::from_static("invalid")),
        });
    }
    let qoe_range = match hc.qoe_range {
        None => QoeRange::default(),
        Some([min, max]) => {
            if !(min.is_finite() && max.is_finite() && min < max) {
                c.error(
                    format!("{field}.qoe_range"),
                    "must be [min, max] with min < max",
                );
            }
            QoeRange { min, max }
        }
    };
    if let Some(list) = &hc.scenarios {
        for (i, name) in list.iter().enumerate() {
            let f = format!("{field}.scenarios[{i}]");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                c.error(
                    f,
                    format!("`{name}`: use 1-64 letters, digits, `_`, `-` or `.`"),
                );
            } else if name == crate::metrics::SCENARIO_OTHER {
                c.error(f, "`other` is reserved: it labels undeclared scenarios");
            } else if list[..i].contains(name) {
                c.error(f, format!("`{name}` is listed twice"));
            }
        }
        if list.len() > MAX_SCENARIOS {
            c.error(
                format!("{field}.scenarios"),
                format!("at most {MAX_SCENARIOS} scenarios"),
            );
        }
    }
    let ktable = table_source(c, file, &format!("{field}.ktable"), &hc.ktable);
    if c.errors.len() > errors_before {
        return None;
    }
    let mut owned_headers: Vec<HeaderName> = Vec::new();
    let mut owned_query: Vec<String> = Vec::new();
    for a in &actions {
        for (name, _) in &a.headers {
            if !owned_headers.contains(name) {
                owned_headers.push(name.clone());
            }
        }
        for (k, _) in &a.query {
            if !owned_query.contains(k) {
                owned_query.push(k.clone());
            }
        }
    }
    Some(HydrusRuntime {
        filter: HydrusFilter::new(set?, qoe_range).with_scenarios(hc.scenarios.clone()),
        actions,
        ktable,
        owned_headers,
        owned_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
clusters:
  small:
    endpoints: ["127.0.0.1:9000"]
  big:
    endpoints: ["127.0.0.1:9001", "localhost:9002"]
route:
  cluster: small
filters:
  - rollout:
      percent: 12.5
  - hydrus:
      default_strategy: s20
      ktable:
        path: k.yaml
        max_age: 1h
      strategies:
        - name: s10
          cost: 6
          qoe_scale: 0.9
          set_query: { candidates: "10" }
        - name: s20
          cost: 10
          cluster: big
          set_headers: { x-model: large }
  - log:
      file:
        dir: logs
"#;

    #[test]
    fn compiles_a_good_config() {
        let r = load_str(Path::new("/etc/hydrus/h.yaml"), GOOD).expect("valid");
        assert_eq!(r.listen.port(), 8080);
        assert_eq!(r.clusters.len(), 2);
        assert_eq!(r.clusters[r.default_cluster].name, "small");
        let h = r.hydrus.expect("hydrus");
        assert_eq!(h.actions[1].cluster, 0, "big sorts first");
        assert_eq!(h.ktable.path, Some(PathBuf::from("/etc/hydrus/k.yaml")));
        assert_eq!(r.rollout_percent, Some(12.5));
        match r.log.expect("log").sink {
            SinkConfig::File(f) => assert_eq!(f.dir, PathBuf::from("/etc/hydrus/logs")),
            other => panic!("{other:?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str(Path::new("h.yaml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_field_names_line() {
        let text = GOOD.replace("          qoe_scale: 0.9\n", "          qoe_scael: 0.9\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("h.yaml:21:11: "), "{}", e[0]);
        assert!(e[0].contains("unknown field `qoe_scael`"), "{}", e[0]);
    }

    #[test]
    fn semantic_errors_name_line_and_field() {
        let text = GOOD.replace("cluster: big", "cluster: huge");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("h.yaml:25:11: ")
                && e[0].contains("strategies[1].cluster: no cluster named `huge`"),
            "{}",
            e[0]
        );
        let text = GOOD.replace("percent: 12.5", "percent: 120");
        let e = errors(&text);
        assert!(
            e[0].starts_with("h.yaml:12:7: ") && e[0].contains("percent"),
            "{e:?}"
        );
        let text = GOOD.replace("default_strategy: s20", "default_strategy: s99");
        let e = errors(&text);
        assert!(
            e[0].starts_with("h.yaml:14:7: ") && e[0].contains("s99"),
            "{e:?}"
        );
        let text = GOOD.replace("127.0.0.1:9000", "nowhere");
        let e = errors(&text);
        assert!(
            e[0].starts_with("h.yaml:5:17: ") && e[0].contains("nowhere"),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let text = GOOD.replace("route:\n  cluster: small", "route:\n  cluster: [small");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("h.yaml:"), "{}", e[0]);
    }
}
