//! The listener's connections and limits, through the real binary: idle, silent and slowloris
//! clients are disconnected on time; a flood of idle connections never locks out new clients
//! or the admin listener; the soft open-file limit is raised to the hard one at start; an
//! oversized header is refused, and long identity values are forwarded whole but capped in the
//! log. Real sockets, loopback only; every wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn idle_and_slow_clients_are_disconnected() {
    let up = Upstream::start("a");
    let h = Hydrus::start(&pool_template(
        &[up.addr],
        "",
        "limits:\n  idle_timeout: 1s\n  header_timeout: 1s",
    ));
    // A keep-alive connection: served, then closed after a second without a request.
    let mut ka = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    ka.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = ka.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = closed_within(&mut ka, Duration::from_secs(5)).expect("idle connection closed");
    assert!(idle >= Duration::from_millis(800), "{idle:?}");
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).is_some());
    // Slowloris: a header byte every 100 ms never completes; closed at the header deadline.
    let mut slow = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(5) {
        if slow.write_all(b"x-slow: 1\r\n").is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(100)).is_some() {
            closed = true;
            break;
        }
    }
    assert!(closed, "slowloris connection still open after 5 s");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "idle_timeout")]
        ) >= 1.0
    );
    assert!(
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 2.0
    );
    // Others are served throughout.
    assert_eq!(get(&h.url("/")).unwrap().0, 200);
}

#[test]
fn a_flood_of_idle_connections_never_locks_out_clients_or_admin() {
    let up = Upstream::start("a");
    // 300 open files: the connection cap is (300 - 256) / 2 = 22.
    let dir = tempfile::tempdir().unwrap();
    let h = Hydrus::start_limited(dir, &pool_template(&[up.addr], "", ""), Some(300));
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", h.port)) {
            flood.push(s);
        }
    }
    // Some sent a request and stay open (keep-alive idle); some sent one byte of a header.
    for s in flood.iter_mut().take(10) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }
    for s in flood.iter_mut().skip(380) {
        let _ = s.write_all(b"G");
    }
    // Once hydrus has taken the flood in (closing most of it to stay under the cap)...
    assert!(eventually(Duration::from_secs(10), || {
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "evicted")],
        ) >= 370.0
    }));
    // ...new clients are served, one after the other.
    for i in 0..30 {
        let (status, _) = get_with(&h.url("/rank"), &[("x-user-id", &format!("n{i}"))])
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", h.log()));
        assert_eq!(status, 200);
    }
    assert_eq!(get(&format!("{}/ready", h.admin())).unwrap().0, 200);
    let evicted = metric_of(
        &h,
        "hydrus_downstream_connections_closed_total",
        &[("reason", "evicted")],
    );
    assert!(
        evicted >= 300.0,
        "idle connections were closed to admit new ones: {evicted}"
    );
    assert!(h.metric("hydrus_downstream_connections") <= 30.0);
    assert!(
        h.log().contains("at most 22 client connections"),
        "{}",
        h.log()
    );
    drop(flood);
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_at_start() {
    let up = Upstream::start("a");
    // Soft 64, hard 300: raised to 300, so the cap is (300 - 256) / 2 = 22. Left at 64, it
    // would have been the floor of 16.
    let dir = tempfile::tempdir().unwrap();
    let h = Hydrus::start_under(dir, &pool_template(&[up.addr], "", ""), Some((64, 300)));
    let log = h.log();
    assert!(
        log.contains("at most 22 client connections (open-file limit 300)"),
        "{log}"
    );
    // The kernel's view of the running process agrees.
    assert_eq!(h.metric("process_max_fds"), 300.0);
    assert_eq!(get(&h.url("/")).unwrap().0, 200);
}

#[test]
fn oversized_headers_are_refused_and_long_values_capped_in_the_log() {
    let up = Upstream::start("a");
    let mut h = start_strategies(&up, "100", "", &[("default", 0.004)]);
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 << 10));
    big.extend(b"\r\n\r\n");
    let answer = raw_request(h.port, &big);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric_of(
            &h,
            "hydrus_requests_rejected_total",
            &[("reason", "header_too_large")]
        ),
        1.0
    );
    let long_user = "x".repeat(1000);
    let (status, _) = get_with(
        &h.url("/"),
        &[("x-user-id", &long_user), ("x-qoe-score", "0.5")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        up.seen()[0].header("x-user-id").map(str::len),
        Some(1000),
        "forwarded whole"
    );
    // Counted when the sink thread writes the record.
    assert!(eventually(Duration::from_secs(5), || metric_of(
        &h,
        "hydrus_log_fields_truncated_total",
        &[("field", "user_id")]
    ) == 1.0));
    h.terminate();
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 1, "no record of the refused request");
    assert_eq!(
        records[0].user_id.len(),
        hydrus_filters::log::MAX_FIELD_BYTES
    );
}
