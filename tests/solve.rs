//! `hydrus solve` end to end: logs in, k-table out, and the proxy picking the table up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::{KTable, LogRecord};
use hydrus_solve::hydrus::algo::{solve_exact, Instance};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{control_record as record, spread_q as q};

/// `records` as JSON lines, then `extra` (lines of other kinds, or none).
fn write_lines(path: &Path, records: &[LogRecord], extra: &str) {
    write_records(path, records);
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(extra.as_bytes()).unwrap();
}

fn solve(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("solve")
        .args(args)
        .output()
        .unwrap()
}

/// The instance the solver should build from `records`.
fn instance(records: &[LogRecord]) -> Instance {
    let mut inst = Instance::new();
    for r in records {
        let opts: Vec<(f64, f64)> = r
            .value_info
            .iter()
            .map(|v| (v.cost.total(), v.qoe))
            .collect();
        let chosen = r
            .value_info
            .iter()
            .position(|v| v.strategy == r.chosen)
            .map(|j| j as u32);
        inst.push(&opts, chosen);
    }
    inst
}

#[test]
fn solves_each_window_fills_the_rest_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // Window 4 (01:00-01:15 UTC) of two days, default scenario, all logged on s20.
    let day = 86_400_000u64;
    let w4 = 4 * 900_000u64;
    let a: Vec<LogRecord> = (0..300)
        .map(|i| record(w4 + i * 10, i, "default", q(i), "s20"))
        .collect();
    let b: Vec<LogRecord> = (300..500)
        .map(|i| record(day + w4 + i * 10, i, "default", q(i), "s20"))
        .collect();
    // Window 50 of scenario `feed`, logged on the cheapest strategy.
    let f: Vec<LogRecord> = (0..100)
        .map(|i| record(50 * 900_000 + i, i, "feed", q(i + 17), "s10"))
        .collect();
    write_lines(
        &logs.join("a.jsonl"),
        &a,
        "this is not json\n{\"ts_ms\": 5\n",
    );
    // gzip'd, with a partial last line still being written
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(logs.join("b.jsonl.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    for r in &b {
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        gz.write_all(&buf).unwrap();
    }
    gz.finish().unwrap();
    write_lines(&logs.join("c.jsonl"), &f, "{\"ts_ms\":1,\"partial");
    let out = dir.path().join("k.yaml");
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["read"]["records"], 600);
    assert_eq!(report["read"]["malformed"], 2);
    assert_eq!(report["read"]["incomplete"], 1);
    let examples = report["read"]["malformed_examples"].as_array().unwrap();
    assert!(
        examples[0].as_str().unwrap().contains("a.jsonl:301: "),
        "{examples:?}"
    );
    assert!(
        examples[1].as_str().unwrap().contains("a.jsonl:302: "),
        "{examples:?}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("2 malformed"), "{stderr}");

    // The table: 96 windows per scenario; solved windows carry the exact k, others the nearest.
    let table = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(table.windows(), 96);
    assert!(table.generated_at_ms().is_some());
    let d = table.scenario_index(b"default").unwrap();
    let mut both = a.clone();
    both.extend(b.iter().cloned());
    let inst = instance(&both);
    let want = solve_exact(&inst, inst.logged_budget());
    assert!(want.feasible);
    assert_eq!(table.k(d, 4), Some(want.k));
    assert!(table.row(d).unwrap().iter().all(|&k| k == want.k));
    let feed = table.scenario_index(b"feed").unwrap();
    let finst = instance(&f);
    assert_eq!(
        table.k(feed, 50),
        Some(solve_exact(&finst, finst.logged_budget()).k)
    );

    let windows = report["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 192);
    let w = windows
        .iter()
        .find(|w| w["scenario"] == "default" && w["window"] == 4)
        .unwrap();
    assert_eq!(w["records"], 500);
    assert_eq!(w["start"], "01:00");
    assert!(w["cost_over_budget"].as_f64().unwrap() <= 1.0);
    assert!(w["qoe_over_bound"].as_f64().unwrap() <= 1.0);
    assert!(w["qoe_over_bound"].as_f64().unwrap() > 0.99);
    // Reallocating the same budget gains QoE over everyone-on-s20.
    assert!(w["gain"].as_f64().unwrap() > 0.0, "{w}");
    let filled = windows.iter().filter(|w| w["filled_from"] == 4).count();
    assert_eq!(filled, 95);

    // The people's table says the same.
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("QoE/bound"), "{text}");
    // Windows without records are summed up, a line per scenario, not listed one by one.
    assert!(
        text.contains("default      95 window(s) without records take the k of the nearest solved window: 00:00-00:45, 01:15-23:45"),
        "{text}"
    );
    assert!(text.lines().count() <= 6, "{text}");
}

#[test]
fn a_k_table_is_solved_for_the_newest_strategy_set() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let w4 = 4 * 900_000u64;
    // Yesterday's records of another strategy set (costs changed since), today's of ours.
    let old: Vec<LogRecord> = (0..200)
        .map(|i| {
            let mut r = record(w4 + i * 10, i, "default", q(i), "s20");
            r.strategy_set = Some("aaaaaaaaaaaaaaaa".into());
            r
        })
        .collect();
    let new: Vec<LogRecord> = (0..300)
        .map(|i| {
            let mut r = record(86_400_000 + w4 + i * 10, i, "default", q(i), "s20");
            r.strategy_set = Some("bbbbbbbbbbbbbbbb".into());
            r
        })
        .collect();
    // In both file orders: the newest set wins.
    for (first, second) in [(&old, &new), (&new, &old)] {
        for f in std::fs::read_dir(&logs).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        write_lines(&logs.join("1.jsonl"), first, "");
        write_lines(&logs.join("2.jsonl"), second, "");
        let out = dir.path().join("k.yaml");
        let o = solve(&[
            "--logs",
            logs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let table = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(table.strategy_set(), Some("bbbbbbbbbbbbbbbb"));
        let inst = instance(&new);
        let want = solve_exact(&inst, inst.logged_budget());
        assert_eq!(
            table.k(0, 4),
            Some(want.k),
            "solved on the new set's records only"
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("200 of an older strategy set"), "{stderr}");
    }
}

#[test]
fn budgets_and_methods() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("l.jsonl");
    let recs: Vec<LogRecord> = (0..400)
        .map(|i| record(1000 + i, i, "default", q(i), "s20"))
        .collect();
    write_lines(&logs, &recs, "");
    let out = dir.path().join("k.yaml");
    let k_for = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "--logs",
            logs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let o = solve(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let w = v["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["records"] == 400)
            .unwrap()
            .clone();
        assert!(w["cost"].as_f64().unwrap() <= w["budget"].as_f64().unwrap() + 1e-6);
        w["k"].as_f64().unwrap()
    };
    let logged = k_for(&[]);
    let mean_low = k_for(&["--budget-mean", "8"]);
    let mean_high = k_for(&["--budget-mean", "14"]);
    let total = k_for(&["--budget-total", "4000"]); // = mean 10 = the logged budget
    assert!(
        mean_low > logged && logged > mean_high,
        "{mean_low} {logged} {mean_high}"
    );
    assert!((total - logged).abs() < 1e-12);
    let bisect = k_for(&["--method", "bisection", "--epsilon", "1e-9"]);
    assert!((bisect - logged).abs() < 1e-8, "{bisect} vs {logged}");
    // Bad arguments are refused with a reason.
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--window",
        "7s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("divide a day"));
}

#[test]
fn no_usable_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("l.jsonl");
    std::fs::write(&logs, "garbage\n{\"also\": \"not a record\"}\n").unwrap();
    let out = dir.path().join("k.yaml");
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no usable record") && err.contains("l.jsonl:1: "),
        "{err}"
    );
    assert!(!out.exists());
    let o = solve(&["--logs", "/nonexistent/dir", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn the_loop_proxy_logs_solver_table_proxy() {
    // A proxy logging to files, everyone on control (the default strategy s20)...
    let up = Upstream::start("ranker");
    let template = Config::new()
        .threads(None)
        .cluster("ranker", &[up.addr])
        .route(
            route("default", "ranker")
                .filter(&rollout("0"))
                .filter(&hydrus3("{dir}/ktable.yaml"))
                .filter(&file_log()),
        )
        .template();
    let h = Hydrus::start(&template);
    let n = 600;
    for i in 0..n {
        let qv = format!("{:.3}", q(i));
        let (status, _) = get_with(
            &h.url("/rank"),
            &[("x-user-id", &format!("u{i}")), ("x-qoe-score", &qv)],
        )
        .unwrap();
        assert_eq!(status, 200);
    }
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == n as f64
    }));
    // ...the solver reads its logs and writes the table the proxy watches...
    let o = solve(&[
        "--logs",
        h.path("logs").to_str().unwrap(),
        "--out",
        h.path("ktable.yaml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = KTable::parse(&std::fs::read_to_string(h.path("ktable.yaml")).unwrap()).unwrap();
    let now_window = table.window_of(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let k = table.k(0, now_window).unwrap();
    assert!(k > 0.0);
    // ...and the proxy runs on it without a restart.
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_k{scenario="default"}"#) == k
    }));
    assert_eq!(h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#), 1.0);
}

#[test]
fn follow_rewrites_the_table_as_windows_close() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = dir.path().join("k.yaml");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // 2-second windows: one closed long ago, logged on s20.
    let old = (now - 60_000) / 2000 * 2000 + 100;
    let first: Vec<LogRecord> = (0..200)
        .map(|i| record(old + (i % 100), i, "default", q(i), "s20"))
        .collect();
    write_lines(&logs.join("a.jsonl"), &first, "");
    let mut child = Command::new(bin())
        .args([
            "solve",
            "--follow",
            "--window",
            "2s",
            "--lateness",
            "200ms",
            "--format",
            "json",
            "--logs",
        ])
        .arg(&logs)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let table_k = |slot: usize| -> Option<f64> {
        let t = KTable::parse(&std::fs::read_to_string(&out).ok()?).ok()?;
        t.k(0, slot)
    };
    let slot_old = hydrus_filters::hydrus::ktable::window_of(old, 2);
    let want_old = {
        let i = instance(&first);
        solve_exact(&i, i.logged_budget()).k
    };
    let ok = eventually(Duration::from_secs(10), || {
        table_k(slot_old) == Some(want_old)
    });
    // A newer window with a smaller budget (logged on s10): its slot is rewritten once it closes.
    let start = (now / 2000 + 1) * 2000 + 100;
    let second: Vec<LogRecord> = (0..200)
        .map(|i| record(start + (i % 50), i, "default", q(i), "s10"))
        .collect();
    write_lines(&logs.join("b.jsonl"), &second, "");
    let slot_new = hydrus_filters::hydrus::ktable::window_of(start, 2);
    let want_new = {
        let i = instance(&second);
        solve_exact(&i, i.logged_budget()).k
    };
    let ok_new = eventually(Duration::from_secs(15), || {
        table_k(slot_new) == Some(want_new)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "the closed window was solved");
    assert!(ok_new, "the newly closed window was solved");
    assert!(want_new > want_old);
    assert_eq!(table_k(slot_old), Some(want_old), "other slots kept");
    // Each closed window's slot carries what the solver expected per request under its k.
    let t = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let i = instance(&second);
    let (cost, qoe) = i.live(want_new);
    let n = i.len() as f64;
    let got = t.expected_cost(0, slot_new).unwrap();
    assert!(
        (got - cost / n).abs() <= 1e-9 * got,
        "{got} vs {}",
        cost / n
    );
    let got = t.expected_qoe(0, slot_new).unwrap();
    assert!((got - qoe / n).abs() <= 1e-9 * got, "{got} vs {}", qoe / n);
}

#[test]
fn solve_follow_writes_a_table_at_start() {
    let up = Upstream::start("a");
    let h = Hydrus::start(&hydrus3_template(&up, "0", "{dir}/k.yaml"));
    send_users(&h, 50, "0.5");
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 50.0
    }));
    // The current 15-minute window is still open; --follow still writes a table at once.
    let out = h.path("followed.yaml");
    let mut child = Command::new(bin())
        .args(["solve", "--follow", "--logs"])
        .arg(h.path("logs"))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let written = eventually(Duration::from_secs(10), || out.exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(written, "a table within seconds, not at the window's close");
    let t = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(t.strategy_set().is_some());
}

/// One proxy, three routes logging to one directory: `rank` and `rank-b` decide with hydrus,
/// `search` only logs. The solver uses every record of the route it solves, skips the rest
/// and says why, and refuses two hydrus routes' records without `--route`.
#[test]
fn mixed_route_logs_lose_no_usable_record() {
    let up = Upstream::start("ranker");
    let template = Config::new()
        .cluster("ranker", &[up.addr])
        .route(
            route("rank", "ranker")
                .matching("{ path_prefix: /rank }")
                .filter(&rollout("0"))
                .filter(&hydrus3("{dir}/ktable.yaml"))
                .filter(&file_log()),
        )
        .route(
            route("rank-b", "ranker")
                .matching("{ path_prefix: /b }")
                .filter(&hydrus3("{dir}/ktable-b.yaml"))
                .filter(&file_log()),
        )
        .route(route("search", "ranker").filter(&file_log()))
        .template();
    let h = Hydrus::start(&template);
    let (ranks, searches, bs) = (300, 100, 40);
    for i in 0..ranks {
        let qv = format!("{:.3}", q(i));
        let user = format!("u{i}");
        let hs = [("x-user-id", user.as_str()), ("x-qoe-score", qv.as_str())];
        assert_eq!(get_with(&h.url("/rank"), &hs).unwrap().0, 200);
        if i % 3 == 0 {
            // A record with no decision after every third rank record: the newest, each time.
            assert_eq!(get_with(&h.url("/search"), &hs).unwrap().0, 200);
        }
        if i < bs {
            assert_eq!(get_with(&h.url("/b"), &hs).unwrap().0, 200);
        }
    }
    let total = (ranks + searches + bs) as f64;
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == total
    }));
    let logs = h.path("logs");
    let out = h.path("solved.yaml");
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("records of several routes with a hydrus filter: rank (300 records), rank-b (40 records)")
            && stderr.contains("--route NAME"),
        "{stderr}"
    );
    assert!(!out.exists());
    let o = solve(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--route",
        "rank",
        "--format",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped 100 with no hydrus decision")
            && stderr.contains("skipped 40 of another route than --route")
            && !stderr.contains("strategy set"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let solved: u64 = report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w.get("filled_from").is_none())
        .map(|w| w["records"].as_u64().unwrap())
        .sum();
    assert_eq!(solved, ranks);
}
