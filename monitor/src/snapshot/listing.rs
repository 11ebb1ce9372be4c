//! A process's fds with kinds, targets and socket states: from the daemon's
//! BPF iterator when one answers (one read loop for the whole table), else
//! from /proc (a readlink per fd) and sock_diag. Both give the same result.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FdSnapshot, SocketSnapshot, sockets};
use crate::{
    control::client,
    fditer::{self, KernelFd, KernelSocket},
    fdkind::{self, FdKind, FileType},
    labels::Labels,
    proc::{self, ProcError},
    sockdiag::{self, InetSocket, Protocol, SocketInfo, SocketTable},
};

/// Where a snapshot's fd table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdSource {
    /// The daemon's `iter/task_file` program.
    BpfIterator,
    /// /proc/PID/fd and sock_diag.
    Proc,
}

/// Lists the fds of `pid`. Fails only when the process cannot be read at all.
pub fn list(
    pid: u32,
    control_socket: &Path,
    labels: &Labels,
    most_fds: usize,
    problems: &mut Vec<String>,
) -> Result<(Vec<FdSnapshot>, FdSource), ProcError> {
    // No daemon, or one without the iterator: /proc, silently (`fd_source` says it).
    if let Ok(iter) = client::fd_iter(control_socket, pid) {
        let mut listing = KernelListing::new(labels, most_fds);
        match fditer::read_overlapped(iter, |batch| listing.add(batch)) {
            Ok(()) => return Ok((listing.finish(pid, problems), FdSource::BpfIterator)),
            Err(e) => problems.push(format!("fd iterator: {e}; read /proc instead")),
        }
    }
    Ok((from_proc(pid, labels, problems)?, FdSource::Proc))
}

fn from_proc(pid: u32, labels: &Labels, problems: &mut Vec<String>) -> Result<Vec<FdSnapshot>, ProcError> {
    let mut dir = proc::FdDir::open(pid)?;
    let (links, unreadable) = dir.links();
    problems.extend(unreadable);
    let table = sockets::socket_table(pid, &links, problems);
    Ok(links
        .into_iter()
        .map(|link| {
            // A socket the table knows takes its kind from the table: no xattr read.
            let known_socket = link.target.starts_with("socket:[")
                && proc::link_inode(&link.target).is_some_and(|inode| table.by_inode.contains_key(&inode));
            let kind = if known_socket {
                FdKind::SocketOther
            } else {
                dir.resolve_kind(link.fd, &link.target)
            };
            describe(link.fd, link.target, &table, labels, kind)
        })
        .collect())
}

/// The snapshot's entries built from the iterator's records as they arrive.
/// TCP and UDP sockets and rendered files are complete at once; unix sockets
/// (paths and peers come from sock_diag) and files the kernel could not
/// render (read from /proc) wait for [`KernelListing::finish`].
struct KernelListing<'a> {
    labels: &'a Labels,
    fds: Vec<FdSnapshot>,
    /// Records still to describe, with the index of their placeholder in `fds`.
    waiting: Vec<(usize, KernelFd)>,
}

/// The largest reservation [`KernelListing`] makes (48 MiB of address space).
const MAX_RESERVED_FDS: usize = 1 << 20;

impl<'a> KernelListing<'a> {
    /// `most_fds` bounds the count (the process's RLIMIT_NOFILE): reserving
    /// that much up front costs no memory until it is written, and spares a
    /// growing vector its copies and faults.
    fn new(labels: &'a Labels, most_fds: usize) -> KernelListing<'a> {
        KernelListing {
            labels,
            fds: Vec::with_capacity(most_fds.min(MAX_RESERVED_FDS)),
            waiting: Vec::new(),
        }
    }

    fn add(&mut self, batch: Vec<KernelFd>) {
        let no_table = SocketTable::default();
        for mut kfd in batch {
            let entry = match (&kfd.socket, &kfd.target) {
                (Some(socket), _) if socket.tuple.is_some() => socket_info(kfd.inode, socket, &no_table)
                    .map(|info| socket_fd(kfd.fd, sockets::describe(info, &no_table, self.labels))),
                (None, Some(_)) => {
                    let target = kfd.target.take().expect("matched");
                    let kind = kind_of(&kfd, &target);
                    Some(plain_fd(kfd.fd, target, kind))
                }
                _ => None,
            };
            match entry {
                Some(entry) => self.fds.push(entry),
                None => {
                    self.waiting.push((self.fds.len(), kfd));
                    self.fds.push(plain_fd(0, String::new(), FdKind::Other));
                }
            }
        }
    }

    fn finish(mut self, pid: u32, problems: &mut Vec<String>) -> Vec<FdSnapshot> {
        if self.waiting.is_empty() {
            return self.fds;
        }
        let unix = self.waiting.iter().any(|(_, k)| {
            k.socket
                .is_some_and(|s| fdkind::socket_kind_of(s.family, s.protocol) == FdKind::SocketUnix)
        });
        let table = if unix {
            SocketTable::dump_unix().unwrap_or_else(|e| {
                problems.push(format!("sock_diag: {e}; using /proc/{pid}/net"));
                SocketTable::from_proc_net(pid)
            })
        } else {
            SocketTable::default()
        };
        let mut gone = Vec::new();
        for (at, kfd) in std::mem::take(&mut self.waiting) {
            match self.describe_waiting(pid, kfd, &table, problems) {
                Some(entry) => self.fds[at] = entry,
                None => gone.push(at),
            }
        }
        // Closed before /proc could be read: left out, as /proc would.
        if !gone.is_empty() {
            let mut at = 0;
            self.fds.retain(|_| {
                at += 1;
                gone.binary_search(&(at - 1)).is_err()
            });
        }
        self.fds
    }

    fn describe_waiting(
        &self,
        pid: u32,
        kfd: KernelFd,
        table: &SocketTable,
        problems: &mut Vec<String>,
    ) -> Option<FdSnapshot> {
        if let Some(socket) = &kfd.socket {
            if let Some(info) = socket_info(kfd.inode, socket, table) {
                return Some(socket_fd(kfd.fd, sockets::describe(info, table, self.labels)));
            }
            // The kernel leaves a socket's target to us.
            let target = format!("socket:[{}]", kfd.inode);
            let kind = kind_of(&kfd, &target);
            return Some(plain_fd(kfd.fd, target, kind));
        }
        match std::fs::read_link(format!("/proc/{pid}/fd/{}", kfd.fd)) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                let kind = kind_of(&kfd, &target);
                Some(plain_fd(kfd.fd, target, kind))
            }
            Err(e) => {
                problems.push(format!("fd {}: {e}", kfd.fd));
                None
            }
        }
    }
}

/// What the snapshot shows of a socket the iterator read: an inet socket
/// from its record, any other from the table (none if it lacks it).
fn socket_info(inode: u64, socket: &KernelSocket, table: &SocketTable) -> Option<SocketInfo> {
    match (
        fdkind::socket_kind_of(socket.family, socket.protocol),
        socket.tuple,
    ) {
        (FdKind::SocketTcp | FdKind::SocketUdp, Some(tuple)) => {
            let inet = InetSocket {
                family: socket.family as u8,
                protocol: socket.protocol as u8,
                state: socket.state,
                local: (tuple.saddr, tuple.sport),
                remote: (tuple.daddr, tuple.dport),
            };
            Some(sockdiag::inet_info(inet, inode))
        }
        _ => table.by_inode.get(&inode).cloned(),
    }
}

/// The kind from what the iterator read: the inode's type, the socket's family.
fn kind_of(kfd: &KernelFd, target: &str) -> FdKind {
    if let Some(socket) = &kfd.socket {
        return fdkind::socket_kind_of(socket.family, socket.protocol);
    }
    let file_type = match kfd.mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFREG => FileType::Regular,
        libc::S_IFIFO => FileType::Fifo,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR | libc::S_IFBLK => FileType::Device,
        _ => FileType::Other,
    };
    // Anonymous inodes have no type bits: their target names them.
    let file_type = (kfd.mode & libc::S_IFMT != 0).then_some(file_type);
    fdkind::from_target(target, file_type, None)
}

/// `kind` is what the fd is when it is not a socket the table knows (a
/// socket the table knows gets its kind from its protocol).
fn describe(fd: u32, target: String, table: &SocketTable, labels: &Labels, kind: FdKind) -> FdSnapshot {
    let socket_inode = target
        .starts_with("socket:[")
        .then(|| proc::link_inode(&target))
        .flatten();
    match socket_inode.and_then(|inode| table.by_inode.get(&inode)) {
        Some(info) => socket_fd(fd, sockets::describe(info.clone(), table, labels)),
        None => plain_fd(fd, target, kind),
    }
}

fn socket_fd(fd: u32, (socket, shown): (SocketSnapshot, String)) -> FdSnapshot {
    FdSnapshot {
        fd,
        kind: match socket.info.protocol {
            Protocol::Tcp => FdKind::SocketTcp,
            Protocol::Udp => FdKind::SocketUdp,
            Protocol::Unix => FdKind::SocketUnix,
        },
        target: shown,
        socket: Some(Box::new(socket)),
        birth: None,
    }
}

fn plain_fd(fd: u32, target: String, kind: FdKind) -> FdSnapshot {
    FdSnapshot {
        fd,
        kind,
        target,
        socket: None,
        birth: None,
    }
}
