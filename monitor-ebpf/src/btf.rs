//! Direct loads through BTF pointers (a `tp_btf` argument, an iterator's
//! context). The verifier checks each against the kernel's types and the
//! JIT makes it a fault-safe load: cheaper than a probe-read helper call.
//! The offsets are read-only globals user space set from the kernel's BTF,
//! so the verifier sees them as constants.

/// The member at `offset` of a BTF-typed kernel object.
///
/// # Safety
/// `base` is a BTF pointer the verifier tracks and `offset` a member of type `T`.
#[inline(always)]
pub unsafe fn load<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: per the function's contract; the JIT makes it fault-safe.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// 16 bytes (an IPv6 address) as two 8-byte loads.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn load_16(base: *const u8, offset: u32) -> [u8; 16] {
    // SAFETY: per the function's contract.
    let (low, high): (u64, u64) = unsafe { (load(base, offset), load(base, offset + 8)) };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&low.to_ne_bytes());
    bytes[8..].copy_from_slice(&high.to_ne_bytes());
    bytes
}
