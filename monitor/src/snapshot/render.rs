//! The snapshot as an aligned table, most interesting rows first.

use std::fmt::Write as _;

use super::{EndpointSummary, FdSnapshot, Snapshot};
use crate::{calls::view::CallRefView, fdkind::FdKind, table::table, time::short_age};

/// Rows that point at trouble sort first: abandoned TCP sockets, then other
/// connected sockets, other sockets, then everything else; older first.
fn interest(fd: &FdSnapshot) -> u8 {
    match (&fd.socket, fd.kind) {
        (Some(s), FdKind::SocketTcp) if s.info.state == "CLOSE_WAIT" => 0,
        (Some(s), FdKind::SocketTcp) if s.info.state != "LISTEN" => 1,
        (_, kind) if kind.is_socket() => 2,
        _ => 3,
    }
}

pub fn render_table(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "PID {}  {}  {}",
        snapshot.pid,
        snapshot.comm,
        snapshot.cmdline.join(" ")
    );
    if !snapshot.placement.is_empty() {
        let _ = writeln!(out, "{}", snapshot.placement.describe());
    }
    let open = snapshot.fds.len();
    let limit = match snapshot.limits.nofile_soft {
        Some(soft) if soft > 0 => format!(
            "limit {soft} soft / {} hard, {:.0}% used",
            snapshot
                .limits
                .nofile_hard
                .map_or("unlimited".to_string(), |h| h.to_string()),
            open as f64 * 100.0 / soft as f64
        ),
        _ => "no soft limit".to_string(),
    };
    let memory = snapshot.memory.map_or(String::new(), |m| {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        format!(
            "   memory {:.0} MiB resident, {:.0} MiB anonymous",
            mib(m.resident_bytes),
            mib(m.anon_bytes)
        )
    });
    let _ = writeln!(
        out,
        "fds {open} ({limit})   threads {}{memory}",
        snapshot.threads.len()
    );
    let mut counts: Vec<(FdKind, usize)> = snapshot.counts.iter().map(|(k, n)| (*k, *n)).collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let by_kind: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "by kind: {}", by_kind.join(", "));
    match &snapshot.daemon_note {
        Some(note) => {
            let _ = writeln!(out, "({note})");
        }
        None => {
            let _ = writeln!(out, "(birth records from the leakmon daemon)");
        }
    }
    for problem in &snapshot.problems {
        let _ = writeln!(out, "warning: {problem}");
    }

    if !snapshot.endpoints.is_empty() {
        out.push_str("\nENDPOINTS\n");
        for endpoint in &snapshot.endpoints {
            let _ = writeln!(out, "{}", endpoint_line(endpoint));
        }
    }

    let mut fds: Vec<&FdSnapshot> = snapshot.fds.iter().collect();
    fds.sort_by(|a, b| {
        let age = |f: &FdSnapshot| f.birth.as_ref().map_or(0.0, |b| b.age_s);
        interest(a)
            .cmp(&interest(b))
            .then(age(b).total_cmp(&age(a)))
            .then(a.fd.cmp(&b.fd))
    });
    let mut rows = vec![vec![
        "FD".into(),
        "KIND".into(),
        "AGE".into(),
        "BORN".into(),
        "TARGET".into(),
    ]];
    for fd in fds {
        let (age, born) = match &fd.birth {
            Some(b) => (
                short_age(b.age_s),
                match (b.tid, &b.syscall) {
                    (Some(tid), Some(syscall)) => {
                        let during = b.call.as_ref().map(during_call).unwrap_or_default();
                        format!("{syscall} by {tid} {}{during}", b.thread.as_deref().unwrap_or(""))
                    }
                    _ => b.origin.name().to_string(),
                },
            ),
            None => ("-".into(), "-".into()),
        };
        let in_state = fd
            .socket
            .as_ref()
            .and_then(|s| s.ledger.as_ref())
            .map(|l| {
                let last = l.last_call.as_ref().map(last_call).unwrap_or_default();
                format!(" for {}{last}", short_age(l.age_in_state_s))
            })
            .unwrap_or_default();
        rows.push(vec![
            fd.fd.to_string(),
            fd.kind.to_string(),
            age,
            born,
            format!("{}{in_state}", fd.target),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));

    let mut rows = vec![vec![
        "TID".into(),
        "NAME".into(),
        "STATE".into(),
        "AGE".into(),
        "CREATED BY".into(),
    ]];
    for t in &snapshot.threads {
        rows.push(vec![
            t.tid.to_string(),
            t.name.clone(),
            t.state.to_string(),
            short_age(t.age_s),
            t.creator_tid.map_or("-".into(), |c| c.to_string())
                + &t.birth_call.as_ref().map(during_call).unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out
}

/// ` during GET /v1/nodes/{node}`: the API call a resource was born in.
fn during_call(call: &CallRefView) -> String {
    match &call.pattern {
        Some(pattern) => format!(" during {pattern}"),
        None => format!(" during {}", call.kind.name()),
    }
}

/// `, last call GET /v1/nodes/{node}`: the last API call sent on a socket.
fn last_call(call: &CallRefView) -> String {
    match &call.pattern {
        Some(pattern) => format!(", last call {pattern}"),
        None => format!(", last call {}", call.kind.name()),
    }
}

/// `ironic-api 127.0.0.1:6385  ESTABLISHED 3  CLOSE_WAIT 8 (oldest 14m)  connects 112 refused 0 timeouts 2`
pub fn endpoint_line(endpoint: &EndpointSummary) -> String {
    let mut line = format!(
        "{} {}",
        endpoint.label.as_deref().unwrap_or("-"),
        endpoint.endpoint
    );
    if endpoint.inbound {
        line.push_str(" (inbound)");
    }
    for (state, n) in endpoint.states.iter() {
        let _ = write!(line, "  {state} {n}");
        if state == "CLOSE_WAIT"
            && let Some(age) = endpoint.oldest_close_wait_s
        {
            let _ = write!(line, " (oldest {})", short_age(age));
        }
    }
    if let Some(h) = &endpoint.health {
        let _ = write!(
            line,
            "  connects {} refused {} timeouts {}",
            h.connects, h.refused, h.timeouts
        );
        if h.errors > 0 {
            let _ = write!(line, " errors {}", h.errors);
        }
        if let Some(p50) = h.latency_p50_ms {
            let _ = write!(line, " (p50 ≤{p50}ms)");
        }
    }
    line
}
