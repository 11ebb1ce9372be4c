//! Ironic API calls of the real nova Ironic driver against a real Ironic,
//! over HTTP and HTTPS, checked call by call against the harness's own
//! request log (urllib3's), the ground truth.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use tests::{
    ScratchDir,
    daemon::Daemon,
    require_root,
    scenario::regex_escape,
    scratch_dir,
    testbed::{Ironic, LoggedRequest, NovaCompute, Testbed},
};

/// A real Ironic with one available node, a daemon, and the harness
/// watched (with its TLS uprobes attached when `tls`).
struct Bed {
    bed: Testbed,
    ironic: Ironic,
    node: String,
    daemon: Daemon,
    /// Last: removed once Ironic and the daemon have stopped.
    dir: ScratchDir,
}

impl Bed {
    fn start(test: &str, ip: &str, tls: bool) -> Bed {
        Bed::start_with_log(test, ip, tls, "info")
    }

    /// As [`Bed::start`], with the daemon logging at `level`.
    fn start_with_log(test: &str, ip: &str, tls: bool, level: &str) -> Bed {
        let bed = Testbed::install();
        let dir = scratch_dir(test);
        let ironic = Ironic::start(&bed, &dir, ip, tls);
        let node = ironic.enroll(&bed, 1).remove(0);
        // Only this test's harness: parallel tests run harnesses of their own.
        let harness = regex_escape(&dir.join("nova/bin/nova-compute").to_string_lossy());
        let daemon = Daemon::start_with_env(&dir, &["--match-cmdline", &harness], &[("RUST_LOG", level)]);
        Bed {
            bed,
            dir,
            ironic,
            node,
            daemon,
        }
    }

    /// Stops the daemon and starts another the same way: leakmon restarted
    /// (an upgrade) while nova-compute runs.
    fn restart_daemon(self) -> Bed {
        let Bed {
            bed,
            ironic,
            node,
            daemon,
            dir,
        } = self;
        assert!(daemon.stop().success());
        let harness = regex_escape(&dir.join("nova/bin/nova-compute").to_string_lossy());
        let daemon = Daemon::start(&dir, &["--match-cmdline", &harness]);
        Bed {
            bed,
            ironic,
            node,
            daemon,
            dir,
        }
    }

    fn nova(&self, fake_token: Option<&str>) -> NovaCompute {
        let nova = NovaCompute::start(&self.bed, &self.dir, &self.ironic, fake_token);
        self.await_watched(&nova);
        nova
    }

    fn nova_in(&self, concurrency: Concurrency) -> NovaCompute {
        match concurrency {
            Concurrency::Threads => self.nova(None),
            Concurrency::Eventlet => {
                let nova = NovaCompute::start_eventlet(&self.bed, &self.dir, &self.ironic);
                self.await_watched(&nova);
                nova
            }
        }
    }

    /// The daemon watches the harness and, over HTTPS, has its libssl
    /// uprobes in place: from here on every call is seen.
    fn await_watched(&self, nova: &NovaCompute) {
        let tls = self.ironic.cacert.is_some();
        self.daemon
            .await_status("the harness watched", Duration::from_secs(20), |status| {
                let watched = status["processes"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["pid"] == nova.pid));
                watched && (!tls || attachments(status, nova.pid) == 1)
            });
    }

    fn calls(&self, pid: u32) -> Value {
        self.daemon
            .request(json!({"request": "calls", "pid": pid, "recent": 10_000}))
    }
}

fn attachments(status: &Value, pid: u32) -> usize {
    status["tls"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|t| t["pid"] == pid).count())
}

/// Per thread, the (method, path, status) sequence: threads run their calls
/// one after another, so these sequences are exact whatever the interleaving.
fn by_thread(calls: impl Iterator<Item = (u32, String, String, u16)>) -> BTreeMap<u32, Vec<String>> {
    let mut threads: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (tid, method, path, status) in calls {
        threads
            .entry(tid)
            .or_default()
            .push(format!("{method} {path} {status}"));
    }
    threads
}

fn daemon_sequences(calls: &Value) -> BTreeMap<u32, Vec<String>> {
    by_thread(calls["recent"].as_array().unwrap().iter().map(|c| {
        (
            c["tid"].as_u64().unwrap() as u32,
            c["method"].as_str().unwrap().to_string(),
            c["path"].as_str().unwrap().to_string(),
            c["status"].as_u64().unwrap_or(0) as u16,
        )
    }))
}

fn logged_sequences(requests: &[LoggedRequest]) -> BTreeMap<u32, Vec<String>> {
    by_thread(
        requests
            .iter()
            .map(|r| (r.thread, r.method.clone(), r.path.clone(), r.status)),
    )
}

fn uuid_after<'a>(path: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &path[path.find(marker)? + marker.len()..];
    Some(&rest[..36.min(rest.len())])
}

/// nova's concurrency modes (nova-ironic.md, "The process").
#[derive(Clone, Copy)]
enum Concurrency {
    /// Native threads, the default on master.
    Threads,
    /// Green threads on one OS thread (deprecated, still selectable).
    Eventlet,
}

/// Drives a full instance life cycle and checks the daemon's calls.
fn full_cycle(test: &str, ip: &str, tls: bool, concurrency: Concurrency) {
    if !require_root(test) {
        return;
    }
    let bed = Bed::start(test, ip, tls);
    let mut nova = bed.nova_in(concurrency);
    nova.run("nodes", "nodes");
    let instance = nova.run(&format!("spawn {}", bed.node), "spawned")["instance"]
        .as_str()
        .unwrap()
        .to_string();
    for action in ["power_off", "power_on", "reboot", "destroy"] {
        nova.run(&format!("{action} {instance}"), action);
    }
    bed.daemon.sync();
    let calls = bed.calls(nova.pid);
    let logged = nova.requests();
    let scheme = if tls { "https" } else { "http" };
    assert!(
        logged.len() > 30,
        "a full cycle makes dozens of calls: {logged:?}"
    );
    assert!(logged.iter().all(|r| r.scheme == scheme));

    // Call by call, thread by thread: method, path and status.
    assert_eq!(daemon_sequences(&calls), logged_sequences(&logged));
    assert!(calls["in_flight"].as_array().unwrap().is_empty());
    assert_eq!(calls["parse"]["not_http"], 0, "{:#}", calls["parse"]);

    // Classification, node and instance, TLS, latency.
    let recent = calls["recent"].as_array().unwrap();
    for call in recent {
        let path = call["path"].as_str().unwrap();
        assert_ne!(call["kind"], "unknown", "{call:#}");
        assert_eq!(call["tls"], tls, "{call:#}");
        assert_eq!(call["label"], "ironic-api", "{call:#}");
        assert!(call["latency_ms"].as_f64().unwrap() > 0.0, "{call:#}");
        if let Some(node) = uuid_after(path, "/v1/nodes/") {
            assert_eq!(call["node"], node, "{call:#}");
        }
        if let Some(uuid) = uuid_after(path, "instance_uuid=") {
            assert_eq!(
                (&call["kind"], &call["instance"]),
                (&json!("instance_lookup"), &json!(uuid))
            );
        }
    }
    let state_changes: Vec<(String, String)> = recent
        .iter()
        .filter(|c| c["method"] == "PUT")
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["target"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("provision_state", "active"),
        ("power_state", "power off"),
        ("power_state", "power on"),
        ("power_state", "soft rebooting"),
        ("provision_state", "deleted"),
    ]
    .iter()
    .map(|(k, t)| (k.to_string(), t.to_string()))
    .collect();
    assert_eq!(state_changes, expected);

    // The deploy's wait loop: every instance lookup its thread made.
    let put = recent
        .iter()
        .find(|c| c["target"] == "active")
        .expect("the deploy PUT");
    let deploy = calls["loops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "deploy")
        .unwrap_or_else(|| panic!("no deploy loop in {:#}", calls["loops"]));
    let poller = deploy["tid"].as_u64().unwrap() as u32;
    let polls = logged
        .iter()
        .filter(|r| r.thread == poller && r.path.contains(&format!("instance_uuid={instance}")))
        .count();
    assert!(polls >= 2, "a 3 s fake deploy polled every second: {polls}");
    assert_eq!(
        (
            &deploy["subject"],
            &deploy["node"],
            &deploy["trigger"],
            deploy["polls"].as_u64()
        ),
        (&json!(instance), &json!(bed.node), &put["id"], Some(polls as u64)),
        "{deploy:#}"
    );
    match concurrency {
        Concurrency::Threads => assert_ne!(poller, nova.pid, "nova's looping call runs on its own thread"),
        // Every green thread, the wait loop's too, calls from the main OS thread.
        Concurrency::Eventlet => assert_eq!(
            daemon_sequences(&calls).into_keys().collect::<Vec<_>>(),
            [nova.pid]
        ),
    }
    nova.exit();
}

#[test]
fn http_cycle_matches_the_harness_log_call_by_call() {
    full_cycle("calls-http", "127.0.0.2", false, Concurrency::Threads);
}

#[test]
fn https_cycle_matches_the_harness_log_call_by_call() {
    full_cycle("calls-https", "127.0.0.3", true, Concurrency::Threads);
}

#[test]
fn http_cycle_under_eventlet_matches_the_harness_log_call_by_call() {
    full_cycle("calls-http-eventlet", "127.0.0.15", false, Concurrency::Eventlet);
}

#[test]
fn https_cycle_under_eventlet_matches_the_harness_log_call_by_call() {
    full_cycle("calls-https-eventlet", "127.0.0.16", true, Concurrency::Eventlet);
}

use tests::FAKE_TOKEN;

#[test]
fn a_fake_token_appears_in_no_output_and_no_log() {
    if !require_root("a_fake_token_appears_in_no_output_and_no_log") {
        return;
    }
    // The most verbose log the daemon has.
    let bed = Bed::start_with_log("calls-secret", "127.0.0.4", false, "trace");
    let mut nova = bed.nova(Some(FAKE_TOKEN));
    nova.run("nodes", "nodes");
    nova.run(&format!("spawn {}", bed.node), "spawned");
    bed.daemon.sync();

    // The token did cross the wire, and was seen as a token.
    let calls = bed.calls(nova.pid);
    let recent = calls["recent"].as_array().unwrap();
    // (keystoneauth's version discovery is unauthenticated.)
    let authenticated = recent.iter().filter(|c| c["kind"] != "version_discovery");
    assert!(authenticated.clone().count() > 10);
    assert!(authenticated.clone().all(|c| c["token"] == true), "{calls:#}");

    let pid = nova.pid.to_string();
    let mut outputs = vec![
        calls.to_string(),
        bed.daemon.ledger(nova.pid).to_string(),
        bed.daemon.status().to_string(),
    ];
    for args in [
        vec!["calls", "--pid", &pid],
        vec!["calls", "--pid", &pid, "--json"],
        vec!["snapshot", "--pid", &pid],
        vec!["snapshot", "--pid", &pid, "--json"],
        vec!["status"],
        vec!["status", "--json"],
    ] {
        let out = tests::leakmon(&args, Some(&bed.daemon.socket));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    nova.exit();
    drop(bed.daemon);
    let log = std::fs::read_to_string(bed.dir.join("daemon.log")).unwrap();
    assert!(
        log.len() > 10_000,
        "a trace log of a spawn is long: {} bytes",
        log.len()
    );
    outputs.push(log);
    for output in &outputs {
        assert!(!output.contains(FAKE_TOKEN), "the token leaked into: {output}");
        // Nor any long piece of it (a value split across two lines).
        assert!(!output.contains(&FAKE_TOKEN[..16]));
    }
}

#[test]
fn restarted_nova_compute_is_followed_without_duplicates_or_stale_calls() {
    let test = "calls-restart";
    if !require_root(test) {
        return;
    }
    let bed = Bed::start(test, "127.0.0.5", true);
    let mut first = bed.nova(None);
    first.run("nodes", "nodes");
    let old_pid = first.pid;
    let before = bed.daemon.status();
    let old_lines = first.requests().len();
    first.kill();
    bed.daemon.await_status(
        "the killed harness forgotten",
        Duration::from_secs(20),
        |status| {
            attachments(status, old_pid) == 0
                && !status["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["pid"] == old_pid)
        },
    );

    let mut second = bed.nova(None);
    second.run("nodes", "nodes");
    bed.daemon.sync();
    let status = bed.daemon.status();
    assert_eq!(attachments(&status, second.pid), 1, "{:#}", status["tls"]);
    assert_eq!(attachments(&status, old_pid), 0);
    let (attached, detached) = (
        status["tls_attached_total"].as_u64().unwrap() - before["tls_attached_total"].as_u64().unwrap(),
        status["tls_detached_total"].as_u64().unwrap() - before["tls_detached_total"].as_u64().unwrap(),
    );
    assert_eq!(
        (attached, detached),
        (1, 1),
        "one detach for the old, one attach for the new"
    );

    // The new process's calls are its own, every one of them.
    let calls = bed.calls(second.pid);
    let new_requests: Vec<LoggedRequest> = second.requests().into_iter().skip(old_lines).collect();
    assert!(!new_requests.is_empty());
    assert_eq!(daemon_sequences(&calls), logged_sequences(&new_requests));
    // Gone, and forgotten (unless its pid was reused meanwhile: then not watched).
    let old = bed
        .daemon
        .try_request(&json!({"request": "calls", "pid": old_pid}));
    assert!(
        old == Err(format!("no process with pid {old_pid}"))
            || old == Err(format!("pid {old_pid} is not watched by this daemon")),
        "{old:?}"
    );

    // Stopped, the daemon detaches every link it holds: the tracepoints'
    // and the harness's uprobes (two per probed SSL read or write symbol,
    // an entry and a return probe; one for SSL_do_handshake).
    let status = bed.daemon.status();
    let not_links = ["fd_iter", "flush_deferred"];
    let hooks = (status["hooks"].as_array().unwrap().iter())
        .filter(|h| h["attached"] == true && !not_links.contains(&h["program"].as_str().unwrap()))
        .count();
    let uprobes: usize = (status["tls"].as_array().unwrap().iter())
        .flat_map(|t| t["symbols"].as_array().unwrap().clone())
        .map(|symbol| if symbol == "SSL_do_handshake" { 1 } else { 2 })
        .sum();
    assert!(uprobes >= 2, "{:#}", status["tls"]);
    let daemon = bed.daemon;
    let log = daemon.log.clone();
    assert!(daemon.stop().success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&format!("probes detached links={}", hooks + uprobes)),
        "{hooks} tracepoints and {uprobes} uprobes:\n{log}"
    );
    second.exit();
}

/// leakmon restarted while nova-compute runs: the new daemon sees every
/// call from then on, call by call as the harness logged them, also those
/// on the pooled HTTPS connection to Ironic that the old daemon saw opened.
#[test]
fn a_restarted_daemon_sees_every_call_on_nova_computes_old_connections() {
    let test = "calls-daemon-restart";
    if !require_root(test) {
        return;
    }
    let bed = Bed::start(test, "127.0.0.20", true);
    let mut nova = bed.nova(None);
    nova.run("nodes", "nodes");
    let spawned = nova.run(&format!("spawn {}", bed.node), "spawned");
    let instance = spawned["instance"].as_str().unwrap().to_string();
    let bed = bed.restart_daemon();
    bed.await_watched(&nova);
    let before = nova.requests().len();
    for action in ["power_off", "power_on", "reboot", "destroy"] {
        nova.run(&format!("{action} {instance}"), action);
    }
    bed.daemon.sync();
    let calls = bed.calls(nova.pid);
    let logged: Vec<LoggedRequest> = nova.requests().into_iter().skip(before).collect();
    assert!(logged.len() > 10, "{logged:?}");
    assert_eq!(daemon_sequences(&calls), logged_sequences(&logged));
    assert!(calls["in_flight"].as_array().unwrap().is_empty(), "{calls:#}");
    // At least the first call went over a connection older than this daemon.
    let ledger = bed.daemon.ledger(nova.pid);
    let old_fds: Vec<&Value> = (ledger["fds"].as_array().unwrap().iter())
        .filter(|fd| fd["birth"]["origin"] == "before_start")
        .map(|fd| &fd["fd"])
        .collect();
    let first = &calls["recent"][0];
    assert!(
        old_fds.contains(&&first["fd"]),
        "{first:#} on none of {old_fds:?}"
    );
    nova.exit();
}
