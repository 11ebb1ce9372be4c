//! HTTP calls on connections the daemon did not see being opened (right
//! after an exec it had not handled yet, or before it started), on one
//! where an answer could not be read, and a call retried on a new TLS
//! connection after a timeout.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{daemon::Daemon, require_root, scratch_dir, testbed::Testbed, workload::Workload};

const NODE: &str = "5d8f0b6a-3c1e-4a2b-9c7d-1e2f3a4b5c6d";

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// Answers every request on every connection with 200 after `delay`, until
/// the test ends.
fn answering_server(delay: Duration) -> SocketAddr {
    answers_in_turn(delay, &[OK])
}

/// Answers the requests on each connection with `answers` in turn (the
/// last one again once they run out), each after `delay`.
fn answers_in_turn(delay: Duration, answers: &'static [&'static [u8]]) -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut request = [0u8; 4096];
                let mut turn = 0;
                while conn.read(&mut request).is_ok_and(|n| n > 0) {
                    std::thread::sleep(delay);
                    let answer = answers[turn.min(answers.len() - 1)];
                    turn += 1;
                    if conn.write_all(answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The daemon's completed calls of `pid`, each as (its `field`, status),
/// and the whole answer.
fn recent_calls(daemon: &Daemon, pid: u32, field: &str) -> (Vec<(Value, Value)>, Value) {
    daemon.sync();
    let calls = daemon.request(json!({"request": "calls", "pid": pid}));
    let recent = (calls["recent"].as_array().unwrap().iter())
        .map(|call| (call[field].clone(), call["status"].clone()))
        .collect();
    (recent, calls)
}

#[test]
fn a_connection_made_right_after_exec_is_captured() {
    let test = "calls-early";
    if !require_root(test) {
        return;
    }
    // The workload connects before the daemon can have handled its exec:
    // the probes track the socket at once, and the daemon must not mistake
    // the entry for a stale one while the socket's events are still queued.
    let addr = answering_server(Duration::ZERO);
    let (daemon, mut workload, ready) =
        tests::watched_workload(test, "lm-early", &["http-early", &addr.to_string()]);
    // Past the daemon's housekeeping (which collects stale entries) twice.
    let status = daemon.status();
    let since = status["uptime_s"].as_f64().unwrap();
    daemon.await_status("two housekeeping passes", Duration::from_secs(10), |s| {
        s["uptime_s"].as_f64().unwrap() > since + 2.5
    });
    workload.send(&format!("http-send {} /v1/nodes/{NODE}", ready["fd"]));
    workload.expect("sent");
    assert_eq!(
        recent_calls(&daemon, workload.pid, "kind").0,
        [(json!("node_get"), json!(200))]
    );
}

/// A keep-alive connection opened before the daemon started, like the pool
/// nova-compute holds to Ironic when leakmon is (re)started: every call on
/// it keeps its answer, also one that takes longer than the daemon's
/// once-a-second housekeeping.
#[test]
fn calls_on_a_connection_older_than_the_daemon_keep_their_answers() {
    let test = "calls-older";
    if !require_root(test) {
        return;
    }
    let addr = answering_server(Duration::from_millis(600));
    let dir = scratch_dir(test);
    let mut workload = Workload::spawn(&dir, "lm-older", &["http-early", &addr.to_string()]);
    let fd = workload.expect("ready")["fd"].clone();
    let daemon = Daemon::start(&dir, &["--match-comm", "lm-older"]);
    for _ in 0..5 {
        workload.send(&format!("http-send {fd} /v1/nodes/{NODE}"));
        workload.expect("sent");
    }
    let (called, _) = recent_calls(&daemon, workload.pid, "kind");
    assert_eq!(called, vec![(json!("node_get"), json!(200)); 5]);
}

/// A call in flight when the daemon starts (written before, its answer read
/// after): the probes take a connection older than the daemon to have last
/// read, so that answer passes for the rest of an earlier one and is not
/// shipped; the calls after it on the connection keep their own answers.
#[test]
fn an_answer_to_a_request_written_before_the_daemon_goes_to_no_later_call() {
    let test = "calls-inflight-at-start";
    if !require_root(test) {
        return;
    }
    let addr = answering_server(Duration::ZERO);
    let dir = scratch_dir(test);
    let mut workload = Workload::spawn(&dir, "lm-inflight", &["http-early", &addr.to_string()]);
    let fd = workload.expect("ready")["fd"].clone();
    workload.send(&format!("http-write {fd} /v1/nodes/{NODE}"));
    workload.expect("written");
    let daemon = Daemon::start(&dir, &["--match-comm", "lm-inflight"]);
    daemon.sync();
    workload.send(&format!("http-read {fd}"));
    workload.expect("read");
    for _ in 0..2 {
        workload.send(&format!("http-send {fd} /v1/nodes/{NODE}/validate"));
        workload.expect("sent");
    }
    let (called, calls) = recent_calls(&daemon, workload.pid, "kind");
    assert_eq!(called, vec![(json!("validate"), json!(200)); 2], "{calls:#}");
    assert!(calls["in_flight"].as_array().unwrap().is_empty(), "{calls:#}");
    assert_eq!(
        (
            &calls["parse"]["responses"],
            &calls["parse"]["unmatched_responses"]
        ),
        (&json!(2), &json!(0)),
        "{calls:#}"
    );
}

/// The first answer on a keep-alive connection cannot be parsed (a status
/// that is not a number): its call ends when the next request goes out, as
/// answered unseen, and the next answer is the next call's. Before, that
/// 200 went to the first call and the second stayed in flight.
#[test]
fn a_call_whose_answer_went_unread_ends_at_the_next_request() {
    let test = "calls-unread";
    if !require_root(test) {
        return;
    }
    let addr = answers_in_turn(
        Duration::ZERO,
        &[b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", OK],
    );
    let (daemon, mut workload, _) = tests::watched_workload(test, "lm-unread", &["serve"]);
    workload.send(&format!("connect {addr} plain"));
    let fd = workload.expect("connected")["fd"].clone();
    for _ in 0..2 {
        workload.send(&format!("http-send {fd} /v1/nodes/{NODE}"));
        workload.expect("sent");
    }
    let (ends, calls) = recent_calls(&daemon, workload.pid, "end");
    assert_eq!(
        ends,
        [
            (json!("answer_unseen"), Value::Null),
            (json!("answered"), json!(200))
        ],
        "{calls:#}"
    );
    assert!(calls["in_flight"].as_array().unwrap().is_empty(), "{calls:#}");
    assert_eq!(calls["parse"]["answers_unseen"], 1);
}

/// nova's HTTP client retries a call that timed out on a new connection;
/// CPython frees the old SSL object, and the new one often takes its
/// address. Both calls are captured, the retry with its answer (before, the
/// probes kept the old connection's stream state for that address: the
/// retry passed for the body of the unanswered request and went unseen).
#[test]
fn a_call_retried_on_a_new_tls_connection_after_a_timeout_is_captured() {
    let test = "calls-tls-retry";
    if !require_root(test) {
        return;
    }
    let bed = Testbed::install();
    let dir = scratch_dir(test);
    let tls = TlsFiles::of(&bed);
    let (_server, port) = tls.server(&bed, false);
    let daemon = Daemon::start(&dir, &["--match-cmdline", r"tls_retry\.py client"]);
    let mut client = Workload::start(bed.nova_python("tls_retry.py", &["client", &port, &tls.ca()]));
    client.expect("ready");
    let pid = client.pid;
    await_tls_probes(&daemon, pid);
    client.send("go");
    assert_eq!(client.expect("called")["statuses"], json!([null, 200]));
    let (ends, calls) = recent_calls(&daemon, pid, "end");
    assert_eq!(
        ends,
        [
            (json!("connection_closed"), Value::Null),
            (json!("answered"), json!(200))
        ],
        "{calls:#}"
    );
}

/// nova-compute's pooled HTTPS connection to Ironic when leakmon is
/// (re)started: its SSL object and socket are older than the daemon, and
/// every call on it after the probes attach is captured with its answer.
#[test]
fn calls_on_a_tls_connection_older_than_the_daemon_are_captured() {
    let test = "calls-tls-older";
    if !require_root(test) {
        return;
    }
    let mut tls = PooledTls::start(test, |_| {});
    for _ in 0..3 {
        tls.client.send("go");
        assert_eq!(tls.client.expect("called")["status"], 200);
    }
    let (called, calls) = recent_calls(&tls.daemon, tls.client.pid, "kind");
    assert_eq!(called, vec![(json!("node_get"), json!(200)); 3], "{calls:#}");
    assert!(calls["in_flight"].as_array().unwrap().is_empty(), "{calls:#}");
}

/// A TLS call in flight when the daemon starts (its request written before,
/// its answer read after): as on a plain connection, an SSL object older
/// than the daemon is taken to have last read, so that answer is not
/// shipped and no response goes unmatched; the next call keeps its own.
#[test]
fn an_answer_on_a_tls_connection_older_than_the_daemon_goes_to_no_later_call() {
    let test = "calls-tls-inflight-at-start";
    if !require_root(test) {
        return;
    }
    let mut tls = PooledTls::start(test, |client| {
        client.send("write");
        client.expect("written");
    });
    tls.client.send("read");
    assert_eq!(tls.client.expect("read")["status"], 200);
    tls.client.send("go");
    assert_eq!(tls.client.expect("called")["status"], 200);
    let (called, calls) = recent_calls(&tls.daemon, tls.client.pid, "kind");
    assert_eq!(called, vec![(json!("node_get"), json!(200))], "{calls:#}");
    let parse = &calls["parse"];
    assert_eq!(
        (&parse["responses"], &parse["unmatched_responses"]),
        (&json!(1), &json!(0)),
        "{calls:#}"
    );
}

/// A `tls_retry.py pooled` client (its connection made, one call answered)
/// that `before` drives before the daemon starts; the daemon once its TLS
/// probes are on. Fields drop in order: the processes, then the directory.
struct PooledTls {
    client: Workload,
    daemon: Daemon,
    _server: Workload,
    _dir: tests::ScratchDir,
}

impl PooledTls {
    fn start(test: &str, before: impl FnOnce(&mut Workload)) -> PooledTls {
        let bed = Testbed::install();
        let dir = scratch_dir(test);
        let tls = TlsFiles::of(&bed);
        let (server, port) = tls.server(&bed, true);
        let mut client = Workload::start(bed.nova_python("tls_retry.py", &["pooled", &port, &tls.ca()]));
        client.expect("ready");
        before(&mut client);
        let daemon = Daemon::start(&dir, &["--match-cmdline", r"tls_retry\.py pooled"]);
        await_tls_probes(&daemon, client.pid);
        PooledTls {
            client,
            daemon,
            _server: server,
            _dir: dir,
        }
    }
}

/// The testbed's certificate files.
struct TlsFiles(std::path::PathBuf);

impl TlsFiles {
    fn of(bed: &Testbed) -> TlsFiles {
        TlsFiles(bed.cache.join("tls"))
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }

    /// tls_retry.py's server (answering every connection if `answer_all`)
    /// and its port.
    fn server(&self, bed: &Testbed, answer_all: bool) -> (Workload, String) {
        let mut args = vec![
            "server".to_string(),
            self.path("server.pem"),
            self.path("server.key"),
        ];
        if answer_all {
            args.push("all".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Workload::start(bed.nova_python("tls_retry.py", &args));
        let port = server.expect("listening")["port"].to_string();
        (server, port)
    }
}

fn await_tls_probes(daemon: &Daemon, pid: u32) {
    daemon.await_status("the client's TLS probes", Duration::from_secs(30), |s| {
        (s["tls"].as_array().unwrap().iter()).any(|a| a["pid"] == pid)
    });
}
