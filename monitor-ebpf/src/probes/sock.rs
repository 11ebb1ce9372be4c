//! TCP state changes, error reports and ends of watched sockets, and
//! connect outcomes.
//!
//! The socket tracepoints fire for every TCP socket on the host, often in
//! softirq context (the FIN that moves a socket to CLOSE_WAIT), so the
//! current task says nothing about the owner. BTF tracepoints hand the
//! programs the struct sock itself: it is looked up in SOCKS, then, for
//! connections opened before the probes could see them, in TUPLES by
//! address. SOCKS is filled in process context: at listen() and accept()
//! (fd.rs), and when a watched thread's connect() moves a socket to
//! SYN_SENT (the socket and its fd are both at hand then; for TCP Fast Open
//! that is sendto/sendmsg with MSG_FASTOPEN). socket() itself
//! walks nothing, so a socket that never connects costs no more than any fd.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use monitor_common::{
    ConnectEvent, EventKind, SO_ERROR, SOL_SOCKET, SockEvent, SockOffsets, SockOwner, TCP_CLOSE,
    TCP_SYN_SENT, Tuple, config_flags,
    errno::{EALREADY, EISCONN},
    syscalls as nr,
};

use super::http;
use crate::{
    btf::{AF_INET, AF_INET6, follow, load, read_inet_tuple},
    defer::{self, Born},
    emit::{header, reserve, reserve_unordered, submit},
    maps::{SOCKS, TUPLES, config, forget, is_watched, sock_offsets, track},
    regs,
};

const IPPROTO_TCP: u16 = 6;

/// The watched owner of `sk` (a BTF pointer), if it has one.
#[inline(always)]
fn owner(sk: *const u8) -> Option<SockOwner> {
    // SAFETY: the value is copied out at once.
    if let Some(owner) = unsafe { SOCKS.get(sk as u64) } {
        return Some(*owner);
    }
    // Only when user space seeded connections does an unknown socket need
    // its addresses read (most sockets on the host are not ours).
    if config().flags & config_flags::TUPLES_SEEDED == 0 {
        return None;
    }
    // SAFETY: sk is the tracepoint's struct sock.
    let tuple = unsafe { tuple_of(sk, &sock_offsets()) }?;
    // SAFETY: copied out at once.
    let owner = unsafe { TUPLES.get(tuple) }.copied()?;
    let _ = TUPLES.remove(tuple);
    track(&SOCKS, sk as u64, owner);
    Some(owner)
}

/// An inet socket's connection, as the kernel's tracepoints would print it;
/// `None` for other families.
///
/// # Safety
/// `sk` is a BTF pointer to a struct sock.
#[inline(always)]
unsafe fn tuple_of(sk: *const u8, off: &SockOffsets) -> Option<Tuple> {
    // SAFETY (all loads): members of struct sock at their BTF offsets.
    let family: u16 = unsafe { load(sk, off.sock_family) };
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let mut tuple = Tuple::default();
    // SAFETY: per this function's contract.
    unsafe { read_inet_tuple(sk, off, family, &mut tuple) };
    Some(tuple)
}

/// The fd a watched thread is connecting, in the syscall that moves a
/// socket from CLOSE to SYN_SENT: connect()'s or, for TCP Fast Open, where
/// the SYN leaves from sendto/sendmsg with MSG_FASTOPEN, that call's; its
/// first argument, read from the saved registers.
#[inline(always)]
fn connecting_fd(pid_tgid: u64) -> Option<u32> {
    if !is_watched((pid_tgid >> 32) as u32) {
        return None;
    }
    match regs::syscall_nr() {
        nr::CONNECT | nr::SENDTO | nr::SENDMSG | nr::SENDMMSG => Some(regs::syscall_args()[0] as u32),
        _ => None,
    }
}

/// A TCP socket that a watched thread's connect() (or Fast Open send)
/// moves out of CLOSE: its owner is that thread's process and the call's
/// fd. This runs inside that syscall, so its record may ship in order with
/// the CPU's other records (a held-back fd creation first): [`ship`] with
/// `in_owner_syscall`.
#[inline(always)]
fn register_connecting(sk: *const u8) -> Option<SockOwner> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = connecting_fd(pid_tgid)?;
    let off = sock_offsets();
    // SAFETY (all loads): members at their BTF offsets of the tracepoint's
    // struct sock, its struct socket, file and inode; a null pointer reads 0.
    let inode = unsafe {
        if load::<u16>(sk, off.sock_protocol) != IPPROTO_TCP {
            return None;
        }
        let socket = follow(sk, off.sock_sk_socket)?;
        let file = follow(socket, off.socket_file)?;
        load::<u64>(follow(file, off.file_f_inode)?, off.inode_i_ino)
    };
    let owner = SockOwner {
        tgid: (pid_tgid >> 32) as u32,
        fd,
        inode,
    };
    if !track(&SOCKS, sk as u64, owner) {
        return None;
    }
    http::track_socket_fd(owner.tgid, owner.fd);
    Some(owner)
}

/// What a [`SockEvent`] reports.
struct Change {
    kind: EventKind,
    oldstate: u8,
    newstate: u8,
    error: i32,
}

/// Ships a [`SockEvent`]; `born` is the socket() creation it carries (see
/// `SockEvent.born_ns`).
#[inline(always)]
fn ship(change: &Change, owner: &SockOwner, sk: *const u8, in_owner_syscall: bool, born: Born) {
    let kind = change.kind;
    // SAFETY: sk is the tracepoint's struct sock.
    let tuple = unsafe { tuple_of(sk, &sock_offsets()) }.unwrap_or_default();
    // These programs may run in softirq: they leave the held-back slot alone
    // (defer.rs), unless they run in the owner's own syscall.
    let entry = if in_owner_syscall {
        reserve::<SockEvent>(kind)
    } else {
        reserve_unordered::<SockEvent>(kind)
    };
    if let Some(mut entry) = entry {
        let mut head = header(kind, monitor_common::NO_SYSCALL);
        head.tgid = owner.tgid;
        entry.write(SockEvent {
            header: head,
            inode: owner.inode,
            skaddr: sk as u64,
            fd: owner.fd,
            error: change.error,
            oldstate: change.oldstate,
            newstate: change.newstate,
            _pad: [0; 6],
            tuple,
            born_ns: born.ts_ns,
            born_detail: born.detail,
            _pad2: 0,
        });
        submit(entry);
    }
}

/// Whether the ledger has let go of the socket already: its owner's close()
/// of it was shipped at that syscall's entry, so what the close itself does
/// (FIN_WAIT1, or CLOSE with SO_LINGER 0) and what follows once the socket
/// is an orphan (its struct socket released) would only reach a ledger that
/// no longer holds it.
#[inline(always)]
fn released(owner: &SockOwner, sk: *const u8) -> bool {
    // SAFETY: a member of the tracepoint's struct sock at its BTF offset.
    if unsafe { follow(sk, sock_offsets().sock_sk_socket) }.is_none() {
        return true;
    }
    // In softirq the current task may be anyone: only the owner's own
    // close of this very fd counts.
    if (bpf_get_current_pid_tgid() >> 32) as u32 != owner.tgid {
        return false;
    }
    let fd = owner.fd as u64;
    match regs::syscall_nr() {
        nr::CLOSE => regs::syscall_args()[0] == fd,
        nr::CLOSE_RANGE => {
            let [first, last, _, _] = regs::syscall_args();
            first <= fd && fd <= last
        }
        _ => false,
    }
}

/// tp_btf/inet_sock_set_state(sk, oldstate, newstate). Its `sk` and
/// inet_sk_error_report's are BTF pointers: read by direct loads.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let (oldstate, newstate): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    let (owner, registered) = match owner(sk) {
        Some(owner) => (owner, false),
        // Only connect() (or a Fast Open send) moves a socket from CLOSE to SYN_SENT.
        None if oldstate == TCP_CLOSE as i32 && newstate == TCP_SYN_SENT as i32 => {
            match register_connecting(sk) {
                Some(owner) => (owner, true),
                None => return 0,
            }
        }
        None => return 0,
    };
    if !registered && released(&owner, sk) {
        return 0;
    }
    // The connecting thread's socket() of this fd, if this CPU holds it
    // back: one record says both.
    let born = if registered {
        defer::take_socket(owner.tgid, bpf_get_current_pid_tgid() as u32, owner.fd)
    } else {
        Born::NONE
    };
    // A failed connect: the kernel sets sk_err before this change and wakes
    // the owner after it, so here (unlike at the error report, which runs
    // after the wakeup) the owner cannot have read and cleared it yet.
    // (Older kernels, 5.15 and 6.1 among them, report the error before this
    // close: there the owner may clear it before both probes, and
    // getsockopt(SO_ERROR)'s return says what it read: `error_read`.)
    let error = if oldstate == TCP_SYN_SENT as i32 && newstate == TCP_CLOSE as i32 {
        // SAFETY: a member of the tracepoint's struct sock at its BTF offset.
        unsafe { load::<i32>(sk, sock_offsets().sock_err) }
    } else {
        0
    };
    let change = Change {
        kind: EventKind::SockState,
        oldstate: oldstate as u8,
        newstate: newstate as u8,
        error,
    };
    ship(&change, &owner, sk, registered, born);
    0
}

/// tp_btf/inet_sk_error_report(sk): refused, timed out, unreachable, reset.
/// The kernel reports it after it moved the socket to CLOSE. A close with
/// SO_LINGER 0 reports ECONNRESET on its own socket (tcp_disconnect): that
/// socket has left the ledger, like the state changes of its close.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn sock_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: copied out at once.
    let Some(owner) = (unsafe { SOCKS.get(sk as u64) }).copied() else {
        return 0;
    };
    if released(&owner, sk) {
        return 0;
    }
    let off = sock_offsets();
    // SAFETY: members of the tracepoint's struct sock at their BTF offsets.
    let (error, state) = unsafe { (load::<i32>(sk, off.sock_err), load::<u8>(sk, off.sock_state)) };
    let change = Change {
        kind: EventKind::SockError,
        oldstate: state,
        newstate: state,
        error,
    };
    ship(&change, &owner, sk, false, Born::NONE);
    0
}

/// tp_btf/tcp_destroy_sock(sk): the sock is about to be freed, so its
/// address may soon belong to another socket. It fires for every TCP socket
/// on the host, most of them not ours.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn sock_destroy(ctx: BtfTracePointContext) -> i32 {
    forget(&SOCKS, ctx.arg::<u64>(0));
    0
}

/// Whether connect()'s return value says what its socket's state changes do
/// not: not when it succeeded, nor when it reports on an earlier call
/// (EISCONN: connected already; EALREADY: still under way).
#[inline(always)]
pub fn connect_reportable(ret: i64) -> bool {
    let errno = -ret as i32;
    ret != 0 && errno != EISCONN && errno != EALREADY
}

/// sys_exit of a [`connect_reportable`] connect(fd, addr, addrlen): the
/// outcome and the address asked for (read back from user memory, still
/// valid at exit).
#[inline(always)]
pub fn connect_done([fd, user_addr, addr_len, _]: [u64; 4], ret: i64) {
    let mut raw = [0u8; 24];
    let len = (addr_len as usize).min(raw.len());
    // SAFETY: user memory the kernel just read; a fault makes the read fail.
    if unsafe { bpf_probe_read_user_buf(user_addr as *const u8, &mut raw[..len]) }.is_err() {
        return;
    }
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&raw[4..8]);
    } else if family == AF_INET6 && len >= 24 {
        addr.copy_from_slice(&raw[8..24]);
    }
    let port = if family == AF_INET || family == AF_INET6 {
        port
    } else {
        0
    };
    ship_connect(nr::CONNECT, fd as u32, ret as i32, family, port, addr);
}

/// sys_exit of getsockopt(fd, SOL_SOCKET, SO_ERROR, optval, optlen) that
/// returned 0: the socket's pending error, which this read cleared. When it
/// is a connect's refusal or timeout, the owner may have read it before
/// either socket probe loaded it (older kernels wake the owner with the
/// error report before the close), so it ships as connect()'s return would.
#[inline(always)]
pub fn error_read([fd, level, optname, optval]: [u64; 4]) {
    if level != SOL_SOCKET || optname != SO_ERROR {
        return;
    }
    // SAFETY: user memory the kernel just wrote; a fault makes the read fail.
    let Ok(error) = (unsafe { bpf_probe_read_user(optval as *const i32) }) else {
        return;
    };
    // 0: no error; anything else outside errno's range: a short optlen
    // left part of the int unwritten.
    if (1..4096).contains(&error) {
        ship_connect(nr::GETSOCKOPT, fd as u32, -error, 0, 0, [0; 16]);
    }
}

#[inline(always)]
fn ship_connect(syscall: u32, fd: u32, ret: i32, family: u16, port: u16, addr: [u8; 16]) {
    if let Some(mut entry) = reserve::<ConnectEvent>(EventKind::Connect) {
        entry.write(ConnectEvent {
            header: header(EventKind::Connect, syscall),
            fd,
            ret,
            family,
            port,
            _pad: 0,
            addr,
        });
        submit(entry);
    }
}
