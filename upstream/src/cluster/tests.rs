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
        discovery: None,
    };
    let specs = endpoints.iter().map(|a| Endpoint::Addr(*a)).collect();
    let found: Vec<(SocketAddr, String)> =
        endpoints.iter().map(|a| (*a, a.ip().to_string())).collect();
    Cluster::new("c", source, specs, &found, Transport::default())
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
fn the_endpoints_left_share_the_turns_of_one_set_aside() {
    let c = cluster(LbPolicy::RoundRobin, 3);
    // Endpoint 1 hangs for longer than stall_after: it gets nothing new, and the other two
    // share its turns evenly (not the one after it in line taking them all).
    c.outliers.started(1, 0);
    let now = 10_000;
    let mut counts = [0; 3];
    for _ in 0..300 {
        counts[c.select(None, &Tried::default(), now).expect("one")] += 1;
    }
    assert_eq!(counts, [150, 0, 150]);
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

#[test]
fn consistent_hashing_moves_about_one_in_n_users_when_an_endpoint_comes_or_goes() {
    let c = cluster(LbPolicy::ConsistentHash, 10);
    let pick = |c: &Cluster, u: usize| {
        let i = c.select(Some(format!("user-{u}").as_bytes()), &Tried::default(), 0);
        c.endpoints[i.expect("one")]
    };
    let users = 5000;
    let before: Vec<SocketAddr> = (0..users).map(|u| pick(&c, u)).collect();
    // One more (the name's answer grew): only users that go to the new one move.
    let mut grown = c.found.clone();
    grown.push((SocketAddr::from(([127, 0, 0, 1], 9100)), "n".into()));
    let g = c.rebuilt(&grown);
    let moved = (0..users).filter(|&u| pick(&g, u) != before[u]).count();
    let to_new = (0..users).filter(|&u| pick(&g, u).port() == 9100).count();
    assert_eq!(moved, to_new, "a user moved between endpoints that stayed");
    assert!(
        moved < users * 2 / 11,
        "{moved} of {users} moved (1/11 is {})",
        users / 11
    );
    // One fewer: only the users of the one removed move.
    let shrunk: Vec<_> = c
        .found
        .iter()
        .filter(|(a, _)| a.port() != 9003)
        .cloned()
        .collect();
    let s = c.rebuilt(&shrunk);
    for (u, was) in before.iter().enumerate() {
        if was.port() != 9003 {
            assert_eq!(
                pick(&s, u),
                *was,
                "user {u} moved off an endpoint that stayed"
            );
        }
    }
}

#[test]
fn a_new_endpoint_set_keeps_the_ejections_of_the_addresses_that_stay() {
    let c = cluster(LbPolicy::RoundRobin, 3);
    for _ in 0..5 {
        c.outliers.record(1, Outcome::Failure, 1_000);
    }
    assert!(!c.outliers.available(1, 1_001));
    // 127.0.0.1:9001 stays (now at position 0); 9000 and 9002 go; 9100 joins.
    let next = vec![
        (SocketAddr::from(([127, 0, 0, 1], 9001)), "x".to_string()),
        (SocketAddr::from(([127, 0, 0, 1], 9100)), "x".to_string()),
    ];
    let n = c.rebuilt(&next);
    assert_eq!(n.position(next[0].0), Some(0));
    assert!(
        !n.outliers.available(0, 1_001),
        "the ejection was carried over"
    );
    assert!(n.outliers.available(1, 1_001));
    assert_eq!(n.endpoints.len(), 2);
}

#[test]
fn a_cluster_without_endpoints_picks_none() {
    let c = cluster(LbPolicy::ConsistentHash, 0);
    assert_eq!(c.select(Some(b"u"), &Tried::default(), 0), None);
    let c = cluster(LbPolicy::RoundRobin, 0);
    assert_eq!(c.select(None, &Tried::default(), 0), None);
}
