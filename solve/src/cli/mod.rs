//! The `hydrus solve` command line: its flags, their checks, and one driver per policy
//! (`hydrus`, `e2e`, `hedge`). The solvers themselves live in the sibling modules and know
//! nothing of flags, so that benches and tests call them directly.

mod e2e;
mod hedge;
mod hydrus;

use crate::e2e::E2eError;
use crate::hedge::HedgeError;
use crate::hydrus::summary_file::SummaryFileError;
use crate::hydrus::FollowError;
use crate::hydrus::Method;
use crate::read::follow::{FileFollower, FollowSource};
#[cfg(feature = "kafka")]
use crate::read::kafka::{KafkaError, KafkaSource};
use crate::read::InputError;
use crate::read::SourceError;
use crate::write::OutputError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why `hydrus solve` failed (the binary prints it after `error: `). Each variant names the
/// flag, file or source at fault; the wrapped errors keep theirs.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A flag's value is out of range, or a flag the policy needs is missing.
    #[error("{flag} {must}")]
    Flag {
        flag: &'static str,
        must: &'static str,
    },
    #[error("--window {}: must be whole seconds that divide a day", humantime::format_duration(*.window))]
    Window { window: Duration },
    /// `--logs kafka://...` in a binary built without Kafka.
    #[error("this hydrus was built without the `kafka` feature")]
    NoKafka,
    /// `--budget-per-request` names a resource the logged strategies do not cost.
    #[error("--budget-per-request {name}: the logged strategies cost {resources}")]
    UnknownResource { name: String, resources: String },
    /// The logs were read but no record could be solved from.
    #[error("{logs}: no usable record")]
    NoUsableRecord { logs: String },
    /// The report could not be printed.
    #[error("stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{logs}: {source}")]
    SeveralRoutes {
        logs: String,
        #[source]
        source: crate::read::SeveralRoutes,
    },
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    E2e(#[from] E2eError),
    #[error(transparent)]
    Hedge(#[from] HedgeError),
    #[error(transparent)]
    Summary(#[from] SummaryFileError),
    #[error(transparent)]
    MetricsListen(#[from] crate::metrics::ListenError),
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

/// The `hydrus solve` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SolveArgs {
    /// Decision logs: a `.jsonl` file (gzip too), a directory of them, or kafka://BROKERS/TOPIC.
    #[arg(long, required_unless_present = "merge")]
    pub logs: Option<String>,
    /// The k-table to write (atomically: a temp file renamed over it).
    #[arg(long, required_unless_present = "emit_summary")]
    pub out: Option<PathBuf>,
    /// Write the summaries of the records read (per scenario and window) to this file, for
    /// `--merge`; with `--out` too, also solve them.
    #[arg(long, conflicts_with_all = ["merge", "follow"])]
    pub emit_summary: Option<PathBuf>,
    /// Solve from summary files (written by `--emit-summary`) instead of logs, as if one
    /// process had read all their records.
    #[arg(long, num_args = 1.., conflicts_with_all = ["logs", "follow"])]
    pub merge: Vec<PathBuf>,
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
    /// With --follow: serve the solver's own metrics on http://ADDR/metrics (Prometheus text:
    /// records read and skipped by reason, Kafka lag per partition, windows solved, when the
    /// table was last written, errors) and /ready (200 once the source is open and read).
    #[arg(long, requires = "follow", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Kafka consumer group (its committed offsets say where to resume).
    #[arg(long, default_value = "hydrus-solver")]
    pub group: String,
    /// With --follow and Kafka logs: solve in a group. The members of --group split the log
    /// topic's partitions and publish per-partition window summaries to this compacted topic
    /// (kafka://BROKERS/TOPIC); each member merges them and writes --out.
    #[arg(long, requires = "follow")]
    pub summaries: Option<String>,
    /// Solve the k-table of this route (its `name` in the config) from its records only.
    /// Needed when the logs hold decisions of several routes with a hydrus filter (each has
    /// its own strategies and k-table); records of routes without one are always skipped.
    #[arg(long)]
    pub route: Option<String>,
    /// What to solve: the Hydrus k-table or the E2E decision table.
    #[arg(long, value_enum, default_value = "hydrus")]
    pub policy: Policy,
    /// The proxy's config: for E2E, the e2e filter's groups, QoE model and priority header;
    /// for the k-table, the hydrus filter's budgets per resource (`resources.NAME.
    /// budget_per_request`, of `--route`'s filter or the first one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With several resources: a resource's budget per request, as NAME=VALUE (repeat for
    /// more; wins over `--config`). A resource without one: what the logged decisions spent.
    #[arg(long = "budget-per-request", value_name = "NAME=VALUE", value_parser = resource_budget)]
    pub budget_per_request: Vec<(String, f64)>,
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
    /// E2E: what `--config`'s first e2e filter says (the binary reads the proxy's config).
    #[arg(skip)]
    pub e2e: Option<E2eSpec>,
    /// Kafka: a librdkafka property for every Kafka client the solver opens, as
    /// `log.kafka.properties` is for the proxy's sink (repeat for more); replaces the
    /// solver's own settings, such as the summaries producer's `compression.type=lz4`.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = kafka_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// What `--policy e2e` takes from the proxy's e2e filter.
#[derive(Debug, Clone, PartialEq)]
pub struct E2eSpec {
    /// Its replica groups, in order.
    pub groups: Vec<String>,
    pub qoe_model: hydrus_filters::e2e::QoeModelConfig,
    /// Whether it tags priorities (`priority_header`).
    pub priorities: bool,
}

/// `--budget-per-request NAME=VALUE`.
fn resource_budget(s: &str) -> Result<(String, f64), String> {
    let parsed = s
        .split_once('=')
        .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((k, v)) if hydrus_filters::resource::name_ok(k) && v.is_finite() && v > 0.0 => {
            Ok((k.to_string(), v))
        }
        _ => Err(format!(
            "`{s}`: expected RESOURCE=BUDGET with a budget > 0, e.g. large=12"
        )),
    }
}

/// `--kafka-property KEY=VALUE`.
fn kafka_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "`{s}`: expected KEY=VALUE, e.g. compression.type=zstd"
        )),
    }
}

impl SolveArgs {
    /// `--logs` (empty with `--merge`, which clap makes exclusive).
    pub fn logs(&self) -> &str {
        self.logs.as_deref().unwrap_or_default()
    }

    /// `--out`, which every use but `--emit-summary` needs.
    pub fn out(&self) -> Result<&Path, SolveError> {
        self.out.as_deref().ok_or(SolveError::Flag {
            flag: "--out",
            must: "is needed to write a table",
        })
    }

    /// What the records came from, for messages.
    pub fn source_name(&self) -> String {
        match &self.logs {
            Some(l) => l.clone(),
            None => format!("{} summary file(s)", self.merge.len()),
        }
    }
}

/// Run `hydrus solve`.
pub fn run(args: &SolveArgs) -> Result<(), SolveError> {
    if args.metrics_listen.is_some() && args.policy != Policy::Hydrus {
        return Err(SolveError::Flag {
            flag: "--metrics-listen",
            must: "is for the k-table's solver (--policy hydrus)",
        });
    }
    match args.policy {
        Policy::Hydrus => hydrus::run(args),
        Policy::E2e => e2e::run(args),
        Policy::Hedge => hedge::run(args),
    }
}

/// `--window 15m` as whole seconds that divide a day.
pub fn window_secs(d: Duration) -> Result<u32, SolveError> {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 || 86_400 % s != 0 {
        return Err(SolveError::Window { window: d });
    }
    Ok(s as u32)
}

/// The logs as a [`FollowSource`]: files or a Kafka topic.
fn follow_source(args: &SolveArgs) -> Result<Box<dyn FollowSource>, SolveError> {
    Ok(if args.logs().starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            Box::new(KafkaSource::new(
                args.logs(),
                &args.group,
                &args.kafka_properties,
            )?)
        }
        #[cfg(not(feature = "kafka"))]
        return Err(SolveError::NoKafka);
    } else {
        Box::new(FileFollower::new(Path::new(args.logs())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_option() {
        assert_eq!(window_secs(Duration::from_secs(900)).ok(), Some(900));
        assert!(window_secs(Duration::from_secs(7)).is_err());
        assert!(window_secs(Duration::from_millis(1500)).is_err());
    }
}
