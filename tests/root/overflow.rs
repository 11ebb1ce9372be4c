//! A ring buffer far too small: every loss is counted and reconciliation
//! brings the ledger back to /proc by itself. Socket-tracking maps too
//! small: what they miss is counted too.

use std::{net::TcpListener, time::Duration};

use tests::{daemon::Daemon, require_root, scratch_dir, workload::Workload};

/// Well before the periodic reconciliation (60 s).
const REPAIRED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn forced_overflow_is_counted_and_repaired() {
    if !require_root("forced_overflow_is_counted_and_repaired") {
        return;
    }
    let dir = scratch_dir("overflow");
    let daemon = Daemon::start_with_config(
        &dir,
        "[probes]\nring_buffer_bytes = 4096\nwakeup_bytes = 4095\ndrain_interval_ms = 10000\n",
        &["--match-comm", "lmw-flood"],
    );
    let mut workload = Workload::spawn(&dir, "lmw-flood", &["flood", "10000"]);
    workload.expect("started");
    daemon.sync();
    workload.send("go");
    workload.expect("ready");
    // A new thread opens a file at once: it gets the fd number the flood's
    // last open+close pairs used (their cancelled close may still look
    // under way to the reconciliation after the loss), and its creation
    // record may be lost too.
    workload.send("drip files 0 1");
    workload.expect("dripped");

    // The flood is over: no more losses can come. Await the reconciliation
    // that covers the last of them (on a slow machine an earlier one may
    // have run mid-flood).
    let status = daemon.await_status(
        "every loss to be noticed and reconciled",
        Duration::from_secs(20),
        |s| {
            let lost = s["kernel"]["lost_total"].as_u64().unwrap_or(0);
            lost > 0 && s["engine"]["lost_reconciled"].as_u64() == Some(lost)
        },
    );
    let lost = status["kernel"]["lost_total"].as_u64().unwrap();
    // 10k eventfd creations through 4 KiB (~85 records) with a reader that
    // wakes only when it is full (the open+close pairs cancel in the kernel).
    assert!(lost > 5_000, "lost only {lost}");

    // Repaired by that reconciliation, or by the one it schedules a second
    // later for an fd in doubt; not left to the periodic one (60 s).
    let ledger = daemon.await_ledger_is_proc(workload.pid, REPAIRED_WITHIN);
    let eventfds = ledger["counts"]["eventfd"].as_u64().unwrap();
    assert_eq!(eventfds, 10_000);
    let counters = &daemon.status()["ledger"];
    assert!(
        counters["reconcile_fds_added"].as_u64().unwrap() > 0,
        "{counters}"
    );
    workload.send("exit");
}

#[test]
fn a_flood_the_daemon_cannot_keep_up_with_leaves_it_answering() {
    if !require_root("a_flood_the_daemon_cannot_keep_up_with_leaves_it_answering") {
        return;
    }
    let dir = scratch_dir("outpaced");
    // Nothing held back: every dup and close of the loop is a record, more
    // a second than this (debug) daemon applies.
    let daemon = Daemon::start_with_config(
        &dir,
        "[probes]\nhold_back_fds = false\n",
        &["--match-comm", "lmw-outpace"],
    );
    let mut workload = Workload::spawn(&dir, "lmw-outpace", &["loop", "dup", "4000000000"]);
    workload.expect("started");
    daemon.sync();
    workload.send("go");
    // Each request waits for one bounded drain at most, however far behind
    // the daemon is (before the bound, the first one went unanswered for
    // the client's whole minute).
    let mut status = daemon.status();
    for _ in 0..10 {
        let asked = std::time::Instant::now();
        status = daemon.status();
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(10), "status took {took:?}");
    }
    let engine = &status["engine"];
    assert!(
        engine["drains_cut_short"].as_u64() > Some(0),
        "the daemon kept up with the loop, so this proved nothing: {engine}"
    );
    workload.send("exit");
}

/// With room for two sockets in the probes' tracking maps (a test-only
/// switch), a watched process's third and fourth connects cannot be
/// tracked: each is counted, the daemon says so once, and the first two
/// keep their states.
#[test]
fn a_full_socket_tracking_map_is_counted_and_said_once() {
    if !require_root("a_full_socket_tracking_map_is_counted_and_said_once") {
        return;
    }
    let dir = scratch_dir("tracking-full");
    let daemon = Daemon::start_with_env(
        &dir,
        &["--match-comm", "lmw-untracked"],
        &[("LEAKMON_TEST_TRACKING_ENTRIES", "2")],
    );
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let mut workload = Workload::spawn(&dir, "lmw-untracked", &["serve"]);
    workload.expect("ready");
    daemon.sync();
    let mut fds = Vec::new();
    for _ in 0..4 {
        workload.send(&format!("connect {addr} plain"));
        fds.push(workload.expect("connected")["fd"].as_u64().unwrap());
    }
    // Counted in the kernel at once; said at the next housekeeping.
    let said = "socket maps are full";
    let status = daemon.await_status(
        "the misses to be counted and said",
        Duration::from_secs(10),
        |s| s["kernel"]["tracking_full"] == 2 && daemon.log_text().contains(said),
    );
    let ledger = daemon.ledger(workload.pid);
    let mut tracked: Vec<u64> = (ledger["sockets"].as_array().unwrap().iter())
        .filter(|s| s["state_seen"] == true)
        .flat_map(|s| s["fds"].as_array().unwrap().iter().map(|fd| fd.as_u64().unwrap()))
        .collect();
    tracked.sort_unstable();
    assert_eq!(tracked, fds[..2], "{}", ledger["sockets"]);
    assert_eq!(daemon.log_text().matches(said).count(), 1, "{}", status["kernel"]);
    workload.send("exit");
}

/// The same room, filled by user space: a process's five TCP sockets
/// (a listener and two connected pairs), opened before the daemon started,
/// go into the HTTP capture's map at every housekeeping. The three it
/// cannot take are counted once each, however often they are offered again,
/// and said once.
#[test]
fn socket_fds_older_than_the_daemon_that_do_not_fit_are_counted_once() {
    let test = "socket_fds_older_than_the_daemon_that_do_not_fit_are_counted_once";
    if !require_root(test) {
        return;
    }
    let dir = scratch_dir("seeds-full");
    let mut workload = Workload::spawn(&dir, "lmw-seeds", &["bulk", "0", "0", "2", "0", "0"]);
    workload.expect("ready");
    let daemon = Daemon::start_with_env(
        &dir,
        &["--match-comm", "lmw-seeds"],
        &[("LEAKMON_TEST_TRACKING_ENTRIES", "2")],
    );
    let since = daemon.status()["uptime_s"].as_f64().unwrap();
    let status = daemon.await_status("three housekeeping passes", REPAIRED_WITHIN, |s| {
        s["uptime_s"].as_f64().unwrap() > since + 3.5
    });
    assert_eq!(status["kernel"]["tracking_full"], 3, "{}", status["kernel"]);
    assert_eq!(daemon.log_text().matches("socket maps are full").count(), 1);
    workload.send("exit");
}
