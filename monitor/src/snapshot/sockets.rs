//! The socket part of a snapshot: sock_diag states joined to fds, labels,
//! unix peers, the daemon's state ages and connect records, and one summary
//! per remote endpoint.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::FdSnapshot;
use crate::{
    labels::Labels,
    ledger::view::{EndpointView, SocketView},
    proc::{self, FdLink},
    sockdiag::{Protocol, SocketInfo, SocketTable},
};

// Maps keyed by addresses, one lookup per socket: foldhash halves the
// endpoint summaries' time against SipHash.
use crate::fastmap::{FastMap, FastSet};

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
    /// The remote address; for `inbound`, the process's own listening address.
    pub endpoint: String,
    /// Connections the process accepted on its listener at `endpoint`, not
    /// ones it made: one summary per listener, not one per client port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inbound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// TCP sockets to it, by state.
    pub states: StateCounts,
    /// Age in CLOSE_WAIT of the oldest such socket (needs the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_close_wait_s: Option<f64>,
    /// Connect counts and latency (needs the daemon). Boxed: a process can
    /// have thousands of endpoints, few with a connect record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<EndpointView>>,
}

/// Sockets by state name, in name order; a JSON object. A short vector, not
/// a map: a process can have thousands of endpoints with a socket or two
/// each, and a map's first node alone is hundreds of bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts(Vec<(Cow<'static, str>, usize)>);

impl StateCounts {
    pub fn add(&mut self, state: Cow<'static, str>) {
        match self.0.binary_search_by(|(name, _)| name.as_ref().cmp(&state)) {
            Ok(at) => self.0[at].1 += 1,
            Err(at) => {
                // Most endpoints see one state: no room for four.
                self.0.reserve_exact(1);
                self.0.insert(at, (state, 1));
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0.iter().map(|(name, n)| (name.as_ref(), *n))
    }
}

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StateCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by_name = BTreeMap::<String, usize>::deserialize(deserializer)?;
        Ok(StateCounts(
            by_name.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        ))
    }
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
            // Pushed, not formatted: the formatting machinery cost more than the rest.
            let mut shown = String::with_capacity(
                info.local.len()
                    + info.remote.len()
                    + info.state.len()
                    + label.as_ref().map_or(0, |l| l.len() + 3)
                    + 5,
            );
            for part in [&info.local, " -> ", &info.remote] {
                shown.push_str(part);
            }
            if let Some(label) = &label {
                for part in [" (", label, ")"] {
                    shown.push_str(part);
                }
            }
            shown.push(' ');
            shown.push_str(&info.state);
            shown
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

/// One summary per remote endpoint of the process's TCP connections, and one
/// per listener of the process for the connections it accepted there.
pub fn endpoints(fds: &[FdSnapshot], health: &[EndpointView], labels: &Labels) -> Vec<EndpointSummary> {
    let listeners = Listeners::of(fds);
    // Indexed by the sockets' own strings (one allocation per endpoint, not
    // per socket), sorted once at the end.
    // At most one per socket: reserved, not grown (untouched pages cost nothing).
    let sockets = fds.iter().filter(|f| f.socket.is_some()).count() + health.len();
    let mut index: FastMap<(&str, bool), usize> =
        FastMap::with_capacity_and_hasher(sockets, Default::default());
    let mut summaries: Vec<EndpointSummary> = Vec::with_capacity(sockets);
    for socket in fds.iter().filter_map(|f| f.socket.as_ref()) {
        let info = &socket.info;
        if info.protocol != Protocol::Tcp || info.state == "LISTEN" {
            continue;
        }
        let key = match listeners.listener_of(&info.local) {
            Some(listener) => (listener, true),
            None => (info.remote.as_str(), false),
        };
        let summary = summary_of(key, &mut index, &mut summaries, labels);
        summary.states.add(info.state.clone());
        if info.state == "CLOSE_WAIT"
            && let Some(age) = socket.ledger.as_ref().map(|l| l.age_in_state_s)
        {
            summary.oldest_close_wait_s = Some(summary.oldest_close_wait_s.map_or(age, |o: f64| o.max(age)));
        }
    }
    for view in health {
        summary_of((&view.endpoint, false), &mut index, &mut summaries, labels).health =
            Some(Box::new(view.clone()));
    }
    summaries.sort_unstable_by(|a, b| (&a.endpoint, a.inbound).cmp(&(&b.endpoint, b.inbound)));
    summaries
}

/// The process's TCP listening addresses.
struct Listeners<'a> {
    /// By their exact local address.
    exact: FastSet<&'a str>,
    /// Listeners on every address (0.0.0.0, ::), by port.
    any_address: FastMap<u16, &'a str>,
}

impl<'a> Listeners<'a> {
    fn of(fds: &'a [FdSnapshot]) -> Listeners<'a> {
        let mut listeners = Listeners {
            exact: FastSet::default(),
            any_address: FastMap::default(),
        };
        let listening = fds
            .iter()
            .filter_map(|f| f.socket.as_ref())
            .map(|s| &s.info)
            .filter(|info| info.protocol == Protocol::Tcp && info.state == "LISTEN");
        for info in listening {
            match info.local.rsplit_once(':') {
                Some(("0.0.0.0" | "[::]", port)) => {
                    if let Ok(port) = port.parse() {
                        listeners.any_address.insert(port, &info.local);
                    }
                }
                _ => {
                    listeners.exact.insert(&info.local);
                }
            }
        }
        listeners
    }

    /// The listener a connection with local address `local` was accepted on
    /// (a connection the process made has an ephemeral port no listener has).
    fn listener_of(&self, local: &str) -> Option<&'a str> {
        if self.exact.is_empty() && self.any_address.is_empty() {
            return None;
        }
        if let Some(exact) = self.exact.get(local) {
            return Some(*exact);
        }
        let port = local.rsplit_once(':')?.1.parse().ok()?;
        self.any_address.get(&port).copied()
    }
}

/// The summary of `(endpoint, inbound)`, added blank on first sight.
fn summary_of<'a, 's>(
    (endpoint, inbound): (&'a str, bool),
    index: &mut FastMap<(&'a str, bool), usize>,
    summaries: &'s mut Vec<EndpointSummary>,
    labels: &Labels,
) -> &'s mut EndpointSummary {
    let at = *index.entry((endpoint, inbound)).or_insert_with(|| {
        summaries.push(EndpointSummary {
            endpoint: endpoint.to_string(),
            inbound,
            label: labels.label_of(endpoint).map(str::to_string),
            states: StateCounts::default(),
            oldest_close_wait_s: None,
            health: None,
        });
        summaries.len() - 1
    });
    &mut summaries[at]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdkind::FdKind;

    fn tcp(fd: u32, remote: &str, state: &'static str) -> FdSnapshot {
        tcp_from(fd, &format!("127.0.0.1:{}", 40000 + fd), remote, state)
    }

    fn tcp_from(fd: u32, local: &str, remote: &str, state: &'static str) -> FdSnapshot {
        let info = SocketInfo {
            protocol: Protocol::Tcp,
            inode: 1000 + u64::from(fd),
            state: state.into(),
            local: local.to_string(),
            remote: remote.to_string(),
            unix_type: None,
            peer_inode: None,
        };
        let (socket, target) = describe(info, &SocketTable::default(), &Labels::default());
        FdSnapshot {
            fd,
            kind: FdKind::SocketTcp,
            target,
            socket: Some(Box::new(socket)),
            birth: None,
        }
    }

    #[test]
    fn one_summary_per_remote_in_order_with_states_by_name() {
        let fds = [
            tcp(3, "127.0.0.1:6385", "ESTABLISHED"),
            tcp(4, "10.0.0.9:5000", "CLOSE_WAIT"),
            tcp(5, "127.0.0.1:6385", "CLOSE_WAIT"),
            tcp(6, "127.0.0.1:6385", "ESTABLISHED"),
            tcp(7, "0.0.0.0:0", "LISTEN"),
        ];
        assert_eq!(
            fds[0].target,
            "127.0.0.1:40003 -> 127.0.0.1:6385 (ironic-api) ESTABLISHED"
        );
        let summaries = endpoints(&fds, &[], &Labels::default());
        let shown: Vec<_> = summaries
            .iter()
            .map(|s| {
                (
                    s.endpoint.as_str(),
                    s.label.as_deref(),
                    s.states.iter().collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("10.0.0.9:5000", Some("keystone"), vec![("CLOSE_WAIT", 1)]),
                (
                    "127.0.0.1:6385",
                    Some("ironic-api"),
                    vec![("CLOSE_WAIT", 1), ("ESTABLISHED", 2)]
                ),
            ],
            "a listener is no endpoint"
        );
        let json = serde_json::to_value(&summaries[1].states).unwrap();
        assert_eq!(json, serde_json::json!({"CLOSE_WAIT": 1, "ESTABLISHED": 2}));
        let back: StateCounts = serde_json::from_value(json).unwrap();
        assert_eq!(back, summaries[1].states);
    }

    #[test]
    fn accepted_connections_are_summarised_per_listener() {
        let fds = [
            tcp_from(3, "127.0.0.1:8080", "0.0.0.0:0", "LISTEN"),
            tcp_from(4, "127.0.0.1:8080", "127.0.0.1:50001", "ESTABLISHED"),
            tcp_from(5, "127.0.0.1:8080", "127.0.0.1:50002", "CLOSE_WAIT"),
            tcp_from(6, "[::]:6385", "[::]:0", "LISTEN"),
            tcp_from(
                7,
                "[::ffff:10.0.0.5]:6385",
                "[::ffff:10.0.0.9]:50003",
                "ESTABLISHED",
            ),
            // The process's own connection to its listener is outbound.
            tcp_from(8, "127.0.0.1:50001", "127.0.0.1:8080", "ESTABLISHED"),
        ];
        let summaries = endpoints(&fds, &[], &Labels::default());
        let shown: Vec<_> = summaries
            .iter()
            .map(|s| {
                (
                    s.endpoint.as_str(),
                    s.inbound,
                    s.label.as_deref(),
                    s.states.iter().collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("127.0.0.1:8080", false, None, vec![("ESTABLISHED", 1)]),
                (
                    "127.0.0.1:8080",
                    true,
                    None,
                    vec![("CLOSE_WAIT", 1), ("ESTABLISHED", 1)]
                ),
                ("[::]:6385", true, Some("ironic-api"), vec![("ESTABLISHED", 1)]),
            ]
        );
        assert_eq!(serde_json::to_value(&summaries[1]).unwrap()["inbound"], true);
        assert!(
            serde_json::to_value(&summaries[0])
                .unwrap()
                .get("inbound")
                .is_none()
        );
    }
}
