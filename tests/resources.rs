//! Per-resource budgets through the real proxy: strategies that cost two resources (the large
//! model's cluster and the small one's), control traffic logged, `hydrus solve --config` per
//! resource, the k-table hot-reloaded, then treatment traffic: each cluster's spend, measured
//! from the proxy's own log records, lands on its budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Budgets per request, as the config's `resources` says.
const LARGE_BUDGET: f64 = 8.0;
const SMALL_BUDGET: f64 = 2.5;
/// Requests per phase.
const N: u64 = 800;

fn hydrus_section(ktable: &str) -> String {
    format!(
        "hydrus:
  default_strategy: s20
  ktable:
    path: {ktable}
  resources:
    large: {{ budget_per_request: {LARGE_BUDGET} }}
    small: {{ budget_per_request: {SMALL_BUDGET} }}
  strategies:
    - {{ name: s10, cost: {{ small: 2 }}, cluster: small }}
    - {{ name: s20, cost: {{ small: 4 }}, cluster: small }}
    - {{ name: s40, cost: {{ large: 20, small: 1 }}, cluster: large }}
    - {{ name: s80, cost: {{ large: 40, small: 1 }}, cluster: large }}"
    )
}

fn template(small: &Upstream, large: &Upstream, percent: &str) -> String {
    Config::new()
        .threads(None)
        .cluster("small", &[small.addr])
        .cluster("large", &[large.addr])
        .route(
            route("default", "small")
                .filter(&rollout(percent))
                .filter(&hydrus_section("{dir}/ktable.yaml"))
                .filter(&file_log()),
        )
        .template()
}

/// User `i`'s QoE per strategy: the small model's gain grows with `a`, the large one's with
/// `c` (two independent spreads), so who deserves which cluster differs by resource.
fn scores(i: u64) -> String {
    let frac = |x: f64| x - x.floor();
    let a = frac(i as f64 * 0.618_033_988_7);
    let c = frac(i as f64 * 0.414_213_562_3 + 0.1);
    format!(
        "s10={:.4},s20={:.4},s40={:.4},s80={:.4}",
        0.30 * a,
        0.40 * a,
        0.40 * a + 0.25 * c,
        0.40 * a + 0.35 * c
    )
}

fn send_all(h: &Hydrus) {
    for i in 0..N {
        let (status, _) = get_with(
            &h.url("/rank"),
            &[("x-user-id", &format!("u{i}")), ("x-qoe-score", &scores(i))],
        )
        .unwrap();
        assert_eq!(status, 200);
    }
}

fn records_written(h: &Hydrus) -> f64 {
    h.metric(r#"hydrus_log_records_total{result="written"}"#)
}

#[test]
fn each_cluster_spends_its_own_budget() {
    let (small, large) = (Upstream::start("small"), Upstream::start("large"));
    // Everyone on control (s20, small only): the logs the solver learns from.
    let h = Hydrus::start(&template(&small, &large, "0"));
    send_all(&h);
    assert!(eventually(Duration::from_secs(10), || records_written(&h) == N as f64));
    assert_eq!(large.count(), 0);
    let control = read_records(&h.path("logs"));
    let cost = &control[0].value_info[2].cost;
    assert_eq!(
        serde_json::to_string(cost).unwrap(),
        r#"{"large":20.0,"small":1.0}"#,
        "costs are logged by resource"
    );
    // The solver takes each resource's budget from the config.
    let o = std::process::Command::new(bin())
        .args(["solve", "--format", "json", "--logs"])
        .arg(h.path("logs"))
        .arg("--out")
        .arg(h.path("ktable.yaml"))
        .arg("--config")
        .arg(h.path("hydrus.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let window = report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["records"].as_u64() == Some(N))
        .expect("the window the records fell in")
        .clone();
    assert!(
        window["qoe_over_bound"].as_f64().unwrap() >= 0.99,
        "{window}"
    );
    let table = std::fs::read_to_string(h.path("ktable.yaml")).unwrap();
    assert!(table.contains("resources:\n- large\n- small\n"), "{table}");
    let per_resource: BTreeMap<String, (f64, f64)> = window["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["resource"].as_str().unwrap().to_string();
            (
                name,
                (
                    r["k"].as_f64().unwrap(),
                    r["cost_per_request"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(per_resource.len(), 2, "{window}");
    for (name, budget) in [("large", LARGE_BUDGET), ("small", SMALL_BUDGET)] {
        let (k, planned) = per_resource[name];
        assert!(k > 0.0, "{name}: both budgets bind: {window}");
        assert!(
            (planned / budget - 1.0).abs() < 0.01,
            "{name}: planned {planned} of {budget}"
        );
    }
    // The proxy loads the table; then everyone is treated.
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#) >= 1.0
    }));
    assert!(h.metric(r#"hydrus_k{scenario="default",resource="large"}"#) > 0.0);
    h.rewrite_config(&template(&small, &large, "100"));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="ok"}"#) >= 1.0
    }));
    let before = records_written(&h);
    send_all(&h);
    assert!(eventually(Duration::from_secs(10), || {
        records_written(&h) == before + N as f64
    }));
    // Each cluster's spend, from the treatment records: its budget.
    let treated: Vec<_> = read_records(&h.path("logs"))
        .into_iter()
        .filter(|r| r.group == "hydrus")
        .collect();
    assert_eq!(treated.len(), N as usize);
    assert!(
        treated.iter().all(|r| r.fallback.is_none()),
        "decided by the rule"
    );
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &treated {
        let v = r
            .value_info
            .iter()
            .find(|v| v.strategy == r.chosen)
            .unwrap();
        for name in ["large", "small"] {
            *spent.entry(name).or_default() += v.cost.get(name);
        }
        assert!(matches!(
            r.k,
            Some(hydrus_filters::log::PerResource::Many(_))
        ));
    }
    for (name, budget) in [("large", LARGE_BUDGET), ("small", SMALL_BUDGET)] {
        let per_request = spent[name] / N as f64;
        assert!(
            (per_request / budget - 1.0).abs() < 0.02,
            "{name}: {per_request} per request against a budget of {budget}"
        );
    }
    // The large model's cluster got exactly the requests of strategies that name it.
    let on_large = treated
        .iter()
        .filter(|r| r.chosen == "s40" || r.chosen == "s80")
        .count();
    assert_eq!(large.count(), on_large);
    assert!(on_large > 0 && on_large < N as usize);
}

/// Records of two resources, `n` of them in window `w` of the day (15 minutes each), as the
/// proxy writes them.
fn records(n: u64, w: u64, seed: u64) -> Vec<hydrus_filters::LogRecord> {
    use hydrus_filters::log::PerResource;
    let costs = [
        ("s10", [0.0, 2.0]),
        ("s20", [0.0, 4.0]),
        ("s40", [20.0, 1.0]),
        ("s80", [40.0, 1.0]),
    ];
    (0..n)
        .map(|i| {
            let frac = |x: f64| x - x.floor();
            let a = frac((i + seed) as f64 * 0.618_033_988_7);
            let c = frac((i + seed) as f64 * 0.414_213_562_3 + 0.1);
            let q = [0.30 * a, 0.40 * a, 0.40 * a + 0.25 * c, 0.40 * a + 0.35 * c];
            hydrus_filters::LogRecord {
                ts_ms: w * 900_000 + i,
                request_id: format!("r{i}"),
                user_id: format!("u{i}"),
                scenario: "default".into(),
                group: "control".into(),
                chosen: "s20".into(),
                value_info: costs
                    .iter()
                    .zip(q)
                    .map(|((name, [l, s]), qoe)| hydrus_filters::ValueInfo {
                        strategy: name.to_string(),
                        cost: PerResource::Many(BTreeMap::from([
                            ("large".to_string(), *l),
                            ("small".to_string(), *s),
                        ])),
                        qoe,
                    })
                    .collect(),
                status: 200,
                ..Default::default()
            }
        })
        .collect()
}

fn solve(args: &[&str]) -> String {
    String::from_utf8_lossy(&solve_ok(args).stdout).into_owned()
}

#[test]
fn summaries_of_parts_merge_into_the_one_process_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Two windows, each split over two files (as two proxies' logs).
    let (a, b) = (records(3_000, 0, 0), records(2_000, 1, 7));
    write_records(
        &dir.path().join("one.jsonl"),
        &[&a[..1_500], &b[..1_000]].concat(),
    );
    write_records(
        &dir.path().join("two.jsonl"),
        &[&a[1_500..], &b[1_000..]].concat(),
    );
    let budgets = [
        "--budget-per-request",
        "large=8",
        "--budget-per-request",
        "small=2.5",
    ];
    let whole = |logs: &str, out: &str| {
        let mut args = vec!["--logs", logs, "--out", out];
        args.extend(budgets);
        solve(&args)
    };
    let both = path("both");
    std::fs::create_dir(&both).unwrap();
    std::fs::copy(path("one.jsonl"), format!("{both}/one.jsonl")).unwrap();
    std::fs::copy(path("two.jsonl"), format!("{both}/two.jsonl")).unwrap();
    whole(&both, &path("batch.yaml"));
    for part in ["one", "two"] {
        let logs = path(&format!("{part}.jsonl"));
        let summary = path(&format!("{part}.summary"));
        solve(&["--logs", &logs, "--emit-summary", &summary]);
        let text = std::fs::read_to_string(&summary).unwrap();
        assert!(
            text.contains(r#""version":2"#) && text.contains(r#""resources":["large","small"]"#)
        );
    }
    let (one, two, merged) = (
        path("one.summary"),
        path("two.summary"),
        path("merged.yaml"),
    );
    let mut args = vec!["--merge", &one, &two];
    args.extend(["--out", &merged]);
    args.extend(budgets);
    solve(&args);
    let (batch, merged) = (
        hydrus_filters::KTable::parse(&std::fs::read_to_string(path("batch.yaml")).unwrap())
            .unwrap(),
        hydrus_filters::KTable::parse(&std::fs::read_to_string(&merged).unwrap()).unwrap(),
    );
    assert_eq!(batch.resources(), &["large", "small"]);
    for w in [0, 1] {
        let (x, y) = (batch.ks(0, w).unwrap(), merged.ks(0, w).unwrap());
        let scale = x.iter().fold(0.0f64, |m, v| m.max(*v));
        assert!(scale > 0.0, "window {w}: {x:?}");
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-9 * scale, "window {w}: {x:?} vs {y:?}");
        }
    }
}

#[test]
fn a_table_for_other_resources_is_refused_and_check_says_so() {
    let up = Upstream::start("ranker");
    let dir = tempfile::tempdir().unwrap();
    // A two-resource table beside a one-resource config.
    std::fs::write(
        dir.path().join("ktable.yaml"),
        "window_secs: 43200\nresources: [large, small]\nscenarios:\n  default: { large: [0.1, 0.1], small: [0.2, 0.2] }\n",
    )
    .unwrap();
    let t = Config::new()
        .cluster("ranker", &[up.addr])
        .route(
            route("default", "ranker")
                .filter(&rollout(ALL_TREATED))
                .filter(&hydrus3("{dir}/ktable.yaml")),
        )
        .template();
    let h = Hydrus::start_in(dir, &t);
    let o = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(h.path("hydrus.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("for resources [large, small], but this config's strategies cost [default]"),
        "{err}"
    );
    let (status, _) = get_with(
        &h.url("/rank"),
        &[("x-user-id", "u1"), ("x-qoe-score", "0.5")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        up.seen()[0].header("x-hydrus-strategy"),
        Some("s20"),
        "the default"
    );
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="ktable_mismatch"}"#),
        1.0
    );
    // The solver refuses a budget for a resource the logs do not name.
    let logs = h.path("none.jsonl");
    write_records(&logs, &records(100, 0, 0));
    let o = std::process::Command::new(bin())
        .args(["solve", "--logs"])
        .arg(&logs)
        .args(["--out", "/dev/null", "--budget-per-request", "lage=8"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--budget-per-request lage: the logged strategies cost large, small"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
