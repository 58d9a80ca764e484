//! The spend controller under a fake clock and a made-up plant.

use super::*;

fn settings() -> Settings {
    SpendControlConfig::default()
        .compile(None, &[])
        .expect("defaults are valid")
        .settings
}

/// A plant: the cost per request at correction `m` is `base * shift * m^-elasticity`.
struct Plant {
    base: f64,
    shift: f64,
    elasticity: f64,
    /// Requests per second.
    rate: u64,
}

impl Plant {
    fn cost(&self, m: f64) -> f64 {
        self.base * self.shift * m.powf(-self.elasticity)
    }
}

/// Drive a loop for `secs` seconds from `start_ms`; returns the cost per request of each
/// whole second.
fn drive(l: &SpendLoop, p: &Plant, start_ms: u64, secs: u64, target: Option<f64>) -> Vec<f64> {
    let step = 1000 / p.rate;
    let mut per_second = Vec::new();
    for s in 0..secs {
        let mut sum = 0.0;
        for i in 0..p.rate {
            let now = start_ms + s * 1000 + i * step;
            let c = p.cost(l.m());
            sum += c;
            if l.record(c, now) {
                l.tick(now, target);
            }
        }
        per_second.push(sum / p.rate as f64);
    }
    per_second
}

/// Requests at the given times (ms), each costing what the plant says at the `m` of its
/// decision; returns each request's cost.
fn drive_at(l: &SpendLoop, p: &Plant, times: &[u64], target: Option<f64>) -> Vec<f64> {
    times
        .iter()
        .map(|&now| {
            let c = p.cost(l.m());
            if l.record(c, now) {
                l.tick(now, target);
            }
            c
        })
        .collect()
}

/// The largest change of `ln m` from one update to the next while `f` runs.
fn largest_step(l: &SpendLoop, mut f: impl FnMut(&SpendLoop) -> bool) -> f64 {
    let mut largest: f64 = 0.0;
    let mut last = l.m();
    while f(l) {
        largest = largest.max((l.m() / last).ln().abs());
        last = l.m();
    }
    largest
}

#[test]
fn a_pause_is_held_through_not_taken_as_one_long_step() {
    let l = SpendLoop::new(settings(), None);
    let p = Plant {
        base: 10.0,
        shift: 1.3,
        elasticity: 0.5,
        rate: 100,
    };
    // Settled on a shift: m ~ 1.69.
    drive(&l, &p, 1_000_000, 60, Some(10.0));
    let settled = l.m();
    assert!((settled / 1.69 - 1.0).abs() < 0.02, "{settled}");
    // The largest move of a normal update while settled traffic goes on.
    let mut t = 1_060_000;
    let normal = largest_step(&l, |l| {
        drive(l, &p, t, 1, Some(10.0));
        t += 1000;
        t < 1_070_000
    });
    // 60 s without a request, then two cheap requests, then two expensive ones (what the
    // field saw: m 0.545 -> 5.40 within 0.5 s).
    let cheap = Plant { shift: 0.5, ..p };
    let dear = Plant { shift: 3.0, ..p };
    let before = l.m();
    drive_at(&l, &cheap, &[1_130_000, 1_130_100], Some(10.0));
    let after_cheap = l.m();
    drive_at(&l, &dear, &[1_131_200, 1_131_300], Some(10.0));
    let after_dear = l.m();
    for (what, m) in [("cheap", after_cheap), ("dear", after_dear)] {
        // No more than a normal update's move, or a twentieth in ln m, whichever is larger.
        let moved = (m / before).ln().abs();
        assert!(
            moved <= normal.max(0.05) * 2.0,
            "{what}: m {before} -> {m} ({moved}; a normal update moves {normal})"
        );
    }
    // Then the traffic as before: spend stays within 5% of the target throughout.
    let resumed = drive(&l, &p, 1_132_000, 60, Some(10.0));
    for (s, c) in resumed.iter().enumerate() {
        assert!(
            (c / 10.0 - 1.0).abs() < 0.05,
            "second {s} after the pause: {c}"
        );
    }
}

#[test]
fn a_route_idle_for_minutes_settles_as_a_busy_one_does() {
    let l = SpendLoop::new(settings(), None);
    let mut p = Plant {
        base: 10.0,
        shift: 1.0,
        elasticity: 0.5,
        rate: 100,
    };
    drive(&l, &p, 1_000_000, 20, Some(10.0));
    // The last request closes a period: nothing is left counted from before the pause.
    drive_at(&l, &p, &[1_020_000], Some(10.0));
    // Five minutes idle; the scores have shifted meanwhile.
    p.shift = 1.3;
    let after = drive(&l, &p, 1_320_000, 90, Some(10.0));
    for (s, c) in after.iter().enumerate().skip(30) {
        assert!((c / 10.0 - 1.0).abs() < 0.05, "second {s}: {c}");
    }
    // As a busy loop does after a step, it comes down to the target without a swing below.
    assert!(
        after.iter().all(|c| *c > 9.5),
        "the first update after the pause swung: {after:?}"
    );
    // The gauges: while idle, the cost per second decays and the cost per request goes.
    let busy = l.snapshot(1_410_000);
    assert!(busy.per_request.is_some() && busy.per_second.is_some_and(|c| c > 900.0));
    let idle = l.snapshot(1_410_000 + 4_000);
    assert!(idle
        .per_second
        .is_some_and(|c| c < busy.per_second.unwrap_or(0.0) * 0.5));
    let gone = l.snapshot(1_410_000 + 20_000);
    assert_eq!(gone.per_request, None);
    assert!(gone.per_second.is_some_and(|c| c < 10.0), "{gone:?}");
    assert!((gone.m - l.m()).abs() < 1e-12, "m holds");
}

#[test]
fn a_canary_at_one_request_a_second_settles_as_the_readme_says() {
    use rand::{Rng, SeedableRng};
    for seed in 0..5 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let l = SpendLoop::new(settings(), None);
        let mut p = Plant {
            base: 10.0,
            shift: 1.0,
            elasticity: 0.5,
            rate: 1,
        };
        // Poisson arrivals, one a second on average, for 10 minutes.
        let mut t = 1_000_000.0_f64;
        let mut arrivals = Vec::new();
        while t < 1_600_000.0 {
            t += -1000.0 * (1.0 - rng.random::<f64>()).ln();
            arrivals.push(t as u64);
        }
        let (before, after): (Vec<u64>, Vec<u64>) = arrivals.iter().partition(|&&a| a < 1_300_000);
        drive_at(&l, &p, &before, Some(10.0));
        p.shift = 1.3;
        let costs = drive_at(&l, &p, &after, Some(10.0));
        // From 30 s after the shift on, every request's cost is within 5% of the target.
        for (a, c) in after.iter().zip(&costs).filter(|(a, _)| **a >= 1_330_000) {
            assert!(
                (c / 10.0 - 1.0).abs() < 0.05,
                "seed {seed}, {} s after the shift: {c}",
                (a - 1_300_000) / 1000
            );
        }
    }
}

#[test]
fn without_a_target_m_holds_at_1() {
    let l = SpendLoop::new(settings(), None);
    let p = Plant {
        base: 10.0,
        shift: 3.0,
        elasticity: 0.5,
        rate: 100,
    };
    drive(&l, &p, 1_000_000, 20, None);
    assert_eq!(l.m(), 1.0);
    let s = l.snapshot(1_020_000);
    assert!(
        s.per_request.is_some_and(|c| (c - 30.0).abs() < 1e-6),
        "{s:?}"
    );
}

#[test]
fn a_score_shift_is_brought_back_to_the_expected_cost_per_request() {
    let l = SpendLoop::new(settings(), None);
    let mut p = Plant {
        base: 10.0,
        shift: 1.0,
        elasticity: 0.5,
        rate: 100,
    };
    let on_target = drive(&l, &p, 1_000_000, 20, Some(10.0));
    assert!(
        on_target.iter().all(|c| (c - 10.0).abs() < 1e-6),
        "{on_target:?}"
    );
    p.shift = 1.3;
    let after = drive(&l, &p, 1_020_000, 120, Some(10.0));
    assert!(after[0] > 12.0, "open loop at first: {}", after[0]);
    for (s, c) in after.iter().enumerate().skip(30) {
        assert!((c / 10.0 - 1.0).abs() < 0.05, "second {s}: {c}");
    }
    // m ~ 1.3^(1/0.5)
    assert!((l.m() / 1.69 - 1.0).abs() < 0.02, "m = {}", l.m());
    // The shift ends: back to m = 1.
    p.shift = 1.0;
    let back = drive(&l, &p, 1_140_000, 120, Some(10.0));
    assert!((back[119] / 10.0 - 1.0).abs() < 0.01, "{}", back[119]);
}

#[test]
fn a_cap_brakes_a_surge_and_never_spends_more_than_the_open_loop() {
    // 100 requests a second of cost 10 under a cap of 1500 per second: m stays 1.
    let l = SpendLoop::new(settings(), Some(1500.0));
    let mut p = Plant {
        base: 10.0,
        shift: 1.0,
        elasticity: 0.8,
        rate: 100,
    };
    drive(&l, &p, 1_000_000, 20, None);
    assert_eq!(l.m(), 1.0);
    // Traffic doubles: 2000 per second at m = 1, over the cap.
    p.rate = 200;
    let after = drive(&l, &p, 1_020_000, 90, None);
    for (s, c) in after.iter().enumerate().skip(30) {
        let per_second = c * 200.0;
        assert!(per_second <= 1500.0 * 1.05, "second {s}: {per_second}");
    }
    assert!(l.m() > 1.2, "{}", l.m());
    let s = l.snapshot(1_110_000);
    assert_eq!(s.target_per_second, Some(1500.0));
}

#[test]
fn m_is_bounded_without_winding_up() {
    let l = SpendLoop::new(settings(), None);
    // An impossible target: even m = 8 cannot bring 10 down to 1.
    let p = Plant {
        base: 10.0,
        shift: 1.0,
        elasticity: 0.5,
        rate: 50,
    };
    drive(&l, &p, 1_000_000, 200, Some(1.0));
    assert!((l.m() - 8.0).abs() < 1e-9, "{}", l.m());
    // A reachable target again: m leaves the bound within seconds, not after unwinding 200 s.
    let back = drive(&l, &p, 1_200_000, 40, Some(10.0));
    assert!((back[39] / 10.0 - 1.0).abs() < 0.05, "{}", back[39]);
    assert!((l.m() - 1.0).abs() < 0.1);
}

#[test]
fn one_update_per_period() {
    let l = SpendLoop::new(settings(), None);
    assert!(
        !l.record(10.0, 1_000),
        "the first request starts the period"
    );
    assert!(!l.record(10.0, 1_500));
    assert!(l.record(20.0, 2_000), "the period is over");
    assert!(l.record(20.0, 2_000), "and for others until one ticks");
    l.tick(2_000, Some(10.0));
    l.tick(2_000, Some(10.0));
    assert!(!l.record(10.0, 2_100), "a new period began");
    let s = l.snapshot(2_100);
    // 4 requests, cost 60 over 1 s (the first window of measurement is taken whole).
    assert_eq!(s.per_second, Some(60.0));
    assert_eq!(s.per_request, Some(15.0));
    assert!(l.m() > 1.0);
}

#[test]
fn the_section_is_checked() {
    let parse = |y: &str| serde_norway::from_str::<SpendControlConfig>(y).expect("parses");
    let bad = |y: &str, field: &str| {
        let e = parse(y).compile(Some(&["feed".into()]), &[]).expect_err(y);
        assert_eq!(e.field, field, "{y}: {e}");
    };
    bad("m_range: [2, 8]", "m_range");
    bad("period: 0s", "period");
    bad("gain_p: -1", "gain_p");
    bad("scenarios: {search: {}}", "scenarios.search");
    bad(
        "scenarios: {feed: {max_cost_per_second: 1, fleet_max_cost_per_second: 4, proxies: 2}}",
        "scenarios.feed.fleet_max_cost_per_second",
    );
    bad(
        "scenarios: {feed: {fleet_max_cost_per_second: 4}}",
        "scenarios.feed.proxies",
    );
    bad(
        "scenarios: {default: {max_cost_per_second: 0}}",
        "scenarios.default.max_cost_per_second",
    );
    let sc = parse("scenarios: {default: {}, feed: {fleet_max_cost_per_second: 900, proxies: 3}}")
        .compile(Some(&["feed".into()]), &[])
        .expect("valid");
    let cap = |sc: &SpendControl, n: &str| {
        sc.scenario(n)
            .map(|c| c[0].as_ref().map(|c| c.per_second()))
    };
    assert_eq!(cap(&sc, "default"), Some(None));
    assert_eq!(cap(&sc, "feed"), Some(Some(300.0)));
    assert_eq!(cap(&sc, "search"), None);
    let all = parse("{}").compile(None, &[]).expect("valid");
    assert_eq!(cap(&all, "anything"), Some(None));
    // A fleet counted by DNS: the cap follows the count.
    let sc = parse("scenarios: {feed: {fleet_max_cost_per_second: 900, proxies: {dns: \"peers.spend-test:9901\", interval: 5s}}}")
        .compile(None, &[])
        .expect("valid");
    assert_eq!(cap(&sc, "feed"), Some(Some(900.0)), "alone until counted");
    let size = crate::fleet::fleets()
        .into_iter()
        .find(|(n, _)| n.dns == "peers.spend-test:9901")
        .expect("registered")
        .1;
    size.set(3);
    assert_eq!(cap(&sc, "feed"), Some(Some(300.0)));
    size.set(4);
    assert_eq!(cap(&sc, "feed"), Some(Some(225.0)));
    let bad = parse("scenarios: {feed: {fleet_max_cost_per_second: 900, proxies: {dns: peers}}}")
        .compile(None, &[])
        .expect_err("no port");
    assert_eq!(bad.field, "scenarios.feed.proxies.dns");
    assert!(serde_norway::from_str::<SpendControlConfig>("bogus: 1").is_err());
}

#[test]
fn caps_per_resource() {
    let parse = |y: &str| serde_norway::from_str::<SpendControlConfig>(y).expect("parses");
    let two = ["large".to_string(), "small".to_string()];
    let sc = parse("scenarios: {default: {max_cost_per_second: {large: 5000}}}")
        .compile(None, &two)
        .expect("valid");
    let caps = sc.scenario("default").expect("controlled");
    let per_second: Vec<Option<f64>> = caps
        .iter()
        .map(|c| c.as_ref().map(Cap::per_second))
        .collect();
    assert_eq!(per_second, vec![Some(5000.0), None]);
    assert_eq!(sc.resources(), 2);
    assert_eq!(
        parse("{}")
            .compile(None, &two)
            .expect("valid")
            .scenario("x")
            .map(|c| c.len()),
        Some(2)
    );
    let e = parse("scenarios: {default: {max_cost_per_second: 5000}}")
        .compile(None, &two)
        .expect_err("one number for two resources");
    assert_eq!(e.field, "scenarios.default.max_cost_per_second");
    assert!(e.problem.contains("give one cap per resource"), "{e}");
    let e = parse("scenarios: {default: {max_cost_per_second: {gpu: 1}}}")
        .compile(None, &two)
        .expect_err("unknown resource");
    assert_eq!(e.field, "scenarios.default.max_cost_per_second.gpu");
    let e = parse("scenarios: {default: {max_cost_per_second: {large: 0}}}")
        .compile(None, &two)
        .expect_err("zero");
    assert_eq!(e.field, "scenarios.default.max_cost_per_second.large");
    let sc = parse("scenarios: {default: {fleet_max_cost_per_second: {small: 900}, proxies: 3}}")
        .compile(None, &two)
        .expect("valid");
    let caps = sc.scenario("default").expect("controlled");
    assert_eq!(caps[1].as_ref().map(Cap::per_second), Some(300.0));
    assert!(caps[0].is_none());
}

#[test]
fn a_fleet_cap_follows_the_fleets_size_within_5_percent() {
    // A fleet cap of 3000 per second; this proxy's traffic would spend 2000 at m = 1.
    let size = Arc::new(crate::fleet::FleetSize::default());
    size.set(2);
    let cap = Cap::Fleet {
        total: 3000.0,
        size: size.clone(),
    };
    let l = SpendLoop::with_cap(settings(), Some(cap));
    let p = Plant {
        base: 10.0,
        shift: 1.0,
        elasticity: 0.8,
        rate: 200,
    };
    // Two proxies: 1500 each, under the 2000 the traffic would spend.
    let two = drive(&l, &p, 1_000_000, 90, None);
    for (s, c) in two.iter().enumerate().skip(30) {
        assert!(c * 200.0 <= 1500.0 * 1.05, "second {s}: {}", c * 200.0);
    }
    assert!(two[89] * 200.0 >= 1500.0 * 0.95, "{}", two[89] * 200.0);
    // The fleet grows to 4: 750 each, held within 5% once settled.
    size.set(4);
    assert_eq!(l.snapshot(1_090_000).target_per_second, Some(750.0));
    let four = drive(&l, &p, 1_090_000, 90, None);
    for (s, c) in four.iter().enumerate().skip(30) {
        let spent = c * 200.0;
        assert!((spent / 750.0 - 1.0).abs() <= 0.05, "second {s}: {spent}");
    }
    // It shrinks to 3: 1000 each.
    size.set(3);
    let three = drive(&l, &p, 1_180_000, 90, None);
    for (s, c) in three.iter().enumerate().skip(30) {
        let spent = c * 200.0;
        assert!((spent / 1000.0 - 1.0).abs() <= 0.05, "second {s}: {spent}");
    }
}
