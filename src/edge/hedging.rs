//! The hedge filter's reissues: for an idempotent request whose route's hedge filter gave it a
//! timeout, the edge makes the upstream calls itself, racing a reissue against a slow first
//! attempt (within the filter's budget), and streams the winner's response to the client.
//! Idempotent: a GET or HEAD without a body, or any request on a route marked `idempotent`
//! (unary gRPC calls that only read): its body is read whole first and sent with each attempt.
//!
//! Only unary calls are hedged. A call whose body holds other than exactly one gRPC message
//! (client or bidirectional streaming) is not: it is handed to pingora's path as read so far,
//! sent once and streamed. The race ends at the first response header, so a server-streaming
//! answer (whose header comes before its messages) streams from that attempt as it comes, its
//! trailers (the call's `grpc-status`) last. The response side is in [`relay`].

mod relay;

use super::upstream::{error_kind, outcome_of, peer, upstream_error, Attempt, Hold};
use super::{Ctx, Proxy};
use crate::cluster::Cluster;
use crate::otel::{AttemptGuard, AttemptKind, AttemptOutcome, HedgeSpans};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use hydrus_filters::hedge::{race, HedgeFilter, HedgeOutcome, Winner};
use hydrus_filters::outlier::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::{ErrorSource, ErrorType, RetryType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fields a message's `Connection` header nominates (hop-by-hop, with it).
fn connection_nominated(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Remove the hop-by-hop fields of a request (RFC 9110 7.6.1): `Connection` and what it
/// nominates, and the standard ones. pingora does this on its own path; the hedge path writes
/// requests itself. `te: trailers` stays, as on pingora's path to an HTTP/2 upstream: gRPC
/// servers (C-core's among them) refuse a call without it, and it is the one `te` HTTP/2 allows.
fn strip_hop_by_hop(req: &mut RequestHeader) {
    let te_trailers = req
        .headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in connection_nominated(&req.headers) {
        if n != http::header::HOST {
            req.remove_header(&n);
        }
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
    if te_trailers {
        let _ = req.insert_header(http::header::TE, "trailers");
    }
}

/// Whether a request can be hedged: idempotent (a GET or HEAD without a body, or anything on
/// a route that says its requests are), not an upgrade (a tunnel is not a response to buffer).
fn hedgeable(session: &Session, route_idempotent: bool) -> bool {
    let req = session.req_header();
    let safe = matches!(req.method, http::Method::GET | http::Method::HEAD);
    let no_body = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0")
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none();
    (route_idempotent || (safe && no_body)) && !session.is_upgrade_req()
}

/// What each attempt sends: the upstream request and the client's whole body; `grpc`: a call
/// (whose answer `grpc-status: 14` in its header is a bad one).
#[derive(Clone)]
struct Outgoing {
    header: RequestHeader,
    body: Bytes,
    grpc: bool,
    /// Where each attempt's span goes, when the request is traced.
    spans: Option<HedgeSpans>,
}

/// A response that has begun: its header, and the upstream session its body and trailers are
/// still to be read from.
struct Response {
    header: ResponseHeader,
    upstream: HttpSession,
    peer: HttpPeer,
    idle: Duration,
}

/// The attempt that answered: its response, and its endpoint's attempt, whose outcome for
/// passive health is known only when the response has been relayed (a body cut short, or
/// trailers saying `UNAVAILABLE`, count against the endpoint as on pingora's path). `None`: a
/// bad answer (see [`bad`]), counted against its endpoint at once, whether relayed or not.
struct Answer<'c> {
    response: Response,
    attempt: Option<Attempt<'c>>,
    /// The endpoint that answered.
    endpoint: Option<std::net::SocketAddr>,
    /// Its span, ended once the response has been relayed.
    span: Option<AttemptGuard>,
}

/// Whether an answer counts against its endpoint, as on pingora's path: a gateway error (502,
/// 503, 504), or a call answered `UNAVAILABLE` in its header (trailers-only). Such an answer
/// does not end a hedge race while the other attempt still runs.
fn bad(header: &ResponseHeader, grpc: bool) -> bool {
    outcome_of(header.status.as_u16()) == Outcome::Failure
        || grpc && super::grpc::status_of(&header.headers) == Some(14)
}

/// How an exchange failed; `stale`: on a pooled connection the upstream had closed as it was
/// reused (pingora marks such errors retryable on a reused connection only).
struct Failed {
    error: Box<Error>,
    stale: bool,
}

/// How many times an attempt that met a stale pooled connection is tried again on its
/// endpoint (as on pingora's path, see `error_while_proxy`).
const MAX_STALE_RETRIES: u32 = 2;

/// The client's body, ready to send, or the request already settled.
enum Body {
    /// Send this body; reissue after the timeout (`None`: sent once, not hedged).
    Send(Bytes, Option<Duration>),
    /// Not for this path (`false`: pingora proxies it), or answered here (`true`).
    Settled(bool),
}

/// How many gRPC messages a call's body holds so far. Each is length-prefixed (a flag byte,
/// a 4-byte big-endian length), so the first one's end is known from its first 5 bytes.
#[derive(Debug, PartialEq, Eq)]
enum Messages {
    /// Not one whole message yet (nothing, or the first one in part).
    Partial,
    /// Exactly one whole message: a unary call's request, when the body ends here.
    One,
    /// Bytes beyond the first message: a streaming call.
    More,
}

/// Where a call's body read so far stands, from its first message's length prefix.
fn messages(body: &[u8]) -> Messages {
    let Some(prefix) = body.get(1..5) else {
        return Messages::Partial;
    };
    let len = prefix
        .iter()
        .fold(0usize, |n, b| (n << 8) | usize::from(*b));
    match body.len().cmp(&len.saturating_add(5)) {
        std::cmp::Ordering::Less => Messages::Partial,
        std::cmp::Ordering::Equal => Messages::One,
        std::cmp::Ordering::Greater => Messages::More,
    }
}

/// The client's request body, as read for hedging.
enum Read {
    /// Whole, and hedgeable.
    Whole(Bytes),
    /// Larger than the filter's `max_body_bytes`.
    TooLarge,
    /// A call that is not unary: more than one message (`ended`: false, reading stopped at
    /// the second), or none or a cut one when the body ended.
    NotUnary { read: BytesMut, ended: bool },
}

/// Read the client's body for hedging. On a call (`grpc`), reading stops as soon as the body
/// shows a second message: a streaming client may wait for answers before it ends its body.
async fn read_body(session: &mut Session, max: usize, grpc: bool) -> Result<Read> {
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if grpc && messages(&body) == Messages::More {
            return Ok(Read::NotUnary {
                read: body,
                ended: false,
            });
        }
        if body.len() > max {
            return Ok(Read::TooLarge);
        }
    }
    if grpc && messages(&body) != Messages::One {
        return Ok(Read::NotUnary {
            read: body,
            ended: true,
        });
    }
    Ok(Read::Whole(body.freeze()))
}

/// The rest of a body whose start is `read`, whole, or `None` when it is larger than `max`.
async fn read_rest(session: &mut Session, mut read: BytesMut, max: usize) -> Result<Option<Bytes>> {
    while let Some(chunk) = session.read_request_body().await? {
        if read.len() + chunk.len() > max {
            return Ok(None);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Some(read.freeze()))
}

/// The request each attempt sends: the client's, as the route's filters change it, with its
/// body read whole.
fn outgoing(session: &Session, ctx: &Ctx, body: Bytes) -> Result<Outgoing> {
    let mut upstream = session.req_header().clone();
    // This path writes the request itself: drop what pingora's path drops for a hop.
    strip_hop_by_hop(&mut upstream);
    // The body is read whole already: an upstream asked to `100 Continue` would only answer
    // it with an interim response first.
    upstream.remove_header(&http::header::EXPECT);
    super::prepare::prepare_upstream(&mut upstream, ctx)?;
    if ctx.trace.as_ref().is_some_and(|t| t.started_here) {
        upstream.remove_header(&crate::otel::context::TRACESTATE);
    }
    if !body.is_empty() {
        upstream.remove_header(&http::header::TRANSFER_ENCODING);
        upstream.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    }
    Ok(Outgoing {
        header: upstream,
        body,
        grpc: ctx.grpc,
        spans: ctx.trace.as_ref().map(|t| t.hedge_spans()),
    })
}

/// An HTTP/1.1 upstream may send this many interim responses (103 Early Hints, 100
/// Continue) before its answer; more is taken for a broken one.
const MAX_INTERIM: usize = 8;

/// Send a request on an upstream session: a request without a body ends its HTTP/2 stream
/// with its HEADERS, as pingora's path does (not with an empty DATA frame). A request the
/// HTTP/2 client refuses before writing anything (a bad authority) is the client's error
/// (answered 400): nothing of it reached the endpoint.
async fn send(s: &mut HttpSession, req: Outgoing) -> Result<()> {
    if let HttpSession::H2(h2) = &mut *s {
        let end = req.body.is_empty();
        h2.write_request_header(Box::new(req.header), end)
            .map_err(|e| if unsent(&e) { e.into_down() } else { e })?;
        if end {
            return Ok(());
        }
        return h2.write_request_body(req.body, true).await;
    }
    s.write_request_header(Box::new(req.header)).await?;
    if req.body.is_empty() {
        s.finish_request_body().await
    } else {
        s.write_request_body(req.body, true).await
    }
}

/// Whether the HTTP/2 client refused a request's header as it is, before writing anything:
/// its own check of the header (no or a bad authority).
fn unsent(e: &Error) -> bool {
    *e.etype() == ErrorType::InvalidHTTPHeader
}

/// The response's final header. An HTTP/1.1 upstream may send interim ones first: they are
/// not the answer (reading a body after one would find no body reader), so they are skipped.
async fn final_header(s: &mut HttpSession) -> Result<ResponseHeader> {
    for _ in 0..=MAX_INTERIM {
        s.read_response_header().await?;
        let header = s
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        match header.status.as_u16() {
            100 | 102..=199 if matches!(s, HttpSession::H1(_)) => continue,
            100..=199 => {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "an informational response where the answer was due",
                )
            }
            _ => return Ok(header),
        }
    }
    Error::e_explain(ErrorType::InvalidHTTPHeader, "too many interim responses")
}

impl Proxy {
    /// Hedge the request if its route's hedge filter gave it a timeout. Returns whether the
    /// response was sent; otherwise pingora proxies it.
    pub(super) async fn hedged(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (Some(timeout), Some(route), Some(running)) = (
            hydrus_filters::hedge::reissue_after(&ctx.state),
            ctx.route.clone(),
            ctx.running.clone(),
        ) else {
            return Ok(false);
        };
        let Some(filter) = hydrus_filters::hedge::of(&route.route.chain) else {
            return Ok(false);
        };
        let Some(cluster) = running.clusters.get(ctx.state.cluster).cloned() else {
            return Ok(false);
        };
        if !hedgeable(session, route.route.idempotent) || cluster.endpoints.is_empty() {
            return Ok(false);
        }
        let (body, timeout) = match self.hedge_body(session, ctx, filter, timeout).await? {
            Body::Send(body, timeout) => (body, timeout),
            Body::Settled(answered) => return Ok(answered),
        };
        if let Some(slot) = &ctx.slot {
            slot.body_read();
        }
        let upstream = outgoing(session, ctx, body)?;
        self.send_hedged(session, ctx, filter, &cluster, upstream, timeout)
            .await
    }

    /// Read the client's body for the hedge path: whole (a unary call's, or beyond what
    /// pingora's path could replay), or settled otherwise.
    async fn hedge_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        filter: &HedgeFilter,
        timeout: Duration,
    ) -> Result<Body> {
        if ctx.grpc {
            // What is read here of a call that turns out not unary is replayed by pingora's
            // path (up to its buffer's size).
            session.enable_retry_buffering();
        }
        let max = filter.max_body_bytes;
        let (read, ended) = match read_body(session, max, ctx.grpc).await? {
            Read::Whole(b) => return Ok(Body::Send(b, Some(timeout))),
            // Read in part: it cannot go to pingora's path any more.
            // (413; a call gets RESOURCE_EXHAUSTED.)
            Read::TooLarge => {
                let answered = self.refused(session, ctx, "body_too_large", 413).await?;
                return Ok(Body::Settled(answered));
            }
            Read::NotUnary { read, ended } => (read, ended),
        };
        if !session.as_ref().retry_buffer_truncated() {
            // Sent once, streamed both ways, by pingora's path.
            return Ok(Body::Settled(false));
        }
        // Read beyond what pingora's path can replay: the rest is read whole here and sent
        // once.
        let whole = if ended {
            Some(read.freeze())
        } else {
            read_rest(session, read, max).await?
        };
        match whole {
            Some(b) => Ok(Body::Send(b, None)),
            None => {
                let answered = self.refused(session, ctx, "body_too_large", 413).await?;
                Ok(Body::Settled(answered))
            }
        }
    }

    /// Send the request to the cluster (raced against a reissue when `timeout` is set), relay
    /// the answer, and record its endpoint's outcome once the response has ended.
    async fn send_hedged(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        filter: &HedgeFilter,
        cluster: &Arc<Cluster>,
        upstream: Outgoing,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        // The attempts go to different endpoints when the cluster has several.
        let now = hydrus_filters::clock::monotonic_ms();
        let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
        let Some(a) = cluster.select(key, &ctx.tried, now) else {
            return Ok(false);
        };
        ctx.tried.push(a);
        // (Not a second pick from the balancer: with round robin over two endpoints, two
        // picks per request would make every first attempt go to the same one.)
        let b = cluster.other_than(a, now);
        ctx.hold = Some(Hold::new(cluster.clone()));
        ctx.cluster_load = Some(cluster.budget.in_flight().0);
        let sent = Instant::now();
        let spans = upstream.spans.clone();
        let raced = self
            .race_attempts(filter, cluster, (a, b), upstream, timeout, ctx)
            .await;
        if let (Some(t), Some(s)) = (ctx.trace.as_mut(), &spans) {
            // (The answer's own span is added when its response has been relayed.)
            t.add_hedge_spans(s);
        }
        let Answer {
            response,
            attempt,
            endpoint,
            span,
        } = raced?;
        ctx.endpoint = endpoint.or(ctx.endpoint);
        ctx.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        // (Logging tells a response cut short from one hydrus made up by this.)
        ctx.upstream_status = Some(response.header.status.as_u16());
        if ctx.grpc {
            // A trailers-only answer carries its status in the header.
            ctx.grpc_status = super::grpc::status_of(&response.header.headers);
        }
        let relayed = self.relay(session, response).await;
        if let (true, Ok(Some(t))) = (ctx.grpc, &relayed) {
            ctx.grpc_status = super::grpc::status_of(t).or(ctx.grpc_status);
        }
        // As pingora's path counts it (see `logging`): a failure of the upstream's, or a call
        // it answered UNAVAILABLE; a client that went away says nothing of the endpoint.
        let outcome = match &relayed {
            Err(e) if *e.esource() == pingora::ErrorSource::Upstream => Some(Outcome::Failure),
            Err(_) => None,
            Ok(_) if ctx.grpc && ctx.grpc_status == Some(14) => Some(Outcome::Failure),
            Ok(_) => ctx.upstream_status.map(outcome_of),
        };
        // (A bad answer was counted when it came.)
        if let (Some(o), Some(attempt)) = (outcome, attempt) {
            attempt.end(o, &self.state);
        }
        if let Some(span) = span {
            span.end(match &relayed {
                Ok(_) => AttemptOutcome::Status(ctx.upstream_status.unwrap_or(0)),
                Err(e) if *e.esource() == ErrorSource::Downstream => {
                    AttemptOutcome::Error("downstream")
                }
                Err(e) => AttemptOutcome::Error(error_kind(e)),
            });
            if let (Some(t), Some(s)) = (ctx.trace.as_mut(), &spans) {
                t.add_hedge_spans(s);
            }
        }
        relayed.map(|_| true)
    }

    /// The race between the first attempt (on `a`) and a reissue (on `b`) after `timeout`
    /// (`None`: no reissue); when the first fails before any reissue, one more try on `b`, as
    /// any retry. An attempt ends with its response header; a bad answer (see [`bad`]) is held
    /// while the other attempt still runs. A request sent once (no timeout) is tried again
    /// only when its connection failed: nothing of it reached the endpoint.
    async fn race_attempts<'c>(
        &self,
        filter: &HedgeFilter,
        cluster: &'c Arc<Cluster>,
        (a, b): (usize, usize),
        upstream: Outgoing,
        timeout: Option<Duration>,
        ctx: &mut Ctx,
    ) -> Result<Answer<'c>> {
        let sent = Instant::now();
        ctx.endpoint = cluster.endpoints.get(a).copied();
        let (mut result, winner) = race(
            self.attempt(cluster, a, upstream.clone(), AttemptKind::First),
            || self.attempt(cluster, b, upstream.clone(), AttemptKind::Hedge),
            timeout,
            &filter.budget,
            // (A bad answer was counted at once: it holds no attempt.)
            |answer: &Answer<'_>| answer.attempt.is_some(),
        )
        .await;
        if let Some(timeout) = timeout {
            let outcome = match winner {
                Winner::Primary if sent.elapsed() >= timeout => HedgeOutcome::Denied,
                Winner::Primary => HedgeOutcome::Fast,
                w => {
                    ctx.tried.push(b);
                    HedgeOutcome::Reissued(w)
                }
            };
            filter.record(&mut ctx.state, outcome);
        }
        if let Err(e) = &result {
            let unsent = error_kind(e) == "connect";
            // (Not an error the client's request made: it would meet it anywhere.)
            let retry = winner == Winner::Primary
                && *e.esource() != ErrorSource::Downstream
                && b != a
                && (timeout.is_some() || unsent)
                && ctx
                    .hold
                    .as_mut()
                    .is_some_and(|h| h.take_retry(&self.state, &ctx.tried, Some(a), unsent));
            if retry {
                ctx.tried.push(b);
                ctx.endpoint = cluster.endpoints.get(b).copied();
                result = self.attempt(cluster, b, upstream, AttemptKind::Retry).await;
            }
        }
        result
    }

    /// One attempt of a hedged request, up to its response header. A failed one counts against
    /// its endpoint at once; a bad answer too; a good one when its response ends (see
    /// `send_hedged`). One that met a stale pooled connection is tried again on the same
    /// endpoint, counted as nothing (not charged to the retry budget either); one the client's
    /// request made impossible (nothing was sent) is counted as nothing.
    async fn attempt<'c>(
        &self,
        cluster: &'c Cluster,
        endpoint: usize,
        req: Outgoing,
        mut kind: AttemptKind,
    ) -> Result<Answer<'c>> {
        let Some(&addr) = cluster.endpoints.get(endpoint) else {
            return Error::e_explain(ErrorType::InternalError, "no such endpoint");
        };
        let mut stale_retries = 0;
        let e = loop {
            let attempt = Attempt::start(cluster, endpoint);
            // Each attempt is a span of its own: the upstream's parent.
            let span = req.spans.as_ref().map(|s| s.start(kind, addr));
            let mut sent = req.clone();
            if let Some(span) = &span {
                super::hooks::trace_context(&mut sent.header, span.traceparent(), false)?;
            }
            match self.exchange(endpoint, cluster, sent).await {
                Ok(response) => {
                    // It answered: not hung, whatever the exchange's outcome.
                    cluster
                        .outliers
                        .progress(endpoint, hydrus_filters::clock::monotonic_ms());
                    let (attempt, span) = if bad(&response.header, req.grpc) {
                        attempt.end(Outcome::Failure, &self.state);
                        if let Some(span) = span {
                            span.end(AttemptOutcome::Status(response.header.status.as_u16()));
                        }
                        (None, None)
                    } else {
                        (Some(attempt), span)
                    };
                    return Ok(Answer {
                        response,
                        attempt,
                        endpoint: Some(addr),
                        span,
                    });
                }
                Err(Failed { error, stale: true }) if stale_retries < MAX_STALE_RETRIES => {
                    // The upstream closed a kept-alive connection: not the endpoint's failure.
                    log::debug!("stale pooled connection, tried again: {error}");
                    if let Some(span) = span {
                        span.end(AttemptOutcome::Error("stale_connection"));
                    }
                    kind = AttemptKind::Retry;
                    stale_retries += 1;
                }
                Err(Failed { error, .. }) if *error.esource() == ErrorSource::Downstream => {
                    if let Some(span) = span {
                        span.end(AttemptOutcome::Error("downstream"));
                    }
                    return Err(error);
                }
                Err(Failed { error, .. }) => {
                    attempt.end(Outcome::Failure, &self.state);
                    if let Some(span) = span {
                        span.end(AttemptOutcome::Error(error_kind(&error)));
                    }
                    break error;
                }
            }
        };
        if error_kind(&e) == "connect" {
            // Per attempt, as `fail_to_connect` counts them; other kinds are counted once,
            // for the request, in `fail_to_proxy`.
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[cluster.name.as_str(), "connect"])
                .inc();
        }
        Err(e)
    }

    /// One exchange on a connection to the endpoint, up to the response's final header.
    async fn exchange(
        &self,
        endpoint: usize,
        cluster: &Cluster,
        mut req: Outgoing,
    ) -> std::result::Result<Response, Failed> {
        super::prepare::for_the_hop(&mut req.header, cluster, endpoint).map_err(|error| {
            Failed {
                error,
                stale: false,
            }
        })?;
        let peer = peer(cluster, endpoint);
        let (mut s, reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| Failed {
                error: upstream_error(e),
                stale: false,
            })?;
        s.set_read_timeout(Some(cluster.source.read_timeout));
        let header = match send(&mut s, req).await {
            Ok(()) => final_header(&mut s).await,
            Err(e) => Err(e),
        };
        let header = header.map_err(|e| Failed {
            stale: reused && matches!(e.retry, RetryType::ReusedOnly),
            // (A request the client made impossible stays the client's error.)
            error: if *e.esource() == ErrorSource::Downstream {
                e
            } else {
                upstream_error(e)
            },
        })?;
        Ok(Response {
            header,
            upstream: s,
            peer,
            idle: cluster.source.idle_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_unary_when_it_holds_exactly_one_message() {
        let one = [0, 0, 0, 0, 3, 1, 2, 3];
        assert_eq!(messages(&[]), Messages::Partial);
        assert_eq!(messages(&one[..4]), Messages::Partial);
        assert_eq!(messages(&one[..7]), Messages::Partial);
        assert_eq!(messages(&one), Messages::One);
        assert_eq!(
            messages(&[0, 0, 0, 0, 0]),
            Messages::One,
            "an empty message"
        );
        let two = [&one[..], &one[..]].concat();
        assert_eq!(messages(&two[..9]), Messages::More);
        assert_eq!(messages(&two), Messages::More);
        // A length that does not fit in memory is only ever partial.
        assert_eq!(messages(&[0, 0xff, 0xff, 0xff, 0xff, 1]), Messages::Partial);
    }
}
