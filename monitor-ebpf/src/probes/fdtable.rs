//! Kernel structs read at offsets user space took from the kernel's BTF
//! (Rust probes cannot emit CO-RE relocations): from an fd of the current
//! task to its struct sock and inode. The task, its files and fd table are
//! BTF pointers (direct loads); the fd array's entries and what they point
//! at are plain addresses to the verifier (a pointer to pointers), so the
//! rest of the walk is probe reads.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel};
use monitor_common::SockOwner;

use crate::{
    btf::{AF_INET, AF_INET6, follow, load},
    maps::{SOCKS, sock_offsets, track},
};

const IPPROTO_TCP: u16 = 6;

/// A socket found behind an fd.
pub struct FoundSock {
    pub sk: u64,
    pub inode: u64,
}

#[inline(always)]
pub fn read<T>(at: u64) -> Option<T> {
    // SAFETY: a probe read: a bad address makes it fail, it never faults.
    unsafe { bpf_probe_read_kernel(at as *const T) }.ok()
}

/// current->files->fdt->fd[fd]->private_data->sk, and the file's inode number.
#[inline(always)]
pub fn socket_of(fd: u32) -> Option<FoundSock> {
    let off = sock_offsets();
    if !off.known() {
        return None;
    }
    // SAFETY: the helper returns the current task as a BTF pointer; `files`,
    // `fdt` and `fd` are the members at these BTF offsets (a kernel thread
    // has no files: a load through null reads 0).
    let fd_array: u64 = unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = follow(task, off.task_files)?;
        load(follow(files, off.files_fdt)?, off.fdt_fd)
    };
    let file: u64 = read(fd_array + (fd as u64) * 8)?;
    let socket: u64 = read(file + off.file_private_data as u64)?;
    let sk: u64 = read(socket + off.socket_sk as u64)?;
    let inode_ptr: u64 = read(file + off.file_f_inode as u64)?;
    let inode: u64 = read(inode_ptr + off.inode_i_ino as u64)?;
    (sk != 0).then_some(FoundSock { sk, inode })
}

/// A socket's address family and TCP state.
#[inline(always)]
pub fn family_and_state(sk: u64) -> (u16, u8) {
    let off = sock_offsets();
    (
        read(sk + off.sock_family as u64).unwrap_or(0),
        read(sk + off.sock_state as u64).unwrap_or(0),
    )
}

/// Remembers a TCP socket of a watched process so that its state changes,
/// which mostly happen in softirq context, find their owner. Returns the
/// socket's inode and TCP state (0, 0 when the walk is not possible). Only
/// TCP: the kernel forgets the entry when it destroys a TCP socket
/// (tcp_destroy_sock), so a freed sock's address can never be mistaken for a
/// new socket's.
#[inline(always)]
pub fn remember(tgid: u32, fd: u32) -> (u64, u8) {
    let Some(found) = socket_of(fd) else {
        return (0, 0);
    };
    let (family, state) = family_and_state(found.sk);
    let protocol: u16 = read(found.sk + sock_offsets().sock_protocol as u64).unwrap_or(0);
    if (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP {
        let owner = SockOwner {
            tgid,
            fd,
            inode: found.inode,
        };
        track(&SOCKS, found.sk, owner);
        super::http::track_socket_fd(tgid, fd);
    }
    (found.inode, state)
}
