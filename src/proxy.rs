//! The pingora edge: `ProxyHttp` hooks that read headers into the plain filters of
//! `hydrus-filters` and apply their decision (cluster, headers, query) to the upstream request.
//!
//! No hook returns an error because of what a client sent: bad input falls back to the default
//! strategy and is counted. Errors only come from the upstream (502/504, as any proxy).

use crate::cluster::{Cluster, Tried};
use crate::config::{normalized, Running};
use crate::conns::Slot;
use crate::metrics::Handles;
use crate::state::{now_ms, KTableState, State};
use async_trait::async_trait;
use http::header::HeaderValue;
use http::HeaderName;
use hydrus_filters::e2e::{self, E2eDecision, MAX_BUCKETS};
use hydrus_filters::hedge::{race, Winner};
use hydrus_filters::log::capped_text;
use hydrus_filters::outlier::Outcome;
use hydrus_filters::query::set_query;
use hydrus_filters::{Decision, Group, LogRecord, RequestInputs, ValueInfo};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;

pub const HEADER_STRATEGY: &str = "x-hydrus-strategy";
pub const HEADER_GROUP: &str = "x-hydrus-group";

/// `hydrus_e2e_decisions_total`'s bucket labels, made once.
static BUCKET_LABELS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (0..MAX_BUCKETS).map(|b| b.to_string()).collect());

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

/// Whether an upstream response status counts against the endpoint (Envoy's consecutive 5xx).
fn outcome_of(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::Failure
    } else {
        Outcome::Success
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
    /// The endpoint of the attempt in flight, until its outcome is recorded.
    endpoint: Option<usize>,
    tried: Tried,
    /// Retry-budget slots this request holds.
    retries: u32,
    /// Whether the request is counted in its cluster's requests in flight.
    counted: bool,
    /// The identity headers as decided on (user id, device id, request id, QoE, scenario: the
    /// first value of each); exactly these reach the upstream.
    ids: [Option<HeaderValue>; 5],
    /// Set when hydrus made up the request id, to pass it upstream.
    generated_request_id: Option<String>,
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

/// 32 lowercase hex digits, without the formatting machinery (this runs per request).
fn hex_id(v: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for i in (0..32).rev() {
        s.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
    s
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
            let bucket = d.bucket.map_or("none", |b| {
                BUCKET_LABELS.get(b).map_or("none", |s| s.as_str())
            });
            let gname = e.group_names.get(group).map_or("", |s| s.as_str());
            m.e2e_decisions.with_label_values(&[bucket, gname]).inc();
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
        let strip: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| {
                let n = normalized(k);
                n.starts_with("x-hydrus-")
                    || owned.iter().any(|o| normalized(o) == n)
                    || h.all().iter().any(|i| normalized(i) == n)
            })
            .cloned()
            .collect();
        for k in strip {
            upstream.remove_header(&k);
        }
        for (name, value) in h.all().into_iter().zip(&ctx.ids) {
            if let Some(v) = value {
                upstream.insert_header(name.clone(), v.clone())?;
            }
        }
        upstream.insert_header(HEADER_GROUP, ctx.group.as_str())?;
        if let Some(id) = &ctx.generated_request_id {
            upstream.insert_header(h.request_id.clone(), id.as_str())?;
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
                upstream.insert_header(h.clone(), p)?;
            }
        }
        if let Some(a) = action {
            upstream.insert_header(HEADER_STRATEGY, a.name_value.clone())?;
            for (name, value) in &a.headers {
                upstream.insert_header(name.clone(), value.clone())?;
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

    /// A header value for the log record, capped in length (counted when cut).
    fn field(&self, raw: Option<&[u8]>, name: &str) -> String {
        let (text, cut) = capped_text(raw.unwrap_or_default());
        if cut {
            self.state
                .metrics
                .log_fields_truncated
                .with_label_values(&[name])
                .inc();
        }
        text
    }

    fn record(&self, ctx: &Ctx, running: &Running, status: u16, error: Option<&str>) -> LogRecord {
        let hydrus = running.hydrus.as_ref();
        let strategies = hydrus.map(|hy| &hy.filter.strategies);
        let d = ctx.decision.as_ref();
        let value_info = match (strategies, d.and_then(|d| d.qoe.as_ref())) {
            (Some(set), Some(q)) => set
                .strategies()
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    q.get(j).map(|qoe| ValueInfo {
                        strategy: s.name.clone(),
                        cost: s.cost,
                        qoe,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let chosen = match (strategies, d) {
            (Some(set), Some(d)) => set
                .get(d.strategy)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            _ => "default".into(),
        };
        let id = |i: usize| ctx.ids[i].as_ref().map(HeaderValue::as_bytes);
        let request_id = match &ctx.generated_request_id {
            Some(g) => g.clone(),
            None => self.field(id(2), "request_id"),
        };
        let declared = d.is_none_or(|d| d.scenario_declared);
        let (scenario, scenario_raw) = match id(4) {
            None => (hydrus_filters::ktable::DEFAULT_SCENARIO.to_string(), None),
            Some(raw) if declared => (self.field(Some(raw), "scenario"), None),
            Some(raw) => (
                crate::metrics::SCENARIO_OTHER.to_string(),
                Some(self.field(Some(raw), "scenario")),
            ),
        };
        LogRecord {
            ts_ms: ctx.ts_ms,
            request_id,
            user_id: self.field(id(0), "user_id"),
            device_id: self.field(id(1), "device_id"),
            scenario,
            group: ctx.group.as_str().into(),
            chosen,
            k: d.and_then(|d| d.k),
            value_info,
            status,
            upstream_ms: ctx.upstream_ms,
            fallback: d
                .and_then(|d| d.fallback)
                .map(|f| f.reason())
                .or_else(|| ctx.e2e.and_then(|e| e.fallback).map(|f| f.reason()))
                .map(str::to_string),
            cluster: running.clusters.get(ctx.cluster).map(|c| c.name.clone()),
            total_ms: Some(ctx.start.elapsed().as_secs_f64() * 1000.0),
            external_delay_ms: ctx.e2e.and_then(|e| e.external_ms),
            cluster_load: ctx.cluster_load,
            e2e_bucket: ctx.e2e.and_then(|e| e.bucket).map(|b| b as u32),
            hedge: ctx.hedge.map(|w| match w {
                Winner::Hedge => "hedge".to_string(),
                Winner::Primary | Winner::PrimaryAfterHedge => "primary".to_string(),
            }),
            scenario_raw,
            error: error.map(str::to_string),
        }
    }

    /// Whether this request may be tried again on another endpoint of `cluster` after its
    /// attempt on `failed` failed, taking a retry-budget slot if so (counted either way). A
    /// retry away from an endpoint that passive health has set aside (ejected, or hung) is not
    /// charged to the budget: the failure is that endpoint's, it gets no new requests, and at
    /// most `max_ejection_percent` of a cluster can be set aside, so this cannot multiply the
    /// load of a cluster failing as a whole.
    fn take_retry(&self, ctx: &mut Ctx, cluster: &Cluster, failed: Option<usize>) -> bool {
        let attempts = ctx.tried.len() as u32;
        if attempts > cluster.retry.attempts || ctx.tried.len() >= cluster.endpoints.len() {
            return false;
        }
        let now = crate::clock::now_ms();
        let set_aside = failed.is_some_and(|i| !cluster.outliers.available(i, now));
        if set_aside {
            self.state
                .metrics
                .upstream_retries
                .with_label_values(&[cluster.name.as_str(), "sent"])
                .inc();
            return true;
        }
        let ok = cluster.budget.try_retry(&cluster.retry);
        let result = if ok { "sent" } else { "budget_exhausted" };
        self.state
            .metrics
            .upstream_retries
            .with_label_values(&[cluster.name.as_str(), result])
            .inc();
        if ok {
            ctx.retries += 1;
        }
        ok
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
        let Some(timeout) = table.table.timeout(route) else {
            return Ok(false);
        };
        let req = session.req_header();
        let idempotent = matches!(req.method, http::Method::GET | http::Method::HEAD);
        let no_body = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
            && req.headers.get(http::header::TRANSFER_ENCODING).is_none();
        let Some(cluster) = running.clusters.get(ctx.cluster) else {
            return Ok(false);
        };
        if !idempotent || !no_body || cluster.endpoints.is_empty() {
            return Ok(false);
        }
        let mut upstream = req.clone();
        self.prepare_upstream(&mut upstream, ctx)?;
        // The attempts go to different endpoints when the cluster has several.
        let now = crate::clock::now_ms();
        let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
        let Some(a) = cluster.select(key, &ctx.tried, now) else {
            return Ok(false);
        };
        ctx.tried.push(a);
        let b = cluster.select(key, &ctx.tried, now).unwrap_or(a);
        cluster.budget.request_started();
        ctx.counted = true;
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
        if result.is_err() && winner == Winner::Primary && b != a {
            // The first attempt failed outright (e.g. refused): one more, elsewhere.
            m.upstream_errors
                .with_label_values(&[cluster.name.as_str(), "connect"])
                .inc();
            ctx.tried.push(b);
            result = self.attempt(cluster, b, upstream, max).await;
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
            endpoint: None,
            tried: Tried::default(),
            retries: 0,
            counted: false,
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
        _ctx: &mut Ctx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(slot) = prev.downcast::<Arc<Slot>>() {
            slot.header_read();
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Keepalive connections reuse the ctx creation time of their first request.
        ctx.start = Instant::now();
        ctx.ts_ms = now_ms();
        let limit = self.state.config.load().limits.max_request_header_bytes;
        if Self::header_bytes(session.req_header()) > limit {
            self.state
                .metrics
                .requests_rejected
                .with_label_values(&["header_too_large"])
                .inc();
            session.set_keepalive(None);
            session.respond_error(431).await?;
            return Ok(true);
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

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let running = match &ctx.running {
            Some(r) => r.clone(),
            None => self.state.config.load_full(),
        };
        let cluster = running
            .clusters
            .get(ctx.cluster)
            .or_else(|| running.clusters.get(running.default_cluster))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream cluster"))?;
        if !ctx.counted {
            cluster.budget.request_started();
            ctx.counted = true;
            ctx.cluster_load = Some(cluster.budget.in_flight().0);
        }
        let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
        let _ = session;
        let now = crate::clock::now_ms();
        let Some(i) = cluster.select(key, &ctx.tried, now) else {
            return Error::e_explain(ErrorType::InternalError, "no endpoint left to try");
        };
        ctx.tried.push(i);
        cluster.outliers.started(i, now);
        ctx.endpoint = Some(i);
        Ok(Box::new(peer(cluster.endpoints[i], cluster)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(running) = ctx.running.clone() else {
            return e;
        };
        if let Some(c) = running.clusters.get(ctx.cluster) {
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[c.name.as_str(), "connect"])
                .inc();
            let failed = ctx.endpoint.take();
            if let Some(i) = failed {
                record_outcome(&self.state, c, i, Outcome::Failure);
            }
            // Nothing was sent: any request may go to another endpoint.
            e.set_retry(self.take_retry(ctx, c, failed));
        }
        e
    }

    /// An attempt failed after connecting. An idempotent request whose response has not begun
    /// is tried again on another endpoint, within the retry budget.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(running) = ctx.running.clone() else {
            e.set_retry(false);
            return e;
        };
        let Some(c) = running.clusters.get(ctx.cluster) else {
            e.set_retry(false);
            return e;
        };
        let failed = ctx.endpoint.take();
        if let Some(i) = failed {
            if *e.esource() == ErrorSource::Downstream {
                c.outliers.abandoned(i);
            } else {
                record_outcome(&self.state, c, i, Outcome::Failure);
            }
        }
        let retry = *e.esource() != ErrorSource::Downstream
            && session.req_header().method.is_idempotent()
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
            && self.take_retry(ctx, c, failed);
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
        if let Some(t) = ctx.upstream_sent {
            ctx.upstream_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        if let (Some(r), Some(i)) = (&ctx.running, ctx.endpoint.take()) {
            if let Some(c) = r.clusters.get(ctx.cluster) {
                record_outcome(
                    &self.state,
                    c,
                    i,
                    outcome_of(upstream_response.status.as_u16()),
                );
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let (Some(running), Some(handles)) = (ctx.running.clone(), ctx.handles.clone()) else {
            return;
        };
        if let Some(c) = running.clusters.get(ctx.cluster) {
            if let Some(i) = ctx.endpoint.take() {
                match e {
                    Some(e) if *e.esource() == ErrorSource::Upstream => {
                        record_outcome(&self.state, c, i, Outcome::Failure)
                    }
                    _ => c.outliers.abandoned(i),
                }
            }
            for _ in 0..ctx.retries {
                c.budget.retry_finished();
            }
            if ctx.counted {
                c.budget.request_finished();
            }
        }
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
        handles.request(strategy, ctx.group, scenario, declared);
        if let Some(h) = handles.request_by_group.get(ctx.group.index()) {
            h.observe(ctx.start.elapsed().as_secs_f64());
        }
        if let (Some(ms), Some(h)) = (ctx.upstream_ms, handles.upstream_by_strategy.get(strategy)) {
            h.observe(ms / 1000.0);
        }
        if let Some(q) = &self.state.log {
            q.push(self.record(ctx, &running, status, error));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_ids() {
        assert_eq!(super::hex_id(0xabc), format!("{:032x}", 0xabc));
        assert_eq!(super::hex_id(u128::MAX), "f".repeat(32));
    }
}
