//! The filter chain's contract. Every policy (rollout, hydrus, e2e, hedge, log) is a [`Filter`]:
//! compiled from its YAML section by its [`FilterKind`], holding its hot-reloaded table (if it has
//! one) and its metric handles, deciding for each request over plain data, and adding to the
//! log record. A route runs its filters in YAML order over one [`RequestState`]; the edge turns a
//! pingora session into an [`Input`] and applies the outcome through [`Upstream`].
//!
//! Adding a policy is one module with a `FilterKind` and a `Filter`, plus one line in
//! [`crate::kinds`].

use crate::table::{ReloadableTable, TableSource, TableSourceConfig};
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
    // (A byte loop: names are short, and `str::contains` sets up a searcher first.)
    if s.bytes().any(|b| b == b'_') {
        std::borrow::Cow::Owned(s.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Headers that frame a message or concern one hop: never set by a filter (they would also
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

/// What one request offers the filters.
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

/// Which arm of the experiment a request is in (the rollout filter puts it there; without
/// one, every request is treatment): `x-hydrus-group`, the log record's `group`, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// hydrus chooses the strategy.
    Treatment,
    /// The default strategy, as before hydrus.
    Control,
}

impl Group {
    /// Both groups, in [`Group::index`] order.
    pub const ALL: [Group; 2] = [Group::Treatment, Group::Control];

    /// The value of `x-hydrus-group` and of the log record's `group`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Treatment => "hydrus",
            Group::Control => "control",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Group::Treatment => 0,
            Group::Control => 1,
        }
    }
}

/// What the filters keep of one request, each under its own type (the hydrus decision, E2E's,
/// the hedge's): the contract knows none of them. A chain holds a few such filters at most:
/// kept inline, one box per value.
#[derive(Default)]
pub struct Slots([Option<Box<dyn Any + Send + Sync>>; MAX_SLOTS]);

/// Most filters of one chain that keep per-request state (a chain names each kind once).
pub const MAX_SLOTS: usize = 8;

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({})", self.0.iter().flatten().count())
    }
}

/// What the filters decide for one request, in YAML order; the edge applies it.
#[derive(Debug)]
pub struct RequestState {
    pub group: Group,
    /// The upstream cluster (an index into the config's clusters): the route's, unless a
    /// filter chose another.
    pub cluster: usize,
    /// The strategy applied, as an index into the route's strategy labels (see
    /// [`Filter::strategy_labels`]), when a filter chose one; else the route's only label.
    pub strategy: Option<usize>,
    /// The request's scenario, as a slot of the route's scenario labels (see
    /// [`Filter::scenario_labels`]), when a filter placed it.
    pub scenario_slot: Option<usize>,
    /// Whether the scenario header named a declared scenario: one that did not is logged as
    /// `other`, with what was sent in `scenario_raw`.
    pub scenario_declared: bool,
    /// The first fallback reason a filter gave (for the record).
    pub fallback: Option<&'static str>,
    /// When the request was decided (Unix ms, the `Input`'s `now_ms`).
    pub now_ms: u64,
    slots: Slots,
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
            strategy: None,
            scenario_slot: None,
            scenario_declared: true,
            fallback: None,
            now_ms: 0,
            slots: Slots::default(),
        }
    }

    /// Note a fallback (the first one is the record's).
    pub fn fell_back(&mut self, reason: &'static str) {
        self.fallback.get_or_insert(reason);
    }

    /// Keep `value` for this request (replacing one of the same type). A filter keeps its own
    /// type there; beyond [`MAX_SLOTS`] values, the value is not kept.
    pub fn put<T: Any + Send + Sync>(&mut self, value: T) {
        if let Some(old) = self.get_mut::<T>() {
            *old = value;
        } else if let Some(free) = self.slots.0.iter_mut().find(|s| s.is_none()) {
            *free = Some(Box::new(value));
        }
    }

    /// The value of type `T` a filter kept for this request.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.slots
            .0
            .iter()
            .flatten()
            .find_map(|b| b.downcast_ref::<T>())
    }

    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.slots
            .0
            .iter_mut()
            .flatten()
            .find_map(|b| b.downcast_mut::<T>())
    }
}

/// A value a filter adds to the log record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogValue {
    F64(f64),
    U64(u64),
    Str(&'static str),
}

/// The strategies a decision chose among, as the record's `value_info` names them.
pub trait Strategies {
    /// A strategy's name and cost per resource (one value with one resource).
    fn strategy(&self, index: usize) -> Option<(&str, &[f64])>;
    /// The resources costs are in, in the order of [`Strategies::strategy`]'s values.
    fn resources(&self) -> &[String];
    /// A strategy's entry in the record's JSON up to its QoE, `{"strategy":...,"cost":...,"qoe":`
    /// (made once per strategy, not per record).
    fn json_head(&self, index: usize) -> &[u8];
}

/// One request's candidates: the QoE predicted for each strategy it could get.
pub trait Candidates {
    /// Call `each` with every candidate's index among the [`Strategies`] and its QoE.
    fn each(&self, each: &mut dyn FnMut(usize, f64));
}

/// What the filters add to a request's log record: the decision's fields (Listing 1 of the
/// Hydrus paper; without a filter that decides, `chosen` is `default`, `k` null and
/// `value_info` empty), and any number of fields of their own.
#[derive(Default)]
pub struct RecordParts<'a> {
    pub chosen: Option<&'a str>,
    /// `k` per resource, with the resources' names (one value: one resource).
    pub k: Option<(&'a [String], &'a [f64])>,
    /// The strategies and the request's candidates among them.
    pub value_info: Option<(&'a dyn Strategies, &'a dyn Candidates)>,
    /// On a control record: what treatment would have chosen (shadow mode).
    pub would_choose: Option<&'a str>,
    /// The fingerprint of the strategy set that decided.
    pub strategy_set: Option<&'a str>,
    /// Fields of the filters' own, in chain order.
    pub extra: Vec<(&'static str, LogValue)>,
}

/// The upstream request, as filters may change it.
pub trait Upstream {
    /// Set (replace) a header.
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue);
    /// Set query parameters (replacing same-named ones).
    fn set_query(&mut self, pairs: &[(String, String)]);
    /// [`Self::set_query`], with the pairs also as gRPC metadata, made once when the config
    /// loads (`None` for a pair that cannot be one): a gRPC call carries its query as metadata.
    fn set_query_or_metadata(
        &mut self,
        pairs: &[(String, String)],
        _metadata: &[Option<(HeaderName, HeaderValue)>],
    ) {
        self.set_query(pairs);
    }
}

/// One policy of a route's chain.
pub trait Filter: Send + Sync + 'static {
    /// Its kind, as in YAML (`hydrus`, ...).
    fn kind(&self) -> &'static str;
    /// Decide for one request, after the filters before it in the chain.
    fn decide(&self, input: &Input<'_>, state: &mut RequestState);
    /// Apply this filter's effects to the upstream request.
    fn edit_upstream(&self, _state: &RequestState, _up: &mut dyn Upstream) {}
    /// Headers and query keys this filter sets: hydrus owns them, so they are removed from what
    /// clients send.
    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }
    fn owned_query_keys(&self) -> &[String] {
        &[]
    }
    /// The hot-reloaded tables this filter reads.
    fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        Vec::new()
    }
    /// A table of this filter was loaded, replaced or dropped.
    fn tables_changed(&self) {}
    /// Take over what a previous generation of this filter (before a config reload) loaded.
    fn adopt(&self, _old: &dyn Filter) {}
    /// The request ended (how: its status, its time, ...): count it.
    fn done(&self, _state: &RequestState, _end: &crate::outcome::RequestEnd) {}
    /// Add this filter's part of the request's log record (on the log sink's thread).
    fn record<'a>(&'a self, _state: &'a RequestState, _parts: &mut RecordParts<'a>) {}
    /// The strategy labels of a filter that chooses strategies ([`RequestState::strategy`]
    /// indexes them): the route's `strategy` metric label values.
    fn strategy_labels(&self) -> Option<Vec<String>> {
        None
    }
    /// The scenario labels of a filter that places scenarios ([`RequestState::scenario_slot`]
    /// indexes them; they may change with its tables).
    fn scenario_labels(&self) -> Option<Vec<String>> {
        None
    }
    /// Update gauges (at each scrape, and when the config starts running).
    fn refresh_gauges(&self, _now_ms: u64) {}
    /// The route no longer runs this kind of filter: drop its gauge series, so none is left
    /// frozen at its last value.
    fn retire(&self) {}
    /// For downcasts: a kind's `adopt`, and its own module's view of it in a chain.
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

/// What compiling a filter's section needs from the config around it.
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
    /// The strategy names of a hydrus filter earlier in the chain, if any.
    pub strategies: Option<&'a [String]>,
    /// The identity headers' names, in [`USER_ID`] ... order.
    pub identity: &'a [HeaderName; 5],
    /// The kinds before this filter in its chain.
    pub before: &'a [&'static str],
    /// This kind's metric families (from [`FilterKind::metrics`]).
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

    /// A table's source as written (`ktable:`, `table:`), checked and resolved; problems at
    /// `field` of the section.
    pub fn table_source(&mut self, t: &TableSourceConfig, field: &str) -> TableSource {
        match (&t.path, &t.url) {
            (Some(_), None) => {}
            (None, Some(u)) => {
                if !u.starts_with("http://") {
                    self.error(&format!("{field}.url"), "only http:// URLs are supported");
                }
            }
            _ => self.error(field, "name exactly one of `path` or `url`"),
        }
        let poll = self.sub(&format!("{field}.poll_interval"));
        self.problems.duration_positive(&poll, t.poll_interval);
        if let Some(a) = t.max_age {
            let f = self.sub(&format!("{field}.max_age"));
            self.problems.duration_positive(&f, a);
        }
        TableSource {
            path: t.path.as_ref().map(|p| self.path(p)),
            url: t.url.clone(),
            poll_interval: t.poll_interval,
            max_age: t.max_age,
        }
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
        section: &serde_norway::Value,
    ) -> Option<T> {
        // Through YAML text, as the rest of the file is read: a plain scalar (`10`, `false`)
        // reads as a string where a string is expected (a `Value` would refuse it).
        let text = serde_norway::to_string(section).unwrap_or_default();
        match serde_path_to_error::deserialize::<_, T>(serde_norway::Deserializer::from_str(&text))
        {
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
    section: &serde_norway::Value,
) -> Option<serde_json::Value> {
    let text = serde_norway::to_string(section).ok()?;
    let parsed: T = serde_norway::from_str(&text).ok()?;
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

/// A kind of filter: its YAML name, its metric families, and how a section compiles.
pub trait FilterKind: Sync {
    fn name(&self) -> &'static str;
    /// Register this kind's metric families (once per registry).
    fn metrics(&self, registry: &prometheus::Registry) -> Arc<dyn Any + Send + Sync>;
    /// The section as it runs, defaults filled in (for the admin's `/config`); `None`: as
    /// written.
    fn running_section(&self, _section: &serde_norway::Value) -> Option<serde_json::Value> {
        None
    }
    /// Compile a section; problems go to `cx.problems` (then `None`).
    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>>;
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
