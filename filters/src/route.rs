//! Routes: which requests a chain of filters runs on. A config lists routes in order; a request
//! takes the first whose match (path exact or prefix, methods, a header's presence) it
//! satisfies, and that route's filters run on it in YAML order. Plain data: the edge hands in
//! the method, path and headers.

use crate::filter::{
    CompileCtx, Filter, FilterKind, Input, Problems, RecordParts, RequestState, Upstream,
};
use crate::table::ReloadableTable;
use http::{HeaderMap, HeaderName, Method};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::path::Path;
use std::sync::Arc;

/// Most routes a config may have (each labels metric series).
pub const MAX_ROUTES: usize = 64;

/// One `routes:` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A metric label and log field: 1-64 letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// Which requests take this route; none: every request.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// The upstream cluster (a filter may pick another).
    pub cluster: String,
    /// The filters, in the order they run: each a one-key map, `- rollout: {...}`.
    #[serde(default)]
    pub filters: Vec<serde_norway::Value>,
    /// Its requests may be sent twice although they have a body (unary gRPC calls that only
    /// read, a POST search): the hedge filter reissues them too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
    /// The route of the single-route shape (`route:` and top-level `filters:`), which ran
    /// its filters in a fixed order and managed every request, even without filters.
    #[serde(skip)]
    pub single_route_shape: bool,
}

/// A route's match, as written; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The request path (without the query) is exactly this.
    #[serde(default)]
    pub path: Option<String>,
    /// The request path starts with this (a plain prefix, as Envoy's `prefix`: `/rank` also
    /// takes `/ranking`; write `/rank/` for the folder).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The method is one of these; none: any.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// The request carries this header (any value).
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum PathMatch {
    /// No path condition: every request target, `*` included.
    Any,
    Exact(String),
    Prefix(String),
}

/// A route's match, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    path: PathMatch,
    methods: Option<Vec<Method>>,
    header: Option<HeaderName>,
}

impl Matcher {
    /// Every request.
    pub fn any() -> Self {
        Self {
            path: PathMatch::Any,
            methods: None,
            header: None,
        }
    }

    /// Whether a request takes this route.
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        };
        path_ok
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
            && self.header.as_ref().is_none_or(|h| headers.contains_key(h))
    }

    /// Whether every request `later` matches is matched by this one (so `later`, after it, is
    /// never reached).
    pub fn covers(&self, later: &Matcher) -> bool {
        let path = match (&self.path, &later.path) {
            (PathMatch::Any, _) => true,
            (_, PathMatch::Any) => false,
            (PathMatch::Prefix(a), PathMatch::Prefix(b) | PathMatch::Exact(b)) => {
                b.starts_with(a.as_str())
            }
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let header = self.header.is_none() || self.header == later.header;
        path && methods && header
    }

    /// Compile; problems at `field` (`routes[0].match`).
    pub fn compile(m: &MatchConfig, field: &str, problems: &mut Problems) -> Option<Self> {
        let before = problems.count();
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), None) => PathMatch::Exact(p.clone()),
            (None, Some(p)) => PathMatch::Prefix(p.clone()),
            (None, None) => PathMatch::Any,
            (Some(_), Some(_)) => {
                problems.error(field, "name at most one of `path` or `path_prefix`");
                PathMatch::Any
            }
        };
        if let PathMatch::Exact(p) | PathMatch::Prefix(p) = &path {
            let which = if m.path.is_some() {
                "path"
            } else {
                "path_prefix"
            };
            if !p.starts_with('/') {
                problems.error(
                    format!("{field}.{which}"),
                    format!("`{p}` must start with /"),
                );
            } else {
                match normalize_path(p, EscapedSlashes::Reject) {
                    Err(EscapedSlash) => problems.error(
                        format!("{field}.{which}"),
                        format!(
                            "`{p}` holds an encoded slash or a backslash (`%2F`, `%5C`, `\\`), which no request path is matched with"
                        ),
                    ),
                    Ok(n) if n != p.as_str() => problems.error(
                        format!("{field}.{which}"),
                        format!(
                            "`{p}` is not a normalized path (requests are matched normalized): write `{n}`"
                        ),
                    ),
                    Ok(_) => {}
                }
            }
        }
        let methods = m.methods.as_ref().map(|list| {
            if list.is_empty() {
                problems.error(format!("{field}.methods"), "list at least one method");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, name)| match Method::from_bytes(name.as_bytes()) {
                    Ok(m) if name.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
                    _ => {
                        problems.error(
                            format!("{field}.methods[{i}]"),
                            format!("`{name}` is not a method (write it in capitals: GET, POST)"),
                        );
                        None
                    }
                })
                .collect()
        });
        let header = m
            .header
            .as_ref()
            .and_then(|h| problems.header_name(&format!("{field}.header"), h));
        (problems.count() == before).then_some(Self {
            path,
            methods,
            header,
        })
    }
}

/// What a request path's encoded slashes (`%2F`) and backslashes (`%5C`, or `\` as sent) get
/// (`limits.escaped_slashes`), as Envoy's `path_with_escaped_slashes_action`. Left as they are,
/// they would be a path hydrus routes one way and an upstream that decodes them (nginx does)
/// serves as another: `/%2Frank` is not `/rank` to a route, but is to the ranking service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// The request is refused (400).
    #[default]
    Reject,
    /// Each is read as `/`, then the path is normalized, routed and forwarded so: the upstream
    /// sees the path the route matched, with no encoded slash or backslash left.
    Unescape,
}

/// A request path holding an encoded slash or a backslash, under [`EscapedSlashes::Reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscapedSlash;

/// A request path as routes match it, and as it is forwarded: RFC 3986 normalization
/// (percent-encoded unreserved characters decoded, other escapes' hex digits in upper case,
/// `.` and `..` segments resolved) and repeated slashes merged, as Envoy's `normalize_path` and
/// `merge_slashes`; encoded slashes and backslashes refused or read as `/` (see
/// [`EscapedSlashes`]). Otherwise `//rank`, `/%72ank` or `/%2Frank` could reach an upstream
/// that reads it as `/rank` by a route that does not decide for `/rank`. Borrowed when already
/// normal; targets that are not a path (`*`) are left alone.
pub fn normalize_path(
    path: &str,
    slashes: EscapedSlashes,
) -> Result<std::borrow::Cow<'_, str>, EscapedSlash> {
    let b = path.as_bytes();
    let normal = !b.contains(&b'%')
        && !b.contains(&b'\\')
        && !b.windows(2).any(|w| w == b"//")
        && !b
            .split(|c| *c == b'/')
            .any(|seg| seg == b"." || seg == b"..");
    if normal || b.first() != Some(&b'/') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(b, slashes)?;
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split(|c| *c == b'/') {
        match seg {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &segments {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    // Only ASCII bytes were decoded: the result is UTF-8 when the input was.
    Ok(std::borrow::Cow::Owned(
        String::from_utf8(out).unwrap_or_else(|_| path.to_string()),
    ))
}

/// Percent-escapes of unreserved characters decoded; the others' hex digits in upper case; a
/// `%` that starts no escape written `%25`, so that decoding never makes a new escape (`/%%30a`
/// would otherwise become `/%0a`, a newline to whoever decodes it once more). `%2F`, `%5C` and
/// `\` refused or made `/` (`slashes`).
fn decode_unreserved(b: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, EscapedSlash> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let slash = || match slashes {
        EscapedSlashes::Reject => Err(EscapedSlash),
        EscapedSlashes::Unescape => Ok(b'/'),
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)),
            _ => None,
        };
        match escape {
            Some((h, l)) => {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else if matches!(c, b'/' | b'\\') {
                    out.push(slash()?);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
                }
                i += 3;
            }
            None if b[i] == b'%' => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
            None if b[i] == b'\\' => {
                out.push(slash()?);
                i += 1;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A route's filters, in YAML order, and what they own of the upstream request.
pub struct Chain {
    pub filters: Vec<Arc<dyn Filter>>,
    /// Every header and query key a filter sets: removed from what the client sent.
    pub owned_headers: Vec<HeaderName>,
    pub owned_query: Vec<String>,
    /// `owned_headers` normalized (`_` as `-`), and `owned_query` as the metadata names they
    /// become on a gRPC call: made once here, compared against every request's header names.
    pub owned_header_names: Vec<String>,
    pub owned_query_names: Vec<String>,
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        let mut owned_query: Vec<String> = Vec::new();
        for s in &filters {
            for h in s.owned_headers() {
                if !owned_headers.contains(h) {
                    owned_headers.push(h.clone());
                }
            }
            for q in s.owned_query_keys() {
                if !owned_query.contains(q) {
                    owned_query.push(q.clone());
                }
            }
        }
        Self {
            owned_header_names: owned_headers
                .iter()
                .map(|h| crate::filter::normalized(h).into_owned())
                .collect(),
            owned_query_names: owned_query
                .iter()
                .map(|q| q.to_ascii_lowercase().replace('_', "-"))
                .collect(),
            owned_headers,
            owned_query,
            filters,
        }
    }

    /// Run the filters in order.
    pub fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        for s in &self.filters {
            s.decide(input, state);
        }
    }

    pub fn edit_upstream(&self, state: &RequestState, up: &mut dyn Upstream) {
        for s in &self.filters {
            s.edit_upstream(state, up);
        }
    }

    pub fn done(&self, state: &RequestState, end: &crate::outcome::RequestEnd) {
        for s in &self.filters {
            s.done(state, end);
        }
    }

    pub fn tables(&self) -> Vec<Arc<dyn ReloadableTable>> {
        self.filters.iter().flat_map(|s| s.tables()).collect()
    }

    pub fn tables_changed(&self) {
        for s in &self.filters {
            s.tables_changed();
        }
    }

    pub fn refresh_gauges(&self, now_ms: u64) {
        for s in &self.filters {
            s.refresh_gauges(now_ms);
        }
    }

    /// Take over what the same kind of filter of an older chain (the same route, before a
    /// config reload) loaded.
    pub fn adopt(&self, old: &Chain) {
        for s in &self.filters {
            if let Some(o) = old.filters.iter().find(|o| o.kind() == s.kind()) {
                s.adopt(o.as_ref());
            }
        }
    }

    /// The filter of type `T`, if the chain runs one (a kind's own module names its type:
    /// `hydrus::of(chain)`).
    pub fn find<T: Any>(&self) -> Option<&T> {
        self.filters
            .iter()
            .find_map(|s| s.as_any().downcast_ref::<T>())
    }

    /// The route's strategy labels: those of the filter that chooses strategies.
    pub fn strategy_labels(&self) -> Option<Vec<String>> {
        self.filters.iter().find_map(|s| s.strategy_labels())
    }

    /// The route's scenario labels: those of the filter that places scenarios.
    pub fn scenario_labels(&self) -> Option<Vec<String>> {
        self.filters.iter().find_map(|s| s.scenario_labels())
    }

    /// What the filters add to a request's log record, in chain order.
    pub fn record<'a>(&'a self, state: &'a RequestState) -> RecordParts<'a> {
        let mut parts = RecordParts::default();
        for s in &self.filters {
            s.record(state, &mut parts);
        }
        parts
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// A route, compiled.
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub cluster: usize,
    pub chain: Chain,
    /// Whether hydrus manages its requests (identity headers forwarded once, a request id
    /// made up, `x-hydrus-group` set): a route with filters other than `log`, or the
    /// single-route shape's. A route without filters, or with `log` alone, passes requests
    /// through untouched.
    pub managed: bool,
    /// Requests with a body may be hedged (`idempotent: true`).
    pub idempotent: bool,
}

/// What compiling routes needs from the config around them.
pub struct RouteEnv<'a> {
    pub file: &'a Path,
    pub cluster_names: &'a [String],
    pub identity: &'a [HeaderName; 5],
    /// Every kind, with its registered metric families.
    pub kinds: &'a [(&'static dyn FilterKind, Arc<dyn Any + Send + Sync>)],
    pub fallbacks: &'a prometheus::IntCounterVec,
}

impl RouteEnv<'_> {
    fn cluster_index(&self, name: &str) -> Option<usize> {
        self.cluster_names.iter().position(|c| c == name)
    }
}

/// A route name is a metric label: short and plain.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Compile one route; `field` is its path (`routes[0]`, or `` for the old single-route shape,
/// whose `filters` and `route.cluster` are at the top level).
pub fn compile_route(
    rc: &RouteConfig,
    field: &str,
    cluster_field: &str,
    env: &RouteEnv<'_>,
    problems: &mut Problems,
) -> Option<Route> {
    let before = problems.count();
    let at = |sub: &str| {
        if field.is_empty() {
            sub.to_string()
        } else {
            format!("{field}.{sub}")
        }
    };
    if !name_ok(&rc.name) {
        problems.error(
            at("name"),
            format!("`{}`: use 1-64 letters, digits, `_`, `-` or `.`", rc.name),
        );
    }
    let matcher = Matcher::compile(&rc.matches, &at("match"), problems);
    let cluster = env.cluster_index(&rc.cluster).unwrap_or_else(|| {
        problems.error(cluster_field, format!("no cluster named `{}`", rc.cluster));
        0
    });
    let mut entries: Vec<(usize, &serde_norway::Value)> = rc.filters.iter().enumerate().collect();
    if rc.single_route_shape {
        // That shape ran hedging after every decision, wherever it was written.
        entries.sort_by_key(|(_, e)| e.get("hedge").is_some());
    }
    let filters = compile_chain(&entries, &at("filters"), &rc.name, cluster, env, problems);
    if problems.count() > before {
        return None;
    }
    Some(Route {
        // (`log` alone decides nothing: its route passes requests through, access-logged.)
        managed: rc.single_route_shape || filters.iter().any(|f| f.kind() != "log"),
        idempotent: rc.idempotent,
        name: rc.name.clone(),
        matcher: matcher?,
        cluster,
        chain: Chain::new(filters),
    })
}

/// Compile a chain's entries in order: each a one-key map naming a kind.
fn compile_chain(
    entries: &[(usize, &serde_norway::Value)],
    field: &str,
    route: &str,
    route_cluster: usize,
    env: &RouteEnv<'_>,
    problems: &mut Problems,
) -> Vec<Arc<dyn Filter>> {
    let mut filters: Vec<Arc<dyn Filter>> = Vec::new();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut strategies: Option<Vec<String>> = None;
    for &(i, entry) in entries {
        let Some((kind, metrics, section)) =
            entry_kind(entry, &format!("{field}[{i}]"), env, problems)
        else {
            continue;
        };
        let at = format!("{field}[{i}].{}", kind.name());
        if seen.contains(&kind.name()) {
            problems.error(
                &at,
                format!("a second `{}` filter; each may appear once", kind.name()),
            );
            continue;
        }
        let mut cx = CompileCtx {
            field: at,
            route,
            file: env.file,
            cluster_index: &|n| env.cluster_index(n),
            route_cluster,
            cluster_names: env.cluster_names,
            strategies: strategies.as_deref(),
            identity: env.identity,
            before: &seen,
            metrics: metrics.as_ref(),
            fallbacks: env.fallbacks,
            problems,
        };
        if let Some(filter) = kind.compile(section, &mut cx) {
            if let Some(names) = filter.strategy_labels() {
                strategies = Some(names);
            }
            filters.push(filter);
        }
        seen.push(kind.name());
    }
    filters
}

type KindEntry<'e> = (
    &'static dyn FilterKind,
    &'e Arc<dyn Any + Send + Sync>,
    &'e serde_norway::Value,
);

/// The kind and section of a chain entry (`- hydrus: {...}`).
fn entry_kind<'e>(
    entry: &'e serde_norway::Value,
    field: &str,
    env: &'e RouteEnv<'_>,
    problems: &mut Problems,
) -> Option<KindEntry<'e>> {
    let names = || {
        env.kinds
            .iter()
            .map(|(k, _)| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let one = entry.as_mapping().filter(|m| m.len() == 1);
    let Some((key, section)) = one.and_then(|m| m.iter().next()) else {
        problems.error(
            field,
            format!("each filter is a map with one key, the kind: {}", names()),
        );
        return None;
    };
    let name = key.as_str().unwrap_or_default();
    match env.kinds.iter().find(|(k, _)| k.name() == name) {
        Some((k, m)) => Some((*k, m, section)),
        None => {
            problems.error(
                format!("{field}.{name}"),
                format!("unknown filter `{name}`, expected one of {}", names()),
            );
            None
        }
    }
}

/// Routes that can never be reached: an earlier route takes every request they match.
pub fn shadowed(routes: &[(usize, &Route)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (j, (_, later)) in routes.iter().enumerate() {
        if let Some((i, _)) = routes[..j]
            .iter()
            .enumerate()
            .find(|(_, (_, earlier))| earlier.matcher.covers(&later.matcher))
        {
            out.push((routes[i].0, routes[j].0));
        }
    }
    out
}

#[cfg(test)]
mod tests;
