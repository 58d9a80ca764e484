//! `hydrus serve` end to end: real binary, real loopback upstreams; each test asserts on what
//! the upstreams received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Two clusters; three strategies; the hydrus filter with a k-table file in the temp dir.
/// Hand values for q (single QoE) at k = 0.004:
///   s10: 0.90q - 0.024   s20: q - 0.040   s40: 1.08q - 0.072
///   s20 beats s10 when q > 0.16; s40 beats s20 when q > 0.4.
fn template(small: &Upstream, big: &Upstream, percent: &str, extra_ktable: &str) -> String {
    template_with(
        small,
        big,
        percent,
        &format!("path: {{dir}}/ktable.yaml\n{}", extra_ktable.trim()),
    )
}

/// The same, with the k-table's source fields as given.
fn template_with(small: &Upstream, big: &Upstream, percent: &str, ktable: &str) -> String {
    let ktable: Vec<String> = ktable.lines().map(|l| format!("    {l}")).collect();
    let hydrus = format!(
        r#"hydrus:
  default_strategy: s20
  ktable:
{}
  strategies:
    - name: s10
      cost: 6
      qoe_scale: 0.9
      set_query: {{ candidates: "10" }}
    - name: s20
      cost: 10
      set_query: {{ candidates: "20" }}
    - name: s40
      cost: 18
      qoe_scale: 1.08
      cluster: big
      set_headers: {{ x-model: large }}
      set_query: {{ candidates: "40" }}"#,
        ktable.join("\n")
    );
    Config::new()
        .grace("1s", Some("2s"))
        .cluster("small", &[small.addr])
        .cluster("big", &[big.addr])
        .route(
            route("default", "small")
                .filter(&rollout(percent))
                .filter(&hydrus),
        )
        .template()
}

const ALL_TREATED: &str = "100";

fn start(rollout: &str, kt: Option<String>, extra_ktable: &str) -> (Upstream, Upstream, Hydrus) {
    let small = Upstream::start("small");
    let big = Upstream::start("big");
    let dir = tempfile::tempdir().unwrap();
    if let Some(kt) = kt {
        std::fs::write(dir.path().join("ktable.yaml"), kt).unwrap();
    }
    let h = Hydrus::start_in(dir, &template(&small, &big, rollout, extra_ktable));
    (small, big, h)
}

fn send(h: &Hydrus, headers: &[(&str, &str)]) -> (u16, String) {
    get_with(&h.url("/rank?user=1&candidates=999"), headers).unwrap()
}

/// The last request either upstream saw.
fn last(small: &Upstream, big: &Upstream) -> Seen {
    let mut all = small.seen();
    all.extend(big.seen());
    assert_eq!(
        all.len(),
        1,
        "exactly one request reached an upstream: {all:?}"
    );
    small.take();
    big.take();
    all.pop().unwrap()
}

#[test]
fn chosen_strategy_is_the_hand_computed_argmax_and_is_applied() {
    let kt = ktable(&[("default", 0.004), ("feed", 0.1)], None);
    let (small, big, h) = start(ALL_TREATED, Some(kt), "");
    let cases: &[(&str, Option<&str>, &str)] = &[
        // single QoE under the default strategy, scaled per strategy
        ("0.1", None, "s10"), // s10 0.066, s20 0.060, s40 0.036
        ("0.3", None, "s20"), // s10 0.246, s20 0.260, s40 0.252
        ("0.6", None, "s40"), // s10 0.516, s20 0.560, s40 0.576
        // per-strategy values
        ("s10=0.5,s20=0.52,s40=0.6", None, "s40"), // 0.476, 0.480, 0.528
        ("s10=0.5,s20=0.5", None, "s10"),          // 0.476, 0.460; s40 not a candidate
        ("s20=0.3", None, "s20"),                  // the only candidate
        // scenario `feed`: k = 0.1 -> 0.81-0.6, 0.9-1.0, 0.972-1.8
        ("0.9", Some("feed"), "s10"),
    ];
    for (qoe, scenario, want) in cases {
        let mut headers = vec![("x-user-id", "u1"), ("x-qoe-score", *qoe)];
        if let Some(s) = scenario {
            headers.push(("x-scenario", s));
        }
        let (status, _) = send(&h, &headers);
        assert_eq!(status, 200);
        let seen = last(&small, &big);
        assert_eq!(seen.header("x-hydrus-strategy"), Some(*want), "qoe {qoe}");
        assert_eq!(seen.header("x-hydrus-group"), Some("hydrus"));
        // the strategy's query parameter replaced the client's, other parameters kept
        let candidates = &want[1..];
        assert_eq!(
            seen.query.get("candidates"),
            Some(&vec![candidates.to_string()])
        );
        assert_eq!(seen.query_one("user"), Some("1"));
        assert_eq!(seen.path, "/rank");
        // cluster routing and header rewrite
        if *want == "s40" {
            assert_eq!(seen.upstream, "big");
            assert_eq!(seen.header("x-model"), Some("large"));
        } else {
            assert_eq!(seen.upstream, "small");
            assert_eq!(seen.header("x-model"), None);
        }
    }
    // A request is counted in the logging hook, after its response is sent: wait for the last.
    let feed = r#"hydrus_requests_total{group="hydrus",scenario="feed",strategy="s10"}"#;
    assert!(eventually(Duration::from_secs(5), || h.metric(feed) >= 1.0));
    let m = h.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"hydrus_requests_total{group="hydrus",scenario="default",strategy="s40"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"hydrus_requests_total{group="hydrus",scenario="feed",strategy="s10"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric_value(&m, r#"hydrus_k{scenario="feed"}"#), Some(0.1));
    assert!(metric_value(&m, "hydrus_decision_seconds_count").unwrap() >= 7.0);
}

#[test]
fn rollout_split_is_close_to_percent_and_stable_per_user() {
    let kt = ktable(&[("default", 0.004)], None);
    let (small, big, h) = start("30", Some(kt), "");
    let users = 1500;
    let mut group_of = std::collections::HashMap::new();
    for i in 0..users {
        let user = format!("user-{i}");
        let (status, body) = send(&h, &[("x-user-id", &user), ("x-qoe-score", "0.6")]);
        assert_eq!(status, 200);
        let treated = body.contains("\"group\":\"hydrus\"");
        group_of.insert(user, treated);
    }
    let treated = group_of.values().filter(|t| **t).count();
    let share = treated as f64 / users as f64;
    assert!((share - 0.30).abs() < 0.04, "treated share {share}");
    // Stable: the same users again, the same groups.
    for i in 0..300 {
        let user = format!("user-{i}");
        let (_, body) = send(&h, &[("x-user-id", &user), ("x-qoe-score", "0.6")]);
        assert_eq!(
            body.contains("\"group\":\"hydrus\""),
            group_of[&user],
            "{user}"
        );
    }
    // Control gets the default strategy; treatment (q = 0.6) gets s40 on the big cluster.
    let mut seen = small.seen();
    seen.extend(big.seen());
    for s in &seen {
        match s.header("x-hydrus-group") {
            Some("control") => {
                assert_eq!(s.header("x-hydrus-strategy"), Some("s20"));
                assert_eq!(s.upstream, "small");
            }
            Some("hydrus") => {
                assert_eq!(s.header("x-hydrus-strategy"), Some("s40"));
                assert_eq!(s.upstream, "big");
            }
            other => panic!("group {other:?}"),
        }
    }
    // No user id: control, counted.
    let before = h.metric(r#"hydrus_fallback_total{reason="missing_user_id"}"#);
    let (status, body) = send(&h, &[("x-qoe-score", "0.6")]);
    assert_eq!(status, 200);
    assert!(body.contains("\"group\":\"control\""), "{body}");
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="missing_user_id"}"#),
        before + 1.0
    );
    assert_eq!(h.metric("hydrus_rollout_percent"), 30.0);
}

#[test]
fn bad_input_is_served_from_the_default_strategy_and_counted() {
    let kt = ktable(&[("default", 0.004)], None);
    let (small, big, h) = start(ALL_TREATED, Some(kt), "");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("x-user-id", "u")], "missing_qoe"),
        (&[("x-user-id", "u"), ("x-qoe-score", "NaN")], "nan_qoe"),
        (
            &[("x-user-id", "u"), ("x-qoe-score", "-0.5")],
            "negative_qoe",
        ),
        (
            &[("x-user-id", "u"), ("x-qoe-score", "7")],
            "out_of_range_qoe",
        ),
        (
            &[("x-user-id", "u"), ("x-qoe-score", "0.6abc")],
            "garbled_qoe",
        ),
        (
            &[("x-user-id", "u"), ("x-qoe-score", "s10=0.5,,")],
            "garbled_qoe",
        ),
        (
            &[("x-user-id", "u"), ("x-qoe-score", "s99=0.5")],
            "unknown_strategy_qoe",
        ),
        (
            &[
                ("x-user-id", "u"),
                ("x-qoe-score", "0.6"),
                ("x-scenario", "nope"),
            ],
            "unknown_scenario",
        ),
    ];
    for (headers, reason) in cases {
        let series = format!("hydrus_fallback_total{{reason=\"{reason}\"}}");
        let before = h.metric(&series);
        let (status, _) = send(&h, headers);
        assert_eq!(status, 200, "{reason}");
        let seen = last(&small, &big);
        assert_eq!(seen.header("x-hydrus-strategy"), Some("s20"), "{reason}");
        assert_eq!(seen.query_one("candidates"), Some("20"), "{reason}");
        assert_eq!(h.metric(&series), before + 1.0, "{reason}");
    }
    // Control characters are not HTTP: refused with a 400 by the parser, never a crash.
    let answer = raw_request(
        h.port,
        b"GET /rank HTTP/1.1\r\nhost: x\r\nx-qoe-score: \x01\x7f\r\nconnection: close\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer}"
    );
    assert_eq!(get(&format!("{}/ready", h.admin())).unwrap().0, 200);
}

#[test]
fn missing_k_table_falls_back_until_one_appears() {
    let (small, big, h) = start(ALL_TREATED, None, "");
    let series = r#"hydrus_fallback_total{reason="no_ktable"}"#;
    let (status, _) = send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(status, 200);
    assert_eq!(last(&small, &big).header("x-hydrus-strategy"), Some("s20"));
    assert_eq!(h.metric(series), 1.0);
    assert_eq!(h.metric("hydrus_ktable_loaded"), 0.0);
    assert_eq!(get(&format!("{}/ktable", h.admin())).unwrap().0, 404);
    // The solver writes a table: it is picked up without a restart.
    write_atomic(&h.path("ktable.yaml"), &ktable(&[("default", 0.004)], None));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric("hydrus_ktable_loaded") == 1.0
    }));
    send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(last(&small, &big).header("x-hydrus-strategy"), Some("s40"));
}

#[test]
fn stale_k_table_falls_back() {
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 2 * 3600 * 1000;
    let kt = ktable(&[("default", 0.004)], Some(two_hours_ago));
    let (small, big, h) = start(ALL_TREATED, Some(kt), "max_age: 1h");
    let (status, _) = send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(status, 200);
    assert_eq!(last(&small, &big).header("x-hydrus-strategy"), Some("s20"));
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="stale_ktable"}"#),
        1.0
    );
    assert!(h.metric("hydrus_ktable_age_seconds") > 7000.0);
    let (_, body) = get(&format!("{}/ktable", h.admin())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stale"], true);
}

/// (send time, status, strategy, group, answer time) of one request of a load.
type Outcome = (Instant, u16, String, String, Instant);

/// Load from several threads, recording an [`Outcome`] per request.
struct Load {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn field(body: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v[name].as_str().unwrap_or_default().to_string()
}

impl Load {
    fn start(h: &Hydrus, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let url = h.url("/rank");
        let threads = (0..threads)
            .map(|t| {
                let (stop, results, url) = (stop.clone(), results.clone(), url.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for i in 0..200_000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let user = format!("load-{t}-{i}");
                        let sent = Instant::now();
                        let r = get_with(&url, &[("x-user-id", &user), ("x-qoe-score", "0.6")]);
                        let (status, body) = r.unwrap_or((0, String::new()));
                        results.lock().unwrap().push((
                            sent,
                            status,
                            field(&body, "strategy"),
                            field(&body, "group"),
                            Instant::now(),
                        ));
                    }
                })
            })
            .collect();
        Self {
            stop,
            results,
            threads,
        }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.results).unwrap().into_inner().unwrap()
    }
}

/// Every request sent from `after + 1 s` on satisfies `ok`, and some did before that.
fn took_effect_within_a_second(
    results: &[Outcome],
    after: Instant,
    ok: impl Fn(&str, &str) -> bool,
) {
    let late: Vec<_> = results
        .iter()
        .filter(|r| r.0 >= after + Duration::from_secs(1))
        .collect();
    assert!(
        late.len() > 50,
        "enough requests after the change: {}",
        late.len()
    );
    for r in &late {
        assert!(
            ok(&r.2, &r.3),
            "a request sent {:?} after the change got {} {}",
            r.0 - after,
            r.2,
            r.3
        );
    }
}

#[test]
fn rollout_and_k_table_edits_take_effect_within_a_second_under_load() {
    let kt = ktable(&[("default", 0.004)], None);
    let (small, big, h) = start("0", Some(kt), "");
    let load = Load::start(&h, 3);
    std::thread::sleep(Duration::from_millis(700));

    // 1. Shift all traffic to hydrus by editing the config.
    let t1 = Instant::now();
    h.rewrite_config(&template(&small, &big, ALL_TREATED, ""));
    std::thread::sleep(Duration::from_millis(2000));

    // 2. A new k-table: k = 0.1 makes s10 the best for q = 0.6.
    let t2 = Instant::now();
    write_atomic(&h.path("ktable.yaml"), &ktable(&[("default", 0.1)], None));
    std::thread::sleep(Duration::from_millis(2000));

    let results = load.finish();
    assert!(
        results.iter().all(|r| r.1 == 200),
        "every request served: {:?}",
        results
            .iter()
            .filter(|r| r.1 != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    // Answered before the first edit: the old config. (A request in flight across an edit may
    // see either; the checks below look at requests sent a second after each edit.)
    let before: Vec<_> = results.iter().filter(|r| r.4 < t1).collect();
    assert!(!before.is_empty());
    assert!(before.iter().all(|r| r.3 == "control" && r.2 == "s20"));
    let phase1: Vec<_> = results.iter().filter(|r| r.4 < t2).cloned().collect();
    took_effect_within_a_second(&phase1, t1, |s, g| g == "hydrus" && s == "s40");
    took_effect_within_a_second(&results, t2, |s, g| g == "hydrus" && s == "s10");
    assert_eq!(h.metric(r#"hydrus_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#), 2.0);
    assert_eq!(h.metric("hydrus_rollout_percent"), 100.0);
}

#[test]
fn a_bad_config_or_k_table_on_reload_keeps_the_running_one() {
    let kt = ktable(&[("default", 0.004)], None);
    let (small, big, h) = start(ALL_TREATED, Some(kt), "");
    // Broken YAML on reload.
    std::fs::write(&h.config_path, "listen: [\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="error"}"#) == 1.0
    }));
    // A config that parses but is wrong (unknown cluster).
    h.rewrite_config(
        &template(&small, &big, ALL_TREATED, "").replace("cluster: big", "cluster: huge"),
    );
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="error"}"#) == 2.0
    }));
    assert!(h.log().contains("no cluster named `huge`"), "{}", h.log());
    // A corrupt k-table.
    write_atomic(
        &h.path("ktable.yaml"),
        "window_secs: 900\nscenarios:\n  default: [1, 2]\n",
    );
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="error"}"#) == 1.0
    }));
    // Still the old config and table: q = 0.6 -> s40 on big.
    let (status, _) = send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(status, 200);
    let seen = last(&small, &big);
    assert_eq!(
        (seen.upstream.as_str(), seen.header("x-hydrus-strategy")),
        ("big", Some("s40"))
    );
    // SIGHUP reloads even when nothing changed (the config file is still broken-by-cluster).
    h.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="error"}"#) == 3.0
    }));
    // Fix the config; SIGHUP or the file event applies it.
    h.rewrite_config(&template(&small, &big, ALL_TREATED, ""));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="ok"}"#) >= 1.0
    }));
}

#[test]
fn client_cannot_choose_its_strategy_or_group_and_nothing_leaks() {
    let kt = ktable(&[("default", 0.004)], None);
    let (small, big, h) = start("0", Some(kt), "");
    let (status, body) = send(
        &h,
        &[
            ("x-user-id", "u"),
            ("x-qoe-score", "0.6"),
            ("x-hydrus-strategy", "s40"),
            ("x-hydrus-group", "hydrus"),
            ("x-hydrus-anything", "1"),
        ],
    );
    assert_eq!(status, 200);
    let seen = last(&small, &big);
    assert_eq!(seen.header("x-hydrus-strategy"), Some("s20"));
    assert_eq!(seen.header("x-hydrus-group"), Some("control"));
    assert_eq!(seen.header("x-hydrus-anything"), None);
    assert_eq!(seen.upstream, "small");
    // The client sees the upstream's body, nothing of hydrus's config.
    assert!(!body.contains("ktable") && !body.contains("s40"), "{body}");
    // A request id was made up and passed upstream.
    assert_eq!(seen.header("x-request-id").map(str::len), Some(32));
}

#[test]
fn admin_endpoints_describe_the_running_proxy() {
    let kt = ktable(&[("default", 0.004)], None);
    let (_small, _big, h) = start(ALL_TREATED, Some(kt), "");
    let (status, body) = get(&format!("{}/config", h.admin())).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The config as written (the route's filters, in order).
    assert_eq!(
        v["config"]["routes"][0]["filters"][1]["hydrus"]["default_strategy"],
        "s20"
    );
    let (status, body) = get(&format!("{}/ktable", h.admin())).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["current_k"]["default"], 0.004);
    assert_eq!(v["window_secs"], 900);
    assert_eq!(
        get(&format!("{}/ready", h.admin())).unwrap(),
        (200, "ready\n".into())
    );
    assert_eq!(get(&format!("{}/nope", h.admin())).unwrap().0, 404);
}

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

#[test]
fn k_table_from_a_url_is_polled_with_etag() {
    let kt = Arc::new(Mutex::new((
        ktable(&[("default", 0.004)], None),
        "\"v1\"".to_string(),
    )));
    let conditional = Arc::new(Mutex::new(0usize));
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let srv = {
        let (server, kt, conditional, stop) = (
            server.clone(),
            kt.clone(),
            conditional.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let (body, tag) = kt.lock().unwrap().clone();
                let inm = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("if-none-match"))
                    .map(|h| h.value.as_str().to_string());
                let etag: tiny_http::Header = format!("etag: {tag}").parse().unwrap();
                if inm.as_deref() == Some(tag.as_str()) {
                    *conditional.lock().unwrap() += 1;
                    let _ = req.respond(tiny_http::Response::empty(304).with_header(etag));
                } else {
                    let _ = req.respond(tiny_http::Response::from_string(body).with_header(etag));
                }
            }
        })
    };
    let small = Upstream::start("small");
    let big = Upstream::start("big");
    let t = template_with(
        &small,
        &big,
        ALL_TREATED,
        &format!(
            "url: http://ops:tablepass@{addr}/ktable.yaml?token=tabletoken\npoll_interval: 100ms"
        ),
    );
    let h = Hydrus::start(&t);
    assert!(eventually(Duration::from_secs(5), || h
        .metric("hydrus_ktable_loaded")
        == 1.0));
    send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(last(&small, &big).header("x-hydrus-strategy"), Some("s40"));
    assert!(eventually(Duration::from_secs(5), || *conditional
        .lock()
        .unwrap()
        >= 3));
    *kt.lock().unwrap() = (ktable(&[("default", 0.1)], None), "\"v2\"".into());
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_k{scenario="default"}"#) == 0.1
    }));
    send(&h, &[("x-user-id", "u"), ("x-qoe-score", "0.6")]);
    assert_eq!(last(&small, &big).header("x-hydrus-strategy"), Some("s10"));
    // A table that does not load is logged with its URL: its secrets never are, nor shown.
    *kt.lock().unwrap() = ("window_secs: [".into(), "\"v3\"".into());
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="error"}"#) >= 1.0
    }));
    let shown = [
        h.log(),
        get(&format!("{}/config", h.admin())).unwrap().1,
        get(&format!("{}/ktable", h.admin())).unwrap().1,
    ];
    for text in &shown {
        assert!(
            !text.contains("tablepass") && !text.contains("tabletoken"),
            "{text}"
        );
    }
    assert!(shown.iter().all(|t| t.contains("<redacted>@")), "{shown:?}");
    stop.store(true, Ordering::SeqCst);
    server.unblock();
    srv.join().unwrap();
}

#[test]
fn check_names_the_line_of_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n    bogus: 1\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:", path.display())) && err.contains("unknown field `bogus`"),
        "{err}"
    );
    // A semantic error names its line too; `serve` refuses to start with the same message.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: b\n",
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(bin())
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:6:", path.display())) && err.contains("no cluster named `b`"),
            "{cmd}: {err}"
        );
    }
    // And a good one is OK.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK"));
}
