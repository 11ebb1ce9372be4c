//! Creations the probes held back (`FdOpenLate`), arriving after what
//! overtook them.

use super::*;

/// An fd event at time `ts_ns`.
fn at(kind: EventKind, syscall: u32, fd: u32, fd2: u32, ts_ns: u64) -> Event<'static> {
    let mut event = fd_event(kind, syscall, fd, fd2, NO_FD, 0);
    event.header.ts_ns = ts_ns;
    Event::Fd(kind, event)
}

/// A copy of `source_fd` (dup, dup2, fcntl) made at `ts_ns`.
fn copy_at(kind: EventKind, syscall: u32, fd: u32, source_fd: u32, ts_ns: u64) -> Event<'static> {
    let mut event = fd_event(kind, syscall, fd, NO_FD, source_fd, 0);
    event.header.ts_ns = ts_ns;
    Event::Fd(kind, event)
}

fn late(ledger: &mut Ledger, syscall: u32, fd: u32, fd2: u32, ts_ns: u64) -> FollowUp {
    ledger.apply(&at(EventKind::FdOpenLate, syscall, fd, fd2, ts_ns))
}

#[test]
fn a_late_creation_nothing_overtook_is_an_ordinary_one() {
    let mut ledger = ledger_with_process();
    assert_eq!(late(&mut ledger, nr::OPENAT, 5, NO_FD, 100), FollowUp::None);
    let entry = ledger.processes[&PID].fds.get(&5).copied().unwrap();
    assert_eq!((entry.birth.ts_ns, entry.birth.syscall), (100, nr::OPENAT));
    assert_eq!(entry.birth.origin, Origin::Syscall);
    assert_eq!(
        (ledger.counters.late_opens, ledger.counters.late_opens_stale),
        (1, 0)
    );
}

#[test]
fn a_late_creation_is_dropped_when_its_fd_was_closed_or_reused_after_it() {
    let mut ledger = ledger_with_process();
    // Another CPU closed fd 5 at 200, after the held-back creation at 100.
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 5, NO_FD, 200));
    // ... and fd 6 was closed and created again (at 300) since its creation at 150.
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 6, NO_FD, 250));
    ledger.apply(&at(EventKind::FdOpen, nr::DUP, 6, NO_FD, 300));
    late(&mut ledger, nr::OPENAT, 5, NO_FD, 100);
    late(&mut ledger, nr::OPENAT, 6, NO_FD, 150);
    assert_eq!(fds(&ledger), [6]);
    assert_eq!(ledger.processes[&PID].fds.get(&6).unwrap().birth.ts_ns, 300);
    assert_eq!(
        (ledger.counters.late_opens, ledger.counters.late_opens_stale),
        (0, 2)
    );
    // A close from before the creation does not make it stale.
    late(&mut ledger, nr::OPENAT, 5, NO_FD, 400);
    assert_eq!(fds(&ledger), [5, 6]);
}

#[test]
fn a_late_creation_a_fork_overtook_has_the_child_reconciled() {
    let mut ledger = ledger_with_process();
    // The fork (at 20) reached the ledger before creations made before it.
    task(&mut ledger, EventKind::TaskNew, 200, 0, PID);
    assert_eq!(
        late(&mut ledger, nr::SOCKET, 5, NO_FD, 10),
        FollowUp::Reconcile(vec![200])
    );
    assert_eq!(fds(&ledger), [5]);
    // Closed by the parent since, the child may hold it still.
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 7, NO_FD, 25));
    assert_eq!(
        late(&mut ledger, nr::OPENAT, 7, NO_FD, 15),
        FollowUp::Reconcile(vec![200])
    );
    assert_eq!(fds(&ledger), [5]);
    // Made after the fork: the parent's alone.
    assert_eq!(late(&mut ledger, nr::OPENAT, 6, NO_FD, 30), FollowUp::None);
    assert_eq!(fds(&ledger), [5, 6]);
    assert_eq!(ledger.counters.late_opens_past_fork, 2);
    // The child forked too (at 20, as the parent did), before that arrived.
    let grandchild = TaskEvent {
        header: EventHeader {
            tgid: 200,
            ..header(EventKind::TaskNew, monitor_common::NO_SYSCALL, 200, 20)
        },
        pid: 300,
        flags: 0,
        comm: comm_from("worker"),
    };
    ledger.apply(&Event::Task(EventKind::TaskNew, grandchild));
    assert_eq!(ledger.processes[&300].reason, WatchReason::Parent(200));
    assert_eq!(
        late(&mut ledger, nr::OPENAT, 8, NO_FD, 12),
        FollowUp::Reconcile(vec![200, 300])
    );
}

#[test]
fn a_late_pair_keeps_the_half_that_was_not_released() {
    let mut ledger = ledger_with_process();
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 7, NO_FD, 200));
    late(&mut ledger, nr::PIPE2, 7, 8, 100);
    assert_eq!(fds(&ledger), [8]);
    assert_eq!(ledger.processes[&PID].fds.get(&8).unwrap().kind, FdKind::Pipe);
    assert_eq!(
        (ledger.counters.late_opens, ledger.counters.late_opens_stale),
        (1, 1)
    );
}

#[test]
fn a_late_creation_inside_a_later_close_range_is_dropped() {
    let mut ledger = ledger_with_process();
    ledger.apply(&at(EventKind::FdCloseRange, nr::CLOSE_RANGE, 3, 10, 200));
    late(&mut ledger, nr::EVENTFD2, 7, NO_FD, 100);
    late(&mut ledger, nr::EVENTFD2, 11, NO_FD, 100);
    assert_eq!(fds(&ledger), [11]);
}

#[test]
fn a_late_creation_replaces_what_reconciliation_found_for_it() {
    let mut ledger = ledger_with_process();
    ledger.begin_scan(PID, 0);
    let scan = Scan {
        fds: vec![FdLink {
            fd: 9,
            target: "/dev/null".into(),
        }],
        threads: vec![],
    };
    ledger.apply_scan(PID, &scan, Origin::Reconciled, 500, |_, _| FdKind::File);
    late(&mut ledger, nr::OPENAT, 9, NO_FD, 100);
    let entry = ledger.processes[&PID].fds.get(&9).copied().unwrap();
    assert_eq!((entry.birth.origin, entry.birth.ts_ns), (Origin::Syscall, 100));
    assert_eq!(ledger.counters.missed_releases, 0);
}

#[test]
fn a_late_creation_from_before_an_exec_sends_the_ledger_to_proc() {
    let mut ledger = ledger_with_process();
    let exec = TaskEvent {
        header: header(EventKind::Exec, monitor_common::NO_SYSCALL, PID, 300),
        pid: PID,
        flags: 0,
        comm: comm_from("nova-compute"),
    };
    assert!(matches!(
        ledger.apply(&Event::Task(EventKind::Exec, exec)),
        FollowUp::Exec { .. }
    ));
    assert_eq!(
        late(&mut ledger, nr::OPENAT, 5, NO_FD, 100),
        FollowUp::Reconcile(vec![PID])
    );
    assert!(fds(&ledger).is_empty());
    assert_eq!(late(&mut ledger, nr::OPENAT, 5, NO_FD, 400), FollowUp::None);
    assert_eq!(fds(&ledger), [5]);
}

#[test]
fn a_late_creation_names_the_call_in_flight_at_its_birth_though_it_has_ended() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::SOCKET, 7);
    let request = "GET /v1/nodes HTTP/1.1\r\nX-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n\r\n";
    let response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    data(&mut ledger, 7, 0, 100, request.as_bytes());
    data(&mut ledger, 7, data_flags::READ, 300, response.as_bytes());
    let call = ledger.processes[&PID]
        .calls
        .recent()
        .next()
        .map(|c| c.reference());
    assert!(call.is_some(), "the call was recorded");
    // An eventfd made at 200, while the call waited, applied after its answer.
    late(&mut ledger, nr::EVENTFD2, 8, NO_FD, 200);
    late(&mut ledger, nr::EVENTFD2, 9, NO_FD, 350);
    let fds = &ledger.processes[&PID].fds;
    assert_eq!(fds[&8].birth.call, call);
    assert_eq!(fds[&9].birth.call, None, "born after the answer");
}

#[test]
fn a_late_dup_copies_its_source_as_it_was_though_closed_and_reused_since() {
    let mut ledger = ledger_with_process();
    ledger.apply(&at(EventKind::FdOpen, nr::EVENTFD2, 5, NO_FD, 100));
    // dup2(5, 1) at 200 is held back; 5 is closed at 300 and its number
    // taken by a file at 400, both from another CPU and applied first.
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 5, NO_FD, 300));
    ledger.apply(&at(EventKind::FdOpen, nr::OPENAT, 5, NO_FD, 400));
    ledger.apply(&copy_at(EventKind::FdOpenLate, nr::DUP2, 1, 5, 200));
    // An on-time dup of the new fd 5 copies the file.
    ledger.apply(&copy_at(EventKind::FdOpen, nr::DUP2, 7, 5, 500));
    // Sources released by close_range, or by a dup2 onto their number.
    ledger.apply(&at(EventKind::FdOpen, nr::EPOLL_CREATE1, 10, NO_FD, 100));
    ledger.apply(&at(EventKind::FdOpen, nr::PIPE2, 11, 12, 100));
    ledger.apply(&at(EventKind::FdCloseRange, nr::CLOSE_RANGE, 10, 10, 300));
    ledger.apply(&copy_at(EventKind::FdOpen, nr::DUP2, 11, 7, 600));
    for (fd, source) in [(20, 10), (21, 11)] {
        ledger.apply(&copy_at(EventKind::FdOpenLate, nr::DUP, fd, source, 250));
    }
    let fds = &ledger.processes[&PID].fds;
    assert_eq!((fds[&1].kind, fds[&1].provisional), (FdKind::Eventfd, false));
    assert_eq!(fds[&7].kind, FdKind::File);
    assert_eq!(fds[&11].kind, FdKind::File, "dup2 put a copy of the file there");
    assert_eq!((fds[&20].kind, fds[&21].kind), (FdKind::Epoll, FdKind::Pipe));
}

/// A thread made fd 40 (held back on its CPU), moved, and closed it with a
/// close_range among many short ones (a process closing runs of its
/// numbers): however many came after, the late creation is still stale.
#[test]
fn a_late_creation_closed_by_one_of_many_short_close_ranges_is_dropped() {
    let mut ledger = ledger_with_process();
    ledger.apply(&at(EventKind::FdCloseRange, nr::CLOSE_RANGE, 40, 47, 200));
    for i in 0..100 {
        let first = 100 + 8 * i;
        ledger.apply(&at(
            EventKind::FdCloseRange,
            nr::CLOSE_RANGE,
            first,
            first + 7,
            300 + u64::from(i),
        ));
    }
    late(&mut ledger, nr::DUP3, 40, NO_FD, 100);
    assert_eq!(fds(&ledger), [] as [u32; 0]);
    assert_eq!(ledger.counters.late_opens_stale, 1);
}
