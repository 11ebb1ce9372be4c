//! Connect outcomes: latency, refusals, errors read by the owner or
//! carried by the close, non-blocking connects asked again.

use super::*;

#[test]
fn a_connect_is_counted_with_its_latency() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    assert!(ledger.sockets.is_empty(), "socket() is not walked");
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    assert!(ledger.sockets[&INODE].kernel_seen);
    assert_eq!(
        ledger.processes[&PID].fds.get(&5).unwrap().inode,
        INODE,
        "bound at connect"
    );
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 12 * MS);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.refused), (1, 1, 0));
    assert_eq!(stats.latency.count, 1);
    assert_eq!(outcome(&ledger), ConnectOutcome::Established { latency_ms: 2.0 });
    let entry = &ledger.sockets[&INODE];
    assert_eq!(
        (entry.state, entry.state_since_ns, entry.state_seen),
        (Some(TCP_ESTABLISHED), 12 * MS, true)
    );
}

#[test]
fn a_refusal_reported_after_close_is_a_refusal() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    // The kernel closes the socket first, then reports the error.
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 11 * MS);
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress);
    error(&mut ledger, 111);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    ledger.settle_connects(u64::MAX, 0);
    let stats = ironic(&ledger);
    assert_eq!(
        (stats.connects, stats.refused, stats.timeouts),
        (1, 1, 0),
        "counted once"
    );
}

#[test]
fn a_connect_closed_without_error_is_abandoned_after_the_grace_period() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, 10 * MS);
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 20 * MS);
    ledger.settle_connects(20 * MS + 500 * MS, 1000 * MS);
    assert_eq!(
        outcome(&ledger),
        ConnectOutcome::InProgress,
        "still within the grace period"
    );
    ledger.settle_connects(20 * MS + 1000 * MS, 1000 * MS);
    assert_eq!(outcome(&ledger), ConnectOutcome::Abandoned);
    assert_eq!(ironic(&ledger).timeouts, 1);
}

/// connect() on fd 5 returned `ret` (the probe ships no success).
fn connect_returned(ledger: &mut Ledger, ret: i32) {
    connect_event(ledger, nr::CONNECT, ret, (2, 6385, tuple().daddr));
}

/// getsockopt(fd 5, SO_ERROR) read `errno`.
fn error_read(ledger: &mut Ledger, errno: i32) {
    connect_event(ledger, nr::GETSOCKOPT, -errno, (0, 0, [0; 16]));
}

fn connect_event(ledger: &mut Ledger, syscall: u32, ret: i32, (family, port, addr): (u16, u16, [u8; 16])) {
    let event = ConnectEvent {
        header: header(EventKind::Connect, syscall, 5 * MS),
        fd: 5,
        ret,
        family,
        port,
        _pad: 0,
        addr,
    };
    ledger.apply(&Event::Connect(event));
}

const ENETUNREACH: i32 = 101;
const ECONNRESET: i32 = 104;

/// A watched socket on fd 5 whose connect sent its SYN at 1 ms.
fn connecting() -> Ledger {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    state(&mut ledger, TCP_CLOSE, TCP_SYN_SENT, MS);
    ledger
}

/// The peer answered the SYN with a reset.
fn refused(ledger: &mut Ledger) {
    state(ledger, TCP_SYN_SENT, TCP_CLOSE, 2 * MS);
    error(ledger, errno::ECONNREFUSED);
}

#[test]
fn a_failure_before_any_syn_is_counted_from_connect() {
    let mut ledger = ledger();
    open_socket(&mut ledger, 5, nr::SOCKET, socket_detail(2, 1, 0));
    connect_returned(&mut ledger, -ENETUNREACH);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.errors), (1, 1));
}

#[test]
fn a_refused_blocking_connect_counts_once() {
    let mut ledger = connecting();
    refused(&mut ledger);
    connect_returned(&mut ledger, -errno::ECONNREFUSED);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.errors), (1, 1, 0));
}

#[test]
fn a_nonblocking_connect_is_marked_even_when_established_before_it_returned() {
    let mut ledger = connecting();
    // Loopback: the handshake completes inside connect(), at release_sock.
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 2 * MS);
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    assert!(ledger.sockets[&INODE].connect.as_ref().unwrap().nonblocking);
    assert_eq!((ironic(&ledger).connects, ironic(&ledger).established), (1, 1));
}

#[test]
fn asking_again_once_writable_adds_no_connect() {
    // eventlet: connect_ex() -> EINPROGRESS, wait until writable, connect_ex()
    // again: EALREADY while under way, 0 once connected (not shipped), EISCONN
    // if asked once more.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    connect_returned(&mut ledger, -errno::EALREADY);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 3 * MS);
    connect_returned(&mut ledger, -errno::EISCONN);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
    assert_eq!(outcome(&ledger), ConnectOutcome::Established { latency_ms: 2.0 });
}

#[test]
fn an_error_the_owner_read_first_is_settled_by_connects_return() {
    // eventlet's way, when the woken owner's connect() on another CPU takes
    // the error before the error-report probe reads it: the report says 0.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    error(&mut ledger, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress, "0 is no verdict");
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 2 * MS);
    connect_returned(&mut ledger, -errno::ETIMEDOUT);
    assert_eq!(outcome(&ledger), ConnectOutcome::TimedOut);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.timeouts, stats.errors), (1, 1, 0));
    assert_eq!(ledger.counters.socket_errors_taken, 1);
}

#[test]
fn the_close_of_a_failed_connect_carries_its_error_when_the_report_reads_0() {
    // CPython's way: poll until writable, then getsockopt(SO_ERROR), which
    // cleared the error before the report's probe ran; the close, probed
    // before the owner was woken, read it.
    let mut ledger = connecting();
    state_with_error(
        &mut ledger,
        5,
        TCP_SYN_SENT,
        TCP_CLOSE,
        2 * MS,
        errno::ECONNREFUSED,
    );
    error(&mut ledger, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    ledger.settle_connects(u64::MAX, 0);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.timeouts), (1, 1, 0));
}

#[test]
fn an_error_read_with_so_error_before_both_probes_is_the_verdict() {
    // Older kernels wake the owner with the error report, before the close:
    // its getsockopt(SO_ERROR) on another CPU can clear the error before
    // either probe loads it.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    error(&mut ledger, 0);
    error_read(&mut ledger, errno::ECONNREFUSED);
    state(&mut ledger, TCP_SYN_SENT, TCP_CLOSE, 4 * MS);
    ledger.settle_connects(u64::MAX, 0);
    assert_eq!(outcome(&ledger), ConnectOutcome::Refused);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.timeouts), (1, 1, 0));
    assert_eq!(ledger.counters.socket_errors_read, 1);
}

#[test]
fn an_error_read_after_the_verdict_or_the_connection_changes_nothing() {
    let mut ledger = connecting();
    refused(&mut ledger);
    error_read(&mut ledger, errno::ECONNREFUSED);
    assert_eq!(ironic(&ledger).refused, 1);
    let mut ledger = connecting();
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 2 * MS);
    error_read(&mut ledger, ECONNRESET);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
}

#[test]
fn asking_again_after_a_refused_nonblocking_connect_adds_nothing() {
    // connect() again, instead of getsockopt(SO_ERROR), returns the error.
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINPROGRESS);
    refused(&mut ledger);
    connect_returned(&mut ledger, -errno::ECONNREFUSED);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.refused, stats.errors), (1, 1, 0));
}

#[test]
fn an_error_of_a_socket_no_fd_holds_is_unowned() {
    let mut ledger = ledger();
    error(&mut ledger, errno::ECONNREFUSED);
    assert_eq!(ledger.counters.socket_events_unowned, 1);
}

#[test]
fn a_connect_interrupted_by_a_signal_goes_on() {
    let mut ledger = connecting();
    connect_returned(&mut ledger, -errno::EINTR);
    connect_returned(&mut ledger, -512); // ERESTARTSYS, as sys_exit sees a restarted call
    assert_eq!(outcome(&ledger), ConnectOutcome::InProgress);
    state(&mut ledger, TCP_SYN_SENT, TCP_ESTABLISHED, 3 * MS);
    let stats = ironic(&ledger);
    assert_eq!((stats.connects, stats.established, stats.errors), (1, 1, 0));
}
