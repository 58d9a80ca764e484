//! The offline solver: exact (hull + weighted selection) against the paper's bisection, on
//! synthetic windows of 1e4 to 1e6 records x 8 strategies (1e7 with HYDRUS_BENCH_HUGE=1);
//! and end to end (`e2e`): the `hydrus` binary from JSON-lines files on disk to the written
//! k-table, with records/s and peak RSS, at 1e6 and 1e7 records x 8 strategies
//! (HYDRUS_BENCH_E2E_SIZES=comma-separated record counts to change them;
//! HYDRUS_BENCH_E2E_PREPARE=1 only writes the files, outside a quiet period). The e2e case
//! checks the table's k against the in-memory exact solver on the same records.
//! HYDRUS_BENCH_E2E_RESOURCES=1,3 runs each size with one resource and with three (the same
//! records, each strategy's cost split over `cpu`, `fs` and `gpu`), interleaved, and prints the
//! ratio; the three-resource table is checked against the in-memory multi-resource solve.
//!
//! `cargo bench --bench solver` runs both; `-- solve` only the solver, `-- e2e` only the end to
//! end case.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, BenchmarkId, Criterion};
use hydrus_filters::{KTable, LogRecord, ValueInfo};
use hydrus_solve::hydrus::algo::{solve_bisection, solve_exact, Instance};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const COSTS: [f64; 8] = [6.0, 8.0, 10.0, 14.0, 18.0, 24.0, 34.0, 48.0];
const SCALES: [f64; 8] = [0.86, 0.93, 1.0, 1.05, 1.08, 1.10, 1.12, 1.11];
const NAMES: [&str; 8] = ["s6", "s8", "s10", "s14", "s18", "s24", "s34", "s48"];
/// Windows of the day the e2e records fall in (15 minutes each).
const E2E_WINDOWS: u64 = 4;

/// One record like the paper's users: a base QoE, a taste for accuracy, noise per strategy;
/// and the logged choice.
fn user(rng: &mut rand_chacha::ChaCha8Rng, opts: &mut [(f64, f64); 8]) -> u32 {
    let base: f64 = rng.random_range(0.05..0.9);
    let taste: f64 = rng.random_range(0.5..1.5);
    for j in 0..8 {
        let q = base * (1.0 + (SCALES[j] - 1.0) * taste) * rng.random_range(0.98..1.02);
        opts[j] = (COSTS[j], q.clamp(0.0, 1.0));
    }
    rng.random_range(0..8)
}

/// `n` records in one window.
pub fn instance(n: usize, seed: u64) -> Instance {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut inst = Instance::new();
    let mut opts = [(0.0, 0.0); 8];
    for _ in 0..n {
        let chosen = user(&mut rng, &mut opts);
        inst.push(&opts, Some(chosen));
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

/// The e2e records, `n` of them, in the order written: (window, options, logged choice).
fn e2e_records(n: usize, mut each: impl FnMut(u64, &[(f64, f64); 8], u32)) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut opts = [(0.0, 0.0); 8];
    for i in 0..n as u64 {
        let chosen = user(&mut rng, &mut opts);
        each(i % E2E_WINDOWS, &opts, chosen);
    }
}

/// Resources of the multi-resource e2e case, in name order, and each strategy's share of its
/// cost in each: the cheap strategies spend CPU, the dear ones the GPU, the middle ones the
/// feature store (quarters: the costs stay short decimals, as configured costs are).
const RESOURCES: [&str; 3] = ["cpu", "fs", "gpu"];
const SHARES: [[f64; 3]; 8] = [
    [1.0, 0.25, 0.0],
    [1.0, 0.25, 0.0],
    [0.75, 0.5, 0.0],
    [0.5, 0.5, 0.25],
    [0.25, 0.5, 0.5],
    [0.25, 0.25, 0.75],
    [0.0, 0.25, 1.0],
    [0.0, 0.25, 1.25],
];

/// Strategy `j`'s cost vector when its cost `c` is split over [`RESOURCES`].
fn split(j: usize, c: f64) -> [f64; 3] {
    SHARES[j].map(|s| c * s)
}

/// The JSON-lines file of `n` e2e records over `resources` resources (1 or 3; written once,
/// kept for later runs).
fn e2e_file(n: usize, resources: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("solver-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let path = if resources == 1 {
        dir.join(format!("{n}.jsonl"))
    } else {
        dir.join(format!("{n}-r{resources}.jsonl"))
    };
    if path.exists() {
        return path;
    }
    let tmp = dir.join(format!("{n}.jsonl.tmp"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut buf = Vec::with_capacity(1024);
    let mut i = 0u64;
    e2e_records(n, |w, opts, chosen| {
        let rec = LogRecord {
            ts_ms: w * 900_000 + i % 900_000,
            request_id: format!("r{i}"),
            user_id: format!("u{}", i % 1_000_003),
            scenario: "default".into(),
            group: if i % 10 == 0 { "control" } else { "hydrus" }.into(),
            chosen: NAMES[chosen as usize].into(),
            k: Some(0.0012.into()),
            value_info: opts
                .iter()
                .zip(NAMES)
                .enumerate()
                .map(|(j, (&(cost, qoe), name))| ValueInfo {
                    strategy: name.into(),
                    cost: if resources == 1 {
                        cost.into()
                    } else {
                        hydrus_filters::log::PerResource::Many(
                            RESOURCES
                                .iter()
                                .zip(split(j, cost))
                                .map(|(r, c)| (r.to_string(), c))
                                .collect(),
                        )
                    },
                    qoe,
                })
                .collect(),
            status: 200,
            upstream_ms: Some(12.5),
            cluster: Some("rank-a".into()),
            total_ms: Some(13.1),
            ..Default::default()
        };
        buf.clear();
        rec.encode_into(&mut buf);
        f.write_all(&buf).unwrap();
        i += 1;
    });
    f.flush().unwrap();
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The in-memory exact solver's k per window, and whether the table's k makes the same
/// decision for every record.
fn check_exact(n: usize, table: &KTable) -> (usize, f64) {
    let mut pools: Vec<Instance> = (0..E2E_WINDOWS).map(|_| Instance::new()).collect();
    e2e_records(n, |w, opts, chosen| {
        pools[w as usize].push(opts, Some(chosen))
    });
    let mut differing = 0;
    let mut worst_rel: f64 = 0.0;
    for (w, inst) in pools.iter().enumerate() {
        let want = solve_exact(inst, inst.logged_budget());
        let got = table.k(0, w).unwrap();
        worst_rel = worst_rel.max((got - want.k).abs() / want.k.abs().max(1e-300));
        differing += (0..inst.len())
            .filter(|&i| inst.live_choice(i, got) != inst.live_choice(i, want.k))
            .count();
    }
    (differing, worst_rel)
}

/// [`check_exact`] for the three-resource records: the in-memory multi-resource solve per
/// window against the table's `k`s.
fn check_exact_multi(n: usize, table: &KTable) -> (usize, f64) {
    use hydrus_solve::multi::{live_choice, MultiBudget, MultiSummary};
    let logged = || MultiBudget(vec![None; 3]);
    let mut pools: Vec<MultiSummary> = (0..E2E_WINDOWS)
        .map(|_| MultiSummary::new(3, usize::MAX, logged()))
        .collect();
    let (mut costs, mut qoe) = (Vec::new(), Vec::new());
    let row = |opts: &[(f64, f64); 8], costs: &mut Vec<f64>, qoe: &mut Vec<f64>| {
        costs.clear();
        qoe.clear();
        for (j, &(c, q)) in opts.iter().enumerate() {
            costs.extend(split(j, c));
            qoe.push(q);
        }
    };
    e2e_records(n, |w, opts, chosen| {
        row(opts, &mut costs, &mut qoe);
        pools[w as usize].push(&costs, &qoe, chosen as usize);
    });
    let want: Vec<Vec<f64>> = pools.iter().map(|p| p.solve().k).collect();
    drop(pools);
    let got: Vec<Vec<f64>> = (0..E2E_WINDOWS as usize)
        .map(|w| table.ks(0, w).unwrap().to_vec())
        .collect();
    let mut worst_rel: f64 = 0.0;
    for (g, w) in got.iter().zip(&want) {
        let scale = w.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-300);
        for (a, b) in g.iter().zip(w) {
            worst_rel = worst_rel.max((a - b).abs() / scale);
        }
    }
    let mut differing = 0;
    e2e_records(n, |w, opts, _| {
        row(opts, &mut costs, &mut qoe);
        let w = w as usize;
        differing +=
            usize::from(live_choice(&costs, &qoe, &got[w]) != live_choice(&costs, &qoe, &want[w]));
    });
    (differing, worst_rel)
}

/// The `hydrus` binary the end-to-end runs time: `HYDRUS_BIN`, else the workspace's release
/// build (`cargo build --release` first; the solver crate has no binary of its own).
fn hydrus_bin() -> std::path::PathBuf {
    let bin = std::env::var_os("HYDRUS_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/hydrus"),
        std::path::PathBuf::from,
    );
    assert!(
        bin.exists(),
        "{}: no hydrus binary: run `cargo build --release` first, or set HYDRUS_BIN",
        bin.display()
    );
    bin
}

/// `hydrus solve` on `n` records: wall time, and the binary's own peak RSS (its JSON report).
fn e2e_run(file: &Path, out: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let o = std::process::Command::new(hydrus_bin())
        .args(["solve", "--format", "json", "--logs"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let wall = started.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (wall, report["peak_rss_bytes"].as_u64().unwrap_or(0))
}

fn end_to_end() {
    let sizes: Vec<usize> = std::env::var("HYDRUS_BENCH_E2E_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000]);
    let resources: Vec<usize> = std::env::var("HYDRUS_BENCH_E2E_RESOURCES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1]);
    println!("e2e: hydrus solve, JSON lines on disk -> k-table, 8 strategies, {E2E_WINDOWS} windows, resources {resources:?}, 3 runs each (median; resource counts interleaved)");
    for n in sizes {
        let files: Vec<(usize, PathBuf)> = resources.iter().map(|&r| (r, e2e_file(n, r))).collect();
        if std::env::var_os("HYDRUS_BENCH_E2E_PREPARE").is_some() {
            for (_, file) in &files {
                println!("e2e/{n}: {} written", file.display());
            }
            continue;
        }
        let mut runs: Vec<Vec<(Duration, u64)>> = vec![Vec::new(); files.len()];
        // Once each to bring the file into the page cache, then the measured runs in turn.
        for round in 0..4 {
            for (i, (_, file)) in files.iter().enumerate() {
                let run = e2e_run(file, &file.with_extension("ktable.yaml"));
                if round > 0 {
                    runs[i].push(run);
                }
            }
        }
        let mut medians = Vec::new();
        for ((r, file), mut runs) in files.iter().zip(runs) {
            runs.sort();
            let (wall, _) = runs[1];
            medians.push(wall.as_secs_f64());
            let bytes = std::fs::metadata(file).unwrap().len();
            let peak = runs.iter().map(|r| r.1).max().unwrap_or(0);
            let out = file.with_extension("ktable.yaml");
            let table = KTable::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
            let (differing, worst_rel) = if *r == 1 {
                check_exact(n, &table)
            } else {
                check_exact_multi(n, &table)
            };
            println!(
                "e2e/{n} x {r} resource(s): {:.2} s wall ({:.2}-{:.2}), {:.2} M records/s, {:.0} MB/s, peak RSS {:.0} MB; \
                 k vs in-memory exact: max relative difference {worst_rel:.1e}, {differing} decisions differ",
                wall.as_secs_f64(),
                runs[0].0.as_secs_f64(),
                runs[2].0.as_secs_f64(),
                n as f64 / wall.as_secs_f64() / 1e6,
                bytes as f64 / wall.as_secs_f64() / 1e6,
                peak as f64 / 1e6,
            );
        }
        if medians.len() > 1 {
            println!(
                "e2e/{n}: wall time against one resource: {:?}",
                medians
                    .iter()
                    .map(|m| format!("{:.2}x", m / medians[0]))
                    .collect::<Vec<_>>()
            );
        }
    }
}

fn main() {
    // The first argument that is not a flag filters, as criterion's does.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let e2e_only = filter.as_deref().is_some_and(|f| f.contains("e2e"));
    if !e2e_only {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    if e2e_only || filter.is_none() {
        end_to_end();
    }
}
