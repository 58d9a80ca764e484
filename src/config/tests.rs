use super::*;
use hydrus_filters::log::SinkConfig;

const GOOD: &str = r#"
listen: 127.0.0.1:8080
clusters:
  small:
    endpoints: ["127.0.0.1:9000"]
  big:
    endpoints: ["127.0.0.1:9001", "localhost:9002"]
route:
  cluster: small
filters:
  - rollout:
      percent: 12.5
  - hydrus:
      default_strategy: s20
      ktable:
        path: k.yaml
        max_age: 1h
      strategies:
        - name: s10
          cost: 6
          qoe_scale: 0.9
          set_query: { candidates: "10" }
        - name: s20
          cost: 10
          cluster: big
          set_headers: { x-model: large }
  - log:
      file:
        dir: logs
"#;

fn load(text: &str) -> Result<Running, ConfigErrors> {
    load_str(Path::new("h.yaml"), text, &Metrics::new())
}

#[test]
fn compiles_the_single_route_shape_as_one_catch_all_route() {
    let r = load_str(Path::new("/etc/hydrus/h.yaml"), GOOD, &Metrics::new()).expect("valid");
    assert_eq!(r.start.listen.port(), 8080);
    assert_eq!(r.clusters.len(), 2);
    assert_eq!(r.routes.len(), 1);
    let route = &r.routes[0].route;
    assert_eq!(route.name, "default");
    assert_eq!(r.clusters[route.cluster].name, "small");
    let h = hydrus_filters::hydrus::of(&route.chain).expect("hydrus");
    assert_eq!(h.actions[1].cluster, 0, "big sorts first");
    assert_eq!(
        h.ktable.source.path,
        Some(PathBuf::from("/etc/hydrus/k.yaml"))
    );
    let kinds: Vec<&str> = route.chain.filters.iter().map(|s| s.kind()).collect();
    assert_eq!(kinds, ["rollout", "hydrus", "log"]);
    match r.start.log.clone().expect("log").sink {
        SinkConfig::File(f) => assert_eq!(f.dir, PathBuf::from("/etc/hydrus/logs")),
        other => panic!("{other:?}"),
    }
    let any = http::HeaderMap::new();
    assert!(r.route_for(&http::Method::PUT, "/x", &any).is_some());
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// `text` is refused with an error that says `says`.
fn assert_refused(text: &str, says: &str) {
    let e = errors(text);
    assert!(e.iter().any(|e| e.contains(says)), "{e:?}");
}

#[test]
fn unknown_field_names_line() {
    let text = GOOD.replace("          qoe_scale: 0.9\n", "          qoe_scael: 0.9\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("h.yaml:21:11: "), "{}", e[0]);
    assert!(e[0].contains("unknown field `qoe_scael`"), "{}", e[0]);
}

#[test]
fn duration_bounds_read_as_people_write_them() {
    let text = GOOD.replace("        max_age: 1h", "        max_age: 400d");
    let e = errors(&text);
    assert!(
        e.len() == 1 && e[0].ends_with("ktable.max_age: must be at most 365 days"),
        "{e:?}"
    );
    let text = format!("{GOOD}shutdown:\n  grace_period: 2d\n");
    let e = errors(&text);
    assert!(
        e.len() == 1 && e[0].ends_with("shutdown.grace_period: must be at most 1 day"),
        "{e:?}"
    );
}

#[test]
fn a_cluster_error_is_reported_once_not_at_every_route_using_it() {
    let text = GOOD.replace(
        "    endpoints: [\"127.0.0.1:9001\", \"localhost:9002\"]",
        "    endpoints: [\"127.0.0.1:9001\", \"127.0.0.1:9001\"]\n    outlier: { max_ejection_percent: 150 }",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|e| e.contains("clusters.big")), "{e:?}");
    assert!(!e.iter().any(|e| e.contains("no cluster named")), "{e:?}");
}

#[test]
fn semantic_errors_name_line_and_field() {
    let text = GOOD.replace("cluster: big", "cluster: huge");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("h.yaml:25:11: ")
            && e[0].contains("strategies[1].cluster: no cluster named `huge`"),
        "{}",
        e[0]
    );
    let text = GOOD.replace("percent: 12.5", "percent: 120");
    let e = errors(&text);
    assert!(
        e[0].starts_with("h.yaml:12:7: ") && e[0].contains("percent"),
        "{e:?}"
    );
    let text = GOOD.replace("default_strategy: s20", "default_strategy: s99");
    let e = errors(&text);
    assert!(
        e[0].starts_with("h.yaml:14:7: ") && e[0].contains("s99"),
        "{e:?}"
    );
    let text = GOOD.replace("127.0.0.1:9000", "nowhere");
    let e = errors(&text);
    assert!(
        e[0].starts_with("h.yaml:5:17: ") && e[0].contains("nowhere"),
        "{e:?}"
    );
}

#[test]
fn syntax_error_names_line() {
    let text = GOOD.replace("route:\n  cluster: small", "route:\n  cluster: [small");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("h.yaml:"), "{}", e[0]);
}

const ROUTES: &str = r#"
listen: 127.0.0.1:8080
clusters:
  ranking:
    endpoints: ["127.0.0.1:9000"]
routes:
  - name: rank
    match: { path_prefix: /rank, methods: [GET, POST] }
    cluster: ranking
    filters:
      - rollout: { percent: 50 }
      - log: { file: { dir: logs } }
  - name: rest
    cluster: ranking
  - name: never
    match: { path: /rank/health }
    cluster: ranking
"#;

#[test]
fn routes_match_in_order_and_shadowed_ones_are_reported() {
    let r = load(ROUTES).expect("valid");
    let names: Vec<&str> = r.routes.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["rank", "rest", "never"]);
    let h = http::HeaderMap::new();
    let route = |m: http::Method, p: &str| r.route_for(&m, p, &h).map(|r| r.name().to_string());
    assert_eq!(route(http::Method::GET, "/rank/a").as_deref(), Some("rank"));
    assert_eq!(route(http::Method::PUT, "/rank/a").as_deref(), Some("rest"));
    assert_eq!(route(http::Method::GET, "/health").as_deref(), Some("rest"));
    assert!(r.routes[0].logged && !r.routes[1].logged);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let w = r.warnings[0].to_string();
    assert!(
        w.starts_with("h.yaml:16:5: routes[2].match: unreachable: route `rest`"),
        "{w}"
    );
}

#[test]
fn route_mistakes_are_named() {
    assert_refused(
        &ROUTES.replace("name: rest", "name: rank"),
        "routes[1].name: `rank` is used by an earlier route",
    );
    assert_refused(
        &ROUTES.replace("- rollout: { percent: 50 }", "- rolout: { percent: 50 }"),
        "unknown filter `rolout`, expected one of rollout, hydrus, e2e, hedge, log",
    );
    assert_refused(&ROUTES.replace("  - name: rest\n    cluster: ranking\n", "  - name: rest\n    cluster: ranking\n    filters:\n      - log: { file: { dir: other } }\n"), "must name the same sink");
    assert_refused(
        &format!("{GOOD}routes: []\n"),
        "`routes` replaces `route` and `filters`",
    );
}

#[test]
fn plain_scalars_read_as_strings_in_filter_sections() {
    let text = GOOD
        .replace(r#"set_query: { candidates: "10" }"#, "set_query: { candidates: 10 }")
        .replace(
            "      file:\n        dir: logs\n",
            "      kafka:\n        brokers: 127.0.0.1:9092\n        topic: t\n        properties: { linger.ms: 20, enable.idempotence: false }\n",
        );
    let r = load(&text).expect("valid");
    let h = hydrus_filters::hydrus::of(&r.routes[0].route.chain).expect("hydrus");
    assert_eq!(
        h.actions[0].query,
        [("candidates".to_string(), "10".to_string())]
    );
    match r.start.log.clone().expect("log").sink {
        SinkConfig::Kafka(k) => {
            assert_eq!(k.properties["linger.ms"], "20");
            assert_eq!(k.properties["enable.idempotence"], "false");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_single_route_shape_runs_hedging_after_the_decision_as_it_did() {
    let text = GOOD.replace(
        "  - rollout:\n",
        "  - hedge:\n      table: { path: h.yaml }\n  - rollout:\n",
    );
    let r = load(&text).expect("valid");
    let kinds: Vec<&str> = r.routes[0]
        .route
        .chain
        .filters
        .iter()
        .map(|s| s.kind())
        .collect();
    assert_eq!(kinds, ["rollout", "hydrus", "log", "hedge"]);
    // Errors still name the entries where they are written.
    let e = errors(&text.replace("percent: 12.5", "percent: 120"));
    assert!(e[0].contains("filters[1].rollout.percent"), "{e:?}");
    // In a route's chain, the order written is the order run: hedge first is refused.
    let routes = ROUTES.replace(
        "      - rollout: { percent: 50 }\n",
        "      - hedge: { table: { path: h.yaml } }\n      - hydrus: { default_strategy: a, ktable: { path: k.yaml }, strategies: [{ name: a, cost: 1 }] }\n",
    );
    assert_refused(
        &routes,
        "routes[0].filters[1].hydrus: hydrus must come before hedge",
    );
}

#[test]
fn the_single_route_shape_manages_every_request_even_without_filters() {
    let text = "listen: 127.0.0.1:1\nclusters:\n  c:\n    endpoints: [\"127.0.0.1:2\"]\nroute:\n  cluster: c\n";
    let r = load(text).expect("valid");
    assert!(r.routes[0].route.managed);
    let any = http::HeaderMap::new();
    assert!(r.route_for(&http::Method::OPTIONS, "*", &any).is_some());
    let r = load(ROUTES).expect("valid");
    assert!(r.routes[0].route.managed && !r.routes[1].route.managed);
    let e = errors(
        "listen: 127.0.0.1:1\nclusters:\n  c:\n    endpoints: [\"127.0.0.1:2\"]\nfilters: []\n",
    );
    assert!(
        e[0].contains("filters: the single-route shape needs `route:"),
        "{e:?}"
    );
}

#[test]
fn the_upgrade_socket_and_pid_file_default_per_listening_port() {
    let on = |port: u16, shutdown: &str| {
        let text = format!(
            "listen: 127.0.0.1:{port}\n{shutdown}clusters:\n  c:\n    endpoints: [\"127.0.0.1:9000\"]\nroute:\n  cluster: c\n"
        );
        load_str(Path::new("/etc/hydrus/h.yaml"), &text, &Metrics::new())
            .expect("valid")
            .start
    };
    // Two proxies on one host get two sockets and two pid files.
    let (a, b) = (on(8080, ""), on(8081, ""));
    assert_eq!(a.upgrade_sock, "/tmp/hydrus-upgrade-8080.sock");
    assert_eq!(a.pid_file, PathBuf::from("/tmp/hydrus-8080.pid"));
    assert_eq!(b.upgrade_sock, "/tmp/hydrus-upgrade-8081.sock");
    assert_eq!(b.pid_file, PathBuf::from("/tmp/hydrus-8081.pid"));
    // Set, they are taken as written (a relative pid file next to the config).
    let set = on(
        8080,
        "shutdown:\n  upgrade_sock: /run/h.sock\n  pid_file: h.pid\n",
    );
    assert_eq!(set.upgrade_sock, "/run/h.sock");
    assert_eq!(set.pid_file, PathBuf::from("/etc/hydrus/h.pid"));
}
