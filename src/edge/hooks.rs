//! pingora's hooks, in the order a request meets them.

use super::prepare::{for_the_hop, prepare_upstream};
use super::upstream::outcome_of;
use super::{peer, Ctx, Hold, Proxy, Routed};
use crate::otel::context::{TRACEPARENT, TRACESTATE};
use crate::otel::AttemptOutcome;
use async_trait::async_trait;
use http::header::HeaderValue;
use hydrus_filters::clock::unix_ms;
use hydrus_filters::filter::RequestState;
use hydrus_filters::outlier::Outcome;
use hydrus_filters::retry::Tried;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;

#[async_trait]
impl ProxyHttp for Proxy {
    /// Boxed: pingora keeps the context in its per-request future, which it moves and copies;
    /// inline, the 1.4 KB `Ctx` cost about 4k instructions of copying per request (callgrind).
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            start: Instant::now(),
            ts_ms: unix_ms(),
            running: None,
            route: None,
            handles: None,
            state: RequestState::new(0),
            hold: None,
            tried: Tried::default(),
            retry_same: None,
            upstream_status: None,
            slot: None,
            ids: Default::default(),
            generated_request_id: None,
            upstream_sent: None,
            upstream_ms: None,
            cluster_load: None,
            normalized_path: None,
            grpc: false,
            grpc_status: None,
            trace: None,
            trace_id: None,
            endpoint: None,
        })
    }

    /// The connection guard's handle: the request header has been read, its deadline is over.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(slot) = prev.downcast::<Arc<super::Slot>>() {
            slot.header_read();
            ctx.slot = Some(*slot);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        // (The context is made per request, after its header was read: `start` and `ts_ms`
        // are the request's.)
        if ctx.slot.is_none() {
            // An HTTP/2 stream's slot (see `conns::h2`): its header is read, its body's
            // deadline runs.
            if let Some(slot) = session
                .req_header_mut()
                .extensions_mut()
                .remove::<Arc<super::Slot>>()
            {
                slot.header_read();
                ctx.slot = Some(slot);
            }
        }
        let limit = self.state.config.load().limits.max_request_header_bytes;
        let req = session.req_header();
        ctx.grpc = super::grpc::is_grpc(req);
        if Self::header_bytes(req) > limit {
            return Box::pin(self.refused(session, ctx, "header_too_large", 431)).await;
        }
        Self::origin_form(session.req_header_mut());
        if !Self::target_ok(session.req_header()) {
            return Box::pin(self.refused(session, ctx, "bad_target", 400)).await;
        }
        if !Self::host_ok(session.req_header()) {
            return Box::pin(self.refused(session, ctx, "bad_host", 400)).await;
        }
        if !Self::one_content_length(session.req_header_mut()) {
            return Box::pin(self.refused(session, ctx, "bad_content_length", 400)).await;
        }
        // (An HTTP/2 request says it has no body by ending its stream.)
        let h2_done = session.is_http2() && session.as_mut().is_body_done();
        let req = session.req_header();
        if let Some(slot) = &ctx.slot {
            let bodyless = h2_done
                || !session.is_http2()
                    && req.headers.get(http::header::TRANSFER_ENCODING).is_none()
                    && req
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .is_none_or(|v| v.as_bytes() == b"0");
            if bodyless {
                slot.body_read();
            }
        }
        let t0 = Instant::now();
        let routed = self.decide(session, ctx);
        self.state
            .metrics
            .decision_seconds
            .observe(t0.elapsed().as_secs_f64());
        match routed {
            Routed::Yes => {}
            Routed::EscapedSlash => {
                return Box::pin(self.refused(session, ctx, "escaped_slash", 400)).await;
            }
            Routed::NoRoute => {
                return Box::pin(self.refused(session, ctx, "no_route", 404)).await;
            }
        }
        if session.req_header().method.is_idempotent() {
            // Lets a failed attempt's request body be sent again to another endpoint.
            session.enable_retry_buffering();
        }
        if hydrus_filters::hedge::reissue_after(&ctx.state).is_none() {
            return Ok(false);
        }
        // The rare paths (refusals, hedging) are boxed: awaited inline, their futures made this
        // hook's future, which pingora boxes and copies per request, 36 KB instead of a few.
        Box::pin(self.hedged(session, ctx)).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if end_of_stream {
            if let Some(slot) = &ctx.slot {
                slot.body_read();
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        // A request without a body (nor an upgrade) writes only its header, into an idle or new
        // connection's empty buffers: no write timer for it (pingora registers one per write).
        // A body keeps its write timeout: pingora does not read the response while a write of
        // the body blocks.
        let bodyless = session.as_mut().is_body_empty() && !session.as_ref().is_upgrade_req();
        // (Fields borrowed apart: no clone of the running config, whose count every request
        // on every thread touches.)
        let ctx: &mut Ctx = ctx;
        let Some(running) = &ctx.running else {
            return Error::e_explain(ErrorType::InternalError, "no route");
        };
        let cluster = running
            .clusters
            .get(ctx.state.cluster)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream cluster"))?;
        if cluster.endpoints.is_empty() {
            // A name that has not resolved yet: unavailable (gRPC UNAVAILABLE), not an error.
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                "the cluster has no endpoint yet",
            );
        }
        let hold = ctx.hold.get_or_insert_with(|| Hold::new(cluster.clone()));
        if ctx.cluster_load.is_none() {
            ctx.cluster_load = Some(cluster.budget.in_flight().0);
        }
        let now = hydrus_filters::clock::monotonic_ms();
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
        ctx.endpoint = cluster.endpoints.get(i).copied();
        if let (Some(t), Some(addr)) = (ctx.trace.as_mut(), ctx.endpoint) {
            t.start_attempt(addr);
        }
        let mut peer = peer(cluster, i);
        if bodyless {
            peer.options.write_timeout = None;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(AttemptOutcome::Error("connect"));
        }
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
        e.set_retry(hold.take_retry(&self.state, &ctx.tried, failed, true));
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
        ctx: &mut Box<Ctx>,
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
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(AttemptOutcome::Error(match () {
                _ if *e.esource() == ErrorSource::Downstream || !body_done => "downstream",
                // (Tried again on the same endpoint below.)
                _ if stale && retryable => "stale_connection",
                _ => super::upstream::error_kind(&e),
            }));
        }
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
        let retry = retryable && hold.take_retry(&self.state, &ctx.tried, failed, false);
        e.set_retry(retry);
        e
    }

    /// A client that went away (or stopped reading) is not an error worth a log line per
    /// request.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Box<Ctx>, e: &Error) -> bool {
        *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::WriteTimedout
            )
    }

    /// Like pingora's default, but an upstream timeout is a 504 (as in Envoy), and final upstream
    /// failures are counted by kind.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
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
        if *e.esource() == ErrorSource::Upstream && super::upstream::error_kind(e) != "connect" {
            // (Failed connects were counted per attempt in fail_to_connect.)
            let cluster = ctx
                .running
                .as_ref()
                .and_then(|r| r.clusters.get(ctx.state.cluster))
                .map_or("", |c| c.name.as_str());
            let kind = if timeout { "timeout" } else { "response" };
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[cluster, kind])
                .inc();
        }
        let code = if session.response_written().is_some() {
            if ctx.grpc && super::grpc::fail_mid_call(session).await {
                ctx.grpc_status = Some(14);
            }
            0 // the response began: the client sees it cut short
        } else {
            code
        };
        if code > 0 && ctx.grpc {
            // A call is answered with its gRPC status, never an HTTP error made up here.
            match super::grpc::respond(session, code).await {
                Ok(c) => ctx.grpc_status = Some(c),
                Err(err) => log::debug!("could not send the gRPC status: {err}"),
            }
        } else if code > 0 {
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
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        prepare_upstream(upstream, ctx)?;
        if let Some((cluster, Some(i))) = ctx.hold.as_ref().map(|h| (&h.cluster, h.endpoint)) {
            for_the_hop(upstream, cluster, i)?;
        }
        if let Some(t) = &ctx.trace {
            trace_context(upstream, t.current_traceparent(), t.started_here)?;
        }
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            return Ok(()); // an interim response (100 Continue): the answer is still to come
        }
        if let Some(t) = ctx.upstream_sent {
            ctx.upstream_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        ctx.upstream_status = Some(status);
        if ctx.grpc {
            // A trailers-only answer carries its status in the header.
            ctx.grpc_status = super::grpc::status_of(&upstream_response.headers);
        }
        // It answered: not hung. Whether the exchange succeeded is known at its end.
        if let Some(h) = &ctx.hold {
            if let Some(i) = h.endpoint {
                h.cluster
                    .outliers
                    .progress(i, hydrus_filters::clock::monotonic_ms());
            }
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if ctx.grpc {
            ctx.grpc_status = super::grpc::status_of(trailers).or(ctx.grpc_status);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if let Some(e) = e.filter(|e| {
            *e.esource() == ErrorSource::Downstream && *e.etype() == ErrorType::WriteTimedout
        }) {
            // An HTTP/2 stream whose window stayed shut for `limits.send_timeout`: reset.
            // (A connection whose writes block is closed by its `Deadline`, counted there.)
            log::debug!("client stopped reading: {e}");
            self.state
                .metrics
                .downstream_closed
                .with_label_values(&["send_timeout"])
                .inc();
        }
        if let Some(hold) = ctx.hold.as_mut() {
            let outcome = match (e, ctx.upstream_status) {
                (Some(e), _) if *e.esource() == ErrorSource::Upstream => Some(Outcome::Failure),
                (Some(_), _) => None,
                // An endpoint answering a call UNAVAILABLE is a gateway failure, as a 503 is.
                (None, Some(_)) if ctx.grpc && ctx.grpc_status == Some(14) => {
                    Some(Outcome::Failure)
                }
                (None, status) => status.map(outcome_of),
            };
            hold.end_attempt(&self.state, outcome);
        }
        // The hold itself is given back when the context drops.
        ctx.hold = None;
        if let (Some(slot), Some(h1)) = (&ctx.slot, session.as_downstream().as_http1()) {
            // (What the connection then tells pipelined requests by, see `conns`.)
            let n = h1.get_headers_raw_bytes().len() + h1.body_bytes_read();
            slot.consumed(n as u64);
        }
        let access = self.access(session, ctx);
        let written = session.response_written();
        let status = written.map_or(0, |r| r.status.as_u16());
        // A response that began and then failed: the client got it cut short. (A response
        // hydrus made up in its place is not one: its status says what happened.)
        let error = match e {
            Some(e) if written.is_some() && ctx.upstream_status.is_some() => {
                Some(if *e.esource() == ErrorSource::Upstream {
                    "upstream_body"
                } else {
                    "downstream"
                })
            }
            _ => None,
        };
        self.finish(ctx, access, status, error);
    }
}

/// The trace context an attempt sends: its own span as the upstream's parent. A trace begun
/// here is not the one a `tracestate` sent belongs to: that goes.
pub(super) fn trace_context(
    upstream: &mut RequestHeader,
    traceparent: HeaderValue,
    started_here: bool,
) -> Result<()> {
    upstream.insert_header(TRACEPARENT, traceparent)?;
    if started_here {
        upstream.remove_header(&TRACESTATE);
    }
    Ok(())
}

impl Proxy {
    /// What the session says of the exchange, for a logged route's record or a sampled span.
    fn access(&self, session: &Session, ctx: &Ctx) -> Option<crate::logsink::record::Access> {
        let sampled = ctx.trace.is_some();
        if !sampled && !ctx.route.as_ref().is_some_and(|r| r.logged) {
            return None;
        }
        let req = session.req_header();
        Some(crate::logsink::record::Access {
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.clone(),
            path: hydrus_filters::log::text::PathText::new(req.uri.path(), req.uri.query()),
            version: req.version,
            request_bytes: session.body_bytes_read() as u64,
            response_bytes: session.body_bytes_sent() as u64,
            tracestate: sampled
                .then(|| {
                    crate::otel::tracestate(
                        req.headers
                            .get_all(TRACESTATE)
                            .iter()
                            .map(HeaderValue::as_bytes),
                    )
                })
                .flatten(),
        })
    }
}
