//! The strategy set: the ways the ranking service can serve one request.

use serde::{Deserialize, Serialize};

/// At most this many strategies: a candidate set fits in one `u64` mask, and the decision loop
/// stays a short scan (the paper's deployments use a handful).
pub const MAX_STRATEGIES: usize = 64;

/// One way to serve a request: its resource cost and how it scales the QoE predicted under the
/// default strategy (the paper's per-strategy coefficient from A/B tests, section 4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    pub name: String,
    pub cost: f64,
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
    by_cost: Vec<usize>,
    default: usize,
    /// Each strategy's `value_info` entry up to its QoE, as JSON (`{"strategy":"s10","cost":6.0,"qoe":`):
    /// the same for every record, so the log sink writes it rather than formats it.
    value_heads: Vec<Box<[u8]>>,
}

impl crate::filter::Strategies for StrategySet {
    fn strategy(&self, index: usize) -> Option<(&str, f64)> {
        self.strategies
            .get(index)
            .map(|s| (s.name.as_str(), s.cost))
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
            if !s.cost.is_finite() || s.cost < 0.0 {
                return Err(StrategyError::BadCost {
                    name: s.name.clone(),
                    cost: s.cost,
                });
            }
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
        let mut by_cost: Vec<usize> = (0..strategies.len()).collect();
        // Stable: equal costs keep configuration order.
        by_cost.sort_by(|&a, &b| strategies[a].cost.total_cmp(&strategies[b].cost));
        let value_heads = strategies
            .iter()
            .map(|s| crate::log::json::value_head(&s.name, s.cost))
            .collect();
        Ok(Self {
            strategies,
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

    pub fn cost(&self, index: usize) -> f64 {
        self.strategies[index].cost
    }

    /// A fingerprint of the set (names, costs and QoE scales, in name order): a k-table
    /// records the one it was solved for, and a proxy running another set does not use it.
    pub fn fingerprint(&self) -> String {
        let mut named: Vec<&Strategy> = self.strategies.iter().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let mut bytes = Vec::new();
        for s in named {
            bytes.extend_from_slice(s.name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&s.cost.to_le_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, cost: f64) -> Strategy {
        Strategy {
            name: name.into(),
            cost,
            qoe_scale: 1.0,
        }
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
