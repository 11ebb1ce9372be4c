//! The table against sock_diag, and the per-process endpoint cap.

use super::*;

/// sock_diag's answer: INODE, a TCP connection to Ironic in `state`.
fn diag_table(state: &'static str) -> SocketTable {
    let mut table = SocketTable::default();
    table.by_inode.insert(
        INODE,
        SocketInfo {
            protocol: Protocol::Tcp,
            inode: INODE,
            state: state.into(),
            local: "127.0.0.1:40000".into(),
            remote: "127.0.0.1:6385".into(),
            unix_type: None,
            peer_inode: None,
        },
    );
    table
}

#[test]
fn sock_diag_fixes_states_and_names_connections_the_kernel_has_not_seen() {
    let mut ledger = ledger();
    let scan = Scan {
        fds: vec![crate::proc::FdLink {
            fd: 9,
            target: format!("socket:[{INODE}]"),
        }],
        threads: vec![],
    };
    ledger.apply_scan(PID, &scan, Origin::BeforeStart, 1, |_, _| {
        crate::fdkind::FdKind::SocketTcp
    });
    let mut table = diag_table("CLOSE_WAIT");
    let (fixes, unseen) = ledger.apply_sock_diag(&table, 50, 50);
    assert_eq!(fixes.states_fixed, 0, "a first state is not a fix");
    assert_eq!(unseen, vec![(INODE, tuple())]);
    let entry = &ledger.sockets[&INODE];
    assert_eq!((entry.state, entry.state_seen), (Some(8), false));
    assert_eq!(ledger.holder_of(INODE), Some((PID, 9)));

    table.by_inode.get_mut(&INODE).unwrap().state = "LAST_ACK".into();
    let (fixes, _) = ledger.apply_sock_diag(&table, 60, 60);
    assert_eq!(fixes.states_fixed, 1);
}

/// A dump races with state changes: one whose record the ledger applied
/// after the dump began is newer than what the dump says.
#[test]
fn a_state_recorded_since_the_dump_began_is_kept() {
    let mut ledger = ledger();
    let entry = ledger.socket_entry(INODE, PID, 10);
    // CLOSE_WAIT from a record at 70.
    (entry.state, entry.state_since_ns, entry.state_seen) = (Some(8), 70, true);
    let table = diag_table("ESTABLISHED");
    let (fixes, _) = ledger.apply_sock_diag(&table, 65, 80);
    assert_eq!((fixes.states_fixed, ledger.sockets[&INODE].state), (0, Some(8)));
    // A record older than the dump: the dump knows better.
    let (fixes, _) = ledger.apply_sock_diag(&table, 75, 80);
    assert_eq!((fixes.states_fixed, ledger.sockets[&INODE].state), (1, Some(1)));
}

#[test]
fn endpoints_are_capped_keeping_the_busiest() {
    let mut ledger = ledger();
    let busy: SocketAddr = "127.0.0.1:6385".parse().unwrap();
    ledger.endpoint(PID, busy).unwrap().connects = 1000;
    for port in 1..=300u16 {
        let remote: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        ledger.endpoint(PID, remote).unwrap().connects = 1;
    }
    let process = &ledger.processes[&PID];
    assert_eq!(process.endpoints.len(), sockets::MAX_ENDPOINTS);
    assert_eq!(
        ledger.counters.endpoints_evicted,
        301 - sockets::MAX_ENDPOINTS as u64
    );
    assert_eq!(
        process.endpoints[&busy].connects, 1000,
        "the busiest endpoint is kept"
    );
}
