//! `hydrus solve --policy hedge`: the hedge table (per-route reissue timeouts) from the logged
//! upstream times, within `--reissue-budget`.

use super::{follow_source, Format, SolveArgs, SolveError};
use crate::hedge::{self, HedgeInputs, HedgeReport};
use crate::write::write_yaml;
use std::collections::BTreeSet;

/// Run `--policy hedge`.
pub(super) fn run(args: &SolveArgs) -> Result<(), SolveError> {
    if !(0.0..=1.0).contains(&args.reissue_budget) {
        return Err(SolveError::Flag {
            flag: "--reissue-budget",
            must: "must be a share within 0 and 1",
        });
    }
    let mut source = follow_source(args)?;
    let mut inputs = HedgeInputs::default();
    source.poll(&mut inputs)?;
    eprintln!(
        "read {} records ({} already hedged, left out); {} malformed",
        inputs.records, inputs.hedged, inputs.malformed
    );
    let (file, report) = hedge::solve(&inputs, args.reissue_budget)?;
    write_yaml(
        args.out()?,
        "# written by `hydrus solve --policy hedge`",
        &file,
    )?;
    source.written(&BTreeSet::new())?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Format::Table => print_table(&report),
    }
    eprintln!("wrote {}", args.out()?.display());
    Ok(())
}

/// The people-readable report: one line per route, then the tail before and after.
fn print_table(report: &HedgeReport) {
    println!(
        "{:<14} {:>7} {:>9} {:>9} {:>12} {:>9} {:>14}",
        "route", "share", "p50 ms", "p99 ms", "timeout ms", "reissued", "p99 hedged ms"
    );
    for r in &report.routes {
        println!(
            "{:<14} {:>6.1}% {:>9.1} {:>9.1} {:>12} {:>8.1}% {:>14.1}",
            r.route,
            r.share * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.timeout_ms.map_or("-".into(), |t| format!("{t:.1}")),
            r.reissue_rate * 100.0,
            r.p99_with_reissue_ms
        );
    }
    println!(
        "extra load {:.2}% of budget {:.2}%; p99 {:.1} ms -> {:.1} ms ({:.1}% lower)",
        report.extra_load * 100.0,
        report.budget * 100.0,
        report.p99_ms,
        report.p99_with_reissue_ms,
        report.p99_reduction * 100.0
    );
}
