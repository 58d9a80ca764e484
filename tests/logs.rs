//! Decision logs end to end: every proxied request becomes exactly one record, in files or in
//! Kafka; a stalled sink never fails a request, drops are counted, and nothing the queue
//! accepted is lost, including across SIGTERM; a failing sink gives up at SIGTERM in time and
//! says what it lost; a log file deleted or rotated away is replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::LogRecord;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// hydrus in front of `upstream`, half of the users in treatment, logging with `log` (the
/// `log` filter's fields, indented by 6 as under `  - log:`).
fn template(upstream: &Upstream, log: &str) -> String {
    let log: Vec<&str> = log
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    Config::new()
        .grace("1s", Some("5s"))
        .cluster("ranker", &[upstream.addr])
        .route(
            route("default", "ranker")
                .filter(&rollout("50"))
                .filter(&hydrus3("{dir}/ktable.yaml"))
                .filter(&format!("log:\n{}", log.join("\n"))),
        )
        .template()
}

fn start(upstream: &Upstream, log: &str) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ktable.yaml"),
        ktable(&[("default", 0.004)], None),
    )
    .unwrap();
    Hydrus::start_in(dir, &template(upstream, log))
}

/// Send `n` requests from `threads` threads with request ids `{prefix}-{i}`; returns each
/// request's status and latency.
fn send_n(h: &Hydrus, prefix: &str, n: usize, threads: usize) -> Vec<(u16, Duration)> {
    let prefix = prefix.to_string();
    requests(&h.url("/rank"), n, threads, move |i| {
        vec![
            ("x-request-id", format!("{prefix}-{i}")),
            ("x-user-id", format!("user-{}", i % 997)),
            ("x-device-id", "d1".to_string()),
            ("x-qoe-score", format!("{:.3}", (i % 100) as f64 / 100.0)),
        ]
    })
    .into_iter()
    .map(|s| (s.status, s.latency))
    .collect()
}

fn percentile(results: &[(u16, Duration)], p: f64) -> Duration {
    let mut lat: Vec<Duration> = results.iter().map(|r| r.1).collect();
    lat.sort();
    lat[((lat.len() as f64 - 1.0) * p) as usize]
}

/// Each record matches what the upstream saw for its request id.
fn assert_records_match(records: &[LogRecord], upstream: &Upstream, n: usize) {
    let seen: HashMap<String, Seen> = upstream
        .seen()
        .into_iter()
        .map(|s| (s.header("x-request-id").unwrap().to_string(), s))
        .collect();
    assert_eq!(seen.len(), n, "the upstream saw every request once");
    let mut ids = std::collections::HashSet::new();
    for r in records {
        assert!(
            ids.insert(r.request_id.clone()),
            "duplicate record {}",
            r.request_id
        );
        let s = seen
            .get(&r.request_id)
            .unwrap_or_else(|| panic!("no request {}", r.request_id));
        assert_eq!(
            Some(r.chosen.as_str()),
            s.header("x-hydrus-strategy"),
            "{}",
            r.request_id
        );
        assert_eq!(Some(r.group.as_str()), s.header("x-hydrus-group"));
        assert_eq!(Some(r.user_id.as_str()), s.header("x-user-id"));
        assert_eq!(r.device_id, "d1");
        assert_eq!(r.status, 200);
        assert!(r.upstream_ms.is_some());
        assert_eq!(r.value_info.len(), 3, "{r:?}");
        assert_eq!(r.k, Some(0.004.into()));
    }
    assert_eq!(records.len(), n, "exactly one record per request");
}

#[test]
fn file_sink_has_exactly_one_matching_record_per_request() {
    let up = Upstream::start("ranker");
    let h = start(&up, "      file:\n        dir: {dir}/logs\n        flush_interval: 200ms\n        rotate_bytes: 1048576");
    let n = 20_000;
    let results = send_n(&h, "req", n, 4);
    assert!(results.iter().all(|r| r.0 == 200));
    assert!(eventually(Duration::from_secs(30), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == n as f64
    }));
    assert_eq!(
        h.metric(r#"hydrus_log_records_total{result="dropped"}"#),
        0.0
    );
    let records = read_records(&h.path("logs"));
    assert_records_match(&records, &up, n);
    // Size rotation made several files, each a whole number of lines.
    let files = std::fs::read_dir(h.path("logs")).unwrap().count();
    assert!(files >= 3, "{files} files");
}

#[test]
fn a_stalled_file_sink_drops_and_counts_and_loses_nothing_it_accepted() {
    let up = Upstream::start("ranker");
    let h = start(
        &up,
        "      queue_capacity: 300\n      file:\n        dir: {dir}/logs\n        flush_interval: 100ms\n        rotate_bytes: 4096",
    );
    let normal = send_n(&h, "before", 500, 2);
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == 500.0
    }));
    // Stall the sink: the directory is moved away and a plain file takes its place, so the next
    // rotation cannot create a file (this works even as root, unlike a read-only directory).
    std::fs::rename(h.path("logs"), h.path("logs.moved")).unwrap();
    std::fs::write(h.path("logs"), b"in the way").unwrap();
    let stalled = send_n(&h, "stalled", 3000, 2);
    assert!(
        stalled.iter().all(|r| r.0 == 200),
        "every request served while the sink is stalled"
    );
    // Every request is counted once, accepted or dropped (the last pushes may still be on
    // their way when the responses are in: a record is pushed in the logging hook, after its
    // response is sent).
    let counted = || {
        h.metric(r#"hydrus_log_records_total{result="accepted"}"#)
            + h.metric(r#"hydrus_log_records_total{result="dropped"}"#)
    };
    assert!(
        eventually(Duration::from_secs(5), || counted() == 3500.0),
        "{}",
        counted()
    );
    let dropped = h.metric(r#"hydrus_log_records_total{result="dropped"}"#);
    assert!(dropped > 0.0, "drops counted");
    assert!(h.metric(r#"hydrus_log_sink_errors_total{kind="write"}"#) > 0.0);
    eprintln!(
        "latency p50/p99: normal {:?}/{:?}, sink stalled {:?}/{:?}",
        percentile(&normal, 0.5),
        percentile(&normal, 0.99),
        percentile(&stalled, 0.5),
        percentile(&stalled, 0.99)
    );
    // The sink is back: everything accepted is written, then new records flow again.
    std::fs::remove_file(h.path("logs")).unwrap();
    std::fs::create_dir(h.path("logs")).unwrap();
    let dropped = h.metric(r#"hydrus_log_records_total{result="dropped"}"#);
    let accepted = h.metric(r#"hydrus_log_records_total{result="accepted"}"#);
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == accepted
    }));
    let after = send_n(&h, "after", 200, 2);
    assert!(after.iter().all(|r| r.0 == 200));
    let accepted = accepted + 200.0;
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_log_records_total{result="written"}"#) == accepted
    }));
    assert_eq!(
        h.metric(r#"hydrus_log_records_total{result="dropped"}"#),
        dropped
    );
    let mut records = read_records(&h.path("logs"));
    records.extend(read_records(&h.path("logs.moved")));
    assert_eq!(records.len() as f64, accepted, "nothing accepted was lost");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.request_id.starts_with("after-"))
            .count(),
        200
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.request_id.starts_with("before-"))
            .count(),
        500
    );
}

#[test]
fn sigterm_drains_the_queue_before_exit() {
    let up = Upstream::start("ranker");
    // A long flush interval: records wait in the sink's buffer until shutdown.
    let mut h = start(
        &up,
        "      file:\n        dir: {dir}/logs\n        flush_interval: 1h",
    );
    let n = 3000;
    let results = send_n(&h, "req", n, 3);
    assert!(results.iter().all(|r| r.0 == 200));
    let written_before = h.metric(r#"hydrus_log_records_total{result="written"}"#);
    assert!(
        written_before < n as f64,
        "records are still buffered ({written_before})"
    );
    let status = h.terminate();
    assert!(status.success(), "clean exit: {status}\n{}", h.log());
    let records = read_records(&h.path("logs"));
    assert_records_match(&records, &up, n);
}

#[test]
fn sigterm_with_a_failing_sink_exits_in_time_and_counts_what_it_lost() {
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the log directory should be: every write fails, even as root.
    std::fs::write(dir.path().join("logs"), b"not a dir").unwrap();
    let t = pool_filtered(
        &[up.addr],
        "log:\n  queue_capacity: 50\n  drain_timeout: 1s\n  file:\n    dir: {dir}/logs",
    );
    let mut h = Hydrus::start_in(dir, &t);
    let sent = requests(&h.url("/"), 200, 2, |_| vec![]);
    assert!(sent.iter().all(|s| s.status == 200));
    // A record is pushed in the logging hook, after its response is sent: wait for the last.
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_log_records_total{result="accepted"}"#)
            + h.metric(r#"hydrus_log_records_total{result="dropped"}"#)
            >= 200.0
    }));
    let accepted = h.metric(r#"hydrus_log_records_total{result="accepted"}"#);
    assert!((50.0..=52.0).contains(&accepted), "{accepted}");
    let t0 = Instant::now();
    let status = h.terminate();
    assert!(status.success());
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let log = h.log();
    let line = log
        .lines()
        .find(|l| l.contains("accepted record(s) not written"))
        .unwrap_or_else(|| panic!("{log}"));
    let n: f64 = line
        .split(": ")
        .find_map(|p| p.split(' ').next().and_then(|w| w.parse().ok()))
        .unwrap();
    assert_eq!(n, accepted, "{line}");
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
    let h = Hydrus::start(&hydrus3_template(&up, "0", "{dir}/k.yaml"));
    let written = |n: f64| {
        eventually(Duration::from_secs(10), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == n
        })
    };
    send_users(&h, 20, "0.5");
    assert!(written(20.0));
    // Deleted by hand: the next records go to a new file, in the directory.
    for f in log_files(&h) {
        std::fs::remove_file(f).unwrap();
    }
    send_users(&h, 20, "0.5");
    assert!(written(40.0));
    assert_eq!(lines_in(&log_files(&h)), 20, "{}", h.log());
    // Renamed away, as logrotate does: the renamed file keeps what it had, a new one the rest.
    let current = log_files(&h);
    for f in &current {
        std::fs::rename(f, f.with_extension("jsonl.1")).unwrap();
    }
    send_users(&h, 20, "0.5");
    assert!(written(60.0));
    let now: Vec<_> = log_files(&h)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(lines_in(&now), 20);
    // SIGUSR1 reopens, as for nginx: a new file.
    let before = log_files(&h).len();
    h.signal("USR1");
    send_users(&h, 5, "0.5");
    assert!(written(65.0));
    assert_eq!(log_files(&h).len(), before + 1);
    assert!(h.log().contains("was moved or deleted"));
}

mod kafka {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;

    /// Read every message of `topic` from the start, until `want` or 30 s.
    fn consume(brokers: &str, topic: &str, want: usize) -> Vec<(String, LogRecord)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("test-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < want && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let rec: LogRecord = serde_json::from_slice(m.payload().unwrap()).unwrap();
                out.push((key, rec));
            }
        }
        // Anything beyond `want` would be a duplicate: look a little longer.
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let rec: LogRecord = serde_json::from_slice(m.payload().unwrap()).unwrap();
                out.push((String::new(), rec));
            }
        }
        out
    }

    fn kafka_log(b: &Broker, extra: &str) -> String {
        format!(
            "      queue_capacity: 300\n      kafka:\n        brokers: {}\n        topic: hydrus-logs\n        properties:\n          reconnect.backoff.max.ms: \"500\"\n{extra}",
            b.url()
        )
    }

    #[test]
    fn kafka_sink_has_exactly_one_matching_record_per_request() {
        let b = Broker::start();
        b.create_topic("hydrus-logs", 3);
        let up = Upstream::start("ranker");
        let h = start(&up, &kafka_log(&b, ""));
        let n = 10_000;
        let results = send_n(&h, "req", n, 4);
        assert!(results.iter().all(|r| r.0 == 200));
        assert!(eventually(Duration::from_secs(30), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == n as f64
        }));
        let got = consume(&b.url(), "hydrus-logs", n);
        for (key, r) in &got {
            assert!(key.is_empty() || *key == r.user_id, "keyed by user id");
        }
        let records: Vec<LogRecord> = got.into_iter().map(|(_, r)| r).collect();
        assert_records_match(&records, &up, n);
    }

    #[test]
    fn a_stopped_broker_drops_and_counts_and_a_restarted_one_gets_what_was_accepted() {
        let mut b = Broker::start();
        b.create_topic("hydrus-logs", 1);
        let up = Upstream::start("ranker");
        let h = start(
            &up,
            &kafka_log(&b, "          queue.buffering.max.messages: \"500\"\n"),
        );
        let first = send_n(&h, "first", 300, 2);
        assert!(first.iter().all(|r| r.0 == 200));
        assert!(eventually(Duration::from_secs(20), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == 300.0
        }));
        b.stop();
        let stalled = send_n(&h, "stalled", 3000, 2);
        assert!(
            stalled.iter().all(|r| r.0 == 200),
            "served while the broker is down"
        );
        // Every request is counted once, accepted or dropped (the last records of the load
        // may still be on their way to the queue when its responses are in: a record is
        // pushed in the logging hook, after its response is sent).
        let counted = || {
            h.metric(r#"hydrus_log_records_total{result="accepted"}"#)
                + h.metric(r#"hydrus_log_records_total{result="dropped"}"#)
        };
        assert!(
            eventually(Duration::from_secs(5), || counted() == 3300.0),
            "{}",
            counted()
        );
        let dropped = h.metric(r#"hydrus_log_records_total{result="dropped"}"#);
        assert!(dropped > 0.0, "drops counted");
        eprintln!(
            "latency with the broker down p50/p99: {:?}/{:?}",
            percentile(&stalled, 0.5),
            percentile(&stalled, 0.99)
        );
        // The broker comes back (empty: its storage was in memory).
        b.restart();
        b.create_topic("hydrus-logs", 1);
        let accepted = h.metric(r#"hydrus_log_records_total{result="accepted"}"#);
        assert!(
            eventually(Duration::from_secs(60), || {
                h.metric(r#"hydrus_log_records_total{result="written"}"#) == accepted
            }),
            "written {} of {accepted}",
            h.metric(r#"hydrus_log_records_total{result="written"}"#)
        );
        let after = send_n(&h, "after", 100, 2);
        assert!(after.iter().all(|r| r.0 == 200));
        let want = (accepted - 300.0) as usize + 100;
        let got = consume(&b.url(), "hydrus-logs", want);
        assert_eq!(
            got.len(),
            want,
            "everything accepted after the first 300 reached the new broker"
        );
        assert_eq!(
            got.iter()
                .filter(|(_, r)| r.request_id.starts_with("after-"))
                .count(),
            100
        );
    }

    #[test]
    fn solve_reads_the_topic_and_resumes_from_committed_offsets() {
        let b = Broker::start();
        b.create_topic("hydrus-logs", 2);
        let up = Upstream::start("ranker");
        let h = start(&up, &kafka_log(&b, ""));
        assert!(send_n(&h, "a", 400, 2).iter().all(|r| r.0 == 200));
        assert!(eventually(Duration::from_secs(20), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == 400.0
        }));
        let out = h.path("solved.yaml");
        let solve = || {
            std::process::Command::new(bin())
                .args(["solve", "--format", "json", "--group", "solver-a", "--logs"])
                .arg(format!("kafka://{}/hydrus-logs", b.url()))
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap()
        };
        let o = solve();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["read"]["records"], 400);
        assert!(hydrus_filters::KTable::parse(&std::fs::read_to_string(&out).unwrap()).is_ok());
        // New records: a second run reads only those.
        assert!(send_n(&h, "b", 150, 2).iter().all(|r| r.0 == 200));
        assert!(eventually(Duration::from_secs(20), || {
            h.metric(r#"hydrus_log_records_total{result="written"}"#) == 550.0
        }));
        let o = solve();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["read"]["records"], 150);
    }
}
