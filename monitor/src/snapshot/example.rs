//! A snapshot with every optional part set, for the README's reference test.
//! Struct literals, not defaults: a field added to any part of a snapshot
//! fails to compile here until it is given a value, and then the test asks
//! for its documentation.

use std::collections::BTreeMap;

use super::{EndpointSummary, FdSnapshot, FdSource, Limits, Snapshot, SocketSnapshot, ThreadSnapshot};
use crate::{
    calls::{classify::CallKind, view::CallRefView},
    container::Placement,
    fdkind::FdKind,
    ledger::{
        Origin,
        sockets::{ConnectOutcome, Histogram},
        sockview::{ConnectView, EndpointView, Holder, SocketView},
        view::BirthView,
    },
    proc::Memory,
    sockdiag::{Protocol, SocketInfo},
};

const TIME: &str = "2026-11-23T10:00:00Z";

fn call() -> Option<CallRefView> {
    Some(CallRefView {
        id: 7,
        kind: CallKind::NodeGet,
        pattern: Some("GET /v1/nodes/{node}".into()),
        node: Some("node-1".into()),
    })
}

fn birth() -> Option<Box<BirthView>> {
    Some(Box::new(BirthView {
        time: TIME.into(),
        age_s: 1.0,
        tid: Some(101),
        thread: Some("nova-compute".into()),
        syscall: Some("socket".into()),
        origin: Origin::Syscall,
        call: call(),
    }))
}

/// A TCP socket with the daemon's view; `outcome` of its connect.
fn tcp(fd: u32, outcome: ConnectOutcome) -> FdSnapshot {
    let ledger = SocketView {
        inode: 900 + u64::from(fd),
        fds: vec![fd],
        shared_with: vec![Holder { pid: 43, fd: 9 }],
        state: Some("CLOSE_WAIT".into()),
        state_since: TIME.into(),
        age_in_state_s: 840.0,
        state_seen: true,
        local: Some("127.0.0.1:40112".into()),
        remote: Some("127.0.0.1:6385".into()),
        label: Some("ironic-api".into()),
        connect: Some(ConnectView {
            remote: "127.0.0.1:6385".into(),
            started: TIME.into(),
            outcome,
            nonblocking: true,
        }),
        first_call: call(),
        last_call: call(),
    };
    FdSnapshot {
        fd,
        kind: FdKind::SocketTcp,
        target: "127.0.0.1:40112 -> 127.0.0.1:6385 (ironic-api) CLOSE_WAIT".into(),
        socket: Some(Box::new(SocketSnapshot {
            info: SocketInfo {
                protocol: Protocol::Tcp,
                inode: 900 + u64::from(fd),
                state: "CLOSE_WAIT".into(),
                local: "127.0.0.1:40112".into(),
                remote: "127.0.0.1:6385".into(),
                unix_type: None,
                peer_inode: None,
            },
            label: Some("ironic-api".into()),
            peer_path: None,
            ledger: Some(Box::new(ledger)),
        })),
        birth: birth(),
    }
}

fn unix(fd: u32) -> FdSnapshot {
    FdSnapshot {
        fd,
        kind: FdKind::SocketUnix,
        target: "unix stream (unnamed) -> /run/privsep.sock ESTABLISHED".into(),
        socket: Some(Box::new(SocketSnapshot {
            info: SocketInfo {
                protocol: Protocol::Unix,
                inode: 950,
                state: "ESTABLISHED".into(),
                local: String::new(),
                remote: "peer inode 951".into(),
                unix_type: Some("stream".into()),
                peer_inode: Some(951),
            },
            label: None,
            peer_path: Some("/run/privsep.sock".into()),
            ledger: None,
        })),
        birth: birth(),
    }
}

fn endpoint() -> EndpointSummary {
    let mut summary = EndpointSummary {
        endpoint: "127.0.0.1:6385".into(),
        inbound: true,
        label: Some("ironic-api".into()),
        states: Default::default(),
        oldest_close_wait_s: Some(840.0),
        health: Some(Box::new(EndpointView {
            endpoint: "127.0.0.1:6385".into(),
            label: Some("ironic-api".into()),
            connects: 112,
            established: 110,
            refused: 0,
            timeouts: 2,
            errors: 0,
            latency_p50_ms: Some(0.4),
            latency_p99_ms: Some(3.0),
            latency: Histogram {
                buckets: vec![0; 17],
                count: 110,
                sum_ms: 52.0,
            },
        })),
    };
    summary.states.add("CLOSE_WAIT".into());
    summary
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        pid: 42,
        comm: "nova-compute".into(),
        cmdline: vec!["nova-compute".into()],
        placement: Placement {
            ns_pid: Some(1),
            container_id: Some("ab".repeat(32)),
        },
        limits: Limits {
            nofile_soft: Some(1024),
            nofile_hard: Some(4096),
        },
        memory: Some(Memory {
            resident_bytes: 1 << 27,
            anon_bytes: 1 << 26,
        }),
        counts: BTreeMap::from([(FdKind::SocketTcp, 2), (FdKind::SocketUnix, 1)]),
        fds: vec![
            tcp(3, ConnectOutcome::Established { latency_ms: 0.4 }),
            tcp(4, ConnectOutcome::Failed { errno: 101 }),
            unix(5),
        ],
        threads: vec![ThreadSnapshot {
            tid: 101,
            name: "nova-compute".into(),
            state: 'S',
            start: TIME.into(),
            age_s: 60.0,
            creator_tid: Some(42),
            birth_call: call(),
            first_call: call(),
        }],
        endpoints: vec![endpoint()],
        fd_source: FdSource::BpfIterator,
        daemon: false,
        daemon_note: Some("no birth records: no leakmon daemon".into()),
        problems: vec!["fd 7: No such file or directory".into()],
    }
}
