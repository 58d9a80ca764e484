//! What the edge checks of a request's framing fields before it routes one, and how it makes
//! them fit the upstream's hop: plain functions over bytes (the edge hands in header values).
//!
//! - [`host_ok`]: a `Host` value as RFC 9112 3.2 wants it (else 400, as nginx answers).
//! - [`content_length`]: `Content-Length` fields reconciled as RFC 9110 8.6 allows.
//! - [`joined_cookies`]: HTTP/2's several `cookie` fields as the one an HTTP/1.1 hop carries.

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

/// `Content-Length` values that are not numbers or differ: the message's framing is
/// unknowable (a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadContentLength;

/// The `Content-Length` a request's fields give (RFC 9110 8.6): each field a comma-separated
/// list of decimal values, all of them equal. `Ok(None)`: no field.
pub fn content_length<'a>(
    fields: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<u64>, BadContentLength> {
    let mut found: Option<u64> = None;
    for field in fields {
        for v in field.split(|c| *c == b',') {
            let v = v.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(BadContentLength);
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(BadContentLength)?;
            match found {
                Some(m) if m != n => return Err(BadContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Several `cookie` fields (HTTP/2 sends one per cookie, RFC 9113 8.2.3) as the one field an
/// HTTP/1.1 hop must carry: their values joined with `; `. `None` with fewer than two.
pub fn joined_cookies<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut n = 0;
    for f in fields {
        if n > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(f);
        n += 1;
    }
    (n > 1).then_some(out)
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

    #[test]
    fn content_lengths_reconciled_or_refused() {
        let cl = |fields: &[&str]| content_length(fields.iter().map(|f| f.as_bytes()));
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["5"]), Ok(Some(5)));
        assert_eq!(cl(&["5, 5"]), Ok(Some(5)));
        assert_eq!(cl(&["5", "5"]), Ok(Some(5)));
        assert_eq!(cl(&["5,5", " 5 "]), Ok(Some(5)));
        assert_eq!(cl(&["0"]), Ok(Some(0)));
        for bad in [
            &["5, 6"][..],
            &["5", "6"],
            &["5,"],
            &[""],
            &["-5"],
            &["+5"],
            &["5x"],
            &["99999999999999999999999"],
        ] {
            assert_eq!(cl(bad), Err(BadContentLength), "{bad:?}");
        }
    }

    #[test]
    fn cookies_joined_for_an_http1_hop() {
        let j = |fields: &[&str]| joined_cookies(fields.iter().map(|f| f.as_bytes()));
        assert_eq!(j(&[]), None);
        assert_eq!(j(&["a=1"]), None);
        assert_eq!(j(&["a=1", "b=2"]), Some(b"a=1; b=2".to_vec()));
        assert_eq!(j(&["a=1", "b=2", "c=3"]), Some(b"a=1; b=2; c=3".to_vec()));
    }
}
