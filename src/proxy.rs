//! The pingora edge: `ProxyHttp` hooks that read headers into the plain filters of
//! `hydrus-filters` and apply their decision (cluster, headers, query) to the upstream request.
//!
//! No hook returns an error because of what a client sent: bad input falls back to the default
//! strategy and is counted. Errors only come from the upstream (502/504, as any proxy).

use crate::config::Running;
use crate::metrics::Handles;
use crate::state::{now_ms, KTableState, State};
use async_trait::async_trait;
use http::header::HeaderValue;
use http::HeaderName;
use hydrus_filters::e2e::{self, E2eDecision, MAX_BUCKETS};
use hydrus_filters::hedge::{race, Winner};
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
fn peer(addr: std::net::SocketAddr, cluster: &crate::config::Cluster) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(cluster.connect_timeout);
    peer.options.total_connection_timeout = Some(cluster.connect_timeout);
    peer.options.read_timeout = Some(cluster.read_timeout);
    peer.options.write_timeout = Some(cluster.read_timeout);
    peer.options.idle_timeout = Some(cluster.idle_timeout);
    peer
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
    /// Whether the request named a scenario (for the metric label of unknown ones).
    scenario_named: bool,
    cluster: usize,
    first_endpoint: usize,
    tries: usize,
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

fn text(v: Option<&[u8]>) -> String {
    v.map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

impl Proxy {
    fn decide(&self, session: &Session, ctx: &mut Ctx) {
        let running = self.state.config.load_full();
        let ktable: Option<Arc<KTableState>> = self.state.ktable.load_full();
        let handles = self.state.handles.load_full();
        let req = session.req_header();
        let h = &running.headers;
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
            ctx.scenario_named = scenario.is_some();
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

    /// Everything the chain does to the upstream request: hydrus's headers (never trusted from
    /// the client), the request id, the strategy's headers and query, E2E's priority.
    fn prepare_upstream(&self, upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        // Headers hydrus sets are never trusted from the client.
        let spoofed: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-hydrus-"))
            .cloned()
            .collect();
        for k in spoofed {
            upstream.remove_header(&k);
        }
        upstream.insert_header(HEADER_GROUP, ctx.group.as_str())?;
        if let Some(id) = &ctx.generated_request_id {
            if let Some(r) = &ctx.running {
                upstream.insert_header(r.headers.request_id.clone(), id.as_str())?;
            }
        }
        let action = match (&ctx.running, &ctx.decision) {
            (Some(r), Some(d)) => r.hydrus.as_ref().and_then(|h| h.actions.get(d.strategy)),
            _ => None,
        };
        if let (Some(r), Some(bucket)) = (&ctx.running, ctx.e2e.and_then(|e| e.bucket)) {
            let priority = r.e2e.as_ref().and_then(|e| e.priority_header.as_ref());
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
            if let Some(target) = set_query(upstream.uri.path(), upstream.uri.query(), &a.query) {
                match http::Uri::try_from(target) {
                    Ok(uri) => upstream.set_uri(uri),
                    Err(e) => log::warn!("query rewrite produced a bad URI: {e}"),
                }
            }
        }
        Ok(())
    }

    fn record(&self, session: &Session, ctx: &Ctx, running: &Running, status: u16) -> LogRecord {
        let req = session.req_header();
        let h = &running.headers;
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
        let request_id = match &ctx.generated_request_id {
            Some(id) => id.clone(),
            None => text(header(req, &h.request_id)),
        };
        let scenario = header(req, &h.scenario).map_or_else(
            || hydrus_filters::ktable::DEFAULT_SCENARIO.to_string(),
            |s| text(Some(s)),
        );
        LogRecord {
            ts_ms: ctx.ts_ms,
            request_id,
            user_id: text(header(req, &h.user_id)),
            device_id: text(header(req, &h.device_id)),
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
        }
    }
}

impl Proxy {
    /// One attempt of a hedged request to `addr`: the whole response, buffered.
    async fn attempt(
        &self,
        addr: std::net::SocketAddr,
        cluster: &crate::config::Cluster,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
        let peer = peer(addr, cluster);
        let (mut s, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(upstream_error)?;
        s.set_read_timeout(Some(cluster.read_timeout));
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
            .release_http_session(s, &peer, Some(cluster.idle_timeout))
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
        let n = cluster.endpoints.len();
        let first = self.state.next_rr() % n;
        let (a, b) = (cluster.endpoints[first], cluster.endpoints[(first + 1) % n]);
        if let Some(c) = running.inflight.get(ctx.cluster) {
            let load = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            ctx.cluster_load = Some(load as u32);
        }
        let sent = Instant::now();
        let max = h.max_body_bytes;
        let (mut result, winner) = race(
            self.attempt(a, cluster, upstream.clone(), max),
            || self.attempt(b, cluster, upstream.clone(), max),
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
        if result.is_err() && winner == Winner::Primary && n > 1 {
            // The first attempt failed outright (e.g. refused): one more, elsewhere.
            m.upstream_errors
                .with_label_values(&[cluster.name.as_str(), "connect"])
                .inc();
            result = self.attempt(b, cluster, upstream, max).await;
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
            scenario_named: false,
            cluster: 0,
            first_endpoint: 0,
            tries: 0,
            generated_request_id: None,
            upstream_sent: None,
            upstream_ms: None,
            e2e: None,
            e2e_table: None,
            cluster_load: None,
            hedge: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Keepalive connections reuse the ctx creation time of their first request.
        ctx.start = Instant::now();
        ctx.ts_ms = now_ms();
        let t0 = Instant::now();
        self.decide(session, ctx);
        self.state
            .metrics
            .decision_seconds
            .observe(t0.elapsed().as_secs_f64());
        self.hedged(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let running = match &ctx.running {
            Some(r) => r.clone(),
            None => self.state.config.load_full(),
        };
        let cluster = running
            .clusters
            .get(ctx.cluster)
            .or_else(|| running.clusters.get(running.default_cluster))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream cluster"))?;
        let n = cluster.endpoints.len();
        if n == 0 {
            return Error::e_explain(ErrorType::InternalError, "cluster without endpoints");
        }
        if ctx.tries == 0 {
            ctx.first_endpoint = self.state.next_rr() % n;
            if let Some(c) = running.inflight.get(ctx.cluster) {
                let load = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                ctx.cluster_load = Some(load as u32);
            }
        }
        let addr = cluster.endpoints[(ctx.first_endpoint + ctx.tries) % n];
        ctx.tries += 1;
        Ok(Box::new(peer(addr, cluster)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(r) = &ctx.running {
            if let Some(c) = r.clusters.get(ctx.cluster) {
                self.state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[c.name.as_str(), "connect"])
                    .inc();
                // Try the cluster's other endpoints before giving up.
                if ctx.tries < c.endpoints.len() {
                    e.set_retry(true);
                }
            }
        }
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
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_sent {
            ctx.upstream_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let (Some(running), Some(handles)) = (ctx.running.clone(), ctx.handles.clone()) else {
            return;
        };
        if ctx.cluster_load.is_some() {
            if let Some(c) = running.inflight.get(ctx.cluster) {
                c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let strategy = ctx.decision.as_ref().map_or(0, |d| d.strategy);
        let scenario = ctx.decision.as_ref().and_then(|d| d.scenario);
        handles.request(strategy, ctx.group, scenario, ctx.scenario_named);
        if let Some(h) = handles.request_by_group.get(ctx.group.index()) {
            h.observe(ctx.start.elapsed().as_secs_f64());
        }
        if let (Some(ms), Some(h)) = (ctx.upstream_ms, handles.upstream_by_strategy.get(strategy)) {
            h.observe(ms / 1000.0);
        }
        if let Some(q) = &self.state.log {
            q.push(self.record(session, ctx, &running, status));
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
