//! The floor of the benchmarks: a program that does nothing, attached to the
//! same tracepoints as leakmon, shows what merely hooking them costs.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn noop(_ctx: TracePointContext) -> u32 {
    0
}

/// The floor of a raw-syscall design: one program on raw_syscalls sys_enter
/// and sys_exit that runs for every syscall of every process.
#[aya_ebpf::macros::raw_tracepoint(tracepoint = "sys_enter")]
pub fn noop_raw(_ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
    0
}
