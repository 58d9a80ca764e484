//! A request's attempts on its cluster's endpoints: the peer for an endpoint, the hold a
//! request keeps on its cluster (in flight, retry-budget slots, the attempt in flight), how an
//! attempt's outcome counts for passive health, and when a failed attempt may be retried.

use crate::cluster::Cluster;
use crate::state::State;
use hydrus_filters::outlier::{Outcome, Recorded};
use hydrus_filters::retry::Tried;
use pingora::prelude::*;
use pingora::ErrorType;
use std::sync::Arc;

pub use crate::cluster::peer;

/// An attempt on an endpoint, recorded in the cluster's passive health when it ends; one
/// dropped unfinished (a cancelled hedge) counts as neither success nor failure.
pub struct Attempt<'a> {
    cluster: &'a Cluster,
    endpoint: usize,
    done: bool,
}

impl<'a> Attempt<'a> {
    pub fn start(cluster: &'a Cluster, endpoint: usize) -> Self {
        cluster
            .outliers
            .started(endpoint, hydrus_filters::clock::monotonic_ms());
        Self {
            cluster,
            endpoint,
            done: false,
        }
    }

    pub fn end(mut self, outcome: Outcome, state: &State) {
        self.done = true;
        record_outcome(state, self.cluster, self.endpoint, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cluster.outliers.abandoned(self.endpoint);
        }
    }
}

/// Count an attempt's outcome on its endpoint; log and count an ejection.
pub fn record_outcome(state: &State, cluster: &Cluster, endpoint: usize, outcome: Outcome) {
    let now = hydrus_filters::clock::monotonic_ms();
    if let Recorded::Ejected { until_ms } = cluster.outliers.record(endpoint, outcome, now) {
        let addr = cluster
            .endpoints
            .get(endpoint)
            .map_or_else(String::new, |a| a.to_string());
        tracing::warn!(
            cluster = %cluster.name,
            endpoint = %addr,
            "cluster {}: endpoint {addr} ejected for {} ms after {} failures in a row",
            cluster.name,
            until_ms.saturating_sub(now),
            cluster.outliers.config().consecutive_failures
        );
        state
            .metrics
            .outlier_ejections
            .with_label_values(&[cluster.name.as_str(), addr.as_str()])
            .inc();
    }
}

/// Whether an upstream response status counts against the endpoint: gateway errors (502, 503,
/// 504: Envoy's consecutive gateway failures) do; a 500 is often the request's own fault, which
/// a client could otherwise use to get healthy endpoints ejected.
pub fn outcome_of(status: u16) -> Outcome {
    if matches!(status, 502..=504) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The `kind` label of `hydrus_upstream_errors_total` for an upstream error.
pub fn error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError => "connect",
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        _ => "response",
    }
}

/// An error of the upstream's side.
pub fn upstream_error(mut e: Box<Error>) -> Box<Error> {
    e.as_up();
    e
}

/// A request's hold on its cluster: counted among its requests in flight, the retry-budget
/// slots it took, the attempt in flight. Dropped when the request ends, however it ends
/// (finished, failed, or cancelled by a connection deadline), it gives all of that back.
pub struct Hold {
    pub cluster: Arc<Cluster>,
    retries: u32,
    /// The endpoint of the attempt in flight, until its outcome is recorded.
    pub endpoint: Option<usize>,
    /// Retries of an attempt on a stale pooled connection, to the same endpoint.
    pub reuse_retries: u32,
}

impl Hold {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        cluster.budget.request_started();
        Self {
            cluster,
            retries: 0,
            endpoint: None,
            reuse_retries: 0,
        }
    }

    /// The attempt in flight ended with `outcome`, or (`None`) for a reason that is not the
    /// endpoint's.
    pub fn end_attempt(&mut self, state: &State, outcome: Option<Outcome>) -> Option<usize> {
        let i = self.endpoint.take()?;
        match outcome {
            Some(o) => record_outcome(state, &self.cluster, i, o),
            None => self.cluster.outliers.abandoned(i),
        }
        Some(i)
    }

    /// Whether this request may be tried again on another endpoint after its attempt on
    /// `failed` failed, taking a retry-budget slot if so (counted either way). A retry away
    /// from an endpoint that passive health has set aside while others are still available is
    /// not charged to the budget: the failure is that endpoint's and it gets no new requests.
    /// When the cluster fails as a whole (nothing else available), the budget applies. A retry
    /// after a failed connect (`unsent`: nothing reached any endpoint, so retrying adds no
    /// work anywhere) is not charged either: an endpoint restarting under load refuses a burst
    /// of connects at once, more than the budget's minimum.
    pub fn take_retry(
        &mut self,
        state: &State,
        tried: &Tried,
        failed: Option<usize>,
        unsent: bool,
    ) -> bool {
        let cluster = &self.cluster;
        let attempts = tried.len() as u32;
        if attempts > cluster.retry.attempts || tried.len() >= cluster.endpoints.len() {
            return false;
        }
        let now = hydrus_filters::clock::monotonic_ms();
        let isolated = failed.is_some_and(|i| {
            !cluster.outliers.available(i, now) && cluster.others_available(i, now)
        });
        let free = isolated || unsent;
        let ok = free || cluster.budget.try_retry(&cluster.retry);
        let result = if ok { "sent" } else { "budget_exhausted" };
        state
            .metrics
            .upstream_retries
            .with_label_values(&[cluster.name.as_str(), result])
            .inc();
        if ok && !free {
            self.retries += 1;
        }
        ok
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(i) = self.endpoint.take() {
            self.cluster.outliers.abandoned(i);
        }
        for _ in 0..self.retries {
            self.cluster.budget.retry_finished();
        }
        self.cluster.budget.request_finished();
    }
}
