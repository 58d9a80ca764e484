//! The rollout guard: compares treatment with control over the last `window` of one route, as
//! each proxy sees them, and trips when treatment is significantly worse; a trip sends every
//! user back to control (the default strategy: the fallback known to work) until the config
//! changes.
//!
//! Each request's end adds to a ring of time buckets (atomics: no lock on the request path);
//! once a second, the first request to end evaluates two one-sided tests on the window:
//!
//! - errors: is treatment's error ratio above control's plus `max_error_increase`? A z-test on
//!   the difference of proportions (Agresti-Caffo: one error and one success added to each
//!   group, so that few or no errors still give a variance);
//! - latency: are more than 1% of treatment's requests slower than `max_p99_ratio` times
//!   control's p99? A binomial z-test on the count above that line (control's p99 and the count
//!   read off histograms of quarter powers of two, interpolated within a bucket).
//!
//! Each test at each evaluation uses the critical value of `false_alarm_rate / (2 x evaluations
//! per window)`, so that the chance of a false trip in any window is at most `false_alarm_rate`
//! (Bonferroni over both tests and every evaluation): a
//! 1% step with a few hundred requests does not trip on noise, a real regression trips within
//! seconds of the evidence (about 600 treatment requests for 5 points more errors over 1%).

use crate::filter::Group;
use crate::outcome::{ErrorClasses, RequestEnd, DEFAULT_ERROR_STATUSES};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// `guard:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The stretch compared: the last `window` of the route's requests.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Requests each group needs in the window before anything is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How far treatment's error ratio may exceed control's (0.005: half a point).
    #[serde(default = "default_max_error_increase")]
    pub max_error_increase: f64,
    /// Treatment's p99 request time at most this many times control's.
    #[serde(default = "default_max_p99_ratio")]
    pub max_p99_ratio: f64,
    /// The gRPC statuses that count as errors, beside every 5xx.
    #[serde(default = "default_error_statuses")]
    pub error_statuses: Vec<String>,
    /// The chance of a false trip per window, with equal groups.
    #[serde(default = "default_false_alarm_rate")]
    pub false_alarm_rate: f64,
    /// A token: a new one clears a trip (so does a ramp's new `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_min_requests() -> u64 {
    500
}
fn default_max_error_increase() -> f64 {
    0.005
}
fn default_max_p99_ratio() -> f64 {
    1.25
}
fn default_error_statuses() -> Vec<String> {
    DEFAULT_ERROR_STATUSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_false_alarm_rate() -> f64 {
    0.001
}

/// A problem in `guard`: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct GuardError {
    pub field: String,
    pub problem: String,
}

/// Time buckets in a window: the window slides by a thirtieth.
const BUCKETS: usize = 30;
/// Latency histogram buckets: quarter powers of two from 1 ms (about 19% wide) to 65 s.
const LATENCY_BUCKETS: usize = 66;
/// How often the guard evaluates.
pub const EVALUATE_EVERY_MS: u64 = 1000;
/// The share of treatment requests allowed above `max_p99_ratio` times control's p99.
const TAIL: f64 = 0.01;

/// The guard's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    pub window_ms: u64,
    bucket_ms: u64,
    pub min_requests: u64,
    pub max_error_increase: f64,
    pub max_p99_ratio: f64,
    errors: ErrorClasses,
    /// The one-sided z each evaluation trips beyond.
    pub critical: f64,
}

impl GuardConfig {
    pub fn compile(&self) -> Result<GuardSettings, GuardError> {
        let e = |field: &str, problem: &str| GuardError {
            field: field.into(),
            problem: problem.into(),
        };
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if !(BUCKETS as u64 * 100..=86_400_000).contains(&window_ms) {
            return Err(e("window", "must be 3s to 1 day"));
        }
        if self.min_requests == 0 {
            return Err(e("min_requests", "must be at least 1"));
        }
        if !(self.max_error_increase.is_finite() && (0.0..1.0).contains(&self.max_error_increase)) {
            return Err(e("max_error_increase", "must be a share from 0 up to 1"));
        }
        // (Control's p99 is itself an estimate: a line at it would trip on its noise.)
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.1) {
            return Err(e("max_p99_ratio", "must be a number >= 1.1"));
        }
        if !(self.false_alarm_rate > 0.0 && self.false_alarm_rate < 0.5) {
            return Err(e(
                "false_alarm_rate",
                "must be a probability above 0 and below 0.5",
            ));
        }
        let errors =
            ErrorClasses::new(self.error_statuses.iter().map(String::as_str)).map_err(|n| {
                GuardError {
                    field: "error_statuses".into(),
                    problem: format!(
                        "`{n}` is not a gRPC status name (UNAVAILABLE, DEADLINE_EXCEEDED, ...)"
                    ),
                }
            })?;
        // Two tests at each evaluation.
        let evaluations = 2.0 * (window_ms / EVALUATE_EVERY_MS).max(1) as f64;
        Ok(GuardSettings {
            window_ms,
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            min_requests: self.min_requests,
            max_error_increase: self.max_error_increase,
            max_p99_ratio: self.max_p99_ratio,
            errors,
            critical: normal_quantile(1.0 - self.false_alarm_rate / evaluations),
        })
    }
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The latency bucket of `seconds`: quarter powers of two above 1 ms.
fn latency_bucket(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= 0.001 {
        return 0;
    }
    let i = (4.0 * (seconds / 0.001).log2()).floor() as usize + 1;
    i.min(LATENCY_BUCKETS - 1)
}

/// The lower edge of latency bucket `i`, in seconds.
fn bucket_low(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        0.001 * 2f64.powf((i - 1) as f64 / 4.0)
    }
}

/// The upper edge of latency bucket `i`, in seconds.
fn bucket_high(i: usize) -> f64 {
    0.001 * 2f64.powf(i as f64 / 4.0)
}

struct GroupCounts {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for GroupCounts {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

#[derive(Default)]
struct Bucket {
    /// Which stretch of time the counts are of (`now / bucket_ms`).
    epoch: AtomicU64,
    groups: [GroupCounts; 2],
}

impl Bucket {
    fn clear(&self) {
        for g in &self.groups {
            g.requests.store(0, Relaxed);
            g.errors.store(0, Relaxed);
            for l in &g.latency {
                l.store(0, Relaxed);
            }
        }
    }
}

/// One group's figures over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// The p99 request time (the upper edge of its histogram bucket), once there are requests.
    pub p99_ms: Option<f64>,
}

/// Why a guard tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Errors,
    P99,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::Errors, Reason::P99];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Errors => "errors",
            Reason::P99 => "p99",
        }
    }
}

/// The last evaluation: what `/rollout` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub treatment: Figures,
    pub control: Figures,
    /// The tests' statistics (z), when both groups had `min_requests`.
    pub errors_z: Option<f64>,
    pub p99_z: Option<f64>,
    /// The z either trips beyond.
    pub critical: f64,
    /// When it tripped, and why.
    pub tripped: Option<Reason>,
    pub tripped_at_ms: Option<u64>,
}

/// A route's guard: its window's counts and whether it tripped. Shared across config reloads
/// that keep its identity (see [`crate::rollout::RolloutFilter`]).
pub struct GuardState {
    buckets: Vec<Bucket>,
    next_evaluation_ms: AtomicU64,
    /// 0: watching; else 1 + the [`Reason`]'s index.
    tripped: AtomicU8,
    last: Mutex<Verdict>,
}

impl Default for GuardState {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            next_evaluation_ms: AtomicU64::new(0),
            tripped: AtomicU8::new(0),
            last: Mutex::new(Verdict::default()),
        }
    }
}

impl GuardState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A fresh window that keeps this one's trip (and the verdict that gave it): for a reload
    /// that changes the window, whose old counts are of other stretches of time.
    pub fn with_trip_only(&self) -> Arc<Self> {
        let fresh = Self::default();
        fresh.tripped.store(self.tripped.load(Relaxed), Relaxed);
        if self.tripped().is_some() {
            let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
            *fresh.last.lock().unwrap_or_else(PoisonError::into_inner) = last;
        }
        Arc::new(fresh)
    }

    /// Why it tripped, if it did.
    #[inline]
    pub fn tripped(&self) -> Option<Reason> {
        match self.tripped.load(Relaxed) {
            0 => None,
            n => Reason::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// A request of `group` ended at `now_ms`. True when an evaluation is due: the caller then
    /// calls [`GuardState::evaluate`].
    pub fn record(&self, s: &GuardSettings, group: Group, end: &RequestEnd, now_ms: u64) -> bool {
        let epoch = now_ms / s.bucket_ms;
        if let Some(b) = self.buckets.get((epoch % BUCKETS as u64) as usize) {
            if b.epoch.load(Relaxed) != epoch && b.epoch.swap(epoch, Relaxed) != epoch {
                b.clear();
            }
            if let Some(g) = b.groups.get(group.index()) {
                g.requests.fetch_add(1, Relaxed);
                if s.errors.is_error(end.class()) || end.upstream_failed {
                    g.errors.fetch_add(1, Relaxed);
                }
                if let Some(l) = g.latency.get(latency_bucket(end.seconds)) {
                    l.fetch_add(1, Relaxed);
                }
            }
        }
        now_ms >= self.next_evaluation_ms.load(Relaxed)
    }

    /// Sum the window ending at `now_ms`: per group, requests, errors and the latency histogram.
    fn window(&self, s: &GuardSettings, now_ms: u64) -> [(u64, u64, [u64; LATENCY_BUCKETS]); 2] {
        let now_epoch = now_ms / s.bucket_ms;
        let mut out = [(0, 0, [0u64; LATENCY_BUCKETS]); 2];
        for b in &self.buckets {
            let e = b.epoch.load(Relaxed);
            if e > now_epoch || now_epoch - e >= BUCKETS as u64 {
                continue;
            }
            for (g, o) in b.groups.iter().zip(out.iter_mut()) {
                o.0 += g.requests.load(Relaxed);
                o.1 += g.errors.load(Relaxed);
                for (l, ol) in g.latency.iter().zip(o.2.iter_mut()) {
                    *ol += l.load(Relaxed);
                }
            }
        }
        out
    }

    /// Evaluate the window at `now_ms` (if no other request did this second). Returns the
    /// verdict when this evaluation tripped the guard.
    pub fn evaluate(&self, s: &GuardSettings, now_ms: u64) -> Option<Verdict> {
        let due = self.next_evaluation_ms.load(Relaxed);
        if now_ms < due
            || self
                .next_evaluation_ms
                .compare_exchange(due, now_ms + EVALUATE_EVERY_MS, Relaxed, Relaxed)
                .is_err()
        {
            return None;
        }
        let [t, c] = self.window(s, now_ms);
        let figures = |(n, e, hist): &(u64, u64, [u64; LATENCY_BUCKETS])| Figures {
            requests: *n,
            errors: *e,
            p99_ms: p99(hist, *n).map(|s| s * 1000.0),
        };
        let mut v = Verdict {
            treatment: figures(&t),
            control: figures(&c),
            critical: s.critical,
            ..Verdict::default()
        };
        if t.0 >= s.min_requests && c.0 >= s.min_requests {
            v.errors_z = Some(errors_z(t.1, t.0, c.1, c.0, s.max_error_increase));
            v.p99_z = p99(&c.2, c.0).map(|p| tail_z(above(&t.2, p * s.max_p99_ratio), t.0));
        }
        let reason = match (v.errors_z, v.p99_z) {
            (Some(z), _) if z > s.critical => Some(Reason::Errors),
            (_, Some(z)) if z > s.critical => Some(Reason::P99),
            _ => None,
        };
        let mut tripped_now = false;
        if let Some(r) = reason {
            let code = Reason::ALL
                .iter()
                .position(|x| *x == r)
                .map_or(1, |i| i as u8 + 1);
            tripped_now = self
                .tripped
                .compare_exchange(0, code, Relaxed, Relaxed)
                .is_ok();
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let (was, at) = (last.tripped, last.tripped_at_ms);
        v.tripped = self.tripped();
        v.tripped_at_ms = if tripped_now {
            Some(now_ms)
        } else {
            at.filter(|_| was.is_some())
        };
        *last = v;
        tripped_now.then_some(v)
    }

    /// The last evaluation.
    pub fn verdict(&self) -> Verdict {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A point `f` (0 to 1) of the way through latency bucket `i`, on a log scale.
fn within(i: usize, f: f64) -> f64 {
    let (lo, hi) = (bucket_low(i).max(0.0005), bucket_high(i));
    lo * (hi / lo).powf(f)
}

/// The 99th percentile of `n` requests, in seconds, interpolated within its bucket.
fn p99(hist: &[u64; LATENCY_BUCKETS], n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let want = n as f64 * 0.99;
    let mut seen = 0.0;
    for (i, &c) in hist.iter().enumerate() {
        let next = seen + c as f64;
        if next >= want && c > 0 {
            return Some(within(i, (want - seen) / c as f64));
        }
        seen = next;
    }
    None
}

/// How many of the requests in `hist` took longer than `line` seconds: whole buckets above it,
/// and the share of the bucket it falls in (on a log scale).
fn above(hist: &[u64; LATENCY_BUCKETS], line: f64) -> f64 {
    hist.iter()
        .enumerate()
        .map(|(i, &c)| {
            let (lo, hi) = (bucket_low(i).max(0.0005), bucket_high(i));
            let share = if lo >= line {
                1.0
            } else if hi <= line {
                0.0
            } else {
                (hi / line).ln() / (hi / lo).ln()
            };
            share * c as f64
        })
        .sum()
}

/// The z of "treatment's error ratio exceeds control's by more than `margin`" (Agresti-Caffo).
pub fn errors_z(errors_t: u64, n_t: u64, errors_c: u64, n_c: u64, margin: f64) -> f64 {
    let adjusted = |e: u64, n: u64| ((e as f64 + 1.0) / (n as f64 + 2.0), n as f64 + 2.0);
    let (pt, nt) = adjusted(errors_t, n_t);
    let (pc, nc) = adjusted(errors_c, n_c);
    let se = (pt * (1.0 - pt) / nt + pc * (1.0 - pc) / nc).sqrt();
    (pt - pc - margin) / se
}

/// The z of "more than 1% of `n` requests are above the line", from the `above` that are.
pub fn tail_z(above: f64, n: u64) -> f64 {
    let n = n as f64;
    (above - TAIL * n) / (TAIL * (1.0 - TAIL) * n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn settings(yaml: &str) -> GuardSettings {
        serde_norway::from_str::<GuardConfig>(yaml)
            .expect("parses")
            .compile()
            .expect("valid")
    }

    fn end(error: bool, seconds: f64) -> RequestEnd {
        RequestEnd {
            status: if error { 503 } else { 200 },
            seconds,
            ..RequestEnd::default()
        }
    }

    #[test]
    fn the_quantile_is_the_normal_one() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(1.0 - 1e-6) - 4.753_424).abs() < 1e-4);
    }

    #[test]
    fn the_section_is_checked() {
        let bad = |yaml: &str, field: &str| {
            let e = serde_norway::from_str::<GuardConfig>(yaml)
                .expect("parses")
                .compile()
                .expect_err(yaml);
            assert_eq!(e.field, field, "{yaml}: {e}");
        };
        bad("window: 1s", "window");
        bad("min_requests: 0", "min_requests");
        bad("max_error_increase: 1.5", "max_error_increase");
        bad("max_p99_ratio: 0.9", "max_p99_ratio");
        bad("max_p99_ratio: 1.05", "max_p99_ratio");
        bad("error_statuses: [UNAVAILBLE]", "error_statuses");
        bad("false_alarm_rate: 0", "false_alarm_rate");
        let s = settings("{}");
        assert_eq!((s.window_ms, s.min_requests), (300_000, 500));
        // 0.1% over 2 tests at 300 evaluations a window.
        assert!((s.critical - normal_quantile(1.0 - 0.001 / 600.0)).abs() < 1e-12);
    }

    /// Requests of both groups, one every `every_ms`, treatment a `share` of them, each an
    /// error with its group's chance and taking its group's time; until `n_t` treatment
    /// requests or a trip. Returns the treatment requests seen when it tripped.
    #[allow(clippy::too_many_arguments)]
    fn run(
        s: &GuardSettings,
        rng: &mut rand::rngs::StdRng,
        share: f64,
        (err_t, err_c): (f64, f64),
        (slow_t, slow_c): (f64, f64),
        n_t: u64,
    ) -> Option<u64> {
        let g = GuardState::default();
        let mut now = 1_000_000;
        let mut treated = 0;
        while treated < n_t {
            now += 10;
            let treatment = rng.random::<f64>() < share;
            let (group, p, slow) = if treatment {
                treated += 1;
                (Group::Treatment, err_t, slow_t)
            } else {
                (Group::Control, err_c, slow_c)
            };
            // Latency: 20 ms, times `slow`, with a lognormal-ish spread.
            let secs = 0.02 * slow * (1.0 + rng.random::<f64>()).powi(3);
            if g.record(s, group, &end(rng.random::<f64>() < p, secs), now) {
                g.evaluate(s, now);
            }
            if g.tripped().is_some() {
                return Some(treated);
            }
        }
        None
    }

    #[test]
    fn five_points_more_errors_trip_within_2000_treatment_requests_at_a_5_percent_step() {
        let s = settings("{ window: 5m, min_requests: 500 }");
        for seed in 0..10 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let at = run(&s, &mut rng, 0.05, (0.06, 0.01), (1.0, 1.0), 2000);
            assert!(at.is_some_and(|n| n <= 2000), "seed {seed}: {at:?}");
        }
    }

    #[test]
    fn equal_groups_never_trip() {
        let s = settings("{ window: 5m, min_requests: 500 }");
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // 50,000 requests, a quarter in treatment, 1% errors each.
            let at = run(&s, &mut rng, 0.25, (0.01, 0.01), (1.0, 1.0), 12_500);
            assert_eq!(at, None, "seed {seed}");
        }
    }

    #[test]
    fn a_slower_treatment_trips_on_p99() {
        let s = settings("{ window: 5m, min_requests: 500, max_p99_ratio: 1.25 }");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let at = run(&s, &mut rng, 0.2, (0.0, 0.0), (2.0, 1.0), 20_000);
        assert!(at.is_some(), "{at:?}");
    }

    #[test]
    fn a_trip_holds_and_is_reported() {
        let s = settings("{ window: 30s, min_requests: 10 }");
        let g = GuardState::default();
        let mut now = 5_000_000;
        for i in 0..400 {
            now += 20;
            let (group, err) = if i % 2 == 0 {
                (Group::Treatment, true)
            } else {
                (Group::Control, false)
            };
            if g.record(&s, group, &end(err, 0.01), now) {
                g.evaluate(&s, now);
            }
        }
        assert_eq!(g.tripped(), Some(Reason::Errors));
        let v = g.verdict();
        assert!(v.tripped_at_ms.is_some() && v.errors_z.is_some_and(|z| z > v.critical));
        assert_eq!(
            (v.treatment.errors, v.control.errors),
            (v.treatment.requests, 0)
        );
        // Good requests after it do not clear it.
        for _ in 0..400 {
            now += 20;
            if g.record(&s, Group::Control, &end(false, 0.01), now) {
                g.evaluate(&s, now);
            }
        }
        assert_eq!(g.tripped(), Some(Reason::Errors));
        // A reload with another window: the trip and its figures stay, the counts do not.
        let s2 = settings("{ window: 60s, min_requests: 10 }");
        let carried = g.with_trip_only();
        assert_eq!(carried.tripped(), Some(Reason::Errors));
        assert_eq!(carried.verdict(), g.verdict());
        assert_eq!(carried.window(&s2, now)[0].0, 0);
        assert!(g.window(&s, now)[1].0 > 0);
        let watching = GuardState::default();
        watching.record(&s, Group::Control, &end(false, 0.01), now);
        assert_eq!(watching.with_trip_only().tripped(), None);
    }
}
