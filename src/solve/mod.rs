//! `hydrus solve`: per scenario and window of the day, the `k_t` that spends the window's budget
//! best, from decision logs; written as a k-table that `hydrus serve` hot-reloads.

pub mod algo;
pub mod e2e;
pub mod follow;
pub mod hedge;
pub mod input;
#[cfg(feature = "kafka")]
pub mod kafka_source;

use algo::{solve_bisection, solve_exact, Instance, Solution};
use hydrus_filters::ktable::{KTable, KTableFile};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The exact Lagrange multiplier (hull increments, weighted selection).
    Exact,
    /// The paper's Algorithm 2: bisection on k to within --epsilon.
    Bisection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// The Hydrus k-table (per scenario and window of the day).
    Hydrus,
    /// The E2E decision table (routing by external delay); needs --config.
    E2e,
    /// The hedge table (per-route reissue timeouts, Kwiken's SumVar); see --reissue-budget.
    Hedge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// How a window's budget `I` is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// The paper's observed capacity: the cost of the logged (`chosen`) strategies.
    Logged,
    /// Mean cost per request times the window's records.
    Mean(f64),
    /// The same total for every window.
    Total(f64),
}

impl Budget {
    pub fn for_instance(self, inst: &Instance) -> f64 {
        match self {
            Budget::Logged => inst.logged_budget(),
            Budget::Mean(c) => c * inst.len() as f64,
            Budget::Total(i) => i,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    pub window_secs: u32,
    pub budget: Budget,
    pub method: Method,
    pub epsilon: f64,
}

/// One window's result, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub scenario: String,
    pub window: usize,
    /// Start of the window, `HH:MM` UTC.
    pub start: String,
    pub records: usize,
    pub budget: f64,
    pub k: f64,
    pub cost: f64,
    pub cost_over_budget: f64,
    pub qoe: f64,
    pub lp_bound: f64,
    pub qoe_over_bound: f64,
    /// QoE of what was logged (`chosen`), and the solution's gain over it.
    pub logged_qoe: f64,
    pub gain: f64,
    pub feasible: bool,
    pub iterations: u32,
    /// Set when the window had no records and took this window's `k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled_from: Option<usize>,
}

/// Records grouped by scenario and window of the day.
pub type Pools = BTreeMap<(String, usize), Instance>;

pub fn hhmm(window: usize, window_secs: u32) -> String {
    let s = window as u64 * u64::from(window_secs);
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// Solve one window.
pub fn solve_window(inst: &Instance, opts: &SolveOptions) -> (f64, Solution) {
    let budget = opts.budget.for_instance(inst);
    let s = match opts.method {
        Method::Exact => solve_exact(inst, budget),
        Method::Bisection => solve_bisection(inst, budget, opts.epsilon),
    };
    (budget, s)
}

pub fn report(scenario: &str, window: usize, inst: &Instance, opts: &SolveOptions) -> WindowReport {
    let (budget, s) = solve_window(inst, opts);
    let logged_qoe = inst.logged().1;
    let lp_bound = if s.lp_bound.is_nan() {
        solve_exact(inst, budget).lp_bound
    } else {
        s.lp_bound
    };
    WindowReport {
        scenario: scenario.to_string(),
        window,
        start: hhmm(window, opts.window_secs),
        records: inst.len(),
        budget,
        k: s.k,
        cost: s.cost,
        cost_over_budget: if budget > 0.0 { s.cost / budget } else { 0.0 },
        qoe: s.qoe,
        lp_bound,
        qoe_over_bound: if lp_bound > 0.0 {
            s.qoe / lp_bound
        } else {
            1.0
        },
        logged_qoe,
        gain: if logged_qoe > 0.0 {
            s.qoe / logged_qoe - 1.0
        } else {
            0.0
        },
        feasible: s.feasible,
        iterations: s.iterations,
        filled_from: None,
    }
}

/// Solve every pool and fill windows without records from the nearest solved one (circularly;
/// the earlier on a tie). Returns the table rows and the reports, solved and filled.
pub fn solve_pools(
    pools: &Pools,
    opts: &SolveOptions,
) -> (BTreeMap<String, Vec<f64>>, Vec<WindowReport>) {
    let windows = (86_400 / opts.window_secs) as usize;
    let mut solved: BTreeMap<String, Vec<Option<WindowReport>>> = BTreeMap::new();
    for ((scenario, window), inst) in pools {
        if inst.is_empty() || *window >= windows {
            continue;
        }
        let r = report(scenario, *window, inst, opts);
        solved
            .entry(scenario.clone())
            .or_insert_with(|| vec![None; windows])[*window] = Some(r);
    }
    let mut rows = BTreeMap::new();
    let mut reports = Vec::new();
    for (scenario, slots) in solved {
        let mut row = vec![0.0; windows];
        for (w, slot) in row.iter_mut().enumerate() {
            let source = (0..=windows / 2)
                .flat_map(|d| [(w + windows - d) % windows, (w + d) % windows])
                .find(|&s| slots[s].is_some());
            let Some(src) = source else { continue };
            let Some(r) = &slots[src] else { continue };
            *slot = r.k;
            if src == w {
                reports.push(r.clone());
            } else {
                reports.push(WindowReport {
                    window: w,
                    start: hhmm(w, opts.window_secs),
                    records: 0,
                    budget: 0.0,
                    cost: 0.0,
                    cost_over_budget: 0.0,
                    qoe: 0.0,
                    lp_bound: 0.0,
                    qoe_over_bound: 0.0,
                    logged_qoe: 0.0,
                    gain: 0.0,
                    iterations: 0,
                    filled_from: Some(src),
                    ..r.clone()
                });
            }
        }
        rows.insert(scenario, row);
    }
    (rows, reports)
}

/// Write a k-table atomically (see [`write_atomic`]).
pub fn write_ktable(out: &Path, table: &KTable) -> Result<(), String> {
    let text = format!(
        "# written by `hydrus solve` ({} windows of {} s per scenario)\n{}",
        table.windows(),
        table.window_secs(),
        table.to_yaml()
    );
    write_atomic(out, &text)
}

pub fn table_from_rows(
    window_secs: u32,
    rows: BTreeMap<String, Vec<f64>>,
    strategy_set: Option<String>,
) -> Result<KTable, String> {
    KTable::new(KTableFile {
        window_secs,
        generated_at_ms: Some(crate::state::now_ms()),
        strategy_set,
        scenarios: rows,
    })
    .map_err(|e| format!("solver produced an invalid k-table: {e}"))
}

/// The people-readable report.
pub fn print_table(reports: &[WindowReport], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<12} {:>5} {:>8} {:>12} {:>12} {:>8} {:>12} {:>9} {:>8}  note",
        "scenario", "start", "records", "budget I", "k", "cost/I", "QoE", "QoE/bound", "gain"
    )?;
    for r in reports.iter().filter(|r| r.filled_from.is_none()) {
        let note = if r.feasible {
            ""
        } else {
            "infeasible: cheapest strategies exceed I"
        };
        writeln!(
            w,
            "{:<12} {:>5} {:>8} {:>12.1} {:>12.6e} {:>8.4} {:>12.3} {:>9.5} {:>+7.2}%  {note}",
            r.scenario,
            r.start,
            r.records,
            r.budget,
            r.k,
            r.cost_over_budget,
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
        let mut ranges: Vec<String> = Vec::new();
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
        writeln!(
            w,
            "{scenario:<12} {} window(s) without records take the k of the nearest solved window: {}",
            rs.len(),
            ranges.join(", ")
        )?;
    }
    Ok(())
}

/// `--window 15m` as whole seconds that divide a day.
pub fn window_secs(d: Duration) -> Result<u32, String> {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 || 86_400 % s != 0 {
        return Err(format!(
            "--window {}: must be whole seconds that divide a day",
            humantime::format_duration(d)
        ));
    }
    Ok(s as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(records: &[(f64, f64, f64, f64)]) -> Instance {
        let mut i = Instance::new();
        for &(c1, q1, c2, q2) in records {
            i.push(&[(c1, q1), (c2, q2)], Some(1));
        }
        i
    }

    #[test]
    fn fills_empty_windows_from_the_nearest() {
        let opts = SolveOptions {
            window_secs: 21_600, // 4 windows
            budget: Budget::Logged,
            method: Method::Exact,
            epsilon: 1e-9,
        };
        let mut pools = Pools::new();
        pools.insert(
            ("default".into(), 1),
            inst(&[(1.0, 0.1, 2.0, 0.5), (1.0, 0.1, 2.0, 0.2)]),
        );
        let (rows, reports) = solve_pools(&pools, &opts);
        let row = &rows["default"];
        assert_eq!(row.len(), 4);
        assert!(row.iter().all(|&k| k == row[1]));
        assert_eq!(
            reports.iter().filter(|r| r.filled_from == Some(1)).count(),
            3
        );
        assert_eq!(
            reports.iter().find(|r| r.window == 1).map(|r| r.records),
            Some(2)
        );
        let mut out = Vec::new();
        print_table(&reports, &mut out).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("3 window(s) without records take the k of the nearest solved window: 00:00, 12:00-18:00"),
            "{text}"
        );
    }

    #[test]
    fn budget_modes() {
        let i = inst(&[(1.0, 0.1, 3.0, 0.5), (1.0, 0.1, 3.0, 0.2)]);
        assert_eq!(Budget::Logged.for_instance(&i), 6.0);
        assert_eq!(Budget::Mean(2.0).for_instance(&i), 4.0);
        assert_eq!(Budget::Total(5.0).for_instance(&i), 5.0);
    }

    #[test]
    fn window_option() {
        assert_eq!(window_secs(Duration::from_secs(900)), Ok(900));
        assert!(window_secs(Duration::from_secs(7)).is_err());
        assert!(window_secs(Duration::from_millis(1500)).is_err());
    }
}

/// The `hydrus solve` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SolveArgs {
    /// Decision logs: a `.jsonl` file (gzip too), a directory of them, or kafka://BROKERS/TOPIC.
    #[arg(long)]
    pub logs: String,
    /// The k-table to write (atomically: a temp file renamed over it).
    #[arg(long)]
    pub out: PathBuf,
    /// Window length; must divide a day.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// Budget per window: mean cost per request (times the window's records).
    #[arg(long, conflicts_with = "budget_total")]
    pub budget_mean: Option<f64>,
    /// Budget per window: total cost. Default for both: the cost of what was logged.
    #[arg(long)]
    pub budget_total: Option<f64>,
    #[arg(long, value_enum, default_value = "exact")]
    pub method: Method,
    /// Bisection's tolerance on k.
    #[arg(long, default_value = "1e-9")]
    pub epsilon: f64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Keep reading new records and rewrite the table as each window closes.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: how long after its end a window is closed (records still in flight).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lateness: Duration,
    /// Kafka consumer group (its committed offsets say where to resume).
    #[arg(long, default_value = "hydrus-solver")]
    pub group: String,
    /// What to solve: the Hydrus k-table or the E2E decision table.
    #[arg(long, value_enum, default_value = "hydrus")]
    pub policy: Policy,
    /// E2E: the proxy's config, for the e2e filter's groups, QoE model and priority header.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// E2E: buckets of equal population (before splitting wide ones).
    #[arg(long, default_value_t = 10)]
    pub buckets: usize,
    /// E2E: the widest a bucket may be, in ms of external delay.
    #[arg(long, default_value_t = 500.0)]
    pub delta_ms: f64,
    /// E2E: request units (and slots) in the bipartite matching.
    #[arg(long, default_value_t = 60)]
    pub units: usize,
    /// E2E: rewrite the table only when the inputs moved by more than this Jensen-Shannon
    /// divergence (0-1) since it was solved.
    #[arg(long, default_value_t = 0.05)]
    pub js_threshold: f64,
    /// E2E: rewrite the table even when the inputs did not move.
    #[arg(long)]
    pub force: bool,
    /// Hedge: extra requests allowed for reissues, as a share of all requests.
    #[arg(long, default_value_t = 0.05)]
    pub reissue_budget: f64,
    /// E2E with --follow: re-solve this often, on the records of the last interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

fn stats_line(s: &input::ReadStats) -> String {
    let mut line = format!(
        "read {} records ({} lines, {} files); {} malformed, {} unusable, {} incomplete",
        s.records, s.lines, s.files, s.malformed, s.unusable, s.incomplete
    );
    if s.other_strategy_set > 0 {
        line.push_str(&format!(
            "; {} of an older strategy set (skipped: the table is solved for the newest)",
            s.other_strategy_set
        ));
    }
    if s.undeclared_scenario > 0 {
        line.push_str(&format!(
            "; {} with an undeclared scenario (skipped)",
            s.undeclared_scenario
        ));
    }
    for e in &s.malformed_examples {
        line.push_str(&format!("\n  malformed: {e}"));
    }
    line
}

/// Run `hydrus solve`.
pub fn run(args: &SolveArgs) -> Result<(), String> {
    match args.policy {
        Policy::E2e => return run_e2e(args),
        Policy::Hedge => return run_hedge(args),
        Policy::Hydrus => {}
    }
    let budget = match (args.budget_mean, args.budget_total) {
        (Some(c), _) if c.is_finite() && c >= 0.0 => Budget::Mean(c),
        (_, Some(i)) if i.is_finite() && i >= 0.0 => Budget::Total(i),
        (None, None) => Budget::Logged,
        _ => return Err("--budget-mean/--budget-total must be finite numbers >= 0".into()),
    };
    if !(args.epsilon > 0.0 && args.epsilon.is_finite()) {
        return Err("--epsilon must be a positive number".into());
    }
    let opts = SolveOptions {
        window_secs: window_secs(args.window)?,
        budget,
        method: args.method,
        epsilon: args.epsilon,
    };
    let kafka = args.logs.starts_with("kafka://");
    if args.follow {
        let fo = follow::FollowOptions {
            out: args.out.clone(),
            lateness: args.lateness,
            poll: Duration::from_millis(500),
            json: args.format == Format::Json,
        };
        if kafka {
            #[cfg(feature = "kafka")]
            {
                let mut src = kafka_source::KafkaSource::new(&args.logs, &args.group)?;
                return follow::run(&mut src, &opts, &fo);
            }
            #[cfg(not(feature = "kafka"))]
            return Err("this hydrus was built without the `kafka` feature".into());
        }
        let mut src = follow::FileFollower::new(Path::new(&args.logs));
        return follow::run(&mut src, &opts, &fo);
    }

    let started = std::time::Instant::now();
    let mut c = input::Collector::new(opts.window_secs, input::Keying::OfDay);
    #[cfg(feature = "kafka")]
    let mut kafka_src = None;
    if kafka {
        #[cfg(feature = "kafka")]
        {
            let mut src = kafka_source::KafkaSource::new(&args.logs, &args.group)?;
            src.read_to_end(&mut c)?;
            kafka_src = Some(src);
        }
        #[cfg(not(feature = "kafka"))]
        return Err("this hydrus was built without the `kafka` feature".into());
    } else {
        c.stats.files = input::read_path(Path::new(&args.logs), &mut c)?;
    }
    let read_time = started.elapsed();
    eprintln!("{}", stats_line(&c.stats));
    if c.pools.values().all(|i| i.is_empty()) {
        return Err(format!("{}: no usable record", args.logs));
    }
    let solve_started = std::time::Instant::now();
    let (rows, reports) = solve_pools(&c.pools, &opts);
    let solve_time = solve_started.elapsed();
    let table = table_from_rows(opts.window_secs, rows, c.strategy_set.clone())?;
    write_ktable(&args.out, &table)?;
    #[cfg(feature = "kafka")]
    if let Some(src) = kafka_src {
        src.commit_all()?;
    }
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "method": opts.method,
                "window_secs": opts.window_secs,
                "read": c.stats,
                "read_seconds": read_time.as_secs_f64(),
                "solve_seconds": solve_time.as_secs_f64(),
                "windows": reports,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let mut out = std::io::stdout();
            print_table(&reports, &mut out).map_err(|e| e.to_string())?;
        }
    }
    let solved = reports.iter().filter(|r| r.filled_from.is_none()).count();
    eprintln!(
        "wrote {}: {} scenario(s), {} window(s) solved, {} filled from the nearest; read {:.2}s, solve {:.3}s ({:?})",
        args.out.display(),
        table.scenario_names().len(),
        solved,
        reports.len() - solved,
        read_time.as_secs_f64(),
        solve_time.as_secs_f64(),
        opts.method
    );
    Ok(())
}

fn e2e_setup(args: &SolveArgs) -> Result<(Vec<String>, e2e::E2eOptions), String> {
    let cfg = args
        .config
        .as_ref()
        .ok_or("--policy e2e needs --config (the proxy's config, with an e2e filter)")?;
    let running =
        crate::config::load(cfg, &crate::metrics::Metrics::new()).map_err(|e| e.to_string())?;
    let e = running
        .routes
        .iter()
        .find_map(|r| r.route.chain.e2e())
        .ok_or_else(|| format!("{}: has no e2e filter", cfg.display()))?;
    if !(args.js_threshold >= 0.0 && args.js_threshold <= 1.0) {
        return Err("--js-threshold must be within 0 and 1".into());
    }
    let opts = e2e::E2eOptions {
        buckets: args.buckets,
        delta_ms: args.delta_ms,
        units: args.units,
        qoe: e.qoe_model,
        priorities: e.priority_header.is_some(),
    };
    Ok((e.group_names.clone(), opts))
}

/// Solve, compare with the table at `out`, write when the inputs moved (or forced). Returns
/// whether it wrote.
fn e2e_solve_and_write(
    inputs: &e2e::E2eInputs,
    opts: &e2e::E2eOptions,
    args: &SolveArgs,
) -> Result<bool, String> {
    let (file, report) = e2e::solve(inputs, opts)?;
    let old = std::fs::read_to_string(&args.out)
        .ok()
        .and_then(|t| serde_yaml::from_str::<hydrus_filters::e2e::E2eTableFile>(&t).ok());
    let moved = old.as_ref().map_or(1.0, |o| e2e::inputs_moved(o, &file));
    let write = args.force || moved > args.js_threshold;
    if write {
        let text = format!(
            "# written by `hydrus solve --policy e2e`\n{}",
            serde_yaml::to_string(&file).map_err(|e| e.to_string())?
        );
        write_atomic(&args.out, &text)?;
    }
    match args.format {
        Format::Json => {
            let v =
                serde_json::json!({"report": report, "inputs_moved_js": moved, "written": write});
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
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
    }
    eprintln!(
        "{} {}: inputs moved by JS divergence {moved:.4} (threshold {})",
        if write { "wrote" } else { "kept" },
        args.out.display(),
        args.js_threshold
    );
    Ok(write)
}

/// Write a file atomically: a temp file in the same directory, fsynced, renamed over `out`, so
/// that a proxy reloading it never sees half a table.
pub fn write_atomic(out: &Path, text: &str) -> Result<(), String> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", out.display())
    })
}

/// The logs as a [`follow::FollowSource`]: files or a Kafka topic.
fn follow_source(args: &SolveArgs) -> Result<Box<dyn follow::FollowSource>, String> {
    Ok(if args.logs.starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            Box::new(kafka_source::KafkaSource::new(&args.logs, &args.group)?)
        }
        #[cfg(not(feature = "kafka"))]
        return Err("this hydrus was built without the `kafka` feature".into());
    } else {
        Box::new(follow::FileFollower::new(Path::new(&args.logs)))
    })
}

fn run_hedge(args: &SolveArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.reissue_budget) {
        return Err("--reissue-budget must be a share within 0 and 1".into());
    }
    let mut source = follow_source(args)?;
    let mut inputs = hedge::HedgeInputs::default();
    source.poll(&mut inputs)?;
    eprintln!(
        "read {} records ({} already hedged, left out); {} malformed",
        inputs.records, inputs.hedged, inputs.malformed
    );
    let (file, report) = hedge::solve(&inputs, args.reissue_budget)?;
    let text = format!(
        "# written by `hydrus solve --policy hedge`\n{}",
        serde_yaml::to_string(&file).map_err(|e| e.to_string())?
    );
    write_atomic(&args.out, &text)?;
    source.written(&std::collections::BTreeSet::new())?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Format::Table => {
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
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn run_e2e(args: &SolveArgs) -> Result<(), String> {
    let (groups, opts) = e2e_setup(args)?;
    let mut source = follow_source(args)?;
    if !args.follow {
        let mut inputs = e2e::E2eInputs::new(groups.clone());
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
        return source.written(&std::collections::BTreeSet::new());
    }
    loop {
        let mut inputs = e2e::E2eInputs::new(groups.clone());
        let until = std::time::Instant::now() + args.interval;
        while std::time::Instant::now() < until {
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
            Ok(_) => source.written(&std::collections::BTreeSet::new())?,
            Err(e) => log::warn!("e2e solve skipped: {e}"),
        }
    }
}
