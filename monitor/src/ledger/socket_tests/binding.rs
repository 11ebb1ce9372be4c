//! Which fd holds which socket: creations held back or carried by the
//! connect, entries /proc alone showed, dups, forks, sharing.

use super::*;

#[test]
fn a_connect_that_carries_its_socket_creation_creates_the_fd() {
    let mut ledger = ledger();
    let event = SockEvent {
        header: header(EventKind::SockState, NO_SYSCALL, 10 * MS),
        inode: INODE,
        fd: 5,
        oldstate: TCP_CLOSE,
        newstate: TCP_SYN_SENT,
        tuple: tuple(),
        born_ns: 4 * MS,
        born_detail: socket_detail(2, 1, 0),
        ..SockEvent::default()
    };
    ledger.apply(&Event::Sock(EventKind::SockState, event));
    let held = ledger.processes[&PID].fds.get(&5).copied().unwrap();
    assert_eq!(
        (held.kind, held.inode, held.birth.ts_ns, held.birth.syscall),
        (crate::fdkind::FdKind::SocketTcp, INODE, 4 * MS, nr::SOCKET)
    );
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_SYN_SENT));
    assert_eq!(ledger.counters.fds_opened, 1);
}

/// The thread left the CPU that holds its socket() back before it connected:
/// the connect's records arrive before the creation.
#[test]
fn a_connect_before_its_held_back_creation_is_bound_when_it_arrives() {
    let mut ledger = ledger();
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 12 * MS);
    assert_eq!(
        ironic(&ledger).established,
        1,
        "the socket is known before its fd"
    );
    assert!(ledger.processes[&PID].fds.get(&5).is_none());
    bound_when_its_creation_arrives(&mut ledger);
}

/// fd 5's creation, held back since 4 ms, arrives after the connect's
/// records: it holds the established socket, and its close releases it.
fn bound_when_its_creation_arrives(ledger: &mut Ledger) {
    late_socket(ledger, 5, 4 * MS);
    assert_eq!(ledger.processes[&PID].fds.get(&5).unwrap().inode, INODE);
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_ESTABLISHED));
    close_at(ledger, 5, 20 * MS);
    assert!(ledger.sockets.is_empty(), "released with its fd");
    assert!(ledger.processes[&PID].early_binds.is_empty());
}

/// As above, where a /proc scan had found another object under the number
/// (a file opened and closed since without a record: the two cancelled in
/// the kernel): the connect proves that entry stale.
#[test]
fn a_connect_over_an_entry_only_proc_showed_is_bound_when_its_creation_arrives() {
    let mut ledger = ledger();
    let scan = reconcile::Scan {
        fds: vec![crate::proc::FdLink {
            fd: 5,
            target: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
        }],
        threads: vec![],
    };
    ledger.apply_scan(PID, &scan, Origin::BeforeStart, MS, |_, _| {
        crate::fdkind::FdKind::File
    });
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 12 * MS);
    assert_eq!(ledger.counters.socket_events_unowned, 0);
    bound_when_its_creation_arrives(&mut ledger);
}

#[test]
fn a_connect_whose_fd_closed_before_its_creation_arrived_leaves_nothing() {
    let mut ledger = ledger();
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    close_at(&mut ledger, 5, 20 * MS);
    late_socket(&mut ledger, 5, 4 * MS);
    assert!(
        ledger.processes[&PID].fds.get(&5).is_none(),
        "stale creation dropped"
    );
    assert!(ledger.sockets.is_empty());
    assert!(ledger.processes[&PID].early_binds.is_empty());
}

#[test]
fn only_a_connect_binds_an_unwalked_socket_fd() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    // A late event about an earlier socket that had fd 5 binds nothing.
    state(&mut ledger, TCP_ESTABLISHED, TCP_CLOSE, 10 * MS);
    assert!(ledger.sockets.is_empty());
    assert_eq!(ledger.counters.socket_events_unowned, 1);
    assert_eq!(ledger.processes[&PID].fds.get(&5).unwrap().inode, 0);
    // Nor does a connect that happened before this fd was created.
    let fds = &mut ledger.processes.get_mut(&PID).unwrap().fds;
    fds.get_mut(&5).unwrap().entry.birth.ts_ns = 20 * MS;
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 15 * MS);
    assert!(ledger.sockets.is_empty());
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 25 * MS);
    assert_eq!(ledger.processes[&PID].fds.get(&5).unwrap().inode, INODE);
}

#[test]
fn a_listen_binds_an_unwalked_socket_fd() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 6, nr::SOCKET, socket_detail(2, 1, 0));
    let listen = SockEvent {
        header: header(EventKind::SockState, NO_SYSCALL, 10 * MS),
        inode: INODE + 1,
        fd: 6,
        oldstate: TCP_CLOSE,
        newstate: monitor_common::TCP_LISTEN,
        ..SockEvent::default()
    };
    ledger.apply(&Event::Sock(EventKind::SockState, listen));
    assert_eq!(ledger.processes[&PID].fds.get(&6).unwrap().inode, INODE + 1);
    let entry = &ledger.sockets[&(INODE + 1)];
    assert_eq!(
        (entry.state, entry.state_seen),
        (Some(monitor_common::TCP_LISTEN), true)
    );
}

#[test]
fn an_accepted_socket_arrives_established_but_not_seen_entering() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 7, nr::ACCEPT4, TCP_ESTABLISHED as u32);
    let entry = &ledger.sockets[&INODE];
    assert_eq!((entry.state, entry.state_seen), (Some(TCP_ESTABLISHED), false));
}

#[test]
fn a_shared_socket_leaves_with_its_last_holder() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 1);
    dup(&mut ledger, 5, 6, 0);
    assert_eq!(
        ledger.processes[&PID].fds[&6].inode, INODE,
        "a dup holds the same socket"
    );
    let fork = TaskEvent {
        header: header(EventKind::TaskNew, NO_SYSCALL, 0),
        pid: PID + 1,
        flags: 0,
        comm: comm_from("child"),
    };
    ledger.apply(&Event::Task(EventKind::TaskNew, fork));
    for fd in [5, 6] {
        close(&mut ledger, fd);
    }
    assert!(ledger.sockets.contains_key(&INODE), "the child still holds it");
    ledger.forget(PID + 1);
    assert!(!ledger.sockets.contains_key(&INODE));
}

fn dup(ledger: &mut Ledger, source: u32, fd: u32, ts_ns: u64) {
    let dup = FdEvent {
        header: header(EventKind::FdOpen, nr::DUP, ts_ns),
        fd,
        fd2: NO_FD,
        source_fd: source,
        detail: 0,
        inode: 0,
    };
    ledger.apply(&Event::Fd(EventKind::FdOpen, dup));
}

fn close(ledger: &mut Ledger, fd: u32) {
    close_at(ledger, fd, 0);
}

#[test]
fn dups_made_before_the_connect_hold_the_socket_whichever_connects() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    dup(&mut ledger, 5, 6, MS);
    dup(&mut ledger, 6, 7, 2 * MS);
    // The middle copy connects: the original and the copy of the copy learn it.
    state_on(&mut ledger, 6, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
    let fds = &ledger.processes[&PID].fds;
    assert_eq!([5, 6, 7].map(|fd| fds[&fd].inode), [INODE; 3]);
    close(&mut ledger, 6);
    close(&mut ledger, 5);
    assert!(ledger.sockets.contains_key(&INODE), "fd 7 still holds it");
    close(&mut ledger, 7);
    assert!(!ledger.sockets.contains_key(&INODE));
    assert_eq!(ledger.processes[&PID].unbound_copies.len(), 0);
}

/// The thread moved to another CPU between socket() and dup(): the dup and
/// a connect (the dup's, or fd 5's own) arrive before the held-back
/// creation of fd 5, the dup naming a source the ledger does not hold yet.
#[test]
fn a_dup_that_overtook_its_socket_creation_shares_the_socket() {
    for connects in [6, 5] {
        let mut ledger = ledger();
        dup(&mut ledger, 5, 6, 2 * MS);
        state_on(&mut ledger, connects, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
        late_socket(&mut ledger, 5, MS);
        let fds = &ledger.processes[&PID].fds;
        assert_eq!(
            [5, 6].map(|fd| fds[&fd].inode),
            [INODE; 2],
            "fd {connects} connected"
        );
        close(&mut ledger, 6);
        assert!(ledger.sockets.contains_key(&INODE), "fd 5 still holds it");
        close(&mut ledger, 5);
        assert!(!ledger.sockets.contains_key(&INODE));
    }
}

/// As above, the creation arriving before the connect: whichever of the
/// two connects binds both.
#[test]
fn a_dup_that_overtook_its_socket_creation_is_bound_by_either_connect() {
    for connects in [5, 6] {
        let mut ledger = ledger();
        dup(&mut ledger, 5, 6, 2 * MS);
        late_socket(&mut ledger, 5, MS);
        assert_eq!(
            ledger.processes[&PID].fds[&6].kind,
            crate::fdkind::FdKind::SocketTcp
        );
        state_on(&mut ledger, connects, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
        let fds = &ledger.processes[&PID].fds;
        assert_eq!(
            [5, 6].map(|fd| fds[&fd].inode),
            [INODE; 2],
            "fd {connects} connected"
        );
    }
}

/// A dup of what the number held before the socket is not its copy.
#[test]
fn a_dup_older_than_the_socket_creation_is_not_adopted() {
    let mut ledger = ledger();
    dup(&mut ledger, 5, 6, MS);
    state_on(&mut ledger, 6, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
    late_socket(&mut ledger, 5, 2 * MS);
    assert_eq!(ledger.processes[&PID].fds[&5].inode, 0);
}

#[test]
fn a_socket_forked_before_its_connect_is_looked_up_in_proc_by_both() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    let fork = TaskEvent {
        header: header(EventKind::TaskNew, NO_SYSCALL, MS),
        pid: PID + 1,
        flags: 0,
        comm: comm_from("child"),
    };
    ledger.apply(&Event::Task(EventKind::TaskNew, fork));
    for pid in [PID, PID + 1] {
        let born = ledger.birth_of(pid, 5).unwrap();
        assert_eq!(ledger.provisional_fds(pid), vec![(5, born)]);
    }
    // The parent connects; /proc names the child's copy.
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
    ledger.resolve_kind(PID + 1, 5, crate::fdkind::FdKind::SocketTcp, INODE, 6 * MS);
    close(&mut ledger, 5);
    assert!(ledger.sockets.contains_key(&INODE), "the child still holds it");
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_SYN_SENT));
}
