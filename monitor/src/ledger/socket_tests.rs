//! The socket table on synthetic event timelines.

use std::net::SocketAddr;

use monitor_common::{
    ConnectEvent, EventHeader, EventKind, FdEvent, NO_FD, NO_SYSCALL, SockEvent, TCP_CLOSE, TCP_ESTABLISHED,
    TCP_SYN_SENT, TaskEvent, Tuple, errno, socket_detail, syscalls as nr,
};

use super::{sockets::ConnectOutcome, *};
use crate::{
    engine::decode::Event,
    sockdiag::{Protocol, SocketInfo, SocketTable},
};

const PID: u32 = 300;
const INODE: u64 = 4242;
const MS: u64 = 1_000_000;

fn ledger() -> Ledger {
    Ledger::watching(PID)
}

fn header(kind: EventKind, syscall: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        syscall,
        tgid: PID,
        tid: PID,
        ts_ns,
    }
}

/// As the probes ship it: socket() unwalked (inode 0), accept() walked.
fn open_socket(ledger: &mut Ledger, fd: u32, syscall: u32, detail: u32) {
    let event = FdEvent {
        header: header(EventKind::FdOpen, syscall, 0),
        fd,
        fd2: NO_FD,
        source_fd: NO_FD,
        detail,
        inode: if syscall == nr::SOCKET { 0 } else { INODE },
    };
    ledger.apply(&Event::Fd(EventKind::FdOpen, event));
}

fn tuple() -> Tuple {
    sockets::tuple_of("127.0.0.1:40000", "127.0.0.1:6385").unwrap()
}

fn state(ledger: &mut Ledger, old: u8, new: u8, ts_ns: u64) {
    state_on(ledger, 5, old, new, ts_ns);
}

fn state_on(ledger: &mut Ledger, fd: u32, old: u8, new: u8, ts_ns: u64) {
    state_with_error(ledger, fd, old, new, ts_ns, 0);
}

/// A state change carrying the socket's error (SYN_SENT -> CLOSE).
fn state_with_error(ledger: &mut Ledger, fd: u32, old: u8, new: u8, ts_ns: u64, errno: i32) {
    let event = SockEvent {
        header: header(EventKind::SockState, NO_SYSCALL, ts_ns),
        inode: INODE,
        skaddr: 1,
        fd,
        error: errno,
        oldstate: old,
        newstate: new,
        tuple: tuple(),
        ..SockEvent::default()
    };
    ledger.apply(&Event::Sock(EventKind::SockState, event));
}

fn error(ledger: &mut Ledger, errno: i32) {
    let event = SockEvent {
        header: header(EventKind::SockError, NO_SYSCALL, 0),
        inode: INODE,
        error: errno,
        oldstate: TCP_SYN_SENT,
        newstate: TCP_SYN_SENT,
        tuple: tuple(),
        ..SockEvent::default()
    };
    ledger.apply(&Event::Sock(EventKind::SockError, event));
}

fn ironic(ledger: &Ledger) -> &sockets::EndpointStats {
    let remote: SocketAddr = "127.0.0.1:6385".parse().unwrap();
    &ledger.processes[&PID].endpoints[&remote]
}

fn outcome(ledger: &Ledger) -> ConnectOutcome {
    ledger.sockets[&INODE].connect.as_ref().unwrap().outcome
}

#[test]
fn a_connect_is_counted_with_its_latency() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    assert!(ledger.sockets.is_empty(), "socket() is not walked");
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    assert!(ledger.sockets[&INODE].kernel_seen);
    assert_eq!(
        ledger.processes[&PID].fds.get(&5).unwrap().inode,
        INODE,
        "bound at connect"
    );
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 12 * MS);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.refused), (1, 1, 0));
    assert_eq!(stats.latency.count, 1);
    assert_eq!(outcome(&ledger), ConnectOutcome::Established { latency_ms: 2.0 });
    let entry = &ledger.sockets[&INODE];
    assert_eq!(
        (entry.state, entry.state_since_ns, entry.state_seen),
        (Some(TCP_ESTABLISHED), 12 * MS, true)
    );
}

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

fn late_socket(ledger: &mut Ledger, fd: u32, ts_ns: u64) {
    let event = FdEvent {
        header: header(EventKind::FdOpenLate, nr::SOCKET, ts_ns),
        fd,
        fd2: NO_FD,
        source_fd: NO_FD,
        detail: socket_detail(2, 1, 0),
        inode: 0,
    };
    ledger.apply(&Event::Fd(EventKind::FdOpenLate, event));
}

fn close_at(ledger: &mut Ledger, fd: u32, ts_ns: u64) {
    let event = FdEvent {
        header: header(EventKind::FdClose, nr::CLOSE, ts_ns),
        fd,
        ..FdEvent::default()
    };
    ledger.apply(&Event::Fd(EventKind::FdClose, event));
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
    late_socket(&mut ledger, 5, 4 * MS);
    assert_eq!(ledger.processes[&PID].fds.get(&5).unwrap().inode, INODE);
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_ESTABLISHED));
    close_at(&mut ledger, 5, 20 * MS);
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
    late_socket(&mut ledger, 5, 4 * MS);
    assert_eq!(ledger.processes[&PID].fds.get(&5).unwrap().inode, INODE);
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_ESTABLISHED));
    close_at(&mut ledger, 5, 20 * MS);
    assert!(ledger.sockets.is_empty(), "released with its fd");
    assert!(ledger.processes[&PID].early_binds.is_empty());
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
fn a_refusal_reported_after_close_is_a_refusal() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    // The kernel closes the socket first, then reports the error.
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 11 * MS);
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress);
    error(&mut ledger, 111);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    ledger.settle_connects(u64::MAX, 0);
    let stats = ironic(&ledger);
    assert_eq!(
        (stats.connects, stats.refused, stats.timeouts),
        (1, 1, 0),
        "counted once"
    );
}

#[test]
fn a_connect_closed_without_error_is_abandoned_after_the_grace_period() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 20 * MS);
    ledger.settle_connects(20 * MS + 500 * MS, 1000 * MS);
    assert_eq!(
        outcome(&ledger),
        ConnectOutcome::InProgress,
        "still within the grace period"
    );
    ledger.settle_connects(20 * MS + 1000 * MS, 1000 * MS);
    assert_eq!(outcome(&ledger), ConnectOutcome::Abandoned);
    assert_eq!(ironic(&ledger).timeouts, 1);
}

/// connect() on fd 5 returned `ret` (the probe ships no success).
fn connect_returned(ledger: &mut Ledger, ret: i32) {
    connect_event(ledger, nr::CONNECT, ret, (2, 6385, tuple().daddr));
}

/// getsockopt(fd 5, SO_ERROR) read `errno`.
fn error_read(ledger: &mut Ledger, errno: i32) {
    connect_event(ledger, nr::GETSOCKOPT, -errno, (0, 0, [0; 16]));
}

fn connect_event(ledger: &mut Ledger, syscall: u32, ret: i32, (family, port, addr): (u16, u16, [u8; 16])) {
    let event = ConnectEvent {
        header: header(EventKind::Connect, syscall, 5 * MS),
        fd: 5,
        ret,
        family,
        port,
        _pad: 0,
        addr,
    };
    ledger.apply(&Event::Connect(event));
}

const ENETUNREACH: i32 = 101;
const ECONNRESET: i32 = 104;

/// A watched socket on fd 5 whose connect sent its SYN at 1 ms.
fn connecting() -> Ledger {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, MS);
    ledger
}

/// The peer answered the SYN with a reset.
fn refused(ledger: &mut Ledger) {
    state(ledger, TCP_SYN_SENT, TCP_CLOSE, 2 * MS);
    error(ledger, errno::ECONNREFUSED);
}

#[test]
fn a_failure_before_any_syn_is_counted_from_connect() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    connect_returned(&mut ledger, -ENETUNREACH);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.errors), (1, 1));
}

#[test]
fn a_refused_blocking_connect_counts_once() {
    let mut ledger = connecting();
    refused(&mut ledger);
    connect_returned(&mut ledger, -errno::ECONNREFUSED);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.errors), (1, 1, 0));
}

#[test]
fn a_nonblocking_connect_is_marked_even_when_established_before_it_returned() {
    let mut ledger = connecting();
    // Loopback: the handshake completes inside connect(), at release_sock.
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 2 * MS);
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    assert!(ledger.sockets[&INODE].connect.as_ref().unwrap().nonblocking);
    assert_eq!((ironic(&ledger).connects, ironic(&ledger).established), (1, 1));
}

#[test]
fn asking_again_once_writable_adds_no_connect() {
    // eventlet: connect_ex() -> EINPROGRESS, wait until writable, connect_ex()
    // again: EALREADY while under way, 0 once connected (not shipped), EISCONN
    // if asked once more.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    connect_returned(&mut ledger, -errno::EALREADY);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 3 * MS);
    connect_returned(&mut ledger, -errno::EISCONN);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
    assert_eq!(outcome(&ledger), ConnectOutcome::Established { latency_ms: 2.0 });
}

#[test]
fn an_error_the_owner_read_first_is_settled_by_connects_return() {
    // eventlet's way, when the woken owner's connect() on another CPU takes
    // the error before the error-report probe reads it: the report says 0.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    error(&mut ledger, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress, "0 is no verdict");
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 2 * MS);
    connect_returned(&mut ledger, -errno::ETIMEDOUT);
    assert_eq!(outcome(&ledger), ConnectOutcome::TimedOut);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.timeouts, stats.errors), (1, 1, 0));
    assert_eq!(ledger.counters.socket_errors_taken, 1);
}

#[test]
fn the_close_of_a_failed_connect_carries_its_error_when_the_report_reads_0() {
    // CPython's way: poll until writable, then getsockopt(SO_ERROR), which
    // cleared the error before the report's probe ran; the close, probed
    // before the owner was woken, read it.
    let mut ledger = connecting();
    state_with_error(
        &mut ledger,
        5,
        TCP_SYN_SENT,
        TCP_CLOSE,
        2 * MS,
        errno::ECONNREFUSED,
    );
    error(&mut ledger, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    ledger.settle_connects(u64::MAX, 0);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.timeouts), (1, 1, 0));
}

#[test]
fn an_error_read_with_so_error_before_both_probes_is_the_verdict() {
    // Older kernels wake the owner with the error report, before the close:
    // its getsockopt(SO_ERROR) on another CPU can clear the error before
    // either probe loads it.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    error(&mut ledger, 0);
    error_read(&mut ledger, errno::ECONNREFUSED);
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 4 * MS);
    ledger.settle_connects(u64::MAX, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.timeouts), (1, 1, 0));
    assert_eq!(ledger.counters.socket_errors_read, 1);
}

#[test]
fn an_error_read_after_the_verdict_or_the_connection_changes_nothing() {
    let mut ledger = connecting();
    refused(&mut ledger);
    error_read(&mut ledger, errno::ECONNREFUSED);
    assert_eq!(ironic(&ledger).refused, 1);
    let mut ledger = connecting();
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 2 * MS);
    error_read(&mut ledger, ECONNRESET);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
}

#[test]
fn asking_again_after_a_refused_nonblocking_connect_adds_nothing() {
    // connect() again, instead of getsockopt(SO_ERROR), returns the error.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    refused(&mut ledger);
    connect_returned(&mut ledger, -errno::ECONNREFUSED);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.errors), (1, 1, 0));
}

#[test]
fn an_error_of_a_socket_no_fd_holds_is_unowned() {
    let mut ledger = ledger();
    error(&mut ledger, errno::ECONNREFUSED);
    assert_eq!(ledger.counters.socket_events_unowned, 1);
}

#[test]
fn a_connect_interrupted_by_a_signal_goes_on() {
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINTR);
    connect_returned(&mut ledger, -512); // ERESTARTSYS, as sys_exit sees a restarted call
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 3 * MS);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
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
    assert_eq!(ledger.provisional_fds(PID), vec![5]);
    assert_eq!(ledger.provisional_fds(PID + 1), vec![5]);
    // The parent connects; /proc names the child's copy.
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 5 * MS);
    ledger.resolve_kind(PID + 1, 5, crate::fdkind::FdKind::SocketTcp, INODE, 6 * MS);
    close(&mut ledger, 5);
    assert!(ledger.sockets.contains_key(&INODE), "the child still holds it");
    assert_eq!(ledger.sockets[&INODE].state, Some(TCP_SYN_SENT));
}

#[test]
fn sock_diag_fixes_states_and_names_connections_the_kernel_has_not_seen() {
    let mut ledger = ledger();
    let scan = Scan {
        fds: vec![crate::proc::FdLink {
            fd: 9,
            target: format!("socket:[{INODE}]"),
        }],
        threads: vec![],
    };
    ledger.apply_scan(PID, &scan, Origin::BeforeStart, 1, |_, _| {
        crate::fdkind::FdKind::SocketTcp
    });
    let mut table = SocketTable::default();
    table.by_inode.insert(
        INODE,
        SocketInfo {
            protocol: Protocol::Tcp,
            inode: INODE,
            state: "CLOSE_WAIT".into(),
            local: "127.0.0.1:40000".into(),
            remote: "127.0.0.1:6385".into(),
            unix_type: None,
            peer_inode: None,
        },
    );
    let (fixes, unseen) = ledger.apply_sock_diag(&table, 50);
    assert_eq!(fixes.states_fixed, 0, "a first state is not a fix");
    assert_eq!(unseen, vec![(INODE, tuple())]);
    let entry = &ledger.sockets[&INODE];
    assert_eq!((entry.state, entry.state_seen), (Some(8), false));
    assert_eq!(ledger.holder_of(INODE), Some((PID, 9)));

    table.by_inode.get_mut(&INODE).unwrap().state = "LAST_ACK".into();
    let (fixes, _) = ledger.apply_sock_diag(&table, 60);
    assert_eq!(fixes.states_fixed, 1);
}

#[test]
fn endpoints_are_capped_keeping_the_busiest() {
    let mut ledger = ledger();
    let busy: SocketAddr = "127.0.0.1:6385".parse().unwrap();
    ledger.endpoint(PID, busy).unwrap().connects = 1000;
    for port in 1..=300u16 {
        let remote: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        ledger.endpoint(PID, remote).unwrap().connects = 1;
    }
    let process = &ledger.processes[&PID];
    assert_eq!(process.endpoints.len(), sockets::MAX_ENDPOINTS);
    assert_eq!(
        ledger.counters.endpoints_evicted,
        301 - sockets::MAX_ENDPOINTS as u64
    );
    assert_eq!(
        process.endpoints[&busy].connects, 1000,
        "the busiest endpoint is kept"
    );
}
