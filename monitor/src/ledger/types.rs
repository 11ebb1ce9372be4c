//! What the ledger keeps per watched process.

use std::{collections::VecDeque, net::SocketAddr};

use serde::{Deserialize, Serialize};

pub use super::fdtable::FdTable;
use super::{
    copies::{FdId, UnboundCopies},
    sockets::EndpointStats,
};
use crate::{
    bounded::push_bounded,
    calls::{CallLog, CallRef},
    fastmap::{FastMap, FastSet},
    fdkind::FdKind,
};

/// A task name as the kernel stores it: 16 bytes, NUL padded.
pub type Comm = [u8; 16];

pub fn comm_str(comm: &Comm) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

pub fn comm_from(name: &str) -> Comm {
    let mut comm = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    comm[..n].copy_from_slice(&bytes[..n]);
    comm
}

/// How the ledger learned that an fd or thread exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Seen being created by a hooked syscall (or clone for threads).
    Syscall,
    /// Already there when the daemon started watching the process.
    BeforeStart,
    /// Copied from the parent at fork, or kept across exec.
    Inherited,
    /// Received from another process over a unix socket (SCM_RIGHTS).
    ScmRights,
    /// Found in /proc by reconciliation: its creation was not seen.
    Reconciled,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Syscall => "syscall",
            Origin::BeforeStart => "before_start",
            Origin::Inherited => "inherited",
            Origin::ScmRights => "scm_rights",
            Origin::Reconciled => "reconciled",
        }
    }

    /// Entries whose birth was not seen may be replaced by a creation event
    /// for the same number without that counting as a missed release.
    pub fn is_unseen(self) -> bool {
        matches!(self, Origin::BeforeStart | Origin::Reconciled)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Birth {
    /// CLOCK_BOOTTIME ns.
    pub ts_ns: u64,
    pub tid: u32,
    pub thread: Comm,
    /// Syscall number, or `monitor_common::NO_SYSCALL`.
    pub syscall: u32,
    pub origin: Origin,
    /// The call the creating thread had in flight at that moment.
    pub call: Option<CallRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdEntry {
    pub kind: FdKind,
    /// The kind is a guess from the syscall until /proc confirms it.
    pub provisional: bool,
    pub birth: Birth,
    /// The fd it duplicates, or `monitor_common::NO_FD`.
    pub source_fd: u32,
    /// Socket inode (the key of the socket table), or 0.
    pub inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadEntry {
    pub name: Comm,
    pub start_ns: u64,
    /// The thread that created it, when seen.
    pub creator: Option<u32>,
    pub origin: Origin,
    /// The call its creator had in flight when it was created.
    pub birth_call: Option<CallRef>,
    /// The first call it made itself (a pool or loop thread's purpose).
    pub first_call: Option<CallRef>,
}

/// Why a process is watched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "value")]
pub enum WatchReason {
    /// comm or argv[0]/argv[1] basename equals this name.
    Name(String),
    /// The command line matches this regex.
    Cmdline(String),
    /// Asked for by pid.
    Pid,
    /// A forked child of a watched process that has not exec'd.
    Parent(u32),
}

/// An fd-creating syscall that failed with EMFILE or ENFILE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedSyscall {
    pub ts_ns: u64,
    pub tid: u32,
    pub syscall: u32,
    pub errno: u32,
}

/// How many recent failures a process keeps (the total is counted apart).
pub const FAILURES_KEPT: usize = 64;
/// Long close_ranges kept to judge late creations by (they are rare: a few
/// per exec); short ones are kept per number (`released_at`).
pub const RANGES_KEPT: usize = 16;

#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub start_ns: u64,
    pub reason: WatchReason,
    pub watched_since_ns: u64,
    pub fds: FdTable,
    pub threads: FastMap<u32, ThreadEntry>,
    /// Connection health per remote address of its TCP sockets.
    pub endpoints: FastMap<SocketAddr, EndpointStats>,
    pub failures: VecDeque<FailedSyscall>,
    pub failures_total: u64,
    /// What events changed while a reconciliation scan was in flight.
    pub touched: Option<Touched>,
    /// Its API calls (HTTP and HTTPS), loops and their statistics.
    pub calls: CallLog,
    /// SSL object -> the socket fd under it, as the probes saw it.
    pub ssl_fds: FastMap<u64, u32>,
    /// Its log streams and the secrets written to them since the last tick.
    pub log_streams: crate::logscan::streams::Streams,
    /// When each fd number was last released, and the last close_ranges:
    /// what tells a late creation (`FdOpenLate`) that it is stale.
    pub released_at: FastMap<u32, u64>,
    pub released_ranges: VecDeque<ReleasedRange>,
    /// When it last exec'd (boot ns), 0 if not since it was watched.
    pub exec_ns: u64,
    /// When it last forked a child the ledger follows (boot ns), 0 if not
    /// since it was watched: a late creation from before it is the child's too.
    pub forked_ns: u64,
    /// dups of its TCP sockets made before they connected.
    pub unbound_copies: UnboundCopies,
    /// (source fd, copy) of its last dups whose source the ledger did not
    /// hold: that creation, held back on a CPU the thread has left since,
    /// arrives after them (`adopt_copies_that_overtook`).
    pub orphan_copies: VecDeque<(u32, FdId)>,
    /// fd -> (socket inode, when) for connects that arrived before their
    /// fd's creation: socket() held back on a CPU the thread has left since
    /// (bind_socket_fd). The creation, when it arrives, is bound to it.
    pub early_binds: FastMap<u32, (u64, u64)>,
    /// (tid, name) of its last threads to exit, newest last: a creation held
    /// back on a CPU its thread left arrives after that thread's exit from
    /// the other CPU (probes/defer.rs), and is still named after it.
    pub exited_threads: VecDeque<(u32, Comm)>,
    /// Its last fds closed, newest last: a dup held back on a CPU its
    /// thread left may arrive after its source's close from the other CPU,
    /// and still copies the source's kind and socket.
    pub closed_fds: VecDeque<ClosedFd>,
}

/// An fd the ledger saw closed, as it was.
#[derive(Clone, Copy, Debug)]
pub struct ClosedFd {
    pub fd: u32,
    pub closed_ns: u64,
    pub entry: FdEntry,
}

/// A close_range the ledger applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleasedRange {
    pub first: u32,
    pub last: u32,
    pub ts_ns: u64,
}

/// fds and threads that events changed during a /proc scan: the scan's view
/// of them may be older than the ledger's, so reconciliation leaves them be.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    /// When the scan began (before /proc was read).
    pub began_ns: u64,
    pub fds: FastSet<u32>,
    /// close_range()s, which may name more numbers than a set should hold.
    pub fd_ranges: Vec<(u32, u32)>,
    pub threads: FastSet<u32>,
}

impl Touched {
    pub fn fd(&self, fd: u32) -> bool {
        self.fds.contains(&fd)
            || self
                .fd_ranges
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&fd))
    }
}

/// Exited threads whose names a process keeps: creations held back in the
/// kernel wait at most one drain interval (100 ms), and a process rarely
/// ends this many threads in one.
const EXITED_THREADS_KEPT: usize = 64;

/// Closed fds a process keeps, for the same reason (one drain's closes).
const CLOSED_FDS_KEPT: usize = 64;

impl Process {
    pub fn new(
        pid: u32,
        comm: String,
        cmdline: Vec<String>,
        start_ns: u64,
        reason: WatchReason,
        now_ns: u64,
    ) -> Self {
        Process {
            pid,
            comm,
            cmdline,
            start_ns,
            reason,
            watched_since_ns: now_ns,
            fds: FdTable::default(),
            threads: FastMap::default(),
            endpoints: FastMap::default(),
            failures: VecDeque::new(),
            failures_total: 0,
            touched: None,
            calls: CallLog::default(),
            ssl_fds: FastMap::default(),
            log_streams: Default::default(),
            released_at: FastMap::default(),
            released_ranges: VecDeque::new(),
            exec_ns: 0,
            forked_ns: 0,
            unbound_copies: UnboundCopies::default(),
            orphan_copies: VecDeque::new(),
            early_binds: FastMap::default(),
            exited_threads: VecDeque::new(),
            closed_fds: VecDeque::new(),
        }
    }

    pub fn touch(&mut self, fd: u32) {
        if let Some(touched) = &mut self.touched {
            touched.fds.insert(fd);
        }
    }

    pub fn touch_range(&mut self, first: u32, last: u32) {
        if let Some(touched) = &mut self.touched {
            touched.fd_ranges.push((first, last));
        }
    }

    pub fn touch_thread(&mut self, tid: u32) {
        if let Some(touched) = &mut self.touched {
            touched.threads.insert(tid);
        }
    }

    pub fn thread_name(&self, tid: u32) -> Comm {
        if let Some(thread) = self.threads.get(&tid) {
            return thread.name;
        }
        self.exited_threads
            .iter()
            .rev()
            .find(|(exited, _)| *exited == tid)
            .map_or_else(|| comm_from(&self.comm), |(_, name)| *name)
    }

    /// Keeps an exited thread's name for the creations that may still
    /// arrive from it (a few drain intervals' worth of exits at most).
    pub fn thread_exited(&mut self, tid: u32, name: Comm) {
        push_bounded(&mut self.exited_threads, (tid, name), EXITED_THREADS_KEPT);
    }

    /// Keeps a closed fd's entry for the late dups that may copy it.
    pub fn fd_closed(&mut self, fd: u32, closed_ns: u64, entry: FdEntry) {
        push_bounded(
            &mut self.closed_fds,
            ClosedFd { fd, closed_ns, entry },
            CLOSED_FDS_KEPT,
        );
    }

    /// Open fds per kind.
    pub fn counts(&self) -> std::collections::BTreeMap<FdKind, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.fds.values() {
            *counts.entry(entry.kind).or_default() += 1;
        }
        counts
    }
}

/// What the ledger has had to do, for status and metrics. Every count of a
/// fix is a place where a hook missed something.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounters {
    pub events: u64,
    pub fds_opened: u64,
    pub fds_closed: u64,
    /// A creation event for an fd the ledger held open: its release was not seen.
    pub missed_releases: u64,
    /// dup2/dup3 onto an open fd (an implicit close).
    pub replaced_by_dup: u64,
    /// close() of an fd the ledger did not hold (EBADF, already repaired, or
    /// a held-back creation another CPU's close overtook).
    pub unknown_closes: u64,
    /// Held-back fd creations applied, and those dropped because their fd had
    /// been released or reused by the time they arrived (see `FdOpenLate`).
    #[serde(default)]
    pub late_opens: u64,
    #[serde(default)]
    pub late_opens_stale: u64,
    /// Held-back creations that arrived after a fork of their process: the
    /// children forked since are reconciled with /proc.
    #[serde(default)]
    pub late_opens_past_fork: u64,
    pub fds_received: u64,
    pub exec_cloexec_closed: u64,
    pub reconcile_runs: u64,
    pub reconcile_fds_added: u64,
    pub reconcile_fds_removed: u64,
    pub reconcile_kinds_fixed: u64,
    pub reconcile_threads_added: u64,
    pub reconcile_threads_removed: u64,
    pub threads_started: u64,
    pub threads_exited: u64,
    pub processes_watched: u64,
    pub processes_forgotten: u64,
    /// Processes not followed because the ledger was full (`max_processes`).
    pub processes_refused: u64,
    pub failed_syscalls: u64,
    /// Events for a process user space does not track (raced with an unwatch).
    pub events_unowned: u64,
    /// Socket events for a socket no watched fd holds any more.
    pub socket_events_unowned: u64,
    /// Error reports whose error the owner had read (and so cleared) first.
    #[serde(default)]
    pub socket_errors_taken: u64,
    /// Socket errors the owner read with getsockopt(SO_ERROR).
    #[serde(default)]
    pub socket_errors_read: u64,
    /// Socket states sock_diag disagreed with (a state change was missed).
    pub socket_states_fixed: u64,
    /// Data records for a stream the ledger could not place.
    pub data_unplaced: u64,
    /// Endpoint health records dropped at the per-process cap (sockets::MAX_ENDPOINTS).
    #[serde(default)]
    pub endpoints_evicted: u64,
}
