//! A syscall's arguments at its sys_exit, read from the user registers the
//! kernel saved at entry (the task's `struct pt_regs`, which the syscall
//! reads but does not change): no sys_enter program and no map entry to
//! carry them there. The sys_enter tracepoint of such a syscall stays
//! unhooked, so no process pays for it.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_task_pt_regs};

use crate::btf::load;

/// Offsets in x86_64 `struct pt_regs` (the uapi ptrace layout) of the
/// registers that carry syscall arguments 1 to 4: di, si, dx, r10.
const ARG_REGS: [u32; 4] = [112, 104, 96, 56];

/// Offset of `orig_ax`, the syscall number, in x86_64 `struct pt_regs`.
const ORIG_AX: u32 = 120;

#[inline(always)]
fn current_regs() -> *const u8 {
    // SAFETY: bpf_task_pt_regs takes the task pointer bpf_get_current_task_btf
    // returns and gives back a BTF pointer to its saved registers, never null.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
}

/// The number of the syscall the current task is in (meaningful only in
/// process context, inside a syscall).
#[inline(always)]
pub fn syscall_nr() -> u32 {
    // SAFETY: an unsigned long member of struct pt_regs at its offset.
    unsafe { load::<u64>(current_regs(), ORIG_AX) as u32 }
}

/// The current syscall's first four arguments, as it received them.
#[inline(always)]
pub fn syscall_args() -> [u64; 4] {
    let regs = current_regs();
    let mut args = [0u64; 4];
    let mut i = 0;
    while i < args.len() {
        // SAFETY: an unsigned long member of struct pt_regs at its offset.
        args[i] = unsafe { load::<u64>(regs, ARG_REGS[i]) };
        i += 1;
    }
    args
}
