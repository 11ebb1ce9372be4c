//! The socket rules on synthetic timelines: CLOSE_WAIT leaks, pool
//! saturation, connect failures, and what a sample counts per endpoint.

use super::*;

#[test]
fn pooled_close_wait_sockets_up_to_the_pool_size_do_not_fire() {
    let mut w = World::new();
    // Ten sockets from a burst of concurrent calls, idle in CLOSE_WAIT for
    // long while the periodic task keeps using the pool's top socket.
    for i in 0..10 {
        w.socket(10 + i, 900 + u64::from(i), IRONIC, TCP_ESTABLISHED);
    }
    w.tick(0);
    w.now = 20 * S;
    for i in 0..10u64 {
        w.set_state(900 + i, TCP_CLOSE_WAIT);
    }
    for t in 20..=1300u64 {
        w.tick(t * S);
        if t % 60 == 0 {
            let key = w.call(1, "GET", "/v1/nodes/detail", "", false);
            w.answer(key, 200);
        }
    }
    assert!(w.fired(Rule::SocketCloseWaitLeak).is_empty());
}

#[test]
fn connections_accepted_on_a_listener_are_no_endpoint() {
    let mut w = World::new();
    let local = |w: &mut World, inode: u64, local: &str, remote: &str| {
        w.ledger.sockets.get_mut(&inode).unwrap().tuple = sockets::tuple_of(local, remote);
    };
    w.socket(5, 500, "0.0.0.0:0", TCP_LISTEN);
    local(&mut w, 500, "0.0.0.0:8080", "0.0.0.0:0");
    for i in 0..50 {
        let client = format!("127.0.0.1:{}", 50000 + i);
        w.socket(10 + i, 600 + u64::from(i), &client, TCP_CLOSE_WAIT);
        local(&mut w, 600 + u64::from(i), "127.0.0.1:8080", &client);
    }
    w.socket(70, 700, IRONIC, TCP_ESTABLISHED);
    w.tick(0);
    let endpoints = &w.history.latest().unwrap().endpoints;
    let keys: Vec<String> = endpoints.keys().map(ToString::to_string).collect();
    assert_eq!(keys, [IRONIC]);
}

#[test]
fn a_sample_keeps_the_busiest_endpoints_and_every_one_with_a_health_record() {
    let mut w = World::new();
    let remotes = sockets::MAX_ENDPOINTS as u32 + 100;
    for i in 0..remotes {
        let remote = format!("127.0.{}.{}:80", 1 + i / 250, 1 + i % 250);
        w.socket(10 + i, 1000 + u64::from(i), &remote, TCP_ESTABLISHED);
    }
    // The last remote is the busiest: three sockets, two in CLOSE_WAIT.
    let busiest = format!("127.0.{}.{}:80", 1 + (remotes - 1) / 250, 1 + (remotes - 1) % 250);
    w.socket(5000, 9000, &busiest, TCP_CLOSE_WAIT);
    w.socket(5001, 9001, &busiest, TCP_CLOSE_WAIT);
    // A refused endpoint has no socket open but a health record.
    let refused: SocketAddr = "10.0.0.1:6385".parse().unwrap();
    w.process().endpoints.entry(refused).or_default().refused = 3;
    w.tick(0);
    let endpoints = &w.history.latest().unwrap().endpoints;
    assert_eq!(endpoints.len(), sockets::MAX_ENDPOINTS + 1);
    let busiest = &endpoints[&busiest.parse().unwrap()];
    assert_eq!((busiest.open, busiest.close_wait), (3, 2));
    assert_eq!(endpoints[&refused].refused, 3);
}

#[test]
fn close_wait_sockets_beyond_the_pool_or_growing_fire() {
    let mut w = World::new();
    w.rules.socket_close_wait_leak.window_s = 200;
    // One new session per 10 s, never closed: each socket goes CLOSE_WAIT
    // when Ironic drops the idle keep-alive connection.
    for t in 0..=240u64 {
        w.tick(t * S);
        if t % 10 == 0 {
            let fd = 10 + t as u32;
            w.socket(fd, 1000 + t, IRONIC, TCP_ESTABLISHED);
            w.set_state(1000 + t, TCP_CLOSE_WAIT);
        }
    }
    let fired = w.fired(Rule::SocketCloseWaitLeak);
    assert_eq!(fired.len(), 1, "{fired:?}");
    let reasons = fired[0].evidence["reasons"].as_array().unwrap().clone();
    assert!(
        reasons.contains(&"exceeds_pool_size".into()) && reasons.contains(&"growing".into()),
        "{reasons:?}"
    );
    assert_eq!(fired[0].endpoint.as_deref(), Some("ironic-api"));
    assert!(
        fired[0].summary.contains("ironic-api 127.0.0.1:6385"),
        "{}",
        fired[0].summary
    );
}

#[test]
fn more_connections_than_the_pool_or_churn_saturate_it() {
    let mut w = World::new();
    for i in 0..11 {
        w.socket(10 + i, 700 + u64::from(i), IRONIC, TCP_ESTABLISHED);
    }
    w.tick(0);
    assert_eq!(w.fired(Rule::ConnectionPoolSaturation).len(), 1);
    w.close(20);
    w.tick(S);
    assert!(
        w.fired(Rule::ConnectionPoolSaturation).is_empty(),
        "ten fit the pool"
    );
    let remote: SocketAddr = IRONIC.parse().unwrap();
    w.process().endpoints.entry(remote).or_default().connects = 500;
    w.tick(2 * S);
    assert_eq!(w.fired(Rule::ConnectionPoolSaturation).len(), 1, "churn");
}

#[test]
fn connect_failures_count_within_the_window() {
    let mut w = World::new();
    let remote: SocketAddr = IRONIC.parse().unwrap();
    w.tick(0);
    for (t, refused) in [(1, 1), (2, 2), (3, 3)] {
        w.process().endpoints.entry(remote).or_default().refused = refused;
        w.tick(t * S);
    }
    let fired = w.fired(Rule::ConnectFailures);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].evidence["refused"], 3);
    w.tick(70 * S);
    assert!(w.fired(Rule::ConnectFailures).is_empty());
}
