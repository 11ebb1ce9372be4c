//! The HTTP capture: the first bytes of each message a watched process
//! sends or receives on a TCP socket, in plain text (syscalls) or TLS
//! plaintext (OpenSSL uprobes, tls.rs).
//!
//! A message starts when data changes direction on a stream (a request
//! after a response, a response after a request); the write after a
//! request's first write is also kept (a request body: nova's provision
//! and power targets). Everything else (bodies, later chunks) is skipped in
//! the kernel: the capture costs a map lookup per data syscall and one
//! record per message start.
//!
//! The same map holds the log streams user space marks (stdout or stderr
//! that is a pipe or socket, a socket to syslog): every write to one is
//! shipped, within a per-CPU budget, for the secret scan.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    DATA_CAPTURE, DataEvent, EventKind, LOG_CHUNKS, SOCKADDR_UN_LEN, StreamState, config_flags, counter,
    data_flags, stream_flags,
};

use crate::{
    emit::{header, reserve, reserve_unordered, submit},
    maps::{LOG_WINDOW, SOCK_FDS, SYSLOG_PATHS, TLS_CALLS, config, count_n, forget, is_watched, track},
    regs::syscall_args,
};

const SYSCALL_NR: usize = 8;
const ARGS: usize = 16;
const RET: usize = 16;

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: a constant offset inside the syscall record (platform.md); the
    // verifier checks it against the record of each attached syscall.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Whether this piece of data starts a message (or is a request body) on a
/// stream, updating the stream's state. Returns the flags to ship it with.
#[inline(always)]
pub fn message_start(state: &mut StreamState, dir: u32) -> Option<u32> {
    if state.last_dir != dir || (state.writes == 0 && dir == 0) {
        state.last_dir = dir;
        state.writes = if dir == 0 { 1 } else { 0 };
        return Some(dir);
    }
    if dir == 0 {
        state.writes += 1;
        if state.writes == 2 {
            return Some(data_flags::CONTINUATION);
        }
    }
    None
}

/// Ships up to DATA_CAPTURE bytes of user memory at `buf`.
#[inline(always)]
pub fn ship_data(fd: u32, ssl: u64, flags: u32, len: u64, buf: u64) {
    // TLS data comes from uprobes, which run preemptible (migrate_disable
    // only): they must leave the held-back slot alone (see `defer`).
    let entry = if flags & data_flags::TLS != 0 {
        reserve_unordered::<DataEvent>(EventKind::Data)
    } else {
        reserve::<DataEvent>(EventKind::Data)
    };
    let Some(mut entry) = entry else {
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = (len as usize).min(DATA_CAPTURE);
    // SAFETY: `event` points at a reserved record of the right size; the
    // copy is bounded by DATA_CAPTURE.
    unsafe {
        (*event).header = header(EventKind::Data, monitor_common::NO_SYSCALL);
        (*event).ssl = ssl;
        (*event).fd = fd;
        (*event).flags = flags;
        (*event).len = len as u32;
        (*event).captured = captured as u32;
        let data = &mut (*event).data;
        if bpf_probe_read_user_buf(buf as *const u8, &mut data[..captured]).is_err() {
            (*event).captured = 0;
        }
    }
    submit(entry);
}

/// A write to a log stream: shipped whole (up to LOG_CHUNKS records) if
/// this CPU's budget for the second allows, else only counted. The budget
/// is charged what the records take in the ring (DATA_CAPTURE each, short
/// line or not), so that a process logging a flood cannot crowd fd events
/// out of the ring.
#[inline(always)]
fn ship_log(fd: u32, state: &StreamState, len: u64, buf: u64) {
    let flags = if state.flags & stream_flags::SYSLOG != 0 {
        data_flags::LOG | data_flags::SYSLOG | (state.writes << data_flags::SYSLOG_PATH_SHIFT)
    } else {
        data_flags::LOG
    };
    let shipped = len.min((LOG_CHUNKS * DATA_CAPTURE) as u64);
    let records = shipped.div_ceil(DATA_CAPTURE as u64);
    if !log_budget_allows(records * DATA_CAPTURE as u64) {
        count_n(counter::LOG_BYTES_SKIPPED, len);
        return;
    }
    count_n(counter::LOG_BYTES_SKIPPED, len - shipped);
    for chunk in 0..LOG_CHUNKS {
        let start = (chunk * DATA_CAPTURE) as u64;
        if start >= shipped {
            break;
        }
        ship_data(fd, start, flags, len - start, buf + start);
    }
}

/// Takes `bytes` from this CPU's log budget for the current second.
#[inline(always)]
fn log_budget_allows(bytes: u64) -> bool {
    let Some(window) = LOG_WINDOW.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: this CPU's value; syscall tracepoints do not nest on a CPU.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window[0]) >= 1_000_000_000 {
        *window = [now, 0];
    }
    if window[1] + bytes > config().log_bytes_per_cpu_s as u64 {
        return false;
    }
    window[1] += bytes;
    true
}

/// TLS records start with a handshake (22) or application-data (23) type
/// and version major 3: such a stream is left to the OpenSSL probes.
#[inline(always)]
fn looks_like_tls(buf: u64) -> bool {
    // SAFETY: a probe read of user memory; a fault makes it fail.
    match unsafe { bpf_probe_read_user(buf as *const [u8; 2]) } {
        Ok([kind, 3]) => kind == 22 || kind == 23,
        _ => false,
    }
}

/// Data `len` bytes long at `buf` moving through `fd` in direction `dir`.
#[inline(always)]
fn on_data(fd: u32, dir: u32, len: u64, buf: u64) {
    if len == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // Inside SSL_read/SSL_write this is ciphertext on the SSL object's socket.
    let in_ssl_call = note_tls_fd(pid_tgid, fd);
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | fd as u64;
    let Some(state) = SOCK_FDS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value; concurrent writers on one fd are rare and at
    // worst cost a capture.
    let state = unsafe { &mut *state };
    if state.flags & stream_flags::LOG != 0 {
        if dir == 0 {
            ship_log(fd, state, len, buf);
        }
        return;
    }
    if in_ssl_call {
        state.flags |= stream_flags::TLS;
    }
    if state.flags & stream_flags::TLS != 0 {
        return;
    }
    let Some(flags) = message_start(state, dir) else {
        return;
    };
    // A handshake outside SSL_read/SSL_write (SSL_do_handshake) shows the
    // stream is TLS before any plaintext call does.
    if flags & data_flags::CONTINUATION == 0 && looks_like_tls(buf) {
        state.flags |= stream_flags::TLS;
        return;
    }
    ship_data(fd, 0, flags, len, buf);
}

/// Inside SSL_read/SSL_write, the syscall's fd is the SSL object's socket.
#[inline(always)]
fn note_tls_fd(pid_tgid: u64, fd: u32) -> bool {
    match TLS_CALLS.get_ptr_mut(pid_tgid) {
        Some(call) => {
            // SAFETY: a live map value owned by this thread.
            unsafe { (*call).fd = fd };
            true
        }
        None => false,
    }
}

fn watched() -> bool {
    is_watched((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// sys_enter of write and sendto: (fd, buf, len).
#[tracepoint]
pub fn data_write(ctx: TracePointContext) -> u32 {
    if watched() {
        let (fd, buf, len): (u64, u64, u64) =
            (field(&ctx, ARGS), field(&ctx, ARGS + 8), field(&ctx, ARGS + 16));
        on_data(fd as u32, 0, len, buf);
    }
    0
}

/// The first iovec of an array at `iov`: (base, len).
#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: a probe read of user memory; a fault makes it fail.
    unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }
        .ok()
        .map(|[base, len]| (base, len))
}

/// Offset of msg_iov in struct user_msghdr (x86_64).
pub const MSG_IOV: u64 = 16;

/// sys_enter of writev (fd, iov) and sendmsg (fd, msghdr): the first iovec.
#[tracepoint]
pub fn data_writev(ctx: TracePointContext) -> u32 {
    if !watched() {
        return 0;
    }
    let (nr, fd, ptr): (i32, u64, u64) = (field(&ctx, SYSCALL_NR), field(&ctx, ARGS), field(&ctx, ARGS + 8));
    let iov = if nr as u32 == monitor_common::syscalls::SENDMSG {
        // SAFETY: a probe read of user memory; a fault makes it fail.
        match unsafe { bpf_probe_read_user((ptr + MSG_IOV) as *const u64) } {
            Ok(iov) => iov,
            Err(_) => return 0,
        }
    } else {
        ptr
    };
    if let Some((base, len)) = first_iovec(iov) {
        on_data(fd as u32, 0, len, base);
    }
    0
}

/// sys_exit of read, recvfrom (fd, buf) and readv (fd, iov): the buffer is
/// filled now; the arguments come from the saved registers (regs.rs).
#[tracepoint]
pub fn data_read_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let ret: i64 = field(&ctx, RET);
    if ret <= 0 {
        return 0;
    }
    let [fd, buf, _, _] = syscall_args();
    let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff);
    if SOCK_FDS.get_ptr(key).is_none() && TLS_CALLS.get_ptr(pid_tgid).is_none() {
        return 0;
    }
    let nr: i32 = field(&ctx, SYSCALL_NR);
    if nr as u32 == monitor_common::syscalls::READV {
        if let Some((base, len)) = first_iovec(buf) {
            on_data(fd as u32, data_flags::READ, (ret as u64).min(len), base);
        }
    } else {
        on_data(fd as u32, data_flags::READ, ret as u64, buf);
    }
    0
}

/// recvmsg's data (called from its sys_exit with the kept msghdr).
#[inline(always)]
pub fn received_data(fd: u64, msghdr: u64, ret: i64) {
    // SAFETY: a probe read of user memory; a fault makes it fail.
    let Ok(iov) = (unsafe { bpf_probe_read_user((msghdr + MSG_IOV) as *const u64) }) else {
        return;
    };
    if let Some((base, len)) = first_iovec(iov) {
        on_data(fd as u32, data_flags::READ, (ret as u64).min(len), base);
    }
}

/// The address length of a unix socket path (family and at least one byte).
const MIN_UNIX_ADDR: u64 = 3;
const AF_UNIX: u16 = 1;

/// sys_exit of a connect(fd, addr, addrlen) of a watched thread that
/// succeeded: a unix socket connected to one of the syslog paths is marked a
/// log stream at once (`stream_flags::SYSLOG`), ahead of user space's
/// once-a-second look, which would miss the message right after a connect.
#[inline(always)]
pub fn syslog_connected([fd, user_addr, addr_len, _]: [u64; 4]) {
    if !(MIN_UNIX_ADDR..=SOCKADDR_UN_LEN as u64).contains(&addr_len) {
        return;
    }
    // An inet address (nearly every connect) is not read, unless a syslog
    // path's address could be as long.
    if (addr_len == 16 || addr_len == 28) && config().flags & config_flags::SYSLOG_INET_LENGTHS == 0 {
        return;
    }
    // SAFETY: user memory the kernel just read; a fault makes the read fail.
    if unsafe { bpf_probe_read_user(user_addr as *const u16) } != Ok(AF_UNIX) {
        return;
    }
    // The path up to its NUL, into a zeroed key: whether the caller passed
    // the path's length, with or without the NUL, or the whole struct, and
    // whatever it left past the NUL. (Reading `addr_len` bytes would need
    // the length bounded on the register the 5.15 verifier checks, and
    // clearing what follows the NUL a loop it refuses.) An address without a
    // NUL, followed by other bytes, does not match: the once-a-second look
    // finds that stream.
    let mut key = [0u8; SOCKADDR_UN_LEN];
    key[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
    // SAFETY: as above; the copy is bounded by the key.
    if unsafe { bpf_probe_read_user_str_bytes((user_addr + 2) as *const u8, &mut key[2..]) }.is_err() {
        return;
    }
    // By reference: the key is 110 bytes.
    #[allow(clippy::needless_borrows_for_generic_args)]
    // SAFETY: copied out at once.
    let Some(index) = (unsafe { SYSLOG_PATHS.get(&key) }).copied() else {
        return;
    };
    let tgid = bpf_get_current_pid_tgid() >> 32;
    let state = StreamState {
        flags: stream_flags::LOG | stream_flags::SYSLOG,
        last_dir: data_flags::READ,
        writes: index,
        fd: fd as u32,
    };
    track(&SOCK_FDS, (tgid << 32) | (fd & 0xffff_ffff), state);
}

/// A new TCP socket fd of a watched process: its data is now looked at.
#[inline(always)]
pub fn track_socket_fd(tgid: u32, fd: u32) {
    let state = StreamState {
        flags: 0,
        last_dir: data_flags::READ,
        writes: 0,
        fd,
    };
    track(&SOCK_FDS, ((tgid as u64) << 32) | fd as u64, state);
}

/// A closed fd, or one dup'ed over: forget its stream.
#[inline(always)]
pub fn forget_fd(tgid: u32, fd: u32) {
    forget(&SOCK_FDS, ((tgid as u64) << 32) | fd as u64);
}

/// dup of a tracked socket: the new fd is the same stream's. True when it
/// is. `replaces`: the call closed whatever `fd` was (dup2, dup3).
#[inline(always)]
pub fn dup_fd(tgid: u32, source: u32, fd: u32, replaces: bool) -> bool {
    let base = (tgid as u64) << 32;
    // SAFETY: copied out at once.
    if let Some(state) = unsafe { SOCK_FDS.get(base | source as u64) }.copied() {
        track(&SOCK_FDS, base | fd as u64, state);
        true
    } else {
        if replaces {
            forget_fd(tgid, fd);
        }
        false
    }
}
