//! A process's fds with kinds, targets and socket states: from the daemon's
//! BPF iterator when one answers (one read loop for the whole table), else
//! from /proc (a readlink per fd) and sock_diag. Both give the same result.

use std::{collections::HashMap, path::Path};

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
        match fditer::read_all(iter, most_fds) {
            Ok(fds) => return Ok((from_kernel(pid, fds, labels, problems), FdSource::BpfIterator)),
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

fn from_kernel(pid: u32, fds: Vec<KernelFd>, labels: &Labels, problems: &mut Vec<String>) -> Vec<FdSnapshot> {
    // TCP and UDP sockets are described by their records alone; unix paths
    // and peers come from sock_diag (or the process's namespace).
    let unix = fds.iter().any(|k| {
        k.socket
            .as_ref()
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
    let mut unrendered: HashMap<u32, String> = HashMap::new();
    for kfd in fds.iter().filter(|k| k.target.is_none() && k.socket.is_none()) {
        match std::fs::read_link(format!("/proc/{pid}/fd/{}", kfd.fd)) {
            Ok(target) => {
                unrendered.insert(kfd.fd, target.to_string_lossy().into_owned());
            }
            Err(e) => problems.push(format!("fd {}: {e}", kfd.fd)),
        }
    }
    fds.into_iter()
        .filter_map(|mut kfd| {
            if let Some(info) = kfd
                .socket
                .as_deref()
                .and_then(|s| socket_info(kfd.inode, s, &table))
            {
                return Some(socket_fd(kfd.fd, sockets::describe(info, &table, labels)));
            }
            let target = match kfd.target.take() {
                Some(target) => target,
                // The kernel leaves a socket's target to us.
                None if kfd.socket.is_some() => format!("socket:[{}]", kfd.inode),
                None => unrendered.remove(&kfd.fd)?,
            };
            let kind = kind_of(&kfd, &target);
            Some(plain_fd(kfd.fd, target, kind))
        })
        .collect()
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
