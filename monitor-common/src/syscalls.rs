//! x86_64 syscall numbers the probes hook, and their names for user space.

pub const READ: u32 = 0;
pub const WRITE: u32 = 1;
pub const OPEN: u32 = 2;
pub const CLOSE: u32 = 3;
pub const READV: u32 = 19;
pub const WRITEV: u32 = 20;
pub const PIPE: u32 = 22;
pub const DUP: u32 = 32;
pub const DUP2: u32 = 33;
pub const SOCKET: u32 = 41;
pub const CONNECT: u32 = 42;
pub const ACCEPT: u32 = 43;
pub const SENDTO: u32 = 44;
pub const RECVFROM: u32 = 45;
pub const SENDMSG: u32 = 46;
pub const RECVMSG: u32 = 47;
pub const SOCKETPAIR: u32 = 53;
pub const GETSOCKOPT: u32 = 55;
pub const EXECVE: u32 = 59;
pub const FCNTL: u32 = 72;
pub const CREAT: u32 = 85;
pub const EPOLL_CREATE: u32 = 213;
pub const MQ_OPEN: u32 = 240;
pub const INOTIFY_INIT: u32 = 253;
pub const OPENAT: u32 = 257;
pub const SIGNALFD: u32 = 282;
pub const TIMERFD_CREATE: u32 = 283;
pub const EVENTFD: u32 = 284;
pub const ACCEPT4: u32 = 288;
pub const SIGNALFD4: u32 = 289;
pub const EVENTFD2: u32 = 290;
pub const EPOLL_CREATE1: u32 = 291;
pub const DUP3: u32 = 292;
pub const PIPE2: u32 = 293;
pub const INOTIFY_INIT1: u32 = 294;
pub const PERF_EVENT_OPEN: u32 = 298;
pub const FANOTIFY_INIT: u32 = 300;
pub const OPEN_BY_HANDLE_AT: u32 = 304;
pub const SENDMMSG: u32 = 307;
pub const MEMFD_CREATE: u32 = 319;
pub const BPF: u32 = 321;
pub const EXECVEAT: u32 = 322;
pub const USERFAULTFD: u32 = 323;
pub const IO_URING_SETUP: u32 = 425;
pub const OPEN_TREE: u32 = 428;
pub const FSOPEN: u32 = 430;
pub const FSMOUNT: u32 = 432;
pub const FSPICK: u32 = 433;
pub const PIDFD_OPEN: u32 = 434;
pub const CLOSE_RANGE: u32 = 436;
pub const OPENAT2: u32 = 437;
pub const PIDFD_GETFD: u32 = 438;
pub const LANDLOCK_CREATE_RULESET: u32 = 444;
pub const MEMFD_SECRET: u32 = 447;

/// fcntl commands that create an fd.
pub const F_DUPFD: u64 = 0;
pub const F_DUPFD_CLOEXEC: u64 = 1030;

/// bpf() commands that return a new fd.
pub const BPF_FD_COMMANDS: [u64; 13] = [
    0,  // BPF_MAP_CREATE
    5,  // BPF_PROG_LOAD
    7,  // BPF_OBJ_GET
    13, // BPF_PROG_GET_FD_BY_ID
    14, // BPF_MAP_GET_FD_BY_ID
    17, // BPF_RAW_TRACEPOINT_OPEN
    18, // BPF_BTF_LOAD
    19, // BPF_BTF_GET_FD_BY_ID
    28, // BPF_LINK_CREATE
    30, // BPF_LINK_GET_FD_BY_ID
    32, // BPF_ENABLE_STATS
    33, // BPF_ITER_CREATE
    36, // BPF_TOKEN_CREATE
];

/// Syscalls whose return value alone is the new fd: one sys_exit program serves them all.
pub const RETURNS_FD: [(u32, &str); 24] = [
    (OPEN, "open"),
    (OPENAT, "openat"),
    (OPENAT2, "openat2"),
    (CREAT, "creat"),
    (OPEN_BY_HANDLE_AT, "open_by_handle_at"),
    (ACCEPT, "accept"),
    (ACCEPT4, "accept4"),
    (EVENTFD, "eventfd"),
    (EVENTFD2, "eventfd2"),
    (EPOLL_CREATE, "epoll_create"),
    (EPOLL_CREATE1, "epoll_create1"),
    (TIMERFD_CREATE, "timerfd_create"),
    (INOTIFY_INIT, "inotify_init"),
    (INOTIFY_INIT1, "inotify_init1"),
    (FANOTIFY_INIT, "fanotify_init"),
    (MEMFD_CREATE, "memfd_create"),
    (PIDFD_OPEN, "pidfd_open"),
    (PIDFD_GETFD, "pidfd_getfd"),
    (USERFAULTFD, "userfaultfd"),
    (PERF_EVENT_OPEN, "perf_event_open"),
    (IO_URING_SETUP, "io_uring_setup"),
    (MEMFD_SECRET, "memfd_secret"),
    (OPEN_TREE, "open_tree"),
    (FSOPEN, "fsopen"),
];

/// Syscalls whose sys_exit needs their arguments (fds written to user
/// memory, dup sources, fcntl/bpf commands, ancillary data): it reads them
/// from the registers saved at entry, so only their sys_exit is hooked.
pub const ARGS_AT_EXIT: [(u32, &str); 12] = [
    (SOCKET, "socket"),
    (SOCKETPAIR, "socketpair"),
    (PIPE, "pipe"),
    (PIPE2, "pipe2"),
    (DUP, "dup"),
    (DUP2, "dup2"),
    (DUP3, "dup3"),
    (FCNTL, "fcntl"),
    (BPF, "bpf"),
    (SIGNALFD, "signalfd"),
    (SIGNALFD4, "signalfd4"),
    (RECVMSG, "recvmsg"),
];

/// Fd-creating syscalls that are hooked when the kernel has them, but whose
/// absence only costs reconciliation: fsmount, fspick, mq_open, landlock.
pub const RETURNS_FD_OPTIONAL: [(u32, &str); 4] = [
    (FSMOUNT, "fsmount"),
    (FSPICK, "fspick"),
    (MQ_OPEN, "mq_open"),
    (LANDLOCK_CREATE_RULESET, "landlock_create_ruleset"),
];

/// Name of a syscall the probes report, for output.
pub fn name(nr: u32) -> Option<&'static str> {
    let tables: [&[(u32, &str)]; 2] = [&RETURNS_FD, &RETURNS_FD_OPTIONAL];
    for table in tables {
        for (n, name) in table {
            if *n == nr {
                return Some(name);
            }
        }
    }
    for (n, name) in ARGS_AT_EXIT {
        if n == nr {
            return Some(name);
        }
    }
    match nr {
        CLOSE => Some("close"),
        CONNECT => Some("connect"),
        GETSOCKOPT => Some("getsockopt"),
        CLOSE_RANGE => Some("close_range"),
        EXECVE => Some("execve"),
        EXECVEAT => Some("execveat"),
        _ => None,
    }
}
