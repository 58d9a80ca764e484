//! The hedge stage's reissues: for an idempotent request whose route's hedge stage gave it a
//! timeout, the edge makes the upstream calls itself, racing a reissue against a slow first
//! attempt (within the stage's budget), and answers the client with the winner. Idempotent:
//! a GET or HEAD without a body, or any request on a route marked `idempotent` (unary gRPC
//! calls that only read): its body is read whole first and sent with each attempt, and the
//! winner's trailers (a call's `grpc-status`) reach the client with its response.

use super::upstream::{error_kind, outcome_of, peer, upstream_error, Attempt, Hold};
use super::{Ctx, Proxy};
use crate::cluster::Cluster;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use hydrus_filters::hedge::{race, HedgeOutcome, HedgeStage, Winner};
use hydrus_filters::outlier::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What each attempt sends: the upstream request and the client's whole body.
#[derive(Clone)]
struct Outgoing {
    header: RequestHeader,
    body: Bytes,
}

/// What an attempt got back, whole.
struct Answer {
    header: ResponseHeader,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

/// The client's whole request body, or `None` when it is larger than `max`.
async fn read_body(session: &mut Session, max: usize) -> Result<Option<Bytes>> {
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

impl Proxy {
    /// Hedge the request if its route's hedge stage gave it a timeout. Returns whether the
    /// response was sent; otherwise pingora proxies it.
    pub(super) async fn hedged(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (Some(timeout), Some(route), Some(running)) = (
            ctx.state.hedge_after,
            ctx.route.clone(),
            ctx.running.clone(),
        ) else {
            return Ok(false);
        };
        let Some(stage) = route.route.chain.hedge() else {
            return Ok(false);
        };
        let Some(cluster) = running.clusters.get(ctx.state.cluster).cloned() else {
            return Ok(false);
        };
        if !hedgeable(session, route.route.idempotent) || cluster.endpoints.is_empty() {
            return Ok(false);
        }
        let body = match read_body(session, stage.max_body_bytes).await? {
            Some(b) => b,
            None => {
                // Read in part: it cannot go to pingora's path any more.
                // (413; a call gets RESOURCE_EXHAUSTED.)
                return self.refused(session, ctx, "body_too_large", 413).await;
            }
        };
        if let Some(slot) = &ctx.slot {
            slot.body_read();
        }
        let mut upstream = session.req_header().clone();
        // This path writes the request itself: drop what pingora's path drops for a hop.
        strip_hop_by_hop(&mut upstream);
        super::prepare::prepare_upstream(&mut upstream, ctx)?;
        if !body.is_empty() {
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
        let upstream = Outgoing {
            header: upstream,
            body,
        };
        // The attempts go to different endpoints when the cluster has several.
        let now = crate::clock::now_ms();
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
        let result = self
            .race_attempts(stage, &cluster, (a, b), upstream, timeout, ctx)
            .await;
        let answer = result?;
        ctx.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        if ctx.grpc {
            let trailers = answer.trailers.as_ref();
            ctx.grpc_status = trailers
                .and_then(super::grpc::status_of)
                .or_else(|| super::grpc::status_of(&answer.header.headers));
        }
        respond(session, answer).await?;
        Ok(true)
    }

    /// The race between the first attempt (on `a`) and a reissue (on `b`); when the first fails
    /// before any answer, one more try on `b`, as any retry.
    async fn race_attempts(
        &self,
        stage: &HedgeStage,
        cluster: &Arc<Cluster>,
        (a, b): (usize, usize),
        upstream: Outgoing,
        timeout: Duration,
        ctx: &mut Ctx,
    ) -> Result<Answer> {
        let max = stage.max_body_bytes;
        let sent = Instant::now();
        let (mut result, winner) = race(
            self.attempt(cluster, a, upstream.clone(), max),
            || self.attempt(cluster, b, upstream.clone(), max),
            Some(timeout),
            &stage.budget,
        )
        .await;
        let outcome = match winner {
            Winner::Primary if sent.elapsed() >= timeout => HedgeOutcome::Denied,
            Winner::Primary => HedgeOutcome::Fast,
            w => {
                ctx.tried.push(b);
                HedgeOutcome::Reissued(w)
            }
        };
        stage.record(&mut ctx.state, outcome);
        if let Err(e) = &result {
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[cluster.name.as_str(), error_kind(e)])
                .inc();
            let retry = winner == Winner::Primary
                && b != a
                && ctx
                    .hold
                    .as_mut()
                    .is_some_and(|h| h.take_retry(&self.state, &ctx.tried, Some(a), false));
            if retry {
                ctx.tried.push(b);
                result = self.attempt(cluster, b, upstream, max).await;
            }
        }
        result
    }

    /// One attempt of a hedged request: the whole response, buffered.
    async fn attempt(
        &self,
        cluster: &Cluster,
        endpoint: usize,
        req: Outgoing,
        max_body: usize,
    ) -> Result<Answer> {
        if endpoint >= cluster.endpoints.len() {
            return Error::e_explain(ErrorType::InternalError, "no such endpoint");
        }
        let guard = Attempt::start(cluster, endpoint);
        let result = self.exchange(endpoint, cluster, req, max_body).await;
        let outcome = match &result {
            Ok(a) => outcome_of(a.header.status.as_u16()),
            Err(_) => Outcome::Failure,
        };
        guard.end(outcome, &self.state);
        result
    }

    async fn exchange(
        &self,
        endpoint: usize,
        cluster: &Cluster,
        req: Outgoing,
        max_body: usize,
    ) -> Result<Answer> {
        let peer = peer(cluster, endpoint);
        let (mut s, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(upstream_error)?;
        s.set_read_timeout(Some(cluster.source.read_timeout));
        s.write_request_header(Box::new(req.header))
            .await
            .map_err(upstream_error)?;
        if req.body.is_empty() {
            s.finish_request_body().await.map_err(upstream_error)?;
        } else {
            s.write_request_body(req.body, true)
                .await
                .map_err(upstream_error)?;
        }
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
        let trailers = match &mut s {
            HttpSession::H2(h2) => h2.read_trailers().await.map_err(upstream_error)?,
            _ => None,
        };
        self.connector
            .release_http_session(s, &peer, Some(cluster.source.idle_timeout))
            .await;
        Ok(Answer {
            header,
            body: body.freeze(),
            trailers,
        })
    }
}

/// Send the whole response: its length said, framing and hop-by-hop headers dropped, its
/// trailers after the body (to an HTTP/2 client; HTTP/1.1 responses carry none here).
async fn respond(session: &mut Session, answer: Answer) -> Result<()> {
    let Answer {
        mut header,
        body,
        trailers,
    } = answer;
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.remove_header(&http::header::CONNECTION);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    let trailers = trailers.filter(|_| session.is_http2());
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty && trailers.is_none())
        .await?;
    if !empty {
        session
            .write_response_body(Some(body), trailers.is_none())
            .await?;
    }
    if let Some(t) = trailers {
        session.write_response_trailers(t).await?;
    }
    Ok(())
}
