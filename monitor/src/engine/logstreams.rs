//! Finding the watched processes' log streams (stdout and stderr to a pipe
//! or socket, sockets to syslog) and marking them for the probes, which
//! then ship what is written to them (`logscan::streams`).

use std::collections::HashMap;

use tracing::debug;

use super::Engine;
use crate::{
    fdkind::FdKind,
    logscan::streams::{UnixPeer, is_candidate, name_of, settled_by_connect_marks, syslog_name},
    sockdiag::SocketTable,
};

impl Engine {
    /// Once a second: looks at the candidate fds that are new or were born
    /// again (a /proc readlink each, and one unix sock_diag dump when one
    /// is a socket the probes' marks at connect do not settle), then marks
    /// exactly the streams found.
    pub(super) fn follow_log_streams(&mut self) {
        let rule = &self.config.rules.secret_in_log;
        let on = rule.enabled && rule.streams;
        let syslog = !rule.syslog_paths.is_empty();
        let connect_paths = if on { rule.syslog_paths.as_slice() } else { &[] };
        self.probes.set_syslog_paths(connect_paths);
        if self.ledger.syslog_paths != connect_paths {
            self.ledger.syslog_paths = connect_paths.to_vec();
        }
        let marks_since = self.probes.syslog_marks_since();
        let mut peers: Option<Option<HashMap<u64, UnixPeer>>> = None;
        let mut wanted = HashMap::new();
        for (pid, process) in self.ledger.processes.iter_mut() {
            let fds = &process.fds;
            let streams = &mut process.log_streams;
            if !on {
                streams.retain(|_, _| false);
                continue;
            }
            streams.retain(|fd, born| {
                (fds.get(&fd)).is_some_and(|e| e.birth.ts_ns == born && is_candidate(fd, e.kind, syslog))
            });
            for (fd, entry) in fds.iter() {
                if !is_candidate(*fd, entry.kind, syslog) || streams.known.contains_key(fd) {
                    continue;
                }
                let birth = &entry.birth;
                if settled_by_connect_marks(*fd, birth.syscall, birth.ts_ns, marks_since) {
                    // The probes marked it if it connected to a syslog path
                    // (a connect after this look names it at its first message).
                    let path = (self.probes.syslog_mark(*pid, *fd)).and_then(|i| rule.syslog_paths.get(i));
                    streams.classify(*fd, birth.ts_ns, path.map(|p| syslog_name(p)), true);
                    continue;
                }
                // Gone already, or /proc unreadable: looked at again next time.
                let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else {
                    continue;
                };
                let link = link.to_string_lossy();
                let (name, datagram) = if let Some(inode) = socket_inode(&link) {
                    // Without the dump a socket cannot be told from
                    // journald's: looked at again next time.
                    let Some(peers) = peers.get_or_insert_with(|| {
                        self.counters.log_stream_dumps += 1;
                        unix_peers()
                    }) else {
                        continue;
                    };
                    let peer = peers.get(&inode);
                    let name = name_of(*fd, &link, peer, &rule.syslog_paths);
                    (name, peer.is_some_and(|p| p.datagram))
                } else if entry.kind == FdKind::Pipe {
                    (name_of(*fd, &link, None, &rule.syslog_paths), false)
                } else {
                    (None, false)
                };
                if let Some(name) = &name {
                    debug!(pid, fd, stream = %name, "log stream found");
                }
                streams.classify(*fd, birth.ts_ns, name, datagram);
            }
            for (fd, born) in streams.marked() {
                wanted.insert(((*pid as u64) << 32) | fd as u64, born);
            }
        }
        self.probes.mark_log_streams(wanted);
    }
}

/// `socket:[N]` -> N (a pipe's link has an inode too: not a socket).
fn socket_inode(link: &str) -> Option<u64> {
    link.starts_with("socket:[")
        .then(|| crate::proc::link_inode(link))
        .flatten()
}

/// Every unix socket with a peer -> that peer's name and whether it is a
/// datagram socket; None when the dump failed.
fn unix_peers() -> Option<HashMap<u64, UnixPeer>> {
    let table = match SocketTable::dump_unix() {
        Ok(table) => table,
        Err(e) => {
            debug!(error = %e, "unix sock_diag dump failed: sockets are looked at as log streams later");
            return None;
        }
    };
    let by_inode = &table.by_inode;
    (by_inode.iter())
        .filter_map(|(inode, socket)| {
            let peer = by_inode.get(&socket.peer_inode?)?;
            let datagram = socket.unix_type.as_deref() == Some("dgram");
            Some((
                *inode,
                UnixPeer {
                    name: peer.local.clone(),
                    datagram,
                },
            ))
        })
        .collect::<HashMap<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_budget_is_split_between_cpus_but_takes_a_whole_write() {
        let mut rules = crate::detect::config::Rules::default();
        let cpus = aya::util::nr_cpus().unwrap() as u64;
        rules.secret_in_log.scan_bytes_per_s = 1 << 30;
        assert_eq!(
            crate::engine::log_bytes_per_cpu_s(&rules) as u64,
            (1 << 30) / cpus
        );
        rules.secret_in_log.scan_bytes_per_s = 1024;
        assert_eq!(crate::engine::log_bytes_per_cpu_s(&rules), 8192);
        rules.secret_in_log.scan_bytes_per_s = u64::MAX;
        assert_eq!(crate::engine::log_bytes_per_cpu_s(&rules), u32::MAX);
    }

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
