//! Resources: what a strategy spends, one number per resource (the large model's GPU cluster,
//! the small one's CPUs, a feature store's QPS), and one `k` per resource. One resource keeps
//! every form as it was before resources had names: a plain number.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most resources a strategy set may name: a decision's `k` per resource then fits in a
/// [`Ks`] without an allocation.
pub const MAX_RESOURCES: usize = 8;

/// The name of the one resource of a plain-number cost.
pub const DEFAULT_RESOURCE: &str = "default";

/// A number per resource as written in YAML and JSON: a plain number (one resource) or a map
/// by resource name (`{ large: 34, small: 2 }`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PerResource {
    One(f64),
    Many(BTreeMap<String, f64>),
}

impl<'de> Deserialize<'de> for PerResource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PerResource;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a number, or a map of resource name to number (`{ large: 34, small: 2 }`)",
                )
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(PerResource::One(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(PerResource::One(v as f64))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(PerResource::One(v as f64))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, f64>()? {
                    if out.insert(k.clone(), v).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "resource `{k}` given twice"
                        )));
                    }
                }
                Ok(PerResource::Many(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<f64> for PerResource {
    fn from(v: f64) -> Self {
        Self::One(v)
    }
}

impl PerResource {
    /// The plain number, when it is one.
    pub fn one(&self) -> Option<f64> {
        match self {
            Self::One(v) => Some(*v),
            Self::Many(_) => None,
        }
    }

    /// The value for `resource` (a plain number is the value of any one resource; a map
    /// without the name: 0, nothing of it is spent).
    pub fn get(&self, resource: &str) -> f64 {
        match self {
            Self::One(v) => *v,
            Self::Many(m) => m.get(resource).copied().unwrap_or(0.0),
        }
    }

    /// The sum over resources.
    pub fn total(&self) -> f64 {
        match self {
            Self::One(v) => *v,
            Self::Many(m) => m.values().sum(),
        }
    }
}

/// A name a resource may have: what a metric label and a YAML key can carry unquoted.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One `k` per resource (at most [`MAX_RESOURCES`]), `Copy`: a decision carries it without an
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ks {
    len: u8,
    v: [f64; MAX_RESOURCES],
}

impl Ks {
    /// One resource's `k`.
    pub fn one(k: f64) -> Self {
        let mut v = [0.0; MAX_RESOURCES];
        v[0] = k;
        Self { len: 1, v }
    }

    /// `None` when empty or longer than [`MAX_RESOURCES`].
    pub fn from_slice(ks: &[f64]) -> Option<Self> {
        if ks.is_empty() || ks.len() > MAX_RESOURCES {
            return None;
        }
        let mut v = [0.0; MAX_RESOURCES];
        v[..ks.len()].copy_from_slice(ks);
        Some(Self {
            len: ks.len() as u8,
            v,
        })
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.v[..usize::from(self.len)]
    }

    /// The first resource's `k`: the `k` of a one-resource set.
    pub fn first(&self) -> f64 {
        self.v[0]
    }

    /// Each `k_r` times `m(r)` (the spend controller's correction per resource).
    pub fn scaled(mut self, m: impl Fn(usize) -> f64) -> Self {
        for (r, k) in self.v[..usize::from(self.len)].iter_mut().enumerate() {
            *k *= m(r);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_maps() {
        let one: PerResource = serde_norway::from_str("10").expect("number");
        assert_eq!(one, PerResource::One(10.0));
        assert_eq!((one.get("x"), one.total()), (10.0, 10.0));
        let many: PerResource = serde_norway::from_str("{ large: 34, small: 2 }").expect("map");
        assert_eq!(
            (many.get("large"), many.get("gpu"), many.total()),
            (34.0, 0.0, 36.0)
        );
        assert_eq!(
            serde_json::to_string(&many).expect("json"),
            r#"{"large":34.0,"small":2.0}"#
        );
        assert_eq!(serde_json::to_string(&one).expect("json"), "10.0");
        let e = serde_norway::from_str::<PerResource>("cheap").expect_err("a word");
        assert!(
            e.to_string()
                .contains("a number, or a map of resource name to number"),
            "{e}"
        );
        let e = serde_json::from_str::<PerResource>(r#"{"a":1,"a":2}"#).expect_err("twice");
        assert!(e.to_string().contains("`a` given twice"), "{e}");
        let back: PerResource = serde_json::from_str(r#"{"large":34.0,"small":2}"#).expect("json");
        assert_eq!(back, many);
    }

    #[test]
    fn ks_hold_up_to_eight() {
        let k = Ks::from_slice(&[1.0, 2.0]).expect("two");
        assert_eq!(k.scaled(|r| r as f64 + 1.0).as_slice(), &[1.0, 4.0]);
        assert!(Ks::from_slice(&[0.0; 9]).is_none());
        assert!(Ks::from_slice(&[]).is_none());
        assert_eq!(Ks::one(3.0).as_slice(), &[3.0]);
    }
}
