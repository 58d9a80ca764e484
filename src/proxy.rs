//! The pingora edge: `ProxyHttp` hooks that read headers into the plain filters of
//! `hydrus-filters` and apply their decision (cluster, headers, query) to the upstream request.
//!
//! No hook returns an error because of what a client sent: bad input falls back to the default
//! strategy and is counted. Errors only come from the upstream (502/504, as any proxy).

use crate::cluster::{Cluster, Tried};
use crate::config::{normalized, Running};
use crate::conns::Slot;
use crate::metrics::{Handles, Spend};
use crate::record::{hex_id, Pending, RequestId};
use crate::state::{now_ms, KTableState, State};
use async_trait::async_trait;
use http::header::HeaderValue;
use http::HeaderName;
use hydrus_filters::e2e::{self, E2eDecision};
use hydrus_filters::hedge::{race, Winner};
use hydrus_filters::outlier::Outcome;
use hydrus_filters::query::set_query;
use hydrus_filters::{Decision, Group, RequestInputs};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;

pub const HEADER_STRATEGY: HeaderName = HeaderName::from_static("x-hydrus-strategy");
pub const HEADER_GROUP: HeaderName = HeaderName::from_static("x-hydrus-group");

/// Set a header on the upstream request, replacing any.
fn set_header(req: &mut RequestHeader, name: &HeaderName, value: HeaderValue) -> Result<()> {
    req.insert_header(name, value)
}

pub struct Proxy {
    pub state: Arc<State>,
    /// Upstream connections for hedged requests (the proxy's own path uses pingora's).
    pub connector: pingora::connectors::http::Connector,
}

impl Proxy {
    pub fn new(state: Arc<State>) -> Self {
        Self {
            state,
            connector: pingora::connectors::http::Connector::new(None),
        }
    }
}

/// The route a hedge timeout is looked up by: the strategy, else the cluster.
fn route_name<'a>(running: &'a Running, ctx: &Ctx) -> Option<&'a str> {
    match (&running.hydrus, &ctx.decision) {
        (Some(h), Some(d)) => h.filter.strategies.get(d.strategy).map(|s| s.name.as_str()),
        _ => running.clusters.get(ctx.cluster).map(|c| c.name.as_str()),
    }
}

/// An upstream endpoint with its cluster's timeouts.
fn peer(addr: std::net::SocketAddr, cluster: &Cluster) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(cluster.source.connect_timeout);
    peer.options.total_connection_timeout = Some(cluster.source.connect_timeout);
    peer.options.read_timeout = Some(cluster.source.read_timeout);
    peer.options.write_timeout = Some(cluster.source.read_timeout);
    peer.options.idle_timeout = Some(cluster.source.idle_timeout);
    peer
}

/// An attempt on an endpoint, recorded in the cluster's passive health when it ends; one
/// dropped unfinished (a cancelled hedge) counts as neither success nor failure.
struct Attempt<'a> {
    cluster: &'a Cluster,
    endpoint: usize,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn start(cluster: &'a Cluster, endpoint: usize) -> Self {
        cluster.outliers.started(endpoint, crate::clock::now_ms());
        Self {
            cluster,
            endpoint,
            done: false,
        }
    }

    fn end(mut self, outcome: Outcome, state: &State) {
        self.done = true;
        record_outcome(state, self.cluster, self.endpoint, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cluster.outliers.abandoned(self.endpoint);
        }
    }
}

/// Count an attempt's outcome on its endpoint; log and count an ejection.
fn record_outcome(state: &State, cluster: &Cluster, endpoint: usize, outcome: Outcome) {
    use hydrus_filters::outlier::Recorded;
    let now = crate::clock::now_ms();
    if let Recorded::Ejected { until_ms } = cluster.outliers.record(endpoint, outcome, now) {
        let addr = cluster
            .endpoints
            .get(endpoint)
            .map_or_else(String::new, |a| a.to_string());
        log::warn!(
            "cluster {}: endpoint {addr} ejected for {} ms after {} failures in a row",
            cluster.name,
            until_ms.saturating_sub(now),
            cluster.outliers.config().consecutive_failures
        );
        state
            .metrics
            .outlier_ejections
            .with_label_values(&[cluster.name.as_str(), addr.as_str()])
            .inc();
    }
}

/// Whether an upstream response status counts against the endpoint: gateway errors (502, 503,
/// 504: Envoy's consecutive gateway failures) do; a 500 is often the request's own fault, which
/// a client could otherwise use to get healthy endpoints ejected.
fn outcome_of(status: u16) -> Outcome {
    if matches!(status, 502..=504) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The `kind` label of `hydrus_upstream_errors_total` for an upstream error.
fn error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError => "connect",
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        _ => "response",
    }
}

/// Remove the hop-by-hop fields of a request (RFC 9110 7.6.1): `Connection` and what it
/// nominates, and the standard ones. pingora does this on its own path; the hedge path writes
/// requests itself.
fn strip_hop_by_hop(req: &mut RequestHeader) {
    let nominated: Vec<HeaderName> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != http::header::HOST)
        .collect();
    for n in nominated {
        req.remove_header(&n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        req.remove_header(n);
    }
}

/// A request's hold on its cluster: counted among its requests in flight, the retry-budget
/// slots it took, the attempt in flight. Dropped when the request ends, however it ends
/// (finished, failed, or cancelled by a connection deadline), it gives all of that back.
struct Hold {
    cluster: Arc<Cluster>,
    retries: u32,
    /// The endpoint of the attempt in flight, until its outcome is recorded.
    endpoint: Option<usize>,
    /// Retries of an attempt on a stale pooled connection, to the same endpoint.
    reuse_retries: u32,
}

impl Hold {
    fn new(cluster: Arc<Cluster>) -> Self {
        cluster.budget.request_started();
        Self {
            cluster,
            retries: 0,
            endpoint: None,
            reuse_retries: 0,
        }
    }

    /// The attempt in flight ended with `outcome`, or (`None`) for a reason that is not the
    /// endpoint's.
    fn end_attempt(&mut self, state: &State, outcome: Option<Outcome>) -> Option<usize> {
        let i = self.endpoint.take()?;
        match outcome {
            Some(o) => record_outcome(state, &self.cluster, i, o),
            None => self.cluster.outliers.abandoned(i),
        }
        Some(i)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(i) = self.endpoint.take() {
            self.cluster.outliers.abandoned(i);
        }
        for _ in 0..self.retries {
            self.cluster.budget.retry_finished();
        }
        self.cluster.budget.request_finished();
    }
}

fn upstream_error(e: Box<Error>) -> Box<Error> {
    let mut e = e;
    e.as_up();
    e
}

/// Per-request state, from the first hook to logging.
pub struct Ctx {
    start: Instant,
    ts_ms: u64,
    running: Option<Arc<Running>>,
    handles: Option<Arc<Handles>>,
    group: Group,
    decision: Option<Decision>,
    cluster: usize,
    /// The request's hold on its cluster, from its first attempt.
    hold: Option<Hold>,
    tried: Tried,
    /// Retry the next attempt on this endpoint (its pooled connection was stale).
    retry_same: Option<usize>,
    /// The upstream's response status, once its header arrived.
    upstream_status: Option<u16>,
    /// The connection guard's slot, to say when the request body has been read.
    slot: Option<Arc<Slot>>,
    /// The identity headers as decided on (user id, device id, request id, QoE, scenario: the
    /// first value of each); exactly these reach the upstream.
    ids: [Option<HeaderValue>; 5],
    /// Set when hydrus made up the request id, to pass it upstream.
    generated_request_id: Option<RequestId>,
    upstream_sent: Option<Instant>,
    upstream_ms: Option<f64>,
    e2e: Option<E2eDecision>,
    /// The e2e table the decision was made on (its bucket's priority is applied upstream).
    e2e_table: Option<Arc<crate::state::E2eState>>,
    /// Requests in flight to the cluster when this one was sent (it included), once counted.
    cluster_load: Option<u32>,
    /// Set when the hedge filter sent a reissue: which attempt answered.
    hedge: Option<Winner>,
}

fn header<'a>(req: &'a RequestHeader, name: &HeaderName) -> Option<&'a [u8]> {
    req.headers.get(name).map(HeaderValue::as_bytes)
}

impl Proxy {
    fn decide(&self, session: &Session, ctx: &mut Ctx) {
        let running = self.state.config.load_full();
        let ktable: Option<Arc<KTableState>> = self.state.ktable.load_full();
        let handles = self.state.handles.load_full();
        let req = session.req_header();
        let h = &running.headers;
        for (slot, name) in ctx.ids.iter_mut().zip(h.all()) {
            *slot = req.headers.get(name).cloned();
        }
        let user = header(req, &h.user_id).filter(|u| !u.is_empty());
        ctx.group = match &running.rollout {
            Some(r) => {
                if user.is_none() {
                    handles.missing_user_id.inc();
                }
                r.assign(user)
            }
            None => Group::Treatment,
        };
        ctx.cluster = running.default_cluster;
        if header(req, &h.request_id).is_none() {
            ctx.generated_request_id = Some(hex_id(rand::random::<u128>()));
        }
        if let Some(hy) = &running.hydrus {
            let scenario = header(req, &h.scenario);
            let inputs = RequestInputs {
                qoe: header(req, &h.qoe),
                scenario,
                now_ms: ctx.ts_ms,
            };
            let stale = ktable
                .as_ref()
                .is_some_and(|k| k.stale(hy.ktable.max_age, ctx.ts_ms));
            let d = hy
                .filter
                .decide(ctx.group, &inputs, ktable.as_ref().map(|k| &k.table), stale);
            if let Some(f) = d.fallback {
                handles.fallback(f);
            }
            if let Some(a) = hy.actions.get(d.strategy) {
                ctx.cluster = a.cluster;
            }
            ctx.decision = Some(d);
        }
        if let Some(e) = &running.e2e {
            // E2E picks the replica group last: it overrides the strategy's cluster.
            let table = self.state.e2e.load_full();
            let stale = table
                .as_ref()
                .is_some_and(|t| t.stale(e.table.max_age, ctx.ts_ms));
            let d = e2e::decide(
                header(req, &e.header),
                table.as_ref().map(|t| &t.table),
                stale,
                rand::random::<f64>(),
            );
            let m = &self.state.metrics;
            let group = match (d.group, d.fallback) {
                (Some(g), _) => g,
                (None, fallback) => {
                    if let Some(f) = fallback {
                        m.fallbacks.with_label_values(&[f.reason()]).inc();
                    }
                    // The default policy: balance across the groups.
                    self.state
                        .rr_groups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % e.groups.len().max(1)
                }
            };
            if let Some(&c) = e.groups.get(group) {
                ctx.cluster = c;
            }
            handles.e2e_decision(m, d.bucket, group, &e.group_names);
            ctx.e2e = Some(d);
            ctx.e2e_table = table;
        }
        ctx.running = Some(running);
        ctx.handles = Some(handles);
    }

    /// Everything the chain does to the upstream request. What hydrus owns is never taken
    /// from the client: `x-hydrus-*`, every header and query key any strategy sets, and the
    /// identity headers, which reach the upstream exactly once with the values decided on
    /// (whatever the client's `Connection` header nominated, and however it spelled `_` for `-`).
    fn prepare_upstream(&self, upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        let Some(running) = ctx.running.as_deref() else {
            return Ok(());
        };
        let h = &running.headers;
        let hydrus = running.hydrus.as_ref();
        let owned: &[HeaderName] = hydrus.map_or(&[], |hy| hy.owned_headers.as_slice());
        let priority = running
            .e2e
            .as_ref()
            .and_then(|e| e.priority_header.as_ref());
        let ids = h.all();
        // Exact identity names are handled below (kept when already right); every other owned
        // name, and every spelling of an identity name that is not the exact one, goes.
        let strip: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| {
                let n = normalized(k);
                n.starts_with("x-hydrus-")
                    || owned.iter().chain(priority).any(|o| normalized(o) == n)
                    || ids.iter().any(|i| *i != *k && normalized(i) == n)
            })
            .cloned()
            .collect();
        for k in strip {
            upstream.remove_header(&k);
        }
        for (name, value) in ids.into_iter().zip(&ctx.ids) {
            let mut sent = upstream.headers.get_all(name).iter();
            let exact = match (value, sent.next(), sent.next()) {
                (Some(v), Some(first), None) => first == v,
                (None, None, _) => true,
                _ => false,
            };
            if !exact {
                upstream.remove_header(name);
                if let Some(v) = value {
                    set_header(upstream, name, v.clone())?;
                }
            }
        }
        set_header(
            upstream,
            &HEADER_GROUP,
            HeaderValue::from_static(ctx.group.as_str()),
        )?;
        if let Some(id) = &ctx.generated_request_id {
            if let Ok(v) = HeaderValue::from_bytes(id) {
                set_header(upstream, &h.request_id, v)?;
            }
        }
        let action = match (hydrus, &ctx.decision) {
            (Some(hy), Some(d)) => hy.actions.get(d.strategy),
            _ => None,
        };
        if let Some(bucket) = ctx.e2e.and_then(|e| e.bucket) {
            let priority = running
                .e2e
                .as_ref()
                .and_then(|e| e.priority_header.as_ref());
            let table = ctx.e2e_table.as_ref();
            if let (Some(h), Some(p)) = (priority, table.and_then(|t| t.table.priority(bucket))) {
                if let Ok(v) = HeaderValue::from_str(p) {
                    set_header(upstream, h, v)?;
                }
            }
        }
        if let Some(a) = action {
            set_header(upstream, &HEADER_STRATEGY, a.name_value.clone())?;
            for (name, value) in &a.headers {
                set_header(upstream, name, value.clone())?;
            }
        }
        if let Some(hy) = hydrus {
            let set = action.map_or(&[][..], |a| a.query.as_slice());
            if let Some(target) = set_query(
                upstream.uri.path(),
                upstream.uri.query(),
                set,
                &hy.owned_query,
            ) {
                match http::Uri::try_from(target) {
                    Ok(uri) => upstream.set_uri(uri),
                    Err(e) => log::warn!("query rewrite produced a bad URI: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Whether this request may be tried again on another endpoint after its attempt on
    /// `failed` failed, taking a retry-budget slot if so (counted either way). A retry away
    /// from an endpoint that passive health has set aside while others are still available is
    /// not charged to the budget: the failure is that endpoint's and it gets no new requests.
    /// When the cluster fails as a whole (nothing else available), the budget applies.
    fn take_retry(&self, ctx: &mut Ctx, failed: Option<usize>) -> bool {
        let Some(hold) = ctx.hold.as_mut() else {
            return false;
        };
        let cluster = &hold.cluster;
        let attempts = ctx.tried.len() as u32;
        if attempts > cluster.retry.attempts || ctx.tried.len() >= cluster.endpoints.len() {
            return false;
        }
        let now = crate::clock::now_ms();
        let isolated = failed.is_some_and(|i| {
            !cluster.outliers.available(i, now) && cluster.others_available(i, now)
        });
        let ok = isolated || cluster.budget.try_retry(&cluster.retry);
        let result = if ok { "sent" } else { "budget_exhausted" };
        self.state
            .metrics
            .upstream_retries
            .with_label_values(&[cluster.name.as_str(), result])
            .inc();
        if ok && !isolated {
            hold.retries += 1;
        }
        ok
    }

    /// Whether the request target is one whose query hydrus can see: origin-form (`/path?q`),
    /// absolute-form, or `*` alone. Anything else could carry query keys past it.
    fn target_ok(req: &RequestHeader) -> bool {
        let raw = req.raw_path();
        raw.starts_with(b"/") || raw == b"*" || req.uri.scheme().is_some()
    }

    /// The request's size on the wire, roughly: request line and header fields.
    fn header_bytes(req: &RequestHeader) -> usize {
        let line = req.method.as_str().len() + req.raw_path().len() + 12;
        req.headers
            .iter()
            .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
    }
}

impl Proxy {
    /// One attempt of a hedged request: the whole response, buffered.
    async fn attempt(
        &self,
        cluster: &Cluster,
        endpoint: usize,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
        let Some(&addr) = cluster.endpoints.get(endpoint) else {
            return Error::e_explain(ErrorType::InternalError, "no such endpoint");
        };
        let guard = Attempt::start(cluster, endpoint);
        let result = self.exchange(addr, cluster, req, max_body).await;
        let outcome = match &result {
            Ok((h, _)) => outcome_of(h.status.as_u16()),
            Err(_) => Outcome::Failure,
        };
        guard.end(outcome, &self.state);
        result
    }

    async fn exchange(
        &self,
        addr: std::net::SocketAddr,
        cluster: &Cluster,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
        let peer = peer(addr, cluster);
        let (mut s, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(upstream_error)?;
        s.set_read_timeout(Some(cluster.source.read_timeout));
        s.write_request_header(Box::new(req))
            .await
            .map_err(upstream_error)?;
        s.finish_request_body().await.map_err(upstream_error)?;
        s.read_response_header().await.map_err(upstream_error)?;
        let header = s
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))
            .map_err(upstream_error)?;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = s.read_response_body().await.map_err(upstream_error)? {
            body.extend_from_slice(&chunk);
            if body.len() > max_body {
                return Err(upstream_error(Error::explain(
                    ErrorType::InternalError,
                    "hedged response larger than max_body_bytes",
                )));
            }
        }
        self.connector
            .release_http_session(s, &peer, Some(cluster.source.idle_timeout))
            .await;
        Ok((header, body.freeze()))
    }

    /// The hedge filter: for an idempotent request without a body on a route with a reissue
    /// timeout, make the upstream calls here (racing a reissue against a slow first attempt)
    /// and answer the client. Returns whether the response was sent; otherwise pingora proxies.
    async fn hedged(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(running) = ctx.running.clone() else {
            return Ok(false);
        };
        let Some(h) = &running.hedge else {
            return Ok(false);
        };
        self.state.hedge_budget.earn();
        let table = self.state.hedge.load_full();
        let Some(table) = table.filter(|t| !t.stale(h.table.max_age, ctx.ts_ms)) else {
            return Ok(false);
        };
        let Some(route) = route_name(&running, ctx) else {
            return Ok(false);
        };
        let Some(timeout) = table.table.timeout(route, rand::random::<f64>()) else {
            return Ok(false);
        };
        let req = session.req_header();
        let idempotent = matches!(req.method, http::Method::GET | http::Method::HEAD);
        let no_body = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
            && req.headers.get(http::header::TRANSFER_ENCODING).is_none();
        let Some(cluster) = running.clusters.get(ctx.cluster).cloned() else {
            return Ok(false);
        };
        // (An upgrade, e.g. a WebSocket GET, is a tunnel, not a response to buffer.)
        if !idempotent || !no_body || cluster.endpoints.is_empty() || session.is_upgrade_req() {
            return Ok(false);
        }
        let mut upstream = req.clone();
        // This path writes the request itself: drop what pingora's path drops for a hop.
        strip_hop_by_hop(&mut upstream);
        self.prepare_upstream(&mut upstream, ctx)?;
        let cluster = &*cluster;
        // The attempts go to different endpoints when the cluster has several.
        let now = crate::clock::now_ms();
        let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
        let Some(a) = cluster.select(key, &ctx.tried, now) else {
            return Ok(false);
        };
        ctx.tried.push(a);
        let b = cluster.select(key, &ctx.tried, now).unwrap_or(a);
        if let Some(c) = running.clusters.get(ctx.cluster) {
            ctx.hold = Some(Hold::new(c.clone()));
        }
        ctx.cluster_load = Some(cluster.budget.in_flight().0);
        let sent = Instant::now();
        let max = h.max_body_bytes;
        let (mut result, winner) = race(
            self.attempt(cluster, a, upstream.clone(), max),
            || self.attempt(cluster, b, upstream.clone(), max),
            Some(timeout),
            &self.state.hedge_budget,
        )
        .await;
        let m = &self.state.metrics;
        match winner {
            Winner::Primary => {
                if sent.elapsed() >= timeout {
                    m.hedges.with_label_values(&[route, "denied"]).inc();
                }
            }
            Winner::Hedge | Winner::PrimaryAfterHedge => {
                ctx.tried.push(b);
                m.hedges.with_label_values(&[route, "sent"]).inc();
                let r = if winner == Winner::Hedge {
                    "won"
                } else {
                    "lost"
                };
                m.hedges.with_label_values(&[route, r]).inc();
                ctx.hedge = Some(winner);
            }
        }
        if let Err(e) = &result {
            m.upstream_errors
                .with_label_values(&[cluster.name.as_str(), error_kind(e)])
                .inc();
            // The first attempt failed before any answer: one more elsewhere, as any retry.
            if winner == Winner::Primary && b != a && self.take_retry(ctx, Some(a)) {
                ctx.tried.push(b);
                result = self.attempt(cluster, b, upstream, max).await;
            }
        }
        let (mut header, body) = result?;
        ctx.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        // The body is whole: say its length, drop framing and hop-by-hop headers.
        header.remove_header(&http::header::TRANSFER_ENCODING);
        header.remove_header(&http::header::CONNECTION);
        header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        let empty = body.is_empty();
        session
            .write_response_header(Box::new(header), empty)
            .await?;
        if !empty {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            ts_ms: now_ms(),
            running: None,
            handles: None,
            group: Group::Treatment,
            decision: None,
            cluster: 0,
            hold: None,
            tried: Tried::default(),
            retry_same: None,
            upstream_status: None,
            slot: None,
            ids: Default::default(),
            generated_request_id: None,
            upstream_sent: None,
            upstream_ms: None,
            e2e: None,
            e2e_table: None,
            cluster_load: None,
            hedge: None,
        }
    }

    /// The connection guard's handle: the request header has been read, its deadline is over.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(slot) = prev.downcast::<Arc<Slot>>() {
            slot.header_read();
            ctx.slot = Some(*slot);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // (The context is made per request, after its header was read: `start` and `ts_ms`
        // are the request's.)
        let limit = self.state.config.load().limits.max_request_header_bytes;
        let req = session.req_header();
        let refusal = if Self::header_bytes(req) > limit {
            Some(("header_too_large", 431))
        } else if !Self::target_ok(req) {
            Some(("bad_target", 400))
        } else {
            None
        };
        if let Some((reason, status)) = refusal {
            self.state
                .metrics
                .requests_rejected
                .with_label_values(&[reason])
                .inc();
            session.set_keepalive(None);
            session.respond_error(status).await?;
            return Ok(true);
        }
        if let Some(slot) = &ctx.slot {
            let req = session.req_header();
            let bodyless = req.headers.get(http::header::TRANSFER_ENCODING).is_none()
                && req
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .is_none_or(|v| v.as_bytes() == b"0");
            if bodyless {
                slot.body_read();
            }
        }
        let t0 = Instant::now();
        self.decide(session, ctx);
        self.state
            .metrics
            .decision_seconds
            .observe(t0.elapsed().as_secs_f64());
        if session.req_header().method.is_idempotent() {
            // Lets a failed attempt's request body be sent again to another endpoint.
            session.enable_retry_buffering();
        }
        self.hedged(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if end_of_stream {
            if let Some(slot) = &ctx.slot {
                slot.body_read();
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let running = match &ctx.running {
            Some(r) => r.clone(),
            None => self.state.config.load_full(),
        };
        let index = if running.clusters.get(ctx.cluster).is_some() {
            ctx.cluster
        } else {
            running.default_cluster
        };
        let cluster = running
            .clusters
            .get(index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream cluster"))?;
        let hold = ctx.hold.get_or_insert_with(|| Hold::new(cluster.clone()));
        if ctx.cluster_load.is_none() {
            ctx.cluster_load = Some(cluster.budget.in_flight().0);
        }
        let now = crate::clock::now_ms();
        let i = match ctx.retry_same.take() {
            Some(i) => i,
            None => {
                let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
                let Some(i) = cluster.select(key, &ctx.tried, now) else {
                    return Error::e_explain(ErrorType::InternalError, "no endpoint left to try");
                };
                ctx.tried.push(i);
                i
            }
        };
        cluster.outliers.started(i, now);
        hold.endpoint = Some(i);
        Ok(Box::new(peer(cluster.endpoints[i], cluster)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(hold) = ctx.hold.as_mut() else {
            return e;
        };
        self.state
            .metrics
            .upstream_errors
            .with_label_values(&[hold.cluster.name.as_str(), "connect"])
            .inc();
        let failed = hold.end_attempt(&self.state, Some(Outcome::Failure));
        // Nothing was sent: any request may go to another endpoint.
        e.set_retry(self.take_retry(ctx, failed));
        e
    }

    /// An attempt failed after connecting. An idempotent request whose response has not begun
    /// is tried again on another endpoint, within the retry budget; one that failed on a stale
    /// pooled connection, on the same endpoint with a new one (as pingora does). A failure
    /// while the client was still sending its body is the client's, not the endpoint's.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(hold) = ctx.hold.as_mut() else {
            e.set_retry(false);
            return e;
        };
        let body_done = session.as_mut().is_body_done();
        let responded = session.response_written().is_some();
        let retryable = session.req_header().method.is_idempotent()
            && !responded
            && !session.as_ref().retry_buffer_truncated();
        let stale = client_reused
            && matches!(e.retry, pingora::RetryType::ReusedOnly)
            && !responded
            && hold.reuse_retries < 2;
        if *e.esource() == ErrorSource::Downstream || !body_done {
            hold.end_attempt(&self.state, None);
            e.set_retry(false);
            return e;
        }
        if stale && retryable {
            // The upstream closed a kept-alive connection: not a failure of the endpoint.
            hold.reuse_retries += 1;
            ctx.retry_same = hold.end_attempt(&self.state, None);
            e.set_retry(true);
            return e;
        }
        let failed = hold.end_attempt(&self.state, Some(Outcome::Failure));
        let retry = retryable && self.take_retry(ctx, failed);
        e.set_retry(retry);
        e
    }

    /// A client that went away is not an error worth a log line per request.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// Like pingora's default, but an upstream timeout is a 504 (as in Envoy), and final upstream
    /// failures are counted by kind.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let timeout = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
        );
        let code = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (_, ErrorSource::Upstream) if timeout => 504,
            (_, ErrorSource::Upstream) => 502,
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0, // the client is gone
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if *e.esource() == ErrorSource::Upstream {
            let connect = matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
            );
            // Failed connects were counted per attempt in fail_to_connect.
            if !connect {
                let cluster = ctx
                    .running
                    .as_ref()
                    .and_then(|r| r.clusters.get(ctx.cluster))
                    .map_or("", |c| c.name.as_str());
                let kind = if timeout { "timeout" } else { "response" };
                self.state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[cluster, kind])
                    .inc();
            }
        }
        let code = if session.response_written().is_some() {
            0 // the response began: the client sees it cut short
        } else {
            code
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.prepare_upstream(upstream, ctx)?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            return Ok(()); // an interim response (100 Continue): the answer is still to come
        }
        if let Some(t) = ctx.upstream_sent {
            ctx.upstream_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        ctx.upstream_status = Some(status);
        // It answered: not hung. Whether the exchange succeeded is known at its end.
        if let Some(h) = &ctx.hold {
            if let Some(i) = h.endpoint {
                h.cluster.outliers.progress(i, crate::clock::now_ms());
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let (Some(running), Some(handles)) = (ctx.running.clone(), ctx.handles.clone()) else {
            return;
        };
        if let Some(hold) = ctx.hold.as_mut() {
            let outcome = match (e, ctx.upstream_status) {
                (Some(e), _) if *e.esource() == ErrorSource::Upstream => Some(Outcome::Failure),
                (Some(_), _) => None,
                (None, status) => status.map(outcome_of),
            };
            hold.end_attempt(&self.state, outcome);
        }
        // The hold itself is given back when the context drops.
        ctx.hold = None;
        let written = session.response_written();
        let status = written.map_or(0, |r| r.status.as_u16());
        // A response that began and then failed: the client got it cut short.
        let error = match e {
            Some(e) if written.is_some() => Some(if *e.esource() == ErrorSource::Upstream {
                "upstream_body"
            } else {
                "downstream"
            }),
            _ => None,
        };
        let strategy = ctx.decision.as_ref().map_or(0, |d| d.strategy);
        let declared = ctx.decision.as_ref().is_none_or(|d| d.scenario_declared);
        let scenario = ctx.ids[4].as_ref().map(HeaderValue::as_bytes);
        let slot = handles.scenario_slot(scenario, declared);
        handles.request(strategy, ctx.group, slot);
        if let (Some(hy), Some(d)) = (running.hydrus.as_ref(), ctx.decision.as_ref()) {
            let set = &hy.filter.strategies;
            let spend = |j: usize| Spend {
                cost: set.get(j).map_or(0.0, |s| s.cost),
                qoe: d.qoe.as_ref().and_then(|q| q.get(j)),
            };
            handles.spend(
                ctx.group,
                slot,
                spend(d.strategy),
                d.would_choose.map(|j| (j, spend(j))),
            );
        }
        let total = ctx.start.elapsed().as_secs_f64();
        if let Some(h) = handles.request_by_group.get(ctx.group.index()) {
            h.observe(total);
        }
        if let Some(h) = handles.overhead_by_group.get(ctx.group.index()) {
            // What the proxy added: everything but the wait for the upstream's answer.
            h.observe((total - ctx.upstream_ms.unwrap_or(0.0) / 1000.0).max(0.0));
        }
        if let (Some(ms), Some(h)) = (ctx.upstream_ms, handles.upstream_by_strategy.get(strategy)) {
            h.observe(ms / 1000.0);
        }
        if let Some(q) = &self.state.log {
            q.push(Box::new(Pending {
                running,
                ts_ms: ctx.ts_ms,
                ids: std::mem::take(&mut ctx.ids),
                generated_id: ctx.generated_request_id,
                group: ctx.group,
                decision: ctx.decision,
                status,
                upstream_ms: ctx.upstream_ms,
                total_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
                cluster: ctx.cluster,
                e2e: ctx.e2e,
                cluster_load: ctx.cluster_load,
                hedge: ctx.hedge,
                error,
            }));
        }
    }
}
