//! The snapshot iterator (`iter/task_file`): one record per open fd of one
//! process, with the fd's link target rendered by the kernel (`bpf_d_path`
//! gives exactly what /proc/PID/fd shows) and, for sockets, family, state and
//! addresses. `leakmon snapshot` reads a whole process this way in one
//! `read` loop instead of a `readlink` and a `stat` per fd.
//!
//! A separate object from the probes: it needs none of their maps. The
//! daemon loads it once and hands the CLI an iterator scoped to one pid
//! (monitor/src/fditer.rs).
#![no_std]
#![no_main]

mod runtime;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::path,
    helpers::{bpf_d_path, bpf_seq_write, bpf_sock_from_file},
    macros::map,
    maps::PerCpuArray,
};
use monitor_common::{FD_TARGET_MAX, FdIterRecord, SockOffsets, Tuple};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;

/// `struct bpf_iter__task_file`: the context the kernel passes per fd.
#[repr(C)]
struct TaskFileContext {
    meta: *const IterMeta,
    task: *const c_void,
    fd: u32,
    file: *const u8,
}

/// `struct bpf_iter_meta`.
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// Per-CPU scratch for the target string (too big for the 512-byte stack).
#[map]
static TARGET: PerCpuArray<[u8; FD_TARGET_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// From the kernel's BTF, set by user space before load.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn fd_iter(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a valid bpf_iter__task_file; the verifier
    // checks every load below against its BTF.
    unsafe { write_fd(&*(ctx as *const TaskFileContext)) };
    0
}

/// # Safety
/// `ctx` is the kernel's iterator context.
#[inline(always)]
unsafe fn write_fd(ctx: &TaskFileContext) {
    let file = ctx.file;
    if file.is_null() {
        return;
    }
    // SAFETY: read-only offsets the loader wrote; volatile so the defaults
    // above are not folded into the code.
    let off = unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) };
    // Direct loads: `file` is a BTF pointer, so the verifier checks each
    // field access against the kernel's types and the JIT makes it a
    // fault-safe load, cheaper than a probe-read helper call. The offsets are
    // read-only globals, constants to the verifier.
    // SAFETY: f_inode and i_mode/i_ino are the members at these BTF offsets.
    let (mode, inode) = unsafe {
        let inode = load::<*const u8>(file, off.file_f_inode);
        if inode.is_null() {
            (0, 0)
        } else {
            (
                load::<u16>(inode, off.inode_i_mode),
                load::<u64>(inode, off.inode_i_ino),
            )
        }
    };
    let mut record = FdIterRecord {
        fd: ctx.fd,
        mode: mode as u32,
        inode,
        ..FdIterRecord::default()
    };
    if record.mode & S_IFMT == S_IFSOCK {
        describe_socket(file, &off, &mut record);
    }
    let Some(target) = TARGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: f_path lies inside the struct file the kernel handed us (its
    // offset is from BTF); the helper writes at most FD_TARGET_MAX bytes into
    // our per-CPU buffer.
    let written = unsafe {
        bpf_d_path(
            file.add(off.file_f_path as usize) as *mut path,
            target as *mut i8,
            FD_TARGET_MAX as u32,
        )
    };
    // The length counts the terminating NUL.
    if written > 1 && written as usize <= FD_TARGET_MAX {
        record.target_len = (written - 1) as u32;
    }
    // SAFETY: the seq_file is the one of this iteration; both sources live
    // across the calls and the lengths are within them.
    unsafe {
        let seq = (*ctx.meta).seq;
        bpf_seq_write(
            seq as *mut _,
            &record as *const FdIterRecord as *const c_void,
            core::mem::size_of::<FdIterRecord>() as u32,
        );
        let len = record.target_len & (FD_TARGET_MAX as u32 - 1);
        if len > 0 {
            bpf_seq_write(seq as *mut _, target as *const c_void, len);
        }
    }
}

/// The file's struct socket ->sk: family, protocol, state, addresses, all
/// by direct loads (`bpf_sock_from_file` returns a BTF pointer).
#[inline(always)]
fn describe_socket(file: *const u8, off: &SockOffsets, record: &mut FdIterRecord) {
    // SAFETY: the helper checks the file is a socket and returns NULL if not.
    let socket = unsafe { bpf_sock_from_file(file as *mut _) } as *const u8;
    if socket.is_null() {
        return;
    }
    // SAFETY (this and the loads below): members at their BTF offsets in
    // struct socket and struct sock, checked by the verifier.
    let sk = unsafe { load::<*const u8>(socket, off.socket_sk) };
    if sk.is_null() {
        return;
    }
    let family: u16 = unsafe { load(sk, off.sock_family) };
    record.sock_family = family;
    record.sock_protocol = unsafe { load(sk, off.sock_protocol) };
    record.sock_state = unsafe { load(sk, off.sock_state) };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let dport: u16 = unsafe { load(sk, off.skc_dport) };
    let mut tuple = Tuple {
        family,
        sport: unsafe { load(sk, off.skc_num) },
        dport: u16::from_be(dport),
        ..Tuple::default()
    };
    if family == AF_INET {
        let saddr: u32 = unsafe { load(sk, off.skc_rcv_saddr) };
        let daddr: u32 = unsafe { load(sk, off.skc_daddr) };
        tuple.saddr[..4].copy_from_slice(&saddr.to_ne_bytes());
        tuple.daddr[..4].copy_from_slice(&daddr.to_ne_bytes());
    } else {
        tuple.saddr = unsafe { load_16(sk, off.skc_v6_rcv_saddr) };
        tuple.daddr = unsafe { load_16(sk, off.skc_v6_daddr) };
    }
    record.tuple = tuple;
}

/// A direct load of the member at `offset` of a BTF-typed kernel object.
///
/// # Safety
/// `base` is a BTF pointer the verifier tracks and `offset` a member of type `T`.
#[inline(always)]
unsafe fn load<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: per the function's contract; the JIT makes it fault-safe.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// 16 bytes (an IPv6 address) as two 8-byte loads.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn load_16(base: *const u8, offset: u32) -> [u8; 16] {
    // SAFETY: per the function's contract.
    let (low, high): (u64, u64) = unsafe { (load(base, offset), load(base, offset + 8)) };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&low.to_ne_bytes());
    bytes[8..].copy_from_slice(&high.to_ne_bytes());
    bytes
}
