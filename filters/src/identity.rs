//! The identity headers' names (user id, device id, request id, QoE, scenario; see
//! [`crate::filter::USER_ID`]) as the edge looks for them in a request: in one walk over its
//! header map, not a hash lookup per name. Five lookups (hashing the name, probing, comparing)
//! cost about 850 instructions a request (callgrind), more than walking the few headers a
//! ranking call carries; a name is compared only when its length is one of theirs.

use crate::filter::normalized;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The five identity header names, with what a walk over a header map needs of them.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    names: [HeaderName; 5],
    /// The names with `_` read as `-` (see [`normalized`]).
    normalized: [String; 5],
    /// Bit `n` set when a name is `n` bytes long (63 for 63 and longer): `_` read as `-` keeps
    /// a name's length, so a header whose length has no bit here is none of them, spelled
    /// either way.
    lengths: u64,
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl IdentityNames {
    pub fn new(names: [HeaderName; 5]) -> Self {
        Self {
            normalized: names.each_ref().map(|n| normalized(n).into_owned()),
            lengths: names
                .iter()
                .fold(0, |bits, n| bits | length_bit(n.as_str().len())),
            names,
        }
    }

    /// The names, in [`crate::filter::USER_ID`] ... order.
    pub fn names(&self) -> &[HeaderName; 5] {
        &self.names
    }

    /// Whether `name` may be an identity name, spelled exactly or with `_` for `-`: false means
    /// certainly not.
    pub fn may_be(&self, name: &HeaderName) -> bool {
        self.lengths & length_bit(name.as_str().len()) != 0
    }

    /// Each identity header's first value (what `HeaderMap::get` returns), in one walk.
    pub fn first_values(&self, headers: &HeaderMap) -> [Option<HeaderValue>; 5] {
        let mut found: [Option<HeaderValue>; 5] = Default::default();
        for (name, value) in headers {
            if !self.may_be(name) {
                continue;
            }
            for (slot, id) in found.iter_mut().zip(&self.names) {
                if slot.is_none() && id == name {
                    *slot = Some(value.clone());
                }
            }
        }
        found
    }

    /// For a header `name` that [`Self::may_be`] one, with `normalized` its [`normalized`]
    /// spelling: the identity slots it names, as `(slot, exactly)`: `exactly` when spelled as
    /// configured, else a spelling of it with `_` for `-` (or the other way round).
    pub fn matches<'a>(
        &'a self,
        name: &'a HeaderName,
        normalized: &'a str,
    ) -> impl Iterator<Item = (usize, bool)> + 'a {
        self.names
            .iter()
            .zip(&self.normalized)
            .enumerate()
            .filter(move |(_, (_, n))| *n == normalized)
            .map(move |(i, (id, _))| (i, id == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> IdentityNames {
        IdentityNames::new(
            [
                "x-user-id",
                "x-device-id",
                "x-request-id",
                "x-qoe-score",
                "x_scenario",
            ]
            .map(HeaderName::from_static),
        )
    }

    #[test]
    fn first_values_are_what_get_returns() {
        let ids = names();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.append("x-user-id", HeaderValue::from_static("u1"));
        h.append("x-user-id", HeaderValue::from_static("u2"));
        h.insert("x-qoe-score", HeaderValue::from_static("0.5"));
        h.insert("x-user-ix", HeaderValue::from_static("same length"));
        h.insert("x-scenario", HeaderValue::from_static("not exactly"));
        let found = ids.first_values(&h);
        for (i, name) in ids.names().iter().enumerate() {
            assert_eq!(found[i].as_ref(), h.get(name), "{name}");
        }
        assert_eq!(found[0].as_ref().map(|v| v.as_bytes()), Some(&b"u1"[..]));
        assert!(found[4].is_none(), "x-scenario is not x_scenario");
    }

    proptest::proptest! {
        /// Whatever headers a request carries (identity names, their other spellings, names of
        /// the same length, each any number of times), each slot holds what `get` returns.
        #[test]
        fn first_values_match_get(
            headers in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "x-user-id", "x_user_id", "x-user-ix", "x-qoe-score", "x-qoe-scorf",
                        "x_scenario", "x-scenario", "x-request-id", "host", "a",
                    ]),
                    "[a-z0-9]{0,4}",
                ),
                0..12,
            )
        ) {
            let ids = names();
            let mut h = HeaderMap::new();
            for (name, value) in &headers {
                h.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(value).expect("a value"),
                );
            }
            let found = ids.first_values(&h);
            for (i, name) in ids.names().iter().enumerate() {
                proptest::prop_assert_eq!(found[i].as_ref(), h.get(name), "{}", name);
            }
        }
    }

    #[test]
    fn spellings_match_their_slot() {
        let ids = names();
        let check = |name: &'static str| {
            let name = HeaderName::from_static(name);
            let m: Vec<(usize, bool)> = if ids.may_be(&name) {
                ids.matches(&name, &normalized(&name)).collect()
            } else {
                Vec::new()
            };
            m
        };
        assert_eq!(check("x-user-id"), [(0, true)]);
        assert_eq!(check("x_user_id"), [(0, false)]);
        assert_eq!(check("x-scenario"), [(4, false)]);
        assert_eq!(check("x_scenario"), [(4, true)]);
        assert_eq!(check("x-user-ix"), []);
        assert_eq!(check("host"), []);
        assert!(!ids.may_be(&HeaderName::from_static("accept")));
    }
}
