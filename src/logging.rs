//! The process log: text lines, or one JSON object per line (`log_format: json`; or
//! `HYDRUS_LOG_FORMAT=json` for any command), through `tracing-subscriber`. hydrus's own
//! messages and pingora's are `log` records, bridged in by `tracing-log`; the ones that concern
//! a route, cluster, endpoint or file carry it as a field (`tracing`'s macros), which JSON
//! lines hold as keys of their own. `RUST_LOG` filters by target and level as before (default
//! `info`; env_logger's `/regex` suffix is not read).

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How the process log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-07T06:45:01.123456Z  INFO hydrus::serve: message field=value`
    #[default]
    Text,
    /// `{"timestamp":"…","level":"INFO","message":"…","cluster":"pool","target":"hydrus::health"}`
    Json,
}

/// The format a command runs with: `HYDRUS_LOG_FORMAT` when set, else `log_format` of the
/// config text given (`serve`), else text. A config that cannot be read or parsed is reported by
/// the command itself; its log is text until then.
pub fn format_for(config_text: Option<&str>) -> LogFormat {
    if let Ok(v) = std::env::var("HYDRUS_LOG_FORMAT") {
        if v.eq_ignore_ascii_case("json") {
            return LogFormat::Json;
        }
        return LogFormat::Text;
    }
    config_text
        .and_then(|t| serde_norway::from_str::<serde_norway::Value>(t).ok())
        .and_then(|v| v.get("log_format").cloned())
        .and_then(|v| serde_norway::from_value(v).ok())
        .unwrap_or_default()
}

/// The log, with one message of pingora's said as what it is: a process started with
/// `--upgrade` waiting for the old one's listeners logs "No incoming socket transfer" as an
/// error every second until the old one gets SIGQUIT, the documented next step.
struct Upgrading(tracing_log::LogTracer);

impl log::Log for Upgrading {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        let waiting = r.target() == "pingora_core::server::transfer_fd"
            && r.args()
                .as_str()
                .map_or_else(|| r.args().to_string(), str::to_string)
                .starts_with("No incoming socket transfer");
        if waiting {
            self.0.log(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .target("hydrus::upgrade")
                    .args(format_args!(
                        "waiting for the running hydrus to hand over its listeners (send it SIGQUIT)"
                    ))
                    .build(),
            );
        } else {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Install the process log (once; later calls do nothing).
pub fn init(format: LogFormat) {
    // `info` unless RUST_LOG says otherwise; a directive it cannot read is skipped, the rest
    // kept (as env_logger did).
    let filter = EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::INFO.into())
        .from_env_lossy();
    let level = match filter.max_level_hint() {
        Some(l) if l == tracing::level_filters::LevelFilter::OFF => log::LevelFilter::Off,
        Some(l) if l == tracing::level_filters::LevelFilter::ERROR => log::LevelFilter::Error,
        Some(l) if l == tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
        Some(l) if l == tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
        Some(l) if l == tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(fmt.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(
            fmt.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    };
    if installed.is_ok()
        && log::set_boxed_logger(Box::new(Upgrading(tracing_log::LogTracer::new()))).is_ok()
    {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_format() {
        if std::env::var_os("HYDRUS_LOG_FORMAT").is_some() {
            return; // (the environment decides)
        }
        assert_eq!(
            format_for(Some("log_format: json\nlisten: x\n")),
            LogFormat::Json
        );
        assert_eq!(format_for(Some("listen: x\n")), LogFormat::Text);
        assert_eq!(format_for(Some(": not yaml [")), LogFormat::Text);
        assert_eq!(format_for(None), LogFormat::Text);
    }
}
