//! fd, thread and process events applied in order.

use super::*;

#[test]
fn opens_and_closes_keep_birth_records() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    open_socket(&mut ledger, 6, 2);
    close(&mut ledger, 5);
    close(&mut ledger, 42);

    let entry = ledger.processes[&PID].fds[&6];
    assert_eq!((entry.kind, entry.provisional), (FdKind::SocketTcp, false));
    assert_eq!(
        (entry.birth.tid, entry.birth.syscall, entry.birth.origin),
        (PID, nr::SOCKET, Origin::Syscall)
    );
    assert_eq!(fds(&ledger), [6]);
    let c = &ledger.counters;
    assert_eq!((c.fds_opened, c.fds_closed, c.unknown_closes), (2, 1, 1));
}

#[test]
fn pairs_dups_and_ranges() {
    let mut ledger = ledger_with_process();
    let pipe = fd_event(EventKind::FdOpen, nr::PIPE2, 3, 4, NO_FD, 0);
    ledger.apply(&Event::Fd(EventKind::FdOpen, pipe));
    open(&mut ledger, nr::EVENTFD2, 7);
    // dup2(3, 7): 7 is replaced by a copy of the pipe's read end.
    let dup2 = fd_event(EventKind::FdOpen, nr::DUP2, 7, NO_FD, 3, 0);
    ledger.apply(&Event::Fd(EventKind::FdOpen, dup2));
    let entry = ledger.processes[&PID].fds[&7];
    assert_eq!((entry.kind, entry.source_fd), (FdKind::Pipe, 3));
    assert_eq!(ledger.counters.replaced_by_dup, 1);
    assert_eq!(ledger.counters.missed_releases, 0);

    open(&mut ledger, nr::OPENAT, 10);
    let range = fd_event(EventKind::FdCloseRange, nr::CLOSE_RANGE, 4, 9, NO_FD, 0);
    ledger.apply(&Event::Fd(EventKind::FdCloseRange, range));
    assert_eq!(fds(&ledger), [3, 10]);
}

/// A range shorter than the table is walked by number, a longer one by the
/// table: the same fds close either way. One the kernel refused (first
/// after last) closes nothing.
#[test]
fn close_ranges_short_long_and_refused() {
    let cases: [(u32, u32, &[u32]); 3] = [
        (5, 7, &[3, 4, 8, 10]),
        (4, u32::MAX, &[3]),
        (9, 5, &[3, 4, 5, 7, 8, 10]),
    ];
    for (first, last, left) in cases {
        let mut ledger = ledger_with_process();
        for fd in [3, 4, 5, 7, 8, 10] {
            open(&mut ledger, nr::OPENAT, fd);
        }
        let range = fd_event(EventKind::FdCloseRange, nr::CLOSE_RANGE, first, last, NO_FD, 0);
        ledger.apply(&Event::Fd(EventKind::FdCloseRange, range));
        assert_eq!(fds(&ledger), left, "close_range({first}, {last})");
        assert_eq!(ledger.counters.fds_closed, 6 - left.len() as u64);
    }
}

#[test]
fn an_open_over_a_live_fd_counts_a_missed_release() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    open(&mut ledger, nr::OPENAT, 5);
    assert_eq!(ledger.counters.missed_releases, 1);
}

#[test]
fn threads_come_and_go_and_the_last_exit_forgets_the_process() {
    let mut ledger = ledger_with_process();
    task(&mut ledger, EventKind::TaskNew, 101, task_flags::THREAD, PID);
    let thread = ledger.processes[&PID].threads[&101];
    assert_eq!((thread.creator, thread.start_ns), (Some(PID), 20));
    // A birth on the new thread carries its name.
    let mut event = fd_event(EventKind::FdOpen, nr::OPENAT, 5, NO_FD, NO_FD, 0);
    event.header.tid = 101;
    ledger.apply(&Event::Fd(EventKind::FdOpen, event));
    assert_eq!(comm_str(&ledger.processes[&PID].fds[&5].birth.thread), "worker");

    task(&mut ledger, EventKind::TaskExit, 101, 0, 101);
    assert!(!ledger.processes[&PID].threads.contains_key(&101));
    // A creation it made on a CPU it left arrives after its exit: still named.
    let mut event = fd_event(EventKind::FdOpenLate, nr::EVENTFD2, 6, NO_FD, NO_FD, 0);
    event.header.tid = 101;
    ledger.apply(&Event::Fd(EventKind::FdOpenLate, event));
    assert_eq!(comm_str(&ledger.processes[&PID].fds[&6].birth.thread), "worker");
    assert_eq!(
        task(&mut ledger, EventKind::TaskExit, PID, task_flags::GROUP_DEAD, PID),
        FollowUp::None
    );
    assert!(ledger.processes.is_empty());
    assert_eq!(ledger.counters.processes_forgotten, 1);
}

#[test]
fn without_group_dead_the_leaders_exit_and_any_after_it_ask_proc() {
    let unknown = task_flags::GROUP_DEAD_UNKNOWN;
    let mut ledger = ledger_with_process();
    for tid in [101, 102] {
        task(&mut ledger, EventKind::TaskNew, tid, task_flags::THREAD, PID);
    }
    // While the leader lives, a thread's exit cannot be the last.
    assert_eq!(
        task(&mut ledger, EventKind::TaskExit, 101, unknown, 101),
        FollowUp::None
    );
    // The leader's exit may be; so may any thread's after it.
    assert_eq!(
        task(&mut ledger, EventKind::TaskExit, PID, unknown, PID),
        FollowUp::MaybeGone(PID)
    );
    assert_eq!(
        task(&mut ledger, EventKind::TaskExit, 102, unknown, 102),
        FollowUp::MaybeGone(PID)
    );
}

#[test]
fn a_forked_child_inherits_the_parents_fds() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    task(&mut ledger, EventKind::TaskNew, 200, 0, PID);
    let child = &ledger.processes[&200];
    assert_eq!(child.reason, WatchReason::Parent(PID));
    assert_eq!(child.fds[&5].birth.origin, Origin::Inherited);
    assert_eq!(child.threads.len(), 1);
}

#[test]
fn a_full_ledger_refuses_a_forked_child_and_has_the_kernel_drop_it() {
    let mut ledger = ledger_with_process();
    for pid in 1..DEFAULT_MAX_PROCESSES as u32 {
        let other = 10_000 + pid;
        ledger.watch(Process::new(
            other,
            "other".into(),
            vec![],
            1,
            WatchReason::Pid,
            1,
        ));
    }
    assert!(ledger.is_full());
    assert_eq!(
        task(&mut ledger, EventKind::TaskNew, 200, 0, PID),
        FollowUp::Unwatch(200)
    );
    assert!(!ledger.processes.contains_key(&200));
    assert_eq!(ledger.counters.processes_refused, 1);
    // Threads of a followed process are not processes: still followed.
    assert_eq!(
        task(&mut ledger, EventKind::TaskNew, 101, task_flags::THREAD, PID),
        FollowUp::None
    );
    assert!(ledger.processes[&PID].threads.contains_key(&101));
    // Once one goes, a child fits again (and is read from /proc soon: its
    // copy of the parent's fds may be off by what other threads did while
    // the kernel forked it).
    ledger.forget(10_001);
    assert_eq!(
        task(&mut ledger, EventKind::TaskNew, 201, 0, PID),
        FollowUp::Reconcile(vec![201])
    );
    assert!(ledger.processes.contains_key(&201));
}

#[test]
fn exec_keeps_only_the_fds_still_open_and_one_thread() {
    let mut ledger = ledger_with_process();
    task(&mut ledger, EventKind::TaskNew, 101, task_flags::THREAD, PID);
    open(&mut ledger, nr::OPENAT, 5);
    open(&mut ledger, nr::OPENAT, 6);
    let follow = task(&mut ledger, EventKind::Exec, 101, task_flags::WAS_WATCHED, PID);
    assert!(matches!(
        follow,
        FollowUp::Exec {
            pid: PID,
            old_tid: 101,
            ..
        }
    ));
    ledger.exec_happened(PID, 101, comm_from("nova-compute"), vec![], &HashSet::from([6]));
    let process = &ledger.processes[&PID];
    assert_eq!(fds(&ledger), [6]);
    assert_eq!(process.threads.keys().copied().collect::<Vec<_>>(), [PID]);
    assert_eq!(ledger.counters.exec_cloexec_closed, 1);
}

/// A call waits on socket fd 7 when the process execs and fd 7 closes on
/// exec: the call ends then, unanswered (it stayed in flight before).
#[test]
fn an_exec_ends_the_calls_on_the_sockets_it_closed() {
    let mut ledger = ledger_with_process();
    open_socket(&mut ledger, 7, 2);
    let request = b"GET /v1/nodes HTTP/1.1\r\nHost: ironic\r\n\r\n";
    data(&mut ledger, 7, 0, 30, request);
    ledger.processes.get_mut(&PID).unwrap().exec_ns = 40; // its exec record's time
    ledger.exec_happened(PID, PID, comm_from("nova-compute"), vec![], &HashSet::new());
    let calls = &ledger.processes[&PID].calls;
    assert_eq!(calls.in_flight().count(), 0);
    let call = calls.recent().next().unwrap();
    assert_eq!(
        (call.end, call.finished_ns),
        (Some(crate::calls::CallEnd::ConnectionClosed), Some(40))
    );
}

/// The exec closed fd 5 (close-on-exec), but the new program had opened 5
/// again when the daemon listed its fds: the old entry was kept, and the
/// program's creation of 5 finds it. That is the exec's close, not a
/// missed one (seen in the wide churn's exec'ing children).
#[test]
fn a_creation_after_an_exec_replaces_what_the_exec_closed() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5); // at 10
    task(&mut ledger, EventKind::Exec, PID, task_flags::WAS_WATCHED, PID); // at 20
    ledger.exec_happened(PID, PID, comm_from("nova-compute"), vec![], &HashSet::from([5]));
    let mut again = fd_event(EventKind::FdOpen, nr::OPENAT, 5, NO_FD, NO_FD, 0);
    again.header.ts_ns = 30;
    ledger.apply(&Event::Fd(EventKind::FdOpen, again));
    assert_eq!(ledger.processes[&PID].fds[&5].birth.ts_ns, 30);
    let c = &ledger.counters;
    assert_eq!((c.missed_releases, c.exec_cloexec_closed), (0, 1));
    // Before the exec, the same finding is a missed release.
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    ledger.apply(&Event::Fd(EventKind::FdOpen, again));
    assert_eq!(ledger.counters.missed_releases, 1);
}

#[test]
fn received_rights_become_fds_and_a_cut_capture_asks_for_reconcile() {
    let mut ledger = ledger_with_process();
    let mut control = Vec::new();
    control.extend_from_slice(&24usize.to_ne_bytes());
    control.extend_from_slice(&1i32.to_ne_bytes());
    control.extend_from_slice(&1i32.to_ne_bytes());
    control.extend_from_slice(&8u32.to_ne_bytes());
    control.extend_from_slice(&9u32.to_ne_bytes());
    let h = header(EventKind::FdReceived, nr::RECVMSG, PID, 30);
    assert_eq!(ledger.apply(&Event::Received(h, 24, &control)), FollowUp::None);
    assert_eq!(fds(&ledger), [8, 9]);
    assert_eq!(ledger.processes[&PID].fds[&8].birth.origin, Origin::ScmRights);
    assert!(ledger.processes[&PID].fds[&8].provisional);
    assert_eq!(
        ledger.apply(&Event::Received(h, 64, &control)),
        FollowUp::Reconcile(vec![PID])
    );
}

#[test]
fn failures_are_kept_bounded_and_counted() {
    let mut ledger = ledger_with_process();
    for _ in 0..(FAILURES_KEPT + 5) {
        let event = fd_event(EventKind::FdFailed, nr::OPENAT, NO_FD, NO_FD, NO_FD, 24);
        ledger.apply(&Event::Fd(EventKind::FdFailed, event));
    }
    let process = &ledger.processes[&PID];
    assert_eq!(process.failures.len(), FAILURES_KEPT);
    assert_eq!(process.failures_total, FAILURES_KEPT as u64 + 5);
}

#[test]
fn events_of_unknown_processes_are_counted_not_applied() {
    let mut ledger = Ledger::default();
    open(&mut ledger, nr::OPENAT, 5);
    assert_eq!(ledger.counters.events_unowned, 1);
}

/// A write to a socket the probes marked when the process connected it to
/// a syslog path (the record says which): scanned under that stream's name
/// though the once-a-second look never saw the fd.
#[test]
fn a_write_the_probes_marked_at_a_syslog_connect_is_scanned_under_its_path() {
    let mut ledger = ledger_with_process();
    ledger.syslog_paths = vec!["/run/other".into(), "/dev/log".into()];
    open_socket(&mut ledger, 7, 2);
    let message = b"<14>nova: {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}";
    let second_path = 1 << data_flags::SYSLOG_PATH_SHIFT;
    data(
        &mut ledger,
        7,
        data_flags::LOG | data_flags::SYSLOG | second_path,
        30,
        message,
    );
    let streams = &mut ledger.processes.get_mut(&PID).unwrap().log_streams;
    assert_eq!(streams.names(), ["syslog (/dev/log)"]);
    let (sightings, _, _) = streams.take();
    assert_eq!(sightings.len(), 1);
    assert_eq!(sightings[0].path, "syslog (/dev/log)");
}
