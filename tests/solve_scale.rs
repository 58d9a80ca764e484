//! `hydrus solve` at fleet scale, as a user runs it: the k-table's expectation per request,
//! partial solves (`--emit-summary`) merged (`--merge`) into the table one process would write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::hydrus::ktable::Row;
use hydrus_filters::{KTable, LogRecord, ValueInfo};
use hydrus_solve::hydrus::algo::{solve_exact, Instance};
use std::path::Path;
use std::process::Command;

const STRATEGIES: [(&str, f64, f64); 4] = [
    ("s10", 6.0, 0.9),
    ("s20", 10.0, 1.0),
    ("s30", 14.0, 1.05),
    ("s40", 18.0, 1.08),
];

fn record(ts_ms: u64, i: u64, scenario: &str, chosen: &str) -> LogRecord {
    // Deterministic QoE spread over (0, 1), with a per-strategy wobble (distinct efficiencies).
    let q = spread_q(i);
    let wobble = ((i * 104_729) % 997) as f64 / 997.0 * 0.02;
    LogRecord {
        ts_ms,
        request_id: format!("r{i}"),
        user_id: format!("u{i}"),
        scenario: scenario.into(),
        group: "control".into(),
        chosen: chosen.into(),
        value_info: STRATEGIES
            .iter()
            .enumerate()
            .map(|(j, (name, cost, scale))| ValueInfo {
                strategy: name.to_string(),
                cost: (*cost).into(),
                qoe: q * scale * (1.0 + wobble * j as f64),
            })
            .collect(),
        status: 200,
        upstream_ms: Some(1.0),
        ..Default::default()
    }
}

fn instance(records: &[&LogRecord]) -> Instance {
    let mut inst = Instance::new();
    for r in records {
        let opts: Vec<(f64, f64)> = r
            .value_info
            .iter()
            .map(|v| (v.cost.total(), v.qoe))
            .collect();
        let chosen = r.value_info.iter().position(|v| v.strategy == r.chosen);
        inst.push(&opts, chosen.map(|j| j as u32));
    }
    inst
}

/// Three hosts' logs: windows 4 and 9 of scenario default over two days, window 20 of feed.
fn fleet_logs(dir: &Path) -> Vec<Vec<LogRecord>> {
    let day = 86_400_000u64;
    let choices = ["s10", "s20", "s30", "s40"];
    (0..3u64)
        .map(|host| {
            let recs: Vec<LogRecord> = (0..400u64)
                .map(|j| {
                    let i = host * 1000 + j;
                    let (scenario, window) = match j % 5 {
                        0 => ("feed", 20),
                        1 | 2 => ("default", 9),
                        _ => ("default", 4),
                    };
                    let ts = (j % 2) * day + window * 900_000 + j;
                    record(ts, i, scenario, choices[(i % 4) as usize])
                })
                .collect();
            write_records(&dir.join(format!("host{host}.jsonl")), &recs);
            recs
        })
        .collect()
}

/// A table's file without when it was written.
fn table_file(path: &Path) -> hydrus_filters::hydrus::ktable::KTableFile {
    let mut f = KTable::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .to_file();
    f.generated_at_ms = None;
    f
}

#[test]
fn the_table_carries_and_the_report_prints_the_expected_cost_and_qoe_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = fleet_logs(dir.path());
    let out = dir.path().join("k.yaml");
    let o = solve_ok(&[
        "--logs",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let table = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let d = table.scenario_index(b"default").unwrap();
    let all: Vec<&LogRecord> = hosts.iter().flatten().collect();
    for w in [4usize, 9] {
        let recs: Vec<&LogRecord> = all
            .iter()
            .copied()
            .filter(|r| r.scenario == "default" && (r.ts_ms % 86_400_000) / 900_000 == w as u64)
            .collect();
        let inst = instance(&recs);
        let want = solve_exact(&inst, inst.logged_budget());
        assert_eq!(table.k(d, w), Some(want.k));
        let (cost, qoe) = inst.live(want.k);
        let n = inst.len() as f64;
        let got_cost = table.expected_cost(d, w).unwrap();
        let got_qoe = table.expected_qoe(d, w).unwrap();
        assert!((got_cost - cost / n).abs() <= 1e-9 * got_cost, "{got_cost}");
        assert!((got_qoe - qoe / n).abs() <= 1e-9 * got_qoe, "{got_qoe}");
        let rep = report["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scenario"] == "default" && r["window"] == w)
            .unwrap();
        assert_eq!(rep["cost_per_request"].as_f64(), Some(got_cost));
        assert_eq!(rep["qoe_per_request"].as_f64(), Some(got_qoe));
        assert_eq!(rep["exact"], true);
    }
    // A window without records carries the nearest solved window's expectation (5 is nearer 4).
    assert_eq!(table.expected_cost(d, 5), table.expected_cost(d, 4));
    assert_eq!(table.expected_qoe(d, 5), table.expected_qoe(d, 4));
    assert_eq!(table.expected_cost(d, 8), table.expected_cost(d, 9));

    // The people's table prints them.
    let o = solve_ok(&[
        "--logs",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("cost/req") && header.contains("QoE/req"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("default") && l.contains("01:00"))
        .unwrap();
    let cost = format!("{:.4}", table.expected_cost(d, 4).unwrap());
    assert!(line.contains(&cost), "{line} lacks {cost}");
}

#[test]
fn summaries_of_each_host_merge_into_the_single_process_table() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    fleet_logs(&logs);
    let single = dir.path().join("single.yaml");
    solve_ok(&[
        "--logs",
        logs.to_str().unwrap(),
        "--out",
        single.to_str().unwrap(),
    ]);
    let mut parts = Vec::new();
    for host in 0..3 {
        let part = dir.path().join(format!("host{host}.summary.json"));
        let file = logs.join(format!("host{host}.jsonl"));
        solve_ok(&[
            "--logs",
            file.to_str().unwrap(),
            "--emit-summary",
            part.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&part).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["format"], "hydrus-solve-summary");
        assert_eq!(v["version"], 1);
        parts.push(part.to_str().unwrap().to_string());
    }
    let merged = dir.path().join("merged.yaml");
    let mut args = vec!["--out", merged.to_str().unwrap(), "--merge"];
    args.extend(parts.iter().map(String::as_str));
    let o = solve_ok(&args);
    assert!(String::from_utf8_lossy(&o.stderr).contains("read 1200 records"));
    // The same k, bit for bit; the expectations up to the order the sums were added in.
    let (m, s) = (table_file(&merged), table_file(&single));
    assert_eq!(m.scenarios, s.scenarios);
    assert_eq!(
        m.expected.keys().collect::<Vec<_>>(),
        s.expected.keys().collect::<Vec<_>>()
    );
    for (name, e) in &s.expected {
        let me = &m.expected[name];
        let one = |r: &Row<Option<f64>>| match r {
            Row::One(v) => v.clone(),
            Row::Many(_) => panic!("one resource"),
        };
        for (a, b) in [
            (&one(&me.cost_per_request), &one(&e.cost_per_request)),
            (&me.qoe_per_request, &e.qoe_per_request),
        ] {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (x.unwrap(), y.unwrap());
                assert!((x - y).abs() <= 1e-12 * y.abs(), "{name}: {x} vs {y}");
            }
        }
    }

    // Another version of the format is refused, naming the file.
    let text = std::fs::read_to_string(&parts[0]).unwrap();
    std::fs::write(&parts[0], text.replace("\"version\":1", "\"version\":9")).unwrap();
    let o = Command::new(bin())
        .args(["solve", "--out", merged.to_str().unwrap(), "--merge"])
        .args(&parts)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("host0.summary.json") && err.contains("version 9"),
        "{err}"
    );
}

/// Several `solve --follow` in one consumer group: they split the log topic's partitions,
/// publish per-partition summaries to a compacted topic, and each writes the table one
/// process would; a member that dies leaves its partitions to the others, nothing lost.
mod group {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::collections::{BTreeMap, BTreeSet};
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const WINDOW_MS: u64 = 10_000;
    const PARTITIONS: i32 = 4;

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// Now, once it is at most 6 s into a window: records stamped with it reach the topic well
    /// before their window closes (a record that comes after is late, and dropped).
    fn early_in_a_window() -> u64 {
        while now_ms() % WINDOW_MS > 6_000 {
            std::thread::sleep(Duration::from_millis(100));
        }
        now_ms()
    }

    /// A member: `solve --follow` in group `g`, its log in `err`.
    fn member(b: &Broker, out: &Path, err: &Path) -> Child {
        Command::new(bin())
            .args(["solve", "--follow", "--window", "10s", "--lateness", "1s"])
            .args(["--group", "g", "--logs"])
            .arg(format!("kafka://{}/logs", b.url()))
            .arg("--summaries")
            .arg(format!("kafka://{}/summaries", b.url()))
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(err).unwrap())
            .spawn()
            .unwrap()
    }

    /// `n` records stamped from `ts`, `step` ms apart, spread over the partitions.
    fn produce(b: &Broker, from: u64, ts: u64, step: u64, n: u64) -> Vec<LogRecord> {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", b.url())
            .create()
            .unwrap();
        let choices = ["s10", "s20", "s30", "s40"];
        let recs: Vec<LogRecord> = (from..from + n)
            .map(|i| {
                record(
                    ts + (i - from) * step,
                    i,
                    "default",
                    choices[(i % 4) as usize],
                )
            })
            .collect();
        for (i, r) in recs.iter().enumerate() {
            let mut buf = Vec::new();
            r.encode_into(&mut buf);
            let key = r.user_id.clone();
            p.send(
                BaseRecord::to("logs")
                    .partition(i as i32 % PARTITIONS)
                    .key(&key)
                    .payload(buf.strip_suffix(b"\n").unwrap()),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
        recs
    }

    /// Traffic that never stops: a record of `scenario` every 20 ms, stamped now, over the
    /// first `partitions` partitions of `logs`, until [`Steady::stop`].
    struct Steady {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        produced: std::sync::Arc<std::sync::Mutex<Vec<LogRecord>>>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Steady {
        fn start(b: &Broker, scenario: &'static str, partitions: u64, from: u64) -> Self {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let produced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (stop2, produced2, url) = (stop.clone(), produced.clone(), b.url());
            let thread = std::thread::spawn(move || {
                let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                    .set("bootstrap.servers", &url)
                    .set("linger.ms", "0")
                    .create()
                    .unwrap();
                let choices = ["s10", "s20", "s30", "s40"];
                let mut i = from;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = record(now_ms(), i, scenario, choices[(i % 4) as usize]);
                    let mut buf = Vec::new();
                    r.encode_into(&mut buf);
                    p.send(
                        BaseRecord::<(), [u8]>::to("logs")
                            .partition((i % partitions) as i32)
                            .payload(buf.strip_suffix(b"\n").unwrap()),
                    )
                    .unwrap();
                    produced2.lock().unwrap().push(r);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                p.flush(Duration::from_secs(5)).unwrap();
            });
            Self {
                stop,
                produced,
                thread,
            }
        }

        fn produced(&self) -> Vec<LogRecord> {
            self.produced.lock().unwrap().clone()
        }

        fn stop(self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.thread.join().unwrap();
        }
    }

    /// Every message of the summaries topic (tombstones left out), read to its end.
    fn summaries(b: &Broker) -> Vec<serde_json::Value> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", b.url())
            .set("group.id", format!("reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = c
            .fetch_watermarks("summaries", 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("summaries", 0, rdkafka::Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while next < high && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                next = m.offset() + 1;
                if let Some(p) = m.payload() {
                    out.push(serde_json::from_slice(p).unwrap());
                }
            }
        }
        assert!(next >= high, "summaries read to {next} of {high}");
        out
    }

    /// The k that `solve` over `records` writes for their windows (window of the day -> k).
    fn single_process(dir: &Path, name: &str, records: &[LogRecord]) -> BTreeMap<usize, f64> {
        let logs = dir.join(format!("{name}.jsonl"));
        write_records(&logs, records);
        let out = dir.join(format!("{name}.yaml"));
        solve_ok(&[
            "--window",
            "10s",
            "--logs",
            logs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let t = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let d = t.scenario_index(b"default").unwrap();
        let windows: BTreeSet<usize> = records
            .iter()
            .map(|r| ((r.ts_ms / WINDOW_MS) % 8640) as usize)
            .collect();
        windows
            .into_iter()
            .map(|w| (w, t.k(d, w).unwrap()))
            .collect()
    }

    /// Whether the table at `path` has `want`'s k in each of its windows (within 1e-9).
    fn has(path: &Path, want: &BTreeMap<usize, f64>) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let Ok(t) = KTable::parse(&text) else {
            return false;
        };
        let Some(d) = t.scenario_index(b"default") else {
            return false;
        };
        want.iter().all(|(w, k)| {
            t.k(d, *w)
                .is_some_and(|got| (got - k).abs() <= 1e-9 * k.abs().max(1e-12))
        })
    }

    /// One `solve --follow` on a topic that is never idle (a record every 20 ms) solves each
    /// window once it closes, from all of its records.
    #[test]
    fn a_follower_solves_windows_while_traffic_never_stops() {
        let dir = tempfile::tempdir().unwrap();
        let b = Broker::start();
        b.create_topic("logs", 2);
        let out = dir.path().join("k.yaml");
        let mut follower = Command::new(bin())
            .args(["solve", "--follow", "--window", "10s", "--lateness", "1s"])
            .args(["--group", "single", "--logs"])
            .arg(format!("kafka://{}/logs", b.url()))
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let steady = Steady::start(&b, "default", 2, 0);
        // The first window that starts after traffic did: all of its records are produced.
        let first = (now_ms() / WINDOW_MS + 1) * WINDOW_MS;
        while now_ms() < first + WINDOW_MS + 500 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let in_window: Vec<LogRecord> = steady
            .produced()
            .into_iter()
            .filter(|r| r.ts_ms / WINDOW_MS == first / WINDOW_MS)
            .collect();
        assert!(in_window.len() > 300, "{}", in_window.len());
        let want = single_process(dir.path(), "window", &in_window);
        let solved = eventually(Duration::from_secs(30), || has(&out, &want));
        steady.stop();
        let _ = follower.kill();
        let _ = follower.wait();
        assert!(solved, "the window was never solved: {want:?}");
    }

    #[test]
    fn members_split_the_partitions_and_each_writes_the_single_process_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = Broker::start();
        b.create_topic("logs", PARTITIONS as u32);
        b.create_topic_with_config("summaries", 1, "cleanup.policy=compact");
        let (out_a, out_b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        let (err_a, err_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let mut a = member(&b, &out_a, &err_a);
        std::thread::sleep(Duration::from_secs(2));
        let mut m_b = member(&b, &out_b, &err_b);
        // The group settles: the first member gives partitions to the second.
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(
            eventually(Duration::from_secs(30), || {
                read(&err_a).contains("given to another member")
                    && read(&err_b).contains("held from")
            }),
            "no split:\n{}\n{}",
            read(&err_a),
            read(&err_b)
        );
        std::thread::sleep(Duration::from_secs(2));
        // Steady traffic of another scenario all along: the topic is never idle, and windows
        // are published all the same.
        let steady = Steady::start(&b, "feed", PARTITIONS as u64, 100_000);

        // Records of the window open now (proxies write them as they decide).
        let first = produce(&b, 0, early_in_a_window(), 0, 600);
        let want = single_process(dir.path(), "first", &first);
        assert_eq!(want.len(), 1);
        assert!(
            eventually(Duration::from_secs(40), || has(&out_a, &want)
                && has(&out_b, &want)),
            "tables:\n{}\n{}\n{}",
            read(&out_a),
            read(&err_a),
            read(&err_b)
        );
        // Both members published, each for its own partitions, all four covered.
        let mut by_member: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for m in summaries(&b).iter().filter(|m| m["kind"] == "window") {
            assert_eq!(m["summary"]["format"], "hydrus-solve-summary");
            by_member
                .entry(m["member"].as_str().unwrap().to_string())
                .or_default()
                .insert(m["partition"].as_i64().unwrap());
        }
        assert_eq!(by_member.len(), 2, "{by_member:?}");
        let sets: Vec<&BTreeSet<i64>> = by_member.values().collect();
        assert!(sets[0].is_disjoint(sets[1]), "{by_member:?}");
        assert_eq!(sets[0].len() + sets[1].len(), PARTITIONS as usize);

        // One member is stopped (a deploy); records of the window open now are solved all the
        // same, by the other, once it has taken the stopped member's partitions.
        let term = Command::new("kill")
            .args(["-TERM", &m_b.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        assert!(m_b.wait().unwrap().success(), "{}", read(&err_b));
        assert!(read(&err_b).contains("left group g"), "{}", read(&err_b));
        let live = produce(&b, 10_000, early_in_a_window(), 0, 200);
        let want_live = single_process(dir.path(), "live", &live);
        assert!(
            eventually(Duration::from_secs(60), || has(&out_a, &want_live)),
            "the live window never reached the table:\n{}",
            read(&err_a)
        );
        assert!(has(&out_a, &want), "the earlier windows stay");
        steady.stop();
        let _ = a.kill();
        let _ = a.wait();
    }
}
