//! The solver's own metrics: `hydrus solve --follow --metrics-listen ADDR` serves `/metrics`
//! and `/ready`, following files and a tansu topic (a real Kafka-protocol broker). Loopback
//! only; every wait bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hydrus_filters::clock::unix_ms as now_ms;
use hydrus_filters::{KTable, LogRecord};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A control record of the default scenario.
fn record(ts_ms: u64, i: u64, chosen: &str) -> LogRecord {
    control_record(ts_ms, i, "default", spread_q(i), chosen)
}

/// A running `hydrus solve --follow ... --metrics-listen 127.0.0.1:PORT`, its stderr in a file.
struct Solver {
    child: Child,
    port: u16,
    err: std::path::PathBuf,
}

impl Solver {
    fn start(args: &[&str], err: &Path) -> Self {
        let port = free_port();
        let child = Command::new(bin())
            .args(["solve", "--follow"])
            .args(args)
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(err).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            err: err.to_path_buf(),
        }
    }

    fn metrics(&self) -> String {
        get(&format!("http://127.0.0.1:{}/metrics", self.port))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    fn ready(&self) -> Option<u16> {
        get(&format!("http://127.0.0.1:{}/ready", self.port))
            .ok()
            .map(|r| r.0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Solver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Following files: records read and skipped by reason, a window solved and the time the table
/// was written; a late record is counted and dropped, never solved over its window.
#[test]
fn following_files_the_solver_counts_what_it_reads_and_solves() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = dir.path().join("k.yaml");
    // 2-second windows: one closed long ago, 200 records logged on s20.
    let old = (now_ms() - 60_000) / 2000 * 2000 + 100;
    let recs: Vec<LogRecord> = (0..200)
        .map(|i| record(old + (i % 100), i, "s20"))
        .collect();
    let file = logs.join("a.jsonl");
    write_records(&file, &recs);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(b"not json\n{\"ts_ms\": \nstill not\n").unwrap();
    for i in 0..5 {
        // A route without a hydrus filter: no decision.
        writeln!(
            f,
            r#"{{"ts_ms":{},"chosen":"default","k":null,"value_info":[],"route":"search"}}"#,
            old + i
        )
        .unwrap();
    }
    drop(f);
    let started_s = now_ms() as f64 / 1000.0;
    let s = Solver::start(
        &[
            "--window",
            "2s",
            "--lateness",
            "200ms",
            "--logs",
            logs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("solve.log"),
    );
    // The files' backlog as the first poll began, then nothing behind.
    let size = std::fs::metadata(&file).unwrap().len() as f64;
    let mut lags = std::collections::BTreeSet::new();
    let solved = eventually(Duration::from_secs(15), || {
        let text = s.metrics();
        if let Some(lag) = metric_value(&text, "hydrus_solver_file_lag_bytes") {
            lags.insert(lag as u64);
        }
        metric_value(&text, "hydrus_solver_windows_solved_total").is_some_and(|n| n >= 1.0)
            && metric_value(&text, "hydrus_solver_file_lag_bytes") == Some(0.0)
    });
    assert!(solved, "no window solved:\n{}\n{}", s.metrics(), s.log());
    assert!(
        lags.iter().all(|l| *l == 0 || *l == size as u64),
        "{lags:?} vs {size}"
    );
    assert_eq!(s.ready(), Some(200));
    let text = s.metrics();
    for (series, want) in [
        ("hydrus_solver_records_read_total", 208.0),
        (r#"hydrus_solver_records_total{reason="used"}"#, 200.0),
        (r#"hydrus_solver_records_total{reason="malformed"}"#, 3.0),
        (r#"hydrus_solver_records_total{reason="no_decision"}"#, 5.0),
        (r#"hydrus_solver_records_total{reason="late"}"#, 0.0),
        ("hydrus_solver_windows_solved_total", 1.0),
        ("hydrus_solver_file_lag_bytes", 0.0),
        ("hydrus_solver_ready", 1.0),
    ] {
        assert_eq!(metric_value(&text, series), Some(want), "{series}:\n{text}");
    }
    let written = metric_value(&text, "hydrus_solver_last_table_write_timestamp_seconds").unwrap();
    assert!(
        written >= started_s - 1.0 && written <= now_ms() as f64 / 1000.0 + 1.0,
        "{written} vs {started_s}"
    );
    let slot = hydrus_filters::hydrus::ktable::window_of(old, 2);
    let k = |out: &Path| {
        KTable::parse(&std::fs::read_to_string(out).unwrap())
            .unwrap()
            .k(0, slot)
    };
    let k_before = k(&out);
    assert!(k_before.is_some_and(|k| k > 0.0));

    // Four records of the solved window come late (logged on s40, which would move its k):
    // counted and dropped, the window's k stays.
    let late: Vec<LogRecord> = (500..504).map(|i| record(old + 7, i, "s40")).collect();
    write_records(&logs.join("b.jsonl"), &late);
    let counted = eventually(Duration::from_secs(10), || {
        s.metric(r#"hydrus_solver_records_total{reason="late"}"#) == Some(4.0)
    });
    assert!(counted, "late records not counted:\n{}", s.metrics());
    // Past the next window's close: a late window, if solved, would be written by now.
    std::thread::sleep(Duration::from_millis(2500));
    let text = s.metrics();
    assert_eq!(
        metric_value(&text, r#"hydrus_solver_records_total{reason="used"}"#),
        Some(200.0)
    );
    assert_eq!(
        metric_value(&text, "hydrus_solver_records_read_total"),
        Some(212.0)
    );
    assert_eq!(
        metric_value(&text, "hydrus_solver_windows_solved_total"),
        Some(1.0)
    );
    assert_eq!(
        k(&out),
        k_before,
        "the late records were not solved over the window"
    );
    assert!(s.log().contains("late record(s)"), "{}", s.log());
}

/// Following a tansu topic: the lag per partition is reported and falls to 0 as the solver
/// reads; every record produced is read; a window that closes is solved and the time the table
/// was written set.
#[test]
fn following_kafka_the_solver_reports_its_lag_per_partition() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start();
    b.create_topic("logs", 2);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b.url())
        .set("linger.ms", "0")
        // One record a batch: tansu 0.6 answers a high watermark short of the last offset
        // when the last batch holds several records.
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let produce = |recs: &[LogRecord]| {
        for (i, r) in recs.iter().enumerate() {
            let mut buf = Vec::new();
            r.encode_into(&mut buf);
            producer
                .send(
                    BaseRecord::<(), [u8]>::to("logs")
                        .partition(i as i32 % 2)
                        .payload(buf.strip_suffix(b"\n").unwrap()),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    // 300 records of a 10-second window closed a minute ago, before the solver starts.
    let old = (now_ms() - 60_000) / 10_000 * 10_000 + 100;
    produce(
        &(0..300)
            .map(|i| record(old + i, i, "s20"))
            .collect::<Vec<_>>(),
    );
    let out = dir.path().join("k.yaml");
    let started_s = now_ms() as f64 / 1000.0;
    let s = Solver::start(
        &[
            "--window",
            "10s",
            "--lateness",
            "1s",
            "--group",
            "metrics",
            "--logs",
            &format!("kafka://{}/logs", b.url()),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("solve.log"),
    );
    let lag = |text: &str, p: u32| {
        metric_value(
            text,
            &format!(r#"hydrus_solver_consumer_lag{{topic="logs",partition="{p}"}}"#),
        )
    };
    let caught_up = |n: f64| {
        let text = s.metrics();
        metric_value(&text, "hydrus_solver_records_read_total") == Some(n)
            && lag(&text, 0) == Some(0.0)
            && lag(&text, 1) == Some(0.0)
    };
    // The lag is first measured before the solver reads: every record produced (150 a
    // partition), held until the next measurement 5 s later; then 0.
    let mut saw_backlog = [false; 2];
    let caught = eventually(Duration::from_secs(40), || {
        let text = s.metrics();
        for p in 0..2 {
            saw_backlog[p as usize] |= lag(&text, p) == Some(150.0);
        }
        caught_up(300.0)
    });
    assert!(caught, "not caught up:\n{}\n{}", s.metrics(), s.log());
    assert_eq!(
        saw_backlog,
        [true, true],
        "the backlog at start was never reported"
    );
    assert_eq!(s.ready(), Some(200));
    let text = s.metrics();
    assert_eq!(
        metric_value(&text, r#"hydrus_solver_records_total{reason="used"}"#),
        Some(300.0)
    );
    assert!(metric_value(&text, "hydrus_solver_windows_solved_total").is_some_and(|n| n >= 1.0));
    let first_write =
        metric_value(&text, "hydrus_solver_last_table_write_timestamp_seconds").unwrap();
    assert!(
        first_write >= started_s - 1.0,
        "{first_write} vs {started_s}"
    );
    assert!(KTable::parse(&std::fs::read_to_string(&out).unwrap()).is_ok());

    // Records of the window open now, produced while the solver runs: read, lag back to 0,
    // and once the window closes it is solved and the table written again.
    let now = now_ms();
    produce(
        &(1000..1200)
            .map(|i| record(now + (i % 50), i, "s10"))
            .collect::<Vec<_>>(),
    );
    assert!(
        eventually(Duration::from_secs(30), || caught_up(500.0)),
        "the new records not read:\n{}",
        s.metrics()
    );
    let solved_before = s.metric("hydrus_solver_windows_solved_total").unwrap();
    let closes_at = ((now / 10_000 + 1) * 10_000 + 1_000) as f64 / 1000.0;
    assert!(
        eventually(Duration::from_secs(30), || {
            let text = s.metrics();
            metric_value(&text, "hydrus_solver_windows_solved_total")
                .is_some_and(|n| n > solved_before)
                && metric_value(&text, "hydrus_solver_last_table_write_timestamp_seconds")
                    .is_some_and(|t| t >= closes_at)
        }),
        "the open window was never solved:\n{}\n{}",
        s.metrics(),
        s.log()
    );
    assert_eq!(
        s.metric(r#"hydrus_solver_errors_total{kind="watermarks"}"#),
        Some(0.0)
    );
}
