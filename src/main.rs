use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// hydrus: QoE-aware strategy allocation in front of a ranking service.
#[derive(Parser)]
#[command(name = "hydrus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The YAML config.
        #[arg(short, long, default_value = "config/hydrus.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running hydrus (graceful upgrade): start the
        /// new binary with this flag, then send SIGQUIT to the old one.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Solve k_t per scenario and window of the day from decision logs; write the k-table.
    Solve(hydrus::solve::SolveArgs),
    /// Trace-driven evaluation: the paper's comparisons and figures on a seeded population.
    Simulate(hydrus::simulate::SimulateArgs),
    /// Check a config file as `serve` would, print OK or every problem with its line, and exit.
    Check {
        #[arg(short, long, default_value = "config/hydrus.yaml")]
        config: PathBuf,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match cli.command {
        Command::Serve { config, upgrade } => {
            match hydrus::serve::serve(&config, hydrus::serve::ServeOptions { upgrade }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate(args) => match hydrus::simulate::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Solve(args) => match hydrus::solve::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match hydrus::config::load(&config) {
            Ok(r) => {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                if let Some(p) = r.hydrus.as_ref().and_then(|h| h.ktable.path.as_ref()) {
                    if let Err(e) = hydrus::reload::load_ktable_file(p) {
                        // Not fatal: serve starts and falls back until a table loads.
                        eprintln!("warning: k-table: {e} (requests get the default strategy until it loads)");
                    }
                }
                println!("OK: {}", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
