//! The engine's I/O: discovery, exec decisions, reconciliation and kind
//! resolution, all reading /proc.

use std::{collections::HashSet, time::Duration};

use aya::maps::{MapData, RingBuf};
use monitor_common::{SockOwner, task_flags, watch_flags};
use tracing::{debug, info, warn};

use super::Engine;
use crate::{
    fdkind::FdKind,
    ledger::{Comm, FollowUp, Origin, Process, Scan, WatchReason},
    probes::{self, CLOSE_IN_FLIGHT_NS, hooks},
    proc::{self, FdDir, ProcError, ProcessInfo},
    sockdiag::SocketTable,
    time,
};

/// How long an exiting leader's process is checked for having exited.
const MAYBE_GONE_WATCH_NS: u64 = 3_000_000_000;
/// How long after its scan a process's closes still ship rather than cancel
/// held-back creations (until the first drain after this): far longer than a
/// syscall takes from installing an fd to its exit probe, even preempted in
/// between, and short beside the reconciliation interval.
const SCANNED_HOLD_NS: u64 = 50_000_000;

/// Whether a scan whose flush ran at `flushed` has held long enough by `now`
/// (boot ns).
fn hold_passed(flushed: u64, now: u64) -> bool {
    now.saturating_sub(flushed) >= SCANNED_HOLD_NS
}

/// What /proc shows of a process, and its fd directory to name kinds with.
type ScanResult = Result<(Scan, FdDir), ProcError>;

fn scan(pid: u32) -> ScanResult {
    let mut dir = FdDir::open(pid)?;
    let (fds, problems) = dir.links();
    for problem in problems {
        debug!(pid, %problem, "unreadable fd entry");
    }
    let threads = proc::list_threads(pid)?;
    Ok((Scan { fds, threads }, dir))
}

impl Engine {
    pub(super) fn follow_up(&mut self, follow_up: FollowUp) {
        match follow_up {
            FollowUp::None => {}
            FollowUp::Exec {
                pid,
                old_tid,
                flags,
                comm,
            } => self.on_exec(pid, old_tid, flags, comm),
            FollowUp::MaybeGone(pid) => {
                if proc::has_exited(pid) {
                    self.stop_watching(pid, "exited");
                } else {
                    // Kernels before sched_process_exit's group_dead (6.1)
                    // say only "the leader exited", usually before it is a
                    // zombie: look again after the next drains.
                    self.maybe_gone.entry(pid).or_insert_with(time::boot_ns);
                }
            }
            FollowUp::Reconcile(pids) => self.reconcile_soon.extend(pids),
            FollowUp::Unwatch(pid) => self.probes.unwatch(pid),
        }
    }

    /// Confirms the exits that could not be confirmed when they were seen;
    /// a process still running after [`MAYBE_GONE_WATCH_NS`] lives on.
    pub(super) fn confirm_exits(&mut self) {
        let now = time::boot_ns();
        let pids: Vec<(u32, u64)> = self.maybe_gone.iter().map(|(p, t)| (*p, *t)).collect();
        for (pid, since) in pids {
            if proc::has_exited(pid) {
                self.maybe_gone.remove(&pid);
                self.stop_watching(pid, "exited");
            } else if now.saturating_sub(since) > MAYBE_GONE_WATCH_NS {
                self.maybe_gone.remove(&pid);
            }
        }
    }

    /// Finds matching processes not yet watched (at start, then periodically
    /// in case an exec was not seen).
    pub(super) fn discover_all(&mut self, ring: &mut RingBuf<MapData>) {
        self.drain(ring);
        self.counters.discovery_passes += 1;
        let pids = proc::all_pids();
        let live: HashSet<u32> = pids.iter().copied().collect();
        self.refused.retain(|(pid, _)| live.contains(pid));
        for pid in pids {
            if self.ledger.processes.contains_key(&pid) {
                continue;
            }
            let Ok(info) = proc::process_info(pid) else {
                continue;
            };
            if let Some(reason) = self.matcher.matches(&info) {
                self.start_watching(info, reason);
            }
        }
        for pid in self.matcher.pids() {
            if self.ledger.processes.contains_key(&pid) {
                continue;
            }
            match proc::process_of(pid) {
                Ok(process) if process != pid => {
                    warn!(
                        pid,
                        process, "this pid is a thread's: pin its process instead; it is not watched"
                    )
                }
                _ => warn!(pid, "no process with this pid: it is not watched"),
            }
        }
    }

    fn start_watching(&mut self, info: ProcessInfo, reason: WatchReason) {
        let pid = info.pid;
        let flags = if reason == WatchReason::Pid {
            watch_flags::PINNED
        } else {
            watch_flags::MATCHED
        };
        if self.ledger.is_full() {
            // The kernel may watch it already (its comm matched at exec).
            self.probes.unwatch(pid);
            if self.refused.insert((pid, info.start_ns)) {
                self.ledger.counters.processes_refused += 1;
                let max = self.ledger.max_processes;
                warn!(pid, comm = %info.comm, "not watched: leakmon follows {max} processes already (discovery.max_processes)");
            }
            return;
        }
        // Into the kernel first, then /proc: whatever happens after the scan
        // arrives as events, and replaying them on top of the scan converges.
        if let Err(e) = self.probes.watch(pid, flags) {
            self.ledger.counters.processes_refused += 1;
            warn!(pid, error = %e, "not watched: the kernel had no room for it");
            return;
        }
        let now = time::boot_ns();
        let process = Process::new(
            pid,
            info.comm.clone(),
            info.cmdline.clone(),
            info.start_ns,
            reason.clone(),
            now,
        );
        self.ledger.watch(process);
        self.ledger.begin_scan(pid, now);
        match self.scan_shipping_closes(pid) {
            Ok((scan, dir)) => {
                self.leave_in_flight_to_records(&[pid]);
                self.ledger
                    .apply_scan(pid, &scan, Origin::BeforeStart, now, |fd, target| {
                        dir.resolve_kind(fd, target)
                    });
                info!(pid, comm = %info.comm, ?reason, fds = scan.fds.len(), threads = scan.threads.len(), "watching");
                // Its open connections: states now, transitions from here on,
                // and the HTTP capture on them.
                self.reconcile_sockets(None);
                self.follow_calls();
            }
            Err(e) => {
                warn!(pid, error = %e, "process vanished while being discovered");
                self.stop_watching(pid, "vanished");
            }
        }
    }

    fn stop_watching(&mut self, pid: u32, why: &str) {
        self.probes.unwatch(pid);
        self.probes.detach_tls(pid);
        match self.ledger.forget(pid) {
            // Children come and go with their parent's watch unlogged.
            Some(process) if matches!(process.reason, WatchReason::Parent(_)) => {
                debug!(pid, comm = %process.comm, why, "child no longer watched");
            }
            Some(process) => info!(pid, comm = %process.comm, why, "no longer watched"),
            None => {}
        }
    }

    fn on_exec(&mut self, pid: u32, old_tid: u32, flags: u32, comm: Comm) {
        let info = match proc::process_info(pid) {
            Ok(info) => info,
            Err(_) => {
                // Gone already (a short-lived exec): nothing to track.
                self.stop_watching(pid, "exited right after exec");
                return;
            }
        };
        let known = self.ledger.processes.get(&pid).map(|p| p.reason.clone());
        let reason = match known {
            Some(WatchReason::Pid) => Some(WatchReason::Pid),
            _ => self.matcher.matches(&info),
        };
        match (known, reason) {
            (Some(_), Some(reason)) => {
                if flags & task_flags::WATCHED_NOW == 0
                    && let Err(e) = self.probes.watch(pid, watch_flags::MATCHED)
                {
                    warn!(pid, error = %e, "could not keep watching after exec");
                }
                let open: HashSet<u32> = match proc::list_fds(pid) {
                    Ok((fds, _)) => fds.iter().map(|l| l.fd).collect(),
                    Err(_) => return self.stop_watching(pid, "exited after exec"),
                };
                self.ledger.exec_happened(pid, old_tid, comm, info.cmdline, &open);
                // The new program may have reopened a number the exec closed
                // before /proc was listed, and closed it again on one CPU (both
                // records cancelled): the old entry would stay. Read it again.
                self.reconcile_soon.insert(pid);
                if let Some(process) = self.ledger.processes.get_mut(&pid) {
                    process.reason = reason;
                }
            }
            (Some(_), None) => self.stop_watching(pid, "exec'd something that does not match"),
            (None, Some(reason)) => self.start_watching(info, reason),
            (None, None) => {
                if flags & task_flags::WATCHED_NOW != 0 {
                    self.probes.unwatch(pid);
                }
            }
        }
    }

    pub(super) fn reconcile_all(&mut self, ring: &mut RingBuf<MapData>) {
        let pids: Vec<u32> = self.ledger.processes.keys().copied().collect();
        self.reconcile(ring, &pids);
    }

    /// Scans /proc for `pids` and repairs the ledger. Events that arrive
    /// while the scans run are applied first and win over the scan.
    ///
    /// An fd the scan listed but left to records still in the probes (a
    /// close under way when the scan began) is in doubt when no record has
    /// put it in the ledger: the close may have finished and the fd number
    /// been reused by another thread, whose creation record was lost (a full
    /// ring). The process is scanned again once those closes are surely over
    /// ([`CLOSE_IN_FLIGHT_NS`]); that scan judges the fd.
    pub(super) fn reconcile(&mut self, ring: &mut RingBuf<MapData>, pids: &[u32]) {
        let doubtful = self.reconcile_once(ring, pids);
        let due = time::boot_ns() + CLOSE_IN_FLIGHT_NS;
        for pid in doubtful {
            if !self.rechecks.iter().any(|&(queued, _)| queued == pid) {
                self.rechecks.push((pid, due));
            }
        }
    }

    /// Reconciles the processes whose recheck is due ([`Engine::reconcile`]);
    /// once: a doubt left by this scan waits for the next reconciliation.
    pub(super) fn recheck_due(&mut self, ring: &mut RingBuf<MapData>) {
        let now = time::boot_ns();
        let (due, later) = self.rechecks.iter().partition(|&&(_, at)| at <= now);
        self.rechecks = later;
        let due: Vec<u32> = (due.into_iter())
            .map(|(pid, _)| pid)
            .filter(|pid| self.ledger.processes.contains_key(pid))
            .collect();
        if !due.is_empty() {
            debug!(
                ?due,
                "reconciling again: an fd listed while its close was under way"
            );
            self.reconcile_once(ring, &due);
        }
    }

    /// One reconciliation of `pids`; returns those with an fd in doubt.
    fn reconcile_once(&mut self, ring: &mut RingBuf<MapData>, pids: &[u32]) -> Vec<u32> {
        self.drain(ring);
        let began = time::boot_ns();
        for pid in pids {
            self.ledger.begin_scan(*pid, began);
        }
        let scans: Vec<(u32, ScanResult)> = pids
            .iter()
            .map(|pid| (*pid, self.scan_shipping_closes(*pid)))
            .collect();
        // Judged once their hold has passed: /proc may have listed an fd whose
        // syscall reached its exit probe only after the scan's flush (its
        // thread preempted in between), and a flush after the hold shipped it.
        self.drain_until_scans_settled(ring);
        let in_flight = self.leave_in_flight_to_records(pids);
        let now = time::boot_ns();
        let mut doubtful = Vec::new();
        for (pid, scan) in scans {
            if !self.ledger.scan_begun(pid) {
                // It exited during the hold, and its pid may be another
                // watched process's already: the scan is not that one's. Or
                // it exec'd: the scan is the old program's (read again soon).
                debug!(pid, "process gone or exec'd before its scan was applied");
                continue;
            }
            match scan {
                Ok((scan, dir)) => {
                    let fixes = self
                        .ledger
                        .apply_scan(pid, &scan, Origin::Reconciled, now, |fd, target| {
                            dir.resolve_kind(fd, target)
                        });
                    if fixes != Default::default() {
                        info!(pid, ?fixes, "reconciliation repaired the ledger");
                    }
                    if self.in_doubt(pid, &scan, &in_flight) {
                        doubtful.push(pid);
                    }
                }
                Err(ProcError::NoSuchProcess(_)) => self.stop_watching(pid, "exited"),
                Err(e) => warn!(pid, error = %e, "cannot reconcile"),
            }
        }
        self.reconcile_sockets(Some(ring));
        doubtful
    }

    /// Whether `scan` listed an fd of `pid` that it left to records
    /// (`in_flight`) and that no record has put in the ledger.
    fn in_doubt(&self, pid: u32, scan: &Scan, in_flight: &[(u32, u32)]) -> bool {
        let Some(process) = self.ledger.processes.get(&pid) else {
            return false;
        };
        (in_flight.iter())
            .filter(|&&(tgid, _)| tgid == pid)
            .any(|&(_, fd)| process.fds.get(&fd).is_none() && scan.fds.iter().any(|link| link.fd == fd))
    }

    /// Reads `pid`'s /proc while its closes ship instead of cancelling
    /// held-back creations, then ships those (see `Probes::set_scan_bits`).
    /// SCANNING is off again before any drain; SCANNED until a drain's flush
    /// [`SCANNED_HOLD_NS`] later ([`Engine::settle_scans`]). While they are
    /// on, a loop of short-lived fds ships two records a round, which a
    /// drain that waits for an empty ring might never see the end of: every
    /// drain settles the hold once it has passed, and `sync` (which waits
    /// for an empty ring) drains through it first.
    fn scan_shipping_closes(&mut self, pid: u32) -> ScanResult {
        self.probes
            .set_scan_bits(pid, watch_flags::SCANNING | watch_flags::SCANNED, true);
        let scanned = scan(pid);
        self.probes.flush_held_back();
        self.probes.set_scan_bits(pid, watch_flags::SCANNING, false);
        // A scan again before the last one settled restarts its hold.
        self.scanned.retain(|&(scanned, _)| scanned != pid);
        self.scanned.push((pid, time::boot_ns()));
        scanned
    }

    /// Makes the scans of `pids` leave alone the fds whose records the probes
    /// still hold: a creation held back now, and a close that cancelled its
    /// creation just before the scan began (its fd was still in the table).
    fn leave_in_flight_to_records(&mut self, pids: &[u32]) -> Vec<(u32, u32)> {
        let in_flight = self.probes.fds_in_flight(time::boot_ns());
        for &(tgid, fd) in &in_flight {
            if pids.contains(&tgid) {
                self.ledger.leave_to_records(tgid, [fd]);
            }
        }
        in_flight
    }

    /// How long until the latest scan's hold has passed (0 when it has).
    fn scan_hold_left(&self) -> u64 {
        let latest = self.scanned.iter().map(|&(_, flushed)| flushed).max();
        latest.map_or(0, |latest| {
            (latest + SCANNED_HOLD_NS).saturating_sub(time::boot_ns())
        })
    }

    /// Drains until the latest scan's hold has passed, then once more: that
    /// drain's flush ships every creation held back by then and settles the
    /// scans. Draining all along, so that a busy ring does not fill.
    pub(super) fn drain_until_scans_settled(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            let left = self.scan_hold_left();
            if left == 0 {
                break;
            }
            self.drain(ring);
            std::thread::sleep(Duration::from_nanos(left).min(Duration::from_millis(1)));
        }
        self.drain(ring);
    }

    /// Whether some process's SCANNED bit is due to be cleared.
    pub(super) fn a_scan_hold_passed(&self) -> bool {
        if self.scanned.is_empty() {
            return false;
        }
        let now = time::boot_ns();
        (self.scanned.iter()).any(|&(_, flushed)| hold_passed(flushed, now))
    }

    /// Clears [`watch_flags::SCANNED`] of processes scanned at least
    /// [`SCANNED_HOLD_NS`] before: call right after a flush of the held-back
    /// creations. By then every syscall that installed an fd before its scan
    /// has passed its exit probe, and that flush shipped what they held back.
    pub(super) fn settle_scans(&mut self) {
        let now = time::boot_ns();
        let probes = &mut self.probes;
        self.scanned.retain(|&(pid, flushed)| {
            let settled = hold_passed(flushed, now);
            if settled {
                probes.set_scan_bits(pid, watch_flags::SCANNED, false);
            }
            !settled
        });
    }

    /// Brings socket states in line with sock_diag (and /proc/PID/net where
    /// sock_diag cannot see: another network namespace, or no diag module),
    /// tells the probes about connections they have not seen created (so
    /// their next state change is caught), and drops kernel socket entries no
    /// watched fd holds.
    pub(super) fn reconcile_sockets(&mut self, ring: Option<&mut RingBuf<MapData>>) {
        self.reconcile_socket_states(None, ring);
    }

    /// [`Engine::reconcile_sockets`], or with `only`, just those sockets'
    /// states (no garbage collection): a socket new to the ledger. Other
    /// sockets' states are left to their records, which may still be on the
    /// way from the kernel (a dump between a state change and its drain would
    /// count a repair that is none).
    /// With `ring`, it is drained after the dump: records of changes made
    /// before the dump that were still on their way are applied first.
    fn reconcile_socket_states(&mut self, only: Option<&HashSet<u64>>, ring: Option<&mut RingBuf<MapData>>) {
        let mut held = self.ledger.socket_inodes();
        if let Some(only) = only {
            held.retain(|inode, _| only.contains(inode));
        }
        let refused = hooks::refused_for_tests().iter().any(|p| p == probes::SOCK_DIAG);
        let dumped_at = time::boot_ns();
        let dump = if refused {
            Err(std::io::Error::other(format!(
                "refused by {} (a test fault switch)",
                hooks::REFUSE_ENV
            )))
        } else {
            SocketTable::dump_tcp(|inode| held.contains_key(&inode))
        };
        let diag_ok = dump.is_ok();
        let mut table = dump.unwrap_or_else(|e| {
            // Each time it starts failing (e.g. tcp_diag cannot be loaded:
            // kernel.modules_disabled), not at every reconciliation.
            if !self.sock_diag_failing {
                warn!(error = %e, "sock_diag dump failed: socket states come from /proc/PID/net");
            }
            SocketTable::default()
        });
        self.sock_diag_failing = !diag_ok;
        table.add_from_proc_net(&held, diag_ok, |inode| {
            self.ledger.holder_of(inode).map(|(pid, _)| pid)
        });
        if let Some(ring) = ring {
            self.drain(ring);
        }
        let (fixes, unseen) = self.ledger.apply_sock_diag(&table, dumped_at, time::boot_ns());
        if fixes.states_fixed > 0 {
            info!(?fixes, "sock_diag corrected socket states");
        }
        for (inode, tuple) in unseen {
            if let Some((tgid, fd)) = self.ledger.holder_of(inode) {
                self.probes.seed_tuple(tuple, SockOwner { tgid, fd, inode });
            }
        }
        if only.is_some() {
            return;
        }
        let collected = self.probes.collect_sockets(|inode| held.contains_key(&inode));
        if collected > 0 {
            debug!(collected, "dropped kernel entries of sockets no watched fd holds");
        }
    }

    /// Keeps the HTTP capture on every watched process: OpenSSL probes for
    /// those that map libssl (checked again until they do: Python loads it
    /// on first use), none for processes that are gone, and the socket fds
    /// the capture looks at in line with the ledger.
    pub(super) fn follow_calls(&mut self) {
        let now = time::boot_ns();
        let pids: Vec<u32> = self.ledger.processes.keys().copied().collect();
        for pid in &pids {
            if !self.probes.tls.is_attached(*pid) {
                self.probes.attach_tls(*pid);
            }
            if let Some(process) = self.ledger.processes.get_mut(pid) {
                process.calls.loops.settle(now);
            }
        }
        for pid in self.probes.tls.pids() {
            if !self.ledger.processes.contains_key(&pid) {
                self.probes.detach_tls(pid);
            }
        }
        let ledger = &self.ledger;
        let tcp_fd = |pid: u32, fd: u32| {
            ledger
                .processes
                .get(&pid)
                .and_then(|p| p.fds.get(&fd))
                .is_some_and(|e| e.kind == FdKind::SocketTcp)
        };
        self.probes.collect_socket_fds(tcp_fd);
        let unseen = (self.ledger.processes.iter()).flat_map(|(pid, process)| {
            (process.fds.iter())
                .filter(|(_, entry)| entry.kind == FdKind::SocketTcp && entry.birth.origin.is_unseen())
                .map(|(fd, entry)| (*pid, *fd, entry.inode))
        });
        self.probes.seed_socket_fds(unseen);
    }

    /// Names the kind of fds the syscall could not (open: file or dir?
    /// accept: which protocol?) from /proc. A link is applied after a
    /// drain, and only to the entry it was read for: had that entry's close
    /// still been in the ring, the link named what holds the number now,
    /// and a late dup of the closed entry would have copied that kind too
    /// (the random churn in a slow VM caught a pipe's copy named a socket).
    pub(super) fn resolve_provisional(&mut self, ring: &mut RingBuf<MapData>) {
        let pids: Vec<u32> = self.ledger.processes.keys().copied().collect();
        let mut read = Vec::new();
        for pid in pids {
            let provisional = self.ledger.provisional_fds(pid);
            if provisional.is_empty() {
                continue;
            }
            let Ok(dir) = FdDir::open(pid) else { continue };
            for (fd, born_ns) in provisional {
                if let Some(target) = dir.link(fd) {
                    let inode = if target.starts_with("socket:[") {
                        proc::link_inode(&target).unwrap_or(0)
                    } else {
                        0
                    };
                    read.push((pid, fd, born_ns, dir.resolve_kind(fd, &target), inode));
                }
            }
        }
        // A drain cut short leaves records that may be such closes: next time.
        if read.is_empty() || !self.drain(ring) {
            return;
        }
        let mut new_sockets = HashSet::new();
        for (pid, fd, born_ns, kind, inode) in read {
            if self.ledger.birth_of(pid, fd) == Some(born_ns)
                && self.ledger.resolve_kind(pid, fd, kind, inode, time::boot_ns())
            {
                new_sockets.insert(inode);
            }
        }
        // A socket first named here (a forked child's copy of a socket the
        // parent had not connected when it forked, which the parent has
        // connected and closed since) changed state with no holder on record.
        if !new_sockets.is_empty() {
            self.reconcile_socket_states(Some(&new_sockets), None);
        }
    }
}
