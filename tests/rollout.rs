//! The rollout through the real binary: a ramp on a schedule that every proxy agrees on, the
//! outcomes counted per group, and the guard that rolls a bad ramp back by itself: a large
//! cluster failing 5% of its requests trips it at the 5% step, control sees no error, every user
//! is back on the default strategy at once, and only a new reset token clears the trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback upstream that fails every `fail_every`-th request (0: none) with a 503 and
/// remembers the `x-hydrus-group` of every request it saw.
struct Flaky {
    addr: std::net::SocketAddr,
    groups: Arc<Mutex<Vec<String>>>,
    failed: Arc<AtomicU64>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flaky {
    fn start(fail_every: u64) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let groups = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, g, f) = (server.clone(), groups.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            for req in s.incoming_requests() {
                n += 1;
                let group = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("x-hydrus-group"))
                    .map(|h| h.value.as_str().to_string())
                    .unwrap_or_default();
                g.lock().unwrap().push(group);
                let status = if fail_every > 0 && n % fail_every == 0 {
                    f.fetch_add(1, Ordering::SeqCst);
                    503
                } else {
                    200
                };
                let _ =
                    req.respond(tiny_http::Response::from_string("{}").with_status_code(status));
            }
        });
        Self {
            addr,
            groups,
            failed,
            server,
            thread: Some(thread),
        }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RFC 3339 UTC of `secs` from now.
fn at(secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs((-secs) as u64)
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

/// s20 (the default) on `small`, s40 on `large`; at k = 0.004 a QoE of 0.6 gets s40, so
/// treatment goes to `large` and control to `small`.
fn config(small: &std::net::SocketAddr, large: &std::net::SocketAddr, rollout: &str) -> String {
    Config::new()
        .cluster("small", &[*small])
        .cluster_with(
            "large",
            &[*large],
            "    outlier: { consecutive_failures: 0 }",
        )
        .route(route("rank", "small").filter(rollout).filter(
            "hydrus:
  default_strategy: s20
  ktable:
    path: {dir}/ktable.yaml
  strategies:
    - { name: s20, cost: 10 }
    - { name: s40, cost: 18, qoe_scale: 1.08, cluster: large }",
        ))
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

fn rollout_json(h: &Hydrus) -> serde_json::Value {
    let (status, body) = get(&format!("{}/rollout", h.admin())).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Send requests from distinct users on `threads` threads until `stop` says so (or `limit`
/// requests or 60 s): how many were sent.
fn load(h: &Hydrus, threads: usize, limit: usize, stop: impl Fn() -> bool + Sync) -> usize {
    let next = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = h.url("/rank");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline && !stop() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= limit {
                        return;
                    }
                    let user = format!("user-{i}");
                    let _ = get_with(&url, &[("x-user-id", &user), ("x-qoe-score", "0.6")]);
                }
            });
        }
    });
    next.load(Ordering::SeqCst).min(limit)
}

#[test]
fn a_failing_cluster_trips_the_guard_at_the_5_percent_step_and_only_a_reset_clears_it() {
    let small = Flaky::start(0);
    let large = Flaky::start(20); // 5% of treatment's requests fail
    let rollout = |reset: &str| {
        format!(
            "rollout:
  ramp:
    start: {}
    steps:
      - {{ percent: 5, hold: 1h }}
      - {{ percent: 100 }}
  guard: {{ window: 30s, min_requests: 100{reset} }}",
            at(-5)
        )
    };
    let template = config(&small.addr, &large.addr, &rollout(""));
    let h = start(&template);
    let before = rollout_json(&h);
    assert_eq!(before[0]["percent"], 5.0, "{before}");
    assert_eq!(before[0]["step"], 0);
    assert_eq!(before[0]["guard"]["state"], "watching");
    let tripped = || h.metric(r#"hydrus_rollout_guard_tripped{reason="errors"}"#) == 1.0;
    let sent = load(&h, 4, 60_000, tripped);
    assert!(
        eventually(Duration::from_secs(5), tripped),
        "no trip after {sent} requests: {}",
        rollout_json(&h)
    );
    let treatment = large.groups.lock().unwrap().len();
    eprintln!("tripped after {sent} requests, {treatment} of them in treatment");
    assert!(
        treatment <= 2000,
        "{treatment} treatment requests before the trip"
    );
    // Control never saw an error: its cluster never failed, and hydrus made none up.
    assert!(small.groups.lock().unwrap().iter().all(|g| g == "control"));
    let m = h.metrics();
    assert_eq!(
        metric_value(&m, r#"hydrus_responses_total{group="control",class="5xx"}"#),
        None,
        "{m}"
    );
    assert!(
        metric_value(&m, r#"hydrus_responses_total{group="hydrus",class="5xx"}"#).unwrap() >= 1.0
    );
    assert_eq!(
        metric_value(&m, r#"hydrus_rollout_percent{route="rank"}"#),
        Some(0.0)
    );
    let after = rollout_json(&h);
    assert_eq!(after[0]["guard"]["state"], "tripped", "{after}");
    assert_eq!(after[0]["guard"]["reason"], "errors");
    assert_eq!(after[0]["percent"], 0.0);
    assert!(
        h.log().contains("rollout guard tripped (errors)"),
        "{}",
        h.log()
    );
    // Every user is on the default strategy from the next request on.
    let treated_before = large.groups.lock().unwrap().len();
    load(&h, 2, 200, || false);
    assert_eq!(large.groups.lock().unwrap().len(), treated_before);
    // A reload that changes nothing else keeps the trip...
    h.rewrite_config(&template.replace(
        "consecutive_failures: 0",
        "consecutive_failures: 0, max_ejection_percent: 40",
    ));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="ok"}"#) >= 1.0
    }));
    assert_eq!(rollout_json(&h)[0]["guard"]["state"], "tripped");
    load(&h, 2, 100, || false);
    assert_eq!(large.groups.lock().unwrap().len(), treated_before);
    // ...and a new reset token clears it.
    h.rewrite_config(&config(&small.addr, &large.addr, &rollout(", reset: two")));
    assert!(eventually(Duration::from_secs(5), || {
        rollout_json(&h)[0]["guard"]["state"] == "watching"
    }));
    assert_eq!(rollout_json(&h)[0]["percent"], 5.0);
    assert!(large.failed.load(Ordering::SeqCst) >= 1);
}

#[test]
fn two_proxies_with_the_same_config_are_on_the_same_step_at_the_same_instants() {
    let small = Flaky::start(0);
    let large = Flaky::start(0);
    // 0% until 2 s from now, then 1% for 2 s, 5% for 2 s, then 25%.
    let rollout = format!(
        "rollout:
  ramp:
    start: {}
    steps:
      - {{ percent: 1, hold: 2s }}
      - {{ percent: 5, hold: 2s }}
      - {{ percent: 25 }}",
        at(2)
    );
    let template = config(&small.addr, &large.addr, &rollout);
    let (a, b) = (start(&template), start(&template));
    let mut steps_seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // A, B, A: when A's two answers agree, no step changed in between, and B's is the same.
        let (a1, b1, a2) = (rollout_json(&a), rollout_json(&b), rollout_json(&a));
        if a1 == a2 {
            for k in ["percent", "step", "next_step_at"] {
                assert_eq!(a1[0][k], b1[0][k], "{k}: {a1} / {b1}");
            }
            steps_seen.insert(a1[0]["step"].to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Before the start, and on each step.
    assert_eq!(steps_seen.len(), 4, "{steps_seen:?}");
    assert_eq!(rollout_json(&a)[0]["percent"], 25.0);
    assert_eq!(a.metric(r#"hydrus_rollout_percent{route="rank"}"#), 25.0);
    // `hydrus check` prints the timetable.
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&a.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("route rank: ramp: 0% before ") && said.contains("; 25% from "),
        "{said}"
    );
}
