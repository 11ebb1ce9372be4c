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

/// The floor on the socket BTF tracepoints (one program per tracepoint).
#[aya_ebpf::macros::btf_tracepoint(function = "inet_sock_set_state")]
pub fn noop_sock_set_state(_ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    0
}

#[aya_ebpf::macros::btf_tracepoint(function = "inet_sk_error_report")]
pub fn noop_sock_error_report(_ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    0
}

#[aya_ebpf::macros::btf_tracepoint(function = "tcp_destroy_sock")]
pub fn noop_sock_destroy(_ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    0
}
