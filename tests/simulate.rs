//! `hydrus simulate`: its invariants, and the results in docs/results.md being what its command
//! prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bin;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn simulate(args: &[&str]) -> (String, serde_json::Value, tempfile::TempDir) {
    simulate_into(args, "results.json")
}

/// `hydrus simulate ARGS --out DIR`: what it printed, the JSON file `json` it wrote, and DIR.
fn simulate_into(args: &[&str], json: &str) -> (String, serde_json::Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("simulate")
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(json)).unwrap()).unwrap();
    (md, json, dir)
}

#[test]
fn the_results_table_is_what_its_command_prints() {
    // docs/results.md shows: cargo run --release -- simulate --seed 42 --out benches/results/simulate
    let (md, _, dir) = simulate(&["--seed", "42"]);
    let page = std::fs::read_to_string(format!("{ROOT}/docs/results.md")).unwrap();
    assert!(page.contains("simulate --seed 42 --out benches/results/simulate"));
    assert!(
        page.contains(md.trim()),
        "docs/results.md differs from the command's output:\n{md}"
    );
    let committed =
        std::fs::read_to_string(format!("{ROOT}/benches/results/simulate/results.md")).unwrap();
    assert_eq!(
        committed,
        std::fs::read_to_string(dir.path().join("results.md")).unwrap()
    );
}

#[test]
fn invariants_hold_and_figures_are_drawn() {
    let (_, r, dir) = simulate(&["--seed", "7", "--users", "600", "--runs", "8"]);
    let rows = r["equal_cost"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|p| p["policy"].as_str().unwrap().starts_with(name))
            .unwrap()
    };
    let bound = row("optimum")["mean_qoe"].as_f64().unwrap();
    for name in ["greedy", "DCAF", "Hydrus, bisection", "Hydrus, exact"] {
        let c = row(name)["cost_over_default"].as_f64().unwrap();
        assert!(
            (0.999..=1.0 + 1e-12).contains(&c),
            "{name}: cost / default = {c}, not equal within 0.1%"
        );
        assert!(
            row(name)["mean_qoe"].as_f64().unwrap() <= bound + 1e-12,
            "the optimum bounds {name}"
        );
    }
    assert!(row("default")["mean_qoe"].as_f64().unwrap() <= bound);
    assert!(
        row("Hydrus, exact")["mean_qoe"].as_f64().unwrap()
            >= row("Hydrus, bisection")["mean_qoe"].as_f64().unwrap() - 1e-12
    );
    assert_eq!(r["runs"].as_array().unwrap().len(), 8);
    for run in r["runs"].as_array().unwrap() {
        assert!(run["hydrus_qoe"].as_f64().unwrap() >= run["greedy_qoe"].as_f64().unwrap());
    }
    // Larger k, less latency (Fig. 8).
    let sweep = r["k_sweep"].as_array().unwrap();
    for w in sweep.windows(2) {
        assert!(
            w[1]["mean_latency_ms"].as_f64().unwrap()
                <= w[0]["mean_latency_ms"].as_f64().unwrap() + 1e-9
        );
    }
    for f in [
        "fig5_cdf.svg",
        "fig7_runs.svg",
        "fig8_k_sweep.svg",
        "fig10_load.svg",
    ] {
        let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.matches("<polyline").count() >= 2,
            "{f}"
        );
    }
    // Same seed, same results.
    let (_, again, _) = simulate(&["--seed", "7", "--users", "600", "--runs", "8"]);
    assert_eq!(r, again);
}

#[test]
fn a_population_from_decision_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..300u64 {
        let q = (i * 37 % 100) as f64 / 100.0;
        let chosen = ["s10", "s20", "s40"][(i % 3) as usize];
        text.push_str(&format!(
            "{{\"ts_ms\":{},\"chosen\":\"{chosen}\",\"value_info\":[{{\"strategy\":\"s10\",\"cost\":6.0,\"qoe\":{}}},{{\"strategy\":\"s20\",\"cost\":10.0,\"qoe\":{}}},{{\"strategy\":\"s40\",\"cost\":18.0,\"qoe\":{}}}]}}\n",
            i * 1000,
            q * 0.9,
            q,
            q * (1.3 - q * 0.5),
        ));
    }
    let logs = dir.path().join("l.jsonl");
    std::fs::write(&logs, text).unwrap();
    let (md, r, _) = simulate(&["--from-logs", logs.to_str().unwrap(), "--runs", "2"]);
    assert_eq!(r["users"], 300);
    assert!(md.contains("decision logs"), "{md}");
    let gain = r["qoe_gain_equal_cost"].as_f64().unwrap();
    assert!(
        gain > 0.0,
        "reallocating the logged budget gains QoE: {gain}"
    );
}

#[test]
fn the_hedging_table_is_what_its_command_prints() {
    // docs/results.md shows: cargo run --release -- simulate --hedge --seed 42 --out benches/results/simulate
    let (md, _, dir) = {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin())
            .args(["simulate", "--hedge", "--seed", "42", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8(out.stdout).unwrap(), (), dir)
    };
    let page = std::fs::read_to_string(format!("{ROOT}/docs/results.md")).unwrap();
    assert!(page.contains("simulate --hedge --seed 42 --out benches/results/simulate"));
    assert!(
        page.contains(md.trim()),
        "docs/results.md hedging results differ:\n{md}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("hedge.json")).unwrap())
            .unwrap();
    let points = r["points"].as_array().unwrap();
    let mut last = -1.0;
    for p in points {
        // Extra load within the budget (sampling noise aside), and more budget never hurts.
        assert!(p["extra_load"].as_f64().unwrap() <= p["budget"].as_f64().unwrap() * 1.05 + 0.002);
        let red = p["p99_reduction"].as_f64().unwrap();
        assert!(
            red >= last - 1e-9,
            "p99 reduction falls with more budget: {points:?}"
        );
        last = red;
    }
    assert!(std::fs::read_to_string(dir.path().join("fig_hedge.svg"))
        .unwrap()
        .contains("<polyline"));
}

#[test]
fn the_shifted_day_meets_the_spend_goals_and_the_results_page_shows_it() {
    // docs/results.md shows: cargo run --release -- simulate --shift --seed 42 --out benches/results/simulate
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["simulate", "--shift", "--seed", "42", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    let page = std::fs::read_to_string(format!("{ROOT}/docs/results.md")).unwrap();
    assert!(page.contains("simulate --shift --seed 42 --out benches/results/simulate"));
    assert!(
        page.contains(md.trim()),
        "docs/results.md differs from:\n{md}"
    );
    let committed =
        std::fs::read_to_string(format!("{ROOT}/benches/results/simulate/shift.md")).unwrap();
    assert_eq!(committed, md);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("shift.json")).unwrap())
            .unwrap();
    let phase = |i: usize, f: &str| r["phases"][i][f].as_f64().unwrap();
    // The goals: under the surge, at most the cap + 5% (open loop: far over it); under the
    // score shift, within 5% of the expected cost per request; QoE >= 0.99 of the optimum.
    assert!(phase(0, "closed_worst_over_cap") <= 1.05);
    assert!(phase(0, "open_worst_over_cap") > 1.2);
    assert!(phase(1, "closed_worst_cost_dev") <= 0.05);
    assert!(phase(2, "closed_worst_cost_dev") <= 0.05);
    assert!(phase(2, "open_worst_cost_dev") > 0.1);
    assert!(r["closed_over_optimum"].as_f64().unwrap() >= 0.99);
    for f in ["fig_shift_spend.svg", "fig_shift_qoe.svg"] {
        assert!(
            std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000,
            "{f}"
        );
    }
}

#[test]
fn per_resource_k_keeps_both_clusters_within_budget_and_the_results_page_shows_it() {
    // docs/results.md shows: cargo run --release -- simulate --resources --seed 42 --out benches/results/simulate
    // (24 windows of 500000 users: too slow for a debug build, so the check runs a small day
    // and checks the committed results against the page and the goals; the committed files
    // themselves are regenerated by the ignored test below.)
    let small = [
        "--resources",
        "--seed",
        "42",
        "--windows",
        "4",
        "--users",
        "50000",
    ];
    let (md, r, dir) = simulate_into(&small, "resources.json");
    assert_eq!(
        md,
        std::fs::read_to_string(dir.path().join("resources.md")).unwrap()
    );
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    // Per-resource k: at 50000 users a window, a held-out day's spend differs from the train
    // day's by sampling noise of about 0.65% (one standard deviation, large cluster; 1.04%
    // measured over 96 windows of 20000), so every resource within 3% (4.5 sd) of its budget,
    // and QoE within 0.5% of the K-constraint LP bound.
    for row in rows {
        for r in 0..2 {
            let x = f(&row["per_resource_spend"][r]);
            assert!((x - 1.0).abs() <= 0.03, "{row}");
        }
        assert!(f(&row["per_resource_qoe_over_bound"]) >= 0.995, "{row}");
        assert_eq!(row["exact"], true, "{row}");
    }
    // One folded k overloads the large cluster by more than 10% in some window.
    let large_most = rows
        .iter()
        .map(|row| f(&row["single_spend"][0]))
        .fold(0.0, f64::max);
    assert!(large_most > 1.1, "single k, large: {large_most}");
    // Same seed, same results.
    let again = Command::new(bin())
        .arg("simulate")
        .args(small)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), md);

    // The page quotes the command and the committed table; the committed figures meet the
    // goals the page states.
    let page = std::fs::read_to_string(format!("{ROOT}/docs/results.md")).unwrap();
    assert!(page.contains("simulate --resources --seed 42 --out benches/results/simulate"));
    let committed =
        std::fs::read_to_string(format!("{ROOT}/benches/results/simulate/resources.md")).unwrap();
    assert!(
        page.contains(committed.trim()),
        "docs/results.md differs from benches/results/simulate/resources.md"
    );
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/benches/results/simulate/resources.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c["seed"], 42);
    assert!(f(&c["worst_per_resource_deviation"]) <= 0.01);
    assert!(f(&c["min_per_resource_qoe_over_bound"]) >= 0.999);
    assert!(f(&c["single_spend"][0]["most"]) > 1.1);
    assert!(f(&c["single_spend"][0]["least"]) < 1.0);
}

#[test]
#[ignore = "24 windows of 500000 users: run in release, `cargo nextest run --release --test simulate --run-ignored all`"]
fn the_committed_per_resource_results_are_what_their_command_prints() {
    let (_, _, dir) = simulate_into(&["--resources", "--seed", "42"], "resources.json");
    for f in ["resources.md", "resources.json"] {
        let committed =
            std::fs::read_to_string(format!("{ROOT}/benches/results/simulate/{f}")).unwrap();
        assert_eq!(
            committed,
            std::fs::read_to_string(dir.path().join(f)).unwrap(),
            "{f}"
        );
    }
}
