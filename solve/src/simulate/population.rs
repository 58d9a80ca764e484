//! Synthetic users like the Hydrus paper's (section 2): quadratic-like QoE-latency curves with the
//! three kinds of heterogeneity of Figure 4, or a population read from decision logs.

use crate::hydrus::algo::Instance;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The strategies' latencies (ms): ranking more candidates, or a bigger model, takes longer.
pub const LATENCIES: [f64; 8] = [260.0, 300.0, 340.0, 380.0, 430.0, 480.0, 540.0, 600.0];

/// The paper's three kinds of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// High QoE at low latency: sensitive to delay.
    HighQoeLowLatency,
    /// Low QoE at every latency: neither fast nor accurate answers engage them.
    LowQoeAllLatency,
    /// High QoE at high latency: they reward accuracy.
    HighQoeHighLatency,
}

/// One user's curve: `q(L) = peak - curvature * ((L - best_latency) / 100)^2`, at least 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Curve {
    pub class: Class,
    pub peak: f64,
    pub best_latency: f64,
    pub curvature: f64,
}

impl Curve {
    pub fn qoe(&self, latency: f64) -> f64 {
        let d = (latency - self.best_latency) / 100.0;
        (self.peak - self.curvature * d * d).max(0.0)
    }

    pub fn draw(rng: &mut ChaCha8Rng) -> Self {
        let u: f64 = rng.random();
        // Shares and shapes chosen so that, as in the paper, giving everyone their favourite
        // strategy (k = 0) costs more latency than the default policy spends.
        if u < 0.30 {
            Curve {
                class: Class::HighQoeLowLatency,
                peak: rng.random_range(0.30..0.55),
                best_latency: rng.random_range(240.0..320.0),
                curvature: rng.random_range(0.03..0.08),
            }
        } else if u < 0.70 {
            Curve {
                class: Class::LowQoeAllLatency,
                peak: rng.random_range(0.04..0.14),
                best_latency: rng.random_range(420.0..680.0),
                curvature: rng.random_range(0.004..0.015),
            }
        } else {
            Curve {
                class: Class::HighQoeHighLatency,
                peak: rng.random_range(0.30..0.55),
                best_latency: rng.random_range(500.0..700.0),
                curvature: rng.random_range(0.02..0.06),
            }
        }
    }
}

/// Users, their options (strategy latency as cost, QoE) and the default policy's choice.
#[derive(Debug, Clone)]
pub struct Population {
    pub instance: Instance,
    /// Empty for populations read from logs.
    pub curves: Vec<Curve>,
}

impl Population {
    /// `n` users; the default policy assigns strategies at random (the paper's default).
    pub fn generate(n: usize, rng: &mut ChaCha8Rng) -> Self {
        let mut instance = Instance::new();
        let mut curves = Vec::with_capacity(n);
        let mut opts = [(0.0, 0.0); LATENCIES.len()];
        for _ in 0..n {
            let c = Curve::draw(rng);
            for (j, &l) in LATENCIES.iter().enumerate() {
                // Measurement noise on each (user, strategy) estimate.
                let noise: f64 = rng.random_range(-0.01..0.01);
                opts[j] = (l, (c.qoe(l) + noise).max(0.0));
            }
            instance.push(&opts, Some(rng.random_range(0..LATENCIES.len() as u32)));
            curves.push(c);
        }
        Self { instance, curves }
    }

    /// The first `n` users (for load sweeps over one population).
    pub fn prefix(&self, n: usize) -> Self {
        let n = n.min(self.instance.len());
        let mut instance = Instance::new();
        let mut opts = Vec::new();
        for i in 0..n {
            let (c, q) = self.instance.options(i);
            opts.clear();
            opts.extend(c.iter().copied().zip(q.iter().copied()));
            instance.push(&opts, self.instance.chosen[i]);
        }
        Self {
            instance,
            curves: self.curves.iter().take(n).copied().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.instance.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instance.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The latency at which a curve is highest, among the strategies.
    fn best(c: &Curve) -> f64 {
        LATENCIES
            .iter()
            .copied()
            .max_by(|a, b| c.qoe(*a).total_cmp(&c.qoe(*b)))
            .unwrap_or(0.0)
    }

    #[test]
    fn classes_behave_as_the_paper_describes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = Population::generate(3000, &mut rng);
        let of = |class: Class| -> Vec<&Curve> {
            p.curves.iter().filter(|c| c.class == class).collect()
        };
        let (a, b, c) = (
            of(Class::HighQoeLowLatency),
            of(Class::LowQoeAllLatency),
            of(Class::HighQoeHighLatency),
        );
        for group in [&a, &b, &c] {
            assert!(group.len() > 700, "each class is well represented");
        }
        let mean = |v: &[&Curve], f: &dyn Fn(&Curve) -> f64| {
            v.iter().map(|c| f(c)).sum::<f64>() / v.len() as f64
        };
        let peak_qoe = |c: &Curve| LATENCIES.iter().map(|l| c.qoe(*l)).fold(0.0, f64::max);
        // A: best at low latency, high QoE. C: best at high latency, high QoE. B: low everywhere.
        assert!(mean(&a, &best) < 330.0 && mean(&c, &best) > 500.0);
        assert!(mean(&a, &peak_qoe) > 0.3 && mean(&c, &peak_qoe) > 0.3);
        assert!(b.iter().all(|c| peak_qoe(c) < 0.15));
        // Quadratic-like: QoE rises towards the best latency, then falls.
        for c in a.iter().chain(c.iter()).take(200) {
            let bl = best(c);
            assert!(c.qoe(bl) >= c.qoe(LATENCIES[0]) && c.qoe(bl) >= c.qoe(LATENCIES[7]));
        }
        // Everyone's favourite costs more than the default spends (the budget binds).
        let favourite: f64 = p.curves.iter().map(best).sum::<f64>() / p.curves.len() as f64;
        let default: f64 = p.instance.logged_budget() / p.len() as f64;
        assert!(
            favourite > default * 1.05,
            "favourites {favourite} vs default {default}"
        );
        // The default policy picks every strategy about equally often.
        let mut counts = [0usize; 8];
        for ch in &p.instance.chosen {
            counts[ch.unwrap_or(0) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (300..450).contains(&n)),
            "{counts:?}"
        );
    }
}
