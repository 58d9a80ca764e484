//! The per-request decision, header parsing included: rollout bucket, QoE header parse, k lookup,
//! argmax; for 4, 8 and 32 strategies. And the log record's JSON encoding.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hydrus_filters::filter::{Candidates, Input, LogValue, Problems, RequestState, Strategies};
use hydrus_filters::log::{AccessRef, Extra, RecordRef, ValueInfoRef};
use hydrus_filters::outcome::RequestEnd;

/// A request's end as the chain's `done` sees it.
const END: RequestEnd = RequestEnd {
    status: 200,
    grpc_status: None,
    client_gone: false,
    upstream_failed: false,
    seconds: 0.004,
};
use hydrus_filters::route::{compile_route, Route, RouteConfig, RouteEnv};
use hydrus_filters::{
    Group, HydrusRule, KTable, QoeRange, RequestInputs, Rollout, Strategy, StrategySet,
};
use std::hint::black_box;

fn filter(m: usize) -> HydrusRule {
    filter_on(m, 1)
}

/// `m` strategies costing `resources` resources (one: plain numbers).
fn filter_on(m: usize, resources: usize) -> HydrusRule {
    let strategies = (0..m)
        .map(|j| {
            let c = 4.0 + 2.0 * j as f64;
            let cost = if resources == 1 {
                c.into()
            } else {
                hydrus_filters::resource::PerResource::Many(
                    (0..resources)
                        .map(|r| {
                            (
                                format!("r{r}"),
                                c * (1.0 + r as f64) / (1.0 + j as f64 % 3.0),
                            )
                        })
                        .collect(),
                )
            };
            Strategy {
                name: format!("s{}", (j + 1) * 10),
                cost,
                qoe_scale: 0.85 + 0.3 * (j as f64 / m as f64).sqrt(),
            }
        })
        .collect();
    HydrusRule::new(
        StrategySet::new(strategies, "s10").unwrap(),
        QoeRange { min: 0.0, max: 1.0 },
    )
}

fn table() -> KTable {
    KTable::constant(900, &[("default", 0.004), ("feed", 0.01)]).unwrap()
}

/// A constant table with one `k` per resource `r0..rN`.
fn table_on(resources: usize) -> KTable {
    use hydrus_filters::hydrus::ktable::{KTableFile, Row};
    let names: Vec<String> = (0..resources).map(|r| format!("r{r}")).collect();
    let row = || {
        Row::Many(
            names
                .iter()
                .enumerate()
                .map(|(r, n)| (n.clone(), vec![0.002 * (1.0 + r as f64); 96]))
                .collect(),
        )
    };
    KTable::new(KTableFile {
        window_secs: 900,
        generated_at_ms: None,
        strategy_set: None,
        resources: Some(names.clone()),
        scenarios: [("default".to_string(), row()), ("feed".to_string(), row())].into(),
        expected: Default::default(),
    })
    .unwrap()
}

/// The hydrus filter alone, for 4, 8 and 32 strategies and both header forms.
fn bench_filter(c: &mut Criterion) {
    let table = table();
    let rollout = Rollout::new(50.0, "hydrus").unwrap();
    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    for m in [4usize, 8, 32] {
        let f = filter(m);
        let pairs: String = (0..m)
            .map(|j| format!("s{}={:.3}", (j + 1) * 10, 0.3 + j as f64 * 0.01))
            .collect::<Vec<_>>()
            .join(",");
        for (kind, header) in [("single", "0.4375".to_string()), ("pairs", pairs.clone())] {
            g.bench_with_input(BenchmarkId::new(kind, m), &header, |b, header| {
                b.iter(|| {
                    let group = rollout.assign(Some(black_box(b"user-123456".as_slice())));
                    let inputs = RequestInputs {
                        qoe: Some(black_box(header.as_bytes())),
                        scenario: Some(black_box(b"feed".as_slice())),
                        now_ms: black_box(1_795_374_637_211),
                    };
                    // Measure the treatment path whatever the bucket says.
                    let _ = group;
                    f.decide(Group::Treatment, &inputs, Some(&table), false)
                })
            });
        }
        // Strategies that cost 3 resources, one k each.
        let (f3, table3) = (filter_on(m, 3), table_on(3));
        g.bench_with_input(
            BenchmarkId::new("pairs_3_resources", m),
            &pairs,
            |b, header| {
                b.iter(|| {
                    let inputs = RequestInputs {
                        qoe: Some(black_box(header.as_bytes())),
                        scenario: Some(black_box(b"feed".as_slice())),
                        now_ms: black_box(1_795_374_637_211),
                    };
                    f3.decide(Group::Treatment, &inputs, Some(&table3), false)
                })
            },
        );
    }
    g.finish();
}

/// Criterion reports means; the goal is on the p99. Time 200,000 single decisions and print
/// the percentiles.
fn percentiles(what: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize];
    println!(
        "{what} single-shot (incl. ~20-40 ns of clock reads): p50 {} ns, p99 {} ns, p99.9 {} ns",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}

/// 8 strategies, per-strategy header (the slower form).
const PAIRS_8: &[u8] =
    b"s10=0.300,s20=0.310,s30=0.320,s40=0.330,s50=0.340,s60=0.350,s70=0.360,s80=0.370";

fn single_shot_filter() {
    single_shot("decision/pairs/8", &filter(8), &table());
    single_shot(
        "decision/pairs_3_resources/8",
        &filter_on(8, 3),
        &table_on(3),
    );
}

fn single_shot(what: &str, f: &HydrusRule, table: &KTable) {
    let ns: Vec<u64> = (0..200_000)
        .map(|i| {
            let t = std::time::Instant::now();
            let inputs = RequestInputs {
                qoe: Some(black_box(PAIRS_8)),
                scenario: Some(black_box(b"feed".as_slice())),
                now_ms: black_box(1_795_374_637_211 + i),
            };
            let d = f.decide(Group::Treatment, &inputs, Some(table), false);
            assert!(d.fallback.is_none(), "{what}: {:?}", d.fallback);
            black_box(d);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    percentiles(what, ns);
}

/// E2E: parse the external delay, find its bucket, draw the replica group.
fn bench_e2e(c: &mut Criterion) {
    let mut buckets = String::new();
    for b in 0..16 {
        buckets.push_str(&format!(
            "  - {{ max_ms: {}, route: [0.7, 0.3] }}\n",
            (b + 1) * 100
        ));
    }
    buckets.push_str("  - { route: [0.5, 0.5] }\n");
    let e2e_table =
        hydrus_filters::e2e::E2eTable::parse(&format!("groups: [fast, slow]\nbuckets:\n{buckets}"))
            .unwrap();
    c.bench_function("e2e_decision/17_buckets", |b| {
        let mut u = 0.0f64;
        b.iter(|| {
            u = (u + 0.618_033_988_7) % 1.0;
            hydrus_filters::e2e::decide(
                Some(black_box(b"412.5".as_slice())),
                Some(&e2e_table),
                false,
                u,
            )
        })
    });
}

/// The record as the sink thread encodes it: borrowed from what the request left.
fn bench_record(c: &mut Criterion) {
    let set8 = filter(8);
    let qoe = hydrus_filters::QoeVector::scaled(&set8.strategies, 0.5);
    let extra = [
        ("external_delay_ms", LogValue::F64(412.0)),
        ("e2e_bucket", LogValue::U64(3)),
    ];
    let record = RecordRef {
        ts_ms: 1_795_374_637_211,
        request_id: "17aeaac3aceba0fb8b2876aa24ad9b65",
        user_id: "user-123456",
        device_id: "device-42",
        scenario: "default",
        group: "hydrus",
        chosen: "s40",
        k: hydrus_filters::log::KRef(Some((set8.strategies.resources(), &[0.004]))),
        value_info: ValueInfoRef(Some((
            &set8.strategies as &dyn Strategies,
            &qoe as &dyn Candidates,
        ))),
        status: 200,
        upstream_ms: Some(2.764463),
        fallback: None,
        cluster: Some("ranking-large"),
        total_ms: Some(3.995905),
        cluster_load: Some(7),
        scenario_raw: None,
        error: None,
        would_choose: None,
        strategy_set: None,
        route: Some("rank"),
        grpc_status: None,
        // What every record now carries (the access fields of a traced request).
        access: AccessRef {
            client_addr: Some("10.0.0.9:51234"),
            method: Some("GET"),
            path: Some("/rank?user&n"),
            protocol: Some("HTTP/1.1"),
            endpoint: Some("10.0.0.7:8080"),
            attempts: Some(1),
            request_bytes: Some(0),
            response_bytes: Some(1432),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        },
        extra: Extra(&extra),
        escaped: &[],
    };
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("log_record_encode/8", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&record).encode_into(&mut buf);
            buf.len()
        })
    });
}

/// A route's whole chain as the edge runs it: rollout, then hydrus over 8 strategies (with its
/// fallback counters and scenario labels), from the same YAML a user writes; with `spend`, the
/// spend controller on (the request path reads its correction m); with `guard`, the rollout
/// guard (each request's end counted in its window).
fn chain(spend: bool, guard: bool) -> Route {
    let yaml = r#"
name: rank
cluster: ranking
filters:
  - rollout: { percent: 50 }
  - hydrus:
      default_strategy: s10
      ktable: { path: k.yaml }
      strategies:
        - { name: s10, cost: 4, qoe_scale: 0.85, set_query: { candidates: "10" } }
        - { name: s20, cost: 6, qoe_scale: 0.9, set_query: { candidates: "20" } }
        - { name: s30, cost: 8, qoe_scale: 0.95, set_query: { candidates: "30" } }
        - { name: s40, cost: 10, qoe_scale: 1.0, set_query: { candidates: "40" } }
        - { name: s50, cost: 12, qoe_scale: 1.02, set_query: { candidates: "50" } }
        - { name: s60, cost: 14, qoe_scale: 1.04, set_query: { candidates: "60" } }
        - { name: s70, cost: 16, qoe_scale: 1.06, set_query: { candidates: "70" } }
        - { name: s80, cost: 18, qoe_scale: 1.08, set_query: { candidates: "80" } }
"#;
    let mut yaml = if spend {
        format!("{yaml}      spend_control: {{}}\n")
    } else {
        yaml.to_string()
    };
    if guard {
        yaml = yaml.replace("{ percent: 50 }", "{ percent: 50, guard: {} }");
    }
    let rc: RouteConfig = serde_norway::from_str(&yaml).unwrap();
    let registry = prometheus::Registry::new();
    let kinds: Vec<_> = hydrus_filters::kinds()
        .map(|k| (k, k.metrics(&registry)))
        .collect();
    let fallbacks = prometheus::IntCounterVec::new(
        prometheus::Opts::new("f", "f"),
        &["route", "group", "reason"],
    )
    .unwrap();
    let identity = [
        "x-user-id",
        "x-device-id",
        "x-request-id",
        "x-qoe-score",
        "x-scenario",
    ]
    .map(http::HeaderName::from_static);
    let env = RouteEnv {
        file: std::path::Path::new("bench.yaml"),
        cluster_names: &["ranking".to_string()],
        identity: &identity,
        kinds: &kinds,
        fallbacks: &fallbacks,
    };
    let mut problems = Problems::default();
    let route = compile_route(&rc, "", "cluster", &env, &mut problems).unwrap();
    let k = serde_norway::to_string(&table().to_file()).unwrap();
    for t in route.chain.tables() {
        t.install(&k, "bench".into(), None, 0).unwrap();
    }
    route.chain.tables_changed();
    route
}

fn single_shot_chain(spend: bool, guard: bool) {
    let route = chain(spend, guard);
    let headers = http::HeaderMap::new();
    let ids: [Option<http::HeaderValue>; 5] = [
        Some(http::HeaderValue::from_static("user-123456")),
        None,
        None,
        Some(http::HeaderValue::from_bytes(PAIRS_8).unwrap()),
        Some(http::HeaderValue::from_static("feed")),
    ];
    // The request's start (the decision) and its end (the filters' counters and, with the
    // controller on, its spend record), timed apart.
    let (decide, done): (Vec<u64>, Vec<u64>) = (0..200_000)
        .map(|i| {
            let t = std::time::Instant::now();
            let input = Input {
                method: &http::Method::GET,
                path: "/rank",
                headers: &headers,
                now_ms: black_box(1_795_374_637_211 + i),
                ids: black_box(&ids),
            };
            let mut state = RequestState::new(0);
            route.chain.decide(&input, &mut state);
            let decide = t.elapsed().as_nanos() as u64;
            let t = std::time::Instant::now();
            route.chain.done(black_box(&state), &END);
            (decide, t.elapsed().as_nanos() as u64)
        })
        .unzip();
    let what = match (spend, guard) {
        (true, _) => "rollout+hydrus(spend_control)/8",
        (false, true) => "rollout(guard)+hydrus/8",
        (false, false) => "rollout+hydrus/8",
    };
    percentiles(&format!("chain/{what}"), decide);
    percentiles(&format!("chain-done/{what}"), done);
}

/// The outcome counter at a request's end (`hydrus_responses_total`), on a route as the proxy
/// compiles it: one lookup and one add.
fn single_shot_outcome() {
    let m = hydrus::metrics::Metrics::new();
    let text = "listen: 127.0.0.1:1\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:2\"]\nroutes:\n  - name: rank\n    cluster: a\n";
    let running = hydrus::config::load_str(std::path::Path::new("bench.yaml"), text, &m).unwrap();
    let handles = running.routes[0].handles();
    let ns: Vec<u64> = (0..200_000)
        .map(|i| {
            let end = RequestEnd {
                status: if i % 100 == 0 { 503 } else { 200 },
                ..END
            };
            let t = std::time::Instant::now();
            handles.response(0, hydrus_filters::Group::Treatment, black_box(&end).class());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    percentiles("outcome-counter", ns);
}

fn bench(c: &mut Criterion) {
    bench_filter(c);
    single_shot_filter();
    single_shot_chain(false, false);
    single_shot_chain(true, false);
    single_shot_chain(false, true);
    single_shot_outcome();
    bench_e2e(c);
    bench_record(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
