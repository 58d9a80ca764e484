//! The rollout split: a stable hash of the user id puts each user in treatment (hydrus decides)
//! or control (the default strategy). Raising the share only moves control users into
//! treatment, so a gradual rollout never flips a treated user back and forth. The share is a
//! fixed `percent` or a [`ramp`] on a schedule; a [`guard`] compares the groups and, when
//! treatment is significantly worse, sends every user back to control until the config changes.

pub mod guard;
pub mod ramp;

use crate::filter::{
    register, CompileCtx, Filter, FilterKind, Group, Input, RequestState, USER_ID,
};
use crate::outcome::RequestEnd;
use arc_swap::ArcSwap;
use guard::{GuardConfig, GuardSettings, GuardState, Reason, Verdict};
use prometheus::{GaugeVec, IntCounter, Opts};
use ramp::{Ramp, RampConfig};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Buckets per 100%: percent has four decimal places of resolution.
pub const BUCKETS: u64 = 1_000_000;

/// Why a rollout setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("percent {0} must be a number from 0 to 100")]
pub struct PercentError(pub f64);

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    threshold: u64,
    seed: u64,
}

/// The bucket threshold of a share in percent.
fn threshold_of(percent: f64) -> u64 {
    (percent / 100.0 * BUCKETS as f64).round() as u64
}

impl Rollout {
    /// `percent` of users (0-100, fractions allowed) in treatment; `salt` reshuffles who.
    pub fn new(percent: f64, salt: &str) -> Result<Self, PercentError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(PercentError(percent));
        }
        Ok(Self {
            threshold: threshold_of(percent),
            seed: xxh3_64(salt.as_bytes()),
        })
    }

    /// The user's bucket in `0..BUCKETS`: the same for the same user and salt on every proxy.
    pub fn bucket(&self, user_id: &[u8]) -> u64 {
        xxh3_64_with_seed(user_id, self.seed) % BUCKETS
    }

    /// The group of a request; no user id means control.
    pub fn assign(&self, user_id: Option<&[u8]>) -> Group {
        self.assign_below(user_id, self.threshold)
    }

    /// The group of a request when the users of buckets below `threshold` are in treatment.
    fn assign_below(&self, user_id: Option<&[u8]>, threshold: u64) -> Group {
        match user_id {
            Some(id) if !id.is_empty() && self.bucket(id) < threshold => Group::Treatment,
            _ => Group::Control,
        }
    }
}

/// `- rollout:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Share of users in treatment, 0-100; fractions allowed. Or, instead, a `ramp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// The share on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampConfig>,
    /// Changing the salt reshuffles which users are in treatment.
    #[serde(default = "default_salt")]
    pub salt: String,
    /// Compare treatment with control, and roll back when treatment is worse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardConfig>,
}

fn default_salt() -> String {
    "hydrus".into()
}

/// The share over time: fixed, or on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Share {
    Fixed(f64),
    Ramp(Ramp),
}

impl Share {
    /// The share in percent at `now_ms`, and the ramp's step (none before its start, or fixed).
    pub fn at(&self, now_ms: u64) -> (f64, Option<usize>) {
        match self {
            Share::Fixed(p) => (*p, None),
            Share::Ramp(r) => (r.percent_at(now_ms), r.step_at(now_ms)),
        }
    }
}

/// A route's guard: its settings, its state (carried across reloads that keep its identity),
/// and what identifies it: the ramp's start and the reset token.
struct Guarded {
    settings: GuardSettings,
    /// (Swapped for the previous generation's when a reload keeps the identity.)
    state: ArcSwap<GuardState>,
    identity: (Option<u64>, Option<String>),
}

/// The rollout filter: puts each request's user in treatment or control.
pub struct RolloutFilter {
    pub rollout: Rollout,
    pub share: Share,
    guard: Option<Guarded>,
    missing_user_id: IntCounter,
    /// `hydrus_rollout_percent` and `hydrus_rollout_guard_tripped` with this route's label:
    /// resolved when the config runs (at each scrape), so that a refused config shows nothing.
    percent_family: GaugeVec,
    tripped_family: GaugeVec,
    route: String,
}

/// Where a route's rollout stands: what `/rollout` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    pub route: String,
    /// The share in force now (0 once the guard tripped).
    pub percent: f64,
    /// The ramp's step in force (none: no ramp, or before its start).
    pub step: Option<usize>,
    pub next_step_at: Option<String>,
    pub guard: Option<GuardStanding>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardStanding {
    pub state: &'static str,
    pub reason: Option<Reason>,
    pub tripped_at: Option<String>,
    pub treatment: guard::Figures,
    pub control: guard::Figures,
    pub statistic: Statistic,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Statistic {
    pub errors_z: Option<f64>,
    pub p99_z: Option<f64>,
    pub critical: f64,
}

impl RolloutFilter {
    /// The share in force at `now_ms`: the schedule's, or 0 once the guard tripped.
    pub fn percent_at(&self, now_ms: u64) -> f64 {
        if self.tripped().is_some() {
            return 0.0;
        }
        self.share.at(now_ms).0
    }

    /// The group of a user at `now_ms` (no user id: control). Counts nothing.
    pub fn group_for(&self, user: Option<&[u8]>, now_ms: u64) -> Group {
        let threshold = match (&self.share, self.tripped()) {
            (_, Some(_)) => 0,
            (Share::Fixed(_), None) => self.rollout.threshold,
            (Share::Ramp(r), None) => threshold_of(r.percent_at(now_ms)),
        };
        self.rollout.assign_below(user, threshold)
    }

    /// Why the guard tripped, if it did.
    pub fn tripped(&self) -> Option<Reason> {
        self.guard.as_ref().and_then(|g| g.state.load().tripped())
    }

    /// Where the rollout stands at `now_ms`.
    pub fn standing(&self, now_ms: u64) -> Standing {
        let step = self.share.at(now_ms).1;
        let next = match (&self.share, self.tripped()) {
            (Share::Ramp(r), None) => r.next_change_ms(now_ms),
            _ => None,
        };
        Standing {
            route: self.route.clone(),
            percent: self.percent_at(now_ms),
            step,
            next_step_at: next.map(ramp::rfc3339),
            guard: self.guard.as_ref().map(|g| {
                let state = g.state.load();
                let v: Verdict = state.verdict();
                let tripped = state.tripped();
                GuardStanding {
                    state: if tripped.is_some() {
                        "tripped"
                    } else {
                        "watching"
                    },
                    reason: tripped,
                    tripped_at: v.tripped_at_ms.map(ramp::rfc3339),
                    treatment: v.treatment,
                    control: v.control,
                    statistic: Statistic {
                        errors_z: v.errors_z,
                        p99_z: v.p99_z,
                        critical: v.critical,
                    },
                }
            }),
        }
    }

    /// The ramp's timetable, for `hydrus check`.
    pub fn timetable(&self) -> Option<String> {
        let Share::Ramp(r) = &self.share else {
            return None;
        };
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| match s.until_ms {
                Some(u) => format!(
                    "{}% from {} until {}",
                    s.percent,
                    ramp::rfc3339(s.from_ms),
                    ramp::rfc3339(u)
                ),
                None => format!("{}% from {} on", s.percent, ramp::rfc3339(s.from_ms)),
            })
            .collect();
        Some(format!(
            "route {}: ramp: 0% before {}; {}",
            self.route,
            ramp::rfc3339(r.start_ms),
            steps.join("; ")
        ))
    }

    /// Log a trip (once: only the evaluation that trips it returns it), with its figures.
    fn log_trip(&self, v: &Verdict) {
        let reason = v.tripped.map_or("?", Reason::as_str);
        ::log::warn!(
            "route {}: rollout guard tripped ({reason}): treatment {} requests, {} errors, p99 {:?} ms; control {} requests, {} errors, p99 {:?} ms; z errors {:?}, z p99 {:?} (critical {:.2}): every user is back on control until the config changes (a new ramp start, or guard.reset)",
            self.route,
            v.treatment.requests,
            v.treatment.errors,
            v.treatment.p99_ms,
            v.control.requests,
            v.control.errors,
            v.control.p99_ms,
            v.errors_z,
            v.p99_z,
            v.critical
        );
    }
}

/// The rollout filter of a chain, if it has one.
pub fn of(chain: &crate::route::Chain) -> Option<&RolloutFilter> {
    chain.find::<RolloutFilter>()
}

impl Filter for RolloutFilter {
    fn kind(&self) -> &'static str {
        "rollout"
    }

    fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        let user = input.id(USER_ID).filter(|u| !u.is_empty());
        if user.is_none() {
            self.missing_user_id.inc();
        }
        state.group = self.group_for(user, input.now_ms);
    }

    fn done(&self, state: &RequestState, end: &RequestEnd) {
        let Some(g) = &self.guard else {
            return;
        };
        let now = crate::clock::unix_ms();
        let guard = g.state.load();
        if guard.record(&g.settings, state.group, end, now) {
            if let Some(v) = guard.evaluate(&g.settings, now) {
                self.log_trip(&v);
            }
        }
    }

    /// A reload that keeps the guard's identity (the ramp's start and the reset token) keeps
    /// its state: its window and whether it tripped. Only a new start or token clears a trip.
    fn adopt(&self, old: &dyn Filter) {
        let (Some(old), Some(g)) = (old.as_any().downcast_ref::<RolloutFilter>(), &self.guard)
        else {
            return;
        };
        // (The same route's only: a reload adopts every old route for a route it renamed.)
        let same = old.route == self.route;
        if let Some(o) = old
            .guard
            .as_ref()
            .filter(|o| same && o.identity == g.identity)
        {
            let state = o.state.load_full();
            if o.settings.window_ms == g.settings.window_ms {
                g.state.store(state);
            } else {
                g.state.store(state.with_trip_only());
            }
        }
    }

    fn refresh_gauges(&self, now_ms: u64) {
        let route = [self.route.as_str()];
        self.percent_family
            .with_label_values(&route)
            .set(self.percent_at(now_ms));
        if self.guard.is_some() {
            let tripped = self.tripped();
            for r in Reason::ALL {
                self.tripped_family
                    .with_label_values(&[self.route.as_str(), r.as_str()])
                    .set(if tripped == Some(r) { 1.0 } else { 0.0 });
            }
        }
    }

    fn retire(&self) {
        let _ = self
            .percent_family
            .remove_label_values(&[self.route.as_str()]);
        for r in Reason::ALL {
            let _ = self
                .tripped_family
                .remove_label_values(&[self.route.as_str(), r.as_str()]);
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `hydrus_rollout_percent{route}`, `hydrus_rollout_guard_tripped{route, reason}`.
pub struct RolloutMetrics {
    percent: GaugeVec,
    tripped: GaugeVec,
}

pub struct RolloutKind;

/// The `rollout` kind.
pub static KIND: RolloutKind = RolloutKind;

impl FilterKind for RolloutKind {
    fn name(&self) -> &'static str {
        "rollout"
    }

    #[allow(clippy::expect_used)] // constant, valid definitions
    fn metrics(&self, r: &prometheus::Registry) -> Arc<dyn Any + Send + Sync> {
        let percent = GaugeVec::new(
            Opts::new(
                "hydrus_rollout_percent",
                "The share of users in treatment in force now, by route: the ramp's step, 0 once the guard tripped.",
            ),
            &["route"],
        )
        .expect("metric");
        let tripped = GaugeVec::new(
            Opts::new(
                "hydrus_rollout_guard_tripped",
                "1 when the route's rollout guard tripped, by reason (errors, p99): every user is back on control until the config changes.",
            ),
            &["route", "reason"],
        )
        .expect("metric");
        Arc::new(RolloutMetrics {
            percent: register(r, percent),
            tripped: register(r, tripped),
        })
    }

    fn running_section(&self, section: &serde_norway::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<RolloutConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let c: RolloutConfig = cx.parse(section)?;
        if cx.before.contains(&"hydrus") {
            cx.error("", "rollout must come before hydrus in the chain");
        }
        let share = match (c.percent, &c.ramp) {
            (Some(p), None) => match Rollout::new(p, &c.salt) {
                Ok(_) => Share::Fixed(p),
                Err(e) => {
                    cx.error("percent", e.to_string());
                    return None;
                }
            },
            (None, Some(r)) => match r.compile() {
                Ok(r) => Share::Ramp(r),
                Err(e) => {
                    cx.error(&format!("ramp.{}", e.field), e.problem);
                    return None;
                }
            },
            _ => {
                cx.error("", "give `percent` or a `ramp`, one of them");
                return None;
            }
        };
        let guard = match &c.guard {
            None => None,
            Some(g) => match g.compile() {
                Ok(settings) => Some(Guarded {
                    settings,
                    state: ArcSwap::new(GuardState::new()),
                    identity: (
                        match &share {
                            Share::Ramp(r) => Some(r.start_ms),
                            Share::Fixed(_) => None,
                        },
                        g.reset.clone(),
                    ),
                }),
                Err(e) => {
                    cx.error(&format!("guard.{}", e.field), e.problem);
                    return None;
                }
            },
        };
        let fixed = match &share {
            Share::Fixed(p) => *p,
            Share::Ramp(_) => 0.0,
        };
        let rollout = Rollout::new(fixed, &c.salt).ok()?;
        let m = cx.metrics.downcast_ref::<RolloutMetrics>()?;
        Some(Arc::new(RolloutFilter {
            rollout,
            share,
            guard,
            // (A request without a user id goes to control.)
            missing_user_id: cx.fallback(Group::Control, "missing_user_id"),
            percent_family: m.percent.clone(),
            tripped_family: m.tripped.clone(),
            route: cx.route.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn share_is_close_to_percent() {
        let r = Rollout::new(20.0, "hydrus").expect("valid");
        let n = 100_000;
        let treated = (0..n)
            .filter(|i| r.assign(Some(format!("user-{i}").as_bytes())) == Group::Treatment)
            .count();
        let share = treated as f64 / n as f64;
        assert!((share - 0.20).abs() < 0.01, "{share}");
    }

    #[test]
    fn edges() {
        assert!(Rollout::new(-1.0, "").is_err());
        assert!(Rollout::new(100.5, "").is_err());
        assert!(Rollout::new(f64::NAN, "").is_err());
        let all = Rollout::new(100.0, "s").expect("valid");
        let none = Rollout::new(0.0, "s").expect("valid");
        assert_eq!(all.assign(Some(b"u")), Group::Treatment);
        assert_eq!(none.assign(Some(b"u")), Group::Control);
        assert_eq!(all.assign(None), Group::Control);
        assert_eq!(all.assign(Some(b"")), Group::Control);
    }

    proptest! {
        /// Raising the percentage never moves a user out of treatment.
        #[test]
        fn monotone_in_percent(id in ".{1,40}", p in 0.0f64..100.0, dp in 0.0f64..50.0) {
            let lo = Rollout::new(p, "salt").expect("valid");
            let hi = Rollout::new((p + dp).min(100.0), "salt").expect("valid");
            if lo.assign(Some(id.as_bytes())) == Group::Treatment {
                prop_assert_eq!(hi.assign(Some(id.as_bytes())), Group::Treatment);
            }
        }
    }
}
