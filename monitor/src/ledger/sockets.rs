//! Sockets of watched processes: TCP state with the time it was entered,
//! connect attempts and their outcome, and per-endpoint connection health.
//!
//! Keyed by inode, the one identity the kernel events (through SOCKS),
//! /proc (`socket:[N]`) and sock_diag share. A socket may be held by several
//! processes (fork, dup, SCM_RIGHTS); it leaves the table with its last fd.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use monitor_common::{
    ConnectEvent, EventHeader, EventKind, FdEvent, NO_FD, SockEvent, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN,
    TCP_SYN_SENT, Tuple,
    errno::{EALREADY, ECONNREFUSED, EINPROGRESS, EISCONN, ETIMEDOUT, interrupted},
    syscalls as nr,
};
use serde::{Deserialize, Serialize};

use super::{FdId, Ledger};
use crate::calls::CallRef;
use crate::sockdiag::SocketTable;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct SocketEntry {
    /// The process whose endpoint statistics its connects count in.
    pub owner_pid: u32,
    pub tuple: Option<Tuple>,
    /// TCP state number, when known.
    pub state: Option<u8>,
    pub state_since_ns: u64,
    /// The transition into `state` was seen; else the socket was first seen in it then.
    pub state_seen: bool,
    /// The kernel knows its struct sock (state changes will arrive as events).
    pub kernel_seen: bool,
    pub connect: Option<ConnectRecord>,
    /// The first API call sent on it (it was opened for that call).
    pub first_call: Option<CallRef>,
    /// The last API call sent on it.
    pub last_call: Option<CallRef>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConnectRecord {
    pub remote: SocketAddr,
    pub started_ns: u64,
    pub outcome: ConnectOutcome,
    /// connect() returned EINPROGRESS: the outcome came later.
    pub nonblocking: bool,
    /// When it went from SYN_SENT to CLOSE with no verdict yet: the error
    /// report (refused, timed out) follows that transition, so the verdict
    /// "abandoned" waits a grace period (see [`Ledger::settle_connects`]).
    pub closed_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ConnectOutcome {
    InProgress,
    Established {
        latency_ms: f64,
    },
    Refused,
    TimedOut,
    /// Closed by the application while connecting: its own connect timeout.
    Abandoned,
    Failed {
        errno: i32,
    },
}

/// Upper bounds of the connect latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`], then one for larger values.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ms: f64,
}

impl Histogram {
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ms += other.sum_ms;
    }

    pub fn observe(&mut self, ms: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        }
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The bucket bound under which a fraction `q` of observations fall.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// Remote endpoints whose connection health one process keeps (nova-compute
/// talks to a handful: Ironic, Keystone, Placement, Neutron, Glance, ...).
pub const MAX_ENDPOINTS: usize = 256;

/// Connection health towards one remote address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub connects: u64,
    pub established: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl EndpointStats {
    fn count(&mut self, outcome: ConnectOutcome) {
        match outcome {
            ConnectOutcome::InProgress => {}
            ConnectOutcome::Established { latency_ms } => {
                self.established += 1;
                self.latency.observe(latency_ms);
            }
            ConnectOutcome::Refused => self.refused += 1,
            ConnectOutcome::TimedOut | ConnectOutcome::Abandoned => self.timeouts += 1,
            ConnectOutcome::Failed { .. } => self.errors += 1,
        }
    }
}

/// How a connect attempt ended, before it is turned into an outcome.
enum Verdict {
    EstablishedAt(u64),
    /// SYN_SENT -> CLOSE and no error reported within the grace period.
    Closed,
    Errno(i32),
}

fn outcome_of_errno(errno: i32) -> ConnectOutcome {
    match errno {
        ECONNREFUSED => ConnectOutcome::Refused,
        ETIMEDOUT => ConnectOutcome::TimedOut,
        other => ConnectOutcome::Failed { errno: other },
    }
}

fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn local_of(tuple: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.family, &tuple.saddr), tuple.sport)
}

pub fn remote_of(tuple: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(tuple.family, &tuple.daddr), tuple.dport)
}

/// The kernel's tuple for a connection sock_diag reports (`ip:port` strings).
pub fn tuple_of(local: &str, remote: &str) -> Option<Tuple> {
    let (local, remote): (SocketAddr, SocketAddr) = (local.parse().ok()?, remote.parse().ok()?);
    let mut tuple = Tuple {
        sport: local.port(),
        dport: remote.port(),
        ..Tuple::default()
    };
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            tuple.family = AF_INET;
            tuple.saddr[..4].copy_from_slice(&l.octets());
            tuple.daddr[..4].copy_from_slice(&r.octets());
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => {
            tuple.family = AF_INET6;
            tuple.saddr = l.octets();
            tuple.daddr = r.octets();
        }
        _ => return None,
    }
    Some(tuple)
}

/// What a sock_diag pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiagFixes {
    pub states_fixed: u64,
    pub sockets_gone: u64,
}

impl Ledger {
    /// The entry of a socket a process holds, created on first sight.
    pub fn socket_entry(&mut self, inode: u64, owner_pid: u32, now_ns: u64) -> &mut SocketEntry {
        self.sockets.entry(inode).or_insert_with(|| SocketEntry {
            owner_pid,
            tuple: None,
            state: None,
            state_since_ns: now_ns,
            state_seen: false,
            kernel_seen: false,
            connect: None,
            first_call: None,
            last_call: None,
        })
    }

    /// Drops a socket no watched process holds any more.
    pub(super) fn release_socket(&mut self, inode: u64) {
        if !self.processes.values().any(|p| p.fds.holds_socket(inode)) {
            self.sockets.remove(&inode);
        }
    }

    /// The connection health record of `remote`. A process that talks to more
    /// than [`MAX_ENDPOINTS`] remotes keeps the busiest: the one with the
    /// fewest connects goes, and the eviction is counted.
    pub(super) fn endpoint(&mut self, pid: u32, remote: SocketAddr) -> Option<&mut EndpointStats> {
        let process = self.processes.get_mut(&pid)?;
        if process.endpoints.len() >= MAX_ENDPOINTS && !process.endpoints.contains_key(&remote) {
            let coldest = process
                .endpoints
                .iter()
                .min_by_key(|(_, s)| s.connects)
                .map(|(r, _)| *r);
            if let Some(coldest) = coldest {
                process.endpoints.remove(&coldest);
                self.counters.endpoints_evicted += 1;
            }
        }
        Some(process.endpoints.entry(remote).or_default())
    }

    /// The probes learn a TCP socket when its owner's connect() or listen()
    /// moves it out of CLOSE: that event may name an fd the ledger holds with
    /// no inode yet (socket() is not walked), which is bound to the socket
    /// here. Only those events: a late one about a closed socket could name
    /// a reused fd.
    fn bind_socket_fd(&mut self, event: &SockEvent) {
        let first = event.oldstate == TCP_CLOSE && matches!(event.newstate, TCP_SYN_SENT | TCP_LISTEN);
        if !first || self.sockets.contains_key(&event.inode) {
            return;
        }
        let (tgid, ts) = (event.header.tgid, event.header.ts_ns);
        let Some(process) = self.processes.get_mut(&tgid) else {
            return;
        };
        let held = process.fds.get_mut(&event.fd);
        let unbound_socket = held
            .as_ref()
            .is_some_and(|h| h.entry.inode == 0 && (h.entry.kind.is_socket() || h.entry.provisional));
        // What only /proc showed under the number before this connect is
        // stale when it is not this socket: it went without a record (its
        // open and close cancelled in the kernel), and so did, so far, the
        // creation of the socket now there.
        let stale = held.as_ref().is_some_and(|h| {
            h.entry.birth.origin.is_unseen() && h.entry.birth.ts_ns <= ts && !unbound_socket
        });
        let Some(mut held) = held.filter(|_| !stale) else {
            // Its creation is still held back on the CPU the thread left
            // after socket(): it will be bound when that record arrives.
            process.early_binds.insert(event.fd, (event.inode, ts));
            self.socket_entry(event.inode, tgid, ts);
            return;
        };
        if !unbound_socket || held.entry.birth.ts_ns > ts {
            return;
        }
        let bound = FdId {
            fd: event.fd,
            born_ns: held.entry.birth.ts_ns,
        };
        held.bind_tcp(event.inode);
        // dups made before the connect hold the same socket.
        for copy in process.unbound_copies.take_group(bound) {
            if process.fds.is_unbound(copy)
                && let Some(mut entry) = process.fds.get_mut(&copy.fd)
            {
                entry.bind_tcp(event.inode);
            }
        }
        self.socket_entry(event.inode, tgid, ts);
    }

    /// A state change of a watched TCP socket.
    pub(super) fn sock_state(&mut self, event: &SockEvent) {
        if event.born_ns != 0 {
            self.fd_open(&creation_of(event));
        }
        self.bind_socket_fd(event);
        let Some(entry) = self.sockets.get_mut(&event.inode) else {
            // Closed by its last fd already: nothing holds it.
            self.counters.socket_events_unowned += 1;
            return;
        };
        let ts = event.header.ts_ns;
        entry.state = Some(event.newstate);
        entry.state_since_ns = ts;
        entry.state_seen = true;
        entry.kernel_seen = true;
        entry.tuple = Some(event.tuple);
        let owner = entry.owner_pid;
        let remote = remote_of(&event.tuple);
        match (event.oldstate, event.newstate) {
            (_, TCP_SYN_SENT) => {
                entry.connect = Some(ConnectRecord {
                    remote,
                    started_ns: ts,
                    outcome: ConnectOutcome::InProgress,
                    nonblocking: false,
                    closed_ns: None,
                });
                if let Some(stats) = self.endpoint(owner, remote) {
                    stats.connects += 1;
                }
            }
            (TCP_SYN_SENT, TCP_ESTABLISHED) => self.finish_connect(event.inode, Verdict::EstablishedAt(ts)),
            (TCP_SYN_SENT, TCP_CLOSE) => {
                if let Some(record) = entry.connect.as_mut() {
                    record.closed_ns = Some(ts);
                }
                // The probe read the error the kernel closed it for (0: none,
                // the application gave up or the close came first).
                if event.error != 0 {
                    self.finish_connect(event.inode, Verdict::Errno(event.error));
                }
            }
            _ => {}
        }
    }

    /// Settles a socket's connect attempt once (the first verdict wins:
    /// an error report comes before the SYN_SENT -> CLOSE it causes).
    fn finish_connect(&mut self, inode: u64, verdict: Verdict) {
        let Some(entry) = self.sockets.get_mut(&inode) else {
            return;
        };
        let owner = entry.owner_pid;
        let Some(record) = entry
            .connect
            .as_mut()
            .filter(|r| r.outcome == ConnectOutcome::InProgress)
        else {
            return;
        };
        record.outcome = match verdict {
            Verdict::EstablishedAt(ts) => ConnectOutcome::Established {
                latency_ms: ts.saturating_sub(record.started_ns) as f64 / 1e6,
            },
            Verdict::Closed => ConnectOutcome::Abandoned,
            Verdict::Errno(errno) => outcome_of_errno(errno),
        };
        let (remote, outcome) = (record.remote, record.outcome);
        if let Some(stats) = self.endpoint(owner, remote) {
            stats.count(outcome);
        }
    }

    /// Connects that went to CLOSE more than `grace_ns` ago with no error
    /// reported: the application gave up (its own connect timeout).
    pub fn settle_connects(&mut self, now_ns: u64, grace_ns: u64) {
        let abandoned: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, e)| {
                e.connect.as_ref().is_some_and(|r| {
                    r.outcome == ConnectOutcome::InProgress
                        && r.closed_ns
                            .is_some_and(|closed| now_ns.saturating_sub(closed) >= grace_ns)
                })
            })
            .map(|(inode, _)| *inode)
            .collect();
        for inode in abandoned {
            self.finish_connect(inode, Verdict::Closed);
        }
    }

    /// A watched socket's error: refused, timed out, unreachable (a connect's
    /// verdict), or reset.
    pub(super) fn sock_error(&mut self, event: &SockEvent) {
        if !self.sockets.contains_key(&event.inode) {
            // Closed by its last fd already: nothing holds it.
            self.counters.socket_events_unowned += 1;
            return;
        }
        // The kernel wakes the owner before this tracepoint runs, so the
        // owner's connect() or getsockopt(SO_ERROR) on another CPU may read
        // (and so clear) the error before the probe does: 0 says nothing. The
        // attempt is settled by its close's error, connect()'s return or
        // the value getsockopt(SO_ERROR) read.
        if event.error == 0 {
            self.counters.socket_errors_taken += 1;
            return;
        }
        self.finish_connect(event.inode, Verdict::Errno(event.error));
    }

    /// getsockopt(SO_ERROR) read a socket's pending error. If a connect is
    /// under way, that is its verdict: the owner may have read (and so
    /// cleared) it before either socket probe could. Any other error (a
    /// reset) the state changes tell.
    pub(super) fn connect_error_read(&mut self, event: &ConnectEvent) {
        self.counters.socket_errors_read += 1;
        if let Some(inode) = self.tcp_socket_of(event.header.tgid, event.fd) {
            self.finish_connect(inode, Verdict::Errno(-event.ret));
        }
    }

    /// The inode of the TCP socket a watched process holds at `fd`.
    fn tcp_socket_of(&self, tgid: u32, fd: u32) -> Option<u64> {
        self.processes
            .get(&tgid)
            .and_then(|p| p.fds.get(&fd))
            .filter(|e| e.kind == crate::fdkind::FdKind::SocketTcp)
            .map(|e| e.inode)
    }

    /// connect() returned, not simply with success. Only failures before any
    /// SYN was sent (no route, no free port) are counted here; the rest is
    /// counted from state changes. EISCONN and EALREADY report on an earlier
    /// call (eventlet asks again once the socket is writable): no attempt.
    pub(super) fn connect_returned(&mut self, event: &ConnectEvent) {
        let errno = -event.ret;
        let ip_family = event.family == AF_INET || event.family == AF_INET6;
        if !ip_family || errno <= 0 || errno == EISCONN || errno == EALREADY {
            return;
        }
        let h = &event.header;
        let Some(inode) = self.tcp_socket_of(h.tgid, event.fd) else {
            return;
        };
        let remote = SocketAddr::new(ip(event.family, &event.addr), event.port);
        let record = self.sockets.get_mut(&inode).and_then(|e| e.connect.as_mut());
        if errno == EINPROGRESS {
            // The SYN left in this very call: the record is its.
            if let Some(record) = record {
                record.nonblocking = true;
            }
            return;
        }
        if interrupted(errno) {
            // A signal: the connection goes on without the caller, as if non-blocking.
            return;
        }
        // A failure of the attempt the socket's record follows (this call's
        // SYN, or an earlier non-blocking one's error asked for again),
        // unless that connection was made; else one that sent no SYN.
        let attempt = record.is_some_and(|r| !matches!(r.outcome, ConnectOutcome::Established { .. }));
        if attempt {
            self.finish_connect(inode, Verdict::Errno(errno));
        } else if let Some(stats) = self.endpoint(h.tgid, remote) {
            stats.connects += 1;
            stats.count(outcome_of_errno(errno));
        }
    }

    /// Brings socket states in line with sock_diag; returns the fixes and the
    /// TCP connections the kernel has not seen yet (to seed its TUPLES map).
    /// `dumped_at`: when the dump began. A state a record set since is newer
    /// than what the dump may say, and stays.
    pub fn apply_sock_diag(
        &mut self,
        table: &SocketTable,
        dumped_at: u64,
        now_ns: u64,
    ) -> (DiagFixes, Vec<(u64, Tuple)>) {
        let mut fixes = DiagFixes::default();
        let mut unseen = Vec::new();
        for (inode, entry) in self.sockets.iter_mut() {
            let Some(info) = table.by_inode.get(inode) else {
                continue;
            };
            if entry.state_seen && entry.state_since_ns >= dumped_at {
                continue;
            }
            if info.protocol != crate::sockdiag::Protocol::Tcp {
                continue;
            }
            let state = crate::sockdiag::tcp_state_number(&info.state);
            if entry.state != state {
                if entry.state.is_some() {
                    fixes.states_fixed += 1;
                }
                entry.state = state;
                entry.state_since_ns = now_ns;
                entry.state_seen = false;
            }
            if entry.tuple.is_none() {
                entry.tuple = tuple_of(&info.local, &info.remote);
            }
            if !entry.kernel_seen
                && state != Some(crate::sockdiag::TCP_LISTEN)
                && let Some(tuple) = entry.tuple
            {
                unseen.push((*inode, tuple));
            }
        }
        self.counters.socket_states_fixed += fixes.states_fixed;
        (fixes, unseen)
    }

    /// Socket inodes the ledger holds, for the kernel maps' garbage collection.
    pub fn socket_inodes(&self) -> HashMap<u64, u32> {
        self.sockets
            .iter()
            .map(|(inode, e)| (*inode, e.owner_pid))
            .collect()
    }
}

/// The socket() creation a SYN_SENT record carries (`SockEvent.born_ns`):
/// the connecting thread's, held back on its CPU until the connect.
fn creation_of(event: &SockEvent) -> FdEvent {
    FdEvent {
        header: EventHeader {
            kind: EventKind::FdOpen as u32,
            syscall: nr::SOCKET,
            ts_ns: event.born_ns,
            ..event.header
        },
        fd: event.fd,
        fd2: NO_FD,
        source_fd: NO_FD,
        detail: event.born_detail,
        inode: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let mut h = Histogram::default();
        for ms in [0.05, 0.3, 0.3, 0.9, 40.0] {
            h.observe(ms);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.quantile_ms(0.5), Some(0.5));
        assert_eq!(h.quantile_ms(0.99), Some(50.0));
        h.observe(1e6);
        assert_eq!(h.quantile_ms(1.0), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn tuples_round_trip_through_addresses() {
        let tuple = tuple_of("127.0.0.1:40000", "10.0.0.2:6385").unwrap();
        assert_eq!(local_of(&tuple).to_string(), "127.0.0.1:40000");
        assert_eq!(remote_of(&tuple).to_string(), "10.0.0.2:6385");
        let v6 = tuple_of("[::1]:1", "[fe80::1]:2").unwrap();
        assert_eq!(remote_of(&v6).to_string(), "[fe80::1]:2");
        assert_eq!(tuple_of("127.0.0.1:1", "[::1]:2"), None);
        assert_eq!(tuple_of("garbage", "x"), None);
    }
}
