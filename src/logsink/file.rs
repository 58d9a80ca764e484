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
                tracing::warn!(
                    file = %c.path.display(),
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
mod tests;
