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

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod record;

use crate::metrics::Metrics;
use crossbeam_queue::ArrayQueue;
use file::FileSink;
use hydrus_filters::log::{LogRuntime, SinkConfig};
use prometheus::{IntCounter, IntGauge};
use record::{Pending, Truncations};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{sync::Arc, thread::JoinHandle};

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

/// Why a sink could not take a record now (it is held and offered again).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no open file")]
    NoFile,
    #[error("librdkafka queue full")]
    QueueFull,
    #[error("kafka flush: {0}")]
    KafkaFlush(String),
}

/// Why the log sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Kafka(String),
    #[error("built without the `kafka` feature")]
    NoKafka,
    #[error("cannot listen for SIGUSR1: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the log sink thread: {0}")]
    Thread(std::io::Error),
}

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
pub fn start(cfg: &LogRuntime, metrics: &Arc<Metrics>) -> Result<(LogQueue, LogSink), StartError> {
    let sink: Box<dyn Sink> = match &cfg.sink {
        SinkConfig::File(f) => Box::new(FileSink::new(
            f.clone(),
            metrics.log_records.with_label_values(&["written"]),
            cfg.queue_capacity,
        )),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(k) => Box::new(kafka::KafkaSink::new(k, metrics)?),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => return Err(StartError::NoKafka),
    };
    start_sink(sink, cfg.queue_capacity, metrics)
}

/// Start the sink thread for `sink`, behind a queue of `capacity` records.
fn start_sink(
    sink: Box<dyn Sink>,
    capacity: usize,
    metrics: &Arc<Metrics>,
) -> Result<(LogQueue, LogSink), StartError> {
    let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
    let counters = Counters {
        depth: metrics.log_queue_depth.clone(),
        errors: metrics.log_sink_errors.with_label_values(&["write"]),
    };
    let control = Arc::new(Control::default());
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, control.reopen.clone())
        .map_err(StartError::Signal)?;
    let thread = {
        let control = control.clone();
        let queue = queue.clone();
        let enc = Encoder::new(metrics);
        std::thread::Builder::new()
            .name("hydrus-log-sink".into())
            .spawn(move || run(sink, &queue, &control, counters, enc))
            .map_err(StartError::Thread)?
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

/// The sink thread's loop state: the record it could not write, and the failure it is in.
struct Runner<'a> {
    sink: Box<dyn Sink>,
    queue: &'a Queue,
    control: &'a Control,
    c: Counters,
    enc: Encoder,
    held: Option<Box<Pending>>,
    failing: bool,
    last_error: String,
}

impl Runner<'_> {
    /// A failure: say so once, count it, back off.
    fn note(&mut self, e: SinkError) {
        if !self.failing {
            log::error!("log sink failing, holding records and retrying: {e}");
        }
        self.failing = true;
        self.c.errors.inc();
        self.last_error = e.to_string();
        std::thread::park_timeout(BACKOFF);
    }

    fn set_left(&self, left: usize, why: String) {
        *self
            .control
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((left, why));
    }

    /// Hand what is queued to the sink, in one go: how many it took, or why it stopped.
    fn drain(&mut self) -> Result<usize, SinkError> {
        let mut took = 0usize;
        while let Some(r) = self.held.take().or_else(|| self.queue.pop()) {
            if let Err(e) = self.sink.accept(&r, &mut self.enc) {
                self.held = Some(r);
                self.c.depth.set(self.queue.len() as i64);
                return Err(e);
            }
            took += 1;
        }
        self.c.depth.set(self.queue.len() as i64);
        Ok(took)
    }

    /// One turn: `Some(true)` when drained and closed down, `Some(false)` to stop at once
    /// (abandoned), `None` to go on.
    fn turn(&mut self) -> Option<bool> {
        if self.control.abandon.load(Ordering::SeqCst) {
            let left = self.queue.len() + usize::from(self.held.is_some()) + self.sink.buffered();
            let why = std::mem::take(&mut self.last_error);
            self.set_left(left, why);
            return Some(false);
        }
        if self.control.reopen.swap(false, Ordering::SeqCst) {
            log::info!("SIGUSR1: reopening the log file");
            if let Err(e) = self.sink.flush().and_then(|()| self.sink.reopen()) {
                self.note(e);
                return None;
            }
        }
        let took = match self.drain().and_then(|n| self.sink.tick().map(|()| n)) {
            Ok(n) => n,
            Err(e) => {
                self.note(e);
                return None;
            }
        };
        if self.failing {
            log::info!("log sink recovered");
            self.failing = false;
        }
        if self.control.stop.load(Ordering::SeqCst) && self.held.is_none() && self.queue.is_empty()
        {
            match self.sink.flush() {
                Ok(()) if !self.sink.has_buffered() => return Some(true),
                Ok(()) => {}
                Err(e) => self.note(e),
            }
            return None;
        }
        if took == 0 {
            // Nothing came: sleep until the next tick (or shutdown's unpark).
            std::thread::park_timeout(TICK);
        }
        None
    }

    /// Close the sink within what is left of the drain deadline.
    fn close(&mut self) {
        self.c.depth.set(0);
        let deadline = *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let within = deadline.map_or(Duration::from_secs(30), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if let Err(e) = self.sink.close(within) {
            self.set_left(self.sink.buffered(), e.to_string());
        }
    }
}

fn run(sink: Box<dyn Sink>, queue: &Queue, control: &Control, c: Counters, enc: Encoder) {
    let mut r = Runner {
        sink,
        queue,
        control,
        c,
        enc,
        held: None,
        failing: false,
        last_error: String::new(),
    };
    loop {
        match r.turn() {
            None => {}
            Some(true) => break,
            Some(false) => return,
        }
    }
    r.close();
}

/// Whether a librdkafka property may hold a secret (its value is not shown by `/config`).
pub fn secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "jaas", "key", "credential"]
        .iter()
        .any(|w| k.contains(w))
}
