//! What the edge checks of a request's framing fields before it routes one: plain functions
//! over bytes (the edge hands in header values).
//!
//! - [`host_ok`]: a `Host` value as RFC 9112 3.2 wants it (else 400, as nginx answers).

/// Whether `value` is a `Host` field value: `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986
/// 3.2.2), its host not empty: a registered name (unreserved characters, sub-delimiters,
/// percent-escapes) or an IP literal in brackets; the port digits only. An empty value, or one
/// with userinfo, a path, spaces or other bytes, is not.
pub fn host_ok(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|c| *c == b']') {
            Some(end) => {
                let inner = &value[1..end];
                let ok = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|c| unreserved(*c) || sub_delim(*c) || *c == b':');
                if !ok {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|c| *c == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    !host.is_empty() && port_ok && (host[0] == b'[' || reg_name(host))
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 3986's `reg-name`: unreserved characters, sub-delimiters, and `%` with two hex digits.
fn reg_name(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            c if unreserved(c) || sub_delim(c) => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_as_rfc_9112_wants_them() {
        for ok in [
            "x",
            "ranker.svc",
            "ranker.svc:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "a-b_c~d.e",
            "%41bc",
            "x:",
            "EXAMPLE.com",
        ] {
            assert!(host_ok(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "user@host",
            "a b",
            "host/path",
            "host:8x",
            "host:80:81",
            "[::1",
            "[]:80",
            "[::1]x",
            "%4",
            "%zz",
            "h\u{e9}",
            "a\\b",
            "a\tb",
        ] {
            assert!(!host_ok(bad.as_bytes()), "{bad:?}");
        }
        assert!(!host_ok(b"a\xffb"));
    }
}
