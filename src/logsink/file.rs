//! The file sink: JSON-lines files under a directory, one per window of the day.

use super::record::Pending;
use super::{Encoder, Sink, SinkError};
use hydrus_filters::log::FileSinkConfig;
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// JSON-lines files under a directory, one per window of the day (and per `rotate_bytes`).
/// A file's name says its window's start (UTC), the process and a sequence number:
/// `hydrus-20261122T1845Z-p4242-0003.jsonl`. Only whole lines are counted as written.
pub struct FileSink<F: LogFile = File> {
    cfg: FileSinkConfig,
    window_ms: u64,
    current: Option<OpenFile<F>>,
    buf: Vec<u8>,
    /// Lines in `buf`, counted as written when they reach the file.
    last_flush: Instant,
    seq: u64,
    written: IntCounter,
    /// Records in `buf`; at most `max_buffered` (the queue's capacity), so records held here
    /// while the disk fails are bounded like those in the queue.
    buffered: usize,
    max_buffered: usize,
    /// Creates a file that does not exist yet at a path.
    create: Creator<F>,
}

/// How a [`FileSink`] creates its files.
type Creator<F> = Box<dyn Fn(&Path) -> io::Result<F> + Send>;

/// What the sink writes to: a file. Generic so that tests can put a disk that fills up in its
/// place, and check what is counted when a write fails part-way.
pub trait LogFile: Write + Send {
    fn sync_all(&self) -> io::Result<()>;
    /// (device, inode) of the open file, to notice it was moved or deleted.
    fn identity(&self) -> io::Result<(u64, u64)>;
}

impl LogFile for File {
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.metadata()?;
        Ok((m.dev(), m.ino()))
    }
}

struct OpenFile<F> {
    file: F,
    path: PathBuf,
    window_start_ms: u64,
    bytes: u64,
}

/// Write `buf` to `file`, keeping what did not get out; returns the lines that did get out
/// (also when a later write failed) and how it ended.
fn write_some(file: &mut impl Write, buf: &mut Vec<u8>) -> (u64, io::Result<()>) {
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
    // (memchr's counter: a byte-at-a-time count took about 2.7k instructions per record.)
    let lines = memchr::memchr_iter(b'\n', &buf[..done]).count() as u64;
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
        Self::creating(
            cfg,
            written,
            max_buffered,
            Box::new(|path| OpenOptions::new().write(true).create_new(true).open(path)),
        )
    }
}

impl<F: LogFile> FileSink<F> {
    /// A sink whose files `create` makes (a path that exists must fail with `AlreadyExists`).
    pub fn creating(
        cfg: FileSinkConfig,
        written: IntCounter,
        max_buffered: usize,
        create: Creator<F>,
    ) -> Self {
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
            create,
        }
    }

    /// Whether the open file is still the one at its path (not deleted, not renamed away by
    /// logrotate or an operator): lines written to a file no longer in the directory would be
    /// counted as written and never read.
    fn still_linked(cur: &OpenFile<F>) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&cur.path), cur.file.identity()) {
            (Ok(at_path), Ok((dev, ino))) => at_path.ino() == ino && at_path.dev() == dev,
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
            return Err(SinkError::NoFile);
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
            Err(e) => Err(SinkError::Io {
                path: cur.path.clone(),
                source: e,
            }),
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
        std::fs::create_dir_all(&self.cfg.dir).map_err(|e| SinkError::Io {
            path: self.cfg.dir.clone(),
            source: e,
        })?;
        loop {
            self.seq += 1;
            let name = format!(
                "hydrus-{}-p{}-{:04}.jsonl",
                stamp(window_start_ms),
                std::process::id(),
                self.seq
            );
            let path = self.cfg.dir.join(name);
            match (self.create)(&path) {
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
                Err(e) => return Err(SinkError::Io { path, source: e }),
            }
        }
    }
}

impl<F: LogFile> Sink for FileSink<F> {
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
        FileSink::<F>::reopen(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    fn running() -> (
        Arc<crate::config::Running>,
        Arc<crate::config::RouteRuntime>,
    ) {
        let text = "listen: 127.0.0.1:1\nclusters:\n  c:\n    endpoints: [\"127.0.0.1:2\"]\nroute:\n  cluster: c\n";
        let m = Metrics::new();
        let r = crate::config::load_str(std::path::Path::new("t.yaml"), text, &m).expect("valid");
        let route = r.routes[0].clone();
        (Arc::new(r), route)
    }

    fn record(
        (running, route): &(
            Arc<crate::config::Running>,
            Arc<crate::config::RouteRuntime>,
        ),
        ts_ms: u64,
        id: u32,
    ) -> Pending {
        Pending {
            running: running.clone(),
            route: route.clone(),
            ts_ms,
            ids: [
                Some(http::HeaderValue::from_static("u")),
                None,
                http::HeaderValue::from_str(&format!("r{id}")).ok(),
                None,
                None,
            ],
            generated_id: None,
            state: hydrus_filters::stage::RequestState::new(0),
            status: 200,
            upstream_ms: Some(1.0),
            total_ms: 2.0,
            cluster_load: None,
            error: None,
            grpc_status: None,
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
                .map_err(|e| e.to_string())
                .expect("accept");
        }
        s.close(Duration::from_secs(1))
            .map_err(|e| e.to_string())
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
        s.accept(&r, &mut enc)
            .map_err(|e| e.to_string())
            .expect("recovered");
        s.close(Duration::from_secs(1))
            .map_err(|e| e.to_string())
            .expect("close");
        assert_eq!(read_all(&logs).len(), 1);
    }

    /// A file on a disk with `room` bytes left: a write past it is cut short and the next one
    /// fails with ENOSPC, as on a disk filling up; given room again, writes go through.
    struct Filling {
        file: File,
        room: Arc<AtomicUsize>,
    }

    impl Write for Filling {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let room = self.room.load(Ordering::SeqCst);
            if room == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = self.file.write(&b[..b.len().min(room)])?;
            self.room.fetch_sub(n, Ordering::SeqCst);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    impl LogFile for Filling {
        fn sync_all(&self) -> io::Result<()> {
            self.file.sync_all()
        }

        fn identity(&self) -> io::Result<(u64, u64)> {
            self.file.identity()
        }
    }

    fn filling(
        dir: &Path,
        room: &Arc<AtomicUsize>,
        written: IntCounter,
        max_buffered: usize,
    ) -> FileSink<Filling> {
        let cfg = FileSinkConfig {
            dir: dir.to_path_buf(),
            window: Duration::from_secs(900),
            rotate_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
        };
        let room = room.clone();
        FileSink::creating(
            cfg,
            written,
            max_buffered,
            Box::new(move |path| {
                Ok(Filling {
                    file: OpenOptions::new().write(true).create_new(true).open(path)?,
                    room: room.clone(),
                })
            }),
        )
    }

    #[test]
    fn written_counts_the_lines_that_reached_the_file_when_a_write_fails_part_way() {
        let dir = tempfile::tempdir().expect("tmp");
        let logs = dir.path().join("logs");
        let m = Metrics::new();
        let written = m.log_records.with_label_values(&["written"]);
        let room = Arc::new(AtomicUsize::new(usize::MAX));
        let mut s = filling(&logs, &room, written.clone(), 1000);
        let mut enc = Encoder::new(&m);
        let r = running();
        // Request ids r10..r99: every line is as long as this one.
        let line = {
            let mut v = Vec::new();
            enc.encode(&record(&r, 1_000, 10), &mut v);
            v.len()
        };
        let mut accept = |s: &mut FileSink<Filling>, ids: std::ops::Range<u32>| {
            for i in ids {
                s.accept(&record(&r, 1_000, i), &mut enc)
                    .map_err(|e| e.to_string())
                    .expect("accept");
            }
        };
        // The disk fills after a line and a half.
        room.store(line + line / 2, Ordering::SeqCst);
        accept(&mut s, 10..14);
        let e = s.flush().map(|()| "flushed").expect_err("disk full");
        assert!(e.to_string().contains("No space left"), "{e}");
        assert_eq!(written.get(), 1, "the half line is not written yet");
        let on_disk: u64 = std::fs::read_dir(&logs)
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .sum();
        assert_eq!(on_disk, (line + line / 2) as u64);
        // Room again: the rest of the half line, then the others, each once.
        room.store(usize::MAX, Ordering::SeqCst);
        s.flush().map_err(|e| e.to_string()).expect("recovered");
        assert_eq!(written.get(), 4);
        // Full again two lines and three bytes later.
        room.store(2 * line + 3, Ordering::SeqCst);
        accept(&mut s, 14..17);
        assert!(s.flush().is_err(), "disk full");
        assert_eq!(written.get(), 6);
        room.store(usize::MAX, Ordering::SeqCst);
        s.close(Duration::from_secs(1))
            .map_err(|e| e.to_string())
            .expect("close");
        assert_eq!(written.get(), 7);
        let lines = read_all(&logs);
        let ids: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<hydrus_filters::LogRecord>(l)
                    .expect("whole json line")
                    .request_id
            })
            .collect();
        let want: Vec<String> = (10..17).map(|i| format!("r{i}")).collect();
        assert_eq!(ids, want, "no line lost or written twice");
    }

    /// What was logged through the `log` crate in this process.
    fn captured() -> &'static Mutex<Vec<String>> {
        static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
        struct Capture;
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, r: &log::Record<'_>) {
                LINES
                    .get_or_init(Mutex::default)
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(r.args().to_string());
            }
            fn flush(&self) {}
        }
        static CAPTURE: Capture = Capture;
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        LINES.get_or_init(Mutex::default)
    }

    #[test]
    fn a_failing_sink_buffers_at_most_the_queue_capacity_and_the_exit_says_what_it_lost() {
        let logged = captured();
        let dir = tempfile::tempdir().expect("tmp");
        let logs = dir.path().join("logs");
        let m = Arc::new(Metrics::new());
        // The disk is full from the start.
        let room = Arc::new(AtomicUsize::new(0));
        let sink = filling(
            &logs,
            &room,
            m.log_records.with_label_values(&["written"]),
            4,
        );
        let (q, s) = super::super::start_sink(Box::new(sink), 4, &m)
            .map_err(|e| e.to_string())
            .expect("start");
        let r = running();
        // One at a time, each taken off the queue: the sink buffers four (the queue's
        // capacity), refuses the fifth, which the sink thread then holds.
        for i in 0..5 {
            q.push(Box::new(record(&r, 1_000, i)));
            let t = Instant::now();
            while !q.queue.is_empty() {
                assert!(t.elapsed() < Duration::from_secs(5), "record {i} not taken");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // The queue fills; the rest are dropped, counted.
        for i in 5..20 {
            q.push(Box::new(record(&r, 1_000, i)));
        }
        let count = |what: &str| m.log_records.with_label_values(&[what]).get();
        assert_eq!(
            (count("accepted"), count("dropped"), count("written")),
            (9, 11, 0)
        );
        s.shutdown(Duration::from_millis(300));
        let said = logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert!(
            said.iter()
                .any(|l| l.contains("9 accepted record(s) not written")
                    && l.contains("No space left")),
            "{said:#?}"
        );
    }
}
