//! fd events: creation, release, failures, fds received by SCM_RIGHTS.

use monitor_common::{EventHeader, FdEvent, NO_FD, syscalls as nr};
use tracing::debug;

use super::{
    Birth, FAILURES_KEPT, FailedSyscall, FdEntry, FdId, FollowUp, Ledger, LedgerCounters, Origin, Process,
    RANGES_KEPT, ReleasedRange, WatchReason,
};
use crate::{
    bounded::push_bounded,
    engine::cmsg,
    fdkind::{self, FdKind},
};

/// close_ranges of at most this many numbers are remembered per number.
const SHORT_RANGE: u32 = 64;

/// Dups with no known source kept per process (`Process::orphan_copies`).
const ORPHANS_KEPT: usize = 16;

impl Ledger {
    pub(super) fn fd_open(&mut self, event: &FdEvent) {
        let h = &event.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        let source = (event.source_fd != NO_FD)
            .then(|| process.source_at(event.source_fd, h.ts_ns))
            .flatten();
        let guess = fdkind::from_syscall(h.syscall, event.detail, source.map(|s| s.kind));
        let inode = if event.inode != 0 {
            event.inode
        } else {
            source.map_or(0, |s| s.inode)
        };
        let entry = FdEntry {
            kind: guess.kind,
            provisional: guess.provisional || source.is_some_and(|s| s.provisional),
            birth: Birth {
                ts_ns: h.ts_ns,
                tid: h.tid,
                thread: process.thread_name(h.tid),
                syscall: h.syscall,
                origin: Origin::Syscall,
                call: process.calls.in_flight_on(h.tid, h.ts_ns),
            },
            source_fd: event.source_fd,
            inode,
        };
        let is_dup_onto = matches!(h.syscall, nr::DUP2 | nr::DUP3);
        // A dup of a TCP socket that has not connected yet: see copies.rs.
        let original = source
            .filter(|s| inode == 0 && s.kind == FdKind::SocketTcp)
            .map(|s| FdId {
                fd: event.source_fd,
                born_ns: s.birth.ts_ns,
            });
        if source.is_none() && event.source_fd != NO_FD && inode == 0 {
            let copy = FdId {
                fd: event.fd,
                born_ns: h.ts_ns,
            };
            push_bounded(&mut process.orphan_copies, (event.source_fd, copy), ORPHANS_KEPT);
        }
        let mut released = Vec::new();
        for fd in [event.fd, event.fd2] {
            if fd == NO_FD {
                continue;
            }
            process.touch(fd);
            counters.fds_opened += 1;
            let (old, let_go) = process.fds.insert(fd, entry);
            released.extend(let_go);
            // Its connect arrived first (bind_socket_fd).
            if let Some((socket, bound_ns)) = process.early_binds.remove(&fd) {
                match process.fds.get_mut(&fd) {
                    Some(mut held) if inode == 0 && h.ts_ns <= bound_ns => held.bind_tcp(socket),
                    _ => released.push(socket),
                }
            }
            if let Some(original) = original {
                let fds = &process.fds;
                let copy = FdId { fd, born_ns: h.ts_ns };
                process
                    .unbound_copies
                    .note(copy, original, |id| fds.is_unbound(id));
            }
            if old.is_some_and(|o| o.inode != 0) {
                process.streams_end(fd, h.ts_ns);
            }
            if let Some(old) = old {
                if is_dup_onto {
                    // dup2 closed what the number held: a late dup may copy it.
                    process.fd_closed(fd, h.ts_ns, old);
                    counters.replaced_by_dup += 1;
                } else {
                    found_held(counters, process.exec_ns, h, fd, &old);
                }
            }
        }
        if inode != 0 {
            let socket = self.socket_entry(inode, h.tgid, h.ts_ns);
            // The probes put inet sockets they walked to into SOCKS.
            socket.kernel_seen |= event.inode != 0 && entry.kind == FdKind::SocketTcp;
            let accepted_state = event.detail as u8;
            if matches!(h.syscall, nr::ACCEPT | nr::ACCEPT4) && accepted_state != 0 && socket.state.is_none()
            {
                // Its handshake finished in softirq before accept(): the
                // state is known, the moment it was entered is not.
                socket.state = Some(accepted_state);
                socket.state_since_ns = h.ts_ns;
                socket.state_seen = false;
            }
        }
        for inode in released {
            self.release_socket(inode);
        }
    }

    /// A creation the probes held back ([`monitor_common::EventKind::FdOpenLate`]):
    /// records of other CPUs may have overtaken it, so by now each of its fds
    /// may have been released, or released and created again. Those fds are
    /// dropped; the rest is an ordinary creation. A fork may have overtaken
    /// it too (the thread moved to another CPU between the two): the child's
    /// copy of the parent's fds lacks it, so the child (and any child it
    /// forked since) is read from /proc.
    pub(super) fn fd_open_late(&mut self, event: &FdEvent) -> FollowUp {
        let h = &event.header;
        let forked_since = self.processes.get(&h.tgid).is_some_and(|p| p.forked_ns > h.ts_ns);
        let follow_up = self.fd_open_late_in_process(event);
        if !forked_since {
            return follow_up;
        }
        let mut pids = self.descendants_since(h.tgid, h.ts_ns);
        if pids.is_empty() {
            // They have exited since.
            return follow_up;
        }
        self.counters.late_opens_past_fork += 1;
        if let FollowUp::Reconcile(more) = follow_up {
            pids.extend(more);
        }
        FollowUp::Reconcile(pids)
    }

    /// The processes forked after `ts_ns` from `pid` or from one of those.
    fn descendants_since(&self, pid: u32, ts_ns: u64) -> Vec<u32> {
        let mut found = Vec::new();
        let mut parents = vec![pid];
        while let Some(parent) = parents.pop() {
            let children = (self.processes.values())
                .filter(|p| p.reason == WatchReason::Parent(parent) && p.start_ns > ts_ns)
                .map(|p| p.pid);
            for child in children {
                found.push(child);
                parents.push(child);
            }
        }
        found
    }

    fn fd_open_late_in_process(&mut self, event: &FdEvent) -> FollowUp {
        let h = &event.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        if process.exec_ns > h.ts_ns {
            // An exec since closed its close-on-exec fds without events.
            counters.late_opens_stale += 1;
            return FollowUp::Reconcile(vec![h.tgid]);
        }
        let [fd, fd2] = [event.fd, event.fd2].map(|fd| {
            if fd != NO_FD && process.superseded(fd, h.ts_ns) {
                counters.late_opens_stale += 1;
                NO_FD
            } else {
                fd
            }
        });
        if fd == NO_FD && fd2 == NO_FD {
            return FollowUp::None;
        }
        counters.late_opens += 1;
        let live = if fd == NO_FD {
            FdEvent {
                fd: fd2,
                fd2: NO_FD,
                ..*event
            }
        } else {
            FdEvent { fd, fd2, ..*event }
        };
        self.fd_open(&live);
        // Only a socket() can have copies that overtook it (and this is
        // the path of most creations: no lookup for the others).
        if h.syscall == nr::SOCKET
            && let Some(process) = self.processes.get_mut(&h.tgid)
        {
            for fd in [fd, fd2].into_iter().filter(|fd| *fd != NO_FD) {
                process.adopt_copies_that_overtook(fd, h.ts_ns);
            }
        }
        FollowUp::None
    }

    pub(super) fn fd_close(&mut self, h: &EventHeader, fd: u32) {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        process.touch(fd);
        process.released_at.insert(fd, h.ts_ns);
        // Closed before its held-back creation arrived: that creation will
        // be dropped as stale, and the connect's socket goes with it.
        let never_held = process.early_binds.remove(&fd).map(|(socket, _)| socket);
        let (old, released) = process.fds.remove(&fd);
        if old.is_some_and(|o| o.inode != 0) {
            process.streams_end(fd, h.ts_ns);
        }
        if let Some(old) = old {
            process.fd_closed(fd, h.ts_ns, old);
            counters.fds_closed += 1;
        } else {
            counters.unknown_closes += 1;
        }
        for inode in released.into_iter().chain(never_held) {
            self.release_socket(inode);
        }
    }

    pub(super) fn fd_close_range(&mut self, h: &EventHeader, first: u32, last: u32) {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        if first > last {
            // The kernel refused it (EINVAL): nothing was closed.
            return;
        }
        // A short range is remembered per number, as a close is: a process
        // closing runs of numbers thousands of times a second would push a
        // range out of the few kept before a creation it closed (held back
        // on another CPU) arrives, and that creation would stay as a ghost.
        if last - first < SHORT_RANGE {
            for fd in first..=last {
                let at = process.released_at.entry(fd).or_default();
                *at = (*at).max(h.ts_ns);
            }
        } else {
            push_bounded(
                &mut process.released_ranges,
                ReleasedRange {
                    first,
                    last,
                    ts_ns: h.ts_ns,
                },
                RANGES_KEPT,
            );
        }
        // Walked by number when the range is shorter than the table (a few
        // fds closed at once), else by the table (close_range(3, ~0U) before
        // an exec): a process that does many of either pays per fd closed,
        // not per fd it holds.
        let closing: Vec<u32> = if u64::from(last - first) < process.fds.len() as u64 {
            (first..=last)
                .filter(|fd| process.fds.get(fd).is_some())
                .collect()
        } else {
            (process.fds.keys().copied())
                .filter(|fd| (first..=last).contains(fd))
                .collect()
        };
        // A scan under way may list fds of the range the ledger lacks.
        process.touch_range(first, last);
        let mut released = Vec::new();
        for fd in &closing {
            let (old, let_go) = process.fds.remove(fd);
            if let Some(entry) = old {
                if entry.inode != 0 {
                    process.streams_end(*fd, h.ts_ns);
                }
                process.fd_closed(*fd, h.ts_ns, entry);
            }
            released.extend(let_go);
        }
        counters.fds_closed += closing.len() as u64;
        process.early_binds.retain(|fd, (socket, _)| {
            let closed = (first..=last).contains(fd);
            if closed {
                released.push(*socket);
            }
            !closed
        });
        for inode in released {
            self.release_socket(inode);
        }
    }

    pub(super) fn fd_failed(&mut self, event: &FdEvent) {
        let h = &event.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return;
        };
        push_bounded(
            &mut process.failures,
            FailedSyscall {
                ts_ns: h.ts_ns,
                tid: h.tid,
                syscall: h.syscall,
                errno: event.detail,
            },
            FAILURES_KEPT,
        );
        process.failures_total += 1;
        counters.failed_syscalls += 1;
    }

    pub(super) fn fds_received(&mut self, h: &EventHeader, control_len: u32, control: &[u8]) -> FollowUp {
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        let (fds, complete) = cmsg::received_fds(control, control_len);
        let birth = Birth {
            ts_ns: h.ts_ns,
            tid: h.tid,
            thread: process.thread_name(h.tid),
            syscall: h.syscall,
            origin: Origin::ScmRights,
            call: process.calls.in_flight_on(h.tid, h.ts_ns),
        };
        let mut released = Vec::new();
        for fd in fds {
            process.touch(fd);
            let entry = FdEntry {
                kind: FdKind::Other,
                provisional: true,
                birth,
                source_fd: NO_FD,
                inode: 0,
            };
            let (old, let_go) = process.fds.insert(fd, entry);
            released.extend(let_go);
            if let Some(old) = old {
                found_held(counters, process.exec_ns, h, fd, &old);
            }
            counters.fds_received += 1;
        }
        for inode in released {
            self.release_socket(inode);
        }
        if complete {
            FollowUp::None
        } else {
            FollowUp::Reconcile(vec![h.tgid])
        }
    }
}

/// A creation (`h`) found `old` holding its number: the exec since closed
/// it (close-on-exec, without a record), or its release was missed. The
/// fds kept at an exec are those /proc listed when the daemon handled it,
/// by then maybe a number the new program had opened again (the dynamic
/// loader's open of a library): its old entry stayed until this creation.
/// A missed release is logged at debug: what held the number, since when.
fn found_held(counters: &mut LedgerCounters, exec_ns: u64, h: &EventHeader, fd: u32, old: &FdEntry) {
    if exec_ns != 0 && old.birth.ts_ns < exec_ns && exec_ns <= h.ts_ns {
        counters.exec_cloexec_closed += 1;
    } else if !old.birth.origin.is_unseen() {
        counters.missed_releases += 1;
        debug!(
            pid = h.tgid,
            fd,
            held_kind = ?old.kind,
            held_syscall = old.birth.syscall,
            held_origin = ?old.birth.origin,
            held_since_ns = old.birth.ts_ns,
            held_tid = old.birth.tid,
            syscall = h.syscall,
            ts_ns = h.ts_ns,
            "a creation found its number still held: its release was missed"
        );
    }
}

impl Process {
    /// A dup made on another CPU overtakes a held-back socket() creation:
    /// it arrived naming a source the ledger did not hold, so nothing tied
    /// the two. Every copy made from `fd`'s number after `born_ns` copies
    /// this socket (the caller dropped the creation had the number been
    /// released since). If a connect came first (the copy's, or the
    /// socket's own: `early_binds`), its inode binds them all; else the
    /// copies are noted, so that a later connect binds them all.
    fn adopt_copies_that_overtook(&mut self, fd: u32, born_ns: u64) {
        let original = FdId { fd, born_ns };
        let Some(entry) = (self.fds.get(&fd))
            .filter(|e| e.birth.ts_ns == born_ns && e.kind == FdKind::SocketTcp)
            .filter(|_| !self.orphan_copies.is_empty())
        else {
            return;
        };
        let mut connected = (entry.inode != 0).then_some(entry.inode);
        let (copies, others) = std::mem::take(&mut self.orphan_copies)
            .into_iter()
            .partition(|(source, copy)| *source == fd && copy.born_ns > born_ns);
        self.orphan_copies = others;
        for (_, copy) in copies {
            let Some(held) = self
                .fds
                .get_mut(&copy.fd)
                .filter(|h| h.entry.birth.ts_ns == copy.born_ns)
            else {
                continue;
            };
            if held.entry.inode != 0 {
                connected = Some(held.entry.inode);
                continue;
            }
            held.entry.kind = FdKind::SocketTcp;
            held.entry.provisional = false;
            let fds = &self.fds;
            self.unbound_copies.note(copy, original, |id| fds.is_unbound(id));
        }
        let Some(inode) = connected else {
            return;
        };
        for id in std::iter::once(original).chain(self.unbound_copies.take_group(original)) {
            if self.fds.is_unbound(id)
                && let Some(mut held) = self.fds.get_mut(&id.fd)
            {
                held.bind_tcp(inode);
            }
        }
    }

    /// What fd number `fd` held at `ts_ns`, for a dup made then: the live
    /// entry, unless the ledger saw it created after `ts_ns` (the number was
    /// closed and reused since a late dup's birth), else the entry a close
    /// after `ts_ns` took (newest first, stopping at the first close before
    /// it, so an on-time dup whose source is live costs no scan).
    fn source_at(&self, fd: u32, ts_ns: u64) -> Option<FdEntry> {
        let alive_then = |e: &FdEntry| e.birth.ts_ns <= ts_ns || e.birth.origin.is_unseen();
        if let Some(live) = self.fds.get(&fd).filter(|e| alive_then(e)) {
            return Some(*live);
        }
        self.closed_fds
            .iter()
            .rev()
            .take_while(|c| c.closed_ns >= ts_ns)
            .find(|c| c.fd == fd && alive_then(&c.entry))
            .map(|c| c.entry)
    }

    /// Whether fd number `fd` was released, or created by an event the
    /// ledger saw, at or after `ts_ns`: then a creation from `ts_ns` is stale.
    fn superseded(&self, fd: u32, ts_ns: u64) -> bool {
        let created_since = self
            .fds
            .get(&fd)
            .is_some_and(|e| e.birth.ts_ns >= ts_ns && !e.birth.origin.is_unseen());
        let released_since = self.released_at.get(&fd).is_some_and(|at| *at >= ts_ns)
            || self
                .released_ranges
                .iter()
                .any(|r| r.ts_ns >= ts_ns && (r.first..=r.last).contains(&fd));
        created_since || released_since
    }
}
