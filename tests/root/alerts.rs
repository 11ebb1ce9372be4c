//! Each rule on a real watched process doing the bad thing: it fires, with
//! its evidence, and resolves when the process stops. The must-not-fire
//! cases run for real too. The token rules are in secrets.rs.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    alerts::{FAST_RULES, Watched},
    require_root,
    servers::{Peer, Server},
};

const NODE: &str = "1ea5a24b-6b22-4891-834f-e44fa7929a51";
const INSTANCE: &str = "e17e0e2f-1627-42a2-8a99-c5040f62bdd4";
const FIRE: Duration = Duration::from_secs(30);

#[test]
fn fd_leak_fires_with_its_site_and_resolves_when_the_fds_go() {
    if !require_root("fd_leak_fires_with_its_site_and_resolves_when_the_fds_go") {
        return;
    }
    let mut w = Watched::start("alert-fd-leak", "lm-fdleak", FAST_RULES, &["serve"]);
    w.workload.send("drip files 100 150");
    let alert = w.await_alert("fd_leak", "firing", FIRE);
    assert_eq!(alert["key"], "file");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["labels"]["alertname"], "fd_leak");
    assert_eq!(alert["labels"]["process"], "lm-fdleak");
    let site = &alert["evidence"]["by_site"][0];
    assert_eq!(site["created_by"], "openat", "{alert:#}");
    assert!(alert["evidence"]["growth"].as_u64().unwrap() >= 10, "{alert:#}");
    assert!(
        alert["summary"].as_str().unwrap().contains("leaking file fds"),
        "{alert:#}"
    );
    w.workload.expect_within("dripped", FIRE);
    w.workload.send("free files");
    w.workload.expect("freed");
    w.await_alert("fd_leak", "resolved", FIRE);
}

#[test]
fn thread_leak_fires_but_a_burst_that_exits_does_not() {
    if !require_root("thread_leak_fires_but_a_burst_that_exits_does_not") {
        return;
    }
    let mut w = Watched::start("alert-thread-leak", "lm-threadleak", FAST_RULES, &["serve"]);
    // 40 threads that exit after 1 s: a quarter of the window at most.
    w.workload.send("burst 40 1000");
    w.workload.expect_within("burst-done", FIRE);
    w.assert_silent("thread_leak", Duration::from_secs(10));
    w.workload.send("drip threads 150 70");
    let alert = w.await_alert("thread_leak", "firing", FIRE);
    assert!(alert["evidence"]["growth"].as_u64().unwrap() >= 10, "{alert:#}");
    assert_eq!(
        alert["evidence"]["by_site"][0]["created_by"], "clone",
        "{alert:#}"
    );
    w.workload.expect_within("dripped", FIRE);
    w.workload.send("free threads");
    w.workload.expect_within("freed", FIRE);
    w.await_alert("thread_leak", "resolved", FIRE);
}

/// leakmon (re)started while a process leaks threads: the threads from
/// before are in the ledger, the growth after the start fires, and joining
/// them all (those older than the daemon too) resolves it.
#[test]
fn a_thread_leak_under_way_when_the_daemon_starts_fires_and_resolves() {
    if !require_root("a_thread_leak_under_way_when_the_daemon_starts_fires_and_resolves") {
        return;
    }
    let mut w = Watched::start_after(
        "alert-old-thread-leak",
        "lm-oldthreads",
        FAST_RULES,
        &["serve"],
        |workload| {
            workload.send("drip threads 150 70");
            let pid = workload.pid;
            let deadline = Instant::now() + Duration::from_secs(5);
            while tests::truth::proc_threads(pid).len() < 20 {
                assert!(Instant::now() < deadline, "the drip did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    );
    let ledger = w.daemon.ledger(w.pid);
    let before: Vec<&Value> = (ledger["threads"].as_array().unwrap().iter())
        .filter(|t| t["origin"] == "before_start")
        .collect();
    assert!(before.len() >= 20, "{ledger:#}");
    let alert = w.await_alert("thread_leak", "firing", FIRE);
    assert!(alert["evidence"]["growth"].as_u64().unwrap() >= 10, "{alert:#}");
    w.workload.expect_within("dripped", FIRE);
    w.workload.send("free threads");
    w.workload.expect_within("freed", FIRE);
    w.await_alert("thread_leak", "resolved", FIRE);
    let threads = |ledger: &Value| -> Vec<u64> {
        (ledger["threads"].as_array().unwrap().iter())
            .map(|t| t["tid"].as_u64().unwrap())
            .collect()
    };
    w.daemon.sync();
    let left = threads(&w.daemon.ledger(w.pid));
    let proc: Vec<u64> = tests::truth::proc_threads(w.pid)
        .keys()
        .map(|t| *t as u64)
        .collect();
    assert_eq!(
        left, proc,
        "every joined thread, older than the daemon or not, left the ledger"
    );
}

#[test]
fn a_growing_heap_fires_memory_leak_but_a_step_that_levels_off_does_not() {
    if !require_root("a_growing_heap_fires_memory_leak_but_a_step_that_levels_off_does_not") {
        return;
    }
    let mut w = Watched::start("alert-memory-leak", "lm-memleak", FAST_RULES, &["serve"]);
    // 64 MiB at once (a start-up, a cache filled), then nothing more.
    w.workload.send("drip memory 0 1 64");
    w.workload.expect_within("dripped", FIRE);
    w.assert_silent("memory_leak", Duration::from_secs(10));
    // 4 MiB every 400 ms: ~20 MiB more in each quarter of the 8 s window.
    w.workload.send("drip memory 400 40 4");
    let alert = w.await_alert("memory_leak", "firing", FIRE);
    assert_eq!(alert["key"], "memory");
    let evidence = &alert["evidence"];
    assert!(evidence["growth_mib"].as_f64().unwrap() >= 16.0, "{alert:#}");
    assert!(evidence["anon_mib"].as_f64().unwrap() >= 64.0 + 16.0, "{alert:#}");
    let floors: Vec<f64> = evidence["quarter_floors_mib"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap())
        .collect();
    assert!(floors.windows(2).all(|w| w[1] > w[0]), "{alert:#}");
    assert!(
        alert["summary"].as_str().unwrap().contains("leaking memory"),
        "{alert:#}"
    );
    w.workload.expect_within("dripped", FIRE);
    w.workload.send("free memory");
    w.workload.expect("freed");
    w.await_alert("memory_leak", "resolved", FIRE);
}

#[test]
fn close_wait_sockets_beyond_the_pool_fire_but_a_pooled_one_does_not() {
    if !require_root("close_wait_sockets_beyond_the_pool_fire_but_a_pooled_one_does_not") {
        return;
    }
    let server = Server::start(Peer::CloseAtOnce);
    let config = format!(
        "{FAST_RULES}\n[endpoints]\n\"{}\" = \"ironic-api\"\n",
        server.addr
    );
    let mut w = Watched::start("alert-close-wait", "lm-closewait", &config, &["serve"]);
    let addr = server.addr.to_string();
    w.workload.send(&format!("connect {addr}"));
    let first = w.workload.expect("connected")["fd"].as_u64().unwrap();
    // One idle socket in CLOSE_WAIT (pool size 3): the normal state.
    w.assert_silent("socket_close_wait_leak", Duration::from_secs(4));
    let mut fds = vec![first];
    for _ in 0..3 {
        w.workload.send(&format!("connect {addr}"));
        fds.push(w.workload.expect("connected")["fd"].as_u64().unwrap());
    }
    let alert = w.await_alert("socket_close_wait_leak", "firing", FIRE);
    assert_eq!(alert["labels"]["endpoint"], "ironic-api");
    assert_eq!(alert["key"], addr);
    let evidence = &alert["evidence"];
    assert_eq!(evidence["close_wait_over_min_age"], 4, "{alert:#}");
    assert!(
        evidence["reasons"]
            .as_array()
            .unwrap()
            .contains(&"exceeds_pool_size".into())
    );
    let shown: Vec<u64> = evidence["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["fds"].as_array().unwrap().iter().map(|f| f.as_u64().unwrap()))
        .collect();
    for fd in &fds {
        assert!(shown.contains(fd), "fd {fd} missing from {shown:?}");
    }
    for fd in fds {
        w.workload.send(&format!("close {fd}"));
        w.workload.expect("closed");
    }
    w.await_alert("socket_close_wait_leak", "resolved", FIRE);
}

/// leakmon (re)started on a host where nova-compute already holds leaked
/// CLOSE_WAIT sockets: they are in the ledger with their state and owner,
/// the leak fires (their age counts from the daemon's start), and closing
/// them resolves it.
#[test]
fn close_wait_sockets_older_than_the_daemon_fire_and_resolve() {
    if !require_root("close_wait_sockets_older_than_the_daemon_fire_and_resolve") {
        return;
    }
    let server = Server::start(Peer::CloseAtOnce);
    let addr = server.addr.to_string();
    let config = format!("{FAST_RULES}\n[endpoints]\n\"{addr}\" = \"ironic-api\"\n");
    let mut fds = Vec::new();
    let mut w = Watched::start_after(
        "alert-old-close-wait",
        "lm-oldcw",
        &config,
        &["serve"],
        |workload| {
            for _ in 0..4 {
                workload.send(&format!("connect {addr}"));
                fds.push(workload.expect("connected")["fd"].as_u64().unwrap());
            }
            // The peer's FINs arrive before the daemon starts.
            let deadline = Instant::now() + Duration::from_secs(10);
            while tests::truth::ss_tcp_states(workload.pid)
                .values()
                .filter(|s| *s == "CLOSE_WAIT")
                .count()
                < 4
            {
                assert!(
                    Instant::now() < deadline,
                    "no CLOSE_WAIT: {:?}",
                    tests::truth::ss_tcp_states(workload.pid)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    );
    w.daemon.sync();
    let ledger = w.daemon.ledger(w.pid);
    for fd in &fds {
        let socket = (ledger["sockets"].as_array().unwrap().iter())
            .find(|s| s["fds"].as_array().unwrap().contains(&(*fd).into()))
            .unwrap_or_else(|| panic!("fd {fd} missing from {ledger:#}"));
        assert_eq!(socket["state"], "CLOSE_WAIT", "{socket}");
        assert_eq!(
            socket["state_seen"], false,
            "read from the kernel at start: {socket}"
        );
        assert_eq!(socket["remote"], addr.as_str());
    }
    let alert = w.await_alert("socket_close_wait_leak", "firing", FIRE);
    assert_eq!(alert["key"], addr);
    assert_eq!(alert["evidence"]["close_wait_over_min_age"], 4, "{alert:#}");
    for fd in fds {
        w.workload.send(&format!("close {fd}"));
        w.workload.expect("closed");
    }
    w.await_alert("socket_close_wait_leak", "resolved", FIRE);
}

#[test]
fn refused_connects_fire_connect_failures_then_resolve() {
    if !require_root("refused_connects_fire_connect_failures_then_resolve") {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut w = Watched::start("alert-connect", "lm-connfail", FAST_RULES, &["serve"]);
    for _ in 0..3 {
        w.workload.send(&format!("connect {addr}"));
        assert_eq!(w.workload.expect("connected")["errno"], 111, "ECONNREFUSED");
    }
    let alert = w.await_alert("connect_failures", "firing", FIRE);
    assert_eq!(alert["evidence"]["refused"], 3, "{alert:#}");
    w.await_alert("connect_failures", "resolved", FIRE);
}

#[test]
fn more_connections_than_the_pool_saturate_it() {
    if !require_root("more_connections_than_the_pool_saturate_it") {
        return;
    }
    let server = Server::start(Peer::Hold);
    let mut w = Watched::start("alert-pool", "lm-pool", FAST_RULES, &["serve"]);
    let mut fds = Vec::new();
    for _ in 0..4 {
        w.workload.send(&format!("connect {}", server.addr));
        fds.push(w.workload.expect("connected")["fd"].as_u64().unwrap());
    }
    let alert = w.await_alert("connection_pool_saturation", "firing", FIRE);
    assert_eq!(alert["evidence"]["open"], 4, "{alert:#}");
    w.workload.send(&format!("close {}", fds[0]));
    w.workload.expect("closed");
    w.await_alert("connection_pool_saturation", "resolved", FIRE);
}

#[test]
fn fd_exhaustion_warns_before_emfile_then_both_resolve() {
    if !require_root("fd_exhaustion_warns_before_emfile_then_both_resolve") {
        return;
    }
    let mut w = Watched::start("alert-emfile", "lm-emfile", FAST_RULES, &["serve"]);
    w.workload.send("rlimit 64");
    w.workload.expect("rlimit");
    w.workload.send("drip files 250 80");
    let exhaustion = w.await_alert("emfile", "firing", FIRE);
    assert!(
        exhaustion["summary"]
            .as_str()
            .unwrap()
            .contains("EMFILE from openat"),
        "{exhaustion:#}"
    );
    let lines = w.alerts();
    let position = |rule: &str| {
        lines
            .iter()
            .position(|a| a["rule"] == rule && a["status"] == "firing")
    };
    let (warned, failed) = (position("fd_exhaustion"), position("emfile"));
    assert!(
        warned.is_some() && warned < failed,
        "fd_exhaustion must come first: {lines:#?}"
    );
    let warning = &lines[warned.unwrap()];
    assert_eq!(warning["evidence"]["limit"], 64);
    assert!(
        warning["evidence"]["projected_exhaustion_s"].is_number(),
        "{warning:#}"
    );
    w.workload.expect_within("dripped", FIRE);
    w.workload.send("free files");
    w.workload.expect("freed");
    w.await_alert("fd_exhaustion", "resolved", FIRE);
    w.await_alert("emfile", "resolved", FIRE);
}

#[test]
fn threads_near_the_cgroup_pids_limit_fire_thread_exhaustion() {
    if !require_root("threads_near_the_cgroup_pids_limit_fire_thread_exhaustion") {
        return;
    }
    let mut w = Watched::start("alert-pids", "lm-pids", FAST_RULES, &["serve"]);
    let Some(cgroup) = tests::alerts::PidsCgroup::create("leakmon-alert-pids", 30) else {
        eprintln!("skipping: no writable pids cgroup controller on this host");
        return;
    };
    cgroup.add(w.pid);
    w.workload.send("drip threads 20 26");
    w.workload.expect_within("dripped", FIRE);
    let alert = w.await_alert("thread_exhaustion", "firing", FIRE);
    assert_eq!(
        (alert["key"].as_str(), alert["evidence"]["limit"].as_u64()),
        (Some("pids.max"), Some(30))
    );
    w.workload.send("free threads");
    w.workload.expect_within("freed", FIRE);
    w.await_alert("thread_exhaustion", "resolved", FIRE);
}

#[test]
fn a_call_without_an_answer_is_hung_until_the_connection_ends() {
    if !require_root("a_call_without_an_answer_is_hung_until_the_connection_ends") {
        return;
    }
    let server = Server::start(Peer::Silent);
    let mut w = Watched::start("alert-hung", "lm-hung", FAST_RULES, &["serve"]);
    w.workload
        .send(&format!("http {} GET /v1/nodes/{NODE}", server.addr));
    let alert = w.await_alert("ironic_call_hung", "firing", FIRE);
    let evidence = &alert["evidence"];
    assert_eq!(
        (evidence["node"].as_str(), evidence["kind"].as_str()),
        (Some(NODE), Some("node_get"))
    );
    assert!(evidence["age_s"].as_f64().unwrap() >= 2.0);
    server.drop_connections();
    w.workload.expect("answered");
    w.await_alert("ironic_call_hung", "resolved", FIRE);
}

#[test]
fn conflicts_from_ironic_on_a_node_are_a_storm() {
    if !require_root("conflicts_from_ironic_on_a_node_are_a_storm") {
        return;
    }
    let server = Server::start(Peer::Answer(409));
    let mut w = Watched::start("alert-conflict", "lm-conflict", FAST_RULES, &["serve"]);
    for _ in 0..3 {
        w.workload.send(&format!(
            "http {} PUT /v1/nodes/{NODE}/states/power - {{\"target\":\"power_off\"}}",
            server.addr
        ));
        assert_eq!(w.workload.expect("answered")["status"], 409);
    }
    let alert = w.await_alert("ironic_conflict_storm", "firing", FIRE);
    assert_eq!(alert["key"], format!("node {NODE}"));
    assert_eq!(alert["evidence"]["conflicts_409"], 3);
    w.await_alert("ironic_conflict_storm", "resolved", FIRE);
}

#[test]
fn an_unprovision_loop_near_api_max_retries_from_nova_conf_fires() {
    if !require_root("an_unprovision_loop_near_api_max_retries_from_nova_conf_fires") {
        return;
    }
    let server = Server::start(Peer::Answer(200));
    let dir = tests::scratch_dir("alert-poll-conf");
    let nova_conf = dir.join("nova.conf");
    std::fs::write(&nova_conf, "[ironic]\napi_max_retries = 4\n").unwrap();
    let conf = nova_conf.to_str().unwrap();
    let mut w = Watched::start(
        "alert-poll",
        "lm-poll",
        FAST_RULES,
        &["serve", "--config-file", conf],
    );
    w.workload.send(&format!(
        "http {} PUT /v1/nodes/{NODE}/states/provision - {{\"target\":\"deleted\"}}",
        server.addr
    ));
    w.workload.expect("answered");
    // nova gives up after api_max_retries + 1 = 5 polls; 80 % of them fire.
    let lookup = format!("/v1/nodes?fields=uuid&instance_uuid={INSTANCE}");
    w.workload.send(&format!("poll {} {lookup} 4 300", server.addr));
    let alert = w.await_alert("ironic_poll_exhaustion", "firing", FIRE);
    let evidence = &alert["evidence"];
    assert_eq!(evidence["loop"], "unprovision", "{alert:#}");
    assert_eq!(
        (evidence["polls"].as_u64(), evidence["max_polls"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(evidence["api_max_retries_from"], conf);
    assert_eq!(evidence["node"], NODE);
    w.workload.expect_within("polled", FIRE);
    w.await_alert("ironic_poll_exhaustion", "resolved", FIRE);
}
