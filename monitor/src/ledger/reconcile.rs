//! Repairing the ledger from /proc: after lost events, after exec, and
//! periodically, so that it never drifts from what the kernel holds.

use std::collections::HashSet;

use monitor_common::{NO_FD, NO_SYSCALL};
use serde::Serialize;

use super::{Birth, FdEntry, Ledger, Origin, Process, ThreadEntry, Touched, comm_from};
use crate::{
    fdkind::{self, FdKind},
    proc::{self, FdLink, ThreadInfo},
};

/// What /proc showed for one process.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub fds: Vec<FdLink>,
    pub threads: Vec<ThreadInfo>,
}

/// What applying a scan changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanFixes {
    pub fds_added: u64,
    pub fds_removed: u64,
    pub kinds_fixed: u64,
    pub threads_added: u64,
    pub threads_removed: u64,
}

impl Ledger {
    /// Call before reading /proc for `pid`: from now until [`Ledger::apply_scan`]
    /// the ledger remembers which fds and threads events changed.
    pub fn begin_scan(&mut self, pid: u32, now_ns: u64) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.touched = Some(Touched {
                began_ns: now_ns,
                ..Touched::default()
            });
        }
    }

    /// Whether [`Ledger::begin_scan`] was called for the process now known
    /// as `pid` and its scan not applied yet: false once it was forgotten,
    /// also when a new process with that pid is watched since.
    pub fn scan_begun(&self, pid: u32) -> bool {
        self.processes.get(&pid).is_some_and(|p| p.touched.is_some())
    }

    /// Between [`Ledger::begin_scan`] and [`Ledger::apply_scan`]: `pid`'s
    /// `fds` have records still in the probes (a creation held back, a close
    /// that cancelled one), so the scan leaves them as the records make them.
    pub fn leave_to_records(&mut self, pid: u32, fds: impl IntoIterator<Item = u32>) {
        if let Some(process) = self.processes.get_mut(&pid) {
            for fd in fds {
                process.touch(fd);
            }
        }
    }

    /// Makes the ledger agree with `scan`, except for what events changed
    /// while it was taken (those events are newer than the scan).
    ///
    /// `origin` is what an fd or thread found only in /proc is marked as:
    /// `BeforeStart`/`Inherited` on first sight of a process, `Reconciled`
    /// (and counted as a fix) afterwards. `resolve` names an fd's kind from
    /// its link target.
    pub fn apply_scan(
        &mut self,
        pid: u32,
        scan: &Scan,
        origin: Origin,
        now_ns: u64,
        mut resolve: impl FnMut(u32, &str) -> FdKind,
    ) -> ScanFixes {
        let mut fixes = ScanFixes::default();
        let Some(process) = self.processes.get_mut(&pid) else {
            return fixes;
        };
        let touched = process.touched.take().unwrap_or_default();
        let found = Birth {
            ts_ns: now_ns,
            tid: 0,
            thread: [0; 16],
            syscall: NO_SYSCALL,
            origin,
            call: None,
        };

        let mut in_proc = HashSet::with_capacity(scan.fds.len());
        let mut released = Vec::new();
        for link in &scan.fds {
            in_proc.insert(link.fd);
            let inode = if link.target.starts_with("socket:[") {
                proc::link_inode(&link.target).unwrap_or(0)
            } else {
                0
            };
            if touched.fd(link.fd) {
                bind_socket_born_before(process, &touched, link, inode);
                continue;
            }
            let known = process.fds.get(&link.fd).map(|e| (e.provisional, e.kind));
            match known {
                Some((true, _)) => {
                    let mut held = process.fds.get_mut(&link.fd).expect("present");
                    held.entry.kind = resolve(link.fd, &link.target);
                    held.entry.provisional = false;
                    held.set_inode(inode);
                }
                Some((false, kind)) if fdkind::consistent_with_target(kind, &link.target) => {
                    process.fds.get_mut(&link.fd).expect("present").set_inode(inode);
                }
                unknown_or_reused => {
                    // Unseen, or released and reused unseen: the birth on
                    // record (if any) is not this object's.
                    let entry = FdEntry {
                        kind: resolve(link.fd, &link.target),
                        provisional: false,
                        birth: found,
                        source_fd: NO_FD,
                        inode,
                    };
                    released.extend(process.fds.insert(link.fd, entry).1);
                    if unknown_or_reused.is_some() {
                        fixes.kinds_fixed += 1;
                    } else {
                        fixes.fds_added += 1;
                    }
                }
            }
        }
        let before = process.fds.len();
        released.extend(
            process
                .fds
                .retain(|fd, _| in_proc.contains(fd) || touched.fd(*fd)),
        );
        fixes.fds_removed = (before - process.fds.len()) as u64;
        let held_sockets: Vec<u64> = process.fds.sockets().collect();

        let mut live = HashSet::with_capacity(scan.threads.len());
        for thread in &scan.threads {
            live.insert(thread.tid);
            if touched.threads.contains(&thread.tid) || process.threads.contains_key(&thread.tid) {
                continue;
            }
            process.threads.insert(
                thread.tid,
                ThreadEntry {
                    name: comm_from(&thread.name),
                    start_ns: thread.start_ns,
                    creator: None,
                    origin,
                    birth_call: None,
                    first_call: None,
                },
            );
            fixes.threads_added += 1;
        }
        let before = process.threads.len();
        process
            .threads
            .retain(|tid, _| live.contains(tid) || touched.threads.contains(tid));
        fixes.threads_removed = (before - process.threads.len()) as u64;

        for inode in held_sockets {
            self.socket_entry(inode, pid, now_ns);
        }
        for inode in released {
            self.release_socket(inode);
        }
        if origin == Origin::Reconciled {
            let c = &mut self.counters;
            c.reconcile_runs += 1;
            c.reconcile_fds_added += fixes.fds_added;
            c.reconcile_fds_removed += fixes.fds_removed;
            c.reconcile_kinds_fixed += fixes.kinds_fixed;
            c.reconcile_threads_added += fixes.threads_added;
            c.reconcile_threads_removed += fixes.threads_removed;
        }
        fixes
    }
}

/// A socket fd that events touched during the scan but that was created
/// before the scan began, with no inode yet, takes the inode the scan read:
/// its creation was held back in the kernel and shipped by the scan's own
/// flush (the thread left that CPU), or a close of the same number that an
/// earlier creation cancelled is still counted in flight. Any close of it
/// since would have removed it and any reuse would be born later, so /proc
/// showed this socket. Without this it stayed unbound, without state or
/// endpoints, until the next reconciliation.
fn bind_socket_born_before(process: &mut Process, touched: &Touched, link: &FdLink, inode: u64) {
    if inode == 0 {
        return;
    }
    let Some(mut held) = process.fds.get_mut(&link.fd) else {
        return;
    };
    let entry = &held.entry;
    if entry.inode == 0
        && !entry.provisional
        && entry.kind.is_socket()
        && entry.birth.ts_ns < touched.began_ns
    {
        held.set_inode(inode);
    }
}
