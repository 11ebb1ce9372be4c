//! Random churn on every CPU: fd numbers reused across threads and CPUs,
//! creations held back and cancelled, closes by another thread, dup3 onto
//! numbers in use, close_range, copies received by SCM_RIGHTS, forks amid
//! it all (half of the children exec), TCP connections the peer closes or
//! keeps. However the records interleave, are held back or lost, the
//! ledgers end equal to /proc and ss.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{daemon::Daemon, require_root, scratch_dir, truth, workload::Workload};

use crate::ledger::{assert_ledger_is_proc, counter};

/// What the daemon repairs after the churn (a forked child's fds at the next
/// housekeeping, within a second or two here) must be done by then: a
/// deadline for slow emulated VMs (`cargo xtask vm`), not a wait.
const SETTLED_WITHIN: Duration = Duration::from_secs(20);

/// Runs the workload in `mode` (`mix` or `mix-wide`) as `comm` (4 threads,
/// 3 s; `extra`: its server address) under `daemon`: the workload, the daemon's status just before
/// the churn, and the workload's `mixed` report.
fn churn(
    dir: &std::path::Path,
    daemon: &Daemon,
    comm: &str,
    mode: &str,
    extra: &[&str],
) -> (Workload, Value, Value) {
    let mut args = vec![mode, "4", "3000"];
    args.extend_from_slice(extra);
    let mut workload = Workload::spawn(dir, comm, &args);
    workload.expect("started");
    daemon.sync();
    let before = daemon.status();
    workload.send("go");
    let mixed = workload.expect_within("mixed", Duration::from_secs(30));
    (workload, before, mixed)
}

#[test]
fn random_fd_churn_on_every_cpu_ends_with_the_ledger_equal_to_proc() {
    if !require_root("random_fd_churn_on_every_cpu_ends_with_the_ledger_equal_to_proc") {
        return;
    }
    // The first mix: the emulated VMs run this test ("ledger" in its name).
    churn_ends_with_the_ledger_equal_to_proc("mix");
}

/// The wide mix adds copies received by SCM_RIGHTS, dup3 onto numbers in
/// use, close_range over runs of them and children that exec. On the host
/// only (not named for the VM runs), where its cost is lower; under
/// emulation its last failure (a child's ledger kept the fds its exec had
/// closed: a reconciliation's scan read before the exec and applied after
/// it, fixed since) was one in 54 runs, and 16 runs after the fix passed.
#[test]
fn wide_random_fd_churn_on_every_cpu_ends_as_proc_from_records_alone() {
    if !require_root("wide_random_fd_churn_on_every_cpu_ends_as_proc_from_records_alone") {
        return;
    }
    churn_ends_with_the_ledger_equal_to_proc("mix-wide");
}

/// Four threads on two CPUs for 3 s (`mode`, see the workload's mix.rs):
/// numbers reused across threads and CPUs, creations held back and
/// cancelled, closes by another thread. The ledger ends equal to /proc
/// from the records alone.
fn churn_ends_with_the_ledger_equal_to_proc(mode: &str) {
    let dir = scratch_dir(mode);
    // The ledger's debug lines say which creation found its number held.
    let env = [("RUST_LOG", "info,monitor::ledger=debug,monitor::engine=debug")];
    let daemon = Daemon::start_with_env(&dir, &["--match-comm", "lmw-mix"], &env);
    let (workload, before, mixed) = churn(&dir, &daemon, "lmw-mix", mode, &[]);
    // The workload's own ledger from the records alone: nothing was lost
    // (checked first: after a loss the rest may differ until reconciled),
    // and no fd in it was found by a reconciliation.
    daemon.sync();
    let status = daemon.status();
    assert_eq!(
        counter(&status, &["kernel", "lost_total"]),
        0,
        "{}",
        status["kernel"]
    );
    let fds = assert_ledger_is_proc(&daemon, workload.pid);
    let reconciled: Vec<&Value> = (fds.values())
        .filter(|fd| fd["birth"]["origin"] == "reconciled")
        .collect();
    assert!(reconciled.is_empty(), "{reconciled:?}");
    // The children forked amid the churn hold what they inherited. The
    // kernel copies the fd table before the fork's record, so what other
    // threads did in between is off in the copy: each child is read from
    // /proc at the next housekeeping (without that, children missed or
    // kept a few fds until the periodic reconciliation).
    let children = mixed["children"].as_array().unwrap();
    assert_eq!(children.len(), 8, "{mixed}");
    for child in children {
        let child = child.as_u64().unwrap() as u32;
        daemon.await_ledger_is_proc(child, SETTLED_WITHIN);
    }
    // Threads: ~2,400 started and ended (one every 5 ms per thread, each
    // creating an fd), 8 named ones alive: the ledger's threads and names are
    // /proc's (a joined thread may linger in /proc a moment).
    let deadline = Instant::now() + SETTLED_WITHIN;
    loop {
        daemon.sync();
        let ledger: BTreeMap<u32, String> = daemon.ledger(workload.pid)["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["tid"].as_u64().unwrap() as u32,
                    t["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let proc = truth::proc_threads(workload.pid);
        if ledger == proc {
            let sleepers = proc
                .values()
                .filter(|name| name.starts_with("mix-sleeper-"))
                .count();
            assert_eq!(sleepers, 8, "{proc:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads: ledger {ledger:?}\nvs /proc {proc:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let kept = mixed["kept"].as_array().unwrap();
    assert!(kept.len() > 20, "the threads kept only {kept:?}");
    for fd in kept {
        assert!(
            fds.contains_key(&(fd.as_u64().unwrap() as u32)),
            "kept fd {fd} not in the ledger"
        );
    }
    let cancelled =
        counter(&status, &["kernel", "short_lived_fds"]) - counter(&before, &["kernel", "short_lived_fds"]);
    let opened = counter(&status, &["ledger", "fds_opened"]) - counter(&before, &["ledger", "fds_opened"]);
    assert!(
        cancelled > 1000 && opened > 1000,
        "held back {cancelled}, shipped {opened}"
    );
    // Not only at the end: no creation ever found its number still held
    // (a ghost that a later reuse of the number would have hidden). A
    // creation that its close on another CPU overtook is dropped, not
    // applied (`late_opens_stale`; applying it fails this, in 59 of 616k).
    let log = daemon.log_text();
    let missed: Vec<&str> = log.lines().filter(|l| l.contains("still held")).collect();
    assert_eq!(
        counter(&status, &["ledger", "missed_releases"]),
        counter(&before, &["ledger", "missed_releases"]),
        "{}\n{missed:#?}",
        status["ledger"]
    );
    workload.exit();
}

#[test]
fn random_fd_churn_through_a_full_ring_is_repaired_to_proc() {
    if !require_root("random_fd_churn_through_a_full_ring_is_repaired_to_proc") {
        return;
    }
    let dir = scratch_dir("mix-overflow");
    let daemon = Daemon::start_with_config(
        &dir,
        "[probes]\nring_buffer_bytes = 4096\nwakeup_bytes = 2048\n",
        &["--match-comm", "lmw-mixlost"],
    );
    let (workload, _, _) = churn(&dir, &daemon, "lmw-mixlost", "mix-wide", &[]);
    // Whatever the losses took (creations, closes, held-back ones), the
    // reconciliation after them, and the recheck it may schedule, end equal.
    daemon.await_ledger_is_proc(workload.pid, Duration::from_secs(10));
    let status = daemon.status();
    let lost = status["kernel"]["lost_total"].as_u64().unwrap();
    assert!(
        lost > 0,
        "nothing was lost, so this proved nothing: {}",
        status["kernel"]
    );
    workload.exit();
}

/// A TCP server that closes half of what it accepts at once and keeps the
/// other half, up to the last 256 (closing the oldest): its clients' sockets
/// end ESTABLISHED or CLOSE_WAIT.
struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(TcpListener, VecDeque<TcpStream>)>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut kept = VecDeque::new();
            let mut accepted = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted += 1;
                        if accepted.is_multiple_of(2) {
                            kept.push_back(stream);
                            if kept.len() > 256 {
                                kept.pop_front();
                            }
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
            (listener, kept)
        });
        Server { addr, stop, thread }
    }

    /// Stops accepting; what it holds stays open until dropped.
    fn stop(self) -> (TcpListener, VecDeque<TcpStream>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// fd -> TCP state of `pid`'s sockets in the daemon's ledger.
fn ledger_tcp_states(daemon: &Daemon, pid: u32) -> BTreeMap<u32, String> {
    daemon.ledger(pid)["sockets"]
        .as_array()
        .unwrap()
        .iter()
        // A socket that never connected has no state on record (ss does not
        // list it either).
        .filter(|s| s["state"].is_string())
        .flat_map(|s| {
            let state = s["state"].as_str().unwrap().to_string();
            s["fds"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |fd| (fd.as_u64().unwrap() as u32, state.clone()))
        })
        .collect()
}

/// Not in the VM smokes (its name does not say `ledger`): on Ubuntu's 5.15
/// under emulation in one CI run, six sockets of the last connections (from
/// three threads, in the churn's last 60 ms) were never bound to their
/// inodes (no socket entry, ss: ESTABLISHED or CLOSE_WAIT) for 20 s; it
/// passed in two runs there before. The cause is not established (README,
/// "What is not built yet").
#[test]
fn random_socket_churn_with_forks_ends_with_the_states_ss_gives() {
    if !require_root("random_socket_churn_with_forks_ends_with_the_states_ss_gives") {
        return;
    }
    let dir = scratch_dir("mix-sockets");
    let daemon = Daemon::start(&dir, &["--match-comm", "lmw-mixsock"]);
    let server = Server::start();
    let (workload, _, mixed) = churn(&dir, &daemon, "lmw-mixsock", "mix-wide", &[&server.addr]);
    let _held = server.stop();
    let mut pids = vec![workload.pid];
    pids.extend(
        mixed["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as u32),
    );
    let mut seen = BTreeMap::<String, usize>::new();
    for pid in pids {
        let ss = truth::ss_tcp_states(pid);
        for state in ss.values() {
            *seen.entry(state.clone()).or_default() += 1;
        }
        let deadline = Instant::now() + SETTLED_WITHIN;
        loop {
            daemon.sync();
            let held = ledger_tcp_states(&daemon, pid);
            if held == ss {
                break;
            }
            if Instant::now() >= deadline {
                let ledger = daemon.ledger(pid);
                let differ: Vec<u32> = (held.keys().chain(ss.keys()))
                    .filter(|fd| held.get(fd) != ss.get(fd))
                    .copied()
                    .collect();
                let entries: Vec<&Value> = (ledger["fds"].as_array().unwrap().iter())
                    .filter(|e| differ.contains(&(e["fd"].as_u64().unwrap() as u32)))
                    .collect();
                let sockets: Vec<&Value> = (ledger["sockets"].as_array().unwrap().iter())
                    .filter(|s| {
                        (s["fds"].as_array().unwrap().iter())
                            .any(|fd| differ.contains(&(fd.as_u64().unwrap() as u32)))
                    })
                    .collect();
                let log = daemon.log_text();
                let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
                let proc = truth::proc_fds(pid);
                panic!(
                    "{pid}: after {SETTLED_WITHIN:?}, fds {differ:?}: ledger {:?}, ss {:?}, /proc {:?}\n\
                     their ledger entries: {entries:?}\ntheir sockets: {sockets:?}\nstatus: {}\n\
                     daemon warnings: {warnings:#?}",
                    differ.iter().map(|fd| held.get(fd)).collect::<Vec<_>>(),
                    differ.iter().map(|fd| ss.get(fd)).collect::<Vec<_>>(),
                    differ.iter().map(|fd| proc.get(fd)).collect::<Vec<_>>(),
                    daemon.status()["ledger"]
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    // Fds of connections in both states the leak rule looks at, each from
    // its state changes (not repaired from sock_diag).
    assert!(
        seen.get("ESTABLISHED") > Some(&10) && seen.get("CLOSE_WAIT") > Some(&10),
        "{seen:?}"
    );
    let status = daemon.status();
    assert_eq!(
        counter(&status, &["kernel", "lost_total"]),
        0,
        "{}",
        status["kernel"]
    );
    assert_eq!(status["ledger"]["socket_states_fixed"], 0, "{}", status["ledger"]);
    workload.exit();
}
