//! The socket table on synthetic event timelines: the shared timeline
//! helpers here, the tests by subject below.

mod binding;
mod connects;
mod table;

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
