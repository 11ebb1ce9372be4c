//! Building and submitting ring-buffer records.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    maps::ring_buf::RingBufEntry,
};
use monitor_common::{EventHeader, EventKind, FdEvent, NO_FD, counter};

use crate::{
    defer,
    maps::{EVENTS, config, count},
};

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// The current task as (tgid, tid).
#[inline(always)]
pub fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
pub fn header(kind: EventKind, syscall: u32) -> EventHeader {
    let (tgid, tid) = current();
    EventHeader {
        kind: kind as u32,
        syscall,
        tgid,
        tid,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Reserves a record for a probe in process context, counting it as lost
/// when the ring buffer is full. This CPU's held-back fd creation is shipped
/// first, so that the CPU's records stay in the order they happened.
#[inline(always)]
pub fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    defer::flush_local();
    reserve_unordered(kind)
}

/// Reserves a record without shipping the held-back creation first: for the
/// programs that may run in softirq (see `defer`) and for the slot itself.
#[inline(always)]
pub fn reserve_unordered<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(counter::LOST_BASE + kind as u32);
    }
    entry
}

/// Submits without waking the reader unless enough data waits: the reader
/// drains on a short timer, so one wakeup serves a whole batch.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let wakeup_bytes = config().wakeup_bytes as u64;
    let flags = if wakeup_bytes == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        count(counter::WAKEUPS);
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Submits and wakes the reader now: for the rare events user space must
/// act on quickly (an exec to match). Costly: an interrupt and a wakeup.
#[inline(always)]
pub fn submit_now<T>(entry: RingBufEntry<T>) {
    entry.submit(BPF_RB_FORCE_WAKEUP);
}

/// What an [`FdEvent`] says besides its header and main fd.
#[derive(Clone, Copy)]
pub struct FdExtra {
    pub fd2: u32,
    pub source_fd: u32,
    pub detail: u32,
    pub inode: u64,
}

impl FdExtra {
    pub const NONE: FdExtra = FdExtra {
        fd2: NO_FD,
        source_fd: NO_FD,
        detail: 0,
        inode: 0,
    };
}

#[inline(always)]
fn fd_record(kind: EventKind, syscall: u32, fd: u32, extra: FdExtra) -> FdEvent {
    FdEvent {
        header: header(kind, syscall),
        fd,
        fd2: extra.fd2,
        source_fd: extra.source_fd,
        detail: extra.detail,
        inode: extra.inode,
    }
}

/// Ships one [`FdEvent`].
#[inline(always)]
pub fn fd_event(kind: EventKind, syscall: u32, fd: u32, extra: FdExtra) {
    ship_fd(kind, fd_record(kind, syscall, fd, extra));
}

#[inline(always)]
fn ship_fd(kind: EventKind, record: FdEvent) {
    if let Some(mut entry) = reserve::<FdEvent>(kind) {
        entry.write(record);
        submit(entry);
    }
}

/// Records the creation of `fd` (and `extra.fd2`): held back (see `defer`)
/// when the probes keep no other state about it, else shipped at once.
#[inline(always)]
pub fn fd_created(syscall: u32, fd: u32, extra: FdExtra, holdable: bool) {
    let record = fd_record(EventKind::FdOpen, syscall, fd, extra);
    if !(holdable && defer::hold(record)) {
        ship_fd(EventKind::FdOpen, record);
    }
}

const EMFILE: i64 = 24;
const ENFILE: i64 = 23;

/// Records the outcome of an fd-creating syscall: the new fd (see
/// [`fd_created`] for `holdable`), or EMFILE/ENFILE. Other failures create
/// nothing and are not shipped.
#[inline(always)]
pub fn fd_result(syscall: u32, ret: i64, extra: FdExtra, holdable: bool) {
    if ret >= 0 {
        fd_created(syscall, ret as u32, extra, holdable);
    } else if ret == -EMFILE || ret == -ENFILE {
        let failure = FdExtra {
            detail: (-ret) as u32,
            ..FdExtra::NONE
        };
        fd_event(EventKind::FdFailed, syscall, NO_FD, failure);
    }
}
