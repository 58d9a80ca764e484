//! The k-table from the windows solved, and the people-readable report of them.

use super::{SetExpected, WindowReport};
use crate::write::OutputError;
use hydrus_filters::hydrus::ktable::{Expected, KTable, KTableFile};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

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
        generated_at_ms: Some(hydrus_filters::clock::unix_ms()),
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

/// The k-table being maintained: rows by scenario.
pub fn base_rows(out: &Path, window_secs: u32) -> TableRows {
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
pub fn set_slot(rows: &mut TableRows, r: &WindowReport, windows: usize) {
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
pub fn print_reports(reports: &[WindowReport], json: bool) {
    if json {
        for r in reports {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        let _ = print_table(reports, &mut std::io::stdout());
    }
}
