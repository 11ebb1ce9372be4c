//! Maps and per-load globals. Names are shared with user space through
//! `monitor_common::maps`; sizes here are defaults user space may override.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    DeferredOpen, KernelConfig, SOCKADDR_UN_LEN, SockOffsets, SockOwner, StreamState, TaskOffsets, TlsCall,
    Tuple, counter, watch_flags,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// See `monitor_common::maps::WATCHED_PIDS`: a byte for each of the
/// PID_MAX_LIMIT (4 << 20) pids, in elements of 8.
#[map]
pub static WATCHED_PIDS: Array<[u8; 8]> = Array::with_max_entries((4 << 20) / 8, BPF_F_MMAPABLE);
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map]
pub static WATCH_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(64, 0);

#[map]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

#[map]
pub static SOCKS: HashMap<u64, SockOwner> = HashMap::with_max_entries(65536, 0);

/// (tgid << 32 | fd) of TCP sockets and log streams of watched processes -> capture state.
#[map]
pub static SOCK_FDS: HashMap<u64, StreamState> = HashMap::with_max_entries(65536, 0);

/// `sockaddr_un` bytes -> index of the syslog path (see `monitor_common::maps::SYSLOG_PATHS`).
#[map]
pub static SYSLOG_PATHS: HashMap<[u8; SOCKADDR_UN_LEN], u32> = HashMap::with_max_entries(16, 0);

/// This CPU's log-stream budget: [start of its one-second window (boot
/// ns), ring-buffer bytes its records took in it].
#[map]
pub static LOG_WINDOW: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// SSL* -> capture state. LRU: an SSL object is freed without the probes seeing it.
#[map]
pub static SSL_STATE: LruHashMap<u64, StreamState> = LruHashMap::with_max_entries(16384, 0);

/// pid_tgid -> the SSL call in flight on that thread (removed at return or thread exit).
#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(16384, 0);

/// One held-back fd creation per CPU (defer.rs).
#[map]
pub static DEFERRED: PerCpuArray<DeferredOpen> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static TUPLES: HashMap<Tuple, SockOwner> = HashMap::with_max_entries(16384, 0);

/// From the kernel's BTF, set by user space before load (all zero: unknown).
#[unsafe(no_mangle)]
pub static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;

#[inline(always)]
pub fn sock_offsets() -> SockOffsets {
    // SAFETY: as for task_offsets.
    unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
}

/// Set by user space from tracefs format files before load.
#[unsafe(no_mangle)]
pub static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    newtask_pid: 8,
    newtask_comm: 12,
    newtask_clone_flags: 32,
    exit_pid: 24,
    exit_group_dead: 0,
    rename_pid: 8,
    rename_newcomm: 28,
    exec_old_pid: 16,
};

#[inline(always)]
pub fn task_offsets() -> TaskOffsets {
    // SAFETY: reading a global the loader may have rewritten; volatile so the
    // compiler does not fold the default values above into the code.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS) }
}

#[inline(always)]
pub fn config() -> KernelConfig {
    match CONFIG.get(0) {
        Some(config) => *config,
        None => KernelConfig::default(),
    }
}

/// Whether `tgid` is watched: its byte in WATCHED_PIDS is not 0.
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    watch_state(tgid) != 0
}

/// How `tgid` is watched: 0 if it is not, else its byte (the watch flags
/// and [`watch_flags::BYTE_WATCHED`]). A plain integer, not an Option of the
/// entry: the verifier rejected the code LLVM made of that.
#[inline(always)]
pub fn watch_state(tgid: u32) -> u32 {
    match WATCHED_PIDS.get(tgid / 8) {
        Some(bytes) => bytes[(tgid % 8) as usize] as u32,
        // Beyond PID_MAX_LIMIT: no process has that pid.
        None => 0,
    }
}

/// Adds `tgid` to the watched set with `flags` ([`watch_flags`]); false for
/// a pid beyond PID_MAX_LIMIT, which no process has.
#[inline(always)]
pub fn watch(tgid: u32, flags: u32) -> bool {
    match WATCHED_PIDS.get_ptr_mut(tgid / 8) {
        Some(bytes) => {
            store_byte(bytes, tgid, watch_flags::byte(flags));
            true
        }
        None => false,
    }
}

/// Takes `tgid` out of the watched set.
#[inline(always)]
pub fn unwatch(tgid: u32) {
    if let Some(bytes) = WATCHED_PIDS.get_ptr_mut(tgid / 8) {
        store_byte(bytes, tgid, 0);
    }
}

#[inline(always)]
fn store_byte(bytes: *mut [u8; 8], tgid: u32, value: u8) {
    // SAFETY: a live map value; one byte store, which cannot tear the
    // other pids' bytes that user space or another CPU may be storing.
    unsafe { core::ptr::write_volatile(bytes.cast::<u8>().add((tgid % 8) as usize), value) }
}

#[inline(always)]
pub fn count(slot: u32) {
    count_n(slot, 1);
}

#[inline(always)]
pub fn count_n(slot: u32, n: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a live, aligned per-CPU u64. Tracepoint programs run with
        // preemption off and the kernel does not nest them on one CPU
        // (bpf_prog_active). A uprobe program (preemptible) or the flush (an
        // IPI, defer.rs) may rarely cost an increment: these are diagnostics,
        // and a loss they miss is still repaired by the periodic reconciliation.
        unsafe { *value += n }
    }
}

/// Adds `key` to a map that tracks sockets; a map too full for a new key
/// is counted (`counter::TRACKING_FULL`), not silent. True when it is in.
#[inline(always)]
pub fn track<K, V>(map: &HashMap<K, V>, key: K, value: V) -> bool {
    let added = map.insert(key, value, 0).is_ok();
    if !added {
        count(counter::TRACKING_FULL);
    }
    added
}

/// Deletes `key` if it is there. Looked up first: a delete takes its bucket
/// lock even when the key is absent, as it is for most calls on hot paths.
#[inline(always)]
pub fn forget<K, V>(map: &HashMap<K, V>, key: K) {
    if map.get_ptr(&key).is_some() {
        let _ = map.remove(&key);
    }
}
