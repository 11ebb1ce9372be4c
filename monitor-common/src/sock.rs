//! Wire types of the socket probes.

use crate::EventHeader;

/// TCP states the monitor names (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LISTEN: u8 = 10;

/// connect()'s errno values (x86_64 and most Linux architectures) that the
/// probe and the ledger tell apart.
pub mod errno {
    pub const EINTR: i32 = 4;
    pub const EISCONN: i32 = 106;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EALREADY: i32 = 114;
    pub const EINPROGRESS: i32 = 115;

    /// EINTR, or one of the kernel's restart codes (ERESTARTSYS..
    /// ERESTART_RESTARTBLOCK, 512-516) that a sys_exit tracepoint sees
    /// before the syscall is restarted.
    pub const fn interrupted(errno: i32) -> bool {
        errno == EINTR || (errno >= 512 && errno <= 516)
    }
}

/// getsockopt(SOL_SOCKET, SO_ERROR): a socket's pending error, which the
/// read clears.
pub const SOL_SOCKET: u64 = 1;
pub const SO_ERROR: u64 = 4;

/// A TCP connection's addresses: the key of TUPLES. IPv4
/// addresses sit in the first 4 bytes of the 16; ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Who holds a watched socket: the process and fd that created it (or that
/// user space found holding it), and the socket's inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub tgid: u32,
    pub fd: u32,
    pub inode: u64,
}

/// A TCP state change or error report of a watched socket. `header.tgid`
/// is the owner from SOCKS (the current task is often a softirq's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEvent {
    pub header: EventHeader,
    /// The owner's inode of the socket (0 when the owner is known by fd only).
    pub inode: u64,
    pub skaddr: u64,
    /// The owner's fd.
    pub fd: u32,
    /// SockError: the errno the kernel reported; SockState: 0, except from
    /// SYN_SENT to CLOSE: the error the connect failed with (0 for none).
    pub error: i32,
    pub oldstate: u8,
    pub newstate: u8,
    pub _pad: [u8; 6],
    pub tuple: Tuple,
    /// SockState from CLOSE to SYN_SENT only: when the connecting thread's
    /// socket() created the fd, if that creation rides along in this record
    /// (held back on this CPU: a socket that never connects costs no record
    /// if it is closed there too), else 0.
    pub born_ns: u64,
    /// With `born_ns`: socket()'s arguments, as `FdEvent.detail` carries them.
    pub born_detail: u32,
    pub _pad2: u32,
}

/// connect() as the calling thread saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `ts_ns` is the time connect() returned. With `syscall`
    /// [`GETSOCKOPT`](crate::syscalls::GETSOCKOPT), getsockopt(SO_ERROR)
    /// read the socket's pending error: `ret` is its -errno and no address
    /// is known (`family` 0).
    pub header: EventHeader,
    pub fd: u32,
    /// 0, or -errno (-EINPROGRESS for a non-blocking connect under way).
    pub ret: i32,
    /// sa_family of the address passed (AF_INET, AF_INET6, AF_UNIX, ...).
    pub family: u16,
    /// Port, host order (0 for non-IP families).
    pub port: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes; unused for other families.
    pub addr: [u8; 16],
}

/// Struct member offsets for the fd -> socket walk, read by user space from
/// the kernel's BTF (Rust probes cannot emit CO-RE relocations). All zero
/// means unknown: the probes then skip the walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub socket_sk: u32,
    /// Offset of the address family in struct sock (sock_common.skc_family).
    pub sock_family: u32,
    /// Offset of the TCP state in struct sock (sock_common.skc_state).
    pub sock_state: u32,
    /// struct sock: sk_protocol (u16) and sk_err (int).
    pub sock_protocol: u32,
    pub sock_err: u32,
    /// Addresses in struct sock (sock_common): IPv4 remote and local,
    /// remote port (network order), local port (host order), IPv6 addresses.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// For the snapshot iterator: struct file's f_path, struct inode's i_mode.
    pub file_f_path: u32,
    pub inode_i_mode: u32,
    /// From a struct sock to its inode: sock.sk_socket, then socket.file.
    pub sock_sk_socket: u32,
    pub socket_file: u32,
    /// struct task_struct's tgid: the host-wide iterator keeps one process's fds.
    pub task_tgid: u32,
}

impl SockOffsets {
    pub const GLOBAL: &str = "SOCK_OFFSETS";

    /// All unknown: what the probes' global holds until the loader sets it.
    pub const UNKNOWN: SockOffsets = SockOffsets {
        task_files: 0,
        files_fdt: 0,
        fdt_fd: 0,
        file_private_data: 0,
        file_f_inode: 0,
        inode_i_ino: 0,
        socket_sk: 0,
        sock_family: 0,
        sock_state: 0,
        sock_protocol: 0,
        sock_err: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        file_f_path: 0,
        inode_i_mode: 0,
        sock_sk_socket: 0,
        socket_file: 0,
        task_tgid: 0,
    };

    pub const fn known(&self) -> bool {
        self.task_files != 0 && self.file_private_data != 0 && self.socket_sk != 0
    }
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 40);
const _: () = assert!(core::mem::size_of::<SockOwner>() == 16);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 24 + 32 + 40 + 16);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 24 + 16 + 16);
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 88);
const _: () = assert!(core::mem::size_of::<FdIterRecord>() == 32 + 40);

/// One open fd as the snapshot iterator (`iter/task_file`) writes it,
/// followed by `target_len` bytes of the fd's link target as /proc shows it
/// (`/etc/hosts`, `pipe:[123]`, `anon_inode:[eventfd]`). Sockets (a
/// `sock_family`) come without one: theirs is `socket:[inode]`. Otherwise
/// `target_len` 0: the kernel could not render it (longer than
/// [`FD_TARGET_MAX`]); read /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdIterRecord {
    pub fd: u32,
    /// The inode's i_mode (file type and permissions).
    pub mode: u32,
    pub inode: u64,
    pub target_len: u32,
    /// Sockets: the address family, protocol and state (0 for other files).
    pub sock_family: u16,
    pub sock_protocol: u16,
    pub sock_state: u8,
    pub _pad: [u8; 7],
    /// Sockets of AF_INET/AF_INET6: addresses and ports (family 0 otherwise).
    pub tuple: Tuple,
}

/// Longest link target the iterator renders (PATH_MAX).
pub const FD_TARGET_MAX: usize = 4096;

/// The iterator's global (a `u32`, set before load): 1 where the kernel
/// cannot scope a task iterator to one process (before Linux 6.1). The
/// iterator then walks every process and keeps the fds of the one its
/// reader asked for, found in [`FD_ITER_READERS`].
pub const FD_ITER_HOST_WIDE: &str = "FD_ITER_HOST_WIDE";
/// The iterator's map, host-wide mode only: reader tgid -> the tgid whose
/// fds that reader gets (written by the daemon as it hands the iterator out).
pub const FD_ITER_READERS: &str = "FD_ITER_READERS";

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], Copy, integers and integer arrays with explicit
    // padding only: every bit pattern is valid.
    unsafe impl aya::Pod for Tuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOffsets {}
}
