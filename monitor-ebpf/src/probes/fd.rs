//! fd lifecycle from syscall tracepoints.
//!
//! - `fd_exit` serves every syscall whose return value is the new fd.
//! - `args_exit` serves the syscalls that need their arguments at exit (fds
//!   written to user memory, dup sources, fcntl/bpf commands, recvmsg
//!   ancillary data): it reads them from the saved registers (regs.rs).
//! - `connect_exit` reports a connect() that did not simply succeed, with
//!   its arguments from the saved registers; `sockopt_exit` a connect's
//!   error read back with getsockopt(SO_ERROR).
//! - `close_enter`/`close_range_enter` record releases at sys_enter, before
//!   the fd number can be reused by another thread, so the ring buffer order
//!   is the order in which fd numbers change hands.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    CMSG_CAPTURE, EventKind, RecvFdsEvent, config_flags, counter, socket_detail, syscalls as nr, watch_flags,
};

use super::{fdtable, http, sock};
use crate::{
    defer,
    emit::{FdExtra, current, fd_created, fd_event, fd_result, header, reserve, submit},
    maps::{config, count, is_watched, watch_state},
    regs::syscall_args,
};

/// Syscall tracepoint layout (platform.md): `__syscall_nr` at 8, arguments
/// as 8-byte slots from 16; sys_exit has `ret` at 16.
const SYSCALL_NR: usize = 8;
const ARGS: usize = 16;
const RET: usize = 16;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// Reads a field of the tracepoint record with a plain load: the verifier
/// allows direct context access at constant offsets within the record, and it
/// is several times cheaper than `read_at` (a bpf_probe_read_kernel call).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a constant inside the syscall record
    // (platform.md layout), aligned for T; the verifier checks both.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> u32 {
    field::<i32>(ctx, SYSCALL_NR) as u32
}

#[inline(always)]
fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    field::<u64>(ctx, ARGS + index * 8)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    field::<i64>(ctx, RET)
}

fn is_watched_current() -> bool {
    is_watched(current().0)
}

/// sys_exit of syscalls that return the new fd.
#[tracepoint]
pub fn fd_exit(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_watched(tgid) {
        return 0;
    }
    let (syscall, ret) = (syscall_nr(&ctx), ret(&ctx));
    let mut extra = FdExtra::NONE;
    if ret >= 0 && (syscall == nr::ACCEPT || syscall == nr::ACCEPT4) {
        // Accepted sockets changed state in softirq before accept()
        // returned, unattributed: their state at this point rides along.
        let (inode, state) = fdtable::remember(tgid, ret as u32);
        extra.inode = inode;
        extra.detail = state as u32;
    }
    // Accepted sockets are in SOCKS: their close must reach user space.
    let holdable = extra.inode == 0;
    fd_result(syscall, ret, extra, holdable);
    0
}

/// Whether a call with these arguments can have made what `args_exit`
/// reports: frequent non-creating calls (fcntl F_GETFL, bpf map lookups)
/// return at once.
#[inline(always)]
fn may_report(syscall: u32, args: &[u64; 4]) -> bool {
    match syscall {
        nr::FCNTL => args[1] == nr::F_DUPFD || args[1] == nr::F_DUPFD_CLOEXEC,
        nr::BPF => {
            let mut i = 0;
            while i < nr::BPF_FD_COMMANDS.len() {
                if nr::BPF_FD_COMMANDS[i] == args[0] {
                    return true;
                }
                i += 1;
            }
            false
        }
        // signalfd with an existing fd updates it instead of creating one.
        nr::SIGNALFD | nr::SIGNALFD4 => args[0] as i32 == -1,
        // dup2(fd, fd) creates nothing.
        nr::DUP2 | nr::DUP3 => args[0] != args[1],
        _ => true,
    }
}

/// sys_enter of listen(fd, backlog): the socket enters SOCKS before it moves
/// to LISTEN (socket() walks nothing; connect() registers in sock.rs). A
/// held-back creation ships first, so that this CPU's records keep their order.
#[tracepoint]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_watched(tgid) {
        return 0;
    }
    defer::flush_local();
    fdtable::remember(tgid, arg(&ctx, 0) as u32);
    0
}

/// sys_exit of connect(fd, addr, addrlen): its arguments are still in the
/// saved registers, and its start is the socket's SYN_SENT record, so no
/// sys_enter program keeps them.
#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let ret = ret(&ctx);
    // The return value first: most connects succeed, and then say nothing
    // (but one to a syslog path makes a log stream).
    if ret == 0 {
        if config().flags & config_flags::SYSLOG_CONNECTS != 0 && is_watched_current() {
            http::syslog_connected(syscall_args());
        }
        return 0;
    }
    if !sock::connect_reportable(ret) || !is_watched_current() {
        return 0;
    }
    sock::connect_done(syscall_args(), ret);
    0
}

/// sys_exit of getsockopt(fd, level, optname, optval, optlen): a
/// connect's error read back with SO_ERROR (sock.rs).
#[tracepoint]
pub fn sockopt_exit(ctx: TracePointContext) -> u32 {
    if ret(&ctx) == 0 && is_watched_current() {
        sock::error_read(syscall_args());
    }
    0
}

/// sys_exit of the syscalls listed in `syscalls::ARGS_AT_EXIT`.
#[tracepoint]
pub fn args_exit(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_watched(tgid) {
        return 0;
    }
    let syscall = syscall_nr(&ctx);
    let args = syscall_args();
    if !may_report(syscall, &args) {
        return 0;
    }
    let ret = ret(&ctx);
    let plain = FdExtra::NONE;
    match syscall {
        nr::SOCKET => {
            // A TCP socket enters SOCKS when it connects (sock.rs); until
            // then it is an fd like any other, held back like one: a
            // connect on this CPU takes the creation into its SYN_SENT record.
            let detail = socket_detail(args[0], args[1], args[2]);
            fd_result(nr::SOCKET, ret, FdExtra { detail, ..plain }, true);
        }
        nr::SOCKETPAIR => fd_pair(
            nr::SOCKETPAIR,
            ret,
            args[3],
            socket_detail(args[0], args[1], args[2]),
        ),
        nr::PIPE | nr::PIPE2 => fd_pair(syscall, ret, args[0], 0),
        nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL => {
            // A copy of a tracked socket fd is in SOCK_FDS: its close must reach user space.
            // dup2/dup3 may have closed a tracked fd at the target; dup and
            // F_DUPFD take a free number, which no entry names.
            let replaces = syscall == nr::DUP2 || syscall == nr::DUP3;
            let tracked = ret >= 0 && http::dup_fd(tgid, args[0] as u32, ret as u32, replaces);
            let extra = FdExtra {
                source_fd: args[0] as u32,
                ..plain
            };
            fd_result(syscall, ret, extra, !tracked)
        }
        nr::BPF => fd_result(
            nr::BPF,
            ret,
            FdExtra {
                detail: args[0] as u32,
                ..plain
            },
            true,
        ),
        nr::RECVMSG => {
            if ret >= 0 {
                received_control(args[1]);
            }
            if ret > 0 {
                http::received_data(args[0], args[1], ret);
            }
        }
        syscall => fd_result(syscall, ret, plain, true),
    }
    0
}

/// pipe/pipe2/socketpair write their two fds to user memory.
#[inline(always)]
fn fd_pair(syscall: u32, ret: i64, user_fds: u64, detail: u32) {
    let extra = FdExtra {
        detail,
        ..FdExtra::NONE
    };
    if ret != 0 {
        fd_result(syscall, ret, extra, true);
        return;
    }
    // SAFETY: the kernel just wrote two ints there; a fault makes the read fail.
    match unsafe { bpf_probe_read_user(user_fds as *const [i32; 2]) } {
        Ok([a, b]) => fd_created(
            syscall,
            a as u32,
            FdExtra {
                fd2: b as u32,
                ..extra
            },
            true,
        ),
        // The fds exist but we cannot name them: reconciliation will.
        Err(_) => count(counter::RESULT_UNREADABLE),
    }
}

/// Offsets in `struct user_msghdr` (x86_64).
const MSG_CONTROL: u64 = 32;
const MSG_CONTROLLEN: u64 = 40;

/// Copies recvmsg's ancillary data for user space to parse (SCM_RIGHTS).
#[inline(always)]
fn received_control(msghdr: u64) {
    // SAFETY: user memory the kernel just used; a fault makes the read fail.
    let (control, len) = unsafe {
        (
            bpf_probe_read_user((msghdr + MSG_CONTROL) as *const u64),
            bpf_probe_read_user((msghdr + MSG_CONTROLLEN) as *const u64),
        )
    };
    let (Ok(control), Ok(len)) = (control, len) else {
        return;
    };
    if control == 0 || len == 0 {
        return;
    }
    let Some(mut entry) = reserve::<RecvFdsEvent>(EventKind::FdReceived) else {
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = (len as usize).min(CMSG_CAPTURE);
    // SAFETY: `event` points at a reserved record of the right size; the
    // slice below is bounded by CMSG_CAPTURE for the verifier.
    unsafe {
        (*event).header = header(EventKind::FdReceived, nr::RECVMSG);
        (*event).control_len = len as u32;
        (*event).captured = captured as u32;
        let buf = &mut (*event).control;
        if bpf_probe_read_user_buf(control as *const u8, &mut buf[..captured]).is_err() {
            (*event).captured = 0;
        }
    }
    submit(entry);
}

/// sys_enter_close: the release is recorded before the fd number is free.
#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    let watched = watch_state(tgid);
    if watched == 0 {
        return 0;
    }
    let fd = arg(&ctx, 0) as u32;
    // A held-back fd is in no map (fd_created), so nothing else to forget.
    if watched & (watch_flags::SCANNING | watch_flags::SCANNED) == 0 && defer::cancel(tgid, tid, fd) {
        return 0;
    }
    http::forget_fd(tgid, fd);
    fd_event(EventKind::FdClose, nr::CLOSE, fd, FdExtra::NONE);
    0
}

/// sys_enter_close_range: a range release (CLOSE_RANGE_CLOEXEC closes nothing now).
#[tracepoint]
pub fn close_range_enter(ctx: TracePointContext) -> u32 {
    if !is_watched_current() {
        return 0;
    }
    if arg(&ctx, 2) & CLOSE_RANGE_CLOEXEC != 0 {
        return 0;
    }
    let (first, last) = (arg(&ctx, 0) as u32, arg(&ctx, 1) as u32);
    fd_event(
        EventKind::FdCloseRange,
        nr::CLOSE_RANGE,
        first,
        FdExtra {
            fd2: last,
            ..FdExtra::NONE
        },
    );
    0
}
