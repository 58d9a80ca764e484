//! An endpoint as written: an address, or a name to resolve.

use std::net::SocketAddr;

/// `clusters.NAME.endpoints[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `127.0.0.1:8080`, `[::1]:8080`: used as is.
    Addr(SocketAddr),
    /// `ranker.svc:8080`: every address the name resolves to, at this port.
    Name { host: String, port: u16 },
}

/// Why an endpoint cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not HOST:PORT (write the port: `ranker.svc:8080`)")]
    NoPort(String),
    #[error("`{0}` has no valid port (1-65535)")]
    BadPort(String),
    #[error("`{0}` is not a DNS name or an IP address")]
    BadHost(String),
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(Self::Addr(a));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::NoPort(text.to_string()))?;
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(EndpointError::BadPort(text.to_string())),
        };
        if !is_dns_name(host) {
            return Err(EndpointError::BadHost(text.to_string()));
        }
        // As written: a final dot means fully qualified (no search domains).
        Ok(Self::Name {
            host: host.to_string(),
            port,
        })
    }

    pub fn is_name(&self) -> bool {
        matches!(self, Self::Name { .. })
    }
}

/// Letters, digits, `-` and `_` in labels of 1-63 characters, at most 253 in all; a trailing
/// dot (fully qualified) is allowed. Not an IP address (those parse as `Addr`).
fn is_dns_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    !h.is_empty()
        && h.len() <= 253
        && h.parse::<std::net::IpAddr>().is_err()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:80"),
            Ok(Endpoint::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("[::1]:80"),
            Ok(Endpoint::Addr("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("ranker.prod.svc.cluster.local.:8080"),
            Ok(Endpoint::Name {
                host: "ranker.prod.svc.cluster.local.".into(),
                port: 8080
            })
        );
        assert!(Endpoint::parse("ranker").is_err());
        assert!(Endpoint::parse("ranker:0").is_err());
        assert!(Endpoint::parse("ranker:99999").is_err());
        assert!(Endpoint::parse("ran ker:80").is_err());
        assert!(Endpoint::parse(":80").is_err());
        assert!(Endpoint::parse("a..b:80").is_err());
        assert!(Endpoint::parse("http://ranker:80").is_err());
        assert!(Endpoint::parse("1.2.3.4.5:80").is_ok(), "a name, if odd");
    }
}
