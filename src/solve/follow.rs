//! `hydrus solve --follow`: keep reading new records and, each time a window closes, solve it
//! and rewrite its slot of the k-table (the paper's "update the parameters every 15 minutes").
//!
//! Records are grouped by absolute window (day and window), so each occurrence is solved on its
//! own records; its `k` replaces that window-of-day's slot. A window is closed once the clock is
//! `lateness` past its end, so records still in proxies' queues make it in.

use super::input::{list_inputs, open, read_lines, Collector, InputError, Keying, LineSink, Pool};
use super::output::{print_table, table_from_rows, write_ktable, OutputError, TableRows};
use super::{SetExpected, SolveOptions, WindowData, WindowReport};
use crate::state::now_ms;
use hydrus_filters::KTable;
use std::collections::{BTreeSet, HashMap};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why following the logs stopped: a source that cannot be read, or a table not written.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// A growing log file could not be reopened at the offset read so far.
    #[error("{}: {source}", path.display())]
    Reopen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] super::kafka_source::KafkaError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Group(#[from] super::kafka_group::GroupError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    SeveralRoutes(#[from] super::input::SeveralRoutes),
}

/// Where new records come from.
pub trait FollowSource {
    /// Read whatever is new into `sink`.
    fn poll(&mut self, sink: &mut dyn LineSink) -> Result<(), FollowError>;
    /// The table was written with every window except `open` (absolute indices) solved: the
    /// source may record its progress (Kafka commits offsets).
    fn written(&mut self, _open: &BTreeSet<usize>) -> Result<(), FollowError> {
        Ok(())
    }
}

/// New lines of the `*.jsonl` files of a directory (or one file).
pub struct FileFollower {
    path: PathBuf,
    /// Per file: bytes and lines consumed so far.
    offsets: HashMap<PathBuf, (u64, u64)>,
}

impl FileFollower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offsets: HashMap::new(),
        }
    }
}

impl FollowSource for FileFollower {
    fn poll(&mut self, c: &mut dyn LineSink) -> Result<(), FollowError> {
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
                let file = reopen(&f).map_err(|source| FollowError::Reopen {
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
}

pub struct FollowOptions {
    pub out: PathBuf,
    pub lateness: Duration,
    pub poll: Duration,
    pub json: bool,
}

/// The k-table being maintained: rows by scenario.
pub(super) fn base_rows(out: &Path, window_secs: u32) -> TableRows {
    match std::fs::read_to_string(out).ok().map(|t| KTable::parse(&t)) {
        Some(Ok(t)) if t.window_secs() == window_secs => {
            let f = t.to_file();
            TableRows {
                k: f.scenarios,
                expected: f.expected,
            }
        }
        Some(Ok(_)) => {
            log::warn!(
                "{}: a different window length; starting a new table",
                out.display()
            );
            TableRows::default()
        }
        Some(Err(e)) => {
            log::warn!("{}: {e}; starting a new table", out.display());
            TableRows::default()
        }
        None => TableRows::default(),
    }
}

/// Put a window's report into its slot of the rows (a new scenario's row takes its `k` in
/// every window, its expectation only in this one).
pub(super) fn set_slot(rows: &mut TableRows, r: &WindowReport, windows: usize) {
    let row = rows
        .k
        .entry(r.scenario.clone())
        .or_insert_with(|| vec![r.k; windows]);
    row[r.window] = r.k;
    rows.expected
        .entry(r.scenario.clone())
        .or_default()
        .set(r.window, r, windows);
}

/// The reports of the windows just solved on stdout: one JSON object a line, or the table.
pub(super) fn print_reports(reports: &[WindowReport], json: bool) {
    if json {
        for r in reports {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        let _ = print_table(reports, &mut std::io::stdout());
    }
}

/// Run until the source fails; each open window's records go into a pool like `template`
/// (records, or a summary).
pub fn run<P: Pool + WindowData>(
    source: &mut dyn FollowSource,
    opts: &SolveOptions,
    fo: &FollowOptions,
    template: P,
) -> Result<(), FollowError> {
    let windows = (86_400 / opts.window_secs) as usize;
    let window_ms = u64::from(opts.window_secs) * 1000;
    let mut rows = base_rows(&fo.out, opts.window_secs);
    let mut c = Collector::with_pool(opts.window_secs, Keying::Absolute, template)
        .for_route(opts.route.clone());
    let mut first = true;
    loop {
        source.poll(&mut c)?;
        c.stats.one_route()?;
        let now = now_ms();
        if std::mem::take(&mut first) && !c.pools.is_empty() {
            // At start, a table from everything read so far, open windows included (they are
            // solved again when they close): proxies need not wait for a window to close.
            let mut keys: Vec<&(String, usize)> = c.pools.keys().collect();
            keys.sort_by_key(|(_, w)| *w);
            for (scenario, abs) in keys {
                if let Some(inst) = c.pools.get(&(scenario.clone(), *abs)) {
                    let r = inst.window_report(scenario, abs % windows, opts);
                    set_slot(&mut rows, &r, windows);
                }
            }
            let table = table_from_rows(opts.window_secs, rows.clone(), c.strategy_set.clone())?;
            write_ktable(&fo.out, &table)?;
            log::info!(
                "wrote {} from the {} records read at start",
                fo.out.display(),
                c.stats.records
            );
        }
        let closed: Vec<(String, usize)> = c
            .pools
            .keys()
            .filter(|(_, w)| (*w as u64 + 1) * window_ms + fo.lateness.as_millis() as u64 <= now)
            .cloned()
            .collect();
        if !closed.is_empty() {
            let mut reports = Vec::new();
            for key in &closed {
                let Some(inst) = c.pools.remove(key) else {
                    continue;
                };
                let (scenario, abs) = key;
                let r = inst.window_report(scenario, abs % windows, opts);
                set_slot(&mut rows, &r, windows);
                reports.push(r);
            }
            let table = table_from_rows(opts.window_secs, rows.clone(), c.strategy_set.clone())?;
            write_ktable(&fo.out, &table)?;
            let open: BTreeSet<usize> = c.pools.keys().map(|(_, w)| *w).collect();
            source.written(&open)?;
            print_reports(&reports, fo.json);
            log::info!(
                "wrote {} ({} window(s) closed; {} records read, {} malformed)",
                fo.out.display(),
                reports.len(),
                c.stats.records,
                c.stats.malformed
            );
        }
        std::thread::sleep(fo.poll);
    }
}
