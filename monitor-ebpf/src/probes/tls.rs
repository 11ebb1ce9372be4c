//! TLS plaintext from OpenSSL: uprobes on SSL_write/SSL_write_ex and
//! SSL_read/SSL_read_ex (CPython >= 3.10 calls only the _ex pair), and one
//! uretprobe for all four. The call is kept from entry to return; the
//! syscall it makes on the same thread names its socket (http.rs).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use monitor_common::{NO_FD, StreamState, TlsCall, data_flags};

use super::http::{message_start, ship_data};
use crate::maps::{SSL_STATE, TLS_CALLS, is_watched};

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let count_ptr = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    // SAFETY: copied out at once.
    let fd = unsafe { SSL_STATE.get(ssl) }.map_or(NO_FD, |s| s.fd);
    let call = TlsCall {
        ssl,
        buf,
        count_ptr,
        dir,
        fd,
    };
    let _ = TLS_CALLS.insert(pid_tgid, call, 0);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, 0, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, 0, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, data_flags::READ, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, data_flags::READ, true)
}

/// SSL_do_handshake(ssl) (SSL_connect and SSL_accept go through it): a new
/// connection on this SSL object, whose address may be a freed one's. The
/// stream starts afresh: a request left unanswered on the old connection
/// (a timeout) made the next connection's first request pass for its body.
#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    if !is_watched((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let fresh = StreamState {
            fd: NO_FD,
            ..StreamState::default()
        };
        let _ = SSL_STATE.insert(ssl, fresh, 0);
    }
    0
}

/// Return of any of the four: the bytes moved are plaintext in the call's buffer.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(pid_tgid);
    let ret: i64 = ctx.ret::<i64>();
    let moved: u64 = if call.count_ptr != 0 {
        // SSL_*_ex: 1 on success, the count written through the pointer.
        if ret != 1 {
            return 0;
        }
        // SAFETY: a probe read of user memory; a fault makes it fail.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if moved == 0 {
        return 0;
    }
    if SSL_STATE.get_ptr(call.ssl).is_none() {
        // An SSL object whose handshake the probes did not see (older than
        // the daemon): taken to have last read, as a socket the daemon seeds
        // is, so that the answer to a request sent before is not shipped
        // (it would be a response with no request); its next write is a
        // request.
        let unseen = StreamState {
            fd: NO_FD,
            last_dir: data_flags::READ,
            ..StreamState::default()
        };
        let _ = SSL_STATE.insert(call.ssl, unseen, 0);
    }
    let Some(state) = SSL_STATE.get_ptr_mut(call.ssl) else {
        return 0;
    };
    // SAFETY: a live map value of this SSL object.
    let state = unsafe { &mut *state };
    if call.fd != NO_FD {
        state.fd = call.fd;
    }
    if let Some(flags) = message_start(state, call.dir) {
        ship_data(state.fd, call.ssl, flags | data_flags::TLS, moved, call.buf);
    }
    0
}
