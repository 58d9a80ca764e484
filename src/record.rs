//! A request's decision log record as the request path leaves it: what it read and decided,
//! copied nowhere. One box per request goes to the log queue; the sink thread turns it into
//! the JSON line of [`hydrus_filters::LogRecord`] (through the borrowed
//! [`hydrus_filters::log::RecordRef`]), so the request path never formats or copies strings.

use crate::config::Running;
use crate::metrics::{Metrics, SCENARIO_OTHER};
use http::HeaderValue;
use hydrus_filters::e2e::E2eDecision;
use hydrus_filters::hedge::Winner;
use hydrus_filters::ktable::DEFAULT_SCENARIO;
use hydrus_filters::log::{capped_text, RecordRef, ValueInfoRef};
use hydrus_filters::{Decision, Group};
use prometheus::IntCounter;
use std::borrow::Cow;
use std::sync::Arc;

/// A request id hydrus made up: 32 lowercase hex digits.
pub type RequestId = [u8; 32];

/// 32 lowercase hex digits, without the formatting machinery.
pub fn hex_id(v: u128) -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 32];
    for (i, c) in s.iter_mut().enumerate() {
        *c = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    s
}

/// The identity headers, in the order of [`crate::config::Headers::all`].
pub const USER_ID: usize = 0;
pub const DEVICE_ID: usize = 1;
pub const REQUEST_ID: usize = 2;
pub const SCENARIO: usize = 4;

/// What one request leaves for its log record.
pub struct Pending {
    /// The config the request ran on: strategy and cluster names, by index.
    pub running: Arc<Running>,
    pub ts_ms: u64,
    /// The identity headers as decided on.
    pub ids: [Option<HeaderValue>; 5],
    pub generated_id: Option<RequestId>,
    pub group: Group,
    pub decision: Option<Decision>,
    pub status: u16,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub cluster: usize,
    pub e2e: Option<E2eDecision>,
    pub cluster_load: Option<u32>,
    pub hedge: Option<Winner>,
    pub error: Option<&'static str>,
}

/// Counters of header values cut to fit a record, by field.
pub struct Truncations {
    user_id: IntCounter,
    device_id: IntCounter,
    request_id: IntCounter,
    scenario: IntCounter,
}

impl Truncations {
    pub fn new(m: &Metrics) -> Self {
        let c = |f: &str| m.log_fields_truncated.with_label_values(&[f]);
        Self {
            user_id: c("user_id"),
            device_id: c("device_id"),
            request_id: c("request_id"),
            scenario: c("scenario"),
        }
    }
}

fn capped<'a>(v: Option<&'a HeaderValue>, counter: &IntCounter) -> Cow<'a, str> {
    let (text, cut) = capped_text(v.map_or(&[][..], HeaderValue::as_bytes));
    if cut {
        counter.inc();
    }
    text
}

impl Pending {
    /// The Kafka key: the user id.
    pub fn key(&self) -> &[u8] {
        self.ids[USER_ID]
            .as_ref()
            .map_or(&[][..], HeaderValue::as_bytes)
    }

    /// Append the record as one JSON line.
    pub fn encode_into(&self, out: &mut Vec<u8>, t: &Truncations) {
        let running = &*self.running;
        let strategies = running.hydrus.as_ref().map(|h| &h.filter.strategies);
        let d = self.decision.as_ref();
        let chosen = match (strategies, d) {
            (Some(set), Some(d)) => set.get(d.strategy).map_or("", |s| s.name.as_str()),
            _ => "default",
        };
        let request_id: Cow<'_, str> = match &self.generated_id {
            Some(g) => Cow::Borrowed(std::str::from_utf8(g).unwrap_or_default()),
            None => capped(self.ids[REQUEST_ID].as_ref(), &t.request_id),
        };
        let declared = d.is_none_or(|d| d.scenario_declared);
        let raw_scenario = self.ids[SCENARIO].as_ref();
        let (scenario, scenario_raw) = match raw_scenario {
            None => (Cow::Borrowed(DEFAULT_SCENARIO), None),
            Some(_) if declared => (capped(raw_scenario, &t.scenario), None),
            Some(_) => (
                Cow::Borrowed(SCENARIO_OTHER),
                Some(capped(raw_scenario, &t.scenario)),
            ),
        };
        let user_id = capped(self.ids[USER_ID].as_ref(), &t.user_id);
        let device_id = capped(self.ids[DEVICE_ID].as_ref(), &t.device_id);
        RecordRef {
            ts_ms: self.ts_ms,
            request_id: &request_id,
            user_id: &user_id,
            device_id: &device_id,
            scenario: &scenario,
            group: self.group.as_str(),
            chosen,
            k: d.and_then(|d| d.k),
            value_info: ValueInfoRef {
                strategies,
                qoe: d.and_then(|d| d.qoe.as_ref()),
            },
            status: self.status,
            upstream_ms: self.upstream_ms,
            fallback: d
                .and_then(|d| d.fallback)
                .map(|f| f.reason())
                .or_else(|| self.e2e.and_then(|e| e.fallback).map(|f| f.reason())),
            cluster: running.clusters.get(self.cluster).map(|c| c.name.as_str()),
            total_ms: Some(self.total_ms),
            external_delay_ms: self.e2e.and_then(|e| e.external_ms),
            cluster_load: self.cluster_load,
            e2e_bucket: self.e2e.and_then(|e| e.bucket).map(|b| b as u32),
            hedge: self.hedge.map(|w| match w {
                Winner::Hedge => "hedge",
                Winner::Primary | Winner::PrimaryAfterHedge => "primary",
            }),
            scenario_raw: scenario_raw.as_deref(),
            error: self.error,
            would_choose: match (strategies, d.and_then(|d| d.would_choose)) {
                (Some(set), Some(j)) => set.get(j).map(|s| s.name.as_str()),
                _ => None,
            },
            strategy_set: running
                .hydrus
                .as_ref()
                .map(|h| h.filter.fingerprint.as_str()),
        }
        .encode_into(out);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_ids() {
        let id = super::hex_id(0xabc);
        assert_eq!(
            std::str::from_utf8(&id),
            Ok(format!("{:032x}", 0xabc).as_str())
        );
        assert_eq!(super::hex_id(u128::MAX), [b'f'; 32]);
    }
}
