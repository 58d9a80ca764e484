//! Decision log publishing (section 4.2 of the Hydrus paper): the request path hands each record
//! to a bounded lock-free queue and never waits nor wakes anyone; one background thread drains
//! the queue in batches on its own timer (sleeping while it is empty), encodes the records and
//! moves them to the sink.
//!
//! - Queue full: the record is dropped and counted (`hydrus_log_records_total{result="dropped"}`).
//! - Sink failing (directory gone, broker down): the thread holds the record it could not write
//!   and retries; the queue fills and further records are dropped and counted. Nothing the
//!   queue accepted is lost: it is written once the sink is back.
//! - Shutdown drains the queue, then flushes and fsyncs (file) or flushes the producer (Kafka).

use crate::config::{FileSinkConfig, LogRuntime, SinkConfig};
use crate::metrics::Metrics;
use crate::record::{Pending, Truncations};
use crossbeam_queue::ArrayQueue;
use prometheus::{IntCounter, IntGauge};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The queue between the request path and the sink thread.
type Queue = ArrayQueue<Box<Pending>>;

/// The request path's end of the queue.
pub struct LogQueue {
    queue: Arc<Queue>,
    accepted: IntCounter,
    dropped: IntCounter,
}

impl LogQueue {
    /// Hand a record over without waiting (and without waking the sink thread, which drains on
    /// its own timer); a full queue drops it, counted.
    pub fn push(&self, record: Box<Pending>) {
        match self.queue.push(record) {
            Ok(()) => self.accepted.inc(),
            Err(_) => self.dropped.inc(),
        }
    }
}

/// What the request path and [`LogSink::shutdown`] tell the sink thread.
#[derive(Default)]
struct Control {
    /// Drain what is queued, then close.
    stop: AtomicBool,
    /// The drain ran out of time: count what is left, say so, and end.
    abandon: AtomicBool,
    /// Records left unwritten when abandoned, and the sink's last error.
    left: std::sync::Mutex<Option<(usize, String)>>,
    /// When the drain must be over.
    deadline: std::sync::Mutex<Option<Instant>>,
    /// SIGUSR1 arrived: reopen the log file.
    reopen: Arc<AtomicBool>,
}

/// The sink thread; [`LogSink::shutdown`] drains and closes it.
pub struct LogSink {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl LogSink {
    /// Stop taking new records, write everything queued, close the sink. Returns when done or
    /// after `timeout`; then the records that could not be written are counted in the log.
    pub fn shutdown(mut self, timeout: Duration) {
        *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + timeout);
        self.control.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else {
            return;
        };
        t.thread().unpark();
        let wait = |limit: Duration| {
            let deadline = Instant::now() + limit;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait(timeout);
        if !t.is_finished() {
            self.control.abandon.store(true, Ordering::SeqCst);
            t.thread().unpark();
            // The thread notices within one backoff, unless a write blocks it.
            wait(Duration::from_secs(1));
        }
        let left = self
            .control
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match (t.is_finished(), left) {
            (true, None) => {
                let _ = t.join();
            }
            (_, Some((n, why))) => log::error!(
                "log sink did not drain within {timeout:?}: {n} accepted record(s) not written ({why})"
            ),
            (false, None) => log::error!(
                "log sink did not drain within {timeout:?} and is stuck in a write; queued records are lost"
            ),
        }
    }
}

/// Why a sink could not take a record now.
#[derive(Debug)]
pub struct SinkError(pub String);

/// A destination for records. `accept` may buffer; `flush` pushes buffered records out.
pub trait Sink: Send {
    /// Take a record (encode it and buffer or send it), or say why not: then the caller keeps
    /// it and offers it again later.
    fn accept(&mut self, record: &Pending, enc: &mut Encoder) -> Result<(), SinkError>;
    /// Write what is buffered.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Whether records are buffered and not yet written.
    fn has_buffered(&self) -> bool;
    /// How many records are buffered and not yet written (or not yet delivered).
    fn buffered(&self) -> usize;
    /// Flush, make durable, release; give up after `within`.
    fn close(&mut self, within: Duration) -> Result<(), SinkError>;
    /// Start writing to a new file (SIGUSR1, as nginx reopens its logs).
    fn reopen(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Called every loop turn: time-based flushing.
    fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

struct Counters {
    written: IntCounter,
    depth: IntGauge,
    errors: IntCounter,
}

/// What a sink needs to turn records into JSON lines: the truncation counters.
pub struct Encoder {
    pub truncations: Truncations,
}

impl Encoder {
    pub fn new(m: &Metrics) -> Self {
        Self {
            truncations: Truncations::new(m),
        }
    }

    pub fn encode(&self, r: &Pending, out: &mut Vec<u8>) {
        r.encode_into(out, &self.truncations);
    }
}

/// Start the sink thread for `cfg`.
pub fn start(cfg: &LogRuntime, metrics: &Arc<Metrics>) -> Result<(LogQueue, LogSink), String> {
    let queue = Arc::new(ArrayQueue::new(cfg.queue_capacity.max(1)));
    let counters = Counters {
        written: metrics.log_records.with_label_values(&["written"]),
        depth: metrics.log_queue_depth.clone(),
        errors: metrics.log_sink_errors.with_label_values(&["write"]),
    };
    let sink: Box<dyn Sink> = match &cfg.sink {
        SinkConfig::File(f) => Box::new(FileSink::new(
            f.clone(),
            counters.written.clone(),
            cfg.queue_capacity,
        )),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(k) => Box::new(crate::kafka::KafkaSink::new(k, metrics)?),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => return Err("built without the `kafka` feature".into()),
    };
    let control = Arc::new(Control::default());
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, control.reopen.clone())
        .map_err(|e| format!("cannot listen for SIGUSR1: {e}"))?;
    let thread = {
        let control = control.clone();
        let queue = queue.clone();
        let enc = Encoder::new(metrics);
        std::thread::Builder::new()
            .name("hydrus-log-sink".into())
            .spawn(move || run(sink, &queue, &control, counters, enc))
            .map_err(|e| format!("cannot start the log sink thread: {e}"))?
    };
    let queue = LogQueue {
        queue,
        accepted: metrics.log_records.with_label_values(&["accepted"]),
        dropped: metrics.log_records.with_label_values(&["dropped"]),
    };
    Ok((
        queue,
        LogSink {
            control,
            thread: Some(thread),
        },
    ))
}

/// How often the sink thread looks at the queue when it found it empty.
const TICK: Duration = Duration::from_millis(20);
const BACKOFF: Duration = Duration::from_millis(200);

fn run(mut sink: Box<dyn Sink>, queue: &Queue, control: &Control, c: Counters, mut enc: Encoder) {
    let mut held: Option<Box<Pending>> = None;
    let mut failing = false;
    let mut last_error = String::new();
    let mut note = |failing: &mut bool, e: SinkError| {
        if !*failing {
            log::error!("log sink failing, holding records and retrying: {}", e.0);
        }
        *failing = true;
        c.errors.inc();
        last_error = e.0;
        std::thread::park_timeout(BACKOFF);
    };
    loop {
        if control.abandon.load(Ordering::SeqCst) {
            let left = queue.len() + usize::from(held.is_some()) + sink.buffered();
            *control
                .left
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((left, last_error));
            return;
        }
        if control.reopen.swap(false, Ordering::SeqCst) {
            log::info!("SIGUSR1: reopening the log file");
            if let Err(e) = sink.flush().and_then(|()| sink.reopen()) {
                note(&mut failing, e);
                continue;
            }
        }
        // Drain what is there, in one go.
        let mut took = 0usize;
        let mut refused = None;
        while let Some(r) = held.take().or_else(|| queue.pop()) {
            if let Err(e) = sink.accept(&r, &mut enc) {
                held = Some(r);
                refused = Some(e);
                break;
            }
            took += 1;
        }
        c.depth.set(queue.len() as i64);
        if let Some(e) = refused {
            note(&mut failing, e);
            continue;
        }
        if let Err(e) = sink.tick() {
            note(&mut failing, e);
            continue;
        }
        if failing {
            log::info!("log sink recovered");
            failing = false;
        }
        if control.stop.load(Ordering::SeqCst) && held.is_none() && queue.is_empty() {
            match sink.flush() {
                Ok(()) if !sink.has_buffered() => break,
                Ok(()) => {}
                Err(e) => note(&mut failing, e),
            }
            continue;
        }
        if took == 0 {
            // Nothing came: sleep until the next tick (or shutdown's unpark).
            std::thread::park_timeout(TICK);
        }
    }
    c.depth.set(0);
    let deadline = *control
        .deadline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let within = deadline.map_or(Duration::from_secs(30), |d| {
        d.saturating_duration_since(Instant::now())
    });
    if let Err(e) = sink.close(within) {
        *control
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((sink.buffered(), e.0));
    }
}

/// JSON-lines files under a directory, one per window of the day (and per `rotate_bytes`).
/// A file's name says its window's start (UTC), the process and a sequence number:
/// `hydrus-20261122T1845Z-p4242-0003.jsonl`. Only whole lines are ever written.
pub struct FileSink {
    cfg: FileSinkConfig,
    window_ms: u64,
    current: Option<OpenFile>,
    buf: Vec<u8>,
    /// Lines in `buf`, counted as written when they reach the file.
    last_flush: Instant,
    seq: u64,
    written: IntCounter,
    /// Records in `buf`; at most `max_buffered` (the queue's capacity), so records held here
    /// while the disk fails are bounded like those in the queue.
    buffered: usize,
    max_buffered: usize,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    window_start_ms: u64,
    bytes: u64,
}

/// Write `buf` to `file`, keeping what did not get out; returns the lines that did get out
/// (also when a later write failed) and how it ended.
fn write_some(file: &mut File, buf: &mut Vec<u8>) -> (u64, io::Result<()>) {
    let mut done = 0;
    let result = loop {
        if done == buf.len() {
            break Ok(());
        }
        match file.write(&buf[done..]) {
            Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let lines = buf[..done].iter().filter(|&&b| b == b'\n').count() as u64;
    buf.drain(..done);
    (lines, result)
}

/// `20261122T1845Z` for a Unix time in ms.
fn stamp(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-22T18:45:00Z
    let d: String = s
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    // 20261122T184500 -> 20261122T1845Z
    format!("{}Z", &d[..d.len().saturating_sub(2)])
}

const FLUSH_BYTES: usize = 256 << 10;

impl FileSink {
    pub fn new(cfg: FileSinkConfig, written: IntCounter, max_buffered: usize) -> Self {
        let window_ms = cfg.window.as_millis().max(1000) as u64;
        Self {
            cfg,
            window_ms,
            current: None,
            buf: Vec::with_capacity(FLUSH_BYTES),
            last_flush: Instant::now(),
            seq: 0,
            written,
            buffered: 0,
            max_buffered: max_buffered.max(1),
        }
    }

    /// Whether the open file is still the one at its path (not deleted, not renamed away by
    /// logrotate or an operator): lines written to a file no longer in the directory would be
    /// counted as written and never read.
    fn still_linked(cur: &OpenFile) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&cur.path), cur.file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.ino() == open.ino() && at_path.dev() == open.dev(),
            _ => false,
        }
    }

    /// Close the open file (it was moved, or SIGUSR1 asked) and open a new one for its window.
    /// (Until a new file opens, the old one stays: a failed open is tried again next time.)
    pub fn reopen(&mut self) -> Result<(), SinkError> {
        let Some(old) = self.current.take() else {
            return Ok(());
        };
        match self.open(old.window_start_ms) {
            Ok(()) => {
                if let Err(e) = old.file.sync_all() {
                    log::error!("fsync {}: {e}", old.path.display());
                }
                Ok(())
            }
            Err(e) => {
                self.current = Some(old);
                Err(e)
            }
        }
    }

    fn write_buf(&mut self) -> Result<(), SinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| !Self::still_linked(c))
        {
            if let Some(c) = &self.current {
                log::warn!(
                    "log file {} was moved or deleted: writing to a new one",
                    c.path.display()
                );
            }
            self.reopen()?;
        }
        let Some(cur) = self.current.as_mut() else {
            return Err(SinkError("no open file".into()));
        };
        let before = self.buf.len();
        let (lines, r) = write_some(&mut cur.file, &mut self.buf);
        cur.bytes += (before - self.buf.len()) as u64;
        self.written.inc_by(lines);
        self.buffered = self.buffered.saturating_sub(lines as usize);
        match r {
            Ok(()) => {
                self.last_flush = Instant::now();
                Ok(())
            }
            Err(e) => Err(SinkError(format!("{}: {e}", cur.path.display()))),
        }
    }

    /// Write out and fsync the current file, then forget it.
    fn close_current(&mut self) -> Result<(), SinkError> {
        self.write_buf()?;
        if let Some(cur) = self.current.take() {
            if let Err(e) = cur.file.sync_all() {
                // The data is written; durability is what failed. Say so, move on.
                log::error!("fsync {}: {e}", cur.path.display());
            }
        }
        Ok(())
    }

    fn open(&mut self, window_start_ms: u64) -> Result<(), SinkError> {
        std::fs::create_dir_all(&self.cfg.dir)
            .map_err(|e| SinkError(format!("{}: {e}", self.cfg.dir.display())))?;
        loop {
            self.seq += 1;
            let name = format!(
                "hydrus-{}-p{}-{:04}.jsonl",
                stamp(window_start_ms),
                std::process::id(),
                self.seq
            );
            let path = self.cfg.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    self.current = Some(OpenFile {
                        file,
                        path,
                        window_start_ms,
                        bytes: 0,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SinkError(format!("{}: {e}", path.display()))),
            }
        }
    }
}

impl Sink for FileSink {
    fn accept(&mut self, record: &Pending, enc: &mut Encoder) -> Result<(), SinkError> {
        let window_start = record.ts_ms - record.ts_ms % self.window_ms;
        let rotate = match &self.current {
            None => true,
            Some(cur) => {
                cur.window_start_ms != window_start
                    || cur.bytes + self.buf.len() as u64 >= self.cfg.rotate_bytes
            }
        };
        if rotate {
            self.close_current()?;
            self.open(window_start)?;
        }
        if self.buf.len() >= FLUSH_BYTES || self.buffered >= self.max_buffered {
            // Full: what is buffered must get out before this record is taken.
            self.write_buf()?;
        }
        enc.encode(record, &mut self.buf);
        self.buffered += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_buf()
    }

    fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    fn buffered(&self) -> usize {
        self.buffered
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        if !self.buf.is_empty() && self.last_flush.elapsed() >= self.cfg.flush_interval {
            self.write_buf()?;
        }
        Ok(())
    }

    fn close(&mut self, _within: Duration) -> Result<(), SinkError> {
        self.close_current()
    }

    fn reopen(&mut self) -> Result<(), SinkError> {
        FileSink::reopen(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Arc<crate::config::Running> {
        let text = "listen: 127.0.0.1:1\nclusters:\n  c:\n    endpoints: [\"127.0.0.1:2\"]\nroute:\n  cluster: c\n";
        Arc::new(crate::config::load_str(std::path::Path::new("t.yaml"), text).expect("valid"))
    }

    fn record(running: &Arc<crate::config::Running>, ts_ms: u64, id: u32) -> Pending {
        Pending {
            running: running.clone(),
            ts_ms,
            ids: [
                Some(http::HeaderValue::from_static("u")),
                None,
                http::HeaderValue::from_str(&format!("r{id}")).ok(),
                None,
                None,
            ],
            generated_id: None,
            group: hydrus_filters::Group::Treatment,
            decision: None,
            status: 200,
            upstream_ms: Some(1.0),
            total_ms: 2.0,
            cluster: 0,
            e2e: None,
            cluster_load: None,
            hedge: None,
            error: None,
        }
    }

    #[test]
    fn stamps_window_start() {
        assert_eq!(stamp(0), "19700101T0000Z");
        assert_eq!(stamp(1_763_837_100_000), "20251122T1845Z");
    }

    fn read_all(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .expect("read")
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotates_per_window_and_size_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = Metrics::new();
        let written = m.log_records.with_label_values(&["written"]);
        let cfg = FileSinkConfig {
            dir: dir.path().join("logs"),
            window: Duration::from_secs(900),
            rotate_bytes: 4096,
            flush_interval: Duration::from_secs(1),
        };
        let mut s = FileSink::new(cfg, written.clone(), 1000);
        let mut enc = Encoder::new(&m);
        let r = running();
        for i in 0..200 {
            // two windows: 100 records each
            let ts = if i < 100 { 1_000 } else { 900_000 + 1_000 };
            s.accept(&record(&r, ts, i), &mut enc)
                .map_err(|e| e.0)
                .expect("accept");
        }
        s.close(Duration::from_secs(1))
            .map_err(|e| e.0)
            .expect("close");
        let lines = read_all(&dir.path().join("logs"));
        assert_eq!(lines.len(), 200);
        assert_eq!(written.get(), 200);
        let files = std::fs::read_dir(dir.path().join("logs"))
            .expect("dir")
            .count();
        assert!(files > 2, "size rotation made {files} files");
        for (i, l) in lines.iter().enumerate() {
            let r: hydrus_filters::LogRecord = serde_json::from_str(l).expect("json line");
            assert_eq!(r.request_id, format!("r{i}"));
        }
    }

    #[test]
    fn holds_records_while_the_directory_is_unusable() {
        let dir = tempfile::tempdir().expect("tmp");
        let logs = dir.path().join("logs");
        // A regular file where the directory should be: creating files fails, even as root.
        std::fs::write(&logs, b"not a dir").expect("file");
        let m = Metrics::new();
        let cfg = FileSinkConfig {
            dir: logs.clone(),
            window: Duration::from_secs(900),
            rotate_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
        };
        let mut s = FileSink::new(cfg, m.log_records.with_label_values(&["written"]), 1000);
        let mut enc = Encoder::new(&m);
        let r = record(&running(), 1, 1);
        assert!(s.accept(&r, &mut enc).is_err(), "cannot open");
        std::fs::remove_file(&logs).expect("rm");
        s.accept(&r, &mut enc).map_err(|e| e.0).expect("recovered");
        s.close(Duration::from_secs(1))
            .map_err(|e| e.0)
            .expect("close");
        assert_eq!(read_all(&logs).len(), 1);
    }
}
