//! The ledger: every open fd, live thread and socket of every watched
//! process, with a birth record. A pure state machine: events and /proc
//! scans go in, I/O decisions come out as [`FollowUp`]s for the engine.

mod calls;
mod copies;
mod fds;
mod fdtable;
pub(crate) mod reconcile;
pub mod sockets;
pub mod sockview;
mod tasks;
mod types;
pub mod view;

pub use copies::FdId;
use monitor_common::{EventKind, syscalls};
pub use reconcile::Scan;
pub use sockets::SocketEntry;
pub use types::*;

use crate::{engine::decode::Event, fastmap::FastMap, fdkind::FdKind};

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
    /// Something about these processes was not fully seen: reconcile them
    /// with /proc (a process, or the children it forked before a creation
    /// that reached the ledger after the fork).
    Reconcile(Vec<u32>),
    /// A child the ledger had no room for: the kernel must stop watching it.
    Unwatch(u32),
}

/// How many processes the ledger follows unless the config says otherwise
/// (`discovery.max_processes`): what a fork storm in a watched process can
/// cost the daemon is bounded (each child holds a copy of its parent's fds).
/// Beyond it a process is refused and counted.
pub const DEFAULT_MAX_PROCESSES: usize = 4096;

#[derive(Debug)]
pub struct Ledger {
    pub processes: FastMap<u32, Process>,
    /// Sockets held by watched processes, by inode.
    pub sockets: FastMap<u64, SocketEntry>,
    pub counters: LedgerCounters,
    /// The most processes it follows ([`DEFAULT_MAX_PROCESSES`] by default).
    pub max_processes: usize,
    /// The syslog paths the probes' marks at connect refer to by index
    /// (`rules.secret_in_log.syslog_paths`).
    pub syslog_paths: Vec<String>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            processes: FastMap::default(),
            sockets: FastMap::default(),
            counters: LedgerCounters::default(),
            max_processes: DEFAULT_MAX_PROCESSES,
            syslog_paths: Vec::new(),
        }
    }
}

impl Ledger {
    /// Whether the ledger follows `max_processes` already.
    pub fn is_full(&self) -> bool {
        self.processes.len() >= self.max_processes
    }

    pub fn apply(&mut self, event: &Event<'_>) -> FollowUp {
        self.counters.events += 1;
        match event {
            Event::Fd(EventKind::FdOpenLate, fd) => self.fd_open_late(fd),
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
                EventKind::Exec => {
                    if let Some(process) = self.processes.get_mut(&task.header.tgid) {
                        process.exec_ns = task.header.ts_ns;
                    }
                    FollowUp::Exec {
                        pid: task.header.tgid,
                        old_tid: task.pid,
                        flags: task.flags,
                        comm: task.comm,
                    }
                }
                EventKind::TaskNew => self.task_new(task),
                EventKind::TaskExit => self.task_exit(task),
                EventKind::TaskRename => {
                    self.task_rename(task);
                    FollowUp::None
                }
                _ => FollowUp::None,
            },
            Event::Received(header, control_len, control) => self.fds_received(header, *control_len, control),
            Event::Sock(EventKind::SockState, sock) => {
                self.sock_state(sock);
                FollowUp::None
            }
            Event::Sock(_, sock) => {
                self.sock_error(sock);
                FollowUp::None
            }
            Event::Connect(connect) if connect.header.syscall == syscalls::GETSOCKOPT => {
                self.connect_error_read(connect);
                FollowUp::None
            }
            Event::Connect(connect) => {
                self.connect_returned(connect);
                FollowUp::None
            }
            Event::Data(meta, bytes) => {
                self.data(meta, bytes);
                FollowUp::None
            }
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

    /// Starts tracking a process (discovery); its fds and threads come from
    /// a first scan through [`Ledger::apply_scan`].
    pub fn watch(&mut self, process: Process) {
        self.counters.processes_watched += 1;
        self.processes.insert(process.pid, process);
    }

    pub fn forget(&mut self, pid: u32) -> Option<Process> {
        let process = self.processes.remove(&pid)?;
        self.counters.processes_forgotten += 1;
        let early = process.early_binds.values().map(|(inode, _)| *inode);
        for inode in process.fds.sockets().chain(early) {
            self.release_socket(inode);
        }
        Some(process)
    }

    /// A watched (process, fd) that holds the socket.
    pub fn holder_of(&self, inode: u64) -> Option<(u32, u32)> {
        self.processes
            .values()
            .filter(|p| p.fds.holds_socket(inode))
            .find_map(|p| {
                let fd = p.fds.iter().find(|(_, e)| e.inode == inode)?.0;
                Some((p.pid, *fd))
            })
    }

    /// The fds of `pid` whose kind is still a guess, with their births (ns),
    /// for the engine to look up in /proc.
    pub fn provisional_fds(&self, pid: u32) -> Vec<(u32, u64)> {
        self.processes.get(&pid).map_or_else(Vec::new, |p| {
            p.fds
                .iter()
                .filter(|(_, e)| e.provisional)
                .map(|(fd, e)| (*fd, e.birth.ts_ns))
                .collect()
        })
    }

    /// When the entry `pid` holds under `fd` was born (ns).
    pub fn birth_of(&self, pid: u32, fd: u32) -> Option<u64> {
        Some(self.processes.get(&pid)?.fds.get(&fd)?.birth.ts_ns)
    }

    /// What /proc says an fd is: its kind, and for sockets the inode.
    /// Returns whether that socket is new to the ledger: its state is then
    /// unknown (its state changes so far went to no one), for sock_diag to tell.
    pub fn resolve_kind(&mut self, pid: u32, fd: u32, kind: FdKind, inode: u64, now_ns: u64) -> bool {
        let Some(mut entry) = self.processes.get_mut(&pid).and_then(|p| p.fds.get_mut(&fd)) else {
            return false;
        };
        entry.entry.kind = kind;
        entry.entry.provisional = false;
        entry.set_inode(inode);
        let new_socket = inode != 0 && !self.sockets.contains_key(&inode);
        if inode != 0 {
            self.socket_entry(inode, pid, now_ns);
        }
        new_socket
    }
}

#[cfg(test)]
impl Ledger {
    /// A ledger watching one process, `nova-compute`, with nothing in it yet.
    pub fn watching(pid: u32) -> Ledger {
        let mut ledger = Ledger::default();
        ledger.watch(Process::new(
            pid,
            "nova-compute".into(),
            vec![],
            1,
            WatchReason::Pid,
            1,
        ));
        ledger
    }
}

#[cfg(test)]
mod socket_tests;
#[cfg(test)]
mod tests;
