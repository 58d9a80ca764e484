//! Text a log record carries from its request to the sink thread, made without the formatting
//! machinery: request ids, addresses, the protocol, and the bytes copied out of the request.

use smallvec::SmallVec;

/// A request id hydrus made up: 32 lowercase hex digits.
pub type RequestId = [u8; 32];

/// 32 lowercase hex digits, without the formatting machinery.
pub fn hex_id(v: u128) -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 32];
    for (i, c) in s.iter_mut().enumerate() {
        *c = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    s
}

/// An address as a record writes it, `IP:PORT`, on the stack: through `Display` an IPv4
/// address and port cost about 1,900 instructions (callgrind), two a record; this, a tenth.
/// (Text from the start, so that reading it back does not validate it again as UTF-8.)
pub struct AddrText(arrayvec::ArrayString<64>);

impl AddrText {
    pub fn new(a: std::net::SocketAddr) -> Self {
        let mut t = arrayvec::ArrayString::new();
        // (At most 21 bytes for IPv4; for IPv6 `[` 39 `]:` 5, with a scope id 58: a write
        // cannot run out of room.)
        match a {
            std::net::SocketAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        let _ = t.try_push('.');
                    }
                    let _ = t.try_push_str(digits.format(octet));
                }
                let _ = t.try_push(':');
                let _ = t.try_push_str(digits.format(v4.port()));
            }
            std::net::SocketAddr::V6(_) => {
                use std::fmt::Write as _;
                let _ = write!(t, "{a}");
            }
        }
        Self(t)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The protocol as a record names it.
pub fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Bytes copied out of a request for its log record (an id header's value), inline when short.
/// A `HeaderValue` would share the request's read buffer (4 KB) and keep it alive until the sink
/// thread frees it: a free across threads that empties a slab of jemalloc's every request (about
/// 3k instructions between the two threads, callgrind), and 4 KB held per queued record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied(SmallVec<[u8; 48]>);

impl Copied {
    pub fn new(bytes: &[u8]) -> Self {
        Self(SmallVec::from_slice(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A request target's path and query, copied (see [`Copied`]); kept as text, inline when
/// short, so that reading it back does not validate it again as UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathText {
    /// The path, then the query.
    text: Text<80>,
    path_len: usize,
    has_query: bool,
}

/// Text inline up to `N` bytes, else on the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text<const N: usize> {
    Inline(arrayvec::ArrayString<N>),
    Heap(Box<str>),
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::Inline(arrayvec::ArrayString::new())
    }
}

impl<const N: usize> Text<N> {
    fn of(parts: [&str; 2]) -> Self {
        let mut inline = arrayvec::ArrayString::new();
        if parts.iter().all(|p| inline.try_push_str(p).is_ok()) {
            Self::Inline(inline)
        } else {
            Self::Heap(parts.concat().into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Inline(t) => t,
            Self::Heap(t) => t,
        }
    }
}

impl PathText {
    pub fn new(path: &str, query: Option<&str>) -> Self {
        Self {
            text: Text::of([path, query.unwrap_or_default()]),
            path_len: path.len(),
            has_query: query.is_some(),
        }
    }

    pub fn path(&self) -> &str {
        self.text.as_str().get(..self.path_len).unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        self.has_query
            .then(|| self.text.as_str().get(self.path_len..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:9",
            "[::1]:443",
            "[2001:db8::8a2e:370:7334]:65535",
            "[fe80::1%4]:80",
        ] {
            let addr: std::net::SocketAddr = match a.parse() {
                Ok(x) => x,
                Err(_) => std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                    "fe80::1".parse().expect("ip"),
                    80,
                    0,
                    4,
                )),
            };
            assert_eq!(super::AddrText::new(addr).as_str(), addr.to_string());
        }
    }

    #[test]
    fn copied_text_reads_back_what_was_copied() {
        let long = "x".repeat(300);
        for s in ["", "user-1", long.as_str()] {
            assert_eq!(super::Copied::new(s.as_bytes()).as_bytes(), s.as_bytes());
        }
        for (path, query) in [
            ("/rank", Some("user=1&candidates=20")),
            ("/rank", None),
            ("/", Some("")),
            ("", None),
            (long.as_str(), Some(long.as_str())),
            (&long[..79], Some("q")),
            (&long[..79], Some("qq")),
            ("/äö", Some("ü=1")),
            (&"/ä".repeat(30), Some("")),
        ] {
            let p = super::PathText::new(path, query);
            assert_eq!((p.path(), p.query()), (path, query));
        }
    }

    #[test]
    fn hex_ids() {
        let id = super::hex_id(0xabc);
        assert_eq!(
            std::str::from_utf8(&id),
            Ok(format!("{:032x}", 0xabc).as_str())
        );
        assert_eq!(super::hex_id(u128::MAX), [b'f'; 32]);
    }
}
