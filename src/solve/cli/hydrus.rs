//! `hydrus solve --policy hydrus` (the default): the k-table, either from the logs read to
//! their end (batch) or rewritten as each window closes (`--follow`).

use super::{follow_source, window_secs, Format, SolveArgs, SolveError};
use crate::solve::follow;
use crate::solve::input::{self, Collector, Keying};
#[cfg(feature = "kafka")]
use crate::solve::kafka_source::KafkaSource;
use crate::solve::output::{print_table, stats_line, table_from_rows, write_ktable};
use crate::solve::{solve_pools, Budget, SolveOptions, WindowReport};
use std::path::Path;
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
    /// Read `--logs` to its end into `c`.
    fn read(args: &SolveArgs, c: &mut Collector) -> Result<Self, SolveError> {
        if !args.logs.starts_with("kafka://") {
            c.stats.files = input::read_path(Path::new(&args.logs), c)?;
            return Ok(Batch::Files);
        }
        #[cfg(feature = "kafka")]
        {
            let mut src = KafkaSource::new(&args.logs, &args.group)?;
            src.read_to_end(c)?;
            Ok(Batch::Kafka(src))
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

/// Run `--policy hydrus`.
pub(super) fn run(args: &SolveArgs) -> Result<(), SolveError> {
    let opts = solve_options(args)?;
    if args.follow {
        let fo = follow::FollowOptions {
            out: args.out.clone(),
            lateness: args.lateness,
            poll: Duration::from_millis(500),
            json: args.format == Format::Json,
        };
        let mut src = follow_source(args)?;
        return Ok(follow::run(&mut *src, &opts, &fo)?);
    }

    let started = Instant::now();
    let mut c = Collector::new(opts.window_secs, Keying::OfDay);
    let batch = Batch::read(args, &mut c)?;
    let read_time = started.elapsed();
    eprintln!("{}", stats_line(&c.stats));
    if c.pools.values().all(|i| i.is_empty()) {
        return Err(SolveError::NoUsableRecord {
            logs: args.logs.clone(),
        });
    }
    let solve_started = Instant::now();
    let (rows, reports) = solve_pools(&c.pools, &opts);
    let solve_time = solve_started.elapsed();
    let table = table_from_rows(opts.window_secs, rows, c.strategy_set.clone())?;
    write_ktable(&args.out, &table)?;
    batch.written()?;
    print_reports(args, &opts, &c, &reports, (read_time, solve_time))?;
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

/// The windows' reports on stdout, as `--format` says, with how long reading and solving
/// took.
fn print_reports(
    args: &SolveArgs,
    opts: &SolveOptions,
    c: &Collector,
    reports: &[WindowReport],
    (read_time, solve_time): (Duration, Duration),
) -> Result<(), SolveError> {
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
            print_table(reports, &mut out).map_err(SolveError::Stdout)?;
        }
    }
    Ok(())
}
