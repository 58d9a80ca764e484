//! Kwiken hedging end to end: a slow-tailed loopback cluster; the proxy logs unhedged traffic,
//! the solver apportions a reissue budget from those logs, the proxy reissues within it. The
//! hedge path forwards as the proxy's does (no hop-by-hop header passed on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw::*;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::runtime::Runtime;

/// `n` requests from 3 threads; client-observed latencies (ms) and statuses.
fn load(h: &Hydrus, n: usize) -> Vec<(f64, u16)> {
    requests(&h.url("/rank"), n, 3, |i| {
        vec![("x-user-id", format!("u{i}"))]
    })
    .into_iter()
    .map(|s| (s.ms(), s.status))
    .collect()
}

fn p99(r: &[(f64, u16)]) -> f64 {
    let mut v: Vec<f64> = r.iter().map(|x| x.0).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99) as usize]
}

#[test]
fn hedging_cuts_the_p99_within_the_reissue_budget() {
    // Two endpoints; one request in 20 on each takes 250 ms longer.
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    for u in [&a, &b] {
        u.delay_ms.store(20, Ordering::SeqCst);
        u.tail_every.store(20, Ordering::SeqCst);
        u.tail_ms.store(250, Ordering::SeqCst);
    }
    let template = Config::new()
        .threads(None)
        .cluster("pool", &[a.addr, b.addr])
        .route(
            route("default", "pool")
                .filter("hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 5")
                .filter(&file_log()),
        )
        .template();
    let h = Hydrus::start(&template);
    let n = 400;

    // 1. No table: no reissue.
    let off = load(&h, n);
    assert!(off.iter().all(|r| r.1 == 200));
    assert_eq!(a.count() + b.count(), n);
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == n as f64
    }));

    // 2. The solver apportions a 10% reissue budget from the logged latencies.
    let o = std::process::Command::new(bin())
        .args([
            "solve",
            "--policy",
            "hedge",
            "--reissue-budget",
            "0.1",
            "--format",
            "json",
            "--logs",
        ])
        .arg(h.path("logs"))
        .arg("--out")
        .arg(h.path("hedge.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let timeout = report["routes"][0]["timeout_ms"].as_f64().unwrap();
    assert!(timeout < 100.0, "a timeout below the tail: {report}");
    assert!(report["extra_load"].as_f64().unwrap() <= 0.1 + 1e-9);
    assert!(eventually(Duration::from_secs(5), || h
        .metric("hydrus_hedge_table_loaded")
        == 1.0));

    // 3. With hedging: the tail is cut, extra requests stay within the budget.
    let before = a.count() + b.count();
    let on = load(&h, n);
    assert!(on.iter().all(|r| r.1 == 200));
    let extra = a.count() + b.count() - before - n;
    let (p_off, p_on) = (p99(&off), p99(&on));
    eprintln!("p99 without hedging {p_off:.1} ms, with {p_on:.1} ms; {extra} reissues for {n} requests (timeout {timeout:.1} ms)");
    assert!(
        p_on < p_off * 0.5,
        "p99 {p_off:.1} -> {p_on:.1} ms; {extra} reissues; {}",
        h.metrics()
    );
    // The budget: 10% of requests, plus the 5 tokens of burst. A reissue cancelled before it
    // reached the upstream (the first attempt answered meanwhile) is sent but not seen there.
    let sent = h.metric(r#"hydrus_hedges_total{result="sent",route="pool"}"#);
    assert!(sent <= 0.1 * n as f64 + 5.0, "{sent} reissues");
    assert!(extra as f64 <= sent, "{extra} seen upstream, {sent} sent");
    assert!(h.metric(r#"hydrus_hedges_total{result="won",route="pool"}"#) > 0.0);
    // The log says which attempt answered.
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 2.0 * n as f64
    }));
    let hedged = read_records(&h.path("logs"))
        .iter()
        .filter(|r| r.hedge.is_some())
        .count();
    assert_eq!(hedged as f64, sent);
}

/// Start hydrus with one route to the cluster `pool` (`extra`: more of the cluster's section),
/// hedged after `timeout_ms` within a budget of every request, `idempotent` or not, logged.
fn hedging(endpoints: &[SocketAddr], extra: &str, idempotent: bool, timeout_ms: u64) -> Hydrus {
    let hedge = "hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 20";
    let mut r = route("default", "pool").filter(hedge).filter(&file_log());
    if idempotent {
        r = r.with("idempotent: true");
    }
    let template = Config::new()
        .cluster_with("pool", endpoints, extra)
        .route(r)
        .template();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hedge.yaml"),
        format!("budget: 1.0\nroutes:\n  pool: {{ timeout_ms: {timeout_ms} }}\n"),
    )
    .unwrap();
    Hydrus::start_in(dir, &template)
}

/// A HealthCheckRequest for service "x" in a gRPC frame: a unary call's whole body.
const ONE_MESSAGE: &[u8] = &[0, 0, 0, 0, 3, 0x0a, 0x01, b'x'];
const GRPC: [(&str, &str); 2] = [("content-type", "application/grpc"), ("te", "trailers")];

/// Each frame's type and whether it ended the stream.
fn ends(frames: Vec<Frame>) -> Vec<(u8, u8)> {
    frames
        .iter()
        .map(|f| (f.kind, f.flags & END_STREAM))
        .collect()
}

const GET_CLOSE: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

#[test]
fn answers_done_at_their_header_end_the_stream_with_it() {
    let rt = Runtime::new().unwrap();
    let up = H2Upstream::start(&rt);
    let h = hedging(&[up.addr], "    protocol: h2c", true, 1000);
    // A trailers-only call answer: HEADERS with END_STREAM, no empty DATA frame after them
    // (grpc-go and grpc-java reject that form).
    let fail = h2_frames(h.port, "POST", "/t.S/Fail", &GRPC, Some(ONE_MESSAGE));
    assert_eq!(ends(fail), [(HEADERS, END_STREAM)]);
    // The same for a 204 and an answer to HEAD.
    assert_eq!(
        ends(h2_frames(h.port, "GET", "/empty", &[], None)),
        [(HEADERS, END_STREAM)]
    );
    assert_eq!(
        ends(h2_frames(h.port, "HEAD", "/text", &[], None)),
        [(HEADERS, END_STREAM)]
    );
    // A body still ends with its last DATA frame.
    let text = ends(h2_frames(h.port, "GET", "/text", &[], None));
    assert_eq!(text.last(), Some(&(DATA, END_STREAM)), "{text:?}");
    // Hedged calls keep `te: trailers` (C-core servers refuse a call without it); a GET
    // reaches the upstream as HEADERS that end its stream.
    assert_eq!(
        ends(h2_frames(
            h.port,
            "POST",
            "/t.S/Unary",
            &GRPC,
            Some(ONE_MESSAGE)
        ))
        .last(),
        Some(&(HEADERS, END_STREAM))
    );
    let seen = up.seen();
    let unary = seen.iter().find(|s| s.path == "/t.S/Unary").unwrap();
    assert_eq!(
        unary.headers.get("te").map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    assert!(
        seen.iter()
            .filter(|s| s.method == "GET")
            .all(|s| s.headers_ended),
        "{seen:?}"
    );
}

#[test]
fn interim_responses_of_an_http1_upstream_are_not_the_answer() {
    let up = Canned::start(|head| {
        let mut r = Vec::new();
        if head.contains("expect: 100-continue") {
            r.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        r.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n");
        r.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        (r, false)
    });
    let h = hedging(&[up.addr], "", true, 1000);
    let r = raw_request(h.port, GET_CLOSE);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok"),
        "{r}"
    );
    // The body is read whole before it is sent: the upstream is not asked to 100 Continue.
    let post = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nhello";
    let r = raw_request(h.port, post);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok"),
        "{r}"
    );
    assert!(
        up.heads().iter().all(|h| !h.contains("expect")),
        "{:?}",
        up.heads()
    );
    assert!(!h.log().contains("panicked"), "{}", h.log());
}

#[test]
fn a_reissue_refused_at_once_does_not_cancel_a_slow_first_attempt() {
    let slow = Upstream::start("slow");
    slow.delay_ms.store(500, Ordering::SeqCst);
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // (No ejection: every request meets the closed port, first or as the reissue.)
    let extra = "    outlier: { consecutive_failures: 0, stall_after: 0s }";
    let h = hedging(&[slow.addr, closed], extra, false, 100);
    for i in 0..6 {
        let (status, body) = get(&h.url("/rank")).unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert!(h.metric(r#"hydrus_hedges_total{result="sent"}"#) >= 1.0);
    assert_eq!(h.metric(r#"hydrus_hedges_total{result="won"}"#), 0.0);
}

#[test]
fn http1_clients_get_http1_answers_from_h2_and_http10_upstreams() {
    let rt = Runtime::new().unwrap();
    let up = H2Upstream::start(&rt);
    let h = hedging(&[up.addr], "    protocol: h2c", false, 1000);
    let r = raw_request(h.port, GET_CLOSE);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nhello"),
        "{r}"
    );
    drop(h);
    // An HTTP/1.0 upstream's body ends when it closes: chunked to an HTTP/1.1 client.
    let old = Canned::start(|_| {
        (
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nhello".to_vec(),
            true,
        )
    });
    let h = hedging(&[old.addr], "", false, 1000);
    let r = raw_request(h.port, GET_CLOSE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{r}");
}

#[test]
fn a_client_that_leaves_mid_stream_frees_the_upstream_at_once() {
    let rt = Runtime::new().unwrap();
    let up = H2Upstream::start(&rt);
    let h = hedging(
        &[up.addr],
        "    protocol: h2c\n    read_timeout: 20s",
        true,
        1000,
    );
    let port = h.port;
    rt.block_on(async move {
        let (response, mut send, client) = open_call(port, "/t.S/Quiet", None).await;
        send.send_data(bytes::Bytes::from_static(ONE_MESSAGE), true)
            .unwrap();
        let wait = Duration::from_secs(5);
        let response = tokio::time::timeout(wait, response).await.unwrap().unwrap();
        let mut body = response.into_body();
        let first = tokio::time::timeout(wait, body.data()).await.unwrap();
        assert_eq!(
            first.unwrap().unwrap().len(),
            7,
            "the stream's first message"
        );
        // The client cancels the call, its connection still open.
        send.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(client);
    });
    let resets = up.resets.lock().unwrap().clone();
    assert_eq!(resets.len(), 1, "the upstream's stream was reset");
    assert!(resets[0] < Duration::from_millis(1500), "{resets:?}");
}

#[test]
fn a_reply_cut_short_is_logged_and_counts_against_its_endpoint() {
    let cut = |_: &str| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc".to_vec(),
            true,
        )
    };
    let (a, b) = (Canned::start(cut), Canned::start(cut));
    // (Two endpoints: passive health never ejects a cluster's last one.)
    let extra = "    outlier: { consecutive_failures: 2 }";
    let h = hedging(&[a.addr, b.addr], extra, false, 1000);
    for _ in 0..4 {
        let r = raw_request(h.port, GET_CLOSE);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() == 4
    }));
    let records = read_records(&h.path("logs"));
    assert!(
        records
            .iter()
            .all(|r| r.error.as_deref() == Some("upstream_body")),
        "{records:?}"
    );
    // Two failures in a row on one endpoint: ejected (the other is then the last one left).
    assert_eq!(h.metric("hydrus_outlier_ejections_total"), 1.0);
}

#[test]
fn a_large_streaming_call_is_sent_once_even_when_it_fails_after_sending() {
    let rt = Runtime::new().unwrap();
    let (a, b) = (H2Upstream::start(&rt), H2Upstream::start(&rt));
    let h = hedging(&[a.addr, b.addr], "    protocol: h2c", true, 100);
    // Two messages, the first of 70000 bytes: past what pingora's path could replay, so the
    // body is read whole and sent once.
    let mut body = vec![0, 0, 0x01, 0x11, 0x70];
    body.resize(5 + 70_000, 7);
    body.extend_from_slice(ONE_MESSAGE);
    let port = h.port;
    rt.block_on(async move {
        let (response, mut send, _client) = open_call(port, "/t.S/Drop", None).await;
        send.send_data(bytes::Bytes::from(body), true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), response).await;
        assert!(
            answer.is_ok(),
            "an answer (a status or a reset) within 10 s"
        );
    });
    let calls = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1, "the call reached an endpoint once");
}

#[test]
fn a_fast_gateway_error_does_not_end_the_race() {
    // `a` answers well in 300 ms; `b` answers 503 at once, its health check too: it gets no
    // first attempts, only the reissues (to the other endpoint, whatever its health).
    let a = Upstream::start("a");
    a.delay_ms.store(300, Ordering::SeqCst);
    let b = Canned::start(|_| {
        let r = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy";
        (r.to_vec(), false)
    });
    let extra = "    health_check: { path: /healthz, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }";
    let h = hedging(&[a.addr, b.addr], extra, false, 50);
    let healthy = |addr: SocketAddr| {
        h.metric(&format!(
            r#"hydrus_endpoint_healthy{{cluster="pool",endpoint="{addr}"}}"#
        ))
    };
    assert!(eventually(Duration::from_secs(5), || healthy(b.addr)
        == 0.0
        && healthy(a.addr) == 1.0));
    for i in 0..5 {
        let (status, body) = get(&h.url("/rank")).unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let sent = h.metric(r#"hydrus_hedges_total{result="sent"}"#);
    assert!(sent >= 5.0, "{}", h.metrics());
    assert!(b.heads().iter().any(|r| r.starts_with("get /rank")));
    assert_eq!(h.metric(r#"hydrus_hedges_total{result="won"}"#), 0.0);
    assert_eq!(h.metric(r#"hydrus_hedges_total{result="lost"}"#), sent);
}

#[test]
fn a_stale_pooled_connection_is_tried_again_and_counts_against_nothing() {
    // Each upstream connection answers one request, then is closed as the next one arrives.
    let ok = |_: &str| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    };
    let (a, b) = (Canned::start_once(ok), Canned::start_once(ok));
    let extra = "    outlier: { consecutive_failures: 1 }";
    let h = hedging(&[a.addr, b.addr], extra, false, 1000);
    for i in 0..8 {
        let (status, body) = get(&h.url("/rank")).unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(h.metric("hydrus_outlier_ejections_total"), 0.0);
    assert_eq!(a.heads().len() + b.heads().len(), 8);
}

#[test]
fn transfer_codings_other_than_chunked_reach_the_client() {
    let chunked = Canned::start(|_| {
        let r =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        (r.to_vec(), false)
    });
    let h = hedging(&[chunked.addr], "", false, 1000);
    let r = raw_request(h.port, GET_CLOSE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("transfer-encoding: gzip, chunked\r\n"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{r}");
    drop(h);
    // A close-delimited body with a coding: chunked after it.
    let closed = Canned::start(|_| {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhello";
        (r.to_vec(), true)
    });
    let h = hedging(&[closed.addr], "", false, 1000);
    let r = raw_request(h.port, GET_CLOSE);
    assert!(
        r.to_ascii_lowercase()
            .contains("transfer-encoding: gzip, chunked\r\n"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{r}");
}

#[test]
fn a_request_an_h2_upstream_cannot_take_is_the_clients_mistake() {
    let rt = Runtime::new().unwrap();
    let (a, b) = (H2Upstream::start(&rt), H2Upstream::start(&rt));
    let extra = "    protocol: h2c\n    outlier: { consecutive_failures: 1 }";
    let h = hedging(&[a.addr, b.addr], extra, false, 1000);
    // A `Host` the HTTP/2 client makes no authority of (a percent-escape: a valid HTTP/1.1
    // host, which the `http` crate refuses in an authority).
    for _ in 0..3 {
        let r = raw_request(h.port, b"GET /text HTTP/1.0\r\nhost: %41x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }
    assert_eq!(h.metric("hydrus_outlier_ejections_total"), 0.0);
    assert_eq!(
        a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst),
        0
    );
    // With a plain Host, the same request is answered; without one (HTTP/1.0), it is sent
    // with the endpoint as its authority.
    let r = raw_request(h.port, b"GET /text HTTP/1.0\r\nhost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
    let r = raw_request(h.port, b"GET /text HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
    let mut authorities: Vec<String> = a
        .seen()
        .into_iter()
        .chain(b.seen())
        .filter_map(|s| s.authority)
        .collect();
    authorities.sort();
    let endpoint = |x: &String| *x == a.addr.to_string() || *x == b.addr.to_string();
    assert_eq!(authorities.len(), 2, "{authorities:?}");
    assert!(
        endpoint(&authorities[0]) && authorities[1] == "x",
        "{authorities:?}"
    );
}

#[test]
fn the_hedge_path_forwards_no_hop_by_hop_header() {
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hedge.yaml"),
        "budget: 0.5\nroutes:\n  pool: { timeout_ms: 1000 }\n",
    )
    .unwrap();
    let h = Hydrus::start_in(
        dir,
        &pool_filtered(
            &[up.addr],
            "hedge:\n  table: { path: \"{dir}/hedge.yaml\" }",
        ),
    );
    assert!(eventually(Duration::from_secs(5), || h
        .metric("hydrus_hedge_table_loaded")
        == 1.0));
    let answer = raw_request(
        h.port,
        // (`te: trailers` alone is passed on, as pingora's path does: gRPC servers require it;
        // see answers_done_at_their_header_end_the_stream_with_it.)
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-user-id: alice\r\nx-extra: 1\r\nkeep-alive: timeout=5\r\nte: gzip\r\nproxy-connection: keep-alive\r\nconnection: x-extra, keep-alive\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.take();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-extra",
    ] {
        assert_eq!(s.header_count(hop), 0, "{hop}: {:?}", s.raw_headers);
    }
    assert_eq!(s.header("x-user-id"), Some("alice"));
}
