//! `hydrus solve --policy hydrus` (the default): the k-table, either from the logs read to
//! their end (batch) or rewritten as each window closes (`--follow`).

use super::{follow_source, window_secs, Format, SolveArgs, SolveError};
use crate::hydrus::algo::Instance;
use crate::hydrus::output::{print_table, table_from_rows};
use crate::hydrus::summary::{WindowSummary, DEFAULT_CAP};
use crate::hydrus::{follow, summary_file};
use crate::hydrus::{solve_pools, Budget, Method, SolveOptions, WindowData, WindowReport};
use crate::metrics::SolverMetrics;
#[cfg(feature = "kafka")]
use crate::read::kafka::KafkaSource;
use crate::read::parallel;
use crate::read::{stats_line, Collector, Keying, MultiTemplate, Pool, ReadStats};
use crate::write::write_ktable;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The solver's options from the flags, checked.
fn solve_options(args: &SolveArgs) -> Result<SolveOptions, SolveError> {
    let budget = match (args.budget_mean, args.budget_total) {
        (Some(c), _) if c.is_finite() && c >= 0.0 => Budget::Mean(c),
        (_, Some(i)) if i.is_finite() && i >= 0.0 => Budget::Total(i),
        (None, None) => Budget::Logged,
        _ => {
            return Err(SolveError::Flag {
                flag: "--budget-mean/--budget-total",
                must: "must be finite numbers >= 0",
            })
        }
    };
    if !(args.epsilon > 0.0 && args.epsilon.is_finite()) {
        return Err(SolveError::Flag {
            flag: "--epsilon",
            must: "must be a positive number",
        });
    }
    Ok(SolveOptions {
        window_secs: window_secs(args.window)?,
        budget,
        method: args.method,
        epsilon: args.epsilon,
        route: args.route.clone(),
    })
}

/// Where the batch read its records from: a Kafka topic's offsets are committed only once the
/// table is written, so a failed run reads them again.
enum Batch {
    Files,
    #[cfg(feature = "kafka")]
    Kafka(KafkaSource),
}

impl Batch {
    /// Read `--logs` to its end into a collector like `proto`: files on every core, a Kafka
    /// topic from one consumer.
    fn read<P: Pool + Send + Sync>(
        args: &SolveArgs,
        proto: Collector<P>,
    ) -> Result<(Self, Collector<P>), SolveError> {
        let logs = args.logs();
        if !logs.starts_with("kafka://") {
            let c = parallel::read_path_parallel(Path::new(logs), &proto, parallel::CHUNK_BYTES)?;
            return Ok((Batch::Files, c));
        }
        #[cfg(feature = "kafka")]
        {
            let mut c = proto;
            let mut src = KafkaSource::new(logs, &args.group, &args.kafka_properties)?;
            src.read_to_end(&mut c)?;
            Ok((Batch::Kafka(src), c))
        }
        #[cfg(not(feature = "kafka"))]
        Err(SolveError::NoKafka)
    }

    /// The table is written: a Kafka source commits what it read.
    fn written(self) -> Result<(), SolveError> {
        match self {
            Batch::Files => Ok(()),
            #[cfg(feature = "kafka")]
            Batch::Kafka(src) => Ok(src.commit_all()?),
        }
    }
}

/// How multi-resource windows are summarized: the budgets per request of `--budget-per-request`
/// and `--config`.
fn multi_template(args: &SolveArgs) -> MultiTemplate {
    MultiTemplate {
        budget_per_request: args.budget_per_request.iter().cloned().collect(),
        ..MultiTemplate::default()
    }
}

/// Run `--policy hydrus`.
pub(super) fn run(args: &SolveArgs) -> Result<(), SolveError> {
    let opts = solve_options(args)?;
    let multi = multi_template(args);
    let summary = WindowSummary::new(DEFAULT_CAP, opts.budget);
    if args.follow {
        let metrics = Arc::new(SolverMetrics::new());
        if let Some(addr) = args.metrics_listen {
            let bound = metrics.serve(addr)?;
            log::info!("solver metrics on http://{bound}/metrics and /ready");
        }
        let fo = crate::hydrus::FollowOptions {
            multi: multi.clone(),
            out: args.out()?.to_path_buf(),
            lateness: args.lateness,
            poll: Duration::from_millis(500),
            json: args.format == Format::Json,
            metrics,
        };
        if let Some(summaries) = &args.summaries {
            return follow_in_group(args, summaries, &opts, &fo);
        }
        let mut src = follow_source(args)?;
        if keeps_records(&opts) {
            follow::run(&mut *src, &opts, &fo, Instance::new())?;
        } else {
            follow::run(&mut *src, &opts, &fo, summary)?;
        }
        return Ok(());
    }
    let started = Instant::now();
    if !args.merge.is_empty() {
        let c = summary_file::merge(&args.merge, DEFAULT_CAP, opts.budget, &multi)?;
        return solve_and_write(args, &opts, c, Batch::Files, started);
    }
    if keeps_records(&opts) && args.emit_summary.is_none() {
        let proto = Collector::new(opts.window_secs, Keying::OfDay)
            .for_route(opts.route.clone())
            .with_multi(multi);
        let (batch, c) = Batch::read(args, proto)?;
        return solve_and_write(args, &opts, c, batch, started);
    }
    let proto = Collector::with_pool(opts.window_secs, Keying::OfDay, summary)
        .for_route(opts.route.clone())
        .with_multi(multi);
    let (batch, c) = Batch::read(args, proto)?;
    if let Some(path) = &args.emit_summary {
        eprintln!("{}", stats_line(&c.stats));
        one_route(args, &c.stats)?;
        summary_file::write(path, &c)?;
        eprintln!("wrote {}: {} window(s)", path.display(), c.pools.len());
        if args.out.is_none() {
            return batch.written();
        }
    }
    solve_and_write(args, &opts, c, batch, started)
}

/// `--follow --summaries`: one member of a group of solvers sharing the log topic.
fn follow_in_group(
    args: &SolveArgs,
    summaries: &str,
    opts: &SolveOptions,
    fo: &crate::hydrus::FollowOptions,
) -> Result<(), SolveError> {
    if keeps_records(opts) {
        return Err(SolveError::Flag {
            flag: "--summaries",
            must: "solves from summaries: not with --method bisection or --budget-total",
        });
    }
    if !args.logs().starts_with("kafka://") {
        return Err(SolveError::Flag {
            flag: "--summaries",
            must: "needs --logs kafka://BROKERS/TOPIC (the group splits its partitions)",
        });
    }
    #[cfg(feature = "kafka")]
    {
        crate::hydrus::group::run(
            args.logs(),
            summaries,
            &args.group,
            &args.kafka_properties,
            opts,
            fo,
        )?;
        Ok(())
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (summaries, fo);
        Err(SolveError::NoKafka)
    }
}

/// Whether to keep every record in memory rather than summaries: bisection evaluates the live
/// rule on them, and a `--budget-total` gives a summary no way to tell, before it has read every
/// record, where the budget will run out (so its band of single increments would miss).
fn keeps_records(opts: &SolveOptions) -> bool {
    opts.method == Method::Bisection || matches!(opts.budget, Budget::Total(_))
}

/// Refuse what was read when it holds several routes' decisions (see `--route`).
fn one_route(args: &SolveArgs, stats: &ReadStats) -> Result<(), SolveError> {
    stats
        .one_route()
        .map_err(|source| SolveError::SeveralRoutes {
            logs: args.source_name(),
            source,
        })
}

/// Solve what `c` collected, write the k-table and the reports.
fn solve_and_write<P: Pool + WindowData>(
    args: &SolveArgs,
    opts: &SolveOptions,
    c: Collector<P>,
    batch: Batch,
    started: Instant,
) -> Result<(), SolveError> {
    let read_time = started.elapsed();
    eprintln!("{}", stats_line(&c.stats));
    one_route(args, &c.stats)?;
    if !c.pools.values().any(|p| p.has_records()) && c.multi.values().all(|m| m.is_empty()) {
        return Err(SolveError::NoUsableRecord {
            logs: args.source_name(),
        });
    }
    if c.multi.is_empty() && !args.budget_per_request.is_empty() {
        return Err(SolveError::Flag {
            flag: "--budget-per-request",
            must: "is for strategies that cost several resources: with one, give --budget-mean",
        });
    }
    if let Some((name, _)) =
        (args.budget_per_request.iter()).find(|(n, _)| !c.resources.contains(n))
    {
        return Err(SolveError::UnknownResource {
            name: name.clone(),
            resources: c.resources.join(", "),
        });
    }
    if !c.multi.is_empty() && opts.budget != Budget::Logged {
        return Err(SolveError::Flag {
            flag: "--budget-mean/--budget-total",
            must: "are for one resource: with several, give --budget-per-request NAME=VALUE (or the config's resources.NAME.budget_per_request)",
        });
    }
    if !c.multi.is_empty() && opts.method == Method::Bisection {
        return Err(SolveError::Flag {
            flag: "--method bisection",
            must: "is for one resource: strategies that cost several are solved exactly",
        });
    }
    let solve_started = Instant::now();
    let (rows, reports) = if c.multi.is_empty() {
        solve_pools(&c.pools, opts)
    } else {
        crate::hydrus::solve_multi(&c.multi, &c.resources, opts)
    };
    let solve_time = solve_started.elapsed();
    let table = table_from_rows(opts.window_secs, rows, c.strategy_set.clone())?;
    let out = args.out()?;
    write_ktable(out, &table)?;
    batch.written()?;
    print_reports(args, opts, &c.stats, &reports, (read_time, solve_time))?;
    let solved = reports.iter().filter(|r| r.filled_from.is_none()).count();
    eprintln!(
        "wrote {}: {} scenario(s), {} window(s) solved, {} filled from the nearest; read {:.2}s, solve {:.3}s ({:?})",
        out.display(),
        table.scenario_names().len(),
        solved,
        reports.len() - solved,
        read_time.as_secs_f64(),
        solve_time.as_secs_f64(),
        opts.method
    );
    Ok(())
}

/// The windows' reports on stdout, as `--format` says, with how long reading and solving
/// took.
fn print_reports(
    args: &SolveArgs,
    opts: &SolveOptions,
    stats: &ReadStats,
    reports: &[WindowReport],
    (read_time, solve_time): (Duration, Duration),
) -> Result<(), SolveError> {
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "method": opts.method,
                "window_secs": opts.window_secs,
                "read": stats,
                "read_seconds": read_time.as_secs_f64(),
                "solve_seconds": solve_time.as_secs_f64(),
                "peak_rss_bytes": peak_rss_bytes(),
                "windows": reports,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let mut out = std::io::stdout();
            print_table(reports, &mut out).map_err(SolveError::Stdout)?;
        }
    }
    Ok(())
}

/// This process's peak resident set so far (`VmHWM` of /proc/self/status; Linux only), for
/// the JSON report: what a solver box must have.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
