//! The QoE header: either one number, the model's QoE under the default strategy (scaled by each
//! strategy's `qoe_scale`, as in section 4.2 of the Hydrus paper), or per-strategy values
//! `s10=0.31,s20=0.35`. Strategies a per-strategy header leaves out are not candidates for
//! that request.

use crate::hydrus::strategy::{StrategySet, MAX_STRATEGIES};

/// Longest header value hydrus parses; longer ones are refused as garbled.
pub const MAX_HEADER_LEN: usize = 4096;

/// The range a QoE value must lie in. The paper's model outputs a value in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QoeRange {
    pub min: f64,
    pub max: f64,
}

impl Default for QoeRange {
    fn default() -> Self {
        Self { min: 0.0, max: 1.0 }
    }
}

/// Why a QoE header was refused. Each is a `reason` label of `hydrus_fallback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QoeError {
    #[error("the QoE header is empty or not a number or list of name=value pairs")]
    Garbled,
    #[error("a QoE value is NaN")]
    NaN,
    #[error("a QoE value is negative")]
    Negative,
    #[error("a QoE value is outside the configured range")]
    OutOfRange,
    #[error("the QoE header names a strategy that is not configured")]
    UnknownStrategy,
    #[error("the QoE header names a strategy twice")]
    DuplicateStrategy,
}

impl QoeError {
    pub fn reason(self) -> &'static str {
        match self {
            QoeError::Garbled => "garbled_qoe",
            QoeError::NaN => "nan_qoe",
            QoeError::Negative => "negative_qoe",
            QoeError::OutOfRange => "out_of_range_qoe",
            QoeError::UnknownStrategy => "unknown_strategy_qoe",
            QoeError::DuplicateStrategy => "duplicate_strategy_qoe",
        }
    }
}

/// The QoE of each strategy for one request; `present` marks the candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QoeVector {
    values: [f64; MAX_STRATEGIES],
    present: u64,
}

impl QoeVector {
    pub fn empty() -> Self {
        Self {
            values: [0.0; MAX_STRATEGIES],
            present: 0,
        }
    }

    /// Every strategy of `set` scaled from one QoE under the default strategy.
    pub fn scaled(set: &StrategySet, q: f64) -> Self {
        let mut v = Self::empty();
        for (j, s) in set.strategies().iter().enumerate() {
            v.values[j] = q * s.qoe_scale;
            v.present |= 1 << j;
        }
        v
    }

    pub fn set(&mut self, index: usize, qoe: f64) {
        self.values[index] = qoe;
        self.present |= 1 << index;
    }

    /// The QoE of strategy `index`, if it is a candidate.
    pub fn get(&self, index: usize) -> Option<f64> {
        if index < MAX_STRATEGIES && self.present & (1 << index) != 0 {
            Some(self.values[index])
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    pub fn count(&self) -> usize {
        self.present.count_ones() as usize
    }
}

impl crate::filter::Candidates for QoeVector {
    fn each(&self, each: &mut dyn FnMut(usize, f64)) {
        let mut present = self.present;
        while present != 0 {
            let j = present.trailing_zeros() as usize;
            present &= present - 1;
            each(j, self.values[j]);
        }
    }
}

fn check(q: f64, range: QoeRange) -> Result<f64, QoeError> {
    if q.is_nan() {
        Err(QoeError::NaN)
    } else if q < range.min && q < 0.0 {
        Err(QoeError::Negative)
    } else if q < range.min || q > range.max {
        Err(QoeError::OutOfRange)
    } else {
        Ok(q)
    }
}

fn number(raw: &[u8]) -> Result<f64, QoeError> {
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| QoeError::Garbled)?;
    // Rust's float parser takes "nan" and "inf"; anything else that is not a plain number is garbled.
    text.parse::<f64>().map_err(|_| QoeError::Garbled)
}

/// Parse a QoE header value for `set`. Never panics, whatever the bytes.
pub fn parse(raw: &[u8], set: &StrategySet, range: QoeRange) -> Result<QoeVector, QoeError> {
    if raw.len() > MAX_HEADER_LEN {
        return Err(QoeError::Garbled);
    }
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return Err(QoeError::Garbled);
    }
    if !raw.contains(&b'=') {
        // The range applies to what the model said; a strategy's estimate (scaled by its A/B
        // coefficient) may exceed it, e.g. 0.95 x 1.08.
        let q = check(number(raw)?, range)?;
        return Ok(QoeVector::scaled(set, q));
    }
    let mut v = QoeVector::empty();
    for pair in raw.split(|&b| b == b',') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            return Err(QoeError::Garbled);
        }
        let eq = pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or(QoeError::Garbled)?;
        let (name, value) = (pair[..eq].trim_ascii(), &pair[eq + 1..]);
        if name.is_empty() {
            return Err(QoeError::Garbled);
        }
        let index = set.index_of(name).ok_or(QoeError::UnknownStrategy)?;
        if v.get(index).is_some() {
            return Err(QoeError::DuplicateStrategy);
        }
        v.set(index, check(number(value)?, range)?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydrus::strategy::Strategy;
    use proptest::prelude::*;

    fn set() -> StrategySet {
        StrategySet::new(
            vec![
                Strategy {
                    name: "s10".into(),
                    cost: 6.0.into(),
                    qoe_scale: 0.5,
                },
                Strategy {
                    name: "s20".into(),
                    cost: 10.0.into(),
                    qoe_scale: 1.0,
                },
            ],
            "s20",
        )
        .expect("valid")
    }

    #[test]
    fn one_number_is_scaled() {
        let v = parse(b" 0.4 ", &set(), QoeRange::default()).expect("ok");
        assert_eq!(v.get(0), Some(0.2));
        assert_eq!(v.get(1), Some(0.4));
    }

    #[test]
    fn pairs_name_candidates() {
        let v = parse(b"s20=0.35, s10 = 0.31", &set(), QoeRange::default()).expect("ok");
        assert_eq!(v.get(0), Some(0.31));
        assert_eq!(v.get(1), Some(0.35));
        let v = parse(b"s20=0.35", &set(), QoeRange::default()).expect("ok");
        assert_eq!(v.get(0), None);
        assert_eq!(v.count(), 1);
    }

    #[test]
    fn bad_values_have_reasons() {
        let r = QoeRange::default();
        let cases: &[(&[u8], QoeError)] = &[
            (b"", QoeError::Garbled),
            (b"   ", QoeError::Garbled),
            (b"abc", QoeError::Garbled),
            (b"0.5x", QoeError::Garbled),
            (b"\xff\xfe", QoeError::Garbled),
            (b"NaN", QoeError::NaN),
            (b"nan", QoeError::NaN),
            (b"-0.1", QoeError::Negative),
            (b"1.5", QoeError::OutOfRange),
            (b"inf", QoeError::OutOfRange),
            (b"s10=0.1,s99=0.2", QoeError::UnknownStrategy),
            (b"s10=0.1,s10=0.2", QoeError::DuplicateStrategy),
            (b"s10=0.1,,s20=0.2", QoeError::Garbled),
            (b"=0.1", QoeError::Garbled),
            (b"s10=", QoeError::Garbled),
            (b"s10=-1", QoeError::Negative),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse(raw, &set(), r),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = vec![b'1'; MAX_HEADER_LEN + 1];
        assert_eq!(parse(&long, &set(), r), Err(QoeError::Garbled));
    }

    #[test]
    fn scaled_estimates_may_exceed_the_range() {
        let set = StrategySet::new(
            vec![Strategy {
                name: "big".into(),
                cost: 1.0.into(),
                qoe_scale: 2.0,
            }],
            "big",
        )
        .expect("valid");
        let v = parse(b"0.6", &set, QoeRange::default()).expect("in range");
        assert_eq!(v.get(0), Some(1.2));
        assert_eq!(
            parse(b"1.1", &set, QoeRange::default()),
            Err(QoeError::OutOfRange)
        );
    }

    proptest! {
        /// Whatever the bytes, the parser answers without panicking, and what it accepts is in
        /// range (the test set's scales are at most 1).
        #[test]
        fn never_panics_and_accepts_only_in_range(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = QoeRange::default();
            if let Ok(v) = parse(&raw, &set(), r) {
                for j in 0..2 {
                    if let Some(q) = v.get(j) {
                        prop_assert!(q.is_finite() && q >= r.min && q <= r.max);
                    }
                }
            }
        }

        /// Header text close to valid: digits, separators and names mixed. Never panics.
        #[test]
        fn near_misses_never_panic(raw in "[s0-9.=, eE+-]{0,40}") {
            let _ = parse(raw.as_bytes(), &set(), QoeRange::default());
        }

        /// Text built from the grammar round-trips exactly.
        #[test]
        fn pairs_round_trip(a in 0.0f64..=1.0, b in 0.0f64..=1.0, swap in any::<bool>()) {
            let text = if swap { format!("s20={b},s10={a}") } else { format!("s10={a},s20={b}") };
            let v = parse(text.as_bytes(), &set(), QoeRange::default()).expect("valid");
            prop_assert_eq!(v.get(0), Some(a));
            prop_assert_eq!(v.get(1), Some(b));
        }

        #[test]
        fn single_number_round_trips(q in 0.0f64..=1.0) {
            let v = parse(q.to_string().as_bytes(), &set(), QoeRange::default()).expect("valid");
            prop_assert_eq!(v.get(1), Some(q));
            prop_assert_eq!(v.get(0), Some(q * 0.5));
        }
    }
}
