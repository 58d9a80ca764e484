//! Operations: Prometheus (rules, live metrics, a real scrape, the dashboard's queries), graceful
//! upgrade and shutdown, and the reliability suite (soak, faults, bad input). Loopback only;
//! every load bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// hydrus in front of the `pool` cluster (and `slow`, when given, for the `heavy` strategy),
/// with `percent` of users in treatment.
fn template(upstreams: &[&Upstream], slow: Option<&Upstream>, percent: u32) -> String {
    let endpoints: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let mut hydrus = hydrus3("{dir}/ktable.yaml");
    let mut c = Config::new()
        .grace("2s", Some("3s"))
        .shutdown("pid_file: {dir}/hydrus.pid")
        .cluster_with(
            "pool",
            &endpoints,
            "    connect_timeout: 300ms\n    outlier: { base_ejection_time: 300ms, max_ejection_time: 1s }",
        );
    if let Some(slow) = slow {
        c = c.cluster_with("slow", &[slow.addr], "    read_timeout: 300ms");
        hydrus.push_str("\n    - { name: heavy, cost: 50, cluster: slow }");
    }
    c.route(
        route("default", "pool")
            .filter(&rollout(&percent.to_string()))
            .filter(&hydrus)
            .filter("log:\n  file:\n    dir: {dir}/logs"),
    )
    .template()
}

fn start(upstreams: &[&Upstream]) -> Hydrus {
    start_percent(upstreams, None, 50)
}

fn start_percent(upstreams: &[&Upstream], slow: Option<&Upstream>, percent: u32) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ktable.yaml"),
        ktable(&[("default", 0.004)], None),
    )
    .unwrap();
    Hydrus::start_in(dir, &template(upstreams, slow, percent))
}

/// Steady load from `threads` threads until stopped (at most `limit`); counts statuses.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, threads: usize, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + limit;
                    let url = format!("http://127.0.0.1:{port}/rank");
                    for i in 0..5_000_000u64 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            return;
                        }
                        let user = format!("u{t}-{}", i % 5000);
                        let q = format!("{:.2}", (i % 100) as f64 / 100.0);
                        let headers = [("x-user-id", user.as_str()), ("x-qoe-score", q.as_str())];
                        match get_with(&url, &headers) {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((s, b)) => failed.lock().unwrap().push(format!("{s} {b}")),
                            Err(e) => failed.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            Arc::try_unwrap(self.failed).unwrap().into_inner().unwrap(),
        )
    }
}

fn promtool() -> std::path::PathBuf {
    which("promtool").expect("promtool is not installed: run `bash .ci/install test`")
}

#[test]
fn promtool_accepts_the_rules_and_the_live_metrics() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(format!("{ROOT}/config/prometheus-rules.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the spend controller on: every family the proxy can export is in the text.
    let up = Upstream::start("a");
    let h = start_with_spend_control(&up);
    for i in 0..40 {
        get_with(
            &h.url("/"),
            &[("x-user-id", &format!("u{i}")), ("x-qoe-score", "0.5")],
        )
        .unwrap();
        if i == 19 {
            // Past the loop's period: the next request updates it.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    assert!(
        h.metrics().contains("hydrus_spend_correction{"),
        "{}",
        h.metrics()
    );
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(h.metrics().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn query(prom: u16, q: &str) -> serde_json::Value {
    let url = format!(
        "http://127.0.0.1:{prom}/api/v1/query?query={}",
        q.bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let (status, body) = get(&url).unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// As [`start`], with the spend controller on (a cap) and a k-table that carries the solver's
/// expectation: every dashboard query has its series.
fn start_with_spend_control(up: &Upstream) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    let row = vec!["10"; 96].join(", ");
    let table = format!(
        "{}expected:\n  default:\n    cost_per_request: [{row}]\n",
        ktable(&[("default", 0.004)], None)
    );
    std::fs::write(dir.path().join("ktable.yaml"), table).unwrap();
    let t = template(&[up], None, 50).replace(
        "qoe_scale: 1.08 }",
        "qoe_scale: 1.08 }\n          spend_control: { scenarios: { default: { max_cost_per_second: 100000 } } }",
    );
    Hydrus::start_in(dir, &t)
}

#[test]
fn prometheus_scrapes_hydrus_and_every_dashboard_query_answers() {
    let up = Upstream::start("a");
    let h = start_with_spend_control(&up);
    let load = Load::start(h.port, 2, Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{ROOT}/config/prometheus-rules.yaml\"]\nscrape_configs:\n  - job_name: hydrus\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            h.admin_port
        ),
    )
    .unwrap();
    let prometheus =
        which("prometheus").expect("prometheus is not installed: run `bash .ci/install test`");
    let mut prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let answered = eventually(Duration::from_secs(40), || {
        get(&format!("http://127.0.0.1:{prom_port}/-/ready")).is_ok_and(|r| r.0 == 200)
            && query(prom_port, "sum(rate(hydrus_requests_total[10s]))")["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
    });
    let (ok, failed) = load.finish();
    assert!(
        answered,
        "prometheus scraped hydrus and a rate query answered"
    );
    assert!(ok > 0 && failed.is_empty(), "{failed:?}");
    // Every query of the Grafana dashboard is valid PromQL and names real metrics.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let metrics = h.metrics();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            let v = query(prom_port, &expr);
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let name = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|w| w.starts_with("hydrus_") || w.starts_with("process_"))
                .unwrap();
            let base = name.trim_end_matches("_bucket");
            assert!(metrics.contains(base), "{name} is exported");
            n += 1;
        }
    }
    assert!(n >= 10);
    assert!(!query(
        prom_port,
        "sum by (strategy) (rate(hydrus_requests_total[1m]))"
    )["data"]["result"]
        .as_array()
        .unwrap()
        .is_empty());
    // The alerting rules loaded and evaluate.
    let (status, body) = get(&format!("http://127.0.0.1:{prom_port}/api/v1/rules")).unwrap();
    assert_eq!(status, 200);
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(list.len(), 17);
    let _ = prom.kill();
    let _ = prom.wait();
}

#[test]
fn graceful_upgrade_loses_no_request_of_clients_that_never_retry() {
    use std::os::unix::fs::FileTypeExt;
    let up = Upstream::start("a");
    let mut serving = start(&[&up]);
    // The config's pid file and upgrade socket (in the first process's directory).
    let (pid_path, sock) = (serving.path("hydrus.pid"), serving.path("upgrade.sock"));
    // 300 requests per second over kept-alive connections, never retried.
    let load = KeepAliveLoad::start(
        serving.port,
        6,
        Duration::from_millis(20),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    // docs/operations.md's sequence, twice in a row: the second upgrade is where a socket left over
    // from the first would be mistaken for the new process being ready.
    let mut retired = Vec::new();
    for round in 0..2 {
        let old_pid: u32 = std::fs::read_to_string(&pid_path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(old_pid, serving.pid());
        eprintln!(
            "DEBUG round {round}: socket there before rm: {}",
            sock.exists()
        );
        match std::fs::remove_file(&sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("rm {}: {e}", sock.display()),
        }
        let mut new = Hydrus {
            dir: tempfile::tempdir().unwrap(),
            config_path: serving.config_path.clone(),
            port: serving.port,
            admin_port: serving.admin_port,
            child: None,
            log_path: pid_path.with_file_name(format!("new-{round}.log")),
            nofile: None,
        };
        new.spawn(true);
        // The new process is ready for the sockets once it has made its own.
        assert!(
            eventually(Duration::from_secs(10), || {
                std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket())
            }),
            "round {round}: no upgrade socket\n{}",
            new.log()
        );
        serving.signal("QUIT");
        let signalled = Instant::now();
        let status = serving.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "round {round}: old exits cleanly: {status}"
        );
        // docs/operations.md's bound: pingora's fixed 5 s after handing the listeners over, then
        // grace_period (2 s) + shutdown.timeout (3 s) + log.drain_timeout (10 s); 1 s to spare.
        let took = signalled.elapsed();
        assert!(
            took <= Duration::from_secs(5 + 2 + 3 + 10 + 1),
            "round {round}: the old process took {took:?} to exit"
        );
        assert!(
            took >= Duration::from_secs(5 + 2),
            "round {round}: exited after {took:?}: the close wait and the grace period"
        );
        // The new process serves (it also took the admin listener over).
        assert!(
            eventually(Duration::from_secs(10), || {
                std::fs::read_to_string(&pid_path).is_ok_and(|p| p.trim() == new.pid().to_string())
            }),
            "round {round}: {}",
            new.log()
        );
        // The first process's directory holds the config: keep it until the end.
        retired.push(std::mem::replace(&mut serving, new));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let r = load.finish();
    assert!(
        r.lost.is_empty() && r.other.is_empty() && r.refused == 0,
        "no request lost across the upgrades: {r:?}"
    );
    assert!(r.ok > 300, "{} requests", r.ok);
    let (status, _) = get_with(&serving.url("/"), &[("x-user-id", "x")]).unwrap();
    assert_eq!(status, 200);
    serving.terminate();
    drop(retired);
}

#[test]
fn sigterm_answers_every_request_sent_on_a_kept_alive_connection() {
    let up = Upstream::start("a");
    let mut h = start(&[&up]);
    let load = KeepAliveLoad::start(
        h.port,
        6,
        Duration::from_millis(20),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500));
    h.signal("TERM");
    let status = h.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(200));
    let r = load.finish();
    // Kept-alive connections are drained (their next request answered with `Connection:
    // close`), so no request sent on one goes unanswered; new connections are refused once the
    // listener is closed, before anything is sent.
    assert!(r.lost.is_empty() && r.other.is_empty(), "{r:?}");
    assert!(
        r.ok > 50 && r.refused > 0,
        "{} answered, {} refused",
        r.ok,
        r.refused
    );
    assert!(
        !h.path("hydrus.pid").exists(),
        "the pid file is removed on exit"
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::start("slow");
    up.delay_ms.store(1500, Ordering::SeqCst);
    let mut h = start(&[&up]);
    let url = h.url("/");
    let inflight = std::thread::spawn(move || get_with(&url, &[("x-user-id", "u")]));
    std::thread::sleep(Duration::from_millis(400));
    h.signal("TERM");
    let r = inflight.join().unwrap();
    assert_eq!(r.map(|r| r.0), Ok(200), "the in-flight request finished");
    let status = h.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // Its log record was written before exit.
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 200);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn soak_a_minute_of_load_without_error_and_memory_flat() {
    let up = Upstream::start("a");
    let h = start(&[&up]);
    let load = Load::start(h.port, 3, Duration::from_secs(70));
    std::thread::sleep(Duration::from_secs(10));
    let warm = rss_kib(h.pid());
    let mut samples = vec![warm];
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(10));
        samples.push(rss_kib(h.pid()));
    }
    let (ok, failed) = load.finish();
    let end = *samples.last().unwrap();
    eprintln!("soak: {ok} requests; RSS KiB every 10 s: {samples:?}");
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 1000);
    assert!(
        end <= warm + 16 * 1024,
        "memory grew from {warm} KiB to {end} KiB"
    );
    // A record is pushed (accepted or dropped) in the logging hook, after its response is
    // sent: wait for the last requests' before reading the drops.
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_log_records_total{result="accepted"}"#)
            + h.metric(r#"hydrus_log_records_total{result="dropped"}"#)
            >= ok as f64
    }));
    assert_eq!(
        h.metric(r#"hydrus_log_records_total{result="dropped"}"#),
        0.0
    );
}

#[test]
fn faults_are_survived_and_counted() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let slow = Upstream::start("slow");
    slow.delay_ms.store(1000, Ordering::SeqCst);
    let h = start_percent(&[&a, &b], Some(&slow), 100);
    let send = |q: &str| {
        get_with(&h.url("/"), &[("x-user-id", "u1"), ("x-qoe-score", q)])
            .unwrap()
            .0
    };

    // An endpoint dies: its cluster's other endpoint takes every request.
    let a_addr = a.addr;
    a.stop();
    for _ in 0..20 {
        assert_eq!(send("0.5"), 200);
    }
    assert!(h.metric(r#"hydrus_upstream_errors_total{cluster="pool",kind="connect"}"#) >= 1.0);
    // It failed five times in a row: ejected (for 300 ms here), retried elsewhere meanwhile.
    assert!(
        h.metric(&format!(
            "hydrus_outlier_ejections_total{{cluster=\"pool\",endpoint=\"{a_addr}\"}}"
        )) >= 1.0
    );
    // ...and comes back on the same address: once its ejection ends, it gets traffic again.
    let a = Upstream::start_on("a", &a_addr.to_string());
    assert!(
        eventually(Duration::from_secs(3), || {
            assert_eq!(send("0.5"), 200);
            a.count() > 0
        }),
        "the restarted endpoint is used again"
    );

    // An upstream slower than its read timeout: 504, counted; others unaffected.
    assert_eq!(send("heavy=0.9"), 504);
    assert_eq!(
        h.metric(r#"hydrus_upstream_errors_total{cluster="slow",kind="timeout"}"#),
        1.0
    );
    assert_eq!(send("0.5"), 200);

    // The k-table is deleted: the last good one stays in use; the failure is counted.
    std::fs::remove_file(h.path("ktable.yaml")).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="error"}"#) == 1.0
    }));
    let before = b.count() + a.count();
    assert_eq!(
        get_with(
            &h.url("/"),
            &[
                ("x-user-id", "user-7"),
                ("x-qoe-score", "0.9"),
                ("x-scenario", "default")
            ]
        )
        .unwrap()
        .0,
        200
    );
    assert_eq!(b.count() + a.count(), before + 1);
    assert_eq!(h.metric("hydrus_ktable_loaded"), 1.0);
    assert_eq!(
        h.metric(r#"hydrus_fallback_total{reason="no_ktable"}"#),
        0.0
    );
    // A corrupt one: same.
    std::fs::write(h.path("ktable.yaml"), "window_secs: banana\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_ktable_reloads_total{result="error"}"#) == 2.0
    }));
    assert_eq!(h.metric("hydrus_ktable_loaded"), 1.0);
    assert!(!h.log().contains("panicked"));
}

#[test]
fn bad_input_gets_a_4xx_or_the_default_never_a_crash() {
    let up = Upstream::start("a");
    let h = start(&[&up]);
    let four_xx = |what: &str, bytes: Vec<u8>| {
        let answer = raw_request(h.port, &bytes);
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{what}: {:?}",
            &answer[..answer.len().min(80)]
        );
    };
    four_xx(
        "binary garbage",
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n".to_vec(),
    );
    four_xx("malformed request line", b"GET\r\n\r\n".to_vec());
    four_xx(
        "NUL in a header",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-qoe-score: 0.\x005\r\n\r\n".to_vec(),
    );
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 2 << 20));
    big.extend(b"\r\n\r\n");
    four_xx("a 2 MiB header", big);
    let mut many = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..300 {
        many.extend(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    four_xx("300 headers", many);
    // A long but legal query string: served from the default strategy, the query kept.
    let q: String = (0..500).map(|i| format!("p{i}=v{i}&")).collect();
    let (status, _) = get_with(
        &h.url(&format!("/rank?{q}")),
        &[("x-user-id", "u"), ("x-qoe-score", "garbage")],
    )
    .unwrap();
    assert_eq!(status, 200);
    let seen = up.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-hydrus-strategy"), Some("s20"));
    assert_eq!(last.query.len(), 500);

    // Slow clients (slowloris) trickling headers do not keep others from being served.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
        slow.push(s);
    }
    for round in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(format!("x-slow-{round}: 1\r\n").as_bytes());
        }
        for i in 0..10 {
            let (status, _) = get_with(&h.url("/"), &[("x-user-id", &format!("n{i}"))]).unwrap();
            assert_eq!(status, 200);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(slow);
    assert_eq!(get(&format!("{}/ready", h.admin())).unwrap().0, 200);
    assert!(!h.log().contains("panicked"), "{}", h.log());
}
