//! The hedge path's response side: the winner's response streamed to the client as it comes,
//! its header redone for the client's protocol (pingora's path does the same on its own), and
//! the upstream given up as soon as the client goes away.

use super::super::upstream::upstream_error;
use super::super::Proxy;
use super::Response;
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::ErrorType;

/// Remove what belongs to the upstream's hop from a response (RFC 9110 7.6.1): `Connection`
/// and the fields it nominates, and the standard hop-by-hop ones. (`Trailer`: trailers do not
/// reach an HTTP/1.1 client here, and an HTTP/2 one gets them as they come.)
fn strip_hop_by_hop(header: &mut ResponseHeader) {
    for n in super::connection_nominated(&header.headers) {
        header.remove_header(&n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        header.remove_header(n);
    }
}

/// Redo the header's framing for the client. `done`: the upstream's response has no body to
/// follow (a trailers-only call, a 204, an answer to HEAD, an empty body).
fn for_client(header: &mut ResponseHeader, session: &mut Session, done: bool) -> Result<()> {
    strip_hop_by_hop(header);
    let bodyless = matches!(header.status.as_u16(), 204 | 304)
        || session.req_header().method == http::Method::HEAD;
    if session.is_http2() {
        header.remove_header(&http::header::TRANSFER_ENCODING);
        return Ok(());
    }
    // An HTTP/1.1 client: pingora's writer serialises HTTP/1.x only (an HTTP/2 upstream's
    // version would fail it), and chunking needs HTTP/1.1 (an HTTP/1.0 upstream's would not).
    header.set_version(http::Version::HTTP_11);
    if bodyless {
        return Ok(());
    }
    let has_length = header.headers.contains_key(http::header::CONTENT_LENGTH);
    if done {
        header.remove_header(&http::header::TRANSFER_ENCODING);
        if !has_length {
            header.insert_header(http::header::CONTENT_LENGTH, "0")?;
        }
    } else if has_length {
        header.remove_header(&http::header::TRANSFER_ENCODING);
    } else {
        // A body of unknown length (chunked, close-delimited, or an HTTP/2 stream's): chunked,
        // after whatever codings the upstream applied (`gzip, chunked`; a close-delimited
        // `gzip` body), which the bytes relayed still carry.
        let codings = chunked_last(&header.headers);
        header.insert_header(http::header::TRANSFER_ENCODING, codings)?;
    }
    Ok(())
}

/// The response's transfer codings with `chunked` last (once), the others kept in order.
fn chunked_last(headers: &HeaderMap) -> String {
    let mut codings: Vec<&str> = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
        .collect();
    codings.push("chunked");
    codings.join(", ")
}

/// Write the response header; `end`: nothing follows. To an HTTP/2 client that is HEADERS
/// with END_STREAM: a trailers-only gRPC answer must arrive so (grpc-go and grpc-java reject
/// one followed by an empty DATA frame), and a 204 or an answer to HEAD need no DATA.
async fn write_header(session: &mut Session, header: ResponseHeader, end: bool) -> Result<()> {
    if let (true, ServerSession::H2(h2)) = (end, session.as_downstream_mut()) {
        return h2.write_response_header(Box::new(header), true);
    }
    session.write_response_header(Box::new(header), end).await?;
    if end {
        session.write_response_body(None, true).await?;
    }
    Ok(())
}

/// The next piece of the upstream's body, unless the client goes away first (an HTTP/2 stream
/// reset, an HTTP/1.1 connection closed): then a downstream error, so that the upstream is
/// given up at once, not held until its read timeout (a quiet server stream).
async fn next_chunk(session: &mut Session, upstream: &mut HttpSession) -> Result<Option<Bytes>> {
    tokio::select! {
        biased;
        chunk = upstream.read_response_body() => chunk.map_err(upstream_error),
        // (The request body is read whole: no body is expected, only a close.)
        gone = session.as_downstream_mut().read_body_or_idle(true) => {
            let e = match gone {
                Err(e) => e,
                Ok(_) => Error::explain(ErrorType::ConnectionClosed, "client sent past its body"),
            };
            Err(e.into_down())
        }
    }
}

/// Relay the body and the trailers; returns the trailers.
async fn relay_body(
    session: &mut Session,
    upstream: &mut HttpSession,
) -> Result<Option<HeaderMap>> {
    while let Some(chunk) = next_chunk(session, upstream).await? {
        session
            .write_response_body(Some(chunk), false)
            .await
            .map_err(|e| e.into_down())?;
    }
    let trailers = match upstream {
        HttpSession::H2(h2) => h2.read_trailers().await.map_err(upstream_error)?,
        _ => None,
    };
    // (An HTTP/1.1 client gets none: pingora writes no trailers to it.)
    match trailers.clone().filter(|_| session.is_http2()) {
        Some(t) => session.write_response_trailers(t).await,
        None => session.write_response_body(None, true).await,
    }
    .map_err(|e| e.into_down())?;
    Ok(trailers)
}

impl Proxy {
    /// Stream the winner's response to the client as it comes: its header (framing and
    /// hop-by-hop fields redone for the client's protocol), its body, then its trailers (to an
    /// HTTP/2 client). Returns the trailers. A response that is done at its header is written
    /// as a header that ends the response.
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        response: Response,
    ) -> Result<Option<HeaderMap>> {
        let Response {
            mut header,
            mut upstream,
            peer,
            idle,
        } = response;
        let done = upstream.response_done();
        for_client(&mut header, session, done)?;
        write_header(session, header, done)
            .await
            .map_err(|e| e.into_down())?;
        let trailers = if done {
            None
        } else {
            match relay_body(session, &mut upstream).await {
                Ok(t) => t,
                Err(e) => {
                    // Not reusable: an HTTP/1.1 connection is closed, an HTTP/2 stream reset.
                    upstream.shutdown().await;
                    return Err(e);
                }
            }
        };
        self.connector
            .release_http_session(upstream, &peer, Some(idle))
            .await;
        Ok(trailers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_comes_last_after_the_upstream_codings() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_str(v).expect("valid"),
                );
            }
            chunked_last(&h)
        };
        assert_eq!(te(&[]), "chunked");
        assert_eq!(te(&["chunked"]), "chunked");
        assert_eq!(te(&["gzip, chunked"]), "gzip, chunked");
        assert_eq!(te(&["gzip"]), "gzip, chunked");
        assert_eq!(te(&["gzip", "Chunked"]), "gzip, chunked");
        assert_eq!(te(&["deflate,gzip"]), "deflate, gzip, chunked");
    }
}
