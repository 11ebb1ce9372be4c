//! `leakmon snapshot`: a process's open resources from /proc and sock_diag,
//! with birth records from the daemon's ledger when a daemon runs.

#[cfg(test)]
pub mod example;
mod listing;
mod pretty;
mod render;
mod sockets;

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

pub use listing::FdSource;
pub use pretty::to_writer as write_pretty_json;
pub use render::render_table;

pub use sockets::{EndpointSummary, SocketSnapshot};

use crate::{
    calls::view::CallRefView,
    control::{client, protocol::Request},
    fdkind::FdKind,
    labels::Labels,
    ledger::view::{BirthView, ProcessView},
    proc::{self, ProcError},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Its pid namespace and container, when it runs in one.
    #[serde(flatten)]
    pub placement: crate::container::Placement,
    pub limits: Limits,
    /// Resident memory; absent when /proc/PID/statm could not be read (see `problems`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<proc::Memory>,
    pub counts: BTreeMap<FdKind, usize>,
    pub fds: Vec<FdSnapshot>,
    pub threads: Vec<ThreadSnapshot>,
    /// TCP connections by remote endpoint, with connection health when the daemon runs.
    pub endpoints: Vec<EndpointSummary>,
    /// Where the fd table was read: the daemon's BPF iterator, or /proc.
    pub fd_source: FdSource,
    /// Whether birth records come from a running daemon.
    pub daemon: bool,
    /// Why there are no birth records, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_note: Option<String>,
    /// Entries that could not be read (the rest of the snapshot is complete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// RLIMIT_NOFILE soft limit; null when unlimited.
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FdSnapshot {
    pub fd: u32,
    pub kind: FdKind,
    /// Path, `pipe:[inode]`, `anon_inode:[...]`, or for sockets the
    /// addresses and state (`127.0.0.1:40112 -> 127.0.0.1:6385 CLOSE_WAIT`).
    pub target: String,
    // Boxed: most fds have neither, and a snapshot holds one entry per fd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<Box<SocketSnapshot>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth: Option<Box<BirthView>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThreadSnapshot {
    pub tid: u32,
    pub name: String,
    pub state: char,
    pub start: String,
    pub age_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator_tid: Option<u32>,
    /// The API call its creator had in flight when it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_call: Option<CallRefView>,
    /// The first API call it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call: Option<CallRefView>,
}

/// Takes a snapshot of `pid`. Fails only when the process cannot be read at all.
pub fn take(pid: u32, control_socket: &Path, labels: &Labels) -> Result<Snapshot, ProcError> {
    let info = proc::process_info(pid)?;
    let mut problems = Vec::new();
    let (nofile_soft, nofile_hard) = proc::nofile_limits(pid).unwrap_or_else(|e| {
        problems.push(e.to_string());
        (None, None)
    });
    // fd numbers stay below the soft limit, so it bounds the count (unknown: no bound).
    let most_fds = nofile_soft.map_or(usize::MAX, |n| n as usize);
    let (mut fds, fd_source) = listing::list(pid, control_socket, labels, most_fds, &mut problems)?;

    let memory = proc::memory(pid).map_err(|e| problems.push(e.to_string())).ok();
    let threads = match proc::list_threads(pid) {
        Ok(threads) => threads,
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    };
    let now = crate::time::boot_ns();
    let mut threads: Vec<ThreadSnapshot> = threads
        .into_iter()
        .map(|t| ThreadSnapshot {
            tid: t.tid,
            name: t.name,
            state: t.state,
            start: crate::time::rfc3339_of_boot(t.start_ns),
            age_s: crate::time::age_s(t.start_ns, now),
            creator_tid: None,
            birth_call: None,
            first_call: None,
        })
        .collect();

    let mut health = Vec::new();
    let (daemon, daemon_note) = match client::request(control_socket, &Request::Ledger { pid }) {
        Ok(data) => match serde_json::from_value::<ProcessView>(data) {
            Ok(view) => {
                merge_births(&mut fds, &mut threads, &view);
                sockets::merge_ledger(&mut fds, &view.sockets);
                health = view.endpoints;
                (true, None)
            }
            Err(e) => (false, Some(format!("unexpected answer from the daemon: {e}"))),
        },
        Err(e) => (false, Some(format!("no birth records: {e}"))),
    };

    let mut counts = BTreeMap::new();
    for fd in &fds {
        *counts.entry(fd.kind).or_default() += 1;
    }
    let endpoints = sockets::endpoints(&fds, &health, labels);
    Ok(Snapshot {
        placement: crate::container::Placement::of(pid),
        endpoints,
        pid,
        comm: info.comm,
        cmdline: crate::redact::cmdline(&info.cmdline),
        limits: Limits {
            nofile_soft,
            nofile_hard,
        },
        memory,
        counts,
        fds,
        threads,
        fd_source,
        daemon,
        daemon_note,
        problems,
    })
}

/// Adds the daemon's birth records where its entry is the same object as
/// /proc shows (the fd number may have been reused since).
fn merge_births(fds: &mut [FdSnapshot], threads: &mut [ThreadSnapshot], view: &ProcessView) {
    let births: BTreeMap<u32, _> = view.fds.iter().map(|f| (f.fd, f)).collect();
    for fd in fds.iter_mut() {
        if let Some(entry) = births.get(&fd.fd)
            && same_object(entry.kind, entry.provisional, fd.kind)
        {
            fd.birth = Some(Box::new(entry.birth.clone()));
        }
    }
    let starts: BTreeMap<u32, _> = view.threads.iter().map(|t| (t.tid, t)).collect();
    for thread in threads.iter_mut() {
        if let Some(known) = starts.get(&thread.tid) {
            thread.creator_tid = known.creator_tid;
            thread.birth_call = known.birth_call.clone();
            thread.first_call = known.first_call.clone();
        }
    }
}

/// Whether the ledger's entry can describe the object /proc shows now.
fn same_object(ledger: FdKind, provisional: bool, proc: FdKind) -> bool {
    provisional || ledger == proc || ledger == FdKind::Other || (ledger.is_socket() && proc.is_socket())
}

/// Snapshots of the processes `pids_named` selected. One that exits between
/// the selection and its snapshot is left out and its pid returned: it is
/// no error for the others (a `--match-comm` of short-lived processes).
pub fn take_matching(
    pids: &[u32],
    control_socket: &Path,
    labels: &Labels,
) -> Result<(Vec<Snapshot>, Vec<u32>), ProcError> {
    take_each(pids, |pid| take(pid, control_socket, labels))
}

fn take_each<T>(
    pids: &[u32],
    mut take: impl FnMut(u32) -> Result<T, ProcError>,
) -> Result<(Vec<T>, Vec<u32>), ProcError> {
    let (mut taken, mut gone) = (Vec::new(), Vec::new());
    for &pid in pids {
        match take(pid) {
            Ok(snapshot) => taken.push(snapshot),
            Err(ProcError::NoSuchProcess(_)) => gone.push(pid),
            Err(e) => return Err(e),
        }
    }
    Ok((taken, gone))
}

/// pids whose comm or argv[0]/argv[1] basename is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let discovery = crate::config::Discovery {
        names: vec![name.to_string()],
        cmdline_regex: vec![],
        pids: vec![],
        ..Default::default()
    };
    let matcher = crate::discovery::Matcher::new(&discovery).expect("no regex");
    let mut pids: Vec<u32> = proc::all_pids()
        .into_iter()
        .filter(|pid| proc::process_info(*pid).is_ok_and(|info| matcher.matches(&info).is_some()))
        .collect();
    pids.sort();
    pids
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd};

    use super::*;

    #[test]
    fn snapshot_of_self_without_daemon() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let snapshot = take(
            std::process::id(),
            Path::new("/nonexistent/leakmon.sock"),
            &Labels::default(),
        )
        .unwrap();
        assert!(!snapshot.daemon);
        assert!(
            snapshot
                .daemon_note
                .as_deref()
                .unwrap()
                .contains("no leakmon daemon")
        );
        let fd = snapshot
            .fds
            .iter()
            .find(|f| f.fd == listener.as_raw_fd() as u32)
            .unwrap();
        assert_eq!(fd.kind, FdKind::SocketTcp);
        assert!(fd.target.ends_with("LISTEN"), "{}", fd.target);
        // Other tests of this binary may hold connections meanwhile: only
        // this listener is known to have none.
        let address = listener.local_addr().unwrap().to_string();
        assert!(
            !snapshot.endpoints.iter().any(|e| e.endpoint == address),
            "a listener is not an endpoint: {:?}",
            snapshot.endpoints
        );
        assert!(snapshot.limits.nofile_soft.is_some());
        assert_eq!(snapshot.counts.values().sum::<usize>(), snapshot.fds.len());
        assert!(!snapshot.threads.is_empty());
    }

    #[test]
    fn unknown_pid_is_an_error() {
        let err = take(1 << 23, Path::new("/nonexistent"), &Labels::default()).unwrap_err();
        assert!(err.to_string().contains("no process with pid"), "{err}");
    }

    #[test]
    fn a_matched_process_that_exits_is_left_out_and_other_errors_stop() {
        let take = |pid: u32| match pid {
            2 => Err(ProcError::NoSuchProcess(2)),
            4 => Err(ProcError::Unreadable {
                pid,
                what: "fd",
                cause: std::io::Error::from_raw_os_error(libc::EACCES),
            }),
            _ => Ok(pid),
        };
        let (taken, gone) = take_each(&[1, 2, 3], take).unwrap();
        assert_eq!((taken, gone), (vec![1, 3], vec![2]));
        assert!(take_each(&[1, 4, 3], take).is_err());
    }
}
