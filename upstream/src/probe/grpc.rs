//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) as an active health check
//! of an `h2c` or `h2` cluster's endpoints: an endpoint passes when it answers `SERVING` for the
//! configured service. The request goes over pingora's connector, with the cluster's own
//! protocol and TLS; the messages are tonic-health's.

use super::HealthCheckConfig;
use crate::transport::Transport;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::http::client::HttpSession;
use pingora::{Error, ErrorType, Result};
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The path of the health-checking protocol's unary call.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Longest answer read (a `HealthCheckResponse` is a few bytes).
const MAX_ANSWER: usize = 4096;

pub struct GrpcHealthCheck {
    service: String,
    transport: Transport,
    connector: Connector,
    timeout: std::time::Duration,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
}

fn failed(why: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::Custom("grpc health check"), why.into())
}

/// A gRPC message: compression flag, length, the encoded message.
pub fn frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    // Encoding into a buffer with room for the message cannot fail.
    let _ = msg.encode(&mut b);
    b.freeze()
}

/// The serving status in an answer's first message.
pub fn serving_status(body: &[u8]) -> Result<ServingStatus> {
    let (Some(&flag), Some(len)) = (body.first(), body.get(1..5)) else {
        return Err(failed("no gRPC message in the answer"));
    };
    if flag != 0 {
        return Err(failed("compressed answer"));
    }
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let msg = body
        .get(5..5 + len)
        .ok_or_else(|| failed("truncated gRPC message"))?;
    let r = HealthCheckResponse::decode(msg).map_err(|e| failed(format!("bad message: {e}")))?;
    Ok(r.status())
}

impl GrpcHealthCheck {
    pub fn new(service: &str, hc: &HealthCheckConfig, transport: Transport) -> Self {
        Self {
            service: service.to_string(),
            transport,
            connector: Connector::new(None),
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    }

    async fn ask(&self, addr: std::net::SocketAddr) -> Result<ServingStatus> {
        let mut peer = self.transport.peer_at(addr);
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        let (mut s, _) = self.connector.get_http_session(&peer).await?;
        let mut req = RequestHeader::build("POST", CHECK_PATH.as_bytes(), None)?;
        req.insert_header("host", addr.to_string())?;
        req.insert_header("content-type", "application/grpc")?;
        req.insert_header("te", "trailers")?;
        req.insert_header("user-agent", "hydrus-health-check")?;
        s.write_request_header(Box::new(req)).await?;
        let msg = HealthCheckRequest {
            service: self.service.clone(),
        };
        s.write_request_body(frame(&msg), true).await?;
        s.read_response_header().await?;
        let header = s.response_header().ok_or_else(|| failed("no answer"))?;
        if header.status != 200 {
            return Err(failed(format!("HTTP status {}", header.status)));
        }
        let early = header.headers.get("grpc-status").cloned();
        let mut body = BytesMut::new();
        while let Some(chunk) = s.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(failed("answer too long"));
            }
        }
        let trailers = match &mut s {
            HttpSession::H2(h2) => h2.read_trailers().await?,
            _ => None,
        };
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(early);
        if status.as_ref().map(|v| v.as_bytes()) != Some(b"0") {
            return Err(failed(format!("grpc-status {status:?}")));
        }
        serving_status(&body)
    }
}

#[async_trait::async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let pingora::protocols::l4::socket::SocketAddr::Inet(addr) = target.addr else {
            return Err(failed("not an IP endpoint"));
        };
        match self.ask(addr).await? {
            ServingStatus::Serving => Ok(()),
            other => Err(failed(format!("endpoint says {}", other.as_str_name()))),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_to_their_status() {
        let ok = frame(&HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        });
        assert_eq!(serving_status(&ok).ok(), Some(ServingStatus::Serving));
        let down = frame(&HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        });
        assert_eq!(serving_status(&down).ok(), Some(ServingStatus::NotServing));
        assert!(serving_status(&ok[..3]).is_err());
        assert!(serving_status(&[1, 0, 0, 0, 0]).is_err());
    }
}
