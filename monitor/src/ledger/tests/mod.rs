//! The ledger on synthetic event timelines: the shared timeline helpers
//! here, the tests by subject below.

mod events;
mod late;
mod reconcile;

use std::collections::HashSet;

use monitor_common::{
    EventHeader, EventKind, FdEvent, NO_FD, TaskEvent, data_flags, socket_detail, syscalls as nr, task_flags,
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

/// Applies a data record of `bytes` on fd `fd` of the process, taken at `ts_ns`.
fn data(ledger: &mut Ledger, fd: u32, flags: u32, ts_ns: u64, bytes: &[u8]) {
    let meta = DataMeta {
        header: header(EventKind::Data, nr::WRITE, PID, ts_ns),
        ssl: 0,
        fd,
        flags,
        len: bytes.len() as u32,
    };
    ledger.apply(&Event::Data(meta, bytes));
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

/// socket(domain, SOCK_STREAM, 0) returning `fd`.
fn open_socket(ledger: &mut Ledger, fd: u32, domain: u64) {
    let socket = fd_event(
        EventKind::FdOpen,
        nr::SOCKET,
        fd,
        NO_FD,
        NO_FD,
        socket_detail(domain, 1, 0),
    );
    ledger.apply(&Event::Fd(EventKind::FdOpen, socket));
}

fn fds(ledger: &Ledger) -> Vec<u32> {
    let mut fds: Vec<u32> = ledger.processes[&PID].fds.keys().copied().collect();
    fds.sort();
    fds
}
