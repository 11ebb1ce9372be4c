//! What every leakmon eBPF object needs: a panic handler (never reached:
//! the verifier rejects any program that could get there) and a
//! GPL-compatible license string for the GPL-only helpers.

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
