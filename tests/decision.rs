//! The Hydrus decision through the real binary: the strategy each request gets is the hand-computed
//! argmax and is applied (cluster, headers, query); the rollout splits users close to its
//! percent and keeps each in one group; bad input is served from the default strategy and
//! counted; a client can neither choose its strategy or group nor forge or strip what hydrus
//! owns; undeclared scenarios stay out of metrics, logs and the k-table; shadow mode at 0%
//! shows what treatment would do; the cost per request counts only what hydrus decided.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

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
fn a_client_cannot_forge_or_strip_what_hydrus_owns() {
    let up = Upstream::start("a");
    let h = start_strategies(&up, "0", "", &[("default", 0.004)]);
    let answer = raw_request(
        h.port,
        b"GET /rank?candidat%65s=777&CANDIDATES=5&a=1;candidates=9&candidates[]=7&%2563andidates=6 HTTP/1.1\r\n\
host: x\r\n\
x-user-id: alice\r\n\
x-user-id: mallory\r\n\
x_user_id: eve\r\n\
x-qoe-score: 0.6\r\n\
x-model: large\r\n\
x_hydrus_strategy: s40\r\n\
X-Hydrus-Group: hydrus\r\n\
connection: x-user-id, x-qoe-score\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.take();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    // The identity hydrus decided on, exactly once, whatever Connection nominated.
    assert_eq!(s.header_count("x-user-id"), 1, "{:?}", s.raw_headers);
    assert_eq!(s.header("x-user-id"), Some("alice"));
    assert_eq!(s.header_count("x-qoe-score"), 1);
    assert_eq!(s.header_count("x_user_id"), 0);
    // A control request gets the default strategy's side effects, not the client's.
    assert_eq!(s.header("x-hydrus-group"), Some("control"));
    assert_eq!(s.header("x-hydrus-strategy"), Some("s20"));
    assert_eq!(s.header_count("x-model"), 0);
    assert_eq!(s.header_count("x_hydrus_strategy"), 0);
    assert_eq!(
        s.query.get("candidates").map(Vec::as_slice),
        Some(&["20".to_string()][..])
    );
    assert!(
        !s.raw_query.to_ascii_lowercase().contains("candidat%65s"),
        "{}",
        s.raw_query
    );
    assert!(
        !s.raw_query.contains("CANDIDATES") && !s.raw_query.contains("=777"),
        "{}",
        s.raw_query
    );
    assert!(s.raw_query.starts_with("a=1"), "{}", s.raw_query);
    assert_eq!(
        s.raw_query, "a=1&candidates=20",
        "only what hydrus owns was touched"
    );
    // A request target whose query hydrus could not see is refused.
    for target in ["r?candidates=777", "*?candidates=777"] {
        let answer = raw_request(
            h.port,
            format!("GET {target} HTTP/1.1\r\nhost: x\r\nx-user-id: a\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    assert!(up.take().is_empty());
    assert_eq!(
        metric_of(
            &h,
            "hydrus_requests_rejected_total",
            &[("reason", "bad_target")]
        ),
        2.0
    );
}

/// Identity names configured so that one is the other's spelling (`x-id` and `x_id`, one header
/// to a server that reads `_` as `-`): each still reaches the upstream once, with its value.
#[test]
fn identity_names_that_are_each_others_spelling_still_reach_the_upstream() {
    let up = Upstream::start("a");
    let dir = with_file("ktable.yaml", &ktable(&[("default", 0.004)], None));
    let h = Hydrus::start_in(
        dir,
        &format!(
            "headers: {{ user_id: x-id, device_id: x_id }}\n{}",
            strategy_template(&up, ALL_TREATED, "")
        ),
    );
    for (sent, name, other) in [("x-id", "x-id", "x_id"), ("x_id", "x_id", "x-id")] {
        let (status, _) =
            get_with(&h.url("/rank"), &[(sent, "v"), ("x-qoe-score", "0.6")]).unwrap();
        assert_eq!(status, 200);
        let seen = up.take().pop().unwrap();
        assert_eq!(seen.header_count(name), 1, "{:?}", seen.raw_headers);
        assert_eq!(seen.header(name), Some("v"));
        assert_eq!(seen.header_count(other), 0, "{:?}", seen.raw_headers);
    }
}

#[test]
fn undeclared_scenarios_stay_out_of_metrics_logs_and_the_k_table() {
    let up = Upstream::start("a");
    // The table has a `legacy` row the config does not declare: it is not used either.
    let mut h = start_strategies(
        &up,
        "100",
        "      scenarios: [feed]\n",
        &[("default", 0.004), ("feed", 0.01), ("legacy", 0.01)],
    );
    let sent = requests(&h.url("/rank"), 120, 3, |i| {
        let mut hd = vec![
            ("x-user-id", format!("u{i}")),
            ("x-qoe-score", "0.5".to_string()),
        ];
        match i % 4 {
            0 => hd.push(("x-scenario", format!("made-up-{i}"))),
            1 => hd.push(("x-scenario", "feed".into())),
            2 => hd.push(("x-scenario", "legacy".into())),
            _ => {}
        }
        hd
    });
    assert!(sent.iter().all(|s| s.status == 200));
    let metrics = h.metrics();
    let labels: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|l| l.starts_with("hydrus_requests_total{"))
        .filter_map(|l| l.split("scenario=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .map(str::to_string)
        .collect();
    assert_eq!(
        labels,
        ["default", "feed", "other"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{metrics}"
    );
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="unknown_scenario"}"#),
        60.0
    );
    h.terminate();
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 120);
    for r in &records {
        match r.scenario.as_str() {
            "default" | "feed" => assert!(r.scenario_raw.is_none()),
            "other" => assert!(r
                .scenario_raw
                .as_deref()
                .is_some_and(|s| s.starts_with("made-up-") || s == "legacy")),
            s => panic!("scenario {s} in a record"),
        }
    }
    let out = std::process::Command::new(bin())
        .args(["solve", "--logs"])
        .arg(h.path("logs"))
        .arg("--out")
        .arg(h.path("solved.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table =
        hydrus_filters::KTable::parse(&std::fs::read_to_string(h.path("solved.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        table.scenario_names(),
        ["default".to_string(), "feed".to_string()]
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("60 with an undeclared scenario"), "{said}");
}

#[test]
fn shadow_mode_at_zero_percent_shows_what_hydrus_would_do() {
    let up = Upstream::start("a");
    let dir = with_ktable(&ktable(&[("default", 0.004)], None));
    let mut h = Hydrus::start_in(dir, &hydrus3_template(&up, "0", "{dir}/k.yaml"));
    send_users(&h, 40, "0.6");
    // Every request got the default strategy...
    assert!(up
        .seen()
        .iter()
        .all(|s| s.header("x-hydrus-strategy") == Some("s20")));
    // ...and the dashboard shows what treatment would have chosen and spent.
    let m = |series: &str| h.metric(series);
    // A request is counted in the logging hook, after its response is sent (its filters'
    // counters before its request count): wait for the last.
    assert!(eventually(Duration::from_secs(5), || {
        m("hydrus_requests_total") >= 40.0
    }));
    assert_eq!(m(r#"hydrus_shadow_requests_total{strategy="s40"}"#), 40.0);
    let cost = |d: &str| {
        m(&format!(
            r#"hydrus_cost_total{{decision="{d}",group="control",scenario="default"}}"#
        ))
    };
    assert_eq!(cost("applied"), 400.0);
    assert_eq!(cost("shadow"), 720.0);
    let qoe =
        m(r#"hydrus_predicted_qoe_total{decision="shadow",group="control",scenario="default"}"#);
    assert!((qoe - 40.0 * 0.6 * 1.08).abs() < 1e-9, "{qoe}");
    h.terminate();
    // So do the logs, record by record.
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 40);
    for r in &records {
        assert_eq!((r.group.as_str(), r.chosen.as_str()), ("control", "s20"));
        assert_eq!(r.would_choose.as_deref(), Some("s40"));
        assert_eq!(r.strategy_set.as_ref().map(String::len), Some(16));
    }
}

/// At 0%, shadow mode also shows what treatment would do wrong: missing or garbled QoE
/// headers and unknown scenarios are counted for control (`group="control"`) and carried in
/// control's records; `hydrus check` warns about a declared scenario the k-table lacks.
#[test]
fn shadow_mode_counts_what_treatment_would_fall_back_on() {
    let up = Upstream::start("a");
    let dir = with_ktable(&ktable(&[("default", 0.004)], None));
    let t = hydrus3_template(&up, "0", "{dir}/k.yaml").replace(
        "default_strategy: s20",
        "default_strategy: s20\n          scenarios: [feed]",
    );
    let mut h = Hydrus::start_in(dir, &t);
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "missing_qoe"),
        (&[("x-qoe-score", "lots")], "garbled_qoe"),
        (
            &[("x-qoe-score", "0.6"), ("x-scenario", "feed")],
            "unknown_scenario",
        ),
    ];
    for (i, (headers, _)) in cases.iter().enumerate() {
        let user = format!("user-{i}");
        let mut all = vec![("x-user-id", user.as_str())];
        all.extend_from_slice(headers);
        assert_eq!(get_with(&h.url("/rank"), &all).unwrap().0, 200);
    }
    assert!(eventually(Duration::from_secs(5), || {
        h.metric("hydrus_requests_total") >= 3.0
    }));
    for (_, reason) in cases {
        let series = |g: &str| format!(r#"hydrus_fallback_total{{group="{g}",reason="{reason}"}}"#);
        assert_eq!(h.metric(&series("control")), 1.0, "{reason}");
        assert_eq!(h.metric(&series("hydrus")), 0.0, "{reason}");
    }
    let check = Command::new(bin())
        .args(["check", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("no row for the declared scenario(s) feed of route default"),
        "{said}"
    );
    // A typo in a spend-controlled scenario's name (without a `scenarios` list, the k-table's
    // rows are the declared ones): a loop that never runs.
    let typo = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "scenarios: [feed]",
        "spend_control: { scenarios: { defualt: {} } }",
    );
    let typo_path = h.config_path.with_file_name("typo.yaml");
    std::fs::write(&typo_path, typo).unwrap();
    let check = Command::new(bin())
        .args(["check", "--config"])
        .arg(&typo_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("spend_control.scenarios.defualt: no scenario of that name"),
        "{said}"
    );
    h.terminate();
    let records = read_records(&h.path("logs"));
    let fallbacks: Vec<Option<&str>> = records.iter().map(|r| r.fallback.as_deref()).collect();
    assert_eq!(
        fallbacks,
        [
            Some("missing_qoe"),
            Some("garbled_qoe"),
            Some("unknown_scenario")
        ]
    );
    assert!(records
        .iter()
        .all(|r| r.group == "control" && r.chosen == "s20"));
}

/// The A/B readout's cost per request is over the requests a hydrus filter decided: a route
/// without one (counted in `hydrus_requests_total` as `group="hydrus"`) does not dilute it.
#[test]
fn cost_per_request_counts_only_what_hydrus_decided() {
    let up = Upstream::start("a");
    let dir = with_ktable(&ktable(&[("default", 0.004)], None));
    let t = Config::new()
        .grace("1s", None)
        .cluster("pool", &[up.addr])
        .route(route("plain", "pool").matching("{ path_prefix: /plain }"))
        .route(
            route("default", "pool")
                .filter(&rollout("50"))
                .filter(&hydrus3("{dir}/k.yaml")),
        )
        .template();
    let h = Hydrus::start_in(dir, &t);
    send_users(&h, 40, "0.6");
    for i in 0..60 {
        let (status, _) = get_with(&h.url("/plain"), &[("x-user-id", &format!("p-{i}"))]).unwrap();
        assert_eq!(status, 200);
    }
    let seen = up.seen();
    let treated = seen
        .iter()
        .filter(|s| s.header("x-hydrus-group") == Some("hydrus"))
        .count();
    assert!(treated > 0 && treated < 40, "{treated} of 40 in treatment");
    let m = |series: &str| h.metric(series);
    // (A request is counted in the logging hook, after its response.)
    assert!(eventually(Duration::from_secs(5), || {
        m(r#"hydrus_cost_requests_total{decision="applied",route="default"}"#) == 40.0
            && m(r#"hydrus_requests_total{route="plain"}"#) == 60.0
    }));
    let applied = |g: &str| {
        let at =
            format!(r#"{{decision="applied",group="{g}",route="default",scenario="default"}}"#);
        (
            m(&format!("hydrus_cost_total{at}")),
            m(&format!("hydrus_cost_requests_total{at}")),
        )
    };
    // At QoE 0.6 treatment applies s40 (cost 18), control the default s20 (cost 10).
    let (cost, n) = applied("hydrus");
    assert_eq!((cost, n), (18.0 * treated as f64, treated as f64));
    let (cost, n) = applied("control");
    assert_eq!(
        (cost, n),
        (10.0 * (40 - treated) as f64, (40 - treated) as f64)
    );
    // The plain route's requests are in the request count (as treatment), not in the readout's.
    assert_eq!(
        m(r#"hydrus_requests_total{group="hydrus",route="plain"}"#),
        60.0
    );
    assert_eq!(m(r#"hydrus_cost_requests_total{route="plain"}"#), 0.0);
}

/// What the upstream gets on the wire, as docs/decision.md says: on a route with filters the
/// header names are written as pingora writes them without a kept spelling (a few framing
/// names capitalized, `Host`, the others in lower case), every value as sent or as decided; on a route
/// without filters the names as the client wrote them.
#[test]
fn header_names_reach_the_upstream_as_documented() {
    let up = Upstream::start("a");
    let dir = with_ktable(&ktable(&[("default", 0.004)], None));
    let t = Config::new()
        .cluster("pool", &[up.addr])
        .route(route("plain", "pool").matching("{ path_prefix: /plain }"))
        .route(
            route("default", "pool")
                .filter(&rollout("100"))
                .filter(&hydrus3("{dir}/k.yaml")),
        )
        .template();
    let h = Hydrus::start_in(dir, &t);
    let request = |target: &[u8]| {
        let mut r = b"GET ".to_vec();
        r.extend_from_slice(target);
        r.extend_from_slice(
            b" HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-User-Id: alice\r\nX-Qoe-Score: 0.6\r\nX-Trace-Note: Keep-This-Value\r\nconnection: close\r\n\r\n",
        );
        let answer = raw_request(h.port, &r);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut seen = up.take();
        assert_eq!(seen.len(), 1);
        seen.remove(0)
    };
    let names =
        |s: &Seen| -> Vec<String> { s.raw_headers.iter().map(|(k, _)| k.clone()).collect() };

    let s = request(b"/rank?a=1");
    let n = names(&s);
    for want in [
        "Host",
        "accept",
        "x-user-id",
        "x-qoe-score",
        "x-trace-note",
        "x-hydrus-group",
    ] {
        assert!(n.iter().any(|k| k == want), "{want} not in {n:?}");
    }
    assert_eq!(s.header("x-trace-note"), Some("Keep-This-Value"));
    assert_eq!(s.header("x-user-id"), Some("alice"));
    assert_eq!(s.header("x-hydrus-group"), Some("hydrus"));
    assert_eq!(s.header_count("x-user-id"), 1);

    let s = request(b"/plain/p?a=1");
    let n = names(&s);
    for want in ["Host", "Accept", "X-User-Id", "X-Qoe-Score", "X-Trace-Note"] {
        assert!(n.iter().any(|k| k == want), "{want} not in {n:?}");
    }
    assert_eq!(
        s.header("x-hydrus-group"),
        None,
        "a passthrough route is left alone"
    );
}
