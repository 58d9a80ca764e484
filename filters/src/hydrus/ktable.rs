//! The k-table: one Lagrange multiplier `k_t` per scenario and window of the day, written by
//! `hydrus solve` and hot-reloaded by every proxy.
//!
//! ```yaml
//! window_secs: 900            # 96 windows a day
//! generated_at_ms: 1763800000000   # optional: when the solver wrote it (staleness)
//! strategy_set: 3f2a9c0d1b4e5a67    # optional: the strategy set it was solved for
//! scenarios:
//!   default: [0.0004, 0.0004, ...]   # exactly 86400 / window_secs finite values >= 0
//! ```

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The scenario a request without a scenario header belongs to.
pub const DEFAULT_SCENARIO: &str = "default";

/// The file format, as written and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KTableFile {
    pub window_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at_ms: Option<u64>,
    /// The fingerprint of the strategy set (names, costs, QoE scales) the table was solved
    /// for ([`crate::StrategySet::fingerprint`]); a proxy running another set does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy_set: Option<String>,
    pub scenarios: BTreeMap<String, Vec<f64>>,
}

/// Why a k-table was refused; each names where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KTableError {
    #[error("{0}")]
    Yaml(String),
    #[error("window_secs {0} must divide a day (86400) evenly and be at least 1")]
    Window(u32),
    #[error("no scenarios: at least one is needed")]
    NoScenario,
    #[error("scenario `{name}` has {got} values; window_secs {window_secs} needs {want}")]
    Count {
        name: String,
        got: usize,
        want: usize,
        window_secs: u32,
    },
    #[error("scenario `{name}`, window {window}: k = {value} must be a finite number >= 0")]
    Value {
        name: String,
        window: usize,
        value: f64,
    },
}

/// A validated k-table.
#[derive(Debug, Clone, PartialEq)]
pub struct KTable {
    window_secs: u32,
    generated_at_ms: Option<u64>,
    strategy_set: Option<String>,
    names: Vec<String>,
    ks: Vec<Vec<f64>>,
    index: HashMap<String, usize>,
}

impl KTable {
    pub fn new(file: KTableFile) -> Result<Self, KTableError> {
        let w = file.window_secs;
        if w == 0 || 86_400 % w != 0 {
            return Err(KTableError::Window(w));
        }
        if file.scenarios.is_empty() {
            return Err(KTableError::NoScenario);
        }
        let want = (86_400 / w) as usize;
        let mut names = Vec::new();
        let mut ks = Vec::new();
        for (name, values) in file.scenarios {
            if values.len() != want {
                return Err(KTableError::Count {
                    name,
                    got: values.len(),
                    want,
                    window_secs: w,
                });
            }
            if let Some((window, &value)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(KTableError::Value {
                    name,
                    window,
                    value,
                });
            }
            names.push(name);
            ks.push(values);
        }
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(Self {
            window_secs: w,
            generated_at_ms: file.generated_at_ms,
            strategy_set: file.strategy_set,
            names,
            ks,
            index,
        })
    }

    /// Parse and validate YAML text. Errors carry the YAML line and column where there is one.
    pub fn parse(text: &str) -> Result<Self, KTableError> {
        let file: KTableFile =
            serde_yaml::from_str(text).map_err(|e| KTableError::Yaml(e.to_string()))?;
        Self::new(file)
    }

    /// One constant `k` for every window of every named scenario.
    pub fn constant(window_secs: u32, scenarios: &[(&str, f64)]) -> Result<Self, KTableError> {
        let n = 86_400u32.checked_div(window_secs).unwrap_or(0) as usize;
        Self::new(KTableFile {
            window_secs,
            generated_at_ms: None,
            strategy_set: None,
            scenarios: scenarios
                .iter()
                .map(|(name, k)| (name.to_string(), vec![*k; n]))
                .collect(),
        })
    }

    pub fn to_file(&self) -> KTableFile {
        KTableFile {
            window_secs: self.window_secs,
            generated_at_ms: self.generated_at_ms,
            strategy_set: self.strategy_set.clone(),
            scenarios: self
                .names
                .iter()
                .cloned()
                .zip(self.ks.iter().cloned())
                .collect(),
        }
    }

    pub fn to_yaml(&self) -> String {
        // A KTableFile of strings and floats always serializes.
        serde_yaml::to_string(&self.to_file()).unwrap_or_default()
    }

    pub fn window_secs(&self) -> u32 {
        self.window_secs
    }

    pub fn windows(&self) -> usize {
        (86_400 / self.window_secs) as usize
    }

    pub fn generated_at_ms(&self) -> Option<u64> {
        self.generated_at_ms
    }

    /// The strategy set the table was solved for, when it says.
    pub fn strategy_set(&self) -> Option<&str> {
        self.strategy_set.as_deref()
    }

    pub fn scenario_names(&self) -> &[String] {
        &self.names
    }

    /// The window of the day (UTC) that a Unix time in milliseconds falls in.
    pub fn window_of(&self, ts_ms: u64) -> usize {
        window_of(ts_ms, self.window_secs)
    }

    pub fn scenario_index(&self, name: &[u8]) -> Option<usize> {
        let name = std::str::from_utf8(name).ok()?;
        self.index.get(name).copied()
    }

    /// `k` for a scenario index and window.
    pub fn k(&self, scenario: usize, window: usize) -> Option<f64> {
        self.ks.get(scenario)?.get(window).copied()
    }

    pub fn row(&self, scenario: usize) -> Option<&[f64]> {
        self.ks.get(scenario).map(|v| v.as_slice())
    }
}

/// `(ts_ms / 1000 mod 86400) / window_secs`, the window of a record (DESIGN.md).
pub fn window_of(ts_ms: u64, window_secs: u32) -> usize {
    ((ts_ms / 1000 % 86_400) / u64::from(window_secs.max(1))) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let mut text = String::from("window_secs: 43200\nscenarios:\n  default: [0.1, 0.2]\n");
        text.push_str("  feed: [1, 2]\n");
        let t = KTable::parse(&text).expect("valid");
        assert_eq!(t.windows(), 2);
        let d = t.scenario_index(b"default").expect("present");
        assert_eq!(t.k(d, t.window_of(0)), Some(0.1));
        assert_eq!(t.k(d, t.window_of(43_200_000)), Some(0.2));
        assert_eq!(t.k(d, t.window_of(86_400_000 + 1)), Some(0.1));
        assert_eq!(t.scenario_index(b"nope"), None);
        let again = KTable::parse(&t.to_yaml()).expect("round trip");
        assert_eq!(again, t);
    }

    #[test]
    fn refuses_bad_tables() {
        let e =
            KTable::parse("window_secs: 900\nscenarios:\n  default: [1, 2]\n").expect_err("short");
        assert!(e.to_string().contains("has 2 values"), "{e}");
        let e = KTable::parse("window_secs: 7\nscenarios: {}\n").expect_err("window");
        assert_eq!(e, KTableError::Window(7));
        let e = KTable::parse("window_secs: 43200\nscenarios:\n  d: [1, -2]\n").expect_err("neg");
        assert!(matches!(e, KTableError::Value { window: 1, .. }), "{e}");
        let e = KTable::parse("window_secs: 43200\nscenarios:\n  d: [1, .nan]\n").expect_err("nan");
        assert!(matches!(e, KTableError::Value { .. }), "{e}");
        let e = KTable::parse("window_secs: 43200\nscenarios: {}\n").expect_err("empty");
        assert_eq!(e, KTableError::NoScenario);
        let e = KTable::parse("window_secs: 43200\nbogus: 1\nscenarios: {}\n").expect_err("field");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = KTable::parse("window_secs: [\n").expect_err("syntax");
        assert!(matches!(e, KTableError::Yaml(_)));
    }
}
