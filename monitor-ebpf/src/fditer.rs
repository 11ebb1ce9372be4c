//! The snapshot iterator (`iter/task_file`): one record per open fd of one
//! process: a file's link target rendered by the kernel (`bpf_d_path` gives
//! exactly what /proc/PID/fd shows); for a socket, family, state and
//! addresses instead (its target is always `socket:[inode]`). `leakmon snapshot` reads a whole process this way in one
//! `read` loop instead of a `readlink` and a `stat` per fd.
//!
//! A separate object from the probes: it needs none of their maps. The
//! daemon loads it once and hands the CLI an iterator scoped to one pid
//! (monitor/src/fditer.rs). A kernel before 6.1 cannot scope it: there it
//! walks every process, and keeps the fds of the process the daemon
//! registered for the reader (the reader's tgid is the current task's,
//! since the program runs inside its `read`).
#![no_std]
#![no_main]

mod btf;
mod runtime;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::path,
    helpers::{bpf_d_path, bpf_get_current_pid_tgid, bpf_seq_write, bpf_sock_from_file},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use btf::{AF_INET, AF_INET6, follow, load, read_inet_tuple};
use monitor_common::{FD_TARGET_MAX, FdIterRecord, SockOffsets};

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

/// One output record and its target, built in place and written with one
/// `bpf_seq_write` (too big for the 512-byte stack).
#[repr(C)]
struct Scratch {
    record: FdIterRecord,
    target: [u8; FD_TARGET_MAX],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Host-wide mode: reader tgid -> the tgid it may read
/// (monitor_common::FD_ITER_READERS). A plain hash, not an LRU, which may
/// evict a reader mid-read: the daemon removes readers that have exited.
#[map]
static FD_ITER_READERS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// From the kernel's BTF, set by user space before load.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;

/// 1 where the iterator walks every process (monitor_common::FD_ITER_HOST_WIDE).
#[unsafe(no_mangle)]
static FD_ITER_HOST_WIDE: u32 = 0;

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
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&FD_ITER_HOST_WIDE) } != 0 && !readers_process(ctx, &off) {
        return;
    }
    // Direct loads: `file` is a BTF pointer, so the verifier checks each
    // field access against the kernel's types and the JIT makes it a
    // fault-safe load, cheaper than a probe-read helper call. The offsets are
    // read-only globals, constants to the verifier.
    // SAFETY: f_inode and i_mode/i_ino are the members at these BTF offsets.
    let (mode, inode) = unsafe {
        match follow(file, off.file_f_inode) {
            Some(inode) => (
                load::<u16>(inode, off.inode_i_mode),
                load::<u64>(inode, off.inode_i_ino),
            ),
            None => (0, 0),
        }
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: our per-CPU map value, used by this program run alone.
    let scratch = unsafe { &mut *scratch };
    let record = &mut scratch.record;
    // Every field is stored, none left from the previous fd. One by one and
    // volatile: LLVM turns a struct literal or neighbouring zero stores into
    // a call of a BPF memset subprogram.
    record.fd = ctx.fd;
    record.mode = mode as u32;
    record.inode = inode;
    put(&mut record.target_len, 0);
    put(&mut record.sock_family, 0);
    put(&mut record.sock_protocol, 0);
    put(&mut record.sock_state, 0);
    put(&mut record.tuple.family, 0);
    // A socket's target is `socket:[inode]`: user space writes it, sparing
    // the kernel a d_path and a vsnprintf per socket.
    if record.mode & S_IFMT == S_IFSOCK && describe_socket(file, &off, record) {
        write_out(ctx, scratch);
        return;
    }
    // SAFETY: f_path lies inside the struct file the kernel handed us (its
    // offset is from BTF); the helper writes at most FD_TARGET_MAX bytes into
    // our per-CPU buffer.
    let written = unsafe {
        bpf_d_path(
            file.add(off.file_f_path as usize) as *mut path,
            scratch.target.as_mut_ptr() as *mut i8,
            FD_TARGET_MAX as u32,
        )
    };
    // The length counts the terminating NUL.
    let target_len = if written > 1 && written as usize <= FD_TARGET_MAX {
        (written - 1) as u32
    } else {
        0
    };
    scratch.record.target_len = target_len;
    write_out(ctx, scratch);
}

/// Host-wide mode: whether the fd belongs to the process the daemon
/// registered for this reader. An unregistered reader gets nothing.
#[inline(always)]
fn readers_process(ctx: &TaskFileContext, off: &SockOffsets) -> bool {
    let task = ctx.task as *const u8;
    if task.is_null() {
        return false;
    }
    let reader = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain map lookup; the value is read at once.
    let Some(&wanted) = (unsafe { FD_ITER_READERS.get(reader) }) else {
        return false;
    };
    // SAFETY: tgid is the member at this BTF offset of the iterated task.
    let tgid: i32 = unsafe { load(task, off.task_tgid) };
    tgid as u32 == wanted
}

/// Writes the record and its target to the iterator's output.
#[inline(always)]
fn write_out(ctx: &TaskFileContext, scratch: &Scratch) {
    // Read back volatile, then masked: the mask bounds the length for the
    // verifier. Given the value computed above, LLVM drops the mask as
    // redundant, and a verifier without linked-register offsets (6.1)
    // cannot follow the bound through `written - 1` and refuses the program.
    // SAFETY: a plain load from our map value.
    let target_len = unsafe { core::ptr::read_volatile(&scratch.record.target_len) };
    let len = core::mem::size_of::<FdIterRecord>() as u32 + (target_len & (FD_TARGET_MAX as u32 - 1));
    // SAFETY: the seq_file is the one of this iteration; the source is our
    // map value and `len` lies within it.
    unsafe {
        bpf_seq_write(
            (*ctx.meta).seq as *mut _,
            scratch as *const Scratch as *const c_void,
            len,
        );
    }
}

/// The file's struct socket ->sk: family, protocol, state, addresses, all
/// by direct loads (`bpf_sock_from_file` returns a BTF pointer). False when
/// the file is no socket with a sock (an O_PATH fd of a socket file, one
/// being torn down): its target is then rendered like any file's.
#[inline(always)]
fn describe_socket(file: *const u8, off: &SockOffsets, record: &mut FdIterRecord) -> bool {
    // SAFETY: the helper checks the file is a socket and returns NULL if not.
    let socket = unsafe { bpf_sock_from_file(file as *mut _) } as *const u8;
    if socket.is_null() {
        return false;
    }
    // SAFETY (this and the loads below): members at their BTF offsets in
    // struct socket and struct sock, checked by the verifier.
    let Some(sk) = (unsafe { follow(socket, off.socket_sk) }) else {
        return false;
    };
    let family: u16 = unsafe { load(sk, off.sock_family) };
    record.sock_family = family;
    record.sock_protocol = unsafe { load(sk, off.sock_protocol) };
    record.sock_state = unsafe { load(sk, off.sock_state) };
    if family != AF_INET && family != AF_INET6 {
        return true;
    }
    // SAFETY: sk is the socket's struct sock, a BTF pointer.
    unsafe { read_inet_tuple(sk, off, family, &mut record.tuple) };
    true
}

#[inline(always)]
fn put<T>(place: &mut T, value: T) {
    // SAFETY: a plain store through a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(place, value) }
}
