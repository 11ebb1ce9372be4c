//! The socket part of a snapshot: sock_diag states joined to fds, labels,
//! unix peers, the daemon's state ages and connect records, and one summary
//! per remote endpoint.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use super::FdSnapshot;
use crate::{
    labels::Labels,
    ledger::view::{EndpointView, SocketView},
    proc::{self, FdLink},
    sockdiag::{Protocol, SocketInfo, SocketTable},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SocketSnapshot {
    #[serde(flatten)]
    pub info: SocketInfo,
    /// The remote endpoint's name (ironic-api, keystone, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Unix sockets: the path of the socket at the other end, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_path: Option<String>,
    /// From the daemon: the socket's TCP life (state age, connect record, other holders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Box<SocketView>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// TCP sockets to it, by state.
    pub states: BTreeMap<Cow<'static, str>, usize>,
    /// Age in CLOSE_WAIT of the oldest such socket (needs the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_close_wait_s: Option<f64>,
    /// Connect counts and latency (needs the daemon). Boxed: a process can
    /// have thousands of endpoints, few with a connect record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<EndpointView>>,
}

/// sock_diag for the daemon's network namespace, /proc/PID/net for sockets
/// it does not know (the process lives in another namespace).
pub fn socket_table(pid: u32, links: &[FdLink], problems: &mut Vec<String>) -> SocketTable {
    let inodes: Vec<u64> = links
        .iter()
        .filter(|l| l.target.starts_with("socket:["))
        .filter_map(|l| proc::link_inode(&l.target))
        .collect();
    if inodes.is_empty() {
        return SocketTable::default();
    }
    let mut table = SocketTable::dump().unwrap_or_else(|e| {
        problems.push(format!("sock_diag: {e}; using /proc/{pid}/net"));
        SocketTable::default()
    });
    if inodes.iter().any(|i| !table.by_inode.contains_key(i)) {
        for (inode, info) in SocketTable::from_proc_net(pid).by_inode {
            table.by_inode.entry(inode).or_insert(info);
        }
    }
    table
}

/// A socket and the target string to show for it; `table` gives a unix
/// socket's peer path.
pub fn describe(info: SocketInfo, table: &SocketTable, labels: &Labels) -> (SocketSnapshot, String) {
    let peer_path = info
        .peer_inode
        .and_then(|peer| table.by_inode.get(&peer))
        .map(|peer| peer.local.clone())
        .filter(|path| !path.is_empty());
    let label = match info.protocol {
        Protocol::Unix => None,
        _ => labels.label_of(&info.remote).map(str::to_string),
    };
    let shown = match info.protocol {
        Protocol::Unix => {
            let name = if info.local.is_empty() {
                "(unnamed)"
            } else {
                &info.local
            };
            let peer = peer_path
                .as_deref()
                .map(|p| format!(" -> {p}"))
                .unwrap_or_default();
            format!(
                "unix {} {name}{peer} {}",
                info.unix_type.as_deref().unwrap_or(""),
                info.state
            )
        }
        _ => {
            let label = label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
            format!("{} -> {}{label} {}", info.local, info.remote, info.state)
        }
    };
    (
        SocketSnapshot {
            info,
            label,
            peer_path,
            ledger: None,
        },
        shown,
    )
}

/// Attaches the daemon's view of each socket to the fd that holds it.
pub fn merge_ledger(fds: &mut [FdSnapshot], sockets: &[SocketView]) {
    let by_inode: BTreeMap<u64, &SocketView> = sockets.iter().map(|s| (s.inode, s)).collect();
    for socket in fds.iter_mut().filter_map(|f| f.socket.as_mut()) {
        socket.ledger = by_inode
            .get(&socket.info.inode)
            .map(|view| Box::new((*view).clone()));
    }
}

/// One summary per remote endpoint of the process's TCP connections.
pub fn endpoints(fds: &[FdSnapshot], health: &[EndpointView], labels: &Labels) -> Vec<EndpointSummary> {
    // Keyed by the sockets' own strings: one allocation per endpoint, not per socket.
    let mut by_endpoint: BTreeMap<&str, EndpointSummary> = BTreeMap::new();
    let blank = |endpoint: &str| EndpointSummary {
        endpoint: endpoint.to_string(),
        label: labels.label_of(endpoint).map(str::to_string),
        states: BTreeMap::new(),
        oldest_close_wait_s: None,
        health: None,
    };
    for socket in fds.iter().filter_map(|f| f.socket.as_ref()) {
        let info = &socket.info;
        if info.protocol != Protocol::Tcp || info.state == "LISTEN" {
            continue;
        }
        let remote = info.remote.as_str();
        let summary = by_endpoint.entry(remote).or_insert_with(|| blank(remote));
        *summary.states.entry(info.state.clone()).or_default() += 1;
        if info.state == "CLOSE_WAIT"
            && let Some(age) = socket.ledger.as_ref().map(|l| l.age_in_state_s)
        {
            summary.oldest_close_wait_s = Some(summary.oldest_close_wait_s.map_or(age, |o: f64| o.max(age)));
        }
    }
    for view in health {
        by_endpoint
            .entry(&view.endpoint)
            .or_insert_with(|| blank(&view.endpoint))
            .health = Some(Box::new(view.clone()));
    }
    by_endpoint.into_values().collect()
}
