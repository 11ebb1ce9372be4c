//! Wire types shared by the kernel probes (`monitor-ebpf`) and the daemon.
//!
//! Every type here crosses the kernel/user boundary byte for byte, so each is
//! `#[repr(C)]`, `Copy`, made of fixed-width integers with explicit padding,
//! and has its size asserted. Nothing else in the workspace defines a layout
//! that the kernel side also knows.
#![no_std]

mod data;
mod sock;
pub mod syscalls;

pub use data::*;
pub use sock::*;

/// Names of the maps both sides refer to.
pub mod maps {
    /// The one ring buffer every event goes through.
    pub const EVENTS: &str = "EVENTS";
    /// The in-kernel watched set: one byte for every pid Linux can make
    /// (PID_MAX_LIMIT, 4 MiB), 0 when not watched, else [`crate::watch_flags::BYTE_WATCHED`]
    /// with the watch flags in the low bits. It is the check every hooked
    /// syscall makes first (an array index, several times cheaper than a hash
    /// lookup), and a fork or exit of a watched process stores one byte
    /// instead of inserting or deleting a hash entry (~0.5 µs each under this
    /// hypervisor, where a bucket lock with interrupts off is dear).
    /// Elements of 8 bytes hold 8 pids (pid / 8, byte pid % 8); the map is
    /// mmapable, so user space and the probes each store single bytes.
    pub const WATCHED_PIDS: &str = "WATCHED_PIDS";
    /// comm (16 bytes, NUL padded) -> 1: processes to watch from the moment they exec.
    pub const WATCH_COMMS: &str = "WATCH_COMMS";
    /// One [`crate::KernelConfig`] at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU event counters, indexed by [`crate::counter`] slots.
    pub const COUNTERS: &str = "COUNTERS";
    /// struct sock address -> [`crate::SockOwner`]: sockets of watched processes.
    pub const SOCKS: &str = "SOCKS";
    /// (tgid << 32 | fd) -> [`crate::StreamState`]: TCP socket fds of watched
    /// processes, whose data the HTTP capture looks at.
    pub const SOCK_FDS: &str = "SOCK_FDS";
    /// SSL* -> [`crate::StreamState`]: TLS streams of watched processes.
    pub const SSL_STATE: &str = "SSL_STATE";
    /// pid_tgid -> [`crate::TlsCall`]: an SSL_read/SSL_write in flight.
    pub const TLS_CALLS: &str = "TLS_CALLS";
    /// [`crate::Tuple`] -> [`crate::SockOwner`]: sockets user space found in /proc
    /// whose struct sock the kernel has not seen yet (opened before the daemon).
    pub const TUPLES: &str = "TUPLES";
    /// Per-CPU [`crate::DeferredOpen`]: the last fd creation, held back so
    /// that a close right after it cancels both (see the probes' `defer` module).
    pub const DEFERRED: &str = "DEFERRED";
    /// `sockaddr_un` bytes ([`crate::syslog_key`]) -> index in the syslog
    /// paths: where a connect() makes a log stream (`stream_flags::SYSLOG`).
    /// journald's sockets are left out (read through the journal).
    pub const SYSLOG_PATHS: &str = "SYSLOG_PATHS";
}

/// Names of the programs user space runs itself rather than attaching.
pub mod programs {
    /// Ships one CPU's held-back fd creation; run on each CPU with
    /// `BPF_PROG_TEST_RUN` before every drain. Returns [`crate::FLUSH_BUSY`]
    /// when it interrupted a probe that was using the slot.
    pub const FLUSH_DEFERRED: &str = "flush_deferred";
}

/// What a record in the ring buffer is. The numbers are part of the wire
/// format: gapped per family so families can grow, never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process exec'd ([`TaskEvent`]; `pid` is the tid that called exec).
    Exec = 1,
    /// A watched process created a thread or a child process ([`TaskEvent`]).
    TaskNew = 2,
    /// A thread of a watched process exited ([`TaskEvent`]).
    TaskExit = 3,
    /// A thread of a watched process changed its name ([`TaskEvent`]).
    TaskRename = 4,
    /// A syscall created one or two fds ([`FdEvent`]).
    FdOpen = 10,
    /// close(fd) was entered ([`FdEvent`], `fd`).
    FdClose = 11,
    /// close_range(first, last) without CLOSE_RANGE_CLOEXEC ([`FdEvent`], `fd`..=`fd2`).
    FdCloseRange = 12,
    /// An fd-creating syscall failed with EMFILE or ENFILE ([`FdEvent`], `detail` = errno).
    FdFailed = 13,
    /// recvmsg returned ancillary data, possibly SCM_RIGHTS fds ([`RecvFdsEvent`]).
    FdReceived = 14,
    /// An fd creation the kernel held back ([`FdEvent`], as `FdOpen`): events
    /// of other CPUs may have overtaken it, so its fds may be closed or reused
    /// by the time it arrives, which `header.ts_ns` lets the reader tell.
    FdOpenLate = 15,
    /// A watched TCP socket changed state ([`SockEvent`]).
    SockState = 20,
    /// The kernel reported an error on a watched socket ([`SockEvent`], `error`).
    SockError = 21,
    /// connect() returned, or getsockopt(SO_ERROR) read a connect's error ([`ConnectEvent`]).
    Connect = 22,
    /// Bytes at the start of a message on a watched TCP socket, plain or TLS ([`DataEvent`]).
    Data = 30,
}

impl EventKind {
    /// Every kind, for exhaustive iteration (counters, tests).
    pub const ALL: [EventKind; 14] = [
        EventKind::Exec,
        EventKind::TaskNew,
        EventKind::TaskExit,
        EventKind::TaskRename,
        EventKind::FdOpen,
        EventKind::FdClose,
        EventKind::FdCloseRange,
        EventKind::FdFailed,
        EventKind::FdReceived,
        EventKind::FdOpenLate,
        EventKind::SockState,
        EventKind::SockError,
        EventKind::Connect,
        EventKind::Data,
    ];
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(raw: u32) -> Result<Self, u32> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|kind| *kind as u32 == raw)
            .ok_or(raw)
    }
}

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// Syscall number (x86_64) the event comes from, or [`NO_SYSCALL`].
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`), comparable with /proc start times.
    pub ts_ns: u64,
}

/// [`EventHeader::syscall`] for events that do not come from a syscall.
pub const NO_SYSCALL: u32 = u32::MAX;
/// An absent fd in [`FdEvent`] fields.
pub const NO_FD: u32 = u32::MAX;

/// fd creation and release.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdEvent {
    pub header: EventHeader,
    /// The fd created or closed (first of a range or pair).
    pub fd: u32,
    /// Second fd of a pipe/socketpair, last fd of a close_range, else [`NO_FD`].
    pub fd2: u32,
    /// The fd this one duplicates (dup*, F_DUPFD), else [`NO_FD`].
    pub source_fd: u32,
    /// socket()/socketpair(): [`socket_detail`]; accept(): the socket's TCP
    /// state when accept returned; bpf(): the command; FdFailed: errno; else 0.
    pub detail: u32,
    /// Inode of a socket from socket()/accept() when the kernel walk could
    /// read it (the key /proc and sock_diag also use), else 0.
    pub inode: u64,
}

/// Packs socket(domain, type, protocol) into [`FdEvent::detail`]: domain in
/// bits 0..8, the type without SOCK_NONBLOCK/SOCK_CLOEXEC in 8..16, protocol in 16..32.
pub const fn socket_detail(domain: u64, sock_type: u64, protocol: u64) -> u32 {
    ((domain & 0xff) | ((sock_type & 0xf) << 8) | ((protocol & 0xffff) << 16)) as u32
}

/// Unpacks [`socket_detail`] into (domain, type, protocol).
pub const fn socket_detail_parts(detail: u32) -> (u32, u32, u32) {
    (detail & 0xff, (detail >> 8) & 0xff, detail >> 16)
}

/// Thread and process lifecycle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskEvent {
    pub header: EventHeader,
    /// TaskNew: the new task's id. TaskExit/TaskRename: the task. Exec: the tid that exec'd.
    pub pid: u32,
    /// [`task_flags`] bits.
    pub flags: u32,
    /// Task name after the event, NUL padded.
    pub comm: [u8; 16],
}

/// Bits of [`TaskEvent::flags`].
pub mod task_flags {
    /// TaskNew: the new task is a thread of the same process.
    pub const THREAD: u32 = 1 << 0;
    /// TaskExit: the last thread of the process exited.
    pub const GROUP_DEAD: u32 = 1 << 1;
    /// Exec: the process was watched before this exec.
    pub const WAS_WATCHED: u32 = 1 << 2;
    /// Exec: the kernel watches the process now (comm matched, or pinned by pid).
    pub const WATCHED_NOW: u32 = 1 << 3;
    /// TaskExit: the kernel cannot tell whether the process is gone (no
    /// group_dead field); set on every thread's exit, user space decides.
    pub const GROUP_DEAD_UNKNOWN: u32 = 1 << 4;
}

/// How many bytes of recvmsg ancillary data a [`RecvFdsEvent`] carries.
pub const CMSG_CAPTURE: usize = 256;

/// Ancillary data returned by recvmsg to a watched process, copied raw;
/// user space parses the cmsg headers (SCM_RIGHTS) where it is safe to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvFdsEvent {
    pub header: EventHeader,
    /// Bytes of control data the kernel returned (msg_controllen after the call).
    pub control_len: u32,
    /// Bytes copied into `control` (at most [`CMSG_CAPTURE`]).
    pub captured: u32,
    pub control: [u8; CMSG_CAPTURE],
}

/// The watch flags: the low bits of a watched pid's byte in WATCHED_PIDS.
pub mod watch_flags {
    /// Chosen by user space or by a comm match: stays watched across exec if it still matches.
    pub const MATCHED: u32 = 1 << 0;
    /// Watched because its parent is: dropped in the kernel when it execs something else.
    pub const INHERITED: u32 = 1 << 1;
    /// Asked for by pid: watched whatever it execs.
    pub const PINNED: u32 = 1 << 2;
    /// Set by user space while it reads the process's /proc: a close then
    /// ships the held-back creation it would cancel (monitor-ebpf's
    /// `defer`). The scan may have listed that fd, and only the two records
    /// tell the ledger that it is gone again.
    pub const SCANNING: u32 = 1 << 3;
    /// Set with SCANNING and kept after it, until a flush of the held-back
    /// creations some time later: /proc lists an fd as soon as its syscall
    /// installs it, a moment before the syscall's exit probe holds its
    /// creation back, so a creation the scan saw may be held only after the
    /// scan's own flush. Its close must ship too.
    pub const SCANNED: u32 = 1 << 4;
    /// The top bit of a watched pid's byte in WATCHED_PIDS; the flags above
    /// fill the bits below it.
    pub const BYTE_WATCHED: u8 = 0x80;

    /// A watched pid's byte in WATCHED_PIDS.
    pub const fn byte(flags: u32) -> u8 {
        BYTE_WATCHED | (flags as u8 & !BYTE_WATCHED)
    }

    /// The flags a watched pid's byte holds.
    pub const fn of_byte(byte: u8) -> u32 {
        (byte & !BYTE_WATCHED) as u32
    }
}

/// Runtime configuration of the probes (CONFIG map, index 0); user space may
/// rewrite it at any time (config reload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Wake the reader once this many bytes wait in the ring buffer; below
    /// it events are submitted without a wakeup and the reader's timer drains them.
    pub wakeup_bytes: u32,
    /// Ring-buffer bytes the records of log-stream writes may take per CPU
    /// per second (each record counts DATA_CAPTURE); writes past it are
    /// counted in `counter::LOG_BYTES_SKIPPED`.
    pub log_bytes_per_cpu_s: u32,
    pub _pad: u32,
}

/// Field offsets of the non-syscall tracepoints, read by user space from
/// tracefs format files and set once per load (a global of the eBPF object:
/// the kernel's layout is not baked in, platform.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub newtask_pid: u16,
    pub newtask_comm: u16,
    pub newtask_clone_flags: u16,
    pub exit_pid: u16,
    /// 0 when the kernel's sched_process_exit has no `group_dead` field.
    pub exit_group_dead: u16,
    pub rename_pid: u16,
    pub rename_newcomm: u16,
    pub exec_old_pid: u16,
}

impl TaskOffsets {
    /// The name of the global in the eBPF object.
    pub const GLOBAL: &str = "TASK_OFFSETS";
}

/// Bits of [`KernelConfig::flags`].
pub mod config_flags {
    /// Ship every exec (needed to match command lines in user space).
    pub const SHIP_ALL_EXECS: u32 = 1 << 0;
    /// User space put connections in TUPLES: state changes of sockets the
    /// probes do not know must be looked up by address.
    pub const TUPLES_SEEDED: u32 = 1 << 1;
    /// Hold back each fd creation in a per-CPU slot: a close of it on the
    /// same CPU before anything else is shipped cancels both records.
    pub const DEFER_OPENS: u32 = 1 << 2;
    /// `maps::SYSLOG_PATHS` holds paths: a watched process's connect() to
    /// one marks the socket a log stream (`stream_flags::SYSLOG`).
    pub const SYSLOG_CONNECTS: u32 = 1 << 3;
    /// One of those paths' addresses may be as long as an IPv4 or IPv6
    /// one (16 or 28 bytes): connects of those lengths are read too.
    pub const SYSLOG_INET_LENGTHS: u32 = 1 << 4;
}

/// The per-CPU slot of a held-back fd creation (DEFERRED map). Only programs
/// running on its CPU touch it: probes in process context, and the flush
/// program, which may interrupt them (it runs in an IPI), hence `busy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeferredOpen {
    /// Set while a probe reads or changes the slot: the flush leaves it alone.
    pub busy: u32,
    /// `event` holds a creation not shipped yet.
    pub full: u32,
    pub event: FdEvent,
    /// The last close on this CPU that cancelled a held-back creation.
    pub cancelled: CancelledClose,
}

/// A close whose probe cancelled the held-back creation of its fd (nothing
/// shipped). The close's probe runs at syscall entry and the fd leaves the
/// table a moment later, so a /proc scan begun in between lists an fd no
/// record will ever release: user space leaves such an fd out of the scan.
/// Kept until the same thread holds back a creation again on this CPU (its
/// close is over by then) or another close here is cancelled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CancelledClose {
    /// 0 when there is none.
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub _pad: u32,
    /// Boot-time ns of the close's probe.
    pub ts_ns: u64,
}

/// The flush program's return value when the slot was busy: run it again.
pub const FLUSH_BUSY: u32 = 1;

/// Slots of the COUNTERS per-CPU array.
pub mod counter {
    /// Records of kind K that found the ring buffer full are counted at `LOST_BASE + K`.
    pub const LOST_BASE: u32 = 0;
    /// Syscall exits that could not be described: a pipe's or socketpair's
    /// fds unreadable in user memory.
    pub const RESULT_UNREADABLE: u32 = 64;
    /// Forced wakeups issued because `wakeup_bytes` were waiting.
    pub const WAKEUPS: u32 = 65;
    /// fds closed while their creation was still held back: neither was shipped.
    pub const SHORT_LIVED: u32 = 66;
    /// Execs of watched processes that woke the reader at once.
    pub const EXEC_WAKEUPS: u32 = 67;
    /// TCP sockets (or their fds) of watched processes the probes could not
    /// track: `SOCKS` or `SOCK_FDS` was full. Their states or HTTP calls go
    /// unseen until reconciliation (states) or ever (calls).
    pub const TRACKING_FULL: u32 = 68;
    /// Bytes written to log streams that were not shipped: past the per-CPU
    /// budget, or past `LOG_CHUNKS` records in one write.
    pub const LOG_BYTES_SKIPPED: u32 = 69;
    /// Number of slots.
    pub const SLOTS: u32 = 70;
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(core::mem::size_of::<FdEvent>() == 48);
const _: () = assert!(core::mem::size_of::<TaskEvent>() == 48);
const _: () = assert!(core::mem::size_of::<RecvFdsEvent>() == 32 + CMSG_CAPTURE);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 16);
const _: () = assert!(core::mem::size_of::<TaskOffsets>() == 16);
const _: () = assert!(core::mem::size_of::<CancelledClose>() == 24);
const _: () = assert!(core::mem::size_of::<DeferredOpen>() == 80);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], Copy, built only of integers and
    // integer arrays with explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DeferredOpen {}
}
