//! The offline solver: exact (hull + weighted selection) against the paper's bisection, on
//! synthetic windows of 1e4 to 1e6 records x 8 strategies (1e7 with HYDRUS_BENCH_HUGE=1).
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hydrus::solve::algo::{solve_bisection, solve_exact, Instance};
use rand::{Rng, SeedableRng};
use std::time::Duration;

const COSTS: [f64; 8] = [6.0, 8.0, 10.0, 14.0, 18.0, 24.0, 34.0, 48.0];
const SCALES: [f64; 8] = [0.86, 0.93, 1.0, 1.05, 1.08, 1.10, 1.12, 1.11];

/// Records like the paper's users: a base QoE, a taste for accuracy, noise per strategy.
pub fn instance(n: usize, seed: u64) -> Instance {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut inst = Instance::new();
    let mut opts = [(0.0, 0.0); 8];
    for _ in 0..n {
        let base: f64 = rng.random_range(0.05..0.9);
        let taste: f64 = rng.random_range(0.5..1.5);
        for j in 0..8 {
            let q = base * (1.0 + (SCALES[j] - 1.0) * taste) * rng.random_range(0.98..1.02);
            opts[j] = (COSTS[j], q.clamp(0.0, 1.0));
        }
        inst.push(&opts, Some(rng.random_range(0..8)));
    }
    inst
}

fn bench(c: &mut Criterion) {
    let mut sizes = vec![10_000usize, 100_000, 1_000_000];
    if std::env::var_os("HYDRUS_BENCH_HUGE").is_some() {
        sizes.push(10_000_000);
    }
    let mut g = c.benchmark_group("solve");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in sizes {
        let inst = instance(n, 7);
        let budget = inst.logged_budget();
        g.bench_with_input(BenchmarkId::new("exact", n), &inst, |b, inst| {
            b.iter(|| solve_exact(inst, budget))
        });
        g.bench_with_input(BenchmarkId::new("bisection_1e-9", n), &inst, |b, inst| {
            b.iter(|| solve_bisection(inst, budget, 1e-9))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
