//! Proof on real OpenStack code: the real nova Ironic driver (the harness)
//! against a real Ironic, each scenario a leak or exhaustion the security
//! reviews warn about, injected as the real libraries would make it; and a
//! clean run under the same rules that must raise nothing. Detection
//! latencies go to $LEAKMON_SCENARIO_REPORT (`cargo xtask bench`).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use serde_json::Value;
use tests::{
    require_root,
    scenario::{Options, Scenario},
    servers::Rsyslog,
    truth,
};

const DETECT: Duration = Duration::from_secs(120);

fn spawn(s: &mut Scenario, node: usize) -> String {
    let node = s.nodes[node].clone();
    let spawned = s.nova.run(&format!("spawn {node}"), "spawned");
    spawned["instance"].as_str().unwrap().to_string()
}

/// What the clean scenario saw, sample by sample.
#[derive(Default)]
struct CleanRun {
    close_wait_seen: usize,
    threads_min: Option<usize>,
    threads_max: usize,
    /// What the kernel said (ss) beside what the ledger said: a failure then
    /// tells a quiet pool from a missed state change.
    timeline: Vec<String>,
}

impl CleanRun {
    /// Samples once a second for `span`: the ledger, ss, and no alert.
    fn watch(&mut self, s: &Scenario, span: Duration, started: Instant) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_secs(1));
            let kernel = truth::ss_tcp_states(s.nova.pid);
            let ledger = s.daemon.ledger(s.nova.pid);
            let sockets = ledger["sockets"].as_array().unwrap();
            let close_wait = sockets
                .iter()
                .filter(|sock| {
                    sock["state"] == "CLOSE_WAIT" && sock["age_in_state_s"].as_f64().unwrap_or(0.0) >= 5.0
                })
                .count();
            self.close_wait_seen = self.close_wait_seen.max(close_wait);
            let states: Vec<String> = sockets
                .iter()
                .filter(|sock| sock["state"].is_string())
                .map(|sock| {
                    let (fds, state, age) = (&sock["fds"], &sock["state"], &sock["age_in_state_s"]);
                    format!("{fds} {state} {age} s, seen {}", sock["state_seen"])
                })
                .collect();
            self.timeline.push(format!(
                "{:>5.1} s: kernel {kernel:?} ledger {states:?}",
                started.elapsed().as_secs_f64()
            ));
            let threads = ledger["threads"].as_array().unwrap().len();
            self.threads_max = self.threads_max.max(threads);
            self.threads_min = Some(self.threads_min.map_or(threads, |min| min.min(threads)));
            let alerts = s.alerts();
            assert!(alerts.is_empty(), "clean operation raised alerts: {alerts:#?}");
        }
    }
}

#[test]
fn clean_operation_raises_no_alert() {
    if !require_root("clean_operation_raises_no_alert") {
        return;
    }
    clean_operation("scenario-clean", "127.0.0.6", false);
}

/// The same in nova's eventlet mode, which releases before native
/// threading run: green threads, non-blocking sockets and TLS reads.
#[test]
fn clean_operation_under_eventlet_raises_no_alert() {
    if !require_root("clean_operation_under_eventlet_raises_no_alert") {
        return;
    }
    clean_operation("scenario-clean-eventlet", "127.0.0.18", true);
}

fn clean_operation(name: &str, ip: &str, eventlet: bool) {
    let mut s = Scenario::start(
        name,
        ip,
        Options {
            nodes: 2,
            eventlet,
            ..Options::default()
        },
    );
    // The periodic node-list refresh runs every 20 s, longer than Ironic's
    // 10 s idle timeout: between refreshes a pooled socket waits in
    // CLOSE_WAIT for ~10 s, past the rule's min_age_s, as in production.
    s.nova.run("refresh-every 20", "refreshing");
    let nodes = s.nodes.join(" ");
    s.nova.run(&format!("cycle {nodes}"), "cycling");
    let started = Instant::now();
    let mut run = CleanRun::default();
    // Busy for 50 s (loops, their threads), then, once the cycle's last
    // round is over (its length varies with the host's speed), idle for
    // 45 s: within 10 + 20 s of the last call a pooled socket is in
    // CLOSE_WAIT, and stays there ~10 s.
    run.watch(&s, Duration::from_secs(50), started);
    s.nova.run("stop-cycle", "cycle-stopped");
    let busy_until = started.elapsed();
    run.watch(&s, Duration::from_secs(45), started);
    let threads_min = run.threads_min.unwrap_or(0);
    eprintln!(
        "{name}: busy {:.0} s, up to {} pooled sockets in CLOSE_WAIT for 5 s or more, threads {threads_min}..{}",
        busy_until.as_secs_f64(),
        run.close_wait_seen,
        run.threads_max
    );
    assert!(
        run.close_wait_seen >= 1,
        "the idle pooled socket never sat in CLOSE_WAIT: the scenario proved nothing\n{}\n{}",
        run.timeline.join("\n"),
        s.daemon.log_text()
    );
    // nova's debug log, keystoneauth's request lines with the token hashed
    // among them, was read all along (secret_in_log) and raised nothing.
    let log = std::fs::read_to_string(s.dir.join("nova/nova-compute.log")).unwrap();
    let scanned = s.daemon.status()["engine"]["log_bytes_scanned"].as_u64().unwrap();
    let hashed = log.matches("{SHA256}").count();
    eprintln!(
        "{name}: {scanned} bytes of nova's {} byte log read, {hashed} hashed tokens",
        log.len()
    );
    assert!(scanned > 0 && hashed > 0, "the log proved nothing");
    if eventlet {
        // Its loops are green threads: what came and went are calls.
        let calls = s
            .daemon
            .request(serde_json::json!({"request": "calls", "pid": s.nova.pid}));
        let seen: u64 = (calls["stats"].as_array().unwrap().iter())
            .map(|kind| kind["count"].as_u64().unwrap())
            .sum();
        eprintln!("{name}: {seen} calls seen");
        assert!(
            seen >= 20,
            "{seen} calls seen: the scenario proved nothing\n{calls:#}"
        );
    } else {
        assert!(
            run.threads_max >= threads_min + 2,
            "no loop threads came and went: the scenario proved nothing"
        );
    }
}

fn socket_leak(name: &str, ip: &str, tls: bool, eventlet: bool) {
    let mut s = Scenario::start(
        name,
        ip,
        Options {
            tls,
            eventlet,
            ..Options::default()
        },
    );
    s.fault_starts();
    s.nova.run("leak-connections-every 2", "leaking");
    let alert = s.await_alert("socket_close_wait_leak", "firing", DETECT);
    assert_eq!(alert["labels"]["endpoint"], "ironic-api", "{alert:#}");
    let origin = &alert["evidence"]["by_origin"][0];
    assert_eq!(origin["call_kind"], "node_list", "{alert:#}");
    // The fault's thread: a green one on the main OS thread under eventlet.
    let main_thread = origin["tid"] == s.nova.pid;
    assert_eq!(main_thread, eventlet, "{alert:#}");
    assert!(
        alert["summary"].as_str().unwrap().contains("ironic-api"),
        "{alert:#}"
    );
    let sockets = alert["evidence"]["sockets"].as_array().unwrap();
    assert!(
        sockets
            .iter()
            .all(|sock| sock["state"] == "CLOSE_WAIT" && sock["label"] == "ironic-api")
    );
}

#[test]
fn a_connection_per_call_leaks_sockets_to_ironic_over_http() {
    if !require_root("a_connection_per_call_leaks_sockets_to_ironic_over_http") {
        return;
    }
    socket_leak("scenario-socket-http", "127.0.0.7", false, false);
}

#[test]
fn a_connection_per_call_leaks_sockets_to_ironic_over_https() {
    if !require_root("a_connection_per_call_leaks_sockets_to_ironic_over_https") {
        return;
    }
    socket_leak("scenario-socket-https", "127.0.0.8", true, false);
}

/// The same leak in nova's eventlet mode: green threads on one OS thread,
/// non-blocking sockets under the TLS calls.
#[test]
fn a_connection_per_call_under_eventlet_leaks_sockets_to_ironic_over_https() {
    if !require_root("a_connection_per_call_under_eventlet_leaks_sockets_to_ironic_over_https") {
        return;
    }
    socket_leak("scenario-socket-eventlet", "127.0.0.17", true, true);
}

#[test]
fn an_executor_per_call_leaks_threads() {
    if !require_root("an_executor_per_call_leaks_threads") {
        return;
    }
    let mut s = Scenario::start("scenario-threads", "127.0.0.9", Options::default());
    s.fault_starts();
    s.nova.run("leak-executors-every 1", "leaking");
    let alert = s.await_alert("thread_leak", "firing", DETECT);
    let site = &alert["evidence"]["by_site"][0];
    assert_eq!(
        site["call_kind"], "node_list",
        "the threads' first calls name the leak: {alert:#}"
    );
}

#[test]
fn a_stopped_ironic_hangs_the_call_until_it_continues() {
    if !require_root("a_stopped_ironic_hangs_the_call_until_it_continues") {
        return;
    }
    let mut s = Scenario::start("scenario-hung", "127.0.0.10", Options::default());
    s.nova.run("nodes", "nodes");
    let group = nix::unistd::Pid::from_raw(-(s.ironic.pid() as i32));
    kill(group, Signal::SIGSTOP).unwrap();
    s.fault_starts();
    s.nova.process.send("nodes");
    let alert = s.await_alert("ironic_call_hung", "firing", DETECT);
    assert_eq!(alert["evidence"]["kind"], "node_list", "{alert:#}");
    assert_eq!(alert["labels"]["endpoint"], "ironic-api");
    kill(group, Signal::SIGCONT).unwrap();
    s.nova.process.expect_within("nodes", DETECT);
    s.await_alert("ironic_call_hung", "resolved", DETECT);
}

#[test]
fn a_slow_undeploy_exhausts_the_unprovision_loop_and_is_seen_first() {
    if !require_root("a_slow_undeploy_exhausts_the_unprovision_loop_and_is_seen_first") {
        return;
    }
    // Tear-down takes 15 s; nova gives up after api_max_retries + 1 = 6 polls, 1 s apart.
    let options = Options {
        deploy_s: 15,
        api_max_retries: 5,
        ..Options::default()
    };
    let mut s = Scenario::start("scenario-unprovision", "127.0.0.11", options);
    let instance = spawn(&mut s, 0);
    s.fault_starts();
    s.nova.process.send(&format!("destroy {instance}"));
    let alert = s.await_alert("ironic_poll_exhaustion", "firing", DETECT);
    let evidence = &alert["evidence"];
    assert_eq!(evidence["loop"], "unprovision", "{alert:#}");
    assert_eq!(evidence["max_polls"], 6);
    assert!(evidence["polls"].as_u64().unwrap() >= 5, "{alert:#}");
    assert!(
        evidence["api_max_retries_from"]
            .as_str()
            .unwrap()
            .ends_with("nova.conf")
    );
    // Only now does nova give up.
    let failed: Value = s.nova.process.expect_within("error", DETECT);
    assert!(
        failed["error"].as_str().unwrap().contains("Provision state"),
        "{failed:#}"
    );
}

#[test]
fn leaked_files_under_a_low_limit_warn_before_emfile() {
    if !require_root("leaked_files_under_a_low_limit_warn_before_emfile") {
        return;
    }
    let mut s = Scenario::start("scenario-nofile", "127.0.0.12", Options::default());
    s.nova.run("rlimit 200", "rlimit");
    s.fault_starts();
    s.nova.run("leak-files-every 1 5", "leaking");
    let warning = s.await_alert("fd_exhaustion", "firing", DETECT);
    assert!(
        warning["evidence"]["projected_exhaustion_s"].is_number(),
        "{warning:#}"
    );
    s.await_alert("emfile", "firing", DETECT);
    let lines = s.alerts();
    let first = |rule: &str| {
        lines
            .iter()
            .position(|a| a["rule"] == rule && a["status"] == "firing")
    };
    assert!(first("fd_exhaustion") < first("emfile"), "{lines:#?}");
}

#[test]
fn concurrent_power_changes_on_a_locked_node_are_a_conflict_storm() {
    if !require_root("concurrent_power_changes_on_a_locked_node_are_a_conflict_storm") {
        return;
    }
    let options = Options {
        power_s: 3,
        ..Options::default()
    };
    let mut s = Scenario::start("scenario-conflict", "127.0.0.13", options);
    let instance = spawn(&mut s, 0);
    s.fault_starts();
    let results = s.nova.run(&format!("conflict {instance} 4"), "conflicted");
    let alert = s.await_alert("ironic_conflict_storm", "firing", DETECT);
    assert_eq!(
        alert["key"],
        format!("node {}", s.nodes[0]),
        "{alert:#} ({results})"
    );
    assert!(
        alert["evidence"]["conflicts_409"].as_u64().unwrap() >= 2,
        "{alert:#}"
    );
}

#[test]
fn ironic_failing_calls_that_nova_carries_on_through_are_seen() {
    if !require_root("ironic_failing_calls_that_nova_carries_on_through_are_seen") {
        return;
    }
    let mut s = Scenario::start("scenario-errors", "127.0.0.19", Options::default());
    // nova's periodic node-list refresh, which logs a failure and carries on.
    s.nova.run("refresh-every 1", "refreshing");
    s.fault_starts();
    // Ironic's database loses its nodes table: every node query fails inside Ironic.
    s.ironic.rename_table("nodes", "nodes_broken");
    s.nova
        .process
        .expect_within("refresh_failed", Duration::from_secs(30));
    let alert = s.await_alert("ironic_call_errors", "firing", DETECT);
    assert_eq!(alert["labels"]["endpoint"], "ironic-api", "{alert:#}");
    let evidence = &alert["evidence"];
    assert!(evidence["statuses"]["500"].as_u64().unwrap() >= 3, "{alert:#}");
    let sample = &evidence["calls"][0];
    assert_eq!(sample["pattern"], "/v1/nodes", "{alert:#}");
    assert!(
        sample["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req-")),
        "Ironic's request id, to find its traceback: {alert:#}"
    );
    // Repaired: the failures age out of the window and the alert resolves.
    s.ironic.rename_table("nodes_broken", "nodes");
    s.await_alert("ironic_call_errors", "resolved", Duration::from_secs(60));
}

#[test]
fn a_token_in_clear_on_the_wire_or_in_the_log_is_flagged_and_never_shown() {
    if !require_root("a_token_in_clear_on_the_wire_or_in_the_log_is_flagged_and_never_shown") {
        return;
    }
    const TOKEN: &str = tests::FAKE_TOKEN;
    let options = Options {
        fake_token: Some(TOKEN),
        ..Options::default()
    };
    let mut s = Scenario::start("scenario-token", "127.0.0.14", options);
    s.fault_starts();
    s.nova.run("nodes", "nodes");
    let alert = s.await_alert("plaintext_token", "firing", DETECT);
    assert_eq!(alert["labels"]["endpoint"], "ironic-api");

    // nova's log (oslo.log, debug on) is read on from where it ended when the
    // daemon first saw it, at the latest in the tick that raised that alert.
    // keystoneauth's request lines written from here on carry the token
    // hashed, which is no secret: the alert below counts one line.
    let log = s.dir.join("nova/nova-compute.log");
    let from = std::fs::metadata(&log).unwrap().len();
    s.nova.run("nodes", "nodes");
    let hashed = std::fs::read(&log).unwrap()[from as usize..].to_vec();
    let hashed = String::from_utf8_lossy(&hashed);
    let hashed_header = format!("{}: {{SHA256}}", "X-Auth-Token");
    assert!(
        hashed.contains(&hashed_header),
        "keystoneauth logged its requests:\n{hashed}"
    );
    s.fault_starts();
    s.nova.run("log-auth-headers", "logged");
    let alert = s.await_alert("secret_in_log", "firing", DETECT);
    assert_eq!(alert["evidence"]["file"], log.to_str().unwrap(), "{alert:#}");
    assert_eq!(alert["evidence"]["lines"], 1, "{alert:#}");
    assert!(alert["evidence"]["last_offset"].as_u64().unwrap() >= from + hashed.len() as u64);
    assert_eq!(alert["severity"], "critical");

    let everything = std::fs::read_to_string(s.dir.join("alerts.ndjson")).unwrap() + &s.daemon.log_text();
    assert!(!everything.contains(TOKEN), "the token value reached an output");
    assert!(
        std::fs::read_to_string(&log).unwrap().contains(TOKEN),
        "the fault did log the token in clear"
    );
}

#[test]
fn nova_logging_a_token_to_syslog_is_flagged_on_that_stream() {
    let name = "nova_logging_a_token_to_syslog_is_flagged_on_that_stream";
    if !require_root(name) {
        return;
    }
    // A real rsyslogd at /dev/log, where glibc's syslog() (oslo.log's
    // use_syslog) sends; a host that has one already is left alone.
    let syslog_dir = tests::scratch_dir("scenario-syslog-rsyslog");
    let rsyslog = match Rsyslog::start_at(&syslog_dir, std::path::Path::new("/dev/log")) {
        Ok(rsyslog) => rsyslog,
        Err(why) => {
            println!("skipped {name}: {why}");
            return;
        }
    };
    let options = Options {
        fake_token: Some(tests::FAKE_TOKEN),
        syslog: true,
        ..Options::default()
    };
    let mut s = Scenario::start("scenario-syslog", "127.0.0.21", options);
    // nova logs from its start, so its syslog socket is connected by now.
    let pid = s.nova.pid;
    s.daemon
        .await_status("nova's syslog socket read as a log stream", DETECT, |status| {
            (status["processes"].as_array().into_iter().flatten())
                .filter(|p| p["pid"] == pid)
                .flat_map(|p| p["log_streams"].as_array().into_iter().flatten())
                .any(|stream| stream == "syslog (/dev/log)")
        });
    s.fault_starts();
    s.nova.run("log-auth-headers", "logged");
    let alerts = s.dir.join("alerts.ndjson");
    let on_syslog = || {
        (tests::alerts::alerts_in(&alerts).into_iter()).find(|a| {
            a["rule"] == "secret_in_log" && a["status"] == "firing" && a["key"] == "syslog (/dev/log)"
        })
    };
    let deadline = Instant::now() + DETECT;
    let alert = loop {
        if let Some(alert) = on_syslog() {
            break alert;
        }
        let log = s.daemon.log_text();
        assert!(
            Instant::now() < deadline,
            "no alert on the syslog stream; daemon log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(alert["process"]["pid"], pid, "{alert:#}");
    assert_eq!(alert["evidence"]["lines"], 1, "{alert:#}");
    rsyslog.await_line(tests::FAKE_TOKEN);
    let everything = std::fs::read_to_string(&alerts).unwrap() + &s.daemon.log_text();
    assert!(
        !everything.contains(tests::FAKE_TOKEN),
        "the token value reached an output"
    );
}
