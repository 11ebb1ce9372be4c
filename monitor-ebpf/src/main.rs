//! leakmon kernel probes: fd, thread and process lifecycle of watched processes.
//!
//! Every program checks the in-kernel watched set first and returns at once
//! for other processes. Events go through one ring buffer; a record that does
//! not fit is counted, never silently lost (user space reconciles after it).
#![no_std]
#![no_main]

mod emit;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: `unreachable_unchecked` is the documented way to tell rustc a
    // path cannot happen; the verifier rejects any program that could reach it.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
