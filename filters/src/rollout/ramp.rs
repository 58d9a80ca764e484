//! A ramp on a schedule: the treatment share at time `t` is a function of the config and the
//! clock alone, so every proxy of a fleet is on the same step at the same instant without
//! talking to the others. Before `start` the share is 0; each step holds its share for its
//! `hold`; the last holds for good.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `ramp:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampConfig {
    /// When the first step begins: RFC 3339, UTC (`2026-12-08T10:00:00Z`).
    pub start: String,
    /// The shares, in order, each with how long it holds (the last: for good).
    pub steps: Vec<StepConfig>,
}

/// One step of a ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub percent: f64,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hold: Option<Duration>,
}

/// A problem in a ramp: the field (below `ramp`) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RampError {
    pub field: String,
    pub problem: String,
}

/// One step, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub percent: f64,
    /// When it begins and ends (Unix ms; `None`: never).
    pub from_ms: u64,
    pub until_ms: Option<u64>,
}

/// A ramp, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    pub start_ms: u64,
    pub steps: Vec<Step>,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> RampError {
    RampError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl RampConfig {
    pub fn compile(&self) -> Result<Ramp, RampError> {
        let start = humantime::parse_rfc3339(&self.start).map_err(|e| {
            err(
                "start",
                format!(
                    "`{}`: {e} (write RFC 3339 in UTC, e.g. 2026-12-08T10:00:00Z)",
                    self.start
                ),
            )
        })?;
        let start_ms =
            crate::clock::unix_ms_of(start).ok_or_else(|| err("start", "must be after 1970"))?;
        if self.steps.is_empty() {
            return Err(err("steps", "at least one step is needed"));
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        let mut from_ms = start_ms;
        let mut last_percent = 0.0;
        for (i, s) in self.steps.iter().enumerate() {
            let field = |f: &str| format!("steps[{i}].{f}");
            if !(0.0..=100.0).contains(&s.percent) {
                return Err(err(field("percent"), "must be a number from 0 to 100"));
            }
            if s.percent < last_percent {
                return Err(err(
                    field("percent"),
                    format!(
                        "{} is below the step before ({last_percent}): a ramp only moves control users into treatment",
                        s.percent
                    ),
                ));
            }
            last_percent = s.percent;
            let last = i + 1 == self.steps.len();
            let until_ms = match (s.hold, last) {
                (Some(_), true) => {
                    return Err(err(field("hold"), "the last step holds for good: no hold"))
                }
                (None, false) => {
                    return Err(err(field("hold"), "every step but the last needs a hold"))
                }
                (Some(h), false) if h.is_zero() => {
                    return Err(err(field("hold"), "must be longer than 0"))
                }
                (Some(h), false) => {
                    Some(from_ms.saturating_add(h.as_millis().min(u128::from(u64::MAX)) as u64))
                }
                (None, true) => None,
            };
            steps.push(Step {
                percent: s.percent,
                from_ms,
                until_ms,
            });
            from_ms = until_ms.unwrap_or(from_ms);
        }
        Ok(Ramp { start_ms, steps })
    }
}

impl Ramp {
    /// The step in force at `now_ms` (`None` before the start).
    pub fn step_at(&self, now_ms: u64) -> Option<usize> {
        if now_ms < self.start_ms {
            return None;
        }
        self.steps
            .iter()
            .position(|s| s.until_ms.is_none_or(|u| now_ms < u))
    }

    /// The share in force at `now_ms`, in percent (0 before the start).
    pub fn percent_at(&self, now_ms: u64) -> f64 {
        self.step_at(now_ms)
            .and_then(|i| self.steps.get(i))
            .map_or(0.0, |s| s.percent)
    }

    /// When the share next changes after `now_ms` (`None`: never).
    pub fn next_change_ms(&self, now_ms: u64) -> Option<u64> {
        match self.step_at(now_ms) {
            None => Some(self.start_ms),
            Some(i) => self.steps.get(i).and_then(|s| s.until_ms),
        }
    }
}

/// Unix ms as RFC 3339 UTC, to the second.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(yaml: &str) -> Result<Ramp, RampError> {
        serde_norway::from_str::<RampConfig>(yaml)
            .expect("parses")
            .compile()
    }

    const START: u64 = 1_796_724_000_000; // 2026-12-08T10:00:00Z

    #[test]
    fn the_share_follows_the_schedule() {
        let r = ramp(
            "start: 2026-12-08T10:00:00Z
steps:
  - { percent: 1, hold: 30m }
  - { percent: 5, hold: 1h }
  - { percent: 25, hold: 2h }
  - { percent: 100 }",
        )
        .expect("valid");
        assert_eq!(r.start_ms, START);
        let min = 60_000;
        assert_eq!(r.percent_at(START - 1), 0.0);
        assert_eq!(r.next_change_ms(START - 1), Some(START));
        assert_eq!(r.percent_at(START), 1.0);
        assert_eq!(r.percent_at(START + 30 * min - 1), 1.0);
        assert_eq!(r.percent_at(START + 30 * min), 5.0);
        assert_eq!(r.step_at(START + 30 * min), Some(1));
        assert_eq!(r.next_change_ms(START + 30 * min), Some(START + 90 * min));
        assert_eq!(r.percent_at(START + 90 * min), 25.0);
        assert_eq!(r.percent_at(START + 210 * min), 100.0);
        assert_eq!(r.next_change_ms(START + 210 * min), None);
        assert_eq!(rfc3339(START + 30 * min), "2026-12-08T10:30:00Z");
    }

    #[test]
    fn a_ramp_is_checked() {
        let bad = |yaml: &str, field: &str| {
            let e = ramp(yaml).expect_err(yaml);
            assert_eq!(e.field, field, "{yaml}: {e}");
        };
        bad("start: tomorrow\nsteps: [{ percent: 1 }]", "start");
        bad("start: 2026-12-08T10:00:00Z\nsteps: []", "steps");
        bad(
            "start: 2026-12-08T10:00:00Z\nsteps: [{ percent: 5, hold: 1h }, { percent: 1 }]",
            "steps[1].percent",
        );
        bad(
            "start: 2026-12-08T10:00:00Z\nsteps: [{ percent: 5 }, { percent: 10 }]",
            "steps[0].hold",
        );
        bad(
            "start: 2026-12-08T10:00:00Z\nsteps: [{ percent: 5, hold: 1h }, { percent: 10, hold: 1h }]",
            "steps[1].hold",
        );
        bad(
            "start: 2026-12-08T10:00:00Z\nsteps: [{ percent: 101 }]",
            "steps[0].percent",
        );
    }
}
