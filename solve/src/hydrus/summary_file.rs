//! Summary files: what `hydrus solve --emit-summary FILE` writes from the records one process
//! saw, and `hydrus solve --merge FILES...` combines into the k-table. A versioned, documented
//! format (docs/solver.md, "Summary file"); a reader refuses another version or bucket layout
//! rather than guess.

use super::summary::{Bucket, SummaryParts, WindowSummary, MANTISSA_BITS};
use super::Budget;
use crate::read::{Collector, Keying, MultiTemplate, ReadStats};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `format` field of every summary file.
pub const FORMAT: &str = "hydrus-solve-summary";
/// The version written for one resource; readers accept it and [`VERSION_RESOURCES`].
pub const VERSION: u32 = 1;
/// The version written when strategies cost several resources (`resources`,
/// `multi_windows`), which a reader of version 1 only would misread.
pub const VERSION_RESOURCES: u32 = 2;
/// Most increments a window of a summary file keeps one by one (about half as many are
/// written): a part's band only needs to hold where the whole fleet's budget runs out, and
/// these make most of a file (a merge reads them all).
pub const FILE_CAP: usize = 8192;

/// Why summaries could not be written or merged; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SummaryFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a summary file: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {what} {found}, but this hydrus reads {wanted}", path.display())]
    Incompatible {
        path: PathBuf,
        what: &'static str,
        found: String,
        wanted: String,
    },
    #[error("{}: window_secs {found}, but {first} has {wanted}", path.display())]
    WindowMismatch {
        path: PathBuf,
        first: PathBuf,
        found: u32,
        wanted: u32,
    },
    #[error("--merge: no summary file given")]
    NoFiles,
    #[error(transparent)]
    Output(#[from] crate::write::OutputError),
}

/// A summary file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryFile {
    pub format: String,
    pub version: u32,
    pub window_secs: u32,
    /// Buckets per octave of efficiency, as a power of two.
    pub bucket_bits: u32,
    #[serde(default)]
    pub strategy_set: Option<String>,
    #[serde(default)]
    pub newest_ts_ms: Option<u64>,
    /// What reading found (the same fields as the JSON report's `read`).
    pub read: ReadStats,
    pub windows: Vec<WindowEntry>,
    /// With several resources (version 2): their names, and each window's multi-resource
    /// summary ([`crate::multi`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multi_windows: Vec<MultiEntry>,
}

/// One scenario and window of the day of a multi-resource summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultiEntry {
    pub scenario: String,
    pub window: usize,
    pub summary: crate::multi::MultiParts,
}

/// One scenario and window of the day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowEntry {
    pub scenario: String,
    pub window: usize,
    pub records: u64,
    pub base_cost: f64,
    pub base_qoe: f64,
    pub logged_cost: f64,
    pub logged_qoe: f64,
    /// `[key, count, cost, qoe, min_eff, max_eff]` per non-empty bucket.
    pub buckets: Vec<(u32, u64, f64, f64, f64, f64)>,
    /// Buckets `[lo, hi]` whose increments are all in `kept`; null when none.
    pub kept_range: Option<(u32, u32)>,
    /// `[cost, qoe]` of each increment of the kept buckets.
    pub kept: Vec<(f64, f64)>,
}

/// The summary file of what `c` read.
pub fn to_file(c: &Collector<WindowSummary>) -> SummaryFile {
    let mut f = file_of(c, c.pools.iter(), |w| w);
    f.read = c.stats.clone();
    if !c.multi.is_empty() {
        f.version = VERSION_RESOURCES;
        f.resources = c.resources.clone();
        f.multi_windows = (c.multi.iter())
            .map(|((scenario, window), m)| MultiEntry {
                scenario: scenario.clone(),
                window: *window,
                summary: m.to_parts(),
            })
            .collect();
    }
    f
}

/// A summary file of some of `c`'s pools, each window numbered by `window_of` (a collector
/// keyed by absolute window writes windows of the day); `read` is left empty.
pub fn file_of<'a>(
    c: &Collector<WindowSummary>,
    pools: impl Iterator<Item = (&'a (String, usize), &'a WindowSummary)>,
    window_of: impl Fn(usize) -> usize,
) -> SummaryFile {
    let windows = pools
        .map(|((scenario, window), s)| {
            let p = s.narrowed(FILE_CAP).to_parts();
            WindowEntry {
                scenario: scenario.clone(),
                window: window_of(*window),
                records: p.records,
                base_cost: p.base_cost,
                base_qoe: p.base_qoe,
                logged_cost: p.logged_cost,
                logged_qoe: p.logged_qoe,
                buckets: p
                    .buckets
                    .iter()
                    .map(|(k, b)| (*k, b.count, b.cost, b.qoe, b.min_eff, b.max_eff))
                    .collect(),
                kept_range: p.kept_range,
                kept: p.kept,
            }
        })
        .collect();
    SummaryFile {
        format: FORMAT.to_string(),
        version: VERSION,
        window_secs: c.window_secs,
        bucket_bits: MANTISSA_BITS,
        strategy_set: c.strategy_set.clone(),
        newest_ts_ms: c.newest_ts_ms(),
        read: ReadStats::default(),
        windows,
        resources: Vec::new(),
        multi_windows: Vec::new(),
    }
}

/// Write the summary of what `c` read to `out` (atomically).
pub fn write(out: &Path, c: &Collector<WindowSummary>) -> Result<(), SummaryFileError> {
    let text = serde_json::to_string(&to_file(c)).map_err(|source| SummaryFileError::Parse {
        path: out.to_path_buf(),
        source,
    })?;
    crate::write::write_atomic(out, &text)?;
    Ok(())
}

/// Read one summary file, checked.
pub fn read(path: &Path) -> Result<SummaryFile, SummaryFileError> {
    let bytes = std::fs::read(path).map_err(|source| SummaryFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, path)
}

/// A summary (a file's bytes, or a Kafka message's, `path` naming it), checked.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<SummaryFile, SummaryFileError> {
    let f: SummaryFile =
        serde_json::from_slice(bytes).map_err(|source| SummaryFileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    check(f, path)
}

/// A parsed summary of the format, version and bucket layout this hydrus reads, else why not.
pub fn check(f: SummaryFile, path: &Path) -> Result<SummaryFile, SummaryFileError> {
    let incompatible = |what, found: String, wanted: String| {
        Err(SummaryFileError::Incompatible {
            path: path.to_path_buf(),
            what,
            found,
            wanted,
        })
    };
    if f.format != FORMAT {
        return incompatible("format", f.format, FORMAT.to_string());
    }
    if f.version != VERSION && f.version != VERSION_RESOURCES {
        return incompatible(
            "version",
            f.version.to_string(),
            format!("{VERSION} or {VERSION_RESOURCES}"),
        );
    }
    if f.bucket_bits != MANTISSA_BITS {
        return incompatible(
            "bucket_bits",
            f.bucket_bits.to_string(),
            MANTISSA_BITS.to_string(),
        );
    }
    Ok(f)
}

/// A collector holding a summary file's windows (multi-resource ones as `template` makes
/// them: budgets per request).
pub(crate) fn collector_of(
    f: SummaryFile,
    cap: usize,
    budget: Budget,
    template: &MultiTemplate,
    path: &Path,
) -> Result<Collector<WindowSummary>, SummaryFileError> {
    let mut c = Collector::with_pool(
        f.window_secs,
        Keying::OfDay,
        WindowSummary::new(cap, budget),
    );
    let mut records = 0;
    let mut pools = BTreeMap::new();
    for w in f.windows {
        records += w.records;
        let parts = SummaryParts {
            records: w.records,
            base_cost: w.base_cost,
            base_qoe: w.base_qoe,
            logged_cost: w.logged_cost,
            logged_qoe: w.logged_qoe,
            buckets: w
                .buckets
                .into_iter()
                .map(|(key, count, cost, qoe, min_eff, max_eff)| {
                    let b = Bucket {
                        count,
                        cost,
                        qoe,
                        min_eff,
                        max_eff,
                    };
                    (key, b)
                })
                .collect(),
            kept_range: w.kept_range,
            kept: w.kept,
        };
        let s = WindowSummary::from_parts(parts, cap, budget);
        pools.insert((w.scenario, w.window), s);
    }
    let mut multi = BTreeMap::new();
    if !f.multi_windows.is_empty() {
        let names = &f.resources;
        let ok_names = (2..=hydrus_filters::resource::MAX_RESOURCES).contains(&names.len())
            && names.iter().all(|n| hydrus_filters::resource::name_ok(n))
            && names.windows(2).all(|w| w[0] < w[1]);
        if f.version != VERSION_RESOURCES || !ok_names {
            return Err(SummaryFileError::Incompatible {
                path: path.to_path_buf(),
                what: "resources",
                found: format!("version {}, resources [{}]", f.version, names.join(", ")),
                wanted: format!(
                    "version {VERSION_RESOURCES} with 2 to {} resource names in order",
                    hydrus_filters::resource::MAX_RESOURCES
                ),
            });
        }
    }
    for w in f.multi_windows {
        if w.summary.resources != f.resources.len() {
            return Err(SummaryFileError::Incompatible {
                path: path.to_path_buf(),
                what: "multi_windows",
                found: format!(
                    "{} window {}: {} resources",
                    w.scenario, w.window, w.summary.resources
                ),
                wanted: format!("{} (the file's `resources`)", f.resources.len()),
            });
        }
        records += w.summary.records;
        let m = template.from_parts(w.summary, &f.resources).map_err(|e| {
            SummaryFileError::Incompatible {
                path: path.to_path_buf(),
                what: "multi_windows",
                found: format!("{} window {}: {e}", w.scenario, w.window),
                wanted: "a valid multi-resource summary".to_string(),
            }
        })?;
        multi.insert((w.scenario, w.window), m);
    }
    c.restore(f.read, f.strategy_set, f.newest_ts_ms, pools, records);
    c.resources = f.resources;
    c.multi = multi;
    Ok(c)
}

/// Read and merge summary files (in parallel), as one collector that read all their records.
pub fn merge(
    paths: &[PathBuf],
    cap: usize,
    budget: Budget,
    template: &MultiTemplate,
) -> Result<Collector<WindowSummary>, SummaryFileError> {
    let first = paths.first().ok_or(SummaryFileError::NoFiles)?;
    let window_secs = read(first)?.window_secs;
    let merged = paths
        .par_iter()
        .map(|p| {
            let f = read(p)?;
            if f.window_secs != window_secs {
                return Err(SummaryFileError::WindowMismatch {
                    path: p.clone(),
                    first: first.clone(),
                    found: f.window_secs,
                    wanted: window_secs,
                });
            }
            Ok(Some(collector_of(f, cap, budget, template, p)?))
        })
        .try_reduce(
            || None,
            |a, b| match (a, b) {
                (Some(mut a), Some(b)) => {
                    a.merge(b);
                    Ok(Some(a))
                }
                (a, b) => Ok(a.or(b)),
            },
        )?;
    merged.ok_or(SummaryFileError::NoFiles)
}
