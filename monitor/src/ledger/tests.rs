//! The ledger on synthetic event timelines.

use std::collections::HashSet;

use monitor_common::{
    EventHeader, EventKind, FdEvent, NO_FD, TaskEvent, socket_detail, syscalls as nr, task_flags,
};

use super::*;
use crate::ledger::reconcile::ScanFixes;
use crate::{
    engine::decode::{DataMeta, Event},
    fdkind::FdKind,
    proc::{FdLink, ThreadInfo},
};

const PID: u32 = 100;

fn ledger_with_process() -> Ledger {
    let mut ledger = Ledger::default();
    let mut process = Process::new(PID, "nova-compute".into(), vec![], 1, WatchReason::Pid, 1);
    process.threads.insert(
        PID,
        ThreadEntry {
            name: comm_from("nova-compute"),
            start_ns: 1,
            creator: None,
            origin: Origin::BeforeStart,
            birth_call: None,
            first_call: None,
        },
    );
    ledger.watch(process);
    ledger
}

fn header(kind: EventKind, syscall: u32, tid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        syscall,
        tgid: PID,
        tid,
        ts_ns,
    }
}

fn fd_event(kind: EventKind, syscall: u32, fd: u32, fd2: u32, source_fd: u32, detail: u32) -> FdEvent {
    FdEvent {
        header: header(kind, syscall, PID, 10),
        fd,
        fd2,
        source_fd,
        detail,
        inode: 0,
    }
}

fn open(ledger: &mut Ledger, syscall: u32, fd: u32) {
    let event = fd_event(EventKind::FdOpen, syscall, fd, NO_FD, NO_FD, 0);
    assert_eq!(ledger.apply(&Event::Fd(EventKind::FdOpen, event)), FollowUp::None);
}

fn close(ledger: &mut Ledger, fd: u32) {
    let event = fd_event(EventKind::FdClose, nr::CLOSE, fd, NO_FD, NO_FD, 0);
    ledger.apply(&Event::Fd(EventKind::FdClose, event));
}

fn task(ledger: &mut Ledger, kind: EventKind, pid: u32, flags: u32, tid: u32) -> FollowUp {
    let event = TaskEvent {
        header: header(kind, monitor_common::NO_SYSCALL, tid, 20),
        pid,
        flags,
        comm: comm_from("worker"),
    };
    ledger.apply(&Event::Task(kind, event))
}

fn fds(ledger: &Ledger) -> Vec<u32> {
    let mut fds: Vec<u32> = ledger.processes[&PID].fds.keys().copied().collect();
    fds.sort();
    fds
}

#[test]
fn opens_and_closes_keep_birth_records() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    let socket = fd_event(
        EventKind::FdOpen,
        nr::SOCKET,
        6,
        NO_FD,
        NO_FD,
        socket_detail(2, 1, 0),
    );
    ledger.apply(&Event::Fd(EventKind::FdOpen, socket));
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
    // Once one goes, a child fits again.
    ledger.forget(10_001);
    assert_eq!(task(&mut ledger, EventKind::TaskNew, 201, 0, PID), FollowUp::None);
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
        FollowUp::Reconcile(PID)
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

fn link(fd: u32, target: &str) -> FdLink {
    FdLink {
        fd,
        target: target.into(),
    }
}

fn thread(tid: u32) -> ThreadInfo {
    ThreadInfo {
        tid,
        name: "t".into(),
        state: 'S',
        start_ns: 5,
    }
}

#[test]
fn reconciliation_repairs_both_ways_and_counts() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5); // closed unseen
    open(&mut ledger, nr::SOCKET, 6); // kind still a guess? no: socket is sure
    ledger.begin_scan(PID);
    let scan = Scan {
        fds: vec![link(6, "socket:[1]"), link(7, "pipe:[2]")],
        threads: vec![thread(PID), thread(300)],
    };
    let fixes = ledger.apply_scan(PID, &scan, Origin::Reconciled, 50, |_, _| FdKind::Pipe);
    assert_eq!(
        fixes,
        ScanFixes {
            fds_added: 1,
            fds_removed: 1,
            kinds_fixed: 0,
            threads_added: 1,
            threads_removed: 0
        }
    );
    assert_eq!(fds(&ledger), [6, 7]);
    assert_eq!(ledger.processes[&PID].fds[&7].birth.origin, Origin::Reconciled);
    assert_eq!(ledger.counters.reconcile_fds_added, 1);
    assert_eq!(ledger.counters.reconcile_threads_added, 1);
}

#[test]
fn reconciliation_leaves_alone_what_changed_during_the_scan() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    ledger.begin_scan(PID);
    // The scan saw fd 5 and fd 8; meanwhile 5 was closed and 9 opened.
    let scan = Scan {
        fds: vec![link(5, "/etc/hosts"), link(8, "/etc/passwd")],
        threads: vec![thread(PID)],
    };
    close(&mut ledger, 5);
    open(&mut ledger, nr::OPENAT, 9);
    let fixes = ledger.apply_scan(PID, &scan, Origin::Reconciled, 50, |_, _| FdKind::File);
    assert_eq!(fds(&ledger), [8, 9]);
    assert_eq!((fixes.fds_added, fixes.fds_removed), (1, 0));
}

#[test]
fn reconciliation_replaces_an_entry_whose_number_was_reused_unseen() {
    let mut ledger = ledger_with_process();
    let socket = fd_event(
        EventKind::FdOpen,
        nr::SOCKET,
        6,
        NO_FD,
        NO_FD,
        socket_detail(1, 1, 0),
    );
    ledger.apply(&Event::Fd(EventKind::FdOpen, socket));
    ledger.begin_scan(PID);
    let scan = Scan {
        fds: vec![link(6, "/var/log/nova.log")],
        threads: vec![thread(PID)],
    };
    let fixes = ledger.apply_scan(PID, &scan, Origin::Reconciled, 50, |_, _| FdKind::File);
    assert_eq!(fixes.kinds_fixed, 1);
    let entry = ledger.processes[&PID].fds[&6];
    assert_eq!(
        (entry.kind, entry.birth.origin),
        (FdKind::File, Origin::Reconciled)
    );
}

#[test]
fn first_sight_is_not_counted_as_a_fix() {
    let mut ledger = ledger_with_process();
    let scan = Scan {
        fds: vec![link(0, "/dev/null")],
        threads: vec![thread(PID)],
    };
    ledger.apply_scan(PID, &scan, Origin::BeforeStart, 50, |_, _| FdKind::File);
    assert_eq!(ledger.counters.reconcile_fds_added, 0);
    // A creation event later upgrades the unseen entry silently.
    open(&mut ledger, nr::OPENAT, 0);
    assert_eq!(ledger.counters.missed_releases, 0);
    assert_eq!(ledger.processes[&PID].fds[&0].birth.origin, Origin::Syscall);
}

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
        FollowUp::ReconcileEach(vec![200])
    );
    assert_eq!(fds(&ledger), [5]);
    // Closed by the parent since, the child may hold it still.
    ledger.apply(&at(EventKind::FdClose, nr::CLOSE, 7, NO_FD, 25));
    assert_eq!(
        late(&mut ledger, nr::OPENAT, 7, NO_FD, 15),
        FollowUp::ReconcileEach(vec![200])
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
        FollowUp::ReconcileEach(vec![200, 300])
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
    ledger.begin_scan(PID);
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
        FollowUp::Reconcile(PID)
    );
    assert!(fds(&ledger).is_empty());
    assert_eq!(late(&mut ledger, nr::OPENAT, 5, NO_FD, 400), FollowUp::None);
    assert_eq!(fds(&ledger), [5]);
}

#[test]
fn a_late_creation_names_the_call_in_flight_at_its_birth_though_it_has_ended() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::SOCKET, 7);
    let data = |flags, ts_ns, bytes: &str| {
        let meta = DataMeta {
            header: header(EventKind::Data, nr::WRITE, PID, ts_ns),
            ssl: 0,
            fd: 7,
            flags,
            len: bytes.len() as u32,
        };
        (meta, bytes.as_bytes().to_vec())
    };
    let request = format!(
        "GET /v1/nodes HTTP/1.1\r\nX-Auth-Token: {}\r\n\r\n",
        crate::http::FAKE_TOKEN
    );
    let response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    for (meta, bytes) in [
        data(0, 100, &request),
        data(monitor_common::data_flags::READ, 300, response),
    ] {
        ledger.apply(&Event::Data(meta, &bytes));
    }
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
