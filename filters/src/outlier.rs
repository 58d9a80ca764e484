//! Passive health of a cluster's endpoints (outlier detection, as Envoy's): an endpoint whose
//! attempts fail `consecutive_failures` times in a row is ejected for a back-off period that grows
//! with each ejection; an endpoint with requests in flight and no answer for `stall_after` is
//! skipped for new requests until it answers again (a hung endpoint is found in that time, not
//! after every request it holds times out). Never more than `max_ejection_percent` of a cluster
//! (and never all of it) is set aside: if every endpoint is out, requests go to all of them.
//!
//! Plain atomics over a caller-given clock (milliseconds), so the rules are tested without time.

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The outlier-detection settings of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failed attempts in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the n-th, n times as long (up to `max_ejection_ms`).
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// At most this share of the cluster's endpoints is ejected at once (at least one may be,
    /// never all).
    pub max_ejection_percent: u32,
    /// An endpoint with requests in flight and no answer for this long gets no new requests
    /// until it answers; 0 turns this off.
    pub stall_after_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
            stall_after_ms: 1_000,
        }
    }
}

/// `clusters.NAME.outlier` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    /// Failed attempts in a row that eject an endpoint; 0: never eject.
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// An endpoint holding requests without answering any for this long gets no new ones until
    /// it answers; 0s: off. Default: half the cluster's `read_timeout`.
    #[serde(with = "humantime_serde")]
    pub stall_after: Option<Duration>,
}

impl Default for OutlierSection {
    fn default() -> Self {
        let d = OutlierConfig::default();
        Self {
            consecutive_failures: d.consecutive_failures,
            base_ejection_time: Duration::from_millis(d.base_ejection_ms),
            max_ejection_time: Duration::from_millis(d.max_ejection_ms),
            max_ejection_percent: d.max_ejection_percent,
            stall_after: None,
        }
    }
}

impl OutlierSection {
    /// The settings of a cluster whose reads time out after `read_timeout`.
    pub fn config(&self, read_timeout: Duration) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: self.consecutive_failures,
            base_ejection_ms: self.base_ejection_time.as_millis() as u64,
            max_ejection_ms: self.max_ejection_time.as_millis() as u64,
            max_ejection_percent: self.max_ejection_percent,
            stall_after_ms: self.stall_after.unwrap_or(read_timeout / 2).as_millis() as u64,
        }
    }
}

/// The passive-health state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointState {
    consecutive: AtomicU32,
    /// Until when it is ejected (ms); 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections so far (the back-off multiplier), forgotten after a quiet `max_ejection_ms`.
    ejections: AtomicU32,
    inflight: AtomicU32,
    /// The last time it answered, or its in-flight count rose from 0 (ms).
    progress_ms: AtomicU64,
}

/// How one attempt on an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response other than a 5xx.
    Success,
    /// A connect failure, reset, timeout, malformed response or a 5xx.
    Failure,
}

impl EndpointState {
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    /// In flight with no answer for `stall_after_ms`.
    pub fn stalled(&self, cfg: &OutlierConfig, now_ms: u64) -> bool {
        cfg.stall_after_ms > 0
            && self.inflight.load(Relaxed) > 0
            && now_ms.saturating_sub(self.progress_ms.load(Relaxed)) >= cfg.stall_after_ms
    }

    /// Whether new requests may go here.
    pub fn available(&self, cfg: &OutlierConfig, now_ms: u64) -> bool {
        !self.ejected(now_ms) && !self.stalled(cfg, now_ms)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// An attempt was sent here.
    pub fn started(&self, now_ms: u64) {
        if self.inflight.fetch_add(1, Relaxed) == 0 {
            self.progress_ms.store(now_ms, Relaxed);
        }
    }

    /// An attempt sent here ended without an outcome worth counting (the client went away).
    pub fn abandoned(&self) {
        let _ = self
            .inflight
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

/// The passive health of one cluster's endpoints.
#[derive(Debug)]
pub struct Outliers {
    cfg: OutlierConfig,
    /// Shared with the cluster's next endpoint set when its addresses change (DNS), so an
    /// endpoint that stays keeps its ejection and what it has in flight.
    endpoints: Vec<Arc<EndpointState>>,
    /// The newest endpoint set of the cluster, shared by all its sets: the ejection cap is
    /// judged on it, also for a request still on an older set.
    newest: Arc<ArcSwap<Vec<Arc<EndpointState>>>>,
}

/// What [`Outliers::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    /// The endpoint was ejected until this time (ms).
    Ejected {
        until_ms: u64,
    },
}

impl Outliers {
    pub fn new(cfg: OutlierConfig, endpoints: usize) -> Self {
        let endpoints: Vec<Arc<EndpointState>> = (0..endpoints).map(|_| Arc::default()).collect();
        Self {
            cfg,
            newest: Arc::new(ArcSwap::from_pointee(endpoints.clone())),
            endpoints,
        }
    }

    /// The passive health of a new endpoint set: endpoint `i` is the old `was[i]` (its state
    /// carried over) or new.
    pub fn carried(&self, was: &[Option<usize>]) -> Self {
        let endpoints: Vec<Arc<EndpointState>> = was
            .iter()
            .map(|w| {
                w.and_then(|j| self.endpoints.get(j).cloned())
                    .unwrap_or_default()
            })
            .collect();
        self.newest.store(Arc::new(endpoints.clone()));
        Self {
            cfg: self.cfg,
            endpoints,
            newest: self.newest.clone(),
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    pub fn endpoint(&self, i: usize) -> Option<&EndpointState> {
        self.endpoints.get(i).map(|e| &**e)
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Whether endpoint `i` may take new requests now.
    pub fn available(&self, i: usize, now_ms: u64) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| e.available(&self.cfg, now_ms))
    }

    pub fn started(&self, i: usize, now_ms: u64) {
        if let Some(e) = self.endpoints.get(i) {
            e.started(now_ms);
        }
    }

    /// Endpoint `i` answered something (a response header): it is not hung, whatever the
    /// outcome of the exchange turns out to be.
    pub fn progress(&self, i: usize, now_ms: u64) {
        if let Some(e) = self.endpoints.get(i) {
            e.progress_ms.store(now_ms, Relaxed);
        }
    }

    pub fn abandoned(&self, i: usize) {
        if let Some(e) = self.endpoints.get(i) {
            e.abandoned();
        }
    }

    /// An attempt on endpoint `i` ended: count it, and eject the endpoint when it failed too
    /// often in a row (within the cluster's ejection cap).
    pub fn record(&self, i: usize, outcome: Outcome, now_ms: u64) -> Recorded {
        let Some(e) = self.endpoints.get(i) else {
            return Recorded::Nothing;
        };
        e.abandoned();
        match outcome {
            Outcome::Success => {
                e.progress_ms.store(now_ms, Relaxed);
                e.consecutive.store(0, Relaxed);
                Recorded::Nothing
            }
            Outcome::Failure => {
                let n = e.consecutive.fetch_add(1, Relaxed) + 1;
                if self.cfg.consecutive_failures == 0
                    || n < self.cfg.consecutive_failures
                    || e.ejected(now_ms)
                    || !self.may_eject_one_more(now_ms)
                {
                    return Recorded::Nothing;
                }
                let until_ms = self.eject(e, now_ms);
                Recorded::Ejected { until_ms }
            }
        }
    }

    fn may_eject_one_more(&self, now_ms: u64) -> bool {
        let newest = self.newest.load();
        let n = newest.len();
        let ejected = newest.iter().filter(|e| e.ejected(now_ms)).count();
        let cap = (n * self.cfg.max_ejection_percent as usize / 100).max(1);
        ejected < cap && ejected + 1 < n
    }

    fn eject(&self, e: &EndpointState, now_ms: u64) -> u64 {
        let last_until = e.ejected_until_ms.load(Relaxed);
        // A long quiet spell since the last ejection forgives the earlier ones.
        if last_until > 0 && now_ms.saturating_sub(last_until) > self.cfg.max_ejection_ms {
            e.ejections.store(0, Relaxed);
        }
        let times = u64::from(e.ejections.fetch_add(1, Relaxed)) + 1;
        let span = self
            .cfg
            .base_ejection_ms
            .saturating_mul(times)
            .min(self.cfg.max_ejection_ms.max(self.cfg.base_ejection_ms));
        let until = now_ms + span;
        e.ejected_until_ms.store(until, Relaxed);
        e.consecutive.store(0, Relaxed);
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 5_000,
            max_ejection_percent: 50,
            stall_after_ms: 500,
        }
    }

    fn fail(o: &Outliers, i: usize, now: u64) -> Recorded {
        o.started(i, now);
        o.record(i, Outcome::Failure, now)
    }

    #[test]
    fn the_ejection_cap_is_judged_on_the_newest_endpoint_set() {
        // Four endpoints; DNS then leaves two of them (0 and 1).
        let old = Outliers::new(cfg(), 4);
        let new = old.carried(&[Some(0), Some(1)]);
        for _ in 0..3 {
            fail(&new, 0, 0);
        }
        assert!(!new.available(0, 1), "one of two may be ejected");
        // A request still on the four-endpoint set fails endpoint 1 three times: under 50% of
        // four it could be ejected, but that would leave the newest set with none.
        for _ in 0..3 {
            fail(&old, 1, 2);
        }
        assert!(new.available(1, 3), "the newest set keeps an endpoint");
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_back_off() {
        let o = Outliers::new(cfg(), 4);
        assert_eq!(fail(&o, 0, 0), Recorded::Nothing);
        assert_eq!(fail(&o, 0, 0), Recorded::Nothing);
        assert_eq!(fail(&o, 0, 10), Recorded::Ejected { until_ms: 1_010 });
        assert!(!o.available(0, 500) && o.available(0, 1_010));
        // Back: three more failures in a row, twice as long.
        for t in [1_100, 1_200] {
            assert_eq!(fail(&o, 0, t), Recorded::Nothing);
        }
        assert_eq!(fail(&o, 0, 1_300), Recorded::Ejected { until_ms: 3_300 });
        // The back-off is capped at max_ejection_ms...
        for k in 3..8u64 {
            let t = 10_000 * k;
            fail(&o, 0, t);
            fail(&o, 0, t);
            let r = fail(&o, 0, t);
            assert!(matches!(r, Recorded::Ejected { until_ms } if until_ms - t <= 5_000));
        }
    }

    #[test]
    fn a_success_resets_the_count_and_quiet_forgives() {
        let o = Outliers::new(cfg(), 2);
        fail(&o, 1, 0);
        fail(&o, 1, 0);
        o.started(1, 0);
        o.record(1, Outcome::Success, 0);
        assert_eq!(fail(&o, 1, 0), Recorded::Nothing);
        fail(&o, 1, 0);
        assert_eq!(fail(&o, 1, 0), Recorded::Ejected { until_ms: 1_000 });
        fail(&o, 1, 2_000);
        fail(&o, 1, 2_000);
        assert_eq!(fail(&o, 1, 2_000), Recorded::Ejected { until_ms: 4_000 });
        // Quiet for longer than max_ejection_ms after that ejection: back to the base.
        fail(&o, 1, 10_000);
        fail(&o, 1, 10_000);
        assert_eq!(fail(&o, 1, 10_000), Recorded::Ejected { until_ms: 11_000 });
    }

    #[test]
    fn never_more_than_the_cap_and_never_all() {
        let o = Outliers::new(cfg(), 2);
        for _ in 0..3 {
            fail(&o, 0, 0);
        }
        assert!(!o.available(0, 0));
        // 50% of two is one: the other endpoint stays in, however it fails.
        for _ in 0..10 {
            assert_eq!(fail(&o, 1, 0), Recorded::Nothing);
        }
        assert!(o.available(1, 0));
        let single = Outliers::new(cfg(), 1);
        for _ in 0..10 {
            assert_eq!(fail(&single, 0, 0), Recorded::Nothing);
        }
        assert!(single.available(0, 0));
    }

    #[test]
    fn a_hung_endpoint_is_skipped_until_it_answers() {
        let o = Outliers::new(cfg(), 2);
        o.started(0, 100);
        assert!(o.available(0, 599));
        assert!(!o.available(0, 600), "no answer for 500 ms");
        // Another endpoint answering slowly but steadily is not stalled.
        o.started(1, 100);
        o.started(1, 100);
        o.record(1, Outcome::Success, 550);
        assert!(o.available(1, 1_000));
        // The hung one answers: available again; idle endpoints are never stalled.
        o.record(0, Outcome::Success, 5_000);
        assert!(o.available(0, 9_000));
        assert_eq!(o.endpoint(0).map(EndpointState::inflight), Some(0));
    }

    #[test]
    fn zero_turns_ejection_and_stall_detection_off() {
        let off = OutlierConfig {
            consecutive_failures: 0,
            stall_after_ms: 0,
            ..cfg()
        };
        let o = Outliers::new(off, 3);
        for _ in 0..20 {
            assert_eq!(fail(&o, 0, 0), Recorded::Nothing);
        }
        o.started(1, 0);
        assert!(o.available(0, 0) && o.available(1, 1_000_000));
    }
}
