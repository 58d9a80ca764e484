//! Routes: a ranking service's `/rank` gets the Hydrus decision, its other paths pass through
//! untouched (no fallback counted, no record), a request no route takes is answered 404 by
//! hydrus; each route runs its own chain, in YAML order, with its own tables; `hydrus check`
//! names unreachable routes and chains in the wrong order; the single-route shape still works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// `/rank` (GET or POST) decides and logs; everything else goes to the same service untouched.
fn rank_and_rest(up: &Upstream) -> String {
    Config::new()
        .cluster("ranking", &[up.addr])
        .route(
            route("rank", "ranking")
                .matching("{ path_prefix: /rank, methods: [GET, POST] }")
                .filter(&rollout("100"))
                .filter(&hydrus3("{dir}/ktable.yaml"))
                .filter(&file_log()),
        )
        .route(route("rest", "ranking"))
        .template()
}

fn start(template: &str, tables: &[(&str, f64)]) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    for (name, k) in tables {
        std::fs::write(dir.path().join(name), ktable(&[("default", *k)], None)).unwrap();
    }
    Hydrus::start_in(dir, template)
}

fn check(h: &Hydrus) -> (bool, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn only_the_rank_route_is_decided_and_logged_the_rest_passes_through() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up), &[("ktable.yaml", 0.004)]);
    // A treated ranking request: decided (q = 0.6 and k = 0.004: s40), logged.
    let (status, _) = get_with(
        &h.url("/rank?candidates=999"),
        &[("x-user-id", "u1"), ("x-qoe-score", "0.6")],
    )
    .unwrap();
    assert_eq!(status, 200);
    let ranked = up.take().pop().unwrap();
    assert_eq!(ranked.header("x-hydrus-strategy"), Some("s40"));
    assert_eq!(ranked.header("x-hydrus-group"), Some("hydrus"));
    // The same path spelled otherwise is the same route, and is forwarded as the route saw it:
    // a client cannot slip past the decision with `//rank` or `/%72ank`.
    for target in [
        "//rank?candidates=999",
        "/%72ank?candidates=999",
        "/x/../rank",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nx-qoe-score: 0.6\r\nconnection: close\r\n\r\n"
        );
        let answer = raw_request(h.port, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        let seen = up.take().pop().unwrap();
        assert_eq!(
            (seen.path.as_str(), seen.header("x-hydrus-strategy")),
            ("/rank", Some("s40")),
            "{target}"
        );
    }
    // The service's other paths: what the client sent arrives as sent (hydrus's own headers
    // aside), even a bad QoE header and no user id; nothing is decided.
    for path in ["/health", "/features/u1?candidates=3", "/admin/status"] {
        let (status, _) = get_with(
            &h.url(path),
            &[
                ("x-qoe-score", "bogus"),
                ("x-model", "client"),
                ("x-hydrus-strategy", "forged"),
            ],
        )
        .unwrap();
        assert_eq!(status, 200);
        let seen = up.take().pop().unwrap();
        assert_eq!(seen.header("x-hydrus-strategy"), None, "{path}");
        assert_eq!(seen.header("x-hydrus-group"), None, "{path}");
        assert_eq!(seen.header("x-request-id"), None, "{path}");
        assert_eq!(seen.header("x-model"), Some("client"), "{path}");
        assert_eq!(seen.header("x-qoe-score"), Some("bogus"), "{path}");
    }
    assert_eq!(
        seen_query(&h, &up, "/features/u1?candidates=3"),
        Some("3".into())
    );
    // A PUT to /rank is not the rank route's (GET and POST only): it passes through too.
    let put = ureq_put(&h.url("/rank"));
    assert_eq!(put, 200);
    assert_eq!(up.take().pop().unwrap().header("x-hydrus-strategy"), None);
    // Counted by route; the pass-through route counts no fallback although its requests had
    // a bad QoE header and no user id. (A request is counted in the logging hook, after its
    // response is sent: wait for the last ones.)
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_requests_total{route="rank",strategy="s40"}"#) >= 4.0
            && h.metric(r#"hydrus_requests_total{route="rest",strategy="default"}"#) >= 5.0
    }));
    assert_eq!(
        h.metric(r#"hydrus_requests_total{route="rank",strategy="s40"}"#),
        4.0
    );
    assert_eq!(
        h.metric(r#"hydrus_requests_total{route="rest",strategy="default"}"#),
        5.0
    );
    assert_eq!(h.metric(r#"hydrus_fallback_total{route="rest"}"#), 0.0);
    assert_eq!(h.metric(r#"hydrus_fallback_total{route="rank"}"#), 0.0);
    // One record for each ranking request, naming its route.
    let logs = h.path("logs");
    assert!(eventually(Duration::from_secs(5), || read_records(&logs)
        .len()
        == 4));
    std::thread::sleep(Duration::from_millis(300));
    let records = read_records(&logs);
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(records
        .iter()
        .all(|r| r.route.as_deref() == Some("rank") && r.chosen == "s40"));
}

/// The query the upstream saw for one more request to `path`.
fn seen_query(h: &Hydrus, up: &Upstream, path: &str) -> Option<String> {
    get(&h.url(path)).unwrap();
    up.take()
        .pop()
        .and_then(|s| s.query_one("candidates").map(str::to_string))
}

fn ureq_put(url: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent.put(url).send("x").unwrap().status().as_u16()
}

#[test]
fn a_request_no_route_takes_is_answered_404_and_counted() {
    let up = Upstream::start("ranking");
    let only_rank = Config::new()
        .cluster("ranking", &[up.addr])
        .route(
            route("rank", "ranking")
                .matching("{ path: /rank }")
                .filter(&hydrus3("{dir}/ktable.yaml")),
        )
        .template();
    let h = start(&only_rank, &[("ktable.yaml", 0.004)]);
    assert_eq!(get(&h.url("/rank")).unwrap().0, 200);
    assert_eq!(get(&h.url("/rank/sub")).unwrap().0, 404);
    assert_eq!(get(&h.url("/other")).unwrap().0, 404);
    assert_eq!(up.take().len(), 1);
    assert_eq!(
        h.metric(r#"hydrus_requests_rejected_total{reason="no_route"}"#),
        2.0
    );
}

#[test]
fn each_route_runs_its_own_chain_and_tables() {
    let up = Upstream::start("ranking");
    // Two surfaces with their own budgets: the feed's k is high (spend little), search's low.
    let hydrus = |table: &str| hydrus3(&format!("{{dir}}/{table}"));
    let template = Config::new()
        .cluster("ranking", &[up.addr])
        .route(
            route("feed", "ranking")
                .matching("{ path_prefix: /feed }")
                .filter(&hydrus("feed.yaml")),
        )
        .route(
            route("search", "ranking")
                .matching("{ path_prefix: /search }")
                .filter(&rollout("0"))
                .filter(&hydrus("search.yaml")),
        )
        .route(
            route("search-canary", "ranking")
                .matching("{ path_prefix: /search, header: x-canary }")
                .filter(&hydrus("search.yaml")),
        )
        .template();
    let h = start(&template, &[("feed.yaml", 0.1), ("search.yaml", 0.004)]);
    let strategy = |path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("x-user-id", "u1"), ("x-qoe-score", "0.6")];
        headers.extend_from_slice(extra);
        assert_eq!(get_with(&h.url(path), &headers).unwrap().0, 200);
        let seen = up.take().pop().unwrap();
        (
            seen.header("x-hydrus-strategy").map(str::to_string),
            seen.header("x-hydrus-group").map(str::to_string),
        )
    };
    // k = 0.1 makes the cheapest strategy the best; the search route's rollout keeps everyone
    // on the default.
    assert_eq!(
        strategy("/feed", &[]),
        (Some("s10".into()), Some("hydrus".into()))
    );
    assert_eq!(
        strategy("/search", &[]),
        (Some("s20".into()), Some("control".into()))
    );
    // The canary route is never reached: the search route before it takes all of /search.
    assert_eq!(
        strategy("/search", &[("x-canary", "1")]),
        (Some("s20".into()), Some("control".into()))
    );
    let (ok, err) = check(&h);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "routes[2].match: unreachable: route `search` before it takes every request it matches"
        ),
        "{err}"
    );
    // Each route's k-table is its own: one gauge per route.
    assert_eq!(h.metric(r#"hydrus_ktable_loaded{route="feed"}"#), 1.0);
    assert_eq!(
        h.metric(r#"hydrus_k{route="feed",scenario="default"}"#),
        0.1
    );
    assert_eq!(
        h.metric(r#"hydrus_k{route="search",scenario="default"}"#),
        0.004
    );
    // A reload that changes one route's rollout keeps every route's loaded table: no table
    // is read again, decisions go on.
    let loads = h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#);
    h.rewrite_config(&template.replace("percent: 0", "percent: 100"));
    assert!(eventually(Duration::from_secs(5), || h
        .metric(r#"hydrus_config_reloads_total{result="ok"}"#)
        == 1.0));
    assert_eq!(
        strategy("/search", &[]),
        (Some("s40".into()), Some("hydrus".into()))
    );
    assert_eq!(
        strategy("/feed", &[]),
        (Some("s10".into()), Some("hydrus".into()))
    );
    assert_eq!(
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#),
        loads
    );
    // Renamed, a route keeps the table it had loaded; the old name's gauges are gone.
    h.rewrite_config(&template.replace("name: feed", "name: home"));
    assert!(eventually(Duration::from_secs(5), || h
        .metric(r#"hydrus_config_reloads_total{result="ok"}"#)
        == 2.0));
    assert_eq!(
        strategy("/feed", &[]),
        (Some("s10".into()), Some("hydrus".into()))
    );
    assert_eq!(
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#),
        loads
    );
    let metrics = h.metrics();
    assert_eq!(
        metric_value(&metrics, r#"hydrus_ktable_loaded{route="home"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, r#"hydrus_ktable_loaded{route="feed"}"#),
        None
    );
    assert_eq!(metric_value(&metrics, r#"hydrus_k{route="feed"}"#), None);
}

#[test]
fn check_refuses_a_chain_in_the_wrong_order() {
    let up = Upstream::start("ranking");
    let h = start(&rank_and_rest(&up), &[("ktable.yaml", 0.004)]);
    let wrong = Config::new()
        .cluster("ranking", &[up.addr])
        .route(
            route("rank", "ranking")
                .filter("hedge:\n  table: { path: \"{dir}/hedge.yaml\" }")
                .filter(&hydrus3("{dir}/ktable.yaml"))
                .filter(&rollout("10")),
        )
        .template();
    h.rewrite_config(&wrong.replace(
        "routes:\n",
        "routes:\n  - name: extra\n    cluster: nowhere\n    filters:\n      - hydrus: { default_strategy: a, ktable: { path: k.yaml }, strategies: [{ name: a, cost: 1 }] }\n",
    ));
    let (ok, err) = check(&h);
    assert!(!ok);
    assert!(
        err.contains("routes[1].filters[1].hydrus: hydrus must come before hedge"),
        "{err}"
    );
    assert!(
        err.contains("routes[1].filters[2].rollout: rollout must come before hydrus"),
        "{err}"
    );
    // The running config stays.
    assert!(eventually(Duration::from_secs(5), || h
        .metric(r#"hydrus_config_reloads_total{result="error"}"#)
        == 1.0));
    // What the refused config would have run exports nothing: no route `extra` without a table.
    let metrics = h.metrics();
    assert_eq!(
        metric_value(&metrics, r#"hydrus_ktable_loaded{route="extra"}"#),
        None
    );
    assert_eq!(
        metric_value(&metrics, r#"hydrus_ktable_loaded{route="rank"}"#),
        Some(1.0)
    );
    let (status, _) = get_with(
        &h.url("/rank"),
        &[("x-user-id", "u1"), ("x-qoe-score", "0.6")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        up.take().pop().unwrap().header("x-hydrus-strategy"),
        Some("s40")
    );
}

#[test]
fn the_single_route_shape_is_one_catch_all_route_named_default() {
    let up = Upstream::start("ranking");
    let legacy = format!(
        r#"
listen: 127.0.0.1:{{port}}
admin:
  listen: 127.0.0.1:{{admin}}
shutdown:
  grace_period: 0s
  upgrade_sock: {{dir}}/upgrade.sock
clusters:
  ranking:
    endpoints: ["{}"]
route:
  cluster: ranking
filters:
  - rollout:
      percent: 100
  - hydrus:
      default_strategy: s20
      ktable:
        path: {{dir}}/ktable.yaml
      strategies:
        - {{ name: s20, cost: 10 }}
        - {{ name: s40, cost: 18, qoe_scale: 1.08 }}
  - log:
      file:
        dir: {{dir}}/logs
        flush_interval: 100ms
"#,
        up.addr
    );
    let h = start(&legacy, &[("ktable.yaml", 0.004)]);
    for path in ["/rank", "/anything/else"] {
        let headers = [("x-user-id", "u1"), ("x-qoe-score", "0.6")];
        assert_eq!(get_with(&h.url(path), &headers).unwrap().0, 200);
        assert_eq!(
            up.take().pop().unwrap().header("x-hydrus-strategy"),
            Some("s40")
        );
    }
    let logs = h.path("logs");
    assert!(eventually(Duration::from_secs(5), || read_records(&logs)
        .len()
        == 2));
    assert!(read_records(&logs)
        .iter()
        .all(|r| r.route.as_deref() == Some("default")));
    let (ok, err) = check(&h);
    assert!(ok && !err.contains("route"), "{err}");
    // `OPTIONS *` is a request of the catch-all route too.
    let answer = raw_request(
        h.port,
        b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.take().pop().unwrap().path, "*");
    // Without filters, that shape still manages its requests (as before routes existed).
    h.rewrite_config(&legacy[..legacy.find("filters:").unwrap()]);
    assert!(eventually(Duration::from_secs(5), || h
        .metric(r#"hydrus_config_reloads_total{result="ok"}"#)
        == 1.0));
    assert_eq!(
        get_with(&h.url("/rank"), &[("x_user_id", "u1"), ("x-user-id", "u2")])
            .unwrap()
            .0,
        200
    );
    let seen = up.take().pop().unwrap();
    assert_eq!(seen.header("x-hydrus-group"), Some("hydrus"));
    assert!(seen.header("x-request-id").is_some_and(|id| id.len() == 32));
    assert_eq!(
        seen.header_count("x-user-id") + seen.header_count("x_user_id"),
        1
    );
}
