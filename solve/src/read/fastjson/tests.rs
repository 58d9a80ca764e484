//! The scanner against serde: whatever it reads, serde reads the same; log records take the
//! fast path.

use super::*;
use crate::read::LightRecord;
use proptest::prelude::*;

/// A cost as read: a number, or one per resource (in name order).
#[derive(Debug, Clone, PartialEq)]
enum CostRead {
    One(f64),
    Many(Vec<(String, f64)>),
}

impl CostRead {
    /// The number's bits (`-` for a map), to tell -0.0 from 0.0.
    fn bits(&self) -> u64 {
        match self {
            CostRead::One(c) => c.to_bits(),
            CostRead::Many(_) => u64::MAX,
        }
    }
}

/// What serde reads, in the scanner's terms (strings as text).
type Read = (
    u64,
    Option<String>,
    bool,
    Option<String>,
    String,
    Vec<(String, CostRead, f64)>,
    Option<String>,
);

fn by_serde(line: &[u8]) -> Option<Read> {
    let r: LightRecord = serde_json::from_slice(line).ok()?;
    let values = r
        .value_info
        .iter()
        .map(|v| {
            let cost = match &v.cost {
                hydrus_filters::resource::PerResource::One(c) => CostRead::One(*c),
                hydrus_filters::resource::PerResource::Many(m) => {
                    CostRead::Many(m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                }
            };
            (v.strategy.to_string(), cost, v.qoe)
        })
        .collect();
    Some((
        r.ts_ms,
        r.scenario.map(|s| s.to_string()),
        r.scenario_raw.is_some(),
        r.strategy_set.map(|s| s.to_string()),
        r.chosen.to_string(),
        values,
        r.route.map(|s| s.to_string()),
    ))
}

fn by_scanner(line: &[u8]) -> Option<Read> {
    let (mut values, mut costs) = (Vec::new(), Vec::new());
    let f = parse(line, &mut values, &mut costs)?;
    let text = |(a, b): (usize, usize)| String::from_utf8_lossy(&line[a..b]).into_owned();
    let values = values
        .iter()
        .map(|&(s, c, q, (from, to))| {
            let cost = if from == to {
                CostRead::One(c)
            } else {
                let each = &costs[from as usize..to as usize];
                CostRead::Many(each.iter().map(|&(n, v)| (text(n), v)).collect())
            };
            (text(s), cost, q)
        })
        .collect();
    Some((
        f.ts_ms,
        f.scenario.map(text),
        f.scenario_raw,
        f.strategy_set.map(text),
        text(f.chosen),
        values,
        f.route.map(text),
    ))
}

const RECORD: &str = r#"{"ts_ms":1795374637211,"request_id":"r-1","user_id":"alice","device_id":"","scenario":"feed","group":"hydrus","chosen":"s20","k":0.004,"value_info":[{"strategy":"s10","cost":6.0,"qoe":0.54},{"strategy":"s20","cost":10,"qoe":6e-1}],"status":200,"upstream_ms":2.7,"cluster":"ranking-large","total_ms":4.0,"hedge":{"a":[1,2,{"b":null}],"c":true},"strategy_set":"3f2a"}"#;

#[test]
fn a_log_record_takes_the_fast_path() {
    let fast = by_scanner(RECORD.as_bytes()).expect("fast path");
    assert_eq!(Some(&fast), by_serde(RECORD.as_bytes()).as_ref());
    assert_eq!(fast.5[1], ("s20".to_string(), CostRead::One(10.0), 0.6));
    let mut line = Vec::new();
    let rec: hydrus_filters::LogRecord = serde_json::from_str(
        r#"{"ts_ms":5,"request_id":"r","user_id":"u","device_id":"d","scenario":"default","group":"control","chosen":"a","k":null,"value_info":[{"strategy":"a","cost":1.5,"qoe":0.1}],"status":200,"upstream_ms":null}"#,
    )
    .expect("a log record");
    rec.encode_into(&mut line);
    let line = line.trim_ascii();
    assert!(by_scanner(line).is_some());
    assert_eq!(by_scanner(line), by_serde(line));
}

#[test]
fn costs_by_resource_take_the_fast_path() {
    let line = RECORD.replace(
        r#""cost":6.0,"qoe":0.54"#,
        r#""cost":{"large":34.0,"small":2},"qoe":0.54"#,
    );
    let fast = by_scanner(line.as_bytes()).expect("fast path");
    assert_eq!(Some(&fast), by_serde(line.as_bytes()).as_ref());
    assert_eq!(
        fast.5[0].1,
        CostRead::Many(vec![("large".into(), 34.0), ("small".into(), 2.0)])
    );
    // Out of name order, repeated or empty: serde's to read.
    for odd in [
        r#"{"small":2,"large":34.0}"#,
        r#"{"large":2,"large":34.0}"#,
        r#"{}"#,
    ] {
        let line = RECORD.replace(r#""cost":6.0,"#, &format!(r#""cost":{odd},"#));
        assert_eq!(by_scanner(line.as_bytes()), None, "{odd}");
    }
}

#[test]
fn what_serde_refuses_or_reads_otherwise_is_left_to_serde() {
    for line in [
        r#"{"ts_ms":1,"chosen":"a","value_info":[],"ts_ms":2}"#,
        r#"{"ts_ms":1.0,"chosen":"a","value_info":[]}"#,
        r#"{"ts_ms":01,"chosen":"a","value_info":[]}"#,
        r#"{"ts_ms":-1,"chosen":"a","value_info":[]}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[{"strategy":"a","cost":1e400,"qoe":1}]}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[{"strategy":"a","cost":null,"qoe":1}]}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[{"strategy":"a","qoe":1}]}"#,
        r#"{"ts_ms":1,"chosen":"a\u0062","value_info":[]}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[],"x":tru}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[],"x":[1,]}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[]} x"#,
        r#"{"ts_ms":1,"chosen":"a"}"#,
        r#"{"ts_ms":1,"chosen":"a","value_info":[],}"#,
    ] {
        assert_eq!(by_scanner(line.as_bytes()), None, "{line}");
    }
    // Not UTF-8 where serde reads text.
    let bad = b"{\"ts_ms\":1,\"chosen\":\"a\xff\",\"value_info\":[]}";
    assert_eq!(by_scanner(bad), None);
    assert_eq!(by_serde(bad), None);
    // `null` where serde reads it as absent.
    let line = r#"{"ts_ms":1,"chosen":"a","scenario":null,"scenario_raw":null,"strategy_set":null,"value_info":[]}"#;
    assert_eq!(by_scanner(line.as_bytes()), by_serde(line.as_bytes()));
    assert!(by_scanner(line.as_bytes()).is_some());
    let raw = line.replace(r#""scenario_raw":null"#, r#""scenario_raw":"x""#);
    assert_eq!(by_scanner(raw.as_bytes()).map(|r| r.2), Some(true));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A record with bytes changed, removed or inserted: whatever the scanner reads, serde
    /// reads the same.
    #[test]
    fn the_scanner_reads_nothing_serde_reads_otherwise(
        edits in proptest::collection::vec(
            (0usize..400, 0u8..4, proptest::sample::select(
                b"{}[],:\" \\0123456789.-+eEtrufalsn\x01".to_vec())),
            1..4,
        ),
    ) {
        let mut line = RECORD.as_bytes().to_vec();
        for (at, op, c) in edits {
            let at = at % (line.len() + 1);
            match op {
                0 if at < line.len() => line[at] = c,
                1 if at < line.len() => { line.remove(at); }
                _ => line.insert(at, c),
            }
        }
        if let Some(fast) = by_scanner(&line) {
            prop_assert_eq!(Some(fast), by_serde(&line), "{}", String::from_utf8_lossy(&line));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// Numbers, as serde_json writes any `f64` and as decimals of any length: the scanner's
    /// one-pass reading (eight digits at a time, one exact division) gives serde's `f64`.
    #[test]
    fn numbers_read_as_serde_reads_them(
        x in any::<f64>().prop_filter("finite", |x| x.is_finite()),
        int in "[0-9]{1,20}",
        frac in "[0-9]{1,30}",
        negative in any::<bool>(),
    ) {
        let int = if int.starts_with('0') { "0" } else { int.as_str() };
        let sign = if negative { "-" } else { "" };
        let decimal = format!("{sign}{int}.{frac}");
        for text in [serde_json::to_string(&x).unwrap_or_default(), decimal] {
            let line = format!(
                r#"{{"ts_ms":1,"chosen":"a","value_info":[{{"strategy":"a","cost":{text},"qoe":{text}}}]}}"#
            );
            let fast = by_scanner(line.as_bytes());
            prop_assert!(fast.is_some(), "{}", line);
            let bits = |r: &Option<Read>| {
                r.as_ref()
                    .map(|r| r.5.iter().map(|v| (v.1.bits(), v.2.to_bits())).collect::<Vec<_>>())
            };
            let slow = by_serde(line.as_bytes());
            prop_assert_eq!(bits(&fast), bits(&slow), "{}", line);
            prop_assert_eq!(fast, slow, "{}", line);
        }
    }
}
