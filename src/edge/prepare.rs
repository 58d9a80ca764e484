//! The upstream request: what the route's filters decided, applied to the request hydrus sends.
//!
//! What hydrus owns is never taken from the client: `x-hydrus-*` on every route; on a route
//! with filters, also every header and query key a filter sets, and the identity headers, which
//! reach the upstream exactly once with the values decided on (whatever the client's
//! `Connection` header nominated, and however it spelled `_` for `-`). A route without filters
//! passes requests through untouched but for `x-hydrus-*`.

use super::Ctx;
use crate::cluster::Cluster;
use http::{HeaderName, HeaderValue};
use hydrus_filters::filter::{normalized, Upstream, REQUEST_ID};
use hydrus_filters::query::set_query;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::ErrorType;

/// `x-hydrus-group`: treatment (`hydrus`) or `control`, on the upstream request.
pub const HEADER_GROUP: HeaderName = HeaderName::from_static("x-hydrus-group");

/// The upstream request as filters change it: its parts, edited directly (see
/// [`prepare_upstream`]).
struct UpstreamEdit<'a> {
    parts: &'a mut http::request::Parts,
    /// The route's name, for what is logged.
    route: &'a str,
    /// Every query key the route's filters own: the first rewrite strips them all.
    owned_query: &'a [String],
    query_done: bool,
    /// A gRPC call: query parameters travel as metadata (see [`super::grpc`]).
    grpc: bool,
    failed: Option<Box<Error>>,
}

impl UpstreamEdit<'_> {
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        if let Err(e) = self.parts.headers.try_insert(name, value) {
            self.failed.get_or_insert(Error::because(
                ErrorType::InvalidHTTPHeader,
                "too many upstream request headers",
                e,
            ));
        }
    }
}

impl Upstream for UpstreamEdit<'_> {
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue) {
        self.insert(name.clone(), value);
    }

    fn set_query_or_metadata(
        &mut self,
        pairs: &[(String, String)],
        metadata: &[Option<(HeaderName, HeaderValue)>],
    ) {
        if !self.grpc {
            return self.set_query(pairs);
        }
        // (Metadata not made for these pairs, `set_query`'s among them: made here.)
        let made;
        let metadata = if metadata.len() == pairs.len() {
            metadata
        } else {
            made = hydrus_filters::query::as_metadata(pairs);
            &made
        };
        for ((k, _), m) in pairs.iter().zip(metadata) {
            match m {
                Some((name, value)) => self.insert(name.clone(), value.clone()),
                None => tracing::warn!(
                    route = self.route,
                    "route `{}`: query parameter `{k}` cannot be gRPC metadata",
                    self.route
                ),
            }
        }
        self.query_done = true;
    }

    fn set_query(&mut self, pairs: &[(String, String)]) {
        if self.grpc {
            return self.set_query_or_metadata(pairs, &[]);
        }
        let replaced: Vec<String>;
        let owned = if self.query_done {
            replaced = pairs.iter().map(|(k, _)| k.clone()).collect();
            replaced.as_slice()
        } else {
            self.owned_query
        };
        self.query_done = true;
        let uri = &self.parts.uri;
        if let Some(target) = set_query(uri.path(), uri.query(), pairs, owned) {
            match http::Uri::try_from(target) {
                Ok(uri) => self.parts.uri = uri,
                Err(e) => tracing::warn!(
                    route = self.route,
                    "route `{}`: query rewrite produced a bad URI: {e}",
                    self.route
                ),
            }
        }
    }
}

/// Room for what a decision adds to the upstream request (group, request id, the strategy's
/// headers), reserved at once: the request's header map is a clone sized for what the client
/// sent, and growing it rehashes every field.
const ADDED_HEADERS: usize = 8;

/// Apply the route's decision to the upstream request.
///
/// On a route with filters the request's parts are taken out of pingora's `RequestHeader`,
/// edited as a plain `http` header map and put back: pingora's own `insert_header` copies and
/// re-parses every name and keeps a second map of header-name spellings, which together cost
/// more than the whole decision. What that drops is the spelling of names: HTTP/1.1 names are
/// sent as pingora writes them when it has no spelling (`Host` and a few framing names
/// capitalized, all others in lower case; Envoy lower-cases all of them). Names are
/// case-insensitive (RFC 9110 5.1). A route without filters keeps them as sent.
pub fn prepare_upstream(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let (Some(running), Some(route)) = (ctx.running.as_deref(), ctx.route.as_deref()) else {
        return Ok(());
    };
    if let Some(path) = &ctx.normalized_path {
        forward_path(upstream, path, route.name());
    }
    if !route.route.managed {
        let ours: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| normalized(k).starts_with("x-hydrus-"))
            .cloned()
            .collect();
        for k in ours {
            upstream.remove_header(&k);
        }
        return Ok(());
    }
    // A target the URI does not write back as sent (not UTF-8) is restored, unless edited.
    // (One without a path, CONNECT's authority, is not: the URI keeps it whole.)
    let raw = upstream
        .uri
        .path_and_query()
        .filter(|p| upstream.raw_path() != p.as_str().as_bytes())
        .map(|_| (upstream.raw_path().to_vec(), upstream.uri.clone()));
    let end_stream = upstream.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(upstream, placeholder).into();
    let edited = edit(&mut parts, ctx, running, route);
    *upstream = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        upstream.set_send_end_stream(end_stream);
    }
    if let Some((raw, uri)) = raw.filter(|(_, uri)| *uri == upstream.uri) {
        if upstream.set_raw_path(&raw).is_err() {
            upstream.set_uri(uri);
        }
    }
    edited
}

/// What [`prepare_upstream`] does on a route with filters.
fn edit(
    parts: &mut http::request::Parts,
    ctx: &Ctx,
    running: &crate::config::Running,
    route: &crate::config::RouteRuntime,
) -> Result<()> {
    let chain = &route.route.chain;
    let ids = &running.identity;
    // One walk over the header map: every name hydrus owns goes, and every spelling of an
    // identity name that is not the exact one; the exact ones are counted, to be left alone
    // below when already right.
    let mut strip: Vec<HeaderName> = Vec::new();
    let mut sent = [Sent::Absent; 5];
    for (k, v) in &parts.headers {
        let n = normalized(k);
        let ours = n.starts_with("x-hydrus-")
            || chain.owned_header_names.iter().any(|o| *o == n)
            || (ctx.grpc && chain.owned_query_names.iter().any(|q| *q == n));
        let mut goes = ours;
        if ids.may_be(k) {
            // It goes as another slot's spelling even when it is this one's exact name.
            goes |= ids.matches(k, &n).any(|(_, exactly)| !exactly);
            for (i, _) in ids.matches(k, &n).filter(|&(_, exactly)| exactly) {
                // (Stripped: set again below.)
                sent[i] = if goes {
                    Sent::Other
                } else {
                    sent[i].and(v, ctx.ids[i].as_ref())
                };
            }
        }
        // (A name's values come one after another.)
        if goes && strip.last() != Some(k) {
            strip.push(k.clone());
        }
    }
    for k in strip {
        parts.headers.remove(&k);
    }
    parts.headers.reserve(ADDED_HEADERS);
    let mut edit = UpstreamEdit {
        parts,
        route: route.name(),
        owned_query: &chain.owned_query,
        query_done: false,
        grpc: ctx.grpc,
        failed: None,
    };
    identity_exactly_once(&mut edit, ids.names(), &ctx.ids, &sent);
    edit.insert(
        HEADER_GROUP,
        HeaderValue::from_static(ctx.state.group.as_str()),
    );
    if let Some(id) = &ctx.generated_request_id {
        if let Ok(mut v) = HeaderValue::from_bytes(id) {
            // Unique to this request: to an HTTP/2 upstream a literal never indexed (RFC 7541
            // 6.2.3), not an entry of HPACK's table that would evict those worth keeping.
            v.set_sensitive(true);
            edit.insert(ids.names()[REQUEST_ID].clone(), v);
        }
    }
    chain.edit_upstream(&ctx.state, &mut edit);
    if !edit.query_done && !chain.owned_query.is_empty() && !ctx.grpc {
        edit.set_query(&[]);
    }
    match edit.failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Forward the request with the path it was routed by (its query as sent).
fn forward_path(upstream: &mut RequestHeader, path: &str, route: &str) {
    let target = match upstream.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    match http::Uri::try_from(target) {
        Ok(uri) => upstream.set_uri(uri),
        Err(e) => tracing::warn!(
            route,
            "route `{route}`: normalized path produced a bad URI: {e}"
        ),
    }
}

/// What the request carries of an identity header, spelled exactly.
#[derive(Clone, Copy)]
enum Sent {
    Absent,
    /// One value, the one decided on.
    TheOne,
    /// Another value, or several.
    Other,
}

impl Sent {
    /// With one more value `v` (`decided` the value decided on).
    fn and(self, v: &HeaderValue, decided: Option<&HeaderValue>) -> Self {
        match self {
            Sent::Absent if Some(v) == decided => Sent::TheOne,
            _ => Sent::Other,
        }
    }
}

/// Each identity header once, with the value decided on (left alone when already so).
fn identity_exactly_once(
    edit: &mut UpstreamEdit<'_>,
    names: &[HeaderName; 5],
    values: &[Option<HeaderValue>; 5],
    sent: &[Sent; 5],
) {
    for ((name, value), sent) in names.iter().zip(values).zip(sent) {
        let exact = matches!(
            (value, sent),
            (Some(_), Sent::TheOne) | (None, Sent::Absent)
        );
        if !exact {
            edit.parts.headers.remove(name);
            if let Some(v) = value {
                edit.insert(name.clone(), v.clone());
            }
        }
    }
}

/// What the hop to an endpoint needs of the request, whatever its route decided:
///
/// - a `Host`: a request without one (HTTP/1.0 may omit it) gets its URI's authority, else the
///   endpoint as the cluster's `endpoints` write it (`HOST:PORT`), as nginx sends its
///   `$proxy_host`; an HTTP/1.1 upstream must be sent one, an HTTP/2 one needs `:authority`;
/// - to an HTTP/1.1 endpoint: HTTP/1.1, and one `cookie` field, the HTTP/2 client's several
///   joined with `; ` (RFC 9113 8.2.3).
pub fn for_the_hop(upstream: &mut RequestHeader, cluster: &Cluster, endpoint: usize) -> Result<()> {
    let h1 = !cluster.transport.protocol.is_h2();
    if h1 {
        // (pingora's path has done so; the hedge path sends the client's header.)
        upstream.set_version(http::Version::HTTP_11);
    }
    if upstream.headers.get(http::header::HOST).is_none() {
        let host = match upstream.uri.authority() {
            Some(a) => a.as_str().to_string(),
            None => cluster
                .source
                .endpoints
                .get(endpoint)
                .cloned()
                .unwrap_or_default(),
        };
        upstream.insert_header(http::header::HOST, host)?;
    }
    if h1 {
        let cookies = upstream.headers.get_all(http::header::COOKIE).iter();
        if let Some(joined) = hydrus_filters::request::joined_cookies(cookies.map(|v| v.as_bytes()))
        {
            upstream.insert_header(http::header::COOKIE, joined)?;
        }
    }
    Ok(())
}
