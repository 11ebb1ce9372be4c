//! Rules on a process's connections: sockets abandoned in CLOSE_WAIT, pool
//! saturation and churn, failing connects, tokens sent in clear.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use monitor_common::TCP_CLOSE_WAIT;
use serde_json::{Value, json};

use super::{Finding, Input, Rule, Severity, resources::SAMPLES, span, trend};
use crate::{
    calls::view::CallRefView,
    ledger::{Birth, sockets::remote_of, sockview::socket_views},
};

const NS: u64 = 1_000_000_000;

/// CLOSE_WAIT sockets per endpoint, with how long each has been there.
fn close_wait_by_endpoint(input: &Input<'_>) -> BTreeMap<SocketAddr, Vec<(u64, u64)>> {
    let mut by_endpoint: BTreeMap<SocketAddr, Vec<(u64, u64)>> = BTreeMap::new();
    for inode in input.process.fds.sockets() {
        let Some(socket) = input.ledger.sockets.get(&inode) else {
            continue;
        };
        if socket.state != Some(TCP_CLOSE_WAIT) {
            continue;
        }
        let Some(tuple) = &socket.tuple else { continue };
        let age_ns = input.now_ns.saturating_sub(socket.state_since_ns);
        by_endpoint
            .entry(remote_of(tuple))
            .or_default()
            .push((inode, age_ns));
    }
    by_endpoint
}

pub fn close_wait_leak(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.socket_close_wait_leak;
    let pool = input.rules.pool_size;
    let (window, now) = (rule.window_s * NS, input.now_ns);
    let mut findings = Vec::new();
    for (remote, sockets) in close_wait_by_endpoint(input) {
        let aged: Vec<u64> = sockets
            .iter()
            .filter(|(_, age)| *age >= rule.min_age_s * NS)
            .map(|(inode, _)| *inode)
            .collect();
        if aged.is_empty() {
            continue;
        }
        let series = input.history.series(window, now, |s| {
            f64::from(s.endpoints.get(&remote).map_or(0, |e| e.close_wait))
        });
        let growth = trend::steady_rise(&series, window, now).unwrap_or(0.0);
        let mut reasons = Vec::new();
        if aged.len() > pool as usize {
            reasons.push("exceeds_pool_size");
        }
        if growth >= f64::from(rule.min_growth) {
            reasons.push("growing");
        }
        if reasons.is_empty() {
            continue;
        }
        findings.push(close_wait_finding(
            input,
            remote,
            &aged,
            sockets.len(),
            growth,
            reasons,
        ));
    }
    findings
}

fn close_wait_finding(
    input: &Input<'_>,
    remote: SocketAddr,
    aged: &[u64],
    close_wait: usize,
    growth: f64,
    reasons: Vec<&str>,
) -> Finding {
    let rule = &input.rules.socket_close_wait_leak;
    let births: HashMap<u64, Birth> = input
        .process
        .fds
        .values()
        .filter(|e| e.inode != 0)
        .map(|e| (e.inode, e.birth))
        .collect();
    // Group by the code path that abandoned them: the last call sent on each
    // (a session made per node list shows as node_list, after its version
    // discovery), else the call in flight at its birth; and the creating thread.
    let mut by_origin: BTreeMap<(Option<&str>, u32), u64> = BTreeMap::new();
    for inode in aged {
        let birth = births.get(inode);
        let last_call = input.ledger.sockets.get(inode).and_then(|s| s.last_call);
        let call = last_call.or(birth.and_then(|b| b.call)).map(|c| c.kind.name());
        *by_origin.entry((call, birth.map_or(0, |b| b.tid))).or_default() += 1;
    }
    let mut origins: Vec<_> = by_origin.into_iter().collect();
    origins.sort_by_key(|o| std::cmp::Reverse(o.1));
    let most = origins.first().map_or(String::new(), |((call, tid), n)| {
        let by = call.map_or_else(|| "connections".to_string(), |c| format!("{c} calls"));
        format!(", {n} left after {by} from thread {tid}")
    });
    let mut views = socket_views(input.ledger, input.process, input.labels, input.now_ns);
    views.retain(|v| aged.contains(&v.inode));
    views.sort_by(|a, b| b.age_in_state_s.total_cmp(&a.age_in_state_s));
    views.truncate(SAMPLES);
    let oldest = views.first().map_or(0.0, |v| v.age_in_state_s);
    Finding {
        rule: Rule::SocketCloseWaitLeak,
        key: remote.to_string(),
        severity: Severity::Warning,
        summary: format!(
            "{} is leaking sockets to {}: {} in CLOSE_WAIT for over {} (pool size {}, oldest {}){most}",
            input.who(),
            input.endpoint_name(&remote),
            aged.len(),
            span(rule.min_age_s),
            input.rules.pool_size,
            span(oldest as u64),
        ),
        evidence: json!({
            "endpoint": remote.to_string(),
            "label": input.labels.label(&remote),
            "close_wait": close_wait,
            "close_wait_over_min_age": aged.len(),
            "min_age_s": rule.min_age_s,
            "pool_size": input.rules.pool_size,
            "growth": growth as u64,
            "window_s": rule.window_s,
            "reasons": reasons,
            "by_origin": origins.iter().map(|((call, tid), n)| json!({
                "call_kind": call, "tid": tid, "count": n,
            })).collect::<Vec<_>>(),
            "sockets": views,
        }),
        endpoint: Some(input.endpoint_label(&remote)),
    }
}

/// How much a per-endpoint counter grew over the window (or since watching began).
fn growth_in_window(
    input: &Input<'_>,
    window_s: u64,
    remote: &SocketAddr,
    value: fn(&super::history::EndpointSample) -> u64,
) -> u64 {
    let history = input.history;
    let Some(latest) = history.latest() else { return 0 };
    let start = input.now_ns.saturating_sub(window_s * NS);
    // Counters start at zero when watching starts: a history that does not
    // reach back to the window's start began with zeros.
    let reaches_back = history.samples.front().is_some_and(|first| first.ts_ns <= start);
    let base = history
        .samples
        .iter()
        .find(|s| s.ts_ns >= start)
        .filter(|_| reaches_back)
        .and_then(|s| s.endpoints.get(remote))
        .map_or(0, value);
    latest.endpoints.get(remote).map_or(0, value).saturating_sub(base)
}

pub fn pool_saturation(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.connection_pool_saturation;
    let pool = u64::from(input.rules.pool_size);
    let Some(latest) = input.history.latest() else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for (remote, sample) in &latest.endpoints {
        let in_use = u64::from(sample.open - sample.close_wait);
        let connects = growth_in_window(input, rule.window_s, remote, |e| e.connects);
        let mut reasons = Vec::new();
        if in_use > pool {
            reasons.push(format!("{in_use} connections open at once (pool size {pool})"));
        }
        if connects >= u64::from(rule.max_connects) {
            reasons.push(format!("{connects} new connections in {}", span(rule.window_s)));
        }
        if reasons.is_empty() {
            continue;
        }
        findings.push(Finding {
            rule: Rule::ConnectionPoolSaturation,
            key: remote.to_string(),
            severity: Severity::Warning,
            summary: format!(
                "{} saturates its connection pool to {}: {}",
                input.who(),
                input.endpoint_name(remote),
                reasons.join(", ")
            ),
            evidence: json!({
                "endpoint": remote.to_string(),
                "label": input.labels.label(remote),
                "open": in_use,
                "close_wait": sample.close_wait,
                "pool_size": pool,
                "connects_in_window": connects,
                "max_connects": rule.max_connects,
                "window_s": rule.window_s,
            }),
            endpoint: Some(input.endpoint_label(remote)),
        });
    }
    findings
}

pub fn connect_failures(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.connect_failures;
    let Some(latest) = input.history.latest() else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for remote in latest.endpoints.keys() {
        let refused = growth_in_window(input, rule.window_s, remote, |e| e.refused);
        let timeouts = growth_in_window(input, rule.window_s, remote, |e| e.timeouts);
        if refused + timeouts < u64::from(rule.min_count) {
            continue;
        }
        let stats = input.process.endpoints.get(remote);
        findings.push(Finding {
            rule: Rule::ConnectFailures,
            key: remote.to_string(),
            severity: Severity::Warning,
            summary: format!(
                "{} cannot connect to {}: {refused} refused and {timeouts} timed out in the last {}",
                input.who(),
                input.endpoint_name(remote),
                span(rule.window_s)
            ),
            evidence: json!({
                "endpoint": remote.to_string(),
                "label": input.labels.label(remote),
                "refused": refused,
                "timeouts": timeouts,
                "window_s": rule.window_s,
                "min_count": rule.min_count,
                "connects_total": stats.map_or(0, |s| s.connects),
                "established_total": stats.map_or(0, |s| s.established),
            }),
            endpoint: Some(input.endpoint_label(remote)),
        });
    }
    findings
}

pub fn plaintext_token(input: &Input<'_>) -> Vec<Finding> {
    let rule = &input.rules.plaintext_token;
    let calls = &input.process.calls;
    let since = input.now_ns.saturating_sub(rule.quiet_s * NS);
    let mut findings = Vec::new();
    for (endpoint, seen) in &calls.plaintext_tokens {
        if seen.last_ns < since {
            continue;
        }
        let name = endpoint.map_or_else(|| "an unknown endpoint".to_string(), |e| input.endpoint_name(&e));
        let last_call: Option<Value> = seen
            .last_call
            .map(|c| serde_json::to_value(CallRefView::of(&c, calls)).unwrap_or_default());
        findings.push(Finding {
            rule: Rule::PlaintextToken,
            key: endpoint.map_or_else(|| "unknown".to_string(), |e| e.to_string()),
            severity: Severity::Critical,
            summary: format!(
                "{} sends its auth token in clear text to {name} (plain HTTP, {} requests)",
                input.who(),
                seen.count
            ),
            evidence: json!({
                "endpoint": endpoint.map(|e| e.to_string()),
                "label": endpoint.and_then(|e| input.labels.label(&e)),
                "requests": seen.count,
                "last": crate::time::rfc3339_of_boot(seen.last_ns),
                "last_call": last_call,
                "quiet_s": rule.quiet_s,
            }),
            endpoint: endpoint.map(|e| input.endpoint_label(&e)),
        });
    }
    findings
}
