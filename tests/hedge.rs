//! Kwiken hedging end to end: a slow-tailed loopback cluster; the proxy logs unhedged traffic,
//! the solver apportions a reissue budget from those logs, the proxy reissues within it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
