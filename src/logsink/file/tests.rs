//! The file sink's tests: rotation, stalls, a disk that fills up, the bounded buffer.

use super::*;
use crate::metrics::Metrics;
use hydrus_filters::log::text::Copied;
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
            Some(Copied::new(b"u")),
            None,
            Some(Copied::new(format!("r{id}").as_bytes())),
            None,
            None,
        ],
        generated_id: None,
        state: hydrus_filters::filter::RequestState::new(0),
        status: 200,
        upstream_ms: Some(1.0),
        total_ms: 2.0,
        cluster_load: None,
        error: None,
        grpc_status: None,
        access: None,
        endpoint: None,
        attempts: 0,
        trace_id: None,
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
            .any(|l| l.contains("9 accepted record(s) not written") && l.contains("No space left")),
        "{said:#?}"
    );
}
