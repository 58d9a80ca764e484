//! The hydrus filter for one request: parse the QoE header, find `k_t` for the request's scenario
//! and window, and choose the strategy; or fall back to the default strategy and say why.

use crate::filter::Group;
use crate::hydrus::decide::decide_per_resource;
use crate::hydrus::ktable::{KTable, DEFAULT_SCENARIO};
use crate::hydrus::qoe::{self, QoeError, QoeRange, QoeVector};
use crate::hydrus::strategy::StrategySet;
use crate::resource::Ks;

/// Why a treatment request got the default strategy (or, on a control request, why treatment
/// would have: shadow mode). `reason()` is the `reason` label of `hydrus_fallback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    MissingQoe,
    Qoe(QoeError),
    NoCandidate,
    UnknownScenario,
    NoKTable,
    StaleKTable,
    /// The k-table was solved for another strategy set.
    KTableMismatch,
}

impl Fallback {
    pub const ALL_REASONS: &'static [&'static str] = &[
        "missing_qoe",
        "garbled_qoe",
        "nan_qoe",
        "negative_qoe",
        "out_of_range_qoe",
        "unknown_strategy_qoe",
        "duplicate_strategy_qoe",
        "no_candidate",
        "unknown_scenario",
        "no_ktable",
        "stale_ktable",
        "ktable_mismatch",
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Fallback::MissingQoe => "missing_qoe",
            Fallback::Qoe(e) => e.reason(),
            Fallback::NoCandidate => "no_candidate",
            Fallback::UnknownScenario => "unknown_scenario",
            Fallback::NoKTable => "no_ktable",
            Fallback::StaleKTable => "stale_ktable",
            Fallback::KTableMismatch => "ktable_mismatch",
        }
    }
}

/// What the proxy read off one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInputs<'a> {
    /// The QoE header's value, if present.
    pub qoe: Option<&'a [u8]>,
    /// The scenario header's value; missing means `default`.
    pub scenario: Option<&'a [u8]>,
    /// Unix time in milliseconds, to find the window of the day.
    pub now_ms: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The strategy to apply (an index into the strategy set).
    pub strategy: usize,
    /// `k_t` of the request's scenario and window (one per resource), when the k-table has
    /// it, times the spend controller's correction `m` (1 without one): the `k` the rule applied.
    pub k: Option<Ks>,
    /// Set when a treatment request fell back to the default strategy; on a control request,
    /// when treatment would have (shadow mode: control shows what treatment would do wrong).
    pub fallback: Option<Fallback>,
    /// Each strategy's QoE, when the header parsed: the log record's `value_info`.
    pub qoe: Option<QoeVector>,
    /// The scenario's row in the k-table, when it has one.
    pub scenario: Option<usize>,
    /// Whether the scenario is declared (missing means `default`, which always is). An
    /// undeclared value is never a key: it gets no row, no metric label and no solver row.
    pub scenario_declared: bool,
    /// For a control request: what treatment would have chosen (shadow mode), when it could.
    pub would_choose: Option<usize>,
}

/// The hydrus filter's settings.
#[derive(Debug, Clone)]
pub struct HydrusRule {
    pub strategies: StrategySet,
    pub qoe_range: QoeRange,
    /// The declared scenarios; without a list, the k-table's rows are the declared ones.
    pub scenarios: Option<Vec<String>>,
    /// The strategy set's fingerprint, to check k-tables against.
    pub fingerprint: String,
}

impl HydrusRule {
    pub fn new(strategies: StrategySet, qoe_range: QoeRange) -> Self {
        Self {
            fingerprint: strategies.fingerprint(),
            strategies,
            qoe_range,
            scenarios: None,
        }
    }

    /// Whether a k-table was solved for another strategy set (one that does not say is taken,
    /// when it is for the same resources: several resources must be named alike, in order).
    pub fn mismatched(&self, ktable: &KTable) -> bool {
        let resources = self.strategies.resources();
        let other_resources = (resources.len() > 1 || ktable.resources().len() > 1)
            && ktable.resources() != resources;
        other_resources
            || ktable
                .strategy_set()
                .is_some_and(|fp| fp != self.fingerprint)
    }

    /// Declare the scenarios requests may name (beyond `default`).
    pub fn with_scenarios(mut self, scenarios: Option<Vec<String>>) -> Self {
        self.scenarios = scenarios;
        self
    }

    /// Whether a scenario header value names a declared scenario.
    pub fn declared(&self, name: &[u8], ktable: Option<&KTable>) -> bool {
        name == DEFAULT_SCENARIO.as_bytes()
            || match &self.scenarios {
                Some(list) => list.iter().any(|s| s.as_bytes() == name),
                None => ktable.is_some_and(|t| t.scenario_index(name).is_some()),
            }
    }

    /// Decide for one request. `ktable` is the running table, `stale` whether it is older than
    /// allowed. Control requests get the default strategy; their QoE and `k` are still read,
    /// so their log records serve the solver too.
    pub fn decide(
        &self,
        group: Group,
        inputs: &RequestInputs<'_>,
        ktable: Option<&KTable>,
        stale: bool,
    ) -> Decision {
        self.decide_with(group, inputs, ktable, stale, |_, _| 1.0)
    }

    /// [`HydrusRule::decide`] with each `k_t` multiplied by `correction(row, resource)`, the
    /// spend controller's `m` for the scenario's k-table row and the resource (its index).
    pub fn decide_with(
        &self,
        group: Group,
        inputs: &RequestInputs<'_>,
        ktable: Option<&KTable>,
        stale: bool,
        correction: impl Fn(usize, usize) -> f64,
    ) -> Decision {
        let qoe = match inputs.qoe {
            None => Err(Fallback::MissingQoe),
            Some(raw) => qoe::parse(raw, &self.strategies, self.qoe_range).map_err(Fallback::Qoe),
        };
        let scenario_name = inputs.scenario.unwrap_or(DEFAULT_SCENARIO.as_bytes());
        let scenario_declared = self.declared(scenario_name, ktable);
        let scenario = ktable
            .filter(|_| scenario_declared)
            .and_then(|t| t.scenario_index(scenario_name));
        // A table for another number of resources gives no `k` (its values would be paired
        // with this set's resources): the request falls back on `ktable_mismatch`.
        let resources = self.strategies.resources().len();
        let same_count = |t: &KTable| t.resources().len() == resources;
        let k = match (ktable, scenario) {
            (Some(t), Some(s)) if same_count(t) => t
                .ks(s, t.window_of(inputs.now_ms))
                .and_then(Ks::from_slice)
                .map(|k| k.scaled(|r| correction(s, r))),
            _ => None,
        };
        let mut decision = Decision {
            strategy: self.strategies.default_index(),
            k,
            fallback: None,
            qoe: qoe.ok(),
            scenario,
            scenario_declared,
            would_choose: None,
        };
        let chosen = qoe.and_then(|q| {
            let Some(t) = ktable else {
                return Err(Fallback::NoKTable);
            };
            if !same_count(t) {
                return Err(Fallback::KTableMismatch);
            }
            let k = k.ok_or(Fallback::UnknownScenario)?;
            if stale {
                return Err(Fallback::StaleKTable);
            }
            if self.mismatched(t) {
                return Err(Fallback::KTableMismatch);
            }
            decide_per_resource(&self.strategies, &q, k.as_slice()).ok_or(Fallback::NoCandidate)
        });
        match (group, chosen) {
            // Control keeps the default; what treatment would have done is its shadow.
            (Group::Control, Ok(j)) => decision.would_choose = Some(j),
            (Group::Control, Err(f)) => decision.fallback = Some(f),
            (Group::Treatment, Ok(j)) => decision.strategy = j,
            (Group::Treatment, Err(f)) => decision.fallback = Some(f),
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydrus::strategy::Strategy;

    fn filter() -> HydrusRule {
        let s = |name: &str, cost: f64, qoe_scale: f64| Strategy {
            name: name.into(),
            cost: cost.into(),
            qoe_scale,
        };
        HydrusRule::new(
            StrategySet::new(
                vec![s("s10", 6.0, 0.9), s("s20", 10.0, 1.0), s("s40", 20.0, 1.1)],
                "s20",
            )
            .expect("valid"),
            QoeRange::default(),
        )
    }

    fn inputs<'a>(qoe: Option<&'a [u8]>, scenario: Option<&'a [u8]>) -> RequestInputs<'a> {
        RequestInputs {
            qoe,
            scenario,
            now_ms: 0,
        }
    }

    #[test]
    fn a_table_of_other_resources_gives_no_k() {
        let f = filter();
        let two = KTable::parse(
            "window_secs: 43200\nresources: [large, small]\nscenarios:\n  default: { large: [0.1, 0.1], small: [0.2, 0.2] }\n",
        )
        .expect("valid");
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), None),
            Some(&two),
            false,
        );
        assert_eq!((d.strategy, d.k), (1, None));
        assert_eq!(d.fallback, Some(Fallback::KTableMismatch));
    }

    #[test]
    fn treatment_decides_with_k() {
        let f = filter();
        let t = KTable::constant(900, &[("default", 0.001), ("feed", 0.1)]).expect("valid");
        // k = 0.001, q = 0.5: 0.45-0.006, 0.5-0.01, 0.55-0.02 -> s40
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), None),
            Some(&t),
            false,
        );
        assert_eq!(
            (d.strategy, d.fallback, d.k),
            (2, None, Some(Ks::one(0.001)))
        );
        // k = 0.1: 0.45-0.6, 0.5-1.0, 0.55-2.0 -> s10
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), Some(b"feed")),
            Some(&t),
            false,
        );
        assert_eq!(d.strategy, 0);
    }

    #[test]
    fn control_gets_default_but_keeps_values() {
        let f = filter();
        let t = KTable::constant(900, &[("default", 0.001)]).expect("valid");
        let d = f.decide(Group::Control, &inputs(Some(b"0.5"), None), Some(&t), false);
        assert_eq!((d.strategy, d.fallback), (1, None));
        assert_eq!(d.qoe.and_then(|q| q.get(2)), Some(0.5 * 1.1));
        assert_eq!(d.k, Some(Ks::one(0.001)));
        // What treatment would have chosen (k = 0.001, q = 0.5: s40), for shadow mode.
        assert_eq!(d.would_choose, Some(2));
        let stale = f.decide(Group::Control, &inputs(Some(b"0.5"), None), Some(&t), true);
        assert_eq!(stale.would_choose, None);
        // Control counts what treatment would have fallen back on, keeping the default.
        assert_eq!(
            (stale.strategy, stale.fallback),
            (1, Some(Fallback::StaleKTable))
        );
        let garbled = f.decide(Group::Control, &inputs(Some(b"x"), None), Some(&t), false);
        assert_eq!(garbled.strategy, 1);
        assert_eq!(garbled.fallback.map(Fallback::reason), Some("garbled_qoe"));
    }

    #[test]
    fn a_table_for_another_strategy_set_is_not_used() {
        let f = filter();
        let mut file = KTable::constant(900, &[("default", 0.001)])
            .expect("valid")
            .to_file();
        file.strategy_set = Some("0123456789abcdef".into());
        let other = KTable::new(file.clone()).expect("valid");
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), None),
            Some(&other),
            false,
        );
        assert_eq!(
            (d.strategy, d.fallback),
            (1, Some(Fallback::KTableMismatch))
        );
        file.strategy_set = Some(f.fingerprint.clone());
        let ours = KTable::new(file).expect("valid");
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), None),
            Some(&ours),
            false,
        );
        assert_eq!((d.strategy, d.fallback), (2, None));
    }

    #[test]
    fn only_declared_scenarios_are_keys() {
        let t = KTable::constant(900, &[("default", 0.001), ("feed", 0.1)]).expect("valid");
        let f = filter();
        // Without a list, the k-table's rows are declared.
        let d = f.decide(
            Group::Control,
            &inputs(Some(b"0.5"), Some(b"feed")),
            Some(&t),
            false,
        );
        assert!(d.scenario_declared && d.scenario == Some(1));
        let d = f.decide(
            Group::Control,
            &inputs(Some(b"0.5"), Some(b"x9")),
            Some(&t),
            false,
        );
        assert!(!d.scenario_declared && d.scenario.is_none() && d.k.is_none());
        // A declared list: `search` is declared though the table lacks it (the solver may make
        // its row); `feed` is in the table but not declared, so it is not used.
        let f = filter().with_scenarios(Some(vec!["search".into()]));
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), Some(b"search")),
            Some(&t),
            false,
        );
        assert!(d.scenario_declared);
        assert_eq!(d.fallback, Some(Fallback::UnknownScenario));
        let d = f.decide(
            Group::Treatment,
            &inputs(Some(b"0.5"), Some(b"feed")),
            Some(&t),
            false,
        );
        assert!(!d.scenario_declared);
        assert_eq!(d.fallback, Some(Fallback::UnknownScenario));
        let d = f.decide(Group::Treatment, &inputs(Some(b"0.5"), None), None, false);
        assert!(d.scenario_declared, "default always is");
    }

    #[test]
    fn every_fallback_reason() {
        let f = filter();
        let t = KTable::constant(900, &[("default", 0.001)]).expect("valid");
        let cases: Vec<(RequestInputs, Option<&KTable>, bool, &str)> = vec![
            (inputs(None, None), Some(&t), false, "missing_qoe"),
            (inputs(Some(b"x"), None), Some(&t), false, "garbled_qoe"),
            (inputs(Some(b"NaN"), None), Some(&t), false, "nan_qoe"),
            (inputs(Some(b"-1"), None), Some(&t), false, "negative_qoe"),
            (
                inputs(Some(b"7"), None),
                Some(&t),
                false,
                "out_of_range_qoe",
            ),
            (
                inputs(Some(b"0.5"), Some(b"zz")),
                Some(&t),
                false,
                "unknown_scenario",
            ),
            (inputs(Some(b"0.5"), None), None, false, "no_ktable"),
            (inputs(Some(b"0.5"), None), Some(&t), true, "stale_ktable"),
        ];
        for (i, kt, stale, reason) in cases {
            let d = f.decide(Group::Treatment, &i, kt, stale);
            assert_eq!(d.strategy, 1, "{reason}");
            assert_eq!(d.fallback.map(Fallback::reason), Some(reason));
            assert!(Fallback::ALL_REASONS.contains(&reason));
        }
    }
}
