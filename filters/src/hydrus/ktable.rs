//! The k-table: one Lagrange multiplier `k_t` per scenario and window of the day, written by
//! `hydrus solve` and hot-reloaded by every proxy.
//!
//! ```yaml
//! window_secs: 900            # 96 windows a day
//! generated_at_ms: 1763800000000   # optional: when the solver wrote it (staleness)
//! strategy_set: 3f2a9c0d1b4e5a67    # optional: the strategy set it was solved for
//! scenarios:
//!   default: [0.0004, 0.0004, ...]   # exactly 86400 / window_secs finite values >= 0
//! expected:                   # optional: per scenario and window, what the solver expected
//!   default:                  # per request under that k (null: no record fed the window)
//!     cost_per_request: [6.1, 6.3, ...]
//!     qoe_per_request: [0.42, 0.43, ...]
//! ```
//!
//! With several resources (strategies whose cost is a map by resource), `resources` names them
//! and each row holds one list of `k` per resource, as does `expected.cost_per_request`:
//!
//! ```yaml
//! window_secs: 900
//! resources: [large, small]
//! scenarios:
//!   default: { large: [0.0002, ...], small: [0.001, ...] }
//! expected:
//!   default:
//!     cost_per_request: { large: [12.0, ...], small: [3.1, ...] }
//!     qoe_per_request: [0.42, ...]
//! ```
//!
//! The spend controller of the hydrus filter steers each proxy's spend per request to
//! `expected.cost_per_request` of the window (per resource).

use crate::resource::{name_ok, DEFAULT_RESOURCE, MAX_RESOURCES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The scenario a request without a scenario header belongs to.
pub const DEFAULT_SCENARIO: &str = "default";

/// Most rows a k-table may have: as many scenarios as a config may declare (without a list,
/// a table's rows are the declared ones), and what `hydrus solve` makes rows of at most.
pub const MAX_SCENARIOS: usize = super::MAX_SCENARIOS;

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
    /// With several resources: their names (each row then holds a list per resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    pub scenarios: BTreeMap<String, Row<f64>>,
    /// What the solver expected per request under each window's `k`, by scenario.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected: BTreeMap<String, Expected>,
}

/// One value per window: one list, or (with several resources) one list per resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Row<T> {
    One(Vec<T>),
    Many(BTreeMap<String, Vec<T>>),
}

/// Read by hand rather than `untagged`, so that a bad value is named where it is (serde's
/// untagged enums only say that nothing matched).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Row<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Row<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of values, or a map of resource name to a list")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Row::One(out))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Vec<T>>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "resource `{k}` given twice"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Row::Many(out))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl<T> Default for Row<T> {
    fn default() -> Self {
        Self::One(Vec::new())
    }
}

impl<T> From<Vec<T>> for Row<T> {
    fn from(v: Vec<T>) -> Self {
        Self::One(v)
    }
}

impl<T: Clone> Row<T> {
    /// The lists in `resources` order (`None`: the form does not fit them: a list for several
    /// resources, a map for one, or a map whose names are not exactly these).
    fn lists(&self, resources: &[String], several: bool) -> Option<Vec<&Vec<T>>> {
        match self {
            Self::One(v) if !several => Some(vec![v]),
            Self::Many(m) if several && m.len() == resources.len() => {
                resources.iter().map(|r| m.get(r)).collect()
            }
            _ => None,
        }
    }
}

/// A scenario's expectation per window (each list as long as its `k` row; `null` where no
/// record fed the window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// One list, or one per resource with several.
    pub cost_per_request: Row<Option<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qoe_per_request: Vec<Option<f64>>,
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
    /// More rows than a proxy keeps: each row labels metric series and spend loops.
    #[error(
        "{got} scenarios: at most {max} (each labels metric series; hydrus solve writes no more)"
    )]
    TooManyScenarios { got: usize, max: usize },
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
    #[error("expected.{name}: no such scenario in `scenarios`")]
    ExpectedScenario { name: String },
    #[error("resources: {0}")]
    Resources(String),
    /// A row's form does not fit `resources` (or its absence).
    #[error("{place}: {problem}")]
    Form { place: String, problem: String },
    #[error("expected.{name}.{field}: {problem}")]
    ExpectedValues {
        name: String,
        field: &'static str,
        problem: String,
    },
}

/// A validated k-table.
#[derive(Debug, Clone, PartialEq)]
pub struct KTable {
    window_secs: u32,
    generated_at_ms: Option<u64>,
    strategy_set: Option<String>,
    /// `[default]` for a table written without `resources`.
    resources: Vec<String>,
    /// Whether the file named its resources (rows as maps).
    named: bool,
    names: Vec<String>,
    /// Per scenario, window `w`'s `k` of resource `r` at `w * K + r`.
    ks: Vec<Vec<f64>>,
    /// By scenario index, when the table says, as written.
    expected: Vec<Option<Expected>>,
    /// By scenario index: the expected cost per request of window `w`, resource `r` at
    /// `w * K + r` (empty when the table says nothing).
    expected_cost: Vec<Vec<Option<f64>>>,
    /// Scenario names' bytes to their index: looked up with a request's header as sent, not
    /// first validated as UTF-8.
    index: HashMap<Box<[u8]>, usize>,
}

/// Interleave per-resource lists of one length into `w * K + r` order.
fn interleave<T: Copy>(lists: &[&Vec<T>]) -> Vec<T> {
    let n = lists.first().map_or(0, |l| l.len());
    (0..n)
        .flat_map(|w| lists.iter().map(move |l| l[w]))
        .collect()
}

/// The resources a file names, checked (`[default]` without the field).
fn resources_of(file: &KTableFile) -> Result<(Vec<String>, bool), KTableError> {
    let Some(list) = &file.resources else {
        return Ok((vec![DEFAULT_RESOURCE.to_string()], false));
    };
    let bad = |why: String| Err(KTableError::Resources(why));
    if list.is_empty() || list.len() > MAX_RESOURCES {
        return bad(format!("{} names: give 1 to {MAX_RESOURCES}", list.len()));
    }
    for (i, r) in list.iter().enumerate() {
        if !name_ok(r) {
            return bad(format!("`{r}`: use 1-64 letters, digits, `_`, `-` or `.`"));
        }
        if list[..i].contains(r) {
            return bad(format!("`{r}` is listed twice"));
        }
    }
    Ok((list.clone(), true))
}

/// What a row must look like, for the error message.
fn form(resources: &[String], several: bool) -> String {
    if several {
        format!(
            "must be a map with one list per resource ({})",
            resources.join(", ")
        )
    } else {
        "must be one list (the table names no `resources`)".to_string()
    }
}

/// Check one expectation list: none, or one value (finite, >= 0, or null) per window.
fn check_expected(
    name: &str,
    field: &'static str,
    values: &[Option<f64>],
    want: usize,
    optional: bool,
) -> Result<(), KTableError> {
    let problem = if values.is_empty() && optional {
        return Ok(());
    } else if values.len() != want {
        format!("{} values; the windows need {want}", values.len())
    } else if let Some((w, v)) = values
        .iter()
        .enumerate()
        .find_map(|(w, v)| v.filter(|v| !v.is_finite() || *v < 0.0).map(|v| (w, v)))
    {
        format!("window {w}: {v} must be a finite number >= 0 (or null)")
    } else {
        return Ok(());
    };
    Err(KTableError::ExpectedValues {
        name: name.to_string(),
        field,
        problem,
    })
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
        if file.scenarios.len() > MAX_SCENARIOS {
            return Err(KTableError::TooManyScenarios {
                got: file.scenarios.len(),
                max: MAX_SCENARIOS,
            });
        }
        let (resources, named) = resources_of(&file)?;
        let want = (86_400 / w) as usize;
        let mut names = Vec::new();
        let mut ks = Vec::new();
        for (name, row) in &file.scenarios {
            let Some(lists) = row.lists(&resources, named) else {
                return Err(KTableError::Form {
                    place: format!("scenarios.{name}"),
                    problem: form(&resources, named),
                });
            };
            for (r, values) in resources.iter().zip(&lists) {
                let label = if named {
                    format!("{name}.{r}")
                } else {
                    name.clone()
                };
                if values.len() != want {
                    return Err(KTableError::Count {
                        name: label,
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
                        name: label,
                        window,
                        value,
                    });
                }
            }
            names.push(name.clone());
            ks.push(interleave(&lists));
        }
        let index: HashMap<Box<[u8]>, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_bytes().into(), i))
            .collect();
        let mut expected = vec![None; names.len()];
        let mut expected_cost = vec![Vec::new(); names.len()];
        for (name, e) in file.expected {
            let Some(&i) = index.get(name.as_bytes()) else {
                return Err(KTableError::ExpectedScenario { name });
            };
            let Some(lists) = e.cost_per_request.lists(&resources, named) else {
                return Err(KTableError::Form {
                    place: format!("expected.{name}.cost_per_request"),
                    problem: form(&resources, named),
                });
            };
            for values in &lists {
                check_expected(&name, "cost_per_request", values, want, false)?;
            }
            check_expected(&name, "qoe_per_request", &e.qoe_per_request, want, true)?;
            expected_cost[i] = interleave(&lists);
            expected[i] = Some(e);
        }
        Ok(Self {
            window_secs: w,
            generated_at_ms: file.generated_at_ms,
            strategy_set: file.strategy_set,
            resources,
            named,
            names,
            ks,
            expected,
            expected_cost,
            index,
        })
    }

    /// Parse and validate YAML text. Errors carry the YAML line and column where there is one.
    pub fn parse(text: &str) -> Result<Self, KTableError> {
        let file: KTableFile =
            serde_norway::from_str(text).map_err(|e| KTableError::Yaml(e.to_string()))?;
        Self::new(file)
    }

    /// One constant `k` for every window of every named scenario.
    pub fn constant(window_secs: u32, scenarios: &[(&str, f64)]) -> Result<Self, KTableError> {
        let n = 86_400u32.checked_div(window_secs).unwrap_or(0) as usize;
        Self::new(KTableFile {
            window_secs,
            generated_at_ms: None,
            strategy_set: None,
            resources: None,
            scenarios: scenarios
                .iter()
                .map(|(name, k)| (name.to_string(), vec![*k; n].into()))
                .collect(),
            expected: BTreeMap::new(),
        })
    }

    pub fn to_file(&self) -> KTableFile {
        KTableFile {
            window_secs: self.window_secs,
            generated_at_ms: self.generated_at_ms,
            strategy_set: self.strategy_set.clone(),
            resources: self.named.then(|| self.resources.clone()),
            scenarios: self
                .names
                .iter()
                .cloned()
                .zip(self.ks.iter().map(|ks| self.row_form(ks)))
                .collect(),
            expected: self
                .names
                .iter()
                .zip(&self.expected)
                .filter_map(|(n, e)| Some((n.clone(), e.clone()?)))
                .collect(),
        }
    }

    /// A row's `w * K + r` values in the file's form.
    fn row_form(&self, ks: &[f64]) -> Row<f64> {
        if !self.named {
            return Row::One(ks.to_vec());
        }
        let k = self.resources.len();
        Row::Many(
            self.resources
                .iter()
                .enumerate()
                .map(|(r, name)| {
                    (
                        name.clone(),
                        ks.iter().skip(r).step_by(k).copied().collect(),
                    )
                })
                .collect(),
        )
    }

    /// The resources, in the order of [`KTable::ks`]: `[default]` for a table that names none.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// Whether the table names its resources (several, or one by name).
    pub fn names_resources(&self) -> bool {
        self.named
    }

    pub fn to_yaml(&self) -> String {
        // A KTableFile of strings and floats always serializes.
        serde_norway::to_string(&self.to_file()).unwrap_or_default()
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
        self.index.get(name).copied()
    }

    /// `k` for a scenario index and window (of the first resource: the one of a table that
    /// names none).
    pub fn k(&self, scenario: usize, window: usize) -> Option<f64> {
        self.ks(scenario, window)?.first().copied()
    }

    /// `k` per resource for a scenario index and window, in [`KTable::resources`] order.
    pub fn ks(&self, scenario: usize, window: usize) -> Option<&[f64]> {
        let k = self.resources.len();
        self.ks.get(scenario)?.get(window * k..(window + 1) * k)
    }

    /// The cost per request the solver expected for a scenario index and window, if it said
    /// (of the first resource).
    pub fn expected_cost(&self, scenario: usize, window: usize) -> Option<f64> {
        self.expected_cost_of(scenario, window, 0)
    }

    /// [`KTable::expected_cost`] of resource index `r`.
    pub fn expected_cost_of(&self, scenario: usize, window: usize, r: usize) -> Option<f64> {
        let k = self.resources.len();
        self.expected_cost
            .get(scenario)?
            .get(window * k + r)
            .copied()
            .flatten()
    }

    /// The QoE per request the solver expected, if it said.
    pub fn expected_qoe(&self, scenario: usize, window: usize) -> Option<f64> {
        let e = self.expected.get(scenario)?.as_ref()?;
        e.qoe_per_request.get(window).copied().flatten()
    }

    /// A scenario's `k` per window (of a table that names no resources; with several, the
    /// windows' values interleaved by resource).
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
        let e = KTable::parse("window_secs: 43200\nscenarios:\n  d: [1, x]\n").expect_err("word");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = KTable::parse("window_secs: [\n").expect_err("syntax");
        assert!(matches!(e, KTableError::Yaml(_)));
    }

    #[test]
    fn carries_what_the_solver_expected() {
        let text = "window_secs: 43200\nscenarios:\n  default: [0.1, 0.2]\nexpected:\n  default:\n    cost_per_request: [6.5, null]\n    qoe_per_request: [0.4, null]\n";
        let t = KTable::parse(text).expect("valid");
        assert_eq!(t.expected_cost(0, 0), Some(6.5));
        assert_eq!(t.expected_cost(0, 1), None);
        assert_eq!(t.expected_qoe(0, 0), Some(0.4));
        assert_eq!(KTable::parse(&t.to_yaml()).expect("round trip"), t);
        let short = text.replace("[6.5, null]", "[6.5]");
        assert!(matches!(
            KTable::parse(&text.replace("[6.5, null]", "{ large: [6.5, null] }")),
            Err(KTableError::Form { .. })
        ));
        let e = KTable::parse(&short).expect_err("short");
        assert!(
            e.to_string()
                .contains("expected.default.cost_per_request: 1 values"),
            "{e}"
        );
        let neg = text.replace("[6.5, null]", "[6.5, -1]");
        assert!(KTable::parse(&neg).is_err());
        let other = text.replace("expected:\n  default:", "expected:\n  feed:");
        let e = KTable::parse(&other).expect_err("unknown scenario");
        assert_eq!(
            e,
            KTableError::ExpectedScenario {
                name: "feed".into()
            }
        );
    }

    #[test]
    fn several_resources() {
        let text = "window_secs: 43200\nresources:\n- large\n- small\nscenarios:\n  default:\n    large:\n    - 0.1\n    - 0.2\n    small:\n    - 1.0\n    - 2.0\nexpected:\n  default:\n    cost_per_request:\n      large:\n      - 12.0\n      - null\n      small:\n      - 3.0\n      - 4.0\n";
        let t = KTable::parse(text).expect("valid");
        assert_eq!(t.resources(), &["large", "small"]);
        assert_eq!(t.ks(0, 1), Some(&[0.2, 2.0][..]));
        assert_eq!(t.k(0, 1), Some(0.2));
        assert_eq!(t.expected_cost_of(0, 0, 1), Some(3.0));
        assert_eq!(t.expected_cost_of(0, 1, 0), None);
        // Written back byte for byte.
        assert_eq!(t.to_yaml(), text);
        // A one-resource table stays as it was.
        let one = "window_secs: 43200\nscenarios:\n  default:\n  - 0.1\n  - 0.2\n";
        assert_eq!(KTable::parse(one).expect("valid").to_yaml(), one);
        let e = KTable::parse(&text.replace("  default:\n    large:", "  default:\n    gpu:"))
            .expect_err("names");
        assert!(
            e.to_string().contains(
                "scenarios.default: must be a map with one list per resource (large, small)"
            ),
            "{e}"
        );
        let e =
            KTable::parse(&text.replace("- 1.0\n    - 2.0", "- 1.0\n    - -2.0")).expect_err("neg");
        assert!(
            e.to_string().contains("scenario `default.small`, window 1"),
            "{e}"
        );
        let e = KTable::parse(&text.replace("- large\n- small", "- large\n- large"))
            .expect_err("twice");
        assert!(e.to_string().contains("`large` is listed twice"), "{e}");
        let e = KTable::parse("window_secs: 43200\nscenarios:\n  default: { a: [1, 2] }\n")
            .expect_err("no resources");
        assert!(e.to_string().contains("must be one list"), "{e}");
    }
}
