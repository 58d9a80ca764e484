//! The E2E filter (SIGCOMM'19): route each request by its external delay (the time it already
//! spent outside this service, tagged by the front end). Requests are grouped into buckets of
//! external delay; a decision table, solved offline by bipartite matching, gives each bucket a
//! probability per replica group and optionally a priority.
//!
//! ```yaml
//! groups: [fast, slow]          # upstream clusters that are replicas of each other
//! generated_at_ms: 1795374637211
//! buckets:                      # by increasing upper bound; the last one has none
//!   - { max_ms: 120, route: [0.2, 0.8], priority: low }
//!   - { max_ms: 900, route: [0.9, 0.1], priority: high }
//!   - { route: [0.5, 0.5] }
//! ```

use serde::{Deserialize, Serialize};

/// Most buckets a table may have (they label a metric).
pub const MAX_BUCKETS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketFile {
    /// Upper bound of the bucket's external delays (inclusive), ms; none for the last bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Probability of each group, in `groups` order; sums to 1.
    pub route: Vec<f64>,
    /// A value for the priority header, when the filter sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// The table file as written by `hydrus solve --policy e2e`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eTableFile {
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at_ms: Option<u64>,
    pub buckets: Vec<BucketFile>,
    /// What the table was solved from (histograms), so the controller can tell whether its
    /// inputs changed enough to rewrite it. The proxy ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum E2eTableError {
    #[error("{0}")]
    Yaml(String),
    #[error("no groups")]
    NoGroups,
    #[error("between 1 and {MAX_BUCKETS} buckets are needed, not {0}")]
    Buckets(usize),
    #[error("bucket {0}: `route` needs one probability per group")]
    RouteLen(usize),
    #[error("bucket {0}: probabilities must be finite, >= 0 and sum to 1")]
    Probabilities(usize),
    #[error("bucket {0}: max_ms must be finite and larger than the previous bucket's")]
    Bounds(usize),
    #[error("the last bucket must have no max_ms, and only the last")]
    LastBucket,
}

/// A validated decision table.
#[derive(Debug, Clone, PartialEq)]
pub struct E2eTable {
    groups: Vec<String>,
    bounds: Vec<f64>,
    /// Cumulative probabilities per bucket, for an inverse-CDF draw.
    cumulative: Vec<Vec<f64>>,
    priorities: Vec<Option<String>>,
    generated_at_ms: Option<u64>,
    file: E2eTableFile,
}

impl E2eTable {
    pub fn new(file: E2eTableFile) -> Result<Self, E2eTableError> {
        if file.groups.is_empty() {
            return Err(E2eTableError::NoGroups);
        }
        let n = file.buckets.len();
        if n == 0 || n > MAX_BUCKETS {
            return Err(E2eTableError::Buckets(n));
        }
        let mut bounds = Vec::with_capacity(n);
        let mut cumulative = Vec::with_capacity(n);
        let mut prev = f64::NEG_INFINITY;
        for (i, b) in file.buckets.iter().enumerate() {
            match (b.max_ms, i + 1 == n) {
                (Some(m), false) => {
                    if !m.is_finite() || m <= prev {
                        return Err(E2eTableError::Bounds(i));
                    }
                    prev = m;
                    bounds.push(m);
                }
                (None, true) => {}
                _ => return Err(E2eTableError::LastBucket),
            }
            if b.route.len() != file.groups.len() {
                return Err(E2eTableError::RouteLen(i));
            }
            let sum: f64 = b.route.iter().sum();
            if b.route.iter().any(|p| !p.is_finite() || *p < 0.0) || (sum - 1.0).abs() > 1e-6 {
                return Err(E2eTableError::Probabilities(i));
            }
            let mut acc = 0.0;
            cumulative.push(
                b.route
                    .iter()
                    .map(|p| {
                        acc += p / sum;
                        acc
                    })
                    .collect(),
            );
        }
        Ok(Self {
            groups: file.groups.clone(),
            bounds,
            cumulative,
            priorities: file.buckets.iter().map(|b| b.priority.clone()).collect(),
            generated_at_ms: file.generated_at_ms,
            file,
        })
    }

    pub fn parse(text: &str) -> Result<Self, E2eTableError> {
        let file: E2eTableFile =
            serde_norway::from_str(text).map_err(|e| E2eTableError::Yaml(e.to_string()))?;
        Self::new(file)
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.file).unwrap_or_default()
    }

    pub fn file(&self) -> &E2eTableFile {
        &self.file
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn buckets(&self) -> usize {
        self.cumulative.len()
    }

    pub fn generated_at_ms(&self) -> Option<u64> {
        self.generated_at_ms
    }

    /// The bucket of an external delay.
    pub fn bucket(&self, external_ms: f64) -> usize {
        self.bounds.partition_point(|&b| b < external_ms)
    }

    /// The group for a bucket, drawn with `u` uniform in `[0, 1)`.
    pub fn group(&self, bucket: usize, u: f64) -> usize {
        let cum = &self.cumulative[bucket.min(self.cumulative.len() - 1)];
        cum.iter().position(|&c| u < c).unwrap_or(cum.len() - 1)
    }

    pub fn priority(&self, bucket: usize) -> Option<&str> {
        self.priorities.get(bucket).and_then(|p| p.as_deref())
    }
}

/// Why a request got the default policy (load balancing). `reason()` labels
/// `hydrus_fallback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eFallback {
    MissingDelay,
    BadDelay,
    NoTable,
    StaleTable,
}

impl E2eFallback {
    pub const ALL_REASONS: &'static [&'static str] = &[
        "missing_external_delay",
        "bad_external_delay",
        "no_e2e_table",
        "stale_e2e_table",
    ];

    pub fn reason(self) -> &'static str {
        match self {
            E2eFallback::MissingDelay => "missing_external_delay",
            E2eFallback::BadDelay => "bad_external_delay",
            E2eFallback::NoTable => "no_e2e_table",
            E2eFallback::StaleTable => "stale_e2e_table",
        }
    }
}

/// The external delay header: milliseconds, finite, `0 <= d <= 1 hour`.
pub fn parse_delay(raw: &[u8]) -> Result<f64, E2eFallback> {
    let text = std::str::from_utf8(raw.trim_ascii()).map_err(|_| E2eFallback::BadDelay)?;
    match text.parse::<f64>() {
        Ok(d) if d.is_finite() && (0.0..=3_600_000.0).contains(&d) => Ok(d),
        _ => Err(E2eFallback::BadDelay),
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E2eDecision {
    /// An index into the table's groups, or `None` for the default policy.
    pub group: Option<usize>,
    pub bucket: Option<usize>,
    pub external_ms: Option<f64>,
    pub fallback: Option<E2eFallback>,
}

/// Decide for one request: `raw` is the header's value, `u` a uniform draw in `[0, 1)`.
pub fn decide(raw: Option<&[u8]>, table: Option<&E2eTable>, stale: bool, u: f64) -> E2eDecision {
    let external = raw.map(parse_delay);
    let mut d = E2eDecision {
        group: None,
        bucket: None,
        external_ms: external.and_then(|e| e.ok()),
        fallback: None,
    };
    let result = (|| {
        let ms = external.ok_or(E2eFallback::MissingDelay)??;
        let t = table.ok_or(E2eFallback::NoTable)?;
        if stale {
            return Err(E2eFallback::StaleTable);
        }
        let b = t.bucket(ms);
        Ok((b, t.group(b, u)))
    })();
    match result {
        Ok((b, g)) => {
            d.bucket = Some(b);
            d.group = Some(g);
        }
        Err(f) => d.fallback = Some(f),
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TABLE: &str = "groups: [fast, slow]\nbuckets:\n  - { max_ms: 100, route: [0.0, 1.0] }\n  - { max_ms: 500, route: [0.75, 0.25], priority: high }\n  - { route: [0.5, 0.5] }\n";

    #[test]
    fn buckets_and_draws() {
        let t = E2eTable::parse(TABLE).expect("valid");
        assert_eq!(
            (
                t.bucket(0.0),
                t.bucket(100.0),
                t.bucket(100.5),
                t.bucket(9e9)
            ),
            (0, 0, 1, 2)
        );
        assert_eq!(t.group(0, 0.0), 1);
        assert_eq!(t.group(1, 0.74), 0);
        assert_eq!(t.group(1, 0.76), 1);
        assert_eq!(t.priority(1), Some("high"));
        assert_eq!(t.priority(0), None);
        let back = E2eTable::parse(&t.to_yaml()).expect("round trip");
        assert_eq!(back, t);
    }

    #[test]
    fn refuses_bad_tables() {
        for (text, want) in [
            ("groups: []\nbuckets: [{route: []}]\n", "no groups"),
            ("groups: [a]\nbuckets: []\n", "buckets are needed"),
            ("groups: [a, b]\nbuckets: [{route: [1]}]\n", "one probability per group"),
            ("groups: [a, b]\nbuckets: [{route: [0.5, 0.6]}]\n", "sum to 1"),
            ("groups: [a]\nbuckets: [{max_ms: 5, route: [1]}]\n", "last bucket"),
            ("groups: [a]\nbuckets: [{max_ms: 5, route: [1]}, {max_ms: 4, route: [1]}, {route: [1]}]\n", "larger"),
            ("groups: [a]\nbuckets: [{route: [1]}]\nbogus: 1\n", "unknown field"),
        ] {
            let e = E2eTable::parse(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn fallbacks() {
        let t = E2eTable::parse(TABLE).expect("valid");
        assert_eq!(
            decide(None, Some(&t), false, 0.5).fallback,
            Some(E2eFallback::MissingDelay)
        );
        assert_eq!(
            decide(Some(b"abc"), Some(&t), false, 0.5).fallback,
            Some(E2eFallback::BadDelay)
        );
        assert_eq!(
            decide(Some(b"-3"), Some(&t), false, 0.5).fallback,
            Some(E2eFallback::BadDelay)
        );
        assert_eq!(
            decide(Some(b"NaN"), Some(&t), false, 0.5).fallback,
            Some(E2eFallback::BadDelay)
        );
        assert_eq!(
            decide(Some(b"30"), None, false, 0.5).fallback,
            Some(E2eFallback::NoTable)
        );
        assert_eq!(
            decide(Some(b"30"), Some(&t), true, 0.5).fallback,
            Some(E2eFallback::StaleTable)
        );
        let d = decide(Some(b" 300 "), Some(&t), false, 0.1);
        assert_eq!(
            (d.bucket, d.group, d.external_ms),
            (Some(1), Some(0), Some(300.0))
        );
    }

    proptest! {
        /// The draw follows the route probabilities.
        #[test]
        fn draws_follow_probabilities(p in 0.0f64..1.0) {
            let text = format!("groups: [a, b]\nbuckets:\n  - {{ route: [{p}, {}] }}\n", 1.0 - p);
            let t = E2eTable::parse(&text).expect("valid");
            let n = 10_000;
            let a = (0..n).filter(|i| t.group(0, (*i as f64 + 0.5) / n as f64) == 0).count();
            prop_assert!((a as f64 / n as f64 - p).abs() < 0.01);
        }

        #[test]
        fn delay_parser_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(d) = parse_delay(&raw) {
                prop_assert!(d.is_finite() && d >= 0.0);
            }
        }
    }
}
