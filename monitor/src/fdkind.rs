//! What an fd is: from the syscall that made it (ledger) or from what
//! /proc/PID/fd shows (snapshot, reconciliation). Both roads end in [`FdKind`].

use std::fmt;

use monitor_common::{socket_detail_parts, syscalls as nr};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    SocketTcp,
    SocketUdp,
    SocketUnix,
    SocketNetlink,
    SocketOther,
    File,
    Dir,
    Pipe,
    Eventfd,
    Epoll,
    Timerfd,
    Signalfd,
    Inotify,
    Fanotify,
    Memfd,
    Pidfd,
    Bpf,
    #[serde(rename = "io_uring")]
    IoUring,
    Perf,
    Userfaultfd,
    Other,
}

impl FdKind {
    #[cfg(test)]
    pub const ALL: [FdKind; 21] = [
        FdKind::SocketTcp,
        FdKind::SocketUdp,
        FdKind::SocketUnix,
        FdKind::SocketNetlink,
        FdKind::SocketOther,
        FdKind::File,
        FdKind::Dir,
        FdKind::Pipe,
        FdKind::Eventfd,
        FdKind::Epoll,
        FdKind::Timerfd,
        FdKind::Signalfd,
        FdKind::Inotify,
        FdKind::Fanotify,
        FdKind::Memfd,
        FdKind::Pidfd,
        FdKind::Bpf,
        FdKind::IoUring,
        FdKind::Perf,
        FdKind::Userfaultfd,
        FdKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FdKind::SocketTcp => "socket-tcp",
            FdKind::SocketUdp => "socket-udp",
            FdKind::SocketUnix => "socket-unix",
            FdKind::SocketNetlink => "socket-netlink",
            FdKind::SocketOther => "socket-other",
            FdKind::File => "file",
            FdKind::Dir => "dir",
            FdKind::Pipe => "pipe",
            FdKind::Eventfd => "eventfd",
            FdKind::Epoll => "epoll",
            FdKind::Timerfd => "timerfd",
            FdKind::Signalfd => "signalfd",
            FdKind::Inotify => "inotify",
            FdKind::Fanotify => "fanotify",
            FdKind::Memfd => "memfd",
            FdKind::Pidfd => "pidfd",
            FdKind::Bpf => "bpf",
            FdKind::IoUring => "io_uring",
            FdKind::Perf => "perf",
            FdKind::Userfaultfd => "userfaultfd",
            FdKind::Other => "other",
        }
    }

    pub fn is_socket(self) -> bool {
        matches!(
            self,
            FdKind::SocketTcp
                | FdKind::SocketUdp
                | FdKind::SocketUnix
                | FdKind::SocketNetlink
                | FdKind::SocketOther
        )
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kind guessed from the syscall alone, and whether /proc must confirm it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallKind {
    pub kind: FdKind,
    /// The syscall cannot tell (open: file or dir; accept: which protocol).
    pub provisional: bool,
}

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;

/// Kind of a socket from socket()'s packed arguments.
pub fn socket_kind(detail: u32) -> FdKind {
    let (domain, sock_type, protocol) = socket_detail_parts(detail);
    match (domain, sock_type, protocol) {
        (AF_UNIX, _, _) => FdKind::SocketUnix,
        (AF_NETLINK, _, _) => FdKind::SocketNetlink,
        (AF_INET | AF_INET6, SOCK_STREAM, 0 | IPPROTO_TCP) => FdKind::SocketTcp,
        (AF_INET | AF_INET6, SOCK_DGRAM, IPPROTO_ICMP | IPPROTO_ICMPV6) => FdKind::SocketOther,
        (AF_INET | AF_INET6, SOCK_DGRAM, 0 | IPPROTO_UDP) => FdKind::SocketUdp,
        _ => FdKind::SocketOther,
    }
}

/// Kind of an existing socket from its family and protocol as the kernel
/// keeps them (the protocol resolved, never 0 for TCP/UDP).
pub fn socket_kind_of(family: u16, protocol: u16) -> FdKind {
    match (u32::from(family), u32::from(protocol)) {
        (AF_UNIX, _) => FdKind::SocketUnix,
        (AF_NETLINK, _) => FdKind::SocketNetlink,
        (AF_INET | AF_INET6, IPPROTO_TCP) => FdKind::SocketTcp,
        (AF_INET | AF_INET6, IPPROTO_UDP) => FdKind::SocketUdp,
        _ => FdKind::SocketOther,
    }
}

/// Kind of an fd from the syscall that created it. `source` is the kind of
/// the fd a dup copies, when the ledger knows it.
pub fn from_syscall(syscall: u32, detail: u32, source: Option<FdKind>) -> SyscallKind {
    let sure = |kind| SyscallKind {
        kind,
        provisional: false,
    };
    let guess = |kind| SyscallKind {
        kind,
        provisional: true,
    };
    match syscall {
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT | nr::OPEN_BY_HANDLE_AT => guess(FdKind::File),
        nr::OPEN_TREE | nr::FSPICK | nr::FSOPEN | nr::FSMOUNT | nr::MQ_OPEN => guess(FdKind::Other),
        nr::SOCKET | nr::SOCKETPAIR => sure(socket_kind(detail)),
        nr::ACCEPT | nr::ACCEPT4 => guess(FdKind::SocketOther),
        nr::PIPE | nr::PIPE2 => sure(FdKind::Pipe),
        nr::EVENTFD | nr::EVENTFD2 => sure(FdKind::Eventfd),
        nr::EPOLL_CREATE | nr::EPOLL_CREATE1 => sure(FdKind::Epoll),
        nr::TIMERFD_CREATE => sure(FdKind::Timerfd),
        nr::SIGNALFD | nr::SIGNALFD4 => sure(FdKind::Signalfd),
        nr::INOTIFY_INIT | nr::INOTIFY_INIT1 => sure(FdKind::Inotify),
        nr::FANOTIFY_INIT => sure(FdKind::Fanotify),
        nr::MEMFD_CREATE => sure(FdKind::Memfd),
        nr::PIDFD_OPEN => sure(FdKind::Pidfd),
        nr::USERFAULTFD => sure(FdKind::Userfaultfd),
        nr::PERF_EVENT_OPEN => sure(FdKind::Perf),
        nr::IO_URING_SETUP => sure(FdKind::IoUring),
        nr::BPF => sure(FdKind::Bpf),
        nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL => match source {
            Some(kind) => sure(kind),
            None => guess(FdKind::Other),
        },
        _ => guess(FdKind::Other),
    }
}

/// What stat says about the object behind a path-like fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Directory,
    Fifo,
    Socket,
    Device,
    Other,
}

/// Kind of an fd from its /proc/PID/fd link target, the type of the object
/// (for paths) and, for sockets, the `system.sockprotoname` xattr.
pub fn from_target(target: &str, file_type: Option<FileType>, sock_proto: Option<&str>) -> FdKind {
    if target.starts_with("socket:[") {
        return sock_proto.map_or(FdKind::SocketOther, from_sock_proto);
    }
    if target.starts_with("pipe:[") {
        return FdKind::Pipe;
    }
    if let Some(anon) = target.strip_prefix("anon_inode:") {
        return from_anon_inode(anon.trim_start_matches('[').trim_end_matches(']'));
    }
    if target.starts_with("pidfd:") {
        return FdKind::Pidfd;
    }
    if target.starts_with("/memfd:") {
        return FdKind::Memfd;
    }
    match file_type {
        Some(FileType::Directory) => FdKind::Dir,
        Some(FileType::Fifo) => FdKind::Pipe,
        Some(FileType::Socket) => FdKind::SocketOther,
        Some(FileType::Regular | FileType::Device) => FdKind::File,
        Some(FileType::Other) => FdKind::Other,
        None if target.starts_with('/') => FdKind::File,
        None => FdKind::Other,
    }
}

/// Whether a ledger entry of `kind` can be the object /proc shows at
/// `target`, judged from the link alone (no stat or xattr). A `false` means
/// the fd number was released and reused without the ledger seeing it.
pub fn consistent_with_target(kind: FdKind, target: &str) -> bool {
    if kind == FdKind::Other {
        return true;
    }
    if target.starts_with("socket:[") {
        return kind.is_socket();
    }
    if target.starts_with('/') {
        return matches!(kind, FdKind::File | FdKind::Dir | FdKind::Pipe | FdKind::Memfd);
    }
    from_target(target, None, None) == kind
}

fn from_anon_inode(name: &str) -> FdKind {
    match name {
        "eventfd" => FdKind::Eventfd,
        "eventpoll" => FdKind::Epoll,
        "timerfd" => FdKind::Timerfd,
        "signalfd" => FdKind::Signalfd,
        "inotify" => FdKind::Inotify,
        "fanotify" => FdKind::Fanotify,
        "pidfd" => FdKind::Pidfd,
        "io_uring" => FdKind::IoUring,
        "perf_event" => FdKind::Perf,
        "userfaultfd" => FdKind::Userfaultfd,
        "memfd" => FdKind::Memfd,
        name if name.starts_with("bpf") || name == "btf" => FdKind::Bpf,
        _ => FdKind::Other,
    }
}

/// Kind from the socket's protocol name (`sk_prot->name`).
pub fn from_sock_proto(proto: &str) -> FdKind {
    match proto {
        "TCP" | "TCPv6" => FdKind::SocketTcp,
        "UDP" | "UDPv6" => FdKind::SocketUdp,
        "UNIX" | "UNIX-STREAM" => FdKind::SocketUnix,
        "NETLINK" => FdKind::SocketNetlink,
        _ => FdKind::SocketOther,
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::socket_detail;

    use super::*;

    #[test]
    fn socket_arguments_give_the_protocol() {
        let tcp = socket_detail(2, 1 | 0x80000, 0); // SOCK_STREAM | SOCK_CLOEXEC
        assert_eq!(socket_kind(tcp), FdKind::SocketTcp);
        assert_eq!(socket_kind(socket_detail(10, 2, 0)), FdKind::SocketUdp);
        assert_eq!(
            socket_kind(socket_detail(2, 2, 1)),
            FdKind::SocketOther,
            "ping socket"
        );
        assert_eq!(socket_kind(socket_detail(1, 5, 0)), FdKind::SocketUnix);
        assert_eq!(socket_kind(socket_detail(16, 3, 0)), FdKind::SocketNetlink);
        assert_eq!(
            socket_kind(socket_detail(2, 1, 262)),
            FdKind::SocketOther,
            "MPTCP"
        );
        assert_eq!(
            socket_kind(socket_detail(17, 3, 0)),
            FdKind::SocketOther,
            "AF_PACKET"
        );
    }

    #[test]
    fn a_kernel_socket_is_named_by_family_and_protocol() {
        assert_eq!(socket_kind_of(2, 6), FdKind::SocketTcp);
        assert_eq!(socket_kind_of(10, 17), FdKind::SocketUdp);
        assert_eq!(socket_kind_of(1, 0), FdKind::SocketUnix);
        assert_eq!(socket_kind_of(16, 0), FdKind::SocketNetlink);
        assert_eq!(socket_kind_of(2, 1), FdKind::SocketOther, "ping socket");
        assert_eq!(socket_kind_of(2, 262), FdKind::SocketOther, "MPTCP");
    }

    #[test]
    fn syscalls_that_cannot_tell_are_provisional() {
        assert!(from_syscall(nr::OPENAT, 0, None).provisional);
        assert!(from_syscall(nr::ACCEPT4, 0, None).provisional);
        assert_eq!(from_syscall(nr::PIPE2, 0, None).kind, FdKind::Pipe);
        assert!(!from_syscall(nr::EVENTFD2, 0, None).provisional);
        let dup = from_syscall(nr::DUP, 0, Some(FdKind::SocketTcp));
        assert_eq!((dup.kind, dup.provisional), (FdKind::SocketTcp, false));
        assert!(from_syscall(nr::DUP3, 0, None).provisional);
        assert!(from_syscall(9999, 0, None).provisional, "unknown syscall");
    }

    #[test]
    fn link_targets_classify_like_lsof() {
        let cases = [
            ("socket:[123]", None, Some("TCPv6"), FdKind::SocketTcp),
            ("socket:[123]", None, Some("UNIX-STREAM"), FdKind::SocketUnix),
            ("socket:[123]", None, None, FdKind::SocketOther),
            ("pipe:[9]", None, None, FdKind::Pipe),
            ("anon_inode:[eventfd]", None, None, FdKind::Eventfd),
            ("anon_inode:[eventpoll]", None, None, FdKind::Epoll),
            ("anon_inode:inotify", None, None, FdKind::Inotify),
            ("anon_inode:[fanotify]", None, None, FdKind::Fanotify),
            ("anon_inode:bpf-map", None, None, FdKind::Bpf),
            ("anon_inode:bpf_link", None, None, FdKind::Bpf),
            ("anon_inode:[io_uring]", None, None, FdKind::IoUring),
            ("anon_inode:[perf_event]", None, None, FdKind::Perf),
            ("anon_inode:[userfaultfd]", None, None, FdKind::Userfaultfd),
            ("anon_inode:[pidfd]", None, None, FdKind::Pidfd),
            ("pidfd:[4242]", None, None, FdKind::Pidfd),
            ("anon_inode:[something-new]", None, None, FdKind::Other),
            (
                "/memfd:leak (deleted)",
                Some(FileType::Regular),
                None,
                FdKind::Memfd,
            ),
            ("/etc", Some(FileType::Directory), None, FdKind::Dir),
            ("/tmp/fifo", Some(FileType::Fifo), None, FdKind::Pipe),
            ("/dev/null", Some(FileType::Device), None, FdKind::File),
            ("/var/log/x (deleted)", None, None, FdKind::File),
            ("net:[4026531840]", None, None, FdKind::Other),
        ];
        for (target, file_type, proto, want) in cases {
            assert_eq!(from_target(target, file_type, proto), want, "{target}");
        }
    }

    #[test]
    fn consistency_needs_only_the_link() {
        assert!(consistent_with_target(FdKind::SocketTcp, "socket:[1]"));
        assert!(!consistent_with_target(FdKind::SocketTcp, "/etc/hosts"));
        assert!(
            consistent_with_target(FdKind::Pipe, "/tmp/fifo"),
            "a FIFO opened by path"
        );
        assert!(consistent_with_target(FdKind::Dir, "/etc"));
        assert!(!consistent_with_target(FdKind::File, "pipe:[3]"));
        assert!(!consistent_with_target(FdKind::Eventfd, "anon_inode:[timerfd]"));
        assert!(consistent_with_target(FdKind::Other, "anything"));
    }

    #[test]
    fn kind_names_round_trip_through_serde() {
        for kind in FdKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<FdKind>(&json).unwrap(), kind);
        }
    }
}
