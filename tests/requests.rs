//! Request validation and forwarding, through the real binary: a path with an encoded slash or
//! backslash is refused (or, with `limits.escaped_slashes: unescape`, routed and forwarded as
//! the path it spells), a request without a good `Host` is refused (HTTP/1.0 may omit it: the
//! endpoint's is sent), HTTP/2's `cookie` fields reach an HTTP/1.1 upstream as one,
//! `Content-Length` reaches it as one value, and identity headers that are not UTF-8 are
//! logged apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw::H2Upstream;
use common::*;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The ranking service's `/rank` is decided (s40 asks for 40 candidates and the large model),
/// its other paths pass through to the same service.
const HYDRUS: &str = "hydrus:
  default_strategy: s20
  ktable:
    path: {dir}/ktable.yaml
  strategies:
    - { name: s10, cost: 6, qoe_scale: 0.9, set_query: { candidates: \"10\" } }
    - { name: s20, cost: 10, set_query: { candidates: \"20\" } }
    - { name: s40, cost: 18, qoe_scale: 1.08, set_query: { candidates: \"40\" }, set_headers: { x-model: large } }";

fn rank_and_rest(up: &std::net::SocketAddr, top: &str) -> String {
    let mut c = Config::new();
    if !top.is_empty() {
        c = c.top(top);
    }
    c.cluster("ranking", &[*up])
        .route(
            route("rank", "ranking")
                .matching("{ path_prefix: /rank }")
                .filter(&rollout("100"))
                .filter(HYDRUS)
                .filter(&file_log()),
        )
        .route(route("rest", "ranking"))
        .template()
}

fn start(template: &str) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ktable.yaml"),
        ktable(&[("default", 0.004)], None),
    )
    .unwrap();
    Hydrus::start_in(dir, template)
}

/// A ranking request as a client that forges what hydrus owns sends it.
fn forged(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nx-qoe-score: 0.6\r\nx-model: forged\r\nconnection: close\r\n\r\n"
    )
}

/// The targets that spell `/rank?candidates=999` with an encoded slash or a backslash.
const SLASHED: [&str; 6] = [
    "/%2Frank?candidates=999",
    "/%2frank?candidates=999",
    "/other/..%2Frank?candidates=999",
    "/other/..%2frank?candidates=999",
    "/%5Crank?candidates=999",
    "/\\rank?candidates=999",
];

/// One request on a new HTTP/2 connection (prior knowledge) to hydrus: its response header.
fn h2_request(rt: &Runtime, port: u16, req: http::Request<()>) -> http::response::Parts {
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer within 5 s")
            .expect("a response, not a reset");
        response.into_parts().0
    })
}

#[test]
fn encoded_slashes_and_backslashes_in_the_path_are_refused_by_default() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    for target in SLASHED {
        let answer = raw_request(h.port, forged(target).as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    // A gRPC call gets a gRPC status (INTERNAL, as gRPC maps a 400), not an HTTP error.
    let rt = Runtime::new().unwrap();
    let call = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/%2Frank", h.port))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let answer = h2_request(&rt, h.port, call);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["grpc-status"], "13");
    assert_eq!(up.count(), 0, "nothing reached the ranking service");
    assert_eq!(
        h.metric("hydrus_requests_rejected_total{reason=\"escaped_slash\"}"),
        SLASHED.len() as f64 + 1.0
    );
    // An encoded slash in the query is the query's business: passed through as sent.
    let answer = raw_request(h.port, forged("/rank?next=%2Fhome").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.take().pop().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.query_one("next")),
        ("/rank", Some("%2Fhome"))
    );
}

/// RFC 9112 3.2.2: a server must accept a target in absolute form. It is routed and decided
/// on as its path, and reaches the upstream in origin form with hydrus's query.
#[test]
fn an_absolute_form_target_is_routed_and_forwarded_in_origin_form() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    for target in [
        "http://x/rank?candidates=999",
        "HTTP://x/rank?candidates=999",
    ] {
        let answer = raw_request(h.port, forged(target).as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        let seen = up.take().pop().unwrap();
        assert_eq!(seen.path, "/rank", "{target}");
        assert_eq!(seen.header("x-hydrus-strategy"), Some("s40"), "{target}");
        assert_eq!(seen.query.get("candidates"), Some(&vec!["40".to_string()]));
    }
    // Its authority must be the Host (pingora answers 400 otherwise).
    let answer = raw_request(h.port, forged("http://y/rank").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[test]
fn with_unescape_an_encoded_slash_takes_the_route_it_spells() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(
        &up.addr,
        "limits:\n  escaped_slashes: unescape",
    ));
    for target in SLASHED {
        let answer = raw_request(h.port, forged(target).as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        let seen = up.take().pop().unwrap();
        // Decided as `/rank` and forwarded as it: what the client sent of hydrus's is gone.
        assert_eq!(seen.path, "/rank", "{target}");
        assert_eq!(seen.header("x-hydrus-group"), Some("hydrus"), "{target}");
        assert_eq!(seen.header("x-hydrus-strategy"), Some("s40"), "{target}");
        assert_eq!(seen.query.get("candidates"), Some(&vec!["40".to_string()]));
        assert_eq!(seen.header("x-model"), Some("large"), "{target}");
        assert_eq!(seen.header_count("x-model"), 1, "{target}");
    }
    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() >= SLASHED.len()
    }));
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), SLASHED.len());
    assert!(records.iter().all(|r| r.route.as_deref() == Some("rank")));
    assert_eq!(
        h.metric("hydrus_requests_rejected_total{reason=\"escaped_slash\"}"),
        0.0
    );
    // The setting is shown as running.
    let (_, config) = get(&format!("{}/config", h.admin())).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["config"]["limits"]["escaped_slashes"], "unescape",
        "{config}"
    );
    // Any other value is a config error naming the field.
    let bad = h.path("bad.yaml");
    std::fs::write(
        &bad,
        render(
            &rank_and_rest(&up.addr, "limits:\n  escaped_slashes: decode"),
            1,
            2,
            h.dir.path(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("escaped_slashes") && stderr.contains("unescape"),
        "{stderr}"
    );
}

#[test]
fn http11_without_one_good_host_is_refused() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    let counted = [
        "GET /rank HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /rank HTTP/1.1\r\nhost: \r\nconnection: close\r\n\r\n",
        "GET /rank HTTP/1.1\r\nhost: a/b\r\nconnection: close\r\n\r\n",
        "GET /rank HTTP/1.1\r\nhost: a:b\r\nconnection: close\r\n\r\n",
        "GET /rank HTTP/1.1\r\nhost: a\\b\r\nconnection: close\r\n\r\n",
        "GET /rank HTTP/1.0\r\nhost: \r\n\r\n",
    ];
    for request in counted {
        let answer = raw_request(h.port, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    // Two `Host` fields: pingora's parser refuses them before hydrus sees the request.
    let two = "GET /rank HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n";
    let answer = raw_request(h.port, two.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 0, "nothing reached the ranking service");
    assert_eq!(
        h.metric("hydrus_requests_rejected_total{reason=\"bad_host\"}"),
        counted.len() as f64
    );
    // A good one is forwarded as sent.
    let ok = "GET /rank HTTP/1.1\r\nhost: ranker.svc:8080\r\nconnection: close\r\n\r\n";
    let answer = raw_request(h.port, ok.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.take().pop().unwrap();
    assert_eq!(seen.header("host"), Some("ranker.svc:8080"));
}

#[test]
fn http10_without_host_reaches_the_upstream_with_the_endpoints_host() {
    let up = Upstream::start("ranking");
    let rt = Runtime::new().unwrap();
    let h2 = H2Upstream::start(&rt);
    let template = Config::new()
        .cluster("ranking", &[up.addr])
        .cluster_with("grpc", &[h2.addr], "    protocol: h2c")
        .route(route("h2", "grpc").matching("{ path_prefix: /text }"))
        .route(
            route("rank", "ranking")
                .matching("{ path_prefix: /rank }")
                .filter(&rollout("100"))
                .filter(HYDRUS),
        )
        .route(route("rest", "ranking"))
        .template();
    let h = start(&template);
    for target in ["/rank", "/other"] {
        let request = format!("GET {target} HTTP/1.0\r\n\r\n");
        let answer = raw_request(h.port, request.as_bytes());
        assert!(answer.contains(" 200 "), "{target}: {answer}");
        let seen = up.take().pop().unwrap();
        // As nginx sends its `$proxy_host`: the endpoint as the cluster lists it.
        assert_eq!(seen.header_count("host"), 1, "{target}: {seen:?}");
        assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    }
    // One that names its host keeps it.
    let answer = raw_request(h.port, b"GET /rank HTTP/1.0\r\nhost: front\r\n\r\n");
    assert!(answer.contains(" 200 "), "{answer}");
    assert_eq!(up.take().pop().unwrap().header("host"), Some("front"));
    // To an HTTP/2 endpoint it is the `:authority`.
    let answer = raw_request(h.port, b"GET /text HTTP/1.0\r\n\r\n");
    assert!(answer.contains(" 200 "), "{answer}");
    let seen = h2.seen().pop().unwrap();
    assert_eq!(seen.authority, Some(h2.addr.to_string()));
}

#[test]
fn h2_requests_name_their_host_by_authority_or_host_else_are_refused() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    let rt = Runtime::new().unwrap();
    let get = |uri: &str, host: Option<&str>| {
        let mut r = http::Request::builder().uri(uri);
        if let Some(host) = host {
            r = r.header("host", host);
        }
        h2_request(&rt, h.port, r.body(()).unwrap()).status
    };
    // `:authority`: the HTTP/1.1 upstream's `Host`.
    assert_eq!(get("http://front.example/other", None), 200);
    assert_eq!(
        up.take().pop().unwrap().header("host"),
        Some("front.example")
    );
    // No `:authority`, a `Host`: that one.
    assert_eq!(get("/other", Some("front.example")), 200);
    assert_eq!(
        up.take().pop().unwrap().header("host"),
        Some("front.example")
    );
    // An empty `Host` names no host, as in HTTP/1.1. (Neither field: pingora's HTTP/2 server
    // answers 400 itself.)
    assert_eq!(get("/other", Some("")), 400);
    assert_eq!(get("/other", None), 400);
    assert_eq!(up.count(), 0);
    assert_eq!(
        h.metric("hydrus_requests_rejected_total{reason=\"bad_host\"}"),
        1.0
    );
}

#[test]
fn h2_cookies_reach_an_http1_upstream_as_one_field() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    let rt = Runtime::new().unwrap();
    for path in ["/rank", "/other"] {
        let req = http::Request::builder()
            .uri(format!("http://x{path}"))
            .header("x-user-id", "u1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        assert_eq!(h2_request(&rt, h.port, req).status, 200);
        let seen = up.take().pop().unwrap();
        let cookies: Vec<&str> = seen
            .raw_headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1; b=2"], "{path}");
    }
}

#[test]
fn content_length_reaches_the_upstream_as_one_value() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up.addr, ""));
    for (path, lengths) in [
        ("/rank", "content-length: 5, 5\r\n"),
        ("/other", "content-length: 5,5\r\n"),
        ("/rank", "content-length: 5\r\ncontent-length: 5\r\n"),
    ] {
        let request =
            format!("POST {path} HTTP/1.1\r\nhost: x\r\n{lengths}connection: close\r\n\r\nhello");
        let answer = raw_request(h.port, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{lengths:?}: {answer}");
        let seen = up.take().pop().unwrap();
        let sent: Vec<&str> = seen
            .raw_headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(sent, ["5"], "{lengths:?}");
    }
    // Values that differ: the framing is unknowable, nothing is forwarded (pingora's parser
    // answers these).
    for lengths in [
        "content-length: 5, 6\r\n",
        "content-length: 5\r\ncontent-length: 6\r\n",
    ] {
        let request =
            format!("POST /rank HTTP/1.1\r\nhost: x\r\n{lengths}connection: close\r\n\r\nhello!");
        let answer = raw_request(h.port, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{lengths:?}: {answer}");
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn identity_headers_that_are_not_utf8_are_logged_apart() {
    // (An upstream that reads header bytes as they come, UTF-8 or not.)
    let up = common::raw::Canned::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    });
    let h = start(&rank_and_rest(&up.addr, ""));
    let send = |user: &[u8], extra: &[u8]| {
        let mut request =
            b"GET /rank HTTP/1.1\r\nhost: x\r\nx-qoe-score: 0.6\r\nx-user-id: ".to_vec();
        request.extend_from_slice(user);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(extra);
        request.extend_from_slice(b"connection: close\r\n\r\n");
        let answer = raw_request(h.port, &request);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    send(b"u\xff1", b"x-device-id: d0\r\n");
    send(
        b"u\xfe1",
        b"x-device-id: d1\r\nx-request-id: r\xe91\r\nx-scenario: s\xff\r\n",
    );
    send(b"u\\xFF1", b"x-device-id: d2\r\n");
    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() >= 3
    }));
    let mut records = read_records(&h.path("logs"));
    records.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let users: Vec<&str> = records.iter().map(|r| r.user_id.as_str()).collect();
    // Each invalid byte as `\xNN`, a backslash in an escaped value as `\\`; a UTF-8 value as
    // sent, its record marking nothing.
    assert_eq!(users, ["u\\xFF1", "u\\xFE1", "u\\xFF1"]);
    assert_eq!(records[0].escaped, ["user_id"]);
    assert_eq!(
        records[1].escaped,
        ["user_id", "request_id", "scenario_raw"]
    );
    assert_eq!(records[1].request_id, "r\\xE91");
    assert_eq!(
        (
            records[1].scenario.as_str(),
            records[1].scenario_raw.as_deref()
        ),
        ("other", Some("s\\xFF"))
    );
    assert!(records[2].escaped.is_empty());
    assert_eq!(
        h.metric("hydrus_log_fields_escaped_total{field=\"user_id\"}"),
        2.0
    );
    assert_eq!(
        h.metric("hydrus_log_fields_escaped_total{field=\"scenario_raw\"}"),
        1.0
    );
}

#[test]
fn hedged_requests_reach_an_http1_upstream_as_http11_with_a_host_and_one_cookie() {
    // The hedge filter writes its upstream requests itself (not pingora's path).
    let up = common::raw::Canned::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    });
    let template = Config::new()
        .cluster("pool", &[up.addr])
        .route(
            route("hedged", "pool")
                .filter("hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 5"),
        )
        .template();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hedge.yaml"),
        "budget: 1.0\nroutes:\n  pool: { timeout_ms: 5000 }\n",
    )
    .unwrap();
    let h = Hydrus::start_in(dir, &template);
    let rt = Runtime::new().unwrap();
    let req = http::Request::builder()
        .uri("http://front.example/x")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    assert_eq!(h2_request(&rt, h.port, req).status, 200);
    let answer = raw_request(h.port, b"GET /y HTTP/1.0\r\n\r\n");
    assert!(answer.contains(" 200 "), "{answer}");
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let lines = |head: &str| -> Vec<String> { head.lines().map(str::to_string).collect() };
    let h2 = lines(&heads[0]);
    assert_eq!(h2[0], "get /x http/1.1", "{h2:?}");
    assert!(h2.contains(&"host: front.example".to_string()), "{h2:?}");
    let cookies: Vec<&String> = h2.iter().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{h2:?}");
    let h10 = lines(&heads[1]);
    assert_eq!(h10[0], "get /y http/1.1", "{h10:?}");
    let host = format!("host: {}", up.addr);
    assert!(h10.contains(&host), "{h10:?}");
}
