//! gRPC through the edge. A call is an HTTP/2 request whose content type is
//! `application/grpc[+...]`; its metadata are HTTP/2 headers, so the filters read the QoE, user
//! and scenario metadata exactly as headers, and their `set_headers` reach the upstream as
//! metadata. What differs:
//!
//! - hydrus never turns a call into an HTTP error it made up: when it cannot proxy one (no
//!   route, upstream unreachable or timed out), the client gets a gRPC status in a
//!   trailers-only response (HTTP 200), the code mapped from the HTTP status as gRPC's own
//!   mapping does (404 `UNIMPLEMENTED`, 502-504 `UNAVAILABLE`, ...);
//! - the call's `grpc-status` (from the upstream's trailers, or its trailers-only answer) goes
//!   into the log record;
//! - a strategy's query parameters (a candidate count, say) travel as metadata of the same
//!   name: hydrus does not rewrite protobuf bodies, and a query on a gRPC path is not one.

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::Result;

/// Whether a request is a gRPC call.
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC's mapping of an HTTP status to a status code (grpc/doc/http-grpc-status-mapping.md).
pub fn code_for_http(status: u16) -> u8 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        413 | 431 => 8,              // RESOURCE_EXHAUSTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// The `grpc-status` of a header or trailer map, if it has a valid one.
pub fn status_of(headers: &http::HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()
}

/// What hydrus says in `grpc-message` for an HTTP status it would have answered.
fn message_for(status: u16) -> &'static str {
    match status {
        404 => "hydrus: no route for this method",
        431 => "hydrus: request metadata too large",
        413 => "hydrus: request message too large",
        400 => "hydrus: bad request",
        502 => "hydrus: upstream unavailable",
        503 => "hydrus: no upstream available",
        504 => "hydrus: upstream timed out",
        _ => "hydrus: cannot proxy the call",
    }
}

/// Answer a call hydrus cannot proxy with the gRPC status for `http_status`, as a
/// trailers-only response. Returns the code sent.
pub async fn respond(session: &mut Session, http_status: u16) -> Result<u8> {
    let code = code_for_http(http_status);
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    )?;
    h.insert_header("grpc-status", code.to_string())?;
    h.insert_header("grpc-message", message_for(http_status))?;
    match session.as_mut() {
        // HEADERS with END_STREAM: a trailers-only response, as gRPC clients expect it (the
        // proxy session would end the stream with an empty DATA frame).
        ServerSession::H2(h2) => h2.write_response_header(Box::new(h), true)?,
        _ => {
            h.insert_header(http::header::CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(h), true).await?;
        }
    }
    Ok(code)
}

/// End a call whose response began and then failed upstream with trailers `grpc-status: 14`
/// (UNAVAILABLE), rather than a reset the client would read as CANCELLED. Returns whether
/// they were sent (HTTP/2 only).
pub async fn fail_mid_call(session: &mut Session) -> bool {
    if !session.is_http2() {
        return false;
    }
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("14"));
    t.insert(
        "grpc-message",
        HeaderValue::from_static("hydrus: upstream failed during the call"),
    );
    session.write_response_trailers(t).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_as_grpc_maps_them() {
        assert_eq!(code_for_http(404), 12);
        assert_eq!(code_for_http(502), 14);
        assert_eq!(code_for_http(504), 14);
        assert_eq!(code_for_http(500), 2);
        let mut h = http::HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status_of(&h), Some(14));
        let mut req = RequestHeader::build("POST", b"/a.B/C", None).expect("header");
        assert!(!is_grpc(&req));
        req.insert_header("content-type", "application/grpc+proto")
            .expect("insert");
        assert!(is_grpc(&req));
    }
}
