//! Direct loads through BTF pointers (a `tp_btf` argument, an iterator's
//! context). The verifier checks each against the kernel's types and the
//! JIT makes it a fault-safe load: cheaper than a probe-read helper call.
//! The offsets are read-only globals user space set from the kernel's BTF,
//! so the verifier sees them as constants.

use monitor_common::{SockOffsets, Tuple};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The member at `offset` of a BTF-typed kernel object.
///
/// # Safety
/// `base` is a BTF pointer the verifier tracks and `offset` a member of type `T`.
#[inline(always)]
pub unsafe fn load<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: per the function's contract; the JIT makes it fault-safe.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// The pointer member at `offset` of a BTF-typed kernel object, `None`
/// when it is null.
///
/// # Safety
/// As for [`load`], the member being a pointer.
#[inline(always)]
pub unsafe fn follow(base: *const u8, offset: u32) -> Option<*const u8> {
    // SAFETY: per the function's contract.
    let pointer: *const u8 = unsafe { load(base, offset) };
    (!pointer.is_null()).then_some(pointer)
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

/// Writes every field of `tuple` from an inet socket's (AF_INET or
/// AF_INET6 `family`, read by the caller) ports and addresses, as the
/// kernel's tracepoints would print them. Field by field: `tuple` may be
/// map memory, and a struct literal would become a memset call.
///
/// # Safety
/// `sk` is a BTF pointer to a struct sock.
#[inline(always)]
pub unsafe fn read_inet_tuple(sk: *const u8, off: &SockOffsets, family: u16, tuple: &mut Tuple) {
    // SAFETY (all loads): members of struct sock at their BTF offsets.
    let dport: u16 = unsafe { load(sk, off.skc_dport) };
    tuple.family = family;
    tuple.sport = unsafe { load(sk, off.skc_num) };
    tuple.dport = u16::from_be(dport);
    tuple._pad = 0;
    if family == AF_INET {
        let saddr: u32 = unsafe { load(sk, off.skc_rcv_saddr) };
        let daddr: u32 = unsafe { load(sk, off.skc_daddr) };
        // The address's bytes, then zeros (bpfel is little-endian), stored
        // as two 8-byte words.
        tuple.saddr = (saddr as u128).to_le_bytes();
        tuple.daddr = (daddr as u128).to_le_bytes();
    } else {
        tuple.saddr = unsafe { load_16(sk, off.skc_v6_rcv_saddr) };
        tuple.daddr = unsafe { load_16(sk, off.skc_v6_daddr) };
    }
}
