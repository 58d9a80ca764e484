use super::*;

fn matcher(yaml: &str) -> Matcher {
    let m: MatchConfig = serde_norway::from_str(yaml).expect("yaml");
    let mut p = Problems::default();
    Matcher::compile(&m, "match", &mut p).expect("valid")
}

#[test]
fn matches_path_method_and_header() {
    let h = HeaderMap::new();
    let mut with = HeaderMap::new();
    with.insert("x-canary", http::HeaderValue::from_static("1"));
    let rank = matcher("{path_prefix: /rank, methods: [GET, POST]}");
    assert!(rank.matches(&Method::GET, "/rank", &h));
    assert!(rank.matches(&Method::POST, "/ranking/x", &h));
    assert!(!rank.matches(&Method::PUT, "/rank", &h));
    assert!(!rank.matches(&Method::GET, "/health", &h));
    let exact = matcher("{path: /health, header: x-canary}");
    assert!(exact.matches(&Method::GET, "/health", &with));
    assert!(!exact.matches(&Method::GET, "/health", &h));
    assert!(!exact.matches(&Method::GET, "/health/x", &with));
    assert!(Matcher::any().matches(&Method::DELETE, "/anything", &h));
}

#[test]
fn covers_means_the_later_route_is_never_reached() {
    let all = Matcher::any();
    let rank = matcher("{path_prefix: /rank}");
    let rank_get = matcher("{path: /rank/a, methods: [GET]}");
    let canary = matcher("{path_prefix: /rank, header: x-canary}");
    assert!(all.covers(&rank));
    assert!(rank.covers(&rank_get));
    assert!(!rank_get.covers(&rank));
    assert!(!canary.covers(&rank));
    assert!(rank.covers(&canary));
}

#[test]
fn paths_are_matched_normalized() {
    for (raw, normal) in [
        ("/rank", "/rank"),
        ("/", "/"),
        ("//rank", "/rank"),
        ("/%72ank", "/rank"),
        ("/a/%2e%2E/rank", "/rank"),
        ("/x/../rank/./a", "/rank/a"),
        ("/rank/", "/rank/"),
        ("/rank/.", "/rank/"),
        ("/rank/..", "/"),
        ("/../../rank", "/rank"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%zz", "/a%25zz"),
        ("/%", "/%25"),
        ("/%%30a", "/%250a"),
        ("/%252F", "/%252F"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("*", "*"),
    ] {
        for slashes in [EscapedSlashes::Reject, EscapedSlashes::Unescape] {
            assert_eq!(normalize_path(raw, slashes), Ok(normal.into()), "{raw}");
        }
    }
    assert!(matches!(
        normalize_path("/rank/a", EscapedSlashes::Reject),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
}

#[test]
fn encoded_slashes_and_backslashes_are_refused_or_read_as_slashes() {
    for (raw, unescaped) in [
        ("/%2Frank", "/rank"),
        ("/%2frank", "/rank"),
        ("/other/..%2Frank", "/rank"),
        ("/other/..%2frank/", "/rank/"),
        ("/%5Crank", "/rank"),
        ("/%5crank", "/rank"),
        ("/\\rank", "/rank"),
        ("/other\\..\\rank", "/rank"),
        ("/a%2Fb/", "/a/b/"),
        ("/%2E%2E%2F%2E%2E%2Frank", "/rank"),
    ] {
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Reject),
            Err(EscapedSlash),
            "{raw}"
        );
        assert_eq!(
            normalize_path(raw, EscapedSlashes::Unescape),
            Ok(unescaped.into()),
            "{raw}"
        );
    }
}

/// Percent-decoded once, as a server behind hydrus reads a path.
fn decoded(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|&h| hex(h)),
            b.get(i + 2).and_then(|&l| hex(l)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

proptest::proptest! {
    /// Normalizing twice changes nothing, and a normal path has no empty, `.` or `..`
    /// segment inside.
    #[test]
    fn normalizing_is_idempotent(p in "/[a-z./%0-9A-F\\\\]{0,24}") {
        for slashes in [EscapedSlashes::Reject, EscapedSlashes::Unescape] {
            let Ok(once) = normalize_path(&p, slashes) else { continue };
            let once = once.into_owned();
            let twice = normalize_path(&once, slashes).map(|t| t.into_owned());
            proptest::prop_assert_eq!(twice, Ok(once.clone()));
            proptest::prop_assert!(!once.contains("//") && once.starts_with('/'));
            let inner: Vec<&str> = once.split('/').collect();
            let last = inner.len().saturating_sub(1);
            for (i, seg) in inner.iter().enumerate() {
                proptest::prop_assert!(*seg != "." && *seg != "..");
                proptest::prop_assert!(!seg.is_empty() || i == 0 || i == last);
            }
        }
    }

    /// Whatever a client sends, the path hydrus routes by and forwards is one whose decoding
    /// (what an upstream such as nginx reads) has the same segments: no slash, backslash,
    /// empty, `.` or `..` segment appears, so the upstream cannot read it as another route's.
    #[test]
    fn decoding_a_normalized_path_never_changes_its_route(
        p in "/[a-z./%25fFcC\\\\]{0,24}",
    ) {
        for slashes in [EscapedSlashes::Reject, EscapedSlashes::Unescape] {
            let Ok(n) = normalize_path(&p, slashes) else {
                proptest::prop_assert_eq!(slashes, EscapedSlashes::Reject);
                continue;
            };
            let d = decoded(&n);
            proptest::prop_assert!(!d.contains(&b'\\'), "{} -> {} -> {:?}", p, n, d);
            proptest::prop_assert_eq!(
                d.iter().filter(|c| **c == b'/').count(),
                n.bytes().filter(|c| *c == b'/').count(),
                "{} -> {}", p, n
            );
            let segments: Vec<&[u8]> = d.split(|c| *c == b'/').collect();
            let last = segments.len().saturating_sub(1);
            for (i, seg) in segments.iter().enumerate() {
                proptest::prop_assert!(*seg != b"." && *seg != b"..", "{} -> {}", p, n);
                proptest::prop_assert!(i == last || seg.is_empty() == (i == 0), "{} -> {}", p, n);
            }
        }
    }
}

#[test]
fn config_paths_with_encoded_slashes_are_named() {
    for path in ["/a%2Fb", "/a\\b", "/a%5cb"] {
        let m = MatchConfig {
            path_prefix: Some(path.into()),
            ..MatchConfig::default()
        };
        let mut p = Problems::default();
        assert!(Matcher::compile(&m, "routes[1].match", &mut p).is_none());
        assert_eq!(p.errors[0].0, "routes[1].match.path_prefix", "{path}");
        assert!(p.errors[0].1.contains("encoded slash"), "{:?}", p.errors);
    }
}

#[test]
fn bad_matches_are_named() {
    let m: MatchConfig =
        serde_norway::from_str("{path: rank, path_prefix: /x, methods: [get]}").expect("yaml");
    let mut p = Problems::default();
    assert!(Matcher::compile(&m, "routes[0].match", &mut p).is_none());
    let fields: Vec<&str> = p.errors.iter().map(|e| e.0.as_str()).collect();
    assert!(fields.contains(&"routes[0].match"), "{fields:?}");
    assert!(fields.contains(&"routes[0].match.methods[0]"), "{fields:?}");
}
