//! The filter chain's contract. Every policy (rollout, hydrus, e2e, hedge, log) is a [`Stage`]:
//! compiled from its YAML section by its [`StageKind`], holding its hot-reloaded table (if it has
//! one) and its metric handles, deciding for each request over plain data, and adding to the
//! log record. A route runs its stages in YAML order over one [`RequestState`]; the edge turns a
//! pingora session into an [`Input`] and applies the outcome through [`Upstream`].
//!
//! Adding a policy is one module with a `StageKind` and a `Stage`, plus one line in
//! [`crate::kinds`].

use crate::e2e::E2eDecision;
use crate::hydrus::Decision;
use crate::rollout::Group;
use crate::table::ReloadableTable;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The identity headers, in this order: what the decision reads and forwards exactly once.
pub const USER_ID: usize = 0;
pub const DEVICE_ID: usize = 1;
pub const REQUEST_ID: usize = 2;
pub const QOE: usize = 3;
pub const SCENARIO: usize = 4;

/// A duration as a message says it: whole days as `N day(s)` (humantime would say `1day`, and
/// a year `11months 30days 3h 50m 24s`), the rest as it is written in a config (`2h 30m`).
pub fn readable(d: Duration) -> String {
    const DAY: u64 = 86_400;
    let s = d.as_secs();
    match s / DAY {
        n if n > 0 && s % DAY == 0 && d.subsec_nanos() == 0 => {
            format!("{n} day{}", if n == 1 { "" } else { "s" })
        }
        _ => humantime::format_duration(d).to_string(),
    }
}

/// A header name as servers that fold `_` into `-` (CGI, WSGI, some proxies) see it.
pub fn normalized(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.contains('_') {
        std::borrow::Cow::Owned(s.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Headers that frame a message or concern one hop: never set by a stage (they would also
/// become "owned" and be stripped from every client request).
pub const HOP_OR_FRAMING: &[&str] = &[
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

/// What one request offers the stages.
pub struct Input<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Unix time in milliseconds (windows of the day are UTC).
    pub now_ms: u64,
    /// The identity headers' first values (see [`USER_ID`] ...).
    pub ids: &'a [Option<HeaderValue>; 5],
}

impl Input<'_> {
    pub fn id(&self, which: usize) -> Option<&[u8]> {
        self.ids
            .get(which)
            .and_then(|v| v.as_ref())
            .map(HeaderValue::as_bytes)
    }
}

/// A value a stage adds to the log record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogValue {
    F64(f64),
    U64(u64),
    Str(&'static str),
}

/// Log fields a stage adds, kept inline (no allocation for a few).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFields {
    fields: [Option<(&'static str, LogValue)>; 6],
}

impl serde::Serialize for LogFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.iter() {
            match value {
                LogValue::F64(v) => map.serialize_entry(name, &v)?,
                LogValue::U64(v) => map.serialize_entry(name, &v)?,
                LogValue::Str(v) => map.serialize_entry(name, v)?,
            }
        }
        map.end()
    }
}

impl LogFields {
    /// Add a field (a seventh and later are dropped: stages add one or two).
    pub fn push(&mut self, name: &'static str, value: LogValue) {
        if let Some(slot) = self.fields.iter_mut().find(|f| f.is_none()) {
            *slot = Some((name, value));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, LogValue)> + '_ {
        self.fields.iter().flatten().copied()
    }
}

/// What the stages decide for one request, in YAML order; the edge applies it.
#[derive(Debug, Clone, Copy)]
pub struct RequestState {
    pub group: Group,
    /// The upstream cluster (an index into the config's clusters): the route's, unless a
    /// stage chose another.
    pub cluster: usize,
    /// The hydrus decision, when a hydrus stage ran.
    pub decision: Option<Decision>,
    /// The request's scenario label slot (see the hydrus stage's labels), when it ran.
    pub scenario_slot: Option<usize>,
    /// The E2E decision, when an e2e stage ran.
    pub e2e: Option<E2eDecision>,
    /// Reissue the request after this long without an answer (hedge).
    pub hedge_after: Option<Duration>,
    /// The first fallback reason a stage gave (for the record).
    pub fallback: Option<&'static str>,
    /// More fields for the log record.
    pub log: LogFields,
    /// When the request was decided (Unix ms, the `Input`'s `now_ms`; set by the hydrus stage,
    /// whose spend controller counts the request's cost at its end).
    pub now_ms: u64,
}

/// Where the counter of `reason` (its index among a kind's reasons, of which there are
/// `reasons`) for `group` is in what [`CompileCtx::fallbacks_by_group`] made.
pub fn fallback_index(group: Group, reason: usize, reasons: usize) -> usize {
    group.index() * reasons + reason
}

impl RequestState {
    pub fn new(cluster: usize) -> Self {
        Self {
            group: Group::Treatment,
            cluster,
            decision: None,
            scenario_slot: None,
            e2e: None,
            hedge_after: None,
            fallback: None,
            log: LogFields::default(),
            now_ms: 0,
        }
    }

    /// Note a fallback (the first one is the record's).
    pub fn fell_back(&mut self, reason: &'static str) {
        self.fallback.get_or_insert(reason);
    }
}

/// The upstream request, as stages may change it.
pub trait Upstream {
    /// Set (replace) a header.
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue);
    /// Set query parameters (replacing same-named ones).
    fn set_query(&mut self, pairs: &[(String, String)]);
}

/// One policy of a route's chain.
pub trait Stage: Send + Sync + 'static {
    /// Its kind, as in YAML (`hydrus`, ...).
    fn kind(&self) -> &'static str;
    /// Decide for one request, after the stages before it in the chain.
    fn decide(&self, input: &Input<'_>, state: &mut RequestState);
    /// Apply this stage's effects to the upstream request.
    fn edit_upstream(&self, _state: &RequestState, _up: &mut dyn Upstream) {}
    /// Headers and query keys this stage sets: hydrus owns them, so they are removed from what
    /// clients send.
    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }
    fn owned_query_keys(&self) -> &[String] {
        &[]
    }
    /// The hot-reloaded tables this stage reads.
    fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        Vec::new()
    }
    /// A table of this stage was loaded, replaced or dropped.
    fn tables_changed(&self) {}
    /// Take over what a previous generation of this stage (before a config reload) loaded.
    fn adopt(&self, _old: &dyn Stage) {}
    /// The request ended with `status`: count it.
    fn done(&self, _state: &RequestState, _status: u16) {}
    /// Update gauges (at each scrape, and when the config starts running).
    fn refresh_gauges(&self, _now_ms: u64) {}
    /// The route no longer runs this kind of stage: drop its gauge series, so none is left
    /// frozen at its last value.
    fn retire(&self) {}
    /// For downcasts (adopt, and the edge's typed view of well-known stages).
    fn as_any(&self) -> &dyn Any;
}

/// Problems found while compiling a config: each names its field's path.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Problems {
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

impl Problems {
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((field.into(), message.into()));
    }

    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Longer than zero, at most a year (longer is a mistake, and could overflow clocks).
    pub fn duration_positive(&mut self, field: &str, d: Duration) {
        if d.is_zero() {
            self.error(field, "must be longer than 0");
        }
        let year = Duration::from_secs(365 * 86_400);
        if d > year {
            self.error(field, format!("must be at most {}", readable(year)));
        }
    }

    /// A header name, or an error at `field`.
    pub fn header_name(&mut self, field: &str, text: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(field, format!("`{text}` is not a valid header name"));
                None
            }
        }
    }
}

/// What compiling a stage's section needs from the config around it.
pub struct CompileCtx<'a> {
    /// The section's path, e.g. `routes[0].filters[1].hydrus`.
    pub field: String,
    /// The route's name (a metric label).
    pub route: &'a str,
    /// The config file (relative paths are relative to its directory).
    pub file: &'a Path,
    /// Cluster names to indices.
    pub cluster_index: &'a dyn Fn(&str) -> Option<usize>,
    /// The route's cluster.
    pub route_cluster: usize,
    /// Cluster names, by index.
    pub cluster_names: &'a [String],
    /// The strategy names of a hydrus stage earlier in the chain, if any.
    pub strategies: Option<&'a [String]>,
    /// The identity headers' names, in [`USER_ID`] ... order.
    pub identity: &'a [HeaderName; 5],
    /// The kinds before this stage in its chain.
    pub before: &'a [&'static str],
    /// This kind's metric families (from [`StageKind::metrics`]).
    pub metrics: &'a (dyn Any + Send + Sync),
    /// `hydrus_fallback_total{route, group, reason}`, shared by the kinds that fall back.
    pub fallbacks: &'a prometheus::IntCounterVec,
    pub problems: &'a mut Problems,
}

impl CompileCtx<'_> {
    /// This route's `hydrus_fallback_total` series of `reason` for `group` (exported at 0
    /// from now on).
    pub fn fallback(&self, group: Group, reason: &str) -> prometheus::IntCounter {
        self.fallbacks
            .with_label_values(&[self.route, group.as_str(), reason])
    }

    /// This route's `hydrus_fallback_total` series of each of `reasons`, for each group:
    /// index them with [`fallback_index`].
    pub fn fallbacks_by_group(&self, reasons: &[&str]) -> Vec<prometheus::IntCounter> {
        Group::ALL
            .iter()
            .flat_map(|g| reasons.iter().map(move |r| (g, r)))
            .map(|(g, r)| self.fallback(*g, r))
            .collect()
    }

    /// `rel` resolved against the config file's directory.
    pub fn path(&self, rel: &Path) -> std::path::PathBuf {
        if rel.is_absolute() {
            return rel.to_path_buf();
        }
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(rel),
            _ => rel.to_path_buf(),
        }
    }

    pub fn error(&mut self, sub: &str, message: impl Into<String>) {
        let f = self.sub(sub);
        self.problems.error(f, message);
    }

    pub fn warn(&mut self, sub: &str, message: impl Into<String>) {
        let f = self.sub(sub);
        self.problems.warn(f, message);
    }

    /// The path of a field within the section.
    pub fn sub(&self, sub: &str) -> String {
        if sub.is_empty() {
            self.field.clone()
        } else {
            format!("{}.{sub}", self.field)
        }
    }

    /// Parse the section into `T`, naming the field at fault (unknown fields are errors).
    pub fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        section: &serde_yaml::Value,
    ) -> Option<T> {
        // Through YAML text, as the rest of the file is read: a plain scalar (`10`, `false`)
        // reads as a string where a string is expected (a `Value` would refuse it).
        let text = serde_yaml::to_string(section).unwrap_or_default();
        match serde_path_to_error::deserialize::<_, T>(serde_yaml::Deserializer::from_str(&text)) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // "unknown field `x`, expected ...": point at the field itself.
                if let Some(name) = inner
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    path = if path == "." {
                        name.to_string()
                    } else if path == name || path.ends_with(&format!(".{name}")) {
                        path
                    } else {
                        format!("{path}.{name}")
                    };
                }
                let path = if path == "." { String::new() } else { path };
                let msg = match inner.find(" at line ") {
                    Some(i) => inner[..i].to_string(),
                    None => inner,
                };
                let msg = with_duration_hint(msg);
                self.error(&path, msg);
                None
            }
        }
    }
}

/// A section parsed into its type and written back: what runs, defaults filled in.
pub fn as_running<T: serde::de::DeserializeOwned + serde::Serialize>(
    section: &serde_yaml::Value,
) -> Option<serde_json::Value> {
    let text = serde_yaml::to_string(section).ok()?;
    let parsed: T = serde_yaml::from_str(&text).ok()?;
    serde_json::to_value(parsed).ok()
}

/// A duration parse error, with what a duration looks like.
pub fn with_duration_hint(mut msg: String) -> String {
    const DURATION_ERRORS: [&str; 5] = [
        "expected a duration",
        "expected number",
        "unknown time unit",
        "time unit needed",
        "number is too large",
    ];
    if DURATION_ERRORS.iter().any(|p| msg.contains(p)) {
        msg.push_str(" (durations are written like 500ms, 2s, 15m, 1h, 1h30m)");
    }
    msg
}

/// A kind of stage: its YAML name, its metric families, and how a section compiles.
pub trait StageKind: Sync {
    fn name(&self) -> &'static str;
    /// Register this kind's metric families (once per registry).
    fn metrics(&self, registry: &prometheus::Registry) -> Arc<dyn Any + Send + Sync>;
    /// The section as it runs, defaults filled in (for the admin's `/config`); `None`: as
    /// written.
    fn running_section(&self, _section: &serde_yaml::Value) -> Option<serde_json::Value> {
        None
    }
    /// Compile a section; problems go to `cx.problems` (then `None`).
    fn compile(
        &self,
        section: &serde_yaml::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Stage>>;
}

/// Register a metric (names are constants: registration fails only on a duplicate).
pub fn register<T: prometheus::core::Collector + Clone + 'static>(
    r: &prometheus::Registry,
    m: T,
) -> T {
    if let Err(e) = r.register(Box::new(m.clone())) {
        debug_assert!(false, "metric registration failed: {e}");
    }
    m
}
