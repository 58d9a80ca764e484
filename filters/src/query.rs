//! Setting query parameters on a request target: `set` replaces every existing pair with the same
//! name and appends the new value; other pairs keep their order and bytes.

/// The new `path?query` text, or `None` when nothing is to be set.
pub fn set_query(path: &str, query: Option<&str>, set: &[(String, String)]) -> Option<String> {
    if set.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 32);
    out.push_str(path);
    let mut sep = '?';
    for pair in query.unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let name = pair.split('=').next().unwrap_or(pair);
        if set.iter().any(|(k, _)| k == name) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replaces_and_appends() {
        let s = set(&[("candidates", "10")]);
        assert_eq!(
            set_query("/rank", Some("a=1&candidates=50&b"), &s).as_deref(),
            Some("/rank?a=1&b&candidates=10")
        );
        assert_eq!(
            set_query("/rank", None, &s).as_deref(),
            Some("/rank?candidates=10")
        );
        assert_eq!(
            set_query("/", Some(""), &s).as_deref(),
            Some("/?candidates=10")
        );
        assert_eq!(set_query("/", Some("x=1"), &[]), None);
        assert_eq!(
            set_query("/", Some("candidates=1&candidates=2"), &s).as_deref(),
            Some("/?candidates=10")
        );
    }

    proptest! {
        /// The set names appear exactly once with their value; every other pair is kept in order.
        #[test]
        fn keeps_others(pairs in proptest::collection::vec(("[a-d]{1,2}", "[0-9]{0,3}"), 0..8)) {
            let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let q = q.join("&");
            let s = set(&[("a", "X")]);
            let out = set_query("/p", Some(&q), &s).expect("some");
            let (_, query) = out.split_once('?').expect("has query");
            let got: Vec<&str> = query.split('&').collect();
            let kept: Vec<String> = pairs.iter().filter(|(k, _)| k != "a").map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert_eq!(&got[..got.len() - 1], &kept.iter().map(|s| s.as_str()).collect::<Vec<_>>()[..]);
            prop_assert_eq!(*got.last().expect("last"), "a=X");
        }
    }
}
