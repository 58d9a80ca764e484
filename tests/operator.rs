//! An operator's first week, as docs/operations.md walks it: shadow mode at 0%,
//! the first solve from the shadow logs, k-tables bound to their strategy set, log files moved
//! away by logrotate, and the small things (help, durations, process metrics). Real binary,
//! loopback only, every wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::KTable;
use std::process::Command;
use std::time::Duration;

/// Three strategies; at k = 0.004 a QoE of 0.6 makes s40 the argmax (see tests/proxy.rs).
fn template(up: &Upstream, percent: &str, ktable_path: &str) -> String {
    Config::new()
        .grace("1s", None)
        .cluster("pool", &[up.addr])
        .route(
            route("default", "pool")
                .filter(&rollout(percent))
                .filter(&hydrus3(ktable_path))
                .filter(&file_log()),
        )
        .template()
}

/// A test directory holding `table` as `k.yaml` (the templates' `{dir}/k.yaml`).
fn with_ktable(table: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.yaml"), table).unwrap();
    dir
}

fn send(h: &Hydrus, n: usize, q: &str) {
    for i in 0..n {
        let (status, _) = get_with(
            &h.url("/rank"),
            &[("x-user-id", &format!("user-{i}")), ("x-qoe-score", q)],
        )
        .unwrap();
        assert_eq!(status, 200);
    }
}

#[test]
fn shadow_mode_at_zero_percent_shows_what_hydrus_would_do() {
    let up = Upstream::start("a");
    let dir = with_ktable(&ktable(&[("default", 0.004)], None));
    let mut h = Hydrus::start_in(dir, &template(&up, "0", "{dir}/k.yaml"));
    send(&h, 40, "0.6");
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
    let t = template(&up, "0", "{dir}/k.yaml").replace(
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
    send(&h, 40, "0.6");
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

#[test]
fn a_k_table_for_other_strategies_is_not_used_until_solved_from_the_shadow_logs() {
    let up = Upstream::start("a");
    // A table solved for another strategy set (the shipped example, say).
    let foreign = ktable(&[("default", 0.004)], None).replace(
        "window_secs: 900\n",
        "window_secs: 900\nstrategy_set: 0123456789abcdef\n",
    );
    let dir = with_ktable(&foreign);
    let h = Hydrus::start_in(dir, &template(&up, "100", "{dir}/k.yaml"));
    // `hydrus check` says so, naming both sets.
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("solved for strategy set 0123456789abcdef") && err.contains("ktable_mismatch"),
        "{err}"
    );
    // Treatment falls back, counted with its own reason.
    send(&h, 30, "0.6");
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="ktable_mismatch"}"#),
        30.0
    );
    assert!(up
        .take()
        .iter()
        .all(|s| s.header("x-hydrus-strategy") == Some("s20")));
    // The first solve, from these logs, binds the table to this set; the proxy then uses it.
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 30.0
    }));
    let solved = Command::new(bin())
        .args(["solve", "--logs"])
        .arg(h.path("logs"))
        .arg("--out")
        .arg(h.path("k.yaml"))
        .output()
        .unwrap();
    assert!(
        solved.status.success(),
        "{}",
        String::from_utf8_lossy(&solved.stderr)
    );
    let table = KTable::parse(&std::fs::read_to_string(h.path("k.yaml")).unwrap()).unwrap();
    assert!(table
        .strategy_set()
        .is_some_and(|s| s != "0123456789abcdef"));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#) >= 2.0
    }));
    send(&h, 10, "0.6");
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="ktable_mismatch"}"#),
        30.0,
        "no more mismatch once solved for these strategies"
    );
}

#[test]
fn solve_follow_writes_a_table_at_start() {
    let up = Upstream::start("a");
    let h = Hydrus::start(&template(&up, "0", "{dir}/k.yaml"));
    send(&h, 50, "0.5");
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

fn log_files(h: &Hydrus) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(h.path("logs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn lines_in(paths: &[std::path::PathBuf]) -> usize {
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

#[test]
fn a_log_file_deleted_or_rotated_away_is_replaced() {
    let up = Upstream::start("a");
    let h = Hydrus::start(&template(&up, "0", "{dir}/k.yaml"));
    let written = |n: f64| {
        eventually(Duration::from_secs(10), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == n
        })
    };
    send(&h, 20, "0.5");
    assert!(written(20.0));
    // Deleted by hand: the next records go to a new file, in the directory.
    for f in log_files(&h) {
        std::fs::remove_file(f).unwrap();
    }
    send(&h, 20, "0.5");
    assert!(written(40.0));
    assert_eq!(lines_in(&log_files(&h)), 20, "{}", h.log());
    // Renamed away, as logrotate does: the renamed file keeps what it had, a new one the rest.
    let current = log_files(&h);
    for f in &current {
        std::fs::rename(f, f.with_extension("jsonl.1")).unwrap();
    }
    send(&h, 20, "0.5");
    assert!(written(60.0));
    let now: Vec<_> = log_files(&h)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(lines_in(&now), 20);
    // SIGUSR1 reopens, as for nginx: a new file.
    let before = log_files(&h).len();
    h.signal("USR1");
    send(&h, 5, "0.5");
    assert!(written(65.0));
    assert_eq!(log_files(&h).len(), before + 1);
    assert!(h.log().contains("was moved or deleted"));
}

#[test]
fn small_things_an_operator_meets() {
    // `help --help` and `help COMMAND` work.
    let out = Command::new(bin())
        .args(["help", "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["help", "solve"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: hydrus solve"));
    // A bad duration says what durations look like; sub-second shutdown times are refused,
    // not rounded.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.yaml");
    let base = "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: a\n";
    std::fs::write(&path, format!("{base}shutdown:\n  grace_period: 1500ms\n")).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(":8:") && err.contains("not whole seconds"),
        "{err}"
    );
    std::fs::write(&path, format!("{base}shutdown:\n  grace_period: soon\n")).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("durations are written like 500ms, 2s"),
        "{err}"
    );
    // `simulate` without --out writes nothing where it is run.
    let out = Command::new(bin())
        .args(["simulate", "--hedge", "--requests", "2000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("benches").exists());
    // The process's own metrics, for the open-files alert; and the log sink named at start.
    let up = Upstream::start("a");
    let h = Hydrus::start(&template(&up, "0", "{dir}/k.yaml"));
    let metrics = h.metrics();
    for m in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(m), "{m}");
    }
    assert!(
        h.log().contains("decision log: JSON-lines files in"),
        "{}",
        h.log()
    );
}

/// Resident memory of a process, from /proc (kB).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A k-table of `rows` scenarios (`s0`, `s1`, ... and `default`), one window a day.
fn wide_ktable(rows: usize) -> String {
    let mut t = String::from("window_secs: 86400\nscenarios:\n  default: [0.004]\n");
    for i in 0..rows - 1 {
        t.push_str(&format!("  s{i}: [0.004]\n"));
    }
    t
}

/// A k-table is bounded: one with more rows than a proxy keeps is refused (the running one
/// kept, memory unchanged), and the series of rows a smaller table no longer has are gone.
#[test]
fn a_k_table_with_too_many_rows_is_refused_and_gone_rows_leave_no_series() {
    let up = Upstream::start("a");
    let dir = with_ktable(&wide_ktable(200));
    let h = Hydrus::start_in(dir, &template(&up, "100", "{dir}/k.yaml"));
    for i in 0..200 {
        let scenario = if i == 0 {
            "default".to_string()
        } else {
            format!("s{}", i - 1)
        };
        let headers = [
            ("x-user-id", "u"),
            ("x-qoe-score", "0.6"),
            ("x-scenario", scenario.as_str()),
        ];
        assert_eq!(get_with(&h.url("/rank"), &headers).unwrap().0, 200);
    }
    let series = |m: &str, name: &str| m.lines().filter(|l| l.starts_with(name)).count();
    assert!(eventually(Duration::from_secs(5), || {
        series(&h.metrics(), "hydrus_k{") == 200
    }));
    let before = rss_kb(h.pid());
    let big = wide_ktable(50_001);
    assert!(big.len() > 700_000, "{}", big.len());
    write_atomic(&h.path("k.yaml"), &big);
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="error"}"#) == 1.0
    }));
    assert!(
        h.log().contains("50001 scenarios: at most 256"),
        "{}",
        h.log()
    );
    let m = h.metrics();
    assert_eq!(series(&m, "hydrus_k{"), 200, "the running table is kept");
    // Parsing it took memory for a moment; it is given back (jemalloc returns freed pages
    // within its decay time, 10 s, while the proxy serves).
    let peak = rss_kb(h.pid());
    let returned = eventually(Duration::from_secs(20), || {
        send(&h, 20, "0.5");
        rss_kb(h.pid()) < before + 8 * 1024
    });
    let after = rss_kb(h.pid());
    eprintln!(
        "RSS before the 50,001-row table: {before} kB, just after: {peak} kB, then: {after} kB"
    );
    assert!(returned, "RSS {before} kB before, {after} kB after");
    // A one-row table replaces the 200-row one: the other rows' series go.
    write_atomic(&h.path("k.yaml"), &ktable(&[("default", 0.004)], None));
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#) == 2.0
    }));
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = h.metrics();
            series(&m, "hydrus_k{") == 1
                && !m.contains("scenario=\"s7\"")
                && m.contains("hydrus_requests_total{")
        }),
        "{}",
        h.metrics()
    );
}

/// The README's first command on a machine that has only the binary: `hydrus serve` with no
/// config file anywhere runs the default built into it (the demo ranker behind the proxy, on
/// 127.0.0.1:8080, 8081 and 9901), and `hydrus check` checks that one.
#[test]
fn the_embedded_default_config_runs_where_there_is_no_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let check = Command::new(bin())
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "OK: the embedded default config (as config/hydrus.yaml)"
    );
    let log_path = dir.path().join("hydrus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut h = Hydrus {
        config_path: dir.path().join("config/hydrus.yaml"),
        dir,
        port: 8080,
        admin_port: 9901,
        child: Some(child),
        log_path,
        nofile: None,
    };
    h.wait_ready();
    let (status, body) = get_with(
        &h.url("/rank"),
        &[("x-user-id", "carol"), ("x-qoe-score", "0.1")],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // No k-table here yet (config/ktable.yaml, which `hydrus solve` writes): the default.
    assert!(body.contains("\"strategy\":\"s20\""), "{body}");
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_fallback_total{reason="no_ktable"}"#) == 1.0
    }));
    assert!(
        h.log().contains("running the embedded default config"),
        "{}",
        h.log()
    );
    // Its log files go where the default config says, relative to config/: ./logs.
    h.terminate();
    assert_eq!(read_records(&h.path("logs")).len(), 1);
}

/// `hydrus check` may run where the proxy does not (a CI box): an endpoint name that does
/// not resolve there is a warning, not an error.
#[test]
fn check_warns_about_an_endpoint_name_that_does_not_resolve_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"ranker.invalid:8080\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "clusters.a.endpoints[0]: `ranker.invalid:8080` does not resolve on this machine"
        ),
        "{said}"
    );
    // What is not a host name at all is still an error.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"ranker invalid\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
