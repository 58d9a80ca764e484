//! The log policy (section 4.2 of the Hydrus paper): `- log:` in a route's chain publishes one
//! decision record per request of that route. Its section and checks, and the record format
//! ([`record`]). The queue and the sinks are the edge's (`src/logsink/`): there is one log per
//! proxy, so every route's `log` filter names the same sink, and changing it takes a restart.

pub mod json;
pub mod record;
pub mod redeliver;
pub mod text;

pub use record::*;

use crate::filter::{CompileCtx, Filter, FilterKind, Input, RequestState};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `- log:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Records waiting for the sink; when full, new records are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    #[serde(default)]
    pub file: Option<FileSinkConfig>,
    #[serde(default)]
    pub kafka: Option<KafkaSinkConfig>,
    /// At shutdown, how long the sink may take to write what is queued.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// What a record's `path` keeps of the request's query (per route).
    #[serde(default)]
    pub query: QueryInLog,
}

/// What a record's `path` keeps of the query: query values may hold personal data or
/// credentials, so by default only their keys are logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryInLog {
    /// `/rank?user&n`: the keys, in order, without their values.
    #[default]
    Keys,
    /// `/rank`.
    None,
    /// `/rank?user=42&n=20`, as sent.
    Full,
}

/// Longest `path` a record holds (cut at a character boundary).
pub const MAX_PATH_BYTES: usize = 1024;

/// A request's path and query as its record's `path` holds them.
pub fn logged_path(path: &str, query: Option<&str>, keep: QueryInLog) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 1);
    out.push_str(path);
    match (query, keep) {
        (Some(q), QueryInLog::Full) => {
            out.push('?');
            out.push_str(q);
        }
        (Some(q), QueryInLog::Keys) => {
            for (i, pair) in q.split('&').filter(|p| !p.is_empty()).enumerate() {
                out.push(if i == 0 { '?' } else { '&' });
                out.push_str(pair.split_once('=').map_or(pair, |(k, _)| k));
            }
        }
        _ => {}
    }
    if out.len() > MAX_PATH_BYTES {
        let mut end = MAX_PATH_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn default_drain() -> Duration {
    Duration::from_secs(10)
}

fn default_queue() -> usize {
    65_536
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory of JSON-lines files, one per window (relative to the config file).
    pub dir: PathBuf,
    /// Window length for file rotation; matches the k-table's windows.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Also rotate when a file reaches this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Buffered records are written at least this often.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(900)
}

fn default_rotate_bytes() -> u64 {
    256 << 20
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    pub topic: String,
    /// Extra librdkafka producer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The log section, checked, with relative paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRuntime {
    pub queue_capacity: usize,
    pub sink: SinkConfig,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    File(FileSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// The log filter of a chain, if it has one (its route's requests are logged).
pub fn of(chain: &crate::route::Chain) -> Option<&LogFilter> {
    chain.find::<LogFilter>()
}

/// The log filter: marks its route's requests as logged; the edge writes their records.
pub struct LogFilter {
    pub runtime: LogRuntime,
    pub query: QueryInLog,
}

impl Filter for LogFilter {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn decide(&self, _input: &Input<'_>, _state: &mut RequestState) {}

    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct LogKind;

/// The `log` kind.
pub static KIND: LogKind = LogKind;

impl FilterKind for LogKind {
    fn name(&self) -> &'static str {
        "log"
    }

    fn metrics(&self, _r: &prometheus::Registry) -> Arc<dyn Any + Send + Sync> {
        Arc::new(())
    }

    fn running_section(&self, section: &serde_norway::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<LogConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let lc: LogConfig = cx.parse(section)?;
        let before = cx.problems.count();
        let sink = match (&lc.file, &lc.kafka) {
            (Some(f), None) => Some(SinkConfig::File(file_sink(f, cx))),
            (None, Some(k)) => {
                if k.brokers.trim().is_empty() {
                    cx.error("kafka.brokers", "must not be empty");
                }
                if k.topic.trim().is_empty() {
                    cx.error("kafka.topic", "must not be empty");
                }
                Some(SinkConfig::Kafka(k.clone()))
            }
            _ => {
                cx.error("", "name exactly one sink: `file` or `kafka`");
                None
            }
        };
        if lc.queue_capacity == 0 {
            cx.error("queue_capacity", "must be at least 1");
        }
        let f = cx.sub("drain_timeout");
        cx.problems.duration_positive(&f, lc.drain_timeout);
        if cx.problems.count() > before {
            return None;
        }
        Some(Arc::new(LogFilter {
            runtime: LogRuntime {
                queue_capacity: lc.queue_capacity,
                sink: sink?,
                drain_timeout: lc.drain_timeout,
            },
            query: lc.query,
        }))
    }
}

fn file_sink(f: &FileSinkConfig, cx: &mut CompileCtx<'_>) -> FileSinkConfig {
    for (name, d) in [
        ("file.window", f.window),
        ("file.flush_interval", f.flush_interval),
    ] {
        let field = cx.sub(name);
        cx.problems.duration_positive(&field, d);
    }
    if f.window.as_secs() == 0 || 86_400 % f.window.as_secs() != 0 {
        cx.error("file.window", "must be whole seconds that divide a day");
    }
    if f.rotate_bytes < 4096 {
        cx.error("file.rotate_bytes", "must be at least 4096");
    }
    FileSinkConfig {
        dir: cx.path(&f.dir),
        ..f.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_path_keeps_query_keys_by_default() {
        let p = |q, keep| logged_path("/rank", q, keep);
        assert_eq!(
            p(Some("user=42&n=20&flag"), QueryInLog::Keys),
            "/rank?user&n&flag"
        );
        assert_eq!(p(Some("user=42&&n="), QueryInLog::Keys), "/rank?user&n");
        assert_eq!(p(Some("user=42"), QueryInLog::None), "/rank");
        assert_eq!(p(Some("user=42"), QueryInLog::Full), "/rank?user=42");
        assert_eq!(p(None, QueryInLog::Full), "/rank");
        let long = "é".repeat(MAX_PATH_BYTES);
        let cut = logged_path(&long, None, QueryInLog::Full);
        assert!(cut.len() <= MAX_PATH_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
