//! The retry budget of a cluster, as Envoy's: retries in flight may be at most `percent` of the
//! requests in flight (and at least `min_concurrency`), so that retrying never multiplies the
//! load on a cluster that is failing as a whole.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// `clusters.NAME.retry` as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries of one request after its first attempt (each to another endpoint).
    pub attempts: u32,
    /// Retries in flight as a share (percent) of the cluster's requests in flight.
    pub budget_percent: f64,
    /// Retries in flight always allowed, however few requests are in flight.
    pub min_concurrency: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20.0,
            min_concurrency: 3,
        }
    }
}

/// Most retries of one request.
pub const MAX_RETRIES: u32 = 3;

/// The endpoints one request has tried (at most `1 + MAX_RETRIES`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried {
    slots: [usize; 1 + MAX_RETRIES as usize],
    len: usize,
}

impl Tried {
    pub fn contains(&self, i: usize) -> bool {
        self.slots[..self.len].contains(&i)
    }

    pub fn push(&mut self, i: usize) {
        if self.len < self.slots.len() {
            self.slots[self.len] = i;
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn request_finished(&self) {
        let _ = self
            .requests
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Take a retry slot if the budget allows one; give it back with [`Self::retry_finished`].
    pub fn try_retry(&self, cfg: &RetryConfig) -> bool {
        let requests = f64::from(self.requests.load(Relaxed));
        let allowed = ((requests * cfg.budget_percent / 100.0) as u32).max(cfg.min_concurrency);
        self.retries
            .fetch_update(Relaxed, Relaxed, |r| (r < allowed).then_some(r + 1))
            .is_ok()
    }

    pub fn retry_finished(&self) {
        let _ = self
            .retries
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    pub fn in_flight(&self) -> (u32, u32) {
        (self.requests.load(Relaxed), self.retries.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_in_flight() {
        let cfg = RetryConfig::default();
        let b = RetryBudget::default();
        // Few requests: the minimum concurrency applies.
        for _ in 0..3 {
            assert!(b.try_retry(&cfg));
        }
        assert!(!b.try_retry(&cfg));
        // 50 requests in flight: 20% is 10 retries.
        for _ in 0..50 {
            b.request_started();
        }
        for _ in 3..10 {
            assert!(b.try_retry(&cfg));
        }
        assert!(!b.try_retry(&cfg));
        b.retry_finished();
        assert!(b.try_retry(&cfg));
        for _ in 0..60 {
            b.request_finished();
        }
        assert_eq!(b.in_flight().0, 0, "never below zero");
    }
}
