//! The solver's own metrics, served by `hydrus solve --follow --metrics-listen ADDR` on
//! `/metrics` (Prometheus text) with `/ready`. Without them a stalled solver is noticed only when
//! every proxy's k-table goes stale, hours later; with them it shows at once: records stop being
//! read, the consumer lag grows, no table is written.
//!
//! The reader's hot loop is untouched: the collector keeps its plain counts (the reader's
//! `ReadStats`) and the follow loop exports them here ([`ReadCounts`]) as deltas once per poll,
//! so no record pays for an atomic.
//! The Kafka lag is measured on a thread of its own every [`LAG_EVERY`], so it keeps growing
//! while the follow loop is stuck.

use prometheus::core::Collector;
use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use prometheus::{Registry, TextEncoder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the Kafka lag is measured: a watermark query per partition each time.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// What became of the records read (`reason` of `hydrus_solver_records_total`); they partition
/// the non-blank lines read.
pub const REASONS: [&str; 8] = [
    "used",
    "malformed",
    "no_decision",
    "unusable",
    "undeclared_scenario",
    "other_route",
    "other_strategy_set",
    "late",
];

/// Errors the solver counts and keeps running through (`kind` of `hydrus_solver_errors_total`).
/// Any other error stops `hydrus solve` with a message, as without metrics.
pub const ERROR_KINDS: [&str; 3] = ["watermarks", "commit", "summaries"];

/// What the reader counted so far (cumulative), as [`SolverMetrics::observe_reads`] takes it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ReadCounts {
    /// Lines (a Kafka message is one), malformed ones included.
    pub lines: u64,
    /// Lines parsed as records.
    pub records: u64,
    pub malformed: u64,
    pub no_decision: u64,
    pub unusable: u64,
    pub undeclared_scenario: u64,
    pub other_route: u64,
    /// Records of another strategy set than the newest, `replaced` included.
    pub other_strategy_set: u64,
    /// Records used, then dropped for a newer strategy set.
    pub replaced: u64,
    /// Records used, then dropped: their window was already solved.
    pub late: u64,
}

/// Every metric of a following solver.
pub struct SolverMetrics {
    registry: Registry,
    records_read: IntCounter,
    records: IntCounterVec,
    lag: IntGaugeVec,
    file_lag_bytes: IntGauge,
    windows_solved: IntCounter,
    tables_written: IntCounter,
    last_table_write: Gauge,
    errors: IntCounterVec,
    ready_gauge: IntGauge,
    ready: AtomicBool,
    served: AtomicBool,
    /// The reader's counts as last exported: [`Self::observe_reads`] adds what grew since.
    seen: Mutex<[u64; 1 + REASONS.len()]>,
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("--metrics-listen {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Registers families with constant, valid definitions (checked by the tests): a failure is a
/// duplicate name, a bug, logged rather than fatal.
struct Families<'r>(&'r Registry);

#[allow(clippy::expect_used)] // constant, valid metric definitions
impl Families<'_> {
    fn keep<T: Collector + Clone + 'static>(&self, m: T) -> T {
        if let Err(e) = self.0.register(Box::new(m.clone())) {
            log::error!("metric registration failed: {e}");
        }
        m
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.keep(IntCounter::new(name, help).expect("metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.keep(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.keep(IntGauge::new(name, help).expect("metric"))
    }
}

impl SolverMetrics {
    #[allow(clippy::expect_used)] // constant, valid metric definitions
    pub fn new() -> Self {
        let r = Registry::new();
        let f = Families(&r);
        let m = Self {
            records_read: f.counter("hydrus_solver_records_read_total", "Log records read: lines of the followed files, messages of the topic (malformed ones included)."),
            records: f.counters("hydrus_solver_records_total", "Records read by what became of them: used (in a window's pool), or skipped by reason: malformed, no_decision (a route without a hydrus filter), unusable (no QoE values), undeclared_scenario, other_route (not --route), other_strategy_set (an older set than the newest), late (its window was already solved).", &["reason"]),
            lag: f.keep(IntGaugeVec::new(Opts::new("hydrus_solver_consumer_lag", "Kafka: records of the partition not yet read (its high watermark minus the solver's position), measured every 5 s."), &["topic", "partition"]).expect("metric")),
            file_lag_bytes: f.gauge("hydrus_solver_file_lag_bytes", "Files: bytes of the followed files not yet read when the last poll began."),
            windows_solved: f.counter("hydrus_solver_windows_solved_total", "Windows (per scenario) solved as they closed and written into the k-table."),
            tables_written: f.counter("hydrus_solver_tables_written_total", "k-tables written (at start, and each time windows close)."),
            last_table_write: f.keep(Gauge::new("hydrus_solver_last_table_write_timestamp_seconds", "Unix time the k-table was last written (0: not yet); time() minus it is the table's age.").expect("metric")),
            errors: f.counters("hydrus_solver_errors_total", "Errors the solver kept running through, by kind: watermarks (the Kafka lag could not be measured), commit (a Kafka offset commit refused, tried again), summaries (the group's summaries topic not read to its end within 30 s).", &["kind"]),
            ready_gauge: f.gauge("hydrus_solver_ready", "1 once the solver has opened its source and read what was there (what /ready says)."),
            ready: AtomicBool::new(false),
            served: AtomicBool::new(false),
            seen: Mutex::new([0; 1 + REASONS.len()]),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            log::error!("process metrics: {e}");
        }
        // Every fixed series from the start, so rates and alerts have a baseline.
        for reason in REASONS {
            m.records.with_label_values(&[reason]);
        }
        for kind in ERROR_KINDS {
            m.errors.with_label_values(&[kind]);
        }
        m
    }

    /// Export what the reader counted: each record once, by what became of it when it was
    /// read (a record used, then replaced by a newer strategy set's, stays `used`).
    pub fn observe_reads(&self, stats: &ReadCounts) {
        let late = stats.late;
        let other_set = stats.other_strategy_set.saturating_sub(stats.replaced);
        let skipped = stats.no_decision
            + stats.unusable
            + stats.undeclared_scenario
            + stats.other_route
            + other_set;
        let used = stats.records.saturating_sub(skipped).saturating_sub(late);
        let now = [
            stats.lines,
            used,
            stats.malformed,
            stats.no_decision,
            stats.unusable,
            stats.undeclared_scenario,
            stats.other_route,
            other_set,
            late,
        ];
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for (i, (n, s)) in now.iter().zip(seen.iter_mut()).enumerate() {
            if *n <= *s {
                continue;
            }
            let grew = *n - *s;
            match i {
                0 => self.records_read.inc_by(grew),
                _ => self
                    .records
                    .with_label_values(&[REASONS[i - 1]])
                    .inc_by(grew),
            }
            *s = *n;
        }
    }

    /// The k-table was written, with `windows` windows newly solved (0: the table at start).
    pub fn table_written(&self, windows: usize) {
        self.tables_written.inc();
        self.windows_solved.inc_by(windows as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_table_write.set(now.as_secs_f64());
    }

    /// An error of `kind` (one of [`ERROR_KINDS`]) the solver keeps running through.
    pub fn error(&self, kind: &'static str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// Partition `partition` of `topic` is `behind` records behind its high watermark.
    pub fn set_lag(&self, topic: &str, partition: i32, behind: i64) {
        self.lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(behind.max(0));
    }

    /// The partition is no longer read here (the group gave it to another member).
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let _ = self
            .lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    /// Bytes of the followed files not yet read as a poll begins.
    pub fn set_file_lag(&self, bytes: u64) {
        self.file_lag_bytes.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// The solver has opened its source and read what was there: `/ready` answers 200.
    pub fn set_ready(&self) {
        self.ready_gauge.set(1);
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether a listener serves these metrics (else the lag, which costs broker queries, is
    /// not measured).
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }

    /// Serve `/metrics` and `/ready` on `addr` from a thread of their own; returns the address
    /// bound (port 0 picks one).
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr, ListenError> {
        let err = |source| ListenError { addr, source };
        let listener = TcpListener::bind(addr).map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        self.served.store(true, Ordering::Relaxed);
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("solver-metrics".into())
            .spawn(move || accept(&listener, &me))
            .map_err(err)?;
        Ok(bound)
    }
}

impl Default for SolverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
const HEAD_TIME: Duration = Duration::from_secs(2);

/// Answer connections one at a time, for ever: a scrape endpoint has one or two clients, and
/// one at a time bounds what a misbehaving one can hold (one connection, [`HEAD_TIME`]).
fn accept(listener: &TcpListener, m: &SolverMetrics) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = answer(s, m) {
                    log::debug!("metrics listener: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("metrics listener: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Read one request head and answer it; the connection then closes.
fn answer(mut s: TcpStream, m: &SolverMetrics) -> std::io::Result<()> {
    s.set_read_timeout(Some(HEAD_TIME))?;
    // (The answer, tens of KB, fits in the socket's buffer: a client that does not read cannot
    // hold the listener longer than this.)
    s.set_write_timeout(Some(HEAD_TIME))?;
    let deadline = Instant::now() + HEAD_TIME;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if head.len() > MAX_HEAD || Instant::now() > deadline {
            break None;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (status, content_type, body, head_only) = match end {
        None => (
            431,
            "text/plain",
            b"request head too large or too slow\n".to_vec(),
            false,
        ),
        Some(end) => route(&head[..end], m),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&body);
    }
    s.write_all(&out)?;
    s.flush()?;
    if end.is_none() {
        // Closing with the rest of the request unread would reset the connection, and the
        // client might lose the answer: read a bounded amount of it first.
        s.shutdown(std::net::Shutdown::Write)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut left = 64usize << 10;
        // One deadline for the whole drain: a client trickling bytes cannot hold the listener.
        let until = Instant::now() + Duration::from_secs(1);
        while left > 0 && Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
    Ok(())
}

/// A request head's answer: status, content type, body, and whether to leave the body out
/// (`HEAD`).
fn route(head: &[u8], m: &SolverMetrics) -> (u16, &'static str, Vec<u8>, bool) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.trim_ascii().split(|b| *b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let text = "text/plain; charset=utf-8";
    let Some(target) = target.filter(|_| parts.next().is_some_and(|v| v.starts_with(b"HTTP/")))
    else {
        return (400, text, b"bad request line\n".to_vec(), false);
    };
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let head_only = method == b"HEAD";
    if method != b"GET" && !head_only {
        return (405, text, b"GET or HEAD\n".to_vec(), false);
    }
    match path {
        b"/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
            head_only,
        ),
        b"/ready" if m.is_ready() => (200, text, b"ready\n".to_vec(), head_only),
        b"/ready" => (
            503,
            text,
            b"not ready: the source is not open and read yet\n".to_vec(),
            head_only,
        ),
        _ => (
            404,
            text,
            b"not found: /metrics or /ready\n".to_vec(),
            head_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(request).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_and_ready_and_refuses_the_rest() {
        let m = Arc::new(SolverMetrics::new());
        let addr = m
            .serve("127.0.0.1:0".parse().expect("addr"))
            .expect("listens");
        let ready = get(addr, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        m.set_ready();
        let ready = get(addr, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ready.starts_with("HTTP/1.1 200 "), "{ready}");
        m.table_written(3);
        let text = get(addr, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(
            text.contains("hydrus_solver_windows_solved_total 3\n"),
            "{text}"
        );
        assert!(text.contains("hydrus_solver_records_total{reason=\"late\"} 0\n"));
        let head = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        assert!(get(addr, b"GET /config HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(get(addr, b"\x00\xff garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge = [b'a'; MAX_HEAD + 2048];
        assert!(get(addr, &huge).starts_with("HTTP/1.1 431 "));
        // A client that sends nothing holds the listener for at most HEAD_TIME.
        let _idle = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        assert!(get(addr, b"GET /ready HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
        assert!(started.elapsed() < HEAD_TIME + Duration::from_secs(2));
    }

    #[test]
    fn reads_are_exported_as_they_grow_by_reason() {
        let m = SolverMetrics::new();
        // One of the other-set records was used, then replaced by a newer set's.
        let mut s = ReadCounts {
            lines: 12,
            records: 10,
            malformed: 1,
            no_decision: 2,
            other_strategy_set: 3,
            replaced: 1,
            late: 1,
            ..ReadCounts::default()
        };
        m.observe_reads(&s);
        let text = String::from_utf8(m.render()).expect("utf-8");
        for (series, v) in [
            ("hydrus_solver_records_read_total", 12),
            ("hydrus_solver_records_total{reason=\"used\"}", 5),
            (
                "hydrus_solver_records_total{reason=\"other_strategy_set\"}",
                2,
            ),
            ("hydrus_solver_records_total{reason=\"late\"}", 1),
            ("hydrus_solver_records_total{reason=\"no_decision\"}", 2),
        ] {
            assert!(
                text.contains(&format!("{series} {v}\n")),
                "{series}: {text}"
            );
        }
        s.records += 4;
        s.lines += 4;
        m.observe_reads(&s);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("hydrus_solver_records_total{reason=\"used\"} 9\n"));
        assert!(text.contains("hydrus_solver_records_read_total 16\n"));
    }
}
