//! Clusters, through the real binary: round robin with failover, consistent hashing; an
//! endpoint that resets, answers garbage or hangs costs no idempotent request, a request that is
//! not idempotent is never sent twice, a stale pooled connection is retried on its endpoint, one
//! that fails mid-body is ejected (a slow client's body is not its fault); HTTP and TCP health
//! checks take an endpoint out and bring it back, and a trickling one does not freeze them; an
//! upstream dying mid-body is logged as an upstream error. Real sockets, loopback only; every
//! wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn round_robin_and_failover_within_a_cluster() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let dead = free_port();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{dead}").parse().unwrap();
    let template = Config::new()
        .threads(None)
        .cluster_with(
            "pool",
            &[a.addr, dead, b.addr],
            "    connect_timeout: 200ms",
        )
        .route(route("default", "pool"))
        .template();
    let h = Hydrus::start(&template);
    for _ in 0..60 {
        let (status, _) = get(&h.url("/x")).unwrap();
        assert_eq!(status, 200);
    }
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 60);
    assert!(na >= 20 && nb >= 20, "spread {na}/{nb}");
    assert!(h.metric("hydrus_upstream_errors_total{cluster=\"pool\",kind=\"connect\"}") >= 1.0);
}

/// How a broken endpoint misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Broken {
    /// Accepts, then closes with the request unread (the kernel answers with a reset).
    Reset,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Reads the request and never answers.
    Hang,
}

/// An endpoint that accepts connections and misbehaves on every one.
struct BrokenUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokenUpstream {
    fn start(mode: Broken) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                match mode {
                    Broken::Reset => {
                        // Wait for the request to arrive, leave it unread, close: a reset.
                        let mut b = [0u8; 1];
                        let _ = s.peek(&mut b);
                        drop(s);
                    }
                    Broken::Garbage => {
                        let mut b = [0u8; 4096];
                        let _ = s.read(&mut b);
                        let _ = s.write_all(b"\x00\x01garbage not http\r\n\r\n\xff\xfe");
                    }
                    Broken::Hang => {
                        let mut b = [0u8; 4096];
                        let _ = s.read(&mut b);
                        held.push(s);
                    }
                }
            }
        });
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BrokenUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_broken_endpoint_costs_no_idempotent_request() {
    for mode in [Broken::Reset, Broken::Garbage, Broken::Hang] {
        let good = Upstream::start("good");
        let bad = BrokenUpstream::start(mode);
        let h = Hydrus::start(&pool_template(
            &[good.addr, bad.addr],
            "    read_timeout: 2s",
            "",
        ));
        let sent = requests(&h.url("/rank"), 400, 4, |i| {
            vec![("x-user-id", format!("u{i}"))]
        });
        let failed: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
        assert_eq!(sent.len(), 400, "{mode:?}");
        assert!(
            failed.is_empty(),
            "{mode:?}: {} of 400 failed, e.g. {:?}\n{}",
            failed.len(),
            failed.first(),
            h.log()
        );
        assert_eq!(
            good.count(),
            400,
            "{mode:?}: the good endpoint served them all"
        );
        let bad_addr = bad.addr.to_string();
        let ejected = metric_of(
            &h,
            "hydrus_outlier_ejections_total",
            &[("cluster", "pool"), ("endpoint", &bad_addr)],
        );
        let retried = metric_of(
            &h,
            "hydrus_upstream_retries_total",
            &[("cluster", "pool"), ("result", "sent")],
        );
        let attempts = bad.accepted.load(Ordering::SeqCst);
        eprintln!("{mode:?}: {attempts} attempts on the broken endpoint, {retried} retries, ejected {ejected}x");
        assert!(retried >= 1.0, "{mode:?}: failed attempts were retried");
        if mode == Broken::Hang {
            // Its attempts time out after 2 s; from 1 s without an answer it gets no new ones.
            assert!(
                attempts <= 12,
                "{mode:?}: {attempts} attempts on a hung endpoint"
            );
        } else {
            // Five failures in a row eject it for 30 s: few attempts, whatever the load.
            assert!(ejected >= 1.0, "{mode:?}: ejected");
            assert!(
                attempts <= 16,
                "{mode:?}: {attempts} attempts on a broken endpoint"
            );
        }
        assert!(!h.log().contains("panicked"));
    }
}

#[test]
fn a_request_that_is_not_idempotent_is_never_sent_twice() {
    let good = Upstream::start("good");
    let bad = BrokenUpstream::start(Broken::Garbage);
    // Ejection off, so that POSTs keep meeting the broken endpoint.
    let h = Hydrus::start(&pool_template(
        &[bad.addr, good.addr],
        "    outlier: { consecutive_failures: 0, stall_after: 0s }",
        "",
    ));
    let mut ok = 0;
    let mut bad_gateway = 0;
    for i in 0..20 {
        let body = format!("order {i}");
        let req = format!(
            "POST /order HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_request(h.port, req.as_bytes());
        if answer.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else if answer.starts_with("HTTP/1.1 502") {
            bad_gateway += 1;
        } else {
            panic!("unexpected answer: {answer}");
        }
    }
    assert!(bad_gateway > 0, "some POSTs met the broken endpoint");
    assert_eq!(ok + bad_gateway, 20);
    assert_eq!(
        good.count(),
        ok,
        "no POST reached the good endpoint twice or after a failure"
    );
    assert!(good.seen().iter().all(|s| s.method == "POST"));
}

#[test]
fn consistent_hashing_keeps_each_user_on_one_endpoint() {
    let ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("e{i}"))).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let h = Hydrus::start(&pool_template(&addrs, "    lb: consistent_hash", ""));
    // (The ring places endpoints by their addresses, here random ports: enough users that
    // each endpoint gets a share whatever the ports.)
    for round in 0..3 {
        for u in 0..100 {
            let (status, body) =
                get_with(&h.url("/rank"), &[("x-user-id", &format!("user-{u}"))]).unwrap();
            assert_eq!(status, 200, "round {round}: {body}");
        }
    }
    let mut home = std::collections::BTreeMap::new();
    for up in &ups {
        for s in up.seen() {
            let user = s.header("x-user-id").unwrap().to_string();
            let prev = home.insert(user.clone(), up.name.clone());
            assert!(
                prev.is_none() || prev.as_deref() == Some(up.name.as_str()),
                "{user} went to {prev:?} and {}",
                up.name
            );
        }
    }
    assert_eq!(home.len(), 100);
    for up in &ups {
        let users = home.values().filter(|n| **n == up.name).count();
        assert!(
            users >= 10 && up.count() == 3 * users,
            "{} served {} requests of {users} users",
            up.name,
            up.count()
        );
    }
}

#[test]
fn active_health_checks_take_an_endpoint_out_and_bring_it_back() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let h = Hydrus::start(&pool_template(
        &[a.addr, b.addr],
        "    health_check: { path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }",
        "",
    ));
    let healthy = |u: &Upstream| {
        metric_of(
            &h,
            "hydrus_endpoint_healthy",
            &[("cluster", "pool"), ("endpoint", &u.addr.to_string())],
        )
    };
    assert!(eventually(Duration::from_secs(5), || healthy(&b) == 1.0));
    b.health_status.store(503, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || healthy(&b) == 0.0),
        "a failing check marks it unhealthy"
    );
    let before = b.count();
    for _ in 0..20 {
        assert_eq!(get(&h.url("/x")).unwrap().0, 200);
    }
    assert_eq!(b.count(), before, "an unhealthy endpoint gets no requests");
    b.health_status.store(200, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || healthy(&b) == 1.0));
    for _ in 0..20 {
        assert_eq!(get(&h.url("/x")).unwrap().0, 200);
    }
    assert!(b.count() >= before + 5, "back in rotation");
}

#[test]
fn a_tcp_health_check_takes_a_closed_endpoint_out_and_brings_it_back() {
    // Without a `path`, a TCP connect is the check.
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let addr = b.addr.to_string();
    let h = Hydrus::start(&pool_template(
        &[a.addr, b.addr],
        "    health_check: { interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }",
        "",
    ));
    let healthy = || {
        metric_of(
            &h,
            "hydrus_endpoint_healthy",
            &[("cluster", "pool"), ("endpoint", &addr)],
        )
    };
    assert!(eventually(Duration::from_secs(5), || healthy() == 1.0));
    b.stop();
    assert!(
        eventually(Duration::from_secs(5), || healthy() == 0.0),
        "a refused connect marks it unhealthy"
    );
    for _ in 0..20 {
        assert_eq!(get(&h.url("/x")).unwrap().0, 200);
    }
    // Listening again on the same address, it passes and is back in rotation.
    let b = Upstream::start_on("b", &addr);
    assert!(
        eventually(Duration::from_secs(5), || healthy() == 1.0),
        "back once it accepts connections"
    );
    for _ in 0..20 {
        assert_eq!(get(&h.url("/x")).unwrap().0, 200);
    }
    assert!(b.count() >= 5, "back in rotation: {}", b.count());
}

#[test]
fn an_upstream_dying_mid_body_is_logged_as_an_upstream_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut h = Hydrus::start_in(
        dir,
        &pool_filtered(&[addr], "log:\n  file:\n    dir: {dir}/logs"),
    );
    let answer = raw_request(h.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    server.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("0123456789"),
        "the client got what came: {answer}"
    );
    h.terminate();
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].error.as_deref(), Some("upstream_body"));
}

/// An upstream that answers one request per connection with a keep-alive response, then closes
/// the connection a moment later without saying so: every pooled connection goes stale.
fn one_shot_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let (served, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (sv, st) = (served.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            let mut b = [0u8; 4096];
            if s.read(&mut b).unwrap_or(0) > 0 {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                sv.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (addr, served, stop)
}

#[test]
fn a_stale_pooled_connection_is_retried_on_the_same_endpoint() {
    let (addr, served, stop) = one_shot_upstream();
    let h = Hydrus::start(&pool_template(&[addr], "", ""));
    for i in 0..10 {
        let (status, body) = get(&h.url("/x")).unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(served.load(Ordering::SeqCst), 10);
    let ejected = metric_of(
        &h,
        "hydrus_outlier_ejections_total",
        &[("cluster", "pool"), ("endpoint", &addr.to_string())],
    );
    assert_eq!(
        ejected, 0.0,
        "a stale kept-alive connection is not the endpoint's failure"
    );
    stop.store(true, Ordering::SeqCst);
}

/// A keep-alive upstream that answers every request on a connection and records, per
/// connection, how many requests it served and when the proxy closed it.
type Closes = Arc<std::sync::Mutex<Vec<(usize, std::time::Instant)>>>;
fn keep_alive_upstream() -> (SocketAddr, Arc<AtomicUsize>, Closes) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (opened, closes) = (Arc::new(AtomicUsize::new(0)), Closes::default());
    let (op, cl) = (opened.clone(), closes.clone());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            op.fetch_add(1, Ordering::SeqCst);
            let cl = cl.clone();
            std::thread::spawn(move || {
                let (mut served, mut b) = (0, [0u8; 4096]);
                while s.read(&mut b).unwrap_or(0) > 0 {
                    served += 1;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                }
                cl.lock().unwrap().push((served, std::time::Instant::now()));
            });
        }
    });
    (addr, opened, closes)
}

#[test]
fn an_idle_upstream_connection_is_reused_then_closed_after_the_cluster_idle_timeout() {
    let (addr, opened, closes) = keep_alive_upstream();
    let h = Hydrus::start(&pool_template(&[addr], "    idle_timeout: 1s\n", ""));
    // Two requests one after the other: the second reuses the first's upstream connection.
    for _ in 0..2 {
        assert_eq!(get(&h.url("/x")).unwrap(), (200, "ok".to_string()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle_since = std::time::Instant::now();
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the idle connection is reused"
    );
    // Then idle: hydrus closes it once the idle timeout has passed (checked twice a second).
    let deadline = idle_since + Duration::from_secs(10);
    while closes.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed = closes.lock().unwrap().clone();
    assert_eq!(
        closed.len(),
        1,
        "the idle connection was not closed within 10 s"
    );
    let (served, at) = closed[0];
    assert_eq!(served, 2);
    let idle = at.duration_since(idle_since);
    assert!(
        idle >= Duration::from_millis(800),
        "closed after {idle:?} idle, before the 1 s idle timeout"
    );
    // And the next request opens a new one.
    assert_eq!(get(&h.url("/x")).unwrap(), (200, "ok".to_string()));
    assert_eq!(opened.load(Ordering::SeqCst), 2);
}

/// An upstream that starts a response and resets the connection mid-body.
fn mid_body_reset_upstream() -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc");
        }
    });
    (addr, stop)
}

#[test]
fn an_endpoint_failing_mid_body_is_ejected_and_a_slow_client_body_is_not_its_fault() {
    let good = Upstream::start("good");
    let (bad, stop) = mid_body_reset_upstream();
    let h = Hydrus::start(&pool_template(
        &[good.addr, bad],
        "    read_timeout: 500ms\n",
        "limits:\n  body_timeout: 1s\n",
    ));
    for _ in 0..30 {
        let _ = raw_request(
            h.port,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
    }
    let ejected = |a: &SocketAddr| {
        metric_of(
            &h,
            "hydrus_outlier_ejections_total",
            &[("cluster", "pool"), ("endpoint", &a.to_string())],
        )
    };
    assert!(
        ejected(&bad) >= 1.0,
        "responses cut short count against the endpoint"
    );
    stop.store(true, Ordering::SeqCst);
    // Clients that send half a body and stall: the upstream times out waiting for the rest,
    // which is not the upstream's failure; the body deadline closes such connections.
    let before = good.count();
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
        s.write_all(b"POST /order HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc")
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).is_some(),
            "closed by a deadline"
        );
    }
    assert_eq!(ejected(&good.addr), 0.0, "{}", h.log());
    assert!(good.count() >= before, "the good endpoint still serves");
    assert_eq!(get(&h.url("/")).unwrap().0, 200);
}

/// An endpoint whose health check answer trickles in forever.
fn trickling_health_endpoint() -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = Vec::new();
        while !st.load(Ordering::SeqCst) {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n");
                conns.push(s);
            }
            conns.retain_mut(|s| s.write_all(b"x").is_ok());
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (addr, stop)
}

#[test]
fn a_trickling_health_endpoint_does_not_freeze_the_checks() {
    let a = Upstream::start("a");
    let (slow, stop) = trickling_health_endpoint();
    let h = Hydrus::start(&pool_template(
        &[a.addr, slow],
        "    health_check: { path: /healthz, interval: 100ms, timeout: 300ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n",
        "",
    ));
    let healthy = |addr: &SocketAddr| {
        metric_of(
            &h,
            "hydrus_endpoint_healthy",
            &[("cluster", "pool"), ("endpoint", &addr.to_string())],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || healthy(&slow) == 0.0),
        "a check that does not finish within its timeout fails"
    );
    a.health_status.store(503, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || healthy(&a.addr) == 0.0),
        "later passes still run"
    );
    stop.store(true, Ordering::SeqCst);
}
