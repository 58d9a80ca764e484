//! Following logs as they grow: a source of new lines (files here; a Kafka topic is the
//! other) that a long-running solver polls.

use super::{list_inputs, open, read_lines, LineSink, SourceError};
use crate::metrics::SolverMetrics;
use std::collections::{BTreeSet, HashMap};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where new records come from.
pub trait FollowSource {
    /// Read whatever is new into `sink`.
    fn poll(&mut self, sink: &mut dyn LineSink) -> Result<(), SourceError>;
    /// The table was written with every window except `open` (absolute indices) solved: the
    /// source may record its progress (Kafka commits offsets).
    fn written(&mut self, _open: &BTreeSet<usize>) -> Result<(), SourceError> {
        Ok(())
    }
    /// Files: the bytes not yet read when the last poll began (what arrived since the poll
    /// before, or a backlog).
    fn lag_bytes(&self) -> Option<u64> {
        None
    }
    /// Kafka: measure the lag per partition into `metrics` from a thread of its own, so that
    /// it keeps growing while the follow loop is stuck.
    fn watch_lag(&mut self, _metrics: &Arc<SolverMetrics>) {}
}

/// New lines of the `*.jsonl` files of a directory (or one file).
pub struct FileFollower {
    path: PathBuf,
    /// Per file: bytes and lines consumed so far.
    offsets: HashMap<PathBuf, (u64, u64)>,
    /// Bytes not yet read as the last poll began.
    pending: u64,
}

impl FileFollower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offsets: HashMap::new(),
            pending: 0,
        }
    }
}

impl FollowSource for FileFollower {
    fn poll(&mut self, c: &mut dyn LineSink) -> Result<(), SourceError> {
        self.pending = 0;
        for f in list_inputs(&self.path)? {
            let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            let (mut offset, mut lines) = self.offsets.get(&f).copied().unwrap_or((0, 0));
            let gz = f.extension().is_some_and(|e| e == "gz");
            if gz && self.offsets.contains_key(&f) {
                continue; // compressed files are read once, whole
            }
            if len < offset {
                // Truncated and rewritten: start over.
                (offset, lines) = (0, 0);
            }
            self.pending += len - offset;
            if len == offset && !gz {
                continue;
            }
            let mut r = if gz {
                open(&f)?
            } else {
                let reopen = |f: &Path| -> std::io::Result<std::fs::File> {
                    let mut file = std::fs::File::open(f)?;
                    file.seek(SeekFrom::Start(offset))?;
                    Ok(file)
                };
                let file = reopen(&f).map_err(|source| SourceError::Reopen {
                    path: f.clone(),
                    source,
                })?;
                Box::new(std::io::BufReader::new(file))
            };
            let (bytes, n) = read_lines(&mut *r, &f.display().to_string(), lines, None, c)?;
            self.offsets.insert(f, (offset + bytes, lines + n));
        }
        Ok(())
    }

    fn lag_bytes(&self) -> Option<u64> {
        Some(self.pending)
    }
}
