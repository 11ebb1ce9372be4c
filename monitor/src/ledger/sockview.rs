//! Sockets and endpoints in the daemon's JSON answers.

use serde::{Deserialize, Serialize};

use super::{
    Ledger, Process,
    sockets::{ConnectOutcome, EndpointStats, Histogram, local_of, remote_of},
};
use crate::{calls::view::CallRefView, labels::Labels, sockdiag::tcp_state_name, time};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub fd: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketView {
    pub inode: u64,
    /// This process's fds that hold the socket.
    pub fds: Vec<u32>,
    /// Other watched processes holding it too (fork, SCM_RIGHTS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<Holder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When it entered `state` (or, if `state_seen` is false, when leakmon first saw it there).
    pub state_since: String,
    pub age_in_state_s: f64,
    pub state_seen: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectView>,
    /// The first API call sent on it (it was opened for that call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call: Option<CallRefView>,
    /// The last API call sent on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call: Option<CallRefView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectView {
    pub remote: String,
    pub started: String,
    #[serde(flatten)]
    pub outcome: ConnectOutcome,
    pub nonblocking: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub connects: u64,
    pub established: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    pub latency: Histogram,
}

impl EndpointView {
    fn of(endpoint: String, label: Option<String>, stats: &EndpointStats) -> Self {
        EndpointView {
            endpoint,
            label,
            connects: stats.connects,
            established: stats.established,
            refused: stats.refused,
            timeouts: stats.timeouts,
            errors: stats.errors,
            latency_p50_ms: stats.latency.quantile_ms(0.5),
            latency_p99_ms: stats.latency.quantile_ms(0.99),
            latency: stats.latency.clone(),
        }
    }
}

/// The sockets `process` holds, most recent state change first.
pub fn socket_views(ledger: &Ledger, process: &Process, labels: &Labels, now_ns: u64) -> Vec<SocketView> {
    let mut views: Vec<SocketView> = process
        .fds
        .sockets()
        .filter_map(|inode| {
            let entry = ledger.sockets.get(&inode)?;
            let mut fds: Vec<u32> = process
                .fds
                .iter()
                .filter(|(_, e)| e.inode == inode)
                .map(|(fd, _)| *fd)
                .collect();
            fds.sort();
            let shared_with = ledger
                .processes
                .values()
                .filter(|p| p.pid != process.pid && p.fds.holds_socket(inode))
                .flat_map(|p| {
                    p.fds
                        .iter()
                        .filter(|(_, e)| e.inode == inode)
                        .map(|(fd, _)| Holder { pid: p.pid, fd: *fd })
                })
                .collect();
            let remote = entry.tuple.as_ref().map(remote_of);
            Some(SocketView {
                inode,
                fds,
                shared_with,
                state: entry.state.map(|s| tcp_state_name(s).to_string()),
                state_since: time::rfc3339_of_boot(entry.state_since_ns),
                age_in_state_s: time::age_s(entry.state_since_ns, now_ns),
                state_seen: entry.state_seen,
                local: entry.tuple.as_ref().map(|t| local_of(t).to_string()),
                remote: remote.map(|r| r.to_string()),
                label: remote.and_then(|r| labels.label(&r)).map(str::to_string),
                connect: entry.connect.as_ref().map(|c| ConnectView {
                    remote: c.remote.to_string(),
                    started: time::rfc3339_of_boot(c.started_ns),
                    outcome: c.outcome,
                    nonblocking: c.nonblocking,
                }),
                first_call: entry
                    .first_call
                    .as_ref()
                    .map(|c| CallRefView::of(c, &process.calls)),
                last_call: entry
                    .last_call
                    .as_ref()
                    .map(|c| CallRefView::of(c, &process.calls)),
            })
        })
        .collect();
    views.sort_by(|a, b| a.age_in_state_s.total_cmp(&b.age_in_state_s));
    views
}

/// Connection health per remote endpoint of `process`.
pub fn endpoint_views(process: &Process, labels: &Labels) -> Vec<EndpointView> {
    let mut views: Vec<EndpointView> = process
        .endpoints
        .iter()
        .map(|(remote, stats)| {
            EndpointView::of(
                remote.to_string(),
                labels.label(remote).map(str::to_string),
                stats,
            )
        })
        .collect();
    views.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    views
}
