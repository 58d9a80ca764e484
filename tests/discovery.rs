//! Endpoints that move, through the real binary and a real DNS server (dnsmasq on a loopback
//! port): a name's addresses go 2 -> 4 -> 1 under load without a failed request, a name that
//! does not resolve yet leaves its cluster unavailable (503, not ready) until it does, a
//! resolver that goes away changes nothing that serves, a new address joins only once it passes
//! its health check. The upstreams listen on 127.0.0.2, .3, ... at one port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::dns::{hosts, Dns};
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "ranker.hydrus.test";

/// Upstreams at 127.0.0.2 .. 127.0.0.(1+n), all on one port.
fn replicas(n: u8) -> Vec<Upstream> {
    loop {
        let port = free_port();
        let ups: Vec<_> = (2..2 + n)
            .map(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:{port}")))
            .collect();
        if ups.iter().any(Result::is_err) {
            continue;
        }
        drop(ups);
        return (2..2 + n)
            .map(|i| Upstream::start_on(&format!("r{i}"), &format!("127.0.0.{i}:{port}")))
            .collect();
    }
}

fn config(dns: &Dns, port: u16, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{port}}\nadmin:\n  listen: 127.0.0.1:{{admin}}\n\
         clusters:\n  ranking:\n    endpoints: [\"{NAME}:{port}\"]\n    lb: consistent_hash\n\
         \x20   discovery:\n      interval: 1s\n      resolver: {}\n{extra}\
         route:\n  cluster: ranking\n",
        dns.addr
    )
}

/// `NAME` at these replicas' addresses, as a hosts file.
fn named(ups: &[Upstream]) -> String {
    let ips: Vec<String> = ups.iter().map(|u| u.addr.ip().to_string()).collect();
    hosts(NAME, &ips.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A DNS server answering `NAME` with the first `listed` replicas, and hydrus in front of the
/// name (re-resolved every second; `extra`: more of the cluster's section).
fn behind_the_name(ups: &[Upstream], listed: usize, extra: &str) -> (Dns, Hydrus) {
    let dns = Dns::start(&named(&ups[..listed]));
    let h = Hydrus::start(&config(&dns, ups[0].addr.port(), extra));
    (dns, h)
}

/// Clients sending until stopped (at most 60 s): requests sent, and those not answered 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(h: &Hydrus, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let url = h.url("/rank");
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(60);
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        n += 1;
                        let user = format!("u{c}-{}", n % 500);
                        let ok = matches!(get_with(&url, &[("x-user-id", &user)]), Ok((200, _)));
                        sent.fetch_add(1, Ordering::SeqCst);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failed,
            threads,
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// How long until `up` sees a request (bounded by `limit`).
fn first_request_within(up: &Upstream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let before = up.count();
    eventually(limit, || up.count() > before).then(|| t0.elapsed())
}

#[test]
fn addresses_that_come_and_go_under_load_cost_no_request() {
    let ups = replicas(4);
    let (dns, h) = behind_the_name(&ups, 2, "");
    let endpoints =
        |h: &Hydrus| metric_of(h, "hydrus_cluster_endpoints", &[("cluster", "ranking")]);
    assert_eq!(endpoints(&h), 2.0, "both addresses of the name at start");

    let load = Load::start(&h, 4);
    assert!(eventually(Duration::from_secs(10), || ups[0].count() > 0
        && ups[1].count() > 0));
    assert_eq!(
        ups[2].count() + ups[3].count(),
        0,
        "addresses not in DNS get nothing"
    );

    // 2 -> 4: the new ones get traffic within interval + 1 s.
    dns.serve(&named(&ups));
    let joined = [&ups[2], &ups[3]].map(|u| first_request_within(u, Duration::from_secs(6)));
    eprintln!("new addresses' first requests after the DNS change: {joined:?}");
    assert!(
        joined.iter().all(Option::is_some),
        "{joined:?}\n{}",
        h.log()
    );
    assert!(eventually(Duration::from_secs(5), || endpoints(&h) == 4.0));

    // 4 -> 1: the removed ones get no new request after interval + 1 s.
    dns.serve(&named(&ups[3..]));
    assert!(
        eventually(Duration::from_secs(6), || endpoints(&h) == 1.0),
        "{}",
        h.log()
    );
    let t_removed = Instant::now();
    std::thread::sleep(Duration::from_millis(300)); // requests in flight finish
    let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    std::thread::sleep(Duration::from_secs(2));
    let later: Vec<usize> = ups.iter().map(Upstream::count).collect();
    eprintln!(
        "removed in {:?} after the change: {counts:?} -> {later:?}",
        t_removed.elapsed()
    );
    assert_eq!(
        &later[..3],
        &counts[..3],
        "removed addresses got new requests"
    );
    assert!(later[3] > counts[3], "the one left serves");

    let (sent, failed) = load.finish();
    eprintln!("{sent} requests through 2 -> 4 -> 1 endpoints, {failed} failed");
    assert!(sent > 200, "{sent}");
    assert_eq!(failed, 0, "{}", h.log());

    let m = h.metrics();
    let changed = metric_value(
        &m,
        r#"hydrus_discovery_updates_total{cluster="ranking",result="changed"}"#,
    );
    assert!(changed >= Some(2.0), "{m}");
    // The series of the addresses gone are gone.
    assert!(!m.contains(&format!("endpoint=\"{}\"", ups[0].addr)), "{m}");
    assert!(m.contains(&format!("endpoint=\"{}\"", ups[3].addr)), "{m}");
}

#[test]
fn a_name_that_does_not_resolve_yet_is_unavailable_until_it_does() {
    let ups = replicas(1);
    let port = ups[0].addr.port();
    let dns = Dns::start("");
    let dir = tempfile::tempdir().unwrap();
    let mut h = Hydrus::launch(dir, &config(&dns, port, ""), None);
    // Up, but not ready: the cluster has no endpoint; its requests are 503.
    assert!(
        eventually(Duration::from_secs(20), || {
            matches!(get(&format!("{}/ready", h.admin())), Ok((503, _)))
        }),
        "{}",
        h.log()
    );
    assert!(matches!(get(&h.url("/rank")), Ok((503, _))));
    assert!(
        h.log().contains(NAME),
        "the log names what did not resolve:\n{}",
        h.log()
    );

    dns.serve(&named(&ups));
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(6), || matches!(
            get(&h.url("/rank")),
            Ok((200, _))
        )),
        "{}",
        h.log()
    );
    eprintln!("the name served after {:?}", t0.elapsed());
    h.wait_ready();
    assert_eq!(ups[0].count(), 1);
    h.terminate();
}

#[test]
fn a_resolver_that_goes_away_changes_nothing_that_serves() {
    let ups = replicas(2);
    let (mut dns, h) = behind_the_name(&ups, 2, "");
    dns.stop();
    let failed = r#"hydrus_discovery_updates_total{cluster="ranking",result="failed"}"#;
    assert!(
        eventually(Duration::from_secs(15), || {
            metric_value(&h.metrics(), failed) >= Some(1.0)
        }),
        "{}",
        h.metrics()
    );
    for i in 0..40 {
        let (status, _) = get_with(&h.url("/rank"), &[("x-user-id", &format!("u{i}"))]).unwrap();
        assert_eq!(status, 200);
    }
    assert!(
        ups[0].count() > 0 && ups[1].count() > 0,
        "both addresses kept"
    );
    assert_eq!(
        metric_of(&h, "hydrus_cluster_endpoints", &[("cluster", "ranking")]),
        2.0
    );
    assert!(matches!(get(&format!("{}/ready", h.admin())), Ok((200, _))));
}

#[test]
fn a_new_address_joins_once_it_passes_its_health_check() {
    let ups = replicas(2);
    ups[1].health_status.store(500, Ordering::SeqCst);
    let check = "    health_check: { path: /healthz, interval: 1s, timeout: 500ms }\n";
    let (dns, h) = behind_the_name(&ups, 1, check);
    dns.serve(&named(&ups));
    // Resolved again (several times), but the new address fails its check: it stays out.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..30 {
        let _ = get_with(&h.url("/rank"), &[("x-user-id", &format!("u{i}"))]);
    }
    assert_eq!(
        ups[1].count(),
        0,
        "an address that fails its check took requests"
    );
    assert_eq!(
        metric_of(&h, "hydrus_cluster_endpoints", &[("cluster", "ranking")]),
        1.0
    );
    // It passes: it joins at the next resolution.
    ups[1].health_status.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(6), || {
            let _ = get_with(&h.url("/rank"), &[("x-user-id", "x")]);
            let _ = get(&h.url("/rank"));
            ups[1].count() > 0
        }),
        "{}",
        h.log()
    );
}

#[test]
fn a_fleet_cap_follows_the_number_of_peers_dns_finds() {
    let up = Upstream::start("a");
    let peers = "peers.hydrus.test";
    let mut dns = Dns::start(&hosts(peers, &["127.0.0.2", "127.0.0.3"]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ktable.yaml"),
        ktable(&[("default", 0.004)], None),
    )
    .unwrap();
    let spend = format!(
        "spend_control: {{ scenarios: {{ default: {{ fleet_max_cost_per_second: 1200, \
         proxies: {{ dns: \"{peers}:9901\", interval: 1s, resolver: \"{}\" }} }} }} }}",
        dns.addr
    );
    let t = pool_heavy_template(&[&up], None, 100).replace(
        "qoe_scale: 1.08 }",
        &format!("qoe_scale: 1.08 }}\n          {spend}"),
    );
    assert!(t.contains("fleet_max_cost_per_second"), "{t}");
    let h = Hydrus::start_in(dir, &t);
    let cap = |h: &Hydrus| {
        for i in 0..5 {
            let _ = get_with(&h.url("/rank"), &[("x-user-id", &format!("u{i}"))]);
        }
        metric_value(
            &h.metrics(),
            r#"hydrus_spend_target_cost_per_second{scenario="default"}"#,
        )
    };
    assert_eq!(
        cap(&h),
        Some(600.0),
        "two peers share 1200\n{}",
        h.metrics()
    );
    let fleet = format!("hydrus_fleet_proxies{{fleet=\"{peers}:9901\"}}");
    assert_eq!(metric_value(&h.metrics(), &fleet), Some(2.0));

    dns.serve(&hosts(
        peers,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
    ));
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || cap(&h) == Some(300.0)),
        "{}",
        h.metrics()
    );
    eprintln!(
        "the per-proxy cap followed 2 -> 4 peers after {:?}",
        t0.elapsed()
    );

    // The resolver goes away: the last count holds.
    dns.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cap(&h), Some(300.0));
    assert!(
        h.log().contains(peers),
        "the failed resolution is logged:\n{}",
        h.log()
    );
}

#[test]
fn a_reload_keeps_what_discovery_found_even_while_dns_is_down() {
    let ups = replicas(2);
    let (mut dns, h) = behind_the_name(&ups, 2, "");
    dns.stop();
    // The cluster's section changes, and a cluster whose name resolves nowhere joins.
    let more = "    connect_timeout: 500ms\n  later:\n    endpoints: [\"nowhere.hydrus.test:80\"]\n    discovery: { interval: 1s, resolver: \"127.0.0.1:9\" }\n";
    let reloads = |h: &Hydrus| metric_of(h, "hydrus_config_reloads_total", &[("result", "ok")]);
    let before = reloads(&h);
    h.rewrite_config(&config(&dns, ups[0].addr.port(), more));
    assert!(
        eventually(Duration::from_secs(15), || reloads(&h) > before),
        "{}",
        h.log()
    );
    let endpoints = |c: &str| metric_of(&h, "hydrus_cluster_endpoints", &[("cluster", c)]);
    assert_eq!(
        endpoints("ranking"),
        2.0,
        "the changed section starts on the addresses it had"
    );
    assert_eq!(endpoints("later"), 0.0);
    for i in 0..20 {
        let got = get_with(&h.url("/rank"), &[("x-user-id", &format!("u{i}"))]).unwrap();
        assert_eq!(got.0, 200);
    }
    assert!(
        matches!(get(&format!("{}/ready", h.admin())), Ok((200, _))),
        "a cluster a reload adds does not take readiness away"
    );
}

/// What one resolution of `eps` through `dns` found, as text.
fn resolved(dns: &Dns, eps: &[hydrus_discovery::Endpoint]) -> Vec<String> {
    let cfg = hydrus_discovery::DiscoveryConfig {
        interval: Duration::from_secs(1),
        resolver: Some(dns.addr),
    };
    match hydrus_discovery::resolve_blocking(eps, &cfg) {
        Ok(f) => f.addrs.iter().map(|(a, _)| a.to_string()).collect(),
        Err(e) => vec![e.label().to_string()],
    }
}

#[test]
fn the_resolver_finds_every_address_and_a_fresh_answer_after_a_change() {
    use hydrus_discovery::{resolve_blocking, DiscoveryConfig, Endpoint};
    let dns = Dns::start(&hosts("ranker.test", &["127.0.0.2", "127.0.0.3"]));
    let eps = [Endpoint::parse("ranker.test:8080").unwrap()];
    assert_eq!(resolved(&dns, &eps), ["127.0.0.2:8080", "127.0.0.3:8080"]);
    let cfg = DiscoveryConfig {
        interval: Duration::from_secs(1),
        resolver: Some(dns.addr),
    };
    let found = resolve_blocking(&eps, &cfg).unwrap();
    assert_eq!(
        found.addrs[0].1, "ranker.test",
        "the server name is the name written"
    );
    assert!(
        found.ttl.unwrap() <= Duration::from_secs(1),
        "{:?}",
        found.ttl
    );

    let answers =
        |want: &[&str]| eventually(Duration::from_secs(5), || resolved(&dns, &eps) == want);
    dns.serve(&hosts(
        "ranker.test",
        &["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"],
    ));
    let four = [
        "127.0.0.2:8080",
        "127.0.0.3:8080",
        "127.0.0.4:8080",
        "[::1]:8080",
    ];
    assert!(answers(&four), "{:?}", resolved(&dns, &eps));
    // A name with only an A record: the AAAA query's empty answer is not a failure.
    dns.serve(&hosts("ranker.test", &["127.0.0.5"]));
    assert!(answers(&["127.0.0.5:8080"]), "{:?}", resolved(&dns, &eps));
    // A name gone is an empty answer, told apart from a resolver that does not answer.
    dns.serve(&hosts("other.test", &["127.0.0.5"]));
    assert!(answers(&["empty"]), "{:?}", resolved(&dns, &eps));
}
