//! Detectors on synthetic timelines: each rule fires on the bad pattern and
//! stays silent on the normal states of nova-ironic.md (an idle pooled
//! socket in CLOSE_WAIT, loop threads lingering until the GC, bursts).

use std::net::SocketAddr;

use monitor_common::{TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, syscalls as nr};

use super::*;
use crate::{
    calls::{Origin as CallOrigin, StreamKey},
    fdkind::FdKind,
    http::FAKE_TOKEN,
    ledger::{Birth, FailedSyscall, FdEntry, Origin, ThreadEntry, comm_from, sockets},
};

mod network;

const PID: u32 = 500;
const S: u64 = 1_000_000_000;
const NODE: &str = "1ea5a24b-6b22-4891-834f-e44fa7929a51";
const INSTANCE: &str = "e17e0e2f-1627-42a2-8a99-c5040f62bdd4";
const IRONIC: &str = "127.0.0.1:6385";

struct World {
    ledger: Ledger,
    history: History,
    limits: Limits,
    rules: Rules,
    labels: Labels,
    now: u64,
}

impl World {
    fn new() -> World {
        World {
            ledger: Ledger::watching(PID),
            history: History::default(),
            limits: Limits::default(),
            rules: Rules::default(),
            labels: Labels::new(&Default::default()).unwrap(),
            now: 0,
        }
    }

    fn process(&mut self) -> &mut Process {
        self.ledger.processes.get_mut(&PID).unwrap()
    }

    /// Moves time to `ts` and takes the engine's sample.
    fn tick(&mut self, ts: u64) {
        self.now = ts;
        let sample = history::Sample::of(&self.ledger, &self.ledger.processes[&PID], ts);
        self.history.push(sample, 3600 * S);
    }

    fn findings(&self) -> Vec<Finding> {
        evaluate(&Input {
            ledger: &self.ledger,
            process: &self.ledger.processes[&PID],
            history: &self.history,
            limits: &self.limits,
            labels: &self.labels,
            rules: &self.rules,
            now_ns: self.now,
        })
    }

    fn fired(&self, rule: Rule) -> Vec<Finding> {
        self.findings().into_iter().filter(|f| f.rule == rule).collect()
    }

    fn open(&mut self, fd: u32, kind: FdKind, tid: u32, inode: u64) {
        let birth = Birth {
            ts_ns: self.now,
            tid,
            thread: comm_from("nova-compute"),
            syscall: if inode == 0 { nr::OPENAT } else { nr::SOCKET },
            origin: Origin::Syscall,
            call: None,
        };
        let entry = FdEntry {
            kind,
            provisional: false,
            birth,
            source_fd: monitor_common::NO_FD,
            inode,
        };
        self.process().fds.insert(fd, entry);
    }

    fn close(&mut self, fd: u32) {
        self.process().fds.remove(&fd);
    }

    fn socket(&mut self, fd: u32, inode: u64, remote: &str, state: u8) {
        self.open(fd, FdKind::SocketTcp, PID, inode);
        let now = self.now;
        let entry = self.ledger.socket_entry(inode, PID, now);
        entry.tuple = sockets::tuple_of(&format!("127.0.0.1:{}", 40000 + fd), remote);
        entry.state = Some(state);
        entry.state_since_ns = now;
    }

    fn set_state(&mut self, inode: u64, state: u8) {
        let now = self.now;
        let entry = self.ledger.sockets.get_mut(&inode).unwrap();
        entry.state = Some(state);
        entry.state_since_ns = now;
    }

    fn thread(&mut self, tid: u32) {
        let now = self.now;
        self.process().threads.insert(
            tid,
            ThreadEntry {
                name: comm_from("nova-compute"),
                start_ns: now,
                creator: Some(PID),
                origin: Origin::Syscall,
                birth_call: None,
                first_call: None,
            },
        );
    }

    fn call(&mut self, tid: u32, method: &str, path: &str, body: &str, tls: bool) -> StreamKey {
        let key = StreamKey::Fd(1000 + tid);
        let length = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let bytes = format!(
            "{method} {path} HTTP/1.1\r\nX-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n{length}\r\n{body}"
        );
        let origin = CallOrigin {
            tid,
            fd: Some(1000 + tid),
            inode: 0,
            tls,
            endpoint: Some(IRONIC.parse().unwrap()),
            ts_ns: self.now,
        };
        self.process().calls.written(key, bytes.as_bytes(), false, origin);
        key
    }

    fn answer(&mut self, key: StreamKey, status: u16) {
        let now = self.now;
        let bytes = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        self.process().calls.read(key, bytes.as_bytes(), now);
    }
}

#[test]
fn a_steady_fd_leak_fires_with_its_creation_site() {
    let mut w = World::new();
    w.rules.fd_leak.window_s = 100;
    w.rules.fd_leak.min_growth = 20;
    for i in 0..=120 {
        w.tick(i * S);
        w.open(100 + i as u32, FdKind::File, 4711, 0);
    }
    let fired = w.fired(Rule::FdLeak);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].key, "file");
    let site = &fired[0].evidence["by_site"][0];
    assert_eq!(
        (site["created_by"].as_str(), site["tid"].as_u64()),
        (Some("openat"), Some(4711))
    );
    assert!(
        fired[0].summary.contains("in thread 4711"),
        "{}",
        fired[0].summary
    );
}

#[test]
fn fds_that_come_and_go_are_no_leak() {
    let mut w = World::new();
    w.rules.fd_leak.window_s = 100;
    w.rules.fd_leak.min_growth = 20;
    for i in 0..=300u64 {
        w.tick(i * S);
        // Every 10 s, 50 files for 3 s.
        for fd in 100..150 {
            if i % 10 == 0 {
                w.open(fd, FdKind::File, 4711, 0);
            } else if i % 10 == 3 {
                w.close(fd);
            }
        }
    }
    assert!(w.fired(Rule::FdLeak).is_empty());
}

#[test]
fn threads_that_keep_coming_are_a_leak_but_lingering_loop_threads_are_not() {
    let mut leak = World::new();
    leak.rules.thread_leak.window_s = 100;
    leak.rules.thread_leak.min_growth = 20;
    for i in 0..=120u64 {
        leak.tick(i * S);
        leak.thread(10_000 + i as u32);
    }
    assert_eq!(leak.fired(Rule::ThreadLeak).len(), 1);

    // 20 loop threads every 30 s that the GC frees within 5 s.
    let mut gc = World::new();
    gc.rules.thread_leak.window_s = 100;
    gc.rules.thread_leak.min_growth = 20;
    for i in 0..=300u64 {
        gc.tick(i * S);
        for tid in 10_000..10_020 {
            if i % 30 == 0 {
                gc.thread(tid);
            } else if i % 30 == 5 {
                gc.process().threads.remove(&tid);
            }
        }
    }
    assert!(gc.fired(Rule::ThreadLeak).is_empty());
}

#[test]
fn fd_exhaustion_by_ratio_and_by_trend() {
    let mut w = World::new();
    w.limits.nofile = Some(100);
    for fd in 0..85 {
        w.open(fd, FdKind::File, PID, 0);
    }
    w.tick(0);
    assert_eq!(w.fired(Rule::FdExhaustion)[0].severity, Severity::Warning);
    for fd in 85..96 {
        w.open(fd, FdKind::File, PID, 0);
    }
    w.tick(S);
    assert_eq!(w.fired(Rule::FdExhaustion)[0].severity, Severity::Critical);

    let mut trend = World::new();
    trend.limits.nofile = Some(1000);
    for t in 0..60u64 {
        trend.tick(t * S);
        trend.open(t as u32, FdKind::File, PID, 0);
    }
    let fired = trend.fired(Rule::FdExhaustion);
    assert_eq!(fired.len(), 1, "1 fd/s reaches 1000 within the hour");
    let eta = fired[0].evidence["projected_exhaustion_s"].as_f64().unwrap();
    assert!((900.0..1000.0).contains(&eta), "{eta}");

    let mut flat = World::new();
    flat.limits.nofile = Some(1000);
    for t in 0..60u64 {
        flat.tick(t * S);
        if t == 0 {
            for fd in 0..500 {
                flat.open(fd, FdKind::File, PID, 0);
            }
        }
    }
    assert!(flat.fired(Rule::FdExhaustion).is_empty());
}

#[test]
fn emfile_fires_at_once_and_ends_after_the_hold() {
    let mut w = World::new();
    w.tick(10 * S);
    assert!(w.fired(Rule::Emfile).is_empty());
    w.process().failures.push_back(FailedSyscall {
        ts_ns: 10 * S,
        tid: 77,
        syscall: nr::OPENAT,
        errno: 24,
    });
    let fired = w.fired(Rule::Emfile);
    assert!(
        fired[0].summary.contains("EMFILE from openat in thread 77"),
        "{}",
        fired[0].summary
    );
    w.tick(10 * S + 301 * S);
    assert!(w.fired(Rule::Emfile).is_empty());
}

#[test]
fn thread_exhaustion_names_the_limit() {
    let mut w = World::new();
    w.limits.pids_max = Some(100);
    w.limits.pids_current = Some(96);
    w.limits.threads_max = Some(100_000);
    w.limits.threads_total = Some(500);
    w.tick(0);
    let fired = w.fired(Rule::ThreadExhaustion);
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].key.as_str(), fired[0].severity),
        ("pids.max", Severity::Critical)
    );
}

#[test]
fn a_call_without_an_answer_past_the_threshold_is_hung() {
    let mut w = World::new();
    w.tick(0);
    w.call(9, "GET", &format!("/v1/nodes/{NODE}"), "", true);
    w.tick(59 * S);
    assert!(w.fired(Rule::IronicCallHung).is_empty());
    w.tick(61 * S);
    let fired = w.fired(Rule::IronicCallHung);
    assert_eq!(fired.len(), 1);
    assert!(fired[0].summary.contains(NODE), "{}", fired[0].summary);
    assert_eq!(fired[0].evidence["tid"], 9);
}

#[test]
fn an_unprovision_loop_near_api_max_retries_fires() {
    let mut w = World::new();
    w.limits.api_max_retries = Some((10, "/etc/nova/nova.conf".into()));
    w.tick(0);
    let key = w.call(
        1,
        "PUT",
        &format!("/v1/nodes/{NODE}/states/provision"),
        r#"{"target": "deleted"}"#,
        false,
    );
    w.answer(key, 202);
    let lookup = format!("/v1/nodes?fields=uuid&instance_uuid={INSTANCE}");
    // ceil(0.8 * 11) = 9 polls fire; 8 do not.
    for poll in 1..=9u64 {
        w.tick(poll * 2 * S);
        if poll == 9 {
            assert!(w.fired(Rule::IronicPollExhaustion).is_empty(), "8 polls");
        }
        let key = w.call(2, "GET", &lookup, "", false);
        w.answer(key, 200);
    }
    let fired = w.fired(Rule::IronicPollExhaustion);
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (
            fired[0].evidence["polls"].as_u64(),
            fired[0].evidence["max_polls"].as_u64()
        ),
        (Some(9), Some(11))
    );
    assert_eq!(fired[0].evidence["api_max_retries_from"], "/etc/nova/nova.conf");
}

#[test]
fn conflicts_on_a_node_above_the_rate_are_a_storm() {
    let mut w = World::new();
    let path = format!("/v1/nodes/{NODE}/states/power");
    for i in 0..5u64 {
        w.tick(i * S);
        let key = w.call(3, "PUT", &path, r#"{"target": "power off"}"#, false);
        w.answer(key, 409);
        if i == 3 {
            assert!(w.fired(Rule::IronicConflictStorm).is_empty(), "4 conflicts");
        }
    }
    let fired = w.fired(Rule::IronicConflictStorm);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].key, format!("node {NODE}"));
    w.tick(70 * S);
    assert!(w.fired(Rule::IronicConflictStorm).is_empty(), "out of the window");
}

#[test]
fn server_errors_and_unanswered_calls_from_ironic_are_counted_per_endpoint() {
    let mut w = World::new();
    w.rules.ironic_call_errors.window_s = 60;
    w.tick(0);
    // Normal answers, a miss and the conflict storm's own statuses are not failures.
    for status in [200, 404, 409, 503] {
        let key = w.call(1, "GET", "/v1/nodes", "", false);
        w.answer(key, status);
    }
    for status in [500, 502] {
        w.tick(10 * S);
        let key = w.call(2, "GET", "/v1/nodes", "", false);
        w.answer(key, status);
    }
    assert!(w.fired(Rule::IronicCallErrors).is_empty(), "two failures");
    // Ironic closes the connection on the third: no answer.
    let key = w.call(3, "GET", &format!("/v1/nodes/{NODE}"), "", false);
    let now = w.now;
    w.process().calls.closed(key, now);
    let fired = w.fired(Rule::IronicCallErrors);
    assert_eq!(fired.len(), 1);
    let finding = &fired[0];
    assert_eq!(finding.key, IRONIC);
    assert!(
        finding.summary.contains("failed 3 calls") && finding.summary.contains("1 unanswered"),
        "{}",
        finding.summary
    );
    let statuses = &finding.evidence["statuses"];
    assert_eq!(
        (&statuses["500"], &statuses["502"], &statuses["unanswered"]),
        (&1.into(), &1.into(), &1.into())
    );
    w.tick(71 * S);
    assert!(w.fired(Rule::IronicCallErrors).is_empty(), "out of the window");
}

#[test]
fn tokens_in_clear_fire_and_tls_does_not() {
    let mut w = World::new();
    w.tick(0);
    w.call(1, "GET", "/v1/nodes", "", true);
    assert!(w.fired(Rule::PlaintextToken).is_empty());
    w.call(1, "GET", "/v1/nodes", "", false);
    let fired = w.fired(Rule::PlaintextToken);
    assert_eq!(fired.len(), 1);
    assert!(
        !format!("{fired:?}").contains(FAKE_TOKEN),
        "the token value never leaves the parser"
    );
    w.tick(601 * S);
    assert!(w.fired(Rule::PlaintextToken).is_empty(), "quiet for quiet_s");
}

#[test]
fn a_token_written_to_a_log_fires_until_the_log_is_quiet() {
    const LOG: &str = "/var/log/nova/nova-compute.log";
    let mut w = World::new();
    w.tick(10 * S);
    assert!(w.fired(Rule::SecretInLog).is_empty());
    let line = |offset| crate::logscan::Sighting {
        path: LOG.to_string(),
        offset,
        kind: crate::logscan::SecretKind::AuthHeader,
    };
    let keep = 610 * S;
    w.history
        .record_log_secrets(&[line(100), line(2500)], 10 * S, keep);
    let fired = w.fired(Rule::SecretInLog);
    assert_eq!(fired.len(), 1);
    let finding = &fired[0];
    assert_eq!(
        (finding.key.as_str(), finding.severity),
        (LOG, Severity::Critical)
    );
    assert!(
        finding.summary.contains("2 lines, the last at byte 2500"),
        "{}",
        finding.summary
    );
    assert_eq!(finding.evidence["kinds"], serde_json::json!(["auth_header"]));
    assert_eq!(finding.evidence["last_offset"], 2500);
    w.tick(610 * S);
    assert_eq!(w.fired(Rule::SecretInLog).len(), 1, "still within quiet_s");
    w.tick(611 * S);
    assert!(w.fired(Rule::SecretInLog).is_empty(), "quiet for quiet_s");
    w.history.record_log_secrets(&[], 621 * S, keep);
    assert!(w.history.log_secrets.is_empty(), "forgotten once resolved");
}

#[test]
fn a_short_lived_child_fires_no_leak() {
    // A genisoimage-like child: many files within seconds, then gone. Its
    // history never covers a window, so no trend can be claimed.
    let mut w = World::new();
    w.rules.fd_leak.window_s = 100;
    w.rules.fd_leak.min_growth = 20;
    for t in 0..10u64 {
        w.tick(t * S);
        for i in 0..10 {
            w.open(100 + (t * 10 + i) as u32, FdKind::File, PID, 0);
        }
    }
    assert!(w.fired(Rule::FdLeak).is_empty());
}

#[test]
fn a_quiet_process_fires_nothing() {
    let mut w = World::new();
    w.limits = Limits::read(std::process::id(), &[]);
    w.limits.nofile = Some(65535);
    for t in 0..700u64 {
        w.tick(t * S);
    }
    assert!(w.findings().is_empty(), "{:?}", w.findings());
}
