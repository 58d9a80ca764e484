//! The pingora edge: `ProxyHttp` hooks that turn a session into the inputs of its route's
//! filters (`hydrus-filters`), and apply what they decided (cluster, headers, query) to the
//! upstream request.
//!
//! - [`conns`]: the listener's connections (cap, eviction, idle/header/body deadlines, drain).
//! - [`upstream`]: attempts on endpoints, passive health, retries.
//! - [`prepare`]: the upstream request.
//! - [`hedging`]: the hedge filter's reissues.
//!
//! No hook returns an error because of what a client sent: bad input falls back to the default
//! strategy and is counted. Errors only come from the upstream (502/504, as any proxy); a
//! request hydrus cannot proxy as it was sent (see [`Proxy::refused`]) and one no route matches
//! are answered by hydrus (400, 404, 431: counted).

pub mod conns;
pub mod grpc;
mod hedging;
pub mod prepare;
pub mod upstream;

pub use prepare::HEADER_GROUP;

use crate::config::{RouteRuntime, Running};
use crate::logsink::record::{Access, Pending};
use crate::state::State;
use conns::Slot;
use http::header::HeaderValue;
use hydrus_filters::filter::{Input, RequestState, REQUEST_ID, SCENARIO};
use hydrus_filters::log::text::{hex_id, protocol, RequestId};
use hydrus_filters::outcome::RequestEnd;
use hydrus_filters::retry::Tried;
use hydrus_filters::route::normalize_path;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use upstream::{peer, Hold};

pub use hydrus_filters::hydrus::filter::HEADER_STRATEGY;

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

/// Per-request state, from the first hook to logging.
pub struct Ctx {
    start: Instant,
    ts_ms: u64,
    running: Option<Arc<Running>>,
    /// The route the request took.
    route: Option<Arc<RouteRuntime>>,
    /// Its metric handles as the decision saw them (scenario slots are of this generation).
    handles: Option<Arc<crate::config::RouteHandles>>,
    /// What the route's filters decided.
    state: RequestState,
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
    /// Requests in flight to the cluster when this one was sent (it included), once counted.
    cluster_load: Option<u32>,
    /// The request's path normalized, when that changed it: it was routed by it and is
    /// forwarded as it.
    normalized_path: Option<String>,
    /// A gRPC call (see [`grpc`]), and the `grpc-status` its client got.
    grpc: bool,
    grpc_status: Option<u8>,
    /// The request's trace, when `tracing:` is on and it is recorded.
    trace: Option<Box<crate::otel::RequestTrace>>,
    /// Its trace id for the log record (see [`crate::otel::Sampled::logged_id`]).
    trace_id: Option<[u8; 16]>,
    /// The endpoint of the attempt that answered (or of the last one tried).
    endpoint: Option<std::net::SocketAddr>,
}

/// Whether a request found its route.
enum Routed {
    Yes,
    /// Its path holds an encoded slash or a backslash (`limits.escaped_slashes: reject`).
    EscapedSlash,
    NoRoute,
}

impl Proxy {
    /// Find the request's route and run its filters.
    fn decide(&self, session: &Session, ctx: &mut Ctx) -> Routed {
        let running = self.state.config.load_full();
        let req = session.req_header();
        let Ok(path) = normalize_path(req.uri.path(), running.limits.escaped_slashes) else {
            return Routed::EscapedSlash;
        };
        let Some(route) = running.route_for(&req.method, &path, &req.headers).cloned() else {
            return Routed::NoRoute;
        };
        ctx.ids = running.identity.first_values(&req.headers);
        ctx.state = RequestState::new(route.route.cluster);
        let chain = &route.route.chain;
        if route.route.managed {
            if ctx.ids[REQUEST_ID].is_none() {
                ctx.generated_request_id = Some(hex_id(rand::random::<u128>()));
            }
            let input = Input {
                method: &req.method,
                path: &path,
                headers: &req.headers,
                now_ms: ctx.ts_ms,
                ids: &ctx.ids,
            };
            chain.decide(&input, &mut ctx.state);
        }
        ctx.handles = Some(route.handles());
        if let (Some(sampling), Some(_)) = (running.tracing, &self.state.traces) {
            // Two `traceparent` fields are no valid one (W3C): a new trace.
            let mut sent = req
                .headers
                .get_all(crate::otel::context::TRACEPARENT)
                .iter();
            let sent = match (sent.next(), sent.next()) {
                (Some(one), None) if sampling.trust_incoming => Some(one.as_bytes()),
                _ => None,
            };
            let decided = crate::otel::Sampled::decide(sent, sampling.ratio);
            ctx.trace_id = decided.logged_id();
            ctx.trace = decided.start();
            if ctx.trace.is_some() {
                self.state.metrics.traces_sampled.inc();
            }
        }
        if let std::borrow::Cow::Owned(p) = path {
            ctx.normalized_path = Some(p);
        }
        ctx.running = Some(running);
        ctx.route = Some(route);
        Routed::Yes
    }

    /// Refuse what hydrus cannot proxy: headers over the limit (431), a request target whose
    /// query hydrus cannot see, a missing or bad `Host`, an encoded slash in the path (400),
    /// no route (404). Counted by reason.
    /// A gRPC call gets the matching gRPC status instead.
    async fn refused(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reason: &str,
        status: u16,
    ) -> Result<bool> {
        self.state
            .metrics
            .requests_rejected
            .with_label_values(&[reason])
            .inc();
        let answered = if ctx.grpc {
            let code = grpc::respond(session, status).await?;
            ctx.grpc_status = Some(code);
            (status, Some(code))
        } else {
            session.set_keepalive(None);
            session.respond_error(status).await?;
            (status, None)
        };
        self.count_refused(session, ctx, answered);
        Ok(true)
    }

    /// A refused request that matches a route counts in that route's outcomes, in the group the
    /// rollout puts its user in (no decision ran: no route, no group, for one that matches none).
    fn count_refused(&self, session: &Session, ctx: &Ctx, (status, grpc): (u16, Option<u8>)) {
        if ctx.route.is_some() {
            return; // decided on: its end counts it
        }
        let running = self.state.config.load();
        let req = session.req_header();
        let Ok(path) = normalize_path(req.uri.path(), running.limits.escaped_slashes) else {
            return;
        };
        let Some(route) = running.route_for(&req.method, &path, &req.headers) else {
            return;
        };
        let user = req
            .headers
            .get(&running.identity.names()[hydrus_filters::filter::USER_ID])
            .map(HeaderValue::as_bytes);
        let group = hydrus_filters::rollout::of(&route.route.chain)
            .map_or(hydrus_filters::Group::Treatment, |r| {
                r.group_for(user, ctx.ts_ms)
            });
        let end = RequestEnd {
            status,
            grpc_status: grpc,
            ..RequestEnd::default()
        };
        route.handles().refused(group, end.class());
    }

    /// Whether the request target is one whose query hydrus can see: origin-form (`/path?q`),
    /// absolute-form, or `*` alone. Anything else could carry query keys past it.
    fn target_ok(req: &RequestHeader) -> bool {
        let raw = req.raw_path();
        raw.starts_with(b"/") || raw == b"*" || req.uri.scheme().is_some()
    }

    /// Whether the request names its host as RFC 9112 3.2 wants: HTTP/1.1 with one valid
    /// `Host` (nginx answers 400 otherwise too), HTTP/1.0 with none or one valid, HTTP/2 with
    /// `:authority` or a valid `Host`. (pingora refuses two `Host` fields itself, and a `Host`
    /// that differs from the target's authority.)
    fn host_ok(req: &RequestHeader) -> bool {
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(h), None) => hydrus_filters::request::host_ok(h.as_bytes()),
            (Some(_), Some(_)) => false,
            (None, _) => match req.version {
                http::Version::HTTP_2 => req.uri.authority().is_some(),
                v => matches!(v, http::Version::HTTP_09 | http::Version::HTTP_10),
            },
        }
    }

    /// Make `Content-Length` one field with one value (`5, 5` or two `5` fields, which pingora
    /// accepts as framing but would forward as sent, become `5`, RFC 9110 8.6). `false` when
    /// its values differ or are not numbers (pingora's parser refuses those first).
    fn one_content_length(req: &mut RequestHeader) -> bool {
        let fields = req.headers.get_all(http::header::CONTENT_LENGTH);
        let mut iter = fields.iter();
        match (iter.next(), iter.next()) {
            (None, _) => return true,
            (Some(one), None) if one.as_bytes().iter().all(u8::is_ascii_digit) => return true,
            _ => {}
        }
        match hydrus_filters::request::content_length(fields.iter().map(|v| v.as_bytes())) {
            Ok(Some(n)) => req
                .insert_header(http::header::CONTENT_LENGTH, n.to_string())
                .is_ok(),
            _ => false,
        }
    }

    /// An absolute-form target (`GET http://host/p?q HTTP/1.1`, which RFC 9112 3.2.2 says a
    /// server must accept) made origin-form: its URI holds the path and query hydrus routes on
    /// and edits, and pingora would otherwise send the target upstream as the client wrote it.
    /// (pingora has checked that its authority is the `Host`.)
    fn origin_form(req: &mut RequestHeader) {
        let raw = req.raw_path();
        let absolute = |scheme: &[u8]| {
            raw.get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        };
        if absolute(b"http://") || absolute(b"https://") {
            let uri = req.uri.clone();
            req.set_uri(uri);
        }
    }

    /// The request's size on the wire, roughly: request line and header fields.
    fn header_bytes(req: &RequestHeader) -> usize {
        let line = req.method.as_str().len() + req.raw_path().len() + 12;
        req.headers
            .iter()
            .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
    }

    /// Count the request (its route's metrics, its filters'), hand its record to the log and
    /// its spans to the exporter.
    fn finish(
        &self,
        ctx: &mut Ctx,
        access: Option<Access>,
        status: u16,
        error: Option<&'static str>,
    ) {
        // (Taken, not cloned: the record carries them to the sink thread.)
        let (Some(running), Some(route)) = (ctx.running.take(), ctx.route.take()) else {
            return;
        };
        let chain = &route.route.chain;
        let total = ctx.start.elapsed().as_secs_f64();
        let end = RequestEnd {
            status,
            grpc_status: ctx.grpc_status,
            client_gone: status == 0 || error == Some("downstream"),
            upstream_failed: error == Some("upstream_body"),
            seconds: total,
        };
        chain.done(&ctx.state, &end);
        let handles = ctx.handles.take().unwrap_or_else(|| route.handles());
        let strategy = ctx.state.strategy.unwrap_or(0);
        let slot = ctx.state.scenario_slot.unwrap_or_else(|| {
            // Without a filter placing scenarios: `default`, or `other` for any scenario sent.
            usize::from(ctx.ids[SCENARIO].is_some())
        });
        let group = ctx.state.group;
        handles.request(strategy, group, slot);
        handles.response(strategy, group, end.class());
        if let Some(h) = handles.request_by_group.get(group.index()) {
            h.observe(total);
        }
        if let Some(h) = handles.overhead_by_group.get(group.index()) {
            // What the proxy added: everything but the wait for the upstream's answer.
            h.observe((total - ctx.upstream_ms.unwrap_or(0.0) / 1000.0).max(0.0));
        }
        if let (Some(ms), Some(h)) = (ctx.upstream_ms, handles.upstream_by_strategy.get(strategy)) {
            h.observe(ms / 1000.0);
        }
        let trace_id = ctx.trace_id;
        if let Some(trace) = ctx.trace.take() {
            self.traced(
                trace,
                ctx,
                (&running, &route),
                access.as_ref(),
                status,
                error,
            );
        }
        if let (true, Some(q)) = (route.logged, &self.state.log) {
            q.push(Box::new(Pending {
                running,
                route,
                ts_ms: ctx.ts_ms,
                ids: Pending::copy_ids(&ctx.ids),
                generated_id: ctx.generated_request_id,
                state: std::mem::replace(&mut ctx.state, RequestState::new(0)),
                status,
                upstream_ms: ctx.upstream_ms,
                total_ms: total * 1000.0,
                cluster_load: ctx.cluster_load,
                error,
                grpc_status: ctx.grpc_status,
                access,
                endpoint: ctx.endpoint,
                attempts: ctx.tried.len() as u32,
                trace_id,
            }));
        }
    }

    /// A sampled request ended: its spans go to the exporter.
    fn traced(
        &self,
        mut trace: Box<crate::otel::RequestTrace>,
        ctx: &Ctx,
        (running, route): (&Running, &RouteRuntime),
        access: Option<&Access>,
        status: u16,
        error: Option<&'static str>,
    ) {
        use crate::otel::{AttemptOutcome, AttrValue, FinishedTrace};
        let Some(q) = &self.state.traces else { return };
        if trace.current.is_some() {
            // (Ended without a hook that saw its outcome: as the client's response says.)
            trace.end_attempt(match (ctx.upstream_status, error) {
                (Some(s), None) => AttemptOutcome::Status(s),
                (_, Some(e)) => AttemptOutcome::Error(e),
                (None, None) => AttemptOutcome::Error("response"),
            });
        }
        let parts = route.route.chain.record(&ctx.state);
        let mut attributes: Vec<(std::borrow::Cow<'static, str>, AttrValue)> =
            Vec::with_capacity(16);
        let mut put = |k: &'static str, v: AttrValue| attributes.push((k.into(), v));
        let text = |s: &str| AttrValue::Str(s.to_string().into());
        put("hydrus.route", text(route.name()));
        put(
            "hydrus.group",
            AttrValue::Str(ctx.state.group.as_str().into()),
        );
        if route.route.managed {
            put("hydrus.strategy", text(parts.chosen.unwrap_or("default")));
        }
        if let Some(f) = ctx.state.fallback {
            put("hydrus.fallback", text(f));
        }
        if let Some(scenario) = &ctx.ids[SCENARIO] {
            // (Cut as the log record cuts it: a header's value may be tens of KB.)
            let capped = hydrus_filters::log::capped_text(scenario.as_bytes());
            put("hydrus.scenario", text(&capped.text));
        }
        if let Some(c) = running.clusters.get(ctx.state.cluster) {
            put("hydrus.cluster", text(&c.name));
        }
        if let Some(a) = access {
            put("http.request.method", text(a.method.as_str()));
            let path = hydrus_filters::log::logged_path(
                a.path.path(),
                None,
                hydrus_filters::log::QueryInLog::None,
            );
            put("url.path", AttrValue::Str(path.into()));
            if let Some(c) = a.client {
                put("client.address", AttrValue::Str(c.ip().to_string().into()));
            }
            put(
                "network.protocol.version",
                AttrValue::Str(protocol(a.version).trim_start_matches("HTTP/").into()),
            );
        }
        if status > 0 {
            put(
                "http.response.status_code",
                AttrValue::Int(i64::from(status)),
            );
        }
        if let Some(g) = ctx.grpc_status {
            put("rpc.grpc.status_code", AttrValue::Int(i64::from(g)));
        }
        if let Some(e) = error {
            put("error.type", AttrValue::Str(e.into()));
        }
        if let Some((resources, ks)) = parts.k {
            for (r, k) in resources.iter().zip(ks) {
                let key = if ks.len() == 1 {
                    "hydrus.k".into()
                } else {
                    format!("hydrus.k.{r}").into()
                };
                attributes.push((key, AttrValue::F64(*k)));
            }
        }
        let failed = status == 0 || status >= 500 || ctx.grpc_status.is_some_and(|g| g != 0);
        let name = match access {
            Some(a) => format!("{} {}", a.method, route.name()),
            None => route.name().to_string(),
        };
        let tracestate = access
            .and_then(|a| a.tracestate.clone())
            .filter(|_| !trace.started_here);
        q.push(Box::new(FinishedTrace {
            trace,
            end_ns: crate::otel::unix_ns(),
            name,
            attributes,
            error: failed,
            tracestate,
        }));
    }
}

mod hooks;
