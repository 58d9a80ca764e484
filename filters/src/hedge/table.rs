//! Kwiken-style hedging (SIGCOMM'13): when a request has not been answered within its route's
//! reissue timeout, send one more attempt and take whichever answers first, cancelling the other.
//! A budget (extra requests as a share of all requests, enforced by a token bucket) caps the
//! reissues; the timeouts come from the solver (SumVar), in a hot-reloaded table:
//!
//! ```yaml
//! budget: 0.05                    # the share of extra requests the timeouts were solved for
//! generated_at_ms: 1795374637211
//! routes:                         # by strategy (or cluster, without a hydrus filter)
//!   s20: { timeout_ms: 85.0 }
//!   s40: {}                       # never reissued
//!   s80: { timeout_ms: 120.0, probability: 0.4 }   # 40% of requests: reissue after 120 ms;
//!                                                  # the others never (or after alt_timeout_ms)
//! ```
//!
//! A policy that mixes two timeouts (Kwiken reissues with a probability) spends any budget
//! exactly, where a single timeout could only spend it in steps.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHedge {
    /// Reissue after this long without an answer; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    /// The share of this route's requests expected to be reissued (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reissue_rate: Option<f64>,
    /// The share of requests that get `timeout_ms` (default 1); the others get
    /// `alt_timeout_ms`, or are never reissued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_timeout_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeTableFile {
    pub budget: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at_ms: Option<u64>,
    pub routes: BTreeMap<String, RouteHedge>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HedgeTableError {
    #[error("{0}")]
    Yaml(String),
    #[error("budget {0} must be a share within 0 and 1")]
    Budget(f64),
    #[error("route `{0}`: timeout_ms must be a finite number > 0")]
    Timeout(String),
    #[error("route `{0}`: probability must be within 0 and 1")]
    Probability(String),
}

/// A validated hedge table.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeTable {
    file: HedgeTableFile,
}

impl HedgeTable {
    pub fn new(file: HedgeTableFile) -> Result<Self, HedgeTableError> {
        if !(0.0..=1.0).contains(&file.budget) {
            return Err(HedgeTableError::Budget(file.budget));
        }
        for (name, r) in &file.routes {
            for t in [r.timeout_ms, r.alt_timeout_ms].into_iter().flatten() {
                if !(t.is_finite() && t > 0.0) {
                    return Err(HedgeTableError::Timeout(name.clone()));
                }
            }
            if let Some(p) = r.probability {
                if !(0.0..=1.0).contains(&p) {
                    return Err(HedgeTableError::Probability(name.clone()));
                }
            }
        }
        Ok(Self { file })
    }

    pub fn parse(text: &str) -> Result<Self, HedgeTableError> {
        let file: HedgeTableFile =
            serde_norway::from_str(text).map_err(|e| HedgeTableError::Yaml(e.to_string()))?;
        Self::new(file)
    }

    pub fn file(&self) -> &HedgeTableFile {
        &self.file
    }

    pub fn budget(&self) -> f64 {
        self.file.budget
    }

    pub fn generated_at_ms(&self) -> Option<u64> {
        self.file.generated_at_ms
    }

    /// The reissue timeout of a route for one request, `u` a uniform draw in `[0, 1)`: the
    /// route's `timeout_ms` for a share `probability` of requests, else `alt_timeout_ms`; none
    /// means this request is never reissued.
    pub fn timeout(&self, route: &str, u: f64) -> Option<Duration> {
        let r = self.file.routes.get(route)?;
        let ms = if u < r.probability.unwrap_or(1.0) {
            r.timeout_ms
        } else {
            r.alt_timeout_ms
        }?;
        Some(Duration::from_secs_f64(ms / 1000.0))
    }
}

/// The reissue budget: every request earns `rate` of a token, a reissue spends one; at most
/// `burst` tokens are kept. So reissues never exceed `rate * requests + burst`.
#[derive(Debug)]
pub struct Budget {
    /// Tokens, in millionths.
    micro: AtomicU64,
    rate_micro: AtomicU64,
    burst_micro: u64,
}

const MICRO: f64 = 1_000_000.0;

impl Budget {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            micro: AtomicU64::new(0),
            rate_micro: AtomicU64::new((rate.clamp(0.0, 1.0) * MICRO) as u64),
            burst_micro: (burst.max(1.0) * MICRO) as u64,
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate_micro
            .store((rate.clamp(0.0, 1.0) * MICRO) as u64, Ordering::Relaxed);
    }

    /// Take over the tokens another budget saved (a config reload replaced it), up to this
    /// one's burst.
    pub fn carry_from(&self, old: &Budget) {
        let saved = old.micro.load(Ordering::Relaxed).min(self.burst_micro);
        self.micro.store(saved, Ordering::Relaxed);
        self.rate_micro
            .store(old.rate_micro.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A request arrived: earn its share.
    pub fn earn(&self) {
        let rate = self.rate_micro.load(Ordering::Relaxed);
        let _ = self
            .micro
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + rate).min(self.burst_micro))
            });
    }

    /// Spend a token for a reissue, if there is one.
    pub fn try_spend(&self) -> bool {
        self.micro
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(MICRO as u64)
            })
            .is_ok()
    }
}

/// Which attempt answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The first attempt, without a reissue.
    Primary,
    /// The first attempt, after a reissue was sent (the reissue was cancelled, or did no
    /// better).
    PrimaryAfterHedge,
    /// The reissue, with a good answer (the first attempt was cancelled, or did no better).
    Hedge,
    /// The reissue's answer, not a good one, the first attempt having failed: an answer
    /// rather than an error, but the reissue did not win.
    HedgeFallback,
}

/// Run `primary`; if it has not finished after `timeout` and the budget allows, start
/// `hedge()` too and return whichever gives a good answer (`good`) first. The other is
/// dropped: cancelled. Without a timeout, or with the budget spent, this is just `primary`.
///
/// An attempt that fails or answers badly (a gateway error, say) does not end the race: its
/// result is held while the other one is still waited for (up to its own timeouts), so a
/// reissue refused or answered 503 at once cannot cancel a healthy slow first attempt.
/// `Winner::Hedge` is returned only for a reissue's good answer. When neither is good, the
/// first attempt's result comes back (`PrimaryAfterHedge`), unless it is an error and the
/// reissue answered (`HedgeFallback`).
pub async fn race<T, E, P, H, F, G>(
    primary: P,
    hedge: H,
    timeout: Option<Duration>,
    budget: &Budget,
    good: G,
) -> (Result<T, E>, Winner)
where
    P: Future<Output = Result<T, E>>,
    H: FnOnce() -> F,
    F: Future<Output = Result<T, E>>,
    G: Fn(&T) -> bool,
{
    tokio::pin!(primary);
    let Some(timeout) = timeout else {
        return (primary.await, Winner::Primary);
    };
    tokio::select! {
        biased;
        v = &mut primary => return (v, Winner::Primary),
        _ = tokio::time::sleep(timeout) => {}
    }
    if !budget.try_spend() {
        return (primary.await, Winner::Primary);
    }
    let second = hedge();
    tokio::pin!(second);
    let (first, primary_first) = tokio::select! {
        biased;
        v = &mut primary => (v, true),
        v = &mut second => (v, false),
    };
    let (p, h) = if primary_first {
        if first.as_ref().is_ok_and(&good) {
            return (first, Winner::PrimaryAfterHedge);
        }
        (first, second.await)
    } else {
        if first.as_ref().is_ok_and(&good) {
            return (first, Winner::Hedge);
        }
        (primary.await, first)
    };
    settle(p, h, good)
}

/// Both attempts of a race have ended, at most one of them with a good answer: that one, else
/// the first attempt's result, or the reissue's answer when the first attempt failed.
fn settle<T, E>(
    p: Result<T, E>,
    h: Result<T, E>,
    good: impl Fn(&T) -> bool,
) -> (Result<T, E>, Winner) {
    if p.as_ref().is_ok_and(&good) {
        return (p, Winner::PrimaryAfterHedge);
    }
    match (p, h) {
        (_, Ok(h)) if good(&h) => (Ok(h), Winner::Hedge),
        (Err(_), Ok(h)) => (Ok(h), Winner::HedgeFallback),
        (p, _) => (p, Winner::PrimaryAfterHedge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::time::{sleep, Instant};

    type Answer = Result<&'static str, &'static str>;

    /// A future that answers `v` after `ms` (an error when `v` starts with `err`), and records
    /// whether it was dropped unfinished.
    fn attempt(
        ms: u64,
        v: &'static str,
        cancelled: Arc<AtomicBool>,
    ) -> impl Future<Output = Answer> {
        struct OnDrop(Arc<AtomicBool>, bool);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        async move {
            let mut guard = OnDrop(cancelled, false);
            sleep(Duration::from_millis(ms)).await;
            guard.1 = true;
            if v.starts_with("err") {
                Err(v)
            } else {
                Ok(v)
            }
        }
    }

    fn flags() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
        (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        )
    }

    /// An answer is good unless it says `bad`.
    fn good(v: &&'static str) -> bool {
        !v.starts_with("bad")
    }

    fn funded() -> Budget {
        let b = Budget::new(1.0, 10.0);
        for _ in 0..10 {
            b.earn();
        }
        b
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_primary_is_hedged_and_cancelled() {
        let (p, h) = flags();
        let t0 = Instant::now();
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let (v, w) = race(
            attempt(100, "primary", p.clone()),
            move || {
                s.store(true, Ordering::SeqCst);
                attempt(10, "hedge", h.clone())
            },
            Some(Duration::from_millis(20)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("hedge"), Winner::Hedge));
        // 20 ms timeout + 10 ms hedge, to the millisecond: the clock is paused.
        assert_eq!(t0.elapsed(), Duration::from_millis(30));
        assert!(started.load(Ordering::SeqCst));
        assert!(p.load(Ordering::SeqCst), "the primary was cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_primary_is_not_hedged() {
        let (p, h) = flags();
        let t0 = Instant::now();
        let (v, w) = race(
            attempt(15, "primary", p.clone()),
            || -> std::pin::Pin<Box<dyn Future<Output = Answer>>> { panic!("no hedge expected") },
            Some(Duration::from_millis(20)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("primary"), Winner::Primary));
        assert_eq!(t0.elapsed(), Duration::from_millis(15));
        assert!(!p.load(Ordering::SeqCst) && !h.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_that_still_wins_cancels_the_hedge() {
        let (p, h) = flags();
        let t0 = Instant::now();
        let hc = h.clone();
        let (v, w) = race(
            attempt(50, "primary", p.clone()),
            move || attempt(100, "hedge", hc),
            Some(Duration::from_millis(20)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("primary"), Winner::PrimaryAfterHedge));
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
        assert!(h.load(Ordering::SeqCst), "the hedge was cancelled");
        assert!(!p.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_no_hedge() {
        let (p, _) = flags();
        let empty = Budget::new(0.0, 1.0);
        let t0 = Instant::now();
        let (v, w) = race(
            attempt(100, "primary", p),
            || -> std::pin::Pin<Box<dyn Future<Output = Answer>>> { panic!("no budget") },
            Some(Duration::from_millis(20)),
            &empty,
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("primary"), Winner::Primary));
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reissue_that_fails_fast_does_not_cancel_a_healthy_primary() {
        let (p, h) = flags();
        let t0 = Instant::now();
        let hc = h.clone();
        let (v, w) = race(
            attempt(500, "primary", p.clone()),
            move || attempt(1, "err: refused", hc),
            Some(Duration::from_millis(100)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("primary"), Winner::PrimaryAfterHedge));
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        assert!(!p.load(Ordering::SeqCst), "the primary ran to its answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_that_fails_after_the_reissue_leaves_it_the_answer() {
        let (p, h) = flags();
        let t0 = Instant::now();
        let hc = h.clone();
        let (v, w) = race(
            attempt(150, "err: reset", p),
            move || attempt(200, "hedge", hc),
            Some(Duration::from_millis(100)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("hedge"), Winner::Hedge));
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        assert!(!h.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn when_both_fail_the_primary_error_comes_back_and_nothing_won() {
        let (p, h) = flags();
        let hc = h.clone();
        let (v, w) = race(
            attempt(300, "err: primary", p),
            move || attempt(1, "err: hedge", hc),
            Some(Duration::from_millis(100)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Err("err: primary"), Winner::PrimaryAfterHedge));
        let (p, h) = flags();
        let hc = h.clone();
        let (v, w) = race(
            attempt(150, "err: primary", p),
            move || attempt(300, "err: hedge", hc),
            Some(Duration::from_millis(100)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Err("err: primary"), Winner::PrimaryAfterHedge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_answer_is_held_while_the_other_attempt_runs() {
        // The reissue answers 503 at once: the healthy slow first attempt still answers.
        let (p, h) = flags();
        let t0 = Instant::now();
        let hc = h.clone();
        let (v, w) = race(
            attempt(300, "primary", p.clone()),
            move || attempt(1, "bad: 503", hc),
            Some(Duration::from_millis(50)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("primary"), Winner::PrimaryAfterHedge));
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        assert!(!p.load(Ordering::SeqCst), "the primary ran to its answer");
        // The first attempt answers badly after the reissue was sent: the reissue's good
        // answer wins.
        let (p, h) = flags();
        let hc = h.clone();
        let (v, w) = race(
            attempt(60, "bad: 503", p),
            move || attempt(100, "hedge", hc),
            Some(Duration::from_millis(50)),
            &funded(),
            good,
        )
        .await;
        assert_eq!((v, w), (Ok("hedge"), Winner::Hedge));
        assert!(!h.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn when_neither_answers_well_the_first_attempt_answers_and_nothing_won() {
        let run = |p_ms, p_v, h_ms, h_v| async move {
            let (p, h) = flags();
            race(
                attempt(p_ms, p_v, p),
                move || attempt(h_ms, h_v, h),
                Some(Duration::from_millis(50)),
                &funded(),
                good,
            )
            .await
        };
        // Both bad, in either order: the first attempt's answer.
        let first = (Ok("bad: a"), Winner::PrimaryAfterHedge);
        assert_eq!(run(300, "bad: a", 1, "bad: b").await, first);
        assert_eq!(run(60, "bad: a", 100, "bad: b").await, first);
        // A bad answer and a failure: the first attempt's answer.
        assert_eq!(run(300, "bad: a", 1, "err: b").await, first);
        // The first attempt failed, the reissue answered badly: an answer, but not a win.
        let fallback = (Ok("bad: b"), Winner::HedgeFallback);
        assert_eq!(run(300, "err: a", 1, "bad: b").await, fallback);
        assert_eq!(run(60, "err: a", 100, "bad: b").await, fallback);
        // Before the timeout, a bad answer is the answer: nothing else is running.
        assert_eq!(
            run(10, "bad: a", 1, "b").await,
            (Ok("bad: a"), Winner::Primary)
        );
    }

    #[test]
    fn the_budget_caps_reissues() {
        let b = Budget::new(0.05, 2.0);
        let mut spent = 0;
        for _ in 0..1000 {
            b.earn();
            if b.try_spend() {
                spent += 1;
            }
        }
        assert!(spent <= 50 + 2, "{spent}");
        assert!(spent >= 49, "{spent}");
        // Tokens do not pile up beyond the burst.
        let idle = Budget::new(0.5, 2.0);
        for _ in 0..100 {
            idle.earn();
        }
        assert!(idle.try_spend() && idle.try_spend() && !idle.try_spend());
    }

    #[test]
    fn tables() {
        let t = HedgeTable::parse("budget: 0.05\nroutes:\n  s20: { timeout_ms: 85 }\n  s40: {}\n")
            .expect("valid");
        assert_eq!(t.timeout("s20", 0.99), Some(Duration::from_millis(85)));
        assert_eq!(t.timeout("s40", 0.0), None);
        assert_eq!(t.timeout("nope", 0.0), None);
        // A mixed policy: 40% after 120 ms, the rest after 300 ms; or the rest never.
        let t = HedgeTable::parse(
            "budget: 0.01\nroutes:\n  a: { timeout_ms: 120, probability: 0.4, alt_timeout_ms: 300 }\n  b: { timeout_ms: 50, probability: 0.25 }\n",
        )
        .expect("valid");
        let draws = |route: &str, ms: u64| {
            (0..1000)
                .filter(|i| t.timeout(route, *i as f64 / 1000.0) == Some(Duration::from_millis(ms)))
                .count()
        };
        assert_eq!((draws("a", 120), draws("a", 300)), (400, 600));
        assert_eq!(draws("b", 50), 250);
        assert!(HedgeTable::parse(
            "budget: 0.1\nroutes:\n  a: { timeout_ms: 5, probability: 2 }\n"
        )
        .is_err());
        assert!(HedgeTable::parse("budget: 2\nroutes: {}\n").is_err());
        assert!(HedgeTable::parse("budget: 0.1\nroutes:\n  a: { timeout_ms: -1 }\n").is_err());
        assert!(HedgeTable::parse("budget: 0.1\nroutes: {}\nextra: 1\n").is_err());
    }
}
