//! The hedge stage's reissues: for an idempotent request without a body whose route's hedge
//! stage gave it a timeout, the edge makes the upstream calls itself, racing a reissue against
//! a slow first attempt (within the stage's budget), and answers the client with the winner.

use super::upstream::{error_kind, outcome_of, peer, upstream_error, Attempt, Hold};
use super::{Ctx, Proxy};
use crate::cluster::Cluster;
use http::{HeaderName, HeaderValue};
use hydrus_filters::hedge::{race, HedgeOutcome, HedgeStage, Winner};
use hydrus_filters::outlier::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
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

/// Whether a request can be hedged: idempotent, without a body, not an upgrade (a tunnel is
/// not a response to buffer).
fn hedgeable(session: &Session) -> bool {
    let req = session.req_header();
    let idempotent = matches!(req.method, http::Method::GET | http::Method::HEAD);
    let no_body = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0")
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none();
    idempotent && no_body && !session.is_upgrade_req()
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
        if !hedgeable(session) || cluster.endpoints.is_empty() {
            return Ok(false);
        }
        let mut upstream = session.req_header().clone();
        // This path writes the request itself: drop what pingora's path drops for a hop.
        strip_hop_by_hop(&mut upstream);
        super::prepare::prepare_upstream(&mut upstream, ctx)?;
        // The attempts go to different endpoints when the cluster has several.
        let now = crate::clock::now_ms();
        let key = ctx.ids[0].as_ref().map(HeaderValue::as_bytes);
        let Some(a) = cluster.select(key, &ctx.tried, now) else {
            return Ok(false);
        };
        ctx.tried.push(a);
        let b = cluster.select(key, &ctx.tried, now).unwrap_or(a);
        ctx.hold = Some(Hold::new(cluster.clone()));
        ctx.cluster_load = Some(cluster.budget.in_flight().0);
        let sent = Instant::now();
        let result = self
            .race_attempts(stage, &cluster, (a, b), upstream, timeout, ctx)
            .await;
        let (header, body) = result?;
        ctx.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        answer(session, header, body).await?;
        Ok(true)
    }

    /// The race between the first attempt (on `a`) and a reissue (on `b`); when the first fails
    /// before any answer, one more try on `b`, as any retry.
    async fn race_attempts(
        &self,
        stage: &HedgeStage,
        cluster: &Arc<Cluster>,
        (a, b): (usize, usize),
        upstream: RequestHeader,
        timeout: Duration,
        ctx: &mut Ctx,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
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
        req: RequestHeader,
        max_body: usize,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
        if endpoint >= cluster.endpoints.len() {
            return Error::e_explain(ErrorType::InternalError, "no such endpoint");
        }
        let guard = Attempt::start(cluster, endpoint);
        let result = self.exchange(endpoint, cluster, req, max_body).await;
        let outcome = match &result {
            Ok((h, _)) => outcome_of(h.status.as_u16()),
            Err(_) => Outcome::Failure,
        };
        guard.end(outcome, &self.state);
        result
    }

    async fn exchange(
        &self,
        endpoint: usize,
        cluster: &Cluster,
        req: RequestHeader,
        max_body: usize,
    ) -> Result<(ResponseHeader, bytes::Bytes)> {
        let peer = peer(cluster, endpoint);
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
}

/// Send the whole response: its length said, framing and hop-by-hop headers dropped.
async fn answer(
    session: &mut Session,
    mut header: ResponseHeader,
    body: bytes::Bytes,
) -> Result<()> {
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
    Ok(())
}
