//! TCP sockets of watched processes: owner-correct state with its age,
//! connect outcomes per endpoint, shared sockets, churn, labels.

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
use tests::{
    daemon::Daemon,
    require_root, scratch_dir, truth, watched_workload,
    workload::{ForkedChild, Workload},
};

/// The daemon's view of the socket that `fd` of `pid` holds.
fn socket_of(daemon: &Daemon, pid: u32, fd: u64) -> Option<Value> {
    daemon.sync();
    let ledger = daemon.ledger(pid);
    ledger["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fds"].as_array().unwrap().contains(&fd.into()))
        .cloned()
}

fn holds_no_socket(daemon: &Daemon, pid: u32) -> bool {
    daemon.sync();
    daemon.ledger(pid)["sockets"].as_array().unwrap().is_empty()
}

fn endpoint(daemon: &Daemon, pid: u32, addr: &str) -> Value {
    daemon.sync();
    let ledger = daemon.ledger(pid);
    let found = ledger["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == addr)
        .cloned();
    found.unwrap_or_else(|| panic!("no endpoint {addr} in {:#}", ledger["endpoints"]))
}

/// A loopback listener of this (unwatched) test process, and its address.
fn listener() -> (TcpListener, String) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap().to_string();
    (server, addr)
}

/// The workload's whole answer to `connect ADDR HOW`.
/// A listener whose accept queue is full, so that it drops further SYNs;
/// the connection that fills it comes along (keep all three).
fn full_listener() -> (TcpListener, String, TcpStream) {
    let (full, addr) = listener();
    // SAFETY: listen(2) again on our own socket, to shrink the backlog to 0.
    assert_eq!(
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&full), 0) },
        0
    );
    // backlog 0 queues one connection: this one.
    let queued = TcpStream::connect(&addr).unwrap();
    (full, addr, queued)
}

fn connect_reply(workload: &mut Workload, addr: &str, how: &str) -> Value {
    workload.send(&format!("connect {addr} {how}"));
    workload.expect("connected")
}

fn connect(workload: &mut Workload, addr: &str, how: &str) -> (u64, i64) {
    let done = connect_reply(workload, addr, how);
    (done["fd"].as_u64().unwrap(), done["errno"].as_i64().unwrap())
}

/// With the state hook refused (a kernel without the BTF tracepoint) and
/// sock_diag failing (a host that cannot load tcp_diag, or a process in
/// another network namespace), a socket's states still come from
/// /proc/PID/net at each reconciliation. The socket is made on one CPU and
/// connected from another (where there are two), so that nothing but a
/// flush ships its held-back creation: often the reconciliation's own, and
/// the scan must still bind the fd to the socket /proc listed.
#[test]
fn without_the_state_hook_or_sock_diag_states_come_from_proc_net() {
    if !require_root("without_the_state_hook_or_sock_diag_states_come_from_proc_net") {
        return;
    }
    let env = [("LEAKMON_TEST_REFUSE_HOOKS", "sock_set_state,sock_diag")];
    let (daemon, mut workload, _) =
        tests::watched_workload_with_env("procnet-states", "lmw-procnet", &["serve"], &env);
    let (server, addr) = listener();
    let mut done = connect_reply(&mut workload, &addr, "migrate");
    if done["cpus"] == 1 {
        done = connect_reply(&mut workload, &addr, "plain");
    }
    assert_eq!(done["errno"], 0, "{done}");
    let fd = done["fd"].as_u64().unwrap();
    let accepted = server.accept().unwrap().0;
    let state_after_reconcile = || {
        daemon.request(serde_json::json!({"request": "reconcile"}));
        socket_of(&daemon, workload.pid, fd).and_then(|s| s["state"].as_str().map(str::to_string))
    };
    assert_eq!(state_after_reconcile().as_deref(), Some("ESTABLISHED"));
    drop(accepted);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state_after_reconcile().as_deref() != Some("CLOSE_WAIT") {
        assert!(std::time::Instant::now() < deadline, "never CLOSE_WAIT");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = daemon.log_text();
    assert_eq!(
        log.matches("sock_diag dump failed").count(),
        1,
        "warned once: {log}"
    );
}

#[test]
fn close_wait_has_owner_and_growing_age_until_closed() {
    if !require_root("close_wait_has_owner_and_growing_age_until_closed") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("close-wait", "lmw-cw", &["serve"]);
    // The server is this (unwatched) test process: it accepts, then hangs up.
    let (server, addr) = listener();
    let (fd, errno) = connect(&mut workload, &addr, "plain");
    assert_eq!(errno, 0);
    let (accepted, _) = server.accept().unwrap();
    drop(accepted);

    let first = daemon.await_status("the socket to reach CLOSE_WAIT", Duration::from_secs(10), |_| {
        socket_of(&daemon, workload.pid, fd).is_some_and(|s| s["state"] == "CLOSE_WAIT")
    });
    let _ = first;
    let socket = socket_of(&daemon, workload.pid, fd).unwrap();
    assert_eq!(socket["remote"], addr.as_str());
    assert_eq!(
        socket["state_seen"], true,
        "the transition itself was seen: {socket}"
    );
    let ledger = daemon.ledger(workload.pid);
    let birth = &ledger["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == fd)
        .unwrap()["birth"];
    assert_eq!(
        birth["tid"], workload.pid,
        "created by the workload's main thread"
    );
    assert_eq!(birth["syscall"], "socket");
    let age = socket["age_in_state_s"].as_f64().unwrap();
    daemon.await_status("the age in CLOSE_WAIT to grow", Duration::from_secs(10), |_| {
        socket_of(&daemon, workload.pid, fd).unwrap()["age_in_state_s"]
            .as_f64()
            .unwrap()
            > age + 0.5
    });
    assert_eq!(
        socket_of(&daemon, workload.pid, fd).unwrap()["state_since"],
        socket["state_since"]
    );

    workload.send(&format!("close {fd}"));
    workload.expect("closed");
    assert!(
        socket_of(&daemon, workload.pid, fd).is_none(),
        "a closed socket leaves the ledger"
    );
    assert!(holds_no_socket(&daemon, workload.pid));
}

#[test]
fn refused_timed_out_nonblocking_and_fast_open_connects_count_per_endpoint() {
    if !require_root("refused_timed_out_nonblocking_and_fast_open_connects_count_per_endpoint") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("connects", "lmw-connects", &["serve"]);
    // Refused: a port nobody listens on (its listener is dropped at once).
    let closed = listener().1;
    let (_, errno) = connect(&mut workload, &closed, "plain");
    assert_eq!(errno, libc::ECONNREFUSED as i64);
    // Timed out: a listener whose accept queue is full drops further SYNs.
    let (_full, full_addr, _queued) = full_listener();
    let (_, errno) = connect(&mut workload, &full_addr, "syncnt1");
    assert_eq!(errno, libc::ETIMEDOUT as i64);
    // Non-blocking: EINPROGRESS, then established.
    let (_open, open_addr) = listener();
    let (fd, errno) = connect(&mut workload, &open_addr, "nonblock");
    assert_eq!(errno, 0);
    // eventlet's way, to a peer that drops the SYN: EINPROGRESS, connect()
    // again (EALREADY), wait until writable, connect() again (the error).
    let (_again_full, again_addr, _queued_too) = full_listener();
    let reply = connect_reply(&mut workload, &again_addr, "askagain");
    assert_eq!(
        (&reply["extra"]["again"], &reply["errno"]),
        (&libc::EALREADY.into(), &libc::ETIMEDOUT.into()),
        "{reply}"
    );
    // TCP Fast Open: the SYN leaves from sendto(MSG_FASTOPEN), not connect().
    let (_fast, fast_addr) = listener();
    let (fast_fd, errno) = connect(&mut workload, &fast_addr, "fastopen");
    assert_eq!(errno, 0);

    let refused = endpoint(&daemon, workload.pid, &closed);
    assert_eq!(
        (refused["connects"].as_u64(), refused["refused"].as_u64()),
        (Some(1), Some(1)),
        "{refused}"
    );
    let timed_out = endpoint(&daemon, workload.pid, &full_addr);
    assert_eq!(
        (timed_out["connects"].as_u64(), timed_out["timeouts"].as_u64()),
        (Some(1), Some(1)),
        "{timed_out}"
    );
    let ok = endpoint(&daemon, workload.pid, &open_addr);
    assert_eq!(
        (ok["connects"].as_u64(), ok["established"].as_u64()),
        (Some(1), Some(1)),
        "{ok}"
    );
    assert_eq!(ok["latency"]["count"], 1);
    let socket = socket_of(&daemon, workload.pid, fd).unwrap();
    assert_eq!(socket["connect"]["outcome"], "established");
    assert_eq!(socket["connect"]["nonblocking"], true);
    assert_eq!(socket["state"], "ESTABLISHED");
    let again = endpoint(&daemon, workload.pid, &again_addr);
    assert_eq!(
        (
            again["connects"].as_u64(),
            again["timeouts"].as_u64(),
            again["errors"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "asking again is no new connect: {again}"
    );
    let fast = endpoint(&daemon, workload.pid, &fast_addr);
    assert_eq!(
        (fast["connects"].as_u64(), fast["established"].as_u64()),
        (Some(1), Some(1)),
        "{fast}"
    );
    let socket = socket_of(&daemon, workload.pid, fast_fd).unwrap();
    assert_eq!(socket["connect"]["outcome"], "established", "{socket}");
    assert_eq!(
        (&socket["state"], &socket["state_seen"]),
        (&"ESTABLISHED".into(), &true.into()),
        "the probes saw the Fast Open connection's states, not /proc: {socket}"
    );
}

/// A non-blocking connect to a closed port, completed with poll and
/// getsockopt(SO_ERROR) as CPython does (the connect() itself says
/// EINPROGRESS, no verdict), by a process watched by a daemon whose `refused`
/// hooks the test fault switch refuses: the daemon's status, and the
/// endpoint's record after the ledger took every record in.
fn nonblocking_refusal(name: &str, comm: &str, refused: &str) -> (Value, Value) {
    let env = [("LEAKMON_TEST_REFUSE_HOOKS", refused)];
    let (daemon, mut workload, _) = tests::watched_workload_with_env(name, comm, &["serve"], &env);
    let closed = listener().1;
    let (_, errno) = connect(&mut workload, &closed, "nonblock");
    assert_eq!(errno, libc::ECONNREFUSED as i64);
    let endpoint = endpoint(&daemon, workload.pid, &closed);
    (daemon.status(), endpoint)
}

/// A refused connect is counted as refused from the close's own record:
/// with the error-report and SO_ERROR hooks refused (as if the owner had
/// read the error before those probes could, a race the kernel allows), the
/// SYN_SENT -> CLOSE change carries the error, which the kernel sets before
/// it and the owner cannot clear until after it.
#[test]
fn a_refused_connect_is_a_refusal_from_its_close_alone() {
    if !require_root("a_refused_connect_is_a_refusal_from_its_close_alone") {
        return;
    }
    let (status, refused) =
        nonblocking_refusal("refused-close", "lmw-refclose", "sock_error_report,sockopt_exit");
    assert_eq!(
        (refused["connects"].as_u64(), refused["refused"].as_u64()),
        (Some(1), Some(1)),
        "{refused}"
    );
    assert_eq!(status["ledger"]["socket_errors_read"], 0);
}

/// Older kernels (5.15, 6.1) wake a connect's owner with the error report,
/// before the close: the owner's getsockopt(SO_ERROR) may clear the error
/// before either socket probe loads it. The probe on getsockopt's return
/// ships what the owner read; here the error-report hook is refused, and the
/// daemon must have received the value the workload read.
#[test]
fn a_connect_error_read_with_so_error_reaches_the_ledger() {
    if !require_root("a_connect_error_read_with_so_error_reaches_the_ledger") {
        return;
    }
    let (status, refused) = nonblocking_refusal("refused-read", "lmw-refread", "sock_error_report");
    assert_eq!(
        (refused["connects"].as_u64(), refused["refused"].as_u64()),
        (Some(1), Some(1)),
        "{refused}"
    );
    assert_eq!(
        status["ledger"]["socket_errors_read"], 1,
        "{:#}",
        status["ledger"]
    );
}

/// socket() on one CPU, connect() from another. The creation is held back on
/// the first CPU (as short-lived fds are), so it reaches the daemon after the
/// connect's records: the ledger must keep the socket and bind the fd when
/// the creation arrives, not leave it unbound until the next reconciliation,
/// a minute away (which would show `state_seen: false`).
#[test]
fn a_socket_connected_from_another_cpu_keeps_every_state() {
    if !require_root("a_socket_connected_from_another_cpu_keeps_every_state") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("migrate", "lmw-migrate", &["serve"]);
    let (server, addr) = listener();
    let done = connect_reply(&mut workload, &addr, "migrate");
    if done["cpus"] == 1 {
        eprintln!("a_socket_connected_from_another_cpu_keeps_every_state: skipped, one CPU");
        return;
    }
    assert_eq!(done["errno"], 0, "{done}");
    let fd = done["fd"].as_u64().unwrap();
    let (accepted, _) = server.accept().unwrap();
    drop(accepted);
    daemon.await_status("the socket to reach CLOSE_WAIT", Duration::from_secs(5), |_| {
        socket_of(&daemon, workload.pid, fd).is_some_and(|s| s["state"] == "CLOSE_WAIT")
    });
    let socket = socket_of(&daemon, workload.pid, fd).unwrap();
    assert_eq!(socket["state_seen"], true, "{socket}");
    assert_eq!(socket["connect"]["outcome"], "established", "{socket}");
    assert_eq!(endpoint(&daemon, workload.pid, &addr)["connects"], 1);
    workload.send(&format!("close {fd}"));
    workload.expect("closed");
    assert!(holds_no_socket(&daemon, workload.pid));
}

#[test]
fn dup_fork_and_scm_rights_keep_the_owner() {
    if !require_root("dup_fork_and_scm_rights_keep_the_owner") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("shared", "lmw-shared", &["serve"]);
    let (server, addr) = listener();
    let (fd, _) = connect(&mut workload, &addr, "plain");
    let (accepted, _) = server.accept().unwrap();
    workload.send(&format!("share {fd}"));
    let received = workload.expect("received");
    let shared = workload.expect("shared");
    let (dup, child) = (
        shared["dup"].as_u64().unwrap(),
        received["pid"].as_u64().unwrap() as u32,
    );
    let reaped = ForkedChild(child);

    // The peer hangs up: one state change, seen by every holder.
    drop(accepted);
    daemon.await_status("CLOSE_WAIT", Duration::from_secs(10), |_| {
        socket_of(&daemon, workload.pid, fd).is_some_and(|s| s["state"] == "CLOSE_WAIT")
    });
    let socket = socket_of(&daemon, workload.pid, fd).unwrap();
    assert_eq!(
        socket["fds"],
        serde_json::json!([fd, dup]),
        "both of the parent's fds: {socket}"
    );
    let holders: Vec<(u64, u64)> = socket["shared_with"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["pid"].as_u64().unwrap(), h["fd"].as_u64().unwrap()))
        .collect();
    for expected in [
        (child as u64, fd),
        (child as u64, dup),
        (child as u64, received["fd"].as_u64().unwrap()),
    ] {
        assert!(holders.contains(&expected), "{expected:?} not among {holders:?}");
    }
    let in_child = socket_of(&daemon, child, received["fd"].as_u64().unwrap()).unwrap();
    assert_eq!(
        (in_child["inode"].clone(), in_child["state"].clone()),
        (socket["inode"].clone(), "CLOSE_WAIT".into())
    );

    // The parent lets go; the child still holds it; then the child dies.
    workload.send(&format!("close {fd}"));
    workload.expect("closed");
    workload.send(&format!("close {dup}"));
    workload.expect("closed");
    assert!(
        socket_of(&daemon, child, fd).is_some(),
        "the child still holds it"
    );
    reaped.kill();
    daemon.await_status("the child to be forgotten", Duration::from_secs(10), |s| {
        !s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == child)
    });
    assert!(holds_no_socket(&daemon, workload.pid));
}

/// socket() is not walked: a copy made before the connect learns the socket
/// from the connect (a dup) or from /proc (a forked child).
#[test]
fn copies_made_before_the_connect_keep_the_socket() {
    if !require_root("copies_made_before_the_connect_keep_the_socket") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("early-copies", "lmw-early", &["serve"]);
    let (server, addr) = listener();

    // The dup connects; the peer hangs up; the dup is closed first. Moved:
    // the dup and its connect reach the daemon before the socket's creation.
    for how in ["dupfirst", "dupmoved"] {
        let done = connect_reply(&mut workload, &addr, how);
        if done["cpus"] == 1 {
            eprintln!("copies_made_before_the_connect_keep_the_socket: {how} skipped, one CPU");
            continue;
        }
        let (fd, dup) = (
            done["fd"].as_u64().unwrap(),
            done["extra"]["dup"].as_u64().unwrap(),
        );
        drop(server.accept().unwrap().0);
        daemon.await_status(&format!("{how}: CLOSE_WAIT"), Duration::from_secs(10), |_| {
            socket_of(&daemon, workload.pid, dup).is_some_and(|s| s["state"] == "CLOSE_WAIT")
        });
        let socket = socket_of(&daemon, workload.pid, dup).unwrap();
        assert_eq!(socket["fds"], serde_json::json!([fd, dup]), "{how}: {socket}");
        workload.send(&format!("close {dup}"));
        workload.expect("closed");
        let left = socket_of(&daemon, workload.pid, fd).expect("the original fd still holds the socket");
        assert_eq!(
            (&left["inode"], &left["state"], left["state_seen"].as_bool()),
            (&socket["inode"], &socket["state"], Some(true)),
            "{how}"
        );
        workload.send(&format!("close {fd}"));
        workload.expect("closed");
        assert!(holds_no_socket(&daemon, workload.pid), "{how}");
    }

    // A child forked before the parent connects holds the socket too, also
    // when the fork's record overtook the socket's creation (held back on
    // the CPU that made it, and the fork made on another).
    for how in ["forkfirst", "forkmoved"] {
        let done = connect_reply(&mut workload, &addr, how);
        if done["cpus"] == 1 {
            eprintln!("copies_made_before_the_connect_keep_the_socket: {how} skipped, one CPU");
            continue;
        }
        let (fd, child) = (
            done["fd"].as_u64().unwrap(),
            done["extra"]["child"].as_u64().unwrap() as u32,
        );
        let _reaped = ForkedChild(child);
        let accepted = server.accept().unwrap().0;
        daemon.await_status(
            &format!("{how}: the child's copy to be named"),
            Duration::from_secs(10),
            |_| socket_of(&daemon, child, fd).is_some(),
        );
        workload.send(&format!("close {fd}"));
        workload.expect("closed");
        drop(accepted);
        daemon.await_status(
            &format!("{how}: CLOSE_WAIT in the child"),
            Duration::from_secs(10),
            |_| {
                socket_of(&daemon, child, fd)
                    .is_some_and(|s| s["state"] == "CLOSE_WAIT" && s["state_seen"] == true)
            },
        );
    }
}

#[test]
fn twenty_thousand_cycles_leave_the_ledger_equal_to_ss() {
    if !require_root("twenty_thousand_cycles_leave_the_ledger_equal_to_ss") {
        return;
    }
    let (daemon, mut workload, _) = watched_workload("churn", "lmw-churn", &["serve"]);
    workload.send("churn 20000 25");
    let churned = workload.expect("churned");
    daemon.sync();
    let ledger = daemon.ledger(workload.pid);
    let states: BTreeMap<u64, String> = ledger["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let state = s["state"].as_str().unwrap_or("?").to_string();
            s["fds"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |fd| (fd.as_u64().unwrap(), state.clone()))
        })
        .collect();
    let ss: BTreeMap<u64, String> = truth::ss_tcp_states(workload.pid)
        .into_iter()
        .map(|(fd, s)| (fd as u64, s))
        .collect();
    assert_eq!(states, ss, "ledger sockets vs ss -tanp");
    assert_eq!(
        states.len(),
        churned["kept"].as_array().unwrap().len() + 1,
        "the kept pairs and the listener"
    );
    let status = daemon.status();
    assert_eq!(
        status["ledger"]["socket_states_fixed"], 0,
        "no state change was missed"
    );
    // A socket leaves the ledger when its close begins: the probes ship
    // nothing of what that close (a reset's own ECONNRESET report too) and
    // the orphan's end do to it. One race remains: a packet the other CPU's
    // softirq handles between the close's entry (which ships the close) and
    // the close taking the socket's lock changes its state with nothing in
    // the socket to say a close has begun. Such a change is counted and
    // dropped. It happened to 1 socket of these 20,000 in one CI run (0 in
    // six runs beside two CPU hogs); before the probes learned about closes,
    // 100,000 changes arrived late.
    let unowned = status["ledger"]["socket_events_unowned"].as_u64().unwrap();
    eprintln!("churn: {unowned} socket events of released sockets");
    assert!(
        unowned <= 20,
        "{unowned} state changes or errors of released sockets reached the daemon"
    );
}

#[test]
fn endpoints_are_labelled_by_default_port_and_by_config() {
    if !require_root("endpoints_are_labelled_by_default_port_and_by_config") {
        return;
    }
    let dir = scratch_dir("labels");
    let (server, addr) = listener();
    let daemon = Daemon::start_with_config(
        &dir,
        &format!("[endpoints]\n\"{addr}\" = \"test-api\"\n"),
        &["--match-comm", "lmw-labels"],
    );
    let mut workload = Workload::spawn(&dir, "lmw-labels", &["serve"]);
    workload.expect("ready");
    daemon.sync();
    let (fd, _) = connect(&mut workload, &addr, "plain");
    let (_accepted, _) = server.accept().unwrap();
    // memcached's port: refused here, labelled by default.
    connect(&mut workload, "127.0.0.1:11211", "plain");

    assert_eq!(endpoint(&daemon, workload.pid, &addr)["label"], "test-api");
    assert_eq!(
        endpoint(&daemon, workload.pid, "127.0.0.1:11211")["label"],
        "memcached"
    );
    assert_eq!(socket_of(&daemon, workload.pid, fd).unwrap()["label"], "test-api");

    let snapshot = std::process::Command::new(tests::binary("leakmon", "LEAKMON_BIN"))
        .args(["snapshot", "--pid", &workload.pid.to_string(), "--control-socket"])
        .arg(&daemon.socket)
        .arg("--config")
        .arg(dir.join("leakmon.toml"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&snapshot.stdout);
    assert!(
        table.lines().any(|l| l.starts_with(&format!(
            "test-api {addr}  ESTABLISHED 1  connects 1 refused 0 timeouts 0"
        ))),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("memcached 127.0.0.1:11211  connects 1 refused 1")),
        "{table}"
    );
}
