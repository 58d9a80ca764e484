//! E2E end to end: two loopback replica groups of different speed; the proxy logs load-balanced
//! traffic, the controller solves a table from those logs, the proxy routes by it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// QoE of a total delay, as in the config below.
fn qoe(total_ms: f64) -> f64 {
    1.0 / (1.0 + ((total_ms - 400.0) / 20.0).exp())
}

/// External delays of three kinds: fast pages (insensitive), pages near the steep part of the
/// QoE curve (sensitive), and pages already too slow (insensitive).
fn external(i: usize) -> f64 {
    match i % 10 {
        0..=2 => 100.0 + (i % 7) as f64,
        3..=6 => 330.0 + (i % 5) as f64,
        _ => 1500.0 + (i % 11) as f64,
    }
}

/// `n` requests from 6 threads; returns (external delay, client-measured ms, status).
fn load(h: &Hydrus, n: usize) -> Vec<(f64, f64, u16)> {
    requests(&h.url("/page"), n, 6, |i| {
        vec![
            ("x-user-id", format!("u{i}")),
            ("x-external-delay-ms", format!("{}", external(i))),
        ]
    })
    .into_iter()
    .map(|s| (external(s.i), s.ms(), s.status))
    .collect()
}

fn mean_qoe(r: &[(f64, f64, u16)]) -> f64 {
    r.iter().map(|(e, ms, _)| qoe(e + ms)).sum::<f64>() / r.len() as f64
}

/// Share of a kind of request (by external delay) that the fast group received.
fn fast_share(fast: &Upstream, slow: &Upstream, kind: impl Fn(f64) -> bool) -> f64 {
    let count = |u: &Upstream| {
        u.take()
            .iter()
            .filter(|s| {
                s.header("x-external-delay-ms")
                    .and_then(|v| v.parse().ok())
                    .is_some_and(&kind)
            })
            .count()
    };
    let (f, s) = (count(fast), count(slow));
    f as f64 / (f + s).max(1) as f64
}

#[test]
fn qoe_sensitive_requests_go_to_the_faster_replica_group() {
    let fast = Upstream::start("fast");
    fast.delay_ms.store(2, Ordering::SeqCst);
    fast.per_inflight_ms.store(8, Ordering::SeqCst);
    let slow = Upstream::start("slow");
    slow.delay_ms.store(60, Ordering::SeqCst);
    let template = Config::new()
        .threads(None)
        .cluster("fast", &[fast.addr])
        .cluster("slow", &[slow.addr])
        .route(
            route("default", "fast")
                .filter(
                    "e2e:
  groups: [fast, slow]
  priority_header: x-priority
  table:
    path: {dir}/e2e.yaml
  qoe_model: { d50_ms: 400, width_ms: 20 }",
                )
                .filter(&file_log()),
        )
        .template();
    let h = Hydrus::start(&template);

    // 1. No table yet: the default policy, load balancing, counted.
    let before = load(&h, 1200);
    assert!(
        before.iter().all(|r| r.2 == 200),
        "{:?}\n{}",
        before
            .iter()
            .filter(|r| r.2 != 200)
            .take(3)
            .collect::<Vec<_>>(),
        h.log()
    );
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="no_e2e_table"}"#),
        1200.0
    );
    let balanced = fast_share(&fast, &slow, |e| e > 300.0 && e < 400.0);
    assert!((0.4..=0.6).contains(&balanced), "load balanced: {balanced}");
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 1200.0
    }));

    // A copy of these logs, for checking later that unchanged inputs keep the table.
    std::fs::create_dir(h.path("logs1")).unwrap();
    for f in std::fs::read_dir(h.path("logs")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, h.path("logs1").join(f.file_name().unwrap())).unwrap();
    }

    // 2. The controller solves the table from the logs.
    let solve_from = |logs: &str, out: &str, extra: &[&str]| {
        std::process::Command::new(bin())
            .args(["solve", "--policy", "e2e", "--format", "json", "--config"])
            .arg(&h.config_path)
            .arg("--logs")
            .arg(h.path(logs))
            .arg("--out")
            .arg(h.path(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = solve_from("logs", "e2e.yaml", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let report = &v["report"];
    let gain = report["gain"].as_f64().unwrap();
    eprintln!(
        "e2e controller: simulated QoE gain over load balancing {:+.1}% (E2E reports 12.6-15.4%)",
        gain * 100.0
    );
    assert!(gain > 0.0, "{report}");
    let route_of = |ext: f64| -> f64 {
        report["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| {
                b["from_ms"].as_f64().unwrap() <= ext
                    && b["to_ms"].as_f64().is_none_or(|t| ext <= t)
            })
            .map(|b| b["route"][0].as_f64().unwrap())
            .unwrap()
    };
    let sensitive_route = route_of(332.0);
    assert!(
        sensitive_route >= 0.8,
        "sensitive bucket to fast: {sensitive_route}\n{report}"
    );

    // 3. The proxy picks the table up and routes by it.
    assert!(eventually(Duration::from_secs(5), || h
        .metric("hydrus_e2e_table_loaded")
        == 1.0));
    let after = load(&h, 1200);
    assert!(after.iter().all(|r| r.2 == 200));
    let seen_priority = fast
        .seen()
        .iter()
        .chain(slow.seen().iter())
        .filter(|s| {
            s.header("x-external-delay-ms")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|e| e > 300.0 && e < 400.0)
        })
        .all(|s| s.header("x-priority") == Some("high"));
    assert!(seen_priority, "the sensitive bucket's priority header");
    let routed = fast_share(&fast, &slow, |e| e > 300.0 && e < 400.0);
    assert!(
        routed >= sensitive_route - 0.1,
        "sensitive requests to fast: {routed}"
    );
    eprintln!(
        "measured mean QoE: load balanced {:.3}, E2E {:.3} ({:+.1}%)",
        mean_qoe(&before),
        mean_qoe(&after),
        (mean_qoe(&after) / mean_qoe(&before) - 1.0) * 100.0
    );
    assert!(h.metric(r#"hydrus_e2e_decisions_total{bucket="none",group="fast"}"#) > 0.0);

    // 4. The table is rewritten only when its inputs move: the same logs again keep it;
    //    --force rewrites it; the logs of E2E's own routing (server delays moved) rewrite it.
    let written = |o: std::process::Output| -> bool {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["written"].as_bool().unwrap()
    };
    assert!(
        written(solve_from("logs1", "again.yaml", &[])),
        "no table yet: written"
    );
    assert!(
        !written(solve_from("logs1", "again.yaml", &[])),
        "same inputs: kept"
    );
    assert!(written(solve_from("logs1", "again.yaml", &["--force"])));
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 2400.0
    }));
    assert!(
        written(solve_from("logs", "again.yaml", &[])),
        "moved inputs: rewritten"
    );

    // 5. The controller's table disappears: the proxy keeps the last one. A request without
    //    the header gets the default policy, counted.
    std::fs::remove_file(h.path("e2e.yaml")).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_e2e_table_reloads_total{result="error"}"#) >= 1.0
    }));
    assert_eq!(h.metric("hydrus_e2e_table_loaded"), 1.0);
    assert_eq!(
        get_with(&h.url("/page"), &[("x-user-id", "x")]).unwrap().0,
        200
    );
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="missing_external_delay"}"#),
        1.0
    );
}
