use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// hydrus: QoE-aware strategy allocation in front of a ranking service.
#[derive(Parser)]
#[command(name = "hydrus", version, about, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The YAML config; default: config/hydrus.yaml if there is one here, else the
        /// default config built into hydrus (its relative paths as if it were that file).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listening sockets of a running hydrus (graceful upgrade): start the
        /// new binary with this flag, then send SIGQUIT to the old one.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Solve k_t per scenario and window of the day from decision logs; write the k-table.
    Solve(Box<hydrus_solve::SolveArgs>),
    /// Trace-driven evaluation: the paper's comparisons and figures on a seeded population.
    Simulate(hydrus_solve::simulate::SimulateArgs),
    /// Check a config file as `serve` would, print OK or every problem with its line, and exit.
    Check {
        /// The YAML config; default as for `serve`.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the help of hydrus, or of one of its commands.
    Help {
        /// The command (serve, check, solve, simulate).
        command: Option<String>,
    },
}

/// Counting allocations (allocation counts do not depend on the allocator underneath).
#[cfg(feature = "alloc-stats")]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[cfg(all(feature = "jemalloc", not(feature = "alloc-stats")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    #[cfg(feature = "alloc-stats")]
    let _ = hydrus::metrics::ALLOCATIONS.set(|| GLOBAL.stats().allocations as u64);
    let cli = Cli::parse();
    let config_text = match &cli.command {
        Command::Serve { config, .. } => hydrus::config::ConfigFile::from_flag(config.clone())
            .read()
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        _ => None,
    };
    hydrus::logging::init(hydrus::logging::format_for(config_text.as_deref()));
    match cli.command {
        Command::Help { command } => {
            let mut cli = Cli::command();
            cli.build();
            let printed = match &command {
                None => cli.print_help(),
                Some(name) => match cli.find_subcommand_mut(name) {
                    Some(sub) => sub.print_help(),
                    None => {
                        eprintln!("error: no command `{name}`; see `hydrus help`");
                        return ExitCode::from(2);
                    }
                },
            };
            match printed {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Command::Serve { config, upgrade } => {
            let config = hydrus::config::ConfigFile::from_flag(config);
            match hydrus::serve::serve(&config, hydrus::serve::ServeOptions { upgrade }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate(args) => match hydrus_solve::simulate::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Solve(args) => solve(*args),
        Command::Check { config } => {
            let config = hydrus::config::ConfigFile::from_flag(config);
            check(&config)
        }
    }
}

/// `hydrus solve`: for `--policy e2e`, with what `--config`'s e2e filter says.
fn solve(mut args: hydrus_solve::SolveArgs) -> ExitCode {
    if let (hydrus_solve::Policy::E2e, Some(config)) = (args.policy, &args.config) {
        match hydrus::solve_wiring::e2e_spec(config) {
            Ok(spec) => args.e2e = Some(spec),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let (hydrus_solve::Policy::Hydrus, Some(config)) = (args.policy, &args.config) {
        match hydrus::solve_wiring::resource_budgets(config, args.route.as_deref()) {
            // One resource: its budget is the mean budget per request (unless a flag gives
            // one). Several: `--budget-per-request` flags win over the config.
            Ok(budgets) if budgets.resources.len() == 1 => {
                let one = budgets.per_request.values().next().copied();
                if args.budget_mean.is_none() && args.budget_total.is_none() {
                    args.budget_mean = one;
                }
            }
            Ok(budgets) => {
                for (name, b) in budgets.per_request {
                    if !args.budget_per_request.iter().any(|(n, _)| *n == name) {
                        args.budget_per_request.push((name, b));
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match hydrus_solve::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hydrus check`: OK after any warnings, or every problem.
fn check(config: &hydrus::config::ConfigFile) -> ExitCode {
    match hydrus::check::check(config) {
        Ok(checked) => {
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            for t in &checked.timetables {
                println!("{t}");
            }
            println!("OK: {}", config.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
