//! Thread and process events: clone, fork, exit, rename, exec.

use std::collections::HashSet;

use monitor_common::{NO_SYSCALL, TaskEvent, task_flags};

use super::{
    Birth, Comm, FdEntry, FdKind, FollowUp, Ledger, Origin, Process, ThreadEntry, WatchReason, comm_str,
};

impl Ledger {
    pub(super) fn task_new(&mut self, task: &TaskEvent) -> FollowUp {
        let h = &task.header;
        let full = self.is_full();
        let (Some(parent), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        // The new task's first thread, created by the calling thread now.
        let thread = ThreadEntry {
            name: task.comm,
            start_ns: h.ts_ns,
            creator: Some(h.tid),
            origin: Origin::Syscall,
            birth_call: parent.calls.in_flight_on(h.tid, h.ts_ns),
            first_call: None,
        };
        if task.flags & task_flags::THREAD != 0 {
            parent.touch_thread(task.pid);
            parent.threads.insert(task.pid, thread);
            counters.threads_started += 1;
            return FollowUp::None;
        }
        if full {
            // The kernel watches a child on its own; this one it must not.
            counters.processes_refused += 1;
            return FollowUp::Unwatch(task.pid);
        }
        // A forked child: the parent's fds as the ledger has them now. The
        // kernel copied the fd table a little earlier (before the address
        // space, then this tracepoint), so another thread's creation or close
        // in between, or a creation held back on another CPU and cancelled
        // there after the fork, makes the copy differ: the child is read from
        // /proc at the next housekeeping, if it is still watched then.
        let birth = Birth {
            ts_ns: h.ts_ns,
            tid: h.tid,
            thread: parent.thread_name(h.tid),
            syscall: NO_SYSCALL,
            origin: Origin::Inherited,
            call: None,
        };
        let mut child = Process::new(
            task.pid,
            comm_str(&task.comm),
            parent.cmdline.clone(),
            h.ts_ns,
            WatchReason::Parent(h.tgid),
            h.ts_ns,
        );
        // A TCP socket that has not connected yet has no inode in the ledger,
        // and the connect() that brings it will name one holder only: both
        // copies are looked up in /proc instead (within a second).
        let mut unbound = Vec::new();
        child.fds = parent
            .fds
            .iter()
            .map(|(fd, entry)| {
                let not_connected = entry.inode == 0 && entry.kind == FdKind::SocketTcp;
                if not_connected {
                    unbound.push(*fd);
                }
                let provisional = entry.provisional || not_connected;
                (
                    *fd,
                    FdEntry {
                        birth,
                        provisional,
                        ..*entry
                    },
                )
            })
            .collect();
        for fd in unbound {
            if let Some(held) = parent.fds.get_mut(&fd) {
                held.entry.provisional = true;
            }
        }
        child.threads.insert(task.pid, thread);
        parent.forked_ns = h.ts_ns;
        counters.processes_watched += 1;
        self.processes.insert(task.pid, child);
        FollowUp::Reconcile(vec![task.pid])
    }

    pub(super) fn task_exit(&mut self, task: &TaskEvent) -> FollowUp {
        let h = &task.header;
        let (Some(process), counters) = self.process_mut(h.tgid) else {
            return FollowUp::None;
        };
        process.touch_thread(task.pid);
        if let Some(thread) = process.threads.remove(&task.pid) {
            process.thread_exited(task.pid, thread.name);
            counters.threads_exited += 1;
        }
        // Without group_dead (kernels before 6.2), the leader's exit or any
        // thread's after it may be the process's last: /proc settles it.
        let maybe_last = task.pid == h.tgid || !process.threads.contains_key(&h.tgid);
        if task.flags & task_flags::GROUP_DEAD != 0 {
            self.forget(h.tgid);
            FollowUp::None
        } else if task.flags & task_flags::GROUP_DEAD_UNKNOWN != 0 && maybe_last {
            FollowUp::MaybeGone(h.tgid)
        } else {
            FollowUp::None
        }
    }

    pub(super) fn task_rename(&mut self, task: &TaskEvent) {
        let (Some(process), _) = self.process_mut(task.header.tgid) else {
            return;
        };
        if let Some(thread) = process.threads.get_mut(&task.pid) {
            thread.name = task.comm;
        }
        if task.pid == process.pid {
            process.comm = comm_str(&task.comm);
        }
    }

    /// After exec: the exec'ing thread is the only one left and owns the
    /// tgid; fds not in `open_fds` were closed on exec. A scan of the process
    /// begun before (a reconciliation draining while its hold passes) read
    /// the old program's table: it is discarded, not applied.
    pub fn exec_happened(
        &mut self,
        pid: u32,
        old_tid: u32,
        comm: Comm,
        cmdline: Vec<String>,
        open_fds: &HashSet<u32>,
    ) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        process.comm = comm_str(&comm);
        process.cmdline = cmdline;
        // Applied, it would put back every fd the exec closed, as found by
        // reconciliation, until the next one.
        process.touched = None;
        let survivor = process
            .threads
            .get(&old_tid)
            .or_else(|| process.threads.get(&pid))
            .copied();
        process.threads.clear();
        if let Some(mut thread) = survivor {
            thread.name = comm;
            process.threads.insert(pid, thread);
        }
        // Calls waiting on a socket the exec closed get no answer.
        let closed: Vec<u32> = (process.fds.keys())
            .filter(|fd| !open_fds.contains(fd))
            .copied()
            .collect();
        for fd in closed {
            process.streams_end(fd, process.exec_ns);
        }
        let before = process.fds.len();
        let released = process.fds.retain(|fd, _| open_fds.contains(fd));
        self.counters.exec_cloexec_closed += (before - process.fds.len()) as u64;
        for inode in released {
            self.release_socket(inode);
        }
    }
}
