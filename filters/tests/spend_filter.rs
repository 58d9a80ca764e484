//! The spend controller inside the hydrus filter, compiled from YAML and run as the edge runs a
//! chain, under a fake clock: requests' ends drive the loop, the next decisions use `k_t * m`,
//! the gauges show it, and a new k-table starts the loop afresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use hydrus_filters::filter::{Input, Problems, RequestState};
use hydrus_filters::route::{compile_route, Route, RouteConfig, RouteEnv};

const YAML: &str = r#"
name: rank
cluster: ranking
filters:
  - hydrus:
      default_strategy: s20
      ktable: { path: k.yaml }
      strategies:
        - { name: s10, cost: 6, qoe_scale: 0.9 }
        - { name: s20, cost: 10 }
        - { name: s40, cost: 18, qoe_scale: 1.08 }
      spend_control:
        scenarios: { default: {} }
"#;

/// k = 0.005 for both half-days; the solver expected 13.2 per request (scores spread evenly
/// over [0, 1) cost that at this k).
fn table(expected: f64) -> String {
    format!(
        "window_secs: 43200\nscenarios:\n  default: [0.005, 0.005]\nexpected:\n  default:\n    cost_per_request: [{expected}, {expected}]\n"
    )
}

fn route(registry: &prometheus::Registry) -> Route {
    let r = route_of(registry, YAML);
    install(&r, &table(13.2));
    r
}

fn route_of(registry: &prometheus::Registry, yaml: &str) -> Route {
    let kinds: Vec<_> = hydrus_filters::kinds()
        .map(|k| (k, k.metrics(registry)))
        .collect();
    let fallbacks = prometheus::IntCounterVec::new(
        prometheus::Opts::new("f", "f"),
        &["route", "group", "reason"],
    )
    .unwrap();
    let identity = [
        "x-user-id",
        "x-device-id",
        "x-request-id",
        "x-qoe-score",
        "x-scenario",
    ]
    .map(HeaderName::from_static);
    let env = RouteEnv {
        file: std::path::Path::new("hydrus.yaml"),
        cluster_names: &["ranking".to_string()],
        identity: &identity,
        kinds: &kinds,
        fallbacks: &fallbacks,
    };
    let rc: RouteConfig = serde_norway::from_str(yaml).unwrap();
    let mut problems = Problems::default();
    compile_route(&rc, "routes[0]", "routes[0].cluster", &env, &mut problems)
        .unwrap_or_else(|| panic!("{problems:?}"))
}

fn install(r: &Route, text: &str) {
    for t in r.chain.tables() {
        t.install(text, "test".into(), None, 0).unwrap();
    }
    r.chain.tables_changed();
}

/// One request with score `q` at `now_ms`, decided and ended; its k and cost.
fn request(r: &Route, q: f64, now_ms: u64) -> (f64, f64) {
    let d = decided(r, q, now_ms);
    let cost = [6.0, 10.0, 18.0][d.strategy];
    (d.k.unwrap().first(), cost)
}

/// One request with score `q` at `now_ms`, decided and ended: its decision.
fn decided(r: &Route, q: f64, now_ms: u64) -> hydrus_filters::Decision {
    let score = HeaderValue::from_str(&format!("{q:.4}")).unwrap();
    let ids = [None, None, None, Some(score), None];
    let headers = HeaderMap::new();
    let input = Input {
        method: &Method::GET,
        path: "/rank",
        headers: &headers,
        now_ms,
        ids: &ids,
    };
    let mut state = RequestState::new(r.cluster);
    r.chain.decide(&input, &mut state);
    r.chain.done(
        &state,
        &hydrus_filters::outcome::RequestEnd {
            status: 200,
            ..Default::default()
        },
    );
    *hydrus_filters::hydrus::decision(&state).unwrap()
}

/// `secs` seconds of 100 requests a second with scores spread over [0, scale); the mean cost
/// per request of the last second.
fn run(r: &Route, scale: f64, from_ms: u64, secs: u64) -> f64 {
    let mut last = 0.0;
    for s in 0..secs {
        let mut sum = 0.0;
        for i in 0..100u64 {
            let q = ((i * 37) % 100) as f64 / 100.0 + 0.005;
            sum += request(r, q * scale, from_ms + s * 1000 + i * 10).1;
        }
        last = sum / 100.0;
    }
    last
}

/// A gauge's value for one resource label.
fn gauge_of(registry: &prometheus::Registry, name: &str, resource: &str) -> Option<f64> {
    let families = registry.gather();
    let f = families.iter().find(|f| f.name() == name)?;
    f.get_metric()
        .iter()
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "resource" && l.value() == resource)
        })
        .map(|m| m.get_gauge().get_value())
}

fn gauge(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    let families = registry.gather();
    let f = families.iter().find(|f| f.name() == name)?;
    f.get_metric().first().map(|m| m.get_gauge().get_value())
}

#[test]
fn the_filter_steers_k_and_a_new_ktable_resets_it() {
    let registry = prometheus::Registry::new();
    let r = route(&registry);
    let t0 = 1_795_305_600_000;
    // On the population the table was solved for, m stays 1.
    let c = run(&r, 1.0, t0, 10);
    assert!((c / 13.2 - 1.0).abs() < 0.02, "{c}");
    assert!((request(&r, 0.5, t0 + 10_000).0 / 0.005 - 1.0).abs() < 0.01);
    // Scores scaled by 0.6: the same k would spend 10; the loop lowers k until 13.2 again.
    let c = run(&r, 0.6, t0 + 11_000, 40);
    assert!((c / 13.2 - 1.0).abs() < 0.05, "{c}");
    let (k, _) = request(&r, 0.5, t0 + 51_000);
    assert!((k / 0.005 - 0.6).abs() < 0.1, "k = {k}");
    r.chain.refresh_gauges(t0 + 51_000);
    let m = gauge(&registry, "hydrus_spend_correction").unwrap();
    assert!((m - 0.6).abs() < 0.1, "{m}");
    assert_eq!(
        gauge(&registry, "hydrus_spend_target_cost_per_request"),
        Some(13.2)
    );
    assert!((gauge(&registry, "hydrus_k_effective").unwrap() / (0.005 * m) - 1.0).abs() < 1e-9);
    assert_eq!(
        gauge(&registry, "hydrus_ktable_expected_cost_per_request"),
        Some(13.2)
    );
    // A new k-table: the loop starts afresh at m = 1.
    install(&r, &table(12.0));
    assert_eq!(request(&r, 0.5, t0 + 52_000).0, 0.005);
    r.chain.refresh_gauges(t0 + 52_000);
    assert_eq!(gauge(&registry, "hydrus_spend_correction"), Some(1.0));
}

/// Strategies that cost two resources; the large model's cluster capped at 300 a second.
const TWO: &str = r#"
name: rank
cluster: ranking
filters:
  - hydrus:
      default_strategy: s20
      ktable: { path: k.yaml }
      strategies:
        - { name: s10, cost: { small: 6 }, qoe_scale: 0.9 }
        - { name: s20, cost: { small: 10 } }
        - { name: s40, cost: { small: 2, large: 18 }, qoe_scale: 1.08 }
      spend_control:
        scenarios: { default: { max_cost_per_second: { large: 300 } } }
"#;

#[test]
fn one_loop_per_resource_each_under_its_own_cap() {
    let registry = prometheus::Registry::new();
    let r = route_of(&registry, TWO);
    install(
        &r,
        "window_secs: 43200\nresources: [large, small]\nscenarios:\n  default:\n    large: [0.005, 0.005]\n    small: [0.005, 0.005]\n",
    );
    let t0 = 1_795_305_600_000;
    // 100 requests a second, scores spread over [0, 1): the open loop sends 37.5% to s40,
    // 675 a second of `large`; the cap is 300.
    let mut large_per_second = Vec::new();
    for s in 0..40u64 {
        let mut large = 0.0;
        for i in 0..100u64 {
            let q = ((i * 37) % 100) as f64 / 100.0 + 0.005;
            let d = decided(&r, q, t0 + s * 1000 + i * 10);
            if d.strategy == 2 {
                large += 18.0;
            }
        }
        large_per_second.push(large);
    }
    assert!(large_per_second[0] > 600.0, "{large_per_second:?}");
    let settled: f64 = large_per_second[30..].iter().sum::<f64>() / 10.0;
    assert!((settled / 300.0 - 1.0).abs() < 0.1, "{large_per_second:?}");
    r.chain.refresh_gauges(t0 + 40_000);
    let m_large = gauge_of(&registry, "hydrus_spend_correction", "large").unwrap();
    let m_small = gauge_of(&registry, "hydrus_spend_correction", "small").unwrap();
    // s40 beats s20 above q = (0.09 m - 0.04) / 0.08; 300 a second is 1/6 of requests on s40,
    // q above 5/6: m = 1.185.
    assert!(
        (m_large - 1.185).abs() < 0.05,
        "the large loop brakes: {m_large}"
    );
    assert_eq!(m_small, 1.0, "no target, no cap: the small loop holds");
    assert_eq!(
        gauge_of(&registry, "hydrus_spend_target_cost_per_second", "large"),
        Some(300.0)
    );
    assert_eq!(
        gauge_of(&registry, "hydrus_spend_target_cost_per_second", "small"),
        None
    );
    // The decision applies k_r * m_r per resource.
    let d = decided(&r, 0.5, t0 + 40_100);
    let k = d.k.unwrap();
    assert!(
        (k.as_slice()[0] / (0.005 * m_large) - 1.0).abs() < 1e-6,
        "{k:?}"
    );
    assert_eq!(k.as_slice()[1], 0.005);
}
