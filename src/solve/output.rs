//! What `hydrus solve` writes: tables, atomically (a proxy hot-reloads them and must never see
//! half of one), and the people-readable reports. Kept apart from the solvers so that the k,
//! E2E and hedge commands write their files the same way.

use super::input::ReadStats;
use super::WindowReport;
use hydrus_filters::ktable::{Expected, KTable, KTableError, KTableFile};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a table could not be written; each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory of `--out` could not be created.
    #[error("{}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing, syncing or renaming the temp file over `path` failed.
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A table could not be serialized as YAML.
    #[error("{}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// The solver's rows do not make a k-table the proxy would load (a bug if ever seen).
    #[error("solver produced an invalid k-table: {0}")]
    InvalidKTable(#[source] KTableError),
}

/// Write a file atomically: a temp file in the same directory, fsynced, renamed over `out`, so
/// that a proxy reloading it never sees half a table.
pub fn write_atomic(out: &Path, text: &str) -> Result<(), OutputError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Err(source) = std::fs::create_dir_all(&dir) {
        return Err(OutputError::CreateDir { dir, source });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "table.yaml".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    res.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        OutputError::Write {
            path: out.to_path_buf(),
            source,
        }
    })
}

/// Write `table` as YAML under a `header` comment line, atomically (see [`write_atomic`]).
pub fn write_yaml<T: serde::Serialize>(
    out: &Path,
    header: &str,
    table: &T,
) -> Result<(), OutputError> {
    let yaml = serde_yaml::to_string(table).map_err(|source| OutputError::Yaml {
        path: out.to_path_buf(),
        source,
    })?;
    write_atomic(out, &format!("{header}\n{yaml}"))
}

/// Write a k-table atomically (see [`write_atomic`]).
pub fn write_ktable(out: &Path, table: &KTable) -> Result<(), OutputError> {
    let text = format!(
        "# written by `hydrus solve` ({} windows of {} s per scenario)\n{}",
        table.windows(),
        table.window_secs(),
        table.to_yaml()
    );
    write_atomic(out, &text)
}

/// A k-table's rows: `k` per scenario and window, and what the solver expected under it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRows {
    pub k: BTreeMap<String, Vec<f64>>,
    pub expected: BTreeMap<String, Expected>,
}

pub fn table_from_rows(
    window_secs: u32,
    rows: TableRows,
    strategy_set: Option<String>,
) -> Result<KTable, OutputError> {
    KTable::new(KTableFile {
        window_secs,
        generated_at_ms: Some(crate::state::now_ms()),
        strategy_set,
        scenarios: rows.k,
        expected: rows.expected,
    })
    .map_err(OutputError::InvalidKTable)
}

/// The people-readable report.
pub fn print_table(reports: &[WindowReport], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<12} {:>5} {:>8} {:>12} {:>12} {:>8} {:>10} {:>9} {:>12} {:>9} {:>8}  note",
        "scenario",
        "start",
        "records",
        "budget I",
        "k",
        "cost/I",
        "cost/req",
        "QoE/req",
        "QoE",
        "QoE/bound",
        "gain"
    )?;
    for r in reports.iter().filter(|r| r.filled_from.is_none()) {
        let note = match (r.feasible, r.exact) {
            (false, _) => "infeasible: cheapest strategies exceed I",
            (true, false) => "k within one bucket (0.07%) of exact",
            (true, true) => "",
        };
        writeln!(
            w,
            "{:<12} {:>5} {:>8} {:>12.1} {:>12.6e} {:>8.4} {:>10.4} {:>9.5} {:>12.3} {:>9.5} {:>+7.2}%  {note}",
            r.scenario,
            r.start,
            r.records,
            r.budget,
            r.k,
            r.cost_over_budget,
            r.cost_per_request,
            r.qoe_per_request,
            r.qoe,
            r.qoe_over_bound,
            r.gain * 100.0
        )?;
    }
    // Windows without records, one line per scenario: their starts as ranges.
    let mut empty: BTreeMap<&str, Vec<&WindowReport>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.filled_from.is_some()) {
        empty.entry(r.scenario.as_str()).or_default().push(r);
    }
    for (scenario, rs) in empty {
        writeln!(
            w,
            "{scenario:<12} {} window(s) without records take the k of the nearest solved window: {}",
            rs.len(),
            window_ranges(&rs).join(", ")
        )?;
    }
    Ok(())
}

/// The starts of consecutive windows as `HH:MM-HH:MM` ranges (a lone window as `HH:MM`).
fn window_ranges(rs: &[&WindowReport]) -> Vec<String> {
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < rs.len() {
        let mut j = i;
        while j + 1 < rs.len() && rs[j + 1].window == rs[j].window + 1 {
            j += 1;
        }
        ranges.push(if i == j {
            rs[i].start.clone()
        } else {
            format!("{}-{}", rs[i].start, rs[j].start)
        });
        i = j + 1;
    }
    ranges
}

/// What reading found, one line (and one more per malformed example), for stderr.
pub fn stats_line(s: &ReadStats) -> String {
    let mut line = format!(
        "read {} records ({} lines, {} files); {} malformed, {} incomplete",
        s.records, s.lines, s.files, s.malformed, s.incomplete
    );
    let skipped = [
        (
            s.no_decision,
            "with no hydrus decision (routes without a hydrus stage)",
        ),
        (
            s.unusable,
            "unusable (a decision without a QoE header, or with values that are not numbers)",
        ),
        (s.undeclared_scenario, "with an undeclared scenario"),
        (s.other_route, "of another route than --route"),
        (
            s.other_strategy_set,
            "of an older strategy set (the table is solved for the newest)",
        ),
    ];
    for (n, why) in skipped {
        if n > 0 {
            line.push_str(&format!("; skipped {n} {why}"));
        }
    }
    for e in &s.malformed_examples {
        line.push_str(&format!("\n  malformed: {e}"));
    }
    line
}
