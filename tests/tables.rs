//! Hot reload of the config and the tables, through the real binary: a missing or stale k-table
//! falls back until a good one appears; rollout and k-table edits take effect within a second
//! under load; a bad config or k-table on reload (or a half-saved config) keeps the running one,
//! and a reload that drops a route or a filter says so; a k-table is polled from a URL with its
//! ETag, bound to its strategy set, and bounded in rows; an idle proxy does not reread its files
//! on the events of its own reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::KTable;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
fn a_half_saved_config_never_goes_live_and_a_dropped_filter_is_reported() {
    let up = Upstream::start("a");
    let h = start_strategies(&up, "100", "", &[("default", 0.004)]);
    let full = render(
        &strategy_template(&up, "100", ""),
        h.port,
        h.admin_port,
        h.dir.path(),
    );
    let edited = format!("# edited\n{full}");
    let cut = edited.find("filters:").unwrap();
    // Load during the write, from two threads.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (h.url("/rank"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            let t = Instant::now();
            while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(20) {
                let _ = get_with(&url, &[("x-user-id", "u"), ("x-qoe-score", "0.5")]);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    {
        // Written in place in two chunks, 50 ms apart, as some editors and tools do; the first
        // chunk alone is a valid config without any filter.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&h.config_path)
            .unwrap();
        f.write_all(&edited.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(&edited.as_bytes()[cut..]).unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reloads_total{result="ok"}"#) == 1.0
    }));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let n = load.join().unwrap();
    let seen = up.take();
    assert!(n > 10 && seen.len() >= n - 1);
    let bare = seen
        .iter()
        .filter(|s| s.header("x-hydrus-strategy").is_none())
        .count();
    assert_eq!(
        bare,
        0,
        "{bare} of {} requests were proxied without the hydrus filter",
        seen.len()
    );
    assert_eq!(
        h.metric(r#"hydrus_config_reload_dropped_total{kind="rollout"}"#),
        0.0
    );
    // A config that drops a running filter loads, and says so.
    let without_rollout = strategy_config(&up, None, "");
    h.rewrite_config(&without_rollout);
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_config_reload_dropped_total{kind="rollout"}"#) == 1.0
    }));
    assert!(h
        .log()
        .contains("the `rollout` filter that was running on route `default` is gone"));
}

/// Two routes deciding with a rollout, and a third passing through, on one cluster.
fn two_rollouts(up: &Upstream, feed_rollout: bool, extra: bool) -> String {
    let mut feed = route("feed", "a").matching("{ path_prefix: /feed }");
    if feed_rollout {
        feed = feed.filter(&rollout("100"));
    }
    let mut c = Config::new()
        .cluster("a", &[up.addr])
        .route(
            route("rank", "a")
                .matching("{ path_prefix: /rank }")
                .filter(&rollout("100"))
                .filter(&hydrus3("{dir}/ktable.yaml")),
        )
        .route(feed.filter(&hydrus3("{dir}/ktable.yaml")));
    if extra {
        c = c.route(route("extra", "a").matching("{ path_prefix: /extra }"));
    }
    c.route(route("rest", "a")).template()
}

#[test]
fn a_reload_that_drops_a_route_or_one_routes_filter_says_so() {
    let up = Upstream::start("a");
    let dir = with_file("ktable.yaml", &ktable(&[("default", 0.004)], None));
    let h = Hydrus::start_in(dir, &two_rollouts(&up, true, true));
    // `feed` loses its rollout while `rank` still runs one, and `extra` is gone: the set of
    // filter kinds running anywhere is the same, yet both are reported.
    h.rewrite_config(&two_rollouts(&up, false, false));
    assert!(
        eventually(Duration::from_secs(5), || {
            h.metric(r#"hydrus_config_reloads_total{result="ok"}"#) == 1.0
        }),
        "{}",
        h.log()
    );
    assert_eq!(
        h.metric(r#"hydrus_config_reload_dropped_total{kind="rollout"}"#),
        1.0
    );
    assert_eq!(
        h.metric(r#"hydrus_config_reload_dropped_total{kind="route"}"#),
        1.0
    );
    assert_eq!(
        h.metric(r#"hydrus_config_reload_dropped_total{kind="hydrus"}"#),
        0.0
    );
    let log = h.log();
    assert!(
        log.contains("the `rollout` filter that was running on route `feed` is gone"),
        "{log}"
    );
    assert!(
        log.contains("route `extra` that was running is gone"),
        "{log}"
    );
    assert!(!log.contains("on route `rank` is gone"), "{log}");
    // What stays runs as configured: `rank` still rolls out, `feed` decides for everyone.
    let (status, _) = get_with(
        &h.url("/feed"),
        &[("x-user-id", "u"), ("x-qoe-score", "0.5")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(up
        .take()
        .pop()
        .unwrap()
        .header("x-hydrus-strategy")
        .is_some());
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
    let h = Hydrus::start_in(dir, &hydrus3_template(&up, "100", "{dir}/k.yaml"));
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
    send_users(&h, 30, "0.6");
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
    send_users(&h, 10, "0.6");
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="ktable_mismatch"}"#),
        30.0,
        "no more mismatch once solved for these strategies"
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
    let h = Hydrus::start_in(dir, &hydrus3_template(&up, "100", "{dir}/k.yaml"));
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
        send_users(&h, 20, "0.5");
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

/// Bytes the process has read (through any read call), from /proc.
fn read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An idle proxy looks at its config and its k-table about once a second (and on a change),
/// not at every event its own reads of them raise in their directory (notify reports a file
/// being opened): that woke the reloader to read every file again 40-50 times a second, for
/// ever, a large k-table all of it each time. Nor does the poll read an unchanged table (its
/// stat says so), yet an edit that keeps its size and mtime is still seen (by its ctime).
#[test]
fn an_idle_proxy_does_not_reread_its_files_on_its_own_reads() {
    let up = Upstream::start("a");
    let mut table = ktable(&[("default", 0.004)], None);
    // (A comment makes the table large: rereads show in the bytes read.)
    table.push_str(&format!("# {}\n", "x".repeat(400_000)));
    let dir = with_ktable(&table);
    let h = Hydrus::start_in(dir, &hydrus3_template(&up, "100", "{dir}/k.yaml"));
    send_users(&h, 5, "0.6");
    // (A file's stamp is trusted from a second after its last change on.)
    std::thread::sleep(Duration::from_millis(2_500));
    let before = read_bytes(h.pid());
    std::thread::sleep(Duration::from_secs(3));
    let read = read_bytes(h.pid()) - before;
    // Not once: the table's stamp holds. (The poll read it whole once a second, 1.2 MB here;
    // the loop on its own reads 40 x that.)
    assert!(read < 300_000, "read {read} bytes in 3 idle seconds");

    // An edit in place of the same size, its mtime put back (as a restore or `cp -p` leaves
    // it): the ctime moved, so the table is read and reloaded.
    let path = h.path("k.yaml");
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let edited = table.replace("0.004", "0.002");
    assert_eq!(edited.len(), table.len());
    std::fs::write(&path, &edited).expect("edit");
    let f = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_modified(mtime).expect("mtime put back");
    drop(f);
    assert!(
        eventually(Duration::from_secs(5), || {
            h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#) >= 2.0
        }),
        "the edit in place was not reloaded"
    );
    // A change is still reloaded (that file events still wake the reloader within a second,
    // under load: rollout_and_k_table_edits_take_effect_within_a_second_under_load).
    write_atomic(&h.path("k.yaml"), &ktable(&[("default", 0.002)], None));
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="ok"}"#) >= 3.0
    }));
}
