//! Reconciliation with /proc scans.

use super::*;

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
    ledger.begin_scan(PID, 0);
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
    ledger.begin_scan(PID, 0);
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

/// The scan listed fd 7 (its creation lost) and 8 before a close_range
/// took both: the range's record came during the scan, so neither is added.
#[test]
fn reconciliation_leaves_alone_what_a_close_range_during_the_scan_closed() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 8);
    ledger.begin_scan(PID, 0);
    let scan = Scan {
        fds: vec![
            link(7, "/etc/hosts"),
            link(8, "/etc/passwd"),
            link(20, "/etc/group"),
        ],
        threads: vec![thread(PID)],
    };
    let range = fd_event(EventKind::FdCloseRange, nr::CLOSE_RANGE, 5, 9, NO_FD, 0);
    ledger.apply(&Event::Fd(EventKind::FdCloseRange, range));
    let fixes = ledger.apply_scan(PID, &scan, Origin::Reconciled, 50, |_, _| FdKind::File);
    assert_eq!(fds(&ledger), [20]);
    assert_eq!((fixes.fds_added, fixes.fds_removed), (1, 0));
}

#[test]
fn reconciliation_replaces_an_entry_whose_number_was_reused_unseen() {
    let mut ledger = ledger_with_process();
    open_socket(&mut ledger, 6, 1);
    ledger.begin_scan(PID, 0);
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

#[test]
fn a_scan_leaves_fds_still_in_flight_to_their_records() {
    let mut ledger = ledger_with_process();
    ledger.begin_scan(PID, 0);
    // /proc listed fd 6, whose close had cancelled its held-back creation
    // but not yet left the table, and fd 7, whose creation was held back
    // after the scan's flush; fd 8 is one the ledger had missed.
    let scan = Scan {
        fds: vec![link(6, "/dev/null"), link(7, "/dev/null"), link(8, "/dev/null")],
        threads: Vec::new(),
    };
    ledger.leave_to_records(PID, [6, 7]);
    let fixes = ledger.apply_scan(PID, &scan, Origin::Reconciled, 50, |_, _| FdKind::File);
    assert_eq!((fixes.fds_added, fixes.fds_removed), (1, 0));
    assert_eq!(fds(&ledger), [8]);
    // fd 7's record, when shipped, gives it its own birth.
    let mut held = fd_event(EventKind::FdOpenLate, nr::OPENAT, 7, NO_FD, NO_FD, 0);
    held.header.ts_ns = 40;
    ledger.apply(&Event::Fd(EventKind::FdOpenLate, held));
    assert_eq!(fds(&ledger), [7, 8]);
    assert_eq!(ledger.processes[&PID].fds[&7].birth.origin, Origin::Syscall);
}

#[test]
fn a_scan_belongs_to_the_process_it_began_on() {
    let mut ledger = ledger_with_process();
    assert!(!ledger.scan_begun(PID));
    ledger.begin_scan(PID, 0);
    assert!(ledger.scan_begun(PID));
    // It exits during the scan's hold and a new process gets its pid.
    ledger.forget(PID);
    assert!(!ledger.scan_begun(PID));
    let reborn = Process::new(PID, "nova-compute".into(), vec![], 9, WatchReason::Pid, 9);
    ledger.watch(reborn);
    assert!(!ledger.scan_begun(PID));
    ledger.begin_scan(PID, 0);
    ledger.apply_scan(PID, &Scan::default(), Origin::Reconciled, 50, |_, _| FdKind::File);
    assert!(!ledger.scan_begun(PID), "applying the scan ends it");
}

/// socket() records of fds 3 (at 100, before the scan began at 150) and 4
/// (at 200) arrive during the scan: shipped late by its flush, they touch
/// both. The scan's inode binds 3, whose socket /proc showed; 4 may have
/// been created after its read, and is left to a later one.
#[test]
fn a_touched_socket_created_before_the_scan_takes_the_inode_it_listed() {
    let mut ledger = ledger_with_process();
    ledger.begin_scan(PID, 150);
    for (fd, ts_ns) in [(3, 100), (4, 200)] {
        let mut event = fd_event(
            EventKind::FdOpenLate,
            nr::SOCKET,
            fd,
            NO_FD,
            NO_FD,
            socket_detail(2, 1, 0),
        );
        event.header.ts_ns = ts_ns;
        ledger.apply(&Event::Fd(EventKind::FdOpenLate, event));
    }
    let scan = Scan {
        fds: vec![link(3, "socket:[41]"), link(4, "socket:[42]")],
        threads: vec![thread(PID)],
    };
    ledger.apply_scan(PID, &scan, Origin::Reconciled, 300, |_, _| FdKind::SocketTcp);
    let inode = |fd| ledger.processes[&PID].fds.get(&fd).unwrap().inode;
    assert_eq!((inode(3), inode(4)), (41, 0));
    assert!(ledger.sockets.contains_key(&41));
    assert!(!ledger.sockets.contains_key(&42));
}

/// A reconciliation read /proc (fds 5 and 6 open), then, while it waited
/// for held-back records, the process exec'd and closed 5 on exec. Its scan
/// is the old program's: applied, it would put 5 back as found by
/// reconciliation (seen in the wide churn: an exec'ing child kept 581
/// closed fds until the periodic reconciliation).
#[test]
fn an_exec_during_a_scan_discards_it() {
    let mut ledger = ledger_with_process();
    open(&mut ledger, nr::OPENAT, 5);
    open(&mut ledger, nr::OPENAT, 6);
    ledger.begin_scan(PID, 50);
    ledger.exec_happened(PID, PID, comm_from("nova-compute"), vec![], &HashSet::from([6]));
    assert!(!ledger.scan_begun(PID));
    assert_eq!(fds(&ledger), [6]);
}
