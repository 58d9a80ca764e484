//! The rollout split: a stable hash of the user id puts each user in treatment (hydrus decides)
//! or control (the default strategy). Raising `percent` only moves control users into treatment,
//! so a gradual rollout never flips a treated user back and forth.

use crate::filter::{
    register, CompileCtx, Filter, FilterKind, Group, Input, RequestState, USER_ID,
};
use prometheus::{GaugeVec, IntCounter, Opts};
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

impl Rollout {
    /// `percent` of users (0-100, fractions allowed) in treatment; `salt` reshuffles who.
    pub fn new(percent: f64, salt: &str) -> Result<Self, PercentError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(PercentError(percent));
        }
        Ok(Self {
            threshold: (percent / 100.0 * BUCKETS as f64).round() as u64,
            seed: xxh3_64(salt.as_bytes()),
        })
    }

    /// The user's bucket in `0..BUCKETS`: the same for the same user and salt on every proxy.
    pub fn bucket(&self, user_id: &[u8]) -> u64 {
        xxh3_64_with_seed(user_id, self.seed) % BUCKETS
    }

    /// The group of a request; no user id means control.
    pub fn assign(&self, user_id: Option<&[u8]>) -> Group {
        match user_id {
            Some(id) if !id.is_empty() && self.bucket(id) < self.threshold => Group::Treatment,
            _ => Group::Control,
        }
    }
}

/// `- rollout:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Share of users in treatment, 0-100; fractions allowed.
    pub percent: f64,
    /// Changing the salt reshuffles which users are in treatment.
    #[serde(default = "default_salt")]
    pub salt: String,
}

fn default_salt() -> String {
    "hydrus".into()
}

/// The rollout filter: puts each request's user in treatment or control.
pub struct RolloutFilter {
    pub rollout: Rollout,
    pub percent: f64,
    missing_user_id: IntCounter,
    /// `hydrus_rollout_percent` and this route's label: resolved when the config runs (at each
    /// scrape), so that a refused config shows nothing.
    percent_family: GaugeVec,
    route: String,
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
        state.group = self.rollout.assign(user);
    }

    fn refresh_gauges(&self, _now_ms: u64) {
        self.percent_family
            .with_label_values(&[self.route.as_str()])
            .set(self.percent);
    }

    fn retire(&self) {
        let _ = self
            .percent_family
            .remove_label_values(&[self.route.as_str()]);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `hydrus_rollout_percent{route}`.
pub struct RolloutMetrics {
    percent: GaugeVec,
}

pub struct RolloutKind;

/// The `rollout` kind.
pub static KIND: RolloutKind = RolloutKind;

impl FilterKind for RolloutKind {
    fn name(&self) -> &'static str {
        "rollout"
    }

    fn metrics(&self, r: &prometheus::Registry) -> Arc<dyn Any + Send + Sync> {
        #[allow(clippy::expect_used)] // a constant, valid definition
        let percent = GaugeVec::new(
            Opts::new(
                "hydrus_rollout_percent",
                "Configured share of users in treatment, by route.",
            ),
            &["route"],
        )
        .expect("metric");
        Arc::new(RolloutMetrics {
            percent: register(r, percent),
        })
    }

    fn running_section(&self, section: &serde_yaml::Value) -> Option<serde_json::Value> {
        crate::filter::as_running::<RolloutConfig>(section)
    }

    fn compile(
        &self,
        section: &serde_yaml::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let c: RolloutConfig = cx.parse(section)?;
        if cx.before.contains(&"hydrus") {
            cx.error("", "rollout must come before hydrus in the chain");
        }
        let rollout = match Rollout::new(c.percent, &c.salt) {
            Ok(r) => r,
            Err(e) => {
                cx.error("percent", e.to_string());
                return None;
            }
        };
        let m = cx.metrics.downcast_ref::<RolloutMetrics>()?;
        Some(Arc::new(RolloutFilter {
            rollout,
            percent: c.percent,
            // (A request without a user id goes to control.)
            missing_user_id: cx.fallback(Group::Control, "missing_user_id"),
            percent_family: m.percent.clone(),
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
