//! The decision log record: one JSON object per line (Listing 1 of the Hydrus paper, plus what
//! the solver needs). The field names are an interface: `hydrus solve`, dashboards and users'
//! own pipelines read them. Add fields; never rename or remove one.

use crate::filter::{Candidates, LogValue, Strategies};
pub use crate::resource::PerResource;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// One strategy's estimated QoE and resource cost for one request (the paper's `ValueInfo`);
/// the cost a number with one resource, an object by resource with several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    pub strategy: String,
    pub cost: PerResource,
    pub qoe: f64,
}

/// One proxied request (the paper's `LogInfo`). `Default` is for building records in tests and
/// benches: an empty record that nothing would log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: u64,
    pub request_id: String,
    pub user_id: String,
    pub device_id: String,
    pub scenario: String,
    /// `hydrus` (treatment) or `control`.
    pub group: String,
    /// The strategy applied.
    pub chosen: String,
    /// `k_t` of the request's scenario and window, when the k-table had one (an object by
    /// resource with several).
    pub k: Option<PerResource>,
    /// Every candidate strategy's cost and QoE; empty when the QoE header was unusable.
    pub value_info: Vec<ValueInfo>,
    /// The status sent to the client (0 when none was sent).
    pub status: u16,
    /// Time from sending the request upstream to its response header, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Why a treatment request fell back to the default strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The upstream cluster the request went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Whole-request time in the proxy, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// Requests in flight to the chosen cluster when this one was sent, itself included: the
    /// load that the E2E controller's server-side delay model is fitted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_load: Option<u32>,
    /// The scenario header as sent, when it named no declared scenario (then `scenario` is
    /// `other`): for forensics only; the solver never makes a k-table row of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario_raw: Option<String>,
    /// Set when the exchange failed after the response began (e.g. `upstream_body`: the
    /// upstream closed mid-body, so the client got a truncated response with this `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On a control record: the strategy treatment would have chosen (shadow mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_choose: Option<String>,
    /// The fingerprint of the proxy's strategy set, when it decided (the solver writes it into
    /// the k-table it solves from these records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy_set: Option<String>,
    /// The route the request took (its `name` in the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The request's external delay (E2E), when the front end tagged one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_delay_ms: Option<f64>,
    /// The E2E bucket of the external delay, when the e2e filter routed the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_bucket: Option<u32>,
    /// When the hedge filter reissued the request: which attempt answered (`hedge` or
    /// `primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<String>,
    /// On a gRPC call: its `grpc-status` (from the trailers, or from a trailers-only
    /// response), as the client received it; `status` stays the HTTP status (200 for gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// The access fields, on every logged request (absent from records of hydrus before them).
    #[serde(flatten)]
    pub access: Access,
    /// The fields copied from request headers whose value was not UTF-8, so is written
    /// escaped (see [`escaped_text`]): `user_id`, `device_id`, `request_id`, `scenario_raw`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escaped: Vec<String>,
}

/// What a record says of the exchange itself, as an access log would: who asked what, over
/// which protocol, which endpoint answered after how many attempts, how many body bytes went
/// each way, and the trace it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Access {
    /// The client's address, `IP:PORT` (the connection's peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path as requested; its query as the log filter's `query` says (by default its
    /// keys without their values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2` (between client and hydrus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The endpoint (`IP:PORT`) of the attempt that answered, or of the last one tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Attempts on endpoints: 1, more after retries or a hedge (0: none was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Request body bytes read from the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    /// Response body bytes sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    /// The W3C trace id (32 hex digits), when `tracing:` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Longest value hydrus copies from a request header into a record; longer ones are cut (at a
/// character boundary) and counted, so a client cannot make records arbitrarily large.
pub const MAX_FIELD_BYTES: usize = 256;

/// A request header's value as a record carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped<'a> {
    pub text: Cow<'a, str>,
    /// It was longer than [`MAX_FIELD_BYTES`]: cut.
    pub cut: bool,
    /// It was not UTF-8: written escaped (see [`escaped_text`]).
    pub escaped: bool,
}

/// `raw` as text for a record, cut to [`MAX_FIELD_BYTES`] (at a character boundary). UTF-8 is
/// the text itself, borrowed when short (the common case: no copy); anything else is written
/// escaped ([`escaped_text`]), so two different values never log the same (a lossy `U+FFFD`
/// would make every id that differs only in its invalid bytes one).
pub fn capped_text(raw: &[u8]) -> Capped<'_> {
    let cut = raw.len() > MAX_FIELD_BYTES;
    let mut raw = &raw[..raw.len().min(MAX_FIELD_BYTES)];
    match std::str::from_utf8(raw) {
        Ok(text) => {
            return Capped {
                text: Cow::Borrowed(text),
                cut,
                escaped: false,
            }
        }
        // The cut split a character: drop its remains rather than escape them.
        Err(e) if cut && e.error_len().is_none() => raw = &raw[..e.valid_up_to()],
        Err(_) => {}
    }
    match std::str::from_utf8(raw) {
        Ok(text) => Capped {
            text: Cow::Borrowed(text),
            cut,
            escaped: false,
        },
        Err(_) => Capped {
            text: Cow::Owned(escaped_text(raw)),
            cut,
            escaped: true,
        },
    }
}

/// A value that is not UTF-8 as text that tells every such value apart: its UTF-8 parts as
/// they are, but `\` written `\\`; each byte that is not part of a UTF-8 character as `\xNN`
/// (two upper-case hex digits). One-to-one: reading `\\` as `\` and `\xNN` as the byte gives
/// the value back.
pub fn escaped_text(raw: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(raw.len() * 2);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
}

/// The `value_info` of a record, serialized straight from the strategies and the request's
/// candidates (no per-strategy copies).
#[derive(Clone, Copy, Default)]
pub struct ValueInfoRef<'a>(pub Option<(&'a dyn Strategies, &'a dyn Candidates)>);

impl std::fmt::Debug for ValueInfoRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueInfoRef")
    }
}

impl Serialize for ValueInfoRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((set, candidates)) = self.0 else {
            return s.serialize_seq(Some(0))?.end();
        };
        let mut entries = Vec::new();
        let resources = set.resources();
        candidates.each(&mut |j, qoe| {
            if let Some((strategy, costs)) = set.strategy(j) {
                entries.push(OneValue {
                    strategy,
                    cost: KRef(Some((resources, costs))),
                    qoe,
                });
            }
        });
        let mut seq = s.serialize_seq(Some(entries.len()))?;
        for e in &entries {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

/// The fields the filters added to a record, serialized as entries of the record itself.
#[derive(Debug, Clone, Copy)]
pub struct Extra<'a>(pub &'a [(&'static str, LogValue)]);

impl Serialize for Extra<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value {
                LogValue::F64(v) => map.serialize_entry(name, v)?,
                LogValue::U64(v) => map.serialize_entry(name, v)?,
                LogValue::Str(v) => map.serialize_entry(name, v)?,
            }
        }
        map.end()
    }
}

struct OneValue<'a> {
    strategy: &'a str,
    cost: KRef<'a>,
    qoe: f64,
}

/// One number per resource, borrowed: written as a plain number with one resource, an object
/// by resource with several, `null` when absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct KRef<'a>(pub Option<(&'a [String], &'a [f64])>);

impl Serialize for KRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_none(),
            Some((_, [one])) => s.serialize_f64(*one),
            Some((resources, values)) => {
                let mut m = s.serialize_map(Some(values.len()))?;
                for (r, v) in resources.iter().zip(values) {
                    m.serialize_entry(r, v)?;
                }
                m.end()
            }
        }
    }
}

impl Serialize for OneValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("strategy", self.strategy)?;
        m.serialize_entry("cost", &self.cost)?;
        m.serialize_entry("qoe", &self.qoe)?;
        m.end()
    }
}

/// A record as the proxy writes it: the same fields as [`LogRecord`], borrowed from what the
/// request left behind, so that building it on the sink thread copies nothing.
#[derive(Debug, Serialize)]
pub struct RecordRef<'a> {
    pub ts_ms: u64,
    pub request_id: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub scenario: &'a str,
    pub group: &'a str,
    pub chosen: &'a str,
    pub k: KRef<'a>,
    #[serde(serialize_with = "serialize_values")]
    pub value_info: ValueInfoRef<'a>,
    pub status: u16,
    pub upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_load: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario_raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_choose: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_set: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// What the filters added (`external_delay_ms`, `e2e_bucket`, `hedge`, ...).
    #[serde(flatten)]
    pub extra: Extra<'a>,
    /// The access fields ([`Access`]).
    #[serde(flatten)]
    pub access: AccessRef<'a>,
    #[serde(skip_serializing_if = "none")]
    pub escaped: &'a [&'a str],
}

/// [`Access`], borrowed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AccessRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
}

fn none(fields: &&[&str]) -> bool {
    fields.is_empty()
}

fn serialize_values<S: Serializer>(v: &ValueInfoRef<'_>, s: S) -> Result<S::Ok, S::Error> {
    v.serialize(s)
}

impl LogRecord {
    /// Append this record as one JSON line.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Serializing plain strings and numbers into a Vec cannot fail; NaN would become null.
        if serde_json::to_writer(&mut *out, self).is_ok() {
            out.push(b'\n');
        }
    }

    /// The cost of the chosen strategy (summed over resources), when it is among `value_info`.
    pub fn chosen_cost(&self) -> Option<f64> {
        self.value_info
            .iter()
            .find(|v| v.strategy == self.chosen)
            .map(|v| v.cost.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_fields() {
        let r = LogRecord {
            ts_ms: 1_700_000_000_000,
            request_id: "r1".into(),
            user_id: "u\"1".into(),
            device_id: "d".into(),
            scenario: "default".into(),
            group: "hydrus".into(),
            chosen: "s20".into(),
            k: Some(0.0004.into()),
            value_info: vec![ValueInfo {
                strategy: "s20".into(),
                cost: 10.0.into(),
                qoe: 0.35,
            }],
            status: 200,
            upstream_ms: Some(12.5),
            fallback: None,
            cluster: None,
            total_ms: None,
            external_delay_ms: None,
            cluster_load: None,
            e2e_bucket: None,
            hedge: None,
            scenario_raw: None,
            error: None,
            would_choose: None,
            strategy_set: None,
            route: None,
            grpc_status: None,
            access: Access::default(),
            escaped: vec![],
        };
        let mut out = Vec::new();
        r.encode_into(&mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        for field in [
            "\"ts_ms\":1700000000000",
            "\"request_id\":\"r1\"",
            "\"user_id\":\"u\\\"1\"",
            "\"group\":\"hydrus\"",
            "\"chosen\":\"s20\"",
            "\"k\":0.0004",
            "\"value_info\":[{\"strategy\":\"s20\",\"cost\":10.0,\"qoe\":0.35}]",
            "\"status\":200",
            "\"upstream_ms\":12.5",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        let back: LogRecord = serde_json::from_str(text.trim()).expect("parses");
        assert_eq!(back, r);
        assert_eq!(back.chosen_cost(), Some(10.0));
    }

    use crate::hydrus::qoe::QoeVector;
    use crate::hydrus::strategy::StrategySet;

    fn set() -> StrategySet {
        use crate::hydrus::strategy::Strategy;
        let s = |name: &str, cost: f64, qoe_scale: f64| Strategy {
            name: name.into(),
            cost: cost.into(),
            qoe_scale,
        };
        StrategySet::new(vec![s("s10", 6.0, 0.5), s("s20", 10.0, 1.0)], "s20").expect("valid")
    }

    fn extra() -> Vec<(&'static str, LogValue)> {
        vec![
            ("external_delay_ms", LogValue::F64(120.5)),
            ("e2e_bucket", LogValue::U64(2)),
            ("hedge", LogValue::Str("hedge")),
        ]
    }

    fn borrowed<'a>(
        set: &'a StrategySet,
        q: &'a QoeVector,
        extra: &'a [(&'static str, LogValue)],
    ) -> RecordRef<'a> {
        RecordRef {
            ts_ms: 7,
            request_id: "r\"1",
            user_id: "u",
            device_id: "",
            scenario: "other",
            group: "control",
            chosen: "s20",
            k: KRef(Some((set.resources(), &[0.25]))),
            value_info: ValueInfoRef(Some((set, q))),
            status: 200,
            upstream_ms: None,
            fallback: None,
            cluster: Some("c"),
            total_ms: Some(1.5),
            cluster_load: Some(3),
            scenario_raw: Some("x\n"),
            error: None,
            would_choose: Some("s10"),
            strategy_set: Some("00ff"),
            route: Some("rank"),
            grpc_status: None,
            access: AccessRef {
                client_addr: Some("127.0.0.1:5000"),
                method: Some("GET"),
                path: Some("/rank?user&n"),
                protocol: Some("HTTP/1.1"),
                endpoint: Some("127.0.0.1:9000"),
                attempts: Some(2),
                request_bytes: Some(0),
                response_bytes: Some(120),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            },
            extra: Extra(extra),
            escaped: &[],
        }
    }

    #[test]
    fn a_borrowed_record_writes_what_a_record_reads() {
        let (set, extra) = (set(), extra());
        let q = QoeVector::scaled(&set, 0.5);
        let r = borrowed(&set, &q, &extra);
        let mut out = Vec::new();
        r.encode_into(&mut out);
        let back: LogRecord = serde_json::from_slice(&out).expect("one record");
        assert_eq!(back.request_id, "r\"1");
        assert_eq!(back.scenario_raw.as_deref(), Some("x\n"));
        assert_eq!(back.access.endpoint.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(back.access.attempts, Some(2));
        assert_eq!(back.access.path.as_deref(), Some("/rank?user&n"));
        assert_eq!(
            back.value_info[0],
            ValueInfo {
                strategy: "s10".into(),
                cost: 6.0.into(),
                qoe: 0.25
            }
        );
        assert_eq!(back.value_info.len(), 2);
        assert_eq!(back.chosen_cost(), Some(10.0));
        assert_eq!(
            (back.cluster_load, back.total_ms, back.upstream_ms),
            (Some(3), Some(1.5), None)
        );
        assert_eq!(
            (
                back.external_delay_ms,
                back.e2e_bucket,
                back.hedge.as_deref()
            ),
            (Some(120.5), Some(2), Some("hedge"))
        );
        assert_eq!(back.route.as_deref(), Some("rank"));
        // Encoded back, the owned record is byte for byte the borrowed one.
        let mut again = Vec::new();
        back.encode_into(&mut again);
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn an_unusable_qoe_header_leaves_value_info_empty() {
        let (set, extra) = (set(), extra());
        let q = QoeVector::scaled(&set, 0.5);
        let none = RecordRef {
            value_info: ValueInfoRef(None),
            ..borrowed(&set, &q, &extra)
        };
        let mut out = Vec::new();
        none.encode_into(&mut out);
        assert!(String::from_utf8_lossy(&out).contains("\"value_info\":[]"));
    }

    #[test]
    fn header_fields_are_capped() {
        let c = capped_text(b"alice");
        assert_eq!((c.text.as_ref(), c.cut, c.escaped), ("alice", false, false));
        assert!(matches!(c.text, Cow::Borrowed(_)));
        let long = "é".repeat(MAX_FIELD_BYTES); // two bytes each
        let c = capped_text(long.as_bytes());
        assert!(c.cut && !c.escaped && c.text.len() <= MAX_FIELD_BYTES);
        assert!(c.text.chars().all(|ch| ch == 'é'));
        let odd = format!("a{long}");
        let c = capped_text(odd.as_bytes());
        assert!(c.cut && !c.escaped && c.text.starts_with('a'), "{}", c.text);
        assert!(!c.text.ends_with('\u{fffd}'), "{}", c.text);
    }

    #[test]
    fn values_that_are_not_utf8_are_escaped() {
        let c = capped_text(b"u\xff1");
        assert_eq!(
            (c.text.as_ref(), c.cut, c.escaped),
            ("u\\xFF1", false, true)
        );
        assert_eq!(capped_text(b"u\xfe1").text, "u\\xFE1");
        // A backslash is doubled in an escaped value only: a UTF-8 one is as sent.
        assert_eq!(capped_text(b"a\\xFF\xff").text, "a\\\\xFF\\xFF");
        assert_eq!(capped_text(b"a\\xFF").text, "a\\xFF");
        assert!(!capped_text(b"a\\xFF").escaped);
        assert_eq!(capped_text(b"\xc3\xa9\xe9").text, "é\\xE9");
        // Cut, and not UTF-8 before the cut.
        let mut long = vec![0xffu8];
        long.extend_from_slice(&[b'a'; MAX_FIELD_BYTES]);
        let c = capped_text(&long);
        assert!(
            c.cut && c.escaped && c.text.starts_with("\\xFFaaa"),
            "{}",
            c.text
        );
    }

    /// Reading an escaped value back: `\\` as `\`, `\xNN` as the byte.
    fn unescaped(text: &str) -> Vec<u8> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1)) {
                (b'\\', Some(b'\\')) => {
                    out.push(b'\\');
                    i += 2;
                }
                (b'\\', Some(b'x')) => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("hex");
                    out.push(u8::from_str_radix(hex, 16).expect("hex"));
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let byte = prop_oneof![
            Just(b'\\'),
            Just(b'x'),
            Just(b'F'),
            Just(0xffu8),
            Just(0xc3u8),
            Just(0xa9u8),
            any::<u8>()
        ];
        proptest::collection::vec(byte, 0..MAX_FIELD_BYTES)
    }

    proptest::proptest! {
        /// Two different values never give the same logged text and mark; UTF-8 is logged as
        /// sent, unmarked; an escaped value reads back as the value.
        #[test]
        fn logged_header_values_are_one_to_one(a in value(), b in value()) {
            let (ca, cb) = (capped_text(&a), capped_text(&b));
            if a != b {
                proptest::prop_assert_ne!((&ca.text, ca.escaped), (&cb.text, cb.escaped));
            }
            match std::str::from_utf8(&a) {
                Ok(s) => proptest::prop_assert_eq!((ca.text.as_ref(), ca.escaped), (s, false)),
                Err(_) => {
                    proptest::prop_assert!(ca.escaped);
                    proptest::prop_assert_eq!(unescaped(&ca.text), a.clone());
                }
            }
        }
    }

    #[test]
    fn several_resources_write_objects_and_read_back() {
        use crate::hydrus::strategy::Strategy;
        use std::collections::BTreeMap;
        let cost = |l: f64, s: f64| {
            PerResource::Many(BTreeMap::from([
                ("large".to_string(), l),
                ("small".to_string(), s),
            ]))
        };
        let set = StrategySet::new(
            vec![
                Strategy {
                    name: "s10".into(),
                    cost: cost(0.0, 2.0),
                    qoe_scale: 0.5,
                },
                Strategy {
                    name: "s80".into(),
                    cost: cost(34.0, 2.0),
                    qoe_scale: 1.0,
                },
            ],
            "s10",
        )
        .expect("valid");
        let q = QoeVector::scaled(&set, 0.5);
        let extra = extra();
        let mut r = borrowed(&set, &q, &extra);
        r.chosen = "s80";
        let ks = [0.001, 0.25];
        r.k = KRef(Some((set.resources(), &ks)));
        let mut out = Vec::new();
        r.encode_into(&mut out);
        let line = String::from_utf8_lossy(&out);
        assert!(
            line.contains(r#""k":{"large":0.001,"small":0.25}"#),
            "{line}"
        );
        assert!(
            line.contains(r#"{"strategy":"s80","cost":{"large":34.0,"small":2.0},"qoe":0.5}"#),
            "{line}"
        );
        let mut by_serde = serde_json::to_vec(&r).expect("serializes");
        by_serde.push(b'\n');
        assert_eq!(String::from_utf8_lossy(&by_serde), line);
        let back: LogRecord = serde_json::from_slice(&out).expect("one record");
        assert_eq!(back.k, Some(cost(0.001, 0.25)));
        assert_eq!(back.value_info[1].cost, cost(34.0, 2.0));
        assert_eq!(back.chosen_cost(), Some(36.0));
    }
}
