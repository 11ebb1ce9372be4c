//! Holding fd creations back so that short-lived fds cost no records.
//!
//! Most fds a process creates are closed again microseconds later (a file
//! read whole, a dup for one call, a pipe to a child). Each CPU keeps its
//! last fd creation in a slot instead of shipping it; a close of that fd on
//! the same CPU cancels both. Every other record from the CPU ships the slot
//! first, so one CPU's records keep their order. Another CPU's records may
//! overtake a held-back creation: it travels as `FdOpenLate` with its own
//! time, and the reader drops it if the fd was released or reused after that
//! time. Before each drain user space runs `flush_deferred` on every CPU whose
//! slot is full, so nothing stays held back for longer than a drain interval.
//! A pair cancelled while user space lists the process's fds in /proc would
//! leave the listed fd in the ledger with no record to take it out: while it
//! does (`watch_flags::SCANNING`), closes ship instead of cancelling. A close
//! that cancelled just before that may not have taken its fd out of the table
//! yet: the slot remembers it (`CancelledClose`) for user space to leave out.
//!
//! Concurrency: only programs on the slot's CPU touch it. Syscall and task
//! tracepoint programs run with preemption off (perf_syscall_enter/exit and
//! the tracepoint dispatch disable it) and do not nest (bpf_prog_active); the
//! flush runs in an IPI and may interrupt them anywhere, so they mark the
//! slot `busy` while they read or change it and the flush leaves a busy slot
//! alone (user space runs it again). BTF tracepoints can fire in softirq,
//! which may also interrupt a probe, and uprobe programs run preemptible
//! (migrate_disable only): neither touches the slot, except the socket
//! state program in its owner's own connect() (process context: see
//! `take_socket`), which a softirq run of it cannot nest in.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::raw_tracepoint, programs::RawTracePointContext};
use monitor_common::{
    CancelledClose, DeferredOpen, EventKind, FLUSH_BUSY, FdEvent, NO_FD, config_flags, counter,
    syscalls as nr,
};

use crate::{
    emit::{reserve_unordered, submit},
    maps::{DEFERRED, config, count},
};

#[inline(always)]
fn slot() -> Option<*mut DeferredOpen> {
    DEFERRED.get_ptr_mut(0)
}

/// Ships the held-back creation, if any. The caller owns the slot (holds
/// `busy`, or is the flush, which nothing on this CPU interrupts).
#[inline(always)]
unsafe fn ship_held(slot: *mut DeferredOpen) {
    // SAFETY (whole body): `slot` is this CPU's live map value.
    unsafe {
        if read_volatile(addr_of!((*slot).full)) == 0 {
            return;
        }
        if let Some(mut entry) = reserve_unordered::<FdEvent>(EventKind::FdOpenLate) {
            entry.write(read_volatile(addr_of!((*slot).event)));
            submit(entry);
        }
        write_volatile(addr_of_mut!((*slot).full), 0);
    }
}

/// Ships this CPU's held-back creation before another record of this CPU.
#[inline(always)]
pub fn flush_local() {
    let Some(slot) = slot() else {
        return;
    };
    // SAFETY: this CPU's live map value; see the module comment for the protocol.
    unsafe {
        if read_volatile(addr_of!((*slot).full)) == 0 {
            return;
        }
        write_volatile(addr_of_mut!((*slot).busy), 1);
        // Checked again inside: the flush may have shipped it since.
        ship_held(slot);
        write_volatile(addr_of_mut!((*slot).busy), 0);
    }
}

/// Holds `event` (an `FdOpen`) back in this CPU's slot, shipping what was
/// there. False when holding back is off: the caller ships it.
#[inline(always)]
pub fn hold(mut event: FdEvent) -> bool {
    if config().flags & config_flags::DEFER_OPENS == 0 {
        return false;
    }
    let Some(slot) = slot() else {
        return false;
    };
    event.header.kind = EventKind::FdOpenLate as u32;
    // SAFETY: as in flush_local.
    unsafe {
        write_volatile(addr_of_mut!((*slot).busy), 1);
        ship_held(slot);
        // This thread is past any close it made: its fd has left the table.
        if read_volatile(addr_of!((*slot).cancelled.tid)) == event.header.tid {
            write_volatile(addr_of_mut!((*slot).cancelled.tgid), 0);
        }
        write_volatile(addr_of_mut!((*slot).event), event);
        write_volatile(addr_of_mut!((*slot).full), 1);
        write_volatile(addr_of_mut!((*slot).busy), 0);
    }
    true
}

/// close(fd) by thread `tid` of `tgid`: if this CPU holds the fd's creation
/// back, the two cancel out (for a pipe's pair, the other fd stays held) and
/// the slot remembers the close (`CancelledClose`). True when they did.
#[inline(always)]
pub fn cancel(tgid: u32, tid: u32, fd: u32) -> bool {
    let Some(slot) = slot() else {
        return false;
    };
    if fd == NO_FD {
        return false;
    }
    let mut cancelled = false;
    // SAFETY: as in flush_local.
    unsafe {
        if read_volatile(addr_of!((*slot).full)) == 0 {
            return false;
        }
        write_volatile(addr_of_mut!((*slot).busy), 1);
        let event = addr_of_mut!((*slot).event);
        if read_volatile(addr_of!((*slot).full)) != 0 && read_volatile(addr_of!((*event).header.tgid)) == tgid
        {
            let (first, second) = (
                read_volatile(addr_of!((*event).fd)),
                read_volatile(addr_of!((*event).fd2)),
            );
            if first == fd && second == NO_FD {
                write_volatile(addr_of_mut!((*slot).full), 0);
                cancelled = true;
            } else if first == fd {
                write_volatile(addr_of_mut!((*event).fd), second);
                write_volatile(addr_of_mut!((*event).fd2), NO_FD);
                cancelled = true;
            } else if second == fd {
                write_volatile(addr_of_mut!((*event).fd2), NO_FD);
                cancelled = true;
            }
            if cancelled {
                let close = CancelledClose {
                    tgid,
                    tid,
                    fd,
                    _pad: 0,
                    // SAFETY: helper without preconditions.
                    ts_ns: bpf_ktime_get_boot_ns(),
                };
                write_volatile(addr_of_mut!((*slot).cancelled), close);
            }
        }
        write_volatile(addr_of_mut!((*slot).busy), 0);
    }
    if cancelled {
        count(counter::SHORT_LIVED);
    }
    cancelled
}

/// connect() of `fd` by thread `tid` of `tgid` moves it to SYN_SENT: if
/// this CPU holds back that thread's socket() of it, the creation is taken
/// out of the slot to ride in the SYN_SENT record (`SockEvent.born_ns`).
/// Called in that connect(), a process-context BTF tracepoint program, so
/// it owns the slot like the syscall probes do (marks it busy).
#[inline(always)]
pub fn take_socket(tgid: u32, tid: u32, fd: u32) -> Born {
    let Some(slot) = slot() else {
        return Born::NONE;
    };
    // SAFETY: as in flush_local.
    unsafe {
        if read_volatile(addr_of!((*slot).full)) == 0 {
            return Born::NONE;
        }
        write_volatile(addr_of_mut!((*slot).busy), 1);
        let event = read_volatile(addr_of!((*slot).event));
        let taken = read_volatile(addr_of!((*slot).full)) != 0
            && event.header.tgid == tgid
            && event.header.tid == tid
            && event.header.syscall == nr::SOCKET
            && event.fd == fd
            && event.fd2 == NO_FD;
        if taken {
            write_volatile(addr_of_mut!((*slot).full), 0);
        }
        write_volatile(addr_of_mut!((*slot).busy), 0);
        if taken {
            Born {
                ts_ns: event.header.ts_ns,
                detail: event.detail,
            }
        } else {
            Born::NONE
        }
    }
}

/// What [`take_socket`] found: the creation's time and detail, or zeros.
/// Plain values, not an `Option<FdEvent>`: LLVM reads an absent option's
/// payload from the stack and keeps the value or not, and verifiers before
/// 6.x (Ubuntu 22.04's 5.15) refuse that read of stack never written.
#[derive(Clone, Copy)]
pub struct Born {
    pub ts_ns: u64,
    pub detail: u32,
}

impl Born {
    pub const NONE: Born = Born { ts_ns: 0, detail: 0 };
}

/// Run by user space (BPF_PROG_TEST_RUN on one CPU), never attached: ships
/// that CPU's held-back creation, or says the slot is busy.
#[raw_tracepoint]
pub fn flush_deferred(_ctx: RawTracePointContext) -> i32 {
    let Some(slot) = slot() else {
        return 0;
    };
    // SAFETY: this CPU's live map value; a probe it interrupted holds `busy`.
    unsafe {
        if read_volatile(addr_of!((*slot).busy)) != 0 {
            return FLUSH_BUSY as i32;
        }
        ship_held(slot);
    }
    0
}
