//! The spend controller: closed-loop correction of `k_t` (issue 16).
//!
//! The k-table's `k_t` is open loop: solved from past windows. When today's traffic or QoE
//! scores differ, the spend follows blindly. Per controlled scenario, each proxy measures the
//! cost it hands out (treatment requests decided by the rule) per request and per second,
//! smoothed over `smoothing`, and multiplies `k_t` by a correction `m` that a PI loop on
//! `ln(measured / target)` drives to keep the spend at the target: the cost per request the
//! solver expected for the window (`expected.cost_per_request` of the k-table) and, when set, a
//! cap in cost per second for this proxy (whichever is exceeded more). `ln m` is bounded by
//! `m_range` with anti-windup (the integral stops where the bound holds). With no target for
//! the window, `m` is held at 1; with only a cap, `m` never goes below 1 (the cap only brakes).
//!
//! The request path reads `m` with one atomic load and multiplies. A request's end adds its
//! cost to two atomic counters; the first request to end after each `period` (a compare-and-
//! swap on the period's start, at the request's own time) updates `m`. No thread, no timer:
//! the loop is driven by the requests' clock, so it is deterministic under a fake clock.
//!
//! A pause (no request for longer than the usual interval between updates) is not one long
//! step: the loop holds `m` through it, and the first update after it measures and integrates
//! over one usual interval, with the cost per request weighted by requests, so that the first
//! few requests after a pause move `m` no more than a normal update does. The gauges' measured
//! rates decay while no request ends.

use crate::fleet::{fleet, FleetName, FleetSize};
use crate::resource::PerResource;
use prometheus::{GaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Costs are summed in fixed point: millionths.
const SCALE: f64 = 1e6;

/// `spend_control:` in the hydrus section, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendControlConfig {
    /// The controlled scenarios, each with its optional cap; without it, every scenario of the
    /// k-table, without a cap.
    #[serde(default)]
    pub scenarios: Option<BTreeMap<String, ScenarioSpendConfig>>,
    /// How often `m` is updated.
    #[serde(default = "default_period", with = "humantime_serde")]
    pub period: Duration,
    /// Time constant of the measured spend's exponential smoothing.
    #[serde(default = "default_smoothing", with = "humantime_serde")]
    pub smoothing: Duration,
    /// Proportional gain on `ln(measured / target)`.
    #[serde(default = "default_gain_p")]
    pub gain_p: f64,
    /// Integral gain, per second.
    #[serde(default = "default_gain_i")]
    pub gain_i: f64,
    /// `[min, max]` of `m`.
    #[serde(default = "default_m_range")]
    pub m_range: [f64; 2],
}

/// One controlled scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpendConfig {
    /// A cap on this proxy's spend, in cost per second (with several resources, per resource:
    /// `{ large: 5000 }`; a resource left out has none).
    #[serde(default)]
    pub max_cost_per_second: Option<PerResource>,
    /// A cap on the fleet's spend, shared evenly by `proxies` (per resource likewise).
    #[serde(default)]
    pub fleet_max_cost_per_second: Option<PerResource>,
    /// How many proxies share `fleet_max_cost_per_second`: a number, or `{ dns: NAME:PORT }`
    /// whose address count (resolved again while serving) is the fleet's size.
    #[serde(default)]
    pub proxies: Option<Proxies>,
}

/// `proxies:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Proxies {
    Count(u32),
    Dns(FleetName),
}

/// A scenario's cap on this proxy's spend.
#[derive(Debug, Clone)]
pub enum Cap {
    /// `max_cost_per_second`, or a fleet's cap over a fixed number of proxies.
    Fixed(f64),
    /// A fleet's cap over the proxies its name counts now.
    Fleet { total: f64, size: Arc<FleetSize> },
}

impl PartialEq for Cap {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Fixed(a), Self::Fixed(b)) => a == b,
            (Self::Fleet { total: a, size: x }, Self::Fleet { total: b, size: y }) => {
                a == b && Arc::ptr_eq(x, y)
            }
            _ => false,
        }
    }
}

impl Cap {
    /// Cost per second.
    pub fn per_second(&self) -> f64 {
        match self {
            Self::Fixed(v) => *v,
            Self::Fleet { total, size } => total / f64::from(size.proxies()),
        }
    }
}

fn default_period() -> Duration {
    Duration::from_secs(1)
}
fn default_smoothing() -> Duration {
    Duration::from_secs(3)
}
fn default_gain_p() -> f64 {
    0.3
}
fn default_gain_i() -> f64 {
    0.3
}
fn default_m_range() -> [f64; 2] {
    [0.125, 8.0]
}

impl Default for SpendControlConfig {
    fn default() -> Self {
        Self {
            scenarios: None,
            period: default_period(),
            smoothing: default_smoothing(),
            gain_p: default_gain_p(),
            gain_i: default_gain_i(),
            m_range: default_m_range(),
        }
    }
}

/// A problem in `spend_control`: the field (below the section) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpendConfigError {
    pub field: String,
    pub problem: String,
}

/// The loop's settings, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub period_ms: u64,
    pub smoothing_s: f64,
    pub gain_p: f64,
    pub gain_i: f64,
    pub ln_min: f64,
    pub ln_max: f64,
}

impl Settings {
    /// The defaults of `spend_control`.
    pub fn defaults() -> Self {
        let [lo, hi] = default_m_range();
        Self {
            period_ms: 1000,
            smoothing_s: default_smoothing().as_secs_f64(),
            gain_p: default_gain_p(),
            gain_i: default_gain_i(),
            ln_min: lo.ln(),
            ln_max: hi.ln(),
        }
    }
}

/// The compiled section: settings and which scenarios run a loop, with their caps.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendControl {
    pub settings: Settings,
    /// `None`: every scenario, no cap. Otherwise per scenario one cap per resource.
    caps: Option<BTreeMap<String, Vec<Option<Cap>>>>,
    /// How many resources: loops per controlled scenario.
    resources: usize,
}

fn err(field: &str, problem: impl Into<String>) -> SpendConfigError {
    SpendConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// A scenario's caps, one per resource (in `resources` order).
fn caps_of(
    name: &str,
    s: &ScenarioSpendConfig,
    resources: &[String],
) -> Result<Vec<Option<Cap>>, SpendConfigError> {
    let several = resources.len() > 1;
    let per = |field: &str, v: &Option<PerResource>| -> Result<(), SpendConfigError> {
        let f = format!("scenarios.{name}.{field}");
        match v {
            Some(PerResource::One(_)) if several => Err(err(
                &f,
                format!(
                    "the strategies cost several resources ({}): give one cap per resource, e.g. {{ {}: 5000 }}",
                    resources.join(", "),
                    resources.first().map_or("large", String::as_str)
                ),
            )),
            Some(PerResource::Many(m)) => match m.keys().find(|r| !resources.contains(r)) {
                Some(r) => Err(err(
                    &format!("{f}.{r}"),
                    format!("not a resource the strategies' costs name ({})", resources.join(", ")),
                )),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    };
    per("max_cost_per_second", &s.max_cost_per_second)?;
    per("fleet_max_cost_per_second", &s.fleet_max_cost_per_second)?;
    let of = |v: &Option<PerResource>, r: &str| match v {
        None => None,
        Some(PerResource::One(x)) => Some(*x),
        Some(PerResource::Many(m)) => m.get(r).copied(),
    };
    resources
        .iter()
        .map(|r| {
            let (max, fleet) = (
                of(&s.max_cost_per_second, r),
                of(&s.fleet_max_cost_per_second, r),
            );
            // (With several resources a cap-less resource needs no `proxies`.)
            if several && max.is_none() && fleet.is_none() {
                return Ok(None);
            }
            let at = if several {
                format!("{name}.{{}}.{r}")
            } else {
                format!("{name}.{{}}")
            };
            cap_of(&at, max, fleet, s.proxies.as_ref())
        })
        .collect()
}

/// One resource's cap; `at` is `SCENARIO.{}` with `{}` where the field goes.
fn cap_of(
    at: &str,
    max: Option<f64>,
    fleet_max: Option<f64>,
    proxies: Option<&Proxies>,
) -> Result<Option<Cap>, SpendConfigError> {
    let f = |x: &str| {
        let (field, rest) = x.split_once('.').unwrap_or((x, ""));
        let place = format!("scenarios.{}", at.replace("{}", field));
        if rest.is_empty() {
            place
        } else {
            format!("{place}.{rest}")
        }
    };
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let proxies = match proxies {
        Some(Proxies::Dns(n)) => {
            if let Some(p) = n.problem() {
                return Err(err(&f("proxies.dns"), p));
            }
            match fleet_max {
                Some(v) if positive(v) && max.is_none() => {
                    let size = fleet(n);
                    return Ok(Some(Cap::Fleet { total: v, size }));
                }
                _ => Some(1),
            }
        }
        Some(Proxies::Count(c)) => Some(*c),
        None => None,
    };
    match (max, fleet_max, proxies) {
        (Some(_), Some(_), _) => Err(err(
            &f("fleet_max_cost_per_second"),
            "give max_cost_per_second or fleet_max_cost_per_second, not both",
        )),
        (Some(v), None, None) if positive(v) => Ok(Some(Cap::Fixed(v))),
        (Some(_), None, None) => Err(err(&f("max_cost_per_second"), "must be a number > 0")),
        (_, None, Some(_)) => Err(err(&f("proxies"), "only with fleet_max_cost_per_second")),
        (None, Some(v), Some(n)) if positive(v) && n >= 1 => Ok(Some(Cap::Fixed(v / f64::from(n)))),
        (None, Some(_), Some(0)) => Err(err(&f("proxies"), "must be at least 1")),
        (None, Some(_), Some(_)) => {
            Err(err(&f("fleet_max_cost_per_second"), "must be a number > 0"))
        }
        (None, Some(_), None) => Err(err(
            &f("proxies"),
            "required with fleet_max_cost_per_second (the proxies sharing it)",
        )),
        (None, None, None) => Ok(None),
    }
}

impl SpendControlConfig {
    /// Check and compile; `declared`: when the config lists scenarios, the names a controlled
    /// scenario must be among (`default` always is); `resources`: the strategies' (one loop
    /// each per scenario; none given: one).
    pub fn compile(
        &self,
        declared: Option<&[String]>,
        resources: &[String],
    ) -> Result<SpendControl, SpendConfigError> {
        let one = [crate::resource::DEFAULT_RESOURCE.to_string()];
        let resources = if resources.is_empty() {
            &one[..]
        } else {
            resources
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let day = Duration::from_secs(86_400);
        if self.period.is_zero() || self.period > day {
            return Err(err("period", "must be longer than 0 and at most 1 day"));
        }
        if self.smoothing.is_zero() || self.smoothing > day {
            return Err(err("smoothing", "must be longer than 0 and at most 1 day"));
        }
        for (name, v) in [("gain_p", self.gain_p), ("gain_i", self.gain_i)] {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(err(name, "must be a number in [0, 100]"));
            }
        }
        let [lo, hi] = self.m_range;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= 1.0 && hi >= 1.0) {
            return Err(err(
                "m_range",
                "must be [min, max] with 0 < min <= 1 <= max",
            ));
        }
        let caps = match &self.scenarios {
            None => None,
            Some(map) => {
                let mut caps = BTreeMap::new();
                for (name, s) in map {
                    let known = name == super::ktable::DEFAULT_SCENARIO
                        || declared.is_none_or(|d| d.iter().any(|x| x == name));
                    if !known {
                        return Err(err(
                            &format!("scenarios.{name}"),
                            "not a declared scenario (hydrus.scenarios)",
                        ));
                    }
                    caps.insert(name.clone(), caps_of(name, s, resources)?);
                }
                Some(caps)
            }
        };
        Ok(SpendControl {
            settings: Settings {
                period_ms: ms(self.period).max(1),
                smoothing_s: self.smoothing.as_secs_f64(),
                gain_p: self.gain_p,
                gain_i: self.gain_i,
                ln_min: lo.ln(),
                ln_max: hi.ln(),
            },
            caps,
            resources: resources.len(),
        })
    }
}

impl SpendControl {
    /// The scenarios `spend_control.scenarios` names (`None`: every scenario).
    pub fn named(&self) -> Option<impl Iterator<Item = &str>> {
        self.caps.as_ref().map(|m| m.keys().map(String::as_str))
    }

    /// Whether a scenario runs loops (one per resource), and their caps: `None` when it runs
    /// none.
    pub fn scenario(&self, name: &str) -> Option<Vec<Option<Cap>>> {
        match &self.caps {
            None => Some(vec![None; self.resources.max(1)]),
            Some(map) => map.get(name).cloned(),
        }
    }

    /// Loops per controlled scenario: one per resource.
    pub fn resources(&self) -> usize {
        self.resources.max(1)
    }
}

/// What the loop aims at and what it measured, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// The solver's expected cost per request for the window, when the k-table says.
    pub target_per_request: Option<f64>,
    /// The cap, in cost per second.
    pub target_per_second: Option<f64>,
    /// Smoothed cost per request and per second, once measured.
    pub per_request: Option<f64>,
    pub per_second: Option<f64>,
    pub m: f64,
}

/// The loop's own state, touched once per period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoopState {
    /// Smoothed cost per second and requests per second while requests end (`None` before
    /// the first period): their ratio is the cost per request the loop steers, weighted by
    /// requests; the cost rate is what a cap judges.
    pub rates: Option<(f64, f64)>,
    /// The usual time between updates, smoothed (0 before the first): a longer stretch is a
    /// pause, which the loop holds through.
    pub interval_s: f64,
    /// The integral term, in `ln m`.
    pub integral: f64,
    pub target_per_request: Option<f64>,
}

/// How fast the usual interval follows the intervals seen.
const INTERVAL_WEIGHT: f64 = 0.2;

impl LoopState {
    /// The stretch an update of `dt_s` seconds measures and integrates over: all of it, but
    /// after a pause (more than 3 usual intervals: rare between random arrivals) one usual
    /// interval. A pause holds no data: the first requests after it are one update, as heavy
    /// as a normal one, not a step multiplied by the whole gap (nor, with the rates reset, a
    /// cost per request taken from those few requests alone).
    fn span(&mut self, s: &Settings, dt_s: f64) -> f64 {
        let period_s = s.period_ms as f64 / 1000.0;
        let usual = if self.interval_s > 0.0 {
            self.interval_s
        } else {
            period_s
        };
        // (A pause moves the usual interval by a bounded amount only.)
        self.interval_s = usual + INTERVAL_WEIGHT * (dt_s.min(3.0 * usual) - usual);
        let usual = usual.max(period_s);
        if dt_s > 3.0 * usual {
            usual
        } else {
            dt_s.max(f64::MIN_POSITIVE)
        }
    }

    /// One update after `dt_s` seconds with `cost` handed out over `requests`: smooth,
    /// compare with the targets and return the new `m`.
    pub fn step(
        &mut self,
        s: &Settings,
        cap: Option<f64>,
        dt_s: f64,
        (cost, requests): (f64, f64),
        target_per_request: Option<f64>,
    ) -> f64 {
        self.target_per_request = target_per_request;
        let span = self.span(s, dt_s);
        let now = (cost / span, requests / span);
        let (c, r) = match self.rates {
            None => now,
            Some((c, r)) => {
                let a = 1.0 - (-span / s.smoothing_s).exp();
                (c + a * (now.0 - c), r + a * (now.1 - r))
            }
        };
        self.rates = Some((c, r));
        let ratio = |measured: f64, target: f64| {
            (measured > 0.0 && target > 0.0).then(|| (measured / target).ln())
        };
        let per_request =
            target_per_request.and_then(|t| (r > 0.0).then(|| ratio(c / r, t)).flatten());
        let per_second = cap.and_then(|t| ratio(c, t).or(Some(f64::NEG_INFINITY)));
        let (error, floor) = match (per_request, per_second) {
            (Some(a), Some(b)) => (a.max(b), s.ln_min),
            (Some(a), None) => (a, s.ln_min),
            // Only a cap: it brakes, it never spends more than the open loop would.
            (None, Some(b)) => (b.max(-10.0), 0.0_f64.max(s.ln_min)),
            (None, None) => {
                self.integral = 0.0;
                return 1.0;
            }
        };
        let error = error.clamp(-10.0, 10.0);
        let ceiling = s.ln_max;
        let p = s.gain_p * error;
        let mut next = self.integral + s.gain_i * error * span;
        // Anti-windup: the integral grows only until the output reaches its bound (it is not
        // pulled back either), and never leaves the bounds itself.
        if error > 0.0 {
            next = next.min((ceiling - p).max(self.integral));
        } else if error < 0.0 {
            next = next.max((floor - p).min(self.integral));
        }
        self.integral = next.clamp(floor, ceiling);
        (p + self.integral).clamp(floor, ceiling).exp()
    }

    /// What the gauges show `idle_s` seconds after the last update: the cost per second
    /// decays once a usual interval has passed without one, and the cost per request is
    /// no longer a measurement after [`STALE_SMOOTHINGS`] smoothing times.
    fn measured(&self, s: &Settings, idle_s: f64) -> (Option<f64>, Option<f64>) {
        let Some((c, r)) = self.rates else {
            return (None, None);
        };
        let period_s = s.period_ms as f64 / 1000.0;
        let quiet = (idle_s - self.interval_s.max(period_s)).max(0.0);
        let per_request = (r > 0.0 && quiet < STALE_SMOOTHINGS * s.smoothing_s).then(|| c / r);
        (per_request, Some(c * (-quiet / s.smoothing_s).exp()))
    }
}

/// Smoothing times without a request after which the cost per request is not exported (the
/// cost per second has decayed below 1% of what it was by then).
pub const STALE_SMOOTHINGS: f64 = 5.0;

/// One scenario's loop on one proxy.
#[derive(Debug)]
pub struct SpendLoop {
    settings: Settings,
    cap: Option<Cap>,
    m: AtomicU64,
    cost: AtomicU64,
    requests: AtomicU64,
    /// Unix ms of the current period's start; 0 before the first request.
    period_start: AtomicU64,
    state: Mutex<LoopState>,
}

impl SpendLoop {
    pub fn new(settings: Settings, cap: Option<f64>) -> Self {
        Self::with_cap(settings, cap.map(Cap::Fixed))
    }

    /// A loop under a cap that may follow the fleet's size.
    pub fn with_cap(settings: Settings, cap: Option<Cap>) -> Self {
        Self {
            settings,
            cap,
            m: AtomicU64::new(1.0f64.to_bits()),
            cost: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            period_start: AtomicU64::new(0),
            state: Mutex::new(LoopState::default()),
        }
    }

    /// The correction: one atomic load.
    #[inline]
    pub fn m(&self) -> f64 {
        f64::from_bits(self.m.load(Relaxed))
    }

    /// A request decided by the rule ended, having cost `cost`; it was decided at `now_ms`.
    /// True when the period is over: the caller then calls [`SpendLoop::tick`] with the
    /// window's target (the first to get there updates `m`).
    pub fn record(&self, cost: f64, now_ms: u64) -> bool {
        let fixed = if cost.is_finite() && cost > 0.0 {
            (cost * SCALE) as u64
        } else {
            0
        };
        self.cost.fetch_add(fixed, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        let start = self.period_start.load(Relaxed);
        if start == 0 {
            let _ = self
                .period_start
                .compare_exchange(0, now_ms.max(1), Relaxed, Relaxed);
            return false;
        }
        now_ms >= start.saturating_add(self.settings.period_ms)
    }

    /// Close the period at `now_ms` (if no other request did) and update `m` against the
    /// window's expected cost per request.
    pub fn tick(&self, now_ms: u64, target_per_request: Option<f64>) {
        let start = self.period_start.load(Relaxed);
        if start == 0
            || now_ms < start.saturating_add(self.settings.period_ms)
            || self
                .period_start
                .compare_exchange(start, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let cost = self.cost.swap(0, Relaxed) as f64 / SCALE;
        let requests = self.requests.swap(0, Relaxed) as f64;
        let dt_s = (now_ms - start) as f64 / 1000.0;
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let m = st.step(
            &self.settings,
            self.cap.as_ref().map(Cap::per_second),
            dt_s,
            (cost, requests),
            target_per_request,
        );
        self.m.store(m.to_bits(), Relaxed);
    }

    /// What the gauges show at `now_ms` (the requests' clock): the measured rates decay
    /// while no request ends, so that nothing judges a stale spend.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let st = self.state.lock().map(|s| *s).unwrap_or_default();
        let last = self.period_start.load(Relaxed);
        let idle_s = now_ms.saturating_sub(last) as f64 / 1000.0;
        let (per_request, per_second) = st.measured(&self.settings, idle_s);
        Snapshot {
            target_per_request: st.target_per_request,
            target_per_second: self.cap.as_ref().map(Cap::per_second),
            per_request,
            per_second,
            m: self.m(),
        }
    }
}

/// The controller's gauges, by route, scenario and resource (`default` when costs are plain
/// numbers); set at each scrape from the running loops.
#[derive(Clone)]
pub struct SpendMetrics {
    target_per_request: GaugeVec,
    target_per_second: GaugeVec,
    per_request: GaugeVec,
    per_second: GaugeVec,
    m: GaugeVec,
    k_effective: GaugeVec,
}

#[allow(clippy::expect_used)] // constant, valid metric definitions: checked by tests
impl SpendMetrics {
    pub fn new(r: &Registry) -> Self {
        let g = |name: &str, help: &str| {
            let v = GaugeVec::new(Opts::new(name, help), &["route", "scenario", "resource"])
                .expect("metric");
            crate::filter::register(r, v)
        };
        Self {
            target_per_request: g("hydrus_spend_target_cost_per_request", "Spend controller: the cost per request the k-table expects for the current window."),
            target_per_second: g("hydrus_spend_target_cost_per_second", "Spend controller: this proxy's cap on cost per second, when set."),
            per_request: g("hydrus_spend_cost_per_request", "Spend controller: measured cost per request (treatment, decided by the rule), smoothed."),
            per_second: g("hydrus_spend_cost_per_second", "Spend controller: measured cost per second (treatment, decided by the rule), smoothed."),
            m: g("hydrus_spend_correction", "Spend controller: the correction m multiplying k_t (a ratio)."),
            k_effective: g("hydrus_k_effective", "k_t times the spend controller's m: the k the rule applies."),
        }
    }

    /// Set a loop's series from its snapshot (series without a value are dropped).
    pub fn set(&self, route: &str, scenario: &str, resource: &str, s: &Snapshot, k_t: Option<f64>) {
        let v = [route, scenario, resource];
        let put = |g: &GaugeVec, x: Option<f64>| match x {
            Some(x) => g.with_label_values(&v).set(x),
            None => {
                let _ = g.remove_label_values(&v);
            }
        };
        put(&self.target_per_request, s.target_per_request);
        put(&self.target_per_second, s.target_per_second);
        put(&self.per_request, s.per_request);
        put(&self.per_second, s.per_second);
        put(&self.m, Some(s.m));
        put(&self.k_effective, k_t.map(|k| k * s.m));
    }

    /// Drop a loop's series.
    pub fn remove(&self, route: &str, scenario: &str, resource: &str) {
        let v = [route, scenario, resource];
        for g in [
            &self.target_per_request,
            &self.target_per_second,
            &self.per_request,
            &self.per_second,
            &self.m,
            &self.k_effective,
        ] {
            let _ = g.remove_label_values(&v);
        }
    }
}

#[cfg(test)]
mod tests;
