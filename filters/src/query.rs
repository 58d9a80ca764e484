//! The query parameters hydrus owns: every key that any strategy sets is removed from what the
//! client sent (compared after percent-decoding and ignoring ASCII case, and with `;` taken as a
//! separator too, as some servers do), then the chosen strategy's values are appended. Other
//! pairs keep their order and bytes.

/// Percent-decode once (`+` as a space).
fn decode_once(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' if i + 2 < raw.len() => match (hex(raw[i + 1]), hex(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A query key as some server would read it: decoded (repeatedly: some decode twice), cut at a
/// NUL (C strings) or a `[` (`key[]`, `key[0]`: an array of `key` in PHP, Rails and Express),
/// trailing spaces dropped; compared to an owned key ignoring ASCII case.
fn read_as_servers_do(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let plain = !raw
        .iter()
        .any(|b| matches!(b, b'%' | b'+' | b'[' | b'\0' | b' '));
    if plain {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut name = raw.to_vec();
    for _ in 0..3 {
        let next = decode_once(&name);
        if next == name {
            break;
        }
        name = next;
    }
    let end = name
        .iter()
        .position(|b| matches!(b, b'\0' | b'['))
        .unwrap_or(name.len());
    name.truncate(end);
    let kept = name.trim_ascii_end().len();
    name.truncate(kept);
    std::borrow::Cow::Owned(name)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a `key=value` part's key is one of `keys` (see [`read_as_servers_do`]).
fn owned(part: &str, keys: &[String]) -> bool {
    let raw = part.as_bytes();
    let raw = raw
        .iter()
        .position(|&b| b == b'=')
        .map_or(raw, |eq| &raw[..eq]);
    let name = read_as_servers_do(raw);
    keys.iter().any(|k| name.eq_ignore_ascii_case(k.as_bytes()))
}

/// The new `path?query` text: the client's pairs without any key in `owned`, then `set`.
/// `None` when nothing changes (no owned key present and nothing to set).
pub fn set_query(
    path: &str,
    query: Option<&str>,
    set: &[(String, String)],
    owned_keys: &[String],
) -> Option<String> {
    let q = query.unwrap_or("");
    if set.is_empty()
        && !q
            .split(['&', ';'])
            .any(|p| !p.is_empty() && owned(p, owned_keys))
    {
        return None;
    }
    // Sized for the usual case, nothing the client sent dropped: the text then fills its buffer,
    // which the request's `Uri` takes as it is (`Bytes` from a full `Vec`, no second allocation).
    let added: usize = set.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(path.len() + usize::from(!q.is_empty()) + q.len() + added);
    out.push_str(path);
    let mut sep = '?';
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(';') {
            // `a=1;candidates=9`: keep the parts that are not owned, as they were written.
            let mut first = true;
            for part in pair
                .split(';')
                .filter(|p| !p.is_empty() && !owned(p, owned_keys))
            {
                out.push(if first { sep } else { ';' });
                out.push_str(part);
                first = false;
                sep = '&';
            }
            continue;
        }
        if owned(pair, owned_keys) {
            continue;
        }
        out.push(sep);
        out.push_str(pair);
        sep = '&';
    }
    for (k, v) in set {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        sep = '&';
    }
    Some(out)
}

/// Query pairs as gRPC metadata (names lower-cased), pair by pair: `None` for a pair that
/// cannot be one.
pub fn as_metadata(
    pairs: &[(String, String)],
) -> Vec<Option<(http::HeaderName, http::HeaderValue)>> {
    pairs
        .iter()
        .map(|(k, v)| {
            let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
            Some((name, http::HeaderValue::from_str(v).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_pairs_as_grpc_metadata() {
        let pairs = [
            ("Candidates".to_string(), "20".to_string()),
            ("a b".to_string(), "1".to_string()),
        ];
        let m = super::as_metadata(&pairs);
        assert_eq!(m.len(), 2);
        let (name, value) = m[0].as_ref().expect("a metadata pair");
        assert_eq!(
            (name.as_str(), value.to_str().ok()),
            ("candidates", Some("20"))
        );
        assert!(m[1].is_none(), "a space is not in a header name");
    }

    use super::*;
    use proptest::prelude::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn replaces_and_appends() {
        let s = set(&[("candidates", "10")]);
        let own = keys(&["candidates"]);
        assert_eq!(
            set_query("/rank", Some("a=1&candidates=50&b"), &s, &own).as_deref(),
            Some("/rank?a=1&b&candidates=10")
        );
        assert_eq!(
            set_query("/rank", None, &s, &own).as_deref(),
            Some("/rank?candidates=10")
        );
        assert_eq!(
            set_query("/", Some(""), &s, &own).as_deref(),
            Some("/?candidates=10")
        );
        assert_eq!(set_query("/", Some("x=1"), &[], &own), None);
        assert_eq!(
            set_query("/", Some("candidates=1&candidates=2"), &s, &own).as_deref(),
            Some("/?candidates=10")
        );
    }

    #[test]
    fn owned_keys_are_removed_however_they_are_spelled() {
        let own = keys(&["candidates", "model"]);
        let s = set(&[("candidates", "10")]);
        for q in [
            "candidat%65s=777",
            "candidat%65S=777",
            "CANDIDATES=777",
            "%63andidates=777",
            "%2563andidates=777",
            "candidates[]=777",
            "candidates[0]=777",
            "candidates%5B%5D=777",
            "candidates+=777",
            "candidates%00x=777",
            "model=big",
        ] {
            assert_eq!(
                set_query("/r", Some(q), &s, &own).as_deref(),
                Some("/r?candidates=10"),
                "{q}"
            );
        }
        // Separated by `;`, as some servers split.
        assert_eq!(
            set_query("/r", Some("a=1;candidates=777;b=2&c=3"), &s, &own).as_deref(),
            Some("/r?a=1;b=2&c=3&candidates=10")
        );
        // A strategy that sets nothing still strips what another one owns.
        assert_eq!(
            set_query("/r", Some("x=1&candidates=777"), &[], &own).as_deref(),
            Some("/r?x=1")
        );
        // Near misses are kept.
        assert_eq!(
            set_query(
                "/r",
                Some("candidatesx=1&candidate=2&%zz=3&%6&candidates.x=4"),
                &[],
                &own
            ),
            None
        );
    }

    proptest! {
        /// The set names appear exactly once with their value; every other pair is kept in order.
        #[test]
        fn keeps_others(pairs in proptest::collection::vec(("[a-d]{1,2}", "[0-9]{0,3}"), 0..8)) {
            let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let q = q.join("&");
            let s = set(&[("a", "X")]);
            let out = set_query("/p", Some(&q), &s, &keys(&["a"])).expect("some");
            let (_, query) = out.split_once('?').expect("has query");
            let got: Vec<&str> = query.split('&').collect();
            let kept: Vec<String> = pairs.iter().filter(|(k, _)| k != "a").map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert_eq!(&got[..got.len() - 1], &kept.iter().map(|s| s.as_str()).collect::<Vec<_>>()[..]);
            prop_assert_eq!(*got.last().expect("last"), "a=X");
        }

        /// Whatever the client wrote, no pair that decodes to an owned key survives.
        #[test]
        fn no_owned_key_survives(q in "[a-cA-C%0-9=&;+]{0,40}") {
            let own = keys(&["ab"]);
            let out = set_query("/p", Some(&q), &[], &own).unwrap_or_else(|| format!("/p?{q}"));
            let query = out.split_once('?').map_or("", |x| x.1);
            for part in query.split(['&', ';']).filter(|p| !p.is_empty()) {
                prop_assert!(!owned(part, &own), "{part} in {out}");
            }
        }
    }
}
