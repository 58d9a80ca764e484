//! The strategy set: the ways the ranking service can serve one request.

use crate::resource::{name_ok, PerResource, DEFAULT_RESOURCE, MAX_RESOURCES};
use serde::{Deserialize, Serialize};

/// At most this many strategies: a candidate set fits in one `u64` mask, and the decision loop
/// stays a short scan (the paper's deployments use a handful).
pub const MAX_STRATEGIES: usize = 64;

/// One way to serve a request: its resource cost (a number, or one per resource) and how it
/// scales the QoE predicted under the default strategy (the paper's per-strategy coefficient
/// from A/B tests, section 4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    pub name: String,
    pub cost: PerResource,
    pub qoe_scale: f64,
}

/// Why a strategy set was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("no strategies: at least one is needed")]
    Empty,
    #[error("{0} strategies: at most {MAX_STRATEGIES} are supported")]
    TooMany(usize),
    #[error("strategy `{0}` is defined twice")]
    Duplicate(String),
    #[error("strategy name `{0}` is not allowed: use letters, digits, `_`, `-` or `.`")]
    BadName(String),
    #[error("strategy `{name}`: cost {cost} must be a finite number >= 0")]
    BadCost { name: String, cost: f64 },
    #[error("strategy `{name}`: resource name `{resource}` is not allowed: use 1-64 letters, digits, `_`, `-` or `.`")]
    BadResource { name: String, resource: String },
    #[error("strategy `{name}`: a cost map names at least one resource")]
    NoResource { name: String },
    #[error("strategy `{name}`: give every strategy's cost in one form, a number (one resource) or a map by resource (`{{ large: 34, small: 2 }}`), not both")]
    MixedCosts { name: String },
    #[error("{0} resources: at most {MAX_RESOURCES} are supported")]
    TooManyResources(usize),
    #[error("strategy `{name}`: qoe_scale {scale} must be a finite number >= 0")]
    BadScale { name: String, scale: f64 },
    #[error("default strategy `{0}` is not one of the strategies")]
    UnknownDefault(String),
}

/// A validated strategy set with its default (the strategy control traffic and every fallback
/// gets) and the order in which ties are broken: cheaper first, then configuration order.
#[derive(Debug, Clone)]
pub struct StrategySet {
    strategies: Vec<Strategy>,
    /// The resources, in name order (`default` for plain-number costs).
    resources: Vec<String>,
    /// Each strategy's cost per resource: strategy `j`, resource `r` at `j * K + r`.
    costs: Vec<f64>,
    /// Each strategy's cost summed over resources: what ties are broken on.
    totals: Vec<f64>,
    by_cost: Vec<usize>,
    default: usize,
    /// Each strategy's `value_info` entry up to its QoE, as JSON (`{"strategy":"s10","cost":6.0,"qoe":`,
    /// the cost an object by resource with several):
    /// the same for every record, so the log sink writes it rather than formats it.
    value_heads: Vec<Box<[u8]>>,
}

impl crate::filter::Strategies for StrategySet {
    fn strategy(&self, index: usize) -> Option<(&str, &[f64])> {
        let s = self.strategies.get(index)?;
        Some((s.name.as_str(), self.costs(index)))
    }

    fn resources(&self) -> &[String] {
        &self.resources
    }

    fn json_head(&self, index: usize) -> &[u8] {
        self.value_head(index)
    }
}

impl StrategySet {
    pub fn new(strategies: Vec<Strategy>, default: &str) -> Result<Self, StrategyError> {
        if strategies.is_empty() {
            return Err(StrategyError::Empty);
        }
        if strategies.len() > MAX_STRATEGIES {
            return Err(StrategyError::TooMany(strategies.len()));
        }
        for (i, s) in strategies.iter().enumerate() {
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(StrategyError::BadName(s.name.clone()));
            }
            if strategies[..i].iter().any(|o| o.name == s.name) {
                return Err(StrategyError::Duplicate(s.name.clone()));
            }
            check_cost(s)?;
            if !s.qoe_scale.is_finite() || s.qoe_scale < 0.0 {
                return Err(StrategyError::BadScale {
                    name: s.name.clone(),
                    scale: s.qoe_scale,
                });
            }
        }
        let default = strategies
            .iter()
            .position(|s| s.name == default)
            .ok_or_else(|| StrategyError::UnknownDefault(default.to_string()))?;
        let resources = resources_of(&strategies)?;
        let costs: Vec<f64> = strategies
            .iter()
            .flat_map(|s| resources.iter().map(|r| s.cost.get(r)))
            .collect();
        let k = resources.len();
        let totals: Vec<f64> = costs.chunks(k).map(|c| c.iter().sum()).collect();
        let mut by_cost: Vec<usize> = (0..strategies.len()).collect();
        // Stable: equal costs keep configuration order.
        by_cost.sort_by(|&a, &b| totals[a].total_cmp(&totals[b]));
        let value_heads = strategies
            .iter()
            .zip(costs.chunks(k))
            .map(|(s, c)| crate::log::json::value_head(&s.name, &resources, c))
            .collect();
        Ok(Self {
            strategies,
            resources,
            costs,
            totals,
            by_cost,
            default,
            value_heads,
        })
    }

    /// The JSON of strategy `index`'s `value_info` entry up to its QoE (see the field).
    pub fn value_head(&self, index: usize) -> &[u8] {
        self.value_heads.get(index).map_or(&[][..], |h| &h[..])
    }

    pub fn len(&self) -> usize {
        self.strategies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strategies.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Strategy> {
        self.strategies.get(index)
    }

    pub fn strategies(&self) -> &[Strategy] {
        &self.strategies
    }

    /// Strategy indices, cheapest first; equal costs in configuration order.
    pub fn by_cost(&self) -> &[usize] {
        &self.by_cost
    }

    pub fn default_index(&self) -> usize {
        self.default
    }

    /// A strategy's cost summed over resources (its only cost with one resource).
    pub fn cost(&self, index: usize) -> f64 {
        self.totals[index]
    }

    /// A strategy's cost per resource, in [`StrategySet::resources`] order.
    pub fn costs(&self, index: usize) -> &[f64] {
        let k = self.resources.len();
        self.costs.get(index * k..(index + 1) * k).unwrap_or(&[])
    }

    /// The resources, in name order: `[default]` when costs are plain numbers.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// A fingerprint of the set (names, costs and QoE scales, in name order; with several
    /// resources each cost with its resource's name): a k-table records the one it was solved
    /// for, and a proxy running another set does not use it. One resource: as before resources.
    pub fn fingerprint(&self) -> String {
        let mut named: Vec<usize> = (0..self.strategies.len()).collect();
        named.sort_by(|&a, &b| self.strategies[a].name.cmp(&self.strategies[b].name));
        let mut bytes = Vec::new();
        for j in named {
            let s = &self.strategies[j];
            bytes.extend_from_slice(s.name.as_bytes());
            bytes.push(0);
            if let [one] = self.costs(j) {
                bytes.extend_from_slice(&one.to_le_bytes());
            } else {
                for (r, c) in self.resources.iter().zip(self.costs(j)) {
                    bytes.extend_from_slice(r.as_bytes());
                    bytes.push(0);
                    bytes.extend_from_slice(&c.to_le_bytes());
                }
            }
            bytes.extend_from_slice(&s.qoe_scale.to_le_bytes());
        }
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
    }

    /// The index of the strategy with this name.
    pub fn index_of(&self, name: &[u8]) -> Option<usize> {
        self.strategies
            .iter()
            .position(|s| s.name.as_bytes() == name)
    }
}

/// A strategy's cost, checked: finite numbers >= 0 under good resource names.
fn check_cost(s: &Strategy) -> Result<(), StrategyError> {
    let bad = |cost: f64| StrategyError::BadCost {
        name: s.name.clone(),
        cost,
    };
    match &s.cost {
        PerResource::One(c) if !c.is_finite() || *c < 0.0 => Err(bad(*c)),
        PerResource::One(_) => Ok(()),
        PerResource::Many(m) if m.is_empty() => Err(StrategyError::NoResource {
            name: s.name.clone(),
        }),
        PerResource::Many(m) => {
            for (r, &c) in m {
                if !name_ok(r) {
                    return Err(StrategyError::BadResource {
                        name: s.name.clone(),
                        resource: r.clone(),
                    });
                }
                if !c.is_finite() || c < 0.0 {
                    return Err(bad(c));
                }
            }
            Ok(())
        }
    }
}

/// The resources a set's costs name, in name order: `[default]` for plain numbers; a map that
/// leaves a resource out spends none of it.
fn resources_of(strategies: &[Strategy]) -> Result<Vec<String>, StrategyError> {
    let mapped = |s: &Strategy| matches!(s.cost, PerResource::Many(_));
    if let Some(odd) = strategies
        .iter()
        .find(|s| mapped(s) != strategies.first().is_some_and(mapped))
    {
        return Err(StrategyError::MixedCosts {
            name: odd.name.clone(),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    for s in strategies {
        if let PerResource::Many(m) = &s.cost {
            names.extend(m.keys().cloned());
        }
    }
    if names.len() > MAX_RESOURCES {
        return Err(StrategyError::TooManyResources(names.len()));
    }
    if names.is_empty() {
        names.insert(DEFAULT_RESOURCE.to_string());
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, cost: f64) -> Strategy {
        Strategy {
            name: name.into(),
            cost: cost.into(),
            qoe_scale: 1.0,
        }
    }

    fn multi(name: &str, costs: &[(&str, f64)]) -> Strategy {
        Strategy {
            name: name.into(),
            cost: PerResource::Many(costs.iter().map(|(r, c)| (r.to_string(), *c)).collect()),
            qoe_scale: 1.0,
        }
    }

    #[test]
    fn costs_per_resource() {
        let set = StrategySet::new(
            vec![
                multi("s10", &[("small", 2.0)]),
                multi("s80", &[("large", 34.0), ("small", 2.0)]),
            ],
            "s10",
        )
        .expect("valid");
        assert_eq!(set.resources(), &["large", "small"]);
        assert_eq!(set.costs(0), &[0.0, 2.0]);
        assert_eq!(set.costs(1), &[34.0, 2.0]);
        assert_eq!(set.cost(1), 36.0);
        assert_eq!(
            String::from_utf8_lossy(set.value_head(1)),
            r#"{"strategy":"s80","cost":{"large":34.0,"small":2.0},"qoe":"#
        );
        // One named resource is one resource: the fingerprint of the plain number.
        let named = StrategySet::new(vec![multi("x", &[("gpu", 1.0)])], "x").expect("valid");
        let plain = StrategySet::new(vec![s("x", 1.0)], "x").expect("valid");
        assert_eq!(named.fingerprint(), plain.fingerprint());
        assert_eq!(
            String::from_utf8_lossy(named.value_head(0)),
            r#"{"strategy":"x","cost":1.0,"qoe":"#
        );
        let other = StrategySet::new(
            vec![
                multi("s10", &[("small", 2.0)]),
                multi("s80", &[("large", 34.0), ("small", 3.0)]),
            ],
            "s10",
        )
        .expect("valid");
        assert_ne!(set.fingerprint(), other.fingerprint());
        assert!(matches!(
            StrategySet::new(vec![s("a", 1.0), multi("b", &[("x", 1.0)])], "a"),
            Err(StrategyError::MixedCosts { .. })
        ));
        assert!(matches!(
            StrategySet::new(vec![multi("a", &[("x y", 1.0)])], "a"),
            Err(StrategyError::BadResource { .. })
        ));
        assert!(matches!(
            StrategySet::new(vec![multi("a", &[])], "a"),
            Err(StrategyError::NoResource { .. })
        ));
        let nine: Vec<(String, f64)> = (0..9).map(|i| (format!("r{i}"), 1.0)).collect();
        let nine: Vec<(&str, f64)> = nine.iter().map(|(r, c)| (r.as_str(), *c)).collect();
        assert!(matches!(
            StrategySet::new(vec![multi("a", &nine)], "a"),
            Err(StrategyError::TooManyResources(9))
        ));
    }

    #[test]
    fn orders_by_cost_then_config_order() {
        let set = StrategySet::new(
            vec![s("big", 9.0), s("a", 3.0), s("b", 3.0), s("tiny", 1.0)],
            "a",
        )
        .expect("valid");
        assert_eq!(set.by_cost(), &[3, 1, 2, 0]);
        assert_eq!(set.default_index(), 1);
        assert_eq!(set.index_of(b"b"), Some(2));
        assert_eq!(set.index_of(b"nope"), None);
    }

    #[test]
    fn fingerprints_name_the_set_not_its_order() {
        let a = StrategySet::new(vec![s("x", 1.0), s("y", 2.0)], "x").expect("valid");
        let b = StrategySet::new(vec![s("y", 2.0), s("x", 1.0)], "y").expect("valid");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let c = StrategySet::new(vec![s("x", 1.0), s("y", 2.5)], "x").expect("valid");
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut scaled = s("y", 2.0);
        scaled.qoe_scale = 1.1;
        let d = StrategySet::new(vec![s("x", 1.0), scaled], "x").expect("valid");
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    #[test]
    fn refuses_bad_sets() {
        assert_eq!(
            StrategySet::new(vec![], "x").err(),
            Some(StrategyError::Empty)
        );
        assert!(matches!(
            StrategySet::new(vec![s("a", 1.0), s("a", 2.0)], "a"),
            Err(StrategyError::Duplicate(_))
        ));
        assert!(matches!(
            StrategySet::new(vec![s("a", f64::NAN)], "a"),
            Err(StrategyError::BadCost { .. })
        ));
        assert!(matches!(
            StrategySet::new(vec![s("a", -1.0)], "a"),
            Err(StrategyError::BadCost { .. })
        ));
        assert!(matches!(
            StrategySet::new(vec![s("a=b", 1.0)], "a=b"),
            Err(StrategyError::BadName(_))
        ));
        assert!(matches!(
            StrategySet::new(vec![s("a", 1.0)], "b"),
            Err(StrategyError::UnknownDefault(_))
        ));
        let many: Vec<_> = (0..65).map(|i| s(&format!("s{i}"), 1.0)).collect();
        assert!(matches!(
            StrategySet::new(many, "s0"),
            Err(StrategyError::TooMany(65))
        ));
    }
}
