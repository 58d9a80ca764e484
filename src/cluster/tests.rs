use super::*;
use hydrus_filters::outlier::Outcome;

fn cluster(lb: LbPolicy, n: u16) -> Cluster {
    let endpoints: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect();
    let source = ClusterConfig {
        endpoints: endpoints.iter().map(|a| a.to_string()).collect(),
        connect_timeout: default_connect_timeout(),
        read_timeout: default_read_timeout(),
        idle_timeout: default_idle_timeout(),
        lb,
        health_check: None,
        outlier: OutlierSection::default(),
        retry: RetryConfig::default(),
        protocol: UpstreamProtocol::Http1,
        tls: None,
    };
    Cluster::new("c", source, endpoints, Transport::default())
}

#[test]
fn round_robin_spreads_and_skips_what_was_tried() {
    let c = cluster(LbPolicy::RoundRobin, 3);
    let mut counts = [0; 3];
    for _ in 0..300 {
        let i = c.select(None, &Tried::default(), 0).expect("one");
        counts[i] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
    let mut tried = Tried::default();
    for _ in 0..3 {
        let i = c.select(None, &tried, 0).expect("untried left");
        assert!(!tried.contains(i));
        tried.push(i);
    }
    assert_eq!(c.select(None, &tried, 0), None);
}

#[test]
fn consistent_hash_keeps_a_user_on_one_endpoint_until_it_is_ejected() {
    let c = cluster(LbPolicy::ConsistentHash, 4);
    let first = c.select(Some(b"alice"), &Tried::default(), 0).expect("one");
    for _ in 0..20 {
        assert_eq!(c.select(Some(b"alice"), &Tried::default(), 0), Some(first));
    }
    let users: BTreeSet<usize> = (0..200)
        .filter_map(|u| c.select(Some(format!("u{u}").as_bytes()), &Tried::default(), 0))
        .collect();
    assert_eq!(users.len(), 4, "users spread over every endpoint");
    for _ in 0..5 {
        c.outliers.started(first, 0);
        c.outliers.record(first, Outcome::Failure, 0);
    }
    let moved = c.select(Some(b"alice"), &Tried::default(), 1).expect("one");
    assert_ne!(moved, first, "an ejected endpoint's users go elsewhere");
    assert_eq!(c.select(Some(b"alice"), &Tried::default(), 1), Some(moved));
}

#[test]
fn everything_out_means_everything_in() {
    let c = cluster(LbPolicy::RoundRobin, 2);
    c.outliers.started(0, 0);
    c.outliers.started(1, 0);
    // Both hung for longer than stall_after: neither is available, both are still used.
    let now = 10_000;
    let picked: BTreeSet<usize> = (0..10)
        .filter_map(|_| c.select(None, &Tried::default(), now))
        .collect();
    assert_eq!(picked.len(), 2);
}
