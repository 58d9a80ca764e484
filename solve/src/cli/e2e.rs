//! `hydrus solve --policy e2e`: the E2E decision table from the logs, solved once or, with
//! `--follow`, every `--interval`; rewritten only when its inputs moved (or `--force`).

use super::{follow_source, Format, SolveArgs, SolveError};
use crate::e2e::{self, E2eInputs, E2eOptions, E2eReport};
use crate::write::write_yaml;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The replica groups of the proxy's first e2e filter, and the controller's options from it
/// and the flags.
fn e2e_setup(args: &SolveArgs) -> Result<(Vec<String>, E2eOptions), SolveError> {
    let e = args.e2e.as_ref().ok_or(SolveError::Flag {
        flag: "--policy e2e",
        must: "needs --config (the proxy's config, with an e2e filter)",
    })?;
    if !(args.js_threshold >= 0.0 && args.js_threshold <= 1.0) {
        return Err(SolveError::Flag {
            flag: "--js-threshold",
            must: "must be within 0 and 1",
        });
    }
    let opts = E2eOptions {
        buckets: args.buckets,
        delta_ms: args.delta_ms,
        units: args.units,
        qoe: e.qoe_model,
        priorities: e.priorities,
    };
    Ok((e.groups.clone(), opts))
}

/// Solve, compare with the table at `out`, write when the inputs moved (or forced). Returns
/// whether it wrote.
fn e2e_solve_and_write(
    inputs: &E2eInputs,
    opts: &E2eOptions,
    args: &SolveArgs,
) -> Result<bool, SolveError> {
    let (file, report) = e2e::solve(inputs, opts)?;
    let old = std::fs::read_to_string(args.out()?)
        .ok()
        .and_then(|t| serde_norway::from_str::<hydrus_filters::e2e::E2eTableFile>(&t).ok());
    let moved = old.as_ref().map_or(1.0, |o| e2e::inputs_moved(o, &file));
    let write = args.force || moved > args.js_threshold;
    if write {
        write_yaml(
            args.out()?,
            "# written by `hydrus solve --policy e2e`",
            &file,
        )?;
    }
    match args.format {
        Format::Json => {
            let v =
                serde_json::json!({"report": report, "inputs_moved_js": moved, "written": write});
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => print_table(&report),
    }
    eprintln!(
        "{} {}: inputs moved by JS divergence {moved:.4} (threshold {})",
        if write { "wrote" } else { "kept" },
        args.out()?.display(),
        args.js_threshold
    );
    Ok(write)
}

/// The people-readable report: one line per bucket, then the QoE the models expect.
fn print_table(report: &E2eReport) {
    println!(
        "{:>6} {:>10} {:>10} {:>7}  route ({})  priority",
        "bucket",
        "from ms",
        "to ms",
        "share",
        report.groups.join(", ")
    );
    for b in &report.buckets {
        let route: Vec<String> = b.route.iter().map(|p| format!("{p:.2}")).collect();
        println!(
            "{:>6} {:>10.1} {:>10} {:>6.1}%  [{}]  {}",
            b.bucket,
            b.from_ms,
            b.to_ms.map_or("-".into(), |t| format!("{t:.1}")),
            b.share * 100.0,
            route.join(", "),
            b.priority.as_deref().unwrap_or("")
        );
    }
    println!(
        "QoE by the models: load balanced {:.4}, E2E {:.4} ({:+.1}%); split {:?}",
        report.default_qoe,
        report.e2e_qoe,
        report.gain * 100.0,
        report
            .split
            .iter()
            .map(|f| (f * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
}

/// Run `--policy e2e`.
pub(super) fn run(args: &SolveArgs) -> Result<(), SolveError> {
    let (groups, opts) = e2e_setup(args)?;
    let mut source = follow_source(args)?;
    if !args.follow {
        let mut inputs = E2eInputs::new(groups.clone());
        source.poll(&mut inputs)?;
        eprintln!(
            "read {} records ({} with an external delay); {} malformed",
            inputs.records,
            inputs.external.len(),
            inputs.malformed
        );
        for ex in &inputs.malformed_examples {
            eprintln!("  malformed: {ex}");
        }
        e2e_solve_and_write(&inputs, &opts, args)?;
        return Ok(source.written(&BTreeSet::new())?);
    }
    loop {
        let mut inputs = E2eInputs::new(groups.clone());
        let until = Instant::now() + args.interval;
        while Instant::now() < until {
            source.poll(&mut inputs)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        if inputs.external.len() < 50 {
            log::info!(
                "{} records with an external delay this interval: not enough to re-solve",
                inputs.external.len()
            );
            continue;
        }
        match e2e_solve_and_write(&inputs, &opts, args) {
            Ok(_) => source.written(&BTreeSet::new())?,
            Err(e) => log::warn!("e2e solve skipped: {e}"),
        }
    }
}
