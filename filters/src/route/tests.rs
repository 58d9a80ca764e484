use super::*;

fn matcher(yaml: &str) -> Matcher {
    let m: MatchConfig = serde_yaml::from_str(yaml).expect("yaml");
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
        ("/a%2fb", "/a%2Fb"),
        ("/a%zz", "/a%25zz"),
        ("/%", "/%25"),
        ("/%%30a", "/%250a"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("*", "*"),
    ] {
        assert_eq!(normalize_path(raw), normal, "{raw}");
    }
    assert!(matches!(
        normalize_path("/rank/a"),
        std::borrow::Cow::Borrowed(_)
    ));
}

proptest::proptest! {
    /// Normalizing twice changes nothing, and a normal path has no empty, `.` or `..`
    /// segment inside.
    #[test]
    fn normalizing_is_idempotent(p in "/[a-z./%0-9A-F]{0,24}") {
        let once = normalize_path(&p).into_owned();
        let twice = normalize_path(&once).into_owned();
        proptest::prop_assert_eq!(twice, once.clone());
        proptest::prop_assert!(!once.contains("//") && once.starts_with('/'));
        let inner: Vec<&str> = once.split('/').collect();
        let last = inner.len().saturating_sub(1);
        for (i, seg) in inner.iter().enumerate() {
            proptest::prop_assert!(*seg != "." && *seg != "..");
            proptest::prop_assert!(!seg.is_empty() || i == 0 || i == last);
        }
    }
}

#[test]
fn bad_matches_are_named() {
    let m: MatchConfig =
        serde_yaml::from_str("{path: rank, path_prefix: /x, methods: [get]}").expect("yaml");
    let mut p = Problems::default();
    assert!(Matcher::compile(&m, "routes[0].match", &mut p).is_none());
    let fields: Vec<&str> = p.errors.iter().map(|e| e.0.as_str()).collect();
    assert!(fields.contains(&"routes[0].match"), "{fields:?}");
    assert!(fields.contains(&"routes[0].match.methods[0]"), "{fields:?}");
}
