//! The ledger: every open fd and live thread of every watched process, with
//! a birth record. A pure state machine: events and /proc scans go in, I/O
//! decisions come out as [`FollowUp`]s for the engine.

pub(crate) mod reconcile;
mod types;
pub mod view;

use std::collections::{HashMap, HashSet};

use monitor_common::{
    EventHeader, EventKind, FdEvent, NO_FD, NO_SYSCALL, TaskEvent, syscalls as nr, task_flags,
};
pub use reconcile::Scan;
pub use types::*;

use crate::{
    engine::{cmsg, decode::Event},
    fdkind::{self, FdKind},
};

/// Work the engine must do (with I/O) after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowUp {
    None,
    /// A process exec'd: re-match it and drop its close-on-exec fds.
    Exec {
        pid: u32,
        old_tid: u32,
        flags: u32,
        comm: Comm,
    },
    /// The leader exited and the kernel could not say whether it was the last thread.
    MaybeGone(u32),
    /// Something about this process was not fully seen: reconcile it with /proc.
    Reconcile(u32),
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub processes: HashMap<u32, Process>,
    pub counters: LedgerCounters,
}

impl Ledger {
    pub fn apply(&mut self, event: &Event<'_>) -> FollowUp {
        self.counters.events += 1;
        match event {
            Event::Fd(kind, fd) => {
                match kind {
                    EventKind::FdOpen => self.fd_open(fd),
                    EventKind::FdClose => self.fd_close(&fd.header, fd.fd),
                    EventKind::FdCloseRange => self.fd_close_range(&fd.header, fd.fd, fd.fd2),
                    EventKind::FdFailed => self.fd_failed(fd),
                    _ => {}
                }
                FollowUp::None
            }
            Event::Task(kind, task) => match kind {
                EventKind::Exec => FollowUp::Exec {
                    pid: task.header.tgid,
                    old_tid: task.pid,
                    flags: task.flags,
                    comm: task.comm,
                },
                EventKind::TaskNew => {
                    self.task_new(task);
                    FollowUp::None
                }
                EventKind::TaskExit => self.task_exit(task),
                EventKind::TaskRename => {
                    self.task_rename(task);
                    FollowUp::None
                }
                _ => FollowUp::None,
            },
            Event::Received(header, control_len, control) => self.fds_received(header, *control_len, control),
        }
    }

    /// The process an event belongs to, and the counters, borrowed apart.
    fn process_mut(&mut self, pid: u32) -> (Option<&mut Process>, &mut LedgerCounters) {
        let process = self.processes.get_mut(&pid);
        if process.is_none() {
            self.counters.events_unowned += 1;
        }
        (process, &mut self.counters)
    }

    fn fd_open(&mut self, event: &FdEvent) {
        let h = &event.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        let source = (event.source_fd != NO_FD)
            .then(|| process.fds.get(&event.source_fd))
            .flatten()
            .copied();
        let guess = fdkind::from_syscall(h.syscall, event.detail, source.map(|s| s.kind));
        let entry = FdEntry {
            kind: guess.kind,
            provisional: guess.provisional || source.is_some_and(|s| s.provisional),
            birth: Birth {
                ts_ns: h.ts_ns,
                tid: h.tid,
                thread: process.thread_name(h.tid),
                syscall: h.syscall,
                origin: Origin::Syscall,
            },
            source_fd: event.source_fd,
        };
        let is_dup_onto = matches!(h.syscall, nr::DUP2 | nr::DUP3);
        for fd in [event.fd, event.fd2] {
            if fd == NO_FD {
                continue;
            }
            process.touch(fd);
            counters.fds_opened += 1;
            if let Some(old) = process.fds.insert(fd, entry) {
                if is_dup_onto {
                    counters.replaced_by_dup += 1;
                } else if !old.birth.origin.is_unseen() {
                    counters.missed_releases += 1;
                }
            }
        }
    }

    fn fd_close(&mut self, h: &EventHeader, fd: u32) {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        process.touch(fd);
        if process.fds.remove(&fd).is_some() {
            counters.fds_closed += 1;
        } else {
            counters.unknown_closes += 1;
        }
    }

    fn fd_close_range(&mut self, h: &EventHeader, first: u32, last: u32) {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        let closing: Vec<u32> = process
            .fds
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in closing {
            process.touch(fd);
            process.fds.remove(&fd);
            counters.fds_closed += 1;
        }
    }

    fn fd_failed(&mut self, event: &FdEvent) {
        let h = &event.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        if process.failures.len() == FAILURES_KEPT {
            process.failures.pop_front();
        }
        process.failures.push_back(FailedSyscall {
            ts_ns: h.ts_ns,
            tid: h.tid,
            syscall: h.syscall,
            errno: event.detail,
        });
        process.failures_total += 1;
        counters.failed_syscalls += 1;
    }

    fn fds_received(&mut self, h: &EventHeader, control_len: u32, control: &[u8]) -> FollowUp {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        let (fds, complete) = cmsg::received_fds(control, control_len);
        let birth = Birth {
            ts_ns: h.ts_ns,
            tid: h.tid,
            thread: process.thread_name(h.tid),
            syscall: h.syscall,
            origin: Origin::ScmRights,
        };
        for fd in fds {
            process.touch(fd);
            let entry = FdEntry {
                kind: FdKind::Other,
                provisional: true,
                birth,
                source_fd: NO_FD,
            };
            if let Some(old) = process.fds.insert(fd, entry)
                && !old.birth.origin.is_unseen()
            {
                counters.missed_releases += 1;
            }
            counters.fds_received += 1;
        }
        if complete {
            FollowUp::None
        } else {
            FollowUp::Reconcile(h.tgid)
        }
    }

    fn task_new(&mut self, task: &TaskEvent) {
        let h = &task.header;
        let (Some(parent), counters) = self.process_mut(h.tgid) else {
            return;
        };
        // The new task's first thread, created by the calling thread now.
        let thread = ThreadEntry {
            name: task.comm,
            start_ns: h.ts_ns,
            creator: Some(h.tid),
            origin: Origin::Syscall,
        };
        if task.flags & task_flags::THREAD != 0 {
            parent.touch_thread(task.pid);
            parent.threads.insert(task.pid, thread);
            counters.threads_started += 1;
            return;
        }
        // A forked child: same fds as the parent at this instant.
        let birth = Birth {
            ts_ns: h.ts_ns,
            tid: h.tid,
            thread: parent.thread_name(h.tid),
            syscall: NO_SYSCALL,
            origin: Origin::Inherited,
        };
        let mut child = Process::new(
            task.pid,
            comm_str(&task.comm),
            parent.cmdline.clone(),
            h.ts_ns,
            WatchReason::Parent(h.tgid),
            h.ts_ns,
        );
        child.fds = parent
            .fds
            .iter()
            .map(|(fd, entry)| (*fd, FdEntry { birth, ..*entry }))
            .collect();
        child.threads.insert(task.pid, thread);
        counters.processes_watched += 1;
        self.processes.insert(task.pid, child);
    }

    fn task_exit(&mut self, task: &TaskEvent) -> FollowUp {
        let h = &task.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        process.touch_thread(task.pid);
        if process.threads.remove(&task.pid).is_some() {
            counters.threads_exited += 1;
        }
        if task.flags & task_flags::GROUP_DEAD != 0 {
            self.forget(h.tgid);
            FollowUp::None
        } else if task.flags & task_flags::GROUP_DEAD_UNKNOWN != 0 {
            FollowUp::MaybeGone(h.tgid)
        } else {
            FollowUp::None
        }
    }

    fn task_rename(&mut self, task: &TaskEvent) {
        let (Some(process), _) = self.process_mut(task.header.tgid) else {
            return;
        };
        if let Some(thread) = process.threads.get_mut(&task.pid) {
            thread.name = task.comm;
        }
        if task.pid == process.pid {
            process.comm = comm_str(&task.comm);
        }
    }

    /// Starts tracking a process (discovery); its fds and threads come from
    /// a first scan through [`Ledger::apply_scan`].
    pub fn watch(&mut self, process: Process) {
        self.counters.processes_watched += 1;
        self.processes.insert(process.pid, process);
    }

    pub fn forget(&mut self, pid: u32) -> Option<Process> {
        let process = self.processes.remove(&pid);
        if process.is_some() {
            self.counters.processes_forgotten += 1;
        }
        process
    }

    /// After exec: the exec'ing thread is the only one left and owns the
    /// tgid; fds not in `open_fds` were closed on exec.
    pub fn exec_happened(
        &mut self,
        pid: u32,
        old_tid: u32,
        comm: Comm,
        cmdline: Vec<String>,
        open_fds: &HashSet<u32>,
    ) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        process.comm = comm_str(&comm);
        process.cmdline = cmdline;
        let survivor = process
            .threads
            .get(&old_tid)
            .or_else(|| process.threads.get(&pid))
            .copied();
        process.threads.clear();
        if let Some(mut thread) = survivor {
            thread.name = comm;
            process.threads.insert(pid, thread);
        }
        let before = process.fds.len();
        process.fds.retain(|fd, _| open_fds.contains(fd));
        self.counters.exec_cloexec_closed += (before - process.fds.len()) as u64;
    }

    /// Fds whose kind is still a guess, for the engine to look up in /proc.
    pub fn provisional_fds(&self, pid: u32) -> Vec<u32> {
        self.processes.get(&pid).map_or_else(Vec::new, |p| {
            p.fds
                .iter()
                .filter(|(_, e)| e.provisional)
                .map(|(fd, _)| *fd)
                .collect()
        })
    }

    pub fn resolve_kind(&mut self, pid: u32, fd: u32, kind: FdKind) {
        if let Some(entry) = self.processes.get_mut(&pid).and_then(|p| p.fds.get_mut(&fd)) {
            entry.kind = kind;
            entry.provisional = false;
        }
    }
}

#[cfg(test)]
mod tests;
