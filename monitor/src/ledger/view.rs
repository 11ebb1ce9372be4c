//! The ledger as JSON: what the daemon answers on its control socket and
//! what `leakmon snapshot` merges into its /proc view.

use std::collections::BTreeMap;

use monitor_common::{NO_FD, NO_SYSCALL, syscalls};
use serde::{Deserialize, Serialize};

pub use super::sockview::{EndpointView, SocketView};
use super::{
    Birth, FailedSyscall, FdEntry, Ledger, Origin, Process, ThreadEntry, WatchReason, comm_str,
    sockview::{endpoint_views, socket_views},
};
use crate::{
    calls::{CallLog, view::CallRefView},
    fdkind::FdKind,
    labels::Labels,
    time,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BirthView {
    /// RFC 3339. For `before_start`/`reconciled` origins: when leakmon first saw it.
    pub time: String,
    pub age_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    pub origin: Origin,
    /// The API call the creating thread had in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallRefView>,
}

impl BirthView {
    pub fn of(birth: &Birth, now_ns: u64, calls: &CallLog) -> Self {
        let seen = birth.tid != 0;
        BirthView {
            time: time::rfc3339_of_boot(birth.ts_ns),
            age_s: time::age_s(birth.ts_ns, now_ns),
            tid: seen.then_some(birth.tid),
            thread: seen.then(|| comm_str(&birth.thread)),
            syscall: (birth.syscall != NO_SYSCALL).then(|| syscall_name(birth.syscall)),
            origin: birth.origin,
            call: birth.call.as_ref().map(|c| CallRefView::of(c, calls)),
        }
    }
}

pub fn syscall_name(nr: u32) -> String {
    syscalls::name(nr).map_or_else(|| format!("syscall_{nr}"), str::to_string)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FdView {
    pub fd: u32,
    pub kind: FdKind,
    /// The kind is the syscall's guess; /proc has not confirmed it yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
    pub birth: BirthView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dup_of: Option<u32>,
}

impl FdView {
    pub fn of(fd: u32, entry: &FdEntry, now_ns: u64, calls: &CallLog) -> Self {
        FdView {
            fd,
            kind: entry.kind,
            provisional: entry.provisional,
            birth: BirthView::of(&entry.birth, now_ns, calls),
            dup_of: (entry.source_fd != NO_FD).then_some(entry.source_fd),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadView {
    pub tid: u32,
    pub name: String,
    pub start: String,
    pub age_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_tid: Option<u32>,
    pub origin: Origin,
    /// The API call its creator had in flight when it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_call: Option<CallRefView>,
    /// The first API call it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call: Option<CallRefView>,
}

impl ThreadView {
    pub fn of(tid: u32, thread: &ThreadEntry, now_ns: u64, calls: &CallLog) -> Self {
        ThreadView {
            tid,
            name: comm_str(&thread.name),
            start: time::rfc3339_of_boot(thread.start_ns),
            age_s: time::age_s(thread.start_ns, now_ns),
            creator_tid: thread.creator,
            origin: thread.origin,
            birth_call: thread.birth_call.as_ref().map(|c| CallRefView::of(c, calls)),
            first_call: thread.first_call.as_ref().map(|c| CallRefView::of(c, calls)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureView {
    pub time: String,
    pub tid: u32,
    pub syscall: String,
    /// "EMFILE" or "ENFILE".
    pub error: String,
}

impl FailureView {
    pub fn of(failure: &FailedSyscall) -> Self {
        FailureView {
            time: time::rfc3339_of_boot(failure.ts_ns),
            tid: failure.tid,
            syscall: syscall_name(failure.syscall),
            error: match failure.errno {
                24 => "EMFILE".to_string(),
                23 => "ENFILE".to_string(),
                n => format!("errno {n}"),
            },
        }
    }
}

/// One watched process as the daemon's ledger has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// When the process started (from /proc, or the fork event).
    pub started: String,
    pub watched_since: String,
    pub reason: WatchReason,
    pub fds: Vec<FdView>,
    pub threads: Vec<ThreadView>,
    pub counts: BTreeMap<FdKind, usize>,
    pub failures: Vec<FailureView>,
    pub failures_total: u64,
    /// Its sockets with TCP state and connect records.
    pub sockets: Vec<SocketView>,
    /// Connection health per remote endpoint.
    pub endpoints: Vec<EndpointView>,
}

impl ProcessView {
    pub fn of(ledger: &Ledger, process: &Process, labels: &Labels, now_ns: u64) -> Self {
        let mut fds: Vec<FdView> = process
            .fds
            .iter()
            .map(|(fd, entry)| FdView::of(*fd, entry, now_ns, &process.calls))
            .collect();
        fds.sort_by_key(|f| f.fd);
        let mut threads: Vec<ThreadView> = process
            .threads
            .iter()
            .map(|(tid, t)| ThreadView::of(*tid, t, now_ns, &process.calls))
            .collect();
        threads.sort_by_key(|t| t.tid);
        ProcessView {
            pid: process.pid,
            comm: process.comm.clone(),
            cmdline: crate::redact::cmdline(&process.cmdline),
            started: time::rfc3339_of_boot(process.start_ns),
            watched_since: time::rfc3339_of_boot(process.watched_since_ns),
            reason: process.reason.clone(),
            fds,
            threads,
            counts: process.counts(),
            failures: process.failures.iter().map(FailureView::of).collect(),
            failures_total: process.failures_total,
            sockets: socket_views(ledger, process, labels, now_ns),
            endpoints: endpoint_views(process, labels),
        }
    }
}
