//! The k-table from the windows solved, and the people-readable report of them.

use super::{SetExpected, WindowReport};
use crate::write::OutputError;
use hydrus_filters::hydrus::ktable::{Expected, KTable, KTableFile, Row};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// A k-table's rows: `k` per scenario and window, and what the solver expected under it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRows {
    /// Per scenario, window `w`'s `k` of resource `r` at `w * K + r` (K = 1 without
    /// `resources`).
    pub k: BTreeMap<String, Vec<f64>>,
    pub expected: BTreeMap<String, Expected>,
    /// With several resources, their names (the table's `resources`); empty: one resource.
    pub resources: Vec<String>,
}

impl TableRows {
    /// `k` values per window: the resources, or one.
    fn per_window(&self) -> usize {
        self.resources.len().max(1)
    }
}

/// Split `w * K + r` values into one list per resource.
pub(crate) fn by_resource<T: Copy>(values: &[T], resources: &[String]) -> BTreeMap<String, Vec<T>> {
    let k = resources.len().max(1);
    resources
        .iter()
        .enumerate()
        .map(|(r, name)| {
            (
                name.clone(),
                values.iter().skip(r).step_by(k).copied().collect(),
            )
        })
        .collect()
}

pub fn table_from_rows(
    window_secs: u32,
    rows: TableRows,
    strategy_set: Option<String>,
) -> Result<KTable, OutputError> {
    let scenarios = rows
        .k
        .iter()
        .map(|(name, ks)| {
            let row = if rows.resources.is_empty() {
                Row::One(ks.clone())
            } else {
                Row::Many(by_resource(ks, &rows.resources))
            };
            (name.clone(), row)
        })
        .collect();
    KTable::new(KTableFile {
        window_secs,
        generated_at_ms: Some(hydrus_filters::clock::unix_ms()),
        strategy_set,
        resources: (!rows.resources.is_empty()).then_some(rows.resources),
        scenarios,
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
        let note = match (r.feasible, r.exact, r.resources.is_empty()) {
            (false, _, _) => "infeasible: cheapest strategies exceed I",
            (true, false, true) => "k within one bucket (0.07%) of exact",
            (true, false, false) => "not exact: the minimum lies outside the summary's band",
            (true, true, _) => "",
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
        for x in &r.resources {
            writeln!(
                w,
                "{:<12} {:>5} {:>8} {:>12.1} {:>12.6e} {:>8.4} {:>10.4}  resource {}",
                "", "", "", x.budget, x.k, x.cost_over_budget, x.cost_per_request, x.resource
            )?;
        }
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
            let k = (t.scenario_names().iter().enumerate())
                .filter_map(|(i, n)| Some((n.clone(), t.row(i)?.to_vec())))
                .collect();
            TableRows {
                k,
                expected: f.expected,
                resources: f.resources.unwrap_or_default(),
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
    let ks = r.ks();
    if rows.per_window() != ks.len() || rows.resources != r.resource_names() {
        // The resources changed (a new strategy set): the old rows are of no use.
        rows.k.clear();
        rows.expected.clear();
        rows.resources = r.resource_names();
    }
    let per = ks.len();
    let row = rows
        .k
        .entry(r.scenario.clone())
        .or_insert_with(|| ks.iter().copied().cycle().take(windows * per).collect());
    if let Some(slot) = row.get_mut(r.window * per..(r.window + 1) * per) {
        slot.copy_from_slice(&ks);
    }
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
