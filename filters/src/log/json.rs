//! The decision record's JSON, written directly: the sink thread encodes one record per request,
//! and serde's map serializer (which `#[serde(flatten)]` forces) escaped every key and formatted
//! every strategy's constant cost each time. The output is byte for byte what `serde_json` writes
//! for [`super::RecordRef`] (checked by the tests below): the format is an interface.

use super::record::{RecordRef, ValueInfoRef};
use crate::filter::LogValue;

/// `"text"`, escaped as `serde_json` escapes it (control characters, `"` and `\`).
pub fn string(out: &mut Vec<u8>, text: &str) {
    if plain(text.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Rare: let serde_json escape it. Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// Whether `bytes` need no escaping: no control character, `"` or `\\`. Eight bytes at a
/// time (the classic "has a byte less than n / equal to c" word tricks): the log record's
/// strings are this check's whole cost on the sink thread.
fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let w = u64::from_ne_bytes(word);
        // (A byte < 0x20: `w - 0x20..` borrows into its high bit where the byte's was clear.)
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
        if control
            || has_zero(w ^ (ONES * u64::from(b'"')))
            || has_zero(w ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A float as `serde_json` writes it (`null` when not finite).
pub fn float(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

fn uint(out: &mut Vec<u8>, v: u64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

fn opt_float(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => float(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `{"strategy":"NAME","cost":COST,"qoe":`: a strategy's entry in `value_info` but its QoE.
/// With several resources the cost is an object by resource, `{"large":34.0,"small":2.0}`.
pub fn value_head(name: &str, resources: &[String], costs: &[f64]) -> Box<[u8]> {
    let mut out = b"{\"strategy\":".to_vec();
    string(&mut out, name);
    out.extend_from_slice(b",\"cost\":");
    per_resource(&mut out, resources, costs);
    out.extend_from_slice(b",\"qoe\":");
    out.into_boxed_slice()
}

/// One number per resource: a plain number for one resource, else an object by resource.
pub fn per_resource(out: &mut Vec<u8>, resources: &[String], values: &[f64]) {
    if let [one] = values {
        float(out, *one);
        return;
    }
    out.push(b'{');
    for (i, (r, v)) in resources.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, r);
        out.push(b':');
        float(out, *v);
    }
    out.push(b'}');
}

fn value_info(out: &mut Vec<u8>, v: &ValueInfoRef<'_>) {
    out.push(b'[');
    if let Some((set, candidates)) = v.0 {
        let mut first = true;
        candidates.each(&mut |j, qoe| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(set.json_head(j));
            float(out, qoe);
            out.push(b'}');
        });
    }
    out.push(b']');
}

/// `,"key":"value"` when there is a value (the record skips absent optional fields).
fn opt_str(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        string(out, v);
    }
}

impl RecordRef<'_> {
    /// Append this record as one JSON line (what `serde_json` would write for it, without its
    /// map serializer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode(out, self);
    }
}

/// Append `r` as one JSON line.
pub fn encode(out: &mut Vec<u8>, r: &RecordRef<'_>) {
    out.extend_from_slice(b"{\"ts_ms\":");
    uint(out, r.ts_ms);
    out.extend_from_slice(b",\"request_id\":");
    string(out, r.request_id);
    out.extend_from_slice(b",\"user_id\":");
    string(out, r.user_id);
    out.extend_from_slice(b",\"device_id\":");
    string(out, r.device_id);
    out.extend_from_slice(b",\"scenario\":");
    string(out, r.scenario);
    out.extend_from_slice(b",\"group\":");
    string(out, r.group);
    out.extend_from_slice(b",\"chosen\":");
    string(out, r.chosen);
    out.extend_from_slice(b",\"k\":");
    match r.k.0 {
        Some((resources, ks)) => per_resource(out, resources, ks),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"value_info\":");
    value_info(out, &r.value_info);
    out.extend_from_slice(b",\"status\":");
    uint(out, u64::from(r.status));
    out.extend_from_slice(b",\"upstream_ms\":");
    opt_float(out, r.upstream_ms);
    opt_str(out, b",\"fallback\":", r.fallback);
    opt_str(out, b",\"cluster\":", r.cluster);
    if let Some(t) = r.total_ms {
        out.extend_from_slice(b",\"total_ms\":");
        float(out, t);
    }
    if let Some(l) = r.cluster_load {
        out.extend_from_slice(b",\"cluster_load\":");
        uint(out, u64::from(l));
    }
    opt_str(out, b",\"scenario_raw\":", r.scenario_raw);
    opt_str(out, b",\"error\":", r.error);
    opt_str(out, b",\"would_choose\":", r.would_choose);
    opt_str(out, b",\"strategy_set\":", r.strategy_set);
    opt_str(out, b",\"route\":", r.route);
    if let Some(g) = r.grpc_status {
        out.extend_from_slice(b",\"grpc_status\":");
        uint(out, u64::from(g));
    }
    for &(name, value) in r.extra.0 {
        out.push(b',');
        string(out, name);
        out.push(b':');
        match value {
            LogValue::F64(v) => float(out, v),
            LogValue::U64(v) => uint(out, v),
            LogValue::Str(v) => string(out, v),
        }
    }
    let a = &r.access;
    opt_str(out, b",\"client_addr\":", a.client_addr);
    opt_str(out, b",\"method\":", a.method);
    opt_str(out, b",\"path\":", a.path);
    opt_str(out, b",\"protocol\":", a.protocol);
    opt_str(out, b",\"endpoint\":", a.endpoint);
    for (key, v) in [
        (&b",\"attempts\":"[..], a.attempts.map(u64::from)),
        (b",\"request_bytes\":", a.request_bytes),
        (b",\"response_bytes\":", a.response_bytes),
    ] {
        if let Some(v) = v {
            out.extend_from_slice(key);
            uint(out, v);
        }
    }
    opt_str(out, b",\"trace_id\":", a.trace_id);
    if !r.escaped.is_empty() {
        out.extend_from_slice(b",\"escaped\":[");
        for (i, f) in r.escaped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, f);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Candidates, Strategies};
    use crate::hydrus::qoe::QoeVector;
    use crate::hydrus::strategy::{Strategy as Plan, StrategySet};
    use crate::log::record::{Extra, KRef};
    use proptest::prelude::*;

    /// What serde_json writes for the record: the reference the direct writer must match.
    fn by_serde(r: &RecordRef<'_>) -> Vec<u8> {
        let mut out = serde_json::to_vec(r).expect("serializes");
        out.push(b'\n');
        out
    }

    fn any_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-1e6f64..1e6),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(1e-7),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9\"\\\\\n\t\u{1}\u{7f}é]{0,12}"]
    }

    proptest! {
        #[test]
        fn a_string_is_escaped_exactly_when_serde_would(
            s in prop_oneof![
                any::<String>(),
                "[a-z0-9\"\\\\\n\t\u{1}\u{1f}\u{20}\u{7f}\u{80}é]{0,40}",
            ],
        ) {
            let naive = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
            prop_assert_eq!(plain(s.as_bytes()), naive);
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).expect("json"));
        }

        #[test]
        fn writes_what_serde_writes(
            ts_ms in any::<u64>(),
            strs in proptest::collection::vec(text(), 6),
            opts in proptest::collection::vec(proptest::option::of(text()), 13),
            counts in proptest::collection::vec(proptest::option::of(any::<u64>()), 3),
            floats in proptest::collection::vec(proptest::option::of(any_float()), 3),
            costs in proptest::collection::vec(0.0f64..1e4, 1..9),
            qoes in proptest::collection::vec(proptest::option::of(any_float()), 8),
            status in any::<u16>(),
            load in proptest::option::of(any::<u32>()),
            grpc in proptest::option::of(any::<u8>()),
            extra_f in any_float(),
            extra_u in any::<u64>(),
            with_qoe in any::<bool>(),
            two in any::<bool>(),
            escaped in proptest::sample::subsequence(
                vec!["user_id", "device_id", "request_id", "scenario_raw"],
                0..=4,
            ),
        ) {
            // One resource, or two (costs as objects, k as an object).
            let cost = |c: f64| if two {
                crate::resource::PerResource::Many(
                    [("large".to_string(), c), ("small".to_string(), c / 3.0)].into(),
                )
            } else {
                c.into()
            };
            let set = StrategySet::new(
                costs.iter().enumerate().map(|(i, &c)| Plan {
                    name: format!("s{i}"),
                    cost: cost(c),
                    qoe_scale: 1.0,
                }).collect(),
                "s0",
            ).expect("valid");
            let ks: Vec<f64> = floats[0].map(|k| vec![k, k * 2.0]).unwrap_or_default();
            let ks = &ks[..if two { ks.len() } else { ks.len().min(1) }];
            let mut q = QoeVector::empty();
            for (j, v) in qoes.iter().enumerate().take(set.len()) {
                if let Some(v) = v {
                    q.set(j, *v);
                }
            }
            let extra = [
                ("external_delay_ms", LogValue::F64(extra_f)),
                ("e2e_bucket", LogValue::U64(extra_u)),
                ("hedge", LogValue::Str("pri\"mary")),
            ];
            let o = |i: usize| opts[i].as_deref();
            let r = RecordRef {
                ts_ms,
                request_id: &strs[0],
                user_id: &strs[1],
                device_id: &strs[2],
                scenario: &strs[3],
                group: &strs[4],
                chosen: &strs[5],
                k: KRef((!ks.is_empty()).then_some((set.resources(), ks))),
                value_info: ValueInfoRef(with_qoe.then_some((&set as &dyn Strategies, &q as &dyn Candidates))),
                status,
                upstream_ms: floats[1],
                fallback: o(0),
                cluster: o(1),
                total_ms: floats[2],
                cluster_load: load,
                scenario_raw: o(2),
                error: o(3),
                would_choose: o(4),
                strategy_set: o(5),
                route: o(6),
                grpc_status: grpc,
                access: crate::log::record::AccessRef {
                    client_addr: o(7),
                    method: o(8),
                    path: o(9),
                    protocol: o(10),
                    endpoint: o(11),
                    attempts: counts[0].map(|n| n as u32),
                    request_bytes: counts[1],
                    response_bytes: counts[2],
                    trace_id: o(12),
                },
                extra: Extra(&extra),
                escaped: &escaped,
            };
            let mut out = Vec::new();
            encode(&mut out, &r);
            let reference = by_serde(&r);
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&reference));
        }
    }
}
