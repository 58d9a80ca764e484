//! `hydrus simulate --ramp`: the rollout guard on a seeded population. A ramp (1% for 5 min, 5%
//! for 10 min, 25% for 10 min, then 100%) at 100 requests a second over 20,000 users, with a
//! regression injected into treatment (`--error-increase` points more errors, or a p99
//! `--p99-increase` higher): when the guard trips, on which step, after how many treatment
//! requests, and how many users met the regression. Then runs without a regression over many
//! seeds (50,000 requests each, a quarter in treatment, 1% errors in both groups, equal times):
//! how often the guard trips on noise.

use hydrus_filters::outcome::RequestEnd;
use hydrus_filters::rollout::guard::{GuardConfig, GuardSettings, GuardState};
use hydrus_filters::rollout::ramp::RampConfig;
use hydrus_filters::{Group, Rollout};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeSet;

/// Requests a second, and between two.
const RATE: u64 = 100;
const USERS: u64 = 20_000;
/// Both groups' error ratio without a regression.
const BASE_ERRORS: f64 = 0.01;

/// What to inject, and how much traffic.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RampSetup {
    pub seed: u64,
    /// Treatment's errors exceed control's by this share.
    pub error_increase: f64,
    /// Treatment's request times are this much longer (0.3: 30%).
    pub p99_increase: f64,
    /// Runs without a regression, and requests in each.
    pub seeds: u64,
    pub requests: u64,
}

/// The run with a regression.
#[derive(Debug, Clone, Serialize)]
pub struct RegressionRun {
    /// Seconds after the ramp's start the guard tripped (none: it did not).
    pub tripped_after_s: Option<f64>,
    pub step: Option<usize>,
    pub percent: f64,
    pub reason: Option<&'static str>,
    /// Treatment requests before the trip.
    pub treatment_requests: u64,
    /// Distinct users whose requests met the regression.
    pub users_affected: usize,
    pub requests: u64,
}

/// The runs without a regression.
#[derive(Debug, Clone, Serialize)]
pub struct NoiseRuns {
    pub runs: u64,
    pub requests_each: u64,
    pub trips: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampResults {
    pub setup: RampSetup,
    pub regression: RegressionRun,
    pub noise: NoiseRuns,
}

/// The guard's defaults (5 min window, 500 requests per group, 0.5 points, 1.25x, 0.1% a
/// window).
#[allow(clippy::expect_used)] // the defaults are valid: checked by the filters' tests
fn settings() -> GuardSettings {
    serde_norway::from_str::<GuardConfig>("{}")
        .expect("parses")
        .compile()
        .expect("the defaults are valid")
}

/// One request's end: an error with chance `errors`, its time from a spread around 20 ms.
fn end(rng: &mut ChaCha8Rng, errors: f64, slower: f64) -> RequestEnd {
    let error = rng.random::<f64>() < errors;
    RequestEnd {
        status: if error { 503 } else { 200 },
        seconds: 0.02 * (1.0 + slower) * (1.0 + rng.random::<f64>()).powi(3),
        ..RequestEnd::default()
    }
}

/// The ramp with the regression.
#[allow(clippy::expect_used)] // a constant, valid ramp
fn regression(setup: &RampSetup) -> RegressionRun {
    let ramp = serde_norway::from_str::<RampConfig>(
        "start: 2026-12-08T10:00:00Z
steps:
  - { percent: 1, hold: 5m }
  - { percent: 5, hold: 10m }
  - { percent: 25, hold: 10m }
  - { percent: 100 }",
    )
    .expect("parses")
    .compile()
    .expect("valid");
    let s = settings();
    let g = GuardState::default();
    let mut rng = ChaCha8Rng::seed_from_u64(setup.seed);
    let mut affected = BTreeSet::new();
    let (mut treated, mut requests) = (0u64, 0u64);
    let end_ms = ramp.start_ms + 35 * 60_000;
    let mut now = ramp.start_ms;
    while now < end_ms && g.tripped().is_none() {
        now += 1000 / RATE;
        requests += 1;
        let user = format!("user-{}", rng.random_range(0..USERS));
        let rollout = Rollout::new(ramp.percent_at(now), "hydrus")
            .unwrap_or_else(|_| Rollout::new(0.0, "hydrus").expect("0% is valid"));
        let group = rollout.assign(Some(user.as_bytes()));
        let e = match group {
            Group::Treatment => {
                treated += 1;
                affected.insert(user);
                end(
                    &mut rng,
                    BASE_ERRORS + setup.error_increase,
                    setup.p99_increase,
                )
            }
            Group::Control => end(&mut rng, BASE_ERRORS, 0.0),
        };
        if g.record(&s, group, &e, now) {
            g.evaluate(&s, now);
        }
    }
    let tripped = g.tripped();
    RegressionRun {
        tripped_after_s: tripped.map(|_| (now - ramp.start_ms) as f64 / 1000.0),
        step: ramp.step_at(now),
        percent: ramp.percent_at(now),
        reason: tripped.map(|r| r.as_str()),
        treatment_requests: treated,
        users_affected: affected.len(),
        requests,
    }
}

/// Runs at equal error ratios and times: how many trip.
fn noise(setup: &RampSetup) -> NoiseRuns {
    let s = settings();
    let mut trips = 0;
    for run in 0..setup.seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(setup.seed.wrapping_add(1 + run));
        let g = GuardState::default();
        let mut now = 1_800_000_000_000u64;
        for _ in 0..setup.requests {
            now += 1000 / RATE;
            let group = if rng.random::<f64>() < 0.25 {
                Group::Treatment
            } else {
                Group::Control
            };
            let e = end(&mut rng, BASE_ERRORS, 0.0);
            if g.record(&s, group, &e, now) {
                g.evaluate(&s, now);
            }
        }
        trips += u64::from(g.tripped().is_some());
    }
    NoiseRuns {
        runs: setup.seeds,
        requests_each: setup.requests,
        trips,
    }
}

pub fn run(setup: RampSetup) -> RampResults {
    RampResults {
        regression: regression(&setup),
        noise: noise(&setup),
        setup,
    }
}

pub fn markdown(r: &RampResults) -> String {
    let g = &r.regression;
    let mut md = format!(
        "Ramp 1% (5 min), 5% (10 min), 25% (10 min), 100%, at {RATE} requests/s over {USERS} users; \
         {:.1} points more errors in treatment than control's {:.0}%, {:.0}% longer times; the guard's defaults.\n\n",
        r.setup.error_increase * 100.0,
        BASE_ERRORS * 100.0,
        r.setup.p99_increase * 100.0
    );
    md.push_str(
        "| tripped after | on step | share | reason | treatment requests | users who met it |\n",
    );
    md.push_str("|---|---|---|---|---|---|\n");
    match g.tripped_after_s {
        Some(s) => md.push_str(&format!(
            "| {s:.0} s | {} | {}% | {} | {} | {} |\n",
            g.step.map_or("-".into(), |i| i.to_string()),
            g.percent,
            g.reason.unwrap_or("-"),
            g.treatment_requests,
            g.users_affected
        )),
        None => md.push_str(&format!(
            "| not within {} requests | - | - | - | {} | {} |\n",
            g.requests, g.treatment_requests, g.users_affected
        )),
    }
    md.push_str(&format!(
        "\nWithout a regression: {} trip(s) in {} runs of {} requests (a quarter in treatment, {:.0}% errors in both groups).\n",
        r.noise.trips, r.noise.runs, r.noise.requests_each, BASE_ERRORS * 100.0
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regression_trips_on_its_step_and_noise_does_not() {
        let r = run(RampSetup {
            seed: 42,
            error_increase: 0.05,
            p99_increase: 0.0,
            seeds: 3,
            requests: 50_000,
        });
        let g = &r.regression;
        assert_eq!(g.reason, Some("errors"), "{g:?}");
        assert!(g.treatment_requests <= 2000, "{g:?}");
        assert_eq!(r.noise.trips, 0);
        assert!(markdown(&r).contains("| errors |"));
    }
}
